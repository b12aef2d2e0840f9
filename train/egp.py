"""``python -m train egp`` / ``python -m train nepenthe``: entropy-guided pruning until layers collapse.

    python -m train egp                                      # ResNet-20 (width 8) on digits, CPU minutes
    python -m train nepenthe                                 # the same with NEPENTHE's entropy
    python -m train egp --config egp_cifar10_resnet18 --data-dir ~/tensorflow_datasets
    python -m train egp --model resnet20 --dataset cifar10 --config egp_cifar10_resnet18 \\
        --workdir runs/r20 --set epochs=30 "milestones=(15, 25)" --iterations 6

Iteration 0 trains the dense network; every iteration then measures each
remaining site's entropy, turns the sites at zero entropy into identities
(their layers are frozen), splits a budget of ``rho`` times the remaining
non-zero weights over the other layers (low entropy x low magnitude gets
more) and prunes the smallest weights; the next iteration retrains from the
current weights with a fresh optimizer, pruned weights held at exactly 0
(:mod:`jaxdepth.methods.egp`). EGP and NEPENTHE differ in the entropy
estimator only (``--estimator``). At the end the deepest cut whose validation
accuracy is within ``--tolerance`` points of the dense model is saved in
``WORKDIR/chosen/`` and, merged by surgery, in ``WORKDIR/chosen_merged/``; the
table is printed and written to ``WORKDIR/report.md`` beside ``report.json``,
``entropies.png`` and ``sparsity.png``.

Running the same command again resumes after the last finished iteration (or
mid-iteration, from the epoch checkpoints); ``--iterations`` may grow and
``--tolerance`` change between calls, anything else is refused. A config is a
``train/configs/egp_*.py`` (or ``nepenthe_*.py``) file: the recipe keys of
``python -m train fit`` plus ``iterations``, ``tolerance``, ``rho``,
``estimator``, ``augment``, ``entropy_batch_size``, ``layers`` and ``skip``. Without
``--config``, the config of the command for ``--model`` and ``--dataset`` is
used when exactly one matches, else ``<command>_digits``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any

from train import config as config_lib
from train.fit import maybe_initialize_distributed

METHOD_DEFAULTS: dict[str, Any] = {
    "iterations": None,           # rounds; None = 10 (the dense model, then 9 prunings)
    "tolerance": 1.0,             # allowed validation drop of the chosen model, in points
    "rho": 0.5,                   # fraction of the remaining prunable weights pruned per round
    "estimator": None,            # None = the method's: "egp" (EGP) or "dataset" (NEPENTHE)
    "augment": True,              # the entropy pass sees the training augmentation
    "entropy_batch_size": None,   # batch of the entropy pass (None: eval_batch_size)
    "layers": None,               # {site: layer} to prune (None: jaxdepth.methods.egp.layer_map)
    "skip": (),                   # sites whose layer is never pruned
    "checkpoint_epochs": True,    # checkpoint every epoch inside an iteration too
}
_IDENTITY_KEYS = ("model", "model_kwargs", "val_fraction", "split_seed", "val_augment",
                  "image_size", "normalization", "dtype")
NAMES = {"egp": "EGP", "nepenthe": "NEPENTHE"}


def build_parser(command: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"python -m train {command}", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", help=f"a {command}_* config file or name in train/configs/ "
                                  f"(default: the one for --model/--dataset, else "
                                  f"{command}_digits)")
  config_lib.add_run_arguments(
      p, workdir_help=f"run directory (default: runs/{command}-<model>-<dataset>)")
  p.add_argument("--iterations", type=int,
                 help="rounds, the dense model included (default: the config's, else 10)")
  p.add_argument("--tolerance", type=float,
                 help="allowed validation-accuracy drop of the chosen model, in points "
                      "(default: the config's, else 1)")
  p.add_argument("--rho", type=float,
                 help="fraction of the remaining prunable weights pruned per round, in (0, 1)")
  p.add_argument("--estimator", choices=("egp", "dataset", "easier"),
                 help="entropy: 'egp' = per-batch mean over non-constant channels (EGP's code), "
                      "'dataset' = dataset-level, zeros discarded (NEPENTHE), 'easier' = last "
                      "training epoch, train mode")
  p.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                 help="measure entropy on the training split without its augmentation")
  config_lib.add_launch_arguments(p)
  return p


def _configs(command: str) -> list[pathlib.Path]:
  return sorted(config_lib.CONFIG_DIR.glob(f"{command}_*.py"))


def load_config(config: str) -> dict[str, Any]:
  """A config with every default filled in (the ``fit`` keys plus :data:`METHOD_DEFAULTS`)."""
  return config_lib.load(config, METHOD_DEFAULTS)


def default_config(command: str, model: str | None, dataset: str | None) -> str:
  """The one ``<command>_*`` config for this model and dataset, else ``<command>_digits``."""
  if model is None and dataset is None:
    return f"{command}_digits"
  matches = []
  for path in _configs(command):
    values = load_config(str(path))
    if (model or values["model"]) == values["model"] and (
        dataset or values["dataset"]) == values["dataset"]:
      matches.append(path.stem)
  return matches[0] if len(matches) == 1 else f"{command}_digits"


def resolve_config(command: str, args: argparse.Namespace) -> dict[str, Any]:
  """The config file, then ``--set``, then the dedicated flags."""
  return config_lib.resolve(
      args.config or default_config(command, args.model, args.dataset), args,
      extra_defaults=METHOD_DEFAULTS,
      flags=config_lib.RUN_FLAGS + ("iterations", "tolerance", "rho", "estimator", "augment"))


def make_method(command: str, cfg: dict[str, Any]):
  """The :class:`~jaxdepth.methods.Egp` or :class:`~jaxdepth.methods.Nepenthe` of a config."""
  from jaxdepth.methods import Egp, Nepenthe  # pylint: disable=import-outside-toplevel
  cls = {"egp": Egp, "nepenthe": Nepenthe}[command]
  kw = {} if cfg["estimator"] is None else {"estimator": cfg["estimator"]}
  return cls(rho=cfg["rho"], augment=cfg["augment"],
             entropy_batch_size=cfg["entropy_batch_size"], layers=cfg["layers"],
             skip=tuple(cfg["skip"]), **kw)


def main(argv: list[str] | None = None, command: str = "egp") -> int:
  args = build_parser(command).parse_args(argv)
  maybe_initialize_distributed(args.multihost)

  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import checkpoint, costs, data, driver, report, training  # pylint: disable=import-outside-toplevel
  from jaxdepth.methods import egp_report  # pylint: disable=import-outside-toplevel

  tic = time.perf_counter()
  try:
    cfg = resolve_config(command, args)
    recipe = config_lib.recipe_of(cfg)
    method = make_method(command, cfg)
  except (KeyError, ValueError, TypeError, FileNotFoundError, AttributeError) as e:
    print(f"error: {config_lib.error_message(e)}", file=sys.stderr)
    return 2
  workdir = pathlib.Path(args.workdir) if args.workdir else (
      pathlib.Path("runs") / f"{command}-{config_lib.run_name(cfg)}")
  say = print if jax.process_index() == 0 else (lambda *a, **k: None)

  try:
    ds, spec = config_lib.dataset_and_spec(cfg)
    method.units(spec)   # a bad layer map is named before anything is written
  except (data.DatasetNotPrepared, KeyError, TypeError, ValueError, FileNotFoundError) as e:
    print(f"error: {config_lib.error_message(e)}", file=sys.stderr)
    return 2
  dtype = config_lib.compute_dtype(cfg["dtype"])
  mesh = training.make_mesh()
  say(f"{NAMES[command]} ({method.estimator} entropy, rho {method.rho}) on {spec.name}/{ds.name} "
      f"with {pathlib.Path(cfg['config']).stem}: {costs.count_params(spec):,} parameters, "
      f"{len(spec.sites())} sites; {cfg['epochs']} epochs per iteration; train/val/test "
      f"{ds.train.num_examples}/{ds.val.num_examples if ds.val else 0}/{ds.test.num_examples}; "
      f"{mesh.devices.size} {jax.devices()[0].platform} device(s); workdir {workdir}")

  try:
    result = driver.run(
        method, spec, ds, recipe, workdir, iterations=cfg["iterations"],
        tolerance=cfg["tolerance"], seed=cfg["seed"], mesh=mesh, dtype=dtype,
        eval_batch_size=cfg["eval_batch_size"], progress=args.progress,
        checkpoint_epochs=cfg["checkpoint_epochs"],
        fit_options={"eval_every": cfg["eval_every"],
                     "checkpoint_every_steps": cfg["checkpoint_every_steps"]},
        info={k: cfg[k] for k in _IDENTITY_KEYS}, say=say)
  except training.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (checkpoint.SpecMismatchError, training.RunMismatchError, ValueError, KeyError) as e:
    print(f"error: {config_lib.error_message(e)}", file=sys.stderr)
    return 2
  full = egp_report.complete(workdir, result.report)
  if jax.process_index() == 0:
    egp_report.write(workdir, full)
  say("")
  say(report.table(full))
  say(egp_report.table(full))
  say(f"{time.perf_counter() - tic:.1f} s; report {workdir / 'report.json'}, model "
      f"{workdir / 'chosen'}, merged {workdir / 'chosen_merged'} "
      f"(jaxdepth.checkpoint.load_model)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""``python -m train easier``: EASIER end to end, the lowest-entropy activation out per iteration.

    python -m train easier                                   # digits_cnn on digits, ~1 min on a CPU
    python -m train easier --config easier_cifar10_resnet18 --data-dir ~/tensorflow_datasets
    python -m train easier --model resnet20 --dataset cifar10 --config easier_cifar10_resnet18 \\
        --workdir runs/r20 --set epochs=30 "milestones=(15, 25)" --iterations 8

Every iteration trains the current network for the config's epochs with a
fresh optimizer (iteration 0 is the dense model), evaluates validation and test,
measures each remaining site's entropy and turns the lowest one (and any at
exactly zero) into the identity (``docs/methods/easier.md``; :mod:`jaxdepth.methods.easier`).
At the end the deepest cut whose validation accuracy is within ``--tolerance``
points of the dense model is saved in ``WORKDIR/chosen/``
(:func:`jaxdepth.checkpoint.load_model`), and the table is printed and written
to ``WORKDIR/report.md`` beside ``report.json`` and the plots.

Running the same command again resumes after the last finished iteration (or
mid-iteration, from the epoch checkpoints); ``--iterations`` may grow and
``--tolerance`` change between calls, anything else is refused. A config is a
``train/configs/easier_*.py`` file: the recipe keys of ``python -m train fit``
plus ``iterations``, ``tolerance``, ``estimator`` and ``entropy_split``.
Without ``--config``, the ``easier_*`` config for ``--model`` and ``--dataset``
is used when exactly one matches, else ``easier_digits``.
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
    "iterations": None,           # training rounds; None = one per site (all of them)
    "tolerance": 1.0,             # allowed validation drop of the chosen model, in points
    "estimator": "easier",        # "easier" (official code) or "dataset" (paper formulas)
    "entropy_split": "train",     # split of the "dataset" estimator: "train" or "val"
    "checkpoint_epochs": True,    # checkpoint every epoch inside an iteration too
}
DEFAULT_CONFIG = "easier_digits"
_IDENTITY_KEYS = ("model", "model_kwargs", "val_fraction", "split_seed", "val_augment",
                  "image_size", "normalization", "dtype")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m train easier",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", help=f"an easier_* config file or name in train/configs/ "
                                  f"(default: the one for --model/--dataset, else {DEFAULT_CONFIG})")
  config_lib.add_run_arguments(
      p, workdir_help="run directory (default: runs/easier-<model>-<dataset>)")
  p.add_argument("--iterations", type=int,
                 help="training rounds (default: the config's, else one per site)")
  p.add_argument("--tolerance", type=float,
                 help="allowed validation-accuracy drop of the chosen model, in points "
                      "(default: the config's, else 1)")
  p.add_argument("--estimator", choices=("easier", "dataset"),
                 help="entropy source: 'easier' = last training epoch, train mode, zeros ON "
                      "(the official code); 'dataset' = one eval-mode pass, zeros discarded "
                      "(the paper)")
  p.add_argument("--entropy-split", "--entropy_split", dest="entropy_split",
                 choices=("train", "val"), help="split of the 'dataset' estimator")
  config_lib.add_launch_arguments(p)
  return p


# ----------------------------------------------------------------------- configs


def _easier_configs() -> list[pathlib.Path]:
  return sorted(config_lib.CONFIG_DIR.glob("easier_*.py"))


def load_config(config: str) -> dict[str, Any]:
  """An EASIER config with every default filled in (the ``fit`` keys plus :data:`METHOD_DEFAULTS`)."""
  return config_lib.load(config, METHOD_DEFAULTS)


def default_config(model: str | None, dataset: str | None) -> str:
  """The one ``easier_*`` config for this model and dataset, else :data:`DEFAULT_CONFIG`."""
  if model is None and dataset is None:
    return DEFAULT_CONFIG
  matches = []
  for path in _easier_configs():
    values = load_config(str(path))
    if (model or values["model"]) == values["model"] and (
        dataset or values["dataset"]) == values["dataset"]:
      matches.append(path.stem)
  return matches[0] if len(matches) == 1 else DEFAULT_CONFIG


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
  """The config file, then ``--set``, then the dedicated flags."""
  return config_lib.resolve(
      args.config or default_config(args.model, args.dataset), args,
      extra_defaults=METHOD_DEFAULTS,
      flags=config_lib.RUN_FLAGS + ("iterations", "tolerance", "estimator", "entropy_split"))


def default_workdir(cfg: dict[str, Any]) -> pathlib.Path:
  return pathlib.Path("runs") / f"easier-{config_lib.run_name(cfg)}"


# -------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  maybe_initialize_distributed(args.multihost)

  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import checkpoint, costs, data, driver, report, training  # pylint: disable=import-outside-toplevel
  from jaxdepth.methods import Easier  # pylint: disable=import-outside-toplevel

  tic = time.perf_counter()
  try:
    cfg = resolve_config(args)
    recipe = config_lib.recipe_of(cfg)
    method = Easier(estimator=cfg["estimator"], entropy_split=cfg["entropy_split"])
  except (KeyError, ValueError, TypeError, FileNotFoundError, AttributeError) as e:
    print(f"error: {config_lib.error_message(e)}", file=sys.stderr)
    return 2
  workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(cfg)
  say = print if jax.process_index() == 0 else (lambda *a, **k: None)

  try:
    ds, spec = config_lib.dataset_and_spec(cfg)
  except (data.DatasetNotPrepared, KeyError, TypeError, ValueError, FileNotFoundError) as e:
    print(f"error: {config_lib.error_message(e)}", file=sys.stderr)
    return 2
  dtype = config_lib.compute_dtype(cfg["dtype"])
  mesh = training.make_mesh()
  say(f"EASIER ({method.estimator} entropy) on {spec.name}/{ds.name} with "
      f"{pathlib.Path(cfg['config']).stem}: {costs.count_params(spec):,} parameters, "
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
  except (checkpoint.SpecMismatchError, training.RunMismatchError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  say("")
  say(report.table(result.report))
  say(f"{time.perf_counter() - tic:.1f} s; report {workdir / 'report.json'}, model "
      f"{workdir / 'chosen'} (jaxdepth.checkpoint.load_model)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""python -m jaxdepth egp / python -m jaxdepth nepenthe: entropy-guided pruning until layers collapse.

    python -m jaxdepth egp                                      # ResNet-20 (width 8) on digits, CPU minutes
    python -m jaxdepth nepenthe                                 # the same with NEPENTHE's entropy
    python -m jaxdepth egp --config egp_cifar10_resnet18 --data-dir ~/tensorflow_datasets
    python -m jaxdepth egp --model resnet20 --dataset cifar10 --config egp_cifar10_resnet18 \\
        --workdir runs/r20 --config.epochs=30 --config.milestones=15,25 --iterations 6

Iteration 0 trains the dense network; every iteration then measures each
remaining site's entropy, turns the sites at zero entropy into identities
(their layers are frozen), splits a budget of rho times the remaining non-zero
weights over the other layers (low entropy x low magnitude gets more) and
prunes the smallest weights; the next iteration retrains from the current
weights with a fresh optimizer, pruned weights held at exactly 0
(jaxdepth.methods.egp). EGP and NEPENTHE differ in the entropy estimator only
(--estimator). At the end the deepest cut whose validation accuracy is within
--tolerance points of the dense model is saved in WORKDIR/chosen/ and, merged
by surgery, in WORKDIR/chosen_merged/; the table is printed and written to
WORKDIR/report.md beside report.json, entropies.png and sparsity.png.

Running the same command again resumes after the last finished iteration (or
mid-iteration, from the epoch checkpoints); --iterations may grow and
--tolerance change between calls, anything else is refused. A config is a
jaxdepth/train/configs/egp_*.py (or nepenthe_*.py) file (python -m jaxdepth list): the keys
of python -m jaxdepth fit plus iterations, tolerance, rho, estimator, entropy_augment,
entropy_batch_size, layers, skip, neurons and checkpoint_epochs (checkpoint every
epoch inside an iteration too, True by default; False checkpoints after each
iteration only); --config.KEY=VALUE overrides any of them
(--config.skip="'relu',"). Without --config, the command's config for --model
and --dataset is used when exactly one matches, else <command>_digits. The
default work directory is runs/<command>-<model>-<dataset>-seed<seed>.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ml_collections import config_dict

from jaxdepth.train import command

METHOD_DEFAULTS: dict[str, Any] = {
    "iterations": config_dict.placeholder(int),  # rounds; None = 10 (dense + 9 prunings)
    "tolerance": 1.0,             # allowed validation drop of the chosen model, in points
    "rho": 0.5,                   # fraction of the remaining prunable weights pruned per round
    "estimator": config_dict.placeholder(str),   # None: "egp" (EGP) or "dataset" (NEPENTHE)
    "entropy_augment": True,      # the entropy pass sees the training augmentation
    "entropy_batch_size": config_dict.placeholder(int),  # batch of the entropy pass
    "layers": config_dict.placeholder(dict),     # {site: layer} (None: egp.layer_map)
    "skip": (),                   # sites whose layer is never pruned
    "neurons": "channels",        # "channels", or "rows": the official Swin-T script's token rows
    "checkpoint_epochs": True,    # checkpoint every epoch inside an iteration too
}
ESTIMATORS = ("egp", "dataset", "easier")
NEURONS = ("channels", "rows")
FLAGS = ("iterations", "tolerance", "rho", "estimator", "entropy_augment")   # flags setting keys
NAMES = {"egp": "EGP", "nepenthe": "NEPENTHE"}
CONFIGS = {name: command.MethodConfigs(name, METHOD_DEFAULTS, FLAGS) for name in NAMES}
load_config = CONFIGS["egp"].load   # EGP and NEPENTHE configs have the same keys


def build_parser(name: str) -> argparse.ArgumentParser:
  p = command.method_parser(name, __doc__)
  command.add_iteration_arguments(
      p, iterations_help="rounds, the dense model included (default: the config's, else 10)")
  p.add_argument("--rho", help="fraction of the remaining prunable weights pruned per round, "
                               "in (0, 1) (default 0.5)")
  p.add_argument("--estimator",
                 help="entropy: 'egp' = per-batch mean over non-constant channels (EGP's code), "
                      "'dataset' = dataset-level, zeros discarded (NEPENTHE), 'easier' = last "
                      "training epoch, train mode")
  p.add_argument("--no-augment", dest="entropy_augment", action="store_const", const="false",
                 help="measure entropy on the training split without its augmentation (training "
                      "keeps it: --config.augment=false turns that off)")
  command.add_launch_arguments(p)
  return p


# ----------------------------------------------------------------------- configs


def check(cfg: dict[str, Any], name: str = "egp") -> list[str]:
  """Problems of the method's own keys, one line each (``name``: the command, whose
  estimator is the default)."""
  out = command.check_iterations(cfg, default="10")
  rho = cfg["rho"]
  if not (isinstance(rho, (int, float)) and not isinstance(rho, bool) and 0 < rho < 1):
    out.append(f"--rho {rho!r}: rho must be in (0, 1) (the fraction of the remaining weights "
               f"pruned per round; the paper uses 0.5)")
  if cfg["estimator"] is not None and cfg["estimator"] not in ESTIMATORS:
    out.append(f"--estimator {cfg['estimator']!r}: use one of {', '.join(ESTIMATORS)}")
  if cfg["neurons"] not in NEURONS:
    out.append(f"--config.neurons={cfg['neurons']!r}: use one of {', '.join(NEURONS)}")
  batch = cfg["entropy_batch_size"]
  if batch is not None and batch <= 0:
    out.append(f"--config.entropy_batch_size={batch}: use a positive batch size, e.g. 128")
  elif (cfg["estimator"] or ("egp" if name == "egp" else "dataset")) == "egp":
    key, size = (("entropy_batch_size", batch) if batch is not None else
                 ("eval_batch_size", cfg["eval_batch_size"] or cfg["batch_size"]))
    if isinstance(size, int) and size < 2:   # a bad batch size is config.check's
      used = "" if batch is not None else ", the entropy batch without an entropy_batch_size"
      out.append(f"--config.{key}={size}{used}: the 'egp' estimator averages entropies over "
                 f"the channels that change sign within a batch, and with one example a site "
                 f"fed by a Dense layer measures 0 bits and is removed; set "
                 f"--config.entropy_batch_size to 2 or more, e.g. 128")
  return out


def make_method(name: str, cfg: dict[str, Any]):
  """The :class:`~jaxdepth.methods.Egp` or :class:`~jaxdepth.methods.Nepenthe` of a config."""
  from jaxdepth.methods import Egp, Nepenthe  # pylint: disable=import-outside-toplevel
  cls = {"egp": Egp, "nepenthe": Nepenthe}[name]
  kw = {} if cfg["estimator"] is None else {"estimator": cfg["estimator"]}
  return cls(rho=cfg["rho"], augment=cfg["entropy_augment"],
             entropy_batch_size=cfg["entropy_batch_size"], layers=cfg["layers"],
             skip=tuple(cfg["skip"]), neurons=cfg["neurons"], **kw)


def _check_model(name: str):
  def check_model(cfg: dict[str, Any], spec, ds) -> list[str]:
    """The layer map against the model; a validation split to choose the operating point on."""
    out = command.no_sites(cfg, spec, name.upper())
    try:
      if not out:
        method = make_method(name, cfg)
        method.units(spec)
        if all(layer is None for layer in method.layer_map(spec).values()):
          out.append(f"--config.layers / --config.skip: no site of {spec.name} keeps a layer "
                     f"to prune (--config.skip names every site, or --config.layers maps none), "
                     f"so every round would prune nothing; leave at least one site's layer in, "
                     f"e.g. --config.skip=\"()\" --config.layers=None")
    except (KeyError, ValueError, TypeError) as e:
      text = command.message(e)
      if text.startswith("skip names"):   # given for another model (a config's own is not)
        text += "; --config.skip=\"()\" prunes every site's layer"
      out.append(f"--config.layers / --config.skip / --config.neurons: {text}")
    if not out:
      method = make_method(name, cfg)
      try:
        method.check_data(spec, ds)
      except ValueError as e:
        out.append(f"--estimator {method.estimator}: {command.message(e)}")
    if ds.val is None:
      out.append(f"--config.val_fraction={cfg['val_fraction']!r}: {ds.name} then has no "
                 f"validation split, on which the operating point is chosen; use a fraction "
                 f"> 0, e.g. 0.1")
    return out
  return check_model


# -------------------------------------------------------------------------- main


def main(argv: list[str] | None = None, name: str = "egp") -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  session = command.Session(name, argv)
  return session.run(lambda: _main(session, name, argv))


def _main(session: command.Session, name: str, argv: list[str]) -> int:
  args = command.start(session, build_parser(name), argv)
  if args is None:
    return 0
  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import report, training  # pylint: disable=import-outside-toplevel
  from jaxdepth.methods import egp_report  # pylint: disable=import-outside-toplevel

  tic = time.perf_counter()
  cfg, workdir, ds, spec = CONFIGS[name].prepare(session, args,
                                                  check=lambda cfg: check(cfg, name),
                                                  check_model=_check_model(name))
  method = make_method(name, cfg)
  say = command.main_process_say()
  dtype = command.compute_dtype(cfg["dtype"])
  mesh = training.make_mesh()
  say(command.method_summary(f"{NAMES[name]} ({method.estimator} entropy, rho {method.rho})", spec,
                             ds, cfg, workdir, mesh,
                             removable=command.plural(len(spec.sites()), "site")))

  result = command.run_method(method, spec, ds, cfg, workdir, mesh=mesh, dtype=dtype,
                               progress=args.progress, say=say, latency=args.latency)
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

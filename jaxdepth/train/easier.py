"""python -m jaxdepth easier: EASIER end to end, the lowest-entropy activation out per iteration.

    python -m jaxdepth easier                                   # digits_plain on digits, <1 min on a CPU
    python -m jaxdepth easier --config easier_cifar10_resnet18 --data-dir ~/tensorflow_datasets
    python -m jaxdepth easier --model resnet20 --dataset cifar10 --config easier_cifar10_resnet18 \\
        --workdir runs/r20 --config.epochs=30 --config.milestones=15,25 --iterations 8

Every iteration trains the current network for the config's epochs with a
fresh optimizer (iteration 0 is the dense model), evaluates validation and test,
measures each remaining site's entropy and turns the lowest one (and any at
exactly zero) into the identity (jaxdepth.methods.easier). At the end the
deepest cut whose validation accuracy is within --tolerance points of the dense
model is saved in WORKDIR/chosen/ (jaxdepth.checkpoint.load_model), and the
table is printed and written to WORKDIR/report.md beside report.json and the
plots.

Running the same command again resumes after the last finished iteration (or
mid-iteration, from the epoch checkpoints); --iterations may grow (up to one
per site) and --tolerance change between calls, anything else is refused. A
config is a jaxdepth/train/configs/easier_*.py file (python -m jaxdepth list): the keys of
python -m jaxdepth fit plus iterations, tolerance, estimator, entropy_split and
checkpoint_epochs (checkpoint every epoch inside an iteration too, True by
default; easier_digits sets it False and checkpoints after each iteration only);
--config.KEY=VALUE overrides any of them. Without --config, the easier_* config
for --model and --dataset is used when exactly one matches, else easier_digits;
with another --model than the config's, the config's iterations (one per site of
its own model) is left out as its other settings for that model are (a run in the
work directory then goes on with the iterations it was asked for).
The default work directory is runs/easier-<model>-<dataset>-seed<seed>.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any

from ml_collections import config_dict

from jaxdepth.train import command

NAME = "easier"
METHOD_DEFAULTS: dict[str, Any] = {
    "iterations": config_dict.placeholder(int),  # training rounds; None = one per site
    "tolerance": 1.0,             # allowed validation drop of the chosen model, in points
    "estimator": "easier",        # "easier" (official code) or "dataset" (paper formulas)
    "entropy_split": "train",     # split of the "dataset" estimator: "train" or "val"
    "checkpoint_epochs": True,    # checkpoint every epoch inside an iteration too
}
ESTIMATORS = ("easier", "dataset")
ENTROPY_SPLITS = ("train", "val")
FLAGS = ("iterations", "tolerance", "estimator", "entropy_split")   # flags that set config keys
# iterations counts the config's model's sites: another --model leaves it out (one per site).
CONFIGS = command.MethodConfigs(NAME, METHOD_DEFAULTS, FLAGS, model_keys=("iterations",))
load_config, default_config = CONFIGS.load, CONFIGS.default_config
resolve_config, default_workdir = CONFIGS.resolve, CONFIGS.workdir


def build_parser() -> argparse.ArgumentParser:
  p = command.method_parser(NAME, __doc__)
  command.add_iteration_arguments(
      p, iterations_help="training rounds, at most one per site (default: the config's, else "
                         "one per site)")
  p.add_argument("--estimator",
                 help="entropy source: 'easier' = last training epoch, train mode, zeros ON "
                      "(the official code); 'dataset' = one eval-mode pass, zeros discarded "
                      "(the paper)")
  p.add_argument("--entropy-split", "--entropy_split", dest="entropy_split",
                 help="split of the 'dataset' estimator: train or val")
  command.add_launch_arguments(p)
  return p


# ----------------------------------------------------------------------- configs


def check(cfg: dict[str, Any]) -> list[str]:
  """Problems of EASIER's own keys, one line each."""
  out = command.check_iterations(cfg, default="one per site")
  if cfg["estimator"] not in ESTIMATORS:
    out.append(f"--estimator {cfg['estimator']!r}: use one of {', '.join(ESTIMATORS)}")
  if cfg["entropy_split"] not in ENTROPY_SPLITS:
    out.append(f"--entropy-split {cfg['entropy_split']!r}: use one of "
               f"{', '.join(ENTROPY_SPLITS)}")
  elif cfg["entropy_split"] != "train" and cfg["estimator"] != "dataset":
    out.append(f"--entropy-split {cfg['entropy_split']}: only the 'dataset' estimator measures "
               f"on a split (the {cfg['estimator']!r} one reads the last training epoch); add "
               f"--estimator dataset")
  return out


def iterations_given(args: argparse.Namespace) -> str | None:
  """How the command line gave ``iterations`` (``--iterations 7``, ``--config.iterations=7``,
  ``--set iterations=7``), or None: the config file sets it."""
  if args.iterations is not None:
    return f"--iterations {args.iterations}"
  spelled = [w for (key, _), w in zip(args.overrides, args.spelled) if key == "iterations"]
  return spelled[-1] if spelled else None


def check_sites(cfg: dict[str, Any], spec, ds, given: str | None = None) -> list[str]:
  """Problems that need the model and the data: iterations beyond the sites, no val split.

  ``given``: how the command line gave ``iterations`` (:func:`iterations_given`), named
  in its problem; None: the config file sets it.
  """
  from jaxdepth.methods import Easier  # pylint: disable=import-outside-toplevel
  out = command.no_sites(cfg, spec, "EASIER") or command.one_site(cfg, spec, "EASIER", (
      "EASIER runs at most one iteration per site and the removal chosen after the last "
      "one is never trained or applied, so it would train the dense model and remove nothing"))
  sites = len(Easier().units(spec))
  if sites and cfg["iterations"] is not None and cfg["iterations"] > sites:
    where, advice = ((given, " or leave it out") if given else
                     (f"config {pathlib.Path(cfg['config']).stem} sets iterations="
                      f"{cfg['iterations']}", ""))
    out.append(f"{where}: {spec.name} has "
               f"{command.plural(sites, 'site')}, so at most {command.plural(sites, 'iteration')}"
               f" (the last one trains the network with {sites - 1} removed); "
               f"use --iterations {sites}{advice}")
  if ds.val is None:
    out.append(f"--config.val_fraction={cfg['val_fraction']!r}: {ds.name} then has no "
               f"validation split, on which EASIER chooses its operating point; use a fraction "
               f"> 0, e.g. 0.1")
  else:
    try:
      Easier(estimator=cfg["estimator"], entropy_split=cfg["entropy_split"]).check_data(spec, ds)
    except ValueError as e:
      out.append(f"--estimator {cfg['estimator']} --entropy-split {cfg['entropy_split']}: "
                 f"{command.message(e)}")
  return out


def iterations_as_run(cfg: dict[str, Any], args: argparse.Namespace, workdir: pathlib.Path,
                      say) -> dict[str, Any]:
  """``cfg`` with the iterations the run in ``workdir`` was asked for, where another ``--model``
  left the config's out and the command line gives none: the same command then resumes the
  run as it was (a finished run trains nothing more) rather than one iteration per site."""
  from jaxdepth import driver  # pylint: disable=import-outside-toplevel
  if (cfg["iterations"] is not None or iterations_given(args) is not None
      or CONFIGS.load(CONFIGS.config_of(args))["iterations"] is None):
    return cfg
  asked = driver.asked_iterations(workdir)
  if asked is None:
    return cfg
  say(f"note: {workdir} holds a run asked for {command.plural(asked, 'iteration')}: it goes on "
      f"with those; give --iterations N for another number")
  return {**cfg, "iterations": asked}


# -------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  session = command.Session(NAME, argv)
  return session.run(lambda: _main(session, argv))


def _main(session: command.Session, argv: list[str]) -> int:
  args = command.start(session, build_parser(), argv)
  if args is None:
    return 0
  from jaxdepth import report, training  # pylint: disable=import-outside-toplevel
  from jaxdepth.methods import Easier  # pylint: disable=import-outside-toplevel

  tic = time.perf_counter()
  cfg, workdir, ds, spec = CONFIGS.prepare(
      session, args, check=check,
      check_model=lambda c, s, d: check_sites(c, s, d, given=iterations_given(args)))
  say = command.main_process_say()
  cfg = iterations_as_run(cfg, args, workdir, say)
  method = Easier(estimator=cfg["estimator"], entropy_split=cfg["entropy_split"])
  dtype = command.compute_dtype(cfg["dtype"])
  mesh = training.make_mesh()
  say(command.method_summary(f"EASIER ({method.estimator} entropy)", spec, ds, cfg, workdir, mesh,
                             removable=command.plural(len(spec.sites()), "site")))

  result = command.run_method(method, spec, ds, cfg, workdir, mesh=mesh, dtype=dtype,
                               progress=args.progress, say=say, latency=args.latency)
  say("")
  say(report.table(result.report))
  say(f"{time.perf_counter() - tic:.1f} s; report {workdir / 'report.json'}, model "
      f"{workdir / 'chosen'}, merged {workdir / 'chosen_merged'} "
      f"(jaxdepth.checkpoint.load_model)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

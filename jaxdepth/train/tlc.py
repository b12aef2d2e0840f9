"""``python -m jaxdepth tlc``: TLC end to end, the layers whose collapse costs least go first.

    python -m jaxdepth tlc                                      # digits_cnn on digits, ~1 min on a CPU
    python -m jaxdepth tlc --config tlc_cifar10_resnet18 --data-dir ~/tensorflow_datasets
    python -m jaxdepth tlc --config tlc_cifar10_mobilenetv2 --config.projections=True  # official quirk
    python -m jaxdepth tlc --rule largest_harmless              # the intended prefix rule

Every iteration trains the current network for the config's epochs with a
fresh optimizer (iteration 0 is the dense model) and evaluates validation and
test; then every live rectifier is ranked by the loss gap its collapse causes on
the first validation batch (channels with BatchNorm β ≤ 0 cut, the others
linearized), and a prefix of the ranking is removed (:mod:`jaxdepth.methods.tlc`).
The run stops when at most one rectifier is left or validation accuracy falls
below ``accuracy_threshold`` (20 %). The deepest cut within ``--tolerance``
points of the dense model's validation accuracy is saved in ``WORKDIR/chosen/``
(channels cut, identities baked in) and ``WORKDIR/chosen_merged/`` (BatchNorms
folded, what became linear merged), with ``report.md``, ``report.json``,
the driver's plots (``accuracy.png``, ``costs.png``, ``loss_gaps.png``: the gap
of every candidate at every iteration, ...) and ``tlc.json`` (those gaps,
``null`` where a candidate was not ranked, with the measured latency of the
dense, chosen and merged models). Without matplotlib (the ``plots`` extra) no
PNG is drawn; the rest is written and the run says so.

Running the same command again resumes; ``--iterations`` may grow and
``--tolerance`` change between calls. A config is a ``jaxdepth/train/configs/tlc_*.py``
file (``python -m jaxdepth list``): the keys of ``python -m jaxdepth fit`` plus
iterations, tolerance, rule, accuracy_threshold, rank_batch_size, projections,
latency_batch and checkpoint_epochs (checkpoint every epoch inside an iteration
too, True by default; False checkpoints after each iteration only);
``--config.KEY=VALUE`` overrides any of them. The
default work directory is ``runs/tlc-<model>-<dataset>-seed<seed>``.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from typing import Any

from ml_collections import config_dict

from jaxdepth.train import command

NAME = "tlc"
METHOD_DEFAULTS: dict[str, Any] = {
    "iterations": config_dict.placeholder(int),  # training rounds; None = min(40, one per site)
    "tolerance": 1.0,             # allowed validation drop of the chosen model, in points
    "rule": "first_harmful",      # "first_harmful" (official) or "largest_harmless" (intended)
    "accuracy_threshold": 20.0,   # stop once validation accuracy (percent) is below it
    "rank_batch_size": 128,       # the validation batch the loss gaps are measured on
    "projections": False,         # the official MobileNetV2 candidate quirk
    "latency_batch": 1,           # batch size of the latency figures in tlc.json
    "checkpoint_epochs": True,    # checkpoint every epoch inside an iteration too
}
RULES = ("first_harmful", "largest_harmless")
FLAGS = ("iterations", "tolerance", "rule", "accuracy_threshold")   # flags that set config keys
CONFIGS = command.MethodConfigs(NAME, METHOD_DEFAULTS, FLAGS)
load_config, default_config = CONFIGS.load, CONFIGS.default_config
resolve_config, default_workdir = CONFIGS.resolve, CONFIGS.workdir


def build_parser() -> argparse.ArgumentParser:
  p = command.method_parser(NAME, __doc__)
  command.add_iteration_arguments(
      p, iterations_help="training rounds (default: the config's, else min(40, one per site))")
  p.add_argument("--rule",
                 help="which prefix of the ranking goes: 'first_harmful' = the official code "
                      "(the first prefix that makes the loss worse), 'largest_harmless' = the "
                      "longest prefix that does not")
  p.add_argument("--accuracy-threshold", "--accuracy_threshold", dest="accuracy_threshold",
                 help="stop once validation accuracy (%%) is below this, in [0, 100] (20)")
  command.add_launch_arguments(p)
  return p


# ----------------------------------------------------------------------- configs


def _positive_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def check(cfg: dict[str, Any]) -> list[str]:
  """Problems of TLC's own keys, one line each."""
  out = command.check_iterations(cfg, default="min(40, one per site)")
  t = cfg["accuracy_threshold"]
  if cfg["rule"] not in RULES:
    out.append(f"--rule {cfg['rule']!r}: use one of {', '.join(RULES)}")
  if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t <= 100.0):
    out.append(f"--accuracy-threshold {t!r}: accuracy_threshold is a validation accuracy in "
               f"percent and must be in [0, 100], e.g. 20")
  for key in ("rank_batch_size", "latency_batch"):
    if not _positive_int(cfg[key]):
      out.append(f"--config.{key}={cfg[key]!r}: must be an integer >= 1")
  if _positive_int(cfg["rank_batch_size"]) and cfg["rank_batch_size"] < 2:
    out.append("--config.rank_batch_size=1: the ranking batch (TLC's batch_size) needs at "
               "least 2 examples: one gives a site without a BatchNorm (fed by a Dense layer) "
               "no std to stand in for its scale; use 2 or more, e.g. 128")
  return out


def check_model(cfg: dict[str, Any], spec, ds) -> list[str]:
  """Problems that need the model and the data: sites TLC cannot rank, a too small val split."""
  from jaxdepth.methods import tlc  # pylint: disable=import-outside-toplevel
  out = command.no_sites(cfg, spec, "TLC") or command.one_site(cfg, spec, "TLC", (
      "TLC stops with one rectifier left, so it would train the dense model and remove "
      "nothing"))
  try:
    if not out:
      tlc.candidates(spec, projections=cfg["projections"])
  except ValueError as e:
    out.append(f"--config.model={cfg['model']!r}: {e}")
  if ds.val is None:
    out.append(f"--config.val_fraction={cfg['val_fraction']!r}: {ds.name} then has no "
               f"validation split, on which TLC ranks its candidates; use a fraction > 0, "
               f"e.g. 0.1")
  elif ds.val.num_examples < cfg["rank_batch_size"]:
    out.append(f"--config.rank_batch_size={cfg['rank_batch_size']}: the validation split holds "
               f"{ds.val.num_examples} examples, fewer than one ranking batch; use at most "
               f"{ds.val.num_examples} or a larger val_fraction")
  return out


# ---------------------------------------------------------------- TLC's figures


def gap_grid(report: dict[str, Any]) -> tuple[list[str], list[list[float]]]:
  """``(candidates, grid)``: the loss gap of every candidate at every iteration (NaN: not ranked)."""
  names: list[str] = []
  for e in report["iterations"]:
    names += [k for k in (e.get("loss_gaps") or {}) if k not in names]
  grid = [[(e.get("loss_gaps") or {}).get(k, {}).get("gap", math.nan)
           for e in report["iterations"]] for k in names]
  return names, grid


def summary(report: dict[str, Any], latency: dict[str, Any] | None) -> dict[str, Any]:
  """TLC's figures: per iteration, the loss gaps, and the eval latency of dense, chosen and merged.

  Args:
    report: the run's report.
    latency: :func:`jaxdepth.train.command.latencies_at` of the run (milliseconds); ``None``
      when nothing was timed (``"latency": {}``).
  """
  names, grid = gap_grid(report)
  latency = latency or {}
  batch = latency.get("batch")
  figures = {name: {"seconds": latency[f"{name}_ms"] / 1e3, "batch": batch}
             for name in ("dense", "chosen", "merged") if f"{name}_ms" in latency}
  if "dense" in figures:
    for name in ("chosen", "merged"):
      if name in figures:
        figures[name]["vs_dense"] = round(latency[f"{name}_ms"] / latency["dense_ms"], 3)
  return {
      "iterations": [{"iteration": e["iteration"], "layers_removed": e["units_removed"],
                      "val_accuracy": e["val_accuracy"], "test_accuracy": e["test_accuracy"],
                      "macs": e["macs"], "params": e["params"], "depth": e["depth"],
                      "removed_now": e["removed_now"], "decision": e.get("decision")}
                     for e in report["iterations"]],
      "loss_gaps": dict(zip(names, grid)), "chosen": report.get("chosen"), "latency": figures,
  }


def write_summary(workdir: pathlib.Path, figures: dict[str, Any]) -> pathlib.Path:
  """Writes :func:`summary`'s figures to ``workdir/tlc.json``: strict JSON (``null`` where a
  candidate was not ranked, or a figure is not finite), atomically as the report."""
  from jaxdepth import report  # pylint: disable=import-outside-toplevel
  return report.write_json(workdir, figures, "tlc.json")


# -------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  session = command.Session(NAME, argv)
  return session.run(lambda: _main(session, argv))


def _main(session: command.Session, argv: list[str]) -> int:
  args = command.start(session, build_parser(), argv)
  if args is None:
    return 0
  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import report, training  # pylint: disable=import-outside-toplevel
  from jaxdepth.methods import TLC  # pylint: disable=import-outside-toplevel

  tic = time.perf_counter()
  cfg, workdir, ds, spec = CONFIGS.prepare(session, args, check=check, check_model=check_model)
  method = TLC(rule=cfg["rule"], accuracy_threshold=float(cfg["accuracy_threshold"]),
               batch_size=cfg["rank_batch_size"], projections=cfg["projections"])
  say = command.main_process_say()
  dtype = command.compute_dtype(cfg["dtype"])
  mesh = training.make_mesh()
  say(command.method_summary(f"TLC ({method.rule})", spec, ds, cfg, workdir, mesh,
                             removable=f"{len(method.candidates(spec))} candidates"))

  result = command.run_method(method, spec, ds, cfg, workdir, mesh=mesh, dtype=dtype,
                               progress=args.progress, say=say, latency=args.latency)
  latency = (command.latencies_at(result.report, workdir, cfg["latency_batch"])
             if args.latency else None)
  if jax.process_index() == 0:
    write_summary(workdir, summary(result.report, latency))
  if latency and {"dense_ms", "chosen_ms", "merged_ms"} <= set(latency):
    say(f"latency at batch {latency['batch']}: dense {latency['dense_ms']:.2f} ms, chosen "
        f"{latency['chosen_ms']:.2f} ms, merged {latency['merged_ms']:.2f} ms")
  say("")
  say(report.table(result.report))
  say(f"{time.perf_counter() - tic:.1f} s; report {workdir / 'report.json'}, model "
      f"{workdir / 'chosen'} and {workdir / 'chosen_merged'} (jaxdepth.checkpoint.load_model)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

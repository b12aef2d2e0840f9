"""python -m jaxdepth lacoot: LaCoOT end to end, one regularized training then block removal.

    python -m jaxdepth lacoot                                   # ResNet-20 (width 8) on digits, CPU
    python -m jaxdepth lacoot --config lacoot_cifar10_resnet18 --data-dir ~/tensorflow_datasets
    python -m jaxdepth lacoot --config lacoot_cifar10_resnet18 --lambda 1 --order ascending

Iteration 0 trains the network once with λ · mean_k MSWD(X_k, Y_k) added to
the cross-entropy (every identity-shortcut block's input X_k against its output
Y_k; jaxdepth.methods.lacoot), then measures each block's distance on the
validation split and ranks the blocks. Every later iteration trains nothing:
it replaces one more block by the identity and evaluates validation and test.
The deepest removal within --tolerance points of the trained network's
validation accuracy is saved in WORKDIR/chosen/ with the blocks really
gone (jaxdepth.checkpoint.load_model), beside report.json,
report.md, accuracy.png, distances.png (the driver's heat map of the
distances at every iteration), block_distances.png (every block's sliced and
max-sliced distance) and lacoot.json (those distances and the measured
latency of the trained network against the chosen shallow one; no speedup
when no block was removed, the chosen model being the trained one). Without
matplotlib (the plots extra) no PNG is drawn; the rest is written and the run
says so.

Running the same command again resumes (mid-training from the epoch
checkpoints, or after the last finished iteration); --iterations may grow and
--tolerance may change between calls, anything else is refused. A config is a
jaxdepth/train/configs/lacoot_*.py file (python -m jaxdepth list): the keys
of python -m jaxdepth fit plus weight (λ), n_projections, pairing, blocks,
order, score, iterations, tolerance, latency_batch and checkpoint_epochs
(checkpoint every epoch of the training too, True by default; False
checkpoints after each iteration only); --config.KEY=VALUE overrides any of
them. Without --config, the lacoot_* config for --model and --dataset is used
when exactly one matches, else lacoot_digits. The default work directory is
runs/lacoot-<model>-<dataset>-seed<seed>.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

from ml_collections import config_dict

from jaxdepth.train import command
from jaxdepth.train import config as config_lib

NAME = "lacoot"
METHOD_DEFAULTS: dict[str, Any] = {
    "weight": 1.0,                # λ, the regularizer's weight (>= 0)
    "n_projections": 50,          # random directions per distance
    "pairing": "block",           # "block" (identity-shortcut blocks) or "official"
    "blocks": config_dict.placeholder(tuple),   # explicit block paths instead of the pairing's
    "order": "ascending",         # "ascending", "deepest_first", "zscore", "shifted"
    "score": "sliced",            # ranking distance: "sliced" or "max_sliced"
    "iterations": config_dict.placeholder(int),  # None = every removal (blocks + 1)
    "tolerance": 1.0,             # allowed validation drop of the chosen model, in points
    "checkpoint_epochs": True,    # checkpoint every epoch of the training too
    "latency_batch": 1,           # batch size of the dense-vs-shallow latency measurement
}
NO_REMOVAL_NOTE = "no block removed: the chosen model is the trained network"
PAIRINGS = ("block", "official")
ORDERS = ("ascending", "deepest_first", "zscore", "shifted")
SCORES = ("sliced", "max_sliced")
FLAGS = ("weight", "n_projections", "pairing", "order", "score", "iterations", "tolerance")
CONFIGS = command.MethodConfigs(NAME, METHOD_DEFAULTS, FLAGS)
load_config, default_config = CONFIGS.load, CONFIGS.default_config
resolve_config, default_workdir = CONFIGS.resolve, CONFIGS.workdir


def build_parser() -> argparse.ArgumentParser:
  p = command.method_parser(NAME, __doc__)
  p.add_argument("--weight", "--lambda", dest="weight",
                 help="λ, the weight of the max-sliced Wasserstein term (>= 0)")
  p.add_argument("--n-projections", "--n_projections", dest="n_projections",
                 help="random directions per distance (default 50)")
  p.add_argument("--pairing",
                 help="'block': every identity-shortcut block or transformer layer; 'official': "
                      "the authors' units (ResNet-18: layerS/1; MobileNetV2: the depthwise "
                      "sub-layers; Swin-T: its layers, input against the MLP output)")
  p.add_argument("--order",
                 help="removal order: ascending (distance), or an official script's rule: "
                      "deepest_first (ResNet), zscore (Swin-T), shifted (MobileNetV2)")
  p.add_argument("--score", help="the ranking distance: sliced or max_sliced")
  command.add_iteration_arguments(
      p, iterations_help="iterations (default: one per block plus the trained network)")
  command.add_launch_arguments(p)
  return p


# ----------------------------------------------------------------------- configs


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(cfg: dict[str, Any]) -> list[str]:
  """Problems of LaCoOT's own keys, one line each."""
  out = command.check_iterations(cfg, default="every removal")
  w, n = cfg["weight"], cfg["n_projections"]
  if not (_number(w) and w >= 0 and w == w and w != float("inf")):
    out.append(f"--lambda {w!r}: λ must be a finite number >= 0 (the authors use 5 for "
               f"ResNet-18, 9 for MobileNetV2), e.g. 1")
  if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
    out.append(f"--n-projections {n!r}: n_projections must be an int >= 1 (random directions "
               f"per distance), e.g. 50")
  for key, known in (("pairing", PAIRINGS), ("order", ORDERS), ("score", SCORES)):
    if cfg[key] not in known:
      out.append(f"--{key} {cfg[key]!r}: use one of {', '.join(known)}")
  lb = cfg["latency_batch"]
  if not (isinstance(lb, int) and not isinstance(lb, bool) and lb >= 1):
    out.append(f"--config.latency_batch={lb!r}: must be an integer >= 1")
  return out


def check_model(cfg: dict[str, Any], spec, ds) -> list[str]:
  """Problems that need the model and the data: the blocks, no validation split."""
  out = []
  try:
    units = method_of(cfg).units(spec)
  except (KeyError, ValueError) as e:
    where = ("--config.blocks=" + repr(cfg["blocks"]) if cfg["blocks"] is not None
             else f"--pairing {cfg['pairing']!r}")
    out.append(f"{where}: {command.message(e)}")
  else:
    if not units:
      out.append(f"--config.model={cfg['model']!r}: {spec.name} has no residual block with an "
                 f"identity shortcut for LaCoOT to remove; use a ResNet, MobileNetV2 or Swin-T")
  if ds.val is None:
    out.append(f"--config.val_fraction={cfg['val_fraction']!r}: {ds.name} then has no "
               f"validation split, on which LaCoOT measures its distances and chooses its "
               f"operating point; use a fraction > 0, e.g. 0.1")
  return out


def method_of(cfg: dict[str, Any]):
  """The :class:`~jaxdepth.methods.LaCoOT` of a config (raises ValueError on bad settings)."""
  from jaxdepth.methods import LaCoOT  # pylint: disable=import-outside-toplevel
  blocks = cfg["blocks"]
  return LaCoOT(weight=cfg["weight"], n_projections=cfg["n_projections"], pairing=cfg["pairing"],
                blocks=None if blocks is None else tuple(blocks), order=cfg["order"],
                score=cfg["score"])


def extras(result, method, spec, ds, workdir: pathlib.Path, *, seed: int, eval_batch_size: int,
           latency_batch: int | None, mesh=None, dtype=None) -> dict[str, Any]:
  """Per-block distances (both kinds) and dense-vs-shallow latency; writes the plot and JSON.

  ``latency_batch=None`` times nothing (``"latency": None``). When the chosen model
  removed no block it is the trained network itself: ``"speedup"`` is then ``None``
  and ``"note"`` says so (the two timings are of one model). Without matplotlib
  (the ``plots`` extra) the plot is left out, as :func:`jaxdepth.report.write` does.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import checkpoint, costs, report  # pylint: disable=import-outside-toplevel
  from jaxdepth.methods import lacoot  # pylint: disable=import-outside-toplevel
  _, trained = checkpoint.load_model(workdir / "iterations" / "000" / "model")
  units = method.units(spec)
  # Every unit gated on, as the run measured them: the same program and the same figures.
  distances = lacoot.block_distances(
      spec, trained, ds.val, units, rng=jax.random.fold_in(jax.random.key(seed), 0),
      batch_size=eval_batch_size, n_projections=method.n_projections,
      node_gates={u: 1.0 for u in units}, mesh=mesh, dtype=dtype,
      outputs=lacoot.compared_outputs(spec, units, method.pairing))
  entries = result.report["iterations"]
  order = entries[0].get("decision", {}).get("order", [])
  chosen = result.report["chosen"]
  latency = None
  if latency_batch is not None:
    ms = command.latencies_at(result.report, workdir, latency_batch)
    latency = {"batch": latency_batch, "dense_ms": ms["dense_ms"], "shallow_ms": ms["chosen_ms"],
               "speedup": round(ms["dense_ms"] / ms["chosen_ms"], 3)}
    if chosen["units_removed"] == 0:
      # The chosen model is iterations/000/model again: a ratio of two timings of one
      # network is noise, not a speedup.
      latency.update(speedup=None, note=NO_REMOVAL_NOTE)
  out = {"distances": distances, "order": order, "removed": chosen["removed"],
         "latency": latency, "dense": costs.summary(spec),
         "shallow": costs.summary(result.chosen_spec)}
  if jax.process_index() == 0:
    (workdir / "lacoot.json").write_text(json.dumps(out, indent=1))
    if report.plots_available():   # else the driver said it drew no plot (the plots extra)
      report.plot_unit_bars(distances, workdir / "block_distances.png", marked=chosen["removed"],
                            title=f"LaCoOT distances per block ({spec.name}, validation)",
                            ylabel="2-Wasserstein distance")
  return out


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  session = command.Session(NAME, argv)
  return session.run(lambda: _main(session, argv))


def _main(session: command.Session, argv: list[str]) -> int:
  args = command.start(session, build_parser(), argv)
  if args is None:
    return 0
  from jaxdepth import report, training  # pylint: disable=import-outside-toplevel

  tic = time.perf_counter()
  cfg, workdir, ds, spec = CONFIGS.prepare(session, args, check=check, check_model=check_model)
  recipe = config_lib.recipe_of(cfg)
  method = method_of(cfg)
  units = method.units(spec)
  say = command.main_process_say()
  dtype = command.compute_dtype(cfg["dtype"])
  mesh = training.make_mesh()
  say(command.method_summary(
      f"LaCoOT (λ={method.weight}, {method.n_projections} projections, {method.order} order)",
      spec, ds, cfg, workdir, mesh, removable=f"{len(units)} removable blocks ({', '.join(units)})",
      schedule="once"))

  eval_batch_size = cfg["eval_batch_size"] or recipe.batch_size
  result = command.run_method(method, spec, ds, cfg, workdir, mesh=mesh, dtype=dtype,
                               progress=args.progress, say=say, latency=args.latency,
                               eval_batch_size=eval_batch_size)
  more = extras(result, method, spec, ds, workdir, seed=cfg["seed"],
                eval_batch_size=eval_batch_size,
                latency_batch=cfg["latency_batch"] if args.latency else None, mesh=mesh,
                dtype=dtype)
  say("")
  say(report.table(result.report))
  lat = more["latency"]
  if lat is not None and lat["speedup"] is None:
    say(f"latency at batch {lat['batch']} (jitted eval forward, median of timings taken in "
        f"turns): trained network {lat['dense_ms']:.3f} ms (chosen = trained, no block "
        f"removed)")
  elif lat is not None:
    say(f"latency at batch {lat['batch']} (jitted eval forward, median of timings taken in "
        f"turns): trained {lat['dense_ms']:.3f} ms, chosen shallow {lat['shallow_ms']:.3f} ms "
        f"({lat['speedup']:.2f}x)")
  say(f"MACs {more['dense']['macs']:,} -> {more['shallow']['macs']:,}, weight depth "
      f"{more['dense']['weight_depth']} -> {more['shallow']['weight_depth']}")
  say(f"{time.perf_counter() - tic:.1f} s; report {workdir / 'report.json'}, distances "
      f"{workdir / 'lacoot.json'}, model {workdir / 'chosen'}, merged "
      f"{workdir / 'chosen_merged'} (jaxdepth.checkpoint.load_model)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

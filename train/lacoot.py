"""``python -m train lacoot``: LaCoOT end to end, one regularized training then block removal.

    python -m train lacoot                                   # ResNet-20 (width 8) on digits, CPU
    python -m train lacoot --config lacoot_cifar10_resnet18 --data-dir ~/tensorflow_datasets
    python -m train lacoot --config lacoot_cifar10_resnet18 --set weight=1 order=ascending

Iteration 0 trains the network once with ``λ · mean_k MSWD(X_k, Y_k)`` added to
the cross-entropy (every identity-shortcut block's input X_k against its output
Y_k; :mod:`jaxdepth.methods.lacoot`), then measures each block's distance on the
validation split and ranks the blocks. Every later iteration trains nothing:
it replaces one more block by the identity and evaluates validation and test.
The deepest removal within ``--tolerance`` points of the trained network's
validation accuracy is saved in ``WORKDIR/chosen/`` with the blocks really
gone (:func:`jaxdepth.checkpoint.load_model`), beside ``report.json``,
``report.md``, ``accuracy.png``, ``distances.png`` (every block's sliced and
max-sliced distance) and ``lacoot.json`` (those distances and the measured
latency of the trained network against the chosen shallow one).

Running the same command again resumes (mid-training from the epoch
checkpoints, or after the last finished iteration); ``--tolerance`` may change
between calls, anything else is refused. A config is a
``train/configs/lacoot_*.py`` file: the recipe keys of ``python -m train fit``
plus ``weight`` (λ), ``n_projections``, ``pairing``, ``blocks``, ``order``,
``score``, ``iterations`` and ``tolerance``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

from train import config as config_lib
from train.fit import maybe_initialize_distributed

METHOD_DEFAULTS: dict[str, Any] = {
    "weight": 1.0,                # λ, the regularizer's weight (>= 0)
    "n_projections": 50,          # random directions per distance
    "pairing": "block",           # "block" (identity-shortcut blocks) or "official"
    "blocks": None,               # explicit block paths instead of the pairing's
    "order": "ascending",         # "ascending", "deepest_first", "zscore", "shifted"
    "score": "sliced",            # ranking distance: "sliced" or "max_sliced"
    "iterations": None,           # None = every removal (one per block, plus the trained net)
    "tolerance": 1.0,             # allowed validation drop of the chosen model, in points
    "checkpoint_epochs": True,    # checkpoint every epoch of the training too
    "latency_batch": 1,           # batch size of the dense-vs-shallow latency measurement
}
DEFAULT_CONFIG = "lacoot_digits"
_IDENTITY_KEYS = ("model", "model_kwargs", "val_fraction", "split_seed", "val_augment",
                  "image_size", "normalization", "dtype")
_FLAGS = ("weight", "n_projections", "pairing", "order", "score", "iterations", "tolerance")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m train lacoot", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", help=f"a lacoot_* config file or name in train/configs/ "
                                  f"(default: the one for --model/--dataset, else {DEFAULT_CONFIG})")
  config_lib.add_run_arguments(
      p, workdir_help="run directory (default: runs/lacoot-<model>-<dataset>)")
  p.add_argument("--weight", "--lambda", dest="weight", type=float,
                 help="λ, the weight of the max-sliced Wasserstein term (>= 0)")
  p.add_argument("--n-projections", "--n_projections", dest="n_projections", type=int,
                 help="random directions per distance (default 50)")
  p.add_argument("--pairing", choices=("block", "official"),
                 help="'block': every identity-shortcut block; 'official': the authors' units "
                      "(ResNet-18: layerS/1; MobileNetV2: the depthwise sub-layers)")
  p.add_argument("--order", choices=("ascending", "deepest_first", "zscore", "shifted"),
                 help="removal order: ascending distance, or an official script's rule")
  p.add_argument("--score", choices=("sliced", "max_sliced"), help="the ranking distance")
  p.add_argument("--iterations", type=int,
                 help="iterations (default: one per block plus the trained network)")
  p.add_argument("--tolerance", type=float,
                 help="allowed validation-accuracy drop of the chosen model, in points")
  config_lib.add_launch_arguments(p)
  return p


def load_config(config: str) -> dict[str, Any]:
  """A LaCoOT config with every default filled in."""
  return config_lib.load(config, METHOD_DEFAULTS)


def default_config(model: str | None, dataset: str | None) -> str:
  """The one ``lacoot_*`` config for this model and dataset, else :data:`DEFAULT_CONFIG`."""
  if model is None and dataset is None:
    return DEFAULT_CONFIG
  matches = []
  for path in sorted(config_lib.CONFIG_DIR.glob("lacoot_*.py")):
    values = load_config(str(path))
    if (model or values["model"]) == values["model"] and (
        dataset or values["dataset"]) == values["dataset"]:
      matches.append(path.stem)
  return matches[0] if len(matches) == 1 else DEFAULT_CONFIG


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
  """The config file, then ``--set``, then the dedicated flags."""
  return config_lib.resolve(args.config or default_config(args.model, args.dataset), args,
                            extra_defaults=METHOD_DEFAULTS, flags=config_lib.RUN_FLAGS + _FLAGS)


def default_workdir(cfg: dict[str, Any]) -> pathlib.Path:
  return pathlib.Path("runs") / f"lacoot-{config_lib.run_name(cfg)}"


def method_of(cfg: dict[str, Any]):
  """The :class:`~jaxdepth.methods.LaCoOT` of a config (raises ValueError on bad settings)."""
  from jaxdepth.methods import LaCoOT  # pylint: disable=import-outside-toplevel
  blocks = cfg["blocks"]
  return LaCoOT(weight=cfg["weight"], n_projections=cfg["n_projections"], pairing=cfg["pairing"],
                blocks=None if blocks is None else tuple(blocks), order=cfg["order"],
                score=cfg["score"])


def latencies(models, *, batch: int, rounds: int = 3, repeats: int = 15) -> list[float]:
  """Seconds of one jitted eval forward of each ``(spec, variables)``: the fastest of
  ``rounds`` medians of ``repeats`` calls, the models alternating so that other load on
  the machine hits them alike."""
  import statistics  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import network  # pylint: disable=import-outside-toplevel
  calls = []
  for spec, variables in models:
    fn = jax.jit(lambda v, x, spec=spec: network.forward(spec, v, x).logits)
    x = jax.random.normal(jax.random.key(0), (batch, *spec.input_shape))
    fn(variables, x).block_until_ready()   # compiles
    calls.append((fn, variables, x))
  best = [float("inf")] * len(models)
  for _ in range(rounds):
    for i, (fn, variables, x) in enumerate(calls):
      times = []
      for _ in range(repeats):
        tic = time.perf_counter()
        fn(variables, x).block_until_ready()
        times.append(time.perf_counter() - tic)
      best[i] = min(best[i], statistics.median(times))
  return best


def extras(result, method, spec, ds, workdir: pathlib.Path, *, seed: int, eval_batch_size: int,
           latency_batch: int, mesh=None, dtype=None) -> dict[str, Any]:
  """Per-block distances (both kinds) and dense-vs-shallow latency; writes the plot and JSON."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import checkpoint, costs, report  # pylint: disable=import-outside-toplevel
  from jaxdepth.methods import lacoot  # pylint: disable=import-outside-toplevel
  _, trained = checkpoint.load_model(workdir / "iterations" / "000" / "model")
  units = method.units(spec)
  distances = lacoot.block_distances(
      spec, trained, ds.val, units, rng=jax.random.fold_in(jax.random.key(seed), 0),
      batch_size=eval_batch_size, n_projections=method.n_projections, mesh=mesh, dtype=dtype)
  entries = result.report["iterations"]
  order = entries[0].get("decision", {}).get("order", [])
  chosen = result.report["chosen"]
  dense_s, shallow_s = latencies([(spec, trained), (result.chosen_spec, result.chosen_variables)],
                                 batch=latency_batch)
  out = {"distances": distances, "order": order, "removed": chosen["removed"],
         "latency": {"batch": latency_batch, "dense_ms": round(1e3 * dense_s, 4),
                     "shallow_ms": round(1e3 * shallow_s, 4),
                     "speedup": round(dense_s / shallow_s, 3)},
         "dense": costs.summary(spec), "shallow": costs.summary(result.chosen_spec)}
  if jax.process_index() == 0:
    (workdir / "lacoot.json").write_text(json.dumps(out, indent=1))
    report.plot_unit_bars(distances, workdir / "distances.png", marked=chosen["removed"],
                          title=f"LaCoOT distances per block ({spec.name}, validation)",
                          ylabel="2-Wasserstein distance")
  return out


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  maybe_initialize_distributed(args.multihost)

  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import checkpoint, costs, data, driver, report, training  # pylint: disable=import-outside-toplevel

  tic = time.perf_counter()
  try:
    cfg = resolve_config(args)
    recipe = config_lib.recipe_of(cfg)
    method = method_of(cfg)
  except (KeyError, ValueError, TypeError, FileNotFoundError, AttributeError) as e:
    print(f"error: {config_lib.error_message(e)}", file=sys.stderr)
    return 2
  workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(cfg)
  say = print if jax.process_index() == 0 else (lambda *a, **k: None)

  try:
    ds, spec = config_lib.dataset_and_spec(cfg)
    units = method.units(spec)
  except (data.DatasetNotPrepared, KeyError, TypeError, ValueError, FileNotFoundError) as e:
    print(f"error: {config_lib.error_message(e)}", file=sys.stderr)
    return 2
  dtype = config_lib.compute_dtype(cfg["dtype"])
  mesh = training.make_mesh()
  say(f"LaCoOT (λ={method.weight}, {method.n_projections} projections, {method.order} order) on "
      f"{spec.name}/{ds.name} with {pathlib.Path(cfg['config']).stem}: "
      f"{costs.count_params(spec):,} parameters, {len(units)} removable blocks "
      f"({', '.join(units)}); {cfg['epochs']} epochs once; train/val/test "
      f"{ds.train.num_examples}/{ds.val.num_examples if ds.val else 0}/{ds.test.num_examples}; "
      f"{mesh.devices.size} {jax.devices()[0].platform} device(s); workdir {workdir}")

  eval_batch_size = cfg["eval_batch_size"] or recipe.batch_size
  try:
    result = driver.run(
        method, spec, ds, recipe, workdir, iterations=cfg["iterations"],
        tolerance=cfg["tolerance"], seed=cfg["seed"], mesh=mesh, dtype=dtype,
        eval_batch_size=eval_batch_size, progress=args.progress,
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
  more = extras(result, method, spec, ds, workdir, seed=cfg["seed"],
                eval_batch_size=eval_batch_size, latency_batch=cfg["latency_batch"], mesh=mesh,
                dtype=dtype)
  say("")
  say(report.table(result.report))
  lat = more["latency"]
  say(f"latency at batch {lat['batch']} (jitted eval forward, best of 3 medians): trained "
      f"{lat['dense_ms']:.3f} ms, chosen shallow {lat['shallow_ms']:.3f} ms "
      f"({lat['speedup']:.2f}x); MACs {more['dense']['macs']:,} -> {more['shallow']['macs']:,}, "
      f"weight depth {more['dense']['weight_depth']} -> {more['shallow']['weight_depth']}")
  say(f"{time.perf_counter() - tic:.1f} s; report {workdir / 'report.json'}, distances "
      f"{workdir / 'lacoot.json'}, model {workdir / 'chosen'} (jaxdepth.checkpoint.load_model)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""``python -m train fit``: train a zoo model on a dataset with a recipe, report test accuracy.

    python -m train fit                                    # digits_cnn on digits, seconds
    python -m train fit --config cifar10_resnet18 --data-dir ~/tensorflow_datasets
    python -m train fit --model resnet20 --dataset cifar10 --config cifar10_resnet18 \\
        --workdir runs/r20 --set epochs=30 "milestones=(15, 25)"

The work directory (default ``runs/<model>-<dataset>``) holds ``run.json`` (what
is trained), ``checkpoints/`` (orbax, every epoch), ``metrics.jsonl`` (one line
per epoch), ``model/`` (the final model, :func:`jaxdepth.checkpoint.load_model`)
and ``report.json``. Running the same command again resumes from the latest
checkpoint (a finished run is just re-evaluated); a work directory holding
another model, dataset or recipe is refused. A NaN loss stops the run, keeping
the last good checkpoint. ``--multihost`` (or ``JAX_COORDINATOR_ADDRESS`` in
the environment) calls ``jax.distributed.initialize()`` first; every process runs
the same command.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any

from train import config as config_lib

_IDENTITY_KEYS = ("model", "model_kwargs", "dataset", "val_fraction", "split_seed",
                  "image_size", "normalization")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m train fit", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="digits",
                 help="a config file or a name in train/configs/ (default: digits)")
  config_lib.add_run_arguments(p, workdir_help="run directory (default: runs/<model>-<dataset>)")
  config_lib.add_launch_arguments(p)
  return p


def maybe_initialize_distributed(multihost: bool) -> None:
  """``jax.distributed.initialize()`` for a multi-process launch (before any device use).

  Called with ``--multihost`` or when ``JAX_COORDINATOR_ADDRESS`` is set. On TPU
  pods, SLURM, Open MPI or Kubernetes jax finds the processes by itself;
  elsewhere set ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID`` for each process. CPU processes talk through gloo.
  """
  if not (multihost or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if os.environ.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)


def default_workdir(cfg: dict[str, Any]) -> pathlib.Path:
  return pathlib.Path("runs") / config_lib.run_name(cfg)


def workdir_conflict(workdir: pathlib.Path, cfg: dict[str, Any]) -> str | None:
  """Why ``workdir`` cannot hold this run (another model or dataset), or ``None``."""
  path = workdir / "run.json"
  if not path.exists():
    return None
  stored = json.loads(path.read_text())
  diffs = [f"{k}={stored.get(k)!r} there, {cfg.get(k)!r} asked" for k in _IDENTITY_KEYS
           if stored.get(k) != cfg.get(k)]
  if not diffs:
    return None
  return (f"work directory {workdir} holds a run of {stored.get('model')} on "
          f"{stored.get('dataset')}, not of {cfg['model']} on {cfg['dataset']} "
          f"({'; '.join(diffs)}). Use another --workdir, or delete {workdir} to start over.")


def _json_default(value):
  return str(value)


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  maybe_initialize_distributed(args.multihost)

  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import checkpoint, costs, data, network, training  # pylint: disable=import-outside-toplevel

  try:
    cfg = config_lib.resolve(args.config, args)
    recipe = config_lib.recipe_of(cfg)
  except (KeyError, ValueError, TypeError, FileNotFoundError, AttributeError) as e:
    print(f"error: {config_lib.error_message(e)}", file=sys.stderr)
    return 2
  workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(cfg)
  conflict = workdir_conflict(workdir, cfg)
  if conflict:
    print(f"error: {conflict}", file=sys.stderr)
    return 2
  main_process = jax.process_index() == 0
  say = print if main_process else (lambda *a, **k: None)

  # ----------------------------------------------------------------- data, model
  try:
    ds, spec = config_lib.dataset_and_spec(cfg)
  except (data.DatasetNotPrepared, KeyError, TypeError, ValueError, FileNotFoundError) as e:
    print(f"error: {config_lib.error_message(e)}", file=sys.stderr)
    return 2
  dtype = config_lib.compute_dtype(cfg["dtype"])
  variables = network.init(spec, jax.random.key(cfg["seed"]))
  if main_process:
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "run.json").exists():
      (workdir / "run.json").write_text(json.dumps(cfg, indent=1, default=_json_default))
  mesh = training.make_mesh()
  say(f"{spec.name} on {ds.name}: {costs.count_params(spec):,} parameters, "
      f"{len(spec.sites())} sites; train/val/test {ds.train.num_examples}/"
      f"{ds.val.num_examples if ds.val else 0}/{ds.test.num_examples}; "
      f"{mesh.devices.size} {jax.devices()[0].platform} device(s); workdir {workdir}")

  # ------------------------------------------------------------------------ fit
  tic = time.perf_counter()
  try:
    result = training.fit(
        spec, variables, ds, recipe, workdir=workdir, seed=cfg["seed"], mesh=mesh, dtype=dtype,
        progress=args.progress, eval_batch_size=cfg["eval_batch_size"],
        eval_every=cfg["eval_every"], checkpoint_every_steps=cfg["checkpoint_every_steps"],
        meta={"config": cfg})
  except (training.NonFiniteLossError, checkpoint.NonFiniteStateError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (checkpoint.SpecMismatchError, training.RunMismatchError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  fit_seconds = time.perf_counter() - tic

  # ---------------------------------------------------------------- evaluation
  eval_batch = cfg["eval_batch_size"] or recipe.batch_size
  test = training.evaluate(spec, result.variables, ds.test, batch_size=eval_batch, mesh=mesh,
                           dtype=dtype)
  checkpoint.save_model(workdir / "model", spec, result.variables, overwrite=True)
  last = result.history[-1] if result.history else {}
  report = {
      "model": cfg["model"], "dataset": ds.name, "config": cfg, "costs": costs.summary(spec),
      "epochs": len(result.history), "steps": int(result.state.step),
      "test": test.as_dict(), "test_examples": test.count,
      "val": ({"loss": last["val_loss"], "accuracy": last["val_accuracy"]}
              if "val_accuracy" in last else None),
      "train": ({"loss": last["train_loss"], "accuracy": last["train_accuracy"]}
                if last else None),
      "train_seconds": round(sum(r.get("seconds", 0.0) for r in result.history), 3),
      "this_call_seconds": round(fit_seconds, 3),
      "devices": f"{mesh.devices.size} x {jax.devices()[0].device_kind}",
      "jax": jax.__version__, "history": result.history,
  }
  if main_process:
    (workdir / "report.json").write_text(json.dumps(report, indent=1, default=_json_default))
  val = f", val {100 * report['val']['accuracy']:.2f} %" if report["val"] else ""
  say(f"{spec.name} on {ds.name}: test accuracy {100 * test.accuracy:.2f} % "
      f"(loss {test.loss:.4f}, {test.count} images){val}; {report['epochs']} epochs, "
      f"{report['train_seconds']:.1f} s training; report {workdir / 'report.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""python -m jaxdepth fit: train a zoo model on a dataset with a recipe, report test accuracy.

    python -m jaxdepth fit                                    # digits_cnn on digits, seconds
    python -m jaxdepth fit --config cifar10_resnet18 --data-dir ~/tensorflow_datasets
    python -m jaxdepth fit --model resnet20 --dataset cifar10 --config cifar10_resnet18 \\
        --workdir runs/r20 --config.epochs=30 --config.milestones=15,25

A config is a file of jaxdepth/train/configs/ (python -m jaxdepth list shows them with one
line each) or a path to one; --config.KEY=VALUE overrides any of its keys:
model, model_kwargs, pretrained and pretrained_new_head (the model); dataset,
data_dir, val_fraction, split_seed, val_augment, image_size, normalization,
layout, tokenizer and max_length (the data); epochs, batch_size, optimizer, lr,
momentum, nesterov, weight_decay, milestones, gamma, b1, b2, eps and augment
(the recipe); seed, dtype, eval_batch_size, eval_every and
checkpoint_every_steps (the run).
Every setting is checked before anything runs, one line per problem.

The work directory (default runs/fit-<model>-<dataset>-seed<seed>) holds
run.json (the settings of the run it holds), checkpoints/ (orbax, every
epoch), metrics.jsonl (one line per epoch), model/ (the final model, for
jaxdepth.checkpoint.load_model) and report.json. Running the same command
again resumes from the latest checkpoint (a finished run is just
re-evaluated); epochs may grow, or shrink while the new last epoch has not
begun, and the evaluation and checkpoint cadence may change, any other change
(model, data, recipe, seed, dtype) is refused and named (--model, --pretrained,
--config.tokenizer and --dataset folder: paths may be spelled another way). A run whose
checkpoints/ were deleted cannot resume: with its model/ or report.json there,
it is refused, as a run with other settings is. A NaN loss stops the run,
keeping the last good checkpoint; that checkpoint resumes only with the same
settings, so rerun with a lower learning rate in another --workdir (or after
deleting this one).
Ctrl-C, a full disk or a read-only work directory stop it cleanly with the
command that resumes. --multihost (or JAX_COORDINATOR_ADDRESS in the
environment) calls jax.distributed.initialize() first; every process runs the
same command.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

from jaxdepth.train import command
from jaxdepth.train import config as config_lib

NAME = "fit"
DEFAULT_CONFIG = "digits"


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m jaxdepth fit", description=command.plain(__doc__),
                              epilog=command.EXIT_CODES_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  command.add_run_arguments(
      p, config_help=f"a config file or a name in jaxdepth/train/configs/ (default: {DEFAULT_CONFIG}; "
                     f"python -m jaxdepth list shows them)",
      workdir_help="run directory (default: runs/fit-<model>-<dataset>-seed<seed>)")
  command.add_launch_arguments(p)
  return p


def workdir_conflict(workdir: pathlib.Path, cfg: dict[str, Any]) -> str | None:
  """Why ``workdir`` cannot resume this run (settings that change the result differ), or ``None``.

  Only a work directory holding checkpoints or a run's results (``model/``,
  ``report.json``) belongs to a run; every key but :data:`jaxdepth.train.config.FREE_KEYS`
  (``epochs``, within what ``training.fit`` allows; the evaluation and checkpoint
  cadence) must then be the same, paths (``model``, ``pretrained``, ``tokenizer``)
  compared resolved (:func:`jaxdepth.train.command.same_setting`). A run whose results are
  there but whose checkpoints are gone cannot resume: it is refused too.

  Raises:
    jaxdepth.training.RunMismatchError: its ``run.json`` is not the JSON object jaxdepth
      writes (:func:`jaxdepth.driver.read_run_json`).
  """
  from jaxdepth import driver  # pylint: disable=import-outside-toplevel
  results = [name for name in ("model/", "report.json") if (workdir / name).exists()]
  if not command.has_checkpoints(workdir) and not results:
    return None
  stored = driver.read_run_json(workdir)
  if stored is None:
    what = "checkpoints" if command.has_checkpoints(workdir) else " and ".join(results)
    return (f"work directory {workdir} holds {what} but no run.json (another program's "
            f"run?); use another --workdir")
  if stored.get("method"):   # a method's run (python -m jaxdepth easier, egp, ...)
    return (f"work directory {workdir} holds a {stored['method']!r} run (python -m jaxdepth "
            f"{stored['method']}), not a 'fit' run; use another --workdir")
  asked = json.loads(json.dumps(cfg, default=str))
  diffs = [f"{k}: {stored.get(k)!r} stored, {asked.get(k)!r} asked"
           for k in sorted(set(stored) | set(asked))
           if k not in config_lib.FREE_KEYS
           and not command.same_setting(k, stored.get(k), asked.get(k), cfg.get("dataset"))]
  if not diffs and not command.has_checkpoints(workdir):
    return (f"work directory {workdir} holds this run's results ({', '.join(results)}) but its "
            f"checkpoints/ are gone: it can be neither resumed nor re-evaluated, and training "
            f"it again would overwrite them. To train it again from the start, move {workdir} "
            f"aside or delete it; or use another --workdir.")
  if not diffs:
    return None
  same_model = command.same_setting("model", stored.get("model"), cfg["model"])
  what = (f"a run of {stored.get('model')} on {stored.get('dataset')}, not of {cfg['model']} on "
          f"{cfg['dataset']}" if not same_model or stored.get("dataset") != cfg["dataset"]
          else "a run with other settings")
  return (f"work directory {workdir} holds {what} ({'; '.join(diffs)}). Resume it with the same "
          f"settings, use another --workdir, or delete {workdir} to start over.")


def _write_run_json(workdir: pathlib.Path, cfg: dict[str, Any]) -> None:
  """Writes ``run.json`` atomically, paths resolved (a resume from another directory reads
  them the same)."""
  tmp = workdir / "run.json.tmp"
  tmp.write_text(json.dumps(command.recorded_paths(cfg), indent=1, default=str))
  tmp.replace(workdir / "run.json")


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  session = command.Session(NAME, argv)
  return session.run(lambda: _main(session, argv))


def _main(session: command.Session, argv: list[str]) -> int:
  args = command.start(session, build_parser(), argv)
  if args is None:
    return 0
  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import checkpoint, costs, training  # pylint: disable=import-outside-toplevel
  from jaxdepth import report as report_lib  # pylint: disable=import-outside-toplevel

  cfg, workdir, ds, spec = command.prepare(session, args, args.config or DEFAULT_CONFIG)
  conflict = workdir_conflict(workdir, cfg)
  if conflict:
    raise config_lib.ConfigError(conflict)
  try:   # a rule of the recipe config.check does not know is still the settings' fault
    recipe = config_lib.recipe_of(cfg)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  main_process = jax.process_index() == 0
  say = command.main_process_say()
  dtype = command.compute_dtype(cfg["dtype"])
  variables = command.initial_variables(cfg, spec)
  if main_process and not command.has_checkpoints(workdir):
    _write_run_json(workdir, cfg)     # a fresh run owns the directory from now on
  mesh = training.make_mesh()
  say(f"{spec.name} on {ds.name}: {costs.count_params(spec):,} parameters, "
      f"{command.plural(len(spec.sites()), 'site')}; {command.data_and_devices(ds, workdir, mesh)}")

  # ------------------------------------------------------------------------ fit
  tic = time.perf_counter()
  try:
    result = training.fit(
        spec, variables, ds, recipe, workdir=workdir, seed=cfg["seed"], mesh=mesh, dtype=dtype,
        progress=args.progress, eval_batch_size=cfg["eval_batch_size"],
        eval_every=cfg["eval_every"], checkpoint_every_steps=cfg["checkpoint_every_steps"],
        meta={"config": cfg})
  except training.RunMismatchError as e:   # other initial weights: in the command line's terms
    said = command.mismatch_in_cli_terms(e, cfg, workdir)
    if said is e:
      raise
    raise said from e
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
    (workdir / "report.json").write_text(json.dumps(report_lib.json_safe(report), indent=1,
                                                    default=str, allow_nan=False))
    _write_run_json(workdir, cfg)       # epochs or evaluation settings may have changed
  val = f", val {100 * report['val']['accuracy']:.2f} %" if report["val"] else ""
  say(f"{spec.name} on {ds.name}: test accuracy {100 * test.accuracy:.2f} % "
      f"(loss {test.loss:.4f}, {command.plural(test.count, 'example')}){val}; "
      f"{command.plural(report['epochs'], 'epoch')}, "
      f"{report['train_seconds']:.1f} s training; report {workdir / 'report.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""One process of the multi-process tests (started by tests/test_multiprocess.py).

Environment:
  SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID and
    JAX_COORDINATOR_PORT: a multi-process launch as SLURM's ``srun`` describes it;
    the worker joins it as ``--multihost`` does (none: a plain one-process run).
  MP_DEVICES: CPU devices of this process (default 1; more are fake devices).
  MP_MESHES: device counts of the meshes the library check runs on, comma-separated
    (default: every device of every process).
  MP_COMMANDS: ``1`` to run the method commands too.
  MP_WORKDIR: a work directory shared by the processes of one run.
  MP_OUT: where this process writes its results (``<MP_OUT>.npz`` arrays and
    ``<MP_OUT>.json`` facts).

The library check trains a ``fit`` epoch with the last epoch's site statistics
(checkpointed), trains it again from the same work directory (which restores the
finished run from the checkpoint every process wrote and trains nothing), and takes
EASIER's decision: the entropies, the site removed, the gates after it. The command
check runs every method command on its digits default with tiny settings and keeps
what this process computed (its report, the chosen model, the method state). Every
file this process writes through Python is recorded.
"""
import builtins
import io
import json
import os
import pathlib
import sys
import time

import jax

from jaxdepth.train import command  # noqa: E402  (touches no device)

jax.config.update("jax_num_cpu_devices", int(os.environ.get("MP_DEVICES", "1")))
MULTIHOST = "SLURM_JOB_ID" in os.environ
if MULTIHOST:   # what --multihost does: jax finds the processes in SLURM's variables
  command.maybe_initialize_distributed(True)
  assert jax.process_count() == int(os.environ["SLURM_NTASKS"])

import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

WORKDIR = pathlib.Path(os.environ["MP_WORKDIR"])
written: set[str] = set()
_open = builtins.open


def _recording_open(file, mode="r", *args, **kwargs):
  if any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)):
    path = os.path.relpath(os.path.abspath(file), WORKDIR)
    if not path.startswith(".."):
      written.add(path)
  return _open(file, mode, *args, **kwargs)


builtins.open = io.open = _recording_open

from jaxdepth import data, driver, network, optim, report, training, zoo  # noqa: E402
from jaxdepth.methods import easier  # noqa: E402
from jaxdepth.train import __main__ as cli  # noqa: E402

results: dict[str, driver.RunResult] = {}
_run = driver.run


def _recording_run(method, *args, **kwargs):
  """driver.run, keeping what this process computed (the commands only print it)."""
  results[method.name] = _run(method, *args, **kwargs)
  return results[method.name]


driver.run = _recording_run

# Each method's digits default with tiny settings: one epoch, evaluations at batch 64,
# width 8, and digits_cnn for the methods whose default is resnet20 (three times the
# nodes to trace and compile). EASIER times the dense, chosen and merged models on every
# process (at batch 1 and 64); the others time nothing (those compilations cost more
# than their training).
TINY = ["--no-progress", "--config.epochs=1", "--config.milestones=()",
        "--config.eval_batch_size=64", "--config.model_kwargs.width=8"]
COMMANDS = {
    "easier": ["--iterations", "2"],
    "egp": ["--model", "digits_cnn", "--iterations", "1", "--no-latency"],
    "nepenthe": ["--model", "digits_cnn", "--iterations", "2", "--no-latency"],
    "lacoot": ["--model", "digits_cnn", "--iterations", "2", "--no-latency"],
    "tlc": ["--iterations", "1", "--config.rank_batch_size=64", "--accuracy-threshold", "0",
            "--no-latency"],
}


def host(tree) -> list[np.ndarray]:
  """This process's copy of every leaf (replicated arrays: any local shard)."""
  return [np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)
          for x in jax.tree.leaves(tree)]


def library_check(devices: int, arrays: dict, facts: dict) -> None:
  """A fit epoch on ``devices`` devices, restored, and the EASIER decision it leads to."""
  mesh = training.make_mesh(jax.devices()[:devices])
  spec = zoo.digits_cnn(width=8)
  ds = data.load("digits")
  # SGD: with Adam the float-order differences between device counts grow to 4e-4 within
  # the epoch (tests/test_multiprocess.py).
  recipe = optim.Recipe(epochs=1, batch_size=64, optimizer="sgd", lr=0.05)
  gates = network.gates_for(spec)
  options = training.TrainOptions(gates=gates, stats_last_epoch=True)
  workdir = WORKDIR / f"fit{devices}"
  fitted = training.fit(spec, network.init(spec, jax.random.key(0)), ds, recipe, seed=1,
                        mesh=mesh, options=options, progress=False, workdir=workdir)
  again = training.fit(spec, network.init(spec, jax.random.key(0)), ds, recipe, seed=1,
                       mesh=mesh, options=options, progress=False, workdir=workdir)
  entropies = easier.measure(fitted.stats, spec.sites())
  removed = easier.choose(entropies)
  for name, tree in (("fit", fitted.variables), ("again", again.variables),
                     ("gates", easier.apply(gates, removed, spec=spec))):
    arrays.update({f"{devices}/{name}/{i}": a for i, a in enumerate(host(tree))})
  facts[f"library{devices}"] = {"entropies": entropies, "removed": list(removed),
                                "history": [{k: v for k, v in h.items() if k != "seconds"}
                                            for h in fitted.history]}


def command_check(arrays: dict, facts: dict) -> None:
  for name, args in COMMANDS.items():
    launch = ["--multihost"] if MULTIHOST else []   # initialized already: nothing more
    assert cli.main([name, "--workdir", str(WORKDIR / name), *launch, *TINY, *args]) == 0, name
    result = results[name]
    facts[name] = report.without_timings(result.report)
    arrays.update({f"{name}/chosen/{i}": a for i, a in enumerate(host(result.chosen_variables))})
    arrays.update({f"{name}/state/{i}": a for i, a in enumerate(host(result.state))})


def main() -> None:
  if jax.process_count() > 1:   # gloo gives a late peer 30 s at the first collective
    ocp.multihost.sync_global_processes("worker_start", timeout=600)
  arrays, facts, cpu = {}, {}, {"start": time.process_time()}
  meshes = os.environ.get("MP_MESHES") or str(jax.device_count())
  for devices in map(int, meshes.split(",")):
    library_check(devices, arrays, facts)
    cpu[f"library{devices}"] = time.process_time() - sum(cpu.values())
  if os.environ.get("MP_COMMANDS") == "1":
    command_check(arrays, facts)
    cpu["commands"] = time.process_time() - sum(cpu.values())
  facts.update(cpu_seconds=cpu, process=jax.process_index(), processes=jax.process_count(),
               devices=jax.device_count(), written=sorted(written))
  out = os.environ["MP_OUT"]
  np.savez(out + ".npz", **arrays)
  with _open(out + ".json", "w") as f:
    json.dump(facts, f)


if __name__ == "__main__":
  main()
  sys.stdout.flush()

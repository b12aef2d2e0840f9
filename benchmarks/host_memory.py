"""What glibc's settings do to a CIFAR train step: defaults, freed memory kept, and huge pages.

XLA:CPU allocates a step's temporaries (0.4 GB for ResNet-18, 2.7 GB for
MobileNetV2 at batch 128) at every call and frees them after
(:mod:`jaxdepth.host_memory`). This times jaxdepth's plain train step
(:func:`jaxdepth.training.make_train_step`, float32, 32x32x3 inputs) in one
worker process per setting of ``GLIBC_TUNABLES``, which glibc reads only when a
process starts:

* ``default``: glibc's defaults (large blocks are fresh ``mmap`` pages, faulted
  in and zero-filled at every step);
* ``keep``: freed memory kept for reuse (:data:`jaxdepth.host_memory.TUNABLES`,
  what :func:`jaxdepth.host_memory.keep_freed_memory` sets and the
  ``python -m jaxdepth`` commands use);
* ``huge_pages``: ``keep`` and transparent huge pages for the heap
  (``glibc.malloc.hugetlb=1``: glibc asks the kernel for them on the memory it
  takes, which Linux's usual THP mode, ``madvise``, requires).

The workers run blocks of steps in turn, in a new seeded order each repeat
(each block after one untimed step), so a change in the machine's speed hits
all alike. Prints one JSON object with, per model, each setting's median step
time, minor page faults per step and the process's anonymous huge pages, and
the ratios ``keep/default``, ``huge_pages/keep`` (also as ``*_paired``: the
median over repeats of the ratio of the two blocks of one repeat).

Run::

    python benchmarks/host_memory.py [--models resnet18 mobilenet_v2] [--batch 128]
        [--steps 3] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

from jaxdepth import host_memory

MODELS = ("resnet18", "mobilenet_v2")
SETTINGS = {
    "default": None,
    "keep": host_memory.TUNABLES,
    "huge_pages": host_memory.TUNABLES + ":glibc.malloc.hugetlb=1",
}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per block")
  parser.add_argument("--repeats", type=int, default=5, help="blocks of each setting")
  parser.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if min(args.batch, args.steps, args.repeats) <= 0:
    parser.error("--batch, --steps and --repeats must be positive")
  return args


def anonymous_huge_pages_kib() -> int:
  """This process's ``AnonHugePages`` (``/proc/self/smaps_rollup``), in KiB."""
  with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
    for line in rollup:
      if line.startswith("AnonHugePages:"):
        return int(line.split()[1])
  return 0


def worker(model, batch_size):
  """Compiles ``model``'s train step, then times ``n`` steps for each ``n`` read from stdin."""
  import jax   # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp   # pylint: disable=import-outside-toplevel
  from jaxdepth import network, optim, training, zoo   # pylint: disable=import-outside-toplevel

  spec = zoo.get(model, num_classes=10, input_shape=(32, 32, 3))
  mesh = training.make_mesh(jax.devices()[:1])
  kx, ky, kinit = jax.random.split(jax.random.key(0), 3)
  batch = training.shard_batch({
      "image": jax.random.normal(kx, (batch_size, *spec.input_shape), jnp.float32),
      "label": jax.random.randint(ky, (batch_size,), 0, 10),
      "mask": jnp.ones((batch_size,), bool)}, mesh)
  tx = optim.make_optimizer(optim.Recipe(lr=0.1, momentum=0.9, weight_decay=5e-4,
                                         milestones=(80, 120)), 390)
  state = training.replicate(training.TrainState.create(network.init(spec, kinit), tx, 0), mesh)
  step = training.make_train_step(spec, tx, mesh=mesh).jitted
  compiled = step.lower(state, batch, None, None, None, None).compile()

  def run(n):
    nonlocal state
    seconds, faults = [], []
    for _ in range(n):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      tic = time.perf_counter()
      state, metrics, _ = compiled(state, batch, None, None, None, None)
      jax.block_until_ready((state, metrics))
      seconds.append(time.perf_counter() - tic)
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"seconds": seconds, "faults": faults, "huge_kib": anonymous_huge_pages_kib()}

  run(2)   # the heap grows to its peak over the first steps
  print(json.dumps({"ready": True}), flush=True)
  for line in sys.stdin:
    print(json.dumps(run(int(line))), flush=True)


class Worker:
  """One model's train step in a process of its own, started with ``tunables``."""

  def __init__(self, model, tunables, batch):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.ENV)}
    if tunables is not None:
      env["GLIBC_TUNABLES"] = tunables
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", model, "--batch", str(batch)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self._answer()

  def _answer(self):
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"a worker stopped (exit code {self.proc.wait()})")
    return json.loads(line)

  def run(self, n):
    self.proc.stdin.write(f"{n}\n")
    self.proc.stdin.flush()
    return self._answer()

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def compare(model, args):
  workers = {name: Worker(model, tunables, args.batch) for name, tunables in SETTINGS.items()}
  try:
    blocks = {name: [] for name in workers}
    faults = {name: [] for name in workers}
    huge_kib = {}
    order = random.Random(0)
    for _ in range(args.repeats):
      for name in order.sample(list(workers), len(workers)):
        workers[name].run(1)
        answer = workers[name].run(args.steps)
        blocks[name].append(statistics.median(answer["seconds"]))
        faults[name] += answer["faults"]
        huge_kib[name] = answer["huge_kib"]
  finally:
    for w in workers.values():
      w.close()

  def paired(a, b):
    return round(statistics.median(x / y for x, y in zip(blocks[a], blocks[b])), 3)

  step_s = {name: statistics.median(v) for name, v in blocks.items()}
  return {"step_s": {name: round(t, 4) for name, t in step_s.items()},
          "minor_faults_per_step": {name: int(statistics.median(v)) for name, v in faults.items()},
          "anon_huge_pages_mib": {name: kib // 1024 for name, kib in huge_kib.items()},
          "ratios": {"keep/default": round(step_s["keep"] / step_s["default"], 3),
                     "huge_pages/keep": round(step_s["huge_pages"] / step_s["keep"], 3)},
          "ratios_paired": {"keep/default": paired("keep", "default"),
                            "huge_pages/keep": paired("huge_pages", "keep")}}


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    worker(args.worker, args.batch)
    return
  out = {"batch": args.batch, "steps": args.steps, "repeats": args.repeats,
         "cpus": len(os.sched_getaffinity(0)), "load_average_1min": round(os.getloadavg()[0], 2),
         "transparent_hugepage": _thp_mode(), "settings": SETTINGS, "models": {}}
  for model in args.models:
    out["models"][model] = compare(model, args)
  print(json.dumps(out))


def _thp_mode():
  """The kernel's transparent huge page mode (``always``, ``madvise`` or ``never``), if known."""
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
      return f.read().split("[")[1].split("]")[0]
  except (OSError, IndexError):
    return None


if __name__ == "__main__":
  main()

"""What LaCoOT's regularizer costs in a training step.

Times jaxdepth's own jitted train step (:func:`jaxdepth.training.make_train_step`:
forward, backward, SGD with momentum) on CIFAR ResNet-18 without and with the
LaCoOT term (``λ · mean_k MSWD`` over the four ``layerS/1`` blocks, 50 random
projections per block and step, the blocks' inputs and outputs captured in the
same forward pass). The two steps are timed side by side in one process,
alternating blocks of steps, and the medians are compared, so that a noisy
machine affects both alike. Prints one JSON line::

    {"step_s_plain": ..., "step_s_lacoot": ..., "overhead": ..., "device": ...}

``overhead`` is ``step_s_lacoot / step_s_plain - 1`` (target: at most 0.04);
``overhead_paired`` (median ratio of neighbouring blocks) and ``overhead_min``
(ratio of the fastest blocks) are less sensitive to other load on the machine.

Run::

    python benchmarks/lacoot_step_overhead.py [--batch 128] [--steps 3] [--repeats 5]
        [--model resnet18] [--projections 50]

A CIFAR ResNet-18 step at batch 128 takes seconds on a small CPU; ``--batch``
lowers it (the figure then says which batch it used).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from jaxdepth import network, training, zoo
from jaxdepth.methods import lacoot


def run_block(step, state, steps, batch, gates):
  """Runs ``steps`` steps from ``state``; returns the new state and seconds per step."""
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics, _ = step(state, batch, None, None, None, gates)
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - start) / steps


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=128, help="examples per step")
  parser.add_argument("--steps", type=int, default=3, help="steps per timed block")
  parser.add_argument("--repeats", type=int, default=5, help="timed blocks of each kind")
  parser.add_argument("--projections", type=int, default=50, help="directions per block")
  parser.add_argument("--weight", type=float, default=5.0, help="λ")
  parser.add_argument("--model", default="resnet18", choices=("resnet18", "resnet20"))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if min(args.batch, args.steps, args.repeats, args.projections) <= 0:
    parser.error("--batch, --steps, --repeats and --projections must be positive")
  if args.batch < 2:
    parser.error("--batch must be at least 2 (a distance between samples)")

  spec = zoo.get(args.model)
  units = lacoot.find_blocks(spec, "official" if args.model == "resnet18" else "block")
  kx, ky, kinit = jax.random.split(jax.random.key(args.seed), 3)
  mesh = training.make_mesh(jax.devices()[:1])
  batch = training.shard_batch({
      "image": jax.random.normal(kx, (args.batch, *spec.input_shape), jnp.float32),
      "label": jax.random.randint(ky, (args.batch,), 0, spec.output_shape[-1]),
      "mask": jnp.ones((args.batch,), bool)}, mesh)
  variables = network.init(spec, kinit)
  tx = optax.sgd(0.1, momentum=0.9)
  reg = lacoot.regularizer(units, args.weight, args.projections)
  plain = training.make_train_step(spec, tx, mesh=mesh)
  regularized = training.make_train_step(spec, tx, mesh=mesh, regularizer=reg)
  gates = training.replicate({u: jnp.float32(1.0) for u in units}, mesh)
  states = {"plain": training.replicate(training.TrainState.create(variables, tx, 0), mesh),
            "lacoot": training.replicate(training.TrainState.create(variables, tx, 0), mesh)}
  steps = {"plain": (plain, None), "lacoot": (regularized, gates)}
  compile_s = {}
  for kind, (fn, g) in steps.items():   # compile and warm up both
    tic = time.perf_counter()
    states[kind], _ = run_block(fn, states[kind], 1, batch, g)
    compile_s[kind] = round(time.perf_counter() - tic, 2)
    states[kind], _ = run_block(fn, states[kind], 1, batch, g)

  times = {"plain": [], "lacoot": []}
  for r in range(args.repeats):
    # Alternate which goes first so that a drift in machine load hits both alike.
    for kind in (("plain", "lacoot") if r % 2 == 0 else ("lacoot", "plain")):
      fn, g = steps[kind]
      states[kind], t = run_block(fn, states[kind], args.steps, batch, g)
      times[kind].append(t)

  p, q = statistics.median(times["plain"]), statistics.median(times["lacoot"])
  print(json.dumps({
      "step_s_plain": round(p, 5), "step_s_lacoot": round(q, 5),
      "overhead": round(q / p - 1, 4),
      "overhead_paired": round(statistics.median(
          b / a - 1 for a, b in zip(times["plain"], times["lacoot"])), 4),
      "overhead_min": round(min(times["lacoot"]) / min(times["plain"]) - 1, 4),
      "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
      "model": spec.name, "blocks": list(units), "projections": args.projections,
      "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
      "compile_s": compile_s, "jax": jax.__version__,
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
      "times_plain": [round(t, 5) for t in times["plain"]],
      "times_lacoot": [round(t, 5) for t in times["lacoot"]]}))


if __name__ == "__main__":
  main()

"""What keeping pruned weights at zero costs in a training step (EGP / NEPENTHE).

Times the jitted train step of :func:`jaxdepth.training.make_train_step` on
ResNet-18 (CIFAR stem, 32x32x3 inputs, SGD momentum 0.9 with L2 weight decay,
the paper's recipe) without masks and with element-wise masks on the 17
prunable convs (:func:`jaxdepth.methods.egp.layer_map`, half of each pruned),
which the step applies to the weights (:func:`jaxdepth.optim.apply_masks`) and
:func:`jaxdepth.optim.keep_masked` to the gradient and to the update. The two steps are timed side by side in one process, alternating blocks
of steps, and the medians compared, so a noisy machine affects both alike. Freed host
memory is kept in the process (:mod:`jaxdepth.host_memory`), as the commands keep it.
Prints one JSON line::

    {"model": "resnet18", "batch": 128, "step_s_plain": ..., "step_s_masked": ...,
     "overhead": ..., "overhead_paired": ..., "overhead_min": ..., ...}

``overhead`` is ``step_s_masked / step_s_plain - 1`` (target: at most 0.03);
``overhead_paired`` (median ratio of neighbouring blocks) and ``overhead_min``
(ratio of the fastest blocks) are less sensitive to other load on the machine.

Run::

    python benchmarks/masked_step_overhead.py [--batch 128] [--steps 3] [--repeats 5]
        [--model resnet18]

A ResNet-18 step at batch 128 takes seconds on a CPU; ``--batch 16`` gives a
quicker (less representative) figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxdepth import host_memory, network, optim, training, zoo
from jaxdepth.methods import Egp


def half_masks(spec, key):
  """EGP's mask template for ``spec`` with a random half of every prunable kernel pruned."""
  flat = traverse_util.flatten_dict(Egp().init(spec)["masks"])
  out = {}
  for path, m in flat.items():
    key, sub = jax.random.split(key)
    out[path] = jax.random.bernoulli(sub, 0.5, m.shape)
  return traverse_util.unflatten_dict(out)


def run_block(step, state, steps, batch, masks):
  """Runs ``steps`` steps from ``state``; returns the new state and seconds per step."""
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _, _ = step(state, batch, None, None, masks)
  jax.block_until_ready(state)
  return state, (time.perf_counter() - start) / steps


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="resnet18", help="a zoo model (CIFAR input shape)")
  parser.add_argument("--batch", type=int, default=128, help="examples per step")
  parser.add_argument("--steps", type=int, default=3, help="steps per timed block")
  parser.add_argument("--repeats", type=int, default=5, help="timed blocks of each kind")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if min(args.batch, args.steps, args.repeats) <= 0:
    parser.error("--batch, --steps and --repeats must be positive")
  if args.model not in zoo.names():
    parser.error(f"--model: unknown model {args.model!r}; known models: {', '.join(zoo.names())}")
  keep = host_memory.keep_freed_memory()   # as the commands do

  spec = zoo.get(args.model, num_classes=10, input_shape=(32, 32, 3))
  kx, ky, kinit, kmask = jax.random.split(jax.random.key(args.seed), 4)
  batch = {"image": jax.random.normal(kx, (args.batch, *spec.input_shape), jnp.float32),
           "label": jax.random.randint(ky, (args.batch,), 0, 10),
           "mask": jnp.ones((args.batch,), bool)}
  variables = network.init(spec, kinit)
  recipe = optim.Recipe(lr=0.1, momentum=0.9, weight_decay=1e-4, milestones=(80, 120))
  tx = optim.make_optimizer(recipe, 351)
  mesh = training.make_mesh(jax.devices()[:1])
  step = training.make_train_step(spec, tx, mesh=mesh)
  masks = half_masks(spec, kmask)
  batch = training.shard_batch(batch, mesh)
  masks_rep = training.replicate(masks, mesh)
  plain_state = training.replicate(training.TrainState.create(variables, tx, 0), mesh)
  masked_vars = {**variables, "params": optim.apply_masks(variables["params"], masks)}
  masked_state = training.replicate(training.TrainState.create(masked_vars, tx, 0), mesh)
  plain_state, _ = run_block(step, plain_state, 1, batch, None)        # compile both
  masked_state, _ = run_block(step, masked_state, 1, batch, masks_rep)

  times_plain, times_masked = [], []
  for r in range(args.repeats):
    order = ("plain", "masked") if r % 2 == 0 else ("masked", "plain")
    for kind in order:
      if kind == "plain":
        plain_state, t = run_block(step, plain_state, args.steps, batch, None)
        times_plain.append(t)
      else:
        masked_state, t = run_block(step, masked_state, args.steps, batch, masks_rep)
        times_masked.append(t)

  plain, masked = statistics.median(times_plain), statistics.median(times_masked)
  print(json.dumps({
      "model": args.model, "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
      "step_s_plain": round(plain, 5), "step_s_masked": round(masked, 5),
      "overhead": round(masked / plain - 1, 4),
      "overhead_paired": round(statistics.median(
          m / p for m, p in zip(times_masked, times_plain)) - 1, 4),
      "overhead_min": round(min(times_masked) / min(times_plain) - 1, 4),
      "masked_kernels": len(traverse_util.flatten_dict(masks)),
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "keep_host_memory": keep,
      "load_average": os.getloadavg(),
  }))


if __name__ == "__main__":
  main()

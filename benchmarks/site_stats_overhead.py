"""What collecting site statistics costs in a training step.

Times one jitted ResNet-20 train step (forward, backward, SGD with momentum)
with and without per-site sign counts (``collect_stats=True`` plus
:func:`jaxdepth.stats.accumulate`, which also evaluates the per-batch EGP and
EASIER entropies). The two steps are timed side by side in one process,
alternating blocks of steps, and the medians are compared, so that a noisy
machine affects both alike. Prints one JSON line::

    {"step_s_plain": ..., "step_s_stats": ..., "overhead": ..., "device": ...}

``overhead`` is ``step_s_stats / step_s_plain - 1`` (target: at most 0.05);
``overhead_paired`` (median ratio of neighbouring blocks) and ``overhead_min``
(ratio of the fastest blocks) are less sensitive to other load on the machine.

Run::

    python benchmarks/site_stats_overhead.py [--batch 128] [--steps 5] [--repeats 7]

On a CPU, glibc's allocator can dominate timings (it may return large blocks to the OS and fault
them in again at every step); the
output records ``GLIBC_TUNABLES`` so figures say which setting they used.
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

from jaxdepth import network, stats, zoo


def make_steps(spec, tx):
  """The plain and the statistics-collecting train steps, both jitted."""

  def loss_fn(params, batch_stats, x, y, collect):
    out = network.forward(spec, {"params": params, "batch_stats": batch_stats}, x,
                          train=True, collect_stats=collect)
    loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, y).mean()
    return loss, (out.batch_stats, out.site_counts)

  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  @jax.jit
  def plain(params, batch_stats, opt_state, x, y):
    grads, (batch_stats, _) = jax.grad(loss_fn, has_aux=True)(params, batch_stats, x, y, False)
    params, opt_state = update(params, opt_state, grads)
    return params, batch_stats, opt_state

  @jax.jit
  def with_stats(params, batch_stats, opt_state, site_stats, x, y):
    grads, (batch_stats, counts) = jax.grad(loss_fn, has_aux=True)(
        params, batch_stats, x, y, True)
    params, opt_state = update(params, opt_state, grads)
    return params, batch_stats, opt_state, stats.accumulate(site_stats, counts)

  return plain, with_stats


def run_block(step, state, steps, *data):
  """Runs ``steps`` steps from ``state``; returns the new state and seconds per step."""
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state = step(*state, *data)
  jax.block_until_ready(state)
  return state, (time.perf_counter() - start) / steps


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=128, help="examples per step")
  parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
  parser.add_argument("--repeats", type=int, default=7, help="timed blocks of each kind")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if min(args.batch, args.steps, args.repeats) <= 0:
    parser.error("--batch, --steps and --repeats must be positive")

  spec = zoo.resnet20()
  kx, ky, kinit = jax.random.split(jax.random.key(args.seed), 3)
  x = jax.random.normal(kx, (args.batch, *spec.input_shape), jnp.float32)
  y = jax.random.randint(ky, (args.batch,), 0, spec.output_shape[-1])
  variables = network.init(spec, kinit)
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(variables["params"])
  plain, with_stats = make_steps(spec, tx)

  plain_state = (variables["params"], variables["batch_stats"], opt_state)
  stats_state = plain_state + (stats.empty_stats(spec),)
  # Compile and warm up both.
  plain_state, _ = run_block(plain, plain_state, 2, x, y)
  stats_state, _ = run_block(with_stats, stats_state, 2, x, y)

  times_plain, times_stats = [], []
  for r in range(args.repeats):
    # Alternate which goes first so that a drift in machine load hits both alike.
    order = ("plain", "stats") if r % 2 == 0 else ("stats", "plain")
    for kind in order:
      if kind == "plain":
        plain_state, t = run_block(plain, plain_state, args.steps, x, y)
        times_plain.append(t)
      else:
        stats_state, t = run_block(with_stats, stats_state, args.steps, x, y)
        times_stats.append(t)

  step_plain, step_stats = statistics.median(times_plain), statistics.median(times_stats)
  print(json.dumps({
      "step_s_plain": round(step_plain, 5), "step_s_stats": round(step_stats, 5),
      "overhead": round(step_stats / step_plain - 1, 4),
      # Less sensitive to load from other processes: the median of the ratios of
      # neighbouring blocks, and the ratio of the fastest blocks.
      "overhead_paired": round(statistics.median(
          s / p - 1 for s, p in zip(times_stats, times_plain)), 4),
      "overhead_min": round(min(times_stats) / min(times_plain) - 1, 4),
      "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
      "model": spec.name, "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
      "sites": len(spec.sites()), "jax": jax.__version__,
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
      "times_plain": [round(t, 5) for t in times_plain],
      "times_stats": [round(t, 5) for t in times_stats]}))


if __name__ == "__main__":
  main()

"""What LaCoOT's random directions cost: ``jax.random.normal`` against ``jaxdepth.threefry.normal``.

Draws the ``(n, D)`` Gaussian matrices of one LaCoOT step (one per official unit
of a model, each from ``fold_in(key, unit)``, as :class:`jaxdepth.methods.lacoot.Penalty`
does) in one jitted function, through ``jax.random.normal`` and through
:func:`jaxdepth.threefry.normal`, alternating the two, and checks that both give
the same bits. Prints one JSON line::

    {"wall_s_jax_random": ..., "wall_s_threefry": ..., "speedup": ..., "same_bits": true, ...}

``speedup`` is the ratio of the median wall times (``cpu_speedup`` of the CPU
times). Run::

    python benchmarks/random_draws.py [--model mobilenet_v2] [--projections 50] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from jaxdepth import host_memory, network, threefry, zoo
from jaxdepth.methods import lacoot


def unit_features(spec) -> list[int]:
  """Features per sample of each official unit's input (the ``D`` of its directions)."""
  units = lacoot.official_units(spec)
  variables = jax.eval_shape(lambda: network.init(spec, jax.random.key(0)))
  out = jax.eval_shape(lambda v, x: network.forward(spec, v, x, capture=units), variables,
                       jax.ShapeDtypeStruct((2, *spec.input_shape), np.float32))
  return [int(np.prod(out.captured[u][0].shape[1:])) for u in units]


def draws(normal, dims, n):
  """A jitted ``key -> [normal(fold_in(key, k), (n, D_k))]``."""
  return jax.jit(lambda key: [normal(jax.random.fold_in(key, k), (n, d))
                              for k, d in enumerate(dims)])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="mobilenet_v2", choices=("mobilenet_v2", "resnet18"))
  parser.add_argument("--projections", type=int, default=50, help="directions per unit")
  parser.add_argument("--repeats", type=int, default=7, help="timed calls of each")
  args = parser.parse_args(argv)
  if min(args.projections, args.repeats) <= 0:
    parser.error("--projections and --repeats must be positive")
  host_memory.keep_freed_memory()

  spec = zoo.get(args.model, num_classes=10, input_shape=(32, 32, 3))
  dims = unit_features(spec)
  fns = {"jax_random": draws(lambda k, s: jax.random.normal(k, s), dims, args.projections),
         "threefry": draws(threefry.normal, dims, args.projections)}
  key = jax.random.key(0)
  first = {name: jax.block_until_ready(fn(key)) for name, fn in fns.items()}
  same = all(np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
             for a, b in zip(first["jax_random"], first["threefry"]))
  wall, cpu = {name: [] for name in fns}, {name: [] for name in fns}
  for r in range(args.repeats):
    for name in (tuple(fns) if r % 2 == 0 else tuple(fns)[::-1]):
      # The key before the clock: fold_in runs eagerly, compiled at its first call.
      k = jax.block_until_ready(jax.random.fold_in(key, r))
      tic, cpu_tic = time.perf_counter(), time.process_time()
      jax.block_until_ready(fns[name](k))
      wall[name].append(time.perf_counter() - tic)
      cpu[name].append(time.process_time() - cpu_tic)
  med = {name: statistics.median(v) for name, v in wall.items()}
  med_cpu = {name: statistics.median(v) for name, v in cpu.items()}
  print(json.dumps({
      "wall_s_jax_random": round(med["jax_random"], 4), "wall_s_threefry": round(med["threefry"], 4),
      "speedup": round(med["jax_random"] / med["threefry"], 2),
      "cpu_s_jax_random": round(med_cpu["jax_random"], 4),
      "cpu_s_threefry": round(med_cpu["threefry"], 4),
      "cpu_speedup": round(med_cpu["jax_random"] / med_cpu["threefry"], 2),
      "same_bits": same, "normals": args.projections * sum(dims), "units": len(dims),
      "model": args.model, "repeats": args.repeats, "jax": jax.__version__,
      "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"}))


if __name__ == "__main__":
  main()

"""Side-by-side latency of networks: medians of interleaved, warmed-up timings.

A single timing of a small network on a shared CPU says little: the load
changes from one second to the next. :func:`latencies` therefore times the
networks it compares *in turns* (one measurement of each, in a rotating
order, then again), after warm-up calls that compile them, and reports the
median of each; a measurement repeats the call enough times to last at least
``min_seconds``, so the timer's resolution does not matter. Ratios between the
networks are what to read; absolute times depend on the machine and its load.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import jax

from jaxdepth.network import Network, random_input
from jaxdepth.spec import Spec
from jaxdepth.text.nodes import takes_token_ids

__all__ = ["latencies"]


def latencies(models: Mapping[str, tuple[Spec, Any]], batch: int, *, repeats: int = 9,
              warmup: int = 2, min_seconds: float = 2e-3, seed: int = 0,
              dtype=None) -> dict[str, float]:
  """Median seconds of one jitted eval forward of each model at ``batch`` examples.

  Args:
    models: ``{name: (spec, variables)}``; every spec must take the same input
      (one random batch, keyed by ``seed``, is fed to all:
      :func:`jaxdepth.network.random_input`).
    batch: examples per call.
    repeats: measurements per model (the median is kept), taken in turns.
    warmup: untimed calls per model first (the first one compiles).
    min_seconds: each measurement repeats the call until it lasts this long
      (the count is fixed per model from one timed call) and divides.
    dtype: compute dtype, as for :class:`~jaxdepth.network.Network` (``None``:
      float32); time a run's models in the dtype it evaluates them in.

  Returns:
    ``{name: seconds}`` in the order of ``models``.

  Raises:
    ValueError: no model, mismatched input shapes, or a bad count.
  """
  if not models:
    raise ValueError("latencies needs at least one model")
  if not isinstance(batch, int) or batch <= 0:
    raise ValueError(f"batch must be a positive int, got {batch!r}")
  if repeats < 1 or warmup < 1:
    raise ValueError(f"repeats and warmup must be >= 1, got {repeats} and {warmup}")
  shapes = {name: (tuple(spec.input_shape), takes_token_ids(spec))
            for name, (spec, _) in models.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"the models take different inputs {shapes} ((input shape, token ids)); "
                     f"latencies compares networks on one batch")
  x = random_input(next(iter(models.values()))[0], batch, seed)
  calls = {}
  for name, (spec, variables) in models.items():
    fn = jax.jit(lambda v, x, spec=spec: Network(spec, dtype=dtype).apply(v, x))
    for _ in range(warmup):
      fn(variables, x).block_until_ready()
    tic = time.perf_counter()
    fn(variables, x).block_until_ready()
    once = max(time.perf_counter() - tic, 1e-7)
    calls[name] = (fn, variables, max(1, min(1000, int(min_seconds / once) + 1)))

  names = list(models)
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      fn, variables, n = calls[name]
      tic = time.perf_counter()
      for _ in range(n):
        fn(variables, x).block_until_ready()
      times[name].append((time.perf_counter() - tic) / n)
  return {name: statistics.median(times[name]) for name in names}

"""What a merge costs: the yardsticks the passes compare before and after.

A merge is made only where it lowers the cost of the nodes it replaces. Three
yardsticks (:data:`COSTS`):

* ``"macs"``: multiply-accumulates per example. Convolutions and dense layers
  as :func:`jaxdepth.costs.count_macs` counts them; an unfolded BatchNorm counts
  one per element and a residual addition one per output element, since a merge
  that removes them saves an element-wise pass over the map. Ties go to the form
  with fewer nodes.
* ``"latency"``: the median eval time of the nodes, measured on this machine at
  ``batch`` examples (a jitted forward of a small spec made of just those nodes).
  Identical node configurations are timed once per process.
* ``"none"``: the number of nodes at the top level of the piece, so every
  allowed merge is made (for tests and for studying what merging does): a
  merged segment or a folded block is one node, even where it is a block
  holding a border correction.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from jaxdepth import costs
from jaxdepth import spec as S
from jaxdepth.surgery import _tree

__all__ = ["COSTS", "NAMES", "make_cost", "work", "measure_latency", "words"]

COSTS = ("macs", "latency", "none")

CostFn = Callable[[tuple, Mapping[str, dict], tuple], tuple[float, int]]


def _walk(nodes, prefix=""):
  for n in nodes:
    yield prefix + n.name, n
    yield from _walk(n.children(), prefix + n.name + S.SEP)


def work(nodes, in_shape) -> int:
  """Multiply-accumulates per example of ``nodes`` run on ``in_shape`` (see module doc)."""
  probe = S.Spec(tuple(in_shape), tuple(nodes), name="probe")
  shapes = probe.shapes()
  total = costs.count_macs(probe)
  for path, n in probe.walk():
    if isinstance(n, S.BatchNorm):
      total += math.prod(shapes[path][0])
    elif isinstance(n, S.Block):
      total += math.prod(shapes[path][1])
  return total


def measure_latency(spec: S.Spec, variables, *, batch: int = 1, repeats: int = 15,
                    warmup: int = 2) -> float:
  """Median seconds of one jitted eval forward of ``spec`` at ``batch`` examples.

  Args:
    spec: the architecture.
    variables: its variables.
    batch: examples per call.
    repeats: timed calls (after ``warmup`` untimed ones).
    warmup: untimed calls (the first compiles).

  Returns:
    The median wall time of a call, in seconds, on
    :func:`jaxdepth.network.random_input`.
  """
  _tree.check_model(spec, variables, "measure_latency(spec, variables)")
  from jaxdepth import network
  fn = jax.jit(lambda v, x: network.Network(spec).apply(v, x))
  x = network.random_input(spec, batch)
  for _ in range(warmup):
    fn(variables, x).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn(variables, x).block_until_ready()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _anonymous(nodes, start: int = 0) -> tuple:
  """The nodes with their names replaced by positions (a cache key for timings)."""
  out = []
  for i, n in enumerate(nodes, start):
    if isinstance(n, S.Sequential):
      n = dataclasses.replace(n, layers=_anonymous(n.layers))
    elif isinstance(n, S.Block):   # branch, shortcut and post share one scope
      nb, ns = len(n.branch), len(n.shortcut)
      n = dataclasses.replace(n, branch=_anonymous(n.branch), shortcut=_anonymous(n.shortcut, nb),
                              post=_anonymous(n.post, nb + ns))
    out.append(dataclasses.replace(n, name=f"n{i}"))
  return tuple(out)


@functools.lru_cache(maxsize=4096)
def _timed(nodes: tuple, in_shape: tuple, batch: int) -> float:
  from jaxdepth.network import init
  spec = S.Spec(in_shape, nodes, name="probe")
  shapes = jax.eval_shape(lambda k: init(spec, k), jax.random.key(0))
  variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)
  return measure_latency(spec, variables, batch=batch)


def make_cost(kind: str, *, batch: int = 1) -> CostFn:
  """The cost function ``cost(nodes, node_vars, in_shape) -> (value, node_count)``.

  Args:
    kind: one of :data:`COSTS`.
    batch: examples per timed call for ``"latency"``.

  Returns:
    A function of a tuple of nodes (a piece of a node list), their per-node
    variables keyed by path inside that piece (unused by ``"macs"`` and
    ``"none"``; timings use fresh weights, which do not change the time), and
    the input shape. Smaller is better, compared as tuples.
  """
  if kind not in COSTS:
    raise ValueError(f"unknown cost {kind!r}; expected one of {COSTS}")

  def count(nodes):
    return sum(1 for _, n in _walk(nodes) if not isinstance(n, S.Sequential)
               and not _tree.is_noop(n))

  if kind == "none":   # top-level nodes only: a border-corrected merge is one node, not four
    def top(nodes):
      return sum(1 for n in nodes if not _tree.is_noop(n))
    return lambda nodes, node_vars, in_shape: (top(nodes), top(nodes))
  if kind == "macs":
    return lambda nodes, node_vars, in_shape: (work(nodes, in_shape), count(nodes))

  def latency(nodes, node_vars, in_shape):
    return (_timed(_anonymous(tuple(nodes)), tuple(in_shape), batch), count(nodes))
  return latency


NAMES = {"macs": "MACs", "latency": "latency", "none": "node count"}   # for messages


def words(value) -> str:
  """A cost's first field for people: seconds of latency in µs, else a count."""
  return f"{value * 1e6:.1f} µs" if isinstance(value, float) else f"{value:,}"

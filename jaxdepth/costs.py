"""Costs of an architecture, read from its spec alone (no arrays, no devices).

* :func:`count_params`: trainable parameters, as PyTorch's ``parameters()`` counts
  them (conv and dense kernels and biases, BatchNorm / LayerNorm / GroupNorm scale and bias;
  BatchNorm running statistics are buffers and are not counted).
* :func:`count_macs`: multiply-accumulates of the convolutions and dense layers for
  one example, the convention of ptflops / fvcore for these two layer kinds.
* :func:`depth`: how deep the network really is: the longest chain of live
  activation sites and the longest chain of weight layers from input to output.

The papers count removed layers ("8 of 17 ReLUs gone"); :func:`depth` reports
the real depth beside it, since a removed site shortens a network only where it
lies on every longest path.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from jaxdepth import spec as S

__all__ = ["count_params", "count_macs", "depth", "Depth", "summary"]


def _node_shapes(spec: S.Spec):
  """Yields ``(path, node, input_shape, output_shape)`` for every leaf node."""
  shapes = spec.shapes()
  for path, node in spec.walk():
    if not isinstance(node, (S.Sequential, S.Block, S.Concat)):
      yield path, node, *shapes[path]


def count_params(spec: S.Spec) -> int:
  """Number of trainable parameters of ``spec``.

  Conv: ``kh kw (C_in / groups) C_out (+ C_out bias)``; Dense: ``D_in D_out
  (+ D_out)``; BatchNorm, LayerNorm and GroupNorm: ``2 C`` (scale and bias); a node with a
  ``param_count(input_shape)`` method (the transformer nodes of
  :mod:`jaxdepth.transformer.nodes`: attention, class token, position
  embedding) counts its own. Everything else has no parameters.

  Args:
    spec: the architecture.

  Returns:
    The count, equal to the size of the ``params`` collection of
    :func:`jaxdepth.network.init`.
  """
  total = 0
  for _, node, shape_in, _ in _node_shapes(spec):
    c = shape_in[-1]
    if isinstance(node, S.Conv):
      total += math.prod(node.kernel) * (c // node.groups) * node.features
      total += node.features if node.bias else 0
    elif isinstance(node, S.Dense):
      total += c * node.features + (node.features if node.bias else 0)
    elif isinstance(node, (S.BatchNorm, S.LayerNorm, S.GroupNorm)):
      total += 2 * c
    elif hasattr(node, "param_count"):   # nodes that count their own (transformers)
      total += node.param_count(shape_in)
  return total


def count_macs(spec: S.Spec) -> int:
  """Multiply-accumulates for one example through ``spec``.

  Conv: ``H_out W_out C_out kh kw C_in / groups``; Dense: ``D_in D_out`` times the
  product of the leading (token) axes; attention (a node with a
  ``mac_count(input_shape, output_shape)`` method): its projections and its two
  products per head, scores ``q kᵀ`` and the weighted sum of ``v``, as fvcore
  counts matrix products. Bias additions, normalisation,
  activations, pooling and the residual additions are not counted: they are
  element-wise and small next to the products (ptflops counts them as extra
  "flops"; fvcore, like this function, does not).

  Args:
    spec: the architecture.

  Returns:
    The count per example (multiply by the batch size for a batch).
  """
  total = 0
  for _, node, shape_in, shape_out in _node_shapes(spec):
    if isinstance(node, S.Conv):
      total += math.prod(shape_out) * math.prod(node.kernel) * (shape_in[-1] // node.groups)
    elif isinstance(node, S.Dense):
      total += math.prod(shape_in) * node.features
    elif hasattr(node, "mac_count"):     # attention: projections and score products
      total += node.mac_count(shape_in, shape_out)
  return total


class Depth(NamedTuple):
  """Depth figures of a spec.

  Attributes:
    active_sites: number of live activation sites (``len(spec.sites())``).
    nonlinear_depth: the most live activation sites met on one path from input
      to output; a :class:`~jaxdepth.spec.Block` contributes
      ``max(branch, shortcut) + post``, a :class:`~jaxdepth.spec.Concat`
      ``max over branches + post``.
    weight_depth: the most convolution / dense layers met on one path, same rule
      (an attention node counts 2: its qkv and output projections).
    sites_total: every activation node, live or baked to the identity.
  """
  active_sites: int
  nonlinear_depth: int
  weight_depth: int
  sites_total: int


def _longest(nodes, counts) -> int:
  """Longest chain through ``nodes``, a leaf weighing ``counts(node)`` (a bool or an int)."""
  total = 0
  for n in nodes:
    if isinstance(n, S.Sequential):
      total += _longest(n.layers, counts)
    elif isinstance(n, S.Block):
      total += max(_longest(n.branch, counts), _longest(n.shortcut, counts))
      total += _longest(n.post, counts)
    elif isinstance(n, S.Concat):
      total += max(_longest(b, counts) for b in n.branches) + _longest(n.post, counts)
    else:
      total += int(counts(n))
  return total


def _is_live_site(n: S.Node) -> bool:
  return isinstance(n, S.Act) and n.fn != "identity"


def _is_weight_layer(n: S.Node) -> int:
  """1 for a conv or dense layer; a node's ``weight_layers`` otherwise (attention: 2,
  its input and output projections in sequence)."""
  return 1 if isinstance(n, (S.Conv, S.Dense)) else getattr(n, "weight_layers", 0)


def depth(spec: S.Spec) -> Depth:
  """The real depth of ``spec``: see :class:`Depth`.

  Args:
    spec: the architecture (sites removed by a method are ``Act(fn="identity")``
      nodes or gone altogether; both count as no site).

  Returns:
    A :class:`Depth`.
  """
  return Depth(
      active_sites=len(spec.sites()),
      nonlinear_depth=_longest(spec.layers, _is_live_site),
      weight_depth=_longest(spec.layers, _is_weight_layer),
      sites_total=sum(isinstance(n, S.Act) for _, n in spec.walk()))


def summary(spec: S.Spec) -> dict[str, Any]:
  """Every cost of ``spec`` as a JSON-ready dict (for reports).

  Keys: ``name``, ``input_shape``, ``output_shape``, ``params``, ``macs``, and the
  fields of :class:`Depth`.
  """
  S.check_spec(spec, "summary(spec)")
  return {"name": spec.name, "input_shape": list(spec.input_shape),
          "output_shape": list(spec.output_shape), "params": count_params(spec),
          "macs": count_macs(spec), **depth(spec)._asdict()}

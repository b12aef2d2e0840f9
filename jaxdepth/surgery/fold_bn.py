"""Fold eval-mode BatchNorm into the convolution or dense layer next to it.

In eval mode a BatchNorm is the per-channel affine map
``y = s x + t`` with ``s = γ/√(σ² + ε)`` and ``t = β − μ s`` (running mean ``μ``
and variance ``σ²``). Folded into the op ``W, b`` before it (``docs/surgery.md``;
LayerFold's ``fuse_conv_and_bn``, verified exact there too)::

    W' = diag(s) W        (each output channel o scaled by s[o])
    b' = s b + t = γ (b − μ)/√(σ² + ε) + β

This is exact everywhere. A BatchNorm with no conv/dense before it (a
pre-activation layout) is folded into the op *after* it, ``W' = W diag(s)``,
``b' = b + Σ W t``, but only where that is exact: the next op has no padding
(a Dense layer, an unpadded conv), since a padded conv would see ``t`` where the
original sees the zero padding. Any other BatchNorm stays.

Both directions are :func:`jaxdepth.surgery.linear.compose` with the BatchNorm
as a depthwise 1x1 op. Identity sites and dropout between the two are skipped
(they are no-ops in eval mode) and left in place.
"""
from __future__ import annotations

from jaxdepth import spec as S
from jaxdepth.surgery import _tree
from jaxdepth.surgery import linear as L

__all__ = ["fold_batchnorm"]


def _neighbour(nodes, i, step):
  j = i + step
  while 0 <= j < len(nodes) and _tree.is_noop(nodes[j]):
    j += step
  return j if 0 <= j < len(nodes) else None


def fold_batchnorm(spec: S.Spec, variables, *, log: list | None = None):
  """Folds every foldable BatchNorm into its neighbouring conv or dense layer.

  Args:
    spec: the architecture.
    variables: its Flax variables (``params`` and ``batch_stats``).
    log: optional list; one :class:`~jaxdepth.surgery.Edit` per fold is appended.

  Returns:
    ``(spec, variables)`` of an equal network (eval mode) without those
    BatchNorms; the convs they went into get a bias.
  """
  _tree.check_model(spec, variables, "fold_batchnorm(spec, variables)")
  return _fold_batchnorm(spec, variables, log=log)


def _fold_batchnorm(spec: S.Spec, variables, *, log: list | None = None):
  """:func:`fold_batchnorm` on variables already checked to fit ``spec`` (collapse checks once)."""
  node_vars = _tree.split_variables(spec, variables)
  ring_of = _tree.rings(log)

  def op(prefix, node, shape):
    path = prefix + node.name
    return L.from_node(node, node_vars[path], shape, ring=ring_of.get(path, 0))

  def fold(prefix, nodes, in_shape):
    nodes = list(nodes)
    shapes = _tree.list_shapes(nodes, in_shape, prefix)   # folds keep every other shape
    i = 0
    while i < len(nodes):
      bn = nodes[i]
      if not isinstance(bn, S.BatchNorm):
        i += 1
        continue
      bn_op = op(prefix, bn, shapes[i][0])
      j = _neighbour(nodes, i, -1)
      if j is not None and isinstance(nodes[j], (S.Conv, S.Dense)):
        merged = L.compose(op(prefix, nodes[j], shapes[j][0]), bn_op)
      else:
        j = _neighbour(nodes, i, +1)
        if j is None or not isinstance(nodes[j], (S.Conv, S.Dense)):
          i += 1
          continue
        merged = L.compose(bn_op, op(prefix, nodes[j], shapes[j][0]))
        if not merged.lossless:
          i += 1
          continue
      target = nodes[j]
      node, new_vars = L.to_node(merged, target.name, dense=isinstance(target, S.Dense))
      node_vars[prefix + target.name] = new_vars
      if log is not None:
        log.append(_tree.Edit("fold_bn", prefix + target.name,
                              f"{prefix + bn.name} folded into {target.name}",
                              exact=merged.exact, ring=merged.ring))
      nodes[j] = node
      del nodes[i], shapes[i]
    return tuple(nodes)

  spec = _tree.rewrite_lists(spec, fold)
  return spec, _tree.join_variables(spec, node_vars)

"""Drop eval-mode no-ops: identity sites and dropout.

A site baked to ``Act(fn="identity")`` (what EASIER, EGP, NEPENTHE and TLC
produce) and a :class:`~jaxdepth.spec.Dropout` (the identity in eval mode) do
nothing at inference; removing them is exact and lets the affine ops on either
side meet, so :mod:`~jaxdepth.surgery.merge` can merge them. The papers' "layers
removed" count is the number of identity sites; see
:func:`jaxdepth.costs.depth` for the real depth.

Dropping a Dropout changes training (a shallow model fine-tuned afterwards has
no dropout there); pass ``dropout=False`` to keep them.
"""
from __future__ import annotations

from jaxdepth import spec as S
from jaxdepth.surgery import _tree

__all__ = ["drop_noops"]


def drop_noops(spec: S.Spec, variables, *, dropout: bool = True, log: list | None = None):
  """Removes identity sites (and, unless ``dropout=False``, Dropout nodes).

  Sequentials left empty go too; a residual branch left empty becomes a single
  identity node (``y = x + shortcut(x)``).

  Args:
    spec: the architecture.
    variables: its Flax variables.
    dropout: also remove Dropout nodes.
    log: optional list of :class:`~jaxdepth.surgery.Edit` to append to.

  Returns:
    ``(spec, variables)`` of an equal network (eval mode).
  """
  node_vars = _tree.split_variables(spec, variables)

  def gone(n):
    if isinstance(n, S.Act) and n.fn == "identity":
      return True
    return dropout and isinstance(n, S.Dropout)

  def drop(prefix, nodes, in_shape):
    keep = _tree.drop_empty(n for n in nodes if not gone(n))
    if log is not None:
      for n in nodes:
        if n not in keep:
          log.append(_tree.Edit("drop", prefix + n.name, f"{n.kind} removed"))
    return keep

  spec = _tree.rewrite_lists(spec, drop)
  return spec, _tree.join_variables(spec, node_vars)

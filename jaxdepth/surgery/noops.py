"""Drop eval-mode no-ops: identity sites and dropout.

A site baked to ``Act(fn="identity")`` (what EASIER, EGP, NEPENTHE and TLC
produce) and a :class:`~jaxdepth.spec.Dropout` (the identity in eval mode) do
nothing at inference; removing them is exact and lets the affine ops on either
side meet, so :mod:`~jaxdepth.surgery.merge` can merge them. The papers' "layers
removed" count is the number of identity sites; see
:func:`jaxdepth.costs.depth` for the real depth.

Where an identity site has no affine op on one side (a pool, a residual
block, the end of a block's or a concat's branch or of its ``post``), nothing can
merge across it; the log records it as a ``skip`` with the reason.

Dropping a Dropout changes training (a shallow model fine-tuned afterwards has
no dropout there); pass ``dropout=False`` to keep them.
"""
from __future__ import annotations

from jaxdepth import spec as S
from jaxdepth.surgery import _tree
from jaxdepth.surgery import linear as L

__all__ = ["drop_noops"]


def _neighbour_words(e, side: str) -> str | None:
  """Why the element next to an identity site stops a merge across it (``None``: it does not)."""
  if e is None:
    return None
  if isinstance(e.node, S.Block):
    return (f"the {side} node {e.path} is a residual block (blocks are folded whole, "
            f"never merged across)")
  if L.is_affine(e.node):
    return None
  if isinstance(e.node, S.Act):
    return f"the {side} node {e.path} is a live activation site"
  return f"the {side} node {e.path} is a {e.node.kind}, which is not an affine op"


def _unmergeable_sites(spec: S.Spec) -> list[tuple[str, str, tuple[str, ...]]]:
  """``(site, reason, neighbours)`` for identity sites without an affine op on both sides.

  ``neighbours`` holds the paths of the nodes before and after the site when it has
  both (a residual block next to it may be folded into one op later), else ``()``.

  Such a site is dropped but no merge can follow: the previous or the next node
  (through Sequentials, skipping other no-ops) is a pool, a flatten, a live
  site, a residual block, or nothing (the site opens or closes a block's or a
  concat's branch or its ``post``, e.g. ResNet's ``relu2`` after the addition).
  """
  out = []

  def visit(nodes, prefix, shape, where):
    view = _tree.flat_view(nodes, prefix, shape)
    for i, e in enumerate(view):
      if isinstance(e.node, S.Block):
        scope = e.path + S.SEP
        mid = S._run_shapes(e.node.branch, e.in_shape, scope)
        visit(e.node.branch, scope, e.in_shape, f"the branch of block {e.path}")
        visit(e.node.shortcut, scope, e.in_shape, f"the shortcut of block {e.path}")
        visit(e.node.post, scope, mid, f"block {e.path} after its addition")
      elif isinstance(e.node, S.Concat):
        scope = e.path + S.SEP
        for k, br in enumerate(e.node.branches):
          visit(br, scope, e.in_shape, f"branch {k} of concat {e.path}")
        visit(e.node.post, scope, e.node.joined_shape(e.in_shape, e.path),
              f"concat {e.path} after its concatenation")
      if not (isinstance(e.node, S.Act) and e.node.fn == "identity"):
        continue
      before = next((x for x in reversed(view[:i]) if not _tree.is_noop(x.node)), None)
      after = next((x for x in view[i + 1:] if not _tree.is_noop(x.node)), None)
      reasons = [r for r in (_neighbour_words(before, "previous"),
                             _neighbour_words(after, "next")) if r]
      if before is None and after is None:
        reasons = [f"it is alone in {where} (the addition before it is not an affine op "
                   f"of one input: see jaxdepth.surgery.residual)" if where.endswith("addition")
                   else f"it is alone in {where}"]
      elif before is None:
        reasons.insert(0, f"it opens {where}")
      elif after is None:
        reasons.append(f"it closes {where}")
      if reasons:
        between = (before.path, after.path) if before is not None and after is not None else ()
        out.append((e.path, "; ".join(reasons), between))

  visit(spec.layers, "", spec.input_shape, "the network")
  return out


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
  _tree.check_model(spec, variables, "drop_noops(spec, variables)")
  return _drop_noops(spec, variables, dropout=dropout, log=log)


def _drop_noops(spec: S.Spec, variables, *, dropout: bool = True, log: list | None = None):
  """:func:`drop_noops` on variables already checked to fit ``spec`` (collapse checks once)."""
  node_vars = _tree.split_variables(spec, variables)
  if log is not None:
    log.extend(_tree.Edit("skip", path, f"{path}: identity dropped, nothing merged across it",
                          reason=reason, between=between)
               for path, reason, between in _unmergeable_sites(spec))

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

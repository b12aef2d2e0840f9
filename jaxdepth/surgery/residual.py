"""Residual blocks: fold a linear block into one op, or remove a whole block.

**Folding** (:func:`fold_residuals`). A block ``post(branch(x) + shortcut(x))``
whose branch is a single affine op ``A`` (after BatchNorm folding and merging)
and whose shortcut is the identity or a single affine op ``B`` is
``post(C(x))`` with ``C = A + B`` (:func:`jaxdepth.surgery.linear.add`): the
kernels are summed with each window at its own offset, the identity being a
1x1 kernel equal to 1 on the channel diagonal, so for a 3x3 branch it lands on
the kernel centre. Exact everywhere, depthwise and grouped branches included
(the sum has ``gcd`` of both group counts). A branch that is an exact merge
with a border correction (``Block(branch=(merged,), shortcut=(ones, border))``,
see :mod:`jaxdepth.surgery.merge`) takes the shortcut into its merged conv the
same way. A MobileNetV2 inverted residual whose two ReLU6 sites are identities
becomes one 3x3 conv (``mode="interior"``) or that conv plus its border
correction (``mode="exact"``); a ResNet BasicBlock
whose ``relu1`` is an identity becomes ``relu2(conv(x))`` if its two 3x3 convs
were merged (and the addition disappears).

**The rectifier after the addition** (ResNet's ``relu2``).
When ``relu2`` of block ``k`` is an identity, the block's output
``r_k(x) + x`` feeds block ``k+1`` linearly, but no exact rewrite makes the
network shallower there: block ``k+1`` needs the sum twice (its branch and its
identity shortcut), so pushing its first conv into block ``k`` would split that
conv over the two terms of the sum (``conv(r_k(x)) + conv(x)``) and still
have to rebuild ``r_k(x) + x`` for the shortcut: more convolutions, not fewer
layers in sequence, and a topology that is no longer a chain of blocks. This
library therefore leaves such a site unmerged: the identity is dropped (it
costs nothing), the addition stays, and :func:`jaxdepth.costs.depth` reports the
real depth (the removed site shortens the nonlinear depth; the weight depth is
unchanged). The papers count it as a removed layer all the same. If the block's
branch is itself linear, :func:`fold_residuals` still folds the block.

**Removing** (:func:`remove_blocks`, LaCoOT). A block with an identity shortcut
(same shape in and out), or a transformer layer made of two such blocks
(attention half and MLP half, LaCoOT's Swin unit), is replaced by the identity: the whole block goes,
``post`` included, as LaCoOT drops ``layerS.1`` (its input is the previous
block's ReLU output, on which a ReLU is the identity anyway). This changes the
function; LaCoOT's training makes the block close to the identity first.
"""
from __future__ import annotations

from jaxdepth import spec as S
from jaxdepth.surgery import _tree
from jaxdepth.surgery import cost as C
from jaxdepth.surgery import linear as L

__all__ = ["fold_residuals", "remove_blocks"]

_NOT_SUMMED = ("branch and shortcut do not sum into one op (their strides, paddings or kernels "
               "do not line up)")


def _single_op(nodes, prefix, in_shape, node_vars, ring_of):
  """The one affine op a list of nodes reduces to (through Sequentials and no-ops).

  Returns ``(element or None, op)``: ``None`` with the identity op for a list of
  no-ops only; ``None`` overall when the list is not one affine op.
  """
  view = [e for e in _tree.flat_view(nodes, prefix, in_shape) if not _tree.is_noop(e.node)]
  if not view:
    return None, L.identity(in_shape)
  if len(view) != 1 or not L.is_affine(view[0].node):
    return None
  e = view[0]
  return e, L.from_node(e.node, node_vars[e.path], e.in_shape, ring=ring_of.get(e.path, 0))


def _corrected_block(nodes, prefix, in_shape, node_vars, ring_of):
  """The one Block a branch reduces to, if it is ``branch op + shortcut`` without post.

  That is the form of an exact merge with a border correction
  (:func:`jaxdepth.surgery.merge.merge_linear`): returns ``(element, (op
  element, op))`` or ``None``.
  """
  view = [e for e in _tree.flat_view(nodes, prefix, in_shape) if not _tree.is_noop(e.node)]
  if len(view) != 1 or not isinstance(view[0].node, S.Block) or view[0].node.post:
    return None
  inner = view[0]
  found = _single_op(inner.node.branch, inner.path + S.SEP, inner.in_shape, node_vars, ring_of)
  if found is None or found[0] is None:
    return None
  return inner, found


def fold_residuals(spec: S.Spec, variables, *, cost: str = "macs", latency_batch: int = 1,
                   log: list | None = None):
  """Folds every block ``post(A(x) + B(x))`` with affine ``A`` and ``B`` into ``post(C(x))``.

  Args:
    spec: the architecture (fold BatchNorms, drop no-ops and merge first, so
      that branches are single ops).
    variables: its Flax variables.
    cost: ``"macs"``, ``"latency"`` or ``"none"``: a fold is made where it does
      not raise the cost (summing a depthwise branch with a dense 1x1 shortcut,
      for instance, would).
    latency_batch: batch size for ``cost="latency"``.
    log: optional list of :class:`~jaxdepth.surgery.Edit` (rings are read from it
      and the folds appended).

  Returns:
    ``(spec, variables)``. A folded block without ``post`` becomes one Conv (or
    Dense) named like the block; with ``post`` it becomes a Sequential of that
    name holding the op (named like the branch op) and ``post``, so the paths
    of the sites in ``post`` do not change.
  """
  _tree.check_model(spec, variables, "fold_residuals(spec, variables)")
  return _fold_residuals(spec, variables, cost=cost, latency_batch=latency_batch, log=log)


def _fold_residuals(spec: S.Spec, variables, *, cost: str = "macs", latency_batch: int = 1,
                    log: list | None = None):
  """:func:`fold_residuals` on variables already checked to fit ``spec`` (collapse checks once)."""
  cost_fn = C.make_cost(cost, batch=latency_batch)
  cost_name = C.NAMES[cost]
  node_vars = _tree.split_variables(spec, variables)
  ring_of = _tree.rings(log)

  def skip(prefix, block: S.Block, reason: str) -> None:
    """Logs a fold not made, of a block whose branch is linear (a candidate)."""
    if log is not None:
      log.append(_tree.Edit("skip", prefix + block.name,
                            f"block {prefix + block.name}: branch and shortcut not folded",
                            reason=reason))

  def costlier(prefix, block: S.Block, new, after_vars, before_vars, in_shape) -> bool:
    """Whether ``new`` costs more than ``block`` (the fold is then skipped, and logged)."""
    after, before = cost_fn((new,), after_vars, in_shape), cost_fn((block,), before_vars, in_shape)
    if after > before:
      skip(prefix, block, f"folding would raise the {cost_name} ({C.words(before[0])} -> "
                          f"{C.words(after[0])})")
    return after > before

  def fold_one(prefix, block: S.Block, in_shape):
    scope = prefix + block.name + S.SEP
    branch = _single_op(block.branch, scope, in_shape, node_vars, ring_of)
    shortcut = _single_op(block.shortcut, scope, in_shape, node_vars, ring_of)
    linear = branch is not None and branch[0] is not None
    corrected = (None if linear else
                 _corrected_block(block.branch, scope, in_shape, node_vars, ring_of))
    if shortcut is None:
      if linear or corrected is not None:
        skip(prefix, block, "the shortcut is not one linear op")
      return None
    if not linear:
      if corrected is None:
        return None   # a live nonlinearity in the branch: not a candidate
      return fold_into_corrected(prefix, block, in_shape, corrected, shortcut[1])
    (elem, a), (_, b) = branch, shortcut
    try:
      op = L.add(a, b)
    except L.NotMergeable:
      skip(prefix, block, _NOT_SUMMED)
      return None
    post_names = {n.name for n in block.post}
    if block.post:
      name = _tree.unique_name(elem.name, post_names)
    else:
      name = block.name
    try:
      node, new_vars = L.to_node(op, name, dense=isinstance(elem.node, S.Dense))
    except L.NotMergeable:
      skip(prefix, block, _NOT_SUMMED)
      return None
    before_vars = {p[len(prefix):]: v for p, v in node_vars.items() if p.startswith(scope)}
    if block.post:   # post stays either way: the block against the op followed by it
      path = scope + name
      new = S.Sequential(block.name, layers=(node, *block.post))
      after_vars = {f"{block.name}{S.SEP}{name}": new_vars}
    else:
      path = prefix + block.name
      new = node
      after_vars = {name: new_vars}
    if costlier(prefix, block, new, after_vars, before_vars, in_shape):
      return None
    node_vars[path] = new_vars
    _tree.set_ring(ring_of, path, op.ring)
    if log is not None:
      log.append(_tree.Edit("fold_residual", path,
                            f"block {prefix + block.name}: branch {elem.name} + "
                            f"{'identity' if not block.shortcut else 'shortcut'} -> one op",
                            exact=op.exact, ring=op.ring,
                            macs_before=a.macs + (b.macs if block.shortcut else 0),
                            macs_after=op.macs))
    return new

  def fold_into_corrected(prefix, block, in_shape, corrected, b):
    """``post(A x + corr(x) + B x)``, ``A + corr`` an exact merge's block: one block."""
    inner, (elem, a) = corrected
    try:
      op = L.add(a, b)
    except L.NotMergeable:
      skip(prefix, block, _NOT_SUMMED)
      return None
    extra = inner.node.shortcut
    taken = {n.name for n in extra + block.post}
    if elem.node.name in taken or len(taken) < len(extra) + len(block.post):
      skip(prefix, block, "the folded block's node names would clash")
      return None
    node, new_vars = L.to_node(op, elem.node.name, dense=isinstance(elem.node, S.Dense))
    new = S.Block(block.name, branch=(node,), shortcut=extra, post=block.post)
    scope = prefix + block.name + S.SEP
    before_vars = {p[len(prefix):]: v for p, v in node_vars.items() if p.startswith(scope)}
    after_vars = {f"{block.name}/{node.name}": new_vars}
    moved = {}
    for key in list(node_vars):
      if key.startswith(inner.path + S.SEP):
        rest = key[len(inner.path) + 1:]
        if rest.split(S.SEP)[0] in {n.name for n in extra}:
          moved[scope + rest] = node_vars[key]
          after_vars[block.name + S.SEP + rest] = node_vars[key]
    if costlier(prefix, block, new, after_vars, before_vars, in_shape):
      return None
    node_vars.update(moved)
    node_vars[scope + node.name] = new_vars
    _tree.set_ring(ring_of, scope + node.name, op.ring)
    if log is not None:
      log.append(_tree.Edit("fold_residual", scope + node.name,
                            f"block {prefix + block.name}: corrected merge + "
                            f"{'identity' if not block.shortcut else 'shortcut'} -> one block",
                            exact=op.exact, ring=op.ring, macs_before=a.macs + b.macs,
                            macs_after=op.macs))
    return new

  def fold(prefix, nodes, in_shape):
    out = []
    for n, (shape, _) in zip(nodes, _tree.list_shapes(nodes, in_shape, prefix)):
      if isinstance(n, S.Block):
        n = fold_one(prefix, n, shape) or n
      out.append(n)
    return tuple(out)

  spec = _tree.rewrite_lists(spec, fold)
  return spec, _tree.join_variables(spec, node_vars)


def _removable(node: S.Node, shapes, path: str) -> bool:
  """A Block with an identity shortcut, or a Sequential of such Blocks (a
  transformer layer: attention half, MLP half), keeping its input shape."""
  if shapes[path][0] != shapes[path][1]:
    return False
  if isinstance(node, S.Block):
    return node.identity_shortcut
  return (isinstance(node, S.Sequential) and bool(node.layers)
          and all(isinstance(c, S.Block) and c.identity_shortcut for c in node.layers))


def remove_blocks(spec: S.Spec, variables, paths, *, log: list | None = None):
  """Replaces residual blocks with identity shortcuts by the identity (LaCoOT's edit).

  Args:
    spec: the architecture.
    variables: its Flax variables.
    paths: paths of :class:`~jaxdepth.spec.Block` nodes with an identity
      shortcut and the same input and output shape (e.g. ``"layer3/1"``), or of
      :class:`~jaxdepth.spec.Sequential` nodes made of such blocks only (a
      transformer layer, e.g. Swin's ``"features/5/3"``).
    log: optional list of :class:`~jaxdepth.surgery.Edit` to append to.

  Returns:
    ``(spec, variables)`` without those blocks (not an equal network: the
    blocks' residual branches and ``post`` nodes are gone).

  Raises:
    KeyError: a path names no node.
    ValueError: a path is not a block with an identity shortcut.
    TypeError: ``spec`` is not a Spec.
    jaxdepth.checkpoint.SpecMismatchError: ``variables`` do not fit ``spec`` (the node
      is named).
  """
  _tree.check_model(spec, variables, "remove_blocks(spec, variables, paths)")
  return _remove_blocks(spec, variables, paths, log=log)


def _remove_blocks(spec: S.Spec, variables, paths, *, log: list | None = None):
  """:func:`remove_blocks` on variables already checked to fit ``spec`` (collapse checks once)."""
  paths = [paths] if isinstance(paths, str) else list(paths)
  shapes = spec.shapes()
  for p in paths:
    node = spec.node(p)
    if not isinstance(node, (S.Block, S.Sequential)):
      raise ValueError(f"{p!r} is a {node.kind}, not a residual block; remove_blocks "
                       f"takes paths of Block nodes (or of Sequentials of them)")
    if not _removable(node, shapes, p):
      raise ValueError(f"{p!r} ({shapes[p][0]} -> {shapes[p][1]}) is not a residual block "
                       f"with an identity shortcut (nor a sequence of them); only those can "
                       f"be replaced by the identity")
  node_vars = _tree.split_variables(spec, variables)
  targets = set(paths)

  def remove(prefix, nodes, in_shape):
    out = tuple(n for n in nodes if prefix + n.name not in targets)
    return _tree.drop_empty(out)

  spec = _tree.rewrite_lists(spec, remove)
  if log is not None:
    log.extend(_tree.Edit("remove_block", p, "block replaced by the identity", exact=False)
               for p in paths)
  return spec, _tree.join_variables(spec, node_vars)

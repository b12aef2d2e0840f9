"""Merge chains of affine ops into fewer ops (``docs/surgery.md``).

Once identity sites and dropout are gone, consecutive Conv / Dense / BatchNorm
nodes form *chains* of affine ops. Each chain is cut into segments and each
segment becomes one op by :func:`jaxdepth.surgery.linear.compose`:
dense∘dense (``W = W1 W2``, ``b = b1 W2 + b2``), 1x1 convs with anything on
either side, depthwise and pointwise combinations (grouped composition, so
MobileNetV2's expand 1x1 → depthwise 3x3 → project 1x1 becomes one 3x3 conv
once its two ReLU6 sites are identities), and kxk∘kxk with kernel growth
``k1 + s1 (k2 − 1)``, stride ``s1 s2`` and padding ``p1 + s1 p2``.

**Where a merge is exact.** Every merge is exact away from the border. It is
exact everywhere when the second op has no padding (anything∘1x1, or any pair
whose second conv is unpadded, whatever the first's padding), or when the first
is a bias-free 1x1 conv without padding. Otherwise the original network
zero-pads the intermediate map while the merged conv extends the first op over
that padding (its kernel and bias), so a ring of ``ceil(p2 / s2)`` outputs at
each edge differs; a bias makes even a 1x1 first op inexact there (a folded
BatchNorm gives every 1x1 conv one). ``mode="exact"`` makes only merges exact
everywhere; ``mode="interior"`` also makes the others and records the ring of
each in the log (:func:`jaxdepth.equivalence.border_width` follows it to the
last feature map, and :func:`jaxdepth.equivalence.compare` measures the
deviation). On a 2x2 map (ResNet-18's last stage on CIFAR) the ring is the
whole map: such a merge changes the function, so re-measure accuracy.

**A bias before a padded conv, made exact.** When the only obstacle is the
bias of a first 1x1 op (MobileNetV2's expand conv with its folded BatchNorm,
before the depthwise 3x3), the difference is a *fixed* map: the rest of the
chain applied to the constant bias with zero padding. ``mode="exact"`` then
writes the segment as ``Block(branch=(merged,), shortcut=(ones, border))``: the
merged conv of the bias-free first op with the rest (exact), plus a 1x1 conv
with a zero kernel and bias 1 (a map of ones) and a conv of the rest's geometry
from that one channel (kernel ``Σ_m K_rest[t, m, o] b[m]``), which reproduces
the fixed map exactly, border included. Its cost is ``C_in + kh kw C_out`` MACs
per position; it is made only where the whole is cheaper than the chain. (If
such a model is fine-tuned, ``ones`` is an ordinary conv and may drift from a
map of ones; the network stays valid.)

**When a merge is made.** The segments minimise the cost of the chain
(:mod:`jaxdepth.surgery.cost`: multiply-accumulates by default, or measured
latency), so a merge that makes more work is not made: two 3x3 convs of C
channels (18 C² per position) become a 5x5 (25 C²) only if that is cheaper,
e.g. on a 2x2 map where the 5x5's outer taps read only padding and are cut
(:func:`crop_kernels`) back to a 3x3. Merged kernels are always cropped.

**Chains across scopes.** A chain may cross the boundary of a nested
:class:`~jaxdepth.spec.Sequential` (MobileNetV2's ``conv/expand`` and
``conv/depthwise`` scopes). Only where a merge is made across one is that
Sequential inlined into its parent: its children are renamed ``scope.child``
(``conv/expand/conv`` becomes ``conv/expand.conv``). Residual blocks are never
crossed; :mod:`jaxdepth.surgery.residual` folds them.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from jaxdepth import spec as S
from jaxdepth.surgery import _tree
from jaxdepth.surgery import cost as C
from jaxdepth.surgery import linear as L

__all__ = ["merge_linear", "crop_kernels", "MODES"]

MODES = ("exact", "interior")


class _Segment(NamedTuple):
  first: int          # index in the flat view
  last: int           # inclusive
  op: L.LinearOp      # the merged op (the main conv of a bias-corrected block)
  node: S.Node
  node_vars: dict     # {path relative to the list: node variables}
  macs_before: int
  macs_after: int


def check_mode(mode: str):
  if mode not in MODES:
    raise ValueError(f"unknown merge mode {mode!r}; expected 'exact' (merges equal "
                     f"everywhere) or 'interior' (also merges equal only away from the border)")


def _rank(e: _tree.Element) -> int:
  return len(e.in_shape)


def _chains(view):
  """Maximal runs ``[i, j)`` of consecutive affine elements on inputs of one rank."""
  i = 0
  while i < len(view):
    if not L.is_affine(view[i].node):
      i += 1
      continue
    j = i + 1
    while j < len(view) and L.is_affine(view[j].node) and _rank(view[j]) == _rank(view[i]):
      j += 1
    yield i, j
    i = j


def _segment_node(elems, op: L.LinearOp):
  """The node a merged segment becomes, named after its first weight layer."""
  weights = [e for e in elems if isinstance(e.node, (S.Conv, S.Dense))]
  if not weights:
    return None
  dense = all(not isinstance(e.node, S.Conv) for e in elems)
  try:                       # to_node refuses a grouped op on non-spatial input too
    node, node_vars = L.to_node(op, weights[0].name, dense=dense)
  except L.NotMergeable:
    return None
  return node, {node.name: node_vars}, op.macs


def _bias_corrected(elems, first: L.LinearOp, rest: L.LinearOp):
  """An exact block for ``rest ∘ first`` when ``first`` is a biased 1x1 op.

  ``first(x) = A0 x + b`` with ``A0`` a 1x1 unpadded op, ``rest`` a padded op
  (already merged, exact). The original computes ``rest(pad0(A0 x + b))``; the
  merged conv ``rest ∘ A0`` is exact (a bias-free 1x1 op is zero on the
  padding), and what is left, ``rest_lin(pad0(b))``, is a fixed map that is
  constant in the interior and differs on the border ring. It equals a conv of
  ``rest``'s geometry with kernel ``V[t, o] = Σ_m K_rest[t, m, o] b[m]`` applied
  to a map of ones on ``first``'s output grid, and that map is a 1x1 conv with a
  zero kernel and bias 1. So::

      Block(branch=(merged,), shortcut=(ones, border))

  is equal everywhere, for the price of ``C_in + kh kw C_out`` extra MACs per
  position instead of the chain's. A first op with a zero kernel (``ones``
  itself) is left alone: its corrected form would be the same pair again.
  """
  if (not first.spatial or first.kernel.shape[:2] != (1, 1) or any(any(p) for p in first.padding)
      or first.zero_bias or not rest.lossless or not np.any(first.kernel)):
    return None
  weights = [e for e in elems if isinstance(e.node, (S.Conv, S.Dense))]
  if not weights:
    return None
  a0 = dataclasses.replace(first, bias=np.zeros_like(first.bias), has_bias=False)
  main = L.crop(L.compose(a0, rest))
  if not main.lossless:
    return None
  kh, kw, cm_g, cout = rest.kernel.shape
  g = rest.groups
  v = np.einsum("hwigo,gi->hwgo", rest.kernel.reshape(kh, kw, cm_g, g, cout // g),
                first.bias.reshape(g, cm_g)).reshape(kh, kw, 1, cout)
  mid = first.out_shape
  ones = L.LinearOp(np.zeros((1, 1, first.cin, 1)), np.ones(1), first.stride, first.padding, 1,
                    first.in_shape)
  border = L.LinearOp(v, np.zeros(cout), rest.stride, rest.padding, 1, mid[:2] + (1,),
                      has_bias=False)
  merged_node, merged_vars = L.to_node(main, "merged")
  ones_node, ones_vars = L.to_node(ones, "ones")
  border_node, border_vars = L.to_node(border, "border")
  name = weights[0].name
  block = S.Block(name, branch=(merged_node,), shortcut=(ones_node, border_node))
  node_vars = {f"{name}/merged": merged_vars, f"{name}/ones": ones_vars,
               f"{name}/border": border_vars}
  return block, node_vars, main.macs + ones.macs + border.macs, main


def _not_exact_reason(a: L.LinearOp, b: L.LinearOp, merged: L.LinearOp) -> str:
  """Why ``b ∘ a`` is not exact everywhere, in words."""
  (kh1, kw1), (kh2, kw2) = a.kernel.shape[:2], b.kernel.shape[:2]
  if (kh1, kw1) == (1, 1) and not np.any(a.kernel):
    return ("the pair is a border correction (a map of constants through a padded "
            f"{kh2}x{kw2} conv), exact as it is; merging it would rebuild the same pair")
  if (kh1, kw1) == (1, 1) and not any(any(p) for p in a.padding):
    what = f"a biased 1x1 op before a padded {kh2}x{kw2} conv"
  else:
    what = f"padded {kh1}x{kw1} ∘ {kh2}x{kw2}"
  return (f"{what} is not exact at the border (the original zero-pads the map between "
          f"them; mode='interior' merges it, differing on a ring of {merged.ring})")


def _best_segments(elems, offset, node_vars, ring_of, mode, cost_fn, cost_name, max_chain):
  """Splits one chain into segments of least total cost.

  Returns:
    ``(segments, skipped)``: the merged segments, and for every junction
    between two neighbours of the chain that no segment spans, ``(k, reason)``
    (``k``: the index of the first of the two).
  """
  n = len(elems)
  ops = [L.from_node(e.node, node_vars[e.path], e.in_shape, ring=ring_of.get(e.path, 0))
         for e in elems]
  options: dict[tuple[int, int], tuple] = {}
  why: dict[int, str] = {}     # junction k -> why the pair (k, k + 1) alone is not mergeable
  for a in range(n):
    options[(a, a)] = (cost_fn((elems[a].node,), {elems[a].node.name: node_vars[elems[a].path]},
                               elems[a].in_shape), None)
    acc, rest = ops[a], None
    for b in range(a + 1, min(n, a + max_chain)):
      try:
        acc = L.crop(L.compose(acc, ops[b]))
        rest = ops[b] if rest is None else L.crop(L.compose(rest, ops[b]))
      except L.NotMergeable as e:
        if b == a + 1:
          why[a] = str(e)
        break
      made, op = None, acc
      if mode == "interior" or acc.lossless:
        made = _segment_node(elems[a:b + 1], acc)
      if made is None and mode == "exact":
        corrected = _bias_corrected(elems[a:b + 1], ops[a], rest)
        if corrected is not None:
          *made, op = corrected
      if made is None:
        if b == a + 1:
          why[a] = (_not_exact_reason(ops[a], ops[b], acc) if not acc.lossless else
                    "the merged op has no node form (e.g. a grouped op on a non-spatial input)")
        continue
      node, new_vars, macs = made
      seg = _Segment(offset + a, offset + b, op, node, new_vars,
                     sum(o.macs for o in ops[a:b + 1]), macs)
      options[(a, b)] = (cost_fn((node,), new_vars, acc.in_shape), seg)
  # best[k]: least cost of elems[:k] as (value, node count).
  best: list[tuple] = [((0.0, 0), [])]
  for k in range(1, n + 1):
    choices = []
    for a in range(k):
      if (a, k - 1) in options:
        (value, count), seg = options[(a, k - 1)]
        (pv, pc), segs = best[a]
        choices.append(((pv + value, pc + count), segs + ([seg] if seg else [])))
    best.append(min(choices, key=lambda c: c[0]))
  segments = best[n][1]
  spanned = {k for s in segments for k in range(s.first - offset, s.last - offset)}
  skipped = []
  for k in range(n - 1):
    if k in spanned:
      continue
    if k in why:
      skipped.append((k, why[k]))
      continue
    if (k, k + 1) in options:
      apart = options[(k, k)][0][0] + options[(k + 1, k + 1)][0][0]
      together = options[(k, k + 1)][0][0]
      if together >= apart:
        skipped.append((k, f"merging would raise the {cost_name} ({C.words(apart)} -> "
                           f"{C.words(together)})"))
        continue
    kept = " | ".join(" + ".join(e.name for e in elems[s.first - offset:s.last - offset + 1])
                      for s in segments) or "no merge"
    skipped.append((k, f"the cheapest split of the chain by {cost_name} merges other "
                       f"neighbours ({kept})"))
  return segments, skipped


def merge_linear(spec: S.Spec, variables, *, mode: str = "exact", cost: str = "macs",
                 max_chain: int = 4, latency_batch: int = 1, log: list | None = None):
  """Merges chains of Conv / Dense / BatchNorm nodes where that lowers the cost.

  Args:
    spec: the architecture (run :func:`~jaxdepth.surgery.drop_noops` first: an
      identity site or dropout ends a chain).
    variables: its Flax variables.
    mode: ``"exact"`` (only merges equal everywhere) or ``"interior"`` (also
      merges equal away from a border ring; see the module docstring).
    cost: ``"macs"``, ``"latency"`` or ``"none"`` (:mod:`jaxdepth.surgery.cost`).
    max_chain: the most ops merged into one.
    latency_batch: batch size at which ``cost="latency"`` times candidates.
    log: optional list; a :class:`~jaxdepth.surgery.Edit` per merge is appended
      (with its ring), one of kind ``"skip"`` per pair of neighbouring affine ops
      left unmerged (its ``reason`` says why: not exact at the border, the merge
      would raise the cost, no common form), and the rings of earlier edits are
      read from it.

  Returns:
    ``(spec, variables)``: each merged segment is one Conv (or Dense, when it was
    made of Dense and BatchNorm nodes only) named after its first weight layer,
    or, for an exact merge that needs a border correction, a Block of that
    name holding ``merged``, ``ones`` and ``border``.
  """
  _tree.check_model(spec, variables, "merge_linear(spec, variables)")
  return _merge_linear(spec, variables, mode=mode, cost=cost, max_chain=max_chain,
                       latency_batch=latency_batch, log=log)


def _merge_linear(spec: S.Spec, variables, *, mode: str = "exact", cost: str = "macs",
                  max_chain: int = 4, latency_batch: int = 1, log: list | None = None):
  """:func:`merge_linear` on variables already checked to fit ``spec`` (collapse checks once)."""
  check_mode(mode)
  if not isinstance(max_chain, int) or max_chain < 2:
    raise ValueError(f"max_chain must be an int >= 2, got {max_chain!r}")
  cost_fn = C.make_cost(cost, batch=latency_batch)
  cost_name = C.NAMES[cost]
  node_vars = _tree.split_variables(spec, variables)
  ring_of = _tree.rings(log)
  skip_seen: set[str] = set()

  def merge(prefix, nodes, in_shape):
    view = _tree.flat_view(nodes, prefix, in_shape)
    segments = []
    for i, j in _chains(view):
      if j - i > 1:
        found, skipped = _best_segments(view[i:j], i, node_vars, ring_of, mode, cost_fn,
                                        cost_name, max_chain)
        segments += found
        for k, reason in skipped:   # a list is seen again from every enclosing one
          detail = f"{view[i + k].path} + {view[i + k + 1].path} not merged"
          if log is not None and detail not in skip_seen:
            skip_seen.add(detail)
            log.append(_tree.Edit("skip", view[i + k].path, detail, reason=reason))
    if not segments:
      return nodes
    scopes = set().union(*(view[k].scopes for s in segments
                           for k in range(s.first, s.last + 1)))
    nodes = _tree.inline(nodes, prefix, scopes, node_vars, log, ring_of)
    start = {view[s.first].name: s for s in segments}
    gone = {view[k].name for s in segments for k in range(s.first + 1, s.last + 1)}
    out = []
    for n in nodes:
      if n.name in start:
        s = start[n.name]
        for rel, entry in s.node_vars.items():
          node_vars[prefix + rel] = entry
        out.append(s.node)
        _tree.set_ring(ring_of, prefix + s.node.name, s.op.ring)
        if log is not None:
          log.append(_tree.Edit(
              "merge", prefix + s.node.name,
              " + ".join(e.name for e in view[s.first:s.last + 1]) + f" -> {_describe(s.node)}",
              exact=s.op.exact, ring=s.op.ring, macs_before=s.macs_before,
              macs_after=s.macs_after))
      elif n.name not in gone:
        out.append(n)
    return tuple(out)

  spec = _tree.rewrite_lists(spec, merge)
  return spec, _tree.join_variables(spec, node_vars)


def _describe(node: S.Node) -> str:
  if isinstance(node, S.Block):
    return f"block({_describe(node.branch[0])}; border correction {node.shortcut[-1].kernel})"
  if isinstance(node, S.Conv):
    k, s = node.kernel, node.stride
    return (f"conv {k[0]}x{k[1]}/{s[0]}x{s[1]} groups={node.groups} "
            f"padding={node.padding} -> {node.features}")
  return f"{node.kind} -> {getattr(node, 'features', '')}"


def crop_kernels(spec: S.Spec, variables, *, log: list | None = None):
  """Cuts the edge taps of every conv that read only padding (exact).

  Args:
    spec: the architecture.
    variables: its Flax variables.
    log: optional list of :class:`~jaxdepth.surgery.Edit` to append to.

  Returns:
    ``(spec, variables)`` of an equal network with smaller kernels where possible.
  """
  _tree.check_model(spec, variables, "crop_kernels(spec, variables)")
  return _crop_kernels(spec, variables, log=log)


def _crop_kernels(spec: S.Spec, variables, *, log: list | None = None):
  """:func:`crop_kernels` on variables already checked to fit ``spec`` (collapse checks once)."""
  node_vars = _tree.split_variables(spec, variables)
  ring_of = _tree.rings(log)

  def crop(prefix, nodes, in_shape):
    out = []
    for n, (shape, _) in zip(nodes, _tree.list_shapes(nodes, in_shape, prefix)):
      if isinstance(n, S.Conv):
        path = prefix + n.name
        op = L.from_node(n, node_vars[path], shape, ring=ring_of.get(path, 0))
        cropped = L.crop(op)
        if cropped.kernel.shape != op.kernel.shape:
          n, node_vars[path] = L.to_node(cropped, n.name)
          if log is not None:
            log.append(_tree.Edit("crop", path, f"kernel {op.kernel.shape[:2]} -> "
                                  f"{cropped.kernel.shape[:2]}", exact=cropped.exact,
                                  ring=cropped.ring, macs_before=op.macs,
                                  macs_after=cropped.macs))
      out.append(n)
    return tuple(out)

  spec = _tree.rewrite_lists(spec, crop)
  return spec, _tree.join_variables(spec, node_vars)

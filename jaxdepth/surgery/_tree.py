"""Plumbing shared by the passes: per-node variables, node lists, the edit log.

Passes work on *per-node variables* ``{path: {collection: {leaf: array}}}``
(:func:`split_variables`), edit node lists innermost first
(:func:`rewrite_lists`), and rebuild the Flax dict for the new spec at the end
(:func:`join_variables`), so a node that moves or disappears needs no
bookkeeping beyond its entry.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxdepth import checkpoint
from jaxdepth import spec as S
from jaxdepth.text import nodes as X
from jaxdepth.transformer import nodes as T

SEP = S.SEP
INLINE = "."          # joins the names of an inlined Sequential and its children
_OWNERS = (S.Conv, S.Dense, S.BatchNorm, S.LayerNorm, S.GroupNorm, T.Attention,
           T.WindowAttention, T.ClassToken, T.PositionEmbedding, X.TokenEmbedding,
           X.TokenPositionEmbedding, X.TokenTypeEmbedding)


class Edit(NamedTuple):
  """One change made by a surgery pass (the ``log`` passes append to).

  Attributes:
    kind: ``fold_bn``, ``drop``, ``merge``, ``fold_residual``, ``remove_block``,
      ``cut_channels``, ``crop``, ``inline``; or ``skip``: a merge that was
      *not* made (the network is unchanged there; ``reason`` says why).
    path: path of the resulting (or removed) node in the spec the pass returns.
    detail: what was done, for people.
    exact: whether the new node equals what it replaced at every position.
    ring: output positions at each edge of the node's feature map where it may
      differ from the original (0 when exact); later passes read it back.
    macs_before: multiply-accumulates of the replaced nodes (per example).
    macs_after: multiply-accumulates of the new node.
    reason: why a ``skip`` was skipped (empty for the edits made).
    between: for the ``skip`` of a dropped identity site, the paths of the nodes
      on either side of it (a later merge of the two makes the record stale).
  """
  kind: str
  path: str
  detail: str
  exact: bool = True
  ring: int = 0
  macs_before: int = 0
  macs_after: int = 0
  reason: str = ""
  between: tuple[str, ...] = ()


def rings(log: Iterable[Edit] | None) -> dict[str, int]:
  """``{path: ring}`` of the nodes a log says differ near the border (latest wins)."""
  out: dict[str, int] = {}
  for e in log or ():
    if e.kind not in ("remove_block", "skip"):
      out[e.path] = e.ring
  return {p: r for p, r in out.items() if r > 0}


def set_ring(ring_of: dict[str, int], path: str, ring: int) -> None:
  """Records the ring of the node a pass just made at ``path`` (0: exact, forgotten).

  A pass reads ``ring_of`` again for the nodes it makes later in the same call (a
  list merged again by its enclosing list, a block folded inside a folded block),
  so it must hold the new node's ring, not the one at that path before.
  """
  if ring > 0:
    ring_of[path] = ring
  else:
    ring_of.pop(path, None)


# ------------------------------------------------------------------- variables


def check_model(spec: S.Spec, variables, call: str) -> None:
  """Refuses a ``spec`` that is not a Spec, and variables that do not fit it.

  Every public entry (:func:`~jaxdepth.surgery.collapse`, each pass) starts here:
  variables made for another spec would otherwise give a model of another shape
  silently (a head of another width), or fail deep inside a pass. ``call`` shows
  the call's argument order.

  Raises:
    TypeError: ``spec`` is not a Spec, or ``variables`` not a dict.
    jaxdepth.checkpoint.SpecMismatchError: the variables do not fit ``spec`` (the
      first node that differs is named).
  """
  S.check_spec(spec, call)
  if not isinstance(variables, Mapping):
    raise TypeError(f"{call}: variables must be the dict jaxdepth.init makes "
                    f"({{'params': ..., 'batch_stats': ...}}), got a {type(variables).__name__}")
  diff = checkpoint._variables_difference(variables, checkpoint._spec_shapes(spec), given=True)
  if diff is not None:
    raise checkpoint.SpecMismatchError(
        f"{call}: the variables do not fit spec {spec.name!r}: {diff}. Pass the variables "
        f"made for this spec (by jaxdepth.init, or returned with it by a method or a surgery "
        f"pass), or the spec they were made for (with jaxdepth.with_identity for the sites a "
        f"method removed).")


def split_variables(spec: S.Spec, variables: Mapping[str, Any]) -> dict[str, dict]:
  """``{path: {collection: {leaf: array}}}`` for every node of ``spec`` owning variables."""
  if not isinstance(variables, Mapping):
    raise ValueError("variables must be the Flax dict of jaxdepth.network.init / Network "
                     f"({{'params': ..., 'batch_stats': ...}}), got {type(variables).__name__}")
  out = {}
  for path, node in spec.walk():
    if not isinstance(node, _OWNERS):
      continue
    entry = {}
    for col, tree in variables.items():
      sub = tree
      for part in path.split(SEP):
        sub = sub.get(part) if isinstance(sub, Mapping) else None
        if sub is None:
          break
      if sub is not None:
        entry[col] = dict(sub)
    if "params" not in entry:
      raise ValueError(f"variables hold no parameters for node {path!r}; were they made for "
                       f"another spec? (jaxdepth.network.init(spec, rng) makes matching ones)")
    if isinstance(node, S.BatchNorm) and "batch_stats" not in entry:
      raise ValueError(f"variables hold no batch_stats for BatchNorm {path!r}; surgery "
                       f"works in eval mode and needs the running statistics")
    out[path] = entry
  return out


def _as_array(x):
  return jnp.asarray(x) if isinstance(x, np.ndarray) else x


def join_variables(spec: S.Spec, node_vars: Mapping[str, dict]) -> dict[str, Any]:
  """The Flax variables dict of ``spec`` from per-node variables."""
  out: dict[str, dict] = {}
  for path, node in spec.walk():
    if not isinstance(node, _OWNERS):
      continue
    if path not in node_vars:
      raise KeyError(f"surgery lost the variables of node {path!r} (a bug: please report)")
    for col, leaves in node_vars[path].items():
      d = out.setdefault(col, {})
      *parents, last = path.split(SEP)
      for part in parents:
        d = d.setdefault(part, {})
      d[last] = {k: _as_array(v) for k, v in leaves.items()}
  return out


# ------------------------------------------------------------------ node lists


def is_noop(node: S.Node) -> bool:
  """Eval-mode no-ops: identity sites and dropout."""
  return (isinstance(node, S.Act) and node.fn == "identity") or isinstance(node, S.Dropout)


def rewrite_lists(spec: S.Spec, fn: Callable[[str, tuple, tuple], tuple]) -> S.Spec:
  """Applies ``fn(prefix, nodes, in_shape) -> nodes`` to every node list, innermost first.

  ``prefix`` is the path of the list's scope followed by ``/`` (``""`` at the top),
  ``in_shape`` the shape entering the list. ``fn`` must keep the list's output
  shape (every pass preserves the function of each list). A Block's branch,
  shortcut and post are three lists of one scope; a branch left empty becomes
  one identity :class:`~jaxdepth.spec.Act`. A Concat's branches and post are
  lists of one scope too (an empty branch stays empty: it is the identity).
  """
  def rec(nodes, prefix, shape):
    out = []
    cur = shape
    for n in nodes:
      path = prefix + n.name
      if isinstance(n, S.Sequential):
        n2 = dataclasses.replace(n, layers=rec(n.layers, path + SEP, cur))
      elif isinstance(n, S.Block):
        mid = S._run_shapes(n.branch, cur, path + SEP)
        branch = rec(n.branch, path + SEP, cur)
        shortcut = rec(n.shortcut, path + SEP, cur)
        post = rec(n.post, path + SEP, mid)
        if not branch:  # a Block needs a branch: write the identity one explicitly
          taken = {c.name for c in shortcut + post}
          branch = (S.Act(unique_name("identity", taken), fn="identity"),)
        n2 = dataclasses.replace(n, branch=branch, shortcut=shortcut, post=post)
      elif isinstance(n, S.Concat):   # an empty branch is the identity: nothing to write
        n2 = dataclasses.replace(
            n, branches=tuple(rec(b, path + SEP, cur) for b in n.branches),
            post=rec(n.post, path + SEP, n.joined_shape(cur, path)))
      else:
        n2 = n
      cur = n.output_shape(cur, path)
      out.append(n2)
    return tuple(fn(prefix, tuple(out), shape))

  return dataclasses.replace(spec, layers=rec(spec.layers, "", spec.input_shape))


def unique_name(name: str, taken) -> str:
  """``name``, or ``name_2``, ``name_3``, ... whichever is not in ``taken``."""
  out, i = name, 1
  while out in taken:
    i += 1
    out = f"{name}_{i}"
  return out


def list_shapes(nodes, in_shape, prefix) -> list[tuple[tuple, tuple]]:
  """``[(input_shape, output_shape)]`` of every node of a list."""
  out, shape = [], tuple(in_shape)
  for n in nodes:
    o = n.output_shape(shape, prefix + n.name)
    out.append((shape, o))
    shape = o
  return out


class Element(NamedTuple):
  """A leaf of a list seen through its nested Sequentials."""
  name: str            # name in the list once its Sequentials are inlined ("a.b.c")
  path: str            # path in the spec as it is
  node: S.Node
  in_shape: tuple
  out_shape: tuple
  scopes: tuple        # inlined names of the Sequentials it sits in, outermost first


def flat_view(nodes, prefix: str, in_shape) -> list[Element]:
  """The nodes of a list with every nested Sequential opened (Blocks stay whole)."""
  out: list[Element] = []

  def rec(nodes, name_prefix, path_prefix, shape, scopes):
    for n in nodes:
      name, path = name_prefix + n.name, path_prefix + n.name
      if isinstance(n, S.Sequential):
        shape = rec(n.layers, name + INLINE, path + SEP, shape, scopes + (name,))
        continue
      o = n.output_shape(shape, path)
      out.append(Element(name, path, n, shape, o, scopes))
      shape = o
    return shape

  rec(nodes, "", prefix, tuple(in_shape), ())
  return out


def inline(nodes, prefix: str, scopes: set[str], node_vars: dict, log: list | None,
           ring_of: dict[str, int]) -> tuple:
  """Splices the Sequentials named in ``scopes`` (inlined names) into the list.

  A child ``c`` of an inlined Sequential ``s`` becomes ``s.c``; its variables (and
  those of everything under it) move with it in ``node_vars``. Nodes with a
  known ring keep it in ``ring_of`` and get an ``inline`` edit, so that the ring
  follows them.
  """
  def rec(nodes, name_prefix):
    out = []
    for n in nodes:
      name = name_prefix + n.name
      if isinstance(n, S.Sequential) and name in scopes:
        out.extend(rec(n.layers, name + INLINE))
      else:
        out.append(n if n.name == name else dataclasses.replace(n, name=name))
    return out

  new = tuple(rec(nodes, ""))
  moved = {}
  for old_key in list(node_vars):
    if not old_key.startswith(prefix):
      continue
    rest = old_key[len(prefix):].split(SEP)
    # Join the leading parts that belong to inlined scopes.
    head = rest[0]
    i = 1
    while head in scopes and i < len(rest):
      head = head + INLINE + rest[i]
      i += 1
    new_key = prefix + SEP.join([head, *rest[i:]])
    if new_key != old_key:
      moved[old_key] = new_key
  for old_key, new_key in moved.items():
    node_vars[new_key] = node_vars.pop(old_key)
    ring = ring_of.pop(old_key, 0)
    if ring:
      ring_of[new_key] = ring
      if log is not None:
        log.append(Edit("inline", new_key, f"moved from {old_key}", exact=False, ring=ring))
  return new


def drop_empty(nodes) -> tuple:
  """Removes Sequentials left without layers (they are the identity)."""
  return tuple(n for n in nodes if not (isinstance(n, S.Sequential) and not n.layers))

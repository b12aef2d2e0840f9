"""TLC's ranking: every candidate's loss gap under one compilation, the shared part once.

A candidate's edit (:mod:`jaxdepth.methods.tlc`) is data: a gate per site and a
0/1 keep-mask per channel of its weight layer. :func:`rank_naive` evaluates the
edits one full forward at a time (the reference); :func:`rank` evaluates all of
them in one compiled function where the network before each candidate's edit
runs once (see :func:`_rank_forked`); :func:`joint_gap` evaluates several edits
together (the prefix rules).

Candidates are read through their ``weight``, ``bn``, ``site`` and ``direct``
attributes (:class:`jaxdepth.methods.tlc.Candidate`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdepth import network
from jaxdepth.explicit_axes import replicated
from jaxdepth import spec as S
from jaxdepth.sites import flat_leaves
from jaxdepth.text.nodes import takes_token_ids
from jaxdepth.training import cross_entropy

__all__ = ["rank", "rank_naive", "joint_gap"]


# ------------------------------------------------------------------ edits as data


def _edit_params(params, edits):
  """``params`` with channel keep-masks applied: ``edits = ((weight, bn, mask), ...)``.

  A channel with mask 0 gets its output filter, bias and BatchNorm scale and
  bias set to 0 (exactly 0 after the BatchNorm). Masks may be traced.
  """
  flat = traverse_util.flatten_dict(params, sep=S.SEP)
  for weight, bn, mask in edits:
    for path in (weight, bn):
      if path is None:
        continue
      for leaf in ("kernel", "bias", "scale"):
        key = f"{path}{S.SEP}{leaf}"
        if key in flat:
          flat[key] = flat[key] * mask.astype(flat[key].dtype)
  return traverse_util.unflatten_dict(flat, sep=S.SEP)


def _loss(logits, labels, mask):
  return cross_entropy(logits, labels, mask)


def _batch_size(x) -> int:
  """Examples in ``x``: an array, or a text batch's dict of ``(B, L)`` token arrays."""
  return (x["input_ids"] if isinstance(x, dict) else x).shape[0]


@functools.partial(jax.jit, static_argnames=("spec", "cands", "dtype"))
def _joint_loss(spec, cands, variables, x, labels, mask, gates, masks, on, dtype=None):
  """The loss with the candidates where ``on`` is 1 edited jointly (edits as data)."""
  edits = tuple((c.weight, c.bn, 1.0 - on[k] * (1.0 - masks[k])) for k, c in enumerate(cands))
  params = _edit_params(variables["params"], edits)
  index = {s: i for i, s in enumerate(spec.sites())}
  off = jnp.zeros_like(gates)
  for k, c in enumerate(cands):
    off = off.at[index[c.site]].max(on[k])
  logits = network.forward(spec, {**variables, "params": params}, x,
                           gates=gates * (1.0 - off), dtype=dtype).logits
  return _loss(logits, labels, mask)


def _check_inputs(x, labels) -> None:
  """Refuses a whole data batch for ``x`` and labels that are not ``(B,)`` classes."""
  if isinstance(x, dict) and "image" in x:
    raise TypeError("x is the network's input, batch['image'] (or a text spec's token "
                    "arrays), not the whole batch dict; pass labels=batch['label'] beside it")
  shape = np.shape(labels)
  if len(shape) != 1 or not np.issubdtype(np.asarray(labels).dtype, np.integer):
    raise TypeError(f"labels must be integer classes of shape (B,), got "
                    f"{np.asarray(labels).dtype} of shape {shape}"
                    + (" (one-hot? pass labels.argmax(-1))" if len(shape) == 2 else ""))


def _checked_gates(spec, cands, gates) -> jax.Array:
  """The site gates as float32 (default all on), checked to hold one gate per site of
  ``spec`` (a shorter array would be read out of bounds, clamped to its last gate) and
  to keep every candidate's site on: a removed site's edit changes nothing."""
  if gates is None:
    return network.gates_for(spec)
  gates = jnp.asarray(gates, jnp.float32)
  by_site = network.gates_by_site(spec, gates)
  off = list(dict.fromkeys(c.site for c in cands if by_site[c.site] == 0))
  if off:
    raise ValueError(f"candidates on sites {off}, which the gates already removed (gate 0); "
                     f"rank only the live sites' candidates: tlc.candidates(spec, "
                     f"live=jaxdepth.methods.live_sites(spec, gates))")
  return gates


def _checked_masks(spec, cands, masks) -> tuple:
  """The candidates' keep-masks in candidate order, each checked to be ``C`` zeros and ones
  (``C`` the weight layer's output channels): β values (:func:`candidate_betas`) in their
  place would scale the weights instead of cutting channels, and rank otherwise."""
  out = []
  for c in cands:
    if c.name not in masks:
      raise KeyError(f"masks hold no keep-mask for candidate {c.name!r}; build them with "
                     f"keep_masks(candidate_betas(...))")
    m = np.asarray(jax.device_get(masks[c.name]))
    channels = spec.node(c.weight).features
    if m.shape != (channels,) or not np.isin(m, (0, 1)).all():
      raise ValueError(f"the keep-mask of candidate {c.name!r} must be {channels} zeros and ones "
                       f"(keep_masks(betas)), got {m.dtype} values of shape {m.shape}"
                       + ("" if m.shape != (channels,) else
                          "; pass keep_masks(betas), not the betas themselves"))
    out.append(masks[c.name])
  return tuple(out)


def joint_gap(spec, variables, cands, chosen, x, labels, masks, *, gates=None, mask=None,
              base_loss=None, dtype=None) -> float:
  """The loss gap of the joint edit of the ``chosen`` candidates (names).

  Args:
    spec, variables: the network; ``gates`` its site gates (default all on).
    cands: every candidate (the compiled function is shared by all subsets).
    chosen: the names of the candidates edited together.
    x, labels, mask: the validation batch.
    masks: ``{name: (C,)}`` keep-masks (:func:`keep_masks`).
    base_loss: the unedited loss (computed when not given).
    dtype: compute dtype.

  Returns:
    ``L(T_chosen(network)) − L(network)``.

  Raises:
    TypeError: ``chosen`` is one string (a collection of names is wanted).
    KeyError: a chosen name that is no candidate's (a weight path, a typo).
    ValueError: ``gates`` without one entry per site of ``spec``, or a candidate whose
      site they already removed (gate 0).
  """
  _check_inputs(x, labels)
  cands = tuple(cands)
  gates = _checked_gates(spec, cands, gates)
  chosen = set(S.site_paths(chosen, "chosen", "candidate names"))
  unknown = sorted(chosen - {c.name for c in cands})
  if unknown:
    raise KeyError(f"chosen names no candidate: {unknown}; the candidates are "
                   f"{[c.name for c in cands]}")
  mask = jnp.ones(_batch_size(x), bool) if mask is None else mask
  stacked = tuple(jnp.asarray(m) for m in _checked_masks(spec, cands, masks))
  if base_loss is None:
    base_loss = float(_joint_loss(spec, cands, variables, x, labels, mask, gates, stacked,
                                  jnp.zeros(len(cands)), dtype=dtype))
  on = jnp.asarray([1.0 if c.name in chosen else 0.0 for c in cands])
  return float(_joint_loss(spec, cands, variables, x, labels, mask, gates, stacked, on,
                           dtype=dtype)) - base_loss


def rank_naive(spec, variables, cands, x, labels, masks, *, gates=None, mask=None
               ) -> tuple[float, dict[str, float]]:
  """The reference ranking: one full forward per candidate (same compiled function).

  Returns:
    ``(base_loss, {name: gap})``.

  Raises:
    ValueError: ``gates`` without one entry per site of ``spec``, or a candidate whose
      site they already removed (gate 0).
  """
  _check_inputs(x, labels)
  cands = tuple(cands)
  gates = _checked_gates(spec, cands, gates)
  mask = jnp.ones(_batch_size(x), bool) if mask is None else mask
  stacked = tuple(jnp.asarray(m) for m in _checked_masks(spec, cands, masks))
  base_loss = float(_joint_loss(spec, cands, variables, x, labels, mask, gates, stacked,
                                jnp.zeros(len(cands))))
  gaps = {}
  for k, c in enumerate(cands):
    on = jnp.zeros(len(cands)).at[k].set(1.0)
    gaps[c.name] = float(_joint_loss(spec, cands, variables, x, labels, mask, gates, stacked,
                                     on)) - base_loss
  return base_loss, gaps


# -- the shared-prefix ranking ---------------------------------------------------


def _top_elements(spec: S.Spec) -> list[str]:
  """Paths of the top-level chain with Sequentials opened (Blocks whole)."""
  return [p for p, _ in flat_leaves(spec.layers, "")]


def _element_of(elements: list[str], path: str) -> int:
  for k, e in enumerate(elements):
    if path == e or path.startswith(e + S.SEP):
      return k
  raise KeyError(path)


def _sub_spec(spec: S.Spec, elements: list[str], start: int, stop: int) -> S.Spec:
  """The spec of top-level elements ``start .. stop-1`` (same paths, same variables)."""
  keep = set(elements[start:stop])

  def rec(nodes, prefix):
    out = []
    for n in nodes:
      path = prefix + n.name
      if path in keep:
        out.append(n)
      elif isinstance(n, S.Sequential):
        layers = rec(n.layers, path + S.SEP)
        if layers:
          out.append(dataclasses.replace(n, layers=layers))
    return tuple(out)

  return S.Spec(spec.shapes()[elements[start]][0], rec(spec.layers, ""),
                name=f"{spec.name}[{start}:{stop}]")


def _spec_of(spec: S.Spec, paths, name: str) -> S.Spec:
  """A spec of the leaves ``paths`` (in call order), their scopes kept as Sequentials.

  A Block around them becomes a Sequential of the same name: both open the same
  name scope, so the variables of ``spec`` fit unchanged.
  """
  keep = set(paths)

  def rec(nodes, prefix):
    out = []
    for n in nodes:
      path = prefix + n.name
      if path in keep:
        out.append(n)
      elif n.children():
        layers = rec(n.children(), path + S.SEP)
        if layers:
          out.append(S.Sequential(n.name, layers=layers))
    return tuple(out)

  return S.Spec(spec.shapes()[paths[0]][0], rec(spec.layers, ""), name=name)


class _Join(NamedTuple):
  """How a candidate's chunk joins the others after top-level element ``element``.

  ``kind``: ``"site"`` (the element is the site itself), ``"post"`` (the site
  ends a residual block, after its addition), ``"branch"`` (the site is inside a
  block's branch: the rest of the branch, the shortcut of the unedited network
  and the post run on the edited value) or ``"fork"`` (anything else: a copy of
  the unedited input of ``element`` runs the element with the edit as data).
  """
  kind: str
  element: int
  rest: S.Spec | None = None        # "branch": the branch after the site
  post: S.Spec | None = None        # "branch": the block's post list (None: empty)
  shortcut: str | None = None       # "branch": last shortcut node (None: identity shortcut)


class _Plan(NamedTuple):
  elements: tuple[S.Spec, ...]      # one sub-spec per top-level element
  joins: tuple[_Join, ...]          # per candidate


def _join(spec: S.Spec, elements: list[str], c) -> _Join:
  e_weight, e_site = _element_of(elements, c.weight), _element_of(elements, c.site)
  fork = _Join("fork", min(e_weight, e_site))
  if e_weight != e_site:
    return fork if not (c.direct and c.site == elements[e_site]) else _Join("site", e_site)
  if c.site == elements[e_site]:
    return _Join("site", e_site) if c.direct else fork
  block = spec.node(elements[e_site])
  if not isinstance(block, S.Block):
    return fork
  scope = elements[e_site] + S.SEP
  branch, post = flat_leaves(block.branch, scope), flat_leaves(block.post, scope)
  nested = any(isinstance(n, S.Block) for _, n in branch + post)
  if nested:
    return fork
  if not c.direct and [p for p, _ in post] == [c.site] and c.bn == (branch[-1][0] if branch
                                                                       else None):
    return _Join("post", e_site)
  paths = [p for p, _ in branch]
  if c.direct and c.site in paths:
    rest = paths[paths.index(c.site) + 1:]
    if not rest:
      return fork
    shortcut = flat_leaves(block.shortcut, scope)
    post_spec = (_spec_of(spec, [p for p, _ in post], f"{spec.name}:{elements[e_site]}.post")
                 if post else None)
    return _Join("branch", e_site, _spec_of(spec, rest, f"{spec.name}:{c.site}+"), post_spec,
                 shortcut[-1][0] if shortcut else None)
  return fork


@functools.lru_cache(maxsize=32)
def _plan(spec: S.Spec, cands: tuple) -> _Plan:
  elements = _top_elements(spec)
  subs = tuple(_sub_spec(spec, elements, k, k + 1) for k in range(len(elements)))
  return _Plan(subs, tuple(_join(spec, elements, c) for c in cands))


def _forward(spec, variables, h, gates_all, index, dtype, capture=(), tokens=None):
  """``spec`` (a sub-spec) on ``h`` with the full network's gates; logits and captures.

  ``tokens``: a text batch's per-token inputs (``(B, L)`` each), repeated for
  every chunk that ``h`` (``(n B, ...)``) holds: the token ids with them for the
  sub-spec that embeds them, else beside the hidden states (``token_inputs``).
  """
  sub_index = [index[s] for s in spec.sites()]
  g = gates_all[jnp.asarray(sub_index, jnp.int32)] if sub_index else None
  kw = {}
  if tokens is not None:
    n = h.shape[0] // _batch_size(tokens)
    tiled = {k: jnp.tile(v, (n, 1)) for k, v in tokens.items() if k != "input_ids"}
    if takes_token_ids(spec):
      h = {**tiled, "input_ids": h}
    else:
      kw["token_inputs"] = {**tiled, "input_ids": jnp.tile(tokens["input_ids"], (n, 1))}
  out = network.forward(spec, variables, h, gates=g, dtype=dtype, capture=capture, **kw)
  return out.logits, out.captured or {}


@functools.partial(jax.jit, static_argnames=("spec", "cands", "dtype"))
def _rank_forked(spec, cands, variables, x, labels, mask, gates, masks, dtype=None):
  """Losses of the unedited network and of each candidate's edit, ``(1 + K,)``.

  Activations carry *chunks* on a leading axis: chunk 0 is the unedited
  network; each candidate adds its chunk where its edit takes effect, and from
  there on runs with the others, one top-level element after the other:

  * at its **site** (most candidates): the edited value is known from chunk 0's
    own values, ``z·keep`` (the channels cut, the site the identity) or, after a
    residual addition, ``z − (1−keep)·bn_out``; a site inside a residual branch
    then runs the rest of that branch, adds chunk 0's shortcut and runs the
    block's post list (if any: a transformer MLP has none);
  * otherwise (**fork**: the MobileNetV2 projection quirk, nested blocks) a copy
    of chunk 0's input of the element where the edit starts runs from there
    with the edit as data (per-chunk gates and BatchNorm masks, under ``vmap``).

  So the network before each candidate's edit runs once, for chunk 0 only.
  """
  plan = _plan(spec, cands)
  index = {s: i for i, s in enumerate(spec.sites())}
  tokens = x if isinstance(x, dict) else None   # a text batch: its ids flow, the rest rides along
  h = (x["input_ids"] if tokens is not None else x)[None]
  order: list[int] = []               # candidate of each chunk after the first
  for e, sub in enumerate(plan.elements):
    forks = [k for k, j in enumerate(plan.joins) if j.kind == "fork" and j.element == e]
    if forks:
      h = jnp.concatenate([h, jnp.broadcast_to(h[:1], (len(forks),) + h.shape[1:])])
      order += forks
    joiners = [k for k, j in enumerate(plan.joins) if j.kind != "fork" and j.element == e]
    capture = []
    for k in joiners:
      c, j = cands[k], plan.joins[k]
      if j.kind == "post":
        capture += [c.site, c.bn]
      elif j.kind == "branch":
        capture += [c.site] + ([j.shortcut] if j.shortcut else [])
    capture = tuple(dict.fromkeys(capture))
    nodes = {p for p, _ in sub.walk()}
    sub_sites = set(sub.sites())
    forked = [k for k in order if plan.joins[k].kind == "fork"]
    edited = [k for k in forked
              if {cands[k].weight, cands[k].bn} & nodes or cands[k].site in sub_sites]
    h_in = h
    if edited:
      chunk_gates = [gates]
      # the mask goes on the BatchNorm where there is one, else on the weight layer
      chunk_masks = {k: [jnp.ones_like(masks[k])] for k in edited
                     if (cands[k].bn or cands[k].weight) in nodes}
      for k in order:
        g = gates
        if k in edited and cands[k].site in sub_sites:
          g = g.at[index[cands[k].site]].set(0.0)
        chunk_gates.append(g)
        for i in chunk_masks:
          chunk_masks[i].append(masks[i] if i == k else jnp.ones_like(masks[i]))
      stacked_gates = jnp.stack(chunk_gates)
      stacked_masks = {i: jnp.stack(m) for i, m in chunk_masks.items()}

      def run(hh, g, m, sub=sub, capture=capture):
        # Behind a BatchNorm, zeroing its scale and bias alone makes the channel exactly
        # 0: the conv kernel stays shared by every chunk (a per-chunk kernel would turn
        # the convolution into a grouped one, several times slower on CPU).
        edits = tuple((None if cands[i].bn else cands[i].weight, cands[i].bn, m[i]) for i in m)
        params = _edit_params(variables["params"], edits) if edits else variables["params"]
        return _forward(sub, {**variables, "params": params}, hh, g, index, dtype, capture,
                        tokens)

      h, captured = jax.vmap(run)(h, stacked_gates, stacked_masks)
    else:
      n = h.shape[0]
      flat, captured = _forward(sub, variables, h.reshape((-1,) + h.shape[2:]), gates, index,
                                dtype, capture, tokens)
      h = flat.reshape((n, -1) + flat.shape[1:])
      captured = {p: tuple(v.reshape((n, -1) + v.shape[1:]) for v in io)
                  for p, io in captured.items()}
    if joiners:
      new = []
      for k in joiners:
        c, j = cands[k], plan.joins[k]
        keep = masks[k].astype(h.dtype)
        if j.kind == "site":
          new.append(h_in[0] * keep)
        elif j.kind == "post":
          z, bn_out = captured[c.site][0][0], captured[c.bn][1][0]
          new.append(z - (1.0 - keep) * bn_out)
        else:
          v = captured[c.site][0][0] * keep
          v, _ = _forward(j.rest, variables, v, gates, index, dtype, tokens=tokens)
          v = v + (captured[j.shortcut][1][0] if j.shortcut else h_in[0])
          if j.post is not None:
            v, _ = _forward(j.post, variables, v, gates, index, dtype, tokens=tokens)
          new.append(v)
      h = jnp.concatenate([h, jnp.stack(new)])
      order += joiners
  losses = jax.vmap(lambda logits: _loss(logits, labels, mask))(h)
  # chunks are in joining order; put them back in candidate order
  inverse = np.argsort(np.asarray(order, np.int64)) + 1
  return jnp.concatenate([losses[:1], losses[jnp.asarray(inverse)]])


def rank(spec, variables, cands, x, labels, masks, *, gates=None, mask=None, dtype=None
         ) -> tuple[float, dict[str, float]]:
  """Every candidate's loss gap on one batch, under one compilation, prefixes shared.

  Args:
    spec, variables: the network (cut channels already 0); ``gates`` its site
      gates, one per site (default all on).
    cands: the live candidates (:func:`candidates`): none on a site the gates removed.
    x, labels: the validation batch; ``mask`` marks its real examples.
    masks: ``{name: (C,)}`` keep-masks of the edits (:func:`keep_masks`).
    dtype: compute dtype.

  Returns:
    ``(base_loss, {name: gap})``, gaps in candidate order; equal to
    :func:`rank_naive` up to float rounding.

  Raises:
    ValueError: ``gates`` without one entry per site of ``spec``, or a candidate whose
      site they already removed (gate 0).
  """
  cands = tuple(cands)
  if not cands:
    raise ValueError("no candidate to rank")
  # The candidates are folded into the batch axis, a reshape that JAX refuses on a batch
  # sharded over Explicit mesh axes: such a batch is ranked whole (the same values).
  x, labels, mask = replicated((x, labels, mask))
  _check_inputs(x, labels)
  gates = _checked_gates(spec, cands, gates)
  mask = jnp.ones(_batch_size(x), bool) if mask is None else mask
  stacked = tuple(jnp.asarray(m, jnp.float32) for m in _checked_masks(spec, cands, masks))
  losses = np.asarray(jax.device_get(_rank_forked(spec, cands, variables, x, labels, mask,
                                                  gates, stacked, dtype=dtype)), np.float64)
  base_loss = float(losses[0])
  return base_loss, {c.name: float(losses[1 + k]) - base_loss for k, c in enumerate(cands)}

"""EGP and NEPENTHE: prune weights where entropy is low until whole layers go linear.

Liao, Quétu, Nguyen, Tartaglione, "Can Unstructured Pruning Reduce the Depth in
Deep Neural Networks?", ICCV 2023 Workshops (arXiv 2308.06619) — EGP; and its
journal extension NEPENTHE (arXiv 2404.16890, "Layer Collapse Can be Induced by
Unstructured Pruning").

Every rectifier site ``l`` is fed by one weight layer ``W_l`` (:func:`layer_map`:
through its BatchNorm; a residual block's site after the addition by the
branch's last conv). One iteration::

    train E epochs (a fresh optimizer; pruned weights held at exactly 0)
    H_l   = entropy of site l (bits)            (:data:`ESTIMATORS`)
    sites with H_l = 0 become identities and their layers are frozen
    P     = {l : H_l > 0 and nnz(W_l) > 0}
    I_l   = H_l · mean{|w| : w ∈ W_l, w ≠ 0}     "irrelevance": small I, pruned more
    a_l   = ρ Σ_P nnz(W_l) · softmax_P(S / I_l), S = Σ_P I_l, capped at nnz(W_l)
            and the rest redistributed (:func:`allocate`)
    prune ⌊a_l⌋ more weights of W_l, the smallest |w| first (:func:`prune`)

A layer pruned to zero weights outputs only its BatchNorm shift, a constant per
channel, so its site reaches zero entropy: it is linear on every input and
surgery can merge it away (:meth:`Egp.export`, :mod:`jaxdepth.surgery`).

The softmax of ``S / I_l`` is not normalised: its logits spread over about
``L`` (the number of layers), so it is nearly one-hot and EGP in practice prunes
the least relevant layers completely, then spills over. :func:`allocate`
reproduces the official code's arithmetic to the bit (its dtype flow is written
out there), so the integer amounts equal the official ones.

EGP and NEPENTHE differ in the entropy estimator only (:class:`Egp`,
:class:`Nepenthe`):

* ``"egp"`` (EGP's default): one eval-mode pass over the training split *with*
  the training augmentation, shuffled; per batch ``p_c = #(z>0)/n`` (zeros OFF)
  and ``H^b`` = mean of ``h2(p_c)`` over the channels with ``0 < p_c < 1``
  (``0`` if none; clamp 1e-5); ``H_l`` = mean of ``H^b`` over batches (a last
  batch of one example left out; an entropy batch of one is refused).
* ``"dataset"`` (NEPENTHE's default): the same pass, ``p_c = #(z>0)/#(z≠0)`` over
  the whole split (zeros discarded), ``H_l`` = mean over channels.
* ``"easier"``: the last training epoch in train mode, zeros ON (EASIER's).

A neuron is a channel (the last axis of the site's input). ``neurons="rows"``
is the official Swin-T script's reading instead: on a ``(B, H, W, C)`` map the
neuron is the token row ``h``, its ON fraction taken over the batch, the
width and the channels (:func:`row_counts`).

The pieces are pure functions a training loop of one's own can call. ``masks``
has the nesting of ``params``, a bool array at each pruned layer's ``kernel``
(what :func:`jaxdepth.optim.apply_masks` and the train step read). The first round,
from ``spec``, its trained ``variables`` and a dataset ``ds`` (later rounds start
from the masks it leaves, and train with them in between)::

    from flax import traverse_util
    from jaxdepth import stats as site_stats         # or jaxdepth.entropies
    from jaxdepth.methods import egp

    layers = egp.layer_map(spec)                     # {site: weight layer}
    masks = egp.initial_masks(spec, layers)          # all True: nothing pruned yet
    H = site_stats.entropies(egp.entropy_statistics(spec, variables, ds.train,
                                                    batch_size=64), "egp")
    stats = egp.layer_statistics(variables["params"], masks, layers)
    pruned = [s for s in H if layers[s]]
    amounts = egp.allocate([H[s] for s in pruned],
                           [stats[layers[s]]["mean_abs_nonzero"] for s in pruned],
                           [stats[layers[s]]["nnz"] for s in pruned], rho=0.5)
    flat_masks = traverse_util.flatten_dict(masks)
    flat_params = traverse_util.flatten_dict(variables["params"])
    for s, amount in zip(pruned, amounts):
      key = (*layers[s].split("/"), "kernel")
      flat_masks[key] = egp.prune(flat_params[key], flat_masks[key], amount)
    masks = traverse_util.unflatten_dict(flat_masks)
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdepth import network, optim, sites, surgery, training
from jaxdepth import spec as S
from jaxdepth import stats as site_stats
from jaxdepth.methods import base

__all__ = ["ESTIMATORS", "NEURONS", "DEFAULT_ITERATIONS", "layer_map", "check_layer_map",
           "initial_masks", "prune", "Allocation", "allocation", "allocate",
           "layer_statistics", "row_counts", "entropy_statistics", "dead_channel_counts", "Egp",
           "Nepenthe"]

ESTIMATORS = ("egp", "dataset", "easier")
NEURONS = ("channels", "rows")
DEFAULT_ITERATIONS = 10   # the dense model, then 9 pruning rounds each retrained


# ---------------------------------------------------------------- sites -> layers


def _has_kernel(node: S.Node) -> bool:
  return isinstance(node, (S.Conv, S.Dense))


def layer_map(spec: S.Spec) -> dict[str, str | None]:
  """The weight layer that feeds each site, read from the spec's structure.

  This is :func:`jaxdepth.sites.weight_layers` (one rule for the whole
  library): the nearest Conv or Dense before the site through per-channel nodes
  only (BatchNorm, dropout, identity sites); a residual block's site after the
  addition (ResNet's ``relu2``) is fed by the branch's last conv. Shortcut convs
  (downsampling) and a final classifier feed no site, so they are never pruned.

  ResNet: the stem ``relu`` maps to ``conv1``, ``layerX/Y/reluK`` to
  ``layerX/Y/convK``; MobileNetV2: every ReLU6 to the conv of its ConvBNReLU6;
  Swin-T and ViT: every MLP's GELU to the MLP's ``fc1``.

  Args:
    spec: the architecture.

  Returns:
    ``{site: layer path or None}`` for every live site, in call order (``None``:
    no weight layer feeds the site directly; it is measured but never pruned).
  """
  return sites.weight_layers(spec)


def check_layer_map(spec: S.Spec, mapping: Mapping[str, str | None]) -> dict[str, str | None]:
  """Validates a user's ``{site: layer}`` map against ``spec``.

  Args:
    spec: the architecture.
    mapping: site paths to the path of a Conv or Dense (or ``None``: not pruned).
      Sites left out are not pruned.

  Returns:
    ``{site: layer or None}`` for every live site, in call order.

  Raises:
    KeyError: a key that is not a live site, or a layer that is no node.
    ValueError: a layer without a kernel, or a layer named for two sites.
  """
  sites = spec.sites()
  nodes = dict(spec.walk())
  unknown = [s for s in mapping if s not in sites]
  if unknown:
    raise KeyError(f"the layer map names {unknown}, which are not live sites of "
                   f"{spec.name!r}; live sites: {list(sites)}")
  seen: dict[str, str] = {}
  for site, layer in mapping.items():
    if layer is None:
      continue
    if layer not in nodes:
      raise KeyError(f"the layer map sends site {site!r} to {layer!r}, which is not a node of "
                     f"{spec.name!r}; print jaxdepth.methods.egp.layer_map(spec) for the default")
    if not _has_kernel(nodes[layer]):
      raise ValueError(f"the layer map sends site {site!r} to {layer!r}, a "
                       f"{type(nodes[layer]).__name__} without a weight kernel; name a Conv or "
                       f"Dense node")
    if layer in seen:
      raise ValueError(f"the layer map sends both {seen[layer]!r} and {site!r} to {layer!r}; "
                       f"each layer can be pruned for one site only")
    seen[layer] = site
  return {s: mapping.get(s) for s in sites}


def _kernel_path(layer: str) -> tuple[str, ...]:
  return (*layer.split(S.SEP), "kernel")


def initial_masks(spec: S.Spec, layers: Mapping[str, str | None]):
  """The masks before any pruning: all ``True`` at the kernel of each mapped layer.

  Args:
    spec: the architecture.
    layers: ``{site: layer or None}`` (:func:`layer_map`); unmapped sites get no mask.

  Returns:
    ``masks`` with the nesting of ``params`` (what :func:`prune` updates and
    :func:`jaxdepth.optim.apply_masks` reads).
  """
  shapes = spec.shapes()
  nodes = dict(spec.walk())
  flat = {}
  for layer in layers.values():
    if layer is None:
      continue
    node = nodes[layer]
    c_in = shapes[layer][0][-1]
    shape = ((*node.kernel, c_in // node.groups, node.features) if isinstance(node, S.Conv)
             else (c_in, node.features))
    flat[_kernel_path(layer)] = jnp.ones(shape, bool)
  return traverse_util.unflatten_dict(flat)


def _masked_on_host(params, masks):
  """``apply_masks`` on host copies (params and masks may live on different devices)."""
  return jax.tree.map(np.asarray, optim.apply_masks(jax.device_get(params),
                                                    jax.device_get(masks)))


# ------------------------------------------------------------------------ pruning


def prune(weight, mask, amount: int):
  """Prunes ``amount`` more weights: the smallest ``|w|`` among those still unmasked.

  The rule of PyTorch's ``l1_unstructured`` on an already pruned module: only the
  entries whose mask is non-zero compete, and earlier masks are kept.
  **Ties** (equal ``|w|``) go to the lowest flat (C-order) index first, so the
  result is deterministic.

  Args:
    weight: the weight array.
    mask: an array of its shape, non-zero where the weight is kept.
    amount: how many more weights to prune (an int, ``0 <= amount <=`` unmasked
      count).

  Returns:
    The new mask, a bool array of ``weight``'s shape.

  Raises:
    ValueError: shapes differ, or ``amount`` is negative, not an int, or more than
      the unmasked weights.
  """
  if isinstance(mask, Mapping) or isinstance(weight, Mapping):
    raise TypeError("prune takes one weight array and its mask array, got a dict (a layer's "
                    "{'kernel': ...}?); pass flat_params[(*layer.split('/'), 'kernel')] and the "
                    "mask at the same key")
  w = np.asarray(jax.device_get(weight))
  m = np.asarray(jax.device_get(mask)) != 0
  if w.shape != m.shape:
    raise ValueError(f"prune: the mask has shape {m.shape}, the weight {w.shape}")
  if isinstance(amount, bool) or not isinstance(amount, (int, np.integer)) or amount < 0:
    raise ValueError(f"prune: amount must be an int >= 0, got {amount!r}")
  kept = np.flatnonzero(m.ravel())
  if amount > kept.size:
    raise ValueError(f"prune: cannot prune {amount} weights, only {kept.size} are unmasked")
  order = np.argsort(np.abs(w.ravel()[kept]), kind="stable")
  out = m.ravel().copy()
  out[kept[order[:int(amount)]]] = False
  return jnp.asarray(out.reshape(m.shape))


# --------------------------------------------------------------------- allocation


class Allocation(NamedTuple):
  """What :func:`allocation` returns.

  Attributes:
    amounts: weights to prune per layer (ints, ``0`` for excluded layers).
    eligible: indices of the layers in ``P`` (``H > 0`` and ``nnz > 0``).
    irrelevance: ``I_l`` per layer (``0.0`` for excluded layers).
    budget: ``ρ Σ_P nnz``.
    rounds: one dict per pass of the capping loop: ``active`` (layer indices
      sharing the budget), ``budget`` (what they share), ``capped`` (indices
      capped at their non-zero count in this pass).
  """
  amounts: list[int]
  eligible: list[int]
  irrelevance: list[float]
  budget: float
  rounds: list[dict[str, Any]]


def _check_vector(values, name, n=None):
  arr = np.asarray(values)
  if arr.ndim != 1:
    raise ValueError(f"allocate: {name} must be a 1-D sequence (one value per layer), got "
                     f"shape {arr.shape}")
  if n is not None and arr.shape[0] != n:
    raise ValueError(f"allocate: {name} has {arr.shape[0]} values, entropy has {n}")
  return arr


def allocation(entropy: Sequence[float], mean_abs_nonzero: Sequence[float],
               nnz: Sequence[int], rho: float = 0.5) -> Allocation:
  """EGP's split of the pruning budget over layers, with every pass of its capping loop.

  The official code's computation, dtypes included (PyTorch's rules on 0-d
  float32 tensors mixed with Python floats), so the integers are the same::

      P     = {l : H_l ≠ 0 and nnz_l > 0}                         (layer order kept)
      I_l   = f32(H_l · m_l)                                      float32 product
      S     = Σ_P float64(I_l)                                    Python float, in order
      B     = ρ · Σ_P nnz_l                                       Python float
      repeat over the active layers A (first A = P):
        z_l = f32(f32(1 / I_l) · f32(S))    while S is a Python float (Tensor.__rtruediv__
                                            multiplies by the reciprocal)
        z_l = f32(S / I_l)                  once S is float32 (after the first cap)
        e_l = f32(exp(f32(z_l − max_A z)))  read back as float64
        a_l = B · (e_l / Σ_A e)             float64, the sum in layer order
        for l in A (in order) with nnz_l < a_l:
          a_l = nnz_l;  B −= nnz_l;  S = f32(f32(S) − I_l);  A −= {l}
      until no layer was capped
      amount_l = int(a_l)                   truncation

  ``exp`` is evaluated in float64 and rounded to float32, i.e. correctly
  rounded; PyTorch's float32 ``exp`` on one element (the C library's ``expf``,
  within 0.502 ulp) gives the same float32 except in halfway cases far rarer
  than any budget's sensitivity.

  Args:
    entropy: ``H_l`` per layer (bits, >= 0), in layer (call) order.
    mean_abs_nonzero: ``mean |w|`` over the non-zero weights of each layer.
    nnz: the non-zero weights of each layer (ints >= 0).
    rho: the fraction of the eligible non-zero weights to prune, in (0, 1).

  Returns:
    An :class:`Allocation`.

  Raises:
    ValueError: ``rho`` outside (0, 1), sequences of different lengths,
      negative or non-finite values, non-integer counts.
  """
  if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not 0.0 < rho < 1.0:
    raise ValueError(f"rho must be in (0, 1) (the fraction of the remaining weights pruned "
                     f"per iteration; the paper uses 0.5), got {rho!r}")
  rho = float(rho)
  h = _check_vector(entropy, "entropy").astype(np.float32)
  m = _check_vector(mean_abs_nonzero, "mean_abs_nonzero", h.shape[0]).astype(np.float32)
  counts = _check_vector(nnz, "nnz", h.shape[0])
  if counts.size and (not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0):
    raise ValueError(f"allocate: nnz must be ints >= 0 (non-zero weights per layer), got "
                     f"{list(nnz)}")
  if not (np.all(np.isfinite(h)) and np.all(h >= 0) and np.all(np.isfinite(m))
          and np.all(m >= 0)):
    raise ValueError("allocate: entropy and mean_abs_nonzero must be finite and >= 0")
  n = [int(c) for c in counts]
  layers = range(h.shape[0])
  eligible = [l for l in layers if h[l] != 0 and n[l] > 0]
  irr = {l: np.float32(h[l] * m[l]) for l in eligible}
  total: Any = 0
  for l in eligible:
    total += float(irr[l])
  budget: Any = 0
  for l in eligible:
    budget += n[l]
  budget = rho * budget
  start_budget = float(budget)
  amounts: dict[int, Any] = {}
  active = list(eligible)
  rounds = []
  while active:
    if isinstance(total, np.float32):
      logits = {l: np.float32(total / irr[l]) for l in active}
    else:
      logits = {l: np.float32(np.float32(np.float32(1.0) / irr[l]) * np.float32(total))
                for l in active}
    top = max(logits.values())
    e = {l: float(np.float32(math.exp(float(np.float32(logits[l] - top))))) for l in active}
    denominator: Any = 0
    for l in active:
      denominator += e[l]
    for l in active:
      amounts[l] = budget * (e[l] / denominator)
    record = {"active": list(active), "budget": float(budget), "capped": []}
    for l in list(active):
      if n[l] < amounts[l]:
        amounts[l] = n[l]
        budget -= n[l]
        total = np.float32(np.float32(total) - irr[l])
        active.remove(l)
        record["capped"].append(l)
    rounds.append(record)
    if not record["capped"]:
      break
  return Allocation(
      amounts=[int(amounts[l]) if l in amounts else 0 for l in layers],
      eligible=eligible,
      irrelevance=[float(irr[l]) if l in irr else 0.0 for l in layers],
      budget=start_budget, rounds=rounds)


def allocate(entropy: Sequence[float], mean_abs_nonzero: Sequence[float], nnz: Sequence[int],
             rho: float = 0.5) -> list[int]:
  """The weights to prune per layer (see :func:`allocation`, which also gives the passes).

  Args:
    entropy: ``H_l`` per layer (bits).
    mean_abs_nonzero: mean ``|w|`` over each layer's non-zero weights.
    nnz: non-zero weights per layer.
    rho: fraction of the eligible non-zero weights pruned, in (0, 1).

  Returns:
    One int per layer; ``0`` for a layer at zero entropy or without weights left.
  """
  return allocation(entropy, mean_abs_nonzero, nnz, rho).amounts


# -------------------------------------------------------------------- measurement


def layer_statistics(params, masks, layers: Mapping[str, str | None]) -> dict[str, dict]:
  """Non-zero count, size and mean ``|w|`` over the non-zero weights of each mapped layer.

  Args:
    params: the ``params`` collection.
    masks: weight masks (:func:`jaxdepth.optim.apply_masks`) or ``None``.
    layers: ``{site: layer or None}`` (:func:`layer_map`).

  Returns:
    ``{layer: {"nnz", "size", "mean_abs_nonzero"}}`` (float32 mean, 0.0 without
    non-zero weights), in the order of ``layers``.

  Raises:
    TypeError: the whole variables dict for ``params``.
    ValueError: a mapped layer without a kernel in ``params`` (a map of another model).
  """
  if isinstance(params, Mapping) and "params" in params:
    raise TypeError("layer_statistics takes the params collection, variables['params'], not "
                    "the whole variables dict")
  flat = traverse_util.flatten_dict(_masked_on_host(params, masks))
  out = {}
  for layer in layers.values():
    if layer is None:
      continue
    if _kernel_path(layer) not in flat:
      raise ValueError(f"the params hold no kernel for layer {layer!r} of the layer map: the "
                       f"map belongs to another model than the params; build it with "
                       f"layer_map(spec) of the spec the params were made for")
    w = np.asarray(jax.device_get(flat[_kernel_path(layer)]), np.float32)
    nonzero = np.abs(w[w != 0])
    out[layer] = {"nnz": int(nonzero.size), "size": int(w.size),
                  "mean_abs_nonzero": float(np.mean(nonzero, dtype=np.float32))
                  if nonzero.size else 0.0}
  return out


def row_counts(z, example_mask=None) -> jax.Array:
  """Sign counts per token row of a ``(B, H, W, C)`` map: ``(3, H)`` int32.

  The neuron of the official Swin-T EGP script: row ``h`` is ON at a position
  ``(b, w, c)`` where ``z > 0``, so its counts run over the batch, the width and
  the channels (:func:`jaxdepth.network.sign_counts` on ``z`` with ``H`` moved
  last). ``example_mask`` (``(B,)``) leaves padded examples out.
  """
  z = jnp.asarray(z)
  if z.ndim != 4:
    raise ValueError(f"row counts need a (B, H, W, C) map, got shape {z.shape}")
  return network.sign_counts(jnp.moveaxis(z, 1, -1), example_mask)


def _check_rows(spec: S.Spec):
  shapes = spec.shapes()
  flat = [s for s in spec.sites() if len(shapes[s][0]) != 3]
  if flat:
    raise ValueError(f"neurons='rows' reads token rows of (H, W, C) maps (the official Swin-T "
                     f"script); sites {flat} of {spec.name!r} see inputs of shapes "
                     f"{[shapes[s][0] for s in flat]}; use neurons='channels'")


@functools.lru_cache(maxsize=8)
def _row_stats_step(spec: S.Spec, dtype):
  """A jitted eval-mode step folding every live site's row counts into SiteStats."""
  sites = spec.sites()

  @jax.jit
  def step(variables, batch, gates, stats):
    out = network.forward(spec, variables, batch["image"], gates=gates, dtype=dtype,
                          capture=sites)
    return site_stats.accumulate(
        stats, {s: row_counts(out.captured[s][0], batch["mask"]) for s in sites})
  return step


def check_entropy_batch(batch_size: int, mesh, setting: str = "batch_size") -> None:
  """Refuses an entropy batch that the mesh's devices (or the processes) do not split;
  ``setting`` names what sets it in the message."""
  for count, what in ((mesh.devices.size, "devices"), (jax.process_count(), "processes")):
    if batch_size % count:
      raise ValueError(f"the entropy batch of {batch_size} examples does not split over "
                       f"{count} {what}; use {setting} divisible by {count}")


def entropy_statistics(spec: S.Spec, variables, split, *, batch_size: int, gates=None,
                       augment: bool = True, shuffle: bool = True, seed: int = 0, mesh=None,
                       dtype=None, neurons: str = "channels") -> site_stats.SiteStats:
  """Eval-mode site statistics of one pass over ``split`` (EGP's ``test_entropy`` pass).

  BatchNorm uses its running statistics; the batches are drawn as in training
  (shuffled and augmented, keyed by ``seed``) unless told otherwise. The last
  batch is padded and its padding left out of the counts. A last batch of a
  single example (after full ones) adds to the counts but not to the per-batch
  sums: one example leaves every channel of a Dense-fed site constant, an entropy
  of 0 that would pull the mean over batches down.

  Args:
    spec: the architecture.
    variables: its variables.
    split: a data split.
    batch_size: the global batch size (the per-batch estimators depend on it;
      EGP's code uses its training batch, 128).
    gates: site gates (0 = identity).
    augment: apply the training augmentation (EGP's code does).
    shuffle: shuffle the order (EGP's code does).
    seed: the key of the order and of the augmentation.
    mesh: the device mesh.
    dtype: compute dtype.
    neurons: ``"channels"`` (counts per channel, ``(3, C)``) or ``"rows"``
      (per token row of a ``(B, H, W, C)`` map, ``(3, H)``: :func:`row_counts`).

  Returns:
    The :class:`~jaxdepth.stats.SiteStats` (``entropies(stats, "egp")`` etc.).

  Raises:
    ValueError: an unknown ``neurons``, or ``"rows"`` on a site whose input is
      not an ``(H, W, C)`` map.
  """
  if neurons not in NEURONS:
    raise ValueError(f"unknown neurons {neurons!r}; expected one of {NEURONS}")
  training.check_split(split, "entropy_statistics")
  mesh = training.make_mesh() if mesh is None else mesh
  check_entropy_batch(batch_size, mesh)
  count = jax.process_count()
  kw = {} if count == 1 else {"process_index": jax.process_index(), "process_count": count}
  stats = site_stats.empty_stats(spec)
  if neurons == "rows":
    _check_rows(spec)
    shapes = spec.shapes()
    stats = stats._replace(counts={s: jnp.zeros((3, shapes[s][0][0]), jnp.int32)
                                   for s in spec.sites()})
    step = _row_stats_step(spec, dtype)
    if gates is None:
      gates = network.gates_for(spec)
  else:
    eval_step = training.make_eval_step(spec, mesh=mesh, dtype=dtype, collect_stats=True)

    def step(variables, batch, gates, stats):
      return eval_step(variables, batch, gates, stats)[1]
  stats = training.replicate(stats, mesh)
  variables = training.replicate(variables, mesh)
  if gates is not None:
    gates = training.replicate(jnp.asarray(gates, jnp.float32), mesh)
  total = split.num_examples
  lone = total // batch_size if total > batch_size and total % batch_size == 1 else None
  for i, batch in enumerate(split.batches(batch_size // count, seed=seed, epoch=0,
                                          shuffle=shuffle, augment=augment,
                                          drop_remainder=False, **kw)):
    folded = step(variables, training.shard_batch(batch, mesh), gates, stats)
    if i == lone:   # a last batch of one example: its counts only (see above)
      folded = folded._replace(egp_sum=stats.egp_sum, easier_sum=stats.easier_sum,
                               batches=stats.batches)
    stats = folded
  return stats


def dead_channel_counts(spec: S.Spec, variables, layers: Mapping[str, str | None]
                        ) -> dict[str, np.ndarray]:
  """Sign counts that mark the channels dead on *every* input, for :func:`~jaxdepth.surgery.cut_channels`.

  A channel whose weights in the feeding layer are all zero (pruned) has a
  constant pre-activation, its BatchNorm's shift (plus the layer's bias); if
  that constant is ``<= 0``, the ReLU / ReLU6 outputs exactly 0 whatever the
  input, so the channel can be cut with no change anywhere. Only sites fed
  directly (not after a residual addition) by the layer :func:`layer_map`
  finds are considered (a user's map may name another); the constant is
  read from one eval-mode forward pass, so it is the value the network computes.

  Args:
    spec: the architecture (removed sites baked in as identities).
    variables: its variables (pruned weights at 0).
    layers: ``{site: layer or None}``.

  Returns:
    ``{site: (3, C) int}`` with a positive count of 0 for the dead channels and
    1 for the others, for the sites that have a dead channel.
  """
  training.check_variables(variables, "dead_channel_counts")
  nodes = dict(spec.walk())
  flat = traverse_util.flatten_dict(variables["params"])
  post = {p + S.SEP + n.name for p, b in nodes.items() if isinstance(b, S.Block)
          for n in b.post}
  feeds = layer_map(spec)
  candidates = {}
  for site, layer in layers.items():
    if (layer is None or site in post or feeds.get(site) != layer
        or getattr(nodes[site], "fn", None) not in ("relu", "relu6")):
      continue
    w = np.asarray(jax.device_get(flat[_kernel_path(layer)]))
    zero = np.all(w.reshape(-1, w.shape[-1]) == 0, axis=0)
    if zero.any():
      candidates[site] = zero
  if not candidates:
    return {}
  x = network.example_input(spec)
  captured = network.forward(spec, variables, x, capture=tuple(candidates)).captured
  out = {}
  for site, zero in candidates.items():
    z = np.asarray(captured[site][0]).reshape(-1, zero.size)
    dead = zero & np.all(z <= 0, axis=0)
    if dead.any():
      out[site] = np.stack([(~dead).astype(np.int64), np.ones_like(dead, np.int64),
                            np.zeros_like(dead, np.int64)])
  return out


# ------------------------------------------------------------------------ method


def _check_per_batch(batch_size: int, setting: str) -> None:
  """Refuses an entropy batch of one example for the ``"egp"`` estimator: it averages over
  the channels that change sign within a batch, and a site fed by a Dense layer has one
  value per channel and example, so every such site would measure 0 bits and be removed."""
  if batch_size < 2:
    raise ValueError(f"an entropy batch of {batch_size} example ({setting}) is too small for "
                     f"the 'egp' estimator: it averages entropies over the channels that change "
                     f"sign within a batch, and a site fed by a Dense layer would then measure "
                     f"0 bits and be removed; set entropy_batch_size to 2 or more (EGP's code "
                     f"uses 128)")


def _seed_of(rng) -> int:
  """The entropy pass's augmentation seed, drawn from the context's key.

  An int is refused rather than taken as a seed: the driver passes a key folded from
  the run's seed and the iteration, so each pass augments afresh.
  """
  what = network.not_a_key(rng)
  if what is not None:
    raise TypeError(f"context.rng must be a JAX key, e.g. jax.random.key(0) (EGP draws the "
                    f"entropy pass's augmentation seed from it); got {what}")
  return int(jax.random.randint(rng, (), 0, 2**31 - 1))


@dataclasses.dataclass(frozen=True)
class Egp:
  """EGP as a :class:`~jaxdepth.methods.base.Method` for :func:`jaxdepth.driver.run`.

  The state is ``{"gates": (len(spec.sites()),) float32, "masks": {layer path
  nested: {"kernel": bool}}, "round": int32}`` (pruning rounds made so far),
  checkpointed with the run. Iteration 0 trains the dense network; iteration
  ``i`` retrains after ``i`` pruning rounds (nominal sparsity of the prunable
  layers ``1 − (1 − ρ)^i``, relative to what is still prunable). Sites reaching
  zero entropy become identities and their layers are frozen (never pruned
  again).

  Attributes:
    rho: fraction of the eligible non-zero weights pruned per iteration (0.5).
    estimator: ``"egp"`` (default), ``"dataset"`` or ``"easier"`` (see the module doc).
    augment: the entropy pass uses the training augmentation (the official
      choice); ``False`` measures the plain training split.
    entropy_batch_size: batch size of the entropy pass (``None``: the run's
      evaluation batch size). The per-batch estimators depend on it; EGP's code
      uses its training batch (128). The ``"egp"`` estimator needs at least 2.
    layers: ``{site: layer}`` to prune instead of :func:`layer_map` (sites left
      out are measured, never pruned).
    skip: sites whose layer is never pruned (e.g. a stem conv that is the only
      path of the signal; see the module doc).
    neurons: ``"channels"`` (default: a neuron is a channel, as the paper
      describes it) or ``"rows"``: the official Swin-T script's neuron, a token
      row of the GELU's ``(B, H, W, 4C)`` input (:func:`row_counts`); only with
      the ``"egp"`` and ``"dataset"`` estimators and sites on ``(H, W, C)`` maps.
  """
  rho: float = 0.5
  estimator: str = "egp"
  augment: bool = True
  entropy_batch_size: int | None = None
  layers: Any = None
  skip: tuple[str, ...] = ()
  neurons: str = "channels"
  name: str = dataclasses.field(default="egp", init=False)
  unit: str = dataclasses.field(default="site", init=False)
  score_name: str = dataclasses.field(default="entropies", init=False)
  score_unit: str = dataclasses.field(default="bits", init=False)

  def __post_init__(self):
    if isinstance(self.rho, bool) or not isinstance(self.rho, numbers.Real) or not (
        0.0 < self.rho < 1.0):
      raise ValueError(f"rho must be in (0, 1) (the fraction of the remaining weights pruned "
                       f"per iteration; the paper uses 0.5), got {self.rho!r}")
    object.__setattr__(self, "rho", float(self.rho))   # a NumPy scalar too, recorded as JSON
    if not isinstance(self.augment, (bool, np.bool_)):
      raise TypeError(f"augment must be True or False (the entropy pass uses the training "
                      f"augmentation), got {self.augment!r}")
    object.__setattr__(self, "augment", bool(self.augment))
    if self.estimator not in ESTIMATORS:
      raise ValueError(f"unknown entropy estimator {self.estimator!r}; expected one of "
                       f"{ESTIMATORS}")
    if self.neurons not in NEURONS:
      raise ValueError(f"unknown neurons {self.neurons!r}; expected one of {NEURONS}")
    if self.neurons == "rows" and self.estimator == "easier":
      raise ValueError("neurons='rows' needs the entropy pass of the 'egp' or 'dataset' "
                       "estimator; the 'easier' estimator counts channels during training")
    batch = self.entropy_batch_size
    if batch is not None:
      if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch <= 0:
        raise ValueError(f"entropy_batch_size must be a positive int or None, got {batch!r}")
      object.__setattr__(self, "entropy_batch_size", int(batch))
      if self.estimator == "egp":
        _check_per_batch(int(batch), "entropy_batch_size")
    if self.layers is not None:
      if not isinstance(self.layers, Mapping):
        raise TypeError(f"layers must be a mapping {{site: layer}}, got "
                        f"{type(self.layers).__name__}")
      object.__setattr__(self, "layers", tuple(self.layers.items()))
    if isinstance(self.skip, str) or not all(isinstance(x, str) for x in self.skip):
      raise TypeError(f"skip must be a sequence of site paths, got {self.skip!r}")
    object.__setattr__(self, "skip", tuple(self.skip))

  # -- helpers -------------------------------------------------------------------

  def layer_map(self, spec: S.Spec) -> dict[str, str | None]:
    """``{site: layer or None}`` this method prunes (validated against ``spec``)."""
    out = layer_map(spec) if self.layers is None else check_layer_map(spec, dict(self.layers))
    unknown = [s for s in self.skip if s not in out]
    if unknown:
      raise KeyError(f"skip names {unknown}, which are not live sites of {spec.name!r}; live "
                     f"sites: {list(out)}")
    return {s: None if s in self.skip else l for s, l in out.items()}

  # -- protocol ------------------------------------------------------------------

  def options(self) -> dict[str, Any]:
    return {"rho": self.rho, "estimator": self.estimator,
            "augment": self.augment if self.estimator != "easier" else None,
            "entropy_batch_size": self.entropy_batch_size,
            "layers": None if self.layers is None else dict(self.layers),
            "skip": list(self.skip), "neurons": self.neurons}

  def init(self, spec: S.Spec):
    return {"gates": network.gates_for(spec), "masks": initial_masks(spec, self.layer_map(spec)),
            "round": jnp.zeros((), jnp.int32)}

  def units(self, spec: S.Spec) -> tuple[str, ...]:
    self.layer_map(spec)   # a bad map is refused before a run writes anything
    if self.neurons == "rows":
      _check_rows(spec)
    return spec.sites()

  def live_units(self, spec: S.Spec, state) -> tuple[str, ...]:
    base.check_state(self, spec, state)
    return base.live_sites(spec, state["gates"])

  def check_data(self, spec: S.Spec, dataset, *, eval_batch_size: int | None = None,
                 mesh=None) -> None:
    """Refuses a training split whose dataset-level counts would pass int32
    (``"dataset"``), an entropy batch the mesh does not split and one of a single
    example for the per-batch ``"egp"`` estimator (``eval_batch_size`` is the
    run's, the entropy batch's default)."""
    batch_size = self.entropy_batch_size or eval_batch_size
    if self.estimator == "egp" and batch_size is not None:
      _check_per_batch(batch_size, "entropy_batch_size" if self.entropy_batch_size else
                       "the eval_batch_size, used without an entropy_batch_size")
    if self.estimator != "easier" and batch_size is not None and mesh is not None:
      check_entropy_batch(batch_size, mesh, "an entropy_batch_size (or, without one, an "
                                            "eval_batch_size)")
    if self.estimator == "dataset":
      site_stats.check_count_capacity(spec, dataset.train.num_examples, split="train",
                                      neuron_axis=0 if self.neurons == "rows" else -1)

  def default_iterations(self, spec: S.Spec) -> int:
    return DEFAULT_ITERATIONS

  def train_options(self, spec: S.Spec, state) -> base.TrainOptions:
    base.check_state(self, spec, state)
    return base.TrainOptions(gates=state["gates"], masks=state["masks"],
                             stats_last_epoch=self.estimator == "easier")

  def _stats(self, spec, variables, state, context: base.Context):
    if self.estimator == "easier":
      if context.train_stats is None:
        raise ValueError("the 'easier' estimator needs the last epoch's train-mode statistics; "
                         "train with stats_last_epoch=True")
      return context.train_stats
    if context.dataset is None:
      raise ValueError(f"the {self.estimator!r} estimator needs the dataset in the context")
    return entropy_statistics(
        spec, variables, context.dataset.train,
        batch_size=self.entropy_batch_size or context.eval_batch_size or 128,
        gates=state["gates"], augment=self.augment, seed=_seed_of(context.rng),
        mesh=context.mesh, dtype=context.dtype, neurons=self.neurons)

  def measure(self, spec: S.Spec, variables, state, context: base.Context) -> dict[str, Any]:
    """Per live site: ``{"entropy", "layer"}`` and its layer's ``nnz``, ``size``, ``mean_abs_nonzero``.

    The entropy comes first, so the report's table and heat map show it.
    """
    training.check_variables(variables, f"{type(self).__name__}.measure")
    live = self.live_units(spec, state)
    entropies = site_stats.entropies(self._stats(spec, variables, state, context),
                                     self.estimator)
    layers = self.layer_map(spec)
    facts = layer_statistics(variables["params"], state["masks"],
                             {s: layers[s] for s in live})
    out = {}
    for s in live:
      out[s] = {"entropy": entropies[s], "layer": layers[s],
                **(facts[layers[s]] if layers[s] is not None else {})}
    return out

  def decide(self, scores: dict[str, Any], state) -> base.Decision:
    """Zero-entropy sites go; the budget is split over the other layers (:func:`allocation`).

    The details (JSON, in the report) hold: ``round`` (this pruning round, from
    1), ``rho``, ``nominal_sparsity`` (``1 − (1 − ρ)^round``), ``budget``,
    ``amounts`` and ``irrelevance`` per layer, ``layer_sparsity`` and
    ``global_sparsity`` (the masked fraction of the pruned layers in the network
    just measured), the same ``*_next`` after this round, ``pruned_weights``,
    ``prunable_weights``, ``zero_entropy`` (the sites removed now) and
    ``rounds`` (every pass of the capping loop).
    """
    zero = tuple(s for s, v in scores.items() if v["entropy"] == 0.0)
    pruned = [s for s, v in scores.items() if v.get("layer") is not None]
    alloc = allocation([scores[s]["entropy"] for s in pruned],
                       [scores[s]["mean_abs_nonzero"] for s in pruned],
                       [scores[s]["nnz"] for s in pruned], self.rho)
    layer_of = {s: scores[s]["layer"] for s in pruned}
    amounts = {layer_of[s]: a for s, a in zip(pruned, alloc.amounts)}
    masked = {"/".join(path[:-1]): (int(np.size(m)), int(np.size(m) - np.count_nonzero(m)))
              for path, m in traverse_util.flatten_dict(jax.device_get(state["masks"])).items()}
    size = sum(n for n, _ in masked.values())
    zeros = sum(z for _, z in masked.values())
    k = int(jax.device_get(state["round"])) + 1
    details = {
        "round": k, "rho": self.rho,
        "nominal_sparsity": 1.0 - (1.0 - self.rho) ** k,
        "budget": alloc.budget,
        "amounts": amounts,
        "irrelevance": {layer_of[s]: i for s, i in zip(pruned, alloc.irrelevance)},
        "layer_sparsity": {l: z / n for l, (n, z) in masked.items()},
        "layer_sparsity_next": {l: (z + amounts.get(l, 0)) / n for l, (n, z) in masked.items()},
        "global_sparsity": zeros / size if size else 0.0,
        "global_sparsity_next": (zeros + sum(amounts.values())) / size if size else 0.0,
        "pruned_weights": zeros, "prunable_weights": size,
        "zero_entropy": list(zero),
        "rounds": [{"active": [layer_of[pruned[i]] for i in r["active"]],
                    "budget": r["budget"],
                    "capped": [layer_of[pruned[i]] for i in r["capped"]]}
                   for r in alloc.rounds],
    }
    return base.Decision(zero, details)

  def apply(self, spec: S.Spec, variables, state, decision: base.Decision):
    training.check_variables(variables, f"{type(self).__name__}.apply")
    base.check_state(self, spec, state)
    amounts = (decision.details or {}).get("amounts", {})
    flat_masks = traverse_util.flatten_dict(jax.device_get(state["masks"]))
    flat_params = traverse_util.flatten_dict(_masked_on_host(variables["params"],
                                                             state["masks"]))
    for layer, amount in amounts.items():
      if amount:
        path = _kernel_path(layer)
        flat_masks[path] = prune(flat_params[path], flat_masks[path], amount)
    masks = traverse_util.unflatten_dict(flat_masks)
    gates = state["gates"]
    if decision.remove:
      live = base.live_sites(spec, gates)
      unknown = [s for s in decision.remove if s not in live]
      if unknown:
        raise KeyError(f"cannot remove {unknown}: not live sites; live sites: {list(live)}")
      off = jnp.asarray([s in decision.remove for s in spec.sites()])
      gates = jnp.where(off, 0.0, jnp.asarray(gates, jnp.float32))
    variables = {**variables, "params": _masked_on_host(variables["params"], masks)}
    return variables, {"gates": gates, "masks": masks, "round": state["round"] + 1}

  def export(self, spec: S.Spec, variables, state):
    """The trained network as it ran: removed sites baked in, pruned weights 0, dead channels cut.

    Channels cut are those :func:`dead_channel_counts` proves dead on every
    input, so the exported model computes exactly what the gated, masked one does.
    """
    training.check_variables(variables, f"{type(self).__name__}.export")
    base.check_state(self, spec, state)
    variables = {**jax.device_get(variables),
                 "params": _masked_on_host(variables["params"], state["masks"])}
    shallow = S.with_identity(spec, base.removed_sites(spec, state["gates"]))
    layers = {s: l for s, l in self.layer_map(spec).items() if s in shallow.sites()}
    counts = dead_channel_counts(shallow, variables, layers)
    if counts:
      shallow, variables = surgery.cut_channels(shallow, variables, counts)
    return shallow, variables


@dataclasses.dataclass(frozen=True)
class Nepenthe(Egp):
  """NEPENTHE: EGP's loop with the dataset-level entropy (zeros discarded) as default.

  Attributes: those of :class:`Egp`; ``estimator`` defaults to ``"dataset"``
  (``"egp"`` and ``"easier"`` are options).
  """
  estimator: str = "dataset"
  name: str = dataclasses.field(default="nepenthe", init=False)

"""TLC: rank every rectifier by the loss its collapse costs, collapse the cheapest ones.

Quétu, Liao, Nguyen, Tartaglione, "Till the Layers Collapse: Compressing a
Deep Neural Network through the Lenses of Batch Normalization Layers", AAAI 2025.

**The criterion.** A BatchNorm ``(γ, β)`` before a rectifier says what each
channel ``i`` feeds it: a value spread as ``N(β_i, γ_i²)``, so the channel is
OFF with probability (:func:`off_probability`)::

    P_i(OFF) = Φ(−β_i / |γ_i|)          (1[β_i ≤ 0] when γ_i = 0)

and mostly ON when ``β_i > 0``, mostly OFF when ``β_i ≤ 0``. The layer's mean
binary entropy of that probability is :func:`bn_entropy` (bits). Where no
BatchNorm precedes the site (a VGG classifier, a transformer MLP), ``(γ, β)``
are replaced by the per-channel standard deviation and mean of the
pre-activation on one validation batch (:func:`empirical_bn`).

**The edit of a candidate** ``T_l`` (a weight layer → [BatchNorm] → site ``l``):
channels with ``β ≤ 0`` are cut (their output filter, bias and BatchNorm scale
and bias set to 0, so the channel is exactly 0), the other channels are
linearized (the site becomes the identity). The official code uses only the sign
of ``β`` for this; neither ``P(OFF)`` nor the entropy ranks anything.

**The ranking.** On the first validation batch (eval mode), with ``L`` the
cross-entropy::

    gap_l = L(T_l(network)) − L(network)       for every live candidate l
    order = candidates by gap, ascending

All gaps come from one compiled function (:func:`~jaxdepth.methods.tlc_rank.rank`,
re-exported here): the edits are data (gates and channel keep-masks), the
network before each candidate's edit runs once, and each candidate runs only
what follows its site.

**Which layers go** (:func:`choose`), with ``G(n)`` the loss gap of the joint
edit of ``order[:n]``:

* ``"first_harmful"`` (the official code, default): if some gap is negative, the
  first prefix ``order[:n]`` (``n = 2 .. len − 1``) with ``G(n) > 0``; otherwise,
  or if there is none, ``order[:1]``. It includes the layer that made the loss
  worse.
* ``"largest_harmless"`` (the apparent intent): the longest prefix whose every
  ``G(m) ≤ 0`` (``m ≤ n``), at least ``order[:1]``.

**The iteration** (:class:`TLC` for :func:`jaxdepth.driver.run`): fine-tune with a
fresh optimizer (iteration 0 trains the dense model), rank, remove, and stop when
at most one site is left, no candidate remains, or the validation accuracy is
below ``accuracy_threshold`` (20 %, as the official code). Cut channels are
weight masks that training keeps at exactly 0 (:class:`~jaxdepth.training.TrainOptions`
``masks``); :meth:`TLC.export` cuts them for real (:func:`jaxdepth.surgery.cut_channels`)
and bakes the identities in, and the driver merges what became linear.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdepth import entropy, network, optim, training
from jaxdepth import spec as S
from jaxdepth.methods import base
from jaxdepth.methods.tlc_rank import joint_gap, rank, rank_naive
from jaxdepth.sites import flat_leaves as _flat

__all__ = ["RULES", "Candidate", "off_probability", "bn_entropy", "empirical_bn", "candidates",
           "candidate_betas", "keep_masks", "rank", "rank_naive", "joint_gap", "choose",
           "prefix_gaps", "TLC"]

RULES = ("first_harmful", "largest_harmless")
CLAMP = entropy.EGP_CLAMP


# ------------------------------------------------------------------ the criterion


def off_probability(gamma, beta) -> jax.Array:
  """``P(OFF) = Φ(−β/|γ|)`` per channel; ``1[β ≤ 0]`` where ``γ = 0``.

  The BatchNorm output of a channel is modelled as ``N(β, γ²)``; ``Φ`` is the
  standard normal CDF, computed with ``erfc`` in the tails
  (:func:`jax.scipy.special.ndtr`), so ``Φ(−6) ≈ 9.87e-10`` is not rounded to 0
  as ``(1 + erf(x/√2))/2`` would in float32. ``β = −0.0`` counts as ``≤ 0``.

  Args:
    gamma: BatchNorm scales ``(C,)`` (or the empirical std, :func:`empirical_bn`).
    beta: BatchNorm biases ``(C,)`` (or the empirical mean).

  Returns:
    ``(C,)`` float32 probabilities of the channel being OFF.
  """
  gamma = jnp.asarray(gamma, jnp.float32)
  beta = jnp.asarray(beta, jnp.float32)
  if gamma.shape != beta.shape:
    raise ValueError(f"gamma and beta must have the same shape, got {gamma.shape} and "
                     f"{beta.shape}")
  scale = jnp.abs(gamma)
  safe = jnp.where(scale > 0, scale, 1.0)
  p = jax.scipy.special.ndtr(-beta / safe)
  return jnp.where(scale > 0, p, (beta <= 0).astype(jnp.float32))


def bn_entropy(gamma, beta, clamp: float = CLAMP) -> jax.Array:
  """The layer's mean binary entropy (bits) of :func:`off_probability`.

  ``mean_i h2(P_i)`` with ``h2(p) = −p log2 max(p, ε) − (1−p) log2 max(1−p, ε)``,
  ``ε = 1e-5`` (the official code's clamp). 0 for a layer whose channels are all
  surely ON or OFF (a linear layer on the modelled data), 1 at most.
  """
  return jnp.mean(entropy.binary_entropy(off_probability(gamma, beta), clamp))


def empirical_bn(z, mask=None) -> tuple[jax.Array, jax.Array]:
  """``(std, mean)`` of a channel-last pre-activation over every axis but the last.

  The stand-in for ``(γ, β)`` where no BatchNorm precedes a site. The std is the
  unbiased one (``ddof=1``), as the official code's ``torch.std``.

  Args:
    z: ``(..., C)`` pre-activations (batch, positions or tokens, channels).
    mask: optional ``z.shape[:-1]`` booleans: only these positions count (a
      text batch's real tokens; padding tokens reach no output).

  Returns:
    ``(std, mean)``, each ``(C,)`` float32.

  Raises:
    ValueError: fewer than two values per channel (a batch of one example of a
      dense layer): the unbiased std is undefined; use a batch of two or more.
  """
  z = jnp.asarray(z, jnp.float32)
  if z.ndim < 1:
    raise ValueError("empirical_bn needs a (..., C) array, got a scalar")
  flat = z.reshape(-1, z.shape[-1])
  if mask is not None:
    flat = flat[np.asarray(mask, bool).reshape(-1)]
  n = flat.shape[0]
  if n < 2:
    raise ValueError(f"empirical_bn needs at least two values per channel to estimate an "
                     f"unbiased std, got shape {z.shape} ({n} value per channel"
                     f"{' kept by the mask' if mask is not None else ''}); use a validation "
                     f"batch of two or more examples")
  return jnp.std(flat, axis=0, ddof=1), jnp.mean(flat, axis=0)


# ------------------------------------------------------------------ candidates


class Candidate(NamedTuple):
  """A weight layer → [BatchNorm] → site triple (paths in the spec).

  Attributes:
    name: the candidate's name: its site, or its weight layer where the site is
      not its own (the MobileNetV2 projection quirk, whose site is the next live one).
    weight: the conv or dense layer whose output channels are cut.
    bn: the BatchNorm between them, or ``None`` (statistics then come from data).
    site: the activation that becomes the identity.
    direct: the site reads the BatchNorm (or weight) output as it is (no residual
      addition, no other layer in between): cut channels are exactly 0 there.
  """
  name: str
  weight: str
  bn: str | None
  site: str
  direct: bool


def _lists(nodes, prefix: str, before=()):
  """Every flat node list with what precedes it: ``(list, predecessors, after_addition)``.

  A Block's ``post`` list is preceded by its ``branch`` (the value is the sum of
  branch and shortcut there: ``after_addition``).
  """
  flat = _flat(nodes, prefix)
  yield flat, list(before), False
  for path, n in flat:
    if isinstance(n, S.Block):
      scope = path + S.SEP
      branch = _flat(n.branch, scope)
      yield from _lists(n.branch, scope)
      yield from _lists(n.shortcut, scope)
      post = _flat(n.post, scope)
      yield post, branch, True
      for p, m in post:
        if isinstance(m, S.Block):
          yield from _lists(m.branch, p + S.SEP)


def _producer(seq, i) -> tuple[str | None, str | None]:
  """``(weight, bn)`` paths right before position ``i`` of ``seq``, or ``(None, None)``."""
  j, bn = i - 1, None
  if j >= 0 and isinstance(seq[j][1], S.BatchNorm):
    bn, j = seq[j][0], j - 1
  if j >= 0 and isinstance(seq[j][1], (S.Conv, S.Dense)):
    return seq[j][0], bn
  return None, None


def _unreached(spec: S.Spec, missing) -> str:
  """Why live sites that no list of :func:`_lists` holds (those inside a Concat, or in
  a block nested in another block's post) have no candidate."""
  concats = [p for p, n in spec.walk() if isinstance(n, S.Concat)]
  inside = list(dict.fromkeys(c for s in missing for c in concats if s.startswith(c + S.SEP)))
  where = (f"inside Concat {', '.join(map(repr, inside))} (parallel branches joined on the "
           f"channel axis), which TLC does not support" if inside else
           "inside a residual block nested in another block's post, where TLC does not look")
  return (f"sites {missing} of {spec.name!r} sit {where}: TLC's candidates are sites in a chain "
          f"of layers or in a residual block's branch, shortcut or post; make these sites "
          f"identities first (jaxdepth.with_identity) or use another method")


def candidates(spec: S.Spec, *, projections: bool = False, live=None,
               chosen=()) -> tuple[Candidate, ...]:
  """Every weight layer → [BatchNorm] → site triple of ``spec``, in call order of the sites.

  ResNet-18: 17 (the stem and every ``relu1``/``relu2``; a ``relu2`` after the
  residual addition is read through ``bn2`` alone, as the official code does);
  VGG-16-bn: 15; MobileNetV2: the 35 convs feeding a ReLU6.

  Args:
    spec: the architecture.
    projections: the official MobileNetV2 candidate list (``TLC_MobileNetV2.py``),
      off by default. Every conv → BatchNorm with no activation after it (the
      linear projections) is a candidate too, and every candidate linearizes the
      *next live* site after its BatchNorm in module order: a projection the next
      block's expansion ReLU6, a candidate whose own site is gone the next one
      after it (named then by its weight layer); one with no live site after it
      is left out.
    live: the live sites (default: every site of ``spec``). Without
      ``projections``, candidates of other sites are left out.
    chosen: weight layers (:attr:`Candidate.weight`) of candidates chosen before:
      they are left out (the official code takes their BatchNorm out of its list;
      without ``projections`` their site is gone anyway). A site or any other
      name is refused, not ignored.

  Returns:
    The candidates (one whose site is not its own right before that site's own).

  Raises:
    ValueError: a live site without a weight layer (optionally through one
      BatchNorm) right before it: TLC cannot cut or linearize it; or a live
      site inside a Concat's branches or post, which TLC does not rank.
    TypeError, KeyError: ``live`` (or ``chosen``) is one string or no paths (a gate
      array), ``live`` names what is no live site, or ``chosen`` what is no
      candidate's weight layer (a site names its candidate's weight layer in the
      message).
  """
  sites = spec.sites()
  live = sites if live is None else S.site_paths(live, "live")   # refuses a gate array
  unknown = sorted(set(live) - set(sites))
  if unknown:
    raise KeyError(f"live names no live site of {spec.name!r}: {unknown}; its sites are "
                   f"{list(sites)}")
  found: dict[str, Candidate] = {}
  projection: list[tuple[str, str]] = []
  for seq, before, after_addition in _lists(spec.layers, ""):
    for i, (path, n) in enumerate(seq):
      if isinstance(n, S.Act) and n.fn != "identity":
        if i == 0 and after_addition:
          weight, bn = _producer(before, len(before))
        else:
          weight, bn = _producer(seq, i)
        if weight is None:
          raise ValueError(
              f"site {path!r} of {spec.name!r} has no weight layer (conv or dense, "
              f"optionally followed by a BatchNorm) right before it, so TLC can neither cut "
              f"its channels nor rank it; make it an identity first "
              f"(jaxdepth.with_identity) or use another method")
        found[path] = Candidate(path, weight, bn, path, not (i == 0 and after_addition))
      elif (projections and isinstance(n, S.BatchNorm) and i > 0
            and isinstance(seq[i - 1][1], S.Conv)
            and not (i + 1 < len(seq) and isinstance(seq[i + 1][1], S.Act))
            and not path.split(S.SEP)[-1].startswith("shortcut")):
        projection.append((seq[i - 1][0], path))
  missing = [s for s in sites if s in live and s not in found]
  if missing:
    raise ValueError(_unreached(spec, missing))
  chosen = set(S.site_paths(chosen, "chosen", "weight layer paths"))
  regular = {c.bn for c in found.values()}
  projection = [(w, bn) for w, bn in projection if projections and bn not in regular]
  weights = {c.weight for c in found.values()} | {w for w, _ in projection}
  odd = sorted(chosen - weights)
  if odd:
    sited = [f"{n!r} is the site of candidate weight layer {found[n].weight!r}"
             for n in odd if n in found]
    raise KeyError(f"chosen names {odd}, which are no candidate weight layers of {spec.name!r}"
                   f"{' (projections=True)' if projections else ''}"
                   f"{': ' + '; '.join(sited) if sited else ''}; chosen holds the weight layers "
                   f"of the chosen candidates (Candidate.weight), not their sites")
  if not projections:
    return tuple(found[s] for s in sites if s in live and found[s].weight not in chosen)
  order = [p for p, _ in spec.walk()]
  position = {p: k for k, p in enumerate(order)}
  live_positions = sorted(position[s] for s in live)
  pairs = [(found[s].weight, found[s].bn, found[s]) for s in sites]
  pairs += [(w, bn, None) for w, bn in projection]
  out = []
  for weight, bn, own in pairs:
    if weight in chosen:
      continue
    if own is not None and own.site in live:
      out.append(own)
      continue
    after = position[bn if bn is not None else weight]
    nxt = next((order[k] for k in live_positions if k > after), None)
    if nxt is not None:
      out.append(Candidate(weight, weight, bn, nxt, False))
  index = {s: i for i, s in enumerate(sites)}
  return tuple(sorted(out, key=lambda c: (index[c.site], c.name == c.site,
                                          position[c.bn or c.weight])))


def _leaf(variables, path: str, collection: str = "params"):
  node = variables[collection]
  for part in path.split(S.SEP):
    node = node[part]
  return node


def _check_fits(spec: S.Spec, variables, cands) -> None:
  """Refuses variables without each candidate's weight layer and BatchNorm at ``spec``'s
  channel count (variables of another model would fail on a bare key or shape)."""
  for c in cands:
    channels = spec.node(c.weight).features
    for path, leaf in ((c.weight, "kernel"), (c.bn, "bias")):
      if path is None:
        continue
      try:
        shape = np.shape(_leaf(variables, path)[leaf])
      except (KeyError, TypeError, IndexError):
        shape = None
      if shape is None or shape[-1:] != (channels,):
        held = "no" if shape is None else f"a {leaf} of shape {shape} for"
        raise ValueError(f"the variables hold {held} {path!r} (candidate {c.name!r} of "
                         f"{spec.name!r}, {channels} channels): they belong to another model; "
                         f"pass the variables made for this spec (jaxdepth.init(spec, rng)), "
                         f"or the spec and candidates they were made for")


def candidate_betas(spec: S.Spec, variables, cands, x=None, *, gates=None, dtype=None
                    ) -> dict[str, np.ndarray]:
  """Each candidate's ``β`` per channel: the BatchNorm bias, else the empirical mean.

  Args:
    spec, variables: the network (cut channels already 0).
    cands: :class:`Candidate` s.
    x: the validation batch, needed for candidates without a BatchNorm (a
      text batch's padding tokens are left out of the empirical mean).
    gates: the current site gates (for the empirical statistics).
    dtype: compute dtype.

  Returns:
    ``{candidate name: (C,) float32}``.

  Raises:
    ValueError: ``variables`` without a candidate's weight layer or BatchNorm at
      ``spec``'s channel count (variables of another model).
  """
  training.check_variables(variables, "candidate_betas")
  _check_fits(spec, variables, cands)
  out = {}
  empirical = [c for c in cands if c.bn is None]
  captured = {}
  if empirical:
    if x is None:
      raise ValueError(f"candidates {[c.name for c in empirical]} have no BatchNorm before "
                       f"their site: their statistics come from data, pass x=")
    fwd = network.forward(spec, variables, x, gates=gates, dtype=dtype,
                          capture=tuple(dict.fromkeys(c.site for c in empirical)))
    captured = fwd.captured
  for c in cands:
    if c.bn is not None:
      out[c.name] = np.asarray(_leaf(variables, c.bn)["bias"], np.float32)
    else:
      z = captured[c.site][0]
      tokens = x.get("attention_mask") if isinstance(x, dict) else None
      tokens = tokens if tokens is not None and tokens.shape == z.shape[:-1] else None
      out[c.name] = np.asarray(empirical_bn(z, tokens)[1], np.float32)
  return out


def keep_masks(betas: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``β > 0`` per channel (1.0 kept and linearized, 0.0 cut), per candidate."""
  return {k: (np.asarray(b) > 0).astype(np.float32) for k, b in betas.items()}


# ------------------------------------------------------------------ which layers go


def prefix_gaps(order, gaps: dict[str, float], joint) -> dict[int, float]:
  """The joint gaps ``G(n)`` the prefix rules read, evaluated lazily.

  ``G(n)`` for ``n = 2 .. len(order) − 1`` up to the first ``G(n) > 0``, only
  when some single gap is negative (the official loop); both rules need exactly
  these.

  Args:
    order: candidate names by ascending gap.
    gaps: ``{name: gap}``.
    joint: ``joint(names) -> gap`` of the joint edit.

  Returns:
    ``{n: G(n)}``.
  """
  out: dict[int, float] = {}
  if not order or min(gaps[n] for n in order) >= 0:
    return out
  for n in range(2, len(order)):
    out[n] = float(joint(tuple(order[:n])))
    if out[n] > 0:
      break
  return out


def choose(order, gaps: dict[str, float], joint_gaps: dict[int, float],
           rule: str = "first_harmful") -> tuple[str, ...]:
  """The candidates removed together, by ``rule``, from the ranking.

  Args:
    order: candidate names by ascending gap.
    gaps: ``{name: gap}`` (single edits).
    joint_gaps: ``{n: G(n)}`` of :func:`prefix_gaps`.
    rule: ``"first_harmful"`` (the official code: the first prefix whose joint
      removal makes the loss worse, that layer included; one layer if none) or
      ``"largest_harmless"`` (the longest prefix whose joint removals all keep
      the loss from growing).

  Returns:
    The chosen prefix of ``order`` (at least its first candidate).
  """
  if rule not in RULES:
    raise ValueError(f"unknown prefix rule {rule!r}; expected one of {RULES}")
  order = tuple(order)
  if not order:
    raise ValueError("no candidate to choose from")
  if min(gaps[n] for n in order) >= 0:
    return order[:1]
  harmful = [n for n in sorted(joint_gaps) if joint_gaps[n] > 0]
  if rule == "first_harmful":
    return order[:harmful[0]] if harmful else order[:1]
  upto = (harmful[0] - 1) if harmful else max(joint_gaps, default=1)
  return order[:max(upto, 1)]


# ------------------------------------------------------------------ the method


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(flat, sep=S.SEP)


@dataclasses.dataclass(frozen=True)
class TLC:
  """TLC as a :class:`~jaxdepth.methods.base.Method` for :func:`jaxdepth.driver.run`.

  The state is ``{"gates": (n_sites,), "masks": {weight path: (C,)}, "stopped": ()}``:
  the site gates, every candidate weight layer's channel keep-mask (1 kept, 0
  cut), and whether a stop rule fired; with ``projections`` also ``"chosen":
  (n_candidates,)``, 1 for each candidate chosen so far (in the order of
  ``candidates(spec)``), which the official code takes out of its list for good
  (a state passed by hand without it, from before it was recorded, reads as
  none chosen; the driver cannot resume a run whose checkpoints lack it: it
  restores into :meth:`init`'s state, which holds it, and the restore refuses
  that template, so such a run starts again in a new work directory). A state
  of another spec (another model or width, or ``projections``) is refused with
  a ValueError.

  Attributes:
    rule: ``"first_harmful"`` (official) or ``"largest_harmless"`` (:func:`choose`).
    accuracy_threshold: stop once the validation accuracy (percent) is below it
      (the official 20).
    batch_size: size of the validation batch the gaps are measured on (the first
      batch of the validation split, in order, augmented anew at every iteration on a
      split that augments always; 128 as the official CIFAR code; at least 2, which
      :func:`empirical_bn` needs on a Dense-fed site).
    projections: the official MobileNetV2 candidate quirk (:func:`candidates`).
    max_iterations: the default number of iterations (the official 40).
  """
  rule: str = "first_harmful"
  accuracy_threshold: float = 20.0
  batch_size: int = 128
  projections: bool = False
  max_iterations: int = 40
  name: str = dataclasses.field(default="tlc", init=False)
  unit: str = dataclasses.field(default="site", init=False)
  score_name: str = dataclasses.field(default="loss_gaps", init=False)

  def __post_init__(self):
    if self.rule not in RULES:
      raise ValueError(f"unknown TLC prefix rule {self.rule!r}; expected one of {RULES}")
    t = self.accuracy_threshold
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0.0 <= t <= 100.0:
      raise ValueError(f"accuracy_threshold is a validation accuracy in percent and must be "
                       f"in [0, 100], got {t!r}")
    object.__setattr__(self, "accuracy_threshold", float(t))   # a NumPy scalar too
    for what in ("batch_size", "max_iterations"):
      v = getattr(self, what)
      if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
      object.__setattr__(self, what, int(v))
    if self.batch_size < 2:
      raise ValueError(f"batch_size={self.batch_size}: the ranking batch (--config.rank_batch_size "
                       f"of python -m jaxdepth tlc) needs at least 2 examples: one example gives a "
                       f"site without a BatchNorm (fed by a Dense layer) one value per channel, "
                       f"with no std to stand in for the BatchNorm's scale; use 2 or more (the "
                       f"official code ranks on 128)")
    if not isinstance(self.projections, (bool, np.bool_)):
      raise TypeError(f"projections must be True or False (the official MobileNetV2 quirk), "
                      f"got {self.projections!r}")
    object.__setattr__(self, "projections", bool(self.projections))

  def options(self) -> dict[str, Any]:
    return {"rule": self.rule, "accuracy_threshold": self.accuracy_threshold,
            "batch_size": self.batch_size, "projections": self.projections}

  def candidates(self, spec: S.Spec, state=None) -> tuple[Candidate, ...]:
    """The live candidates of ``state`` (every candidate without one), less those chosen."""
    if state is None:
      return candidates(spec, projections=self.projections)
    state = self._checked(spec, state)
    return candidates(spec, projections=self.projections,
                      live=base.live_sites(spec, state["gates"]), chosen=self._chosen(spec, state))

  def _chosen(self, spec: S.Spec, state) -> tuple[str, ...]:
    """Weight layers of the candidates ``state`` records as chosen (projections only)."""
    if "chosen" not in state:
      return ()
    flags = np.asarray(jax.device_get(state["chosen"]))
    return tuple(c.weight for c, f in zip(self.candidates(spec), flags) if f)

  def _checked(self, spec: S.Spec, state):
    """``state``, once known to hold one gate per site of ``spec`` and one mask per
    candidate weight layer at its channel count.

    Without the check a state made for another spec (another model or width, or
    another ``projections``) fails in a broadcast of its masks or a bare key, and
    one of another method (its keys checked first) on a bare key.
    """
    base.check_state(self, spec, state, optional=("chosen",))
    sites = spec.sites()
    masks = traverse_util.flatten_dict(state["masks"], sep=S.SEP)
    channels = {c.weight: spec.node(c.weight).features for c in self.candidates(spec)}
    gates = np.shape(state["gates"])
    wrong = [(w, np.shape(m)) for w, m in masks.items() if np.shape(m) != (channels.get(w),)]
    missing = [w for w in channels if w not in masks]
    chosen = np.shape(state["chosen"]) if "chosen" in state else (len(channels),)
    if gates != (len(sites),):
      why = f"gates of shape {gates} for the {len(sites)} sites"
    elif chosen != (len(channels),) or ("chosen" in state and not self.projections):
      why = f"a record of chosen candidates of shape {chosen} for the {len(channels)} candidates"
    elif missing or wrong:
      w, shape = wrong[0] if wrong else (missing[0], None)
      why = (f"no mask for the {channels[w]} channels of {w!r}" if shape is None else
             f"a mask of shape {shape} for {w!r}, which is no candidate weight layer"
             if w not in channels else
             f"a mask of shape {shape} for the {channels[w]} channels of {w!r}")
    else:
      return state
    setting = "projections=True" if self.projections else ""
    raise ValueError(f"the TLC state holds {why} of {spec.name!r}: it belongs to another spec "
                     f"(another model or width, or projections setting); make it with "
                     f"TLC({setting}).init(spec)")

  def init(self, spec: S.Spec):
    shapes = spec.shapes()
    masks = {c.weight: jnp.ones(shapes[c.weight][1][-1], jnp.float32)
             for c in self.candidates(spec)}
    state = {"gates": network.gates_for(spec), "masks": _nested(masks),
             "stopped": jnp.zeros((), jnp.int32)}
    if self.projections:
      state["chosen"] = jnp.zeros(len(masks), jnp.int32)
    return state

  def units(self, spec: S.Spec) -> tuple[str, ...]:
    return spec.sites()

  def live_units(self, spec: S.Spec, state) -> tuple[str, ...]:
    """The live sites; none once a stop rule held (``state["stopped"]``)."""
    state = self._checked(spec, state)
    if bool(jax.device_get(state["stopped"])):
      return ()
    return base.live_sites(spec, state["gates"])

  def default_iterations(self, spec: S.Spec) -> int:
    return min(self.max_iterations, len(spec.sites()))

  def _weight_masks(self, spec: S.Spec, state) -> dict[str, Any]:
    """Element-wise masks of every candidate's leaves (kernel, bias, BatchNorm scale and bias)."""
    flat_masks = traverse_util.flatten_dict(self._checked(spec, state)["masks"], sep=S.SEP)
    shapes = spec.shapes()
    out = {}
    for c in self.candidates(spec):
      m = flat_masks[c.weight]
      w = spec.node(c.weight)
      cin = shapes[c.weight][0][-1]
      if isinstance(w, S.Conv):
        kshape = (*w.kernel, cin // w.groups, w.features)
      else:
        kshape = (cin, w.features)
      out[f"{c.weight}{S.SEP}kernel"] = jnp.broadcast_to(m, kshape)
      if w.bias:
        out[f"{c.weight}{S.SEP}bias"] = m
      if c.bn is not None:
        out[f"{c.bn}{S.SEP}scale"] = m
        out[f"{c.bn}{S.SEP}bias"] = m
    return _nested(out)

  def train_options(self, spec: S.Spec, state) -> base.TrainOptions:
    return base.TrainOptions(gates=state["gates"], masks=self._weight_masks(spec, state))

  def _masked(self, spec, variables, state):
    return {**variables, "params": optim.apply_masks(variables["params"],
                                                     self._weight_masks(spec, state))}

  def measure(self, spec: S.Spec, variables, state, context: base.Context) -> dict[str, Any]:
    """Ranks the live candidates on the first validation batch (``{}`` when a stop rule holds).

    Each score is ``{"gap", "prefix_gap", "cut", "channels"}``: the loss gap of
    the candidate's edit alone, the joint gap ``G(n)`` of the prefix of the
    ranking that ends with it (``None`` where not evaluated), its channels with
    ``β ≤ 0`` and its channel count.

    Raises:
      ValueError: ``context.val_accuracy`` outside [0, 1] (a percentage: the stop
        rule compares a fraction and would never hold).
      TypeError: ``variables`` is not the variables dict (``variables["params"]``).
    """
    training.check_variables(variables, "TLC.measure")
    acc = context.val_accuracy
    if acc is not None and not 0.0 <= acc <= 1.0:
      raise ValueError(f"Context.val_accuracy is a fraction in [0, 1] (as the report holds "
                       f"it), got {acc!r}; divide an accuracy in percent by 100")
    live = self.live_units(spec, state)
    if len(live) <= 1:
      return {}
    if (context.val_accuracy is not None
        and 100.0 * context.val_accuracy < self.accuracy_threshold):   # threshold in percent
      return {}
    cands = self.candidates(spec, state)
    if not cands:
      return {}
    x, labels = self._batch(spec, context)
    variables = self._masked(spec, variables, state)
    gates = state["gates"]
    betas = candidate_betas(spec, variables, cands, x, gates=gates, dtype=context.dtype)
    current = traverse_util.flatten_dict(state["masks"], sep=S.SEP)
    masks = {c.name: keep_masks({c.name: betas[c.name]})[c.name]
             * np.asarray(current[c.weight]) for c in cands}
    base_loss, gaps = rank(spec, variables, cands, x, labels, masks, gates=gates,
                           dtype=context.dtype)
    order = sorted(gaps, key=gaps.__getitem__)
    joint = prefix_gaps(order, gaps, lambda names: joint_gap(
        spec, variables, cands, names, x, labels, masks, gates=gates, base_loss=base_loss,
        dtype=context.dtype))
    prefix_of = {order[n - 1]: g for n, g in joint.items()}
    return {c.name: {"gap": gaps[c.name], "prefix_gap": prefix_of.get(c.name),
                     "site": c.site, "cut": np.flatnonzero(masks[c.name] == 0).tolist(),
                     "channels": int(masks[c.name].size), "base_loss": base_loss}
            for c in cands}

  def check_data(self, spec: S.Spec, dataset, *, eval_batch_size: int | None = None,
                 mesh=None) -> None:
    """Refuses a dataset without one ranking batch of validation data, before any training."""
    del spec, eval_batch_size, mesh   # the ranking batch is its own, on one program
    if dataset is None or dataset.val is None:
      raise ValueError("TLC ranks candidates on a validation batch: the dataset needs a "
                       "validation split (load it with val_fraction > 0)")
    if dataset.val.num_examples < self.batch_size:
      raise ValueError(f"the validation split holds {dataset.val.num_examples} examples, fewer "
                       f"than one ranking batch of {self.batch_size}; lower the TLC batch_size "
                       f"or hold out more validation data")

  def _batch(self, spec: S.Spec, context: base.Context):
    """The first validation batch, in order; a split that augments always (``val_augment``,
    the official quirk) draws another view at every iteration, as the official code does."""
    ds = context.dataset
    self.check_data(spec, ds)   # an own loop's context may come without the driver's check
    epoch = context.iteration if getattr(ds.val, "always_augment", False) else 0
    batch = next(iter(ds.val.batches(self.batch_size, epoch=epoch)))
    x = jax.tree.map(jnp.asarray, network.batch_inputs(spec, batch))
    return x, jnp.asarray(batch["label"])

  def decide(self, scores: dict[str, Any], state) -> base.Decision:
    if not scores:
      live = int(np.sum(np.asarray(jax.device_get(state["gates"])) != 0))
      why = ("at most one site left" if live <= 1 else
             "validation accuracy below the threshold, or no candidate left")
      return base.Decision((), {"stop": why})
    gaps = {k: v["gap"] for k, v in scores.items()}
    order = sorted(gaps, key=gaps.__getitem__)
    position = {k: i + 1 for i, k in enumerate(order)}
    joint = {position[k]: v["prefix_gap"] for k, v in scores.items()
             if v["prefix_gap"] is not None}
    chosen = choose(order, gaps, joint, self.rule)
    remove = tuple(dict.fromkeys(scores[k]["site"] for k in chosen))
    return base.Decision(remove, {
        "rule": self.rule, "order": order, "chosen": list(chosen),
        "prefix_gaps": {str(n): g for n, g in sorted(joint.items())},
        "cut": {k: scores[k]["cut"] for k in chosen},
        "base_loss": next(iter(scores.values()))["base_loss"]})

  def apply(self, spec: S.Spec, variables, state, decision: base.Decision):
    """Removes ``decision.remove`` and cuts ``details["cut"]`` (``{candidate: channels}``).

    With ``projections`` the chosen candidates leave the list for good: those the
    cut names, and the own candidate of a removed site that none of them targets.
    An empty decision stops the run.
    """
    training.check_variables(variables, "TLC.apply")
    state = self._checked(spec, state)
    if not decision.remove:
      return variables, {**state, "stopped": jnp.ones((), jnp.int32)}
    gates = state["gates"]
    live = set(self.live_units(spec, state))
    cuts = (decision.details or {}).get("cut", {})
    by_name = {c.name: c for c in self.candidates(spec, state)}
    removed = set(base.removed_sites(spec, gates))
    again = [s for s in list(decision.remove) + list(cuts) if s in removed]
    if again:
      raise ValueError(f"cannot apply the decision: sites {list(dict.fromkeys(again))} of "
                       f"{spec.name!r} are already removed (gate 0); a decision applies once, "
                       f"to the state it was decided on: measure and decide on the new state")
    unknown = [s for s in decision.remove if s not in live]
    if unknown:
      why = ("the run has stopped: no site is live" if bool(jax.device_get(state["stopped"]))
             else "no such sites")
      raise KeyError(f"cannot remove {unknown}: not live sites of {spec.name!r} ({why})")
    unknown = [n for n in cuts if n not in by_name]
    if unknown:
      chosen = set(self._chosen(spec, state))
      before = [n for n in unknown if n in chosen
                or any(c.name == n and c.weight in chosen for c in self.candidates(spec))]
      why = (f" ({before} were chosen before: a chosen candidate leaves the list, as in the "
             f"official code)" if before else "")
      raise KeyError(f"the decision cuts channels of {unknown}, which are no live candidates "
                     f"of {spec.name!r}{why}; its candidates are {list(by_name)}")
    masks = dict(traverse_util.flatten_dict(state["masks"], sep=S.SEP))
    for name, cut in cuts.items():
      w = by_name[name].weight
      masks[w] = jnp.asarray(masks[w]).at[jnp.asarray(cut, jnp.int32)].set(0.0) if cut else masks[w]
    index = {s: i for i, s in enumerate(spec.sites())}
    gates = gates.at[jnp.asarray([index[s] for s in decision.remove], jnp.int32)].set(0.0)
    new = {"gates": gates, "masks": _nested(masks), "stopped": state["stopped"]}
    if self.projections:   # the chosen candidates leave the list (the cut's, else the site's own)
      targeted = {by_name[n].site for n in cuts}
      chosen = set(self._chosen(spec, state)) | {by_name[n].weight for n in cuts} | {
          by_name[s].weight for s in decision.remove if s not in targeted and s in by_name}
      new["chosen"] = jnp.asarray([c.weight in chosen for c in self.candidates(spec)], jnp.int32)
    return self._masked(spec, variables, new), new

  def export(self, spec: S.Spec, variables, state):
    """The masked network with its cut channels removed and its identities baked in.

    Channels cut at a removed site that reads its BatchNorm (or weight layer)
    directly are deleted with the next layer's matching inputs
    (:func:`jaxdepth.surgery.cut_channels`, exact: they are 0 there and the site
    is now the identity, whatever its function was: ReLU, GELU, ...); the rest
    stay as zero weights. Every other removed site is an identity already during
    the cut, so a constant that a deleted channel folds into the next layer
    passes through it as the gated network passes it. The result computes what
    the gated, masked network computes.
    """
    from jaxdepth import surgery  # pylint: disable=import-outside-toplevel
    training.check_variables(variables, "TLC.export")
    variables = self._masked(spec, variables, state)
    removed = base.removed_sites(spec, state["gates"])
    flat_masks = traverse_util.flatten_dict(state["masks"], sep=S.SEP)
    counts = {}
    for c in self.candidates(spec):
      if c.direct and c.site in removed:
        keep = np.asarray(jax.device_get(flat_masks[c.weight])) != 0
        if not keep.all():
          counts[c.site] = np.stack([keep, ~keep, np.zeros_like(keep)]).astype(np.int32)
    if counts:
      # cut_channels deletes channels at rectifiers only (GELU of an OFF value is not 0);
      # these sites become identities, where a cut channel is exactly 0 as after a ReLU,
      # so a ReLU stands in for their function until with_identity bakes the identity in.
      # The other removed sites are identities already: a deleted channel's constant
      # (its BatchNorm bias through a depthwise conv, say) folds into the next layer
      # through them as the identity, not as their old function (relu6 of it).
      as_relu = S.map_nodes(spec, lambda p, n: dataclasses.replace(
          n, fn="relu" if p in counts else "identity") if p in removed else n)
      spec, variables = surgery.cut_channels(as_relu, variables, counts)
      removed = list(counts)
    return S.with_identity(spec, removed), variables

"""Site statistics accumulated on device, batch after batch.

A jitted step gets per-batch sign counts from :func:`jaxdepth.network.forward`
(``collect_stats=True``) and folds them into a :class:`SiteStats` with
:func:`accumulate`. Everything stays on device: the per-batch estimators (EGP,
EASIER) are evaluated inside the step and summed, so reading an entropy at the end
of an epoch is one transfer, never one per batch::

    stats = empty_stats(spec)
    for batch in data:
      state, stats = step(state, stats, batch)     # jitted; calls accumulate()
    entropies(stats, "easier")                      # {site: bits}
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth import entropy as E
from jaxdepth.spec import Spec

__all__ = ["SiteStats", "empty_stats", "accumulate", "entropies", "ESTIMATORS", "COUNT_MAX",
           "check_count_capacity", "always_off", "always_on"]

ESTIMATORS = ("easier", "egp", "dataset")
COUNT_MAX = int(np.iinfo(np.int32).max)   # where a total count stops (int32, jit's integers)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SiteStats:
  """Per-site statistics summed over batches (a pytree).

  The dicts are keyed by site path; ``sites`` (static, not a leaf) keeps the
  spec's call order, which a pytree's dicts lose (JAX sorts dict keys when
  flattening, so anything that went through ``jit`` comes back sorted).

  Attributes:
    counts: ``{site: (3, C) int32}``, total positive / negative / zero counts.
    egp_sum: ``{site: f32}``, sum over batches of :func:`~jaxdepth.entropy.egp_batch_entropy`.
    easier_sum: ``{site: f32}``, sum over batches of :func:`~jaxdepth.entropy.easier_batch_entropy`.
    batches: number of batches folded in (int32 scalar).
    sites: the site paths in call order.
  """
  counts: dict[str, jax.Array]
  egp_sum: dict[str, jax.Array]
  easier_sum: dict[str, jax.Array]
  batches: jax.Array
  sites: tuple[str, ...] = dataclasses.field(default=(), metadata={"static": True})

  def _replace(self, **changes) -> "SiteStats":
    """A copy with ``changes`` (the NamedTuple spelling, kept for callers)."""
    return dataclasses.replace(self, **changes)

  def ordered(self, values: dict[str, float]) -> dict[str, float]:
    """``values`` re-keyed in call order (sites it does not hold are left out)."""
    order = self.sites or tuple(sorted(values))
    return {s: values[s] for s in order if s in values}


def empty_stats(spec: Spec) -> SiteStats:
  """Zero statistics for every live site of ``spec``."""
  shapes = spec.shapes()
  counts = {s: jnp.zeros((3, shapes[s][0][-1]), jnp.int32) for s in spec.sites()}
  zero = {s: jnp.zeros((), jnp.float32) for s in counts}
  return SiteStats(counts, zero, dict(zero), jnp.zeros((), jnp.int32), sites=spec.sites())


def accumulate(stats: SiteStats, batch_counts: dict[str, jax.Array]) -> SiteStats:
  """Folds one batch's ``{site: (3, C)}`` sign counts into ``stats`` (pure, jit-able).

  A total that would pass :data:`COUNT_MAX` stays there instead of wrapping
  around, so zero counts stay exact and :func:`entropies` can refuse a fraction it
  no longer knows.

  Raises:
    TypeError: ``stats`` is not a SiteStats, or ``batch_counts`` is ``None`` (what
      ``forward(...).site_counts`` is without ``collect_stats=True``).
    ValueError: ``stats`` are of another spec than the counts (other sites or widths).
  """
  if not isinstance(stats, SiteStats):
    raise TypeError(f"accumulate folds counts into a SiteStats (empty_stats(spec)), got a "
                    f"{type(stats).__name__}")
  if batch_counts is None:
    raise TypeError("accumulate got no counts (None): forward(...).site_counts is None unless "
                    "forward(..., collect_stats=True)")
  _check_same_sites(stats, batch_counts)
  return SiteStats(
      counts={s: _saturating_add(stats.counts[s], batch_counts[s]) for s in stats.counts},
      egp_sum={s: stats.egp_sum[s] + E.egp_batch_entropy(batch_counts[s])
               for s in stats.counts},
      easier_sum={s: stats.easier_sum[s] + E.easier_batch_entropy(batch_counts[s])
                  for s in stats.counts},
      batches=stats.batches + 1, sites=stats.sites)


def _check_same_sites(stats: SiteStats, batch_counts) -> None:
  """Refuses statistics of another spec than the counts (a bare KeyError or a broadcast
  error otherwise); sites and shapes are static, so under jit this costs nothing per step."""
  missing = [s for s in batch_counts if s not in stats.counts]
  extra = [s for s in stats.counts if s not in batch_counts]
  shapes = {s: (jnp.shape(stats.counts[s]), jnp.shape(batch_counts[s]))
            for s in stats.counts if s in batch_counts}
  diffs = [f"site {s!r} holds {held} in the statistics, {counted} counted"
           for s, (held, counted) in shapes.items() if held != counted]
  if extra:
    diffs.insert(0, f"the statistics' sites {extra} are not counted")
  if missing:
    diffs.insert(0, f"sites {missing} are counted but not in the statistics")
  if not diffs:
    return
  raise ValueError(f"the site statistics are of another spec than the counts folded into them "
                   f"({'; '.join(diffs)}): make them with empty_stats(spec) of the spec that "
                   f"is run (the step's or forward's)")


def _saturating_add(total, batch):
  """``total + batch`` for non-negative int32 counts, held at :data:`COUNT_MAX`."""
  return jnp.where(total > COUNT_MAX - batch, COUNT_MAX, total + batch)


def check_count_capacity(spec: Spec, examples: int, *, split: str, neuron_axis: int = -1
                         ) -> None:
  """Refuses, before any work, a dataset-level count that would pass :data:`COUNT_MAX`.

  A site whose input has shape ``shape`` counts ``prod(shape) / shape[neuron_axis]``
  values per neuron and example (``H W`` per channel of an ``(H, W, C)`` map).

  Args:
    spec: the architecture.
    examples: the examples of the split the counts will cover.
    split: its name, for the message.
    neuron_axis: the axis of the site's input that holds the neurons (``-1``:
      channels; ``0``: the rows of a map).

  Raises:
    ValueError: a neuron would see more values than int32 counts hold.
  """
  shapes = spec.shapes()
  values = {s: examples * math.prod(shapes[s][0]) // shapes[s][0][neuron_axis]
            for s in spec.sites()}
  over = {s: v for s, v in values.items() if v >= COUNT_MAX}
  if over:
    site, most = max(over.items(), key=lambda item: item[1])
    raise ValueError(
        f"the 'dataset' estimator would count {most:,} values per neuron at site {site!r} "
        f"({len(over)} site(s) past {COUNT_MAX:,}, what int32 counts hold) over the "
        f"{examples:,} examples of the {split!r} split: measure on a smaller split or use a "
        f"per-batch estimator ('easier' or 'egp')")


def entropies(stats: SiteStats, estimator: str = "easier") -> dict[str, float]:
  """Layer entropy (bits) of every site under one of :data:`ESTIMATORS`, in call order.

  Raises:
    ValueError: an unknown estimator, statistics of no batch (no entropy is 0 bits:
      that would read as a linear site), or ``"dataset"`` on counts that reached
      :data:`COUNT_MAX` (more values of one sign in a channel than int32 holds).
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
  if int(jax.device_get(stats.batches)) == 0:
    raise ValueError("the statistics hold no batch; accumulate some data first (steps made "
                     "with collect_stats=True, or fit with stats_last_epoch=True)")
  if estimator == "dataset":
    full = [s for s, c in jax.device_get(stats.counts).items() if np.any(c == COUNT_MAX)]
    if full:
      raise ValueError(
          f"the 'dataset' estimator cannot measure {list(stats.ordered(dict.fromkeys(full)))}: "
          f"a channel there has {COUNT_MAX:,} or more values of one sign in the split, past "
          f"what its int32 counts hold; measure on fewer examples (a smaller entropy split) or "
          f"use a per-batch estimator ('easier' or 'egp')")
    values = {s: E.dataset_entropy(c) for s, c in stats.counts.items()}
  else:
    sums = stats.egp_sum if estimator == "egp" else stats.easier_sum
    n = jnp.maximum(stats.batches, 1)
    values = {s: v / n for s, v in sums.items()}
  values = jax.device_get(values)
  return stats.ordered({s: float(v) for s, v in values.items()})


def always_off(counts) -> jax.Array:
  """Channels never positive on the data (zeros count as OFF): a ``(C,)`` bool mask."""
  return jnp.asarray(counts)[E.POS] == 0


def always_on(counts) -> jax.Array:
  """Channels never negative nor zero on the data: a ``(C,)`` bool mask."""
  c = jnp.asarray(counts)
  return (c[E.NEG] == 0) & (c[E.ZERO] == 0)

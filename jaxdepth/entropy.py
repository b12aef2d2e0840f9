"""Entropy of rectifier states, in bits (``docs/methods/``).

A site's pre-activation ``z`` puts each channel (neuron) ON (``z > 0``) or OFF
(``z < 0``); the three published estimators differ in what they do with
``z == 0``, in the clamp inside the log, in which channels they average over and in
whether they average per batch or over the whole dataset. All functions here
are pure functions of sign counts, an int array ``(3, C)`` holding the numbers of
positive, negative and zero pre-activations of each channel (see
:func:`jaxdepth.network.sign_counts`).

With ``h2(p; ε) = −p·log2(max(p, ε)) − (1 − p)·log2(max(1 − p, ε))``:

* **EGP** (Liao et al., ICCVW 2023), per batch ``b``: ``p_c = #(z>0)/n`` (zeros OFF),
  ``H^b = mean_{c: 0<p_c<1} h2(p_c; 1e-5)`` (0 if no channel is mixed); the layer
  entropy is the mean of ``H^b`` over batches.
* **EASIER** (Quétu et al., ECML PKDD 2024), per batch: ``q_c = #(z≥0)/n`` (zeros
  ON), ``H^b = mean_c h2(q_c; 1e-10)`` over *all* channels; mean over batches.
* **Dataset-level** (EASIER paper, NEPENTHE [inferred]): zeros discarded,
  ``p_c = #(z>0)/#(z≠0)`` over the whole split (0 if every value is zero), layer
  entropy ``mean_c h2(p_c)``.
"""
from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "binary_entropy", "on_fraction", "egp_batch_entropy", "easier_batch_entropy",
    "dataset_channel_entropy", "dataset_entropy", "EGP_CLAMP", "EASIER_CLAMP",
]

EGP_CLAMP = 1e-5
EASIER_CLAMP = 1e-10
POS, NEG, ZERO = 0, 1, 2


def binary_entropy(p, clamp: float, q=None):
  """``h2(p) = −p log2 max(p, clamp) − q log2 max(q, clamp)`` in bits, ``q = 1 − p`` by default.

  Pass ``q`` when it is known on its own (a count's fraction): in float32, ``1 − p``
  is 0 once ``q < 2^-25``, and a channel OFF a handful of times in 46 million values
  (a CIFAR split at a 32x32 map) would then have entropy exactly 0. With ``q``
  given, the log of the larger fraction is taken as ``log1p`` of minus the smaller
  one, so both terms keep float32's relative precision.
  """
  p = jnp.asarray(p, jnp.float32)
  if q is None:
    q = 1.0 - p
    return -p * jnp.log2(jnp.maximum(p, clamp)) - q * jnp.log2(jnp.maximum(q, clamp))
  q = jnp.asarray(q, jnp.float32)
  log2_p = jnp.where(p < 0.5, jnp.log2(jnp.maximum(p, clamp)), jnp.log1p(-q) / jnp.log(2.0))
  log2_q = jnp.where(q < 0.5, jnp.log2(jnp.maximum(q, clamp)), jnp.log1p(-p) / jnp.log(2.0))
  return -p * log2_p - q * log2_q


def on_fraction(counts, zeros: str = "off"):
  """Per-channel probability of being ON from ``(3, C)`` sign counts.

  Args:
    counts: ``(3, C)`` counts of positive, negative and zero values.
    zeros: how ``z == 0`` counts: ``"off"`` (EGP), ``"on"`` (EASIER's code) or
      ``"discard"`` (dataset-level; a channel that is always zero gets 0).
  """
  counts = jnp.asarray(counts, jnp.float32)
  pos, neg, zero = counts[POS], counts[NEG], counts[ZERO]
  if zeros == "off":
    return pos / jnp.maximum(pos + neg + zero, 1.0)
  if zeros == "on":
    return (pos + zero) / jnp.maximum(pos + neg + zero, 1.0)
  if zeros == "discard":
    n = pos + neg
    return jnp.where(n > 0, pos / jnp.maximum(n, 1.0), 0.0)
  raise ValueError(f"zeros must be 'off', 'on' or 'discard', got {zeros!r}")


def egp_batch_entropy(batch_counts, clamp: float = EGP_CLAMP):
  """EGP's layer entropy of one batch: mean of ``h2`` over non-constant channels."""
  p = on_fraction(batch_counts, "off")
  mixed = (p > 0) & (p < 1)
  h = jnp.where(mixed, binary_entropy(p, clamp), 0.0)
  n = jnp.sum(mixed)
  return jnp.where(n > 0, jnp.sum(h) / jnp.maximum(n, 1), 0.0)


def easier_batch_entropy(batch_counts, clamp: float = EASIER_CLAMP):
  """EASIER's layer entropy of one batch: mean of ``h2`` over all channels, zeros ON."""
  return jnp.mean(binary_entropy(on_fraction(batch_counts, "on"), clamp))


def dataset_channel_entropy(counts, clamp: float = EASIER_CLAMP):
  """Per-channel entropy of dataset-level counts, zeros discarded.

  Both fractions come from their own counts (``#(z>0)/n`` and ``#(z<0)/n``), so
  the entropy is 0 exactly when a channel never changes sign, however large ``n``.
  """
  counts = jnp.asarray(counts, jnp.float32)
  n = counts[POS] + counts[NEG]
  q = jnp.where(n > 0, counts[NEG] / jnp.maximum(n, 1.0), 1.0)
  return binary_entropy(on_fraction(counts, "discard"), clamp, q=q)


def dataset_entropy(counts, clamp: float = EASIER_CLAMP):
  """Layer entropy from dataset-level counts: mean over channels, zeros discarded."""
  return jnp.mean(dataset_channel_entropy(counts, clamp))

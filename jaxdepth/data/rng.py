"""Counter-based randomness for the input pipeline: pure functions of integer keys.

Every random choice the pipeline makes (the order of an epoch, the crop of one
example) is drawn from a hash of ``(key..., counter)`` rather than from a
stateful generator. The value for example ``i`` of epoch ``e`` therefore does not
depend on the batch size, on how the examples are split between processes, or on
where an interrupted run resumed: it is a function of ``(seed, epoch, i)`` alone.

The hash is the SplitMix64 finaliser (Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014) chained over the key words, in
vectorised ``uint64`` numpy arithmetic (wrap-around multiplication is intended).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64 finaliser: a bijection of uint64 with full avalanche."""
  x = (x ^ (x >> np.uint64(30))) * _MUL1
  x = (x ^ (x >> np.uint64(27))) * _MUL2
  return x ^ (x >> np.uint64(31))


def _fold(state: np.ndarray, word) -> np.ndarray:
  """Absorbs one key word (int or uint64 array) into the state."""
  word = np.asarray(word).astype(np.uint64) if isinstance(word, np.ndarray) else np.uint64(int(word) & _MASK64)
  return _mix64((state ^ word) + _GOLDEN)


def random_bits(key: Sequence[int], counters: np.ndarray) -> np.ndarray:
  """64 random bits per counter, a pure function of ``(key, counter)``.

  Args:
    key: integers (any sign) that select the stream, e.g. ``(seed, epoch, salt)``.
    counters: non-negative integer array, e.g. example indices.

  Returns:
    ``uint64`` array shaped like ``counters``.
  """
  with np.errstate(over="ignore"):
    state = np.asarray(np.uint64(len(key)))
    for word in key:
      state = _fold(state, word)
    return _fold(state, np.asarray(counters, np.int64))


def uniforms(key: Sequence[int], counters: np.ndarray, num: int) -> np.ndarray:
  """``num`` independent U[0, 1) draws per counter.

  Args:
    key: integers that select the stream.
    counters: 1-D integer array (e.g. example indices), length ``k``.
    num: draws per counter.

  Returns:
    ``float64`` array of shape ``(k, num)``; row ``r`` depends only on
    ``(key, counters[r])``.
  """
  counters = np.asarray(counters, np.int64).reshape(-1)
  with np.errstate(over="ignore"):
    per_counter = random_bits(key, counters)[:, None]
    bits = _fold(per_counter, np.arange(num, dtype=np.int64)[None, :])
  return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def permutation(n: int, key: Sequence[int]) -> np.ndarray:
  """A permutation of ``range(n)``, a pure function of ``(n, key)``.

  The indices are sorted by their 64-bit hash (a random sort key per index),
  so the result does not depend on numpy's generator algorithms.

  Returns:
    ``int64`` array of length ``n``.
  """
  return np.argsort(random_bits(key, np.arange(n, dtype=np.int64)), kind="stable").astype(np.int64)

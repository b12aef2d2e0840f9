"""``jax.random``'s Threefry draws, bit for bit, as one fused pass on the CPU.

jax draws random bits by hashing a counter with Threefry-2x32 (Salmon, Moraes,
Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011): twenty
rounds of ``x0 += x1; x1 = rotl(x1, r) ^ x0`` with a key injection after every
four. On the CPU jax lowers the twenty rounds as a rolled loop of five passes
(to compile faster), each a separate loop over the whole array; written out as
one elementwise expression, XLA fuses them into a single pass. LaCoOT draws its
projections afresh every step, 28 million normals in a MobileNetV2 step: 0.065 s
here against 0.24–0.27 s through ``jax.random.normal`` on a 2-core CPU
(``benchmarks/random_draws.py``).

The functions here compute exactly what ``jax.random.bits``, ``uniform``,
``normal`` and ``bernoulli`` compute for a Threefry key under jax's default
``jax_threefry_partitionable`` counters (the counter of entry ``i`` of the
row-major array is ``i``, as 64 bits), so a program gives the same numbers
either way (a test compares them bit for bit); the floats are float32 whatever
``jax_enable_x64`` says. Anywhere else — another key implementation, the legacy
counters, 2^32 entries or more, or a backend other than the CPU, where jax's own
lowering is unrolled — they call ``jax.random``.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["applies", "bits", "uniform", "normal", "bernoulli"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _key_words(key):
  """``(k0, k1)`` of a Threefry key, or ``None`` for any other implementation."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if str(jax.random.key_impl(key)) != "threefry2x32":
      return None
    data = jax.random.key_data(key)
  else:
    if jax.config.jax_default_prng_impl != "threefry2x32":
      return None
    data = jnp.asarray(key)
  if data.shape != (2,) or data.dtype != jnp.uint32:
    return None
  return data[0], data[1]


def applies(key, shape, dtype=jnp.float32) -> bool:
  """Whether these functions compute the draw themselves (else they call ``jax.random``).

  ``dtype`` is the float type a caller wants; only float32 is drawn here.
  """
  return (jax.default_backend() == "cpu" and jax.config.jax_threefry_partitionable
          and jnp.dtype(dtype) == jnp.float32 and math.prod(shape) < 2**32
          and _key_words(key) is not None)


def _rotate_left(x, r):
  return lax.shift_left(x, np.uint32(r)) | lax.shift_right_logical(x, np.uint32(32 - r))


def _hash(k0, k1, x0, x1):
  """Threefry-2x32 of the counters ``(x0, x1)`` under key ``(k0, k1)``, 20 rounds unrolled."""
  ks = (k0, k1, k0 ^ k1 ^ _PARITY)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = _rotate_left(x1, r) ^ x0
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


@functools.partial(jax.jit, static_argnums=1)
def _bits(key, shape):
  k0, k1 = _key_words(key)
  counter = lax.iota(np.uint32, math.prod(shape))     # the low word; the high one is 0
  x0, x1 = _hash(k0, k1, jnp.zeros_like(counter), counter)
  return (x0 ^ x1).reshape(shape)


def bits(key, shape) -> jax.Array:
  """``jax.random.bits(key, shape, jnp.uint32)``."""
  shape = tuple(shape)
  if not applies(key, shape):
    return jax.random.bits(key, shape, jnp.uint32)
  return _bits(key, shape)


def _unit(key, shape):
  """Floats in ``[0, 1)`` from the 23 high bits, as ``jax.random.uniform`` makes them."""
  mantissa = lax.shift_right_logical(_bits(key, shape), np.uint32(9))
  return lax.bitcast_convert_type(mantissa | np.uint32(0x3F800000), jnp.float32) - 1.0


def uniform(key, shape, minval=0.0, maxval=1.0) -> jax.Array:
  """``jax.random.uniform(key, shape, jnp.float32, minval, maxval)``.

  ``minval`` and ``maxval`` are scalars or arrays that broadcast to ``shape``,
  taken as float32 and broadcast as ``jax.random.uniform`` takes them.
  """
  shape = tuple(shape)
  if not applies(key, shape):
    return jax.random.uniform(key, shape, jnp.float32, minval, maxval)
  # as jax.random.uniform: float32 first, then leading 1s up to the rank of shape
  minval = lax.broadcast_to_rank(lax.convert_element_type(minval, jnp.float32), len(shape))
  maxval = lax.broadcast_to_rank(lax.convert_element_type(maxval, jnp.float32), len(shape))
  try:
    fits = np.broadcast_shapes(minval.shape, maxval.shape, shape) == shape
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(f"uniform's minval {minval.shape} and maxval {maxval.shape} must "
                     f"broadcast to the shape drawn, {shape}")
  return _uniform(key, shape, minval, maxval)


@functools.partial(jax.jit, static_argnums=1)
def _uniform(key, shape, minval, maxval):
  # compiled as jax.random.uniform is, so XLA contracts ``a * b + c`` the same way
  return lax.max(minval, _unit(key, shape) * (maxval - minval) + minval)


def normal(key, shape) -> jax.Array:
  """``jax.random.normal(key, shape, jnp.float32)``: ``sqrt(2) erfinv(u)``, ``u`` on ``(-1, 1)``."""
  shape = tuple(shape)
  if not applies(key, shape):
    return jax.random.normal(key, shape, jnp.float32)
  return _normal(key, shape)


@functools.partial(jax.jit, static_argnums=1)
def _normal(key, shape):
  lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
  u = _uniform(key, shape, lo, np.float32(1.0))
  return np.float32(np.sqrt(2)) * lax.erf_inv(u)


def bernoulli(key, p, shape) -> jax.Array:
  """``jax.random.bernoulli(key, p, shape)`` with ``p`` taken as float32 (also under x64)."""
  shape = tuple(shape)
  p = jnp.asarray(p, jnp.float32)
  if not applies(key, shape):
    return jax.random.bernoulli(key, p, shape)
  return _bernoulli(key, p, shape)


@functools.partial(jax.jit, static_argnums=2)
def _bernoulli(key, p, shape):
  return _unit(key, shape) < p

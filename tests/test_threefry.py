"""threefry: the unrolled hash draws jax.random's numbers, bit for bit."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth import threefry

import _scripts

SHAPES = [(), (1,), (7,), (3, 5, 4), (50, 1031)]
KEYS = {"typed": lambda: jax.random.key(3),
        "folded": lambda: jax.random.fold_in(jax.random.key(11), 4),
        "split": lambda: jax.random.split(jax.random.key(5), 3)[2],
        "raw": lambda: jax.random.PRNGKey(8)}


def _same(a, b):
  """Equal shapes, dtypes and bits (floats compared as their bit patterns)."""
  a, b = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
  assert a.shape == b.shape and a.dtype == b.dtype
  if a.dtype == np.float32:
    a, b = a.view(np.uint32), b.view(np.uint32)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("key_kind", sorted(KEYS))
@pytest.mark.parametrize("shape", SHAPES)
def test_every_draw_is_jax_randoms_bit_for_bit(shape, key_kind):
  key = KEYS[key_kind]()
  assert threefry.applies(key, shape)
  _same(threefry.bits(key, shape), jax.random.bits(key, shape, jnp.uint32))
  _same(threefry.uniform(key, shape), jax.random.uniform(key, shape))
  _same(threefry.uniform(key, shape, -2.5, 0.75), jax.random.uniform(key, shape, minval=-2.5,
                                                                     maxval=0.75))
  _same(threefry.normal(key, shape), jax.random.normal(key, shape))
  _same(threefry.bernoulli(key, 0.3, shape), jax.random.bernoulli(key, 0.3, shape))


def test_array_bounds_broadcast_to_the_shape_as_in_jax_random():
  key, shape = jax.random.key(3), (3, 5, 4)
  rng = np.random.default_rng(0)
  lo = rng.normal(size=(5, 1))                      # float64, taken as float32 by both
  hi = jnp.asarray(lo, jnp.float32) + jnp.arange(1, 5, dtype=jnp.float32)   # (5, 4)
  for minval, maxval in [(lo, hi), (jnp.zeros(4), jnp.arange(1, 5)), (-1.0, np.float32([2.0]))]:
    _same(threefry.uniform(key, shape, minval, maxval),
          jax.random.uniform(key, shape, jnp.float32, minval, maxval))
  with pytest.raises(ValueError, match=r"minval \(2, 3, 5, 4\).*broadcast to the shape drawn"):
    threefry.uniform(key, shape, jnp.zeros((2, 3, 5, 4)), 1.0)


def test_the_same_under_jit_and_vmap():
  keys = jax.random.split(jax.random.key(0), 4)
  ours = jax.jit(jax.vmap(lambda k: threefry.normal(k, (6, 9))))(keys)
  _same(ours, jax.vmap(lambda k: jax.random.normal(k, (6, 9)))(keys))
  # the hash's twenty rounds really run: a one-word change of the key changes every draw
  other = jax.random.wrap_key_data(jax.random.key_data(keys[0]) ^ jnp.uint32([0, 1]))
  assert (np.asarray(threefry.bits(keys[0], (64,))) != np.asarray(threefry.bits(other, (64,)))).all()


def test_other_key_implementations_and_dtypes_are_left_to_jax_random():
  rbg = jax.random.key(2, impl="rbg")
  assert not threefry.applies(rbg, (4, 4))
  _same(threefry.normal(rbg, (4, 4)), jax.random.normal(rbg, (4, 4)))
  assert not threefry.applies(jax.random.key(2), (4,), jnp.bfloat16)
  assert not threefry.applies(jax.random.key(2), (2**16, 2**16))


def test_random_draws_benchmark_times_both_and_finds_the_same_bits(capsys):
  module = _scripts.load("benchmarks/random_draws.py")
  module.main(["--model", "resnet18", "--projections", "3", "--repeats", "2"])
  report = json.loads(capsys.readouterr().out)
  assert report["same_bits"] is True
  # ResNet-18's four official units read 16x16x64, 8x8x128, 4x4x256 and 2x2x512 features
  assert report["units"] == 4 and report["normals"] == 3 * (16384 + 8192 + 4096 + 2048)
  assert report["wall_s_jax_random"] > 0 and report["wall_s_threefry"] > 0

"""The packed single-pass ``sign_counts`` against numpy, where the packing could overflow."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth.network import sign_counts


def _reference(z, mask=None):
  z = np.asarray(z, np.float32)
  if mask is not None:
    z = z[np.asarray(mask)]
  z = z.reshape(-1, z.shape[-1])
  return np.stack([(z > 0).sum(0), (z < 0).sum(0), (z == 0).sum(0)])


def test_many_positions_per_example_do_not_overflow_the_packed_halves():
  # 40,000 positions per example (> 2**15 - 1, split into rows), channel 0 all
  # negative and channel 1 all positive: each half would carry if summed at once.
  z = np.zeros((2, 200, 200, 3), np.float32)
  z[..., 0], z[..., 1] = -1.0, 2.0
  z[0, :7, :, 2] = -3.0
  counts = jax.jit(sign_counts)(jnp.asarray(z))
  assert counts.dtype == jnp.int32 and counts.shape == (3, 3)
  np.testing.assert_array_equal(counts, _reference(z))
  assert counts[1, 0] == 80_000 and counts[0, 1] == 80_000


def test_prime_number_of_positions():
  z = np.random.default_rng(0).standard_normal((1, 32771, 2)).astype(np.float32)
  z[0, ::5] = 0.0
  np.testing.assert_array_equal(sign_counts(jnp.asarray(z)), _reference(z))


def test_tokens_dense_bf16_and_masks():
  rng = np.random.default_rng(1)
  tokens = (rng.standard_normal((4, 7, 5)) * (rng.random((4, 7, 5)) > 0.4)).astype(np.float32)
  mask = np.array([True, False, True, False])
  np.testing.assert_array_equal(sign_counts(jnp.asarray(tokens)), _reference(tokens))
  np.testing.assert_array_equal(sign_counts(jnp.asarray(tokens), jnp.asarray(mask)),
                                _reference(tokens, mask))
  dense = tokens[:, 0]
  np.testing.assert_array_equal(sign_counts(jnp.asarray(dense, jnp.bfloat16)), _reference(dense))
  np.testing.assert_array_equal(
      sign_counts(jnp.asarray(dense), jnp.zeros(4, bool)), np.zeros((3, 5), np.int32))

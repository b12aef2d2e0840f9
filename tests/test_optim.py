"""``adamw_hf``: transformers.AdamW step for step (a numpy transcription of its ``step``)."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdepth import optim


def hf_adamw(w, grads, lr, b1, b2, eps, wd):
  """transformers.AdamW(correct_bias=True).step, transcribed: eps outside the bias
  correction of v, the decay applied to the weight after the step."""
  m, v = np.zeros_like(w), np.zeros_like(w)
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step_size = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    w = w - step_size * m / (np.sqrt(v) + eps)
    w = w - lr * wd * w
  return w


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adamw_hf_is_transformers_adamw_and_not_torchs(wd):
  rng = np.random.default_rng(0)
  w0 = 1e-2 * rng.normal(size=(3, 4))          # small: float32 resolves the steps
  grads = [1e-6 * rng.normal(size=(3, 4)) for _ in range(4)]   # small: eps matters
  recipe = optim.Recipe(optimizer="adamw_hf", lr=2e-5, weight_decay=wd, epochs=3, batch_size=32)
  tx = optim.make_optimizer(recipe, steps_per_epoch=10)
  params = jnp.asarray(w0, jnp.float32)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
  want = hf_adamw(w0, grads, 2e-5, 0.9, 0.999, 1e-8, wd)
  np.testing.assert_allclose(np.asarray(params) - w0, want - w0, rtol=1e-3, atol=2e-9)
  torch_like = optim.make_optimizer(optim.Recipe(optimizer="adamw", lr=2e-5, weight_decay=wd),
                                    steps_per_epoch=10)
  u_hf, _ = tx.update(jnp.asarray(grads[0], jnp.float32), tx.init(jnp.asarray(w0, jnp.float32)),
                      jnp.asarray(w0, jnp.float32))
  u_torch, _ = torch_like.update(jnp.asarray(grads[0], jnp.float32),
                                 torch_like.init(jnp.asarray(w0, jnp.float32)),
                                 jnp.asarray(w0, jnp.float32))
  assert not np.allclose(u_hf, u_torch, rtol=0.05)   # the first step differs by tens of percent


def test_adamw_hf_needs_a_positive_eps():
  with pytest.raises(ValueError, match="recipe eps must be a finite number > 0 for adamw_hf"):
    optim.Recipe(optimizer="adamw_hf", eps=0.0)

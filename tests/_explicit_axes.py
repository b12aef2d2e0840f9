"""The check of a network on a batch sharded over Explicit mesh axes (``jax.make_mesh``'s
default): jitted loss and gradients equal the unsharded call's, the variables replicated."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth import network


def assert_unsharded_loss_and_gradients(spec, x, rng=None):
  """``sum(sin(logits))`` of ``forward(spec, v, x, train=True)`` and its gradient, jitted,
  with ``x`` (an array or a dict of them) over 2 devices of ``jax.make_mesh``."""
  mesh = jax.make_mesh((2,), ("data",))
  assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
  variables = network.init(spec, jax.random.key(0))
  step = jax.jit(jax.value_and_grad(lambda v, x: jnp.sum(jnp.sin(network.forward(
      spec, v, x, train=True, rng=rng).logits))))
  (loss, grads), (loss_ref, grads_ref) = (
      step(jax.device_put(variables, jax.sharding.NamedSharding(mesh, jax.P())),
           jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P("data")))),
      step(variables, x))
  assert float(loss) == pytest.approx(float(loss_ref), rel=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

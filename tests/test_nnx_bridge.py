"""The NNX bridge: same function, NNX training updates what Linen training would."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxdepth
from jaxdepth import nnx_bridge
from jaxdepth import spec as S

SPEC = S.Spec(input_shape=(6, 6, 2), layers=(
    S.Conv("conv", features=4, padding=1), S.BatchNorm("bn"), S.Act("relu"),
    S.Block("blk", branch=(S.Conv("c", features=4, padding=1), S.BatchNorm("bn")), post=(S.Act("r2"),)),
    S.Pool("gap", "global_avg"), S.Dense("head", features=3)))


def test_round_trip_and_eval_output_match_the_linen_executor():
  v = jaxdepth.init(SPEC, jax.random.key(0))
  v["batch_stats"] = jax.tree.map(lambda a: a + 0.5, v["batch_stats"])     # not the defaults
  model = nnx_bridge.to_nnx(SPEC, v)
  back = nnx_bridge.variables_of(model)
  assert jax.tree.structure(back) == jax.tree.structure(v)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back, v))
  x = np.random.default_rng(1).standard_normal((3, 6, 6, 2), dtype=np.float32)
  gates = jaxdepth.gates_for(SPEC, off=["relu"])
  np.testing.assert_allclose(model(x, gates=gates), jaxdepth.forward(SPEC, v, x, gates=gates).logits,
                             rtol=1e-6, atol=1e-6)


def test_an_nnx_train_step_equals_the_functional_one():
  v = jaxdepth.init(SPEC, jax.random.key(0))
  x = np.random.default_rng(1).standard_normal((4, 6, 6, 2), dtype=np.float32)
  y = jnp.array([0, 1, 2, 0])
  tx = optax.sgd(0.1)

  def loss_of(logits):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  model = nnx_bridge.to_nnx(SPEC, v)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grads = nnx.grad(lambda m: loss_of(m(x, train=True)))(model)
  optimizer.update(model, grads)

  def functional(params):
    out = jaxdepth.forward(SPEC, {"params": params, "batch_stats": v["batch_stats"]}, x, train=True)
    return loss_of(out.logits), out.batch_stats
  g, stats = jax.grad(functional, has_aux=True)(v["params"])
  params = optax.apply_updates(v["params"], tx.update(g, tx.init(v["params"]))[0])
  got = nnx_bridge.variables_of(model)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves({"batch_stats": stats, "params": params})):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_draws_fresh_masks_in_train_mode_and_none_in_eval():
  spec = S.Spec(input_shape=(4,), layers=(S.Dropout("drop", rate=0.5), S.Dense("head", features=64)))
  model = nnx_bridge.to_nnx(spec, jaxdepth.init(spec, jax.random.key(0)))
  x = jnp.ones((2, 4))
  a, b = model(x, train=True), model(x, train=True)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(model(x), model(x))


def test_variables_that_do_not_fit_the_spec_are_refused_by_name():
  v = jaxdepth.init(SPEC, jax.random.key(0))
  # Only params of a spec with BatchNorm: the statistics would be silently re-initialised.
  with pytest.raises(ValueError, match=r"do not fit spec .*no 'batch_stats' collection"):
    nnx_bridge.to_nnx(SPEC, {"params": v["params"]})
  with pytest.raises(ValueError, match=r"no 'params' collection"):
    nnx_bridge.to_nnx(SPEC, v["params"])                   # the params without their key
  # Variables of another spec: other names, then the same names with other shapes.
  other = S.Spec(input_shape=(6, 6, 2), layers=(
      S.Conv("conv", features=4, padding=1), S.BatchNorm("bn3"), S.Pool("gap", "global_avg"),
      S.Dense("head", features=3)))
  with pytest.raises(ValueError, match=r"were they made for another spec\?") as e:
    nnx_bridge.to_nnx(SPEC, jaxdepth.init(other, jax.random.key(0)))
  assert "'params' lacks ['blk/bn/bias'" in str(e.value) and "'bn3/bias'" in str(e.value)
  wider = S.Spec(input_shape=(6, 6, 2), layers=(*SPEC.layers[:-1], S.Dense("head", features=5)))
  with pytest.raises(ValueError, match=r"'params' holds other shapes: .*'head/kernel is "
                                       r"\(4, 5\), not \(4, 3\)'"):
    nnx_bridge.to_nnx(SPEC, jaxdepth.init(wider, jax.random.key(0)))
  with pytest.raises(TypeError, match="variables must be a dict"):
    nnx_bridge.to_nnx(SPEC, [v["params"]])


def test_a_zoo_name_a_zoo_function_or_variables_in_place_of_the_module_are_named():
  v = jaxdepth.init(SPEC, jax.random.key(0))
  with pytest.raises(TypeError, match=r"to_nnx\(spec, variables\): spec must be a jaxdepth Spec, "
                                      r"got the string 'digits_cnn'; .*jaxdepth.zoo.get\('digits_cnn'\)"):
    nnx_bridge.to_nnx("digits_cnn", v)
  with pytest.raises(TypeError, match=r"got the function digits_cnn; call it .*digits_cnn\(\)"):
    nnx_bridge.to_nnx(jaxdepth.zoo.digits_cnn, v)
  with pytest.raises(TypeError, match=r"spec must be a jaxdepth Spec, got a dict; check the order"):
    nnx_bridge.to_nnx(v, SPEC)
  with pytest.raises(TypeError, match=r"variables_of\(model\): model must be a module made by "
                                      r"nnx_bridge.to_nnx.*got a dict; it is already the variables"):
    nnx_bridge.variables_of(v)
  with pytest.raises(TypeError, match=r"got a Linear; of another NNX module, nnx.state"):
    nnx_bridge.variables_of(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))

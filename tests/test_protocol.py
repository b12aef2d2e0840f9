"""The method protocol's training interface: weight masks, captured intermediates, regularizers."""
import re

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from jaxdepth import data, network, optim, training, zoo
from jaxdepth.spec import Spec


@pytest.fixture(scope="module")
def tiny():
  spec = zoo.resnet20(width=4, input_shape=(8, 8, 1))
  return spec, network.init(spec, jax.random.key(0)), data.load("digits")


def _half_mask(params, seed):
  """Masks for every conv kernel: a random half pruned."""
  flat = {k: v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in flat.items():
    names = [p.key for p in path]
    if names[-1] == "kernel" and leaf.ndim == 4:
      node = out
      for n in names[:-1]:
        node = node.setdefault(n, {})
      node["kernel"] = rng.random(leaf.shape) < 0.5
  return out


@pytest.mark.parametrize("tx", [
    optim.make_optimizer(optim.Recipe(optimizer="sgd", lr=0.1, momentum=0.9,
                                      weight_decay=5e-4), 10),
    optim.make_optimizer(optim.Recipe(optimizer="adam", lr=1e-2, weight_decay=1e-4), 10),
    optim.make_optimizer(optim.Recipe(optimizer="adamw", lr=1e-2, weight_decay=1e-2), 10),
], ids=["sgd-momentum-l2", "adam-l2", "adamw"])
def test_masked_weights_stay_bitwise_zero_through_training(tiny, tx):
  spec, variables, ds = tiny
  masks = _half_mask(variables["params"], 1)
  step = training.make_train_step(spec, tx, mesh=training.make_mesh(jax.devices()[:1]))
  params = optim.apply_masks(variables["params"], masks)
  state = training.TrainState.create({**variables, "params": params}, tx, 0)
  for i, batch in enumerate(ds.train.batches(16, seed=0, epoch=0, shuffle=True)):
    state, _, _ = step(state, batch, None, None, masks)
    if i == 11:
      break
  flat_p = dict(jax.tree_util.tree_flatten_with_path(state.params)[0])
  flat_m = dict(jax.tree_util.tree_flatten_with_path(masks)[0])
  moved = 0
  for path, m in flat_m.items():
    w = np.asarray(flat_p[path])
    pruned = w[~np.asarray(m)]
    assert pruned.size and np.all(pruned == 0) and not np.any(np.signbit(pruned))
    before = np.asarray(dict(jax.tree_util.tree_flatten_with_path(params)[0])[path])
    moved += np.count_nonzero(w[np.asarray(m)] != before[np.asarray(m)])
  assert moved > 0   # the kept weights did train


def test_keep_masked_without_masks_is_the_inner_optimizer(tiny):
  _, variables, _ = tiny
  params = variables["params"]
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  inner = optax.sgd(0.1, momentum=0.9)
  a, _ = inner.update(grads, inner.init(params), params)
  b, _ = optim.keep_masked(inner).update(grads, inner.init(params), params)
  assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))


def test_bad_masks_are_named(tiny):
  _, variables, _ = tiny
  with pytest.raises(KeyError, match="no_such_layer"):
    optim.apply_masks(variables["params"], {"no_such_layer": {"kernel": jnp.ones(3)}})
  conv = next(k for k in variables["params"] if k.startswith("conv"))
  with pytest.raises(ValueError, match=f"{conv}/kernel has shape"):
    optim.apply_masks(variables["params"], {conv: {"kernel": jnp.ones(3, bool)}})


def test_captured_block_input_and_output_are_the_blocks_own(tiny):
  spec, variables, ds = tiny
  x = next(ds.test.batches(8))["image"]
  block = "layer1/1"
  out = network.forward(spec, variables, x, capture=(block,))
  xin, yout = out.captured[block]
  # The block alone, run on its captured input, gives its captured output.
  sub = spec.node(block)
  alone = Spec(name="alone", input_shape=xin.shape[1:], layers=(sub,))
  mine = {c: {block.split("/")[-1]: variables[c][block.split("/")[0]][block.split("/")[1]]}
          for c in variables}
  np.testing.assert_allclose(np.asarray(network.forward(alone, mine, xin).logits),
                             np.asarray(yout), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.logits),
                                np.asarray(network.forward(spec, variables, x).logits))
  with pytest.raises(KeyError, match="no/such"):
    network.forward(spec, variables, x, capture=("no/such",))
  with pytest.raises(TypeError, match=r"capture must be a collection of node paths, got the "
                                      r"string 'layer1/1'; write \['layer1/1'\]"):
    network.forward(spec, variables, x, capture=block)


def _mean_square_gap(captured, mask, rng):
  """A toy regularizer: mean squared difference between a block's input and output."""
  x, y = captured["layer1/1"]
  noise = jax.random.uniform(rng, ())   # rng must reach the term
  return jnp.mean((x - y) ** 2) * (1.0 + 0.0 * noise)


def test_regularizer_is_added_to_the_loss_with_its_gradient(tiny):
  spec, variables, ds = tiny
  reg = training.Regularizer("gap", ("layer1/1",), _mean_square_gap)
  tx = optax.sgd(0.05)
  mesh = training.make_mesh(jax.devices()[:1])
  batch = next(ds.train.batches(16, seed=0, epoch=0, shuffle=True))
  state = training.TrainState.create(variables, tx, 0)
  new, metrics, _ = training.make_train_step(spec, tx, mesh=mesh, regularizer=reg,
                                             donate=False)(state, batch, None, None)

  def total(params):   # the same loss written independently
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0)
    out = network.forward(spec, {**variables, "params": params}, batch["image"], train=True,
                          rng=rng, capture=("layer1/1",))
    x, y = out.captured["layer1/1"]
    return training.cross_entropy(out.logits, batch["label"], batch["mask"]) + jnp.mean(
        (x - y) ** 2)

  expected = jax.tree.map(lambda p, g: p - 0.05 * g, variables["params"],
                          jax.grad(total)(variables["params"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-5, atol=1e-6),
               new.params, expected)
  x, y = network.forward(spec, variables, batch["image"], train=True,
                         capture=("layer1/1",)).captured["layer1/1"]
  count = float(metrics["count"])
  assert float(metrics["regularizer"]) / count == pytest.approx(float(jnp.mean((x - y) ** 2)),
                                                                rel=1e-5)


def test_fit_with_zero_epochs_trains_nothing(tiny):
  spec, variables, ds = tiny
  recipe = optim.Recipe(epochs=3, batch_size=64, optimizer="adam", lr=1e-3)
  out = training.fit(spec, variables, ds, recipe, options=training.TrainOptions(epochs=0),
                     progress=False)
  assert out.history == []
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               out.variables, variables)


def _methods():
  from jaxdepth.methods import LaCoOT, TLC, Easier, Egp   # pylint: disable=import-outside-toplevel
  return [Easier(), Egp(), LaCoOT(), TLC()]


@pytest.mark.parametrize("method,other", [(m, o) for m in _methods() for o in _methods()
                                           if m.name != o.name],
                         ids=lambda m: m.name)
def test_a_state_of_another_method_is_refused_by_name(method, other):
  # Before: a bare KeyError 'masks' (EGP, TLC), "another spec" (LaCoOT), or a silent export
  # without the other method's masks (EASIER).
  spec = zoo.digits_cnn()
  variables = network.init(spec, jax.random.key(0))
  state = other.init(spec)
  missing = sorted(set(method.init(spec)) - set(state))
  extra = sorted(set(state) - set(method.init(spec)))
  what = " and ".join(([f"lacks {missing}"] if missing else [])
                      + ([f"holds {extra}, which {type(method).__name__} does not make"]
                         if extra else []))
  message = (re.escape(f"this {method.name} state {what} (its keys: {sorted(state)}; ")
             + r".*a state of another method\? "
             + re.escape(f"make it with {type(method).__name__}().init(spec)"))
  for call in (lambda: method.export(spec, variables, state),
               lambda: method.live_units(spec, state),
               lambda: method.train_options(spec, state)):
    with pytest.raises(ValueError, match=message):
      call()
  assert method.live_units(spec, method.init(spec))   # its own state is taken


def test_a_mask_at_a_subtree_is_named_as_such():
  # TLC's per-channel state masks ({weight: (C,)}) given as weight masks: the message said
  # that 'conv1' is not in the tree; it names the sub-tree and what to pass instead.
  from jaxdepth.methods import TLC   # pylint: disable=import-outside-toplevel
  spec = zoo.digits_plain()
  params = network.init(spec, jax.random.key(0))["params"]
  with pytest.raises(KeyError, match=r"masks put an array at 'conv1', a sub-tree of the params "
                                     r"\(leaves \['conv1/kernel'\]\), not a leaf.*"
                                     r"pass TLC\(\)\.train_options\(spec, state\)\.masks"):
    optim.apply_masks(params, TLC().init(spec)["masks"])
  with pytest.raises(KeyError, match=r"masks name leaves that are not in the tree: \['nope'\]"):
    optim.apply_masks(params, {"nope": jnp.ones(3)})
  masks = TLC().train_options(spec, TLC().init(spec)).masks   # what the message points to
  jax.tree.map(np.testing.assert_array_equal, optim.apply_masks(params, masks), params)

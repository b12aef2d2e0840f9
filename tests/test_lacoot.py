"""LaCoOT: the sliced distances against numpy, the regularizer, the block finder, node gates,
removal orders, the method through the driver (resume, saved shallow model) and its refusals."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from ott.tools import sliced as ott_sliced

from jaxdepth import checkpoint, data, driver, network, optim, training, zoo
from jaxdepth import report as report_lib
from jaxdepth.methods import Decision, LaCoOT, lacoot
from jaxdepth.spec import Act, BatchNorm, Block, Conv, Dense, Pool, Sequential, Spec

RECIPE = optim.Recipe(epochs=1, batch_size=32, optimizer="adam", lr=3e-3)


def tiny_resnet() -> Spec:
  """Three identity-shortcut blocks (layer1/0, layer1/1, layer2/1) and one projection block."""
  return Spec((8, 8, 1), (
      Conv("conv1", features=4, kernel=3, padding=1), BatchNorm("bn1"), Act("relu"),
      Sequential("layer1", (zoo.basic_block("0", 4, 4, 1), zoo.basic_block("1", 4, 4, 1))),
      Sequential("layer2", (zoo.basic_block("0", 4, 8, 2), zoo.basic_block("1", 8, 8, 1))),
      Pool("avgpool", "global_avg"), Dense("fc", features=10)), name="tiny_resnet")


UNITS = ("layer1/0", "layer1/1", "layer2/1")


@pytest.fixture(scope="module")
def tiny():
  spec = tiny_resnet()
  return spec, network.init(spec, jax.random.key(0)), data.load("digits")


# ------------------------------------------------------------ numpy reference


def _np_costs_and_grads(x, y, p):
  """Per direction: W_j² by the sorted pairing, and its gradients in x and y (numpy)."""
  x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
  p = p.astype(np.float64)
  b = len(x)
  costs, gx, gy = [], [], []
  for j in range(p.shape[1]):
    px, py = x @ p[:, j], y @ p[:, j]
    ix, iy = np.argsort(px), np.argsort(py)
    diff = px[ix] - py[iy]          # pairs the i-th smallest of each side
    costs.append(np.mean(diff ** 2))
    dpx, dpy = np.zeros(b), np.zeros(b)
    dpx[ix], dpy[iy] = 2 * diff / b, -2 * diff / b
    gx.append(np.outer(dpx, p[:, j]))
    gy.append(np.outer(dpy, p[:, j]))
  return np.asarray(costs), np.asarray(gx), np.asarray(gy)


@pytest.fixture(scope="module")
def clouds():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((12, 3, 3, 2), dtype=np.float32)
  y = 0.7 * rng.standard_normal((12, 3, 3, 2), dtype=np.float32) + 0.4
  p = lacoot.random_projections(jax.random.key(3), 18, 9)
  return x, y, p


def test_max_sliced_equals_the_sorted_pairing_with_gradients(clouds):
  x, y, p = clouds
  costs, gx, gy = _np_costs_and_grads(np.asarray(x), np.asarray(y), np.asarray(p))
  j = int(np.argmax(costs))
  d = np.sqrt(costs[j])
  value, (dx, dy) = jax.value_and_grad(
      lambda a, b: lacoot.max_sliced_wasserstein(a, b, projections=p), argnums=(0, 1))(x, y)
  np.testing.assert_allclose(float(value), d, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(dx).reshape(12, -1), gx[j] / (2 * d), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(dy).reshape(12, -1), gy[j] / (2 * d), rtol=1e-4,
                             atol=1e-6)


def test_sliced_is_the_root_of_the_mean_with_gradients(clouds):
  x, y, p = clouds
  costs, gx, _ = _np_costs_and_grads(np.asarray(x), np.asarray(y), np.asarray(p))
  d = np.sqrt(costs.mean())
  value, dx = jax.value_and_grad(lambda a: lacoot.sliced_wasserstein(a, y, projections=p))(x)
  np.testing.assert_allclose(float(value), d, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(dx).reshape(12, -1), gx.mean(0) / (2 * d), rtol=1e-4,
                             atol=1e-6)


def test_slice_costs_are_ott_jaxs_with_its_own_projector(clouds):
  x, y, _ = clouds
  key = jax.random.key(7)
  ours = lacoot.slice_costs(x, y, rng=key, n_projections=11)
  _, out = ott_sliced.sliced_wasserstein(x.reshape(12, -1), y.reshape(12, -1), n_proj=11, rng=key)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(out.ot_costs), rtol=1e-5, atol=1e-7)
  assert ours.shape == (11,)


def test_no_nan_gradient_at_distance_zero(clouds):
  x, _, p = clouds
  for fn in (lacoot.max_sliced_wasserstein, lacoot.sliced_wasserstein):
    value, (dx, dy) = jax.value_and_grad(lambda a, b: fn(a, b, projections=p),
                                         argnums=(0, 1))(x, x)
    assert float(value) == 0.0
    assert np.isfinite(np.asarray(dx)).all() and np.isfinite(np.asarray(dy)).all()
  # the same through the penalty, where the official POT call returns NaN
  penalty = lacoot.Penalty(("b",), 2.0, 5)
  grads = jax.grad(lambda a: penalty({"b": (a, a)}, None, jax.random.key(0)))(x)
  assert np.isfinite(np.asarray(grads)).all()


def test_penalty_is_weight_times_the_mean_over_blocks_with_per_block_keys(clouds):
  x, y, _ = clouds
  rng = jax.random.key(5)
  penalty = lacoot.Penalty(("a", "b"), 3.0, 7)
  value = penalty({"a": (x, y), "b": (y, 2 * x)}, None, rng)
  expected = 3.0 * 0.5 * (
      lacoot.max_sliced_wasserstein(x, y, rng=jax.random.fold_in(rng, 0), n_projections=7)
      + lacoot.max_sliced_wasserstein(y, 2 * x, rng=jax.random.fold_in(rng, 1), n_projections=7))
  np.testing.assert_allclose(float(value), float(expected), rtol=1e-6)
  assert hash(penalty) == hash(lacoot.Penalty(("a", "b"), 3.0, 7))


def test_masked_rows_weigh_nothing_with_gradients(clouds):
  """A padded batch's distance is the one of its real rows (ott-jax's weighted solver with
  weights 0 was up to 1.4 % off), wherever the padding is and whatever it holds."""
  x, y, p = clouds
  rows = np.asarray([0, 9, 2, 12, 3, 13, 4, 5, 6, 7, 8, 1, 10, 14, 11])   # 12..14: padding
  mask = rows < 12
  pad_x = np.concatenate([x, 100 * x[:3] + 5])[rows]
  pad_y = np.concatenate([y, np.zeros_like(y[:3])])[rows]
  costs, gx, _ = _np_costs_and_grads(np.asarray(x), np.asarray(y), np.asarray(p))
  np.testing.assert_allclose(np.asarray(lacoot.slice_costs(pad_x, pad_y, projections=p,
                                                           mask=mask)), costs, rtol=1e-5)
  j = int(np.argmax(costs))
  value, dx = jax.value_and_grad(lambda a: lacoot.max_sliced_wasserstein(
      a, pad_y, projections=p, mask=mask))(pad_x)
  np.testing.assert_allclose(float(value), np.sqrt(costs[j]), rtol=1e-5)
  dx = np.asarray(dx).reshape(15, -1)
  np.testing.assert_allclose(dx[mask], gx[j][rows[mask]] / (2 * np.sqrt(costs[j])), rtol=1e-4,
                             atol=1e-6)
  assert (dx[~mask] == 0).all()
  with pytest.raises(ValueError, match=r"mask must flag the real rows of x and y.*mask of "
                                       r"shape \(14,\)"):
    lacoot.sliced_wasserstein(pad_x, pad_y, projections=p, mask=mask[:14])


def test_bad_distance_input_is_named(clouds):
  x, y, p = clouds
  with pytest.raises(ValueError, match="at least 2"):
    lacoot.max_sliced_wasserstein(x[:1], y[:1], projections=p)
  with pytest.raises(ValueError, match="n_projections must be an int >= 1"):
    lacoot.max_sliced_wasserstein(x, y, rng=jax.random.key(0), n_projections=0)
  with pytest.raises(ValueError, match="projections must have shape"):
    lacoot.max_sliced_wasserstein(x, y, projections=p[:5])
  with pytest.raises(ValueError, match="rng="):
    lacoot.sliced_wasserstein(x, y)
  with pytest.raises(ValueError, match="same number of features"):
    lacoot.sliced_wasserstein(x, y[:, :2], rng=jax.random.key(0))
  with pytest.raises(ValueError, match="λ must be a finite number >= 0"):
    lacoot.regularizer(UNITS, weight=-1.0)
  with pytest.raises(ValueError, match="n_projections"):
    lacoot.regularizer(UNITS, n_projections=0)


def test_an_int_for_a_key_is_refused_and_raw_key_data_still_works(clouds):
  x, y, _ = clouds
  for distance in (lacoot.max_sliced_wasserstein, lacoot.sliced_wasserstein):
    with pytest.raises(TypeError, match=r"rng must be a JAX key, e.g. jax.random.key\(0\); "
                                        r"got the int 0"):
      distance(x, y, rng=0)
  with pytest.raises(TypeError, match=r"rng must be a JAX key.*got a float32 array"):
    lacoot.random_projections(jnp.zeros(2), 18, 9)
  key = jax.random.key(5)
  np.testing.assert_array_equal(lacoot.max_sliced_wasserstein(x, y, rng=jax.random.key_data(key)),
                                lacoot.max_sliced_wasserstein(x, y, rng=key))


# --------------------------------------------------------------------- blocks


def test_block_finder():
  assert lacoot.find_blocks(tiny_resnet()) == UNITS
  r18 = zoo.resnet18()
  assert lacoot.find_blocks(r18, "official") == ("layer1/1", "layer2/1", "layer3/1", "layer4/1")
  assert lacoot.find_blocks(r18) == ("layer1/0", "layer1/1", "layer2/1", "layer3/1", "layer4/1")
  r20 = zoo.resnet20(width=4, input_shape=(8, 8, 1))
  assert lacoot.find_blocks(r20) == ("layer1/0", "layer1/1", "layer1/2", "layer2/1", "layer2/2",
                                     "layer3/1", "layer3/2")
  mobile = zoo.mobilenet_v2()
  official = lacoot.find_blocks(mobile, "official")
  assert official == tuple(f"features/{i}/conv/depthwise"
                           for i in (2, 3, 5, 6, 8, 9, 10, 11, 12, 13, 15, 16, 17))
  assert len(lacoot.find_blocks(zoo.mobilenet_v2(variant="imagenet"), "official")) == 12
  assert lacoot.find_blocks(mobile) == tuple(f"features/{i}"
                                             for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16))
  shapes = mobile.shapes()
  assert all(shapes[p][0] == shapes[p][1] for p in official)


def test_bad_blocks_are_named():
  spec = tiny_resnet()
  with pytest.raises(ValueError, match="projection shortcut"):
    lacoot.check_blocks(spec, ["layer2/0"])
  with pytest.raises(ValueError, match="not a residual block"):
    lacoot.check_blocks(spec, ["layer1/0/conv1"])
  with pytest.raises(KeyError, match="no node"):
    lacoot.check_blocks(spec, ["layer9/0"])
  with pytest.raises(ValueError, match="no official LaCoOT pairing"):
    lacoot.find_blocks(spec, "official")
  with pytest.raises(ValueError, match="projection shortcut"):
    LaCoOT(blocks=("layer2/0",)).units(spec)


# ----------------------------------------------------------------- node gates


def test_gated_blocks_are_the_identity_and_surgery_matches(tiny):
  spec, variables, ds = tiny
  x = next(ds.test.batches(16))["image"]
  dense = network.forward(spec, variables, x).logits
  ones = {u: 1.0 for u in UNITS}
  np.testing.assert_array_equal(np.asarray(network.forward(spec, variables, x,
                                                           node_gates=ones).logits),
                                np.asarray(dense))
  gates = {**ones, "layer1/1": 0.0, "layer2/1": 0.0}
  gated = network.forward(spec, variables, x, node_gates=gates).logits
  shallow, shallow_vars = lacoot.remove_units(spec, variables, ["layer1/1", "layer2/1"])
  assert [p for p in lacoot.find_blocks(shallow)] == ["layer1/0"]
  np.testing.assert_allclose(np.asarray(network.forward(shallow, shallow_vars, x).logits),
                             np.asarray(gated), rtol=1e-6, atol=1e-6)
  assert not np.allclose(np.asarray(gated), np.asarray(dense))
  # a gated block's output is its input
  out = network.forward(spec, variables, x, node_gates=gates, capture=("layer1/0", "layer2/0"))
  np.testing.assert_array_equal(np.asarray(out.captured["layer2/0"][0]),
                                np.asarray(out.captured["layer1/0"][1]))


def test_one_compilation_for_every_gate_pattern(tiny):
  spec, variables, ds = tiny
  x = next(ds.test.batches(8))["image"]
  traces = []

  @jax.jit
  def logits(v, gates):
    traces.append(1)
    return network.forward(spec, v, x, node_gates=gates).logits

  outs = [logits(variables, {u: jnp.float32(u != off) for u in UNITS}) for off in UNITS]
  assert len(traces) == 1
  assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[1]))


def test_bad_node_gates_are_named(tiny):
  spec, variables, ds = tiny
  x = next(ds.test.batches(8))["image"]
  with pytest.raises(ValueError, match="only a node whose output shape equals its input"):
    network.forward(spec, variables, x, node_gates={"layer2/0": 0.0})
  with pytest.raises(KeyError, match="names no node"):
    network.forward(spec, variables, x, node_gates={"nope": 0.0})
  with pytest.raises(ValueError, match="only a node whose output shape"):
    lacoot.remove_units(spec, variables, ["layer2/0"])


# ------------------------------------------------------------ regularizer in training


def _step_params(spec, variables, batch, mesh, reg):
  tx = optax.sgd(0.05)
  state = training.TrainState.create(variables, tx, 0)
  step = training.make_train_step(spec, tx, mesh=mesh, regularizer=reg, donate=False)
  new, metrics, _ = step(state, batch, None, None, None, {u: 1.0 for u in UNITS})
  return new, metrics


def test_regularized_step_is_the_same_on_one_device_and_sharded_over_two(tiny):
  """The sort runs over the global batch: a sharded step computes the single-device one."""
  spec, variables, ds = tiny
  batch = next(ds.train.batches(16, seed=0, epoch=0, shuffle=True))
  reg = lacoot.regularizer(UNITS, weight=5.0, n_projections=50)
  one, m1 = _step_params(spec, variables, batch, training.make_mesh(jax.devices()[:1]), reg)
  two, m2 = _step_params(spec, variables, batch, training.make_mesh(jax.devices()[:2]), reg)
  assert len(jax.devices()) >= 2
  np.testing.assert_allclose(float(m1["regularizer"]), float(m2["regularizer"]), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                                       atol=1e-6), one.params, two.params)
  # the term is λ · mean MSWD of the captured blocks with the step's key
  rng = jax.random.fold_in(jax.random.wrap_key_data(training.TrainState.create(
      variables, optax.sgd(0.05), 0).rng), 0)
  out = network.forward(spec, variables, batch["image"], train=True, rng=rng, capture=UNITS)
  expected = reg.fn(out.captured, batch["mask"], jax.random.fold_in(rng, 1))
  np.testing.assert_allclose(float(m1["regularizer"]) / 16, float(expected), rtol=1e-5)
  assert float(expected) > 0


def test_a_gated_unit_measures_0_and_its_regularizer_moves_nothing(tiny):
  """A removed unit passes its input on: its distance is 0 and, with plain SGD, a
  regularized step leaves its parameters as they were."""
  spec, variables, ds = tiny
  gates = {u: float(u != "layer1/1") for u in UNITS}
  batch = next(ds.train.batches(16, seed=0, epoch=0, shuffle=True))
  tx = optax.sgd(0.05)
  step = training.make_train_step(spec, tx, regularizer=lacoot.regularizer(UNITS, weight=5.0),
                                  donate=False)
  new, _, _ = step(training.TrainState.create(variables, tx, 0), batch, None, None, None, gates)

  def moved(unit):
    a, b = (p[unit.split("/")[0]][unit.split("/")[1]] for p in (new.params, variables["params"]))
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a),
                                                               jax.tree.leaves(b)))
  assert moved("layer1/1") == 0.0
  assert moved("layer1/0") > 0 and moved("layer2/1") > 0
  kw = dict(rng=jax.random.key(1), batch_size=64, n_projections=16)
  d = lacoot.block_distances(spec, variables, ds.val, UNITS, node_gates=gates, **kw)
  assert d["layer1/1"] == {"sliced": 0.0, "max_sliced": 0.0}
  assert d["layer1/0"]["sliced"] > 0 and d["layer2/1"]["sliced"] > 0
  # compared with another node than its own output (an official pairing), still 0
  outputs = ("layer1/0", "layer1/1/conv2", "layer2/1")
  d = lacoot.block_distances(spec, variables, ds.val, UNITS, node_gates=gates,
                             outputs=outputs, **kw)
  assert d["layer1/1"] == {"sliced": 0.0, "max_sliced": 0.0}
  live = lacoot.block_distances(spec, variables, ds.val, UNITS, outputs=outputs, **kw)
  assert live["layer1/1"]["sliced"] > 0


def test_a_regularized_run_resumes_bit_identical(tiny, tmp_path):
  """The directions of step t come from (seed, t): stopping after epoch 1 and resuming
  ends where the uninterrupted run ends, bit for bit."""
  spec, variables, ds = tiny
  options = training.TrainOptions(regularizer=lacoot.regularizer(UNITS, 5.0, 50),
                                  node_gates={u: 1.0 for u in UNITS})
  recipe = optim.Recipe(epochs=2, batch_size=128, optimizer="adam", lr=3e-3)
  straight = training.fit(spec, variables, ds, recipe, options=options, progress=False, seed=3)
  training.fit(spec, variables, ds, recipe.replace(epochs=1), options=options, progress=False,
               seed=3, workdir=tmp_path)   # the run stopped after its first epoch
  resumed = training.fit(spec, variables, ds, recipe, options=options, progress=False, seed=3,
                         workdir=tmp_path)
  assert [h["step"] for h in resumed.history] == [h["step"] for h in straight.history]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               resumed.variables, straight.variables)
  assert resumed.history[-1]["train_regularizer"] == straight.history[-1]["train_regularizer"]
  other = training.TrainOptions(regularizer=lacoot.regularizer(UNITS, 1.0, 50),
                                node_gates={u: 1.0 for u in UNITS})
  with pytest.raises(training.RunMismatchError, match="regularizer"):
    training.fit(spec, variables, ds, recipe, options=other, progress=False, seed=3,
                 workdir=tmp_path)


# --------------------------------------------------------------- validation distances


def test_block_distances_do_not_depend_on_the_device_count(tiny):
  """The samples measured are the same on 1 and 2 devices: a batch of odd length (a split
  of 145 smaller than the batch, or batches of 75) is padded up with masked rows, not cut
  to a multiple of the device count."""
  spec, variables, _ = tiny
  val = data.load("digits", val_fraction=0.1008).val
  assert val.num_examples == 145
  for batch_size in (256, 75):
    one, two = (lacoot.block_distances(spec, variables, val, UNITS, rng=jax.random.key(1),
                                       batch_size=batch_size, n_projections=16,
                                       mesh=training.make_mesh(jax.devices()[:n]))
                for n in (1, 2))
    for u in UNITS:
      for kind in lacoot.SCORES:
        assert two[u][kind] == pytest.approx(one[u][kind], rel=1e-6), (batch_size, u, kind)
  with pytest.raises(ValueError, match="batch_size=1 on a split of 145 examples gives batches "
                                       "of 1; a distance needs 2 samples or more"):
    lacoot.block_distances(spec, variables, val, UNITS, rng=jax.random.key(1), batch_size=1)


def _explicit_mesh():
  """``jax.make_mesh``'s default in jax 0.12: Explicit axes, a sharded batch typed as such."""
  mesh = jax.make_mesh((2,), ("data",))
  assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
  return mesh


def test_distances_of_a_batch_sharded_over_explicit_axes_equal_the_unsharded(tiny):
  """JAX sorts only along unsharded axes: the projections are gathered before the sort."""
  mesh = _explicit_mesh()
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((8, 3, 2), dtype=np.float32), rng.standard_normal((8, 6), np.float32)
  mask = np.arange(8) < 6
  batch = lambda a: jax.device_put(a, jax.sharding.NamedSharding(mesh, jax.P("data")))

  def distances(x, y, mask):
    kw = dict(rng=jax.random.key(3), n_projections=5)
    d = lambda x, y: (lacoot.max_sliced_wasserstein(x, y, **kw)
                      + lacoot.sliced_wasserstein(x, y, mask=mask, **kw))
    return d(x, y), jax.grad(d)(x, y)

  (d, g), (d_ref, g_ref) = (jax.jit(distances)(*args) for args in ((batch(x), batch(y),
                                                                     batch(mask)), (x, y, mask)))
  assert float(d) == pytest.approx(float(d_ref), rel=1e-6)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)
  spec, variables, ds = tiny
  explicit, auto = (lacoot.block_distances(spec, variables, ds.val, UNITS, rng=jax.random.key(1),
                                           n_projections=8, mesh=m)
                    for m in (mesh, training.make_mesh(jax.devices()[:2])))
  for u in UNITS:
    for kind in lacoot.SCORES:
      assert explicit[u][kind] == pytest.approx(auto[u][kind], rel=1e-6), (u, kind)


# ------------------------------------------------------------------ removal order


def test_removal_orders():
  d = {"a": 0.3, "b": 0.1, "c": 0.3, "d": 0.2}
  assert lacoot.removal_order(d) == ("b", "d", "a", "c")   # ties in call order
  assert lacoot.removal_order(d, "deepest_first") == ("d", "c", "b", "a")
  # the off-by-one: the unit at sorted position j removes unit j-1; position 0 removes nothing
  assert lacoot.removal_order(d, "shifted") == ("a", "c", "b")
  swin = [0.575, 0.591, 0.375, 0.482, 0.435, 0.534, 0.588, 0.595, 0.595, 0.548, 0.496, 0.518]
  names = [f"block{i}" for i in range(12)]
  score = [abs(v - np.mean(swin)) / np.std(swin) + scipy.stats.percentileofscore(swin, v) / 100
           for v in swin]
  expected = tuple(names[i] for i in np.argsort(score, kind="stable"))
  assert lacoot.removal_order(dict(zip(names, swin)), "zscore") == expected
  with pytest.raises(ValueError, match="unknown LaCoOT removal order"):
    lacoot.removal_order(d, "random")
  # block_distances' {unit: {"sliced", "max_sliced"}} is named, with the one-number form
  measured = {u: {"sliced": v, "max_sliced": 2 * v} for u, v in d.items()}
  with pytest.raises(TypeError, match=r"one number.*\{u: d\['max_sliced'\] for u, d in "):
    lacoot.removal_order(measured)
  assert lacoot.removal_order({u: m["max_sliced"] for u, m in measured.items()}) == (
      "b", "d", "a", "c")
  with pytest.raises(TypeError, match=r"distances must be a dict \{unit: distance\}"):
    lacoot.removal_order([0.3, 0.1])


def test_the_own_loop_functions_refuse_one_string_and_a_whole_dataset(tiny):
  spec, variables, ds = tiny
  write = r"must be a collection of node paths, got the string 'layer1/1'; write \['layer1/1'\]"
  with pytest.raises(TypeError, match=write):
    lacoot.remove_units(spec, variables, "layer1/1")
  with pytest.raises(TypeError, match=write):
    lacoot.block_distances(spec, variables, ds.val, "layer1/1", rng=jax.random.key(0))
  with pytest.raises(TypeError, match=r"block_distances takes one split of a dataset.*got the "
                                      r"Dataset 'digits'"):
    lacoot.block_distances(spec, variables, ds, UNITS, rng=jax.random.key(0))


# ------------------------------------------------------------- through the driver


class Killed(RuntimeError):
  pass


def _run(tiny, workdir, **kw):
  spec, variables, ds = tiny
  return driver.run(LaCoOT(weight=2.0, n_projections=16), spec, ds, RECIPE, workdir,
                    variables=variables, progress=False, eval_batch_size=64, tolerance=100.0,
                    latency_batches=(), **kw)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lacoot")
  return workdir, _run(tiny, workdir)


def _logits(spec, variables, x, **kw):
  return np.asarray(network.forward(spec, variables, x, **kw).logits)


def test_trains_once_then_removes_one_block_per_iteration_in_distance_order(tiny, finished):
  spec, _, ds = tiny
  workdir, result = finished
  entries = result.report["iterations"]
  assert [e["units_removed"] for e in entries] == [0, 1, 2, 3]
  assert [e["epochs"] for e in entries] == [1, 0, 0, 0]
  distances = entries[0]["distances"]
  assert list(distances) == list(UNITS)
  order = sorted(UNITS, key=lambda u: (distances[u], UNITS.index(u)))
  assert entries[0]["decision"]["order"] == order
  assert [e["removed_now"] for e in entries] == [[u] for u in order] + [[]]
  assert entries[-1]["removed"] == sorted(UNITS, key=UNITS.index)
  assert [e["depth"]["weight_depth"] for e in entries] == [10, 8, 6, 4]
  assert entries[0]["macs"] > entries[1]["macs"] > entries[3]["macs"]
  # the distances are the validation ones, recomputed independently
  _, trained = checkpoint.load_model(workdir / "iterations/000/model")
  again = lacoot.block_distances(spec, trained, ds.val, UNITS, rng=jax.random.fold_in(
      jax.random.key(0), 0), batch_size=64, n_projections=16)
  for u in UNITS:
    assert distances[u] == pytest.approx(again[u]["sliced"], rel=1e-5)
    assert again[u]["max_sliced"] >= again[u]["sliced"] > 0


def test_saved_shallow_models_compute_the_gated_network(tiny, finished):
  spec, _, ds = tiny
  workdir, result = finished
  x = next(ds.test.batches(32))["image"]
  _, trained = checkpoint.load_model(workdir / "iterations/000/model")
  entries = result.report["iterations"]
  for e in entries:
    shallow, variables = checkpoint.load_model(workdir / f"iterations/{e['iteration']:03d}/model")
    assert lacoot.find_blocks(shallow) == tuple(u for u in UNITS if u not in e["removed"])
    gates = {u: float(u not in e["removed"]) for u in UNITS}
    np.testing.assert_allclose(_logits(shallow, variables, x),
                               _logits(spec, trained, x, node_gates=gates), rtol=1e-5,
                               atol=1e-5)
    test = training.evaluate(shallow, variables, ds.test, batch_size=64)
    assert test.accuracy == pytest.approx(e["test_accuracy"], abs=1e-5)   # fractions
  chosen = result.report["chosen"]
  assert chosen["units_removed"] == 3   # tolerance 100: the deepest cut
  assert chosen["depth"]["weight_depth"] == 4


def test_a_killed_lacoot_run_resumes_to_the_same_result(tiny, finished, tmp_path):
  workdir, result = finished

  def kill(it, entry):
    if it == 1:
      raise Killed

  with pytest.raises(Killed):
    _run(tiny, tmp_path, after_iteration=kill)
  resumed = _run(tiny, tmp_path)

  assert (report_lib.without_timings(resumed.report)
          == report_lib.without_timings(result.report))
  for a, b in zip(jax.tree.leaves(checkpoint.load_model(tmp_path / "chosen")[1]),
                  jax.tree.leaves(checkpoint.load_model(workdir / "chosen")[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_shifted_never_counts_the_unit_it_never_removes_and_stops_after_its_last(tiny,
                                                                                 tmp_path):
  """Under "shifted" the last unit in call order is not in the removal order: it stays in
  every saved model, is never counted as removed, and the run ends once the order's last
  removal is evaluated (not one duplicate evaluation per iteration asked)."""
  spec, variables, ds = tiny

  def untrained(spec, variables, dataset, recipe, **kw):
    return training.FitResult(variables, None, [], training.TrainState.create(
        variables, optim.make_optimizer(recipe, 1), 0))

  method = LaCoOT(n_projections=16, order="shifted")
  assert method.default_iterations(spec) == len(UNITS)   # the trained network, then 2 removals

  def run(iterations):
    return driver.run(method, spec, ds, RECIPE, tmp_path, variables=variables, progress=False,
                      eval_batch_size=64, tolerance=100.0, iterations=iterations,
                      trainer=untrained, merge=False)

  entries = run(10).report["iterations"]
  order = entries[0]["decision"]["order"]
  assert order == list(lacoot.removal_order(entries[0]["distances"], "shifted"))
  assert len(order) == 2 and UNITS[-1] not in order
  assert [e["units_removed"] for e in entries] == [0, 1, 2]
  assert [e["removed_now"] for e in entries] == [[order[0]], [order[1]], []]
  for e in entries:
    shallow, _ = checkpoint.load_model(tmp_path / f"iterations/{e['iteration']:03d}/model")
    gone = [u for u in UNITS if u not in lacoot.find_blocks(shallow)]
    assert e["removed"] == gone and e["units_removed"] == len(gone)
    assert UNITS[-1] not in e["removed"] and list(e["distances"]) == [
        u for u in UNITS if u not in gone]
  assert UNITS[-1] in entries[-1]["decision"]["stop"]   # why the run ended
  result = run(12)   # more iterations asked of the finished run: nothing is left to do
  assert result.report["iterations"] == entries
  chosen = result.report["chosen"]
  assert chosen["units_removed"] == 2 and chosen["removed"] == sorted(order, key=UNITS.index)
  assert UNITS[-1] in lacoot.find_blocks(result.chosen_spec)
  assert float(result.state["gates"][UNITS.index(UNITS[-1])]) == 1.0


def nested_spec() -> Spec:
  """``outer`` holds the block ``outer/inner``; ``tail`` is a plain block after them."""
  inner = Block("inner", branch=(Act("relu"), Conv("conv", features=4, kernel=3, padding=1)))
  return Spec((8, 8, 1), (
      Conv("conv1", features=4, kernel=3, padding=1),
      Block("outer", branch=(inner, Act("relu"), Conv("conv", features=4, kernel=1))),
      Block("tail", branch=(Act("relu"), Conv("conv", features=4, kernel=1))),
      Pool("avgpool", "global_avg"), Dense("fc", features=10)), name="nested")


def test_a_block_inside_a_removed_block_goes_with_it_uncounted(tiny, tmp_path):
  """Once ``outer`` is removed, ``outer/inner`` is gone too: its own turn would evaluate the
  same network again and count one removal more. A nested unit ranked before its outer
  one keeps its turn (removing it first changes the network)."""
  assert lacoot.removal_order({"outer": 0.1, "outer/inner": 0.2, "tail": 0.3}) == (
      "outer", "tail")
  assert lacoot.removal_order({"outer": 0.2, "outer/inner": 0.1, "tail": 0.3}) == (
      "outer/inner", "outer", "tail")
  assert lacoot.removal_order({"a": 0.3, "a/b": 0.1, "a/b/c": 0.2}) == ("a/b", "a")
  spec, ds = nested_spec(), tiny[2]
  units = ("outer", "outer/inner", "tail")
  assert lacoot.find_blocks(spec) == units
  variables = network.init(spec, jax.random.key(0))
  params = {k: dict(v) for k, v in variables["params"].items()}
  for block in ("outer", "tail"):   # their last conv at 0: the identity, distance 0, first
    params[block]["conv"] = jax.tree.map(jnp.zeros_like, params[block]["conv"])
  variables = {"params": params}

  def untrained(spec, variables, dataset, recipe, **kw):
    return training.FitResult(variables, None, [], training.TrainState.create(
        variables, optim.make_optimizer(recipe, 1), 0))

  result = driver.run(LaCoOT(n_projections=16), spec, ds, RECIPE, tmp_path, variables=variables,
                      progress=False, eval_batch_size=64, tolerance=100.0, trainer=untrained,
                      merge=False, latency_batches=())
  entries = result.report["iterations"]
  distances = entries[0]["distances"]
  assert distances["outer"] == distances["tail"] == 0 < distances["outer/inner"]
  assert entries[0]["decision"]["order"] == ["outer", "tail"]
  assert [e["removed_now"] for e in entries] == [["outer"], ["tail"], []]
  assert [e["units_removed"] for e in entries] == [0, 1, 2]
  assert [e["removed"] for e in entries] == [[], ["outer"], ["outer", "tail"]]
  assert [list(e["distances"]) for e in entries[1:]] == [["tail"], []]   # not the gone one
  assert "decision" not in entries[-1]   # no stop rule: nothing is left to remove
  # every iteration evaluates another network: fewer parameters each time
  counts = [e["params"] for e in entries]
  assert counts == sorted(set(counts), reverse=True)
  chosen = result.report["chosen"]
  assert chosen["units_removed"] == 2 and chosen["removed"] == ["outer", "tail"]
  assert lacoot.find_blocks(result.chosen_spec) == ()
  assert float(result.state["gates"][units.index("outer/inner")]) == 1.0
  assert int(result.state["rank"][units.index("outer/inner")]) == -2


def test_bad_method_settings_are_named():
  with pytest.raises(ValueError, match="λ must be a finite number >= 0"):
    LaCoOT(weight=-0.5)
  with pytest.raises(ValueError, match="n_projections must be an int >= 1"):
    LaCoOT(n_projections=0)
  with pytest.raises(ValueError, match="unknown LaCoOT pairing"):
    LaCoOT(pairing="pairs")
  with pytest.raises(ValueError, match="unknown LaCoOT removal order"):
    LaCoOT(order="largest")
  with pytest.raises(ValueError, match="unknown LaCoOT score"):
    LaCoOT(score="wasserstein")
  with pytest.raises(ValueError, match="no official LaCoOT pairing"):
    LaCoOT(pairing="official").units(zoo.resnet20(width=4, input_shape=(8, 8, 1)))
  with pytest.raises(TypeError, match=r"paths must be a collection of node paths, got the "
                                      r"string 'layer1/1'; write \['layer1/1'\]"):
    lacoot.regularizer("layer1/1")


def test_a_state_of_another_spec_and_a_removed_unit_removed_again_are_refused(tiny):
  spec, variables, _ = tiny                       # 3 units
  method = LaCoOT()
  small = {**method.init(zoo.digits_cnn(width=8)), "gates": jnp.asarray([1.0, 0.0])}   # 2
  other = r"holds 2 gates for the 3 units of 'tiny_resnet': it belongs to another spec"
  for call in (lambda: method.live_units(spec, small), lambda: method.node_gates(spec, small),
               lambda: method.train_options(spec, small),
               lambda: method.export(spec, variables, small),
               lambda: method.apply(spec, variables, small, Decision(()))):
    with pytest.raises(ValueError, match=other):
      call()
  ranked = {"gates": jnp.asarray([0.0, 1.0, 1.0]), "rank": jnp.asarray([0, 1, 2]),
            "distances": jnp.asarray([0.1, 0.2, 0.3]), "ranked": jnp.asarray(1)}
  with pytest.raises(KeyError, match=r"cannot remove \['layer1/0'\]: not live units \(removed "
                                     r"already\); live units: \['layer1/1', 'layer2/1'\]"):
    method.apply(spec, variables, ranked, Decision(("layer1/0",)))
  _, state = method.apply(spec, variables, ranked, Decision(("layer1/1",)))
  assert method.live_units(spec, state) == ("layer2/1",)


def _never_trains(trained):
  """A trainer that records being called and fails: the driver must refuse before it."""
  def trainer(*args, **kw):
    trained.append(True)
    raise AssertionError("trained")
  return trainer


def test_a_validation_split_of_one_example_is_refused_before_any_training(tiny, tmp_path):
  spec, variables, _ = tiny
  ds = data.load("digits", val_fraction=0.001)
  assert ds.val.num_examples == 1
  trained = []   # the driver refuses before iteration 0 trains (it used to, then refuse)

  with pytest.raises(ValueError, match=r"holds 1 example\(s\); LaCoOT's distances need 2 "
                                       r"samples or more: hold out more validation data \(a "
                                       r"larger val_fraction\)"):
    driver.run(LaCoOT(), spec, ds, RECIPE, tmp_path / "run", variables=variables,
               progress=False, trainer=_never_trains(trained))
  assert trained == [] and not (tmp_path / "run").exists()


def test_an_evaluation_batch_of_one_example_is_refused_before_any_training(tiny, tmp_path):
  # The distances' batch is the run's evaluation batch: batches of 1 used to fail only
  # after iteration 0 had trained (and the directory then held that batch in its identity).
  spec, variables, _ = tiny
  ds = data.load("digits", val_fraction=0.1)
  assert ds.val.num_examples > 2
  trained = []

  with pytest.raises(ValueError, match=r"batch_size=1 on a split of \d+ examples gives batches "
                                       r"of 1; a distance needs 2 samples or more: use a larger "
                                       r"eval_batch_size"):
    driver.run(LaCoOT(), spec, ds, RECIPE, tmp_path / "run", variables=variables,
               progress=False, trainer=_never_trains(trained), eval_batch_size=1,
               mesh=training.make_mesh(jax.devices()[:1]))
  assert trained == [] and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ command line


def _snapshot(directory):
  return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_command_line(tmp_path, capsys):
  from jaxdepth import report   # pylint: disable=import-outside-toplevel
  from jaxdepth.train import __main__ as cli   # pylint: disable=import-outside-toplevel
  args = ["lacoot", "--workdir", str(tmp_path), "--no-progress", "--iterations", "3",
          "--lambda", "2", "--n-projections", "8", "--no-latency",
          "--set", "epochs=1", "model_kwargs={'width': 4}", "milestones=()"]
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  rep = json.loads((tmp_path / "report.json").read_text())
  assert rep["method"] == "lacoot" and rep["model"] == "resnet20" and rep["unit"] == "block"
  assert rep["method_options"]["weight"] == 2.0 and rep["method_options"]["n_projections"] == 8
  assert [e["units_removed"] for e in rep["iterations"]] == [0, 1, 2]
  assert report.table(rep) in out and "MACs 160,160 -> " in out
  # --no-latency: nothing timed (the TLC and EASIER command tests time theirs).
  assert "latency" not in out and "latency" not in rep["chosen"]["merged"]
  extra = json.loads((tmp_path / "lacoot.json").read_text())
  assert list(extra["distances"]) == list(rep["iterations"][0]["distances"])
  for u, d in rep["iterations"][0]["distances"].items():
    assert extra["distances"][u]["sliced"] == d     # the same program as the run's measure
  assert extra["latency"] is None
  assert (tmp_path / "block_distances.png").stat().st_size > 0   # the bars, and
  assert (tmp_path / "distances.png").stat().st_size > 0         # the driver's heat map
  shallow, _ = checkpoint.load_model(tmp_path / "chosen")
  assert len(lacoot.find_blocks(shallow)) == 7 - rep["chosen"]["units_removed"]
  # Refusals name what is wrong; nothing is written.
  before = _snapshot(tmp_path)
  assert cli.main(args + ["--lambda", "-1"]) == 2
  assert "λ must be a finite number >= 0" in capsys.readouterr().err
  assert cli.main(args + ["--n-projections", "0"]) == 2
  assert "n_projections must be an int >= 1" in capsys.readouterr().err
  assert cli.main(args + ["--set", "blocks=('layer2/0',)"]) == 2
  assert "projection shortcut" in capsys.readouterr().err
  assert cli.main(args + ["--pairing", "official"]) == 2
  assert "no official LaCoOT pairing" in capsys.readouterr().err
  assert cli.main(args[:-3] + ["epochs=1", "milestones=()"]) == 2   # another width
  assert "another model" in capsys.readouterr().err
  assert _snapshot(tmp_path) == before


def test_configs_load():
  from jaxdepth.train import lacoot as cmd   # pylint: disable=import-outside-toplevel
  r18 = cmd.load_config("lacoot_cifar10_resnet18")
  assert (r18["weight"], r18["pairing"], r18["order"], r18["model"]) == (
      5.0, "official", "deepest_first", "resnet18")
  mobile = cmd.load_config("lacoot_cifar10_mobilenetv2")
  assert (mobile["weight"], mobile["pairing"], mobile["model"]) == (9.0, "official",
                                                                   "mobilenet_v2")
  assert cmd.method_of(mobile).units(zoo.mobilenet_v2()) == lacoot.official_units(
      zoo.mobilenet_v2())
  assert cmd.default_config(None, None) == "lacoot_digits"
  assert cmd.default_config("resnet18", "cifar10") == "lacoot_cifar10_resnet18"


def test_remove_units_refuses_params_alone():
  # Before: the params' layers read as collections, nothing matched 'layer1/0', and the
  # removed block's weights came back untouched, silently.
  spec = zoo.digits_cnn()
  v = network.init(spec, jax.random.key(0))
  for where, call in (("remove_units", lambda: lacoot.remove_units(spec, v["params"],
                                                                   ["layer1/0"])),
                      ("LaCoOT.export", lambda: LaCoOT().export(spec, v["params"],
                                                                LaCoOT().init(spec))),
                      ("LaCoOT.apply", lambda: LaCoOT().apply(spec, v["params"],
                                                              LaCoOT().init(spec),
                                                              Decision(())))):
    with pytest.raises(TypeError, match=rf"{where} takes the variables dict .*pass variables, "
                                        rf"not variables\['params'\]"):
      call()
  _, out = lacoot.remove_units(spec, v, ["layer1/0"])   # the variables dict: the block goes
  assert "0" not in out["params"]["layer1"] and "1" in out["params"]["layer1"]


def test_a_state_of_another_method_names_its_keys_not_the_spec():
  # A gates-only state (EASIER's shape) with one gate per unit passed the size check and
  # failed on a bare state["ranked"]; one of another size blamed the spec.
  spec = zoo.digits_cnn()
  with pytest.raises(ValueError, match=r"this lacoot state lacks \['distances', 'rank', "
                                       r"'ranked'\] \(its keys: \['gates'\]; .*make it with "
                                       r"LaCoOT\(\)\.init\(spec\)"):
    LaCoOT().live_units(spec, {"gates": jnp.ones(len(LaCoOT().units(spec)))})

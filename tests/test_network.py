"""The executor: variables keyed by spec names, modes, gates as data, pools."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth import checkpoint, costs, zoo
from jaxdepth import network as N
from jaxdepth import spec as S

SPEC = S.Spec(input_shape=(6, 6, 2), name="tiny", layers=(
    S.Conv("conv", features=4, padding=1), S.BatchNorm("bn"), S.Act("relu"),
    S.Sequential("stage", layers=(
        S.Block("0", branch=(S.Conv("conv1", features=4, padding=1), S.BatchNorm("bn1"), S.Act("relu1"),
                             S.Conv("conv2", features=4, padding=1)),
                post=(S.Act("relu2", fn="relu6"),)),)),
    S.Pool("pool", "max", window=3, stride=2, padding=1),
    S.Pool("gap", "global_avg"), S.Dropout("drop", rate=0.5), S.Dense("head", features=3)))


@pytest.fixture(scope="module")
def variables():
  return N.init(SPEC, jax.random.key(0))


def x_batch(b=4, seed=1):
  return np.random.default_rng(seed).standard_normal((b, *SPEC.input_shape), dtype=np.float32)


def test_variables_are_keyed_by_spec_names(variables):
  p, bs = variables["params"], variables["batch_stats"]
  assert p["stage"]["0"]["conv1"]["kernel"].shape == (3, 3, 4, 4)
  assert "bias" not in p["conv"]
  assert p["head"]["kernel"].shape == (4, 3)
  assert set(bs) == {"bn", "stage"} and set(bs["stage"]["0"]) == {"bn1"}


def reference_forward(v, x, gates=(1.0, 1.0, 1.0)):
  """The same network written out by hand with lax ops (eval mode)."""
  p, s = v["params"], v["batch_stats"]

  def conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def bn(x, pp, ss):
    return (x - ss["mean"]) / jnp.sqrt(ss["var"] + 1e-5) * pp["scale"] + pp["bias"]

  def gate(g, f, z):
    return f(z) if g else z

  h = gate(gates[0], jax.nn.relu, bn(conv(x, p["conv"]["kernel"]), p["bn"], s["bn"]))
  blk, sb = p["stage"]["0"], s["stage"]["0"]
  r = gate(gates[1], jax.nn.relu, bn(conv(h, blk["conv1"]["kernel"]), blk["bn1"], sb["bn1"]))
  r = conv(r, blk["conv2"]["kernel"])
  h = gate(gates[2], jax.nn.relu6, r + h)
  h = jax.lax.reduce_window(jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf),
                            -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
  return h.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]


def randomised(v, seed=3):
  """Random BN statistics so that eval mode is not the identity normalisation."""
  leaves, tree = jax.tree.flatten(v["batch_stats"])
  rng = np.random.default_rng(seed)
  leaves = [rng.uniform(0.5, 2.0, l.shape).astype(np.float32) for l in leaves]
  return {**v, "batch_stats": jax.tree.unflatten(tree, leaves)}


def test_eval_forward_matches_hand_written_network(variables):
  v, x = randomised(variables), x_batch()
  np.testing.assert_allclose(N.forward(SPEC, v, x).logits, reference_forward(v, x), rtol=1e-5, atol=1e-5)


def test_train_mode_updates_batch_stats_with_batch_moments(variables):
  x = x_batch(8)
  out = N.forward(SPEC, variables, x, train=True, rng=jax.random.key(0))
  z = jax.lax.conv_general_dilated(x, variables["params"]["conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  old = variables["batch_stats"]["bn"]
  np.testing.assert_allclose(out.batch_stats["bn"]["mean"], 0.9 * old["mean"] + 0.1 * z.mean((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.batch_stats["bn"]["var"], 0.9 * old["var"] + 0.1 * z.var((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  with pytest.raises(Exception, match="dropout"):
    N.forward(SPEC, variables, x, train=True)          # dropout needs an rng in train mode


def test_gates_switch_sites_without_recompiling(variables):
  v, x = randomised(variables), x_batch()
  fwd = jax.jit(lambda g: N.forward(SPEC, v, x, gates=g).logits)
  for off in ([], ["stage/0/relu1"], ["relu", "stage/0/relu2"], list(SPEC.sites())):
    gates = N.gates_for(SPEC, off=off)
    got = fwd(gates)
    ref = reference_forward(v, x, tuple(float(g) for g in gates))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    baked = N.forward(S.with_identity(SPEC, off), v, x).logits  # the spec can bake identities in
    np.testing.assert_allclose(got, baked, rtol=1e-6, atol=1e-6)
  assert fwd._cache_size() == 1


def test_an_eager_forward_is_one_compiled_program_per_shape(variables, monkeypatch):
  """Called on concrete arrays, forward traces once and reruns the compiled program while
  the spec, settings and shapes stay; inside jit it is traced as the same function."""
  spec = S.with_identity(SPEC, ["stage/0/relu2"])    # a spec no other test runs eagerly
  traces = []
  apply = N.Network.apply
  monkeypatch.setattr(N.Network, "apply",
                      lambda self, *a, **kw: traces.append(1) or apply(self, *a, **kw))
  v, x = randomised(variables), x_batch(5)
  first = N.forward(spec, v, x).logits
  again = N.forward(spec, v, x + 1.0).logits
  assert len(traces) == 1
  np.testing.assert_allclose(first, reference_forward(v, x, (1.0, 1.0, 0.0)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(again, reference_forward(v, x + 1.0, (1.0, 1.0, 0.0)), rtol=1e-5,
                             atol=1e-5)
  N.forward(spec, v, x_batch(6))                     # another batch size: another program
  assert len(traces) == 2
  inside = jax.jit(lambda v, x: N.forward(spec, v, x).logits)(v, x)
  assert len(traces) == 3
  np.testing.assert_allclose(inside, first, rtol=1e-6, atol=1e-6)


def test_bad_call_arguments_are_refused(variables):
  with pytest.raises(ValueError, match="gates must have shape \\(3,\\)"):
    N.forward(SPEC, variables, x_batch(), gates=jnp.ones(2))
  with pytest.raises(ValueError, match="does not match the spec's input_shape"):
    N.forward(SPEC, variables, jnp.zeros((2, 5, 5, 2)))
  with pytest.raises(KeyError, match="'nope'"):
    N.gates_for(SPEC, off=["nope"])
  # Variables of another spec: a wider first conv, a missing block, no BatchNorm statistics.
  wider = {**variables, "params": {**variables["params"], "conv": {
      **variables["params"]["conv"], "kernel": jnp.zeros((3, 3, 2, 8))}}}
  for bad, flax_says in ((wider, "expected to generate shape"),
                         ({"params": {**variables["params"], "stage": {}},
                           "batch_stats": variables["batch_stats"]}, "Could not find parameter"),
                         ({"params": variables["params"]}, "collection \"batch_stats\"")):
    with pytest.raises(ValueError, match=f"variables do not fit spec 'tiny'; were they made for "
                                         f"another spec\\?.*{flax_says}"):
      N.forward(SPEC, bad, x_batch())


def test_inputs_and_gates_of_the_wrong_kind_are_named(variables):
  x = x_batch()
  with pytest.raises(ValueError, match=r"x needs a leading batch axis: \(B, 6, 6, 2\).*x\[None\]"):
    N.forward(SPEC, variables, x[0])
  np.testing.assert_allclose(N.forward(SPEC, variables, x[0][None]).logits,
                             N.forward(SPEC, variables, x).logits[:1], rtol=1e-5, atol=1e-6)
  with pytest.raises(TypeError, match=r"x must be an array \(B, 6, 6, 2\), got a list"):
    N.forward(SPEC, variables, x.tolist())
  with pytest.raises(TypeError, match=r"gates must be an array of shape \(3,\).*got a dict; "
                                      r"build it by name with jaxdepth.gates_for\(spec, values="):
    N.forward(SPEC, variables, x, gates={"relu": 0.0})
  with pytest.raises(TypeError, match=r"got a list; build it by name with .*off=\["):
    N.forward(SPEC, variables, x, gates=[1.0, 0.0, 1.0])


def test_init_takes_an_int_seed_as_its_key_and_names_anything_else():
  spec = S.Spec(input_shape=(4,), layers=(S.Dense("head", features=3),))
  keyed = N.init(spec, jax.random.key(7))
  for seed in (7, np.int64(7)):
    seeded = N.init(spec, seed)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), seeded, keyed))
  for bad, named in (("7", "the str '7'"), (0.5, "the float 0.5"), (True, "the bool True"),
                     (jnp.zeros(2), "a float32 array")):
    with pytest.raises(TypeError, match=f"rng must be a JAX key, e.g. jax.random.key\\(0\\), "
                                        f"or an int seed; got {named}"):
      N.init(spec, bad)


def test_init_names_a_zoo_name_a_zoo_function_or_swapped_arguments_in_place_of_the_spec():
  with pytest.raises(TypeError, match=r"init\(spec, rng\): spec must be a jaxdepth Spec, got the "
                                      r"string 'digits_cnn'; .*jaxdepth.zoo.get\('digits_cnn'\)"):
    N.init("digits_cnn", 0)
  with pytest.raises(TypeError, match=r"got the function digits_cnn; call it .*digits_cnn\(\)"):
    N.init(zoo.digits_cnn, 0)
  with pytest.raises(TypeError, match=r"init\(spec, rng\): spec must be a jaxdepth Spec, got a "
                                      r"dict; check the order"):
    N.init({"params": {}}, S.Spec(input_shape=(4,), layers=(S.Dense("head", features=3),)))


def test_bf16_compute_keeps_float32_params_and_output(variables):
  out = N.forward(SPEC, variables, x_batch(), dtype=jnp.bfloat16)
  f32 = N.forward(SPEC, variables, x_batch()).logits
  assert out.logits.dtype == jnp.float32
  assert not np.array_equal(out.logits, f32)   # it did compute in bfloat16
  np.testing.assert_allclose(out.logits, f32, atol=0.02)
  trained = N.forward(SPEC, variables, x_batch(), train=True, rng=jax.random.key(0),
                      dtype=jnp.bfloat16)
  assert {v.dtype for v in jax.tree.leaves(trained.batch_stats)} == {jnp.dtype(jnp.float32)}


def test_bf16_residual_block_on_a_tiny_map_stays_finite_on_the_cpu():
  """Biased 3x3 convs on a 2x2 map, a residual add, ReLU, global average pool (a
  collapsed ResNet's tail): as cpu_ops' matrix products XLA:CPU miscompiled this in
  bfloat16 from a batch of about 64 (NaN, inf, values off by 1e37), so bfloat16
  convs keep lax's."""
  block = S.Block("b", branch=(S.Conv("conv1", features=16, padding=1, bias=True), S.Act("relu1"),
                               S.Conv("conv2", features=16, padding=1, bias=True)),
                  post=(S.Act("relu2"),))
  spec = S.Spec(input_shape=(2, 2, 16), layers=(block, S.Pool("gap", "global_avg")), name="tail")
  variables = N.init(spec, jax.random.key(0))
  x = np.abs(np.random.default_rng(0).standard_normal((256, 2, 2, 16), dtype=np.float32))
  bf16 = np.asarray(N.forward(spec, variables, x, dtype=jnp.bfloat16).logits)
  f32 = np.asarray(N.forward(spec, variables, x).logits)
  assert np.isfinite(bf16).all()
  np.testing.assert_allclose(bf16, f32, atol=0.05 * np.abs(f32).max())


def test_train_mode_without_a_dropout_key_says_to_pass_one(variables):
  with pytest.raises(ValueError, match=r"spec 'tiny' has dropout.*pass rng=jax.random.key"):
    N.forward(SPEC, variables, x_batch(), train=True)
  a, b = (N.forward(SPEC, variables, x_batch(), train=True, rng=jax.random.key(k)).logits
          for k in (0, 1))
  assert not np.array_equal(a, b)   # the key does draw the dropout


@pytest.mark.parametrize("size, out", [((7, 5), (3, 2)), ((1, 1), (7, 7)), ((4, 4), (2, 2))])
def test_adaptive_avg_pool_matches_pytorch_bins(size, out):
  x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
  ref = np.zeros((2, *out, 3), np.float32)
  for i in range(out[0]):
    for j in range(out[1]):
      h0, h1 = (i * size[0]) // out[0], -(-((i + 1) * size[0]) // out[0])
      w0, w1 = (j * size[1]) // out[1], -(-((j + 1) * size[1]) // out[1])
      ref[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  np.testing.assert_allclose(N.adaptive_avg_pool(jnp.asarray(x), out), ref, rtol=1e-6, atol=1e-6)


def test_site_counts_are_listed_in_site_order(variables):
  out = N.forward(SPEC, variables, x_batch(), collect_stats=True, capture=("relu",))
  assert list(out.site_counts) == list(SPEC.sites())
  # each channel's pre-activations counted by sign, recounted here from the site's input
  z = np.asarray(out.captured["relu"][0])
  np.testing.assert_array_equal(np.asarray(out.site_counts["relu"])[:2],
                                [(z > 0).sum((0, 1, 2)), (z < 0).sum((0, 1, 2))])
  assert np.all(np.asarray(out.site_counts["relu"]).sum(0) == 4 * 6 * 6)


def test_a_captured_node_holds_what_it_passes_on_under_its_node_gate(variables):
  v, x = variables, x_batch()
  inner = []
  for gate in (1.0, 0.0):
    out = N.forward(SPEC, v, x, capture=("stage/0", "stage/0/conv2", "pool"),
                    node_gates={"stage/0": jnp.float32(gate)})
    block_in, block_out = (np.asarray(z) for z in out.captured["stage/0"])
    np.testing.assert_array_equal(block_out, np.asarray(out.captured["pool"][0]))
    if gate == 0:    # gated off: the identity, its output its input
      np.testing.assert_array_equal(block_out, block_in)
    else:
      assert not np.allclose(block_out, block_in)
    inner.append(np.asarray(out.captured["stage/0/conv2"][1]))
  # a node inside it keeps the output it computed, gated or not (the branch's last conv)
  np.testing.assert_array_equal(inner[0], inner[1])


def test_init_is_repeatable_and_follows_pytorch_initialisers():
  spec = S.Spec(input_shape=(8, 8, 16), layers=(
      S.Conv("conv", features=64, kernel=3, padding=1), S.BatchNorm("bn"), S.Flatten("flat"),
      S.Dense("head", features=256)))
  a, b = N.init(spec, jax.random.key(0)), N.init(spec, jax.random.key(0))
  c = N.init(spec, jax.random.key(1))
  assert jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b))
  assert not np.array_equal(a["params"]["conv"]["kernel"], c["params"]["conv"]["kernel"])
  np.testing.assert_array_equal(N.init(spec, jax.random.PRNGKey(0))["params"]["conv"]["kernel"],
                                a["params"]["conv"]["kernel"])        # raw uint32 keys work too
  kernel = np.asarray(a["params"]["conv"]["kernel"])                  # Kaiming normal, fan_out
  assert kernel.std() == pytest.approx(np.sqrt(2.0 / (64 * 9)), rel=0.03)
  dense, fan_in = np.asarray(a["params"]["head"]["kernel"]), 8 * 8 * 64  # U(±1/sqrt(fan_in))
  assert np.abs(dense).max() <= 1 / np.sqrt(fan_in) and dense.std() == pytest.approx(
      1 / np.sqrt(3 * fan_in), rel=0.03)
  np.testing.assert_array_equal(a["params"]["bn"]["scale"], 1.0)
  np.testing.assert_array_equal(a["batch_stats"]["bn"]["var"], 1.0)


@pytest.mark.parametrize("hw, kernel, stride, pad, groups", [
    (2, 3, 1, 1, 1), (1, 3, 1, 1, 1), (2, 3, 2, 1, 1), (3, 5, 1, 2, 1), (2, (3, 1), 1, (1, 0), 1),
    (6, 3, 1, 1, 4), (7, 3, 2, 1, 4), (5, (3, 1), (2, 1), ((1, 0), (0, 2)), 4), (2, 3, 1, 1, 4)])
def test_cpu_convolution_paths_equal_lax_with_gradients(hw, kernel, stride, pad, groups):
  """Tiny maps (patches x kernel) and depthwise convs (shifted taps) on CPU: same
  values and gradients as lax.conv_general_dilated."""
  node = S.Conv("c", features=4 if groups == 4 else 5, kernel=kernel, stride=stride, padding=pad,
                groups=groups)
  x = np.random.default_rng(0).standard_normal((3, hw, hw, 4), dtype=np.float32)
  k = np.random.default_rng(1).standard_normal((*node.kernel, 4 // groups, node.features),
                                               dtype=np.float32)
  dn = ("NHWC", "HWIO", "NHWC")

  def via(fn):
    return lambda x, k: jnp.sum(jnp.sin(fn(x, k, node.stride, node.padding, dimension_numbers=dn,
                                           feature_group_count=groups)))

  ours, ref = via(N.conv_general_dilated), via(jax.lax.conv_general_dilated)
  np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(ref, (0, 1))(x, k)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_arguments_swapped_or_in_the_wrong_place_are_named(variables, tmp_path):
  x = x_batch()
  with pytest.raises(TypeError, match=r"forward\(spec, variables, x\): spec must be a jaxdepth "
                                      r"Spec, got a dict; check the order of the arguments"):
    N.forward(variables, SPEC, x)
  with pytest.raises(TypeError, match=r"variables must be the dict jaxdepth.init makes .*got a "
                                      r"Spec"):
    N.forward(SPEC, SPEC, x)
  with pytest.raises(TypeError, match=r"save_model\(directory, spec, variables\): spec must be "
                                      r"a jaxdepth Spec, got a dict"):
    checkpoint.save_model(tmp_path / "m", variables, SPEC)
  assert not (tmp_path / "m").exists()
  with pytest.raises(TypeError, match=r"summary\(spec\): spec must be a jaxdepth Spec"):
    costs.summary(variables)

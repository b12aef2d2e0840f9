"""cpu_ops: every formulation of a convolution, max-pool and BatchNorm, against lax and Flax (values and gradients)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from jaxdepth import cpu_ops, network, zoo
from jaxdepth import spec as S

from _explicit_axes import assert_unsharded_loss_and_gradients

NHWC = ("NHWC", "HWIO", "NHWC")


def _loss(conv):
  """A scalar whose gradient is a different number at every output position."""
  def loss(x, w):
    y = conv(x, w)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)
  return loss


def _values_and_grads(conv):
  """``conv(x, w)`` and the gradients of :func:`_loss` in ``x`` and ``w``, one compiled call."""
  return jax.jit(lambda x, w: (conv(x, w), jax.grad(_loss(conv), (0, 1))(x, w)))


def _check(how, x_shape, w_shape, strides, padding, groups=1):
  x = np.random.default_rng(0).standard_normal(x_shape, dtype=np.float32)
  w = np.random.default_rng(1).standard_normal(w_shape, dtype=np.float32)
  ours = lambda x, w: cpu_ops.conv(x, w, strides, padding, groups, how=how)
  ref = lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC,
                                              feature_group_count=groups)
  (y, grads), (y_ref, grads_ref) = (_values_and_grads(f)(x, w) for f in (ours, ref))
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(grads, grads_ref):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# (x shape, kernel (kh, kw, C, O), strides, padding): strided, asymmetric padding,
# non-square kernels, a kernel larger than the map, a 1x1 map.
DENSE_SHAPES = [
    ((3, 5, 5, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    ((2, 6, 5, 4), (3, 3, 4, 2), (2, 2), ((1, 1), (1, 1))),
    ((2, 4, 4, 2), (3, 2, 2, 3), (2, 1), ((1, 0), (0, 2))),
    ((2, 2, 2, 5), (3, 3, 5, 3), (1, 1), ((1, 1), (1, 1))),
    ((2, 4, 4, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1))),
    ((3, 1, 1, 4), (3, 3, 4, 2), (1, 1), ((1, 1), (1, 1))),
    ((2, 3, 3, 3), (1, 1, 3, 4), (2, 2), ((0, 0), (0, 0))),
    ((2, 3, 3, 2), (5, 5, 2, 3), (1, 1), ((2, 2), (2, 2))),
]


@pytest.mark.parametrize("how", ["xla", "patches", "dense"])
@pytest.mark.parametrize("x_shape, w_shape, strides, padding", DENSE_SHAPES)
def test_dense_formulations_equal_lax_values_and_gradients(how, x_shape, w_shape, strides, padding):
  _check(how, x_shape, w_shape, strides, padding)


@pytest.mark.parametrize("x_shape, w_shape, strides, padding", [
    ((2, 16, 16, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    ((2, 16, 16, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3)))])
def test_a_few_channel_stem_equals_lax_values_and_gradients(x_shape, w_shape, strides, padding):
  """On a map this large the patches formulation's forward pass is XLA's convolution."""
  assert cpu_ops.plan(x_shape, w_shape, strides, padding) == "patches"
  assert cpu_ops._lax_forward(x_shape, w_shape)   # pylint: disable=protected-access
  _check("patches", x_shape, w_shape, strides, padding)


@pytest.mark.parametrize("x_shape, kernel, strides, padding", [
    ((2, 6, 6, 4), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((2, 7, 7, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 5, 4, 4), (3, 1), (2, 1), ((1, 0), (0, 2))),
    ((2, 2, 2, 4), (3, 3), (1, 1), ((1, 1), (1, 1))),
])
def test_depthwise_equals_lax_values_and_gradients(x_shape, kernel, strides, padding):
  c = x_shape[-1]
  _check("depthwise", x_shape, (*kernel, 1, c), strides, padding, groups=c)


@pytest.mark.parametrize("x_shape, w_shape", [
    ((2, 4, 4, 3), (3, 3, 3, 5)),      # the smallest even map: every tile touches the padding
    ((3, 6, 8, 4), (3, 3, 4, 2)),      # non-square
    ((2, 5, 7, 3), (3, 3, 3, 4)),      # odd sizes: a zero row and column complete the tiles
    ((1, 3, 2, 2), (3, 3, 2, 2)),
])
@pytest.mark.parametrize("how", ["winograd", "winograd_dw"])
def test_winograd_equals_lax_values_and_gradients(how, x_shape, w_shape):
  _check(how, x_shape, w_shape, (1, 1), ((1, 1), (1, 1)))


def test_winograd_keeps_the_dtype():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 3), dtype=np.float32),
                  jnp.bfloat16)
  w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 3, 2), dtype=np.float32),
                  jnp.bfloat16)
  y = cpu_ops.conv(x, w, (1, 1), ((1, 1), (1, 1)), how="winograd")
  y_ref = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(jnp.float32), y_ref.astype(jnp.float32), rtol=0.05, atol=0.1)


def test_grouped_convolution_keeps_lax():
  """A grouped, not depthwise, convolution is lax's own (its gradient jax's), one per group."""
  x = np.random.default_rng(0).standard_normal((2, 5, 5, 4), dtype=np.float32)
  w = np.random.default_rng(1).standard_normal((3, 3, 2, 6), dtype=np.float32)
  strides, padding = (2, 1), ((1, 0), (0, 2))
  assert cpu_ops.plan(x.shape, w.shape, strides, padding, groups=2) == "xla"
  ours = lambda x, w: cpu_ops.conv(x, w, strides, padding, groups=2)
  eqns = jax.make_jaxpr(ours)(x, w).jaxpr.eqns
  assert [(e.primitive.name, e.params.get("feature_group_count")) for e in eqns] == [
      ("conv_general_dilated", 2)]

  def per_group(x, w):   # group g: input channels 2g, 2g+1 -> output channels 3g..3g+2
    return jnp.concatenate([
        lax.conv_general_dilated(x[..., 2 * g:2 * g + 2], w[..., 3 * g:3 * g + 3], strides,
                                 padding, dimension_numbers=NHWC) for g in range(2)], axis=-1)

  (y, grads), (y_ref, grads_ref) = (_values_and_grads(f)(x, w) for f in (ours, per_group))
  assert y.shape == y_ref.shape == (2, 2, 5, 6)   # (5 + 1 - 3) // 2 + 1, 5 + 2 - 3 + 1
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(grads, grads_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("x_shape, w_shape, groups, expected", [
    ((128, 2, 2, 512), (3, 3, 512, 512), 1, "dense"),    # ResNet-18 layer4 at training
    ((1, 2, 2, 512), (3, 3, 512, 512), 1, "patches"),    # ... at batch 1: no matrix to build
    ((128, 8, 8, 64), (1, 1, 64, 128), 1, "patches"),    # 1x1
    ((128, 32, 32, 3), (3, 3, 3, 64), 1, "patches"),     # RGB stem
    ((128, 16, 16, 64), (3, 3, 64, 64), 1, "winograd_dw"),  # ResNet-18 layer1
    ((16, 16, 16, 64), (3, 3, 64, 64), 1, "xla"),        # ... at batch 16: too few tiles
    ((128, 32, 32, 64), (3, 3, 64, 64), 1, "xla"),       # a 32x32 map
    ((128, 16, 16, 32), (3, 3, 32, 32), 1, "xla"),       # too few channels
    ((128, 8, 8, 64), (3, 3, 64, 64), 1, "xla"),         # an 8x8 map
    ((128, 8, 8, 128), (3, 3, 128, 128), 1, "winograd"),  # ResNet-18 layer2
    ((128, 4, 4, 256), (3, 3, 256, 256), 1, "winograd"),  # ResNet-18 layer3
    ((1, 4, 4, 256), (3, 3, 256, 256), 1, "xla"),         # ... at batch 1: too few tiles
    ((128, 16, 16, 32), (3, 3, 1, 32), 32, "depthwise"),
    ((128, 16, 16, 32), (3, 3, 16, 32), 2, "xla"),
])
def test_plan_picks_the_formulation_for_the_shapes(x_shape, w_shape, groups, expected):
  assert cpu_ops.plan(x_shape, w_shape, (1, 1), ((1, 1), (1, 1)), groups) == expected


def test_bad_formulations_are_refused():
  x, w = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(ValueError, match="unknown convolution formulation 'fft'"):
    cpu_ops.conv(x, w, how="fft")
  with pytest.raises(ValueError, match="does not apply"):
    cpu_ops.conv(x, w, how="depthwise")
  with pytest.raises(ValueError, match="does not apply"):
    cpu_ops.conv(x, w, strides=(2, 2), padding=((1, 1), (1, 1)), how="winograd")
  with pytest.raises(ValueError, match="does not apply"):
    cpu_ops.conv(x, jnp.zeros((5, 5, 2, 2)), padding=((1, 1), (1, 1)), how="winograd")
  with pytest.raises(ValueError, match="does not apply"):
    cpu_ops.conv(x, w, strides=(2, 2), padding=((1, 1), (1, 1)), how="winograd_dw")
  with pytest.raises(ValueError, match="non-negative padding"):
    cpu_ops.conv(x, w, padding=((-1, 0), (0, 0)))


@pytest.mark.parametrize("x_shape, window, strides, padding", [
    ((2, 8, 8, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),    # the ResNet stem's pool
    ((2, 6, 6, 3), (2, 2), (2, 2), ((0, 0), (0, 0))),
    ((2, 5, 7, 2), (3, 2), (1, 2), ((1, 0), (0, 1))),
    ((2, 9, 7, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),    # odd maps: a last row read by one window
    ((2, 7, 8, 2), (2, 2), (3, 3), ((0, 1), (1, 0))),    # stride > window: inputs no window reads
    ((1, 6, 6, 2), (3, 3), (1, 1), ((1, 1), (1, 1))),    # every input in nine windows
])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_equals_lax_values_and_gradients(x_shape, window, strides, padding, ties):
  x = np.random.default_rng(2).standard_normal(x_shape, dtype=np.float32)
  if ties:   # few distinct values: windows with several maxima, inputs shared by windows
    x = np.round(x)
  (y, (dx, _)), (y_ref, (dx_ref, _)) = (
      _values_and_grads(lambda x, _, pool=pool: pool(x, window, strides, padding))(x, x)
      for pool in (cpu_ops.max_pool, nn.max_pool))
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-7)


def _flax_batch_norm(x, scale, bias, epsilon):
  """Flax's training-mode BatchNorm and the batch statistics it averages into its running ones."""
  momentum = 0.5
  features = x.shape[-1]
  stats = {"mean": jnp.zeros(features), "var": jnp.zeros(features)}
  y, updated = nn.BatchNorm(use_running_average=False, momentum=momentum, epsilon=epsilon).apply(
      {"params": {"scale": scale, "bias": bias}, "batch_stats": stats}, x, mutable=["batch_stats"])
  return (y, updated["batch_stats"]["mean"] / (1 - momentum),
          updated["batch_stats"]["var"] / (1 - momentum))


@pytest.mark.parametrize("x_shape, offset", [((4, 5, 3, 6), 0.0), ((3, 4, 4, 5), 3.0), ((16, 7), 1.0)])
def test_batch_norm_equals_flax_values_and_gradients(x_shape, offset):
  rng = np.random.default_rng(0)
  x = offset + 2.0 * rng.standard_normal(x_shape, dtype=np.float32)
  scale = 1.0 + 0.3 * rng.standard_normal(x_shape[-1:], dtype=np.float32)
  bias = 0.3 * rng.standard_normal(x_shape[-1:], dtype=np.float32)
  # A cotangent for each output: y's differs at every position, the statistics' per channel.
  weights = [rng.standard_normal(s, dtype=np.float32) for s in (x_shape, x_shape[-1:],
                                                                x_shape[-1:])]

  def values_and_grads(batch_norm):
    loss = lambda *args: sum(jnp.sum(jnp.sin(o) * w) for o, w in zip(batch_norm(*args, 1e-3),
                                                                      weights))
    return jax.jit(lambda *a: (batch_norm(*a, 1e-3), jax.grad(loss, (0, 1, 2))(*a)))(
        x, scale, bias)

  (outs, grads), (outs_ref, grads_ref) = (values_and_grads(f) for f in (cpu_ops.batch_norm,
                                                                         _flax_batch_norm))
  for a, b in zip(outs, outs_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for a, b in zip(grads, grads_ref):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("x_shape, out, offset", [((4, 5, 3, 6), 9, 0.0), ((3, 4, 4, 2), 7, 2.0),
                                                 ((2, 3, 3, 5), 4, 0.5)])
def test_pointwise_conv_batch_norm_equals_conv_then_flax_batch_norm(x_shape, out, offset):
  rng = np.random.default_rng(0)
  x = offset + rng.standard_normal(x_shape, dtype=np.float32)
  w = rng.standard_normal((x_shape[-1], out), dtype=np.float32)
  scale = 1.0 + 0.3 * rng.standard_normal((out,), dtype=np.float32)
  bias = 0.3 * rng.standard_normal((out,), dtype=np.float32)
  weights = [rng.standard_normal(s, dtype=np.float32) for s in ((*x_shape[:-1], out), (out,),
                                                                (out,))]

  def reference(x, w, scale, bias, epsilon):
    y = lax.conv_general_dilated(x, w[None, None], (1, 1), "VALID", dimension_numbers=NHWC)
    return _flax_batch_norm(y, scale, bias, epsilon)

  def values_and_grads(fused):
    loss = lambda *args: sum(jnp.sum(jnp.sin(o) * v) for o, v in zip(fused(*args, 1e-3), weights))
    return jax.jit(lambda *a: (fused(*a, 1e-3), jax.grad(loss, (0, 1, 2, 3))(*a)))(
        x, w, scale, bias)

  (outs, grads), (outs_ref, grads_ref) = (values_and_grads(f) for f in (
      cpu_ops.pointwise_conv_batch_norm, reference))
  for a, b in zip(outs, outs_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for a, b in zip(grads, grads_ref):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _explicit_batch(a, spec=jax.P("data")):
  """``a`` with its batch sharded over ``jax.make_mesh``'s default (Explicit) axes
  (``spec=jax.P()``: replicated there)."""
  mesh = jax.make_mesh((2,), ("data",))
  assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
  return jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))


@pytest.mark.parametrize("op, x_shape, w_shape", [
    ("patches", (4, 5, 5, 3), (3, 3, 3, 4)), ("dense", (4, 2, 2, 5), (3, 3, 5, 3)),
    ("xla", (4, 5, 5, 3), (3, 3, 3, 4)), ("max_pool", (4, 8, 8, 3), None),
    ("pointwise_bn", (4, 5, 3, 6), (6, 9))])
def test_a_batch_sharded_over_explicit_axes_gives_the_unsharded_values_and_gradients(
    op, x_shape, w_shape):
  """JAX asks where a product over a sharded batch (a weight gradient, a Gram matrix) and a
  merge of the sharded batch go: replicated, and the batch's sharding."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal(x_shape, dtype=np.float32)
  w = rng.standard_normal(w_shape or (1,), dtype=np.float32)
  fn = {"max_pool": lambda x, w: cpu_ops.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))) * w,
        "pointwise_bn": lambda x, w: cpu_ops.pointwise_conv_batch_norm(
            x, w, jnp.ones(9), jnp.zeros(9), 1e-3)[0]}.get(
                op, lambda x, w: cpu_ops.conv(x, w, (1, 1), ((1, 1), (1, 1)), how=op))
  (y, grads), (y_ref, grads_ref) = (_values_and_grads(fn)(a, w) for a in (_explicit_batch(x), x))
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(grads, grads_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match=r"'winograd' does not run on a batch sharded over "
                                       r"Explicit mesh axes \('data',\).*make_mesh\(\)"):
    cpu_ops.conv(_explicit_batch(np.ones((2, 4, 4, 3), np.float32)), np.ones((3, 3, 3, 2),
                 np.float32), (1, 1), ((1, 1), (1, 1)), how="winograd")


def test_the_executor_trains_a_batch_sharded_over_explicit_axes(monkeypatch):
  """digits_cnn's fused 1x1 convolution + BatchNorm (a Gram matrix over the batch) and the
  weight gradients, jitted on a batch over ``jax.make_mesh`` (the variables replicated there,
  as JAX's own gradients of Flax's Dense need): the unsharded numbers."""
  monkeypatch.delenv(cpu_ops.ENV, raising=False)
  x = np.random.default_rng(0).standard_normal((4, 8, 8, 1), dtype=np.float32)
  assert_unsharded_loss_and_gradients(zoo.digits_cnn(width=8), x)


@pytest.mark.parametrize("in_channels, out_channels, pays", [
    (16, 96, True), (24, 144, True), (64, 384, True),       # MobileNetV2's expand layers
    (96, 576, False), (160, 960, False), (144, 24, False), (32, 32, False)])
def test_the_fused_pointwise_batch_norm_is_chosen_where_it_pays(in_channels, out_channels, pays):
  assert cpu_ops.pointwise_batch_norm_pays(in_channels, out_channels) is pays


def test_the_executor_trains_batch_norm_as_flax_does(monkeypatch):
  """Train-mode forward, updated statistics and gradients with cpu_ops equal those with Flax's BatchNorm."""
  spec = S.Spec((6, 6, 3), [
      S.Conv("c1", 4, 3, padding=1), S.BatchNorm("bn1", momentum=0.8), S.Act("relu1", "relu"),
      S.Conv("c2", 5, 3, stride=2, padding=1), S.BatchNorm("bn2"), S.Act("relu2", "relu"),
      S.Conv("expand", 12, 1), S.BatchNorm("bn3"), S.Act("relu3", "relu6"),
      S.Flatten("flat"), S.Dense("fc", 5)], name="bn")
  variables = network.init(spec, jax.random.key(0))
  x = 1.0 + np.random.default_rng(1).standard_normal((4, 6, 6, 3), dtype=np.float32)

  def train_forward():
    def loss(params):
      out = network.forward(spec, {**variables, "params": params}, x, train=True)
      weights = jnp.arange(out.logits.size).reshape(out.logits.shape) / out.logits.size
      return jnp.sum(jnp.sin(out.logits) * weights), out.batch_stats
    names = {e.primitive.name for e in jax.make_jaxpr(loss)(variables["params"]).eqns}
    return names, jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])

  fused = []
  monkeypatch.setattr(cpu_ops, "pointwise_conv_batch_norm",
                      lambda *a, f=cpu_ops.pointwise_conv_batch_norm: fused.append(a[1].shape) or f(*a))
  names, ((value, stats), grads) = train_forward()
  assert fused and set(fused) == {(5, 12)}           # expand + bn3 as one pass, c1 and c2 not
  monkeypatch.setenv(cpu_ops.ENV, "xla")
  names_ref, ((value_ref, stats_ref), grads_ref) = train_forward()
  assert "custom_vjp_call" in names and "custom_vjp_call" not in names_ref
  np.testing.assert_allclose(value, value_ref, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves((stats, grads)), jax.tree.leaves((stats_ref, grads_ref))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert jax.tree.structure(stats) == jax.tree.structure(stats_ref)


def test_a_captured_or_gated_pointwise_conv_keeps_its_own_output(monkeypatch):
  """The fused 1x1 conv + BatchNorm steps aside where a node's own output is asked for."""
  spec = S.Spec((4, 4, 2), [S.Conv("expand", 8, 1), S.BatchNorm("bn"), S.Act("relu", "relu6"),
                            S.Flatten("flat"), S.Dense("fc", 3)], name="pw")
  variables = network.init(spec, jax.random.key(0))
  params = variables["params"]
  x = np.random.default_rng(1).standard_normal((3, 4, 4, 2), dtype=np.float32)
  fused = []
  monkeypatch.setattr(cpu_ops, "pointwise_conv_batch_norm",
                      lambda *a, f=cpu_ops.pointwise_conv_batch_norm: fused.append(1) or f(*a))
  conv = x @ params["expand"]["kernel"][0, 0]

  captured = network.forward(spec, variables, x, train=True, capture=("expand",)).captured
  np.testing.assert_allclose(captured["expand"][1], conv, rtol=1e-5, atol=1e-6)
  logits = network.forward(spec, variables, x, train=True, node_gates={"bn": 0.0}).logits
  expected = jax.nn.relu6(conv).reshape(3, -1) @ params["fc"]["kernel"] + params["fc"]["bias"]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  assert not fused
  network.forward(spec, variables, x, train=True)
  assert fused


def test_a_fused_pointwise_conv_initialises_as_flax_does(monkeypatch):
  """Initialised in training mode through the fused op, the variables are Flax's Conv and BatchNorm's."""
  spec = S.Spec((4, 4, 2), [S.Conv("expand", 8, 1), S.BatchNorm("bn"), S.Act("relu", "relu6"),
                            S.Flatten("flat"), S.Dense("fc", 3)], name="pw")
  x = jnp.ones((2, 4, 4, 2))
  fused = []
  monkeypatch.setattr(cpu_ops, "pointwise_conv_batch_norm",
                      lambda *a, f=cpu_ops.pointwise_conv_batch_norm: fused.append(1) or f(*a))
  ours = network.Network(spec).init(jax.random.key(0), x, train=True)
  assert fused
  monkeypatch.setenv(cpu_ops.ENV, "xla")
  flax_ones = network.Network(spec).init(jax.random.key(0), x, train=True)
  assert jax.tree.structure(ours) == jax.tree.structure(flax_ones)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(flax_ones)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_the_executor_uses_them_on_the_cpu_only(monkeypatch, backend):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  x, w = jnp.zeros((2, 4, 4, 3)), jnp.zeros((3, 3, 3, 5))
  conv = jax.make_jaxpr(lambda x, w: network.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC))(x, w)
  pool = jax.make_jaxpr(lambda x: network.pool(S.Pool("p", "max", window=3, stride=2, padding=1),
                                               x))(x)
  names = {e.primitive.name for e in conv.eqns}, {e.primitive.name for e in pool.eqns}
  if backend == "cpu":
    assert names == ({"custom_vjp_call"}, {"custom_vjp_call"})
  else:
    assert "conv_general_dilated" in names[0] and "custom_vjp_call" not in names[0] | names[1]


def test_xla_ops_on_request_for_forward_mode(monkeypatch):
  """Custom VJPs refuse ``jax.jvp``; ``JAXDEPTH_CPU_OPS=xla`` gives lax's ops and Flax's BatchNorm back."""
  spec = S.Spec((6, 6, 2), [
      S.Conv("c1", 4, 3, padding=1), S.BatchNorm("bn1"), S.Act("relu1", "relu"),
      S.Pool("p", "max", window=3, stride=2, padding=1),
      S.Conv("c2", 3, 3, stride=2, padding=1), S.Act("relu2", "relu"),
      S.Flatten("flat"), S.Dense("fc", 5)], name="fwd")
  variables = network.init(spec, jax.random.key(0))
  x = np.random.default_rng(1).standard_normal((2, 6, 6, 2), dtype=np.float32)
  t = np.random.default_rng(2).standard_normal(x.shape, dtype=np.float32)
  logits = lambda x: network.forward(spec, variables, x, train=True).logits
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jvp(logits, (x,), (t,))
  jacobian = jax.jacrev(logits)(x)                   # reverse mode through cpu_ops
  monkeypatch.setenv(cpu_ops.ENV, "xla")
  assert not cpu_ops.wanted()
  names = {e.primitive.name for e in jax.make_jaxpr(logits)(x).eqns}
  assert "conv_general_dilated" in names and "custom_vjp_call" not in names
  y, tangent = jax.jvp(logits, (x,), (t,))
  np.testing.assert_allclose(y, logits(x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(tangent, jnp.einsum("bkaxyc,axyc->bk", jacobian, t),
                             rtol=1e-4, atol=1e-5)


def test_a_bad_cpu_ops_setting_is_named():
  with pytest.raises(ValueError, match="JAXDEPTH_CPU_OPS='fast'.*'xla'"):
    cpu_ops.wanted({cpu_ops.ENV: "fast"})
  assert cpu_ops.wanted({cpu_ops.ENV: " XLA "}) is False
  assert cpu_ops.wanted({}) is (jax.default_backend() == "cpu")

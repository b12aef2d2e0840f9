"""The zoo's specs against the PyTorch reference architectures (``docs/models.md``)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from jaxdepth import costs, network, zoo
from jaxdepth.spec import Act, Block, Conv, Spec


def _abstract_variables(spec):
  """Initialised variable shapes without computing them (fast for 100M-parameter nets)."""
  return jax.eval_shape(functools.partial(network.init, spec), jax.random.key(0))


def _param_count(variables):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


# Parameter counts of the PyTorch reference models, sum(p.numel() for p in model.parameters()).
@pytest.mark.parametrize("name, kwargs, expected", [
    ("resnet18", dict(num_classes=10), 11_173_962),          # papers' CIFAR ResNet-18
    ("resnet18_imagenet", dict(num_classes=1000), 11_689_512),  # torchvision resnet18
    ("mobilenet_v2_imagenet", dict(num_classes=1000), 3_504_872),  # torchvision mobilenet_v2
    ("mobilenet_v2", dict(num_classes=10), 2_236_682),
    ("vgg16_bn", dict(num_classes=1000, input_shape=(224, 224, 3)), 138_365_992),
    ("vgg16_bn", dict(num_classes=1000), 138_365_992),        # adaptive pool: same at 32x32
])
def test_parameter_counts_match_pytorch(name, kwargs, expected):
  spec = zoo.get(name, **kwargs)
  assert costs.count_params(spec) == expected
  assert _param_count(_abstract_variables(spec)) == expected


@pytest.mark.parametrize("name, sites", [
    ("resnet18", 17), ("resnet18_imagenet", 17), ("resnet20", 19), ("mobilenet_v2", 35),
    ("mobilenet_v2_imagenet", 35), ("vgg16_bn", 15), ("digits_cnn", 6),
    ("digits_plain", 5)])
def test_site_counts(name, sites):
  spec = zoo.get(name)
  assert len(spec.sites()) == sites
  assert Spec.from_json(spec.to_json()) == spec


def test_resnet18_cifar_layout_and_intermediate_shapes():
  spec = zoo.resnet18()
  assert spec.sites()[:4] == ("relu", "layer1/0/relu1", "layer1/0/relu2", "layer1/1/relu1")
  conv1 = spec.node("conv1")
  assert (conv1.kernel, conv1.stride, conv1.padding, conv1.bias) == (
      (3, 3), (1, 1), ((1, 1), (1, 1)), False)
  maxpool = spec.node("maxpool")
  assert (maxpool.op, maxpool.window, maxpool.stride) == ("max", (3, 3), (2, 2))
  assert spec.node("layer1/0").identity_shortcut
  down = spec.node("layer2/0/shortcut_conv")
  assert (down.kernel, down.stride, down.features) == ((1, 1), (2, 2), 128)
  assert spec.node("layer2/0").post == (Act("relu2"),)
  # Execute (abstractly) and read each block's output, i.e. relu2's output.
  variables = _abstract_variables(spec)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  logits, state = jax.eval_shape(
      lambda v, x: network.Network(spec).apply(v, x, capture_intermediates=True,
                                               mutable=["intermediates"]), variables, x)
  assert logits.shape == (2, 10)
  inter = state["intermediates"]
  for i, (hw, c) in enumerate([(16, 64), (8, 128), (4, 256), (2, 512)]):
    for j in (0, 1):
      assert inter[f"layer{i + 1}"][str(j)]["__call__"][0].shape == (2, hw, hw, c)


def test_resnet18_imagenet_stem():
  spec = zoo.resnet18(stem="imagenet")
  conv1 = spec.node("conv1")
  assert (conv1.kernel, conv1.stride, conv1.padding) == ((7, 7), (2, 2), ((3, 3), (3, 3)))
  assert spec.shapes()["maxpool"][1] == (56, 56, 64)
  assert spec.shapes()["layer4"][1] == (7, 7, 512)


def test_resnet20_forward_and_structure():
  spec = zoo.resnet20(num_classes=7, width=4, input_shape=(16, 16, 3))
  assert [spec.shapes()[f"layer{i}"][1] for i in (1, 2, 3)] == [
      (16, 16, 4), (8, 8, 8), (4, 4, 16)]
  assert spec.node("layer1/0").identity_shortcut
  assert not spec.node("layer2/0").identity_shortcut
  assert spec.node("layer2/1").identity_shortcut
  # Random variables drawn with numpy: network.init's threefry compile is slow on CPU.
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.0, s.shape), s.dtype),
                           _abstract_variables(spec))
  logits = network.forward(spec, variables, jnp.ones((3, 16, 16, 3))).logits
  assert logits.shape == (3, 7)
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_mobilenet_v2_cifar_strides_and_blocks():
  cifar, imagenet = zoo.mobilenet_v2(), zoo.mobilenet_v2(variant="imagenet")
  shapes = cifar.shapes()
  # stem and stage (t=6, c=24, n=2) keep 32x32; blocks 4, 7, 14 halve it.
  assert shapes["features/0"][1] == (32, 32, 32)
  assert shapes["features/3"][1] == (32, 32, 24)
  assert [shapes[f"features/{i}"][1][:2] for i in (4, 7, 14, 18)] == [
      (16, 16), (8, 8), (4, 4), (4, 4)]
  assert imagenet.shapes()["features/18"][1] == (7, 7, 1280)
  residual = [p for p, n in cifar.walk() if isinstance(n, Block)]
  assert residual == [f"features/{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]
  # t = 1 block has no expansion; depthwise conv has one group per channel.
  assert [p for p, _ in cifar.walk() if p.startswith("features/1/")] == [
      "features/1/conv", "features/1/conv/depthwise", "features/1/conv/depthwise/conv",
      "features/1/conv/depthwise/bn", "features/1/conv/depthwise/relu6",
      "features/1/conv/project", "features/1/conv/project_bn"]
  dw = cifar.node("features/5/conv/depthwise/conv")
  assert dw.groups == dw.features == 192
  assert all(cifar.node(s).fn == "relu6" for s in cifar.sites())


def test_mobilenet_v2_width_mult_rounds_to_eight():
  spec = zoo.mobilenet_v2(width_mult=0.5)
  assert spec.node("features/0/conv").features == 16
  assert spec.node("features/2/conv/project").features == 16   # 24 * 0.5 = 12 -> 16
  assert spec.node("features/18/conv").features == 1280


def test_vgg16_bn_layout():
  spec = zoo.vgg16_bn()
  convs = [n for _, n in spec.walk() if isinstance(n, Conv)]
  assert len(convs) == 13 and all(c.bias and c.kernel == (3, 3) for c in convs)
  assert sum(1 for _, n in spec.walk() if getattr(n, "op", None) == "max") == 5
  assert spec.shapes()["avgpool"][1] == (7, 7, 512)
  assert spec.shapes()["flatten"][1] == (25088,)
  assert spec.sites()[-2:] == ("classifier/1", "classifier/4")


def test_digits_cnn_trains_above_95_percent():
  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  x_train, x_test, y_train, y_test = train_test_split(
      x, digits.target, test_size=0.2, random_state=0, stratify=digits.target)
  spec = zoo.digits_cnn()
  assert costs.count_params(spec) < 50_000
  assert sum("/" in s for s in spec.sites()) == 4   # four sites inside residual blocks
  variables = network.init(spec, jax.random.key(0))
  tx = optax.adam(3e-3)
  opt_state = tx.init(variables["params"])

  @jax.jit
  def step(variables, opt_state, x, y):
    def loss_fn(params):
      out = network.forward(spec, {**variables, "params": params}, x, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, y).mean()
      return loss, out.batch_stats
    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    return {"params": optax.apply_updates(variables["params"], updates),
            "batch_stats": batch_stats}, opt_state

  rng = np.random.default_rng(0)
  for _ in range(6):
    order = rng.permutation(len(x_train))
    for i in range(0, len(order) - 63, 64):
      idx = order[i:i + 64]
      variables, opt_state = step(variables, opt_state, x_train[idx], y_train[idx])
  logits = network.forward(spec, variables, x_test).logits
  assert float(np.mean(np.argmax(logits, -1) == y_test)) > 0.95


def test_digits_plain_layout():
  spec = zoo.digits_plain()
  shapes = spec.shapes()
  assert [shapes[f"conv{i}"][1] for i in range(1, 6)] == [
      (6, 6, 32), (4, 4, 32), (2, 2, 64), (1, 1, 128), (1, 1, 128)]
  convs = [n for _, n in spec.walk() if isinstance(n, Conv)]
  assert all(c.padding == ((0, 0), (0, 0)) for c in convs)     # unpadded: merges are exact
  assert spec.sites() == tuple(f"relu{i}" for i in range(1, 6))
  assert shapes["avgpool"][1] == (10,)
  # 9*32 + 9*32*32 + 9*32*64 + 4*64*128 + 128*128 + (128*10 + 10) + 2 * (32+32+64+128+128)
  assert costs.count_params(spec) == 79_146
  assert costs.count_macs(spec) == 36*9*32 + 16*9*32*32 + 4*9*32*64 + 4*64*128 + 128*128 + 1280


def test_registry_errors_are_clear():
  assert set(zoo.names()) >= {"resnet18", "resnet18_imagenet", "resnet20", "mobilenet_v2",
                              "mobilenet_v2_imagenet", "vgg16_bn", "digits_cnn",
                              "digits_plain"}
  with pytest.raises(KeyError, match="unknown model 'resnet19'.*resnet18"):
    zoo.get("resnet19")
  with pytest.raises(TypeError, match="model 'resnet20'"):
    zoo.get("resnet20", depth=32)
  with pytest.raises(ValueError, match="stem"):
    zoo.resnet18(stem="tiny")
  with pytest.raises(ValueError, match="variant"):
    zoo.mobilenet_v2(variant="large")
  with pytest.raises(ValueError, match="num_classes"):
    zoo.vgg16_bn(num_classes=0)
  with pytest.raises(ValueError, match="input_shape"):
    zoo.resnet18(input_shape=(32, 32))
  with pytest.raises(ValueError, match=r"input_shape must be \(height, width, channels\), got 32"):
    zoo.resnet18(input_shape=32)
  with pytest.raises(ValueError, match=r"got \(8, 8, 1\); train it on a text dataset"):
    zoo.tiny_encoder(input_shape=(8, 8, 1))

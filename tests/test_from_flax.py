"""Bring your own Flax model: networks written here in ordinary Linen and NNX style convert,
match the module (eval and train mode, BatchNorm statistics included), run an EASIER
iteration on digits and collapse through surgery; bad input is refused clearly, before the
converted spec is run."""
import os
import sys
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxdepth
from jaxdepth import convert, data, driver, equivalence, network, optim, spec as S, surgery
from jaxdepth.methods import Easier

SHAPE = (8, 8, 1)


# ----------------------------------------------------------------------------- Linen nets


class BasicBlock(nn.Module):
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.Conv(self.features, (3, 3), self.stride, padding=1, use_bias=False)(x)
    y = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(y))
    y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(y)
    y = nn.BatchNorm(use_running_average=not train, momentum=0.9)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), self.stride, use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), padding="SAME", use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = BasicBlock(4)(x, train)
    x = BasicBlock(8, 2)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class InvertedResidual(nn.Module):
  features: int
  stride: int
  expand: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    hidden = x.shape[-1] * self.expand
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
    y = nn.silu(bn()(nn.Conv(hidden, (1, 1), use_bias=False)(x)))
    y = nn.Conv(hidden, (3, 3), self.stride, padding="SAME", feature_group_count=hidden,
                use_bias=False)(y)
    y = nn.hard_swish(bn()(y))
    y = bn()(nn.Conv(self.features, (1, 1), use_bias=False)(y))
    return x + y if self.stride == 1 and x.shape[-1] == self.features else y


class MobileNet(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), 2, padding="SAME", use_bias=False)(x)       # strided SAME: 1 / 2
    x = nn.swish(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = InvertedResidual(4, 1)(x, train)
    x = InvertedResidual(6, 2)(x, train)
    x = nn.relu6(nn.Conv(8, (1, 1))(x))
    x = x.mean((1, 2))
    x = nn.gelu(nn.Dense(8)(x))                                         # tanh approximation
    x = nn.Dropout(0.1, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


class DenseLayer(nn.Module):
  growth: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    y = nn.Conv(self.growth, (3, 3), padding=1, use_bias=False)(y)
    return jnp.concatenate([x, y], axis=-1)


class DenseNet(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), padding=1, use_bias=False)(x)
    x = DenseLayer(3)(x, train)
    x = DenseLayer(3)(x, train)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.leaky_relu(nn.Conv(6, (1, 1), use_bias=False)(x), 0.2)
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(x)


# ------------------------------------------------------------------------------ NNX nets


class NNXBasicBlock(nnx.Module):
  def __init__(self, cin, cout, stride, *, rngs):
    self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding=1, use_bias=False,
                          rngs=rngs)
    self.bn1 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
    self.projected = stride != 1 or cin != cout
    if self.projected:
      self.proj = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
      self.proj_bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.projected:
      x = self.proj_bn(self.proj(x))
    return nnx.relu(x + y)


class NNXResNet(nnx.Module):
  def __init__(self, num_classes=10, *, rngs):
    self.stem = nnx.Conv(1, 4, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.blocks = nnx.List([NNXBasicBlock(4, 4, 1, rngs=rngs), NNXBasicBlock(4, 8, 2, rngs=rngs)])
    self.head = nnx.Linear(8, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


class NNXInvertedResidual(nnx.Module):
  def __init__(self, cin, cout, stride, *, rngs):
    hidden = 2 * cin
    self.expand = nnx.Conv(cin, hidden, (1, 1), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(hidden, momentum=0.9, rngs=rngs)
    self.dw = nnx.Conv(hidden, hidden, (3, 3), strides=stride, padding="SAME",
                       feature_group_count=hidden, use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(hidden, momentum=0.9, rngs=rngs)
    self.project = nnx.Conv(hidden, cout, (1, 1), use_bias=False, rngs=rngs)
    self.bn3 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
    self.residual = stride == 1 and cin == cout

  def __call__(self, x):
    y = nnx.silu(self.bn1(self.expand(x)))
    y = nnx.hard_swish(self.bn2(self.dw(y)))
    y = self.bn3(self.project(y))
    return x + y if self.residual else y


class NNXMobileNet(nnx.Module):
  def __init__(self, num_classes=10, *, rngs):
    self.stem = nnx.Conv(1, 4, (3, 3), strides=2, padding="SAME", use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.block1 = NNXInvertedResidual(4, 4, 1, rngs=rngs)
    self.block2 = NNXInvertedResidual(4, 6, 2, rngs=rngs)
    self.hidden = nnx.Linear(6, 8, rngs=rngs)
    self.head = nnx.Linear(8, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.swish(self.bn(self.stem(x)))
    x = self.block2(self.block1(x))
    return self.head(nnx.relu6(self.hidden(x.mean((1, 2)))))


class NNXDenseLayer(nnx.Module):
  def __init__(self, cin, growth, *, rngs):
    self.bn = nnx.BatchNorm(cin, momentum=0.9, rngs=rngs)
    self.conv = nnx.Conv(cin, growth, (3, 3), padding=1, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return jnp.concatenate([x, self.conv(nnx.relu(self.bn(x)))], axis=-1)


class NNXDenseNet(nnx.Module):
  def __init__(self, num_classes=10, *, rngs):
    self.stem = nnx.Conv(1, 4, (3, 3), padding=1, use_bias=False, rngs=rngs)
    self.layer1 = NNXDenseLayer(4, 3, rngs=rngs)
    self.layer2 = NNXDenseLayer(7, 3, rngs=rngs)
    self.bn = nnx.BatchNorm(10, momentum=0.9, rngs=rngs)
    self.transition = nnx.Conv(10, 6, (1, 1), use_bias=False, rngs=rngs)
    self.head = nnx.Linear(6 * 2 * 2, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.layer2(self.layer1(self.stem(x)))
    x = nnx.leaky_relu(self.transition(self.bn(x)), 0.2)
    x = nnx.max_pool(nnx.avg_pool(x, (2, 2), (2, 2)), (2, 2), (2, 2))
    return self.head(x.reshape((x.shape[0], -1)))


# ------------------------------------------------------------------- transformer nets


class EncoderLayer(nn.Module):
  """Pre-LN: x + attn(norm(x)), then x + fc2(gelu(fc1(norm(x))))."""
  heads: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.MultiHeadDotProductAttention(self.heads, deterministic=not train)(nn.LayerNorm()(x))
    x = x + y
    y = nn.Dense(2 * x.shape[-1])(nn.LayerNorm()(x))
    return x + nn.Dense(x.shape[-1])(nn.gelu(y))


class Transformer(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), padding="SAME", use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.GroupNorm(num_groups=2)(nn.Conv(8, (2, 2), strides=2)(x))    # 2x2 patches
    b, h, w, c = x.shape
    x = EncoderLayer()(x.reshape((b, h * w, c)), train)                  # 16 tokens
    return nn.Dense(self.num_classes)(nn.LayerNorm()(x).mean(axis=1))


class NNXEncoderLayer(nnx.Module):
  def __init__(self, width, heads, *, rngs):
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.fc1 = nnx.Linear(width, 2 * width, rngs=rngs)
    self.fc2 = nnx.Linear(2 * width, width, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x)), approximate=False))


class NNXTransformer(nnx.Module):
  def __init__(self, num_classes=10, *, rngs):
    self.stem = nnx.Conv(1, 4, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.patches = nnx.Conv(4, 8, (2, 2), strides=2, rngs=rngs)
    self.gn = nnx.GroupNorm(8, num_groups=4, rngs=rngs)
    self.encoder = NNXEncoderLayer(8, 2, rngs=rngs)
    self.norm = nnx.LayerNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.gn(self.patches(nnx.relu(self.bn(self.stem(x)))))
    x = self.encoder(x.reshape((x.shape[0], -1, x.shape[-1])))
    return self.head(self.norm(x).mean(axis=1))


class ViT(nn.Module):
  """big_vision's way: patches, tokens plus a (1, N, C) position embedding, then the class
  token in front; the class token's output is the readout."""
  num_classes: int = 10
  width: int = 8

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.width, (2, 2), strides=(2, 2), padding="VALID", name="embedding")(x)
    n, h, w, c = x.shape
    x = jnp.reshape(x, [n, h * w, c])
    x = x + self.param("pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(c)),
                       (1, h * w, c), x.dtype)
    cls = self.param("cls", nn.initializers.normal(stddev=0.02), (1, 1, c), x.dtype)
    x = jnp.concatenate([jnp.tile(cls, [n, 1, 1]), x], axis=1)
    for i in range(2):
      x = EncoderLayer(name=f"encoderblock_{i}")(x, train)
    x = nn.LayerNorm(name="encoder_norm")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, 0])


class NNXViT(nnx.Module):
  """The NNX tutorials' way: class token first, then a (1, N + 1, C) position embedding."""

  def __init__(self, num_classes=10, width=8, patches=16, *, rngs):
    init = jax.nn.initializers.truncated_normal(stddev=0.02)
    self.patch_embeddings = nnx.Conv(1, width, (2, 2), strides=(2, 2), padding="VALID",
                                     rngs=rngs)
    self.position_embeddings = nnx.Param(init(rngs.params(), (1, patches + 1, width)))
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, width)))
    self.encoder = nnx.Sequential(*[NNXEncoderLayer(width, 2, rngs=rngs) for _ in range(2)])
    self.final_norm = nnx.LayerNorm(width, rngs=rngs)
    self.classifier = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x):
    patches = self.patch_embeddings(x)
    batch_size = patches.shape[0]
    patches = patches.reshape(batch_size, -1, patches.shape[-1])
    cls_token = jnp.tile(self.cls_token, [batch_size, 1, 1])
    x = jnp.concat([cls_token, patches], axis=1)
    x = self.encoder(x + self.position_embeddings)
    return self.classifier(self.final_norm(x)[:, 0])


LINEN = {"resnet": ResNet, "mobilenet": MobileNet, "densenet": DenseNet,
         "transformer": Transformer, "vit": ViT}
NNX = {"resnet": NNXResNet, "mobilenet": NNXMobileNet, "densenet": NNXDenseNet,
       "transformer": NNXTransformer, "vit": NNXViT}
NETS = [(f, n) for f in ("linen", "nnx") for n in LINEN]


def _batch(seed=0, n=16):
  return np.random.default_rng(seed).standard_normal((n, *SHAPE), dtype=np.float32)


def _perturb_stats(tree, seed):
  """Non-trivial running statistics, so eval mode really reads them."""
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [
      jnp.abs(l) + 0.5 + 0.3 * rng.random(l.shape, dtype=np.float32) for l in leaves])


def _make(framework, name):
  """``(module or model, variables or None)`` with perturbed BatchNorm statistics."""
  if framework == "linen":
    module = LINEN[name]()
    variables = dict(jax.jit(module.init)(jax.random.key(1), _batch()))
    if "batch_stats" in variables:
      variables["batch_stats"] = _perturb_stats(variables["batch_stats"], 2)
    return module, variables
  model = NNX[name](rngs=nnx.Rngs(1))
  stats = nnx.state(model, nnx.BatchStat)
  nnx.update(model, jax.tree.map(lambda v: v, _perturb_stats(stats, 2)))
  return model, None


def _lookup(tree, path):
  for part in path.split("/"):
    tree = tree[int(part)] if isinstance(tree, (list, tuple)) or (
        part.isdigit() and int(part) in tree) else tree[part]
  return tree


@pytest.fixture(scope="module", params=NETS, ids=[f"{f}-{n}" for f, n in NETS])
def converted(request):
  framework, name = request.param
  module, variables = _make(framework, name)
  x = _batch()
  if framework == "linen":
    conv = jaxdepth.from_flax(module, variables, x)
  else:
    conv = jaxdepth.from_nnx(module, x)
  return framework, name, module, variables, conv


def test_eval_outputs_equal_the_module(converted):
  framework, _, module, variables, conv = converted
  x = _batch(3)
  if framework == "linen":
    want = module.apply(variables, x, train=False)
  else:
    model = nnx.clone(module)
    model.eval()
    want = model(x)
  got = network.forward(conv.spec, conv.variables, x).logits
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  # JSON round trip, validated.
  assert S.Spec.from_json(conv.spec.to_json()) == conv.spec


def test_train_outputs_and_batch_stats_equal_the_module(converted):
  framework, name, module, variables, conv = converted
  x = _batch(4)
  if framework == "linen":
    want, upd = module.apply(variables, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(0)})
    user_stats = upd.get("batch_stats", {})
  else:
    model = nnx.clone(module)
    model.train()
    want = model(x)
    user_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  # The Linen MobileNet's dropout sits at the same scope path in the spec, so Flax draws
  # the same mask from the same key: train mode matches with dropout too.
  out = network.forward(conv.spec, conv.variables, x, train=True, rng=jax.random.key(0))
  np.testing.assert_allclose(np.asarray(out.logits), np.asarray(want), rtol=1e-5, atol=1e-5)
  compared = 0
  for spath, upath in conv.paths.items():
    if isinstance(conv.spec.node(spath), S.BatchNorm):
      for leaf in ("mean", "var"):
        np.testing.assert_allclose(np.asarray(_lookup(out.batch_stats, spath)[leaf]),
                                   np.asarray(_lookup(user_stats, upath)[leaf]),
                                   rtol=1e-5, atol=1e-6)
        compared += 1
  norms = sum(isinstance(n, S.BatchNorm) for _, n in conv.spec.walk())
  assert compared == 2 * norms and (norms >= 1) == (name != "vit")


def test_structure_of_the_converted_networks(converted):
  framework, name, module, module_variables, conv = converted
  spec = conv.spec
  kinds = {n.kind for _, n in spec.walk()}
  fns = {n.fn for _, n in spec.walk() if isinstance(n, S.Act)}
  if name == "resnet":
    assert sum(isinstance(n, S.Block) for _, n in spec.walk()) == 2
    assert fns == {"relu"} and len(spec.sites()) == 5
  if name == "mobilenet":
    assert {"silu", "hard_swish", "relu6"} <= fns
    # stride-2 "SAME" on 8x8 with a 3x3 kernel pads 0 before and 1 after (XLA's rule)
    stem = next(n for _, n in spec.walk() if isinstance(n, S.Conv))
    assert stem.stride == (2, 2) and stem.padding == ((0, 1), (0, 1))
    assert any(isinstance(n, S.Conv) and n.groups > 1 for _, n in spec.walk())
  if name == "densenet":
    concats = [n for _, n in spec.walk() if isinstance(n, S.Concat)]
    assert len(concats) == 2 and all(c.branches[0] == () for c in concats)
    assert "leaky_relu" in fns and "flatten" in kinds
    assert {n.op for _, n in spec.walk() if isinstance(n, S.Pool)} == {"avg", "max"}
  if name == "transformer":
    # LayerNorm -> attention -> residual, LayerNorm -> Dense -> GELU -> Dense -> residual
    blocks = [n for _, n in spec.walk() if isinstance(n, S.Block)]
    assert [[type(c).__name__ for c in b.branch] for b in blocks] == [
        ["LayerNorm", "Attention"], ["LayerNorm", "Dense", "Act", "Dense"]]
    assert all(b.identity_shortcut for b in blocks)
    (attention,) = [n for _, n in spec.walk() if isinstance(n, jaxdepth.Attention)]
    assert attention.heads == 2 and attention.qkv_bias
    (group_norm,) = [n for _, n in spec.walk() if isinstance(n, S.GroupNorm)]
    assert group_norm.groups == (2 if framework == "linen" else 4)
    assert {"tokens", "pool"} <= kinds and fns == {"relu", "gelu_tanh" if framework == "linen"
                                                    else "gelu"}
  if name == "vit":
    # patches, tokens, class token and position embedding (in the order each net adds
    # them), 2 encoder layers, LayerNorm, the class token's output, the head
    order = (["ClassToken", "PositionEmbedding"] if framework == "nnx"
             else ["PositionEmbedding", "ClassToken"])
    assert [type(n).__name__ for n in spec.layers] == (
        ["Conv", "Tokens"] + order + ["Block"] * 4 + ["LayerNorm", "SelectToken", "Dense"])
    blocks = [n for _, n in spec.walk() if isinstance(n, S.Block)]
    assert [[type(c).__name__ for c in b.branch] for b in blocks] == 2 * [
        ["LayerNorm", "Attention"], ["LayerNorm", "Dense", "Act", "Dense"]]
    (select,) = [n for _, n in spec.walk() if isinstance(n, jaxdepth.SelectToken)]
    assert select.index == 0 and spec.output_shape == (10,)
    user = {"linen": ("pos_embedding", "cls"), "nnx": ("position_embeddings", "cls_token")}
    assert {conv.paths[p] for p, n in spec.walk() if isinstance(
        n, (jaxdepth.ClassToken, jaxdepth.PositionEmbedding))} == set(user[framework])
    tokens = 17 if framework == "nnx" else 16      # with or without the class token
    assert conv.variables["params"][user[framework][0]]["embedding"].shape == (1, tokens, 8)
  # every layer node with weights maps to the user's path that holds them
  user = (nnx.to_pure_dict(nnx.state(module)) if framework == "nnx"
          else {"params": module_variables["params"]})
  kernels = 0
  for spath, upath in conv.paths.items():
    if isinstance(spec.node(spath), (S.Conv, S.Dense)):
      held = _lookup(user if framework == "nnx" else user["params"], upath)
      np.testing.assert_array_equal(held["kernel"],
                                    _lookup(conv.variables["params"], spath)["kernel"])
      kernels += 1
  assert kernels == sum(isinstance(n, (S.Conv, S.Dense)) for _, n in spec.walk())
  assert set(jaxdepth.costs.summary(spec)) >= {"params", "macs", "nonlinear_depth"}


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def test_easier_iteration_and_surgery(converted, digits, tmp_path_factory):
  framework, name, _, _, conv = converted
  recipe = optim.Recipe(epochs=1, batch_size=64, optimizer="adam", lr=3e-3)
  workdir = tmp_path_factory.mktemp(f"{framework}-{name}")
  result = driver.run(Easier(), conv.spec, digits, recipe, workdir, variables=conv.variables,
                      iterations=1, progress=False, eval_batch_size=512, merge=False)
  entry = result.report["iterations"][0]
  removed = entry["removed_now"]
  assert removed and set(removed) <= set(conv.spec.sites())
  spec_id = S.with_identity(conv.spec, removed)
  variables = result.chosen_variables
  log = []
  shallow, shallow_vars = surgery.collapse(spec_id, variables, log=log)
  x = jnp.asarray(next(digits.test.batches(64))["image"])
  report = equivalence.compare(spec_id, variables, shallow, shallow_vars, x)
  assert report.max_rel < 1e-4 and report.top1_agreement == 1.0
  assert jaxdepth.costs.count_macs(shallow) <= jaxdepth.costs.count_macs(spec_id)
  assert len(shallow.sites()) == len(conv.spec.sites()) - len(removed)


# ------------------------------------------------------------------------------ hand back


def _user_outputs(framework, module, back, x):
  """The user's module run (eval mode) with the handed-back variables ``back``."""
  if framework == "linen":
    return module.apply(back, x)
  model = nnx.clone(module)
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, back)
  nnx.update(model, state)
  model.eval()
  return model(x)


def test_weights_go_back_to_the_users_module(converted):
  framework, _, module, variables, conv = converted
  like = variables if framework == "linen" else nnx.to_pure_dict(nnx.state(module))
  trained = jax.tree.map(lambda a: 2 * a + 0.1, conv.variables)      # stands for training
  back, skipped = convert.to_user_variables(conv, trained, like)
  assert skipped == []
  x = _batch(6)
  ours = np.asarray(network.forward(conv.spec, trained, x).logits)
  # float32 rounding of logits of this size (the doubled weights make them up to
  # ~6); on the CPU the executor sums a convolution in another order than lax.
  np.testing.assert_allclose(np.asarray(_user_outputs(framework, module, back, x)), ours,
                             rtol=1e-5, atol=1e-5 * np.abs(ours).max())


def test_what_cannot_go_back_is_listed():
  module, variables = _make("linen", "transformer")
  conv = jaxdepth.from_flax(module, variables, _batch())
  site = conv.spec.sites()[-1]
  linear = S.with_identity(conv.spec, [site])       # the module still applies the GELU
  _, skipped = convert.to_user_variables(conv, conv.variables, variables, spec=linear)
  assert skipped == [site]
  shallow, shallow_vars = surgery.collapse(linear, conv.variables)
  _, skipped = convert.to_user_variables(conv, shallow_vars, variables, spec=shallow)
  assert {site, "EncoderLayer_0_2/Dense_0", "EncoderLayer_0_2/Dense_1"} <= set(skipped)

  class NoBias(nn.Module):                    # attention without biases: proj's must stay 0
    @nn.compact
    def __call__(self, x):
      return nn.MultiHeadDotProductAttention(2, use_bias=False)(x).reshape((x.shape[0], -1))
  x = np.random.default_rng(0).standard_normal((2, 3, 4), dtype=np.float32)
  variables = jax.jit(NoBias().init)(jax.random.key(1), x)
  conv = jaxdepth.from_flax(NoBias(), variables, x)
  (path,) = conv.paths
  _, skipped = convert.to_user_variables(conv, conv.variables, variables)
  assert skipped == []
  moved = jax.tree.map(lambda a: a, conv.variables)
  moved["params"][path]["proj"]["bias"] = jnp.full((4,), 0.5)
  _, skipped = convert.to_user_variables(conv, moved, variables)
  assert skipped == [path]



class BiasedConvBatchNorm(nn.Module):
  two: bool          # a bias-free Conv_0 + BatchNorm_0 before, or a plain Conv_0

  @nn.compact
  def __call__(self, x, train=False):
    if self.two:
      x = nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3), use_bias=False)(x))
    else:
      x = nn.Conv(8, (1, 1))(x)
    x = nn.Conv(8, (1, 1))(nn.relu(x))             # Conv_1 has a bias: its node stays
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(10)(jnp.mean(nn.relu(x), axis=(1, 2)))


@pytest.mark.parametrize("two", [False, True])
def test_a_conv_a_batchnorm_was_folded_into_is_skipped_though_its_node_stays(two):
  module = BiasedConvBatchNorm(two)
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 3), dtype=np.float32)
  variables = module.init(jax.random.key(1), x)
  variables = {"params": variables["params"], "batch_stats": jax.tree.map(   # trained statistics
      lambda a: a + 0.7, variables["batch_stats"])}
  conv = jaxdepth.from_flax(module, variables, x)
  shallow, shallow_vars = surgery.collapse(conv.spec, conv.variables)
  assert shallow.node("Conv_1") == conv.spec.node("Conv_1")    # only its values changed
  trained = jax.tree.map(lambda a: 2 * a + 0.1, shallow_vars)
  back, skipped = convert.to_user_variables(conv, trained, variables, spec=shallow)
  assert skipped == (["BatchNorm_0", "BatchNorm_1", "Conv_0", "Conv_1"] if two else
                     ["BatchNorm_0", "Conv_1"])
  for name in ("kernel", "bias"):                  # the user's own, not the folded ones
    np.testing.assert_array_equal(back["params"]["Conv_1"][name],
                                  variables["params"]["Conv_1"][name])
    np.testing.assert_array_equal(back["params"]["Dense_0"][name],     # a layer kept goes back
                                  trained["params"]["Dense_0"][name])


# ------------------------------------------------------------------------------ refusals


class Sine(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    x = jnp.sin(x)
    return nn.Dense(3)(x.reshape((x.shape[0], -1)))


class Wrapper(nn.Module):
  @nn.compact
  def __call__(self, x):
    return Sine(name="features")(x)


class Noisy(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    x = x + jax.random.normal(self.make_rng("noise"), x.shape)
    return nn.Dense(3)(x.reshape((x.shape[0], -1)))


class Gated(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    gate = nn.sigmoid(nn.Dense(4)(x.mean((1, 2))))
    return x * gate[:, None, None, :]


def _refusal(fn):
  """The message of the ConversionError ``fn`` raises, which must come before the converted
  spec is run and compared with the module (the conversion's one costly step)."""
  ran = AssertionError("the spec was run and compared before the refusal")
  with mock.patch.object(convert, "_verify", side_effect=ran):
    with pytest.raises(jaxdepth.ConversionError) as info:
      fn()
  return str(info.value)


def _linen_refusal(module, x=None):
  """:func:`_refusal` of converting a Linen ``module`` initialised on ``x`` (default
  :func:`_batch`)."""
  x = _batch() if x is None else x
  variables = jax.jit(module.init)(jax.random.key(0), x)
  return _refusal(lambda: jaxdepth.from_flax(module, variables, x))


def test_unsupported_op_is_refused_with_module_path_and_line():
  module = Wrapper()
  message = _linen_refusal(module)
  assert "'sin'" in message and "features" in message and "test_from_flax.py:" in message
  assert "write the activation as one of them" in message


def test_a_jaxdepth_network_given_for_conversion_is_told_it_is_one_already():
  spec = jaxdepth.zoo.digits_cnn(width=4)
  v, x = jaxdepth.init(spec, 0), network.example_input(spec)
  with pytest.raises(convert.ConversionError,
                     match=r"from_flax: this module is already a jaxdepth network .*module\.spec"):
    convert.from_flax(network.Network(spec), v, x)
  from jaxdepth import nnx_bridge  # pylint: disable=import-outside-toplevel
  with pytest.raises(convert.ConversionError,
                     match=r"from_nnx: this module is already a jaxdepth network .*variables_of"):
    convert.from_nnx(nnx_bridge.to_nnx(spec, v), x)


def test_gating_product_of_two_tensors_is_refused():
  module = Gated()
  message = _linen_refusal(module)
  assert "'mul'" in message and "residual" in message


class ProbabilityHead(nn.Module):
  head: str

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.Dense(3)(x.mean((1, 2)))
    return {"softmax": nn.softmax, "log_softmax": nn.log_softmax, "sigmoid": nn.sigmoid,
            "silu": nn.silu}[self.head](x)


@pytest.mark.parametrize("head, words", [("softmax", "a softmax or log-softmax"),
                                         ("log_softmax", "a softmax or log-softmax"),
                                         ("sigmoid", "a sigmoid")])
def test_probabilities_at_the_output_are_refused_with_the_fix(head, words):
  module = ProbabilityHead(head)
  message = _linen_refusal(module)
  assert f"{words} of the last layer's output" in message, message
  assert "return the logits" in message and "test_from_flax.py:" in message


def test_an_activation_after_the_last_layer_is_not_taken_for_probabilities():
  # SiLU is x * sigmoid(x): a site, converted as the network's last node.
  module = ProbabilityHead("silu")
  x = _batch()
  variables = jax.jit(module.init)(jax.random.key(0), x)
  conv = jaxdepth.from_flax(module, variables, x)
  assert conv.spec.sites() == ("relu", "silu")
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(module.apply(variables, x)), rtol=1e-5, atol=1e-6)


class Preprocessing(nn.Module):
  how: str

  @nn.compact
  def __call__(self, x):
    if self.how == "scale":
      x = x / 255.0
    elif self.how == "nchw":
      x = jnp.transpose(x, (0, 2, 3, 1))
    else:
      x = (x.astype(jnp.float32) - jnp.array([0.5, 0.4, 0.3])) / jnp.array([0.2, 0.2, 0.2])
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(3)(x.mean((1, 2)))


@pytest.mark.parametrize("how, op", [("scale", "'div'"), ("normalise", "'sub'")])
def test_input_preprocessing_inside_the_module_is_refused_with_the_fix(how, op):
  module = Preprocessing(how)
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 3), dtype=np.float32)
  message = _linen_refusal(module, x)
  assert f"arithmetic on the module's input before its first layer ({op} with a constant" in (
      message), message
  assert "normalise the inputs outside the module" in message
  assert "test_from_flax.py:" in message


def test_an_input_transposed_inside_the_module_is_refused_with_the_layout():
  module = Preprocessing("nchw")
  x = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
  message = _linen_refusal(module, x)
  assert "a transposition of the module's input ((2, 3, 8, 8) to (2, 8, 8, 3)" in message, message
  assert "jaxdepth's images are (B, H, W, C)" in message


class HalfPrecision(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), dtype=jnp.bfloat16)(x))
    return nn.Dense(3)(x.mean((1, 2)))


class NNXHalfPrecision(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(SHAPE[-1], 4, (3, 3), rngs=rngs)
    self.head = nnx.Linear(4, 3, dtype=jnp.bfloat16, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.conv(x)).mean((1, 2)))


def test_a_layer_computing_in_bfloat16_is_refused_with_the_fix():
  x = _batch(n=2)
  module = HalfPrecision()
  variables = jax.jit(module.init)(jax.random.key(0), x)
  for convert_it, where in ((lambda: jaxdepth.from_flax(module, variables, x), "layer Conv_0"),
                            (lambda: jaxdepth.from_nnx(NNXHalfPrecision(nnx.Rngs(0)), x),
                             "layer head")):
    message = _refusal(convert_it)
    assert f"{where} (" in message and "computes in bfloat16" in message, message
    assert "convert a float32 instance of the module" in message and "--dtype" in message


def test_half_precision_variables_become_float32_exactly():
  class HalfParams(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3), param_dtype=jnp.bfloat16)(x))   # computes in float32
      return nn.Dense(3, param_dtype=jnp.float16)(x.mean((1, 2)))
  module, x = HalfParams(), _batch(n=2)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  assert variables["params"]["Conv_0"]["kernel"].dtype == jnp.bfloat16
  conv = jaxdepth.from_flax(module, variables, x)
  for layer in ("Conv_0", "Dense_0"):
    for name, value in conv.variables["params"][layer].items():
      assert value.dtype == jnp.float32, (layer, name, value.dtype)
      np.testing.assert_array_equal(np.asarray(value), np.asarray(
          variables["params"][layer][name], np.float32))
  jaxdepth.training.TrainState.create(conv.variables, optax.sgd(0.1), 0)   # trainable
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(module.apply(variables, x)), rtol=1e-5, atol=1e-6)


class KeepdimsPool(nn.Module):
  read: str

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    if self.read == "reshape":
      return nn.Dense(3)(x.reshape((x.shape[0], -1)))
    if self.read == "squeeze":
      return nn.Dense(3)(jnp.squeeze(x, (1, 2)))
    return nn.Conv(3, (1, 1))(x).reshape((x.shape[0], -1))


@pytest.mark.parametrize("read", ["reshape", "squeeze"])
def test_a_keepdims_mean_then_flattened_is_a_global_pool(read):
  module = KeepdimsPool(read)
  x = _batch(n=3)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  conv = jaxdepth.from_flax(module, variables, x)
  assert [type(n).__name__ for n in conv.spec.layers] == ["Conv", "Act", "Pool", "Flatten",
                                                          "Dense"]
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(module.apply(variables, x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act", [False, True])
def test_a_mean_over_a_1x1_map_is_a_global_pool(act):
  # jnp.mean over one element divides the sum by 1, which reads as the identity of the sum.
  class OneByOne(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (8, 8), padding="VALID")(x))        # (B, 1, 1, 4)
      x = jnp.mean(x, axis=(1, 2))
      return nn.Dense(3)(nn.gelu(x) if act else x)
  module, x = OneByOne(), _batch(n=3)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  conv = jaxdepth.from_flax(module, variables, x)
  assert [type(n).__name__ for n in conv.spec.layers] == ["Conv", "Act", "Pool"] + (
      ["Act"] if act else []) + ["Dense"]
  assert conv.spec.layers[2].op == "global_avg"
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(module.apply(variables, x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["channels", "rows"])
def test_a_mean_of_one_element_over_other_axes_is_refused_as_a_sum(how):
  # A mean over a 1-channel axis, or over an H of 1 alone, is a sum divided by 1 too, but
  # over axes no pool averages: refused as the sum it is, not as a scale by 1.
  class OneElement(nn.Module):
    @nn.compact
    def __call__(self, x):
      if how == "channels":
        x = nn.relu(nn.Conv(1, (3, 3))(x)).mean(axis=-1)                       # (B, 8, 8)
      else:
        x = nn.relu(nn.Conv(4, (8, 1), padding="VALID")(x)).mean(axis=1)      # (B, 8, 4)
      return nn.Dense(3)(x.reshape((x.shape[0], -1)))
  message = _linen_refusal(OneElement(), _batch(n=2))
  assert "a sum that is not an average (operation 'reduce_sum')" in message, message
  assert "use jnp.mean(x, axis=(1, 2))" in message and "constant 1" not in message


def test_a_keepdims_mean_read_by_a_layer_is_refused_with_the_fix():
  module = KeepdimsPool("conv")
  message = _linen_refusal(module, _batch(n=3))
  assert "a global average pool with keepdims=True, read as (3, 1, 1, 4) by layer Conv_1 (" in (
      message), message
  assert "pool without keepdims" in message


class PoolThenAct(nn.Module):
  """An activation right after an average: LeNet's order, a global mean, kept axes."""
  how: str

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), padding="SAME")(x)
    if self.how == "avg_pool":
      x = nn.relu(nn.avg_pool(x, (2, 2), strides=(2, 2))).reshape((x.shape[0], -1))
    elif self.how == "mean":
      x = nn.gelu(jnp.mean(x, axis=(1, 2)))
    else:
      x = nn.relu6(jnp.mean(x, axis=(1, 2), keepdims=True)).reshape((x.shape[0], -1))
    return nn.Dense(3)(x)


@pytest.mark.parametrize("how, fn, pool", [("avg_pool", "relu", "avg"),
                                           ("mean", "gelu_tanh", "global_avg"),
                                           ("keepdims", "relu6", "global_avg")])
def test_an_activation_right_after_an_average_is_the_pool_then_the_site(how, fn, pool):
  # The average's division by the window size and the activation are one element-wise
  # chain in the trace; the pool must take the division only.
  module = PoolThenAct(how)
  x = _batch(n=3)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  conv = jaxdepth.from_flax(module, variables, x)
  kinds = [type(n).__name__ for n in conv.spec.layers]
  assert kinds[:3] == ["Conv", "Pool", "Act"] and conv.spec.layers[1].op == pool
  assert [conv.spec.node(s).fn for s in conv.spec.sites()] == [fn]
  x = _batch(5, n=4)
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(module.apply(variables, x)), rtol=1e-5, atol=1e-5)


class PoolLeavingPadOut(nn.Module):
  padding: str
  window: int = 2

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), padding="SAME")(x)
    x = nn.avg_pool(x, (self.window,) * 2, strides=(2, 2), padding=self.padding,
                    count_include_pad=False)
    return nn.Dense(3)(nn.relu(x).reshape((x.shape[0], -1)))


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_an_average_leaving_out_padding_where_there_is_none_is_the_avg_pool(padding):
  # count_include_pad=False divides by a window sum of ones: the window size everywhere when
  # nothing is padded (VALID, or SAME with 2x2 windows in steps of 2 on 8x8).
  module = PoolLeavingPadOut(padding)
  x = _batch(n=3)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  conv = jaxdepth.from_flax(module, variables, x)
  pool = conv.spec.layers[1]
  assert type(pool).__name__ == "Pool" and pool.op == "avg" and pool.window == (2, 2)
  x = _batch(5, n=4)
  want = jax.nn.relu(nn.avg_pool(nn.Conv(4, (3, 3), padding="SAME").apply(
      {"params": variables["params"]["Conv_0"]}, x), (2, 2), (2, 2)))
  want = want.reshape((4, -1)) @ variables["params"]["Dense_0"]["kernel"] + (
      variables["params"]["Dense_0"]["bias"])
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(want), rtol=1e-5, atol=1e-5)


def test_an_average_leaving_out_padding_over_padding_is_refused_at_the_users_line():
  message = _linen_refusal(PoolLeavingPadOut("SAME", window=3))
  assert "average pool over padding ((0, 1), (0, 1)) that leaves the padding out" in message
  assert "count_include_pad=True" in message and "padding='VALID'" in message
  assert "test_from_flax.py:" in message and "pooling.py" not in message, message


def test_an_activation_of_a_mean_over_the_channels_is_not_taken_for_a_pool():
  class ChannelMean(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(jnp.sum(nn.Conv(4, (3, 3))(x), axis=-1, keepdims=True) / 4.0)
      return nn.Dense(3)(x.reshape(x.shape[0], -1))
  message = _linen_refusal(ChannelMean(), _batch(n=2))
  assert "no known activation" in message and "global average pool" not in message, message


def test_a_layer_scale_is_refused_naming_the_parameter():
  class LayerScale(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3))(x)
      gamma = self.param("gamma", nn.initializers.constant(1e-6), (4,))
      x = x + gamma * nn.Conv(4, (3, 3), padding="SAME")(nn.relu(x))
      return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))
  module = LayerScale()
  message = _linen_refusal(module, _batch(n=2))
  assert "a tensor scaled by the parameter gamma of shape (4,) outside a layer" in message, (
      message)
  assert "fold the scale into the layer before it" in message


class Subsampled(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))[:, ::2, ::2]
    return nn.Dense(3)(x.mean((1, 2)))


def test_a_strided_slice_is_refused_with_its_steps_and_the_alternatives():
  module = Subsampled()
  message = _linen_refusal(module, _batch(n=2))
  assert "in steps of (1, 2, 2, 1)" in message, message
  assert "strided Conv or nn.max_pool / nn.avg_pool" in message


class NoisyNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    return Noisy(name="noisy")(x)


def test_module_needing_an_rng_is_refused():
  module = NoisyNet()
  x = _batch()
  variables = jax.jit(module.init)({"params": jax.random.key(0), "noise": jax.random.key(1)}, x)
  message = _refusal(lambda: jaxdepth.from_flax(module, variables, x))
  assert "random number stream" in message and "rngs=" in message
  assert "in module noisy at" in message and "test_from_flax.py:" in message
  # Passing the stream gets further, to the random operation, refused as such.
  message = _refusal(lambda: jaxdepth.from_flax(module, variables, x,
                                                rngs={"noise": jax.random.key(1)}))
  assert "random operation outside nn.Dropout" in message


def test_wrong_sample_input_is_refused():
  module, variables = _make("linen", "resnet")
  message = _refusal(
      lambda: jaxdepth.from_flax(module, variables, jnp.ones((4, 8, 8, 3))))
  assert "(4, 8, 8, 3)" in message and "batch shaped like the data" in message
  assert "in module Conv_0 at" in message and "test_from_flax.py:" in message
  message = _refusal(lambda: jaxdepth.from_flax(module, variables, jnp.ones((8,))))
  assert "no batch axis" in message
  model, _ = _make("nnx", "resnet")
  message = _refusal(lambda: jaxdepth.from_nnx(model, jnp.ones((2, 8, 8, 2))))
  assert "(2, 8, 8, 2)" in message and "in module stem at" in message


def test_unsupported_layer_is_refused():
  class Upsampling(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.ConvTranspose(4, (2, 2), (2, 2))(nn.Conv(4, (3, 3))(x)).mean((1, 2))
  module = Upsampling()
  message = _linen_refusal(module)
  assert "ConvTranspose" in message and "ConvTranspose_0" in message
  assert "test_from_flax.py:" in message and "GroupNorm" in message   # the supported list


class Attending(nn.Module):
  """Self-attention called in ways the spec's Attention cannot represent."""
  how: str

  @nn.compact
  def __call__(self, x):
    tokens = nn.Dense(4)(x.reshape((x.shape[0], -1, 1)))
    attention = nn.MultiHeadDotProductAttention(
        2, decode=self.how == "decode", normalize_qk=self.how == "normalize_qk",
        qkv_features=8 if self.how == "qkv_features" else None, name="attention")
    if self.how == "mask":
      return attention(tokens, mask=nn.make_causal_mask(tokens[..., 0]))
    if self.how == "cross":
      return attention(tokens, nn.Dense(4)(tokens))
    return attention(tokens)


@pytest.mark.parametrize("how, words", [
    ("mask", "attention mask"), ("cross", "cross-attention"), ("decode", "decode=True"),
    ("normalize_qk", "normalize_qk=True"), ("qkv_features", "qkv_features=8")])
def test_attention_the_spec_cannot_represent_is_refused(how, words):
  module = Attending(how)
  message = _linen_refusal(module, _batch(n=2))
  assert words in message and "attention (MultiHeadDotProductAttention" in message
  assert "test_from_flax.py:" in message


class AddPositionEmbs(nn.Module):
  """The position embedding as the original ViT code writes it, a module of its own."""

  @nn.compact
  def __call__(self, inputs):
    pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                    (1, inputs.shape[1], inputs.shape[2]))
    return inputs + pe


class TokenGlue(nn.Module):
  """Patches to one token of width 4, its class token and position embedding spelled as
  ``how`` says; the ways ViTs are written convert, the others are refused."""
  how: str

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (2, 2), strides=(2, 2))(x)                     # 16 tokens
    b, h, w, c = x.shape
    x = x.reshape((b, h * w, c))
    normal = nn.initializers.normal(1.0)
    cls = self.param("cls", normal, (c,) if self.how == "broadcast" else (1, 1, c))
    if self.how == "vision_transformer":                          # tile, then a module
      x = AddPositionEmbs(name="posembed_input")(
          jnp.concatenate([jnp.tile(cls, [b, 1, 1]), x], axis=1))
      return x[:, 0]
    if self.how == "broadcast":                                   # no unit axes, last token
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)), x], axis=1)
      return (x + self.param("pe", normal, (h * w + 1, c)))[:, -1]
    if self.how == "too_long":                                    # a longer table, cropped
      x = x + self.param("pe", normal, (1, h * w + 3, c))[:, :h * w]
    if self.how == "per_channel":
      x = x + self.param("pe", normal, (1, 1, c))
    if self.how == "fixed":                                       # not learned
      x = x + jnp.asarray(np.sin(np.arange(h * w * c, dtype=np.float32)).reshape(1, h * w, c))
    if self.how == "twice":
      pe = self.param("pe", normal, (1, h * w, c))
      x = nn.LayerNorm()(x + pe) + pe
    if self.how == "two_tokens":                                  # DeiT's distillation token
      x = jnp.concatenate([jnp.tile(cls, [b, 1, 1]), jnp.tile(cls, [b, 1, 1]) * 2, x], axis=1)
    if self.how == "token_last":
      x = jnp.concatenate([x, jnp.tile(cls, [b, 1, 1])], axis=1)
    if self.how == "pool_patches":                                # every token but the first
      return x[:, 1:].mean(axis=1)
    if self.how == "channel":
      return x[:, :, 0]
    return x.mean(axis=1)


class Readout(nn.Module):
  how: str

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(TokenGlue(self.how, name="tokens")(x))


@pytest.mark.parametrize("how, index", [("vision_transformer", 0), ("broadcast", 16)])
def test_class_token_and_position_embedding_spellings(how, index):
  module = Readout(how)
  x = _batch(n=4)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  conv = jaxdepth.from_flax(module, variables, x)             # checked equal to the module
  kinds = [type(n).__name__ for _, n in conv.spec.walk()]
  assert kinds == ["Conv", "Tokens", "ClassToken", "PositionEmbedding", "SelectToken", "Dense"]
  (select,) = [n for _, n in conv.spec.walk() if isinstance(n, jaxdepth.SelectToken)]
  assert select.index == index
  params = {p: n for p, n in conv.spec.walk() if isinstance(
      n, (jaxdepth.ClassToken, jaxdepth.PositionEmbedding))}
  assert sorted(conv.paths[p] for p in params) == sorted(
      ["tokens/cls", "tokens/posembed_input/pos_embedding" if how == "vision_transformer"
       else "tokens/pe"])
  trained = jax.tree.map(lambda a: 2 * a + 0.1, conv.variables)
  back, skipped = convert.to_user_variables(conv, trained, variables)
  assert skipped == []
  assert jax.tree.map(jnp.shape, back) == jax.tree.map(jnp.shape, dict(variables))
  np.testing.assert_allclose(np.asarray(module.apply(back, x)),
                             np.asarray(network.forward(conv.spec, trained, x).logits),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how, words", [
    ("too_long", "computed from a parameter or a constant (e.g. cropped or interpolated) "
                 "rather than a parameter used as it is (operation 'slice')"),
    ("per_channel", "parameter tokens/pe of shape (1, 1, 4) to 16 tokens of width 4: not a "
                    "position embedding of this sequence"),
    ("fixed", "a constant of shape (1, 16, 4), not a parameter of the module"),
    ("twice", "the parameter tokens/pe, used a second time"),
    ("two_tokens", "a concatenation of 3 token sequences, 2 of them parameters"),
    ("token_last", "a concatenation of 2 token sequences, 1 of them parameters"),
    ("pool_patches", "a slice of a tensor of shape (2, 16, 4) (from (0, 1, 0) to (2, 16, 4))"),
    ("channel", "a slice of a tensor of shape (2, 16, 4) (from (0, 0, 0) to (2, 16, 1))")])
def test_token_glue_the_spec_cannot_represent_is_refused(how, words):
  module = Readout(how)
  message = _linen_refusal(module, _batch(n=2))
  assert words in message and "in module tokens" in message, message
  assert "test_from_flax.py:" in message


def test_nnx_variable_that_is_not_a_parameter_is_refused():
  class Buffered(nnx.Module):
    def __init__(self, rngs):
      self.patches = nnx.Conv(1, 4, (2, 2), strides=(2, 2), rngs=rngs)
      self.cls = nnx.Variable(jnp.ones((1, 1, 4)))      # a buffer: the spec would train it
      self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
      x = self.patches(x)
      x = x.reshape((x.shape[0], -1, 4))
      x = jnp.concatenate([jnp.tile(self.cls[...], (x.shape[0], 1, 1)), x], axis=1)
      return self.head(x[:, 0])
  message = _refusal(lambda: jaxdepth.from_nnx(Buffered(nnx.Rngs(0)), _batch(n=2)))
  assert "the variable cls of collection 'Variable', not a parameter" in message
  assert "test_from_flax.py:" in message


def test_activation_identified_by_what_it_computes():
  class Spelled(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = jnp.maximum(nn.Conv(4, (3, 3))(x), 0.0)                 # relu
      x = nn.Conv(4, (3, 3))(x)
      x = x * jax.nn.sigmoid(x)                                   # silu
      x = nn.Conv(4, (3, 3))(x)
      x = jax.nn.gelu(x, approximate=False)                       # exact gelu
      return x.reshape((x.shape[0], -1))
  module = Spelled()
  x = _batch()
  variables = jax.jit(module.init)(jax.random.key(0), x)
  conv = jaxdepth.from_flax(module, variables, x)
  assert [conv.spec.node(s).fn for s in conv.spec.sites()] == ["relu", "silu", "gelu"]


def test_a_clamp_far_from_zero_is_no_activation():
  class Clamped(nn.Module):
    low: float

    @nn.compact
    def __call__(self, x):
      x = jnp.clip(nn.Conv(4, (3, 3))(x), self.low, 10.0)     # identity / ReLU within ±8
      return x.reshape((x.shape[0], -1))
  x = _batch()
  for low in (-10.0, 0.0):
    module = Clamped(low)
    message = _linen_refusal(module, x)
    assert "no known activation" in message and "test_from_flax.py:" in message


class PinnedModes(nn.Module):
  """A layer whose mode does not follow ``train``: a frozen BatchNorm (by attribute or by
  the call's argument) or a dropout that never drops."""
  how: str

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    if self.how == "frozen attribute":
      x = nn.BatchNorm(use_running_average=True)(x)
    elif self.how == "frozen call":
      x = nn.BatchNorm()(x, use_running_average=True)
    elif self.how == "batch statistics in eval":
      x = nn.BatchNorm()(x, use_running_average=False)
    else:
      x = nn.BatchNorm(use_running_average=not train)(x)
      x = nn.Dropout(0.5, deterministic=True)(x)
    return nn.Dense(3)(nn.relu(x).mean((1, 2)))


@pytest.mark.parametrize("how, words", [
    ("frozen attribute", "keeps its running statistics in train mode"),
    ("frozen call", "keeps its running statistics in train mode"),
    ("batch statistics in eval", "in eval mode"),
    ("dropout off", "never drops units (deterministic=True) with rate 0.5")])
def test_a_layer_pinned_to_one_mode_is_refused(how, words):
  module = PinnedModes(how)
  message = _linen_refusal(module)
  assert words in message and "test_from_flax.py:" in message
  assert ("deterministic" if how == "dropout off" else "use_running_average") in message
  assert ("Dropout_0" if how == "dropout off" else "BatchNorm_0") in message


class NNXFrozen(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    x = self.bn(self.conv(x), use_running_average=True)     # model.train() cannot change it
    return self.head(nnx.relu(x).mean((1, 2)))


def test_an_nnx_batch_norm_pinned_by_its_call_is_refused():
  message = _refusal(lambda: jaxdepth.from_nnx(NNXFrozen(nnx.Rngs(0)), _batch()))
  assert "keeps its running statistics in train mode" in message and "layer bn " in message
  with mock.patch.object(NNXFrozen, "__call__", lambda self, x: self.head(
      self.bn(self.conv(x), use_running_average=False).mean((1, 2)))):
    message = _refusal(lambda: jaxdepth.from_nnx(NNXFrozen(nnx.Rngs(0)), _batch()))
  assert "updates its variables in eval mode" in message and "in module bn " in message


class DropPath(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    if not train:
      return x
    keep = jax.random.bernoulli(self.make_rng("dropout"), 0.5, (x.shape[0], 1))
    return x * keep / 0.5


class TrainOnly(nn.Module):
  """Code that runs in train mode only, which the eval trace does not see."""
  how: str

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Dense(8)(x.reshape((x.shape[0], -1))))
    if self.how == "drop path":
      x = x + DropPath()(nn.Dense(8)(x), train)
    elif train:
      x = nn.Dropout(0.5, deterministic=False)(x)
    return nn.Dense(3)(x)


@pytest.mark.parametrize("how, words", [
    ("dropout", "layer Dropout_0 (Dropout, "),
    ("drop path", "a random operation outside nn.Dropout (operation 'random_fold_in') in "
                  "module DropPath_0")])
def test_code_run_in_train_mode_only_is_refused(how, words):
  message = _linen_refusal(TrainOnly(how))
  assert message.startswith("in train mode (train=True") and words in message, message
  assert "test_from_flax.py:" in message
  if how == "dropout":
    assert "called in train mode only" in message and "deterministic=not train" in message


@jax.custom_vjp
def _reverse_gradient(x):
  return x


_reverse_gradient.defvjp(lambda x: (x, None), lambda _, g: (-g,))


@pytest.mark.parametrize("how, op", [("stop_gradient", "'stop_gradient'"),
                                     ("custom_vjp", "'custom_vjp_call'")])
def test_glue_that_only_changes_gradients_is_refused(how, op):
  class Frozen(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3))(x))
      x = jax.lax.stop_gradient(x) if how == "stop_gradient" else _reverse_gradient(x)
      return nn.Dense(3)(x.mean((1, 2)))
  message = _linen_refusal(Frozen())
  assert op in message and "changes the gradients" in message, message
  assert "test_from_flax.py:" in message and "optimizer" in message


class ModeAsAttribute(nn.Module):
  """A mode set at construction, which __call__ does not take: one mode, eval's."""
  layer: str
  training: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    if self.layer == "batch_norm":
      x = nn.BatchNorm(use_running_average=not self.training)(x)
    elif self.layer == "dropout":
      x = nn.Dropout(0.5, deterministic=not self.training)(x)
    else:
      x = nn.Dropout(0.0, deterministic=not self.training)(nn.LayerNorm()(x))
    return nn.Dense(3)(nn.relu(x).mean((1, 2)))


@pytest.mark.parametrize("layer, words", [
    ("batch_norm", "BatchNorm_0 (BatchNorm, "), ("dropout", "Dropout_0 (Dropout, ")])
def test_a_pinned_layer_in_a_module_without_mode_argument_is_refused(layer, words):
  message = _linen_refusal(ModeAsAttribute(layer))
  assert words in message and "takes no mode argument" in message, message
  assert "add a 'train' argument to __call__" in message and "test_from_flax.py:" in message
  attribute = "use_running_average" if layer == "batch_norm" else "deterministic"
  assert f"{attribute}=not train" in message
  # Without such layers one mode is all there is: it converts.
  module, x = ModeAsAttribute("other"), _batch(n=2)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  conv = jaxdepth.from_flax(module, variables, x)
  assert "LayerNorm" in [type(n).__name__ for n in conv.spec.layers]
  assert "train_kwarg" not in message    # __call__ has no bool argument to name


def test_a_mode_argument_under_another_name_is_named_with_train_kwarg():
  class IsTrain(nn.Module):
    @nn.compact
    def __call__(self, x, scale: float = 1.0, is_train: bool = False):
      x = nn.BatchNorm(use_running_average=not is_train)(nn.Conv(4, (3, 3))(x) * scale)
      return nn.Dense(3)(nn.relu(x).mean((1, 2)))
  module, x = IsTrain(), _batch(n=2)
  message = _linen_refusal(module, x)
  assert "takes no mode argument ('train')" in message, message
  assert "if 'is_train' is its mode argument, pass train_kwarg='is_train'" in message
  assert "eval_kwarg='is_train'" in message and "'scale'" not in message
  variables = jax.jit(module.init)(jax.random.key(0), x)
  conv = jaxdepth.from_flax(module, variables, x, train_kwarg="is_train")
  assert "BatchNorm" in [type(n).__name__ for n in conv.spec.layers]


def test_statistics_over_a_device_axis_are_refused_with_the_fix():
  class Synced(nn.Module):
    norm: str
    axis_name: str | None = "batch"

    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.Conv(4, (3, 3))(x)
      if self.norm == "batch":
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x)
      else:
        x = nn.GroupNorm(num_groups=2, axis_name=self.axis_name)(x)
      return nn.Dense(3)(nn.relu(x).mean((1, 2)))
  message = _linen_refusal(Synced("batch"))
  assert "BatchNorm_0 (BatchNorm, " in message and "axis_name='batch'" in message, message
  assert "global batch" in message and "construct it with axis_name=None" in message
  # A GroupNorm's statistics are shared in eval mode too: its variables come from outside a
  # device map, as the unsynced twin's.
  x = _batch()
  variables = jax.jit(Synced("group", None).init)(jax.random.key(0), x)
  message = _refusal(lambda: jaxdepth.from_flax(Synced("group"), variables, x))
  assert "GroupNorm_0 (GroupNorm, " in message and "axis 'batch'" in message, message
  assert "construct it with axis_name=None" in message


class NNXDictOut(nnx.Module):
  def __init__(self, rngs):
    self.head = nnx.Linear(4, 3, rngs=rngs)
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)

  def __call__(self, x):
    return {"logits": self.head(self.conv(x).mean((1, 2)))}


def test_a_module_returning_a_dict_is_refused_naming_it():
  class DictOut(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      return {"logits": nn.Dense(3)(nn.Conv(4, (3, 3))(x).mean((1, 2)))}
  for message in (_linen_refusal(DictOut()),
                  _refusal(lambda: jaxdepth.from_nnx(NNXDictOut(nnx.Rngs(0)), _batch()))):
    assert "returns a dict with the keys ['logits']" in message, message
    assert "return the logits array alone" in message


class StdConv(nn.Conv):
  """BiT's weight-standardised convolution: the kernel is transformed where it is read."""
  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return value - jnp.mean(value, axis=(0, 1, 2)) if name == "kernel" else value


def test_a_layer_subclass_defining_methods_is_refused_naming_them():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.relu(StdConv(4, (3, 3))(x)).mean((1, 2)))
  message = _linen_refusal(Net())
  assert "layer StdConv_0 (StdConv, " in message and "defines param()" in message, message
  assert "test_from_flax.py:" in message and "class-attribute defaults" in message


STD_CONV_SOURCE = """
import flax.linen as nn
import jax.numpy as jnp


class StdConv(nn.Conv):
  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return value - jnp.mean(value, axis=(0, 1, 2)) if name == "kernel" else value


class Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.relu(StdConv(4, (3, 3))(x)).mean((1, 2)))
"""


@pytest.mark.parametrize("where", ["exec", "sibling"])
def test_a_layer_subclass_outside_a_file_or_beside_jaxdepth_is_refused(where):
  # Code from exec, python -c, <stdin> or a notebook cell has a file name "<...>" as the
  # methods dataclasses writes do; a package jaxdepth_x/ beside jaxdepth's folder starts
  # with that folder's path: neither is library code.
  file = ("<string>" if where == "exec" else
          os.path.join(os.path.dirname(os.path.abspath(jaxdepth.__file__)) + "_x", "model.py"))
  namespace = {"__name__": "jaxdepth_x_model"}
  exec(compile(STD_CONV_SOURCE, file, "exec"), namespace)
  message = _linen_refusal(namespace["Net"]())
  assert "StdConv subclasses a Flax layer and defines param()" in message, message


def test_layer_arguments_the_spec_has_no_room_for_are_refused():
  class Masked(nn.Module):
    @nn.compact
    def __call__(self, x):
      mask = jnp.zeros((3, 3, 1, 4)).at[1, 1].set(1.0)
      return nn.Conv(4, (3, 3), mask=mask)(x).reshape((x.shape[0], -1))

  class MaskedNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3))(x)
      return nn.LayerNorm()(x, mask=x > 0).reshape((x.shape[0], -1))

  class NNXMasked(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 4, (3, 3), mask=jnp.ones((3, 3, 1, 4)), rngs=rngs)

    def __call__(self, x):
      return self.conv(x).reshape((x.shape[0], -1))
  x = _batch()
  for module, words in ((Masked(), "Conv_0 (Conv, "), (MaskedNorm(), "LayerNorm_0 (LayerNorm, ")):
    message = _linen_refusal(module, x)
    assert words in message and "mask" in message and "test_from_flax.py:" in message
  message = _refusal(lambda: jaxdepth.from_nnx(NNXMasked(nnx.Rngs(0)), x))
  assert "layer conv " in message and "sets mask" in message


def test_an_int_kernel_size_is_a_1d_convolution_and_refused():
  class Conv1d(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Conv(4, kernel_size=3)(x).reshape((x.shape[0], -1))   # along W, rows batched
  module, x = Conv1d(), _batch()
  message = _linen_refusal(module, x)
  assert "kernel_size (3,) is not 2-D" in message and "Conv_0" in message


class Conv3x3(nn.Conv):
  """A Flax layer with other defaults and no ``__call__`` of its own."""
  features: int = 4
  kernel_size: tuple = (3, 3)


class NNXHead(nnx.Linear):
  pass


def test_a_layer_subclass_that_only_changes_defaults_converts_as_the_layer():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.relu(Conv3x3()(x)).mean((1, 2)))

  class NNXNet(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
      self.head = NNXHead(4, 3, rngs=rngs)

    def __call__(self, x):
      return self.head(nnx.relu(self.conv(x)).mean((1, 2)))
  x = _batch()
  module = Net()
  variables = jax.jit(module.init)(jax.random.key(0), x)
  conv = jaxdepth.from_flax(module, variables, x)
  assert [type(n).__name__ for n in conv.spec.layers] == ["Conv", "Act", "Pool", "Dense"]
  np.testing.assert_allclose(network.forward(conv.spec, conv.variables, x).logits,
                             module.apply(variables, x), atol=1e-5)
  model = NNXNet(nnx.Rngs(0))
  conv = jaxdepth.from_nnx(model, x)
  assert conv.paths["head"] == "head"
  np.testing.assert_allclose(network.forward(conv.spec, conv.variables, x).logits, model(x),
                             atol=1e-5)


def test_variables_lacking_a_collection_are_refused_as_such():
  module, variables = _make("linen", "resnet")
  x = _batch()
  message = _refusal(lambda: jaxdepth.from_flax(module, {"params": variables["params"]}, x))
  assert "batch_stats" in message and "module.init(rng, x)" in message
  assert "batch shaped like the data" not in message


# ------------------------------------------------------------------------------ the CLI


USER_FILE = '''
import flax.linen as nn
import jax.numpy as jnp
from flax import nnx


class MyNet(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
    y = nn.silu(nn.BatchNorm(use_running_average=not train)(
        nn.Conv(8, (3, 3), padding="SAME")(x)))
    y = nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3), padding="SAME")(y))
    x = nn.relu(x + y)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class MyNNXNet(nnx.Module):
  def __init__(self, num_classes, *, rngs):
    self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(8, 8, (3, 3), padding="SAME", rngs=rngs)
    self.bn2 = nnx.BatchNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(x + self.bn2(self.conv2(x)))
    return self.head(x.mean((1, 2)))
'''


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("user") / "mynet.py"
  path.write_text(USER_FILE)
  return path


WIDE_FILE = '''
import flax.linen as nn
import jax.numpy as jnp
from flax import nnx


class Wide(nn.Module):
  width: int
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(jnp.mean(nn.relu(nn.Conv(self.width, (3, 3))(x)), (1, 2)))


class NNXWide(nnx.Module):
  def __init__(self, width, num_classes, *, rngs):
    self.conv = nnx.Conv(1, width, (3, 3), rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.conv(x)).mean((1, 2)))
'''


@pytest.mark.parametrize("name", ["Wide", "NNXWide"])
def test_a_users_class_gets_the_model_kwargs_it_takes(name, tmp_path):
  path = tmp_path / "wide.py"
  path.write_text(WIDE_FILE)
  # A config's arguments for its own zoo model (depth) are left out; width is taken.
  conv = convert.from_file(f"{path}:{name}", input_shape=SHAPE, num_classes=4,
                           model_kwargs={"width": 6, "depth": 20})
  kernels = [n for _, n in conv.spec.walk() if isinstance(n, jaxdepth.Conv)]
  assert [k.features for k in kernels] == [6] and conv.spec.output_shape == (4,)
  with pytest.raises(jaxdepth.ConversionError, match=r"the model_kwargs it takes \(--set"):
    convert.from_file(f"{path}:{name}", input_shape=SHAPE, num_classes=4, model_kwargs={})


def test_a_users_file_with_postponed_annotations_loads(tmp_path):
  # Linen resolves a dataclass's string annotations through sys.modules[cls.__module__]:
  # the file must be registered there while it runs.
  path = tmp_path / "future.py"
  path.write_text("from __future__ import annotations\n" + WIDE_FILE)
  conv = convert.from_file(f"{path}:Wide", input_shape=SHAPE, num_classes=4,
                           model_kwargs={"width": 6})
  assert conv.spec.sites() == ("relu",) and conv.spec.output_shape == (4,)
  broken = tmp_path / "broken.py"
  broken.write_text("from __future__ import annotations\nraise RuntimeError('no')\n")
  with pytest.raises(jaxdepth.ConversionError, match="importing .* failed: RuntimeError: no"):
    convert.load_class(f"{broken}:Wide")
  assert "jaxdepth_user_broken" not in sys.modules


MODE_FILE = """
import flax.linen as nn
import jax.numpy as jnp


class Train(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))
    return nn.Dense(self.num_classes)(nn.Dropout(0.5, deterministic=not train)(
        jnp.mean(nn.relu(x), (1, 2))))


class Deterministic(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, deterministic: bool):
    x = nn.BatchNorm(use_running_average=deterministic)(nn.Conv(4, (3, 3))(x))
    return nn.Dense(self.num_classes)(nn.Dropout(0.5, deterministic=deterministic)(
        jnp.mean(nn.relu(x), (1, 2))))
"""


@pytest.mark.parametrize("name", ["Train", "Deterministic"])
def test_a_users_file_with_a_required_mode_flag_converts(name, tmp_path):
  # The command line cannot pass train_kwarg= or eval_kwarg=: from_file reads the flag's name.
  path = tmp_path / "modes.py"
  path.write_text(MODE_FILE)
  conv = convert.from_file(f"{path}:{name}", input_shape=SHAPE, num_classes=4)
  kinds = [type(n).__name__ for _, n in conv.spec.walk()]
  assert "BatchNorm" in kinds and "Dropout" in kinds and conv.spec.sites() == ("relu",)


def test_a_users_file_imports_the_modules_beside_it(tmp_path):
  # As `python model.py` would: the file's folder is on the path while it is imported, and
  # after (an import inside a function runs when the module is traced).
  (tmp_path / "twofile_blocks.py").write_text(
      "import flax.linen as nn\n\n\nclass Blk(nn.Module):\n  @nn.compact\n"
      "  def __call__(self, x):\n    return x + nn.Conv(x.shape[-1], (3, 3), "
      "padding='SAME')(nn.relu(x))\n")
  (tmp_path / "twofile_model.py").write_text(
      "import flax.linen as nn\nfrom twofile_blocks import Blk\n\n\nclass Net(nn.Module):\n"
      "  num_classes: int = 10\n\n  @nn.compact\n  def __call__(self, x):\n"
      "    import twofile_blocks\n"
      "    x = twofile_blocks.Blk()(nn.Conv(4, (3, 3), padding='SAME')(x))\n"
      "    return nn.Dense(self.num_classes)(x.mean((1, 2)))\n")
  try:
    assert convert.load_class(f"{tmp_path / 'twofile_model.py'}:Net").__name__ == "Net"
    conv = convert.from_file(f"{tmp_path / 'twofile_model.py'}:Net", input_shape=SHAPE,
                             num_classes=4)
    assert conv.spec.sites() == ("Blk_0/relu",) and conv.spec.output_shape == (4,)
  finally:
    sys.modules.pop("twofile_blocks", None)
    while str(tmp_path) in sys.path:
      sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("flag", ["training", "is_training"])
def test_a_users_file_with_a_keras_style_flag_is_refused_with_command_line_advice(flag, tmp_path):
  path = tmp_path / "keras.py"
  path.write_text(f"""
import flax.linen as nn


class K(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, {flag}: bool = False):
    x = nn.relu(nn.BatchNorm(use_running_average=not {flag})(nn.Conv(4, (3, 3))(x)))
    return nn.Dense(self.num_classes)(x.mean((1, 2)))
""")
  message = _refusal(lambda: convert.from_file(f"{path}:K", input_shape=SHAPE, num_classes=4))
  assert f"takes {flag!r}" in message and "train_kwarg" not in message, message
  assert "must be called train (True in train mode) or deterministic" in message
  assert f"rename it, or wrap the class" in message and f"{flag}=train" in message


def test_cli_runs_easier_on_a_users_module_file(user_file, tmp_path, capsys):
  from jaxdepth.train import __main__ as cli
  workdir = tmp_path / "run"
  assert cli.main(["easier", "--model", f"{user_file}:MyNet", "--workdir",
                   str(workdir), "--no-progress", "--no-latency", "--config.epochs=1",
                   "--iterations", "1"]) == 0
  saved, _ = jaxdepth.load_model(workdir / "chosen")
  assert saved.name == "MyNet" and saved.sites() == ("relu", "block/silu", "block/relu")
  assert saved.output_shape == (10,)
  capsys.readouterr()
  assert cli.main(["easier", "--model", f"{user_file}:Missing", "--workdir",
                   str(tmp_path / "other")]) == 2
  err = capsys.readouterr().err
  assert "defines no Flax module class 'Missing'" in err and "MyNet" in err
  assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("command, model", [
    ("egp", "MyNet"), ("nepenthe", "MyNet"), ("lacoot", "MyNet"), ("tlc", "MyNet"),
    ("lacoot", "MyNNXNet")])
def test_every_method_command_accepts_a_users_module_file(command, model, user_file, tmp_path,
                                                          capsys):
  # A batch larger than the training split stops the command after every check of the
  # settings and the model, before training: the only problem reported is that batch size,
  # so the file's module was loaded, converted and accepted by the method's own checks.
  from jaxdepth.train import __main__ as cli
  argv = [command, "--model", f"{user_file}:{model}", "--workdir", str(tmp_path / "run"),
          "--no-progress", "--config.batch_size=100000"]
  assert cli.main(argv) == 2
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith("error: --config.batch_size=100000: larger "
                                                   "than the")


def test_shared_layer_is_refused():
  class Shared(nn.Module):
    @nn.compact
    def __call__(self, x):
      conv = nn.Conv(1, (3, 3), padding="SAME")
      return conv(nn.relu(conv(x))).reshape((x.shape[0], -1))
  module = Shared()
  message = _linen_refusal(module)
  assert "Conv_0" in message and "called more than once" in message


class NNXSharedDropout(nnx.Module):
  """One weightless dropout called after two layers (or twice in a row)."""
  def __init__(self, rngs, twice_in_a_row=False):
    self.l1 = nnx.Linear(64, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 16, rngs=rngs)
    self.l3 = nnx.Linear(16, 10, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.twice_in_a_row = twice_in_a_row

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    if self.twice_in_a_row:
      return self.dropout(self.dropout(self.l1(x)))
    x = self.dropout(nnx.relu(self.l1(x)))
    x = self.dropout(nnx.relu(self.l2(x)))
    return self.l3(x)


def test_a_weightless_layer_called_twice_is_a_node_per_call():
  model = NNXSharedDropout(nnx.Rngs(0))
  x = _batch()
  conv = jaxdepth.from_nnx(model, x)
  drops = [(p, n) for p, n in conv.spec.walk() if isinstance(n, S.Dropout)]
  assert [(p, n.rate) for p, n in drops] == [("dropout", 0.5), ("dropout_2", 0.5)]
  assert conv.paths["dropout"] == conv.paths["dropout_2"] == "dropout"
  copy = nnx.clone(model)
  copy.eval()
  x = _batch(3)
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(copy(x)), rtol=1e-5, atol=1e-5)
  # Train mode: each call draws its own mask at the layer's rate. Two calls in a row keep a
  # unit with probability 1/4 (one shared mask would keep 1/2), scaled by 1 / (1/4).
  model = NNXSharedDropout(nnx.Rngs(0), twice_in_a_row=True)
  conv = jaxdepth.from_nnx(model, x)
  x = _batch(4, n=256)
  got = np.asarray(network.forward(conv.spec, conv.variables, x, train=True,
                                   rng=jax.random.key(0)).logits)
  full = np.asarray(network.forward(conv.spec, conv.variables, x).logits)
  kept = got != 0
  assert abs(kept.mean() - 0.25) < 0.03, kept.mean()
  np.testing.assert_allclose(got[kept], 4 * full[kept], rtol=1e-5, atol=1e-5)
  _, skipped = convert.to_user_variables(conv, conv.variables,
                                         nnx.to_pure_dict(nnx.state(model)))
  assert skipped == []


class TwoBlocks(nn.Module):
  """Two residual blocks, rematerialised (nn.remat: the trace holds them as checkpoints) or not."""
  remat: bool

  @nn.compact
  def __call__(self, x, train: bool = False):
    block = nn.remat(BasicBlock, static_argnums=(2,)) if self.remat else BasicBlock
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
    x = block(4)(x, train)
    x = block(8, 2)(x, train)
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def test_rematerialised_blocks_convert_as_the_blocks_they_are():
  module = TwoBlocks(remat=True)
  x = _batch(n=4)
  variables = _perturb_stats(jax.jit(module.init)(jax.random.key(0), x), 1)
  conv = jaxdepth.from_flax(module, variables, x)
  renamed = {col: {name.replace("Checkpoint", ""): v for name, v in tree.items()}
             for col, tree in variables.items()}
  plain = jaxdepth.from_flax(TwoBlocks(remat=False), renamed, x)
  # The same network, its block names prefixed as Flax names lifted modules.
  assert conv.spec.to_json().replace("CheckpointBasicBlock", "BasicBlock") == (
      plain.spec.to_json())
  assert sum(isinstance(n, jaxdepth.Block) for _, n in conv.spec.walk()) == 2
  assert conv.paths["CheckpointBasicBlock_1/Conv_2"] == "CheckpointBasicBlock_1/Conv_2"
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(module.apply(variables, x)), rtol=1e-5, atol=1e-5)
  back, skipped = convert.to_user_variables(conv, conv.variables, variables)
  assert skipped == []
  np.testing.assert_array_equal(
      np.asarray(back["params"]["CheckpointBasicBlock_1"]["Conv_2"]["kernel"]),
      np.asarray(variables["params"]["CheckpointBasicBlock_1"]["Conv_2"]["kernel"]))


class NNXStacked(nnx.Module):
  """NNX blocks kept in a list: reached as blocks/0, blocks/1 without a call of the list."""

  def __init__(self, rngs):
    self.stem = nnx.Conv(SHAPE[-1], 4, (3, 3), rngs=rngs)
    self.blocks = nnx.List([NNXBasicBlock(4, 4, 1, rngs=rngs) for _ in range(2)])
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return self.head(x.mean((1, 2)))


def test_nnx_blocks_in_a_list_are_named_by_their_whole_path():
  model = NNXStacked(nnx.Rngs(0))
  x = _batch(n=3)
  conv = jaxdepth.from_nnx(model, x)
  blocks = [p for p, n in conv.spec.walk() if isinstance(n, jaxdepth.Block)]
  assert blocks == ["blocks_0", "blocks_1"]
  assert conv.paths["blocks_1/conv1"] == "blocks/1/conv1"
  model.eval()
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(model(x)), rtol=1e-5, atol=1e-5)


class NNXRematBlock(NNXBasicBlock):
  """NNXBasicBlock rematerialised at its definition, its second conv behind an nnx.jit method."""

  @nnx.remat
  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.second(y))
    return nnx.relu(x + y)

  @nnx.jit
  def second(self, y):
    return self.conv2(y)


class NNXTransformed(nnx.Module):
  """NNXStacked's network with nnx.remat and nnx.jit: on methods, and called at run time."""

  def __init__(self, rngs):
    self.stem = nnx.Conv(SHAPE[-1], 4, (3, 3), rngs=rngs)
    self.blocks = nnx.List([NNXRematBlock(4, 4, 1, rngs=rngs), NNXBasicBlock(4, 4, 1, rngs=rngs)])
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    x = self.blocks[0](self.stem(x))
    x = nnx.remat(lambda block, x: block(x), policy=None)(self.blocks[1], x)
    return nnx.jit(lambda head, x: head(x.mean((1, 2))))(self.head, x)


def test_nnx_remat_and_jit_convert_as_the_functions_they_wrap():
  transformed, stacked = NNXTransformed(nnx.Rngs(0)), NNXStacked(nnx.Rngs(0))
  x = _batch(n=3)
  methods, transforms = dict(NNXRematBlock.__dict__), (nnx.remat, nnx.jit)
  conv = jaxdepth.from_nnx(transformed, x)
  # The methods and nnx.remat and nnx.jit are as they were after the trace.
  assert isinstance(methods["second"], nnx.transforms.compilation.JitWrapped)
  assert dict(NNXRematBlock.__dict__) == methods and (nnx.remat, nnx.jit) == transforms
  plain = jaxdepth.from_nnx(stacked, x).spec.to_json()
  assert conv.spec.to_json() == plain.replace("NNXStacked", "NNXTransformed", 1)
  transformed.eval()
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(transformed(x)), rtol=1e-5, atol=1e-5)


def test_other_nnx_transforms_are_refused_naming_the_line():
  class Conditional(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(SHAPE[-1], 4, (3, 3), rngs=rngs)

    def __call__(self, x):
      return nnx.cond(True, lambda conv, x: conv(x), lambda conv, x: x, self.conv, x).mean((1, 2))

  with pytest.raises(jaxdepth.ConversionError, match=r"NNX transform, .*test_from_flax.py:\d+ "
                     r"\(__call__\).*nnx.remat and nnx.jit.*call the layers directly"):
    jaxdepth.from_nnx(Conditional(nnx.Rngs(0)), _batch(n=2))


def test_blocks_inside_plain_modules_are_named_by_their_path():
  class Stage(nn.Module):
    blocks: int

    @nn.compact
    def __call__(self, x, train: bool = False):
      for _ in range(self.blocks):
        x = BasicBlock(4)(x, train)
      return x

  class Staged(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):    # its BatchNorms follow it
      x = Stage(2)(nn.Conv(4, (3, 3))(x), train)
      return nn.Dense(3)(jnp.mean(Stage(1)(x, train), axis=(1, 2)))
  module = Staged()
  x = _batch(n=2)
  conv = jaxdepth.from_flax(module, jax.jit(module.init)(jax.random.key(0), x), x)
  blocks = [p for p, n in conv.spec.walk() if isinstance(n, jaxdepth.Block)]
  # Each stage's first block is its own BasicBlock_0: named by the stage too, not renumbered.
  assert blocks == ["Stage_0_BasicBlock_0", "Stage_0_BasicBlock_1", "Stage_1_BasicBlock_0"]
  assert conv.paths["Stage_1_BasicBlock_0/Conv_1"] == "Stage_1/BasicBlock_0/Conv_1"


def test_a_scanned_layer_is_refused_with_the_unrolled_form():
  class Body(nn.Module):
    @nn.compact
    def __call__(self, c, _):
      return c + nn.Conv(c.shape[-1], (3, 3), padding="SAME")(nn.relu(c)), None

  class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3), padding="SAME")(x)
      x, _ = nn.scan(Body, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=3)()(x, None)
      return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))
  module = Scanned()
  message = _linen_refusal(module, _batch(n=2))
  assert "called more than once" in message and "unroll the loop into one module per step" in (
      message), message


def test_spec_growth_concat_activations_and_padding():
  concat = S.Concat("cat", branches=((), (S.Conv("c", features=3, padding="SAME", bias=True),),
                                     (S.Act("s", fn="leaky_relu", negative_slope=0.3),)),
                    post=(S.Act("h", fn="hard_swish"),))
  spec = S.Spec((4, 4, 2), (concat, S.Flatten("flat")))
  assert spec.output_shape == (4 * 4 * 7,) and spec.sites() == ("cat/s", "cat/h")
  assert S.Spec.from_json(spec.to_json()) == spec
  assert '"negative_slope": 0.3' in spec.to_json() and spec.to_json().count("negative_slope") == 1
  assert jaxdepth.costs.count_params(spec) == 3 * 3 * 2 * 3 + 3
  assert jaxdepth.costs.count_macs(spec) == 4 * 4 * 3 * 3 * 3 * 2
  variables = network.init(spec, jax.random.key(0))
  x = np.random.default_rng(1).standard_normal((3, 4, 4, 2), dtype=np.float32) * 4
  y = np.asarray(network.forward(spec, variables, jnp.asarray(x)).logits).reshape(3, 4, 4, 7)
  k = np.asarray(variables["params"]["cat"]["c"]["kernel"], np.float64)
  b = np.asarray(variables["params"]["cat"]["c"]["bias"], np.float64)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  conv = np.einsum("bhwijc,ijco->bhwo", np.stack([np.stack(
      [xp[:, i:i + 4, j:j + 4] for j in range(3)], -2) for i in range(3)], -3), k) + b
  joined = np.concatenate([x, conv, np.where(x >= 0, x, 0.3 * x)], -1)
  np.testing.assert_allclose(y, joined * np.clip(joined + 3, 0, 6) / 6, rtol=1e-5, atol=1e-5)
  for bad, words in (
      (lambda: S.Concat("c", branches=((S.Act("a"),),)), "at least two branches"),
      (lambda: S.Spec((4, 4, 2), (S.Concat("c", branches=(
          (), (S.Conv("k", features=2, stride=2),))),)), "leading axes"),
      (lambda: S.Conv("k", features=2, stride=2, padding="SAME"), "padtype_to_pads"),
      (lambda: S.Act("a", fn="swishy"), "unknown activation")):
    with pytest.raises(S.SpecError, match=words):
      bad()
  assert S.Conv("k", features=2, kernel=4, padding="SAME").padding == ((1, 2), (1, 2))


def test_group_norm_node_and_token_mean():
  spec = S.Spec((4, 4, 6), (S.Conv("a", features=6, kernel=1, bias=True),
                            S.GroupNorm("gn", groups=3, epsilon=1e-3),
                            S.Conv("b", features=6, kernel=1, bias=True), jaxdepth.Tokens("tokens"),
                            S.Pool("mean", "global_avg")))
  assert spec.output_shape == (6,) and S.Spec.from_json(spec.to_json()) == spec
  assert '"kind": "group_norm", "name": "gn", "groups": 3, "epsilon": 0.001' in spec.to_json()
  assert jaxdepth.costs.count_params(spec) == 2 * (6 * 6 + 6) + 2 * 6
  variables = network.init(spec, jax.random.key(0))
  gn = {"scale": 1 + np.random.default_rng(1).standard_normal((6,), dtype=np.float32),
        "bias": np.random.default_rng(2).standard_normal((6,), dtype=np.float32)}
  variables["params"]["gn"] = gn
  x = np.random.default_rng(3).standard_normal((2, 4, 4, 6), dtype=np.float32) * 3 + 1
  p = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in
       variables["params"].items()}
  a = x @ p["a"]["kernel"][0, 0] + p["a"]["bias"]
  g = a.reshape(2, 4, 4, 3, 2)                       # groups of 2 consecutive channels
  g = (g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(g.var((1, 2, 4), keepdims=True) + 1e-3)
  b = g.reshape(2, 4, 4, 6) * p["gn"]["scale"] + p["gn"]["bias"]
  want = (b @ p["b"]["kernel"][0, 0] + p["b"]["bias"]).mean((1, 2))
  for train in (False, True):                        # no running statistics: the same
    got = network.forward(spec, variables, jnp.asarray(x), train=train).logits
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  # Surgery merges nothing across it (its statistics depend on the data) and keeps it exact.
  log = []
  shallow, shallow_vars = surgery.collapse(spec, variables, log=log)
  assert [type(n).__name__ for n in shallow.layers] == [
      "Conv", "GroupNorm", "Conv", "Tokens", "Pool"] and not [e for e in log if e.kind == "merge"]
  np.testing.assert_allclose(np.asarray(network.forward(shallow, shallow_vars, x).logits), want,
                             rtol=1e-4, atol=1e-4)
  with pytest.raises(S.SpecError, match="4 groups do not divide the 6 channels"):
    S.Spec((4, 4, 6), (S.GroupNorm("gn", groups=4),))
  with pytest.raises(S.SpecError, match="groups must be a positive int"):
    S.GroupNorm("gn", groups=0)


def test_a_call_needing_more_than_the_input_is_refused():
  class Flagged(nn.Module):
    @nn.compact
    def __call__(self, x, train_mode: bool):
      x = nn.BatchNorm(use_running_average=not train_mode)(nn.Conv(2, (3, 3))(x))
      return x.reshape((x.shape[0], -1))
  module = Flagged()
  x = _batch()
  variables = module.init(jax.random.key(0), x, train_mode=False)
  message = _refusal(lambda: jaxdepth.from_flax(module, variables, x))
  assert "needs the argument(s) train_mode" in message and "train_kwarg='train_mode'" in message
  conv = jaxdepth.from_flax(module, variables, x, train_kwarg="train_mode")
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(module.apply(variables, x, train_mode=False)),
                             rtol=1e-5, atol=1e-5)


class Deterministic(nn.Module):
  """Flax's own flag: ``deterministic`` is True in eval mode."""
  @nn.compact
  def __call__(self, x, deterministic: bool):
    x = nn.relu(nn.BatchNorm(use_running_average=deterministic)(nn.Conv(4, (3, 3))(x)))
    x = nn.Dropout(0.5, deterministic=deterministic)(x.mean((1, 2)))
    return nn.Dense(3)(x)


class NNXDeterministic(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x, deterministic: bool):
    return self.head(nnx.relu(self.bn(self.conv(x), use_running_average=deterministic)
                              ).mean((1, 2)))


def test_a_flag_true_in_eval_mode_is_named_with_eval_kwarg():
  module = Deterministic()
  x = _batch()
  variables = dict(module.init(jax.random.key(0), x, deterministic=True))
  variables["batch_stats"] = _perturb_stats(variables["batch_stats"], 2)
  # Declared as a train flag, it runs BatchNorm on batch statistics in eval mode: the message
  # says which keyword the flag wants rather than blaming the layer alone.
  message = _refusal(lambda: jaxdepth.from_flax(module, variables, x,
                                                train_kwarg="deterministic"))
  assert "use_running_average=not deterministic" in message and (
      "pass eval_kwarg='deterministic' instead of train_kwarg" in message), message
  message = _refusal(lambda: jaxdepth.from_flax(module, variables, x, train_kwarg="train_",
                                                eval_kwarg="deterministic"))
  assert "both name the module's mode argument; pass one" in message
  conv = jaxdepth.from_flax(module, variables, x, eval_kwarg="deterministic")
  x = _batch(3)
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(module.apply(variables, x, deterministic=True)),
                             rtol=1e-5, atol=1e-5)
  # Train mode: batch statistics, updated statistics and the same dropout mask (the spec's
  # dropout sits at the module's scope path).
  want, upd = module.apply(variables, x, deterministic=False, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(0)})
  out = network.forward(conv.spec, conv.variables, x, train=True, rng=jax.random.key(0))
  np.testing.assert_allclose(np.asarray(out.logits), np.asarray(want), rtol=1e-5, atol=1e-5)
  for leaf in ("mean", "var"):
    np.testing.assert_allclose(np.asarray(out.batch_stats["BatchNorm_0"][leaf]),
                               np.asarray(upd["batch_stats"]["BatchNorm_0"][leaf]),
                               rtol=1e-5, atol=1e-6)
  model = NNXDeterministic(nnx.Rngs(0))
  nnx.update(model, _perturb_stats(nnx.state(model, nnx.BatchStat), 2))
  conv = jaxdepth.from_nnx(model, x, eval_kwarg="deterministic")
  for deterministic, train in ((True, False), (False, True)):
    want = nnx.clone(model)(x, deterministic=deterministic)
    got = network.forward(conv.spec, conv.variables, x, train=train).logits
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


class DeterministicByDefault(nn.Module):
  """Flax's flag with a default, as nn.Dropout has it: False, train mode."""
  @nn.compact
  def __call__(self, x, deterministic: bool = False):
    x = nn.relu(nn.BatchNorm(use_running_average=deterministic)(nn.Conv(4, (3, 3))(x)))
    return nn.Dense(3)(nn.Dropout(0.5, deterministic=deterministic)(x.mean((1, 2))))


class NNXDeterministicByDefault(NNXDeterministic):
  def __call__(self, x, deterministic: bool = False):
    return super().__call__(x, deterministic)


@pytest.mark.parametrize("required", [True, False])
def test_a_deterministic_flag_is_read_without_eval_kwarg(required):
  # With no flag named and no train argument, deterministic is the eval flag, as from_file
  # reads it: passed True in eval mode and False in the train-mode trace.
  module = Deterministic() if required else DeterministicByDefault()
  x = _batch()
  variables = dict(module.init(jax.random.key(0), x, deterministic=True))
  variables["batch_stats"] = _perturb_stats(variables["batch_stats"], 2)
  conv = jaxdepth.from_flax(module, variables, x)
  x = _batch(3)
  np.testing.assert_allclose(np.asarray(network.forward(conv.spec, conv.variables, x).logits),
                             np.asarray(module.apply(variables, x, deterministic=True)),
                             rtol=1e-5, atol=1e-5)
  model = NNXDeterministic(nnx.Rngs(0)) if required else NNXDeterministicByDefault(nnx.Rngs(0))
  nnx.update(model, _perturb_stats(nnx.state(model, nnx.BatchStat), 2))
  conv = jaxdepth.from_nnx(model, x)
  for deterministic, train in ((True, False), (False, True)):
    want = nnx.clone(model)(x, deterministic=deterministic)
    got = network.forward(conv.spec, conv.variables, x, train=train).logits
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flag", ["training", "is_training"])
def test_a_keras_style_flag_must_be_named(flag):
  # Left at its default it would trace one mode only, and a layer pinned to one mode (the
  # dropout here) would pass unchecked.
  namespace = {}
  exec(f"""
class Pinned(nn.Module):
  @nn.compact
  def __call__(self, x, {flag}: bool = False):
    x = nn.relu(nn.BatchNorm(use_running_average=not {flag})(nn.Conv(4, (3, 3))(x)))
    return nn.Dense(3)(nn.Dropout(0.5, deterministic=True)(x.mean((1, 2))))
""", {"nn": nn}, namespace)
  module = namespace["Pinned"]()
  message = _linen_refusal(module)
  assert f"Pinned.__call__ takes {flag!r}" in message and (
      f"pass train_kwarg={flag!r}" in message), message
  x = _batch()
  variables = jax.jit(module.init)(jax.random.key(0), x)
  message = _refusal(lambda: jaxdepth.from_flax(module, variables, x, train_kwarg=flag))
  assert "never drops units (deterministic=True)" in message

"""Transformer nodes against independent numpy references; validation; costs; the zoo."""
import functools
import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth import costs, network, zoo
from jaxdepth import spec as S
from jaxdepth.transformer import (
    Attention, ClassToken, PatchMerging, PositionEmbedding, SelectToken, StochasticDepth, Tokens,
    WindowAttention)
from jaxdepth.transformer import models as transformer_models

from _explicit_axes import assert_unsharded_loss_and_gradients

# ------------------------------------------------------------- numpy references


def _softmax(a):
  a = a - a.max(-1, keepdims=True)
  e = np.exp(a)
  return e / e.sum(-1, keepdims=True)


def _np_heads(x, p, heads):
  """Attention of token rows ``x`` (T, C) with packed qkv, as torch's MultiheadAttention."""
  c = x.shape[-1]
  d = c // heads
  qkv = x @ p["qkv"]["kernel"] + p["qkv"]["bias"]
  q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
  out = []
  for h in range(heads):
    sl = slice(h * d, (h + 1) * d)
    out.append((q[:, sl] / math.sqrt(d), k[:, sl], v[:, sl]))
  return out


def np_attention(x, p, heads):
  """Global multi-head self-attention of one sequence (N, C)."""
  outs = [_softmax(q @ k.T) @ v for q, k, v in _np_heads(x, p, heads)]
  return np.concatenate(outs, -1) @ p["proj"]["kernel"] + p["proj"]["bias"]


def np_window_attention(x, p, heads, window, shift, pad):
  """torchvision's ``shifted_window_attention`` for one example, written with loops:
  pad, drop the shift where the window covers the padded axis, roll, attend inside
  each window with the relative position bias and the region mask (built with
  torchvision's slices), put back, roll back, crop."""
  h, w, c = x.shape
  wh, ww = window
  ph = (wh - h % wh) % wh if pad else 0
  pw = (ww - w % ww) % ww if pad else 0
  xp = np.pad(x, ((0, ph), (0, pw), (0, 0)))
  hp, wp = xp.shape[:2]
  sh, sw = (0 if wh >= hp else shift[0]), (0 if ww >= wp else shift[1])
  xp = np.roll(xp, (-sh, -sw), axis=(0, 1))
  mask = np.zeros((hp, wp))
  count = 0
  for hs in ((0, -wh), (-wh, -sh), (-sh, None)):
    for ws in ((0, -ww), (-ww, -sw), (-sw, None)):
      mask[hs[0]:hs[1], ws[0]:ws[1]] = count
      count += 1
  table = p["relative_position_bias_table"]
  out = np.zeros_like(xp)
  for i in range(0, hp, wh):
    for j in range(0, wp, ww):
      pos = [(a, b) for a in range(wh) for b in range(ww)]
      tokens = np.stack([xp[i + a, j + b] for a, b in pos])
      region = np.array([mask[i + a, j + b] for a, b in pos])
      results = []
      for hd, (q, k, v) in enumerate(_np_heads(tokens, p, heads)):
        s = q @ k.T
        for m, (a1, b1) in enumerate(pos):
          for n, (a2, b2) in enumerate(pos):
            s[m, n] += table[(a1 - a2 + wh - 1) * (2 * ww - 1) + (b1 - b2 + ww - 1), hd]
            if (sh or sw) and region[m] != region[n]:
              s[m, n] -= 100.0
        results.append(_softmax(s) @ v)
      y = np.concatenate(results, -1) @ p["proj"]["kernel"] + p["proj"]["bias"]
      for m, (a, b) in enumerate(pos):
        out[i + a, j + b] = y[m]
  out = np.roll(out, (sh, sw), axis=(0, 1))
  return out[:h, :w]


def _np_params(variables, path):
  tree = variables["params"]
  for part in path.split("/"):
    tree = tree[part]
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _random_variables(spec, seed=0):
  """Initial variables with every bias and table made non-zero (so they are tested)."""
  variables = network.init(spec, jax.random.key(seed))
  leaves, tree = jax.tree.flatten(variables)
  rng = np.random.default_rng(seed + 1)
  leaves = [leaf + 0.3 * rng.standard_normal(leaf.shape, dtype=np.float32) for leaf in leaves]
  return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("shape,heads,window,shift,pad", [
    ((8, 8, 6), 3, 7, 3, True),      # Swin-T's first stage at 32x32: two padded windows, shifted
    ((2, 2, 4), 2, 7, 3, True),      # window covers the padded map: the shift is dropped
    ((4, 4, 4), 2, 2, 1, False),     # exact tiling, shifted
    ((6, 4, 4), 1, (3, 2), (1, 1), False),   # rectangular windows
    ((5, 3, 4), 2, 2, 1, True),      # odd map, padded, shifted
])
def test_window_attention_matches_torchvision_algorithm(shape, heads, window, shift, pad):
  spec = S.Spec(shape, (WindowAttention("attn", heads=heads, window=window, shift=shift,
                                        pad=pad),))
  variables = _random_variables(spec)
  x = np.random.default_rng(2).standard_normal((2, *shape), dtype=np.float32)
  got = np.asarray(network.forward(spec, variables, jnp.asarray(x, jnp.float32)).logits)
  p = _np_params(variables, "attn")
  node = spec.layers[0]
  want = np.stack([np_window_attention(xi.astype(np.float64), p, heads, node.window, node.shift,
                                       pad) for xi in x])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_attention_class_token_position_embedding_and_select():
  spec = S.Spec((2, 3, 4), (Tokens("tok"), ClassToken("cls_token"), PositionEmbedding("pos"),
                            Attention("att", heads=2), SelectToken("first", index=0)))
  assert spec.shapes()["cls_token"] == ((6, 4), (7, 4))
  variables = _random_variables(spec)
  x = np.random.default_rng(3).standard_normal((2, 2, 3, 4), dtype=np.float32).astype(np.float64)
  got = np.asarray(network.forward(spec, variables, jnp.asarray(x, jnp.float32)).logits)
  token = _np_params(variables, "cls_token")["token"][0]
  pos = _np_params(variables, "pos")["embedding"][0]
  want = []
  for xi in x:
    seq = np.concatenate([token, xi.reshape(6, 4)]) + pos
    want.append(np_attention(seq, _np_params(variables, "att"), 2)[0])
  np.testing.assert_allclose(got, np.stack(want), rtol=1e-4, atol=1e-5)


def test_patch_merging_order_and_odd_padding():
  spec = S.Spec((3, 4, 2), (PatchMerging("merge"),))
  x = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
  got = np.asarray(network.forward(spec, {}, jnp.asarray(x)).logits)
  xp = np.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))
  for i in range(2):
    for j in range(2):
      want = np.concatenate([xp[:, 2 * i, 2 * j], xp[:, 2 * i + 1, 2 * j], xp[:, 2 * i, 2 * j + 1],
                             xp[:, 2 * i + 1, 2 * j + 1]], -1)
      np.testing.assert_array_equal(got[:, i, j], want)


def test_stochastic_depth_drops_whole_examples_in_train_mode_only():
  spec = S.Spec((3, 4), (StochasticDepth("dp", rate=0.5),))
  x = jnp.ones((64, 3, 4))
  y = np.asarray(network.forward(spec, {}, x, train=True, rng=jax.random.key(0)).logits)
  per_example = y.reshape(64, -1)
  dropped = np.all(per_example == 0, axis=1)
  np.testing.assert_array_equal(per_example[~dropped], 2.0)   # survivors scaled by 1 / (1 - 0.5)
  assert 10 < dropped.sum() < 54
  np.testing.assert_array_equal(network.forward(spec, {}, x).logits, x)


# ------------------------------------------------------------------- validation


@pytest.mark.parametrize("build, message", [
    (lambda: S.Spec((8, 8, 6), (WindowAttention("wa", heads=4, window=4),)),
     "'wa'.*4 heads do not divide the width 6"),
    (lambda: S.Spec((4, 4, 4), (WindowAttention("wa", heads=2, window=7),)),
     "'wa'.*window \\(7, 7\\) is larger than the 4x4 map.*pad=True"),
    (lambda: S.Spec((6, 6, 4), (WindowAttention("wa", heads=2, window=4),)),
     "'wa'.*6x6 map is not a multiple of the window"),
    (lambda: WindowAttention("wa", heads=2, window=4, shift=4), "'wa'.*shift .* < window"),
    (lambda: S.Spec((4, 4, 4), (WindowAttention("wa", heads=2, window=4, shift=2),)),
     "'wa'.*shift.*window as large as the 4x4 map"),
    (lambda: WindowAttention("wa", heads=0), "'wa'.*heads must be a positive int"),
    (lambda: WindowAttention("wa", heads=2, window=(2, 2, 2)), "'wa'.*window must be"),
    (lambda: WindowAttention("wa", heads=2, pad="yes"), "'wa'.*pad must be true or false"),
    (lambda: Attention("at", heads=2, attn_dropout=1.0), "'at'.*attn_dropout"),
    (lambda: S.Spec((4, 4, 4), (Attention("at", heads=2),)),
     "'at'.*needs a token sequence.*Tokens"),
    (lambda: S.Spec((5, 6), (Attention("at", heads=4),)), "'at'.*4 heads do not divide the width 6"),
    (lambda: S.Spec((5, 6), (PatchMerging("pm"),)), "'pm'.*needs an \\(H, W, C\\) map"),
    (lambda: S.Spec((5, 6), (SelectToken("sel", index=5),)), "'sel'.*token 5 of a sequence of 5"),
    (lambda: S.Spec((2, 2, 3), (ClassToken("ct"),)), "'ct'.*needs a token sequence"),
    (lambda: StochasticDepth("dp", rate=1.0), "'dp'.*rate"),
])
def test_inconsistent_transformer_nodes_are_refused_by_name(build, message):
  with pytest.raises(S.SpecError, match=message):
    build()


def test_vit_input_not_a_multiple_of_the_patch_is_refused():
  with pytest.raises(ValueError, match="30x30 is not a multiple of the patch size 16"):
    zoo.vit_b16(input_shape=(30, 30, 3))


# ------------------------------------------------------------------ zoo and costs


def test_parameter_counts_equal_torchvision():
  # torchvision's swin_t and vit_b_16 with 1000 classes
  assert costs.count_params(zoo.swin_t(num_classes=1000, input_shape=(224, 224, 3))) == 28_288_354
  assert costs.count_params(zoo.get("swin_t_imagenet", num_classes=1000)) == 28_288_354
  assert costs.count_params(zoo.vit_b16(num_classes=1000)) == 86_567_656
  # the count does not depend on the feeding size (windows are padded, not resized)
  assert costs.count_params(zoo.swin_t(num_classes=1000)) == 28_288_354


def test_swin_t_topology():
  spec = zoo.swin_t()
  sites = spec.sites()
  assert len(sites) == 12 and sites[0] == "features/1/0/mlp/gelu"
  assert sites[-1] == "features/7/1/mlp/gelu"
  assert all(isinstance(spec.node(s), S.Act) and spec.node(s).fn == "gelu" for s in sites)
  shapes = spec.shapes()
  # CIFAR feeding: 8x8 tokens, then 4x4, 2x2, 1x1 (METHODS: no resize)
  assert [shapes[f"features/{i}"][1] for i in (1, 3, 5, 7)] == [
      (8, 8, 96), (4, 4, 192), (2, 2, 384), (1, 1, 768)]
  assert shapes["features/1/0/mlp/gelu"][0] == (8, 8, 384)
  assert spec.node("features/1/1/attention/attn").shift == (3, 3)
  assert spec.node("features/1/0/attention/attn").shift == (0, 0)
  rates = [spec.node(f"features/{s}/{b}/mlp/drop_path").rate
           for s, n in ((1, 2), (3, 2), (5, 6), (7, 2)) for b in range(n)]
  np.testing.assert_allclose(rates, np.linspace(0, 0.2, 12))
  assert len(zoo.vit_b16().sites()) == 12


def _init_param_count(spec):
  variables = jax.eval_shape(functools.partial(network.init, spec), jax.random.key(0))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", ["digits_swin", "digits_vit", "swin_t"])
def test_count_params_equals_the_initialised_parameters(name):
  spec = zoo.get(name)
  assert _init_param_count(spec) == costs.count_params(spec)


def _jaxpr_macs(jaxpr) -> int:
  """Multiply-accumulates of every dot_general and convolution in a jaxpr (recursive)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    elif eqn.primitive.name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape   # HWIO here
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs[:-1])
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          sub = sub.jaxpr
        if isinstance(sub, jax.extend.core.Jaxpr):
          total += _jaxpr_macs(sub)
  return total


@pytest.mark.parametrize("name", ["digits_swin", "digits_vit"])
def test_count_macs_equals_the_products_the_forward_pass_runs(name):
  spec = zoo.get(name)
  variables = network.init(spec, jax.random.key(0))
  x = jnp.zeros((1, *spec.input_shape))
  jaxpr = jax.make_jaxpr(lambda v, x: network.forward(spec, v, x).logits)(variables, x)
  assert _jaxpr_macs(jaxpr.jaxpr) == costs.count_macs(spec)


def test_published_macs():
  # fvcore's figures for torchvision's models: Swin-T 4.49 GMACs, ViT-B/16 17.56 GMACs at 224
  assert round(costs.count_macs(zoo.get("swin_t_imagenet")) / 1e9, 2) == 4.49
  assert round(costs.count_macs(zoo.vit_b16()) / 1e9, 2) == 17.56


def test_zoo_transformers_round_trip_through_json():
  for name in ("swin_t", "vit_b16", "digits_swin", "digits_vit"):
    spec = zoo.get(name)
    assert S.Spec.from_json(spec.to_json()) == spec


def test_attention_costs_by_hand():
  spec = S.Spec((3, 3, 8), (WindowAttention("wa", heads=2, window=2, shift=1, pad=True),))
  # qkv 8x24 + 24, proj 8x8 + 8, relative position table (2*2-1)^2 rows x 2 heads
  assert costs.count_params(spec) == 8 * 24 + 24 + 8 * 8 + 8 + 9 * 2
  # on the padded 4x4 map (16 tokens, windows of 4): qkv, proj, scores and weighted sums
  assert costs.count_macs(spec) == 16 * 8 * 24 + 16 * 8 * 8 + 2 * 16 * 4 * 8
  assert costs.depth(spec).weight_depth == 2          # qkv then proj
  vit = S.Spec((5, 8), (Attention("at", heads=4, qkv_bias=False),))
  assert costs.count_params(vit) == 8 * 24 + 8 * 8 + 8
  assert costs.count_macs(vit) == 5 * 8 * 24 + 5 * 8 * 8 + 2 * 5 * 5 * 8
  # digits_swin: patch conv, 4 layers of (qkv, proj, fc1, fc2), the reduction, the head
  assert costs.depth(zoo.digits_swin()) == costs.Depth(4, 4, 1 + 4 * 4 + 1 + 1, 4)


def test_attention_dropout_acts_in_train_mode_only():
  spec = S.Spec((5, 4), (Attention("at", heads=2, attn_dropout=0.5),))
  variables = _random_variables(spec)
  x = np.random.default_rng(4).standard_normal((3, 5, 4), dtype=np.float32)
  plain = S.Spec((5, 4), (Attention("at", heads=2),))
  eval_out = network.forward(spec, variables, x).logits
  np.testing.assert_array_equal(eval_out, network.forward(plain, variables, x).logits)
  a = network.forward(spec, variables, x, train=True, rng=jax.random.key(5)).logits
  b = network.forward(spec, variables, x, train=True, rng=jax.random.key(5)).logits
  np.testing.assert_array_equal(a, b)                 # a function of the key
  assert not np.allclose(a, eval_out, atol=1e-3)


@pytest.mark.parametrize("build", [
    lambda: zoo.digits_vit(width=8), lambda: zoo.digits_swin(width=8),
    lambda: transformer_models.swin((8, 8, 1), 3, patch=2, embed_dim=8, depths=(2, 2),
                                    heads=(2, 4), window=2, stochastic_depth=0.5)],
    ids=["digits_vit", "digits_swin", "swin_with_stochastic_depth"])
def test_a_batch_sharded_over_explicit_axes_gives_the_unsharded_loss_and_gradients(build):
  """Class token, window cuts and merges, stochastic depth, jitted on a batch over
  ``jax.make_mesh`` (Explicit axes; the variables replicated there): the unsharded numbers."""
  x = np.random.default_rng(0).standard_normal((4, 8, 8, 1), dtype=np.float32)
  assert_unsharded_loss_and_gradients(build(), x, rng=jax.random.key(1))

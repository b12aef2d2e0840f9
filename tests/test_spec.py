"""The spec: JSON round trip (property test), validation errors, structural edits."""
import dataclasses
import re

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from jaxdepth import spec as S
from jaxdepth import transformer as T

# ------------------------------------------------------------------ generated specs


@st.composite
def conv_stack(draw, prefix: str, channels: int, allow_blocks: bool, depth: int = 0):
  """A list of nodes that maps `channels` channels to `channels` channels at the same
  spatial size (so blocks stay shape-consistent), with names unique in the scope."""
  nodes, n = [], draw(st.integers(1, 4))
  for i in range(n):
    choice = draw(st.sampled_from(["conv", "bn", "act", "dropout", "block", "seq"]
                                  if allow_blocks and depth < 2 else ["conv", "bn", "act", "dropout"]))
    name = f"{prefix}{choice}{i}"
    if choice == "conv":
      k = draw(st.sampled_from([1, 3]))
      groups = draw(st.sampled_from([1, channels]))
      nodes.append(S.Conv(name, features=channels, kernel=k, padding=k // 2, groups=groups,
                          bias=draw(st.booleans())))
    elif choice == "bn":
      nodes.append(S.BatchNorm(name, momentum=draw(st.sampled_from([0.9, 0.99])),
                               epsilon=draw(st.sampled_from([1e-5, 1e-3]))))
    elif choice == "act":
      nodes.append(S.Act(name, fn=draw(st.sampled_from(S.ACTIVATIONS)),
                         negative_slope=draw(st.sampled_from([0.01, 0.2]))))
    elif choice == "dropout":
      nodes.append(S.Dropout(name, rate=draw(st.sampled_from([0.0, 0.1, 0.5]))))
    elif choice == "block":
      branch = draw(conv_stack("b", channels, True, depth + 1))
      shortcut = draw(st.one_of(st.just([]), st.just([S.Conv("sc", features=channels, kernel=1)])))
      post = draw(st.one_of(st.just([]), st.just([S.Act("post", fn="relu")])))
      nodes.append(S.Block(name, branch=tuple(branch), shortcut=tuple(shortcut), post=tuple(post)))
    else:
      nodes.append(S.Sequential(name, layers=tuple(draw(conv_stack("s", channels, True, depth + 1)))))
  return nodes


@st.composite
def specs(draw):
  size = draw(st.sampled_from([4, 6, 8]))
  c = draw(st.sampled_from([2, 4]))
  layers = [S.Conv("stem", features=c, kernel=3, padding=1, stride=draw(st.sampled_from([1, 2])))]
  layers += draw(conv_stack("n", c, True))
  head = draw(st.sampled_from(["gap", "flatten", "adaptive", "max"]))
  if head == "gap":
    layers.append(S.Pool("gap", "global_avg"))
  elif head == "adaptive":
    layers += [S.Pool("ap", "adaptive_avg", output_size=(3, 2)), S.Flatten("flat")]
  elif head == "max":
    layers += [S.Pool("mp", "max", window=3, stride=2, padding=1), S.Flatten("flat")]
  else:
    layers.append(S.Flatten("flat"))
  layers.append(S.Dense("head", features=draw(st.integers(1, 5)), bias=draw(st.booleans())))
  return S.Spec(input_shape=(size, size, draw(st.sampled_from([1, 3]))), layers=tuple(layers),
                name=draw(st.sampled_from(["net", "tiny-net"])))


@st.composite
def transformer_layer(draw, name: str, channels: int, window_attention: bool, size: int):
  """A pre-LN transformer layer (two residual blocks) on a map or a token sequence."""
  heads = draw(st.sampled_from([h for h in (1, 2, 4) if channels % h == 0]))
  if window_attention:
    window = draw(st.sampled_from([1, 2, 3, 7]))
    pad = size % window != 0 or draw(st.booleans())
    shift = draw(st.integers(0, window - 1)) if pad or window < size else 0
    attn = T.WindowAttention("attn", heads=heads, window=window, shift=shift, pad=pad,
                             qkv_bias=draw(st.booleans()),
                             attn_dropout=draw(st.sampled_from([0.0, 0.1])))
  else:
    attn = T.Attention("attn", heads=heads, qkv_bias=draw(st.booleans()),
                       attn_dropout=draw(st.sampled_from([0.0, 0.1])))
  rate = draw(st.sampled_from([0.0, 0.1, 0.25]))
  attention = S.Block("attention", branch=(S.LayerNorm("norm", epsilon=draw(st.sampled_from(
      [1e-5, 1e-6]))), attn, T.StochasticDepth("drop_path", rate=rate)))
  mlp = S.Block("mlp", branch=(S.LayerNorm("norm"), S.Dense("fc1", features=2 * channels),
                               S.Act("gelu", fn=draw(st.sampled_from(["gelu", "identity"]))),
                               S.Dense("fc2", features=channels),
                               T.StochasticDepth("drop_path", rate=rate)))
  return S.Sequential(name, layers=(attention, mlp))


@st.composite
def transformer_specs(draw):
  """Swin-like (maps, windows, patch merging) or ViT-like (tokens, class token) specs."""
  in_size, c = draw(st.sampled_from([4, 6, 8])), draw(st.sampled_from([4, 8]))
  layers = [S.Conv("patch", features=c, kernel=2, stride=2, bias=True)]
  size = in_size // 2
  if draw(st.booleans()):
    layers.append(draw(transformer_layer("0", c, True, size)))
    if draw(st.booleans()):
      layers += [T.PatchMerging("merge"), S.LayerNorm("merge_norm"),
                 S.Dense("reduction", features=2 * c, bias=False)]
      size, c = -(-size // 2), 2 * c
      layers.append(draw(transformer_layer("1", c, True, size)))
    layers.append(S.Pool("gap", "global_avg"))
  else:
    layers += [T.Tokens("tokens"), T.ClassToken("cls_token"), T.PositionEmbedding("pos"),
               draw(transformer_layer("0", c, False, size)),
               T.SelectToken("cls", index=draw(st.integers(0, size * size)))]
  layers.append(S.Dense("head", features=draw(st.integers(1, 5))))
  return S.Spec(input_shape=(in_size, in_size, 3), layers=tuple(layers), name="tf")


@settings(max_examples=150, deadline=None)
@given(specs())
def test_json_round_trip_is_lossless(spec):
  _assert_round_trip(spec)
  # so is a spec with sites baked in (a leaky_relu with its own slope among them)
  if spec.sites():
    _assert_round_trip(S.with_identity(spec, spec.sites()[::2]))


def test_a_leaky_relu_baked_to_the_identity_round_trips():
  spec = small(S.Conv("c", features=2), S.Act("a", fn="leaky_relu", negative_slope=0.2))
  baked = S.with_identity(spec, ["a"])
  assert baked.node("a") == S.Act("a", fn="identity")
  _assert_round_trip(baked)


@settings(max_examples=60, deadline=None)
@given(transformer_specs())
def test_transformer_json_round_trip_is_lossless(spec):
  _assert_round_trip(spec)


def _assert_round_trip(spec):
  text = spec.to_json()
  back = S.Spec.from_json(text)
  assert back == spec
  assert hash(back) == hash(spec)
  assert back.to_json() == text
  assert back.sites() == spec.sites()
  assert back.shapes() == spec.shapes()


# ------------------------------------------------------------------- validation


def small(*layers, input_shape=(8, 8, 3)):
  return S.Spec(input_shape=input_shape, layers=tuple(layers))


def test_paths_are_hierarchical_and_in_call_order():
  spec = small(S.Conv("c", features=4, padding=1),
               S.Sequential("stage", layers=(
                   S.Block("0", branch=(S.Conv("conv1", features=4, padding=1), S.Act("relu1")),
                           shortcut=(S.Conv("proj", features=4, kernel=1),),
                           post=(S.Act("relu2"),)),)),
               S.Act("tail", fn="identity"))
  paths = [p for p, _ in spec.walk()]
  assert paths == ["c", "stage", "stage/0", "stage/0/conv1", "stage/0/relu1", "stage/0/proj",
                   "stage/0/relu2", "tail"]
  assert spec.sites() == ("stage/0/relu1", "stage/0/relu2")   # identity is not a live site
  assert spec.node("stage/0/proj").kernel == (1, 1)
  with pytest.raises(KeyError, match="nope"):
    spec.node("stage/nope")


@pytest.mark.parametrize("build, message", [
    (lambda: small(S.Conv("c", features=4), S.Conv("c", features=4)), "duplicate name 'c'"),
    (lambda: small(S.Conv("c", features=4, stride=0)), "'c'.*stride"),
    (lambda: small(S.Conv("c", features=4, groups=3)), "'c'.*groups"),
    (lambda: small(S.Conv("c", features=6, groups=2)), "'c'.*input channels 3 not divisible"),
    (lambda: small(S.Conv("c", features=4, kernel=9)), "'c'.*does not fit"),
    (lambda: small(S.Act("a", fn="swish")), "'a'.*unknown activation"),
    (lambda: small(S.Block("blk", branch=(S.Conv("c", features=5, padding=1),))),
     "'blk'.*branch output shape .*5.* does not match shortcut .*3"),
    (lambda: small(S.Block("blk", branch=(S.Conv("c", features=3, stride=2, padding=1),))),
     "'blk'.*branch output shape"),
    (lambda: small(S.Sequential("s", layers=(S.Pool("p", "global_avg"), S.Conv("c", features=2)))),
     "'s/c'.*needs an \\(H, W, C\\) input"),
    (lambda: small(S.Conv("a/b", features=2)), "without '/'"),
    (lambda: small(S.Dropout("d", rate=1.5)), "'d'.*rate"),
    (lambda: small(S.Pool("p", "median")), "'p'.*unknown pool op"),
    (lambda: small(S.Conv("c", features=4, bias="false")),
     "'c': bias must be true or false, got 'false'"),
    (lambda: small(S.Conv("c", features=4), S.Flatten("f"), S.Dense("d", features=2, bias=1)),
     "'d': bias must be true or false, got 1"),
    (lambda: small(S.BatchNorm("bn", epsilon=float("nan"))), "'bn': epsilon must be a finite"),
    (lambda: small(S.LayerNorm("ln", epsilon=float("inf"))), "'ln': epsilon must be a finite"),
    (lambda: small(S.GroupNorm("gn", groups=1, epsilon=float("nan"))),
     "'gn': epsilon must be a finite"),
    (lambda: small(S.Sequential("s", layers=S.Conv("c", features=2))),
     r"node 's': layers must be a list of spec nodes, got Conv.*layers=\[Conv\(...\)\]"),
    (lambda: small(S.Block("b", branch=S.Conv("c", features=3, padding=1))),
     r"node 'b': branch must be a list of spec nodes.*branch=\[Conv\(...\)\]"),
    (lambda: S.Spec(784, (S.Flatten("f"),), name="n"),
     r"spec 'n': input_shape must be a list of positive ints, e.g. \[28, 28, 1\], got 784"),
])
def test_invalid_specs_name_the_node_and_problem(build, message):
  with pytest.raises(S.SpecError, match=message):
    build()


def test_unknown_kind_and_fields_in_json_are_refused():
  good = small(S.Conv("c", features=2)).to_dict()
  bad_kind = dict(good, layers=[{"kind": "attention_v9", "name": "att"}])
  with pytest.raises(S.SpecError, match="'att'.*unknown node kind 'attention_v9'"):
    S.Spec.from_dict(bad_kind)
  bad_field = dict(good, layers=[dict(good["layers"][0], dilation=2)])
  with pytest.raises(S.SpecError, match="'c'.*unknown fields \\['dilation'\\]"):
    S.Spec.from_dict(bad_field)
  with pytest.raises(S.SpecError, match="not valid JSON"):
    S.Spec.from_json("{nope")


def test_edits_return_new_valid_specs():
  spec = small(S.Conv("c", features=4, padding=1), S.Act("r1"), S.Conv("d", features=4, padding=1),
               S.Act("r2", fn="relu6"))
  flat = S.with_identity(spec, ["r1"])
  assert flat.sites() == ("r2",)
  assert spec.sites() == ("r1", "r2")          # the original is untouched
  assert flat.node("r1") == S.Act("r1", fn="identity")
  with pytest.raises(KeyError, match="not live sites.*'zz'"):
    S.with_identity(spec, ["zz"])
  with pytest.raises(TypeError, match=r"got the string 'r1'; write \['r1'\]"):
    S.with_identity(spec, "r1")
  removed = S.replace_node(spec, "r1", None)
  assert [p for p, _ in removed.walk()] == ["c", "d", "r2"]
  with pytest.raises(S.SpecError, match="branch output shape"):
    S.replace_node(small(S.Block("b", branch=(S.Conv("c", features=3, padding=1),))),
                   "b/c", S.Conv("c", features=2, padding=1))


def test_nodes_are_hashable_and_normalised():
  a = S.Conv("c", features=4, kernel=3, padding=1, stride=2)
  b = S.Conv("c", features=4, kernel=(3, 3), padding=((1, 1), (1, 1)), stride=(2, 2))
  assert a == b and hash(a) == hash(b)
  assert S.Pool("p", "max", window=3).stride == (3, 3)
  assert dataclasses.replace(a, features=8).features == 8


def _nested(node: dict) -> dict:
  """A JSON spec whose only node ``node`` sits two containers deep (path ``stage/0/...``)."""
  return {"name": "n", "input_shape": [6, 6, 3], "layers": [
      {"kind": "sequential", "name": "stage", "layers": [
          {"kind": "sequential", "name": "0", "layers": [node]}]},
      {"kind": "pool", "name": "pool", "op": "global_avg"},
      {"kind": "dense", "name": "fc", "features": 2}]}


def test_json_features_true_is_refused_naming_the_path():
  conv = {"kind": "conv", "name": "conv1", "features": 4, "kernel": 3, "padding": 1}
  assert S.Spec.from_dict(_nested(conv)).node("stage/0/conv1").features == 4
  with pytest.raises(S.SpecError, match=r"node 'stage/0/conv1': conv features must be a "
                                        r"positive int, got True"):
    S.Spec.from_dict(_nested(dict(conv, features=True)))
  with pytest.raises(S.SpecError, match=r"node 'stage/0/conv1': kernel must be an int or a pair"):
    S.Spec.from_dict(_nested(dict(conv, kernel=[True, 3])))
  with pytest.raises(S.SpecError, match=r"node 'fc': dense features must be a positive int, "
                                        r"got False"):
    S.Spec.from_dict(dict(_nested(conv), layers=[{"kind": "dense", "name": "fc",
                                                  "features": False}]))


def test_json_bias_and_input_shape_of_the_wrong_type_are_refused():
  conv = {"kind": "conv", "name": "conv1", "features": 4, "kernel": 3, "padding": 1}
  with pytest.raises(S.SpecError, match=r"node 'stage/0/conv1': bias must be true or false, "
                                        r"got 'false'"):
    S.Spec.from_dict(_nested(dict(conv, bias="false")))
  with pytest.raises(S.SpecError, match=r"spec 'n': input_shape must be a list of positive ints"):
    S.Spec.from_dict(dict(_nested(conv), input_shape=784))


def test_an_empty_layers_list_is_refused():
  with pytest.raises(S.SpecError, match=r"spec 'n': layers is empty; a spec needs at least one"):
    S.Spec.from_dict({"name": "n", "input_shape": [4], "layers": []})
  with pytest.raises(S.SpecError, match=r"spec 'n': layers must be a list of nodes, got 3"):
    S.Spec.from_dict({"name": "n", "input_shape": [4], "layers": 3})


def test_a_non_numeric_batch_norm_momentum_is_refused_naming_the_path():
  bn = {"kind": "batch_norm", "name": "bn", "momentum": 0.9}
  assert S.Spec.from_dict(_nested(bn)).node("stage/0/bn").momentum == 0.9
  for bad in ("0.9", None, True, [0.9]):
    with pytest.raises(S.SpecError, match=rf"node 'stage/0/bn': momentum must be a number, "
                                          rf"got {re.escape(repr(_tupled(bad)))}"):
      S.Spec.from_dict(_nested(dict(bn, momentum=bad)))
  with pytest.raises(S.SpecError, match=r"node 'stage/0/bn': momentum must be in \[0, 1\)"):
    S.Spec.from_dict(_nested(dict(bn, momentum=1.5)))
  with pytest.raises(S.SpecError, match=r"node 'stage/0/drop': dropout rate must be a number"):
    S.Spec.from_dict(_nested({"kind": "dropout", "name": "drop", "rate": "0.5"}))


def _tupled(v):
  return tuple(v) if isinstance(v, list) else v

"""Property tests: surgery passes keep the function, over many random networks.

Random small specs (chains of conv / BN / identity and ReLU sites / dropout /
nested Sequentials / residual blocks, random channels, kernels 1 or 3, strides
1 or 2, groups, biases) with random variables (random BN statistics) are
evaluated by the numpy executor of ``test_surgery_reference`` in float32.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from jaxdepth import equivalence, network, surgery
from jaxdepth import spec as S
from jaxdepth.surgery import _tree, merge
from jaxdepth.surgery import linear as L
from test_surgery_reference import random_variables, relative, run

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def conv(draw, name, shape, *, keep_shape=False):
  h, w, c = shape
  k = draw(st.sampled_from([1, 3]))
  if keep_shape:
    stride, pad, features = 1, k // 2, c
  else:
    stride = draw(st.sampled_from([1, 2])) if min(h, w) >= 4 else 1
    pad = draw(st.sampled_from(sorted({0, k // 2})))
    if min(h, w) + 2 * pad < k + 1:
      pad = k // 2
    features = draw(st.sampled_from([2, 3, 4, 6]))
  groups = draw(st.sampled_from(sorted({g for g in (1, 2, 3, c)
                                        if c % g == 0 and features % g == 0})))
  return S.Conv(name, features=features, kernel=k, stride=stride, padding=pad, groups=groups,
                bias=draw(st.booleans()))


def site(draw, name, relu_weight=1):
  return S.Act(name, fn=draw(st.sampled_from(["identity"] * 3 + ["relu"] * relu_weight)))


@st.composite
def block(draw, name, shape):
  variant = draw(st.sampled_from(["same", "projection", "inverted"]))
  if variant == "inverted":                   # MobileNetV2: expand, depthwise, project
    hidden = shape[-1] * draw(st.sampled_from([1, 2, 3]))
    branch = (S.Conv("expand", features=hidden, kernel=1), S.BatchNorm("bn1"), site(draw, "a1"),
              S.Conv("dw", features=hidden, kernel=3, padding=1, groups=hidden),
              S.BatchNorm("bn2"), site(draw, "a2"),
              S.Conv("project", features=shape[-1], kernel=1), S.BatchNorm("bn3"))
    return S.Block(name, branch=branch)
  if variant == "same":                       # identity shortcut, shape kept
    branch = [draw(conv("c1", shape, keep_shape=True))]
    if draw(st.booleans()):
      branch.append(S.BatchNorm("bn1"))
    if draw(st.booleans()):
      branch += [site(draw, "a1"), draw(conv("c2", shape, keep_shape=True))]
      if draw(st.booleans()):
        branch.append(S.BatchNorm("bn2"))
    shortcut = ()
  else:                                       # projection shortcut
    c1 = draw(conv("c1", shape))
    out = c1.output_shape(shape, "c1")
    proj = S.Conv("sc", features=c1.features, kernel=1, stride=c1.stride,
                  bias=draw(st.booleans()))
    if proj.output_shape(shape, "sc") != out:
      return None
    branch, shortcut = [c1, S.BatchNorm("bn1")], (proj, S.BatchNorm("sc_bn"))
  post = (site(draw, "a3"),) if draw(st.booleans()) else ()
  return S.Block(name, branch=tuple(branch), shortcut=shortcut, post=post)


@st.composite
def specs(draw):
  h = draw(st.sampled_from([6, 8]))
  shape = (h, h, draw(st.integers(1, 4)))
  input_shape, layers = shape, []
  for i in range(draw(st.integers(2, 6))):
    kind = draw(st.sampled_from(["conv", "conv", "bn", "site", "dropout", "block", "block",
                                 "seq", "pixel_dense", "pool"]))
    name = f"n{i}"
    if kind == "conv":
      node = draw(conv(name, shape))
    elif kind == "bn":
      node = S.BatchNorm(name)
    elif kind == "site":
      node = site(draw, name)
    elif kind == "dropout":
      node = S.Dropout(name, rate=0.3)
    elif kind == "pixel_dense":             # a Dense on (H, W, C): a 1x1 conv
      node = S.Dense(name, features=draw(st.sampled_from([2, 3])))
    elif kind == "pool":
      if min(shape[:2]) < 4:
        continue
      node = draw(st.sampled_from([S.Pool(name, "max", window=2, stride=2),
                                   S.Pool(name, "avg", window=3, stride=1, padding=1)]))
    elif kind == "block":
      node = draw(block(name, shape))
      if node is None:
        continue
    else:
      inner = draw(conv("conv", shape))
      node = S.Sequential(name, layers=(inner, S.BatchNorm("bn"), site(draw, "act")))
    shape = node.output_shape(shape, name)
    layers.append(node)
  head = draw(st.sampled_from(["pool_mlp", "flatten", "none"]))
  if head == "pool_mlp":
    layers += [S.Pool("pool", "global_avg"), S.Dense("fc1", features=5), site(draw, "fc_act"),
               S.Dense("fc2", features=3)]
  elif head == "flatten":
    layers += [S.Flatten("flat"), S.Dense("fc", features=3)]
  return S.Spec(input_shape, tuple(layers), name="random")


def assert_flax_layout(spec, variables):
  """The variables are exactly what ``network.init(spec)`` makes (names, shapes)."""
  expected = jax.eval_shape(lambda k: network.init(spec, k), jax.random.key(0))
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, expected)


def inputs(spec, seed, batch=2):
  return np.random.default_rng(seed + 1).normal(size=(batch, *spec.input_shape)).astype(
      np.float32)


EXACT_PASSES = {
    "fold_batchnorm": lambda s, v: surgery.fold_batchnorm(s, v),
    "drop_noops": lambda s, v: surgery.drop_noops(s, v),
    "merge_exact_all": lambda s, v: surgery.merge_linear(s, v, mode="exact", cost="none"),
    "merge_exact_macs": lambda s, v: surgery.merge_linear(s, v, mode="exact", cost="macs"),
    "fold_residuals": lambda s, v: surgery.fold_residuals(s, v, cost="none"),
    "crop_kernels": lambda s, v: surgery.crop_kernels(s, v),
}


@SETTINGS
@given(specs(), st.permutations(list(EXACT_PASSES)), st.integers(0, 2**16),
       st.sampled_from(["none", "macs"]))
def test_every_exact_pass_keeps_the_function(spec, order, seed, cost):
  variables = random_variables(spec, seed)
  x = inputs(spec, seed)
  y = run(spec, variables, x)
  s, v = spec, variables
  for name in order:
    alone = EXACT_PASSES[name](spec, variables)
    assert relative(y, run(*alone, x)) < 1e-4, name
    s, v = EXACT_PASSES[name](s, v)          # composed in the drawn order
    assert relative(y, run(s, v, x)) < 1e-4, order
  log = []
  shallow, shallow_vars = surgery.collapse(spec, variables, mode="exact", cost=cost, log=log)
  assert relative(y, run(shallow, shallow_vars, x)) < 1e-4
  assert_flax_layout(shallow, shallow_vars)
  assert all(e.exact for e in log)
  assert not any(isinstance(n, S.BatchNorm) and isinstance(prev, (S.Conv, S.Dense))
                 for prev, n in zip(shallow.layers, shallow.layers[1:]))
  event(f"exact collapse: {sum(e.kind == 'merge' for e in log)} merges")
  event(f"border-corrected blocks: {sum('border correction' in e.detail for e in log)}")


def padding_reach(spec):
  """The padding of every window of the spatial prefix, summed (each window's widest side)."""
  return sum(max(max(side) for side in n.padding)
             for _, n in equivalence.spatial_prefix(spec).walk()
             if isinstance(n, S.Conv) or (isinstance(n, S.Pool) and n.op in ("max", "avg")))


@SETTINGS
@given(specs(), st.integers(0, 2**16))
def test_interior_merges_are_equal_away_from_the_border(spec, seed):
  variables = random_variables(spec, seed)
  x = inputs(spec, seed)
  log = []
  shallow, shallow_vars = surgery.collapse(spec, variables, mode="interior", cost="none",
                                           log=log)
  y, y2 = run(spec, variables, x), run(shallow, shallow_vars, x)
  ring = equivalence.border_width(shallow, log)
  if all(e.exact for e in log):
    assert ring == 0
    assert relative(y, y2) < 1e-4
  fa = run(equivalence.spatial_prefix(spec), variables, x)
  fb = run(equivalence.spatial_prefix(shallow), shallow_vars, x)
  h, w = fa.shape[1:3]
  # Counted independently of the surgery's log: no position farther than every window's
  # padding summed over the prefix from the edge reads a padded input.
  assert ring <= padding_reach(spec)
  inner = (slice(None), slice(ring, h - ring), slice(ring, w - ring))
  assert fa[inner].size or 2 * padding_reach(spec) >= min(h, w)
  if fa[inner].size:
    scale = max(float(np.max(np.abs(fa))), 1e-30)
    assert np.max(np.abs(fa[inner] - fb[inner])) / scale < 1e-4
  border_dev = relative(fa, fb)
  note(f"ring {ring} on {h}x{w}: border deviation {border_dev:.3g}")
  event("interior compared" if fa[inner].size else "no interior left")
  event("border deviates" if border_dev > 1e-4 else "border equal")


@st.composite
def cut_specs(draw):
  """Chains where a BN before a ReLU site has channels forced OFF."""
  h = draw(st.sampled_from([6, 8]))
  shape = (h, h, draw(st.integers(2, 4)))
  input_shape, layers = shape, []
  for i in range(draw(st.integers(1, 3))):
    scope = []
    first = draw(conv("conv", shape))
    scope += [first, S.BatchNorm("bn"), S.Act("relu", fn=draw(st.sampled_from(["relu", "relu6"])))]
    mid = first.output_shape(shape, "conv")
    if draw(st.booleans()):     # MobileNetV2-style depthwise stage after the site
      pad = draw(st.sampled_from([0, 1])) if min(mid[:2]) >= 3 else 1
      scope += [S.Conv("dw", features=mid[-1], kernel=3, padding=pad,
                       groups=mid[-1], bias=draw(st.booleans())),
                S.BatchNorm("dw_bn"), S.Act("dw_relu", fn="relu6")]
    if S._run_shapes(scope, shape, "")[0] >= 3 and draw(st.booleans()):
      scope.append(S.Pool("pool", "max", window=2, stride=1))
    node = S.Sequential(f"s{i}", layers=tuple(scope))
    shape = node.output_shape(shape, node.name)
    layers.append(node)
  if draw(st.booleans()):
    layers += [S.Flatten("flat"), S.Dense("fc", features=3)]
  else:
    layers += [S.Conv("head", features=3, kernel=draw(st.sampled_from([1, 3])), padding=1),
               S.Pool("gap", "global_avg")]
  return S.Spec(input_shape, tuple(layers), name="cut")


@SETTINGS
@given(cut_specs(), st.integers(0, 2**16), st.data())
def test_channel_cuts_are_exact_where_channels_are_off(spec, seed, data):
  variables = random_variables(spec, seed)
  counts = {}
  for site in spec.sites():
    c = spec.shapes()[site][0][-1]
    pos = np.ones(c, np.int64)
    prefix = site.rsplit("/", 1)[0]
    if site.endswith("/relu"):            # force channels OFF: BN scale 0, shift -1
      off = np.asarray(data.draw(st.lists(st.booleans(), min_size=c, max_size=c)))
      bn = variables["params"][prefix]["bn"]
      bn["scale"] = np.where(off, 0.0, bn["scale"]).astype(np.float32)
      bn["bias"] = np.where(off, -1.0, bn["bias"]).astype(np.float32)
      pos = np.where(off, 0, pos)
    counts[site] = np.stack([pos, 1 - pos, np.zeros(c, np.int64)])
  x = inputs(spec, seed)
  log = []
  cut, cut_vars = surgery.cut_channels(spec, variables, counts, log=log)
  assert relative(run(spec, variables, x), run(cut, cut_vars, x)) < 1e-4
  removed = sum(math.prod(a.shape) for a in _leaves(variables)) - sum(
      math.prod(a.shape) for a in _leaves(cut_vars))
  if log:
    assert removed > 0
  event(f"{len(log)} sites cut")


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield np.asarray(tree)


@SETTINGS
@given(specs(), st.integers(0, 2**16), st.data())
def test_channel_cuts_on_any_network_leave_a_valid_model(spec, seed, data):
  variables = random_variables(spec, seed)
  shapes = spec.shapes()
  counts = {}
  for site in spec.sites():
    c = shapes[site][0][-1]
    pos = np.asarray(data.draw(st.lists(st.integers(0, 1), min_size=c, max_size=c)))
    counts[site] = np.stack([pos, 1 - pos, np.zeros(c, np.int64)])
  cut, cut_vars = surgery.cut_channels(spec, variables, counts)
  assert_flax_layout(cut, cut_vars)
  y = run(cut, cut_vars, inputs(spec, seed))
  assert y.shape[1:] == spec.output_shape
  assert np.all(np.isfinite(y))


@SETTINGS
@given(st.data(), st.integers(0, 2**16))
def test_bias_corrected_merges_are_exact(data, seed):
  """``rest ∘ (1x1 with bias)`` as merged conv + ones map + border conv, any geometry."""
  h = data.draw(st.sampled_from([5, 6, 8]))
  shape = (h, h, data.draw(st.integers(1, 4)))
  first = S.Conv("first", features=data.draw(st.sampled_from([2, 4, 6])), kernel=1,
                 stride=data.draw(st.sampled_from([1, 2])), bias=True)
  mid = first.output_shape(shape, "first")
  rest = [data.draw(conv(f"r{i}", mid)) for i in range(1)]
  rest.append(data.draw(conv("r1", rest[0].output_shape(mid, "r0"))))
  if any(any(p) for p in rest[1].padding):     # the second must be unpadded: rest exact
    rest[1] = dataclasses.replace(rest[1], kernel=(1, 1), padding=0)
  spec = S.Spec(shape, (first, *rest))
  variables = random_variables(spec, seed)
  node_vars = _tree.split_variables(spec, variables)
  view = _tree.flat_view(spec.layers, "", shape)
  ops = [L.from_node(e.node, node_vars[e.path], e.in_shape) for e in view]
  made = merge._bias_corrected(view, ops[0], L.crop(L.compose(ops[1], ops[2])))
  assert made is not None
  block, block_vars, _, _ = made
  merged = S.Spec(shape, (block,))
  merged_vars = _tree.join_variables(merged, block_vars)
  x = inputs(spec, seed)
  assert relative(run(spec, variables, x), run(merged, merged_vars, x)) < 1e-4

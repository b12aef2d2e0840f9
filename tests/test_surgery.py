"""Surgery on concrete networks: the math, the structures it builds, the Flax executor."""
from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdepth import checkpoint, costs, equivalence, network, surgery, zoo
from jaxdepth import spec as S
from test_surgery_reference import random_variables, relative, run


def x_for(spec, batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, *spec.input_shape)).astype(np.float32)


def flax_equal(spec_a, vars_a, spec_b, vars_b, *, tol=1e-4, border=None):
  rep = equivalence.compare(spec_a, vars_a, spec_b, vars_b, x_for(spec_a), border=border)
  assert rep.max_rel < tol, rep
  return rep


# ------------------------------------------------------------------ BatchNorm


def test_fold_batchnorm_is_the_textbook_formula():
  spec = S.Spec((5, 5, 2), (S.Conv("conv", features=3, kernel=3, padding=1, bias=True),
                            S.BatchNorm("bn", epsilon=1e-3), S.Act("relu")))
  v = random_variables(spec, 3)
  folded, fv = surgery.fold_batchnorm(spec, v)
  assert [type(n) for n in folded.layers] == [S.Conv, S.Act]
  assert folded.layers[0].bias
  w, b = v["params"]["conv"]["kernel"], v["params"]["conv"]["bias"]
  g, beta = v["params"]["bn"]["scale"], v["params"]["bn"]["bias"]
  mu, var = v["batch_stats"]["bn"]["mean"], v["batch_stats"]["bn"]["var"]
  s = g / np.sqrt(var.astype(np.float64) + 1e-3)
  np.testing.assert_allclose(fv["params"]["conv"]["kernel"], w * s, rtol=1e-6)
  np.testing.assert_allclose(fv["params"]["conv"]["bias"], s * (b - mu) + beta, rtol=1e-5,
                             atol=1e-6)
  assert "batch_stats" not in fv
  flax_equal(spec, v, folded, fv)


def test_batchnorm_before_a_conv_folds_forward_only_where_exact():
  pre = S.Spec((6, 6, 3), (S.BatchNorm("bn"), S.Conv("pw", features=4, kernel=1),
                           S.BatchNorm("bn2"), S.Conv("c3", features=2, kernel=3, padding=1)))
  v = random_variables(pre, 1)
  folded, fv = surgery.fold_batchnorm(pre, v)
  # bn goes into the unpadded 1x1 conv after it; bn2 folds back into pw.
  assert [n.name for n in folded.layers] == ["pw", "c3"]
  flax_equal(pre, v, folded, fv)
  padded = S.Spec((6, 6, 3), (S.BatchNorm("bn"), S.Conv("c3", features=2, kernel=3, padding=1)))
  assert surgery.fold_batchnorm(padded, random_variables(padded))[0] == padded


# --------------------------------------------------------------------- merges


def chain(*convs, shape=(8, 8, 4)):
  return S.Spec(shape, tuple(convs))


def test_kernel_growth_and_stride_composition():
  spec = chain(S.Conv("a", features=5, kernel=3, stride=2, padding=1, bias=True),
               S.Act("id", fn="identity"),
               S.Conv("b", features=6, kernel=3, padding=1, bias=True))
  v = random_variables(spec)
  assert surgery.collapse(spec, v, mode="exact", cost="none")[0].layers[0].kernel == (3, 3)
  log = []
  merged, mv = surgery.collapse(spec, v, mode="interior", cost="none", log=log)
  (conv,) = merged.layers
  assert conv.kernel == (7, 7) and conv.stride == (2, 2)        # 3 + 2 (3 - 1), 2 x 1
  assert conv.padding[0][0] == 3 and conv.padding[1][0] == 3    # 1 + 2 x 1
  ring = equivalence.border_width(merged, log)
  assert ring == 1
  rep = flax_equal(spec, v, merged, mv, tol=np.inf, border=ring)
  assert rep.interior_max_rel < 1e-5 and rep.interior_fraction == pytest.approx(4 / 16)
  assert rep.feature_max_rel > 1e-3          # the border ring really differs


def test_second_conv_with_a_stride():
  spec = chain(S.Conv("a", features=4, kernel=3, padding=1), S.Act("id", fn="identity"),
               S.Conv("b", features=4, kernel=3, stride=2, padding=1))
  v = random_variables(spec)
  log = []
  merged, mv = surgery.collapse(spec, v, mode="interior", cost="none", log=log)
  (conv,) = merged.layers
  assert conv.kernel == (5, 5) and conv.stride == (2, 2) and conv.padding[0][0] == 2
  rep = flax_equal(spec, v, merged, mv, tol=np.inf, border=equivalence.border_width(merged, log))
  assert rep.border == 1 and rep.interior_max_rel < 1e-5


@pytest.mark.parametrize("first, second, exact", [
    (S.Conv("a", features=4, kernel=3, padding=1, bias=True),
     S.Conv("b", features=3, kernel=3, padding=0, bias=True), True),    # p2 = 0
    (S.Conv("a", features=4, kernel=1, bias=False),
     S.Conv("b", features=3, kernel=3, padding=1, bias=True), True),    # bias-free 1x1 first
    (S.Conv("a", features=4, kernel=3, padding=1, groups=4),
     S.Conv("b", features=3, kernel=1, bias=True), True),               # anything then 1x1
    (S.Conv("a", features=4, kernel=1, bias=True),
     S.Conv("b", features=3, kernel=3, padding=1), False),              # a bias reaches the pad
    (S.Conv("a", features=4, kernel=3, padding=1),
     S.Conv("b", features=3, kernel=3, padding=1), False),              # kxk o kxk, padded
])
def test_which_merges_are_exact_everywhere(first, second, exact):
  spec = chain(first, second)
  v = random_variables(spec)
  log = []
  merged, mv = surgery.merge_linear(spec, v, mode="exact", cost="none", log=log)
  # a bias reaching the pad is merged as a border-corrected Block instead of one conv
  assert (len(merged.layers) == 1 and isinstance(merged.layers[0], S.Conv)) == exact
  flax_equal(spec, v, merged, mv, tol=1e-5)
  merged_i, mv_i = surgery.merge_linear(spec, v, mode="interior", cost="none", log=log)
  assert len(merged_i.layers) == 1
  rep = flax_equal(spec, v, merged_i, mv_i, tol=np.inf, border=1)
  assert rep.interior_max_rel < 1e-5
  assert (rep.max_rel < 1e-5) == exact


def test_grouped_and_depthwise_composition():
  spec = chain(S.Conv("dw", features=8, kernel=3, padding=0, groups=4, bias=True),
               S.Conv("dw2", features=8, kernel=3, padding=0, groups=8, bias=True),
               S.Conv("g2", features=6, kernel=1, groups=2), shape=(9, 9, 4))
  v = random_variables(spec)
  merged, mv = surgery.merge_linear(spec, v, mode="exact", cost="none")
  (conv,) = merged.layers
  assert conv.kernel == (5, 5) and conv.groups == 2            # gcd(4, 8, 2)
  flax_equal(spec, v, merged, mv, tol=1e-5)
  two_dw = chain(S.Conv("a", features=4, kernel=3, groups=4), S.Conv("b", features=4, kernel=3,
                                                                   groups=4))
  v2 = random_variables(two_dw)
  merged2, mv2 = surgery.merge_linear(two_dw, v2, mode="exact", cost="none")
  assert merged2.layers[0].groups == 4                          # depthwise o depthwise
  flax_equal(two_dw, v2, merged2, mv2, tol=1e-5)


def test_dense_chain_is_one_product():
  spec = S.Spec((6,), (S.Dense("fc1", features=9), S.Act("gelu", fn="identity"),
                       S.Dropout("drop"), S.Dense("fc2", features=4)))
  v = random_variables(spec)
  merged, mv = surgery.collapse(spec, v)
  (fc,) = merged.layers
  assert isinstance(fc, S.Dense) and fc.name == "fc1"
  p = v["params"]
  w = p["fc1"]["kernel"].astype(np.float64) @ p["fc2"]["kernel"]
  b = p["fc1"]["bias"].astype(np.float64) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  np.testing.assert_allclose(mv["params"]["fc1"]["kernel"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mv["params"]["fc1"]["bias"], b, rtol=1e-5, atol=1e-6)


def test_merges_are_made_only_where_they_lower_the_macs():
  c = 8
  block = S.Sequential("s", layers=(S.Conv("a", features=c, kernel=3, padding=1),
                                     S.Conv("b", features=c, kernel=3, padding=1)))
  for size, merged_kernel in ((8, None), (2, (3, 3))):
    spec = S.Spec((size, size, c), (block,))
    v = random_variables(spec)
    log = []
    out, _ = surgery.merge_linear(spec, v, mode="interior", cost="macs", log=log)
    if merged_kernel is None:      # 5x5: 25 c^2 > 2 x 9 c^2 per position
      assert out == spec
      (skip,) = log                # the merge not made is logged, with its figures
      assert skip.kind == "skip" and skip.detail == "s/a + s/b not merged"
      assert skip.reason == (f"merging would raise the MACs ({2 * 64 * 9 * c * c:,} -> "
                             f"{64 * 25 * c * c:,})")
    else:                          # on 2x2 the 5x5's outer taps read only padding
      (conv,) = out.layers[0].layers
      assert conv.kernel == merged_kernel
      assert log[0].macs_before == 2 * size * size * 9 * c * c
      assert log[0].macs_after == size * size * 9 * c * c
  all_merged, _ = surgery.merge_linear(S.Spec((8, 8, c), (block,)), v, mode="interior",
                                       cost="none")
  assert all_merged.layers[0].layers[0].kernel == (5, 5)


def test_latency_cost_times_candidates_and_keeps_the_function():
  spec = chain(S.Conv("a", features=4, kernel=1), S.BatchNorm("bn"),
               S.Conv("b", features=4, kernel=1), shape=(4, 4, 4))
  v = random_variables(spec)
  merged, mv = surgery.merge_linear(spec, v, cost="latency")
  assert len(merged.layers) < len(spec.layers)
  assert relative(run(spec, v, x_for(spec)), run(merged, mv, x_for(spec))) < 1e-5


# ------------------------------------------------------------------ residuals


def mobilenet_block(size=8, channels=8):
  blk = zoo.inverted_residual("blk", channels, channels, 1, 6)
  spec = S.Spec((size, size, channels), (blk,), name="ir")
  return S.with_identity(spec, spec.sites())


def test_inverted_residual_collapses_to_one_conv():
  spec = mobilenet_block()
  v = random_variables(spec)
  # Exact: the folded BN bias of the expand conv meets the depthwise zero padding,
  # so the merged conv gets a border correction (ones map -> 3x3 conv) beside it.
  exact, ev = surgery.collapse(spec, v, mode="exact")
  (blk,) = exact.layers
  assert [n.name for n in blk.branch] == ["merged"] and blk.branch[0].kernel == (3, 3)
  assert [n.name for n in blk.shortcut] == ["ones", "border"]
  np.testing.assert_array_equal(ev["params"]["blk"]["ones"]["kernel"], 0.0)
  np.testing.assert_array_equal(ev["params"]["blk"]["ones"]["bias"], 1.0)
  assert costs.count_macs(exact) < costs.count_macs(spec)
  assert costs.depth(exact).weight_depth == 2 < costs.depth(spec).weight_depth
  flax_equal(spec, v, exact, ev, tol=1e-5)
  log = []
  shallow, sv = surgery.collapse(spec, v, mode="interior", log=log)
  (conv,) = shallow.layers
  assert isinstance(conv, S.Conv) and conv.name == "blk"
  assert conv.kernel == (3, 3) and conv.groups == 1 and conv.features == 8
  assert costs.count_macs(shallow) < costs.count_macs(spec)
  assert costs.depth(shallow).weight_depth == 1 < costs.depth(spec).weight_depth
  rep = flax_equal(spec, v, shallow, sv, tol=np.inf,
                   border=equivalence.border_width(shallow, log))
  assert rep.border == 1 and rep.interior_max_rel < 1e-5 < rep.feature_max_rel


def test_bias_before_a_padded_conv_is_corrected_exactly():
  spec = chain(S.Conv("pw", features=24, kernel=1, bias=True),
               S.Conv("dw", features=24, kernel=3, stride=2, padding=1, groups=24),
               S.Conv("proj", features=4, kernel=1), shape=(7, 7, 4))
  v = random_variables(spec)
  x = x_for(spec)
  merged, mv = surgery.merge_linear(spec, v, mode="exact")
  (blk,) = merged.layers
  assert isinstance(blk, S.Block) and blk.branch[0].kernel == (3, 3)
  assert blk.branch[0].stride == blk.shortcut[1].stride == (2, 2)
  assert costs.count_macs(merged) < costs.count_macs(spec)
  correction = run(S.Spec(spec.input_shape, blk.shortcut), {"params": mv["params"]["pw"]}, x)
  # The correction is a fixed map: the same for every input, constant inside.
  assert np.allclose(correction[0], correction[1])
  assert np.allclose(correction[0, 1:-1, 1:-1], correction[0, 1, 1])
  assert not np.allclose(correction[0, 0, 0], correction[0, 1, 1])
  assert relative(run(spec, v, x), run(merged, mv, x)) < 1e-5
  v["params"]["pw"]["bias"][:] = 0.0
  plain, pv = surgery.merge_linear(spec, v, mode="exact")
  assert isinstance(plain.layers[0], S.Conv)          # no bias: no correction needed
  assert relative(run(spec, v, x), run(plain, pv, x)) < 1e-5


def test_cost_none_makes_the_border_corrected_merge_and_not_again():
  # The corrected merge is a block of three convs for two: "none" (every allowed merge)
  # makes it all the same, and leaves the correction's own ones + border pair alone.
  spec = chain(S.Conv("a", features=8, kernel=1, bias=True),
               S.Conv("b", features=6, kernel=3, padding=1, stride=2), shape=(11, 10, 4))
  v = random_variables(spec, 7)
  log = []
  merged, mv = surgery.merge_linear(spec, v, mode="exact", cost="none", log=log)
  (blk,) = merged.layers
  assert isinstance(blk, S.Block) and [n.name for n in blk.shortcut] == ["ones", "border"]
  assert [e.kind for e in log] == ["merge"] and "border correction" in log[0].detail
  flax_equal(spec, v, merged, mv, tol=1e-5)
  log = []
  again, av = surgery.merge_linear(merged, mv, mode="exact", cost="none", log=log)
  assert again == merged
  (skip,) = log
  assert skip.kind == "skip" and "is a border correction" in skip.reason


def test_identity_shortcut_lands_on_the_kernel_centre():
  spec = S.Spec((5, 5, 3), (S.Block("blk", branch=(S.Conv("c", features=3, kernel=3,
                                                           padding=1),),
                                    post=(S.Act("relu"),)),))
  v = random_variables(spec)
  log = []
  folded, fv = surgery.fold_residuals(spec, v, log=log)
  (seq,) = folded.layers
  assert isinstance(seq, S.Sequential) and [n.name for n in seq.layers] == ["c", "relu"]
  assert folded.sites() == ("blk/relu",)
  k = v["params"]["blk"]["c"]["kernel"].copy()
  k[1, 1] += np.eye(3, dtype=np.float32)
  np.testing.assert_allclose(fv["params"]["blk"]["c"]["kernel"], k, rtol=1e-6)
  assert log[0].kind == "fold_residual" and log[0].exact
  flax_equal(spec, v, folded, fv, tol=1e-5)


def test_projection_shortcut_is_summed_into_the_branch():
  blk = zoo.basic_block("blk", 4, 6, 2)
  spec = S.with_identity(S.Spec((6, 6, 4), (blk,)), ["blk/relu1"])
  v = random_variables(spec)
  shallow, sv = surgery.collapse(spec, v, mode="interior", cost="none")
  (seq,) = shallow.layers
  assert [type(n) for n in seq.layers] == [S.Conv, S.Act]
  assert seq.layers[0].kernel == (7, 7) and seq.layers[0].stride == (2, 2)  # 3 + 2 (3 - 1)
  rep = equivalence.compare(spec, v, shallow, sv, x_for(spec), border=1)
  assert rep.interior_max_rel < 1e-5


def test_the_log_says_why_each_merge_was_skipped():
  spec = S.with_identity(zoo.digits_cnn(width=4), ["relu", "layer1/0/relu1", "layer1/1/relu2",
                                                   "relu2"])
  v = random_variables(spec)
  log = []
  shallow, sv = surgery.collapse(spec, v, mode="exact", log=log)
  reasons = {e.path: e.reason for e in log if e.kind == "skip"}
  assert set(reasons) == {"relu", "layer1/0/conv1", "layer1/1/relu2", "relu2"}
  assert "next node layer1/0 is a residual block" in reasons["relu"]
  assert "padded 3x3 ∘ 3x3 is not exact at the border" in reasons["layer1/0/conv1"]
  assert "ring of 1" in reasons["layer1/0/conv1"]
  assert "alone in block layer1/1 after its addition" in reasons["layer1/1/relu2"]
  assert "next node avgpool is a pool" in reasons["relu2"]
  assert all(e.reason == "" for e in log if e.kind != "skip")
  # Skips change nothing: the ring bookkeeping and the function are those of the edits made.
  assert equivalence.border_width(shallow, log) == 0
  flax_equal(spec, v, shallow, sv, tol=1e-5)
  # In interior mode the padded pair may merge: on 8x8 a 5x5 costs more than two 3x3s,
  # and without a cost to lower it is merged (so it is no longer a skip).
  log_i = []
  surgery.collapse(spec, v, mode="interior", log=log_i)
  reasons_i = {e.path: e.reason for e in log_i if e.kind == "skip"}
  assert reasons_i["layer1/0/conv1"] == f"merging would raise the MACs ({2 * 64 * 9 * 16:,} -> {64 * 25 * 16:,})"
  log_n = []
  surgery.collapse(spec, v, mode="interior", cost="none", log=log_n)
  assert "layer1/0/conv1" not in {e.path for e in log_n if e.kind == "skip"}
  assert any(e.kind == "merge" and e.path.startswith("layer1/0/conv1") for e in log_n)


def test_the_log_says_why_a_site_inside_a_concat_is_not_merged_across():
  # A site closing a concat branch, one opening its post, and one between two convs inside
  # a branch (merged, so not a skip).
  cat = S.Concat("cat", branches=((S.Conv("x", features=4, kernel=3, padding=1), S.Act("r")),
                                  (S.Conv("u", features=3, kernel=1), S.Act("m"),
                                   S.Conv("w", features=2, kernel=1)), ()),
                 post=(S.Act("q"), S.Conv("y", features=4, kernel=1)))
  spec = S.Spec((6, 6, 2), (S.Conv("c", features=2, kernel=3, padding=1), S.Act("a"), cat,
                            S.Pool("p", "global_avg"), S.Dense("fc", features=3)))
  shallow_in = S.with_identity(spec, ["cat/r", "cat/m", "cat/q"])
  v = random_variables(spec)
  log = []
  shallow, sv = surgery.collapse(shallow_in, v, log=log)
  reasons = {e.path: e.reason for e in log if e.kind == "skip"}
  assert reasons == {"cat/r": "it closes branch 0 of concat cat",
                     "cat/q": "it opens concat cat after its concatenation"}
  assert any(e.kind == "merge" and e.path.startswith("cat/u") for e in log)
  flax_equal(shallow_in, v, shallow, sv, tol=1e-5)


@pytest.mark.parametrize("removed", [("relu1",), ("relu3",), ("relu5",), ("relu2", "relu4"),
                                     ("relu1", "relu2", "relu3", "relu4", "relu5")])
def test_digits_plain_merges_every_removed_site_exactly(removed):
  spec = zoo.digits_plain(width=4)
  v = random_variables(spec, 1)
  shallow_in = S.with_identity(spec, removed)
  log = []
  shallow, sv = surgery.collapse(shallow_in, v, mode="exact", log=log)
  assert not [e for e in log if e.kind == "skip"]
  before, after = costs.depth(shallow_in), costs.depth(shallow)
  assert after.weight_depth == before.weight_depth - len(removed)
  assert costs.count_macs(shallow) < costs.count_macs(shallow_in)
  assert all(c.padding == ((0, 0), (0, 0)) for _, c in shallow.walk() if isinstance(c, S.Conv))
  flax_equal(shallow_in, v, shallow, sv, tol=1e-5)   # equal everywhere: no border ring


def test_resnet_block_on_a_2x2_map_merges_into_a_3x3():
  spec = S.with_identity(S.Spec((2, 2, 8), (zoo.basic_block("1", 8, 8, 1),)), ["1/relu1"])
  v = random_variables(spec)
  assert isinstance(surgery.collapse(spec, v, mode="exact")[0].layers[0], S.Block)
  log = []
  shallow, sv = surgery.collapse(spec, v, mode="interior", log=log)
  conv = shallow.layers[0].layers[0]
  assert conv.kernel == (3, 3)
  assert equivalence.border_width(shallow, log) == 1        # the whole 2x2 map is border
  rep = equivalence.compare(spec, v, shallow, sv, x_for(spec), border=1)
  assert rep.interior_fraction == 0.0 and math.isnan(rep.interior_max_abs)
  assert rep.max_rel > 1e-3


def test_remove_blocks_drops_identity_shortcut_blocks_only():
  spec = zoo.digits_cnn(width=4)
  v = random_variables(spec)
  removed, rv = surgery.remove_blocks(spec, v, ["layer1/1"])
  hand = S.Spec(spec.input_shape, tuple(
      S.Sequential("layer1", layers=n.layers[:1]) if n.name == "layer1" else n
      for n in spec.layers), name=spec.name)
  assert removed == hand
  x = x_for(spec)
  np.testing.assert_allclose(run(removed, rv, x), run(hand, v, x), rtol=1e-6)
  with pytest.raises(ValueError, match="not a residual block"):
    surgery.remove_blocks(spec, v, ["conv1"])
  proj = zoo.resnet20(width=4, input_shape=(8, 8, 3))
  with pytest.raises(ValueError, match="identity shortcut"):
    surgery.remove_blocks(proj, random_variables(proj), ["layer2/0"])
  with pytest.raises(KeyError):
    surgery.remove_blocks(spec, v, ["layer9/0"])


# ------------------------------------------------------------------- channels


def test_cut_channels_from_collected_site_counts():
  spec = S.Spec((6, 6, 3), (S.Conv("c1", features=6, kernel=3, padding=1), S.BatchNorm("bn"),
                            S.Act("relu"), S.Conv("c2", features=4, kernel=1),
                            S.Pool("gap", "global_avg"), S.Dense("fc", features=3)))
  v = random_variables(spec)
  off = np.array([1, 0, 1, 0, 0, 1], bool)
  v["params"]["bn"]["scale"][off] = 0.0
  v["params"]["bn"]["bias"][off] = -0.5
  x = x_for(spec, batch=8)
  counts = network.forward(spec, v, x, collect_stats=True).site_counts
  assert list(np.asarray(counts["relu"])[0] == 0) == list(off)
  log = []
  cut, cv = surgery.cut_channels(spec, v, counts, log=log)
  assert cut.layers[0].features == 3 and cv["params"]["c2"]["kernel"].shape == (1, 1, 3, 4)
  np.testing.assert_array_equal(cv["params"]["c2"]["kernel"],
                                v["params"]["c2"]["kernel"][:, :, ~off])
  assert costs.count_params(cut) < costs.count_params(spec)
  flax_equal(spec, v, cut, cv, tol=1e-5)
  with pytest.raises(KeyError, match="not a live site"):
    surgery.cut_channels(spec, v, {"c1": counts["relu"]})
  with pytest.raises(ValueError, match="expected \\(3, 6\\)"):
    surgery.cut_channels(spec, v, {"relu": np.zeros((3, 5))})
  with pytest.raises(TypeError, match="site_counts must map each site.*got a list"):
    surgery.cut_channels(spec, v, [counts["relu"]])


def test_cut_channels_through_a_depthwise_conv_and_into_a_bias():
  spec = S.Spec((5, 5, 2), (S.Conv("pw", features=4, kernel=1), S.BatchNorm("bn"),
                            S.Act("r1", fn="relu6"),
                            S.Conv("dw", features=4, kernel=3, padding=1, groups=4, bias=True),
                            S.BatchNorm("dw_bn"), S.Act("r2", fn="relu6"),
                            S.Conv("proj", features=3, kernel=1)))
  v = random_variables(spec)
  v["params"]["bn"]["scale"][2] = 0.0
  v["params"]["bn"]["bias"][2] = -1.0
  counts = {"r1": np.array([[5, 5, 0, 5], [1, 1, 9, 1], [0, 0, 0, 0]])}
  cut, cv = surgery.cut_channels(spec, v, counts)
  assert [getattr(n, "features", None) for n in cut.layers[:4]] == [3, None, None, 3]
  assert cut.layers[3].groups == 3
  assert "bias" in cv["params"]["proj"]      # the constant relu6(BN(bias)) went into it
  assert relative(run(spec, v, x_for(spec)), run(cut, cv, x_for(spec))) < 1e-5


# ------------------------------------------------------------ normal models


def test_a_shallow_model_saves_reloads_trains_and_reports_its_depth(tmp_path):
  spec = mobilenet_block(size=6, channels=4)
  spec = S.Spec(spec.input_shape, spec.layers + (S.Pool("gap", "global_avg"),
                                                 S.Dense("fc", features=3)), name="tiny")
  v = random_variables(spec)
  shallow, sv = surgery.collapse(spec, v, mode="interior")
  checkpoint.save_model(tmp_path / "model", shallow, sv)
  loaded, lv = checkpoint.load_model(tmp_path / "model")
  assert loaded == shallow
  x = x_for(spec, batch=4)
  np.testing.assert_array_equal(network.forward(loaded, lv, x).logits,
                                network.forward(shallow, sv, x).logits)
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(lv["params"])
  assert jax.tree.structure(opt_state[0].trace) == jax.tree.structure(lv["params"])
  y = jnp.array([0, 1, 2, 0])

  def loss(params):
    logits = network.forward(loaded, {**lv, "params": params}, x, train=True).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  value, grads = jax.value_and_grad(loss)(lv["params"])
  updates, opt_state = tx.update(grads, opt_state, lv["params"])
  params = optax.apply_updates(lv["params"], updates)
  assert np.isfinite(value) and loss(params) < value
  report = surgery.summary(spec, shallow)
  assert report["layers_removed"] == 2                     # the papers' count
  assert report["before"]["weight_depth"] == 4 and report["after"]["weight_depth"] == 2
  assert report["after"]["nonlinear_depth"] == report["before"]["nonlinear_depth"] == 0
  assert report["after"]["macs"] == costs.count_macs(shallow) < report["before"]["macs"]


def test_passes_do_not_touch_their_inputs_and_refuse_bad_arguments():
  spec = mobilenet_block(size=6, channels=4)
  v = random_variables(spec)
  before = copy.deepcopy(v)
  surgery.collapse(spec, v, mode="interior")
  jax.tree.map(np.testing.assert_array_equal, v, before)
  with pytest.raises(ValueError, match="unknown merge mode"):
    surgery.collapse(spec, v, mode="approximate")
  with pytest.raises(ValueError, match="unknown cost"):
    surgery.collapse(spec, v, cost="flops")
  with pytest.raises(ValueError, match="max_chain"):
    surgery.merge_linear(spec, v, max_chain=1)
  other = zoo.digits_cnn(width=4)
  with pytest.raises(checkpoint.SpecMismatchError,
                     match=r"fold_batchnorm\(spec, variables\): the variables do not fit spec "
                           r"'digits_cnn': node 'bn1'"):
    surgery.fold_batchnorm(other, v)


ENTRIES = {   # every public entry taking (spec, variables), called with what else it needs
    "collapse": surgery.collapse, "fold_batchnorm": surgery.fold_batchnorm,
    "drop_noops": surgery.drop_noops, "merge_linear": surgery.merge_linear,
    "fold_residuals": surgery.fold_residuals, "crop_kernels": surgery.crop_kernels,
    "remove_blocks": lambda s, v: surgery.remove_blocks(s, v, []),
    "cut_channels": lambda s, v: surgery.cut_channels(s, v, {}),
    "measure_latency": surgery.measure_latency}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_every_entry_refuses_what_is_not_a_spec_and_variables_of_another_spec(entry):
  spec = S.with_identity(zoo.digits_plain(), ["relu5"])                 # 10 classes
  v = network.init(zoo.digits_plain(), jax.random.key(0))
  for args, got in (((spec.to_json(), v), r"str holding JSON; read it first: "
                                         r"jaxdepth\.Spec\.from_json\(text\)"),
                    ((v, spec), "dict; check the order")):
    with pytest.raises(TypeError, match=rf"{entry}\(spec, variables.*\): spec must be a "
                                        rf"jaxdepth Spec, got a {got}"):
      ENTRIES[entry](*args)
  five = network.init(zoo.digits_plain(num_classes=5), jax.random.key(0))
  with pytest.raises(checkpoint.SpecMismatchError,
                     match=rf"{entry}\(spec, variables.*\): the variables do not fit spec "
                           r"'digits_plain': node 'fc': 'params/fc/bias' has shape \(5,\) in "
                           r"the variables but the spec needs \(10,\)\. Pass the variables"):
    ENTRIES[entry](spec, five)


def test_collapse_names_the_first_node_of_variables_of_another_width():
  spec = S.with_identity(zoo.digits_plain(), ["relu5"])
  narrower = network.init(zoo.digits_plain(width=16), jax.random.key(0))
  with pytest.raises(checkpoint.SpecMismatchError,
                     match=r"node 'bn1': 'batch_stats/bn1/mean' has shape \(16,\) in the "
                           r"variables but the spec needs \(32,\)"):
    surgery.collapse(spec, narrower)


def test_summary_refuses_what_is_not_a_spec():
  spec = zoo.digits_plain(width=8)
  v = network.init(spec, jax.random.key(0))
  for args, got in (((spec, v), "dict"), ((spec.to_json(), spec), "str")):
    with pytest.raises(TypeError, match=rf"summary\(before, after\): spec must be a jaxdepth "
                                        rf"Spec, got a {got}"):
      surgery.summary(*args)


def _two_padded_convs(name, out):
  """``conv 3x3 -> identity -> conv 3x3``, both zero-padded: an interior-only merge (ring 1)."""
  return dict(name=name, layers=(S.Conv("a", features=32, kernel=3, padding=1, bias=True),
                                 S.Act("r", fn="identity"),
                                 S.Conv("b", features=out, kernel=3, padding=1, bias=True)))


@pytest.mark.parametrize("nesting", ["sequential_then_its_list", "block_in_a_block"])
def test_an_interior_ring_survives_a_merge_of_a_merged_node(nesting):
  # The inner merge differs on a ring of 1; the enclosing list (or block) then merges (folds)
  # the result again in the same pass, which must carry that ring on.
  if nesting == "sequential_then_its_list":
    spec = S.Spec((8, 8, 2), (S.Sequential(**_two_padded_convs("s", 1)), S.BatchNorm("bn")))
  else:
    inner = _two_padded_convs("inner", 2)
    spec = S.Spec((8, 8, 2), (S.Block("outer", branch=(
        S.Block(inner["name"], branch=inner["layers"]),)),))
  variables = random_variables(spec, 0)
  log = []
  shallow, shallow_vars = surgery.collapse(spec, variables, mode="interior", log=log)
  x = np.random.default_rng(1).normal(size=(2, *spec.input_shape))
  want, got = run(spec, variables, x, np.float64), run(shallow, shallow_vars, x, np.float64)
  assert equivalence.border_width(shallow, log) == 1
  assert relative(want[:, 1:-1, 1:-1], got[:, 1:-1, 1:-1]) < 1e-6
  assert relative(want, got) > 1e-2                     # the border does differ


def test_a_residual_fold_is_weighed_with_its_post_and_a_refused_one_is_logged():
  # Summing a depthwise branch with a dense 1x1 shortcut costs more than the two apart;
  # a convolution after the addition (post) stays either way and must not hide that.
  import re  # pylint: disable=import-outside-toplevel
  figures = []   # the block's MACs, without and with post
  for post in ((), (S.Conv("pc", features=64, kernel=3, padding=1),)):
    spec = S.Spec((8, 8, 16), (S.Block("blk", branch=(
        S.Conv("dw", features=16, kernel=3, padding=1, groups=16), S.BatchNorm("bn")),
        shortcut=(S.Conv("sc", features=16, kernel=1),), post=post),))
    log = []
    shallow, _ = surgery.collapse(spec, random_variables(spec, 0), log=log)
    assert costs.count_macs(shallow) == costs.count_macs(spec)   # nothing folded
    assert not any(e.kind == "fold_residual" for e in log)
    (skip,) = [e for e in log if e.kind == "skip" and e.path == "blk"]
    found = re.fullmatch(r"folding would raise the MACs \(([\d,]+) -> ([\d,]+)\)", skip.reason)
    assert found, skip.reason
    before, after = (int(g.replace(",", "")) for g in found.groups())
    figures.append(before)
    assert before < after
  assert figures[1] > figures[0] + 8 * 8 * 16 * 64 * 9   # the post conv counts on both sides


def test_a_skip_next_to_a_block_goes_when_the_folded_block_is_merged_across_it():
  # drop_noops finds a residual block after the identity (nothing to merge across yet); a
  # later round folds the block into one conv and merges it with the conv before.
  blk = S.Block("blk", branch=(S.Conv("c1", features=4, kernel=1), S.BatchNorm("bn")))
  for after in (blk, S.Act("r")):                     # folded then merged / a live site
    spec = S.Spec((6, 6, 4), (S.Conv("c", features=4, kernel=1, bias=True),
                              S.Act("i", fn="identity"), after, S.Act("last")))
    variables = random_variables(spec, 0)
    log = []
    shallow, shallow_vars = surgery.collapse(spec, variables, log=log)
    x = np.random.default_rng(1).normal(size=(2, *spec.input_shape))
    assert relative(run(spec, variables, x, np.float64),
                    run(shallow, shallow_vars, x, np.float64)) < 1e-6
    skips = [e for e in log if e.kind == "skip" and e.path == "i"]
    merged = any(e.kind == "merge" and "c + blk" in e.detail for e in log)
    assert (merged, len(skips)) == ((True, 0) if after is blk else (False, 1))

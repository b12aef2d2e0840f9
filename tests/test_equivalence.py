"""equivalence: comparing two networks, the last feature map, border rings."""
from __future__ import annotations

import math

import numpy as np
import pytest

from jaxdepth import equivalence, network, surgery, zoo
from jaxdepth import spec as S
from test_surgery_reference import random_variables, run


def x_for(spec, batch=3):
  return np.random.default_rng(0).normal(size=(batch, *spec.input_shape)).astype(np.float32)


SMALL = S.Spec((6, 6, 2), (S.Conv("c1", features=4, kernel=3, padding=1, bias=True),
                           S.Act("r1"), S.Conv("c2", features=4, kernel=3, padding=1),
                           S.Pool("gap", "global_avg"), S.Dense("fc", features=5)))


def test_compare_measures_what_differs():
  v = random_variables(SMALL)
  same = equivalence.compare(SMALL, v, SMALL, v, x_for(SMALL))
  assert same.max_abs == 0.0 and same.top1_agreement == 1.0 and same.border is None
  shifted = {"params": {**v["params"], "fc": {**v["params"]["fc"]}}}
  shifted["params"]["fc"]["bias"] = v["params"]["fc"]["bias"] + np.array([0.25, 0, 0, 0, 0],
                                                                         np.float32)
  rep = equivalence.compare(SMALL, v, SMALL, shifted, x_for(SMALL))
  ya = np.asarray(network.forward(SMALL, v, x_for(SMALL)).logits)
  assert rep.max_abs == pytest.approx(0.25, abs=1e-6)
  assert rep.max_rel == pytest.approx(0.25 / np.abs(ya).max(), rel=1e-5)
  expected_top1 = np.mean(np.argmax(ya, -1) == np.argmax(ya + [0.25, 0, 0, 0, 0], -1))
  assert rep.top1_agreement == pytest.approx(expected_top1)


def test_gated_reference_equals_the_baked_and_merged_network():
  spec = zoo.digits_cnn(width=4)
  v = random_variables(spec)
  off = [s for s in spec.sites() if s.endswith("relu1")]
  shallow, sv = surgery.collapse(S.with_identity(spec, off), v)
  rep = equivalence.compare(spec, v, shallow, sv, x_for(spec),
                            gates_a=network.gates_for(spec, off=off), border=0)
  assert rep.max_rel < 1e-5 and rep.feature_max_rel < 1e-5
  assert rep.feature_shape == (4, 4, 8) and rep.interior_fraction == 1.0


def test_interior_comparison_crops_the_ring():
  v = random_variables(SMALL)
  perturbed = {"params": {**v["params"], "c2": {**v["params"]["c2"]}}}
  perturbed["params"]["c2"]["kernel"] = v["params"]["c2"]["kernel"].copy()
  perturbed["params"]["c2"]["kernel"][0, 0] += 1.0
  x = x_for(SMALL)
  rep = equivalence.compare(SMALL, v, SMALL, perturbed, x, border=1)
  prefix = S.Spec(SMALL.input_shape, SMALL.layers[:3])
  fa, fb = (run(prefix, w, x, dtype=np.float64) for w in (v, perturbed))
  assert rep.feature_shape == (6, 6, 4)
  assert rep.feature_max_abs == pytest.approx(np.abs(fa - fb).max(), rel=1e-4)
  assert rep.interior_max_abs == pytest.approx(np.abs(fa - fb)[:, 1:-1, 1:-1].max(), rel=1e-4)
  assert rep.interior_max_rel == pytest.approx(rep.interior_max_abs / np.abs(fa).max(), rel=1e-4)
  assert rep.interior_fraction == pytest.approx(16 / 36)
  same = equivalence.compare(SMALL, v, SMALL, v, x, border=3)
  assert same.interior_fraction == 0.0 and math.isnan(same.interior_max_abs)


def test_spatial_prefix_stops_before_the_head():
  assert equivalence.spatial_prefix(zoo.resnet18()).output_shape == (2, 2, 512)
  assert equivalence.spatial_prefix(zoo.mobilenet_v2()).output_shape == (4, 4, 1280)
  assert equivalence.spatial_prefix(zoo.vgg16_bn()).output_shape == (7, 7, 512)
  assert equivalence.spatial_prefix(S.Spec((4,), (S.Dense("fc", features=2),))) is None


def test_border_width_follows_rings_through_the_network():
  spec = S.Spec((16, 16, 2), (
      S.Conv("m", features=2, kernel=5, padding=2),                  # merged: ring 1
      S.Conv("c", features=2, kernel=3, padding=1),                  # ring 1 + 1
      S.Pool("mp", "max", window=2, stride=2),                       # ceil(2 / 2)
      S.Block("b", branch=(S.Conv("c1", features=2, kernel=3, stride=2, padding=1),),
              shortcut=(S.Conv("sc", features=2, kernel=1, stride=2),)),  # ceil((1 + 1)/2)
      S.Pool("gap", "global_avg"), S.Dense("fc", features=2)))
  log = [surgery.Edit("merge", "m", "test", exact=False, ring=1)]
  assert equivalence.border_width(spec, log) == 1
  log.append(surgery.Edit("merge", "b/c1", "test", exact=False, ring=3))
  assert equivalence.border_width(spec, log) == 3
  assert equivalence.border_width(spec, []) == 0

  def width(net, ring):
    return equivalence.border_width(net, [surgery.Edit("merge", "m", "test", exact=False,
                                                       ring=ring)])

  # rings that each window changes (16 rows, a ring r is rows 0..r-1 and 16-r..15):
  # c (3x3, pad 1): its row 1 reads rows 0-2, so ring 1 -> 2
  assert width(S.Spec(spec.input_shape, spec.layers[:2]), 1) == 2
  # ring 3 -> 4 through c; mp (window 2, stride 2): its rows 0, 1 read rows 0-3 -> 2
  assert width(S.Spec(spec.input_shape, spec.layers[:3]), 3) == 2
  # then on 8 rows: c1 (3x3, stride 2, pad 1) row 1 reads rows 1-3, row 3 reads 5-7 -> 2;
  # sc (1x1, stride 2) row 0 reads row 0, row 3 reads row 6 -> 1; the block: max(2, 1)
  assert width(spec, 3) == 2
  # the last map of an adaptive pool, 16 rows -> 4 bins of 4: ring 3 (rows 0-2, 13-15)
  # touches bins 0 and 3 only -> 1; ring 5 (rows 0-4, 11-15) touches all four -> 2
  adaptive = S.Spec((16, 16, 2), (S.Conv("m", features=2, kernel=1),
                                  S.Pool("ap", "adaptive_avg", output_size=(4, 4)),
                                  S.Flatten("fl"), S.Dense("fc", features=2)))
  assert width(adaptive, 3) == 1 and width(adaptive, 5) == 2


def test_border_width_refuses_swapped_or_foreign_arguments():
  log = [surgery.Edit("merge", "c1", "test", exact=False, ring=1)]
  with pytest.raises(TypeError, match=r"border_width\(spec, log\): spec must be a jaxdepth Spec, "
                                      r"got a list; check the order of the arguments"):
    equivalence.border_width(log, SMALL)
  with pytest.raises(TypeError, match=r"log must be the list of Edits .*got a Spec; check the "
                                      r"order of the arguments"):
    equivalence.border_width(SMALL, SMALL)
  with pytest.raises(TypeError, match=r"log must hold the Edits .*it holds a str"):
    equivalence.border_width(SMALL, ["c1"])
  # A generator of edits is read once, as a list is: ring 1 after c1, 2 after c2 (3x3, pad 1).
  assert equivalence.border_width(SMALL, log) == 2
  assert equivalence.border_width(SMALL, (e for e in log)) == 2


def test_compare_refuses_what_it_cannot_compare():
  v = random_variables(SMALL)
  with pytest.raises(ValueError, match="non-negative"):
    equivalence.compare(SMALL, v, SMALL, v, x_for(SMALL), border=-1)
  dense = S.Spec((5,), (S.Dense("fc", features=2),))
  dv = random_variables(dense)
  with pytest.raises(ValueError, match="feature map"):
    equivalence.compare(dense, dv, dense, dv, x_for(dense), border=0)


def test_border_comparison_after_a_channel_cut_says_what_to_do():
  spec = S.Spec((6, 6, 3), (S.Conv("c1", features=8, kernel=1, bias=True), S.Act("r"),
                            S.Conv("c2", features=6, kernel=1), S.BatchNorm("bn"), S.Act("r2"),
                            S.Pool("gp", "global_avg"), S.Dense("fc", features=3)))
  v = random_variables(spec)
  v["params"]["bn"]["bias"][::2] = -100.0    # 3 channels of r2 never ON: cut at the last map
  x = x_for(spec)
  counts = network.forward(spec, v, x, collect_stats=True).site_counts
  log = []
  cut, cv = surgery.collapse(spec, v, mode="interior", site_counts=counts, log=log)
  assert equivalence.border_width(cut, log) == 0
  assert equivalence.compare(spec, v, cut, cv, x).max_rel < 1e-5
  with pytest.raises(ValueError, match=r"differ in shape: \(6, 6, 6\) and \(6, 6, 3\).*compare "
                                       r"without border=.*collapsed without site_counts"):
    equivalence.compare(spec, v, cut, cv, x, border=0)
  whole, wv = surgery.collapse(spec, v, mode="interior")   # no cut: the border is measured
  assert equivalence.compare(spec, v, whole, wv, x, border=0).interior_max_rel < 1e-5

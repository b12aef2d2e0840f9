"""Costs against hand-computed numbers on tiny specs, and against published figures."""
import functools
import json
import math

import jax

from jaxdepth import costs, network, zoo
from jaxdepth.spec import (
    Act, BatchNorm, Block, Conv, Dense, Dropout, LayerNorm, Pool, Sequential, Spec, with_identity)


def _tiny():
  """6x6x2 input; a block whose shortcut (2 sites, 2 convs) is longer than its branch."""
  return Spec((6, 6, 2), (
      Conv("c1", features=4, kernel=3, padding=1, bias=True),   # 3*3*2*4 + 4 = 76 params
      BatchNorm("bn"),                                          # 8 params
      Act("r1"),
      Block("b", branch=(Act("inner"),),
            shortcut=(Conv("s1", features=4, kernel=1), Act("sa"),    # 16 params
                      Conv("s2", features=4, kernel=1), Act("sb")),   # 16 params
            post=(Act("post"),)),
      Sequential("down", layers=(
          Conv("g", features=8, kernel=3, stride=2, padding=1, groups=2),  # 3*3*2*8 = 144
          Act("gone", fn="identity"))),
      Pool("gap", "global_avg"),
      Dropout("drop", rate=0.1),
      Dense("fc", features=5)), name="tiny")                    # 8*5 + 5 = 45 params


def _init_param_count(spec):
  variables = jax.eval_shape(functools.partial(network.init, spec), jax.random.key(0))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


def test_count_params_by_hand():
  spec = _tiny()
  assert costs.count_params(spec) == 76 + 8 + 16 + 16 + 144 + 45
  assert _init_param_count(spec) == costs.count_params(spec)


def test_count_macs_by_hand():
  # c1: 6*6 positions * 4 out * 9 taps * 2 in; s1, s2: 36 * 4 * 4;
  # g (groups=2, stride 2): 3*3 positions * 8 out * 9 taps * (4 / 2) in; fc: 8 * 5.
  expected = 36 * 4 * 9 * 2 + 2 * 36 * 4 * 4 + 9 * 8 * 9 * 2 + 8 * 5
  assert costs.count_macs(_tiny()) == expected


def test_token_dense_and_layer_norm():
  spec = Spec((5, 8), (LayerNorm("ln"), Dense("up", features=16), Act("gelu", fn="gelu"),
                       Dense("down", features=8, bias=False)))
  assert costs.count_params(spec) == 2 * 8 + (8 * 16 + 16) + 16 * 8
  assert _init_param_count(spec) == costs.count_params(spec)
  assert costs.count_macs(spec) == 5 * 8 * 16 + 5 * 16 * 8   # every token pays
  assert costs.depth(spec) == costs.Depth(1, 1, 2, 1)


def test_depth_takes_the_longer_path_through_a_block():
  d = costs.depth(_tiny())
  # sites: r1 + max(branch 1, shortcut 2) + post = 4; weights: c1 + max(0, 2) + g + fc = 5.
  assert d == costs.Depth(active_sites=5, nonlinear_depth=4, weight_depth=5, sites_total=6)
  # Removing the branch's site leaves the longest chain intact; removing one on the
  # shortcut shortens it.
  assert costs.depth(with_identity(_tiny(), ["b/inner"])).nonlinear_depth == 4
  assert costs.depth(with_identity(_tiny(), ["b/sa"])).nonlinear_depth == 3
  assert costs.depth(with_identity(_tiny(), ["b/sa"])).active_sites == 4
  assert costs.depth(with_identity(_tiny(), ["b/sa"])).sites_total == 6


def test_resnet18_depth_after_removing_sites():
  spec = zoo.resnet18()
  assert costs.depth(spec) == costs.Depth(17, 17, 18, 17)   # 17 convs on the main path + fc
  # A relu1 lies on every path through its block; a shortcut conv never does.
  shallower = with_identity(spec, ["layer1/0/relu1", "layer3/1/relu2"])
  assert costs.depth(shallower) == costs.Depth(15, 15, 18, 17)


def test_published_macs():
  # CIFAR ResNet-18 with the stem max-pool: ~140 M MACs per 32x32 image (555 M without the max-pool);
  # torchvision resnet18 at 224: 1.814 G; torchvision vgg16_bn: 15.47 G; mobilenet_v2: 0.30 G.
  assert abs(costs.count_macs(zoo.resnet18()) / 140e6 - 1) < 0.01
  assert abs(costs.count_macs(zoo.resnet18(num_classes=1000, stem="imagenet")) / 1.814e9 - 1) < 0.01
  assert abs(costs.count_macs(zoo.vgg16_bn(1000, input_shape=(224, 224, 3))) / 15.47e9 - 1) < 0.01
  assert abs(costs.count_macs(zoo.mobilenet_v2(1000, variant="imagenet")) / 0.30e9 - 1) < 0.02


def test_summary_is_json_ready_and_complete():
  spec = _tiny()
  s = costs.summary(spec)
  assert json.loads(json.dumps(s)) == s
  assert s == {"name": "tiny", "input_shape": [6, 6, 2], "output_shape": [5],
               "params": costs.count_params(spec), "macs": costs.count_macs(spec),
               **costs.depth(spec)._asdict()}

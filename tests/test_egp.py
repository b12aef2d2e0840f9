"""EGP and NEPENTHE: budget split, pruning, layer map, estimator, and a digits run end to end."""
import json
import math
import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxdepth import checkpoint, costs, data, driver, equivalence, network, optim, stats, surgery
from jaxdepth import report as report_lib
from jaxdepth import training, zoo
from jaxdepth.methods import Egp, Nepenthe, base, egp, egp_report
from jaxdepth.spec import (Act, BatchNorm, Block, Concat, Conv, Dense, Flatten, LayerNorm, Pool,
                           Sequential, Spec)
from jaxdepth.train import __main__ as cli
from jaxdepth.train import command, easier as easier_cli, egp as egp_cli
from jaxdepth.train import config as config_lib

from _readme_net import MYNET

F32 = np.float32


# ------------------------------------------------------------------ allocation


def _official_split(entropy, mean_abs, nnz, rho):
  """The official loop, transcribed over layer names as the PyTorch code runs it.

  PyTorch's rules on 0-d float32 tensors are written out: ``float / tensor`` is
  ``tensor.reciprocal() * float`` in float32, ``float - tensor`` is a float32
  tensor, ``.item()`` reads a float32 back as a Python float.
  """
  names = [f"layer{i}" for i in range(len(entropy))]
  layers_entropy = {n: F32(h) for n, h in zip(names, entropy)}
  left = dict(zip(names, nnz))
  layers_to_prune = [n for n in names if layers_entropy[n] != 0]
  magni = {}
  for n in names:
    if n in layers_to_prune:
      if left[n] == 0:
        layers_to_prune.remove(n)
      else:
        magni[n] = F32(layers_entropy[n] * F32(mean_abs[names.index(n)]))
  total = 0
  for n in magni:
    total += magni[n].item()
  paras = 0
  for n in layers_to_prune:
    paras += left[n]
  to_prune = rho * paras
  waiting = list(layers_to_prune)
  amount = {}
  while waiting:
    changed = False
    head = {}
    for n in waiting:
      if isinstance(total, float):
        head[n] = F32(F32(1) / magni[n]) * F32(total)     # Tensor.__rtruediv__
      else:
        head[n] = F32(total / magni[n])
    top = max(head.values())
    expo, denom = {}, 0
    for n in waiting:
      expo[n] = float(F32(math.exp(float(F32(head[n] - top)))))
      denom += expo[n]
    for n in waiting:
      amount[n] = to_prune * (expo[n] / denom)
    for n in list(waiting):
      if left[n] < amount[n]:
        amount[n] = left[n]
        to_prune -= left[n]
        total = F32(F32(total) - magni[n])                  # Tensor.__rsub__: float32 from here
        waiting.remove(n)
        changed = True
    if not changed:
      break
  return [int(amount[n]) if n in layers_to_prune else 0 for n in names]


def test_allocate_hand_computed_even_split_and_exclusions():
  # equal irrelevance: the budget 0.5 * 400 splits in halves; the zero-entropy layer is out
  assert egp.allocate([0.5, 0.5, 0.0], [0.1, 0.1, 0.3], [100, 300, 50]) == [100, 100, 0]
  # an already fully pruned layer is out of the budget too
  assert egp.allocate([0.5, 0.7], [0.0, 0.1], [0, 100], rho=0.5) == [0, 50]
  # nothing eligible: nothing pruned
  assert egp.allocate([0.0, 0.3], [0.2, 0.0], [10, 0]) == [0, 0]


def test_allocate_capping_cascade():
  # logits S/I ~ (507, 253, 127, 1): each round the smallest-I layer takes all, is capped
  # at what it has left, and the rest flows on, until the big layer takes the remainder.
  out = egp.allocation([1.0, 1.0, 1.0, 1.0], [0.001, 0.002, 0.004, 0.5], [10, 20, 40, 10000])
  assert out.amounts == [10, 20, 40, 5035 - 70]
  assert [r["capped"] for r in out.rounds] == [[0], [1], [2], []]
  assert out.budget == 5035.0
  assert out.amounts == _official_split([1.0] * 4, [0.001, 0.002, 0.004, 0.5],
                                        [10, 20, 40, 10000], 0.5)


def test_allocate_matches_the_official_arithmetic_on_random_layers():
  rng = np.random.default_rng(0)
  capped_cases = 0
  for case in range(400):
    n = int(rng.integers(1, 18))
    entropy = rng.uniform(0.05, 1.0, n).astype(F32)
    entropy[rng.random(n) < 0.15] = 0.0
    mean_abs = rng.uniform(0.002, 0.08, n).astype(F32)
    nnz = rng.integers(0, 5000, n)
    nnz[rng.random(n) < 0.1] = 0
    rho = float(rng.choice([0.5, 0.3, 0.9]))
    got = egp.allocation(entropy.tolist(), mean_abs.tolist(), nnz.tolist(), rho)
    assert got.amounts == _official_split(entropy.tolist(), mean_abs.tolist(), nnz.tolist(),
                                          rho), case
    assert all(0 <= a <= k for a, k in zip(got.amounts, nnz))
    assert sum(got.amounts) <= got.budget + 1e-9
    capped_cases += len(got.rounds) > 1
  assert capped_cases > 50   # the cascade is exercised, not just one-round splits


def test_allocate_refuses_bad_input():
  with pytest.raises(ValueError, match=r"rho must be in \(0, 1\).*got 1.0"):
    egp.allocate([0.5], [0.1], [10], rho=1.0)
  with pytest.raises(ValueError, match="rho must be in"):
    egp.allocate([0.5], [0.1], [10], rho=0)
  with pytest.raises(ValueError, match="mean_abs_nonzero has 1 values, entropy has 2"):
    egp.allocate([0.5, 0.2], [0.1], [10, 3])
  with pytest.raises(ValueError, match="nnz must be ints >= 0"):
    egp.allocate([0.5], [0.1], [-1])
  with pytest.raises(ValueError, match="nnz must be ints >= 0"):
    egp.allocate([0.5], [0.1], [2.5])
  with pytest.raises(ValueError, match="finite and >= 0"):
    egp.allocate([math.nan], [0.1], [3])


# ---------------------------------------------------------------------- pruning


def test_prune_takes_the_smallest_unmasked_magnitudes_and_keeps_earlier_masks():
  rng = np.random.default_rng(1)
  w = rng.integers(-6, 7, size=(3, 3, 4, 5)).astype(F32)   # many ties
  mask = rng.random(w.shape) > 0.3
  amount = 40
  new = np.asarray(egp.prune(w, mask, amount))
  assert new.dtype == bool and new.shape == w.shape
  assert not np.any(new & ~mask)                       # earlier masks kept
  pruned_now = mask & ~new
  assert pruned_now.sum() == amount
  candidates = np.sort(np.abs(w[mask]))
  np.testing.assert_array_equal(np.sort(np.abs(w[pruned_now])), candidates[:amount])
  assert np.all(np.asarray(egp.prune(w, mask, 0)) == mask)
  everything = np.asarray(egp.prune(w, mask, int(mask.sum())))
  assert not everything.any()


def test_prune_ties_go_to_the_lowest_flat_index():
  w = np.array([[3.0, -1.0, 1.0], [1.0, 2.0, -1.0]], F32)
  mask = np.array([[1, 1, 1], [0, 1, 1]])
  new = np.asarray(egp.prune(w, mask, 2))
  np.testing.assert_array_equal(new, [[True, False, False], [False, True, True]])


def test_prune_refuses_bad_amounts():
  w, m = np.ones((2, 2), F32), np.array([[1, 0], [1, 1]])
  with pytest.raises(ValueError, match="cannot prune 4 weights, only 3 are unmasked"):
    egp.prune(w, m, 4)
  with pytest.raises(ValueError, match="amount must be an int >= 0"):
    egp.prune(w, m, -1)
  with pytest.raises(ValueError, match="amount must be an int >= 0"):
    egp.prune(w, m, 1.5)
  with pytest.raises(ValueError, match=r"mask has shape \(4,\), the weight \(2, 2\)"):
    egp.prune(w, np.ones(4), 1)
  with pytest.raises(TypeError, match=r"prune takes one weight array and its mask array, got a "
                                      r"dict"):
    egp.prune(w, {"kernel": m}, 1)


def test_the_own_loop_functions_name_the_arguments_mixed_up():
  spec = zoo.digits_cnn(width=4)
  variables = network.init(spec, jax.random.key(0))
  layers = egp.layer_map(spec)
  with pytest.raises(TypeError, match=r"layer_statistics takes the params collection, "
                                      r"variables\['params'\]"):
    egp.layer_statistics(variables, None, layers)
  assert set(egp.layer_statistics(variables["params"], None, layers)) == {
      l for l in layers.values() if l}
  with pytest.raises(ValueError, match=r"the params hold no kernel for layer 'conv3' of the "
                                       r"layer map: the map belongs to another model"):
    egp.layer_statistics(variables["params"], None, egp.layer_map(zoo.digits_plain(width=4)))
  with pytest.raises(TypeError, match=r"dead_channel_counts takes the variables dict"):
    egp.dead_channel_counts(spec, variables["params"], layers)
  digits = data.load("digits")
  with pytest.raises(TypeError, match=r"entropy_statistics takes one split of a dataset, e.g. "
                                      r"dataset.test or dataset.val, got the Dataset 'digits'"):
    egp.entropy_statistics(spec, variables, digits, batch_size=64)


def test_the_module_docs_own_loop_runs_and_prunes_the_smallest_weights():
  snippet = textwrap.dedent(egp.__doc__.rsplit("::\n", 1)[1])   # the docstring's last block
  spec = zoo.digits_cnn(width=4)
  variables = network.init(spec, jax.random.key(0))
  namespace = {"egp": egp, "site_stats": stats, "traverse_util": traverse_util, "spec": spec,
               "variables": variables, "ds": data.load("digits")}
  exec(snippet, namespace)  # pylint: disable=exec-used
  masks, amounts, pruned = namespace["masks"], namespace["amounts"], namespace["pruned"]
  layers = egp.layer_map(spec)
  flat_masks = traverse_util.flatten_dict(masks, sep="/")
  flat_params = traverse_util.flatten_dict(variables["params"], sep="/")
  assert sum(amounts) > 0 and set(flat_masks) == {f"{layers[s]}/kernel" for s in pruned}
  for s, amount in zip(pruned, amounts):
    w = np.abs(np.asarray(flat_params[f"{layers[s]}/kernel"]))
    m = np.asarray(flat_masks[f"{layers[s]}/kernel"])
    assert (~m).sum() == amount
    if 0 < amount < w.size:
      assert w[~m].max() <= w[m].min()


def test_measure_names_a_context_rng_that_is_no_key():
  spec = zoo.digits_cnn(width=4)
  variables = network.init(spec, jax.random.key(0))
  method = Egp()
  context = base.Context(iteration=0, train_stats=None, eval_stats=None, rng=0,
                         dataset=data.load("digits"), eval_batch_size=64)
  with pytest.raises(TypeError, match=r"context.rng must be a JAX key, e.g. "
                                      r"jax.random.key\(0\) .*; got the int 0"):
    method.measure(spec, variables, method.init(spec), context)
  for key in (jax.random.key(3), jax.random.PRNGKey(3)):           # typed, raw uint32
    assert egp._seed_of(key) == int(jax.random.randint(key, (), 0, 2**31 - 1))


# -------------------------------------------------------------------- layer map


def test_layer_map_follows_the_spec_structure():
  r18 = zoo.resnet18()
  m = egp.layer_map(r18)
  assert list(m) == list(r18.sites()) and len(m) == 17
  assert m["relu"] == "conv1"
  assert m["layer2/0/relu1"] == "layer2/0/conv1"
  assert m["layer2/0/relu2"] == "layer2/0/conv2"       # after the addition: the branch's conv2
  assert not any("shortcut" in l or "downsample" in l or l == "fc" for l in m.values())
  convs = {p for p, n in r18.walk() if type(n).__name__ == "Conv"}
  assert set(m.values()) < convs and len(convs - set(m.values())) == 3   # the 3 downsamples
  mb = egp.layer_map(zoo.mobilenet_v2())
  assert len(mb) == 35 and all(l.endswith("/conv") for l in mb.values())
  assert len(set(mb.values())) == 35


def test_layer_map_of_a_transformer_mlp_is_its_first_dense():
  spec = Spec((4, 8), (
      Block("block", branch=(LayerNorm("norm"), Dense("fc1", features=32), Act("gelu", fn="gelu"),
                             Dense("fc2", features=8))),
      Flatten("flat"), Dense("head", features=3)))
  assert egp.layer_map(spec) == {"block/gelu": "block/fc1"}


def test_layer_map_reads_concat_branches_and_looks_through_sequentials():
  spec = Spec((6, 6, 2), (
      Sequential("stem", layers=(Conv("conv", features=4, padding=1), BatchNorm("bn"))),
      Act("relu"),
      Concat("mix", branches=((Conv("a", features=3, kernel=1), BatchNorm("a_bn"), Act("a_relu")),
                              (Conv("b", features=2, padding=1), Act("b_relu"))),
             post=(Act("joined"), Conv("p", features=4, kernel=1), Act("p_relu"))),
      Pool("gap", "global_avg"), Dense("fc", features=3)))
  assert egp.layer_map(spec) == {"relu": "stem/conv", "mix/a_relu": "mix/a", "mix/b_relu": "mix/b",
                                 "mix/joined": None,     # reads both branches: no single layer
                                 "mix/p_relu": "mix/p"}
  # The masks EGP keeps are those layers' kernels, where the parameters are.
  method = Egp()
  variables = network.init(spec, jax.random.key(0))
  decision = base.Decision((), {"amounts": {"stem/conv": 7, "mix/a": 5}})
  pruned, state = method.apply(spec, variables, method.init(spec), decision)
  masks, params = _flat(state["masks"]), _flat(pruned["params"])
  assert set(masks) == {(*l.split("/"), "kernel") for l in ("stem/conv", "mix/a", "mix/b", "mix/p")}
  for path, amount in ((("stem", "conv", "kernel"), 7), (("mix", "a", "kernel"), 5)):
    assert masks[path].shape == params[path].shape
    assert np.count_nonzero(~masks[path]) == np.count_nonzero(params[path] == 0) == amount


def test_a_bad_layer_map_is_named():
  spec = zoo.digits_cnn(width=8)
  with pytest.raises(KeyError, match="'nope', which is not a node"):
    egp.check_layer_map(spec, {"relu": "nope"})
  with pytest.raises(ValueError, match="'bn1', a BatchNorm without a weight kernel"):
    egp.check_layer_map(spec, {"relu": "bn1"})
  with pytest.raises(KeyError, match=r"names \['conv1'\], which are not live sites"):
    egp.check_layer_map(spec, {"conv1": "conv1"})
  with pytest.raises(ValueError, match="sends both 'relu' and 'relu2' to 'conv1'"):
    egp.check_layer_map(spec, {"relu": "conv1", "relu2": "conv1"})
  assert egp.check_layer_map(spec, {"relu2": "conv2"})["relu"] is None
  with pytest.raises(KeyError, match=r"skip names \['nope'\], which are not live sites"):
    Egp(skip=("nope",)).layer_map(spec)
  skipped = Egp(skip=("relu",)).layer_map(spec)
  assert skipped["relu"] is None and skipped["relu2"] == "conv2"
  assert "conv1" not in Egp(skip=("relu",)).init(spec)["masks"]


# -------------------------------------------------------------------- estimator


def _h2(p):
  p = np.asarray(p, np.float64)
  q = 1 - p
  return -p * np.log2(np.maximum(p, 1e-5)) - q * np.log2(np.maximum(q, 1e-5))


def test_egp_estimator_on_hand_computed_batches():
  # fc copies the first 3 inputs: channel c's pre-activation is x[:, c]
  spec = Spec((4,), (Dense("fc", features=3, bias=False), Act("relu"), Dense("head", 2)))
  variables = network.init(spec, jax.random.key(0))
  kernel = np.zeros((4, 3), F32)
  kernel[[0, 1, 2], [0, 1, 2]] = 1.0
  variables["params"]["fc"]["kernel"] = jnp.asarray(kernel)
  batches = [
      np.array([[1.0, -1.0, 0.0, 5.0]], F32),            # a batch of one: every channel constant
      np.array([[1, 1, 2, 0], [1, -1, 3, 0], [-1, -1, 1, 0], [-1, -1, 4, 0]], F32),
  ]
  acc = stats.empty_stats(spec)
  for x in batches:
    acc = stats.accumulate(acc, network.forward(spec, variables, x, collect_stats=True)
                           .site_counts)
  # batch 1: no mixed channel -> H = 0 (it still counts in the mean over batches);
  # batch 2: p = (0.5, 0.25, 1.0): channel 2 is constant and left out of the mean.
  expected = (0.0 + (_h2(0.5) + _h2(0.25)) / 2) / 2
  got = stats.entropies(acc, "egp")["relu"]
  assert got == pytest.approx(expected, abs=1e-6)
  # zeros count as OFF: a channel at exactly 0 everywhere is constant, entropy 0
  one = stats.accumulate(stats.empty_stats(spec), network.forward(
      spec, variables, np.zeros((3, 4), F32), collect_stats=True).site_counts)
  assert stats.entropies(one, "egp")["relu"] == 0.0


def test_entropy_pass_matches_per_batch_numpy_on_digits():
  spec = zoo.digits_cnn(width=4)
  variables = network.init(spec, jax.random.key(3))
  split = data.load("digits").train
  mesh = training.make_mesh(jax.devices()[:1])
  got = stats.entropies(egp.entropy_statistics(spec, variables, split, batch_size=256, seed=5,
                                               mesh=mesh), "egp")
  per_batch = {s: [] for s in spec.sites()}
  for batch in split.batches(256, seed=5, epoch=0, shuffle=True, augment=True):
    counts = network.forward(spec, variables, batch["image"], collect_stats=True,
                             example_mask=batch["mask"]).site_counts
    for s, c in counts.items():
      c = np.asarray(c, np.float64)
      p = c[0] / c.sum(0)
      mixed = (p > 0) & (p < 1)
      per_batch[s].append(_h2(p[mixed]).mean() if mixed.any() else 0.0)
  for s in spec.sites():
    assert got[s] == pytest.approx(np.mean(per_batch[s]), abs=2e-6), s


def _mlp():
  return Spec((8, 8, 1), (Flatten("flat"), Dense("fc1", features=16), Act("relu"),
                          Dense("fc2", features=16), Act("relu2"), Dense("head", features=10)))


def test_a_last_batch_of_one_example_adds_to_the_counts_but_not_to_the_per_batch_mean():
  # 1294 = 3 * 431 + 1: the last batch holds one example, and one example leaves every
  # channel of a Dense-fed site constant (0 bits), which pulled the mean over batches down.
  spec = _mlp()
  variables = network.init(spec, jax.random.key(3))
  split = data.load("digits").train
  assert split.num_examples % 431 == 1
  mesh = training.make_mesh(jax.devices()[:1])
  acc = egp.entropy_statistics(spec, variables, split, batch_size=431, seed=5, mesh=mesh)
  got = stats.entropies(acc, "egp")
  per_batch = {s: [] for s in spec.sites()}
  totals = {s: 0 for s in spec.sites()}
  for batch in split.batches(431, seed=5, epoch=0, shuffle=True, augment=True):
    counts = network.forward(spec, variables, batch["image"], collect_stats=True,
                             example_mask=batch["mask"]).site_counts
    for s, c in counts.items():
      c = np.asarray(c, np.float64)
      totals[s] = totals[s] + c
      if batch["mask"].sum() > 1:
        p = c[0] / c.sum(0)
        mixed = (p > 0) & (p < 1)
        per_batch[s].append(_h2(p[mixed]).mean() if mixed.any() else 0.0)
  assert int(acc.batches) == 3
  for s in spec.sites():
    assert len(per_batch[s]) == 3 and min(per_batch[s]) > 0, s
    assert got[s] == pytest.approx(np.mean(per_batch[s]), abs=2e-6), s
    np.testing.assert_array_equal(np.asarray(acc.counts[s]), totals[s])   # every example
    assert totals[s].sum() == split.num_examples * 16


def test_an_entropy_batch_of_one_is_refused_for_the_per_batch_estimator(tmp_path):
  # A batch of one made every Dense-fed site "0 bits" and removed them all after iteration 0.
  with pytest.raises(ValueError, match=r"an entropy batch of 1 example \(entropy_batch_size\) "
                                       r"is too small for the 'egp' estimator.*set "
                                       r"entropy_batch_size to 2 or more"):
    Egp(entropy_batch_size=1)
  with pytest.raises(ValueError, match="too small for the 'egp' estimator"):
    Nepenthe(estimator="egp", entropy_batch_size=1)
  assert Nepenthe(entropy_batch_size=1).entropy_batch_size == 1   # whole-split counts
  ds, spec = data.load("digits"), _mlp()
  with pytest.raises(ValueError, match=r"entropy batch of 1 example \(the eval_batch_size, used "
                                       r"without an entropy_batch_size\)"):
    Egp().check_data(spec, ds, eval_batch_size=1)
  Egp(entropy_batch_size=2).check_data(spec, ds, eval_batch_size=1)
  with pytest.raises(ValueError, match="the eval_batch_size, used without an entropy_batch_size"):
    driver.run(Egp(), spec, ds, RECIPE, tmp_path / "run", progress=False, eval_batch_size=1)
  assert not (tmp_path / "run").exists()
  # The command line says it with its keys, before anything is loaded.
  def problems(name, *argv):
    cfg = egp_cli.CONFIGS[name].resolve(command.parse(egp_cli.build_parser(name), list(argv)))
    return egp_cli.check(cfg, name)
  assert any(p.startswith("--config.entropy_batch_size=1: the 'egp' estimator averages")
             for p in problems("egp", "--config.entropy_batch_size=1"))
  assert any(p.startswith("--config.eval_batch_size=1, the entropy batch without an "
                          "entropy_batch_size: the 'egp' estimator")
             for p in problems("egp", "--config.eval_batch_size=1"))
  assert problems("egp", "--config.entropy_batch_size=2", "--config.eval_batch_size=1") == []
  assert problems("nepenthe", "--config.entropy_batch_size=1") == []
  assert problems("nepenthe", "--estimator", "egp", "--config.entropy_batch_size=1") != []


def test_numpy_scalars_are_taken_and_a_string_for_a_bool_is_refused():
  method = Egp(rho=np.float32(0.25), entropy_batch_size=np.int64(64))
  assert type(method.rho) is float and method.rho == 0.25
  assert type(method.entropy_batch_size) is int and method.entropy_batch_size == 64
  json.dumps(method.options())
  assert egp.allocate([1.0, 2.0], [0.5, 0.5], [100, 100], rho=np.float32(0.5)) == \
      egp.allocate([1.0, 2.0], [0.5, 0.5], [100, 100], rho=0.5)
  assert Egp(augment=np.bool_(False)).augment is False
  with pytest.raises(TypeError, match="augment must be True or False.*got 'false'"):
    Egp(augment="false")


# ----------------------------------------------------------------- end to end

RECIPE = optim.Recipe(epochs=1, batch_size=64, optimizer="adam", lr=3e-3)
ITERATIONS = 3


class Killed(RuntimeError):
  pass


@pytest.fixture(scope="module")
def digits():
  return data.load("digits"), zoo.digits_cnn(width=8)


def _run(digits, workdir, method=None, **kw):
  ds, spec = digits
  return driver.run(method or Egp(entropy_batch_size=128), spec, ds, RECIPE, workdir,
                    iterations=ITERATIONS, progress=False, eval_batch_size=512,
                    latency_batches=(), **kw)


@pytest.fixture(scope="module")
def finished(digits, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("egp")
  calls = []

  def trainer(spec, variables, dataset, recipe, **kw):
    result = training.fit(spec, variables, dataset, recipe, progress=False, **kw)
    calls.append({"trained": result.variables, **kw})
    return result

  return workdir, _run(digits, workdir, trainer=trainer), calls


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree))


def test_pruned_weights_stay_zero_and_masks_add_up_to_the_amounts(finished):
  _, result, calls = finished
  entries = result.report["iterations"]
  assert len(calls) == ITERATIONS
  for call in calls:
    masks, params = _flat(call["options"].masks), _flat(call["trained"]["params"])
    for path, m in masks.items():
      pruned = np.asarray(params[path])[~np.asarray(m)]
      assert np.all(pruned == 0) and not np.any(np.signbit(pruned))
  final = _flat(result.state["masks"])
  for path, m in final.items():
    layer = "/".join(path[:-1])
    pruned = sum(e["decision"]["amounts"].get(layer, 0) for e in entries)
    assert int(np.size(m) - np.count_nonzero(m)) == pruned, layer
  first = entries[0]["decision"]
  assert first["global_sparsity"] == 0.0
  # Each layer's share of the budget, rounded down: the sum falls short by less than one per layer.
  amounts = first["amounts"].values()
  assert first["budget"] - len(amounts) < sum(amounts) <= first["budget"]
  assert first["nominal_sparsity"] == 0.5 and entries[1]["decision"]["nominal_sparsity"] == 0.75


def test_a_site_reaches_zero_entropy_and_becomes_the_identity(finished):
  _, result, calls = finished
  entries = result.report["iterations"]
  removed = [(e["iteration"], s) for e in entries for s in e["removed_now"]]
  assert removed, "no site reached zero entropy"
  it, site = removed[0]
  assert entries[it]["entropies"][site]["entropy"] == 0.0
  assert site in entries[it]["decision"]["zero_entropy"]
  later = entries[it + 1:]
  assert later, "the first removal came in the last iteration: nothing checks it stays removed"
  for e in later:
    assert site in e["removed"] and site not in e["entropies"]
  # Frozen: its layer's mask (the weights it kept when the site went) never changes again.
  kernel = (*entries[it]["entropies"][site]["layer"].split("/"), "kernel")
  masks = [_flat(c["options"].masks)[kernel] for c in calls[it:]]
  masks.append(_flat(result.state["masks"])[kernel])
  assert len({int(np.count_nonzero(m)) for m in masks}) == 1
  assert all(np.array_equal(m, masks[0]) for m in masks)


def test_exported_and_merged_models_compute_the_masked_network(digits, finished):
  (ds, spec), (workdir, result, calls) = digits, finished
  x = next(iter(ds.test.batches(128)))["image"]
  for it, call in enumerate(calls):
    options = call["options"]
    masked = {**call["trained"], "params": optim.apply_masks(call["trained"]["params"],
                                                             options.masks)}
    want = network.forward(spec, masked, x, gates=options.gates).logits
    saved_spec, saved = checkpoint.load_model(workdir / "iterations" / f"{it:03d}" / "model")
    np.testing.assert_allclose(network.forward(saved_spec, saved, x).logits, want, atol=1e-5)
    merged_spec, merged = surgery.collapse(saved_spec, saved, mode="exact")
    same = equivalence.compare(saved_spec, saved, merged_spec, merged, x)
    assert same.max_abs < 1e-4 and same.top1_agreement == 1.0
  last = result.report["iterations"][-1]
  assert last["units_removed"] >= 1
  assert last["depth"]["nonlinear_depth"] < result.report["iterations"][0]["depth"][
      "nonlinear_depth"]
  merged = result.report["chosen"]["merged"]
  assert merged["max_abs_diff"] < 1e-4 and (workdir / "chosen_merged").is_dir()


def test_report_completion_and_plots(finished, tmp_path):
  workdir, result, _ = finished
  full = egp_report.complete(workdir, result.report)
  entries = full["iterations"]
  assert entries[0]["pruning"]["nonzero_params"] == entries[0]["params"]
  assert entries[-1]["pruning"]["nonzero_params"] < entries[-1]["pruning"]["params"]
  assert entries[1]["pruning"]["nominal_sparsity"] == 0.5
  assert entries[-1]["pruning"]["merged"]["nonlinear_depth"] <= entries[-1]["depth"][
      "nonlinear_depth"]
  files = egp_report.write(tmp_path, full)
  assert files["sparsity_plot"].stat().st_size > 1000
  axes = egp_report._sparsity_figure(full).axes[0]  # pylint: disable=protected-access
  axes.figure.canvas.draw()
  ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
  assert ticks and all(t == int(t) for t in ticks)       # iterations (it drew 0.5, 1.5, ...)
  assert files["scores_plot"].name == "entropies.png"
  text = (tmp_path / "report.md").read_text()
  assert "## Pruning" in text and "| 0 | 0.0 | 0.0 |" in text
  # Entropies in bits, as EASIER's (the report said no unit).
  assert result.report["score_unit"] == "bits" and "lowest of entropies (bits)" in text


def test_the_pruning_table_shows_a_dash_for_figures_not_computed(tmp_path):
  spec = zoo.digits_plain()
  variables = network.init(spec, jax.random.key(0))
  checkpoint.save_model(tmp_path / "iterations" / "000" / "model", spec, variables)
  params = costs.count_params(spec)
  nonzero = sum(int(np.count_nonzero(x)) for x in jax.tree.leaves(variables["params"]))
  assert nonzero < params                                   # zero biases
  rep = {"method": "egp", "method_options": {"rho": 0.5}, "iterations": [
      {"iteration": 0, "params": params,
       "decision": {"round": 1, "global_sparsity": 0.0, "zero_entropy": []}}]}
  full = egp_report.complete(tmp_path, rep, merge=False)    # no merged costs
  assert "merged" not in full["iterations"][0]["pruning"]
  assert egp_report.table(full).splitlines()[2] == (
      f"| 0 | 0.0 | 0.0 | {nonzero:,} / {params:,} | – | – | – |")
  # The driver's report, before complete(): only the parameter count is known.
  assert egp_report.table(rep).splitlines()[2] == f"| 0 | – | – | – / {params:,} | – | – | – |"


def test_a_killed_run_resumes_bit_identical(digits, finished, tmp_path):
  workdir, result, _ = finished

  def train_then_die(spec, variables, dataset, recipe, **kw):
    out = training.fit(spec, variables, dataset, recipe, progress=False, **kw)
    if kw["seed"] == driver.iteration_seed(0, 2):   # dies in iteration 2, after fit's checkpoint
      raise Killed
    return out

  with pytest.raises(Killed):
    _run(digits, tmp_path, trainer=train_then_die)
  restored = checkpoint.Checkpointer(tmp_path / "checkpoints", digits[1]).latest_step()
  assert restored == 2
  resumed = _run(digits, tmp_path)
  assert report_lib.without_timings(resumed.report) == report_lib.without_timings(result.report)
  for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(result.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for name in ("chosen", f"iterations/{ITERATIONS - 1:03d}/model"):
    a = jax.tree.leaves(checkpoint.load_model(tmp_path / name)[1])
    b = jax.tree.leaves(checkpoint.load_model(workdir / name)[1])
    for x, y in zip(a, b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _snapshot(directory: pathlib.Path):
  return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_bad_input_is_refused_and_overwrites_nothing(digits, finished, tmp_path):
  (ds, spec), (workdir, _, _) = digits, finished
  with pytest.raises(ValueError, match=r"rho must be in \(0, 1\).*got 1.5"):
    Egp(rho=1.5)
  with pytest.raises(ValueError, match="unknown entropy estimator 'bits'"):
    Nepenthe(estimator="bits")
  with pytest.raises(KeyError, match="'conv9', which is not a node"):
    _run(digits, tmp_path / "new", Egp(layers={"relu": "conv9"}))
  assert not (tmp_path / "new").exists()
  # An entropy batch the two devices do not split failed only after iteration 0 trained.
  for method, kw in ((Egp(entropy_batch_size=129), {}), (Nepenthe(), {"eval_batch_size": 129})):
    with pytest.raises(ValueError, match="the entropy batch of 129 examples does not split over "
                                         "2 devices; use an entropy_batch_size"):
      driver.run(method, spec, ds, RECIPE, tmp_path / "new", progress=False, **kw)
    assert not (tmp_path / "new").exists()
  before = _snapshot(workdir)
  with pytest.raises(checkpoint.SpecMismatchError, match="another model"):
    driver.run(Egp(entropy_batch_size=128), zoo.digits_cnn(width=16), ds, RECIPE, workdir,
               progress=False)
  with pytest.raises(driver.RunMismatchError, match="rho: 0.5 there, 0.3 asked"):
    driver.run(Egp(rho=0.3, entropy_batch_size=128), spec, ds, RECIPE, workdir, progress=False)
  with pytest.raises(driver.RunMismatchError, match="holds a 'egp' run, not a 'nepenthe'"):
    driver.run(Nepenthe(), spec, ds, RECIPE, workdir, progress=False)
  with pytest.raises(ValueError, match="iterations must be"):
    driver.run(Egp(entropy_batch_size=128), spec, ds, RECIPE, workdir, iterations=0)
  assert _snapshot(workdir) == before


def test_no_augment_plains_the_entropy_pass_and_leaves_training_augmented():
  for argv, entropy, training in (([], True, True), (["--no-augment"], False, True),
                                  (["--config.augment=false"], True, False)):
    cfg = egp_cli.CONFIGS["egp"].resolve(command.parse(egp_cli.build_parser("egp"), argv))
    assert egp_cli.make_method("egp", cfg).augment is entropy, argv
    assert config_lib.recipe_of(cfg).augment is training, argv
  with pytest.raises(ValueError, match=r"a command's own keys \['augment'\] are keys of every "
                                       r"command too"):
    config_lib.defaults({"augment": True})


def test_command_line_nepenthe_and_its_errors(tmp_path, capsys):
  workdir = tmp_path / "run"
  rc = cli.main(["nepenthe", "--model", "digits_cnn", "--config.model_kwargs.width=8",
                 "--config.epochs=1", "--iterations", "2", "--workdir", str(workdir),
                 "--no-progress", "--no-latency"])
  assert rc == 0
  out = capsys.readouterr().out
  spec, ds = zoo.get("digits_cnn", width=8), data.load("digits")
  assert out.splitlines()[0] == (
      f"NEPENTHE (dataset entropy, rho 0.5) on digits_cnn/digits with nepenthe_digits: "
      f"{costs.count_params(spec):,} parameters, {len(spec.sites())} sites; 1 epoch per "
      f"iteration; train/val/test {ds.train.num_examples}/{ds.val.num_examples}/"
      f"{ds.test.num_examples}; {jax.device_count()} cpu device(s); workdir {workdir}")
  assert "nominal sparsity" in out
  report = json.loads((workdir / "report.json").read_text())
  assert report["method"] == "nepenthe" and report["method_options"]["estimator"] == "dataset"
  assert "pruning" in report["iterations"][-1]
  for name in ("sparsity.png", "entropies.png", "chosen", "chosen_merged"):
    assert (workdir / name).exists(), name
  assert cli.main(["egp", "--rho", "1.5", "--workdir", str(tmp_path / "x")]) == 2
  assert "rho must be in (0, 1)" in capsys.readouterr().err
  assert cli.main(["egp", "--model", "digits_cnn", "--config.layers={'relu': 'bn1'}",
                   "--workdir", str(tmp_path / "y")]) == 2
  assert "without a weight kernel" in capsys.readouterr().err
  # The default config keeps its ResNet-20's stem out of pruning; a skip given for another
  # model is kept, and digits_plain has no 'relu'.
  assert cli.main(["egp", "--model", "digits_plain", "--config.skip=relu",
                   "--workdir", str(tmp_path / "z")]) == 2
  assert ("skip names ['relu'], which are not live sites of 'digits_plain'; live sites: "
          "['relu1', 'relu2', 'relu3', 'relu4', 'relu5']; --config.skip=\"()\" prunes every site's "
          "layer") in capsys.readouterr().err
  assert not any((tmp_path / d).exists() for d in ("x", "y", "z"))


_MYNET = MYNET + """
class WNet(nn.Module):
  num_classes: int = 10
  width: int = 32
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    return nn.Dense(self.num_classes)(x.mean((1, 2)))
"""


def test_a_users_model_runs_without_the_default_configs_resnet_settings(tmp_path, capsys):
  """egp_digits's skip=("relu",) and model_kwargs={"width": 8} are its ResNet-20's: a
  user's module is pruned whole, sized as its own class says, and a note says so."""
  (tmp_path / "mynet.py").write_text(_MYNET)
  model = f"{tmp_path / 'mynet.py'}:MyNet"
  workdir = tmp_path / "run"
  assert cli.main(["egp", "--model", model, "--workdir", str(workdir), "--config.epochs=1",
                   "--iterations", "1", "--no-progress", "--no-latency"]) == 0
  err = capsys.readouterr().err
  assert (f"note: --model {model!r} is not the model of config egp_digits (resnet20): its "
          f"settings for resnet20 (model_kwargs={{'width': 8}}, skip=('relu',)) are left out, "
          f"so model_kwargs={{}}, skip=(); set them for this model with --config.KEY=VALUE"
          ) in err.splitlines()
  info = json.loads((workdir / "run.json").read_text())["info"]
  assert info["model_kwargs"] == {}
  assert json.loads((workdir / "report.json").read_text())["method_options"]["skip"] == []


def _resolved(name, *argv):
  """The config ``python -m jaxdepth NAME ARGV`` runs with."""
  if name == "easier":
    return easier_cli.resolve_config(command.parse(easier_cli.build_parser(), list(argv)))
  return egp_cli.CONFIGS[name].resolve(command.parse(egp_cli.build_parser(name), list(argv)))


def test_another_model_keeps_its_own_fields_and_the_settings_given_for_it(tmp_path, capsys):
  (tmp_path / "wnet.py").write_text(_MYNET)
  model = f"{tmp_path / 'wnet.py'}:WNet"
  # conv 3x3x1x32, conv 3x3x32x32, dense 32x10, with biases: WNet's own width 32
  own = (9 * 32 + 32) + (9 * 32 * 32 + 32) + (32 * 10 + 10)
  for name in ("easier", "egp", "nepenthe"):
    cfg = _resolved(name, "--model", model)
    _, spec = command.dataset_and_spec(cfg)
    assert costs.count_params(spec) == own, name
  # Set on the command line, they stay: whole or one keyword argument.
  cfg = _resolved("egp", "--model", model, "--config.skip=relu",
                  "--config.model_kwargs.width=4")
  assert cfg["skip"] == ("relu",) and cfg["model_kwargs"] == {"width": 4}
  assert costs.count_params(command.dataset_and_spec(cfg)[1]) == (
      (9 * 4 + 4) + (9 * 4 * 4 + 4) + (4 * 10 + 10))
  # The config's own model (by name, as the default) keeps the config's settings.
  for argv in ((), ("--model", "resnet20")):
    cfg = _resolved("egp", *argv)
    assert cfg["skip"] == ("relu",) and cfg["model_kwargs"] == {"width": 8}
  # Another zoo name is another model too.
  cfg = _resolved("egp", "--model", "digits_cnn")
  assert cfg["skip"] == () and cfg["model_kwargs"] == {}
  # A config's weights file is its model's (torchvision ResNet-18 weights); --pretrained stays.
  argv = ("--config", "easier_flowers_resnet18", "--model", "digits_cnn", "--dataset", "digits")
  assert _resolved("easier", *argv)["pretrained"] is None
  assert _resolved("easier", *argv, "--pretrained", "w.safetensors")["pretrained"] == (
      "w.safetensors")
  assert _resolved("easier", "--config", "easier_flowers_resnet18")["pretrained"] == (
      "resnet18_imagenet.safetensors")


def test_apply_export_and_measure_refuse_params_alone():
  # Before: a bare KeyError 'params' from Egp.apply/export/measure.
  spec = zoo.digits_plain()
  v = network.init(spec, jax.random.key(0))
  method = Egp()
  state = method.init(spec)
  context = base.Context(iteration=0, train_stats=None, eval_stats=None, rng=jax.random.key(0))
  for where, call in (("Egp.apply", lambda: method.apply(spec, v["params"], state,
                                                         base.Decision((), {"amounts": {}}))),
                      ("Egp.export", lambda: method.export(spec, v["params"], state)),
                      ("Nepenthe.measure", lambda: Nepenthe().measure(spec, v["params"], state,
                                                                      context))):
    with pytest.raises(TypeError, match=rf"{where} takes the variables dict .*pass variables, "
                                        rf"not variables\['params'\]"):
      call()


def test_the_sparsity_plot_draws_every_layer_in_its_own_colour_and_line_style():
  # Before: 18 layers in the default cycle of 10 colours, one line style: a layer emptied (100 %)
  # and one hardly pruned (0.2 %) were drawn alike.
  for n in (18, 45):
    layers = [f"layer{i}/conv" for i in range(n)]
    entries = [{"iteration": it, "decision": {
        "layer_sparsity": {l: (it * (i + 1) / n) / 2 for i, l in enumerate(layers)},
        "global_sparsity": it / 4}} for it in (0, 1)]
    fig = egp_report._sparsity_figure({"method": "egp", "iterations": entries})  # pylint: disable=protected-access
    lines = [l for l in fig.axes[0].lines if l.get_label() != "all pruned layers"]
    assert [l.get_label() for l in lines] == layers
    looks = {(l.get_color(), l.get_linestyle()) for l in lines}
    assert len(looks) == n, f"{n} layers drawn in {len(looks)} (colour, line style) pairs"
    report_lib._pyplot().close(fig)  # pylint: disable=protected-access

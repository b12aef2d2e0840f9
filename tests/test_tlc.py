"""TLC: the BatchNorm criterion, candidates, the shared-prefix ranking, prefix rules, export."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jaxdepth import costs, network, zoo
from jaxdepth.methods import base, tlc
from jaxdepth.spec import (Act, BatchNorm, Concat, Conv, Dense, Flatten, Pool, Spec,
                           with_identity)


def _phi(x):
  return 0.5 * math.erfc(-x / math.sqrt(2.0))


# ------------------------------------------------------------------ criterion


def test_off_probability_on_hand_made_gamma_beta():
  gamma = np.array([0.0, 0.0, 0.0, 0.0, 1.0, -2.0, 1.0, 1.0, 1e-30, 1.0, 3.0], np.float32)
  beta = np.array([0.0, -0.0, 0.5, -0.5, 0.0, 1.0, 6.0, -40.0, 1.0, 9.0, -0.3], np.float32)
  p = np.asarray(tlc.off_probability(gamma, beta), np.float64)
  expected = [1.0, 1.0, 0.0, 1.0, 0.5, _phi(-0.5), _phi(-6.0), 1.0, 0.0, _phi(-9.0), _phi(0.1)]
  np.testing.assert_allclose(p, expected, rtol=1e-5, atol=0)
  assert p[6] > 9e-10          # Φ(−6) ≈ 9.87e-10: not rounded to 0 by float32 erf
  assert p[9] > 1e-19          # Φ(−9) ≈ 1.13e-19
  assert not np.isnan(p).any()


def test_off_probability_refuses_mismatched_shapes():
  with pytest.raises(ValueError, match="same shape"):
    tlc.off_probability(np.ones(3), np.ones(4))


def test_bn_entropy_matches_numpy_with_the_1e5_clamp():
  rng = np.random.default_rng(0)
  gamma = rng.normal(size=64).astype(np.float32)
  beta = rng.normal(size=64).astype(np.float32) * 3
  gamma[:4] = 0.0
  p = np.array([_phi(-b / abs(g)) if g != 0 else float(b <= 0) for g, b in zip(gamma, beta)])
  q = 1 - p
  h = -p * np.log2(np.maximum(p, 1e-5)) - q * np.log2(np.maximum(q, 1e-5))
  np.testing.assert_allclose(float(tlc.bn_entropy(gamma, beta)), h.mean(), rtol=1e-5)
  assert float(tlc.bn_entropy(np.zeros(3), np.array([1.0, -1.0, 0.0]))) == 0.0


def test_empirical_bn_is_the_unbiased_std_and_mean_over_all_but_the_last_axis():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(4, 3, 3, 5)).astype(np.float32) * 2 + 1
  std, mean = tlc.empirical_bn(z)
  flat = z.reshape(-1, 5).astype(np.float64)
  np.testing.assert_allclose(np.asarray(std), flat.std(axis=0, ddof=1), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(mean), flat.mean(axis=0), rtol=1e-5, atol=1e-6)
  # one example of a conv map still has many values per channel
  std1, _ = tlc.empirical_bn(z[:1])
  np.testing.assert_allclose(np.asarray(std1), z[0].reshape(-1, 5).std(axis=0, ddof=1),
                             rtol=1e-5)


def test_empirical_bn_refuses_a_batch_of_one_dense_example():
  with pytest.raises(ValueError, match="at least two values per channel"):
    tlc.empirical_bn(np.ones((1, 7), np.float32))


# ------------------------------------------------------------------ candidates


def test_candidate_counts_of_the_zoo():
  assert len(tlc.candidates(zoo.resnet18())) == 17
  assert len(tlc.candidates(zoo.vgg16_bn())) == 15
  mnv2 = zoo.mobilenet_v2()
  assert len(tlc.candidates(mnv2)) == 35
  quirk = tlc.candidates(mnv2, projections=True)
  assert len(quirk) == 52          # + the 17 linear projections, as the official code
  by_name = {c.name: c for c in quirk}
  c = by_name["features/1/conv/project"]
  assert (c.bn, c.site) == ("features/1/conv/project_bn", "features/2/conv/expand/relu6")
  assert not c.direct
  r18 = {c.name: c for c in tlc.candidates(zoo.resnet18())}
  assert r18["layer2/0/relu2"].bn == "layer2/0/bn2" and not r18["layer2/0/relu2"].direct
  assert r18["layer2/0/relu1"].weight == "layer2/0/conv1" and r18["layer2/0/relu1"].direct
  vgg = {c.name: c for c in tlc.candidates(zoo.vgg16_bn())}
  assert vgg["classifier/1"].bn is None and vgg["classifier/1"].weight == "classifier/0"



def _choose(method, spec, variables, state, name, site):
  """``state`` after choosing candidate ``name`` alone (no channel cut) at ``site``."""
  return method.apply(spec, variables, state, base.Decision((site,), {"cut": {name: []}}))[1]


def test_a_chosen_projection_leaves_the_list_and_the_next_candidate_takes_the_next_site():
  # The official TLC_MobileNetV2.py: a chosen conv's BatchNorm leaves bn_list for good, and every
  # other conv -> BatchNorm linearizes the next ReLU6 after its BatchNorm that is no identity yet.
  spec = zoo.mobilenet_v2(width_mult=0.25, input_shape=(8, 8, 3))
  variables = network.init(spec, jax.random.key(0))
  method = tlc.TLC(projections=True)
  state = _choose(method, spec, variables, method.init(spec), "features/1/conv/project",
                  "features/2/conv/expand/relu6")
  cands = {c.name: c for c in method.candidates(spec, state)}
  assert "features/1/conv/project" not in cands and len(cands) == 51
  assert cands["features/2/conv/expand/conv"] == tlc.Candidate(
      "features/2/conv/expand/conv", "features/2/conv/expand/conv", "features/2/conv/expand/bn",
      "features/2/conv/depthwise/relu6", False)
  with pytest.raises(KeyError, match=r"\['features/1/conv/project'\] were chosen before"):
    _choose(method, spec, variables, state, "features/1/conv/project",
            "features/2/conv/depthwise/relu6")
  # the candidate on the next site goes the same way, and the one before it moves on
  state = _choose(method, spec, variables, state, "features/2/conv/expand/conv",
                  "features/2/conv/depthwise/relu6")
  moved = {c.name: c.site for c in method.candidates(spec, state)
           if c.name.startswith("features/2/")}
  assert moved == {"features/2/conv/depthwise/conv": "features/3/conv/expand/relu6",
                   "features/2/conv/project": "features/3/conv/expand/relu6"}
  # a removal naming no candidate chose the site's own, which does not move on
  state = method.apply(spec, variables, state,
                       base.Decision(("features/4/conv/expand/relu6",), {}))[1]
  assert "features/4/conv/expand/conv" not in {c.weight for c in method.candidates(spec, state)}
  # a state from before the record reads as nothing chosen, and choosing records it
  older = {k: v for k, v in state.items() if k != "chosen"}
  assert "features/2/conv/expand/conv" in {c.name for c in method.candidates(spec, older)}
  assert np.asarray(_choose(method, spec, variables, older, "features/3/conv/expand/relu6",
                            "features/3/conv/expand/relu6")["chosen"]).sum() == 1
  assert set(tlc.TLC().init(spec)) == {"gates", "masks", "stopped"}   # no record by default


def test_chosen_names_no_candidate_weight_layer_are_refused():
  spec = zoo.mobilenet_v2(width_mult=0.25, input_shape=(8, 8, 3))
  live = [s for s in spec.sites() if s != "features/2/conv/expand/relu6"]
  with pytest.raises(KeyError, match=r"chosen names \['no/such'\], which are no candidate weight "
                                     r"layers of 'mobilenet_v2_cifar' \(projections=True\)"):
    tlc.candidates(spec, projections=True, live=live, chosen=["no/such"])
  with pytest.raises(KeyError, match=r"'features/2/conv/expand/relu6' is the site of candidate "
                                     r"weight layer 'features/2/conv/expand/conv'"):
    tlc.candidates(spec, projections=True, live=live, chosen=["features/2/conv/expand/relu6"])
  with pytest.raises(KeyError, match=r"\['features/1/conv/project'\], which are no candidate"):
    tlc.candidates(spec, chosen=["features/1/conv/project"])   # a candidate with projections only
  assert len(tlc.candidates(spec, projections=True, live=live,
                            chosen=["features/2/conv/expand/conv"])) == 51


def test_a_run_checkpointed_without_the_chosen_record_cannot_be_restored(tmp_path):
  # as the docs say: the driver restores into TLC.init's state, which holds "chosen"
  from jaxdepth import checkpoint
  spec = zoo.mobilenet_v2(width_mult=0.25, input_shape=(8, 8, 3))
  method = tlc.TLC(projections=True)
  older = {k: v for k, v in method.init(spec).items() if k != "chosen"}
  with checkpoint.Checkpointer(tmp_path, spec, async_save=False) as ckpt:
    ckpt.save(1, {"step": jnp.zeros((), jnp.int32)}, extra=older)
  with checkpoint.Checkpointer(tmp_path, spec, async_save=False) as ckpt:
    with pytest.raises(checkpoint.SpecMismatchError,
                       match=r"'chosen' \(shape \(52,\)\) is in the template but not in the "
                             r"checkpoint"):
      ckpt.restore({"step": jnp.zeros((), jnp.int32)}, extra=method.init(spec))


def test_the_chosen_record_survives_a_checkpoint_round_trip(tmp_path):
  from jaxdepth import checkpoint
  spec = zoo.mobilenet_v2(width_mult=0.25, input_shape=(8, 8, 3))
  method = tlc.TLC(projections=True)
  state = _choose(method, spec, network.init(spec, jax.random.key(0)), method.init(spec),
                  "features/1/conv/project", "features/2/conv/expand/relu6")
  with checkpoint.Checkpointer(tmp_path, spec, async_save=False) as ckpt:
    ckpt.save(1, {"step": jnp.zeros((), jnp.int32)}, extra=state)
  with checkpoint.Checkpointer(tmp_path, spec, async_save=False) as ckpt:   # as the driver resumes
    restored = ckpt.restore({"step": jnp.zeros((), jnp.int32)}, extra=method.init(spec)).extra
  assert method.candidates(spec, restored) == method.candidates(spec, state)
  assert "features/1/conv/project" not in {c.name for c in method.candidates(spec, restored)}

def test_a_site_without_a_weight_layer_before_it_is_refused():
  spec = Spec((4, 4, 1), (Conv("c", features=3, padding=1), Pool("p", "max", window=2),
                          Act("r"), Pool("g", "global_avg"), Dense("fc", features=2)))
  with pytest.raises(ValueError, match="'r'.*no weight layer"):
    tlc.candidates(spec)


def _inception(classes=3):
  """A stem, then two conv → BatchNorm → ReLU branches joined on the channels."""
  return Spec((8, 8, 1), (
      Conv("stem", features=4, padding=1), BatchNorm("bn"), Act("relu"),
      Concat("mix", branches=((Conv("a", features=4, kernel=1), BatchNorm("a_bn"), Act("a_relu")),
                              (Conv("b", features=4, padding=1), BatchNorm("b_bn"),
                               Act("b_relu")))),
      Pool("gap", "global_avg"), Dense("fc", features=classes)), name="incept")


def test_sites_inside_a_concat_are_refused_with_the_reason():
  spec = _inception()
  with pytest.raises(ValueError, match=r"\['mix/a_relu', 'mix/b_relu'\] of 'incept' sit inside "
                                       r"Concat 'mix'.*with_identity"):
    tlc.candidates(spec)
  shallow = with_identity(spec, ("mix/a_relu", "mix/b_relu"))     # what the message advises
  assert [c.site for c in tlc.candidates(shallow)] == ["relu"]


# ------------------------------------------------------------------ ranking


def _randomized(spec, seed):
  v = network.init(spec, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(v["params"])
  for k, a in flat.items():
    if k[-1] in ("bias", "scale"):
      flat[k] = jnp.asarray(np.asarray(a) + rng.normal(0, 0.5, a.shape), jnp.float32)
  stats = traverse_util.flatten_dict(v.get("batch_stats", {}))
  for k, a in stats.items():
    stats[k] = jnp.asarray(rng.uniform(0.5, 1.5, a.shape) if k[-1] == "var"
                           else rng.normal(0, 0.3, a.shape), jnp.float32)
  return {"params": traverse_util.unflatten_dict(flat),
          "batch_stats": traverse_util.unflatten_dict(stats)}


def _mixed_spec():
  """BatchNorm sites, a residual block and a classifier site without BatchNorm."""
  block = zoo.basic_block("b", 6, 6, 1)
  return Spec((6, 6, 2), (
      Conv("c1", features=6, kernel=3, padding=1), BatchNorm("bn1"), Act("r1"), block,
      Pool("pool", "max", window=2), Flatten("flat"), Dense("d1", features=12), Act("r2"),
      Dense("fc", features=4)), name="mixed")


def _by_hand_loss(spec, variables, x, labels, cand, keep, gates):
  """The edit made on a copy of the variables, one plain forward."""
  params = traverse_util.flatten_dict(jax.tree.map(np.array, variables["params"]), sep="/")
  cut = np.flatnonzero(keep == 0)
  params[f"{cand.weight}/kernel"][..., cut] = 0.0
  if f"{cand.weight}/bias" in params:
    params[f"{cand.weight}/bias"][cut] = 0.0
  if cand.bn is not None:
    params[f"{cand.bn}/scale"][cut] = 0.0
    params[f"{cand.bn}/bias"][cut] = 0.0
  index = spec.sites().index(cand.site)
  g = np.array(gates)
  g[index] = 0.0
  logits = _forward_logits(spec, {**variables, "params": traverse_util.unflatten_dict(
      params, sep="/")}, x, jnp.asarray(g))
  return float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)))


@functools.partial(jax.jit, static_argnums=0)
def _forward_logits(spec, variables, x, gates):
  """One plain forward, compiled once per spec (the edits change values, not shapes)."""
  return network.forward(spec, variables, x, gates=gates).logits


@pytest.mark.parametrize("name", ["mixed", "digits", "mobilenet_v2_projections"])
def test_shared_ranking_equals_the_naive_loop_and_edits_made_by_hand(name):
  projections = name == "mobilenet_v2_projections"
  spec = {"mixed": _mixed_spec, "digits": lambda: zoo.digits_cnn(width=8),
          "mobilenet_v2_projections": lambda: zoo.mobilenet_v2(
              width_mult=0.25, input_shape=(8, 8, 3))}[name]()
  variables = _randomized(spec, 3)
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(12, *spec.input_shape)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, spec.output_shape[-1], 12), jnp.int32)
  gates = network.gates_for(spec, off=[spec.sites()[1]])   # one site already removed
  live = base.live_sites(spec, gates)
  cands = tlc.candidates(spec, live=live, projections=projections)
  assert [c.site for c in cands if c.name == c.site] == list(live)
  betas = tlc.candidate_betas(spec, variables, cands, x, gates=gates)
  masks = tlc.keep_masks(betas)
  assert any(0 < m.sum() < m.size for m in masks.values())      # non-trivial cuts
  base_loss, gaps = tlc.rank(spec, variables, cands, x, labels, masks, gates=gates)
  naive_loss, naive = tlc.rank_naive(spec, variables, cands, x, labels, masks, gates=gates)
  # float32: both sum the same terms in another order (the shared one at a larger batch)
  tol = 1e-5 * max(1.0, abs(base_loss))
  assert abs(base_loss - naive_loss) < tol
  for c in cands:
    assert abs(gaps[c.name] - naive[c.name]) < tol, (c.name, base_loss)
    by_hand = _by_hand_loss(spec, variables, x, labels, c, masks[c.name], gates) - base_loss
    assert abs(gaps[c.name] - by_hand) < 1e-4, c.name


def _ranking_inputs():
  """The mixed spec, its variables, a batch of 8 with labels, and its candidates."""
  spec = _mixed_spec()
  variables = _randomized(spec, 3)
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(8, *spec.input_shape)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, 8), jnp.int32)
  return spec, variables, x, labels, tlc.candidates(spec)


def test_ranking_inputs_a_user_can_get_wrong_are_named():
  spec, variables, x, labels, cands = _ranking_inputs()
  betas = tlc.candidate_betas(spec, variables, cands, x)
  masks = tlc.keep_masks(betas)
  with pytest.raises(ValueError, match=r"keep-mask of candidate 'r1' must be 6 zeros and ones"
                                       r".*not the betas themselves"):
    tlc.rank(spec, variables, cands, x, labels, betas)       # keep_masks skipped
  with pytest.raises(TypeError, match=r"chosen must be a collection of candidate names, got the "
                                      r"string 'r1'"):
    tlc.joint_gap(spec, variables, cands, "r1", x, labels, masks)
  with pytest.raises(KeyError, match=r"chosen names no candidate: \['c1'\]"):
    tlc.joint_gap(spec, variables, cands, ["c1"], x, labels, masks)     # a weight path
  with pytest.raises(TypeError, match=r"live must be a collection of site paths"):
    tlc.candidates(spec, live="r1")
  with pytest.raises(KeyError, match=r"live names no live site of 'mixed': \['rleu'\]"):
    tlc.candidates(spec, live=["rleu"])
  with pytest.raises(TypeError, match=r"one-hot\? pass labels.argmax\(-1\)"):
    tlc.rank(spec, variables, cands, x, jax.nn.one_hot(labels, 4), masks)
  with pytest.raises(TypeError, match=r"not the whole batch dict"):
    tlc.rank_naive(spec, variables, cands, {"image": x, "label": labels}, labels, masks)
  with pytest.raises(TypeError, match=r"candidate_betas takes the variables dict"):
    tlc.candidate_betas(spec, variables["params"], cands, x)
  # what the messages ask for works
  assert tlc.joint_gap(spec, variables, cands, ["r1"], x, labels, masks) == pytest.approx(
      tlc.rank(spec, variables, cands, x, labels, masks)[1]["r1"], abs=1e-5)


def test_ranking_refuses_gates_of_another_length_and_candidates_on_removed_sites():
  spec, variables, x, labels, cands = _ranking_inputs()
  masks = tlc.keep_masks(tlc.candidate_betas(spec, variables, cands, x))
  n = len(spec.sites())
  short = jnp.ones(n - 1)          # out of bounds: the last site would read the gate before it
  off = network.gates_for(spec, off=["r1"])
  calls = {"rank": functools.partial(tlc.rank, spec, variables, cands, x, labels, masks),
           "rank_naive": functools.partial(tlc.rank_naive, spec, variables, cands, x, labels,
                                           masks),
           "joint_gap": functools.partial(tlc.joint_gap, spec, variables, cands, ["r2"], x,
                                          labels, masks)}
  for name, call in calls.items():
    with pytest.raises(ValueError, match=rf"gates must have shape \({n},\).*got \({n - 1},\)"):
      call(gates=short)
    with pytest.raises(ValueError, match=r"candidates on sites \['r1'\], which the gates already "
                                         r"removed \(gate 0\).*live_sites\(spec, gates\)"):
      call(gates=off)


def test_ranking_a_batch_sharded_over_explicit_mesh_axes_gives_the_unsharded_values():
  # jax.make_mesh's axes are Explicit: the shared ranking's reshape would refuse the batch
  spec, variables, x, labels, cands = _ranking_inputs()
  masks = tlc.keep_masks(tlc.candidate_betas(spec, variables, cands, x))
  mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  base_loss, gaps = tlc.rank(spec, variables, cands, jax.device_put(x, sharded),
                             jax.device_put(labels, sharded), masks)
  expected_loss, expected = tlc.rank(spec, variables, cands, x, labels, masks)
  assert base_loss == pytest.approx(expected_loss, abs=1e-6)
  assert gaps == pytest.approx(expected, abs=1e-6)


def test_candidate_betas_refuse_variables_of_another_model():
  spec = zoo.digits_cnn(width=4)
  cands = tlc.candidates(spec)
  with pytest.raises(ValueError, match=r"the variables hold no 'layer1/0/conv1' \(candidate "
                                       r"'layer1/0/relu1' of 'digits_cnn', 4 channels\): they "
                                       r"belong to another model"):
    tlc.candidate_betas(spec, network.init(zoo.digits_plain(width=4), jax.random.key(0)), cands)
  with pytest.raises(ValueError, match=r"the variables hold a kernel of shape \(3, 3, 1, 8\) for "
                                       r"'conv1' .*4 channels\): they belong to another model"):
    tlc.candidate_betas(spec, network.init(zoo.digits_cnn(width=8), jax.random.key(0)), cands)


def test_candidates_refuse_a_gate_array_for_live():
  spec = _mixed_spec()
  gates = network.gates_for(spec, off=["r1"])
  for live in (gates, np.asarray(gates), np.asarray(gates).tolist()):
    with pytest.raises(TypeError, match=r"live must be a collection of site paths.*float.*"
                                        r"live_sites\(spec, gates\)"):
      tlc.candidates(spec, live=live)
  assert [c.site for c in tlc.candidates(spec, live=base.live_sites(spec, gates))] == [
      s for s in spec.sites() if s != "r1"]


def test_empirical_statistics_are_the_pre_activation_mean():
  spec = _mixed_spec()
  variables = _randomized(spec, 5)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(10, 6, 6, 2)), jnp.float32)
  cands = tlc.candidates(spec)
  betas = tlc.candidate_betas(spec, variables, cands, x)
  z = network.forward(spec, variables, x, capture=("r2",)).captured["r2"][0]
  np.testing.assert_allclose(betas["r2"], np.asarray(z).mean(axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(betas["r1"], np.asarray(variables["params"]["bn1"]["bias"]))


# ------------------------------------------------------------------ prefix rules


ORDER = ("a", "b", "c", "d", "e")


@pytest.mark.parametrize("joint, first, largest", [
    ({2: -0.1, 3: 0.2}, 3, 2),                  # the official rule keeps the harmful one
    ({2: 0.3}, 2, 1),
    ({2: -0.1, 3: -0.2, 4: -0.05}, 1, 4),       # never harmful: the official rule takes one
    ({2: 0.0, 3: 1e-9}, 3, 2),                  # 0 is harmless, anything above is not
])
def test_both_prefix_rules_on_constructed_gaps(joint, first, largest):
  gaps = {"a": -0.5, "b": -0.1, "c": 0.0, "d": 0.2, "e": 0.4}
  assert tlc.choose(ORDER, gaps, joint, "first_harmful") == ORDER[:first]
  assert tlc.choose(ORDER, gaps, joint, "largest_harmless") == ORDER[:largest]


def test_no_negative_gap_removes_the_best_candidate_only_and_evaluates_no_prefix():
  gaps = {"a": 0.01, "b": 0.2, "c": 0.3}
  calls = []
  joint = tlc.prefix_gaps(("a", "b", "c"), gaps, lambda names: calls.append(names) or -1.0)
  assert joint == {} and calls == []
  for rule in tlc.RULES:
    assert tlc.choose(("a", "b", "c"), gaps, joint, rule) == ("a",)


def test_prefix_gaps_stop_at_the_first_harmful_prefix():
  gaps = {k: -1.0 for k in ORDER}
  values = {2: -0.3, 3: 0.1, 4: -1.0}
  calls = []

  def joint(names):
    calls.append(names)
    return values[len(names)]

  assert tlc.prefix_gaps(ORDER, gaps, joint) == {2: -0.3, 3: 0.1}
  assert calls == [ORDER[:2], ORDER[:3]]
  with pytest.raises(ValueError, match="unknown prefix rule"):
    tlc.choose(ORDER, gaps, {}, "best")


# ------------------------------------------------------------------ method


@pytest.mark.parametrize("bad", [-1.0, 100.5, float("nan"), "20"])
def test_accuracy_threshold_outside_0_100_is_refused(bad):
  with pytest.raises(ValueError, match="accuracy_threshold"):
    tlc.TLC(accuracy_threshold=bad)


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="prefix rule"):
    tlc.TLC(rule="intended")
  with pytest.raises(ValueError, match="batch_size"):
    tlc.TLC(batch_size=0)


def test_a_ranking_batch_of_one_is_refused_up_front():
  # It was taken, then refused by empirical_bn only after iteration 0 had trained.
  with pytest.raises(ValueError, match=r"batch_size=1: the ranking batch "
                                       r"\(--config.rank_batch_size of python -m jaxdepth tlc\) "
                                       r"needs at least 2 examples"):
    tlc.TLC(batch_size=1)
  assert tlc.TLC(batch_size=2).batch_size == 2
  from jaxdepth.train import command, tlc as tlc_cli
  cfg = tlc_cli.CONFIGS.resolve(command.parse(tlc_cli.build_parser(),
                                              ["--config.rank_batch_size=1"]))
  assert any(p.startswith("--config.rank_batch_size=1: the ranking batch (TLC's batch_size) "
                          "needs at least 2 examples") for p in tlc_cli.check(cfg))


def test_numpy_scalars_are_taken_and_a_string_for_a_bool_is_refused():
  method = tlc.TLC(accuracy_threshold=np.float32(20), batch_size=np.int64(64),
                   projections=np.bool_(True))
  assert type(method.accuracy_threshold) is float and method.accuracy_threshold == 20.0
  assert type(method.batch_size) is int and method.batch_size == 64
  assert method.projections is True
  # "false" is a true string: it turned the MobileNetV2 quirk on
  with pytest.raises(TypeError, match="projections must be True or False.*got 'false'"):
    tlc.TLC(projections="false")


def test_apply_then_export_computes_the_masked_network_with_fewer_channels():
  spec = zoo.digits_cnn(width=8)
  variables = _randomized(spec, 7)
  method = tlc.TLC()
  state = method.init(spec)
  cands = {c.name: c for c in method.candidates(spec)}
  cut = {"relu": [0, 3], "layer1/0/relu1": [1, 2, 5], "layer1/1/relu2": [4]}
  decision = base.Decision(("relu", "layer1/0/relu1", "layer1/1/relu2"), {"cut": cut})
  new_vars, new_state = method.apply(spec, variables, state, decision)
  assert set(base.removed_sites(spec, new_state["gates"])) == set(decision.remove)
  for name, channels in cut.items():
    c = cands[name]
    kernel = np.asarray(tlc._leaf(new_vars, c.weight)["kernel"])
    assert not kernel[..., channels].any() and kernel[..., [k for k in range(8)
                                                          if k not in channels]].any()
    assert not np.asarray(tlc._leaf(new_vars, c.bn)["scale"])[channels].any()
  # the training masks name the same leaves and keep them at 0
  masks = traverse_util.flatten_dict(method.train_options(spec, new_state).masks, sep="/")
  assert not np.asarray(masks["conv1/kernel"])[..., [0, 3]].any()
  shallow_spec, shallow_vars = method.export(spec, new_vars, new_state)
  assert shallow_spec.sites() == tuple(s for s in spec.sites() if s not in decision.remove)
  assert costs.count_params(shallow_spec) < costs.count_params(spec)   # channels really cut
  x = jnp.asarray(np.random.default_rng(8).normal(size=(9, 8, 8, 1)), jnp.float32)
  expected = network.forward(spec, new_vars, x, gates=new_state["gates"]).logits
  got = network.forward(shallow_spec, shallow_vars, x).logits
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
  # an empty decision stops the run
  _, stopped = method.apply(spec, new_vars, new_state, base.Decision((), {"stop": "x"}))
  assert method.live_units(spec, stopped) == () and method.live_units(spec, new_state)


def test_export_deletes_the_cut_channels_of_a_removed_gelu_site():
  # Swin's mlp fc1 -> gelu -> fc2: removed, the site is the identity and its cut channels 0
  spec = zoo.digits_swin()
  variables = _randomized(spec, 3)
  method = tlc.TLC()
  state = method.init(spec)
  c = {c.name: c for c in method.candidates(spec)}["features/1/1/mlp/gelu"]
  assert spec.node(c.site).fn == "gelu" and c.direct
  cut = [0, 5, 6, 40]
  decision = base.Decision((c.site,), {"cut": {c.name: cut}})
  new_vars, new_state = method.apply(spec, variables, state, decision)
  shallow_spec, shallow_vars = method.export(spec, new_vars, new_state)
  fc2 = "features/1/1/mlp/fc2"
  (shape_in, shape_out), d_out = spec.shapes()[c.weight], spec.shapes()[fc2][1][-1]
  d_in, width = shape_in[-1], shape_out[-1]
  assert spec.node(c.weight).bias and shallow_spec.node(c.weight).features == width - len(cut)
  deleted = len(cut) * (d_in + 1) + len(cut) * d_out       # fc1 kernel columns + bias, fc2 rows
  assert costs.count_params(spec) - costs.count_params(shallow_spec) == deleted
  assert np.asarray(tlc._leaf(shallow_vars, fc2)["kernel"]).shape == (width - len(cut), d_out)
  assert shallow_spec.node(c.site).fn == "identity"
  x = jnp.asarray(np.random.default_rng(4).normal(size=(5, 8, 8, 1)), jnp.float32)
  expected = network.forward(spec, new_vars, x, gates=new_state["gates"]).logits
  got = network.forward(shallow_spec, shallow_vars, x).logits
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_export_passes_a_cut_channels_constant_through_another_removed_site_as_identity():
  # features/17: expand conv -> bn -> E -> depthwise conv -> bn -> D -> project. A channel cut at
  # E is deleted with its depthwise channel, whose BatchNorm constant folds into the projection
  # through D: the identity in the gated network, so not relu6 of it.
  spec = zoo.mobilenet_v2(width_mult=0.25, input_shape=(8, 8, 1))
  variables = _randomized(spec, 11)
  x = jnp.asarray(np.random.default_rng(12).normal(size=(4, 8, 8, 1)), jnp.float32)
  e, d = "features/17/conv/expand/relu6", "features/17/conv/depthwise/relu6"
  width = spec.node("features/17/conv/expand/conv").features
  cut = list(range(0, width, 2))

  def check(method, variables, state):
    shallow_spec, shallow_vars = method.export(spec, variables, state)
    assert shallow_spec.node("features/17/conv/expand/conv").features == width - len(cut)
    expected = network.forward(spec, method._masked(spec, variables, state), x,
                               gates=state["gates"]).logits
    got = network.forward(shallow_spec, shallow_vars, x).logits
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)

  method = tlc.TLC()
  new_vars, state = method.apply(spec, variables, method.init(spec),
                                 base.Decision((e, d), {"cut": {e: cut, d: []}}))
  check(method, new_vars, state)
  # projections: E's own candidate, then the projection before it, moved on to D, is chosen
  method = tlc.TLC(projections=True)
  new_vars, state = method.apply(spec, variables, method.init(spec),
                                 base.Decision((e,), {"cut": {e: cut}}))
  moved = {c.name: c.site for c in method.candidates(spec, state)}
  assert moved["features/16/conv/project"] == d
  new_vars, state = method.apply(spec, new_vars, state,
                                 base.Decision((d,), {"cut": {"features/16/conv/project": [1]}}))
  check(method, new_vars, state)


def test_a_decision_applied_twice_is_refused_as_already_removed():
  spec = zoo.digits_cnn(width=8)
  variables = network.init(spec, jax.random.key(0))
  method = tlc.TLC()
  state = method.init(spec)
  decision = base.Decision(("relu2",), {"cut": {"relu2": [0]}})
  _, once = method.apply(spec, variables, state, decision)
  with pytest.raises(ValueError, match=r"sites \['relu2'\] of 'digits_cnn' are already removed "
                                       r"\(gate 0\); a decision applies once"):
    method.apply(spec, variables, once, decision)
  with pytest.raises(KeyError, match=r"cannot remove \['rleu'\]: not live sites"):
    method.apply(spec, variables, state, base.Decision(("rleu",), {}))


def test_a_state_of_another_spec_is_refused_by_name():
  spec = zoo.digits_cnn(width=4)
  method = tlc.TLC()
  variables = network.init(spec, jax.random.key(0))
  wide = method.init(zoo.digits_cnn(width=8))        # a bare broadcast error before
  other = method.init(zoo.digits_plain(width=4))
  for call in (lambda s: method.train_options(spec, s), lambda s: method.live_units(spec, s),
               lambda s: method.export(spec, variables, s),
               lambda s: method.apply(spec, variables, s, base.Decision(("relu2",), {}))):
    with pytest.raises(ValueError, match=r"the TLC state holds a mask of shape \(8,\) for the 4 "
                                         r"channels of 'conv1' of 'digits_cnn': it belongs to "
                                         r"another spec .*make it with TLC\(\).init\(spec\)"):
      call(wide)
    with pytest.raises(ValueError, match=r"the TLC state holds gates of shape \(5,\) for the 6 "
                                         r"sites of 'digits_cnn': it belongs to another spec"):
      call(other)
  state = method.init(spec)
  masks = traverse_util.flatten_dict(state["masks"], sep="/")
  del masks["layer1/0/conv1"]
  with pytest.raises(ValueError, match=r"no mask for the 4 channels of 'layer1/0/conv1'"):
    method.train_options(spec, {**state, "masks": traverse_util.unflatten_dict(masks, sep="/")})
  assert method.live_units(spec, method.init(spec)) == spec.sites()   # what the message says



def test_the_ranking_batch_is_drawn_again_each_iteration_only_with_val_augment():
  from jaxdepth import data
  spec, method = zoo.digits_cnn(width=8), tlc.TLC(batch_size=64)

  def batch(ds, iteration):
    context = base.Context(iteration=iteration, train_stats=None, eval_stats=None,
                           rng=jax.random.key(0), dataset=ds)
    return tuple(np.asarray(a) for a in method._batch(spec, context))

  (x1, y1), (x2, y2) = (batch(data.load("digits", val_augment=True), it) for it in (1, 2))
  assert (y1 == y2).all() and not np.array_equal(x1, x2)   # the same images, another view
  plain = data.load("digits")
  (p1, _), (p2, _) = batch(plain, 1), batch(plain, 2)
  np.testing.assert_array_equal(p1, p2)
  np.testing.assert_array_equal(p1, next(iter(plain.val.batches(64)))["image"])

def test_val_accuracy_in_percent_is_refused_as_not_a_fraction():
  spec = zoo.digits_cnn(width=8)
  method = tlc.TLC(batch_size=64)
  variables = network.init(spec, jax.random.key(0))

  def context(accuracy):
    return base.Context(iteration=0, train_stats=None, eval_stats=None, rng=jax.random.key(0),
                        val_accuracy=accuracy)

  for percent in (5.0, 36.1, -0.1):
    with pytest.raises(ValueError, match=r"val_accuracy is a fraction in \[0, 1\].*got "
                                         rf"{percent}; divide an accuracy in percent by 100"):
      method.measure(spec, variables, method.init(spec), context(percent))
  # 5 % as a fraction is below the 20 % threshold: the stop rule holds, nothing is ranked
  assert method.measure(spec, variables, method.init(spec), context(0.05)) == {}
  # The params alone: a bare KeyError 'params' from the masking once it ranked; named up front.
  with pytest.raises(TypeError, match=r"TLC.measure takes the variables dict .*pass variables, "
                                      r"not variables\['params'\]"):
    method.measure(spec, variables["params"], method.init(spec), context(0.05))


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """A 3-iteration TLC run on digits (2 epochs per iteration)."""
  from jaxdepth import data, driver, optim
  ds, spec = data.load("digits"), zoo.digits_cnn(width=8)
  workdir = tmp_path_factory.mktemp("tlc")
  recipe = optim.Recipe(epochs=2, batch_size=64, optimizer="adam", lr=3e-3)
  result = driver.run(tlc.TLC(batch_size=64), spec, ds, recipe, workdir, iterations=3,
                      tolerance=100.0, progress=False, eval_batch_size=512, latency_batches=())
  return ds, spec, workdir, result


def test_digits_run_removes_layers_and_its_merged_model_matches(digits_run):
  from jaxdepth import checkpoint
  ds, spec, workdir, result = digits_run
  entries = result.report["iterations"]
  assert len(entries) == 3 and entries[-1]["units_removed"] >= 2
  for e in entries:
    gaps = e["loss_gaps"]
    assert set(gaps) == {s for s in spec.sites() if s not in e["removed"]}
    assert e["removed_now"] == list(dict.fromkeys(gaps[k]["site"] for k in e["decision"]["chosen"]))
    order = sorted(gaps, key=lambda k: gaps[k]["gap"])
    assert e["decision"]["order"] == order
  # cut channels stay exactly 0 in the state's masks and in the chosen model's spec
  chosen_spec, chosen_vars = checkpoint.load_model(workdir / "chosen")
  merged_spec, merged_vars = checkpoint.load_model(workdir / "chosen_merged")
  assert chosen_spec.sites() == tuple(s for s in spec.sites()
                                      if s not in result.report["chosen"]["removed"])
  x = next(iter(ds.test.batches(128)))["image"]
  np.testing.assert_allclose(np.asarray(network.forward(merged_spec, merged_vars, x).logits),
                             np.asarray(network.forward(chosen_spec, chosen_vars, x).logits),
                             rtol=1e-4, atol=1e-4)
  assert result.report["chosen"]["merged"]["max_abs_diff"] < 1e-4


def test_accuracy_collapse_stops_the_run(tmp_path):
  from jaxdepth import data, driver, optim, training
  ds, spec = data.load("digits"), zoo.digits_cnn(width=8)
  recipe = optim.Recipe(epochs=1, batch_size=64, optimizer="adam", lr=3e-3)

  def untrained(spec, variables, dataset, recipe, **kw):
    return training.FitResult(variables, None, [], training.TrainState.create(
        variables, optim.make_optimizer(recipe, 1), 0))

  result = driver.run(tlc.TLC(batch_size=64, accuracy_threshold=99.0), spec, ds, recipe,
                      tmp_path, iterations=5, progress=False, trainer=untrained, merge=False)
  entries = result.report["iterations"]
  assert len(entries) == 1 and entries[0]["val_accuracy"] < 0.99   # a fraction
  assert entries[0]["removed_now"] == [] and "stop" in entries[0]["decision"]


def test_a_validation_split_smaller_than_one_batch_is_refused_before_any_training(tmp_path):
  from jaxdepth import data, driver, optim
  ds, spec = data.load("digits"), zoo.digits_cnn(width=8)
  method = tlc.TLC(batch_size=1000)
  context = base.Context(iteration=0, train_stats=None, eval_stats=None,
                         rng=jax.random.key(0), dataset=ds, val_accuracy=0.9)
  state = method.init(spec)
  with pytest.raises(ValueError, match="144 examples, fewer than one ranking batch of 1000"):
    method.measure(spec, network.init(spec, jax.random.key(0)), state, context)
  trained = []   # the driver refuses before iteration 0 trains (it used to, then refuse)

  def trainer(*args, **kw):
    trained.append(True)
    raise AssertionError("trained")

  recipe = optim.Recipe(epochs=1, batch_size=64, optimizer="adam", lr=3e-3)
  with pytest.raises(ValueError, match="144 examples, fewer than one ranking batch of 1000"):
    driver.run(method, spec, ds, recipe, tmp_path / "run", progress=False, trainer=trainer)
  assert trained == [] and not (tmp_path / "run").exists()


def test_cli_writes_tlc_figures_and_refuses_bad_settings(tmp_path, capsys):
  from jaxdepth.train import __main__ as cli
  common = ["--no-progress", "--config.epochs=1", "--config.iterations=2",
            "--config.model_kwargs={'width': 8}", "--config.rank_batch_size=64"]
  assert cli.main(["tlc", "--accuracy-threshold", "150", "--rule", "best",
                   "--workdir", str(tmp_path / "a"), *common]) == 2
  err = capsys.readouterr().err
  assert "accuracy_threshold" in err and "[0, 100]" in err and "--rule 'best'" in err
  assert cli.main(["tlc", "--workdir", str(tmp_path / "b"), *common,
                   "--config.rank_batch_size=1000"]) == 2
  assert "fewer than one ranking batch" in capsys.readouterr().err
  assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "run.json").exists()
  assert cli.main(["tlc", "--workdir", str(tmp_path / "c"), "--accuracy-threshold", "0",
                   *common]) == 0
  for name in ("tlc.json", "loss_gaps.png", "costs.png", "report.md", "chosen_merged"):
    assert (tmp_path / "c" / name).exists(), name
  import json
  figures = json.loads((tmp_path / "c" / "tlc.json").read_text())
  assert {"dense", "chosen", "merged"} <= set(figures["latency"])
  assert len(figures["iterations"]) == 2


def test_cli_refuses_a_model_with_sites_inside_a_concat(tmp_path, capsys):
  from jaxdepth.train import __main__ as cli
  model = tmp_path / "incept.json"
  model.write_text(_inception(classes=10).to_json())
  assert cli.main(["tlc", "--model", str(model), "--workdir", str(tmp_path / "w"),
                   "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert "['mix/a_relu', 'mix/b_relu']" in err and "inside Concat 'mix'" in err
  assert "Traceback" not in err and not (tmp_path / "w" / "run.json").exists()


def test_apply_and_export_refuse_params_alone():
  # Before: a bare KeyError 'params' from TLC._masked.
  spec = zoo.digits_plain()
  v = network.init(spec, jax.random.key(0))
  method = tlc.TLC()
  state = method.init(spec)
  for where, call in (("TLC.apply", lambda: method.apply(spec, v["params"], state,
                                                         base.Decision(("relu1",), {"cut": {}}))),
                      ("TLC.export", lambda: method.export(spec, v["params"], state))):
    with pytest.raises(TypeError, match=rf"{where} takes the variables dict .*pass variables, "
                                        rf"not variables\['params'\]"):
      call()


def test_a_state_without_masks_is_refused_by_its_keys_not_a_bare_key():
  # _checked read state["masks"] before checking anything: a bare KeyError 'masks'.
  spec = zoo.digits_cnn()
  method = tlc.TLC()
  easier_state = {"gates": network.gates_for(spec)}
  for call in (lambda: method.live_units(spec, easier_state),
               lambda: method.candidates(spec, easier_state),
               lambda: method.train_options(spec, easier_state)):
    with pytest.raises(ValueError, match=r"this tlc state lacks \['masks', 'stopped'\] \(its keys: "
                                         r"\['gates'\]; .*make it with TLC\(\)\.init\(spec\)"):
      call()
  state = tlc.TLC(projections=True).init(spec)   # "chosen" may be missing, as the doc allows
  del state["chosen"]
  assert tlc.TLC(projections=True).live_units(spec, state) == spec.sites()

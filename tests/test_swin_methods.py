"""EGP, LaCoOT and TLC on Swin: fc1 as the pruned layer and the token-row entropy, Swin
layers as LaCoOT units with the official pairing, TLC's data-driven criterion on the MLP
pre-activations, each checked against an independent computation on a tiny Swin."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth import data, driver, network, optim, surgery, zoo
from jaxdepth.methods import Egp, LaCoOT, base, egp, lacoot, tlc

RECIPE = optim.Recipe(epochs=1, batch_size=64, optimizer="adam", lr=3e-3)
LAYERS = ("features/1/0", "features/1/1", "features/3/0", "features/3/1")


def _perturbed(variables, seed=1, scale=0.3):
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def swin():
  spec = zoo.digits_swin(width=8)
  variables = _perturbed(network.init(spec, jax.random.key(0)))
  return spec, variables, data.load("digits")


# ------------------------------------------------------------------------- EGP


def test_egp_prunes_each_mlps_fc1_of_swin_t():
  spec = zoo.swin_t()
  layers = egp.layer_map(spec)
  assert list(layers) == list(spec.sites()) and len(layers) == 12
  assert all(l == s[:-len("gelu")] + "fc1" for s, l in layers.items())
  masks = Egp().init(spec)["masks"]
  assert masks["features"]["1"]["0"]["mlp"]["fc1"]["kernel"].shape == (96, 384)
  assert masks["features"]["7"]["1"]["mlp"]["fc1"]["kernel"].shape == (768, 3072)


def test_row_counts_count_each_token_row_over_batch_width_and_channels():
  z = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32)
  z[1, 2] = 0.0
  z[0, 3] = np.abs(z[0, 3])
  mask = np.asarray([True, True, False])
  got = np.asarray(egp.row_counts(z, jnp.asarray(mask)))
  kept = z[mask]
  want = np.stack([(kept > 0).sum((0, 2, 3)), (kept < 0).sum((0, 2, 3)),
                   (kept == 0).sum((0, 2, 3))])
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
    egp.row_counts(z[0])


def _h2(p):
  q = 1 - p
  return -p * np.log2(np.maximum(p, 1e-5)) - q * np.log2(np.maximum(q, 1e-5))


def test_the_row_entropy_is_egps_estimator_over_token_rows(swin):
  """The official Swin-T script's neurons: per batch, a row's ON fraction over examples,
  width and channels; the mean h2 over rows that are not constant; the mean over batches."""
  spec, variables, ds = swin
  split = ds.val
  got = egp.entropy_statistics(spec, variables, split, batch_size=64, seed=3, neurons="rows")
  want = {s: [] for s in spec.sites()}
  for batch in split.batches(64, seed=3, epoch=0, shuffle=True, augment=True,
                             drop_remainder=False):
    out = network.forward(spec, variables, batch["image"], capture=spec.sites())
    for s in spec.sites():
      z = np.asarray(out.captured[s][0])[np.asarray(batch["mask"])]
      p = (z > 0).mean(axis=(0, 2, 3))
      mixed = (p > 0) & (p < 1)
      want[s].append(_h2(p[mixed]).mean() if mixed.any() else 0.0)
  rows = egp.site_stats.entropies(got, "egp")
  for s in spec.sites():
    assert got.counts[s].shape == (3, spec.shapes()[s][0][0])
    assert rows[s] == pytest.approx(np.mean(want[s]), rel=1e-5, abs=1e-6)
  channels = egp.site_stats.entropies(egp.entropy_statistics(
      spec, variables, split, batch_size=64, seed=3), "egp")
  assert any(abs(channels[s] - rows[s]) > 1e-3 for s in spec.sites())


def test_the_row_entropy_is_refused_where_it_has_no_meaning():
  with pytest.raises(ValueError, match="'easier' estimator counts channels"):
    Egp(estimator="easier", neurons="rows")
  with pytest.raises(ValueError, match="unknown neurons"):
    Egp(neurons="tokens")
  with pytest.raises(ValueError, match=r"sites \['encoder/layers/encoder_layer_0/mlp/gelu'"):
    Egp(neurons="rows").units(zoo.digits_vit())


def test_an_egp_round_with_row_entropy_on_a_tiny_swin_prunes_fc1_only(swin):
  """Measure (row entropy over the training split), split the budget, prune, export."""
  spec, variables, ds = swin
  method = Egp(neurons="rows", entropy_batch_size=64)
  state = method.init(spec)
  context = base.Context(iteration=0, train_stats=None, eval_stats=None,
                         rng=jax.random.key(2), dataset=ds, eval_batch_size=64)
  scores = method.measure(spec, variables, state, context)
  fc1 = [s[:-len("gelu")] + "fc1" for s in spec.sites()]
  assert [v["layer"] for v in scores.values()] == fc1
  assert all(0 < v["entropy"] <= 1 for v in scores.values())
  decision = method.decide(scores, state)
  amounts = egp.allocate([v["entropy"] for v in scores.values()],
                         [v["mean_abs_nonzero"] for v in scores.values()],
                         [v["nnz"] for v in scores.values()], 0.5)
  assert decision.details["amounts"] == dict(zip(fc1, amounts)) and sum(amounts) > 0
  pruned, state = method.apply(spec, variables, state, decision)
  flat = dict(jax.tree_util.tree_flatten_with_path(pruned["params"])[0])
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
    name = "/".join(str(k.key) for k in path)
    layer = name[:-len("/kernel")]
    zeros = int(np.sum(np.asarray(flat[path]) == 0))
    assert zeros == (dict(zip(fc1, amounts))[layer] if layer in fc1 and name.endswith("kernel")
                     else 0), name
  x = next(ds.test.batches(16))["image"]
  shallow, shallow_vars = method.export(spec, pruned, state)
  np.testing.assert_allclose(np.asarray(network.forward(shallow, shallow_vars, x).logits),
                             np.asarray(network.forward(spec, pruned, x).logits),
                             rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- LaCoOT


def test_lacoot_units_of_swin_are_its_twelve_layers():
  spec = zoo.swin_t()
  units = lacoot.find_blocks(spec)
  assert units == tuple(f"features/{s}/{b}" for s, n in ((1, 2), (3, 2), (5, 6), (7, 2))
                        for b in range(n))
  assert lacoot.find_blocks(spec, "official") == units
  assert lacoot.compared_outputs(spec, units) == units
  assert lacoot.compared_outputs(spec, units, "official") == tuple(
      u + "/mlp/drop2" for u in units)
  assert lacoot.check_blocks(spec, ["features/5/3"]) == ("features/5/3",)
  with pytest.raises(ValueError, match="'features/5/3/attention/attn' is a window_attention"):
    lacoot.check_blocks(spec, ["features/5/3/attention/attn"])
  assert len(lacoot.find_blocks(zoo.digits_vit())) == 2   # ViT layers, no official pairing
  with pytest.raises(ValueError, match="no official LaCoOT pairing"):
    lacoot.find_blocks(zoo.digits_vit(), "official")


def test_the_official_swin_penalty_compares_the_layer_input_with_the_mlp_branch(swin):
  """Y is the MLP's output before its addition: the layer's output minus its attention
  half's output (no stochastic depth on the tiny Swin)."""
  spec, variables, ds = swin
  x = next(ds.train.batches(16))["image"]
  reg = lacoot.regularizer(LAYERS, 2.0, 8, lacoot.compared_outputs(spec, LAYERS, "official"))
  assert set(reg.capture) == set(LAYERS) | {u + "/mlp/drop2" for u in LAYERS}
  out = network.forward(spec, variables, x, capture=reg.capture + tuple(
      u + "/attention" for u in LAYERS))
  rng = jax.random.key(4)
  value = reg.fn(out.captured, None, rng)
  expected = []
  for k, u in enumerate(LAYERS):
    branch = out.captured[u][1] - out.captured[u + "/attention"][1]
    expected.append(lacoot.max_sliced_wasserstein(out.captured[u][0], branch,
                                                  rng=jax.random.fold_in(rng, k),
                                                  n_projections=8))
  np.testing.assert_allclose(float(value), 2.0 * float(np.mean(expected)), rtol=1e-4)
  plain = lacoot.regularizer(LAYERS, 2.0, 8).fn(out.captured, None, rng)
  assert abs(float(plain) - float(value)) > 1e-3


@pytest.fixture(scope="module")
def lacoot_run(swin, tmp_path_factory):
  spec, variables, ds = swin
  method = LaCoOT(weight=0.1, n_projections=8, pairing="official", order="zscore",
                  score="max_sliced")
  return method, driver.run(method, spec, ds, RECIPE, tmp_path_factory.mktemp("lacoot_swin"),
                            variables=variables, iterations=2, progress=False,
                            eval_batch_size=144, tolerance=100.0)


def test_lacoot_trains_a_tiny_swin_and_removes_a_layer_by_the_official_rule(lacoot_run):
  _, result = lacoot_run
  first, second = result.report["iterations"]
  assert first["units_total"] == 4 and list(first["distances"]) == list(LAYERS)
  assert first["decision"]["order"] == list(lacoot.removal_order(first["distances"], "zscore"))
  assert first["removed_now"] == first["decision"]["order"][:1]
  assert second["removed"] == first["removed_now"] and second["epochs"] == 0
  assert second["macs"] < first["macs"]


def test_swin_layers_gated_off_equal_the_surgery(swin, lacoot_run):
  spec, variables, ds = swin
  method, _ = lacoot_run
  x = next(ds.test.batches(16))["image"]
  off = ("features/1/1", "features/3/0", "features/3/1")   # a whole stage's layers too
  gates = {u: jnp.float32(u not in off) for u in method.units(spec)}
  gated = np.asarray(network.forward(spec, variables, x, node_gates=gates).logits)
  shallow, shallow_vars = lacoot.remove_units(spec, variables, off)
  removed, removed_vars = surgery.remove_blocks(spec, variables, off)
  assert lacoot.find_blocks(shallow) == ("features/1/0",)
  for s, v in ((shallow, shallow_vars), (removed, removed_vars)):
    np.testing.assert_allclose(np.asarray(network.forward(s, v, x).logits), gated,
                               rtol=1e-5, atol=1e-5)
  assert not np.allclose(gated, np.asarray(network.forward(spec, variables, x).logits),
                         atol=1e-3)


# ------------------------------------------------------------------------- TLC


def test_tlc_on_swin_reads_the_fc1_pre_activations(swin):
  spec, variables, ds = swin
  cands = tlc.candidates(spec)
  assert [(c.weight, c.bn, c.site, c.direct) for c in cands] == [
      (s[:-len("gelu")] + "fc1", None, s, True) for s in spec.sites()]
  x = jnp.asarray(next(ds.val.batches(32))["image"])
  betas = tlc.candidate_betas(spec, variables, cands, x)
  fc1 = network.forward(spec, variables, x, capture=tuple(c.weight for c in cands)).captured
  for c in cands:
    z = np.asarray(fc1[c.weight][1], np.float64).reshape(-1, spec.node(c.weight).features)
    np.testing.assert_allclose(betas[c.name], z.mean(0), rtol=1e-5, atol=1e-6)
    std, _ = tlc.empirical_bn(fc1[c.weight][1])
    np.testing.assert_allclose(np.asarray(std), z.std(0, ddof=1), rtol=1e-5, atol=1e-6)
  masks = tlc.keep_masks(betas)
  assert 0 < sum(int((m == 0).sum()) for m in masks.values()) < sum(m.size for m in masks.values())
  labels = jnp.asarray(next(ds.val.batches(32))["label"])
  base_loss, gaps = tlc.rank(spec, variables, cands, x, labels, masks)
  base_naive, naive = tlc.rank_naive(spec, variables, cands, x, labels, masks)
  assert base_loss == pytest.approx(base_naive, abs=1e-5)
  for c in cands:
    assert gaps[c.name] == pytest.approx(naive[c.name], abs=1e-5)
  assert len({round(g, 4) for g in gaps.values()}) > 1


def test_a_tlc_iteration_on_a_tiny_swin_cuts_fc1_channels_and_merges_the_mlp(swin):
  """Rank on the first validation batch, remove by the official rule, export, merge: the
  merged model computes the masked, gated network."""
  spec, variables, ds = swin
  method = tlc.TLC(batch_size=32)
  state = method.init(spec)
  context = base.Context(iteration=0, train_stats=None, eval_stats=None,
                         rng=jax.random.key(0), dataset=ds)
  scores = method.measure(spec, variables, state, context)
  assert list(scores) == list(spec.sites())
  decision = method.decide(scores, state)
  assert decision.remove and set(decision.remove) <= set(spec.sites())
  edited, state = method.apply(spec, variables, state, decision)
  params = edited["params"]
  for site in decision.remove:
    layer = params
    for part in (site[:-len("gelu")] + "fc1").split("/"):
      layer = layer[part]
    cut = scores[site]["cut"]
    assert cut and not np.any(np.asarray(layer["kernel"])[:, cut])
    assert not np.any(np.asarray(layer["bias"])[cut])
  shallow, shallow_vars = method.export(spec, edited, state)
  merged, merged_vars = surgery.collapse(shallow, shallow_vars)
  assert len(merged.sites()) == len(spec.sites()) - len(decision.remove)
  x = next(ds.test.batches(16))["image"]
  want = network.forward(spec, edited, x, gates=state["gates"]).logits
  np.testing.assert_allclose(np.asarray(network.forward(merged, merged_vars, x).logits),
                             np.asarray(want), rtol=1e-4, atol=1e-5)

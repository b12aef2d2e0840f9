"""Method primitives on transformers: GELU site statistics, gates, named intermediates,
the weight layer of a site, EASIER end to end on a tiny Swin, and surgery (MLP merge,
attention kept, removed layers) checked for equivalence; EGP (fc1 pruned, token-row
entropy), LaCoOT (Swin layers as units, the official pairing) and TLC (statistics of the
MLP pre-activations) on a tiny Swin, each against an independent computation; the Swin-T
configs."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth import data, driver, equivalence, network, optim, sites, surgery, zoo
from jaxdepth import spec as S
from jaxdepth.methods import Easier, Egp, LaCoOT, base, egp, lacoot, tlc
from jaxdepth.transformer import WindowAttention


RECIPE = optim.Recipe(epochs=1, batch_size=64, optimizer="adam", lr=3e-3)
LAYERS = ("features/1/0", "features/1/1", "features/3/0", "features/3/1")


def _perturbed(variables, seed=1, scale=0.3):
  """Variables with every leaf moved off its initial value (biases, LayerNorms, tables)."""
  leaves, tree = jax.tree.flatten(variables)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [x + scale * rng.standard_normal(x.shape, dtype=np.float32)
                                   for x in leaves])


@pytest.fixture(scope="module")
def swin():
  spec = zoo.digits_swin()
  variables = _perturbed(network.init(spec, jax.random.key(0)))
  x = np.random.default_rng(2).standard_normal((6, 8, 8, 1), dtype=np.float32)
  return spec, variables, x


@pytest.fixture(scope="module")
def swin_digits(swin):
  spec, variables, _ = swin
  return spec, variables, data.load("digits")


@pytest.fixture(scope="module")
def vit():
  spec = zoo.digits_vit()
  variables = _perturbed(network.init(spec, jax.random.key(0)))
  x = np.random.default_rng(3).standard_normal((6, 8, 8, 1), dtype=np.float32)
  return spec, variables, x


# ------------------------------------------------------------------ primitives


@pytest.mark.parametrize("model", ["swin", "vit"])
def test_gelu_site_statistics_count_the_sign_of_the_gelu_input(model, request):
  spec, variables, x = request.getfixturevalue(model)
  feeders = tuple(sites.weight_layer(spec, s) for s in spec.sites())
  out = network.forward(spec, variables, x, collect_stats=True, capture=feeders)
  assert list(out.site_counts) == list(spec.sites())
  for site, fc1 in zip(spec.sites(), feeders):
    z = np.asarray(out.captured[fc1][1])            # fc1's output is the GELU's input
    z = z.reshape(-1, z.shape[-1])                  # neuron = last axis, over tokens and batch
    want = np.stack([(z > 0).sum(0), (z < 0).sum(0), (z == 0).sum(0)])
    np.testing.assert_array_equal(np.asarray(out.site_counts[site]), want)
    assert want.shape[1] == spec.node(fc1).features


def test_a_gate_at_zero_is_the_baked_identity(swin):
  spec, variables, x = swin
  off = ("features/1/1/mlp/gelu", "features/3/0/mlp/gelu")
  gated = network.forward(spec, variables, x, gates=network.gates_for(spec, off)).logits
  baked = network.forward(S.with_identity(spec, off), variables, x).logits
  np.testing.assert_allclose(gated, baked, rtol=1e-6, atol=1e-6)
  on = network.forward(spec, variables, x, gates=network.gates_for(spec)).logits
  np.testing.assert_allclose(on, network.forward(spec, variables, x).logits, rtol=1e-6)
  assert not np.allclose(gated, on, atol=1e-3)


def test_weight_layer_of_a_site():
  swin_spec = zoo.swin_t()
  assert [sites.weight_layer(swin_spec, s) for s in swin_spec.sites()] == [
      s[:-len("gelu")] + "fc1" for s in swin_spec.sites()]
  resnet = zoo.resnet18()
  assert sites.weight_layer(resnet, "layer2/0/relu1") == "layer2/0/conv1"
  assert sites.weight_layer(resnet, "layer2/0/relu2") == "layer2/0/conv2"   # through bn2
  assert sites.weight_layer(resnet, "relu") == "conv1"
  assert sites.weight_layer(zoo.vgg16_bn(), "classifier/4") == "classifier/3"
  with pytest.raises(KeyError, match="'layer2/0/conv1' is not a live site"):
    sites.weight_layer(resnet, "layer2/0/conv1")
  pooled = S.Spec((4, 4, 2), (S.Conv("c", features=2), S.Pool("p", "max", window=2),
                              S.Act("after_pool")))
  with pytest.raises(ValueError, match="'after_pool'.*not fed by a Conv or Dense"):
    sites.weight_layer(pooled, "after_pool")


def test_a_swin_layer_input_output_and_mlp_branch_by_name(swin):
  spec, variables, x = swin
  names = ("features/0", "features/1/0", "features/1/1", "features/1/0/attention",
           "features/1/0/mlp/drop_path")
  cap = network.forward(spec, variables, x, capture=names).captured
  np.testing.assert_array_equal(cap["features/1/0"][0], cap["features/0"][1])
  np.testing.assert_array_equal(cap["features/1/0"][1], cap["features/1/1"][0])
  # layer output = (attention half's output) + (MLP branch output before the addition)
  np.testing.assert_allclose(cap["features/1/0"][1],
                             cap["features/1/0/attention"][1] + cap["features/1/0/mlp/drop_path"][1],
                             rtol=1e-6, atol=1e-6)
  assert cap["features/1/0"][0].shape == (6, 4, 4, 16)


def test_easier_end_to_end_on_a_tiny_swin(tmp_path):
  ds, spec = data.load("digits"), zoo.digits_swin(width=8)
  recipe = optim.Recipe(epochs=1, batch_size=64, optimizer="adam", lr=3e-3)
  result = driver.run(Easier(), spec, ds, recipe, tmp_path, iterations=2, progress=False,
                      eval_batch_size=512, latency_batches=())
  entries = result.report["iterations"]
  assert [e["units_total"] for e in entries] == [4, 4]
  assert list(entries[0]["entropies"]) == list(spec.sites())
  assert all(0.0 <= h <= 1.0 for h in entries[0]["entropies"].values())
  lowest = min(entries[0]["entropies"], key=entries[0]["entropies"].get)
  assert entries[0]["removed_now"] == [lowest] and entries[1]["removed"] == [lowest]
  assert lowest not in entries[1]["entropies"]
  merged = result.report["chosen"]["merged"]
  assert merged["max_rel_diff"] < 1e-5 and merged["top1_agreement"] == 1.0


# --------------------------------------------------------------------- surgery


def _mlp_branch(spec, layer):
  return spec.node(f"{layer}/mlp").branch


@pytest.mark.parametrize("model", ["swin", "vit"])
def test_a_linearized_mlp_becomes_one_dense_and_keeps_its_attention(model, request):
  spec, variables, x = request.getfixturevalue(model)
  site = spec.sites()[1]
  layer = site[:-len("/mlp/gelu")]
  flat = S.with_identity(spec, [site])
  shallow, shallow_vars = surgery.collapse(flat, variables)
  branch = _mlp_branch(shallow, layer)
  width = spec.shapes()[layer][1][-1]
  assert [type(n).__name__ for n in branch] == ["LayerNorm", "Dense"]
  assert branch[1] == S.Dense("fc1", features=width)
  # fc1∘fc2, computed independently in float64
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  for part in layer.split("/"):
    p = p[part]
  w = p["mlp"]["fc1"]["kernel"] @ p["mlp"]["fc2"]["kernel"]
  b = p["mlp"]["fc1"]["bias"] @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]
  q = shallow_vars["params"]
  for part in layer.split("/"):
    q = q[part]
  np.testing.assert_allclose(q["mlp"]["fc1"]["kernel"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(q["mlp"]["fc1"]["bias"], b, rtol=1e-5, atol=1e-6)
  # the attention half and the other layers' MLPs are untouched
  assert shallow.node(f"{layer}/attention") == dataclasses.replace(
      spec.node(f"{layer}/attention"),
      branch=tuple(n for n in spec.node(f"{layer}/attention").branch
                   if not isinstance(n, S.Dropout)))
  assert len(shallow.sites()) == len(spec.sites()) - 1
  report = equivalence.compare(flat, variables, shallow, shallow_vars, x)
  assert report.max_rel < 1e-5 and report.top1_agreement == 1.0


def test_every_mlp_linearized_keeps_every_attention(swin):
  spec, variables, x = swin
  flat = S.with_identity(spec, spec.sites())
  shallow, shallow_vars = surgery.collapse(flat, variables)
  attn = [p for p, n in shallow.walk() if isinstance(n, WindowAttention)]
  assert attn == [p for p, n in spec.walk() if isinstance(n, WindowAttention)]
  assert surgery.summary(flat, shallow)["after"]["macs"] < surgery.summary(
      flat, shallow)["before"]["macs"]
  report = equivalence.compare(flat, variables, shallow, shallow_vars, x)
  assert report.max_rel < 1e-5


def _zero_residual_outputs(variables, layer):
  """The same network with ``layer``'s two residual branches outputting zero (so the
  layer is the identity): its attention ``proj`` and MLP ``fc2`` set to 0."""
  def edit(path, leaf):
    names = "/".join(str(getattr(k, "key", k)) for k in path)
    hit = names.startswith(f"params/{layer}/") and ("/proj/" in names or "/fc2/" in names
                                                     or "/out_proj/" in names)
    return jnp.zeros_like(leaf) if hit else leaf
  return jax.tree_util.tree_map_with_path(edit, variables)


@pytest.mark.parametrize("model,layer", [("swin", "features/1/1"), ("swin", "features/3/0"),
                                         ("vit", "encoder/layers/encoder_layer_1")])
def test_a_removed_transformer_layer_is_the_identity(model, layer, request):
  spec, variables, x = request.getfixturevalue(model)
  log = []
  removed, removed_vars = surgery.remove_blocks(spec, variables, [layer], log=log)
  assert layer not in [p for p, _ in removed.walk()]
  assert log[0].kind == "remove_block" and not log[0].exact
  identity_vars = _zero_residual_outputs(variables, layer)
  assert not np.allclose(network.forward(spec, identity_vars, x).logits,
                         network.forward(spec, variables, x).logits, atol=1e-3)
  report = equivalence.compare(spec, identity_vars, removed, removed_vars, x)
  assert report.max_rel < 1e-5
  # a layer that changes the shape (patch merging) is not a residual block
  if model == "swin":
    with pytest.raises(ValueError, match="'features/2'.*not a residual block"):
      surgery.remove_blocks(spec, variables, ["features/2"])


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


def test_the_row_entropy_is_egps_estimator_over_token_rows(swin_digits):
  """The official Swin-T script's neurons: per batch, a row's ON fraction over examples,
  width and channels; the mean h2 over rows that are not constant; the mean over batches."""
  spec, variables, ds = swin_digits
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


def test_an_egp_round_with_row_entropy_on_a_tiny_swin_prunes_fc1_only(swin_digits):
  """Measure (row entropy over the training split), split the budget, prune, export."""
  spec, variables, ds = swin_digits
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


def test_the_official_swin_penalty_compares_the_layer_input_with_the_mlp_branch(swin_digits):
  """Y is the MLP's output before its addition: the layer's output minus its attention
  half's output (no stochastic depth on the tiny Swin)."""
  spec, variables, ds = swin_digits
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
def lacoot_run(swin_digits, tmp_path_factory):
  spec, variables, ds = swin_digits
  method = LaCoOT(weight=0.1, n_projections=8, pairing="official", order="zscore",
                  score="max_sliced")
  workdir = tmp_path_factory.mktemp("lacoot_swin")
  return method, driver.run(method, spec, ds, RECIPE, workdir, variables=variables, iterations=2,
                            progress=False, eval_batch_size=144, tolerance=100.0,
                            latency_batches=()), workdir


def test_lacoot_trains_a_tiny_swin_and_removes_a_layer_by_the_official_rule(lacoot_run):
  _, result, _ = lacoot_run
  first, second = result.report["iterations"]
  assert first["units_total"] == 4 and list(first["distances"]) == list(LAYERS)
  assert first["decision"]["order"] == list(lacoot.removal_order(first["distances"], "zscore"))
  assert first["removed_now"] == first["decision"]["order"][:1]
  assert second["removed"] == first["removed_now"] and second["epochs"] == 0
  assert second["macs"] < first["macs"]


def test_the_commands_lacoot_json_holds_the_distances_the_official_pairing_ranked(
    swin_digits, lacoot_run):
  from jaxdepth.train import lacoot as lacoot_cli   # pylint: disable=import-outside-toplevel
  spec, _, ds = swin_digits
  method, result, workdir = lacoot_run
  out = lacoot_cli.extras(result, method, spec, ds, workdir, seed=0, eval_batch_size=144,
                          latency_batch=None)
  ranked = result.report["iterations"][0]["distances"]
  assert list(out["distances"]) == list(ranked)
  for u, d in ranked.items():   # input of the layer against its MLP branch, as the run measured
    assert out["distances"][u]["max_sliced"] == pytest.approx(d, rel=1e-6)


def test_swin_layers_gated_off_equal_the_surgery(swin_digits, lacoot_run):
  spec, variables, ds = swin_digits
  method, _, _ = lacoot_run
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


def test_tlc_on_swin_reads_the_fc1_pre_activations(swin_digits):
  spec, variables, ds = swin_digits
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


def test_a_tlc_iteration_on_a_tiny_swin_cuts_fc1_channels_and_merges_the_mlp(swin_digits):
  """Rank on the first validation batch, remove by the official rule, export, merge: the
  merged model computes the masked, gated network."""
  spec, variables, ds = swin_digits
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


# --------------------------------------------------------------------- configs


def test_the_swin_t_configs_carry_the_papers_recipe():
  # pylint: disable-next=import-outside-toplevel
  from jaxdepth.train import easier, egp as egp_cmd, lacoot as lacoot_cmd, tlc as tlc_cmd
  spec = zoo.swin_t()
  loaded = {"easier": easier.load_config("easier_cifar10_swin_t"),
            "egp": egp_cmd.load_config("egp_cifar10_swin_t"),
            "nepenthe": egp_cmd.load_config("nepenthe_cifar10_swin_t"),
            "lacoot": lacoot_cmd.load_config("lacoot_cifar10_swin_t"),
            "tlc": tlc_cmd.load_config("tlc_cifar10_swin_t")}
  for cfg in loaded.values():
    assert (cfg["model"], cfg["dataset"], cfg["epochs"], cfg["batch_size"], cfg["lr"],
            cfg["momentum"], cfg["weight_decay"], tuple(cfg["milestones"])) == (
                "swin_t", "cifar10", 160, 128, 0.001, 0.9, 1e-4, (80, 120))
    assert (cfg["pretrained"], cfg["pretrained_new_head"]) == ("swin_t_imagenet.safetensors",
                                                               True)
  assert loaded["easier"]["estimator"] == "easier"
  method = egp_cmd.make_method("egp", loaded["egp"])
  assert (method.estimator, method.neurons, loaded["egp"]["seed"]) == ("egp", "channels", 43)
  assert list(method.layer_map(spec).values()) == [s[:-len("gelu")] + "fc1"
                                                    for s in spec.sites()]
  assert egp_cmd.make_method("nepenthe", loaded["nepenthe"]).estimator == "dataset"
  rows = dict(loaded["egp"], neurons="rows")
  assert egp_cmd.make_method("egp", rows).units(spec) == spec.sites()
  lac = lacoot_cmd.method_of(loaded["lacoot"])
  assert (lac.weight, lac.order, lac.score) == (0.1, "zscore", "max_sliced")
  assert lac.units(spec) == lacoot.find_blocks(spec) and len(lac.units(spec)) == 12
  tiny = lacoot_cmd.load_config("lacoot_tinyimagenet_swin_t")
  assert (tiny["weight"], tiny["image_size"], tiny["lr"], tiny["pairing"]) == (
      1.0, 64, 0.001, "official")
  assert tiny["dataset"].startswith("folder:")
  assert (loaded["tlc"]["rule"], loaded["tlc"]["rank_batch_size"]) == ("first_harmful", 128)
  assert len(tlc.candidates(spec)) == 12
  assert lacoot_cmd.default_config("swin_t", "cifar10") == "lacoot_cifar10_swin_t"

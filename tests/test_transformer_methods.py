"""Method primitives on transformers: GELU site statistics, gates, named intermediates,
the weight layer of a site, EASIER end to end on a tiny Swin, and surgery (MLP merge,
attention kept, removed layers) checked for equivalence."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth import data, driver, equivalence, network, optim, sites, surgery, zoo
from jaxdepth import spec as S
from jaxdepth.methods import Easier
from jaxdepth.transformer import WindowAttention


def _perturbed(variables, seed=1, scale=0.3):
  """Variables with every leaf moved off its initial value (biases, LayerNorms, tables)."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def swin():
  spec = zoo.digits_swin()
  variables = _perturbed(network.init(spec, jax.random.key(0)))
  x = jax.random.normal(jax.random.key(2), (6, 8, 8, 1))
  return spec, variables, x


@pytest.fixture(scope="module")
def vit():
  spec = zoo.digits_vit()
  variables = _perturbed(network.init(spec, jax.random.key(0)))
  x = jax.random.normal(jax.random.key(3), (6, 8, 8, 1))
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
                      eval_batch_size=512)
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

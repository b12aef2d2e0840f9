"""TLC, EASIER and LaCoOT on text encoders: the ranking on a padded token batch against the
naive reference, empirical means over real tokens, encoder slices with token inputs,
LaCoOT's distances blind to padding, and the methods end to end on the tiny encoder with mock
GLUE (the TLC one through the command line, from a tiny Hugging Face folder)."""
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdepth import data, driver, network, optim, zoo
from jaxdepth import spec as S
from jaxdepth.methods import Easier, LaCoOT, lacoot, tlc
from jaxdepth.train import config as config_lib
from jaxdepth.train import tlc as tlc_cli

import test_huggingface as hf_test
from test_glue import bert_tokenizer, fake_glue_source
from test_text import model, token_batch


@pytest.fixture(scope="module")
def ranked():
  """The tiny RoBERTa-style encoder ranked on a padded batch, both ways."""
  spec, variables = model("roberta")
  x = {k: jax.numpy.asarray(v) for k, v in token_batch("roberta").items()}
  labels = jax.numpy.asarray([0, 1, 1, 0])
  cands = tlc.candidates(spec)
  betas = tlc.candidate_betas(spec, variables, cands, x)
  masks = tlc.keep_masks(betas)
  return spec, variables, x, labels, cands, betas, masks


def test_the_text_candidates_are_intermediate_with_its_gelu(ranked):
  spec, _, _, _, cands, _, _ = ranked
  assert [(c.weight, c.bn, c.site) for c in cands] == [
      (f"encoder/layer/{i}/mlp/intermediate", None, f"encoder/layer/{i}/mlp/gelu")
      for i in range(2)]


def test_empirical_means_count_real_tokens_only(ranked):
  spec, variables, x, _, cands, betas, _ = ranked
  z = np.asarray(network.forward(spec, variables, x, capture=(cands[1].site,))
                 .captured[cands[1].site][0])
  real = np.asarray(x["attention_mask"]) == 1
  np.testing.assert_allclose(betas[cands[1].name], z[real].mean(0), rtol=1e-5, atol=1e-6)
  assert np.abs(z.reshape(-1, z.shape[-1]).mean(0) - z[real].mean(0)).max() > 1e-3


def test_forked_ranking_equals_the_naive_one_on_a_padded_batch(ranked):
  """The forked ranking runs the encoder piece by piece, the attention mask and positions
  travelling beside the hidden states; the naive one runs the whole network per edit."""
  spec, variables, x, labels, cands, _, masks = ranked
  base_fast, fast = tlc.rank(spec, variables, cands, x, labels, masks)
  base_slow, slow = tlc.rank_naive(spec, variables, cands, x, labels, masks)
  assert base_fast == pytest.approx(base_slow, abs=1e-5)
  for name in slow:
    assert fast[name] == pytest.approx(slow[name], abs=1e-5)
  joint = tlc.joint_gap(spec, variables, cands, [c.name for c in cands], x, labels, masks)
  assert np.isfinite(joint) and abs(joint - fast[cands[0].name]) > 1e-6


def test_an_encoder_slice_reads_token_inputs_beside_hidden_states():
  spec, variables = model("roberta")
  x = token_batch("roberta")
  embeddings = S.Spec(spec.input_shape, spec.layers[:1], name="embeddings")
  rest = S.Spec(embeddings.output_shape, spec.layers[1:], name="rest")
  h = network.forward(embeddings, variables, x).logits
  whole = np.asarray(network.forward(spec, variables, x).logits)
  sliced = network.forward(rest, variables, h, token_inputs=x).logits
  np.testing.assert_allclose(np.asarray(sliced), whole, atol=1e-5)
  unmasked = np.asarray(network.forward(rest, variables, h).logits)
  assert np.abs(unmasked - whole).max() > 1e-4
  with pytest.raises(ValueError, match="token_inputs must all be"):
    network.forward(rest, variables, h, token_inputs={"attention_mask": x["attention_mask"][:2]})
  with pytest.raises(ValueError, match="pass its attention_mask and token_type_ids in the"):
    network.forward(spec, variables, x, token_inputs=x)


def test_lacoot_compares_real_tokens_only():
  """Padding ids change the padding positions' hidden states, not the logits: neither the
  training penalty nor the measured distances may see them."""
  spec, variables = model("bert")
  x = token_batch("bert")
  real = x["attention_mask"] == 1
  assert not real.all()
  repadded = dict(x, input_ids=np.where(real, x["input_ids"], 7))
  units = lacoot.find_blocks(spec)
  assert units == ("encoder/layer/0", "encoder/layer/1")
  reg = lacoot.regularizer(units, 1.0, 8)
  key = jax.random.key(0)
  values, captured = [], []
  for inputs in (x, repadded):
    out = network.forward(spec, variables, inputs, capture=reg.capture)
    captured.append(out.captured["encoder/layer/0"][1])
    values.append(float(reg.fn(out.captured, jax.numpy.asarray(real), key)))
  # the padding positions' states differ, the penalty does not
  assert not np.allclose(captured[0], captured[1])
  assert values[0] == pytest.approx(values[1], rel=1e-6)
  # against the same distance computed by hand on the zeroed states
  out = network.forward(spec, variables, x, capture=reg.capture)
  keep = real[..., None].astype(np.float32)
  by_hand = np.mean([float(lacoot.max_sliced_wasserstein(
      out.captured[u][0] * keep, out.captured[u][1] * keep,
      rng=jax.random.fold_in(key, k), n_projections=8)) for k, u in enumerate(units)])
  assert values[0] == pytest.approx(by_hand, rel=1e-5)


# ----------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  bert_tokenizer().save(str(path))
  return path


def test_easier_end_to_end_on_mock_sst2(tmp_path, tokenizer_path):
  with tfds.testing.mock_data(as_data_source_fn=fake_glue_source):
    ds = data.load("glue/sst2", tokenizer=tokenizer_path, max_length=16)
  spec = zoo.tiny_encoder(vocab_size=32, input_shape=ds.input_shape)
  recipe = optim.Recipe(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3)
  result = driver.run(Easier(), spec, ds, recipe, tmp_path / "easier", iterations=2,
                      progress=False, merge=False, checkpoint_epochs=False)
  entries = result.report["iterations"]
  assert [e["units_removed"] for e in entries] == [0, 1]
  # the site removed had the lowest entropy of the first iteration's statistics
  first = entries[0]["entropies"]
  assert entries[0]["removed_now"] == entries[1]["removed"] == [min(first, key=first.get)]
  assert set(first) == set(spec.sites())


def test_fit_command_refuses_a_tokenizer_past_the_embedding_before_anything_is_written(
    tmp_path, tokenizer_path, capsys):
  # python -m jaxdepth fit printed the library's ValueError as a traceback, after writing run.json.
  from jaxdepth.train import __main__ as cli   # pylint: disable=import-outside-toplevel
  with tfds.testing.mock_data(as_data_source_fn=fake_glue_source):
    rc = cli.main(["fit", "--dataset", "glue/sst2", "--model", "tiny_encoder", "--no-progress",
                   f"--config.tokenizer={tokenizer_path}", "--config.max_length=16",
                   "--config.model_kwargs={'vocab_size': 12}", "--workdir", str(tmp_path / "w")])
  assert rc == 2
  assert ("error: --model 'tiny_encoder' with this tokenizer: the tokenizer has 25 tokens, but "
          "spec 'tiny_encoder' embeds 12") in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_lacoot_end_to_end_on_mock_sst2(tmp_path, tokenizer_path):
  with tfds.testing.mock_data(as_data_source_fn=fake_glue_source):
    ds = data.load("glue/sst2", tokenizer=tokenizer_path, max_length=16)
  spec = zoo.tiny_encoder(vocab_size=32, input_shape=ds.input_shape)
  recipe = optim.Recipe(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3)
  result = driver.run(LaCoOT(n_projections=4), spec, ds, recipe, tmp_path / "lacoot",
                      progress=False, merge=False, checkpoint_epochs=False,
                      eval_batch_size=4)
  entries = result.report["iterations"]
  assert [e["units_removed"] for e in entries] == [0, 1, 2]
  distances = entries[0]["distances"]
  assert set(distances) == {"encoder/layer/0", "encoder/layer/1"}
  assert all(np.isfinite(d) and d > 0 for d in distances.values())
  # ascending distance: the closer layer goes first
  assert entries[0]["removed_now"] == [min(distances, key=distances.get)]


def test_tlc_end_to_end_from_a_hugging_face_folder_through_the_command(tmp_path, capsys):
  """``python -m jaxdepth tlc --config tlc_sst2_bert --pretrained FOLDER`` on mock SST-2: the
  folder gives the weights (a fresh classifier) and the tokenizer."""
  config = hf_test.hf_config("bert", vocab_size=64, max_position_embeddings=64)
  tensors = hf_test.random_state_dict(config, prefix="bert.", head="pooled", seed=4)
  folder = hf_test.write_folder(tmp_path / "bert-tiny", config, tensors)
  bert_tokenizer().save(str(folder / "tokenizer.json"))
  work = tmp_path / "run"
  with tfds.testing.mock_data(as_data_source_fn=fake_glue_source):
    rc = tlc_cli.main(["--config", "tlc_sst2_bert", "--model", "tiny_encoder", "--pretrained",
                       str(folder), "--workdir", str(work), "--config.max_length=16",
                       "--config.epochs=1", "--config.batch_size=4",
                       "--config.eval_batch_size=4", "--config.rank_batch_size=2",
                       "--config.checkpoint_epochs=false", "--iterations", "2",
                       "--no-progress", "--no-latency"])
  assert rc == 0, capsys.readouterr().err
  report = json.loads((work / "report.json").read_text())
  entries = report["iterations"]
  assert [e["units_removed"] for e in entries] == [0, 1]
  assert set(entries[0]["loss_gaps"]) == {"encoder/layer/0/mlp/gelu", "encoder/layer/1/mlp/gelu"}
  assert report["chosen"]["merged"]["max_abs_diff"] < 1e-4
  from jaxdepth import checkpoint
  _, chosen = checkpoint.load_model(work / "chosen")
  table = np.asarray(chosen["params"]["embeddings"]["word_embeddings"]["embedding"])
  # ids 25.. are not in the tokenizer's vocabulary: never seen, never updated, imported as is
  np.testing.assert_array_equal(table[25:], tensors["bert.embeddings.word_embeddings.weight"][25:])


def test_text_configs_load_with_the_official_recipe():
  names = [f"tlc_{task}_{family}" for task in ("sst2", "rte", "qnli")
           for family in ("bert", "roberta")]
  assert set(names) <= set(config_lib.available(prefix="tlc_"))
  for name in names:
    cfg = config_lib.to_dict(config_lib.load(name, tlc_cli.METHOD_DEFAULTS))
    assert config_lib.check(cfg) + tlc_cli.check(cfg) == []
    recipe = config_lib.recipe_of(cfg)
    assert (recipe.optimizer, recipe.lr, recipe.epochs, recipe.batch_size, recipe.milestones,
            recipe.weight_decay) == ("adamw_hf", 2e-5, 3, 32, (), 0.0)
    assert (cfg["max_length"], cfg["rank_batch_size"], cfg["seed"]) == (128, 32, 43)
    assert cfg["model"] == name.split("_")[-1] + "_base"
    assert cfg["dataset"] == "glue/" + name.split("_")[1]
    doc = (config_lib.CONFIG_DIR / f"{name}.py").read_text()
    assert "Run:" in doc and "Reaches" in doc


def test_roberta_with_a_tokenizer_padding_with_another_id_is_refused(tmp_path, tokenizer_path,
                                                                      capsys):
  with tfds.testing.mock_data(as_data_source_fn=fake_glue_source):
    rc = tlc_cli.main(["--config", "tlc_sst2_roberta", "--model", "tiny_encoder",
                       "--config.model_kwargs.family=roberta", "--workdir", str(tmp_path / "w"),
                       f"--config.tokenizer={tokenizer_path}", "--config.max_length=16",
                       "--config.batch_size=4", "--config.rank_batch_size=2"])
  assert rc == 2
  assert "numbers positions from padding id 1" in capsys.readouterr().err

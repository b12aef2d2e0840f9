"""Hugging Face BERT / RoBERTa import from a local folder: tiny random checkpoints written
here with Hugging Face's key names, against the independent numpy forward pass."""
import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxdepth import costs, network
from jaxdepth.weights import StateDictError
from jaxdepth.weights import huggingface as hf

import _encoder_reference as ref
import _scripts

LENGTH = 12


def hf_config(family, **extra):
  roberta = family == "roberta"
  config = {"model_type": family, "architectures": ["X"], "hidden_act": "gelu",
            "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 32,
            "max_position_embeddings": 40 + (2 if roberta else 0),
            "type_vocab_size": 1 if roberta else 2,
            "layer_norm_eps": 1e-5 if roberta else 1e-12, "pad_token_id": 1 if roberta else 0,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "position_embedding_type": "absolute"}
  config.update(extra)
  return config


def random_state_dict(config, *, prefix, head, num_labels=2, seed=0):
  """A state dict with Hugging Face's keys and PyTorch shapes (Linear weight (out, in))."""
  rs = np.random.RandomState(seed)
  h, i = config["hidden_size"], config["intermediate_size"]

  def t(*shape, scale=0.3, offset=0.0):
    return (offset + scale * rs.standard_normal(shape)).astype(np.float32)

  out = {}

  def linear(name, n_out, n_in, pre=prefix):
    out[f"{pre}{name}.weight"], out[f"{pre}{name}.bias"] = t(n_out, n_in), t(n_out, scale=0.1)

  def norm(name):
    out[f"{prefix}{name}.weight"] = t(h, scale=0.1, offset=1.0)
    out[f"{prefix}{name}.bias"] = t(h, scale=0.1)

  out[f"{prefix}embeddings.word_embeddings.weight"] = t(config["vocab_size"], h)
  out[f"{prefix}embeddings.position_embeddings.weight"] = t(config["max_position_embeddings"], h)
  out[f"{prefix}embeddings.token_type_embeddings.weight"] = t(config["type_vocab_size"], h)
  norm("embeddings.LayerNorm")
  for layer in range(config["num_hidden_layers"]):
    p = f"encoder.layer.{layer}."
    for name in ("query", "key", "value"):
      linear(p + f"attention.self.{name}", h, h)
    linear(p + "attention.output.dense", h, h)
    norm(p + "attention.output.LayerNorm")
    linear(p + "intermediate.dense", i, h)
    linear(p + "output.dense", h, i)
    norm(p + "output.LayerNorm")
  if head in ("pooled", "bert"):
    linear("pooler.dense", h, h)
  if head == "bert":
    linear("classifier", num_labels, h, pre="")
  elif head == "roberta":
    linear("classifier.dense", h, h, pre="")
    linear("classifier.out_proj", num_labels, h, pre="")
  return out


def write_folder(path, config, tensors):
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(config))
  save_file(tensors, str(path / "model.safetensors"))
  return path


def unprefixed(tensors, prefix):
  return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}


def token_inputs(config, seed=0):
  rs = np.random.RandomState(seed)
  pad = config["pad_token_id"]
  ids = rs.randint(3, config["vocab_size"], (3, LENGTH)).astype(np.int32)
  mask = np.ones_like(ids)
  for b, n in enumerate([LENGTH, 7, 4]):
    ids[b, n:], mask[b, n:] = pad, 0
  types = np.zeros_like(ids)
  if config["type_vocab_size"] > 1:
    types[:, 3:] = 1
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def reference_config(config):
  return dict(config, family=config["model_type"])


@pytest.mark.parametrize("family, head, labels", [("bert", "bert", 2), ("roberta", "roberta", 3)])
def test_sequence_classifier_logits_match_the_numpy_reference(tmp_path, family, head, labels):
  config = hf_config(family, id2label={str(k): f"L{k}" for k in range(labels)})
  tensors = random_state_dict(config, prefix=f"{family}.", head=head, num_labels=labels)
  tensors[f"{family}.embeddings.position_ids"] = np.arange(
      config["max_position_embeddings"], dtype=np.int64)[None]          # an old buffer
  spec, variables = hf.from_pretrained(write_folder(tmp_path, config, tensors),
                                       max_length=LENGTH)
  assert spec.output_shape == (labels,) and len(spec.sites()) == 2
  x = token_inputs(config)
  got = np.asarray(network.forward(spec, variables, x).logits)
  want = ref.encoder_forward(unprefixed(tensors, f"{family}."), reference_config(config),
                             x["input_ids"], x["attention_mask"], x["token_type_ids"])
  np.testing.assert_allclose(got, want, atol=1e-4)
  imported = sum(v.size for k, v in tensors.items() if not k.endswith("position_ids"))
  assert costs.count_params(spec) == imported


def test_bare_model_without_prefix_and_with_gamma_beta_names(tmp_path):
  """A ``BertModel`` checkpoint (no ``bert.`` prefix) with old LayerNorm names, pooled."""
  config = hf_config("bert")
  tensors = random_state_dict(config, prefix="", head="pooled", seed=1)
  old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                  "LayerNorm.beta"): v
         for k, v in tensors.items()}
  spec, variables = hf.from_pretrained(write_folder(tmp_path, config, old), max_length=LENGTH,
                                       head="pooled")
  x = token_inputs(config, seed=2)
  got = np.asarray(network.forward(spec, variables, x).logits)
  want = ref.encoder_forward(tensors, reference_config(config), x["input_ids"],
                             x["attention_mask"], x["token_type_ids"], head="pooled")
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_pretraining_checkpoint_needs_new_head_and_keeps_the_fresh_one(tmp_path):
  config = hf_config("bert")
  tensors = random_state_dict(config, prefix="bert.", head="pooled", seed=3)
  tensors["cls.predictions.bias"] = np.zeros(50, np.float32)              # MLM head, unused
  tensors["cls.predictions.transform.dense.weight"] = np.zeros((16, 16), np.float32)
  tensors["cls.seq_relationship.weight"] = np.zeros((2, 16), np.float32)  # NSP head, unused
  folder = write_folder(tmp_path, config, tensors)
  with pytest.raises(StateDictError, match=r"no tensor 'classifier.weight'.*new_head=True"):
    hf.from_pretrained(folder, max_length=LENGTH)
  spec, variables = hf.from_pretrained(folder, max_length=LENGTH, new_head=True, seed=5)
  fresh = network.init(spec, jax.random.key(5))
  np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"],
                                fresh["params"]["classifier"]["kernel"])
  np.testing.assert_array_equal(
      variables["params"]["encoder"]["layer"]["1"]["mlp"]["output"]["kernel"],
      tensors["bert.encoder.layer.1.output.dense.weight"].T)
  np.testing.assert_array_equal(
      variables["params"]["encoder"]["layer"]["0"]["attention"]["self"]["qkv"]["bias"],
      np.concatenate([tensors[f"bert.encoder.layer.0.attention.self.{n}.bias"]
                      for n in ("query", "key", "value")]))


def test_masked_lm_checkpoint_without_pooler_starts_pooler_and_classifier_fresh(tmp_path):
  """``BertForMaskedLM`` is saved without a pooler: with new_head=True the pooler is fresh
  too (as Hugging Face fine-tunes such a checkpoint); without, the error says so."""
  config = hf_config("bert")
  tensors = random_state_dict(config, prefix="bert.", head="none", seed=3)
  tensors["cls.predictions.bias"] = np.zeros(50, np.float32)              # MLM head, unused
  assert not any("pooler" in k for k in tensors)
  folder = write_folder(tmp_path, config, tensors)
  with pytest.raises(StateDictError, match=r"has no pooler \(bert.pooler.\*\) for "
                                           r"params/pooler/dense/kernel: Hugging Face saves "
                                           r"masked-LM checkpoints without one\. Pass "
                                           r"new_head=True .* to start the pooler and the "
                                           r"classifier"):
    hf.from_pretrained(folder, max_length=LENGTH)
  spec, variables = hf.from_pretrained(folder, max_length=LENGTH, new_head=True, seed=5)
  fresh = network.init(spec, jax.random.key(5))["params"]
  for part in ("pooler", "classifier"):
    jax.tree.map(np.testing.assert_array_equal, variables["params"][part], fresh[part])
  np.testing.assert_array_equal(
      variables["params"]["encoder"]["layer"]["1"]["mlp"]["output"]["kernel"],
      tensors["bert.encoder.layer.1.output.dense.weight"].T)
  # a file that has a pooler still loads it, whatever new_head says
  tensors = random_state_dict(config, prefix="bert.", head="pooled", seed=3)
  _, variables = hf.from_pretrained(write_folder(tmp_path / "pooled", config, tensors),
                                    max_length=LENGTH, new_head=True)
  np.testing.assert_array_equal(variables["params"]["pooler"]["dense"]["kernel"],
                                tensors["bert.pooler.dense.weight"].T)


def test_fine_tuned_bert_classifier_loads_as_the_pooled_encoder(tmp_path):
  """A ``BertForSequenceClassification`` file read as ``BertModel`` (head="pooled"): its
  classifier is skipped, as Hugging Face skips it; a classifier tensor of another name is not."""
  config = hf_config("bert")
  tensors = random_state_dict(config, prefix="bert.", head="bert", seed=4)
  for new_head in (False, True):
    spec, variables = hf.from_pretrained(write_folder(tmp_path, config, tensors),
                                         max_length=LENGTH, head="pooled", new_head=new_head)
    x = token_inputs(config, seed=1)
    got = np.asarray(network.forward(spec, variables, x).logits)
    want = ref.encoder_forward(unprefixed(tensors, "bert."), reference_config(config),
                               x["input_ids"], x["attention_mask"], x["token_type_ids"],
                               head="pooled")
    np.testing.assert_allclose(got, want, atol=1e-4)
  for foreign in ("classifier.out_proj.weight", "classifier.extra.weight"):
    folder = write_folder(tmp_path / foreign, config,
                          dict(tensors, **{foreign: np.zeros((2, 16), np.float32)}))
    with pytest.raises(StateDictError, match=rf"holds tensor '{foreign}' \(2, 16\), which this "
                                             r"architecture does not have"):
      hf.from_pretrained(folder, max_length=LENGTH, head="pooled")


def test_roberta_classifier_has_no_pooler_for_the_pooled_encoder(tmp_path):
  """``RobertaForSequenceClassification`` is saved without a pooler: head="pooled" says so and
  what to do; with new_head=True the pooler starts fresh and the classifier is skipped."""
  config = hf_config("roberta")
  tensors = random_state_dict(config, prefix="roberta.", head="roberta", seed=4)
  folder = write_folder(tmp_path, config, tensors)
  with pytest.raises(StateDictError) as error:
    hf.from_pretrained(folder, max_length=LENGTH, head="pooled")
  message = str(error.value)
  assert "masked-LM checkpoint is saved" not in message
  for words in ("has no pooler (roberta.pooler.*) for params/pooler/dense/kernel",
                "masked-LM checkpoints and RoBERTa's sequence classifiers without one",
                "new_head=True (on the command line --config.pretrained_new_head=true) to start "
                "the pooler freshly initialised", 'classifier head (head="classifier")'):
    assert words in message
  spec, variables = hf.from_pretrained(folder, max_length=LENGTH, head="pooled", new_head=True,
                                       seed=5)
  fresh = network.init(spec, jax.random.key(5))["params"]["pooler"]["dense"]
  jax.tree.map(np.testing.assert_array_equal, variables["params"]["pooler"]["dense"], fresh)
  with_pooler = dict(unprefixed(tensors, "roberta."),
                     **{"pooler.dense.weight": np.asarray(fresh["kernel"]).T,
                        "pooler.dense.bias": np.asarray(fresh["bias"])})
  x = token_inputs(config, seed=1)
  got = np.asarray(network.forward(spec, variables, x).logits)
  want = ref.encoder_forward(with_pooler, reference_config(config), x["input_ids"],
                             x["attention_mask"], x["token_type_ids"], head="pooled")
  np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("head, classes, message", [
    ("pooled", None, r"has no tensor 'classifier.weight' \(for params/classifier/kernel\): the "
                     r"file has no classifier, as a pre-trained checkpoint has none\. To "
                     r"fine-tune its encoder, pass new_head=True \(on the command line "
                     r"--config.pretrained_new_head=true\)"),
    ("bert", 3, r"expects \(16, 3\): .*number of classes\. The classifier is what does not "
                r"fit: .* pass new_head=True \(on the command line "
                r"--config.pretrained_new_head=true\)"),
])
def test_classifier_refusal_names_new_head_in_both_spellings(tmp_path, head, classes, message):
  """A file without a classifier, or with one of another size: the library's new_head=True and
  the command line's --config.pretrained_new_head=true, what is missing said first."""
  config = hf_config("bert")
  tensors = random_state_dict(config, prefix="bert.", head=head)
  folder = write_folder(tmp_path, config, tensors)
  with pytest.raises(StateDictError, match=message) as error:
    hf.from_pretrained(folder, max_length=LENGTH, num_classes=classes)
  assert "not a checkpoint of this architecture" not in str(error.value)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("bert.encoder.layer.1.output.dense.bias"),
     r"has no tensor 'bert.encoder.layer.1.output.dense.bias' \(for "
     r"params/encoder/layer/1/mlp/output/bias\)"),
    (lambda t: t.update({"bert.encoder.layer.2.output.dense.weight": np.zeros((16, 32),
                                                                              np.float32)}),
     r"holds tensor 'bert.encoder.layer.2.output.dense.weight' \(16, 32\), which this "
     r"architecture does not have"),
    (lambda t: t.update({"bert.encoder.layer.0.intermediate.dense.weight": np.zeros(
        (30, 16), np.float32)}),
     r"'bert.encoder.layer.0.intermediate.dense.weight' \(30, 16\) becomes \(16, 30\) for "
     r"params/encoder/layer/0/mlp/intermediate/kernel, which expects \(16, 32\)"),
])
def test_first_missing_unexpected_or_misshaped_tensor_is_named(tmp_path, edit, message):
  config = hf_config("bert")
  tensors = random_state_dict(config, prefix="bert.", head="bert")
  edit(tensors)
  with pytest.raises(StateDictError, match=message):
    hf.from_pretrained(write_folder(tmp_path, config, tensors), max_length=LENGTH)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new' is not supported"),
    ({"position_embedding_type": "relative_key"}, "'relative_key' is not supported"),
    ({"num_attention_heads": 3}, "width 16 is not divisible by heads=3"),
    ({"hidden_size": None}, r"lacks \['hidden_size'\]"),
])
def test_unsupported_configs_are_refused_by_field(tmp_path, change, message):
  config = {k: v for k, v in dict(hf_config("bert"), **change).items() if v is not None}
  folder = write_folder(tmp_path, config, {"x": np.zeros(1, np.float32)})
  with pytest.raises(ValueError, match=message):
    hf.from_pretrained(folder)


@pytest.mark.parametrize("family, change, message", [
    ("bert", {"hidden_act": "relu"}, r"config.json: hidden_act 'relu' is not supported.*cannot "
                                     r"run this checkpoint"),
    ("bert", {"hidden_act": "gelu_new"}, "hidden_act 'gelu_new' is not supported"),
    ("bert", {"layer_norm_eps": 1e-5}, r"its config.json describes another encoder than --model "
                                       r"'tiny_encoder': layer_norm_eps 1e-05 in config.json, "
                                       r"1e-12 in the model\..*pass --model model.json"),
    ("roberta", {"pad_token_id": 3}, r"pad_token_id 3 in config.json, 1 in the model"),
])
def test_command_line_refuses_a_folder_whose_config_is_not_the_model(tmp_path, family, change,
                                                                     message):
  """--pretrained FOLDER loads onto the --model spec: the folder's config.json must describe it
  (tensors alone would load whatever the activation, epsilon or padding id)."""
  from jaxdepth import zoo
  from jaxdepth.train import command
  from jaxdepth.train import config as config_lib
  config = hf_config(family, vocab_size=64, max_position_embeddings=66 if family == "roberta"
                     else 64)
  tensors = random_state_dict(config, prefix=f"{family}.", head="pooled")
  spec = zoo.tiny_encoder(family=family)
  cfg = {"model": "tiny_encoder", "seed": 0, "pretrained": None, "pretrained_new_head": True}
  good = write_folder(tmp_path / "good", config, tensors)
  got = command.initial_variables(dict(cfg, pretrained=str(good)), spec)   # dropouts aside
  np.testing.assert_array_equal(got["params"]["embeddings"]["norm"]["scale"],
                                tensors[f"{family}.embeddings.LayerNorm.weight"])
  bad = write_folder(tmp_path / "bad", dict(config, **change), tensors)
  with pytest.raises(config_lib.ConfigError, match=message):
    command.initial_variables(dict(cfg, pretrained=str(bad)), spec)


def test_a_folder_without_the_files_says_what_it_needs(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json not found.*model.safetensors"):
    hf.from_pretrained(tmp_path)


def test_config_of_the_base_models_builds_the_zoo_specs():
  from jaxdepth import zoo
  bert = hf_config("bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                   num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)
  roberta = hf_config("roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072,
                      max_position_embeddings=514)
  assert hf.spec_from_hf(bert).layers == zoo.bert_base().layers
  assert hf.spec_from_hf(roberta).layers == zoo.roberta_base().layers


def _torch_parity():
  return _scripts.load("scripts/torch_parity.py")


FAKE_EXPORT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_huggingface as t, _encoder_reference as ref
out, error = sys.argv[2], {error!r}
config = t.hf_config("bert")
tensors = t.random_state_dict(config, prefix="bert.", head="bert")
t.write_folder(t.pathlib.Path(out) / "bert", config, tensors)
x = t.token_inputs(config)
y = ref.encoder_forward(t.unprefixed(tensors, "bert."), t.reference_config(config),
                        x["input_ids"], x["attention_mask"], x["token_type_ids"])
np.savez(out + "/bert.npz", output=y * (1 + error), **x)
print(json.dumps({{"torch": "none", "models": ["bert"], "skipped": {{"torchvision": "fake"}}}}))
"""


@pytest.mark.parametrize("error, code", [(0.0, 0), (1e-3, 1)])
def test_torch_parity_script_compares_the_exported_outputs(tmp_path, capsys, error, code):
  """scripts/torch_parity.py with a stand-in for the torch Python (which writes a checkpoint
  and its numpy reference logits, off by ``error``): the difference and the exit code."""
  fake = tmp_path / "python-with-torch"
  source = FAKE_EXPORT.format(tests=str(pathlib.Path(__file__).parent), error=error)
  (tmp_path / "export.py").write_text(source)
  fake.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'export.py'} \"$@\"\n")
  fake.chmod(0o755)
  assert _torch_parity().main(["--torch-python", str(fake)]) == code
  report = json.loads(capsys.readouterr().out)
  assert report["skipped"] == {"torchvision": "fake"}
  assert report["models"]["bert"]["max_rel"] == pytest.approx(error, abs=1e-5)


def test_torch_parity_script_needs_a_python_with_torch(capsys):
  with pytest.raises(SystemExit) as exit_:
    _torch_parity().main(["--torch-python", "no/such/python"])
  assert exit_.value.code == 2
  assert "executable whose environment has torch" in capsys.readouterr().err

"""Text encoders: nodes and the zoo's BERT / RoBERTa against an independent numpy
forward pass, padding, site statistics over real tokens, costs, validation,
training steps on token batches, and surgery of a linearised MLP."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdepth import costs, equivalence, network, optim, surgery, training, zoo
from jaxdepth import spec as S
from jaxdepth.text import inputs
from jaxdepth.text import Tanh, TokenEmbedding, TokenPositionEmbedding, TokenTypeEmbedding
from jaxdepth.transformer import Attention

import _encoder_reference as ref
from _explicit_axes import assert_unsharded_loss_and_gradients

LENGTH, VOCAB, WIDTH = 16, 64, 16

# Hugging Face's config.json of bert-base-uncased and roberta-base (the fields that size it).
BERT_BASE_CONFIG = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                    "intermediate_size": 3072, "max_position_embeddings": 512,
                    "type_vocab_size": 2}
ROBERTA_BASE_CONFIG = {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12,
                       "intermediate_size": 3072, "max_position_embeddings": 514,
                       "type_vocab_size": 1}


def tiny_config(family):
  """The Hugging Face config of zoo.tiny_encoder(family=...), written out here."""
  roberta = family == "roberta"
  return {"family": family, "hidden_size": WIDTH, "num_attention_heads": 2,
          "num_hidden_layers": 2, "layer_norm_eps": 1e-5 if roberta else 1e-12,
          "pad_token_id": 1 if roberta else 0}


def to_hf(variables, family, depth=2):
  """Our variables as a Hugging Face state dict (the test's own map, PyTorch layouts)."""
  p = jax.tree.map(np.asarray, variables["params"])
  emb = p["embeddings"]
  sd = {"embeddings.word_embeddings.weight": emb["word_embeddings"]["embedding"],
        "embeddings.position_embeddings.weight": emb["position_embeddings"]["embedding"],
        "embeddings.token_type_embeddings.weight": emb["token_type_embeddings"]["embedding"],
        "embeddings.LayerNorm.weight": emb["norm"]["scale"],
        "embeddings.LayerNorm.bias": emb["norm"]["bias"]}

  def linear(name, d):
    sd[f"{name}.weight"], sd[f"{name}.bias"] = d["kernel"].T, d["bias"]

  def norm(name, d):
    sd[f"{name}.weight"], sd[f"{name}.bias"] = d["scale"], d["bias"]

  for i in range(depth):
    layer, pre = p["encoder"]["layer"][str(i)], f"encoder.layer.{i}."
    qkv = layer["attention"]["self"]["qkv"]
    for j, name in enumerate(("query", "key", "value")):
      sl = slice(j * WIDTH, (j + 1) * WIDTH)
      sd[f"{pre}attention.self.{name}.weight"] = qkv["kernel"][:, sl].T
      sd[f"{pre}attention.self.{name}.bias"] = qkv["bias"][sl]
    linear(pre + "attention.output.dense", layer["attention"]["self"]["proj"])
    norm(pre + "attention.output.LayerNorm", layer["attention"]["norm"])
    linear(pre + "intermediate.dense", layer["mlp"]["intermediate"])
    linear(pre + "output.dense", layer["mlp"]["output"])
    norm(pre + "output.LayerNorm", layer["mlp"]["norm"])
  if "pooler" in p:
    linear("pooler.dense", p["pooler"]["dense"])
  if "classifier" in p and family == "bert":
    linear("classifier", p["classifier"])
  elif "classifier" in p:
    linear("classifier.dense", p["classifier"]["dense"])
    linear("classifier.out_proj", p["classifier"]["out_proj"])
  return sd


def token_batch(family, seed=0, batch=4):
  """Token ids, attention mask and token types with padding in some examples."""
  rs = np.random.RandomState(seed)
  pad = 1 if family == "roberta" else 0
  ids = rs.randint(2, VOCAB, (batch, LENGTH)).astype(np.int32)
  mask = np.ones((batch, LENGTH), np.int32)
  for b, n in enumerate([LENGTH, 9, 5, 12][:batch]):
    ids[b, n:], mask[b, n:] = pad, 0
  types = np.zeros((batch, LENGTH), np.int32)
  if family == "bert":
    types[:, LENGTH // 2:] = 1
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@functools.lru_cache(maxsize=None)
def model(family):
  spec = zoo.tiny_encoder(family=family)
  variables = network.init(spec, jax.random.key(1 if family == "bert" else 2))
  # Non-trivial norms: scale and bias away from 1 and 0 so a swapped name shows.
  rs = np.random.RandomState(3)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: (v + 0.1 * rs.standard_normal(v.shape).astype(np.float32)
                       if "norm" in jax.tree_util.keystr(path) else v), variables)
  return spec, variables


# ------------------------------------------------------------- forward pass


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_tiny_encoder_matches_the_numpy_reference(family):
  spec, variables = model(family)
  x = token_batch(family)
  got = np.asarray(network.forward(spec, variables, x).logits)
  want = ref.encoder_forward(to_hf(variables, family), tiny_config(family), x["input_ids"],
                             x["attention_mask"], x["token_type_ids"])
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_pooled_head_is_the_pooler_output():
  spec = zoo.tiny_encoder(head="pooled")
  variables = network.init(spec, jax.random.key(0))
  x = token_batch("bert")
  got = np.asarray(network.forward(spec, variables, x).logits)
  want = ref.encoder_forward(to_hf(variables, "bert"), tiny_config("bert"), x["input_ids"], x["attention_mask"],
                             x["token_type_ids"], head="pooled")
  assert got.shape == (4, WIDTH)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_padding_tokens_do_not_change_the_output():
  """What padding tokens hold (ids, types) cannot reach the real tokens' outputs (BERT;
  RoBERTa reads its padding id to number positions, so there padding must hold it)."""
  spec, variables = model("bert")
  x = token_batch("bert")
  y = np.asarray(network.forward(spec, variables, x).logits)
  real = x["attention_mask"] == 1
  noisy = dict(x, input_ids=np.where(real, x["input_ids"], 7),
               token_type_ids=np.where(real, x["token_type_ids"], 1))
  np.testing.assert_allclose(np.asarray(network.forward(spec, variables, noisy).logits), y,
                             atol=1e-5)
  unmasked = dict(x, attention_mask=np.ones_like(x["attention_mask"]))
  assert np.abs(np.asarray(network.forward(spec, variables, unmasked).logits)[1:]
                - y[1:]).max() > 1e-4   # the mask does something


def test_ids_alone_mean_every_token_real_and_of_type_zero():
  spec, variables = model("bert")
  ids = token_batch("bert")["input_ids"]
  full = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids}
  np.testing.assert_array_equal(np.asarray(network.forward(spec, variables, ids).logits),
                                np.asarray(network.forward(spec, variables, full).logits))


def test_roberta_positions_count_real_tokens_from_the_padding_id():
  from jaxdepth.text.executor import position_ids
  node = TokenPositionEmbedding("p", max_positions=10, padding_idx=1)
  ids = jnp.asarray([[0, 5, 6, 1, 1], [0, 1, 7, 8, 1]])
  np.testing.assert_array_equal(np.asarray(position_ids(node, ids)),
                                [[2, 3, 4, 1, 1], [2, 1, 3, 4, 1]])
  bert = TokenPositionEmbedding("p", max_positions=10)
  np.testing.assert_array_equal(np.asarray(position_ids(bert, ids))[1], [0, 1, 2, 3, 4])


def test_out_of_vocabulary_ids_give_nan_logits():
  spec, variables = model("bert")
  ids = token_batch("bert")["input_ids"].copy()
  ids[0, 3] = VOCAB
  y = np.asarray(network.forward(spec, variables, ids).logits)
  assert np.isnan(y[0]).all() and np.isfinite(y[1:]).all()


def test_negative_ids_and_token_types_give_nan_logits():
  # jnp.take wraps negative indices: -1 would read the last row, -VOCAB the first.
  spec, variables = model("bert")
  x = token_batch("bert")
  ids, types = x["input_ids"].copy(), x["token_type_ids"].copy()
  ids[0, 3], ids[1, 2], types[2, 0] = -1, -VOCAB, -1
  y = np.asarray(network.forward(spec, variables, dict(x, input_ids=ids,
                                                       token_type_ids=types)).logits)
  assert np.isnan(y[:3]).all() and np.isfinite(y[3]).all()


def test_bfloat16_compute_keeps_token_ids_exact():
  # Ids above 256 are not all bfloat16 numbers (257 would read as 256): a vocabulary
  # of 1024 looks up the wrong rows if the ids are cast with the activations.
  spec = zoo.tiny_encoder(family="bert", vocab_size=1024)
  variables = network.init(spec, jax.random.key(1))
  x = token_batch("bert")
  x["input_ids"] = np.where(x["attention_mask"] == 1, x["input_ids"] + 900, 0).astype(np.int32)
  assert (x["input_ids"] > 900).any() and (x["input_ids"] % 2 == 1).any()
  y32 = np.asarray(network.forward(spec, variables, x).logits)
  y16 = np.asarray(network.forward(spec, variables, x, dtype=jnp.bfloat16).logits)
  assert y16.dtype == np.float32
  assert not np.array_equal(y16, y32)   # it did compute in bfloat16
  np.testing.assert_allclose(y16, y32, atol=0.02)


# ------------------------------------------------------------------ sites


def test_sites_are_the_mlp_gelus_fed_by_intermediate():
  from jaxdepth.sites import weight_layer
  spec = zoo.bert_base()
  assert spec.sites() == tuple(f"encoder/layer/{i}/mlp/gelu" for i in range(12))
  assert weight_layer(spec, "encoder/layer/3/mlp/gelu") == "encoder/layer/3/mlp/intermediate"
  assert all(spec.node(s).fn == "gelu" for s in spec.sites())   # exact (erf) GELU
  assert not any(isinstance(n, S.Act) and "tanh" in p for p, n in spec.walk())


def test_site_counts_leave_padding_tokens_and_padded_examples_out():
  spec, variables = model("bert")
  x = token_batch("bert")
  example_mask = np.array([True, True, True, False])
  out = network.forward(spec, variables, x, collect_stats=True, example_mask=example_mask,
                        capture=("encoder/layer/1/mlp/gelu",))
  z = np.asarray(out.captured["encoder/layer/1/mlp/gelu"][0])        # (B, L, 2W)
  keep = (x["attention_mask"] == 1) & example_mask[:, None]
  rows = z[keep]                                                      # real tokens only
  want = np.stack([(rows > 0).sum(0), (rows < 0).sum(0), (rows == 0).sum(0)])
  np.testing.assert_array_equal(np.asarray(out.site_counts["encoder/layer/1/mlp/gelu"]), want)
  assert want.sum(0)[0] == keep.sum() == 16 + 9 + 5


def test_sign_counts_with_a_token_mask_by_hand():
  z = jnp.asarray([[[1.0, -1.0], [2.0, 0.0], [-3.0, 5.0]],
                   [[-1.0, -2.0], [4.0, 4.0], [0.0, 1.0]]])
  tokens = jnp.asarray([[1, 1, 0], [1, 0, 1]])
  counts = network.sign_counts(z, jnp.asarray([True, True]), tokens)
  # kept: (1, -1), (2, 0) of example 0; (-1, -2), (0, 1) of example 1
  np.testing.assert_array_equal(np.asarray(counts), [[2, 1], [1, 2], [1, 1]])
  counts = network.sign_counts(z, jnp.asarray([True, False]), tokens)
  np.testing.assert_array_equal(np.asarray(counts), [[2, 0], [0, 1], [0, 1]])


def test_gate_zero_equals_the_baked_identity():
  spec, variables = model("roberta")
  x = token_batch("roberta")
  site = "encoder/layer/0/mlp/gelu"
  gated = network.forward(spec, variables, x, gates=network.gates_for(spec, [site])).logits
  baked = network.forward(S.with_identity(spec, [site]), variables, x).logits
  np.testing.assert_allclose(np.asarray(gated), np.asarray(baked), atol=1e-6)
  assert np.abs(np.asarray(gated - network.forward(spec, variables, x).logits)).max() > 1e-4


# -------------------------------------------------------------- zoo, costs


def test_parameter_counts_equal_hugging_face():
  assert ref.param_count(BERT_BASE_CONFIG) == 109_482_240
  assert ref.param_count(ROBERTA_BASE_CONFIG) == 124_645_632
  assert costs.count_params(zoo.bert_base(head="pooled")) == ref.param_count(BERT_BASE_CONFIG)
  assert costs.count_params(zoo.roberta_base(head="pooled")) == ref.param_count(
      ROBERTA_BASE_CONFIG)
  # Heads: BERT's classifier on the pooler; RoBERTa's own head (dense + out_proj), no pooler.
  assert costs.count_params(zoo.bert_base(num_classes=3)) == 109_482_240 + 768 * 3 + 3
  assert costs.count_params(zoo.roberta_base(num_classes=2)) == (
      ref.param_count(ROBERTA_BASE_CONFIG, pooler=False) + 768 * 768 + 768 + 768 * 2 + 2)


@pytest.mark.parametrize("name", ["bert_base", "roberta_base"])
def test_count_params_equals_the_initialised_parameters(name):
  spec = zoo.get(name)
  shapes = jax.eval_shape(lambda k: network.init(spec, k), jax.random.key(0))
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"])) == (
      costs.count_params(spec))


def test_macs_by_hand():
  spec = zoo.tiny_encoder()
  n, d, i = LENGTH, WIDTH, 2 * WIDTH
  layer = 4 * n * d * d + 2 * n * n * d + 2 * n * d * i
  assert costs.count_macs(spec) == 2 * layer + d * d + d * 2   # embeddings are lookups
  assert costs.depth(spec).weight_depth == 2 * 4 + 2             # attention 2, MLP 2; head 2


@pytest.mark.parametrize("name", ["bert_base", "roberta_base", "tiny_encoder"])
def test_text_specs_round_trip_through_json(name):
  spec = zoo.get(name)
  assert S.Spec.from_json(spec.to_json()) == spec
  assert '"padding_mask": true' in spec.to_json()
  assert "padding_mask" not in zoo.digits_vit().to_json()   # vision JSON unchanged


# ------------------------------------------------------------ validation


@pytest.mark.parametrize("build, message", [
    (lambda: S.Spec((8,), (TokenEmbedding("tok", vocab_size=0, features=4),)),
     "'tok': vocab_size must be a positive int"),
    (lambda: S.Spec((4, 4, 1), (TokenEmbedding("tok", vocab_size=5, features=4),)),
     "'tok': a token embedding reads token ids of shape (L,)"),
    (lambda: S.Spec((8,), (TokenEmbedding("tok", vocab_size=5, features=4),
                           TokenPositionEmbedding("pos", max_positions=9, padding_idx=1))),
     "'pos': 8 tokens need 10 position rows"),
    (lambda: S.Spec((8,), (TokenEmbedding("tok", vocab_size=5, features=4),
                           TokenPositionEmbedding("pos", padding_idx=-1))),
     "'pos': padding_idx must be None or an int >= 0"),
    (lambda: S.Spec((8, 4), (TokenTypeEmbedding("types", type_vocab_size=0),)),
     "'types': type_vocab_size must be a positive int"),
    (lambda: S.Spec((8, 4), (Attention("attn", heads=2, padding_mask="yes"),)),
     "'attn': padding_mask must be true or false"),
])
def test_bad_text_nodes_are_refused_by_name(build, message):
  with pytest.raises(S.SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
    build()


def test_bad_inputs_are_refused_with_what_to_do():
  spec, variables = model("bert")
  x = token_batch("bert")
  with pytest.raises(ValueError, match=r"also has \['label'\].*batch_inputs"):
    network.forward(spec, variables, dict(x, label=np.zeros(4, np.int32)))
  with pytest.raises(ValueError, match="needs 'input_ids'"):
    network.forward(spec, variables, {"attention_mask": x["attention_mask"]})
  with pytest.raises(ValueError, match=r"expected \(batch, 16\)"):
    network.forward(spec, variables, x["input_ids"][:, :8])
  with pytest.raises(ValueError, match="must be integer token ids"):
    network.forward(spec, variables, x["input_ids"].astype(np.float32))
  with pytest.raises(ValueError, match="attention_mask of shape"):
    network.forward(spec, variables, dict(x, attention_mask=x["attention_mask"][:, :4]))
  # A tokenizer's lists (called without return_tensors) crashed inside the trace.
  lists = {k: np.asarray(v).tolist() for k, v in x.items()}
  for given in (lists, dict(x, attention_mask=lists["attention_mask"])):
    key = "input_ids" if given is lists else "attention_mask"
    with pytest.raises(TypeError, match=rf"{key} must be an array \(B, L\), got a list: convert "
                       rf"it with np.asarray\(value, np.int32\)"):
      network.forward(spec, variables, given)
  image_spec = zoo.digits_plain()
  with pytest.raises(ValueError, match="only a spec that starts with a TokenEmbedding"):
    network.forward(image_spec, network.init(image_spec, jax.random.key(0)), x)
  with pytest.raises(KeyError, match="reads token ids, but the batch has keys"):
    network.batch_inputs(spec, {"image": np.zeros((1, 8, 8, 1))})
  with pytest.raises(ValueError, match="max_length=600 exceeds the 512 tokens"):
    zoo.bert_base(max_length=600)


def test_tanh_is_not_a_site():
  spec = S.Spec((3,), (S.Dense("d", features=3), Tanh("t")))
  assert spec.sites() == ()
  variables = network.init(spec, jax.random.key(0))
  x = jnp.asarray([[0.5, -2.0, 1.0]])
  k, b = variables["params"]["d"]["kernel"], variables["params"]["d"]["bias"]
  np.testing.assert_allclose(network.forward(spec, variables, x).logits, np.tanh(x @ k + b),
                             atol=1e-6)


# ------------------------------------------------------------- training


def test_train_and_eval_steps_read_token_batches():
  """A text batch (input_ids, attention_mask, token_type_ids, label, mask) trains."""
  spec, variables = model("bert")
  batch = dict(token_batch("bert"), label=np.array([0, 1, 1, 0], np.int32),
               mask=np.array([True, True, True, False]))
  tx = optax.adamw(1e-2)
  mesh = training.make_mesh(jax.devices()[:1])
  step = training.make_train_step(spec, tx, mesh=mesh, collect_stats=True)
  state = training.TrainState.create(variables, tx, 0)
  stats = training.site_stats.empty_stats(spec)
  losses = []
  for _ in range(5):
    state, metrics, stats = step(state, training.shard_batch(batch, mesh), None, stats)
    losses.append(float(metrics["loss"]) / float(metrics["count"]))
  assert float(metrics["count"]) == 3 and losses[-1] < losses[0]
  # statistics: real tokens of the three real examples, every batch
  assert int(np.asarray(stats.counts["encoder/layer/0/mlp/gelu"]).sum(0)[0]) == 5 * (16 + 9 + 5)
  evaluate = training.make_eval_step(spec, mesh=mesh)
  metrics, _ = evaluate(state.variables, training.shard_batch(batch, mesh), None, None)
  logits = network.forward(spec, state.variables, network.batch_inputs(spec, batch)).logits
  want = optax.softmax_cross_entropy_with_integer_labels(logits[:3], batch["label"][:3]).sum()
  np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-5)


def test_fit_refuses_a_tokenizer_past_the_embeddings_before_training(tmp_path):
  # Ids (or token types) past a table read NaN rows: the loss would be NaN at the first step.
  from test_glue import bert_tokenizer, load   # pylint: disable=import-outside-toplevel
  tokenizer = tmp_path / "tokenizer.json"
  bert_tokenizer().save(str(tokenizer))        # 25 tokens; pairs give token types 0 and 1
  sst2 = load("glue/sst2", tokenizer=tokenizer, max_length=16)
  rte = load("glue/rte", tokenizer=tokenizer, max_length=16)
  recipe = optim.Recipe(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3)

  def fit(spec, ds, **kw):
    return training.fit(spec, network.init(spec, jax.random.key(0)), ds, recipe,
                        progress=False, **kw)

  small = zoo.tiny_encoder(vocab_size=24, input_shape=sst2.input_shape)
  with pytest.raises(ValueError, match=r"the tokenizer has 25 tokens, but spec 'tiny_encoder' "
                     r"embeds 24 \(vocab_size of 'word_embeddings'\).*use the model's own "
                     r"tokenizer, or a model whose vocab_size is at least 25"):
    fit(small, sst2, workdir=tmp_path / "run")
  assert not (tmp_path / "run").exists()
  one_type = zoo.tiny_encoder(family="roberta", input_shape=rte.input_shape)
  with pytest.raises(ValueError, match=r"the tokenizer gives sentence pairs 2 token types, but "
                     r"spec 'tiny_encoder' embeds 1 \(type_vocab_size of "
                     r"'embeddings/token_type_embeddings'\).*type_vocab_size is at least 2"):
    fit(one_type, rte)
  inputs.check_vocabulary(one_type, sst2)     # single sentences: every token of type 0
  exact = zoo.tiny_encoder(vocab_size=25, input_shape=rte.input_shape)
  assert np.isfinite(fit(exact, rte).history[-1]["train_loss"])


# --------------------------------------------------------------- surgery


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_linearised_mlp_becomes_one_dense_exactly(family):
  """An encoder MLP with its GELU an identity: intermediate and output merge into one
  Dense and the residual addition folds into it; the network is unchanged."""
  spec, variables = model(family)
  site = "encoder/layer/1/mlp/gelu"
  baked = S.with_identity(spec, [site])
  log = []
  merged, merged_vars = surgery.collapse(baked, variables, log=log)
  mlp = merged.node("encoder/layer/1/mlp")
  assert [type(n).__name__ for n in mlp.layers] == ["Dense", "LayerNorm"]
  assert mlp.layers[0].features == WIDTH
  assert isinstance(merged.node("encoder/layer/0/mlp"), S.Block)   # the live one stays
  assert {e.kind for e in log if e.path.startswith("encoder/layer/1/mlp")} >= {
      "merge", "fold_residual"}
  x = token_batch(family)
  report = equivalence.compare(baked, variables, merged, merged_vars, x)
  assert report.max_abs < 1e-5 and report.top1_agreement == 1.0
  gated = network.forward(spec, variables, x, gates=network.gates_for(spec, [site])).logits
  np.testing.assert_allclose(np.asarray(network.forward(merged, merged_vars, x).logits),
                             np.asarray(gated), atol=1e-5)
  before, after = costs.count_macs(baked), costs.count_macs(merged)
  assert before - after == LENGTH * (2 * WIDTH * 2 * WIDTH - WIDTH * WIDTH)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_a_batch_of_token_ids_sharded_over_explicit_axes_gives_the_unsharded_loss_and_gradients(
    family):
  spec = zoo.tiny_encoder(max_length=8, family=family)
  ids = np.random.default_rng(0).integers(2, 64, (4, 8)).astype(np.int32)
  mask = np.ones((4, 8), np.int32)
  ids[1, 5:], mask[1, 5:] = (1 if family == "roberta" else 0), 0   # padding
  assert_unsharded_loss_and_gradients(spec, {"input_ids": ids, "attention_mask": mask})

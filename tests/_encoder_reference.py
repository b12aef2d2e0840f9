"""An independent numpy BERT / RoBERTa forward pass over Hugging Face's tensor names.

Written from the Hugging Face modeling code's arithmetic (``BertEmbeddings``,
``BertSelfAttention`` with its extended attention mask, ``BertLayer``,
``BertPooler``, the two sequence classification heads), in float64, over a
state dict keyed as Hugging Face keys it (PyTorch layouts: a Linear weight is
``(out, in)``). Used by tests/test_text.py and tests/test_huggingface.py.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf


def _linear(x, sd, name):
  return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _layer_norm(x, sd, name, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _gelu(x):
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _softmax(a):
  a = a - a.max(-1, keepdims=True)
  e = np.exp(a)
  return e / e.sum(-1, keepdims=True)


def position_ids(ids, family, pad_token_id):
  if family == "bert":
    return np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
  real = (ids != pad_token_id).astype(np.int64)
  return np.cumsum(real, axis=1) * real + pad_token_id


def encoder_forward(sd, cfg, ids, mask=None, types=None, *, head="classifier"):
  """Logits (or the pooled output, ``head="pooled"``) of a BERT/RoBERTa state dict.

  Args:
    sd: ``{hf name: array}`` without the ``bert.`` / ``roberta.`` prefix.
    cfg: Hugging Face config fields (``hidden_size``, ``num_attention_heads``,
      ``num_hidden_layers``, ``layer_norm_eps``, ``pad_token_id``) and
      ``family`` (``"bert"`` or ``"roberta"``).
  """
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  b, length = ids.shape
  mask = np.ones((b, length)) if mask is None else np.asarray(mask)
  types = np.zeros((b, length), np.int64) if types is None else np.asarray(types)
  eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
  pos = position_ids(ids, cfg["family"], cfg["pad_token_id"])
  x = (sd["embeddings.word_embeddings.weight"][ids]
       + sd["embeddings.position_embeddings.weight"][pos]
       + sd["embeddings.token_type_embeddings.weight"][types])
  x = _layer_norm(x, sd, "embeddings.LayerNorm", eps)
  width = x.shape[-1]
  d = width // heads
  low = np.finfo(np.float32).min
  extended = (1.0 - mask[:, None, None, :]) * low          # (B, 1, 1, L)
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}."

    def split(t):
      return t.reshape(b, length, heads, d).transpose(0, 2, 1, 3)
    q = split(_linear(x, sd, p + "attention.self.query"))
    k = split(_linear(x, sd, p + "attention.self.key"))
    v = split(_linear(x, sd, p + "attention.self.value"))
    probs = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + extended)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, width)
    x = _layer_norm(x + _linear(context, sd, p + "attention.output.dense"), sd,
                    p + "attention.output.LayerNorm", eps)
    h = _gelu(_linear(x, sd, p + "intermediate.dense"))
    x = _layer_norm(x + _linear(h, sd, p + "output.dense"), sd, p + "output.LayerNorm", eps)
  if head == "pooled":
    return np.tanh(_linear(x[:, 0], sd, "pooler.dense"))
  if cfg["family"] == "bert":
    return _linear(np.tanh(_linear(x[:, 0], sd, "pooler.dense")), sd, "classifier")
  return _linear(np.tanh(_linear(x[:, 0], sd, "classifier.dense")), sd, "classifier.out_proj")


def param_count(cfg, *, pooler=True):
  """Parameters of Hugging Face's ``BertModel`` / ``RobertaModel`` from its config."""
  h, i, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
  embeddings = (cfg["vocab_size"] + cfg["max_position_embeddings"] + cfg["type_vocab_size"]) * h
  embeddings += 2 * h                                   # LayerNorm
  attention = 4 * (h * h + h) + 2 * h                   # q, k, v, output dense; LayerNorm
  mlp = (h * i + i) + (i * h + h) + 2 * h               # intermediate, output; LayerNorm
  return embeddings + n * (attention + mlp) + ((h * h + h) if pooler else 0)

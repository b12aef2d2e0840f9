"""BERT and RoBERTa encoders as specs (built by :mod:`jaxdepth.zoo`).

An :class:`EncoderConfig` holds what Hugging Face's ``config.json`` says of the
architecture; :func:`encoder` turns it into a spec for token sequences of a
fixed padded length. Node paths follow Hugging Face's modules where one exists
(the weight name map of :mod:`jaxdepth.weights.huggingface` lists every one)::

    embeddings/{word_embeddings, position_embeddings, token_type_embeddings, norm, dropout}
    encoder/layer/i/attention/{self, dropout, norm}      (.attention.self, .attention.output)
    encoder/layer/i/mlp/{intermediate, gelu, output, dropout, norm}
                                                         (.intermediate, .output)
    pooler/{first, dense, tanh}                          (BERT's pooler)
    dropout, classifier                                  (BERT's classification head)
    classifier/{first, dropout, dense, tanh, dropout_2, out_proj}
                                                         (RoBERTa's classification head)

Every encoder layer is post-LN (Vaswani et al., 2017; Devlin et al., 2019), two
residual :class:`~jaxdepth.spec.Block` nodes whose ``post`` is the LayerNorm::

    x = norm(x + dropout(attention(x)))                            attention
    x = norm(x + dropout(output(gelu(intermediate(x)))))           mlp

The GELU (exact, erf) of each MLP is the layer's activation site
(``encoder/layer/i/mlp/gelu``, fed by ``encoder/layer/i/mlp/intermediate``):
12 sites in the base models. With a site linearised, surgery merges
``intermediate`` and ``output`` into one Dense and folds the residual addition
into it (:func:`jaxdepth.surgery.collapse`).
"""
from __future__ import annotations

import dataclasses

from jaxdepth.spec import Act, Block, Dense, Dropout, LayerNorm, Node, Sequential, Spec
from jaxdepth.text.nodes import Tanh, TokenEmbedding, TokenPositionEmbedding, TokenTypeEmbedding
from jaxdepth.transformer.nodes import Attention, SelectToken

__all__ = ["EncoderConfig", "FAMILIES", "HEADS", "encoder", "encoder_layer", "BERT_BASE",
           "ROBERTA_BASE"]

FAMILIES = ("bert", "roberta")
HEADS = ("classifier", "pooled")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """The architecture of a BERT-style encoder (Hugging Face's config fields in brackets).

  Attributes:
    family: ``"bert"`` (positions ``0 .. L-1``, classification on the pooled
      first token) or ``"roberta"`` (positions counted from ``pad_token_id + 1``
      over real tokens, classification head of its own on the first token).
    vocab_size: tokens in the vocabulary (``vocab_size``).
    width: hidden size (``hidden_size``).
    depth: encoder layers (``num_hidden_layers``).
    heads: attention heads (``num_attention_heads``); must divide ``width``.
    mlp_width: MLP hidden size (``intermediate_size``).
    max_positions: rows of the position table (``max_position_embeddings``).
    type_vocab_size: token types (``type_vocab_size``).
    layer_norm_eps: LayerNorm epsilon (``layer_norm_eps``).
    dropout: hidden dropout (``hidden_dropout_prob``).
    attention_dropout: dropout on attention probabilities
      (``attention_probs_dropout_prob``).
    classifier_dropout: dropout before the classifier (``classifier_dropout``;
      ``None``: ``dropout``).
    pad_token_id: the padding token (``pad_token_id``); RoBERTa numbers
      positions after it.
  """
  family: str = "bert"
  vocab_size: int = 30522
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_width: int = 3072
  max_positions: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dropout: float = 0.1
  attention_dropout: float = 0.1
  classifier_dropout: float | None = None
  pad_token_id: int = 0

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"encoder family must be one of {FAMILIES}, got {self.family!r}")
    for name in ("vocab_size", "width", "depth", "heads", "mlp_width", "max_positions",
                 "type_vocab_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"encoder {name} must be a positive int, got {value!r}")
    if self.width % self.heads:
      raise ValueError(f"encoder width {self.width} is not divisible by heads={self.heads}")


# bert-base-uncased and roberta-base (their config.json files).
BERT_BASE = EncoderConfig()
ROBERTA_BASE = EncoderConfig(family="roberta", vocab_size=50265, max_positions=514,
                             type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)


def encoder_layer(name: str, config: EncoderConfig) -> Sequential:
  """One post-LN encoder layer (Hugging Face's ``BertLayer``) on ``(L, width)`` tokens."""
  c = config
  attention = Block("attention", branch=(
      Attention("self", heads=c.heads, attn_dropout=c.attention_dropout, padding_mask=True),
      Dropout("dropout", rate=c.dropout)), post=(LayerNorm("norm", epsilon=c.layer_norm_eps),))
  mlp = Block("mlp", branch=(
      Dense("intermediate", features=c.mlp_width), Act("gelu", fn="gelu"),
      Dense("output", features=c.width), Dropout("dropout", rate=c.dropout)),
      post=(LayerNorm("norm", epsilon=c.layer_norm_eps),))
  return Sequential(name, layers=(attention, mlp))


def _head(config: EncoderConfig, head: str, num_classes: int) -> tuple[Node, ...]:
  c = config
  drop = c.dropout if c.classifier_dropout is None else c.classifier_dropout
  pooler = Sequential("pooler", layers=(
      SelectToken("first", index=0), Dense("dense", features=c.width), Tanh("tanh")))
  if head == "pooled":
    return (pooler,)
  if c.family == "bert":
    return (pooler, Dropout("dropout", rate=drop), Dense("classifier", features=num_classes))
  return (Sequential("classifier", layers=(
      SelectToken("first", index=0), Dropout("dropout", rate=drop),
      Dense("dense", features=c.width), Tanh("tanh"), Dropout("dropout_2", rate=drop),
      Dense("out_proj", features=num_classes))),)


def encoder(config: EncoderConfig, *, max_length: int, head: str = "classifier",
            num_classes: int = 2, name: str = "encoder") -> Spec:
  """A BERT or RoBERTa encoder for sequences padded to ``max_length`` tokens.

  Args:
    config: the architecture.
    max_length: tokens per sequence (the spec's ``input_shape`` is ``(max_length,)``).
    head: ``"classifier"``: sequence classification logits, as Hugging Face's
      ``BertForSequenceClassification`` (pooler, dropout, ``classifier``) or
      ``RobertaForSequenceClassification`` (no pooler; ``classifier.dense``,
      tanh and ``classifier.out_proj`` on the first token); ``"pooled"``: the
      pooler output ``tanh(dense(x_0))`` of ``BertModel`` / ``RobertaModel``
      (same parameters as those).
    num_classes: logits of the classifier.
    name: the spec's name.

  Returns:
    The spec.
  """
  if head not in HEADS:
    raise ValueError(f"encoder head must be one of {HEADS}, got {head!r}")
  for what, value in (("max_length", max_length), ("num_classes", num_classes)):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"{what} must be a positive int, got {value!r}")
  c = config
  padding_idx = c.pad_token_id if c.family == "roberta" else None
  limit = c.max_positions - (0 if padding_idx is None else padding_idx + 1)
  if max_length > limit:
    raise ValueError(f"max_length={max_length} exceeds the {limit} tokens the position table "
                     f"of {c.max_positions} rows serves; use max_length <= {limit}")
  embeddings = Sequential("embeddings", layers=(
      TokenEmbedding("word_embeddings", vocab_size=c.vocab_size, features=c.width),
      TokenPositionEmbedding("position_embeddings", max_positions=c.max_positions,
                             padding_idx=padding_idx),
      TokenTypeEmbedding("token_type_embeddings", type_vocab_size=c.type_vocab_size),
      LayerNorm("norm", epsilon=c.layer_norm_eps), Dropout("dropout", rate=c.dropout)))
  layers = Sequential("encoder", layers=(Sequential("layer", layers=tuple(
      encoder_layer(str(i), c) for i in range(c.depth))),))
  return Spec((max_length,), (embeddings, layers, *_head(c, head, num_classes)), name=name)

"""Spec nodes of text encoders (BERT, RoBERTa), with their shapes and costs.

A text spec reads **token ids**: its ``input_shape`` is ``(L,)`` (the padded
sequence length) and its first node is a :class:`TokenEmbedding`, which maps
the ids ``(L,)`` to vectors ``(L, D)``. Everything after it reads token
sequences ``(L, D)`` like the ViT nodes of :mod:`jaxdepth.transformer`.

Two more per-token inputs travel beside the ids (:mod:`jaxdepth.text.inputs`):
the ``attention_mask`` (1 for a real token, 0 for padding) and the
``token_type_ids`` (segment A / B of a sentence pair). The nodes that need them
read them from the call, not from the tensor flowing through the spec:
:class:`TokenTypeEmbedding` adds the row of each token's type,
:class:`TokenPositionEmbedding` with a ``padding_idx`` (RoBERTa) numbers only
the real tokens, and :class:`~jaxdepth.transformer.Attention` with
``padding_mask=True`` lets no token attend to padding.

:class:`Tanh` is the fixed squashing of BERT's pooler and RoBERTa's
classification head. It is *not* an activation site: no method counts, gates
or removes it (the sites of an encoder are the GELUs of its MLPs).

Every node validates its fields on construction and its input shape in
:meth:`output_shape` (a clear :class:`~jaxdepth.spec.SpecError` naming the
node), round-trips through JSON and tells :mod:`jaxdepth.costs` its parameters
(an embedding is a table lookup: parameters, no multiply-accumulates).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxdepth import spec as S

__all__ = ["TokenEmbedding", "TokenPositionEmbedding", "TokenTypeEmbedding", "Tanh",
           "takes_token_ids", "first_token_embedding"]


def _positive(node: str, what: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise S.SpecError(f"node {node!r}: {what} must be a positive int, got {value!r}")


def _sequence(shape, path: str, kind: str) -> tuple[int, int]:
  if len(shape) != 2:
    raise S.SpecError(f"node {path!r}: {kind} needs a token sequence (L, D), got shape "
                      f"{shape}; put it after the TokenEmbedding")
  return shape


@dataclasses.dataclass(frozen=True)
class TokenEmbedding(S.Node):
  """Token ids ``(L,)`` to vectors ``(L, features)``: row ``id`` of a learned table.

  Parameter ``embedding`` of shape ``(vocab_size, features)`` (Hugging Face's
  ``word_embeddings.weight``), initialised N(0, 0.02²) as BERT does. It must
  be the first node of a spec (the only one that reads the ids); an id outside
  ``[0, vocab_size)`` gives a row of NaNs (JAX cannot raise inside a compiled
  step), so a tokenizer with a larger vocabulary shows at once.
  """
  vocab_size: int = 0
  features: int = 0
  kind: ClassVar[str] = "token_embedding"

  def __post_init__(self):
    super().__post_init__()
    _positive(self.name, "vocab_size", self.vocab_size)
    _positive(self.name, "features", self.features)

  def output_shape(self, shape, path):
    if len(shape) != 1:
      raise S.SpecError(f"node {path!r}: a token embedding reads token ids of shape (L,), got "
                        f"shape {shape}; a text spec's input_shape is (sequence length,)")
    return (shape[0], self.features)

  def param_count(self, shape_in) -> int:
    return self.vocab_size * self.features


@dataclasses.dataclass(frozen=True)
class TokenPositionEmbedding(S.Node):
  """Adds a learned embedding of each token's position: ``x[i] + E[pos_i]``.

  Parameter ``embedding`` of shape ``(max_positions, D)`` (Hugging Face's
  ``position_embeddings.weight``), initialised N(0, 0.02²).

  Positions (Devlin et al., 2019; Liu et al., 2019):

  * ``padding_idx`` is ``None`` (BERT): ``pos_i = i``;
  * ``padding_idx = p`` (RoBERTa): real tokens (``input_ids != p``) are
    numbered ``p + 1, p + 2, ...`` in order and padding tokens get ``p``,
    ``pos_i = p + m_i Σ_{j <= i} m_j`` with ``m_j = [input_ids_j != p]``, as
    ``create_position_ids_from_input_ids`` does. So a sequence of ``L`` tokens
    needs ``max_positions >= L + p + 1`` (RoBERTa's 514 rows serve 512 tokens).
  """
  max_positions: int = 512
  padding_idx: int | None = None
  kind: ClassVar[str] = "token_position_embedding"

  def __post_init__(self):
    super().__post_init__()
    _positive(self.name, "max_positions", self.max_positions)
    if self.padding_idx is not None and (isinstance(self.padding_idx, bool) or not isinstance(
        self.padding_idx, int) or self.padding_idx < 0):
      raise S.SpecError(f"node {self.name!r}: padding_idx must be None or an int >= 0, got "
                        f"{self.padding_idx!r}")

  @property
  def offset(self) -> int:
    """The position of the first token (0 for BERT, ``padding_idx + 1`` for RoBERTa)."""
    return 0 if self.padding_idx is None else self.padding_idx + 1

  def output_shape(self, shape, path):
    length, _ = _sequence(shape, path, "a position embedding")
    if length + self.offset > self.max_positions:
      raise S.SpecError(f"node {path!r}: {length} tokens need {length + self.offset} position "
                        f"rows but the table has max_positions={self.max_positions}; use a "
                        f"sequence length of at most {self.max_positions - self.offset}")
    return shape

  def param_count(self, shape_in) -> int:
    return self.max_positions * shape_in[-1]


@dataclasses.dataclass(frozen=True)
class TokenTypeEmbedding(S.Node):
  """Adds the learned embedding of each token's type (segment): ``x[i] + E[type_i]``.

  Parameter ``embedding`` of shape ``(type_vocab_size, D)`` (Hugging Face's
  ``token_type_embeddings.weight``; BERT has 2 types, RoBERTa 1), initialised
  N(0, 0.02²). Types come from the ``token_type_ids`` input; without it every
  token is of type 0.
  """
  type_vocab_size: int = 2
  kind: ClassVar[str] = "token_type_embedding"

  def __post_init__(self):
    super().__post_init__()
    _positive(self.name, "type_vocab_size", self.type_vocab_size)

  def output_shape(self, shape, path):
    _sequence(shape, path, "a token type embedding")
    return shape

  def param_count(self, shape_in) -> int:
    return self.type_vocab_size * shape_in[-1]


@dataclasses.dataclass(frozen=True)
class Tanh(S.Node):
  """``tanh`` element-wise (BERT's pooler, RoBERTa's classification head).

  A fixed part of the architecture, not an activation site: it is not in
  ``spec.sites()``, so statistics, gates and the methods leave it alone.
  """
  kind: ClassVar[str] = "tanh"

  def output_shape(self, shape, path):
    return shape


def _first_leaf(nodes) -> S.Node | None:
  for n in nodes:
    if n.children():
      found = _first_leaf(n.children())
      if found is not None:
        return found
    elif not isinstance(n, (S.Sequential, S.Block, S.Concat)):
      return n
  return None


def first_token_embedding(spec: S.Spec) -> TokenEmbedding | None:
  """The :class:`TokenEmbedding` that ``spec`` starts with, or ``None``."""
  first = _first_leaf(spec.layers)
  return first if isinstance(first, TokenEmbedding) else None


def takes_token_ids(spec: S.Spec) -> bool:
  """Whether ``spec`` reads token ids: its first node is a :class:`TokenEmbedding`."""
  return first_token_embedding(spec) is not None

"""Sentence and sentence-pair classification: a Hugging Face tokenizer, BERT's encoding, text splits.

A :class:`TextSplit` serves batches (:meth:`~jaxdepth.data.pipeline.BatchedSplit.batches`)::

    {"input_ids": int32 (B, L), "attention_mask": int32 (B, L), "token_type_ids": int32 (B, L),
     "label": int32 (B,), "mask": bool (B,)}

with ``L = max_length``. An example ``(first, second)`` (``second`` None for
a single sentence) is encoded as BERT's fine-tuning code does:

1. each text goes through the tokenizer's normaliser, pre-tokeniser and model
   (WordPiece, BPE, ...) without special tokens;
2. a pair longer than ``L`` less the special tokens is cut "longest first":
   the last token of the longer text is dropped, of the second text when both
   are as long, until the pair fits (:func:`truncated_lengths`); a single text
   keeps its first tokens;
3. the tokenizer's post-processor adds its special tokens and token types:
   ``[CLS] A [SEP] B [SEP]`` with types 0 then 1 for BERT,
   ``<s> A </s></s> B </s>`` with types 0 for RoBERTa;
4. the sequence is padded on the right to ``L`` with the tokenizer's pad token
   (attention 0, type 0).

Hugging Face's fast tokenizers cut a pair slightly differently when both texts
must be cut (the longer text keeps the odd token of an odd budget); step 2 is
the rule of BERT's original code and of the slow ``transformers`` tokenizers.
Padded slots of a last partial batch (``mask = False``) hold the encoding of
empty texts, so every row has a real token. Text has no augmentation.

The tokenizer is a ``tokenizers`` JSON file (``tokenizer.json``, as written by
``tokenizer.save(path)`` or by ``save_pretrained`` of a fast ``transformers``
tokenizer), a folder holding one (a Hugging Face model folder), or a
``tokenizers.Tokenizer`` (copied, not changed).
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdepth._optional import require
from jaxdepth.data import pipeline

TOKENIZER_FILE = "tokenizer.json"
PAD_TOKENS = ("[PAD]", "<pad>")
DEFAULT_MAX_LENGTH = 128
TextPair = tuple[str, str | None]


def _tokenizers():
  return require("tokenizers", "data", "tokenizing text")


def load_tokenizer(tokenizer: Any) -> Any:
  """A fresh ``tokenizers.Tokenizer`` from a JSON file, a folder holding ``tokenizer.json``, or a Tokenizer.

  Raises:
    ValueError: no tokenizer given, or a file that is not a tokenizers JSON file.
    FileNotFoundError: the path does not exist, or the folder has no ``tokenizer.json``.
  """
  tokenizers = _tokenizers()
  if isinstance(tokenizer, tokenizers.Tokenizer):
    return tokenizers.Tokenizer.from_str(tokenizer.to_str())
  if tokenizer is None:
    raise ValueError(
        "text datasets need a tokenizer: pass tokenizer= the path of a Hugging Face tokenizers JSON "
        "file (tokenizer.json) or of the model folder holding it, e.g. the folder of bert-base-uncased "
        "or roberta-base saved by Hugging Face's save_pretrained")
  if not isinstance(tokenizer, (str, pathlib.Path)):
    raise ValueError(f"tokenizer must be a path or a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
  path = pathlib.Path(tokenizer).expanduser()
  if path.is_dir():
    if not (path / TOKENIZER_FILE).is_file():
      raise FileNotFoundError(
          f"folder {path} has no {TOKENIZER_FILE}; pass the model folder of a fast Hugging Face tokenizer "
          f"or the file itself (with transformers: AutoTokenizer.from_pretrained(folder)"
          f".save_pretrained(folder) writes {TOKENIZER_FILE})")
    path = path / TOKENIZER_FILE
  elif not path.is_file():
    raise FileNotFoundError(f"tokenizer file {path} does not exist; pass a Hugging Face {TOKENIZER_FILE} "
                            f"or the model folder holding it")
  try:
    return tokenizers.Tokenizer.from_file(str(path))
  except Exception as error:  # tokenizers raises a bare Exception on a file it cannot parse
    raise ValueError(f"{path} is not a Hugging Face tokenizers JSON file ({error})") from error


def truncated_lengths(first: int, second: int, budget: int) -> tuple[int, int]:
  """The lengths of a pair of token sequences after BERT's longest-first cut to ``budget`` tokens.

  BERT drops the last token of the longer sequence, of the second one when
  both are as long, until ``first + second <= budget``. In closed form, with
  ``s = min(first, second)``: nothing is cut if the pair fits; only the longer
  is cut, to ``budget - s``, if ``2 s <= budget``; otherwise both end at
  ``budget / 2``, the first keeping the odd token.
  """
  if first + second <= budget:
    return first, second
  if 2 * min(first, second) <= budget:
    return (first, budget - first) if first < second else (budget - second, second)
  return budget - budget // 2, budget // 2


def as_text(value: Any) -> str:
  """A tfds text feature (``str``, ``bytes``, numpy scalar) as ``str``."""
  value = value.item() if isinstance(value, np.ndarray) else value
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
  """Encodes texts and text pairs to fixed-length BERT inputs (module docstring).

  Build it with :func:`encoder`.

  Attributes:
    tokenizer: a ``tokenizers.Tokenizer`` with its own truncation and padding off.
    max_length: ``L``, the length of every encoded sequence.
    pad_id: the id of the padding token.
  """
  tokenizer: Any
  max_length: int
  pad_id: int

  def __call__(self, texts: Sequence[TextPair], *, pairs: bool) -> pipeline.Batch:
    """``{"input_ids", "attention_mask", "token_type_ids"}``, int32 ``(len(texts), max_length)``.

    Args:
      texts: ``(first, second)`` per example, ``second`` None unless ``pairs``.
      pairs: whether the examples are sentence pairs.
    """
    tok = self.tokenizer
    budget = self.max_length - tok.num_special_tokens_to_add(pairs)
    firsts = tok.encode_batch([t[0] for t in texts], add_special_tokens=False)
    seconds = tok.encode_batch([t[1] for t in texts], add_special_tokens=False) if pairs else [None] * len(texts)
    shape = (len(texts), self.max_length)
    out = {"input_ids": np.full(shape, self.pad_id, np.int32), "attention_mask": np.zeros(shape, np.int32),
           "token_type_ids": np.zeros(shape, np.int32)}
    for row, (first, second) in enumerate(zip(firsts, seconds)):
      if second is None:
        first.truncate(min(len(first.ids), budget))
      else:
        n_first, n_second = truncated_lengths(len(first.ids), len(second.ids), budget)
        first.truncate(n_first)
        second.truncate(n_second)
      encoding = tok.post_process(first, second, add_special_tokens=True)
      n = len(encoding.ids)
      out["input_ids"][row, :n] = encoding.ids
      out["attention_mask"][row, :n] = 1
      out["token_type_ids"][row, :n] = encoding.type_ids
    return out


def encoder(tokenizer: Any, max_length: int = DEFAULT_MAX_LENGTH) -> Encoder:
  """An :class:`Encoder` for ``tokenizer`` (see :func:`load_tokenizer` for what it may be).

  The pad token is the one of the tokenizer's padding settings, else ``[PAD]``
  or ``<pad>`` of its vocabulary.

  Raises:
    ValueError: no or an unreadable tokenizer, one without special tokens (no
      post-processor) or without a pad token, or a ``max_length`` that leaves no
      room for text.
    FileNotFoundError: a missing file, or a folder without ``tokenizer.json``.
  """
  tok = load_tokenizer(tokenizer)
  if tok.num_special_tokens_to_add(False) == 0:
    raise ValueError(
        "the tokenizer adds no special tokens (its post-processor is missing), so the encoder would get "
        "no [CLS]/<s> token to classify from; use the tokenizer.json of the model you fine-tune")
  padding = tok.padding
  if padding is not None:
    pad_id = padding["pad_id"]
  else:
    found = [tok.token_to_id(t) for t in PAD_TOKENS if tok.token_to_id(t) is not None]
    if not found:
      raise ValueError(f"the tokenizer has no padding settings and no pad token {' or '.join(PAD_TOKENS)} in "
                       f"its vocabulary; set one with tokenizer.enable_padding(pad_id=..., pad_token=...) and "
                       f"save it")
    pad_id = found[0]
  special = tok.num_special_tokens_to_add(True)
  if not isinstance(max_length, (int, np.integer)) or max_length <= special:
    raise ValueError(f"max_length={max_length!r} must be an integer above the {special} special tokens of "
                     f"a sentence pair (BERT and RoBERTa on GLUE use 128)")
  tok.no_truncation()
  tok.no_padding()
  return Encoder(tok, int(max_length), int(pad_id))


@dataclasses.dataclass(frozen=True, eq=False)
class TextSplit(pipeline.BatchedSplit):
  """One split of a text classification dataset, served as encoded batches (module docstring).

  Attributes:
    name: "train", "val" or "test".
    examples: random access to the examples; ``read(indices)`` returns the
      ``(first, second)`` texts and the integer labels.
    encoder: how texts become token ids (:func:`encoder`).
    pairs: whether the examples are sentence pairs.
    source_indices: for each example, its index in the underlying source
      (the tfds split), for provenance.
    num_threads: grain read threads (0 = read in the calling thread).
  """
  name: str
  examples: pipeline.Examples
  encoder: Encoder
  pairs: bool
  source_indices: np.ndarray
  num_threads: int = 0
  always_augment = False   # not a field: text is never augmented

  @property
  def max_length(self) -> int:
    return self.encoder.max_length

  def _read_batch(self, slots: np.ndarray, key: tuple[int, ...] | None) -> pipeline.Batch:
    """Reads and encodes one batch; ``-1`` slots become masked empty texts."""
    del key   # no augmentation
    mask = slots >= 0
    empty: TextPair = ("", "" if self.pairs else None)
    texts = [empty] * len(slots)
    label = np.zeros(len(slots), np.int32)
    if mask.any():
      read, labels = self.examples.read(slots[mask])
      for row, pair in zip(np.flatnonzero(mask), read):
        texts[row] = pair
      label[mask] = labels
    return {**self.encoder(texts, pairs=self.pairs), "label": label, "mask": mask}

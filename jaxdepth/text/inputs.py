"""What a text spec takes as input, and how it is checked.

A spec that :func:`~jaxdepth.text.nodes.takes_token_ids` is called with either
the token ids alone, an int array ``(B, L)``, or a dict of per-token arrays::

    {"input_ids":      int (B, L),     # required
     "attention_mask": int/bool (B, L) # 1 real token, 0 padding; default all 1
     "token_type_ids": int (B, L)}     # segment of each token; default all 0

with ``L`` the spec's ``input_shape[0]``. These are the keys of Hugging Face's
tokenizers and of the text data pipeline's batches (which also carry
``label`` and ``mask``; :func:`jaxdepth.network.batch_inputs` picks the three
above out of a batch).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from jaxdepth import spec as S

__all__ = ["TEXT_INPUTS", "split_text_input", "check_token_inputs", "check_vocabulary",
           "example_text_input", "random_text_input"]

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _is_int(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.integer)


def split_text_input(spec: S.Spec, x) -> tuple[jnp.ndarray, dict]:
  """``(input_ids, {"attention_mask": ..., "token_type_ids": ...})`` of a call's input.

  Args:
    spec: a spec that reads token ids.
    x: the ids ``(B, L)`` or a dict with ``input_ids`` and optionally
      ``attention_mask`` and ``token_type_ids`` (see the module docstring).

  Returns:
    The ids and the side inputs that were given, every array ``(B, L)``.

  Raises:
    TypeError: an input that is not an array (a tokenizer's lists), named.
    ValueError: a missing ``input_ids``, an unknown key, a shape that is not
      ``(B, L)`` or ids that are not integers, each named.
  """
  if isinstance(x, Mapping):
    unknown = sorted(set(x) - set(TEXT_INPUTS))
    if unknown:
      raise ValueError(f"spec {spec.name!r} reads {list(TEXT_INPUTS)}; the input also has "
                       f"{unknown} (pass jaxdepth.network.batch_inputs(spec, batch), not the "
                       f"whole batch)")
    if "input_ids" not in x:
      raise ValueError(f"spec {spec.name!r} reads token ids: the input dict needs "
                       f"'input_ids', got keys {sorted(x)}")
    ids = x["input_ids"]
    side = {k: x[k] for k in TEXT_INPUTS[1:] if k in x and x[k] is not None}
  else:
    ids, side = x, {}
  for key, value in {"input_ids": ids, **side}.items():
    if not hasattr(value, "shape"):   # a tokenizer's lists (called without return_tensors)
      raise TypeError(f"{key} must be an array (B, L), got a {type(value).__name__}: convert it "
                      f"with np.asarray(value, np.int32), or call the tokenizer with "
                      f"return_tensors='np'")
  expected = tuple(spec.input_shape)
  if jnp.ndim(ids) != 2 or tuple(jnp.shape(ids)[1:]) != expected:
    raise ValueError(f"input_ids of shape {tuple(jnp.shape(ids))} do not match spec "
                     f"{spec.name!r}: expected (batch, {expected[0]}), token ids padded to the "
                     f"spec's sequence length")
  if not _is_int(ids):
    raise ValueError(f"input_ids must be integer token ids, got dtype {jnp.result_type(ids)}")
  for key, value in side.items():
    if tuple(jnp.shape(value)) != tuple(jnp.shape(ids)):
      raise ValueError(f"{key} of shape {tuple(jnp.shape(value))} does not match input_ids "
                       f"of shape {tuple(jnp.shape(ids))}")
  if "token_type_ids" in side and not _is_int(side["token_type_ids"]):
    raise ValueError(f"token_type_ids must be integers, got dtype "
                     f"{jnp.result_type(side['token_type_ids'])}")
  return ids, side


def check_token_inputs(token_inputs, batch: int) -> dict:
  """The per-token inputs given beside hidden states (``forward(token_inputs=...)``), checked.

  Raises:
    ValueError: not a dict of :data:`TEXT_INPUTS` keys, or an array that is not
      ``(batch, L)`` like the others.
  """
  if not isinstance(token_inputs, Mapping):
    raise ValueError(f"token_inputs must be a dict with keys among {list(TEXT_INPUTS)}, got "
                     f"{type(token_inputs).__name__}")
  unknown = sorted(set(token_inputs) - set(TEXT_INPUTS))
  if unknown:
    raise ValueError(f"token_inputs has keys {unknown}; expected keys among {list(TEXT_INPUTS)}")
  out = {k: v for k, v in token_inputs.items() if v is not None}
  shapes = {k: tuple(jnp.shape(v)) for k, v in out.items()}
  if any(len(s) != 2 or s[0] != batch for s in shapes.values()) or len(set(shapes.values())) > 1:
    raise ValueError(f"token_inputs must all be (batch, L) with the input's batch {batch}, got "
                     f"{shapes}")
  return out


def check_vocabulary(spec: S.Spec, data) -> None:
  """Refuses data whose tokenizer gives token ids (or token types) past ``spec``'s tables.

  An id outside an embedding table reads a row of NaNs (a compiled step cannot
  raise), so a tokenizer with a larger vocabulary than the model's would only show
  as a NaN loss at the first step. ``data`` is a dataset (its train split is read)
  or one split; a spec that does not read token ids, or data without a tokenizer
  (``split.encoder``), passes.

  Raises:
    ValueError: the tokenizer has more tokens than the model's ``vocab_size``, or
      its sentence pairs give token types past a ``type_vocab_size``.
  """
  from jaxdepth.text.nodes import (   # pylint: disable=import-outside-toplevel
      TokenTypeEmbedding, first_token_embedding)
  embedding = first_token_embedding(spec)
  split = getattr(data, "train", data)
  encoder = getattr(split, "encoder", None)
  tokenizer = getattr(encoder, "tokenizer", None)
  if embedding is None or tokenizer is None:
    return
  vocab = tokenizer.get_vocab_size(with_added_tokens=True)
  if vocab > embedding.vocab_size:
    raise ValueError(
        f"the tokenizer has {vocab} tokens, but spec {spec.name!r} embeds "
        f"{embedding.vocab_size} (vocab_size of {embedding.name!r}): ids from "
        f"{embedding.vocab_size} on would read NaN rows and the loss would be NaN at the first "
        f"step; use the model's own tokenizer, or a model whose vocab_size is at least {vocab}")
  if not getattr(split, "pairs", False):
    return
  types = int(np.max(encoder([("a", "a")], pairs=True)["token_type_ids"])) + 1
  for path, node in spec.walk():
    if isinstance(node, TokenTypeEmbedding) and node.type_vocab_size < types:
      raise ValueError(
          f"the tokenizer gives sentence pairs {types} token types, but spec {spec.name!r} "
          f"embeds {node.type_vocab_size} (type_vocab_size of {path!r}): the second sentence's "
          f"tokens would read NaN rows and the loss would be NaN at the first step; use the "
          f"model's own tokenizer, or a model whose type_vocab_size is at least {types}")


def example_text_input(spec: S.Spec, batch: int = 1) -> dict[str, np.ndarray]:
  """A batch of ``batch`` all-zero token sequences for ``spec`` (every token real)."""
  shape = (batch, *spec.input_shape)
  return {"input_ids": np.zeros(shape, np.int32), "attention_mask": np.ones(shape, np.int32),
          "token_type_ids": np.zeros(shape, np.int32)}


def random_text_input(spec: S.Spec, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """``batch`` sequences of token ids drawn uniformly from ``spec``'s vocabulary,
  every token real, all of type 0 (for timings and checks)."""
  from jaxdepth.text.nodes import first_token_embedding   # pylint: disable=import-outside-toplevel
  out = example_text_input(spec, batch)
  vocab = first_token_embedding(spec).vocab_size
  out["input_ids"] = np.random.default_rng(seed).integers(0, vocab, out["input_ids"].shape,
                                                          dtype=np.int32)
  return out

"""GLUE SST-2, RTE and QNLI from tfds (``glue/sst2``, ``glue/rte``, ``glue/qnli``), tokenized for BERT-like encoders.

Recipes (``docs/data.md``):

* inputs: SST-2 a sentence (``sentence``); RTE a pair (``sentence1``,
  ``sentence2``); QNLI a pair (``question``, ``sentence``). Pairs are encoded
  as pairs (:mod:`.text`): ``[CLS] A [SEP] B [SEP]`` for BERT.
* labels: SST-2 0 negative, 1 positive; RTE and QNLI 0 entailment,
  1 not_entailment.
* splits (TLC's convention): train and validation are a 90/10 split of GLUE's
  ``train`` (``val_fraction``, seeded by ``split_seed``); test is GLUE's
  ``validation`` split, since GLUE's test labels are not public.
* tokens: the user's Hugging Face tokenizer (``tokenizer.json`` or the model
  folder holding it), sequences of ``max_length`` tokens (128 by default).

Like the image recipes of :mod:`.tfds_source`, the data must be prepared
beforehand in the ArrayRecord format (``tfds build glue/sst2
--file_format=array_record``); nothing is downloaded, and a missing tokenizer
or missing files fail at once, saying what to do.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxdepth._optional import require
from jaxdepth.data import pipeline, text, tfds_source


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Which features of a GLUE task are its texts, and its label names."""
  text_features: tuple[str, ...]   # one (a sentence) or two (a pair)
  class_names: tuple[str, ...]


_ENTAILMENT = ("entailment", "not_entailment")
RECIPES = {
    "glue/sst2": Recipe(("sentence",), ("negative", "positive")),
    "glue/rte": Recipe(("sentence1", "sentence2"), _ENTAILMENT),
    "glue/qnli": Recipe(("question", "sentence"), _ENTAILMENT),
}


def _fetcher(source: Any, positions: np.ndarray, features: tuple[str, ...], name: str,
             data_dir: str | None):
  """Reads example ``positions[i]`` of a tfds source as ((first, second or None), label); a
  file that cannot be read is a :class:`DatasetNotPrepared` naming it."""
  def fetch(i: int) -> tuple[text.TextPair, int]:
    example = tfds_source.read_example(source, int(positions[i]), name, data_dir)
    texts = [text.as_text(example[f]) for f in features]
    return (texts[0], texts[1] if len(texts) > 1 else None), int(example["label"])
  return fetch


def load(name: str, *, tokenizer: Any = None, max_length: int = text.DEFAULT_MAX_LENGTH,
         data_dir: str | None = None, val_fraction: float = 0.1, split_seed: int = 0) -> pipeline.Dataset:
  """Loads a GLUE task with the recipe in the module docstring.

  Args:
    name: a key of :data:`RECIPES`.
    tokenizer: a ``tokenizer.json`` path, a model folder holding one, or a
      ``tokenizers.Tokenizer`` (:func:`jaxdepth.data.text.load_tokenizer`).
    max_length: tokens per sequence, special tokens included.
    data_dir: where the prepared ArrayRecord files are (tfds' default if None).
    val_fraction: share of GLUE's train held out for validation (0: no validation
      split; a share that rounds to no example is refused).
    split_seed: seeds that hold-out.

  Returns:
    A :class:`pipeline.Dataset` of :class:`text.TextSplit` with input shape
    ``(max_length,)`` and the task's ``class_names``.

  Raises:
    ValueError: no tokenizer, a bad tokenizer or a bad argument.
    FileNotFoundError: the tokenizer file or folder does not exist.
    DatasetNotPrepared: the files are not under ``data_dir``.
  """
  recipe = RECIPES[name]
  pipeline.check_fraction("val_fraction", val_fraction)
  encoder = text.encoder(tokenizer, max_length)
  require("tensorflow_datasets.text.glue", "data", "GLUE datasets")   # registers the builder with tfds
  train_source = tfds_source.open_source(name, "train", data_dir)
  test_source = tfds_source.open_source(name, "validation", data_dir)
  train_positions, val_positions = pipeline.validation_holdout(
      len(train_source), val_fraction, seed=split_seed, of=f"examples of {name}'s train split")
  pairs = len(recipe.text_features) == 2

  def split(split_name: str, source: Any, positions: np.ndarray) -> text.TextSplit:
    fetch = _fetcher(source, positions, recipe.text_features, name, data_dir)
    examples = pipeline.IndexedExamples(len(positions), fetch)
    return text.TextSplit(split_name, examples, encoder, pairs, positions,
                          num_threads=pipeline.default_threads())

  return pipeline.Dataset(
      name=name, train=split("train", train_source, train_positions),
      val=split("val", train_source, val_positions) if len(val_positions) else None,
      test=split("test", test_source, np.arange(len(test_source))),
      num_classes=len(recipe.class_names), input_shape=(encoder.max_length,),
      class_names=recipe.class_names)

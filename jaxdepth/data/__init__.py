"""Input pipelines: datasets as train/val/test splits served in deterministic, resumable batches.

    from jaxdepth import data
    ds = data.load("digits")                      # offline, real data
    for batch in ds.train.batches(64, seed=0, epoch=3, shuffle=True, augment=True):
      batch["image"], batch["label"], batch["mask"]   # float32 NHWC, int32, bool

Names (:func:`names`): ``digits`` (:mod:`.digits`, scikit-learn, no network);
``cifar10``, ``cifar100``, ``oxford_flowers102``, ``dtd`` (:mod:`.tfds_source`,
prepared ArrayRecord files, never downloaded); ``folder:<path>``
(:mod:`.folders`); the text tasks ``glue/sst2``, ``glue/rte``, ``glue/qnli``
(:mod:`.glue`, with the user's tokenizer; batches of token ids, :mod:`.text`)::

    ds = data.load("glue/rte", tokenizer="path/to/model_folder")   # holds tokenizer.json
    batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]   # int32 (B, 128)

Batches are pure functions of ``(seed, epoch)`` and the
example indices (:mod:`.pipeline`), so resuming at ``(epoch, start_batch)`` and
sharding over processes reproduce an uninterrupted single-process run.
"""
from __future__ import annotations

import numpy as np

from jaxdepth.data import augment, digits, folders, glue, pipeline, rng, text, tfds_source
from jaxdepth.data.augment import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from jaxdepth.data.folders import UnreadableImageError
from jaxdepth.data.pipeline import Batch, BatchedSplit, Dataset, DatasetNotPrepared, Split
from jaxdepth.data.text import TextSplit

FOLDER_PREFIX = "folder:"

__all__ = [
    "Batch", "BatchedSplit", "CIFAR_MEAN", "CIFAR_STD", "Dataset", "DatasetNotPrepared", "IMAGENET_MEAN",
    "IMAGENET_STD", "Split", "TextSplit", "UnreadableImageError", "default_normalization", "image_folder",
    "load", "names",
]


def names() -> tuple[str, ...]:
  """The dataset names :func:`load` knows, plus ``"folder:<path>"`` for image folders."""
  return ("digits",) + tuple(tfds_source.RECIPES) + tuple(glue.RECIPES) + (FOLDER_PREFIX + "<path>",)


def default_normalization(name: str) -> str | None:
  """The normalisation :func:`load` gives ``name`` when ``normalization=None``: ``"train"``
  (the train split's statistics) for the digits, ``"imagenet"`` for the tfds datasets and
  image folders, ``None`` for the text tasks (token ids are not normalised)."""
  if name == "digits":
    return "train"
  return None if name in glue.RECIPES else "imagenet"


def image_folder(path, *, layout: str = "auto", val_fraction: float = 0.1, split_seed: int = 0,
                 val_augment: bool = False, image_size: int | None = None) -> Dataset:
  """An image-folder dataset (layouts "splits", "domains", "classes"; see :mod:`.folders`)."""
  return folders.load(path, layout=layout, val_fraction=val_fraction, split_seed=split_seed,
                            val_augment=val_augment, image_size=image_size)


def load(name: str, *, data_dir: str | None = None, val_fraction: float = 0.1, split_seed: int = 0,
         val_augment: bool = False, image_size: int | None = None, normalization: str | None = None,
         tokenizer=None, max_length: int = text.DEFAULT_MAX_LENGTH, layout: str | None = None) -> Dataset:
  """Loads a dataset by name.

  Args:
    name: one of :func:`names`; ``"folder:<path>"`` loads an image folder.
    data_dir: tfds data directory holding the prepared ArrayRecord files (``~`` is expanded).
    val_fraction: the share held out for validation where the dataset has no
      official validation split (0 = no validation split; a positive share that
      rounds to no example is refused). It is a share of: ``digits``' 1,438
      non-test images; the tfds ``train`` split of ``cifar10``/``cifar100``
      and of the GLUE tasks; for image folders, of ``train/``'s images in the
      "splits" layout without a ``val/`` that serves as validation, and of all
      images in the "domains" and "classes" layouts (beside 10 % for test).
      Unused by ``oxford_flowers102``, ``dtd`` and "splits" folders with
      ``val/`` and ``test/``: their validation split is their own.
    split_seed: seeds that hold-out (and the test share of "domains"/"classes" folders).
    val_augment: the validation split keeps the training augmentation (the
      official EASIER/LaCoOT/TLC code's quirk); off by default.
    image_size: output side for datasets of variable image size (default 224).
    normalization: tfds only: "imagenet" (default) or "cifar" (EGP's CIFAR
      statistics); digits use their train statistics, folders ImageNet's.
    tokenizer: text datasets only (and required there): a Hugging Face
      ``tokenizer.json``, the model folder holding it, or a ``tokenizers.Tokenizer``.
    max_length: text datasets only: tokens per sequence (128 by default).
    layout: image folders only: "splits", "domains" or "classes" (:mod:`.folders`);
      default: detected from the folder, refused (ValueError) where two layouts
      fit it equally (:func:`.folders.detect_layout`).

  Returns:
    A :class:`Dataset`.

  Raises:
    ValueError: unknown name or bad argument (``val_fraction`` not a number in
      [0, 1), ``split_seed`` not an integer, ``image_size`` not a positive
      integer or None); a text dataset without tokenizer.
    FileNotFoundError: a tokenizer path that does not exist.
    DatasetNotPrepared: a tfds dataset whose files are not all under
      ``data_dir`` (a missing, empty or cut-short shard file included).
  """
  pipeline.check_fraction("val_fraction", val_fraction)
  if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)):
    raise ValueError(f"split_seed={split_seed!r} must be an integer")
  if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                 or image_size <= 0):
    raise ValueError(f"image_size={image_size!r} must be a positive integer (or None for the dataset's default)")
  if name in glue.RECIPES:
    image_options = {"val_augment": val_augment, "image_size": image_size, "normalization": normalization,
                     "layout": layout}
    given = [k for k, v in image_options.items() if v not in (None, False)]
    if given:
      raise ValueError(f"{name} is a text dataset: {', '.join(given)} only applies to image datasets")
    return glue.load(name, tokenizer=tokenizer, max_length=max_length, data_dir=data_dir,
                     val_fraction=val_fraction, split_seed=split_seed)
  if tokenizer is not None or max_length != text.DEFAULT_MAX_LENGTH:
    raise ValueError(f"tokenizer and max_length apply to the text datasets ({', '.join(glue.RECIPES)}) "
                     f"only, not to {name!r}")
  if name.startswith(FOLDER_PREFIX):
    if normalization not in (None, "imagenet"):
      raise ValueError(f"image folders use ImageNet normalisation; got normalization={normalization!r}")
    return image_folder(name[len(FOLDER_PREFIX):], layout="auto" if layout is None else layout,
                        val_fraction=val_fraction, split_seed=split_seed, val_augment=val_augment,
                        image_size=image_size)
  if layout is not None:
    raise ValueError(f"layout applies to image folders ({FOLDER_PREFIX}<path>) only, not to {name!r}")
  if name == "digits":
    return digits.load(val_fraction=val_fraction, split_seed=split_seed, val_augment=val_augment,
                       image_size=image_size, normalization=normalization)
  if name in tfds_source.RECIPES:
    return tfds_source.load(name, data_dir=data_dir, val_fraction=val_fraction, split_seed=split_seed,
                            val_augment=val_augment, image_size=image_size, normalization=normalization)
  raise ValueError(f"unknown dataset {name!r}; known: {', '.join(names())}")

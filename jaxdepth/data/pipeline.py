"""Splits and their batches: the epoch order, padding, process sharding and resumption.

A :class:`Split` is a set of images that can be read by index, a
preprocessing recipe (:mod:`augment`) and a normalisation; a
:class:`jaxdepth.data.text.TextSplit` is a set of texts and a tokenizer. Both
serve batches through :meth:`BatchedSplit.batches`, a pure function of its
arguments:

* the order of epoch ``e`` is ``arange(n)``, or with ``shuffle`` the permutation
  keyed by ``(seed, e)`` (:func:`rng.permutation`);
* the global batch ``b`` holds positions ``[b G, (b + 1) G)`` of that order,
  ``G = batch_size * process_count``; without ``drop_remainder`` the last one
  is padded to ``G`` with ``mask = False`` (label 0; image 0, or for text the
  encoding of an empty text);
* process ``p`` receives the slice ``[p B, (p + 1) B)`` of every global batch,
  so the processes' batches are disjoint and together make the global batch;
* example ``i`` is augmented with the uniforms keyed by ``(seed, e, i)``.

So a run resumed at ``(epoch, start_batch)`` sees exactly the batches an
uninterrupted run saw, whatever the number of processes. Batches are produced
by a ``grain.MapDataset`` over the batch plan (threaded prefetch for sources
that read files; in-thread for in-memory arrays).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from jaxdepth._optional import require
from jaxdepth.data import augment, rng

Batch = dict[str, np.ndarray]


class DatasetNotPrepared(RuntimeError):
  """A dataset's files are not on disk; the message says how to prepare them."""


class Examples(Protocol):
  """Random access to a split's raw examples."""

  def __len__(self) -> int: ...

  def read(self, indices: np.ndarray) -> tuple[Sequence | np.ndarray, np.ndarray]:
    """The inputs and integer labels of ``indices``.

    Inputs are images (uint8 in [0, 255] or float in [0, 1], HWC) for a
    :class:`Split`, ``(first, second)`` texts (``second`` None for single
    sentences) for a :class:`jaxdepth.data.text.TextSplit`.
    """


class Preprocess(Protocol):
  """A preprocessing recipe (:mod:`augment`): deterministic for evaluation, driven by uniforms for training."""
  num_uniforms: int

  def evaluate(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """The evaluation view of a batch, stacked ``(k, H, W, C)``."""

  def train(self, images: Sequence[np.ndarray] | np.ndarray, u: np.ndarray) -> np.ndarray:
    """The augmented batch, from ``u``: ``(k, num_uniforms)`` uniforms, one row per example."""


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayExamples:
  """Examples held in memory as one ``(N, H, W, C)`` array."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]


@dataclasses.dataclass(frozen=True, eq=False)
class IndexedExamples:
  """Examples fetched one at a time by a function of their index (files, tfds sources).

  ``fetch(i)`` returns ``(input, label)``: an image, or a text pair.
  """
  num_examples: int
  fetch: Callable[[int], tuple[Any, int]]

  def __len__(self) -> int:
    return self.num_examples

  def read(self, indices: np.ndarray) -> tuple[list[Any], np.ndarray]:
    pairs = [self.fetch(int(i)) for i in indices]
    return [p[0] for p in pairs], np.asarray([p[1] for p in pairs], np.int64)


def epoch_order(num_examples: int, *, seed: int, epoch: int, shuffle: bool, salt: int = 0) -> np.ndarray:
  """The example indices of one epoch in the order they are served."""
  if not shuffle:
    return np.arange(num_examples, dtype=np.int64)
  return rng.permutation(num_examples, (seed, epoch, salt, 0x5EED))


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool, process_count: int = 1) -> int:
  """Global batches in an epoch of ``num_examples`` with ``batch_size`` per process."""
  _check_positive(batch_size=batch_size, process_count=process_count)
  global_size = batch_size * process_count
  return num_examples // global_size if drop_remainder else math.ceil(num_examples / global_size)


def batch_plan(order: np.ndarray, batch_size: int, *, drop_remainder: bool, process_index: int = 0,
               process_count: int = 1) -> np.ndarray:
  """This process's example indices, one row per batch, ``-1`` marking padding.

  Args:
    order: the epoch's example indices (:func:`epoch_order`).
    batch_size: examples per batch per process.
    drop_remainder: drop the last incomplete global batch instead of padding it.
    process_index, process_count: this process and how many share each global batch.

  Returns:
    ``int64`` array ``(num_batches, batch_size)``.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
  count = num_batches(len(order), batch_size, drop_remainder=drop_remainder, process_count=process_count)
  global_size = batch_size * process_count
  slots = np.full(count * global_size, -1, np.int64)
  used = min(len(order), len(slots))
  slots[:used] = order[:used]
  slots = slots.reshape(count, process_count, batch_size)
  return slots[:, process_index]


class BatchedSplit:
  """What every split shares: the epoch order, the batch plan, resumption and grain's reading.

  A subclass (a frozen dataclass) has ``name``, ``examples`` (anything with a
  ``len``), ``always_augment`` and ``num_threads``, and reads one batch with
  ``_read_batch(slots, key)``: ``slots`` the example indices of the batch
  (``-1`` for padding), ``key`` the augmentation key ``(seed, epoch, salt)``
  or None. :class:`Split` serves images, :class:`jaxdepth.data.text.TextSplit`
  tokenized text.
  """
  name: str
  examples: Examples
  always_augment: bool
  num_threads: int

  @property
  def num_examples(self) -> int:
    return len(self.examples)

  def __len__(self) -> int:
    return self.num_examples

  def num_batches(self, batch_size: int, *, drop_remainder: bool, process_count: int = 1) -> int:
    """Batches per epoch (global batches, ``batch_size`` per process)."""
    return num_batches(self.num_examples, batch_size, drop_remainder=drop_remainder, process_count=process_count)

  def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = False,
              augment: bool = False, drop_remainder: bool = False, start_batch: int = 0,
              process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """The batches of one epoch, from ``start_batch`` on.

    Args:
      batch_size: examples per batch on this process.
      seed, epoch: key of the order and of the augmentation.
      shuffle: serve the epoch in a random order keyed by ``(seed, epoch)``.
      augment: apply the training augmentation (always on if ``always_augment``;
        a split without augmentation ignores it).
      drop_remainder: drop the last incomplete global batch instead of padding it.
      start_batch: index of the first batch to serve (to resume an epoch).
      process_index, process_count: this process's share of every global batch.

    Returns:
      An iterator of dicts of arrays with a leading batch axis ``B``: the
      split's inputs (images: ``"image"`` float32 ``(B, H, W, C)``; text: see
      :class:`jaxdepth.data.text.TextSplit`), ``"label"`` int32 ``(B,)`` and
      ``"mask"`` bool ``(B,)``; padded slots have ``mask = False``.
    """
    plan = batch_plan(epoch_order(self.num_examples, seed=seed, epoch=epoch, shuffle=shuffle, salt=self._salt),
                      batch_size, drop_remainder=drop_remainder, process_index=process_index,
                      process_count=process_count)
    if not 0 <= start_batch <= len(plan):
      raise ValueError(f"start_batch={start_batch} must be in [0, {len(plan)}] (batches in this epoch)")
    key = (seed, epoch, self._salt) if (augment or self.always_augment) else None
    grain = require("grain", "data", "serving batches")
    dataset = grain.MapDataset.source(plan[start_batch:]).map(lambda slots: self._read_batch(slots, key))
    if self.num_threads:
      threads = min(self.num_threads, len(dataset)) or 1
      return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))
    return (dataset[i] for i in range(len(dataset)))

  @property
  def _salt(self) -> int:
    return zlib.crc32(self.name.encode())

  def _read_batch(self, slots: np.ndarray, key: tuple[int, ...] | None) -> Batch:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True, eq=False)
class Split(BatchedSplit):
  """One split of an image dataset (train, val or test) and how to serve it in batches.

  Batches (:meth:`BatchedSplit.batches`) are ``{"image": float32 (B, H, W, C),
  "label": int32 (B,), "mask": bool (B,)}``.

  Attributes:
    name: "train", "val" or "test".
    examples: random access to the raw examples (:class:`Examples`).
    recipe: preprocessing with ``evaluate(images)`` and ``train(images, u)``
      (:mod:`augment`).
    mean, std: per-channel normalisation of images in [0, 1].
    image_shape: ``(H, W, C)`` of the served images.
    source_indices: for each example, its index in the underlying source
      (sklearn's array, the tfds split, the sorted file list), for provenance.
    always_augment: apply the training augmentation even when ``augment=False``
      (the official code's validation quirk, ``load(..., val_augment=True)``).
    num_threads: grain read threads (0 = read in the calling thread).
    content_digest: a digest of the examples themselves (images and labels), for
      in-memory arrays whose ``source_indices`` say nothing of what they hold
      (:meth:`Dataset.from_arrays`; :func:`content_digest`); None for the others.
  """
  name: str
  examples: Examples
  recipe: Preprocess
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_shape: tuple[int, int, int]
  source_indices: np.ndarray
  always_augment: bool = False
  num_threads: int = 0
  content_digest: str | None = None

  def _read_batch(self, slots: np.ndarray, key: tuple[int, ...] | None) -> Batch:
    """Reads, preprocesses and normalises one batch; ``-1`` slots become masked padding."""
    mask = slots >= 0
    indices = slots[mask]
    image = np.zeros((len(slots),) + tuple(self.image_shape), np.float32)
    label = np.zeros(len(slots), np.int32)
    if len(indices):
      images, labels = self.examples.read(indices)
      if key is None:
        images = self.recipe.evaluate(images)
      else:
        images = self.recipe.train(images, rng.uniforms(key, indices, self.recipe.num_uniforms))
      image[mask] = augment.normalize(images, self.mean, self.std)
      label[mask] = labels
    return {"image": image, "label": label, "mask": mask}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A dataset ready for training: its splits and what a model needs to know.

  Attributes:
    name: the name it was loaded by.
    train, val, test: the splits (``val`` is None when ``val_fraction=0`` and
      the dataset has no official validation split).
    num_classes: number of labels.
    input_shape: the shape of one served example: ``(H, W, C)`` of the images,
      or ``(max_length,)`` of the token sequences of a text dataset.
    class_names: label names where known (image folders, GLUE), else None.
  """
  name: str
  train: BatchedSplit
  val: BatchedSplit | None
  test: BatchedSplit
  num_classes: int
  input_shape: tuple[int, ...]
  class_names: tuple[str, ...] | None = None

  @classmethod
  def from_arrays(cls, *, train, test, val=None, name: str = "arrays",
                  num_classes: int | None = None, val_fraction: float = 0.0,
                  split_seed: int = 0, augment: Preprocess | None = None,
                  normalization="train", class_names=None) -> "Dataset":
    """A dataset from one's own in-memory arrays, served like the built-in ones.

    Example::

        ds = Dataset.from_arrays(train=(x_train, y_train), test=(x_test, y_test),
                                 val_fraction=0.1, augment=augment.PadCropFlip(pad=4))

    Args:
      train, test: ``(images, labels)``: images ``(N, H, W, C)`` (or ``(N, H, W)``,
        one channel), uint8 in [0, 255] or float in [0, 1]; labels ``(N,)``
        integers in ``[0, num_classes)``. Images 1 or 3 pixels high with other
        than 1, 3 or 4 channels are refused as PyTorch's ``(N, C, H, W)``.
      val: ``(images, labels)`` of a validation split, or ``None``.
      name: the dataset's name (part of a run's identity).
      num_classes: number of labels (default: the largest label + 1, with a
        warning when the train labels miss some of the classes below it).
      val_fraction: without ``val``, hold out this share of ``train`` for
        validation (seeded by ``split_seed``; 0 = no validation split); it
        must hold out at least one example and keep one.
      split_seed: seeds that hold-out.
      augment: the training augmentation, a recipe of :mod:`jaxdepth.data.augment`
        (e.g. ``PadCropFlip(pad=4)``); default none. It is tried on the first
        image of each split here, and the images it serves (both views) give
        ``input_shape`` (``ResizedCrop(size=8)`` serves 16x16 arrays as 8x8);
        the Pillow-based ``ResizedCrop`` (and ``ResizeFlip`` where it resizes)
        need uint8 images with 3 channels.
      normalization: ``"train"``: per-channel mean and std of the train images
        (in [0, 1]), a channel constant in them only centred (std 1, with a
        warning); ``(mean, std)``: given per-channel values; ``None``: none.
      class_names: optional label names.

    Returns:
      A :class:`Dataset` whose splits read the arrays in-thread. The arrays are
      not copied, except that ``val_fraction`` copies the train arrays into their
      two parts (and labels other than int64 are converted). Each split records a
      digest of its images and labels (``Split.content_digest``, hashed here once),
      so a run resumed on other arrays of the same sizes is refused.

    Raises:
      ValueError: arrays of the wrong shape (``(N, C, H, W)`` included), dtype, range (NaN included) or
        length, a label out of range, both ``val`` and ``val_fraction``, a
        ``val_fraction`` that holds out no example or keeps none, or an
        ``augment`` recipe that fails on the images or serves two shapes.
    """
    from jaxdepth.data import augment as augment_lib  # pylint: disable=import-outside-toplevel
    x_train, y_train = _checked_arrays("train", train)
    x_test, y_test = _checked_arrays("test", test)
    shape = x_train.shape[1:]
    if x_test.shape[1:] != shape:
      raise ValueError(f"test images have shape {x_test.shape[1:]}, train images {shape}; "
                       f"every split must have one image shape")
    if val is not None and val_fraction:
      raise ValueError("give either val=(images, labels) or val_fraction, not both")
    sources = {}   # split -> indices into the array it came from (default: all, in order)
    if val is not None:
      x_val, y_val = _checked_arrays("val", val)
      if x_val.shape[1:] != shape:
        raise ValueError(f"val images have shape {x_val.shape[1:]}, train images {shape}; "
                         f"every split must have one image shape")
    elif val_fraction:
      keep, held = validation_holdout(len(y_train), val_fraction, seed=split_seed, salt=2,
                                      of="train examples", alternative="val=(images, labels), ")
      x_val, y_val, x_train, y_train = x_train[held], y_train[held], x_train[keep], y_train[keep]
      sources = {"train": keep, "val": held}   # which of the given train examples each holds
    else:
      x_val = y_val = None
    labels = [y for y in (y_train, y_val, y_test) if y is not None]
    top = max(int(y.max()) for y in labels if len(y))
    if num_classes is None:
      _warn_missing_classes(y_train, top)
    num_classes = top + 1 if num_classes is None else num_classes
    _check_positive(num_classes=num_classes)
    if top >= num_classes:
      raise ValueError(f"label {top} is out of range for num_classes={num_classes}")
    if normalization == "train":
      unit = augment_lib.to_unit_range(x_train).astype(np.float64)
      mean = tuple(float(m) for m in unit.mean(axis=(0, 1, 2)))
      std = tuple(float(v) for v in unit.std(axis=(0, 1, 2)))
      for channel in [c for c, v in enumerate(std) if v < _CONSTANT_STD]:
        warnings.warn(f"channel {channel} is constant ({round(mean[channel], 6)}) in the train "
                      f"images: centred, not scaled (std 1); scaling by its std of {std[channel]:.3g} "
                      f"would blow any other value up. Drop the channel, or pass "
                      f"normalization=(mean, std)", UserWarning, stacklevel=2)
      std = tuple(1.0 if v < _CONSTANT_STD else v for v in std)
    elif normalization is None:
      mean, std = (0.0,) * shape[-1], (1.0,) * shape[-1]
    else:
      bad = ValueError(f"normalization must be 'train', None or (mean, std) with "
                       f"{shape[-1]} values each and std > 0, got {normalization!r}")
      try:
        mean, std = (tuple(float(v) for v in part) for part in normalization)
      except (TypeError, ValueError):
        raise bad from None
      if len(mean) != shape[-1] or len(std) != shape[-1] or min(std) <= 0:
        raise bad
    recipe = augment if augment is not None else augment_lib.PadCropFlip(pad=0, flip=False)
    served = _served_shape(recipe, "train", x_train)
    for split_name, x in (("val", x_val), ("test", x_test)):
      other = served if x is None else _served_shape(recipe, split_name, x)
      if other != served:
        raise ValueError(f"augment={recipe!r} serves {split_name} images as {other} but train "
                         f"images as {served}; every split must be served in one shape")

    def split(split_name, x, y):
      return Split(split_name, ArrayExamples(x, y), recipe, mean, std, served,
                   sources.get(split_name, np.arange(len(y))),
                   content_digest=content_digest(x, y))   # hashed once, here

    return cls(name=name, train=split("train", x_train, y_train),
               val=None if x_val is None else split("val", x_val, y_val),
               test=split("test", x_test, y_test), num_classes=num_classes,
               input_shape=served,
               class_names=None if class_names is None else tuple(class_names))


_CONSTANT_STD = 1e-6   # a train std below this (pixels in [0, 1]) is a constant channel


def content_digest(images: np.ndarray, labels: np.ndarray) -> str:
  """A short sha256 digest of in-memory examples: the images' dtype, shape and bytes and
  the labels as int64 (what :meth:`Dataset.from_arrays` records of each split)."""
  h = hashlib.sha256(f"{np.dtype(images.dtype).str}{tuple(images.shape)}".encode())
  h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
  h.update(memoryview(np.ascontiguousarray(labels, np.int64)).cast("B"))
  return h.hexdigest()[:16]


def _warn_missing_classes(y_train: np.ndarray, top: int) -> None:
  """Warns when the train labels, whose largest gives ``num_classes``, miss some of ``0..top``
  (1-based labels make class 0 a class that never occurs)."""
  missing = np.setdiff1d(np.arange(top + 1), y_train)
  if not len(missing):
    return
  named = ", ".join(str(int(c)) for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
  hint = (f"labels 1..{top}? subtract 1, or pass num_classes" if missing[0] == 0 else
          "pass num_classes if there are more classes, or map the labels to 0..K-1")
  s = "" if len(missing) == 1 else "es"
  warnings.warn(f"class{s} {named} never occur{'s' if len(missing) == 1 else ''} in the train "
                f"labels, whose largest, {top}, makes num_classes={top + 1}: {hint}",
                UserWarning, stacklevel=3)


def _checked_arrays(split: str, pair) -> tuple[np.ndarray, np.ndarray]:
  """``(images (N, H, W, C), labels (N,) int64)`` of one split, or a clear error."""
  if not isinstance(pair, (tuple, list)) or len(pair) != 2:
    raise ValueError(f"{split} must be a pair (images, labels), got {type(pair).__name__}")
  x, y = np.asarray(pair[0]), np.asarray(pair[1])
  if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3, 4):
    raise ValueError(f"{split} images of shape {x.shape} look like PyTorch's (N, C, H, W) layout; "
                     f"pass (N, H, W, C) images: x.transpose(0, 2, 3, 1)")
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(f"{split} images must be (N, H, W, C) or (N, H, W), got shape {x.shape}")
  if x.dtype != np.uint8:
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"{split} images must be uint8 in [0, 255] or float in [0, 1], got "
                       f"{x.dtype}")
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)   # NaN where a pixel is
    if math.isnan(low) or math.isnan(high):
      raise ValueError(f"{split} float images hold {int(np.isnan(x).sum())} NaN pixels; they must "
                       f"lie in [0, 1]: replace or drop those images")
    if low < 0.0 or high > 1.0:
      raise ValueError(f"{split} float images must lie in [0, 1], got [{low:.3g}, {high:.3g}]; "
                       f"divide by the maximum (or pass uint8)")
  if y.ndim != 1 or len(y) != len(x):
    if y.ndim == 2 and len(y) == len(x) and y.shape[1] > 1:
      hint = ": one-hot labels? pass labels.argmax(-1)"
    elif y.ndim == 2 and len(y) == len(x) and y.shape[1] == 1:
      hint = ": pass labels[:, 0]"
    else:
      hint = ""
    raise ValueError(f"{split} labels must be (N,) with N = {len(x)} images, got shape "
                     f"{y.shape}{hint}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{split} labels must be integers, got {y.dtype}")
  if len(y) == 0:
    raise ValueError(f"{split} holds no example")
  if int(y.min()) < 0:
    raise ValueError(f"{split} labels must be >= 0, got {int(y.min())}")
  return x, y.astype(np.int64)


def _served_shape(recipe: Preprocess, split: str, x: np.ndarray) -> tuple[int, int, int]:
  """``(H, W, C)`` of the images ``recipe`` serves from ``x``'s first image, for evaluation and
  training alike (else a ValueError that says why), so that a recipe the arrays cannot feed
  fails here and not at the first batch."""
  try:
    views = {"evaluation": np.asarray(recipe.evaluate(x[:1])),
             "training": np.asarray(recipe.train(x[:1], np.full((1, recipe.num_uniforms), 0.5)))}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"augment={recipe!r} fails on the {split} images ({x.dtype}, {x.shape[1:]}): "
        f"{type(e).__name__}: {e}. Pillow-based recipes (ResizedCrop; ResizeFlip where it "
        f"resizes) need uint8 images with 3 channels: convert the arrays, or use PadCropFlip"
    ) from e
  shapes = {view: image.shape for view, image in views.items()}
  if len(set(shapes.values())) > 1 or len(shapes["training"]) != 4 or shapes["training"][0] != 1:
    raise ValueError(f"augment={recipe!r} serves one {split} image of {x.shape[1:]} as {shapes}; "
                     f"a recipe must serve (1, H, W, C) with one H, W, C for both views")
  if shapes["training"][-1] != x.shape[-1]:
    raise ValueError(f"augment={recipe!r} turns the {x.shape[-1]} channels of the {split} "
                     f"images into {shapes['training'][-1]}; it must keep the channels")
  return tuple(int(d) for d in shapes["training"][1:])


def holdout(num_examples: int, fraction: float, *, seed: int, salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Splits ``range(num_examples)`` into (kept, held out) by a seeded permutation.

  ``round(fraction * num_examples)`` indices are held out (torch ``random_split``
  with lengths ``[n - k, k]``); both parts are returned sorted.
  """
  check_fraction("val_fraction", fraction)
  held = int(round(fraction * num_examples))
  order = rng.permutation(num_examples, (seed, salt, 0x5B11))
  return np.sort(order[:num_examples - held]), np.sort(order[num_examples - held:])


def validation_holdout(num_examples: int, fraction: float, *, seed: int, salt: int = 0,
                       of: str = "train examples", alternative: str = "") -> tuple[np.ndarray, np.ndarray]:
  """:func:`holdout` of a validation split, refusing a positive ``fraction`` that holds out no
  example (it would silently mean no validation split) or keeps none to train on.

  ``of`` names the ``num_examples`` in the message ("images of data/train"); ``alternative``
  is another remedy to offer beside a larger fraction and ``val_fraction=0``.
  """
  keep, held = holdout(num_examples, fraction, seed=seed, salt=salt)
  rounded = f"round({fraction} * {num_examples}) = {len(held)}"
  if fraction and not len(held):
    raise ValueError(f"val_fraction={fraction} holds out no example of the {num_examples} {of} "
                     f"({rounded}), which would make an empty validation split: use "
                     f"val_fraction >= 1/{num_examples}, {alternative}or val_fraction=0 for no "
                     f"validation split")
  if fraction and not len(keep):
    raise ValueError(f"val_fraction={fraction} holds out all {num_examples} {of} ({rounded}), "
                     f"leaving none to train on: lower it")
  return keep, held


def check_fraction(name: str, value: float) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
    raise ValueError(f"{name}={value!r} must be a number in [0, 1)")


def default_threads() -> int:
  """Read threads for file-backed sources: the cores, at most 16."""
  return max(1, min(16, os.cpu_count() or 1))


def _check_positive(**values: int) -> None:
  for name, value in values.items():
    if not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive integer")

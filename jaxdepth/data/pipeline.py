"""Splits and their batches: the epoch order, padding, process sharding and resumption.

A :class:`Split` is a set of examples that can be read by index, a
preprocessing recipe (:mod:`augment`) and a normalisation. Its
:meth:`Split.batches` is a pure function of its arguments:

* the order of epoch ``e`` is ``arange(n)``, or with ``shuffle`` the permutation
  keyed by ``(seed, e)`` (:func:`rng.permutation`);
* the global batch ``b`` holds positions ``[b G, (b + 1) G)`` of that order,
  ``G = batch_size * process_count``; without ``drop_remainder`` the last one
  is padded to ``G`` with ``mask = False`` (image 0, label 0);
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
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from jaxdepth._optional import require
from jaxdepth.data import augment, rng

Batch = dict[str, np.ndarray]


class DatasetNotPrepared(RuntimeError):
  """A dataset's files are not on disk; the message says how to prepare them."""


class Examples(Protocol):
  """Random access to a split's raw examples."""

  def __len__(self) -> int: ...

  def read(self, indices: np.ndarray) -> tuple[Sequence[np.ndarray] | np.ndarray, np.ndarray]:
    """Images (uint8 in [0, 255] or float in [0, 1], HWC) and integer labels of ``indices``."""


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
  """Examples fetched one at a time by a function of their index (files, tfds sources)."""
  num_examples: int
  fetch: Callable[[int], tuple[np.ndarray, int]]

  def __len__(self) -> int:
    return self.num_examples

  def read(self, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
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


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of a dataset (train, val or test) and how to serve it in batches.

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
      augment: apply the training augmentation (always on if ``always_augment``).
      drop_remainder: drop the last incomplete global batch instead of padding it.
      start_batch: index of the first batch to serve (to resume an epoch).
      process_index, process_count: this process's share of every global batch.

    Returns:
      An iterator of ``{"image": float32 (B, H, W, C), "label": int32 (B,),
      "mask": bool (B,)}``; padded slots have ``mask = False``.
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
    input_shape: ``(H, W, C)`` of the served images.
    class_names: label names where known (image folders), else None.
  """
  name: str
  train: Split
  val: Split | None
  test: Split
  num_classes: int
  input_shape: tuple[int, int, int]
  class_names: tuple[str, ...] | None = None


def holdout(num_examples: int, fraction: float, *, seed: int, salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Splits ``range(num_examples)`` into (kept, held out) by a seeded permutation.

  ``round(fraction * num_examples)`` indices are held out (torch ``random_split``
  with lengths ``[n - k, k]``); both parts are returned sorted.
  """
  check_fraction("val_fraction", fraction)
  held = int(round(fraction * num_examples))
  order = rng.permutation(num_examples, (seed, salt, 0x5B11))
  return np.sort(order[:num_examples - held]), np.sort(order[num_examples - held:])


def check_fraction(name: str, value: float) -> None:
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name}={value} must be in [0, 1)")


def default_threads() -> int:
  """Read threads for file-backed sources: the cores, at most 16."""
  return max(1, min(16, os.cpu_count() or 1))


def _check_positive(**values: int) -> None:
  for name, value in values.items():
    if not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive integer")

"""The offline default dataset: scikit-learn's handwritten digits (real data, no network).

``sklearn.datasets.load_digits()``: 1,797 grey 8x8 images of the digits 0-9,
pixel values 0-16 (UCI "Optical Recognition of Handwritten Digits").

* Pixels are scaled to [0, 1] (divided by 16), then normalised with the mean
  and standard deviation of the train split's pixels (one channel).
* Splits: a fixed test set of 20 % (359 images, seed 0, whatever
  ``split_seed``), then ``val_fraction`` of the remaining 1,438 as the
  validation set, seeded by ``split_seed``. Defaults: 1,294 / 144 / 359.
* Augmentation (``augment=True``): a random shift of at most one pixel
  (zero-pad 1, crop 8x8), no flip (digits are not mirror-symmetric). It keeps
  the demo fast and accurate.
"""
from __future__ import annotations

import numpy as np

from jaxdepth._optional import require
from jaxdepth.data import augment, pipeline

TEST_FRACTION = 0.2
_TEST_SEED = 0
RECIPE = augment.PadCropFlip(pad=1, flip=False)


def load(*, val_fraction: float = 0.1, split_seed: int = 0, val_augment: bool = False,
         image_size: int | None = None, normalization: str | None = None) -> pipeline.Dataset:
  """Loads the digits with the splits and normalisation described in the module docstring.

  Args:
    val_fraction: share of the 1,438 non-test images held out for validation (0: no
      validation split; a share that rounds to no image is refused).
    split_seed: seeds the train/validation split.
    val_augment: the validation split applies the training augmentation.
    image_size: must be None or 8 (the digits are 8x8).
    normalization: None or "train" (the train split's pixel mean and std).

  Returns:
    A :class:`pipeline.Dataset` with input shape (8, 8, 1).
  """
  if image_size not in (None, 8):
    raise ValueError(f"digits are 8x8; image_size={image_size} is not supported (leave it None)")
  if normalization not in (None, "train"):
    raise ValueError(f"digits are normalised with their train split's statistics; got normalization={normalization!r}")
  raw = require("sklearn.datasets", "data", "the digits dataset").load_digits()
  images = (raw.images.astype(np.float32) / 16.0)[..., None]
  labels = raw.target.astype(np.int64)
  rest, test = pipeline.holdout(len(labels), TEST_FRACTION, seed=_TEST_SEED, salt=1)
  train_pos, val_pos = pipeline.validation_holdout(len(rest), val_fraction, seed=split_seed, salt=2,
                                                   of="digits beside the test split")
  train, val = rest[train_pos], rest[val_pos]
  mean = (float(images[train].mean(dtype=np.float64)),)
  std = (float(images[train].std(dtype=np.float64)),)

  def split(name: str, indices: np.ndarray, always_augment: bool = False) -> pipeline.Split:
    return pipeline.Split(name, pipeline.ArrayExamples(images[indices], labels[indices]), RECIPE, mean, std,
                          (8, 8, 1), indices, always_augment=always_augment)

  return pipeline.Dataset(
      name="digits", train=split("train", train),
      val=split("val", val, val_augment) if len(val) else None,
      test=split("test", test), num_classes=10, input_shape=(8, 8, 1),
      class_names=tuple(str(d) for d in range(10)))

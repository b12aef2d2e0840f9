"""Image preprocessing and augmentation: pure functions of the images and of U[0, 1) draws.

Two recipes cover the papers' pipelines (``docs/data.md``):

* :class:`PadCropFlip` for fixed-size images (CIFAR, digits): zero-pad by ``pad``
  pixels, take a random crop of the original size, optionally flip
  horizontally. Vectorised over the batch.
* :class:`ResizedCrop` for variable-size images (Flowers-102, DTD, image
  folders). Training: a random crop covering a fraction ``scale`` of the area
  with aspect ratio in ``ratio`` (torchvision's ``RandomResizedCrop``, except
  that a box too large for the image is clipped to it instead of being
  re-drawn up to 10 times), resized to ``size``; then a horizontal flip and an
  optional colour jitter. Evaluation: resize the shorter side to
  ``size / eval_crop_fraction`` and take the centre ``size`` x ``size`` crop.

Every recipe draws its randomness from a ``(k, num_uniforms)`` array of
uniforms supplied by the caller (one row per example, see :mod:`rng`), so the
augmentation of an example is a pure function of that row.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from jaxdepth._optional import require

if TYPE_CHECKING:
  from PIL import Image

# ImageNet statistics (EASIER, LaCoOT, TLC on every dataset).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
def _image():
  return require("PIL.Image", "data", "resizing images")


# EGP's CIFAR statistics (EASIER, LaCoOT and TLC normalise with ImageNet's).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def to_unit_range(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [0, 1]; float input is taken to be in [0, 1] already."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) * np.float32(1 / 255)
  return images.astype(np.float32, copy=False)


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """``(x - mean) / std`` per channel, with ``x`` the image in [0, 1].

  Args:
    images: ``(..., H, W, C)`` uint8 in [0, 255] or float in [0, 1].
    mean, std: ``C`` values each.

  Returns:
    float32 array of the same shape.
  """
  x = to_unit_range(images)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def pad_crop_flip(images: np.ndarray, pad: int, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
  """Zero-pads by ``pad``, crops the original size at ``offsets``, flips where asked.

  Args:
    images: ``(B, H, W, C)``.
    pad: padding on every side.
    offsets: ``(B, 2)`` integer (row, column) of the crop's top-left corner in
      the padded image, each in ``[0, 2 * pad]``; ``(pad, pad)`` is the identity.
    flips: ``(B,)`` bool, flip left-right after cropping.

  Returns:
    Array like ``images``.
  """
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = offsets[:, 0, None] + np.arange(h)                          # (B, H)
  cols = offsets[:, 1, None] + np.arange(w)                          # (B, W)
  cols = np.where(flips[:, None], cols[:, ::-1], cols)
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


@dataclasses.dataclass(frozen=True)
class PadCropFlip:
  """Random crop after zero padding, plus an optional horizontal flip (fixed-size images).

  Attributes:
    pad: zero padding on each side (CIFAR: 4; digits: 1).
    flip: whether to flip horizontally with probability 1/2.
  """
  pad: int
  flip: bool = True
  num_uniforms = 3

  def evaluate(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    return np.stack(images) if not isinstance(images, np.ndarray) else images

  def train(self, images: Sequence[np.ndarray] | np.ndarray, u: np.ndarray) -> np.ndarray:
    images = self.evaluate(images)
    offsets = np.minimum((u[:, :2] * (2 * self.pad + 1)).astype(np.int64), 2 * self.pad)
    flips = (u[:, 2] < 0.5) if self.flip else np.zeros(len(u), bool)
    return pad_crop_flip(images, self.pad, offsets, flips)


def random_resized_box(height: int, width: int, u: np.ndarray, scale: tuple[float, float],
                       ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """A crop box covering ``scale`` of the area with aspect ratio (w/h) in ``ratio``.

  The area fraction is uniform in ``scale`` and the log aspect ratio uniform in
  ``log(ratio)``; a side longer than the image is clipped to it.

  Args:
    height, width: image size.
    u: 4 uniforms (area, log ratio, top, left).

  Returns:
    ``(left, top, right, bottom)`` for :meth:`PIL.Image.Image.crop`.
  """
  area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
  log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
  aspect = math.exp(log_r)
  w = min(width, max(1, round(math.sqrt(area * aspect))))
  h = min(height, max(1, round(math.sqrt(area / aspect))))
  top = min(int(u[2] * (height - h + 1)), height - h)
  left = min(int(u[3] * (width - w + 1)), width - w)
  return left, top, left + w, top + h


def center_box(height: int, width: int, size: int, crop_fraction: float) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
  """Resize target and centre crop box: shorter side -> ``size / crop_fraction``, then ``size`` x ``size``.

  Returns:
    ``((new_width, new_height), (left, top, right, bottom))``.
  """
  short = max(size, round(size / crop_fraction))
  if height <= width:
    new_h, new_w = short, max(short, round(width * short / height))
  else:
    new_w, new_h = short, max(short, round(height * short / width))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return (new_w, new_h), (left, top, left + size, top + size)


def color_jitter(image: Image.Image, u: np.ndarray, strength: float) -> Image.Image:
  """Brightness, contrast, saturation and hue jitter, in that fixed order.

  Factors are uniform in ``[1 - s, 1 + s]`` for the first three and the hue
  shift uniform in ``[-s, s]`` of a turn, capped at half a turn (torchvision's
  ``ColorJitter(s, s, s, min(s, 0.5))``, which applies the four in a random
  order; here the order is fixed).

  Args:
    image: RGB PIL image.
    u: 4 uniforms.
    strength: ``s``.
  """
  ImageEnhance = require("PIL.ImageEnhance", "data", "colour jitter")  # pylint: disable=invalid-name
  Image = _image()  # pylint: disable=invalid-name,redefined-outer-name
  lo, hi = max(0.0, 1 - strength), 1 + strength
  factors = lo + (hi - lo) * u[:3]
  image = ImageEnhance.Brightness(image).enhance(factors[0])
  image = ImageEnhance.Contrast(image).enhance(factors[1])
  image = ImageEnhance.Color(image).enhance(factors[2])
  hue = min(strength, 0.5) * (2 * u[3] - 1)
  if hue:
    h, s, v = image.convert("HSV").split()
    shift = int(round(hue * 255))
    h = h.point(lambda x: (x + shift) % 256)
    image = Image.merge("HSV", (h, s, v)).convert("RGB")
  return image


@dataclasses.dataclass(frozen=True)
class ResizedCrop:
  """Crops resized to ``size`` x ``size``: random for training, centred for evaluation.

  Attributes:
    size: output side.
    scale: area fraction range of the training crop (Flowers/DTD: (0.08, 1);
      PACS/VLCS: (0.8, 1)).
    ratio: aspect ratio range of the training crop.
    jitter: colour jitter strength (0 = none; PACS/VLCS: 0.4).
    eval_crop_fraction: the evaluation crop's side over the resized shorter side
      (0.875 = the usual 256 -> 224; 1.0 = resize to ``size`` and crop the centre).
  """
  size: int
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  jitter: float = 0.0
  eval_crop_fraction: float = 0.875
  num_uniforms = 9

  def evaluate(self, images: Sequence[np.ndarray]) -> np.ndarray:
    Image = _image()  # pylint: disable=invalid-name,redefined-outer-name
    out = []
    for image in images:
      pil = Image.fromarray(image)
      new_size, box = center_box(pil.height, pil.width, self.size, self.eval_crop_fraction)
      out.append(np.asarray(pil.resize(new_size, Image.BILINEAR).crop(box)))
    return np.stack(out)

  def train(self, images: Sequence[np.ndarray], u: np.ndarray) -> np.ndarray:
    Image = _image()  # pylint: disable=invalid-name,redefined-outer-name
    out = []
    for image, row in zip(images, u):
      pil = Image.fromarray(image)
      box = random_resized_box(pil.height, pil.width, row[:4], self.scale, self.ratio)
      pil = pil.resize((self.size, self.size), Image.BILINEAR, box=box)
      if row[4] < 0.5:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
      if self.jitter:
        pil = color_jitter(pil, row[5:9], self.jitter)
      out.append(np.asarray(pil))
    return np.stack(out)


@dataclasses.dataclass(frozen=True)
class ResizeFlip:
  """Resize to ``size`` x ``size`` (if needed) and, for training, flip (Tiny-ImageNet style)."""
  size: int
  num_uniforms = 1

  def evaluate(self, images: Sequence[np.ndarray]) -> np.ndarray:
    if all(image.shape[:2] == (self.size, self.size) for image in images):
      return np.stack(images)
    Image = _image()  # pylint: disable=invalid-name,redefined-outer-name
    return np.stack([
        image if image.shape[:2] == (self.size, self.size)
        else np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR))
        for image in images])

  def train(self, images: Sequence[np.ndarray], u: np.ndarray) -> np.ndarray:
    images = self.evaluate(images)
    return np.where((u[:, 0] < 0.5)[:, None, None, None], images[:, :, ::-1], images)

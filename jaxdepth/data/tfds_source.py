"""TFDS datasets read through ``tfds.data_source`` (random access, no TensorFlow) and grain.

Recipes (``docs/data.md``):

* ``cifar10``, ``cifar100``: 32x32. Train/validation = a 90/10 split of the
  tfds ``train`` split (``val_fraction``, seeded by ``split_seed``, like the
  official code's ``random_split``); test = the tfds ``test`` split.
  Augmentation: random crop 32 after zero-padding 4, horizontal flip.
  Normalisation: ImageNet mean/std (EASIER, LaCoOT, TLC) by default,
  ``normalization="cifar"`` for EGP's CIFAR statistics.
* ``oxford_flowers102``, ``dtd``: their tfds ``train``/``validation``/``test``
  splits (``val_fraction`` and ``split_seed`` are not used). Images of any size
  become ``image_size`` squares (default 224). Training: random resized crop
  (area 8-100 %, aspect 3/4-4/3) and flip; evaluation: shorter side to
  ``image_size / 0.875``, centre crop. ImageNet normalisation. The mixup/cutmix
  of EASIER's Flowers/DTD runs is a training-step concern, not done here.

The data must be prepared beforehand in the ArrayRecord format; this module
never downloads (``download=False``) and raises :class:`DatasetNotPrepared`
within milliseconds when the files are missing, empty or cut short (and at the
first read of a file damaged inside).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from jaxdepth._optional import require
from jaxdepth.data import augment, pipeline


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How one tfds dataset becomes a :class:`pipeline.Dataset`."""
  num_classes: int
  native_size: int | None          # fixed side (CIFAR) or None (variable size, resized)
  val_split: str | None = None     # official validation split; None = hold out part of train
  default_image_size: int = 224


RECIPES = {
    "cifar10": Recipe(num_classes=10, native_size=32),
    "cifar100": Recipe(num_classes=100, native_size=32),
    "oxford_flowers102": Recipe(num_classes=102, native_size=None, val_split="validation"),
    "dtd": Recipe(num_classes=47, native_size=None, val_split="validation"),
}

NORMALIZATIONS = {
    "imagenet": (augment.IMAGENET_MEAN, augment.IMAGENET_STD),
    "cifar": (augment.CIFAR_MEAN, augment.CIFAR_STD),
}


def how_to_prepare(name: str, data_dir: str | None, problem: str = "") -> str:
  """What is wrong (``problem``, e.g. where jaxdepth looked) and the command that prepares ``name``."""
  where = f"data_dir={data_dir!r}" if data_dir else "the default tfds data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  return (
      f"tfds dataset {name!r} is not prepared in the ArrayRecord format under {where}"
      f"{': ' + problem if problem else ''}. "
      f"Prepare it once on a machine with TensorFlow and internet access: "
      f"`pip install tensorflow tensorflow-datasets && tfds build {name} --file_format=array_record "
      f"--data_dir=DIR`, copy DIR here and pass it as data_dir (--data_dir on the command line). "
      f"jaxdepth never downloads at load time; the offline default dataset is 'digits'.")


_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _versions(folder: str) -> list[str]:
  """The tfds version folders (``3.0.2``) in ``folder``, oldest first."""
  try:
    found = [v for v in os.listdir(folder) if _VERSION.match(v) and os.path.isdir(os.path.join(folder, v))]
  except OSError:
    return []
  return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def _where_it_looked(tfds: Any, name: str, data_dir: str | None) -> str:
  """Where the files of ``name`` should be and what is there instead, for :class:`DatasetNotPrepared`."""
  root = data_dir or getattr(tfds.core.constants, "DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
  folder = os.path.join(root, *name.split("/"))
  base, _, config = name.partition("/")
  try:   # the version this tfds reads: the builder's, or its config's (glue/sst2)
    builder = tfds.builder_cls(base)
    configs = {c.name: c for c in getattr(builder, "BUILDER_CONFIGS", ())}
    version = str((configs[config].version if config else None) or builder.VERSION)
  except Exception:  # pylint: disable=broad-except   (a builder tfds cannot import: version unknown)
    version = None
  looked = os.path.join(folder, version) if version else folder
  found = _versions(folder)
  if version in found:
    return (f"{looked} holds no ArrayRecord files of it (prepared in another file format, "
            f"or its build was interrupted)")
  if found and version is None:
    return (f"{folder} holds version {', '.join(found)}, none of them readable (prepared in another "
            f"file format, or its build was interrupted)")
  if found:
    return (f"there is no folder {looked}; {folder} holds version {', '.join(found)} only, and this "
            f"tensorflow-datasets reads {version}: prepare it again with this release")
  inside = _versions(root)
  if inside:
    root, tail = root.rstrip(os.sep), os.path.join(*name.split("/"))
    parent = root[:-len(tail)].rstrip(os.sep) if root.endswith(os.sep + tail) else os.path.dirname(root)
    return (f"there is no folder {looked}; data_dir itself holds the version folder(s) {', '.join(inside)}, "
            f"so it is the dataset's own folder: pass the folder above it, data_dir={parent!r}")
  return f"there is no folder {looked}" + ("" if os.path.isdir(root) else f" ({root} does not exist)")


def _shards(source: Any, split: str) -> list[tuple[str, int]]:
  """``(file, examples)`` of each shard of ``split``, in order; none for the sources of
  ``tfds.testing.mock_data``, which serve examples without files."""
  splits = getattr(getattr(source, "dataset_info", None), "splits", {})
  if split not in splits:
    return []
  info = splits[split]
  return [(os.fspath(path), int(n)) for path, n in zip(info.filepaths, info.shard_lengths)]


def _bad_shard(name: str, split: str, data_dir: str | None, path: str, problem: str) -> pipeline.DatasetNotPrepared:
  return pipeline.DatasetNotPrepared(how_to_prepare(
      name, data_dir, f"the file {path} of its {split!r} split {problem}; copy the prepared "
      f"folder again (completely), or prepare it again"))


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split()) or type(error).__name__


def open_source(name: str, split: str, data_dir: str | None) -> Any:
  """``tfds.data_source(name, split=split, download=False)``, or :class:`DatasetNotPrepared`.

  tfds reports missing data as ``NotImplementedError`` (no ArrayRecord files),
  ``AssertionError`` ("could not find data"), a missing-file error or, once a
  builder for an empty folder has been made in this process, ``KeyError``
  ("`splits` is empty"), depending on what is absent; all of them become
  :class:`DatasetNotPrepared`, saying where jaxdepth looked, as does an unreadable
  ``dataset_info.json`` (a copy cut short). tfds opens the
  shard files lazily, at the first read; so that a partly copied dataset fails
  here and not in the middle of a run, every shard of the split must exist and
  its index (read from the file's end, a few kilobytes) must count the examples
  that tfds' ``dataset_info.json`` gives it. ``~`` in ``data_dir`` is expanded.
  """
  tfds = require("tensorflow_datasets", "data", "tfds datasets")
  json_format = require("google.protobuf.json_format", "data", "tfds datasets")
  data_dir = None if data_dir is None else os.path.expanduser(os.fspath(data_dir))
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (NotImplementedError, AssertionError, FileNotFoundError, KeyError) as error:
    raise pipeline.DatasetNotPrepared(how_to_prepare(name, data_dir, _where_it_looked(tfds, name, data_dir))) from error
  except json_format.ParseError as error:   # an empty or cut-short dataset_info.json
    raise pipeline.DatasetNotPrepared(how_to_prepare(
        name, data_dir, f"its dataset_info.json cannot be read ({_one_line(error)}); copy the "
        f"prepared folder again (completely), or prepare it again")) from error
  array_record = require("array_record.python.array_record_module", "data", "tfds datasets")
  for path, expected in _shards(source, split):
    if "://" not in path and not os.path.isfile(path):   # (remote files: the reader says)
      raise _bad_shard(name, split, data_dir, path, "is missing")
    if "://" not in path and not os.path.getsize(path):
      raise _bad_shard(name, split, data_dir, path, "is empty")
    try:
      reader = array_record.ArrayRecordReader(path)
      found = reader.num_records()   # 0 where the index cannot be read (a file cut short)
      reader.close()
    except RuntimeError as error:
      raise _bad_shard(name, split, data_dir, path, f"cannot be read ({_one_line(error)})") from error
    if found != expected:
      raise _bad_shard(name, split, data_dir, path,
                       f"holds {found} readable examples of its {expected} (cut short or corrupted)")
  return source


def read_example(source: Any, position: int, name: str, data_dir: str | None) -> dict[str, Any]:
  """Example ``position`` of a tfds source (every tfds and GLUE read); a file that cannot be
  read is a :class:`DatasetNotPrepared` naming it."""
  try:
    return source[position]
  except RuntimeError as error:
    raise _unreadable(source, position, name, data_dir, error) from error


def _fetcher(source: Any, positions: np.ndarray, name: str = "", data_dir: str | None = None):
  """Reads example ``positions[i]`` of a tfds source as (uint8 HWC image, label)."""
  def fetch(i: int) -> tuple[np.ndarray, int]:
    example = read_example(source, int(positions[i]), name, data_dir)
    image = np.asarray(example["image"], np.uint8)
    return (image[..., None] if image.ndim == 2 else image), int(example["label"])
  return fetch


def _unreadable(source: Any, position: int, name: str, data_dir: str | None,
                error: Exception) -> pipeline.DatasetNotPrepared:
  """The error for example ``position`` of ``source`` that the reader could not read."""
  split = str(getattr(source, "split", "?"))
  shards = _shards(source, split)
  ends = np.cumsum([n for _, n in shards])
  path = shards[int(np.searchsorted(ends, position, side="right"))][0] if shards and position < ends[-1] else "?"
  return _bad_shard(name, split, data_dir, path, f"cannot be read at example {position} ({_one_line(error)})")


def load(name: str, *, data_dir: str | None = None, val_fraction: float = 0.1, split_seed: int = 0,
         val_augment: bool = False, image_size: int | None = None,
         normalization: str | None = None) -> pipeline.Dataset:
  """Loads a tfds dataset with the recipe in the module docstring.

  Args:
    name: a key of :data:`RECIPES`.
    data_dir: where the prepared ArrayRecord files are (tfds' default if None).
    val_fraction: share of ``train`` held out for validation (CIFAR only; 0: no
      validation split; a share that rounds to no example is refused).
    split_seed: seeds that hold-out.
    val_augment: the validation split applies the training augmentation.
    image_size: output side for variable-size datasets (default 224); CIFAR
      stays 32x32 (the papers feed it unresized).
    normalization: "imagenet" (default) or "cifar".

  Returns:
    A :class:`pipeline.Dataset`.

  Raises:
    DatasetNotPrepared: the files are not all under ``data_dir`` (``~`` expanded).
  """
  recipe = RECIPES[name]
  normalization = normalization or "imagenet"
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization={normalization!r}; expected one of {sorted(NORMALIZATIONS)}")
  mean, std = NORMALIZATIONS[normalization]
  pipeline.check_fraction("val_fraction", val_fraction)
  if recipe.native_size is not None:
    if image_size not in (None, recipe.native_size):
      raise ValueError(f"{name} is served at its native {recipe.native_size}x{recipe.native_size} "
                       f"(as in the papers); image_size={image_size} is not supported, leave it None")
    size = recipe.native_size
    transform = augment.PadCropFlip(pad=4, flip=True)
  else:
    size = image_size or recipe.default_image_size
    transform = augment.ResizedCrop(size=size)
  shape = (size, size, 3)

  train_source = open_source(name, "train", data_dir)
  test_source = open_source(name, "test", data_dir)
  if recipe.val_split is None:
    train_positions, val_positions = pipeline.validation_holdout(
        len(train_source), val_fraction, seed=split_seed, of=f"examples of {name}'s train split")
    val_source = train_source
  else:
    val_source = open_source(name, recipe.val_split, data_dir)
    train_positions, val_positions = np.arange(len(train_source)), np.arange(len(val_source))

  def split(split_name: str, source: Any, positions: np.ndarray, always_augment: bool = False) -> pipeline.Split:
    examples = pipeline.IndexedExamples(len(positions), _fetcher(source, positions, name, data_dir))
    return pipeline.Split(split_name, examples, transform, mean, std, shape, positions,
                          always_augment=always_augment, num_threads=pipeline.default_threads())

  return pipeline.Dataset(
      name=name, train=split("train", train_source, train_positions),
      val=split("val", val_source, val_positions, val_augment) if len(val_positions) else None,
      test=split("test", test_source, np.arange(len(test_source))),
      num_classes=recipe.num_classes, input_shape=shape)

"""Datasets stored as folders of images (read with Pillow), in the layouts of ``docs/data.md``.

Layouts (``layout="auto"`` picks by looking at the folder, :func:`detect_layout`, and
refuses to guess where two layouts fit it equally):

* ``"splits"`` (Tiny-ImageNet style; chosen when ``root/train`` holds folders
  and no sub-folder of ``root`` holds images itself, so that a class folder
  named ``train`` beside others, as CIFAR-100's, makes a ``"classes"`` folder):
  ``root/{train,val,test}/<class>/<image>``. ``val/`` is optional; without
  ``test/``, ``val/`` is the test split (EGP tests on ``val/``). Without a
  ``val/`` that serves as validation, ``val_fraction`` of ``train/`` is held out
  for validation (seeded by ``split_seed``). Classes are the folder names under ``train/``.
  Augmentation: horizontal flip only. Images are served as ``image_size``
  squares (default: the height of the first training image), resized only
  where they differ (Tiny-ImageNet is 64x64 throughout).
* ``"domains"`` (PACS/VLCS; chosen when every sub-folder holds folders and no
  images, and the folders under them have more distinct names, the classes,
  than there are domains): ``root/<domain>/<class>/<image>``. All domains are
  concatenated, then split 80/10/10 by a permutation seeded by ``split_seed``
  (test fraction 0.1, validation ``val_fraction`` of all images) — not
  leave-one-domain-out, like TLC and EASIER.
  Training: random resized crop to ``image_size`` (default 224) with area
  80-100 %, flip, colour jitter 0.4 (brightness, contrast, saturation, hue; in
  a fixed order, not torchvision's random one). Evaluation: shorter side to
  ``image_size``, centre crop; the test split always, validation unless
  ``val_augment`` (TLC's and EASIER's code augment validation and test alike:
  one training transform for the whole concatenated dataset).
* ``"classes"`` (plain ImageFolder): ``root/<class>/<image>``; split and
  augmented like ``"domains"``. A class's images may lie in its sub-folders at
  any depth (links to folders are followed); where no class folder holds images
  itself (``root/<class>/<year>/<image>``), "auto" takes the folder for
  ``"domains"`` or refuses to guess: name the layout then.

ImageNet normalisation everywhere. Images are converted to RGB. A missing
folder, a class folder without images, a class of ``val/``/``test/`` unknown
to ``train/``, a single class or too few images for a test split is an error
that names the path; a file Pillow cannot read raises
:class:`UnreadableImageError` (naming the file) when a batch first reads it.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from jaxdepth._optional import require
from jaxdepth.data import augment, pipeline, rng

LAYOUTS = ("auto", "splits", "domains", "classes")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
TEST_FRACTION = 0.1
SPLIT_NAMES = ("test", "val", "valid", "validation")   # beside "train": a folder of splits


class UnreadableImageError(ValueError):
  """An image file of a folder dataset that Pillow cannot read (the message names it)."""


def _subdirs(path: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(class_dir: pathlib.Path) -> list[pathlib.Path]:
  """The images under ``class_dir`` at any depth, sorted. Symbolic links to folders are followed
  (as torchvision's ``ImageFolder`` does); a folder reached twice (a link cycle, two links to
  one folder) is read once, and folders named ``.*`` are skipped at every level."""
  files, seen = [], set()
  for folder, subfolders, names in os.walk(class_dir, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:
      subfolders[:] = []
      continue
    seen.add(real)
    subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))   # a fixed walk order
    files += [pathlib.Path(folder, n) for n in names if pathlib.Path(n).suffix.lower() in IMAGE_SUFFIXES]
  files = sorted(p for p in files if p.is_file())
  if not files:
    raise ValueError(f"class folder {class_dir} holds no images (expected files ending in "
                     f"{', '.join(sorted(IMAGE_SUFFIXES))}); remove it or add images")
  return files


def _class_folders(path: pathlib.Path) -> list[pathlib.Path]:
  classes = _subdirs(path)
  if not classes:
    raise ValueError(f"{path} holds no class folders (expected {path}/<class>/<image>)")
  return classes


def _holds_images(folder: pathlib.Path) -> bool:
  """Whether ``folder`` itself (not a sub-folder) holds an image file."""
  return any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.iterdir())


def _some(names) -> str:
  names = sorted(names)
  return ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")


def _name_it(*layouts: str) -> str:
  return (f"name the layout: layout={layouts[0]!r}"
          + "".join(f" or layout={other!r}" for other in layouts[1:])
          + " (on the command line --config.layout=" + " or --config.layout=".join(layouts) + ")")


def detect_layout(root: pathlib.Path) -> str:
  """The layout of ``root``: "splits" if ``root/train`` holds folders and no sub-folder of ``root``
  holds images itself (a ``train`` folder of images is a class), "domains" if every sub-folder holds
  folders and no images, else "classes".

  Two guesses are refused (ValueError asking for ``layout=``) rather than taken:

  * "classes" when the folders are named like splits (``train`` beside ``test``, ``val``,
    ``valid`` or ``validation``): Kaggle's ``train/<class>/`` beside an unlabelled ``test/``
    would make ``train`` and ``test`` the two classes;
  * "domains" when the folders under the sub-folders have no more distinct names than there are
    sub-folders: ``root/<class>/<year>/`` reads as well as ``root/<domain>/<class>/``, and the
    labels would be the years. Domain datasets have more classes than domains (PACS: 7 in 4).
  """
  subdirs = _subdirs(root)
  if not subdirs:
    raise ValueError(f"{root} holds no folders; expected one of the layouts {LAYOUTS[1:]} (see jaxdepth.data.folders)")
  names = {d.name for d in subdirs}
  with_images = {d.name for d in subdirs if _holds_images(d)}
  if "train" in names and _subdirs(root / "train") and not with_images:
    return "splits"
  if all(_subdirs(d) and d.name not in with_images for d in subdirs):
    inner = {c.name for d in subdirs for c in _subdirs(d)}
    if len(inner) <= len(subdirs):
      raise ValueError(
          f"{root} holds {len(subdirs)} folders ({_some(names)}) of {len(inner)} kinds of "
          f"folder ({_some(inner)}): read as 'domains' (root/<domain>/<class>/<image>) its "
          f"classes would be {_some(inner)}, read as 'classes' with sub-folders "
          f"(root/<class>/<sub-folder>/<image>) they would be {_some(names)}, and jaxdepth "
          f"guesses 'domains' only when there are more classes than domains; "
          f"{_name_it('domains', 'classes')}")
    return "domains"
  split_like = sorted(names & set(SPLIT_NAMES))
  if "train" in names and split_like:
    images = (f"{_some(with_images)} {'holds' if len(with_images) == 1 else 'hold'} images directly"
              if with_images else "train holds no class folders")
    raise ValueError(
        f"{root} holds folders named like splits (train, {', '.join(split_like)}), but {images}, "
        f"so it is not a 'splits' layout (root/{{train,val,test}}/<class>/<image>, every split "
        f"in class folders), and read as 'classes' its classes would be {_some(names)}. Load "
        f"{root / 'train'} alone for its classes (split into train, validation and test; "
        f"unlabelled images cannot be scored), put every split's images in class folders, or "
        f"{_name_it('classes')} if those folders are classes")
  return "classes"


def _read_image(path: pathlib.Path) -> np.ndarray:
  pil = require("PIL.Image", "data", "reading image folders")
  try:
    with pil.open(path) as image:
      return _rgb8(image, path)
  except OSError as e:   # PIL.UnidentifiedImageError, a truncated file
    raise UnreadableImageError(
        f"cannot read image {path} ({type(e).__name__}: {e}); replace it with a readable image "
        f"(removing it changes the dataset's splits: start over then)") from e


def _rgb8(image, path: pathlib.Path) -> np.ndarray:
  """An opened image as ``(H, W, 3)`` uint8. Pillow opens 16-bit grayscale PNG and TIFF files
  in modes ``I;16`` or ``I``, which its RGB conversion clips at 255 (nearly every pixel
  white): they are scaled to 8 bits instead, ``round(v / 257)``. Floating-point pixels (mode
  ``F``) have no range to scale by and are refused."""
  if image.mode == "F":
    raise UnreadableImageError(
        f"image {path} has floating-point pixels (mode F), whose range jaxdepth cannot know; "
        f"save it with 8- or 16-bit integer pixels")
  if image.mode == "I" or image.mode.startswith("I;16"):
    gray = np.clip(np.rint(np.asarray(image, np.float64) / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  return np.asarray(image.convert("RGB"))


def _at_least_two(classes: list[str], where: pathlib.Path) -> None:
  if len(classes) < 2:
    raise ValueError(f"{where} holds one class ({classes[0]!r}); a classifier needs at least "
                     f"two class folders")


def _fetcher(files: list[pathlib.Path], labels: np.ndarray):
  def fetch(i: int) -> tuple[np.ndarray, int]:
    return _read_image(files[i]), int(labels[i])
  return fetch


def _listing(class_dirs: dict[str, list[pathlib.Path]], classes: list[str]) -> tuple[list[pathlib.Path], np.ndarray]:
  """Files and labels of ``{class name: [class folders]}``, in a fixed order."""
  files, labels = [], []
  for name, dirs in class_dirs.items():
    for class_dir in dirs:
      found = _images_in(class_dir)
      files += found
      labels += [classes.index(name)] * len(found)
  return files, np.asarray(labels, np.int64)


def load(root: str | pathlib.Path, *, layout: str = "auto", val_fraction: float = 0.1, split_seed: int = 0,
         val_augment: bool = False, image_size: int | None = None, name: str | None = None) -> pipeline.Dataset:
  """Loads an image folder in one of :data:`LAYOUTS` (module docstring).

  Args:
    root: the dataset folder.
    layout: "auto", "splits", "domains" or "classes".
    val_fraction: the validation share: of all images for "domains"/"classes"
      (beside 10 % for test); of ``train/``'s images for "splits" without a
      ``val/`` that serves as validation (unused where there is one).
    split_seed: seeds the 80/10/10 permutation of "domains"/"classes", and the
      hold-out of "splits".
    val_augment: the validation split applies the training augmentation.
    image_size: output side (see the layouts for the default).
    name: the Dataset's name (default ``"folder:<root>"``).

  Returns:
    A :class:`pipeline.Dataset` with RGB images and ``class_names``.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")
  if image_size is not None and image_size <= 0:
    raise ValueError(f"image_size={image_size} must be a positive integer")
  pipeline.check_fraction("val_fraction", val_fraction)
  layout = detect_layout(root) if layout == "auto" else layout
  name = name or f"folder:{root}"
  mean, std = augment.IMAGENET_MEAN, augment.IMAGENET_STD
  threads = pipeline.default_threads()

  def split(split_name, files, labels, recipe, size, always_augment=False, indices=None):
    examples = pipeline.IndexedExamples(len(files), _fetcher(files, labels))
    indices = np.arange(len(files)) if indices is None else indices
    return pipeline.Split(split_name, examples, recipe, mean, std, (size, size, 3), indices,
                          always_augment=always_augment, num_threads=threads)

  if layout == "splits":
    train_dir = root / "train"
    if not train_dir.is_dir():
      raise FileNotFoundError(f"layout 'splits' needs {train_dir}/<class>/<image>")
    classes = [d.name for d in _class_folders(train_dir)]
    _at_least_two(classes, train_dir)
    parts = {}
    for part in ("train", "val", "test"):
      part_dir = root / part
      if not part_dir.is_dir():
        continue
      folders = _class_folders(part_dir)
      unknown = sorted({d.name for d in folders} - set(classes))
      if unknown:
        raise ValueError(f"{part_dir} has classes {unknown} that {train_dir} lacks; every class needs training images")
      parts[part] = _listing({d.name: [d] for d in folders}, classes)
    if "test" not in parts:
      if "val" not in parts:
        raise FileNotFoundError(f"layout 'splits' needs {root}/test (or at least {root}/val) beside {train_dir}")
      parts["test"] = parts.pop("val")
    if image_size is None:
      image_size = _read_image(parts["train"][0][0]).shape[0]
    recipe = augment.ResizeFlip(size=image_size)
    files, labels = parts["train"]
    keep, held = np.arange(len(files)), np.arange(0)
    if "val" not in parts:   # no official validation split: hold out val_fraction of train/
      keep, held = pipeline.validation_holdout(len(files), val_fraction, seed=split_seed, salt=0xF01D,
                                               of=f"images of {train_dir}")
    train = split("train", [files[i] for i in keep], labels[keep], recipe, image_size, indices=keep)
    val = None
    if "val" in parts:
      val = split("val", *parts["val"], recipe, image_size, val_augment)
    elif len(held):
      val = split("val", [files[i] for i in held], labels[held], recipe, image_size, val_augment, held)
    test = split("test", *parts["test"], recipe, image_size)
    return pipeline.Dataset(name, train, val, test, len(classes), (image_size, image_size, 3), tuple(classes))

  if layout == "domains":
    domains = _subdirs(root)
    if not domains:
      raise ValueError(f"{root} holds no domain folders (expected {root}/<domain>/<class>/<image>)")
    class_dirs: dict[str, list[pathlib.Path]] = {}
    for domain in domains:
      for class_dir in _class_folders(domain):
        class_dirs.setdefault(class_dir.name, []).append(class_dir)
  else:
    class_dirs = {d.name: [d] for d in _class_folders(root)}
  classes = sorted(class_dirs)
  _at_least_two(classes, root)
  files, labels = _listing({c: class_dirs[c] for c in classes}, classes)
  image_size = image_size or 224
  order = rng.permutation(len(files), (split_seed, 0xF01D))
  num_test = int(round(TEST_FRACTION * len(files)))
  num_val = int(round(val_fraction * len(files)))
  if val_fraction > 0 and num_val == 0 and num_test > 0:   # the fraction, not the folder
    raise ValueError(f"val_fraction={val_fraction} holds out no example of the {len(files)} "
                     f"images of {root} (round({val_fraction} * {len(files)}) = 0), which would "
                     f"make an empty validation split: use val_fraction >= 1/{len(files)}, or "
                     f"val_fraction=0 for no validation split")
  if num_test == 0 or len(files) - num_test - num_val <= 0:
    raise ValueError(f"{root} has only {len(files)} images: too few for a train/val/test split "
                     f"of {100 * TEST_FRACTION:g} % test and {100 * val_fraction:g} % validation "
                     f"(each needs at least one image; round({val_fraction} * {len(files)}) = "
                     f"{num_val} for validation)")
  test_idx = np.sort(order[:num_test])
  val_idx = np.sort(order[num_test:num_test + num_val])
  train_idx = np.sort(order[num_test + num_val:])
  recipe = augment.ResizedCrop(size=image_size, scale=(0.8, 1.0), jitter=0.4, eval_crop_fraction=1.0)

  def subset(split_name, idx, always_augment=False):
    return split(split_name, [files[i] for i in idx], labels[idx], recipe, image_size, always_augment, idx)

  return pipeline.Dataset(
      name, subset("train", train_idx), subset("val", val_idx, val_augment) if len(val_idx) else None,
      subset("test", test_idx), len(classes), (image_size, image_size, 3), tuple(classes))

"""Tests of jaxdepth.data: values against independent numpy/Pillow computations, splits, order, resumption, sharding."""

import hashlib
import shutil
import warnings

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from _prepared_tfds import CIFAR_VERSION, write_prepared_cifar10
from jaxdepth import data
from jaxdepth.data import augment, pipeline

IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))
EGP_CIFAR = (np.array([0.4914, 0.4822, 0.4465]), np.array([0.2023, 0.1994, 0.2010]))


def epoch(split, batch_size, **kwargs):
  return list(split.batches(batch_size, **kwargs))


def served(batches, key="image"):
  """The unpadded examples of an epoch, in order."""
  return np.concatenate([b[key][b["mask"]] for b in batches])


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys() == {"image", "label", "mask"}
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def index_split(n, name="train"):
  """A split whose label is the example index and whose 1x2 image is (index, -index): identity is visible."""
  images = np.stack([np.arange(n), -np.arange(n)], -1).astype(np.float32).reshape(n, 1, 2, 1)
  return pipeline.Split(name, pipeline.ArrayExamples(images, np.arange(n)), augment.PadCropFlip(pad=0, flip=True),
                        (0.0,), (1.0,), (1, 2, 1), np.arange(n))


def shifts_and_flips(image, pad, flips=True):
  """Every crop of the zero-padded image at the original size, and their mirror images."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  crops = [padded[i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
  return np.stack(crops + ([c[:, ::-1] for c in crops] if flips else []))


def closest(candidates, image):
  return np.abs(candidates - image).reshape(len(candidates), -1).max(1).min()


# --- digits (offline default) ---

@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def test_names_and_unknown_name():
  assert {"digits", "cifar10", "cifar100", "oxford_flowers102", "dtd"} <= set(data.names())
  with pytest.raises(ValueError, match="unknown dataset 'imagenet21k'.*digits"):
    data.load("imagenet21k")


def test_digits_splits_are_seeded_disjoint_and_cover_everything(digits):
  assert (digits.num_classes, digits.input_shape) == (10, (8, 8, 1))
  assert (len(digits.train), len(digits.val), len(digits.test)) == (1294, 144, 359)
  assert digits.train.num_examples == 1294
  parts = [digits.train.source_indices, digits.val.source_indices, digits.test.source_indices]
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1797))
  other = data.load("digits", split_seed=1)
  np.testing.assert_array_equal(other.test.source_indices, digits.test.source_indices)   # the test set is fixed
  assert set(other.val.source_indices) != set(digits.val.source_indices)
  no_val = data.load("digits", val_fraction=0.0)
  assert no_val.val is None and len(no_val.train) == 1438


def test_digits_values_are_train_normalised(digits):
  raw = load_digits()
  x = raw.images[..., None] / 16.0
  mean, std = x[digits.train.source_indices].mean(), x[digits.train.source_indices].std()
  batches = epoch(digits.test, 50)
  first = batches[0]
  assert first["image"].dtype == np.float32 and first["image"].shape == (50, 8, 8, 1)
  assert first["label"].dtype == np.int32 and first["mask"].dtype == np.bool_
  np.testing.assert_allclose(served(batches), (x[digits.test.source_indices] - mean) / std, atol=1e-5)
  np.testing.assert_array_equal(served(batches, "label"), raw.target[digits.test.source_indices])
  train = served(epoch(digits.train, 512))
  assert abs(train.mean()) < 1e-4 and abs(train.std() - 1) < 1e-4


def test_padding_masks_and_drop_remainder(digits):
  assert digits.train.num_batches(100, drop_remainder=False) == 13
  assert digits.train.num_batches(100, drop_remainder=True) == 12
  padded = epoch(digits.train, 100)
  assert len(padded) == 13 and all(b["image"].shape == (100, 8, 8, 1) for b in padded)
  assert [int(b["mask"].sum()) for b in padded] == [100] * 12 + [94]
  last = padded[-1]
  assert not last["mask"][94:].any() and (last["image"][94:] == 0).all() and (last["label"][94:] == 0).all()
  dropped = epoch(digits.train, 100, drop_remainder=True, shuffle=True)
  assert len(dropped) == 12 and all(b["mask"].all() for b in dropped)


def test_shuffled_epochs_are_permutations_keyed_by_seed_and_epoch():
  split = index_split(37)
  order = lambda **kw: served(epoch(split, 8, shuffle=True, **kw), "label")
  first = order(seed=1, epoch=0)
  np.testing.assert_array_equal(np.sort(first), np.arange(37))
  np.testing.assert_array_equal(order(seed=1, epoch=0), first)
  assert not np.array_equal(order(seed=1, epoch=1), first)
  assert not np.array_equal(order(seed=2, epoch=0), first)
  np.testing.assert_array_equal(served(epoch(split, 8), "label"), np.arange(37))   # unshuffled = source order


def test_resuming_at_start_batch_gives_the_tail_of_the_epoch(digits):
  kwargs = dict(seed=3, epoch=2, shuffle=True, augment=True)
  full = epoch(digits.train, 64, **kwargs)
  assert_same_batches(epoch(digits.train, 64, **kwargs), full)
  assert_same_batches(epoch(digits.train, 64, start_batch=7, **kwargs), full[7:])
  assert epoch(digits.train, 64, start_batch=len(full), **kwargs) == []
  with pytest.raises(ValueError, match="start_batch"):
    epoch(digits.train, 64, start_batch=len(full) + 1, **kwargs)


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_processes_get_disjoint_slices_that_make_the_global_batch(drop_remainder):
  split, per_process, count = index_split(23), 4, 3
  kwargs = dict(seed=5, epoch=1, shuffle=True, augment=True, drop_remainder=drop_remainder)
  whole = epoch(split, per_process * count, **kwargs)
  shards = [epoch(split, per_process, process_index=p, process_count=count, **kwargs) for p in range(count)]
  assert all(len(s) == len(whole) == split.num_batches(per_process, drop_remainder=drop_remainder,
                                                       process_count=count) for s in shards)
  for b, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([s[b][key] for s in shards]), batch[key])
  seen = np.concatenate([served(s, "label") for s in shards])
  assert len(set(seen)) == len(seen) == (12 if drop_remainder else 23)
  with pytest.raises(ValueError, match="process_index"):
    epoch(split, 4, process_index=3, process_count=3)


def test_digits_augmentation_is_a_one_pixel_shift_that_changes_with_the_epoch(digits):
  raw = load_digits()
  mean, std = digits.train.mean[0], digits.train.std[0]
  plain = served(epoch(digits.train, 256))
  aug0 = served(epoch(digits.train, 256, augment=True, epoch=0))
  aug1 = served(epoch(digits.train, 256, augment=True, epoch=1))
  assert (np.abs(aug0 - aug1).reshape(len(aug0), -1).max(1) > 1e-3).mean() > 0.5
  originals = raw.images[digits.train.source_indices, :, :, None] / 16.0
  for k in range(0, len(aug0), 97):
    assert closest(shifts_and_flips(originals[k], 1, flips=False), aug0[k] * std + mean) < 1e-5
  np.testing.assert_array_equal(served(epoch(digits.train, 256, augment=False, epoch=1)), plain)  # off for eval
  assert_same_batches(epoch(digits.test, 256, epoch=0), epoch(digits.test, 256, epoch=3))


def test_an_epoch_of_digits_is_its_batches(digits):
  """(How long it takes: benchmarks/data_pipeline.py.)"""
  batches = epoch(digits.train, 64, shuffle=True, augment=True, epoch=1)
  assert len(batches) == 21 and sum(int(b["mask"].sum()) for b in batches) == 1294


def test_bad_arguments_are_refused(digits):
  with pytest.raises(ValueError, match="val_fraction"):
    data.load("digits", val_fraction=1.0)
  # A positive share that rounds to no image would silently be no validation split.
  with pytest.raises(ValueError, match=r"val_fraction=0.0001 holds out no example of the 1438 digits "
                                       r"beside the test split \(round\(0.0001 \* 1438\) = 0\), which "
                                       r"would make an empty validation split: use val_fraction >= 1/1438"):
    data.load("digits", val_fraction=1e-4)
  with pytest.raises(ValueError, match="8x8"):
    data.load("digits", image_size=32)
  with pytest.raises(ValueError, match="batch_size"):
    epoch(digits.train, 0)


@pytest.mark.parametrize("name,argument,value", [
    ("cifar10", "val_fraction", None), ("digits", "val_fraction", "0.1"),
    ("digits", "split_seed", None), ("cifar10", "split_seed", 1.5), ("dtd", "image_size", 0),
    ("dtd", "image_size", -5), ("dtd", "image_size", 16.0), ("oxford_flowers102", "image_size", True)])
def test_load_refuses_arguments_of_the_wrong_kind(name, argument, value):
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(ValueError, match=rf"^{argument}={value!r} must be "):
      data.load(name, **{argument: value})


# --- tfds through tfds.data_source (mocked, offline) ---

def test_cifar_split_is_90_10_of_train_and_normalised_with_imagenet_statistics():
  with tfds.testing.mock_data(num_examples=50):
    ds = data.load("cifar10")
    egp = data.load("cifar10", normalization="cifar", val_fraction=0.0)
    reseeded = data.load("cifar10", split_seed=1)
    train_src = tfds.data_source("cifar10", split="train")
    test_src = tfds.data_source("cifar10", split="test")
    assert (ds.num_classes, ds.input_shape) == (10, (32, 32, 3))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (45, 5, 50)
    assert not set(ds.train.source_indices) & set(ds.val.source_indices)
    np.testing.assert_array_equal(np.sort(np.r_[ds.train.source_indices, ds.val.source_indices]), np.arange(50))
    assert set(reseeded.val.source_indices) != set(ds.val.source_indices)
    assert egp.val is None and len(egp.train) == 50
    with pytest.raises(ValueError, match=r"val_fraction=0.005 holds out no example of the 50 examples "
                                         r"of cifar10's train split \(round\(0.005 \* 50\) = 0\)"):
      data.load("cifar10", val_fraction=0.005)

    def expected(source, indices, stats):
      raw = np.stack([source[int(i)]["image"] for i in indices]) / 255.0
      labels = np.array([source[int(i)]["label"] for i in indices])
      return (raw - stats[0]) / stats[1], labels

    for split, source, stats in [(ds.train, train_src, IMAGENET), (ds.val, train_src, IMAGENET),
                                 (ds.test, test_src, IMAGENET), (egp.train, train_src, EGP_CIFAR)]:
      batches = epoch(split, 16)
      assert batches[0]["image"].dtype == np.float32 and batches[0]["label"].dtype == np.int32
      images, labels = expected(source, split.source_indices, stats)
      np.testing.assert_allclose(served(batches), images, atol=1e-5)
      np.testing.assert_array_equal(served(batches, "label"), labels)


def test_cifar_augmentation_is_pad4_crop_and_flip_and_val_augment_is_opt_in():
  with tfds.testing.mock_data(num_examples=24):
    ds = data.load("cifar100", val_fraction=0.25)
    quirk = data.load("cifar100", val_fraction=0.25, val_augment=True)
    assert ds.num_classes == 100
    plain = served(epoch(ds.train, 8)) * IMAGENET[1] + IMAGENET[0]
    aug = [served(epoch(ds.train, 8, augment=True, epoch=e)) * IMAGENET[1] + IMAGENET[0] for e in (0, 1)]
    for k, image in enumerate(aug[0]):
      assert closest(shifts_and_flips(plain[k], 4), image) < 1e-5
    assert not np.allclose(aug[0], aug[1]) and not np.allclose(aug[0], plain)
    flipped = [closest(shifts_and_flips(plain[k], 4, flips=False), image) > 1e-5 for k, image in enumerate(aug[0])]
    assert 0 < sum(flipped) < len(flipped)
    val_plain = served(epoch(ds.val, 8))
    np.testing.assert_array_equal(served(epoch(quirk.val, 8, augment=False, epoch=0)),
                                  served(epoch(quirk.val, 8, augment=True, epoch=0)))
    assert not np.allclose(served(epoch(quirk.val, 8)), val_plain)       # the quirk: val is augmented
    np.testing.assert_array_equal(served(epoch(ds.val, 8, epoch=4)), val_plain)   # default: it is not
    np.testing.assert_array_equal(served(epoch(ds.test, 8, epoch=4)), served(epoch(ds.test, 8)))


@pytest.mark.parametrize("name,num_classes", [("oxford_flowers102", 102), ("dtd", 47)])
def test_flowers_and_dtd_use_official_splits_and_centre_crop_for_eval(name, num_classes):
  with tfds.testing.mock_data(num_examples=6):
    ds = data.load(name, image_size=16)
    assert (ds.num_classes, ds.input_shape) == (num_classes, (16, 16, 3))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 6, 6)
    source = tfds.data_source(name, split="test")
    test = epoch(ds.test, 4)
    assert test[0]["image"].shape == (4, 16, 16, 3) and [int(b["mask"].sum()) for b in test] == [4, 2]
    for k, image in enumerate(served(test)):
      pil = Image.fromarray(source[k]["image"])
      short = round(16 / 0.875)
      size = (short, round(pil.height * short / pil.width)) if pil.width <= pil.height \
          else (round(pil.width * short / pil.height), short)
      left, top = (size[0] - 16) // 2, (size[1] - 16) // 2
      want = np.asarray(pil.resize(size, Image.BILINEAR).crop((left, top, left + 16, top + 16))) / 255.0
      np.testing.assert_allclose(image, (want - IMAGENET[0]) / IMAGENET[1], atol=1e-5)
    aug = [served(epoch(ds.train, 6, augment=True, epoch=e)) for e in (0, 1)]
    assert aug[0].shape == (6, 16, 16, 3) and not np.allclose(aug[0], aug[1])


@pytest.mark.parametrize("name", ["cifar10", "oxford_flowers102"])
def test_an_unprepared_tfds_dataset_fails_at_once_saying_how_to_prepare_it(tmp_path, name,
                                                                           network_attempts):
  version = str(tfds.builder_cls(name).VERSION)
  empty_variant = tmp_path / "half" / name / version   # a folder left by an interrupted build
  empty_variant.mkdir(parents=True)
  for data_dir in (tmp_path / "empty", tmp_path / "half"):
    with pytest.raises(data.DatasetNotPrepared) as error:
      data.load(name, data_dir=str(data_dir))
  assert network_attempts == []                        # no download was tried
  assert not (tmp_path / "empty").exists()             # and nothing written
  assert f"tfds build {name} --file_format=array_record" in str(error.value) and "data_dir" in str(error.value)
  assert isinstance(error.value, RuntimeError)




def test_a_partly_copied_tfds_dataset_fails_at_load_naming_the_file(tmp_path):
  labels = write_prepared_cifar10(tmp_path / "full")
  ds = data.load("cifar10", data_dir=str(tmp_path / "full"))
  assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 10)
  np.testing.assert_array_equal(served(epoch(ds.test, 4), "label"), labels["test"])
  shard = {split: f"cifar10/{CIFAR_VERSION}/cifar10-{split}.array_record-00000-of-00001" for split in ("train", "test")}
  for case in ("missing", "empty", "short", "cut", "corrupted"):
    shutil.copytree(tmp_path / "full", tmp_path / case)
  (tmp_path / "missing" / shard["test"]).unlink()
  (tmp_path / "empty" / shard["test"]).write_bytes(b"")
  for case, size in (("short", 20000), ("cut", 100000)):   # below and above ArrayRecord's 64 KB block
    with open(tmp_path / case / shard["train"], "r+b") as f:
      f.truncate(size)
  for case, split, problem in (("missing", "test", "is missing"), ("empty", "test", "is empty"),
                               ("short", "train", "cannot be read"), ("cut", "train", "cannot be read")):
    with pytest.raises(data.DatasetNotPrepared) as error:
      data.load("cifar10", data_dir=str(tmp_path / case))
    message = str(error.value)
    assert f"the file {tmp_path / case / shard[split]} of its '{split}' split {problem}" in message, message
    assert "tfds build cifar10 --file_format=array_record" in message
  # A file damaged inside, its index intact, loads; reading the damaged example names the file.
  with open(tmp_path / "corrupted" / shard["test"], "r+b") as f:
    f.seek(5000)
    f.write(bytes(3000))
  ds = data.load("cifar10", data_dir=str(tmp_path / "corrupted"))
  with pytest.raises(data.DatasetNotPrepared, match=rf"the file {tmp_path / 'corrupted' / shard['test']} of its "
                                                    rf"'test' split cannot be read at example \d \(Corrupted"):
    epoch(ds.test, 4)


def test_a_tfds_dataset_whose_dataset_info_is_cut_short_is_not_prepared(tmp_path):
  for case, text in (("empty", ""), ("cut", "{bad")):
    write_prepared_cifar10(tmp_path / case)
    (tmp_path / case / "cifar10" / CIFAR_VERSION / "dataset_info.json").write_text(text)
    with pytest.raises(data.DatasetNotPrepared) as error:
      data.load("cifar10", data_dir=str(tmp_path / case))
    message = str(error.value)
    assert "its dataset_info.json cannot be read" in message, message
    assert "copy the prepared folder again (completely)" in message
    assert "tfds build cifar10 --file_format=array_record" in message


def test_a_tfds_data_dir_may_start_with_a_tilde(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  labels = write_prepared_cifar10(tmp_path / "tfds")
  ds = data.load("cifar10", data_dir="~/tfds")
  np.testing.assert_array_equal(served(epoch(ds.test, 4), "label"), labels["test"])


def test_an_unprepared_tfds_dataset_says_where_it_looked(tmp_path):
  write_prepared_cifar10(tmp_path / "dd")
  old = tmp_path / "old" / "cifar10"
  old.mkdir(parents=True)
  shutil.copytree(tmp_path / "dd" / "cifar10" / CIFAR_VERSION, old / "3.0.1")
  for data_dir, says in ((tmp_path / "dd" / "cifar10",   # the dataset's own folder
                          f"there is no folder {tmp_path}/dd/cifar10/cifar10/{CIFAR_VERSION}; data_dir itself holds "
                          f"the version folder(s) {CIFAR_VERSION}, so it is the dataset's own folder: pass the "
                          f"folder above it, data_dir='{tmp_path}/dd'"),
                         (tmp_path / "old", f"there is no folder {tmp_path}/old/cifar10/{CIFAR_VERSION}; "
                                            f"{old} holds version 3.0.1 only"),
                         (tmp_path / "nowhere", f"there is no folder {tmp_path}/nowhere/cifar10/{CIFAR_VERSION} "
                                                f"({tmp_path}/nowhere does not exist)")):
    with pytest.raises(data.DatasetNotPrepared) as error:
      data.load("cifar10", data_dir=str(data_dir))
    assert says in str(error.value) and "Random access" not in str(error.value), str(error.value)


def test_cifar_refuses_a_resize_and_unknown_normalisation():
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(ValueError, match="native 32x32"):
      data.load("cifar10", image_size=224)
    with pytest.raises(ValueError, match="normalization"):
      data.load("cifar10", normalization="mnist")


# --- image folders ---

COLOURS = {"cat": (200, 30, 30), "dog": (30, 30, 200)}


def write_png(path, pixels):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(pixels, np.uint8)).save(path)


def test_domain_folders_are_pooled_and_split_80_10_10(tmp_path):
  colours = {**COLOURS, "cow": (30, 200, 30)}     # more classes than domains: detected as domains
  for domain in ("art", "photo"):
    for cls, colour in colours.items():
      for k in range(5):
        write_png(tmp_path / domain / cls / f"{k}.png", np.broadcast_to(colour, (8, 8, 3)))
  ds = data.load(f"folder:{tmp_path}", image_size=8)
  assert ds.class_names == ("cat", "cow", "dog") and (ds.num_classes, ds.input_shape) == (3, (8, 8, 3))
  assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 3, 3)
  parts = [ds.train.source_indices, ds.val.source_indices, ds.test.source_indices]
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(30))
  for split in (ds.train, ds.val, ds.test):
    batches = epoch(split, 4)
    pixels = served(batches) * IMAGENET[1] + IMAGENET[0]
    want = np.array([colours[ds.class_names[y]] for y in served(batches, "label")]) / 255.0
    np.testing.assert_allclose(pixels, np.broadcast_to(want[:, None, None], pixels.shape), atol=1e-5)
  jittered = [served(epoch(ds.train, 8, augment=True, epoch=e)) for e in (0, 1)]
  assert jittered[0].shape == (24, 8, 8, 3) and not np.allclose(jittered[0], jittered[1])
  same = data.image_folder(tmp_path, layout="domains", image_size=8)
  np.testing.assert_array_equal(same.test.source_indices, ds.test.source_indices)


def test_plain_class_folders_are_detected_and_split(tmp_path):
  for cls, colour in COLOURS.items():
    for k in range(5):
      write_png(tmp_path / cls / f"{k}.png", np.broadcast_to(colour, (12, 10, 3)))
  ds = data.image_folder(tmp_path, image_size=6)
  assert (len(ds.train), len(ds.val), len(ds.test), ds.input_shape) == (8, 1, 1, (6, 6, 3))
  labels = served(epoch(ds.train, 8), "label")
  pixels = served(epoch(ds.train, 8))[:, 0, 0] * IMAGENET[1] + IMAGENET[0]
  np.testing.assert_allclose(pixels, np.array([COLOURS[ds.class_names[y]] for y in labels]) / 255.0, atol=1e-5)


def test_a_validation_share_of_no_image_names_the_fraction_not_the_folder(tmp_path):
  # It said the folder "has only 10 images: too few", whatever its size.
  for cls, colour in COLOURS.items():
    for k in range(5):
      write_png(tmp_path / cls / f"{k}.png", np.broadcast_to(colour, (4, 4, 3)))
  with pytest.raises(ValueError, match=r"val_fraction=0.01 holds out no example of the 10 images "
                                       r".* \(round\(0.01 \* 10\) = 0\).*val_fraction >= 1/10"):
    data.image_folder(tmp_path, image_size=4, val_fraction=0.01)
  with pytest.raises(ValueError, match=r"has only 10 images: too few .*round\(0.9 \* 10\) = 9"):
    data.image_folder(tmp_path, image_size=4, val_fraction=0.9)


def test_a_class_folder_named_train_is_a_class(tmp_path):
  colours = {"bus": (200, 30, 30), "car": (30, 200, 30), "train": (30, 30, 200)}   # as CIFAR-100's "train"
  for cls, colour in colours.items():
    for k in range(5):
      write_png(tmp_path / cls / f"{k}.png", np.broadcast_to(colour, (8, 8, 3)))

  def check(ds):
    assert ds.class_names == ("bus", "car", "train") and (len(ds.train), len(ds.val), len(ds.test)) == (11, 2, 2)
    labels = served(epoch(ds.train, 11), "label")
    pixels = served(epoch(ds.train, 11))[:, 0, 0] * IMAGENET[1] + IMAGENET[0]
    np.testing.assert_allclose(pixels, np.array([colours[ds.class_names[y]] for y in labels]) / 255.0, atol=1e-5)

  check(data.load(f"folder:{tmp_path}", image_size=8))
  for k in range(5):   # "train" holds only a folder now, but bus/ and car/ hold images: still classes
    write_png(tmp_path / "train" / "side" / f"{k}.png", np.broadcast_to(colours["train"], (8, 8, 3)))
    (tmp_path / "train" / f"{k}.png").unlink()
  check(data.load(f"folder:{tmp_path}", image_size=8))
  check(data.load(f"folder:{tmp_path}", image_size=8, layout="classes"))
  with pytest.raises(ValueError, match=r"train holds one class \('side'\)"):
    data.load(f"folder:{tmp_path}", layout="splits")      # the layout is passed through
  with pytest.raises(ValueError, match=r"layout applies to image folders \(folder:<path>\) only"):
    data.load("digits", layout="classes")


def test_folders_that_two_layouts_fit_are_refused_until_layout_names_one(tmp_path):
  kaggle = tmp_path / "kaggle"     # labelled train/<class>/, unlabelled test/
  for cls, colour in COLOURS.items():
    for k in range(5):
      write_png(kaggle / "train" / cls / f"{k}.png", np.broadcast_to(colour, (8, 8, 3)))
  for k in range(3):
    write_png(kaggle / "test" / f"u{k}.png", np.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match=rf"{kaggle} holds folders named like splits \(train, test\), but "
                                       r"test holds images directly.*its classes would be test, train.*"
                                       r"layout='classes' \(on the command line --config.layout=classes\)"):
    data.load(f"folder:{kaggle}", image_size=8)
  assert data.load(f"folder:{kaggle / 'train'}", image_size=8).class_names == ("cat", "dog")
  nested = tmp_path / "nested"     # <class>/<year>/: as many kinds of sub-folder as classes
  for cls, colour in COLOURS.items():
    for year in ("2019", "2020"):
      for k in range(5):
        write_png(nested / cls / year / f"{k}.png", np.broadcast_to(colour, (8, 8, 3)))
  with pytest.raises(ValueError, match=rf"{nested} holds 2 folders \(cat, dog\) of 2 kinds of folder "
                                       r"\(2019, 2020\).*layout='domains' or layout='classes'"):
    data.load(f"folder:{nested}", image_size=8)
  ds = data.load(f"folder:{nested}", image_size=8, layout="classes")
  assert ds.class_names == ("cat", "dog") and len(ds.train) + len(ds.val) + len(ds.test) == 20
  pixels = served(epoch(ds.train, 16))[:, 0, 0] * IMAGENET[1] + IMAGENET[0]
  want = np.array([COLOURS[ds.class_names[y]] for y in served(epoch(ds.train, 16), "label")]) / 255.0
  np.testing.assert_allclose(pixels, want, atol=1e-5)
  assert data.load(f"folder:{nested}", image_size=8, layout="domains").class_names == ("2019", "2020")


def test_class_folders_follow_links_to_folders_once_and_skip_dot_folders(tmp_path):
  store = tmp_path / "store"
  for k in range(4):
    write_png(store / f"{k}.png", np.zeros((8, 8, 3)))
  write_png(store / ".cache" / "hidden.png", np.zeros((8, 8, 3)))
  for cls in ("cat", "dog"):
    for k in range(3):
      write_png(tmp_path / "ds" / cls / f"{k}.png", np.full((8, 8, 3), 9))
  (tmp_path / "ds" / "cat" / "more").symlink_to(store, target_is_directory=True)
  (tmp_path / "ds" / "cat" / "again").symlink_to(store, target_is_directory=True)   # read once
  (store / "loop").symlink_to(tmp_path / "ds" / "cat", target_is_directory=True)     # a cycle
  (tmp_path / "ds" / "dog" / ".hidden").mkdir()
  write_png(tmp_path / "ds" / "dog" / ".hidden" / "x.png", np.zeros((8, 8, 3)))
  ds = data.load(f"folder:{tmp_path / 'ds'}", layout="classes", image_size=8, val_fraction=0.0)
  labels = np.concatenate([served(epoch(s, 8), "label") for s in (ds.train, ds.test)])
  assert np.bincount(labels).tolist() == [3 + 4, 3]   # cat: its own 3 and the 4 linked; dog: 3
  assert data.folders._images_in(tmp_path / "ds" / "cat")[:4] == [tmp_path / "ds" / "cat" / f"{k}.png"
                                                                   for k in (0, 1, 2)] + [
      tmp_path / "ds" / "cat" / "again" / "0.png"]


def test_split_folders_without_val_hold_out_val_fraction_of_train(tmp_path):
  rng = np.random.default_rng(1)
  for part, count in (("train", 5), ("test", 2)):
    for cls in ("n01", "n02"):
      for k in range(count):
        write_png(tmp_path / part / cls / f"{k}.png", rng.integers(0, 256, (8, 8, 3)))
  ds = data.image_folder(tmp_path, val_fraction=0.2)
  assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 2, 4)
  assert not set(ds.train.source_indices) & set(ds.val.source_indices)
  images = {part: {x.tobytes() for x in served(epoch(split, 10))} for part, split in
            (("train", ds.train), ("val", ds.val))}
  assert len(images["train"]) == 8 and len(images["val"]) == 2 and not images["train"] & images["val"]
  everything = data.image_folder(tmp_path, val_fraction=0.0)
  assert everything.val is None and {x.tobytes() for x in served(epoch(everything.train, 10))} == (
      images["train"] | images["val"])
  reseeded = data.image_folder(tmp_path, val_fraction=0.2, split_seed=3)
  assert set(reseeded.val.source_indices) != set(ds.val.source_indices)
  with pytest.raises(ValueError, match=r"val_fraction=0.01 holds out no example of the 10 images of "
                                       r".*train \(round\(0.01 \* 10\) = 0\)"):
    data.image_folder(tmp_path, val_fraction=0.01)


def test_split_folders_serve_native_size_and_flip_only(tmp_path):
  rng = np.random.default_rng(0)
  originals = {}
  for part, count in (("train", 6), ("val", 2), ("test", 2)):
    for cls in ("n01", "n02"):
      for k in range(count):
        pixels = rng.integers(0, 256, (8, 8, 3))
        write_png(tmp_path / part / cls / f"{k}.png", pixels)
        originals.setdefault(part, []).append(pixels / 255.0)
  ds = data.image_folder(tmp_path)
  assert ds.class_names == ("n01", "n02") and ds.input_shape == (8, 8, 3)
  assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 4, 4)
  for part, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
    want = (np.stack(originals[part]) - IMAGENET[0]) / IMAGENET[1]
    np.testing.assert_allclose(served(epoch(split, 5)), want, atol=1e-5)
    np.testing.assert_array_equal(served(epoch(split, 5), "label"), np.repeat([0, 1], len(want) // 2))
  plain = served(epoch(ds.train, 12))
  flipped = 0
  for e in range(3):
    aug = served(epoch(ds.train, 12, augment=True, epoch=e))
    is_plain = np.isclose(aug, plain).all(axis=(1, 2, 3))
    is_flip = np.isclose(aug, plain[:, :, ::-1]).all(axis=(1, 2, 3))
    assert (is_plain | is_flip).all()
    flipped += is_flip.sum()
  assert 0 < flipped < 36


def test_sixteen_bit_images_are_scaled_to_eight_bits_and_float_ones_refused(tmp_path):
  levels = {0: 0, 257: 1, 25700: 100, 32896: 128, 65278: 254}   # 16-bit value: 8-bit value
  for cls in ("cat", "dog"):
    (tmp_path / cls).mkdir()
    for k, level in enumerate(levels):
      Image.fromarray(np.full((8, 8), level, np.uint16)).save(tmp_path / cls / f"{k}.png")
  with Image.open(tmp_path / "cat" / "2.png") as image:
    assert image.mode in ("I", "I;16")                 # as Pillow opens a 16-bit grey PNG
  ds = data.image_folder(tmp_path, image_size=8)
  served_levels = set()
  for split in (ds.train, ds.val, ds.test):
    pixels = served(epoch(split, 1)) * IMAGENET[1] + IMAGENET[0]
    served_levels |= set(np.unique(np.rint(pixels * 255)).tolist())
  assert served_levels == set(levels.values())      # PIL's RGB conversion gave {0, 255}
  Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "dog" / "4.tif")
  (tmp_path / "dog" / "4.png").unlink()
  ds = data.image_folder(tmp_path, image_size=8)
  with pytest.raises(data.UnreadableImageError, match=r"4.tif has floating-point pixels"):
    for split in (ds.train, ds.val, ds.test):
      epoch(split, 1)


def test_image_folder_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load(f"folder:{tmp_path / 'missing'}")
  write_png(tmp_path / "a" / "train" / "cat" / "0.png", np.zeros((8, 8, 3)))
  (tmp_path / "a" / "train" / "dog").mkdir()
  write_png(tmp_path / "a" / "test" / "cat" / "0.png", np.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match=r"train/dog holds no images"):
    data.image_folder(tmp_path / "a")
  for cls in ("cat", "dog"):
    write_png(tmp_path / "b" / "train" / cls / "0.png", np.zeros((8, 8, 3)))
  write_png(tmp_path / "b" / "test" / "cow" / "0.png", np.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match="cow"):
    data.image_folder(tmp_path / "b")
  with pytest.raises(ValueError, match="layout"):
    data.image_folder(tmp_path / "b", layout="imagenet")
  # One class; too few images for every split to hold one (round(0.1 * 5) = 0 test images).
  for k in range(4):
    write_png(tmp_path / "c" / "cat" / f"{k}.png", np.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match=r"c holds one class \('cat'\); a classifier needs at "
                                       r"least two class folders"):
    data.image_folder(tmp_path / "c")
  write_png(tmp_path / "c" / "dog" / "0.png", np.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match="only 5 images: too few .* 10 % test and 10 % validation"):
    data.image_folder(tmp_path / "c")
  write_png(tmp_path / "c" / "dog" / "1.png", np.zeros((8, 8, 3)))
  six = data.image_folder(tmp_path / "c")
  assert (len(six.train), len(six.val), len(six.test)) == (4, 1, 1)
  # A file Pillow cannot read is named when a batch reads it.
  (tmp_path / "c" / "dog" / "1.png").write_bytes(b"not a png")
  with pytest.raises(data.UnreadableImageError, match=r"cannot read image .*c/dog/1.png"):
    for split in (six.train, six.val, six.test):
      epoch(split, 1)


# --- one's own arrays (Dataset.from_arrays) ---

def test_from_arrays_refuses_an_empty_hold_out_and_nan_pixels():
  x, y = np.random.default_rng(0).random((20, 4, 4, 1)), np.arange(20) % 2
  with pytest.raises(ValueError, match=r"val_fraction=0.02 holds out no example of the 20 train examples "
                                       r"\(round\(0.02 \* 20\) = 0\).*val_fraction >= 1/20"):
    data.Dataset.from_arrays(train=(x, y), test=(x, y), val_fraction=0.02)
  with pytest.raises(ValueError, match=r"val_fraction=0.9 holds out all 1 train examples.*lower it"):
    data.Dataset.from_arrays(train=(x[:1], y[:1]), test=(x, y), val_fraction=0.9)
  ds = data.Dataset.from_arrays(train=(x, y), test=(x, y), val_fraction=0.05)
  assert (len(ds.train), len(ds.val)) == (19, 1)
  nan = x.copy()
  nan[3, 1, 2, 0] = np.nan
  for split in ("train", "test"):
    with pytest.raises(ValueError, match=rf"{split} float images hold 1 NaN pixels; they must lie in \[0, 1\]"):
      data.Dataset.from_arrays(**{"train": (x, y), "test": (x, y), split: (nan, y)})


def test_from_arrays_refuses_pytorch_channel_first_images():
  x, y = np.random.default_rng(0).integers(0, 256, (20, 3, 8, 8), dtype=np.uint8), np.arange(20) % 3
  for bad in ({"train": (x, y), "test": (x.transpose(0, 2, 3, 1), y)},
              {"train": (x.transpose(0, 2, 3, 1), y), "test": (x[:, :1] / 255.0, y)}):
    split = "train" if bad["train"][0] is x else "test"
    with pytest.raises(ValueError, match=rf"{split} images of shape \(20, [13], 8, 8\) look like PyTorch's \(N, C, "
                                         rf"H, W\) layout; pass \(N, H, W, C\) images: x.transpose\(0, 2, 3, 1\)"):
      data.Dataset.from_arrays(**bad)
  ds = data.Dataset.from_arrays(train=(x.transpose(0, 2, 3, 1), y), test=(x.transpose(0, 2, 3, 1), y))
  assert ds.input_shape == (8, 8, 3)


def test_from_arrays_records_a_digest_of_each_splits_images_and_labels():
  # A split's indices (0..n-1 of its own array) say nothing of what the arrays hold; the digest does.
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8), rng.integers(0, 3, 20).astype(np.uint8)

  def digest(images, labels):   # sha256 of dtype, shape, bytes; labels as int64
    h = hashlib.sha256(f"{images.dtype.str}{images.shape}".encode())
    h.update(images.tobytes())
    h.update(labels.astype(np.int64).tobytes())
    return h.hexdigest()[:16]

  ds = data.Dataset.from_arrays(train=(x, y), test=(x[:5], y[:5]), val_fraction=0.25, num_classes=3)
  keep, held = ds.train.source_indices, ds.val.source_indices
  assert ds.train.content_digest == digest(x[keep], y[keep])
  assert ds.val.content_digest == digest(x[held], y[held])
  assert ds.test.content_digest == digest(x[:5], y[:5])
  plain = data.Dataset.from_arrays(train=(x, y), test=(x, y), num_classes=3, normalization=None)
  others = {"labels": data.Dataset.from_arrays(train=(x, (y + 1) % 3), test=(x, y), num_classes=3,
                                               normalization=None),
            "images": data.Dataset.from_arrays(train=(255 - x, y), test=(x, y), num_classes=3,
                                               normalization=None),
            "dtype": data.Dataset.from_arrays(train=(x / 255.0, y), test=(x, y), num_classes=3,
                                              normalization=None)}
  for what, other in others.items():
    assert other.train.content_digest != plain.train.content_digest, what
    assert other.test.content_digest == plain.test.content_digest, what
  same = data.Dataset.from_arrays(train=(x.copy(), y.astype(np.int64)), test=(x, y), num_classes=3,
                                  normalization=None)
  assert same.train.content_digest == plain.train.content_digest


def test_from_arrays_centres_a_channel_constant_in_the_train_images_and_warns():
  # RGBA with alpha 255 in every train image: a std of ~0 would turn test alpha 254 into ~-4e9.
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 256, (24, 4, 4, 4), dtype=np.uint8), np.arange(24) % 2
  x[:16, ..., 3], x[16:, ..., 3] = 255, 254
  with pytest.warns(UserWarning, match=r"channel 3 is constant \(1.0\) in the train images: centred, not scaled"):
    ds = data.Dataset.from_arrays(train=(x[:16], y[:16]), test=(x[16:], y[16:]))
  assert ds.train.std[3] == 1.0 and ds.train.mean[3] == pytest.approx(1.0)
  unit = x[:16, ..., :3].astype(np.float64) / 255
  np.testing.assert_allclose(ds.train.std[:3], unit.std(axis=(0, 1, 2)), rtol=1e-6)
  image = next(ds.test.batches(8))["image"]
  assert np.abs(image).max() < 10
  np.testing.assert_allclose(image[..., 3], 254 / 255 - 1.0, atol=1e-6)   # float32 pixels


def test_from_arrays_says_what_it_copies():
  # The docstring used to promise "no copies", but a val_fraction hold-out copies the train arrays.
  doc = " ".join(data.Dataset.from_arrays.__doc__.split())
  assert "no copies" not in doc
  assert "not copied, except that ``val_fraction`` copies the train arrays" in doc
  x, y = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8), np.arange(20) % 2
  assert np.shares_memory(data.Dataset.from_arrays(train=(x, y), test=(x, y)).train.examples.images, x)
  held = data.Dataset.from_arrays(train=(x, y), test=(x, y), val_fraction=0.1)
  assert not np.shares_memory(held.train.examples.images, x)


def test_from_arrays_names_one_hot_and_one_based_labels():
  x, y = np.random.default_rng(0).random((40, 4, 4, 1)), np.arange(40) % 5
  with pytest.raises(ValueError, match=r"train labels must be \(N,\) with N = 40 images, got shape \(40, 5\): "
                                       r"one-hot labels\? pass labels.argmax\(-1\)"):
    data.Dataset.from_arrays(train=(x, np.eye(5, dtype=np.int64)[y]), test=(x, y))
  with pytest.raises(ValueError, match=r"got shape \(40, 1\): pass labels\[:, 0\]"):
    data.Dataset.from_arrays(train=(x, y[:, None]), test=(x, y))
  # Labels 1..5 (MATLAB, SVHN): the inferred num_classes=6 has a class 0 that never occurs.
  with pytest.warns(UserWarning, match=r"class 0 never occurs in the train labels, whose largest, 5, makes "
                                       r"num_classes=6: labels 1..5\? subtract 1, or pass num_classes"):
    ds = data.Dataset.from_arrays(train=(x, y + 1), test=(x, y + 1))
  assert ds.num_classes == 6
  with pytest.warns(UserWarning, match=r"classes 2, 4 never occur"):
    data.Dataset.from_arrays(train=(x, np.where(y % 2, y, 0)), test=(x, y))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    data.Dataset.from_arrays(train=(x, y + 1), test=(x, y + 1), num_classes=6)   # said: no warning
    data.Dataset.from_arrays(train=(x, y), test=(x, y))


class _TwoShapes:
  """A recipe whose evaluation view is narrower than its training view."""
  num_uniforms = 1

  def evaluate(self, images):
    return images[:, :, :2]

  def train(self, images, u):
    return images


def test_from_arrays_tries_the_recipe_and_serves_its_shape():
  rng = np.random.default_rng(0)
  rgb, y = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), np.arange(6) % 2
  crop = augment.ResizedCrop(size=8)
  # Pillow cannot take float or one-channel images: refused here, not at the first batch.
  for train, test, where in ((rgb / 255.0, rgb / 255.0, r"train images \(float64"),
                             (rgb[..., 0], rgb[..., 0], r"train images \(uint8, \(16, 16, 1\)"),
                             (rgb, rgb / 255.0, r"test images \(float64")):
    with pytest.raises(ValueError, match=rf"fails on the {where}.*TypeError.*need uint8 images with 3 channels"):
      data.Dataset.from_arrays(train=(train, y), test=(test, y), augment=crop)
  with pytest.raises(ValueError, match=r"serves one train image of \(16, 16, 3\) as .*one H, W, C for both views"):
    data.Dataset.from_arrays(train=(rgb, y), test=(rgb, y), augment=_TwoShapes())
  # A recipe that resizes: the dataset serves its 8x8 output (shorter side 16 -> round(8 / 0.875) = 9, centre 8x8).
  ds = data.Dataset.from_arrays(train=(rgb, y), test=(rgb, y), augment=crop, normalization=None)
  assert ds.input_shape == ds.test.image_shape == (8, 8, 3)
  want = [np.asarray(Image.fromarray(im).resize((9, 9), Image.BILINEAR).crop((0, 0, 8, 8))) / 255.0 for im in rgb]
  np.testing.assert_allclose(served(epoch(ds.test, 4)), np.stack(want), atol=1e-6)
  assert served(epoch(ds.train, 4, augment=True)).shape == (6, 8, 8, 3)

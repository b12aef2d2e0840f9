"""A real prepared tfds dataset on disk (ArrayRecord files and tfds metadata), written without
TensorFlow or a download, for the tests of loading and of a damaged copy."""
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


def write_prepared_cifar10(data_dir, sizes=(("train", 20), ("test", 10))):
  """A real prepared cifar10 (ArrayRecord files and tfds metadata, written without TensorFlow): its
  examples' labels, by split."""
  from array_record.python import array_record_module   # pylint: disable=import-outside-toplevel
  builder = tfds.builder("cifar10", data_dir=str(data_dir), file_format="array_record")
  folder, rng, labels, splits = builder.data_dir, np.random.default_rng(0), {}, []
  os.makedirs(folder)
  for split, n in sizes:
    writer = array_record_module.ArrayRecordWriter(os.path.join(folder, f"cifar10-{split}.array_record-00000-of-00001"),
                                                   "group_size:1")
    labels[split] = (np.arange(n) * 3 + len(split)) % 10
    for i in range(n):
      png = io.BytesIO()   # tfds would need TensorFlow to encode an array
      Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png, format="PNG")
      png.seek(0)
      example = {"id": f"{split}_{i}", "image": png, "label": int(labels[split][i])}
      writer.write(builder.info.features.serialize_example(example))
    writer.close()
    template = tfds.core.ShardedFileTemplate(data_dir=folder, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                                             dataset_name="cifar10", split=split, filetype_suffix="array_record")
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0, filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.set_file_format("array_record")
  builder.info.write_to_directory(folder)
  return labels


CIFAR_VERSION = str(tfds.builder_cls("cifar10").VERSION)

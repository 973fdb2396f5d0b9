"""TFDS `fashion_mnist` built offline from local idx files (the Debian package `dataset-fashion-mnist`).

The Debian files are the original idx-ubyte arrays recompressed, so TFDS's download checksums do not match
them: this builder extracts them from `manual_dir` instead of downloading, which verifies no checksums.
It keeps TFDS's name, version and features, so what it writes reads back with plain
`tfds.data_source('fashion_mnist', data_dir=...)`. Preparing needs TensorFlow (`pip install 'jaxgen[prepare]'`).
"""
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist

DEFAULT_MANUAL_DIR = '/usr/share/datasets/fashion-mnist'
FILES = {  # split -> (images, labels) in idx format, gzipped
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


def has_files(manual_dir: str) -> bool:
  return all((tfds.core.Path(manual_dir) / name).exists() for pair in FILES.values() for name in pair)


def _idx_count(path) -> int:
  """Number of items in an idx file: header is big-endian uint32 (magic, count, dims...)."""
  with open(path, 'rb') as f:
    magic, count = np.frombuffer(f.read(8), '>u4')
  if magic >> 8 != 0x08:  # 0x00000803 images, 0x00000801 labels: uint8 data
    raise ValueError(f'{path} is not an idx file of uint8 (magic {magic:#x})')
  return int(count)


class LocalFashionMNIST(mnist.FashionMNIST, skip_registration=True):
  """`fashion_mnist` (same name, version and features) from the four .gz files in `manual_dir`."""

  name = 'fashion_mnist'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'`apt-get install dataset-fashion-mnist` (files in {DEFAULT_MANUAL_DIR}), or put '
      f'{", ".join(n for pair in FILES.values() for n in pair)} in one directory and pass it as manual_dir.')

  def _split_generators(self, dl_manager):
    paths = dl_manager.extract(
        {split: [dl_manager.manual_dir / name for name in pair] for split, pair in FILES.items()})
    splits = {}
    for split, (images, labels) in paths.items():
      num_examples = _idx_count(images)
      if _idx_count(labels) != num_examples:
        raise ValueError(f'{images} and {labels} hold different numbers of examples')
      splits[split] = self._generate_examples(
          num_examples=num_examples, data_path=images, label_path=labels)
    return splits


def prepare(data_dir: str | None, manual_dir: str) -> None:
  """Writes `fashion_mnist` as ArrayRecord into `data_dir` (None: TFDS default) from `manual_dir`."""
  builder = LocalFashionMNIST(data_dir=data_dir, file_format='array_record')
  with tempfile.TemporaryDirectory() as tmp:  # the extracted idx files are not kept
    builder.download_and_prepare(download_dir=tmp, download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False))

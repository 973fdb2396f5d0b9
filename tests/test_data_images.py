"""Image input pipeline: pixel scaling, epochs, determinism, process shards, checkpointed position, setup.

The pipeline reads `tfds.data_source` under `tfds.testing.mock_data`, with a synthetic source whose example i
is identifiable (label i) and whose pixels cover all 256 uint8 values. (mock_data's default source cannot be
used here: its `__getitems__` is not bound in tfds 4.9.10, and the pixel values must be known.)
"""
import gzip
import struct
import sys
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import requests
import tensorflow_datasets as tfds

from jaxgen.config import base_config
from jaxgen.data import images, local_fashion_mnist
from jaxgen.errors import UserError

NUM_TRAIN, NUM_TEST = 40, 30


def _image(i):
  return ((np.arange(28 * 28) + 7 * i) % 256).astype(np.uint8).reshape(28, 28, 1)  # every value 0..255


class Synthetic:
  """A TFDS-like random-access source: example i = {'image': _image(i), 'label': i}."""

  def __init__(self, n, offset=0):
    self.n, self.offset = n, offset

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    i = self.offset + int(i)
    return {'image': _image(i), 'label': np.int64(i)}

  def __getitems__(self, keys):
    return [self[k] for k in keys]


def _as_data_source(builder, split, **kwargs):
  del builder, kwargs
  return Synthetic(NUM_TRAIN) if split == 'train' else Synthetic(NUM_TEST, offset=1000)


@pytest.fixture
def config(tmp_path):
  c = base_config()
  c.batch_size = 8
  c.data.data_dir = str(tmp_path / 'tfds')
  c.data.eval_examples = 30
  with tfds.testing.mock_data(as_data_source_fn=_as_data_source):
    yield c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _labels(batches):
  return np.concatenate([b['label'] for b in batches])


@pytest.mark.parametrize('pixel_range', [(-1.0, 1.0), (0.0, 1.0)])
def test_pixels_scale_exactly_to_pixel_range(config, pixel_range):
  config.data.pixel_range = pixel_range
  lo, hi = pixel_range
  batch = next(images.train_iterator(config))
  assert batch['image'].shape == (8, 28, 28, 1) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  for image, label in zip(batch['image'], batch['label']):
    raw = _image(label).astype(np.float64)
    np.testing.assert_array_equal(image, np.float32(lo + raw / 255 * (hi - lo)))  # float64 math, rounded once
    assert image[raw == 0].min() == lo and image[raw == 255].max() == hi


@pytest.mark.parametrize('pixel_range', [(-1.0, 1.0), (0.0, 1.0)])
def test_the_trainers_wire_batches_are_uint8_and_map_back_to_the_same_floats(config, pixel_range, monkeypatch):
  """Dataset.wire: the same batches with uint8 pixels (a quarter of the bytes to the device); to_model gives
  train_iterator's floats bit for bit, on the host and inside jit (where the trainer applies it)."""
  monkeypatch.setattr(images, '_online', lambda builder: True)      # the mock's download_and_prepare does nothing
  config.data.pixel_range = pixel_range
  dataset = images.load(config, '')
  floats, wire = _take(dataset.train_iterator(), 3), _take(dataset.wire.train_iterator(), 3)
  to_model = jax.jit(dataset.wire.to_model)
  for f, w in zip(floats, wire):
    assert w['image'].dtype == np.uint8 and w['image'].nbytes * 4 == f['image'].nbytes
    np.testing.assert_array_equal(w['label'], f['label'])
    for mapped in (dataset.wire.to_model(w), to_model(w)):
      assert mapped['image'].dtype == np.float32
      np.testing.assert_array_equal(np.asarray(mapped['image']), f['image'])


def test_each_epoch_is_a_new_permutation(config):
  it = images.train_iterator(config)
  per_epoch = NUM_TRAIN // 8
  epoch1, epoch2 = _labels(_take(it, per_epoch)), _labels(_take(it, per_epoch))
  assert sorted(epoch1) == sorted(epoch2) == list(range(NUM_TRAIN))
  assert not np.array_equal(epoch1, epoch2) and not np.array_equal(epoch1, np.arange(NUM_TRAIN))


def test_order_is_a_function_of_the_seed(config):
  first = _labels(_take(images.train_iterator(config), 10))
  np.testing.assert_array_equal(first, _labels(_take(images.train_iterator(config), 10)))
  config.seed = 1
  assert not np.array_equal(first, _labels(_take(images.train_iterator(config), 10)))


def _as_process(monkeypatch, index, count):
  monkeypatch.setattr(jax, 'process_index', lambda: index)
  monkeypatch.setattr(jax, 'process_count', lambda: count)


def test_processes_read_disjoint_shares_that_cover_the_data(config, monkeypatch):
  shares, evals = [], []
  for index in range(2):
    _as_process(monkeypatch, index, 2)
    batches = _take(images.train_iterator(config), NUM_TRAIN // 8)  # one epoch of 4-example batches
    assert all(b['label'].shape == (4,) for b in batches)
    shares.append(set(_labels(batches)))
    evals.append(_labels(images.eval_batches(config)))
  assert len(shares[0]) == len(shares[1]) == NUM_TRAIN // 2
  assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(NUM_TRAIN))
  # eval: 30 examples -> 3 global batches of 8 -> 12 examples on each process, the first 24 in all
  assert len(evals[0]) == len(evals[1]) == 12
  assert sorted(np.concatenate(evals)) == list(range(1000, 1024))


def test_eval_batches_are_the_first_test_examples_in_order_and_reiterable(config):
  ds = images.eval_batches(config)
  batches = list(ds)
  assert [b['label'].shape for b in batches] == [(8,)] * 3  # 30 // 8 batches, remainder dropped
  np.testing.assert_array_equal(_labels(batches), np.arange(1000, 1024))
  np.testing.assert_array_equal(_labels(ds), _labels(batches))
  config.data.eval_examples = 7
  assert not list(images.eval_batches(config))  # less than a batch: nothing (the trainer says so)


def test_iterator_state_restores_the_exact_position(config):
  it = images.train_iterator(config)
  _take(it, 7)  # into the second epoch
  state = it.get_state()
  expected = _labels(_take(it, 6))
  fresh = images.train_iterator(config)
  fresh.set_state(state)
  np.testing.assert_array_equal(_labels(_take(fresh, 6)), expected)


def test_orbax_checkpoint_restores_the_iterator_mid_epoch(config, tmp_path):
  it = images.train_iterator(config)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.save(3, args=ocp.args.Composite(
        params=ocp.args.StandardSave({'w': np.arange(3.0)}), data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = _take(it, 4)
  fresh = images.train_iterator(config)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    restored = manager.restore(3, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(), data=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(restored['params']['w'], np.arange(3.0))
  for got, want in zip(_take(restored['data'], 4), expected):
    np.testing.assert_array_equal(got['label'], want['label'])
    np.testing.assert_array_equal(got['image'], want['image'])


def _offline(monkeypatch):
  """No network: connects fail at once, and a TFDS download would fail the test."""
  probes = []

  def refuse(address, timeout):
    probes.append(address)
    raise OSError('network is unreachable')

  def no_download(*args, **kwargs):
    raise AssertionError('setup tried to download although the network is down')

  monkeypatch.setattr(images.socket, 'create_connection', refuse)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', no_download)
  return probes


@pytest.mark.parametrize('failure', ['probe', 'download'])
def test_setup_offline_without_local_files_is_a_one_line_user_error(tmp_path, monkeypatch, failure):
  config = base_config()
  config.data.data_dir, config.data.manual_dir = str(tmp_path / 'tfds'), str(tmp_path / 'empty')
  if failure == 'probe':
    probes = _offline(monkeypatch)
  else:  # the hosts answer, then the download itself fails
    probes = []
    monkeypatch.setattr(images, '_reachable', lambda host, port: probes.append(host) or True)

    def fail(*args, **kwargs):
      raise requests.ConnectionError('Max retries exceeded')

    monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', fail)
  start = time.perf_counter()
  with pytest.raises(UserError) as error:
    images.load(config, str(tmp_path))
  assert time.perf_counter() - start < 5 and probes
  message = str(error.value)
  assert '\n' not in message and 'fashion_mnist is not prepared' in message
  assert 'apt-get install dataset-fashion-mnist' in message and '--config.data.manual_dir=' in message


def test_setup_without_tensorflow_asks_for_the_prepare_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow', None)  # find_spec('tensorflow') -> None
  config = base_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(UserError, match=r"pip install 'jaxgen\[prepare\]'"):
    images.load(config, str(tmp_path))


def _write_idx(path, array):
  """idx format: big-endian uint32 magic (0x08 = uint8, then the number of dims), the dims, then the bytes."""
  header = struct.pack(f'>I{array.ndim}I', 0x0800 | array.ndim, *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


def _write_fashion_mnist_files(manual):
  """Tiny Debian-style Fashion-MNIST files; returns {split: (pixels (N, 28, 28), labels (N,))}."""
  rng = np.random.default_rng(0)
  manual.mkdir()
  data = {}
  for split, n in [('train', 12), ('test', 6)]:
    data[split] = rng.integers(0, 256, (n, 28, 28), np.uint8), rng.integers(0, 10, n, np.uint8)
    for name, array in zip(local_fashion_mnist.FILES[split], data[split]):
      _write_idx(manual / name, array)
  return data


def test_offline_setup_prepares_local_fashion_mnist_readable_by_tfds_data_source(tmp_path, monkeypatch, capsys):
  manual = tmp_path / 'manual'
  data = _write_fashion_mnist_files(manual)
  config = base_config()
  config.batch_size = 4
  config.data.data_dir, config.data.manual_dir = str(tmp_path / 'tfds'), str(manual)
  monkeypatch.setattr(images.socket, 'create_connection', lambda *a, **k: (_ for _ in ()).throw(OSError()))

  spec = images.load(config, str(tmp_path)).spec
  out = capsys.readouterr().out  # our one line, then TFDS's progress
  assert out.startswith(f'jaxgen: no network; preparing fashion_mnist from the local files in {manual}\n')
  assert spec.image_shape == (28, 28, 1) and spec.num_classes == 10
  assert 'image_shape' not in config.data                            # the config is never written to
  builder = tfds.builder('fashion_mnist', data_dir=config.data.data_dir)
  assert str(builder.version) == '3.0.1' and builder.data_dir.endswith('fashion_mnist/3.0.1')
  for split, (pixels, labels) in data.items():
    source = tfds.data_source('fashion_mnist', split=split, data_dir=config.data.data_dir, download=False)
    read = sorted((e['image'].tobytes(), int(e['label'])) for e in source)  # TFDS stores examples shuffled
    assert read == sorted(zip((p[..., None].tobytes() for p in pixels), labels.tolist()))

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      lambda *a, **k: pytest.fail('prepared twice'))
  images.load(config, str(tmp_path))  # already prepared: nothing to do
  batch = next(images.train_iterator(config))
  assert batch['image'].shape == (4, 28, 28, 1) and batch['image'].min() >= -1 and batch['image'].max() <= 1


def test_worker_processes_yield_the_same_batches_and_restore(config):
  expected = _labels(_take(images.train_iterator(config), 8))
  config.data.num_workers = 2
  it = images.train_iterator(config)
  np.testing.assert_array_equal(_labels(_take(it, 5)), expected[:40])
  fresh = images.train_iterator(config)
  fresh.set_state(it.get_state())
  np.testing.assert_array_equal(_labels(_take(fresh, 3)), expected[40:])


def test_setup_rejects_a_dataset_prepared_as_tfrecord(tmp_path):
  _write_fashion_mnist_files(tmp_path / 'manual')
  builder = local_fashion_mnist.LocalFashionMNIST(data_dir=str(tmp_path / 'tfds'), file_format='tfrecord')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'manual')))
  config = base_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(UserError, match='prepared in .* as tfrecord.*tfds convert_format'):
    images.load(config, str(tmp_path))


def test_pipeline_runs_on_mock_datas_default_source(tmp_path):
  """mock_data's own source (used by the trainer tests) has no working batched read: examples are read one by one."""
  config = base_config()
  config.batch_size, config.data.data_dir = 8, str(tmp_path / 'tfds')
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    batch = next(images.train_iterator(config))
  assert batch['image'].shape == (8, 28, 28, 1) and batch['image'].dtype == np.float32
  assert -1 <= batch['image'].min() and batch['image'].max() <= 1 and batch['label'].dtype == np.int32


# ------------------------------------------------------------------------------------------------- CelebA

CELEB_A = {'train': 12, 'validation': 4, 'test': 8}


def _face(i):
  """A 218x178x3 stand-in for CelebA's aligned faces: the central 148x148 square (rows 35..182, columns
  15..162) is a flat colour from i, the rest black."""
  image = np.zeros((218, 178, 3), np.uint8)
  image[35:183, 15:163] = (10 * i % 256, 255 - i, 100)
  return image


class Faces:
  """CelebA-like source: example i = {'image': _face(offset + i), 'attributes': ...} and no label."""

  def __init__(self, n, offset=0):
    self.n, self.offset = n, offset

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {'image': _face(self.offset + int(i)), 'attributes': {'Smiling': bool(i % 2)}}

  def __getitems__(self, keys):
    return [self[k] for k in keys]


@pytest.fixture
def celeb_a(tmp_path):
  c = base_config()
  c.batch_size, c.data.eval_examples = 4, 8
  c.data.name, c.data.center_crop, c.data.image_size = 'celeb_a', 148, 64
  c.data.data_dir = str(tmp_path / 'tfds')
  as_source = lambda builder, split, **kwargs: Faces(CELEB_A[str(split)], offset=100 if split == 'test' else 0)
  with tfds.testing.mock_data(as_data_source_fn=as_source):
    yield c


def test_celeb_a_is_center_cropped_to_148_and_resized_to_64_without_labels(celeb_a):
  spec = images.synthetic_spec(celeb_a)
  assert spec.image_shape == (64, 64, 3) and spec.num_classes == 0
  assert 'image_shape' not in celeb_a.data                           # derived, not written to the config
  batch = next(images.train_iterator(celeb_a))
  assert set(batch) == {'image'} and batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.float32
  # the crop is exactly the coloured square: any black border would darken the resized edges
  for i, image in zip(range(100, 104), next(iter(images.eval_batches(celeb_a)))['image']):
    expected = np.float32(-1 + np.array(_face(i)[100, 80], np.float64) / 255 * 2)
    np.testing.assert_allclose(image, np.broadcast_to(expected, (64, 64, 3)), atol=1e-6)


def test_center_crop_resize_is_pils_bilinear_resize_of_the_central_square():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
  from PIL import Image
  expected = np.asarray(Image.fromarray(image[35:183, 15:163]).resize((64, 64), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(images.center_crop_resize(image, 148, 64), expected)
  np.testing.assert_array_equal(images.center_crop_resize(image, 0, 0), image)
  gray = image[..., :1]
  assert images.center_crop_resize(gray, 100, 32).shape == (32, 32, 1)


def test_a_crop_larger_than_the_images_is_a_user_error(celeb_a):
  celeb_a.data.center_crop = 200
  with pytest.raises(UserError, match='data.center_crop=200 is larger than the 218x178 images'):
    images.synthetic_spec(celeb_a)


def test_offline_celeb_a_is_prepared_by_tfds_from_the_downloads_in_manual_dir(tmp_path, monkeypatch, capsys):
  config = base_config()
  config.data.name, config.data.data_dir = 'celeb_a', str(tmp_path / 'tfds')
  config.data.manual_dir = str(tmp_path / 'manual')
  _offline(monkeypatch)
  with pytest.raises(UserError, match=r'--config.data.manual_dir=DIR holding its downloads \(identity_CelebA.txt, '
                                      r'img_align_celeba.zip, .*list_landmarks_align_celeba.txt\)') as error:
    images.prepare(config)                                            # manual_dir empty: one line naming the files
  assert '\n' not in str(error.value)
  (tmp_path / 'manual').mkdir()
  for name in ('img_align_celeba.zip', 'list_eval_partition.txt', 'list_attr_celeba.txt',
               'list_landmarks_align_celeba.txt', 'identity_CelebA.txt'):
    (tmp_path / 'manual' / name).write_bytes(b'')
  calls = []
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', lambda self, **kw: calls.append(kw))
  images.prepare(config)
  assert capsys.readouterr().out.startswith(f'jaxgen: no network; preparing celeb_a from the local files in {tmp_path}/manual')
  (kwargs,) = calls
  assert kwargs['file_format'] == 'array_record'
  assert str(kwargs['download_config'].manual_dir) == config.data.manual_dir
  assert kwargs['download_config'].try_download_gcs is False

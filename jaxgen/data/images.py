"""Image datasets (data.modality=image: fashion_mnist, mnist, cifar10, celeb_a, any TFDS dataset with an image
feature and optionally a label): TFDS ArrayRecord files read through Grain.

Spec: modality='image', name, image_shape (H, W, C) after data.center_crop / data.image_size, num_classes
(0 without labels; the batches then have no 'label').

Training order: a fresh permutation of the split per epoch (data.base.shuffled_epochs), deterministic in
config.seed, cut into global batches, with the iterator position checkpointable (get_state / set_state).
Process p of n reads the p-th of n contiguous blocks of each global batch, so the global batch (the
concatenation over processes) is the same, row for row, whatever the number of processes.
"""
import fcntl
import functools
import glob
import importlib
import importlib.util
import os
import shutil
import socket
import threading
import urllib.parse
import urllib.request

from absl import flags
import grain
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image
import requests
import tensorflow_datasets as tfds

from jaxgen.data import base
from jaxgen.errors import UserError

_PROBE_TIMEOUT_S = 3.0


def load(config, workdir: str) -> base.Dataset:
  """Prepares the dataset as ArrayRecord in data.data_dir if needed; its spec and iterators."""
  del workdir
  builder = prepare(config)
  wire = base.Wire(lambda: train_iterator(config, functools.partial(_read_images, wire=True)),
                   to_pixel_range(tuple(config.data.pixel_range)))
  return base.Dataset(_spec(config, builder.info.features), lambda: train_iterator(config),
                      lambda: eval_batches(config), wire)


def pixel_table(pixel_range) -> np.ndarray:
  """float32 (256,): lo + x / 255 (hi - lo) for each uint8 pixel value x, rounded once from float64."""
  lo, hi = pixel_range
  return (lo + np.arange(256) / 255 * (hi - lo)).astype(np.float32)


@functools.lru_cache(maxsize=None)   # one function per range: the trainer's jitted step is reused across runs
def to_pixel_range(pixel_range: tuple[float, float]):
  """to_model of the uint8 wire batches: batch['image'] uint8 -> pixel_table[image] (numpy on numpy arrays, a
  gather inside jit), the exact floats ReadBatch gives; the other entries as they are."""
  table = pixel_table(pixel_range)

  def to_model(batch):
    image = batch['image']
    return {**batch, 'image': table[image] if isinstance(image, np.ndarray) else jnp.asarray(table)[image]}

  return to_model


# TFDS builders that jaxgen defines: importing the module registers the builder with TFDS, done on first use
BUILDERS = {'fashion_mnist_scenes': 'jaxgen.data.scenes', 'jaxgen_notes': 'jaxgen.data.notes'}


def register(name: str) -> None:
  """Make jaxgen's own TFDS builder `name` (BUILDERS) known to tfds.builder; other names are TFDS's."""
  if name in BUILDERS:
    importlib.import_module(BUILDERS[name])


def synthetic_spec(config):
  """From the TFDS builder's feature declaration: no download."""
  register(config.data.name)
  return _spec(config, tfds.builder(config.data.name, data_dir=config.data.data_dir).info.features)


def _crop_and_size(config) -> tuple[int, int]:
  """(data.center_crop, data.image_size): the side of the central square kept and the side it is resized to
  (0: keep the image / its size); keys a config may leave out."""
  crop, size = config.data.get('center_crop', 0), config.data.get('image_size', 0)
  for key, value in (('center_crop', crop), ('image_size', size)):
    if not isinstance(value, int) or value < 0:
      raise UserError(f'data.{key}={value!r} must be a non-negative integer (0: off; set --config.data.{key})')
  return crop, size


def _spec(config, features):
  """Labels are optional (celeb_a has none: num_classes 0); image_shape is after the crop and resize."""
  name = config.data.name
  if 'image' not in features:
    raise UserError(f'TFDS dataset {name} has no image feature (it has {sorted(features)}); '
                    'data.modality=image reads image datasets')
  h, w, c = features['image'].shape
  crop, size = _crop_and_size(config)
  if None in (h, w) and not size:   # images of varying sizes (coco_captions) are batched at one size
    raise UserError(f'the images of {name} vary in size: set --config.data.image_size (and data.center_crop)')
  if None not in (h, w) and crop > min(h, w):
    raise UserError(f'data.center_crop={crop} is larger than the {h}x{w} images of {name}; use at most {min(h, w)}')
  if crop:
    h = w = crop
  if size:
    h = w = size
  num_classes = features['label'].num_classes if 'label' in features else 0
  return base.make_spec(modality='image', name=name, image_shape=(h, w, c), num_classes=num_classes)


def prepare(config):
  """The TFDS builder of config.data.name, prepared as ArrayRecord in data.data_dir if it was not."""
  name, data_dir = config.data.name, config.data.data_dir
  register(name)
  builder = tfds.builder(name, data_dir=data_dir)  # the file format comes from the prepared files, if any
  if builder.is_prepared():
    if 'array_record' not in {f.value for f in builder.info.available_file_formats()}:
      raise UserError(
          f'{name} is prepared in {builder.data_dir} as {builder.info.file_format.value}, but Grain reads '
          f'array_record: run `tfds convert_format --dataset_dir={builder.data_dir} --out_file_format=array_record`'
          f' or use another --config.data.data_dir')
  else:   # process 0 first; then every host whose data_dir is its own (not shared) prepares its copy
    if jax.process_index() == 0:
      _prepare_once(config, builder)
    multihost_utils.sync_global_devices(f'jaxgen: {name} prepared')
    if jax.process_index() != 0 and not tfds.builder(name, data_dir=data_dir).is_prepared():
      _prepare_once(config, builder)
  return builder


def _prepare_once(config, builder) -> None:
  """_prepare, one preparation at a time per dataset folder (an fcntl lock, released by the OS however the
  holder ends: a second run waits, then finds the data prepared). TFDS writes into
  `<data_dir>/<name>/incomplete.<random>_<version>/` and renames it when done, so a preparation killed
  with -9 leaves only such a folder; holding the lock, no preparation is running, and they are removed."""
  folder = os.path.dirname(builder.data_dir)                      # <data_dir>/<name>[/<config>]
  if '://' in folder:                                             # a bucket: no local locks; TFDS as it is
    _prepare(config, builder)
    return
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, '.jaxgen-prepare.lock'), 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if tfds.builder(config.data.name, data_dir=config.data.data_dir).is_prepared():
      return                                                      # another run prepared it meanwhile
    for leftover in sorted(glob.glob(os.path.join(folder, tfds.core.constants.INCOMPLETE_PREFIX + '*'))):
      print(f'jaxgen: removing {leftover}, left by an interrupted preparation of {config.data.name}')
      shutil.rmtree(leftover, ignore_errors=True)
    _prepare(config, builder)


def _prepare(config, builder) -> None:
  """TFDS download and prepare; offline, Fashion-MNIST from the local Debian files."""
  name = config.data.name
  if importlib.util.find_spec('tensorflow') is None:  # TFDS writes its example protos with TensorFlow
    raise UserError(f"preparing {name} needs TensorFlow: pip install 'jaxgen[prepare]' "
                    '(or point --config.data.data_dir at a prepared copy)')
  if _online(builder):
    try:
      reads_local_files = bool(builder.MANUAL_DOWNLOAD_INSTRUCTIONS)   # e.g. jaxgen_notes' SoundFont
      builder.download_and_prepare(file_format='array_record', download_config=tfds.download.DownloadConfig(
          manual_dir=config.data.manual_dir if reads_local_files else None))
      return
    except (requests.ConnectionError, requests.Timeout):
      pass  # no network after all: fall back to local files
  from jaxgen.data import local_fashion_mnist
  manual_dir = config.data.manual_dir or local_fashion_mnist.DEFAULT_MANUAL_DIR
  if name == 'fashion_mnist' and local_fashion_mnist.has_files(manual_dir):
    print(f'jaxgen: no network; preparing fashion_mnist from the local files in {manual_dir}')
    local_fashion_mnist.prepare(config.data.data_dir, manual_dir)
    return
  # Other TFDS builders take their downloads from manual_dir when every file is there under its own name
  # (e.g. celeb_a's img_align_celeba.zip, list_eval_partition.txt, ...): TFDS still checks their checksums.
  downloads = sorted({info.filename for info in (builder.url_infos or {}).values() if info.filename})
  if name != 'fashion_mnist' and config.data.manual_dir and downloads and all(
      os.path.exists(os.path.join(config.data.manual_dir, f)) for f in downloads):
    print(f'jaxgen: no network; preparing {name} from the local files in {config.data.manual_dir}')
    builder.download_and_prepare(file_format='array_record', download_config=tfds.download.DownloadConfig(
        manual_dir=config.data.manual_dir, try_download_gcs=False))
    return
  if name == 'fashion_mnist':
    offline = (f'offline, `apt-get install dataset-fashion-mnist` or --config.data.manual_dir=DIR holding '
               f'{", ".join(local_fashion_mnist.FILES["train"] + local_fashion_mnist.FILES["test"])}')
  else:
    local = f'--config.data.manual_dir=DIR holding its downloads ({", ".join(downloads)}), or ' if downloads else ''
    offline = (f'offline, {local}run `tfds build {name} --file_format=array_record` where there is network and '
               f'copy its data dir here (--config.data.data_dir=DIR)')
  raise UserError(f'{name} is not prepared in {builder.data_dir_root} and cannot be downloaded (no network): '
                  f'connect to the internet and rerun, or {offline}')


def _online(builder) -> bool:
  """Whether every host the builder downloads from (through a proxy if one is set) accepts a TCP connection."""
  proxies = urllib.request.getproxies()
  hosts = set()
  for url in builder.url_infos or ():
    url = urllib.parse.urlsplit(proxies.get(urllib.parse.urlsplit(url).scheme, url))
    hosts.add((url.hostname, url.port or (443 if url.scheme == 'https' else 80)))
  return all(_reachable(*host) for host in hosts)


def _reachable(host: str, port: int) -> bool:
  """A connect in a thread, so that a slow DNS lookup (which ignores socket timeouts) is bounded too."""
  ok = []

  def connect():
    try:
      socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
      ok.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(_PROBE_TIMEOUT_S)
  return bool(ok)


def center_crop_resize(image: np.ndarray, crop: int, size: int) -> np.ndarray:
  """uint8 (H, W, C) -> its central crop x crop square (0: all of it), resized to size x size (0: as it is)
  with PIL's antialiased bilinear filter (CelebA 64x64: 178x218 -> central 148 -> 64)."""
  if crop:
    top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
    image = image[top:top + crop, left:left + crop]
  if size and image.shape[:2] != (size, size):
    resized = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).resize(
        (size, size), Image.Resampling.BILINEAR)
    image = np.asarray(resized).reshape(size, size, image.shape[-1])
  return image


def read_examples(source, indices) -> list[dict]:
  """The examples of a TFDS data source at indices (B,), decoded."""
  keys = np.asarray(indices).tolist()
  try:
    return source.__getitems__(keys)  # one ArrayRecord read for the batch: ~10x faster than one by one
  except TypeError:  # a source without a working batched read, e.g. tfds.testing.mock_data's
    return [source[k] for k in keys]


class ReadBatch(grain.transforms.Map):
  """Indices (B,) -> one batched read of those examples from a TFDS data source, decoded and stacked:
  {'image': float32 (B, H, W, C) = pixel_table[x] for uint8 pixels x (center-cropped and resized first where
  crop / size are set; with wire, x itself), 'label': int32 (B,) (where the dataset has labels)}."""

  def __init__(self, source, pixel_range, crop: int = 0, size: int = 0, labels: bool = True, wire: bool = False):
    self.source, self.crop, self.size, self.labels = source, crop, size, labels
    self.table = None if wire else pixel_table(pixel_range)

  def map(self, indices):
    examples = read_examples(self.source, indices)
    image = np.stack([center_crop_resize(e['image'], self.crop, self.size) for e in examples])  # uint8 (B, H, W, C)
    batch = {'image': image if self.table is None else self.table[image]}
    return batch | ({'label': np.array([e['label'] for e in examples], np.int32)} if self.labels else {})


def _source(config, split: str):
  """The TFDS split, random access: source[i] = {'image': uint8 (H, W, C), 'label': int64}."""
  return tfds.data_source(config.data.name, split=split, data_dir=config.data.data_dir, download=False)


def _read_images(config, source, wire: bool = False) -> grain.transforms.Map:
  features = tfds.builder(config.data.name, data_dir=config.data.data_dir).info.features
  return ReadBatch(source, config.data.pixel_range, *_crop_and_size(config), labels='label' in features, wire=wire)


class _WithEpoch:
  """(position i in the repeated order, example k) -> [k, epoch i // n] for a split of n examples."""

  def __init__(self, n: int):
    self.n = n

  def __call__(self, i: int, k: int) -> np.ndarray:
    return np.array([k, i // self.n])


def train_iterator(config, read=_read_images, epochs: bool = False) -> grain.DatasetIterator:
  """Endless, checkpointable iterator of this process's batches; every epoch is a new permutation.

  Shuffling, repeating and batching act on example indices (a random-access MapDataset, so the iterator
  state is just a position); each batch of indices is then read and decoded in one call, by
  read(config, source) (another modality's reader of TFDS examples, e.g. jaxgen.data.audio's). With epochs,
  the reader gets rows [example, epoch] (B, 2) instead (to vary an example by epoch: one of its captions).
  """
  source = _source(config, 'train')
  ds = base.shuffled_epochs(len(source), config.seed)  # reshuffled every epoch
  if epochs:
    ds = ds.map_with_index(_WithEpoch(len(source)))
  ds = ds.batch(config.batch_size, drop_remainder=True).map(base.ProcessRows(config))
  ds = ds.map(read(config, source))
  ds = ds.to_iter_dataset(base.read_options(config))
  if config.data.num_workers > 0:
    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags; outside absl.app use their defaults
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.num_workers, per_worker_buffer_size=max(config.data.prefetch, 1)))
  return iter(ds)


def eval_batches(config, read=_read_images) -> grain.IterDataset:
  """This process's rows of the first test examples' global batches, in order (the remainder left out)."""
  source = _source(config, 'test')
  num_batches = min(config.data.eval_examples, len(source)) // config.batch_size
  ds = grain.MapDataset.range(num_batches * config.batch_size).batch(config.batch_size)
  ds = ds.map(base.ProcessRows(config)).map(read(config, source))
  return ds.to_iter_dataset(base.read_options(config))


def ordered_batches(config, split: str, read=_read_images) -> grain.IterDataset:
  """All of `split` in order, in batches of batch_size (the last one smaller), whatever this process is."""
  source = _source(config, split)
  ds = grain.MapDataset.range(len(source)).batch(config.batch_size)
  return ds.map(read(config, source)).to_iter_dataset(base.read_options(config))

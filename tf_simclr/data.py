"""Input pipelines: every dataset through one path, TFDS-like sources -> tf.data.

Sources (`InputConfig.dataset`):
  any TFDS name   'cifar10', 'imagenet2012', 'imagenet2012_subset/1pct', ...
                  (tfds.builder + download_and_prepare, as usual)
  'fashion_mnist' TFDS's builder; on a machine without internet, when Debian's
                  dataset-fashion-mnist is installed, its IDX files are written
                  once into TFDS's own format (`prepare_fashion_mnist`) and read
                  like any other TFDS dataset afterwards
  'image_folder'  data_dir = ROOT laid out as ROOT/split/class/image.{jpg,png}
  'synthetic'     10 classes of generated 32x32 RGB images (train 1024 / test
                  256), deterministic; for tests and smoke runs

Every source yields (key, raw, label): a stable string key per example (used
by the label subsets), the undecoded image and its label. The pipeline is:
read (sharded per input pipeline) -> keep the label subset (its undecoded
records cached in memory: the split is scanned once, not every epoch) -> decode
to uint8 RGB -> [cache] -> [shuffle, repeat] -> augment -> batch -> prefetch.

Label subsets (`label_fraction` < 1): per class the same number of examples,
round(label_fraction * split size / num classes) (at most the whole class),
picked with `label_seed`; 'labeled' is that subset, 'unlabeled' the rest. For
imagenet2012 with fractions 0.01 / 0.1 the paper's lists are used instead
(TFDS imagenet2012_subset/1pct, /10pct).
"""

import dataclasses
import gzip
import os
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_simclr import augment
from tf_simclr import config as config_lib

SYNTHETIC = 'synthetic'
IMAGE_FOLDER = 'image_folder'
FASHION_MNIST = 'fashion_mnist'
# Where Debian's package dataset-fashion-mnist puts the IDX files.
DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
IMAGENET_SUBSETS = {0.01: 'imagenet2012_subset/1pct',
                    0.1: 'imagenet2012_subset/10pct'}
AUGMENTATIONS = ('pretrain', 'finetune', 'eval')
SUBSETS = ('all', 'labeled', 'unlabeled')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
SYNTHETIC_SPLITS = {'train': 1024, 'test': 256}
SYNTHETIC_NUM_CLASSES = 10
SYNTHETIC_IMAGE_SIZE = 32
# Label subsets up to this many examples keep their undecoded records in
# memory after the first epoch instead of re-scanning the split.
MAX_CACHED_SUBSET = 100_000


class DataError(ValueError):
  """Bad dataset/split/folder/image; message is one clear line."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a dataset holds. split_sizes: split name -> number of examples."""
  name: str
  num_classes: int
  class_names: tuple
  split_sizes: dict


@dataclasses.dataclass(frozen=True)
class InputConfig:
  """One input pipeline. batch_size is the GLOBAL batch size.

  augmentation: 'pretrain' (two views), 'finetune' (crop + flip, one view) or
    'eval' (center crop, one view).
  is_training: shuffle, repeat forever and drop the last partial batch;
    False: one pass in order, keeping the remainder.
  subset: 'all' (the whole split; label_fraction is ignored), 'labeled' (the
    label_fraction subset; the whole split when label_fraction is 1) or
    'unlabeled' (its complement; empty, an error, when label_fraction is 1).
  deterministic: fixed seeds and order (stateless augmentations), for tests.
  """
  dataset: str
  split: str
  image_size: int
  batch_size: int
  augmentation: str
  is_training: bool
  data_dir: Optional[str] = None
  color_jitter_strength: float = 1.0
  color_jitter_version: str = 'simclrv2'
  use_blur: bool = True
  label_fraction: float = 1.0
  label_seed: int = 0
  subset: str = 'all'
  cache: bool = False
  deterministic: bool = False
  seed: int = 0
  skip_bad_images: bool = False

  @classmethod
  def of_run(cls, config, **fields):
    """The input of a run.py Config (its dataset, data and augmentation
    flags) with `fields` (split, augmentation, batch_size, subset,
    is_training, ...) set."""
    return cls(
        dataset=config.dataset, data_dir=config.data_dir,
        image_size=config.image_size,
        color_jitter_strength=config.color_jitter_strength,
        color_jitter_version=config.color_jitter_version,
        use_blur=config.use_blur, label_fraction=config.label_fraction,
        label_seed=config.label_seed, cache=config.cache_dataset,
        deterministic=config.deterministic, seed=config.seed,
        skip_bad_images=config.skip_bad_images, **fields)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------- helpers


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, C] with C in 1..4 -> uint8 [H, W, 3] (grey repeated)."""
  channels = tf.shape(image)[-1]
  image = tf.cond(channels < 3, lambda: tf.tile(image[..., :1], [1, 1, 3]),
                  lambda: image[..., :3])
  return tf.ensure_shape(image, [None, None, 3])


def _split_base(split: str) -> str:
  """'train[:10%]' -> 'train'."""
  return split.split('[')[0]


# ---------------------------------------------------------------- synthetic
def synthetic_arrays(split: str):
  """The synthetic split: (images uint8 [N, 32, 32, 3], labels int64 [N]).

  Class c is a grating at angle c * 9 degrees with 2 + c % 3 cycles per image
  over a class hue, random phase and pixel noise; flips and colour changes
  keep the classes apart. Deterministic.
  """
  _SyntheticSource.check_split(split)
  count = SYNTHETIC_SPLITS[split]
  rng = np.random.RandomState(list(SYNTHETIC_SPLITS).index(split))
  labels = rng.permutation(np.arange(count) % SYNTHETIC_NUM_CLASSES)
  size = SYNTHETIC_IMAGE_SIZE
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  angles = labels * (np.pi / 2 / SYNTHETIC_NUM_CLASSES)
  cycles = 2. + labels % 3
  phases = rng.uniform(0., 2. * np.pi, count)
  position = (x[None] * np.cos(angles)[:, None, None] +
              y[None] * np.sin(angles)[:, None, None])
  grating = np.sin(2. * np.pi * cycles[:, None, None] * position +
                   phases[:, None, None])
  hues = labels / SYNTHETIC_NUM_CLASSES
  colours = 0.5 + 0.4 * np.cos(
      2. * np.pi * (hues[:, None] + np.array([0., 1. / 3, 2. / 3])[None]))
  images = colours[:, None, None, :] * (0.6 + 0.4 * grating[..., None])
  images += rng.normal(0., 0.04, images.shape)
  images = np.clip(np.round(images * 255.), 0, 255).astype(np.uint8)
  return images, labels.astype(np.int64)


class _SyntheticSource:
  """In-memory generated images; key = example index."""

  def __init__(self):
    self.info = DatasetInfo(
        name=SYNTHETIC, num_classes=SYNTHETIC_NUM_CLASSES,
        class_names=tuple(f'class_{c}' for c in range(SYNTHETIC_NUM_CLASSES)),
        split_sizes=dict(SYNTHETIC_SPLITS))

  @staticmethod
  def check_split(split):
    if split not in SYNTHETIC_SPLITS:
      raise DataError(f"split {split!r} not in dataset 'synthetic' (splits: "
                      f"{', '.join(SYNTHETIC_SPLITS)})")

  def num_examples(self, split):
    self.check_split(split)
    return SYNTHETIC_SPLITS[split]

  def keys_and_labels(self, split):
    _, labels = synthetic_arrays(split)
    return np.array([str(i) for i in range(len(labels))]), labels

  def read(self, split, shuffle_files, seed, input_context):
    del shuffle_files, seed, input_context  # One in-memory 'file'.
    images, labels = synthetic_arrays(split)
    keys = [str(i) for i in range(len(labels))]
    return tf.data.Dataset.from_tensor_slices((keys, images, labels)), False

  def decode(self, raw):
    return raw


# ---------------------------------------------------------------- image folder
@dataclasses.dataclass(frozen=True)
class _FolderSplit:
  keys: tuple      # path relative to ROOT/split, '/'-separated
  paths: tuple     # full paths
  labels: tuple    # int, index into class_names
  class_names: tuple


def _decode_file(path: tf.Tensor) -> tf.Tensor:
  """A JPEG/PNG/BMP/GIF file -> uint8 [H, W, 3]."""
  image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                             expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3])


_BAD_IMAGES_CACHE = {}
_LOGGED_SKIPS = set()


def find_bad_images(paths) -> list:
  """The paths among `paths` that tf.io.decode_image cannot decode (decodes
  them all once, in parallel; cached by path, size and mtime)."""
  signature = tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns)
                    for p in paths)
  if signature not in _BAD_IMAGES_CACHE:
    indices = tf.data.Dataset.range(len(paths))
    files = tf.data.Dataset.from_tensor_slices(list(paths) or [''])
    decoded = (tf.data.Dataset.zip(indices, files)
               .map(lambda i, p: (i, tf.shape(_decode_file(p))),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .ignore_errors())
    good = set()
    for batch, _ in decoded.batch(1024).as_numpy_iterator():
      good.update(batch.tolist())
    _BAD_IMAGES_CACHE[signature] = [
        p for i, p in enumerate(paths) if i not in good]
  return list(_BAD_IMAGES_CACHE[signature])


class _FolderSource:
  """ROOT/split/class/image files (TFDS ImageFolder layout); key = class/file."""

  def __init__(self, root: Optional[str], skip_bad_images: bool):
    if not root:
      raise DataError("dataset 'image_folder' needs data_dir=ROOT with "
                      'ROOT/split/class/image files')
    if not os.path.isdir(root):
      raise DataError(f'image folder {root} does not exist')
    self.root = root
    self.skip_bad_images = skip_bad_images
    splits = sorted(d for d in os.listdir(root)
                    if os.path.isdir(os.path.join(root, d)))
    if not splits:
      raise DataError(f'image folder {root} is empty: expected '
                      f'{root}/SPLIT/CLASS/IMAGE files')
    self._listing = {split: self._list(split) for split in splits}
    class_names = {split: listing.class_names
                   for split, listing in self._listing.items()}
    first = splits[0]
    for split in splits[1:]:
      if class_names[split] != class_names[first]:
        only_first = set(class_names[first]) - set(class_names[split])
        only_this = set(class_names[split]) - set(class_names[first])
        raise DataError(
            f'image folder {root}: classes differ between splits {first!r} '
            f'and {split!r} (only in {first}: {sorted(only_first)}, only in '
            f'{split}: {sorted(only_this)})')
    self.info = DatasetInfo(
        name=IMAGE_FOLDER, num_classes=len(class_names[first]),
        class_names=class_names[first],
        split_sizes={s: len(l.paths) for s, l in self._listing.items()})
    self._checked = {}

  def _list(self, split) -> _FolderSplit:
    split_dir = os.path.join(self.root, split)
    class_names = tuple(sorted(
        d for d in os.listdir(split_dir)
        if os.path.isdir(os.path.join(split_dir, d))))
    keys, paths, labels = [], [], []
    for label, name in enumerate(class_names):
      for directory, _, files in sorted(os.walk(os.path.join(split_dir, name))):
        for file in sorted(files):
          if file.lower().endswith(IMAGE_EXTENSIONS):
            path = os.path.join(directory, file)
            paths.append(path)
            keys.append(os.path.relpath(path, split_dir).replace(os.sep, '/'))
            labels.append(label)
    if not paths:
      raise DataError(f'image folder split {split_dir} has no images '
                      f'({"/".join(IMAGE_EXTENSIONS)}) in class folders')
    return _FolderSplit(tuple(keys), tuple(paths), tuple(labels), class_names)

  def check_split(self, split):
    if split not in self._listing:
      raise DataError(f'split {split!r} not in image folder {self.root} '
                      f'(splits: {", ".join(self._listing)})')

  def _checked_split(self, split) -> _FolderSplit:
    """The split without undecodable files (skip mode) or a DataError."""
    self.check_split(split)
    if split not in self._checked:
      listing = self._listing[split]
      bad = set(find_bad_images(listing.paths))
      if bad and not self.skip_bad_images:
        path = sorted(bad)[0]
        try:
          _decode_file(tf.constant(path))
          reason = 'cannot be decoded'
        except (tf.errors.OpError, ValueError) as error:
          reason = config_lib.first_line(error)
        raise DataError(f'cannot read image {path}: {reason} ({len(bad)} bad '
                        'image(s) in this split; fix or remove them, or skip '
                        'them with skip_bad_images)')
      if bad and (self.root, split, tuple(sorted(bad))) not in _LOGGED_SKIPS:
        _LOGGED_SKIPS.add((self.root, split, tuple(sorted(bad))))
        logging.warning('image folder %s: skipped %d unreadable image(s): %s',
                        os.path.join(self.root, split), len(bad),
                        ', '.join(sorted(bad)[:5]))
      if bad:
        keep = [i for i, p in enumerate(listing.paths) if p not in bad]
        listing = _FolderSplit(*(tuple(field[i] for i in keep) for field in
                                 (listing.keys, listing.paths, listing.labels)),
                               listing.class_names)
      self._checked[split] = listing
    return self._checked[split]

  def num_examples(self, split):
    return len(self._checked_split(split).paths)

  def keys_and_labels(self, split):
    listing = self._checked_split(split)
    return np.array(listing.keys), np.array(listing.labels, np.int64)

  def read(self, split, shuffle_files, seed, input_context):
    del shuffle_files, seed, input_context  # Shuffled and sharded as records.
    listing = self._checked_split(split)
    return tf.data.Dataset.from_tensor_slices(
        (list(listing.keys), list(listing.paths),
         np.array(listing.labels, np.int64))), False

  def decode(self, raw):
    return _decode_file(raw)


# ---------------------------------------------------------------- fashion_mnist
def _read_idx(path: str, expected_dims: int) -> np.ndarray:
  """An IDX file of unsigned bytes (optionally .gz) -> uint8 array."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    content = f.read()
  if len(content) < 4 + 4 * expected_dims:
    raise DataError(f'{path}: not an IDX file (too short)')
  zero, dtype_code, dims = content[0] * 256 + content[1], content[2], content[3]
  if zero != 0 or dtype_code != 0x08 or dims != expected_dims:
    raise DataError(f'{path}: not an IDX file of unsigned bytes with '
                    f'{expected_dims} dimension(s)')
  shape = [int.from_bytes(content[4 + 4 * i:8 + 4 * i], 'big')
           for i in range(dims)]
  data = np.frombuffer(content, np.uint8, offset=4 + 4 * dims)
  if data.size != np.prod(shape):
    raise DataError(f'{path}: IDX header says {shape}, file holds '
                    f'{data.size} values')
  return data.reshape(shape)


def _fashion_mnist_path(source_dir: str, name: str) -> Optional[str]:
  for candidate in (name, name[:-len('.gz')]):
    path = os.path.join(source_dir, candidate)
    if os.path.exists(path):
      return path
  return None


def has_fashion_mnist_files(source_dir: str) -> bool:
  """Whether source_dir holds the four Fashion-MNIST IDX files."""
  return all(_fashion_mnist_path(source_dir, name) is not None
             for files in FASHION_MNIST_FILES.values() for name in files)


class _FashionMnistFromIdx(tfds.image_classification.FashionMNIST,
                           skip_registration=True):
  """TFDS's fashion_mnist builder (same name, version, features, class names
  and splits), reading local IDX files instead of downloading them."""
  name = 'fashion_mnist'

  def __init__(self, *, source_dir: str, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples_from_idx(*files)
            for split, files in FASHION_MNIST_FILES.items()}

  def _generate_examples_from_idx(self, images_file, labels_file):
    images_path = _fashion_mnist_path(self._source_dir, images_file)
    labels_path = _fashion_mnist_path(self._source_dir, labels_file)
    images = _read_idx(images_path, 3)
    labels = _read_idx(labels_path, 1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
      raise DataError(f'{images_path} and {labels_path}: expected N 28x28 '
                      f'images and N labels, got {images.shape} and '
                      f'{labels.shape}')
    if labels.size and labels.max() >= 10:
      raise DataError(f'{labels_path}: labels must be 0..9, found '
                      f'{labels.max()}')
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': image[..., None], 'label': int(label)}


def prepare_fashion_mnist(source_dir: str = DEBIAN_FASHION_MNIST_DIR,
                          data_dir: Optional[str] = None) -> str:
  """Writes the Fashion-MNIST IDX files of `source_dir` into TFDS's format.

  The result is exactly what TFDS's own download would give
  (DATA_DIR/fashion_mnist/3.0.1: splits train/test, image uint8 [28, 28, 1],
  label ClassLabel with TFDS's class names), so afterwards
  `tfds.builder('fashion_mnist', data_dir=data_dir)` reads it. data_dir None:
  TFDS's default data dir. Does nothing when already prepared. Returns the
  prepared dataset's directory.
  """
  if not has_fashion_mnist_files(source_dir):
    raise DataError(f'{source_dir} lacks the Fashion-MNIST IDX files '
                    f'({", ".join(n for f in FASHION_MNIST_FILES.values() for n in f)})')
  builder = _FashionMnistFromIdx(source_dir=source_dir, data_dir=data_dir)
  if not builder.is_prepared():
    logging.info('Writing Fashion-MNIST from %s into TFDS format at %s',
                 source_dir, builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return str(builder.data_dir)


# ---------------------------------------------------------------- TFDS
_BUILDERS = {}


def _tfds_builder(name: str, data_dir: Optional[str]):
  """A prepared TFDS builder (downloads and prepares on first use)."""
  if (name, data_dir) in _BUILDERS:
    return _BUILDERS[(name, data_dir)]
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'unknown dataset {name!r}: not a TFDS dataset, nor '
                    f'{IMAGE_FOLDER!r} or {SYNTHETIC!r}') from None
  if not builder.is_prepared():
    if (builder.name == FASHION_MNIST and
        has_fashion_mnist_files(DEBIAN_FASHION_MNIST_DIR)):
      prepare_fashion_mnist(DEBIAN_FASHION_MNIST_DIR, data_dir)
      builder = tfds.builder(name, data_dir=data_dir)
    else:
      try:
        builder.download_and_prepare()
      except Exception as error:  # pylint: disable=broad-except
        raise DataError(f'cannot download and prepare TFDS dataset {name!r} '
                        f'in {builder.data_dir}: '
                        f'{" ".join(str(error).split())[:400]}'
                        ) from error
  _BUILDERS[(name, data_dir)] = builder
  return builder


class _TfdsSource:
  """A TFDS dataset; key = tfds_id (or `key_feature`, e.g. file_name)."""

  def __init__(self, name: str, data_dir: Optional[str],
               key_feature: str = 'tfds_id'):
    self.builder = _tfds_builder(name, data_dir)
    self.key_feature = key_feature
    info = self.builder.info
    self.image_key, self.label_key = info.supervised_keys or ('image', 'label')
    if (self.image_key not in info.features or
        self.label_key not in info.features or
        not isinstance(info.features[self.label_key], tfds.features.ClassLabel)):
      raise DataError(f'TFDS dataset {name!r} is not an image classification '
                      'dataset (no image feature and ClassLabel label)')
    labels = info.features[self.label_key]
    self.info = DatasetInfo(
        name=name, num_classes=labels.num_classes,
        class_names=tuple(labels.names),
        split_sizes={s: split.num_examples for s, split in info.splits.items()})
    self._keys_and_labels = {}

  def check_split(self, split):
    try:
      self.builder.info.splits[split]
    except (KeyError, ValueError, AssertionError):
      raise DataError(f'split {split!r} not in dataset {self.info.name!r} '
                      f'(splits: {", ".join(self.info.split_sizes)})') from None

  def num_examples(self, split):
    self.check_split(split)
    return self.builder.info.splits[split].num_examples

  def _as_dataset(self, split, read_config, shuffle_files=False):
    return self.builder.as_dataset(
        split=split, shuffle_files=shuffle_files, read_config=read_config,
        decoders={self.image_key: tfds.decode.SkipDecoding()})

  def keys_and_labels(self, split):
    if split not in self._keys_and_labels:
      self.check_split(split)
      # Parses only the key and the label (4 s for 60k examples on 2 cores).
      dataset = self.builder.as_dataset(
          split=split, shuffle_files=False,
          read_config=tfds.ReadConfig(
              add_tfds_id=True,
              num_parallel_calls_for_decode=tf.data.AUTOTUNE),
          decoders=tfds.decode.PartialDecoding(
              {name: True for name in {self.label_key, self.key_feature}
               if name != 'tfds_id'}))
      dataset = dataset.map(lambda ex: (ex[self.key_feature],
                                        ex[self.label_key]))
      keys, labels = [], []
      for key, label in dataset.batch(8192).as_numpy_iterator():
        keys.append(key.astype(str))
        labels.append(label)
      self._keys_and_labels[split] = (
          np.concatenate(keys) if keys else np.array([], str),
          np.concatenate(labels).astype(np.int64) if labels else
          np.array([], np.int64))
    return self._keys_and_labels[split]

  def read(self, split, shuffle_files, seed, input_context):
    """(dataset of (key, raw, label), whether it is already sharded)."""
    self.check_split(split)
    sharded = False
    read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=seed,
                                  try_autocache=False)
    if (input_context is not None and input_context.num_input_pipelines > 1 and
        self.builder.info.splits[split].num_shards >=
        input_context.num_input_pipelines):
      read_config.input_context = input_context
      sharded = True
    dataset = self._as_dataset(split, read_config, shuffle_files)
    dataset = dataset.map(lambda ex: (ex[self.key_feature],
                                      ex[self.image_key], ex[self.label_key]))
    return dataset, sharded

  def decode(self, raw):
    image = self.builder.info.features[self.image_key].decode_example(raw)
    return _to_rgb(tf.cast(image, tf.uint8))


# ---------------------------------------------------------------- sources
def _source(dataset: str, data_dir: Optional[str], skip_bad_images=False):
  if dataset == SYNTHETIC:
    return _SyntheticSource()
  if dataset == IMAGE_FOLDER:
    return _FolderSource(data_dir, skip_bad_images)
  # One source per dataset and process: its keys and labels (read to pick
  # label subsets) are then scanned once, not once per input pipeline.
  if (dataset, data_dir) not in _TFDS_SOURCES:
    _TFDS_SOURCES[(dataset, data_dir)] = _TfdsSource(dataset, data_dir)
  return _TFDS_SOURCES[(dataset, data_dir)]


_TFDS_SOURCES = {}


def get_info(dataset: str, data_dir: Optional[str] = None) -> DatasetInfo:
  """Classes and split sizes of a dataset (prepares a TFDS dataset first).

  For 'image_folder' the split sizes count image files, readable or not.
  """
  return _source(dataset, data_dir).info


def label_subset_mask(keys, labels, num_classes: int, fraction: float,
                      seed: int) -> np.ndarray:
  """bool [N]: a class-balanced subset of the examples.

  Per class round(fraction * N / num_classes) examples (at least 1, at most
  the whole class), chosen by `seed` among the class's examples sorted by key,
  so the subset depends only on the keys, labels, fraction and seed (not on
  the reading order).
  """
  keys = np.asarray(keys)
  labels = np.asarray(labels)
  per_class = max(1, int(round(fraction * len(keys) / num_classes)))
  order = np.argsort(keys, kind='stable')
  rng = np.random.RandomState(seed)
  mask = np.zeros(len(keys), bool)
  for label in range(num_classes):
    members = order[labels[order] == label]
    mask[rng.permutation(members)[:per_class]] = True
  return mask


@dataclasses.dataclass
class _Plan:
  """What to read for a config: source, split, and keys to keep or drop."""
  source: object
  split: str
  subset_keys: Optional[np.ndarray] = None  # None: no filtering.
  keep_subset: bool = True                  # False: drop subset_keys.
  count: int = 0


def _check_config(config: InputConfig):
  def need(condition, message):
    if not condition:
      raise ValueError(message)
  need(config.augmentation in AUGMENTATIONS, f'augmentation must be one of '
       f'{AUGMENTATIONS}, got {config.augmentation!r}')
  need(config.subset in SUBSETS,
       f'subset must be one of {SUBSETS}, got {config.subset!r}')
  need(0 < config.label_fraction <= 1,
       f'label_fraction must be in (0, 1], got {config.label_fraction}')
  need(config.image_size > 0,
       f'image_size must be positive, got {config.image_size}')
  need(config.batch_size > 0,
       f'batch_size must be positive, got {config.batch_size}')
  need(config.color_jitter_version in augment.COLOR_JITTER_VERSIONS,
       f'color_jitter_version must be one of {augment.COLOR_JITTER_VERSIONS}, '
       f'got {config.color_jitter_version!r}')


def _plan(config: InputConfig) -> _Plan:
  _check_config(config)
  source = _source(config.dataset, config.data_dir, config.skip_bad_images)
  source.check_split(config.split)
  total = source.num_examples(config.split)
  labeled = config.subset == 'labeled'
  if config.subset == 'all' or (labeled and config.label_fraction >= 1):
    return _Plan(source, config.split, count=total)
  if config.label_fraction >= 1:
    raise DataError(f"subset 'unlabeled' of {config.dataset} {config.split} "
                    'is empty with label_fraction=1')
  imagenet_subset = IMAGENET_SUBSETS.get(config.label_fraction)
  if (config.dataset.split(':')[0] == 'imagenet2012' and imagenet_subset and
      _split_base(config.split) == 'train'):
    # The paper's lists: TFDS imagenet2012_subset; its complement by file name.
    subset_source = _TfdsSource(imagenet_subset, config.data_dir,
                                key_feature='file_name')
    if labeled:
      return _Plan(subset_source, 'train',
                   count=subset_source.num_examples('train'))
    subset_keys, _ = subset_source.keys_and_labels('train')
    source = _TfdsSource(config.dataset, config.data_dir,
                         key_feature='file_name')
    return _Plan(source, config.split, subset_keys, keep_subset=False,
                 count=total - len(subset_keys))
  keys, labels = source.keys_and_labels(config.split)
  mask = label_subset_mask(keys, labels, source.info.num_classes,
                           config.label_fraction, config.label_seed)
  count = int(mask.sum()) if labeled else int((~mask).sum())
  if count == 0:
    raise DataError(f'subset {config.subset!r} of {config.dataset} '
                    f'{config.split} is empty with label_fraction='
                    f'{config.label_fraction}')
  return _Plan(source, config.split, keys[mask], keep_subset=labeled,
               count=count)


def num_examples(config: InputConfig) -> int:
  """Examples `config` yields per epoch (after subsetting, before batching;
  in skip_bad_images mode without the unreadable images)."""
  return _plan(config).count


# ---------------------------------------------------------------- pipeline
def _augment_function(config: InputConfig):
  """(image uint8 [h, w, 3], seed or None) -> float32 [H, W, 3 V] in [0, 1]."""
  size = config.image_size

  def view(image, seed):
    if config.augmentation == 'pretrain':
      return augment.preprocess_for_pretrain(
          image, size, size, config.color_jitter_strength,
          config.color_jitter_version, config.use_blur, seed=seed)
    if config.augmentation == 'finetune':
      return augment.preprocess_for_finetune(image, size, size, seed=seed)
    return augment.preprocess_for_eval(image, size, size)

  def function(image, seed):
    image = tf.image.convert_image_dtype(image, tf.float32)
    if config.augmentation != 'pretrain':
      return view(image, seed)
    seeds = (tf.random.experimental.stateless_split(seed, 2)
             if seed is not None else [None, None])
    return tf.concat([view(image, seeds[0]), view(image, seeds[1])], axis=-1)

  return function


def _shuffle_buffer(config: InputConfig) -> int:
  # TFDS files are shuffled when written and their order is shuffled per
  # epoch; ten batches (1k–10k examples) of buffer on top keeps the start-up
  # fill short and the memory small for encoded large images.
  return min(max(10 * config.batch_size, 1_000), 10_000)


def build_dataset(config: InputConfig,
                  input_context: Optional[tf.distribute.InputContext] = None
                  ) -> tf.data.Dataset:
  """The input pipeline of `config`.

  Elements: (images float32 [b, H, W, 3 V] in [0, 1], labels int32 [b]) with
  H = W = image_size, V = 2 for 'pretrain' (the two views concatenated on the
  channel axis) and 1 otherwise, b the per-replica batch
  (input_context.get_per_replica_batch_size(batch_size), or batch_size). With
  an input_context the examples are sharded per input pipeline.
  """
  plan = _plan(config)
  source = plan.source
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  batch_size = (input_context.get_per_replica_batch_size(config.batch_size)
                if input_context else config.batch_size)
  seed = config.seed if config.deterministic else None
  dataset, sharded = source.read(plan.split, config.is_training, seed,
                                 input_context)
  if plan.subset_keys is not None:
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(plan.subset_keys.astype(str)),
            tf.ones(len(plan.subset_keys), tf.int32)), default_value=0)
    dataset = dataset.filter(
        lambda key, raw, label: tf.equal(table.lookup(key) == 1,
                                         plan.keep_subset))
  if num_pipelines > 1 and not sharded:
    dataset = dataset.shard(num_pipelines, pipeline_id)
  dataset = dataset.map(lambda key, raw, label: (raw, tf.cast(label, tf.int32)))
  if (plan.subset_keys is not None and plan.keep_subset and
      not config.cache and plan.count <= MAX_CACHED_SUBSET):
    # A label subset is small by construction, but it is found by scanning
    # the whole split: without this the scan repeats every epoch (a 1 %
    # subset then trains at a tenth of the step's speed). Its undecoded
    # records are kept in memory after the first pass.
    dataset = dataset.cache()

  decode = source.decode
  if config.cache:  # Decoded uint8, before augmentation.
    dataset = dataset.map(lambda raw, label: (decode(raw), label),
                          num_parallel_calls=tf.data.AUTOTUNE).cache()
    decode = lambda image: image  # pylint: disable=unnecessary-lambda-assignment
  if config.is_training:
    dataset = dataset.shuffle(_shuffle_buffer(config), seed=seed,
                              reshuffle_each_iteration=True).repeat()

  augment_function = _augment_function(config)
  if config.deterministic:
    # A stateless seed per example: (seed, pipeline), position in the stream.
    dataset = dataset.enumerate()
    base = config.seed * 1_000_003 + pipeline_id

    def prepare(position, example):
      raw, label = example
      example_seed = tf.stack([tf.constant(base, tf.int64), position])
      return augment_function(decode(raw), example_seed), label
  else:
    def prepare(raw, label):
      return augment_function(decode(raw), None), label

  dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=config.is_training)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = config.deterministic
  options.experimental_optimization.map_parallelization = True
  return dataset.with_options(options)


def build_distributed_dataset(strategy: tf.distribute.Strategy,
                              config: InputConfig, skip_steps: int = 0):
  """A distributed dataset: per-replica batches of `build_dataset`, each
  input pipeline reading its own shard; without the batches of the first
  `skip_steps` global steps (a deterministic resume replays them)."""
  def dataset_fn(input_context):
    dataset = build_dataset(config, input_context)
    if skip_steps:
      replicas_per_pipeline = max(1, input_context.num_replicas_in_sync //
                                  input_context.num_input_pipelines)
      dataset = dataset.skip(skip_steps * replicas_per_pipeline)
    return dataset
  return strategy.distribute_datasets_from_function(dataset_fn)

"""Input pipelines: every dataset through one path, a source -> tf.data.

The sources (`InputConfig.dataset`: any TFDS name, 'fashion_mnist' offline,
'image_folder', 'synthetic') are sources.py's; each yields (key, raw, label):
a stable string key per example (used by the label subsets), the undecoded
image and its label. The pipeline is:
read (sharded per input pipeline) -> keep the label subset (its undecoded
records cached in memory: the split is scanned once, not every epoch) -> decode
to uint8 RGB -> [cache] -> [shuffle, repeat] -> augment -> batch -> prefetch.

Kept for the life of the process (`held_in_memory`), so that the next pipeline
over the same examples starts at once: the undecoded records of a label
subset, and with `cache` the decoded images of a split whose images share one
size, up to MEMORY_BYTES in all. Many stages run in one process (the protocol,
learning-rate sweeps): each would otherwise scan the whole split for a subset
of 60 images, and decode its evaluation split again.

Label subsets (`label_fraction` < 1): per class the same number of examples,
round(label_fraction * split size / num classes) (at most the whole class),
picked with `label_seed`; 'labeled' is that subset, 'unlabeled' the rest. For
imagenet2012 with fractions 0.01 / 0.1 the paper's lists are used instead
(TFDS imagenet2012_subset/1pct, /10pct).
"""

import collections
import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from tf_simclr import augment
from tf_simclr import sources
# The sources' names, kept here for the callers of data.
from tf_simclr.sources import (  # pylint: disable=unused-import
    DataError, DatasetInfo, DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST,
    FASHION_MNIST_FILES, IMAGE_EXTENSIONS, IMAGE_FOLDER, SYNTHETIC,
    find_bad_images, get_info, has_fashion_mnist_files, prepare_fashion_mnist,
    synthetic_arrays)

AUGMENTATIONS = ('pretrain', 'finetune', 'eval')
SUBSETS = ('all', 'labeled', 'unlabeled')
# Label subsets up to this many examples keep their undecoded records in
# memory after the first epoch instead of re-scanning the split.
MAX_CACHED_SUBSET = 100_000
# Bytes of records and decoded images held in memory across pipelines.
MEMORY_BYTES = 1 << 30
_HELD = collections.OrderedDict()  # key -> (values, labels, decoded)


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
  crop_min_area: float = augment.CROP_AREA_RANGE[0]
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
        use_blur=config.use_blur, crop_min_area=config.crop_min_area,
        label_fraction=config.label_fraction,
        label_seed=config.label_seed, cache=config.cache_dataset,
        deterministic=config.deterministic, seed=config.seed,
        skip_bad_images=config.skip_bad_images, **fields)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


def training_inputs(config, stage, blur_in_pipeline=True):
  """(train input, labeled input or None) of a run.py stage (a stages.Stage):
  the stage's augmentation and subset of --train_split; distillation reads
  --unlabeled_split whole when given, and with --distill_alpha < 1 also the
  labeled subset (finetune augmentation) for its supervised term. Without
  blur_in_pipeline the training step blurs instead."""
  train = InputConfig.of_run(
      config, split=config.train_split, augmentation=stage.augmentation,
      batch_size=config.train_batch_size, subset=stage.train_subset,
      is_training=True)
  if not blur_in_pipeline:
    train = train.replace(use_blur=False)
  if stage.needs_teacher and config.unlabeled_split:
    train = train.replace(split=config.unlabeled_split, subset='all')
  labeled = None
  if stage.needs_teacher and config.distill_alpha < 1:
    labeled = InputConfig.of_run(
        config, split=config.train_split, augmentation='finetune',
        batch_size=config.train_batch_size, subset='labeled', is_training=True)
  return train, labeled


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
  source = sources.source(config.dataset, config.data_dir,
                          config.skip_bad_images)
  source.check_split(config.split)
  total = source.num_examples(config.split)
  labeled = config.subset == 'labeled'
  if config.subset == 'all' or (labeled and config.label_fraction >= 1):
    return _Plan(source, config.split, count=total)
  if config.label_fraction >= 1:
    raise DataError(f"subset 'unlabeled' of {config.dataset} {config.split} "
                    'is empty with label_fraction=1')
  imagenet_subset = sources.IMAGENET_SUBSETS.get(config.label_fraction)
  if (config.dataset.split(':')[0] == 'imagenet2012' and imagenet_subset and
      sources.split_base(config.split) == 'train'):
    # The paper's lists: TFDS imagenet2012_subset; its complement by file name.
    subset_source = sources.TfdsSource(imagenet_subset, config.data_dir,
                                key_feature='file_name')
    if labeled:
      return _Plan(subset_source, 'train',
                   count=subset_source.num_examples('train'))
    subset_keys, _ = subset_source.keys_and_labels('train')
    source = sources.TfdsSource(config.dataset, config.data_dir,
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
          config.color_jitter_version, config.use_blur, seed=seed,
          crop_min_area=config.crop_min_area)
    if config.augmentation == 'finetune':
      return augment.preprocess_for_finetune(
          image, size, size, seed=seed, crop_min_area=config.crop_min_area)
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


def _subset_filter(dataset, plan: _Plan):
  """(key, raw, label) records of `plan`'s subset (all when it has none)."""
  if plan.subset_keys is None:
    return dataset
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(plan.subset_keys.astype(str)),
          tf.ones(len(plan.subset_keys), tf.int32)), default_value=0)
  return dataset.filter(
      lambda key, raw, label: tf.equal(table.lookup(key) == 1,
                                       plan.keep_subset))


def held_in_memory(config: InputConfig, plan: Optional[_Plan] = None):
  """(values [N, ...], labels int32 [N], decoded) of `config`'s examples in
  reading order, read once per process and then kept, or None when they are
  not kept: decoded uint8 images with `cache` when the source's images share
  one size, else the undecoded records of a label subset of at most
  MAX_CACHED_SUBSET examples; None too when they would not fit in
  MEMORY_BYTES."""
  plan = plan or _plan(config)
  decoded = config.cache and plan.source.image_size is not None
  subset = (plan.subset_keys is not None and plan.keep_subset and
            plan.count <= MAX_CACHED_SUBSET)
  if not (decoded or subset):
    return None
  whole = plan.subset_keys is None and config.subset != 'unlabeled'
  examples = (config.dataset, config.data_dir, config.skip_bad_images,
              config.split, 'all' if whole else config.subset,
              None if whole else (config.label_fraction, config.label_seed))
  # Decoded images serve a request for records too (the pipeline then skips
  # decoding).
  for held_key in ((examples, True),) if decoded else ((examples, True),
                                                       (examples, False)):
    if held_key in _HELD:
      _HELD.move_to_end(held_key)
      return _HELD[held_key]
  key = (examples, decoded)
  dataset, _ = plan.source.read(plan.split, False, None, None)
  dataset = _subset_filter(dataset, plan).map(
      lambda key, raw, label: (raw, tf.cast(label, tf.int32)))
  if decoded:
    dataset = dataset.map(lambda raw, label: (plan.source.decode(raw), label),
                          num_parallel_calls=tf.data.AUTOTUNE)
  values, labels, size = [], [], 0
  for batch_values, batch_labels in dataset.batch(1024).prefetch(
      2).as_numpy_iterator():
    size += (batch_values.nbytes if batch_values.dtype != object else
             sum(len(value) for value in batch_values.reshape(-1)))
    if size > MEMORY_BYTES:
      return None
    values.append(batch_values)
    labels.append(batch_labels)
  if not labels:
    return None
  # As tensors: every pipeline then reads them without a copy.
  with tf.device('/cpu:0'):
    entry = (tf.constant(np.concatenate(values)),
             tf.constant(np.concatenate(labels)), decoded)
  _HELD[key] = entry
  while sum(_held_bytes(held) for held in _HELD.values()) > MEMORY_BYTES:
    _HELD.popitem(last=False)
  return entry


def _held_bytes(entry):
  values, labels, _ = entry
  if values.dtype == tf.string:
    return int(tf.reduce_sum(tf.strings.length(values))) + 4 * len(labels)
  return values.shape.num_elements() * values.dtype.size + 4 * len(labels)


def release_memory():
  """Forgets the examples held_in_memory keeps."""
  _HELD.clear()


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
  decode = source.decode
  held = held_in_memory(config, plan)
  if held is not None:
    # In reading order, as the source streams them (shuffled below).
    values, labels, decoded = held
    dataset = tf.data.Dataset.from_tensor_slices((values, labels))
    if num_pipelines > 1:
      dataset = dataset.shard(num_pipelines, pipeline_id)
    if decoded:
      decode = lambda image: image  # pylint: disable=unnecessary-lambda-assignment
  else:
    dataset, sharded = source.read(plan.split, config.is_training, seed,
                                   input_context)
    dataset = _subset_filter(dataset, plan)
    if num_pipelines > 1 and not sharded:
      dataset = dataset.shard(num_pipelines, pipeline_id)
    dataset = dataset.map(
        lambda key, raw, label: (raw, tf.cast(label, tf.int32)))
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

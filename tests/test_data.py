"""tf_simclr.data: sources, label subsets, sharding, bad data, offline
Fashion-MNIST, on small generated files."""

import dataclasses
import gzip
import logging
import os
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_simclr import data
from tf_simclr import sources
from tf_simclr import visualize


def _config(**changes):
  values = dict(dataset='synthetic', split='train', image_size=32,
                batch_size=64, augmentation='eval', is_training=False)
  values.update(changes)
  return data.InputConfig(**values)


def _collect(dataset):
  """All (images, labels) of a finite dataset, concatenated."""
  images, labels = zip(*dataset.as_numpy_iterator())
  return np.concatenate(images), np.concatenate(labels)


def _fingerprints(images):
  """Hashable images: float [N, H, W, C] in [0, 1] as their uint8 bytes."""
  return [np.round(image * 255).astype(np.uint8).tobytes() for image in images]


# ---------------------------------------------------------------- synthetic
def test_synthetic_info_and_arrays_are_deterministic():
  info = data.get_info('synthetic')
  assert info.num_classes == 10 and len(info.class_names) == 10
  assert info.split_sizes == {'train': 1024, 'test': 256}
  images, labels = data.synthetic_arrays('train')
  again, _ = data.synthetic_arrays('train')
  assert images.shape == (1024, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, again)
  assert np.all(np.bincount(labels) == 1024 // 10 + (np.arange(10) < 4))


@pytest.mark.parametrize('augmentation, channels',
                         [('pretrain', 6), ('finetune', 3), ('eval', 3)])
def test_training_batches_shape_dtype_range(augmentation, channels):
  dataset = data.build_dataset(_config(augmentation=augmentation,
                                       is_training=True, image_size=40))
  images, labels = next(iter(dataset))
  assert images.shape == (64, 40, 40, channels) and images.dtype == tf.float32
  assert labels.shape == (64,) and labels.dtype == tf.int32
  assert float(tf.reduce_min(images)) >= 0.
  assert float(tf.reduce_max(images)) <= 1.


def test_pretrain_views_differ():
  images, _ = next(iter(data.build_dataset(_config(augmentation='pretrain'))))
  view_1, view_2 = np.split(images.numpy(), 2, axis=-1)
  assert not np.array_equal(view_1, view_2)


@pytest.mark.parametrize('crop_min_area, whole', [(1., True), (0.08, False)])
def test_crop_min_area_reaches_the_training_crop(crop_min_area, whole):
  """At 1 every finetuning image is its source image or that mirrored (the
  same size: no resize); at the paper's 0.08 most are not."""
  config = _config(augmentation='finetune', is_training=True,
                   deterministic=True, batch_size=128,
                   crop_min_area=crop_min_area)
  images, labels = next(iter(data.build_dataset(config)))
  source = data.synthetic_arrays('train')[0] / 255.
  originals = {key: True for key in _fingerprints(source)}
  originals.update({key: True for key in _fingerprints(source[:, :, ::-1])})
  found = [key in originals for key in _fingerprints(images.numpy())]
  assert len(labels) == 128
  if whole:
    assert all(found)
  else:
    assert np.mean(found) < 0.2


def test_eval_pass_keeps_remainder_and_matches_source():
  images, labels = _collect(data.build_dataset(_config(split='test',
                                                       batch_size=100)))
  source_images, source_labels = data.synthetic_arrays('test')
  assert len(labels) == 256 == data.num_examples(_config(split='test'))
  np.testing.assert_array_equal(labels, source_labels)
  np.testing.assert_allclose(images, source_images / 255., atol=1e-6)


def test_deterministic_option_repeats_exactly_and_cache_changes_nothing():
  config = _config(augmentation='pretrain', is_training=True,
                   deterministic=True, seed=3, batch_size=16)
  first = [b[0].numpy() for b in data.build_dataset(config).take(3)]
  second = [b[0].numpy() for b in data.build_dataset(config).take(3)]
  cached = [b[0].numpy() for b in data.build_dataset(
      dataclasses.replace(config, cache=True)).take(3)]
  for a, b, c in zip(first, second, cached):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_per_replica_batch_and_sharding_split_the_examples():
  config = _config(split='test', batch_size=32)
  shards = []
  for pipeline in range(2):
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=pipeline,
        num_replicas_in_sync=2)
    batches = list(data.build_dataset(config, context).as_numpy_iterator())
    assert batches[0][0].shape[0] == 16
    shards.append(_fingerprints(np.concatenate([b[0] for b in batches])))
  assert not set(shards[0]) & set(shards[1])
  source, _ = data.synthetic_arrays('test')
  everything = _fingerprints(source / 255.)
  assert sorted(shards[0] + shards[1]) == sorted(everything)


def test_distributed_dataset_gives_per_replica_batches():
  strategy = tf.distribute.get_strategy()  # Default: one replica.
  dataset = data.build_distributed_dataset(
      strategy, _config(augmentation='pretrain', is_training=True,
                        batch_size=8))
  images, labels = next(iter(dataset))
  assert images.shape == (8, 32, 32, 6) and labels.shape == (8,)


# ---------------------------------------------------------------- subsets
def test_label_subset_mask_is_class_balanced_and_reproducible():
  rng = np.random.RandomState(0)
  labels = rng.randint(0, 5, 1000)
  keys = np.array([f'k{i}' for i in range(1000)])
  mask = data.label_subset_mask(keys, labels, 5, 0.1, seed=7)
  assert np.all(np.bincount(labels[mask], minlength=5) == 20)
  np.testing.assert_array_equal(
      mask, data.label_subset_mask(keys, labels, 5, 0.1, seed=7))
  # The subset depends on the keys, not on the order they come in.
  order = rng.permutation(1000)
  np.testing.assert_array_equal(
      data.label_subset_mask(keys[order], labels[order], 5, 0.1, 7),
      mask[order])
  assert not np.array_equal(
      mask, data.label_subset_mask(keys, labels, 5, 0.1, seed=8))


def test_labeled_and_unlabeled_are_disjoint_and_make_the_split():
  labeled_images, labeled_labels = _collect(data.build_dataset(
      _config(label_fraction=0.1, subset='labeled', label_seed=5)))
  unlabeled_images, _ = _collect(data.build_dataset(
      _config(label_fraction=0.1, subset='unlabeled', label_seed=5)))
  all_images, _ = _collect(data.build_dataset(_config()))
  assert np.all(np.bincount(labeled_labels, minlength=10) == 10)
  assert len(labeled_labels) == data.num_examples(
      _config(label_fraction=0.1, subset='labeled'))
  assert len(unlabeled_images) == data.num_examples(
      _config(label_fraction=0.1, subset='unlabeled')) == 1024 - 100
  labeled, unlabeled = (_fingerprints(labeled_images),
                        _fingerprints(unlabeled_images))
  assert not set(labeled) & set(unlabeled)
  assert sorted(labeled + unlabeled) == sorted(_fingerprints(all_images))
  # Same seed, same subset, also when training (shuffled, sharded later).
  again, _ = _collect(data.build_dataset(
      _config(label_fraction=0.1, subset='labeled', label_seed=5,
              is_training=True)).take(4))
  assert set(_fingerprints(again)) <= set(labeled)


@pytest.fixture
def counted_reads(monkeypatch):
  """A tf.Variable counting the records the synthetic source reads."""
  reads = tf.Variable(0, dtype=tf.int64)
  source = sources.source('synthetic', None)
  original_read = type(source).read

  def counting_read(self, split, shuffle_files, seed, input_context):
    dataset, sharded = original_read(self, split, shuffle_files, seed,
                                     input_context)

    def count(key, raw, label):
      reads.assign_add(1)
      return key, raw, label
    return dataset.map(count), sharded

  monkeypatch.setattr(type(source), 'read', counting_read)
  data.release_memory()
  yield reads
  data.release_memory()


def test_labeled_subset_scans_the_split_once_over_many_epochs(counted_reads):
  """The subset is kept after the first pass: later epochs do not re-read
  the whole split (which made 1 % finetuning input-bound)."""
  reads = counted_reads
  config = _config(label_fraction=0.05, subset='labeled', is_training=True,
                   batch_size=10, augmentation='finetune')
  subset_size = data.num_examples(config)
  batches = list(data.build_dataset(config).take(5 * subset_size // 10))
  labels = np.concatenate([b[1].numpy() for b in batches])
  assert len(labels) == 5 * subset_size  # Five epochs of the subset.
  np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                [5 * subset_size // 10] * 10)
  assert int(reads.numpy()) == 1024  # One scan of the split.


def test_label_fraction_one_labeled_is_everything():
  assert data.num_examples(_config(subset='labeled')) == 1024
  with pytest.raises(data.DataError, match='empty'):
    data.num_examples(_config(subset='unlabeled'))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize('changes, message', [
    (dict(dataset='no_such_dataset'), "unknown dataset 'no_such_dataset'"),
    (dict(split='validation'), "split 'validation' not in dataset"),
    (dict(dataset='image_folder'), 'needs data_dir'),
])
def test_bad_dataset_or_split_is_one_line_data_error(changes, message):
  with pytest.raises(data.DataError, match=message) as error:
    data.num_examples(_config(**changes))
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('changes', [dict(augmentation='strong'),
                                     dict(subset='some'),
                                     dict(label_fraction=0.)])
def test_bad_config_values_are_value_errors(changes):
  with pytest.raises(ValueError):
    data.build_dataset(_config(**changes))


# ---------------------------------------------------------------- folders
def _write_image(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  encode = tf.io.encode_png if path.endswith('.png') else tf.io.encode_jpeg
  tf.io.write_file(path, encode(array))


def _make_folder(root, splits=('train', 'test'), classes=('cat', 'dog'),
                 per_class=3):
  """PNG (lossless, value = 40 * class + index) and one JPEG per class;
  one grey PNG."""
  for split in splits:
    for label, name in enumerate(classes):
      for index in range(per_class):
        value = 40 * label + index
        extension = 'jpg' if index == per_class - 1 else 'png'
        shape = (12 + index, 16, 1 if index == 0 else 3)
        _write_image(os.path.join(root, split, name, f'{index}.{extension}'),
                     np.full(shape, value, np.uint8))
  return root


def test_image_folder_reads_png_jpeg_and_grey_with_sorted_classes(tmp_path):
  root = _make_folder(str(tmp_path / 'images'))
  (tmp_path / 'images' / 'train' / 'cat' / 'notes.txt').write_text('ignored')
  info = data.get_info('image_folder', root)
  assert info.class_names == ('cat', 'dog') and info.num_classes == 2
  assert info.split_sizes == {'test': 6, 'train': 6}
  images, labels = _collect(data.build_dataset(_config(
      dataset='image_folder', data_dir=root, image_size=16, batch_size=4)))
  assert images.shape == (6, 16, 16, 3)
  assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
  png_values = sorted(np.round(images[:, 8, 8, 0] * 255).astype(int))
  # The two lossless PNGs of each class come back exactly (grey -> 3 equal).
  for value in (0, 1, 40, 41):
    assert value in png_values
  np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_image_folder_corrupt_file_is_named_or_skipped_and_counted(
    tmp_path, caplog):
  root = _make_folder(str(tmp_path / 'images'))
  bad = os.path.join(root, 'train', 'dog', 'broken.jpg')
  with open(bad, 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0 not really a jpeg')
  config = _config(dataset='image_folder', data_dir=root, batch_size=4)
  with pytest.raises(data.DataError) as error:
    data.build_dataset(config)
  assert bad in str(error.value) and '\n' not in str(error.value)
  skipping = dataclasses.replace(config, skip_bad_images=True)
  with caplog.at_level(logging.WARNING):
    assert data.num_examples(skipping) == 6
  assert 'skipped 1 unreadable image' in caplog.text and bad in caplog.text
  _, labels = _collect(data.build_dataset(skipping))
  assert len(labels) == 6
  assert data.find_bad_images([bad]) == [bad]


def test_image_folder_empty_missing_split_and_differing_classes(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(data.DataError, match='is empty'):
    data.get_info('image_folder', str(empty))
  (empty / 'train' / 'cat').mkdir(parents=True)
  with pytest.raises(data.DataError, match='has no images'):
    data.get_info('image_folder', str(empty))
  root = _make_folder(str(tmp_path / 'images'))
  with pytest.raises(data.DataError, match="split 'validation' not in"):
    data.num_examples(_config(dataset='image_folder', data_dir=root,
                              split='validation'))
  _write_image(os.path.join(root, 'test', 'bird', '0.png'),
               np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(data.DataError, match="only in test: \\['bird'\\]"):
    data.get_info('image_folder', root)


# ---------------------------------------------------------------- fashion_mnist
def _write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b''.join(
      struct.pack('>I', size) for size in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _make_idx_files(directory, sizes=(30, 20)):
  """Small Fashion-MNIST IDX .gz files; image i of a split is filled with i,
  its label is i % 10. Returns {split: (images, labels)}."""
  os.makedirs(directory, exist_ok=True)
  arrays = {}
  for (split, (images_file, labels_file)), count in zip(
      data.FASHION_MNIST_FILES.items(), sizes):
    images = np.broadcast_to(np.arange(count)[:, None, None], (count, 28, 28))
    labels = np.arange(count) % 10
    _write_idx(os.path.join(directory, images_file), images)
    _write_idx(os.path.join(directory, labels_file), labels)
    arrays[split] = images, labels
  return arrays


def test_fashion_mnist_offline_from_idx_files_goes_through_tfds(
    tmp_path, monkeypatch):
  source_dir = str(tmp_path / 'debian')
  arrays = _make_idx_files(source_dir)
  data_dir = str(tmp_path / 'tfds')
  # As if Debian's package had put these files there: get_info prepares them.
  monkeypatch.setattr(sources, 'DEBIAN_FASHION_MNIST_DIR', source_dir)
  info = data.get_info('fashion_mnist', data_dir)
  assert info.split_sizes == {'train': 30, 'test': 20}
  reference_info = tfds.builder('fashion_mnist').info  # TFDS's own builder.
  assert info.class_names == tuple(reference_info.features['label'].names)
  assert os.path.isdir(os.path.join(data_dir, 'fashion_mnist', '3.0.1'))
  builder = tfds.builder('fashion_mnist', data_dir=data_dir)
  assert builder.info.features['image'].shape == (28, 28, 1)
  images, labels = _collect(data.build_dataset(_config(
      dataset='fashion_mnist', data_dir=data_dir, split='test',
      image_size=28, batch_size=8)))
  assert images.shape == (20, 28, 28, 3)
  values = np.round(images[:, 0, 0, 0] * 255).astype(int)
  np.testing.assert_array_equal(images[..., 0], images[..., 1])
  np.testing.assert_array_equal(labels, values % 10)  # Image-label pairs kept.
  assert sorted(values) == sorted(arrays['test'][0][:, 0, 0])
  # Preparing again is a no-op that returns the same place.
  assert data.prepare_fashion_mnist(source_dir, data_dir) == str(
      builder.data_dir)


def test_fashion_mnist_bad_idx_file_is_a_data_error(tmp_path):
  source_dir = str(tmp_path / 'debian')
  _make_idx_files(source_dir)
  _write_idx(os.path.join(source_dir, 'train-labels-idx1-ubyte.gz'),
             np.zeros((30, 2)))
  with pytest.raises(data.DataError, match='1 dimension'):
    data.prepare_fashion_mnist(source_dir, str(tmp_path / 'tfds'))
  with pytest.raises(data.DataError, match='lacks the Fashion-MNIST'):
    data.prepare_fashion_mnist(str(tmp_path), str(tmp_path / 'tfds'))


@pytest.mark.slow
@pytest.mark.skipif(
    not data.has_fashion_mnist_files(data.DEBIAN_FASHION_MNIST_DIR),
    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_debian_fashion_mnist(tmp_path):
  """The real files: TFDS's sizes and class balance (about 30 s)."""
  data_dir = str(tmp_path / 'tfds')
  data.prepare_fashion_mnist(data.DEBIAN_FASHION_MNIST_DIR, data_dir)
  info = data.get_info('fashion_mnist', data_dir)
  assert info.split_sizes == {'train': 60000, 'test': 10000}
  config = _config(dataset='fashion_mnist', data_dir=data_dir,
                   label_fraction=0.01, subset='labeled', batch_size=600)
  _, labels = _collect(data.build_dataset(config))
  assert np.all(np.bincount(labels, minlength=10) == 60)


# ---------------------------------------------------------------- picture
def test_augmentation_grid_png(tmp_path):
  images, _ = data.synthetic_arrays('test')
  path = visualize.write_augmentation_grid(str(tmp_path / 'grid.png'),
                                           images[:3], image_size=32)
  grid = tf.io.decode_png(tf.io.read_file(path)).numpy()
  assert grid.shape == (3 * 34 + 2, 3 * 34 + 2, 3)
  np.testing.assert_array_equal(grid[2:34, 2:34], images[0])  # The original.
  assert not np.array_equal(grid[2:34, 36:68], images[0])     # A view.
  path = visualize.write_augmentation_grid_for_dataset(
      str(tmp_path / 'sub' / 'grid.png'), 'synthetic', num_images=2)
  assert tf.io.decode_png(tf.io.read_file(path)).shape == (70, 104, 3)


# ---------------------------------------------------------------- held in memory
def _streamed(monkeypatch, config):
  """config's examples through the pipeline that holds nothing in memory."""
  with monkeypatch.context() as patch:
    patch.setattr(data, 'MEMORY_BYTES', 0)
    data.release_memory()
    assert data.held_in_memory(config) is None
    return _collect(data.build_dataset(config))


@pytest.mark.parametrize('changes', [
    dict(label_fraction=0.05, subset='labeled', label_seed=3),  # records
    dict(split='test', cache=True),                             # decoded
    dict(label_fraction=0.05, subset='labeled', cache=True),    # decoded
])
def test_held_examples_are_read_once_and_are_the_streamed_ones(
    monkeypatch, counted_reads, changes):
  config = _config(**changes)
  images, labels = _collect(data.build_dataset(config))
  read_once = int(counted_reads.numpy())
  assert read_once == data.get_info('synthetic').split_sizes[config.split]
  again, again_labels = _collect(data.build_dataset(config))
  assert int(counted_reads.numpy()) == read_once  # Nothing read again.
  np.testing.assert_array_equal(images, again)
  np.testing.assert_array_equal(labels, again_labels)
  streamed, streamed_labels = _streamed(monkeypatch, config)
  # The same examples in the same (reading) order as without holding.
  np.testing.assert_array_equal(images, streamed)
  np.testing.assert_array_equal(labels, streamed_labels)


def test_held_subset_serves_training_and_the_views_of_other_runs(
    counted_reads):
  """A finetune's decoded subset (cache) also serves the training views
  (cache=False) and the next run of the same subset: one scan in all."""
  config = _config(label_fraction=0.05, subset='labeled', cache=True,
                   is_training=True, augmentation='finetune', batch_size=8)
  next(iter(data.build_dataset(config)))
  next(iter(data.build_dataset(config.replace(cache=False, batch_size=3))))
  next(iter(data.build_dataset(config)))
  assert int(counted_reads.numpy()) == 1024


def test_held_training_order_is_shuffled_per_build_and_seeded(counted_reads):
  config = _config(split='test', cache=True, is_training=True,
                   batch_size=256)

  def first_labels(**changes):
    return next(iter(data.build_dataset(config.replace(**changes))))[1].numpy()
  seeded = first_labels(deterministic=True, seed=1)
  np.testing.assert_array_equal(seeded,
                                first_labels(deterministic=True, seed=1))
  assert not np.array_equal(seeded, first_labels(deterministic=True, seed=2))
  assert not np.array_equal(first_labels(), first_labels())
  # Every build is a permutation of the same examples.
  np.testing.assert_array_equal(np.sort(seeded),
                                np.sort(data.synthetic_arrays('test')[1]))


def test_held_memory_stays_within_its_bound(monkeypatch, counted_reads):
  test_bytes = 256 * 32 * 32 * 3 + 4 * 256
  monkeypatch.setattr(data, 'MEMORY_BYTES', test_bytes)
  test_config = _config(split='test', cache=True)
  assert data.held_in_memory(test_config) is not None
  # The train split (4x larger) does not fit: streamed, nothing evicted.
  assert data.held_in_memory(_config(split='train', cache=True)) is None
  assert data.held_in_memory(test_config) is not None
  # A second held entry that does not fit beside the first evicts it.
  subset = _config(split='test', cache=True, subset='labeled',
                   label_fraction=0.5)
  assert data.held_in_memory(subset) is not None
  assert len(data._HELD) == 1  # pylint: disable=protected-access

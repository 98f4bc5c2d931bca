r"""Runs google-research/simclr's tf2/run.py on mocked CIFAR-10.

Used by benchmarks/reference_speed.py; not meant to be run by hand:

  TF_USE_LEGACY_KERAS=1 python benchmarks/_reference_mock_run.py \
    TF2_DIR META_DIR NUM_EXAMPLES [run.py flags...]

TF2_DIR is a (patched) copy of the reference's tf2 folder, whose run.py is
imported and run with the flags that follow. CIFAR-10 is mocked with
`tensorflow_datasets.testing.mock_data`: `download_and_prepare()` does nothing
and `as_dataset()` yields NUM_EXAMPLES random 32x32x3 uint8 images with random
labels in [0, 10). Everything else (the input pipeline and its augmentations,
the model, LARS, the loss, the training loop) is the reference's code.

The reference's run.py reads `builder.info.splits[...].num_examples`, which
mock_data's default policy leaves empty, so a dataset_info.json for cifar10
with the real split sizes (50 000 train, 10 000 test) is written under
META_DIR and mock_data reads it (MockPolicy.USE_FILES): the reference's
epoch and learning-rate arithmetic is that of a real CIFAR-10 run, while its
pipeline cycles over the NUM_EXAMPLES mocked images.
"""

import os
import sys

SPLIT_SIZES = {'train': 50000, 'test': 10000}


def write_cifar10_metadata(meta_dir):
  """Writes cifar10's dataset_info.json (with SPLIT_SIZES) under meta_dir."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import splits as splits_lib  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('cifar10', data_dir=meta_dir)
  if os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
    return
  template = naming.ShardedFileTemplate(
      data_dir=builder.data_dir, dataset_name='cifar10',
      filetype_suffix='tfrecord', split='train')
  builder.info.set_splits(splits_lib.SplitDict([
      splits_lib.SplitInfo(name=name, shard_lengths=[n], num_bytes=0,
                           filename_template=template.replace(split=name))
      for name, n in SPLIT_SIZES.items()
  ]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


def main():
  if len(sys.argv) < 4:
    sys.exit('usage: _reference_mock_run.py TF2_DIR META_DIR NUM_EXAMPLES '
             '[run.py flags...]')
  tf2_dir, meta_dir, num_examples = sys.argv[1:4]
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
  sys.path.insert(0, os.path.abspath(tf2_dir))
  # The reference's run.py parses sys.argv with absl.
  sys.argv = [os.path.join(tf2_dir, 'run.py')] + sys.argv[4:]

  from absl import app  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import run  # pylint: disable=g-import-not-at-top  # The reference's run.py.

  write_cifar10_metadata(meta_dir)
  # What the reference's run.py does under `if __name__ == '__main__':`.
  tf.compat.v1.enable_v2_behavior()
  tf.config.set_soft_device_placement(True)
  with tfds.testing.mock_data(num_examples=int(num_examples),
                              policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=meta_dir):
    app.run(run.main)


if __name__ == '__main__':
  main()

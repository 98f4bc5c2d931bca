r"""Where a memory-trained network's projections sit relative to its memory.

  python benchmarks/memory_diagnostic.py --model_dir=WORK/pretrain_memory \
    --memory_size=16384 [--dataset=fashion_mnist --image_size=28 ...]

Loads a pretraining's trained network and memory (buffer and memory network)
from --model_dir, draws one batch of two augmented views from --split, and
prints mean cosine similarities of the L2-normalised projections: trained vs
trained (other images), trained vs the memory network's (other images, and
the same image), trained vs the buffer, and the memory's among themselves.
A trained network that keeps away from its memory's region, rather than
telling images apart, shows as trained-vs-memory far below trained-vs-trained.
"""

import argparse
import json
import os
import sys

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)


def off_diagonal_mean(a, b):
  import numpy as np  # pylint: disable=import-outside-toplevel
  similarity = a @ b.T
  np.fill_diagonal(similarity, np.nan)
  return float(np.nanmean(similarity))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model_dir', required=True)
  parser.add_argument('--memory_size', type=int, required=True)
  parser.add_argument('--dataset', default='fashion_mnist')
  parser.add_argument('--split', default='train[5000:]')
  parser.add_argument('--image_size', type=int, default=28)
  parser.add_argument('--color_jitter_strength', type=float, default=0.5)
  parser.add_argument('--batch_size', type=int, default=256)
  args = parser.parse_args(argv)

  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tf_simclr import checkpoints  # pylint: disable=import-outside-toplevel
  from tf_simclr import build_model  # pylint: disable=import-outside-toplevel
  from tf_simclr import data  # pylint: disable=import-outside-toplevel
  from tf_simclr import memory as memory_lib  # pylint: disable=import-outside-toplevel

  with open(os.path.join(args.model_dir, 'config.json')) as f:
    architecture = json.load(f)
  kwargs = {key: architecture[key] for key in (
      'resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
      'proj_head_mode', 'num_proj_layers', 'proj_out_dim', 'ft_proj_selector')
            if key in architecture}
  kwargs['image_size'] = args.image_size
  model = build_model(architecture.get('num_classes', 0), **kwargs)
  network = build_model(0, **kwargs)
  memory = memory_lib.NegativeMemory(model, network, args.memory_size, 0.99,
                                     args.image_size)
  prefix = checkpoints.resolve_checkpoint(args.model_dir)
  tf.train.Checkpoint(model=model, memory=memory).read(prefix).expect_partial()
  views_input = data.InputConfig(
      dataset=args.dataset, image_size=args.image_size, split=args.split,
      augmentation='pretrain', batch_size=args.batch_size, subset='all',
      is_training=True, color_jitter_strength=args.color_jitter_strength,
      use_blur=False)
  images, _ = next(iter(data.build_dataset(views_input)))
  views = tf.concat(tf.split(images, 2, axis=-1), axis=0)
  trained = tf.math.l2_normalize(
      model(views, training=True)['proj_head_output'], -1).numpy()
  keys = memory.project(views).numpy()
  buffer = memory.buffer.numpy()
  n = args.batch_size
  report = {
      'checkpoint': prefix,
      'trained_vs_trained_other_images': off_diagonal_mean(trained, trained),
      'trained_vs_memory_other_images': off_diagonal_mean(trained, keys),
      'trained_vs_buffer': float(np.mean(trained @ buffer.T)),
      'trained_vs_memory_same_image': float(np.mean(np.sum(trained * keys, 1))),
      'trained_positive_pairs': float(np.mean(np.sum(trained[:n] * trained[n:],
                                                     1))),
      'memory_vs_memory_other_images': off_diagonal_mean(keys, keys),
      'norm_of_mean_trained': float(np.linalg.norm(trained.mean(0))),
      'norm_of_mean_buffer': float(np.linalg.norm(buffer.mean(0))),
  }
  print(json.dumps(report, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())

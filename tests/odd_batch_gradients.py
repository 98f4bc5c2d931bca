"""Backbone gradients at odd batch sizes through a dynamic batch dimension.

For tests/test_odd_batch.py, which runs it in subprocesses (a oneDNN heap
corruption kills the interpreter), with oneDNN on and off, and compares:

  TF_ENABLE_ONEDNN_OPTS=1 python tests/odd_batch_gradients.py OUT.npz \
      --widths=0.0625,0.125 --batches=1,25,63,65 [--image_sizes=32,32] \
      [--without_workaround]

For each width w (at its image size S) it builds build_model(10,
resnet_depth=18, width_multiplier=w, image_size=S, global_bn=False) with
weights from a fixed seed and traces once a tf.function with input_signature
[None, S, S, 3] computing, at training=True, the gradient of a fixed random
linear function of final_avg_pool with respect to every trainable variable of
the backbone. For each batch b it calls that on b images and writes, per
variable, the gradient's norm and its dot products with PROJECTIONS fixed unit
vectors (full gradients of a width-1 network would take hundreds of MB). It
exits 1 when a gradient is not finite. --without_workaround builds the network
as it was before resnet.StridedPointwiseConv2D (every strided 1x1 convolution
strided). Two cores: about 40 s for the test's cases.
"""

import argparse
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from tf_simclr import model as model_lib  # pylint: disable=wrong-import-position
from tf_simclr import resnet  # pylint: disable=wrong-import-position

# oneDNN's channel block on AVX-512: its strided 1x1 weight gradient is faulty
# below it (a fact about oneDNN, not resnet.ONEDNN_1X1_CHANNEL_BLOCK, which
# --without_workaround zeroes).
CHANNEL_BLOCK = 16
PERIODS = (1009, 1013, 1019, 1021)
PROJECTIONS = len(PERIODS)


def _floats(text):
  return [float(x) for x in text.split(',') if x]


def _ints(text):
  return [int(x) for x in text.split(',') if x]


def set_weights(model, seed=0):
  """He-normal kernels, gamma in [0.5, 1.5] (not the zero init of the last
  BN of each block, which would zero the gradients before it), small beta."""
  rng = np.random.RandomState(seed)
  for variable in model.variables:
    shape = variable.shape.as_list()
    name = variable.name
    if 'gamma' in name or 'moving_variance' in name:
      value = rng.uniform(0.5, 1.5, shape)
    elif 'beta' in name or 'moving_mean' in name or 'bias' in name:
      value = rng.normal(0, 0.1, shape)
    else:
      fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
      value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
    variable.assign(value.astype(np.float32))


def gradient_function(model, image_size):
  @tf.function(input_signature=[
      tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
  def gradients(images):
    with tf.GradientTape() as tape:
      features = model(images, training=True)['final_avg_pool']
      # Not the reported sum(features ** 2): BN keeps the batch's normalised
      # features at unit variance, so that loss nearly cancels out and its
      # gradient is mostly rounding noise. A random linear function is not.
      loss = tf.reduce_sum(features * tf.random.stateless_normal(
          tf.shape(features), seed=[1, 2]))
    return tape.gradient(loss, model.resnet_model.trainable_variables)
  return gradients


def faulty_convolutions(graph):
  """Names of the ops in `graph` (and the functions it calls) that run
  oneDNN's faulty kernel: a 1x1 convolution or its weight gradient with a
  stride above 1 and fewer than CHANNEL_BLOCK input channels (the weight
  gradient of every Conv2D found here is one)."""
  found = []
  for op in graph.get_operations():
    if op.type in ('Conv2D', 'Conv2DBackpropFilter'):
      kernel = (op.inputs[1] if op.type == 'Conv2D' else op.outputs[0]).shape
      if (max(op.get_attr('strides')) > 1 and kernel.rank == 4 and
          kernel[0] == kernel[1] == 1 and kernel[2] is not None and
          kernel[2] < CHANNEL_BLOCK):
        found.append(op.name)
    elif op.type in ('StatefulPartitionedCall', 'PartitionedCall'):
      function = graph._get_function(op.get_attr('f').name)  # pylint: disable=protected-access
      if function is not None:
        found += faulty_convolutions(function.graph)
  return found


def summarise(gradients, seed=1):
  """[variables, 1 + PROJECTIONS] float64: norm, then the dot products with
  unit vectors that tile random vectors of PERIODS lengths (cheap to make at
  11 M parameters; coprime periods, so no two entries share all weights)."""
  rng = np.random.RandomState(seed)
  patterns = [rng.normal(size=period) for period in PERIODS]
  rows = []
  for gradient in gradients:
    flat = gradient.numpy().astype(np.float64).ravel()
    row = [np.linalg.norm(flat)]
    for pattern in patterns:
      direction = np.resize(pattern, flat.size)
      row.append(direction @ flat / np.linalg.norm(direction))
    rows.append(row)
  return np.array(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('output')
  parser.add_argument('--widths', type=_floats, default=[0.0625, 0.125])
  parser.add_argument('--batches', type=_ints, default=[1, 25, 63, 65])
  parser.add_argument('--image_sizes', type=_ints, default=None,
                      help='one per width (default 32 for each)')
  parser.add_argument('--without_workaround', action='store_true')
  args = parser.parse_args()
  image_sizes = args.image_sizes or [32] * len(args.widths)
  if len(image_sizes) != len(args.widths):
    parser.error('--image_sizes needs one size per width')
  if args.without_workaround:
    resnet.ONEDNN_1X1_CHANNEL_BLOCK = 0

  started = time.perf_counter()
  results = {}
  nonfinite = []
  for width, image_size in zip(args.widths, image_sizes):
    model = model_lib.build_model(10, resnet_depth=18, width_multiplier=width,
                                  image_size=image_size, global_bn=False)
    set_weights(model)
    weights = [v.numpy() for v in model.variables]
    gradients = gradient_function(model, image_size)
    for batch in args.batches:
      for variable, value in zip(model.variables, weights):
        variable.assign(value)  # Undo the moving-average updates.
      images = np.random.RandomState(batch).rand(
          batch, image_size, image_size, 3).astype(np.float32)
      values = gradients(tf.constant(images))
      key = f'w{width}_b{batch}'
      if not all(np.isfinite(g.numpy()).all() for g in values):
        nonfinite.append(key)
      results[key] = summarise(values)
      print(key, 'done', f'{time.perf_counter() - started:.1f} s', flush=True)
  np.savez(args.output, **results)
  if nonfinite:
    print('non-finite gradients:', ', '.join(nonfinite), file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  main()

"""oneDNN's strided 1x1 convolution weight gradient, against NumPy.

The TensorFlow bug behind the odd-batch hub fine-tuning crash, in a few lines, and the check that
resnet.StridedPointwiseConv2D avoids it:

  TF_ENABLE_ONEDNN_OPTS=1 python tests/onednn_strided_1x1.py
  TF_ENABLE_ONEDNN_OPTS=1 python tests/onednn_strided_1x1.py --skip_raw   # the check alone

For a 1x1 convolution with stride 2 (NHWC, VALID) of x [N, 32, 32, C] it
compares, with a float64 NumPy reference, the weight gradient of
tf.raw_ops.Conv2DBackpropFilter (what the gradient of a strided tf.nn.conv2d
runs) and the output, input gradient and weight gradient of
StridedPointwiseConv2D, for C from 1 to 24 and N = 1, 25. One line per case;
exits 1 when StridedPointwiseConv2D is off by more than 1e-4 (relative to the
largest value). The raw op's error is printed, not judged: with oneDNN it is
of the order of 1 where C is below oneDNN's channel block (AVX2: C = 3..7 here;
AVX-512: up to 15, where the kernel also overruns its workspace and the process
may abort with heap corruption), and ~1e-7 elsewhere and without oneDNN.
With --skip_raw the raw op is not run (what the test does: on AVX-512 its
heap corruption would abort the check of StridedPointwiseConv2D).
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from tf_simclr import resnet  # pylint: disable=wrong-import-position

SIZE, STRIDE, TOLERANCE = 32, 2, 1e-4
CHANNELS = (1, 3, 4, 6, 7, 8, 12, 15, 16, 24)
BATCHES = (1, 25)


def relative_error(value, reference):
  value = np.asarray(value, np.float64)
  return float(np.abs(value - reference).max() / np.abs(reference).max())


def main(skip_raw):
  rng = np.random.RandomState(0)
  failures = []
  for batch in BATCHES:
    for channels in CHANNELS:
      filters = 2 * channels
      x = rng.randn(batch, SIZE, SIZE, channels).astype(np.float32)
      out_size = (SIZE - 1) // STRIDE + 1
      dy = rng.randn(batch, out_size, out_size, filters).astype(np.float32)
      # NumPy reference: the stride picks every STRIDE-th pixel.
      picked = x[:, ::STRIDE, ::STRIDE, :].astype(np.float64)
      layer = resnet.StridedPointwiseConv2D(filters, 1, strides=STRIDE,
                                            padding='valid', use_bias=False)
      layer.build(x.shape)
      kernel = rng.randn(1, 1, channels, filters).astype(np.float32)
      layer.kernel.assign(kernel)
      want_y = np.einsum('nhwc,ck->nhwk', picked, kernel[0, 0])
      want_dw = np.einsum('nhwc,nhwk->ck', picked, dy.astype(np.float64))
      want_dx = np.zeros(x.shape)
      want_dx[:, ::STRIDE, ::STRIDE, :] = np.einsum(
          'nhwk,ck->nhwc', dy.astype(np.float64), kernel[0, 0])

      raw = ''
      if not skip_raw:
        raw_dw = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=kernel.shape, out_backprop=dy,
            strides=[1, STRIDE, STRIDE, 1], padding='VALID')
        raw = (f'raw Conv2DBackpropFilter dw '
               f'{relative_error(raw_dw[0, 0], want_dw):.1e} | ')
      inputs = tf.constant(x)
      with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = layer(inputs)
      dx, dw = tape.gradient(y, [inputs, layer.kernel], output_gradients=dy)
      errors = {'y': relative_error(y, want_y),
                'dx': relative_error(dx, want_dx),
                'dw': relative_error(dw[0, 0], want_dw)}
      worst = max(errors.values())
      print(f'N={batch:2d} C={channels:2d}: {raw}'
            f'StridedPointwiseConv2D y {errors["y"]:.1e} dx {errors["dx"]:.1e} '
            f'dw {errors["dw"]:.1e}', flush=True)
      if worst > TOLERANCE:
        failures.append(f'N={batch} C={channels}')
  if failures:
    print('StridedPointwiseConv2D is wrong at', ', '.join(failures),
          file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  main(skip_raw='--skip_raw' in sys.argv[1:])

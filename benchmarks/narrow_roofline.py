r"""What bounds a narrow network's training step: a roofline per part.

  python benchmarks/narrow_roofline.py                    # ResNet-18 x1/8, 28 px, batch 512
  python benchmarks/narrow_roofline.py --width_multiplier=0.25

For each part of the backbone (the stem and the four block groups; one block
at the part's real shape, tf_simclr.precision.part_step), one forward +
backward pass in float32 at the pretraining step's per-replica batch (256
images x 2 views):
- time: the fastest of --repeats calls after a first (tracing) one;
- FLOPs: the multiply-adds of every convolution and matrix product of the
  forward graph for the whole batch, 2 FLOPs each, x3 for forward + both gradients (the
  benchmark's convention);
- bytes: every op of the traced forward + backward graph reading its float
  inputs and writing its float outputs once (static shapes): a lower bound of
  the memory traffic when no tensor stays in cache;
- ops: the graph's op count, and the time per op.
The machine: the float32 matmul peak (the benchmark's --measure_peak) and the
streaming bandwidth (an elementwise op over a 256 MiB tensor). A part's bound
is min(peak, intensity x bandwidth); the table gives the fraction of it the
part reaches. The last line of stdout is JSON.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
import tensorflow as tf

from tf_simclr import benchmark
from tf_simclr import precision


def graph_ops(graph):
  """Every op of `graph` and of the functions it calls."""
  for op in graph.get_operations():
    yield op
    if op.type in ('StatefulPartitionedCall', 'PartitionedCall'):
      function = graph._get_function(op.get_attr('f').name)  # pylint: disable=protected-access
      if function is not None:
        yield from graph_ops(function.graph)


def tensor_bytes(tensor):
  if not tensor.dtype.is_floating or tensor.shape.rank is None:
    return 0
  dims = tensor.shape.as_list()
  if None in dims:
    return 0
  return math.prod(dims) * tensor.dtype.size


def graph_bytes_and_ops(graph):
  """(bytes read and written by the float tensors of every op, op count)."""
  total, count = 0, 0
  for op in graph_ops(graph):
    if op.type in ('StatefulPartitionedCall', 'PartitionedCall', 'Placeholder',
                   'Const', 'NoOp', 'Identity', 'ReadVariableOp'):
      continue
    count += 1
    total += sum(tensor_bytes(t) for t in op.inputs)
    total += sum(tensor_bytes(t) for t in op.outputs)
  return total, count


def bandwidth_gbps(megabytes=256, calls=5):
  """GB/s of x * 1.0001 over a float32 tensor of `megabytes` (read + write)."""
  x = tf.random.uniform([megabytes * 2**20 // 4])
  scale = tf.function(lambda x: x * 1.0001)
  scale(x).numpy()
  seconds = []
  for _ in range(calls):
    started = time.perf_counter()
    scale(x)[:1].numpy()
    seconds.append(time.perf_counter() - started)
  return 2 * x.shape[0] * 4 / statistics.median(seconds) / 1e9


def measure(args):
  peak_tflops = benchmark.matmul_peak_tflops('float32', 2048)
  bandwidth = bandwidth_gbps()
  rows = []
  for shape in precision.part_shapes(args.resnet_depth, args.width_multiplier,
                                     args.image_size, cifar_stem=True):
    step, images = precision.part_step(shape, 'float32', batch=args.batch)
    graph = step.get_concrete_function(images).graph
    # _graph_multiply_adds counts one image (it leaves the batch out).
    flops = 3 * 2 * args.batch * benchmark._graph_multiply_adds(  # pylint: disable=protected-access
        graph_forward(shape, args))
    moved, ops = graph_bytes_and_ops(graph)
    seconds = precision.time_part(shape, 'float32', batch=args.batch,
                                  repeats=args.repeats)
    intensity = flops / moved
    bound = min(peak_tflops * 1e12, intensity * bandwidth * 1e9)
    rows.append({
        'part': shape[0], 'channels': shape[2], 'size': shape[3],
        'ms': seconds * 1e3, 'gflop': flops / 1e9,
        'gflops_per_s': flops / seconds / 1e9, 'mbytes': moved / 1e6,
        'flop_per_byte': intensity, 'bound_gflops_per_s': bound / 1e9,
        'of_bound': flops / seconds / bound, 'ops': ops,
        'us_per_op': seconds / ops * 1e6})
  return {'matmul_peak_tflops': peak_tflops, 'bandwidth_gbps': bandwidth,
          'rows': rows, 'device': benchmark.device_description(),
          'config': vars(args)}


def graph_forward(shape, args):
  """The forward graph of a part (for its multiply-adds)."""
  _, kind, filters, size, channels = shape
  layers = precision._part_layers(kind, filters, True, 0.0, 0.0)  # pylint: disable=protected-access

  @tf.function
  def forward(x):
    for layer in layers:
      x = layer(x, training=True)
    return x
  return forward.get_concrete_function(
      tf.TensorSpec([args.batch, size, size, channels])).graph


def print_table(result):
  print(f'{result["device"]}: float32 matmul peak '
        f'{result["matmul_peak_tflops"] * 1e3:.0f} GFLOP/s, streaming '
        f'{result["bandwidth_gbps"]:.1f} GB/s')
  heads = ('part', 'ch', 'px', 'ms', 'GFLOP', 'GFLOP/s', 'MB', 'FLOP/B',
           'bound', 'of bound', 'ops', 'us/op')
  print(''.join(f'{h:>10}' for h in heads))
  for r in result['rows']:
    print(f'{r["part"]:>10}{r["channels"]:>10}{r["size"]:>10}'
          f'{r["ms"]:>10.1f}{r["gflop"]:>10.2f}{r["gflops_per_s"]:>10.1f}'
          f'{r["mbytes"]:>10.0f}{r["flop_per_byte"]:>10.2f}'
          f'{r["bound_gflops_per_s"]:>10.1f}{r["of_bound"]:>10.0%}'
          f'{r["ops"]:>10}{r["us_per_op"]:>10.0f}')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--resnet_depth', type=int, default=18)
  parser.add_argument('--width_multiplier', type=float, default=0.125)
  parser.add_argument('--image_size', type=int, default=28)
  parser.add_argument('--batch', type=int, default=512,
                      help='images per pass (pretraining: 2 views x 256)')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  result = measure(args)
  print_table(result)
  print(json.dumps(result, sort_keys=True))


if __name__ == '__main__':
  main()

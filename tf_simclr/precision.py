"""bfloat16 only where it is faster: a measured choice per part of the ResNet.

On a CPU, TensorFlow's bfloat16 convolutions are fast or slow by shape and by
machine: without bfloat16 hardware (AVX2 only) their gradients take an
emulated path 20-35x slower than float32's; with AVX-512 BF16 or AMX, narrow
layers (8-64 channels) lose and wide ones win (docs/performance.md). So a
bfloat16 run on a CPU times, once per process and shape, one block of each
part of the backbone (the stem and the 4 block groups) forward and backward
in both precisions on the run's batch per replica (views included, at most
PROBE_MAX_BATCH images: small batches favour float32, whose kernels have less
fixed cost per call), and computes each part in the faster one: float32
layers inside the bfloat16 policy where bfloat16 loses. The heads keep the
run's policy. Variables are float32 either way, so checkpoints do
not change.
"""

import math
import time

from absl import logging
import tensorflow as tf

from tf_simclr import architecture
from tf_simclr import resnet

# bfloat16 must be at least this much faster to be chosen (timing noise).
MARGIN = 0.95
PROBE_BATCH = 32  # When the caller gives no batch.
# The probe's largest batch: its seconds grow with the batch, and beyond a
# few hundred 28 px images a part's float32 / bfloat16 ratio no longer moves
# (docs/performance.md).
PROBE_MAX_BATCH = 256
PROBE_REPEATS = 3
_MEASURED = {}  # (part shape, batch, policy) -> seconds


def part_shapes(resnet_depth, width_multiplier, image_size, cifar_stem):
  """[(part name, block kind, filters, input height, input channels)] of the
  stem and the 4 block groups (the shapes the probe times)."""
  block_type, _ = resnet.BLOCKS[resnet_depth]
  width = int(64 * width_multiplier)
  expansion = 4 if block_type == 'bottleneck' else 1
  size = image_size if cifar_stem else math.ceil(image_size / 4)
  shapes = [('stem', 'stem', width, image_size, 3)]
  for i in range(4):
    filters = int(64 * width_multiplier * 2**i)
    size = size if i == 0 else math.ceil(size / 2)
    shapes.append((f'block_group{i + 1}', block_type, filters, size,
                   filters * expansion))
  return shapes


def _part_layers(kind, filters, cifar_stem, sk_ratio, se_ratio):
  if kind == 'stem':
    return resnet.Resnet._stem(filters, cifar_stem, sk_ratio,  # pylint: disable=protected-access
                               dict(decay=0.9, synchronized=False))
  block = (resnet.BottleneckBlock if kind == 'bottleneck'
           else resnet.ResidualBlock)
  return [block(filters, 1, sk_ratio=sk_ratio, se_ratio=se_ratio)]


def part_step(shape, policy, cifar_stem=True, sk_ratio=0.0, se_ratio=0.0,
              batch=PROBE_BATCH):
  """(step, images): a tf.function running one forward + backward pass of a
  part (`shape` from part_shapes: one block at the part's shape, built fresh)
  computing in Keras policy `policy`, and a random batch to call it on."""
  _, kind, filters, size, channels = shape
  with resnet.policy_scope(policy):
    layers = _part_layers(kind, filters, cifar_stem, sk_ratio, se_ratio)
  images = tf.random.uniform([batch, size, size, channels])

  def forward(x):
    for layer in layers:
      x = layer(x, training=True)
    return x

  forward(images[:1])  # Builds the variables.
  variables = [v for layer in layers for v in layer.trainable_variables]

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.cast(forward(x), tf.float32))
    return tape.gradient(loss, [x] + variables)

  return step, images


def time_part(shape, policy, cifar_stem=True, sk_ratio=0.0, se_ratio=0.0,
              batch=PROBE_BATCH, repeats=PROBE_REPEATS):
  """Seconds of one forward + backward pass of a part (part_step): the
  fastest of `repeats` calls after a first (tracing) one. Memoised per
  process."""
  key = (shape[1:], cifar_stem, sk_ratio, se_ratio, batch, policy)
  if key in _MEASURED:
    return _MEASURED[key]
  step, images = part_step(shape, policy, cifar_stem, sk_ratio, se_ratio,
                           batch)
  step(images)
  best = math.inf
  for _ in range(repeats):
    started = time.perf_counter()
    gradients = step(images)
    gradients[0].numpy()
    best = min(best, time.perf_counter() - started)
  _MEASURED[key] = best
  return best


def part_policies(resnet_depth, width_multiplier, image_size, cifar_stem,
                  sk_ratio=0.0, se_ratio=0.0, batch=PROBE_BATCH):
  """(policies, timings): per part of resnet.PART_NAMES 'mixed_bfloat16' if
  it measured faster in bfloat16 (by MARGIN) than in float32, else 'float32';
  timings {part: (float32 s, bfloat16 s)}."""
  policies, timings = [], {}
  for shape in part_shapes(resnet_depth, width_multiplier, image_size,
                           cifar_stem):
    seconds = [time_part(shape, policy, cifar_stem, sk_ratio, se_ratio,
                         batch) for policy in ('float32', 'mixed_bfloat16')]
    timings[shape[0]] = tuple(seconds)
    policies.append('mixed_bfloat16' if seconds[1] < MARGIN * seconds[0]
                    else 'float32')
  return policies, timings


def describe(policies, timings):
  """One log line: which parts compute in bfloat16, with the probe's times."""
  parts = ', '.join(
      f'{name} {"bfloat16" if policy == "mixed_bfloat16" else "float32"} '
      f'({timings[name][0] * 1e3:.1f} / {timings[name][1] * 1e3:.1f} ms)'
      for name, policy in zip(timings, policies))
  return (f'bfloat16 where measured faster on this CPU (float32 / bfloat16 '
          f'per block, forward + backward): {parts}')


def speedup(timings):
  """The backbone's estimated step speed-up from bfloat16 where it wins:
  the parts' float32 time over the time of each part's faster precision."""
  float32 = sum(seconds[0] for seconds in timings.values())
  best = sum(min(seconds) for seconds in timings.values())
  return float32 / best if best else 1.0


def probe_batch(config, replicas, views):
  """The probe's batch for a run: the images one replica's backbone sees per
  step (`views` augmented views per image), at most PROBE_MAX_BATCH."""
  return max(1, min(PROBE_MAX_BATCH,
                    config.train_batch_size // max(1, replicas) * views))


def _run_part_policies(config, batch):
  return part_policies(
      config.resnet_depth, config.width_multiplier, config.image_size,
      architecture.uses_cifar_stem(config.image_size), config.sk_ratio,
      config.se_ratio, batch)


def choose_for_run(config, on_accelerator, batch=PROBE_BATCH):
  """The backbone's part policies for a run.py Config, or None (the global
  policy everywhere): measured on a CPU (at `batch`, probe_batch's) for
  --precision=bfloat16 with --bfloat16_parts=measured."""
  if (config.precision != 'bfloat16' or on_accelerator or
      config.bfloat16_parts != 'measured'):
    return None
  policies, timings = _run_part_policies(config, batch)
  logging.info(describe(policies, timings))
  return policies


# A float32 run on a CPU with bfloat16 instructions measures whether
# bfloat16 would be faster only when it is this long (the probe's seconds are
# then noise next to the run's).
HINT_MIN_STEPS = 1000
HINT_MIN_SPEEDUP = 1.1


def hint_for_run(config, on_accelerator, total_steps, cpu_has_bfloat16,
                 batch=PROBE_BATCH):
  """A line recommending --precision=bfloat16 when the probe (at `batch`)
  measures the backbone at least HINT_MIN_SPEEDUP faster with it on this CPU,
  else None (also None without measuring: not float32, an accelerator, no
  bfloat16 instructions, or a run shorter than HINT_MIN_STEPS)."""
  if (config.precision != 'float32' or on_accelerator or
      not cpu_has_bfloat16 or total_steps < HINT_MIN_STEPS):
    return None
  policies, timings = _run_part_policies(config, batch)
  gain = speedup(timings)
  if gain < HINT_MIN_SPEEDUP:
    return None
  return (f'--precision=bfloat16 would run this backbone about {gain:.1f}x '
          f'faster on this CPU ({describe(policies, timings)}); check the '
          'whole step with python -m tf_simclr.benchmark '
          '--variant=precision=bfloat16')

r"""Step time with and without the strided 1x1 workaround, in one process.

resnet.StridedPointwiseConv2D computes strided 1x1 convolutions of fewer than
16 input channels as a stride-1 convolution of the subsampled input (oneDNN's
strided 1x1 weight gradient is wrong there and can corrupt the heap; issue
16). This times, with calls interleaved so that load changes hit both alike:

  train  tf_simclr.benchmark's training step (Trainer's own replica step on a
         resident random batch) of a network built with the workaround and
         one built without it (resnet.ONEDNN_1X1_CHANNEL_BLOCK = 0 while it
         is built: every strided 1x1 convolution strided);
  hub    one fine-tuning step, Sequential([hub.KerasLayer(proj_head_K,
         trainable=True), Dense(10)]).train_on_batch, of each network's
         export, at --hub_batch_size (through the module's dynamic batch).

  python -m benchmarks.strided_pointwise_speed --resnet_depth=18 \
      --image_size=32 --width_multiplier=1 --train_batch_size=64 --steps=10 \
      --steps_per_loop=5 --warmup_steps=5 --hub_steps=10

Takes every tf_simclr.benchmark flag (model, batch, stage); prints one JSON
line: medians (ms/step), ratios (with workaround / without) and how many of
the network's strided 1x1 convolutions the workaround changed (0: both
graphs are the same). Without the workaround a width below 0.25 may abort
with heap corruption on AVX-512 CPUs (and trains on wrong gradients below
0.125 with AVX2): time those widths on an AVX2 CPU, or not at all.
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

from tf_simclr import benchmark
from tf_simclr.benchmark import cli  # pylint: disable=unused-import (the benchmark's flags)

FLAGS = flags.FLAGS
flags.DEFINE_integer('hub_steps', 10, 'Timed hub fine-tuning steps of each (0: skip).')
flags.DEFINE_integer('hub_batch_size', 64, 'Batch of the hub fine-tuning step.')
flags.DEFINE_integer('hub_depth', 1, 'Projection-head depth of the hub module fine-tuned.')


def _build_without_workaround(build):
  """Runs build() with every strided 1x1 convolution left strided."""
  from tf_simclr import resnet  # pylint: disable=g-import-not-at-top
  saved = resnet.ONEDNN_1X1_CHANNEL_BLOCK
  resnet.ONEDNN_1X1_CHANNEL_BLOCK = 0
  try:
    return build()
  finally:
    resnet.ONEDNN_1X1_CHANNEL_BLOCK = saved


def _subsampling_layers(model):
  from tf_simclr import resnet  # pylint: disable=g-import-not-at-top
  return sum(1 for layer in model.submodules
             if isinstance(layer, resnet.StridedPointwiseConv2D)
             and layer.subsamples_input)


def _median_ms(seconds):
  return 1000 * statistics.median(seconds)


def _hub_step(path, image_size, batch_size):
  """A callable running one train_on_batch through the hub module at `path`;
  returns its seconds (the loss comes back as a number: the step is done)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  model = tf_keras.Sequential([
      tf_keras.Input((image_size, image_size, 3)),
      hub.KerasLayer(path, trainable=True), tf_keras.layers.Dense(10)])
  model.compile(tf_keras.optimizers.SGD(0.01, momentum=0.9),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.RandomState(0)
  images = rng.rand(batch_size, image_size, image_size, 3).astype(np.float32)
  labels = rng.randint(0, 10, batch_size)

  def step():
    started = time.perf_counter()
    model.train_on_batch(images, labels)
    return time.perf_counter() - started
  return step


def main(argv):
  del argv
  import export  # pylint: disable=g-import-not-at-top
  from tf_simclr import distribute  # pylint: disable=g-import-not-at-top
  from tf_simclr import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  strategy = distribute.make_strategy(FLAGS.strategy, num_gpus=FLAGS.num_gpus)
  work_dir = tempfile.mkdtemp(prefix='strided_pointwise_speed_')
  builds = {
      'with': lambda build: build(),
      'without': _build_without_workaround,
  }
  trainers = {}
  for name, around in builds.items():
    config = benchmark.make_config(FLAGS, os.path.join(work_dir, name))
    trainers[name] = around(lambda: trainer_lib.Trainer(config, strategy))  # pylint: disable=cell-var-from-loop
  result = {
      'config': {name: FLAGS[name].value for name in benchmark.TIMED_FLAGS},
      'device': benchmark.device_description(),
      'layers_changed_by_workaround': _subsampling_layers(
          trainers['with'].model),
  }
  timed = [benchmark.TimedTrainer(trainers[name], FLAGS.steps_per_loop,
                                  FLAGS.feed) for name in builds]
  timings = benchmark.time_training(timed, FLAGS.steps, FLAGS.warmup_steps)
  for name, timing in zip(builds, timings):
    result[f'train_ms_per_step_{name}'] = timing['ms_per_step_median']
  result['train_ratio'] = (result['train_ms_per_step_with'] /
                           result['train_ms_per_step_without'])

  if FLAGS.hub_steps:
    steps = {}
    for name, around in builds.items():
      exported = around(lambda: export.export_model(  # pylint: disable=cell-var-from-loop
          trainers[name].model, os.path.join(work_dir, name, 'export'),  # pylint: disable=cell-var-from-loop
          image_size=FLAGS.image_size, step=0, train_mode='pretrain'))
      steps[name] = _hub_step(exported['hub'][FLAGS.hub_depth],
                              FLAGS.image_size, FLAGS.hub_batch_size)
    seconds = {name: [] for name in builds}
    for step in steps.values():
      for _ in range(1 + FLAGS.warmup_steps):  # Tracing, then warm-up.
        step()
    for _ in range(FLAGS.hub_steps):
      for name, step in steps.items():
        seconds[name].append(step())
    for name in builds:
      result[f'hub_ms_per_step_{name}'] = _median_ms(seconds[name])
    result['hub_ratio'] = (result['hub_ms_per_step_with'] /
                           result['hub_ms_per_step_without'])
  print(json.dumps(result))
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)

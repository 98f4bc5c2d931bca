r"""Times the training step and the input pipeline; prints a table, then JSON.

The library of `python -m tf_simclr.benchmark`; its command line (the flags)
is tf_simclr/benchmark/cli.py, and run_benchmark takes the flags' values.

The training step is `trainer.Trainer`'s own replica step (model on the
batch, the stage's loss, one optimizer update, metrics) on a batch of random
images that stays on the device, several steps per tf.function call, so the
input pipeline is left out. The input pipeline is timed on its own:
`data.build_dataset` batches pulled as fast as they come.

  # The CPU target config (ResNet-18, CIFAR stem, 32 px, batch 64, pretrain):
  python -m tf_simclr.benchmark --resnet_depth=18 --image_size=32 \
    --train_batch_size=64 --steps=20 --steps_per_loop=10

  # ResNet-50 at 224 px on one GPU, bfloat16 with XLA:
  python -m tf_simclr.benchmark --resnet_depth=50 --image_size=224 \
    --train_batch_size=256 --precision=bfloat16 --jit_compile \
    --steps=100 --steps_per_loop=50 --component=train

The last line of stdout is one JSON object (train_mode, config,
ms_per_step_median, images_per_sec, views_per_sec, model_gflops_per_image,
achieved_tflops, input_images_per_sec, device, ...). FLOPs are counted
analytically from the shapes of every convolution and matrix multiplication
in the traced forward graph, 2 FLOPs per multiply-add; a training step is
counted as 3x the forward (forward + backward), plus 1x for the teacher's
forward when distilling. Batch norm, activations and the optimizer update are
not counted.
"""

import dataclasses
import math
import os
import platform
import shutil
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The kernels run.py trains with (see run.py): oneDNN also on AVX2-only CPUs.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

from tf_simclr import stages  # pylint: disable=g-import-not-at-top (TF-free)


class UsageError(ValueError):
  """A bad --variant; the command line reports it as a usage error."""


# What a --variant may change (the same model, batch and stage throughout).
VARIANT_FLAGS = ('steps_per_loop', 'jit_compile', 'precision',
                 'bfloat16_parts', 'feed',
                 'global_bn', 'optimizer', 'blur_placement', 'memory_size',
                 'memory_momentum')
TIMED_FLAGS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
               'image_size', 'proj_head_mode', 'num_proj_layers',
               'proj_out_dim', 'global_bn', 'optimizer', 'train_batch_size',
               'precision', 'bfloat16_parts', 'jit_compile', 'steps_per_loop',
               'strategy',
               'cpu_replicas', 'steps', 'warmup_steps', 'component', 'feed',
               'dataset', 'use_blur', 'blur_placement', 'memory_size')


# ---------------------------------------------------------------- FLOPs
def count_forward_multiply_adds(model, image_size):
  """Multiply-adds of one image through `model` (inference mode).

  Traces the forward pass at batch 1 and adds up, from the static shapes,
  every Conv2D (out_h·out_w·out_c·k_h·k_w·in_c), depthwise convolution and
  MatMul / BatchMatMul (m·k·n). Elementwise ops, BN and pooling are left out.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  forward = tf.function(lambda images: model(images, training=False))
  graph = forward.get_concrete_function(
      tf.TensorSpec([1, image_size, image_size, 3], tf.float32)).graph
  return _graph_multiply_adds(graph)


def _graph_multiply_adds(graph):
  total = 0
  for op in graph.get_operations():
    if op.type in ('Conv2D', 'DepthwiseConv2dNative'):
      out = op.outputs[0].shape.as_list()
      kernel = op.inputs[1].shape.as_list()
      if op.get_attr('data_format') == b'NCHW':
        out = [out[0], out[2], out[3], out[1]]
      if op.type == 'Conv2D':
        total += out[1] * out[2] * out[3] * kernel[0] * kernel[1] * kernel[2]
      else:  # Each output channel reads one input channel.
        total += out[1] * out[2] * out[3] * kernel[0] * kernel[1]
    elif op.type in ('MatMul', 'BatchMatMul', 'BatchMatMulV2', 'BatchMatMulV3'):
      a = op.inputs[0].shape.as_list()
      out = op.outputs[0].shape.as_list()
      transpose_a = op.get_attr('transpose_a' if op.type == 'MatMul' else 'adj_x')
      inner = a[-2] if transpose_a else a[-1]
      total += math.prod(out) * inner
    elif op.type in ('StatefulPartitionedCall', 'PartitionedCall'):
      function_name = op.get_attr('f').name
      function = graph._get_function(function_name)  # pylint: disable=protected-access
      if function is not None:
        total += _graph_multiply_adds(function.graph)
  return total


# ---------------------------------------------------------------- peak
def matmul_peak_tflops(dtype_name, size, chain=8, calls=5):
  """TFLOPS of n x n matrix multiplications in `dtype_name` on the default
  device: `chain` dependent matmuls per tf.function call (so launch and
  host costs vanish), median over `calls` calls after a first (tracing) one.
  On GPUs TensorFlow runs float32 matmuls as TF32 unless that is turned off,
  so 'float32' is what the float32 model gets there too."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  dtype = tf.as_dtype(dtype_name)
  # Orthogonal-ish scaling keeps the chained products bounded.
  a = tf.cast(tf.random.normal([size, size]), dtype)
  b = tf.cast(tf.random.normal([size, size], stddev=size ** -0.5), dtype)

  @tf.function
  def run(a, b):
    for _ in range(chain):
      a = tf.matmul(a, b)
    return tf.reduce_sum(tf.cast(a[:1, :1], tf.float32))

  run(a, b).numpy()
  seconds = []
  for _ in range(calls):
    started = time.perf_counter()
    run(a, b).numpy()
    seconds.append(time.perf_counter() - started)
  return 2 * size ** 3 * chain / statistics.median(seconds) / 1e12


# ---------------------------------------------------------------- setup
def device_description():
  """'NVIDIA H200 (1 GPU)' or 'CPU: AMD EPYC (2 cores)'."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpus = tf.config.list_physical_devices('GPU')
  if gpus:
    details = tf.config.experimental.get_device_details(gpus[0])
    return f'{details.get("device_name", "GPU")} ({len(gpus)} GPU)'
  from tf_simclr import distribute  # pylint: disable=g-import-not-at-top
  name = distribute.cpu_model_name(platform.processor() or platform.machine())
  return f'CPU: {name} ({os.cpu_count()} cores)'


def parse_variant(text, parse_value):
  """'jit_compile=true precision=bfloat16' -> {flag name: parsed value};
  parse_value(name, text) parses one flag's value (the command line's
  parsers)."""
  overrides = {}
  for item in text.split():
    name, sep, value = item.partition('=')
    if not sep or name not in VARIANT_FLAGS:
      raise UsageError(f'--variant wants NAME=VALUE pairs with NAME one '
                       f'of {", ".join(VARIANT_FLAGS)}, got {item!r}')
    overrides[name] = parse_value(name, value)
  return overrides


def make_config(settings, model_dir, teacher_dir=None, overrides=None):
  """The config.Config of `settings` (an object whose attributes are run.py
  flag values: the parsed command line) and `overrides` (dataset synthetic:
  no files needed)."""
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  overrides = overrides or {}
  values = {field.name: overrides.get(field.name,
                                      getattr(settings, field.name))
            for field in dataclasses.fields(config_lib.Config)
            if hasattr(settings, field.name) and
            field.name not in ('dataset', 'data_dir')}
  values.update(dataset='synthetic', model_dir=model_dir,
                train_steps=10**9, warmup_epochs=1,
                teacher_checkpoint=teacher_dir)
  return config_lib.Config(**values).validate()


def write_random_teacher(config, directory):
  """A randomly initialised fine-tuned model of `config`'s architecture in
  `directory` (config.json + checkpoint), for timing distillation."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import data  # pylint: disable=g-import-not-at-top
  from tf_simclr import model as model_lib  # pylint: disable=g-import-not-at-top
  num_classes = config.num_classes or data.get_info('synthetic').num_classes
  teacher = model_lib.build_model(num_classes, **config.model_kwargs(),
                                  supervised_training=True)
  config_lib.write_architecture(
      directory, dict(config.architecture(), num_classes=num_classes))
  tf.train.Checkpoint(model=teacher).save(os.path.join(directory, 'ckpt'))


# ---------------------------------------------------------------- training step
def random_batch(trainer, seed=0):
  """Per-replica (images float32 [b, H, W, 3·views] in [0, 1], labels int32
  [b]) created on each replica's device."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  config = trainer.config
  strategy = trainer.strategy
  per_replica = config.train_batch_size // strategy.num_replicas_in_sync
  channels = 3 * trainer.stage.views

  def make(context):
    replica_seed = seed + context.replica_id_in_sync_group
    images = tf.random.stateless_uniform(
        [per_replica, config.image_size, config.image_size, channels],
        [replica_seed, 0])
    labels = tf.random.stateless_uniform(
        [per_replica], [replica_seed, 1], maxval=trainer.num_classes,
        dtype=tf.int32)
    return images, labels

  return strategy.experimental_distribute_values_from_function(make)


def make_timed_loop(trainer, batch, feed):
  """A callable run(num_steps) doing num_steps training steps in one call.

  feed 'device': Trainer's replica step on `batch` in a loop of our own (what
  Trainer.make_train_loop does, minus the iterator); 'dataset': Trainer's own
  loop over a repeated in-memory dataset of the same batch.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  strategy = trainer.strategy
  if feed == 'dataset':
    train_loop = trainer.make_train_loop()
    values = strategy.experimental_local_results(batch)
    dataset = tf.data.Dataset.from_tensors(
        tuple(tf.concat(parts, 0) for parts in zip(*values))).repeat()
    iterators = [iter(strategy.experimental_distribute_dataset(dataset))]
    return lambda num_steps: train_loop(iterators, tf.constant(num_steps))

  # As in Trainer: a nested tf.function only when XLA compiles the step.
  step_fn = trainer.replica_step
  if trainer.config.jit_compile:
    step_fn = tf.function(step_fn, jit_compile=True)

  @tf.function
  def device_loop(batch, num_steps):
    for _ in tf.range(num_steps):
      trainer.train_step((batch,), step_fn)

  return lambda num_steps: device_loop(batch, tf.constant(num_steps))


class TimedTrainer:
  """A Trainer whose step can be run `steps_per_loop` steps per call."""

  def __init__(self, trainer, steps_per_loop, feed):
    self.trainer = trainer
    self.steps_per_loop = steps_per_loop
    self._run = make_timed_loop(trainer, random_batch(trainer), feed)
    self.per_step_ms = []
    self.first_call_s = None

  def call(self):
    """Runs one loop; returns its seconds."""
    started = time.perf_counter()
    self._run(self.steps_per_loop)
    int(self.trainer.global_step.numpy())  # Waits for the device.
    return time.perf_counter() - started

  def timing(self):
    return {
        'ms_per_step_median': statistics.median(self.per_step_ms),
        'ms_per_step_min': min(self.per_step_ms),
        'ms_per_step_max': max(self.per_step_ms),
        'timed_calls': len(self.per_step_ms),
        'timed_steps': len(self.per_step_ms) * self.steps_per_loop,
        'first_call_s': self.first_call_s,
        'nonfinite': int(self.trainer.nonfinite_step.numpy()) >= 0,
    }


def time_training(timed_trainers, steps, warmup_steps):
  """Times every TimedTrainer, their calls interleaved round-robin so that a
  change of machine load hits all of them alike. Each one runs at least
  `steps` timed steps (whole calls) after its first (tracing) call and
  `warmup_steps` untimed steps."""
  for timed in timed_trainers:
    timed.first_call_s = timed.call()
    for _ in range(math.ceil(warmup_steps / timed.steps_per_loop)):
      timed.call()
  calls = [max(1, math.ceil(steps / timed.steps_per_loop))
           for timed in timed_trainers]
  rounds = max(calls)
  for round_index in range(rounds):
    for timed, count in zip(timed_trainers, calls):
      # `count` calls spread evenly over the rounds.
      if (round_index + 1) * count // rounds > round_index * count // rounds:
        timed.per_step_ms.append(1000 * timed.call() / timed.steps_per_loop)
  return [timed.timing() for timed in timed_trainers]


# ---------------------------------------------------------------- input pipeline
def time_input(dataset, image_size, batch_size, augmentation, num_batches,
               warmup_batches, data_dir=None, use_blur=True,
               color_jitter_strength=1.0, cache=False):
  """Images/s of data.build_dataset's training batches (None: unavailable,
  with the reason)."""
  from tf_simclr import data  # pylint: disable=g-import-not-at-top
  try:
    config = data.InputConfig(
        dataset=dataset, split='train', image_size=image_size,
        batch_size=batch_size, augmentation=augmentation, is_training=True,
        data_dir=data_dir, use_blur=use_blur,
        color_jitter_strength=color_jitter_strength, cache=cache)
    iterator = iter(data.build_dataset(config))
    for _ in range(warmup_batches):
      next(iterator)
  except Exception as error:  # pylint: disable=broad-except
    return None, f'{type(error).__name__}: {str(error).splitlines()[0][:120]}'
  started = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  seconds = time.perf_counter() - started
  return num_batches * batch_size / seconds, None


# ---------------------------------------------------------------- main
def run_benchmark(settings, parse_value):
  """Runs what settings.component asks (`settings`: the command line's
  values, python -m tf_simclr.benchmark --help lists them; parse_value:
  parse_variant's parser); prints the table and returns the JSON summary."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf_simclr import augment  # pylint: disable=g-import-not-at-top
  from tf_simclr import distribute  # pylint: disable=g-import-not-at-top
  from tf_simclr import stages  # pylint: disable=g-import-not-at-top
  from tf_simclr import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  stage = stages.STAGES[settings.train_mode]
  summary = {
      'train_mode': settings.train_mode,
      'config': {name: getattr(settings, name) for name in TIMED_FLAGS},
      'device': device_description(),
      'tensorflow': tf.__version__,
      'ms_per_step_median': None, 'images_per_sec': None,
      'views_per_sec': None, 'model_gflops_per_image': None,
      'achieved_tflops': None, 'input_images_per_sec': None,
      'flops_convention': ('model_gflops_per_image: forward pass of one view, '
                           '2 FLOPs per multiply-add, conv + matmul only, '
                           'counted from the traced graph\'s shapes; '
                           'achieved_tflops: 3x forward per view (forward + '
                           'backward) [+1x teacher forward when distilling] '
                           'x views/s'),
  }
  rows = []
  devices = None
  if settings.strategy == 'mirrored' and settings.cpu_replicas:
    devices = distribute.split_cpu_into_logical_devices(settings.cpu_replicas)
  strategy = distribute.make_strategy(settings.strategy, num_gpus=settings.num_gpus,
                                      devices=devices)
  on_accelerator = distribute.runs_on_accelerator(strategy)

  if settings.component in ('train', 'both'):
    variants = [('baseline', {})] + [(text, parse_variant(text, parse_value))
                                     for text in settings.variant]
    model_dir = tempfile.mkdtemp(prefix='tf_simclr_benchmark_')
    try:
      timed_trainers = []
      for index, (_, overrides) in enumerate(variants):
        setting = lambda name: overrides.get(name, getattr(settings, name))  # pylint: disable=cell-var-from-loop
        run_dir = os.path.join(model_dir, f'run{index}')
        teacher_dir = None
        if stages.STAGES[settings.train_mode].needs_teacher:
          teacher_dir = os.path.join(run_dir, 'teacher')
          write_random_teacher(make_config(settings, run_dir, 'unused',
                                           overrides),
                               teacher_dir)
        config = make_config(settings, os.path.join(run_dir, 'model'),
                             teacher_dir, overrides)
        trainer = trainer_lib.Trainer(config, strategy)
        timed_trainers.append(TimedTrainer(trainer, setting('steps_per_loop'),
                                           setting('feed')))
      timings = time_training(timed_trainers, settings.steps, settings.warmup_steps)
      baseline = timed_trainers[0].trainer
      with strategy.scope():
        multiply_adds = count_forward_multiply_adds(baseline.model,
                                                    baseline.config.image_size)
    finally:
      shutil.rmtree(model_dir, ignore_errors=True)
    gflops = 2 * multiply_adds / 1e9
    passes = 3 + (1 if stages.STAGES[settings.train_mode].needs_teacher else 0)

    def rates(timing):
      images_per_sec = settings.train_batch_size / (
          timing['ms_per_step_median'] / 1000)
      views_per_sec = images_per_sec * stage.views
      return images_per_sec, views_per_sec, passes * gflops * views_per_sec / 1000

    images_per_sec, views_per_sec, tflops = rates(timings[0])
    summary.update(timings[0])
    summary.update(
        images_per_sec=images_per_sec, views_per_sec=views_per_sec,
        model_gflops_per_image=gflops,
        model_gmacs_per_image=multiply_adds / 1e9,
        achieved_tflops=tflops, replicas=strategy.num_replicas_in_sync)
    for (name, _), timing in zip(variants, timings):
      variant_images, variant_views, _ = rates(timing)
      rows.append((f'train {name}',
                   f'{timing["ms_per_step_median"]:.1f} ms/step (min '
                   f'{timing["ms_per_step_min"]:.1f}, max '
                   f'{timing["ms_per_step_max"]:.1f}, {timing["timed_steps"]} '
                   f'steps)',
                   f'{variant_images:.1f} images/s, {variant_views:.1f} '
                   f'views/s, first call {timing["first_call_s"]:.1f} s'
                   + (', NaN/Inf seen' if timing['nonfinite'] else '')
                   + (f', {timings[0]["ms_per_step_median"] / timing["ms_per_step_median"]:.2f}x baseline speed'
                      if name != 'baseline' else '')))
    if len(variants) > 1:
      summary['variants'] = [
          dict(variant=name, speedup=(timings[0]['ms_per_step_median'] /
                                      timing['ms_per_step_median']), **timing)
          for (name, _), timing in zip(variants[1:], timings[1:])]
    rows.append(('model', f'{gflops:.3f} GFLOPs/view forward',
                 f'{tflops:.4f} TFLOPS achieved (baseline)'))
    if settings.measure_peak:
      size = settings.peak_matrix_size or (8192 if on_accelerator else 2048)
      peaks = {name: matmul_peak_tflops(name, size)
               for name in ('float32', 'bfloat16')}
      # Mixed float16 runs its matmuls in float16: time that too.
      if 'float16' in [settings.precision] + [
          overrides.get('precision') for _, overrides in variants]:
        peaks['float16'] = matmul_peak_tflops('float16', size)
      compute = 'float32' if settings.precision == 'float32' else settings.precision
      summary.update(matmul_peak_tflops=peaks, matmul_peak_size=size,
                     fraction_of_peak=tflops / peaks[compute])
      rows.append(('matmul peak', ', '.join(
          f'{name} {value:.3f}' for name, value in peaks.items()) + ' TFLOPS',
                   f'{size}x{size}; the step reaches '
                   f'{100 * tflops / peaks[compute]:.0f} % of {compute}\'s'))
      for variant in summary.get('variants', []):
        overrides = dict(variants)[variant['variant']]
        precision = overrides.get('precision', settings.precision)
        variant_tflops = rates(variant)[2]
        variant.update(achieved_tflops=variant_tflops,
                       fraction_of_peak=variant_tflops / peaks[precision])

  if settings.component in ('input', 'both'):
    sizes = [int(size) for size in settings.input_image_sizes]
    if settings.image_size not in sizes:
      sizes.insert(0, settings.image_size)
    datasets = list(settings.input_datasets)
    if settings.dataset not in datasets:
      datasets.insert(0, settings.dataset)
    table = []
    for dataset in datasets:
      for size in sizes:
        # As in Trainer: with the blur in the training step, the pipeline
        # does not blur.
        in_step = augment.blurs_in_training_step(
            stage.augmentation, settings.use_blur, size, settings.blur_placement,
            on_accelerator)
        input_blurs = settings.use_blur and not in_step
        if size == settings.image_size:
          summary['input_blur'] = input_blurs
        rate, reason = time_input(
            dataset, size, settings.train_batch_size, stage.augmentation,
            settings.input_batches, settings.input_warmup_batches, settings.data_dir,
            input_blurs, settings.color_jitter_strength, settings.cache_dataset)
        table.append({'dataset': dataset, 'image_size': size,
                      'images_per_sec': rate, 'unavailable': reason})
        rows.append((f'input {dataset} {size}px',
                     f'{rate:.1f} images/s' if rate else 'unavailable',
                     reason or f'{stage.augmentation} augmentation, batch '
                     f'{settings.train_batch_size}'
                     f'{"" if input_blurs or stage.augmentation != "pretrain" else ", blur in the step"}'))
        if dataset == settings.dataset and size == settings.image_size:
          summary['input_images_per_sec'] = rate
    summary['input_table'] = table
    if summary['images_per_sec'] and summary['input_images_per_sec']:
      summary['input_to_train_ratio'] = (summary['input_images_per_sec'] /
                                         summary['images_per_sec'])
      rows.append(('input / train', f'{summary["input_to_train_ratio"]:.2f}x',
                   'images/s of the input pipeline over the training step'))

  print(f'tf_simclr benchmark: {settings.train_mode}, ResNet-{settings.resnet_depth} '
        f'x{settings.width_multiplier:g}, {settings.image_size} px, batch '
        f'{settings.train_batch_size}, {settings.precision}'
        f'{", XLA" if settings.jit_compile else ""}, {summary["device"]}')
  width = max(len(row[0]) for row in rows) if rows else 0
  for name, value, note in rows:
    print(f'  {name:<{width}}  {value:<48} {note}')
  return summary

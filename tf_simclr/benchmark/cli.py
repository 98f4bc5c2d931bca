"""The command line of the benchmark: `python -m tf_simclr.benchmark --help`.

The flags live here, in the entry point; the library (tf_simclr.benchmark)
takes their values as an object. A bad flag ends as run.py's do: one line
on stderr, exit status 2, before TensorFlow loads. Another entry point that times the same
way (benchmarks/strided_pointwise_speed.py) imports this module for the same
flags.
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The kernels run.py trains with (see run.py): oneDNN also on AVX2-only CPUs.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tf_simclr import benchmark  # pylint: disable=g-import-not-at-top
from tf_simclr import stages  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS

# ---------------------------------------------------------------- flags
# Model and optimizer flags: same names, defaults and meaning as run.py.
flags.DEFINE_integer('resnet_depth', 50, 'ResNet depth: 18, 34, 50, 101, 152 or 200.')
flags.DEFINE_float('width_multiplier', 1, 'Channel width multiplier.')
flags.DEFINE_float('sk_ratio', 0., 'Selective-kernel ratio; > 0 enables SK and ResNet-D.')
flags.DEFINE_float('se_ratio', 0., 'Squeeze-excitation ratio.')
flags.DEFINE_integer('image_size', 224, 'Input image size; <= 32 uses the CIFAR stem.')
flags.DEFINE_string('proj_head_mode', 'nonlinear', 'none, linear or nonlinear.')
flags.DEFINE_integer('num_proj_layers', 3, 'Layers of the nonlinear projection head.')
flags.DEFINE_integer('proj_out_dim', 128, 'Output width of the projection head.')
flags.DEFINE_integer('ft_proj_selector', 0, 'Projection-head layer the supervised head reads.')
flags.DEFINE_boolean('global_bn', True, 'Synchronise BN statistics across replicas.')
flags.DEFINE_float('batch_norm_decay', 0.9, 'Batch norm moving-average decay.')
flags.DEFINE_string('optimizer', 'lars', 'lars, momentum or adam.')
flags.DEFINE_float('learning_rate', 0.3, 'Base learning rate (scaled by the batch size).')
flags.DEFINE_string('learning_rate_scaling', 'linear', 'linear or sqrt.')
flags.DEFINE_float('momentum', 0.9, 'Momentum.')
flags.DEFINE_float('weight_decay', 1e-6, 'L2 weight decay.')
flags.DEFINE_float('temperature', 0.1, 'Temperature of the contrastive loss.')
flags.DEFINE_bool('lineareval_while_pretraining', True, 'Linear-eval head while pretraining.')
flags.DEFINE_integer('fine_tune_after_block', -1, 'Finetune the layers after this block.')
flags.DEFINE_integer('num_classes', 0, 'Classes of the supervised head (0: from --dataset).')
flags.DEFINE_integer('memory_size', 0, 'Pretraining: SimCLRv2\'s memory of negatives (run.py\'s flag; 0: off). Time it against plain SimCLR with --variant=memory_size=K.')
flags.DEFINE_float('memory_momentum', 0.999, 'Moving-average momentum of the memory network.')
flags.DEFINE_enum('train_mode', 'pretrain', list(stages.STAGES), 'pretrain, finetune or distill (the teacher is a randomly initialised model of the same architecture).')
flags.DEFINE_integer('train_batch_size', 64, 'Global batch size (images; pretraining sees two views of each).')
flags.DEFINE_string('precision', 'float32', 'float32, bfloat16 or float16.')
flags.DEFINE_bool('jit_compile', False, 'Compile the training step with XLA.')
flags.DEFINE_enum('bfloat16_parts', 'measured', ['measured', 'all'], 'With --precision=bfloat16 on a CPU (run.py\'s flag): each backbone part in the precision a probe measures faster, or all in bfloat16.')
flags.DEFINE_integer('steps_per_loop', 10, 'Training steps per tf.function call.')
flags.DEFINE_string('strategy', 'default', 'default, mirrored or multi_worker_mirrored.')
flags.DEFINE_integer('cpu_replicas', 0, 'With --strategy=mirrored and no GPU: split the CPU into this many replicas.')
flags.DEFINE_integer('num_gpus', 0, 'GPUs for --strategy=mirrored (0: all).')
# Input flags.
flags.DEFINE_string('dataset', 'synthetic', 'Dataset of the input pipeline whose images/s goes into the JSON line.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_bool('use_blur', True, 'Gaussian blur in pretraining augmentation.')
flags.DEFINE_enum('blur_placement', 'auto', ['auto', 'input', 'device'], 'Where pretraining blurs (as run.py): input pipeline, training step, or auto (the step on a GPU/TPU). The input table leaves blur out when the step does it.')
flags.DEFINE_float('color_jitter_strength', 1.0, 'Strength of colour jittering.')
flags.DEFINE_bool('cache_dataset', False, 'Cache the decoded dataset in memory.')
# Benchmark flags.
flags.DEFINE_integer('steps', 50, 'Timed training steps (rounded up to whole loops).')
flags.DEFINE_integer('warmup_steps', 10, 'Untimed steps after the first (tracing) call.')
flags.DEFINE_enum('component', 'both', ['train', 'input', 'both', 'stage'], 'What to time: the training step, the input pipeline, both, or stage: whole short in-process runs of pretrain, finetune and distill at the protocol\'s sizes broken into phases (tf_simclr/benchmark/stage_cost.py; --dataset, --resnet_depth, --width_multiplier, --image_size, --precision, --steps and --stage_repeats apply).')
flags.DEFINE_integer('stage_repeats', 3, 'With --component=stage: timed finetune and distill runs each, after the first of the process.')
flags.DEFINE_enum('feed', 'device', ['device', 'dataset'], 'device: one random batch resident on the device, fed to the step directly; dataset: Trainer\'s own loop pulling the same batch from a repeated in-memory tf.data dataset.')
flags.DEFINE_list('input_datasets', ['synthetic', 'fashion_mnist'], 'Datasets of the input table (unavailable ones are reported as such).')
flags.DEFINE_list('input_image_sizes', ['32', '224'], 'Image sizes of the input table (--image_size is always included).')
flags.DEFINE_integer('input_batches', 20, 'Timed batches per input-pipeline measurement.')
flags.DEFINE_integer('input_warmup_batches', 5, 'Untimed batches before timing the input pipeline.')
flags.DEFINE_bool('measure_peak', True, 'Also time a large matrix multiplication in float32 and bfloat16 (the attainable peak of this device) and report the step as a fraction of its precision\'s peak.')
flags.DEFINE_integer('peak_matrix_size', 0, 'Size n of the n x n matmul of --measure_peak (0: 8192 on a GPU/TPU, 2048 on a CPU).')
flags.DEFINE_multi_string('variant', [], 'Also time this variant of the flags in the same process, calls interleaved with the baseline\'s, e.g. --variant="jit_compile=true" --variant="steps_per_loop=1 precision=bfloat16". Reported as ratios to the baseline (the flags as given).')


PROGRAM = 'python -m tf_simclr.benchmark'
# The strategies the benchmark makes (run.py's, but for the TPU's).
STRATEGIES = ('default', 'mirrored', 'multi_worker_mirrored')


def parse_value(name, text):
  """A --variant value, parsed as its flag parses it."""
  return FLAGS[name].parser.parse(text)


def _refuse(message):
  """A bad flag: one line on stderr, exit status 2 (as run.py)."""
  print(f'{PROGRAM}: error: {message}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's parser, with a bad flag reported as one line and exit 2."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    _refuse(error)


def check_flags(argv):
  """The flags, checked before TensorFlow loads; raises benchmark.UsageError
  naming the flag. The run.py flags of the baseline and of every --variant
  go through run.py's own checks (config.Config.validate)."""
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  usage = benchmark.UsageError
  if len(argv) > 1:
    raise usage(f'unexpected arguments: {" ".join(argv[1:])} (flags are '
                'written --name=value)')
  for name in ('steps', 'input_batches'):
    if FLAGS[name].value <= 0:
      raise usage(f'--{name} must be positive, got {FLAGS[name].value}')
  for name in ('warmup_steps', 'stage_repeats', 'input_warmup_batches',
               'peak_matrix_size'):
    if FLAGS[name].value < 0:
      raise usage(f'--{name} must be >= 0, got {FLAGS[name].value}')
  for text in FLAGS.input_image_sizes:
    if not text.strip().isdigit() or int(text) <= 0:
      raise usage('--input_image_sizes takes positive integers, got '
                  f'{text!r}')
  if FLAGS.strategy not in STRATEGIES:
    raise usage(f'--strategy must be one of {", ".join(STRATEGIES)}, got '
                f'{FLAGS.strategy!r}')
  if not FLAGS.dataset:
    raise usage('--dataset must not be empty')
  if FLAGS.component == 'stage' and FLAGS.dataset not in ('synthetic',
                                                           'fashion_mnist'):
    raise usage('--component=stage runs on --dataset=fashion_mnist or '
                f'synthetic, got {FLAGS.dataset!r}')
  variants = [{}]
  for text in FLAGS.variant:
    try:
      variants.append(benchmark.parse_variant(text, parse_value))
    except (flags.Error, ValueError) as error:
      raise usage(f'--variant={text!r}: {error}') from None
  for overrides in variants:
    steps_per_loop = overrides.get('steps_per_loop', FLAGS.steps_per_loop)
    try:
      if steps_per_loop <= 0:  # The timed calls' length (no automatic 0).
        raise config_lib.ConfigError(
            f'--steps_per_loop must be positive, got {steps_per_loop}')
      config = benchmark.make_config(FLAGS, 'unused', 'unused', overrides)
      replicas = config.replicas_from_flags()
      if replicas:
        config.check_replicas(*replicas)
    except config_lib.ConfigError as error:
      where = ' '.join(f'{k}={v}' for k, v in overrides.items())
      raise usage(f'{error}' + (f' (in --variant="{where}")' if where
                                 else '')) from None


def main(argv):
  try:
    check_flags(argv)
  except benchmark.UsageError as error:
    _refuse(error)
  if FLAGS.component == 'stage':
    sys.exit(run_stage_cost())
  try:
    summary = benchmark.run_benchmark(FLAGS, parse_value)
  except benchmark.UsageError as error:
    _refuse(error)
  sys.stdout.flush()
  print(json.dumps(summary, sort_keys=True), flush=True)


def run_stage_cost():
  """--component=stage: stage_cost.py in a process of its own (it defines
  run.py's flags); returns its exit status."""
  import subprocess  # pylint: disable=g-import-not-at-top
  dataset = FLAGS.dataset  # synthetic or fashion_mnist (check_flags).
  command = [sys.executable, '-m', 'tf_simclr.benchmark.stage_cost',
             f'--dataset={dataset}', f'--resnet_depth={FLAGS.resnet_depth}',
             f'--width_multiplier={FLAGS.width_multiplier}',
             f'--image_size={FLAGS.image_size}',
             f'--precision={FLAGS.precision}', f'--steps={FLAGS.steps}',
             f'--repeats={FLAGS.stage_repeats}',
             *([f'--data_dir={FLAGS.data_dir}'] if FLAGS.data_dir else [])]
  return subprocess.call(command)


def run():
  app.run(main, flags_parser=parse_flags)

r"""Pretraining speed of google-research/simclr's tf2 code against run.py.

Runs the reference's tf2/run.py and this project's run.py back to back on this
machine, with the same model and training flags, each in its own process, and
prints both median step times, their ratio and, last, one JSON line.

  python benchmarks/reference_speed.py --reference_dir=~/src/simclr
  python benchmarks/reference_speed.py --reference_dir=~/src/simclr \
    --train_steps=40 --steps_per_loop=10 --repeats=2 --keep_logs=speed_logs

--reference_dir is a checkout of https://github.com/google-research/simclr
(its root or its tf2 folder); none of its code is part of this repository.
Its tf2 folder is copied to a temporary directory, where one line is changed
for TensorFlow >= 2.11 with tf_keras: LARSOptimizer derives from
tf.keras.optimizers.legacy.Optimizer instead of tf.keras.optimizers.Optimizer.
The checkout itself is never modified.

Both programs pretrain (NT-Xent, temperature 0.5, LARS, learning rate 1.0,
weight decay 1e-4, colour jitter 0.5, no blur) a ResNet with the CIFAR stem:

  reference  `benchmarks/_reference_mock_run.py`, i.e. the reference's run.py
             with TF_USE_LEGACY_KERAS=1 on CIFAR-10 mocked by
             tensorflow_datasets.testing.mock_data (random images, the real
             split sizes), --checkpoint_steps=L (its loop length: the
             reference has no --steps_per_loop), always float32;
  ours       run.py --dataset=synthetic (random images in memory)
             --steps_per_loop=L --checkpoint_steps=L --precision=P
             --export=False (the export comes after the timed loops).

Timing: both log one absl line per loop of L steps (reference `Completed: S /
N steps`, ours `step S/N ...`), after the loop's checkpoint is written in the
reference and before it in ours, so every interval between two lines holds L
steps and one checkpoint save in both. ms/step of a loop = time between two
consecutive lines / steps between them; the first loop (tracing) has no line
before it and is left out. Medians over all loops of all repeats; speedup =
reference median / ours median (> 1: run.py is faster). With --repeats=R the
pair runs R times, the order alternating (reference first, then ours first,
...; --order=ours_first starts the other way round), to spread the drift of a
busy machine over both.
"""

import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_RUNNER = os.path.join(REPO, 'benchmarks', '_reference_mock_run.py')
PROG = 'reference_speed.py'

# A private flag registry: importing this module (as the tests do) defines
# nothing in absl's global one, which tf_simclr.benchmark also uses.
FLAGS = flags.FlagValues()
flags.DEFINE_string('reference_dir', None, 'A checkout of google-research/simclr (its root or its tf2 folder). Required.', flag_values=FLAGS)
flags.DEFINE_integer('train_batch_size', 64, 'Global batch size (images; pretraining sees two views of each).', flag_values=FLAGS)
flags.DEFINE_integer('resnet_depth', 18, 'ResNet depth.', flag_values=FLAGS)
flags.DEFINE_integer('width_multiplier', 1, 'ResNet width multiplier (an integer, as the reference\'s flag is).', flag_values=FLAGS)
flags.DEFINE_integer('image_size', 32, 'Training crop size (<= 32: CIFAR stem).', flag_values=FLAGS)
flags.DEFINE_integer('train_steps', 80, 'Training steps of each run.', flag_values=FLAGS)
flags.DEFINE_integer('steps_per_loop', 20, 'Steps per training loop (and per checkpoint) in both programs.', flag_values=FLAGS)
flags.DEFINE_enum('precision', 'float32', ['float32', 'bfloat16', 'float16'], 'run.py\'s --precision (the reference always trains in float32).', flag_values=FLAGS)
flags.DEFINE_enum('order', 'reference_first', ['reference_first', 'ours_first'], 'Which program runs first in the first pair.', flag_values=FLAGS)
flags.DEFINE_integer('repeats', 1, 'Times the pair is run (the order alternating).', flag_values=FLAGS)
flags.DEFINE_integer('mock_examples', 2000, 'Random images in the reference\'s mocked CIFAR-10 (its pipeline cycles over them).', flag_values=FLAGS)
flags.DEFINE_string('keep_logs', None, 'Write the runs\' logs to this directory (by default they are deleted).', flag_values=FLAGS)

NAMES = ('reference', 'ours')
TITLES = {'reference': 'reference (google-research/simclr tf2)',
          'ours': 'ours (run.py)'}

# The reference's LARS class line, and what it becomes.
LARS_FILE = 'lars_optimizer.py'
LARS_BASE = 'class LARSOptimizer(tf.keras.optimizers.Optimizer):'
LARS_LEGACY_BASE = 'class LARSOptimizer(tf.keras.optimizers.legacy.Optimizer):'

# absl's log prefix: `I1129 06:16:31.840157 139808053676928 run.py:650] `.
_ABSL_PREFIX = (r'^[IWEF](?P<month>\d\d)(?P<day>\d\d) (?P<hour>\d\d):'
                r'(?P<minute>\d\d):(?P<second>\d\d(?:\.\d+)?) +\d+ [^\]]*\] ')
REFERENCE_PROGRESS = re.compile(
    _ABSL_PREFIX + r'Completed: (?P<step>\d+) / (?P<total>\d+) steps')
OURS_PROGRESS = re.compile(_ABSL_PREFIX + r'step (?P<step>\d+)/(?P<total>\d+)\b')
PROGRESS = {'reference': REFERENCE_PROGRESS, 'ours': OURS_PROGRESS}

# Prints the device (as tf_simclr.benchmark names it) and TensorFlow's version
# from a child process, so that this one never loads TensorFlow.
_PROBE = """
import json
import tensorflow as tf
from tf_simclr import benchmark
print(json.dumps({'device': benchmark.device_description(),
                  'tensorflow': tf.__version__}))
"""


class BenchmarkError(Exception):
  """A failure reported as one line (after `details`, if any)."""

  def __init__(self, message, status=2, details=None):
    super().__init__(message)
    self.status = status
    self.details = details or []


# ---------------------------------------------------------------- reference
def find_tf2_dir(path):
  """The reference's tf2 folder: `path`/tf2 or `path` itself."""
  if not path:
    raise BenchmarkError('--reference_dir is required: a checkout of '
                         'google-research/simclr (its root or its tf2 folder)')
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise BenchmarkError(f'--reference_dir={path}: no such directory')
  for candidate in (os.path.join(path, 'tf2'), path):
    if all(os.path.isfile(os.path.join(candidate, name))
           for name in ('run.py', LARS_FILE)):
      return candidate
  raise BenchmarkError(f'--reference_dir={path}: neither it nor its tf2 '
                       f'folder holds run.py and {LARS_FILE} (expected a '
                       'checkout of google-research/simclr)')


def patch_lars(tf2_dir):
  """Makes LARSOptimizer derive from tf.keras.optimizers.legacy.Optimizer.

  Returns True when the file was changed, False when it already was.
  """
  path = os.path.join(tf2_dir, LARS_FILE)
  with open(path) as f:
    text = f.read()
  if LARS_BASE in text:
    with open(path, 'w') as f:
      f.write(text.replace(LARS_BASE, LARS_LEGACY_BASE, 1))
    return True
  if LARS_LEGACY_BASE in text:
    return False
  raise BenchmarkError(f'{LARS_FILE} of the reference has no line '
                       f'{LARS_BASE!r} to patch: this version of '
                       'google-research/simclr is not supported')


def copy_reference(tf2_dir, work_dir):
  """Copies tf2_dir to work_dir/tf2 and patches the copy; returns its path."""
  copy = os.path.join(work_dir, 'tf2')
  shutil.copytree(tf2_dir, copy,
                  ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
  patch_lars(copy)
  return copy


def git_commit(path):
  """HEAD of the git checkout whose top level is `path`, else None."""
  try:
    completed = subprocess.run(
        ['git', '-C', path, 'rev-parse', '--show-toplevel', 'HEAD'],
        capture_output=True, text=True, timeout=30, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  lines = completed.stdout.split()
  if completed.returncode or len(lines) != 2:
    return None
  if os.path.realpath(lines[0]) != os.path.realpath(path):
    return None  # `path` lies inside some other repository.
  return lines[1]


def has_uncommitted_changes(path, paths):
  """Whether tracked `paths` of the checkout at `path` differ from HEAD
  (None when git cannot tell)."""
  try:
    completed = subprocess.run(
        ['git', '-C', path, 'status', '--porcelain', '--untracked-files=no',
         '--'] + list(paths), capture_output=True, text=True, timeout=30,
        check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return bool(completed.stdout.strip()) if completed.returncode == 0 else None


# ---------------------------------------------------------------- commands
def shared_flags(config):
  """Flags given to both programs."""
  return [
      '--train_mode=pretrain', f'--train_batch_size={config["train_batch_size"]}',
      f'--train_steps={config["train_steps"]}', '--learning_rate=1.0',
      '--weight_decay=1e-4', '--temperature=0.5', f'--image_size={config["image_size"]}',
      '--eval_split=test', f'--resnet_depth={config["resnet_depth"]}',
      f'--width_multiplier={config["width_multiplier"]}', '--use_blur=False',
      '--color_jitter_strength=0.5', '--use_tpu=False',
      f'--checkpoint_steps={config["steps_per_loop"]}', '--mode=train',
  ]


def reference_flags(config, model_dir):
  return shared_flags(config) + ['--dataset=cifar10', f'--model_dir={model_dir}']


def ours_flags(config, model_dir):
  return shared_flags(config) + [
      '--dataset=synthetic', f'--steps_per_loop={config["steps_per_loop"]}',
      f'--precision={config["precision"]}', '--export=False',
      f'--model_dir={model_dir}']


# ---------------------------------------------------------------- logs
def _seconds_between(start, end):
  """Seconds from absl time `start` to `end`, each (month, day, seconds of
  the day); absl writes no year, so `end` is taken to be less than a year
  later (a year's turn and February 29 are handled)."""
  (month0, day0, seconds0), (month1, day1, seconds1) = start, end
  wrapped = (month1, day1) < (month0, day0)
  if (month1, day1) == (2, 29):
    year1 = 2000
    year0 = year1 - wrapped
  else:
    year0 = 2000 if (month0, day0) == (2, 29) else 2001
    year1 = year0 + wrapped
  days = (datetime.date(year1, month1, day1) -
          datetime.date(year0, month0, day0)).days
  return days * 86400 + seconds1 - seconds0


def parse_progress(lines, pattern):
  """[(step, total steps, seconds since the first match)] of the lines that
  match `pattern` (REFERENCE_PROGRESS or OURS_PROGRESS)."""
  points = []
  previous = None
  elapsed = 0.
  for line in lines:
    match = pattern.match(line)
    if not match:
      continue
    stamp = (int(match['month']), int(match['day']),
             int(match['hour']) * 3600 + int(match['minute']) * 60 +
             float(match['second']))
    if previous is not None:
      elapsed += _seconds_between(previous, stamp)
    previous = stamp
    points.append((int(match['step']), int(match['total']), elapsed))
  return points


def loop_ms_per_step(points):
  """ms/step of every loop between two consecutive progress points."""
  return [1000. * (t1 - t0) / (s1 - s0)
          for (s0, _, t0), (s1, _, t1) in zip(points, points[1:]) if s1 > s0]


def read_log(name, log_path):
  """ms/step of each timed loop of one run's log; at least one loop."""
  with open(log_path, errors='replace') as f:
    points = parse_progress(f, PROGRESS[name])
  if len(points) < 2:
    raise BenchmarkError(
        f'the {name} run logged {len(points)} progress line(s), need at '
        f'least 2 to time a loop (more --train_steps?); log: {log_path}')
  return loop_ms_per_step(points)


def tail(path, lines=20):
  try:
    with open(path, errors='replace') as f:
      return [line.rstrip('\n')[:300] for line in f.readlines()[-lines:]]
  except OSError:
    return []


# ---------------------------------------------------------------- runs
def run_logged(command, log_path, env=None, cwd=None):
  """Runs command with stdout and stderr into log_path; (status, seconds)."""
  started = time.monotonic()
  with open(log_path, 'w') as log:
    status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT,
                             env=env, cwd=cwd)
  return status, time.monotonic() - started


def run_order(first, repeats):
  """[(repeat, name)] for `repeats` pairs, alternating which goes first."""
  pair = (first, NAMES[1 - NAMES.index(first)])
  return [(repeat, name) for repeat in range(repeats)
          for name in (pair if repeat % 2 == 0 else pair[::-1])]


def probe_environment():
  """{'device': ..., 'tensorflow': ...} from a child process (None values
  when it fails)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  try:
    completed = subprocess.run([sys.executable, '-c', _PROBE], cwd=REPO,
                               env=env, capture_output=True, text=True,
                               timeout=600, check=False)
    return json.loads(completed.stdout.strip().splitlines()[-1])
  except (OSError, subprocess.SubprocessError, ValueError, IndexError):
    return {'device': None, 'tensorflow': None}


def _keep_failed_log(log_path, name, repeat, kept):
  """A path for a failed run's log that outlives the temporary directory."""
  if kept:
    return log_path
  fd, path = tempfile.mkstemp(prefix=f'reference_speed_{name}{repeat + 1}_',
                              suffix='.log')
  os.close(fd)
  shutil.copyfile(log_path, path)
  return path


def benchmark(config, reference_tf2, echo=print):
  """Runs the pairs; returns {name: [(repeat, [ms/step per loop], wall s)]}."""
  results = {name: [] for name in NAMES}
  with tempfile.TemporaryDirectory(prefix='reference_speed_') as work_dir:
    tf2_copy = copy_reference(reference_tf2, work_dir)
    meta_dir = os.path.join(work_dir, 'tfds_meta')
    log_dir = config['keep_logs'] or os.path.join(work_dir, 'logs')
    os.makedirs(log_dir, exist_ok=True)
    order = run_order(config['order'].split('_')[0], config['repeats'])
    for index, (repeat, name) in enumerate(order):
      model_dir = os.path.join(work_dir, f'model_{name}_{repeat + 1}')
      log_path = os.path.join(log_dir, f'{name}_{repeat + 1}.log')
      if name == 'reference':
        command = [sys.executable, MOCK_RUNNER, tf2_copy, meta_dir,
                   str(config['mock_examples'])]
        command += reference_flags(config, model_dir)
        env, cwd = dict(os.environ, TF_USE_LEGACY_KERAS='1'), tf2_copy
      else:
        command = [sys.executable, os.path.join(REPO, 'run.py')]
        command += ours_flags(config, model_dir)
        env, cwd = None, REPO
      echo(f'[{index + 1}/{len(order)}] {TITLES[name]}, repeat '
           f'{repeat + 1}: running', flush=True)
      status, seconds = run_logged(command, log_path, env=env, cwd=cwd)
      if status != 0:
        kept = _keep_failed_log(log_path, name, repeat, config['keep_logs'])
        raise BenchmarkError(
            f'the {name} run (repeat {repeat + 1}) failed with exit status '
            f'{status} after {seconds:.0f} s; log: {kept}', status=1,
            details=[f'  | {line}' for line in tail(log_path)])
      try:
        loops = read_log(name, log_path)
      except BenchmarkError as error:
        kept = _keep_failed_log(log_path, name, repeat, config['keep_logs'])
        raise BenchmarkError(str(error).replace(log_path, kept)) from None
      shutil.rmtree(model_dir, ignore_errors=True)
      results[name].append((repeat, loops, seconds))
      echo(f'[{index + 1}/{len(order)}] {TITLES[name]}, repeat {repeat + 1}: '
           f'{statistics.median(loops):.1f} ms/step median of {len(loops)} '
           f'loops ({seconds:.0f} s)', flush=True)
  return results


# ---------------------------------------------------------------- report
def summarize(results, batch_size):
  """{name: {'ms_per_step': all loops, 'median', 'min', 'max',
  'images_per_sec'}} and the speedup (reference median / ours median)."""
  summary = {}
  for name in NAMES:
    loops = [ms for _, run_loops, _ in results[name] for ms in run_loops]
    median = statistics.median(loops)
    summary[name] = {'ms_per_step': loops, 'median': median,
                     'min': min(loops), 'max': max(loops),
                     'images_per_sec': 1000. * batch_size / median}
  speedup = summary['reference']['median'] / summary['ours']['median']
  return summary, speedup


def format_table(summary, speedup):
  rows = [f'{"":40s} {"loops":>5s} {"median ms/step":>14s} {"min":>9s} '
          f'{"max":>9s} {"images/s":>9s}']
  for name in NAMES:
    s = summary[name]
    rows.append(f'{TITLES[name]:40s} {len(s["ms_per_step"]):5d} '
                f'{s["median"]:14.1f} {s["min"]:9.1f} {s["max"]:9.1f} '
                f'{s["images_per_sec"]:9.1f}')
  faster = 'run.py faster' if speedup > 1 else 'reference faster'
  rows.append(f'speedup (reference / ours): {speedup:.3f} ({faster})')
  return '\n'.join(rows)


def main(argv=None):
  argv = sys.argv if argv is None else argv
  if any(arg in ('-h', '--help', '-help', '--helpshort') for arg in argv[1:]):
    print(__doc__)
    print(FLAGS.get_help(include_special_flags=False))
    return 0
  try:
    rest = FLAGS(argv)
  except flags.Error as error:
    print(f'{PROG}: error: {error}', file=sys.stderr)
    return 2
  try:
    if len(rest) > 1:
      raise BenchmarkError(f'unexpected arguments: {" ".join(rest[1:])}')
    if FLAGS.steps_per_loop < 1 or FLAGS.repeats < 1 or FLAGS.mock_examples < 1:
      raise BenchmarkError('--steps_per_loop, --repeats and --mock_examples '
                           'must be at least 1')
    if FLAGS.train_steps < 2 * FLAGS.steps_per_loop:
      raise BenchmarkError(
          f'--train_steps={FLAGS.train_steps} gives fewer than two loops of '
          f'--steps_per_loop={FLAGS.steps_per_loop}: nothing to time')
    tf2_dir = find_tf2_dir(FLAGS.reference_dir)
    reference_root = (os.path.dirname(tf2_dir)
                      if os.path.basename(tf2_dir) == 'tf2' else tf2_dir)
    config = {name: FLAGS[name].value for name in (
        'train_batch_size', 'resnet_depth', 'width_multiplier', 'image_size',
        'train_steps', 'steps_per_loop', 'precision', 'order', 'repeats',
        'mock_examples', 'keep_logs')}
    if config['keep_logs']:
      config['keep_logs'] = os.path.abspath(config['keep_logs'])
    environment = probe_environment()
    results = benchmark(config, tf2_dir)
  except BenchmarkError as error:
    for line in error.details:
      print(line, file=sys.stderr)
    print(f'{PROG}: error: {error}', file=sys.stderr)
    return error.status
  summary, speedup = summarize(results, config['train_batch_size'])
  print(format_table(summary, speedup))
  config.pop('keep_logs')
  print(json.dumps({
      'reference_ms_per_step_median': summary['reference']['median'],
      'ours_ms_per_step_median': summary['ours']['median'],
      'speedup': speedup,
      'reference_images_per_sec': summary['reference']['images_per_sec'],
      'ours_images_per_sec': summary['ours']['images_per_sec'],
      'reference_ms_per_step': summary['reference']['ms_per_step'],
      'ours_ms_per_step': summary['ours']['ms_per_step'],
      'runs': [{'name': name, 'repeat': repeat + 1, 'ms_per_step': loops,
                'wall_s': seconds}
               for name in NAMES for repeat, loops, seconds in results[name]],
      'config': config,
      'reference_flags': reference_flags(config, 'MODEL_DIR'),
      'ours_flags': ours_flags(config, 'MODEL_DIR'),
      'device': environment.get('device'),
      'tensorflow': environment.get('tensorflow'),
      'reference_dir': reference_root,
      'reference_commit': git_commit(reference_root),
      'ours_commit': git_commit(REPO),
      'ours_uncommitted_changes': has_uncommitted_changes(
          REPO, ['run.py', 'tf_simclr']),
  }))
  return 0


if __name__ == '__main__':
  sys.exit(main())

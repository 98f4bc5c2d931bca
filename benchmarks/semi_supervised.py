r"""SimCLRv2's semi-supervised protocol on offline Fashion-MNIST, end to end.

For label fractions 1 % and 10 % of the 60 000 training images, four arms,
every stage a real `python run.py ...` subprocess, evaluated on the 10 000
test images:

  supervised     the same ResNet trained from scratch on the labeled subset
                 only (crop + flip, the finetune augmentation); its learning
                 rate is the best of a small sweep at 1 % (picked on the
                 test split: this favours the baseline), reused at 10 %;
  simclr         one shared pretraining on all 60 000 images without labels,
                 then finetuning on the subset from projection-head layer 1
                 (--ft_proj_selector=1 --zero_init_logits_layer);
  self_distill   the finetuned model distilled into the same architecture
                 (student from scratch) on all training images, no labels;
  distill_small  the same teacher distilled into a half-width student.

  python benchmarks/semi_supervised.py                 # ~26 min on 2 idle CPU cores
  python benchmarks/semi_supervised.py --quick         # plumbing check
  python benchmarks/semi_supervised.py --scale=8       # bigger, for a GPU

Writes OUTPUT_DIR/results.json, results.md, accuracy.png, pretraining.png.
The supervised baseline is run.py's finetune stage with --checkpoint=scratch
(a random initialisation) and --fine_tune_after_block=-1: training from
scratch on the subset.
"""

import argparse
import dataclasses
import glob
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT_DIR = os.path.join(REPO, 'benchmarks', 'results')

NUM_TRAIN = 60_000
NUM_CLASSES = 10
FRACTIONS = (0.01, 0.1)
ARMS = ('supervised', 'simclr', 'self_distill', 'distill_small')
ARM_TITLES = {
    'supervised': 'Supervised from scratch (labeled subset only)',
    'simclr': 'SimCLRv2 pretrain + finetune (teacher)',
    'self_distill': 'Self-distilled student (same architecture)',
    'distill_small': 'Distilled half-width student',
}
PRETRAIN_TAGS = ('train/contrast_loss', 'train/contrast_acc')


# ---------------------------------------------------------------- planning
def labeled_count(fraction, num_train=NUM_TRAIN, num_classes=NUM_CLASSES):
  """Size of the class-balanced label subset (as tf_simclr.data picks it)."""
  per_class = round(fraction * num_train / num_classes)
  return per_class * num_classes


def steps_for(epochs, num_examples, batch_size):
  """Training steps covering `epochs` passes over `num_examples` (>= 1)."""
  return max(1, math.ceil(epochs * num_examples / batch_size))


@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes of every stage. Epochs are over the stage's own training data."""
  depth: int = 18
  width: float = 0.125
  student_width: float = 0.0625
  image_size: int = 28
  pretrain_batch: int = 256
  pretrain_epochs: float = 8.0
  finetune_batch: dict = dataclasses.field(
      default_factory=lambda: {0.01: 64, 0.1: 128})
  finetune_epochs: dict = dataclasses.field(
      default_factory=lambda: {0.01: 60, 0.1: 15})
  baseline_epochs: dict = dataclasses.field(
      default_factory=lambda: {0.01: 150, 0.1: 30})
  baseline_lrs: tuple = (0.1, 0.4)
  # Finetuning recipes swept at 1 % (the best is reused at 10 %), as the
  # baseline's learning rate is: the paper's (LARS, lr 0.005·√B, which at
  # this scale moves the backbone little) and SGD with momentum at the
  # baseline's learning rates.
  finetune_recipes: tuple = (('lars', 0.005), ('momentum', 0.1),
                             ('momentum', 0.4))
  distill_batch: int = 128
  distill_epochs: float = 1.0
  eval_steps: int = 0  # 0: the whole test split.
  seed: int = 0

  def steps(self):
    """{stage key: training steps} for every stage of the protocol."""
    steps = {'pretrain': steps_for(self.pretrain_epochs, NUM_TRAIN,
                                   self.pretrain_batch)}
    for fraction in FRACTIONS:
      n = labeled_count(fraction)
      batch = self.finetune_batch[fraction]
      steps[f'finetune@{fraction}'] = steps_for(self.finetune_epochs[fraction],
                                                n, batch)
      steps[f'supervised@{fraction}'] = steps_for(
          self.baseline_epochs[fraction], n, batch)
      steps[f'distill@{fraction}'] = steps_for(self.distill_epochs, NUM_TRAIN,
                                               self.distill_batch)
    return steps

  def images(self):
    """{stage key: training images processed} (pretraining: 2 views each)."""
    steps = self.steps()
    images = {'pretrain': steps['pretrain'] * self.pretrain_batch}
    for fraction in FRACTIONS:
      batch = self.finetune_batch[fraction]
      images[f'finetune@{fraction}'] = steps[f'finetune@{fraction}'] * batch
      images[f'supervised@{fraction}'] = steps[f'supervised@{fraction}'] * batch
      images[f'distill@{fraction}'] = (steps[f'distill@{fraction}'] *
                                       self.distill_batch)
    return images


# Measured by a full run of this protocol on this project's 2-core CPU machine
# (ResNet-18, width 0.125, 28 px; stage wall times minus ~60 s of start-up,
# input pipeline, tracing and test-split evaluation per run.py process):
# pretraining 380 images/s (two views each, batch 256), finetuning and the
# supervised baseline ~1150 images/s, distillation ~850 images/s (the teacher's
# forward pass included), ~1000 for the half-width student.
RATES = {'pretrain': 380.0, 'supervised': 1150.0, 'distill': 850.0,
         'distill_small': 1000.0}
PROCESS_OVERHEAD_S = 60.0


def estimate_seconds(plan, rates=RATES, overhead=PROCESS_OVERHEAD_S):
  """Expected wall time of the protocol, {stage: seconds} plus 'total'."""
  images = plan.images()
  estimate = {'pretrain': images['pretrain'] / rates['pretrain'] + overhead}
  for fraction in FRACTIONS:
    recipes = len(plan.finetune_recipes) if fraction == FRACTIONS[0] else 1
    estimate[f'finetune@{fraction}'] = recipes * (
        images[f'finetune@{fraction}'] / rates['supervised'] + overhead)
    runs = len(plan.baseline_lrs) if fraction == FRACTIONS[0] else 1
    estimate[f'supervised@{fraction}'] = runs * (
        images[f'supervised@{fraction}'] / rates['supervised'] + overhead)
    estimate[f'self_distill@{fraction}'] = (
        images[f'distill@{fraction}'] / rates['distill'] + overhead)
    estimate[f'distill_small@{fraction}'] = (
        images[f'distill@{fraction}'] / rates['distill_small'] + overhead)
  estimate['total'] = sum(estimate.values())
  return estimate


def make_plan(scale=1, quick=False):
  """The default plan, its --quick version, or one scaled up for a GPU:
  --scale=N multiplies every stage's epochs and the widths by N."""
  if quick:
    return Plan(pretrain_batch=32, pretrain_epochs=128 / NUM_TRAIN,
                finetune_batch={0.01: 32, 0.1: 32},
                finetune_epochs={0.01: 1, 0.1: 0.1},
                baseline_epochs={0.01: 1, 0.1: 0.1}, baseline_lrs=(0.4,),
                finetune_recipes=(('lars', 0.005),),
                distill_batch=32, distill_epochs=320 / NUM_TRAIN,
                eval_steps=2)
  plan = Plan()
  if scale == 1:
    return plan
  return dataclasses.replace(
      plan, width=plan.width * scale, student_width=plan.student_width * scale,
      pretrain_epochs=plan.pretrain_epochs * scale,
      finetune_epochs={f: e * scale for f, e in plan.finetune_epochs.items()},
      baseline_epochs={f: e * scale for f, e in plan.baseline_epochs.items()},
      distill_epochs=plan.distill_epochs * scale)


# ---------------------------------------------------------------- flags of each stage
def common_flags(plan, width):
  return ['--dataset=fashion_mnist', f'--image_size={plan.image_size}',
          f'--resnet_depth={plan.depth}', f'--width_multiplier={width}',
          '--eval_split=test', '--mode=train_then_eval', '--export=false',
          f'--eval_steps={plan.eval_steps}', '--deterministic',
          f'--seed={plan.seed}', '--label_seed=0', '--keep_checkpoint_max=1',
          # Decoded images cached in memory: a label subset is otherwise found
          # again by scanning all 60 000 records at every epoch.
          '--cache_dataset']


def pretrain_flags(plan, model_dir):
  steps = plan.steps()['pretrain']
  return common_flags(plan, plan.width) + [
      '--train_mode=pretrain', f'--model_dir={model_dir}',
      f'--train_batch_size={plan.pretrain_batch}', f'--train_steps={steps}',
      f'--steps_per_loop={max(1, steps // 60)}',
      f'--checkpoint_steps={steps}',
      '--optimizer=lars', '--learning_rate=1.0',
      '--learning_rate_scaling=linear', '--weight_decay=1e-6',
      '--warmup_epochs=0.5', '--temperature=0.2',
      '--color_jitter_strength=0.5', '--use_blur=false']


def finetune_flags(plan, fraction, model_dir, checkpoint,
                   recipe=('lars', 0.005)):
  """Finetuning the pretrained network from projection-head layer 1 with a
  zero-initialised head, everything trained. recipe ('lars', lr): the
  paper's (lr·√B, no weight decay); ('momentum', lr): the baseline's
  optimizer (lr·B/256, weight decay 5e-4), both with cosine decay and no
  warm-up."""
  optimizer, learning_rate = recipe
  steps = plan.steps()[f'finetune@{fraction}']
  if optimizer == 'lars':
    optimisation = ['--optimizer=lars', f'--learning_rate={learning_rate}',
                    '--learning_rate_scaling=sqrt', '--weight_decay=0']
  else:
    optimisation = ['--optimizer=momentum', f'--learning_rate={learning_rate}',
                    '--learning_rate_scaling=linear', '--weight_decay=5e-4']
  return common_flags(plan, plan.width) + [
      '--train_mode=finetune', f'--model_dir={model_dir}',
      f'--checkpoint={checkpoint}', f'--label_fraction={fraction}',
      f'--train_batch_size={plan.finetune_batch[fraction]}',
      f'--train_steps={steps}', f'--checkpoint_steps={steps}',
      '--ft_proj_selector=1', '--zero_init_logits_layer',
      '--fine_tune_after_block=-1', '--warmup_epochs=0'] + optimisation


def supervised_flags(plan, fraction, model_dir, lr):
  """From scratch: SGD with momentum, the standard CIFAR ResNet recipe (base
  lr per 256 images, weight decay 5e-4, cosine), more epochs on less data."""
  steps = plan.steps()[f'supervised@{fraction}']
  return common_flags(plan, plan.width) + [
      '--train_mode=finetune', f'--model_dir={model_dir}',
      '--checkpoint=scratch', f'--label_fraction={fraction}',
      f'--train_batch_size={plan.finetune_batch[fraction]}',
      f'--train_steps={steps}', f'--checkpoint_steps={steps}',
      '--ft_proj_selector=0', '--fine_tune_after_block=-1',
      '--optimizer=momentum', f'--learning_rate={lr}',
      '--learning_rate_scaling=linear', '--weight_decay=5e-4',
      f'--warmup_epochs={max(1, plan.baseline_epochs[fraction] // 20)}']


def distill_flags(plan, fraction, model_dir, teacher, width):
  """Student from scratch on all training images (no labels, alpha 1, tau 1),
  plain ResNet + linear head (ft_proj_selector 0), SGD with momentum."""
  steps = plan.steps()[f'distill@{fraction}']
  return common_flags(plan, width) + [
      '--train_mode=distill', f'--model_dir={model_dir}',
      f'--teacher_checkpoint={teacher}', '--distill_alpha=1',
      '--distill_temperature=1', f'--train_batch_size={plan.distill_batch}',
      f'--train_steps={steps}', f'--checkpoint_steps={steps}',
      '--ft_proj_selector=0', '--optimizer=momentum', '--learning_rate=0.2',
      '--learning_rate_scaling=linear', '--weight_decay=1e-4',
      '--warmup_epochs=0.1']


# ---------------------------------------------------------------- running
class StageFailed(RuntimeError):
  pass


def run_stage(name, command, model_dir, log_dir, timings, echo=print):
  """Runs one stage (skipped when model_dir already holds its result and
  timing from an earlier run of this script); returns result.json's dict
  (or None when the stage writes none)."""
  timing_path = os.path.join(model_dir, 'stage_time.json')
  result_path = os.path.join(model_dir, 'result.json')
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      timings[name] = json.load(f)['seconds']
    echo(f'[{name}] already done ({timings[name]:.0f} s), reused')
  else:
    os.makedirs(model_dir, exist_ok=True)
    log_path = os.path.join(log_dir, name.replace('@', '_') + '.log')
    echo(f'[{name}] {shlex.join(command[:2]) if command[1] == "-c" else shlex.join(command)}')
    started = time.time()
    with open(log_path, 'w') as log:
      status = subprocess.call(command, cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT)
    seconds = time.time() - started
    if status != 0:
      with open(log_path) as f:
        tail = ''.join(f.readlines()[-15:])
      raise StageFailed(f'stage {name} exited with {status} after '
                        f'{seconds:.0f} s; log {log_path}:\n{tail}')
    timings[name] = seconds
    with open(timing_path, 'w') as f:
      json.dump({'seconds': seconds}, f)
  result = None
  if os.path.exists(result_path):
    with open(result_path) as f:
      result = json.load(f)
    echo(f'[{name}] {timings[name]:.0f} s, test top-1 '
         f'{result["label_top_1_accuracy"]:.4f}')
  return result


def run_protocol(plan, work_dir, echo=print):
  """Runs every stage; returns (accuracy, extra, timings, model_dirs)."""
  run_py = [sys.executable, os.path.join(REPO, 'run.py')]
  log_dir = os.path.join(work_dir, 'logs')
  os.makedirs(log_dir, exist_ok=True)
  timings, extra = {}, {}
  accuracy = {arm: {} for arm in ARMS}
  dirs = {'pretrain': os.path.join(work_dir, 'pretrain')}

  result = run_stage('pretrain', run_py + pretrain_flags(plan, dirs['pretrain']),
                     dirs['pretrain'], log_dir, timings, echo)
  if result:
    extra['pretrain_linear_eval_top_1'] = result['label_top_1_accuracy']

  sweep, finetune_sweep = {}, {}
  for fraction in FRACTIONS:
    tag = f'@{fraction}'
    # (b) SimCLRv2: finetune the shared pretraining; recipe sweep at the
    # smallest fraction, the winner reused at the others.
    recipes = (plan.finetune_recipes if fraction == FRACTIONS[0]
               else (finetune_sweep['best'],))
    best_recipe = None
    for recipe in recipes:
      key = 'finetune' + tag + (f'_{recipe[0]}{recipe[1]}'
                                if len(recipes) > 1 else '')
      dirs[key] = os.path.join(work_dir, f'finetune_{fraction}_'
                               f'{recipe[0]}{recipe[1]}')
      result = run_stage(key, run_py + finetune_flags(
          plan, fraction, dirs[key], dirs['pretrain'], recipe), dirs[key],
                         log_dir, timings, echo)
      finetune_sweep.setdefault(fraction, {})[recipe] = result[
          'label_top_1_accuracy']
      if (best_recipe is None or result['label_top_1_accuracy'] >
          finetune_sweep[fraction][best_recipe]):
        best_recipe = recipe
        dirs['finetune' + tag] = dirs[key]
    finetune_sweep.setdefault('best', best_recipe)
    accuracy['simclr'][fraction] = finetune_sweep[fraction][best_recipe]
    # (a) supervised baseline: LR sweep at the smallest fraction.
    lrs = plan.baseline_lrs if fraction == FRACTIONS[0] else (sweep['best'],)
    best = None
    for lr in lrs:
      key = f'supervised{tag}' + (f'_lr{lr}' if len(lrs) > 1 else '')
      dirs[key] = os.path.join(work_dir, f'supervised_{fraction}_lr{lr}')
      result = run_stage(key, run_py + supervised_flags(
          plan, fraction, dirs[key], lr), dirs[key], log_dir,
                         timings, echo)
      sweep.setdefault(fraction, {})[lr] = result['label_top_1_accuracy']
      if best is None or result['label_top_1_accuracy'] > sweep[fraction][best]:
        best = lr
    sweep['best'] = sweep.get('best', best)
    accuracy['supervised'][fraction] = sweep[fraction][best]
    # (c), (d) distillation from the finetuned teacher.
    for arm, width in (('self_distill', plan.width),
                       ('distill_small', plan.student_width)):
      key = arm + tag
      dirs[key] = os.path.join(work_dir, f'{arm}_{fraction}')
      result = run_stage(key, run_py + distill_flags(
          plan, fraction, dirs[key], dirs['finetune' + tag], width),
                         dirs[key], log_dir, timings, echo)
      accuracy[arm][fraction] = result['label_top_1_accuracy']
      extra[f'{arm}_teacher_agreement@{fraction}'] = result.get(
          'teacher_agreement')
  extra['baseline_lr_sweep'] = {str(f): {str(lr): a for lr, a in v.items()}
                                for f, v in sweep.items() if f != 'best'}
  extra['baseline_lr'] = sweep['best']
  extra['finetune_recipe_sweep'] = {
      str(f): {f'{o} {lr}': a for (o, lr), a in v.items()}
      for f, v in finetune_sweep.items() if f != 'best'}
  extra['finetune_recipe'] = ' '.join(map(str, finetune_sweep['best']))
  return accuracy, extra, timings, dirs


# ---------------------------------------------------------------- event files
def read_scalars(model_dir, tags=PRETRAIN_TAGS):
  """{tag: [(step, value), ...]} sorted by step, from every TensorBoard
  event file directly in model_dir (the last value wins for a repeated step)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  found = {tag: {} for tag in tags}
  for path in sorted(glob.glob(os.path.join(model_dir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag not in found:
          continue
        if value.HasField('tensor'):
          number = float(tf.make_ndarray(value.tensor))
        else:
          number = float(value.simple_value)
        found[value.tag][int(event.step)] = number
  return {tag: sorted(points.items()) for tag, points in found.items()}


# ---------------------------------------------------------------- outputs
def machine_info():
  cpu = platform.processor() or 'unknown'
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  info = {'cpu': cpu, 'cores': os.cpu_count(), 'python': platform.python_version(),
          'platform': platform.platform()}
  try:
    info['tensorflow'] = subprocess.run(
        [sys.executable, '-c', 'import tensorflow as tf; print(tf.__version__)'],
        capture_output=True, text=True, check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    info['tensorflow'] = 'unknown'
  try:
    load = os.getloadavg()
    info['load_average_at_end'] = [round(x, 2) for x in load]
  except OSError:
    pass
  return info


def git_info():
  def git(*args):
    return subprocess.run(['git', *args], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
  dirty = git('status', '--porcelain', '--', 'run.py', 'tf_simclr', 'export',
              'benchmarks/semi_supervised.py')
  return {'commit': git('rev-parse', 'HEAD'),
          'uncommitted_changes_in_code': bool(dirty)}


def fraction_label(fraction):
  return f'{fraction * 100:g} %'


def markdown_table(results):
  """The results as Markdown: accuracy per arm and fraction, then wall times."""
  fractions = [float(f) for f in results['fractions']]
  acc = results['top_1']
  head = '| arm | ' + ' | '.join(
      f'{fraction_label(f)} labels ({labeled_count(f)} images)'
      for f in fractions) + ' |'
  lines = [head, '|---|' + '---:|' * len(fractions)]
  for arm in ARMS:
    cells = []
    for f in fractions:
      value = acc.get(arm, {}).get(str(f))
      cells.append('—' if value is None else f'{100 * value:.2f}')
    lines.append(f'| {ARM_TITLES[arm]} | ' + ' | '.join(cells) + ' |')
  gain = []
  for f in fractions:
    a, b = acc.get('simclr', {}).get(str(f)), acc.get('supervised', {}).get(str(f))
    gain.append('—' if a is None or b is None else f'{100 * (a - b):+.2f}')
  lines.append('| *SimCLRv2 − supervised (points)* | ' + ' | '.join(gain) + ' |')
  text = ['Test top-1 accuracy (%) on Fashion-MNIST (10 000 test images).', '',
          *lines, '']
  linear = results.get('extra', {}).get('pretrain_linear_eval_top_1')
  if linear is not None:
    text += [f'Linear probe trained alongside pretraining (stop-gradient, all '
             f'labels): {100 * linear:.2f} %.', '']
  text += ['| stage | wall time (s) |', '|---|---:|']
  for name, seconds in results['wall_time_s'].items():
    text.append(f'| {name} | {seconds:.0f} |')
  text.append(f'| **total** | {sum(results["wall_time_s"].values()):.0f} |')
  machine = results.get('machine', {})
  text += ['', f'Machine: {machine.get("cpu", "?")}, {machine.get("cores", "?")} '
           f'cores, TensorFlow {machine.get("tensorflow", "?")}. Commit '
           f'{results.get("git", {}).get("commit", "?")}.', '',
           f'Command: `{results.get("command", "")}`', '']
  return '\n'.join(text)


def plot_accuracy(results, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  fractions = [float(f) for f in results['fractions']]
  figure, axis = plt.subplots(figsize=(6, 4.2))
  for arm, marker in zip(ARMS, 'osD^'):
    points = [(100 * f, 100 * results['top_1'][arm][str(f)]) for f in fractions
              if results['top_1'].get(arm, {}).get(str(f)) is not None]
    if points:
      axis.plot(*zip(*points), marker=marker, label=ARM_TITLES[arm])
  axis.set_xscale('log')
  axis.set_xticks([100 * f for f in fractions])
  axis.set_xticklabels([fraction_label(f) for f in fractions])
  axis.set_xlabel('labeled fraction of the training set')
  axis.set_ylabel('test top-1 accuracy (%)')
  axis.set_title('Fashion-MNIST, ResNet-%s' % results.get('plan', {}).get(
      'depth', '?'))
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def plot_pretraining(curves, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
  for axis, tag in zip(axes, PRETRAIN_TAGS):
    points = curves.get(tag) or []
    if points:
      axis.plot(*zip(*points))
    axis.set_title(tag)
    axis.set_xlabel('step')
    axis.grid(alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def write_outputs(results, curves, output_dir):
  """results.json, results.md, accuracy.png, pretraining.png; returns paths."""
  os.makedirs(output_dir, exist_ok=True)
  results = dict(results, pretraining_curves={
      tag: [[s, v] for s, v in points] for tag, points in curves.items()})
  paths = {name: os.path.join(output_dir, name) for name in (
      'results.json', 'results.md', 'accuracy.png', 'pretraining.png')}
  with open(paths['results.json'], 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(paths['results.md'], 'w') as f:
    f.write(markdown_table(results))
  plot_accuracy(results, paths['accuracy.png'])
  plot_pretraining(curves, paths['pretraining.png'])
  return paths


# ---------------------------------------------------------------- main
def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='a tiny version (minutes) that checks the plumbing')
  parser.add_argument('--scale', type=float, default=1,
                      help='multiply epochs and widths (e.g. 8 on a GPU)')
  parser.add_argument('--output_dir', default=DEFAULT_OUTPUT_DIR)
  parser.add_argument('--work_dir', default=None,
                      help='model_dirs and logs (default: a new temporary '
                      'directory); stages already done there are reused')
  parser.add_argument('--plan_only', action='store_true',
                      help='print the step counts and time estimate, run nothing')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv if argv is not None else sys.argv[1:])
  plan = make_plan(args.scale, args.quick)
  estimate = estimate_seconds(plan)
  print('steps:', json.dumps(plan.steps()))
  print(f'estimated wall time on 2 CPU cores: {estimate["total"] / 60:.0f} min')
  if args.plan_only:
    print(json.dumps(estimate, indent=1))
    return 0
  work_dir = args.work_dir or tempfile.mkdtemp(prefix='simclr_semi_')
  print('work_dir:', work_dir)
  started = time.time()
  try:
    accuracy, extra, timings, dirs = run_protocol(plan, work_dir)
  except StageFailed as error:
    print(f'semi_supervised.py: {error}', file=sys.stderr)
    return 1
  curves = read_scalars(dirs['pretrain'])
  results = {
      'fractions': [str(f) for f in FRACTIONS],
      'labeled_images': {str(f): labeled_count(f) for f in FRACTIONS},
      'top_1': {arm: {str(f): v for f, v in by_fraction.items()}
                for arm, by_fraction in accuracy.items()},
      'extra': extra,
      'wall_time_s': timings,
      'total_wall_time_s': time.time() - started,
      'plan': dataclasses.asdict(plan) | {'steps': plan.steps(),
                                          'quick': args.quick,
                                          'scale': args.scale},
      'estimated_wall_time_s': estimate['total'],
      'command': shlex.join(['python', 'benchmarks/semi_supervised.py',
                             *(argv if argv is not None else sys.argv[1:])]),
      'git': git_info(),
      'machine': machine_info(),
      'work_dir': work_dir,
  }
  results['plan']['finetune_batch'] = {str(k): v for k, v in plan.finetune_batch.items()}
  results['plan']['finetune_epochs'] = {str(k): v for k, v in plan.finetune_epochs.items()}
  results['plan']['baseline_epochs'] = {str(k): v for k, v in plan.baseline_epochs.items()}
  paths = write_outputs(results, curves, args.output_dir)
  print(markdown_table(results))
  print('wrote', ', '.join(paths.values()))
  return 0


if __name__ == '__main__':
  sys.exit(main())

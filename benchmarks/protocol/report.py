"""The protocol's outputs: results.json, results.md (the tables), the accuracy
and pretraining plots, and the records of the code and machine that made
them."""

import glob
import json
import os
import platform
import subprocess

from benchmarks.protocol import REPO
from benchmarks.protocol import plan as plan_lib

ARM_TITLES = {
    'supervised': 'Supervised from scratch (labeled subset only)',
    'simclr': 'SimCLRv2 pretrain + finetune (teacher)',
    'self_distill': 'SimCLRv2 self-distilled student (final model)',
    'distill_small': 'SimCLRv2 distilled into a half-width student',
    plan_lib.MEMORY_ARM:
        'SimCLRv2 with the memory of negatives, pretrain + finetune',
}
PRETRAIN_TAGS = ('train/contrast_loss', 'train/contrast_acc')
# The code whose uncommitted changes git_info reports.
CODE_PATHS = ('run.py', 'tf_simclr', 'export', 'benchmarks/semi_supervised.py',
              'benchmarks/protocol', 'benchmarks/main_job_recipe.py',
              'scripts/main_job.py')


# ---------------------------------------------------------------- event files
def read_scalars(model_dir, tags=PRETRAIN_TAGS):
  """{tag: [(step, value), ...]} sorted by step, from the TensorBoard event
  files directly in model_dir (the last value wins for a repeated step)."""
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


# ---------------------------------------------------------------- records
def machine_info():
  from tf_simclr import distribute  # pylint: disable=import-outside-toplevel
  cpu = distribute.cpu_model_name(platform.processor() or 'unknown')
  info = {'cpu': cpu, 'cores': os.cpu_count(),
          'python': platform.python_version(), 'platform': platform.platform()}
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    info['tensorflow'] = tf.__version__
    info['gpus'] = len(tf.config.list_physical_devices('GPU'))
  except ImportError:
    info['tensorflow'] = 'unknown'
  try:
    info['load_average_at_end'] = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    pass
  return info


def git_info(paths=CODE_PATHS):
  """The commit, and whether `paths` (relative to the repository) have
  uncommitted changes."""
  def git(*args):
    return subprocess.run(['git', *args], cwd=REPO, capture_output=True,
                          text=True, check=False).stdout.strip()
  dirty = git('status', '--porcelain', '--', *paths)
  return {'commit': git('rev-parse', 'HEAD'),
          'uncommitted_changes_in_code': bool(dirty)}


# ---------------------------------------------------------------- tables
def fraction_label(fraction):
  return f'{fraction * 100:g} %'


def _cell(values):
  """'mean (min–max)' in percent of a list of per-seed accuracies."""
  values = [v for v in values or [] if v is not None]
  if not values:
    return '—'
  mean = 100 * sum(values) / len(values)
  if len(values) == 1:
    return f'{mean:.2f}'
  return f'{mean:.2f} ({100 * min(values):.1f}–{100 * max(values):.1f})'


def markdown_table(results):
  """The results as Markdown: accuracy per arm and fraction (mean and
  min–max over label seeds), gains, the encoder, choices and wall times."""
  fractions = results['fractions']
  seeds = results['top_1_seeds']
  mean = results['top_1']
  head = '| arm | ' + ' | '.join(
      f'{fraction_label(float(f))} labels ({results["labeled_images"][f]} '
      f'images, {len(seeds["supervised"].get(f, []))} '
      f'seed{"s" if len(seeds["supervised"].get(f, [])) != 1 else ""})'
      for f in fractions) + ' |'
  lines = [head, '|---|' + '---:|' * len(fractions)]
  arms = results.get('arms', plan_lib.ARMS)
  for arm in arms:
    lines.append(f'| {ARM_TITLES[arm]} | ' + ' | '.join(
        _cell(seeds.get(arm, {}).get(f)) for f in fractions) + ' |')
  for arm in ('simclr', 'self_distill') + (
      (plan_lib.MEMORY_ARM,) if plan_lib.MEMORY_ARM in arms else ()):
    gains = []
    for f in fractions:
      a, b = mean.get(arm, {}).get(f), mean.get('supervised', {}).get(f)
      gains.append('—' if a is None or b is None else
                   f'{100 * (a - b):+.2f}')
    lines.append(f'| *{arm} − supervised (points)* | ' + ' | '.join(gains)
                 + ' |')
  text = ['Test top-1 accuracy (%) on Fashion-MNIST (10 000 test images): '
          'mean over label seeds (min–max).', '', *lines, '']
  encoder = results.get('encoder', {})
  if encoder:
    text += ['| encoder (pretrained, not finetuned) | test top-1 (%) |',
             '|---|---:|']
    for key, title in (
        ('knn_top_1', 'kNN (k 200, cosine, final_avg_pool)'),
        ('linear_probe_top_1', 'linear probe (fine_tune_after_block=4)'),
        ('feature_logreg_top_1',
         'logistic regression on its features (as on pixels)'),
        ('raw_pixel_knn_top_1', 'raw pixels: the same kNN'),
        ('raw_pixel_logreg_top_1', 'raw pixels: logistic regression'),
        ('student_knn_top_1',
         "the half-width student's own pretraining: kNN"),
        ('memory_knn_top_1', 'with the memory of negatives: kNN'),
        ('memory_linear_probe_top_1',
         'with the memory of negatives: linear probe'),
        ('memory_feature_logreg_top_1',
         'with the memory of negatives: logistic regression on features')):
      if encoder.get(key) is not None:
        text.append(f'| {title} | {100 * encoder[key]:.2f} |')
    text.append('')
  choices = results.get('validation_choices', {})
  if choices:
    text += ['Choices made on the validation split (validation top-1):', '',
             *choice_lines(choices), '']
  text += [*stage_time_lines(results), '', *machine_lines(results)]
  return '\n'.join(text)


def choice_lines(choices, group=''):
  """One list item per choice made on validation: the chosen value and the
  candidates' validation top-1 (or where it was reused from or chosen)."""
  lines = []
  for name, choice in choices.items():
    scores = ', '.join(f'{k}: {100 * v:.2f}' for k, v in
                       choice['validation_top_1'].items())
    source = (f'reused from {choice["reused_from"]}'
              if 'reused_from' in choice else scores or
              f'chosen at {choice.get("chosen_at", "?")}')
    lines.append(f'- {group}{name}: **{choice["chosen"]}** ({source})')
  return lines


def stage_time_lines(results):
  """The table of every stage's wall time and training rate, and the total."""
  lines = ['| stage | wall time (s) | training images/s |', '|---|---:|---:|']
  for name, entry in results.get('wall_time_s', {}).items():
    rate = entry.get('train_images_per_sec')
    lines.append(f'| {name}{" (reused)" if entry.get("reused") else ""} | '
                 f'{entry["seconds"]:.0f} | '
                 f'{"" if rate is None else f"{rate:.0f}"} |')
  lines.append(f'| **total** | {results["total_wall_time_s"]:.0f} | |')
  return lines


def machine_lines(results):
  """The machine, the commit and the command of a results record."""
  machine = results.get('machine', {})
  return [f'Machine: {machine.get("cpu", "?")}, {machine.get("cores", "?")} '
          f'cores, TensorFlow {machine.get("tensorflow", "?")}. Commit '
          f'{results.get("git", {}).get("commit", "?")}.', '',
          f'Command: `{results.get("command", "")}`', '']


# ---------------------------------------------------------------- plots
def plot_accuracy(results, path):
  """Test top-1 against labeled images (log x), one line per arm, the
  seeds' min–max as error bars."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axis = plt.subplots(figsize=(6.4, 4.4))
  fractions = results['fractions']
  for arm, marker in zip(results.get('arms', plan_lib.ARMS), 'osD^v'):
    xs, ys, low, high = [], [], [], []
    for f in fractions:
      values = [v for v in results['top_1_seeds'].get(arm, {}).get(f) or []
                if v is not None]
      if not values:
        continue
      m = 100 * sum(values) / len(values)
      xs.append(results['labeled_images'][f])
      ys.append(m)
      low.append(max(0.0, m - 100 * min(values)))
      high.append(max(0.0, 100 * max(values) - m))
    if xs:
      axis.errorbar(xs, ys, yerr=[low, high], marker=marker, capsize=3,
                    label=ARM_TITLES[arm])
  for key, style, title in (('raw_pixel_logreg_top_1', ':',
                             'raw pixels, logistic regression (all labels)'),):
    value = results.get('encoder', {}).get(key)
    if value is not None:
      axis.axhline(100 * value, linestyle=style, color='grey', label=title)
  axis.set_xscale('log')
  axis.set_xlabel('labeled training images (log scale)')
  axis.set_ylabel('test top-1 accuracy (%)')
  axis.set_title('Fashion-MNIST, ResNet-%s ×%s' % (
      results.get('plan', {}).get('depth', '?'),
      results.get('plan', {}).get('width', '?')))
  axis.grid(alpha=0.3)
  axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def plot_pretraining(curves, path):
  """The pretraining's contrastive loss and accuracy against the step."""
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

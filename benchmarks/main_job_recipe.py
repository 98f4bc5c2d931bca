r"""The main job's finetuning learning rate, chosen on a validation split.

  python benchmarks/main_job_recipe.py --work_dir=/tmp/main_job_recipe
  python benchmarks/main_job_recipe.py --learning_rates=0.2 --finetune_epochs=14 \
      --output=/tmp/epochs14.json     # another finetuning length

The main job (scripts/main_job.py, what `bash scripts/pipeline.sh` runs)
reports test-split numbers, so its recipe is not chosen there: this script
runs the same stages with validation = the first 5 000 training images and
the other 55 000 as the training split (600 labeled images per class, the
main job's 6 000): the pretraining once, then the finetuning at each
candidate learning rate (per 256 images), and prints and writes the
validation top-1 of each to benchmarks/results/main_job_recipe.json. The
test split is not read.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from benchmarks.protocol import plan as plan_lib  # pylint: disable=wrong-import-position
from benchmarks.protocol import report  # pylint: disable=wrong-import-position
from benchmarks.protocol.flags import flag_value  # pylint: disable=wrong-import-position
from scripts import main_job  # pylint: disable=wrong-import-position
from tf_simclr import config as config_lib  # pylint: disable=wrong-import-position

VALIDATION_SPLIT = 'train[:5000]'
TRAIN_SPLIT = 'train[5000:]'
LABELED = 6000  # The main job's 10 % of the 60 000 training images.
LEARNING_RATES = (0.1, 0.2, 0.4, 0.8)
OUTPUT = os.path.join(REPO, 'benchmarks', 'results', 'main_job_recipe.json')


def _replace(flags, name, value):
  """flags with --name=... set to value (added when absent)."""
  kept = [f for f in flags if not f.startswith(f'--{name}=')]
  return kept + [f'--{name}={value}']


def crop_min_area(flags):
  """The --crop_min_area of run.py flags (run.py's default when absent)."""
  try:
    return float(flag_value(flags, 'crop_min_area'))
  except KeyError:
    return config_lib.Config.crop_min_area


def validation_stages(work_dir, learning_rates=LEARNING_RATES, env=None,
                      finetune_batch=None, crop_min_area=None):
  """[(name, run.py flags)]: the main job's pretraining, then its finetuning
  at each learning rate (and finetune_batch and crop_min_area, when given),
  on TRAIN_SPLIT, evaluated on VALIDATION_SPLIT."""
  env = dict(env or {}, OUT=work_dir)
  by_name = {name: flags for name, _, flags in main_job.stages(env)}
  out = []
  pretrain = _replace(_replace(by_name['pretrain'], 'eval_split',
                               VALIDATION_SPLIT), 'train_split', TRAIN_SPLIT)
  out.append(('pretrain', pretrain))
  finetune = _replace(_replace(by_name['finetune'], 'eval_split',
                               VALIDATION_SPLIT), 'train_split', TRAIN_SPLIT)
  finetune = _replace(finetune, 'label_fraction', repr(LABELED / 55_000))
  if finetune_batch:
    finetune = _replace(finetune, 'train_batch_size', finetune_batch)
  if crop_min_area:
    finetune = _replace(finetune, 'crop_min_area', crop_min_area)
  for rate in learning_rates:
    flags = _replace(_replace(finetune, 'learning_rate', rate), 'model_dir',
                     os.path.join(work_dir, f'finetune_lr{rate:g}'))
    out.append((f'finetune_lr{rate:g}', flags))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--work_dir', default='/tmp/main_job_recipe')
  parser.add_argument('--output', default=OUTPUT)
  parser.add_argument('--learning_rates', default=','.join(
      f'{rate:g}' for rate in LEARNING_RATES),
                      help='comma-separated finetuning learning rates')
  parser.add_argument('--finetune_epochs', type=int, default=None,
                      help="finetuning epochs (default: the main job's)")
  parser.add_argument('--pretrain_steps', type=int, default=None,
                      help="pretraining steps (default: the main job's)")
  parser.add_argument('--finetune_batch', type=int, default=None,
                      help="finetuning batch size (default: the main job's)")
  parser.add_argument('--crop_min_area', type=float, default=None,
                      help="finetuning's smallest crop (default: the main "
                      "job's)")
  args = parser.parse_args(argv)
  rates = [float(rate) for rate in args.learning_rates.split(',')]
  env = {name: str(value) for name, value in (
      ('FINETUNE_EPOCHS', args.finetune_epochs),
      ('PRETRAIN_STEPS', args.pretrain_steps)) if value is not None}
  import run as run_py  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.use_absl_handler()
  os.makedirs(args.work_dir, exist_ok=True)
  started = time.time()
  scores, seconds = {}, {}
  runs = validation_stages(args.work_dir, rates, env, args.finetune_batch,
                           args.crop_min_area)
  for name, flags in runs:
    stage_started = time.time()
    with main_job.output_to(os.path.join(args.work_dir, f'{name}.log')):
      run_py.run_in_process(['run.py', *flags])
    with open(os.path.join(flag_value(flags, 'model_dir'),
                           'result.json')) as f:
      result = json.load(f)
    seconds[name] = round(time.time() - stage_started, 1)
    key = 'knn_top_1' if name == 'pretrain' else 'label_top_1_accuracy'
    scores[name] = result[key]
    print(f'{name}: validation {key} {result[key]:.4f} ({seconds[name]:.0f} s)',
          flush=True)
  finetune_scores = {name[len('finetune_lr'):]: score
                     for name, score in scores.items()
                     if name.startswith('finetune_lr')}
  chosen = plan_lib.best_of(finetune_scores)
  print(f'chosen finetune learning rate: {chosen}')
  record = {
      'validation_split': VALIDATION_SPLIT, 'train_split': TRAIN_SPLIT,
      'labeled_images': LABELED,
      'finetune_epochs': int(flag_value(runs[-1][1], 'train_epochs')),
      'pretrain_steps': int(flag_value(runs[0][1], 'train_steps')),
      'finetune_batch': int(flag_value(runs[-1][1], 'train_batch_size')),
      'finetune_crop_min_area': crop_min_area(runs[-1][1]),
      'pretrain_validation_knn_top_1': scores['pretrain'],
      'finetune_validation_top_1': finetune_scores,
      'chosen_learning_rate': chosen,
      'seconds': seconds, 'total_seconds': round(time.time() - started, 1),
      'git': report.git_info(),
      'machine': report.machine_info(),
      'command': 'python benchmarks/main_job_recipe.py ' + ' '.join(
          argv if argv is not None else sys.argv[1:])}
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())

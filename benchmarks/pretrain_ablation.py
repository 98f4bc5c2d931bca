r"""Pretraining recipes of the protocol compared on its validation split.

  python benchmarks/pretrain_ablation.py --epochs=3 --crop_min_areas=0.08,0.25,0.5
  python benchmarks/pretrain_ablation.py --crop_min_areas=0.25 --temperatures=0.1,0.2,0.5
  python benchmarks/pretrain_ablation.py --crop_min_areas=0.25 --width_epochs=0.125:12,0.25:6
  python benchmarks/pretrain_ablation.py --crop_min_areas=0.25 --batches=128,256,512

Runs the protocol's pretraining (benchmarks/protocol/plan.py's Plan: the
same network, batch, rate, temperature and augmentation) on its pool for
--epochs, once per (smallest crop area of the two views, temperature of
NT-Xent) pair, and with --width_epochs once per (width multiplier, epochs)
pair instead of the plan's width at --epochs (e.g. epochs in inverse
proportion to a width's cost, for equal wall time), with --batches once per
batch size (the rate scaled linearly with it). Reports the encoder's
weighted kNN (k 200, cosine) on the validation split (the first 5 000
training images; the bank is the pool) and, with --feature_logreg, the
raw-pixel anchor's logistic regression fitted on the pool's frozen,
standardised encoder features (all its labels; the best C of the plan's on
validation), beside the same regression on the pool's pixels. The test split
is not read. Writes benchmarks/results/pretrain_ablation.json.
"""

import argparse
import dataclasses
import itertools
import json
import os
import shlex
import sys

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from benchmarks.protocol import anchors
from benchmarks.protocol import flags as flags_lib
from benchmarks.protocol import plan as plan_lib
from benchmarks.protocol import report
from benchmarks.protocol import stages as stages_lib
# pylint: enable=wrong-import-position

OUTPUT = os.path.join(REPO, 'benchmarks', 'results', 'pretrain_ablation.json')


def candidate_plans(plan, epochs, crop_min_areas, temperatures,
                    width_epochs=None, batches=None):
  """{(stage name, result key): the plan of that candidate}. width_epochs:
  {width multiplier: epochs} to compare, each at every other setting; None:
  the plan's width at `epochs` (and neither in the result key). batches:
  pretraining batch sizes to compare (the rate scales linearly with the
  batch, as run.py's --learning_rate_scaling=linear); None: the plan's (not
  in the result key)."""
  candidates = {}
  for (width, width_epochs_), batch, area, temperature in itertools.product(
      (width_epochs or {plan.width: epochs}).items(),
      batches or (plan.pretrain_batch,), crop_min_areas, temperatures):
    name = (f'pretrain_e{width_epochs_:g}_area{area:g}_t{temperature:g}'
            + ('' if width == plan.width else f'_w{width:g}')
            + ('' if batch == plan.pretrain_batch else f'_b{batch}'))
    key = ((f'width={width:g},epochs={width_epochs_:g},' if width_epochs
            else '') + (f'batch={batch},' if batches else '')
           + f'crop_min_area={area:g},temperature={temperature:g}')
    candidates[(name, key)] = dataclasses.replace(
        plan, width=width, pretrain_epochs=width_epochs_,
        pretrain_batch=batch, pretrain_crop_min_area=area,
        temperature=temperature)
  return candidates


def _width_epochs(text):
  """'0.125:12,0.25:6' -> {0.125: 12.0, 0.25: 6.0}."""
  pairs = {}
  for item in text.split(','):
    width, sep, epochs = item.partition(':')
    if not sep:
      raise argparse.ArgumentTypeError(
          f'--width_epochs wants WIDTH:EPOCHS pairs, got {item!r}')
    pairs[float(width)] = float(epochs)
  return pairs


def _floats(text):
  return [float(v) for v in text.split(',')]


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=float, default=3.0)
  parser.add_argument('--crop_min_areas', default='0.08,0.25,0.5',
                      type=_floats)
  parser.add_argument('--temperatures', type=_floats,
                      default=[plan_lib.Plan.temperature])
  parser.add_argument('--width_epochs', type=_width_epochs, default=None,
                      help='WIDTH:EPOCHS pairs, e.g. 0.125:12,0.25:6 '
                      '(default: the plan\'s width at --epochs)')
  parser.add_argument('--batches', default=None,
                      type=lambda text: [int(v) for v in text.split(',')],
                      help='pretraining batch sizes (default: the plan\'s)')
  parser.add_argument('--feature_logreg', action=argparse.BooleanOptionalAction,
                      default=False, help='also fit logistic regression on '
                      'the encoder\'s features and on pixels')
  parser.add_argument('--work_dir', default='/tmp/pretrain_ablation')
  parser.add_argument('--output', default=OUTPUT)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  stages = stages_lib.Stages(args.work_dir,
                             echo=lambda line: print(line, flush=True))
  scores, seconds, logreg = {}, {}, {}
  try:
    for (name, key), plan in candidate_plans(
        plan_lib.Plan(), args.epochs, args.crop_min_areas,
        args.temperatures, args.width_epochs, args.batches).items():
      model_dir = stages.model_dir(name)
      flags = flags_lib.pretrain_flags(plan, model_dir)
      scores[key] = stages.validation_top_1(name, flags, key='knn_top_1')
      seconds[name] = round(stages.records[name]['seconds'], 1)
      if args.feature_logreg:
        logreg[key] = {str(c): top_1 for c, top_1 in
                       anchors.feature_logistic_regression(
                           plan, model_dir)['validation'].items()}
        print(f'[{name}] feature logistic regression, validation: '
              f'{logreg[key]}', flush=True)
  except stages_lib.StageFailed as error:
    print(f'pretrain_ablation.py: {error}', file=sys.stderr)
    return 1
  extra = {}
  if args.feature_logreg:
    pixels = anchors.raw_pixel_validation(plan_lib.Plan())
    print(f'[raw pixels] logistic regression, validation: {pixels}',
          flush=True)
    extra = {'validation_feature_logreg_top_1': logreg,
             'validation_raw_pixel_logreg_top_1': {
                 str(c): top_1 for c, top_1 in pixels.items()}}
  record = {'validation_knn_top_1': scores, 'epochs': args.epochs, **extra,
            'width_epochs': {f'{w:g}': e for w, e in
                             (args.width_epochs or {}).items()} or None,
            'batches': args.batches,
            'seconds': seconds, 'git': report.git_info(),
            'machine': report.machine_info(),
            'command': shlex.join(['python', 'benchmarks/pretrain_ablation.py',
                                   *(sys.argv[1:] if argv is None else argv)])}
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
  print(json.dumps(scores), 'written to', args.output)
  return 0


if __name__ == '__main__':
  sys.exit(main())

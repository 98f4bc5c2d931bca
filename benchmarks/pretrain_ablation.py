r"""Pretraining recipes of the protocol compared on its validation split.

  python benchmarks/pretrain_ablation.py --epochs=3 --crop_min_areas=0.08,0.25,0.5
  python benchmarks/pretrain_ablation.py --crop_min_areas=0.25 --temperatures=0.1,0.2,0.5

Runs the protocol's pretraining (benchmarks/semi_supervised.py's Plan: the
same network, batch, rate, temperature and augmentation) on its pool for
--epochs, once per (smallest crop area of the two views, temperature of
NT-Xent) pair, and reports the encoder's weighted kNN (k 200, cosine) on the
validation split (the first 5 000 training images; the bank is the pool).
The test split is not read.
Writes benchmarks/results/pretrain_ablation.json.
"""

import argparse
import dataclasses
import json
import os
import shlex
import sys

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from benchmarks import semi_supervised  # pylint: disable=wrong-import-position

OUTPUT = os.path.join(REPO, 'benchmarks', 'results', 'pretrain_ablation.json')


def candidate_plans(plan, epochs, crop_min_areas, temperatures):
  """{(stage name, result key): the plan of that candidate}."""
  return {(f'pretrain_e{epochs:g}_area{area:g}_t{temperature:g}',
           f'crop_min_area={area:g},temperature={temperature:g}'):
          dataclasses.replace(plan, pretrain_epochs=epochs,
                              pretrain_crop_min_area=area,
                              temperature=temperature)
          for area in crop_min_areas for temperature in temperatures}


def _floats(text):
  return [float(v) for v in text.split(',')]


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=float, default=3.0)
  parser.add_argument('--crop_min_areas', default='0.08,0.25,0.5',
                      type=_floats)
  parser.add_argument('--temperatures', type=_floats,
                      default=[semi_supervised.Plan.temperature])
  parser.add_argument('--work_dir', default='/tmp/pretrain_ablation')
  parser.add_argument('--output', default=OUTPUT)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  stages = semi_supervised.Stages(args.work_dir,
                                  echo=lambda line: print(line, flush=True))
  scores, seconds = {}, {}
  try:
    for (name, key), plan in candidate_plans(
        semi_supervised.Plan(), args.epochs, args.crop_min_areas,
        args.temperatures).items():
      flags = semi_supervised.pretrain_flags(plan, stages.model_dir(name))
      scores[key] = stages.validation_top_1(name, flags, key='knn_top_1')
      seconds[name] = round(stages.records[name]['seconds'], 1)
  except semi_supervised.StageFailed as error:
    print(f'pretrain_ablation.py: {error}', file=sys.stderr)
    return 1
  record = {'validation_knn_top_1': scores, 'epochs': args.epochs,
            'seconds': seconds, 'git': semi_supervised.git_info(),
            'machine': semi_supervised.machine_info(),
            'command': shlex.join(['python', 'benchmarks/pretrain_ablation.py',
                                   *(sys.argv[1:] if argv is None else argv)])}
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
  print(json.dumps(scores), 'written to', args.output)
  return 0


if __name__ == '__main__':
  sys.exit(main())

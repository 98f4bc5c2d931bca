r"""Where a short stage's seconds go: in-process runs broken into phases.

  python -m tf_simclr.benchmark --component=stage --dataset=fashion_mnist

runs this module in a process of its own (it defines run.py's flags) which,
as the semi-supervised protocol and learning-rate sweeps do, runs stages one
after another in one process with run.py's `run_in_process`: a pretraining,
then `--repeats` finetunes at 0.1 % of the labels and `--repeats`
distillations, each `--steps` steps long, all at the protocol's sizes
(ResNet-18, 28 px, batch 256 / 32 / 128, evaluation on 5 000 validation
images). Each run reports run.py's summary 'phases' (trainer.py, phases.py):
input set-up, model build, restore, the first training views' summary, input
pipeline, trace of the training loop, its first call (first batch + first
steps), the other calls, summaries, checkpoint, evaluation (input, trace,
pass) and export. With 2 steps a run is almost all fixed cost.

The last line of stdout is JSON: {'runs': [{'stage', 'repeat', 'seconds',
'phases'}], 'device', ...}.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

# Splits of the protocol (benchmarks/protocol): validation = the first 5 000
# training images, the pool the rest. Synthetic data has 1 024 / 256.
SPLITS = {'fashion_mnist': ('train[5000:]', 'train[:5000]', 0.001 * 60 / 55),
          'synthetic': ('train', 'test', 0.01)}
STAGES = ('pretrain', 'finetune', 'distill')


def common_flags(args, split, eval_split, steps, width):
  return [f'--dataset={args.dataset}', f'--image_size={args.image_size}',
          f'--resnet_depth={args.resnet_depth}',
          f'--width_multiplier={width}', f'--train_split={split}',
          f'--eval_split={eval_split}', '--eval_batch_size=1000',
          '--mode=train_then_eval', '--export=false', '--global_bn=false',
          '--keep_checkpoint_max=1', '--cache_dataset',
          f'--train_steps={steps}', f'--checkpoint_steps={steps}',
          f'--steps_per_loop={max(1, min(100, steps // 20))}',
          f'--precision={args.precision}',
          *([f'--data_dir={args.data_dir}'] if args.data_dir else []),
          *([] if args.summary_images else ['--summary_images=false'])]


def stage_flags(args, stage, model_dir, work_dir):
  """run.py flags of one timed run of `stage` (the protocol's recipe)."""
  split, eval_split, fraction = SPLITS[args.dataset]
  pretrain_dir = os.path.join(work_dir, 'pretrain')
  flags = common_flags(args, split, eval_split, args.steps,
                       args.width_multiplier) + [f'--model_dir={model_dir}',
                                                 f'--train_mode={stage}']
  if stage == 'pretrain':
    return flags + ['--train_batch_size=256', '--optimizer=lars',
                    '--learning_rate=1.0', '--warmup_epochs=1',
                    '--temperature=0.2', '--color_jitter_strength=0.5',
                    '--crop_min_area=0.25', '--use_blur=false',
                    '--knn_bank_size=5000']
  if stage == 'finetune':
    return flags + [f'--checkpoint={pretrain_dir}',
                    f'--label_fraction={fraction!r}', '--label_seed=0',
                    '--train_batch_size=32', '--ft_proj_selector=1',
                    '--optimizer=momentum', '--learning_rate=0.01',
                    '--weight_decay=5e-4', '--crop_min_area=0.25',
                    '--warmup_epochs=0', '--zero_init_logits_layer']
  return flags + [f'--teacher_checkpoint={os.path.join(work_dir, "teacher")}',
                  f'--checkpoint={pretrain_dir}', '--ft_proj_selector=1',
                  '--zero_init_logits_layer', '--distill_alpha=1',
                  '--train_batch_size=128', '--optimizer=momentum',
                  '--learning_rate=0.05', '--weight_decay=1e-4',
                  '--warmup_epochs=0.05']


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', default='fashion_mnist',
                      choices=sorted(SPLITS))
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--resnet_depth', type=int, default=18)
  parser.add_argument('--width_multiplier', type=float, default=0.125)
  parser.add_argument('--image_size', type=int, default=28)
  parser.add_argument('--precision', default='float32')
  parser.add_argument('--steps', type=int, default=2,
                      help='training steps of every timed run')
  parser.add_argument('--repeats', type=int, default=3,
                      help='timed finetune and distill runs each')
  parser.add_argument('--stages', default=','.join(STAGES),
                      help='comma-separated, among ' + ', '.join(STAGES))
  parser.add_argument('--summary_images', default='true',
                      choices=['true', 'false'])
  args = parser.parse_args(argv)
  args.summary_images = args.summary_images == 'true'
  args.stages = [s for s in args.stages.split(',') if s]
  unknown = set(args.stages) - set(STAGES)
  if unknown or args.steps < 1 or args.repeats < 1:
    parser.error(f'--stages among {", ".join(STAGES)}, --steps and '
                 '--repeats >= 1')
  return args


def run_stages(args, run_in_process):
  """[{'stage', 'repeat', 'seconds', 'phases'}] of the timed runs, in order:
  the pretraining (also what finetuning starts from), then the finetunes and
  distillations (the first finetune is the distillation's teacher)."""
  work_dir = tempfile.mkdtemp(prefix='tf_simclr_stage_cost_')
  runs = []

  def timed(stage, repeat, model_dir):
    started = time.perf_counter()
    summary = run_in_process(['run.py', *stage_flags(args, stage, model_dir,
                                                     work_dir)])
    seconds = time.perf_counter() - started
    runs.append({'stage': stage, 'repeat': repeat, 'seconds': seconds,
                 'phases': summary.get('phases', {})})
    print(f'{stage} #{repeat}: {seconds:.2f} s', file=sys.stderr, flush=True)

  try:
    timed('pretrain', 0, os.path.join(work_dir, 'pretrain'))
    needs_teacher = 'distill' in args.stages
    for repeat in range(args.repeats if 'finetune' in args.stages else
                        int(needs_teacher)):
      model_dir = os.path.join(work_dir, 'teacher' if repeat == 0 else
                               f'finetune{repeat}')
      timed('finetune', repeat, model_dir)
    for repeat in range(args.repeats if needs_teacher else 0):
      timed('distill', repeat, os.path.join(work_dir, f'distill{repeat}'))
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
  return [run for run in runs if run['stage'] in args.stages]


def table(runs):
  """Text table: one row per phase, one column per run (seconds)."""
  phases = []
  for run in runs:
    phases += [name for name in run['phases'] if name not in phases]
  heads = [f'{run["stage"]} #{run["repeat"]}' for run in runs]
  width = max(len(name) for name in phases + ["total (wall)"])
  lines = [' ' * width + ''.join(f'{head:>14}' for head in heads)]
  for name in phases:
    lines.append(f'{name:<{width}}' + ''.join(
        f'{run["phases"].get(name, 0.0):>14.2f}' for run in runs))
  lines.append(f'{"total (wall)":<{width}}' + ''.join(
      f'{run["seconds"]:>14.2f}' for run in runs))
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  from tf_simclr import cli  # pylint: disable=import-outside-toplevel
  from tf_simclr import benchmark  # pylint: disable=import-outside-toplevel
  runs = run_stages(args, cli.run_in_process)
  print(table(runs))
  repeated = {stage: statistics.median(
      run['seconds'] for run in runs if run['stage'] == stage and
      run['repeat'] > 0) for stage in ('finetune', 'distill')
              if any(r['stage'] == stage and r['repeat'] > 0 for r in runs)}
  print(json.dumps({'runs': runs, 'median_repeated_seconds': repeated,
                    'device': benchmark.device_description(),
                    'config': vars(args)}, sort_keys=True))


if __name__ == '__main__':
  main()

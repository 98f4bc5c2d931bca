r"""Images/s of the pretraining step against depth, batch size and precision.

Runs `python -m tf_simclr.benchmark` once per (depth, image size, batch
size), each run timing the float32 step and its variants (by default
bfloat16) in one process, calls interleaved, and collects the JSON lines
into a Markdown table (stdout and --output_dir/speed_table.md) and
speed_table.json.

  python benchmarks/speed_table.py                     # the CPU table (~15 min on 2 cores)
  python benchmarks/speed_table.py --quick             # plumbing check
  python benchmarks/speed_table.py --depths=50 --image_sizes=224 \
      --batch_sizes=128,256 --steps=100 --steps_per_loop=50 \
      --variants="precision=bfloat16" --variants="jit_compile=true" \
      --variants="precision=bfloat16 jit_compile=true"   # one GPU

Each cell is the median ms/step over the timed calls after the first
(tracing) call; images/s counts images (a pretraining step sees two views
of each). Ratios in a row come from the same process.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--depths', default='18,50',
                      help='ResNet depths, comma separated.')
  parser.add_argument('--image_sizes', default='32',
                      help='Image sizes, comma separated (<= 32: CIFAR stem).')
  parser.add_argument('--batch_sizes', default='32,64,128',
                      help='Global batch sizes (images), comma separated.')
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--train_mode', default='pretrain',
                      choices=('pretrain', 'finetune', 'distill'))
  parser.add_argument('--variants', action='append', default=None,
                      help='Benchmark --variant strings timed against the '
                      'float32 baseline (repeatable; default: '
                      '"precision=bfloat16").')
  parser.add_argument('--steps', type=int, default=6,
                      help='Timed steps per setting.')
  parser.add_argument('--steps_per_loop', type=int, default=3)
  parser.add_argument('--warmup_steps', type=int, default=0)
  parser.add_argument('--extra', default='',
                      help='More benchmark flags, e.g. "--strategy=mirrored".')
  parser.add_argument('--output_dir', default=None,
                      help='Also write speed_table.md and speed_table.json.')
  parser.add_argument('--quick', action='store_true',
                      help='ResNet-18 x0.125, batch 8, 2 steps: a plumbing '
                      'check of the script, not a measurement.')
  args = parser.parse_args(argv)
  if args.variants is None:
    args.variants = ['precision=bfloat16']
  if args.quick:
    args.depths, args.image_sizes, args.batch_sizes = '18', '32', '8'
    args.width_multiplier, args.steps, args.steps_per_loop = 0.125, 2, 1
  try:
    args.depths = [int(d) for d in args.depths.split(',')]
    args.image_sizes = [int(s) for s in args.image_sizes.split(',')]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  except ValueError as error:
    parser.error(f'--depths, --image_sizes and --batch_sizes take comma '
                 f'separated integers ({error})')
  return args


def benchmark_command(args, depth, image_size, batch_size):
  command = [
      sys.executable, '-m', 'tf_simclr.benchmark', '--component=train',
      f'--train_mode={args.train_mode}', f'--resnet_depth={depth}',
      f'--width_multiplier={args.width_multiplier:g}',
      f'--image_size={image_size}', f'--train_batch_size={batch_size}',
      f'--steps={args.steps}', f'--steps_per_loop={args.steps_per_loop}',
      f'--warmup_steps={args.warmup_steps}']
  command += [f'--variant={variant}' for variant in args.variants]
  return command + shlex.split(args.extra)


def run_one(command):
  """Runs the benchmark; returns its JSON summary (its last stdout line)."""
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                        check=False)
  lines = done.stdout.strip().splitlines()
  if done.returncode != 0 or not lines:
    tail = (done.stderr.strip().splitlines() or ['(no output)'])[-1]
    raise RuntimeError(f'benchmark failed (exit {done.returncode}): {tail}')
  return json.loads(lines[-1])


def table_rows(results, variants):
  """Markdown rows: one per run, float32 then each variant (ms/step,
  images/s and the ratio to float32 of the same run)."""
  header = ['depth', 'px', 'batch', 'float32 ms/step', 'float32 images/s',
            'TFLOPS']
  for variant in variants:
    header += [f'{variant} ms/step', f'{variant} images/s', 'ratio']
  rows = ['| ' + ' | '.join(header) + ' |',
          '|' + '---|' * len(header)]
  for result in results:
    config = result['config']
    batch = config['train_batch_size']
    cells = [str(config['resnet_depth']), str(config['image_size']),
             str(batch), f'{result["ms_per_step_median"]:.0f}',
             f'{result["images_per_sec"]:.1f}',
             f'{result["achieved_tflops"]:.3f}']
    by_name = {v['variant']: v for v in result.get('variants', [])}
    for variant in variants:
      timing = by_name[variant]
      ms = timing['ms_per_step_median']
      cells += [f'{ms:.0f}', f'{1000 * batch / ms:.1f}',
                f'{timing["speedup"]:.2f}x']
    rows.append('| ' + ' | '.join(cells) + ' |')
  return rows


def main(argv=None):
  args = parse_args(argv)
  results = []
  started = time.time()
  for depth in args.depths:
    for image_size in args.image_sizes:
      for batch_size in args.batch_sizes:
        command = benchmark_command(args, depth, image_size, batch_size)
        print('$ ' + ' '.join(shlex.quote(part) for part in command[1:]),
              flush=True)
        try:
          result = run_one(command)
        except RuntimeError as error:
          print(f'speed_table: ResNet-{depth} {image_size} px batch '
                f'{batch_size}: {error}', file=sys.stderr)
          return 1
        results.append(result)
        print(f'  {result["ms_per_step_median"]:.0f} ms/step float32; ' +
              '; '.join(f'{v["variant"]} {v["speedup"]:.2f}x'
                        for v in result['variants']), flush=True)
  minutes = (time.time() - started) / 60
  device = results[0]['device'] if results else 'unknown'
  lines = [f'Pretraining step, {args.train_mode}, width '
           f'{args.width_multiplier:g}, {device}, TensorFlow '
           f'{results[0]["tensorflow"] if results else "?"}; '
           f'{args.steps} timed steps per setting, medians; '
           f'{minutes:.1f} min in all.', ''] + table_rows(results,
                                                          args.variants)
  print('\n'.join(lines))
  if args.output_dir:
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, 'speed_table.md'), 'w') as f:
      f.write('\n'.join(lines) + '\n')
    with open(os.path.join(args.output_dir, 'speed_table.json'), 'w') as f:
      json.dump({'args': vars(args), 'minutes': minutes, 'results': results},
                f, indent=1, sort_keys=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())

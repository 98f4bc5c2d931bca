"""The command line every experiment on the protocol's stages shares
(semi_supervised.py, scaling.py, v2_ablation.py): its flags, the stages'
work_dir and logging, a failed stage as one line and exit status 1, and the
records every results JSON carries (wall times, command, commit, machine).
"""

import argparse
import os
import shlex
import sys
import tempfile
import time

from benchmarks.protocol import REPO
from benchmarks.protocol import plan as plan_lib
from benchmarks.protocol import report
from benchmarks.protocol import stages as stages_lib


def parse_args(argv, description, plan_only_help, add_flags=None):
  """The experiments' flags (--quick, --scale, --output_dir, --work_dir,
  --subprocesses, --plan_only), and add_flags(parser)'s own."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--quick', action='store_true',
                      help='a tiny version (minutes) that checks the plumbing')
  parser.add_argument('--scale', type=float, default=1,
                      help='multiply epochs and widths (e.g. 8 on a GPU)')
  parser.add_argument('--output_dir',
                      default=os.path.join(REPO, 'benchmarks', 'results'))
  parser.add_argument('--work_dir', default=None,
                      help='model_dirs and logs (default: a new temporary '
                      'directory); stages already done there are reused')
  parser.add_argument('--subprocesses', action='store_true',
                      help='run every stage as its own `python run.py` '
                      'process (slower: start-up per stage)')
  parser.add_argument('--plan_only', action='store_true', help=plan_only_help)
  parser.add_argument('--machine', default='auto',
                      choices=('auto',) + tuple(plan_lib.MACHINE_SLOWDOWN),
                      help='the machine class the time estimate (and a '
                      'budget-fitted plan) is for: xeon (the measured rates\' '
                      '2-core Intel Xeon), epyc (a 2-core AMD EPYC with AVX2 '
                      'only), epyc_avx512 (one with AVX-512), each at its '
                      'plan.MACHINE_SLOWDOWN, or auto (this machine\'s)')
  if add_flags:
    add_flags(parser)
  args = parser.parse_args(argv)
  if args.machine == 'auto':
    args.machine = plan_lib.machine_class()
  return args


def print_estimate(estimate, machine):
  """The estimate's line: on the rates' machine, and on `machine` when it is
  another class."""
  total = plan_lib.machine_seconds(estimate['total'], machine)
  line = (f'estimated wall time on 2 CPU cores: {total / 60:.0f} min on a '
          f'{plan_lib.MACHINE_TITLES[machine]}')
  if machine != 'xeon':
    line += (f' ({estimate["total"] / 60:.0f} min on a '
             f'{plan_lib.MACHINE_TITLES["xeon"]}, x '
             f'{plan_lib.MACHINE_SLOWDOWN[machine]:g})')
  print(line)


def fraction_records(fractions, num_train=plan_lib.NUM_TRAIN):
  """The results' `fractions` (keys) and `labeled_images` per key."""
  return {'fractions': [plan_lib.fraction_key(f) for f in fractions],
          'labeled_images': {plan_lib.fraction_key(f):
                             plan_lib.labeled_count(f, num_train)
                             for f in fractions}}


def writer(write_outputs, markdown_table, output_dir):
  """A run_experiment `finish` that writes write_outputs(results,
  output_dir) and prints markdown_table(results)."""
  return lambda results, _: (write_outputs(results, output_dir),
                             markdown_table(results))


def run_experiment(script, argv, args, estimate, run, finish,
                   code_paths=report.CODE_PATHS, records=None):
  """Runs run(stages) -> results in args.work_dir (a new temporary directory
  by default), adds `records` and the ones every experiment keeps, then
  finish(results, stages) -> ({name: path} written, markdown to print).
  Returns the exit status: 1, with one line on stderr, if a stage failed."""
  name = os.path.basename(script)
  work_dir = args.work_dir or tempfile.mkdtemp(
      prefix=f'simclr_{os.path.splitext(name)[0]}_')
  print('work_dir:', work_dir, flush=True)
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.use_absl_handler()  # run.py's progress lines, as under app.run.
  logging.set_verbosity(logging.INFO)
  started = time.time()
  stages = stages_lib.Stages(work_dir, subprocesses=args.subprocesses,
                             echo=lambda line: print(line, flush=True))
  try:
    results = run(stages)
  except stages_lib.StageFailed as error:
    print(f'{name}: {error}', file=sys.stderr)
    return 1
  results.update(records or {})
  results.update({
      'wall_time_s': stages.timings(),
      'total_wall_time_s': time.time() - started,
      'estimated_wall_time_s': plan_lib.machine_seconds(estimate['total'],
                                                        args.machine),
      'estimate_machine': args.machine,
      'command': shlex.join(['python', script, *argv]),
      'git': report.git_info(code_paths),
      'machine': report.machine_info(),
  })
  paths, table = finish(results, stages)
  print(table)
  print('wrote', ', '.join(paths.values()))
  return 0

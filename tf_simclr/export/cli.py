r"""Exports a model_dir of any stage (pretrain, finetune, distill).

  tf-simclr-export --model_dir=/tmp/simclr_finetune --export_dir=/tmp/export \
      [--checkpoint=PREFIX] [--keep_hub_module_max=1] [--overwrite]

(`python -m export ...` in a checkout.)
Writes export_dir/hub/proj_head_<k>/ and export_dir/saved_model/<step>/ (see
the export package) and prints the paths as JSON. Exit status: 0 done (also
when saved_model/<step> existed and --overwrite was not given: nothing is
written and stderr says so); 2 bad input (one line on stderr; the arguments
and paths are checked before TensorFlow loads).
"""

import argparse
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

PROGRAM = 'tf-simclr-export'  # The installed command's name.


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    print(f'{self.prog}: error: {message}', file=sys.stderr)
    sys.exit(2)


def make_parser(program=PROGRAM):
  """The command's argparse parser (a bad argument: one line, exit 2)."""
  parser = _Parser(prog=program, description=__doc__.splitlines()[0])
  parser.add_argument('--model_dir', required=True,
                      help='model_dir of a run (holds config.json and '
                           'checkpoints).')
  parser.add_argument('--export_dir', required=True,
                      help='Where hub/ and saved_model/ are written.')
  parser.add_argument('--checkpoint', default=None,
                      help='Checkpoint prefix to export (default: the latest '
                           'in model_dir).')
  parser.add_argument('--keep_hub_module_max', type=int, default=1,
                      help='Most saved_model versions kept; 0 keeps all.')
  parser.add_argument('--overwrite', action='store_true',
                      help='Replace an existing saved_model/<step>.')
  return parser


def _path_problem(args):
  """What is wrong with the paths of `args` (checked before TensorFlow
  loads, nothing created), or None."""
  # pylint: disable=import-outside-toplevel
  from tf_simclr import checkpoints
  from tf_simclr import config as config_lib
  from tf_simclr import files
  from tf_simclr import preflight
  model_dir = args.model_dir
  if not files.exists(model_dir):
    return f'--model_dir {model_dir} does not exist'
  if not files.isdir(model_dir):
    return f'--model_dir {model_dir} is a file, not a model_dir'
  if not files.exists(os.path.join(model_dir, config_lib.CONFIG_FILENAME)):
    return (f'--model_dir {model_dir} has no {config_lib.CONFIG_FILENAME}: '
            'is it a model_dir written by run.py?')
  for flag, path in (('--checkpoint', args.checkpoint),
                     ('--model_dir', None if args.checkpoint else model_dir)):
    if path:
      try:
        preflight.resolve_checkpoint(path)
      except checkpoints.CheckpointError as error:
        return f'{flag}: {error}'
  try:
    preflight.check_output_location('export_dir', args.export_dir)
  except config_lib.ConfigError as error:
    return str(error)
  return None


def parse_args(argv, program=PROGRAM):
  parser = make_parser(program)
  args = parser.parse_args(argv)
  if args.keep_hub_module_max < 0:
    parser.error('--keep_hub_module_max must be >= 0, got '
                 f'{args.keep_hub_module_max}')
  problem = _path_problem(args)
  if problem:
    parser.error(problem)
  return args


def main(argv=None, program=PROGRAM):
  """Runs the command on argv (default: sys.argv[1:]); returns the exit
  status. `program` names the command in its messages."""
  args = parse_args(sys.argv[1:] if argv is None else argv, program)
  # Imported here, after TF_CPP_MIN_LOG_LEVEL is set.
  from tf_simclr import export  # pylint: disable=import-outside-toplevel
  from tf_simclr import checkpoints  # pylint: disable=import-outside-toplevel
  from tf_simclr import reference  # pylint: disable=import-outside-toplevel
  try:
    result = export.export_from_model_dir(
        args.model_dir, args.export_dir, checkpoint=args.checkpoint,
        keep_max=args.keep_hub_module_max, overwrite=args.overwrite)
  except (export.ExportError, checkpoints.CheckpointError,
          reference.ReferenceCheckpointError) as error:
    print(f'{program}: error: {error}', file=sys.stderr)
    return 2
  if not result['written']:
    print(f'{program}: {result["saved_model"]} exists; nothing written '
          '(pass --overwrite to replace it)', file=sys.stderr)
  print(json.dumps(result, indent=1))
  return 0


def console_main():
  """The entry point of `tf-simclr-export`."""
  sys.exit(main())

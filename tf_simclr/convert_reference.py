r"""Converts a google-research/simclr TF2 checkpoint or released SavedModel.

Writes it as this project's checkpoint (`model_dir/ckpt-0`, global_step 0) plus
`model_dir/config.json`, so finetuning, distillation and export start from it.
The architecture is inferred from the checkpoint's variables; a flag given here
overrides the inferred value (and must still match the checkpoint).

Usage, e.g. with Google's released ResNet-50 1x SK pretrained model (a minute
and a few GB of memory on a laptop CPU):
  python -m tf_simclr.convert_reference \
    --checkpoint=r50_1x_sk1/saved_model --model_dir=/tmp/r50_1x_sk1
  python run.py --train_mode=finetune --checkpoint=/tmp/r50_1x_sk1 ...
  python -m export --model_dir=/tmp/r50_1x_sk1 --export_dir=/tmp/r50_1x_sk1_export

`--num_classes=0` drops the checkpoint's supervised head. Exit status 2 on bad
input (no checkpoint there, an architecture that does not match, a model_dir
that already holds a checkpoint).
"""

import argparse
import dataclasses
import os
import sys

import tensorflow as tf

from tf_simclr import architecture as architecture_lib
from tf_simclr import checkpoints
from tf_simclr import config
from tf_simclr import model as model_lib
from tf_simclr import reference

# Flags that default to what describe_reference infers: every field of the
# architecture record but batch_norm_decay (not in the shapes).
_INFERRED = tuple(
    (field.name, {'int': int, 'float': float, 'str': str}[
        field.type if isinstance(field.type, str) else field.type.__name__])
    for field in dataclasses.fields(architecture_lib.ModelConfig)
    if field.name != 'batch_norm_decay')


class UsageError(Exception):
  """Bad command-line input; reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise UsageError(message)


def _parser():
  parser = _Parser(
      prog='python -m tf_simclr.convert_reference',
      description='Convert a reference SimCLR TF2 checkpoint or SavedModel '
      'into a tf_simclr model_dir.')
  parser.add_argument('--checkpoint', required=True,
                      help='checkpoint prefix, directory of checkpoints, or '
                      'TF2 SavedModel directory')
  parser.add_argument('--model_dir', required=True,
                      help='where to write ckpt-0 and config.json')
  for name, kind in _INFERRED:
    parser.add_argument(f'--{name}', type=kind, default=None,
                        help='default: inferred from the checkpoint')
  parser.add_argument('--batch_norm_decay', type=float, default=0.9)
  return parser


def architecture_for(checkpoint, overrides):
  """The MODEL_FIELDS dict: inferred from `checkpoint`, then `overrides`."""
  inferred = reference.describe_reference(checkpoint)
  cifar_stem = inferred.pop('cifar_stem')
  architecture = {name: inferred.get(name) for name in config.MODEL_FIELDS}
  architecture.update({name: value for name, value in overrides.items()
                       if value is not None})
  if architecture_lib.uses_cifar_stem(architecture['image_size']) != cifar_stem:
    stem = 'CIFAR' if cifar_stem else 'ImageNet'
    raise UsageError(
        f'--image_size={architecture["image_size"]} selects the '
        f'{"CIFAR" if not cifar_stem else "ImageNet"} stem '
        f'but the checkpoint has the {stem} stem (the CIFAR stem goes with '
        'image_size <= 32)')
  return architecture


def convert(checkpoint, model_dir, overrides=None):
  """Loads `checkpoint` and writes it to `model_dir`; returns (summary, path)."""
  if checkpoints.has_checkpoint(model_dir):
    raise UsageError(f'--model_dir={model_dir} already holds a checkpoint; '
                     'choose a new directory')
  architecture = architecture_for(checkpoint, overrides or {})
  model = model_lib.build_model(
      architecture_lib.ModelConfig.from_dict(architecture))
  summary = reference.load_reference_checkpoint(model, checkpoint)
  global_step = tf.Variable(0, dtype=tf.int64, name='global_step')
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model, global_step=global_step), model_dir,
      max_to_keep=1)
  path = manager.save(checkpoint_number=0)
  config.write_architecture(
      model_dir, architecture,
      extra={'converted_from': summary.prefix,
             'reference_global_step': summary.global_step})
  return summary, path


def main(argv=None):
  try:
    args = _parser().parse_args(argv)
    overrides = {name: getattr(args, name) for name, _ in _INFERRED}
    overrides['batch_norm_decay'] = args.batch_norm_decay
    summary, path = convert(args.checkpoint, args.model_dir, overrides)
  except (UsageError, ValueError, tf.errors.OpError) as error:
    print(f'convert_reference: error: {error}', file=sys.stderr)
    return 2
  step = ('' if summary.global_step is None else
          f' (its global_step {summary.global_step})')
  print(f'Restored {summary.restored} variables from {summary.prefix}{step}; '
        f'wrote {path} and {os.path.join(args.model_dir, config.CONFIG_FILENAME)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""Where weights come from: this run's checkpoints, a given checkpoint, a teacher.

Restore order of a training run (trainer.Trainer.restore):
  1. the latest checkpoint in model_dir: model, optimizer slots and global
     step — the run resumes where it stopped;
  2. else --checkpoint: weights only (backbone and projection head, plus the
     supervised head when its class count matches and the stage keeps it);
  3. else the random initialisation.
"""

import os

import tensorflow as tf

from tf_simclr import config as config_lib


class CheckpointError(ValueError):
  """A checkpoint path that cannot be used; the message is one line."""


def resolve_checkpoint(path):
  """Returns the checkpoint prefix behind `path`.

  `path` may be a checkpoint prefix, a directory whose latest checkpoint is
  used (a model_dir of this project), or a SavedModel directory (its
  variables/variables is a checkpoint).
  """
  if not path:
    raise CheckpointError('no checkpoint path given')
  if tf.io.gfile.exists(path + '.index'):
    return path
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest:
      return latest
    saved_model_variables = os.path.join(path, 'variables', 'variables')
    if tf.io.gfile.exists(saved_model_variables + '.index'):
      return saved_model_variables
    indexes = tf.io.gfile.glob(os.path.join(path, '*.index'))
    if len(indexes) == 1:
      return indexes[0][:-len('.index')]
    raise CheckpointError(f'no checkpoint found in directory {path}')
  raise CheckpointError(f'checkpoint {path} does not exist')


def latest_checkpoint(model_dir):
  """The newest complete checkpoint of this run, or None."""
  if not model_dir or not tf.io.gfile.isdir(model_dir):
    return None
  return tf.train.latest_checkpoint(model_dir)


def check_architecture(model_dir, architecture):
  """Raises ConfigError when model_dir was trained with another architecture."""
  saved = config_lib.read_architecture(model_dir)
  if saved is None:
    return
  differences = [
      f'{name}={saved[name]!r} (flags: {architecture[name]!r})'
      for name in architecture
      if name in saved and saved[name] != architecture[name]
      and not (isinstance(saved[name], (int, float))
               and isinstance(architecture[name], (int, float))
               and float(saved[name]) == float(architecture[name]))
  ]
  if differences:
    raise config_lib.ConfigError(
        f'model_dir {model_dir} holds a model with ' + ', '.join(differences) +
        '; use the same flags or another --model_dir')


def restore_initial_weights(model, path, include_supervised_head):
  """Loads weights only from `path` (this project's or the reference's
  checkpoints; both have the object graph model/resnet_model/...).

  Returns the resolved checkpoint prefix.
  """
  from tf_simclr import reference  # pylint: disable=import-outside-toplevel
  prefix = resolve_checkpoint(path)
  reference.load_reference_checkpoint(
      model, prefix, skip_supervised_head=not include_supervised_head)
  return prefix

"""Where weights come from: this run's checkpoints, a given checkpoint, a teacher.

Restore order of a training run (trainer.Trainer.restore):
  1. the latest checkpoint in model_dir: model, optimizer slots and global
     step — the run resumes where it stopped;
  2. else --checkpoint: weights only (backbone and projection head, plus the
     supervised head when its class count matches and the stage keeps it);
  3. else the random initialisation.

Crash safety. tf.train.CheckpointManager writes a checkpoint's shards to
`ckpt-N_temp/`, merges them into `ckpt-N.index` + `ckpt-N.data-*`, and only
then rewrites the `checkpoint` state file (atomically, by rename) to name it:
a process killed mid-write leaves the previous checkpoint as the latest. On
top of that, resuming checks each recorded checkpoint, newest first (index
readable, data shards present and long enough) and falls back to the previous
one with a warning, so files damaged later (a truncated copy, a full disk)
are never resumed from.
"""

import os
import re

from absl import logging
import numpy as np
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
    latest = latest_checkpoint(path)
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


def checkpoint_number(prefix):
  """N of '.../ckpt-N', or None."""
  match = re.search(r'-(\d+)$', prefix or '')
  return int(match.group(1)) if match else None


def recorded_checkpoints(model_dir):
  """Prefixes of model_dir's checkpoints, newest first: those the state file
  records, or (state file missing) every ckpt-N.index present."""
  if not model_dir or not tf.io.gfile.isdir(model_dir):
    return []
  # get_checkpoint_state already puts model_dir in front of the relative
  # paths of the state file (model_dir itself may be relative).
  state = tf.train.get_checkpoint_state(model_dir)
  if state is not None:
    paths = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
      paths.append(state.model_checkpoint_path)
  else:
    paths = [name[:-len('.index')] for name in
             tf.io.gfile.glob(os.path.join(model_dir, 'ckpt-*.index'))]
  unique = list(dict.fromkeys(paths))
  return sorted(unique, key=lambda path: checkpoint_number(path) or -1,
                reverse=True)


def find_problem(prefix):
  """Why the checkpoint at `prefix` cannot be restored, or None when its index
  reads and its data shards are present and at least as long as the numeric
  tensors the index lists (a cheap check: CRCs are verified when read)."""
  if not tf.io.gfile.exists(prefix + '.index'):
    return 'its .index file is missing'
  try:
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
  except (tf.errors.OpError, ValueError) as error:
    return f'its index cannot be read ({config_lib.first_line(error)})'
  data_files = tf.io.gfile.glob(prefix + '.data-*-of-*')
  if not data_files:
    return 'its data file is missing'
  shards = int(data_files[0].rsplit('-of-', 1)[1])
  if len(data_files) != shards:
    return f'{shards - len(data_files)} of its {shards} data files are missing'
  needed = sum(int(np.prod(shape)) * dtypes[name].size
               for name, shape in shapes.items()
               if dtypes[name] != tf.string)
  present = sum(tf.io.gfile.stat(name).length for name in data_files)
  if present < needed:
    return (f'its data files hold {present} bytes, less than the {needed} '
            'its index lists (truncated)')
  return None


def latest_checkpoint(model_dir):
  """The newest usable checkpoint of this run, or None (see find_problem;
  a skipped one is logged as a warning)."""
  for prefix in recorded_checkpoints(model_dir):
    problem = find_problem(prefix)
    if problem is None:
      return prefix
    logging.warning('Skipping checkpoint %s: %s.', prefix, problem)
  return None


def restore_latest(checkpoint, model_dir):
  """Restores `checkpoint` (a tf.train.Checkpoint) from model_dir's newest
  usable checkpoint, falling back to older ones with a warning.

  Returns the prefix restored, or None when model_dir has no checkpoint.
  Raises CheckpointError when it has checkpoints but none can be restored
  (rather than silently starting again over them).
  """
  problems = []
  for prefix in recorded_checkpoints(model_dir):
    problem = find_problem(prefix)
    if problem is None:
      try:
        checkpoint.restore(prefix).expect_partial()
        if problems:
          logging.warning('Resuming from %s, the newest usable checkpoint.',
                          prefix)
        return prefix
      except (tf.errors.OpError, ValueError) as error:
        problem = f'restoring it failed ({config_lib.first_line(error)})'
    logging.warning('Cannot resume from checkpoint %s: %s; trying the '
                    'previous one.', prefix, problem)
    problems.append(f'{os.path.basename(prefix)}: {problem}')
  if problems:
    raise CheckpointError(
        f'no usable checkpoint in --model_dir {model_dir} ('
        + '; '.join(problems) + '); move them away to start again')
  return None


def remove_partial_checkpoint(prefix):
  """Deletes what a failed write of `prefix` may have left (its _temp shard
  directory, index and data files). Only for a prefix no state file names."""
  leftovers = ([prefix + '_temp'] + tf.io.gfile.glob(prefix + '.index') +
               tf.io.gfile.glob(prefix + '.data-*'))
  for path in leftovers:
    try:
      if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
      elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    except (tf.errors.OpError, OSError) as error:
      logging.warning('Could not remove %s: %s', path,
                      config_lib.first_line(error))


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

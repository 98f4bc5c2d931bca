"""Where weights come from: this run's checkpoints, a given checkpoint, a teacher.

Restore order of a training run (trainer.restore_for_training):
  1. the latest checkpoint in model_dir: model, optimizer slots and global
     step — the run resumes where it stopped (restore_latest);
  2. else --checkpoint: weights only (backbone and projection head, plus the
     supervised head when its class count matches and the stage keeps it;
     reference.load_reference_checkpoint);
  3. else (no --checkpoint, or --checkpoint=scratch) the random
     initialisation.

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

from tf_simclr import errors
from tf_simclr import files
from tf_simclr import preemption

# Keys of the object graph every checkpoint of this project (and of
# google-research/simclr's tf2 code) has: model/..., global_step, optimizer.
VALUE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
GLOBAL_STEP_KEY = 'global_step' + VALUE_SUFFIX
SUPERVISED_HEAD_PREFIX = 'model/supervised_head/'
# Where a SavedModel keeps its variables (a checkpoint prefix).
SAVED_MODEL_VARIABLES = os.path.join('variables', 'variables')
STATE_FILE = 'checkpoint'  # tf.train.CheckpointManager's list of checkpoints.
# --checkpoint=scratch: no initial weights, finetune from a random
# initialisation (the supervised baseline trained on the labeled subset only).
SCRATCH_CHECKPOINT = 'scratch'


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf


class CheckpointError(ValueError):
  """A checkpoint path that cannot be used; the message is one line."""


def resolve_checkpoint(path, verify=True):
  """The checkpoint prefix `path` designates: the one rule of every entry
  (--checkpoint, --teacher_checkpoint, export, the converter, run.py's checks
  before TensorFlow loads), tried in this order:

  1. a checkpoint prefix (`path`.index exists);
  2. a directory with a run's checkpoints (a `checkpoint` state file or
     ckpt-N.index files): the newest, and with `verify` the newest that
     verifies (find_problem; a skipped one is logged);
  3. a SavedModel directory: its variables/variables;
  4. a directory holding exactly one *.index (a released checkpoint's folder).

  verify=False reads no checkpoint contents and, for local paths, imports no
  TensorFlow. Raises CheckpointError (one line) when there is none.
  """
  if not path:
    raise CheckpointError('no checkpoint path given')
  path = os.fspath(path)
  if files.exists(path + '.index'):
    return path
  if not files.isdir(path):
    raise CheckpointError(
        f'no checkpoint at {path}: it does not exist (expected a checkpoint '
        'prefix with a .index file, a model_dir or a SavedModel directory)')
  recorded = recorded_checkpoints(path)
  if recorded:
    if not verify:
      return recorded[0]
    problems = []
    for prefix in recorded:
      problem = find_problem(prefix)
      if problem is None:
        return prefix
      logging.warning('Skipping checkpoint %s: %s.', prefix, problem)
      problems.append(f'{os.path.basename(prefix)}: {problem}')
    raise CheckpointError(f'no usable checkpoint in {path} ('
                          + '; '.join(problems) + ')')
  saved_model = os.path.join(path, SAVED_MODEL_VARIABLES)
  if files.exists(saved_model + '.index'):
    return saved_model
  indexes = files.glob(path, '*.index')
  if len(indexes) == 1:
    return indexes[0][:-len('.index')]
  if not indexes:
    raise CheckpointError(
        f'no checkpoint in directory {path}: it has no "{STATE_FILE}" file, '
        f'no *.index file and no {SAVED_MODEL_VARIABLES}.index')
  names = ', '.join(os.path.basename(name)[:-len('.index')]
                    for name in indexes)
  raise CheckpointError(
      f'directory {path} holds several checkpoints ({names}) and no '
      f'"{STATE_FILE}" file naming the latest; pass the prefix of one')


def checkpoint_number(prefix):
  """N of '.../ckpt-N', or None."""
  match = re.search(r'-(\d+)$', prefix or '')
  return int(match.group(1)) if match else None


def _state_file_paths(model_dir):
  """The checkpoint paths a `checkpoint` state file lists (its text format:
  model_checkpoint_path / all_model_checkpoint_paths lines), relative ones
  joined to model_dir; None when there is no readable state file."""
  state = os.path.join(model_dir, STATE_FILE)
  if not files.exists(state) or files.isdir(state):
    return None
  try:
    text = files.read_text(state)
  except (OSError, UnicodeDecodeError):
    return None
  paths = []
  for match in re.finditer(
      r'^\s*(?:all_)?model_checkpoint_paths?\s*:\s*"((?:[^"\\]|\\.)*)"',
      text, re.MULTILINE):
    value = re.sub(r'\\(.)', r'\1', match.group(1))
    is_absolute = os.path.isabs(value) or files.is_url(value)
    paths.append(value if is_absolute else os.path.join(model_dir, value))
  return paths


def recorded_checkpoints(model_dir):
  """Prefixes of model_dir's checkpoints, newest first: those the state file
  records, or (state file missing) every ckpt-N.index present."""
  if not model_dir or not files.isdir(model_dir):
    return []
  paths = _state_file_paths(model_dir)
  if paths is None:
    paths = [name[:-len('.index')]
             for name in files.glob(model_dir, 'ckpt-*.index')]
  unique = list(dict.fromkeys(paths))
  return sorted(unique, key=lambda path: checkpoint_number(path) or -1,
                reverse=True)


def has_checkpoint(model_dir):
  """True when a run in model_dir would resume rather than start (it has a
  state file naming checkpoints, or ckpt-N.index files)."""
  return bool(recorded_checkpoints(model_dir))


def global_step_of(prefix):
  """The global step a checkpoint recorded (its ckpt-N number, or 0, when it
  holds none)."""
  reader = _tf().train.load_checkpoint(prefix)
  if reader.has_tensor(GLOBAL_STEP_KEY):
    return int(reader.get_tensor(GLOBAL_STEP_KEY))
  return checkpoint_number(prefix) or 0


def has_supervised_head(prefix):
  """True when the checkpoint holds a supervised (linear) head."""
  return any(name.startswith(SUPERVISED_HEAD_PREFIX)
             for name, _ in _tf().train.list_variables(prefix))


def find_problem(prefix):
  """Why the checkpoint at `prefix` cannot be restored, or None when its index
  reads and its data shards are present and at least as long as the numeric
  tensors the index lists (a cheap check: CRCs are verified when read)."""
  tf = _tf()
  if not tf.io.gfile.exists(prefix + '.index'):
    return 'its .index file is missing'
  try:
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
  except (tf.errors.OpError, ValueError) as error:
    return f'its index cannot be read ({errors.first_line(error)})'
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
  """The newest usable checkpoint of this run, or None (resolve_checkpoint's
  rule 2: a skipped one is logged as a warning)."""
  if not recorded_checkpoints(model_dir):
    return None
  try:
    return resolve_checkpoint(model_dir)
  except CheckpointError:
    return None


def restore_latest(checkpoint, model_dir):
  """Restores `checkpoint` (a tf.train.Checkpoint) from model_dir's newest
  usable checkpoint, falling back to older ones with a warning.

  Returns the prefix restored, or None when model_dir has no checkpoint.
  Raises CheckpointError when it has checkpoints but none can be restored
  (rather than silently starting again over them).
  """
  tf = _tf()
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
        problem = f'restoring it failed ({errors.first_line(error)})'
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
  tf = _tf()
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
                      errors.first_line(error))


class SafeSaver:
  """Writes a run's checkpoints through `manager` (a CheckpointManager):
  never rewrites an existing checkpoint in place, never writes non-finite
  weights (`variables_fn()`: the model's and the optimizer's), and a failed write
  removes its partial files and leaves earlier checkpoints as they were.
  Both failures raise preemption.TrainingError."""

  def __init__(self, manager, variables_fn):
    self.manager = manager
    self._variables_fn = variables_fn
    self._last_saved_step = None

  def _weights_finite(self):
    # Eager: a tf.function would be traced again for every run's variables.
    tf = _tf()
    floating = [v for v in self._variables_fn() if v.dtype.is_floating]
    return bool(tf.reduce_all(tf.stack(
        [tf.reduce_all(tf.math.is_finite(v)) for v in floating])))

  def saved(self, step):
    """Records that the checkpoint of `step` exists (a resumed run)."""
    self._last_saved_step = step

  def save(self, step):
    """Writes the checkpoint of `step` unless it exists; returns its path."""
    tf = _tf()
    manager = self.manager
    if self._last_saved_step == step:
      return manager.latest_checkpoint
    if not self._weights_finite():
      raise preemption.TrainingError(
          f'weights became NaN/Inf by step {step}; stopped without saving, '
          f'last good checkpoint: {manager.latest_checkpoint or "none"}')
    try:
      path = manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as error:
      remove_partial_checkpoint(os.path.join(manager.directory,
                                             f'ckpt-{step}'))
      raise preemption.TrainingError(
          f'could not write the checkpoint of step {step} to '
          f'{manager.directory}: {errors.first_line(error)}; earlier '
          f'checkpoints are intact (latest: '
          f'{manager.latest_checkpoint or "none"})') from error
    self._last_saved_step = step
    return path

"""The checks run.py makes before TensorFlow loads, so that a mistake in a path
is reported in about a second: model_dir writable, --checkpoint and
--teacher_checkpoint resolvable, the architecture saved in model_dir and next
to --checkpoint the same as the flags', --data_dir and --export_dir usable.
Then those that need TensorFlow, made before anything is built or written:
the GPUs there are, the strategy's replica count, the dataset's splits and
classes. Raises config.ConfigError, whose message names the flag.
"""

import math
import os
from typing import Optional

from tf_simclr import architecture as architecture_lib
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import errors
from tf_simclr import files
from tf_simclr import stages

# Fields that decide the backbone's variables: a --checkpoint must match them.
BACKBONE_FIELDS = architecture_lib.ModelConfig.BACKBONE_FIELDS
# sources.IMAGE_FOLDER (sources imports TensorFlow).
IMAGE_FOLDER = 'image_folder'


def _checkpoint_architecture(path: str) -> Optional[dict]:
  """config.json of the model_dir a --checkpoint path belongs to, if any."""
  directory = path if files.isdir(path) else os.path.dirname(path)
  if not directory:
    directory = '.'
  return config_lib.read_architecture(directory)


def check_model_dir_writable(model_dir: str):
  """Creates model_dir and writes and removes a probe file there; raises
  config.ConfigError saying why when that fails (read-only, a file in the
  way, ...)."""
  probe = os.path.join(model_dir, f'.write_probe_{os.getpid()}')
  try:
    if files.is_url(model_dir):
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      tf.io.gfile.makedirs(model_dir)
      with tf.io.gfile.GFile(probe, 'w') as f:
        f.write('probe')
      tf.io.gfile.remove(probe)
    else:
      os.makedirs(model_dir, exist_ok=True)
      with open(probe, 'w') as f:
        f.write('probe')
        f.flush()
        os.fsync(f.fileno())
      os.remove(probe)
  except Exception as error:  # pylint: disable=broad-except
    raise config_lib.ConfigError(
        f'--model_dir {model_dir} is not writable: '
        f'{errors.first_line(error)}') from error


def _nearest_existing(path: str) -> str:
  """`path`, or its closest ancestor that exists."""
  path = os.path.abspath(path)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def resolve_checkpoint(path: str) -> str:
  """checkpoints.resolve_checkpoint without reading the checkpoint; a file
  that is none of its kinds (a text file, a .data shard) said to be one."""
  if (path and not files.is_url(path) and os.path.isfile(path) and
      not files.exists(path + '.index')):
    raise checkpoints.CheckpointError(
        f'no checkpoint at {path}: it is a file, not a checkpoint prefix '
        '(PREFIX.index), a model_dir or a SavedModel directory')
  return checkpoints.resolve_checkpoint(path, verify=False)


def check_output_location(flag: str, path: str, kind: str = 'directory'):
  """Raises ConfigError when `path` (a local `kind`: 'directory' or 'file')
  cannot be written: a file where a directory is wanted or the reverse, or
  a file (or a read-only directory) where it would be created. Creates
  nothing. URLs are left to the writer."""
  if files.is_url(path):
    return
  if os.path.exists(path):
    if kind == 'directory' and not os.path.isdir(path):
      raise config_lib.ConfigError(f'--{flag} {path} is a file, not a '
                                   'directory')
    if kind == 'file' and os.path.isdir(path):
      raise config_lib.ConfigError(f'--{flag} {path} is a directory; give '
                                   'the path of a file')
  directory = path if kind == 'directory' else (os.path.dirname(path) or '.')
  existing = _nearest_existing(directory)
  if not os.path.isdir(existing):
    raise config_lib.ConfigError(f'--{flag} {path} cannot be created: '
                                 f'{existing} is a file')
  if not os.access(existing, os.W_OK):
    raise config_lib.ConfigError(f'--{flag} {path} is not writable: '
                                 f'{existing} is read-only')


def check_data_dir(config: config_lib.Config):
  """--data_dir: the root of an image folder must be a directory holding
  split folders; any other given --data_dir (TFDS's) must not be a file."""
  data_dir = config.data_dir
  if config.dataset == IMAGE_FOLDER:
    if not data_dir:
      raise config_lib.ConfigError(
          f'--dataset={IMAGE_FOLDER} needs --data_dir=ROOT holding '
          'ROOT/split/class/image files')
    if files.is_url(data_dir):
      return
    if not os.path.exists(data_dir):
      raise config_lib.ConfigError(f'--data_dir {data_dir} does not exist')
    if not os.path.isdir(data_dir):
      raise config_lib.ConfigError(f'--data_dir {data_dir} is a file, not '
                                   'an image folder')
    if not any(os.path.isdir(os.path.join(data_dir, name))
               for name in os.listdir(data_dir)):
      raise config_lib.ConfigError(
          f'--data_dir {data_dir} holds no split folders: expected '
          f'{data_dir}/SPLIT/CLASS/IMAGE files')
  elif data_dir and not files.is_url(data_dir) and os.path.isfile(data_dir):
    raise config_lib.ConfigError(f'--data_dir {data_dir} is a file, not a '
                                 'directory')


def check_paths(config: config_lib.Config):
  """Every check of this module, in order (TensorFlow is not imported):
  model_dir writable; --checkpoint and --teacher_checkpoint exist; the
  architecture saved in model_dir and next to --checkpoint matches the flags;
  a stage or mode that needs weights has some. Raises config.ConfigError.

  Checkpoint paths are resolved by checkpoints.resolve_checkpoint, the rule
  the trainer, the teacher and the exporter use (here without reading the
  checkpoints' contents: their verification comes with TensorFlow).
  --checkpoint=scratch (checkpoints.SCRATCH_CHECKPOINT) is not a path."""
  model_dir = config.model_dir
  check_model_dir_writable(model_dir)
  resumes = checkpoints.has_checkpoint(model_dir)

  def resolves(path):
    try:
      resolve_checkpoint(path)
      return True
    except checkpoints.CheckpointError as error:
      return error

  check_data_dir(config)
  architecture = config.architecture()
  if not config.num_classes:  # Taken from the dataset later: not known here.
    del architecture['num_classes']
  config_lib.check_saved_architecture(model_dir, architecture)
  saved = config_lib.read_architecture(model_dir) or {}
  if (resumes and config.mode != 'eval' and saved.get('train_mode') and
      saved['train_mode'] != config.train_mode):
    # It would resume another stage's checkpoint (and its optimizer).
    raise config_lib.ConfigError(
        f'--model_dir {model_dir} holds a {saved["train_mode"]} run and '
        f'--train_mode={config.train_mode} would resume its checkpoint: '
        f'use another --model_dir (with --checkpoint={model_dir} to start '
        'from it)')
  if config.checkpoint and config.checkpoint != checkpoints.SCRATCH_CHECKPOINT:
    problem = resolves(config.checkpoint)
    if problem is not True:
      raise config_lib.ConfigError(f'--checkpoint: {problem}')
    source = _checkpoint_architecture(config.checkpoint)
    if source is not None:
      wanted = config.architecture()
      saved_source = dict(source)
      if 'image_size' in source:  # Only the stem depends on it.
        saved_source['cifar_stem'] = architecture_lib.uses_cifar_stem(
            source['image_size'])
        wanted['cifar_stem'] = architecture_lib.uses_cifar_stem(
            config.image_size)
      differences = config_lib.architecture_differences(
          saved_source, wanted, BACKBONE_FIELDS + ('cifar_stem',))
      if differences:
        raise config_lib.ConfigError(
            f'--checkpoint {config.checkpoint} holds a model with ' +
            ', '.join(differences) + '; use the flags it was trained with')
  stage = stages.STAGES[config.train_mode]
  if stage.needs_teacher:
    problem = resolves(config.teacher_checkpoint)
    if problem is not True:
      raise config_lib.ConfigError(f'--teacher_checkpoint: {problem}')
  if (stage.needs_initial_weights and config.mode != 'eval' and
      not config.checkpoint and not resumes):
    raise config_lib.ConfigError(
        '--train_mode=finetune needs --checkpoint (a pretrain model_dir or '
        f'checkpoint) when --model_dir {model_dir} has no checkpoint')
  if config.mode == 'eval' and not resumes:
    raise config_lib.ConfigError(
        f'--mode=eval needs a checkpoint in --model_dir {model_dir}, and it '
        'has none')


# ---------------------------------------------------------------- with TensorFlow
def check_devices(config: config_lib.Config):
  """--num_gpus is at most the GPUs TensorFlow sees (before the strategy is
  made: a MirroredStrategy over missing GPUs is only refused later)."""
  if config.strategy != 'mirrored' or not config.num_gpus:
    return
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  available = len(tf.config.list_physical_devices('GPU'))
  if config.num_gpus > available:
    raise config_lib.ConfigError(
        f'--num_gpus={config.num_gpus} but TensorFlow sees {available} '
        'GPUs here')


def check_strategy(config: config_lib.Config, strategy):
  """The global batches split evenly over the strategy's replicas (what the
  flags could not tell: all local GPUs, a TPU, several devices a worker)."""
  replicas = strategy.num_replicas_in_sync
  if replicas > 1:
    config.check_replicas(
        replicas, f'the {replicas} replicas of --strategy={config.strategy}')


def _data_error(flag, error):
  return config_lib.ConfigError(f'{flag}: {errors.first_line(error)}')


def check_data(config: config_lib.Config):
  """The dataset opens, the splits the run reads exist, --eval_steps fits
  in --eval_split, --num_classes covers the dataset's labels, and a
  model_dir's saved class count is the one this run would build. TFDS
  datasets are prepared here if they were not (the trainer would)."""
  from tf_simclr import sources  # pylint: disable=import-outside-toplevel
  stage = stages.STAGES[config.train_mode]
  flag = f'--dataset={config.dataset}'
  try:
    source = sources.source(config.dataset, config.data_dir,
                            config.skip_bad_images)
  except ValueError as error:  # DataError, or TFDS on a malformed name.
    raise _data_error(flag, error) from None
  splits = [('train_split', config.train_split)]
  if config.evaluates() or (stage.knn_monitor and config.knn_every_steps):
    splits.append(('eval_split', config.eval_split))
  if stage.needs_teacher and config.unlabeled_split:
    splits.append(('unlabeled_split', config.unlabeled_split))
  for name, split in splits:
    try:
      source.check_split(split)
    except sources.DataError as error:
      raise _data_error(f'--{name}', error) from None
  if config.evaluates() and config.eval_steps:
    examples = source.num_examples(config.eval_split)
    batches = math.ceil(examples / config.eval_batch_size)
    if config.eval_steps > batches:
      raise config_lib.ConfigError(
          f'--eval_steps={config.eval_steps} batches of '
          f'--eval_batch_size={config.eval_batch_size} is more than '
          f'--eval_split={config.eval_split} holds ({examples} examples, '
          f'{batches} batch{"" if batches == 1 else "es"}): lower it, or 0 '
          'for the whole split')
  classes = source.info.num_classes
  if config.num_classes and config.num_classes < classes:
    raise config_lib.ConfigError(
        f'--num_classes={config.num_classes} is fewer than the {classes} '
        f'classes of {flag} (labels 0..{classes - 1})')
  # With --num_classes=0 the class count comes from the dataset, which
  # check_paths could not read: a resumed model must keep its own.
  saved = config_lib.read_architecture(config.model_dir) or {}
  built = config.num_classes or classes
  if saved.get('num_classes') not in (None, built):
    source_of_count = ('--num_classes' if config.num_classes else
                       f'the classes of {flag}')
    raise config_lib.ConfigError(
        f'--model_dir {config.model_dir} holds a model with num_classes='
        f'{saved["num_classes"]} and this run would build {built} '
        f'({source_of_count}): use --num_classes={saved["num_classes"]} or '
        'another --model_dir')

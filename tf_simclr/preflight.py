"""The checks run.py makes before TensorFlow loads, so that a mistake in a path
is reported in about a second: model_dir writable, --checkpoint and
--teacher_checkpoint resolvable, the architecture saved in model_dir and next
to --checkpoint the same as the flags'. Raises config.ConfigError.
"""

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
      checkpoints.resolve_checkpoint(path, verify=False)
      return True
    except checkpoints.CheckpointError as error:
      return error

  architecture = config.architecture()
  if not config.num_classes:  # Taken from the dataset later: not known here.
    del architecture['num_classes']
  config_lib.check_saved_architecture(model_dir, architecture)
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

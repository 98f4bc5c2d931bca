"""The frozen teacher of distillation: images -> logits, inference mode only.

Accepted `--teacher_checkpoint` values:
  * a finetune model_dir of this project (config.json rebuilds the network);
  * a SavedModel exported by this project (hub module or serving model: both
    carry `all_outputs(images)`);
  * a google-research/simclr tf2 checkpoint or a released SimCLRv2 TF2
    SavedModel (its architecture is read off the variable shapes).
The teacher is never attached to the student's tf.train.Checkpoint, so it is
never saved with the student.
"""

import os

import tensorflow as tf

from tf_simclr import architecture as architecture_lib
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import model as model_lib


class Teacher:
  """Callable images float32 [N, H, W, 3] in [0, 1] -> logits float32 [N, C].

  Attributes:
    num_classes: C.
    source: where the weights came from.
  """

  def __init__(self, logits_fn, num_classes, source, model=None):
    self._logits_fn = logits_fn
    self.num_classes = num_classes
    self.source = source
    self.model = model

  def __call__(self, images):
    return tf.cast(self._logits_fn(images), tf.float32)


def _is_saved_model(path):
  return tf.io.gfile.exists(os.path.join(path, 'saved_model.pb'))


def _from_model_dir(path, architecture):
  record = architecture_lib.ModelConfig.from_dict(architecture)
  if not record.num_classes:
    raise checkpoints.CheckpointError(
        f'teacher {path} has no supervised head (a pretrain run?); distill '
        f'from a finetune model_dir or export')
  model = model_lib.build_model(record, supervised_training=True)
  prefix = checkpoints.resolve_checkpoint(path)
  tf.train.Checkpoint(model=model).read(prefix).expect_partial(
  ).assert_existing_objects_matched()
  return model, record.num_classes, prefix


def load_teacher(path, num_classes=None):
  """Loads the teacher at `path` (see the module docstring).

  Args:
    path: model_dir, SavedModel directory or checkpoint prefix.
    num_classes: the student's class count; a different teacher count raises.
  """
  if not path:
    raise checkpoints.CheckpointError('no --teacher_checkpoint given')
  checkpoints.resolve_checkpoint(path, verify=False)  # Raises when absent.
  architecture = (config_lib.read_architecture(path)
                  if tf.io.gfile.isdir(path) else None)
  if architecture is not None:
    model, teacher_classes, source = _from_model_dir(path, architecture)
  else:
    exported = _from_export(path) if _is_saved_model(path) else None
    if exported is not None:
      return _check_classes(exported, num_classes)
    model, teacher_classes, source = _from_reference(path)

  def model_logits(images):
    return model(images, training=False)[model_lib.LOGITS_SUP]
  return _check_classes(Teacher(model_logits, teacher_classes, source, model),
                        num_classes)


def _from_export(path):
  """A SavedModel exported by this project, or None for any other one."""
  loaded = tf.saved_model.load(path)
  if not hasattr(loaded, 'all_outputs'):
    return None
  if not int(loaded.num_classes.numpy()):
    raise checkpoints.CheckpointError(
        f'teacher {path} was exported without a supervised head')

  def logits_fn(images):
    return loaded.all_outputs(images)[model_lib.LOGITS_SUP]
  teacher = Teacher(logits_fn, int(loaded.num_classes.numpy()), path)
  teacher.loaded = loaded  # Keeps the restored variables alive.
  return teacher


def _from_reference(path):
  """A google-research/simclr checkpoint or released SavedModel."""
  from tf_simclr import reference  # pylint: disable=import-outside-toplevel
  prefix = checkpoints.resolve_checkpoint(path)
  record = architecture_lib.ModelConfig.from_dict(
      reference.describe_reference(prefix))
  if not record.num_classes:
    raise checkpoints.CheckpointError(
        f'teacher {path} has no supervised head; distill from a fine-tuned '
        f'checkpoint')
  model = model_lib.build_model(record, supervised_training=True)
  reference.load_reference_checkpoint(model, prefix)
  return model, record.num_classes, prefix


def _check_classes(teacher, num_classes):
  if num_classes and teacher.num_classes != num_classes:
    raise checkpoints.CheckpointError(
        f'teacher has {teacher.num_classes} classes, the student '
        f'{num_classes}: distill on the dataset the teacher was fine-tuned on')
  return teacher

"""export_model and export_from_model_dir: layout, atomic writes, pruning.

Layout under export_dir:

  hub/proj_head_<k>/     k = 0..N: TF-Hub reusable SavedModel whose default
                         output is the representation at projection-head
                         depth k (k = 0: final_avg_pool), fine-tunable with
                         hub.KerasLayer(path, trainable=True). Holds the
                         latest export.
  saved_model/<step>/    TF Serving model base path `saved_model` with integer
                         versions; signatures serving_default (encoded image
                         bytes) and serving_float (float images). At most
                         keep_max versions are kept.

Each SavedModel is written to a temporary sibling directory (a name TF Serving
ignores) and renamed into place, so no reader sees a half-written one; when
anything fails, the temporary directories are removed and nothing changes.

What is inside each SavedModel: modules.py beside this file.
"""

import json
import os
import uuid

import tensorflow as tf

from tf_simclr.export import modules
from tf_simclr import architecture as architecture_lib
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import errors
from tf_simclr import model as model_lib

HUB_DIR = 'hub'
SAVED_MODEL_DIR = 'saved_model'
TEMPORARY_PREFIX = '.tmp-'
EXPORT_INFO = os.path.join('assets.extra', 'export_info.json')
TRAIN_MODES = config_lib.TRAIN_MODES

class ExportError(ValueError):
  """An export that cannot run (bad path or input); the message is one line."""


def hub_module_dir(export_dir, depth):
  return os.path.join(export_dir, HUB_DIR, f'proj_head_{depth}')


def saved_model_versions(export_dir):
  """The integer versions under export_dir/saved_model, ascending."""
  base = os.path.join(export_dir, SAVED_MODEL_DIR)
  if not tf.io.gfile.isdir(base):
    return []
  return sorted(int(name.rstrip('/')) for name in tf.io.gfile.listdir(base)
                if name.rstrip('/').isdigit())


# ---------------------------------------------------------------- writing
def _temporary_sibling(path):
  parent, name = os.path.split(path)
  return os.path.join(parent, f'{TEMPORARY_PREFIX}{name}-{uuid.uuid4().hex[:8]}')


def _save(obj, directory, info):
  tf.saved_model.save(obj, directory, signatures=modules.signatures(obj))
  tf.io.gfile.makedirs(os.path.dirname(os.path.join(directory, EXPORT_INFO)))
  with tf.io.gfile.GFile(os.path.join(directory, EXPORT_INFO), 'w') as f:
    json.dump(info, f, indent=1, sort_keys=True)


def _move_into_place(temporary, final):
  """Renames `temporary` to `final`, replacing an existing `final`. The old
  directory is moved aside first (a directory rename cannot replace a
  non-empty one), so a reader sees the old or the new SavedModel, never a mix."""
  if tf.io.gfile.exists(final):
    aside = _temporary_sibling(final)
    tf.io.gfile.rename(final, aside)
    tf.io.gfile.rename(temporary, final)
    tf.io.gfile.rmtree(aside)
  else:
    tf.io.gfile.rename(temporary, final)


def _check_writable(export_dir):
  try:
    tf.io.gfile.makedirs(export_dir)
    probe = os.path.join(export_dir, f'{TEMPORARY_PREFIX}probe-{uuid.uuid4().hex[:8]}')
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('')
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as error:
    raise ExportError(f'export_dir {export_dir} is not writable: '
                      f'{getattr(error, "message", error)}') from None


def _prune(export_dir, keep_max):
  """Removes the oldest saved_model versions beyond keep_max (0: keep all)."""
  if keep_max <= 0:
    return []
  pruned = []
  for version in saved_model_versions(export_dir)[:-keep_max]:
    path = os.path.join(export_dir, SAVED_MODEL_DIR, str(version))
    tf.io.gfile.rmtree(path)
    pruned.append(path)
  return pruned


def _remove_stale_hub_modules(export_dir, depth):
  """Removes hub/proj_head_k for k > depth (left by an earlier architecture)."""
  hub = os.path.join(export_dir, HUB_DIR)
  if not tf.io.gfile.isdir(hub):
    return
  for name in tf.io.gfile.listdir(hub):
    name = name.rstrip('/')
    suffix = name[len('proj_head_'):]
    if name.startswith('proj_head_') and suffix.isdigit() and int(suffix) > depth:
      tf.io.gfile.rmtree(os.path.join(hub, name))


# ---------------------------------------------------------------- public API
def export_model(model, export_dir, *, image_size, step, train_mode,
                 class_names=None, keep_max=1, overwrite=False):
  """Exports `model` (a SimCLRModel) under export_dir.

  Args:
    model: the trained SimCLRModel (may live under a distribution strategy,
      with global BN or mixed precision; a float32 copy is exported). Call
      this outside `strategy.scope()`.
    export_dir: where hub/ and saved_model/ go (local path or any tf.io.gfile
      file system).
    image_size: the training image size; serving signatures resize to it.
    step: the global step, the serving version number (int >= 0).
    train_mode: 'pretrain', 'finetune' or 'distill'; pretrain exports serve
      features (final_avg_pool, proj_head_output).
    class_names: names of the supervised head's classes, or None.
    keep_max: most saved_model versions kept (the oldest are removed);
      0 keeps all.
    overwrite: replace an existing saved_model/<step>; without it an existing
      version is left as it is and nothing is written.

  Returns:
    JSON-serialisable dict: step, saved_model (path), hub (paths, by depth),
    written (False when the version existed), pruned (removed versions).
  """
  if train_mode not in TRAIN_MODES:
    raise ExportError(f'train_mode must be one of {", ".join(TRAIN_MODES)}, '
                      f'got {train_mode!r}')
  step = int(step)
  if step < 0:
    raise ExportError(f'step must be >= 0, got {step}')
  depth = model.projection_head.depth
  version_dir = os.path.join(export_dir, SAVED_MODEL_DIR, str(step))
  hub_dirs = [hub_module_dir(export_dir, k) for k in range(depth + 1)]
  result = {'step': step, 'saved_model': version_dir, 'hub': hub_dirs,
            'written': False, 'pruned': []}
  if tf.io.gfile.exists(version_dir) and not overwrite:
    return result
  _check_writable(export_dir)

  network = modules.inference_copy(model, image_size)
  all_outputs = modules.all_outputs_function(network)
  class_names = tuple(class_names) if class_names else None
  info = {'step': step, 'train_mode': train_mode, 'image_size': image_size,
          'num_classes': (network.supervised_head.num_classes
                          if network.has_supervised_head else 0),
          'projection_head_depth': depth,
          'class_names': list(class_names) if class_names else None}

  staged = []  # (temporary, final)
  try:
    temporary = _temporary_sibling(version_dir)
    tf.io.gfile.makedirs(os.path.dirname(temporary))
    staged.append((temporary, version_dir))
    _save(modules.serving_model(network, all_outputs, step=step,
                                image_size=image_size, train_mode=train_mode,
                                class_names=class_names),
          temporary, dict(info, kind='serving'))
    for k, final in enumerate(hub_dirs):
      temporary = _temporary_sibling(final)
      tf.io.gfile.makedirs(os.path.dirname(temporary))
      staged.append((temporary, final))
      _save(modules.hub_module(network, all_outputs, k, step=step,
                               image_size=image_size),
            temporary, dict(info, kind='hub', depth=k,
                            output=modules.hub_output_key(k)))
  except BaseException:
    for temporary, _ in staged:
      if tf.io.gfile.exists(temporary):
        tf.io.gfile.rmtree(temporary)
    raise

  for temporary, final in staged:
    _move_into_place(temporary, final)
  _remove_stale_hub_modules(export_dir, depth)
  result['written'] = True
  result['pruned'] = _prune(export_dir, keep_max)
  return result


def export_from_model_dir(model_dir, export_dir, *, checkpoint=None,
                          image_size=None, step=None, train_mode=None,
                          class_names=None, keep_max=1, overwrite=False):
  """Rebuilds the model of `model_dir` from its config.json (global BN off),
  restores `checkpoint` (default: the latest checkpoint in model_dir) and
  exports it with export_model.

  image_size, train_mode and class_names default to config.json's; step to
  the checkpoint's global step. Raises ExportError on bad input.
  """
  if not tf.io.gfile.isdir(model_dir):
    raise ExportError(f'model_dir {model_dir} does not exist')
  architecture = config_lib.read_architecture(model_dir)
  if architecture is None:
    raise ExportError(f'{os.path.join(model_dir, config_lib.CONFIG_FILENAME)} '
                      f'not found: is {model_dir} a model_dir written by run.py?')
  try:
    prefix = checkpoints.resolve_checkpoint(checkpoint or model_dir)
  except checkpoints.CheckpointError as error:
    raise ExportError(str(error)) from None
  if 'image_size' not in architecture and not image_size:
    raise ExportError(f'config.json in {model_dir} has no image_size')
  record = architecture_lib.ModelConfig.from_dict(architecture)
  if not checkpoints.has_supervised_head(prefix):
    record = record.replace(num_classes=0)  # Pretrained without linear eval.
  image_size = image_size or record.image_size
  model = model_lib.build_model(record, global_bn=False)
  try:
    tf.train.Checkpoint(model=model).read(prefix).expect_partial(
    ).assert_existing_objects_matched()
  except (AssertionError, ValueError) as error:
    raise ExportError(f'checkpoint {prefix} does not match the architecture '
                      f'in config.json: {errors.first_line(error)}') from None
  return export_model(
      model, export_dir, image_size=image_size,
      step=checkpoints.global_step_of(prefix) if step is None else step,
      train_mode=train_mode or architecture.get('train_mode', 'pretrain'),
      class_names=(class_names if class_names is not None
                   else architecture.get('class_names')),
      keep_max=keep_max, overwrite=overwrite)

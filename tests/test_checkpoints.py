"""One rule turns a path into a checkpoint (tf_simclr.checkpoints.resolve_checkpoint).

Every entry that takes a path — run.py's checks before TensorFlow loads
(--checkpoint, --teacher_checkpoint), the trainer's --checkpoint restore, the
reference loader, the teacher and the exporter — must find the same checkpoint
in the same directory, or fail on the same directories.
"""

import os
import shutil

import pytest
import tensorflow as tf

from tf_simclr import build_model
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import preflight
from tf_simclr import reference
from tf_simclr import teacher as teacher_lib
from tf_simclr import trainer as trainer_lib

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures',
                       'reference_simclr_tf2', 'r18_w0.125_sk0_cifar_32px')
SUFFIXES = ('.index', '.data-00000-of-00001')


def _copy_checkpoint(prefix):
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  for suffix in SUFFIXES:
    shutil.copy(os.path.join(FIXTURE, 'ckpt' + suffix), prefix + suffix)


def _layouts(root):
  """{name: (path, expected prefix or None when no checkpoint is there)}."""
  layouts = {}
  # A model_dir: two checkpoints and TensorFlow's state file naming them.
  run = os.path.join(root, 'model_dir')
  for step in (1, 2):
    _copy_checkpoint(os.path.join(run, f'ckpt-{step}'))
  with open(os.path.join(run, 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: "ckpt-2"\n'
            'all_model_checkpoint_paths: "ckpt-1"\n'
            'all_model_checkpoint_paths: "ckpt-2"\n')
  layouts['model_dir'] = (run, os.path.join(run, 'ckpt-2'))
  # The same with its newest checkpoint truncated: the one before is used.
  damaged = os.path.join(root, 'damaged')
  shutil.copytree(run, damaged)
  with open(os.path.join(damaged, 'ckpt-2.data-00000-of-00001'), 'r+b') as f:
    f.truncate(100)
  layouts['damaged newest'] = (damaged, os.path.join(damaged, 'ckpt-1'))
  # ckpt-N files without a state file.
  stateless = os.path.join(root, 'stateless')
  for step in (3, 10):
    _copy_checkpoint(os.path.join(stateless, f'ckpt-{step}'))
  layouts['no state file'] = (stateless, os.path.join(stateless, 'ckpt-10'))
  saved_model = os.path.join(root, 'saved_model')
  _copy_checkpoint(os.path.join(saved_model, 'variables', 'variables'))
  layouts['SavedModel'] = (saved_model,
                           os.path.join(saved_model, 'variables', 'variables'))
  single = os.path.join(root, 'released')
  _copy_checkpoint(os.path.join(single, 'model.ckpt'))
  layouts['one *.index'] = (single, os.path.join(single, 'model.ckpt'))
  layouts['prefix'] = (os.path.join(run, 'ckpt-1'), os.path.join(run, 'ckpt-1'))
  several = os.path.join(root, 'several')
  for name in ('a', 'b'):
    _copy_checkpoint(os.path.join(several, name))
  layouts['several, no state'] = (several, None)
  os.makedirs(os.path.join(root, 'empty'))
  layouts['empty'] = (os.path.join(root, 'empty'), None)
  layouts['missing'] = (os.path.join(root, 'missing'), None)
  return layouts


def _run_checks(path, model_dir, train_mode):
  """run.py's checks before TensorFlow loads: None when they accept `path`."""
  flags = ({'checkpoint': path} if train_mode == 'finetune' else
           {'teacher_checkpoint': path, 'checkpoint': 'scratch'})
  config = config_lib.Config(
      train_mode=train_mode, model_dir=model_dir, dataset='synthetic',
      image_size=32, resnet_depth=18, width_multiplier=0.125,
      **flags).validate()
  try:
    preflight.check_paths(config)
  except config_lib.ConfigError as error:
    return error
  return None


def _restore_for_training(model, path, tmp_path):
  """The trainer's start from --checkpoint `path` in a new model_dir: the
  prefix it read."""
  model_dir = tmp_path / 'fresh_model_dir'
  how, prefix = trainer_lib.restore_for_training(
      tf.train.Checkpoint(model=model), model, str(model_dir), path)
  assert how == 'initialised'
  return prefix


def test_every_entry_resolves_a_path_the_same_way(tmp_path):
  model = build_model(10, resnet_depth=18, width_multiplier=0.125,
                      image_size=32, global_bn=False)
  model(tf.zeros([1, 32, 32, 3]), training=False)
  for name, (path, expected) in _layouts(str(tmp_path / 'layouts')).items():
    model_dir = str(tmp_path / 'runs' / name.replace(' ', '_'))
    if expected is None:
      with pytest.raises(checkpoints.CheckpointError):
        checkpoints.resolve_checkpoint(path)
      with pytest.raises(checkpoints.CheckpointError):
        reference.load_reference_checkpoint(model, path)
      with pytest.raises(checkpoints.CheckpointError):
        teacher_lib.load_teacher(path, 10)
      with pytest.raises(checkpoints.CheckpointError):
        _restore_for_training(model, path, tmp_path)
      for mode in ('finetune', 'distill'):
        assert _run_checks(path, model_dir, mode) is not None, (name, mode)
      continue
    answers = {
        'resolve_checkpoint': checkpoints.resolve_checkpoint(path),
        'reference loader': reference.load_reference_checkpoint(
            model, path).prefix,
        'teacher': teacher_lib.load_teacher(path, 10).source,
        '--checkpoint restore': _restore_for_training(model, path, tmp_path),
    }
    assert set(answers.values()) == {expected}, (name, answers)
    for mode in ('finetune', 'distill'):
      assert _run_checks(path, model_dir, mode) is None, (name, mode)
    # The check before TensorFlow does not read contents: it names the newest
    # recorded checkpoint, which the others verify.
    unverified = checkpoints.resolve_checkpoint(path, verify=False)
    if name == 'damaged newest':
      assert unverified == os.path.join(path, 'ckpt-2')
    else:
      assert unverified == expected, name


def test_errors_say_what_is_wrong(tmp_path):
  layouts = _layouts(str(tmp_path))
  messages = {}
  for name in ('several, no state', 'empty', 'missing'):
    with pytest.raises(checkpoints.CheckpointError) as error:
      checkpoints.resolve_checkpoint(layouts[name][0])
    messages[name] = str(error.value)
  assert 'several checkpoints (a, b)' in messages['several, no state']
  assert messages['empty'].startswith('no checkpoint in directory')
  assert messages['missing'].startswith('no checkpoint at')
  assert 'does not exist' in messages['missing']
  assert all('\n' not in message for message in messages.values())
  # Every checkpoint of a model_dir damaged: one line naming each problem.
  run = layouts['damaged newest'][0]
  os.remove(os.path.join(run, 'ckpt-1.index'))
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'no usable checkpoint .*ckpt-2: .*ckpt-1: its '
                           r'\.index file is missing'):
    checkpoints.resolve_checkpoint(run)
  assert checkpoints.latest_checkpoint(run) is None


def test_state_file_reading_matches_tensorflow(tmp_path):
  """The state file is read without TensorFlow; TensorFlow's own reader
  agrees on the checkpoints a CheckpointManager recorded."""
  variable = tf.Variable(1.0)
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(v=variable), str(tmp_path), max_to_keep=3)
  for step in (5, 7, 12, 20):
    manager.save(checkpoint_number=step)
  state = tf.train.get_checkpoint_state(str(tmp_path))
  assert checkpoints.recorded_checkpoints(str(tmp_path)) == sorted(
      state.all_model_checkpoint_paths, reverse=True,
      key=checkpoints.checkpoint_number)
  assert checkpoints.resolve_checkpoint(str(tmp_path)) == (
      tf.train.latest_checkpoint(str(tmp_path)))
  assert checkpoints.has_checkpoint(str(tmp_path))
  assert not checkpoints.has_checkpoint(str(tmp_path / 'absent'))

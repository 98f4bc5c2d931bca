"""run.py's refusals that need TensorFlow, run in one process (used only by
tests/test_flag_errors.py): one TensorFlow start-up for all of them.

  python tests/flag_error_run.py WORK_DIR CASES_JSON

First writes WORK_DIR/model, a model_dir as a pretraining run leaves it (a
checkpoint, config.json, a TensorBoard event file and an export), and
WORK_DIR/two_classes, an image folder of 2 classes. Then runs each case
(`{"name", "flags"}`, `{model}` and `{work}` in the flags replaced) through
run.py's own run() (tf_simclr.cli.run, as `python run.py` does), where the
strategy `mirrored` without --num_gpus or --cpu_replicas stands for a
machine with 2 GPUs (2 logical CPUs) and the Trainer is replaced by an
exception: a case that reaches it was not refused. Prints one JSON line:
{"cases": [{"name", "status", "stderr"}], "model_dir": {path: sha256}
before and after the cases}.
"""

import contextlib
import hashlib
import io
import json
import os
import sys
import traceback

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

# Before TensorFlow sets up its devices: 2 logical CPUs for the 'mirrored'
# strategy that stands for 2 GPUs.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)

from tf_simclr import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_simclr import distribute  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_simclr import export as export_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_simclr import model as model_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_simclr import trainer as trainer_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

# The model_dir's network (and every case's flags, to match it).
ARCHITECTURE_FLAGS = ['--dataset=synthetic', '--image_size=32',
                      '--resnet_depth=18', '--width_multiplier=0.0625',
                      '--num_proj_layers=1']


def write_model_dir(model_dir):
  """What a pretraining run leaves in model_dir, written directly (no
  training): a checkpoint of step 1, config.json, an event file and the
  export (hub/proj_head_0..1, saved_model/1)."""
  config = config_lib.Config(
      dataset='synthetic', image_size=32, resnet_depth=18,
      width_multiplier=0.0625, num_proj_layers=1, train_steps=1,
      model_dir=model_dir).validate()
  class_names = [f'class_{c}' for c in range(10)]
  model = model_lib.build_model(10, **config.model_kwargs(),
                                supervised_training=False)
  model(tf.zeros([1, 32, 32, 3]), training=False)
  step = tf.Variable(1, dtype=tf.int64)
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model, global_step=step), model_dir,
      max_to_keep=5)
  manager.save(checkpoint_number=1)
  config_lib.write_architecture(
      model_dir, dict(config.architecture(), num_classes=10),
      {'train_mode': 'pretrain', 'dataset': 'synthetic',
       'class_names': class_names})
  with tf.summary.create_file_writer(model_dir).as_default(step=1):
    tf.summary.scalar('train/total_loss', 1.0)
  export_lib.export_model(model, model_dir, image_size=32, step=1,
                          train_mode='pretrain', class_names=class_names)


def write_image_folder(root, classes=2, per_class=2):
  for split in ('train', 'test'):
    for label in range(classes):
      directory = os.path.join(root, split, f'class_{label}')
      os.makedirs(directory, exist_ok=True)
      for index in range(per_class):
        image = tf.fill([8, 8, 3], tf.constant(40 * label + index, tf.uint8))
        tf.io.write_file(os.path.join(directory, f'{index}.png'),
                         tf.io.encode_png(image))


def digests(directory):
  """{relative path: sha256 of its bytes} of every file under directory."""
  result = {}
  for parent, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, 'rb') as f:
        result[os.path.relpath(path, directory)] = hashlib.sha256(
            f.read()).hexdigest()
  return result


class Accepted(Exception):
  """The case got past every check to the Trainer."""


def _trainer(*unused_args, **unused_kwargs):
  raise Accepted('not refused: the run reached the Trainer')


def _make_strategy(real):
  def make_strategy(name='default', num_gpus=0, devices=None, **kwargs):
    if name == 'mirrored' and not num_gpus and not devices:
      return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    return real(name, num_gpus=num_gpus, devices=devices, **kwargs)
  return make_strategy


def run_case(flags):
  """(exit status, stderr) of run.py's run() on `flags`; status 'accepted'
  when the run reached the Trainer, 'traceback' when an exception escaped."""
  cli.FLAGS.unparse_flags()
  stderr = io.StringIO()
  status = None
  with contextlib.redirect_stderr(stderr):
    try:
      cli.run(cli.parse_flags(['run.py'] + flags))
      status = 0
    except SystemExit as exit_:
      status = exit_.code
    except Accepted:
      status = 'accepted'
    except Exception:  # pylint: disable=broad-except
      status = 'traceback'
      traceback.print_exc()
  return status, stderr.getvalue()


def main(work_dir, cases_path):
  sys.argv[0] = 'run.py'  # The program name of the error lines.
  model_dir = os.path.join(work_dir, 'model')
  write_model_dir(model_dir)
  write_image_folder(os.path.join(work_dir, 'two_classes'))
  before = digests(model_dir)
  distribute.make_strategy = _make_strategy(distribute.make_strategy)
  trainer_lib.Trainer = _trainer
  with open(cases_path) as f:
    cases = json.load(f)
  results = []
  for case in cases:
    flags = [flag.format(model=model_dir, work=work_dir)
             for flag in case['flags']]
    status, stderr = run_case(ARCHITECTURE_FLAGS + flags)
    results.append({'name': case['name'], 'status': status,
                    'stderr': stderr})
  print(json.dumps({'cases': results, 'before': before,
                    'after': digests(model_dir)}))


if __name__ == '__main__':
  main(*sys.argv[1:])

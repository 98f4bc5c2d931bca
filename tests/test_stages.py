"""Finetune and distill stages: what trains, what stays, where weights come from."""

import numpy as np
import pytest
import tensorflow as tf

import tf_simclr
from tf_simclr import augment
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import distribute
from tf_simclr import model as model_lib
from tf_simclr import optim
from tf_simclr import preflight
from tf_simclr import teacher as teacher_lib
from tf_simclr import trainer as trainer_lib

TINY = dict(resnet_depth=18, width_multiplier=0.125, image_size=32)


def _parts(model):
  """Variables of stem, block groups 1-4 (backbone parts in order)."""
  stem = [v for layer in model.resnet_model.initial_conv_relu_max_pool
          for v in layer.variables]
  return [stem] + [group.variables for group in model.resnet_model.block_groups]


def _snapshot(variables):
  return [v.numpy().copy() for v in variables]


def _changed(variables, before):
  return [not np.array_equal(v.numpy(), b) for v, b in zip(variables, before)]


@pytest.mark.parametrize('fine_tune_after_block', [-1, 0, 1, 2, 3, 4])
def test_finetune_changes_only_what_should(fine_tune_after_block):
  model = tf_simclr.build_model(10, **TINY, ft_proj_selector=1,
                                fine_tune_after_block=fine_tune_after_block,
                                supervised_training=True)
  parts = _parts(model)
  head_layers = model._projection_head.linear_layers
  watched = ([v for part in parts for v in part] +
             [v for layer in head_layers for v in layer.variables] +
             model.supervised_head.variables)
  before = _snapshot(watched)
  optimizer = optim.build_optimizer('lars', 1.0, model, weight_decay=1e-3)
  images = tf.random.stateless_uniform([8, 32, 32, 3], seed=(1, 2))
  labels = tf.range(8) % 10

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      logits = model(images, training=True)[model_lib.LOGITS_SUP]
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    optimizer.apply_gradients(
        [(g, v) for g, v in zip(gradients, variables) if g is not None])

  for _ in range(2):
    step()

  frozen_count = fine_tune_after_block + 1
  trainable = {v.ref() for v in model.trainable_variables}
  offset = 0
  for index, part in enumerate(parts):
    changed = _changed(part, before[offset:offset + len(part)])
    offset += len(part)
    if index < frozen_count:
      assert not any(changed), f'frozen part {index} changed'
      assert not any(v.ref() in trainable for v in part)
    else:
      assert all(changed), f'part {index}: some variables did not change'
  # Head layer 0 feeds the supervised head (ft_proj_selector=1); layers 1 and
  # 2 feed no loss in finetuning: weights and BN statistics stay.
  for index, layer in enumerate(head_layers):
    changed = _changed(layer.variables, before[offset:offset +
                                               len(layer.variables)])
    offset += len(layer.variables)
    assert all(changed) if index < 1 else not any(changed), index
  assert all(_changed(model.supervised_head.variables, before[offset:]))


def _config(tmp_path, name, **overrides):
  values = dict(TINY, dataset='synthetic', train_batch_size=16, train_steps=2,
                steps_per_loop=2, checkpoint_steps=2, eval_split='test',
                eval_batch_size=64, learning_rate=0.1, warmup_epochs=0,
                model_dir=str(tmp_path / name), global_bn=False)
  values.update(overrides)
  return config_lib.Config(**values).validate()


@pytest.fixture(scope='module')
def pretrain_dir(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('pretrain')
  trainer = trainer_lib.Trainer(_config(tmp_path, 'pretrain'),
                                tf.distribute.get_strategy())
  trainer.train()
  return trainer.config.model_dir


def test_finetune_from_pretrain_new_class_count_zero_init(pretrain_dir,
                                                          tmp_path):
  config = _config(tmp_path, 'finetune', train_mode='finetune',
                   checkpoint=pretrain_dir, num_classes=12,
                   zero_init_logits_layer=True, fine_tune_after_block=2,
                   ft_proj_selector=1, label_fraction=0.1)
  trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy())
  assert trainer.restore() == 'initialised'
  reader = tf.train.load_checkpoint(pretrain_dir)
  key = ('model/resnet_model/block_groups/0/layers/0/conv2d_bn_layers/0/'
         'conv2d/kernel/.ATTRIBUTES/VARIABLE_VALUE')
  first_kernel = trainer.model.resnet_model.block_groups[0].layers[0]\
      .conv2d_bn_layers[0].conv2d.kernel
  np.testing.assert_array_equal(first_kernel.numpy(), reader.get_tensor(key))
  head = trainer.model.supervised_head.linear_layer.dense
  assert head.kernel.shape == (trainer.model._projection_head.linear_layers[0]
                               .dense.units, 12)
  assert not np.any(head.kernel.numpy()) and not np.any(head.bias.numpy())
  frozen = [v for part in _parts(trainer.model)[:3] for v in part]
  before = _snapshot(frozen)
  trainer.train()
  assert not any(_changed(frozen, before))
  assert np.any(head.kernel.numpy())
  # A second run of the same command resumes instead of re-initialising.
  again = trainer_lib.Trainer(config, tf.distribute.get_strategy())
  assert again.restore() == 'resumed'
  assert int(again.global_step.numpy()) == 2


def test_finetune_without_head_zero_init_is_random(pretrain_dir, tmp_path):
  config = _config(tmp_path, 'finetune_random', train_mode='finetune',
                   checkpoint=pretrain_dir, label_fraction=0.1)
  trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy())
  trainer.restore()
  kernel = trainer.model.supervised_head.linear_layer.dense.kernel.numpy()
  assert 0.003 < kernel.std() < 0.03  # N(0, 0.01)


class _BrightestChannelTeacher:
  """A fixed teacher: class = index of the brightest colour channel."""
  num_classes = 10

  def __call__(self, images):
    means = tf.reduce_mean(images, axis=[1, 2])
    return 8.0 * tf.one_hot(tf.argmax(means, -1), 10)


def test_distill_student_learns_to_agree_with_fixed_teacher(tmp_path,
                                                             monkeypatch):
  monkeypatch.setattr(teacher_lib, 'load_teacher',
                      lambda path, num_classes=None: _BrightestChannelTeacher())
  config = _config(tmp_path, 'distill', train_mode='distill',
                   teacher_checkpoint='fixed', train_steps=60,
                   steps_per_loop=20, checkpoint_steps=60, learning_rate=1.0,
                   distill_temperature=1.0)
  trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy())
  teacher = trainer.teacher
  images = tf.constant(
      tf_simclr.data.synthetic_arrays('train')[0][:256], tf.float32) / 255.

  def agreement():
    student = trainer.model(images, training=False)[model_lib.LOGITS_SUP]
    return float(tf.reduce_mean(tf.cast(
        tf.argmax(student, -1) == tf.argmax(teacher(images), -1), tf.float32)))

  start = agreement()
  trainer.train()
  end = agreement()
  assert end > 0.85 and end > start + 0.2, (start, end)
  # The teacher is never part of the student's checkpoint.
  keys = [name for name, _ in tf.train.list_variables(config.model_dir)]
  model_keys = [k for k in keys
                if k.startswith('model/') and 'OPTIMIZER_SLOT' not in k]
  assert len(model_keys) == len(trainer.model.variables)


def test_distill_from_finetune_model_dir(pretrain_dir, tmp_path):
  finetune = _config(tmp_path, 'teacher', train_mode='finetune',
                     checkpoint=pretrain_dir, label_fraction=0.1)
  trainer_lib.Trainer(finetune, tf.distribute.get_strategy()).train()
  teacher = teacher_lib.load_teacher(finetune.model_dir, 10)
  assert teacher.num_classes == 10
  images = tf.random.stateless_uniform([4, 32, 32, 3], seed=(3, 4))
  logits = teacher(images)
  np.testing.assert_allclose(
      logits.numpy(),
      teacher.model(images, training=False)[model_lib.LOGITS_SUP].numpy())
  with pytest.raises(teacher_lib.checkpoints.CheckpointError, match='classes'):
    teacher_lib.load_teacher(finetune.model_dir, 12)
  with pytest.raises(teacher_lib.checkpoints.CheckpointError,
                     match='no supervised head|does not exist'):
    teacher_lib.load_teacher(str(tmp_path / 'missing'), 10)


def test_finetune_from_scratch_is_the_supervised_baseline(tmp_path):
  config = _config(tmp_path, 'baseline', train_mode='finetune',
                   checkpoint=checkpoints.SCRATCH_CHECKPOINT,
                   label_fraction=0.1)
  preflight.check_paths(config)  # 'scratch' is not a path to look for.
  trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy())
  assert trainer.restore() == 'scratch'
  assert trainer.num_train_examples == 100  # 10 % of 1024, class-balanced.


def _log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_distill_with_labels_trains_on_the_combined_loss(tmp_path,
                                                         monkeypatch):
  """--distill_alpha=0.6: the trainer's step loss (total minus weight decay)
  is 0.6 · distillation on the unlabeled rows + 0.4 · cross-entropy on the
  labeled rows, by NumPy from the student's logits of the same batch."""
  monkeypatch.setattr(teacher_lib, 'load_teacher',
                      lambda path, num_classes=None: _BrightestChannelTeacher())
  config = _config(tmp_path, 'distill_labels', train_mode='distill',
                   teacher_checkpoint='fixed', distill_alpha=0.6,
                   distill_temperature=2.0, label_fraction=0.5)
  trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy())
  assert trainer.labeled_input is not None
  assert 'supervised_loss' in trainer.metrics
  rng = np.random.default_rng(5)
  unlabeled = rng.uniform(size=(6, 32, 32, 3)).astype(np.float32)
  labeled = rng.uniform(size=(4, 32, 32, 3)).astype(np.float32)
  labels = np.array([1, 0, 2, 9], np.int32)
  student = trainer.model(tf.constant(np.concatenate([unlabeled, labeled])),
                          training=True)[model_lib.LOGITS_SUP].numpy()
  student = student.astype(np.float64)
  teacher = 8.0 * np.eye(10)[unlabeled.mean(axis=(1, 2)).argmax(-1)]
  tau = 2.0
  distill = -np.mean(np.sum(np.exp(_log_softmax(teacher / tau)) *
                            _log_softmax(student[:6] / tau), axis=1))
  cross_entropy = -np.mean(_log_softmax(student[6:])[np.arange(4), labels])
  tf.function(lambda: trainer.strategy.run(trainer.replica_step, args=(
      (tf.constant(unlabeled), tf.zeros([6], tf.int32)),
      (tf.constant(labeled), tf.constant(labels)))))()
  result = {name: float(metric.result())
            for name, metric in trainer.metrics.items()}
  np.testing.assert_allclose(result['distill_loss'], distill, rtol=1e-5)
  np.testing.assert_allclose(result['supervised_loss'], cross_entropy,
                             rtol=1e-5)
  np.testing.assert_allclose(
      result['total_loss'] - result['weight_decay'],
      0.6 * distill + 0.4 * cross_entropy, rtol=1e-5)


@pytest.mark.parametrize('placement, image_size, on_accelerator, expected', [
    ('auto', 48, False, False),  # On a CPU, auto keeps the blur in the pipeline.
    ('auto', 48, True, True),    # On a GPU/TPU, in the training step.
    ('auto', 32, True, False),   # No blur at <= 32 px (the CIFAR variant).
    ('input', 48, True, False),
    ('device', 48, False, True),
    ('device', 32, False, False),
])
def test_blurs_in_training_step(placement, image_size, on_accelerator,
                                expected):
  assert augment.blurs_in_training_step(
      'pretrain', True, image_size, placement, on_accelerator) == expected
  assert not augment.blurs_in_training_step(
      'pretrain', False, image_size, placement, on_accelerator)
  assert not augment.blurs_in_training_step(
      'finetune', True, image_size, placement, on_accelerator)


@pytest.mark.parametrize('placement, image_size, expected', [
    ('auto', 48, None),      # Whatever this machine is: see below.
    ('input', 48, False),
    ('device', 48, True),
    ('device', 32, False),   # No blur at <= 32 px (the CIFAR variant).
])
def test_blur_placement(tmp_path, placement, image_size, expected):
  config = _config(tmp_path, 'pretrain', image_size=image_size,
                   blur_placement=placement)
  trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy())
  if expected is None:  # auto: the step blurs on a GPU/TPU only.
    expected = distribute.runs_on_accelerator(trainer.strategy)
  assert trainer.blur_on_device == expected
  # The pipeline blurs exactly when the step does not.
  assert trainer.train_input.use_blur == (not expected)
  finetune = trainer_lib.Trainer(
      _config(tmp_path, 'finetune', train_mode='finetune',
              image_size=image_size, blur_placement=placement,
              checkpoint=checkpoints.SCRATCH_CHECKPOINT),
      tf.distribute.get_strategy())
  assert not finetune.blur_on_device


def test_device_blur_trains_and_draws_per_step_and_replica(tmp_path):
  config = _config(tmp_path, 'pretrain', image_size=48,
                   blur_placement='device')
  trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy())
  images = tf.random.uniform([64, 48, 48, 3])
  blur = tf.function(trainer._device_blur)  # pylint: disable=protected-access
  first = blur(images).numpy()
  changed = np.any(np.abs(first - images.numpy()) > 1e-6, axis=(1, 2, 3))
  assert 0 < changed.sum() < 64  # Each image its own coin.
  np.testing.assert_array_equal(first, blur(images).numpy())
  trainer.global_step.assign_add(1)
  assert not np.array_equal(first, blur(images).numpy())  # A new step.
  result = trainer.train()
  assert np.isfinite(result['total_loss'])

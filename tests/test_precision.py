"""Mixed precision and XLA: the same training step, in other arithmetic.

Each variant starts from the float32 trainer's weights and takes one step on
the same batch; its loss and its weight update must match float32's within
the variant's rounding (bfloat16 keeps 8 bits of mantissa, float16 11).
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tf_simclr import config as config_lib
from tf_simclr import model as model_lib
from tf_simclr import precision
from tf_simclr import resnet
from tf_simclr import trainer as trainer_lib

TINY = dict(resnet_depth=18, width_multiplier=0.125, image_size=32,
            dataset='synthetic', train_batch_size=16, train_steps=1000,
            steps_per_loop=1, checkpoint_steps=2, eval_split='test',
            learning_rate=0.1, warmup_epochs=0, global_bn=False,
            weight_decay=1e-4)


@pytest.fixture(autouse=True)
def float32_policy_afterwards():
  yield
  tf_keras.mixed_precision.set_global_policy('float32')


def _trainer(tmp_path, name, **overrides):
  config = config_lib.Config(**dict(TINY, model_dir=str(tmp_path / name),
                                    **overrides)).validate()
  return trainer_lib.Trainer(config, tf.distribute.get_strategy())


def _batch(image_size=32, views=2, size=16):
  rng = np.random.RandomState(0)
  images = rng.uniform(0, 1, (size, image_size, image_size, 3 * views))
  labels = rng.randint(0, 10, size)
  return (tf.constant(images, tf.float32), tf.constant(labels, tf.int32))


def _one_step(trainer, batch):
  """One replica step as Trainer runs it (XLA-compiled with --jit_compile);
  returns (total loss, weights after the update)."""
  step = trainer.replica_step
  if trainer.config.jit_compile:
    step = tf.function(step, jit_compile=True)
  tf.function(lambda: trainer.strategy.run(step, args=(batch,)))()
  loss = float(trainer.metrics['total_loss'].result())
  return loss, [w.numpy() for w in trainer.model.trainable_weights]


@pytest.fixture(scope='module')
def float32_step(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('float32')
  tf_keras.utils.set_random_seed(1)
  trainer = _trainer(tmp_path, 'float32')
  weights = trainer.model.get_weights()
  before = [w.numpy() for w in trainer.model.trainable_weights]
  loss, after = _one_step(trainer, _batch())
  tf_keras.mixed_precision.set_global_policy('float32')
  return weights, before, loss, after


@pytest.mark.parametrize('overrides, loss_tolerance', [
    # XLA (a GPU/TPU option) is slow to compile on 2 CPU cores: -m slow.
    pytest.param(dict(jit_compile=True), 1e-4, marks=pytest.mark.slow),
    # Every part in bfloat16 (the measured choice may pick float32 here).
    (dict(precision='bfloat16', bfloat16_parts='all'), 3e-2),
    pytest.param(dict(precision='float16'), 5e-3, marks=pytest.mark.slow),
    pytest.param(dict(precision='bfloat16', bfloat16_parts='all',
                      jit_compile=True), 3e-2, marks=pytest.mark.slow),
])
def test_variant_step_matches_float32(tmp_path, float32_step, overrides,
                                      loss_tolerance):
  weights, before, loss32, after32 = float32_step
  trainer = _trainer(tmp_path, 'variant', **overrides)
  trainer.model.set_weights(weights)
  loss, after = _one_step(trainer, _batch())
  # float16's dynamic loss scale starts at 2**15; steps whose scaled
  # gradients overflow are skipped (weights kept) while the scale halves.
  for _ in range(20):
    if any(not np.array_equal(a, b) for a, b in zip(after, before)):
      break
    loss, after = _one_step(trainer, _batch())
  assert np.isfinite(loss)
  assert loss == pytest.approx(loss32, rel=loss_tolerance)
  # The update: variables stay float32 (mixed precision keeps float32
  # master weights) and move as float32's did.
  moved32 = np.concatenate([(a - w).ravel() for a, w in zip(after32, before)])
  moved = np.concatenate([(a - w).ravel() for a, w in zip(after, before)])
  assert all(w.dtype == np.float32 for w in after)
  cosine = moved @ moved32 / (np.linalg.norm(moved) * np.linalg.norm(moved32))
  # XLA reorders float32 reductions (BN's gradients cancel a lot): 1e-3.
  assert cosine > (0.999 if 'precision' not in overrides else 0.95)
  assert np.linalg.norm(moved) == pytest.approx(np.linalg.norm(moved32),
                                                rel=0.05)


@pytest.mark.slow
def test_float16_scales_the_loss_and_unscales_the_gradients(tmp_path):
  trainer = _trainer(tmp_path, 'float16', precision='float16')
  assert isinstance(trainer.optimizer,
                    tf_keras.mixed_precision.LossScaleOptimizer)
  assert float(trainer.optimizer.loss_scale) == 2**15
  before = [w.numpy() for w in trainer.model.trainable_weights]
  for _ in range(20):
    loss, after = _one_step(trainer, _batch())
    assert np.isfinite(loss) and loss < 100  # Logged unscaled.
    if any(not np.array_equal(a, b) for a, b in zip(after, before)):
      break
  else:
    pytest.fail('20 float16 steps and the weights never moved')
  # Overflowing steps lowered the scale and were skipped without stopping
  # training (the NaN stop leaves them to the loss scaler).
  assert float(trainer.optimizer.loss_scale) < 2**15
  assert int(trainer.nonfinite_step.numpy()) == -1


@pytest.mark.slow  # XLA and the on-device blur are accelerator options.
def test_xla_step_with_blur_on_device_trains(tmp_path):
  trainer = _trainer(tmp_path, 'xla_blur', jit_compile=True, image_size=48,
                     blur_placement='device', precision='bfloat16')
  assert trainer.blur_on_device
  loss, _ = _one_step(trainer, _batch(image_size=48))
  assert np.isfinite(loss)


# ---------------------------------------------------------------- bfloat16 per part
def test_part_shapes_are_the_blocks_each_part_runs():
  # ResNet-18 x1/8, CIFAR stem, 28 px: 8-64 channels at 28, 28, 14, 7, 4 px.
  assert precision.part_shapes(18, 0.125, 28, cifar_stem=True) == [
      ('stem', 'stem', 8, 28, 3), ('block_group1', 'basic', 8, 28, 8),
      ('block_group2', 'basic', 16, 14, 16),
      ('block_group3', 'basic', 32, 7, 32),
      ('block_group4', 'basic', 64, 4, 64)]
  # ResNet-50 x1 at 224 px: stem and max-pool to 56 px, bottlenecks read
  # 4x their filters.
  assert precision.part_shapes(50, 1, 224, cifar_stem=False) == [
      ('stem', 'stem', 64, 224, 3), ('block_group1', 'bottleneck', 64, 56, 256),
      ('block_group2', 'bottleneck', 128, 28, 512),
      ('block_group3', 'bottleneck', 256, 14, 1024),
      ('block_group4', 'bottleneck', 512, 7, 2048)]


def test_time_part_runs_the_part_forward_and_backward():
  shape = ('block_group2', 'basic', 16, 14, 16)
  seconds = precision.time_part(shape, 'float32', batch=4, repeats=1)
  assert 0 < seconds < 30
  assert precision.time_part(shape, 'float32', batch=4, repeats=1) == seconds


@pytest.mark.parametrize('bfloat16_faster', [
    (False, False, False, False, False), (True, True, True, True, True),
    (False, False, True, False, True)])
def test_part_policies_take_bfloat16_exactly_where_it_measured_faster(
    monkeypatch, bfloat16_faster):
  names = [name for name, *_ in precision.part_shapes(18, 0.125, 28, True)]
  rng = np.random.RandomState(len(names))
  float32 = dict(zip(names, rng.uniform(1e-3, 1e-2, len(names))))
  # Faster: below MARGIN x float32; slower: within the margin or above.
  ratios = {name: 0.5 if faster else rng.choice([0.97, 1.5, 20.])
            for name, faster in zip(names, bfloat16_faster)}
  monkeypatch.setattr(precision, 'time_part', lambda shape, policy, *a, **k: (
      float32[shape[0]] * (1 if policy == 'float32' else ratios[shape[0]])))
  policies, timings = precision.part_policies(18, 0.125, 28, True)
  assert policies == ['mixed_bfloat16' if faster else 'float32'
                      for faster in bfloat16_faster]
  assert set(timings) == set(names)
  best = sum(min(f, f * ratios[n]) for n, f in float32.items())
  assert precision.speedup(timings) == pytest.approx(
      sum(float32.values()) / best)


def test_a_part_in_float32_inside_a_bfloat16_model(tmp_path):
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  policies = ['float32', 'mixed_bfloat16', 'float32', 'float32',
              'mixed_bfloat16']
  model = model_lib.build_model(10, resnet_depth=18, width_multiplier=0.125,
                                image_size=32, part_policies=policies)
  plain = model_lib.build_model(10, resnet_depth=18, width_multiplier=0.125,
                                image_size=32)
  backbone = model.resnet_model
  parts = [backbone.initial_conv_relu_max_pool] + [
      [group] for group in backbone.block_groups]
  for part, policy in zip(parts, policies):
    convs = [layer for top in part for layer in (top, *top.submodules)
             if isinstance(layer, tf_keras.layers.Conv2D)]
    assert convs
    expected = 'bfloat16' if policy == 'mixed_bfloat16' else 'float32'
    assert {conv.compute_dtype for conv in convs} == {expected}
  # The same float32 variables as a model without part policies: the same
  # checkpoints.
  assert [(v.shape, v.dtype) for v in model.variables] == [
      (v.shape, v.dtype) for v in plain.variables]
  path = tf.train.Checkpoint(model=plain).write(str(tmp_path / 'plain'))
  tf.train.Checkpoint(model=model).read(path).assert_consumed()
  np.testing.assert_array_equal(model.variables[0].numpy(),
                                plain.variables[0].numpy())
  outputs = model(tf.random.uniform([2, 32, 32, 3]), training=True)
  assert np.all(np.isfinite(outputs[model_lib.LOGITS_SUP].numpy()))
  with pytest.raises(ValueError, match='part_policies'):
    resnet.Resnet(18, 0.125, part_policies=['float32'])


@pytest.mark.parametrize('faster, expected_policy', [
    (False, 'float32'), (True, 'mixed_bfloat16')])
def test_bfloat16_run_follows_the_probe(tmp_path, monkeypatch, faster,
                                        expected_policy):
  """--precision=bfloat16 on a CPU: where no part gains, the whole model
  computes in float32; where all gain, all of the backbone in bfloat16."""
  monkeypatch.setattr(precision, 'time_part', lambda shape, policy, *a, **k: (
      1.0 if policy == 'float32' else (0.5 if faster else 2.0)))
  trainer = _trainer(tmp_path, f'probe_{faster}', precision='bfloat16')
  assert trainer.part_policies == [expected_policy] * 5
  assert tf_keras.mixed_precision.global_policy().name == expected_policy
  measured = _trainer(tmp_path, f'all_{faster}', precision='bfloat16',
                      bfloat16_parts='all')
  assert measured.part_policies is None
  assert tf_keras.mixed_precision.global_policy().name == 'mixed_bfloat16'


def test_precision_hint_is_measured_and_only_for_long_float32_runs(
    monkeypatch):
  config = config_lib.Config(**dict(TINY, model_dir='unused')).validate()
  calls = []

  def fake_time(shape, policy, *args, **kwargs):
    calls.append(policy)
    return 1.0 if policy == 'float32' else 0.5
  monkeypatch.setattr(precision, 'time_part', fake_time)
  assert precision.hint_for_run(config, False, 999, True) is None
  assert precision.hint_for_run(config, True, 10**6, True) is None
  assert precision.hint_for_run(config, False, 10**6, False) is None
  assert not calls  # None of these measured anything.
  hint = precision.hint_for_run(config, False, 10**6, True)
  assert '2.0x' in hint and '--precision=bfloat16' in hint
  monkeypatch.setattr(precision, 'time_part', lambda shape, policy, *a, **k: (
      1.0 if policy == 'float32' else 0.99))
  assert precision.hint_for_run(config, False, 10**6, True) is None


def test_the_probe_times_the_batch_one_replica_sees_per_step(monkeypatch):
  """probe_batch: per-replica images per step (views included), capped at
  PROBE_MAX_BATCH; choose_for_run and hint_for_run time every part at it."""
  def config(batch):
    return config_lib.Config(**dict(TINY, model_dir='unused',
                                    train_batch_size=batch)).validate()
  assert precision.probe_batch(config(64), 1, 2) == 128
  assert precision.probe_batch(config(64), 2, 1) == 32
  assert precision.probe_batch(config(96), 4, 2) == 48
  assert precision.probe_batch(config(4096), 1, 1) == precision.PROBE_MAX_BATCH
  batches = []

  def fake_time(shape, policy, cifar_stem, sk_ratio, se_ratio, batch):
    batches.append(batch)
    return 1.0 if policy == 'float32' else 0.5
  monkeypatch.setattr(precision, 'time_part', fake_time)
  bfloat16 = config_lib.Config(**dict(
      TINY, model_dir='unused', precision='bfloat16')).validate()
  assert precision.choose_for_run(bfloat16, False, batch=48) == [
      'mixed_bfloat16'] * 5
  assert batches == [48] * 10
  batches.clear()
  assert precision.hint_for_run(config(64), False, 10**6, True, batch=80)
  assert batches == [80] * 10

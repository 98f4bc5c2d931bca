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
    (dict(precision='bfloat16'), 3e-2),
    pytest.param(dict(precision='float16'), 5e-3, marks=pytest.mark.slow),
    pytest.param(dict(precision='bfloat16', jit_compile=True), 3e-2,
                 marks=pytest.mark.slow),
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

"""LARS against a hand computation, exclusion sets, LR schedule, durations,
config checks."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tf_simclr import build_model
from tf_simclr import optim
from tf_simclr.config import Config
from tf_simclr.config import ConfigError


@pytest.fixture(scope='module')
def model():
  # SE adds conv biases outside the supervised head; SK adds more BN layers.
  return build_model(3, resnet_depth=18, width_multiplier=0.125, image_size=16,
                     sk_ratio=0.0625, se_ratio=0.25, cifar_stem=False)


def _bn_layers(model):
  return [layer for layer in model.submodules
          if isinstance(layer, tf_keras.layers.BatchNormalization)]


def _refs(variables):
  return {v.ref() for v in variables}


# ---------------------------------------------------------------- exclusions
def test_exclusion_set_on_a_real_model(model):
  excluded = _refs(optim.excluded_from_weight_decay(model))
  head = _refs(model.supervised_head.variables)
  # Independent classification by the variable's own (last) name.
  expected = set()
  for variable in model.trainable_variables:
    leaf = variable.name.split('/')[-1].split(':')[0]
    if leaf in ('gamma', 'beta', 'bias') or variable.ref() in head:
      expected.add(variable.ref())
  assert excluded == expected

  for layer in _bn_layers(model):
    assert layer.gamma.ref() in excluded
    if layer.beta is not None:
      assert layer.beta.ref() in excluded
  assert head <= excluded
  assert any('bias' in v.name for v in model.trainable_variables
             if v.ref() not in head), 'model should have non-head biases'

  decayed = optim.decayed_variables(model)
  assert decayed, 'some variables must be decayed'
  for variable in decayed:
    assert variable.name.split('/')[-1].startswith('kernel'), variable.name
    assert variable.ref() not in head
  decayed_refs = _refs(decayed)
  conv_kernels = [layer.kernel for layer in model.submodules
                  if isinstance(layer, tf_keras.layers.Conv2D)]
  projection_kernels = [layer.dense.kernel
                        for layer in model._projection_head.linear_layers]
  assert len(projection_kernels) == 3
  for kernel in conv_kernels + projection_kernels:
    assert kernel.ref() in decayed_refs, kernel.name
  # Every trainable variable is either decayed or excluded.
  assert (decayed_refs | excluded) >= _refs(model.trainable_variables)


def test_built_lars_flags_follow_the_exclusions(model):
  optimizer = optim.build_optimizer('lars', 0.1, model, weight_decay=1e-4)
  excluded = _refs(optim.excluded_from_weight_decay(model))
  for variable in model.trainable_variables:
    is_excluded = variable.ref() in excluded
    assert optimizer._use_weight_decay(variable.name) is not is_excluded
    assert optimizer._do_layer_adaptation(variable.name) is not is_excluded
    # Mirrored copies on other replicas carry a '/replica_k' suffix.
    replica_name = variable.name.replace(':0', '/replica_1:0')
    assert optimizer._do_layer_adaptation(replica_name) is not is_excluded


# ---------------------------------------------------------------- one LARS update
def numpy_lars_step(weight, gradient, velocity, learning_rate, momentum,
                    weight_decay, eeta, excluded):
  """Reference LARS (classic momentum): returns (new weight, new velocity)."""
  weight = weight.astype(np.float64)
  gradient = gradient.astype(np.float64)
  trust = 1.0
  if not excluded:
    gradient = gradient + weight_decay * weight
    w_norm, g_norm = np.linalg.norm(weight), np.linalg.norm(gradient)
    if w_norm > 0 and g_norm > 0:
      trust = eeta * w_norm / g_norm
  velocity = momentum * velocity + learning_rate * trust * gradient
  return weight - velocity, velocity


def test_lars_two_steps_match_hand_computation(model):
  learning_rate, momentum, weight_decay, eeta = 0.7, 0.9, 0.05, 0.001
  stem_kernel = model.resnet_model.initial_conv_relu_max_pool[0].conv2d.kernel
  bn_gamma = _bn_layers(model)[0].gamma
  se_bias = next(layer.bias for layer in model.submodules
                 if isinstance(layer, tf_keras.layers.Conv2D) and layer.use_bias)
  head_kernel = model.supervised_head.linear_layer.dense.kernel
  head_bias = model.supervised_head.linear_layer.dense.bias
  cases = [(stem_kernel, False), (bn_gamma, True), (se_bias, True),
           (head_kernel, True), (head_bias, True)]
  variables = [variable for variable, _ in cases]
  rng = np.random.default_rng(0)
  for variable in variables:  # Non-zero everywhere, so norms are non-trivial.
    variable.assign(rng.normal(size=variable.shape).astype(np.float32))

  optimizer = optim.LARS(
      learning_rate, momentum=momentum, weight_decay_rate=weight_decay,
      eeta=eeta, excluded_variables=optim.excluded_from_weight_decay(model))
  weights = [v.numpy().astype(np.float64) for v in variables]
  velocities = [np.zeros(v.shape) for v in variables]
  for _ in range(2):
    gradients = [rng.normal(size=v.shape).astype(np.float32) for v in variables]
    optimizer.apply_gradients(
        [(tf.constant(g), v) for g, v in zip(gradients, variables)])
    for index, (variable, excluded) in enumerate(cases):
      weights[index], velocities[index] = numpy_lars_step(
          weights[index], gradients[index], velocities[index], learning_rate,
          momentum, weight_decay, eeta, excluded)
      np.testing.assert_allclose(variable.numpy(), weights[index],
                                 rtol=1e-5, atol=1e-6, err_msg=variable.name)
      np.testing.assert_allclose(
          optimizer.get_slot(variable, 'momentum').numpy(), velocities[index],
          rtol=1e-5, atol=1e-7, err_msg=variable.name)


def test_lars_trust_ratio_is_one_for_zero_weights():
  variable = tf.Variable(tf.zeros([3, 2]), name='zero_kernel')
  optimizer = optim.LARS(0.5, momentum=0.9, weight_decay_rate=0.1)
  gradient = np.arange(6, dtype=np.float32).reshape(3, 2)
  optimizer.apply_gradients([(tf.constant(gradient), variable)])
  np.testing.assert_allclose(variable.numpy(), -0.5 * gradient, rtol=1e-6)


# ---------------------------------------------------------------- weight decay loss
def test_weight_decay_loss_with_lars_is_the_supervised_head_kernel(model):
  kernel = model.supervised_head.linear_layer.dense.kernel.numpy()
  loss = optim.weight_decay_loss(model, 'lars', 1e-3)
  np.testing.assert_allclose(loss.numpy(), 1e-3 * 0.5 * np.sum(kernel**2),
                             rtol=1e-5)
  assert optim.weight_decay_loss(model, 'lars', 0.0).numpy() == 0.0


def test_weight_decay_loss_without_lars_skips_batch_norm(model):
  bn = _refs(v for layer in _bn_layers(model) for v in layer.variables)
  expected = sum(0.5 * np.sum(v.numpy().astype(np.float64)**2)
                 for v in model.trainable_variables if v.ref() not in bn)
  loss = optim.weight_decay_loss(model, 'momentum', 1e-3)
  np.testing.assert_allclose(loss.numpy(), 1e-3 * expected, rtol=1e-4)


# ---------------------------------------------------------------- learning rate
def reference_learning_rate(step, peak, warmup_steps, total_steps):
  """google-research/simclr: linear warm-up, then keras CosineDecay(alpha=0)."""
  if step < warmup_steps:
    return step / warmup_steps * peak
  decay_steps = total_steps - warmup_steps
  progress = min(step - warmup_steps, decay_steps) / decay_steps
  return peak * 0.5 * (1 + math.cos(math.pi * progress))


def test_schedule_landmarks():
  schedule = optim.WarmUpAndCosineDecay(peak=4.8, warmup_steps=100,
                                        total_steps=1100)
  value = lambda step: float(schedule(step))
  assert value(0) == 0.0
  assert value(50) == pytest.approx(2.4)
  assert value(100) == pytest.approx(4.8)  # End of warm-up: the peak.
  assert value(600) == pytest.approx(2.4)  # Mid-cosine: half the peak.
  assert value(1100) == pytest.approx(0.0, abs=1e-6)
  assert value(5000) == pytest.approx(0.0, abs=1e-6)
  for step in range(0, 1200, 37):
    assert value(step) == pytest.approx(
        reference_learning_rate(step, 4.8, 100, 1100), rel=1e-5, abs=1e-6)


def test_schedule_without_warmup():
  schedule = optim.WarmUpAndCosineDecay(peak=0.3, warmup_steps=0,
                                        total_steps=10)
  assert float(schedule(0)) == pytest.approx(0.3)
  assert float(schedule(5)) == pytest.approx(0.15)
  assert float(schedule(10)) == pytest.approx(0.0, abs=1e-7)


def test_schedule_drives_the_optimizer_learning_rate():
  schedule = optim.WarmUpAndCosineDecay(peak=1.0, warmup_steps=4,
                                        total_steps=8)
  variable = tf.Variable([0.0], name='plain')
  optimizer = optim.LARS(schedule, momentum=0.0,
                         excluded_variables=[variable])  # Trust ratio 1.
  for step in range(3):
    before = variable.numpy()
    optimizer.apply_gradients([(tf.constant([1.0]), variable)])
    np.testing.assert_allclose(before - variable.numpy(), [step / 4], atol=1e-6)


def test_learning_rate_scaling():
  assert optim.scaled_learning_rate(0.3, 4096, 'linear') == pytest.approx(4.8)
  assert optim.scaled_learning_rate(0.3, 256, 'linear') == pytest.approx(0.3)
  assert optim.scaled_learning_rate(0.075, 4096, 'sqrt') == pytest.approx(4.8)
  assert optim.scaled_learning_rate(0.1, 100, 'sqrt') == pytest.approx(1.0)
  with pytest.raises(ValueError, match='cubic'):
    optim.scaled_learning_rate(0.1, 100, 'cubic')


# ---------------------------------------------------------------- durations
@pytest.mark.parametrize('epochs, examples, batch, expected', [
    (10, 50000, 512, 976),        # 500 000 / 512 = 976.6: whole steps only.
    (0.5, 1281167, 4096, 156),    # 640 583.5 / 4096 = 156.4.
    (100, 1281167, 4096, 31278),  # 128 116 700 / 4096 = 31 278.5.
    (0, 10, 3, 0),
    (3, 1000, 1000, 3),
    (1, 55000, 256, 214),         # The protocol's warm-up: 214.8.
])
def test_steps_from_epochs_hand_worked(epochs, examples, batch, expected):
  """The reference's warm-up rule, int(round(epochs * examples // batch)):
  the floor of the exact quotient (hand-worked values)."""
  assert optim.steps_from_epochs(epochs, examples, batch) == expected


@pytest.mark.parametrize('train_steps, epochs, examples, batch, expected', [
    (0, 100, 50000, 512, 50000 * 100 // 512 + 1),
    (0, 800, 1281167, 4096, 1281167 * 800 // 4096 + 1),
    (0, 1, 1000, 1000, 2),
    (123, 100, 50000, 512, 123),
])
def test_total_train_steps_matches_reference(train_steps, epochs, examples,
                                             batch, expected):
  assert optim.total_train_steps(train_steps, epochs, examples,
                                 batch) == expected


# ---------------------------------------------------------------- config checks
def test_default_config_is_valid():
  Config(model_dir='/tmp/unused').validate()


@pytest.mark.parametrize('changes, flag', [
    (dict(resnet_depth=19), '--resnet_depth'),
    (dict(train_batch_size=-8), '--train_batch_size'),
    (dict(train_batch_size=0), '--train_batch_size'),
    (dict(eval_batch_size=-1), '--eval_batch_size'),
    (dict(ft_proj_selector=4), '--ft_proj_selector'),
    (dict(ft_proj_selector=2, proj_head_mode='linear'), '--ft_proj_selector'),
    (dict(ft_proj_selector=1, proj_head_mode='none'), '--ft_proj_selector'),
    (dict(ft_proj_selector=-2), '--ft_proj_selector'),
    (dict(train_mode='selfplay'), '--train_mode'),
    (dict(train_steps=-1), '--train_steps'),
    (dict(width_multiplier=0.0), '--width_multiplier'),
    (dict(num_proj_layers=0), '--num_proj_layers'),
    (dict(train_mode='pretrain', fine_tune_after_block=2),
     '--fine_tune_after_block'),
    (dict(mode='predict'), '--mode'),
    (dict(optimizer='sgd'), '--optimizer'),
    (dict(learning_rate_scaling='cubic'), '--learning_rate_scaling'),
    (dict(proj_head_mode='deep'), '--proj_head_mode'),
    (dict(strategy='horovod'), '--strategy'),
    (dict(temperature=0.0), '--temperature'),
    (dict(distill_alpha=1.5), '--distill_alpha'),
    (dict(label_fraction=0.0), '--label_fraction'),
    (dict(crop_min_area=0.0), '--crop_min_area'),
    (dict(crop_min_area=1.5), '--crop_min_area'),
    (dict(fine_tune_after_block=5, train_mode='finetune'),
     '--fine_tune_after_block'),
    (dict(train_mode='distill'), '--teacher_checkpoint'),
    (dict(model_dir=None), '--model_dir'),
])
def test_config_errors_name_the_flag(changes, flag):
  config = Config(model_dir='/tmp/unused').replace(**changes)
  with pytest.raises(ConfigError) as error:
    config.validate()
  message = str(error.value)
  assert flag in message
  assert '\n' not in message


def test_config_error_echoes_the_value():
  with pytest.raises(ConfigError, match='19'):
    Config(model_dir='/tmp/unused', resnet_depth=19).validate()
  with pytest.raises(ConfigError, match='-8'):
    Config(model_dir='/tmp/unused', train_batch_size=-8).validate()

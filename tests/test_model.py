"""build_model: output keys and shapes, heads, zero-init, freezing."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tf_simclr import build_model
from tf_simclr import objectives
from tf_simclr import resnet

WIDTH = 0.125
BACKBONE_KEYS = ('initial_conv', 'initial_max_pool', 'block_group1',
                 'block_group2', 'block_group3', 'block_group4',
                 'final_avg_pool')


def expected_shapes(depth, image_size, cifar_stem, batch=2, width=WIDTH,
                    head_mode='nonlinear', num_proj_layers=3, proj_out_dim=128,
                    num_classes=0):
  """Shapes written from the ResNet paper's tables, not from the code."""
  base = int(64 * width)
  expansion = 1 if depth in (18, 34) else 4
  channels = [base * 2**i * expansion for i in range(4)]
  if cifar_stem:
    conv_size = pool_size = image_size
  else:
    conv_size, pool_size = image_size // 2, image_size // 4
  shapes = {'initial_conv': [batch, conv_size, conv_size, base],
            'initial_max_pool': [batch, pool_size, pool_size, base]}
  for i in range(4):
    size = pool_size // 2**i
    shapes[f'block_group{i + 1}'] = [batch, size, size, channels[i]]
  features = channels[-1]
  shapes['final_avg_pool'] = [batch, features]
  layer_widths = {'none': [],
                  'linear': [proj_out_dim],
                  'nonlinear': [features] * (num_proj_layers - 1) +
                               [proj_out_dim]}[head_mode]
  widths = [features] + layer_widths
  shapes['proj_head_input'] = [batch, features]
  for index, layer_width in enumerate(widths):
    shapes[f'proj_head_layer_{index}'] = [batch, layer_width]
  shapes['proj_head_output'] = [batch, widths[-1]]
  if num_classes:
    shapes['logits_sup'] = [batch, num_classes]
  return shapes


def output_shapes(model, image_size, batch=2, training=True):
  images = tf.random.uniform([batch, image_size, image_size, 3], seed=0)
  outputs = model(images, training=training)
  for value in outputs.values():
    assert value.dtype == tf.float32
    assert np.all(np.isfinite(value.numpy()))
  return {key: value.shape.as_list() for key, value in outputs.items()}, outputs


SK, SE = 0.0625, 0.25
VARIANTS = {'plain': (0.0, 0.0), 'sk': (SK, 0.0), 'se': (0.0, SE),
            'sk_se': (SK, SE)}
DEPTH_CASES = (
    [(depth, variant) for depth in (18, 34, 50)
     for variant in ('plain', 'sk_se')] +
    [(18, 'sk'), (18, 'se'), (50, 'sk'), (50, 'se')] +
    [pytest.param(depth, variant, marks=pytest.mark.slow)
     for depth in (101, 152, 200) for variant in VARIANTS])


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize('depth, variant', DEPTH_CASES)
def test_output_keys_and_shapes_for_every_depth(depth, variant):
  sk_ratio, se_ratio = VARIANTS[variant]
  model = build_model(10, resnet_depth=depth, width_multiplier=WIDTH,
                      sk_ratio=sk_ratio, se_ratio=se_ratio, image_size=16)
  shapes, _ = output_shapes(model, 16)
  assert shapes == expected_shapes(depth, 16, cifar_stem=True, num_classes=10)


@pytest.mark.parametrize('head_mode, num_proj_layers', [
    ('none', 3), ('linear', 3), ('nonlinear', 1), ('nonlinear', 2),
    ('nonlinear', 3), ('nonlinear', 4)])
def test_projection_head_modes(head_mode, num_proj_layers):
  model = build_model(0, resnet_depth=18, width_multiplier=WIDTH,
                      image_size=8, proj_head_mode=head_mode,
                      num_proj_layers=num_proj_layers, proj_out_dim=16)
  shapes, outputs = output_shapes(model, 8, batch=4)
  assert shapes == expected_shapes(
      18, 8, cifar_stem=True, batch=4, head_mode=head_mode,
      num_proj_layers=num_proj_layers, proj_out_dim=16)
  assert 'logits_sup' not in outputs
  depth = len(shapes) - len(BACKBONE_KEYS) - 2 - 1
  np.testing.assert_array_equal(outputs['proj_head_layer_0'],
                                outputs['final_avg_pool'])
  np.testing.assert_array_equal(outputs['proj_head_input'],
                                outputs['final_avg_pool'])
  np.testing.assert_array_equal(outputs['proj_head_output'],
                                outputs[f'proj_head_layer_{depth}'])
  # Middle layers are after ReLU; the last one is not (BN without ReLU).
  for index in range(1, depth):
    assert np.all(outputs[f'proj_head_layer_{index}'].numpy() >= 0)
  if depth:
    assert np.any(outputs[f'proj_head_layer_{depth}'].numpy() < 0)


def test_projection_head_trains_in_every_mode():
  for head_mode in ('none', 'linear', 'nonlinear'):
    model = build_model(0, resnet_depth=18, width_multiplier=WIDTH,
                        image_size=8, proj_head_mode=head_mode)
    images = tf.random.uniform([4, 8, 8, 3], seed=1)
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = objectives.contrastive_loss(outputs['proj_head_output'])[0]
    gradients = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in gradients), head_mode


@pytest.mark.parametrize('image_size, cifar_stem, sk_ratio', [
    (16, True, 0.0), (16, True, SK), (64, False, 0.0), (64, False, SK)])
def test_cifar_and_standard_stem_spatial_sizes(image_size, cifar_stem,
                                               sk_ratio):
  model = build_model(0, resnet_depth=18, width_multiplier=WIDTH,
                      image_size=image_size, sk_ratio=sk_ratio)
  assert model.resnet_model.cifar_stem is cifar_stem  # <= 32 px: CIFAR stem.
  shapes, _ = output_shapes(model, image_size)
  assert shapes == expected_shapes(18, image_size, cifar_stem)


def test_cifar_stem_can_be_forced_either_way():
  small_standard = build_model(0, resnet_depth=18, width_multiplier=WIDTH,
                               image_size=32, cifar_stem=False)
  shapes, _ = output_shapes(small_standard, 32)
  assert shapes == expected_shapes(18, 32, cifar_stem=False)
  large_cifar = build_model(0, resnet_depth=18, width_multiplier=WIDTH,
                            image_size=40, cifar_stem=True)
  shapes, _ = output_shapes(large_cifar, 40)
  assert shapes == expected_shapes(18, 40, cifar_stem=True)


def test_resnet_d_stem_has_three_convolutions():
  model = build_model(0, resnet_depth=18, width_multiplier=WIDTH,
                      image_size=64, sk_ratio=SK)
  stem = model.resnet_model.initial_conv_relu_max_pool
  convolutions = [layer for layer in stem
                  if isinstance(layer, resnet.Conv2dFixedPadding)]
  assert [c.conv2d.kernel.shape.as_list() for c in convolutions] == [
      [3, 3, 3, 4], [3, 3, 4, 4], [3, 3, 4, 8]]
  assert [c.conv2d.strides for c in convolutions] == [(2, 2), (1, 1), (1, 1)]


def test_selective_kernel_and_resnet_d_shortcut_structure():
  model = build_model(0, resnet_depth=50, width_multiplier=WIDTH, image_size=8,
                      sk_ratio=SK, se_ratio=SE)
  for index, group in enumerate(model.resnet_model.block_groups):
    filters = int(64 * WIDTH) * 2**index
    first = group.layers[0]
    (sk_conv,) = [layer for layer in first.conv_relu_dropblock_layers
                  if isinstance(layer, resnet.SelectiveKernelConv)]
    assert sk_conv.conv2d_fixed_padding.conv2d.filters == 2 * filters
    assert sk_conv.conv2d_0.filters == max(int(filters * SK), 32)
    assert sk_conv.conv2d_1.filters == 2 * filters
    (se_layer,) = [layer for layer in first.conv_relu_dropblock_layers
                   if isinstance(layer, resnet.SqueezeExcitation)]
    assert se_layer.se_reduce.filters == max(1, int(filters * SE))
    assert se_layer.se_expand.filters == 4 * filters
    # ResNet-D: average-pool, then a stride-1 1x1 convolution.
    kinds = [type(layer).__name__ for layer in first.projection_layers]
    pool = [layer for layer in first.projection_layers
            if isinstance(layer, tf_keras.layers.AveragePooling2D)]
    assert len(pool) == 1 and pool[0].strides == ((1, 1) if index == 0
                                                  else (2, 2))
    assert kinds[-2:] == ['Conv2dFixedPadding', 'BatchNormRelu']
    assert first.projection_layers[-2].conv2d.strides == (1, 1)
    assert first.projection_layers[-2].conv2d.kernel_size == (1, 1)


def test_zero_init_logits_layer_starts_the_head_at_zero():
  model = build_model(5, resnet_depth=18, width_multiplier=WIDTH, image_size=8,
                      zero_init_logits_layer=True)
  _, outputs = output_shapes(model, 8)
  assert not np.any(outputs['logits_sup'].numpy())
  default = build_model(5, resnet_depth=18, width_multiplier=WIDTH,
                        image_size=8)
  kernel = default.supervised_head.linear_layer.dense.kernel.numpy()
  assert 0.005 < kernel.std() < 0.02  # N(0, 0.01)


def test_bad_depth_is_rejected():
  with pytest.raises(ValueError, match='resnet_depth.*19'):
    build_model(0, resnet_depth=19, width_multiplier=WIDTH, image_size=8)


# ---------------------------------------------------------------- supervised head
@pytest.mark.parametrize('selector, expected_width', [
    (0, 64), (1, 64), (2, 64), (3, 16), (-1, 16)])
def test_ft_proj_selector_feeds_the_supervised_head(selector, expected_width):
  model = build_model(5, resnet_depth=18, width_multiplier=WIDTH, image_size=8,
                      proj_out_dim=16, ft_proj_selector=selector)
  dense = model.supervised_head.linear_layer.dense
  assert dense.kernel.shape.as_list() == [expected_width, 5]
  _, outputs = output_shapes(model, 8, batch=3, training=False)
  layer = 3 if selector == -1 else selector
  expected = (outputs[f'proj_head_layer_{layer}'].numpy() @ dense.kernel.numpy()
              + dense.bias.numpy())
  np.testing.assert_allclose(outputs['logits_sup'], expected, rtol=1e-5,
                             atol=1e-6)


def test_ft_proj_selector_beyond_the_head_is_rejected():
  with pytest.raises(ValueError, match='ft_proj_selector'):
    build_model(5, resnet_depth=18, width_multiplier=WIDTH, image_size=8,
                ft_proj_selector=4)
  with pytest.raises(ValueError, match='ft_proj_selector'):
    build_model(5, resnet_depth=18, width_multiplier=WIDTH, image_size=8,
                proj_head_mode='linear', ft_proj_selector=2)


def test_linear_eval_head_is_fed_through_stop_gradient_while_pretraining():
  model = build_model(5, resnet_depth=18, width_multiplier=WIDTH, image_size=8,
                      ft_proj_selector=1)
  images = tf.random.uniform([4, 8, 8, 3], seed=2)
  with tf.GradientTape() as tape:
    outputs = model(images, training=True)
    loss = objectives.supervised_loss(tf.constant([0, 1, 2, 3]),
                                      outputs['logits_sup'])
  head = {v.ref() for v in model.supervised_head.variables}
  gradients = tape.gradient(loss, model.trainable_variables)
  for variable, gradient in zip(model.trainable_variables, gradients):
    if variable.ref() in head:
      assert gradient is not None and np.any(gradient.numpy())
    else:
      assert gradient is None, variable.name


# ---------------------------------------------------------------- zero-init
def _residual_blocks(model):
  return [block for group in model.resnet_model.block_groups
          for block in group.layers]


def _conv_path(block):
  if isinstance(block, resnet.BottleneckBlock):
    return block.conv_relu_dropblock_layers
  return block.conv2d_bn_layers


@pytest.mark.parametrize('depth, sk_ratio, se_ratio', [
    (18, 0.0, 0.0), (34, SK, SE), (50, 0.0, 0.0), (50, SK, SE)])
def test_last_batch_norm_of_every_block_starts_at_zero(depth, sk_ratio,
                                                       se_ratio):
  model = build_model(0, resnet_depth=depth, width_multiplier=WIDTH,
                      sk_ratio=sk_ratio, se_ratio=se_ratio, image_size=8)
  blocks = _residual_blocks(model)
  assert len(blocks) == sum(resnet.BLOCKS[depth][1])
  zero_gammas = set()
  for block in blocks:
    batch_norms = [layer for layer in _conv_path(block)
                   if isinstance(layer, resnet.BatchNormRelu)]
    assert not np.any(batch_norms[-1].bn.gamma.numpy())
    zero_gammas.add(batch_norms[-1].bn.gamma.ref())
  # Every other BN (stem, shortcuts, SK, heads) starts at gamma = 1.
  for layer in model.submodules:
    if (isinstance(layer, tf_keras.layers.BatchNormalization) and
        layer.gamma.ref() not in zero_gammas):
      np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
  # So a block without a projection shortcut is the identity on its
  # (post-ReLU, non-negative) input at init.
  channels = model(tf.zeros([1, 8, 8, 3]))['block_group2'].shape[-1]
  inputs = tf.random.uniform([2, 4, 4, channels], seed=3)
  second_block = model.resnet_model.block_groups[1].layers[1]
  np.testing.assert_allclose(second_block(inputs, training=False), inputs,
                             atol=1e-6)


# ---------------------------------------------------------------- freezing
def _backbone_parts(model):
  return ([model.resnet_model.initial_conv_relu_max_pool] +
          [[group] for group in model.resnet_model.block_groups])


def _variables_of(layers):
  return [v for layer in layers for v in layer.variables]


def _moving_statistics(layers):
  return {v.ref(): v.numpy().copy() for layer in layers
          for sub in layer.submodules if isinstance(
              sub, tf_keras.layers.BatchNormalization)
          for v in (sub.moving_mean, sub.moving_variance)}


@pytest.mark.parametrize('fine_tune_after_block', [-1, 0, 1, 2, 3, 4])
def test_fine_tune_after_block_freezes_the_parts_before_it(
    fine_tune_after_block):
  selector = 1
  model = build_model(4, resnet_depth=18, width_multiplier=WIDTH,
                      image_size=8, fine_tune_after_block=fine_tune_after_block,
                      supervised_training=True, ft_proj_selector=selector)
  parts = _backbone_parts(model)
  head_layers = model._projection_head.linear_layers
  frozen_layers = ([layer for part in parts[:fine_tune_after_block + 1]
                    for layer in part] + head_layers[selector:])
  live_layers = ([layer for part in parts[fine_tune_after_block + 1:]
                  for layer in part] + head_layers[:selector] +
                 [model.supervised_head])
  frozen = {v.ref() for v in _variables_of(frozen_layers)}
  assert frozen or fine_tune_after_block == -1
  trainable = {v.ref() for v in model.trainable_variables}
  assert not frozen & trainable
  live_trainable = {v.ref() for layer in live_layers
                    for v in layer.trainable_weights}
  assert live_trainable == trainable
  assert all(not layer.trainable for layer in frozen_layers)

  frozen_before = _moving_statistics(frozen_layers)
  live_before = _moving_statistics(live_layers)
  images = tf.random.uniform([4, 8, 8, 3], seed=4)
  variables = model.variables
  with tf.GradientTape() as tape:
    tape.watch(variables)
    outputs = model(images, training=True)
    loss = objectives.supervised_loss(tf.constant([0, 1, 2, 3]),
                                      outputs['logits_sup'])
  gradients = dict(zip([v.ref() for v in variables],
                       tape.gradient(loss, variables)))
  for ref in frozen:
    assert gradients[ref] is None or not np.any(gradients[ref].numpy()), (
        ref.deref().name)
  for ref in trainable:
    assert gradients[ref] is not None, ref.deref().name
  head_kernel = model.supervised_head.linear_layer.dense.kernel
  assert np.any(gradients[head_kernel.ref()].numpy())

  for ref, before in _moving_statistics(frozen_layers).items():
    np.testing.assert_array_equal(before, frozen_before[ref])
  changed = [not np.array_equal(before, live_before[ref])
             for ref, before in _moving_statistics(live_layers).items()]
  assert len(changed) == len(live_before)
  if fine_tune_after_block < 4:
    assert all(changed), 'live BN layers update their moving statistics'


def test_frozen_parts_run_in_inference_mode():
  model = build_model(0, resnet_depth=18, width_multiplier=WIDTH, image_size=8,
                      fine_tune_after_block=1, supervised_training=True)
  images = tf.random.uniform([4, 8, 8, 3], seed=5)
  training = model(images, training=True)
  inference = model(images, training=False)
  for key in ('initial_conv', 'initial_max_pool', 'block_group1'):
    np.testing.assert_allclose(training[key], inference[key], atol=1e-6)
  assert not np.allclose(training['block_group2'], inference['block_group2'])


def test_bad_fine_tune_after_block_is_rejected():
  with pytest.raises(ValueError, match='fine_tune_after_block'):
    build_model(0, resnet_depth=18, width_multiplier=WIDTH, image_size=8,
                fine_tune_after_block=5)


@pytest.mark.parametrize('synchronized', [False, True])
def test_moving_variance_is_the_uncorrected_batch_variance(synchronized):
  """The fused training kernel (one replica) and the synchronised unfused BN
  (global BN) both keep m · moving + (1 − m) · var with the batch variance
  without Bessel's correction, by NumPy, over three steps; the fused path is
  taken (Keras chose the fused kernel)."""
  from tf_simclr import resnet  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  layer = resnet.BatchNormalization(momentum=0.9, synchronized=synchronized)
  layer.build([None, 3, 3, 5])
  assert layer.fused == (not synchronized)
  step = tf.function(lambda x: layer(x, training=True))
  moving_mean, moving_variance = np.zeros(5), np.ones(5)
  for _ in range(3):
    x = (rng.normal(size=(7, 3, 3, 5)) * 2 + 1).astype(np.float32)
    step(tf.constant(x))
    flat = x.reshape(-1, 5).astype(np.float64)
    moving_mean = 0.9 * moving_mean + 0.1 * flat.mean(0)
    moving_variance = 0.9 * moving_variance + 0.1 * flat.var(0)  # ddof=0
  np.testing.assert_allclose(layer.moving_mean.numpy(), moving_mean, rtol=1e-5)
  np.testing.assert_allclose(layer.moving_variance.numpy(), moving_variance,
                             rtol=1e-5)


# ---------------------------------------------------------------- the architecture record
@pytest.mark.parametrize('kwargs', [
    dict(num_classes=10, resnet_depth=18, width_multiplier=0.125,
         image_size=32, ft_proj_selector=1),
    dict(num_classes=0, resnet_depth=50, width_multiplier=0.0625,
         sk_ratio=0.0625, se_ratio=0.25, image_size=64, proj_head_mode='linear',
         proj_out_dim=16, batch_norm_decay=0.99),
])
def test_get_config_from_config_round_trip(kwargs):
  """A model rebuilt from its get_config has the same variables (names,
  shapes, trainability) and, given the same weights, the same outputs; its
  layers round-trip the same way."""
  from tf_simclr import architecture  # pylint: disable=g-import-not-at-top
  from tf_simclr import heads  # pylint: disable=g-import-not-at-top
  from tf_simclr import model as model_lib  # pylint: disable=g-import-not-at-top
  model = build_model(**kwargs, supervised_training=bool(kwargs['num_classes']),
                      fine_tune_after_block=1)
  config = model.get_config()
  record = architecture.ModelConfig.from_dict(config['model_config'])
  assert record == model.model_config
  for name, value in kwargs.items():
    assert getattr(record, name) == value
  again = model_lib.SimCLRModel.from_config(config)
  assert again.get_config() == config
  from tf_simclr import reference  # pylint: disable=g-import-not-at-top

  def describe(m):  # Checkpoint key -> (shape, trainable).
    return {key: (v.shape.as_list(), v.trainable) for key, v in
            reference.model_checkpoint_variables(m).items()}
  assert describe(again) == describe(model)
  again.set_weights(model.get_weights())
  size = kwargs['image_size']
  images = tf.random.stateless_uniform([2, size, size, 3], seed=(1, 2))
  expected = model(images, training=False)
  got = again(images, training=False)
  assert expected.keys() == got.keys()
  for key in expected:
    np.testing.assert_array_equal(expected[key].numpy(), got[key].numpy())
  # The layers: from_config of get_config gives the same configuration.
  layers = [model.resnet_model, model.projection_head]
  if model.has_supervised_head:
    layers.append(model.supervised_head)
  for layer in layers:
    rebuilt = type(layer).from_config(layer.get_config())
    assert rebuilt.get_config() == layer.get_config()
  assert isinstance(layers[1], heads.ProjectionHead)


def test_model_config_from_a_run_config_and_config_json(tmp_path):
  """run.py's Config fills the record, config.json stores it, and reading it
  back (with the extra keys config.json holds) gives the same record."""
  from tf_simclr import architecture  # pylint: disable=g-import-not-at-top
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.Config(
      model_dir=str(tmp_path), dataset='synthetic', resnet_depth=34,
      width_multiplier=0.25, image_size=48, num_proj_layers=2,
      proj_out_dim=32, ft_proj_selector=2, num_classes=7).validate()
  record = config.model_config()
  assert record == architecture.ModelConfig(
      resnet_depth=34, width_multiplier=0.25, image_size=48,
      num_proj_layers=2, proj_out_dim=32, ft_proj_selector=2, num_classes=7)
  assert not record.cifar_stem
  config_lib.write_architecture(str(tmp_path), config.architecture(),
                                {'train_mode': 'pretrain', 'class_names': []})
  saved = config_lib.read_architecture(str(tmp_path))
  assert architecture.ModelConfig.from_dict(saved) == record
  model = build_model(record)
  assert model.model_config == record
  assert model.resnet_model.cifar_stem == record.cifar_stem

"""Loading google-research/simclr TF2 checkpoints (tf_simclr.reference).

The fixtures were written by the reference code itself (see
fixtures/reference_simclr_tf2/README.md): three small checkpoints with inputs
and the reference's outputs, and the variable lists of the two full-size
released architectures.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tensorflow.python.ops import resource_variable_ops

from tf_simclr import build_model
from tf_simclr import checkpoints
from tf_simclr import config
from tf_simclr import convert_reference
from tf_simclr import reference

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'fixtures', 'reference_simclr_tf2')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMERIC = ('r50_w0.125_sk1_64px', 'r50_w0.125_se0.25_64px',
           'r18_w0.125_sk0_cifar_32px')
NAMES_ONLY = ('names_r50_1x_sk1', 'names_r152_3x_sk1')
CIFAR = 'r18_w0.125_sk0_cifar_32px'
SK = 'r50_w0.125_sk1_64px'
SE = 'r50_w0.125_se0.25_64px'
# Model variables that a reference checkpoint does not hold, with the reason.
# None: the model mirrors the reference's object graph variable for variable.
MODEL_VARIABLES_THE_REFERENCE_LACKS = {}
# Relative to the largest value of an output. float32 kernels round
# differently by CPU: AVX2 stays under 1e-5, an AVX-512 Xeon reached 3.5e-5
# on ResNet-50 SK's final_avg_pool; a wrong padding, epsilon or weight
# mapping is off by far more than 1e-4.
RTOL = 1e-4


# ------------------------------------------------------------------ helpers
def fixture_config(name):
  with open(os.path.join(FIXTURES, name, 'config.json')) as f:
    return json.load(f)


def fixture_prefix(name):
  return os.path.join(FIXTURES, name, 'ckpt')


def model_kwargs(name, **overrides):
  """build_model arguments of a fixture (from its README config)."""
  cfg = fixture_config(name)
  kwargs = dict(num_classes=cfg['num_classes'],
                resnet_depth=cfg['resnet_depth'],
                width_multiplier=cfg['width_multiplier'],
                sk_ratio=cfg['sk_ratio'], se_ratio=cfg['se_ratio'],
                image_size=cfg['image_size'], cifar_stem=cfg['cifar_stem'],
                num_proj_layers=cfg['num_proj_layers'],
                proj_out_dim=cfg['proj_out_dim'])
  kwargs.update(overrides)
  return kwargs


def build(name, **overrides):
  kwargs = model_kwargs(name, **overrides)
  return build_model(kwargs.pop('num_classes'), **kwargs)


def tsv_shapes(name):
  """{checkpoint key: shape} from a fixture's variables.tsv."""
  shapes = {}
  with open(os.path.join(FIXTURES, name, 'variables.tsv')) as f:
    next(f)
    for line in f:
      key, shape = line.rstrip('\n').split('\t')
      shapes[key] = tuple(int(dim) for dim in shape.strip('[]').split(',')
                          if dim.strip())
  return shapes


def model_keys_of(shapes):
  return {key for key in shapes
          if key.startswith('model/') and key.endswith(reference.VALUE_SUFFIX)}


def build_without_weights(name):
  """Builds a fixture's model with handles but no memory for the weights.

  Every variable is an UninitializedVariable (shape and dtype, no buffer) and
  the model is traced, not run, so a ResNet-152 3x costs no 3.5 GB.
  """
  def creator(unused_next_creator, **kwargs):
    return resource_variable_ops.UninitializedVariable(
        shape=kwargs.get('shape'), dtype=kwargs.get('dtype'),
        name=kwargs.get('name'), trainable=kwargs.get('trainable', True))

  kwargs = model_kwargs(name, build=False)
  model = build_model(kwargs.pop('num_classes'), **kwargs)
  size = kwargs['image_size']
  with tf.variable_creator_scope(creator):
    tf.function(model.call).get_concrete_function(
        tf.TensorSpec([1, size, size, 3], tf.float32), training=False)
  return model


def assert_outputs_match(model, name):
  """Every output in expected.npz within relative error RTOL (inference)."""
  inputs = np.load(os.path.join(FIXTURES, name, 'inputs.npy'))
  expected = np.load(os.path.join(FIXTURES, name, 'expected.npz'))
  outputs = model(tf.constant(inputs), training=False)
  assert set(expected.files) == {
      'final_avg_pool', 'logits_sup', 'proj_layer_0', 'proj_layer_1',
      'proj_layer_2', 'proj_layer_3'}
  for key in expected.files:
    ours = key.replace('proj_layer_', 'proj_head_layer_')
    want = expected[key]
    got = outputs[ours].numpy()
    assert got.shape == want.shape, key
    error = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert error <= RTOL, f'{name} {key}: relative error {error}'


def error_sections(message):
  """Splits a ReferenceCheckpointError message into {section title: lines}."""
  sections, current = {}, None
  for line in message.splitlines()[1:]:
    if line.startswith('    '):
      sections[current].append(line.strip())
    elif line.startswith('  ') and line.rstrip().endswith('):'):
      current = line.strip().split(' (')[0]
      sections[current] = []
  return sections


# ---------------------------------------------------------------- numerics
@pytest.mark.parametrize('name', NUMERIC)
def test_loaded_fixture_reproduces_reference_outputs(name):
  model = build(name)
  summary = reference.load_reference_checkpoint(model, fixture_prefix(name))
  assert summary.restored == len(model_keys_of(tsv_shapes(name)))
  assert summary.global_step is None  # The fixtures hold the model only.
  assert_outputs_match(model, name)


def test_model_keys_are_what_the_saver_writes(tmp_path):
  model = build(CIFAR)
  prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / 'ckpt'))
  written = {key for key, _ in tf.train.list_variables(prefix)
             if key.endswith(reference.VALUE_SUFFIX)}
  assert set(reference.model_checkpoint_variables(model)) == written
  assert written == model_keys_of(tsv_shapes(CIFAR))


# ------------------------------------------------------------- full size
@pytest.mark.parametrize('name', NAMES_ONLY)
def test_full_size_reference_variables_each_land_in_one_model_variable(name):
  shapes = tsv_shapes(name)
  model = build_without_weights(name)
  model_variables = reference.model_checkpoint_variables(model)
  reference_keys = model_keys_of(shapes)

  assert reference_keys - set(model_variables) == set()
  for key in reference_keys:
    assert tuple(model_variables[key].shape) == shapes[key], key
  # Distinct keys name distinct variables: no variable takes two keys.
  assert len({id(v) for v in model_variables.values()}) == len(model_variables)
  # Every model variable is in the checkpoint, all of the model's are tracked.
  lacking = set(model_variables) - reference_keys
  assert lacking == set(MODEL_VARIABLES_THE_REFERENCE_LACKS)
  assert len(model_variables) == len(model.variables)
  # And the loader's own comparison agrees.
  pairs, ignored = reference.match_shapes(model, shapes)
  assert {key for key, _ in pairs} == reference_keys
  assert ignored == ['_CHECKPOINTABLE_OBJECT_GRAPH']


# -------------------------------------------------------------- describe
@pytest.mark.parametrize('name', NUMERIC + NAMES_ONLY)
def test_describe_infers_the_fixture_architecture(name):
  cfg = fixture_config(name)
  if cfg['numeric']:
    info = reference.describe_reference(os.path.join(FIXTURES, name))
  else:
    info = reference.describe_shapes(tsv_shapes(name))
  for field in ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
                'cifar_stem', 'num_proj_layers', 'proj_out_dim',
                'num_classes'):
    assert info[field] == cfg[field], field
  assert info['proj_head_mode'] == 'nonlinear'
  assert info['image_size'] == (32 if cfg['cifar_stem'] else 224)


def test_describe_rejects_a_checkpoint_without_a_resnet(tmp_path):
  prefix = tf.train.Checkpoint(step=tf.Variable(3)).write(str(tmp_path / 'c'))
  with pytest.raises(reference.ReferenceCheckpointError, match='resnet_model'):
    reference.describe_reference(prefix)


# ------------------------------------------------------------- mismatches
def mismatch_error(name, **overrides):
  model = build(name, **overrides)
  before = [v.numpy() for v in model.variables]
  with pytest.raises(reference.ReferenceCheckpointError) as error:
    reference.load_reference_checkpoint(model, fixture_prefix(name))
  # Verification comes first: nothing was assigned.
  for old, variable in zip(before, model.variables):
    np.testing.assert_array_equal(old, variable.numpy())
  return str(error.value)


def test_wrong_depth_lists_the_missing_blocks():
  message = mismatch_error(CIFAR, resnet_depth=34)
  assert error_sections(message) == {'missing from the checkpoint': [
      'model/resnet_model/block_groups/{0, 3}/layers/2/*',
      'model/resnet_model/block_groups/1/layers/{2..3}/*',
      'model/resnet_model/block_groups/2/layers/{2..5}/*',
  ]}
  assert 'missing from the checkpoint (80)' in message  # 8 blocks x 10.
  assert 'checkpoint looks like: resnet_depth=18' in message


def test_wrong_width_lists_every_shape_mismatch():
  message = mismatch_error(CIFAR, width_multiplier=0.25)
  sections = error_sections(message)
  assert list(sections) == ['shape mismatches']
  # Every variable but the supervised bias and the 128-wide last projection
  # BN (gamma, moving mean, variance) changes shape.
  assert f'shape mismatches ({121 - 4})' in message
  assert ('model/resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel: '
          'model [3, 3, 3, 16], checkpoint [3, 3, 3, 8]') in message
  assert 'width_multiplier=0.25' in message
  assert 'width_multiplier=0.125' in message


def test_wrong_sk_lists_stem_and_selective_kernel_variables():
  message = mismatch_error(SK, sk_ratio=0.0)
  sections = error_sections(message)
  missing = sections['missing from the checkpoint']
  unexpected = sections['unexpected in the checkpoint']
  # Standard stem (conv 0, BN 2) instead of ResNet-D's (convs 0, 2, 4).
  assert 'model/resnet_model/initial_conv_relu_max_pool/2/*' in missing
  assert ('model/resnet_model/initial_conv_relu_max_pool/{1, 2, 3, 4, 6}/*'
          in unexpected)
  # The SK convolution (3) against a plain 3x3 conv + BN (3, 4); the layers
  # after it shift by one; the ResNet-D shortcut's conv sits after a pool.
  assert any('conv_relu_dropblock_layers/{3, 4, 6, 7}/*' in line
             for line in missing)
  assert any('conv_relu_dropblock_layers/{3, 5, 6}/*' in line
             for line in unexpected)
  assert ('model/resnet_model/block_groups/{0..3}/layers/0/projection_layers/*'
          in missing)
  assert ('model/resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel: '
          'model [7, 7, 3, 8], checkpoint [3, 3, 3, 4]'
          in sections['shape mismatches'])


def test_wrong_se_lists_the_squeeze_excitation_layers():
  message = mismatch_error(SE, se_ratio=0.0)
  assert error_sections(message) == {'unexpected in the checkpoint': [
      'model/resnet_model/block_groups/{0, 3}/layers/{0..2}/'
      'conv_relu_dropblock_layers/9/*',
      'model/resnet_model/block_groups/1/layers/{0..3}/'
      'conv_relu_dropblock_layers/9/*',
      'model/resnet_model/block_groups/2/layers/{0..5}/'
      'conv_relu_dropblock_layers/9/*',
  ]}


def test_wrong_class_count_lists_the_head_and_suggests_skipping_it():
  message = mismatch_error(CIFAR, num_classes=5)
  assert error_sections(message) == {'shape mismatches': [
      'model/supervised_head/linear_layer/dense/bias: model [5], '
      'checkpoint [10]',
      'model/supervised_head/linear_layer/dense/kernel: model [64, 5], '
      'checkpoint [64, 10]',
  ]}
  assert 'skip_supervised_head=True' in message


def test_skip_supervised_head_loads_everything_else():
  model = build(CIFAR, num_classes=5)
  head_before = [v.numpy() for v in model.supervised_head.variables]
  summary = reference.load_reference_checkpoint(
      model, fixture_prefix(CIFAR), skip_supervised_head=True)
  assert summary.restored == 121 - 2
  assert [key.split('/')[1] for key in summary.ignored] == [
      'supervised_head', 'supervised_head']
  for old, variable in zip(head_before, model.supervised_head.variables):
    np.testing.assert_array_equal(old, variable.numpy())
  reference_model = build(CIFAR)
  reference.load_reference_checkpoint(reference_model, fixture_prefix(CIFAR))
  inputs = np.load(os.path.join(FIXTURES, CIFAR, 'inputs.npy'))
  ours = model(inputs, training=False)
  theirs = reference_model(inputs, training=False)
  np.testing.assert_array_equal(ours['proj_head_output'],
                                theirs['proj_head_output'])


def test_model_without_head_ignores_the_checkpoint_head():
  model = build(CIFAR, num_classes=0)
  summary = reference.load_reference_checkpoint(model, fixture_prefix(CIFAR))
  assert summary.restored == 121 - 2
  assert all(key.startswith('model/supervised_head/')
             for key in summary.ignored) and len(summary.ignored) == 2


def test_training_checkpoint_with_optimizer_and_global_step(tmp_path):
  """A checkpoint of a training run: optimizer slots and global_step too."""
  model = build(CIFAR)
  reference.load_reference_checkpoint(model, fixture_prefix(CIFAR))
  optimizer = tf_keras.optimizers.legacy.SGD(0.0, momentum=0.9)
  optimizer.apply_gradients(
      (tf.zeros_like(v), v) for v in model.trainable_variables)
  prefix = tf.train.Checkpoint(
      model=model, optimizer=optimizer,
      global_step=tf.Variable(7, dtype=tf.int64)).write(str(tmp_path / 'ckpt'))
  assert any('.OPTIMIZER_SLOT' in key for key, _ in
             tf.train.list_variables(prefix))

  loaded = build(CIFAR)
  summary = reference.load_reference_checkpoint(loaded, prefix)
  assert summary.global_step == 7
  assert summary.restored == 121
  assert any('.OPTIMIZER_SLOT' in key for key in summary.ignored)
  assert not any(key.startswith('model/') and '.OPTIMIZER_SLOT' not in key
                 for key in summary.ignored)
  assert_outputs_match(loaded, CIFAR)


# ---------------------------------------------------------------- path forms
def test_directory_and_saved_model_paths(tmp_path):
  source = os.path.join(FIXTURES, CIFAR)
  # A directory with one *.index and no 'checkpoint' file.
  assert (checkpoints.resolve_checkpoint(source) ==
          fixture_prefix(CIFAR))
  # The layout of a released TF2 SavedModel.
  saved_model = tmp_path / 'saved_model'
  (saved_model / 'variables').mkdir(parents=True)
  (saved_model / 'saved_model.pb').write_bytes(b'')
  for suffix in ('.index', '.data-00000-of-00001'):
    shutil.copy(os.path.join(source, 'ckpt' + suffix),
                saved_model / 'variables' / ('variables' + suffix))
  model = build(CIFAR)
  summary = reference.load_reference_checkpoint(model, str(saved_model))
  assert summary.prefix == str(saved_model / 'variables' / 'variables')
  assert_outputs_match(model, CIFAR)


def test_unbuilt_model_is_built_before_loading():
  model = build(CIFAR, build=False)
  reference.load_reference_checkpoint(model, fixture_prefix(CIFAR))
  assert_outputs_match(model, CIFAR)


def test_bad_paths_raise_a_clear_error(tmp_path):
  model = build(CIFAR)
  with pytest.raises(reference.ReferenceCheckpointError, match='no checkpoint'):
    reference.load_reference_checkpoint(model, str(tmp_path / 'absent'))
  with pytest.raises(reference.ReferenceCheckpointError, match='no checkpoint'):
    reference.describe_reference(str(tmp_path))


# ---------------------------------------------------------------------- CLI
def test_convert_writes_a_project_checkpoint(tmp_path, capsys):
  model_dir = str(tmp_path / 'converted')
  assert convert_reference.main([f'--checkpoint={FIXTURES}/{CIFAR}',
                                 f'--model_dir={model_dir}']) == 0
  assert 'Restored 121 variables' in capsys.readouterr().out
  architecture = config.read_architecture(model_dir)
  cfg = fixture_config(CIFAR)
  assert {field: architecture[field] for field in config.MODEL_FIELDS} == {
      'resnet_depth': 18, 'width_multiplier': 0.125, 'sk_ratio': 0.0,
      'se_ratio': 0.0, 'image_size': 32, 'proj_head_mode': 'nonlinear',
      'num_proj_layers': 3, 'proj_out_dim': 128, 'ft_proj_selector': 0,
      'batch_norm_decay': cfg['batch_norm_decay'], 'num_classes': 10}
  kwargs = {field: architecture[field] for field in config.MODEL_FIELDS}
  model = build_model(kwargs.pop('num_classes'), **kwargs)
  global_step = tf.Variable(-1, dtype=tf.int64)
  status = tf.train.Checkpoint(model=model, global_step=global_step).read(
      tf.train.latest_checkpoint(model_dir))
  status.assert_existing_objects_matched()
  assert int(global_step.numpy()) == 0
  assert_outputs_match(model, CIFAR)
  # A second conversion into the same directory is refused.
  assert convert_reference.main([f'--checkpoint={FIXTURES}/{CIFAR}',
                                 f'--model_dir={model_dir}']) == 2
  assert 'already holds a checkpoint' in capsys.readouterr().err


def test_convert_refuses_a_mismatching_override(tmp_path, capsys):
  code = convert_reference.main([f'--checkpoint={FIXTURES}/{CIFAR}',
                                 f'--model_dir={tmp_path}',
                                 '--resnet_depth=34'])
  assert code == 2
  assert 'missing from the checkpoint (80)' in capsys.readouterr().err
  assert tf.train.latest_checkpoint(str(tmp_path)) is None


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
  environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
                     PYTHONPATH=REPO_ROOT)
  result = subprocess.run(
      [sys.executable, '-m', 'tf_simclr.convert_reference',
       f'--checkpoint={tmp_path}/absent', f'--model_dir={tmp_path}/out'],
      cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('convert_reference: error: no checkpoint at')
  assert not os.path.exists(tmp_path / 'out')


# ---------------------------------------------------------------- export
@pytest.mark.slow
def test_loaded_fixture_exported_and_reloaded_gives_the_reference_outputs(
    tmp_path):
  """A reference checkpoint, loaded, exported (hub modules and serving
  model) and reloaded in a new process, gives the loaded model's outputs.

  Compared with the model run as a graph (tf.function), as every SavedModel
  consumer runs it: grappler's arithmetic optimizer reorders the BN
  arithmetic, which moves outputs of this deep SK network by up to ~3e-5
  relative from the eager values in expected.npz (still checked, at 1e-4)."""
  from tf_simclr import export  # pylint: disable=import-outside-toplevel
  name = 'r50_w0.125_sk1_64px'
  model = build(name)
  reference.load_reference_checkpoint(model, fixture_prefix(name))
  export.export_model(model, str(tmp_path), image_size=64, step=1,
                      train_mode='finetune')
  script = f'''
import json, sys
import numpy as np, tensorflow as tf, tensorflow_hub as hub
inputs = tf.constant(np.load({os.path.join(FIXTURES, name, 'inputs.npy')!r}))
out = {{}}
for depth in range(4):
  layer = hub.KerasLayer({str(tmp_path)!r} + f'/hub/proj_head_{{depth}}')
  out[f'proj_layer_{{depth}}'] = layer(inputs).numpy().tolist()
serving = tf.saved_model.load({str(tmp_path)!r} + '/saved_model/1')
out['logits_sup'] = serving.signatures['serving_float'](
    images=inputs)['logits'].numpy().tolist()
out['final_avg_pool'] = serving.all_outputs(inputs)['final_avg_pool'].numpy().tolist()
print(json.dumps(out))
'''
  result = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          text=True, check=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  reloaded = json.loads(result.stdout.strip().splitlines()[-1])
  inputs = tf.constant(np.load(os.path.join(FIXTURES, name, 'inputs.npy')))
  graph = tf.function(lambda images: model(images, training=False))(inputs)
  expected = np.load(os.path.join(FIXTURES, name, 'expected.npz'))
  for key in expected.files:
    got = np.array(reloaded[key])
    want = graph[key.replace('proj_layer_', 'proj_head_layer_')].numpy()
    error = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert error <= RTOL, f'{key}: relative error {error} (graph)'
    error = np.max(np.abs(got - expected[key])) / np.max(np.abs(expected[key]))
    assert error <= 1e-4, f'{key}: relative error {error} (reference)'

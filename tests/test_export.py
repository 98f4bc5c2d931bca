"""Tests of the export package: hub modules, serving SavedModel, CLI.

Tiny models (ResNet-18, width 0.125, 40 px so the eval center crop runs). One
export is shared by the module (fixture `exported`); the subprocess tests check
what a fresh process sees.
"""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from tf_simclr import augment
from tf_simclr import export
from tf_simclr.export import exporter
from tf_simclr.export import modules
from tf_simclr import model as model_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 40
NUM_CLASSES = 10
CLASS_NAMES = tuple(f'class_{i}' for i in range(NUM_CLASSES))
ARCHITECTURE = dict(resnet_depth=18, width_multiplier=0.125,
                    num_proj_layers=2, proj_out_dim=16, ft_proj_selector=1)
DEPTH = ARCHITECTURE['num_proj_layers']
STEP = 7
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


def _subprocess_env():
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      [REPO_ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['CUDA_VISIBLE_DEVICES'] = ''
  return env


def _run_python(code, *args, timeout=300):
  completed = subprocess.run(
      [sys.executable, '-c', textwrap.dedent(code), *args], cwd=REPO_ROOT,
      env=_subprocess_env(), capture_output=True, text=True, timeout=timeout)
  assert completed.returncode == 0, completed.stderr[-3000:]
  return completed


def _randomise_batch_norm(model, seed=0):
  """Trained-looking BN: gamma != 0 (else the weights before a zero-gamma BN
  get zero gradients), non-trivial moving statistics."""
  rng = np.random.RandomState(seed)
  for variable in model.variables:
    name = variable.name
    shape = variable.shape
    if 'gamma' in name or 'moving_variance' in name:
      variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    elif 'beta' in name or 'moving_mean' in name:
      variable.assign(rng.normal(0, 0.1, shape).astype(np.float32))


def _images(count=4, seed=0):
  return np.random.RandomState(seed).rand(
      count, IMAGE_SIZE, IMAGE_SIZE, 3).astype(np.float32)


def _encode(image_uint8, fmt):
  buffer = io.BytesIO()
  Image.fromarray(image_uint8).save(buffer, format=fmt)
  return buffer.getvalue()


def _smooth_image(height, width, seed=0):
  """uint8 [height, width, 3]: smooth enough that JPEG keeps it recognisable."""
  rng = np.random.RandomState(seed)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  channels = [np.sin(rng.uniform(2, 6) * x + rng.uniform(1, 5) * y + c)
              for c in range(3)]
  return ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)


def _eval_preprocess(image_float):
  return augment.preprocess_for_eval(tf.constant(image_float), IMAGE_SIZE,
                                     IMAGE_SIZE).numpy()


@pytest.fixture(scope='module')
def trained_model():
  model = model_lib.build_model(NUM_CLASSES, **ARCHITECTURE,
                                image_size=IMAGE_SIZE, supervised_training=True)
  _randomise_batch_norm(model)
  return model


@pytest.fixture(scope='module')
def exported(trained_model, tmp_path_factory):
  export_dir = str(tmp_path_factory.mktemp('export'))
  result = export.export_model(
      trained_model, export_dir, image_size=IMAGE_SIZE, step=STEP,
      train_mode='finetune', class_names=CLASS_NAMES, keep_max=2)
  return export_dir, result


# ---------------------------------------------------------------- layout
def test_layout_and_return_value(exported):
  export_dir, result = exported
  assert json.loads(json.dumps(result)) == result
  assert result['saved_model'] == os.path.join(export_dir, 'saved_model',
                                               str(STEP))
  assert result['hub'] == [os.path.join(export_dir, 'hub', f'proj_head_{k}')
                           for k in range(DEPTH + 1)]
  assert result['written'] and result['pruned'] == []
  for path in [result['saved_model']] + result['hub']:
    assert os.path.exists(os.path.join(path, 'saved_model.pb'))
  assert sorted(os.listdir(export_dir)) == ['hub', 'saved_model']
  assert os.listdir(os.path.join(export_dir, 'saved_model')) == [str(STEP)]
  info_path = os.path.join(result['hub'][1], 'assets.extra',
                           'export_info.json')
  with open(info_path) as f:
    info = json.load(f)
  assert info['depth'] == 1 and info['step'] == STEP
  assert info['class_names'] == list(CLASS_NAMES)


# ---------------------------------------------------------------- equality
def test_exported_outputs_equal_keras(trained_model, exported):
  _, result = exported
  images = _images()
  expected = {k: v.numpy() for k, v in
              trained_model(images, training=False).items()}
  serving = tf.saved_model.load(result['saved_model'])
  assert int(serving.num_classes.numpy()) == NUM_CLASSES
  outputs = serving.all_outputs(images)
  assert sorted(outputs) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(outputs[key], value, **TOLERANCE, err_msg=key)
  served = serving.signatures['serving_float'](images=tf.constant(images))
  np.testing.assert_allclose(served['logits'], expected['logits_sup'],
                             **TOLERANCE)
  probabilities = tf.nn.softmax(expected['logits_sup']).numpy()
  np.testing.assert_allclose(served['probabilities'], probabilities, atol=1e-6)
  top = np.argsort(-probabilities, axis=1)[:, :5]
  np.testing.assert_array_equal(served['top_k_indices'], top)
  np.testing.assert_array_equal(
      served['top_k_names'].numpy().astype(str), np.array(CLASS_NAMES)[top])
  for depth, path in enumerate(result['hub']):
    module = tf.saved_model.load(path)
    key = 'final_avg_pool' if depth == 0 else f'proj_head_layer_{depth}'
    np.testing.assert_allclose(module(images), expected[key], **TOLERANCE)
    np.testing.assert_allclose(module(images, training=False), expected[key],
                               **TOLERANCE)
    np.testing.assert_allclose(
        module.signatures['serving_float'](images=tf.constant(images))[
            'features'], expected[key], **TOLERANCE)
    np.testing.assert_allclose(module.all_outputs(images)['logits_sup'],
                               expected['logits_sup'], **TOLERANCE)
    assert int(module.num_classes.numpy()) == NUM_CLASSES


def test_exported_outputs_equal_keras_after_reload_in_new_process(
    trained_model, exported, tmp_path):
  _, result = exported
  images = _images(seed=1)
  expected = trained_model(images, training=False)
  data_path = str(tmp_path / 'expected.npz')
  np.savez(data_path, images=images,
           **{k: v.numpy() for k, v in expected.items()})
  _run_python("""
      import sys
      import numpy as np
      import tensorflow as tf
      data = np.load(sys.argv[1])
      images = data['images']
      serving = tf.saved_model.load(sys.argv[2])
      outputs = serving.all_outputs(images)
      assert sorted(outputs) == sorted(k for k in data.files if k != 'images')
      for key, value in outputs.items():
        np.testing.assert_allclose(value, data[key], atol=1e-5, rtol=1e-5)
      logits = serving.signatures['serving_float'](
          images=tf.constant(images))['logits']
      np.testing.assert_allclose(logits, data['logits_sup'], atol=1e-5, rtol=1e-5)
      for depth, path in enumerate(sys.argv[3:]):
        key = 'final_avg_pool' if depth == 0 else f'proj_head_layer_{depth}'
        np.testing.assert_allclose(tf.saved_model.load(path)(images), data[key],
                                   atol=1e-5, rtol=1e-5)
      """, data_path, result['saved_model'], *result['hub'])


# ---------------------------------------------------------------- hub modules
def test_hub_modules_fine_tune_at_every_depth(trained_model, exported,
                                              tmp_path):
  _, result = exported
  images = _images(8, seed=2)
  labels = np.arange(8) % 3
  # A copy whose projection head trains whole (supervised_training=False).
  reference = model_lib.build_model(NUM_CLASSES, **ARCHITECTURE,
                                    image_size=IMAGE_SIZE)
  weights_path = tf.train.Checkpoint(model=trained_model).write(
      str(tmp_path / 'weights'))
  tf.train.Checkpoint(model=reference).read(
      weights_path).assert_existing_objects_matched()
  expected_training = reference(images, training=True)
  for depth, path in enumerate(result['hub']):
    key = 'final_avg_pool' if depth == 0 else f'proj_head_layer_{depth}'
    layer = hub.KerasLayer(path, trainable=True)
    loaded = layer.resolved_object
    assert list(loaded.regularization_losses) == []
    assert 0 < len(loaded.trainable_variables) < len(loaded.variables)
    classifier = tf_keras.layers.Dense(3)
    # training=True uses batch statistics: the Keras model's training output.
    np.testing.assert_allclose(layer(images, training=True),
                               expected_training[key], atol=1e-4, rtol=1e-4)
    weights = layer.trainable_weights
    assert weights
    assert not any('moving' in w.name for w in weights)
    before = [w.numpy() for w in weights]
    with tf.GradientTape() as tape:
      logits = classifier(layer(images, training=True))
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels, logits))
    gradients = tape.gradient(loss, weights + classifier.trainable_weights)
    missing = [w.name for w, g in zip(weights, gradients) if g is None]
    assert not missing, f'depth {depth}: no gradient for {missing}'
    batch_norm = [g for w, g in zip(weights, gradients)
                  if 'gamma' in w.name or 'beta' in w.name]
    assert batch_norm and all(np.any(g.numpy() != 0) for g in batch_norm)
    tf_keras.optimizers.SGD(0.1).apply_gradients(
        zip(gradients, weights + classifier.trainable_weights))
    unchanged = [w.name for w, old in zip(weights, before)
                 if np.array_equal(w.numpy(), old)]
    assert not unchanged, f'depth {depth}: {unchanged} did not change'


# ---------------------------------------------------------------- serving
def test_saved_model_cli_lists_signatures(exported):
  _, result = exported
  completed = subprocess.run(
      ['saved_model_cli', 'show', '--all', '--dir', result['saved_model']],
      env=_subprocess_env(), capture_output=True, text=True, timeout=120)
  assert completed.returncode == 0, completed.stderr[-2000:]
  listing = completed.stdout
  for text in ("signature_def['serving_default']",
               "signature_def['serving_float']", 'image_bytes',
               'dtype: DT_STRING', 'top_k_names', 'probabilities', 'logits'):
    assert text in listing, text


def test_bytes_signature_matches_float_signature(exported):
  _, result = exported
  serving = tf.saved_model.load(result['saved_model'])
  wide = _smooth_image(48, 64, seed=3)  # Center crop + resize.
  tall = _smooth_image(70, 50, seed=4)
  grey = tall[..., 0]
  files = [_encode(wide, 'JPEG'), _encode(wide, 'PNG'), _encode(grey, 'PNG'),
           _encode(np.dstack([tall, np.full(tall.shape[:2], 9, np.uint8)]),
                   'PNG')]
  decoded = [
      tf.image.convert_image_dtype(tf.io.decode_jpeg(files[0]),
                                   tf.float32).numpy(),
      wide / 255., np.repeat(grey[..., None], 3, -1) / 255., tall / 255.]
  preprocessed = np.stack([_eval_preprocess(image.astype(np.float32))
                           for image in decoded])
  by_bytes = serving.signatures['serving_default'](
      image_bytes=tf.constant(files))
  by_float = serving.signatures['serving_float'](
      images=tf.constant(preprocessed))
  assert sorted(by_bytes) == sorted(by_float)
  for key in ('logits', 'probabilities', 'top_k_probabilities'):
    np.testing.assert_allclose(by_bytes[key], by_float[key], atol=1e-5,
                               err_msg=key)
  np.testing.assert_array_equal(by_bytes['top_k_names'],
                                by_float['top_k_names'])
  # PNG is lossless: the wide image's JPEG is near, its PNG exact.
  np.testing.assert_allclose(by_bytes['logits'][1], by_float['logits'][1],
                             atol=1e-6)
  module = tf.saved_model.load(result['hub'][DEPTH])
  np.testing.assert_allclose(
      module.signatures['serving_default'](image_bytes=tf.constant(files))[
          'features'],
      module(tf.constant(preprocessed)), atol=1e-5)


def test_predict_request_runs_against_the_signature(exported):
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  _, result = exported
  image = _smooth_image(60, 45, seed=5)
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'simclr'
  request.model_spec.signature_name = 'serving_default'
  request.inputs['image_bytes'].CopyFrom(tf.make_tensor_proto(
      [_encode(image, 'JPEG'), _encode(image, 'PNG')]))
  # What TF Serving receives over gRPC: the serialized request.
  received = predict_pb2.PredictRequest.FromString(request.SerializeToString())

  serving = tf.saved_model.load(result['saved_model'])
  signature = serving.signatures[received.model_spec.signature_name]
  inputs = {name: tf.constant(tf.make_ndarray(proto))
            for name, proto in received.inputs.items()}
  outputs = signature(**inputs)
  response = predict_pb2.PredictResponse()
  for name, value in outputs.items():
    response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
  probabilities = tf.make_ndarray(response.outputs['probabilities'])
  assert probabilities.shape == (2, NUM_CLASSES)
  np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
  names = tf.make_ndarray(response.outputs['top_k_names'])
  assert names.shape == (2, 5) and names[0, 0].decode() in CLASS_NAMES

  float_request = predict_pb2.PredictRequest()
  float_request.model_spec.signature_name = 'serving_float'
  float_request.inputs['images'].CopyFrom(tf.make_tensor_proto(_images(2)))
  float_outputs = serving.signatures['serving_float'](
      images=tf.constant(tf.make_ndarray(float_request.inputs['images'])))
  assert float_outputs['logits'].shape == (2, NUM_CLASSES)


# ---------------------------------------------------------------- writing
def test_existing_version_is_not_overwritten(trained_model, exported):
  export_dir, result = exported
  saved_pb = os.path.join(result['saved_model'], 'saved_model.pb')
  hub_pb = os.path.join(result['hub'][0], 'saved_model.pb')
  mtimes = [os.stat(path).st_mtime_ns for path in (saved_pb, hub_pb)]
  again = export.export_model(trained_model, export_dir,
                              image_size=IMAGE_SIZE, step=STEP,
                              train_mode='finetune', keep_max=2)
  assert not again['written']
  assert again['saved_model'] == result['saved_model']
  assert [os.stat(path).st_mtime_ns for path in (saved_pb, hub_pb)] == mtimes


def test_failure_midway_leaves_no_partial_version(trained_model, tmp_path,
                                                  monkeypatch):
  export_dir = str(tmp_path)
  original = modules.hub_module

  def failing_hub_module(network, all_outputs, depth, **kwargs):
    if depth == 1:  # After the serving model and hub module 0 are written.
      raise RuntimeError('disk full')
    return original(network, all_outputs, depth, **kwargs)

  monkeypatch.setattr(modules, 'hub_module', failing_hub_module)
  with pytest.raises(RuntimeError, match='disk full'):
    export.export_model(trained_model, export_dir, image_size=IMAGE_SIZE,
                        step=11, train_mode='finetune')
  leftovers = [os.path.join(root, name) for root, dirs, files in
               os.walk(export_dir) for name in dirs + files]
  # Only the (empty) parents may exist: no version, no module, no temporary.
  assert sorted(os.path.relpath(p, export_dir) for p in leftovers) in (
      [], ['hub', 'saved_model'])


# ---------------------------------------------------------------- global BN, CLI
def _fake_version(export_dir, relative):
  os.makedirs(os.path.join(export_dir, relative))
  with open(os.path.join(export_dir, relative, 'marker'), 'w') as f:
    f.write('old')


@pytest.mark.slow
def test_cli_exports_a_model_dir(trained_model, tmp_path):
  """A model_dir as run.py leaves it (config.json, checkpoint) exported by
  `python -m export` in a new process; the exports match the Keras model."""
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  model_dir, export_dir = str(tmp_path / 'model'), str(tmp_path / 'export')
  config_lib.write_architecture(
      model_dir, dict(ARCHITECTURE, image_size=IMAGE_SIZE,
                      num_classes=NUM_CLASSES),
      {'train_mode': 'finetune', 'class_names': list(CLASS_NAMES)})
  tf.train.CheckpointManager(
      tf.train.Checkpoint(model=trained_model,
                          global_step=tf.Variable(12, dtype=tf.int64)),
      model_dir, max_to_keep=1).save(checkpoint_number=12)
  # Left by earlier exports: an older version, an older module, a module of
  # a deeper projection head.
  _fake_version(export_dir, os.path.join('saved_model', '4'))
  _fake_version(export_dir, os.path.join('hub', 'proj_head_0'))
  _fake_version(export_dir, os.path.join('hub', f'proj_head_{DEPTH + 3}'))

  completed = subprocess.run(
      [sys.executable, '-m', 'export', f'--model_dir={model_dir}',
       f'--export_dir={export_dir}', '--keep_hub_module_max=1'],
      cwd=REPO_ROOT, env=_subprocess_env(), capture_output=True, text=True,
      timeout=300)
  assert completed.returncode == 0, completed.stderr[-3000:]
  result = json.loads(completed.stdout)
  assert result['saved_model'] == os.path.join(export_dir, 'saved_model', '12')
  assert result['pruned'] == [os.path.join(export_dir, 'saved_model', '4')]
  assert export.saved_model_versions(export_dir) == [12]
  assert sorted(os.listdir(os.path.join(export_dir, 'hub'))) == [
      f'proj_head_{k}' for k in range(DEPTH + 1)]
  assert not os.path.exists(os.path.join(result['hub'][0], 'marker'))

  images = _images(seed=6)
  expected = trained_model(images, training=False)
  serving = tf.saved_model.load(result['saved_model'])
  outputs = serving.all_outputs(images)
  for key, value in expected.items():
    np.testing.assert_allclose(outputs[key], value, **TOLERANCE, err_msg=key)
  names = serving.signatures['serving_float'](
      images=tf.constant(images))['top_k_names']
  assert names.numpy()[0, 0].decode() in CLASS_NAMES


MIRRORED_SCRIPT = """
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tf_simclr import export
    from tf_simclr import model as model_lib

    export_dir, architecture = sys.argv[1], json.loads(sys.argv[2])
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with strategy.scope():
      model = model_lib.build_model(0, **architecture, global_bn=True)
    assert any(getattr(l, 'synchronized', False) for l in model.submodules)
    size = architecture['image_size']
    images = np.random.RandomState(0).rand(4, size, size, 3).astype(np.float32)

    @tf.function
    def train_forward(batch):
      return model(batch, training=True)['proj_head_output']
    # Synchronized BN statistics move (replica batches of 2).
    strategy.run(train_forward, args=(tf.constant(images[:2]),))
    expected = {k: v.numpy() for k, v in model(images, training=False).items()}
    np.savez(os.path.join(export_dir, 'expected.npz'), images=images,
             **expected)
    result = export.export_model(model, export_dir, image_size=size, step=3,
                                 train_mode='pretrain', keep_max=2)
    print(json.dumps(result))
"""


@pytest.mark.slow
def test_global_bn_mirrored_export_runs_on_one_cpu(tmp_path):
  """A pretrain model with global BN under MirroredStrategy (2 logical CPUs,
  in a subprocess) exported with keep_max=2; the export loads and matches that
  model's outputs in this process (one CPU, no strategy), and its hub modules
  have gradients."""
  export_dir = str(tmp_path)
  for version in ('1', '2'):  # Versions of earlier runs.
    _fake_version(export_dir, os.path.join('saved_model', version))
  architecture = dict(ARCHITECTURE, image_size=32)  # The CIFAR stem.
  architecture.pop('ft_proj_selector')
  completed = _run_python(MIRRORED_SCRIPT, export_dir,
                          json.dumps(architecture))
  result = json.loads(completed.stdout.strip().splitlines()[-1])
  assert result['pruned'] == [os.path.join(export_dir, 'saved_model', '1')]
  assert export.saved_model_versions(export_dir) == [2, 3]

  data = np.load(os.path.join(export_dir, 'expected.npz'))
  images = data['images']
  serving = tf.saved_model.load(result['saved_model'])
  assert int(serving.num_classes.numpy()) == 0
  outputs = serving.all_outputs(images)
  assert 'logits_sup' not in outputs
  for key, value in outputs.items():
    np.testing.assert_allclose(value, data[key], **TOLERANCE, err_msg=key)
  served = serving.signatures['serving_float'](images=tf.constant(images))
  assert sorted(served) == ['final_avg_pool', 'proj_head_output']
  np.testing.assert_allclose(served['proj_head_output'],
                             data['proj_head_output'], **TOLERANCE)
  layer = hub.KerasLayer(result['hub'][DEPTH], trainable=True)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(images, training=True) * np.arange(16.))
  gradients = tape.gradient(loss, layer.trainable_weights)
  assert all(g is not None for g in gradients)
  batch_norm = [g for w, g in zip(layer.trainable_weights, gradients)
                if 'gamma' in w.name]
  assert batch_norm and any(np.any(g.numpy() != 0) for g in batch_norm)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
  from tf_simclr.export import cli  # pylint: disable=g-import-not-at-top
  no_config = tmp_path / 'no_config'
  no_config.mkdir()
  no_checkpoint = tmp_path / 'no_checkpoint'
  no_checkpoint.mkdir()
  (no_checkpoint / 'config.json').write_text(json.dumps(
      dict(ARCHITECTURE, image_size=32, num_classes=0)))
  out = f'--export_dir={tmp_path / "out"}'
  cases = {
      'does not exist': [f'--model_dir={tmp_path / "missing"}', out],
      'config.json': [f'--model_dir={no_config}', out],
      'no checkpoint': [f'--model_dir={no_checkpoint}', out],
      '--keep_hub_module_max': [f'--model_dir={no_checkpoint}', out,
                                '--keep_hub_module_max=-1'],
  }
  for expected, args in cases.items():
    try:
      status = cli.main(args)
    except SystemExit as exit_:
      status = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, (args, captured.err)
    assert len(lines) == 1 and lines[0].startswith('tf-simclr-export: error:')
    assert expected in lines[0], (args, lines)
    assert not captured.out

  # The whole process: TensorFlow's start-up logging must not add lines.
  completed = subprocess.run(
      [sys.executable, '-m', 'export', f'--model_dir={no_checkpoint}', out],
      cwd=REPO_ROOT, env=_subprocess_env(), capture_output=True, text=True,
      timeout=120)
  assert completed.returncode == 2
  lines = completed.stderr.strip().splitlines()
  assert len(lines) == 1 and 'no checkpoint' in lines[0], lines
  assert lines[0].startswith('python -m export: error:'), lines
  assert not os.path.exists(tmp_path / 'out')


def test_unwritable_export_dir_raises_export_error(trained_model, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(export.ExportError, match='not writable'):
    export.export_model(trained_model, str(blocker / 'export'),
                        image_size=IMAGE_SIZE, step=1, train_mode='finetune')
  with pytest.raises(export.ExportError, match='train_mode'):
    export.export_model(trained_model, str(tmp_path), image_size=IMAGE_SIZE,
                        step=1, train_mode='linear_eval')
  assert exporter.ExportError is export.ExportError

"""MirroredStrategy over 2 logical CPUs equals 1 replica on the same global batch.

Logical devices must be configured before TensorFlow initialises, so the
distributed computation runs in a subprocess (one for the whole module) that
prints its results as JSON; the tests compare them here.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(r'''
    import json
    import sys

    import numpy as np
    import tensorflow as tf
    import tf_keras

    from tf_simclr import build_model
    from tf_simclr import distribute
    from tf_simclr import objectives

    REPLICAS = 2
    devices = distribute.split_cpu_into_logical_devices(REPLICAS)
    strategy = tf.distribute.MirroredStrategy(devices)
    SUM, MEAN = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN
    rng = np.random.default_rng(0)


    def local_batch(global_batch, replica):
      """Replica r's share: its slice of view a, then the same slice of view b."""
      n = len(global_batch) // 2
      local = n // REPLICAS
      rows = slice(replica * local, (replica + 1) * local)
      return np.concatenate([global_batch[:n][rows], global_batch[n:][rows]])


    def global_order(per_replica):
      """Inverse of local_batch: [a_0, b_0], [a_1, b_1] -> [a_0, a_1, b_0, b_1]."""
      halves = [np.split(np.asarray(x), 2) for x in per_replica]
      return np.concatenate([h[0] for h in halves] + [h[1] for h in halves])


    def distribute_batch(global_batch):
      def value_fn(context):
        return tf.constant(local_batch(global_batch,
                                       context.replica_id_in_sync_group))
      return strategy.experimental_distribute_values_from_function(value_fn)


    def local(values):
      return [np.asarray(v) for v in strategy.experimental_local_results(values)]


    def tolist(x):
      return np.asarray(x, np.float64).tolist()


    results = {'replicas': strategy.num_replicas_in_sync}

    # ------------------------------------------ contrastive loss, dense layer
    images = 8
    inputs = rng.normal(size=(2 * images, 6)).astype(np.float32)
    kernel_value = rng.normal(size=(6, 5)).astype(np.float32)
    for name, hidden_norm, temperature in [('norm_t0.1', True, 0.1),
                                           ('raw_t0.5', False, 0.5)]:
      kernel = tf.Variable(kernel_value)
      x = tf.constant(inputs)
      with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss, logits_ab, labels = objectives.contrastive_loss(
            tf.matmul(x, kernel), hidden_norm=hidden_norm,
            temperature=temperature)
      single = {'loss': float(loss), 'kernel_grad': tolist(tape.gradient(loss, kernel)),
                'input_grad': tolist(tape.gradient(loss, x)),
                'logits_ab': tolist(logits_ab), 'labels': tolist(labels)}

      with strategy.scope():
        mirrored_kernel = tf.Variable(kernel_value)

      @tf.function
      def step(batch):
        def replica_fn(x):
          with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            loss, logits_ab, labels = objectives.contrastive_loss(
                tf.matmul(x, mirrored_kernel), hidden_norm=hidden_norm,
                temperature=temperature, strategy=strategy)
            scaled_loss = loss / strategy.num_replicas_in_sync
          return (loss, tape.gradient(scaled_loss, mirrored_kernel),
                  tape.gradient(scaled_loss, x), logits_ab, labels)
        return strategy.run(replica_fn, args=(batch,))

      loss, kernel_grad, input_grad, logits_ab, labels = step(
          distribute_batch(inputs))
      results[name] = {
          'single': single,
          'mirrored': {
              'loss': float(strategy.reduce(MEAN, loss, axis=None)),
              'replica_losses': [float(v) for v in local(loss)],
              'kernel_grad': tolist(strategy.reduce(SUM, kernel_grad, axis=None)),
              'input_grad': tolist(global_order(local(input_grad))),
              'logits_ab': tolist(np.concatenate(local(logits_ab))),
              'labels': tolist(np.concatenate(local(labels))),
          }}

    # ------------------------------------------ global BN, a small SimCLR model
    MODEL = dict(resnet_depth=18, width_multiplier=0.0625, image_size=8,
                 proj_out_dim=8)
    images = rng.uniform(size=(8, 8, 8, 3)).astype(np.float32)  # 4 per replica


    def batch_norms(model):
      return [layer for layer in model.submodules
              if isinstance(layer, tf_keras.layers.BatchNormalization)]


    # float64 inside the network: one replica's full-batch moments and two
    # replicas' all-reduced ones are then equal to ~1e-12, where float32
    # rounding through a ResNet moves some outputs by ~1e-4.
    tf_keras.backend.set_floatx('float64')
    reference = build_model(0, global_bn=True, **MODEL)
    # Random gammas and betas, so no residual branch starts at zero.
    for layer in batch_norms(reference):
      layer.gamma.assign(rng.uniform(0.5, 1.5, size=layer.gamma.shape))
      if layer.beta is not None:
        layer.beta.assign(rng.normal(scale=0.1, size=layer.beta.shape))
    weights = reference.get_weights()

    with tf.GradientTape() as tape:
      outputs = reference(tf.constant(images), training=True)
      loss = objectives.contrastive_loss(outputs['proj_head_output'])[0]
    gradients = tape.gradient(loss, reference.trainable_variables)
    results['global_bn'] = {
        'names': [v.name for v in reference.trainable_variables],
        'single': {
            'loss': float(loss),
            'grads': [tolist(g) for g in gradients],
            'output': tolist(outputs['proj_head_output']),
            'moving': [tolist(v) for layer in batch_norms(reference)
                       for v in (layer.moving_mean, layer.moving_variance)],
        }}

    def mirrored_step(model, batch, with_gradients):
      def replica_fn(x):
        with tf.GradientTape() as tape:
          outputs = model(x, training=True)
          loss = objectives.contrastive_loss(outputs['proj_head_output'],
                                             strategy=strategy)[0]
          scaled_loss = loss / strategy.num_replicas_in_sync
        grads = (tape.gradient(scaled_loss, model.trainable_variables)
                 if with_gradients else [])
        return loss, grads, outputs['proj_head_output']
      return strategy.run(replica_fn, args=(batch,))


    for global_bn in (True, False):
      with strategy.scope():
        model = build_model(0, global_bn=global_bn, **MODEL)
      model.set_weights(weights)
      synchronized = all(layer.synchronized for layer in batch_norms(model))
      if global_bn:
        step = tf.function(lambda batch: mirrored_step(model, batch, True))
      else:  # The control needs no gradients; eager is cheaper than tracing.
        step = lambda batch: mirrored_step(model, batch, False)
      loss, grads, output = step(distribute_batch(images))
      moving = []  # Every replica's own copy of the moving statistics.
      for layer in batch_norms(model):
        for variable in (layer.moving_mean, layer.moving_variance):
          moving.append([tolist(v) for v in local(variable)])
      results['global_bn']['mirrored' if global_bn else 'mirrored_local_bn'] = {
          'synchronized': synchronized,
          'loss': float(strategy.reduce(MEAN, loss, axis=None)),
          'grads': [tolist(strategy.reduce(SUM, g, axis=None)) for g in grads],
          'output': tolist(global_order(local(output))),
          'moving': moving,
      }

    json.dump(results, sys.stdout)
''')


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  script = tmp_path_factory.mktemp('distributed') / 'mirrored_vs_single.py'
  script.write_text(SCRIPT)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='',
             PYTHONPATH=os.pathsep.join(
                 [REPO_ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  process = subprocess.run([sys.executable, str(script)], capture_output=True,
                           text=True, env=env, timeout=600, check=False)
  assert process.returncode == 0, process.stderr[-5000:]
  return json.loads(process.stdout)


def _close(actual, expected, rtol=1e-4, atol_fraction=1e-4, message=''):
  actual, expected = np.asarray(actual), np.asarray(expected)
  atol = atol_fraction * max(float(np.max(np.abs(expected), initial=0.0)), 1e-6)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                             err_msg=message)


def test_two_logical_replicas(results):
  assert results['replicas'] == 2


@pytest.mark.parametrize('case', ['norm_t0.1', 'raw_t0.5'])
def test_contrastive_loss_and_gradients_match_one_replica(results, case):
  single, mirrored = results[case]['single'], results[case]['mirrored']
  _close(mirrored['loss'], single['loss'], rtol=1e-5)
  # Negatives come from both replicas: each replica's logits_ab covers the
  # whole global batch, and the labels point at its own rows.
  _close(mirrored['logits_ab'], single['logits_ab'], rtol=1e-5)
  np.testing.assert_array_equal(mirrored['labels'], single['labels'])
  # Replica losses differ (different anchors), yet summed scaled gradients
  # equal the single-replica gradient, per variable and per input row.
  assert not np.isclose(*mirrored['replica_losses'])
  _close(mirrored['kernel_grad'], single['kernel_grad'])
  _close(mirrored['input_grad'], single['input_grad'])


def test_global_bn_uses_synchronized_batch_norm(results):
  assert results['global_bn']['mirrored']['synchronized']
  assert not results['global_bn']['mirrored_local_bn']['synchronized']


def test_global_bn_matches_one_replica_on_the_full_batch(results):
  single = results['global_bn']['single']
  mirrored = results['global_bn']['mirrored']
  names = results['global_bn']['names']
  assert len(mirrored['grads']) == len(single['grads']) == len(names)
  _close(mirrored['loss'], single['loss'], rtol=1e-5)
  _close(mirrored['output'], single['output'], atol_fraction=1e-5)
  for replicas, expected in zip(mirrored['moving'], single['moving']):
    for replica_value in replicas:  # Each replica saw the global statistics.
      _close(replica_value, expected, atol_fraction=1e-5)
  nonzero = 0
  for name, actual, expected in zip(names, mirrored['grads'], single['grads']):
    _close(actual, expected, rtol=1e-3, atol_fraction=1e-3, message=name)
    nonzero += bool(np.any(np.asarray(expected)))
  assert nonzero > len(names) // 2


def test_local_bn_differs_from_one_replica(results):
  """Control: without global_bn the replicas normalise with their own
  statistics, so the comparison above can fail."""
  single = results['global_bn']['single']
  local = results['global_bn']['mirrored_local_bn']
  assert not np.allclose(local['output'], single['output'], atol=1e-3)
  variances = [np.asarray(replicas[0]) for replicas in local['moving'][1::2]]
  expected = [np.asarray(v) for v in single['moving'][1::2]]
  assert any(not np.allclose(a, b, rtol=1e-3)
             for a, b in zip(variances, expected))


@pytest.mark.parametrize('flags, expected', [
    ('fpu avx2 avx512f avx512_bf16 fma', True),    # Zen 4, Cooper Lake
    ('fpu avx2 avx512f amx_bf16 amx_tile', True),  # Sapphire Rapids
    ('fpu avx2 avx512f avx512_vnni fma', False),   # Skylake, Zen 3
])
def test_cpu_has_fast_bfloat16_reads_the_cpu_flags(tmp_path, flags, expected):
  from tf_simclr import distribute  # pylint: disable=import-outside-toplevel
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(f'processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n')
  assert distribute.cpu_has_fast_bfloat16(str(cpuinfo)) == expected
  assert not distribute.cpu_has_fast_bfloat16(str(tmp_path / 'missing'))


def test_cpu_model_name_reads_cpuinfo_or_falls_back(tmp_path):
  from tf_simclr import distribute  # pylint: disable=import-outside-toplevel
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text('processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t: fpu\n')
  assert distribute.cpu_model_name('x', str(cpuinfo)) == 'AMD EPYC 9B14'
  assert distribute.cpu_model_name('x', str(tmp_path / 'missing')) == 'x'


@pytest.mark.slow  # Two run.py processes, about 80 s.
def test_evaluation_with_a_replica_left_an_empty_last_batch(tmp_path):
  """run.py --strategy=mirrored --cpu_replicas=2 evaluating a split whose
  last global step gives one replica no images (the synthetic test split,
  256 images at 7 per replica: 37 batches): it counts every image once and
  scores as a one-device evaluation of the same checkpoint does."""
  model_dir = str(tmp_path / 'finetune')
  common = [sys.executable, os.path.join(REPO_ROOT, 'run.py'),
            '--train_mode=finetune', '--dataset=synthetic', '--image_size=32',
            '--resnet_depth=18', '--width_multiplier=0.0625',
            '--train_batch_size=8', '--eval_batch_size=14', '--train_steps=1',
            '--eval_split=test', '--export=false', f'--model_dir={model_dir}']
  # oneDNN on, as run.py sets it: its CPU convolution rejects an empty batch.
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS='1')
  for extra in (['--strategy=mirrored', '--cpu_replicas=2',
                 '--checkpoint=scratch', '--mode=train_then_eval'],
                ['--mode=eval', '--eval_name=one_device']):
    completed = subprocess.run(common + extra, capture_output=True, text=True,
                               timeout=600, check=False, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
  with open(os.path.join(model_dir, 'result.json')) as f:
    mirrored = json.load(f)
  with open(os.path.join(model_dir, 'result_one_device.json')) as f:
    one_device = json.load(f)
  assert mirrored['num_examples'] == one_device['num_examples'] == 256
  for key in ('label_top_1_accuracy', 'label_top_5_accuracy'):
    assert mirrored[key] == pytest.approx(one_device[key], abs=1e-6)

"""SimCLRv2's memory of negatives (tf_simclr/memory.py and its use in the
contrastive loss and the trainer), checked against NumPy and hand computations,
across replicas and across a kill and resume of run.py."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tf_simclr import build_model
from tf_simclr import config as config_lib
from tf_simclr import memory as memory_lib
from tf_simclr import objectives

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'tests'))
import test_faults as faults  # pylint: disable=g-import-not-at-top,wrong-import-position


# ---------------------------------------------------------------- the loss
def numpy_loss(hidden, temperature, hidden_norm, negatives=None, filled=0):
  """SimCLR's NT-Xent written out per anchor in float64: anchor i of view a
  against its positive b_i, the other 2n - 2 in-batch views and the first
  `filled` rows of `negatives`; the same for view b; mean over anchors of
  each view, summed over the two views."""
  hidden = np.asarray(hidden, np.float64)
  if hidden_norm:
    hidden = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
  n = len(hidden) // 2
  memory = (np.zeros([0, hidden.shape[1]]) if negatives is None else
            np.asarray(negatives, np.float64)[:filled])
  total = 0.0
  for view in (0, 1):
    anchors = hidden[view * n:(view + 1) * n]
    others = hidden[(1 - view) * n:(2 - view) * n]
    for i in range(n):
      positive = anchors[i] @ others[i] / temperature
      candidates = [others[j] @ anchors[i] / temperature for j in range(n)]
      candidates += [anchors[j] @ anchors[i] / temperature
                     for j in range(n) if j != i]
      candidates += list(memory @ anchors[i] / temperature)
      candidates = np.array(candidates)
      top = candidates.max()
      total += (-(positive - top) +
                np.log(np.exp(candidates - top).sum())) / n
  return total


@pytest.mark.parametrize('hidden_norm,temperature,filled', [
    (True, 0.1, 7), (True, 0.5, 12), (False, 0.7, 5), (True, 0.2, 0)])
def test_loss_with_memory_matches_numpy(hidden_norm, temperature, filled):
  rng = np.random.default_rng(filled)
  hidden = rng.normal(size=(2 * 5, 6)).astype(np.float32)
  negatives = rng.normal(size=(12, 6)).astype(np.float32)
  negatives /= np.linalg.norm(negatives, axis=1, keepdims=True)
  loss, _, _ = objectives.contrastive_loss(
      tf.constant(hidden), hidden_norm=hidden_norm, temperature=temperature,
      memory=(tf.constant(negatives), tf.constant(filled)))
  expected = numpy_loss(hidden, temperature, hidden_norm, negatives, filled)
  np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
  # The rows after `filled` do not count, whatever they hold.
  if filled:
    assert abs(expected - numpy_loss(hidden, temperature, hidden_norm)) > 1e-3


def test_loss_gradient_with_memory_matches_finite_differences():
  """d loss / d hidden of TensorFlow against central differences of the
  NumPy loss in float64 (the memory is a constant: no gradient to it)."""
  rng = np.random.default_rng(3)
  hidden = rng.normal(size=(2 * 4, 5))
  negatives = rng.normal(size=(9, 5))
  negatives /= np.linalg.norm(negatives, axis=1, keepdims=True)
  filled = 6
  variable = tf.Variable(hidden.astype(np.float32))
  memory_tensor = tf.constant(negatives.astype(np.float32))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(memory_tensor)
    loss, _, _ = objectives.contrastive_loss(
        variable, hidden_norm=True, temperature=0.3,
        memory=(memory_tensor, tf.constant(filled)))
  gradient = tape.gradient(loss, variable).numpy()
  assert tape.gradient(loss, memory_tensor) is None
  expected = np.zeros_like(hidden)
  eps = 1e-5
  for index in np.ndindex(*hidden.shape):
    plus, minus = hidden.copy(), hidden.copy()
    plus[index] += eps
    minus[index] -= eps
    expected[index] = (numpy_loss(plus, 0.3, True, negatives, filled) -
                       numpy_loss(minus, 0.3, True, negatives, filled)) / (
                           2 * eps)
  np.testing.assert_allclose(gradient, expected, rtol=2e-3, atol=2e-4)


def test_empty_memory_is_plain_simclr_bit_for_bit():
  """memory_size=0 is the code path of plain SimCLR; an empty memory (nothing
  pushed yet) gives its loss and gradients too."""
  rng = np.random.default_rng(0)
  hidden = tf.Variable(rng.normal(size=(16, 8)).astype(np.float32))
  with tf.GradientTape(persistent=True) as tape:
    plain, logits, labels = objectives.contrastive_loss(hidden,
                                                        temperature=0.2)
    empty, logits_m, labels_m = objectives.contrastive_loss(
        hidden, temperature=0.2,
        memory=(tf.constant(rng.normal(size=(32, 8)), tf.float32),
                tf.constant(0)))
  np.testing.assert_allclose(float(empty), float(plain), rtol=1e-6)
  np.testing.assert_allclose(tape.gradient(empty, hidden).numpy(),
                             tape.gradient(plain, hidden).numpy(),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(logits_m.numpy(), logits.numpy())
  np.testing.assert_array_equal(labels_m.numpy(), labels.numpy())
  assert np.isclose(float(plain), numpy_loss(hidden.numpy(), 0.2, True),
                    rtol=2e-5)


def test_loss_under_mixed_precision_keeps_float32_logits():
  """bfloat16 projections: the logits, the LARGE_NUM mask and the softmax
  stay float32, so masked rows are exactly out and the loss is finite."""
  rng = np.random.default_rng(1)
  hidden = rng.normal(size=(8, 6)).astype(np.float32)
  negatives = rng.normal(size=(10, 6)).astype(np.float32)
  negatives /= np.linalg.norm(negatives, axis=1, keepdims=True)
  loss, _, _ = objectives.contrastive_loss(
      tf.cast(hidden, tf.bfloat16), temperature=0.1,
      memory=(tf.cast(negatives, tf.bfloat16), tf.constant(4)))
  assert loss.dtype == tf.float32 and np.isfinite(float(loss))
  rounded = tf.cast(tf.cast(hidden, tf.bfloat16), tf.float32).numpy()
  rounded_negatives = tf.cast(tf.cast(negatives, tf.bfloat16),
                              tf.float32).numpy()
  np.testing.assert_allclose(
      float(loss), numpy_loss(rounded, 0.1, True, rounded_negatives, 4),
      rtol=1e-4)


# ---------------------------------------------------------------- the memory
def _small_memory(size=10, momentum=0.75):
  kwargs = dict(resnet_depth=18, width_multiplier=0.0625, image_size=16,
                num_proj_layers=2, proj_out_dim=4)
  model = build_model(3, **kwargs)
  network = build_model(0, **kwargs)
  return model, memory_lib.NegativeMemory(model, network, size, momentum,
                                          image_size=16)


def test_moving_average_of_weights_and_batch_norm_statistics():
  """memory ← m · memory + (1 − m) · trained for every backbone and
  projection-head variable, trainable or not, by hand in NumPy; the trained
  network's supervised head has no copy."""
  model, memory = _small_memory(momentum=0.75)
  strategy = tf.distribute.get_strategy()
  rng = np.random.default_rng(0)
  trained = memory_lib._memory_weights(model)  # pylint: disable=protected-access
  copies = memory_lib._memory_weights(memory.network)  # pylint: disable=protected-access
  assert len(copies) == len(trained) > 0
  names = [v.name for v in copies]
  assert any('moving_mean' in name for name in names)
  assert any('moving_variance' in name for name in names)
  assert not any('supervised_head' in v.name for v in trained)
  for variable in trained + copies:
    variable.assign(rng.normal(size=variable.shape).astype(np.float32))
  before = [v.numpy() for v in copies]
  online = [v.numpy() for v in trained]
  memory.follow(strategy, memory.momentum)
  for copy, old, new in zip(copies, before, online):
    np.testing.assert_allclose(copy.numpy(), 0.75 * old + 0.25 * new,
                               rtol=1e-6, atol=1e-6, err_msg=copy.name)
  # The trained network is read, never written.
  for variable, value in zip(trained, online):
    np.testing.assert_array_equal(variable.numpy(), value)
  memory.copy_trained(strategy)
  for copy, new in zip(copies, online):
    np.testing.assert_array_equal(copy.numpy(), new)
  assert bool(memory.initialized.numpy())


def test_buffer_is_a_fifo_ring_with_wrap_around():
  """Pushes of 4 rows into 10: the NumPy ring (oldest rows overwritten, in
  order) over several steps, and the filled count the loss sees."""
  _, memory = _small_memory(size=10)
  strategy = tf.distribute.get_strategy()
  ring = np.zeros([10, memory.dim], np.float32)
  pushed = 0
  for step in range(7):
    keys = np.full([4, memory.dim], step + 1, np.float32)
    keys[:, 0] = np.arange(4) + 10 * step
    memory.push(tf.constant(keys), strategy)
    for row in keys:
      ring[pushed % 10] = row
      pushed += 1
    np.testing.assert_array_equal(memory.buffer.numpy(), ring)
    _, filled = memory.negatives()
    assert int(filled) == min(pushed, 10)
    assert float(memory.fill_fraction()) == pytest.approx(min(pushed, 10) / 10)
  # After 28 pushes the newest 10 are steps 5-7's rows, step 7's last.
  assert memory.buffer.numpy()[(28 - 1) % 10, 0] == 63


def test_memory_projections_are_normalised_inference_outputs():
  # The projection head's kernels start at stddev 0.01 (the reference's), so
  # a fresh network's projections have norm ~1e-4, and on some draws are all
  # zero (every unit of the tiny head's ReLU off), where the normalised
  # expectation is 0 / 0. Seeded, with the head's kernels scaled to unit
  # variance per input, the projections are well away from zero.
  tf_keras.utils.set_random_seed(0)
  model, memory = _small_memory()
  del model
  for variable in memory.network.variables:
    if 'projection_head' in variable.name and 'kernel' in variable.name:
      fan_in = variable.shape[0]
      variable.assign(variable * (100.0 / np.sqrt(fan_in)))
  images = tf.random.uniform([6, 16, 16, 3], seed=1)
  keys = memory.project(images).numpy()
  expected = memory.network(images, training=False)['proj_head_output'].numpy()
  norms = np.linalg.norm(expected, axis=1, keepdims=True)
  assert norms.min() > 1e-2, norms.ravel()
  expected /= norms
  # project() runs as a graph, the expectation eagerly: oneDNN may pick other
  # kernels for the two, which differ in float32 rounding (a clean-clone run
  # once missed rtol 1e-5 on values equal to the printed digits). Training
  # mode or an unnormalised output would differ by far more than this.
  np.testing.assert_allclose(keys, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1, rtol=1e-5)
  # Inference mode: the same images give the same projections, and the
  # network's batch-norm statistics did not move.
  np.testing.assert_allclose(memory.project(images).numpy(), keys, rtol=1e-6,
                             atol=1e-7)


@pytest.mark.parametrize('changes,flag', [
    ({'memory_size': 8}, '--memory_size must hold'),
    ({'memory_size': 64, 'train_mode': 'finetune', 'checkpoint': 'x'},
     'pretraining only'),
    ({'memory_momentum': 1.0}, '--memory_momentum'),
    ({'memory_size': -1}, '--memory_size must be >= 0'),
])
def test_memory_flags_are_checked(changes, flag, tmp_path):
  config = config_lib.Config(model_dir=str(tmp_path), train_batch_size=8,
                             **changes)
  with pytest.raises(config_lib.ConfigError, match=flag):
    config.validate()


# ---------------------------------------------------------------- replicas
REPLICA_SCRIPT = textwrap.dedent(r'''
    import json
    import sys

    import numpy as np
    import tensorflow as tf
    import tf_keras

    from tf_simclr import config as config_lib
    from tf_simclr import distribute
    from tf_simclr import trainer as trainer_lib

    devices = distribute.split_cpu_into_logical_devices(2)
    model_dir = sys.argv[1]
    config = config_lib.Config(
        dataset='synthetic', image_size=16, resnet_depth=18,
        width_multiplier=0.0625, num_proj_layers=2, proj_out_dim=8,
        train_batch_size=8, train_steps=10, warmup_epochs=0,
        learning_rate=0.1, optimizer='momentum', memory_size=40,
        memory_momentum=0.6, global_bn=True, use_blur=False,
        model_dir=model_dir).validate()

    tf_keras.utils.set_random_seed(0)
    one = trainer_lib.Trainer(config.replace(model_dir=model_dir + '/one'),
                              tf.distribute.get_strategy())
    mirrored = tf.distribute.MirroredStrategy(devices)
    two = trainer_lib.Trainer(config.replace(model_dir=model_dir + '/two'),
                              mirrored)
    two.model.set_weights(one.model.get_weights())
    for trainer in (one, two):
      trainer.memory.copy_trained(trainer.strategy)
    initial = [w.tolist() for w in one.model.get_weights()]
    initial_memory = [w.tolist() for w in one.memory.network.get_weights()]

    rng = np.random.default_rng(0)
    batches = [rng.uniform(size=(8, 16, 16, 6)).astype(np.float32)
               for _ in range(3)]
    labels = np.zeros([8], np.int32)

    def distribute_batch(images):
      def value_fn(context):
        r = context.replica_id_in_sync_group
        return (tf.constant(images[4 * r:4 * r + 4]),
                tf.constant(labels[4 * r:4 * r + 4]))
      return mirrored.experimental_distribute_values_from_function(value_fn)

    step_one = tf.function(lambda batch: one.train_step((batch,)))
    step_two = tf.function(lambda batch: two.train_step((batch,)))
    for images in batches:
      step_one((tf.constant(images), tf.constant(labels)))
      step_two(distribute_batch(images))

    def local(variable):
      return [np.asarray(v).tolist() for v in
              mirrored.experimental_local_results(variable)]

    out = {
        'replicas': two.strategy.num_replicas_in_sync,
        'pushed': [int(one.memory.pushed.numpy()),
                   int(two.memory.pushed.numpy())],
        'buffer_one': one.memory.buffer.numpy().tolist(),
        'buffer_two': local(two.memory.buffer),
        'weights_initial': initial,
        'memory_initial': initial_memory,
        'weights_one': [w.tolist() for w in one.model.get_weights()],
        'weights_two': [w.tolist() for w in two.model.get_weights()],
        'memory_one': [w.tolist() for w in one.memory.network.get_weights()],
        'memory_two': [w.tolist() for w in two.memory.network.get_weights()],
    }
    print('RESULT ' + json.dumps(out))
''')


@pytest.fixture(scope='module')
def replicas(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('memory_replicas'))
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=REPO_ROOT)
  result = subprocess.run([sys.executable, '-c', REPLICA_SCRIPT, directory],
                          cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def test_two_replicas_end_with_the_buffer_and_weights_of_one(replicas):
  """2 mirrored replicas (global BN) over logical CPUs and 1 replica on the
  same global batches, 3 steps: the same pushed count, the same buffer on
  both replicas and (to float rounding) as one replica's, the same trained
  and memory weights. Rounding differences grow step by step through the
  tiny network on noise images (plain SimCLR: ~1e-3 of a variable's scale
  after 3 steps), hence the tolerance on weights; a misplaced, missing or
  unsynchronised row or update is off by O(1). Weights are compared by what
  the steps changed (all variables together)."""
  assert replicas['replicas'] == 2
  assert replicas['pushed'] == [48, 48]  # 3 steps x 2 views x 8 images.
  one = np.array(replicas['buffer_one'])
  first, second = (np.array(b) for b in replicas['buffer_two'])
  np.testing.assert_array_equal(first, second)
  np.testing.assert_allclose(first, one, atol=5e-4)
  # The ring wrapped (48 pushes into 40): every row was written.
  assert np.allclose(np.linalg.norm(one, axis=1), 1, atol=1e-5)
  for name in ('weights', 'memory'):
    start = _flat(replicas[f'{name}_initial'])
    moved_one = _flat(replicas[f'{name}_one']) - start
    moved_two = _flat(replicas[f'{name}_two']) - start
    assert np.linalg.norm(moved_one) > 0
    assert (np.linalg.norm(moved_two - moved_one) <=
            1e-2 * np.linalg.norm(moved_one)), name
  # Training moved the memory away from where it started (a copy of the
  # initial weights) and away from the trained network (momentum 0.6).
  moved = [not np.allclose(np.array(a), np.array(b), atol=1e-7) for a, b in
           zip(replicas['memory_one'][:8], replicas['weights_one'][:8])]
  assert any(moved)


def _flat(arrays):
  return np.concatenate([np.ravel(np.array(a, np.float64)) for a in arrays])


# ---------------------------------------------------------------- run.py
MEMORY_FLAGS = ['--memory_size=48', '--memory_momentum=0.9']


@pytest.fixture(scope='module')
def memory_run(tmp_path_factory):
  """6 deterministic steps with the memory, uninterrupted."""
  model_dir = str(tmp_path_factory.mktemp('memory_run') / 'model')
  result = faults.run_py(faults.SIX_STEPS + MEMORY_FLAGS, model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, faults.summary(result)['train']


def test_run_logs_memory_fill_and_checkpoints_the_memory(memory_run):
  model_dir, train = memory_run
  assert train['memory_fill'] == pytest.approx(1.0)  # 6 x 16 rows > 48.
  tensors = faults.load(os.path.join(model_dir, 'ckpt-6'))
  assert tensors[memory_lib.BUFFER_KEY].shape == (48, 128)
  assert int(tensors['memory/pushed/.ATTRIBUTES/VARIABLE_VALUE']) == 96
  assert bool(tensors['memory/initialized/.ATTRIBUTES/VARIABLE_VALUE'])
  ckpt_3 = faults.load(os.path.join(model_dir, 'ckpt-3'))
  assert int(ckpt_3['memory/pushed/.ATTRIBUTES/VARIABLE_VALUE']) == 48
  # The memory network is a moving average, not the trained network.
  memory_key = ('memory/network/resnet_model/initial_conv_relu_max_pool/0/'
                'conv2d/kernel/.ATTRIBUTES/VARIABLE_VALUE')
  trained_key = memory_key.replace('memory/network/', 'model/')
  assert memory_key in tensors and trained_key in tensors
  assert not np.array_equal(tensors[memory_key], tensors[trained_key])


@pytest.mark.slow
def test_killed_run_resumes_with_the_memory_it_saved(tmp_path, memory_run):
  """SIGKILL while ckpt-6 is written; the same command resumes from ckpt-3
  with its buffer and memory network, and ends (--deterministic) with the
  uninterrupted run's buffer, memory network and weights."""
  reference_dir, _ = memory_run
  model_dir = str(tmp_path / 'model')
  result = faults.run_py(faults.SIX_STEPS + MEMORY_FLAGS, model_dir,
                         faults='kill_in_save=6')
  assert result.returncode == -9, result.stderr[-3000:]
  result = faults.run_py(faults.SIX_STEPS + MEMORY_FLAGS, model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'pretrain: resumed at step 3 of 6' in result.stderr
  resumed = faults.numeric(faults.load(os.path.join(model_dir, 'ckpt-6')))
  uninterrupted = faults.numeric(faults.load(os.path.join(reference_dir,
                                                          'ckpt-6')))
  assert sorted(resumed) == sorted(uninterrupted)
  memory_keys = [name for name in resumed if name.startswith('memory/')]
  assert memory_lib.BUFFER_KEY in memory_keys and len(memory_keys) > 50
  different = [name for name in resumed
               if not np.array_equal(resumed[name], uninterrupted[name])]
  assert not different, different[:5]


def test_resume_with_another_memory_size_is_one_line(tmp_path, memory_run):
  reference_dir, _ = memory_run
  model_dir = str(tmp_path / 'copy')
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copytree(reference_dir, model_dir)
  flags = [f if not f.startswith('--train_steps') else '--train_steps=9'
           for f in faults.SIX_STEPS] + ['--memory_size=64']
  result = faults.run_py(flags, model_dir)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = faults.error_lines(result.stderr)
  assert len(lines) == 1 and '--memory_size=64' in lines[0] and '48' in lines[0]
  assert 'Traceback' not in result.stderr
  assert faults.state(model_dir)[0] == 'ckpt-6'


def test_memory_checkpoint_finetunes_from_the_trained_network(tmp_path,
                                                              memory_run):
  """Finetune reads model/..., never memory/...: the finetuned model starts
  from the trained backbone."""
  from tf_simclr import reference  # pylint: disable=import-outside-toplevel
  reference_dir, _ = memory_run
  model = build_model(10, resnet_depth=18, width_multiplier=0.125,
                      image_size=32, supervised_training=True)
  reference.load_reference_checkpoint(model, reference_dir,
                                      skip_supervised_head=True)
  tensors = faults.load(os.path.join(reference_dir, 'ckpt-6'))
  kernel = model.resnet_model.variables[0]
  key = ('model/resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel/'
         '.ATTRIBUTES/VARIABLE_VALUE')
  assert tuple(kernel.shape) == tensors[key].shape
  np.testing.assert_array_equal(kernel.numpy(), tensors[key])


@pytest.mark.slow
def test_run_py_finetunes_a_memory_checkpoint(tmp_path, memory_run):
  reference_dir, _ = memory_run
  result = faults.run_py(
      [f for f in faults.TINY if f != '--train_mode=pretrain'] +
      ['--train_mode=finetune', f'--checkpoint={reference_dir}',
       '--train_steps=2', '--steps_per_loop=2'], str(tmp_path / 'finetune'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert faults.summary(result)['train']['global_step'] == 2

"""MultiWorkerMirroredStrategy: two local worker processes on 127.0.0.1 ports.

Each worker runs run.py and trains a tiny ResNet-18 (width 0.125, 32 px,
synchronised BN) for a few steps on the synthetic dataset. The chief (worker 0) checkpoints into its
--model_dir; worker 1 takes part in every save (the strategy needs all
workers) but writes into a throw-away directory under its TMPDIR, never into
its --model_dir. Both end with the same weights.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS = 4


def free_ports(count):
  sockets = []
  for _ in range(count):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(('127.0.0.1', 0))
    sockets.append(sock)
  ports = [sock.getsockname()[1] for sock in sockets]
  for sock in sockets:
    sock.close()
  return ports


def launch_workers(tmp_path):
  """Starts both workers; returns [(process, model_dir, tmpdir, log)]."""
  ports = free_ports(2)
  cluster = {'worker': [f'127.0.0.1:{port}' for port in ports]}
  workers = []
  for index in range(2):
    model_dir = tmp_path / f'model_dir_{index}'
    temporary = tmp_path / f'tmp_{index}'
    temporary.mkdir()
    environment = dict(
        os.environ, TMPDIR=str(temporary), CUDA_VISIBLE_DEVICES='',
        TF_CPP_MIN_LOG_LEVEL='2',
        TF_CONFIG=json.dumps({'cluster': cluster,
                              'task': {'type': 'worker', 'index': index}}))
    command = [
        sys.executable, 'run.py', '--strategy=multi_worker_mirrored',
        '--dataset=synthetic', '--train_mode=pretrain', '--image_size=32',
        '--resnet_depth=18', '--width_multiplier=0.125', '--global_bn=true',
        '--train_batch_size=16', f'--train_steps={TRAIN_STEPS}',
        '--steps_per_loop=2', '--checkpoint_steps=2', '--warmup_epochs=0',
        '--learning_rate=0.1', '--export=false', f'--model_dir={model_dir}']
    log = tmp_path / f'worker_{index}.log'
    with open(log, 'w') as output:
      process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment,
                                 stdout=output, stderr=subprocess.STDOUT)
    workers.append((process, model_dir, temporary, log))
  return workers


def wait_for(workers, timeout):
  try:
    for process, *_ in workers:
      process.wait(timeout=timeout)
  finally:
    for process, *_ in workers:
      if process.poll() is None:
        process.kill()
        process.wait()
  for process, _, _, log in workers:
    assert process.returncode == 0, f'{log}:\n{log.read_text()[-3000:]}'


def checkpoint_values(prefix):
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name.startswith(('model/', 'global_step/'))}


def check_only_chief_saved(workers):
  """Returns the chief's and worker 1's last checkpoint prefixes."""
  (_, chief_dir, _, _), (_, worker_dir, worker_tmp, _) = workers
  chief_checkpoint = tf.train.latest_checkpoint(str(chief_dir))
  assert chief_checkpoint and chief_checkpoint.endswith(f'ckpt-{TRAIN_STEPS}')
  # Worker 1 wrote nothing into its model_dir; its copy went to its TMPDIR.
  assert not worker_dir.exists() or not any(worker_dir.iterdir())
  worker_dirs = [path for path in worker_tmp.iterdir()
                 if path.name.startswith('tf_simclr_worker_')]
  assert len(worker_dirs) == 1
  worker_checkpoint = tf.train.latest_checkpoint(str(worker_dirs[0]))
  assert worker_checkpoint.endswith(f'ckpt-{TRAIN_STEPS}')
  return chief_checkpoint, worker_checkpoint


def assert_same_values(chief_values, worker_values):
  assert set(chief_values) == set(worker_values)
  for name, value in chief_values.items():
    np.testing.assert_allclose(worker_values[name], value, rtol=1e-6,
                               atol=1e-7, err_msg=name)


@pytest.mark.slow
def test_two_workers_end_with_identical_weights_and_only_chief_saves(tmp_path):
  workers = launch_workers(tmp_path)
  wait_for(workers, timeout=240)
  chief_checkpoint, worker_checkpoint = check_only_chief_saved(workers)
  assert (workers[0][1] / 'config.json').exists()

  chief_values = checkpoint_values(chief_checkpoint)
  assert len(chief_values) > 100  # Kernels, BN parameters and statistics.
  moving_means = [name for name in chief_values if 'moving_mean' in name]
  assert moving_means and any(np.any(chief_values[name] != 0)
                              for name in moving_means)
  assert_same_values(chief_values, checkpoint_values(worker_checkpoint))
  assert int(chief_values['global_step/.ATTRIBUTES/VARIABLE_VALUE']) == TRAIN_STEPS
  summary = json.loads(workers[0][3].read_text().strip().splitlines()[-1])
  assert summary['train']['global_step'] == TRAIN_STEPS
  assert np.isfinite(summary['train']['total_loss'])

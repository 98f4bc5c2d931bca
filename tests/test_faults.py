"""Faults a long run must survive, each shown on real run.py subprocesses.

Preemption (SIGTERM/SIGINT), SIGKILL during a checkpoint write, resume
equivalence, NaN/Inf, a model_dir that cannot be written or a disk that fills
up, and bad flags. A tiny model (ResNet-18 x0.125, 32 px, synthetic data) so
the default run of this file takes a few minutes on 2 CPU cores. Faults are
injected by tests/fault_run.py (a wrapper of run.py used only here).
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(REPO_ROOT, 'run.py')
FAULT_RUN = os.path.join(REPO_ROOT, 'tests', 'fault_run.py')

TINY = ['--train_mode=pretrain', '--dataset=synthetic', '--image_size=32',
        '--resnet_depth=18', '--width_multiplier=0.125',
        '--train_batch_size=8', '--eval_split=test', '--export=false']
# 6 steps, a checkpoint every 3: ckpt-3 and ckpt-6.
SIX_STEPS = TINY + ['--train_steps=6', '--checkpoint_steps=3',
                    '--steps_per_loop=3', '--deterministic', '--seed=7']


def _env(faults=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='',
             PYTHONPATH=REPO_ROOT)
  env.pop('TF_SIMCLR_TEST_FAULTS', None)
  if faults:
    env['TF_SIMCLR_TEST_FAULTS'] = faults
  return env


def run_py(flags, model_dir=None, faults=None, timeout=300):
  """Runs run.py (through fault_run.py when `faults`); CompletedProcess."""
  script = FAULT_RUN if faults else RUN_PY
  args = [sys.executable, script] + list(flags)
  if model_dir is not None:
    args.append(f'--model_dir={model_dir}')
  return subprocess.run(args, cwd=REPO_ROOT, env=_env(faults),
                        capture_output=True, text=True, timeout=timeout)


def start_run_py(flags, model_dir, faults=None):
  """run.py in the background, its stderr collected line by line."""
  script = FAULT_RUN if faults else RUN_PY
  process = subprocess.Popen(
      [sys.executable, script] + list(flags) + [f'--model_dir={model_dir}'],
      cwd=REPO_ROOT, env=_env(faults), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  process.lines = []

  def collect():
    for line in process.stderr:
      process.lines.append(line)
  process.collector = threading.Thread(target=collect, daemon=True)
  process.collector.start()
  return process


def wait_for_line(process, pattern, timeout=240):
  """The first stderr line matching `pattern` (a regex match object)."""
  deadline = time.time() + timeout
  seen = 0
  while time.time() < deadline:
    lines = process.lines
    for line in lines[seen:]:
      match = re.search(pattern, line)
      if match:
        return match
    seen = len(lines)
    if process.poll() is not None and seen == len(process.lines):
      break
    time.sleep(0.05)
  process.kill()
  raise AssertionError(f'no line matching {pattern!r}; stderr:\n' +
                       ''.join(process.lines[-30:]))


def finish(process, timeout=120):
  process.wait(timeout=timeout)
  process.collector.join(timeout=10)
  return process.returncode, ''.join(process.lines)


def summary(result):
  """The JSON summary run.py prints last on stdout."""
  return json.loads(result.stdout.strip().splitlines()[-1])


def state(model_dir):
  """(latest checkpoint name, all recorded names) from the state file."""
  with open(os.path.join(model_dir, 'checkpoint')) as f:
    text = f.read()
  latest = re.search(r'^model_checkpoint_path: "(.*)"', text, re.M).group(1)
  return latest, re.findall(r'^all_model_checkpoint_paths: "(.*)"', text, re.M)


def load(prefix):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()}


def numeric(tensors):
  return {name: value for name, value in tensors.items()
          if isinstance(value, np.ndarray) and value.dtype.kind in 'fiu'}


def error_lines(stderr):
  return [line for line in stderr.splitlines()
          if line.startswith('run.py: error:')]


@pytest.fixture(scope='module')
def pretrain_dir(tmp_path_factory):
  """6 deterministic steps in one run: ckpt-3 and ckpt-6 (shared)."""
  model_dir = str(tmp_path_factory.mktemp('pretrain') / 'model')
  result = run_py(SIX_STEPS, model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, summary(result)['train']


# ---------------------------------------------------------------- bad flags
def _bad_flag_cases(pretrain):
  """A few, as whole run.py processes (the stderr of a real start holds the
  one line and nothing else); tests/test_flag_errors.py has every flag's."""
  missing = '/nonexistent/ckpt-9'
  return {
      'depth': (['--resnet_depth=19'], 'resnet_depth'),
      'flag type': (['--train_steps=many'], 'train_steps'),
      'missing checkpoint': ([f'--checkpoint={missing}'], missing),
      'checkpoint of another depth': (
          ['--train_mode=finetune', f'--checkpoint={pretrain}',
           '--resnet_depth=34'], 'resnet_depth=18 (flags: 34)'),
  }


@pytest.mark.parametrize('case', sorted(_bad_flag_cases('x')))
def test_bad_flags_exit_2_with_one_line(case, tmp_path, pretrain_dir):
  flags, expected = _bad_flag_cases(pretrain_dir[0])[case]
  started = time.time()
  result = run_py(TINY + ['--train_steps=6'] + flags,
                  str(tmp_path / 'model'))
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('run.py: error:'), lines
  assert expected in lines[0]
  # Answered before TensorFlow loads (it alone takes several seconds).
  assert time.time() - started < 20
  assert not os.path.exists(tmp_path / 'model' / 'config.json')


def test_resume_into_model_dir_of_another_architecture(pretrain_dir):
  model_dir, _ = pretrain_dir
  before = sorted(os.listdir(model_dir))
  result = run_py(SIX_STEPS + ['--resnet_depth=34'], model_dir)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, lines
  assert 'resnet_depth=18 (flags: 34)' in lines[0]
  assert sorted(os.listdir(model_dir)) == before


def test_model_dir_that_cannot_be_created(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  result = run_py(TINY + ['--train_steps=6'], str(blocker / 'model'))
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'is not writable' in lines[0], lines
  assert 'Not a directory' in lines[0]


def test_unknown_dataset(tmp_path):
  result = run_py(TINY + ['--train_steps=6', '--dataset=no_such_dataset_xyz'],
                  str(tmp_path / 'model'))
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  lines = error_lines(result.stderr)
  assert len(lines) == 1 and 'no_such_dataset_xyz' in lines[0], lines


# ---------------------------------------------------------------- preemption
def test_sigterm_saves_current_step_and_same_command_resumes(tmp_path):
  """steps_per_loop and checkpoint_steps far beyond the signal: the loop
  call still ends after the step in flight. A second signal (SIGINT) arriving
  while that checkpoint is written does not cut the write short."""
  model_dir = str(tmp_path / 'model')
  flags = TINY + ['--train_steps=100000', '--steps_per_loop=100000',
                  '--checkpoint_steps=100000']
  process = start_run_py(flags, model_dir,
                         faults='print_steps=1,signal_in_save=any:SIGINT')
  wait_for_line(process, r'FAULT_RUN step 2\b')
  signalled = time.time()
  process.send_signal(signal.SIGTERM)
  returncode, stderr = finish(process)
  assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
  assert time.time() - signalled < 60  # A few steps, not 100000.
  assert 'Traceback' not in stderr
  assert 'SIGINT received: already stopping' in stderr
  messages = re.findall(r'run\.py: stopped by SIGTERM at step (\d+); '
                        r'checkpoint (\S+) written', stderr)
  assert len(messages) == 1, stderr[-3000:]
  step = int(messages[0][0])
  assert 2 <= step < 1000
  assert state(model_dir) == (f'ckpt-{step}', [f'ckpt-{step}'])
  assert not os.path.exists(os.path.join(model_dir, f'ckpt-{step}_temp'))
  tensors = load(os.path.join(model_dir, f'ckpt-{step}'))
  assert int(tensors['global_step/.ATTRIBUTES/VARIABLE_VALUE']) == step
  assert all(np.all(np.isfinite(v)) for v in numeric(tensors).values())

  # The same command resumes at that step (killed once it says so).
  process = start_run_py(flags, model_dir)
  wait_for_line(process, rf'pretrain: resumed at step {step} of 100000')
  process.kill()
  finish(process)


def test_sigkill_during_checkpoint_write_then_resume_equals_one_run(
    tmp_path, pretrain_dir):
  """N/2 steps, SIGKILL while ckpt-6 is being written (ckpt-3 stays the
  latest, the partial ckpt-6 is never used), the same command resumes at 3
  and ends with the step, LR and (--deterministic) the weights of the
  uninterrupted run."""
  reference_dir, reference_train = pretrain_dir
  model_dir = str(tmp_path / 'model')

  result = run_py(SIX_STEPS, model_dir, faults='kill_in_save=6')
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert 'FAULT_RUN SIGKILL while writing ckpt-6' in result.stderr
  assert state(model_dir) == ('ckpt-3', ['ckpt-3'])
  assert not os.path.exists(os.path.join(model_dir, 'ckpt-6.index'))
  ckpt_3 = numeric(load(os.path.join(model_dir, 'ckpt-3')))

  result = run_py(SIX_STEPS, model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'pretrain: resumed at step 3 of 6' in result.stderr
  train = summary(result)['train']
  assert train['global_step'] == reference_train['global_step'] == 6
  assert train['learning_rate'] == reference_train['learning_rate'] > 0
  assert state(model_dir) == ('ckpt-6', ['ckpt-3', 'ckpt-6'])
  resumed = numeric(load(os.path.join(model_dir, 'ckpt-6')))
  uninterrupted = numeric(load(os.path.join(reference_dir, 'ckpt-6')))
  assert sorted(resumed) == sorted(uninterrupted)
  different = [name for name in resumed
               if not np.array_equal(resumed[name], uninterrupted[name])]
  assert not different, different[:5]
  # Not trivially: training moved the weights between steps 3 and 6.
  assert any(not np.array_equal(ckpt_3[name], resumed[name])
             for name in resumed if 'kernel' in name)


def test_restore_falls_back_past_damaged_checkpoints(tmp_path, caplog):
  """In process, on a one-variable checkpoint: the newest checkpoint is
  truncated or lacks its index -> the previous one is restored, with a
  warning; all damaged -> CheckpointError rather than a silent fresh start."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tf_simclr import checkpoints  # pylint: disable=import-outside-toplevel
  model_dir = str(tmp_path)
  value = tf.Variable(tf.zeros([1000]))
  checkpoint = tf.train.Checkpoint(value=value)
  manager = tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=5)
  for step in (1, 2, 3):
    value.assign(tf.fill([1000], float(step)))
    manager.save(checkpoint_number=step)
  data_3 = os.path.join(model_dir, 'ckpt-3.data-00000-of-00001')
  with open(data_3, 'r+b') as f:
    f.truncate(100)
  os.remove(os.path.join(model_dir, 'ckpt-2.index'))
  assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-3')  # TF's view.

  value.assign(tf.zeros([1000]))
  restored = checkpoints.restore_latest(checkpoint, model_dir)
  assert restored.endswith('ckpt-1')
  assert float(value[0]) == 1.0
  assert checkpoints.latest_checkpoint(model_dir).endswith('ckpt-1')
  assert 'ckpt-3: its data files hold 100 bytes' in caplog.text
  assert 'ckpt-2: its .index file is missing' in caplog.text

  os.remove(os.path.join(model_dir, 'ckpt-1.data-00000-of-00001'))
  with pytest.raises(checkpoints.CheckpointError, match='no usable checkpoint'):
    checkpoints.restore_latest(checkpoint, model_dir)
  assert checkpoints.restore_latest(checkpoint, str(tmp_path / 'empty')) is None


# ---------------------------------------------------------------- NaN, disk
@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_without_saving(tmp_path):
  model_dir = str(tmp_path / 'model')
  flags = TINY + ['--train_steps=8', '--checkpoint_steps=2',
                  '--steps_per_loop=2']
  result = run_py(flags, model_dir, faults='nan_at_step=5')
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  lines = error_lines(result.stderr)
  assert len(lines) == 1, lines
  assert 'NaN/Inf at step 5' in lines[0] and 'ckpt-4' in lines[0]
  latest, recorded = state(model_dir)
  assert latest == 'ckpt-4' and recorded == ['ckpt-2', 'ckpt-4']
  assert not [name for name in os.listdir(model_dir)
              if name.startswith('ckpt-6') or name.startswith('ckpt-8')]
  for name in recorded:
    tensors = numeric(load(os.path.join(model_dir, name)))
    assert all(np.all(np.isfinite(v)) for v in tensors.values())


@pytest.mark.slow
def test_disk_full_at_save_keeps_earlier_checkpoints(tmp_path):
  model_dir = str(tmp_path / 'model')
  flags = TINY + ['--train_steps=6', '--checkpoint_steps=3',
                  '--steps_per_loop=3']
  result = run_py(flags, model_dir, faults='disk_full_in_save=6')
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  lines = error_lines(result.stderr)
  assert len(lines) == 1, lines
  assert 'checkpoint of step 6' in lines[0]
  assert 'No space left on device' in lines[0] and 'ckpt-3' in lines[0]
  assert state(model_dir) == ('ckpt-3', ['ckpt-3'])
  assert not [name for name in os.listdir(model_dir)
              if name.startswith('ckpt-6')]  # Partial files removed.
  tensors = load(os.path.join(model_dir, 'ckpt-3'))
  assert int(tensors['global_step/.ATTRIBUTES/VARIABLE_VALUE']) == 3


# ---------------------------------------------------------------- slow
@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_from_last_complete(tmp_path):
  """Checkpoints every step; SIGKILL at random times, 4 times; every restart
  resumes from the checkpoint the state file names, which verifies; the
  run ends at train_steps with the schedule's last LR."""
  model_dir = str(tmp_path / 'model')
  flags = TINY + ['--train_steps=30', '--checkpoint_steps=1',
                  '--steps_per_loop=1', '--warmup_epochs=0']
  rng = np.random.RandomState(0)
  for _ in range(4):
    process = start_run_py(flags, model_dir, faults='print_steps=1')
    wait_for_line(process, r'FAULT_RUN step \d+')
    time.sleep(rng.uniform(0, 3))
    process.kill()
    finish(process)
    if os.path.exists(os.path.join(model_dir, 'checkpoint')):
      latest, _ = state(model_dir)
      tensors = load(os.path.join(model_dir, latest))
      assert int(tensors['global_step/.ATTRIBUTES/VARIABLE_VALUE']) == int(
          latest.split('-')[1])
  before = state(model_dir)[0] if os.path.exists(
      os.path.join(model_dir, 'checkpoint')) else None
  result = run_py(flags, model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  if before:
    assert f'resumed at step {before.split("-")[1]} of 30' in result.stderr
  train = summary(result)['train']
  assert train['global_step'] == 30
  assert abs(train['learning_rate']) < 1e-9  # The cosine ends at 0.


@pytest.mark.slow
def test_huge_learning_rate_never_writes_a_nonfinite_checkpoint(tmp_path):
  model_dir = str(tmp_path / 'model')
  flags = TINY + ['--train_steps=20', '--checkpoint_steps=1',
                  '--steps_per_loop=1', '--learning_rate=1e30',
                  '--warmup_epochs=0', '--optimizer=momentum']
  result = run_py(flags, model_dir)
  assert result.returncode == 1, result.stderr[-3000:]
  lines = error_lines(result.stderr)
  assert len(lines) == 1 and 'NaN/Inf' in lines[0], lines
  if os.path.exists(os.path.join(model_dir, 'checkpoint')):
    for name in state(model_dir)[1]:
      tensors = numeric(load(os.path.join(model_dir, name)))
      assert all(np.all(np.isfinite(v)) for v in tensors.values())


@pytest.mark.slow
def test_relative_model_dir_resumes_and_is_a_checkpoint(tmp_path):
  """--model_dir and --checkpoint relative to the working directory (as in
  scripts/pipeline.sh): the same command resumes, and the directory can be
  the next stage's --checkpoint."""
  def run_in_tmp(flags):
    return subprocess.run([sys.executable, RUN_PY] + flags, cwd=tmp_path,
                          env=_env(), capture_output=True, text=True,
                          timeout=300)

  three = TINY + ['--train_steps=3', '--checkpoint_steps=3',
                  '--steps_per_loop=3', '--model_dir=runs/pretrain']
  result = run_in_tmp(three)
  assert result.returncode == 0, result.stderr[-3000:]
  assert state(tmp_path / 'runs' / 'pretrain')[0] == 'ckpt-3'
  result = run_in_tmp([flag.replace('--train_steps=3', '--train_steps=6')
                       for flag in three])
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r'Resuming from runs/pretrain/ckpt-3 at step 3',
                   result.stderr), result.stderr[-3000:]
  assert summary(result)['train']['global_step'] == 6
  result = run_in_tmp(
      [flag for flag in TINY if flag != '--train_mode=pretrain'] +
      ['--train_mode=finetune', '--checkpoint=runs/pretrain',
       '--train_steps=2', '--model_dir=runs/finetune'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r'Starting from the weights of runs/pretrain/ckpt-6',
                   result.stderr), result.stderr[-3000:]


# ---------------------------------------------------------------- one run per model_dir
def test_second_training_of_a_model_dir_in_use_exits_2_naming_the_first(
    tmp_path):
  """While a run trains into model_dir, a second training run exits 2 with
  one line naming the first process, and writes nothing there; evaluating
  it stays allowed. The first killed (SIGKILL: its lock is not released by
  any code of ours), the same command takes the model_dir over and
  resumes."""
  model_dir = str(tmp_path / 'model')
  flags = TINY + ['--train_steps=100000', '--checkpoint_steps=2',
                  '--steps_per_loop=1']
  first = start_run_py(flags, model_dir, faults='print_steps=1')
  try:
    wait_for_line(first, r'FAULT_RUN step 3\b')  # ckpt-2 is written.
    second = run_py(flags, model_dir)
    assert second.returncode == 2, second.stderr[-3000:]
    lines = error_lines(second.stderr)
    assert len(lines) == 1, second.stderr[-3000:]
    assert f'process {first.pid} on ' in lines[0] and 'in use' in lines[0]
    assert 'Traceback' not in second.stderr
    evaluation = run_py(flags + ['--mode=eval'], model_dir)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert os.path.exists(os.path.join(model_dir, 'result.json'))
  finally:
    first.kill()
    finish(first)
  step = checkpoint_step = int(state(model_dir)[0].split('-')[1])
  assert step >= 2
  third = start_run_py(flags, model_dir)
  try:
    wait_for_line(third, rf'pretrain: resumed at step {checkpoint_step} ')
  finally:
    third.kill()
    finish(third)


def test_lock_record_names_only_a_killed_holder(tmp_path, monkeypatch):
  """The lock file's holder record: written by a training lock, cleared when
  it is released normally, never written by run.py's up-front check; a
  record found on taking the lock (a killed run's) is logged as taken over,
  and the up-front check of a free model_dir says nothing of its own
  process."""
  from tf_simclr import lock as lock_lib  # pylint: disable=import-outside-toplevel
  model_dir = str(tmp_path / 'model')
  path = os.path.join(model_dir, lock_lib.LOCK_NAME)
  logged = []  # What lock.py logs (absl's handlers vary with the tests run).
  monkeypatch.setattr(lock_lib.logging, 'info',
                      lambda message, *args: logged.append(message % args))
  lock_lib.check_free(model_dir)
  with lock_lib.ModelDirLock(model_dir):
    with open(path) as f:
      assert json.load(f)['pid'] == os.getpid()
  with open(path) as f:
    assert f.read() == ''  # Released normally: nobody on record.
  assert not any('taking over' in line for line in logged)
  # A killed run leaves its record (the flock itself died with it).
  with open(path, 'w') as f:
    json.dump({'pid': 999999, 'host': 'h', 'since': 't', 'command': 'c'}, f)
  lock_lib.check_free(model_dir)  # Checks only: the record stays.
  assert not any('taking over' in line for line in logged)
  with lock_lib.ModelDirLock(model_dir):
    pass
  assert [line for line in logged if 'taking over' in line] == [
      f'{model_dir}: taking over the lock of process 999999 on h since t (c) '
      '(no longer running)']

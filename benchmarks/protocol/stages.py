"""Runs run.py stages, in this process (each stage costs tracing, not a
TensorFlow start-up and a dataset scan) or as `python run.py` subprocesses;
records their wall time, and reuses a stage (or a measurement, computed_once)
that an earlier run left in the same work_dir."""

import json
import os
import shlex
import subprocess
import sys
import time

from benchmarks.protocol import REPO
from benchmarks.protocol import flags as flags_lib


class StageFailed(RuntimeError):
  pass


def _run_py_in_process(flags):
  """run.py's main() on `flags` in this process; returns its summary."""
  import run as run_py  # pylint: disable=import-outside-toplevel
  return run_py.run_in_process(['run.py', *flags])


def _run_py_subprocess(flags, log_path):
  command = [sys.executable, os.path.join(REPO, 'run.py'), *flags]
  with open(log_path, 'w') as log:
    completed = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=log, text=True, check=False)
  if completed.returncode != 0:
    raise StageFailed(f'exit status {completed.returncode}')
  lines = [l for l in completed.stdout.splitlines() if l.startswith('{')]
  return json.loads(lines[-1]) if lines else {}


class Stages:
  """Runs run.py stages (in this process or as subprocesses), records their
  wall time and reuses stages already done in work_dir."""

  def __init__(self, work_dir, subprocesses=False, echo=print):
    self.work_dir = work_dir
    self.subprocesses = subprocesses
    self.echo = echo
    self.records = {}
    os.makedirs(os.path.join(work_dir, 'logs'), exist_ok=True)

  def model_dir(self, name):
    return os.path.join(self.work_dir, name.replace('@', '_'))

  def run(self, name, flags, result_name='result'):
    """Runs a stage once; returns {'result': result json, 'seconds',
    'train': the training summary (images_per_sec ...)}."""
    model_dir = flags_lib.flag_value(flags, 'model_dir')
    record_path = os.path.join(model_dir, f'stage_{result_name}.json')
    if name in self.records:  # Run (or reused) earlier in this invocation.
      return self.records[name]
    if os.path.exists(record_path):
      with open(record_path) as f:
        record = json.load(f)
      self.echo(f'[{name}] done before ({record["seconds"]:.0f} s), reused')
      record['reused'] = True
    else:
      os.makedirs(model_dir, exist_ok=True)
      self.echo(f'[{name}] run.py {shlex.join(flags)}')
      started = time.time()
      try:
        if self.subprocesses:
          summary = _run_py_subprocess(flags, os.path.join(
              self.work_dir, 'logs', name.replace('@', '_') + '.log'))
        else:
          summary = _run_py_in_process(flags) or {}
      except Exception as error:  # pylint: disable=broad-except
        raise StageFailed(f'stage {name} failed: '
                          f'{type(error).__name__}: {error}') from error
      seconds = time.time() - started
      with open(os.path.join(model_dir, f'{result_name}.json')) as f:
        result = json.load(f)
      record = {'seconds': seconds, 'result': result,
                'train': summary.get('train') or {}}
      if summary.get('phases'):  # Where the seconds went (seconds_per_step).
        record.update(phases=summary['phases'],
                      first_loop_steps=summary.get('first_loop_steps'))
      with open(record_path, 'w') as f:
        json.dump(record, f, indent=1, sort_keys=True)
    self.records[name] = record
    result = record['result']
    shown = ' '.join(f'{key} {result[key]:.4f}' for key in (
        'label_top_1_accuracy', 'knn_top_1') if key in result)
    self.echo(f'[{name}] {record["seconds"]:.0f} s, {result["eval_split"]}: '
              f'{shown}')
    return record

  def validation_top_1(self, name, flags, key='label_top_1_accuracy'):
    return self.run(name, flags)['result'][key]

  def test(self, name, flags):
    """The one test-split evaluation of a final model trained before."""
    return self.run(name + ':test', flags_lib.test_flags(flags),
                    result_name='result_test')['result']

  def train_and_test(self, name, flags):
    """A final model trained and evaluated once, on the test split."""
    return self.run(name, flags_lib.test_flags(flags, train=True),
                    result_name='result_test')['result']

  def timings(self):
    """{stage: {'seconds', 'train_images_per_sec', 'overhead_s'}}: overhead
    is the wall time not spent in training steps (tracing, input start-up,
    evaluation)."""
    out = {}
    for name, record in self.records.items():
      entry = {'seconds': round(record['seconds'], 1)}
      if record.get('reused'):
        entry['reused'] = True  # Done by an earlier run in the same work_dir.
      train = record.get('train') or {}
      if train.get('images_per_sec') and train.get('global_step'):
        entry['train_images_per_sec'] = round(train['images_per_sec'], 1)
      out[name] = entry
    return out


def seconds_per_step(record):
  """A stage record's steady training seconds per step: its training loops
  after the first (which also warms up) over their steps; None when the
  record lacks its phases (a stage recorded before they were kept)."""
  phases = record.get('phases') or {}
  steps = (record.get('train') or {}).get('global_step')
  first = record.get('first_loop_steps')
  if not phases.get('train_loops') or not steps or first is None:
    return None
  if steps <= first:
    return None
  return phases['train_loops'] / (steps - first)


def computed_once(stages, path, stage_name, compute):
  """(compute()'s JSON dict, False), written to `path`, or (the dict read
  from `path`, True) when an earlier run wrote it; recorded as the stage
  `stage_name` with the dict's 'seconds'."""
  reused = os.path.exists(path)
  if reused:
    with open(path) as f:
      value = json.load(f)
  else:
    value = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump(value, f, indent=1, sort_keys=True)
  stages.records[stage_name] = {'seconds': value['seconds'], 'result': {},
                                'reused': reused}
  return value, reused

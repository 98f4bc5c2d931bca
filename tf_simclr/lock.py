"""One training process per model_dir (no TensorFlow: run.py checks it
before TensorFlow loads, and the trainer holds it while it trains)."""

import json
import os
import socket
import sys
import time

from absl import logging

from tf_simclr import config as config_lib


class ModelDirInUse(config_lib.ConfigError):
  """Another live process trains into this model_dir."""


LOCK_NAME = '.tf_simclr.lock'


class ModelDirLock:
  """One training process per model_dir: two would interleave checkpoints.

  The lock is the kernel's advisory `flock` on model_dir/.tf_simclr.lock,
  so it ends with the process however the process ends (SIGKILL, a crash,
  a lost machine's NFS lease aside): a lock left by a killed process is no
  lock, and the next run takes it over. The file records who holds it (pid,
  host, start time, command) for the message a second process gets; a run
  that ends normally clears the record, so one found on taking the lock is
  a killed run's (logged as taken over). Only
  training takes it: evaluating or exporting a model_dir in use is allowed.
  Object stores (gs://...) have no flock; there the lock is skipped.

  Usage: `with ModelDirLock(model_dir): train()`.
  """

  def __init__(self, model_dir):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_NAME)
    self._file = None
    self._recorded = False

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *unused):
    self.release()

  def acquire(self, record=True):
    """Raises ModelDirInUse naming the holder when another process has it.
    With record, writes this process as the holder (training); without, only
    checks (the record found is left as it is)."""
    try:
      import fcntl  # pylint: disable=import-outside-toplevel
    except ImportError:  # Not a POSIX system.
      return
    if '://' in self.model_dir:
      logging.info('%s: no lock on an object store; make sure one run at a '
                   'time trains into it.', self.model_dir)
      return
    os.makedirs(self.model_dir, exist_ok=True)
    handle = open(self.path, 'a+', encoding='utf-8')
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read_holder(handle)
      handle.close()
      raise ModelDirInUse(
          f'--model_dir {self.model_dir} is in use: {holder}; wait for it to '
          'finish or train into another --model_dir') from None
    self._file = handle
    if not record:
      return
    previous = _read_holder(handle, default=None)
    if previous:
      logging.info('%s: taking over the lock of %s (no longer running)',
                   self.model_dir, previous)
    handle.seek(0)
    handle.truncate()
    json.dump({'pid': os.getpid(), 'host': socket.gethostname(),
               'since': time.strftime('%Y-%m-%d %H:%M:%S'),
               'command': ' '.join(sys.argv)}, handle)
    handle.flush()
    self._recorded = True

  def release(self):
    if self._file is not None:
      if self._recorded:  # Ended normally: no holder left on record.
        self._file.seek(0)
        self._file.truncate()
      self._file.close()  # Closing the descriptor releases the flock.
      self._file = None
      self._recorded = False


def _read_holder(handle, default='another process'):
  """'process PID on HOST since TIME (COMMAND)' from the lock file."""
  try:
    handle.seek(0)
    record = json.loads(handle.read() or 'null')
  except (OSError, ValueError):
    record = None
  if not isinstance(record, dict):
    return default
  text = f'process {record.get("pid")} on {record.get("host")}'
  if record.get('since'):
    text += f' since {record["since"]}'
  if record.get('command'):
    text += f' ({record["command"]})'
  return text


def check_free(model_dir):
  """Raises ModelDirInUse now (run.py's up-front check) when another process
  trains into model_dir; takes nothing. Only the chief of a multi-worker run
  checks: the other workers never train into model_dir."""
  if not is_chief_from_environment():
    return
  lock = ModelDirLock(model_dir)
  lock.acquire(record=False)
  lock.release()


def is_chief_from_environment():
  """The chief by TF_CONFIG (no TF_CONFIG: a single process, the chief)."""
  try:
    tf_config = json.loads(os.environ.get('TF_CONFIG') or '{}')
  except ValueError:
    return True
  task = tf_config.get('task') or {}
  cluster = tf_config.get('cluster') or {}
  kind, index = task.get('type'), int(task.get('index') or 0)
  if not kind:
    return True
  if 'chief' in cluster:
    return kind == 'chief'
  return kind == 'worker' and index == 0

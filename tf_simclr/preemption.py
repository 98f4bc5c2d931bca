"""Stopping a training run cleanly: signals, the loop call in a helper thread.

SIGTERM / SIGINT (a preemption, Ctrl-C) only record the signal. The training
loop's tf.function call runs in a helper thread, so the main thread sees the
signal at once and raises the trainer's stop variable, which the in-graph loop
reads before every step: the call ends after the step in flight however many
steps one call runs. The trainer then writes a checkpoint of that step and
raises Preempted (run.py exits 128 + the signal number). A signal during a
checkpoint write only sets the flag: the write completes first.
"""

import signal
import threading

from absl import logging

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingError(RuntimeError):
  """Training cannot go on (NaN loss, a failed save, preemption); the message
  says why in one line."""


class Preempted(TrainingError):
  """SIGTERM or SIGINT arrived; a checkpoint of the current step was written."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.signum = signum


class StopSignals:
  """Context manager: while active, SIGTERM / SIGINT set `signum` (the first
  one received) instead of ending the process; on exit the previous handlers
  come back. Outside the main thread it installs nothing."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  @property
  def name(self):
    return signal.Signals(self.signum).name if self.signum else None

  def _handler(self, signum, frame):
    del frame
    if self.signum is None:
      self.signum = signum
      logging.warning('%s received: stopping after the current step and '
                      'saving a checkpoint.', signal.Signals(signum).name)
    else:
      logging.warning('%s received: already stopping.',
                      signal.Signals(signum).name)

  def __enter__(self):
    self.signum = None
    for signum in STOP_SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handler)
        signal.siginterrupt(signum, False)  # Restart interrupted writes.
      except ValueError:  # Not the main thread.
        pass
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    self._previous = {}
    return False


def run_until_done(function, signals, on_stop):
  """Calls `function()` in a helper thread; the main thread waits, and the
  first time `signals` has caught a signal it calls `on_stop()` (which asks
  the function to end early). Errors of `function` are raised here."""
  outcome = {}

  def target():
    try:
      function()
    except BaseException as error:  # pylint: disable=broad-except
      outcome['error'] = error

  thread = threading.Thread(target=target, name='train_loop', daemon=True)
  thread.start()
  stopped = False
  while thread.is_alive():
    thread.join(0.1)
    if signals.signum is not None and not stopped:
      on_stop()
      stopped = True
  if 'error' in outcome:
    raise outcome['error']

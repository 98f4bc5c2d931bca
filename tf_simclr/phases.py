"""Wall time of a run's phases: where a stage's seconds go.

A run records its phases (input set-up, model build, restore, tracing, the
first batch, training, checkpoint writes, evaluation, export) in a
`PhaseTimer`; run.py returns them in its summary under 'phases', and
`python -m tf_simclr.benchmark --component=stage` tabulates them.
"""

import contextlib
import time


class PhaseTimer:
  """Seconds spent in named phases, summed over repeated entries, in the
  order each name was first entered."""

  def __init__(self):
    self.seconds = {}

  @contextlib.contextmanager
  def __call__(self, name):
    started = time.perf_counter()
    try:
      yield
    finally:
      self.add(name, time.perf_counter() - started)

  def add(self, name, seconds):
    self.seconds[name] = self.seconds.get(name, 0.0) + seconds

  def as_dict(self):
    return {name: round(value, 4) for name, value in self.seconds.items()}


def timed(timer, name):
  """`timer(name)`, or a context that times nothing when timer is None."""
  return timer(name) if timer is not None else contextlib.nullcontext()

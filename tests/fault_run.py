"""run.py with faults injected, for tests/test_faults.py (a test aid only).

  TF_SIMCLR_TEST_FAULTS='kill_in_save=6,print_steps=1' python tests/fault_run.py --flags...

runs `run.py --flags...` after patching TensorFlow and the trainer in this
process; the library itself has no fault hooks. Faults (comma-separated):

  signal_in_save=N:SIGNAME  send SIGNAME to ourselves while checkpoint ckpt-N is
                            being written (its shards are on disk, the merge
                            into ckpt-N.index has not run yet), then go on;
                            N may be 'any' (every checkpoint).
  kill_in_save=N            SIGKILL ourselves at that same moment.
  disk_full_in_save=N       fail that merge with ResourceExhaustedError
                            ("No space left on device").
  nan_at_step=K             make the loss of step K (1-based) NaN.
  print_steps=1             print 'FAULT_RUN step K' to stderr after each step.
"""

import os
import re
import runpy
import signal
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _faults():
  spec = os.environ.get('TF_SIMCLR_TEST_FAULTS', '')
  return dict(item.split('=', 1) for item in spec.split(',') if item)


def _checkpoint_step(file_prefix):
  if hasattr(file_prefix, 'numpy'):
    file_prefix = file_prefix.numpy()
  if isinstance(file_prefix, bytes):
    file_prefix = file_prefix.decode()
  match = re.search(r'ckpt-(\d+)$', str(file_prefix))
  return int(match.group(1)) if match else None


def _patch_checkpoint_merge(faults):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tensorflow.python.ops import gen_io_ops  # pylint: disable=import-outside-toplevel
  original = gen_io_ops.merge_v2_checkpoints

  def at(name, step):
    value = faults.get(name)
    if value is None or step is None:
      return False
    wanted = value.split(':')[0]
    return wanted == 'any' or int(wanted) == step

  def merge_v2_checkpoints(checkpoint_prefixes, destination_prefix, *args,
                           **kwargs):
    step = _checkpoint_step(destination_prefix)
    if at('signal_in_save', step):
      name = faults['signal_in_save'].split(':')[1]
      os.kill(os.getpid(), getattr(signal, name))
    if at('kill_in_save', step):
      sys.stderr.write(f'FAULT_RUN SIGKILL while writing ckpt-{step}\n')
      sys.stderr.flush()
      os.kill(os.getpid(), signal.SIGKILL)
    if at('disk_full_in_save', step):
      raise tf.errors.ResourceExhaustedError(
          None, None, f'{destination_prefix}.index: No space left on device')
    return original(checkpoint_prefixes, destination_prefix, *args, **kwargs)

  gen_io_ops.merge_v2_checkpoints = merge_v2_checkpoints


def _patch_objectives(faults):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tf_simclr import objectives  # pylint: disable=import-outside-toplevel
  from tf_simclr import trainer  # pylint: disable=import-outside-toplevel
  nan_at_step = int(faults.get('nan_at_step', 0))
  print_steps = faults.get('print_steps') == '1'
  # The stage objectives are pure functions of the batch: the step number
  # comes from the Trainer being built (its global step exists once it is
  # set up; the objective is first traced before that, to name its metrics).
  current = {}
  original_init = trainer.Trainer.__init__

  def init(self, *args, **kwargs):
    current['trainer'] = self
    original_init(self, *args, **kwargs)
  trainer.Trainer.__init__ = init

  def wrap(objective):
    def faulty(outputs, labels, inputs, options):
      loss, logs = objective(outputs, labels, inputs, options)
      global_step = getattr(current.get('trainer'), 'global_step', None)
      if global_step is None:
        return loss, logs
      step = global_step + 1  # 1-based number of this step.
      if nan_at_step:
        loss = loss * tf.where(tf.equal(step, nan_at_step),
                               tf.constant(float('nan')), 1.0)
      if print_steps:
        tf.print('FAULT_RUN step', step, output_stream=sys.stderr)
      return loss, logs
    return faulty

  for name in list(objectives.STAGE_OBJECTIVES):
    objectives.STAGE_OBJECTIVES[name] = wrap(objectives.STAGE_OBJECTIVES[name])


def main():
  faults = _faults()
  sys.path.insert(0, REPO_ROOT)
  if faults:
    _patch_checkpoint_merge(faults)
    _patch_objectives(faults)
  sys.argv[0] = os.path.join(REPO_ROOT, 'run.py')
  runpy.run_path(sys.argv[0], run_name='__main__')


if __name__ == '__main__':
  main()

"""tf.distribute strategy from a name: default, mirrored, multi_worker_mirrored, tpu."""

import tensorflow as tf
import tf_keras
from official.common import distribute_utils


def make_strategy(name='default', num_gpus=0, tpu_name=None, tpu_zone=None,
                  gcp_project=None, devices=None):
  """Returns the strategy to train under.

  Args:
    name: 'default' (the default strategy: CPU or one GPU), 'mirrored' (all
      local GPUs, or `devices`), 'multi_worker_mirrored' (hosts from TF_CONFIG),
      or 'tpu'.
    num_gpus: GPUs for 'mirrored' (0: all visible; with none, the CPU).
    tpu_name, tpu_zone, gcp_project: where the TPU is (name or grpc:// address).
    devices: explicit device list for 'mirrored' (e.g. logical CPUs in tests).
  """
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    if devices:
      return tf.distribute.MirroredStrategy(devices)
    if not num_gpus:
      num_gpus = len(tf.config.list_logical_devices('GPU'))
    return distribute_utils.get_distribution_strategy('mirrored',
                                                      num_gpus=num_gpus)
  if name == 'multi_worker_mirrored':
    return distribute_utils.get_distribution_strategy('multi_worker_mirrored')
  if name == 'tpu':
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu_name, zone=tpu_zone, project=gcp_project)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError("strategy must be one of 'default', 'mirrored', "
                   f"'multi_worker_mirrored', 'tpu', got {name!r}")


def is_chief(strategy):
  """True on the worker that writes checkpoints, summaries and exports."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type in (None, 'chief'):
    return True
  has_chief = 'chief' in resolver.cluster_spec().as_dict()
  return task_type == 'worker' and task_id == 0 and not has_chief


def split_cpu_into_logical_devices(count):
  """Makes `count` logical CPU devices (before TF initialises); for testing
  MirroredStrategy on one machine."""
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * count)
  return [f'/cpu:{index}' for index in range(count)]


def runs_on_accelerator(strategy):
  """True when the strategy's replicas run on GPUs or TPUs, not the CPU."""
  if isinstance(strategy, (tf.distribute.TPUStrategy,
                           tf.distribute.experimental.TPUStrategy)):
    return True
  try:
    devices = strategy.extended.worker_devices
  except RuntimeError:  # The default strategy: one GPU if there is one.
    return bool(tf.config.list_logical_devices('GPU'))
  return any(tf.DeviceSpec.from_string(device).device_type in ('GPU', 'TPU')
             for device in devices)


# CPU features with bfloat16 arithmetic that oneDNN uses: AVX-512 BF16
# (Cooper Lake, Zen 4 and later) and AMX (Sapphire Rapids and later).
FAST_BFLOAT16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')


PRECISION_POLICIES = {'float32': 'float32', 'bfloat16': 'mixed_bfloat16',
                      'float16': 'mixed_float16'}


def set_precision_policy(precision):
  """Keras's global dtype policy for --precision (float32, bfloat16 or
  float16: the mixed policies compute in half precision, keep float32
  variables)."""
  tf_keras.mixed_precision.set_global_policy(PRECISION_POLICIES[precision])


def cpu_model_name(default, cpuinfo_path='/proc/cpuinfo'):
  """The CPU's model name from /proc/cpuinfo (Linux), else `default`."""
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return default


def cpu_has_fast_bfloat16(cpuinfo_path='/proc/cpuinfo'):
  """True when the CPU (Linux) has bfloat16 instructions; False when it
  has not or when that cannot be read."""
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        if line.startswith('flags'):
          return bool(set(line.split(':', 1)[1].split()) &
                      set(FAST_BFLOAT16_CPU_FLAGS))
  except OSError:
    pass
  return False


def in_multi_worker_mode(strategy):
  """True under a MultiWorkerMirroredStrategy spanning several workers."""
  in_multi_worker = getattr(strategy.extended, '_in_multi_worker_mode', None)
  return bool(in_multi_worker and in_multi_worker())

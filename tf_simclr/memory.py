"""SimCLRv2's memory of negatives: a momentum network and a FIFO buffer.

SimCLRv2 takes MoCo's memory into SimCLR: a *memory network* (a copy of the
backbone and projection head whose weights follow the trained network's as a
moving average) projects every training batch; those projections wait in a
first-in first-out buffer of K vectors and serve the contrastive loss as extra
negatives, so the number of negatives no longer depends on the batch size. The
paper's appendix uses K = 64K and momentum 0.999 at batch 4096 on ImageNet.

One step with the memory (trainer.Trainer.train_step):
  1. replica context: the memory network, in inference mode and without
     gradient, projects the step's views; the projections are l2-normalised
     (with --hidden_norm, as the loss normalises the trained network's) and
     gathered from all replicas, view a of every replica first, then view b:
     the same rows, in the same order, as one replica on the global batch;
  2. the loss contrasts each view with its positive and the in-batch negatives
     as without memory, plus the buffer's filled rows (objectives.
     contrastive_loss's `memory`); the step's own projections are not in the
     buffer yet, so no view meets the memory's copy of its positive;
  3. cross-replica context, after the optimizer step: every memory variable
     (weights and batch-norm moving statistics) becomes
     m · memory + (1 − m) · trained, replica by replica, and the gathered
     projections overwrite the oldest rows of the buffer, on every replica.

The network, the buffer and its counter are tf.train.Checkpoint dependencies
of the trainer's checkpoint (key `memory`): a resumed run goes on with the
memory it saved. Exports, finetune and distill read the `model` key only.
"""

import tensorflow as tf

from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import model as model_lib
from tf_simclr import objectives

# The paper's appendix (ImageNet, batch 4096).
PAPER_MEMORY_SIZE = 65536
PAPER_MEMORY_MOMENTUM = 0.999
# The buffer's key in this project's checkpoints.
BUFFER_KEY = 'memory/buffer/.ATTRIBUTES/VARIABLE_VALUE'


def _memory_weights(model):
  """The variables the memory copies: backbone and projection head (the
  supervised head stays out), trainable and batch-norm statistics alike."""
  return (list(model.resnet_model.variables) +
          list(model.projection_head.variables))


class NegativeMemory(tf.Module):
  """The memory network and its buffer of K projections.

  Build it inside the strategy's scope, after the trained model.

  Args:
    model: the trained model.SimCLRModel.
    network: a model.SimCLRModel of the same backbone and projection head
      (built for the memory: no supervised head needed).
    size: K, rows of the buffer.
    momentum: m of the moving average, in [0, 1).
    image_size: the input size (to find the projection width).
    hidden_norm: l2-normalise the projections entering the buffer.
  """

  def __init__(self, model, network, size, momentum, image_size,
               hidden_norm=True):
    super().__init__(name='negative_memory')
    if size < 1:
      raise ValueError(f'memory size must be positive, got {size}')
    if not 0 <= momentum < 1:
      raise ValueError(f'memory momentum must be in [0, 1), got {momentum}')
    self.network = network
    self.size = int(size)
    self.momentum = float(momentum)
    self.hidden_norm = hidden_norm
    trained = _memory_weights(model)
    copies = _memory_weights(network)
    shapes = [tuple(v.shape) for v in trained]
    if shapes != [tuple(v.shape) for v in copies]:
      raise ValueError('the memory network has another architecture than '
                       'the trained network')
    # Not a checkpoint dependency: the trained variables belong to `model`.
    self._pairs = _Untracked(list(zip(copies, trained)))
    dim = int(network(tf.zeros([1, image_size, image_size, 3]),
                      training=False)[model_lib.PROJ_HEAD_OUTPUT].shape[-1])
    self.buffer = tf.Variable(tf.zeros([self.size, dim]), trainable=False,
                              name='buffer')
    # Projections pushed so far; the next one goes to row pushed mod K.
    self.pushed = tf.Variable(0, dtype=tf.int64, trainable=False,
                              name='pushed')
    # False until the network was copied from the trained one (a restored
    # checkpoint sets it True with the rest of the memory).
    self.initialized = tf.Variable(False, trainable=False, name='initialized')

  @property
  def dim(self):
    return int(self.buffer.shape[-1])

  # ------------------------------------------------------------ replica context
  def project(self, images):
    """The memory network's projections [N, d] of `images` (inference mode,
    no gradient, float32, normalised like the loss's)."""
    outputs = self.network(images, training=False)
    keys = tf.stop_gradient(tf.cast(outputs[model_lib.PROJ_HEAD_OUTPUT],
                                    tf.float32))
    if self.hidden_norm:
      keys = tf.math.l2_normalize(keys, axis=-1)
    return keys

  def gather_views(self, keys, strategy):
    """[2n, d] local projections (view a rows, then view b) -> [2N, d] of the
    global batch: every replica's view a, then every replica's view b."""
    keys_a, keys_b = tf.split(keys, 2, axis=0)
    return tf.concat([objectives.cross_replica_concat(keys_a, strategy),
                      objectives.cross_replica_concat(keys_b, strategy)],
                     axis=0)

  def negatives(self):
    """(buffer [K, d], filled rows: a scalar int32) for the loss."""
    filled = tf.cast(tf.minimum(self.pushed, self.size), tf.int32)
    return tf.identity(self.buffer), filled

  def fill_fraction(self):
    return tf.cast(tf.minimum(self.pushed, self.size), tf.float32) / self.size

  # ------------------------------------------------------------ cross-replica
  def update(self, keys, strategy):
    """After the optimizer step: the moving average of every memory variable,
    then `keys` [M, d] (the gathered projections, M <= K) into the buffer."""
    self.follow(strategy, self.momentum)
    self.push(keys, strategy)

  def follow(self, strategy, momentum):
    """memory ← m · memory + (1 − m) · trained, on every replica's copy
    (batch-norm statistics kept per replica are averaged replica by replica)."""
    def moving_average(memory_variable, trained_variable):
      return memory_variable.assign(
          momentum * memory_variable +
          (1 - momentum) * tf.cast(trained_variable, memory_variable.dtype))
    for memory_variable, trained_variable in self._pairs.value:
      strategy.extended.update(memory_variable, moving_average,
                               args=(trained_variable,), group=False)

  def push(self, keys, strategy):
    """Writes `keys` [M, d] over the M oldest rows (the buffer is a ring:
    rows pushed mod K .. pushed + M − 1 mod K)."""
    count = tf.shape(keys)[0]
    rows = tf.math.floormod(
        self.pushed + tf.range(tf.cast(count, tf.int64)), self.size)

    def write(buffer, values, indices):
      return buffer.scatter_update(tf.IndexedSlices(values, indices))
    strategy.extended.update(self.buffer, write, args=(keys, rows),
                             group=False)
    strategy.extended.update(
        self.pushed, lambda pushed, n: pushed.assign_add(n),
        args=(tf.cast(count, tf.int64),), group=False)

  def copy_trained(self, strategy):
    """The memory network becomes the trained network (momentum 0); the
    buffer is left as it is."""
    self.follow(strategy, 0.0)
    self.initialized.assign(True)


def check_resumable(memory, model_dir):
  """Raises ConfigError when model_dir's newest checkpoint holds a memory of
  another size than `memory` (restoring it would fail on the shape)."""
  latest = checkpoints.latest_checkpoint(model_dir)
  if not latest:
    return
  shapes = tf.train.load_checkpoint(latest).get_variable_to_shape_map()
  saved = shapes.get(BUFFER_KEY)
  if saved is not None and int(saved[0]) != memory.size:
    raise config_lib.ConfigError(
        f'--memory_size={memory.size} but {latest} holds a memory of '
        f'{int(saved[0])} projections: resume with --memory_size='
        f'{int(saved[0])} or train into another --model_dir')


class _Untracked:
  """Holds a value out of tf.Module's automatic dependency tracking."""

  def __init__(self, value):
    self.value = value


def build_memory(model, config, strategy):
  """The NegativeMemory of `config` (--memory_size, --memory_momentum) for the
  trained `model`, built under `strategy`'s scope."""
  with strategy.scope():
    network = model_lib.build_model(
        0, **dict(config.model_kwargs(), global_bn=False),
        supervised_training=False)
    return NegativeMemory(model, network, config.memory_size,
                          config.memory_momentum, config.image_size,
                          hidden_norm=config.hidden_norm)

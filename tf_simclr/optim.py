"""Learning-rate scaling and schedule, optimizers, weight decay.

LARS is tf-models-official's. BN parameters, biases and the supervised head are
excluded from its weight decay and trust ratio; they are picked out from the
model's structure (BN layers, `use_bias` layers, the head object) and matched
by exact variable name, not by name substrings.
"""

import math
import re

import tensorflow as tf
import tf_keras
from official.modeling.optimization import lars

from tf_simclr import heads


# ------------------------------------------------------------ durations
def steps_from_epochs(epochs, num_examples, batch_size):
  """Whole steps covering `epochs` passes over `num_examples` examples: the
  one epochs-to-steps rule (warm-up, checkpoint interval, training length)."""
  return int(round(epochs * num_examples // batch_size))


def total_train_steps(train_steps, train_epochs, num_examples, batch_size):
  """`train_steps` when given, else the reference's rule: one step more than
  steps_from_epochs (epochs * examples // batch + 1)."""
  if train_steps:
    return int(train_steps)
  return steps_from_epochs(train_epochs, num_examples, batch_size) + 1


def scaled_learning_rate(base_learning_rate, batch_size, scaling='linear'):
  """base · B/256 ('linear') or base · √B ('sqrt'); B is the global batch."""
  if scaling == 'linear':
    return base_learning_rate * batch_size / 256.0
  if scaling == 'sqrt':
    return base_learning_rate * math.sqrt(batch_size)
  raise ValueError(f"learning_rate_scaling must be 'linear' or 'sqrt', "
                   f'got {scaling!r}')


class WarmUpAndCosineDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine to 0 at
  `total_steps`.

  The three values are variables read by the traced training step, so a
  traced step serves another run with other values (`assign`).

  Args:
    peak: the scaled learning rate reached at the end of warm-up.
    warmup_steps: steps of linear warm-up (0: none).
    total_steps: step at which the learning rate reaches 0.
  """

  def __init__(self, peak, warmup_steps, total_steps):
    super().__init__()
    self._values = [tf.Variable(0.0, trainable=False, dtype=tf.float32,
                                name=name)
                    for name in ('peak', 'warmup_steps', 'total_steps')]
    self.assign(peak, warmup_steps, total_steps)

  def assign(self, peak, warmup_steps, total_steps):
    """Sets the schedule's peak, warm-up and length."""
    self.peak = float(peak)
    self.warmup_steps = int(warmup_steps)
    self.total_steps = int(total_steps)
    for variable, value in zip(self._values, (self.peak, self.warmup_steps,
                                              self.total_steps)):
      variable.assign(value)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    peak, warmup, total = self._values
    decay_steps = tf.maximum(total - warmup, 1.0)
    warm = tf.where(warmup > 0, peak * step / tf.maximum(warmup, 1.0), peak)
    progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
    cosine = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
    return tf.where(step < warmup, warm, cosine)

  def get_config(self):
    return {'peak': self.peak, 'warmup_steps': self.warmup_steps,
            'total_steps': self.total_steps}


def schedule_values(config, num_examples, total_steps):
  """(peak, warm-up steps, total steps) of a run's schedule: the peak rate
  scaled to the global batch, warm-up in whole steps."""
  peak = scaled_learning_rate(config.learning_rate, config.train_batch_size,
                              config.learning_rate_scaling)
  warmup = steps_from_epochs(config.warmup_epochs, num_examples,
                             config.train_batch_size)
  return peak, warmup, total_steps


# ------------------------------------------------------------ exclusions
def _canonical_name(name):
  # Mirrored/TPU replicas of a variable are named '<name>/replica_<k>:0'.
  return re.sub(r'/replica_\d+', '', name)


def excluded_from_weight_decay(model):
  """Variables that get no weight decay and no LARS trust ratio: every BN
  parameter, every bias, and the whole supervised head."""
  excluded = []
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      excluded += [v for v in (layer.gamma, layer.beta) if v is not None]
    elif isinstance(layer, heads.SupervisedHead):
      excluded += layer.variables
    bias = getattr(layer, 'bias', None)
    if isinstance(bias, tf.Variable):
      excluded.append(bias)
  return excluded


def decayed_variables(model):
  """Trainable variables that weight decay applies to."""
  excluded = {v.ref() for v in excluded_from_weight_decay(model)}
  return [v for v in model.trainable_variables if v.ref() not in excluded]


class LARS(lars.LARS):
  """tf-models-official's LARS with exclusions given as variables.

  Args:
    excluded_variables: variables without weight decay and trust ratio.
    (the rest as official.modeling.optimization.lars.LARS)
  """

  def __init__(self, learning_rate, momentum=0.9, weight_decay_rate=0.0,
               excluded_variables=(), eeta=0.001, **kwargs):
    super().__init__(learning_rate=learning_rate, momentum=momentum,
                     weight_decay_rate=weight_decay_rate, eeta=eeta,
                     classic_momentum=True, **kwargs)
    names = [_canonical_name(v.name) for v in excluded_variables]
    self._excluded_names = frozenset(names)

  def _excluded(self, param_name):
    return _canonical_name(param_name) in self._excluded_names

  def _use_weight_decay(self, param_name):
    return bool(self.weight_decay_rate) and not self._excluded(param_name)

  def _do_layer_adaptation(self, param_name):
    return not self._excluded(param_name)


def check_unique_variable_names(model):
  """LARS matches variables by name, so names must be unique in the model."""
  seen = {}
  for variable in model.variables:
    name = _canonical_name(variable.name)
    if name in seen and seen[name] is not variable:
      raise ValueError(f'two model variables share the name {name}')
    seen[name] = variable


def build_optimizer(name, learning_rate, model, momentum=0.9, weight_decay=0.0):
  """Returns the optimizer named 'lars', 'momentum' or 'adam'.

  `learning_rate` may be a schedule. For LARS, weight decay is applied inside
  the optimizer; for the others, `weight_decay_loss` adds it to the loss.
  """
  if name == 'lars':
    check_unique_variable_names(model)
    return LARS(learning_rate, momentum=momentum,
                weight_decay_rate=weight_decay,
                excluded_variables=excluded_from_weight_decay(model))
  if name == 'momentum':
    return tf_keras.optimizers.legacy.SGD(learning_rate, momentum,
                                          nesterov=True)
  if name == 'adam':
    return tf_keras.optimizers.legacy.Adam(learning_rate)
  raise ValueError(f"optimizer must be 'lars', 'momentum' or 'adam', "
                   f'got {name!r}')


def build_for_run(config, model, num_examples, total_steps):
  """A run's optimizer and its learning-rate schedule: the peak rate scaled
  to the global batch, warm-up then cosine to total_steps, the config's
  optimizer, wrapped for loss scaling with float16. Returns (optimizer,
  schedule)."""
  schedule = WarmUpAndCosineDecay(*schedule_values(config, num_examples,
                                                   total_steps))
  optimizer = build_optimizer(config.optimizer, schedule, model,
                              momentum=config.momentum,
                              weight_decay=config.weight_decay)
  if config.precision == 'float16':
    optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
  return optimizer, schedule


def optimizer_variables(optimizer):
  """The optimizer's own variables (slots, iterations), in either Keras
  optimizer API."""
  variables = getattr(optimizer, 'variables', [])
  return list(variables() if callable(variables) else variables)


def weight_decay_loss(model, optimizer_name, weight_decay):
  """The L2 term added to the loss.

  With LARS the optimizer decays everything but the excluded variables; of
  those, the supervised head's kernel is decayed here instead (as in the
  reference). With other optimizers every trainable variable except BN
  parameters is decayed here.
  """
  if not weight_decay:
    return tf.constant(0.0)
  if optimizer_name == 'lars':
    variables = [layer.linear_layer.dense.kernel
                 for layer in model.submodules
                 if isinstance(layer, heads.SupervisedHead) and layer.trainable]
  else:
    batch_norm = {v.ref() for layer in model.submodules
                  if isinstance(layer, tf_keras.layers.BatchNormalization)
                  for v in layer.variables}
    variables = [v for v in model.trainable_variables
                 if v.ref() not in batch_norm]
  if not variables:
    return tf.constant(0.0)
  return weight_decay * tf.add_n(
      [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])


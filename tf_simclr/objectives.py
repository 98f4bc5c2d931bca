"""Losses: NT-Xent contrastive, supervised cross-entropy, distillation.

All losses compute in float32, whatever the model's compute dtype. The stage
objectives at the end combine them into what each stage trains on.
"""

import dataclasses
from typing import Optional

import tensorflow as tf

from tf_simclr import model as model_lib

# Added to the logits of an example against itself; large enough to zero its
# softmax weight, and finite so 0 * LARGE_NUM stays 0. Logits are float32 here,
# so it cannot overflow even when the model runs in float16.
LARGE_NUM = 1e9


def cross_replica_concat(tensor, strategy=None):
  """Concatenates `tensor` [n, ...] from all replicas along axis 0.

  Written as an all-reduce (SUM) of a zero tensor holding this replica's slice
  at its position: the gradient of an all-reduce SUM is an all-reduce SUM, so
  every replica receives the gradient of all replicas' losses with respect to
  its own slice. Returns `tensor` unchanged outside a multi-replica context.

  Args:
    tensor: [n, ...] the local values; n must be equal on all replicas.
    strategy: a tf.distribute.Strategy, or None.

  Returns:
    [num_replicas * n, ...], replica r's values at rows r*n .. (r+1)*n - 1.
  """
  context = tf.distribute.get_replica_context()
  if strategy is None or context is None or context.num_replicas_in_sync == 1:
    return tensor
  num_replicas = context.num_replicas_in_sync
  replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
  scattered = tf.scatter_nd(
      indices=[[replica_id]],
      updates=[tensor],
      shape=tf.concat([[num_replicas], tf.shape(tensor)], axis=0))
  gathered = context.all_reduce(tf.distribute.ReduceOp.SUM, scattered)
  return tf.reshape(gathered, tf.concat([[-1], tf.shape(tensor)[1:]], axis=0))


def contrastive_loss(hidden, hidden_norm=True, temperature=0.1, strategy=None,
                     memory=None):
  """NT-Xent loss of SimCLR (with SimCLRv2's memory of negatives).

  The two views are the two halves of the batch: rows i and i + n of `hidden`
  are the two views of image i. Each view is contrasted against the other view
  of its image (the positive) and against both views of every other image of
  the global batch (negatives from all replicas when `strategy` is given), and
  against the memory's filled rows when `memory` is given.

  Args:
    hidden: [2n, d] projections (any float dtype; computed in float32).
    hidden_norm: l2-normalise `hidden` first (cosine similarity).
    temperature: softmax temperature.
    strategy: tf.distribute.Strategy whose replicas supply negatives, or None.
    memory: None, or (negatives [K, d], filled): projections of a memory
      network (constants, already normalised as wanted; see memory.py) of
      which the first `filled` rows are extra negatives for both views; the
      others are masked out of the softmax.

  Returns:
    loss: scalar, mean cross-entropy of view a plus that of view b (the sum of
      both directions, as in the reference).
    logits_ab: [n, N] logits of view a against all N view-b projections of the
      global batch (N = n · replicas).
    labels: [n, 2N] one-hot positive indices for [logits_ab, logits_aa].
  """
  hidden = tf.cast(hidden, tf.float32)
  if hidden_norm:
    hidden = tf.math.l2_normalize(hidden, axis=-1)
  hidden_a, hidden_b = tf.split(hidden, 2, axis=0)
  batch_size = tf.shape(hidden_a)[0]

  hidden_a_large = cross_replica_concat(hidden_a, strategy)
  hidden_b_large = cross_replica_concat(hidden_b, strategy)
  enlarged_batch_size = tf.shape(hidden_a_large)[0]
  context = tf.distribute.get_replica_context()
  replica_id = (tf.cast(context.replica_id_in_sync_group, tf.int32)
                if strategy is not None and context is not None else 0)
  positives = tf.range(batch_size) + replica_id * batch_size
  labels = tf.one_hot(positives, enlarged_batch_size * 2)
  self_mask = tf.one_hot(positives, enlarged_batch_size)

  logits_aa = tf.matmul(hidden_a, hidden_a_large, transpose_b=True) / temperature
  logits_aa -= self_mask * LARGE_NUM
  logits_bb = tf.matmul(hidden_b, hidden_b_large, transpose_b=True) / temperature
  logits_bb -= self_mask * LARGE_NUM
  logits_ab = tf.matmul(hidden_a, hidden_b_large, transpose_b=True) / temperature
  logits_ba = tf.matmul(hidden_b, hidden_a_large, transpose_b=True) / temperature

  if memory is None:
    loss_a = tf.nn.softmax_cross_entropy_with_logits(
        labels, tf.concat([logits_ab, logits_aa], axis=1))
    loss_b = tf.nn.softmax_cross_entropy_with_logits(
        labels, tf.concat([logits_ba, logits_bb], axis=1))
  else:
    loss_a = _cross_entropy_with_memory(
        labels, tf.concat([logits_ab, logits_aa], axis=1), hidden_a,
        memory, temperature)
    loss_b = _cross_entropy_with_memory(
        labels, tf.concat([logits_ba, logits_bb], axis=1), hidden_b,
        memory, temperature)
  loss = tf.reduce_mean(loss_a) + tf.reduce_mean(loss_b)
  return loss, logits_ab, labels


def _cross_entropy_with_memory(labels, logits, anchors, memory, temperature):
  """Per-anchor cross-entropy over the in-batch candidates `logits` [n, 2N]
  (one-hot `labels`) and the memory's rows.

  The memory has K >> 2N rows, so its [n, K] block is never concatenated
  with the in-batch logits nor given dense labels (the positive is always
  in the batch): the loss is logaddexp(lse(in-batch), lse(memory)) − the
  positive's logit. The empty rows' −LARGE_NUM rides in the matmul as one
  more coordinate (1 for the anchors), so masking costs no pass over the
  block either.
  """
  negatives, filled = memory
  negatives = tf.stop_gradient(tf.cast(negatives, tf.float32))
  empty = tf.cast(tf.range(tf.shape(negatives)[0]) >= filled, tf.float32)
  negatives = tf.concat([negatives, -LARGE_NUM * empty[:, None]], axis=1)
  anchors = tf.concat([anchors / temperature,
                       tf.ones_like(anchors[:, :1])], axis=1)
  memory_logits = tf.matmul(anchors, negatives, transpose_b=True)
  log_normaliser = tf.reduce_logsumexp(tf.stack([
      tf.reduce_logsumexp(logits, axis=1),
      tf.reduce_logsumexp(memory_logits, axis=1)], axis=1), axis=1)
  return log_normaliser - tf.reduce_sum(labels * logits, axis=1)


def contrastive_metrics(logits_ab, labels):
  """Top-1 accuracy of the positive among view-b candidates, and the entropy
  of the softmax over them (both scalars)."""
  enlarged_batch_size = tf.shape(logits_ab)[1]
  accuracy = tf.reduce_mean(tf.cast(tf.equal(
      tf.argmax(labels[:, :enlarged_batch_size], axis=1),
      tf.argmax(logits_ab, axis=1)), tf.float32))
  probabilities = tf.nn.softmax(logits_ab)
  entropy = -tf.reduce_mean(tf.reduce_sum(
      probabilities * tf.math.log(probabilities + 1e-8), axis=-1))
  return accuracy, entropy


def supervised_loss(labels, logits):
  """Mean softmax cross-entropy. labels: int [n]; logits: [n, classes]."""
  logits = tf.cast(logits, tf.float32)
  return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      tf.cast(labels, tf.int32), logits))


def distillation_loss(student_logits, teacher_logits, temperature=1.0):
  """Mean over examples of −Σ_y P_T(y|x; τ) log P_S(y|x; τ).

  The teacher's softened distribution is a constant (stop_gradient). No τ²
  factor is applied, as in SimCLRv2's equation (3); with τ = 1 (the default
  and the paper's choice) the two conventions agree.

  Args:
    student_logits: [n, classes].
    teacher_logits: [n, classes].
    temperature: τ > 0.
  """
  student_logits = tf.cast(student_logits, tf.float32)
  teacher_logits = tf.cast(teacher_logits, tf.float32)
  teacher_probabilities = tf.stop_gradient(
      tf.nn.softmax(teacher_logits / temperature))
  return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
      teacher_probabilities, student_logits / temperature))


def combined_distillation_loss(student_logits, teacher_logits, temperature,
                               alpha, labeled_logits=None, labels=None):
  """(1 − α) · CE(labels) + α · distillation; the CE term only when α < 1."""
  return combined_distillation_terms(student_logits, teacher_logits,
                                     temperature, alpha, labeled_logits,
                                     labels)[0]


def combined_distillation_terms(student_logits, teacher_logits, temperature,
                                alpha, labeled_logits=None, labels=None):
  """combined_distillation_loss and its terms: (loss, {'distill_loss': …,
  'supervised_loss': … (α < 1 only)}), what the distill stage trains on."""
  distill = distillation_loss(student_logits, teacher_logits, temperature)
  loss = alpha * distill
  terms = {'distill_loss': distill}
  if alpha < 1:
    if labeled_logits is None or labels is None:
      raise ValueError('distill_alpha < 1 needs labeled logits and labels')
    terms['supervised_loss'] = supervised_loss(labels, labeled_logits)
    loss += (1 - alpha) * terms['supervised_loss']
  return loss, terms


# ---------------------------------------------------------------- stage objectives
# What each stage trains on (stages.Stage.objective names one): pure functions
# of one replica's model outputs, labels and inputs, returning
# (loss, {metric name: scalar}). The names each logs are derived from the
# function itself (metric_names), never listed a second time.
PROJECTION_KEY = model_lib.PROJ_HEAD_OUTPUT
LOGITS_KEY = model_lib.LOGITS_SUP


@dataclasses.dataclass(frozen=True)
class ObjectiveOptions:
  """The settings a stage objective reads (run.py's flags of the same names).

  strategy: the tf.distribute strategy whose replicas supply the contrastive
  negatives (None: this replica's batch only).
  """
  temperature: float = 0.1
  hidden_norm: bool = True
  distill_temperature: float = 1.0
  distill_alpha: float = 1.0
  strategy: Optional[tf.distribute.Strategy] = None


def accuracy(labels, logits):
  """Top-1 accuracy of logits [n, C] against int labels [n]."""
  return tf.reduce_mean(tf.cast(tf.equal(
      tf.cast(labels, tf.int64), tf.argmax(logits, -1)), tf.float32))


def contrastive_objective(outputs, labels, inputs, options):
  """NT-Xent on the projections of the two views (rows i and i + n), plus
  the linear-evaluation head's cross-entropy on both views when the model has
  one (it sits behind stop_gradient in the model).

  inputs: {'memory': (negatives [K, d], filled)} with SimCLRv2's memory of
  negatives, else {}.
  """
  memory = inputs.get('memory')
  loss, logits_ab, contrast_labels = contrastive_loss(
      outputs[PROJECTION_KEY], hidden_norm=options.hidden_norm,
      temperature=options.temperature, strategy=options.strategy,
      memory=memory)
  contrast_accuracy, entropy = contrastive_metrics(logits_ab, contrast_labels)
  logs = {'contrast_loss': loss, 'contrast_acc': contrast_accuracy,
          'contrast_entropy': entropy}
  if memory is not None:
    negatives, filled = memory
    logs['memory_fill'] = (tf.cast(filled, tf.float32) /
                           tf.cast(tf.shape(negatives)[0], tf.float32))
  if LOGITS_KEY in outputs:
    both_views_labels = tf.concat([labels, labels], axis=0)
    supervised = supervised_loss(both_views_labels, outputs[LOGITS_KEY])
    loss += supervised
    logs['supervised_loss'] = supervised
    logs['supervised_acc'] = accuracy(both_views_labels, outputs[LOGITS_KEY])
  return loss, logs


def supervised_objective(outputs, labels, inputs, options):
  """Cross-entropy of the supervised head (finetuning)."""
  del inputs, options
  logits = outputs[LOGITS_KEY]
  loss = supervised_loss(labels, logits)
  return loss, {'supervised_loss': loss, 'supervised_acc': accuracy(labels,
                                                                    logits)}


def distill_objective(outputs, labels, inputs, options):
  """(1 − α) · CE(labels) + α · τ-softened CE against the teacher.

  inputs: {'teacher_logits': [n, C]} for the first n rows (the unlabeled
  batch); with α < 1 the rows after them are the labeled batch of `labels`.
  """
  logits = outputs[LOGITS_KEY]
  teacher_logits = inputs['teacher_logits']
  num_unlabeled = tf.shape(teacher_logits)[0]
  student_logits = logits[:num_unlabeled]
  labeled = options.distill_alpha < 1
  labeled_logits = logits[num_unlabeled:] if labeled else None
  loss, logs = combined_distillation_terms(
      student_logits, teacher_logits, options.distill_temperature,
      options.distill_alpha, labeled_logits=labeled_logits,
      labels=labels if labeled else None)
  logs['teacher_agreement'] = accuracy(tf.argmax(teacher_logits, -1),
                                       student_logits)
  if labeled:
    logs['supervised_acc'] = accuracy(labels, labeled_logits)
  return loss, logs


STAGE_OBJECTIVES = {
    'contrastive': contrastive_objective,
    'supervised': supervised_objective,
    'distill': distill_objective,
}


def metric_names(objective, options, num_classes, projection_dim=128,
                 memory_size=0):
  """The metric names `objective` logs for these options and model outputs
  (num_classes 0: no supervised head; memory_size > 0: a memory of
  negatives), found by tracing it once on placeholders: metrics must exist
  before the training step is traced, and this way they cannot disagree with
  what the objective returns."""
  outputs = {PROJECTION_KEY: tf.TensorSpec([None, projection_dim], tf.float32)}
  if num_classes:
    outputs[LOGITS_KEY] = tf.TensorSpec([None, num_classes], tf.float32)
  inputs = {}
  if memory_size:
    inputs['memory'] = (tf.TensorSpec([memory_size, projection_dim],
                                      tf.float32),
                        tf.TensorSpec([], tf.int32))
  if objective is distill_objective:
    inputs['teacher_logits'] = tf.TensorSpec([None, num_classes], tf.float32)
  local = dataclasses.replace(options, strategy=None)
  names = []

  def trace(outputs, labels, inputs):
    _, logs = objective(outputs, labels, inputs, local)
    names.extend(logs)
    return tf.constant(0)

  tf.function(trace, autograph=False).get_concrete_function(
      outputs, tf.TensorSpec([None], tf.int32), inputs)
  return names

"""Evaluation of a trained network: its supervised head and its encoder.

- `evaluate_head`: top-1 / top-5 of the supervised head over an input (and,
  in distillation, how often it agrees with the teacher), in inference mode,
  on the strategy's replicas.
- `knn_top_1`: the encoder's weighted kNN accuracy (knn.py): the bank is a
  labeled training input, the queries the evaluation input. Labels are read
  here only; they never reach a training loss.
- `write_result`: result.json (atomically) and the eval/ TensorBoard scalars.
- `evaluate_run`: all of it for a run.py Config's model (--mode=eval and the
  end of train_then_eval).
"""

import json
import os
import weakref

from absl import logging
import tensorflow as tf
import tf_keras

from tf_simclr import checkpoints
from tf_simclr import data
from tf_simclr import knn
from tf_simclr import model as model_lib
from tf_simclr import phases as phases_lib

SUMMARY_KEYS = ('label_top_1_accuracy', 'label_top_5_accuracy', 'knn_top_1')


def evaluate_head(model, strategy, eval_input, num_classes, teacher=None,
                  eval_steps=0, phases=None):
  """{'label_top_1_accuracy', 'label_top_5_accuracy', 'num_examples'} (plus
  'teacher_agreement' with a teacher) of `model`'s supervised head over
  `eval_input` (data.InputConfig), its first `eval_steps` batches when > 0.
  phases: a phases.PhaseTimer to record the input, trace and pass in."""
  with phases_lib.timed(phases, 'eval_input'):
    dataset = data.build_distributed_dataset(strategy, eval_input)
  # Without a teacher, the metrics and traced loops are kept while the model
  # lives: a model evaluated again, e.g. by a later run that took it over, is
  # not traced again.
  key = (id(strategy), num_classes)
  kept = _KEPT.setdefault(model, {}) if teacher is None else {}
  if key not in kept:
    kept[key] = _eval_functions(model, strategy, num_classes, teacher)
  metrics, eval_loop, eval_all = kept[key]
  top_1, top_5, agreement, count = metrics
  for metric in metrics:
    metric.reset_state()
  if eval_steps:
    function, args = eval_loop, (iter(dataset), tf.constant(eval_steps))
  else:
    function, args = eval_all, (dataset,)
  with phases_lib.timed(phases, 'eval_trace'):
    function.get_concrete_function(*args)
  with phases_lib.timed(phases, 'eval_pass'):
    function(*args)
  result = {
      'label_top_1_accuracy': float(top_1.result()),
      'label_top_5_accuracy': float(top_5.result()),
      'num_examples': int(count.result()),
  }
  if teacher is not None:
    result['teacher_agreement'] = float(agreement.result())
  return result


# model -> {key: (metrics, eval_loop, eval_all)}; the functions hold the
# model weakly, so an entry goes when its model does.
_KEPT = weakref.WeakKeyDictionary()


def _eval_functions(model, strategy, num_classes, teacher):
  """(metrics, eval_loop, eval_all) of evaluate_head for `model`."""
  top_k = min(5, num_classes)
  with strategy.scope():
    top_1 = tf_keras.metrics.SparseCategoricalAccuracy('top_1')
    top_5 = tf_keras.metrics.SparseTopKCategoricalAccuracy(top_k, 'top_5')
    agreement = tf_keras.metrics.Mean('teacher_agreement')
    count = tf_keras.metrics.Sum('count')

  model_ref = weakref.ref(model)

  def update(images, labels):
    logits = model_ref()(images, training=False)[model_lib.LOGITS_SUP]
    top_1.update_state(labels, logits)
    top_5.update_state(labels, logits)
    count.update_state(tf.cast(tf.shape(labels)[0], tf.float32))
    if teacher is not None:
      agreement.update_state(tf.cast(tf.equal(
          tf.argmax(logits, -1), tf.argmax(teacher(images), -1)), tf.float32))
    return tf.constant(True)

  def replica_eval(images, labels):
    # At the end of a split a replica may get an empty batch (the other has
    # the last one), which oneDNN's CPU convolution rejects: it adds nothing.
    # Inference runs no cross-replica op, so replicas may take either branch.
    tf.cond(tf.shape(images)[0] > 0, lambda: update(images, labels),
            lambda: tf.constant(False))

  @tf.function
  def eval_loop(iterator, num_steps):
    for _ in tf.range(num_steps):
      images, labels = next(iterator)
      strategy.run(replica_eval, args=(images, labels))

  @tf.function
  def eval_all(dataset):
    for images, labels in dataset:
      strategy.run(replica_eval, args=(images, labels))

  return (top_1, top_5, agreement, count), eval_loop, eval_all


def knn_top_1(model, strategy, bank_input, query_input, num_classes,
              bank_size=None, query_limit=None):
  """Weighted kNN top-1 (k 200, temperature 0.1, cosine) of `model`'s
  final_avg_pool features in inference mode: at most `bank_size` examples of
  `bank_input` as the bank, at most `query_limit` of `query_input` as the
  queries (data.InputConfig, both read whole by every worker)."""
  bank = knn.extract_features(model, _unsharded(data.build_dataset(bank_input)),
                              strategy, max_examples=bank_size)
  queries = knn.extract_features(
      model, _unsharded(data.build_dataset(query_input)), strategy,
      max_examples=query_limit)
  return knn.knn_accuracy(*bank, *queries, num_classes=num_classes)


def _unsharded(dataset):
  """Every worker reads the whole dataset (each computes the kNN itself)."""
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.OFF)
  return dataset.with_options(options)


def write_json(path, payload):
  """Writes `payload` as JSON through a temporary file and a rename: a
  reader never sees half a file."""
  temporary = path + '.tmp'
  with tf.io.gfile.GFile(temporary, 'w') as f:
    json.dump(payload, f, indent=1, sort_keys=True)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def write_result(model_dir, result, eval_name=''):
  """model_dir/result.json (result_<eval_name>.json) and eval/<key> scalars
  at result['global_step']."""
  name = f'result_{eval_name}' if eval_name else 'result'
  write_json(os.path.join(model_dir, name + '.json'), result)
  writer = tf.summary.create_file_writer(model_dir)
  with writer.as_default(step=result['global_step']):
    for key in SUMMARY_KEYS:
      if key in result:
        tf.summary.scalar(f'eval/{key}', result[key])
  writer.flush()


# ---------------------------------------------------------------- a run's evaluation
def eval_input(config):
  """--eval_split in inference order, center crops, every example."""
  return data.InputConfig.of_run(
      config, split=config.eval_split, augmentation='eval',
      batch_size=config.eval_batch_size, subset='all',
      is_training=False).replace(label_fraction=1.0)


def encoder_knn(config, model, strategy, num_classes):
  """knn_top_1 of a run: the bank is the train split's labeled images
  (--label_fraction's subset, at most --knn_bank_size), the queries the eval
  split (its first --eval_steps batches when set)."""
  bank_input = data.InputConfig.of_run(
      config, split=config.train_split, augmentation='eval',
      batch_size=config.eval_batch_size, subset='labeled',
      is_training=False).replace(cache=False)
  return knn_top_1(
      model, strategy, bank_input, eval_input(config).replace(cache=False),
      num_classes, bank_size=config.knn_bank_size,
      query_limit=(config.eval_steps * config.eval_batch_size
                   if config.eval_steps else None))


def evaluate_run(config, model, strategy, num_classes, *, global_step,
                 knn_monitor=False, teacher=None, is_chief=True,
                 checkpoint_path=None, require_checkpoint=False, phases=None):
  """Top-1 / top-5 of the supervised head on --eval_split (with a teacher,
  the agreement; with knn_monitor, the encoder's kNN); writes result.json on
  the chief. Returns the result dict, or None when there is nothing to
  evaluate.

  Args:
    checkpoint_path: weights to evaluate (default: model_dir's latest; its
      global step is read into `global_step`).
    require_checkpoint: raise CheckpointError when there is none.
    phases: a phases.PhaseTimer recording where the seconds go.
  """
  if not (model.has_supervised_head or knn_monitor):
    logging.info('No supervised head: skipping evaluation.')
    return None
  if checkpoint_path is None:
    checkpoint_path = checkpoints.latest_checkpoint(config.model_dir)
  if require_checkpoint and not checkpoint_path:
    raise checkpoints.CheckpointError(
        f'no checkpoint to evaluate in {config.model_dir}')
  if checkpoint_path:
    with phases_lib.timed(phases, 'eval_restore'):
      tf.train.Checkpoint(model=model, global_step=global_step).read(
          checkpoint_path).expect_partial()
  result = {'global_step': int(global_step.numpy()),
            'eval_split': config.eval_split, 'train_mode': config.train_mode}
  if model.has_supervised_head:
    result.update(evaluate_head(model, strategy, eval_input(config),
                                num_classes, teacher=teacher,
                                eval_steps=config.eval_steps, phases=phases))
  if knn_monitor:
    with phases_lib.timed(phases, 'knn'):
      result['knn_top_1'] = encoder_knn(config, model, strategy, num_classes)
  logging.info('eval on %s at step %d: %s', config.eval_split,
               result['global_step'], ' '.join(
                   f'{name}={result[name]:.4f}' for name in (
                       'label_top_1_accuracy', 'label_top_5_accuracy',
                       'knn_top_1', 'teacher_agreement') if name in result))
  if is_chief:
    with phases_lib.timed(phases, 'eval_write'):
      write_result(config.model_dir, result, config.eval_name)
  return result

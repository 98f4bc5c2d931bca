"""The training and evaluation loop for every stage, under a tf.distribute strategy.

Sections: setup (data, model, optimizer, checkpoint) · restore · the replica
step and its objectives · the loop · evaluation. Several steps run inside one
tf.function call (`steps_per_loop`), so the host is touched once per loop:
for the progress line, summaries, checkpoints and the NaN check.

Reliability (tests/test_faults.py shows each):
- SIGTERM / SIGINT set a flag. The loop call runs in a helper thread, so the
  main thread sees the signal at once and raises a stop variable that the
  in-graph loop checks before every step: the call ends after the step in
  flight, however large steps_per_loop is. Then a checkpoint of that step is
  written and Preempted is raised (run.py exits 128 + signal number). A signal
  during a checkpoint write only sets the flag: the write completes first.
- A step whose loss or gradients are not finite stops the loop at once;
  TrainingError names it and nothing is saved. Weights are checked finite
  before every save too, so no checkpoint ever holds a NaN or Inf.
- A save that fails (disk full, permissions) removes its partial files and
  raises TrainingError; earlier checkpoints are untouched.
- Resuming takes the newest checkpoint that verifies and falls back to the one
  before with a warning (checkpoints.restore_latest). With --deterministic,
  the input pipeline replays and skips the batches already trained on, so an
  interrupted and resumed run ends with the same weights as an uninterrupted
  one (without it, the resumed run draws a fresh shuffle).
"""

import contextlib
import dataclasses
import json
import os
import random
import signal
import tempfile
import threading
import time

from absl import logging
import tensorflow as tf
import tf_keras

from tf_simclr import augment
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import data
from tf_simclr import distribute
from tf_simclr import knn
from tf_simclr import lock as lock_lib
from tf_simclr import memory as memory_lib
from tf_simclr import model as model_lib
from tf_simclr import objectives
from tf_simclr import optim
from tf_simclr import stages
from tf_simclr import teacher as teacher_lib


class TrainingError(RuntimeError):
  """Training cannot go on (NaN loss, preemption); the message says why."""


class Preempted(TrainingError):
  """SIGTERM or SIGINT arrived; a checkpoint of the current step was written."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.signum = signum


# ---------------------------------------------------------------- objectives
# Each returns (loss, {metric name: scalar}) for one replica's batch.
def _contrastive_objective(trainer, outputs, labels, extra):
  """extra: 'memory' (negatives [K, d], filled rows) with --memory_size."""
  config = trainer.config
  loss, logits_ab, contrast_labels = objectives.contrastive_loss(
      outputs[model_lib.PROJ_HEAD_OUTPUT], hidden_norm=config.hidden_norm,
      temperature=config.temperature, strategy=trainer.strategy,
      memory=extra.get('memory'))
  accuracy, entropy = objectives.contrastive_metrics(logits_ab, contrast_labels)
  logs = {'contrast_loss': loss, 'contrast_acc': accuracy,
          'contrast_entropy': entropy}
  if 'memory' in extra:
    logs['memory_fill'] = trainer.memory.fill_fraction()
  if model_lib.LOGITS_SUP in outputs:
    # Linear evaluation on both views, behind stop_gradient in the model.
    both_views_labels = tf.concat([labels, labels], axis=0)
    supervised = objectives.supervised_loss(both_views_labels,
                                            outputs[model_lib.LOGITS_SUP])
    loss += supervised
    logs['supervised_loss'] = supervised
    logs['supervised_acc'] = _accuracy(both_views_labels,
                                       outputs[model_lib.LOGITS_SUP])
  return loss, logs


def _supervised_objective(trainer, outputs, labels, extra):
  del trainer, extra
  logits = outputs[model_lib.LOGITS_SUP]
  loss = objectives.supervised_loss(labels, logits)
  return loss, {'supervised_loss': loss,
                'supervised_acc': _accuracy(labels, logits)}


def _distill_objective(trainer, outputs, labels, extra):
  """extra: teacher_logits [n, C] for the first n (unlabeled) rows; with
  α < 1 the rows after them are the labeled batch."""
  config = trainer.config
  logits = outputs[model_lib.LOGITS_SUP]
  teacher_logits = extra['teacher_logits']
  num_unlabeled = tf.shape(teacher_logits)[0]
  student_logits = logits[:num_unlabeled]
  labeled_logits = logits[num_unlabeled:] if config.distill_alpha < 1 else None
  loss, logs = objectives.combined_distillation_terms(
      student_logits, teacher_logits, config.distill_temperature,
      config.distill_alpha, labeled_logits=labeled_logits,
      labels=labels if labeled_logits is not None else None)
  logs['teacher_agreement'] = _accuracy(tf.argmax(teacher_logits, -1),
                                        student_logits)
  if labeled_logits is not None:
    logs['supervised_acc'] = _accuracy(labels, labeled_logits)
  return loss, logs


OBJECTIVES = {
    'contrastive': _contrastive_objective,
    'supervised': _supervised_objective,
    'distill': _distill_objective,
}


def _accuracy(labels, logits):
  return tf.reduce_mean(tf.cast(tf.equal(
      tf.cast(labels, tf.int64), tf.argmax(logits, -1)), tf.float32))


def blurs_in_training_step(augmentation, use_blur, image_size, placement,
                           on_accelerator):
  """True when pretraining's blur runs in the training step rather than in
  the input pipeline: --blur_placement=device, or auto on a GPU or TPU (and
  never at <= 32 px, where the paper does not blur)."""
  return (augmentation == 'pretrain' and use_blur and
          image_size > augment.SMALL_IMAGE_SIZE and
          (placement == 'device' or (placement == 'auto' and on_accelerator)))


# --precision=bfloat16 on a CPU with AVX-512 BF16 / AMX, measured with the
# benchmark on a 2-core AMD Zen 4: 1.6-1.74x float32's speed at width 1
# (ResNet-18/34/50, 32 px), 0.46x at width 0.125 (ResNet-18, 28 px, batch
# 256), where oneDNN's bfloat16 kernels lose on 8-64 channels. Widths in
# between were not measured; the hint is given only where it was faster.
BFLOAT16_FASTER_FROM_WIDTH = 1.0


def _set_precision(precision):
  policy = {'float32': 'float32', 'bfloat16': 'mixed_bfloat16',
            'float16': 'mixed_float16'}[precision]
  tf_keras.mixed_precision.set_global_policy(policy)


# ---------------------------------------------------------------- trainer
class Trainer:
  """One stage of SimCLRv2 on one model_dir.

  Args:
    config: a validated config.Config.
    strategy: the tf.distribute strategy to run under.
  """

  def __init__(self, config, strategy):
    self.config = config
    self.strategy = strategy
    self.stage = stages.STAGES[config.train_mode]
    self.is_chief = distribute.is_chief(strategy)
    self.info = data.get_info(config.dataset, config.data_dir)
    self.num_classes = config.num_classes or self.info.num_classes
    self.architecture = dict(config.architecture(),
                             num_classes=self.num_classes)
    self.teacher = None
    self._stop_signal = None
    self._stop_raised = False
    self._last_saved_step = None
    self._all_finite = None

    # Pretraining's blur in the training step instead of the input pipeline:
    # the same views, but the accelerator does the work, not the host CPU.
    self.blur_on_device = blurs_in_training_step(
        self.stage.augmentation, config.use_blur, config.image_size,
        config.blur_placement, distribute.runs_on_accelerator(strategy))
    # Stateless blur draws: seeded by (this, step, replica).
    self._blur_seed = (config.seed if config.deterministic
                       else random.randrange(2**31))
    self.train_input = self._input_config(
        split=config.train_split, augmentation=self.stage.augmentation,
        batch_size=config.train_batch_size, subset=self.stage.train_subset,
        is_training=True)
    if self.blur_on_device:
      self.train_input = self._replace_input(self.train_input, use_blur=False)
    if self.stage.needs_teacher and config.unlabeled_split:
      self.train_input = self._replace_input(
          self.train_input, split=config.unlabeled_split, subset='all')
    self.labeled_input = None
    if self.stage.needs_teacher and config.distill_alpha < 1:
      self.labeled_input = self._input_config(
          split=config.train_split, augmentation='finetune',
          batch_size=config.train_batch_size, subset='labeled',
          is_training=True)
    self.num_train_examples = data.num_examples(self.train_input)
    self.total_steps = optim.total_train_steps(
        config.train_steps, config.train_epochs, self.num_train_examples,
        config.train_batch_size)
    steps_per_epoch = max(
        1, self.num_train_examples // config.train_batch_size)
    self.checkpoint_interval = config.checkpoint_steps or max(
        1, config.checkpoint_epochs * steps_per_epoch)
    self.steps_per_loop = config.steps_per_loop or min(
        self.checkpoint_interval, 100)

    _set_precision(config.precision)
    with strategy.scope():
      self.model = model_lib.build_model(
          self.num_classes if self._wants_supervised_head() else 0,
          # Synchronised BN changes nothing on one replica but rules out the
          # fused kernel; the variables are the same either way.
          **dict(config.model_kwargs(), global_bn=(
              config.global_bn and strategy.num_replicas_in_sync > 1)),
          fine_tune_after_block=(config.fine_tune_after_block
                                 if self.stage.freezes_blocks else -1),
          supervised_training=self.stage.supervised_training,
          zero_init_logits_layer=config.zero_init_logits_layer)
      peak = optim.scaled_learning_rate(config.learning_rate,
                                        config.train_batch_size,
                                        config.learning_rate_scaling)
      warmup = optim.steps_from_epochs(config.warmup_epochs,
                                       self.num_train_examples,
                                       config.train_batch_size)
      self.learning_rate = optim.WarmUpAndCosineDecay(peak, warmup,
                                                      self.total_steps)
      self.optimizer = optim.build_optimizer(
          config.optimizer, self.learning_rate, self.model,
          momentum=config.momentum, weight_decay=config.weight_decay)
      if config.precision == 'float16':
        self.optimizer = tf_keras.mixed_precision.LossScaleOptimizer(
            self.optimizer)
      self.global_step = self.optimizer.iterations
      # SimCLRv2's memory of negatives: a momentum copy of the network and
      # its buffer, checkpointed with the model.
      self.memory = (memory_lib.build_memory(self.model, config, strategy)
                     if config.memory_size and self.stage.memory_negatives
                     else None)
      extra_state = {'memory': self.memory} if self.memory is not None else {}
      self.checkpoint = tf.train.Checkpoint(
          model=self.model, optimizer=self.optimizer,
          global_step=self.global_step, **extra_state)
      self.metrics = {name: tf_keras.metrics.Mean(name)
                      for name in self._metric_names()}
      # First step whose loss or gradients were not finite (-1: none yet).
      self.nonfinite_step = tf.Variable(
          -1, dtype=tf.int64, trainable=False,
          synchronization=tf.VariableSynchronization.ON_WRITE,
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      if self.stage.needs_teacher:
        self.teacher = teacher_lib.load_teacher(config.teacher_checkpoint,
                                                self.num_classes)
    # Raised by the main thread on SIGTERM/SIGINT; read before every step.
    self.stop_requested = tf.Variable(False, trainable=False,
                                      name='stop_requested')
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, directory=self._checkpoint_dir(),
        max_to_keep=config.keep_checkpoint_max, step_counter=self.global_step)

  # -------------------------------------------------------------- inputs
  def _input_config(self, **kwargs):
    config = self.config
    return data.InputConfig(
        dataset=config.dataset, data_dir=config.data_dir,
        image_size=config.image_size,
        color_jitter_strength=config.color_jitter_strength,
        color_jitter_version=config.color_jitter_version,
        use_blur=config.use_blur, label_fraction=config.label_fraction,
        label_seed=config.label_seed, cache=config.cache_dataset,
        deterministic=config.deterministic, seed=config.seed,
        skip_bad_images=config.skip_bad_images, **kwargs)

  @staticmethod
  def _replace_input(input_config, **changes):
    return dataclasses.replace(input_config, **changes)

  def _wants_supervised_head(self):
    return (self.stage.supervised_training or
            self.config.lineareval_while_pretraining)

  def _checkpoint_dir(self):
    """model_dir on the chief; a throw-away directory on other workers
    (MultiWorkerMirroredStrategy needs every worker to take part in a save)."""
    if self.is_chief:
      return self.config.model_dir
    return tempfile.mkdtemp(prefix='tf_simclr_worker_')

  # -------------------------------------------------------------- restore
  def restore(self):
    """Resume from model_dir > start from --checkpoint > scratch. Returns
    a word saying which."""
    config_lib.check_saved_architecture(self.config.model_dir,
                                        self.architecture)
    if self.memory is not None:
      memory_lib.check_resumable(self.memory, self.config.model_dir)
    how = self._restore_weights()
    if self.memory is not None and not self.memory.initialized.numpy():
      # Started now (or resumed from a run without memory): the memory
      # network starts as a copy of the trained network.
      self.memory.copy_trained(self.strategy)
    return how

  def _restore_weights(self):
    latest = checkpoints.restore_latest(self.checkpoint, self.config.model_dir)
    if latest:
      self._last_saved_step = int(self.global_step.numpy())
      logging.info('Resuming from %s at step %d', latest,
                   self._last_saved_step)
      return 'resumed'
    if self.config.checkpoint == config_lib.SCRATCH_CHECKPOINT:
      logging.info('--checkpoint=scratch: training from a random '
                   'initialisation')
      return 'scratch'
    if self.config.checkpoint:
      prefix = checkpoints.restore_initial_weights(
          self.model, self.config.checkpoint, include_supervised_head=False)
      logging.info('Starting from the weights of %s', prefix)
      return 'initialised'
    if self.stage.needs_initial_weights:
      raise config_lib.ConfigError(
          f'--train_mode={self.stage.name} needs --checkpoint (a pretrain '
          f'model_dir or checkpoint) when --model_dir has no checkpoint')
    return 'scratch'

  # -------------------------------------------------------------- step
  def _metric_names(self):
    """What the stage's objective logs (metrics are made before tracing:
    variables cannot be created inside a replica context)."""
    names = {'contrastive': ['contrast_loss', 'contrast_acc',
                             'contrast_entropy'],
             'supervised': ['supervised_loss', 'supervised_acc'],
             'distill': ['distill_loss', 'teacher_agreement']}[
                 self.stage.objective]
    supervised_on_the_side = (
        (self.stage.objective == 'contrastive' and
         self._wants_supervised_head()) or
        (self.stage.objective == 'distill' and self.config.distill_alpha < 1))
    if supervised_on_the_side:
      names += ['supervised_loss', 'supervised_acc']
    if self.memory is not None:
      names.append('memory_fill')
    return names + ['total_loss', 'weight_decay']

  def replica_step(self, batch, labeled_batch=None):
    """One replica's training step (replica context): forward, loss,
    gradients, optimizer update, metrics. Returns the memory network's
    projections of the global batch [2N, d] when there is a memory, else a
    dummy scalar."""
    images, labels = batch
    extra = {}
    if self.stage.views > 1:
      # [b, H, W, 3·V] -> [V·b, H, W, 3]: view v of every image, then v + 1.
      images = tf.concat(tf.split(images, self.stage.views, axis=-1), axis=0)
    if self.blur_on_device:
      images = self._device_blur(images)
    if self.teacher is not None:
      extra['teacher_logits'] = tf.stop_gradient(self.teacher(images))
    memory_keys = tf.zeros([])
    if self.memory is not None:
      extra['memory'] = self.memory.negatives()
      memory_keys = self.memory.gather_views(self.memory.project(images),
                                             self.strategy)
    if labeled_batch is not None:
      images = tf.concat([images, labeled_batch[0]], axis=0)
      labels = labeled_batch[1]
    variables = self.model.trainable_variables
    loss_scaled = isinstance(self.optimizer,
                             tf_keras.mixed_precision.LossScaleOptimizer)
    with tf.GradientTape() as tape:
      outputs = self.model(images, training=True)
      loss, logs = OBJECTIVES[self.stage.objective](self, outputs, labels,
                                                    extra)
      weight_decay = optim.weight_decay_loss(
          self.model, self.config.optimizer, self.config.weight_decay)
      loss += weight_decay
      # Gradients are summed over replicas: average by scaling the loss.
      scaled_loss = loss / self.strategy.num_replicas_in_sync
      if loss_scaled:
        scaled_loss = self.optimizer.get_scaled_loss(scaled_loss)
    gradients = tape.gradient(scaled_loss, variables)
    if loss_scaled:
      gradients = self.optimizer.get_unscaled_gradients(gradients)
    pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
    finite = tf.math.is_finite(loss)
    # With float16 loss scaling, gradients that overflow are the scaler's
    # business: it skips that update and lowers the scale.
    if pairs and not loss_scaled:
      finite = tf.logical_and(finite, tf.math.is_finite(
          tf.linalg.global_norm([g for g, _ in pairs])))
    step = self.global_step + 0
    self.optimizer.apply_gradients(pairs)
    self.nonfinite_step.assign(tf.where(
        tf.logical_and(tf.logical_not(finite), self.nonfinite_step < 0),
        step, self.nonfinite_step))
    logs.update(total_loss=loss, weight_decay=weight_decay)
    for name, value in logs.items():
      self.metrics[name].update_state(value)
    return memory_keys

  def train_step(self, batches, step_fn=None):
    """One training step of the global batch, in cross-replica context
    inside a tf.function: the replica step on every replica, then the
    memory's moving average and push (after the optimizer update)."""
    keys = self.strategy.run(step_fn or self.replica_step, args=tuple(batches))
    if self.memory is not None:
      # Every replica holds the same gathered projections: take the first's.
      self.memory.update(self.strategy.experimental_local_results(keys)[0],
                         self.strategy)

  def _device_blur(self, images):
    """augment.batch_random_blur with a stateless seed that differs for
    every step and replica."""
    replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
    step = tf.cast(self.global_step, tf.int64)
    seed = tf.stack([
        tf.constant(self._blur_seed, tf.int64),
        step * self.strategy.num_replicas_in_sync +
        tf.cast(replica_id, tf.int64)])
    return augment.batch_random_blur(images, self.config.image_size,
                                     seed=seed)

  def _multi_worker(self):
    in_multi_worker_mode = getattr(self.strategy.extended,
                                   '_in_multi_worker_mode', None)
    return bool(in_multi_worker_mode and in_multi_worker_mode())

  def make_train_loop(self):
    """One tf.function running up to `num_steps` steps (a tensor: no
    retrace). It stops early, before the next step, after a non-finite step
    or when `stop_requested` is raised (a signal). With several workers the
    stop flag is only checked between calls: a worker leaving the loop alone
    would leave the others waiting in a collective."""
    # A nested tf.function around the replica step breaks MirroredStrategy's
    # merge calls inside the tf.range loop; only XLA needs one.
    step_fn = (tf.function(self.replica_step, jit_compile=True)
               if self.config.jit_compile else self.replica_step)
    train_step = self.train_step
    nonfinite_step = self.nonfinite_step
    stop_requested = (None if self._multi_worker() else self.stop_requested)

    @tf.function
    def train_loop(iterators, num_steps):
      for _ in tf.range(num_steps):
        stop = nonfinite_step >= 0
        if stop_requested is not None:
          stop = tf.logical_or(stop, stop_requested)
        if stop:
          break
        batches = [next(iterator) for iterator in iterators]
        train_step(batches, step_fn)

    return train_loop

  def _run_loop(self, train_loop, iterators, num_steps):
    """Runs train_loop in a helper thread while the main thread waits,
    so a signal handler runs at once and can raise `stop_requested`."""
    outcome = {}

    def target():
      try:
        train_loop(iterators, tf.constant(num_steps))
      except BaseException as error:  # pylint: disable=broad-except
        outcome['error'] = error

    thread = threading.Thread(target=target, name='train_loop', daemon=True)
    thread.start()
    while thread.is_alive():
      thread.join(0.1)
      if self._stop_signal is not None and not self._stop_raised:
        self.stop_requested.assign(True)
        self._stop_raised = True
    if 'error' in outcome:
      raise outcome['error']

  # -------------------------------------------------------------- loop
  def _install_signal_handlers(self):
    """SIGTERM/SIGINT only record the signal (checked between and inside loop
    calls); returns the previous handlers for _restore_signal_handlers."""
    def handler(signum, frame):
      del frame
      if self._stop_signal is None:
        self._stop_signal = signum
        logging.warning('%s received: stopping after the current step and '
                        'saving a checkpoint.', signal.Signals(signum).name)
      else:
        logging.warning('%s received: already stopping.',
                        signal.Signals(signum).name)
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
      try:
        previous[signum] = signal.signal(signum, handler)
        signal.siginterrupt(signum, False)  # Restart interrupted writes.
      except ValueError:  # Not the main thread.
        pass
    return previous

  @staticmethod
  def _restore_signal_handlers(previous):
    for signum, handler in previous.items():
      signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

  def _distributed_dataset(self, input_config, skip_steps):
    """The distributed training input; with `skip_steps`, without the batches
    of the first `skip_steps` steps (a deterministic resume replays them)."""
    if not skip_steps:
      return data.build_distributed_dataset(self.strategy, input_config)

    def dataset_fn(input_context):
      replicas_per_pipeline = max(1, input_context.num_replicas_in_sync //
                                  input_context.num_input_pipelines)
      return data.build_dataset(input_config, input_context).skip(
          skip_steps * replicas_per_pipeline)
    return self.strategy.distribute_datasets_from_function(dataset_fn)

  # -------------------------------------------------------------- saving
  def _weights_finite(self):
    """True when every float variable of the model and optimizer is finite."""
    if self._all_finite is None:
      variables = list(self.model.variables)
      optimizer_variables = getattr(self.optimizer, 'variables', [])
      if callable(optimizer_variables):
        optimizer_variables = optimizer_variables()
      variables += list(optimizer_variables)
      variables = [v for v in variables if v.dtype.is_floating]

      @tf.function
      def all_finite():
        return tf.reduce_all(tf.stack(
            [tf.reduce_all(tf.math.is_finite(v)) for v in variables]))
      self._all_finite = all_finite
    return bool(self._all_finite())

  def _save(self, step):
    """Writes the checkpoint of `step` unless it exists; returns its path.

    Never rewrites an existing checkpoint in place, never writes non-finite
    weights, and a failed write leaves earlier checkpoints as they were.
    """
    if self._last_saved_step == step:
      return self.manager.latest_checkpoint
    if not self._weights_finite():
      raise TrainingError(
          f'weights became NaN/Inf by step {step}; stopped without saving, '
          f'last good checkpoint: {self.manager.latest_checkpoint or "none"}')
    try:
      path = self.manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as error:
      prefix = os.path.join(self.manager.directory, f'ckpt-{step}')
      checkpoints.remove_partial_checkpoint(prefix)
      message = config_lib.first_line(error)
      raise TrainingError(
          f'could not write the checkpoint of step {step} to '
          f'{self.manager.directory}: {message}; earlier checkpoints are '
          f'intact (latest: {self.manager.latest_checkpoint or "none"})'
      ) from error
    self._last_saved_step = step
    return path

  def train(self):
    """Trains to `total_steps`, checkpointing; returns the last metrics."""
    self._stop_signal = None
    self.stop_requested.assign(False)
    # One training process per model_dir (the chief's; other workers write
    # throw-away checkpoints elsewhere).
    lock = (lock_lib.ModelDirLock(self.config.model_dir) if self.is_chief
            else contextlib.nullcontext())
    with lock:
      previous_handlers = self._install_signal_handlers()
      try:
        return self._train()
      finally:
        self._restore_signal_handlers(previous_handlers)

  def _train(self):
    config = self.config
    self._stop_raised = False
    if self.is_chief:
      config_lib.write_architecture(config.model_dir, self.architecture, {
          'train_mode': config.train_mode, 'dataset': config.dataset,
          'class_names': list(self.info.class_names)})
    how = self.restore()
    step = int(self.global_step.numpy())
    skip_steps = step if config.deterministic else 0
    if skip_steps:
      logging.info('Deterministic resume: replaying and skipping the input '
                   'of the %d steps already trained.', skip_steps)
    datasets = [self._distributed_dataset(self.train_input, skip_steps)]
    if self.labeled_input is not None:
      datasets.append(self._distributed_dataset(self.labeled_input,
                                                skip_steps))
    iterators = [iter(dataset) for dataset in datasets]
    train_loop = self.make_train_loop()
    writer = (tf.summary.create_file_writer(config.model_dir)
              if self.is_chief else tf.summary.create_noop_writer())

    logging.info('%s: %s at step %d of %d (%d examples, global batch %d, '
                 '%d replicas)', config.train_mode, how, step,
                 self.total_steps, self.num_train_examples,
                 config.train_batch_size, self.strategy.num_replicas_in_sync)
    if (config.precision == 'float32' and
        config.width_multiplier >= BFLOAT16_FASTER_FROM_WIDTH and
        not distribute.runs_on_accelerator(self.strategy) and
        distribute.cpu_has_fast_bfloat16()):
      logging.info('This CPU has bfloat16 instructions: at this width '
                   '--precision=bfloat16 trained 1.6-1.7x faster on a 2-core '
                   'AMD Zen 4 (docs/performance.md; check yours with '
                   'python -m tf_simclr.benchmark --variant=precision=bfloat16).')
    if self.is_chief and step == 0:
      self._write_augmented_views(writer)
    results = {}
    started = time.time()
    first_step = step
    # Steps between kNN monitor passes (0: only at evaluation).
    knn_every = config.knn_every_steps if self.stage.knn_monitor else 0
    while step < self.total_steps and self._stop_signal is None:
      until_checkpoint = self.checkpoint_interval - step % self.checkpoint_interval
      num_steps = min(self.steps_per_loop, self.total_steps - step,
                      until_checkpoint)
      if knn_every:
        num_steps = min(num_steps, knn_every - step % knn_every)
      loop_started = time.time()
      self._run_loop(train_loop, iterators, num_steps)
      bad_step = int(self.nonfinite_step.numpy())
      if bad_step >= 0:
        raise TrainingError(
            f'loss or gradients became NaN/Inf at step {bad_step + 1}; '
            f'stopped without saving, last good checkpoint: '
            f'{self.manager.latest_checkpoint or "none"}')
      previous_step, step = step, int(self.global_step.numpy())
      if step > previous_step:
        elapsed = time.time() - loop_started
        results = {name: float(metric.result())
                   for name, metric in self.metrics.items()}
        results['learning_rate'] = float(self.learning_rate(step))
        results['images_per_sec'] = ((step - previous_step) *
                                     config.train_batch_size /
                                     max(elapsed, 1e-9))
        self._log_progress(step, results, started, first_step)
        with writer.as_default(step=step):
          for name, value in results.items():
            tf.summary.scalar(f'train/{name}', value)
        for metric in self.metrics.values():
          metric.reset_state()
        if knn_every and step // knn_every > previous_step // knn_every:
          knn_started = time.time()
          results['knn_top_1'] = self.knn_accuracy()
          logging.info('step %d/%d knn_top_1=%.4f (%.1f s)', step,
                       self.total_steps, results['knn_top_1'],
                       time.time() - knn_started)
          with writer.as_default(step=step):
            tf.summary.scalar('train/knn_top_1', results['knn_top_1'])
      if step % self.checkpoint_interval == 0 or step >= self.total_steps:
        self._save(step)
    writer.flush()
    if self._stop_signal is not None:
      name = signal.Signals(self._stop_signal).name
      if step > 0:
        path = self._save(step)
        saved = f'checkpoint {path} written'
      else:
        saved = 'before the first step, nothing to save'
      raise Preempted(f'stopped by {name} at step {step}; {saved}; run the '
                      'same command to resume', self._stop_signal)
    results['global_step'] = step
    results['learning_rate'] = float(self.learning_rate(step))
    return results

  def _log_progress(self, step, results, started, first_step):
    done = step - first_step
    seconds = time.time() - started
    eta = (self.total_steps - step) * seconds / max(done, 1)
    shown = ' '.join(f'{name}={results[name]:.4g}' for name in (
        'total_loss', 'contrast_acc', 'memory_fill', 'supervised_acc',
        'distill_loss', 'teacher_agreement', 'learning_rate')
        if name in results)
    logging.info('step %d/%d %s images/s=%.1f eta=%s', step, self.total_steps,
                 shown, results['images_per_sec'],
                 time.strftime('%H:%M:%S', time.gmtime(eta)))

  def _write_augmented_views(self, writer, count=3):
    """A few training views into TensorBoard (the first images of a batch)."""
    sample = self._replace_input(self.train_input, batch_size=count,
                                 cache=False)
    images, _ = next(iter(data.build_dataset(sample)))
    views = tf.split(images, self.stage.views, axis=-1)
    if self.blur_on_device:  # What the training step will see.
      views = [augment.batch_random_blur(view, self.config.image_size)
               for view in views]
    with writer.as_default(step=0):
      for index, view in enumerate(views):
        tf.summary.image(f'augmented_view_{index + 1}', view, max_outputs=count)

  # -------------------------------------------------------------- eval
  def evaluate(self, checkpoint_path=None, require_checkpoint=False):
    """Top-1 / top-5 of the supervised head on --eval_split (and, for a
    pretraining, the encoder's kNN accuracy); writes result.json. Returns the
    result dict, or None when there is nothing to evaluate.

    Args:
      checkpoint_path: weights to evaluate (default: model_dir's latest).
      require_checkpoint: raise CheckpointError when there is none.
    """
    config = self.config
    if not (self.model.has_supervised_head or self.stage.knn_monitor):
      logging.info('No supervised head: skipping evaluation.')
      return None
    if checkpoint_path is None:
      checkpoint_path = checkpoints.latest_checkpoint(config.model_dir)
    if require_checkpoint and not checkpoint_path:
      raise checkpoints.CheckpointError(
          f'no checkpoint to evaluate in {config.model_dir}')
    if checkpoint_path:
      tf.train.Checkpoint(model=self.model,
                          global_step=self.global_step).read(
                              checkpoint_path).expect_partial()
    result = {'global_step': int(self.global_step.numpy()),
              'eval_split': config.eval_split,
              'train_mode': config.train_mode}
    if self.model.has_supervised_head:
      result.update(self._evaluate_head())
    if self.stage.knn_monitor:
      result['knn_top_1'] = self.knn_accuracy()
    logging.info('eval on %s at step %d: %s', config.eval_split,
                 result['global_step'], ' '.join(
                     f'{name}={result[name]:.4f}' for name in (
                         'label_top_1_accuracy', 'label_top_5_accuracy',
                         'knn_top_1', 'teacher_agreement') if name in result))
    if self.is_chief:
      name = f'result_{config.eval_name}' if config.eval_name else 'result'
      _write_json(os.path.join(config.model_dir, name + '.json'), result)
      writer = tf.summary.create_file_writer(config.model_dir)
      with writer.as_default(step=result['global_step']):
        for key in ('label_top_1_accuracy', 'label_top_5_accuracy',
                    'knn_top_1'):
          if key in result:
            tf.summary.scalar(f'eval/{key}', result[key])
      writer.flush()
    return result

  def _eval_input(self):
    eval_input = self._input_config(
        split=self.config.eval_split, augmentation='eval',
        batch_size=self.config.eval_batch_size, subset='all',
        is_training=False)
    return self._replace_input(eval_input, label_fraction=1.0)

  def _evaluate_head(self):
    """Top-1 / top-5 (and teacher agreement) of the supervised head."""
    config = self.config
    dataset = data.build_distributed_dataset(self.strategy, self._eval_input())
    top_k = min(5, self.num_classes)
    with self.strategy.scope():
      top_1 = tf_keras.metrics.SparseCategoricalAccuracy('top_1')
      top_5 = tf_keras.metrics.SparseTopKCategoricalAccuracy(top_k, 'top_5')
      agreement = tf_keras.metrics.Mean('teacher_agreement')
      count = tf_keras.metrics.Sum('count')
    model, teacher, strategy = self.model, self.teacher, self.strategy

    def replica_eval(images, labels):
      logits = model(images, training=False)[model_lib.LOGITS_SUP]
      top_1.update_state(labels, logits)
      top_5.update_state(labels, logits)
      count.update_state(tf.cast(tf.shape(labels)[0], tf.float32))
      if teacher is not None:
        agreement.update_state(tf.cast(tf.equal(
            tf.argmax(logits, -1), tf.argmax(teacher(images), -1)), tf.float32))

    @tf.function
    def eval_loop(iterator, num_steps):
      for _ in tf.range(num_steps):
        images, labels = next(iterator)
        strategy.run(replica_eval, args=(images, labels))

    @tf.function
    def eval_all(dataset):
      for images, labels in dataset:
        strategy.run(replica_eval, args=(images, labels))

    if config.eval_steps:
      eval_loop(iter(dataset), tf.constant(config.eval_steps))
    else:
      eval_all(dataset)
    result = {
        'label_top_1_accuracy': float(top_1.result()),
        'label_top_5_accuracy': float(top_5.result()),
        'num_examples': int(count.result()),
    }
    if teacher is not None:
      result['teacher_agreement'] = float(agreement.result())
    return result

  def knn_accuracy(self):
    """Weighted kNN top-1 (k 200, temperature 0.1, cosine) of the encoder's
    final_avg_pool features in inference mode: the bank is the train split's
    labeled images (--label_fraction's subset, at most --knn_bank_size), the
    queries the eval split (its first --eval_steps batches when set). Labels
    are read here only; they never reach a training loss."""
    config = self.config
    bank_input = self._replace_input(self._input_config(
        split=config.train_split, augmentation='eval',
        batch_size=config.eval_batch_size, subset='labeled',
        is_training=False), cache=False)
    query_limit = (config.eval_steps * config.eval_batch_size
                   if config.eval_steps else None)
    bank = knn.extract_features(
        self.model, _unsharded(data.build_dataset(bank_input)),
        self.strategy, max_examples=config.knn_bank_size)
    queries = knn.extract_features(
        self.model, _unsharded(data.build_dataset(
            self._replace_input(self._eval_input(), cache=False))),
        self.strategy, max_examples=query_limit)
    return knn.knn_accuracy(*bank, *queries, num_classes=self.num_classes)


def _unsharded(dataset):
  """Every worker reads the whole dataset (each computes the kNN itself)."""
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.OFF)
  return dataset.with_options(options)


def _write_json(path, payload):
  temporary = path + '.tmp'
  with tf.io.gfile.GFile(temporary, 'w') as f:
    json.dump(payload, f, indent=1, sort_keys=True)
  tf.io.gfile.rename(temporary, path, overwrite=True)


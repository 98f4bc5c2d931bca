"""The training loop of every stage, under a tf.distribute strategy.

Read top to bottom: setup (inputs, model, optimizer, checkpoint) · restore ·
the replica step · the loop · evaluation. Several steps run inside one
tf.function call (`steps_per_loop`), so the host is touched once per loop:
for the progress line, summaries, checkpoints and the NaN check. What differs
by stage is data in stages.py; the losses are objectives.py's stage
objectives; evaluation.py evaluates; preemption.py handles signals.

Reliability (tests/test_faults.py shows each):
- SIGTERM / SIGINT: the step in flight ends, a checkpoint of it is written
  and Preempted is raised (preemption.py; run.py exits 128 + the signal).
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
- One training process per model_dir (lock.py).
"""

import collections
import contextlib
import dataclasses
import random
import tempfile
import time

from absl import logging
import tensorflow as tf
import tf_keras

from tf_simclr import augment
from tf_simclr import checkpoints
from tf_simclr import config as config_lib
from tf_simclr import data
from tf_simclr import distribute
from tf_simclr import evaluation
from tf_simclr import lock as lock_lib
from tf_simclr import memory as memory_lib
from tf_simclr import model as model_lib
from tf_simclr import objectives
from tf_simclr import optim
from tf_simclr import phases as phases_lib
from tf_simclr import precision as precision_lib
from tf_simclr import preemption
from tf_simclr import reference
from tf_simclr import stages
from tf_simclr import teacher as teacher_lib
from tf_simclr import visualize

TrainingError = preemption.TrainingError
Preempted = preemption.Preempted


def restore_for_training(checkpoint, model, model_dir, initial=None):
  """A training run's start, in this order: resume `checkpoint` (the whole
  run state) from model_dir's newest usable checkpoint; else the model's
  weights from `initial` (--checkpoint: a run, a checkpoint prefix, a
  SavedModel or a reference checkpoint; without its supervised head); else
  nothing (checkpoints.SCRATCH_CHECKPOINT or None). Returns (how, prefix):
  how is 'resumed', 'initialised' or 'scratch'; prefix what was read (or
  None).
  """
  latest = checkpoints.restore_latest(checkpoint, model_dir)
  if latest:
    return 'resumed', latest
  if initial and initial != checkpoints.SCRATCH_CHECKPOINT:
    return 'initialised', reference.load_reference_checkpoint(
        model, initial, skip_supervised_head=True).prefix
  return 'scratch', None


# ---------------------------------------------------------------- warm runs
# A run that differs from an earlier finetune of this process only in these
# Config fields takes over its model, optimizer and traced training step
# (their weights, slots and schedule reset to the new run's), instead of
# building and tracing them again: learning-rate, label-seed and
# label-fraction sweeps then cost their training, not their tracing. What the
# traced step reads of them is in variables (the schedule) or outside it (the
# data, the checkpoints); every other field keys the reuse.
RUNTIME_FIELDS = frozenset({
    'model_dir', 'checkpoint', 'export_dir', 'eval_name', 'eval_split',
    'eval_steps', 'eval_batch_size', 'train_split', 'label_fraction',
    'label_seed', 'learning_rate', 'learning_rate_scaling', 'warmup_epochs',
    'train_epochs', 'train_steps', 'checkpoint_epochs', 'checkpoint_steps',
    'keep_checkpoint_max', 'keep_hub_module_max', 'steps_per_loop',
    'crop_min_area', 'color_jitter_strength', 'color_jitter_version',
    'cache_dataset', 'data_dir', 'skip_bad_images', 'knn_every_steps',
    'knn_bank_size', 'mode', 'summary_images'})
MAX_WARM_RUNS = 8
_WARM = collections.OrderedDict()  # key -> the Trainer that traced it
_REUSE = {'enabled': False}


def reuse_traced_runs(enabled=True):
  """Lets later finetunes of this process take over an earlier one's model,
  optimizer and traced step (RUNTIME_FIELDS); off forgets them. The runs
  must be sequential, and a run's model object is not kept by its caller
  (the next run overwrites its weights): run.py's run_in_process uses it."""
  _REUSE['enabled'] = enabled
  if not enabled:
    _WARM.clear()


def _warm_key(config, stage, strategy, num_classes, part_policies):
  """The reuse key of a run, or None when it may not reuse."""
  if not (_REUSE['enabled'] and stage.name == 'finetune' and
          config.strategy == 'default' and config.precision != 'float16' and
          not config.jit_compile and not config.memory_size):
    return None
  fields = tuple((field.name, getattr(config, field.name))
                 for field in dataclasses.fields(config)
                 if field.name not in RUNTIME_FIELDS)
  return (fields, num_classes, id(strategy), tuple(part_policies or ()),
          tf_keras.mixed_precision.global_policy().name)


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
    self.first_loop_steps = 0  # Steps of the first (timed) loop call.
    self._stop = preemption.StopSignals()
    # Where the run's seconds go (run.py's summary 'phases').
    self.phases = phases_lib.PhaseTimer()
    with self.phases('inputs'):
      self._setup_inputs()
    self.total_steps = optim.total_train_steps(
        config.train_steps, config.train_epochs, self.num_train_examples,
        config.train_batch_size)
    self.checkpoint_interval = config.checkpoint_steps or max(
        1, optim.steps_from_epochs(config.checkpoint_epochs,
                                   self.num_train_examples,
                                   config.train_batch_size))
    self.steps_per_loop = config.steps_per_loop or min(
        self.checkpoint_interval, 100)
    distribute.set_precision_policy(config.precision)
    with self.phases('precision_probe'):
      self.probe_batch = precision_lib.probe_batch(
          config, strategy.num_replicas_in_sync, self.stage.views)
      self.part_policies = precision_lib.choose_for_run(
          config, distribute.runs_on_accelerator(strategy), self.probe_batch)
      if self.part_policies and 'mixed_bfloat16' not in self.part_policies:
        # No part of the backbone gains: the whole model computes in float32.
        distribute.set_precision_policy('float32')
    self._train_loop = None
    key = _warm_key(config, self.stage, strategy, self.num_classes,
                    self.part_policies)
    warm = _WARM.get(key) if key is not None else None
    with strategy.scope():
      with self.phases('model'):
        if warm is not None:
          self._take_over(warm)
        else:
          self._setup_model()
      if self.stage.needs_teacher:
        with self.phases('teacher'):
          self.teacher = teacher_lib.load_teacher(config.teacher_checkpoint,
                                                  self.num_classes)
    if warm is None:
      # Raised by the main thread on SIGTERM/SIGINT; read before every step.
      self.stop_requested = tf.Variable(False, trainable=False,
                                        name='stop_requested')
    if key is not None:
      _WARM[key] = self
      _WARM.move_to_end(key)
      while len(_WARM) > MAX_WARM_RUNS:
        _WARM.popitem(last=False)
    self.reused_trace = warm is not None
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, directory=self._checkpoint_dir(),
        max_to_keep=config.keep_checkpoint_max, step_counter=self.global_step)
    self.saver = checkpoints.SafeSaver(self.manager, lambda: (
        list(self.model.variables) + optim.optimizer_variables(self.optimizer)))

  # -------------------------------------------------------------- setup
  def _setup_inputs(self):
    config, stage = self.config, self.stage
    # Pretraining's blur in the training step instead of the input pipeline:
    # the same views, but the accelerator does the work, not the host CPU.
    self.blur_on_device = augment.blurs_in_training_step(
        stage.augmentation, config.use_blur, config.image_size,
        config.blur_placement, distribute.runs_on_accelerator(self.strategy))
    # Stateless blur draws: seeded by (this, step, replica).
    self._blur_seed = (config.seed if config.deterministic
                       else random.randrange(2**31))
    self.train_input, self.labeled_input = data.training_inputs(
        config, stage, blur_in_pipeline=not self.blur_on_device)
    self.num_train_examples = data.num_examples(self.train_input)

  def _build_model(self):
    config, stage, strategy = self.config, self.stage, self.strategy
    with_head = (stage.supervised_training or
                 config.lineareval_while_pretraining)
    return model_lib.build_model(
        self.num_classes if with_head else 0,
        # Synchronised BN changes nothing on one replica but rules out the
        # fused kernel; the variables are the same either way.
        **dict(config.model_kwargs(), global_bn=(
            config.global_bn and strategy.num_replicas_in_sync > 1)),
        fine_tune_after_block=(config.fine_tune_after_block
                               if stage.freezes_blocks else -1),
        supervised_training=stage.supervised_training,
        zero_init_logits_layer=config.zero_init_logits_layer,
        part_policies=self.part_policies)

  def _take_over(self, warm):
    """Takes over `warm`'s (an earlier Trainer's of the same key) model,
    optimizer, metrics and traced step, reset as _setup_model would build
    them: the weights of a newly built model, zero optimizer slots and
    iterations, this run's schedule, empty metrics."""
    for name in ('model', 'optimizer', 'learning_rate', 'global_step',
                 'memory', 'checkpoint', 'objective', 'objective_options',
                 'metrics', 'nonfinite_step', 'stop_requested', '_train_loop'):
      setattr(self, name, getattr(warm, name))
    self.model.set_weights(self._build_model().get_weights())
    for variable in optim.optimizer_variables(self.optimizer):
      variable.assign(tf.zeros_like(variable))
    self.learning_rate.assign(*optim.schedule_values(
        self.config, self.num_train_examples, self.total_steps))
    for metric in self.metrics.values():
      metric.reset_state()
    self.nonfinite_step.assign(-1)

  def _setup_model(self):
    """Model, optimizer, memory, checkpoint, metrics (in scope)."""
    config, stage, strategy = self.config, self.stage, self.strategy
    with_head = (stage.supervised_training or
                 config.lineareval_while_pretraining)
    self.model = self._build_model()
    self.optimizer, self.learning_rate = optim.build_for_run(
        config, self.model, self.num_train_examples, self.total_steps)
    self.global_step = self.optimizer.iterations
    # SimCLRv2's memory of negatives: a momentum copy of the network and
    # its buffer, checkpointed with the model.
    self.memory = (memory_lib.build_memory(self.model, config, strategy)
                   if config.memory_size and stage.memory_negatives else None)
    extra_state = {'memory': self.memory} if self.memory is not None else {}
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer,
        global_step=self.global_step, **extra_state)
    self.objective = objectives.STAGE_OBJECTIVES[stage.objective]
    self.objective_options = objectives.ObjectiveOptions(
        temperature=config.temperature, hidden_norm=config.hidden_norm,
        distill_temperature=config.distill_temperature,
        distill_alpha=config.distill_alpha, strategy=strategy)
    # Metrics exist before the step is traced (no variables in a replica
    # context): one per name the objective logs, found by tracing it.
    names = objectives.metric_names(
        self.objective, self.objective_options,
        num_classes=self.num_classes if with_head else 0,
        memory_size=self.memory.size if self.memory is not None else 0)
    self.metrics = {name: tf_keras.metrics.Mean(name)
                    for name in names + ['total_loss', 'weight_decay']}
    # First step whose loss or gradients were not finite (-1: none yet).
    self.nonfinite_step = tf.Variable(
        -1, dtype=tf.int64, trainable=False,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

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
    how, prefix = restore_for_training(
        self.checkpoint, self.model, self.config.model_dir,
        self.config.checkpoint)
    if how == 'resumed':
      step = int(self.global_step.numpy())
      self.saver.saved(step)
      logging.info('Resuming from %s at step %d', prefix, step)
    elif how == 'initialised':
      logging.info('Starting from the weights of %s', prefix)
    elif self.config.checkpoint == checkpoints.SCRATCH_CHECKPOINT:
      logging.info('--checkpoint=scratch: training from a random '
                   'initialisation')
    elif self.stage.needs_initial_weights:
      raise config_lib.ConfigError(
          f'--train_mode={self.stage.name} needs --checkpoint (a pretrain '
          f'model_dir or checkpoint) when --model_dir has no checkpoint')
    return how

  # -------------------------------------------------------------- step
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
      loss, logs = self.objective(outputs, labels, extra,
                                  self.objective_options)
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
    stop_requested = (None if distribute.in_multi_worker_mode(self.strategy)
                      else self.stop_requested)

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

  def train(self):
    """Trains to `total_steps`, checkpointing; returns the last metrics."""
    self.stop_requested.assign(False)
    # One training process per model_dir (the chief's; other workers write
    # throw-away checkpoints elsewhere).
    lock = (lock_lib.ModelDirLock(self.config.model_dir) if self.is_chief
            else contextlib.nullcontext())
    with lock, self._stop:
      return self._train()

  def _train(self):
    config = self.config
    if self.is_chief:
      config_lib.write_architecture(config.model_dir, self.architecture, {
          'train_mode': config.train_mode, 'dataset': config.dataset,
          'class_names': list(self.info.class_names)})
    with self.phases('restore'):
      how = self.restore()
    step = int(self.global_step.numpy())
    skip_steps = step if config.deterministic else 0
    if skip_steps:
      logging.info('Deterministic resume: replaying and skipping the input '
                   'of the %d steps already trained.', skip_steps)
    with self.phases('input_pipeline'):
      inputs = [self.train_input] + ([self.labeled_input]
                                     if self.labeled_input is not None else [])
      iterators = [iter(data.build_distributed_dataset(
          self.strategy, input_config, skip_steps)) for input_config in inputs]
    if self._train_loop is None:
      self._train_loop = self.make_train_loop()
    train_loop = self._train_loop
    writer = (tf.summary.create_file_writer(config.model_dir)
              if self.is_chief else tf.summary.create_noop_writer())

    logging.info('%s: %s at step %d of %d (%d examples, global batch %d, '
                 '%d replicas)', config.train_mode, how, step,
                 self.total_steps, self.num_train_examples,
                 config.train_batch_size, self.strategy.num_replicas_in_sync)
    with self.phases('precision_probe'):
      hint = precision_lib.hint_for_run(
          config, distribute.runs_on_accelerator(self.strategy),
          self.total_steps - step, distribute.cpu_has_fast_bfloat16(),
          self.probe_batch)
    if hint:
      logging.info(hint)
    if self.is_chief and step == 0 and config.summary_images:
      with self.phases('training_views'):
        visualize.write_training_views(
            writer, self.train_input, self.stage.views,
            self.config.image_size if self.blur_on_device else None)
    results = {}
    started = time.time()
    first_step = step
    # Steps between kNN monitor passes (0: only at evaluation).
    knn_every = config.knn_every_steps if self.stage.knn_monitor else 0
    loop_calls = 0
    while step < self.total_steps and self._stop.signum is None:
      until_checkpoint = self.checkpoint_interval - step % self.checkpoint_interval
      num_steps = min(self.steps_per_loop, self.total_steps - step,
                      until_checkpoint)
      if knn_every:
        num_steps = min(num_steps, knn_every - step % knn_every)
      if loop_calls == 0:
        self.first_loop_steps = num_steps
        with self.phases('trace_train_loop'):  # Traced once, reused after.
          train_loop.get_concrete_function(iterators, tf.constant(num_steps))
      loop_started = time.time()
      with self.phases('first_loop' if loop_calls == 0 else 'train_loops'):
        preemption.run_until_done(
            lambda n=num_steps: train_loop(iterators, tf.constant(n)),
            self._stop, lambda: self.stop_requested.assign(True))
      loop_calls += 1
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
        with self.phases('summaries'), writer.as_default(step=step):
          for name, value in results.items():
            tf.summary.scalar(f'train/{name}', value)
        for metric in self.metrics.values():
          metric.reset_state()
        if knn_every and step // knn_every > previous_step // knn_every:
          knn_started = time.time()
          with self.phases('knn'):
            results['knn_top_1'] = self.knn_accuracy()
          logging.info('step %d/%d knn_top_1=%.4f (%.1f s)', step,
                       self.total_steps, results['knn_top_1'],
                       time.time() - knn_started)
          with writer.as_default(step=step):
            tf.summary.scalar('train/knn_top_1', results['knn_top_1'])
      if step % self.checkpoint_interval == 0 or step >= self.total_steps:
        with self.phases('checkpoint'):
          self.saver.save(step)
    with self.phases('summaries'):
      writer.flush()
    if self._stop.signum is not None:
      name = self._stop.name
      if step > 0:
        path = self.saver.save(step)
        saved = f'checkpoint {path} written'
      else:
        saved = 'before the first step, nothing to save'
      raise Preempted(f'stopped by {name} at step {step}; {saved}; run the '
                      'same command to resume', self._stop.signum)
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

  # -------------------------------------------------------------- eval
  def evaluate(self, checkpoint_path=None, require_checkpoint=False):
    """evaluation.evaluate_run of this stage's model (default: model_dir's
    latest checkpoint); writes result.json on the chief."""
    return evaluation.evaluate_run(
        self.config, self.model, self.strategy, self.num_classes,
        global_step=self.global_step, knn_monitor=self.stage.knn_monitor,
        teacher=self.teacher, is_chief=self.is_chief,
        checkpoint_path=checkpoint_path,
        require_checkpoint=require_checkpoint, phases=self.phases)

  def knn_accuracy(self):
    """The encoder's weighted kNN top-1 now (evaluation.encoder_knn)."""
    return evaluation.encoder_knn(self.config, self.model, self.strategy,
                                  self.num_classes)

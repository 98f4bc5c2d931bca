r"""SimCLRv2: pretrain, finetune or distill, then evaluate and export.

The command line `tf-simclr` (installed) and `python run.py` (in a checkout).
Accepts every flag of google-research/simclr's tf2/run.py under the same name
and meaning, plus this project's (strategy, distillation, data, precision).

  # Pretrain a ResNet-18 on offline Fashion-MNIST (CPU, a few minutes):
  python run.py --train_mode=pretrain --dataset=fashion_mnist --image_size=32 \
    --resnet_depth=18 --width_multiplier=0.25 --train_batch_size=128 \
    --train_steps=200 --learning_rate=1.0 --model_dir=/tmp/simclr_pretrain

Exit status: 0 done; 2 bad flags or input (one line on stderr saying which;
flags, paths and the architecture saved in --model_dir or next to
--checkpoint are checked before TensorFlow loads, the devices, the replica
count and the dataset's splits and classes before anything is built or
written); 1 training failed (NaN/Inf,
or a checkpoint could not be written; earlier checkpoints are kept); 143 / 130
when stopped by SIGTERM / SIGINT after writing a checkpoint of the current
step (the same command resumes there).
"""

import dataclasses
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow's CPU build turns its oneDNN kernels on by default only on CPUs
# with AVX-512 VNNI/BF16 or AMX; on AVX2-only CPUs they train our ResNets
# about 2.3x faster than the Eigen kernels (docs/performance.md). Set before
# TensorFlow loads; TF_ENABLE_ONEDNN_OPTS=0 in the environment still wins.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

FLAGS = flags.FLAGS

# ---------------------------------------------------------------- reference flags
flags.DEFINE_float('learning_rate', 0.3, 'Initial learning rate per batch size of 256 (linear scaling) or per sqrt(batch) (sqrt scaling).')
flags.DEFINE_string('learning_rate_scaling', 'linear', 'How to scale the learning rate with the global batch size: linear (B/256) or sqrt (sqrt(B)).')
flags.DEFINE_float('warmup_epochs', 10, 'Epochs of linear learning-rate warm-up.')
flags.DEFINE_float('weight_decay', 1e-6, 'L2 weight decay (not applied to BN parameters and biases).')
flags.DEFINE_float('batch_norm_decay', 0.9, 'Batch norm moving-average decay.')
flags.DEFINE_integer('train_batch_size', 512, 'Global training batch size (images; pretraining sees two views of each).')
flags.DEFINE_string('train_split', 'train', 'Split for training.')
flags.DEFINE_integer('train_epochs', 100, 'Epochs to train for (ignored when --train_steps is given).')
flags.DEFINE_integer('train_steps', 0, 'Steps to train for; overrides --train_epochs when > 0.')
flags.DEFINE_integer('eval_steps', 0, 'Eval batches; 0 evaluates the whole eval split.')
flags.DEFINE_integer('eval_batch_size', 256, 'Global eval batch size.')
flags.DEFINE_integer('checkpoint_epochs', 1, 'Epochs between checkpoints and summaries.')
flags.DEFINE_integer('checkpoint_steps', 0, 'Steps between checkpoints; overrides --checkpoint_epochs when > 0.')
flags.DEFINE_string('eval_split', 'validation', 'Split for evaluation.')
flags.DEFINE_string('dataset', 'imagenet2012', 'A TFDS dataset name, image_folder (with --data_dir=ROOT/split/class/image), fashion_mnist (offline from Debian\'s package when present) or synthetic.')
flags.DEFINE_bool('cache_dataset', False, 'Cache the decoded dataset in memory.')
flags.DEFINE_string('mode', 'train', 'train, eval or train_then_eval.')
flags.DEFINE_string('train_mode', 'pretrain', 'pretrain, finetune or distill.')
flags.DEFINE_bool('lineareval_while_pretraining', True, 'Train a linear classifier on stop_gradient features while pretraining.')
flags.DEFINE_string('checkpoint', None, 'Weights to start from when model_dir has no checkpoint: a model_dir or checkpoint of this project, a google-research/simclr tf2 checkpoint, or a released SimCLRv2 TF2 SavedModel; "scratch" finetunes from a random initialisation (a supervised baseline).')
flags.DEFINE_bool('zero_init_logits_layer', False, 'Start the new supervised head at zero.')
flags.DEFINE_integer('fine_tune_after_block', -1, 'Finetune the layers after this block: -1 all, 0 after the stem, 1..3 after block group k, 4 only the head. Frozen layers keep fixed BN statistics.')
flags.DEFINE_string('master', None, 'Address of the TensorFlow master (TPU); same as --tpu_name.')
flags.DEFINE_string('model_dir', None, 'Directory for checkpoints, summaries, config.json, result.json and exports.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory, or the root of an image_folder dataset.')
flags.DEFINE_bool('use_tpu', False, 'Run on a TPU (same as --strategy=tpu).')
flags.DEFINE_string('tpu_name', None, 'The Cloud TPU name or grpc:// address.')
flags.DEFINE_string('tpu_zone', None, 'GCE zone of the Cloud TPU.')
flags.DEFINE_string('gcp_project', None, 'GCP project of the Cloud TPU.')
flags.DEFINE_string('optimizer', 'lars', 'lars, momentum or adam.')
flags.DEFINE_float('momentum', 0.9, 'Momentum.')
flags.DEFINE_string('eval_name', None, 'Name for the eval result file (result_NAME.json).')
flags.DEFINE_integer('keep_checkpoint_max', 5, 'Checkpoints to keep.')
flags.DEFINE_integer('keep_hub_module_max', 1, 'Exported versions to keep.')
flags.DEFINE_float('temperature', 0.1, 'Temperature of the contrastive loss.')
flags.DEFINE_boolean('hidden_norm', True, 'l2-normalise projections in the contrastive loss.')
flags.DEFINE_string('proj_head_mode', 'nonlinear', 'none, linear or nonlinear.')
flags.DEFINE_integer('proj_out_dim', 128, 'Output width of the projection head.')
flags.DEFINE_integer('num_proj_layers', 3, 'Layers of the nonlinear projection head.')
flags.DEFINE_integer('ft_proj_selector', 0, 'Projection-head layer the supervised head reads: 0 the backbone output, k after head layer k, -1 the last.')
flags.DEFINE_boolean('global_bn', True, 'Synchronise BN statistics across replicas.')
flags.DEFINE_float('width_multiplier', 1, 'Channel width multiplier (float: 0.125 and 0.25 give CPU-sized networks).')
flags.DEFINE_integer('resnet_depth', 50, 'ResNet depth: 18, 34, 50, 101, 152 or 200.')
flags.DEFINE_float('sk_ratio', 0., 'Selective-kernel ratio; > 0 enables SK and ResNet-D (paper: 0.0625).')
flags.DEFINE_float('se_ratio', 0., 'Squeeze-excitation ratio; > 0 enables SE.')
flags.DEFINE_integer('image_size', 224, 'Input image size; <= 32 uses the CIFAR stem.')
flags.DEFINE_float('color_jitter_strength', 1.0, 'Strength of colour jittering.')
flags.DEFINE_boolean('use_blur', True, 'Gaussian blur in pretraining augmentation.')

# Flags of the reference's README commands that change nothing here.
flags.DEFINE_integer('train_summary_steps', 0, 'Accepted for compatibility; training summaries are written once per loop (--steps_per_loop).')
flags.DEFINE_string('variable_schema', None, 'Accepted for compatibility (TF1 README commands); which variables a stage restores and trains is decided by --train_mode, --fine_tune_after_block and --ft_proj_selector.')

# ---------------------------------------------------------------- this project's flags
flags.DEFINE_string('strategy', 'default', 'default (CPU or one GPU), mirrored (local GPUs), multi_worker_mirrored (TF_CONFIG) or tpu.')
flags.DEFINE_integer('num_gpus', 0, 'GPUs for --strategy=mirrored (0: all).')
flags.DEFINE_integer('cpu_replicas', 0, 'With --strategy=mirrored on a machine without GPUs: split the CPU into this many replicas (for trying distributed runs).')
flags.DEFINE_integer('steps_per_loop', 0, 'Training steps per tf.function call (0: min(checkpoint interval, 100)).')
flags.DEFINE_string('precision', 'float32', 'float32, bfloat16 or float16 (mixed precision; losses in float32).')
flags.DEFINE_string('bfloat16_parts', 'measured', 'With --precision=bfloat16 on a CPU: measured (each part of the backbone, stem and block groups, computes in bfloat16 only where a short probe at the start measures it faster than float32 on this CPU; the others in float32) or all.')
flags.DEFINE_bool('jit_compile', False, 'Compile the training step with XLA.')
flags.DEFINE_string('blur_placement', 'auto', 'Where pretraining blurs views: input (the tf.data pipeline, on the host CPU), device (the training step, on the GPU/TPU; frees the host at 224 px) or auto (device on a GPU or TPU, input on a CPU).')
flags.DEFINE_float('crop_min_area', 0.08, 'Smallest random crop of training images, as a fraction of the image area (the crop of the pretraining views, and of finetuning and distillation); 0.08 as in the paper, 1 keeps whole images (flip only).')
flags.DEFINE_string('color_jitter_version', 'simclrv2', 'simclrv2 (multiplicative brightness) or simclrv1.')
flags.DEFINE_float('label_fraction', 1.0, 'Fraction of the train split with labels (class-balanced; 0.01 and 0.1 in the paper).')
flags.DEFINE_integer('label_seed', 0, 'Seed choosing the labeled subset.')
flags.DEFINE_string('unlabeled_split', None, 'Distillation: split of unlabeled images (default: --train_split).')
flags.DEFINE_string('teacher_checkpoint', None, 'Distillation teacher: a finetune model_dir, an export of this project, or a reference/released fine-tuned checkpoint.')
flags.DEFINE_float('distill_temperature', 1.0, 'Distillation temperature tau.')
flags.DEFINE_float('distill_alpha', 1.0, 'Weight of the distillation loss; 1 - alpha weights the labeled cross-entropy.')
flags.DEFINE_integer('num_classes', 0, 'Classes of the supervised head (0: from the dataset).')
flags.DEFINE_bool('skip_bad_images', False, 'Skip (and count) unreadable images of an image_folder dataset instead of stopping.')
flags.DEFINE_integer('knn_every_steps', 0, 'Pretraining: also log the weighted kNN accuracy (k 200, temperature 0.1, cosine on final_avg_pool; bank: the train split\'s labeled images, queries: --eval_split) every this many steps (0: only at evaluation).')
flags.DEFINE_integer('knn_bank_size', 60000, 'At most this many labeled training images in the kNN bank.')
flags.DEFINE_integer('memory_size', 0, 'Pretraining: SimCLRv2\'s memory of negatives, a FIFO buffer of this many projections of a momentum network used as extra negatives (0: off, plain SimCLR; the paper: 65536 at batch 4096). At least 2 x --train_batch_size. At CPU scale (ResNet-18 x1/8, batch 256, 12 epochs) none of 4096, 16384, 65536 with momentum 0.99 or 0.999 helped: leave 0 (docs/training.md; the least bad: 4096 with 0.999).')
flags.DEFINE_float('memory_momentum', 0.999, 'Moving-average momentum of the memory network (the paper: 0.999).')
flags.DEFINE_bool('deterministic', False, 'Fixed seeds and op determinism (slower; for reproducing runs).')
flags.DEFINE_integer('seed', 0, 'Random seed with --deterministic.')
flags.DEFINE_string('export_dir', None, 'Where to export after training (default: model_dir); hub/proj_head_k and saved_model/STEP.')
flags.DEFINE_bool('summary_images', True, 'Write a few augmented training views to TensorBoard at step 0 (costs one extra pass of the input pipeline to its first batch).')
flags.DEFINE_bool('export', True, 'Export hub modules and a serving SavedModel after training.')
flags.DEFINE_string('show_augmentations', None, 'Write a PNG grid of images and their two augmented views to this path, then exit.')


def _program():
  """The command's name in error lines: run.py, or tf-simclr when installed."""
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'run.py'


def _config_module():
  """tf_simclr.config (imports no TensorFlow: flag errors answer in about a
  second)."""
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib


def config_from_flags(need_model_dir=True):
  """The validated Config for the parsed flags."""
  config_lib = _config_module()
  values = {field.name: FLAGS[field.name].value
            for field in dataclasses.fields(config_lib.Config)
            if field.name in FLAGS}
  if FLAGS.master and not FLAGS.tpu_name:
    values['tpu_name'] = FLAGS.master
  return config_lib.Config(**values).validate(need_model_dir=need_model_dir)


def check_flags(argv):
  """Every check made before TensorFlow loads (a mistake is reported in
  about a second, and nothing is written): the flags and their
  combinations, the replica count the flags give, the paths, the
  architecture saved in --model_dir and next to --checkpoint. Returns the
  Config; raises config.ConfigError."""
  config_lib = _config_module()
  if len(argv) > 1:
    raise config_lib.ConfigError(
        f'unexpected arguments: {" ".join(argv[1:])} (flags are written '
        '--name=value)')
  if FLAGS.train_summary_steps < 0:
    raise config_lib.ConfigError('--train_summary_steps must be >= 0, got '
                                 f'{FLAGS.train_summary_steps}')
  from tf_simclr import preflight  # pylint: disable=g-import-not-at-top
  config = config_from_flags(need_model_dir=not FLAGS.show_augmentations)
  if FLAGS.show_augmentations:
    preflight.check_output_location('show_augmentations',
                                    FLAGS.show_augmentations, kind='file')
    preflight.check_data_dir(config)
    return config
  replicas = config.replicas_from_flags()
  if replicas:
    config.check_replicas(*replicas)
  preflight.check_paths(config)
  if FLAGS.export and config.mode != 'eval' and config.export_dir:
    preflight.check_output_location('export_dir', config.export_dir)
  if config.mode != 'eval':
    from tf_simclr import lock  # pylint: disable=g-import-not-at-top
    # Another run trains into it? Only through a lock file: where there is
    # none, the check creates none (a refused run adds nothing).
    if os.path.exists(os.path.join(config.model_dir, lock.LOCK_NAME)):
      lock.check_free(config.model_dir)
  return config


def main(argv):
  config = check_flags(argv)
  # Imported here so `--help` and flag errors answer without loading TF.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tf_simclr import distribute  # pylint: disable=g-import-not-at-top
  from tf_simclr import errors  # pylint: disable=g-import-not-at-top
  from tf_simclr import preflight  # pylint: disable=g-import-not-at-top
  from tf_simclr import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  if FLAGS.show_augmentations:
    from tf_simclr import visualize  # pylint: disable=g-import-not-at-top
    visualize.write_augmentation_grid_for_dataset(
        FLAGS.show_augmentations, dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir, image_size=FLAGS.image_size,
        color_jitter_strength=FLAGS.color_jitter_strength,
        use_blur=FLAGS.use_blur, split=FLAGS.train_split,
        crop_min_area=FLAGS.crop_min_area)
    print(f'wrote {FLAGS.show_augmentations}')
    return
  # Checked before anything is built or written, now that TensorFlow can
  # tell: the devices, the strategy's replicas, the dataset.
  preflight.check_devices(config)
  devices = None
  if config.strategy == 'mirrored' and config.cpu_replicas:
    try:
      devices = distribute.split_cpu_into_logical_devices(config.cpu_replicas)
    except RuntimeError as error:  # TensorFlow already set up its devices.
      raise _config_module().ConfigError(
          f'--cpu_replicas={config.cpu_replicas}: '
          f'{errors.first_line(error)}') from None
  if config.deterministic:
    tf_keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
  started = time.perf_counter()
  try:
    strategy = distribute.make_strategy(
        config.strategy, num_gpus=config.num_gpus, tpu_name=config.tpu_name,
        tpu_zone=config.tpu_zone, gcp_project=config.gcp_project,
        devices=devices)
  except Exception as error:  # pylint: disable=broad-except
    # No TPU there, a cluster that cannot be reached, ...
    raise _config_module().ConfigError(
        f'--strategy={config.strategy}: cannot create it: '
        f'{errors.first_line(error)}') from error
  strategy_seconds = time.perf_counter() - started
  preflight.check_strategy(config, strategy)
  preflight.check_data(config)
  trainer = trainer_lib.Trainer(config, strategy)
  trainer.phases.add('strategy', strategy_seconds)
  summary = {'train_mode': config.train_mode, 'model_dir': config.model_dir}
  if config.mode in ('train', 'train_then_eval'):
    summary['train'] = trainer.train()
  if config.mode in ('eval', 'train_then_eval'):
    summary['eval'] = trainer.evaluate(
        require_checkpoint=config.mode == 'eval')
  if config.mode != 'eval' and FLAGS.export and trainer.is_chief:
    from tf_simclr import export as export_lib  # pylint: disable=g-import-not-at-top
    with trainer.phases('export'):
      summary['export'] = export_lib.export_model(
          trainer.model, config.export_dir or config.model_dir,
          image_size=config.image_size,
          step=int(trainer.global_step.numpy()),
          train_mode=config.train_mode, class_names=trainer.info.class_names,
          keep_max=config.keep_hub_module_max)
  # Where the run's seconds went (benchmark --component=stage reads it).
  summary['phases'] = trainer.phases.as_dict()
  summary['first_loop_steps'] = trainer.first_loop_steps
  summary['reused_trace'] = trainer.reused_trace
  print(json.dumps(summary, sort_keys=True, default=str))
  return summary


def user_errors():
  """Exceptions that mean bad flags or input: reported as one line, exit 2."""
  from tf_simclr import checkpoints  # pylint: disable=g-import-not-at-top
  from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
  from tf_simclr import data  # pylint: disable=g-import-not-at-top
  return (config_lib.ConfigError, data.DataError, checkpoints.CheckpointError)


def run(argv):
  """main() with failures turned into one line and an exit status."""
  try:
    main(argv)
  except Exception as error:  # pylint: disable=broad-except
    if isinstance(error, _config_module().ConfigError):  # Answered before TF loads.
      print(f'{_program()}: error: {error}', file=sys.stderr)
      sys.exit(2)
    from tf_simclr import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
    if isinstance(error, user_errors()):
      print(f'{_program()}: error: {error}', file=sys.stderr)
      sys.exit(2)
    if isinstance(error, trainer_lib.Preempted):
      print(f'{_program()}: {error}', file=sys.stderr)
      sys.exit(128 + error.signum)
    if isinstance(error, trainer_lib.TrainingError):
      print(f'{_program()}: error: {error}', file=sys.stderr)
      sys.exit(1)
    raise


def run_in_process(argv):
  """main() on a fresh parse of argv ([program, *flags]) in this process, as
  the main job and the semi-supervised protocol run their stages (each stage
  then costs its tracing, not a TensorFlow start-up and a scan of the
  dataset's keys, and a finetune whose only differences from an earlier
  one are its rates, labels, lengths or directories takes over its model,
  optimizer and traced step: trainer.reuse_traced_runs); returns main's
  summary. Errors propagate as exceptions; the Keras session is cleared
  afterwards."""
  import gc  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tf_simclr import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  trainer_lib.reuse_traced_runs(True)
  FLAGS.unparse_flags()
  FLAGS(argv)
  logging.set_verbosity(logging.INFO)  # Reset by unparse_flags.
  try:
    return main(argv[:1])
  finally:
    tf_keras.backend.clear_session()
    gc.collect()


def parse_flags(argv):
  """absl's parser, with a bad flag reported as one line and exit 2."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    print(f'{_program()}: error: {error}', file=sys.stderr)
    sys.exit(2)


def console_main():
  """The entry point of `tf-simclr` and of the checkout's run.py: absl's app
  with this module's docstring and flags as --help's text, run() as main."""
  main_module = sys.modules['__main__']
  if not main_module.__doc__:  # The console script's wrapper has none.
    main_module.__doc__ = __doc__
  # --help lists the key flags of the program (absl names it by sys.argv[0]).
  for flag in FLAGS.get_key_flags_for_module(__name__):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  logging.set_verbosity(logging.INFO)
  app.run(run, flags_parser=parse_flags)

"""The run configuration: every run.py flag as a typed field, checked once.

run.py turns its absl flags into a `Config`; everything below takes the config
(or plain arguments picked from it), never FLAGS. The model architecture part is
written to `model_dir/config.json` so later stages and export rebuild the same
network without repeating flags.
"""

import dataclasses
import json
import math
import os
from typing import Optional

from tf_simclr import architecture as architecture_lib
from tf_simclr import errors
from tf_simclr import files
from tf_simclr import stages

RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
TRAIN_MODES = tuple(stages.STAGES)
MODES = ('train', 'eval', 'train_then_eval')
OPTIMIZERS = ('lars', 'momentum', 'adam')
LR_SCALINGS = ('linear', 'sqrt')
PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')
STRATEGIES = ('default', 'mirrored', 'multi_worker_mirrored', 'tpu')
PRECISIONS = ('float32', 'bfloat16', 'float16')
# --precision=bfloat16 on a CPU: each backbone part in the precision measured
# faster there (precision.py), or every part in bfloat16.
BFLOAT16_PARTS = ('measured', 'all')
# Where pretraining's Gaussian blur runs: in the tf.data input pipeline, in
# the training step on the accelerator, or auto (the step on a GPU or TPU,
# the input pipeline on a CPU).
BLUR_PLACEMENTS = ('auto', 'input', 'device')
COLOR_JITTER_VERSIONS = ('simclrv1', 'simclrv2')

CONFIG_FILENAME = 'config.json'

# Fields that define the network (architecture.ModelConfig's); saved in
# model_dir and compared on restore.
MODEL_FIELDS = architecture_lib.FIELDS


class ConfigError(ValueError):
  """A flag value or combination that cannot run; the message names the flag."""


@dataclasses.dataclass
class Config(architecture_lib.ModelConfig):
  """All settings of a run. Field names are run.py's flag names; the
  architecture's (resnet_depth, width_multiplier, image_size, ...,
  num_classes: 0 takes the dataset's) are architecture.ModelConfig's."""
  # Optimisation.
  learning_rate: float = 0.3
  learning_rate_scaling: str = 'linear'
  warmup_epochs: float = 10.0
  weight_decay: float = 1e-6
  optimizer: str = 'lars'
  momentum: float = 0.9
  train_batch_size: int = 512
  train_epochs: int = 100
  train_steps: int = 0
  steps_per_loop: int = 0
  # Evaluation.
  eval_steps: int = 0
  eval_batch_size: int = 256
  eval_split: str = 'validation'
  eval_name: Optional[str] = None
  knn_every_steps: int = 0
  knn_bank_size: int = 60_000
  # Checkpoints and export.
  checkpoint_epochs: int = 1
  checkpoint_steps: int = 0
  keep_checkpoint_max: int = 5
  keep_hub_module_max: int = 1
  # TensorBoard images of the first training views (one extra input pass).
  summary_images: bool = True
  model_dir: Optional[str] = None
  checkpoint: Optional[str] = None
  export_dir: Optional[str] = None
  # Data.
  dataset: str = 'imagenet2012'
  data_dir: Optional[str] = None
  train_split: str = 'train'
  cache_dataset: bool = False
  color_jitter_strength: float = 1.0
  color_jitter_version: str = 'simclrv2'
  use_blur: bool = True
  crop_min_area: float = 0.08
  blur_placement: str = 'auto'
  label_fraction: float = 1.0
  label_seed: int = 0
  unlabeled_split: Optional[str] = None
  skip_bad_images: bool = False
  deterministic: bool = False
  seed: int = 0
  # Stage.
  mode: str = 'train'
  train_mode: str = 'pretrain'
  lineareval_while_pretraining: bool = True
  zero_init_logits_layer: bool = False
  fine_tune_after_block: int = -1
  teacher_checkpoint: Optional[str] = None
  distill_temperature: float = 1.0
  distill_alpha: float = 1.0
  # Contrastive objective.
  temperature: float = 0.1
  hidden_norm: bool = True
  memory_size: int = 0
  memory_momentum: float = 0.999
  # Architecture: architecture.ModelConfig's fields, and
  global_bn: bool = True
  # Hardware.
  strategy: str = 'default'
  use_tpu: bool = False
  tpu_name: Optional[str] = None
  tpu_zone: Optional[str] = None
  gcp_project: Optional[str] = None
  master: Optional[str] = None
  num_gpus: int = 0
  cpu_replicas: int = 0
  precision: str = 'float32'
  bfloat16_parts: str = 'measured'
  jit_compile: bool = False

  # ---------------------------------------------------------------- checks
  def validate(self, need_model_dir=True) -> 'Config':
    """Raises ConfigError naming the first bad flag; returns self.
    need_model_dir=False: --model_dir may be missing (--show_augmentations
    writes nothing there)."""
    def need(condition, message):
      if not condition:
        raise ConfigError(message)

    # NaN passes no comparison and inf passes every lower bound: no float
    # flag takes either.
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, float):
        need(math.isfinite(value),
             f'--{field.name} must be a finite number, got {value}')

    def enum(name, choices):
      value = getattr(self, name)
      need(value in choices,
           f'--{name} must be one of {", ".join(map(str, choices))}, '
           f'got {value!r}')

    enum('resnet_depth', RESNET_DEPTHS)
    enum('train_mode', TRAIN_MODES)
    enum('mode', MODES)
    enum('optimizer', OPTIMIZERS)
    enum('learning_rate_scaling', LR_SCALINGS)
    enum('proj_head_mode', PROJ_HEAD_MODES)
    enum('bfloat16_parts', BFLOAT16_PARTS)
    enum('strategy', STRATEGIES)
    enum('precision', PRECISIONS)
    enum('blur_placement', BLUR_PLACEMENTS)
    enum('color_jitter_version', COLOR_JITTER_VERSIONS)
    # keep_checkpoint_max 0 would keep none (TensorFlow's CheckpointManager
    # refuses it); keep_hub_module_max 0 keeps every export.
    for name in ('train_batch_size', 'eval_batch_size', 'image_size',
                 'proj_out_dim', 'knn_bank_size', 'keep_checkpoint_max'):
      need(getattr(self, name) > 0,
           f'--{name} must be positive, got {getattr(self, name)}')
    for name in ('train_steps', 'train_epochs', 'eval_steps',
                 'checkpoint_steps', 'checkpoint_epochs', 'steps_per_loop',
                 'keep_hub_module_max', 'num_classes', 'num_proj_layers',
                 'warmup_epochs', 'weight_decay', 'num_gpus', 'cpu_replicas',
                 'knn_every_steps', 'memory_size'):
      need(getattr(self, name) >= 0,
           f'--{name} must be >= 0, got {getattr(self, name)}')
    for name in ('dataset', 'train_split', 'eval_split'):
      need(getattr(self, name), f'--{name} must not be empty')
    need(self.train_steps > 0 or self.train_epochs > 0,
         '--train_steps or --train_epochs must be positive')
    need(self.learning_rate >= 0,
         f'--learning_rate must be >= 0, got {self.learning_rate}')
    need(self.width_multiplier > 0,
         f'--width_multiplier must be positive, got {self.width_multiplier}')
    # The stem's convolutions have int(64 x width) filters (half of that in
    # the ResNet-D stem of SK networks): at least one.
    smallest = 2 if self.sk_ratio > 0 else 1
    need(64 * self.width_multiplier >= smallest,
         f'--width_multiplier={self.width_multiplier} leaves the stem '
         f'without channels: 64 x width must be >= {smallest}'
         + (' with --sk_ratio > 0' if smallest > 1 else ''))
    need(0 <= self.sk_ratio < 1, f'--sk_ratio must be in [0, 1), got {self.sk_ratio}')
    need(0 <= self.se_ratio < 1, f'--se_ratio must be in [0, 1), got {self.se_ratio}')
    need(0 < self.batch_norm_decay < 1,
         f'--batch_norm_decay must be in (0, 1), got {self.batch_norm_decay}')
    need(0 <= self.momentum < 1, f'--momentum must be in [0, 1), got {self.momentum}')
    need(self.temperature > 0, f'--temperature must be positive, got {self.temperature}')
    need(self.distill_temperature > 0,
         f'--distill_temperature must be positive, got {self.distill_temperature}')
    need(0 <= self.distill_alpha <= 1,
         f'--distill_alpha must be in [0, 1], got {self.distill_alpha}')
    need(0 < self.label_fraction <= 1,
         f'--label_fraction must be in (0, 1], got {self.label_fraction}')
    need(self.color_jitter_strength >= 0,
         f'--color_jitter_strength must be >= 0, got {self.color_jitter_strength}')
    need(0 < self.crop_min_area <= 1,
         f'--crop_min_area must be in (0, 1], got {self.crop_min_area}')
    need(-1 <= self.fine_tune_after_block <= 4,
         f'--fine_tune_after_block must be in -1..4, got {self.fine_tune_after_block}')
    need(self.num_proj_layers >= 1 or self.proj_head_mode != 'nonlinear',
         f'--num_proj_layers must be >= 1, got {self.num_proj_layers}')
    depth = self.projection_head_depth
    need(-1 <= self.ft_proj_selector <= depth,
         f'--ft_proj_selector must be in -1..{depth} (the projection head has '
         f'{depth} layers with --proj_head_mode={self.proj_head_mode} '
         f'--num_proj_layers={self.num_proj_layers}), got {self.ft_proj_selector}')
    stage = stages.STAGES[self.train_mode]
    need(not (stage.objective == 'contrastive' and
              self.fine_tune_after_block >= 0),
         '--fine_tune_after_block freezes layers for finetuning; pretraining '
         'needs --fine_tune_after_block=-1')
    need(not (stage.needs_teacher and not self.teacher_checkpoint),
         '--train_mode=distill needs --teacher_checkpoint (a finetune model_dir '
         'or an exported SavedModel)')
    need(0 <= self.memory_momentum < 1,
         f'--memory_momentum must be in [0, 1), got {self.memory_momentum}')
    if self.memory_size:
      need(stage.memory_negatives,
           '--memory_size is the memory of negatives of the contrastive loss: '
           f'pretraining only (--train_mode={self.train_mode} needs '
           '--memory_size=0)')
      need(self.memory_size >= 2 * self.train_batch_size,
           f'--memory_size must hold at least one step\'s projections (2 x '
           f'--train_batch_size = {2 * self.train_batch_size}), got '
           f'{self.memory_size}')
    # Seeds of NumPy's generators (the label subset, --deterministic).
    for name in ('label_seed', 'seed'):
      need(0 <= getattr(self, name) < 2**32,
           f'--{name} must be in 0..2**32-1, got {getattr(self, name)}')
    need(not self.eval_name or not any(
        separator in self.eval_name for separator in ('/', os.sep)),
         f'--eval_name names the file result_NAME.json in --model_dir: no '
         f'"/" in it, got {self.eval_name!r}')
    self._validate_devices(need)
    need(bool(self.model_dir) or not need_model_dir, '--model_dir is required')
    if self.use_tpu and self.strategy == 'default':
      self.strategy = 'tpu'
    return self

  def _validate_devices(self, need):
    """--strategy and the flags that pick its devices agree."""
    need(not (self.use_tpu and self.strategy not in ('default', 'tpu')),
         f'--use_tpu asks for the TPU strategy, --strategy={self.strategy} '
         'for another: give one of them')
    for name in ('num_gpus', 'cpu_replicas'):
      need(not getattr(self, name) or self.strategy == 'mirrored',
           f'--{name} applies to --strategy=mirrored, got '
           f'--strategy={self.strategy}')
    need(not (self.num_gpus and self.cpu_replicas),
         '--num_gpus (GPU replicas) and --cpu_replicas (CPU replicas) '
         'exclude each other: give one of them')
    # Where the TPU is: without the TPU strategy the run would go on the
    # CPU or GPUs, silently.
    on_tpu = self.strategy == 'tpu' or (self.use_tpu and
                                        self.strategy == 'default')
    for name in ('master', 'tpu_name', 'tpu_zone', 'gcp_project'):
      need(not getattr(self, name) or on_tpu,
           f'--{name} applies to the TPU strategy (--strategy=tpu or '
           f'--use_tpu), got --strategy={self.strategy}')

  def evaluates(self) -> bool:
    """The run evaluates the supervised head on --eval_split."""
    return self.mode in ('eval', 'train_then_eval')

  def check_replicas(self, replicas: int, source: str):
    """Raises ConfigError unless the global batches split evenly over
    `replicas` (each replica gets batch / replicas images); `source` says
    what they are, e.g. 'the 2 replicas of --cpu_replicas=2'."""
    names = ['train_batch_size'] + (['eval_batch_size'] if self.evaluates()
                                    else [])
    for name in names:
      batch = getattr(self, name)
      if batch % replicas:
        raise ConfigError(
            f'--{name}={batch} does not split evenly over {source}: use a '
            f'multiple of {replicas}')

  def replicas_from_flags(self, environ=None):
    """(replicas, source) as far as the flags and TF_CONFIG tell before
    TensorFlow loads, or None when only the strategy knows (all local GPUs,
    a TPU). For multi_worker_mirrored: the worker count, a divisor of the
    replica count (each worker has its own devices)."""
    environ = os.environ if environ is None else environ
    if self.strategy == 'mirrored':
      if self.cpu_replicas:
        return self.cpu_replicas, (f'the {self.cpu_replicas} replicas of '
                                   f'--cpu_replicas={self.cpu_replicas}')
      if self.num_gpus:
        return self.num_gpus, (f'the {self.num_gpus} GPUs of '
                               f'--num_gpus={self.num_gpus}')
    if self.strategy == 'multi_worker_mirrored' and environ.get('TF_CONFIG'):
      try:
        cluster = json.loads(environ['TF_CONFIG']).get('cluster') or {}
        workers = sum(len(cluster.get(kind) or [])
                      for kind in ('chief', 'worker'))
      except (ValueError, AttributeError, TypeError) as error:
        raise ConfigError(
            '--strategy=multi_worker_mirrored reads the cluster from '
            f'TF_CONFIG, which is not a JSON object with a "cluster": '
            f'{errors.first_line(error)}') from None
      if workers > 1:
        return workers, f'the {workers} workers of TF_CONFIG'
    return None

  # ---------------------------------------------------------------- derived
  @property
  def projection_head_depth(self) -> int:
    """Number of projection-head layers (N in proj_head_layer_0..N)."""
    return {'none': 0, 'linear': 1, 'nonlinear': self.num_proj_layers}[
        self.proj_head_mode]

  def model_config(self) -> architecture_lib.ModelConfig:
    """The architecture record of this run's network."""
    return architecture_lib.ModelConfig.of(self)

  def model_kwargs(self) -> dict:
    """Keyword arguments of tf_simclr.build_model for this config."""
    return dict(self.model_config().build_kwargs(), global_bn=self.global_bn)

  def architecture(self) -> dict:
    """What is written to model_dir/config.json."""
    return self.model_config().to_dict()

  def replace(self, **changes) -> 'Config':
    return dataclasses.replace(self, **changes)


def write_architecture(model_dir: str, architecture: dict, extra: dict = None):
  """Writes model_dir/config.json (architecture plus run information)."""
  import tensorflow as tf  # Local: keeps config importable without TF.
  payload = dict(architecture)
  payload.update(extra or {})
  tf.io.gfile.makedirs(model_dir)
  path = os.path.join(model_dir, CONFIG_FILENAME)
  temporary = path + '.tmp'
  with tf.io.gfile.GFile(temporary, 'w') as f:
    json.dump(payload, f, indent=1, sort_keys=True)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def read_architecture(model_dir: str) -> Optional[dict]:
  """Reads model_dir/config.json, or None when there is none."""
  path = os.path.join(model_dir, CONFIG_FILENAME)
  if not files.exists(path):
    return None
  try:
    return json.loads(files.read_text(path))
  except (OSError, ValueError) as error:
    raise ConfigError(
        f'cannot read {path}: {errors.first_line(error)}') from error


# ---------------------------------------------------------------- saved architecture
def architecture_differences(saved: dict, wanted: dict, names) -> list:
  """'name=saved (flags: wanted)' for each of `names` that differs."""
  def same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
      return float(a) == float(b)
    return a == b
  return [f'{name}={saved[name]!r} (flags: {wanted[name]!r})'
          for name in names
          if name in saved and name in wanted and not same(saved[name],
                                                           wanted[name])]


def check_saved_architecture(model_dir: str, architecture: dict):
  """Raises ConfigError when model_dir/config.json records another value for
  any field of `architecture` (a run there would resume a different model)."""
  saved = read_architecture(model_dir)
  if saved is None:
    return
  differences = architecture_differences(saved, architecture,
                                         list(architecture))
  if differences:
    raise ConfigError(
        f'--model_dir {model_dir} holds a model with ' +
        ', '.join(differences) + '; use the same flags or another --model_dir')

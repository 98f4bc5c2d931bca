r"""SimCLRv2's semi-supervised protocol on offline Fashion-MNIST, end to end.

  python benchmarks/semi_supervised.py               # the protocol, <= 60 min on 2 idle CPU cores
  python benchmarks/semi_supervised.py --plan_only   # sizes, steps and the time estimate
  python benchmarks/semi_supervised.py --quick       # plumbing check, a few minutes
  python benchmarks/semi_supervised.py --scale=8     # 8x epochs and widths, for one GPU

Splits, fixed: validation = the first 5 000 training images (TFDS order),
pool = the other 55 000, test = the 10 000 test images. Label subsets are
class-balanced subsets of the pool with 6, 60 and 600 images per class (0.1 %,
1 % and 10 % of the 60 000 training images), label seeds 0, 1, 2 at 0.1 % and
1 %, seed 0 at 10 %. The unlabeled data is the whole pool, without labels.

Arms, each the same ResNet-18 (width 0.125, CIFAR stem, 28 px):
  supervised     from a random initialisation on the labeled subset only (the
                 finetune stage's crop + flip, SGD + momentum, cosine);
  simclr         one contrastive pretraining on the pool, then finetuning on
                 the subset from projection-head layer 1 (the teacher);
  self_distill   the teacher distilled into the same architecture on the
                 pool, no labels (SimCLRv2's final model);
  distill_small  the teacher distilled into a half-width student (from a
                 half-width pretraining of its own on the pool).
The encoder is also measured without finetuning: weighted kNN (k 200, cosine),
the linear probe (--fine_tune_after_block=4, the reference's linear
evaluation) and the raw-pixel anchor's logistic regression on its frozen
features, against that logistic regression and the same kNN on raw pixels.

Every choice is made on the validation split: the learning rate of the
supervised baseline and of finetuning (the same number of candidates each,
per fraction, at label seed 0, then reused for seeds 1 and 2), the
students' starts and learning rates (per fraction, at label seed 0), the
raw-pixel regression's C. The
test split is read once per final model (`--mode=eval --eval_split=test`).

Every stage is run.py's own `main` with run.py flags; by default all of them
run in this one process (each stage costs tracing, not a TensorFlow start-up
and a dataset scan; `--subprocesses` runs each as `python run.py`). A stage
whose model_dir holds `stage.json` is reused: re-running with the same
--work_dir resumes. Run it from a tree nobody edits (AutoGraph reads the
sources while tracing).

Writes OUTPUT_DIR/results.json, results.md, accuracy.png, pretraining.png.
"""

import argparse
import dataclasses
import gc
import glob
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

# As run.py: oneDNN's CPU kernels also on AVX2-only CPUs (set before
# TensorFlow loads; the stages run in this process).
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
DEFAULT_OUTPUT_DIR = os.path.join(REPO, 'benchmarks', 'results')

NUM_TRAIN = 60_000
NUM_CLASSES = 10
# Label fractions of the 60 000 training images: 6, 60 and 600 per class.
FRACTIONS = (0.001, 0.01, 0.1)
ARMS = ('supervised', 'simclr', 'self_distill', 'distill_small')
# With --memory_size: the same pretrain + finetune with the memory of
# negatives, at the plain pretraining's compute budget.
MEMORY_ARM = 'simclr_memory'
ARM_TITLES = {
    'supervised': 'Supervised from scratch (labeled subset only)',
    'simclr': 'SimCLRv2 pretrain + finetune (teacher)',
    'self_distill': 'SimCLRv2 self-distilled student (final model)',
    'distill_small': 'SimCLRv2 distilled into a half-width student',
    MEMORY_ARM: 'SimCLRv2 with the memory of negatives, pretrain + finetune',
}
PRETRAIN_TAGS = ('train/contrast_loss', 'train/contrast_acc')
TEST_SPLIT = 'test'


def fraction_key(fraction):
  """results.json's key of a fraction: '0.001', '0.01', '0.1'."""
  return f'{fraction:g}'


def per_class(fraction, num_train=NUM_TRAIN, num_classes=NUM_CLASSES):
  """Labeled images per class at `fraction` of the training images."""
  return max(1, round(fraction * num_train / num_classes))


def labeled_count(fraction, num_train=NUM_TRAIN):
  return per_class(fraction, num_train) * NUM_CLASSES


def pool_label_fraction(plan, fraction):
  """run.py's --label_fraction (relative to the pool) that selects exactly
  per_class(fraction) images per class of the pool: tf_simclr.data picks
  round(label_fraction * pool_size / num_classes) per class."""
  return labeled_count(fraction, plan.num_train) / plan.pool_size


def steps_for(epochs, num_examples, batch_size):
  """Training steps of `epochs` passes, by run.py's own rule."""
  from tf_simclr import optim  # pylint: disable=import-outside-toplevel
  return optim.total_train_steps(0, epochs, num_examples, batch_size)


# ---------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes and recipes of every stage. Epochs are over the stage's own
  training data (the pool for pretraining, distillation and the linear
  probe; the labeled subset for finetuning and the baseline)."""
  dataset: str = 'fashion_mnist'
  data_dir: str = None  # None: TFDS's default directory.
  num_train: int = NUM_TRAIN
  validation_size: int = 5_000
  depth: int = 18
  width: float = 0.125
  student_width: float = 0.0625
  image_size: int = 28
  # Pretraining (NT-Xent on the pool, LARS, no blur at 28 px).
  pretrain_batch: int = 256
  pretrain_epochs: float = 12.0
  pretrain_learning_rate: float = 1.0
  temperature: float = 0.2
  color_jitter_strength: float = 0.5
  # The smallest crop of the two pretraining views (run.py --crop_min_area)
  # and the temperature, from benchmarks/pretrain_ablation.py (3 epochs,
  # the encoder's kNN on validation; results/pretrain_ablation_*.json):
  # areas 0.08 / 0.25 / 0.5 gave 79.2 / 80.3 / 79.8 at tau 0.2, and tau
  # 0.1 / 0.2 / 0.5 gave 79.8 / 80.3 / 79.0 at area 0.25.
  pretrain_crop_min_area: float = 0.25
  # The linear probe: the reference's linear evaluation.
  linear_epochs: float = 3.0
  linear_batch: int = 512
  # Few-label training: batch and epochs per fraction (the same for the
  # baseline and finetuning: equal images seen), learning rates swept on
  # the validation split (SGD + momentum, base rate per 256 images).
  few_label_batch: dict = dataclasses.field(
      default_factory=lambda: {0.001: 32, 0.01: 64, 0.1: 128})
  few_label_epochs: dict = dataclasses.field(
      default_factory=lambda: {0.001: 120, 0.01: 30, 0.1: 10})
  # Four rates each, around what validation chose before: the baseline took
  # the top of {0.1, 0.4} (commit 7278c84) and of {0.4, 1.6} (aa3534f) at
  # both swept fractions, then at 0.1 % 1.6 of {0.4, 1.6, 6.4} (59.9, 57.1
  # at 6.4; e190523); finetuning the bottom of {0.1, 0.4}, then 0.025 of
  # {0.025, 0.1} at 0.1 % and 0.1 at 1 %, then at 0.1 % the bottom of
  # {0.0125, 0.05, 0.2} (68.5 against 64.8 at 0.05; e190523). In the run of
  # 78f69db the baseline took 6.4 of {0.4, 1.6, 3.2, 6.4} at 0.1 %, the top
  # of its grid, and 3.2 at 1 %: the grid moved up by one step. In the run
  # of 8b9a8d0 the baseline took the bottom (1.6) at every fraction, 12.8
  # diverging at 1 % and 10 % (59.1 and 10.0), and finetuning the bottom
  # (0.003125) at 0.1 % as in the run of 5d19619, its top (0.2) chosen in
  # none of the last four runs: both grids moved down by one step.
  supervised_learning_rates: tuple = (0.8, 1.6, 3.2, 6.4)
  finetune_learning_rates: tuple = (0.00078125, 0.003125, 0.0125, 0.05)
  # The smallest crop of few-label training (run.py --crop_min_area; the
  # paper's 0.08 cuts most of a 28 px garment away), chosen per arm on
  # validation after the learning rate (swept at the first area) at the
  # chosen rate. The students train on their teacher's crops. The paper's
  # 0.08 won 1 of 16 comparisons in the runs of 78f69db, c899a72, 5d19619
  # and 8b9a8d0 (the baseline at 0.1 % in 5d19619, by 1.2 points) and left
  # the grid, its time given to sweeping 10 %.
  few_label_crop_min_areas: tuple = (0.25, 1.0)
  # Fractions whose learning rates are swept, and those whose crop areas
  # are swept too; a fraction whose rates are swept but not its areas sweeps
  # the rates at the area chosen at the last fraction before it that swept
  # areas, and a fraction in neither reuses both choices of the last swept
  # one. The run of 5d19619 swept 0.1 % and 1 % only: at 10 % the baseline
  # reused 1 %'s rate 6.4 (0.16 validation points above 3.2 there) and
  # reached 84.7 on test, where 3.2 had reached 88.8 in the run before. The
  # areas chose no crop (1.0) for both arms at 1 % in both runs, by 1.6 and
  # 5.2 validation points, and are reused at 10 %.
  sweep_fractions: tuple = (0.001, 0.01, 0.1)
  crop_sweep_fractions: tuple = (0.001, 0.01)
  # Distillation on the pool (alpha 1, tau 1): epochs of the self-distilled
  # student and, per fraction, of the half-width one. At 10 % the half-width
  # student reached 85.9 / 87.6 / 89.0 on validation after 0.6 / 1.2 / 2.4
  # epochs (lr 0.05, from its own pretraining, the seed-0 teacher of the run
  # of c899a72; a separate validation ablation), 4.5 points below the
  # self-distilled one on test after 0.6: it gets 2.4 there.
  distill_batch: int = 128
  distill_epochs: float = 0.6
  distill_small_epochs: dict = dataclasses.field(
      default_factory=lambda: {0.001: 0.6, 0.01: 0.6, 0.1: 2.4})
  # Both students' learning rate (SGD + momentum, per 256) is chosen with
  # their start, on validation at each fraction (label seed 0): every
  # (start, rate) pair is a candidate. Chosen once at 0.1 % and reused, the
  # run of commit 78f69db took 0.2 there (74.3 against 73.1 at 0.05 on
  # validation) and its students fell 2 and 9 points below their stronger
  # teachers at 1 % and 10 % on the test split. On that run's seed-0
  # teachers (validation 83.0 at 1 %, 89.9 at 10 %) the self-distilled
  # student reached 83.2 / 90.0 at 0.05, 83.6 / 90.1 at 0.0125, and 83.4 /
  # 89.8 at 0.05 for twice the epochs (a separate validation ablation), so
  # 0.0125 joined the grid and the length stayed. (A run of commit e190523,
  # 0.2 alone, stopped after its 0.1 % cell, had shown the student 2.5
  # points below its teacher on the test split: that test number is why the
  # rate became a candidate at all; which rate is used is chosen on
  # validation.) In the run of 5d19619, 0.2 lost to 0.05 in all six
  # comparisons (both students, every fraction; by 0.3 to 2.0 validation
  # points) and left the grid, whose time went to sweeping 10 %. Over the
  # 18 comparisons of the runs of c899a72, 5d19619 and 8b9a8d0, 0.05 won 15
  # and lost the other 3 by at most 0.2 points (the self-distilled student
  # at 0.1 % to 0.2, at 1 % and 10 % to 0.0125, in c899a72), so it is used
  # without a comparison run (with several rates, each is compared).
  distill_learning_rates: tuple = (0.05,)
  # Initialisations of the self-distilled student compared on validation
  # (with one candidate: no comparison run): the pretrained network or its
  # teacher (the finetuned network), with a new zero-initialised linear head
  # either way, or 'scratch' (a random network). On validation at 0.1 %:
  # scratch 55.9 % against 66.0 % from the pretraining (the run of commit
  # 7278c84), the teacher 71.10 % against 70.20 % from the pretraining (the
  # run of commit 4488f32), so the teacher alone is kept.
  student_inits: tuple = ('teacher',)
  # The half-width student's starts (it cannot start from its teacher, twice
  # as wide): 'scratch' or 'pretrained', a half-width network pretrained on
  # the pool like the teacher's (the same recipe, student_pretrain_epochs;
  # run only when a candidate needs it) with a new zero-initialised head on
  # its layer 1. On validation at 0.1 %, seed 0, scratch lost at every rate
  # in the runs of e190523 (67.0 against 69.0), d579455 (50.2 against 68.8
  # at their best rates) and 78f69db (73.7 against 74.0), so the pretrained
  # start alone is kept; with several starts each is compared.
  small_student_inits: tuple = ('pretrained',)
  student_pretrain_epochs: float = 6.0
  label_seeds: dict = dataclasses.field(
      default_factory=lambda: {0.001: (0, 1, 2), 0.01: (0, 1, 2), 0.1: (0,)})
  logreg_cs: tuple = (0.1, 1.0)
  eval_steps: int = 0  # 0: whole splits.
  knn_bank_size: int = 60_000
  # The memory arm (0: not run): buffer size, momentum, and the measured
  # cost of its step relative to the plain step (the benchmark's ratio);
  # its pretraining gets pretrain_epochs / memory_step_cost epochs, the
  # plain pretraining's wall-clock budget.
  memory_size: int = 0
  memory_momentum: float = 0.99
  memory_step_cost: float = 1.0

  def __post_init__(self):
    if not set(self.crop_sweep_fractions) <= set(self.sweep_fractions):
      raise ValueError('crop_sweep_fractions must be among sweep_fractions: '
                       f'{self.crop_sweep_fractions} vs {self.sweep_fractions}')

  @property
  def arms(self):
    return ARMS + ((MEMORY_ARM,) if self.memory_size else ())

  @property
  def pool_size(self):
    return self.num_train - self.validation_size

  @property
  def train_split(self):
    return f'train[{self.validation_size}:]'

  @property
  def validation_split(self):
    return f'train[:{self.validation_size}]'

  def steps(self):
    """{stage key: training steps}."""
    steps = {
        'pretrain': steps_for(self.pretrain_epochs, self.pool_size,
                              self.pretrain_batch),
        'pretrain_small': steps_for(self.student_pretrain_epochs,
                                    self.pool_size, self.pretrain_batch),
        'pretrain_memory': steps_for(
            self.pretrain_epochs / self.memory_step_cost, self.pool_size,
            self.pretrain_batch),
        'linear_probe': steps_for(self.linear_epochs, self.pool_size,
                                  self.linear_batch),
        'distill': steps_for(self.distill_epochs, self.pool_size,
                             self.distill_batch)}
    for fraction in FRACTIONS:
      steps[f'distill_small@{fraction_key(fraction)}'] = steps_for(
          self.distill_small_epochs[fraction], self.pool_size,
          self.distill_batch)
      steps[f'few_label@{fraction_key(fraction)}'] = steps_for(
          self.few_label_epochs[fraction],
          labeled_count(fraction, self.num_train),
          self.few_label_batch[fraction])
    return steps

  def runs(self):
    """{stage kind: number of training runs} of the whole protocol."""
    seeds = sum(len(s) for s in self.label_seeds.values())
    finetunes = seeds + sum(
        self.candidates(f, self.finetune_learning_rates) - 1 for f in FRACTIONS)
    memory = 1 if self.memory_size else 0
    return {
        'pretrain': 1, 'linear_probe': 1,
        'supervised': seeds + sum(
            self.candidates(f, self.supervised_learning_rates) - 1
            for f in FRACTIONS),
        'finetune': finetunes,
        'self_distill': seeds + len(FRACTIONS) * (
            len(self.student_candidates(False)) - 1),
        'distill_small': seeds + len(FRACTIONS) * (
            len(self.student_candidates(True)) - 1),
        'pretrain_small': int('pretrained' in self.small_student_inits),
        'pretrain_memory': memory, 'linear_probe_memory': memory,
        'finetune_memory': memory * finetunes}

  def student_candidates(self, small):
    """[(start, learning rate)] compared for the half-width student (small)
    or the self-distilled one."""
    inits = self.small_student_inits if small else self.student_inits
    return [(init, rate) for init in inits
            for rate in self.distill_learning_rates]

  def candidates(self, fraction, rates):
    """How many (learning rate, crop area) pairs are tried at `fraction`."""
    if fraction not in self.sweep_fractions:
      return 1
    if fraction not in self.crop_sweep_fractions:
      return len(rates)
    return len(rates) + len(self.few_label_crop_min_areas) - 1


# Rates of run.py stages on a 2-core CPU machine (ResNet-18 width 0.125, 28
# px, training images/s; pretraining counts images, each with two views) and
# the fixed cost of a stage run in this process (tracing, input start-up, the
# end-of-run evaluation), as measured in the run of commit 78f69db on a 2-core
# Intel Xeon with AVX-512 (oneDNN on; 42.1 min in all), both pretrainings as
# measured in the run of 5d19619 (940 and 1380 images/s). The 2-core AMD EPYC
# with AVX2 only of earlier runs (commit aa3534f) runs every stage about 2x
# slower. A final run evaluates the test split (10 000 images) where a
# candidate evaluates validation (5 000): FINAL_EVAL_EXTRA_S more.
RATES = {'pretrain': 940.0, 'pretrain_small': 1380.0, 'few_label': 1200.0,
         'linear_probe': 5800.0, 'distill': 1250.0, 'distill_small': 1550.0}
STAGE_OVERHEAD_S = 12.0
TEST_EVAL_S = 6.0
FINAL_EVAL_EXTRA_S = 2.0
ANCHORS_S = 60.0  # Logistic regression and kNN on pixels (aa3534f, AMD: 90 s).
# Logistic regression on a pretraining's features (the pool, validation and
# test through the encoder, two C): about 100 s with validation alone on the
# 2-core AMD EPYC (pretrain_ablation.py --feature_logreg at d3c0991), whose
# pretraining ran 1.4x slower than the Xeon's of RATES.
FEATURE_LOGREG_S = 80.0


def estimate_seconds(plan, rates=RATES, overhead=STAGE_OVERHEAD_S):
  """Expected wall time, {part: seconds} plus 'total'."""
  steps, runs = plan.steps(), plan.runs()
  few = {f: steps[f'few_label@{fraction_key(f)}'] * plan.few_label_batch[f]
         / rates['few_label'] + overhead for f in FRACTIONS}
  seeds = {f: len(plan.label_seeds[f]) for f in FRACTIONS}
  estimate = {
      'pretrain': steps['pretrain'] * plan.pretrain_batch / rates['pretrain']
                  + overhead,
      'pretrain_small': runs['pretrain_small'] * (
          steps['pretrain_small'] * plan.pretrain_batch /
          rates['pretrain_small'] + overhead),
      'linear_probe': steps['linear_probe'] * plan.linear_batch /
                      rates['linear_probe'] + overhead,
      'supervised': sum(few[f] * (plan.candidates(
          f, plan.supervised_learning_rates) + seeds[f] - 1)
                        for f in FRACTIONS),
      'finetune': sum(few[f] * (plan.candidates(
          f, plan.finetune_learning_rates) + seeds[f] - 1)
                      for f in FRACTIONS),
      'self_distill': runs['self_distill'] * (
          steps['distill'] * plan.distill_batch / rates['distill'] + overhead),
      'distill_small': sum(
          (seeds[f] + len(plan.student_candidates(True)) - 1) * (
              steps[f'distill_small@{fraction_key(f)}'] * plan.distill_batch /
              rates['distill_small'] + overhead) for f in FRACTIONS),
      # A separate test pass only for the chosen run of a sweep; a final run
      # evaluates the test split instead of validation (no extra stage).
      'test_evaluations': TEST_EVAL_S * (
          2 * len(plan.sweep_fractions) + len(FRACTIONS) * (
              (len(plan.student_candidates(False)) > 1) +
              (len(plan.student_candidates(True)) > 1))) + FINAL_EVAL_EXTRA_S * (
              2 + runs['pretrain_small'] + 4 * sum(seeds.values())),
      'raw_pixel_anchors': ANCHORS_S,
      'feature_logreg': FEATURE_LOGREG_S * (1 + bool(plan.memory_size)),
  }
  if plan.memory_size:
    # The plain pretraining's budget again, its linear probe and finetunes.
    estimate['memory_arm'] = (
        estimate['pretrain'] + estimate['linear_probe'] + estimate['finetune']
        + TEST_EVAL_S * len(plan.sweep_fractions))
  estimate['total'] = sum(estimate.values())
  return estimate


def make_plan(scale=1, quick=False):
  """The default plan, a tiny --quick one, or --scale=N: N times the widths
  and every stage's epochs (the GPU configuration)."""
  plan = Plan()
  if quick:
    return dataclasses.replace(
        plan, width=0.0625, student_width=0.0625, pretrain_batch=64,
        pretrain_epochs=256 / plan.pool_size, linear_epochs=512 / plan.pool_size,
        linear_batch=128, few_label_batch={f: 16 for f in FRACTIONS},
        few_label_epochs={0.001: 1, 0.01: 0.2, 0.1: 0.02},
        supervised_learning_rates=(0.1, 0.4), finetune_learning_rates=(0.1, 0.4),
        few_label_crop_min_areas=(0.25, 1.0), sweep_fractions=(0.001,),
        crop_sweep_fractions=(0.001,),
        distill_batch=32, distill_epochs=128 / plan.pool_size,
        distill_small_epochs={f: 128 / plan.pool_size for f in FRACTIONS},
        student_inits=('pretrained', 'teacher'), distill_learning_rates=(0.2,),
        student_pretrain_epochs=256 / plan.pool_size,
        label_seeds={0.001: (0, 1), 0.01: (0,), 0.1: (0,)},
        logreg_cs=(1.0,), eval_steps=2, knn_bank_size=2_000)
  if scale == 1:
    return plan
  return dataclasses.replace(
      plan, width=plan.width * scale, student_width=plan.student_width * scale,
      pretrain_epochs=plan.pretrain_epochs * scale,
      student_pretrain_epochs=plan.student_pretrain_epochs * scale,
      linear_epochs=plan.linear_epochs * scale,
      few_label_epochs={f: e * scale for f, e in plan.few_label_epochs.items()},
      distill_epochs=plan.distill_epochs * scale,
      distill_small_epochs={f: e * scale for f, e in
                            plan.distill_small_epochs.items()})


# ---------------------------------------------------------------- flags of each stage
def common_flags(plan, width):
  return [f'--dataset={plan.dataset}', f'--image_size={plan.image_size}',
          *([f'--data_dir={plan.data_dir}'] if plan.data_dir else []),
          f'--resnet_depth={plan.depth}', f'--width_multiplier={width}',
          f'--train_split={plan.train_split}',
          f'--eval_split={plan.validation_split}', '--eval_batch_size=1000',
          f'--eval_steps={plan.eval_steps}', '--mode=train_then_eval',
          '--export=false', '--global_bn=false', '--keep_checkpoint_max=1',
          '--cache_dataset']


def _duration(steps):
  # One checkpoint, at the end; progress logged about 20 times.
  return [f'--train_steps={steps}', f'--checkpoint_steps={steps}',
          f'--steps_per_loop={max(1, min(100, steps // 20))}']


def pretrain_flags(plan, model_dir, memory=False, small=False):
  """The pretraining of the teacher's network, with memory its memory-of-
  negatives variant, with small the half-width student's network."""
  memory_flags = [f'--memory_size={plan.memory_size}',
                  f'--memory_momentum={plan.memory_momentum}'] if memory else []
  steps = plan.steps()['pretrain_memory' if memory else
                       'pretrain_small' if small else 'pretrain']
  width = plan.student_width if small else plan.width
  return common_flags(plan, width) + _duration(steps) + memory_flags + [
      '--train_mode=pretrain', f'--model_dir={model_dir}',
      f'--train_batch_size={plan.pretrain_batch}', '--optimizer=lars',
      f'--learning_rate={plan.pretrain_learning_rate}',
      '--learning_rate_scaling=linear', '--weight_decay=1e-6',
      '--warmup_epochs=1', f'--temperature={plan.temperature}',
      f'--color_jitter_strength={plan.color_jitter_strength}',
      f'--crop_min_area={plan.pretrain_crop_min_area}', '--use_blur=false',
      f'--knn_bank_size={plan.knn_bank_size}']


def linear_probe_flags(plan, model_dir, checkpoint):
  """The reference's linear evaluation: only a new zero-initialised head on
  the frozen backbone's final_avg_pool, all the pool's labels, SGD +
  momentum at lr 0.1 per 256, no weight decay."""
  return common_flags(plan, plan.width) + _duration(
      plan.steps()['linear_probe']) + [
          '--train_mode=finetune', f'--model_dir={model_dir}',
          f'--checkpoint={checkpoint}', '--fine_tune_after_block=4',
          '--ft_proj_selector=0', '--zero_init_logits_layer',
          f'--train_batch_size={plan.linear_batch}', '--optimizer=momentum',
          '--learning_rate=0.1', '--learning_rate_scaling=linear',
          '--weight_decay=0', '--warmup_epochs=0']


def few_label_name(prefix, key, seed, learning_rate, crop_min_area):
  """The stage name of a few-label run."""
  return f'{prefix}@{key}_seed{seed}_lr{learning_rate:g}_area{crop_min_area:g}'


def few_label_flags(plan, fraction, seed, model_dir, learning_rate,
                    checkpoint, crop_min_area):
  """Training on the labeled subset: everything trained, SGD + momentum,
  weight decay 5e-4, cosine, crops of crop_min_area to 1 of the image.
  checkpoint: a pretraining (finetuning from projection-head layer 1 with a
  zero-initialised head: SimCLRv2) or 'scratch' (the supervised baseline: a
  plain ResNet and a linear head)."""
  from_scratch = checkpoint == 'scratch'
  steps = plan.steps()[f'few_label@{fraction_key(fraction)}']
  epochs = plan.few_label_epochs[fraction]
  return common_flags(plan, plan.width) + _duration(steps) + [
      '--train_mode=finetune', f'--model_dir={model_dir}',
      f'--checkpoint={checkpoint}',
      f'--label_fraction={pool_label_fraction(plan, fraction)!r}',
      f'--label_seed={seed}',
      f'--train_batch_size={plan.few_label_batch[fraction]}',
      f'--ft_proj_selector={0 if from_scratch else 1}',
      '--fine_tune_after_block=-1', '--optimizer=momentum',
      f'--learning_rate={learning_rate}', '--learning_rate_scaling=linear',
      '--weight_decay=5e-4', f'--crop_min_area={crop_min_area}',
      f'--warmup_epochs={epochs / 20 if from_scratch else 0}'] + (
          [] if from_scratch else ['--zero_init_logits_layer'])


def student_init_checkpoint(init, pretrain_dir, teacher):
  """The --checkpoint a student starts from: 'pretrained' (pretrain_dir, a
  pretraining of the student's own width), 'teacher' or 'scratch' (None)."""
  return {'pretrained': pretrain_dir, 'teacher': teacher,
          'scratch': None}[init]


def distill_flags(plan, model_dir, teacher, learning_rate, fraction,
                  small=False, init_checkpoint=None, crop_min_area=None):
  """The student on the pool without labels (alpha 1, tau 1), SGD + momentum,
  crops of crop_min_area to 1 of the image (its teacher's; None: run.py's
  default): the teacher's architecture, or with small the half-width
  student.
  init_checkpoint: a pretraining of the student's width or the teacher (the
  student then reads projection-head layer 1, like its teacher, through a new
  zero-initialised head) or None (a plain ResNet from scratch)."""
  width = plan.student_width if small else plan.width
  steps = plan.steps()[f'distill_small@{fraction_key(fraction)}' if small
                       else 'distill']
  flags = common_flags(plan, width) + _duration(steps) + [
      '--train_mode=distill', f'--model_dir={model_dir}',
      f'--teacher_checkpoint={teacher}', '--distill_alpha=1',
      '--distill_temperature=1', f'--train_batch_size={plan.distill_batch}',
      '--optimizer=momentum', f'--learning_rate={learning_rate}',
      '--learning_rate_scaling=linear', '--weight_decay=1e-4',
      '--warmup_epochs=0.05'] + (
          [] if crop_min_area is None else [f'--crop_min_area={crop_min_area}'])
  if init_checkpoint:
    return flags + [f'--checkpoint={init_checkpoint}', '--ft_proj_selector=1',
                    '--zero_init_logits_layer']
  return flags + ['--ft_proj_selector=0']


def test_flags(flags, train=False):
  """A stage's flags with its evaluation on the test split, whole, written
  to result_test.json: a single evaluation of its model_dir, or with train
  the training run itself evaluating the test split at its end (a final run,
  whose validation score would choose nothing)."""
  kept = [f for f in flags if not f.startswith(('--mode=', '--eval_split=',
                                                '--eval_name=',
                                                '--eval_steps='))]
  return kept + [f'--mode={"train_then_eval" if train else "eval"}',
                 f'--eval_split={TEST_SPLIT}', '--eval_name=test',
                 '--eval_steps=0']


# ---------------------------------------------------------------- running stages
class StageFailed(RuntimeError):
  pass


def _run_py_in_process(flags):
  """run.py's main() on `flags` in this process; returns its summary."""
  import run as run_py  # pylint: disable=import-outside-toplevel
  return run_py.run_in_process(['run.py', *flags])


def _run_py_subprocess(flags, log_path):
  command = [sys.executable, os.path.join(REPO, 'run.py'), *flags]
  with open(log_path, 'w') as log:
    completed = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=log, text=True, check=False)
  if completed.returncode != 0:
    raise StageFailed(f'exit status {completed.returncode}')
  lines = [l for l in completed.stdout.splitlines() if l.startswith('{')]
  return json.loads(lines[-1]) if lines else {}


class Stages:
  """Runs run.py stages (in this process or as subprocesses), records their
  wall time and reuses stages already done in work_dir."""

  def __init__(self, work_dir, subprocesses=False, echo=print):
    self.work_dir = work_dir
    self.subprocesses = subprocesses
    self.echo = echo
    self.records = {}
    os.makedirs(os.path.join(work_dir, 'logs'), exist_ok=True)

  def model_dir(self, name):
    return os.path.join(self.work_dir, name.replace('@', '_'))

  def run(self, name, flags, result_name='result'):
    """Runs a stage once; returns {'result': result json, 'seconds',
    'train': the training summary (images_per_sec ...)}."""
    model_dir = _flag_value(flags, 'model_dir')
    record_path = os.path.join(model_dir, f'stage_{result_name}.json')
    if name in self.records:  # Run (or reused) earlier in this invocation.
      return self.records[name]
    if os.path.exists(record_path):
      with open(record_path) as f:
        record = json.load(f)
      self.echo(f'[{name}] done before ({record["seconds"]:.0f} s), reused')
      record['reused'] = True
    else:
      os.makedirs(model_dir, exist_ok=True)
      self.echo(f'[{name}] run.py {shlex.join(flags)}')
      started = time.time()
      try:
        if self.subprocesses:
          summary = _run_py_subprocess(flags, os.path.join(
              self.work_dir, 'logs', name.replace('@', '_') + '.log'))
        else:
          summary = _run_py_in_process(flags) or {}
      except Exception as error:  # pylint: disable=broad-except
        raise StageFailed(f'stage {name} failed: '
                          f'{type(error).__name__}: {error}') from error
      seconds = time.time() - started
      with open(os.path.join(model_dir, f'{result_name}.json')) as f:
        result = json.load(f)
      record = {'seconds': seconds, 'result': result,
                'train': summary.get('train') or {}}
      with open(record_path, 'w') as f:
        json.dump(record, f, indent=1, sort_keys=True)
    self.records[name] = record
    result = record['result']
    shown = ' '.join(f'{key} {result[key]:.4f}' for key in (
        'label_top_1_accuracy', 'knn_top_1') if key in result)
    self.echo(f'[{name}] {record["seconds"]:.0f} s, {result["eval_split"]}: '
              f'{shown}')
    return record

  def validation_top_1(self, name, flags, key='label_top_1_accuracy'):
    return self.run(name, flags)['result'][key]

  def test(self, name, flags):
    """The one test-split evaluation of a final model trained before."""
    return self.run(name + ':test', test_flags(flags), result_name='result_test'
                    )['result']

  def train_and_test(self, name, flags):
    """A final model trained and evaluated once, on the test split."""
    return self.run(name, test_flags(flags, train=True),
                    result_name='result_test')['result']

  def timings(self):
    """{stage: {'seconds', 'train_images_per_sec', 'overhead_s'}}: overhead
    is the wall time not spent in training steps (tracing, input start-up,
    evaluation)."""
    out = {}
    for name, record in self.records.items():
      entry = {'seconds': round(record['seconds'], 1)}
      if record.get('reused'):
        entry['reused'] = True  # Done by an earlier run in the same work_dir.
      train = record.get('train') or {}
      if train.get('images_per_sec') and train.get('global_step'):
        entry['train_images_per_sec'] = round(train['images_per_sec'], 1)
      out[name] = entry
    return out


def _flag_value(flags, name):
  for flag in flags:
    if flag.startswith(f'--{name}='):
      return flag.split('=', 1)[1]
  raise KeyError(name)


# ---------------------------------------------------------------- the raw-pixel anchors
def split_arrays(dataset, split, image_size, limit=None, data_dir=None):
  """(pixels float32 [N, image_size², ] in [0, 1], labels int32 [N]) of a
  split through the eval preprocessing (first channel: grey images)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tf_simclr import data  # pylint: disable=import-outside-toplevel
  config = data.InputConfig(dataset=dataset, split=split, data_dir=data_dir,
                            image_size=image_size, batch_size=1000,
                            augmentation='eval', is_training=False)
  images, labels = [], []
  for batch_images, batch_labels in data.build_dataset(config):
    images.append(batch_images.numpy()[..., 0].reshape(
        len(batch_labels), -1))
    labels.append(batch_labels.numpy())
    if limit and sum(len(l) for l in labels) >= limit:
      break
  images, labels = np.concatenate(images), np.concatenate(labels)
  return (images[:limit], labels[:limit]) if limit else (images, labels)


def encoder_features(plan, model_dir, splits, key='final_avg_pool'):
  """[(features float32 [N, D], labels int32 [N]) per split] of the network
  trained in `model_dir` (its config.json and latest checkpoint, restored
  once) through the eval preprocessing, in inference mode."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tf_simclr import architecture  # pylint: disable=import-outside-toplevel
  from tf_simclr import checkpoints  # pylint: disable=import-outside-toplevel
  from tf_simclr import config as config_lib  # pylint: disable=import-outside-toplevel
  from tf_simclr import data  # pylint: disable=import-outside-toplevel
  from tf_simclr import knn  # pylint: disable=import-outside-toplevel
  from tf_simclr import model as model_lib  # pylint: disable=import-outside-toplevel
  record = architecture.ModelConfig.from_dict(
      config_lib.read_architecture(model_dir))
  model = model_lib.build_model(record,
                                supervised_training=bool(record.num_classes))
  tf.train.Checkpoint(model=model).read(
      checkpoints.resolve_checkpoint(model_dir)).expect_partial()
  return [knn.extract_features(model, data.build_dataset(data.InputConfig(
      dataset=plan.dataset, split=split, data_dir=plan.data_dir,
      image_size=plan.image_size, batch_size=1000, augmentation='eval',
      is_training=False)), key=key) for split in splits]


def split_keys_and_labels(plan, split):
  """(keys, labels) of a split's examples, as tf_simclr.data reads them."""
  from tf_simclr import sources  # pylint: disable=import-outside-toplevel
  return sources.source(plan.dataset, plan.data_dir).keys_and_labels(split)


def labeled_subset_keys(plan, fraction, seed):
  """Keys of the labeled images of (fraction, seed): what run.py's
  --label_fraction / --label_seed select from the pool."""
  from tf_simclr import data  # pylint: disable=import-outside-toplevel
  keys, labels = split_keys_and_labels(plan, plan.train_split)
  mask = data.label_subset_mask(keys, labels, NUM_CLASSES,
                                pool_label_fraction(plan, fraction),
                                seed)
  return keys[mask]


def logistic_regression_accuracy(train_x, train_y, eval_x, eval_y, c,
                                 max_iter=200):
  """Top-1 of multinomial L2-regularised logistic regression (scikit-learn,
  lbfgs; C = 1 / regularisation strength)."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  model = LogisticRegression(C=c, max_iter=max_iter)
  model.fit(train_x, train_y)
  return float((model.predict(eval_x) == eval_y).mean()), model


def logistic_regression_by_c(train, evaluation, cs):
  """({C: top-1 on `evaluation`}, {C: fitted model}) of
  logistic_regression_accuracy fitted on `train`; both are (x, y) pairs."""
  by_c, models = {}, {}
  for c in cs:
    by_c[c], models[c] = logistic_regression_accuracy(*train, *evaluation, c)
  return by_c, models


def standardise(train_x, *others):
  """[train_x, *others] shifted and scaled by train_x's per-column mean and
  standard deviation (a constant column is only shifted)."""
  mean, std = train_x.mean(axis=0), train_x.std(axis=0)
  std = (std + (std == 0)).astype(train_x.dtype)
  return [(x - mean) / std for x in (train_x, *others)]


def feature_logistic_regression(plan, model_dir, cs=None, test=False,
                                key='final_avg_pool'):
  """The raw-pixel anchor's logistic regression on the frozen encoder's
  features instead of pixels: fitted on the pool's `key` features (all its
  labels, standardised with the pool's statistics), C chosen on the
  validation split. Returns {'validation': {C: top-1}, 'c': the chosen C}
  and, with `test`, 'test_top_1': the chosen model's top-1 on the test split
  (the only read of it)."""
  splits = [plan.train_split, plan.validation_split] + (
      [TEST_SPLIT] if test else [])
  features = encoder_features(plan, model_dir, splits, key)
  xs = standardise(*(x for x, _ in features))
  (pool, pool_y), (validation, validation_y), *rest = [
      (x, y) for x, (_, y) in zip(xs, features)]
  by_c, models = logistic_regression_by_c(
      (pool, pool_y), (validation, validation_y), cs or plan.logreg_cs)
  best_c = best_of(by_c)
  out = {'validation': by_c, 'c': best_c}
  for test_x, test_y in rest:
    out['test_top_1'] = float(
        (models[best_c].predict(test_x) == test_y).mean())
  return out


def pixel_splits(plan, *splits):
  """split_arrays of each split (2 000 images each in a --quick plan)."""
  limit = 2_000 if plan.eval_steps else None
  return [split_arrays(plan.dataset, split, plan.image_size, limit,
                       plan.data_dir) for split in splits]


def raw_pixel_validation(plan, cs=None):
  """The raw-pixel logistic regression's {C: top-1 on the validation split}
  (fitted on the pool's pixels, all its labels)."""
  pool, validation = pixel_splits(plan, plan.train_split,
                                  plan.validation_split)
  return logistic_regression_by_c(pool, validation, cs or plan.logreg_cs)[0]


def raw_pixel_anchors(plan, echo=print):
  """Logistic regression and the k-200 cosine kNN on raw pixels: fitted on
  the pool (all its labels), C chosen on validation, read once on test."""
  from tf_simclr import knn  # pylint: disable=import-outside-toplevel
  started = time.time()
  pool, validation, test = pixel_splits(
      plan, plan.train_split, plan.validation_split, TEST_SPLIT)
  by_c, models = logistic_regression_by_c(pool, validation, plan.logreg_cs)
  for c, top_1 in by_c.items():
    echo(f'[raw pixels] logistic regression C={c}: validation {top_1:.4f}')
  best_c = best_of(by_c)
  logreg = float((models[best_c].predict(test[0]) == test[1]).mean())
  knn_top_1 = knn.knn_accuracy(*pool, *test, num_classes=NUM_CLASSES)
  echo(f'[raw pixels] test: logistic regression {logreg:.4f} (C={best_c}), '
       f'kNN {knn_top_1:.4f} ({time.time() - started:.0f} s)')
  return {'raw_pixel_logreg_top_1': logreg, 'raw_pixel_knn_top_1': knn_top_1,
          'raw_pixel_logreg_c': best_c,
          'raw_pixel_logreg_validation': {str(c): a for c, a in by_c.items()},
          'seconds': time.time() - started}


# ---------------------------------------------------------------- the protocol
def best_of(scores):
  """The key with the highest validation score (the first on a tie)."""
  return max(scores, key=lambda key: (scores[key], -list(scores).index(key)))


def _last_swept(choices, prefix):
  """The key of the last choice named `prefix`... that was swept, not
  reused."""
  return [key for key in choices if key.startswith(prefix)
          and 'reused_from' not in choices[key]][-1]


def run_protocol(plan, stages, echo=print):
  """Runs every stage; returns the results dict (without outputs/metadata)."""
  arms = plan.arms
  top_1 = {arm: {} for arm in arms}
  seeds_top_1 = {arm: {} for arm in arms}
  choices, encoder, agreement = {}, {}, {}

  # Pretraining, its kNN and linear probe.
  pretrain_dir = stages.model_dir('pretrain')
  encoder.update(measure_pretraining(plan, stages, 'pretrain', 'linear_probe'))
  anchors = cached_raw_pixel_anchors(plan, stages, echo)
  encoder.update(anchors)
  memory_dir = None
  if plan.memory_size:
    # The same pretraining with the memory of negatives, for the plain
    # one's budget; its kNN and linear probe as above.
    memory_dir = stages.model_dir('pretrain_memory')
    encoder.update({f'memory_{key}': value for key, value in
                    measure_pretraining(plan, stages, 'pretrain_memory',
                                        'linear_probe_memory',
                                        memory=True).items()})

  # The half-width network's own pretraining, run when a student candidate
  # needs it.
  pretrain_dirs = {'self_distill': pretrain_dir,
                   'distill_small': lambda: small_pretraining(
                       plan, stages, encoder)}
  for fraction in FRACTIONS:
    key = fraction_key(fraction)
    seeds = plan.label_seeds[fraction]
    teachers = {}
    # The supervised baseline and finetuning: the learning rate of each on
    # the validation split at label seed 0, the same number of candidates.
    few_label_arms = [
        ('supervised', plan.supervised_learning_rates, 'scratch'),
        ('simclr', plan.finetune_learning_rates, pretrain_dir)]
    if memory_dir:
      few_label_arms.append((MEMORY_ARM, plan.finetune_learning_rates,
                             memory_dir))
    for arm, rates, checkpoint in few_label_arms:
      prefix = {'supervised': 'supervised', 'simclr': 'finetune',
                MEMORY_ARM: 'finetune_memory'}[arm]
      areas = plan.few_label_crop_min_areas
      rate_key = f'{arm}_learning_rate@{key}'
      area_key = f'{arm}_crop_min_area@{key}'
      reused = {}  # {choice key: the key of the choice it reuses}
      if fraction not in plan.sweep_fractions:
        reused[rate_key] = _last_swept(choices, f'{arm}_learning_rate@')
        rates = (choices[reused[rate_key]]['chosen'],)
      if fraction not in plan.crop_sweep_fractions:
        reused[area_key] = _last_swept(choices, f'{arm}_crop_min_area@')
        areas = (choices[reused[area_key]]['chosen'],)
      # The rate at the first crop area, then the crop area at that rate.
      flags_of = {}

      def candidate(rate, area):
        name = few_label_name(prefix, key, seeds[0], rate, area)
        flags_of[rate, area] = few_label_flags(
            plan, fraction, seeds[0], stages.model_dir(name), rate,
            checkpoint, crop_min_area=area)
        return stages.validation_top_1(name, flags_of[rate, area])

      rate_scores = ({r: candidate(r, areas[0]) for r in rates}
                     if len(rates) > 1 else {})
      rate = best_of(rate_scores) if rate_scores else rates[0]
      area_scores = ({a: candidate(rate, a) for a in areas}
                     if len(areas) > 1 else {})
      area = best_of(area_scores) if area_scores else areas[0]
      choices[rate_key] = {
          'validation_top_1': {f'{r:g}': v for r, v in rate_scores.items()},
          'chosen': rate, 'crop_min_area': areas[0]}
      choices[area_key] = {
          'validation_top_1': {f'{a:g}': v for a, v in area_scores.items()},
          'chosen': area, 'learning_rate': rate}
      for choice_key, source in reused.items():
        choices[choice_key]['reused_from'] = source
      per_seed = []
      for seed in seeds:
        name = few_label_name(prefix, key, seed, rate, area)
        if (rate, area) in flags_of and seed == seeds[0]:
          # Trained in the sweep.
          result = stages.test(name, flags_of[rate, area])
        else:
          result = stages.train_and_test(name, few_label_flags(
              plan, fraction, seed, stages.model_dir(name), rate, checkpoint,
              crop_min_area=area))
        per_seed.append(result['label_top_1_accuracy'])
        if arm == 'simclr':
          teachers[seed] = stages.model_dir(name)
      seeds_top_1[arm][key] = per_seed
    # Distillation of each seed's teacher on the pool, without labels, on
    # the teacher's crops; each student's start and learning rate chosen at
    # this fraction (seed 0): the teachers differ too much across fractions
    # for one choice to carry over.
    teacher_crop = choices[f'simclr_crop_min_area@{key}']['chosen']
    for arm, small in (('self_distill', False), ('distill_small', True)):
      recipe = _choose_student(plan, stages, arm, key, seeds[0],
                               teachers[seeds[0]], pretrain_dirs[arm],
                               choices, teacher_crop)
      chosen_on = choices[f'{arm}_student@{key}'].get('run')
      per_seed = []
      for seed in seeds:
        name, flags = _student_run(plan, stages, arm, key, seed,
                                   teachers[seed], pretrain_dirs[arm],
                                   *recipe, crop_min_area=teacher_crop)
        result = (stages.test(name, flags) if name == chosen_on else
                  stages.train_and_test(name, flags))
        per_seed.append(result['label_top_1_accuracy'])
        agreement.setdefault(arm, {}).setdefault(key, []).append(
            result.get('teacher_agreement'))
      seeds_top_1[arm][key] = per_seed
    for arm in arms:
      top_1[arm][key] = sum(seeds_top_1[arm][key]) / len(seeds_top_1[arm][key])
    echo(f'== {fraction:.1%} labels, test top-1: ' + ', '.join(
        f'{arm} {top_1[arm][key]:.4f}' for arm in arms))
  return {'arms': list(arms), 'top_1': top_1, 'top_1_seeds': seeds_top_1,
          'encoder': encoder, 'validation_choices': choices,
          'teacher_agreement': agreement}


def measure_pretraining(plan, stages, name, probe_name, memory=False):
  """Runs a pretraining and its linear probe, each evaluated on the test split
  at its end (no choice is made on either); returns the encoder's kNN, the
  pretraining's linear head and the probe's top-1."""
  model_dir = stages.model_dir(name)
  test = stages.train_and_test(name, pretrain_flags(plan, model_dir,
                                                    memory=memory))
  probe = linear_probe_flags(plan, stages.model_dir(probe_name), model_dir)
  logreg = cached_feature_logistic_regression(plan, stages, name)
  return {
      'knn_top_1': test['knn_top_1'],
      'pretrain_linear_head_top_1': test['label_top_1_accuracy'],
      'linear_probe_top_1': stages.train_and_test(probe_name, probe)[
          'label_top_1_accuracy'],
      'feature_logreg_top_1': logreg['test_top_1'],
      'feature_logreg_c': logreg['c'],
      'feature_logreg_validation': logreg['validation'],
  }


def cached_feature_logistic_regression(plan, stages, name):
  """feature_logistic_regression of the pretraining `name` with its test
  read, computed once per model_dir (feature_logreg.json) and timed as the
  stage `{name}_feature_logreg`."""
  def compute():
    started = time.time()
    logreg = feature_logistic_regression(plan, stages.model_dir(name),
                                         test=True)
    return {'validation': {str(c): top_1 for c, top_1 in
                           logreg['validation'].items()},
            'c': logreg['c'], 'test_top_1': logreg['test_top_1'],
            'seconds': time.time() - started}

  logreg, reused = _computed_once(
      stages, os.path.join(stages.model_dir(name), 'feature_logreg.json'),
      f'{name}_feature_logreg', compute)
  stages.echo(f'[{name}] logistic regression on its features: test '
              f'{logreg["test_top_1"]:.4f} (C={logreg["c"]})'
              f'{", reused" if reused else ""}')
  return logreg


def _computed_once(stages, path, stage_name, compute):
  """(compute()'s JSON dict, False), written to `path`, or (the dict read
  from `path`, True) when an earlier run wrote it; recorded as the stage
  `stage_name` with the dict's 'seconds'."""
  reused = os.path.exists(path)
  if reused:
    with open(path) as f:
      value = json.load(f)
  else:
    value = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump(value, f, indent=1, sort_keys=True)
  stages.records[stage_name] = {'seconds': value['seconds'], 'result': {},
                                'reused': reused}
  return value, reused


def cached_raw_pixel_anchors(plan, stages, echo=print):
  """raw_pixel_anchors, computed once per work_dir (raw_pixel_anchors.json)."""
  anchors, reused = _computed_once(
      stages, os.path.join(stages.work_dir, 'raw_pixel_anchors.json'),
      'raw_pixel_anchors', lambda: raw_pixel_anchors(plan, echo))
  if reused:
    echo(f'[raw pixels] done before ({anchors["seconds"]:.0f} s), reused')
  return {key: value for key, value in anchors.items() if key != 'seconds'}


def _called(value):
  """value(), or value itself when it is not callable."""
  return value() if callable(value) else value


def small_pretraining(plan, stages, encoder):
  """The half-width student's own pretraining (run once, reused after);
  records its kNN in encoder['student_knn_top_1']; returns its model_dir."""
  model_dir = stages.model_dir('pretrain_small')
  test = stages.train_and_test('pretrain_small', pretrain_flags(
      plan, model_dir, small=True))
  encoder['student_knn_top_1'] = test['knn_top_1']
  return model_dir


def _student_run(plan, stages, arm, key, seed, teacher, pretrain_dir, init,
                 rate, crop_min_area):
  """(stage name, flags) of a student of `arm` for (key, seed): starting
  from init ('pretrained' reads pretrain_dir, called first when it is a
  function), trained at learning rate `rate` on crops of crop_min_area to 1
  (its teacher's finetuning crops)."""
  name = (f'{arm}@{key}_seed{seed}_{init}_lr{rate:g}'
          f'_area{crop_min_area:g}')
  start = student_init_checkpoint(
      init, _called(pretrain_dir) if init == 'pretrained' else None, teacher)
  return name, distill_flags(plan, stages.model_dir(name), teacher, rate,
                             float(key),
                             small=arm == 'distill_small',
                             init_checkpoint=start,
                             crop_min_area=crop_min_area)


def _choose_student(plan, stages, arm, key, seed, teacher, pretrain_dir,
                    choices, crop_min_area):
  """A student's (start, learning rate) at fraction `key` among
  plan.student_candidates: with several, each trained once on label seed
  `seed` and the best on validation kept (its run is then that seed's final
  run: 'run' in the record `{arm}_student@{key}`).
  pretrain_dir: the pretraining of the student's width, or a function
  running it (called only when a candidate starts from it)."""
  small = arm == 'distill_small'
  candidates = plan.student_candidates(small)
  record_key = f'{arm}_student@{key}'
  label = lambda init, rate: f'{init} lr{rate:g}'  # pylint: disable=unnecessary-lambda-assignment
  if len(candidates) == 1:
    where = 'Plan.small_student_inits' if small else 'Plan.student_inits'
    choices[record_key] = {
        'validation_top_1': {}, 'chosen': label(*candidates[0]),
        'chosen_at': f'an earlier run of this protocol (see {where})'}
    return candidates[0]
  scores, names = {}, {}
  for init, rate in candidates:
    name, flags = _student_run(plan, stages, arm, key, seed, teacher,
                               pretrain_dir, init, rate, crop_min_area)
    names[init, rate] = name
    scores[init, rate] = stages.validation_top_1(name, flags)
  chosen = best_of(scores)
  choices[record_key] = {
      'validation_top_1': {label(*c): score for c, score in scores.items()},
      'chosen': label(*chosen), 'chosen_at': key, 'run': names[chosen]}
  return chosen


# ---------------------------------------------------------------- event files
def read_scalars(model_dir, tags=PRETRAIN_TAGS):
  """{tag: [(step, value), ...]} sorted by step, from the TensorBoard event
  files directly in model_dir (the last value wins for a repeated step)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  found = {tag: {} for tag in tags}
  for path in sorted(glob.glob(os.path.join(model_dir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag not in found:
          continue
        if value.HasField('tensor'):
          number = float(tf.make_ndarray(value.tensor))
        else:
          number = float(value.simple_value)
        found[value.tag][int(event.step)] = number
  return {tag: sorted(points.items()) for tag, points in found.items()}


# ---------------------------------------------------------------- outputs
def machine_info():
  from tf_simclr import distribute  # pylint: disable=import-outside-toplevel
  cpu = distribute.cpu_model_name(platform.processor() or 'unknown')
  info = {'cpu': cpu, 'cores': os.cpu_count(),
          'python': platform.python_version(), 'platform': platform.platform()}
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    info['tensorflow'] = tf.__version__
    info['gpus'] = len(tf.config.list_physical_devices('GPU'))
  except ImportError:
    info['tensorflow'] = 'unknown'
  try:
    info['load_average_at_end'] = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    pass
  return info


def git_info():
  def git(*args):
    return subprocess.run(['git', *args], cwd=REPO, capture_output=True,
                          text=True, check=False).stdout.strip()
  dirty = git('status', '--porcelain', '--', 'run.py', 'tf_simclr', 'export',
              'benchmarks/semi_supervised.py', 'benchmarks/main_job_recipe.py',
              'scripts/main_job.py')
  return {'commit': git('rev-parse', 'HEAD'),
          'uncommitted_changes_in_code': bool(dirty)}


def fraction_label(fraction):
  return f'{fraction * 100:g} %'


def _cell(values):
  """'mean (min–max)' in percent of a list of per-seed accuracies."""
  values = [v for v in values or [] if v is not None]
  if not values:
    return '—'
  mean = 100 * sum(values) / len(values)
  if len(values) == 1:
    return f'{mean:.2f}'
  return f'{mean:.2f} ({100 * min(values):.1f}–{100 * max(values):.1f})'


def markdown_table(results):
  """The results as Markdown: accuracy per arm and fraction (mean and
  min–max over label seeds), gains, the encoder, choices and wall times."""
  fractions = results['fractions']
  seeds = results['top_1_seeds']
  mean = results['top_1']
  head = '| arm | ' + ' | '.join(
      f'{fraction_label(float(f))} labels ({results["labeled_images"][f]} '
      f'images, {len(seeds["supervised"].get(f, []))} '
      f'seed{"s" if len(seeds["supervised"].get(f, [])) != 1 else ""})'
      for f in fractions) + ' |'
  lines = [head, '|---|' + '---:|' * len(fractions)]
  arms = results.get('arms', ARMS)
  for arm in arms:
    lines.append(f'| {ARM_TITLES[arm]} | ' + ' | '.join(
        _cell(seeds.get(arm, {}).get(f)) for f in fractions) + ' |')
  for arm in ('simclr', 'self_distill') + (
      (MEMORY_ARM,) if MEMORY_ARM in arms else ()):
    gains = []
    for f in fractions:
      a, b = mean.get(arm, {}).get(f), mean.get('supervised', {}).get(f)
      gains.append('—' if a is None or b is None else
                   f'{100 * (a - b):+.2f}')
    lines.append(f'| *{arm} − supervised (points)* | ' + ' | '.join(gains)
                 + ' |')
  text = ['Test top-1 accuracy (%) on Fashion-MNIST (10 000 test images): '
          'mean over label seeds (min–max).', '', *lines, '']
  encoder = results.get('encoder', {})
  if encoder:
    text += ['| encoder (pretrained, not finetuned) | test top-1 (%) |',
             '|---|---:|']
    for key, title in (
        ('knn_top_1', 'kNN (k 200, cosine, final_avg_pool)'),
        ('linear_probe_top_1', 'linear probe (fine_tune_after_block=4)'),
        ('feature_logreg_top_1',
         'logistic regression on its features (as on pixels)'),
        ('raw_pixel_knn_top_1', 'raw pixels: the same kNN'),
        ('raw_pixel_logreg_top_1', 'raw pixels: logistic regression'),
        ('student_knn_top_1',
         "the half-width student's own pretraining: kNN"),
        ('memory_knn_top_1', 'with the memory of negatives: kNN'),
        ('memory_linear_probe_top_1',
         'with the memory of negatives: linear probe'),
        ('memory_feature_logreg_top_1',
         'with the memory of negatives: logistic regression on features')):
      if encoder.get(key) is not None:
        text.append(f'| {title} | {100 * encoder[key]:.2f} |')
    text.append('')
  choices = results.get('validation_choices', {})
  if choices:
    text += ['Choices made on the validation split (validation top-1):', '']
    for name, choice in choices.items():
      scores = ', '.join(f'{k}: {100 * v:.2f}' for k, v in
                         choice['validation_top_1'].items())
      source = (f'reused from {choice["reused_from"]}'
                if 'reused_from' in choice else
                f'chosen at {choice["chosen_at"]}' if not scores else scores)
      text.append(f'- {name}: **{choice["chosen"]}** ({source})')
    text.append('')
  text += ['| stage | wall time (s) | training images/s |', '|---|---:|---:|']
  for name, entry in results['wall_time_s'].items():
    rate = entry.get('train_images_per_sec')
    text.append(f'| {name}{" (reused)" if entry.get("reused") else ""} | '
                f'{entry["seconds"]:.0f} | '
                f'{"" if rate is None else f"{rate:.0f}"} |')
  text.append(f'| **total** | {results["total_wall_time_s"]:.0f} | |')
  machine = results.get('machine', {})
  text += ['', f'Machine: {machine.get("cpu", "?")}, {machine.get("cores", "?")} '
           f'cores, TensorFlow {machine.get("tensorflow", "?")}. Commit '
           f'{results.get("git", {}).get("commit", "?")}.', '',
           f'Command: `{results.get("command", "")}`', '']
  return '\n'.join(text)


def plot_accuracy(results, path):
  """Test top-1 against labeled images (log x), one line per arm, the
  seeds' min–max as error bars."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axis = plt.subplots(figsize=(6.4, 4.4))
  fractions = results['fractions']
  for arm, marker in zip(results.get('arms', ARMS), 'osD^v'):
    xs, ys, low, high = [], [], [], []
    for f in fractions:
      values = [v for v in results['top_1_seeds'].get(arm, {}).get(f) or []
                if v is not None]
      if not values:
        continue
      m = 100 * sum(values) / len(values)
      xs.append(results['labeled_images'][f])
      ys.append(m)
      low.append(max(0.0, m - 100 * min(values)))
      high.append(max(0.0, 100 * max(values) - m))
    if xs:
      axis.errorbar(xs, ys, yerr=[low, high], marker=marker, capsize=3,
                    label=ARM_TITLES[arm])
  for key, style, title in (('raw_pixel_logreg_top_1', ':',
                             'raw pixels, logistic regression (all labels)'),):
    value = results.get('encoder', {}).get(key)
    if value is not None:
      axis.axhline(100 * value, linestyle=style, color='grey', label=title)
  axis.set_xscale('log')
  axis.set_xlabel('labeled training images (log scale)')
  axis.set_ylabel('test top-1 accuracy (%)')
  axis.set_title('Fashion-MNIST, ResNet-%s ×%s' % (
      results.get('plan', {}).get('depth', '?'),
      results.get('plan', {}).get('width', '?')))
  axis.grid(alpha=0.3)
  axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def plot_pretraining(curves, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
  for axis, tag in zip(axes, PRETRAIN_TAGS):
    points = curves.get(tag) or []
    if points:
      axis.plot(*zip(*points))
    axis.set_title(tag)
    axis.set_xlabel('step')
    axis.grid(alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def write_outputs(results, curves, output_dir):
  """results.json, results.md, accuracy.png, pretraining.png; returns paths."""
  os.makedirs(output_dir, exist_ok=True)
  results = dict(results, pretraining_curves={
      tag: [[s, v] for s, v in points] for tag, points in curves.items()})
  paths = {name: os.path.join(output_dir, name) for name in (
      'results.json', 'results.md', 'accuracy.png', 'pretraining.png')}
  with open(paths['results.json'], 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(paths['results.md'], 'w') as f:
    f.write(markdown_table(results))
  plot_accuracy(results, paths['accuracy.png'])
  plot_pretraining(curves, paths['pretraining.png'])
  return paths


def plan_record(plan, args):
  record = dataclasses.asdict(plan)
  for name in ('few_label_batch', 'few_label_epochs', 'distill_small_epochs',
               'label_seeds'):
    record[name] = {fraction_key(k): v for k, v in record[name].items()}
  return record | {'steps': plan.steps(), 'runs': plan.runs(),
                   'pool_size': plan.pool_size,
                   'train_split': plan.train_split,
                   'validation_split': plan.validation_split,
                   'quick': args.quick, 'scale': args.scale}


# ---------------------------------------------------------------- main
def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='a tiny version (minutes) that checks the plumbing')
  parser.add_argument('--scale', type=float, default=1,
                      help='multiply epochs and widths (e.g. 8 on a GPU)')
  parser.add_argument('--output_dir', default=DEFAULT_OUTPUT_DIR)
  parser.add_argument('--work_dir', default=None,
                      help='model_dirs and logs (default: a new temporary '
                      'directory); stages already done there are reused')
  parser.add_argument('--subprocesses', action='store_true',
                      help='run every stage as its own `python run.py` '
                      'process (slower: start-up per stage)')
  parser.add_argument('--plan_only', action='store_true',
                      help='print the step counts and time estimate, run nothing')
  parser.add_argument('--memory_size', type=int, default=0,
                      help='also run the simclr_memory arm with this buffer '
                      'size (0: not run)')
  parser.add_argument('--memory_momentum', type=float, default=0.99)
  parser.add_argument('--memory_step_cost', type=float, default=1.0,
                      help='the memory step\'s time over the plain step\'s '
                      '(python -m tf_simclr.benchmark --variant=memory_size=K): '
                      'the memory pretraining gets 1/this of the epochs')
  return parser.parse_args(argv)


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  plan = make_plan(args.scale, args.quick)
  if args.memory_size:
    plan = dataclasses.replace(plan, memory_size=args.memory_size,
                               memory_momentum=args.memory_momentum,
                               memory_step_cost=args.memory_step_cost)
  estimate = estimate_seconds(plan)
  print('steps:', json.dumps(plan.steps()))
  print('runs:', json.dumps(plan.runs()))
  print(f'estimated wall time on 2 CPU cores: {estimate["total"] / 60:.0f} min')
  if args.plan_only:
    print(json.dumps(estimate, indent=1))
    return 0
  work_dir = args.work_dir or tempfile.mkdtemp(prefix='simclr_semi_')
  print('work_dir:', work_dir, flush=True)
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.use_absl_handler()  # run.py's progress lines, as under app.run.
  logging.set_verbosity(logging.INFO)
  started = time.time()
  stages = Stages(work_dir, subprocesses=args.subprocesses,
                  echo=lambda line: print(line, flush=True))
  try:
    results = run_protocol(plan, stages, stages.echo)
  except StageFailed as error:
    print(f'semi_supervised.py: {error}', file=sys.stderr)
    return 1
  curves = read_scalars(stages.model_dir('pretrain'))
  results.update({
      'fractions': [fraction_key(f) for f in FRACTIONS],
      'labeled_images': {fraction_key(f): labeled_count(f, plan.num_train)
                         for f in FRACTIONS},
      'wall_time_s': stages.timings(),
      'total_wall_time_s': time.time() - started,
      'plan': plan_record(plan, args),
      'estimated_wall_time_s': estimate['total'],
      'command': shlex.join(['python', 'benchmarks/semi_supervised.py', *argv]),
      'git': git_info(),
      'machine': machine_info(),
      'work_dir': work_dir,
  })
  paths = write_outputs(results, curves, args.output_dir)
  print(markdown_table(results))
  print('wrote', ', '.join(paths.values()))
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""What the protocol runs: the splits, the Plan of every stage's size and
recipe, the rule of every choice, and the time estimate.

Splits, fixed: validation = the first `validation_size` training images
(TFDS order), the pool = the others (the unlabeled data, and where the label
subsets come from), test = the test split, read once per final model.
"""

import dataclasses

NUM_TRAIN = 60_000
NUM_CLASSES = 10
# Label fractions of the 60 000 training images: 6, 60 and 600 per class.
FRACTIONS = (0.001, 0.01, 0.1)
ARMS = ('supervised', 'simclr', 'self_distill', 'distill_small')
# With --memory_size: the same pretrain + finetune with the memory of
# negatives, at the plain pretraining's compute budget.
MEMORY_ARM = 'simclr_memory'
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


def best_of(scores):
  """The key with the highest validation score (the first on a tie): the
  rule of every choice the protocol makes."""
  return max(scores, key=lambda key: (scores[key], -list(scores).index(key)))


# ---------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes and recipes of every stage. Epochs are over the stage's own
  training data (the pool for pretraining, distillation and the linear
  probe; the labeled subset for finetuning and the baseline). The values
  chosen on validation, with their figures: benchmarks/README.md, "The
  plan's choices", and the results JSONs it names."""
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
  # The best encoder kNN on validation of tau 0.1 / 0.2 / 0.5 (evidence:
  # benchmarks/results/pretrain_ablation_temperature.json).
  temperature: float = 0.2
  color_jitter_strength: float = 0.5
  # The views' smallest crop (run.py --crop_min_area): the best validation kNN
  # of 0.08 / 0.25 / 0.5 (evidence:
  # benchmarks/results/pretrain_ablation_crop.json).
  pretrain_crop_min_area: float = 0.25
  # The projection head every stage builds (run.py --num_proj_layers, so that
  # a pretraining's head restores), and the layer finetuning reads
  # (--ft_proj_selector: 0 the backbone's output, k after head layer k):
  # SimCLRv2's 3-layer head read from its layer 1, fixed (compared with
  # SimCLR's 2-layer head read from the backbone: benchmarks/v2_ablation.py).
  num_proj_layers: int = 3
  ft_proj_selector: int = 1
  # The linear probe: the reference's linear evaluation.
  linear_epochs: float = 3.0
  linear_batch: int = 512
  # Few-label training: batch and epochs per fraction, the same for the
  # baseline and finetuning (equal images seen).
  few_label_batch: dict = dataclasses.field(
      default_factory=lambda: {0.001: 32, 0.01: 64, 0.1: 128})
  few_label_epochs: dict = dataclasses.field(
      default_factory=lambda: {0.001: 120, 0.01: 30, 0.1: 10})
  # Learning rates swept on validation (SGD + momentum, per 256 images), as
  # many for both arms, around earlier choices (evidence: benchmarks/README.md,
  # "The plan's choices"; the latest in benchmarks/results/results.json).
  supervised_learning_rates: tuple = (0.8, 1.6, 3.2, 6.4)
  finetune_learning_rates: tuple = (0.00078125, 0.003125, 0.0125, 0.05)
  # Few-label training's smallest crop, chosen per arm at the chosen rate; the
  # paper's 0.08 cuts most of a 28 px garment away and rarely won (evidence:
  # benchmarks/README.md). The students train on their teacher's crops.
  few_label_crop_min_areas: tuple = (0.25, 1.0)
  # Fractions whose rates are swept, and whose crop areas are too; any other
  # reuses the last swept fraction's choice. 10 % is swept: 1 %'s rate did
  # not carry over (evidence: benchmarks/README.md, "The plan's choices").
  sweep_fractions: tuple = (0.001, 0.01, 0.1)
  crop_sweep_fractions: tuple = (0.001, 0.01)
  # Distillation on the pool (alpha 1, tau 1): epochs of the self-distilled
  # student and, per fraction, of the half-width one, which gains from longer
  # at 10 % (evidence: benchmarks/README.md, "The plan's choices").
  distill_batch: int = 128
  distill_epochs: float = 0.6
  distill_small_epochs: dict = dataclasses.field(
      default_factory=lambda: {0.001: 0.6, 0.01: 0.6, 0.1: 2.4})
  # Both students' rates (SGD + momentum, per 256), compared with their starts
  # at each fraction's seed 0; 0.05 alone, as it won nearly every comparison
  # (evidence: benchmarks/README.md). With several, each is compared.
  distill_learning_rates: tuple = (0.05,)
  # The self-distilled student's starts: 'pretrained' or 'teacher' (each with
  # a new zero-initialised head) or 'scratch'; the teacher won on validation
  # (evidence: benchmarks/README.md). With one, no comparison run.
  student_inits: tuple = ('teacher',)
  # The half-width student's starts: 'scratch' or 'pretrained' (its own
  # pretraining at student_pretrain_epochs, run only when a candidate needs
  # it); scratch lost on validation (evidence: benchmarks/README.md).
  small_student_inits: tuple = ('pretrained',)
  student_pretrain_epochs: float = 6.0
  label_seeds: dict = dataclasses.field(
      default_factory=lambda: {0.001: (0, 1, 2), 0.01: (0, 1, 2), 0.1: (0,)})
  logreg_cs: tuple = (0.1, 1.0)
  eval_steps: int = 0  # 0: whole splits.
  knn_bank_size: int = 60_000
  # The memory arm (0: not run): buffer size, momentum, and its step's cost
  # over the plain step's (the benchmark's ratio); its pretraining gets
  # pretrain_epochs / memory_step_cost epochs: the plain one's wall time.
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
  return scaled(plan, scale)


def scaled(plan, scale):
  """`plan` with `scale` times its widths and every stage's epochs (--scale:
  the GPU configuration); the plan itself at scale 1."""
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


def plan_record(plan, **extra):
  """The plan as results.json records it (fractions as string keys), with
  its steps and runs, and `extra` (e.g. the command's quick and scale)."""
  record = dataclasses.asdict(plan)
  for name in ('few_label_batch', 'few_label_epochs', 'distill_small_epochs',
               'label_seeds'):
    record[name] = {fraction_key(k): v for k, v in record[name].items()}
  return record | {'steps': plan.steps(), 'runs': plan.runs(),
                   'pool_size': plan.pool_size,
                   'train_split': plan.train_split,
                   'validation_split': plan.validation_split} | extra


# ---------------------------------------------------------------- the time estimate
# Training images/s of run.py's stages (ResNet-18 width 0.125, 28 px;
# pretraining counts images, each with two views) and the fixed cost of a
# stage run in this process (tracing, input start-up, the end-of-run
# evaluation), measured by this protocol on a 2-core Intel Xeon with AVX-512,
# oneDNN on (evidence: benchmarks/README.md); a 2-core AVX2-only AMD EPYC runs
# every stage about 2x slower. A final run evaluates the test split (10 000
# images) where a candidate evaluates validation (5 000): FINAL_EVAL_EXTRA_S.
RATES = {'pretrain': 940.0, 'pretrain_small': 1380.0, 'few_label': 1200.0,
         'linear_probe': 5800.0, 'distill': 1250.0, 'distill_small': 1550.0}
STAGE_OVERHEAD_S = 12.0
TEST_EVAL_S = 6.0
FINAL_EVAL_EXTRA_S = 2.0
ANCHORS_S = 60.0  # Logistic regression and kNN on pixels (90 s on the EPYC).
# Logistic regression on a pretraining's features (the pool, validation and
# test through the encoder, two C): an estimate, scaled from a measurement on
# the EPYC (evidence: benchmarks/README.md).
FEATURE_LOGREG_S = 80.0

# The time of a training image at a width over its time at the protocol's
# width (1/8), keyed by width / (1/8 * scale). Measured (benchmarks/README.md):
# a 1/4-width pretraining epoch costs 2.5x, a 1/4-width few-label step
# 2.0-2.4x (2.2 taken). A 1/16-width pretraining image costs 0.68x, the
# ratio of RATES' two pretraining rates (940 / 1 380 images/s, Xeon; the
# scaling run's 796 / 1 158 on the EPYC is 0.69x: benchmarks/results/
# scaling.json); a 1/16-width few-label step about as much as at 1/8 (the
# narrow step is overhead-bound: 260 against 267 ms per step at batch 256,
# python -m tf_simclr.benchmark on a 2-core AMD EPYC, docs/performance.md).
WIDTH_COSTS = {
    'pretrain': {0.5: RATES['pretrain'] / RATES['pretrain_small'], 1.0: 1.0,
                 2.0: 2.5},
    'few_label': {0.5: 0.97, 1.0: 1.0, 2.0: 2.2},
}
# A distillation image costs the teacher's forward pass and the student's
# training step; a forward pass is taken as a third of a training step (so
# the protocol's measured self-distillation rate, teacher and student at
# 1/8, is RATES['distill'] exactly; its half-width student, 1/8 -> 1/16,
# comes out at 1 470 images/s against 1 550 measured).
TEACHER_FORWARD_SHARE = 1 / 3


def width_cost(kind, width, scale=1):
  """WIDTH_COSTS[kind] at `width`, a network `scale` times as wide as the
  protocol's at scale 1."""
  ratio = width / (Plan.width * scale)
  for known, cost in WIDTH_COSTS[kind].items():
    if abs(known - ratio) < 1e-9:
      return cost
  raise ValueError(f'no cost of a {kind} image at width {width:g} '
                   f'({ratio:g}x the protocol\'s): add it to WIDTH_COSTS')


def distill_rate(teacher_width, student_width, scale=1):
  """Images/s of a distillation from a teacher of teacher_width into a
  student of student_width (TEACHER_FORWARD_SHARE)."""
  cost = (TEACHER_FORWARD_SHARE * width_cost('few_label', teacher_width, scale)
          + width_cost('few_label', student_width, scale)) / (
              TEACHER_FORWARD_SHARE + 1)
  return RATES['distill'] / cost


def width_rates(plan, scale=1, student=True):
  """RATES at `plan`'s widths (network and, with `student`, its half-width
  student), by WIDTH_COSTS from the protocol's (RATES itself at its widths,
  1/8 and 1/16 times `scale`); the linear probe's forward pass as a few-label
  image. Without `student` the student's rates are RATES' own (for plans
  that train no student, whose half width WIDTH_COSTS may not know)."""
  few = width_cost('few_label', plan.width, scale)
  rates = dict(
      RATES,
      pretrain=RATES['pretrain'] / width_cost('pretrain', plan.width, scale),
      few_label=RATES['few_label'] / few,
      linear_probe=RATES['linear_probe'] / few,
      distill=distill_rate(plan.width, plan.width, scale))
  if student:
    protocol_student = distill_rate(Plan.width * scale,
                                    Plan.student_width * scale, scale)
    rates.update(
        pretrain_small=RATES['pretrain'] / width_cost(
            'pretrain', plan.student_width, scale),
        distill_small=RATES['distill_small'] * distill_rate(
            plan.width, plan.student_width, scale) / protocol_student)
  return rates


# The estimate's machine classes. RATES are the Xeon's; on the pool's AMD
# EPYCs, committed runs took wall time / estimate = MACHINE_SLOWDOWN of it:
# scaling.py at 2744465 on one with AVX2 only, 4 885 s against 3 569 s. On
# one with AVX-512 (Zen 4): scaling.py at 99f79d2, 2 045 s against 2 766 s
# (0.74), and semi_supervised.py at bb84558, 2 358 s against 2 937 s (0.80);
# the larger is kept, so that a plan fitted to it fits both
# (benchmarks/results/, git history).
MACHINE_SLOWDOWN = {'xeon': 1.0, 'epyc': 1.37, 'epyc_avx512': 0.80}
MACHINE_TITLES = {'xeon': '2-core Intel Xeon (the rates\' machine)',
                  'epyc': '2-core AMD EPYC (AVX2)',
                  'epyc_avx512': '2-core AMD EPYC (AVX-512)'}


def machine_seconds(seconds, machine):
  """An estimate of `seconds` on the rates' Xeon, on `machine`'s class."""
  return seconds * MACHINE_SLOWDOWN[machine]


def machine_class(cpuinfo_path='/proc/cpuinfo'):
  """This machine's MACHINE_SLOWDOWN key: on an AMD CPU 'epyc_avx512' when
  its flags include avx512f, else 'epyc'; 'xeon' otherwise (also when
  /proc/cpuinfo cannot be read)."""
  vendor = flags = ''
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        name, _, value = line.partition(':')
        if name.strip() == 'vendor_id' and not vendor:
          vendor = value
        elif name.strip() == 'flags' and not flags:
          flags = value
        if vendor and flags:
          break
  except OSError:
    return 'xeon'
  if 'AMD' not in vendor:
    return 'xeon'
  return 'epyc_avx512' if 'avx512f' in flags.split() else 'epyc'


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

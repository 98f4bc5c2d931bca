r"""SimCLRv2's scaling claims at three network sizes on offline Fashion-MNIST.

  python benchmarks/scaling.py --work_dir=/tmp/simclr_scaling  # <= 60 min on 2 idle CPU cores
  python benchmarks/scaling.py --plan_only   # sizes, steps and the time estimate
  python benchmarks/scaling.py --quick       # plumbing check, a few minutes
  python benchmarks/scaling.py --scale=8     # 8x epochs and widths, for one GPU

The paper's claims: the fewer the labels, the more a bigger pretrained
network gains; and the big fine-tuned network distils into a much smaller one
with little loss. Here: the semi-supervised protocol's recipe
(benchmarks/protocol/, its splits, stages and rule of choice) at ResNet-18
(CIFAR stem, 28 px) widths 1/16, 1/8 and 1/4 (about 52 000, 195 000 and
755 000 parameters: `sizes` of scaling.json, count_params() of the finetuned
network as run.py builds it), each size:

  pretrained     the protocol's pretraining on the pool, the same number of
                 epochs for every size (Plan.pretrain_epochs: what the budget
                 allows the largest, see "Cuts" below), its kNN read on
                 validation only;
  supervised     from a random initialisation on the labeled subset, and
  simclr         finetuned from projection-head layer 1 (the teacher), each at
                 0.1 %, 1 % and 10 % of the labels, label seeds 0 and 1 at
                 0.1 % and 1 %, 0 at 10 %; the learning rate chosen on
                 validation at seed 0 per (size, arm, fraction) from two
                 candidates per arm: the protocol's two best rates for that
                 arm and fraction on validation in its committed run
                 (benchmarks/results/results.json of 34440cc,
                 validation_choices; LEARNING_RATES); the crop area fixed to
                 the protocol's choice per arm and fraction (CROP_MIN_AREAS);
  self_distill   each seed's teacher distilled into its own size (the
                 protocol's recipe: the student starts from its teacher with a
                 new head, alpha 1, lr 0.05, 0.6 epochs of the pool).

and big_to_small: per fraction, the largest size's seed-0 teacher distilled
on the pool into the smallest network (the protocol's half-width student
recipe: from the smallest size's own pretraining, lr 0.05, 0.6 / 0.6 / 2.4
epochs), against the smallest size's own self-distilled model at seed 0.

Every choice is made on the validation split; the test split is read once
per final model (protocol.few_label_arm and protocol.student_arm, as the
protocol reads it).

Budget: the estimate (ScalingPlan.estimate_seconds: the protocol's measured
images/s at width 1/8, scaled per width by plan_lib.WIDTH_COSTS, plus RUN_OVERHEAD_S
per run) must be <= BUDGET_S on 2 CPU cores of --machine's class (the rates'
Xeon, or an AMD EPYC at plan_lib.MACHINE_SLOWDOWN; auto: this machine's, so
a slower class's plan cuts more, a faster one's less). Cuts, in this order, each only
when the ones before did not fit (fit_to_budget; the plan's `cuts` lists
those taken, scaling.json's `plan.cuts` too): (1) pretraining epochs, from
the protocol's 12 down in steps of 0.5, not below 3; (2) the 10 % fraction's
few-label epochs, from 10 down to 5; (3) one learning rate per arm at 10 %,
the arm's 1 % choice reused; (4) self-distillation at label seed 0 only. With
the constants of this file the Xeon's plan takes cuts (1) and (2): 3
pretraining epochs for every size (the protocol's 12 would add about 38
minutes, 22 of them the largest size's) and 7 few-label epochs at 10 %
(from 10), for an estimate of 3 569 s; the EPYC's takes all four (63 min
there); `--plan_only` prints the cuts taken.

Writes OUTPUT_DIR/scaling.json, scaling.md and scaling.png (top-1 against
parameters, one line per label fraction, SimCLRv2 solid, supervised dashed).
Stages run in this process (--subprocesses: one `python run.py` each), and a
stage done in --work_dir before is reused. Run it from a tree nobody edits.
"""

import dataclasses
import fractions as fractions_lib
import json
import os
import sys

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from benchmarks.protocol import experiment
from benchmarks.protocol import flags as flags_lib
from benchmarks.protocol import plan as plan_lib
from benchmarks.protocol import protocol
from benchmarks.protocol import report
# pylint: enable=wrong-import-position

FRACTIONS = plan_lib.FRACTIONS
ARMS = ('supervised', 'simclr', 'self_distill')
FEW_LABEL_ARMS = ('supervised', 'simclr')
CODE_PATHS = report.CODE_PATHS + ('benchmarks/scaling.py',)

# ---------------------------------------------------------------- the recipe
# Learning-rate candidates per arm and fraction (per 256 images), as many for
# both arms: the protocol's two best on validation at label seed 0 in its
# committed run (benchmarks/results/results.json of 34440cc,
# validation_choices *_learning_rate@*; top-1 %, at crop area 0.25 for 0.1 %
# and 1 %, 1 for 10 %): supervised 0.1 % 1.6: 61.32, 6.4: 58.06 (3.2: 56.98,
# 0.8: 54.18); 1 % 0.8: 76.20, 1.6: 75.88 (3.2: 75.26, 6.4: 70.58); 10 % 3.2:
# 89.62, 0.8: 89.38 (1.6: 89.24, 6.4: 83.46); finetuning 0.1 % 0.0125: 68.26,
# 0.003125: 68.20 (0.05: 66.28, 0.00078125: 57.26); 1 % 0.05: 82.24, 0.0125:
# 81.38 (0.003125: 79.38, 0.00078125: 71.94); 10 % 0.05: 89.82, 0.0125: 89.02
# (0.003125: 86.10, 0.00078125: 80.90). Ascending: a tie goes to the lower.
LEARNING_RATES = {
    'supervised': {0.001: (1.6, 6.4), 0.01: (0.8, 1.6), 0.1: (0.8, 3.2)},
    'simclr': {0.001: (0.003125, 0.0125), 0.01: (0.0125, 0.05),
               0.1: (0.0125, 0.05)},
}
# The few-label crop's smallest area, fixed to the protocol's validation
# choice in the same run (validation_choices *_crop_min_area@*: supervised
# 0.25 at 0.1 %, 1 at 1 %, reused at 10 %; finetuning 1 at every fraction).
CROP_MIN_AREAS = {
    'supervised': {0.001: 0.25, 0.01: 1.0, 0.1: 1.0},
    'simclr': {0.001: 1.0, 0.01: 1.0, 0.1: 1.0},
}
WIDTHS = (0.0625, 0.125, 0.25)
LABEL_SEEDS = {0.001: (0, 1), 0.01: (0, 1), 0.1: (0,)}

# ---------------------------------------------------------------- the budget
BUDGET_S = 3600.0
MIN_PRETRAIN_EPOCHS = 3.0
PRETRAIN_EPOCHS_STEP = 0.5
MIN_TENTH_FRACTION_EPOCHS = 5.0
# The fixed cost of a stage run in this process at width 1/8 (set-up,
# restore, tracing, the end-of-run evaluation of the 5 000 validation images,
# saving): about 8 s since a stage's fixed cost was cut (the protocol's
# plan_lib.STAGE_OVERHEAD_S, 12 s, predates that). Its evaluation grows with
# the width (run_overhead: FINAL_EVAL_EXTRA_S, 5 000 images at 1/8, scaled).
RUN_OVERHEAD_S = 8.0
# The pretraining's end-of-run kNN pass (the pool's 55 000 images as the
# bank, the 5 000 validation images as queries) at width 1/8: 38.8 s on the
# 2-core AMD EPYC (docs/performance.md, "The kNN monitor's pass"), halved for
# the Xeon the protocol's RATES are from (about 2x faster); scaled per width
# as a few-label image.
PRETRAIN_KNN_EVAL_S = 20.0
def run_overhead(width, scale=1):
  """RUN_OVERHEAD_S of a run at `width`: its validation pass scaled."""
  return RUN_OVERHEAD_S + plan_lib.FINAL_EVAL_EXTRA_S * (
      plan_lib.width_cost('few_label', width, scale) - 1)


# ---------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Size:
  depth: int
  width: float

  @property
  def name(self):
    """'r18_w1/16'."""
    width = fractions_lib.Fraction(self.width).limit_denominator(1024)
    return f'r{self.depth}_w{width}'

  @property
  def tag(self):
    """The name as a stage-name prefix (no '/'): 'r18_w1-16'."""
    return self.name.replace('/', '-')


@dataclasses.dataclass(frozen=True)
class ScalingPlan:
  """The protocol's Plan (`protocol`: its recipe, splits, pretraining epochs,
  label seeds, sweep fractions) at each of `widths`, and what this
  experiment fixes or cuts. The sizes differ only in width (ResNet of
  protocol.depth); `scale` is --scale (the widths and epochs are already
  multiplied by it)."""
  protocol: plan_lib.Plan
  widths: tuple = WIDTHS
  learning_rates: dict = dataclasses.field(
      default_factory=lambda: dict(LEARNING_RATES))
  crop_min_areas: dict = dataclasses.field(
      default_factory=lambda: dict(CROP_MIN_AREAS))
  self_distill_all_seeds: bool = True
  scale: float = 1.0
  cuts: tuple = ()

  def __post_init__(self):
    if list(self.widths) != sorted(self.widths) or len(self.widths) < 2:
      raise ValueError(f'widths must ascend, at least two: {self.widths}')
    for fraction in FRACTIONS:
      if len({len(self.learning_rates[arm][fraction])
              for arm in FEW_LABEL_ARMS}) != 1:
        raise ValueError('both arms need as many learning-rate candidates '
                         f'at {fraction:g}: {self.learning_rates}')

  @property
  def sizes(self):
    return tuple(Size(self.protocol.depth, width) for width in self.widths)

  @property
  def smallest(self):
    return self.sizes[0]

  @property
  def largest(self):
    return self.sizes[-1]

  def size_plan(self, size):
    """The protocol's Plan at `size`."""
    return dataclasses.replace(self.protocol, depth=size.depth,
                               width=size.width)

  def few_label_plan(self, size, arm, fraction):
    """size_plan with the one crop area of (arm, fraction): the crop is not
    swept (a fraction whose rate is not swept reuses the last swept
    fraction's rate and area, as the protocol's few_label_arm does)."""
    return dataclasses.replace(
        self.size_plan(size),
        few_label_crop_min_areas=(self.crop_min_areas[arm][fraction],),
        crop_sweep_fractions=self.protocol.sweep_fractions)

  def self_distill_plan(self, size):
    """size_plan, at label seed 0 only unless self_distill_all_seeds."""
    plan = self.size_plan(size)
    if self.self_distill_all_seeds:
      return plan
    return dataclasses.replace(plan, label_seeds={
        f: seeds[:1] for f, seeds in plan.label_seeds.items()})

  def big_to_small_plan(self):
    """The largest size's plan whose student (the protocol's distill_small:
    plan.student_width) is the smallest network, at label seed 0."""
    return dataclasses.replace(
        self.size_plan(self.largest), student_width=self.smallest.width,
        label_seeds={f: (0,) for f in FRACTIONS})

  def candidates(self, arm, fraction):
    """Learning rates tried for (arm, fraction): 1 where not swept."""
    if fraction not in self.protocol.sweep_fractions:
      return 1
    return len(self.learning_rates[arm][fraction])

  def steps(self):
    """{size name: {stage: training steps}} and the big-to-small student's."""
    steps = {}
    for size in self.sizes:
      plan_steps = self.size_plan(size).steps()
      steps[size.name] = {'pretrain': plan_steps['pretrain'],
                          'distill': plan_steps['distill'],
                          **{k: v for k, v in plan_steps.items()
                             if k.startswith('few_label@')}}
    steps['big_to_small'] = {
        k: v for k, v in self.big_to_small_plan().steps().items()
        if k.startswith('distill_small@')}
    return steps

  def runs(self):
    """{size name: {kind: training runs}}, 'big_to_small': its runs."""
    seeds = {f: len(s) for f, s in self.protocol.label_seeds.items()}
    runs = {}
    for size in self.sizes:
      runs[size.name] = {'pretrain': 1}
      for arm in FEW_LABEL_ARMS:
        runs[size.name][arm] = sum(self.candidates(arm, f) + seeds[f] - 1
                                   for f in FRACTIONS)
      runs[size.name]['self_distill'] = sum(
          map(len, self.self_distill_plan(size).label_seeds.values()))
    runs['big_to_small'] = len(FRACTIONS)
    return runs

  def estimate_seconds(self):
    """Expected wall time on 2 CPU cores: {size name: {part: seconds,
    'total'}, 'big_to_small': seconds, 'total': seconds}. The pretraining and
    the students are plan_lib.estimate_seconds' parts at the width's rates;
    the few-label runs per (arm, fraction), as their candidates differ."""
    estimate = {}
    seeds = {f: len(s) for f, s in self.protocol.label_seeds.items()}
    for size in self.sizes:
      few_cost = plan_lib.width_cost('few_label', size.width, self.scale)
      distill_plan = self.self_distill_plan(size)
      rates = plan_lib.width_rates(distill_plan, self.scale, student=False)
      overhead = run_overhead(size.width, self.scale)
      protocol_parts = plan_lib.estimate_seconds(
          distill_plan, rates=rates, overhead=overhead)
      plan = self.size_plan(size)
      steps = plan.steps()
      part = {'pretrain': protocol_parts['pretrain'] +
                          PRETRAIN_KNN_EVAL_S * few_cost}
      separate_tests = finals = 0
      for arm in FEW_LABEL_ARMS:
        part[arm] = 0.0
        for f in FRACTIONS:
          run = (steps[f'few_label@{plan_lib.fraction_key(f)}'] *
                 plan.few_label_batch[f] / rates['few_label'] + overhead)
          part[arm] += run * (self.candidates(arm, f) + seeds[f] - 1)
          swept = self.candidates(arm, f) > 1
          separate_tests += swept
          finals += seeds[f] - swept
      part['self_distill'] = protocol_parts['self_distill']
      finals += self.runs()[size.name]['self_distill']
      # The chosen candidate's test pass is a stage of its own; a final run
      # evaluates test (10 000 images) where a candidate evaluates validation.
      part['test_evaluations'] = few_cost * (
          plan_lib.TEST_EVAL_S * separate_tests +
          plan_lib.FINAL_EVAL_EXTRA_S * finals)
      part['total'] = sum(part.values())
      estimate[size.name] = part
    big = self.big_to_small_plan()
    estimate['big_to_small'] = plan_lib.estimate_seconds(
        big, rates=dict(plan_lib.RATES, distill_small=plan_lib.distill_rate(
            self.largest.width, self.smallest.width, self.scale)),
        overhead=run_overhead(self.smallest.width, self.scale))[
            'distill_small'] + len(FRACTIONS) * (
            plan_lib.FINAL_EVAL_EXTRA_S * plan_lib.width_cost(
                'few_label', self.smallest.width, self.scale))
    estimate['total'] = estimate['big_to_small'] + sum(
        estimate[size.name]['total'] for size in self.sizes)
    return estimate

  def record(self, **extra):
    """The plan as scaling.json records it."""
    return {
        # The protocol's recipe, without what this experiment does not read
        # or replaces (the widths, its rate and crop grids, its own steps).
        'protocol': {k: v for k, v in plan_lib.plan_record(
            self.protocol).items() if k not in UNUSED_PROTOCOL_FIELDS},
        'sizes': {size.name: {'depth': size.depth, 'width': size.width}
                  for size in self.sizes},
        'learning_rates': {arm: {plan_lib.fraction_key(f): list(rates)
                                 for f, rates in by_fraction.items()}
                           for arm, by_fraction in self.learning_rates.items()},
        'crop_min_areas': {arm: {plan_lib.fraction_key(f): area
                                 for f, area in by_fraction.items()}
                           for arm, by_fraction in self.crop_min_areas.items()},
        'self_distill_label_seeds': {
            plan_lib.fraction_key(f): list(seeds) for f, seeds in
            self.self_distill_plan(self.smallest).label_seeds.items()},
        'big_to_small': {'teacher': self.largest.name,
                         'student': self.smallest.name, 'label_seed': 0},
        'steps': self.steps(), 'runs': self.runs(), 'cuts': list(self.cuts),
        'scale': self.scale} | extra


UNUSED_PROTOCOL_FIELDS = (
    'steps', 'runs', 'width', 'student_width', 'supervised_learning_rates',
    'finetune_learning_rates', 'few_label_crop_min_areas',
    'crop_sweep_fractions', 'linear_epochs', 'linear_batch',
    'student_pretrain_epochs', 'logreg_cs', 'memory_size', 'memory_momentum',
    'memory_step_cost')


def full_design():
  """The experiment before any cut: the protocol's Plan with two label seeds
  at 0.1 % and 1 % and its 12 pretraining epochs."""
  return ScalingPlan(protocol=dataclasses.replace(
      plan_lib.Plan(), label_seeds=dict(LABEL_SEEDS),
      sweep_fractions=FRACTIONS, crop_sweep_fractions=FRACTIONS))


def _with_protocol(plan, cut=None, **changes):
  """`plan` with its protocol's fields changed, and `cut` recorded."""
  return dataclasses.replace(
      plan, protocol=dataclasses.replace(plan.protocol, **changes),
      cuts=plan.cuts + ((cut,) if cut else ()))


def fit_to_budget(plan, budget_s=BUDGET_S):
  """`plan` cut, in the module docstring's order, until its estimate is at
  most budget_s (each cut recorded in plan.cuts); the last cut's plan even
  when it still does not fit."""
  def fits(candidate):
    return candidate.estimate_seconds()['total'] <= budget_s

  def longest(field, start, floor, step, changed):
    """The largest of start - step, start - 2 step, ... >= floor at which
    the plan fits (floor if none does)."""
    value = start
    while value - step >= floor:
      value -= step
      if fits(_with_protocol(plan, **{field: changed(value)})):
        break
    return value

  if fits(plan):
    return plan
  # (1) Pretraining epochs: the most that fit, not below the floor.
  full = plan.protocol.pretrain_epochs
  epochs = longest('pretrain_epochs', full, MIN_PRETRAIN_EPOCHS,
                   PRETRAIN_EPOCHS_STEP, lambda e: e)
  plan = _with_protocol(plan, f'pretrain_epochs {full:g} -> {epochs:g}',
                        pretrain_epochs=epochs)
  if fits(plan):
    return plan
  # (2) The 10 % fraction's few-label epochs (both arms).
  full = plan.protocol.few_label_epochs[0.1]
  tenth = lambda e: {**plan.protocol.few_label_epochs, 0.1: e}  # pylint: disable=unnecessary-lambda-assignment
  epochs = longest('few_label_epochs', full, MIN_TENTH_FRACTION_EPOCHS, 1,
                   tenth)
  plan = _with_protocol(plan, f'few_label_epochs at 10 % {full:g} -> '
                        f'{epochs:g}', few_label_epochs=tenth(epochs))
  if fits(plan):
    return plan
  # (3) One learning rate per arm at 10 %: the arm's 1 % choice.
  swept = tuple(f for f in plan.protocol.sweep_fractions if f != 0.1)
  plan = _with_protocol(
      plan, "one learning rate at 10 %: the arm's 1 % choice reused",
      sweep_fractions=swept, crop_sweep_fractions=tuple(
          f for f in plan.protocol.crop_sweep_fractions if f in swept))
  if fits(plan):
    return plan
  # (4) Self-distillation at label seed 0 only.
  return dataclasses.replace(
      plan, self_distill_all_seeds=False,
      cuts=plan.cuts + ('self-distillation at label seed 0 only',))


def make_scaling_plan(scale=1, quick=False, machine='xeon'):
  """The default plan (fitted to BUDGET_S on `machine`, a key of
  plan_lib.MACHINE_SLOWDOWN), a tiny --quick one, or --scale=N: the default
  plan with N times its widths and epochs (for one GPU)."""
  if quick:
    protocol_plan = dataclasses.replace(
        plan_lib.make_plan(quick=True), student_inits=('teacher',),
        small_student_inits=('pretrained',), distill_learning_rates=(0.05,),
        label_seeds={0.001: (0, 1), 0.01: (0,), 0.1: (0,)},
        sweep_fractions=(0.001,), crop_sweep_fractions=(0.001,))
    return ScalingPlan(protocol=protocol_plan)
  plan = fit_to_budget(full_design(),
                       BUDGET_S / plan_lib.MACHINE_SLOWDOWN[machine])
  if scale == 1:
    return plan
  return dataclasses.replace(
      plan, protocol=plan_lib.scaled(plan.protocol, scale),
      widths=tuple(w * scale for w in plan.widths), scale=scale)


# ---------------------------------------------------------------- parameters
def finetuned_network(plan, size):
  """The simclr arm's network at `size` as run.py builds it from that
  stage's flags (backbone, the 3-layer projection head, the supervised head
  on its layer 1), built, untrained."""
  from tf_simclr import architecture  # pylint: disable=import-outside-toplevel
  from tf_simclr import model as model_lib  # pylint: disable=import-outside-toplevel
  flags = flags_lib.few_label_flags(
      plan.size_plan(size), 0.01, 0, 'model_dir', 0.05,
      checkpoint='pretrain_dir', crop_min_area=1.0)
  values = dict(flag[2:].split('=', 1) for flag in flags if '=' in flag)
  record = architecture.ModelConfig.from_dict(values).replace(
      num_classes=plan_lib.NUM_CLASSES)
  return model_lib.build_model(record, supervised_training=True,
                               zero_init_logits_layer=True)


PARAMS_COUNTED = (
    "count_params() of the finetuned network as run.py builds it from the "
    "simclr arm's flags: backbone, the 3-layer projection head (layer 1 "
    "feeds the supervised head; layers 2-3 are built, frozen) and the "
    "10-class head, batch-norm statistics included (the supervised arm's "
    "network has the same variables); backbone_params: its ResNet alone")


def parameter_counts(plan):
  """{size name: {'width', 'depth', 'params', 'backbone_params'}}."""
  import tf_keras  # pylint: disable=import-outside-toplevel
  sizes = {}
  for size in plan.sizes:
    network = finetuned_network(plan, size)
    sizes[size.name] = {'width': size.width, 'depth': size.depth,
                        'params': int(network.count_params()),
                        'backbone_params': int(
                            network.resnet_model.count_params())}
  tf_keras.backend.clear_session()
  return sizes


# ---------------------------------------------------------------- the runs
def _mean(values):
  return sum(values) / len(values)


def run_scaling(plan, stages, echo=print):
  """Runs every stage; returns the results dict (without the sizes'
  parameters and the run's metadata)."""
  top_1 = {arm: {size.name: {} for size in plan.sizes} for arm in ARMS}
  seeds_top_1 = {arm: {size.name: {} for size in plan.sizes} for arm in ARMS}
  choices = {size.name: {} for size in plan.sizes}
  encoder, teachers, pretrain_dirs = {}, {}, {}
  for size in plan.sizes:
    size_plan = plan.size_plan(size)
    name = f'{size.tag}_pretrain'
    pretrain_dirs[size.name] = stages.model_dir(name)
    # Evaluated on validation: the pretraining is no final model.
    result = stages.run(name, flags_lib.pretrain_flags(
        size_plan, pretrain_dirs[size.name]))['result']
    encoder[size.name] = {
        'validation_knn_top_1': result.get('knn_top_1'),
        'validation_linear_head_top_1': result.get('label_top_1_accuracy')}
    teachers[size.name] = {}
    for fraction in FRACTIONS:
      key = plan_lib.fraction_key(fraction)
      for arm, checkpoint in (('supervised', 'scratch'),
                              ('simclr', pretrain_dirs[size.name])):
        runs = protocol.few_label_arm(
            plan.few_label_plan(size, arm, fraction), stages, fraction, arm,
            f'{size.tag}_{protocol.FEW_LABEL_PREFIXES[arm]}',
            plan.learning_rates[arm][fraction], checkpoint, choices[size.name])
        area = choices[size.name][f'{arm}_crop_min_area@{key}']
        if 'reused_from' not in area:
          area['chosen_at'] = ('fixed: the protocol\'s validation choice '
                               '(scaling.py CROP_MIN_AREAS)')
        seeds_top_1[arm][size.name][key] = [top for top, _ in runs]
        if arm == 'simclr':
          teachers[size.name][key] = dict(zip(size_plan.label_seeds[fraction],
                                              (d for _, d in runs)))
      runs = protocol.student_arm(
          plan.self_distill_plan(size), stages, fraction, 'self_distill',
          teachers[size.name][key], pretrain_dirs[size.name],
          choices[size.name],
          choices[size.name][f'simclr_crop_min_area@{key}']['chosen'],
          name_prefix=f'{size.tag}_self_distill')
      seeds_top_1['self_distill'][size.name][key] = [top for top, _ in runs]
      for arm in ARMS:
        top_1[arm][size.name][key] = _mean(seeds_top_1[arm][size.name][key])
      echo(f'== {size.name}, {fraction:.1%} labels, test top-1: ' + ', '.join(
          f'{arm} {top_1[arm][size.name][key]:.4f}' for arm in ARMS))

  # The largest size's seed-0 teacher into the smallest network, against the
  # smallest size's own self-distilled model at seed 0.
  largest, smallest = plan.largest, plan.smallest
  if largest.depth != smallest.depth:
    raise ValueError('distill_flags builds the student at the plan\'s depth')
  big_to_small, big_choices, big_teacher = {}, {}, {}
  for fraction in FRACTIONS:
    key = plan_lib.fraction_key(fraction)
    [(student, _)] = protocol.student_arm(
        plan.big_to_small_plan(), stages, fraction, 'distill_small',
        {0: teachers[largest.name][key][0]}, pretrain_dirs[smallest.name],
        big_choices,
        choices[largest.name][f'simclr_crop_min_area@{key}']['chosen'],
        name_prefix=f'{largest.tag}_to_{smallest.tag}')
    big_to_small[key] = {
        'student': student,
        'small_own': seeds_top_1['self_distill'][smallest.name][key][0]}
    big_teacher[key] = seeds_top_1['simclr'][largest.name][key][0]
    echo(f'== {fraction:.1%} labels: {largest.name} -> {smallest.name} '
         f'{student:.4f}, {smallest.name} self-distilled '
         f'{big_to_small[key]["small_own"]:.4f}')
  choices['big_to_small'] = big_choices
  return {'arms': list(ARMS), 'top_1': top_1, 'top_1_seeds': seeds_top_1,
          'big_to_small': big_to_small,
          'big_to_small_sizes': {'teacher': largest.name,
                                 'student': smallest.name},
          'big_to_small_teacher_top_1': big_teacher,
          'encoder': encoder, 'validation_choices': choices}


# ---------------------------------------------------------------- outputs
ARM_TITLES = {'supervised': 'supervised', 'simclr': 'SimCLRv2 (finetuned)',
              'self_distill': 'SimCLRv2 self-distilled'}


def _count(number):
  """52 038."""
  return f'{number:,}'.replace(',', ' ')


def _cell(values):
  values = values or []
  if not values:
    return '—'
  mean = 100 * _mean(values)
  if len(values) == 1:
    return f'{mean:.2f}'
  return f'{mean:.2f} ({100 * min(values):.1f}–{100 * max(values):.1f})'


def markdown_table(results):
  """scaling.md: test top-1 per (fraction, arm) and size with the gain of
  the largest over the smallest, big-to-small, the sizes, the choices and
  wall times."""
  sizes = results['sizes']
  names = list(sizes)
  smallest, largest = names[0], names[-1]
  lines = ['Test top-1 accuracy (%) on Fashion-MNIST (10 000 test images), '
           'mean over label seeds (min–max).', '',
           '| labels | arm | ' + ' | '.join(
               f'{n} ({_count(sizes[n]["params"])} parameters)'
               for n in names) + f' | {largest} − {smallest} (points) |',
           '|---|---|' + '---:|' * (len(names) + 1)]
  for key in results['fractions']:
    for arm in results['arms']:
      seeds = results['top_1_seeds'][arm]
      mean = results['top_1'][arm]
      gain = 100 * (mean[largest][key] - mean[smallest][key])
      lines.append(f'| {report.fraction_label(float(key))} | '
                   f'{ARM_TITLES[arm]} | ' + ' | '.join(
                       _cell(seeds[n].get(key)) for n in names) +
                   f' | {gain:+.2f} |')
  pair = results['big_to_small_sizes']
  lines += ['', f'Big to small (label seed 0): the {pair["teacher"]} teacher '
            f'distilled into {pair["student"]}, against {pair["student"]}\'s '
            'own self-distilled model.', '',
            f'| labels | {pair["teacher"]} teacher | {pair["student"]} '
            f'distilled from it | {pair["student"]} self-distilled | '
            'difference (points) |', '|---|---:|---:|---:|---:|']
  for key in results['fractions']:
    entry = results['big_to_small'][key]
    lines.append(
        f'| {report.fraction_label(float(key))} | '
        f'{100 * results["big_to_small_teacher_top_1"][key]:.2f} | '
        f'{100 * entry["student"]:.2f} | {100 * entry["small_own"]:.2f} | '
        f'{100 * (entry["student"] - entry["small_own"]):+.2f} |')
  lines += ['', '| size | depth | width | parameters | backbone parameters | '
            'pretraining: validation kNN (%) |',
            '|---|---:|---:|---:|---:|---:|']
  for name in names:
    size = sizes[name]
    knn = results.get('encoder', {}).get(name, {}).get('validation_knn_top_1')
    lines.append(f'| {name} | {size["depth"]} | {size["width"]:g} | '
                 f'{_count(size["params"])} | '
                 f'{_count(size.get("backbone_params", 0))} | '
                 f'{"—" if knn is None else f"{100 * knn:.2f}"} |')
  lines += ['', f'Parameters: {results.get("params_counted", "")}.', '']
  plan = results.get('plan', {})
  if plan.get('cuts'):
    lines += ['Cut to fit the budget: ' + '; '.join(plan['cuts']) + '.', '']
  lines += ['Choices made on the validation split (validation top-1):', '']
  for group, group_choices in results.get('validation_choices', {}).items():
    lines += report.choice_lines(group_choices, group=f'{group} ')
  lines += ['', *report.stage_time_lines(results), '',
            *report.machine_lines(results)]
  return '\n'.join(lines)


def plot_scaling(results, path):
  """Like the paper's Figure 1: test top-1 against parameters (log x), one
  colour per label fraction, SimCLRv2 (finetuned) solid, supervised dashed;
  stars: the smallest network distilled from the largest teacher."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axis = plt.subplots(figsize=(6.4, 4.6))
  names = list(results['sizes'])
  params = [results['sizes'][n]['params'] for n in names]
  colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
  smallest = results['big_to_small_sizes']['student']
  for key, colour in zip(results['fractions'], colours):
    label = report.fraction_label(float(key))
    for arm, style, marker in (('simclr', '-', 'o'), ('supervised', '--', 's')):
      axis.plot(params, [100 * results['top_1'][arm][n][key] for n in names],
                linestyle=style, marker=marker, color=colour,
                label=f'{ARM_TITLES[arm]}, {label} labels')
    axis.plot([results['sizes'][smallest]['params']],
              [100 * results['big_to_small'][key]['student']], marker='*',
              markersize=12, linestyle='none', color=colour,
              label=f'{smallest} distilled from the largest, {label}')
  axis.set_xscale('log')
  axis.set_xticks(params)
  axis.set_xticklabels([f'{n}\n{_count(p)}' for n, p in zip(names, params)],
                       fontsize=7)
  axis.minorticks_off()
  axis.set_xlabel('parameters (log scale)')
  axis.set_ylabel('test top-1 accuracy (%)')
  axis.set_title('Fashion-MNIST: SimCLRv2 (solid) and supervised (dashed) '
                 'against size', fontsize=9)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=6, ncol=1, loc='lower right')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def write_outputs(results, output_dir):
  """scaling.json, scaling.md, scaling.png; returns {name: path}."""
  os.makedirs(output_dir, exist_ok=True)
  paths = {name: os.path.join(output_dir, name) for name in (
      'scaling.json', 'scaling.md', 'scaling.png')}
  with open(paths['scaling.json'], 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(paths['scaling.md'], 'w') as f:
    f.write(markdown_table(results))
  plot_scaling(results, paths['scaling.png'])
  return paths


# ---------------------------------------------------------------- the command
def parse_args(argv):
  return experiment.parse_args(
      argv, __doc__.split('\n')[0],
      'print the sizes, steps and time estimate, run nothing')


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  plan = make_scaling_plan(args.scale, args.quick, args.machine)
  estimate = plan.estimate_seconds()
  print('sizes:', json.dumps({size.name: {'depth': size.depth,
                                          'width': size.width}
                              for size in plan.sizes}))
  print('pretrain_epochs:', f'{plan.protocol.pretrain_epochs:g}',
        '(every size)')
  print('cuts:', json.dumps(list(plan.cuts)))
  print('steps:', json.dumps(plan.steps()))
  print('runs:', json.dumps(plan.runs()))
  experiment.print_estimate(estimate, args.machine)
  if args.plan_only:
    print(json.dumps(estimate, indent=1))
    return 0

  def run(stages):
    sizes = parameter_counts(plan)
    return dict(run_scaling(plan, stages, stages.echo), sizes=sizes)

  return experiment.run_experiment(
      'benchmarks/scaling.py', argv, args, estimate, run,
      experiment.writer(write_outputs, markdown_table, args.output_dir),
      CODE_PATHS, records={
          **experiment.fraction_records(FRACTIONS),
          'params_counted': PARAMS_COUNTED,
          'plan': plan.record(quick=args.quick, budget_machine=args.machine)})


if __name__ == '__main__':
  sys.exit(main())

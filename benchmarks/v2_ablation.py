r"""SimCLRv2's changes to SimCLR measured at the protocol's recipe on offline
Fashion-MNIST: the deeper projection head and the memory of negatives.

  python benchmarks/v2_ablation.py --work_dir=/tmp/simclr_v2  # <= 60 min on 2 idle CPU cores
  python benchmarks/v2_ablation.py --plan_only   # steps, runs, cuts and the time estimate
  python benchmarks/v2_ablation.py --quick       # plumbing check, a few minutes
  python benchmarks/v2_ablation.py --scale=8     # 8x epochs and widths, for one GPU

The semi-supervised protocol's splits, recipe, stages and rule of choice
(benchmarks/protocol/): ResNet-18 x1/8 (CIFAR stem, 28 px), its pretraining
(NT-Xent, batch 256, LARS 1.0, tau 0.2, crops 0.25-1, jitter 0.5, no blur,
Plan.pretrain_epochs on the pool `train[5000:]`), validation `train[:5000]`,
test read once per final model.

**Head.** Which layer finetuning reads (tf_simclr/model.py, SimCLRModel.call):
the supervised head reads hiddens[--ft_proj_selector] of the projection
head's list (tf_simclr/heads.py, ProjectionHead.call), whose element 0 is the
head's input, the backbone's output (final_avg_pool), and element k the
output of head layer k (a middle layer: Dense + BN + ReLU at the backbone's
width). Selector 0 thus finetunes the backbone alone with a new linear head
on it, the projection head unused (SimCLR's finetuning, which discards the
head); selector 1 keeps head layer 1 and trains it with the backbone; the
layers above the selector are frozen and unused. --num_proj_layers counts the
head's Dense layers: 2 is SimCLR's head (one hidden layer, then the 128-d
output), 3 SimCLRv2's. Three variants, two pretrainings:

  3_layers_from_1  the protocol's (SimCLRv2): --num_proj_layers=3 pretraining,
                   finetuned with --ft_proj_selector=1;
  3_layers_from_0  the same pretraining, finetuned with --ft_proj_selector=0;
  2_layers_from_0  SimCLR: a --num_proj_layers=2 pretraining (the same
                   recipe and length), finetuned with --ft_proj_selector=0.

each finetuned (the protocol's recipe: everything trained, a zero-initialised
head, SGD + momentum, crop area CROP_MIN_AREAS, the protocol's choice for
finetuning) at 1 % of the labels (label seeds 0, 1, 2) and 10 % (seed 0), the
learning rate chosen on validation at seed 0 per (variant, fraction) among the
same candidates for every variant (the protocol's Plan.finetune_learning_rates
unless cut, below); every seed's final model read once on test.

**Memory.** (1) A sweep of --memory_momentum in MEMORY_MOMENTA x --memory_size
in MEMORY_SIZES, plus plain SimCLR, each a pretraining of `sweep_epochs`
(2 before any cut, not below 1) scored by the encoder's kNN on
validation, every run the same number of steps; the best (K, m) wins (the
first, cheapest, on a tie). How short, and why: the sweep must see every
buffer full, so its floor, 1 epoch (215 steps), fills the largest (65 536
rows, 2 x 256 projections a step: after 128 steps) before the last 40 % of
the run. That the sweep's ranking holds at the full length is an assumption:
no committed run compares a ranking at 1-2 epochs with one at 12
(benchmarks/results/pretrain_ablation_*.json are at 3 epochs or at 12, and
the 3-epoch crop ranking did not carry to 12, benchmarks/README.md). It is
biased against m = 0.999 in particular: the memory network's weights average
the trained network's over about m / (1 - m) steps, 999 at 0.999 (longer than
the whole sweep run) against 99 at 0.99; at the full length that lag is still
50-70 % of the memory run (1 394-1 969 steps).
(2) The winner against plain SimCLR at equal wall time, at the protocol's
length: plain SimCLR is the head's 3-layer pretraining (Plan.pretrain_epochs);
the memory run gets pretrain_epochs x plain step time / memory step time
epochs, the step times measured in this run (the steady training seconds per
step of the sweep's winner and of its plain run, same length, same process:
protocol/stages.seconds_per_step), or where a record lacks them
MEMORY_STEP_COSTS from docs/performance.md (`memory.equal_wall_time.
step_cost_source` says which). Both are then measured by the encoder's kNN
(test), the linear probe (the protocol's linear_probe_flags: a new head on the
frozen backbone, all the pool's labels; test) and finetuning at 1 % (the same
rate search as 3_layers_from_1, whose runs are plain's finetuning).
The memory network's batch norm runs in inference mode (moving statistics,
tf_simclr/memory.py); tf_simclr has no flag for it, so it is not varied here.

Budget: the estimate (AblationPlan.estimate_seconds: the protocol's measured
images/s, plan_lib.RATES, and scaling.py's per-run overheads; a memory step
costs MEMORY_STEP_COSTS) must be <= BUDGET_S on 2 CPU cores of --machine's
class (as scaling.py's). Cuts, in this
order, each only when the ones before did not fit (fit_to_budget; recorded in
the plan's `cuts` and v2_ablation.json's `plan.cuts`): (1) the sweep's
pretraining epochs, from 2 down in steps of 0.25, not below 1; (2) label
seeds at 1 %: 0, 1, 2 -> 0, 1; (3) learning rates: the protocol's four ->
its two best on validation at that fraction (scaling.LEARNING_RATES, from
its committed run), for every variant alike; (4) the 10 % fraction's
few-label epochs, from 10 down to scaling.MIN_TENTH_FRACTION_EPOCHS. With
the constants of this file the default plan takes all four, each to its
floor (1-epoch sweep, 2 seeds at 1 %, rates 0.0125 and 0.05, 5 epochs at
10 %), for an estimate of 3 578 s: the three full-length pretrainings (3-layer,
2-layer, the memory's) are 2 197 s of it and the sweep 779 s; the design
before any cut is 4 944 s (on the Xeon; on the EPYC the same cuts, all at
their floors, still leave 82 min). `--plan_only` prints the cuts taken.

Writes OUTPUT_DIR/v2_ablation.json and v2_ablation.md (a head table and a
memory table). Stages run in this process (--subprocesses: one `python
run.py` each), and a stage done in --work_dir before is reused. Run it from a
tree nobody edits.
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from benchmarks import scaling
from benchmarks.protocol import experiment
from benchmarks.protocol import flags as flags_lib
from benchmarks.protocol import plan as plan_lib
from benchmarks.protocol import protocol
from benchmarks.protocol import report
from benchmarks.protocol import stages as stages_lib
# pylint: enable=wrong-import-position

CODE_PATHS = report.CODE_PATHS + ('benchmarks/scaling.py',
                                  'benchmarks/v2_ablation.py')

# ---------------------------------------------------------------- the arms
FRACTIONS = (0.01, 0.1)
LABEL_SEEDS = {0.01: (0, 1, 2), 0.1: (0,)}
# {variant: (--num_proj_layers of its pretraining, --ft_proj_selector)}.
HEAD_VARIANTS = {'3_layers_from_1': (3, 1), '2_layers_from_0': (2, 0),
                 '3_layers_from_0': (3, 0)}
OURS = '3_layers_from_1'
HEAD_TITLES = {
    '3_layers_from_1': '3-layer head, finetuned from its layer 1 (SimCLRv2, '
                       'the protocol\'s)',
    '2_layers_from_0': '2-layer head, finetuned from layer 0, the backbone '
                       '(SimCLR)',
    '3_layers_from_0': '3-layer head, finetuned from layer 0, the backbone',
}
# The few-label crop's smallest area: the protocol's validation choice for
# finetuning (scaling.py's CROP_MIN_AREAS), fixed for every variant.
CROP_MIN_AREAS = {f: scaling.CROP_MIN_AREAS['simclr'][f] for f in FRACTIONS}
# The memory grid, in the order a tie is broken (the first: cheapest).
MEMORY_SIZES = (4096, 16384, 65536)
MEMORY_MOMENTA = (0.99, 0.999)
# The memory step's time over the plain step's, ResNet-18 x1/8, 28 px, batch
# 256 (python -m tf_simclr.benchmark --variant=memory_size=K, 2-core AMD EPYC:
# docs/performance.md, "The memory of negatives"): for the estimate, and for
# the equal-wall-time arm when this run's own step times are missing.
MEMORY_STEP_COSTS = {4096: 1.31, 16384: 1.32, 65536: 1.85}
DOCUMENTED_STEP_COST = ('docs/performance.md, "The memory of negatives" '
                        '(python -m tf_simclr.benchmark '
                        '--variant=memory_size=K, 2-core AMD EPYC)')
MEASURED_STEP_COST = ('measured in this run: steady training seconds per step '
                      'of the sweep\'s winning memory run over its plain run '
                      '(same length, same process)')
BN_MODE = ('inference mode (moving statistics), fixed: tf_simclr has no flag '
           'for the memory network\'s batch-norm mode')

# ---------------------------------------------------------------- the budget
BUDGET_S = scaling.BUDGET_S
# The sweep's pretraining epochs before any cut (430 steps at batch 256), the
# cut's step and its floor: at 1 epoch (215 steps) every buffer is full before
# the last 40 % of the run (65 536 rows after 65 536 / (2 x 256) = 128 steps,
# 16 384 after 32).
SWEEP_EPOCHS = 2.0
SWEEP_EPOCHS_STEP = 0.25
MIN_SWEEP_EPOCHS = 1.0


def documented_step_cost(size):
  """MEMORY_STEP_COSTS at `size`, or at the smallest documented size above it
  (the largest's beyond them): an upper bound for sizes not measured."""
  above = [k for k in sorted(MEMORY_STEP_COSTS) if k >= size]
  return MEMORY_STEP_COSTS[above[0] if above else max(MEMORY_STEP_COSTS)]


def equal_time_epochs(plain_epochs, step_cost):
  """Epochs of a run whose steps cost step_cost times the plain run's, in the
  plain run's (plain_epochs) wall time."""
  return plain_epochs / step_cost


# ---------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class AblationPlan:
  """The protocol's Plan (`protocol`: its recipe, splits, pretraining epochs,
  label seeds, few-label epochs) and what this experiment fixes or cuts:
  the learning-rate candidates and crop area per fraction (the same for
  every variant and the memory run's finetuning), the memory grid and the
  sweep's length. `scale` is --scale (already applied to the epochs)."""
  protocol: plan_lib.Plan
  learning_rates: dict
  crop_min_areas: dict = dataclasses.field(
      default_factory=lambda: dict(CROP_MIN_AREAS))
  memory_sizes: tuple = MEMORY_SIZES
  memory_momenta: tuple = MEMORY_MOMENTA
  sweep_epochs: float = SWEEP_EPOCHS
  scale: float = 1.0
  cuts: tuple = ()

  def __post_init__(self):
    if set(self.protocol.label_seeds) != set(FRACTIONS):
      raise ValueError(f'label seeds for {FRACTIONS}: '
                       f'{self.protocol.label_seeds}')

  # -------------------------------------------------------------- plans
  def pretrain_plan(self, layers):
    """The protocol's pretraining with a projection head of `layers`."""
    return dataclasses.replace(self.protocol, num_proj_layers=layers)

  def variant_plan(self, variant, fraction):
    """The plan of `variant`'s finetuning at `fraction`: its pretraining's
    head, its selector, the fixed crop area (not swept)."""
    layers, selector = HEAD_VARIANTS[variant]
    return dataclasses.replace(
        self.pretrain_plan(layers), ft_proj_selector=selector,
        few_label_crop_min_areas=(self.crop_min_areas[fraction],))

  def memory_grid(self):
    """[(size, momentum)] of the sweep, in tie-breaking order."""
    return [(size, momentum) for size in self.memory_sizes
            for momentum in self.memory_momenta]

  def sweep_plan(self, size=0, momentum=None):
    """A sweep run: the protocol's pretraining for sweep_epochs, with the
    memory (size, momentum), or plain with size 0."""
    return dataclasses.replace(
        self.protocol, pretrain_epochs=self.sweep_epochs, memory_size=size,
        memory_momentum=(self.protocol.memory_momentum if momentum is None
                         else momentum), memory_step_cost=1.0)

  def memory_plan(self, size, momentum, step_cost):
    """The memory run at the plain pretraining's wall time: its
    pretrain_memory steps are pretrain_epochs / step_cost epochs."""
    return dataclasses.replace(self.protocol, memory_size=size,
                               memory_momentum=momentum,
                               memory_step_cost=step_cost)

  def candidates(self, fraction):
    """Learning rates tried at `fraction`: 1 where not swept."""
    if fraction not in self.protocol.sweep_fractions:
      return 1
    return len(self.learning_rates[fraction])

  # -------------------------------------------------------------- size
  def steps(self):
    """{stage: training steps}; the memory run's per documented size (its
    real steps come from the step cost measured in the run)."""
    steps = self.protocol.steps()
    return {
        'pretrain': steps['pretrain'],
        'memory_sweep': plan_lib.steps_for(
            self.sweep_epochs, self.protocol.pool_size,
            self.protocol.pretrain_batch),
        'pretrain_memory_estimated': {
            size: self.memory_plan(size, 0.99, documented_step_cost(
                size)).steps()['pretrain_memory']
            for size in self.memory_sizes},
        'linear_probe': steps['linear_probe'],
        **{f'few_label@{plan_lib.fraction_key(f)}':
               steps[f'few_label@{plan_lib.fraction_key(f)}']
           for f in FRACTIONS}}

  def runs(self):
    """{kind: training runs}."""
    seeds = {f: len(s) for f, s in self.protocol.label_seeds.items()}
    few = {f: self.candidates(f) + seeds[f] - 1 for f in FRACTIONS}
    return {'pretrain': len({l for l, _ in HEAD_VARIANTS.values()}),
            'memory_sweep': 1 + len(self.memory_grid()),
            'pretrain_memory': 1, 'linear_probe': 2,
            'head_finetune': {v: sum(few.values()) for v in HEAD_VARIANTS},
            'memory_finetune': few[0.01]}

  def estimate_seconds(self):
    """Expected wall time on 2 CPU cores, {part: seconds} plus 'total': the
    protocol's images/s (plan_lib.RATES) and scaling.py's fixed costs of a
    run in this process (RUN_OVERHEAD_S, PRETRAIN_KNN_EVAL_S); a final run
    evaluates test (plan_lib.FINAL_EVAL_EXTRA_S more than validation), the
    chosen candidate's test read is a stage of its own (TEST_EVAL_S)."""
    rates, p = plan_lib.RATES, self.protocol
    steps = self.steps()
    train_image_s = p.pretrain_batch / rates['pretrain']
    pretrain = (steps['pretrain'] * train_image_s + scaling.RUN_OVERHEAD_S +
                scaling.PRETRAIN_KNN_EVAL_S + plan_lib.FINAL_EVAL_EXTRA_S)
    sweep_run = steps['memory_sweep'] * train_image_s
    estimate = {
        f'pretrain_{layers}_layers': pretrain
        for layers in sorted({l for l, _ in HEAD_VARIANTS.values()},
                             reverse=True)}
    estimate['memory_sweep'] = sum(
        sweep_run * cost + scaling.RUN_OVERHEAD_S + scaling.PRETRAIN_KNN_EVAL_S
        for cost in [1.0] + [documented_step_cost(size)
                             for size, _ in self.memory_grid()])
    # Equal wall time: the memory run trains as long as the plain one.
    estimate['pretrain_memory'] = pretrain
    estimate['linear_probes'] = 2 * (
        steps['linear_probe'] * p.linear_batch / rates['linear_probe'] +
        scaling.RUN_OVERHEAD_S + plan_lib.FINAL_EVAL_EXTRA_S)

    def few_label(fraction):
      key = plan_lib.fraction_key(fraction)
      run = (steps[f'few_label@{key}'] * p.few_label_batch[fraction] /
             rates['few_label'] + scaling.RUN_OVERHEAD_S)
      seeds = len(p.label_seeds[fraction])
      swept = self.candidates(fraction) > 1
      return (run * (self.candidates(fraction) + seeds - 1) +
              plan_lib.TEST_EVAL_S * swept +
              plan_lib.FINAL_EVAL_EXTRA_S * (seeds - swept))

    estimate['head_finetune'] = len(HEAD_VARIANTS) * sum(
        few_label(f) for f in FRACTIONS)
    estimate['memory_finetune'] = few_label(0.01)
    estimate['total'] = sum(estimate.values())
    return estimate

  def record(self, **extra):
    """The plan as v2_ablation.json records it."""
    protocol_record = plan_lib.plan_record(self.protocol)
    return {
        'protocol': {k: v for k, v in protocol_record.items()
                     if k not in UNUSED_PROTOCOL_FIELDS},
        'head_variants': {v: {'num_proj_layers': layers,
                              'ft_proj_selector': selector}
                          for v, (layers, selector) in HEAD_VARIANTS.items()},
        'fractions': [plan_lib.fraction_key(f) for f in FRACTIONS],
        'learning_rates': {plan_lib.fraction_key(f): list(rates)
                           for f, rates in self.learning_rates.items()},
        'crop_min_areas': {plan_lib.fraction_key(f): area
                           for f, area in self.crop_min_areas.items()},
        'memory_sizes': list(self.memory_sizes),
        'memory_momenta': list(self.memory_momenta),
        'sweep_epochs': self.sweep_epochs,
        'memory_step_costs_documented': {
            str(k): v for k, v in MEMORY_STEP_COSTS.items()},
        'steps': self.steps(), 'runs': self.runs(), 'cuts': list(self.cuts),
        'scale': self.scale} | extra


# Protocol fields this experiment does not read, or replaces by its own.
UNUSED_PROTOCOL_FIELDS = (
    'steps', 'runs', 'student_width', 'supervised_learning_rates',
    'finetune_learning_rates', 'few_label_crop_min_areas',
    'crop_sweep_fractions', 'distill_batch', 'distill_epochs',
    'distill_small_epochs', 'distill_learning_rates', 'student_inits',
    'small_student_inits', 'student_pretrain_epochs', 'logreg_cs',
    'memory_size', 'memory_momentum', 'memory_step_cost', 'num_proj_layers',
    'ft_proj_selector')


def full_design():
  """The experiment before any cut: the protocol's Plan at 1 % (label seeds
  0, 1, 2) and 10 % (seed 0), its four finetuning rates at both, its 12
  pretraining epochs, a sweep of SWEEP_EPOCHS."""
  base = plan_lib.Plan()
  return AblationPlan(
      protocol=dataclasses.replace(
          base, label_seeds=dict(LABEL_SEEDS), sweep_fractions=FRACTIONS,
          crop_sweep_fractions=FRACTIONS),
      learning_rates={f: base.finetune_learning_rates for f in FRACTIONS})


def fit_to_budget(plan, budget_s=BUDGET_S):
  """`plan` cut, in the module docstring's order, until its estimate is at
  most budget_s (each cut recorded in plan.cuts); the last cut's plan even
  when it still does not fit."""
  def fits(candidate):
    return candidate.estimate_seconds()['total'] <= budget_s

  def cut(plan, text, protocol=None, **changes):
    if protocol:
      changes['protocol'] = dataclasses.replace(plan.protocol, **protocol)
    return dataclasses.replace(plan, cuts=plan.cuts + (text,), **changes)

  if fits(plan):
    return plan
  # (1) The sweep's pretraining epochs: the most that fit, not below the floor.
  full = epochs = plan.sweep_epochs
  while epochs - SWEEP_EPOCHS_STEP >= MIN_SWEEP_EPOCHS:
    epochs -= SWEEP_EPOCHS_STEP
    if fits(dataclasses.replace(plan, sweep_epochs=epochs)):
      break
  plan = cut(plan, f'sweep_epochs {full:g} -> {epochs:g}', sweep_epochs=epochs)
  if fits(plan):
    return plan
  # (2) Label seeds at 1 %: two.
  seeds = {**plan.protocol.label_seeds,
           0.01: plan.protocol.label_seeds[0.01][:2]}
  plan = cut(plan, 'label seeds at 1 %: 0, 1', protocol={'label_seeds': seeds})
  if fits(plan):
    return plan
  # (3) Learning rates: the protocol's two best at each fraction.
  plan = cut(plan, 'learning rates: the protocol\'s two best at each fraction '
             '(scaling.LEARNING_RATES)', learning_rates={
                 f: scaling.LEARNING_RATES['simclr'][f] for f in FRACTIONS})
  if fits(plan):
    return plan
  # (4) The 10 % fraction's few-label epochs.
  full = epochs = plan.protocol.few_label_epochs[0.1]
  tenth = lambda e: {**plan.protocol.few_label_epochs, 0.1: e}  # pylint: disable=unnecessary-lambda-assignment
  while epochs - 1 >= scaling.MIN_TENTH_FRACTION_EPOCHS:
    epochs -= 1
    if fits(dataclasses.replace(plan, protocol=dataclasses.replace(
        plan.protocol, few_label_epochs=tenth(epochs)))):
      break
  return cut(plan, f'few_label_epochs at 10 % {full:g} -> {epochs:g}',
             protocol={'few_label_epochs': tenth(epochs)})


def make_plan(scale=1, quick=False, machine='xeon'):
  """The default plan (fitted to BUDGET_S on `machine`, a key of
  plan_lib.MACHINE_SLOWDOWN), a tiny --quick one, or --scale=N: the default
  plan with N times its widths and epochs (for one GPU)."""
  if quick:
    base = plan_lib.make_plan(quick=True)
    return AblationPlan(
        protocol=dataclasses.replace(
            base, label_seeds={0.01: (0, 1), 0.1: (0,)},
            sweep_fractions=(0.01,), crop_sweep_fractions=(0.01,)),
        learning_rates={f: base.finetune_learning_rates for f in FRACTIONS},
        # At least two steps' projections (quick batch 64).
        memory_sizes=(256, 1024), sweep_epochs=base.pretrain_epochs)
  plan = fit_to_budget(full_design(),
                       BUDGET_S / plan_lib.MACHINE_SLOWDOWN[machine])
  if scale == 1:
    return plan
  return dataclasses.replace(
      plan, protocol=plan_lib.scaled(plan.protocol, scale),
      sweep_epochs=plan.sweep_epochs * scale, scale=scale)


# ---------------------------------------------------------------- the runs
PRETRAIN_NAMES = {layers: f'pretrain_{layers}_layers'
                  for layers in (2, 3)}


def sweep_name(plan, size=0, momentum=None):
  """'sweep_e1_plain', 'sweep_e1_K16384_m0.99'."""
  stem = f'sweep_e{plan.sweep_epochs:g}'
  return f'{stem}_plain' if not size else f'{stem}_K{size}_m{momentum:g}'


def memory_step_cost(stages, plain_name, memory_name, size):
  """(the memory step's time over the plain one's, its source, the seconds
  per step measured): from the two stage records, else the documented
  figure at `size`."""
  plain = stages_lib.seconds_per_step(stages.records[plain_name])
  memory = stages_lib.seconds_per_step(stages.records[memory_name])
  if plain and memory:
    return memory / plain, MEASURED_STEP_COST, {
        'plain_seconds_per_step': plain, 'memory_seconds_per_step': memory}
  return documented_step_cost(size), DOCUMENTED_STEP_COST, {}


def _mean(values):
  return sum(values) / len(values)


def few_label(plan, stages, fraction, variant, arm, prefix, checkpoint,
              choices):
  """protocol.few_label_arm of `variant`'s finetuning from `checkpoint` at
  `fraction` (choices keyed by `arm`, stage names by `prefix`), its crop
  area marked fixed; returns [(test top-1, model_dir)] per label seed."""
  runs = protocol.few_label_arm(
      plan.variant_plan(variant, fraction), stages, fraction, arm, prefix,
      plan.learning_rates[fraction], checkpoint, choices)
  area = choices[f'{arm}_crop_min_area@{plan_lib.fraction_key(fraction)}']
  if 'reused_from' not in area:
    area['chosen_at'] = ('fixed: the protocol\'s choice for finetuning '
                         '(scaling.py CROP_MIN_AREAS)')
  return runs


def run_memory(plan, stages, plain_dir, echo=print):
  """The sweep, the choice, the memory run at equal wall time and the two
  linear probes; returns (the 'memory' results without finetuning, the
  memory run's model_dir)."""
  names = {}
  plain_name = sweep_name(plan)
  plain_knn = stages.validation_top_1(plain_name, flags_lib.pretrain_flags(
      plan.sweep_plan(), stages.model_dir(plain_name)), key='knn_top_1')
  plain_step = stages_lib.seconds_per_step(stages.records[plain_name])
  scores, sweep = {}, []
  for size, momentum in plan.memory_grid():
    name = names[size, momentum] = sweep_name(plan, size, momentum)
    scores[size, momentum] = stages.validation_top_1(
        name, flags_lib.pretrain_flags(plan.sweep_plan(size, momentum),
                                       stages.model_dir(name), memory=True),
        key='knn_top_1')
    step = stages_lib.seconds_per_step(stages.records[name])
    sweep.append({'size': size, 'momentum': momentum,
                  'validation_knn_top_1': scores[size, momentum],
                  'seconds_per_step': step,
                  'step_cost': step / plain_step if step and plain_step
                               else None})
  size, momentum = plan_lib.best_of(scores)
  echo(f'== memory sweep: K {size}, m {momentum:g} chosen (validation kNN '
       f'{scores[size, momentum]:.4f}; plain {plain_knn:.4f})')
  cost, source, measured = memory_step_cost(stages, plain_name,
                                            names[size, momentum], size)
  memory_plan = plan.memory_plan(size, momentum, cost)
  memory_steps = memory_plan.steps()['pretrain_memory']
  memory_name = f'pretrain_memory_K{size}_m{momentum:g}_steps{memory_steps}'
  memory_dir = stages.model_dir(memory_name)
  memory_test = stages.train_and_test(memory_name, flags_lib.pretrain_flags(
      memory_plan, memory_dir, memory=True))
  probes = {}
  for arm, arm_plan, checkpoint in (
      ('plain', plan.pretrain_plan(3), plain_dir),
      ('with_memory', memory_plan, memory_dir)):
    probe_name = ('linear_probe_plain' if arm == 'plain' else
                  memory_name.replace('pretrain_', 'linear_probe_', 1))
    probes[arm] = stages.train_and_test(
        probe_name, flags_lib.linear_probe_flags(
            arm_plan, stages.model_dir(probe_name), checkpoint))[
                'label_top_1_accuracy']
  plain_pretrain = PRETRAIN_NAMES[3]
  plain_steps = plan.protocol.steps()['pretrain']
  memory = {
      'sweep': sweep,
      'sweep_plain': {'validation_knn_top_1': plain_knn,
                      'seconds_per_step': plain_step},
      'sweep_epochs': plan.sweep_epochs,
      'sweep_steps': plan.steps()['memory_sweep'],
      'chosen': {'size': size, 'momentum': momentum},
      'equal_wall_time': {
          'plain_epochs': plan.protocol.pretrain_epochs,
          'plain_steps': plain_steps, 'step_cost': cost,
          'step_cost_source': source, **measured,
          'memory_epochs': equal_time_epochs(plan.protocol.pretrain_epochs,
                                             cost),
          'memory_steps': memory_steps},
      'plain': {'knn_top_1': stages.records[plain_pretrain]['result'][
                    'knn_top_1'],
                'linear_probe_top_1': probes['plain'],
                'pretrain_seconds': stages.records[plain_pretrain]['seconds'],
                'pretrain_steps': plain_steps, 'stage': plain_pretrain},
      'with_memory': {'knn_top_1': memory_test['knn_top_1'],
                      'linear_probe_top_1': probes['with_memory'],
                      'pretrain_seconds': stages.records[memory_name][
                          'seconds'],
                      'pretrain_steps': memory_steps, 'stage': memory_name},
      'memory_network_batch_norm': BN_MODE,
  }
  return memory, memory_dir


def run_ablation(plan, stages, echo=print):
  """Runs every stage; returns the results dict (without the run's
  metadata)."""
  choices, encoder, pretrain_dirs = {}, {}, {}
  # The pretrainings: final models (nothing is chosen on them), read on test.
  for layers in sorted({l for l, _ in HEAD_VARIANTS.values()}, reverse=True):
    name = PRETRAIN_NAMES[layers]
    pretrain_dirs[layers] = stages.model_dir(name)
    result = stages.train_and_test(name, flags_lib.pretrain_flags(
        plan.pretrain_plan(layers), pretrain_dirs[layers]))
    encoder[name] = {'knn_top_1': result['knn_top_1'],
                     'linear_head_top_1': result['label_top_1_accuracy']}
  memory, memory_dir = run_memory(plan, stages, pretrain_dirs[3], echo)
  memory_name = memory['with_memory']['stage']
  # Few-label: every variant, then the memory run's finetuning at 1 % (the
  # protocol's finetuning, as 3_layers_from_1, from the memory run).
  head_seeds = {variant: {} for variant in HEAD_VARIANTS}
  for fraction in FRACTIONS:
    key = plan_lib.fraction_key(fraction)
    for variant, (layers, _) in HEAD_VARIANTS.items():
      runs = few_label(plan, stages, fraction, variant, variant,
                       f'finetune_{variant}', pretrain_dirs[layers], choices)
      head_seeds[variant][key] = [top for top, _ in runs]
    echo(f'== head, {fraction:.0%} labels, test top-1: ' + ', '.join(
        f'{v} {_mean(head_seeds[v][key]):.4f}' for v in HEAD_VARIANTS))
  memory_runs = few_label(plan, stages, 0.01, OURS, 'with_memory',
                          memory_name.replace('pretrain_', 'finetune_', 1),
                          memory_dir, choices)
  memory['with_memory']['finetune_top_1_seeds_at_0.01'] = [
      top for top, _ in memory_runs]
  memory['with_memory']['finetune_top_1_at_0.01'] = _mean(
      [top for top, _ in memory_runs])
  memory['plain']['finetune_top_1_seeds_at_0.01'] = head_seeds[OURS]['0.01']
  memory['plain']['finetune_top_1_at_0.01'] = _mean(head_seeds[OURS]['0.01'])
  echo('== memory, test: ' + ', '.join(
      f'{arm} kNN {memory[arm]["knn_top_1"]:.4f} probe '
      f'{memory[arm]["linear_probe_top_1"]:.4f} finetune 1 % '
      f'{memory[arm]["finetune_top_1_at_0.01"]:.4f}'
      for arm in ('plain', 'with_memory')))
  return {'head': {v: {k: _mean(s) for k, s in by_key.items()}
                   for v, by_key in head_seeds.items()},
          'head_seeds': head_seeds, 'encoder': encoder, 'memory': memory,
          'validation_choices': choices}


# ---------------------------------------------------------------- outputs
def _percent(value):
  return '—' if value is None else f'{100 * value:.2f}'


def _cell(values):
  if not values:
    return '—'
  if len(values) == 1:
    return _percent(values[0])
  return (f'{100 * _mean(values):.2f} ({100 * min(values):.1f}–'
          f'{100 * max(values):.1f})')


def markdown_table(results):
  """v2_ablation.md: the head table, the memory sweep and comparison, the
  pretrainings, the choices and wall times."""
  keys = results['fractions']
  seeds = results['head_seeds']
  choices = results.get('validation_choices', {})
  lines = ['Test top-1 accuracy (%) on Fashion-MNIST (10 000 test images), '
           'mean over label seeds (min–max).', '',
           '| projection head, finetuned from | ' + ' | '.join(
               f'{report.fraction_label(float(k))} labels '
               f'({len(seeds[OURS][k])} seed'
               f'{"s" if len(seeds[OURS][k]) != 1 else ""})' for k in keys)
           + ' | learning rate chosen on validation |',
           '|---|' + '---:|' * len(keys) + '---|']
  for variant in results['head']:
    rates = ' / '.join(
        f'{choices[f"{variant}_learning_rate@{k}"]["chosen"]:g}'
        if f'{variant}_learning_rate@{k}' in choices else '—' for k in keys)
    lines.append(f'| {HEAD_TITLES[variant]} | ' + ' | '.join(
        _cell(seeds[variant].get(k)) for k in keys) + f' | {rates} |')
  lines += ['', '| pretraining | test kNN (%) | its linear head (%) |',
            '|---|---:|---:|']
  for name, entry in results.get('encoder', {}).items():
    lines.append(f'| {name} | {_percent(entry.get("knn_top_1"))} | '
                 f'{_percent(entry.get("linear_head_top_1"))} |')
  memory = results['memory']
  sweep = memory['sweep']
  sizes = sorted({entry['size'] for entry in sweep})
  momenta = sorted({entry['momentum'] for entry in sweep})
  chosen = memory['chosen']
  epochs = memory['sweep_epochs']
  lines += ['', f'Memory of negatives, sweep: validation kNN (%) after '
            f'{epochs:g} epoch{"" if epochs == 1 else "s"} '
            f'({memory["sweep_steps"]} steps), the winner in bold; plain '
            'SimCLR at that length: '
            f'{_percent(memory["sweep_plain"]["validation_knn_top_1"])}.', '',
            '| K | ' + ' | '.join(f'm {m:g}' for m in momenta) +
            ' | step time × plain\'s (' +
            ' / '.join(f'm {m:g}' for m in momenta) + ') |',
            '|---:|' + '---:|' * (len(momenta) + 1)]
  for size in sizes:
    cells, costs = [], []
    for momentum in momenta:
      [entry] = [e for e in sweep if e['size'] == size and
                 e['momentum'] == momentum]
      text = _percent(entry['validation_knn_top_1'])
      if (size, momentum) == (chosen['size'], chosen['momentum']):
        text = f'**{text}**'
      cells.append(text)
      if entry.get('step_cost'):
        costs.append(f'{entry["step_cost"]:.2f}')
    lines.append(f'| {size} | ' + ' | '.join(cells) +
                 f' | {" / ".join(costs) or "—"} |')
  equal = memory['equal_wall_time']
  plain, with_memory = memory['plain'], memory['with_memory']
  lines += ['', f'Plain SimCLR against the memory (K {chosen["size"]}, m '
            f'{chosen["momentum"]:g}) at equal wall time: '
            f'{equal["plain_epochs"]:g} epochs against '
            f'{equal["memory_epochs"]:.2f} (step cost '
            f'{equal["step_cost"]:.3f}, {equal["step_cost_source"]}). Test '
            'top-1 (%).', '',
            '| | plain SimCLR | with the memory | difference (points) |',
            '|---|---:|---:|---:|']
  for key, title in (('knn_top_1', 'encoder kNN (k 200, cosine)'),
                     ('linear_probe_top_1', 'linear probe'),
                     ('finetune_top_1_at_0.01', 'finetuned at 1 % labels')):
    a, b = plain.get(key), with_memory.get(key)
    lines.append(f'| {title} | {_percent(a)} | {_percent(b)} | ' + (
        '—' if a is None or b is None else f'{100 * (b - a):+.2f}') + ' |')
  lines += [f'| pretraining steps | {plain["pretrain_steps"]} | '
            f'{with_memory["pretrain_steps"]} | |',
            f'| pretraining wall time (s) | {plain["pretrain_seconds"]:.0f} | '
            f'{with_memory["pretrain_seconds"]:.0f} | |', '',
            f'The memory network\'s batch norm: '
            f'{memory["memory_network_batch_norm"]}.', '']
  plan = results.get('plan', {})
  if plan.get('cuts'):
    lines += ['Cut to fit the budget: ' + '; '.join(plan['cuts']) + '.', '']
  lines += ['Choices made on the validation split (validation top-1):', '',
            *report.choice_lines(choices), '', *report.stage_time_lines(results),
            '', *report.machine_lines(results)]
  return '\n'.join(lines)


def write_outputs(results, output_dir):
  """v2_ablation.json and v2_ablation.md; returns {name: path}."""
  os.makedirs(output_dir, exist_ok=True)
  paths = {name: os.path.join(output_dir, name) for name in (
      'v2_ablation.json', 'v2_ablation.md')}
  with open(paths['v2_ablation.json'], 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(paths['v2_ablation.md'], 'w') as f:
    f.write(markdown_table(results))
  return paths


# ---------------------------------------------------------------- the command
def parse_args(argv):
  return experiment.parse_args(
      argv, __doc__.split('\n')[0],
      'print the steps, runs, cuts and time estimate, run nothing')


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  plan = make_plan(args.scale, args.quick, args.machine)
  estimate = plan.estimate_seconds()
  print('pretrain_epochs:', f'{plan.protocol.pretrain_epochs:g}',
        '(every full pretraining; the memory run: the same wall time)')
  print('sweep_epochs:', f'{plan.sweep_epochs:g}')
  print('cuts:', json.dumps(list(plan.cuts)))
  print('steps:', json.dumps(plan.steps()))
  print('runs:', json.dumps(plan.runs()))
  experiment.print_estimate(estimate, args.machine)
  if args.plan_only:
    print(json.dumps(estimate, indent=1))
    return 0

  def run(stages):
    results = run_ablation(plan, stages, stages.echo)
    memory = results['memory']
    memory['pretraining_curves'] = {
        arm: {tag: [[s, v] for s, v in points] for tag, points in
              report.read_scalars(
                  stages.model_dir(memory[arm]['stage'])).items()}
        for arm in ('plain', 'with_memory')}
    return results

  records = dict(experiment.fraction_records(FRACTIONS),
                 plan=plan.record(quick=args.quick,
                                  budget_machine=args.machine))
  return experiment.run_experiment(
      'benchmarks/v2_ablation.py', argv, args, estimate, run,
      experiment.writer(write_outputs, markdown_table, args.output_dir),
      CODE_PATHS, records)


if __name__ == '__main__':
  sys.exit(main())

"""The protocol's arms over a Plan: a pretraining and its measures (kNN,
linear probe, logistic regression on its features), the few-label arms (a
learning rate and crop area chosen on validation, then every label seed
tested once), the students distilled from each seed's teacher, and
run_protocol, which runs them all at every fraction."""

import os
import time

from benchmarks.protocol import anchors
from benchmarks.protocol import flags as flags_lib
from benchmarks.protocol import plan as plan_lib
from benchmarks.protocol import stages as stages_lib

# The stage-name prefix of each few-label arm's runs.
FEW_LABEL_PREFIXES = {'supervised': 'supervised', 'simclr': 'finetune',
                      plan_lib.MEMORY_ARM: 'finetune_memory'}


# ---------------------------------------------------------------- pretrainings
def measure_pretraining(plan, stages, name, probe_name, memory=False):
  """Runs a pretraining and its linear probe, each evaluated on the test split
  at its end (no choice is made on either); returns the encoder's kNN, the
  pretraining's linear head and the probe's top-1."""
  model_dir = stages.model_dir(name)
  test = stages.train_and_test(name, flags_lib.pretrain_flags(
      plan, model_dir, memory=memory))
  probe = flags_lib.linear_probe_flags(plan, stages.model_dir(probe_name),
                                       model_dir)
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
    logreg = anchors.feature_logistic_regression(
        plan, stages.model_dir(name), test=True)
    return {'validation': {str(c): top_1 for c, top_1 in
                           logreg['validation'].items()},
            'c': logreg['c'], 'test_top_1': logreg['test_top_1'],
            'seconds': time.time() - started}

  logreg, reused = stages_lib.computed_once(
      stages, os.path.join(stages.model_dir(name), 'feature_logreg.json'),
      f'{name}_feature_logreg', compute)
  stages.echo(f'[{name}] logistic regression on its features: test '
              f'{logreg["test_top_1"]:.4f} (C={logreg["c"]})'
              f'{", reused" if reused else ""}')
  return logreg


def cached_raw_pixel_anchors(plan, stages, echo=print):
  """raw_pixel_anchors, computed once per work_dir (raw_pixel_anchors.json)."""
  measured, reused = stages_lib.computed_once(
      stages, os.path.join(stages.work_dir, 'raw_pixel_anchors.json'),
      'raw_pixel_anchors', lambda: anchors.raw_pixel_anchors(plan, echo))
  if reused:
    echo(f'[raw pixels] done before ({measured["seconds"]:.0f} s), reused')
  return {key: value for key, value in measured.items() if key != 'seconds'}


def small_pretraining(plan, stages, encoder):
  """The half-width student's own pretraining (run once, reused after);
  records its kNN in encoder['student_knn_top_1']; returns its model_dir."""
  model_dir = stages.model_dir('pretrain_small')
  test = stages.train_and_test('pretrain_small', flags_lib.pretrain_flags(
      plan, model_dir, small=True))
  encoder['student_knn_top_1'] = test['knn_top_1']
  return model_dir


# ---------------------------------------------------------------- few-label arms
def _last_swept(choices, prefix):
  """The key of the last choice named `prefix`... that was swept, not
  reused."""
  return [key for key in choices if key.startswith(prefix)
          and 'reused_from' not in choices[key]][-1]


def few_label_arm(plan, stages, fraction, arm, prefix, rates, checkpoint,
                  choices):
  """One few-label arm at `fraction` from `checkpoint` ('scratch' or a
  pretraining): its learning rate among `rates` (at the first crop area),
  then its crop area (at that rate), each chosen on validation at the first
  label seed or reused from the last fraction that swept it (per
  plan.sweep_fractions / crop_sweep_fractions), recorded in `choices`; then
  every seed's final run, tested once. Returns [(test top-1, model_dir)] per
  label seed."""
  key = plan_lib.fraction_key(fraction)
  seeds = plan.label_seeds[fraction]
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
    name = flags_lib.few_label_name(prefix, key, seeds[0], rate, area)
    flags_of[rate, area] = flags_lib.few_label_flags(
        plan, fraction, seeds[0], stages.model_dir(name), rate, checkpoint,
        crop_min_area=area)
    return stages.validation_top_1(name, flags_of[rate, area])

  rate_scores = ({r: candidate(r, areas[0]) for r in rates}
                 if len(rates) > 1 else {})
  rate = plan_lib.best_of(rate_scores) if rate_scores else rates[0]
  area_scores = ({a: candidate(rate, a) for a in areas}
                 if len(areas) > 1 else {})
  area = plan_lib.best_of(area_scores) if area_scores else areas[0]
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
    name = flags_lib.few_label_name(prefix, key, seed, rate, area)
    if (rate, area) in flags_of and seed == seeds[0]:
      # Trained in the sweep.
      result = stages.test(name, flags_of[rate, area])
    else:
      result = stages.train_and_test(name, flags_lib.few_label_flags(
          plan, fraction, seed, stages.model_dir(name), rate, checkpoint,
          crop_min_area=area))
    per_seed.append((result['label_top_1_accuracy'], stages.model_dir(name)))
  return per_seed


# ---------------------------------------------------------------- students
def _called(value):
  """value(), or value itself when it is not callable."""
  return value() if callable(value) else value


def _student_run(plan, stages, arm, key, seed, teacher, pretrain_dir, init,
                 rate, crop_min_area, name_prefix=None):
  """(stage name, flags) of a student of `arm` for (key, seed): starting
  from init ('pretrained' reads pretrain_dir, called first when it is a
  function), trained at learning rate `rate` on crops of crop_min_area to 1
  (its teacher's finetuning crops). The stage name starts with name_prefix
  (default: arm)."""
  name = (f'{name_prefix or arm}@{key}_seed{seed}_{init}_lr{rate:g}'
          f'_area{crop_min_area:g}')
  start = flags_lib.student_init_checkpoint(
      init, _called(pretrain_dir) if init == 'pretrained' else None, teacher)
  return name, flags_lib.distill_flags(
      plan, stages.model_dir(name), teacher, rate, float(key),
      small=arm == 'distill_small', init_checkpoint=start,
      crop_min_area=crop_min_area)


def _choose_student(plan, stages, arm, key, seed, teacher, pretrain_dir,
                    choices, crop_min_area, name_prefix=None):
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
                               pretrain_dir, init, rate, crop_min_area,
                               name_prefix)
    names[init, rate] = name
    scores[init, rate] = stages.validation_top_1(name, flags)
  chosen = plan_lib.best_of(scores)
  choices[record_key] = {
      'validation_top_1': {label(*c): score for c, score in scores.items()},
      'chosen': label(*chosen), 'chosen_at': key, 'run': names[chosen]}
  return chosen


def student_arm(plan, stages, fraction, arm, teachers, pretrain_dir, choices,
                crop_min_area, name_prefix=None):
  """Each label seed's teacher (teachers: {seed: model_dir}) distilled on the
  pool without labels into the student of `arm` ('self_distill': the
  teacher's network, plan.width; 'distill_small': plan.student_width), on
  the teacher's crops; its start and learning rate chosen at this fraction's
  first seed (the teachers differ too much across fractions for one choice
  to carry over). Stage names start with name_prefix (default: arm).
  Returns [(test top-1, agreement with the teacher)] per label seed."""
  key = plan_lib.fraction_key(fraction)
  seeds = plan.label_seeds[fraction]
  recipe = _choose_student(plan, stages, arm, key, seeds[0],
                           teachers[seeds[0]], pretrain_dir, choices,
                           crop_min_area, name_prefix)
  chosen_on = choices[f'{arm}_student@{key}'].get('run')
  per_seed = []
  for seed in seeds:
    name, flags = _student_run(plan, stages, arm, key, seed, teachers[seed],
                               pretrain_dir, *recipe,
                               crop_min_area=crop_min_area,
                               name_prefix=name_prefix)
    result = (stages.test(name, flags) if name == chosen_on else
              stages.train_and_test(name, flags))
    per_seed.append((result['label_top_1_accuracy'],
                     result.get('teacher_agreement')))
  return per_seed


# ---------------------------------------------------------------- the protocol
def run_protocol(plan, stages, echo=print):
  """Runs every stage; returns the results dict (without outputs/metadata)."""
  arms = plan.arms
  top_1 = {arm: {} for arm in arms}
  seeds_top_1 = {arm: {} for arm in arms}
  choices, encoder, agreement = {}, {}, {}

  # Pretraining, its kNN and linear probe.
  pretrain_dir = stages.model_dir('pretrain')
  encoder.update(measure_pretraining(plan, stages, 'pretrain', 'linear_probe'))
  encoder.update(cached_raw_pixel_anchors(plan, stages, echo))
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
  for fraction in plan_lib.FRACTIONS:
    key = plan_lib.fraction_key(fraction)
    teachers = {}  # {label seed: the simclr arm's model_dir}
    # The supervised baseline and finetuning: the same number of candidates.
    few_label_arms = [
        ('supervised', plan.supervised_learning_rates, 'scratch'),
        ('simclr', plan.finetune_learning_rates, pretrain_dir)]
    if memory_dir:
      few_label_arms.append((plan_lib.MEMORY_ARM, plan.finetune_learning_rates,
                             memory_dir))
    for arm, rates, checkpoint in few_label_arms:
      runs = few_label_arm(plan, stages, fraction, arm,
                           FEW_LABEL_PREFIXES[arm], rates, checkpoint, choices)
      seeds_top_1[arm][key] = [top for top, _ in runs]
      if arm == 'simclr':
        teachers = dict(zip(plan.label_seeds[fraction],
                            (model_dir for _, model_dir in runs)))
    teacher_crop = choices[f'simclr_crop_min_area@{key}']['chosen']
    for arm in ('self_distill', 'distill_small'):
      runs = student_arm(plan, stages, fraction, arm, teachers,
                         pretrain_dirs[arm], choices, teacher_crop)
      seeds_top_1[arm][key] = [top for top, _ in runs]
      agreement.setdefault(arm, {})[key] = [agrees for _, agrees in runs]
    for arm in arms:
      top_1[arm][key] = sum(seeds_top_1[arm][key]) / len(seeds_top_1[arm][key])
    echo(f'== {fraction:.1%} labels, test top-1: ' + ', '.join(
        f'{arm} {top_1[arm][key]:.4f}' for arm in arms))
  return {'arms': list(arms), 'top_1': top_1, 'top_1_seeds': seeds_top_1,
          'encoder': encoder, 'validation_choices': choices,
          'teacher_agreement': agreement}

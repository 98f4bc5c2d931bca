"""Tests of benchmarks/scaling.py over faked stages (as the protocol's tests
fake them): every size x fraction x seed final model read on test once and
the candidates on validation only, the distillations' pairs, the parameter
counts of the built networks, the budget and its cuts, the outputs."""

import dataclasses
import json

import pytest

import test_semi_supervised as semi  # pylint: disable=g-bad-import-order
from benchmarks import scaling
from benchmarks.protocol import flags as flags_lib
from benchmarks.protocol import plan as plan_lib
from benchmarks.protocol import stages as stages_lib

FRACTIONS = plan_lib.FRACTIONS
PREFIXES = {'supervised': 'supervised', 'simclr': 'finetune'}


_score = semi.stage_score


class _TracedStages(semi._FakeStages):  # pylint: disable=protected-access
  """The protocol tests' fake stages (validation scores favour lr 0.05 and
  6.4; a tie goes to the first candidate) whose test-split reads score
  _score(stage name)."""

  def run(self, name, flags, result_name='result'):
    record = super().run(name, flags, result_name)
    if '--eval_split=test' in flags:
      record['result']['label_top_1_accuracy'] = _score(name)
    return record


def _faked_scaling(plan, tmp_path):
  """run_scaling over _TracedStages: (results, stages, {name: flags} read on
  test, {name: flags} read on validation)."""
  stages = _TracedStages(str(tmp_path))
  results = scaling.run_scaling(plan, stages, echo=lambda *_: None)
  tested, validated = semi.reads_by_split(
      stages, plan.protocol.validation_split)
  return results, stages, tested, validated


@pytest.fixture(scope='module')
def default_plan():
  return scaling.make_scaling_plan()


# ---------------------------------------------------------------- test once
def test_every_final_model_is_tested_once_and_candidates_only_validated(
    default_plan, tmp_path):
  plan = default_plan
  results, stages, tested, validated = _faked_scaling(plan, tmp_path)
  names = [name for name, _ in stages.calls]
  assert len(names) == len(set(names))  # No stage run twice.
  assert len(tested) + len(validated) == len(names)
  seeds = plan.protocol.label_seeds
  finals = 0
  for size in plan.sizes:
    chosen = results['validation_choices'][size.name]
    for fraction in FRACTIONS:
      key = plan_lib.fraction_key(fraction)
      for arm, prefix in PREFIXES.items():
        stem = f'{size.tag}_{prefix}@{key}_'
        rate = chosen[f'{arm}_learning_rate@{key}']['chosen']
        area = chosen[f'{arm}_crop_min_area@{key}']['chosen']
        assert area == scaling.CROP_MIN_AREAS[arm][fraction]
        # The candidates: seed 0, every rate of the arm at its fixed area,
        # read on validation only; as many for both arms.
        candidates = sorted(n for n in validated if n.startswith(stem))
        assert candidates == sorted(
            f'{stem}seed0_lr{r:g}_area{area:g}'
            for r in plan.learning_rates[arm][fraction])
        assert len(candidates) == plan.candidates(arm, fraction) == 2
        for name in candidates:
          assert '--mode=train_then_eval' in validated[name]
          assert (f'{name}:test' in tested) == (f'_lr{rate:g}_' in name)
        # Every seed's final model: read on test exactly once, at the
        # chosen rate.
        for seed in seeds[fraction]:
          reads = [n for n in tested if n.startswith(f'{stem}seed{seed}_')]
          assert reads == [f'{stem}seed{seed}_lr{rate:g}_area{area:g}'
                           + (':test' if seed == 0 else '')]
          finals += 1
        assert results['top_1_seeds'][arm][size.name][key] == [
            _score(n) for n in tested if n.startswith(stem)]
        assert results['top_1'][arm][size.name][key] == pytest.approx(
            sum(results['top_1_seeds'][arm][size.name][key]) /
            len(seeds[fraction]))
      # Self-distillation: every seed's student trained and read on test
      # once, no candidate.
      stem = f'{size.tag}_self_distill@{key}_'
      reads = [n for n in tested if n.startswith(stem)]
      assert len(reads) == len(seeds[fraction])
      assert not [n for n in validated if n.startswith(stem)]
      finals += len(reads)
      assert results['top_1']['self_distill'][size.name][key] == (
          pytest.approx(sum(map(_score, reads)) / len(reads)))
    # The pretraining: read on validation, never on test.
    assert f'{size.tag}_pretrain' in validated
    assert results['encoder'][size.name]['validation_knn_top_1'] == 0.6
  big = [n for n in tested if '_to_' in n]
  assert len(big) == len(FRACTIONS)
  assert len(tested) == finals + len(big)
  # Only few-label candidates and the pretrainings are read on validation.
  assert all('_pretrain' in n or '_seed0_' in n for n in validated)
  assert not [n for n in validated if 'distill' in n or '_to_' in n]
  # The choices follow the validation scores (favouring lr 0.05 and 6.4, the
  # first on a tie).
  chosen = results['validation_choices'][plan.largest.name]
  assert chosen['supervised_learning_rate@0.001']['chosen'] == 6.4
  assert chosen['supervised_learning_rate@0.01']['chosen'] == 0.8
  assert chosen['simclr_learning_rate@0.001']['chosen'] == 0.003125
  assert chosen['simclr_learning_rate@0.1']['chosen'] == 0.05


def test_stages_of_a_size_build_its_network_with_the_protocol_recipe(
    default_plan, tmp_path):
  plan = default_plan
  _, stages, _, _ = _faked_scaling(plan, tmp_path)
  calls = dict(stages.calls)
  steps = set()
  for size in plan.sizes:
    for name, flags in calls.items():
      if name.startswith(f'{size.tag}_') and '_to_' not in name:
        assert f'--width_multiplier={size.width}' in flags, name
        assert f'--resnet_depth={size.depth}' in flags
    pretrain = calls[f'{size.tag}_pretrain']
    assert pretrain == flags_lib.pretrain_flags(
        plan.size_plan(size), stages.model_dir(f'{size.tag}_pretrain'))
    steps.add(flags_lib.flag_value(pretrain, 'train_steps'))
  # The same pretraining epochs for every size.
  assert steps == {str(plan_lib.steps_for(
      plan.protocol.pretrain_epochs, plan.protocol.pool_size,
      plan.protocol.pretrain_batch))}
  assert plan.protocol.pretrain_epochs >= scaling.MIN_PRETRAIN_EPOCHS
  # Finetuning starts from its own size's pretraining, the baseline from
  # scratch; the same steps for both arms and every size.
  for name, flags in calls.items():
    size_tag = name.split('_finetune@')[0]
    if '_finetune@' in name and not name.endswith(':test'):
      assert f'--checkpoint={stages.model_dir(size_tag + "_pretrain")}' in (
          flags)
      assert '--ft_proj_selector=1' in flags
    if '_supervised@' in name and not name.endswith(':test'):
      assert '--checkpoint=scratch' in flags
  for fraction in FRACTIONS:
    key = plan_lib.fraction_key(fraction)
    assert len({flags_lib.flag_value(flags, 'train_steps')
                for name, flags in calls.items()
                if f'@{key}_' in name and ('_finetune@' in name or
                                           '_supervised@' in name)}) == 1


def test_distillations_pair_the_right_models(default_plan, tmp_path):
  """Self-distillation: each size's seed teacher into its own size, starting
  from that teacher. Big to small: the largest size's seed-0 teacher into
  the smallest network from the smallest size's own pretraining, against the
  smallest size's own self-distilled model at seed 0."""
  plan = default_plan
  results, stages, tested, _ = _faked_scaling(plan, tmp_path)
  calls = dict(stages.calls)
  largest, smallest = plan.largest, plan.smallest
  assert results['big_to_small_sizes'] == {'teacher': largest.name,
                                           'student': smallest.name}
  for fraction in FRACTIONS:
    key = plan_lib.fraction_key(fraction)

    def teacher_name(size, seed, key=key):
      chosen = results['validation_choices'][size.name]
      rate = chosen[f'simclr_learning_rate@{key}']['chosen']
      area = chosen[f'simclr_crop_min_area@{key}']['chosen']
      return f'{size.tag}_finetune@{key}_seed{seed}_lr{rate:g}_area{area:g}'

    def teacher(size, seed):
      return stages.model_dir(teacher_name(size, seed))

    for size in plan.sizes:
      for seed in plan.protocol.label_seeds[fraction]:
        [name] = [n for n in tested if n.startswith(
            f'{size.tag}_self_distill@{key}_seed{seed}_')]
        flags = calls[name]
        assert f'--teacher_checkpoint={teacher(size, seed)}' in flags
        assert f'--checkpoint={teacher(size, seed)}' in flags
        assert f'--width_multiplier={size.width}' in flags
    [name] = [n for n in tested if n.startswith(
        f'{largest.tag}_to_{smallest.tag}@{key}_seed0_')]
    flags = calls[name]
    assert f'--teacher_checkpoint={teacher(largest, 0)}' in flags
    assert f'--width_multiplier={smallest.width}' in flags
    assert f'--checkpoint={stages.model_dir(smallest.tag + "_pretrain")}' in (
        flags)
    assert '--ft_proj_selector=1' in flags
    assert '--train_mode=distill' in flags
    steps = plan.steps()['big_to_small'][f'distill_small@{key}']
    assert f'--train_steps={steps}' in flags
    assert f'--crop_min_area={scaling.CROP_MIN_AREAS["simclr"][fraction]}' in (
        flags)
    [own] = [n for n in tested if n.startswith(
        f'{smallest.tag}_self_distill@{key}_seed0_')]
    assert results['big_to_small'][key] == {'student': _score(name),
                                            'small_own': _score(own)}
    # The teacher's own number: its one test read (the chosen candidate).
    assert results['big_to_small_teacher_top_1'][key] == _score(
        teacher_name(largest, 0) + ':test')


def test_self_distillation_cut_to_seed_zero(default_plan, tmp_path):
  plan = dataclasses.replace(default_plan, self_distill_all_seeds=False)
  results, _, tested, _ = _faked_scaling(plan, tmp_path)
  for size in plan.sizes:
    assert not [n for n in tested
                if n.startswith(f'{size.tag}_self_distill') and
                '_seed0_' not in n]
    assert all(len(v) == 1 for v in
               results['top_1_seeds']['self_distill'][size.name].values())
  assert plan.runs()[plan.smallest.name]['self_distill'] == 3


# ---------------------------------------------------------------- parameters
def test_parameter_counts_are_those_of_the_built_networks(default_plan):
  from tf_simclr import model as model_lib  # pylint: disable=import-outside-toplevel
  sizes = scaling.parameter_counts(default_plan)
  assert list(sizes) == ['r18_w1/16', 'r18_w1/8', 'r18_w1/4']
  for size in default_plan.sizes:
    kwargs = dict(resnet_depth=18, width_multiplier=size.width, image_size=28,
                  supervised_training=True)
    finetuned = model_lib.build_model(10, ft_proj_selector=1, **kwargs)
    supervised = model_lib.build_model(10, ft_proj_selector=0, **kwargs)
    assert sizes[size.name] == {
        'width': size.width, 'depth': 18,
        'params': finetuned.count_params(),
        'backbone_params': finetuned.resnet_model.count_params()}
    assert supervised.count_params() == finetuned.count_params()
  params = [entry['params'] for entry in sizes.values()]
  assert params == sorted(params) and params[-1] >= 4 * params[0]
  # The table shows those counts.
  text = scaling.markdown_table(dict(_fake_results(), sizes=sizes))
  for name, entry in sizes.items():
    count = f'{entry["params"]:,}'.replace(',', ' ')  # 52 038
    assert f'{name} ({count} parameters)' in text
    assert f'| {name} | 18 | {entry["width"]:g} | {count} |' in text


# ---------------------------------------------------------------- the budget
def test_plan_only_estimate_is_within_the_budget(capsys):
  assert scaling.main(['--plan_only', '--machine=xeon']) == 0
  out = capsys.readouterr().out
  estimate = json.loads(out[out.index('\n{') + 1:])
  assert estimate['total'] <= scaling.BUDGET_S == 3600
  assert set(estimate) == {'r18_w1/16', 'r18_w1/8', 'r18_w1/4',
                           'big_to_small', 'total'}
  assert estimate['total'] == pytest.approx(
      estimate['big_to_small'] + sum(
          estimate[n]['total'] for n in ('r18_w1/16', 'r18_w1/8', 'r18_w1/4')))
  # The wider network costs more in every part.
  for part in ('pretrain', 'supervised', 'simclr', 'self_distill'):
    assert (estimate['r18_w1/16'][part] < estimate['r18_w1/8'][part] <
            estimate['r18_w1/4'][part])
  assert 'pretrain_epochs: 3 (every size)' in out


def test_cuts_come_in_order_and_only_when_needed():
  full = scaling.full_design()
  assert full.protocol.pretrain_epochs == plan_lib.Plan().pretrain_epochs
  assert scaling.fit_to_budget(full, budget_s=1e9).cuts == ()
  fitted = scaling.fit_to_budget(full)
  assert fitted.estimate_seconds()['total'] <= scaling.BUDGET_S
  assert fitted == scaling.make_scaling_plan()
  # Each cut taken was needed: the plan without the last step of the last
  # cut does not fit.
  assert fitted.cuts[0].startswith('pretrain_epochs 12 -> ')
  if len(fitted.cuts) == 1:
    longer = dataclasses.replace(fitted, protocol=dataclasses.replace(
        fitted.protocol, pretrain_epochs=fitted.protocol.pretrain_epochs +
        scaling.PRETRAIN_EPOCHS_STEP))
  else:
    assert fitted.protocol.pretrain_epochs == scaling.MIN_PRETRAIN_EPOCHS
    assert fitted.cuts[1].startswith('few_label_epochs at 10 % 10 -> ')
    longer = dataclasses.replace(fitted, protocol=dataclasses.replace(
        fitted.protocol, few_label_epochs={
            **fitted.protocol.few_label_epochs,
            0.1: fitted.protocol.few_label_epochs[0.1] + 1}))
  assert longer.estimate_seconds()['total'] > scaling.BUDGET_S
  # A budget nothing fits: every cut, in order, each at its floor.
  tight = scaling.fit_to_budget(full, budget_s=600)
  assert [cut.split(' ')[0] for cut in tight.cuts] == [
      'pretrain_epochs', 'few_label_epochs', 'one', 'self-distillation']
  assert tight.protocol.pretrain_epochs == scaling.MIN_PRETRAIN_EPOCHS
  assert tight.protocol.few_label_epochs[0.1] == (
      scaling.MIN_TENTH_FRACTION_EPOCHS)
  assert tight.protocol.sweep_fractions == (0.001, 0.01)
  assert tight.runs()['r18_w1/16'] == {
      'pretrain': 1, 'supervised': 7, 'simclr': 7, 'self_distill': 3}


def test_a_rate_reused_at_ten_percent_is_the_arms_one_percent_choice(
    default_plan, tmp_path):
  """Cut (3): one learning rate per arm at 10 %, its 1 % choice, at its
  crop area; nothing is compared at 10 %."""
  plan = dataclasses.replace(default_plan, protocol=dataclasses.replace(
      default_plan.protocol, sweep_fractions=(0.001, 0.01),
      crop_sweep_fractions=(0.001, 0.01)))
  results, _, tested, validated = _faked_scaling(plan, tmp_path)
  assert not [n for n in validated if '@0.1_' in n]
  for size in plan.sizes:
    chosen = results['validation_choices'][size.name]
    for arm, prefix in PREFIXES.items():
      choice = chosen[f'{arm}_learning_rate@0.1']
      assert choice['reused_from'] == f'{arm}_learning_rate@0.01'
      rate = chosen[f'{arm}_learning_rate@0.01']['chosen']
      assert choice['chosen'] == rate
      assert f'{size.tag}_{prefix}@0.1_seed0_lr{rate:g}_area1' in tested


def test_scale_and_quick_plans():
  scaled = scaling.make_scaling_plan(scale=8)
  default = scaling.make_scaling_plan()
  assert scaled.widths == (0.5, 1.0, 2.0)
  assert [s.name for s in scaled.sizes] == ['r18_w1/2', 'r18_w1', 'r18_w2']
  assert scaled.protocol.pretrain_epochs == 8 * default.protocol.pretrain_epochs
  assert scaled.cuts == default.cuts
  assert scaled.estimate_seconds()['total'] > 0  # The width costs apply.
  quick = scaling.make_scaling_plan(quick=True)
  assert quick.widths == scaling.WIDTHS
  assert sum(sum(runs.values()) if isinstance(runs, dict) else runs
             for runs in quick.runs().values()) < 60
  with pytest.raises(ValueError, match='as many learning-rate candidates'):
    dataclasses.replace(default, learning_rates={
        'supervised': {f: (0.1, 0.2, 0.4) for f in FRACTIONS},
        'simclr': scaling.LEARNING_RATES['simclr']})


# ---------------------------------------------------------------- outputs
def _fake_results():
  sizes = {'r18_w1/16': {'width': 0.0625, 'depth': 18, 'params': 52_038,
                         'backbone_params': 44_924},
           'r18_w1/8': {'width': 0.125, 'depth': 18, 'params': 194_978,
                        'backbone_params': 177_048},
           'r18_w1/4': {'width': 0.25, 'depth': 18, 'params': 754_746,
                        'backbone_params': 702_896}}
  seeds = {arm: {name: {'0.001': [0.5 + i / 10, 0.6], '0.01': [0.8, 0.8],
                        '0.1': [0.9]} for i, name in enumerate(sizes)}
           for arm in scaling.ARMS}
  return {
      'arms': list(scaling.ARMS), 'sizes': sizes,
      'fractions': ['0.001', '0.01', '0.1'],
      'top_1_seeds': seeds,
      'top_1': {arm: {name: {k: sum(v) / len(v) for k, v in by_key.items()}
                      for name, by_key in by_size.items()}
                for arm, by_size in seeds.items()},
      'big_to_small': {k: {'student': 0.7, 'small_own': 0.65}
                       for k in ('0.001', '0.01', '0.1')},
      'big_to_small_sizes': {'teacher': 'r18_w1/4', 'student': 'r18_w1/16'},
      'big_to_small_teacher_top_1': {k: 0.75 for k in ('0.001', '0.01', '0.1')},
      'validation_choices': {},
      'wall_time_s': {'r18_w1-4_pretrain': {'seconds': 500.0,
                                            'train_images_per_sec': 380.0}},
      'total_wall_time_s': 3500.0,
  }


def test_markdown_table_gains_and_big_to_small():
  text = scaling.markdown_table(_fake_results())
  # 0.1 %: the smallest 55.00 (mean of 0.5, 0.6), the largest 65.00.
  assert ('| 0.1 % | supervised | 55.00 (50.0–60.0) | 60.00 (60.0–60.0) | '
          '65.00 (60.0–70.0) | +10.00 |') in text
  assert '| 10 % | SimCLRv2 (finetuned) | 90.00 | 90.00 | 90.00 | +0.00 |' in (
      text)
  assert '| 1 % | 75.00 | 70.00 | 65.00 | +5.00 |' in text
  assert '| r18_w1-4_pretrain | 500 | 380 |' in text


def test_main_writes_the_keys_of_the_results(tmp_path, monkeypatch):
  """The whole command over faked stages (and fixed parameter counts):
  scaling.json's keys, scaling.md and scaling.png."""
  monkeypatch.setattr(stages_lib, 'Stages',
                      lambda work_dir, **_: _TracedStages(work_dir))
  fake_sizes = _fake_results()['sizes']
  monkeypatch.setattr(scaling, 'parameter_counts', lambda plan: fake_sizes)
  output = tmp_path / 'out'
  assert scaling.main(['--machine=xeon', f'--work_dir={tmp_path / "work"}',
                       f'--output_dir={output}']) == 0
  results = json.loads((output / 'scaling.json').read_text())
  assert set(results['git']) == {'commit', 'uncommitted_changes_in_code'}
  assert set(results['sizes']) == {'r18_w1/16', 'r18_w1/8', 'r18_w1/4'}
  for entry in results['sizes'].values():
    assert {'width', 'depth', 'params'} <= set(entry)
  assert set(results['top_1']) == {'supervised', 'simclr', 'self_distill'}
  for by_size in results['top_1'].values():
    assert set(by_size) == set(results['sizes'])
    for by_fraction in by_size.values():
      assert set(by_fraction) == {'0.001', '0.01', '0.1'}
      assert all(0 <= v <= 1 for v in by_fraction.values())
  assert set(results['big_to_small']) == {'0.001', '0.01', '0.1'}
  for entry in results['big_to_small'].values():
    assert set(entry) == {'student', 'small_own'}
  assert results['total_wall_time_s'] > 0
  assert {'cpu', 'cores'} <= set(results['machine'])
  assert 'r18_w1-4_pretrain' in results['wall_time_s']
  assert set(results['validation_choices']) == {
      'r18_w1/16', 'r18_w1/8', 'r18_w1/4', 'big_to_small'}
  assert results['plan']['cuts'] == list(scaling.make_scaling_plan().cuts)
  assert results['estimated_wall_time_s'] <= scaling.BUDGET_S
  assert (output / 'scaling.md').read_text().startswith('Test top-1')
  assert (output / 'scaling.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_machine_class_reads_the_cpu_vendor(tmp_path):
  amd, zen4, intel = (tmp_path / name for name in ('amd', 'zen4', 'intel'))
  amd.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: '
                 'AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n')
  # Two processors: the first one's lines decide.
  zen4.write_text(('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel '
                   'name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f '
                   'avx512_bf16\n\n') * 2)
  intel.write_text('processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: '
                   'Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx512f '
                   'amx_tile\n')
  assert plan_lib.machine_class(str(amd)) == 'epyc'
  assert plan_lib.machine_class(str(zen4)) == 'epyc_avx512'
  assert plan_lib.machine_class(str(intel)) == 'xeon'
  assert plan_lib.machine_class(str(tmp_path / 'missing')) == 'xeon'


def test_a_slower_machine_gets_a_plan_fitted_to_its_own_budget(capsys):
  """--machine=epyc: the plan fits BUDGET_S at the EPYC's slowdown (cutting
  more than the Xeon's), and the estimate printed is the EPYC's."""
  slowdown = plan_lib.MACHINE_SLOWDOWN['epyc']
  assert slowdown > 1
  xeon = scaling.make_scaling_plan(machine='xeon')
  epyc = scaling.make_scaling_plan(machine='epyc')
  assert epyc == scaling.fit_to_budget(scaling.full_design(),
                                       scaling.BUDGET_S / slowdown)
  assert len(epyc.cuts) > len(xeon.cuts)
  assert (epyc.estimate_seconds()['total'] <
          xeon.estimate_seconds()['total'])
  assert scaling.main(['--plan_only', '--machine=epyc']) == 0
  out = capsys.readouterr().out
  estimate = json.loads(out[out.index('\n{') + 1:])
  minutes = round(estimate['total'] * slowdown / 60)
  assert (f'estimated wall time on 2 CPU cores: {minutes} min on a 2-core '
          'AMD EPYC') in out


def test_a_faster_machine_gets_a_plan_with_fewer_cuts():
  """--machine=epyc_avx512 (faster than the rates' Xeon): the plan fits
  BUDGET_S at its factor with no more cuts than the Xeon's, more pretraining
  epochs, and an estimate over BUDGET_S on the Xeon itself."""
  factor = plan_lib.MACHINE_SLOWDOWN['epyc_avx512']
  assert factor < 1
  xeon = scaling.make_scaling_plan(machine='xeon')
  fast = scaling.make_scaling_plan(machine='epyc_avx512')
  assert fast == scaling.fit_to_budget(scaling.full_design(),
                                       scaling.BUDGET_S / factor)
  assert len(fast.cuts) <= len(xeon.cuts)
  assert fast.protocol.pretrain_epochs > xeon.protocol.pretrain_epochs
  total = fast.estimate_seconds()['total']
  assert scaling.BUDGET_S < total <= scaling.BUDGET_S / factor

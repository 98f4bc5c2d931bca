"""Tests of benchmarks/v2_ablation.py over faked stages (as the protocol's and
scaling.py's tests fake them): the head variants' and memory runs' flags, the
equal-wall-time arithmetic, every final model read on test once and the
candidates on validation only, nothing chosen on test, the budget and its
cuts, the outputs' keys."""

import dataclasses
import json

import pytest

import test_semi_supervised as semi  # pylint: disable=g-bad-import-order
from benchmarks import scaling
from benchmarks import v2_ablation
from benchmarks.protocol import flags as flags_lib
from benchmarks.protocol import plan as plan_lib
from benchmarks.protocol import stages as stages_lib

VARIANTS = tuple(v2_ablation.HEAD_VARIANTS)
# Faked steady seconds per pretraining step: plain, and with the memory at K.
PLAIN_STEP_S = 0.25
MEMORY_STEP_S = {4096: 0.3275, 16384: 0.33, 65536: 0.4625}
# Faked validation kNN of the sweep: K 16384, m 0.99 best.
SWEEP_KNN = {(4096, 0.99): 0.78, (4096, 0.999): 0.74, (16384, 0.99): 0.79,
             (16384, 0.999): 0.75, (65536, 0.99): 0.785,
             (65536, 0.999): 0.70}
SWEEP_PLAIN_KNN = 0.795


_score = semi.stage_score


class _FakeStages(semi._FakeStages):  # pylint: disable=protected-access
  """The protocol tests' fake stages (validation scores favour lr 0.05; a
  tie goes to the first candidate) whose test reads score test_score(stage
  name), whose sweep runs score sweep_knn (SWEEP_KNN), and whose
  pretrainings record the phases of PLAIN_STEP_S / memory_step_s
  (MEMORY_STEP_S) per step (none with phases=False)."""

  def __init__(self, work_dir, test_score=_score, phases=True,
               sweep_knn=None, memory_step_s=None):
    super().__init__(work_dir)
    self.test_score = test_score
    self.phases = phases
    self.sweep_knn = sweep_knn or SWEEP_KNN
    self.memory_step_s = memory_step_s or MEMORY_STEP_S

  def run(self, name, flags, result_name='result'):
    if name in self.records:
      return self.records[name]
    record = super().run(name, flags, result_name)
    result = record['result']
    value = lambda flag: flags_lib.flag_value(flags, flag)  # pylint: disable=unnecessary-lambda-assignment
    if '--train_mode=pretrain' in flags:
      size = int(value('memory_size')) if any(
          f.startswith('--memory_size=') for f in flags) else 0
      steps = int(value('train_steps'))
      if self.phases:
        per_step = self.memory_step_s[size] if size else PLAIN_STEP_S
        record.update(first_loop_steps=10,
                      phases={'first_loop': 9.0,
                              'train_loops': per_step * (steps - 10)})
        record['train'] = {'global_step': steps}
      if name.startswith('sweep_'):
        result['knn_top_1'] = (self.sweep_knn[
            size, float(value('memory_momentum'))] if size else
                               SWEEP_PLAIN_KNN)
    if '--eval_split=test' in flags:
      result['label_top_1_accuracy'] = self.test_score(name)
      result['knn_top_1'] = self.test_score(name + ' kNN')
    return record


def _faked(plan, tmp_path, **fake):
  """run_ablation over _FakeStages: (results, stages, {name: flags} read on
  test, {name: flags} read on validation)."""
  stages = _FakeStages(str(tmp_path), **fake)
  results = v2_ablation.run_ablation(plan, stages, echo=lambda *_: None)
  tested, validated = semi.reads_by_split(
      stages, plan.protocol.validation_split)
  return results, stages, tested, validated


@pytest.fixture(scope='module')
def default_plan():
  return v2_ablation.make_plan()


# ---------------------------------------------------------------- the head
def test_head_variants_read_the_right_layer_of_the_right_pretraining(
    default_plan, tmp_path):
  plan = default_plan
  _, stages, _, _ = _faked(plan, tmp_path)
  calls = dict(stages.calls)
  three, two = calls['pretrain_3_layers'], calls['pretrain_2_layers']
  assert '--num_proj_layers=3' in three and '--num_proj_layers=2' in two
  # The same recipe and length: only the head depth and model_dir differ.
  assert {f.split('=')[0] for f in set(three) ^ set(two)} == {
      '--num_proj_layers', '--model_dir'}
  assert flags_lib.flag_value(three, 'train_steps') == str(
      plan_lib.steps_for(12, 55_000, 256)) == '2579'
  assert '--train_mode=pretrain' in three
  expected = {'3_layers_from_1': ('3', '1', 'pretrain_3_layers'),
              '3_layers_from_0': ('3', '0', 'pretrain_3_layers'),
              '2_layers_from_0': ('2', '0', 'pretrain_2_layers')}
  for fraction in v2_ablation.FRACTIONS:
    key = plan_lib.fraction_key(fraction)
    steps, rates = set(), {}
    for variant, (layers, selector, pretraining) in expected.items():
      runs = {n: f for n, f in calls.items()
              if n.startswith(f'finetune_{variant}@{key}_')
              and not n.endswith(':test')}
      assert runs
      for flags in runs.values():
        assert f'--num_proj_layers={layers}' in flags
        assert f'--ft_proj_selector={selector}' in flags
        assert (f'--checkpoint={stages.model_dir(pretraining)}' in flags)
        assert '--train_mode=finetune' in flags
        assert '--fine_tune_after_block=-1' in flags
        assert '--zero_init_logits_layer' in flags
        assert (f'--crop_min_area={v2_ablation.CROP_MIN_AREAS[fraction]}'
                in flags)
        steps.add(flags_lib.flag_value(flags, 'train_steps'))
      rates[variant] = sorted(
          float(flags_lib.flag_value(f, 'learning_rate'))
          for n, f in runs.items() if '_seed0_' in n)
    # The same length and the same rate candidates for every variant.
    assert len(steps) == 1
    assert list(rates.values()) == [sorted(plan.learning_rates[fraction])] * 3


def test_variant_plans_build_the_heads_flags():
  plan = v2_ablation.full_design()
  for variant, (layers, selector) in v2_ablation.HEAD_VARIANTS.items():
    flags = flags_lib.few_label_flags(
        plan.variant_plan(variant, 0.01), 0.01, 0, '/m', 0.05, '/p', 1.0)
    assert f'--num_proj_layers={layers}' in flags
    assert f'--ft_proj_selector={selector}' in flags
  # The protocol's own stages: a 3-layer head read from layer 1, as before.
  protocol = plan_lib.make_plan()
  assert '--num_proj_layers=3' in flags_lib.pretrain_flags(protocol, '/p')
  finetune = flags_lib.few_label_flags(protocol, 0.01, 0, '/m', 0.05, '/p', 1)
  assert '--ft_proj_selector=1' in finetune
  assert '--num_proj_layers=3' in finetune
  # A linear probe of the 2-layer pretraining builds its head (to restore).
  probe = flags_lib.linear_probe_flags(plan.pretrain_plan(2), '/m', '/p')
  assert '--num_proj_layers=2' in probe and '--ft_proj_selector=0' in probe


# ---------------------------------------------------------------- the memory
def test_memory_sweep_grid_and_equal_wall_time_run(default_plan, tmp_path):
  plan = default_plan
  results, stages, tested, validated = _faked(plan, tmp_path)
  calls = dict(stages.calls)
  sweep_steps = plan_lib.steps_for(plan.sweep_epochs, 55_000, 256)
  assert plan.sweep_epochs == 1 and sweep_steps == 215
  sweep = {n: f for n, f in validated.items() if n.startswith('sweep_')}
  assert len(sweep) == 1 + len(v2_ablation.MEMORY_SIZES) * len(
      v2_ablation.MEMORY_MOMENTA)
  grid = set()
  for name, flags in sweep.items():
    assert f'--train_steps={sweep_steps}' in flags
    assert '--train_mode=pretrain' in flags and '--num_proj_layers=3' in flags
    if name.endswith('_plain'):
      assert not any(f.startswith('--memory') for f in flags)
    else:
      grid.add((int(flags_lib.flag_value(flags, 'memory_size')),
                float(flags_lib.flag_value(flags, 'memory_momentum'))))
  assert grid == set(SWEEP_KNN)
  assert not [n for n in tested if n.startswith('sweep_')]
  memory = results['memory']
  assert [(e['size'], e['momentum'], e['validation_knn_top_1'])
          for e in memory['sweep']] == [
              (k, m, SWEEP_KNN[k, m]) for k in (4096, 16384, 65536)
              for m in (0.99, 0.999)]
  assert memory['chosen'] == {'size': 16384, 'momentum': 0.99}
  assert memory['sweep_plain']['validation_knn_top_1'] == SWEEP_PLAIN_KNN
  # Equal wall time: 0.33 s against 0.25 s a step is a cost of 1.32, so
  # 12 / 1.32 = 9.09 epochs: 500 000 // 256 + 1 = 1954 steps (plain 2579).
  equal = memory['equal_wall_time']
  assert equal['step_cost'] == pytest.approx(1.32)
  assert equal['step_cost_source'] == v2_ablation.MEASURED_STEP_COST
  assert equal['plain_seconds_per_step'] == pytest.approx(0.25)
  assert equal['memory_seconds_per_step'] == pytest.approx(0.33)
  assert equal['memory_epochs'] == pytest.approx(12 / 1.32)
  assert equal['memory_steps'] == memory['with_memory']['pretrain_steps'] == (
      1954)
  assert memory['plain']['pretrain_steps'] == equal['plain_steps'] == 2579
  name = memory['with_memory']['stage']
  assert name == 'pretrain_memory_K16384_m0.99_steps1954'
  flags = tested[name]
  assert '--memory_size=16384' in flags and '--memory_momentum=0.99' in flags
  assert '--train_steps=1954' in flags and '--num_proj_layers=3' in flags
  assert {f.split('=')[0] for f in set(flags) ^ set(
      calls['pretrain_3_layers'])} == {
          '--memory_size', '--memory_momentum', '--train_steps',
          '--checkpoint_steps', '--steps_per_loop', '--model_dir'}
  # The two linear probes, each of its own pretraining.
  for probe, pretraining in (
      ('linear_probe_plain', 'pretrain_3_layers'),
      ('linear_probe_memory_K16384_m0.99_steps1954', name)):
    assert f'--checkpoint={stages.model_dir(pretraining)}' in tested[probe]
    assert '--fine_tune_after_block=4' in tested[probe]
    assert results['memory'][
        'plain' if probe.endswith('plain') else 'with_memory'][
            'linear_probe_top_1'] == _score(probe)
  # The memory run's finetuning: 3 layers from layer 1, from the memory run,
  # the same rate candidates as the plain run's (3_layers_from_1).
  finetunes = {n: f for n, f in calls.items()
               if n.startswith('finetune_memory_') and not n.endswith(':test')}
  assert {n.split('@')[1].split('_')[0] for n in finetunes} == {'0.01'}
  for flags in finetunes.values():
    assert f'--checkpoint={stages.model_dir(name)}' in flags
    assert '--ft_proj_selector=1' in flags and '--num_proj_layers=3' in flags
  assert sorted(float(flags_lib.flag_value(f, 'learning_rate'))
                for n, f in finetunes.items() if '_seed0_' in n) == sorted(
                    plan.learning_rates[0.01])
  assert memory['plain']['pretrain_seconds'] == 1.0
  assert memory['plain']['knn_top_1'] == _score('pretrain_3_layers kNN')
  assert memory['with_memory']['knn_top_1'] == _score(name + ' kNN')
  assert memory['plain']['finetune_top_1_at_0.01'] == pytest.approx(
      results['head']['3_layers_from_1']['0.01'])
  assert 'inference mode' in memory['memory_network_batch_norm']


def test_step_cost_falls_back_to_the_documented_figure(default_plan,
                                                       tmp_path):
  """Records without phases (stages recorded before they were kept): the
  documented step cost of the winner, here K 65 536: 1.85, so 12 / 1.85 =
  6.49 epochs, 356 756 // 256 + 1 = 1394 steps."""
  knn = dict(SWEEP_KNN)
  knn[65536, 0.99] = 0.9
  results, _, tested, _ = _faked(default_plan, tmp_path, phases=False,
                                 sweep_knn=knn)
  equal = results['memory']['equal_wall_time']
  assert results['memory']['chosen'] == {'size': 65536, 'momentum': 0.99}
  assert equal['step_cost'] == v2_ablation.MEMORY_STEP_COSTS[65536] == 1.85
  assert equal['step_cost_source'] == v2_ablation.DOCUMENTED_STEP_COST
  assert equal['memory_steps'] == 1394
  assert '--train_steps=1394' in tested[
      'pretrain_memory_K65536_m0.99_steps1394']
  assert v2_ablation.documented_step_cost(256) == 1.31
  assert v2_ablation.documented_step_cost(10**6) == 1.85


def test_a_sweep_tie_goes_to_the_cheaper_memory(default_plan, tmp_path):
  knn = {key: 0.7 for key in SWEEP_KNN}
  results, _, _, _ = _faked(default_plan, tmp_path, sweep_knn=knn)
  assert results['memory']['chosen'] == {'size': 4096, 'momentum': 0.99}


# ---------------------------------------------------------------- test once
def test_every_final_model_is_tested_once_and_candidates_only_validated(
    default_plan, tmp_path):
  plan = default_plan
  results, stages, tested, validated = _faked(plan, tmp_path)
  names = [name for name, _ in stages.calls]
  assert len(names) == len(set(names))  # No stage run twice.
  assert len(tested) + len(validated) == len(names)
  seeds = plan.protocol.label_seeds
  choices = results['validation_choices']
  finals = 0
  for arm, prefix in [(v, f'finetune_{v}') for v in VARIANTS] + [
      ('with_memory', 'finetune_memory_K16384_m0.99_steps1954')]:
    for fraction in v2_ablation.FRACTIONS if arm != 'with_memory' else (0.01,):
      key = plan_lib.fraction_key(fraction)
      stem = f'{prefix}@{key}_'
      rate = choices[f'{arm}_learning_rate@{key}']['chosen']
      area = choices[f'{arm}_crop_min_area@{key}']['chosen']
      assert area == v2_ablation.CROP_MIN_AREAS[fraction]
      # Candidates at seed 0 on validation; the chosen one read on test
      # once, after the choice.
      candidates = sorted(n for n in validated if n.startswith(stem))
      assert candidates == sorted(f'{stem}seed0_lr{r:g}_area{area:g}'
                                  for r in plan.learning_rates[fraction])
      assert rate == plan_lib.best_of(
          {r: s for r, s in zip(plan.learning_rates[fraction], (
              stages.records[f'{stem}seed0_lr{r:g}_area{area:g}'][
                  'result']['label_top_1_accuracy']
              for r in plan.learning_rates[fraction]))})
      assert rate == 0.05  # The fake favours it on validation.
      for seed in seeds[fraction]:
        reads = [n for n in tested if n.startswith(f'{stem}seed{seed}_')]
        assert reads == [f'{stem}seed{seed}_lr{rate:g}_area{area:g}'
                         + (':test' if seed == 0 else '')]
        finals += 1
      values = [_score(n) for n in tested if n.startswith(stem)]
      if arm == 'with_memory':
        assert results['memory']['with_memory'][
            'finetune_top_1_at_0.01'] == pytest.approx(sum(values) /
                                                       len(values))
      else:
        assert results['head_seeds'][arm][key] == values
        assert results['head'][arm][key] == pytest.approx(
            sum(values) / len(values))
  # The pretrainings (2 head, 1 memory) and the 2 probes: trained and read on
  # test once at their end; the sweep only on validation.
  others = sorted(n for n in tested if not n.startswith('finetune_'))
  assert others == sorted([
      'pretrain_3_layers', 'pretrain_2_layers',
      'pretrain_memory_K16384_m0.99_steps1954', 'linear_probe_plain',
      'linear_probe_memory_K16384_m0.99_steps1954'])
  assert len(tested) == finals + len(others)
  assert all(n.startswith('sweep_') or '_seed0_' in n for n in validated)


def test_nothing_is_chosen_on_test(default_plan, tmp_path):
  """The same stages, in the same order, and the same choices whatever the
  test split says."""
  runs = [_faked(default_plan, tmp_path / name, test_score=score)
          for name, score in (('a', _score), ('b', lambda n: 1 - _score(n)))]
  (first, first_stages, _, _), (second, second_stages, _, _) = runs
  strip = lambda calls, root: [  # pylint: disable=unnecessary-lambda-assignment
      (n, [f.replace(str(root), '') for f in flags]) for n, flags in calls]
  assert strip(first_stages.calls, tmp_path / 'a') == strip(
      second_stages.calls, tmp_path / 'b')
  assert first['validation_choices'] == second['validation_choices']
  assert first['memory']['chosen'] == second['memory']['chosen']
  assert first['head'] != second['head']


# ---------------------------------------------------------------- the budget
def test_plan_only_estimate_is_within_the_budget(capsys):
  assert v2_ablation.main(['--plan_only', '--machine=xeon']) == 0
  out = capsys.readouterr().out
  estimate = json.loads(out[out.index('\n{') + 1:])
  assert estimate['total'] <= v2_ablation.BUDGET_S == 3600
  assert estimate['total'] == pytest.approx(
      sum(v for k, v in estimate.items() if k != 'total'))
  # Equal wall time: the memory run is estimated as long as the plain one.
  assert estimate['pretrain_memory'] == estimate['pretrain_3_layers']
  assert 'cuts: ' in out


def test_cuts_come_in_order_and_only_when_needed():
  full = v2_ablation.full_design()
  assert full.protocol.pretrain_epochs == plan_lib.Plan().pretrain_epochs
  assert full.learning_rates[0.01] == plan_lib.Plan().finetune_learning_rates
  assert full.protocol.label_seeds == {0.01: (0, 1, 2), 0.1: (0,)}
  assert v2_ablation.fit_to_budget(full, budget_s=1e9).cuts == ()
  fitted = v2_ablation.fit_to_budget(full)
  assert fitted == v2_ablation.make_plan()
  assert fitted.estimate_seconds()['total'] <= v2_ablation.BUDGET_S
  kinds = [cut.split(' ')[0] for cut in fitted.cuts]
  assert kinds == ['sweep_epochs', 'label', 'learning',
                   'few_label_epochs'][:len(kinds)]
  # Each cut taken was needed: the plan without the last step of the last
  # cut does not fit.
  last = fitted.cuts[-1]
  if last.startswith('few_label_epochs'):
    longer = dataclasses.replace(fitted, protocol=dataclasses.replace(
        fitted.protocol, few_label_epochs={
            **fitted.protocol.few_label_epochs,
            0.1: fitted.protocol.few_label_epochs[0.1] + 1}))
  elif last.startswith('sweep_epochs'):
    longer = dataclasses.replace(fitted, sweep_epochs=(
        fitted.sweep_epochs + v2_ablation.SWEEP_EPOCHS_STEP))
  else:
    longer = None
  if longer is not None:
    assert longer.estimate_seconds()['total'] > v2_ablation.BUDGET_S
  # Cuts after the first are only taken with the sweep at its floor.
  if len(kinds) > 1:
    assert fitted.sweep_epochs == v2_ablation.MIN_SWEEP_EPOCHS
  # A budget nothing fits: every cut, in order, each at its floor.
  tight = v2_ablation.fit_to_budget(full, budget_s=600)
  assert [cut.split(' ')[0] for cut in tight.cuts] == [
      'sweep_epochs', 'label', 'learning', 'few_label_epochs']
  assert tight.sweep_epochs == v2_ablation.MIN_SWEEP_EPOCHS
  assert tight.protocol.label_seeds[0.01] == (0, 1)
  assert tight.learning_rates == {
      f: scaling.LEARNING_RATES['simclr'][f] for f in v2_ablation.FRACTIONS}
  assert tight.protocol.few_label_epochs[0.1] == (
      scaling.MIN_TENTH_FRACTION_EPOCHS)


def test_scale_and_quick_plans():
  default = v2_ablation.make_plan()
  scaled = v2_ablation.make_plan(scale=8)
  assert scaled.protocol.width == 8 * default.protocol.width
  assert scaled.protocol.pretrain_epochs == 8 * default.protocol.pretrain_epochs
  assert scaled.sweep_epochs == 8 * default.sweep_epochs
  assert scaled.cuts == default.cuts
  quick = v2_ablation.make_plan(quick=True)
  runs = quick.runs()
  assert runs['memory_sweep'] == 1 + 4
  assert quick.estimate_seconds()['total'] < 600
  with pytest.raises(ValueError, match='label seeds'):
    dataclasses.replace(default, protocol=plan_lib.Plan())


def test_quick_plan_runs_over_faked_stages(tmp_path):
  """--quick's plan end to end (stages faked): its buffers hold two steps'
  projections at its batch, and 10 % reuses each variant's 1 % rate."""
  plan = v2_ablation.make_plan(quick=True)
  assert min(plan.memory_sizes) >= 2 * plan.protocol.pretrain_batch
  knn = {(k, m): 0.5 + k / 1e5 for k in plan.memory_sizes
         for m in plan.memory_momenta}
  results, _, _, validated = _faked(
      plan, tmp_path, sweep_knn=knn,
      memory_step_s={k: 0.3 for k in plan.memory_sizes})
  assert results['memory']['chosen'] == {'size': 1024, 'momentum': 0.99}
  assert not [n for n in validated if '@0.1_' in n]
  for variant in VARIANTS:
    choice = results['validation_choices'][f'{variant}_learning_rate@0.1']
    assert choice['reused_from'] == f'{variant}_learning_rate@0.01'


# ---------------------------------------------------------------- outputs
def test_main_writes_the_keys_of_the_results(tmp_path, monkeypatch):
  """The whole command over faked stages: v2_ablation.json's keys (the
  required ones, and the machine, wall times, choices and plan),
  v2_ablation.md's two tables."""
  monkeypatch.setattr(stages_lib, 'Stages',
                      lambda work_dir, **_: _FakeStages(work_dir))
  output = tmp_path / 'out'
  assert v2_ablation.main(['--machine=xeon', f'--work_dir={tmp_path / "work"}',
                           f'--output_dir={output}']) == 0
  results = json.loads((output / 'v2_ablation.json').read_text())
  assert set(results['git']) == {'commit', 'uncommitted_changes_in_code'}
  assert set(results['head']) == {'3_layers_from_1', '2_layers_from_0',
                                  '3_layers_from_0'}
  for by_fraction in results['head'].values():
    assert set(by_fraction) == {'0.01', '0.1'}
    assert all(0 <= v <= 1 for v in by_fraction.values())
  memory = results['memory']
  assert {'sweep', 'chosen', 'plain', 'with_memory'} <= set(memory)
  assert len(memory['sweep']) == 6
  for entry in memory['sweep']:
    assert {'size', 'momentum', 'validation_knn_top_1'} <= set(entry)
  assert set(memory['chosen']) == {'size', 'momentum'}
  for arm in ('plain', 'with_memory'):
    assert {'knn_top_1', 'linear_probe_top_1', 'finetune_top_1_at_0.01',
            'pretrain_seconds'} <= set(memory[arm])
  assert results['total_wall_time_s'] > 0
  assert {'cpu', 'cores'} <= set(results['machine'])
  assert 'pretrain_3_layers' in results['wall_time_s']
  assert '3_layers_from_1_learning_rate@0.01' in results['validation_choices']
  assert results['plan']['cuts'] == list(v2_ablation.make_plan().cuts)
  assert results['estimated_wall_time_s'] <= v2_ablation.BUDGET_S
  text = (output / 'v2_ablation.md').read_text()
  assert text.startswith('Test top-1')
  assert '| projection head, finetuned from |' in text
  assert '| 16384 | **79.00** | 75.00 |' in text
  assert '| encoder kNN (k 200, cosine) |' in text
  assert '| pretraining steps | 2579 | 1954 | |' in text

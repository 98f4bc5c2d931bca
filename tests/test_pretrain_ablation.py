"""benchmarks/pretrain_ablation.py: the candidates' run.py flags."""

import pytest

from benchmarks import pretrain_ablation
from benchmarks.protocol import flags as flags_lib
from benchmarks.protocol import plan as plan_lib


def test_candidates_vary_only_crop_and_temperature_and_read_validation():
  base = plan_lib.Plan()
  plans = pretrain_ablation.candidate_plans(base, 3, [0.08, 0.25], [0.1, 0.2])
  assert len(plans) == 4
  reference = flags_lib.pretrain_flags(base, '/m')
  for (name, key), plan in plans.items():
    flags = flags_lib.pretrain_flags(plan, '/m')
    area = float(flags_lib.flag_value(flags, 'crop_min_area'))
    temperature = float(flags_lib.flag_value(flags, 'temperature'))
    assert key == f'crop_min_area={area:g},temperature={temperature:g}'
    assert name == f'pretrain_e3_area{area:g}_t{temperature:g}'
    assert f'--eval_split={base.validation_split}' in flags
    assert f'--train_split={base.train_split}' in flags
    # 3 epochs of the 55 000-image pool at batch 256.
    assert flags_lib.flag_value(flags, 'train_steps') == str(
        55_000 * 3 // 256 + 1)
    changed = {f.split('=')[0] for f in set(flags) ^ set(reference)}
    assert changed <= {'--crop_min_area', '--temperature', '--train_steps',
                       '--checkpoint_steps', '--steps_per_loop'}
  assert {key for _, key in plans} == {
      'crop_min_area=0.08,temperature=0.1', 'crop_min_area=0.08,temperature=0.2',
      'crop_min_area=0.25,temperature=0.1', 'crop_min_area=0.25,temperature=0.2'}


def test_width_candidates_get_their_own_epochs_at_every_area():
  base = plan_lib.Plan()
  plans = pretrain_ablation.candidate_plans(
      base, 3, [0.25, 0.5], [0.2], width_epochs={0.125: 12, 0.25: 6})
  assert {key: (plan.width, plan.pretrain_epochs, plan.pretrain_crop_min_area)
          for (_, key), plan in plans.items()} == {
              'width=0.125,epochs=12,crop_min_area=0.25,temperature=0.2':
                  (0.125, 12, 0.25),
              'width=0.125,epochs=12,crop_min_area=0.5,temperature=0.2':
                  (0.125, 12, 0.5),
              'width=0.25,epochs=6,crop_min_area=0.25,temperature=0.2':
                  (0.25, 6, 0.25),
              'width=0.25,epochs=6,crop_min_area=0.5,temperature=0.2':
                  (0.25, 6, 0.5)}
  names = {name for name, _ in plans}
  # The plan's own width keeps the stage names of the runs without widths
  # (their work_dir is reused); another width is named apart.
  assert names == {'pretrain_e12_area0.25_t0.2', 'pretrain_e12_area0.5_t0.2',
                   'pretrain_e6_area0.25_t0.2_w0.25',
                   'pretrain_e6_area0.5_t0.2_w0.25'}
  for (name, _), plan in plans.items():
    flags = flags_lib.pretrain_flags(plan, '/m')
    assert f'--width_multiplier={plan.width}' in flags
    # ceil(epochs * 55 000 / 256) steps: 12 -> 2579, 6 -> 1290.
    assert flags_lib.flag_value(flags, 'train_steps') == (
        '2579' if plan.width == 0.125 else '1290')


def test_width_epochs_parses_pairs_and_names_a_bad_one():
  assert pretrain_ablation.parse_args(
      ['--width_epochs=0.125:12,0.25:6']).width_epochs == {0.125: 12.0,
                                                           0.25: 6.0}
  assert pretrain_ablation.parse_args([]).width_epochs is None
  with pytest.raises(SystemExit):
    pretrain_ablation.parse_args(['--width_epochs=0.25'])


def test_batch_candidates_change_batch_and_steps_only():
  base = plan_lib.Plan()
  plans = pretrain_ablation.candidate_plans(base, 3, [0.25], [0.2],
                                            batches=[128, 256, 512])
  reference = flags_lib.pretrain_flags(
      pretrain_ablation.candidate_plans(base, 3, [0.25], [0.2])[
          ('pretrain_e3_area0.25_t0.2', 'crop_min_area=0.25,temperature=0.2')],
      '/m')
  expected_steps = {128: 1290, 256: 645, 512: 323}  # ceil(165 000 / batch).
  for (name, key), plan in plans.items():
    batch = plan.pretrain_batch
    assert key == f'batch={batch},crop_min_area=0.25,temperature=0.2'
    # The plan's batch keeps the name of the runs without --batches.
    assert name == 'pretrain_e3_area0.25_t0.2' + (
        '' if batch == 256 else f'_b{batch}')
    flags = flags_lib.pretrain_flags(plan, '/m')
    assert flags_lib.flag_value(flags, 'train_batch_size') == str(batch)
    assert flags_lib.flag_value(flags, 'train_steps') == str(
        expected_steps[batch])
    changed = {f.split('=')[0] for f in set(flags) ^ set(reference)}
    assert changed <= {'--train_batch_size', '--train_steps',
                       '--checkpoint_steps', '--steps_per_loop'}
  assert pretrain_ablation.parse_args(['--batches=128,512']).batches == [
      128, 512]

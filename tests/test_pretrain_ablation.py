"""benchmarks/pretrain_ablation.py: the candidates' run.py flags."""

from benchmarks import pretrain_ablation
from benchmarks import semi_supervised as semi


def test_candidates_vary_only_crop_and_temperature_and_read_validation():
  base = semi.Plan()
  plans = pretrain_ablation.candidate_plans(base, 3, [0.08, 0.25], [0.1, 0.2])
  assert len(plans) == 4
  reference = semi.pretrain_flags(base, '/m')
  for (name, key), plan in plans.items():
    flags = semi.pretrain_flags(plan, '/m')
    area = float(semi._flag_value(flags, 'crop_min_area'))  # pylint: disable=protected-access
    temperature = float(semi._flag_value(flags, 'temperature'))  # pylint: disable=protected-access
    assert key == f'crop_min_area={area:g},temperature={temperature:g}'
    assert name == f'pretrain_e3_area{area:g}_t{temperature:g}'
    assert f'--eval_split={base.validation_split}' in flags
    assert f'--train_split={base.train_split}' in flags
    # 3 epochs of the 55 000-image pool at batch 256.
    assert semi._flag_value(flags, 'train_steps') == str(55_000 * 3 // 256 + 1)  # pylint: disable=protected-access
    changed = {f.split('=')[0] for f in set(flags) ^ set(reference)}
    assert changed <= {'--crop_min_area', '--temperature', '--train_steps',
                       '--checkpoint_steps', '--steps_per_loop'}
  assert {key for _, key in plans} == {
      'crop_min_area=0.08,temperature=0.1', 'crop_min_area=0.08,temperature=0.2',
      'crop_min_area=0.25,temperature=0.1', 'crop_min_area=0.25,temperature=0.2'}

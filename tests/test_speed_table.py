"""benchmarks/speed_table.py: its commands and its table, on hand-made results."""

import pytest

from benchmarks import speed_table as table


def test_one_benchmark_per_setting_with_the_variants():
  args = table.parse_args(['--depths=18,50', '--batch_sizes=32',
                           '--variants=precision=bfloat16',
                           '--variants=jit_compile=true', '--steps=4'])
  command = table.benchmark_command(args, 50, 32, 32)
  assert command[1:3] == ['-m', 'tf_simclr.benchmark']
  for flag in ('--resnet_depth=50', '--image_size=32', '--train_batch_size=32',
               '--steps=4', '--variant=precision=bfloat16',
               '--variant=jit_compile=true', '--component=train'):
    assert flag in command


def test_rows_show_ms_images_per_second_and_ratio():
  result = {
      'config': {'resnet_depth': 18, 'image_size': 32, 'train_batch_size': 64},
      'ms_per_step_median': 2000., 'images_per_sec': 32.,
      'achieved_tflops': 0.215,
      'variants': [{'variant': 'precision=bfloat16',
                    'ms_per_step_median': 1250., 'speedup': 1.6}]}
  rows = table.table_rows([result], ['precision=bfloat16'])
  assert len(rows) == 3
  # 64 images in 1.25 s = 51.2 images/s.
  assert rows[2] == '| 18 | 32 | 64 | 2000 | 32.0 | 0.215 | 1250 | 51.2 | 1.60x |'


def test_bad_list_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    table.parse_args(['--batch_sizes=32,big'])
  assert exit_info.value.code == 2
  assert 'comma separated integers' in capsys.readouterr().err

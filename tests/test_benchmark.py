"""python -m tf_simclr.benchmark: its JSON line, and the FLOP count it reports."""

import json
import os
import subprocess
import sys

import pytest

from tf_simclr import benchmark
from tf_simclr import model as model_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED_KEYS = ('train_mode', 'config', 'ms_per_step_median',
                 'images_per_sec', 'model_gflops_per_image', 'achieved_tflops',
                 'input_images_per_sec', 'device')
TINY = ('--resnet_depth=18', '--width_multiplier=0.125', '--image_size=32',
        '--train_batch_size=8', '--steps=2', '--steps_per_loop=2',
        '--warmup_steps=0', '--input_datasets=synthetic',
        '--input_image_sizes=32', '--input_batches=2',
        '--input_warmup_batches=1', '--peak_matrix_size=256')


def run_benchmark(*flags):
  result = subprocess.run(
      [sys.executable, '-m', 'tf_simclr.benchmark', *TINY, *flags],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  return lines, json.loads(lines[-1])


def resnet18_cifar_multiply_adds(image_size, width, proj_out_dim=128,
                                 num_proj_layers=3, num_classes=0):
  """Hand count for a basic-block ResNet-18 with the CIFAR stem: 3x3 convs,
  a 1x1 projection shortcut at the start of every block group (the reference
  projects in group 1 too), the projection head's dense layers and the
  supervised (linear-eval) head on the backbone output."""
  size, channels = image_size, width
  total = size * size * width * 3 * 9  # Stem: 3x3 conv, 3 -> width.
  for group in range(4):
    filters = width * 2**group
    size //= 1 if group == 0 else 2
    per_position = size * size * filters
    total += per_position * channels  # 1x1 projection shortcut.
    total += per_position * channels * 9  # First 3x3 conv (strided).
    total += 3 * per_position * filters * 9  # The other three 3x3 convs.
    channels = filters
  total += (num_proj_layers - 1) * channels * channels + channels * proj_out_dim
  return total + channels * num_classes


@pytest.mark.slow
def test_cli_prints_table_then_json_with_sane_values():
  lines, summary = run_benchmark('--variant=feed=dataset')
  assert len(lines) > 3 and 'train baseline' in '\n'.join(lines)
  for key in REQUIRED_KEYS:
    assert summary[key] is not None, key
  assert summary['train_mode'] == 'pretrain'
  assert summary['config']['resnet_depth'] == 18
  assert summary['config']['train_batch_size'] == 8
  assert summary['device'].startswith(('CPU', 'NVIDIA'))
  assert not summary['nonfinite']
  milliseconds = summary['ms_per_step_median']
  assert 0 < summary['ms_per_step_min'] <= milliseconds <= summary['ms_per_step_max']
  assert summary['images_per_sec'] == pytest.approx(8 / milliseconds * 1000)
  assert summary['views_per_sec'] == pytest.approx(2 * summary['images_per_sec'])
  # Pretraining with the linear-eval head: 10 synthetic classes.
  multiply_adds = resnet18_cifar_multiply_adds(32, 8, num_classes=10)
  assert summary['model_gflops_per_image'] == pytest.approx(
      2 * multiply_adds / 1e9)
  assert summary['achieved_tflops'] == pytest.approx(
      3 * summary['model_gflops_per_image'] * summary['views_per_sec'] / 1000)
  assert summary['input_images_per_sec'] > 0
  assert summary['input_table'][0]['dataset'] == 'synthetic'
  # The same step through Trainer's own loop over a tf.data iterator.
  (variant,) = summary['variants']
  assert variant['variant'] == 'feed=dataset'
  assert variant['ms_per_step_median'] > 0 and not variant['nonfinite']
  # The attainable matmul peak, and the step as a fraction of it.
  assert summary['matmul_peak_size'] == 256
  peaks = summary['matmul_peak_tflops']
  assert set(peaks) == {'float32', 'bfloat16'} and min(peaks.values()) > 0
  assert summary['fraction_of_peak'] == pytest.approx(
      summary['achieved_tflops'] / peaks['float32'])
  assert variant['fraction_of_peak'] == pytest.approx(
      variant['achieved_tflops'] / peaks['float32'])


def test_matmul_peak_counts_two_flops_per_multiply_add(monkeypatch):
  """With the clock made to advance 1 s per call, 8 chained 64x64 matmuls
  are 8 * 2 * 64^3 FLOPs per second."""
  ticks = iter(range(1000))
  monkeypatch.setattr(benchmark.time, 'perf_counter', lambda: next(ticks))
  assert benchmark.matmul_peak_tflops('float32', 64, chain=8) == (
      pytest.approx(8 * 2 * 64**3 / 1e12))


def test_forward_flops_of_resnet50_at_224_px():
  # ResNet-50 (stride on the 3x3 conv, "v1.5"): 4.09 G multiply-adds per
  # 224 px image, i.e. the "4.1 GFLOPs" usually quoted; 8.2 GFLOPs when a
  # multiply-add counts as 2 FLOPs, which is what the benchmark reports.
  model = model_lib.build_model(0, resnet_depth=50, image_size=224,
                                build=False)
  multiply_adds = benchmark.count_forward_multiply_adds(model, 224)
  assert multiply_adds == pytest.approx(4.1e9, rel=0.02)
  assert 2 * multiply_adds / 1e9 == pytest.approx(8.2, rel=0.02)


@pytest.mark.parametrize('width', [0.25, 1])
def test_flop_count_matches_hand_count_for_resnet18_cifar(width):
  model = model_lib.build_model(0, resnet_depth=18, image_size=32,
                                width_multiplier=width, build=False)
  assert benchmark.count_forward_multiply_adds(model, 32) == (
      resnet18_cifar_multiply_adds(32, int(64 * width)))


@pytest.mark.slow
@pytest.mark.parametrize('train_mode', ['finetune', 'distill'])
def test_cli_other_stages(train_mode):
  _, summary = run_benchmark(f'--train_mode={train_mode}', '--component=train')
  assert summary['train_mode'] == train_mode
  assert summary['views_per_sec'] == pytest.approx(summary['images_per_sec'])
  passes = 4 if train_mode == 'distill' else 3
  assert summary['achieved_tflops'] == pytest.approx(
      passes * summary['model_gflops_per_image'] * summary['views_per_sec'] / 1000)
  assert summary['input_images_per_sec'] is None


def test_library_takes_the_command_lines_values_as_an_object(tmp_path):
  """The library reads no flags: make_config takes any object whose
  attributes are run.py flag values, parse_variant the command line's
  parsers."""
  import types  # pylint: disable=g-import-not-at-top
  settings = types.SimpleNamespace(resnet_depth=18, width_multiplier=0.125,
                                   image_size=32, train_batch_size=8,
                                   precision='bfloat16', dataset='imagenet2012')
  config = benchmark.make_config(settings, str(tmp_path / 'm'),
                                 overrides={'precision': 'float32'})
  assert (config.resnet_depth, config.width_multiplier, config.image_size,
          config.train_batch_size) == (18, 0.125, 32, 8)
  assert config.precision == 'float32'  # The override wins.
  assert config.dataset == 'synthetic'  # Timing needs no files.
  parsed = benchmark.parse_variant(
      'jit_compile=true steps_per_loop=5',
      lambda name, text: (name, text))
  assert parsed == {'jit_compile': ('jit_compile', 'true'),
                    'steps_per_loop': ('steps_per_loop', '5')}
  with pytest.raises(benchmark.UsageError, match='NAME one of'):
    benchmark.parse_variant('resnet_depth=50', lambda name, text: text)


def test_stage_component_breaks_in_process_runs_into_phases():
  """--component=stage: real in-process runs of the three stages (synthetic
  data), each broken into phases that do not overlap and fit in its wall
  time; a later finetune of the process reads nothing new."""
  result = subprocess.run(
      [sys.executable, '-m', 'tf_simclr.benchmark', '--component=stage',
       '--dataset=synthetic', '--resnet_depth=18', '--width_multiplier=0.0625',
       '--image_size=32', '--steps=1', '--stage_repeats=2'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  summary = json.loads(lines[-1])
  runs = summary['runs']
  assert [(run['stage'], run['repeat']) for run in runs] == [
      ('pretrain', 0), ('finetune', 0), ('finetune', 1), ('distill', 0),
      ('distill', 1)]
  for run in runs:
    phases = run['phases']
    for name in ('inputs', 'model', 'restore', 'input_pipeline',
                 'trace_train_loop', 'first_loop', 'checkpoint', 'eval_trace',
                 'eval_pass'):
      assert phases[name] >= 0, (run['stage'], name)
    assert 0 < sum(phases.values()) <= run['seconds']
  assert 'teacher' in runs[3]['phases'] and 'knn' in runs[0]['phases']
  assert set(summary['median_repeated_seconds']) == {'finetune', 'distill'}
  # The table: a row per phase, a column per run.
  assert any(line.startswith('trace_train_loop') and len(line.split()) == 6
             for line in lines)

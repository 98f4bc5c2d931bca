"""Tests of benchmarks/semi_supervised.py: planning, tables, plots, event files;
one end-to-end --quick run (slow)."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import semi_supervised as semi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'benchmarks', 'semi_supervised.py')




def fake_results():
  return {
      'fractions': ['0.01', '0.1'],
      'top_1': {'supervised': {'0.01': 0.61, '0.1': 0.80},
                'simclr': {'0.01': 0.72, '0.1': 0.83},
                'self_distill': {'0.01': 0.73, '0.1': 0.835},
                'distill_small': {'0.01': 0.70, '0.1': None}},
      'extra': {'pretrain_linear_eval_top_1': 0.78},
      'wall_time_s': {'pretrain': 700.0, 'finetune@0.01': 120.5},
      'plan': {'depth': 18},
      'machine': {'cpu': 'Test CPU', 'cores': 2, 'tensorflow': '2.20.0'},
      'git': {'commit': 'abc123'},
      'command': 'python benchmarks/semi_supervised.py',
  }


# ---------------------------------------------------------------- planning
def test_labeled_counts_match_the_class_balanced_subsets():
  assert semi.labeled_count(0.01) == 600
  assert semi.labeled_count(0.1) == 6000


def test_steps_for_rounds_up_and_is_at_least_one():
  assert semi.steps_for(1, 600, 64) == 10
  assert semi.steps_for(60, 600, 64) == 563
  assert semi.steps_for(0.0001, 600, 64) == 1


def test_default_plan_steps():
  plan = semi.make_plan()
  steps = plan.steps()
  assert steps['pretrain'] == semi.steps_for(plan.pretrain_epochs, 60000, 256)
  assert steps['finetune@0.01'] == semi.steps_for(60, 600, 64)
  assert steps['supervised@0.01'] == semi.steps_for(150, 600, 64)
  assert steps['supervised@0.1'] == semi.steps_for(30, 6000, 128)
  # The baseline trains longer than finetuning on the same subset.
  for fraction in semi.FRACTIONS:
    assert steps[f'supervised@{fraction}'] > steps[f'finetune@{fraction}']
  images = plan.images()
  assert images['pretrain'] == steps['pretrain'] * 256


def test_default_plan_fits_the_budget_with_margin():
  assert semi.estimate_seconds(semi.make_plan())['total'] <= 0.8 * 3600


def test_scale_multiplies_epochs_and_widths():
  base, big = semi.make_plan(), semi.make_plan(scale=4)
  assert big.width == 4 * base.width
  assert big.student_width == 4 * base.student_width
  assert big.steps()['pretrain'] == pytest.approx(
      4 * base.steps()['pretrain'], abs=4)
  assert big.steps()['distill@0.1'] == pytest.approx(
      4 * base.steps()['distill@0.1'], abs=4)


def test_quick_plan_is_tiny():
  steps = semi.make_plan(quick=True).steps()
  assert max(steps.values()) <= 20
  assert semi.estimate_seconds(semi.make_plan(quick=True))['total'] < 20 * 60


def test_stage_flags():
  plan = semi.make_plan()
  finetune = semi.finetune_flags(plan, 0.01, '/m', '/p')
  assert '--ft_proj_selector=1' in finetune
  assert '--zero_init_logits_layer' in finetune
  assert '--label_fraction=0.01' in finetune
  assert '--eval_split=test' in finetune
  supervised = semi.supervised_flags(plan, 0.1, '/m', 0.4)
  assert '--fine_tune_after_block=-1' in supervised
  assert '--checkpoint=scratch' in supervised
  small = semi.distill_flags(plan, 0.1, '/m', '/t', plan.student_width)
  assert f'--width_multiplier={plan.student_width}' in small
  assert '--teacher_checkpoint=/t' in small
  for flags in (finetune, supervised, small):
    assert '--deterministic' in flags and '--export=false' in flags


# ---------------------------------------------------------------- outputs
def test_markdown_table():
  text = semi.markdown_table(fake_results())
  assert '| SimCLRv2 pretrain + finetune (teacher) | 72.00 | 83.00 |' in text
  assert '| Supervised from scratch (labeled subset only) | 61.00 | 80.00 |' in text
  assert '| Distilled half-width student | 70.00 | — |' in text
  assert '+11.00' in text and '+3.00' in text
  assert '1 % labels (600 images)' in text
  assert '| pretrain | 700 |' in text and '| **total** | 820 |' in text
  assert '78.00 %' in text and 'abc123' in text


def test_write_outputs(tmp_path):
  curves = {'train/contrast_loss': [(10, 5.0), (20, 4.0)],
            'train/contrast_acc': [(10, 0.1), (20, 0.3)]}
  paths = semi.write_outputs(fake_results(), curves, str(tmp_path))
  for name in ('accuracy.png', 'pretraining.png'):
    with open(paths[name], 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(paths['results.json']) as f:
    saved = json.load(f)
  assert saved['top_1']['simclr']['0.01'] == 0.72
  assert saved['pretraining_curves']['train/contrast_acc'] == [[10, 0.1],
                                                               [20, 0.3]]
  with open(paths['results.md']) as f:
    assert f.read() == semi.markdown_table(fake_results())


def test_read_scalars_from_event_file(tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    for step in (1, 2, 3):
      tf.summary.scalar('train/contrast_loss', 10.0 / step, step=step)
      tf.summary.scalar('train/contrast_acc', 0.1 * step, step=step)
      tf.summary.scalar('train/other', 1.0, step=step)
  writer.flush()
  writer.close()
  curves = semi.read_scalars(str(tmp_path))
  assert set(curves) == set(semi.PRETRAIN_TAGS)
  assert [s for s, _ in curves['train/contrast_loss']] == [1, 2, 3]
  assert curves['train/contrast_loss'][1][1] == pytest.approx(5.0)
  assert curves['train/contrast_acc'][2][1] == pytest.approx(0.3)


def test_read_scalars_without_event_files(tmp_path):
  assert semi.read_scalars(str(tmp_path)) == {
      tag: [] for tag in semi.PRETRAIN_TAGS}


def test_reused_stage_is_not_rerun(tmp_path):
  model_dir = tmp_path / 'stage'
  model_dir.mkdir()
  (model_dir / 'stage_time.json').write_text('{"seconds": 12.5}')
  (model_dir / 'result.json').write_text('{"label_top_1_accuracy": 0.5}')
  timings = {}
  result = semi.run_stage('x', ['false'], str(model_dir), str(tmp_path),
                          timings, echo=lambda *_: None)
  assert result == {'label_top_1_accuracy': 0.5}
  assert timings == {'x': 12.5}


def test_failed_stage_raises_with_log_tail(tmp_path):
  with pytest.raises(semi.StageFailed, match='exited with 3'):
    semi.run_stage('bad', [sys.executable, '-c', 'import sys; print("boom"); '
                           'sys.exit(3)'], str(tmp_path / 'm'), str(tmp_path),
                   {}, echo=lambda *_: None)


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_quick_protocol_end_to_end(tmp_path):
  output = tmp_path / 'out'
  completed = subprocess.run(
      [sys.executable, SCRIPT, '--quick', f'--output_dir={output}',
       f'--work_dir={tmp_path / "work"}'], cwd=REPO, capture_output=True,
      text=True, timeout=3600)
  assert completed.returncode == 0, completed.stdout + completed.stderr
  results = json.loads((output / 'results.json').read_text())
  for arm in semi.ARMS:
    for fraction in results['fractions']:
      assert 0 <= results['top_1'][arm][fraction] <= 1
  assert results['pretraining_curves']['train/contrast_loss']
  assert results['wall_time_s']['pretrain'] > 0
  for name in ('results.md', 'accuracy.png', 'pretraining.png'):
    assert (output / name).stat().st_size > 0

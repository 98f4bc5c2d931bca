"""The main job's driver (scripts/main_job.py): its output filter, summary
line and log capture; end to end (slow) through `bash scripts/pipeline.sh`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scripts import main_job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_problems_keeps_warnings_and_errors_but_not_start_up_noise():
  log = '\n'.join([
      'I1202 01:46:31.598248 140 trainer.py:80] step 10/110 total_loss=5.1',
      'E1202 01:46:31.598248 140 cuda_platform.cc:51] failed call to cuInit: '
      'INTERNAL: CUDA error',
      'W1202 01:46:32.000000 140 feature.py:3] `FeatureConnector.dtype` is '
      'deprecated.',
      'W1202 01:46:33.000000 140 checkpoints.py:9] checkpoint ckpt-4 does not '
      'verify; using ckpt-2',
      '/x/y.py:3: UserWarning: something the user should see',
      'ERROR: a real failure',
      'INFO: plain info'])
  assert main_job.problems(log) == [
      'W1202 01:46:33.000000 140 checkpoints.py:9] checkpoint ckpt-4 does not '
      'verify; using ckpt-2',
      '/x/y.py:3: UserWarning: something the user should see',
      'ERROR: a real failure']


def test_summary_line_names_what_the_stage_measured():
  assert main_job.summary_line(
      'pretrain (x)', {'knn_top_1': 0.70561, 'global_step': 110}, 143.4) == (
          '== pretrain (x): encoder kNN 0.7056 at step 110 (143 s)')
  assert main_job.summary_line('distill', {
      'label_top_1_accuracy': 0.79594, 'teacher_agreement': 0.9741,
      'global_step': 120}, 96) == (
          '== distill: test top-1 0.7959, teacher agreement 0.974 at step 120 '
          '(96 s)')


def test_output_to_captures_python_and_file_descriptor_writes(tmp_path):
  path = tmp_path / 'stage.log'
  with main_job.output_to(str(path)):
    print('from python stdout')
    print('from python stderr', file=sys.stderr)
    os.write(2, b'from fd 2, as C++ logging writes\n')
  print('after')  # Restored: not in the log.
  text = path.read_text()
  assert text.splitlines() == ['from python stdout', 'from python stderr',
                               'from fd 2, as C++ logging writes']


def test_stages_take_sizes_from_the_environment():
  stages = main_job.stages({'OUT': '/o', 'WIDTH': '0.25',
                            'PRETRAIN_STEPS': '7', 'FINETUNE_EPOCHS': '3',
                            'DISTILL_STEPS': '5'})
  assert [name for name, _, _ in stages] == ['pretrain', 'finetune',
                                             'distill']
  flags = {name: flags for name, _, flags in stages}
  assert '--train_steps=7' in flags['pretrain']
  assert '--train_epochs=3' in flags['finetune']
  assert '--checkpoint=/o/pretrain' in flags['finetune']
  assert '--train_steps=5' in flags['distill']
  assert '--teacher_checkpoint=/o/finetune' in flags['distill']
  for stage_flags in flags.values():
    assert '--width_multiplier=0.25' in stage_flags


@pytest.mark.slow
def test_pipeline_sh_runs_every_stage_in_one_process(tmp_path):
  """`bash scripts/pipeline.sh` with tiny sizes: one line per stage, the
  exports, no CUDA or start-up noise, every stage's log written."""
  out = tmp_path / 'out'
  env = dict(os.environ, SKIP_SETUP='1', OUT=str(out), PRETRAIN_STEPS='3',
             FINETUNE_EPOCHS='1', DISTILL_STEPS='3')
  completed = subprocess.run(['bash', 'scripts/pipeline.sh'], cwd=REPO,
                             env=env, capture_output=True, text=True,
                             timeout=1200, check=False)
  assert completed.returncode == 0, completed.stdout + completed.stderr[-3000:]
  lines = completed.stdout.splitlines()
  assert [line.split(':')[0] for line in lines if line.startswith('==')] == [
      '== pretrain (no labels; encoder kNN on the test split)',
      '== finetune (10 % labels, from head layer 1)',
      '== distill (self-distillation, no labels)', '== exports']
  assert 'cuInit' not in completed.stdout + completed.stderr
  for name in ('pretrain', 'finetune', 'distill'):
    assert (out / f'{name}.log').stat().st_size > 0
    assert json.loads((out / name / 'result.json').read_text())[
        'global_step'] == (47 if name == 'finetune' else 3)  # 6000 / 128.
  assert (out / 'distill' / 'hub' / 'proj_head_1').is_dir()
  # Bad input in a stage: one line naming it, exit 2, nothing lost.
  env['FINETUNE_EPOCHS'] = '0.5'
  bad = subprocess.run(['bash', 'scripts/pipeline.sh'], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1200,
                       check=False)
  assert bad.returncode == 2, bad.stdout + bad.stderr[-3000:]
  assert bad.stderr.strip().splitlines() == [
      f'== finetune (10 % labels, from head layer 1): FAILED: flag '
      f"--train_epochs=0.5: invalid literal for int() with base 10: '0.5' "
      f'(log: {out}/finetune.log)']
  assert 'Traceback' not in bad.stdout + bad.stderr
  assert (out / 'distill' / 'hub' / 'proj_head_1').is_dir()


def test_recipe_search_reads_validation_never_test_with_the_main_jobs_sizes():
  """benchmarks/main_job_recipe.py: the main job's own stages, trained on the
  pool and evaluated on the validation split; its finetuning keeps the main
  job's 6 000 labeled images (600 per class of the 55 000) and differs only in
  the learning rate and model_dir."""
  from benchmarks import main_job_recipe as recipe
  from tf_simclr import data
  stages = recipe.validation_stages('/w', learning_rates=(0.1, 0.4))
  assert [name for name, _ in stages] == [
      'pretrain', 'finetune_lr0.1', 'finetune_lr0.4']
  main = {name: flags for name, _, flags in main_job.stages({'OUT': '/w'})}
  for name, flags in stages:
    assert '--eval_split=train[:5000]' in flags
    assert '--train_split=train[5000:]' in flags
    assert not any(f.startswith('--eval_split=test') for f in flags)
    assert sum(f.startswith('--eval_split=') for f in flags) == 1
  assert set(stages[0][1]) - set(main['pretrain']) == {
      '--eval_split=train[:5000]', '--train_split=train[5000:]'}
  finetune = dict(stages)['finetune_lr0.4']
  changed = set(finetune) - set(main['finetune'])
  fraction = [f for f in changed if f.startswith('--label_fraction=')]
  assert {f.split('=')[0] for f in changed} == {
      '--eval_split', '--train_split', '--label_fraction', '--learning_rate',
      '--model_dir'}
  assert '--learning_rate=0.4' in finetune
  assert '--model_dir=/w/finetune_lr0.4' in finetune
  assert '--checkpoint=/w/pretrain' in finetune
  cropped = dict(recipe.validation_stages('/w', (0.2,), crop_min_area=0.5))
  assert '--crop_min_area=0.5' in cropped['finetune_lr0.2']
  assert recipe.crop_min_area(cropped['finetune_lr0.2']) == 0.5
  assert recipe.crop_min_area(['--learning_rate=0.2']) == 0.08
  keys = [str(i) for i in range(55_000)]
  labels = [i % 10 for i in range(55_000)]
  mask = data.label_subset_mask(np.array(keys), np.array(labels), 10,
                                float(fraction[0].split('=')[1]), 0)
  assert mask.sum() == 6000

"""Tests of benchmarks/reference_speed.py: log parsing, the LARS patch, the
command line and the run loop with stand-in programs (no training)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks import reference_speed as speed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'benchmarks', 'reference_speed.py')



REFERENCE_LOG = """\
I1129 06:14:12.101010 139808053676928 run.py:540] Trainable variables:
I1129 06:14:59.650123 139808053676928 functional_saver.py:440] Sharding callback duration: 88 microseconds
I1129 06:14:59.778182 139808053676928 run.py:650] Completed: 20 / 80 steps
I1129 06:14:59.779301 139808053676928 metrics.py:73] Step: [20] train/total_loss = 12.161234
I1129 06:15:45.865453 139808053676928 run.py:650] Completed: 40 / 80 steps
I1129 06:15:45.872564 139808053676928 metrics.py:73] Step: [40] train/supervised_acc = 0.109375
I1129 06:16:31.840157 139808053676928 run.py:650] Completed: 60 / 80 steps
I1129 06:16:40.000000 139808053676928 run.py:398] Completed eval for 3 / 10 steps
W1129 06:16:50.000000 139808053676928 run.py:650] Completed: 70 steps of something else
I1129 06:17:17.399547 139808053676928 run.py:650] Completed: 80 / 80 steps
I1129 06:17:17.413471 139808053676928 run.py:659] Training complete...
"""

OURS_LOG = """\
2026-11-29 06:19:54.807077: E external/local_xla/xla/stream_executor/cuda/cuda_platform.cc:51] failed call to cuInit: INTERNAL: CUDA error
I1129 06:19:59.942291 139837699079040 trainer.py:511] pretrain: scratch at step 0 of 80 (1024 examples, global batch 64, 1 replicas)
I1129 06:20:48.841660 139837699079040 trainer.py:570] step 20/80 total_loss=11.34 contrast_acc=0.07422 supervised_acc=0.3055 learning_rate=0.03125 images/s=26.8 eta=00:02:23
I1129 06:20:49.340314 139837699079040 functional_saver.py:440] Sharding callback duration: 103 microseconds
I1129 06:21:32.076868 139837699079040 trainer.py:570] step 40/80 total_loss=10.29 contrast_acc=0.07031 supervised_acc=0.4504 learning_rate=0.0625 images/s=30.1 eta=00:01:31
I1129 06:22:14.685977 139837699079040 trainer.py:570] step 60/80 total_loss=9.674 contrast_acc=0.06953 supervised_acc=0.5344 learning_rate=0.09375 images/s=30.2 eta=00:00:44
I1129 06:22:56.983305 139837699079040 trainer.py:570] step 80/80 total_loss=9.555 contrast_acc=0.09219 supervised_acc=0.5379 learning_rate=0.125 images/s=30.4 eta=00:00:00
{"model_dir": "/somewhere", "train": {"global_step": 80}, "train_mode": "pretrain"}
"""


# ---------------------------------------------------------------- log parsing
def test_reference_log():
  points = speed.parse_progress(REFERENCE_LOG.splitlines(),
                                speed.REFERENCE_PROGRESS)
  # 06:14:59.778182 -> 06:15:45.865453 = 46.087271 s, then 45.974704 s, then
  # 45.559390 s.
  assert [(step, total) for step, total, _ in points] == [
      (20, 80), (40, 80), (60, 80), (80, 80)]
  assert [t for _, _, t in points] == pytest.approx(
      [0., 46.087271, 92.061975, 137.621365])
  assert speed.loop_ms_per_step(points) == pytest.approx(
      [2304.36355, 2298.7352, 2277.9695])


def test_ours_log():
  points = speed.parse_progress(OURS_LOG.splitlines(), speed.OURS_PROGRESS)
  assert [step for step, _, _ in points] == [20, 40, 60, 80]
  # 43.235208 s, 42.609109 s, 42.297328 s for 20 steps each.
  assert speed.loop_ms_per_step(points) == pytest.approx(
      [2161.7604, 2130.45545, 2114.8664])


def test_each_parser_ignores_the_other_programs_lines():
  assert speed.parse_progress(OURS_LOG.splitlines(),
                              speed.REFERENCE_PROGRESS) == []
  assert speed.parse_progress(REFERENCE_LOG.splitlines(),
                              speed.OURS_PROGRESS) == []


@pytest.mark.parametrize('first, second, seconds', [
    ('1129 23:59:50.000000', '1130 00:00:10.500000', 20.5),  # midnight
    ('1130 23:59:59.000000', '1201 00:00:01.000000', 2.0),   # month's end
    ('1231 23:59:58.000000', '0101 00:00:02.000000', 4.0),   # year's end
    ('0228 23:59:59.000000', '0301 00:00:01.000000', 2.0),   # no Feb 29
    ('0228 23:59:59.000000', '0229 00:00:01.000000', 2.0),   # leap year
    ('0229 23:59:59.000000', '0301 00:00:03.000000', 4.0),
    ('0101 10:00:00.000000', '0102 10:00:00.250000', 86400.25),
])
def test_times_across_day_month_and_year(first, second, seconds):
  lines = [f'I{first} 140 trainer.py:570] step 10/30 total_loss=1.0',
           f'I{second} 140 trainer.py:570] step 30/30 total_loss=1.0']
  points = speed.parse_progress(lines, speed.OURS_PROGRESS)
  assert points[-1][2] == pytest.approx(seconds)
  assert speed.loop_ms_per_step(points) == pytest.approx([seconds * 50.])


def test_shorter_last_loop():
  # 80 steps in loops of 30: the last loop has 20 steps.
  points = [(30, 80, 0.), (60, 80, 6.), (80, 80, 10.)]
  assert speed.loop_ms_per_step(points) == pytest.approx([200., 200.])


def test_read_log_needs_two_progress_lines(tmp_path):
  log = tmp_path / 'reference_1.log'
  log.write_text(REFERENCE_LOG.splitlines()[2] + '\n')
  with pytest.raises(speed.BenchmarkError, match='1 progress line'):
    speed.read_log('reference', str(log))


# ---------------------------------------------------------------- the patch
def _fake_tf2(root, base='tf.keras.optimizers.Optimizer'):
  tf2 = root / 'tf2'
  tf2.mkdir(parents=True)
  (tf2 / 'run.py').write_text('print("reference run.py")\n')
  (tf2 / 'lars_optimizer.py').write_text(textwrap.dedent(f"""\
      import tensorflow.compat.v2 as tf


      class LARSOptimizer({base}):
        \"\"\"Layer-wise Adaptive Rate Scaling.\"\"\"
      """))
  return tf2


def test_patch_lars(tmp_path):
  tf2 = _fake_tf2(tmp_path)
  assert speed.patch_lars(str(tf2))
  text = (tf2 / 'lars_optimizer.py').read_text()
  assert 'class LARSOptimizer(tf.keras.optimizers.legacy.Optimizer):\n' in text
  assert 'class LARSOptimizer(tf.keras.optimizers.Optimizer)' not in text
  assert text.startswith('import tensorflow.compat.v2 as tf\n')
  assert not speed.patch_lars(str(tf2))  # Already patched: left as it is.
  assert (tf2 / 'lars_optimizer.py').read_text() == text


def test_patch_lars_missing_text(tmp_path):
  tf2 = _fake_tf2(tmp_path, base='tf.keras.optimizers.experimental.SGD')
  with pytest.raises(speed.BenchmarkError, match='not supported'):
    speed.patch_lars(str(tf2))


def test_copy_reference_leaves_the_checkout_alone(tmp_path):
  tf2 = _fake_tf2(tmp_path / 'simclr')
  (tf2 / '__pycache__').mkdir()
  before = (tf2 / 'lars_optimizer.py').read_text()
  copy = speed.copy_reference(str(tf2), str(tmp_path / 'work'))
  assert (tf2 / 'lars_optimizer.py').read_text() == before
  assert 'legacy.Optimizer' in open(os.path.join(copy, 'lars_optimizer.py')).read()
  assert sorted(os.listdir(copy)) == ['lars_optimizer.py', 'run.py']


def test_find_tf2_dir(tmp_path):
  tf2 = _fake_tf2(tmp_path / 'simclr')
  assert speed.find_tf2_dir(str(tmp_path / 'simclr')) == str(tf2)
  assert speed.find_tf2_dir(str(tf2)) == str(tf2)
  for bad, message in ((None, 'required'), (str(tmp_path / 'nope'), 'no such'),
                       (str(tmp_path), 'neither')):
    with pytest.raises(speed.BenchmarkError, match=message):
      speed.find_tf2_dir(bad)


def test_git_commit_only_of_the_checkout_itself(tmp_path):
  assert speed.git_commit(str(tmp_path)) is None


# ---------------------------------------------------------------- commands
CONFIG = {'train_batch_size': 64, 'resnet_depth': 18, 'width_multiplier': 1,
          'image_size': 32, 'train_steps': 40, 'steps_per_loop': 10,
          'precision': 'bfloat16', 'order': 'reference_first', 'repeats': 1,
          'mock_examples': 100, 'keep_logs': None}


def test_flags_of_both_programs():
  reference = speed.reference_flags(CONFIG, 'M')
  ours = speed.ours_flags(CONFIG, 'M')
  for flag in ('--train_mode=pretrain', '--train_batch_size=64',
               '--train_steps=40', '--learning_rate=1.0', '--weight_decay=1e-4',
               '--temperature=0.5', '--image_size=32', '--eval_split=test',
               '--resnet_depth=18', '--use_blur=False',
               '--color_jitter_strength=0.5', '--use_tpu=False',
               '--checkpoint_steps=10', '--mode=train', '--model_dir=M'):
    assert flag in reference and flag in ours
  assert '--dataset=cifar10' in reference
  assert not any(f.startswith(('--steps_per_loop', '--precision'))
                 for f in reference)
  for flag in ('--dataset=synthetic', '--steps_per_loop=10',
               '--precision=bfloat16'):
    assert flag in ours


def test_run_order_alternates():
  assert speed.run_order('reference', 1) == [(0, 'reference'), (0, 'ours')]
  assert speed.run_order('ours', 3) == [
      (0, 'ours'), (0, 'reference'), (1, 'reference'), (1, 'ours'),
      (2, 'ours'), (2, 'reference')]


def test_summary_and_table():
  results = {'reference': [(0, [2000., 2400.], 10.), (1, [2200.], 9.)],
             'ours': [(0, [1000., 1200.], 5.), (1, [1100.], 5.)]}
  summary, speedup = speed.summarize(results, batch_size=64)
  assert summary['reference']['ms_per_step'] == [2000., 2400., 2200.]
  assert summary['reference']['median'] == 2200.
  assert summary['ours']['median'] == 1100.
  assert summary['ours']['images_per_sec'] == pytest.approx(64000. / 1100.)
  assert speedup == pytest.approx(2.)
  table = speed.format_table(summary, speedup)
  assert 'speedup (reference / ours): 2.000 (run.py faster)' in table
  assert '2200.0' in table and '1100.0' in table


# ---------------------------------------------------------------- runs
def _stand_in(path, lines, status=0):
  """A Python script that prints `lines` and exits with `status`."""
  text = '\n'.join(lines)
  path.write_text(f'import sys\nprint({text!r})\nsys.exit({status})\n')
  return str(path)


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
  """A fake reference checkout; both programs replaced by scripts printing
  the logs above. Returns the fake tf2 folder."""
  tf2 = _fake_tf2(tmp_path / 'simclr')
  repo = tmp_path / 'repo'
  repo.mkdir()
  _stand_in(repo / 'run.py', OURS_LOG.splitlines())
  monkeypatch.setattr(speed, 'REPO', str(repo))
  monkeypatch.setattr(speed, 'MOCK_RUNNER', _stand_in(
      tmp_path / 'mock.py', REFERENCE_LOG.splitlines()))
  return tf2


def test_benchmark_with_stand_in_programs(tmp_path, stand_ins):
  tf2 = stand_ins
  logs = tmp_path / 'logs'
  config = dict(CONFIG, repeats=2, keep_logs=str(logs))
  results = speed.benchmark(config, str(tf2), echo=lambda *a, **k: None)
  assert [repeat for repeat, _, _ in results['reference']] == [0, 1]
  assert results['ours'][1][1] == pytest.approx(
      [2161.7604, 2130.45545, 2114.8664])
  assert sorted(os.listdir(logs)) == [
      'ours_1.log', 'ours_2.log', 'reference_1.log', 'reference_2.log']
  assert 'legacy.Optimizer' not in (tf2 / 'lars_optimizer.py').read_text()


def test_failed_run_names_it_and_keeps_its_log(tmp_path, monkeypatch):
  tf2 = _fake_tf2(tmp_path / 'simclr')
  monkeypatch.setattr(speed, 'MOCK_RUNNER', _stand_in(
      tmp_path / 'mock.py', ['ImportError: boom'], status=3))
  config = dict(CONFIG, keep_logs=str(tmp_path / 'logs'))
  with pytest.raises(speed.BenchmarkError, match='the reference run') as error:
    speed.benchmark(config, str(tf2), echo=lambda *a, **k: None)
  assert error.value.status == 1
  assert 'exit status 3' in str(error.value)
  assert error.value.details == ['  | ImportError: boom']
  assert (tmp_path / 'logs' / 'reference_1.log').exists()


# ---------------------------------------------------------------- command line
@pytest.mark.parametrize('args, message', [
    ([], '--reference_dir is required'),
    (['--reference_dir=/nonexistent/simclr'], 'no such directory'),
    (['--reference_dir=.', '--train_steps=10'], 'fewer than two loops'),
    (['--no_such_flag=1'], "Unknown command line flag 'no_such_flag'"),
])
def test_command_line_errors(args, message):
  completed = subprocess.run([sys.executable, SCRIPT] + args, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
  assert completed.returncode == 2
  assert completed.stderr.splitlines() == [
      completed.stderr.strip()], completed.stderr
  assert completed.stderr.startswith('reference_speed.py: error: ')
  assert message in completed.stderr
  assert 'Traceback' not in completed.stderr + completed.stdout
  assert completed.stdout == ''


@pytest.mark.usefixtures('stand_ins')
def test_main_prints_json_last(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(speed, 'probe_environment',
                      lambda: {'device': 'CPU: test', 'tensorflow': '2.x'})
  status = speed.main(['reference_speed.py', f'--reference_dir={tmp_path}/simclr',
                       '--train_steps=80', '--steps_per_loop=20'])
  assert status == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result['reference_ms_per_step_median'] == pytest.approx(2298.7352)
  assert result['ours_ms_per_step_median'] == pytest.approx(2130.45545)
  assert result['speedup'] == pytest.approx(2298.7352 / 2130.45545)
  assert result['reference_ms_per_step'] == pytest.approx(
      [2304.36355, 2298.7352, 2277.9695])
  assert result['device'] == 'CPU: test'
  assert result['reference_commit'] is None
  assert result['ours_commit'] is None  # tmp_path/repo is no checkout.
  assert result['config']['precision'] == 'float32'

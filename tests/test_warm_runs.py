"""In-process finetunes that take over an earlier run's model, optimizer and
traced step (trainer.reuse_traced_runs, on in run.py's run_in_process) end
exactly where the same run ends cold."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from tf_simclr import config as config_lib
from tf_simclr import stages
from tf_simclr import trainer as trainer_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_runtime_fields_are_config_fields_and_leave_the_key():
  names = {field.name for field in dataclasses.fields(config_lib.Config)}
  assert trainer_lib.RUNTIME_FIELDS <= names
  config = config_lib.Config(model_dir='a', learning_rate=0.1)
  trainer_lib.reuse_traced_runs(True)
  try:
    key = trainer_lib._warm_key(  # pylint: disable=protected-access
        config, stages.STAGES['finetune'], None, 10, None)
    other = trainer_lib._warm_key(  # pylint: disable=protected-access
        dataclasses.replace(config, model_dir='b', learning_rate=0.4,
                            label_seed=2), stages.STAGES['finetune'], None, 10,
        None)
    assert key == other
    for change in (dict(weight_decay=1e-3), dict(train_batch_size=64),
                   dict(ft_proj_selector=2), dict(temperature=0.5)):
      assert trainer_lib._warm_key(  # pylint: disable=protected-access
          dataclasses.replace(config, **change), stages.STAGES['finetune'],
          None, 10, None) != key, change
    # Only finetunes reuse; and nothing when it is off.
    assert trainer_lib._warm_key(  # pylint: disable=protected-access
        config, stages.STAGES['pretrain'], None, 10, None) is None
  finally:
    trainer_lib.reuse_traced_runs(False)
  assert trainer_lib._warm_key(  # pylint: disable=protected-access
      config, stages.STAGES['finetune'], None, 10, None) is None


def test_warm_finetunes_end_where_cold_ones_do(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tests', 'warm_runs.py'),
       str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=900, env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
  assert result.returncode == 0, result.stderr[-3000:]
  runs = json.loads(result.stdout.strip().splitlines()[-1])
  assert {name: run['reused_trace'] for name, run in runs.items()} == {
      'first': False, 'same': True, 'other_rate_seed_fraction': True,
      'from_scratch': True, 'other_weight_decay': False}
  for name, run in runs.items():
    assert not run['cold_reused_trace']
    # Deterministic runs: the warm run's weights are the cold run's.
    assert run['largest_difference'] <= 1e-6, name
    assert run['top_1'] == pytest.approx(run['cold_top_1'], abs=1e-6), name


def test_evaluation_is_traced_once_per_model():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tf_simclr import data  # pylint: disable=import-outside-toplevel
  from tf_simclr import evaluation  # pylint: disable=import-outside-toplevel
  from tf_simclr import model as model_lib  # pylint: disable=import-outside-toplevel
  model = model_lib.build_model(10, resnet_depth=18, width_multiplier=0.0625,
                                image_size=32)
  strategy = tf.distribute.get_strategy()
  eval_input = data.InputConfig(dataset='synthetic', split='test',
                                image_size=32, batch_size=64,
                                augmentation='eval', is_training=False)
  first = evaluation.evaluate_head(model, strategy, eval_input, 10)
  (_, _, eval_all), = evaluation._KEPT[model].values()  # pylint: disable=protected-access
  assert eval_all.experimental_get_tracing_count() == 1
  # Other weights, the same traced pass: the new weights are read.
  model.set_weights([w * 0 for w in model.get_weights()])
  second = evaluation.evaluate_head(model, strategy, eval_input, 10)
  assert eval_all.experimental_get_tracing_count() == 1
  assert first['num_examples'] == second['num_examples'] == 256
  labels = data.synthetic_arrays('test')[1]
  # All-zero logits: top-1 is class 0 for every image (argmax of ties).
  assert second['label_top_1_accuracy'] == pytest.approx(
      float((labels == 0).mean()))

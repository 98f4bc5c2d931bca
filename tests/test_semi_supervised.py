"""Tests of benchmarks/semi_supervised.py and its parts (benchmarks/protocol/):
the splits (validation carved apart from the labeled, unlabeled and test
images), label seeds, the raw-pixel anchors against NumPy, stage flags,
choices, tables and plots; one end-to-end --quick run (slow)."""

import dataclasses
import gzip
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from benchmarks.protocol import anchors as anchors_lib
from benchmarks.protocol import experiment
from benchmarks.protocol import flags as flags_lib
from benchmarks.protocol import plan as plan_lib
from benchmarks.protocol import protocol
from benchmarks.protocol import report
from benchmarks.protocol import stages as stages_lib
from tf_simclr import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'benchmarks', 'semi_supervised.py')
NUM_TRAIN, NUM_TEST = 400, 120


# ---------------------------------------------------------------- a small Fashion-MNIST
def _write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b''.join(
      struct.pack('>I', size) for size in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope='module')
def small_fashion(tmp_path_factory):
  """IDX files of 400 train / 120 test random 28x28 images whose label is
  readable from the pixels (class c brightens row band c), in TFDS's format
  through the project's offline path. Returns (plan, arrays)."""
  root = tmp_path_factory.mktemp('fashion')
  rng = np.random.RandomState(0)
  arrays = {}
  for split, count in (('train', NUM_TRAIN), ('test', NUM_TEST)):
    labels = rng.randint(0, 10, count)
    images = rng.randint(0, 120, (count, 28, 28))
    for index, label in enumerate(labels):
      images[index, 2 * label:2 * label + 4] += 130
    images_file, labels_file = data.FASHION_MNIST_FILES[split]
    _write_idx(str(root / images_file), images)
    _write_idx(str(root / labels_file), labels)
    arrays[split] = images, labels
  data_dir = str(root / 'tfds')
  data.prepare_fashion_mnist(str(root), data_dir)
  plan = plan_lib.Plan(num_train=NUM_TRAIN, validation_size=100,
                       data_dir=data_dir, logreg_cs=(0.5,), eval_steps=0)
  return plan, arrays


def test_validation_pool_and_test_are_disjoint_and_cover_train(small_fashion):
  plan, _ = small_fashion
  validation, _ = anchors_lib.split_keys_and_labels(plan, plan.validation_split)
  pool, _ = anchors_lib.split_keys_and_labels(plan, plan.train_split)
  everything, _ = anchors_lib.split_keys_and_labels(plan, 'train')
  assert len(validation) == 100 and len(pool) == NUM_TRAIN - 100
  assert not set(validation) & set(pool)
  assert set(validation) | set(pool) == set(everything)


def test_labeled_subsets_come_from_the_pool_class_balanced(small_fashion):
  plan, _ = small_fashion
  pool_keys, pool_labels = anchors_lib.split_keys_and_labels(
      plan, plan.train_split)
  validation, _ = anchors_lib.split_keys_and_labels(plan, plan.validation_split)
  label_of = dict(zip(pool_keys, pool_labels))
  for fraction in (0.05, 0.1):  # 2 and 4 per class of 400 images.
    subsets = [set(anchors_lib.labeled_subset_keys(plan, fraction, seed))
               for seed in (0, 1, 2)]
    for subset in subsets:
      assert subset <= set(pool_keys)
      assert not subset & set(validation)
      counts = np.bincount([label_of[k] for k in subset], minlength=10)
      np.testing.assert_array_equal(
          counts, [plan_lib.per_class(fraction, NUM_TRAIN)] * 10)
    # The seeds pick different images, each seed the same ones every time.
    assert subsets[0] != subsets[1] and subsets[1] != subsets[2]
    assert subsets[0] == set(anchors_lib.labeled_subset_keys(plan, fraction, 0))


def test_pool_label_fraction_selects_the_protocol_counts():
  plan = plan_lib.Plan()
  for fraction, per_class in ((0.001, 6), (0.01, 60), (0.1, 600)):
    label_fraction = plan_lib.pool_label_fraction(plan, fraction)
    # tf_simclr.data's rule on the 55 000-image pool.
    assert round(label_fraction * plan.pool_size / 10) == per_class
    assert plan_lib.labeled_count(fraction) == 10 * per_class


def _numpy_weighted_knn(bank, bank_labels, queries, k=200, temperature=0.1):
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  predictions = []
  for query in queries:
    similarity = bank @ query
    nearest = np.argsort(-similarity, kind='stable')[:k]
    scores = np.zeros(10)
    for index in nearest:
      scores[bank_labels[index]] += np.exp(similarity[index] / temperature)
    predictions.append(np.argmax(scores))
  return np.array(predictions)


def test_raw_pixel_anchors_against_numpy(small_fashion):
  plan, arrays = small_fashion
  anchors = anchors_lib.raw_pixel_anchors(plan, echo=lambda *_: None)
  pool = anchors_lib.split_arrays(plan.dataset, plan.train_split, 28,
                                  data_dir=plan.data_dir)
  validation = anchors_lib.split_arrays(plan.dataset, plan.validation_split,
                                        28, data_dir=plan.data_dir)
  test = anchors_lib.split_arrays(plan.dataset, 'test', 28,
                                  data_dir=plan.data_dir)
  # The arrays are the IDX files' images in [0, 1] (any order).
  train_pixels = np.concatenate([pool[0], validation[0]])
  np.testing.assert_allclose(
      np.sort(train_pixels.sum(1)),
      np.sort(arrays['train'][0].reshape(NUM_TRAIN, -1).sum(1) / 255.0),
      rtol=1e-5)
  expected_knn = np.mean(_numpy_weighted_knn(pool[0], pool[1], test[0]) ==
                         test[1])
  assert anchors['raw_pixel_knn_top_1'] == pytest.approx(expected_knn)
  # Logistic regression: its weights solve the regularised problem (the
  # gradient of C * sum CE + |W|^2 / 2 is ~0, computed here in NumPy), and
  # the reported accuracy is that model's on the test split.
  accuracy, model = anchors_lib.logistic_regression_accuracy(
      *pool, *test, c=0.5, max_iter=2000)
  logits = pool[0] @ model.coef_.T + model.intercept_
  probabilities = np.exp(logits - logits.max(1, keepdims=True))
  probabilities /= probabilities.sum(1, keepdims=True)
  residual = probabilities - np.eye(10)[pool[1]]
  gradient = 0.5 * pool[0].T @ residual + model.coef_.T
  gradient_at_zero = 0.5 * pool[0].T @ (0.1 - np.eye(10)[pool[1]])
  assert np.abs(gradient).max() < 1e-2 * np.abs(gradient_at_zero).max()
  predicted = np.argmax(test[0] @ model.coef_.T + model.intercept_, 1)
  assert accuracy == pytest.approx(np.mean(predicted == test[1]))
  assert anchors['raw_pixel_logreg_top_1'] == pytest.approx(
      accuracy, abs=0.02)
  assert anchors['raw_pixel_logreg_top_1'] > 0.5  # The bands are learnable.


def test_standardise_uses_the_first_arrays_statistics():
  rng = np.random.RandomState(3)
  train = rng.normal(5.0, 3.0, (200, 4)).astype(np.float32)
  train[:, 2] = 7.0  # A constant column: shifted, not divided by 0.
  other = rng.normal(0.0, 1.0, (30, 4)).astype(np.float32)
  train_s, other_s = anchors_lib.standardise(train, other)
  np.testing.assert_allclose(train_s.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(train_s.std(0), [1, 1, 0, 1], atol=1e-5)
  # Hand formula: (x - mean(train)) / std(train), column by column.
  for column in (0, 1, 3):
    expected = (other[:, column] - train[:, column].mean()) / (
        train[:, column].std())
    np.testing.assert_allclose(other_s[:, column], expected, rtol=1e-4,
                               atol=1e-5)
  np.testing.assert_allclose(other_s[:, 2], other[:, 2] - 7.0, atol=1e-5)


def test_feature_logistic_regression_reads_pool_and_validation_only(
    monkeypatch):
  plan = plan_lib.Plan(logreg_cs=(0.1, 1.0))
  rng = np.random.RandomState(0)
  directions = rng.normal(size=(10, 8))
  read = []

  def features(scale, shift):
    def split_features(model_dir, split, key):
      read.append((model_dir, split, key))
      split_rng = np.random.RandomState(len(split))
      labels = split_rng.randint(0, 10, 500)
      x = directions[labels] + 0.8 * split_rng.normal(size=(500, 8))
      return (x * scale + shift).astype(np.float32), labels

    def encoder_features(plan_, model_dir, splits, key='final_avg_pool'):
      del plan_
      return [split_features(model_dir, split, key) for split in splits]
    return encoder_features

  monkeypatch.setattr(anchors_lib, 'encoder_features', features(1.0, 0.0))
  plain = anchors_lib.feature_logistic_regression(plan, '/model')
  assert {split for _, split, _ in read} == {plan.train_split,
                                            plan.validation_split}
  assert {(model_dir, key) for model_dir, _, key in read} == {
      ('/model', 'final_avg_pool')}
  assert set(plain['validation']) == {0.1, 1.0} and 'test_top_1' not in plain
  assert plain['c'] == plan_lib.best_of(plain['validation'])
  assert min(plain['validation'].values()) > 0.5  # Learnable: chance is 0.1.
  # With test: the test split is read once, scored by the chosen C's model.
  read.clear()
  tested = anchors_lib.feature_logistic_regression(plan, '/model', test=True)
  assert [split for _, split, _ in read].count('test') == 1
  assert 0.5 < tested['test_top_1'] <= 1
  # Standardised with the pool's statistics: a per-feature affine change of
  # the features (the same for every split) changes nothing.
  scale = np.exp(rng.normal(size=8) * 3)
  shift = rng.normal(size=8) * 100
  monkeypatch.setattr(anchors_lib, 'encoder_features', features(scale, shift))
  moved = anchors_lib.feature_logistic_regression(plan, '/model', test=True)
  for c in plain['validation']:
    assert moved['validation'][c] == pytest.approx(plain['validation'][c],
                                                   abs=0.01)
  assert moved['test_top_1'] == pytest.approx(tested['test_top_1'], abs=0.01)


def test_encoder_features_are_the_checkpointed_networks(small_fashion,
                                                        tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tf_simclr import architecture  # pylint: disable=import-outside-toplevel
  from tf_simclr import config as config_lib  # pylint: disable=import-outside-toplevel
  from tf_simclr import model as model_lib  # pylint: disable=import-outside-toplevel
  plan, _ = small_fashion
  record = architecture.ModelConfig(resnet_depth=18, width_multiplier=0.0625,
                                    image_size=28)
  model = model_lib.build_model(record)
  # Moved off their initial values (and BN statistics off 0/1), so a model
  # that was not restored would differ.
  rng = np.random.RandomState(1)
  for variable in model.variables:
    variable.assign(variable + rng.normal(
        0, 0.1, variable.shape).astype(np.float32))
  model_dir = str(tmp_path / 'pretrain')
  config_lib.write_architecture(model_dir, record.to_dict())
  tf.train.Checkpoint(model=model).save(os.path.join(model_dir, 'ckpt'))
  [(features, labels)] = anchors_lib.encoder_features(plan, model_dir,
                                                      [plan.validation_split])
  pixels, pixel_labels = anchors_lib.split_arrays(
      plan.dataset, plan.validation_split, 28, data_dir=plan.data_dir)
  expected = model(pixels.reshape(-1, 28, 28, 1).repeat(3, axis=-1),
                   training=False)['final_avg_pool'].numpy()
  assert features.shape == (plan.validation_size, 32)  # 512 * 0.0625.
  # The two reads may order the split differently: each feature row is
  # matched to its nearest expected row, which must be the same image.
  distances = np.abs(features[:, None] - expected[None]).max(-1)
  nearest = distances.argmin(1)
  assert sorted(nearest) == list(range(plan.validation_size))
  np.testing.assert_allclose(features, expected[nearest], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_array_equal(labels, pixel_labels[nearest])
  assert np.abs(expected).max() > 1e-3  # Not all zero: the check can fail.


# ---------------------------------------------------------------- plan and flags
def test_default_plan_fits_the_budget_with_margin():
  assert plan_lib.estimate_seconds(plan_lib.make_plan())['total'] <= 3600


def test_default_plan_seeds_and_steps():
  plan = plan_lib.make_plan()
  assert plan.label_seeds == {0.001: (0, 1, 2), 0.01: (0, 1, 2), 0.1: (0,)}
  steps = plan.steps()
  assert steps['pretrain'] == 55_000 * plan.pretrain_epochs // 256 + 1
  assert steps['few_label@0.01'] == (
      600 * plan.few_label_epochs[0.01] // plan.few_label_batch[0.01] + 1)
  # Learning rates are swept at every fraction, crop areas where labels
  # are fewest, then reused.
  assert plan.sweep_fractions == (0.001, 0.01, 0.1)
  assert plan.crop_sweep_fractions == (0.001, 0.01)
  # Per arm: at 0.1 % and 1 %, 4 rates, then 1 more crop area at the
  # chosen rate; at 10 %, 4 rates at the reused area; then the other seeds.
  assert plan.runs()['supervised'] == 2 * (3 + 1) + 3 + 7 == plan.runs()[
      'finetune']
  with pytest.raises(ValueError, match='crop_sweep_fractions'):
    plan_lib.Plan(sweep_fractions=(0.001,), crop_sweep_fractions=(0.001, 0.01))
  assert len(plan.supervised_learning_rates) == len(
      plan.finetune_learning_rates)  # The same tuning effort.


def test_scale_multiplies_epochs_and_widths():
  base, big = plan_lib.make_plan(), plan_lib.make_plan(scale=4)
  assert big.width == 4 * base.width
  assert big.student_width == 4 * base.student_width
  assert big.steps()['pretrain'] == pytest.approx(
      4 * base.steps()['pretrain'], abs=4)


def test_stage_flags_read_validation_and_test_only_when_asked():
  plan = plan_lib.make_plan()
  finetune = flags_lib.few_label_flags(plan, 0.01, 2, '/m', 0.2, '/p', 0.25)
  assert '--crop_min_area=0.25' in finetune
  assert '--ft_proj_selector=1' in finetune
  assert '--zero_init_logits_layer' in finetune
  assert '--label_seed=2' in finetune
  assert '--train_split=train[5000:]' in finetune
  assert '--eval_split=train[:5000]' in finetune
  supervised = flags_lib.few_label_flags(plan, 0.01, 0, '/m', 0.8, 'scratch',
                                         1.0)
  assert '--crop_min_area=1.0' in supervised
  assert '--checkpoint=scratch' in supervised
  assert '--ft_proj_selector=0' in supervised
  small = flags_lib.distill_flags(plan, '/m', '/t', 0.2, 0.01, small=True)
  small_at_10 = flags_lib.distill_flags(plan, '/m', '/t', 0.2, 0.1, small=True)
  assert f'--width_multiplier={plan.student_width}' in small
  assert not any(f.startswith('--checkpoint=') for f in small)
  self_distill = flags_lib.distill_flags(plan, '/m', '/t', 0.05, 0.1,
                                         init_checkpoint='/p',
                                         crop_min_area=0.5)
  assert '--crop_min_area=0.5' in self_distill
  assert f'--width_multiplier={plan.width}' in self_distill
  assert f'--train_steps={plan.steps()["distill"]}' in self_distill
  # The half-width student: 0.6 epochs of the 55 000-image pool at batch
  # 128, 2.4 at 10 %; the self-distilled one 0.6 at every fraction.
  assert '--train_steps=258' in small and '--train_steps=258' in self_distill
  assert '--train_steps=1032' in small_at_10
  assert '--checkpoint=/p' in self_distill
  # The self-distilled student's starts compared on validation.
  assert [flags_lib.student_init_checkpoint(init, '/p', '/t')
          for init in ('pretrained', 'teacher', 'scratch')] == ['/p', '/t', None]
  assert '--learning_rate=0.05' in self_distill
  from_teacher = flags_lib.distill_flags(
      plan, '/m', '/t', 0.2, 0.01,
      init_checkpoint=flags_lib.student_init_checkpoint('teacher', '/p', '/t'))
  assert '--checkpoint=/t' in from_teacher and '--teacher_checkpoint=/t' in (
      from_teacher)
  assert '--zero_init_logits_layer' in from_teacher
  # The half-width student's own pretraining, and the student from it.
  small_pretrain = flags_lib.pretrain_flags(plan, '/ps', small=True)
  assert f'--width_multiplier={plan.student_width}' in small_pretrain
  assert f'--train_steps={plan.steps()["pretrain_small"]}' in small_pretrain
  assert plan.steps()['pretrain_small'] == plan_lib.steps_for(
      plan.student_pretrain_epochs, plan.pool_size, plan.pretrain_batch)
  assert f'--width_multiplier={plan.width}' in flags_lib.pretrain_flags(
      plan, '/p')
  small_pretrained = flags_lib.distill_flags(plan, '/m', '/t', 0.2, 0.001,
                                             small=True, init_checkpoint='/ps')
  assert f'--width_multiplier={plan.student_width}' in small_pretrained
  assert '--checkpoint=/ps' in small_pretrained
  assert '--ft_proj_selector=1' in small_pretrained
  for flags in (finetune, supervised, small, self_distill, small_pretrained,
                small_pretrain):
    assert '--eval_split=test' not in flags
    test = flags_lib.test_flags(flags)
    assert '--eval_split=test' in test and '--mode=eval' in test
    assert '--eval_name=test' in test
    assert not any(f.startswith('--eval_split=train') for f in test)
    final = flags_lib.test_flags(flags, train=True)  # Trains, then reads test.
    assert '--mode=train_then_eval' in final and '--eval_split=test' in final
    assert final.count('--eval_name=test') == 1


class _FakeStages(stages_lib.Stages):
  """Records every stage's flags instead of running run.py; validation
  scores favour one candidate of each sweep so the choice is visible."""

  def __init__(self, work_dir):
    super().__init__(work_dir, echo=lambda *_: None)
    self.calls = []

  def run(self, name, flags, result_name='result'):
    if name in self.records:
      return self.records[name]
    self.calls.append((name, flags))
    value = lambda flag: flags_lib.flag_value(flags, flag)  # pylint: disable=unnecessary-lambda-assignment
    score = 0.5 + 0.1 * ('lr0.05' in name or 'lr6.4' in name) + 0.1 * (
        '_pretrained_' in name) + 0.05 * (
            'finetune' in name and 'area1' in name)
    result = {'eval_split': value('eval_split'), 'label_top_1_accuracy': score,
              'knn_top_1': 0.6, 'teacher_agreement': 0.9}
    self.records[name] = {'seconds': 1.0, 'result': result, 'train': {}}
    return self.records[name]


def stage_score(name):
  """A test top-1 of its own for each stage, so that a number in the
  results can be traced to the stage that produced it."""
  return zlib.crc32(name.encode()) % 10_007 / 10_007


def reads_by_split(stages, validation_split):
  """({name: flags} read on test, {name: flags} read on validation) of the
  stages a fake ran."""
  tested = {name: flags for name, flags in stages.calls
            if '--eval_split=test' in flags}
  validated = {name: flags for name, flags in stages.calls
               if f'--eval_split={validation_split}' in flags}
  return tested, validated


def _fake_feature_logistic_regression(plan, model_dir, cs=None, test=False,
                                      key='final_avg_pool'):
  del plan, cs, key
  assert test  # The protocol reads the test split for its final number.
  return {'validation': {0.1: 0.7, 1.0: 0.72}, 'c': 1.0,
          'test_top_1': 0.71 + 0.01 * model_dir.endswith('memory')}


def _faked_protocol(plan, tmp_path, monkeypatch):
  """run_protocol over _FakeStages: (results, stages, names evaluated on
  test, names evaluated on validation, trained(arm): training runs of arm)."""
  monkeypatch.setattr(protocol, 'cached_raw_pixel_anchors',
                      lambda *args, **kwargs: {})
  monkeypatch.setattr(anchors_lib, 'feature_logistic_regression',
                      _fake_feature_logistic_regression)
  stages = _FakeStages(str(tmp_path))
  results = protocol.run_protocol(plan, stages, echo=lambda *_: None)
  tested = [name for name, flags in stages.calls
            if '--eval_split=test' in flags]
  validated = [name for name, flags in stages.calls
               if f'--eval_split={plan.validation_split}' in flags]

  def trained(arm):
    return sum(f'{arm}@' in name and not name.endswith(':test')
               for name, _ in stages.calls)
  return results, stages, tested, validated, trained


def test_protocol_reads_test_once_per_final_model_and_chooses_on_validation(
    tmp_path, monkeypatch):
  """Over the whole default protocol (stages faked): every final model of
  every (arm, fraction, seed) is evaluated on the test split exactly once,
  every run compared for a choice is evaluated on validation only, and the
  chosen learning rate's run is the one tested."""
  plan = plan_lib.make_plan()
  results, stages, tested, validated, trained = _faked_protocol(
      plan, tmp_path, monkeypatch)
  assert len(tested) + len(validated) == len(stages.calls)
  assert len(set(tested)) == len(tested)
  finals = sum(len(plan.label_seeds[f]) for f in plan_lib.FRACTIONS)
  # The pretraining, its probe, the half-width one; 4 arms per seed.
  assert len(tested) == 3 + 4 * finals
  for name, flags in stages.calls:
    if name in validated:  # A candidate: trained, never tested itself.
      assert '--mode=train_then_eval' in flags
  chosen = results['validation_choices']
  for fraction in plan.crop_sweep_fractions:
    key = plan_lib.fraction_key(fraction)
    # Rates at the first crop area, then the areas at the chosen rate (the
    # baseline's tie goes to the first area).
    assert chosen[f'supervised_learning_rate@{key}']['chosen'] == 6.4
    assert chosen[f'simclr_learning_rate@{key}']['chosen'] == 0.05
    assert chosen[f'supervised_crop_min_area@{key}']['chosen'] == 0.25
    assert chosen[f'simclr_crop_min_area@{key}']['chosen'] == 1.0
    assert set(chosen[f'simclr_crop_min_area@{key}']['validation_top_1']) == {
        '0.25', '1'}
    assert f'supervised@{key}_seed0_lr6.4_area0.25:test' in tested
    assert f'finetune@{key}_seed0_lr0.05_area1:test' in tested
    assert f'finetune@{key}_seed0_lr0.05_area0.25:test' not in tested
    for name in (f'supervised@{key}_seed0_lr1.6_area0.25',
                 f'supervised@{key}_seed0_lr6.4_area0.25',
                 f'supervised@{key}_seed0_lr6.4_area1',
                 f'finetune@{key}_seed0_lr0.05_area0.25'):
      assert name in validated
    # No crop area tried at a rate that was not chosen.
    assert f'supervised@{key}_seed0_lr1.6_area1' not in validated
    assert f'finetune@{key}_seed1_lr0.05_area1' in tested
  # 10 %: the rates swept at the area chosen at 1 %, that area reused; the
  # chosen run then tested.
  for arm, prefix, rates, area in (
      ('supervised', 'supervised', plan.supervised_learning_rates, '0.25'),
      ('simclr', 'finetune', plan.finetune_learning_rates, '1')):
    assert chosen[f'{arm}_crop_min_area@0.1']['reused_from'] == (
        f'{arm}_crop_min_area@0.01')
    assert 'reused_from' not in chosen[f'{arm}_learning_rate@0.1']
    assert set(chosen[f'{arm}_learning_rate@0.1']['validation_top_1']) == {
        f'{r:g}' for r in rates}
    for rate in rates:
      assert f'{prefix}@0.1_seed0_lr{rate:g}_area{area}' in validated
    assert not [n for n in validated if n.startswith(f'{prefix}@0.1_') and
                not n.endswith(f'_area{area}')]
  assert 'finetune@0.1_seed0_lr0.05_area1:test' in tested
  assert 'supervised@0.1_seed0_lr6.4_area0.25:test' in tested
  # The students: one (start, rate) each, so no comparison run: every seed
  # trained on its teacher's crops straight on test.
  for key in ('0.001', '0.01', '0.1'):
    assert chosen[f'self_distill_student@{key}']['chosen'] == 'teacher lr0.05'
    assert chosen[f'distill_small_student@{key}']['chosen'] == (
        'pretrained lr0.05')
    assert not chosen[f'self_distill_student@{key}']['validation_top_1']
    assert f'self_distill@{key}_seed0_teacher_lr0.05_area1' in tested
  assert not [name for name in validated if 'distill' in name]
  # The half-width student distils 4x longer at 10 % than at 0.1 % and 1 %.
  calls = dict(stages.calls)
  for name, steps in (('distill_small@0.01_seed1_pretrained_lr0.05_area1', 258),
                      ('distill_small@0.1_seed0_pretrained_lr0.05_area1', 1032),
                      ('self_distill@0.1_seed0_teacher_lr0.05_area1', 258)):
    assert f'--train_steps={steps}' in calls[name]
  # Training runs: the 7 final seeds of each student; 18 of each few-label
  # arm (see the plan's test).
  assert trained('self_distill') == 7 == plan.runs()['self_distill']
  assert trained('distill_small') == 7 == plan.runs()['distill_small']
  for prefix, arm in (('supervised', 'supervised'), ('finetune', 'finetune')):
    assert trained(prefix) == 18 == plan.runs()[arm]
  final_student = dict(stages.calls)[
      'self_distill@0.1_seed0_teacher_lr0.05_area1']
  assert '--learning_rate=0.05' in final_student
  assert '--crop_min_area=1.0' in final_student
  names = [name for name, _ in stages.calls]
  assert names.count('pretrain_small') == 1
  assert names.index('pretrain_small') < names.index(
      'distill_small@0.001_seed0_pretrained_lr0.05_area1')
  small_pretrain_dir = stages.model_dir('pretrain_small')
  assert f'--checkpoint={small_pretrain_dir}' in dict(stages.calls)[
      'distill_small@0.01_seed1_pretrained_lr0.05_area1']
  assert results['encoder']['student_knn_top_1'] == 0.6
  # The encoder's logistic regression: the fake's test number, its C.
  assert results['encoder']['feature_logreg_top_1'] == 0.71
  assert results['encoder']['feature_logreg_c'] == 1.0
  for arm in plan_lib.ARMS:
    assert set(results['top_1'][arm]) == {'0.001', '0.01', '0.1'}



def test_student_candidates_are_compared_on_seed_zero_only(tmp_path,
                                                           monkeypatch):
  """With two student rates, every (start, rate) pair trains on validation at
  each fraction's seed 0, the chosen one is then tested once, and the other
  seeds train at that choice straight on test; the half-width pretraining
  runs once."""
  plan = dataclasses.replace(plan_lib.make_plan(),
                             distill_learning_rates=(0.0125, 0.05))
  results, stages, tested, validated, trained = _faked_protocol(
      plan, tmp_path, monkeypatch)
  chosen = results['validation_choices']
  for key in ('0.001', '0.01', '0.1'):
    assert chosen[f'self_distill_student@{key}']['chosen'] == 'teacher lr0.05'
    assert set(chosen[f'self_distill_student@{key}']['validation_top_1']) == {
        'teacher lr0.0125', 'teacher lr0.05'}
    assert set(chosen[f'distill_small_student@{key}']['validation_top_1']) == {
        'pretrained lr0.0125', 'pretrained lr0.05'}
    for name in (f'distill_small@{key}_seed0_pretrained_lr0.0125_area1',
                 f'self_distill@{key}_seed0_teacher_lr0.0125_area1',
                 f'self_distill@{key}_seed0_teacher_lr0.05_area1'):
      assert name in validated
    assert f'distill_small@{key}_seed0_pretrained_lr0.05_area1:test' in tested
    assert f'self_distill@{key}_seed0_teacher_lr0.05_area1:test' in tested
    assert f'self_distill@{key}_seed0_teacher_lr0.0125_area1:test' not in (
        tested)
  assert 'distill_small@0.01_seed1_pretrained_lr0.05_area1' in tested
  assert not [name for name in validated if '_seed1_' in name]
  assert [name for name, _ in stages.calls].count('pretrain_small') == 1
  # 7 final seeds, plus per fraction the one candidate that is not final.
  assert trained('self_distill') == 7 + 3 == plan.runs()['self_distill']
  assert trained('distill_small') == 7 + 3 == plan.runs()['distill_small']

def test_memory_arm_gets_the_plain_pretraining_budget():
  """--memory_size adds the simclr_memory arm: its pretraining has the
  memory flags and pretrain_epochs / memory_step_cost epochs, and as many
  finetuning runs (learning-rate candidates included) as the plain arm."""
  plain = plan_lib.make_plan()
  assert plan_lib.MEMORY_ARM not in plain.arms
  assert plain.runs()['finetune_memory'] == 0
  assert 'memory_arm' not in plan_lib.estimate_seconds(plain)
  plan = dataclasses.replace(plain, memory_size=16384, memory_momentum=0.99,
                             memory_step_cost=1.25)
  assert plan.arms[-1] == plan_lib.MEMORY_ARM
  steps = plan.steps()
  assert steps['pretrain_memory'] == plan_lib.steps_for(
      plain.pretrain_epochs / 1.25, plain.pool_size, plain.pretrain_batch)
  assert steps['pretrain_memory'] < steps['pretrain']
  flags = flags_lib.pretrain_flags(plan, '/m', memory=True)
  assert '--memory_size=16384' in flags and '--memory_momentum=0.99' in flags
  assert f'--train_steps={steps["pretrain_memory"]}' in flags
  assert not any('memory' in f for f in flags_lib.pretrain_flags(plan, '/m'))
  assert plan.runs()['finetune_memory'] == plan.runs()['finetune']
  estimate = plan_lib.estimate_seconds(plan)
  assert estimate['memory_arm'] > estimate['pretrain']


def test_best_of_takes_the_highest_validation_score_first_on_ties():
  assert plan_lib.best_of({0.2: 0.5, 0.8: 0.7}) == 0.8
  assert plan_lib.best_of({0.2: 0.7, 0.8: 0.7}) == 0.2


# ---------------------------------------------------------------- stages and outputs
def test_a_stage_done_before_is_reused_not_rerun(tmp_path):
  stages = stages_lib.Stages(str(tmp_path), echo=lambda *_: None)
  model_dir = tmp_path / 'x'
  model_dir.mkdir()
  record = {'seconds': 12.5, 'train': {},
            'result': {'label_top_1_accuracy': 0.5, 'eval_split': 'v'}}
  (model_dir / 'stage_result.json').write_text(json.dumps(record))
  got = stages.run('x', [f'--model_dir={model_dir}', '--bogus_flag=1'])
  assert got == dict(record, reused=True)
  assert stages.timings() == {'x': {'seconds': 12.5, 'reused': True}}


def test_a_stage_run_twice_in_one_invocation_is_not_marked_reused(
    tmp_path, monkeypatch):
  """The learning-rate sweep's seed-0 run is asked for again by the seed
  loop: it is the record of this invocation, not a reuse of an earlier one."""
  calls = []

  def fake_run_py(flags):
    calls.append(flags)
    model_dir = flags_lib.flag_value(flags, 'model_dir')
    with open(os.path.join(model_dir, 'result.json'), 'w') as f:
      json.dump({'label_top_1_accuracy': 0.5, 'eval_split': 'v'}, f)
    return {'train': {}}
  monkeypatch.setattr(stages_lib, '_run_py_in_process', fake_run_py)
  stages = stages_lib.Stages(str(tmp_path), echo=lambda *_: None)
  flags = [f'--model_dir={tmp_path / "y"}']
  first = stages.run('y', flags)
  second = stages.run('y', flags)
  assert len(calls) == 1 and second is first
  assert 'reused' not in stages.timings()['y']


def test_a_failed_stage_raises_stage_failed(tmp_path):
  stages = stages_lib.Stages(str(tmp_path), subprocesses=True,
                             echo=lambda *_: None)
  with pytest.raises(stages_lib.StageFailed, match='exit status 2'):
    stages.run('bad', [f'--model_dir={tmp_path / "m"}', '--resnet_depth=19'])


def fake_results():
  return {
      'fractions': ['0.001', '0.01', '0.1'],
      'labeled_images': {'0.001': 60, '0.01': 600, '0.1': 6000},
      'top_1': {'supervised': {'0.001': 0.5, '0.01': 0.8, '0.1': 0.88},
                'simclr': {'0.001': 0.6, '0.01': 0.82, '0.1': 0.87}},
      'top_1_seeds': {'supervised': {'0.001': [0.4, 0.5, 0.6],
                                     '0.01': [0.8, 0.8, 0.8], '0.1': [0.88]},
                      'simclr': {'0.001': [0.6, 0.6, 0.6],
                                 '0.01': [0.81, 0.82, 0.83], '0.1': [0.87]}},
      'encoder': {'knn_top_1': 0.83, 'raw_pixel_logreg_top_1': 0.84},
      'validation_choices': {'supervised_learning_rate@0.01': {
          'validation_top_1': {'0.2': 0.7, '0.8': 0.75}, 'chosen': 0.8}},
      'wall_time_s': {'pretrain': {'seconds': 700.0,
                                   'train_images_per_sec': 1300.0}},
      'total_wall_time_s': 820.0,
      'plan': {'depth': 18, 'width': 0.125},
      'machine': {'cpu': 'Test CPU', 'cores': 2, 'tensorflow': '2.20.0'},
      'git': {'commit': 'abc123'},
      'command': 'python benchmarks/semi_supervised.py',
  }


def test_markdown_table():
  text = report.markdown_table(fake_results())
  assert ('| Supervised from scratch (labeled subset only) | 50.00 (40.0–60.0) '
          '| 80.00 (80.0–80.0) | 88.00 |') in text
  assert '| Distilled' not in text or '—' in text
  assert '| *simclr − supervised (points)* | +10.00 | +2.00 | -1.00 |' in text
  assert '0.1 % labels (60 images, 3 seeds)' in text
  assert '| kNN (k 200, cosine, final_avg_pool) | 83.00 |' in text
  assert '**0.8** (0.2: 70.00, 0.8: 75.00)' in text
  assert '| pretrain | 700 | 1300 |' in text and '| **total** | 820 | |' in text


def test_write_outputs(tmp_path):
  curves = {'train/contrast_loss': [(10, 5.0), (20, 4.0)],
            'train/contrast_acc': [(10, 0.1), (20, 0.3)]}
  paths = report.write_outputs(fake_results(), curves, str(tmp_path))
  for name in ('accuracy.png', 'pretraining.png'):
    with open(paths[name], 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  saved = json.loads(open(paths['results.json']).read())
  assert saved['top_1']['simclr']['0.01'] == 0.82
  assert saved['top_1_seeds']['supervised']['0.001'] == [0.4, 0.5, 0.6]


def test_read_scalars_from_event_file(tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    for step in (1, 2, 3):
      tf.summary.scalar('train/contrast_loss', 10.0 / step, step=step)
      tf.summary.scalar('train/other', 1.0, step=step)
  writer.flush()
  writer.close()
  curves = report.read_scalars(str(tmp_path))
  assert [s for s, _ in curves['train/contrast_loss']] == [1, 2, 3]
  assert curves['train/contrast_loss'][1][1] == pytest.approx(5.0)
  assert curves['train/contrast_acc'] == []


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_quick_protocol_end_to_end(tmp_path):
  output = tmp_path / 'out'
  completed = subprocess.run(
      [sys.executable, SCRIPT, '--quick', f'--output_dir={output}',
       f'--work_dir={tmp_path / "work"}'], cwd=REPO, capture_output=True,
      text=True, timeout=3600, check=False)
  assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
  results = json.loads((output / 'results.json').read_text())
  for arm in plan_lib.ARMS:
    for fraction in results['fractions']:
      assert 0 <= results['top_1'][arm][fraction] <= 1
  assert set(results['encoder']) >= {'knn_top_1', 'linear_probe_top_1',
                                     'feature_logreg_top_1',
                                     'raw_pixel_knn_top_1',
                                     'raw_pixel_logreg_top_1'}
  for name in ('results.md', 'accuracy.png', 'pretraining.png'):
    assert (output / name).stat().st_size > 0


def test_feature_regression_of_a_pretraining_runs_once_per_model_dir(
    tmp_path, monkeypatch):
  calls = []

  def fake(plan, model_dir, cs=None, test=False, key='final_avg_pool'):
    calls.append(model_dir)
    return _fake_feature_logistic_regression(plan, model_dir, cs, test, key)

  monkeypatch.setattr(anchors_lib, 'feature_logistic_regression', fake)
  plan = plan_lib.Plan()
  for _ in range(2):  # A second invocation in the same work_dir reuses it.
    stages = stages_lib.Stages(str(tmp_path), echo=lambda *_: None)
    os.makedirs(stages.model_dir('pretrain'), exist_ok=True)
    logreg = protocol.cached_feature_logistic_regression(plan, stages,
                                                         'pretrain')
    assert logreg['test_top_1'] == 0.71 and logreg['c'] == 1.0
    assert logreg['validation'] == {'0.1': 0.7, '1.0': 0.72}
    assert 'pretrain_feature_logreg' in stages.timings()
  assert calls == [stages.model_dir('pretrain')]
  assert stages.timings()['pretrain_feature_logreg']['reused']


def test_experiment_records_and_a_failed_stage_is_one_line(tmp_path, capsys):
  """benchmarks/protocol/experiment.run_experiment: the records every
  results JSON carries, and a failed stage as one line and exit status 1
  with nothing written."""
  args = experiment.parse_args([f'--work_dir={tmp_path}', '--output_dir=x',
                                '--machine=epyc'], 'test', 'plan only')
  written = {}

  def finish(results, stages):
    written.update(results, work_dir=stages.work_dir)
    return {'results': 'x/results.json'}, 'the table'

  def run(stages):
    stages.records['a'] = {'seconds': 2.5, 'result': {}, 'train': {}}
    return {'top_1': 0.5}

  argv = ['--work_dir=w', '--plan_only=0']
  assert experiment.run_experiment('benchmarks/e.py', argv, args,
                                   {'total': 12.0}, run, finish) == 0
  assert written['top_1'] == 0.5 and written['work_dir'] == str(tmp_path)
  # The estimate on the machine class asked for.
  assert written['estimated_wall_time_s'] == pytest.approx(
      12.0 * plan_lib.MACHINE_SLOWDOWN['epyc'])
  assert written['estimate_machine'] == 'epyc'
  assert written['command'] == 'python benchmarks/e.py --work_dir=w --plan_only=0'
  assert 0 <= written['total_wall_time_s'] < 60
  assert set(written['git']) >= {'commit', 'uncommitted_changes_in_code'}
  assert written['machine']['cores'] == os.cpu_count()
  assert 'the table' in capsys.readouterr().out

  def failing(stages):
    raise stages_lib.StageFailed('pretrain failed (exit 1): see logs/x.log')

  written.clear()
  assert experiment.run_experiment('benchmarks/e.py', [], args, {'total': 1},
                                   failing, finish) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ['e.py: pretrain failed (exit 1): see logs/x.log']
  assert not written


def test_width_rates_scale_the_measured_rates_by_width():
  """plan.width_rates: RATES at the protocol's widths; at width 1/4 the
  pretraining image costs WIDTH_COSTS' 2.5x, the half-width student (1/8)
  pretrains at the protocol's own measured 1/8 rate, and a distillation
  image is a third of a teacher's step plus a student's."""
  base = plan_lib.Plan()
  assert plan_lib.width_rates(base) == pytest.approx(plan_lib.RATES)
  wide = dataclasses.replace(base, width=0.25, student_width=0.125)
  rates = plan_lib.width_rates(wide)
  assert rates['pretrain'] == pytest.approx(940 / 2.5)
  assert rates['pretrain_small'] == pytest.approx(plan_lib.RATES['pretrain'])
  assert rates['few_label'] == pytest.approx(1200 / 2.2)
  assert rates['distill'] == pytest.approx(1250 / 2.2)
  # 1/4 -> 1/8 against the protocol's 1/8 -> 1/16: (2.2 / 3 + 1) against
  # (1 / 3 + 0.97), per 4/3.
  assert rates['distill_small'] == pytest.approx(
      1550 * (1 / 3 + 0.97) / (2.2 / 3 + 1))
  assert (plan_lib.estimate_seconds(wide, rates=rates)['total'] >
          1.5 * plan_lib.estimate_seconds(base)['total'])
  with pytest.raises(ValueError, match='WIDTH_COSTS'):
    plan_lib.width_rates(dataclasses.replace(base, width=1.0))

"""tf_simclr.knn and the pretraining kNN monitor: the weighted kNN against a
NumPy computation, features under a mirrored strategy, and a real run.py
pretraining that logs knn_top_1 and writes it to result.json."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import data
from tf_simclr import knn
from tf_simclr import model as model_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_class_scores(bank, bank_labels, queries, num_classes, k, temperature):
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  scores = np.zeros((len(queries), num_classes))
  for row, query in enumerate(queries):
    similarity = bank @ query
    for index in np.argsort(-similarity)[:k]:
      scores[row, bank_labels[index]] += np.exp(similarity[index] / temperature)
  return scores


@pytest.mark.parametrize('k,temperature,query_batch', [
    (1, 0.1, 7), (5, 0.5, 64), (200, 0.1, 33), (1000, 0.07, 1000)])
def test_class_scores_match_numpy_over_random_draws(k, temperature,
                                                    query_batch):
  rng = np.random.RandomState(k)
  for _ in range(3):
    bank = rng.normal(size=(300, 12)).astype(np.float32)
    labels = rng.randint(0, 5, 300)
    queries = rng.normal(size=(50, 12)).astype(np.float32)
    got = knn.knn_class_scores(bank, labels, queries, 5, k, temperature,
                               query_batch)
    expected = numpy_class_scores(bank, labels, queries, 5, min(k, 300),
                                  temperature)
    np.testing.assert_allclose(got, expected, rtol=2e-4)


def test_accuracy_on_separable_clusters_and_unnormalised_features():
  rng = np.random.RandomState(0)
  centres = rng.normal(size=(4, 8)) * 5
  labels = rng.randint(0, 4, 400)
  bank = centres[labels] + rng.normal(size=(400, 8))
  query_labels = rng.randint(0, 4, 100)
  queries = 7.0 * (centres[query_labels] + rng.normal(size=(100, 8)))
  accuracy = knn.knn_accuracy(bank, labels, queries, query_labels, 4, k=20)
  predicted = np.argmax(numpy_class_scores(bank, labels, queries, 4, 20, 0.1),
                        1)
  assert accuracy == pytest.approx(np.mean(predicted == query_labels))
  assert accuracy > 0.9


MIRRORED_FEATURES = """
import numpy as np
import tensorflow as tf
from tf_simclr import data, distribute, knn
from tf_simclr import model as model_lib

devices = distribute.split_cpu_into_logical_devices(2)
strategy = tf.distribute.MirroredStrategy(devices)
with strategy.scope():
  model = model_lib.build_model(10, resnet_depth=18, width_multiplier=0.0625,
                                image_size=32, global_bn=False)
  model(tf.zeros([1, 32, 32, 3]), training=False)
config = data.InputConfig(dataset='synthetic', split='test', image_size=32,
                          batch_size=48, augmentation='eval', is_training=False)
batches = list(data.build_dataset(config))
images = np.concatenate([b[0].numpy() for b in batches])
labels = np.concatenate([b[1].numpy() for b in batches])
expected = model(images, training=False)['final_avg_pool'].numpy()
for strategy_used, limit in ((None, 100), (strategy, None)):
  features, got = knn.extract_features(model, data.build_dataset(config),
                                       strategy_used, max_examples=limit)
  order = np.lexsort(features.T[::-1])
  reference = expected[:limit] if limit else expected
  reference_labels = labels[:limit] if limit else labels
  ref_order = np.lexsort(reference.T[::-1])
  np.testing.assert_allclose(features[order], reference[ref_order],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(got[order], reference_labels[ref_order])
# 9 images at batch 8: a last batch of 1, smaller than the replicas.
odd = tf.data.Dataset.from_tensor_slices((images[:9], labels[:9])).batch(8)
features, got = knn.extract_features(model, odd, strategy)
np.testing.assert_allclose(features, expected[:9], rtol=1e-4, atol=1e-5)
np.testing.assert_array_equal(got, labels[:9])
print('features ok')
"""


def test_extract_features_in_inference_mode_under_a_mirrored_strategy():
  """Features of every example, once, with its label: on one device and on
  two mirrored replicas, also when the last batch is smaller than the
  replicas (in a subprocess: logical devices are set up once)."""
  # oneDNN on, as run.py runs (its CPU convolution rejects an empty batch).
  completed = subprocess.run([sys.executable, '-c', MIRRORED_FEATURES],
                             cwd=REPO, capture_output=True, text=True,
                             timeout=600, check=False,
                             env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS='1'))
  assert 'features ok' in completed.stdout, completed.stderr[-3000:]


def test_run_py_pretraining_logs_and_saves_knn_top_1(tmp_path):
  """The monitor of a real pretraining equals a NumPy kNN of the saved
  model's features; --knn_every_steps logs it during training."""
  model_dir = tmp_path / 'pretrain'
  completed = subprocess.run(
      [sys.executable, os.path.join(REPO, 'run.py'), '--train_mode=pretrain',
       '--dataset=synthetic', '--eval_split=test', '--image_size=32',
       '--resnet_depth=18', '--width_multiplier=0.0625',
       '--train_batch_size=32', '--train_steps=4', '--steps_per_loop=2',
       '--knn_every_steps=2', '--knn_bank_size=500', '--global_bn=false',
       '--mode=train_then_eval', '--export=false', f'--model_dir={model_dir}'],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  logged = [line for line in completed.stderr.splitlines()
            if 'knn_top_1=' in line]
  assert any('step 2/4 knn_top_1=' in line for line in logged)
  assert any('step 4/4 knn_top_1=' in line for line in logged)
  result = json.loads((model_dir / 'result.json').read_text())
  assert 0 <= result['knn_top_1'] <= 1

  model = model_lib.build_model(10, resnet_depth=18, width_multiplier=0.0625,
                                image_size=32, global_bn=False)
  model(tf.zeros([1, 32, 32, 3]), training=False)
  tf.train.Checkpoint(model=model).read(
      tf.train.latest_checkpoint(str(model_dir))).expect_partial()

  def features(split, limit):
    images, labels = data.synthetic_arrays(split)
    images = images[:limit].astype(np.float32) / 255.0
    return (model(images, training=False)['final_avg_pool'].numpy(),
            labels[:limit])

  bank, bank_labels = features('train', 500)
  queries, query_labels = features('test', None)
  scores = numpy_class_scores(bank, bank_labels, queries, 10, 200, 0.1)
  expected = np.mean(np.argmax(scores, 1) == query_labels)
  assert result['knn_top_1'] == pytest.approx(expected, abs=1.5 / 256)

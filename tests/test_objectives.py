"""Losses against independent NumPy formulas, gradients and properties."""

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import objectives


# ---------------------------------------------------------------- NumPy NT-Xent
def _log_softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def numpy_nt_xent(hidden, hidden_norm=True, temperature=0.1):
  """NT-Xent written out per anchor: rows i and i+n are the two views of image
  i; each anchor's positive is its other view, its negatives are the other 2n-2
  rows (itself excluded). Returns mean over view-a anchors + mean over view-b
  anchors."""
  hidden = np.asarray(hidden, np.float64)
  if hidden_norm:
    hidden = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
  two_n = hidden.shape[0]
  n = two_n // 2
  similarity = hidden @ hidden.T / temperature
  per_anchor = np.empty(two_n)
  for i in range(two_n):
    positive = (i + n) % two_n
    others = [j for j in range(two_n) if j != i]
    log_prob = _log_softmax(similarity[i, others])
    per_anchor[i] = -log_prob[others.index(positive)]
  return per_anchor[:n].mean() + per_anchor[n:].mean()


def numerical_gradient(function, x, epsilon=1e-6):
  x = np.asarray(x, np.float64)
  gradient = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[index] += epsilon
    minus[index] -= epsilon
    gradient[index] = (function(plus) - function(minus)) / (2 * epsilon)
  return gradient


def tf_loss_and_gradient(hidden, **kwargs):
  hidden = tf.constant(hidden, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(hidden)
    loss, logits_ab, labels = objectives.contrastive_loss(hidden, **kwargs)
  return (loss.numpy(), tape.gradient(loss, hidden).numpy(), logits_ab.numpy(),
          labels.numpy())


@pytest.mark.parametrize('n', [1, 3, 8])
@pytest.mark.parametrize('temperature', [0.1, 0.5, 1.0])
@pytest.mark.parametrize('hidden_norm', [True, False])
def test_contrastive_loss_and_gradient_match_numpy(n, temperature, hidden_norm):
  rng = np.random.default_rng(n * 100 + int(temperature * 10) + hidden_norm)
  # Unnormalised logits stay moderate at tau = 0.1 with this scale.
  scale = 1.0 if hidden_norm else 0.3
  hidden = rng.normal(size=(2 * n, 5)) * scale
  loss, gradient, logits_ab, labels = tf_loss_and_gradient(
      hidden, hidden_norm=hidden_norm, temperature=temperature)

  expected = numpy_nt_xent(hidden, hidden_norm, temperature)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
  expected_gradient = numerical_gradient(
      lambda h: numpy_nt_xent(h, hidden_norm, temperature), hidden)
  np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-3, atol=1e-4)

  normalised = (hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
                if hidden_norm else hidden)
  np.testing.assert_allclose(
      logits_ab, normalised[:n] @ normalised[n:].T / temperature,
      rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(
      labels, np.concatenate([np.eye(n), np.zeros((n, n))], axis=1))


def test_contrastive_loss_casts_half_precision_to_float32():
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(6, 4)).astype(np.float16)
  loss, _, _ = objectives.contrastive_loss(tf.constant(hidden))
  assert loss.dtype == tf.float32
  np.testing.assert_allclose(loss.numpy(), numpy_nt_xent(hidden), rtol=1e-4)


def test_contrastive_loss_invariant_to_permuting_images():
  rng = np.random.default_rng(1)
  n = 6
  hidden = rng.normal(size=(2 * n, 7))
  permutation = rng.permutation(n)
  permuted = np.concatenate([hidden[:n][permutation], hidden[n:][permutation]])
  swapped_views = np.concatenate([hidden[n:], hidden[:n]])
  loss = objectives.contrastive_loss(tf.constant(hidden, tf.float32))[0]
  for other in (permuted, swapped_views):
    other_loss = objectives.contrastive_loss(tf.constant(other, tf.float32))[0]
    np.testing.assert_allclose(other_loss.numpy(), loss.numpy(), rtol=1e-6)


def test_contrastive_loss_small_for_aligned_orthogonal_views():
  n, temperature = 4, 0.1
  views = np.eye(8)[:n] * 3.0  # orthogonal, scale removed by hidden_norm
  hidden = tf.constant(np.concatenate([views, views]), tf.float32)
  loss, logits_ab, labels = objectives.contrastive_loss(
      hidden, temperature=temperature)
  # Each anchor: positive logit 1/tau, 2n - 2 negatives at logit 0.
  expected = 2 * np.log1p((2 * n - 2) * np.exp(-1 / temperature))
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-3)
  assert loss.numpy() < 1e-3
  accuracy, entropy = objectives.contrastive_metrics(logits_ab, labels)
  assert accuracy.numpy() == 1.0
  assert entropy.numpy() < 0.01
  # Colder temperature: smaller still.
  colder = objectives.contrastive_loss(hidden, temperature=0.05)[0]
  assert colder.numpy() < loss.numpy()


def test_contrastive_metrics_match_numpy():
  rng = np.random.default_rng(2)
  n = 5
  logits_ab = rng.normal(size=(n, n)) * 3
  labels = np.concatenate([np.eye(n), np.zeros((n, n))], axis=1)
  accuracy, entropy = objectives.contrastive_metrics(
      tf.constant(logits_ab, tf.float32), tf.constant(labels, tf.float32))
  expected_accuracy = np.mean(logits_ab.argmax(axis=1) == np.arange(n))
  probabilities = np.exp(_log_softmax(logits_ab))
  expected_entropy = -np.mean(np.sum(probabilities * np.log(probabilities),
                                     axis=1))
  np.testing.assert_allclose(accuracy.numpy(), expected_accuracy)
  np.testing.assert_allclose(entropy.numpy(), expected_entropy, rtol=1e-4)


def test_cross_replica_concat_is_identity_without_strategy():
  tensor = tf.constant([[1.0, 2.0], [3.0, 4.0]])
  np.testing.assert_array_equal(
      objectives.cross_replica_concat(tensor).numpy(), tensor.numpy())


# ---------------------------------------------------------------- supervised
def numpy_cross_entropy(labels, logits):
  return -np.mean(_log_softmax(np.asarray(logits, np.float64))[
      np.arange(len(labels)), labels])


def test_supervised_loss_matches_numpy():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(7, 4)) * 2
  labels = rng.integers(0, 4, size=7)
  loss = objectives.supervised_loss(tf.constant(labels, tf.int64),
                                    tf.constant(logits, tf.float32))
  np.testing.assert_allclose(loss.numpy(), numpy_cross_entropy(labels, logits),
                             rtol=1e-5)


# ---------------------------------------------------------------- distillation
def numpy_distillation(student, teacher, temperature):
  teacher_probabilities = np.exp(_log_softmax(teacher / temperature))
  return -np.mean(np.sum(teacher_probabilities *
                         _log_softmax(student / temperature), axis=1))


@pytest.mark.parametrize('temperature', [0.5, 1.0, 2.0])
def test_distillation_loss_and_gradients(temperature):
  rng = np.random.default_rng(int(temperature * 10))
  student = rng.normal(size=(6, 5)) * 2
  teacher = rng.normal(size=(6, 5)) * 2
  student_tensor = tf.constant(student, tf.float32)
  teacher_tensor = tf.constant(teacher, tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([student_tensor, teacher_tensor])
    loss = objectives.distillation_loss(student_tensor, teacher_tensor,
                                        temperature)
  np.testing.assert_allclose(
      loss.numpy(), numpy_distillation(student, teacher, temperature),
      rtol=1e-5)
  # d/ds of mean_i CE(p_T, softmax(s/tau)) = (softmax(s/tau) - p_T) / (tau n).
  expected_student_gradient = (
      np.exp(_log_softmax(student / temperature)) -
      np.exp(_log_softmax(teacher / temperature))) / (temperature * 6)
  np.testing.assert_allclose(tape.gradient(loss, student_tensor).numpy(),
                             expected_student_gradient, rtol=1e-4, atol=1e-6)
  teacher_gradient = tape.gradient(loss, teacher_tensor)
  assert teacher_gradient is None or not np.any(teacher_gradient.numpy())


@pytest.mark.parametrize('temperature', [0.5, 1.0, 3.0])
@pytest.mark.parametrize('alpha', [1.0, 0.7, 0.0])
def test_combined_distillation_loss_matches_numpy(temperature, alpha):
  rng = np.random.default_rng(7)
  student = rng.normal(size=(6, 4))
  teacher = rng.normal(size=(6, 4)) * 3
  labeled_logits = rng.normal(size=(3, 4))
  labels = rng.integers(0, 4, size=3)
  loss = objectives.combined_distillation_loss(
      tf.constant(student, tf.float32), tf.constant(teacher, tf.float32),
      temperature, alpha, labeled_logits=tf.constant(labeled_logits, tf.float32),
      labels=tf.constant(labels))
  expected = (alpha * numpy_distillation(student, teacher, temperature) +
              (1 - alpha) * numpy_cross_entropy(labels, labeled_logits))
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_combined_distillation_loss_ignores_labels_at_alpha_one():
  student = tf.constant([[1.0, 0.0, -1.0]])
  teacher = tf.constant([[0.0, 2.0, 0.0]])
  loss = objectives.combined_distillation_loss(student, teacher, 1.0, 1.0)
  np.testing.assert_allclose(
      loss.numpy(), numpy_distillation(student.numpy(), teacher.numpy(), 1.0),
      rtol=1e-6)


def test_combined_distillation_loss_needs_labels_below_alpha_one():
  student = tf.zeros([2, 3])
  with pytest.raises(ValueError, match='alpha'):
    objectives.combined_distillation_loss(student, student, 1.0, 0.5)

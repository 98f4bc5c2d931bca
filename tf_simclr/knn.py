"""Weighted k-nearest-neighbour classification of features: the label-free
pretraining monitor (as in lightly and solo-learn) and an encoder measure.

A query's class scores are sum over its k most cosine-similar bank features of
exp(similarity / temperature), per the neighbour's class (Wu et al. 2018,
"Unsupervised feature learning via non-parametric instance discrimination");
the prediction is the top score. Features are L2-normalised here.

  bank = extract_features(model, bank_dataset, strategy)
  queries = extract_features(model, query_dataset, strategy)
  accuracy = knn_accuracy(*bank, *queries, num_classes=10)
"""

import numpy as np
import tensorflow as tf

DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.1
FEATURE_KEY = 'final_avg_pool'


def knn_class_scores(bank_features, bank_labels, query_features, num_classes,
                     k=DEFAULT_K, temperature=DEFAULT_TEMPERATURE,
                     query_batch=1024):
  """float32 [Q, num_classes] class scores of each query.

  Args:
    bank_features: float [N, D] (normalised here).
    bank_labels: int [N] in [0, num_classes).
    query_features: float [Q, D] (normalised here).
    k: neighbours (at most N).
    temperature: > 0; the weight of a neighbour is exp(cosine / temperature).
    query_batch: queries per similarity matrix (memory: query_batch x N).
  """
  bank = tf.math.l2_normalize(tf.cast(bank_features, tf.float32), axis=1)
  labels = tf.cast(bank_labels, tf.int32)
  k = min(int(k), int(bank.shape[0]))
  queries = tf.math.l2_normalize(tf.cast(query_features, tf.float32), axis=1)

  @tf.function
  def scores_of(batch):
    similarity = tf.matmul(batch, bank, transpose_b=True)      # [b, N]
    top, index = tf.math.top_k(similarity, k=k)                 # [b, k]
    weights = tf.exp(top / temperature)
    votes = tf.one_hot(tf.gather(labels, index), num_classes)   # [b, k, C]
    return tf.einsum('bk,bkc->bc', weights, votes)

  return np.concatenate([
      scores_of(queries[start:start + query_batch]).numpy()
      for start in range(0, int(queries.shape[0]), query_batch)]
      or [np.zeros((0, num_classes), np.float32)])


def knn_accuracy(bank_features, bank_labels, query_features, query_labels,
                 num_classes, k=DEFAULT_K, temperature=DEFAULT_TEMPERATURE):
  """Top-1 accuracy of the weighted kNN prediction of the queries' labels."""
  scores = knn_class_scores(bank_features, bank_labels, query_features,
                            num_classes, k, temperature)
  return float(np.mean(np.argmax(scores, axis=1) == np.asarray(query_labels)))


def extract_features(model, dataset, strategy=None, key=FEATURE_KEY,
                     max_examples=None):
  """(features float32 [N, D], labels int32 [N]) of `model`'s output `key`
  in inference mode over a dataset of (images, labels) batches.

  Under a strategy the batches are run on its replicas (the dataset is
  distributed here); at most `max_examples` examples are read.
  """
  strategy = strategy or tf.distribute.get_strategy()
  if max_examples is not None:
    dataset = dataset.unbatch().take(max_examples).batch(
        _batch_size(dataset))
  replicas = strategy.num_replicas_in_sync
  if replicas > 1:
    # A batch smaller than the replicas leaves one an empty batch, which
    # oneDNN's CPU convolution rejects: every batch is padded to a multiple
    # of the replicas with label -1, and the padding dropped below.
    dataset = dataset.map(lambda images, labels: _pad_batch(
        images, labels, replicas))
  distributed = strategy.experimental_distribute_dataset(dataset)

  def replica_features(images, labels):
    return tf.cast(model(images, training=False)[key], tf.float32), labels

  # One trace for every batch size (the last batch is smaller).
  @tf.function(reduce_retracing=True)
  def step(batch):
    features, labels = strategy.run(replica_features, args=batch)
    return (strategy.experimental_local_results(features),
            strategy.experimental_local_results(labels))

  features, labels = [], []
  for batch in distributed:
    batch_features, batch_labels = step(batch)
    features.extend(f.numpy() for f in batch_features)
    labels.extend(l.numpy() for l in batch_labels)
  if not features:
    return np.zeros((0, 0), np.float32), np.zeros((0,), np.int32)
  features, labels = np.concatenate(features), np.concatenate(labels)
  kept = labels >= 0
  return features[kept].astype(np.float32), labels[kept].astype(np.int32)


def _pad_batch(images, labels, multiple):
  """(images, labels) with rows appended (zero images, label -1) up to a
  multiple of `multiple` examples."""
  pad = tf.math.floormod(-tf.shape(images)[0], multiple)
  images = tf.concat([images, tf.zeros(tf.concat(
      [[pad], tf.shape(images)[1:]], 0), images.dtype)], 0)
  labels = tf.concat([labels, -tf.ones([pad], labels.dtype)], 0)
  return images, labels


def _batch_size(dataset):
  size = tf.compat.v1.data.get_output_shapes(dataset)[0][0]
  return int(size) if size is not None else 256

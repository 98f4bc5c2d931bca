"""The splits as arrays, and what is fitted on them without finetuning: the
raw-pixel anchors (logistic regression and kNN on pixels) and the same
logistic regression on a trained encoder's frozen features."""

import time

from benchmarks.protocol import plan as plan_lib


# ---------------------------------------------------------------- the splits
def split_arrays(dataset, split, image_size, limit=None, data_dir=None):
  """(pixels float32 [N, image_size², ] in [0, 1], labels int32 [N]) of a
  split through the eval preprocessing (first channel: grey images)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tf_simclr import data  # pylint: disable=import-outside-toplevel
  config = data.InputConfig(dataset=dataset, split=split, data_dir=data_dir,
                            image_size=image_size, batch_size=1000,
                            augmentation='eval', is_training=False)
  images, labels = [], []
  for batch_images, batch_labels in data.build_dataset(config):
    images.append(batch_images.numpy()[..., 0].reshape(
        len(batch_labels), -1))
    labels.append(batch_labels.numpy())
    if limit and sum(len(l) for l in labels) >= limit:
      break
  images, labels = np.concatenate(images), np.concatenate(labels)
  return (images[:limit], labels[:limit]) if limit else (images, labels)


def encoder_features(plan, model_dir, splits, key='final_avg_pool'):
  """[(features float32 [N, D], labels int32 [N]) per split] of the network
  trained in `model_dir` (its config.json and latest checkpoint, restored
  once) through the eval preprocessing, in inference mode."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tf_simclr import architecture  # pylint: disable=import-outside-toplevel
  from tf_simclr import checkpoints  # pylint: disable=import-outside-toplevel
  from tf_simclr import config as config_lib  # pylint: disable=import-outside-toplevel
  from tf_simclr import data  # pylint: disable=import-outside-toplevel
  from tf_simclr import knn  # pylint: disable=import-outside-toplevel
  from tf_simclr import model as model_lib  # pylint: disable=import-outside-toplevel
  record = architecture.ModelConfig.from_dict(
      config_lib.read_architecture(model_dir))
  model = model_lib.build_model(record,
                                supervised_training=bool(record.num_classes))
  tf.train.Checkpoint(model=model).read(
      checkpoints.resolve_checkpoint(model_dir)).expect_partial()
  return [knn.extract_features(model, data.build_dataset(data.InputConfig(
      dataset=plan.dataset, split=split, data_dir=plan.data_dir,
      image_size=plan.image_size, batch_size=1000, augmentation='eval',
      is_training=False)), key=key) for split in splits]


def split_keys_and_labels(plan, split):
  """(keys, labels) of a split's examples, as tf_simclr.data reads them."""
  from tf_simclr import sources  # pylint: disable=import-outside-toplevel
  return sources.source(plan.dataset, plan.data_dir).keys_and_labels(split)


def labeled_subset_keys(plan, fraction, seed):
  """Keys of the labeled images of (fraction, seed): what run.py's
  --label_fraction / --label_seed select from the pool."""
  from tf_simclr import data  # pylint: disable=import-outside-toplevel
  keys, labels = split_keys_and_labels(plan, plan.train_split)
  mask = data.label_subset_mask(keys, labels, plan_lib.NUM_CLASSES,
                                plan_lib.pool_label_fraction(plan, fraction),
                                seed)
  return keys[mask]


# ---------------------------------------------------------------- logistic regression
def logistic_regression_accuracy(train_x, train_y, eval_x, eval_y, c,
                                 max_iter=200):
  """Top-1 of multinomial L2-regularised logistic regression (scikit-learn,
  lbfgs; C = 1 / regularisation strength)."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  model = LogisticRegression(C=c, max_iter=max_iter)
  model.fit(train_x, train_y)
  return float((model.predict(eval_x) == eval_y).mean()), model


def logistic_regression_by_c(train, evaluation, cs):
  """({C: top-1 on `evaluation`}, {C: fitted model}) of
  logistic_regression_accuracy fitted on `train`; both are (x, y) pairs."""
  by_c, models = {}, {}
  for c in cs:
    by_c[c], models[c] = logistic_regression_accuracy(*train, *evaluation, c)
  return by_c, models


def standardise(train_x, *others):
  """[train_x, *others] shifted and scaled by train_x's per-column mean and
  standard deviation (a constant column is only shifted)."""
  mean, std = train_x.mean(axis=0), train_x.std(axis=0)
  std = (std + (std == 0)).astype(train_x.dtype)
  return [(x - mean) / std for x in (train_x, *others)]


def feature_logistic_regression(plan, model_dir, cs=None, test=False,
                                key='final_avg_pool'):
  """The raw-pixel anchor's logistic regression on the frozen encoder's
  features instead of pixels: fitted on the pool's `key` features (all its
  labels, standardised with the pool's statistics), C chosen on the
  validation split. Returns {'validation': {C: top-1}, 'c': the chosen C}
  and, with `test`, 'test_top_1': the chosen model's top-1 on the test split
  (the only read of it)."""
  splits = [plan.train_split, plan.validation_split] + (
      [plan_lib.TEST_SPLIT] if test else [])
  features = encoder_features(plan, model_dir, splits, key)
  xs = standardise(*(x for x, _ in features))
  (pool, pool_y), (validation, validation_y), *rest = [
      (x, y) for x, (_, y) in zip(xs, features)]
  by_c, models = logistic_regression_by_c(
      (pool, pool_y), (validation, validation_y), cs or plan.logreg_cs)
  best_c = plan_lib.best_of(by_c)
  out = {'validation': by_c, 'c': best_c}
  for test_x, test_y in rest:
    out['test_top_1'] = float(
        (models[best_c].predict(test_x) == test_y).mean())
  return out


# ---------------------------------------------------------------- the raw-pixel anchors
def pixel_splits(plan, *splits):
  """split_arrays of each split (2 000 images each in a --quick plan)."""
  limit = 2_000 if plan.eval_steps else None
  return [split_arrays(plan.dataset, split, plan.image_size, limit,
                       plan.data_dir) for split in splits]


def raw_pixel_validation(plan, cs=None):
  """The raw-pixel logistic regression's {C: top-1 on the validation split}
  (fitted on the pool's pixels, all its labels)."""
  pool, validation = pixel_splits(plan, plan.train_split,
                                  plan.validation_split)
  return logistic_regression_by_c(pool, validation, cs or plan.logreg_cs)[0]


def raw_pixel_anchors(plan, echo=print):
  """Logistic regression and the k-200 cosine kNN on raw pixels: fitted on
  the pool (all its labels), C chosen on validation, read once on test."""
  from tf_simclr import knn  # pylint: disable=import-outside-toplevel
  started = time.time()
  pool, validation, test = pixel_splits(
      plan, plan.train_split, plan.validation_split, plan_lib.TEST_SPLIT)
  by_c, models = logistic_regression_by_c(pool, validation, plan.logreg_cs)
  for c, top_1 in by_c.items():
    echo(f'[raw pixels] logistic regression C={c}: validation {top_1:.4f}')
  best_c = plan_lib.best_of(by_c)
  logreg = float((models[best_c].predict(test[0]) == test[1]).mean())
  knn_top_1 = knn.knn_accuracy(*pool, *test, num_classes=plan_lib.NUM_CLASSES)
  echo(f'[raw pixels] test: logistic regression {logreg:.4f} (C={best_c}), '
       f'kNN {knn_top_1:.4f} ({time.time() - started:.0f} s)')
  return {'raw_pixel_logreg_top_1': logreg, 'raw_pixel_knn_top_1': knn_top_1,
          'raw_pixel_logreg_c': best_c,
          'raw_pixel_logreg_validation': {str(c): a for c, a in by_c.items()},
          'seconds': time.time() - started}

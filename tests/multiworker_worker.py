"""One worker of tests/test_multiworker.py (TF_CONFIG names the cluster).

Builds trainer.Trainer for a tiny pretraining run under
MultiWorkerMirroredStrategy, runs its replica step TRAIN_STEPS times in one
tf.function over the distributed synthetic input, then saves through the
Trainer's CheckpointManager (the chief into MODEL_DIR, other workers into a
throw-away directory). Prints one JSON line.

  python tests/multiworker_worker.py MODEL_DIR TRAIN_STEPS
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tf_simclr import config as config_lib  # pylint: disable=g-import-not-at-top
from tf_simclr import data
from tf_simclr import distribute
from tf_simclr import trainer as trainer_lib


def main(model_dir, train_steps):
  config = config_lib.Config(
      dataset='synthetic', train_mode='pretrain', image_size=32,
      resnet_depth=18, width_multiplier=0.125, global_bn=True,
      train_batch_size=16, train_steps=train_steps, warmup_epochs=0,
      learning_rate=0.1, strategy='multi_worker_mirrored',
      model_dir=model_dir).validate()
  strategy = distribute.make_strategy(config.strategy)
  trainer = trainer_lib.Trainer(config, strategy)
  iterator = iter(data.build_distributed_dataset(strategy, trainer.train_input))
  step_fn = tf.function(trainer._replica_step)  # pylint: disable=protected-access

  @tf.function
  def train_loop(iterator, num_steps):
    for _ in tf.range(num_steps):
      strategy.run(step_fn, args=(next(iterator),))

  train_loop(iterator, tf.constant(train_steps))
  step = int(trainer.global_step.numpy())
  path = trainer.manager.save(checkpoint_number=step)
  print(json.dumps({
      'is_chief': trainer.is_chief, 'replicas': strategy.num_replicas_in_sync,
      'global_step': step, 'checkpoint': path,
      'total_loss': float(trainer.metrics['total_loss'].result())}))


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]))

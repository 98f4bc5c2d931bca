"""Finetunes in one process, warm and cold, for tests/test_warm_runs.py (a
test aid only).

  python tests/warm_runs.py WORK_DIR

pretrains a tiny network on synthetic images, then runs finetunes with
run.py's run_in_process (which reuses an earlier finetune's model, optimizer
and traced step when only runtime fields differ) and, for each warm run, the
same run cold (nothing to reuse); prints one JSON object: per run whether it
reused a trace, its final weights' largest difference from its cold twin's,
and its evaluation.
"""

import json
import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import run  # pylint: disable=wrong-import-position
from tf_simclr import trainer as trainer_lib  # pylint: disable=wrong-import-position

COMMON = ['--dataset=synthetic', '--image_size=32', '--resnet_depth=18',
          '--width_multiplier=0.0625', '--eval_split=test',
          '--mode=train_then_eval', '--export=false', '--global_bn=false',
          '--deterministic', '--seed=3', '--eval_batch_size=128']


def finetune(work_dir, name, *flags):
  return ['run.py', *COMMON, '--train_mode=finetune',
          f'--model_dir={os.path.join(work_dir, name)}',
          f'--checkpoint={os.path.join(work_dir, "pretrain")}',
          '--train_batch_size=16', '--train_steps=6', '--checkpoint_steps=6',
          '--steps_per_loop=3', '--optimizer=momentum', '--weight_decay=5e-4',
          '--ft_proj_selector=1', '--zero_init_logits_layer', *flags]


def weights(model_dir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  reader = tf.train.load_checkpoint(model_dir)
  names = sorted(name for name, _ in tf.train.list_variables(model_dir)
                 if name.startswith('model/'))
  return {name: reader.get_tensor(name) for name in names}


def largest_difference(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k])))
             for k in a)


def main(work_dir):
  run.run_in_process(['run.py', *COMMON, '--train_mode=pretrain',
                      f'--model_dir={os.path.join(work_dir, "pretrain")}',
                      '--train_batch_size=16', '--train_steps=4',
                      '--checkpoint_steps=4', '--use_blur=false'])
  trainer_lib.reuse_traced_runs(False)
  # (name, flags): the second and later take over the first's trace.
  sequence = [
      ('first', ['--learning_rate=0.1']),
      ('same', ['--learning_rate=0.1']),
      ('other_rate_seed_fraction', ['--learning_rate=0.4', '--label_seed=2',
                                    '--label_fraction=0.2',
                                    '--warmup_epochs=0.5']),
      ('from_scratch', ['--learning_rate=0.2', '--checkpoint=scratch']),
      ('other_weight_decay', ['--learning_rate=0.1', '--weight_decay=1e-3']),
  ]
  results = {}
  for name, flags in sequence:
    summary = run.run_in_process(finetune(work_dir, name, *flags))
    results[name] = {'reused_trace': summary['reused_trace'],
                     'top_1': summary['eval']['label_top_1_accuracy'],
                     'trace_s': summary['phases']['trace_train_loop']}
  for name, flags in sequence:
    trainer_lib.reuse_traced_runs(False)  # Cold: nothing to take over.
    summary = run.run_in_process(finetune(work_dir, name + '_cold', *flags))
    results[name]['cold_reused_trace'] = summary['reused_trace']
    results[name]['cold_top_1'] = summary['eval']['label_top_1_accuracy']
    results[name]['largest_difference'] = largest_difference(
        weights(os.path.join(work_dir, name)),
        weights(os.path.join(work_dir, name + '_cold')))
  print(json.dumps(results, sort_keys=True))


if __name__ == '__main__':
  main(sys.argv[1])

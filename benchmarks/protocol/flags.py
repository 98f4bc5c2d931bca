"""run.py flags of each stage of the protocol, from a Plan: every stage trains
on the plan's pool (or its labeled subset) and evaluates the validation split,
test_flags turns one into its single read of the test split."""

from benchmarks.protocol import plan as plan_lib


def common_flags(plan, width):
  """What every stage shares: the data, the splits, a ResNet of plan.depth at
  `width` with plan.num_proj_layers projection-head layers, whole-split
  evaluation after training, no export."""
  return [f'--dataset={plan.dataset}', f'--image_size={plan.image_size}',
          *([f'--data_dir={plan.data_dir}'] if plan.data_dir else []),
          f'--resnet_depth={plan.depth}', f'--width_multiplier={width}',
          f'--num_proj_layers={plan.num_proj_layers}',
          f'--train_split={plan.train_split}',
          f'--eval_split={plan.validation_split}', '--eval_batch_size=1000',
          f'--eval_steps={plan.eval_steps}', '--mode=train_then_eval',
          '--export=false', '--global_bn=false', '--keep_checkpoint_max=1',
          '--cache_dataset']


def _duration(steps):
  # One checkpoint, at the end; progress logged about 20 times.
  return [f'--train_steps={steps}', f'--checkpoint_steps={steps}',
          f'--steps_per_loop={max(1, min(100, steps // 20))}']


def pretrain_flags(plan, model_dir, memory=False, small=False):
  """The pretraining of the teacher's network, with memory its memory-of-
  negatives variant, with small the half-width student's network."""
  memory_flags = [f'--memory_size={plan.memory_size}',
                  f'--memory_momentum={plan.memory_momentum}'] if memory else []
  steps = plan.steps()['pretrain_memory' if memory else
                       'pretrain_small' if small else 'pretrain']
  width = plan.student_width if small else plan.width
  return common_flags(plan, width) + _duration(steps) + memory_flags + [
      '--train_mode=pretrain', f'--model_dir={model_dir}',
      f'--train_batch_size={plan.pretrain_batch}', '--optimizer=lars',
      f'--learning_rate={plan.pretrain_learning_rate}',
      '--learning_rate_scaling=linear', '--weight_decay=1e-6',
      '--warmup_epochs=1', f'--temperature={plan.temperature}',
      f'--color_jitter_strength={plan.color_jitter_strength}',
      f'--crop_min_area={plan.pretrain_crop_min_area}', '--use_blur=false',
      f'--knn_bank_size={plan.knn_bank_size}']


def linear_probe_flags(plan, model_dir, checkpoint):
  """The reference's linear evaluation: only a new zero-initialised head on
  the frozen backbone's final_avg_pool, all the pool's labels, SGD +
  momentum at lr 0.1 per 256, no weight decay."""
  return common_flags(plan, plan.width) + _duration(
      plan.steps()['linear_probe']) + [
          '--train_mode=finetune', f'--model_dir={model_dir}',
          f'--checkpoint={checkpoint}', '--fine_tune_after_block=4',
          '--ft_proj_selector=0', '--zero_init_logits_layer',
          f'--train_batch_size={plan.linear_batch}', '--optimizer=momentum',
          '--learning_rate=0.1', '--learning_rate_scaling=linear',
          '--weight_decay=0', '--warmup_epochs=0']


def few_label_name(prefix, key, seed, learning_rate, crop_min_area):
  """The stage name of a few-label run."""
  return f'{prefix}@{key}_seed{seed}_lr{learning_rate:g}_area{crop_min_area:g}'


def few_label_flags(plan, fraction, seed, model_dir, learning_rate,
                    checkpoint, crop_min_area):
  """Training on the labeled subset: everything trained, SGD + momentum,
  weight decay 5e-4, cosine, crops of crop_min_area to 1 of the image.
  checkpoint: a pretraining (finetuning from projection-head layer
  plan.ft_proj_selector, 1 by default, with a zero-initialised head:
  SimCLRv2) or 'scratch' (the supervised baseline: a plain ResNet and a
  linear head)."""
  from_scratch = checkpoint == 'scratch'
  steps = plan.steps()[f'few_label@{plan_lib.fraction_key(fraction)}']
  epochs = plan.few_label_epochs[fraction]
  return common_flags(plan, plan.width) + _duration(steps) + [
      '--train_mode=finetune', f'--model_dir={model_dir}',
      f'--checkpoint={checkpoint}',
      f'--label_fraction={plan_lib.pool_label_fraction(plan, fraction)!r}',
      f'--label_seed={seed}',
      f'--train_batch_size={plan.few_label_batch[fraction]}',
      f'--ft_proj_selector={0 if from_scratch else plan.ft_proj_selector}',
      '--fine_tune_after_block=-1', '--optimizer=momentum',
      f'--learning_rate={learning_rate}', '--learning_rate_scaling=linear',
      '--weight_decay=5e-4', f'--crop_min_area={crop_min_area}',
      f'--warmup_epochs={epochs / 20 if from_scratch else 0}'] + (
          [] if from_scratch else ['--zero_init_logits_layer'])


def student_init_checkpoint(init, pretrain_dir, teacher):
  """The --checkpoint a student starts from: 'pretrained' (pretrain_dir, a
  pretraining of the student's own width), 'teacher' or 'scratch' (None)."""
  return {'pretrained': pretrain_dir, 'teacher': teacher,
          'scratch': None}[init]


def distill_flags(plan, model_dir, teacher, learning_rate, fraction,
                  small=False, init_checkpoint=None, crop_min_area=None):
  """The student on the pool without labels (alpha 1, tau 1), SGD + momentum,
  crops of crop_min_area to 1 of the image (its teacher's; None: run.py's
  default): the teacher's architecture, or with small the half-width
  student.
  init_checkpoint: a pretraining of the student's width or the teacher (the
  student then reads projection-head layer plan.ft_proj_selector, like its
  teacher, through a new zero-initialised head) or None (a plain ResNet from
  scratch)."""
  width = plan.student_width if small else plan.width
  key = plan_lib.fraction_key(fraction)
  steps = plan.steps()[f'distill_small@{key}' if small else 'distill']
  flags = common_flags(plan, width) + _duration(steps) + [
      '--train_mode=distill', f'--model_dir={model_dir}',
      f'--teacher_checkpoint={teacher}', '--distill_alpha=1',
      '--distill_temperature=1', f'--train_batch_size={plan.distill_batch}',
      '--optimizer=momentum', f'--learning_rate={learning_rate}',
      '--learning_rate_scaling=linear', '--weight_decay=1e-4',
      '--warmup_epochs=0.05'] + (
          [] if crop_min_area is None else [f'--crop_min_area={crop_min_area}'])
  if init_checkpoint:
    return flags + [f'--checkpoint={init_checkpoint}',
                    f'--ft_proj_selector={plan.ft_proj_selector}',
                    '--zero_init_logits_layer']
  return flags + ['--ft_proj_selector=0']


def test_flags(flags, train=False):
  """A stage's flags with its evaluation on the test split, whole, written
  to result_test.json: a single evaluation of its model_dir, or with train
  the training run itself evaluating the test split at its end (a final run,
  whose validation score would choose nothing)."""
  kept = [f for f in flags if not f.startswith(('--mode=', '--eval_split=',
                                                '--eval_name=',
                                                '--eval_steps='))]
  return kept + [f'--mode={"train_then_eval" if train else "eval"}',
                 f'--eval_split={plan_lib.TEST_SPLIT}', '--eval_name=test',
                 '--eval_steps=0']


def flag_value(flags, name):
  """The value of --name=... in `flags`; KeyError when absent."""
  for flag in flags:
    if flag.startswith(f'--{name}='):
      return flag.split('=', 1)[1]
  raise KeyError(name)

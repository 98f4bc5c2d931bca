"""The three SimCLRv2 stages as data: what each reads, trains and optimises.

| stage    | input                         | trains                                   | loss                        | weights from          |
|----------|-------------------------------|------------------------------------------|-----------------------------|-----------------------|
| pretrain | two augmented views           | backbone + projection head; linear-eval  | NT-Xent (+ linear-eval CE)  | scratch               |
|          |                               | head on stop_gradient                    |                             |                       |
| finetune | labeled subset, crop + flip   | blocks after fine_tune_after_block, head | CE                          | --checkpoint          |
|          |                               | layers up to ft_proj_selector, new head  |                             |                       |
| distill  | unlabeled (+ labeled, α < 1)  | the student                              | τ-softened CE vs teacher    | scratch or            |
|          |                               |                                          | (+ (1 − α) CE)              | --checkpoint          |
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
  """How a stage differs from the others.

  Attributes:
    name: the --train_mode value.
    views: augmented views per image in a training batch.
    augmentation: data.InputConfig.augmentation of the training input.
    objective: key of its loss in objectives.STAGE_OBJECTIVES.
    supervised_training: build_model's supervised_training.
    train_subset: data.InputConfig.subset of the training input.
    needs_initial_weights: must start from --checkpoint (or a resumable
      model_dir).
    freezes_blocks: honours --fine_tune_after_block.
    knn_monitor: its evaluation also reports the encoder's weighted kNN
      accuracy (label-free training: the representation is what it learns).
    memory_negatives: accepts --memory_size (SimCLRv2's memory of negatives,
      memory.py): its objective contrasts.
    needs_teacher: trains against --teacher_checkpoint's predictions on
      --unlabeled_split (and, with --distill_alpha < 1, the labeled batch).
    serves_features: its serving export returns the encoder's features
      (no supervised head is the product of the stage).
  """
  name: str
  views: int
  augmentation: str
  objective: str
  supervised_training: bool
  train_subset: str
  needs_initial_weights: bool
  freezes_blocks: bool
  knn_monitor: bool = False
  memory_negatives: bool = False
  needs_teacher: bool = False
  serves_features: bool = False


STAGES = {
    'pretrain': Stage('pretrain', views=2, augmentation='pretrain',
                      objective='contrastive', supervised_training=False,
                      train_subset='all', needs_initial_weights=False,
                      freezes_blocks=False, knn_monitor=True,
                      memory_negatives=True, serves_features=True),
    'finetune': Stage('finetune', views=1, augmentation='finetune',
                      objective='supervised', supervised_training=True,
                      train_subset='labeled', needs_initial_weights=True,
                      freezes_blocks=True),
    'distill': Stage('distill', views=1, augmentation='finetune',
                     objective='distill', supervised_training=True,
                     train_subset='all', needs_initial_weights=False,
                     freezes_blocks=False, needs_teacher=True),
}

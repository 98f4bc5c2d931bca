"""The SimCLR network: backbone + projection head + optional supervised head.

`build_model` is the public constructor; it takes run.py's flag names as keyword
arguments. The model's `call` returns a dict of named outputs that losses, eval
and export read by key (the key names are the reference's).
"""

import tensorflow as tf
import tf_keras

from tf_simclr import architecture
from tf_simclr import heads
from tf_simclr import resnet

# Keys of the output dict.
BACKBONE_KEYS = ('initial_conv', 'initial_max_pool', 'block_group1',
                 'block_group2', 'block_group3', 'block_group4',
                 'final_avg_pool')
PROJ_HEAD_INPUT = 'proj_head_input'
PROJ_HEAD_OUTPUT = 'proj_head_output'
LOGITS_SUP = 'logits_sup'


def proj_head_layer_key(index):
  return f'proj_head_layer_{index}'


class SimCLRModel(tf_keras.Model):
  """ResNet with a projection head and an optional supervised head.

  Args:
    backbone: a `resnet.Resnet`.
    projection_head: a `heads.ProjectionHead`.
    supervised_head: a `heads.SupervisedHead` or None.
    ft_proj_selector: projection-head layer feeding the supervised head
      (0 = backbone output; -1 = the last layer).
    fine_tune_after_block: -1 trains everything; k in 0..4 freezes the stem and
      block groups up to k (inference-mode BN, no gradient; 4 = the whole
      backbone). Frozen layers are also marked non-trainable.
    supervised_training: False (pretraining): the supervised head is a linear
      evaluation fed through stop_gradient and the whole projection head
      trains. True (finetune, distill): gradients flow from the supervised head
      into the network, and the projection-head layers after ft_proj_selector,
      which no loss reaches, are frozen (non-trainable, inference-mode BN).

  Example:
    >>> model = build_model(10, resnet_depth=18, width_multiplier=0.125,
    ...                     image_size=32)
    >>> outputs = model(tf.zeros([2, 32, 32, 3]), training=False)
    >>> outputs['proj_head_output'].shape, outputs['logits_sup'].shape
    (TensorShape([2, 128]), TensorShape([2, 10]))
  """

  def __init__(self, backbone, projection_head, supervised_head=None,
               ft_proj_selector=0, fine_tune_after_block=-1,
               supervised_training=False, **kwargs):
    super().__init__(**kwargs)
    self.resnet_model = backbone
    self._projection_head = projection_head
    if supervised_head is not None:
      self.supervised_head = supervised_head
    depth = projection_head.depth
    if not -1 <= ft_proj_selector <= depth:
      raise ValueError(f'ft_proj_selector must be in -1..{depth}, '
                       f'got {ft_proj_selector}')
    self.ft_proj_selector = depth if ft_proj_selector == -1 else ft_proj_selector
    if not -1 <= fine_tune_after_block <= 4:
      raise ValueError('fine_tune_after_block must be in -1..4, '
                       f'got {fine_tune_after_block}')
    self.fine_tune_after_block = fine_tune_after_block
    self.supervised_training = supervised_training
    self._freeze()

  @property
  def has_supervised_head(self):
    return getattr(self, 'supervised_head', None) is not None

  @property
  def frozen_parts(self):
    return self.fine_tune_after_block + 1

  @property
  def head_layers_in_use(self):
    """Projection-head layers that some loss trains."""
    if self.supervised_training:
      return self.ft_proj_selector
    return self._projection_head.depth

  def _freeze(self):
    """Marks frozen backbone parts and unused head layers non-trainable."""
    parts = ([self.resnet_model.initial_conv_relu_max_pool] +
             [[group] for group in self.resnet_model.block_groups])
    for part in parts[:self.frozen_parts]:
      for layer in part:
        layer.trainable = False
    for layer in self._projection_head.linear_layers[self.head_layers_in_use:]:
      layer.trainable = False

  def call(self, images, training=None):
    """images: float32 [N, H, W, 3] in [0, 1]. Returns a dict of outputs."""
    features = self.resnet_model(images, training=training,
                                 frozen_parts=self.frozen_parts)
    outputs = dict(features)
    hiddens = self._projection_head(features['final_avg_pool'],
                                    training=training,
                                    trainable_layers=self.head_layers_in_use)
    outputs[PROJ_HEAD_INPUT] = hiddens[0]
    for index, hidden in enumerate(hiddens):
      outputs[proj_head_layer_key(index)] = hidden
    outputs[PROJ_HEAD_OUTPUT] = hiddens[-1]
    if self.has_supervised_head:
      head_input = hiddens[self.ft_proj_selector]
      if not self.supervised_training:
        head_input = tf.stop_gradient(head_input)
      outputs[LOGITS_SUP] = self.supervised_head(head_input, training=training)
    # Mixed precision computes in half; every output leaves in float32.
    return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}

  def backbone_variables(self):
    return self.resnet_model.variables

  @property
  def projection_head(self):
    return self._projection_head

  def get_config(self):
    """{'model_config': the architecture record, 'options': how it trains};
    from_config rebuilds the same network (fresh weights)."""
    return {'model_config': self.model_config.to_dict(),
            'options': dict(self.build_options)}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    del custom_objects
    return build_model(
        architecture.ModelConfig.from_dict(config['model_config']),
        **config.get('options', {}))

  def supervised_head_variables(self):
    return self.supervised_head.variables if self.has_supervised_head else []


def build_model(num_classes=0, *, resnet_depth=50, width_multiplier=1.0,
                sk_ratio=0.0, se_ratio=0.0, image_size=224,
                proj_head_mode='nonlinear', num_proj_layers=3,
                proj_out_dim=128, ft_proj_selector=0, batch_norm_decay=0.9,
                global_bn=False, fine_tune_after_block=-1,
                supervised_training=False, zero_init_logits_layer=False,
                cifar_stem=None, build=True, part_policies=None,
                **unused_flags):
  """Builds a SimCLR model from run.py flag names, or from a ModelConfig.

  `build_model(model_config, **options)` with an architecture.ModelConfig
  takes every architecture field from it (options: global_bn,
  fine_tune_after_block, supervised_training, zero_init_logits_layer,
  cifar_stem, build). The model keeps its record as `model.model_config`.

  Args:
    num_classes: classes of the supervised head; 0 means no supervised head
      (or an architecture.ModelConfig).
    resnet_depth, width_multiplier, sk_ratio, se_ratio: the backbone.
    image_size: input size; <= 32 selects the CIFAR stem unless `cifar_stem`
      says otherwise.
    proj_head_mode, num_proj_layers, proj_out_dim: the projection head.
    ft_proj_selector: projection-head layer feeding the supervised head.
    batch_norm_decay, global_bn: batch normalisation.
    fine_tune_after_block: see SimCLRModel.
    supervised_training: see SimCLRModel (False: pretraining).
    zero_init_logits_layer: start the supervised head at zero.
    build: create the variables now by calling the model on zeros.
    part_policies: the backbone's per-part dtype policies (resnet.Resnet;
      precision.part_policies chooses them for a bfloat16 run on a CPU).
    **unused_flags: other run.py flags, accepted and ignored so a whole flag
      dict can be passed.

  Returns:
    A SimCLRModel whose call(images, training) returns the dict of outputs.
  """
  del unused_flags
  if isinstance(num_classes, architecture.ModelConfig):
    record = num_classes
    return build_model(record.num_classes, **record.build_kwargs(),
                       global_bn=global_bn,
                       fine_tune_after_block=fine_tune_after_block,
                       supervised_training=supervised_training,
                       zero_init_logits_layer=zero_init_logits_layer,
                       cifar_stem=cifar_stem, build=build,
                       part_policies=part_policies)
  if resnet_depth not in resnet.BLOCKS:
    raise ValueError(f'resnet_depth must be one of {tuple(resnet.BLOCKS)}, '
                     f'got {resnet_depth}')
  if cifar_stem is None:
    cifar_stem = architecture.uses_cifar_stem(image_size)
  backbone = resnet.Resnet(resnet_depth, width_multiplier,
                           cifar_stem=cifar_stem, sk_ratio=sk_ratio,
                           se_ratio=se_ratio,
                           batch_norm_decay=batch_norm_decay,
                           global_bn=global_bn, part_policies=part_policies)
  projection_head = heads.ProjectionHead(
      proj_head_mode, num_proj_layers, proj_out_dim,
      batch_norm_decay=batch_norm_decay, global_bn=global_bn)
  supervised_head = (heads.SupervisedHead(num_classes,
                                          zero_init=zero_init_logits_layer)
                     if num_classes else None)
  model = SimCLRModel(backbone, projection_head, supervised_head,
                      ft_proj_selector=ft_proj_selector,
                      fine_tune_after_block=fine_tune_after_block,
                      supervised_training=supervised_training)
  model.model_config = architecture.ModelConfig(
      resnet_depth=resnet_depth, width_multiplier=width_multiplier,
      sk_ratio=sk_ratio, se_ratio=se_ratio, image_size=image_size,
      proj_head_mode=proj_head_mode, num_proj_layers=num_proj_layers,
      proj_out_dim=proj_out_dim, ft_proj_selector=ft_proj_selector,
      batch_norm_decay=batch_norm_decay, num_classes=num_classes)
  model.build_options = dict(
      global_bn=global_bn, fine_tune_after_block=fine_tune_after_block,
      supervised_training=supervised_training,
      zero_init_logits_layer=zero_init_logits_layer, cifar_stem=cifar_stem)
  if build:
    model(tf.zeros([1, image_size, image_size, 3]), training=False)
  return model

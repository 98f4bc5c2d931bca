"""Projection head and supervised (classification) head.

Attribute names mirror google-research/simclr's object graph
(`_projection_head/linear_layers/j/{dense,bn_relu}`, `supervised_head/linear_layer/dense`)
so reference checkpoints restore as they are.
"""

import tensorflow as tf
import tf_keras

from tf_simclr import resnet


class LinearLayer(tf_keras.layers.Layer):
  """Dense layer, optionally followed by batch normalisation.

  With `use_bn` the dense layer has no bias and the BN's beta plays that role
  (`center=use_bias`).

  Args:
    units: output width; None means "same as the input width".
    use_bias: a bias (or BN beta when use_bn).
    use_bn: batch-normalise the output.
    batch_norm_decay: BN momentum.
    global_bn: synchronise BN statistics across replicas.
  """

  def __init__(self, units=None, use_bias=True, use_bn=False,
               batch_norm_decay=0.9, global_bn=False, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.use_bias = use_bias
    self.use_bn = use_bn
    self.dense = None
    self.bn_relu = (resnet.BatchNormRelu(relu=False, center=use_bias,
                                         decay=batch_norm_decay,
                                         synchronized=global_bn)
                    if use_bn else None)

  def build(self, input_shape):
    units = self.units or int(input_shape[-1])
    self.dense = tf_keras.layers.Dense(
        units,
        kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01),
        use_bias=self.use_bias and not self.use_bn)
    self.dense.build(input_shape)
    super().build(input_shape)

  def call(self, inputs, training=None):
    outputs = self.dense(inputs)
    if self.bn_relu is not None:
      outputs = self.bn_relu(outputs, training=training)
    return outputs


class ProjectionHead(tf_keras.layers.Layer):
  """SimCLR projection head.

  Modes: 'none' (identity, depth 0), 'linear' (one Dense+BN to out_dim, depth
  1), 'nonlinear' (`num_proj_layers` layers: the middle ones Dense+BN+ReLU at the
  input width, the last one Dense+BN without centring or ReLU to out_dim).

  `call` returns the list [layer_0, ..., layer_N] where layer_0 is the input.
  """

  def __init__(self, proj_head_mode='nonlinear', num_proj_layers=3,
               proj_out_dim=128, batch_norm_decay=0.9, global_bn=False,
               **kwargs):
    super().__init__(**kwargs)
    self.proj_head_mode = proj_head_mode
    self.num_proj_layers = num_proj_layers
    self.proj_out_dim = proj_out_dim
    self.batch_norm_decay = batch_norm_decay
    self.global_bn = global_bn
    bn = dict(use_bn=True, batch_norm_decay=batch_norm_decay,
              global_bn=global_bn)
    if proj_head_mode == 'none':
      layers = []
    elif proj_head_mode == 'linear':
      layers = [LinearLayer(proj_out_dim, use_bias=False, **bn)]
    elif proj_head_mode == 'nonlinear':
      layers = [LinearLayer(None, use_bias=True, **bn)
                for _ in range(num_proj_layers - 1)]
      layers.append(LinearLayer(proj_out_dim, use_bias=False, **bn))
    else:
      raise ValueError("proj_head_mode must be one of 'none', 'linear', "
                       f"'nonlinear', got {proj_head_mode!r}")
    self.linear_layers = layers

  @property
  def depth(self):
    return len(self.linear_layers)

  def get_config(self):
    return dict(super().get_config(), proj_head_mode=self.proj_head_mode,
                num_proj_layers=self.num_proj_layers,
                proj_out_dim=self.proj_out_dim,
                batch_norm_decay=self.batch_norm_decay,
                global_bn=self.global_bn)

  def call(self, inputs, training=None, trainable_layers=None):
    """inputs: [N, C]. trainable_layers: how many layers run in training mode
    (None: all); the others use their BN moving statistics."""
    hiddens = [inputs]
    for index, layer in enumerate(self.linear_layers):
      layer_training = training
      if trainable_layers is not None and index >= trainable_layers:
        layer_training = False
      outputs = layer(hiddens[-1], training=layer_training)
      if index != len(self.linear_layers) - 1:
        outputs = tf.nn.relu(outputs)
      hiddens.append(outputs)
    return hiddens


class SupervisedHead(tf_keras.layers.Layer):
  """Linear classifier (Dense with bias) producing `logits_sup`.

  Args:
    num_classes: number of classes.
    zero_init: start from zero kernel and bias instead of N(0, 0.01).
  """

  def __init__(self, num_classes, zero_init=False, **kwargs):
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.linear_layer = LinearLayer(num_classes, use_bias=True, use_bn=False)
    self.zero_init = zero_init

  def get_config(self):
    return dict(super().get_config(), num_classes=self.num_classes,
                zero_init=self.zero_init)

  def build(self, input_shape):
    self.linear_layer.build(input_shape)
    if self.zero_init:
      for variable in self.linear_layer.dense.weights:
        variable.assign(tf.zeros_like(variable))
    super().build(input_shape)

  def call(self, inputs, training=None):
    return self.linear_layer(inputs, training=training)

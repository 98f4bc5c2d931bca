"""ResNet backbone (post-activation), with selective kernels and squeeze-excitation.

Depths 18 and 34 use basic blocks, 50 to 200 bottleneck blocks. `sk_ratio > 0`
switches on selective-kernel 3x3 convolutions and, with them, ResNet-D (a stem of
three 3x3 convolutions; projection shortcuts average-pool before the 1x1 conv).
Images of 32 px or less get the CIFAR stem (3x3 stride 1, no max-pool).

The attribute names and list positions of every layer mirror the object graph of
google-research/simclr's tf2 code (`resnet_model/block_groups/i/layers/j/...`),
so its checkpoints and Google's released SimCLRv2 checkpoints restore into this
network with `tf.train.Checkpoint(model=...)` as they are. Layers without
variables that the reference keeps in those lists (its unused DropBlock,
identities, padding) stay here as `Identity` placeholders for that reason only.
"""

import contextlib

import tensorflow as tf
import tf_keras

BATCH_NORM_EPSILON = 1e-5
BLOCKS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
# Backbone parts in order; `frozen_parts` counts from the start of this tuple.
PART_NAMES = ('stem', 'block_group1', 'block_group2', 'block_group3',
              'block_group4')


def conv_initializer():
  return tf_keras.initializers.VarianceScaling()


class Identity(tf_keras.layers.Layer):
  """Passes its input through (a placeholder that keeps list positions)."""

  def call(self, inputs, training=None):
    return inputs


class BatchNormalization(tf_keras.layers.BatchNormalization):
  """Keras BN that uses the fused kernel in training only.

  Inference takes the unfused formula, which gives exactly the reference's
  outputs (the fused kernel differs by ~1e-5 relative through a deep SK
  network); training takes the faster fused kernel where Keras can use it
  (4-D inputs, not synchronised across replicas).

  The moving variance follows the batch variance without Bessel's correction
  on both paths, as the reference's (unfused, or synchronised) BN does. The
  fused kernel averages the n/(n - 1)-corrected variance, and tf_keras 2.20
  leaves it so unless `_bessels_correction_test_only` is False; then it
  removes the correction around the kernel (two per-channel multiplies).
  Without it one replica (fused) and several (synchronised BN) would keep
  different statistics, ~1e-4 relative after one step at n = 512.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._bessels_correction_test_only = False

  def call(self, inputs, training=None):
    if training is False and self.fused:
      self.fused = False
      try:
        return super().call(inputs, training=False)
      finally:
        self.fused = True
    return super().call(inputs, training=training)


class BatchNormRelu(tf_keras.layers.Layer):
  """Batch normalisation, optionally followed by ReLU.

  Args:
    relu: apply ReLU after normalising.
    init_zero: start with gamma = 0 (the last BN of a residual block).
    center: learn beta.
    decay: moving-average momentum of the statistics.
    synchronized: compute batch statistics across all replicas (global BN).
  """

  def __init__(self, relu=True, init_zero=False, center=True, decay=0.9,
               synchronized=False, **kwargs):
    super().__init__(**kwargs)
    self.relu = relu
    self.bn = BatchNormalization(
        momentum=decay,
        epsilon=BATCH_NORM_EPSILON,
        center=center,
        gamma_initializer='zeros' if init_zero else 'ones',
        synchronized=synchronized)

  def call(self, inputs, training=None):
    outputs = self.bn(inputs, training=training)
    return tf.nn.relu(outputs) if self.relu else outputs


class FixedPadding(tf_keras.layers.Layer):
  """Pads height and width so a strided convolution does not depend on size."""

  def __init__(self, kernel_size, **kwargs):
    super().__init__(**kwargs)
    self.kernel_size = kernel_size

  def call(self, inputs, training=None):
    total = self.kernel_size - 1
    begin, end = total // 2, total - total // 2
    return tf.pad(inputs, [[0, 0], [begin, end], [begin, end], [0, 0]])


# oneDNN's 1x1 backward-weights kernel (`jit_1x1`, used by TensorFlow's CPU
# build with oneDNN on) computes the weight gradient of a strided NHWC
# convolution wrong when the input has fewer channels than its channel block
# (8 with AVX2, 16 with AVX-512), and with AVX-512 corrupts the heap
# (uxlfoundation/oneDNN issue 6035). Projection shortcuts are such
# convolutions at widths below 0.25. Details: docs/serving.md.
ONEDNN_1X1_CHANNEL_BLOCK = 16


class StridedPointwiseConv2D(tf_keras.layers.Conv2D):
  """A 1x1 convolution with stride s > 1 and VALID padding.

  With fewer than ONEDNN_1X1_CHANNEL_BLOCK input channels it convolves
  `inputs[:, ::s, ::s, :]` with stride 1: the same convolution (same outputs,
  same gradients; the subsampling's gradient scatters back into place) that
  never reaches oneDNN's faulty strided 1x1 weight-gradient kernel, on every
  path, exports included. With more channels it is tf_keras's Conv2D as it
  is. The kernel variable and get_config() are those of the strided Conv2D.
  """

  def build(self, input_shape):
    super().build(input_shape)
    channels = tf.TensorShape(input_shape)[-1]
    self.subsamples_input = (channels is not None and
                             channels < ONEDNN_1X1_CHANNEL_BLOCK)

  def convolution_op(self, inputs, kernel):
    if not self.subsamples_input:
      return super().convolution_op(inputs, kernel)
    stride_h, stride_w = self.strides
    return tf.nn.convolution(inputs[:, ::stride_h, ::stride_w, :], kernel,
                             strides=1, padding='VALID',
                             data_format=self._tf_data_format)


class Conv2dFixedPadding(tf_keras.layers.Layer):
  """Convolution without bias; strided ones pad explicitly, then use VALID."""

  def __init__(self, filters, kernel_size, strides, **kwargs):
    super().__init__(**kwargs)
    self.fixed_padding = FixedPadding(kernel_size) if strides > 1 else None
    convolution = (StridedPointwiseConv2D if kernel_size == 1 and strides > 1
                   else tf_keras.layers.Conv2D)
    self.conv2d = convolution(
        filters=int(filters),
        kernel_size=kernel_size,
        strides=strides,
        padding='same' if strides == 1 else 'valid',
        use_bias=False,
        kernel_initializer=conv_initializer())

  def call(self, inputs, training=None):
    if self.fixed_padding is not None:
      inputs = self.fixed_padding(inputs)
    return self.conv2d(inputs)


class SelectiveKernelConv(tf_keras.layers.Layer):
  """Selective-kernel 3x3 convolution (arXiv 1903.06586), two branches.

  One 3x3 convolution to 2·filters channels is split into two branches; a
  global-pooled summary of their sum picks a softmax mixture of the two.
  """

  def __init__(self, filters, strides, sk_ratio, decay=0.9,
               synchronized=False, min_dim=32, **kwargs):
    super().__init__(**kwargs)
    bn = dict(decay=decay, synchronized=synchronized)
    self.conv2d_fixed_padding = Conv2dFixedPadding(2 * filters, 3, strides)
    self.batch_norm_relu = BatchNormRelu(**bn)
    self.conv2d_0 = tf_keras.layers.Conv2D(
        max(int(filters * sk_ratio), min_dim), 1, use_bias=False,
        kernel_initializer=conv_initializer())
    self.batch_norm_relu_1 = BatchNormRelu(**bn)
    self.conv2d_1 = tf_keras.layers.Conv2D(
        2 * int(filters), 1, use_bias=False,
        kernel_initializer=conv_initializer())

  def call(self, inputs, training=None):
    branches = self.conv2d_fixed_padding(inputs)
    branches = self.batch_norm_relu(branches, training=training)
    branches = tf.stack(tf.split(branches, 2, axis=-1))  # [2, N, H, W, C]
    summary = tf.reduce_mean(tf.reduce_sum(branches, axis=0), [1, 2],
                             keepdims=True)
    summary = self.batch_norm_relu_1(self.conv2d_0(summary), training=training)
    mixing = tf.stack(tf.split(self.conv2d_1(summary), 2, axis=-1))
    mixing = tf.nn.softmax(mixing, axis=0)
    return tf.reduce_sum(branches * mixing, axis=0)


class SqueezeExcitation(tf_keras.layers.Layer):
  """Squeeze-and-excitation gate (arXiv 1709.01507) on the channels."""

  def __init__(self, filters, se_ratio, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.se_ratio = se_ratio
    self.se_reduce = tf_keras.layers.Conv2D(
        max(1, int(filters * se_ratio)), 1, use_bias=True,
        kernel_initializer=conv_initializer())
    self.se_expand = None

  def build(self, input_shape):
    self.se_expand = tf_keras.layers.Conv2D(
        int(input_shape[-1]), 1, use_bias=True,
        kernel_initializer=conv_initializer())
    super().build(input_shape)

  def call(self, inputs, training=None):
    gate = tf.reduce_mean(inputs, [1, 2], keepdims=True)
    gate = self.se_expand(tf.nn.relu(self.se_reduce(gate)))
    return tf.sigmoid(gate) * inputs


def _shortcut_layers(filters_out, strides, resnet_d, bn):
  """Projection shortcut: [pad, avg-pool,] 1x1 conv, BN (no ReLU)."""
  layers = []
  if resnet_d:
    if strides > 1:
      layers.append(FixedPadding(2))
    layers.append(tf_keras.layers.AveragePooling2D(
        pool_size=2, strides=strides,
        padding='same' if strides == 1 else 'valid'))
    layers.append(Conv2dFixedPadding(filters_out, 1, 1))
  else:
    layers.append(Conv2dFixedPadding(filters_out, 1, strides))
  layers.append(BatchNormRelu(relu=False, **bn))
  return layers


class ResidualBlock(tf_keras.layers.Layer):
  """Basic block: two 3x3 convolutions (ResNet-18, -34)."""

  def __init__(self, filters, strides, use_projection=False, sk_ratio=0.0,
               se_ratio=0.0, decay=0.9, synchronized=False, **kwargs):
    super().__init__(**kwargs)
    bn = dict(decay=decay, synchronized=synchronized)
    self.shortcut_layers = (
        _shortcut_layers(filters, strides, sk_ratio > 0, bn)
        if use_projection else [])
    self.conv2d_bn_layers = [
        Conv2dFixedPadding(filters, 3, strides),
        BatchNormRelu(**bn),
        Conv2dFixedPadding(filters, 3, 1),
        BatchNormRelu(relu=False, init_zero=True, **bn),
    ]
    self.se_layer = (SqueezeExcitation(filters, se_ratio)
                     if se_ratio > 0 else None)

  def call(self, inputs, training=None):
    shortcut = inputs
    for layer in self.shortcut_layers:
      shortcut = layer(shortcut, training=training)
    for layer in self.conv2d_bn_layers:
      inputs = layer(inputs, training=training)
    if self.se_layer is not None:
      inputs = self.se_layer(inputs)
    return tf.nn.relu(inputs + shortcut)


class BottleneckBlock(tf_keras.layers.Layer):
  """Bottleneck block: 1x1, 3x3 (or selective kernel), 1x1 to 4·filters."""

  def __init__(self, filters, strides, use_projection=False, sk_ratio=0.0,
               se_ratio=0.0, decay=0.9, synchronized=False, **kwargs):
    super().__init__(**kwargs)
    bn = dict(decay=decay, synchronized=synchronized)
    self.projection_layers = (
        _shortcut_layers(4 * filters, strides, sk_ratio > 0, bn)
        if use_projection else [])
    layers = [Conv2dFixedPadding(filters, 1, 1), BatchNormRelu(**bn),
              Identity()]
    if sk_ratio > 0:
      layers.append(SelectiveKernelConv(filters, strides, sk_ratio, **bn))
    else:
      layers += [Conv2dFixedPadding(filters, 3, strides), BatchNormRelu(**bn)]
    layers += [Identity(),
               Conv2dFixedPadding(4 * filters, 1, 1),
               BatchNormRelu(relu=False, init_zero=True, **bn),
               Identity()]
    if se_ratio > 0:
      layers.append(SqueezeExcitation(filters, se_ratio))
    self.conv_relu_dropblock_layers = layers

  def call(self, inputs, training=None):
    shortcut = inputs
    for layer in self.projection_layers:
      shortcut = layer(shortcut, training=training)
    for layer in self.conv_relu_dropblock_layers:
      inputs = layer(inputs, training=training)
    return tf.nn.relu(inputs + shortcut)


class BlockGroup(tf_keras.layers.Layer):
  """A stage of blocks; the first one strides and projects the shortcut."""

  def __init__(self, filters, block_type, num_blocks, strides, **block_kwargs):
    name = block_kwargs.pop('name', None)
    super().__init__(name=name)
    block = BottleneckBlock if block_type == 'bottleneck' else ResidualBlock
    self.layers = [block(filters, strides, use_projection=True, **block_kwargs)]
    self.layers += [block(filters, 1, **block_kwargs)
                    for _ in range(1, num_blocks)]

  def call(self, inputs, training=None):
    for layer in self.layers:
      inputs = layer(inputs, training=training)
    return inputs


@contextlib.contextmanager
def policy_scope(policy):
  """Layers created inside compute in Keras dtype policy `policy` (a name;
  None: the global policy as it is)."""
  if policy is None:
    yield
    return
  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(policy)
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)


class Resnet(tf_keras.layers.Layer):
  """The backbone. `call` returns a dict of named intermediate outputs.

  Args:
    resnet_depth: one of 18, 34, 50, 101, 152, 200.
    width_multiplier: channel multiplier (float; 0.125 gives a CPU-sized net).
    cifar_stem: 3x3 stride-1 stem without max-pool (for images <= 32 px).
    sk_ratio: selective-kernel ratio; > 0 also turns on ResNet-D.
    se_ratio: squeeze-excitation ratio; 0 turns it off.
    batch_norm_decay: BN moving-average momentum.
    global_bn: synchronise BN statistics across replicas.
    part_policies: None, or one Keras dtype policy name (or None: the global
      policy) per part of PART_NAMES (the stem, then the 4 block groups):
      the policy that part's layers compute in, e.g. float32 for the narrow
      parts of a bfloat16 run where this CPU is slower in bfloat16
      (precision.py). Variables are float32 either way; not part of the
      architecture.

  Example:
    >>> net = Resnet(18, 0.125, cifar_stem=True)
    >>> net(tf.zeros([2, 32, 32, 3]))['final_avg_pool'].shape
    TensorShape([2, 64])
  """

  def __init__(self, resnet_depth, width_multiplier, cifar_stem=False,
               sk_ratio=0.0, se_ratio=0.0, batch_norm_decay=0.9,
               global_bn=False, part_policies=None, **kwargs):
    super().__init__(**kwargs)
    if resnet_depth not in BLOCKS:
      raise ValueError(f'resnet_depth must be one of {tuple(BLOCKS)}, '
                       f'got {resnet_depth}')
    self.resnet_depth = resnet_depth
    self.width_multiplier = width_multiplier
    self.cifar_stem = cifar_stem
    self.sk_ratio = sk_ratio
    self.se_ratio = se_ratio
    self.batch_norm_decay = batch_norm_decay
    self.global_bn = global_bn
    block_type, counts = BLOCKS[resnet_depth]
    bn = dict(decay=batch_norm_decay, synchronized=global_bn)
    width = 64 * width_multiplier
    policies = list(part_policies or [None] * len(PART_NAMES))
    if len(policies) != len(PART_NAMES):
      raise ValueError(f'part_policies needs {len(PART_NAMES)} entries '
                       f'({", ".join(PART_NAMES)}), got {len(policies)}')
    self.part_policies = tuple(policies)
    with policy_scope(policies[0]):
      self.initial_conv_relu_max_pool = self._stem(width, cifar_stem,
                                                   sk_ratio, bn)
    # Where the reference reads its 'initial_conv' and 'initial_max_pool'.
    stem = self.initial_conv_relu_max_pool
    self._initial_conv_index = len(stem) - (3 if cifar_stem else 4)
    self._initial_max_pool_index = len(stem) - 1

    self.block_groups = []
    for i in range(4):
      with policy_scope(policies[i + 1]):
        self.block_groups.append(BlockGroup(
            int(width * 2**i), block_type, counts[i],
            strides=1 if i == 0 else 2, sk_ratio=sk_ratio, se_ratio=se_ratio,
            name=f'block_group{i + 1}', **bn))

  @staticmethod
  def _stem(width, cifar_stem, sk_ratio, bn):
    if cifar_stem:
      return [Conv2dFixedPadding(width, 3, 1), Identity(), BatchNormRelu(**bn),
              Identity()]
    if sk_ratio > 0:
      stem = [Conv2dFixedPadding(width // 2, 3, 2), BatchNormRelu(**bn),
              Conv2dFixedPadding(width // 2, 3, 1), BatchNormRelu(**bn),
              Conv2dFixedPadding(width, 3, 1)]
    else:
      stem = [Conv2dFixedPadding(width, 7, 2)]
    return stem + [Identity(), BatchNormRelu(**bn),
                   tf_keras.layers.MaxPooling2D(3, 2, padding='same'),
                   Identity()]

  def get_config(self):
    return dict(super().get_config(), resnet_depth=self.resnet_depth,
                width_multiplier=self.width_multiplier,
                cifar_stem=self.cifar_stem, sk_ratio=self.sk_ratio,
                se_ratio=self.se_ratio, batch_norm_decay=self.batch_norm_decay,
                global_bn=self.global_bn)

  def call(self, inputs, training=None, frozen_parts=0):
    """Runs the backbone.

    Args:
      inputs: float [N, H, W, 3] in [0, 1].
      training: BN in training mode.
      frozen_parts: how many of PART_NAMES (stem, block groups) run in
        inference mode with no gradient flowing out of them.

    Returns:
      dict: initial_conv, initial_max_pool, block_group1..4 (feature maps) and
      final_avg_pool [N, C].
    """
    outputs = {}
    part_training = training if frozen_parts < 1 else False
    x = inputs
    for index, layer in enumerate(self.initial_conv_relu_max_pool):
      x = layer(x, training=part_training)
      if index == self._initial_conv_index:
        outputs['initial_conv'] = x
      if index == self._initial_max_pool_index:
        outputs['initial_max_pool'] = x
    for group_index, group in enumerate(self.block_groups):
      if frozen_parts == group_index + 1:
        x = tf.stop_gradient(x)
      part_training = training if frozen_parts < group_index + 2 else False
      x = group(x, training=part_training)
      outputs[f'block_group{group_index + 1}'] = x
    if frozen_parts >= len(PART_NAMES):
      x = tf.stop_gradient(x)
    outputs['final_avg_pool'] = tf.reduce_mean(x, [1, 2])
    return outputs

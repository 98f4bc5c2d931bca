"""What an export saves: an inference copy of the network wrapped in tf.functions.

Two kinds of objects are saved with `tf.saved_model.save`:

  hub module (one per projection-head depth k)
    __call__(images, training=False) -> the representation at depth k
        (k = 0: final_avg_pool), traced for training=False and training=True
        (batch statistics, moving averages updated);
    variables, trainable_variables, regularization_losses   (TF-Hub reusable
        SavedModel API; trainable: the backbone and head layers 1..k);
    signatures serving_default (image bytes) and serving_float, output
        'features'.
  serving model
    signatures serving_default (image bytes) and serving_float, returning
    logits / probabilities / top classes when the network has a supervised
    head and final_avg_pool / proj_head_output features after pretraining.

Both also carry `all_outputs(images)` (every named output, inference mode) and
the scalar variables `num_classes`, `image_size` and `step`.

The network saved is never the training model itself: `inference_copy` builds a
fresh float32 model without synchronized BN or frozen parts and copies the
weights, so an export of a model trained with global BN under a distribution
strategy loads and runs on one CPU, and every layer (BN included) has
gradients.
"""

import tensorflow as tf
import tf_keras

from tf_simclr import augment
from tf_simclr import model as model_lib
from tf_simclr import reference
from tf_simclr import stages

FLOAT_IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32, name='images')
IMAGE_BYTES = tf.TensorSpec([None], tf.string, name='image_bytes')
TOP_K = 5
# Pretrain serving output: representations, not class scores.
PRETRAIN_FEATURES = ('final_avg_pool', model_lib.PROJ_HEAD_OUTPUT)


def hub_output_key(depth):
  """Output dict key of the representation at projection-head depth k."""
  return 'final_avg_pool' if depth == 0 else model_lib.proj_head_layer_key(depth)


# ---------------------------------------------------------------- the network
def _local_value(variable):
  """The value of a (possibly distributed) variable, read on this worker only.

  Reading a sync-on-read variable (BN moving statistics under a strategy) in
  cross-replica context aggregates it over every worker with a collective,
  which hangs under MultiWorkerMirroredStrategy when only the chief exports.
  The components on this worker are aggregated here instead: the same value
  on one host, and with global BN (identical statistics on every replica).
  """
  components = getattr(variable, 'values', None)
  if not isinstance(components, (tuple, list)) or not components:
    return tf.convert_to_tensor(variable)
  values = [tf.convert_to_tensor(component) for component in components]
  if variable.synchronization == tf.VariableSynchronization.ON_READ:
    if variable.aggregation == tf.VariableAggregation.SUM:
      return tf.add_n(values)
    if variable.aggregation == tf.VariableAggregation.MEAN:
      return tf.add_n(values) / len(values)
  return values[0]


def inference_copy(model, image_size):
  """A fresh float32 SimCLRModel with `model`'s architecture and weights.

  The copy has no synchronized BN, no frozen parts (every layer trains when
  fine-tuned through a hub module) and lives outside any distribution
  strategy; `model` may hold mirrored or TPU variables and a mixed-precision
  policy.
  """
  policy = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy('float32')
  try:
    copy = model_lib.build_model(
        model.model_config.replace(image_size=image_size),
        cifar_stem=model.resnet_model.cifar_stem, global_bn=False,
        fine_tune_after_block=-1, supervised_training=False, build=True)
  finally:
    tf_keras.mixed_precision.set_global_policy(policy)
  source = reference.model_checkpoint_variables(model)
  target = reference.model_checkpoint_variables(copy)
  if source.keys() != target.keys():
    missing = sorted(set(target) ^ set(source))[:5]
    raise ValueError(f'cannot copy the model for export: variables differ '
                     f'({", ".join(missing)} ...)')
  for key, variable in target.items():
    value = _local_value(source[key])
    if value.shape != variable.shape:
      raise ValueError(f'cannot copy the model for export: {key} has shape '
                       f'{value.shape}, the copy {variable.shape}')
    variable.assign(tf.cast(value, variable.dtype))
  return copy


# ---------------------------------------------------------------- preprocessing
def decode_and_preprocess(image_bytes, image_size):
  """image_bytes: string [N] of JPEG/PNG/GIF/BMP files -> float32
  [N, image_size, image_size, 3] in [0, 1], the eval preprocessing
  (augment.preprocess_for_eval) applied to each image."""
  def one(contents):
    image = tf.io.decode_image(contents, channels=3, dtype=tf.float32,
                               expand_animations=False)
    return augment.preprocess_for_eval(image, image_size, image_size)
  return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec(
      [image_size, image_size, 3], tf.float32))


# ---------------------------------------------------------------- the objects
class _Exported(tf.__internal__.tracking.AutoTrackable):
  """Attributes shared by every exported object."""

  def __init__(self, network, all_outputs, *, step, image_size):
    super().__init__()
    self.variables = list(network.variables)
    self.all_outputs = all_outputs
    num_classes = (network.supervised_head.num_classes
                   if network.has_supervised_head else 0)
    self.num_classes = tf.Variable(num_classes, dtype=tf.int32,
                                   trainable=False, name='num_classes')
    self.image_size = tf.Variable(image_size, dtype=tf.int32, trainable=False,
                                  name='image_size')
    self.step = tf.Variable(step, dtype=tf.int64, trainable=False,
                            name='step')


def all_outputs_function(network):
  """tf.function images float32 [N, H, W, 3] in [0, 1] -> dict of every named
  output (inference mode). Traced once; shared by the objects of one export."""
  @tf.function(input_signature=[FLOAT_IMAGES])
  def all_outputs(images):
    return network(images, training=False)
  all_outputs.get_concrete_function()
  return all_outputs


def hub_module(network, all_outputs, depth, *, step, image_size):
  """The TF-Hub reusable SavedModel object for projection-head depth `depth`."""
  key = hub_output_key(depth)
  backbone = network.resnet_model
  head = network.projection_head
  obj = _Exported(network, all_outputs, step=step, image_size=image_size)
  obj.depth = tf.Variable(depth, dtype=tf.int32, trainable=False, name='depth')
  obj.trainable_variables = list(backbone.trainable_variables) + [
      variable for layer in head.linear_layers[:depth]
      for variable in layer.trainable_variables]
  obj.regularization_losses = []

  @tf.function
  def call(images, training=False):
    """images float32 [N, H, W, 3] in [0, 1] -> float32 [N, D_k]."""
    if not training:
      return all_outputs(images)[key]
    features = backbone(images, training=True)
    # Layers after `depth` stay in inference mode: their moving statistics
    # must not move while the layers before them are fine-tuned.
    hiddens = head(features['final_avg_pool'], training=True,
                   trainable_layers=depth)
    return hiddens[depth]

  for training in (False, True):
    call.get_concrete_function(FLOAT_IMAGES, training=training)
  obj.__call__ = call

  @tf.function(input_signature=[tf.TensorSpec(
      [None, image_size, image_size, 3], tf.float32, name='images')])
  def serve_float(images):
    return {'features': all_outputs(images)[key]}

  @tf.function(input_signature=[IMAGE_BYTES])
  def serve_bytes(image_bytes):
    return serve_float(decode_and_preprocess(image_bytes, image_size))

  obj.serve_float = serve_float
  obj.serve_bytes = serve_bytes
  return obj


def serving_model(network, all_outputs, *, step, image_size, train_mode,
                  class_names=None):
  """The TF Serving object (signatures serving_default and serving_float)."""
  obj = _Exported(network, all_outputs, step=step, image_size=image_size)
  num_classes = int(obj.num_classes.numpy())
  if class_names and num_classes and len(class_names) != num_classes:
    raise ValueError(f'class_names has {len(class_names)} names, the model '
                     f'{num_classes} classes')
  names = (tf.constant([str(name) for name in class_names])
           if class_names and num_classes else None)
  with_features = stages.STAGES[train_mode].serves_features or not num_classes
  top_k = min(TOP_K, num_classes)

  @tf.function(input_signature=[tf.TensorSpec(
      [None, image_size, image_size, 3], tf.float32, name='images')])
  def serve_float(images):
    outputs = all_outputs(images)
    result = {}
    if num_classes:
      logits = outputs[model_lib.LOGITS_SUP]
      probabilities = tf.nn.softmax(logits)
      top_probabilities, top_indices = tf.math.top_k(probabilities, top_k)
      result.update(logits=logits, probabilities=probabilities,
                    top_k_indices=top_indices,
                    top_k_probabilities=top_probabilities)
      if names is not None:
        result['top_k_names'] = tf.gather(names, top_indices)
    if with_features:
      result.update({key: outputs[key] for key in PRETRAIN_FEATURES})
    return result

  @tf.function(input_signature=[IMAGE_BYTES])
  def serve_bytes(image_bytes):
    return serve_float(decode_and_preprocess(image_bytes, image_size))

  obj.serve_float = serve_float
  obj.serve_bytes = serve_bytes
  if names is not None:
    obj.class_names = tf.Variable(names, trainable=False, name='class_names')
  return obj


def signatures(obj):
  """The SavedModel signatures of a hub module or serving model."""
  return {'serving_default': obj.serve_bytes.get_concrete_function(),
          'serving_float': obj.serve_float.get_concrete_function()}

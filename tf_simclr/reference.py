"""Loads google-research/simclr TF2 checkpoints and Google's released SimCLRv2 models.

Accepted paths: a checkpoint prefix written by the reference's
`tf.train.Checkpoint(model=model, ...)`, a directory holding such checkpoints
(the latest one, or the only `*.index` in it), or a released TF2 SavedModel
directory (its `variables/variables` is such a checkpoint). This project's own
checkpoints have the same `model/...` keys, so they load the same way.

The model built by `tf_simclr.build_model` mirrors the reference's object graph,
so every checkpoint key of a model variable is the key the reference writes.
Loading first compares the two key sets and shapes and raises
`ReferenceCheckpointError` listing every difference; only when nothing differs
are the values assigned.

Example:
  >>> info = describe_reference('r50_1x_sk1/saved_model')
  >>> model = build_model(**info)
  >>> load_reference_checkpoint(model, 'r50_1x_sk1/saved_model')
  ReferenceLoadSummary(prefix='r50_1x_sk1/saved_model/variables/variables', ...)
"""

import collections
import dataclasses
import logging
from typing import Optional, Tuple

import tensorflow as tf

from tf_simclr import checkpoints
from tf_simclr import resnet

# The object graph's key names (checkpoints owns them).
VALUE_SUFFIX = checkpoints.VALUE_SUFFIX
MODEL_PREFIX = 'model/'
SUPERVISED_HEAD_PREFIX = checkpoints.SUPERVISED_HEAD_PREFIX
GLOBAL_STEP_KEY = checkpoints.GLOBAL_STEP_KEY
# How many grouped entries each list of an error message shows.
MAX_LISTED = 12
# The paper's selective-kernel ratio; reported when the shapes allow it.
PAPER_SK_RATIO = 0.0625

_BACKBONE = 'model/resnet_model/'
_PROJECTION = 'model/_projection_head/linear_layers/'
_SUPERVISED_KERNEL = 'model/supervised_head/linear_layer/dense/kernel' + VALUE_SUFFIX


# A path that is not a checkpoint, or one the model does not match: the one
# error type of every checkpoint entry (this name is kept for callers).
ReferenceCheckpointError = checkpoints.CheckpointError


@dataclasses.dataclass(frozen=True)
class ReferenceLoadSummary:
  """What `load_reference_checkpoint` did.

  Attributes:
    prefix: the checkpoint prefix that was read.
    restored: number of model variables assigned.
    global_step: the checkpoint's global_step, or None when it has none.
    ignored: checkpoint variables left unused (optimizer slots, a supervised
      head the model lacks or skips, ...).
  """
  prefix: str
  restored: int
  global_step: Optional[int]
  ignored: Tuple[str, ...]


# ------------------------------------------------------------------- paths
def read_variable_shapes(prefix):
  """Returns {checkpoint key: shape tuple} of the `.../VARIABLE_VALUE` entries."""
  try:
    entries = tf.train.list_variables(prefix)
  except (tf.errors.OpError, ValueError) as error:
    raise ReferenceCheckpointError(
        f'cannot read checkpoint {prefix!r}: {error}') from None
  return {key: tuple(shape) for key, shape in entries
          if key.endswith(VALUE_SUFFIX)}


# ------------------------------------------------------------- model keys
def _escape(name):
  """Escapes a local name the way TF's saver does ('.' -> '..', '/' -> '.S')."""
  return name.replace('.', '..').replace('/', '.S')


def model_checkpoint_variables(model):
  """Returns {checkpoint key: variable} for `tf.train.Checkpoint(model=model)`.

  Walks the object graph breadth first from the checkpoint root, as TF's saver
  does, so a variable reachable by several paths gets the key the saver writes.
  Nothing is written or read. The model must be built (its variables exist).
  """
  root = tf.train.Checkpoint(model=model)
  keys = {}
  seen = {id(root)}
  queue = collections.deque([(root, '')])
  while queue:
    node, path = queue.popleft()
    for name, child in tf.train.TrackableView.children(node).items():
      if id(child) in seen:
        continue
      seen.add(id(child))
      child_path = f'{path}/{_escape(name)}' if path else _escape(name)
      if isinstance(child, tf.Variable):
        keys[child_path + VALUE_SUFFIX] = child
      else:
        queue.append((child, child_path))
  return keys


# ----------------------------------------------------------------- matching
def _strip(key):
  return key[:-len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key


# Listing order of path components: the network from input to output.
_ORDER = {'resnet_model': -5, 'initial_conv_relu_max_pool': -4,
          'block_groups': -3, '_projection_head': -2, 'supervised_head': -1}


def _natural(path):
  """Sort key: numbers as numbers, the network's parts in data-flow order."""
  return [(0, int(part), '') if part.isdigit() else
          (1, _ORDER.get(part, 0), part) for part in path.split('/')]


def _group(keys, universe):
  """Lists `keys` compactly: whole subtrees of `universe` as `path/*`, sibling
  subtrees as `path/{3..5}/*`, sibling leaves as `path/{beta, gamma}`."""
  keys = {_strip(key) for key in keys}
  if not keys:
    return []
  totals, counts = collections.Counter(), collections.Counter()
  for name, counter in ((_strip(key), totals) for key in universe):
    parts = name.split('/')
    for depth in range(1, len(parts)):
      counter['/'.join(parts[:depth])] += 1
  for name in keys:
    parts = name.split('/')
    for depth in range(1, len(parts)):
      counts['/'.join(parts[:depth])] += 1
  entries = set()
  for name in keys:
    parts = name.split('/')
    entry = name
    for depth in range(2, len(parts)):  # Never collapse to model/ itself.
      ancestor = '/'.join(parts[:depth])
      if counts[ancestor] == totals[ancestor]:
        entry = ancestor + '/*'
        break
    entries.add(entry)
  # Merge entries that differ in one path component, deepest component first:
  # .../bn/{beta, gamma}, .../layers/{0..2}/conv/*.
  paths = [tuple(entry.split('/')) for entry in sorted(entries, key=_natural)]
  for position in reversed(range(max(len(path) for path in paths))):
    groups = collections.OrderedDict()
    for path in paths:
      if len(path) <= position:
        key = (path, None)
      else:
        key = (path[:position], path[position + 1:])
      groups.setdefault(key, []).append(path)
    paths = []
    for (head, tail), members in groups.items():
      values = ([member[position] for member in members]
                if tail is not None else [])
      if len(members) == 1 or any('{' in value for value in values):
        paths.extend(members)
      else:
        paths.append(head + (_label(values),) + tail)
  return ['/'.join(path) for path in paths]


def _label(values):
  """'{3..5}' for consecutive numbers, else '{a, b}'."""
  if all(value.isdigit() for value in values):
    numbers = sorted(int(value) for value in values)
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
      return '{%d..%d}' % (numbers[0], numbers[-1])
    return '{' + ', '.join(map(str, numbers)) + '}'
  return '{' + ', '.join(sorted(values)) + '}'


def _listing(title, lines, count):
  if not lines:
    return []
  shown = [f'    {line}' for line in lines[:MAX_LISTED]]
  if len(lines) > MAX_LISTED:
    shown.append(f'    ... and {len(lines) - MAX_LISTED} more')
  return [f'  {title} ({count}):'] + shown


def _shape_string(shape):
  return '[' + ', '.join(str(dim) for dim in shape) + ']'


def _model_architecture(model):
  """A one-line description of the model's architecture (for error messages)."""
  backbone = getattr(model, 'resnet_model', None)
  if backbone is None:
    return type(model).__name__
  head = getattr(model, 'supervised_head', None)
  parts = [f'resnet_depth={backbone.resnet_depth}',
           f'width_multiplier={backbone.width_multiplier:g}',
           f'sk_ratio={backbone.sk_ratio:g}',
           f'se_ratio={backbone.se_ratio:g}',
           f'cifar_stem={backbone.cifar_stem}',
           f'num_classes={head.num_classes if head is not None else 0}']
  return ', '.join(parts)


def _describe_shapes_line(shapes):
  try:
    info = describe_shapes(shapes)
  except ReferenceCheckpointError:
    return None
  return ', '.join(f'{name}={value:g}' if isinstance(value, float) else
                   f'{name}={value}' for name, value in info.items()
                   if name != 'image_size')


def _is_model_key(key):
  return key.startswith(MODEL_PREFIX) and '/.OPTIMIZER_SLOT/' not in key


def match_checkpoint(model, prefix, skip_supervised_head=False):
  """Pairs the model's variables with the keys of checkpoint `prefix`.

  Assigns nothing. Returns (pairs, ignored): a list of (key, variable) and the
  checkpoint keys left unused. Raises ReferenceCheckpointError listing missing,
  unexpected and shape-mismatched variables when the model does not match.
  """
  shapes = read_variable_shapes(prefix)
  if not any(key.startswith(MODEL_PREFIX) for key in shapes):
    raise ReferenceCheckpointError(
        f'checkpoint {prefix!r} has no model/... variables: it was not written '
        'by tf.train.Checkpoint(model=...) of google-research/simclr tf2 or of '
        'tf_simclr')
  return match_shapes(model, shapes, skip_supervised_head,
                      source=f'reference checkpoint {prefix!r}')


def match_shapes(model, shapes, skip_supervised_head=False,
                 source='reference checkpoint'):
  """Like match_checkpoint, given the checkpoint's {key: shape} instead."""
  all_expected = model_checkpoint_variables(model)
  model_has_head = any(key.startswith(SUPERVISED_HEAD_PREFIX)
                       for key in all_expected)
  expected = {key: variable for key, variable in all_expected.items()
              if not (skip_supervised_head and
                      key.startswith(SUPERVISED_HEAD_PREFIX))}

  pairs, missing, mismatched = [], [], []
  for key, variable in expected.items():
    if key not in shapes:
      missing.append(key)
    elif tuple(variable.shape) != tuple(shapes[key]):
      mismatched.append(key)
    else:
      pairs.append((key, variable))
  unexpected, ignored = [], []
  for key in shapes:
    if key in expected:
      continue
    if not _is_model_key(key):
      ignored.append(key)  # global_step, optimizer, save_counter, slots.
    elif key.startswith(SUPERVISED_HEAD_PREFIX) and (
        skip_supervised_head or not model_has_head):
      ignored.append(key)
    else:
      unexpected.append(key)

  if missing or unexpected or mismatched:
    lines = [f'{source} does not match the model.',
             f'  model: {_model_architecture(model)}']
    checkpoint_line = _describe_shapes_line(shapes)
    if checkpoint_line:
      lines.append(f'  checkpoint looks like: {checkpoint_line}')
    lines += _listing('missing from the checkpoint', _group(missing, expected),
                      len(missing))
    lines += _listing('unexpected in the checkpoint',
                      _group(unexpected, shapes), len(unexpected))
    mismatch_lines = [
        f'{_strip(key)}: model {_shape_string(expected[key].shape)}, '
        f'checkpoint {_shape_string(shapes[key])}'
        for key in sorted(mismatched, key=_natural)]
    lines += _listing('shape mismatches', mismatch_lines, len(mismatched))
    if all(key.startswith(SUPERVISED_HEAD_PREFIX)
           for key in missing + unexpected + mismatched):
      lines.append('  (only the supervised head differs: pass '
                   'skip_supervised_head=True to load everything else)')
    raise ReferenceCheckpointError('\n'.join(lines))
  return pairs, ignored


# ------------------------------------------------------------------ loading
def load_reference_checkpoint(model, path, skip_supervised_head=False):
  """Loads a reference SimCLR TF2 checkpoint or released SavedModel into `model`.

  Args:
    model: a SimCLRModel from `tf_simclr.build_model` with the checkpoint's
      architecture. Built first (on 64 x 64 zeros) if it is not yet.
    path: a checkpoint prefix, a directory with checkpoints (the latest, or
      the only one) or a TF2 SavedModel directory.
    skip_supervised_head: load everything but the supervised head (finetuning
      to another class count); the model's head keeps its initial values.

  Returns:
    A ReferenceLoadSummary.

  Raises:
    ReferenceCheckpointError: no checkpoint at `path`, or one whose variables
      differ from the model's (the message lists them). Nothing is assigned
      then.
  """
  prefix = checkpoints.resolve_checkpoint(path)
  if not model.built:
    model(tf.zeros([1, 64, 64, 3]), training=False)
  pairs, ignored = match_checkpoint(model, prefix, skip_supervised_head)
  reader = tf.train.load_checkpoint(prefix)
  for key, variable in pairs:
    value = reader.get_tensor(key)
    variable.assign(tf.cast(value, variable.dtype))
  global_step = (int(reader.get_tensor(GLOBAL_STEP_KEY))
                 if reader.has_tensor(GLOBAL_STEP_KEY) else None)
  for key in ignored:
    logging.debug('reference checkpoint %s: not used by the model: %s',
                  prefix, key)
  logging.info('Restored %d variables from reference checkpoint %s '
               '(global_step %s, %d checkpoint variables unused).',
               len(pairs), prefix, global_step, len(ignored))
  return ReferenceLoadSummary(prefix=prefix, restored=len(pairs),
                              global_step=global_step,
                              ignored=tuple(sorted(ignored)))


# --------------------------------------------------------------- inference
def _key_index(key, prefix):
  """The integer right after `prefix` in `key`, or None."""
  if not key.startswith(prefix):
    return None
  head = key[len(prefix):].split('/', 1)[0]
  return int(head) if head.isdigit() else None


def describe_shapes(shapes):
  """Infers build_model arguments from {checkpoint key: shape}.

  See `describe_reference`; raises ReferenceCheckpointError when the keys are
  not those of a SimCLR ResNet.
  """
  backbone = {key[len(_BACKBONE):]: shape for key, shape in shapes.items()
              if key.startswith(_BACKBONE) and _is_model_key(key)}
  if not backbone:
    raise ReferenceCheckpointError(
        'no model/resnet_model/... variables: not a SimCLR checkpoint')

  def shape_of(local_key):
    return backbone.get(local_key + VALUE_SUFFIX)

  # Depth: blocks per group and block type.
  counts = [0, 0, 0, 0]
  for key in backbone:
    group = _key_index(key, 'block_groups/')
    if group is not None and group < 4:
      block = _key_index(key, f'block_groups/{group}/layers/')
      if block is not None:
        counts[group] = max(counts[group], block + 1)
  bottleneck = any('/conv_relu_dropblock_layers/' in key for key in backbone)
  block_type = 'bottleneck' if bottleneck else 'basic'
  depths = [depth for depth, (kind, blocks) in resnet.BLOCKS.items()
            if kind == block_type and list(blocks) == counts]
  if not depths:
    raise ReferenceCheckpointError(
        f'{block_type} blocks per group {counts} match no ResNet depth of '
        f'{tuple(resnet.BLOCKS)}')

  # Width: the first block's first convolution has 64·width filters.
  first_block = 'block_groups/0/layers/0/'
  first_conv = shape_of(first_block + (
      'conv_relu_dropblock_layers/0/conv2d/kernel' if bottleneck else
      'conv2d_bn_layers/0/conv2d/kernel'))
  if first_conv is None:
    raise ReferenceCheckpointError('cannot find the first block convolution')
  width_multiplier = first_conv[-1] / 64
  if width_multiplier == int(width_multiplier):
    width_multiplier = int(width_multiplier)

  # Stem: CIFAR (3x3 conv, BN at 2), standard (7x7), ResNet-D (three 3x3).
  stem_kernel = shape_of('initial_conv_relu_max_pool/0/conv2d/kernel')
  resnet_d_stem = shape_of('initial_conv_relu_max_pool/4/conv2d/kernel')
  cifar_stem = (stem_kernel is not None and stem_kernel[0] == 3 and
                resnet_d_stem is None)

  # Selective kernels / ResNet-D: the projection shortcut starts with a pool.
  shortcut = 'projection_layers' if bottleneck else 'shortcut_layers'
  resnet_d = shape_of(f'{first_block}{shortcut}/1/conv2d/kernel') is not None
  sk_ratio = 0.0
  if resnet_d or resnet_d_stem is not None:
    sk_ratio = PAPER_SK_RATIO
    if bottleneck:
      sk_ratio = _infer_sk_ratio(shape_of, first_conv[-1])

  # Squeeze-excitation: its reduce conv has max(1, int(filters·se_ratio)) outputs.
  se_ratio = 0.0
  last_group = 'block_groups/3/layers/0/'
  filters = int(first_conv[-1]) * 8
  se_keys = [key for key in backbone
             if key.startswith(last_group) and '/se_reduce/kernel' in key]
  if se_keys:
    se_ratio = backbone[se_keys[0]][-1] / filters

  # Heads.
  projection = collections.defaultdict(dict)
  for key, shape in shapes.items():
    index = _key_index(key, _PROJECTION)
    if index is not None and _is_model_key(key):
      projection[index][key] = shape
  num_proj_layers = len(projection)
  proj_out_dim = 128
  if num_proj_layers:
    last = f'{_PROJECTION}{num_proj_layers - 1}/dense/kernel{VALUE_SUFFIX}'
    proj_out_dim = int(shapes[last][-1])
  head_kernel = shapes.get(_SUPERVISED_KERNEL)
  num_classes = int(head_kernel[-1]) if head_kernel is not None else 0
  ft_proj_selector = 0
  if head_kernel is not None and num_proj_layers and (
      head_kernel[0] != filters * (4 if bottleneck else 1)):
    ft_proj_selector = num_proj_layers  # Fed by the last (narrower) layer.

  return dict(
      resnet_depth=depths[0],
      width_multiplier=width_multiplier,
      sk_ratio=sk_ratio,
      se_ratio=se_ratio,
      cifar_stem=cifar_stem,
      image_size=32 if cifar_stem else 224,
      proj_head_mode='nonlinear' if num_proj_layers else 'none',
      num_proj_layers=num_proj_layers,
      proj_out_dim=proj_out_dim,
      ft_proj_selector=ft_proj_selector,
      num_classes=num_classes,
  )


def _infer_sk_ratio(shape_of, first_filters):
  """The SK ratio from the SK convs' reduction widths max(int(f·r), 32)."""
  observed = []
  for group in range(4):
    filters = int(first_filters) * 2**group
    kernel = shape_of(f'block_groups/{group}/layers/0/'
                      'conv_relu_dropblock_layers/3/conv2d_0/kernel')
    if kernel is not None:
      observed.append((filters, int(kernel[-1])))
  if all(max(int(f * PAPER_SK_RATIO), 32) == dim for f, dim in observed):
    return PAPER_SK_RATIO
  unclamped = [(f, dim) for f, dim in observed if dim > 32]
  if unclamped:
    filters, dim = unclamped[-1]
    return dim / filters
  return PAPER_SK_RATIO


def describe_reference(path):
  """Infers the architecture of a reference checkpoint from its variables.

  Args:
    path: anything `load_reference_checkpoint` accepts.

  Returns:
    dict of `tf_simclr.build_model` keyword arguments: resnet_depth,
    width_multiplier, sk_ratio, se_ratio, cifar_stem, image_size (32 with the
    CIFAR stem, else 224), proj_head_mode, num_proj_layers, proj_out_dim,
    ft_proj_selector and num_classes (0 without a supervised head).
    `build_model(**describe_reference(path))` builds a model that loads it.

  Not recoverable from shapes, so reported by convention: sk_ratio when every
  SK reduction is clamped at 32 channels (the paper's 0.0625 then; any ratio
  giving the same shapes loads the same weights), ft_proj_selector 0 when the
  supervised head has the backbone's width, batch_norm_decay (not returned).
  """
  return describe_shapes(read_variable_shapes(
      checkpoints.resolve_checkpoint(path)))

"""SimCLR image augmentations: pure tf.image ops on one image.

Every function takes and returns one image, float32 [H, W, 3] in [0, 1], and
works eagerly and inside `tf.data.Dataset.map`. Parameters follow the paper and
google-research/simclr (tf2/data_util.py):

  random crop      area 0.08-1 of the image, aspect ratio 3/4-4/3 (log-uniform),
                   100 attempts, else a center crop; bicubic resize
  flip             left-right, p 0.5
  color jitter     strength s, p 0.8: brightness 0.8s, contrast 0.8s,
                   saturation 0.8s, hue 0.2s, in random order, clipped to
                   [0, 1] after each
  grayscale        p 0.2
  Gaussian blur    p 0.5, sigma uniform in [0.1, 2] pixels, kernel
                   image_size // 10 made odd, separable depthwise convolution
  eval             center crop of 0.875, bicubic resize (none at <= 32 px)

Randomness: every random function takes `seed`, either None (tf.random, no
seed: a fresh draw each call) or an int [2] tensor for the stateless
tf.random ops (the same seed gives the same output; used by the deterministic
input pipeline).

Difference from the reference: the reference blurs a whole batch inside the
model with one sigma shared by the batch (`batch_random_blur`); here each image
draws its own sigma, in the input pipeline (`random_blur`) or, with
`--blur_placement=device`, in the training step on the accelerator
(`batch_random_blur`, the same distribution).
"""

import math
from typing import Optional

import tensorflow as tf

CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3. / 4., 4. / 3.)
CROP_ATTEMPTS = 100
EVAL_CROP_PROPORTION = 0.875
COLOR_JITTER_PROBABILITY = 0.8
GRAYSCALE_PROBABILITY = 0.2
BLUR_PROBABILITY = 0.5
BLUR_SIGMA_RANGE = (0.1, 2.0)
SMALL_IMAGE_SIZE = 32  # At or below: CIFAR variant (no blur, no eval crop).
COLOR_JITTER_VERSIONS = ('simclrv1', 'simclrv2')


# ---------------------------------------------------------------- randomness
def _split_seed(seed: Optional[tf.Tensor], count: int):
  """`count` independent child seeds of `seed` (a list of None if None)."""
  if seed is None:
    return [None] * count
  children = tf.random.experimental.stateless_split(
      tf.cast(seed, tf.int64), num=count)
  return [children[i] for i in range(count)]


def _uniform(shape, minval, maxval, seed: Optional[tf.Tensor]) -> tf.Tensor:
  """float32 uniform in [minval, maxval), stateless when seed is given."""
  if seed is None:
    return tf.random.uniform(shape, minval, maxval, dtype=tf.float32)
  return tf.random.stateless_uniform(shape, seed, minval, maxval,
                                     dtype=tf.float32)


def _coin(probability: float, seed: Optional[tf.Tensor]) -> tf.Tensor:
  """Scalar bool, True with the given probability."""
  return _uniform([], 0., 1., seed) < probability


def _apply_with_probability(function, image, probability, seed):
  """function(image, seed) with the given probability, else image."""
  coin_seed, function_seed = _split_seed(seed, 2)
  return tf.cond(_coin(probability, coin_seed),
                 lambda: function(image, function_seed), lambda: image)


# ---------------------------------------------------------------- crops
def _resize_bicubic(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
  image = tf.image.resize(image, [height, width],
                          method=tf.image.ResizeMethod.BICUBIC)
  return tf.clip_by_value(image, 0., 1.)  # Bicubic overshoots.


def center_crop_box(image_height, image_width, aspect_ratio: float,
                    crop_proportion: float):
  """The centered box of the given aspect ratio (width / height) filling
  `crop_proportion` of the image along its limiting side.

  Returns (offset_y, offset_x, crop_height, crop_width), int32 scalars.
  """
  image_height = tf.cast(image_height, tf.float32)
  image_width = tf.cast(image_width, tf.float32)
  wider = image_width / image_height > aspect_ratio
  crop_height = tf.where(wider, image_height, image_width / aspect_ratio)
  crop_width = tf.where(wider, image_height * aspect_ratio, image_width)
  crop_height = tf.maximum(1, tf.cast(
      tf.round(crop_proportion * crop_height), tf.int32))
  crop_width = tf.maximum(1, tf.cast(
      tf.round(crop_proportion * crop_width), tf.int32))
  offset_y = (tf.cast(image_height, tf.int32) - crop_height + 1) // 2
  offset_x = (tf.cast(image_width, tf.int32) - crop_width + 1) // 2
  return offset_y, offset_x, crop_height, crop_width


def sample_crop_box(image_height, image_width,
                    area_range=CROP_AREA_RANGE,
                    aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
                    attempts: int = CROP_ATTEMPTS,
                    seed: Optional[tf.Tensor] = None):
  """A random box for RandomResizedCrop (Inception-style crop).

  Draws `attempts` candidates at once: area uniform in `area_range` (fraction
  of the image area), aspect ratio (width / height) log-uniform in
  `aspect_ratio_range`; keeps the first that fits in the image, at a uniform
  position. If none fits: the largest centered box whose aspect ratio is
  clipped into `aspect_ratio_range` (the whole image when its own ratio is in
  range).

  Returns (offset_y, offset_x, crop_height, crop_width), int32 scalars, pixels.
  """
  area_seed, ratio_seed, y_seed, x_seed = _split_seed(seed, 4)
  height = tf.cast(image_height, tf.float32)
  width = tf.cast(image_width, tf.float32)
  areas = _uniform([attempts], *area_range, area_seed) * height * width
  log_ratios = _uniform([attempts], math.log(aspect_ratio_range[0]),
                        math.log(aspect_ratio_range[1]), ratio_seed)
  ratios = tf.exp(log_ratios)
  crop_widths = tf.round(tf.sqrt(areas * ratios))
  crop_heights = tf.round(tf.sqrt(areas / ratios))
  fits = ((crop_widths <= width) & (crop_heights <= height) &
          (crop_widths >= 1) & (crop_heights >= 1))
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  found = tf.reduce_any(fits)

  def sampled():
    crop_height = tf.cast(crop_heights[first], tf.int32)
    crop_width = tf.cast(crop_widths[first], tf.int32)
    # Uniform integer offsets in [0, image - crop].
    offset_y = tf.cast(tf.floor(_uniform([], 0., 1., y_seed) * tf.cast(
        tf.cast(image_height, tf.int32) - crop_height + 1, tf.float32)),
                       tf.int32)
    offset_x = tf.cast(tf.floor(_uniform([], 0., 1., x_seed) * tf.cast(
        tf.cast(image_width, tf.int32) - crop_width + 1, tf.float32)),
                       tf.int32)
    return offset_y, offset_x, crop_height, crop_width

  def fallback():
    image_ratio = width / height
    ratio = tf.clip_by_value(image_ratio, *aspect_ratio_range)
    return center_crop_box(image_height, image_width, ratio, 1.0)

  return tf.cond(found, sampled, fallback)


def random_crop_with_resize(image: tf.Tensor, height: int, width: int,
                            seed: Optional[tf.Tensor] = None,
                            min_area: float = CROP_AREA_RANGE[0]) -> tf.Tensor:
  """Random area/aspect crop (`sample_crop_box`, area in [min_area, 1] of
  the image), bicubic resize.

  image: float32 [H, W, 3] in [0, 1] -> float32 [height, width, 3] in [0, 1].
  """
  shape = tf.shape(image)
  offset_y, offset_x, crop_height, crop_width = sample_crop_box(
      shape[0], shape[1], area_range=(min_area, CROP_AREA_RANGE[1]),
      seed=seed)
  image = tf.image.crop_to_bounding_box(image, offset_y, offset_x,
                                        crop_height, crop_width)
  return _resize_bicubic(image, height, width)


def center_crop(image: tf.Tensor, height: int, width: int,
                crop_proportion: float = EVAL_CROP_PROPORTION) -> tf.Tensor:
  """Centered crop of `crop_proportion` with the target aspect ratio, bicubic
  resize. image: float32 [H, W, 3] -> float32 [height, width, 3] in [0, 1]."""
  shape = tf.shape(image)
  offset_y, offset_x, crop_height, crop_width = center_crop_box(
      shape[0], shape[1], width / height, crop_proportion)
  image = tf.image.crop_to_bounding_box(image, offset_y, offset_x,
                                        crop_height, crop_width)
  return _resize_bicubic(image, height, width)


def random_flip(image: tf.Tensor, seed: Optional[tf.Tensor] = None):
  """Left-right flip with probability 0.5."""
  return tf.cond(_coin(0.5, seed), lambda: tf.image.flip_left_right(image),
                 lambda: image)


# ---------------------------------------------------------------- colour
def random_brightness(image: tf.Tensor, max_delta: float,
                      version: str = 'simclrv2',
                      seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """simclrv2: image * f, f uniform in [max(0, 1 - max_delta), 1 + max_delta];
  simclrv1: image + d, d uniform in [-max_delta, max_delta]. Clipped to [0, 1].
  """
  if version == 'simclrv2':
    factor = _uniform([], max(0., 1. - max_delta), 1. + max_delta, seed)
    image = image * factor
  elif version == 'simclrv1':
    image = image + _uniform([], -max_delta, max_delta, seed)
  else:
    raise ValueError(f'color_jitter_version must be one of '
                     f'{COLOR_JITTER_VERSIONS}, got {version!r}')
  return tf.clip_by_value(image, 0., 1.)


def random_contrast(image, max_delta: float, seed=None):
  """Contrast factor uniform in [max(0, 1 - max_delta), 1 + max_delta]."""
  factor = _uniform([], max(0., 1. - max_delta), 1. + max_delta, seed)
  return tf.clip_by_value(tf.image.adjust_contrast(image, factor), 0., 1.)


def random_saturation(image, max_delta: float, seed=None):
  """Saturation factor uniform in [max(0, 1 - max_delta), 1 + max_delta]."""
  factor = _uniform([], max(0., 1. - max_delta), 1. + max_delta, seed)
  return tf.clip_by_value(tf.image.adjust_saturation(image, factor), 0., 1.)


def random_hue(image, max_delta: float, seed=None):
  """Hue shift uniform in [-max_delta, max_delta] (fraction of the circle)."""
  max_delta = min(max_delta, 0.5)
  delta = _uniform([], -max_delta, max_delta, seed)
  return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0., 1.)


def color_jitter(image: tf.Tensor, strength: float,
                 version: str = 'simclrv2',
                 seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Brightness, contrast, saturation (0.8 * strength) and hue (0.2 *
  strength) in a random order, each clipped to [0, 1]. Always applied; see
  `random_color_jitter` for the p = 0.8 version."""
  order_seed, *op_seeds = _split_seed(seed, 5)
  ops = [
      lambda x, s: random_brightness(x, 0.8 * strength, version, s),
      lambda x, s: random_contrast(x, 0.8 * strength, s),
      lambda x, s: random_saturation(x, 0.8 * strength, s),
      lambda x, s: random_hue(x, 0.2 * strength, s),
  ]
  order = tf.argsort(_uniform([len(ops)], 0., 1., order_seed))
  for step in range(len(ops)):
    step_seed = op_seeds[step]
    branches = [(lambda op=op: op(image, step_seed)) for op in ops]
    image = tf.switch_case(order[step], branches)
  return image


def random_color_jitter(image, strength: float, version: str = 'simclrv2',
                        probability: float = COLOR_JITTER_PROBABILITY,
                        seed=None):
  """`color_jitter` with the given probability (0.8 in the paper)."""
  return _apply_with_probability(
      lambda x, s: color_jitter(x, strength, version, s), image, probability,
      seed)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma (ITU-R 601) repeated on 3 channels. [H, W, 3] -> [H, W, 3]."""
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def random_grayscale(image, probability: float = GRAYSCALE_PROBABILITY,
                     seed=None):
  """`to_grayscale` with the given probability (0.2 in the paper)."""
  return _apply_with_probability(lambda x, _: to_grayscale(x), image,
                                 probability, seed)


# ---------------------------------------------------------------- blur
def blur_kernel_size(image_size: int) -> int:
  """image_size // 10 made odd (radius = size // 20, size = 2 radius + 1)."""
  return (image_size // 10) // 2 * 2 + 1


def gaussian_kernel_1d(sigma, kernel_size: int) -> tf.Tensor:
  """float32 [kernel_size], exp(-x^2 / (2 sigma^2)) for x in -r..r, sum 1."""
  radius = kernel_size // 2
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  sigma = tf.cast(sigma, tf.float32)
  kernel = tf.exp(-tf.square(x) / (2. * tf.square(sigma)))
  return kernel / tf.reduce_sum(kernel)


def gaussian_blur(image: tf.Tensor, sigma, kernel_size: int) -> tf.Tensor:
  """Separable Gaussian blur (two depthwise convolutions, zero 'SAME'
  padding as in the reference). image: float32 [H, W, C]; sigma in pixels."""
  channels = tf.shape(image)[-1]
  kernel = gaussian_kernel_1d(sigma, kernel_size)
  vertical = tf.tile(tf.reshape(kernel, [kernel_size, 1, 1, 1]),
                     [1, 1, channels, 1])
  horizontal = tf.tile(tf.reshape(kernel, [1, kernel_size, 1, 1]),
                       [1, 1, channels, 1])
  batch = image[tf.newaxis]
  batch = tf.nn.depthwise_conv2d(batch, vertical, [1, 1, 1, 1], 'SAME')
  batch = tf.nn.depthwise_conv2d(batch, horizontal, [1, 1, 1, 1], 'SAME')
  return batch[0]


def random_blur(image, image_size: int,
                probability: float = BLUR_PROBABILITY, seed=None):
  """Gaussian blur with the given probability (0.5); sigma uniform in
  [0.1, 2] per image, kernel `blur_kernel_size(image_size)`."""
  kernel_size = blur_kernel_size(image_size)

  def blur(x, sigma_seed):
    sigma = _uniform([], *BLUR_SIGMA_RANGE, sigma_seed)
    return tf.clip_by_value(gaussian_blur(x, sigma, kernel_size), 0., 1.)

  return _apply_with_probability(blur, image, probability, seed)


def batch_gaussian_blur(images: tf.Tensor, sigma: tf.Tensor,
                        kernel_size: int) -> tf.Tensor:
  """`gaussian_blur` of every image of a batch with its own sigma, in one
  pair of depthwise convolutions: the N images are laid side by side on the
  channel axis, each channel with its own image's kernel.

  images: float32 [N, H, W, C]; sigma: float32 [N] in pixels.
  """
  shape = tf.shape(images)
  n, height, width, channels = shape[0], shape[1], shape[2], shape[3]
  radius = kernel_size // 2
  offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernels = tf.exp(-tf.square(offsets)[tf.newaxis] /
                   (2. * tf.square(sigma)[:, tf.newaxis]))
  kernels /= tf.reduce_sum(kernels, axis=1, keepdims=True)  # [N, k]
  # [k, N·C], image-major like the channel axis of `side_by_side`.
  kernels = tf.transpose(tf.repeat(kernels, channels, axis=0))
  side_by_side = tf.reshape(tf.transpose(images, [1, 2, 0, 3]),
                            [1, height, width, n * channels])
  out = tf.nn.depthwise_conv2d(
      side_by_side, tf.reshape(kernels, [kernel_size, 1, -1, 1]),
      [1, 1, 1, 1], 'SAME')
  out = tf.nn.depthwise_conv2d(
      out, tf.reshape(kernels, [1, kernel_size, -1, 1]), [1, 1, 1, 1], 'SAME')
  return tf.transpose(tf.reshape(out, [height, width, n, channels]),
                      [2, 0, 1, 3])


def blurs_in_training_step(augmentation, use_blur, image_size, placement,
                           on_accelerator):
  """True when pretraining's blur runs in the training step rather than in
  the input pipeline: --blur_placement=device, or auto on a GPU or TPU (and
  never at <= 32 px, where the paper does not blur)."""
  return (augmentation == 'pretrain' and use_blur and
          image_size > SMALL_IMAGE_SIZE and
          (placement == 'device' or (placement == 'auto' and on_accelerator)))


def batch_random_blur(images: tf.Tensor, image_size: int,
                      probability: float = BLUR_PROBABILITY,
                      seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """`random_blur` on every image of a batch at once, for the training step
  (`--blur_placement=device`): each image flips its own coin and draws its
  own sigma, as in the input pipeline, so both placements give views of the
  same distribution.

  images: [N, H, W, C] in [0, 1], any float dtype (computed in float32,
  returned in the input dtype). seed: None or an int [2] tensor (stateless
  draws).
  """
  x = tf.cast(images, tf.float32)
  n = tf.shape(x)[0]
  coin_seed, sigma_seed = _split_seed(seed, 2)
  chosen = _uniform([n], 0., 1., coin_seed) < probability
  sigma = _uniform([n], *BLUR_SIGMA_RANGE, sigma_seed)
  out = tf.clip_by_value(
      batch_gaussian_blur(x, sigma, blur_kernel_size(image_size)), 0., 1.)
  out = tf.where(chosen[:, tf.newaxis, tf.newaxis, tf.newaxis], out, x)
  return tf.cast(out, images.dtype)


# ---------------------------------------------------------------- composed
def _finish(image, height, width):
  image = tf.clip_by_value(tf.cast(image, tf.float32), 0., 1.)
  return tf.ensure_shape(image, [height, width, 3])


def preprocess_for_pretrain(image: tf.Tensor, height: int, width: int,
                            color_jitter_strength: float = 1.0,
                            color_jitter_version: str = 'simclrv2',
                            use_blur: bool = True,
                            seed: Optional[tf.Tensor] = None,
                            crop_min_area: float = CROP_AREA_RANGE[0]
                            ) -> tf.Tensor:
  """One contrastive view: crop (area crop_min_area to 1), flip, color
  jitter (p 0.8), grayscale (p 0.2), blur (p 0.5; never at <= 32 px, the
  CIFAR variant).

  image: float32 [H, W, 3] in [0, 1] -> float32 [height, width, 3] in [0, 1].
  """
  crop_seed, flip_seed, jitter_seed, gray_seed, blur_seed = _split_seed(seed, 5)
  image = random_crop_with_resize(image, height, width, crop_seed,
                                  crop_min_area)
  image = random_flip(image, flip_seed)
  if color_jitter_strength > 0:
    image = random_color_jitter(image, color_jitter_strength,
                                color_jitter_version, seed=jitter_seed)
  image = random_grayscale(image, seed=gray_seed)
  if use_blur and max(height, width) > SMALL_IMAGE_SIZE:
    image = random_blur(image, height, seed=blur_seed)
  return _finish(image, height, width)


def preprocess_for_finetune(image: tf.Tensor, height: int, width: int,
                            seed: Optional[tf.Tensor] = None,
                            crop_min_area: float = CROP_AREA_RANGE[0]
                            ) -> tf.Tensor:
  """Crop (area crop_min_area to 1) and flip (finetune and distill
  training).

  image: float32 [H, W, 3] in [0, 1] -> float32 [height, width, 3] in [0, 1].
  """
  crop_seed, flip_seed = _split_seed(seed, 2)
  image = random_crop_with_resize(image, height, width, crop_seed,
                                  crop_min_area)
  image = random_flip(image, flip_seed)
  return _finish(image, height, width)


def preprocess_for_eval(image: tf.Tensor, height: int,
                        width: int) -> tf.Tensor:
  """0.875 center crop and bicubic resize; at <= 32 px only a resize (a no-op
  for CIFAR). Deterministic.

  image: float32 [H, W, 3] in [0, 1] -> float32 [height, width, 3] in [0, 1].
  """
  if max(height, width) > SMALL_IMAGE_SIZE:
    image = center_crop(image, height, width)
  else:
    shape = tf.shape(image)
    image = tf.cond(
        tf.reduce_all(shape[:2] == [height, width]), lambda: image,
        lambda: _resize_bicubic(image, height, width))
  return _finish(image, height, width)

"""tf_simclr.augment against independent computations (NumPy, hand values,
statistics over many draws)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import augment

DRAWS = 2000


def _colourful_image(height=40, width=60, seed=0):
  """float32 [H, W, 3] in [0, 1], saturated and varied."""
  return tf.constant(np.random.RandomState(seed).uniform(
      0., 1., (height, width, 3)).astype(np.float32))


def _many(function, image, count=DRAWS, batch=250):
  """function(image) `count` times inside tf.data.map -> np [count, ...]."""
  dataset = (tf.data.Dataset.from_tensors(image).repeat(count)
             .map(function, num_parallel_calls=tf.data.AUTOTUNE)
             .batch(batch))
  return np.concatenate(list(dataset.as_numpy_iterator()))


OPS = {
    'crop': lambda x: augment.random_crop_with_resize(x, 24, 24),
    'center_crop': lambda x: augment.center_crop(x, 24, 24),
    'flip': augment.random_flip,
    'jitter_v2': lambda x: augment.random_color_jitter(x, 1.0, 'simclrv2'),
    'jitter_v1': lambda x: augment.random_color_jitter(x, 1.0, 'simclrv1'),
    'strong_jitter': lambda x: augment.color_jitter(x, 2.0),
    'grayscale': augment.random_grayscale,
    'blur': lambda x: augment.random_blur(x, 64, probability=1.0),
    'pretrain_64': lambda x: augment.preprocess_for_pretrain(x, 64, 64),
    'pretrain_32': lambda x: augment.preprocess_for_pretrain(
        x, 32, 32, 0.5, 'simclrv1'),
    'finetune': lambda x: augment.preprocess_for_finetune(x, 24, 24),
    'eval_224': lambda x: augment.preprocess_for_eval(x, 224, 224),
    'eval_32': lambda x: augment.preprocess_for_eval(x, 32, 32),
}
EXPECTED_SHAPES = {'crop': (24, 24, 3), 'center_crop': (24, 24, 3),
                   'pretrain_64': (64, 64, 3), 'pretrain_32': (32, 32, 3),
                   'finetune': (24, 24, 3), 'eval_224': (224, 224, 3),
                   'eval_32': (32, 32, 3)}


@pytest.mark.parametrize('name', sorted(OPS))
def test_shape_dtype_range_eager_and_in_dataset_map(name):
  image = _colourful_image()
  expected = EXPECTED_SHAPES.get(name, (40, 60, 3))
  eager = OPS[name](image)
  assert eager.dtype == tf.float32
  assert tuple(eager.shape) == expected
  mapped = _many(OPS[name], image, count=8, batch=8)
  assert mapped.shape == (8,) + expected
  for result in (eager.numpy(), mapped):
    assert result.min() >= 0. and result.max() <= 1.
    assert np.all(np.isfinite(result))


@pytest.mark.parametrize('min_area', [0.08, 0.5])
def test_crop_boxes_area_and_aspect_within_parameters(min_area):
  height, width = 200, 200
  boxes = _many(lambda _: tf.stack(augment.sample_crop_box(
      height, width, area_range=(min_area, 1.))), tf.zeros([]), count=DRAWS)
  offset_y, offset_x, crop_height, crop_width = boxes.T
  area = crop_height * crop_width / (height * width)
  aspect = crop_width / crop_height
  # Rounding to whole pixels moves the area and ratio by under a pixel.
  assert area.min() >= min_area * 0.97 and area.max() <= 1.
  assert aspect.min() >= 0.75 * 0.97 and aspect.max() <= 4. / 3. * 1.03
  # The whole range is used.
  assert area.min() < min_area + 0.02 and area.max() > 0.9
  assert np.all(offset_y >= 0) and np.all(offset_y + crop_height <= height)
  assert np.all(offset_x >= 0) and np.all(offset_x + crop_width <= width)
  # Log-uniform aspect: as many portrait as landscape crops.
  assert abs(np.mean(aspect > 1.) - np.mean(aspect < 1.)) < 0.07


def test_crop_falls_back_to_center_crop_when_nothing_fits():
  # In a 10x1000 image no box of area >= 8 % has aspect <= 4/3.
  box = [int(v) for v in augment.sample_crop_box(10, 1000)]
  assert box == [0, (1000 - 13 + 1) // 2, 10, 13]


def test_eval_center_crop_is_the_central_0875_at_224_and_identity_at_32():
  image = np.random.RandomState(1).uniform(0, 1, (256, 256, 3)).astype(
      np.float32)
  result = augment.preprocess_for_eval(tf.constant(image), 224, 224).numpy()
  np.testing.assert_allclose(result, image[16:240, 16:240], atol=1e-5)
  small = image[:32, :32]
  np.testing.assert_allclose(
      augment.preprocess_for_eval(tf.constant(small), 32, 32).numpy(), small,
      atol=1e-6)


def test_flip_probability_half():
  image = _colourful_image()
  results = _many(augment.random_flip, image)
  flipped = np.all(results == image.numpy()[:, ::-1], axis=(1, 2, 3))
  unchanged = np.all(results == image.numpy(), axis=(1, 2, 3))
  assert np.all(flipped | unchanged)
  assert abs(flipped.mean() - 0.5) < 0.04


@pytest.mark.parametrize('strength', [0.5, 1.0])
def test_simclrv2_brightness_factors_within_range(strength):
  grey = tf.fill([4, 4, 3], 0.5)
  results = _many(
      lambda x: augment.random_brightness(x, 0.8 * strength, 'simclrv2'), grey)
  factors = results[:, 0, 0, 0] / 0.5
  low, high = 1. - 0.8 * strength, 1. + 0.8 * strength
  assert factors.min() >= low - 1e-6 and factors.max() <= high + 1e-6
  assert factors.min() < low + 0.02 and factors.max() > high - 0.02
  # Uniform: mean at the centre, within 5 standard errors (a false alarm
  # once in ~3 million runs; 0.03 was 2.9 of them at strength 1).
  standard_error = (high - low) / np.sqrt(12 * len(factors))
  assert abs(factors.mean() - 1.) < 5 * standard_error
  # Multiplicative: every pixel scaled by the same factor.
  np.testing.assert_allclose(results, results[:, :1, :1, :1] *
                             np.ones_like(results), atol=1e-6)


def test_simclrv1_brightness_is_an_additive_delta():
  dark = tf.fill([4, 4, 3], 0.25)
  results = _many(lambda x: augment.random_brightness(x, 0.2, 'simclrv1'),
                  dark)
  deltas = results[:, 0, 0, 0] - 0.25
  assert deltas.min() >= -0.2 - 1e-6 and deltas.max() <= 0.2 + 1e-6
  assert deltas.min() < -0.18 and deltas.max() > 0.18
  with pytest.raises(ValueError, match='simclrv3'):
    augment.random_brightness(dark, 0.2, 'simclrv3')


def test_grayscale_fraction_is_0_2_and_uses_luma():
  image = _colourful_image(8, 8)
  results = _many(augment.random_grayscale, image)
  grey = np.all(results[..., :1] == results, axis=(1, 2, 3))
  assert abs(grey.mean() - 0.2) < 0.035  # 4 standard deviations.
  luma = image.numpy() @ np.array([0.2989, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(results[grey][0, ..., 0], luma, atol=2e-3)


def test_color_jitter_applied_with_probability_0_8():
  image = _colourful_image(8, 8)
  results = _many(lambda x: augment.random_color_jitter(x, 1.0), image,
                  count=1000)
  changed = np.any(np.abs(results - image.numpy()) > 1e-4, axis=(1, 2, 3))
  assert abs(changed.mean() - 0.8) < 0.05


def test_color_jitter_of_strength_zero_is_the_identity():
  image = _colourful_image(8, 8)
  # Factors 1 and hue shift 0 (HSV round trip: small error).
  np.testing.assert_allclose(augment.color_jitter(image, 0.0).numpy(),
                             image.numpy(), atol=2e-3)


def test_hue_and_saturation_keep_range():
  image = _colourful_image(8, 8)
  for op in (lambda x: augment.random_hue(x, 0.5),
             lambda x: augment.random_saturation(x, 2.0),
             lambda x: augment.random_contrast(x, 2.0)):
    results = _many(op, image, count=200)
    assert results.min() >= 0. and results.max() <= 1.


@pytest.mark.parametrize('image_size, kernel_size',
                         [(32, 3), (64, 7), (96, 9), (100, 11), (224, 23)])
def test_blur_kernel_size_is_a_tenth_made_odd(image_size, kernel_size):
  assert augment.blur_kernel_size(image_size) == kernel_size


@pytest.mark.parametrize('sigma', [0.1, 0.7, 2.0])
def test_blur_kernel_matches_numpy_gaussian(sigma):
  x = np.arange(-11, 12, dtype=np.float64)
  expected = np.exp(-x ** 2 / (2 * sigma ** 2))
  expected /= expected.sum()
  np.testing.assert_allclose(augment.gaussian_kernel_1d(sigma, 23).numpy(),
                             expected, atol=1e-6)


def test_blur_of_an_impulse_is_the_2d_gaussian_and_keeps_constants():
  sigma, size = 1.3, 9
  impulse = np.zeros((31, 31, 3), np.float32)
  impulse[15, 15] = 1.
  blurred = augment.gaussian_blur(tf.constant(impulse), sigma, size).numpy()
  x = np.arange(-4, 5)
  kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
  kernel /= kernel.sum()
  expected = np.zeros((31, 31))
  expected[11:20, 11:20] = np.outer(kernel, kernel)
  for channel in range(3):
    np.testing.assert_allclose(blurred[..., channel], expected, atol=1e-6)
  constant = augment.gaussian_blur(tf.fill([20, 20, 3], 0.6), sigma, size)
  np.testing.assert_allclose(constant.numpy()[4:-4, 4:-4], 0.6, atol=1e-6)


def test_blur_draws_a_sigma_per_image():
  """The blurred images are not all the same. (The probability and the
  sigma range: test_random_blur_distribution_in_pipeline_and_on_device; a
  blur of sigma near 0.1 changes no pixel, so counting changed images
  under-counts the coin.)"""
  image = _colourful_image(16, 16)
  results = _many(lambda x: augment.random_blur(x, 64), image, count=1000)
  blurred = np.any(np.abs(results - image.numpy()) > 1e-6, axis=(1, 2, 3))
  assert len({r.tobytes() for r in results[blurred]}) > 100


def test_stateless_seed_reproduces_and_differs():
  image = _colourful_image()
  seed = tf.constant([3, 4], tf.int64)
  first = augment.preprocess_for_pretrain(image, 64, 64, seed=seed)
  again = augment.preprocess_for_pretrain(image, 64, 64, seed=seed)
  other = augment.preprocess_for_pretrain(image, 64, 64,
                                          seed=tf.constant([3, 5], tf.int64))
  np.testing.assert_array_equal(first.numpy(), again.numpy())
  assert not np.array_equal(first.numpy(), other.numpy())


def test_no_blur_at_32_px_even_when_asked():
  image = _colourful_image()
  for index in range(20):
    seed = tf.constant([index, 0], tf.int64)
    with_blur = augment.preprocess_for_pretrain(image, 32, 32, use_blur=True,
                                                seed=seed)
    without = augment.preprocess_for_pretrain(image, 32, 32, use_blur=False,
                                              seed=seed)
    np.testing.assert_array_equal(with_blur.numpy(), without.numpy())


def test_finetune_is_crop_and_flip_only():
  """No colour change: a constant-colour image keeps its colour."""
  image = tf.ones([40, 60, 3]) * tf.constant([0.2, 0.5, 0.9])
  results = _many(lambda x: augment.preprocess_for_finetune(x, 24, 24), image,
                  count=50)
  np.testing.assert_allclose(results, np.broadcast_to(
      [0.2, 0.5, 0.9], results.shape), atol=1e-5)
  assert math.isclose(float(results.mean()), (0.2 + 0.5 + 0.9) / 3,
                      rel_tol=1e-4)


@pytest.mark.parametrize('preprocess', [
    lambda x, seed: augment.preprocess_for_finetune(
        x, 28, 28, seed=seed, crop_min_area=1.),
    lambda x, seed: augment.preprocess_for_pretrain(
        x, 28, 28, color_jitter_strength=0., seed=seed, crop_min_area=1.)])
def test_whole_image_crop_leaves_the_image_or_its_mirror(preprocess):
  """crop_min_area 1: every crop is the whole image (at its own size the
  resize is exact); only the flip (and, in a pretraining view, the
  grayscale coin) is left."""
  image = _colourful_image(28, 28, seed=3)
  mirror = image.numpy()[:, ::-1]
  grey = np.broadcast_to(
      (image.numpy() @ [0.2989, 0.587, 0.114])[..., None], (28, 28, 3))
  kinds = set()
  for index in range(40):
    view = preprocess(image, tf.constant([index, 7], tf.int64)).numpy()
    for kind, expected in (('same', image.numpy()), ('mirror', mirror),
                           ('grey', grey), ('grey mirror', grey[:, ::-1])):
      if np.allclose(view, expected, atol=2e-3):
        kinds.add(kind)
        break
    else:
      raise AssertionError(f'draw {index}: not the whole image')
  assert {'same', 'mirror'} <= kinds


# ---------------------------------------------------------------- blur on device
def _numpy_blur(image, sigma, kernel_size):
  """Separable Gaussian, zero padding, written with np.convolve."""
  radius = kernel_size // 2
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
  kernel /= kernel.sum()
  rows = np.apply_along_axis(lambda v: np.convolve(v, kernel, 'same'), 0,
                             image.astype(np.float64))
  return np.apply_along_axis(lambda v: np.convolve(v, kernel, 'same'), 1,
                             rows)


def test_batch_blur_is_each_images_own_gaussian():
  images = np.random.RandomState(1).uniform(0, 1, (4, 21, 17, 3))
  sigmas = np.array([0.1, 0.6, 1.2, 2.0])
  blurred = augment.batch_gaussian_blur(
      tf.constant(images, tf.float32), tf.constant(sigmas, tf.float32),
      7).numpy()
  for image, sigma, result in zip(images, sigmas, blurred):
    np.testing.assert_allclose(result, _numpy_blur(image, sigma, 7),
                               atol=1e-5)


def _impulse_centres(images):
  return images[:, 8, 8, 0]


def _expected_centre_cdf(values, kernel_size):
  """P(centre <= v) for an impulse blurred as the paper says: untouched
  (centre 1) with p 0.5, else a Gaussian of sigma ~ U[0.1, 2], whose centre
  is k0(sigma)^2 with k0 = 1 / sum_x exp(-x^2 / (2 sigma^2))."""
  radius = kernel_size // 2
  x = np.arange(-radius, radius + 1)
  sigma = np.linspace(*augment.BLUR_SIGMA_RANGE, 20001)
  centres = (1. / np.exp(-x[np.newaxis] ** 2 /
                         (2 * sigma[:, np.newaxis] ** 2)).sum(1)) ** 2
  return np.array([0.5 * (v >= 1) + 0.5 * np.mean(centres <= v)
                   for v in values])


@pytest.mark.parametrize('where', ['pipeline', 'device'])
def test_random_blur_distribution_in_pipeline_and_on_device(where):
  """Coin p 0.5 and sigma ~ U[0.1, 2] per image, in both placements: the
  centre of a blurred impulse follows the distribution that implies
  (Kolmogorov-Smirnov distance over 2000 draws)."""
  impulse = np.zeros((17, 17, 3), np.float32)
  impulse[8, 8] = 1.
  impulse = tf.constant(impulse)
  if where == 'pipeline':
    results = _many(lambda x: augment.random_blur(x, 64), impulse)
  else:
    results = augment.batch_random_blur(
        tf.repeat(impulse[tf.newaxis], DRAWS, axis=0), 64,
        seed=tf.constant([7, 8], tf.int64)).numpy()
  centres = _impulse_centres(results)
  grid = np.concatenate([np.linspace(0., 1., 401)[:-1], [1. - 1e-7, 1.]])
  empirical = np.array([np.mean(centres <= v) for v in grid])
  expected = _expected_centre_cdf(grid, augment.blur_kernel_size(64))
  assert np.max(np.abs(empirical - expected)) < 0.05


def test_batch_random_blur_keeps_dtype_and_is_seeded():
  images = tf.cast(tf.random.uniform([6, 40, 40, 3]), tf.bfloat16)
  seed = tf.constant([1, 2], tf.int64)
  first = augment.batch_random_blur(images, 64, seed=seed)
  assert first.dtype == tf.bfloat16
  np.testing.assert_array_equal(
      first.numpy(), augment.batch_random_blur(images, 64, seed=seed).numpy())
  assert not np.array_equal(first.numpy(), augment.batch_random_blur(
      images, 64, seed=tf.constant([1, 3], tf.int64)).numpy())

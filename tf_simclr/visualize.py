"""A PNG grid of images and their two SimCLR pretraining views.

One row per image: the original (resized to image_size), view 1, view 2.

  python -m tf_simclr.visualize --dataset=synthetic --output=grid.png
  python -m tf_simclr.visualize --dataset=image_folder --data_dir=ROOT \\
      --image_size=224 --num_images=6 --output=grid.png
"""

import argparse
import os
from typing import Optional, Union

import numpy as np
import tensorflow as tf

from tf_simclr import augment
from tf_simclr import data

_PADDING = 2  # White pixels between tiles.


def _originals_from_config(config: data.InputConfig, num_images: int):
  """The first num_images of the config's split, uint8 [N, S, S, 3] (the
  eval preprocessing: center crop above 32 px)."""
  eval_config = data.InputConfig(
      dataset=config.dataset, split=config.split,
      image_size=config.image_size, batch_size=num_images,
      augmentation='eval', is_training=False, data_dir=config.data_dir,
      skip_bad_images=config.skip_bad_images, deterministic=True)
  images, _ = next(iter(data.build_dataset(eval_config)))
  return tf.image.convert_image_dtype(images, tf.uint8, saturate=True)


def augmentation_grid(images, image_size: int,
                      color_jitter_strength: float = 1.0,
                      color_jitter_version: str = 'simclrv2',
                      use_blur: bool = True, seed: int = 0,
                      crop_min_area: float = augment.CROP_AREA_RANGE[0]
                      ) -> np.ndarray:
  """uint8 [N, H, W, 3] (or float in [0, 1]) -> the grid, uint8
  [N (S + p) + p, 3 (S + p) + p, 3], S = image_size, p = 2 white pixels."""
  images = tf.convert_to_tensor(images)
  if images.dtype != tf.uint8:
    images = tf.image.convert_image_dtype(
        tf.clip_by_value(tf.cast(images, tf.float32), 0., 1.), tf.uint8)
  size = image_size
  tile = size + _PADDING
  count = int(images.shape[0])
  grid = np.full((count * tile + _PADDING, 3 * tile + _PADDING, 3), 255,
                 np.uint8)
  for row in range(count):
    image = tf.image.convert_image_dtype(images[row], tf.float32)
    original = tf.image.resize(image, [size, size], method='bicubic')
    views = [augment.preprocess_for_pretrain(
        image, size, size, color_jitter_strength, color_jitter_version,
        use_blur, seed=tf.constant([seed, 2 * row + view], tf.int64),
        crop_min_area=crop_min_area)
             for view in range(2)]
    for column, tile_image in enumerate([original] + views):
      tile_uint8 = tf.image.convert_image_dtype(
          tf.clip_by_value(tile_image, 0., 1.), tf.uint8).numpy()
      top = _PADDING + row * tile
      left = _PADDING + column * tile
      grid[top:top + size, left:left + size] = tile_uint8
  return grid


def write_augmentation_grid(path: str,
                            images_or_config: Union[np.ndarray, tf.Tensor,
                                                    data.InputConfig],
                            num_images: int = 8,
                            image_size: Optional[int] = None,
                            color_jitter_strength: float = 1.0,
                            color_jitter_version: str = 'simclrv2',
                            use_blur: bool = True, seed: int = 0,
                            crop_min_area: float = augment.CROP_AREA_RANGE[0]
                            ) -> str:
  """Writes a PNG grid: per row an original and its two pretraining views.

  images_or_config: uint8 [N, H, W, 3] images, or a data.InputConfig whose
    first num_images examples are shown, with its image size, crop,
    colour-jitter and blur settings (the arguments here are then ignored).
  image_size: tile size in pixels; default the images' height.
  Returns path.
  """
  if isinstance(images_or_config, data.InputConfig):
    config = images_or_config
    images = _originals_from_config(config, num_images)
    image_size = config.image_size
    color_jitter_strength = config.color_jitter_strength
    color_jitter_version = config.color_jitter_version
    use_blur = config.use_blur
    crop_min_area = config.crop_min_area
  else:
    images = tf.convert_to_tensor(images_or_config)[:num_images]
    image_size = image_size or int(images.shape[1])
  grid = augmentation_grid(images, image_size, color_jitter_strength,
                           color_jitter_version, use_blur, seed,
                           crop_min_area)
  if os.path.dirname(path):
    tf.io.gfile.makedirs(os.path.dirname(path))
  tf.io.write_file(path, tf.io.encode_png(grid))
  return path


def write_augmentation_grid_for_dataset(
    path: str, dataset: str, data_dir: Optional[str] = None,
    split: str = 'train', image_size: int = 32, num_images: int = 8,
    color_jitter_strength: float = 1.0, color_jitter_version: str = 'simclrv2',
    use_blur: bool = True, seed: int = 0,
    crop_min_area: float = augment.CROP_AREA_RANGE[0]) -> str:
  """`write_augmentation_grid` for the first num_images of a dataset split
  (what run.py --show_augmentations calls). Returns path."""
  config = data.InputConfig(
      dataset=dataset, split=split, image_size=image_size,
      batch_size=num_images, augmentation='pretrain', is_training=False,
      data_dir=data_dir, color_jitter_strength=color_jitter_strength,
      color_jitter_version=color_jitter_version, use_blur=use_blur,
      crop_min_area=crop_min_area)
  return write_augmentation_grid(path, config, num_images=num_images,
                                 seed=seed)


def write_training_views(writer, input_config: data.InputConfig, views: int,
                         blur_size: Optional[int] = None, count: int = 3):
  """A few training views of `input_config` into TensorBoard (the first
  images of a batch, each view as its own image summary); `blur_size`: the
  training step blurs them on the device at that size (shown blurred)."""
  sample = input_config.replace(batch_size=count, cache=False)
  images, _ = next(iter(data.build_dataset(sample)))
  splits = tf.split(images, views, axis=-1)
  if blur_size:  # What the training step will see.
    splits = [augment.batch_random_blur(view, blur_size) for view in splits]
  with writer.as_default(step=0):
    for index, view in enumerate(splits):
      tf.summary.image(f'augmented_view_{index + 1}', view, max_outputs=count)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', default='synthetic')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--split', default='train')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--num_images', type=int, default=8)
  parser.add_argument('--color_jitter_strength', type=float, default=1.0)
  parser.add_argument('--color_jitter_version', default='simclrv2',
                      choices=augment.COLOR_JITTER_VERSIONS)
  parser.add_argument('--use_blur', default=True,
                      type=lambda v: v.lower() in ('1', 'true', 'yes'))
  parser.add_argument('--crop_min_area', type=float,
                      default=augment.CROP_AREA_RANGE[0])
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--output', required=True, help='PNG path to write')
  args = parser.parse_args(argv)
  try:
    path = write_augmentation_grid_for_dataset(
        args.output, args.dataset, args.data_dir, args.split, args.image_size,
        args.num_images, args.color_jitter_strength, args.color_jitter_version,
        args.use_blur, args.seed, args.crop_min_area)
  except data.DataError as error:
    parser.exit(2, f'error: {error}\n')
  print(f'wrote {path}')


if __name__ == '__main__':
  main()

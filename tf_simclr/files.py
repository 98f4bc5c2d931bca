"""File-system access without TensorFlow for local paths.

Local paths go through os, so that run.py's checks before TensorFlow loads
(flags, paths, checkpoints, config.json) answer in about a second; URLs
(gs://..., s3://...) go through tf.io.gfile, imported only then.
"""

import fnmatch
import os


def is_url(path: str) -> bool:
  return '://' in path


def _gfile():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.io.gfile


def exists(path: str) -> bool:
  return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def read_text(path: str) -> str:
  if is_url(path):
    with _gfile().GFile(path) as f:
      return f.read()
  with open(path) as f:
    return f.read()


def size(path: str) -> int:
  return _gfile().stat(path).length if is_url(path) else os.path.getsize(path)


def glob(directory: str, pattern: str) -> list:
  """Paths of the entries of `directory` whose names match `pattern`
  (fnmatch; no recursion), sorted."""
  if is_url(directory):
    return sorted(_gfile().glob(os.path.join(directory, pattern)))
  if not os.path.isdir(directory):
    return []
  return sorted(os.path.join(directory, name)
                for name in fnmatch.filter(os.listdir(directory), pattern))

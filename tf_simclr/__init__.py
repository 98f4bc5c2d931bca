"""tf_simclr: SimCLRv2 for TensorFlow 2 / tf_keras.

The public names load on first use, so `import tf_simclr.config` (run.py's flag
checks) answers without importing TensorFlow.
"""

import importlib

__version__ = '0.1.0'

_PUBLIC = {
    'build_model': 'tf_simclr.model',
    'SimCLRModel': 'tf_simclr.model',
    'describe_reference': 'tf_simclr.reference',
    'load_reference_checkpoint': 'tf_simclr.reference',
    'ReferenceCheckpointError': 'tf_simclr.reference',
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  # Submodules (tf_simclr.data, ...) as attributes after `import tf_simclr`.
  try:
    return importlib.import_module(f'{__name__}.{name}')
  except ModuleNotFoundError:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}'
                         ) from None

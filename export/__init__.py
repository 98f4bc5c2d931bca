"""The checkout's name for tf_simclr.export, so that `python -m export` and
`import export` keep working from the repository root. Not installed with the
package: installed code imports tf_simclr.export, and the command line is
`tf-simclr-export`.
"""

from tf_simclr import export as _package

__all__ = list(_package.__all__)


def __getattr__(name):
  # Public names and submodules (`from export import exporter`) of the package.
  if name.startswith('__'):
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  try:
    return getattr(_package, name)
  except AttributeError:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}'
                         ) from None

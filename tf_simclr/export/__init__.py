"""Exports SimCLR models: TF-Hub modules at every projection-head depth and a
TF Serving SavedModel.

  export_dir/hub/proj_head_<k>/   k = 0..N, TF-Hub reusable SavedModels
                                  (k = 0: final_avg_pool), the latest export
  export_dir/saved_model/<step>/  TF Serving versions (at most keep_max)

Example:
  >>> from tf_simclr import export
  >>> paths = export.export_model(model, '/tmp/export', image_size=224,
  ...                             step=1000, train_mode='finetune',
  ...                             class_names=names)
  >>> paths['saved_model'], paths['hub'][2]
  ('/tmp/export/saved_model/1000', '/tmp/export/hub/proj_head_2')

Command line (any stage's model_dir): `tf-simclr-export --model_dir=DIR
--export_dir=OUT` (in a checkout: `python -m export ...`; the code is
tf_simclr/export/cli.py). Serving and transfer learning: docs/serving.md.

The names below load on first use, so the command line can quiet
TensorFlow's logging before TensorFlow is imported.
"""

import importlib

_PUBLIC = ('ExportError', 'export_model', 'export_from_model_dir',
           'hub_module_dir', 'saved_model_versions')
__all__ = list(_PUBLIC)


def __getattr__(name):
  if name in _PUBLIC:
    from tf_simclr.export import exporter  # pylint: disable=import-outside-toplevel
    return getattr(exporter, name)
  # Submodules (exporter, modules, cli) as attributes.
  try:
    return importlib.import_module(f'{__name__}.{name}')
  except ModuleNotFoundError:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}'
                         ) from None

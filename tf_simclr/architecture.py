"""The architecture record: every setting that decides a SimCLR network's
variables, in one place.

run.py's flags fill it (config.Config inherits its fields;
Config.model_config() is the record), model_dir/config.json
stores it, build_model builds from it, SimCLRModel.get_config returns it, and
the exporter, the teacher, the reference converter and the shape inference
read or produce it. Adding a model setting is a field here, its flag in
run.py, and its use in the layer it changes (build_model passes it on).

Imports no TensorFlow (run.py checks a saved architecture before TF loads).
"""

import dataclasses
from typing import ClassVar

# Images this small get the CIFAR stem (3x3 stride-1 conv, no max-pool).
CIFAR_STEM_MAX_SIZE = 32


def uses_cifar_stem(image_size: int) -> bool:
  """The stem rule: CIFAR's for images <= 32 px, ImageNet's above."""
  return int(image_size) <= CIFAR_STEM_MAX_SIZE


@dataclasses.dataclass
class ModelConfig:
  """A SimCLR network: backbone, projection head, supervised head.

  Field names are run.py's flag names; num_classes 0 means no supervised
  head. The stem follows from image_size (uses_cifar_stem). config.Config
  inherits these fields: they are declared here only.
  """
  resnet_depth: int = 50
  width_multiplier: float = 1.0
  sk_ratio: float = 0.0
  se_ratio: float = 0.0
  image_size: int = 224
  proj_head_mode: str = 'nonlinear'
  num_proj_layers: int = 3
  proj_out_dim: int = 128
  ft_proj_selector: int = 0
  batch_norm_decay: float = 0.9
  num_classes: int = 0

  # The fields that decide the backbone's variables (a --checkpoint must
  # match them; the heads may differ).
  BACKBONE_FIELDS: ClassVar[tuple] = ('resnet_depth', 'width_multiplier',
                                      'sk_ratio', 'se_ratio')

  @property
  def cifar_stem(self) -> bool:
    return uses_cifar_stem(self.image_size)

  def to_dict(self) -> dict:
    return {field.name: getattr(self, field.name)
            for field in dataclasses.fields(ModelConfig)}

  @classmethod
  def from_dict(cls, values: dict) -> 'ModelConfig':
    """From a dict holding (at least some of) the fields, e.g. config.json;
    other keys (train_mode, class_names, ...) are ignored, values are
    converted to the fields' types."""
    kwargs = {}
    for field in dataclasses.fields(ModelConfig):
      if field.name in values and values[field.name] is not None:
        kind = {'int': int, 'float': float, 'str': str}[
            field.type if isinstance(field.type, str) else field.type.__name__]
        kwargs[field.name] = kind(values[field.name])
    return ModelConfig(**kwargs)

  @classmethod
  def of(cls, source, **changes) -> 'ModelConfig':
    """The fields read off any object that has them as attributes (a
    config.Config), then `changes`."""
    values = {field.name: getattr(source, field.name)
              for field in dataclasses.fields(ModelConfig)}
    values.update(changes)
    return cls.from_dict(values)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  def build_kwargs(self) -> dict:
    """build_model's keyword arguments (all but num_classes)."""
    kwargs = self.to_dict()
    del kwargs['num_classes']
    return kwargs


FIELDS = tuple(field.name for field in dataclasses.fields(ModelConfig))

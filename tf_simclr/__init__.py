"""tf_simclr: SimCLRv2 for TensorFlow 2 / tf_keras."""

from tf_simclr.model import build_model
from tf_simclr.model import SimCLRModel

__version__ = '0.1.0'

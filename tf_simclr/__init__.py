"""tf_simclr: SimCLRv2 for TensorFlow 2 / tf_keras."""

from tf_simclr.model import build_model
from tf_simclr.model import SimCLRModel
from tf_simclr.reference import describe_reference
from tf_simclr.reference import load_reference_checkpoint
from tf_simclr.reference import ReferenceCheckpointError

__version__ = '0.1.0'

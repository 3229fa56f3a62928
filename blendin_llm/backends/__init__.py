from .base import ModelBackend, SequenceState
from .transformers import TransformersBackend

__all__ = ["ModelBackend", "SequenceState", "TransformersBackend"]

"""Learned-model experiments: length generalization on synthetic blob scenes and composition of
learned vector models against the exact composition (Bradley et al., 2025, Sec. 5.2)."""

from . import blobs
from .length_generalization import LengthGenConfig, run_length_generalization

__all__ = ["LengthGenConfig", "blobs", "run_length_generalization"]

"""Linearizer models: invertible networks, linear cores and `LinearizerModel`."""

from .cores import CORE_TYPES, DenseCore, LinearCore, LowRankCore, SharedBasisCore, TimeLowRankCore, build_core
from .modeling_linearizer import LinearizerModel, LinearizerModelOutput, LinearizerSVDOutput

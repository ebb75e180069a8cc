"""Linearizer models: invertible networks, linear cores and `LinearizerModel`."""

from .core_registry import CORES, CoreSpec, build_core_from_config
from .cores import DenseCore, LinearCore, LowRankCore, SharedBasisCore, TimeLowRankCore
from .modeling_linearizer import LinearizerModel, LinearizerModelOutput, LinearizerSVDOutput

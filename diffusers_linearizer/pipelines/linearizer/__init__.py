"""The Linearizer pipelines: one-step generation and exact inversion."""

from .pipeline_linearizer import LinearizerPipeline, LinearizerPipelineMixin
from .pipeline_linearizer_inversion import LinearizerInversionPipeline
from .pipeline_output import LinearizerInterpolationOutput, LinearizerInversionPipelineOutput

__all__ = [
    "LinearizerPipeline",
    "LinearizerInversionPipeline",
    "LinearizerPipelineMixin",
    "LinearizerInversionPipelineOutput",
    "LinearizerInterpolationOutput",
]

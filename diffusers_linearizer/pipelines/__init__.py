"""diffusers pipelines of the Linearizer."""

from .linearizer import (
    LinearizerInterpolationOutput,
    LinearizerInversionPipeline,
    LinearizerInversionPipelineOutput,
    LinearizerPipeline,
)

__all__ = [
    "LinearizerPipeline",
    "LinearizerInversionPipeline",
    "LinearizerInversionPipelineOutput",
    "LinearizerInterpolationOutput",
]

"""diffusers pipelines of the Linearizer."""

from .linearizer import (
    LinearizerInterpolationOutput,
    LinearizerInversionPipeline,
    LinearizerInversionPipelineOutput,
    LinearizerPipeline,
    LinearizerProjectionPipeline,
    LinearizerProjectionPipelineOutput,
    LinearizerStylePipelineOutput,
    LinearizerStyleTransferPipeline,
    LinearizerClassPipeline,
    LinearizerTextPipeline,
    pipeline_class_for,
)

__all__ = [
    "LinearizerPipeline",
    "LinearizerClassPipeline",
    "LinearizerTextPipeline",
    "pipeline_class_for",
    "LinearizerInversionPipeline",
    "LinearizerInversionPipelineOutput",
    "LinearizerInterpolationOutput",
    "LinearizerProjectionPipeline",
    "LinearizerProjectionPipelineOutput",
    "LinearizerStyleTransferPipeline",
    "LinearizerStylePipelineOutput",
]

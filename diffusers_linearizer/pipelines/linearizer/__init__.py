"""The Linearizer pipelines: one-step generation and exact inversion.

* :mod:`.pipeline_linearizer` — ``LinearizerPipeline`` (generation, unconditional models);
* :mod:`.pipeline_linearizer_class` — ``LinearizerClassPipeline`` (class-conditioned models, guidance);
* :mod:`.pipeline_linearizer_text` — ``LinearizerTextPipeline`` (text-conditioned models, guidance);
* :mod:`.pipeline_linearizer_inversion` — ``LinearizerInversionPipeline`` (inversion, interpolation; every kind);
* :mod:`.pipeline_linearizer_projection` — ``LinearizerProjectionPipeline`` (projection models ``g⁻¹ P g``);
* :mod:`.pipeline_linearizer_style` — ``LinearizerStyleTransferPipeline`` (style models ``g⁻¹ A_s g``);
* :mod:`.common` — what all share (``B``, ``B†``, checks); :mod:`.conditioning` — conditions and guidance;
  :mod:`.loading` — saving and loading.
"""

from ..tasks import PIPELINES, pipeline_class_for, register_pipeline
from .common import LinearizerPipelineMixin
from .pipeline_linearizer import LinearizerPipeline
from .pipeline_linearizer_class import LinearizerClassPipeline
from .pipeline_linearizer_inversion import LinearizerInversionPipeline
from .pipeline_linearizer_projection import LinearizerProjectionPipeline
from .pipeline_linearizer_style import LinearizerStylePipelineOutput, LinearizerStyleTransferPipeline
from .pipeline_linearizer_text import LinearizerTextPipeline
from .pipeline_output import (
    LinearizerInterpolationOutput, LinearizerInversionPipelineOutput, LinearizerProjectionPipelineOutput,
)

register_pipeline("linearizer", LinearizerPipeline, task="generate")
register_pipeline("linearizer_class", LinearizerClassPipeline, task="generate")
register_pipeline("linearizer_text", LinearizerTextPipeline, task="generate")
register_pipeline("linearizer_inversion", LinearizerInversionPipeline, task="invert")
register_pipeline("linearizer_projection", LinearizerProjectionPipeline, task="project")
register_pipeline("linearizer_style", LinearizerStyleTransferPipeline, task="stylize")


__all__ = [
    "LinearizerPipeline",
    "LinearizerClassPipeline",
    "LinearizerTextPipeline",
    "LinearizerInversionPipeline",
    "LinearizerProjectionPipeline",
    "LinearizerProjectionPipelineOutput",
    "LinearizerStyleTransferPipeline",
    "LinearizerStylePipelineOutput",
    "LinearizerPipelineMixin",
    "LinearizerInversionPipelineOutput",
    "LinearizerInterpolationOutput",
    "pipeline_class_for",
    "PIPELINES",
]

"""The Linearizer pipelines: one-step generation and exact inversion.

* :mod:`.pipeline_linearizer` — ``LinearizerPipeline`` (generation);
* :mod:`.pipeline_linearizer_inversion` — ``LinearizerInversionPipeline`` (inversion, interpolation);
* :mod:`.common` — what both share (``B``, ``B†``, checks); :mod:`.loading` — saving and loading.
"""

from .common import LinearizerPipelineMixin
from .pipeline_linearizer import LinearizerPipeline
from .pipeline_linearizer_inversion import LinearizerInversionPipeline
from .pipeline_output import LinearizerInterpolationOutput, LinearizerInversionPipelineOutput

__all__ = [
    "LinearizerPipeline",
    "LinearizerInversionPipeline",
    "LinearizerPipelineMixin",
    "LinearizerInversionPipelineOutput",
    "LinearizerInterpolationOutput",
]

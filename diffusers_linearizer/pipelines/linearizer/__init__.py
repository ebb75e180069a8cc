"""The Linearizer pipelines: one-step generation and exact inversion.

* :mod:`.pipeline_linearizer` — ``LinearizerPipeline`` (generation, unconditional models);
* :mod:`.pipeline_linearizer_class` — ``LinearizerClassPipeline`` (class-conditioned models, guidance);
* :mod:`.pipeline_linearizer_text` — ``LinearizerTextPipeline`` (text-conditioned models, guidance);
* :mod:`.pipeline_linearizer_inversion` — ``LinearizerInversionPipeline`` (inversion, interpolation; every kind);
* :mod:`.common` — what all share (``B``, ``B†``, checks); :mod:`.conditioning` — conditions and guidance;
  :mod:`.loading` — saving and loading.
"""

from typing import Optional, Union

from .common import LinearizerPipelineMixin
from .pipeline_linearizer import LinearizerPipeline
from .pipeline_linearizer_class import LinearizerClassPipeline
from .pipeline_linearizer_inversion import LinearizerInversionPipeline
from .pipeline_linearizer_text import LinearizerTextPipeline
from .pipeline_output import LinearizerInterpolationOutput, LinearizerInversionPipelineOutput

_GENERATION_PIPELINES = {None: LinearizerPipeline, "class": LinearizerClassPipeline, "text": LinearizerTextPipeline}


def pipeline_class_for(model_or_kind: Union[None, str, object]):
    """The generation pipeline class of a model (a ``LinearizerModel``) or of a kind (``None``, ``"class"``,
    ``"text"``: ``LinearizerModel.config.conditioning``)."""
    kind = model_or_kind
    if kind is not None and not isinstance(kind, str):
        kind = getattr(getattr(kind, "config", None), "conditioning", None)
    if kind not in _GENERATION_PIPELINES:
        raise ValueError(f"Unknown conditioning {kind!r}; expected None, 'class' or 'text'.")
    return _GENERATION_PIPELINES[kind]


__all__ = [
    "LinearizerPipeline",
    "LinearizerClassPipeline",
    "LinearizerTextPipeline",
    "LinearizerInversionPipeline",
    "LinearizerPipelineMixin",
    "LinearizerInversionPipelineOutput",
    "LinearizerInterpolationOutput",
    "pipeline_class_for",
]

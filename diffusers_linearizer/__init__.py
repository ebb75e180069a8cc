"""diffusers-linearizer: the Linearizer f(x) = g_y⁻¹(A g_x(x)) as a Hugging Face diffusers plugin.

Layers (each imports only those before it): ``operators`` ← ``models`` ← ``schedulers`` ←
``pipelines`` ← ``training`` / ``cli``. The helpers :mod:`.atomic` (atomic file writes),
:mod:`.images` (image conversion), :mod:`.image_grid` and :mod:`.defaults` (where the packaged model
lives) import nothing from those layers.
"""

__version__ = "0.1.0"

from .defaults import DEFAULT_MODEL_DIR, PACKAGED_MODELS
from .operators import CircularConvolution, DenseOperator, IdentityPlusLowRank, SharedBasisOperator
from .models import LinearizerModel, LinearizerModelOutput
from .schedulers import LinearizerScheduler
from .schedulers.collapse_budget import collapse_limits
from .pipelines import (
    LinearizerInterpolationOutput,
    LinearizerInversionPipeline,
    LinearizerInversionPipelineOutput,
    LinearizerPipeline,
    LinearizerClassPipeline,
    LinearizerProjectionPipeline,
    LinearizerProjectionPipelineOutput,
    LinearizerStylePipelineOutput,
    LinearizerStyleTransferPipeline,
    LinearizerTextPipeline,
    pipeline_class_for,
)
from .images import psnr
from . import analysis  # noqa: F401  (the diagnostics: local_components, inverse_stability, typicality, fiber_report)
from .atomic import replace_dir, write_json_atomic, write_text_atomic
from diffusers import ModelMixin, SchedulerMixin  # noqa: F401  (diffusers' loader looks these up on the library named in model_index.json)

# diffusers records a component as [library, class] in model_index.json, the library being the class's
# module. Our components report the package itself, so that the record is ["diffusers_linearizer",
# "LinearizerModel"]: stable when files move inside the package, and what diffusers' loader imports.
for _cls in (LinearizerModel, LinearizerScheduler):
    _cls.__module__ = __name__
del _cls

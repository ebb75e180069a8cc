"""diffusers-linearizer: the Linearizer f(x) = g_y⁻¹(A g_x(x)) as a Hugging Face diffusers plugin.

Layers (each imports only those before it): ``operators`` ← ``models`` ← ``schedulers`` ←
``pipelines`` ← ``training`` / ``cli``.
"""

__version__ = "0.1.0"

from .operators import DenseOperator, IdentityPlusLowRank, SharedBasisOperator
from .models import LinearizerModel, LinearizerModelOutput
from .schedulers import LinearizerScheduler
from .pipelines import (
    LinearizerInterpolationOutput,
    LinearizerInversionPipeline,
    LinearizerInversionPipelineOutput,
    LinearizerPipeline,
)
from diffusers import ModelMixin, SchedulerMixin  # noqa: F401  (diffusers' loader looks these up on the library named in model_index.json)

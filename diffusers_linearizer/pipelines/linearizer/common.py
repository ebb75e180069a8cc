"""What both Linearizer pipelines share: component checks, offload hooks, the collapsed operator ``B``
and its pseudo-inverse ``B†`` (both cached by the scheduler), and the checks of the run parameters."""

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from diffusers.utils import logging

from ...images import OUTPUT_TYPES
from ...models import LinearizerModel
from ...schedulers.collapse_budget import check_collapse_budget
from ...schedulers.solvers import SOLVERS
from .conditioning import ConditionalPipelineMixin
from .loading import LinearizerLoadingMixin

logger = logging.get_logger(__name__)


def check_flags(**flags) -> None:
    """A ``ValueError`` naming each argument among ``flags`` that is not ``True`` or ``False`` (``one_step="no"``
    would otherwise count as true)."""
    wrong = [f"{name}={value!r}" for name, value in flags.items() if not isinstance(value, (bool, np.bool_))]
    if wrong:
        raise ValueError(f"Expected True or False for {', '.join(wrong)}.")


def check_finite_result(x: torch.Tensor, what: str, guidance_scale: Optional[float] = None,
                        temperature: Optional[float] = None) -> None:
    """A ``ValueError`` instead of an image when a run produced NaN or infinite values, naming the argument
    that makes the numbers overflow (a huge ``guidance_scale`` or ``temperature``), never a black image."""
    if bool(torch.isfinite(x).all()):
        return
    causes = []
    if guidance_scale is not None and guidance_scale > 1:
        causes.append(f"guidance_scale={guidance_scale:g} (B(c, w) grows with w = guidance_scale − 1)")
    if temperature is not None and temperature != 1.0:
        causes.append(f"temperature={temperature:g}")
    cause = (" caused by " + " or ".join(causes) + "; use a smaller value") if causes else (
        "; the model's weights or the latents passed may hold NaN/inf, or num_inference_steps makes B overflow")
    raise ValueError(f"The run produced non-finite {what}{cause}. No images were returned.")


def check_output_type(output_type, allowed: Sequence[str] = OUTPUT_TYPES) -> str:
    if output_type not in allowed:
        raise ValueError(f"Unknown output_type {output_type!r}; choose one of {', '.join(map(repr, allowed))}.")
    return output_type


class LinearizerPipelineMixin(ConditionalPipelineMixin, LinearizerLoadingMixin):
    """Machinery shared by :class:`LinearizerPipeline` and :class:`LinearizerInversionPipeline`.

    Not a ``DiffusionPipeline`` itself (so that diffusers finds exactly one pipeline class in a module);
    list it before ``DiffusionPipeline`` in the bases.
    """

    def _check_components(self) -> None:
        if not isinstance(getattr(self.linearizer, "_orig_mod", self.linearizer), LinearizerModel):  # compiled or not
            raise ValueError(f"linearizer must be a LinearizerModel, got {type(self.linearizer).__name__}.")
        if not hasattr(self.scheduler, "collapse") or not hasattr(self.scheduler, "check_run"):
            raise ValueError(
                f"scheduler must be a LinearizerScheduler (it needs check_run() and collapse()), got "
                f"{type(self.scheduler).__name__}."
            )

    def check_run(self, num_inference_steps, solver: Optional[str]) -> Tuple[int, str]:
        """The components, then ``num_inference_steps`` and ``solver`` by their owner, the scheduler."""
        self._check_components()
        return self.scheduler.check_run(num_inference_steps, solver)

    def check_collapse_budget(self, num_inference_steps: int, solver: str, core=None):
        """Refuse a collapse that would not fit in memory or time (the estimate and the limits:
        :mod:`diffusers_linearizer.schedulers.collapse_budget`); returns the estimate. Each pipeline call that
        collapses checks once, before any work (every condition's ``B(c, w)`` costs the same)."""
        if core is None and self.conditioning is not None:  # estimated on one condition's view: all cost the same
            cfg = self.linearizer.config
            probe = 0 if self.conditioning == "class" else torch.zeros(cfg.condition_dim, device=self.linearizer.device,
                                                                       dtype=self.linearizer.dtype)
            core = self.linearizer.guided_core(probe, probe if self.conditioning == "text" else None, 0.0)
        return check_collapse_budget(self.linearizer.core if core is None else core, num_inference_steps,
                                     SOLVERS.get(solver).c, self._collapse_dtype())

    def _onload(self) -> None:
        """Put the model in eval mode and trigger accelerate's offload hook.

        Sampling must not run training-mode code: ActNorm's data-dependent initialisation would rewrite
        an untrained model's weights from the first noise batch, and dropout would draw random numbers
        outside ``generator``. A model left in training mode is switched to eval mode (once, with a
        warning). The hook is triggered by hand because we call ``encode``/``decode``/the core, not
        ``forward``.
        """
        if self.linearizer.training:
            logger.warning(
                f"{type(self).__name__}: the linearizer was in training mode; switching it to eval mode for "
                "sampling (call .train() again to resume training)."
            )
            self.linearizer.eval()
        hook = getattr(self.linearizer, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self.linearizer)

    def _collapse_dtype(self) -> torch.dtype:
        return torch.float32 if self.linearizer.device.type == "mps" else torch.float64

    def collapsed_operator(self, num_inference_steps: int = 100, solver: Optional[str] = None, core=None):
        """The operator ``B`` of a whole sampler run of ``num_inference_steps`` grid points.

        Accumulated in float64 (float32 on MPS) whatever the model's dtype, and cached by the scheduler
        (thread-safe), so every pipeline built on the same scheduler shares it. A collapse that really
        runs (not a cache hit) shows a progress bar, one tick per solver step. ``core``: a view of the
        model's core to collapse instead (a guided conditional core, ``guided_view``), ``B(c, w)``.
        """
        T, solver = self.check_run(num_inference_steps, solver)
        return self.scheduler.collapse(self.linearizer.core if core is None else core, T, solver=solver,
                                       dtype=self._collapse_dtype(), progress_bar=self.progress_bar)

    def pseudo_inverse(self, num_inference_steps: int = 100, solver: Optional[str] = None, rcond: Optional[float] = None,
                       core=None):
        """``B†``, the Moore–Penrose pseudo-inverse of :meth:`collapsed_operator` (cached with ``B`` by the scheduler)."""
        T, solver = self.check_run(num_inference_steps, solver)
        return self.scheduler.pseudo_inverse(self.linearizer.core if core is None else core, T, solver=solver,
                                             dtype=self._collapse_dtype(), rcond=rcond, progress_bar=self.progress_bar)

    def _operator_for(self, condition, negative, w: float, num_inference_steps: int, solver, blend=None):
        """``B`` (unconditional, ``condition`` None and no blend) or ``B(c, w)``."""
        if condition is None and blend is None:
            return self.collapsed_operator(num_inference_steps, solver)
        return self.collapsed_operator(num_inference_steps, solver, core=self.guided_view(condition, negative, w, blend))

"""What the analysis tools share: the maps they differentiate, the collapsed operator of a model, input checks.

The analysis layer sits above ``models`` and ``schedulers`` and below ``pipelines`` (``docs/design.md``): it
takes a :class:`~diffusers_linearizer.models.LinearizerModel` and, where the one-step generator is involved,
the collapsed operator ``B`` of a sampler run (:func:`collapsed_operator` builds it from a scheduler). Every
tool runs the networks in evaluation mode (ActNorm's data-dependent initialisation must not fire on an
analysis point) and in at least float32: a half-precision model is analysed through a float32 copy, and
operators are used in float64.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["MAPS", "collapsed_operator", "model_map", "evaluating", "working_model", "check_point", "check_k"]

#: the maps whose Jacobians the tools take: name → what the input point is
MAPS = {
    "generator": "noise ε: the one-step generator ε ↦ g_x⁻¹(B g_y(τ·ε))",
    "decoder": "a latent z: the inverse network z ↦ g_space⁻¹(z)",
    "encoder": "an image x: the network x ↦ g_space(x)",
    "inverse": "an image x: the one-step inversion x ↦ g_y⁻¹(B⁻¹ g_x(x)) / τ",
}


@contextlib.contextmanager
def evaluating(model):
    """``model`` in eval mode for the duration, its training flag restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def working_model(model, dtype: Optional[torch.dtype] = None):
    """An eval-mode copy of ``model`` in ``dtype`` (default: at least float32) whose parameters need no
    gradient (Jacobian products then record no graph for the weights); the original is never modified."""
    want = dtype or torch.promote_types(model.dtype, torch.float32)
    work = torch.nn.Module.to(copy.deepcopy(model), dtype=want).eval()  # (ModelMixin.to warns about casting)
    return work.requires_grad_(False)


def collapsed_operator(model, scheduler, num_inference_steps: int = 100, solver: Optional[str] = None,
                       condition=None, guidance_scale: float = 1.0):
    """``B`` of a ``num_inference_steps``-point run of ``solver`` in float64, through the scheduler's cache.

    ``condition`` (a class id or a pooled text embedding) selects ``B(c, w)`` of a conditional model with
    ``w = guidance_scale − 1`` (diffusers' convention; 1 means no guidance); an unconditional model takes none.
    """
    core = model.core
    if model.conditioning is not None:
        if condition is None:
            raise ValueError(f"This model is {model.conditioning}-conditioned: pass the condition whose B(c, w) "
                             "to analyse (a class id or a pooled text embedding).")
        if not hasattr(model.core, "mixed_operators"):
            raise ValueError(f"The analysis needs a flow-matching core whose sampler run collapses into B (class- or "
                             f"text-conditioned cores included); this model's core is {type(model.core).__name__}, "
                             "which is not one.")
        core = model.guided_core(condition, None, max(float(guidance_scale) - 1.0, 0.0))
    elif condition is not None:
        raise ValueError("This model is unconditional: collapsed_operator takes no condition.")
    return scheduler.collapse(core, num_inference_steps, solver=solver, dtype=torch.float64)


def model_map(model, which: str, B=None, space: str = "x", temperature: Optional[float] = None) -> Callable:
    """The batched map ``(N, C, H, W) → (N, C, H, W)`` named ``which`` (:data:`MAPS`); every sample is mapped
    independently, which is what the batched Jacobian products of :mod:`.local_components` rely on."""
    if which not in MAPS:
        raise ValueError(f"Unknown map {which!r}; expected one of {', '.join(MAPS)}.")
    tau = float(model.config.sampling_temperature if temperature is None else temperature)
    if which in ("generator", "inverse"):
        if B is None:
            raise ValueError(f"The {which} map needs the collapsed operator B (analysis.collapsed_operator).")
        if B.dim != model.latent_dim:
            raise ValueError(f"B acts on D = {B.dim}, the model's latents have D = {model.latent_dim}.")
    if which == "generator":
        return lambda e: model.apply_g(B.apply_images(model.apply_g(e * tau, "y")), "x", inverse=True)
    if which == "inverse":
        return lambda x: model.apply_g(B.apply_images(model.apply_g(x, "x"), inverse=True), "y", inverse=True) / tau
    if space not in ("x", "y"):
        raise ValueError(f"Unknown space {space!r}; expected 'x' or 'y'.")
    if which == "decoder":
        return lambda z: model.apply_g(z, space, inverse=True)
    return lambda x: model.apply_g(x, space)


def check_point(model, point, name: str = "point") -> Tensor:
    """``point`` as a ``(1, C, H, W)`` tensor (a ``(C, H, W)`` one gains the batch axis); a ``ValueError`` naming
    the expected shape otherwise, before any work."""
    c, h, w = model.sample_shape
    if not isinstance(point, Tensor):
        raise ValueError(f"Expected {name} to be a torch.Tensor of shape (C, H, W) = ({c}, {h}, {w}) or "
                         f"(1, {c}, {h}, {w}), got {type(point).__name__}.")
    if point.ndim == 3:
        point = point[None]
    if point.ndim != 4 or point.shape[0] != 1 or tuple(point.shape[1:]) != (c, h, w):
        raise ValueError(f"Expected {name} of shape ({c}, {h}, {w}) or (1, {c}, {h}, {w}) (one point of the "
                         f"model's C×H×W), got {tuple(point.shape)}.")
    if not point.is_floating_point():
        raise ValueError(f"Expected {name} with a floating-point dtype, got {point.dtype}.")
    if not bool(torch.isfinite(point).all()):
        raise ValueError(f"{name} holds NaN or infinite values.")
    return point


def check_k(k, dim: int, name: str = "k") -> int:
    """``k`` as an int in ``[1, dim]``, else a ``ValueError`` naming the dimension."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) <= dim:
        raise ValueError(f"Expected {name} to be a whole number between 1 and the dimension D = {dim}, got {k!r}.")
    return int(k)

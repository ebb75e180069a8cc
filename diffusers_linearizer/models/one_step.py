r"""The one-step generator of a Linearizer as a differentiable function, its inverse and its density.

With ``B`` the collapsed operator of a whole sampler run (``LinearizerScheduler.collapse``), a trained
Linearizer generates in one step and inverts exactly::

    x = g_x⁻¹(B · g_y(τ·ε))              generate    (ε ~ N(0, I), temperature τ)
    ε = g_y⁻¹(B⁻¹ · g_x(x)) / τ          invert

Every factor is invertible with a tractable Jacobian, so the generator is a normalizing flow and the
density of its samples follows by the change of variables (``docs/math.md`` §4)::

    log p(x) = log N(ε; 0, I) + log|det ∂ε/∂x|
             = log N(ε; 0, I) + log|det J_{g_x}(x)| − log|det B| − log|det J_{g_y}(ε)|

with ``log|det B| = (D − R)·log|c| + log|det(c·I_R + G X)|`` for ``B = c·I + U X Vᵀ`` (matrix determinant
lemma, no ``D × D`` matrix). The functions here take the model and an operator ``B`` and keep the autograd graph: the training
objectives ``distill`` and ``likelihood`` are built from them (``B`` from
:func:`diffusers_linearizer.training.one_step.collapsed_operator`), and ``B`` is applied in its own
precision (float64 by default) while ``g`` runs in the weights' dtype. They belong to the model layer:
nothing here needs a scheduler, a pipeline or the trainer.
"""

from __future__ import annotations

import math
from typing import Tuple

from torch import Tensor

__all__ = ["generate", "invert", "log_likelihood", "dequantize", "bits_per_dim", "LOG_2PI"]

LOG_2PI = math.log(2 * math.pi)


def generate(model, B, noise: Tensor, temperature: float = 1.0) -> Tensor:
    """``x = g_x⁻¹(B g_y(τ·ε))`` (differentiable; no clamping)."""
    return model.decode(B.apply_images(model.encode(noise * temperature, "y")), "x")


def invert(model, B, images: Tensor, temperature: float = 1.0) -> Tensor:
    """``ε = g_y⁻¹(B⁻¹ g_x(x)) / τ`` (differentiable)."""
    return model.decode(B.apply_images(model.encode(images, "x"), inverse=True), "y") / temperature


def log_likelihood(model, B, images: Tensor) -> Tuple[Tensor, Tensor]:
    """``(log p(x), ε)`` per sample under the one-step generator (temperature 1), by change of variables.

    ``B`` must be invertible (``B.check_invertible()``): the identity coefficient ``c ≠ 0``. Three passes
    of ``g``: ``g_x(x)`` with its log-determinant, ``g_y⁻¹`` of ``B⁻¹ g_x(x)``, and ``g_y(ε)`` again for
    ``log|det J_{g_y}(ε)|`` (the inverse pass carries no log-determinant).
    """
    z, logdet_x = model.apply_g(images, "x", return_logdet=True)
    eps = model.apply_g(B.apply_images(z, inverse=True), "y", inverse=True)
    _, logdet_y = model.apply_g(eps, "y", return_logdet=True)
    dim = eps[0].numel()
    log_normal = -0.5 * eps.flatten(1).double().square().sum(1) - 0.5 * dim * LOG_2PI
    logp = log_normal + logdet_x.double() - B.logabsdet().double() - logdet_y.double()
    return logp, eps


def dequantize(images: Tensor, uniform: Tensor, levels: int = 256) -> Tensor:
    """Uniform dequantisation of ``levels``-level images in ``[0, 1]`` (``k/(levels − 1)``):
    ``x̃ = (k + u)/levels`` with ``u ~ U(0, 1)`` per pixel, so each level owns a bin of width ``1/levels``."""
    k = (images * (levels - 1)).round()
    return (k + uniform.to(images.dtype)) / levels


def bits_per_dim(logp: Tensor, dim: int, levels: int = 256) -> Tensor:
    """Discrete bits per dimension of dequantised data: ``(−log p(x̃) + D·log(levels)) / (D·ln 2)``."""
    return (-logp + dim * math.log(levels)) / (dim * math.log(2.0))

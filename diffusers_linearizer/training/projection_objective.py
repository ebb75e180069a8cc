r"""Objectives of projection models ``f(x) = g⁻¹(P g(x))`` (``core_type="projection_*"``).

* ``projection_likelihood`` — the exact likelihood of dequantised images ``x̃ = (k + u)/256`` under the flow
  ``g`` with the latent prior of the core (probabilistic PCA on ``range(P)``; see
  :mod:`diffusers_linearizer.models.projection_cores`)::

      bits/dim = (−log p_z(g(x̃)) − log|det J_g(x̃)| + D·log 256) / (D·ln 2)                 (projection_bpd)

  It pulls the latents of data onto ``range(P)`` (the off-range part costs ``‖(I − QQᵀ) z‖²/2σ²``) and shapes
  them into the density the generator draws from, so its samples look like data.
* ``projection_reconstruction`` — ``‖f(x̃) − x̃‖²`` per pixel: the data are fixed points of ``f`` (IGN's
  reconstruction term; here idempotence itself needs no loss).
* ``projection_denoising`` — ``‖f(c(x)) − x‖²`` per pixel for corruptions ``c`` drawn per sample
  (:func:`corrupt_batch`): Gaussian noise, missing pixels (set to 0.5, where mask filling starts), a blur. It
  teaches ``f`` to pull corrupted inputs onto the data they came from; ``f`` stays exactly idempotent.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from ..images import binomial_blur
from ..models.one_step import bits_per_dim, dequantize


def _dequantized(inputs) -> Tensor:
    return dequantize(inputs.images, inputs.uniform) if inputs.uniform is not None else inputs.images


def projection_likelihood_terms(model, x: Tensor) -> Dict[str, Tensor]:
    """``{"projection_bpd": mean bits/dim}`` of (dequantised) images ``x`` under ``g`` and the core's prior."""
    z, logdet = model.apply_g(x, "x", return_logdet=True)
    logp = model.core.log_prior(z.flatten(1)) + logdet.double()
    return {"projection_bpd": bits_per_dim(logp, x[0].numel()).mean().float()}


def projection_likelihood_component(objective, inputs) -> Dict[str, Tensor]:
    """The ``projection_likelihood`` term of a batch (``inputs.uniform``: the dequantisation noise)."""
    return projection_likelihood_terms(objective.model, _dequantized(inputs))


def projection_reconstruction_component(objective, inputs) -> Dict[str, Tensor]:
    """``{"projection_reconstruction": mean ‖f(x) − x‖²}`` per pixel."""
    model = objective.model
    x = _dequantized(inputs)
    z = model.apply_g(x, "x")
    fx = model.apply_g(model.core(z.flatten(1)).view_as(z), "y", inverse=True)
    return {"projection_reconstruction": (fx - x).float().square().mean()}


@torch.no_grad()
def initialize_projection(model, images: Tensor) -> None:
    """Start a projection core where the data's latents are: ``range(P)`` on their top-``r`` principal
    directions and the prior at its maximum-likelihood values for that range (``fit_range``, ``fit_prior``)."""
    z = model.apply_g(images, "x").flatten(1)
    model.core.fit_range(z)
    model.core.fit_prior(z)


#: the largest noise σ and missing-pixel fraction of :func:`corrupt_batch`
MAX_NOISE, MAX_MISSING = 0.5, 0.5


def corrupt_batch(x: Tensor, noise: Tensor, u: Tensor, eps: Tensor) -> Tensor:
    """Corrupted copies of ``x`` (all randomness passed in: ``noise``, ``eps`` ~ N(0, I) of ``x``'s shape, ``u`` ~
    U(0, 1) per sample). ``u < ⅓``: Gaussian noise ``σ = MAX_NOISE · 3u``; ``⅓ ≤ u < ⅔``: a fraction
    ``MAX_MISSING · (3u − 1)`` of the pixels set to 0.5; else the 5×5 binomial blur."""
    u = u.to(x.dtype).view(-1, 1, 1, 1)
    noisy = x + MAX_NOISE * 3 * u * noise.to(x.dtype)
    missing = torch.special.ndtr(eps[:, :1].to(x.dtype)) < MAX_MISSING * (3 * u - 1)
    holes = torch.where(missing, torch.full_like(x, 0.5), x)
    return torch.where(u < 1 / 3, noisy, torch.where(u < 2 / 3, holes, binomial_blur(x)))


def projection_denoising_component(objective, inputs) -> Dict[str, Tensor]:
    """``{"projection_denoising": mean ‖f(c(x)) − x‖²}`` per pixel (``c``: :func:`corrupt_batch` with the step's
    ``noise``, ``t`` and ``eps_x``)."""
    model = objective.model
    x = _dequantized(inputs)
    bad = corrupt_batch(x, inputs.noise, inputs.t, inputs.eps_x)
    z = model.apply_g(bad, "x")
    fx = model.apply_g(model.core(z.flatten(1)).view_as(z), "y", inverse=True)
    return {"projection_denoising": (fx - x).float().square().mean()}

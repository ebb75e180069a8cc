r"""Objectives of projection models ``f(x) = g⁻¹(P g(x))`` (``core_type="projection_*"``).

* ``projection_likelihood`` — the exact likelihood of dequantised images ``x̃ = (k + u)/256`` under the flow
  ``g`` with the latent prior of the core (probabilistic PCA on ``range(P)``; see
  :mod:`diffusers_linearizer.models.projection_cores`)::

      bits/dim = (−log p_z(g(x̃)) − log|det J_g(x̃)| + D·log 256) / (D·ln 2)                 (projection_bpd)

  It pulls the latents of data onto ``range(P)`` (the off-range part costs ``‖(I − QQᵀ) z‖²/2σ²``) and shapes
  them into the Gaussian the generator draws from, so ``g⁻¹(G ε)`` looks like data.
* ``projection_reconstruction`` — ``‖f(x̃) − x̃‖²`` per pixel: the data are fixed points of ``f`` (IGN's
  reconstruction term; here idempotence itself needs no loss).
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

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

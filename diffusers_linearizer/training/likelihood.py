r"""The ``likelihood`` objective: maximum likelihood of the one-step generator (a normalizing flow).

Every core is linear in latent space, so the collapsed generator ``x = g_x⁻¹(B g_y(ε))`` is an invertible
map with a tractable Jacobian. Its exact log-density (:func:`diffusers_linearizer.models.one_step.log_likelihood`) is maximised on
uniformly dequantised 8-bit images ``x̃ = (k + u)/256``::

    L = bits/dim = (−log p(x̃) + D·log 256) / (D·ln 2)                                  (likelihood_bpd)

Unlike the flow-matching terms, which fit the best *linear* predictor of the clean latent (matching only
means and covariances of ``g_x(data)``), this asks the distribution of ``B g_y(ε)`` itself to match that
of ``g_x(data)``. ``B`` must be invertible: the identity coefficient of the core must not vanish, which
:func:`check_likelihood_model` verifies before training starts.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from ..models.one_step import bits_per_dim, dequantize, log_likelihood


def likelihood_terms(model, B, images: Tensor, uniform: Tensor) -> Dict[str, Tensor]:
    """``{"likelihood_bpd": mean bits/dim}`` of the dequantised batch (``uniform`` ~ U(0, 1), images' shape)."""
    x = dequantize(images, uniform)
    logp, _ = log_likelihood(model, B, x)
    return {"likelihood_bpd": bits_per_dim(logp, x[0].numel()).mean().float()}


def likelihood_component(objective, inputs) -> Dict[str, Tensor]:
    """The ``likelihood`` objective's term for a batch (``inputs.uniform``: the dequantisation noise)."""
    return likelihood_terms(objective.model, inputs.B, inputs.images, inputs.uniform)


def check_likelihood_model(model, scheduler, num_inference_steps: int, solver: str) -> None:
    """``ValueError`` (naming the identity coefficient) unless the collapsed ``B`` of ``model`` is invertible."""
    with torch.no_grad():
        B = scheduler.collapse(model.core, num_inference_steps, solver=solver, cache=False)
    B.check_invertible(f"The collapsed operator B ({solver}, T = {num_inference_steps}) of this model")

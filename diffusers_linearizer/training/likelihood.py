r"""The ``likelihood`` objective: maximum likelihood of the one-step generator (a normalizing flow).

Every core is linear in latent space, so the collapsed generator ``x = g_x⁻¹(B g_y(ε))`` is an invertible
map with a tractable Jacobian. Its exact log-density (:func:`diffusers_linearizer.models.one_step.log_likelihood`) is maximised on
uniformly dequantised 8-bit images ``x̃ = (k + u)/256``::

    L = bits/dim = (−log p(x̃) + D·log 256) / (D·ln 2)                                  (likelihood_bpd)

Unlike the flow-matching terms, which fit the best *linear* predictor of the clean latent (matching only
means and covariances of ``g_x(data)``), this asks the distribution of ``B g_y(ε)`` itself to match that
of ``g_x(data)``. ``B`` must be invertible: the identity coefficient of the core must not vanish, which
:func:`check_likelihood_model` verifies before training starts.

A class-conditioned model is trained for ``log p(x | c)``: each image through the collapse ``B(c)`` of its own
class's core ``A(t, c)`` (unguided, ``w = 0``; an image whose label was dropped for classifier-free guidance
trains the null class's ``B(∅)``, the unconditional model), one collapse per class in the batch. A
text-conditioned model is refused: every prompt would need its own collapse.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from ..models.one_step import bits_per_dim, dequantize, log_likelihood
from .one_step import class_operators


def likelihood_terms(model, B, images: Tensor, uniform: Tensor) -> Dict[str, Tensor]:
    """``{"likelihood_bpd": mean bits/dim}`` of the dequantised batch (``uniform`` ~ U(0, 1), images' shape)."""
    x = dequantize(images, uniform)
    logp, _ = log_likelihood(model, B, x)
    return {"likelihood_bpd": bits_per_dim(logp, x[0].numel()).mean().float()}


def class_likelihood_terms(model, scheduler, num_inference_steps: int, solver: str, images: Tensor, uniform: Tensor,
                           labels: Tensor) -> Dict[str, Tensor]:
    """``{"likelihood_bpd": mean bits/dim}`` of ``log p(x | c)``, each image under its own class's ``B(c)``."""
    x = dequantize(images, uniform)
    total = x.new_zeros((), dtype=torch.float64)
    for index, B in class_operators(model, scheduler, num_inference_steps, solver, labels):
        logp, _ = log_likelihood(model, B, x[index])
        total = total + bits_per_dim(logp, x[0].numel()).sum()
    return {"likelihood_bpd": (total / x.shape[0]).float()}


def likelihood_component(objective, inputs) -> Dict[str, Tensor]:
    """The ``likelihood`` objective's term for a batch (``inputs.uniform``: the dequantisation noise;
    ``inputs.condition``: a class model's labels)."""
    if inputs.condition is None:
        return likelihood_terms(objective.model, inputs.B, inputs.images, inputs.uniform)
    return class_likelihood_terms(objective.model, objective.scheduler, objective.num_inference_steps,
                                  objective.solver, inputs.images, inputs.uniform, inputs.condition)


def check_likelihood_conditioning(conditioning) -> None:
    """``ValueError`` for a text-conditioned model (module docstring); the one rule, read by the argument checks too."""
    if conditioning == "text":
        raise ValueError("The likelihood objective trains unconditional and class-conditioned models; a text model "
                         "would need one collapse per prompt. Train it with fast or reference.")


def check_likelihood_model(model, scheduler, num_inference_steps: int, solver: str) -> None:
    """``ValueError`` (naming the identity coefficient) unless the collapsed ``B`` of ``model`` is invertible — for
    a class model, ``B(c)`` of every class and of the null class; a text model is refused (module docstring)."""
    check_likelihood_conditioning(model.conditioning)
    views = [(None, "")] if model.conditioning is None else \
        [(model.guided_core(c), f" for class {c}") for c in range(model.config.num_classes + 1)]
    with torch.no_grad():
        for view, which in views:
            B = scheduler.collapse(model.core if view is None else view, num_inference_steps, solver=solver, cache=False)
            B.check_invertible(f"The collapsed operator B ({solver}, T = {num_inference_steps}) of this model{which}")

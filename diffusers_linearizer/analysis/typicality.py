r"""Typicality of an inversion: is the recovered noise a plausible draw of the generator's noise?

Inversion through ``B†`` always "succeeds" (``B B† = I`` when ``B`` has full rank, so every image comes back
at round-off), which says nothing about whether the image is one the model could have generated. Two numbers
per image do (``docs/math.md`` §A3):

* the **bits per dimension** of the image under the one-step generator, from the exact change of variables
  (:func:`diffusers_linearizer.models.one_step.log_likelihood` and ``bits_per_dim``, the one owner);
* the **χ² statistic of the recovered noise** ``ε``: the pipelines draw ``τ·ε`` with ``ε ~ N(0, I_D)`` (``τ`` the
  model's ``sampling_temperature``, 1 unless calibrated), so for noise the model generates from,
  ``s = ‖ε/τ‖² ~ χ²_D`` (mean ``D``, variance ``2D``). Reported: ``s``, the z-score ``(s − D)/√(2D)``, the std ``√(s/D)``, and the upper-tail
  p-value ``P(χ²_D ≥ s) = Q(D/2, s/2)`` (the regularised upper incomplete gamma function).

``typical`` is ``p ≥ alpha``: noise that is too *large* for ``N(0, I)``. The lower tail is not flagged: a
model whose data sits in a high-density region recovers noise smaller than a ``N(0, I)`` draw for its own
test images (the packaged Fashion-MNIST model: std 0.33–1.0, ``docs/analysis.md``), and a low norm is not a
sign of an outlier there. Likelihood alone can rank some outliers as more likely than data; both scores and
their AUROCs are measured in ``docs/analysis.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..models.one_step import bits_per_dim, log_likelihood
from .common import evaluating, working_model

__all__ = ["NoiseTypicality", "Typicality", "noise_typicality", "typicality", "auroc", "DEFAULT_ALPHA"]

#: the upper-tail p-value below which recovered noise is called atypical
DEFAULT_ALPHA = 1e-3


@dataclass
class NoiseTypicality:
    """The χ² test of recovered noise against ``N(0, I_D)`` (:func:`noise_typicality`), per image.

    Args:
        chi2: ``(N,)`` float64 ``s = ‖ε/τ‖²``.
        z_score: ``(N,)`` float64 ``(s − D)/√(2D)``.
        p_value: ``(N,)`` float64 ``P(χ²_D ≥ s)``.
        noise_std: ``(N,)`` float64 ``τ·√(s/D)``, the std of the noise itself.
        typical: ``(N,)`` bool ``p_value ≥ alpha``.
    """

    chi2: Tensor
    z_score: Tensor
    p_value: Tensor
    noise_std: Tensor
    typical: Tensor


@dataclass
class Typicality(NoiseTypicality):
    """:class:`NoiseTypicality` plus ``bits_per_dim`` ``(N,)`` float64 (NaN when ``B`` is not invertible)."""

    bits_per_dim: Optional[Tensor] = None


def noise_typicality(noise: Tensor, alpha: float = DEFAULT_ALPHA, temperature: float = 1.0) -> NoiseTypicality:
    r"""``s = ‖ε/τ‖²`` (``τ = temperature``), ``z = (s − D)/√(2D)``, ``p = P(χ²_D ≥ s) = Q(D/2, s/2)`` and ``typical = p ≥ alpha`` for each
    noise ``ε`` of the batch ``noise`` (``(N, …)``, ``D`` numbers per sample).

    Returns:
        :class:`NoiseTypicality`.
    """
    if not isinstance(noise, Tensor) or noise.ndim < 2 or noise[0].numel() == 0:
        raise ValueError(f"Expected noise as a tensor of shape (N, C, H, W), got "
                         f"{tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__}.")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}.")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    flat = noise.detach().flatten(1).double().cpu() / float(temperature)
    dim = flat.shape[1]
    s = flat.square().sum(1)
    z = (s - dim) / math.sqrt(2.0 * dim)
    p = torch.special.gammaincc(torch.full_like(s, dim / 2.0), s / 2.0)
    p = torch.where(torch.isfinite(s), p, torch.zeros_like(p))
    return NoiseTypicality(chi2=s, z_score=z, p_value=p, noise_std=(s / dim).sqrt() * float(temperature),
                           typical=p >= float(alpha))


def typicality(model, B, images: Tensor, noise: Optional[Tensor] = None, alpha: float = DEFAULT_ALPHA,
               temperature: Optional[float] = None) -> Typicality:
    r"""Bits/dim of ``images`` under the one-step generator and the χ² test of their recovered noise.

    ``log p(x) = log N(ε; 0, I) + log|det J_{g_x}(x)| − log|det B| − log|det J_{g_y}(ε)|`` with
    ``ε = g_y⁻¹(B⁻¹ g_x(x))`` (``models/one_step.log_likelihood``), and
    ``bits/dim = (−log p(x) + D·log 256)/(D·ln 2)`` (``bits_per_dim``, 256 levels). The χ² part is
    :func:`noise_typicality` of ``noise`` (default: the ``ε`` found here).

    Args:
        model: the ``LinearizerModel``; B: the collapsed operator the images are inverted through.
        images: ``(N, C, H, W)`` in ``[0, 1]``.
        noise: the recovered noise when already computed (the inversion pipeline's); else ``ε`` above.
        alpha: the p-value below which noise is atypical.
        temperature: ``τ`` of the χ² test (default the model's ``sampling_temperature``).

    Returns:
        :class:`Typicality` (``bits_per_dim`` NaN when ``B`` is singular: no density then).
    """
    model.check_sample(images, "images")
    work = model if model.dtype in (torch.float32, torch.float64) else working_model(model)
    x = images.to(device=work.device, dtype=work.dtype)
    bpd = torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
    eps = None
    try:
        B.check_invertible("the collapsed operator B")
        invertible = True
    except ValueError:
        invertible = False
    if invertible:
        with evaluating(work), torch.no_grad():
            logp, eps = log_likelihood(work, B, x)
        bpd = bits_per_dim(logp.double(), work.latent_dim).cpu()
    if noise is None:
        if eps is None:
            raise ValueError("typicality needs the recovered noise when B is not invertible (pass noise=).")
        noise = eps
    tau = model.config.sampling_temperature if temperature is None else temperature
    stats = noise_typicality(noise, alpha, tau)
    return Typicality(**vars(stats), bits_per_dim=bpd)


def auroc(positive, negative) -> float:
    r"""The area under the ROC curve of a score that should be larger for ``positive`` than for ``negative``:
    ``P(S⁺ > S⁻) + ½·P(S⁺ = S⁻)`` over all pairs (the Mann–Whitney statistic divided by ``n⁺·n⁻``).
    Non-finite scores count as ``+inf`` (NaN included: an input the model cannot score is flagged)."""
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("auroc needs at least one score on each side.")
    pos = torch.nan_to_num(pos, nan=math.inf)
    neg = torch.nan_to_num(neg, nan=math.inf)
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)

"""Output containers of the Linearizer pipelines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

Images = Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]


@dataclass
class LinearizerInversionPipelineOutput(BaseOutput):
    """What :class:`LinearizerInversionPipeline` returns for a batch of ``N`` images.

    Args:
        noise: ``g_y⁻¹(B† g_x(x))``, shape ``(N, C, H, W)``; pass it as ``latents=`` to
            :class:`LinearizerPipeline` (same ``num_inference_steps`` and solver) to regenerate the image.
        latents: the noise-side latents ``B† g_x(x) = g_y(noise)``, shape ``(N, C, H, W)``.
        image_latents: the image-side latents ``g_x(x)``, shape ``(N, C, H, W)``.
        reconstruction: ``g_x⁻¹(B B† g_x(x))`` in the requested ``output_type``.
        psnr: ``(N,)`` float64, PSNR in dB of the (unclamped) reconstruction against the input, peak 1
            (the data range is [0, 1]); ``inf`` for an exact reconstruction.
        relative_error: ``(N,)`` float64, ``‖x_rec − x‖ / ‖x‖`` per image.
        bits_per_dim: ``(N,)`` float64, each image's bits/dim under the one-step generator (NaN when ``B`` is
            singular); noise_chi2_z: ``(N,)`` float64 z-score ``(‖ε/τ‖² − D)/√(2D)`` of the recovered noise ``ε`` against
            the sampling noise ``τ·N(0, I)`` (``τ`` the model's ``sampling_temperature``); noise_p_value: ``(N,)``
            float64 ``P(χ²_D ≥ ‖ε/τ‖²)``; typical: ``(N,)`` bool, the noise is a plausible draw (``noise_p_value ≥
            1e-3``). A reconstruction at round-off says nothing about
            this: every image inverts (``diffusers_linearizer.analysis.typicality``). ``None`` with ``typicality=False``.
    """

    noise: torch.Tensor
    latents: torch.Tensor
    image_latents: torch.Tensor
    reconstruction: Images
    psnr: torch.Tensor
    relative_error: torch.Tensor
    bits_per_dim: Optional[torch.Tensor] = None
    noise_chi2_z: Optional[torch.Tensor] = None
    noise_p_value: Optional[torch.Tensor] = None
    typical: Optional[torch.Tensor] = None


@dataclass
class LinearizerInterpolationOutput(BaseOutput):
    """What :meth:`LinearizerInversionPipeline.interpolate` returns.

    Args:
        frames: ``num_frames`` images from ``image_a`` (first) to ``image_b`` (last): a list of PIL
            images, an ``(F, H, W, C)`` array or an ``(F, C, H, W)`` tensor, per ``output_type``.
        noise: ``(F, C, H, W)`` the interpolated noise each frame was generated from.
        weights: ``(F,)`` float64 interpolation weights (0 = ``image_a``, 1 = ``image_b``).
        psnr: ``(2,)`` float64 PSNR (dB) of the reconstructions of ``image_a`` and ``image_b``.
    """

    frames: Images
    noise: torch.Tensor
    weights: torch.Tensor
    psnr: Optional[torch.Tensor] = None


@dataclass
class LinearizerProjectionPipelineOutput(BaseOutput):
    """What :class:`LinearizerProjectionPipeline` returns for ``N`` images.

    Args:
        images: ``f(x)`` (projection, mask filling) or ``g⁻¹(z)``, ``z`` a draw of the prior on the range (generation), per ``output_type``.
        distances: ``(N,)`` float64, ``‖g(x) − P g(x)‖`` of each input image (0 for generated ones): how far the
            input is from the model's range — an out-of-distribution score.
        latents: ``(N, C, H, W)`` the output's latents ``P g(x)`` (the prior's draw when generating), on ``range(P)``.
    """

    images: Images
    distances: torch.Tensor
    latents: Optional[torch.Tensor] = None

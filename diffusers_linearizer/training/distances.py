"""Pixel-space distances of the training objectives: ``mse``, ``ssim`` and the LPIPS substitute
``pixel_distance`` (MSE, or MSE + ``w``·(1 − SSIM)), per batch or per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_LOSSES = ("mse", "mse+ssim")


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error over all elements, computed in float32 (or float64 for float64 inputs)."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return (a.to(dtype) - b.to(dtype)).square().mean()


def _gaussian_window(size: int, sigma: float, dtype, device) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-(coords**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image structural similarity of ``(N, C, H, W)`` batches, shape ``(N,)``.

    Gaussian-weighted local statistics (separable window of ``window_size``, shrunk to the largest odd
    size that fits the image), constants ``C₁ = (0.01·L)²``, ``C₂ = (0.03·L)²`` with ``L = data_range``,
    averaged over valid positions and channels. Computed in float32.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim expects two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    c = x.shape[1]
    size = min(window_size, min(x.shape[-2:]))
    size -= 1 - size % 2  # odd
    w = _gaussian_window(size, sigma, dtype, x.device)
    wh = w.view(1, 1, size, 1).expand(c, 1, size, 1)
    ww = w.view(1, 1, 1, size).expand(c, 1, 1, size)

    def blur(v: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(v, wh, groups=c), ww, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x.square()
    syy = blur(y * y) - mu_y.square()
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x.square() + mu_y.square() + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def pixel_distance(image: Tensor, reconstruction: Tensor, pixel_loss: str = "mse", ssim_weight: float = 0.1) -> Tensor:
    """The LPIPS substitute ``D``: ``MSE`` or ``MSE + ssim_weight·mean(1 − SSIM)``."""
    if pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"Unknown pixel_loss {pixel_loss!r}; expected one of {', '.join(PIXEL_LOSSES)}.")
    d = mse(reconstruction, image)
    if pixel_loss == "mse+ssim":
        d = d + ssim_weight * (1.0 - ssim(reconstruction, image)).mean()
    return d


def per_sample_distance(image: Tensor, reconstruction: Tensor, pixel_loss: str = "mse", ssim_weight: float = 0.1) -> Tensor:
    """:func:`pixel_distance` of every image, shape ``(N,)``: its mean over a batch is the batch's distance."""
    dtype = torch.promote_types(torch.promote_types(image.dtype, reconstruction.dtype), torch.float32)
    d = (reconstruction.to(dtype) - image.to(dtype)).square().flatten(1).mean(1)
    if pixel_loss == "mse+ssim":
        d = d + ssim_weight * (1.0 - ssim(reconstruction, image))
    return d

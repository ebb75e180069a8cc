"""The style core: one circular convolution per style in the latent space of a shared ``g``.

A style model is ``f_s(x) = g⁻¹(A_s g(x))`` with one network ``g`` for every style and

    A_s = Pᵀ · Conv(δ + Δ_s) · P,

a circular convolution (:class:`~diffusers_linearizer.operators.CircularConvolution`) of the image-shaped latent
after a 2×2 space-to-depth ``P`` (``C = 4·C₀`` channels), with a ``C × C`` matrix of ``k × k`` kernels per style:
the identity kernel ``δ`` plus a learned ``Δ_s`` (zero at the start, so a new model is the identity map). The
kernels do not depend on the image size, so neither does the core: the same ``A_s`` acts on latents of any
``H × W`` that are multiples of the space-to-depth factor (through the FFT, exactly, for the algebra).

Conditions: style ids ``(N,)`` (integers ``0 … S − 1``), or blend weights ``(N, S)`` (``Σ_s w_s (δ + Δ_s)``: the
kernel of ``Σ_s w_s A_s``, as the operators add). The strength ``α`` is a blend with the identity,
``(1 − α)·I + α·A_s``, which the pipeline builds from the operators.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..operators.convolution import CircularConvolution

__all__ = ["StyleConvolutionCore", "STYLE_FACTOR"]

STYLE_FACTOR = 2
"""The space-to-depth factor of the style core's latent grid."""


class StyleConvolutionCore(nn.Module):
    """``A_s``: one ``C × C × k × k`` kernel per style (module docstring).

    Args:
        channels: the latent's channels ``C₀`` (the image's).
        sample_size: the training size (the default grid of :meth:`operator`).
        num_styles: ``S``.
        kernel_size: ``k`` (its centre tap is ``k // 2``; an even ``k`` reaches one pixel further on one side).
        factor: the space-to-depth factor (H and W must be multiples of it).
    """

    time_dependent = False
    size_free = True

    def __init__(self, channels: int, sample_size: int, num_styles: int, kernel_size: int = 5,
                 factor: int = STYLE_FACTOR):
        super().__init__()
        if num_styles < 1:
            raise ValueError(f"A style core needs at least one style (num_classes ≥ 1), got {num_styles}.")
        if kernel_size < 1:
            raise ValueError(f"The style core's kernel size (core_rank) must be a positive integer, got {kernel_size}.")
        self.channels, self.sample_size, self.factor = int(channels), int(sample_size), int(factor)
        self.num_styles, self.kernel_size = int(num_styles), int(kernel_size)
        c = self.channels * self.factor ** 2
        self.dim = self.channels * self.sample_size ** 2
        self.delta = nn.Parameter(torch.zeros(self.num_styles, c, c, kernel_size, kernel_size))
        eye = torch.zeros(c, c, kernel_size, kernel_size)
        eye[:, :, kernel_size // 2, kernel_size // 2] = torch.eye(c)
        self.register_buffer("identity_kernel", eye, persistent=False)

    @property
    def parameters_per_style(self) -> int:
        """Numbers a style adds: ``C²·k²``."""
        return int(self.delta[0].numel())

    # ------------------------------------------------------------------ conditions → kernels
    def style_weights(self, condition, dtype=None) -> Tensor:
        """``condition`` (an id, ``(N,)`` ids or ``(N, S)`` / ``(S,)`` weights) as ``(N, S)`` weights."""
        device = self.delta.device
        dtype = dtype or self.delta.dtype
        c = torch.as_tensor(condition, device=device)
        if not c.is_floating_point():
            c = c.reshape(-1)
            if bool(((c < 0) | (c >= self.num_styles)).any()):
                raise ValueError(f"Style ids must be in 0 … {self.num_styles - 1}, got {c.tolist()}.")
            return F.one_hot(c.long(), self.num_styles).to(dtype)
        c = c.to(dtype)
        if c.ndim == 1:
            c = c[None]
        if c.ndim != 2 or c.shape[1] != self.num_styles:
            raise ValueError(f"Style weights must have {self.num_styles} entries per image, got shape {tuple(c.shape)}.")
        return c

    def kernels(self, weights: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
        """``Σ_s w_s (δ + Δ_s)`` per row of ``weights (N, S)``: ``(N, C, C, k, k)`` in ``dtype`` (default the
        parameters')."""
        dtype = dtype or self.delta.dtype
        mixed = torch.einsum("ns,sabcd->nabcd",
                             weights.to(dtype), self.delta.to(dtype))
        return mixed + weights.sum(1).view(-1, 1, 1, 1, 1).to(dtype) * self.identity_kernel.to(dtype)

    # ------------------------------------------------------------------ training forward
    def check_grid(self, height: int, width: int) -> None:
        """``ValueError`` unless a latent of ``height × width`` fits the space-to-depth and the kernel."""
        s = self.factor
        if height % s or width % s or height < s or width < s:
            raise ValueError(f"This style model takes images whose height and width are multiples of {s}; got "
                             f"{height}×{width}. Pad or crop the image (the pipeline's resize='pad' or 'crop').")

    def forward(self, z: Tensor, t=None, condition=None) -> Tensor:
        """``A_c z`` for image-shaped latents ``(N, C₀, H, W)``, differentiable (one grouped circular convolution)."""
        if condition is None:
            raise ValueError("The style core needs a condition: style ids (N,) or style weights (N, S).")
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise ValueError(f"Expected latents of shape (N, {self.channels}, H, W), got {tuple(z.shape)}.")
        n, _, height, width = z.shape
        self.check_grid(height, width)
        weights = self.style_weights(condition, z.dtype)
        if weights.shape[0] == 1 and n > 1:
            weights = weights.expand(n, -1)
        if weights.shape[0] != n:
            raise ValueError(f"{weights.shape[0]} style conditions for {n} latents.")
        k = self.kernels(weights).to(z.dtype)  # (N, C, C, k, k)
        y = F.pixel_unshuffle(z, self.factor)
        c, lo = y.shape[1], self.kernel_size // 2
        hi = self.kernel_size - 1 - lo
        y = y.reshape(1, n * c, *y.shape[2:])
        y = F.pad(y, (lo, hi, lo, hi), mode="circular") if self.kernel_size > 1 else y
        y = F.conv2d(y, k.reshape(n * c, c, self.kernel_size, self.kernel_size), groups=n)
        return F.pixel_shuffle(y.reshape(n, c, *y.shape[2:]), self.factor)

    # ------------------------------------------------------------------ operators
    def operator(self, t=None, dtype: Optional[torch.dtype] = None, grad: bool = False, condition=0,
                 size: Optional[Sequence[int]] = None) -> CircularConvolution:
        """``A_c`` on latents of ``size = (H, W)`` (default the training size) as an exact FFT operator."""
        return self.operators([t], dtype, grad, condition, size)[0]

    def operators(self, ts, dtype: Optional[torch.dtype] = None, grad: bool = False, condition=0,
                  size: Optional[Sequence[int]] = None) -> list:
        """The (time-independent) operator once per entry of ``ts``."""
        size: Tuple[int, int] = tuple(size) if size is not None else (self.sample_size, self.sample_size)
        self.check_grid(*size)
        dtype = dtype or self.delta.dtype
        with torch.set_grad_enabled(grad):
            kernel = self.kernels(self.style_weights(condition, torch.float64), torch.float64)[0].to(dtype)
            op = CircularConvolution.from_kernel(kernel, size, self.channels, self.factor)
        return [op for _ in ts]

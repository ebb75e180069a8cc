"""Circular convolutions of image-shaped latents, diagonalised by the 2-D FFT (``docs/math.md`` §6).

A latent ``z ∈ R^D`` is read as an image ``(C₀, H, W)`` (``D = C₀·H·W``, row-major). With a space-to-depth
``factor`` s it is first rearranged to ``(C, h, w) = (C₀·s², H/s, W/s)`` (a permutation ``P``, the
``pixel_unshuffle`` of torch), and the operator is

    M = Pᵀ · Conv_K · P,      (Conv_K y)[o, p] = Σ_i Σ_q h[o, i, p − q mod (h, w)] · y[i, q],

a circular convolution with a ``C × C`` matrix of kernels (``C × C`` channel mixing; a per-channel kernel is
the diagonal case). The unitary 2-D DFT ``F`` block-diagonalises it: ``Conv_K = Fᴴ · blockdiag(K̂(ω)) · F``
with one ``C × C`` matrix ``K̂(ω)`` per frequency ω of the ``h × w`` grid. Hence, exactly:

* product, sum, scale, identity shift, power: per frequency on the ``K̂(ω)``;
* transpose: ``K̂(ω)ᴴ`` (a real kernel has ``K̂(−ω) = conj K̂(ω)``, so the transpose's kernel is
  ``h[i, o, −r]``);
* inverse, pseudo-inverse: ``K̂(ω)⁻¹``, ``K̂(ω)†`` (singular values below ``rcond·σ_max`` of the whole
  operator count as zero);
* singular values: the union over ω of those of ``K̂(ω)``; singular vectors are real and imaginary parts of
  ``e^{iω·p} ⊗ u`` (each conjugate pair of frequencies gives two real triplets per value);
* ``log|det M| = Σ_ω log|det K̂(ω)|``; condition number ``σ_max / σ_min`` over all frequencies.

The operator is tied to one grid ``(H, W)`` (``D`` depends on it); :meth:`CircularConvolution.from_kernel`
builds it for any grid from a kernel, which is what a size-free core does for each image size. Products and
sums with other operator kinds (or with a convolution on another grid) go through the dense matrix.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LinearOperator, as_scalar, check_k, check_power, default_rtol, ratio, truncation, work_dtype

__all__ = ["CircularConvolution", "kernel_spectrum"]


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if work_dtype(dtype) == torch.float64 else torch.complex64


def kernel_spectrum(kernel: Tensor, grid: Tuple[int, int]) -> Tensor:
    """``K̂(ω)`` of shape ``(h, w, C, C)``: the 2-D DFT of ``kernel`` placed on an ``h × w`` torus.

    ``kernel`` is ``(C, C, kh, kw)`` (channel mixing, ``F.conv2d``'s cross-correlation with its centre at
    ``(kh // 2, kw // 2)``) or ``(C, kh, kw)`` (one kernel per channel); taps farther than the grid wrap around.
    """
    if kernel.ndim == 3:
        kernel = torch.diag_embed(kernel.permute(1, 2, 0)).permute(2, 3, 0, 1)
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"Expected a kernel of shape (C, C, kh, kw) or (C, kh, kw), got {tuple(kernel.shape)}.")
    h, w = grid
    c, _, kh, kw = kernel.shape
    # cross-correlation y[p] = Σ_d k[d] x[p + d − c0] is the convolution with taps h[c0 − d] = k[d]
    taps = torch.zeros((c, c, h, w), dtype=work_dtype(kernel.dtype), device=kernel.device)
    for a in range(kh):
        for b in range(kw):
            taps[:, :, (kh // 2 - a) % h, (kw // 2 - b) % w] += kernel[:, :, a, b].to(taps.dtype)
    return torch.fft.fft2(taps.to(_complex(kernel.dtype))).permute(2, 3, 0, 1).contiguous()


class CircularConvolution(LinearOperator):
    """A circular convolution of ``(C₀, H, W)`` latents, stored as its spectrum ``K̂`` (module docstring).

    Args:
        spectrum: complex ``(h, w, C, C)``, ``C = C₀·s²``, ``(h, w) = (H/s, W/s)``; it must be the spectrum of a
            real kernel (``K̂(−ω) = conj K̂(ω)``), as :func:`kernel_spectrum` makes.
        channels: ``C₀``, the latent's channels before the space-to-depth.
        factor: the space-to-depth factor ``s`` (1: none).
        dtype: the real dtype of the operator (``float32`` or ``float64``).
    """

    _level = 2  # meets other kinds as a dense matrix

    def __init__(self, spectrum: Tensor, channels: int, factor: int = 1, dtype: Optional[torch.dtype] = None):
        if not isinstance(spectrum, Tensor) or not spectrum.is_complex() or spectrum.ndim != 4 \
                or spectrum.shape[2] != spectrum.shape[3]:
            raise ValueError("Expected a complex spectrum of shape (h, w, C, C).")
        if channels < 1 or spectrum.shape[2] != channels * factor * factor:
            raise ValueError(f"A spectrum of {spectrum.shape[2]} channels does not match channels = {channels} "
                             f"and factor = {factor} (C = channels·factor²).")
        self.spectrum, self.channels, self.factor = spectrum, int(channels), int(factor)
        self._dtype = dtype or (torch.float64 if spectrum.dtype == torch.complex128 else torch.float32)

    @classmethod
    def from_kernel(cls, kernel: Tensor, size: Sequence[int], channels: Optional[int] = None,
                    factor: int = 1) -> "CircularConvolution":
        """The convolution by ``kernel`` (``(C, C, kh, kw)`` or ``(C, kh, kw)``, ``C = channels·factor²``) of
        ``(channels, H, W)`` latents, ``size = (H, W)``; ``ValueError`` when ``H`` or ``W`` is not a positive
        multiple of ``factor``."""
        H, W = (int(v) for v in size)
        if H < 1 or W < 1 or H % factor or W % factor:
            raise ValueError(f"A latent of size {H}×{W} cannot be split into {factor}×{factor} blocks: H and W must be "
                             f"positive multiples of {factor}.")
        c = kernel.shape[0]
        channels = c // (factor * factor) if channels is None else int(channels)
        return cls(kernel_spectrum(kernel, (H // factor, W // factor)), channels, factor, dtype=work_dtype(kernel.dtype))

    @classmethod
    def identity(cls, channels: int, size: Sequence[int], factor: int = 1, dtype=torch.float32, device=None):
        """``I`` as a convolution of ``(channels, H, W)`` latents."""
        H, W = (int(v) for v in size)
        c = channels * factor * factor
        eye = torch.eye(c, dtype=_complex(dtype), device=device).expand(H // factor, W // factor, c, c).contiguous()
        return cls(eye, channels, factor, dtype=work_dtype(dtype))

    # ------------------------------------------------------------------ shape and storage
    @property
    def grid(self) -> Tuple[int, int]:
        """``(h, w)``, the frequency grid (after the space-to-depth)."""
        return int(self.spectrum.shape[0]), int(self.spectrum.shape[1])

    @property
    def size(self) -> Tuple[int, int]:
        """``(H, W)`` of the latents it acts on."""
        return self.grid[0] * self.factor, self.grid[1] * self.factor

    @property
    def dim(self) -> int:
        return self.channels * self.size[0] * self.size[1]

    @property
    def rank(self) -> int:
        return self.dim

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self.spectrum.device

    def _like(self, spectrum: Tensor) -> "CircularConvolution":
        return CircularConvolution(spectrum, self.channels, self.factor, self._dtype)

    def _same_grid(self, other) -> bool:
        return (isinstance(other, CircularConvolution) and other.channels == self.channels
                and other.factor == self.factor and other.grid == self.grid)

    # ------------------------------------------------------------------ application
    def apply_grid(self, z: Tensor, spectrum: Optional[Tensor] = None) -> Tensor:
        """``M z`` for image-shaped latents ``(N, C₀, H, W)`` (any real dtype; the result in the operator's)."""
        s = self.factor
        y = F.pixel_unshuffle(z, s) if s > 1 else z
        y = torch.fft.fft2(y.to(self._dtype))
        y = torch.einsum("hwoi,nihw->nohw", self.spectrum if spectrum is None else spectrum, y)
        y = torch.fft.ifft2(y).real
        return F.pixel_shuffle(y, s) if s > 1 else y

    def _as_images(self, z: Tensor) -> Tuple[Tensor, Tuple[int, ...]]:
        z = self._check_vectors(z)
        lead = tuple(z.shape[:-1])
        return z.reshape(-1, self.channels, *self.size), lead

    def apply(self, z: Tensor) -> Tensor:
        images, lead = self._as_images(z)
        dtype = torch.promote_types(z.dtype, self._dtype)
        return self.apply_grid(images).to(dtype).reshape(*lead, self.dim)

    def apply_images(self, z: Tensor, inverse: bool = False) -> Tensor:
        """``M z`` (``M⁻¹ z`` with ``inverse``) for ``(N, C₀, H, W)`` latents without flattening; returned in
        ``z``'s device and dtype."""
        if z.ndim != 4 or tuple(z.shape[1:]) != (self.channels, *self.size):
            raise ValueError(f"Expected latents of shape (N, {self.channels}, {self.size[0]}, {self.size[1]}), "
                             f"got {tuple(z.shape)}.")
        spectrum = self._inverse_spectrum() if inverse else None
        return self.apply_grid(z.to(self.device), spectrum).to(device=z.device, dtype=z.dtype)

    def _inverse_spectrum(self) -> Tensor:
        cond = self.cond()
        limit = 1.0 / torch.finfo(self._dtype).eps
        if not cond < limit:
            raise ValueError(f"The convolution is numerically singular: condition number {cond:.3g} "
                             f"(limit {limit:.3g} in {self._dtype}).")
        return torch.linalg.inv(self.spectrum)

    def solve(self, z: Tensor) -> Tensor:
        """``M⁻¹ z`` (``ValueError`` naming the condition number when ``M`` is numerically singular)."""
        images, lead = self._as_images(z)
        return self.apply_grid(images, self._inverse_spectrum()).to(torch.promote_types(z.dtype, self._dtype)) \
            .reshape(*lead, self.dim)

    def inverse(self) -> "CircularConvolution":
        """``M⁻¹`` (per frequency), refused with the condition number when ``M`` is numerically singular."""
        return self._like(self._inverse_spectrum())

    # ------------------------------------------------------------------ algebra
    def transpose(self) -> "CircularConvolution":
        return self._like(self.spectrum.conj().transpose(-1, -2).contiguous())

    def add_identity(self, s) -> "CircularConvolution":
        s = as_scalar("s", s, self._dtype, self.device)
        eye = torch.eye(self.spectrum.shape[-1], dtype=self.spectrum.dtype, device=self.device)
        return self._like(self.spectrum + s.to(self.spectrum.dtype) * eye)

    def to(self, device=None, dtype=None) -> "CircularConvolution":
        dtype = self._dtype if dtype is None else work_dtype(dtype)
        return CircularConvolution(self.spectrum.to(device=device, dtype=_complex(dtype)), self.channels, self.factor,
                                   dtype)

    def to_dense(self, max_dim: int = 4096) -> Tensor:
        self._check_dense_size(max_dim)
        eye = torch.eye(self.dim, dtype=self._dtype, device=self.device)
        return self.apply(eye).T.contiguous()  # row i of apply(I) is M e_i, column i of M

    def _scale(self, s: Tensor) -> "CircularConvolution":
        return self._like(self.spectrum * s.to(self.spectrum.dtype))

    def _coerce(self, other: LinearOperator):
        if self._same_grid(other):
            dtype = torch.promote_types(self.dtype, other.dtype)
            return self.to(dtype=dtype), other.to(dtype=dtype)
        return super()._coerce(other)

    def _matmul(self, other) -> LinearOperator:
        if not self._same_grid(other):
            return self._lift(2)._matmul(other)
        return self._like(self.spectrum @ other.spectrum)

    def _add(self, other) -> LinearOperator:
        if not self._same_grid(other):
            return self._lift(2)._add(other)
        return self._like(self.spectrum + other.spectrum)

    def _lift(self, level: int) -> LinearOperator:
        from .dense import DenseOperator

        if level < 2:
            raise ValueError("A circular convolution is no shared-basis or low-rank operator; it meets those as a dense one.")
        return DenseOperator(self.to_dense(max_dim=max(4096, self.dim)))

    def _identity_like(self) -> "CircularConvolution":
        return CircularConvolution.identity(self.channels, self.size, self.factor, self._dtype, self.device)

    def power(self, n: int) -> "CircularConvolution":
        """``Mⁿ`` per frequency (``n ≥ 0``)."""
        return self._like(torch.linalg.matrix_power(self.spectrum, check_power(n)))

    # ------------------------------------------------------------------ decompositions
    def singular_values(self) -> Tensor:
        """All ``D`` singular values, descending (those of every ``K̂(ω)``)."""
        return torch.linalg.svdvals(self.spectrum).flatten().sort(descending=True).values.to(self._dtype)

    def cond(self) -> float:
        s = torch.linalg.svdvals(self.spectrum)
        return ratio(float(s.max()), float(s.min()))

    def slogdet(self) -> Tuple[Tensor, Tensor]:
        sign, logabs = torch.linalg.slogdet(self.spectrum)
        total = torch.prod(sign.flatten())
        real_sign = torch.sign(total.real).to(self._dtype) if bool(logabs.isfinite().all()) else \
            torch.zeros((), dtype=self._dtype, device=self.device)
        return real_sign, logabs.sum().to(self._dtype)

    def pinv(self, rcond: Optional[float] = None) -> "CircularConvolution":
        U, S, Vh = torch.linalg.svd(self.spectrum)
        tol = (default_rtol(self._dtype, self.dim) if rcond is None else float(rcond)) * float(S.max())
        inv = torch.where(S > tol, 1.0 / torch.where(S > tol, S, torch.ones_like(S)), torch.zeros_like(S))
        return self._like((Vh.conj().transpose(-1, -2) * inv.to(U.dtype).unsqueeze(-2)) @ U.conj().transpose(-1, -2))

    def compress(self, tol: Optional[float] = None, rank: Optional[int] = None):
        """The convolution with its smallest singular values (below ``tol·σ_max``, beyond the top ``rank``) set to
        zero, and the Frobenius norm of what was dropped. The storage stays one ``C × C`` matrix per frequency."""
        U, S, Vh = torch.linalg.svd(self.spectrum)
        values = S.flatten().sort(descending=True).values
        keep = truncation(values, tol, rank, default_rtol(self._dtype, self.dim))
        cut = values[keep - 1] if keep else math.inf
        kept = torch.where(S >= cut, S, torch.zeros_like(S))
        dropped = float(torch.sqrt(((S - kept) ** 2).sum()))
        return self._like((U * kept.to(U.dtype).unsqueeze(-2)) @ Vh), dropped

    def reduce(self) -> Tuple[Tensor, Tensor]:
        """``(Q, K) = (I, M)`` as dense matrices (a convolution has no smaller invariant subspace to offer)."""
        return torch.eye(self.dim, dtype=self._dtype, device=self.device), self.to_dense()

    def svd(self, k: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Top-``k`` real singular triplets ``(U_k (D, k), S_k (k,), V_k (D, k))`` from the per-frequency SVDs.

        A frequency ω with ``−ω ≠ ω`` and its conjugate share their values; each of its complex triplets
        ``(u, σ, v)`` gives the two real ones ``√2·Re``, ``√2·Im`` of ``(e^{iω·p} u, σ, e^{iω·p} v)``. A
        self-conjugate frequency has a real ``K̂(ω)``, whose real SVD is used directly."""
        k = check_k(k, self.dim, self.dim)
        h, w = self.grid
        U, S, Vh = torch.linalg.svd(self.spectrum)
        entries = []  # (σ, a, b, j, part): part 0 the real, 1 the imaginary part, 2 a self-conjugate frequency
        for a in range(h):
            for b in range(w):
                na, nb = (-a) % h, (-b) % w
                if (a, b) > (na, nb):
                    continue
                parts = (2,) if (a, b) == (na, nb) else (0, 1)
                entries += [(float(S[a, b, j]), a, b, j, part) for j in range(S.shape[-1]) for part in parts]
        entries = sorted(entries, key=lambda e: -e[0])[:k]
        if not entries:
            empty = torch.zeros((self.dim, 0), dtype=self._dtype, device=self.device)
            return empty, torch.zeros(0, dtype=self._dtype, device=self.device), empty.clone()
        real = {}
        p = torch.arange(h, dtype=self._dtype, device=self.device).view(h, 1)
        q = torch.arange(w, dtype=self._dtype, device=self.device).view(1, w)
        cols_u, cols_v = [], []
        for _, a, b, j, part in entries:
            phase = torch.exp(2j * math.pi * (a * p / h + b * q / w)).to(U.dtype) / math.sqrt(h * w)
            if part == 2:
                if (a, b) not in real:
                    real[(a, b)] = torch.linalg.svd(self.spectrum[a, b].real)
                Ur, _, Vhr = real[(a, b)]
                u, v = Ur[:, j].to(U.dtype), Vhr[j, :].to(U.dtype)
            else:
                u, v = U[a, b, :, j], Vh[a, b, j, :].conj()
            for vec, out in ((u, cols_u), (v, cols_v)):
                wave = vec.view(-1, 1, 1) * phase
                out.append(wave.imag if part == 1 else wave.real)

        def stack(cols):
            grid = torch.stack(cols).to(self._dtype)  # (k, C, h, w)
            grid = F.pixel_shuffle(grid, self.factor) if self.factor > 1 else grid
            flat = grid.reshape(len(cols), self.dim).T
            return (flat / flat.norm(dim=0, keepdim=True)).contiguous()

        values = torch.tensor([e[0] for e in entries], dtype=self._dtype, device=self.device)
        return stack(cols_u), values, stack(cols_v)

    def __repr__(self) -> str:
        return (f"CircularConvolution(channels={self.channels}, size={self.size}, factor={self.factor}, "
                f"dtype={self._dtype}, device={self.device})")

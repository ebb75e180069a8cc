"""An explicit ``D × D`` matrix with the operator API, for tiny ``D`` (plain ``torch.linalg``)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import (
    FactoredOperator,
    as_scalar,
    check_factor,
    check_k,
    check_power,
    default_rtol,
    ratio,
    truncation,
    work_dtype,
)

__all__ = ["DenseOperator"]


class DenseOperator(FactoredOperator):
    """``M`` stored as a square ``D × D`` tensor ``matrix``.

    Decompositions run in at least float32 and return in the operator's dtype. ``rank`` is ``D``.
    """

    _level = 2
    _factor = "matrix"  # dim, rank (= D), dtype and device are read from it

    def __init__(self, M: Tensor):
        M = check_factor("M", M)
        if M.shape[0] != M.shape[1]:
            raise ValueError(f"Expected a square (D, D) matrix M, got shape {tuple(M.shape)}.")
        self.matrix = M

    @classmethod
    def identity(cls, dim: int, dtype: Optional[torch.dtype] = None, device=None) -> "DenseOperator":
        """``I`` as a ``D × D`` matrix."""
        return cls(torch.eye(dim, dtype=dtype or torch.get_default_dtype(), device=device))


    def _work(self) -> Tensor:
        return self.matrix.to(work_dtype(self.dtype))

    # ------------------------------------------------------------------------------ algebra
    def apply(self, z: Tensor) -> Tensor:
        """``M z`` for every vector; for rows ``Z``: ``Z Mᵀ``."""
        z, dtype = self._vectors(z)
        return z @ self.matrix.to(dtype).mT

    def transpose(self) -> "DenseOperator":
        """``Mᵀ``."""
        return DenseOperator(self.matrix.mT)

    def add_identity(self, s) -> "DenseOperator":
        """``M + s·I``."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return DenseOperator(self.matrix + as_scalar("s", s, self.dtype, self.device) * eye)

    def _scale(self, s: Tensor) -> "DenseOperator":
        """``s·M``."""
        return DenseOperator(s * self.matrix)

    def _matmul(self, other: "DenseOperator") -> "DenseOperator":
        """``M N``."""
        return DenseOperator(self.matrix @ other.matrix)

    def _add(self, other: "DenseOperator") -> "DenseOperator":
        """``M + N``."""
        return DenseOperator(self.matrix + other.matrix)

    def _lift(self, level: int) -> "DenseOperator":
        if level != 2:
            raise ValueError(f"DenseOperator cannot be lowered to level {level}.")
        return self

    def _identity_like(self) -> "DenseOperator":
        return DenseOperator.identity(self.dim, dtype=self.dtype, device=self.device)

    def to(self, device=None, dtype=None) -> "DenseOperator":
        """The same operator with its matrix moved to ``device`` / cast to ``dtype``."""
        if (device is None or torch.device(device) == self.device) and (dtype is None or dtype == self.dtype):
            return self
        return DenseOperator(self.matrix.to(device=device, dtype=dtype))

    def to_dense(self, max_dim: int = 4096) -> Tensor:
        """The stored matrix itself (not a copy; ValueError when ``D > max_dim``)."""
        self._check_dense_size(max_dim)
        return self.matrix

    # --------------------------------------------------------------------- decompositions
    def reduce(self) -> Tuple[Tensor, Tensor]:
        """``(I_D, M)``: the trivial reduction ``M = Q K Qᵀ`` with ``Q = I``."""
        return torch.eye(self.dim, dtype=self.dtype, device=self.device), self.matrix

    def pinv(self, rcond: Optional[float] = None) -> "DenseOperator":
        """``torch.linalg.pinv(M, rtol=rcond)`` (default ``rcond = eps · D``)."""
        return DenseOperator(torch.linalg.pinv(self._work(), rtol=rcond).to(self.dtype))

    def svd(self, k: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Top-``k`` triplets ``(U_k, S_k, V_k)`` of ``M = U diag(S) Vᵀ`` (``k = None``: all ``D``)."""
        k = check_k(k, self.dim, self.dim)
        U, S, Vh = torch.linalg.svd(self._work())
        return U[:, :k].to(self.dtype), S[:k].to(self.dtype), Vh[:k].mT.to(self.dtype)

    def power(self, n: int) -> "DenseOperator":
        """``Mⁿ`` (``torch.linalg.matrix_power``, ``n ≥ 0``)."""
        n = check_power(n)
        return DenseOperator(torch.linalg.matrix_power(self._work(), n).to(self.dtype))

    def cond(self) -> float:
        """``σ_max / σ_min`` (``inf`` when singular)."""
        S = torch.linalg.svdvals(self._work())
        return ratio(float(S.max()), float(S.min()))

    def slogdet(self) -> Tuple[Tensor, Tensor]:
        """``torch.linalg.slogdet(M)`` (in the working dtype, ≥ float32)."""
        return torch.linalg.slogdet(self._work())

    def solve(self, z: Tensor) -> Tensor:
        """``M⁻¹ z`` for every vector (rows ``Z``: ``Z M⁻ᵀ``), by ``torch.linalg.solve``; differentiable."""
        z, dtype = self._vectors(z)
        return torch.linalg.solve(self.matrix.to(dtype), z.mT).mT

    def logabsdet(self) -> Tensor:
        """``log|det M|`` (working dtype, ≥ float32); differentiable."""
        return torch.linalg.slogdet(self._work()).logabsdet

    def check_invertible(self, name: str = "the operator") -> None:
        """``ValueError`` unless ``M`` is numerically invertible (condition number below 1/eps)."""
        cond = float(torch.linalg.cond(self._work().detach()))
        if not cond < 1.0 / torch.finfo(self._work().dtype).eps:
            raise ValueError(f"{name} is numerically singular (condition number {cond:.3g}).")

    def compress(self, tol: Optional[float] = None, rank: Optional[int] = None) -> Tuple["DenseOperator", float]:
        """Truncated SVD ``M ≈ U_k diag(σ_k) V_kᵀ`` keeping ``σ_i > tol · σ_max`` (default
        ``tol = eps · D``) and at most ``rank`` values; returns it with ``sqrt(Σ dropped σᵢ²)``."""
        U, S, Vh = torch.linalg.svd(self._work())
        keep = truncation(S, tol, rank, default_rtol(S.dtype, self.dim))
        if keep == self.dim:
            return self, 0.0
        dropped = float(torch.linalg.vector_norm(S[keep:]))
        return DenseOperator(((U[:, :keep] * S[:keep]) @ Vh[:keep]).to(self.dtype)), dropped

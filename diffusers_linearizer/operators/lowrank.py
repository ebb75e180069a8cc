"""Scaled identity plus low rank: ``M = c·I + U Vᵀ`` (``docs/math.md`` §1).

Everything beyond products and sums goes through one exact reduction: with ``Q`` (``D × k``,
``k ≤ 2R``) an orthonormal basis of ``span([U, V])``, ``M`` maps ``span(Q)`` into itself and is
``c·I`` on its orthogonal complement, so

    M = c·(I − Q Qᵀ) + Q K Qᵀ,        K = c·I_k + (Qᵀ U)(Vᵀ Q)   (k × k).

Pseudo-inverse, SVD, powers, condition number and determinant follow from the small ``K``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import (
    FactoredOperator,
    LinearOperator,
    as_scalar,
    check_factor,
    check_invertible,
    check_k,
    check_power,
    default_rtol,
    ratio,
    truncation,
    work_dtype,
)
from .dense import DenseOperator

__all__ = ["IdentityPlusLowRank", "orthonormal_span", "complement_basis"]


def orthonormal_span(W: Tensor) -> Tensor:
    """An orthonormal basis ``Q`` (``D × k``) of the column span of ``W`` (``D × m``), rank revealing.

    Columns are scaled to unit norm first (so factors of very different size count alike); then
    ``W = Q₀ R₀`` (thin QR, only when ``D > m``) and ``R₀ = W_s Σ Z_sᵀ``; the left singular vectors
    with ``σ > eps · max(D, m) · σ_max`` are kept. Works for ``m ≥ D`` and rank-deficient ``W``.
    """
    D, m = W.shape
    if m == 0:
        return W.new_zeros(D, 0)
    norms = torch.linalg.vector_norm(W, dim=0)
    W = W / torch.where(norms > 0, norms, torch.ones_like(norms))
    if D > m:
        Q0, R0 = torch.linalg.qr(W)
        Ws, S, _ = torch.linalg.svd(R0)
        basis = Q0 @ Ws
    else:
        basis, S, _ = torch.linalg.svd(W, full_matrices=False)
    keep = int((S > S[0] * default_rtol(W.dtype, max(D, m))).sum())
    return basis[:, :keep]


def complement_basis(Q: Tensor, p: int) -> Tensor:
    """``p`` orthonormal columns orthogonal to the orthonormal ``Q`` (``D × k``, ``k + p ≤ D``).

    Householder QR of ``[Q, G]`` with a fixed-seed Gaussian ``G``: its first ``k`` columns span
    ``span(Q)``, so the next ``p`` are orthogonal to it.
    """
    D, k = Q.shape
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(D, p, generator=gen, dtype=Q.dtype).to(Q.device)
    full, _ = torch.linalg.qr(torch.cat([Q, G], 1))
    return full[:, k:k + p]


class IdentityPlusLowRank(FactoredOperator):
    """``M = c·I + U Vᵀ`` with ``U, V ∈ R^{D×R}`` (``R ≥ 0``, ``R ≥ D`` allowed), never stored as ``D × D``.

    ``c`` is a Python number or a 0-dim tensor, kept as a 0-dim tensor of the factors' dtype and
    device (the wider of ``U``'s and ``V``'s dtypes). Decompositions run in at least float32 and
    return in the operator's dtype.
    """

    _level = 1

    def __init__(self, c, U: Tensor, V: Tensor):
        U, V = check_factor("U", U), check_factor("V", V)
        if U.shape != V.shape:
            raise ValueError(
                f"Expected U and V of the same shape (D, R), got U {tuple(U.shape)} and V {tuple(V.shape)}."
            )
        if U.device != V.device:
            raise ValueError(f"Expected U and V on the same device, got {U.device} and {V.device}.")
        dtype = torch.promote_types(U.dtype, V.dtype)
        self.U, self.V = U.to(dtype), V.to(dtype)
        self.c = as_scalar("c", c, dtype, U.device)

    @classmethod
    def identity(cls, dim: int, dtype: Optional[torch.dtype] = None, device=None) -> "IdentityPlusLowRank":
        """``I`` (``c = 1``, ``R = 0``)."""
        empty = torch.zeros(dim, 0, dtype=dtype or torch.get_default_dtype(), device=device)
        return cls(1.0, empty, empty)

    # ------------------------------------------------------------------------------ algebra
    def apply(self, z: Tensor) -> Tensor:
        """``M z = c·z + U (Vᵀ z)``; for rows ``Z``: ``c·Z + (Z V) Uᵀ`` — ``O(N·D·R)``."""
        z, dtype = self._vectors(z)
        return self.c.to(dtype) * z + (z @ self.V.to(dtype)) @ self.U.to(dtype).mT

    def transpose(self) -> "IdentityPlusLowRank":
        """``Mᵀ = c·I + V Uᵀ``."""
        return IdentityPlusLowRank(self.c, self.V, self.U)

    def add_identity(self, s) -> "IdentityPlusLowRank":
        """``M + s·I = (c + s)·I + U Vᵀ``."""
        return IdentityPlusLowRank(self.c + as_scalar("s", s, self.dtype, self.device), self.U, self.V)

    def _scale(self, s: Tensor) -> "IdentityPlusLowRank":
        """``s·M = (s·c)·I + (s·U) Vᵀ``."""
        return IdentityPlusLowRank(s * self.c, s * self.U, self.V)

    def _matmul(self, other: "IdentityPlusLowRank") -> "IdentityPlusLowRank":
        """``(a·I + U₁V₁ᵀ)(b·I + U₂V₂ᵀ) = ab·I + [a·U₂ + U₁(V₁ᵀU₂), b·U₁] · [V₂, V₁]ᵀ`` (rank R₁ + R₂)."""
        a, U1, V1 = self.c, self.U, self.V
        b, U2, V2 = other.c, other.U, other.V
        left = torch.cat([a * U2 + U1 @ (V1.mT @ U2), b * U1], 1)
        return IdentityPlusLowRank(a * b, left, torch.cat([V2, V1], 1))

    def _add(self, other: "IdentityPlusLowRank") -> "IdentityPlusLowRank":
        """``(a·I + U₁V₁ᵀ) + (b·I + U₂V₂ᵀ) = (a + b)·I + [U₁, U₂] · [V₁, V₂]ᵀ``."""
        return IdentityPlusLowRank(
            self.c + other.c, torch.cat([self.U, other.U], 1), torch.cat([self.V, other.V], 1)
        )

    def _lift(self, level: int) -> LinearOperator:
        if level == 1:
            return self
        if level == 2:
            return DenseOperator(self.to_dense(max_dim=self.dim))
        raise ValueError(f"IdentityPlusLowRank cannot be lowered to level {level}.")

    def _identity_like(self) -> "IdentityPlusLowRank":
        return IdentityPlusLowRank.identity(self.dim, dtype=self.dtype, device=self.device)

    def to(self, device=None, dtype=None) -> "IdentityPlusLowRank":
        """The same operator with ``c``, ``U``, ``V`` moved to ``device`` / cast to ``dtype``."""
        if (device is None or torch.device(device) == self.device) and (dtype is None or dtype == self.dtype):
            return self
        return IdentityPlusLowRank(
            self.c.to(device=device, dtype=dtype),
            self.U.to(device=device, dtype=dtype),
            self.V.to(device=device, dtype=dtype),
        )

    def to_dense(self, max_dim: int = 4096) -> Tensor:
        """``c·I + U Vᵀ`` as a ``D × D`` tensor (ValueError when ``D > max_dim``)."""
        self._check_dense_size(max_dim)
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return self.c * eye + self.U @ self.V.mT

    # ---------------------------------------------------------------------- the reduction
    def _reduced(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(Q, K, c)`` in the working dtype (≥ float32): ``M = c·(I − QQᵀ) + Q K Qᵀ``."""
        wd = work_dtype(self.dtype)
        U, V, c = self.U.to(wd), self.V.to(wd), self.c.to(wd)
        Q = orthonormal_span(torch.cat([U, V], 1))
        K = c * torch.eye(Q.shape[1], dtype=wd, device=Q.device) + (Q.mT @ U) @ (V.mT @ Q)
        return Q, K, c

    def reduce(self) -> Tuple[Tensor, Tensor]:
        """``(Q, K)``: ``Q`` orthonormal basis of ``span([U, V])`` (``D × k``, ``k ≤ min(D, 2R)``,
        numerically dependent directions dropped) and ``K = c·I_k + (QᵀU)(VᵀQ)``, so that
        ``M = c·(I − Q Qᵀ) + Q K Qᵀ``. Computed in ≥ float32, returned in the operator's dtype."""
        Q, K, _ = self._reduced()
        return Q.to(self.dtype), K.to(self.dtype)

    def _spectrum(self, S_K: Tensor, c: Tensor, k: int) -> Tensor:
        """All distinct singular values of ``M``: those of ``K``, plus ``|c|`` when ``k < D``."""
        return torch.cat([S_K, c.abs().reshape(1)]) if k < self.dim else S_K

    def pinv(self, rcond: Optional[float] = None) -> "IdentityPlusLowRank":
        """Moore–Penrose pseudo-inverse ``M† = c⁺·(I − QQᵀ) + Q K† Qᵀ = c⁺·I + Q (K† − c⁺·I_k) Qᵀ``.

        Exact for every ``c`` and every rank (no Woodbury shortcut, so singular ``M`` is fine).
        Singular values ``σ ≤ rcond · σ_max(M)`` are treated as zero — the same rule, and the same
        default ``rcond = eps · D``, as ``torch.linalg.pinv(M, rtol=rcond)``; with the default, also those
        below the round-off of forming ``M``, ``eps · D · (|c| + ‖U‖‖V‖)`` (an ``M`` that cancels to zero
        has ``M† = 0``, not ``1/round-off``). ``c⁺ = 1/c`` unless ``|c|`` falls under the threshold (then 0).
        The result has rank ``k ≤ 2R``.
        """
        Q, K, c = self._reduced()
        k, wd = Q.shape[1], Q.dtype
        W, S, Zh = torch.linalg.svd(K)
        spectrum = self._spectrum(S, c, k)
        smax = spectrum.max() if spectrum.numel() else c.new_zeros(())
        rtol = default_rtol(wd, self.dim) if rcond is None else float(rcond)
        # Round-off floor: the reduced matrix K carries errors of order eps·(|c| + ‖U‖‖V‖) from forming
        # c·I + U Vᵀ, so values below that are noise even when σ_max itself is (M = 0 up to cancellation).
        floor = default_rtol(wd, self.dim) * (c.abs() + self.U.norm() * self.V.norm()).to(wd)
        tol = torch.maximum(rtol * smax, floor) if rcond is None else rtol * smax
        S_plus = torch.where(S > tol, 1.0 / torch.where(S > tol, S, torch.ones_like(S)), torch.zeros_like(S))
        K_plus = (Zh.mT * S_plus) @ W.mT
        zero = torch.zeros_like(c)
        c_plus = zero if k == self.dim else torch.where(c.abs() > tol, 1.0 / torch.where(c == 0, 1.0, c), zero)
        eye = torch.eye(k, dtype=wd, device=Q.device)
        return IdentityPlusLowRank(c_plus, Q @ (K_plus - c_plus * eye), Q).to(dtype=self.dtype)

    def svd(self, k: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """The top-``k`` singular triplets of ``M``: ``(U_k, S_k, V_k)``, ``S_k`` descending, ``M V_k = U_k diag(S_k)``.

        From ``K = W Σ Zᵀ``: the triplets ``(Q W, Σ, Q Z)``, plus ``|c|`` with multiplicity ``D − k_red``
        on the complement of ``span(Q)`` (right vector ``q``, left vector ``sign(c)·q``; ties with
        ``|c|`` go to ``K``'s triplets). Complement vectors are only built when the top ``k`` need them.
        ``k = None`` means ``k = k_red`` (the reduced dimension ``Q.shape[1]``, so ``c = 0`` gives the
        full thin SVD of ``M``); ``k > D`` is clipped to ``D``; ``k = D`` gives the full SVD.
        """
        Q, K, c = self._reduced()
        kr = Q.shape[1]
        k = check_k(k, self.dim, kr)
        W, S, Zh = torch.linalg.svd(K)
        left, right = Q @ W, Q @ Zh.mT
        above = int((S >= c.abs()).sum())  # K's values ahead of the |c| block (S is descending)
        top = min(k, above)
        p = min(k - top, self.dim - kr)
        rest = k - top - p
        parts = [(left[:, :top], S[:top], right[:, :top])]
        if p:
            Z = complement_basis(Q, p)
            sign = torch.where(c < 0, -1.0, 1.0).to(Z.dtype)
            parts.append((sign * Z, c.abs().expand(p), Z))
        parts.append((left[:, above:above + rest], S[above:above + rest], right[:, above:above + rest]))
        U_k, S_k, V_k = (torch.cat([part[i] for part in parts], -1) for i in range(3))
        return U_k.to(self.dtype), S_k.to(self.dtype), V_k.to(self.dtype)

    def power(self, n: int) -> "IdentityPlusLowRank":
        """``Mⁿ = cⁿ·(I − QQᵀ) + Q Kⁿ Qᵀ = cⁿ·I + Q (Kⁿ − cⁿ·I_k) Qᵀ`` for an integer ``n ≥ 0`` (``M⁰ = I``)."""
        n = check_power(n)
        if n == 0:
            return self._identity_like()
        if n == 1:
            return self
        Q, K, c = self._reduced()
        cn = c**n
        eye = torch.eye(Q.shape[1], dtype=Q.dtype, device=Q.device)
        return IdentityPlusLowRank(cn, Q @ (torch.linalg.matrix_power(K, n) - cn * eye), Q).to(dtype=self.dtype)

    def cond(self) -> float:
        """``σ_max(M) / σ_min(M)`` over ``σ(K) ∪ {|c|}`` (``inf`` when singular)."""
        Q, K, c = self._reduced()
        spectrum = self._spectrum(torch.linalg.svdvals(K), c, Q.shape[1])
        return ratio(float(spectrum.max()), float(spectrum.min()))

    def capacitance(self) -> Tensor:
        """``K = c·I_R + Vᵀ U``: ``M`` is invertible iff ``c ≠ 0`` (for ``R < D``) and ``K`` is."""
        return self.c * torch.eye(self.rank, dtype=self.dtype, device=self.device) + self.V.mT @ self.U

    def check_invertible(self, name: str = "the operator") -> None:
        """``ValueError`` naming the identity coefficient unless ``M`` is invertible."""
        check_invertible(self.c, self.capacitance(), self.dim, name)

    def solve(self, z: Tensor) -> Tensor:
        """``M⁻¹ z`` by the Woodbury identity ``M⁻¹ = c⁻¹·(I − U K⁻¹ Vᵀ)``, ``K = c·I + Vᵀ U``; rows ``Z``:
        ``(Z − (Z V K⁻ᵀ) Uᵀ) / c``. Exact and differentiable; one ``R × R`` solve."""
        z, dtype = self._vectors(z)
        y = torch.linalg.solve(self.capacitance().to(dtype), (z @ self.V.to(dtype)).mT).mT
        return (z - y @ self.U.to(dtype).mT) / self.c.to(dtype)

    def logabsdet(self) -> Tensor:
        """``log|det M| = (D − R)·log|c| + log|det K|`` (matrix determinant lemma; differentiable)."""
        return (self.dim - self.rank) * torch.log(self.c.abs()) + torch.linalg.slogdet(self.capacitance()).logabsdet

    def slogdet(self) -> Tuple[Tensor, Tensor]:
        """``det M = c^{D−k} · det K`` as ``(sign, log|det M|)`` (in the working dtype, ≥ float32)."""
        Q, K, c = self._reduced()
        sign, logabs = torch.linalg.slogdet(K)
        m = self.dim - Q.shape[1]
        if m:
            sign = sign * torch.sign(c) ** m
            logabs = logabs + m * torch.log(c.abs())
        return sign, logabs

    # ------------------------------------------------------------------------ recompression
    def compress(self, tol: Optional[float] = None, rank: Optional[int] = None) -> Tuple["IdentityPlusLowRank", float]:
        """Recompress ``U Vᵀ = Q_U (R_U R_Vᵀ) Q_Vᵀ`` with ``R_U R_Vᵀ = W Σ Zᵀ`` (thin QRs, small SVD).

        Keeps the singular values ``σ_i > tol · σ_max`` (default ``tol = eps · min(D, R)`` of the
        working dtype), at most ``rank`` of them, and returns ``(c·I + U' V'ᵀ, dropped)`` with
        ``U' = Q_U W_k diag(σ_k)``, ``V' = Q_V Z_k`` (orthonormal ``V'``) and
        ``dropped = sqrt(Σ dropped σᵢ²)``, exactly the Frobenius norm of the change. ``c`` is untouched.
        """
        if self.rank == 0:
            return self, 0.0
        wd = work_dtype(self.dtype)
        Qu, Ru = torch.linalg.qr(self.U.to(wd))
        Qv, Rv = torch.linalg.qr(self.V.to(wd))
        W, S, Zh = torch.linalg.svd(Ru @ Rv.mT)
        keep = truncation(S, tol, rank, default_rtol(wd, min(self.dim, self.rank)))
        dropped = float(torch.linalg.vector_norm(S[keep:]))
        U = Qu @ (W[:, :keep] * S[:keep])
        V = Qv @ Zh[:keep].mT
        return IdentityPlusLowRank(self.c, U.to(self.dtype), V.to(self.dtype)), dropped

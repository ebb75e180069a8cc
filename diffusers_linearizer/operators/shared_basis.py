"""Shared-basis operators: ``M = a·I + U X Vᵀ`` with ``U, V`` common to a family of operators.

Operators that share ``U`` and ``V`` (the *same tensor objects*) multiply in ``R × R`` coordinates
(``docs/math.md`` §1):

    (a·I + U X Vᵀ)(b·I + U Y Vᵀ) = ab·I + U (a·Y + b·X + X G Y) Vᵀ,    G = Vᵀ U,

so after one ``O(D·R²)`` Gram matrix every product costs ``O(R³)`` and the rank never exceeds ``R``.
Operators on different bases fall back to :class:`IdentityPlusLowRank` algebra.
"""

from __future__ import annotations

import weakref
from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import FactoredOperator, LinearOperator, as_scalar, check_factor, check_invertible
from .dense import DenseOperator
from .lowrank import IdentityPlusLowRank

__all__ = ["SharedBasisOperator"]


class _Basis:
    """A converted copy of a basis ``(U, V)`` (and its Gram matrix), remembered while in use."""

    __slots__ = ("U", "V", "gram", "source", "__weakref__")

    def __init__(self, U: Tensor, V: Tensor, gram: Optional[Tensor], source: Tuple[Tensor, Tensor]):
        self.U, self.V, self.gram = U, V, gram
        self.source = (weakref.ref(source[0]), weakref.ref(source[1]))


# (id(U), id(V), device, dtype) → the converted basis; entries vanish with the operators using them.
# Not a speed cache: operators share a basis only if they hold the *same* U and V tensors, so converting
# a family of them (``.to(dtype)``) must hand every member the same converted copy, or their products
# would silently leave the shared-basis algebra. (The package's one result cache is the scheduler's.)
_CONVERTED: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


def _convert_basis(U: Tensor, V: Tensor, gram: Optional[Tensor], device, dtype) -> _Basis:
    """``(U, V, gram)`` on ``device`` / in ``dtype`` — the same converted tensors for every operator
    that converts the same ``(U, V)`` the same way, so that converted operators still share a basis."""
    key = (id(U), id(V), str(device), dtype)
    basis = _CONVERTED.get(key)
    if basis is not None and basis.source[0]() is U and basis.source[1]() is V:
        return basis
    U_new, V_new = U.to(device=device, dtype=dtype), V.to(device=device, dtype=dtype)
    gram = V_new.mT @ U_new if gram is None else gram.to(device=device, dtype=dtype)
    basis = _Basis(U_new, V_new, gram, (U, V))
    _CONVERTED[key] = basis
    return basis


class SharedBasisOperator(FactoredOperator):
    """``M = a·I + U X Vᵀ`` with ``U, V ∈ R^{D×R}`` (a shared basis) and ``X ∈ R^{R×R}``.

    ``gram`` (optional) is ``G = Vᵀ U``; pass it when many operators share ``U, V`` so it is computed
    once (it is otherwise computed on first use and handed on to products, sums and transposes).
    The dtype is the widest of ``U``, ``V``, ``X``; ``a`` is kept as a 0-dim tensor of it.
    ``rank`` is ``R``. Sums, products and scalar multiples of operators sharing the basis stay
    shared-basis; ``pinv``, ``svd``, ``compress``, ``reduce``, ``cond`` and ``slogdet`` go through
    :meth:`to_lowrank` and return ``IdentityPlusLowRank`` results.
    """

    _level = 0

    @property
    def c(self) -> Tensor:
        """The identity coefficient, under the name ``IdentityPlusLowRank`` uses (``docs/math.md`` §0)."""
        return self.a

    def __init__(self, a, X: Tensor, U: Tensor, V: Tensor, gram: Optional[Tensor] = None):
        U, V, X = check_factor("U", U), check_factor("V", V), check_factor("X", X)
        if U.shape != V.shape:
            raise ValueError(
                f"Expected U and V of the same shape (D, R), got U {tuple(U.shape)} and V {tuple(V.shape)}."
            )
        R = U.shape[1]
        if X.shape != (R, R):
            raise ValueError(f"Expected X of shape (R, R) = ({R}, {R}) to match U, V, got {tuple(X.shape)}.")
        if gram is not None and check_factor("gram", gram).shape != (R, R):
            raise ValueError(f"Expected gram = VᵀU of shape ({R}, {R}), got {tuple(gram.shape)}.")
        if U.device != V.device:
            raise ValueError(f"Expected U and V on the same device, got {U.device} and {V.device}.")
        dtype = torch.promote_types(torch.promote_types(U.dtype, V.dtype), X.dtype)
        self.U, self.V = U.to(dtype), V.to(dtype)
        self.X = X.to(device=U.device, dtype=dtype)
        self.a = as_scalar("a", a, dtype, U.device)
        self._gram = None if gram is None else gram.to(device=U.device, dtype=dtype)
        self._basis: Optional[_Basis] = None  # keeps a converted basis alive (see `to`)

    @classmethod
    def identity(
        cls,
        dim: int,
        dtype: Optional[torch.dtype] = None,
        device=None,
        *,
        basis: Optional[Tuple[Tensor, Tensor]] = None,
    ) -> "SharedBasisOperator":
        """``I`` (``a = 1``, ``X = 0``) on ``basis = (U, V)``, or on an empty basis (``R = 0``)."""
        if basis is None:
            empty = torch.zeros(dim, 0, dtype=dtype or torch.get_default_dtype(), device=device)
            basis = (empty, empty)
        U, V = basis
        if U.shape[0] != dim:
            raise ValueError(f"Expected a basis with {dim} rows, got U of shape {tuple(U.shape)}.")
        return cls(1.0, U.new_zeros(U.shape[1], U.shape[1]), U, V)

    @property
    def gram(self) -> Tensor:
        """``G = Vᵀ U`` (``R × R``), computed once per basis family."""
        if self._gram is None:
            self._gram = self.V.mT @ self.U
        return self._gram

    def _new(self, a, X: Tensor, U: Optional[Tensor] = None, V: Optional[Tensor] = None, gram=None):
        """An operator on this basis (or the given one) that keeps the Gram matrix and the basis holder."""
        same = U is None
        out = SharedBasisOperator(
            a, X, self.U if same else U, self.V if same else V, gram=self._gram if same else gram
        )
        out._basis = self._basis
        return out

    def _shares_basis(self, other: LinearOperator) -> bool:
        """True when ``other`` is shared-basis on the very same ``U`` and ``V`` tensors."""
        return isinstance(other, SharedBasisOperator) and self.U is other.U and self.V is other.V

    # ------------------------------------------------------------------------------ algebra
    def apply(self, z: Tensor) -> Tensor:
        """``M z = a·z + U X (Vᵀ z)``; for rows ``Z``: ``a·Z + ((Z V) Xᵀ) Uᵀ``."""
        z, dtype = self._vectors(z)
        return self.a.to(dtype) * z + ((z @ self.V.to(dtype)) @ self.X.to(dtype).mT) @ self.U.to(dtype).mT

    def transpose(self) -> "SharedBasisOperator":
        """``Mᵀ = a·I + V Xᵀ Uᵀ``: basis ``(V, U)``, whose Gram matrix is ``Uᵀ V = Gᵀ``."""
        gram = None if self._gram is None else self._gram.mT
        out = SharedBasisOperator(self.a, self.X.mT, self.V, self.U, gram=gram)
        out._basis = self._basis
        return out

    def add_identity(self, s) -> "SharedBasisOperator":
        """``M + s·I = (a + s)·I + U X Vᵀ``."""
        return self._new(self.a + as_scalar("s", s, self.dtype, self.device), self.X)

    def _scale(self, s: Tensor) -> "SharedBasisOperator":
        """``s·M = (s·a)·I + U (s·X) Vᵀ``."""
        return self._new(s * self.a, s * self.X)

    def _matmul(self, other: "SharedBasisOperator") -> "SharedBasisOperator":
        """``(a·I + U X Vᵀ)(b·I + U Y Vᵀ) = ab·I + U (a·Y + b·X + X G Y) Vᵀ``."""
        a, X, b, Y = self.a, self.X, other.a, other.X
        return self._new(a * b, a * Y + b * X + X @ self.gram @ Y)

    def _add(self, other: "SharedBasisOperator") -> "SharedBasisOperator":
        """``(a·I + U X Vᵀ) + (b·I + U Y Vᵀ) = (a + b)·I + U (X + Y) Vᵀ``."""
        return self._new(self.a + other.a, self.X + other.X)

    def _lift(self, level: int) -> LinearOperator:
        if level == 0:
            return self
        if level == 1:
            return self.to_lowrank()
        return DenseOperator(self.to_dense(max_dim=self.dim))

    def _identity_like(self) -> "SharedBasisOperator":
        return self._new(torch.ones_like(self.a), torch.zeros_like(self.X))

    def to(self, device=None, dtype=None) -> "SharedBasisOperator":
        """The same operator on ``device`` / in ``dtype``.

        Operators that shared a basis still share one after the same conversion: the converted
        ``U``, ``V`` (and Gram matrix) are remembered while any converted operator is alive.
        """
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if device == self.device and dtype == self.dtype:
            return self
        basis = _convert_basis(self.U, self.V, self._gram, device, dtype)
        out = SharedBasisOperator(
            self.a.to(device=device, dtype=dtype), self.X.to(device=device, dtype=dtype), basis.U, basis.V,
            gram=basis.gram,
        )
        out._basis = basis
        return out

    def to_dense(self, max_dim: int = 4096) -> Tensor:
        """``a·I + U X Vᵀ`` as a ``D × D`` tensor (ValueError when ``D > max_dim``)."""
        self._check_dense_size(max_dim)
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return self.a * eye + (self.U @ self.X) @ self.V.mT

    def to_lowrank(self) -> IdentityPlusLowRank:
        """``IdentityPlusLowRank(a, U X, V)`` — the same matrix, no longer tied to the basis."""
        return IdentityPlusLowRank(self.a, self.U @ self.X, self.V)

    # ------------------------------------------- inverse and determinant (exact, differentiable)
    def capacitance(self) -> Tensor:
        """``K = a·I_R + G X`` (``G = Vᵀ U``): ``M`` is invertible iff ``a ≠ 0`` (for ``R < D``) and ``K`` is."""
        eye = torch.eye(self.rank, dtype=self.dtype, device=self.device)
        return self.a * eye + self.gram @ self.X

    def check_invertible(self, name: str = "the operator") -> None:
        """``ValueError`` naming the identity coefficient unless ``M`` is invertible."""
        check_invertible(self.a, self.capacitance(), self.dim, name)

    def solve(self, z: Tensor) -> Tensor:
        """``M⁻¹ z`` by the Woodbury identity ``M⁻¹ = a⁻¹·(I − U X K⁻¹ Vᵀ)``, ``K = a·I + G X``.

        Rows ``Z`` of shape ``(N, D)``: ``(Z − (Z V K⁻ᵀ) Xᵀ Uᵀ) / a``. One ``R × R`` solve, no ``D × D``
        matrix; exact and differentiable (also with respect to ``a``, ``X``, ``U``, ``V``).
        """
        z, dtype = self._vectors(z)
        U, V, X, a = (t.to(dtype) for t in (self.U, self.V, self.X, self.a))
        K = self.capacitance().to(dtype)
        y = torch.linalg.solve(K, (z @ V).mT).mT
        return (z - (y @ X.mT) @ U.mT) / a

    def logabsdet(self) -> Tensor:
        """``log|det M| = (D − R)·log|a| + log|det K|`` (matrix determinant lemma; differentiable)."""
        return (self.dim - self.rank) * torch.log(self.a.abs()) + torch.linalg.slogdet(self.capacitance()).logabsdet

    # ------------------------------------------- decompositions (through the low-rank form)
    def reduce(self) -> Tuple[Tensor, Tensor]:
        """``(Q, K)`` of :meth:`to_lowrank` (``Q`` spans ``[U X, V]``)."""
        return self.to_lowrank().reduce()

    def pinv(self, rcond: Optional[float] = None) -> IdentityPlusLowRank:
        """``M†`` as an ``IdentityPlusLowRank`` (see :meth:`IdentityPlusLowRank.pinv`)."""
        return self.to_lowrank().pinv(rcond=rcond)

    def svd(self, k: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Top-``k`` singular triplets (see :meth:`IdentityPlusLowRank.svd`)."""
        return self.to_lowrank().svd(k)

    def compress(self, tol: Optional[float] = None, rank: Optional[int] = None) -> Tuple[IdentityPlusLowRank, float]:
        """Recompression of :meth:`to_lowrank` (the result leaves the shared basis)."""
        return self.to_lowrank().compress(tol=tol, rank=rank)

    def cond(self) -> float:
        """2-norm condition number (see :meth:`IdentityPlusLowRank.cond`)."""
        return self.to_lowrank().cond()

    def slogdet(self) -> Tuple[Tensor, Tensor]:
        """``(sign, log|det M|)`` (see :meth:`IdentityPlusLowRank.slogdet`)."""
        return self.to_lowrank().slogdet()

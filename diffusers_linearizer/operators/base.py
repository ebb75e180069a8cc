"""Shared machinery of the structured linear operators.

Convention (``docs/design.md``): an operator ``M`` acts on column vectors ``z ∈ R^D``; a batch of
shape ``(..., D)`` is mapped row by row, ``Z ↦ Z Mᵀ``. Operators are immutable: every method returns
a new object (possibly sharing tensors with the old one).

The three concrete classes form a ladder of generality,

    SharedBasisOperator (level 0) ⊂ IdentityPlusLowRank (level 1) ⊂ DenseOperator (level 2),

and a binary operation between two operators first lifts both to the more general one (two
shared-basis operators on different bases meet at level 1), then promotes both to the wider dtype.
"""

from __future__ import annotations

import abc
import math
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["LinearOperator"]


# ---------------------------------------------------------------------------------------- helpers
def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype decompositions run in: at least float32 (half types are upcast)."""
    return torch.promote_types(dtype, torch.float32)


def check_factor(name: str, x, ndim: int = 2) -> Tensor:
    """``x`` as a floating-point tensor with ``ndim`` dimensions, else a ValueError."""
    if not isinstance(x, Tensor):
        raise ValueError(f"Expected {name} to be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim != ndim:
        raise ValueError(f"Expected {name} to be a {ndim}-D tensor, got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise ValueError(f"Expected {name} to have a floating-point dtype, got {x.dtype}.")
    return x


def as_scalar(name: str, s, dtype: torch.dtype, device) -> Tensor:
    """A Python real number or 0-dim tensor as a 0-dim tensor of ``dtype`` on ``device``."""
    if isinstance(s, Tensor):
        if s.ndim != 0:
            raise ValueError(f"Expected {name} to be a number or a 0-dim tensor, got shape {tuple(s.shape)}.")
        return s.to(device=device, dtype=dtype)
    if isinstance(s, numbers.Real):
        return torch.tensor(float(s), dtype=dtype, device=device)
    raise ValueError(f"Expected {name} to be a real number or a 0-dim tensor, got {type(s).__name__}.")


def check_invertible(coefficient: Tensor, capacitance: Tensor, dim: int, name: str = "the operator") -> None:
    """``ValueError`` unless ``c·I_D + U X Vᵀ`` is invertible, judged from its identity coefficient ``c``
    and its ``R × R`` capacitance matrix ``K = c·I_R + (Vᵀ U) X``: ``det = c^{D−R}·det K``, so it is
    invertible iff ``c ≠ 0`` (when ``R < D``) and ``K`` is well conditioned in its dtype."""
    c = float(coefficient)
    rank = capacitance.shape[0]
    if rank < dim and not abs(c) > 0:
        raise ValueError(
            f"{name} is not invertible: its identity coefficient is {c:g}, so it has rank ≤ R = {rank} < D = {dim}. "
            "A likelihood (or an inverse) needs a core with an identity term (core_identity=True)."
        )
    if rank:
        with torch.no_grad():
            cond = float(torch.linalg.cond(capacitance.detach().to(work_dtype(capacitance.dtype))))
        limit = 1.0 / torch.finfo(work_dtype(capacitance.dtype)).eps
        if not cond < limit:
            raise ValueError(
                f"{name} is numerically singular: identity coefficient {c:g}, condition number of its "
                f"R × R capacitance matrix {cond:.3g} (limit {limit:.3g})."
            )


def is_scalar(s) -> bool:
    """True for the scalars ``op * s`` accepts: real numbers and 0-dim tensors."""
    return (isinstance(s, numbers.Real) and not isinstance(s, bool)) or (isinstance(s, Tensor) and s.ndim == 0)


def check_power(n) -> int:
    """``n`` as a non-negative Python int."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"power(n) expects an integer n ≥ 0, got {n!r} (for negative powers use pinv().power(-n)).")
    return int(n)


def check_k(k, dim: int, default: int) -> int:
    """The number of singular triplets to return: ``default`` when None, clipped to ``dim``."""
    if k is None:
        return min(default, dim)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise ValueError(f"svd(k) expects k = None or an integer ≥ 0, got {k!r}.")
    return min(int(k), dim)


def default_rtol(dtype: torch.dtype, size: int) -> float:
    """``eps · size``, the usual numerical-rank threshold (the default of ``torch.linalg.pinv``)."""
    return torch.finfo(dtype).eps * max(size, 1)


def truncation(S: Tensor, tol: Optional[float], rank: Optional[int], default_tol: float) -> int:
    """How many of the descending values ``S`` survive ``S > tol·S[0]`` and the cap ``rank``."""
    tol = default_tol if tol is None else float(tol)
    if tol < 0:
        raise ValueError(f"compress expects tol ≥ 0, got {tol}.")
    keep = int((S > tol * S[0]).sum()) if S.numel() and S[0] > 0 else 0
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 0:
            raise ValueError(f"compress expects rank = None or an integer ≥ 0, got {rank!r}.")
        keep = min(keep, int(rank))
    return keep


def ratio(smax: float, smin: float) -> float:
    """``smax / smin`` with ``inf`` for a zero ``smin`` (a singular operator)."""
    return math.inf if smin <= 0 else smax / smin


# ----------------------------------------------------------------------------------- the base class
class LinearOperator(abc.ABC):
    """A structured ``D × D`` matrix ``M`` with matrix-free application and exact small algebra.

    Subclasses implement the primitives (``apply``, ``transpose``, ``add_identity``, ``_scale``,
    ``_matmul``, ``_add``, ``_lift``, the decompositions); the operator syntax lives here:
    ``a @ b`` (composition), ``a + b``, ``a - b``, ``-a``, ``s * a``, ``a * s``, ``a / s``, ``a.T``.
    """

    _level: int = 2  # position on the ladder shared-basis (0) ⊂ low-rank (1) ⊂ dense (2)

    # ------------------------------------------------------------------ primitives (subclasses)
    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """``D``, the size of the square matrix."""

    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """Columns of the low-rank factor (``D`` for a dense operator)."""

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        """The dtype of the stored factors."""

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """The device of the stored factors."""

    @abc.abstractmethod
    def apply(self, z: Tensor) -> Tensor:
        """``M z`` for every vector ``z`` in the last dimension of ``z`` (shape ``(..., D)``)."""

    def apply_images(self, z: Tensor, inverse: bool = False) -> Tensor:
        """``M z`` (``M⁻¹ z`` with ``inverse``, through ``solve``) for image-shaped latents ``(N, C, H, W)``:
        flattened, computed on the operator's device in its dtype (float64 for a collapse), returned in
        ``z``'s device, dtype and shape. Differentiable in ``z`` and in the operator's factors."""
        flat = z.flatten(1).to(device=self.device, dtype=self.dtype)
        out = self.solve(flat) if inverse else self.apply(flat)
        return out.to(device=z.device, dtype=z.dtype).view_as(z)

    @abc.abstractmethod
    def transpose(self) -> "LinearOperator":
        """``Mᵀ``."""

    @abc.abstractmethod
    def add_identity(self, s) -> "LinearOperator":
        """``M + s·I``."""

    @abc.abstractmethod
    def to(self, device=None, dtype=None) -> "LinearOperator":
        """The same operator with its tensors on ``device`` / in ``dtype``."""

    @abc.abstractmethod
    def to_dense(self, max_dim: int = 4096) -> Tensor:
        """``M`` as an explicit ``D × D`` tensor (refused for ``D > max_dim``)."""

    @abc.abstractmethod
    def _scale(self, s: Tensor) -> "LinearOperator":
        """``s·M`` for a 0-dim tensor ``s``."""

    @abc.abstractmethod
    def _matmul(self, other: "LinearOperator") -> "LinearOperator":
        """``M·N`` for ``other`` of the same class and dtype (and the same basis, if shared)."""

    @abc.abstractmethod
    def _add(self, other: "LinearOperator") -> "LinearOperator":
        """``M + N`` for ``other`` of the same class and dtype (and the same basis, if shared)."""

    @abc.abstractmethod
    def _lift(self, level: int) -> "LinearOperator":
        """The same matrix as an operator of ``level`` ≥ this class's level."""

    @abc.abstractmethod
    def _identity_like(self) -> "LinearOperator":
        """The identity in this operator's form, dtype and device."""

    @abc.abstractmethod
    def reduce(self) -> Tuple[Tensor, Tensor]:
        """``(Q, K)`` with ``M = c·(I − Q Qᵀ) + Q K Qᵀ`` and orthonormal ``Q`` (``docs/math.md`` §1)."""

    @abc.abstractmethod
    def pinv(self, rcond: Optional[float] = None) -> "LinearOperator":
        """The Moore–Penrose pseudo-inverse ``M†``."""

    @abc.abstractmethod
    def svd(self, k: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Top-``k`` singular triplets ``(U_k, S_k, V_k)``, ``S_k`` descending."""

    @abc.abstractmethod
    def compress(self, tol: Optional[float] = None, rank: Optional[int] = None) -> Tuple["LinearOperator", float]:
        """A cheaper representation and the Frobenius norm of what was dropped."""

    @abc.abstractmethod
    def cond(self) -> float:
        """The 2-norm condition number ``σ_max / σ_min`` (``inf`` when singular)."""

    @abc.abstractmethod
    def slogdet(self) -> Tuple[Tensor, Tensor]:
        """``(sign, log|det M|)``."""

    def _shares_basis(self, other: "LinearOperator") -> bool:
        """Whether two shared-basis operators can be combined without leaving their basis."""
        return False

    # --------------------------------------------------------------------- operator syntax
    @property
    def T(self) -> "LinearOperator":
        """``Mᵀ`` (same as :meth:`transpose`)."""
        return self.transpose()

    def _coerce(self, other: "LinearOperator") -> Tuple["LinearOperator", "LinearOperator"]:
        """Both operands lifted to a common class and promoted to the wider dtype."""
        if self.dim != other.dim:
            raise ValueError(f"Operator dimensions do not match: {self.dim} vs {other.dim}.")
        level = max(self._level, other._level)
        if level == 0 and not self._shares_basis(other):
            level = 1
        a, b = self._lift(level), other._lift(level)
        dtype = torch.promote_types(a.dtype, b.dtype)
        return a.to(dtype=dtype), b.to(dtype=dtype)

    def __matmul__(self, other):
        if isinstance(other, Tensor):
            raise TypeError(
                f"{type(self).__name__} @ Tensor is not defined: use op.apply(z) to apply the operator to "
                "vectors z of shape (..., D)."
            )
        if not isinstance(other, LinearOperator):
            return NotImplemented
        a, b = self._coerce(other)
        return a._matmul(b)

    def __rmatmul__(self, other):
        if isinstance(other, Tensor):
            raise TypeError(
                f"Tensor @ {type(self).__name__} is not defined: for row vectors Z (N, D) use "
                "op.T.apply(Z) to get Z M."
            )
        return NotImplemented

    def __add__(self, other):
        if not isinstance(other, LinearOperator):
            return NotImplemented
        a, b = self._coerce(other)
        return a._add(b)

    def __sub__(self, other):
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return self + (-other)

    def __neg__(self) -> "LinearOperator":
        return self * -1.0

    def __mul__(self, s):
        if not is_scalar(s):
            return NotImplemented
        return self._scale(as_scalar("s", s, self.dtype, self.device))

    __rmul__ = __mul__

    def __truediv__(self, s):
        if not is_scalar(s):
            return NotImplemented
        return self._scale(1.0 / as_scalar("s", s, self.dtype, self.device))

    # ------------------------------------------------------------------ generic algebra
    def power(self, n: int) -> "LinearOperator":
        """``Mⁿ`` for an integer ``n ≥ 0`` by repeated squaring (``M⁰ = I``).

        About ``2·log₂ n`` products; the form of ``M`` is kept (shared-basis stays shared-basis).
        """
        n = check_power(n)
        result, square = None, self
        while n:
            if n & 1:
                result = square if result is None else result @ square
            n >>= 1
            if n:
                square = square @ square
        return self._identity_like() if result is None else result

    def det(self) -> Tensor:
        """``det M = sign · exp(logabsdet)`` from :meth:`slogdet` (may over/underflow; prefer slogdet)."""
        sign, logabsdet = self.slogdet()
        return sign * torch.exp(logabsdet)

    # ------------------------------------------------------------------------ checks
    def _check_vectors(self, z) -> Tensor:
        if not isinstance(z, Tensor):
            raise TypeError(f"apply expects a torch.Tensor of shape (..., {self.dim}), got {type(z).__name__}.")
        if z.ndim == 0 or z.shape[-1] != self.dim:
            raise ValueError(f"apply expects vectors of shape (..., {self.dim}), got shape {tuple(z.shape)}.")
        return z

    def _vectors(self, z) -> Tuple[Tensor, torch.dtype]:
        """``z`` checked and promoted with the operator's dtype, and that common dtype."""
        z = self._check_vectors(z)
        dtype = torch.promote_types(z.dtype, self.dtype)
        return z.to(dtype), dtype

    def _check_dense_size(self, max_dim: int) -> None:
        if self.dim > max_dim:
            raise ValueError(
                f"to_dense would materialise a {self.dim}×{self.dim} matrix (D = {self.dim}), above "
                f"max_dim = {max_dim}; pass to_dense(max_dim={self.dim}) to allow it, or use apply() for "
                "matrix-free products."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, rank={self.rank}, dtype={self.dtype}, device={self.device})"


class FactoredOperator(LinearOperator):
    """A ``LinearOperator`` stored with a ``D × R`` tensor (the attribute named by ``_factor``: ``U`` for
    ``IdentityPlusLowRank`` and ``SharedBasisOperator``, the ``D × D`` ``matrix`` of ``DenseOperator``), from
    which ``dim``, ``rank``, ``dtype`` and ``device`` are read."""

    _factor = "U"

    @property
    def dim(self) -> int:
        return getattr(self, self._factor).shape[0]

    @property
    def rank(self) -> int:
        return getattr(self, self._factor).shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self, self._factor).dtype

    @property
    def device(self) -> torch.device:
        return getattr(self, self._factor).device

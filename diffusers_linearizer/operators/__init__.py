"""Structured ``D × D`` linear operators with exact small-matrix algebra (``docs/math.md`` §1).

* :class:`IdentityPlusLowRank` — ``M = c·I + U Vᵀ``;
* :class:`SharedBasisOperator` — ``M = a·I + U X Vᵀ`` on a basis ``(U, V)`` shared by many operators;
* :class:`DenseOperator` — an explicit matrix, for tiny ``D``;
* :class:`CircularConvolution` — a circular convolution of image-shaped latents, diagonalised by the 2-D FFT.

All follow the column-vector convention (``apply`` maps ``(..., D) → (..., D)``, ``z ↦ M z``) and the
common API of :class:`LinearOperator` (``docs/design.md``).
"""

from .base import LinearOperator
from .convolution import CircularConvolution
from .dense import DenseOperator
from .lowrank import IdentityPlusLowRank
from .shared_basis import SharedBasisOperator

__all__ = ["LinearOperator", "IdentityPlusLowRank", "SharedBasisOperator", "DenseOperator", "CircularConvolution"]

r"""Projection cores: ``P² = P`` by construction, so ``f(x) = g⁻¹(P g(x))`` is idempotent for every input.

With one network on both sides (``g_x ≡ g_y = g``), ``f ∘ f = g⁻¹ P g g⁻¹ P g = g⁻¹ P² g = f`` exactly — not
only near the training data, as a loss term would give. Every form is a rank-``r`` projection written as

    P = U Wᵀ        with  Wᵀ U = I_r                                      (so P² = U (Wᵀ U) Wᵀ = P)

and handed to the operator algebra as ``IdentityPlusLowRank(0, U, W)``, so collapse, ``pinv``, ``svd`` and
``power`` work unchanged. The three forms (``core_type``):

=========================  ==============================================  =========================================
``projection_orthogonal``  ``P = Q Qᵀ``, ``Q = qr(W₀).Q``                  f(x): the nearest range point in g's metric
``projection_oblique``     ``P = U (VᵀU)⁻¹ Vᵀ``                            range span U, kernel (span V)^⊥
``projection_spectral``    ``P = M diag(m) M⁻¹``, ``m`` binary (top-r)     the paper's form; straight-through mask
=========================  ==============================================  =========================================

**The latent prior on P's range.** Generation is not ``f`` of pixel noise (pixel noise mapped through ``g``
lands far from the latents of data). Every projection core also carries a Gaussian on its range and a small
isotropic one off it — probabilistic PCA in the latent space of ``g``. With ``Q`` an orthonormal basis of
``range(P)``, ``C`` lower-triangular (positive diagonal) and ``σ`` the off-range scale, a latent is

    z = Q C c + σ·e,   c ~ N(0, I_r),  e ~ N(0, I − QQᵀ)

so ``log p(z) = −½‖C⁻¹ Qᵀz‖² − log|det C| − ½‖(I − QQᵀ) z‖²/σ² − (D − r)·log σ − (D/2)·log 2π``, a proper
density on ``R^D``: with ``log|det J_g(x)|`` it is the exact likelihood of ``x`` (the ``projection_likelihood``
objective). Generation draws ``ε ~ N(0, I_D)`` and decodes ``g⁻¹(G ε)`` with the *range sampler*
``G = Q C Qᵀ`` (``G ε = Q C c``, ``c = Qᵀε``): every sample lies in ``range(P)``, so ``f`` leaves it where
it is.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..operators import IdentityPlusLowRank
from .cores import LinearCore, _keep

__all__ = ["PROJECTION_FORMS", "ProjectionCore", "OrthogonalProjectionCore", "ObliqueProjectionCore",
           "SpectralProjectionCore", "check_projection_rank", "straight_through_mask"]

LOG_2PI = math.log(2.0 * math.pi)


def check_projection_rank(rank, dim: int) -> int:
    """``rank`` as an int in ``1 … D − 1`` (rank 0 maps everything to one point, rank D is the identity);
    ``ValueError`` naming the range otherwise."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= dim - 1:
        raise ValueError(f"A projection core needs a rank r in 1 … D − 1 = {dim - 1} (D = C·H·W = {dim}); got {rank!r}.")
    return rank


def straight_through_mask(scores: Tensor, rank: int) -> Tensor:
    r"""The binary top-``rank`` mask of ``scores`` with the straight-through gradient of ``sigmoid(scores)``.

    Forward: ``m_i = 1`` for the ``rank`` largest scores, else 0 (so ``M diag(m) M⁻¹`` is a projection of rank
    exactly ``r``). Backward: ``∂m/∂s = σ'(s)`` — the value is ``m_hard + σ(s) − stopgrad(σ(s))``.
    """
    hard = torch.zeros_like(scores)
    hard[scores.topk(rank).indices] = 1.0
    soft = torch.sigmoid(scores)
    return hard + soft - soft.detach()


class ProjectionCore(LinearCore):
    """Base class: ``P = U Wᵀ`` (``Wᵀ U = I_r``) from :meth:`factors`, and the latent prior on its range.

    Args:
        dim: the latent dimension D.
        rank: r in ``1 … D − 1``.
    """

    time_dependent = False
    form = "projection"

    def __init__(self, dim: int, rank: int):
        super().__init__(dim)
        self.rank = check_projection_rank(rank, dim)
        self.prior_tril = nn.Parameter(torch.zeros(rank, rank))  # strictly lower part of C
        self.prior_log_diag = nn.Parameter(torch.zeros(rank))  # log of C's diagonal
        self.log_noise = nn.Parameter(torch.tensor(math.log(0.1)))  # log σ off the range

    # ------------------------------------------------------------------ the projection
    def factors(self) -> Tuple[Tensor, Tensor]:
        """``(U, W)`` of shape ``(D, r)`` with ``P = U Wᵀ`` and ``Wᵀ U = I_r`` (attached to the parameters)."""
        raise NotImplementedError

    def forward(self, z: Tensor, t=None) -> Tensor:
        """``Z ↦ Z Pᵀ = (Z W) Uᵀ``."""
        self._check(z, t)
        U, W = self.factors()
        return (z @ W.to(z.dtype)) @ U.to(z.dtype).T

    def operators(self, ts, dtype=None, grad=False):
        U, W = (_keep(f, grad) for f in self.factors())
        dtype = dtype or U.dtype
        op = IdentityPlusLowRank(0.0, U.to(dtype), W.to(dtype))
        return [op for _ in ts]

    def range_basis(self) -> Tensor:
        """``Q`` ``(D, r)``: an orthonormal basis of ``range(P)`` (QR of ``U``, in at least float32)."""
        U, _ = self.factors()
        return torch.linalg.qr(U.float() if U.dtype in (torch.float16, torch.bfloat16) else U).Q

    def distance(self, z: Tensor) -> Tensor:
        """``‖z − P z‖`` per sample (``z`` of shape ``(N, D)``): how far a latent is from ``range(P)``; 0 exactly on it."""
        self._check(z, None)
        return (z - self.forward(z)).double().norm(dim=1)

    # ------------------------------------------------------------------ the prior on the range
    def prior_scale(self) -> Tensor:
        """``C`` ``(r, r)``: lower-triangular with diagonal ``exp(prior_log_diag)``."""
        return torch.tril(self.prior_tril, -1) + torch.diag(self.prior_log_diag.exp())

    def sampler(self, dtype: Optional[torch.dtype] = None, grad: bool = False) -> IdentityPlusLowRank:
        """The range sampler ``G = Q C Qᵀ`` as an operator: ``g⁻¹(G ε)``, ``ε ~ N(0, I)``, is a sample, in ``range(P)``."""
        Q, C = self.range_basis(), self.prior_scale().to(torch.promote_types(self.prior_tril.dtype, torch.float32))
        Q, C = _keep(Q, grad), _keep(C, grad)
        dtype = dtype or self.prior_tril.dtype
        return IdentityPlusLowRank(0.0, (Q @ C.to(Q.dtype)).to(dtype), Q.to(dtype))

    def log_prior(self, z: Tensor) -> Tensor:
        r"""``log p(z)`` per sample under ``N(0, Q C Cᵀ Qᵀ + σ²(I − QQᵀ))`` (``z``: ``(N, D)``), in float64."""
        self._check(z, None)
        z = z.double()
        Q, C = self.range_basis().double(), self.prior_scale().double()
        y = z @ Q
        off = z - y @ Q.T
        white = torch.linalg.solve_triangular(C, y.T, upper=False).T
        log_sigma = self.log_noise.double()
        dim, r = self.dim, self.rank
        return (-0.5 * white.square().sum(1) - self.prior_log_diag.double().sum()
                - 0.5 * off.square().sum(1) * torch.exp(-2.0 * log_sigma) - (dim - r) * log_sigma
                - 0.5 * dim * LOG_2PI)

    @torch.no_grad()
    def fit_prior(self, z: Tensor) -> None:
        """Set ``C`` and ``σ`` to their maximum-likelihood values for latents ``z`` ``(N, D)`` with the range fixed:
        ``C Cᵀ = cov(Qᵀz)`` (Cholesky, second moment about 0) and ``σ² = mean ‖(I − QQᵀ) z‖² / (D − r)``."""
        z = z.double()
        Q = self.range_basis().double()
        y = z @ Q
        cov = y.T @ y / z.shape[0] + 1e-8 * torch.eye(self.rank, dtype=torch.float64)
        C = torch.linalg.cholesky(cov)
        self.prior_tril.copy_(torch.tril(C, -1).to(self.prior_tril.dtype))
        self.prior_log_diag.copy_(torch.diagonal(C).log().to(self.prior_log_diag.dtype))
        off = (z - y @ Q.T).square().sum(1).mean() / (self.dim - self.rank)
        self.log_noise.copy_((0.5 * off.clamp_min(1e-12).log()).to(self.log_noise.dtype))

    @torch.no_grad()
    def fit_range(self, z: Tensor) -> None:
        """Point ``range(P)`` at the top-``r`` principal directions of latents ``z`` ``(N, D)`` (about 0)."""
        _, _, Vh = torch.linalg.svd(z.double(), full_matrices=False)
        self._set_range(Vh[: self.rank].T)

    def _set_range(self, basis: Tensor) -> None:
        raise NotImplementedError


class OrthogonalProjectionCore(ProjectionCore):
    """``P = Q Qᵀ`` with ``Q`` the orthonormal factor of a learned ``W₀ ∈ R^{D×r}`` (QR): ``f(x)`` is the point of
    ``range(P)`` nearest to ``g(x)``, mapped back."""

    form = "orthogonal"

    def __init__(self, dim: int, rank: int):
        super().__init__(dim, rank)
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(dim, self.rank)).Q)

    def factors(self):
        Q = torch.linalg.qr(self.weight).Q
        return Q, Q

    def _set_range(self, basis):
        self.weight.copy_(basis.to(self.weight.dtype))


class ObliqueProjectionCore(ProjectionCore):
    """``P = U (VᵀU)⁻¹ Vᵀ``: range ``span U``, kernel ``(span V)^⊥`` (``W = V (UᵀV)⁻¹``)."""

    form = "oblique"

    def __init__(self, dim: int, rank: int):
        super().__init__(dim, rank)
        U = torch.linalg.qr(torch.randn(dim, self.rank)).Q
        self.U = nn.Parameter(U.clone())
        self.V = nn.Parameter(U + 0.01 * torch.randn(dim, self.rank))

    def factors(self):
        W = torch.linalg.solve((self.U.T @ self.V).T, self.V.T).T  # V (UᵀV)⁻¹
        return self.U, W

    def _set_range(self, basis):
        self.U.copy_(basis.to(self.U.dtype))
        self.V.copy_(basis.to(self.V.dtype))


class SpectralProjectionCore(ProjectionCore):
    """The paper's form ``P = M diag(m) M⁻¹`` with a learned invertible ``M ∈ R^{D×D}`` and a binary mask ``m``
    of the top-``r`` learned scores, trained through the straight-through estimator
    (:func:`straight_through_mask`). ``U = M[:, S]``, ``W = (M⁻¹)[S, :]ᵀ`` for the selected set ``S``."""

    form = "spectral"

    def __init__(self, dim: int, rank: int):
        super().__init__(dim, rank)
        self.basis = nn.Parameter(torch.linalg.qr(torch.randn(dim, dim)).Q)
        scores = torch.full((dim,), -1.0)
        scores[: self.rank] = 1.0
        self.scores = nn.Parameter(scores)

    def mask(self) -> Tensor:
        """The straight-through binary mask ``m`` (``D``,), exactly ``r`` ones."""
        return straight_through_mask(self.scores, self.rank)

    def forward(self, z: Tensor, t=None) -> Tensor:
        """``Z ↦ Z Pᵀ = ((Z M⁻ᵀ) ⊙ m) Mᵀ``: the mask's gradient reaches the scores."""
        self._check(z, t)
        M = self.basis.to(z.dtype)
        coords = torch.linalg.solve(M, z.T).T
        return (coords * self.mask().to(z.dtype)) @ M.T

    def factors(self):
        index = self.scores.topk(self.rank).indices.sort().values
        inverse = torch.linalg.inv(self.basis)
        return self.basis[:, index], inverse[index, :].T

    def _set_range(self, basis):
        complement = torch.linalg.qr(torch.cat([basis, torch.randn(self.dim, self.dim - self.rank, dtype=basis.dtype)], 1)).Q
        self.basis.copy_(torch.cat([basis, complement[:, self.rank:]], 1).to(self.basis.dtype))
        scores = torch.full_like(self.scores, -1.0)
        scores[: self.rank] = 1.0
        self.scores.copy_(scores)


#: form name → class (the three projection ``core_type`` s are ``projection_<form>``)
PROJECTION_FORMS = {cls.form: cls for cls in (OrthogonalProjectionCore, ObliqueProjectionCore, SpectralProjectionCore)}

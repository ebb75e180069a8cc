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
lands far from the latents of data). Every projection core also carries a density on its range and a small
isotropic one off it. With ``Q`` an orthonormal basis of ``range(P)``, ``y = Qᵀz`` the range coordinates and
``σ`` the off-range scale, the range coordinates follow a mixture of ``K`` Gaussians (``K = 1``, zero mean:
probabilistic PCA in the latent space of ``g``)::

    p(z) = Σ_k π_k N(y; μ_k, C_k C_kᵀ) · N((I − QQᵀ) z; 0, σ²(I − QQᵀ))

with ``C_k`` lower-triangular (positive diagonal): a proper density on ``R^D``, so with ``log|det J_g(x)|`` it is
the exact likelihood of ``x`` (the ``projection_likelihood`` objective). Generation maps ``ε ~ N(0, I_D)`` to
``z = Q (μ_k + τ C_k Qᵀε)``, the component ``k`` drawn by inverting the mixture's cumulative weights at
``Φ(vᵀε)`` for a fixed unit vector ``v`` off the range (independent of ``Qᵀε``): a deterministic function of
``ε`` (``latents=`` reproduces a sample), and every sample lies in ``range(P)``, so ``f`` leaves it where it is.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor, nn

from ..operators import IdentityPlusLowRank
from .cores import LinearCore, _keep
from .noise_prior import fit_gaussian_mixture, mixture_log_density

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
        components: K, the Gaussians of the prior on the range (1: probabilistic PCA).
    """

    time_dependent = False
    form = "projection"

    def __init__(self, dim: int, rank: int, components: int = 1):
        super().__init__(dim)
        self.rank = check_projection_rank(rank, dim)
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"A projection core's prior needs components K ≥ 1 (an int), got {components!r}.")
        self.components = components
        self.prior_means = nn.Parameter(torch.zeros(components, rank))  # μ_k
        self.prior_tril = nn.Parameter(torch.zeros(components, rank, rank))  # strictly lower part of C_k
        self.prior_log_diag = nn.Parameter(torch.zeros(components, rank))  # log of C_k's diagonal
        self.prior_logits = nn.Parameter(torch.zeros(components))  # log π_k (up to a constant)
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
        """``C_k`` ``(K, r, r)``: lower-triangular with diagonal ``exp(prior_log_diag)``."""
        return torch.tril(self.prior_tril, -1) + torch.diag_embed(self.prior_log_diag.exp())

    def _off_range_direction(self, Q: Tensor) -> Tensor:
        """A fixed unit vector ``v ⟂ range(P)`` (a seeded random vector with its range part removed)."""
        v = torch.randn(self.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(Q)
        v = v - Q @ (Q.T @ v)
        return v / v.norm()

    def sample(self, eps: Tensor, temperature: float = 1.0) -> Tensor:
        """Latents ``z = Q (μ_k + τ C_k Qᵀε)`` of noise ``eps`` ``(N, D)`` (module docstring), in float64."""
        self._check(eps, None)
        with torch.no_grad():
            eps = eps.double()
            Q = self.range_basis().double()
            weights = torch.softmax(self.prior_logits.double(), 0)
            u = torch.special.ndtr(eps @ self._off_range_direction(Q))
            k = torch.searchsorted(torch.cumsum(weights, 0)[:-1].contiguous(), u.contiguous(), right=True)
            c = self.prior_means.double()[k] + float(temperature) * (
                self.prior_scale().double()[k] @ (eps @ Q).unsqueeze(-1)).squeeze(-1)
            return c @ Q.T

    def log_prior(self, z: Tensor) -> Tensor:
        r"""``log p(z)`` per sample under the mixture on the range and ``N(0, σ²)`` off it (``z``: ``(N, D)``), float64."""
        self._check(z, None)
        z = z.double()
        Q = self.range_basis().double()
        y = z @ Q
        off = z - y @ Q.T
        inside = mixture_log_density(y, self.prior_means.double(), self.prior_scale().double(),
                                     torch.log_softmax(self.prior_logits.double(), 0))
        log_sigma = self.log_noise.double()
        rest = self.dim - self.rank
        return inside - 0.5 * off.square().sum(1) * torch.exp(-2.0 * log_sigma) - rest * log_sigma - 0.5 * rest * LOG_2PI

    @torch.no_grad()
    def fit_prior(self, z: Tensor, iterations: int = 50, seed: int = 0) -> None:
        """Maximum-likelihood ``σ²`` (``mean ‖(I − QQᵀ) z‖² / (D − r)``) and mixture on the range coordinates of
        latents ``z`` ``(N, D)``, with the range fixed: one component is ``C Cᵀ = E[y yᵀ]`` (about 0); more are fitted
        by EM (full covariances, ``1e-6·I`` added), started from ``K`` distinct latents chosen by ``seed``."""
        z = z.double()
        Q = self.range_basis().double()
        y = z @ Q
        if y.shape[0] < self.components:
            raise ValueError(f"fit_prior needs at least as many latents as mixture components ({self.components}); "
                             f"got {y.shape[0]}.")
        means, covs, weights = fit_gaussian_mixture(y, self.components, iterations, seed)
        C = torch.linalg.cholesky(covs)
        self.prior_means.copy_(means.to(self.prior_means.dtype))
        self.prior_tril.copy_(torch.tril(C, -1).to(self.prior_tril.dtype))
        self.prior_log_diag.copy_(torch.diagonal(C, dim1=1, dim2=2).log().to(self.prior_log_diag.dtype))
        self.prior_logits.copy_(weights.clamp_min(1e-12).log().to(self.prior_logits.dtype))
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

    def __init__(self, dim: int, rank: int, components: int = 1):
        super().__init__(dim, rank, components)
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(dim, self.rank)).Q)

    def factors(self):
        Q = torch.linalg.qr(self.weight).Q
        return Q, Q

    def _set_range(self, basis):
        self.weight.copy_(basis.to(self.weight.dtype))


class ObliqueProjectionCore(ProjectionCore):
    """``P = U (VᵀU)⁻¹ Vᵀ``: range ``span U``, kernel ``(span V)^⊥`` (``W = V (UᵀV)⁻¹``)."""

    form = "oblique"

    def __init__(self, dim: int, rank: int, components: int = 1):
        super().__init__(dim, rank, components)
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

    def __init__(self, dim: int, rank: int, components: int = 1):
        super().__init__(dim, rank, components)
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

r"""A fitted prior for the sampling noise: a Gaussian mixture on a principal subspace, isotropic off it.

A trained Linearizer samples ``x = g_x⁻¹(B g_y(z))`` with ``z ~ τ·N(0, I)``. Its exact inverse maps every
training image to the noise that would make it; when the model is imperfect that noise is *not* N(0, I)
(the packaged default's has standard deviation 0.6 and a clustered shape), and plain N(0, I) samples land
between the clusters. :class:`NoisePrior` is a density fitted to that recovered noise, used in its place —
the one-step map, its inverse and the collapse are unchanged::

    p(z | g) = Σ_k π_{g,k} · N(Qᵀz; μ_k, C_k C_kᵀ) · N((I − QQᵀ) z; 0, σ² (I − QQᵀ))

``Q`` ``(D, r)`` an orthonormal basis (the top-``r`` principal directions of the recovered noise), ``C_k``
lower-triangular, ``σ`` the isotropic scale off the subspace, and ``π_{g,·}`` the mixture weights of group
``g`` (one group for an unconditional or text model; one per class for a class model, so class ``c`` draws
from the components fitted to the noise of class ``c``'s images). An unconditional model's prior may be fitted
with its images' labels (``fit(…, labels=…)``): each label's noise gets its own Gaussians, all in the one group,
so sampling needs no label.

**Sampling is a deterministic function of ``ε ~ N(0, I_D)``** (``generator``/``latents`` reproduce it), and an
exact draw from ``p`` (at ``τ = 1``): with ``v`` a fixed unit vector off the subspace and ``u = Φ(vᵀε)``, the
component is ``k`` with ``c_{k−1} ≤ u < c_k`` (``c`` the cumulative weights); ``u' = (u − c_{k−1}) / π_k`` is
again uniform and independent of ``k``, so ``Φ⁻¹(u')`` replaces ``vᵀε`` in the off-subspace part::

    z = Q (μ_k + τ C_k Qᵀε) + τ σ ((I − QQᵀ − vvᵀ) ε + Φ⁻¹(u') v)

``τ`` (the temperature) scales every deviation from the component means. Everything runs in float64.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["NoisePrior", "fit_gaussian_mixture", "mixture_log_density", "pick_component"]

LOG_2PI = math.log(2.0 * math.pi)
_UNIFORM_EDGE = 1e-12  # keeps Φ⁻¹ finite


@torch.no_grad()
def fit_gaussian_mixture(y: Tensor, components: int, iterations: int = 50, seed: int = 0,
                         ridge: float = 1e-6, centred: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Maximum-likelihood mixture of ``components`` full-covariance Gaussians on ``y`` ``(N, r)`` by EM (float64).

    One component is the zero-mean second moment ``E[y yᵀ]`` (``centred``: the mean and the covariance about it);
    more start from ``components`` distinct points chosen by ``seed`` and the pooled covariance. ``ridge·I`` is
    added to every covariance. Returns ``(means (K, r), covariances (K, r, r), weights (K,))``.
    """
    y = y.double()
    n, r = y.shape
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise ValueError(f"A Gaussian mixture needs components K ≥ 1 (an int), got {components!r}.")
    if n < components:
        raise ValueError(f"Fitting {components} mixture components needs at least {components} points; got {n}.")
    eye = ridge * torch.eye(r, dtype=torch.float64)
    if components == 1:
        mean = y.mean(0, keepdim=True) if centred else torch.zeros(1, r, dtype=torch.float64)
        return mean, ((y - mean).T @ (y - mean) / n + eye)[None], torch.ones(1, dtype=torch.float64)
    means = y[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:components]].clone()
    spread = y - y.mean(0)
    covs = (spread.T @ spread / n + eye).expand(components, r, r).clone()
    weights = torch.full((components,), 1.0 / components, dtype=torch.float64)
    for _ in range(iterations):
        resp = torch.softmax(mixture_log_density(y, means, torch.linalg.cholesky(covs), weights.log(), total=False), 0)
        mass = resp.sum(1).clamp_min(1e-12)
        weights = mass / n
        means = resp @ y / mass[:, None]
        diff = y[None] - means[:, None]
        covs = torch.einsum("kn,kni,knj->kij", resp, diff, diff) / mass[:, None, None] + eye
    return means, covs, weights


def mixture_log_density(y: Tensor, means: Tensor, scale_tril: Tensor, log_weights: Tensor, total: bool = True) -> Tensor:
    """``log Σ_k π_k N(y; μ_k, C_k C_kᵀ)`` per row of ``y`` ``(N, r)`` (``total=False``: the ``(K, N)`` terms
    ``log π_k + log N(y; μ_k, C_k C_kᵀ)`` before the sum)."""
    diff = (y[None] - means[:, None]).transpose(1, 2)  # (K, r, N)
    white = torch.linalg.solve_triangular(scale_tril, diff, upper=False)
    log_det = torch.diagonal(scale_tril, dim1=1, dim2=2).log().sum(1)
    terms = (-0.5 * white.square().sum(1) - log_det[:, None] - 0.5 * y.shape[1] * LOG_2PI + log_weights[:, None])
    return torch.logsumexp(terms, 0) if total else terms


def pick_component(u: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    """Component ``k`` of every uniform ``u`` ``(N,)`` under the rows of ``weights`` ``(N, K)`` (inverse CDF), and
    ``u' = (u − c_{k−1}) / π_k``: uniform again and independent of ``k``."""
    cum = torch.cumsum(weights, 1)
    k = (u[:, None] >= cum[:, :-1]).sum(1)  # the first k with u < c_k
    lower = torch.where(k > 0, cum.gather(1, (k - 1).clamp_min(0)[:, None]).squeeze(1), torch.zeros_like(u))
    width = weights.gather(1, k[:, None]).squeeze(1).clamp_min(1e-300)
    return k, ((u - lower) / width).clamp(_UNIFORM_EDGE, 1.0 - _UNIFORM_EDGE)


class NoisePrior(nn.Module):
    """The mixture prior of the module docstring, as buffers saved with a model (safetensors; each ``C_k`` as its
    packed lower triangle, :meth:`scale_tril`).

    Args:
        dim: the noise dimension D = C·H·W.
        rank: r, the principal subspace (``1 … D − 1``).
        components: K, all groups together.
        groups: G, rows of mixture weights (1, or a class model's ``num_classes``).
    """

    def __init__(self, dim: int, rank: int, components: int, groups: int = 1):
        super().__init__()
        for name, value, low, high in (("rank", rank, 1, dim - 1), ("components", components, 1, None),
                                       ("groups", groups, 1, None)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
                bound = f"{low} … {high}" if high is not None else f"≥ {low}"
                raise ValueError(f"A noise prior's {name} must be an int {bound} (D = {dim}); got {value!r}.")
        self.dim, self.rank, self.components, self.groups = dim, rank, components, groups
        self.register_buffer("basis", torch.eye(dim, rank))  # Q (orthonormal columns)
        self.register_buffer("means", torch.zeros(components, rank))  # μ_k
        rows, cols = torch.tril_indices(rank, rank)
        self.register_buffer("scale_packed", (rows == cols).float().expand(components, -1).clone())  # C_k's lower triangle
        self.register_buffer("log_weights", torch.full((groups, components), -math.log(components)))  # log π_{g,k}
        self.register_buffer("log_sigma", torch.zeros(()))  # log σ

    def _labels(self, labels, n: int, device) -> Tensor:
        labels = torch.as_tensor(labels, device=device).long().reshape(-1)
        if self.groups != 1:
            raise ValueError("labels supervise a one-group (unconditional) prior; a class prior's groups are its classes.")
        count = labels.unique().numel()
        if labels.shape[0] != n or self.components % count:
            raise ValueError(f"Expected one label per noise sample ({n}) and {self.components} components split evenly "
                             f"over the labels; got {labels.shape[0]} labels of {count} values.")
        return labels

    def _fit_labelled(self, flat: Tensor, Q: Tensor, coords: Tensor, labels: Tensor, iterations: int,
                      seed: int) -> "NoisePrior":
        names = labels.unique()
        per = self.components // names.numel()
        means, trils, log_w = [], [], []
        for name in names.tolist():
            mine = coords[labels == name]
            mu, cov, w = fit_gaussian_mixture(mine, per, iterations, seed, centred=True)
            means.append(mu)
            trils.append(torch.linalg.cholesky(cov))
            log_w.append((w * mine.shape[0] / flat.shape[0]).clamp_min(1e-300).log())
        return self._store(flat, Q, coords, means, trils, torch.cat(log_w)[None])

    def _store(self, flat, Q, coords, means, trils, log_w) -> "NoisePrior":
        off = (flat - coords @ Q.T).square().sum(1).mean() / (self.dim - self.rank)
        rows, cols = torch.tril_indices(self.rank, self.rank)
        for name, value in (("basis", Q), ("means", torch.cat(means)), ("scale_packed", torch.cat(trils)[:, rows, cols]),
                            ("log_weights", log_w.clamp_min(-1e4)), ("log_sigma", 0.5 * off.clamp_min(1e-24).log())):
            buf = getattr(self, name)
            buf.copy_(value.to(device=buf.device, dtype=buf.dtype))
        return self

    def scale_tril(self) -> Tensor:
        """``C_k`` ``(K, r, r)`` in float64, unpacked from the stored lower triangles (row by row: half the size)."""
        rows, cols = torch.tril_indices(self.rank, self.rank, device=self.scale_packed.device)
        out = torch.zeros(self.components, self.rank, self.rank, dtype=torch.float64, device=self.scale_packed.device)
        out[:, rows, cols] = self.scale_packed.double()
        return out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}, components={self.components}, groups={self.groups}"

    # ------------------------------------------------------------------ inputs
    def _groups(self, group: Optional[Tensor], n: int, device) -> Tensor:
        if group is None:
            if self.groups != 1:
                raise ValueError(f"This noise prior has {self.groups} groups (one per class): pass each sample's class id.")
            return torch.zeros(n, dtype=torch.long, device=device)
        group = torch.as_tensor(group, device=device).long().reshape(-1)
        if group.numel() == 1:
            group = group.expand(n)
        if group.shape[0] != n or bool(((group < 0) | (group >= self.groups)).any()):
            raise ValueError(f"Expected one group id in 0 … {self.groups - 1} per sample ({n}), got {group.tolist()}.")
        return group

    def _flat(self, z: Tensor, name: str) -> Tensor:
        if not isinstance(z, Tensor) or z.ndim < 2 or z[0].numel() != self.dim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"Expected {name} with D = {self.dim} values per sample, got {got}.")
        return z.reshape(z.shape[0], -1).double()

    def off_direction(self) -> Tensor:
        """``v``: a fixed unit vector off the subspace (a seeded vector with its subspace part removed)."""
        Q = self.basis.double()
        v = torch.randn(self.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(Q.device)
        v = v - Q @ (Q.T @ v)
        return v / v.norm()

    # ------------------------------------------------------------------ the density
    def sample(self, eps: Tensor, group: Optional[Tensor] = None, temperature: float = 1.0) -> Tensor:
        """``z`` of noise ``eps`` (any shape with D values per sample; module docstring), float64, ``eps``'s shape."""
        flat = self._flat(eps, "eps")
        Q, v = self.basis.double(), self.off_direction()
        weights = torch.softmax(self.log_weights.double(), 1)[self._groups(group, flat.shape[0], flat.device)]
        along_v = flat @ v
        k, u = pick_component(torch.special.ndtr(along_v), weights)
        coords = flat @ Q
        inside, scale = self.means.double()[k], self.scale_tril()
        for j in k.unique().tolist():  # one C_j per drawn component (a per-sample gather would hold N r×r copies)
            mine = k == j
            inside[mine] += temperature * (coords[mine] @ scale[j].T)
        off = flat - coords @ Q.T + (torch.special.ndtri(u) - along_v)[:, None] * v[None]
        return (inside @ Q.T + temperature * self.log_sigma.double().exp() * off).view(eps.shape)

    def log_prob(self, z: Tensor, group: Optional[Tensor] = None) -> Tensor:
        """``log p(z | g)`` per sample (float64)."""
        flat = self._flat(z, "z")
        Q = self.basis.double()
        coords = flat @ Q
        terms = mixture_log_density(coords, self.means.double(), self.scale_tril(),
                                    torch.zeros(self.components, dtype=torch.float64), total=False)  # (K, N)
        log_w = torch.log_softmax(self.log_weights.double(), 1)[self._groups(group, flat.shape[0], flat.device)]
        inside = torch.logsumexp(terms + log_w.T, 0)
        log_sigma, rest = self.log_sigma.double(), self.dim - self.rank
        off = (flat - coords @ Q.T).square().sum(1)
        return inside - 0.5 * off * torch.exp(-2.0 * log_sigma) - rest * log_sigma - 0.5 * rest * LOG_2PI

    @torch.no_grad()
    def fit(self, z: Tensor, group: Optional[Tensor] = None, iterations: int = 50, seed: int = 0,
            labels: Optional[Tensor] = None) -> "NoisePrior":
        """Fit to noise ``z`` ``(N, …)``: ``Q`` by PCA of all of it, ``σ²`` as the mean off-subspace energy per
        dimension, and per group an EM mixture of ``components / groups`` Gaussians on its samples' coordinates.

        ``labels`` (a one-group prior only: an unconditional model fitted with its images' labels) split the noise
        into L subsets fitted apart, ``components / L`` Gaussians each (one per label: that label's mean and
        covariance), the weights being each label's share times its components' weights. Sampling needs no label:
        it draws from the whole mixture."""
        flat = self._flat(z, "z")
        if self.components % self.groups:
            raise ValueError(f"{self.components} components do not split evenly into {self.groups} groups.")
        if labels is not None:
            labels = self._labels(labels, flat.shape[0], flat.device)
        else:
            ids = self._groups(group, flat.shape[0], flat.device)
        _, _, vh = torch.linalg.svd(flat, full_matrices=False)
        Q = vh[: self.rank].T.contiguous()
        coords = flat @ Q
        if labels is not None:
            return self._fit_labelled(flat, Q, coords, labels, iterations, seed)
        per = self.components // self.groups
        means, trils = [], []
        log_w = torch.full((self.groups, self.components), -math.inf, dtype=torch.float64)
        for g in range(self.groups):
            mine = coords[ids == g]
            if mine.shape[0] < per:
                raise ValueError(f"Group {g} has {mine.shape[0]} samples; fitting {per} components needs at least {per}.")
            mu, cov, w = fit_gaussian_mixture(mine, per, iterations, seed)
            means.append(mu)
            trils.append(torch.linalg.cholesky(cov))
            log_w[g, g * per:(g + 1) * per] = w.clamp_min(1e-300).log()
        return self._store(flat, Q, coords, means, trils, log_w)

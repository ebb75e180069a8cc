"""Linear cores: the operator ``A`` (or ``A_t``) between the two invertible networks.

Column-vector convention throughout (the paper's): a core maps a latent vector ``z ∈ R^D`` to
``A_t z``; a batch ``Z`` of shape ``(N, D)`` maps to ``Z A_tᵀ``.

Every core is an ``nn.Module`` with

* ``forward(z, t=None)`` — the differentiable batched product ``A_t z`` used in training
  (``t`` of shape ``(N,)``, one time per sample, or ``None`` for time-independent cores);
* ``operator(t=None, dtype=None)`` — ``A_t`` as a structured operator from
  :mod:`diffusers_linearizer.operators`, for algebra (pinv, SVD, products, collapse);
* ``operators(ts, dtype=None, grad=False)`` — the operators for many times at once (one MLP pass);
  the shared-basis core returns operators that share the same ``U``/``V`` tensors so that their
  products stay in ``R × R`` coordinates. By default the operators are detached (what algebra,
  caches and samplers want); ``grad=True`` keeps them attached to the parameters, so that a
  collapse built from them can be differentiated (training through the one-step generator).

The four kinds:

=================  ===========================================  ==================================
``core_type``       operator                                     parameters
=================  ===========================================  ==================================
``"dense"``         ``A`` (D × D)                                D²
``"lowrank"``       ``a·I + U Vᵀ``                               1 + 2·D·r
``"time_lowrank"``  ``A_t = a(t)·I + U(t) V(t)ᵀ``                MLPs emitting D·r numbers per t
``"shared_basis"``  ``A_t = a(t)·I + U S(t) Vᵀ``                 2·D·R + MLP emitting 1 + R² per t
=================  ===========================================  ==================================

The reference implementation's core is ``"time_lowrank"`` with ``a ≡ 0`` (``identity=False``).
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..operators import DenseOperator, IdentityPlusLowRank, SharedBasisOperator
from .embeddings import sinusoidal_embedding



def _as_time(t, n: int, like: Tensor) -> Tensor:
    """Broadcast ``t`` (float, 0-d or (N,) tensor) to a float tensor of shape ``(n,)``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"Expected t to be a scalar or of shape ({n},), got {tuple(t.shape)}.")
    return t


class LinearCore(nn.Module):
    """Base class: holds ``dim`` and the time-dependence flag, and checks inputs."""

    time_dependent: bool = False

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"Expected a positive latent dimension D, got {dim}.")
        self.dim = int(dim)

    def _check(self, z: Tensor, t) -> None:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"Expected latents of shape (N, {self.dim}), got {tuple(z.shape)}.")
        if self.time_dependent and t is None:
            raise ValueError(f"{type(self).__name__} is time-dependent: pass t (a float or an (N,) tensor).")

    def _param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def operator(self, t: Optional[float] = None, dtype: Optional[torch.dtype] = None, grad: bool = False):
        """``A_t`` as a structured operator (in ``dtype``, default the parameters' dtype)."""
        return self.operators([t], dtype=dtype, grad=grad)[0]

    def operators(self, ts: Sequence[Optional[float]], dtype: Optional[torch.dtype] = None, grad: bool = False) -> list:
        """``[A_t for t in ts]``; override to evaluate all times in one pass. ``grad``: keep the graph."""
        raise NotImplementedError


def _keep(x: Tensor, grad: bool) -> Tensor:
    """``x`` itself when gradients are wanted, else ``x.detach()``."""
    return x if grad else x.detach()


class DenseCore(LinearCore):
    """A fixed dense matrix ``A ∈ R^{D×D}`` (only sensible for small D); initialised to ``I``."""

    def __init__(self, dim: int, weight: Optional[Tensor] = None):
        super().__init__(dim)
        self.weight = nn.Parameter(torch.eye(dim) if weight is None else weight.clone())

    def forward(self, z: Tensor, t=None) -> Tensor:
        """``Z ↦ Z Aᵀ``."""
        self._check(z, t)
        return z @ self.weight.T

    def operators(self, ts, dtype=None, grad=False):
        w = _keep(self.weight, grad)
        return [DenseOperator(w.to(dtype or w.dtype)) for _ in ts]


class LowRankCore(LinearCore):
    """A fixed ``A = a·I + U Vᵀ`` with ``U, V ∈ R^{D×r}``."""

    def __init__(self, dim: int, rank: int, identity_scale: float = 1.0, init_scale: float = 1e-2):
        super().__init__(dim)
        if rank < 0:
            raise ValueError(f"Expected rank ≥ 0, got {rank}.")
        self.scale = nn.Parameter(torch.tensor(float(identity_scale)))
        self.U = nn.Parameter(torch.randn(dim, rank) * init_scale)
        self.V = nn.Parameter(torch.randn(dim, rank) * init_scale)

    def forward(self, z: Tensor, t=None) -> Tensor:
        """``Z ↦ a·Z + (Z V) Uᵀ``."""
        self._check(z, t)
        return self.scale * z + (z @ self.V) @ self.U.T

    def operators(self, ts, dtype=None, grad=False):
        dtype = dtype or self.U.dtype
        c, U, V = (_keep(p, grad).to(dtype) for p in (self.scale, self.U, self.V))
        op = IdentityPlusLowRank(c, U, V)
        return [op for _ in ts]

    @classmethod
    def from_operator(cls, op) -> "LowRankCore":
        """Freeze an ``IdentityPlusLowRank`` (or shared-basis) operator into a core."""
        if isinstance(op, SharedBasisOperator):
            op = op.to_lowrank()
        core = cls(op.dim, op.rank)
        with torch.no_grad():
            core.scale.data = torch.as_tensor(op.c, dtype=op.U.dtype, device=op.U.device).detach().clone().reshape(())
            core.U.data = op.U.detach().clone()
            core.V.data = op.V.detach().clone()
        return core.to(op.U.dtype)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """``Linear → GELU → Linear → GELU → Linear`` (the reference's MLP shape)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
    )


TIME_EMBEDDINGS = ("diffusion", "reference")
"""Sinusoidal time features of the time-conditioned cores (``time_embedding``):

* ``"diffusion"`` (default): ``[cos(ω_j·1000t)]_j ⊕ [sin(ω_j·1000t)]_j`` with ``ω_j = 10000^{−j/k}``
  (:func:`~.embeddings.sinusoidal_embedding` of the diffusion-style timestep ``1000·t``);
* ``"reference"``: ``[sin(ω_j t)]_j ⊕ [cos(ω_j t)]_j`` with ``ω_j = 10000^{−j/(k−1)}`` of ``t`` itself, the
  paper code's convention (needed to run checkpoints converted from it);

``k = embedding_dim / 2``.
"""


def reference_time_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``[sin(ω_j t)]_j ⊕ [cos(ω_j t)]_j``, ``ω_j = max_period^{−j/(k−1)}``, ``k = dim // 2`` (``t`` unscaled)."""
    k = dim // 2
    if k < 2:
        raise ValueError(f"The 'reference' time embedding needs embedding_dim ≥ 4, got {dim}.")
    freqs = torch.exp(torch.arange(k, dtype=t.dtype, device=t.device) * (-math.log(max_period) / (k - 1)))
    angles = t[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _TimeEmbedded(LinearCore):
    """Shared machinery of the time-conditioned cores: sinusoidal embedding of ``t ∈ [0, 1]``."""

    time_dependent = True

    def __init__(self, dim: int, embedding_dim: int, time_embedding: str = "diffusion"):
        super().__init__(dim)
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"Unknown time_embedding {time_embedding!r}; expected one of {', '.join(TIME_EMBEDDINGS)}.")
        self.embedding_dim = int(embedding_dim)
        self.time_embedding = time_embedding

    def embed(self, t: Tensor) -> Tensor:
        """``emb(t)`` (``t`` of shape (N,)): see :data:`TIME_EMBEDDINGS`."""
        if self.time_embedding == "reference":
            return reference_time_embedding(t, self.embedding_dim)
        return sinusoidal_embedding(t * 1000.0, self.embedding_dim)

    def _wide_factors(self, ts, grad: bool = False):
        """``factors`` for a list of times, evaluated in at least fp32 (half-precision MLPs would put
        ~1e-3 relative noise into every A_t, which a T-step collapse then compounds). ``grad=True``
        keeps the graph (half-precision weights are then evaluated in their own dtype)."""
        times = self._times(ts)
        if grad:
            return self.factors(times)
        with torch.no_grad():
            if times.dtype in (torch.float16, torch.bfloat16):
                return copy.deepcopy(self).float().factors(times.float())
            return self.factors(times)

    def _times(self, ts) -> Tensor:
        if any(t is None for t in ts):
            raise ValueError(f"{type(self).__name__} is time-dependent: operator(t) needs a time t in [0, 1].")
        like = next(self.parameters())
        return torch.as_tensor([float(t) for t in ts], dtype=like.dtype, device=like.device)


class TimeLowRankCore(_TimeEmbedded):
    """``A_t = a(t)·I + U(t) V(t)ᵀ`` with ``U(t), V(t) ∈ R^{D×r}`` emitted by two MLPs of ``emb(t)``.

    ``u_mlp`` and ``v_mlp`` each emit ``D·r`` numbers per time (reshaped row-major to ``D × r``);
    ``a(t)`` comes from a third, small MLP when ``identity=True`` and is ``0`` otherwise (the
    reference's core).
    """

    def __init__(self, dim: int, rank: int, hidden_dim: int = 512, embedding_dim: int = 128, identity: bool = True,
                 time_embedding: str = "diffusion"):
        super().__init__(dim, embedding_dim, time_embedding)
        if rank < 1:
            raise ValueError(f"Expected rank ≥ 1 for a time-conditioned low-rank core, got {rank}.")
        self.rank = int(rank)
        self.identity = bool(identity)
        self.u_mlp = _mlp(embedding_dim, hidden_dim, dim * rank)
        self.v_mlp = _mlp(embedding_dim, hidden_dim, dim * rank)
        if identity:
            self.a_mlp = _mlp(embedding_dim, hidden_dim // 4 or 1, 1)
            nn.init.zeros_(self.a_mlp[-1].weight)
            nn.init.ones_(self.a_mlp[-1].bias)
        for mlp in (self.u_mlp, self.v_mlp):  # keep U Vᵀ small at initialisation
            mlp[-1].weight.data.mul_(1.0 / math.sqrt(dim))

    def factors(self, t: Tensor):
        """``(a(t), U(t), V(t))`` for a batch of times: shapes (N,), (N, D, r), (N, D, r)."""
        e = self.embed(t)
        u = self.u_mlp(e).view(-1, self.dim, self.rank)
        v = self.v_mlp(e).view(-1, self.dim, self.rank)
        a = self.a_mlp(e).squeeze(-1) if self.identity else torch.zeros_like(t)
        return a, u, v

    def forward(self, z: Tensor, t) -> Tensor:
        """``z_n ↦ a(t_n)·z_n + U(t_n) (V(t_n)ᵀ z_n)`` per sample."""
        self._check(z, t)
        a, u, v = self.factors(_as_time(t, z.shape[0], z))
        coeff = torch.einsum("nd,ndr->nr", z, v)
        return a[:, None] * z + torch.einsum("ndr,nr->nd", u, coeff)

    def operators(self, ts, dtype=None, grad=False):
        a, u, v = self._wide_factors(ts, grad)
        dtype = dtype or self.u_mlp[-1].weight.dtype
        return [IdentityPlusLowRank(a[i].to(dtype), u[i].to(dtype), v[i].to(dtype)) for i in range(len(ts))]


class SharedBasisCore(_TimeEmbedded):
    """``A_t = a(t)·I + U S(t) Vᵀ`` with learned ``U, V ∈ R^{D×R}`` and ``S(t) ∈ R^{R×R}`` from an MLP.

    Products of such operators stay ``a·I + U (R×R) Vᵀ`` (``docs/design.md``, ``docs/math.md`` §1), so a
    collapse over T steps costs ``O(T·R³)`` after one ``O(D·R²)`` Gram matrix, and the parameter
    count does not grow with ``D·R`` per time.
    """

    def __init__(self, dim: int, rank: int, hidden_dim: int = 256, embedding_dim: int = 128, identity: bool = True,
                 time_embedding: str = "diffusion"):
        super().__init__(dim, embedding_dim, time_embedding)
        if rank < 1:
            raise ValueError(f"Expected rank ≥ 1 for a shared-basis core, got {rank}.")
        self.rank = int(rank)
        self.identity = bool(identity)
        self.U = nn.Parameter(torch.randn(dim, rank) / math.sqrt(dim))
        self.V = nn.Parameter(torch.randn(dim, rank) / math.sqrt(dim))
        self.s_mlp = _mlp(embedding_dim, hidden_dim, rank * rank + 1)
        nn.init.zeros_(self.s_mlp[-1].weight)
        with torch.no_grad():
            self.s_mlp[-1].bias.zero_()
            self.s_mlp[-1].bias[0] = 1.0 if identity else 0.0

    def factors(self, t: Tensor):
        """``(a(t), S(t))`` for a batch of times: shapes (N,), (N, R, R)."""
        out = self.s_mlp(self.embed(t))
        a = out[:, 0] if self.identity else torch.zeros_like(t)
        return a, out[:, 1:].view(-1, self.rank, self.rank)

    def forward(self, z: Tensor, t) -> Tensor:
        """``z_n ↦ a(t_n)·z_n + U S(t_n) Vᵀ z_n``."""
        self._check(z, t)
        a, s = self.factors(_as_time(t, z.shape[0], z))
        coeff = torch.einsum("nrk,nk->nr", s, z @ self.V)
        return a[:, None] * z + coeff @ self.U.T

    def operators(self, ts, dtype=None, grad=False):
        a, s = self._wide_factors(ts, grad)
        dtype = dtype or self.U.dtype
        U, V = _keep(self.U, grad).to(dtype), _keep(self.V, grad).to(dtype)
        gram = V.T @ U
        return [SharedBasisOperator(a[i].to(dtype), s[i].to(dtype), U, V, gram=gram) for i in range(len(ts))]

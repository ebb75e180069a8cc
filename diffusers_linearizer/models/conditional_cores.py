"""Conditional linear cores ``A(t, c)`` and the guided view ``(1 + w)·A(t, c) − w·A(t, ∅)``.

Only the core sees the condition; ``g_x`` and ``g_y`` stay unconditional. A condition enters the core's
MLP input: ``e = emb(t) + E(c)`` (``E(c)`` alone for the constant core), where ``E`` is

* ``"class"``: a table of ``num_classes + 1`` learned vectors; the last row is the *null class* ``∅``
  (what condition dropout trains and classifier-free guidance subtracts);
* ``"text"``: a linear map of a pooled text embedding (``condition_dim`` numbers, e.g. the
  ``pooler_output`` of a CLIP text model); its ``∅`` is the embedding of the empty prompt.

The class table starts like ``nn.Embedding`` (``N(0, 1)`` entries, the scale of the sinusoidal time
features), so classes are told apart from the first training step; the text projection starts at zero (a
freshly built text core computes what its unconditional counterpart with the same weights computes).

Conditions passed to the cores: class ids as an integer tensor ``(N,)`` (``num_classes`` = ``∅``) or
pooled embeddings as a float tensor ``(N, condition_dim)``; one condition (an ``int`` or a ``(condition_dim,)``
tensor) where an operator is asked for.

Guidance stays linear in ``z``: for any weights ``w_k`` the mixture ``Σ_k w_k A(t, c_k)`` is again a core
operator (``docs/math.md`` §5):

* shared basis ``a(t,c)·I + U S(t,c) Vᵀ``: ``(Σ w_k a_k)·I + U (Σ w_k S_k) Vᵀ`` — the same ``U``, ``V``, so
  the guided collapse has the rank and the cost of the unguided one;
* time-dependent low rank ``a·I + U(t,c) V(t,c)ᵀ``: ``(Σ w_k a_k)·I + [w_1 U_1, …] [V_1, …]ᵀ`` (stacked
  factors, rank ``K·r``).

:class:`GuidedCore` packages a mixture as a core-like object (``time_dependent``, ``operators``) that
``LinearizerScheduler.collapse`` multiplies like any core, and names itself to the scheduler's cache by its
owner core plus the condition and ``w`` (:meth:`GuidedCore.cache_identity`).
"""

from __future__ import annotations

import copy
import hashlib
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..operators import IdentityPlusLowRank, SharedBasisOperator
from .cores import SharedBasisCore, TimeLowRankCore, _as_time, _keep

CONDITIONINGS = ("class", "text")
_HALF = (torch.float16, torch.bfloat16)


class ConditionEmbedding(nn.Module):
    """``E(c)``: class ids → a learned table (last row ∅), or pooled text embeddings → a linear map."""

    def __init__(self, kind: str, embedding_dim: int, num_classes: int = 0, condition_dim: int = 0):
        super().__init__()
        if kind not in CONDITIONINGS:
            raise ValueError(f"Unknown conditioning {kind!r}; expected one of {', '.join(CONDITIONINGS)}.")
        self.kind = kind
        self.num_classes, self.condition_dim = int(num_classes), int(condition_dim)
        if kind == "class":
            if self.num_classes < 1:
                raise ValueError(f"Class conditioning needs num_classes ≥ 1, got {num_classes}.")
            self.table = nn.Embedding(self.num_classes + 1, embedding_dim)  # N(0, 1): the scale of emb(t)
        else:
            if self.condition_dim < 1:
                raise ValueError(f"Text conditioning needs condition_dim ≥ 1 (the pooled embedding size), got {condition_dim}.")
            self.proj = nn.Linear(self.condition_dim, embedding_dim)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    @property
    def null_class(self) -> int:
        """The id of ``∅`` for class conditioning (``num_classes``)."""
        return self.num_classes

    def check(self, condition, n: Optional[int] = None) -> Tensor:
        """``condition`` as a tensor of the right kind and shape (``(n,)`` ids or ``(n, condition_dim)``), else a ValueError."""
        if not isinstance(condition, Tensor):
            raise ValueError(f"Expected the condition as a torch.Tensor, got {type(condition).__name__}.")
        if self.kind == "class":
            if condition.is_floating_point() or condition.ndim != 1 or (n is not None and condition.shape[0] != n):
                raise ValueError(f"Expected class ids as an integer tensor of shape ({n or 'N'},), got "
                                 f"{condition.dtype} {tuple(condition.shape)}.")
            if condition.numel() and (int(condition.min()) < 0 or int(condition.max()) > self.num_classes):
                raise ValueError(f"Class ids must lie in [0, {self.num_classes}] ({self.num_classes} = the null class).")
        elif not condition.is_floating_point() or condition.ndim != 2 or condition.shape[1] != self.condition_dim \
                or (n is not None and condition.shape[0] != n):
            raise ValueError(f"Expected pooled text embeddings of shape ({n or 'N'}, {self.condition_dim}), got "
                             f"{condition.dtype} {tuple(condition.shape)}.")
        return condition

    def forward(self, condition: Tensor) -> Tensor:
        if self.kind == "class":
            return self.table(condition.to(self.table.weight.device))
        return self.proj(condition.to(device=self.proj.weight.device, dtype=self.proj.weight.dtype))

    def stack(self, conditions: Sequence, repeat: int) -> Tensor:
        """One condition per mixture entry (``int``/0-d ids or ``(condition_dim,)`` vectors), each repeated
        ``repeat`` times: the batch ``(K·repeat, …)`` in entry-major order."""
        like = next(self.parameters())
        if self.kind == "class":
            ids = torch.as_tensor([int(c) for c in conditions], dtype=torch.long, device=like.device)
            return self.check(ids).repeat_interleave(repeat)
        rows = torch.stack([torch.as_tensor(c).reshape(-1).to(device=like.device, dtype=like.dtype) for c in conditions])
        return self.check(rows).repeat_interleave(repeat, dim=0)


def guided_forward(core, z: Tensor, t, mix) -> Tensor:
    """``Σ_k λ_k·A(t, c_k) z`` by the conditional core's forward: the one computation of a guided prediction.
    Classifier-free guidance ``(1 + w)·A(t, c) z − w·A(t, c⁻) z`` is the mix ``[(1 + w, c), (−w, c⁻)]``.
    ``mix``: ``[(λ_k, conditions_k)]``, each ``conditions_k`` one condition for every row of ``z`` or one per row."""
    n = z.shape[0]
    out = None
    for weight, conditions in mix:
        conditions = list(conditions)
        term = core(z, t, core.condition_embedding.stack(conditions, n if len(conditions) == 1 else 1))
        term = term if weight == 1.0 else weight * term
        out = term if out is None else out + term
    return out


def condition_key(condition) -> Tuple:
    """A hashable name of one condition (an id, or the bytes of an embedding) for the collapse cache."""
    if isinstance(condition, Tensor) and condition.is_floating_point():
        data = condition.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
        return ("embedding", tuple(condition.shape), hashlib.sha1(data).hexdigest())
    return ("class", int(condition))


class _Conditional:
    """What the conditional cores share: the condition embedding, the MLP input, mixtures of conditions."""

    def _setup(self, kind: str, num_classes: int, condition_dim: int, time_conditioned: bool) -> None:
        self.condition_embedding = ConditionEmbedding(kind, self.embedding_dim, num_classes, condition_dim)
        self.time_dependent = bool(time_conditioned)

    @property
    def conditioning(self) -> str:
        return self.condition_embedding.kind

    def features(self, t: Tensor, condition: Tensor) -> Tensor:
        """The MLP input ``emb(t) + E(c)`` (``E(c)`` for a constant core), shape ``(N, embedding_dim)``."""
        cond = self.condition_embedding(condition)
        return self.embed(t).to(cond.dtype) + cond if self.time_dependent else cond

    def _inputs(self, z: Tensor, t, condition) -> Tuple[Tensor, Tensor]:
        """Check a forward call; return ``(t of shape (N,), condition)``."""
        self._check(z, t)
        if condition is None:
            raise ValueError(f"This core is {self.conditioning}-conditioned: pass a condition (the null condition for ∅).")
        condition = self.condition_embedding.check(condition, z.shape[0])
        return _as_time(t if self.time_dependent else 0.0, z.shape[0], z), condition

    def _mixture_factors(self, ts, mix, grad: bool):
        """The factors at every (condition, time) pair: ``(weights (K,), number of times n, factors)``; the
        factors have a leading dimension ``K·n`` (condition-major), evaluated in at least fp32 unless ``grad``."""
        if not mix:
            raise ValueError("A mixture of conditions needs at least one (weight, condition) pair.")
        if self.time_dependent:
            times = self._times(ts)
        else:
            times = torch.zeros(1, dtype=next(self.parameters()).dtype, device=next(self.parameters()).device)
        n = times.shape[0]
        conds = self.condition_embedding.stack([c for _, c in mix], n)
        weights = torch.tensor([float(w) for w, _ in mix], dtype=torch.float64)
        all_times = times.repeat(len(mix))
        if grad:
            return weights, n, self.factors(all_times, conds)
        with torch.no_grad():
            if all_times.dtype in _HALF:
                wide = copy.deepcopy(self).float()
                conds = conds.float() if conds.is_floating_point() else conds
                return weights, n, wide.factors(all_times.float(), conds)
            return weights, n, self.factors(all_times, conds)

    def operators(self, ts, dtype=None, grad=False, condition=None):
        """``[A(t, c) for t in ts]`` for one condition ``c`` (an id or a ``(condition_dim,)`` embedding)."""
        if condition is None:
            raise ValueError(f"This core is {self.conditioning}-conditioned: operators(ts, condition=c) needs a "
                             "condition (use guided(...) or the null condition for ∅).")
        return self.mixed_operators(ts, [(1.0, condition)], dtype=dtype, grad=grad)

    def guided(self, condition, negative=None, guidance: float = 0.0) -> "GuidedCore":
        """The view ``(1 + w)·A(t, c) − w·A(t, c⁻)`` (``w = guidance``; ``c⁻ = negative``, default ∅ for classes)."""
        return GuidedCore(self, [(1.0, condition)], negative, guidance)


class ConditionalSharedBasisCore(_Conditional, SharedBasisCore):
    """``A(t, c) = a(t, c)·I + U S(t, c) Vᵀ`` (the shared-basis core with a conditioned MLP input), or the
    constant ``a(c)·I + U S(c) Vᵀ`` with ``time_conditioned=False`` (``core_type="constant_basis"``)."""

    def __init__(self, dim: int, rank: int, conditioning: str, num_classes: int = 0, condition_dim: int = 0,
                 time_conditioned: bool = True, **kwargs):
        super().__init__(dim, rank, **kwargs)
        self._setup(conditioning, num_classes, condition_dim, time_conditioned)

    def factors(self, t: Tensor, condition: Tensor):
        """``(a(t, c), S(t, c))``: shapes ``(N,)``, ``(N, R, R)``."""
        out = self.s_mlp(self.features(t, condition))
        a = out[:, 0] if self.identity else torch.zeros_like(out[:, 0])
        return a, out[:, 1:].view(-1, self.rank, self.rank)

    def forward(self, z: Tensor, t=None, condition: Optional[Tensor] = None) -> Tensor:
        """``z_n ↦ a(t_n, c_n)·z_n + U S(t_n, c_n) Vᵀ z_n``."""
        t, condition = self._inputs(z, t, condition)
        a, s = self.factors(t, condition)
        coeff = torch.einsum("nrk,nk->nr", s, z @ self.V)
        return a[:, None] * z + coeff @ self.U.T

    def mixed_operators(self, ts, mix, dtype=None, grad=False) -> List[SharedBasisOperator]:
        """``[Σ_k w_k A(t, c_k) for t in ts]`` for ``mix = [(w_k, c_k), …]``, all on the core's ``U``, ``V``."""
        weights, n, (a, s) = self._mixture_factors(ts, mix, grad)
        dtype = dtype or self.U.dtype
        w = weights.to(device=a.device, dtype=dtype)
        a = (w[:, None] * a.to(dtype).view(len(mix), n)).sum(0)
        s = (w[:, None, None, None] * s.to(dtype).view(len(mix), n, self.rank, self.rank)).sum(0)
        U, V = _keep(self.U, grad).to(dtype), _keep(self.V, grad).to(dtype)
        gram = V.T @ U
        ops = [SharedBasisOperator(a[i], s[i], U, V, gram=gram) for i in range(n)]
        return ops if self.time_dependent else ops * len(ts)


class ConditionalTimeLowRankCore(_Conditional, TimeLowRankCore):
    """``A(t, c) = a(t, c)·I + U(t, c) V(t, c)ᵀ``; a guided mixture stacks the factors of its conditions."""

    def __init__(self, dim: int, rank: int, conditioning: str, num_classes: int = 0, condition_dim: int = 0, **kwargs):
        super().__init__(dim, rank, **kwargs)
        self._setup(conditioning, num_classes, condition_dim, True)

    def factors(self, t: Tensor, condition: Tensor):
        """``(a, U, V)`` at ``(t, c)``: shapes ``(N,)``, ``(N, D, r)``, ``(N, D, r)``."""
        e = self.features(t, condition)
        u = self.u_mlp(e).view(-1, self.dim, self.rank)
        v = self.v_mlp(e).view(-1, self.dim, self.rank)
        a = self.a_mlp(e).squeeze(-1) if self.identity else torch.zeros_like(e[:, 0])
        return a, u, v

    def forward(self, z: Tensor, t=None, condition: Optional[Tensor] = None) -> Tensor:
        """``z_n ↦ a·z_n + U (Vᵀ z_n)`` at ``(t_n, c_n)``."""
        t, condition = self._inputs(z, t, condition)
        a, u, v = self.factors(t, condition)
        return a[:, None] * z + torch.einsum("ndr,nr->nd", u, torch.einsum("nd,ndr->nr", z, v))

    def mixed_operators(self, ts, mix, dtype=None, grad=False) -> List[IdentityPlusLowRank]:
        """``[Σ_k w_k A(t, c_k) for t in ts]`` as ``(Σ w_k a_k)·I + [w_k U_k]_k [V_k]_kᵀ``."""
        weights, n, (a, u, v) = self._mixture_factors(ts, mix, grad)
        dtype = dtype or self.u_mlp[-1].weight.dtype
        K = len(mix)
        w = weights.to(device=a.device, dtype=dtype)
        a = (w[:, None] * a.to(dtype).view(K, n)).sum(0)
        u = (w[:, None, None, None] * u.to(dtype).view(K, n, self.dim, self.rank))
        v = v.to(dtype).view(K, n, self.dim, self.rank)
        return [IdentityPlusLowRank(a[i], torch.cat(list(u[:, i]), dim=1), torch.cat(list(v[:, i]), dim=1))
                for i in range(n)]


class GuidedCore:
    """``(1 + w)·Σ_k λ_k A(t, c_k) − w·A(t, c⁻)`` as a core-like object for ``LinearizerScheduler.collapse``.

    ``blend = [(λ_k, c_k), …]`` is usually one condition ``[(1.0, c)]``; several with weights summing to 1
    interpolate between conditions (the interpolated core is again a core operator). ``w = guidance``; ``w = 0``
    is the plain conditional core. ``time_dependent`` and ``operators(ts, dtype=None, grad=False)`` are the
    core's. Views are cheap: the scheduler caches their collapse by the owner core's weights plus the blend,
    ``c⁻`` and ``w`` (:meth:`cache_identity`), so a new view of the same guidance hits the cache.
    """

    def __init__(self, core, blend, negative=None, guidance: float = 0.0):
        if not hasattr(core, "mixed_operators"):
            raise ValueError(f"Guidance needs a conditional core, got {type(core).__name__}.")
        w = float(guidance)
        if negative is None and core.conditioning == "class":
            negative = core.condition_embedding.null_class
        elif negative is None and w != 0.0:
            raise ValueError("Text guidance needs the negative condition (the embedding of the negative or empty prompt).")
        self.core, self.blend, self.negative, self.guidance = core, [(float(lam), c) for lam, c in blend], negative, w
        self.time_dependent = core.time_dependent
        self.mix = [((1.0 + w) * lam, c) for lam, c in self.blend] + ([(-w, negative)] if w != 0.0 else [])

    def operators(self, ts, dtype=None, grad=False):
        return self.core.mixed_operators(ts, self.mix, dtype=dtype, grad=grad)

    def apply(self, z: Tensor, t) -> Tensor:
        """The guided prediction by the core's forward, one evaluation per mixture entry (two for ``(c, w)``)."""
        return guided_forward(self.core, z, t, [(weight, [cond]) for weight, cond in self.mix])

    def cache_identity(self):
        """``(owner module, key)``: the scheduler fingerprints the owner's weights and adds the key."""
        blend = tuple((lam, condition_key(c)) for lam, c in self.blend)
        negative = None if self.negative is None else condition_key(self.negative)
        return self.core, ("guided", blend, negative, self.guidance)

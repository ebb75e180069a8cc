r"""Fibers of factored cores: which factor weights give the same linear map, and a rank-collapse monitor.

A factored core's low-rank part is a linear network ``W = W_L ⋯ W_1`` with ``W_j ∈ R^{d_j × d_{j−1}}``:
``U Vᵀ`` (``L = 2``, ``d = (D, r, D)``: ``W_1 = Vᵀ``, ``W_2 = U``) or ``U S(t) Vᵀ`` (``L = 3``,
``d = (D, R, R, D)``). The **fiber** of ``W`` is the set of all factor tuples with that product. It is
stratified by the **rank list** ``r_{ki} = rank(W_k ⋯ W_{i+1})`` (``0 ≤ i < k ≤ L``; ``r_{jj} = d_j``), and each
stratum is a smooth manifold whose dimension follows from the rank list (``docs/math.md`` §A4):

    ω_{ts} = r_{ts} − r_{t+1,s} − r_{t,s−1} + r_{t+1,s−1}           (r = 0 outside 0 ≤ s ≤ t ≤ L)
    dim(stratum) = Σ_j d_j² − Σ_{[s,t], [s',t']: s' ≤ s ≤ t' ≤ t} ω_{ts}·ω_{t's'} − r_{L0}·(d_L + d_0 − r_{L0})

``ω_{ts}`` counts the directions that enter at layer ``s`` and survive to layer ``t``; the first two terms are
the dimension of the set of all factor tuples with this rank list (an orbit of ``Π_j GL(d_j)`` acting by
``W_j ↦ g_j W_j g_{j−1}⁻¹``), the last that of the rank-``r_{L0}`` matrices it maps onto.

:func:`numerical_stratum_dimension` measures the same number without the formula, from ranks of explicit
Jacobians (small cases only): ``rank(T) − rank(J_μ T)`` with ``J_μ`` the Jacobian of the multiplication map
``μ(W_1, …, W_L) = W_L ⋯ W_1`` and ``T`` that of the group action at the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..operators import DenseOperator, IdentityPlusLowRank, SharedBasisOperator

__all__ = ["rank_list", "interval_multiplicities", "stratum_dimension", "numerical_stratum_dimension",
           "core_factors", "fiber_report", "FiberReport", "rank_collapse_check", "COLLAPSE_RTOL"]

#: singular values below this fraction of a matrix's largest count as lost in the collapse monitor
COLLAPSE_RTOL = 1e-3


def _check_dims(dims: Sequence[int], ranks: Dict[Tuple[int, int], int]) -> int:
    L = len(dims) - 1
    if L < 1 or any(int(d) < 1 for d in dims):
        raise ValueError(f"Expected layer sizes d_0 … d_L (L ≥ 1, each ≥ 1), got {list(dims)}.")
    for k in range(1, L + 1):
        for i in range(k):
            if (k, i) not in ranks:
                raise ValueError(f"The rank list lacks r_{k}{i} = rank(W_{k} ⋯ W_{i + 1}).")
            if not 0 <= ranks[(k, i)] <= min(dims[i:k + 1]):
                raise ValueError(f"r_{k}{i} = {ranks[(k, i)]} is impossible for layer sizes {list(dims[i:k + 1])}.")
    return L


def interval_multiplicities(dims: Sequence[int], ranks: Dict[Tuple[int, int], int]) -> Dict[Tuple[int, int], int]:
    r"""``{(s, t): ω_{ts}}``: ``ω_{ts} = r_{ts} − r_{t+1,s} − r_{t,s−1} + r_{t+1,s−1}`` (``r_{jj} = d_j``, 0 outside);
    a rank list no factor tuple has gives a negative ``ω`` and a ``ValueError``."""
    L = _check_dims(dims, ranks)

    def r(t: int, s: int) -> int:
        if s < 0 or t > L or s > t:
            return 0
        return int(dims[t]) if s == t else int(ranks[(t, s)])

    omega = {(s, t): r(t, s) - r(t + 1, s) - r(t, s - 1) + r(t + 1, s - 1) for s in range(L + 1) for t in range(s, L + 1)}
    bad = {k: v for k, v in omega.items() if v < 0}
    if bad:
        raise ValueError(f"No factor tuple has this rank list (negative interval multiplicities {bad}).")
    return omega


def stratum_dimension(dims: Sequence[int], ranks: Dict[Tuple[int, int], int]) -> int:
    r"""The dimension of the stratum of the fiber with rank list ``ranks`` (module docstring):
    ``Σ d_j² − Σ_{s' ≤ s ≤ t' ≤ t} ω_{ts} ω_{t's'} − r_{L0}(d_L + d_0 − r_{L0})``.

    Args:
        dims: ``(d_0, …, d_L)``; ranks: ``{(k, i): rank(W_k ⋯ W_{i+1})}`` for ``0 ≤ i < k ≤ L``.
    """
    omega = interval_multiplicities(dims, ranks)
    L = len(dims) - 1
    orbit = sum(int(d) ** 2 for d in dims)
    items = [(s, t, w) for (s, t), w in omega.items() if w]
    orbit -= sum(w1 * w2 for s, t, w1 in items for s2, t2, w2 in items if s2 <= s <= t2 <= t)
    r = int(ranks[(L, 0)])
    return orbit - r * (int(dims[L]) + int(dims[0]) - r)


def _svdvals_of_product(mats: Sequence[Tensor]) -> Tensor:
    """Singular values of ``mats[-1] ⋯ mats[0]`` without a large matrix: split at the narrowest inner layer,
    ``P = A·C`` with ``A = Q_A R_A``, ``Cᵀ = Q_C R_C``, so ``σ(P) = σ(R_A R_Cᵀ)``."""
    if len(mats) == 1:
        return torch.linalg.svdvals(mats[0])
    inner = [m.shape[0] for m in mats[:-1]]
    j = min(range(len(inner)), key=lambda i: inner[i])
    A = mats[-1]
    for m in reversed(mats[j + 1:-1]):
        A = A @ m
    C = mats[0]
    for m in mats[1:j + 1]:
        C = m @ C
    if A.shape[0] < A.shape[1] or C.shape[1] < C.shape[0]:
        return torch.linalg.svdvals(A @ C)
    RA = torch.linalg.qr(A)[1]
    RC = torch.linalg.qr(C.mT)[1]
    return torch.linalg.svdvals(RA @ RC.mT)


def _rank(s: Tensor, shape: Tuple[int, int], rtol: Optional[float]) -> int:
    if s.numel() == 0 or not float(s.max()) > 0:
        return 0
    tol = torch.finfo(s.dtype).eps * max(shape) if rtol is None else float(rtol)
    return int((s > tol * s.max()).sum())


def rank_list(factors: Sequence[Tensor], rtol: Optional[float] = None) -> Dict[Tuple[int, int], int]:
    r"""``{(k, i): rank(W_k ⋯ W_{i+1})}`` for factors ``[W_1, …, W_L]`` (``W_j`` of shape ``(d_j, d_{j−1})``),
    numerical ranks in float64: singular values above ``rtol·σ_max`` (default ``eps·max(m, n)``, the rule of
    ``torch.linalg.matrix_rank``)."""
    mats = [torch.as_tensor(w).detach().double().cpu() for w in factors]
    for j in range(1, len(mats)):
        if mats[j].shape[1] != mats[j - 1].shape[0]:
            raise ValueError(f"Factor W_{j + 1} of shape {tuple(mats[j].shape)} does not follow W_{j} of shape "
                             f"{tuple(mats[j - 1].shape)}.")
    out = {}
    for k in range(1, len(mats) + 1):
        for i in range(k):
            part = mats[i:k]
            shape = (part[-1].shape[0], part[0].shape[1])
            out[(k, i)] = _rank(_svdvals_of_product(part), shape, rtol)
    return out


def numerical_stratum_dimension(factors: Sequence[Tensor], rtol: float = 1e-9) -> Tuple[int, int]:
    r"""``(dim, dof)`` at the factor tuple, from Jacobian ranks (float64; small cases: it forms matrices with
    ``d_L·d_0`` and ``Σ d_j d_{j−1}`` rows):

    * ``dim = rank(T) − rank(J_μ T)``: the tangent space of the stratum is the tangent space of the orbit
      (``T``: the Jacobian of ``(X_0, …, X_L) ↦ (X_j W_j − W_j X_{j−1})_j``) intersected with ``ker J_μ``;
    * ``dof = P − rank(J_μ)``: first-order motions on the fiber (``P`` weights), ``≥ dim``.
    """
    mats = [torch.as_tensor(w).detach().double().cpu() for w in factors]
    shapes = [m.shape for m in mats]
    sizes = [m.numel() for m in mats]
    dims = [shapes[0][1]] + [s[0] for s in shapes]

    def mu(theta: Tensor) -> Tensor:
        ws, at = [], 0
        for shape, n in zip(shapes, sizes):
            ws.append(theta[at:at + n].view(shape))
            at += n
        out = ws[0]
        for w in ws[1:]:
            out = w @ out
        return out.flatten()

    def action(xs: Tensor) -> Tensor:
        gens, at = [], 0
        for d in dims:
            gens.append(xs[at:at + d * d].view(d, d))
            at += d * d
        return torch.cat([(gens[j + 1] @ w - w @ gens[j]).flatten() for j, w in enumerate(mats)])

    theta = torch.cat([m.flatten() for m in mats])
    J_mu = torch.func.jacrev(mu)(theta)
    T = torch.func.jacrev(action)(torch.zeros(sum(d * d for d in dims), dtype=torch.float64))

    def norm(M: Tensor) -> float:
        return float(torch.linalg.matrix_norm(M, ord=2)) if M.numel() else 0.0

    def rank(M: Tensor, scale: float) -> int:  # relative to the scale of the factors, not of M: J_μ T may be ~0
        return int((torch.linalg.svdvals(M) > rtol * scale).sum()) if M.numel() and scale > 0 else 0

    return (rank(T, norm(T)) - rank(J_mu @ T, norm(J_mu) * norm(T)),
            theta.numel() - rank(J_mu, norm(J_mu)))


def core_factors(operator) -> List[Tensor]:
    """``[W_1, …, W_L]`` of an operator's low-rank part: ``[Vᵀ, U]`` for ``c·I + U Vᵀ``, ``[Vᵀ, X, U]`` for
    ``a·I + U X Vᵀ``; a ``ValueError`` for an operator without factors (dense)."""
    if isinstance(operator, SharedBasisOperator):
        return [operator.V.mT, operator.X, operator.U]
    if isinstance(operator, IdentityPlusLowRank):
        return [operator.V.mT, operator.U]
    kind = "a dense matrix" if isinstance(operator, DenseOperator) else type(operator).__name__
    raise ValueError(f"fiber_report needs a factored core (c·I + U Vᵀ or a·I + U S(t) Vᵀ: core_type lowrank, "
                     f"time_lowrank, shared_basis or constant_basis); this core is {kind}, with no factors.")


def _core_operators(core, ts, condition):
    """The core's operators at ``ts`` (conditional cores: at ``condition``, default ∅ / the zero embedding)."""
    core = getattr(core, "core", core)  # a LinearizerModel → its core
    from ..models.cores import DenseCore

    if isinstance(core, DenseCore):
        raise ValueError("fiber_report needs a factored core (c·I + U Vᵀ or a·I + U S(t) Vᵀ: core_type lowrank, "
                         "time_lowrank, shared_basis or constant_basis); core_type 'dense' has no factors.")
    times = list(ts) if core.time_dependent else [None]
    if hasattr(core, "mixed_operators"):
        if condition is None:
            emb = core.condition_embedding
            condition = emb.null_class if emb.kind == "class" else torch.zeros(emb.condition_dim)
        ops = core.operators([0.0 if t is None else t for t in times], dtype=torch.float64, condition=condition)
    else:
        ops = core.operators(times, dtype=torch.float64)
    return core, times, ops


@dataclass
class FiberReport:
    """What :func:`fiber_report` found for each time (or the one operator of a time-independent core).

    Args:
        form: ``"c·I + U Vᵀ"`` or ``"a·I + U S Vᵀ"``; dims: ``(d_0, …, d_L)``.
        times: the times (``[None]`` for a time-independent core).
        rank_lists: per time, ``{"k,i": rank(W_k ⋯ W_{i+1})}``.
        stratum_dimensions: per time, :func:`stratum_dimension`.
        top_dimension: the stratum dimension when every partial product has full rank (the generic stratum).
        effective_ranks: per time, rank of the product at ``COLLAPSE_RTOL``; nominal_rank: ``r`` or ``R``.
        checks: per checked time, ``(formula, numerical dim, dof)`` (small cores only, ``check=True``).
    """

    form: str
    dims: Tuple[int, ...]
    times: List[Optional[float]]
    rank_lists: List[Dict[str, int]]
    stratum_dimensions: List[int]
    top_dimension: int
    effective_ranks: List[int]
    nominal_rank: int
    checks: List[Tuple[int, int, int]] = field(default_factory=list)


def fiber_report(core, ts: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 0.99), condition=None,
                 rtol: Optional[float] = None, check: bool = False) -> FiberReport:
    r"""Rank lists and stratum dimensions of a factored core's low-rank part at the times ``ts``.

    For each time: ``r_{ki} = rank(W_k ⋯ W_{i+1})`` (numerical, ``rtol``), the stratum dimension
    ``Σ d_j² − Σ_{s' ≤ s ≤ t' ≤ t} ω_{ts}ω_{t's'} − r_{L0}(d_L + d_0 − r_{L0})`` (module docstring), and the
    effective rank of the product at ``COLLAPSE_RTOL``. ``check=True`` also measures the dimension from Jacobian
    ranks (:func:`numerical_stratum_dimension`; only for ``Σ d_j² ≤ 4096``).

    Args:
        core: a factored core, or a ``LinearizerModel`` (its core). A dense core is a ``ValueError``.
        ts: times of a time-dependent core; condition: the condition of a conditional core (default ∅).

    Returns:
        :class:`FiberReport`.
    """
    core, times, ops = _core_operators(core, ts, condition)
    factors = [core_factors(op) for op in ops]
    dims = tuple([factors[0][0].shape[1]] + [w.shape[0] for w in factors[0]])
    L = len(dims) - 1
    full = {(k, i): min(dims[i:k + 1]) for k in range(1, L + 1) for i in range(k)}
    report = FiberReport(form="a·I + U S Vᵀ" if L == 3 else "c·I + U Vᵀ", dims=dims, times=times, rank_lists=[],
                         stratum_dimensions=[], top_dimension=stratum_dimension(dims, full), effective_ranks=[],
                         nominal_rank=min(dims[1:-1]))
    for ws in factors:
        ranks = rank_list(ws, rtol)
        report.rank_lists.append({f"{k},{i}": v for (k, i), v in sorted(ranks.items())})
        report.stratum_dimensions.append(stratum_dimension(dims, ranks))
        report.effective_ranks.append(rank_list(ws, COLLAPSE_RTOL)[(L, 0)])
        if check:
            if sum(d * d for d in dims) > 4096:
                raise ValueError(f"check=True forms Jacobians of size ~(Σ d_j²)²; layer sizes {dims} are too large.")
            num, dof = numerical_stratum_dimension(ws)
            report.checks.append((report.stratum_dimensions[-1], num, dof))
    return report


def rank_collapse_check(core, previous: Optional[Dict[str, int]] = None, ts: Sequence[float] = (0.0, 0.5, 0.9),
                        drop: float = 0.25) -> Tuple[str, Dict[str, int]]:
    r"""A log line with the effective ranks of a factored core (singular values above ``COLLAPSE_RTOL·σ_max`` of
    each factor and of the product at each time), and the largest ranks seen so far.

    A **rank collapse** is a rank that fell by more than ``drop`` of the largest value seen so far (and by at
    least 2) — the core silently lost directions it had. ``previous`` is the dict this function returned last
    time (``None`` at the first call). A dense core is not factored: its line says so.

    Returns:
        ``(line, seen)``: the line (``"core ranks: … "``, ending in ``RANK COLLAPSE: …`` when one happened) and
        the updated maxima to pass back next time.
    """
    try:
        core, times, ops = _core_operators(core, ts, None)
        core_factors(ops[0])  # an unfactored operator (dense, a convolution) raises here
    except ValueError:
        return "core ranks: not a factored core", dict(previous or {})
    seen = dict(previous or {})
    now: Dict[str, int] = {}
    with torch.no_grad():
        for t, op in zip(times, ops):
            ws = core_factors(op)
            at = "" if t is None else f"(t={t:g})"
            named = [("S" + at, ws[1])] if len(ws) == 3 else [("Vᵀ" + at, ws[0]), ("U" + at, ws[1])]
            if len(ws) == 3 and "U" not in now:  # the shared basis is the same at every time
                named += [("Vᵀ", ws[0]), ("U", ws[2])]
            for key, w in named:
                now[key] = _rank(torch.linalg.svdvals(w.double()), tuple(w.shape), COLLAPSE_RTOL)
            now["product" + at] = rank_list(ws, COLLAPSE_RTOL)[(len(ws), 0)]
    lost = [f"{k} {seen[k]}→{v}" for k, v in now.items()
            if k in seen and seen[k] - v >= max(2, math.ceil(drop * seen[k]))]
    for k, v in now.items():
        seen[k] = max(v, seen.get(k, 0))
    nominal = ws[0].shape[0]
    line = f"core ranks (of {nominal}, rtol {COLLAPSE_RTOL:g}): " + ", ".join(f"{k} {v}" for k, v in now.items())
    if lost:
        line += " — RANK COLLAPSE: " + ", ".join(lost)
    return line, seen

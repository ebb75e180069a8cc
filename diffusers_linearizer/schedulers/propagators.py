"""Products of one-step propagators of the latent ODE.

In the Linearizer's latent space the sampler integrates a *linear* ODE

    dz/dt = K(t) z,        K(t) = (A_t − I) / (1 − t),

where the core predicts the clean latent ``ẑ₁ = A_t z`` (time ``t ∈ [0, 1)``, ``t = 0`` noise,
``t = 1`` data; see ``docs/math.md`` §2). Because the ODE is linear, one step of an explicit
Runge–Kutta method from ``z`` is a matrix ``P`` applied to ``z`` — built from the generators at the
stage times by the solver's :meth:`~.solvers.Solver.propagator` — and a whole sampler run is the ordered
product ``B = P_{n−1} ··· P_1 P_0`` (``P_0`` acts on the noise latent first).

The products here take the step builder ``propagator(Ks, h)`` as an argument (the collapse passes the
solver's :meth:`~.solvers.Solver.propagator`) and use only ``a @ b``, ``a + b``, ``a * s`` and
``a.add_identity(s)`` on the operators:

* :func:`collapse_product` multiplies any operators left to right (``IdentityPlusLowRank``,
  ``SharedBasisOperator``, ``DenseOperator`` from :mod:`diffusers_linearizer.operators`, or any class with
  those four operations), recompressing low-rank factors as their rank grows;
* :func:`structured_collapse` is the exact, fast path for scaled identity plus low rank ``A_t``: it builds
  every step on :class:`CoordinateOperator` stages (small matrices over the basis of all evaluated
  factors) and forms a ``D × D`` matrix only when those factors span all of ``R^D`` (``T·r ≳ D``), where
  ``B`` itself has a full-rank perturbation;
* :func:`autograd_collapse` is the differentiable path (functional operator algebra on one basis).
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch

from ..operators import DenseOperator, IdentityPlusLowRank, SharedBasisOperator

__all__ = [
    "latent_generator",
    "collapse_product",
    "CoordinateOperator",
    "structured_collapse",
    "autograd_collapse",
]


def latent_generator(A_t, t: float):
    """``K(t) = (A_t − I) / (1 − t)``: the generator of the latent ODE at time ``t < 1``."""
    t = float(t)
    if not t < 1.0:
        raise ValueError(f"K(t) = (A_t - I)/(1 - t) is singular at t = 1; got t = {t}.")
    return A_t.add_identity(-1.0) * (1.0 / (1.0 - t))


def collapse_product(
    factors: Iterable, *, tol: Optional[float] = None, growth: float = 2.0
) -> Tuple[object, float]:
    """Ordered product ``F_{n−1} ··· F_1 F_0`` of operators given in application order.

    The running product is multiplied on the left by each new factor. Operators that have a
    ``compress`` method (scaled identity plus low rank) are recompressed whenever their nominal rank
    exceeds ``min(D, growth × max(rank after the last compression, rank of the newest factor))``:
    concatenated factors then hold mostly redundant columns, and a doubling schedule keeps the total
    recompression cost within a constant factor of the final one. Operators whose rank cannot grow
    (shared-basis, dense, small coordinate operators) are never recompressed.

    Returns ``(B, dropped)``: ``dropped`` is the sum of the Frobenius norms discarded by the
    recompressions, each measured at the moment of truncation (``0.0`` when nothing was dropped).
    """
    product, last_rank, dropped = None, 0, 0.0
    for factor in factors:
        product = factor if product is None else factor @ product
        if not hasattr(product, "compress"):
            continue
        limit = min(product.dim, growth * max(last_rank, factor.rank))
        if product.rank > limit:
            product, lost = product.compress(tol=tol)
            dropped += float(lost)
            last_rank = product.rank
    if product is None:
        raise ValueError("collapse_product needs at least one factor.")
    return product, dropped


class CoordinateOperator:
    """``a·I + 𝐔[:, lo:hi] X 𝐕[:, lo:hi]ᵀ`` over a fixed basis ``(𝐔, 𝐕)`` known through ``G = 𝐕ᵀ𝐔``.

    The small-coordinate algebra of ``docs/math.md`` §1 ("shared basis"), restricted to a contiguous range
    of basis columns (the *support*): products and sums act on the hull of the supports, so a
    propagator touching a few blocks of a long basis costs ``O(k·R²)`` to multiply into a product of
    support ``R``, never ``O(D)``. ``a`` is a Python float, ``X`` a ``(hi − lo) × (hi − lo)`` tensor.
    It supports exactly the operations :meth:`~.solvers.Solver.propagator` uses.
    """

    __slots__ = ("a", "X", "lo", "hi", "gram")

    def __init__(self, a: float, X: torch.Tensor, lo: int, hi: int, gram: torch.Tensor):
        self.a, self.X, self.lo, self.hi, self.gram = float(a), X, int(lo), int(hi), gram

    @property
    def rank(self) -> int:
        return self.hi - self.lo

    def padded(self, lo: int, hi: int) -> torch.Tensor:
        """``X`` embedded (zeros elsewhere) in the larger support ``[lo, hi)``."""
        if (lo, hi) == (self.lo, self.hi):
            return self.X
        out = self.X.new_zeros(hi - lo, hi - lo)
        out[self.lo - lo:self.hi - lo, self.lo - lo:self.hi - lo] = self.X
        return out

    def __matmul__(self, other: "CoordinateOperator") -> "CoordinateOperator":
        # (a·I + U X Vᵀ)(b·I + U Y Vᵀ) = ab·I + U (a·Y + b·X + X G Y) Vᵀ
        lo, hi = min(self.lo, other.lo), max(self.hi, other.hi)
        out = other.padded(lo, hi) * self.a
        out[self.lo - lo:self.hi - lo, self.lo - lo:self.hi - lo] += self.X * other.a
        cross = (self.X @ self.gram[self.lo:self.hi, other.lo:other.hi]) @ other.X
        out[self.lo - lo:self.hi - lo, other.lo - lo:other.hi - lo] += cross
        return CoordinateOperator(self.a * other.a, out, lo, hi, self.gram)

    def __add__(self, other: "CoordinateOperator") -> "CoordinateOperator":
        lo, hi = min(self.lo, other.lo), max(self.hi, other.hi)
        out = self.padded(lo, hi) + other.padded(lo, hi)
        return CoordinateOperator(self.a + other.a, out, lo, hi, self.gram)

    def __mul__(self, s: float) -> "CoordinateOperator":
        return CoordinateOperator(self.a * s, self.X * s, self.lo, self.hi, self.gram)

    __rmul__ = __mul__

    def __neg__(self) -> "CoordinateOperator":
        return self * -1.0

    def __sub__(self, other: "CoordinateOperator") -> "CoordinateOperator":
        return self + (-other)

    def add_identity(self, s: float) -> "CoordinateOperator":
        return CoordinateOperator(self.a + s, self.X, self.lo, self.hi, self.gram)


def structured_collapse(ops: dict, steps, propagator, dtype: torch.dtype, window: int = 512) -> Tuple[object, str]:
    """``B = P_{n−1} ··· P_0`` for operators ``A_t = a·I + U X Vᵀ`` (low-rank or shared-basis).

    ``ops`` maps each time to ``A_t`` (the dict is emptied, so that the core's factors can be freed as
    soon as they are copied); ``steps`` lists ``(h, [t of each stage])``; ``propagator(Ks, h)``
    builds one step from the stages' generators. Writing 𝐔 = [U(t) for each distinct factor pair]
    (one block per distinct time, one in all for a shared basis or a constant core), every ``K(t)`` is
    ``α·I + 𝐔 (block-diagonal) 𝐕ᵀ`` and ``B = c·I + 𝐔 M 𝐕ᵀ``: after one Gram matrix ``G = 𝐕ᵀ𝐔``
    everything is small-matrix algebra in these coordinates — exact, no ``D × D`` matrix, no
    truncation. Each step's propagator is built by ``propagator`` (the solver's
    :meth:`~.solvers.Solver.propagator`) on :class:`CoordinateOperator` stages; runs of steps touching
    ≤ ``window`` basis columns are multiplied first and folded into ``M`` together (fewer passes over
    ``M``). If the blocks have more than ``D`` columns in all they span ``R^D`` and ``B`` carries a
    full-rank perturbation, which is then accumulated as ``c·I + L`` with a ``D × D`` ``L`` (the
    information content of such a ``B``).
    Returns ``(B, mode)`` with mode ``"basis"`` or ``"dense"``; ``B`` is a ``SharedBasisOperator`` on
    the core's basis for one shared basis, else an ``IdentityPlusLowRank``.
    """
    # Blocks: the distinct (U, V) factor pairs, numbered in order of first use.
    # K(t) = α·I + U_b (β·X) V_bᵀ on its block b; gens[t] = (α, b, β·X or None for β·I, β).
    block_of, factors, gens = {}, [], {}
    for t, op in ops.items():
        a, U, V, X = _factors(op)
        b = block_of.setdefault((id(U), id(V)), len(factors))
        if b == len(factors):
            factors.append((U, V))
        beta = 1.0 / (1.0 - t)
        gens[t] = ((float(a) - 1.0) * beta, b, None if X is None else X.to(dtype) * beta, beta)
    shared = len(factors) == 1 and X is not None
    ops.clear()  # from here on only `factors` holds the core's outputs
    a = U = V = X = op = None
    widths = [U.shape[1] for U, _ in factors]
    dim, dev, blocks = factors[0][0].shape[0], factors[0][0].device, len(factors)
    basis = sum(widths) <= dim
    if basis:  # global coordinates: all blocks side by side
        start = torch.tensor([0] + widths).cumsum(0).tolist()
        Uw, Vw = _side_by_side(factors, range(blocks), dtype)
        factors.clear()
        gram = Vw.T @ Uw
        M, active = torch.zeros(start[-1], start[-1], dtype=dtype, device=dev), 0
    else:
        L = torch.zeros(dim, dim, dtype=dtype, device=dev)
    c = 1.0
    for run in _runs(steps, gens, widths, min(window, dim)):
        used = sorted({gens[t][1] for _, ts in run for t in ts})
        if basis:  # the run's blocks are a contiguous range of the basis (blocks are in order of first use)
            lo, hi = start[used[0]], start[used[-1] + 1]
            offsets = {b: start[b] - lo for b in range(used[0], used[-1] + 1)}
            cw, Mw = _run_product(gram[lo:hi, lo:hi], offsets, widths, gens, run, propagator)
            active = max(active, hi)
            _fold(M, active, lo, hi, gram, Mw, cw, c)
        else:  # local copies of the run's blocks, folded into the D × D perturbation
            offsets = dict(zip(used, torch.tensor([0] + [widths[b] for b in used[:-1]]).cumsum(0).tolist()))
            Ur, Vr = _side_by_side(factors, used, dtype)
            cw, Mw = _run_product(Vr.T @ Ur, offsets, widths, gens, run, propagator)
            L.addmm_(Ur, Mw @ (Vr.T @ L + c * Vr.T), beta=cw)  # (cw·I + Ur Mw Vrᵀ)(c·I + L)
        c *= cw
    c = torch.tensor(c, dtype=dtype, device=dev)
    if not basis:
        return IdentityPlusLowRank(c, L, torch.eye(dim, dtype=dtype, device=dev)), "dense"
    if shared:  # one shared basis: B stays a·I + U (R × R) Vᵀ
        return SharedBasisOperator(c, M, Uw, Vw, gram=gram), "basis"
    if blocks > 1:  # Uw is our own copy: overwrite it by Uw·M in row chunks (no second D × R buffer)
        for i in range(0, dim, 8192):
            Uw[i:i + 8192] = Uw[i:i + 8192] @ M
        return IdentityPlusLowRank(c, Uw, Vw), "basis"
    return IdentityPlusLowRank(c, Uw @ M, Vw), "basis"


def _side_by_side(factors, which, dtype):
    """``[U_b …]``, ``[V_b …]`` for the blocks ``which``, in ``dtype`` (the factors themselves for one block)."""
    which = list(which)
    if len(which) == 1:
        return tuple(f.to(dtype) for f in factors[which[0]])
    U0 = factors[which[0]][0]
    width = sum(factors[b][0].shape[1] for b in which)
    Uw, Vw = (U0.new_empty(U0.shape[0], width, dtype=dtype) for _ in (0, 1))
    lo = 0
    for b in which:
        r = factors[b][0].shape[1]
        Uw[:, lo:lo + r].copy_(factors[b][0])
        Vw[:, lo:lo + r].copy_(factors[b][1])
        lo += r
    return Uw, Vw


def _runs(steps, gens, widths, limit):
    """Consecutive steps grouped so that each group's distinct blocks span about ``limit`` columns."""
    run, seen = [], set()
    for step in steps:
        run.append(step)
        seen.update(gens[t][1] for t in step[1])
        if sum(widths[b] for b in seen) >= limit:
            yield run
            run, seen = [], set()
    if run:
        yield run


def _fold(M, active, lo, hi, gram, N, p, c):
    """``c·I + 𝐔 M 𝐕ᵀ ← (p·I + 𝐔[:, lo:hi] N 𝐕[:, lo:hi]ᵀ)(c·I + 𝐔 M 𝐕ᵀ)``, in place on ``M``:

    ``M ← p·M + E N (c·Eᵀ + G[lo:hi, :] M)`` with ``E`` the selection of the columns ``lo:hi``.
    """
    W = N @ (gram[lo:hi, :active] @ M[:active, :active])
    W[:, lo:hi] += c * N
    M[:active, :active].mul_(p)
    M[lo:hi, :active] += W


def _run_product(gram, offsets, widths, gens, run, propagator):
    """``(c, M)`` with ``P_last ··· P_first = c·I + 𝐔 M 𝐕ᵀ`` in the coordinates of ``gram``."""
    dtype, dev = gram.dtype, gram.device
    M, c, active = torch.zeros_like(gram), 1.0, 0
    for h, ts in run:
        used = list(dict.fromkeys(gens[t][1] for t in ts))
        lo, hi = min(offsets[b] for b in used), max(offsets[b] + widths[b] for b in used)
        ks = []
        for t in ts:
            alpha, b, X, beta = gens[t]
            X = X if X is not None else torch.eye(widths[b], dtype=dtype, device=dev) * beta
            ks.append(CoordinateOperator(alpha, X, offsets[b] - lo, offsets[b] - lo + widths[b], gram[lo:hi, lo:hi]))
        P = propagator(ks, h)
        active = max(active, hi)
        _fold(M, active, lo, hi, gram, P.padded(0, hi - lo), P.a, c)
        c *= P.a
    return c, M


def _factors(op):
    """``(a, U, V, X)`` of ``a·I + U X Vᵀ`` (``X = None`` meaning the identity)."""
    if isinstance(op, SharedBasisOperator):
        return op.a, op.U, op.V, op.X
    return op.c, op.U, op.V, None


def autograd_collapse(ops: dict, steps, propagator, dtype: torch.dtype):
    """``B = P_{n−1} ··· P_0`` by plain, functional operator algebra, for operators attached to autograd.

    :func:`structured_collapse` updates its coordinate matrix in place and reads the identity
    coefficients as Python floats, which is fast but not differentiable. Here every ``A_t`` stays a
    tensor-valued operator and every product is a new operator, so ``B`` (and ``B.apply``) can be
    differentiated with respect to the core's parameters. Identity-plus-low-rank operators are first
    written on one basis, as :func:`structured_collapse` does: ``𝐔 = [U(t) for each distinct factor]``
    and ``A_t = c_t·I + 𝐔 E_t 𝐕ᵀ`` with ``E_t`` selecting its block, so every product stays in
    ``W × W`` coordinates (``W = r`` for a constant core, ``R`` for the shared basis; memory
    ``O(D·W + T·W²)`` for the backward pass). When the blocks have more than ``D`` columns in all,
    the operators are multiplied as ``D × D`` matrices (no truncation, so no SVD in the graph).
    """
    gens = {t: latent_generator(op, t).to(dtype=dtype) for t, op in _on_one_basis(ops).items()}
    B, _ = collapse_product((propagator([gens[t] for t in ts], h) for h, ts in steps), growth=float("inf"))
    return B


def _on_one_basis(ops: dict) -> dict:
    """``{t: A_t}`` with every identity-plus-low-rank ``A_t`` rewritten on the shared basis of all their
    distinct factors (``SharedBasisOperator`` with a block-selector ``X``), or as ``DenseOperator`` when
    that basis would exceed ``D`` columns. Other operators are returned unchanged."""
    if not all(isinstance(op, IdentityPlusLowRank) for op in ops.values()):
        return ops
    blocks = list({id(op): op for op in ops.values()}.values())
    width, dim = sum(op.rank for op in blocks), blocks[0].dim
    if width > dim:
        return {t: DenseOperator(op.to_dense(max_dim=dim)) for t, op in ops.items()}
    U = blocks[0].U if len(blocks) == 1 else torch.cat([op.U for op in blocks], 1)
    V = blocks[0].V if len(blocks) == 1 else torch.cat([op.V for op in blocks], 1)
    gram, start, rewritten = V.mT @ U, 0, {}
    for op in blocks:
        X = torch.zeros(width, width, dtype=U.dtype, device=U.device)
        X[start:start + op.rank, start:start + op.rank] = torch.eye(op.rank, dtype=U.dtype, device=U.device)
        rewritten[id(op)] = SharedBasisOperator(op.c, X, U, V, gram=gram)
        start += op.rank
    return {t: rewritten[id(op)] for t, op in ops.items()}

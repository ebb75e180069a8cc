"""The collapsed operator B: equal to the stepped solver, to an independent dense product, and convergent.

Every reference here is computed independently of ``LinearizerScheduler.collapse``: the stepped
scheduler loop, dense matrices built from the cores' raw factors (``core.factors``), textbook dense
propagators, and ``torch.linalg.matrix_exp`` of the exact solution.

A little past 400 lines: every core type × solver × precision is checked against the same references.
"""

import math
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusers_linearizer.models import DenseCore, LowRankCore, SharedBasisCore, TimeLowRankCore
from diffusers_linearizer.operators import IdentityPlusLowRank, SharedBasisOperator
from diffusers_linearizer.schedulers import (
    SOLVERS,
    LinearizerScheduler,
    collapse_product,
    latent_generator,
)

from .test_solvers import Mat

F64 = torch.float64


# ---------------------------------------------------------------------------- helpers
def make_core(kind, dim, rank, seed=0, hidden=32, emb=16, identity=True, scale=1.0):
    """A core with random weights whose A_t really varies with t (zero/small last layers perturbed)."""
    torch.manual_seed(seed)
    if kind == "time_lowrank":
        core = TimeLowRankCore(dim, rank, hidden_dim=hidden, embedding_dim=emb, identity=identity)
        layers = [core.u_mlp[-1], core.v_mlp[-1]] + ([core.a_mlp[-1]] if identity else [])
    elif kind == "shared_basis":
        core = SharedBasisCore(dim, rank, hidden_dim=hidden, embedding_dim=emb, identity=identity)
        layers = [core.s_mlp[-1]]
    else:
        return LowRankCore(dim, rank, identity_scale=0.7, init_scale=scale / math.sqrt(dim)).requires_grad_(False)
    with torch.no_grad():
        for layer in layers:
            layer.weight.normal_(0.0, scale / math.sqrt(layer.in_features))
            if layer is getattr(core, "a_mlp", [None])[-1]:
                layer.weight.mul_(2.0)
        if kind == "time_lowrank":  # ‖U Vᵀ‖ = O(1): each factor entry O(D^(-1/2))
            for mlp in (core.u_mlp, core.v_mlp):
                mlp[-1].weight.mul_(dim ** -0.5)
                mlp[-1].bias.mul_(dim ** -0.5)
    return core.requires_grad_(False)


def dense_A(core, t):
    """A_t as a dense fp64 matrix, straight from the core's raw factors (no operator classes)."""
    I = torch.eye(core.dim, dtype=F64)
    tt = torch.tensor([float(t)], dtype=next(core.parameters()).dtype)
    with torch.no_grad():
        if isinstance(core, TimeLowRankCore):
            a, u, v = (x.to(F64) for x in core.factors(tt))
            return a[0] * I + u[0] @ v[0].T
        if isinstance(core, SharedBasisCore):
            a, s = (x.to(F64) for x in core.factors(tt))
            return a[0] * I + core.U.to(F64) @ s[0] @ core.V.to(F64).T
        return core.scale.to(F64) * I + core.U.to(F64) @ core.V.to(F64).T


def dense_collapse(core, solver, grid):
    """Product of textbook dense propagators over ``grid`` (t values), first step rightmost.

    ``core``: a core (A_t from its raw factors) or a constant dense matrix A.
    """
    A_of = (lambda t: core) if isinstance(core, torch.Tensor) else (lambda t: dense_A(core, t))
    I = torch.eye(A_of(0.0).shape[0], dtype=F64)
    K = lambda t: (A_of(t) - I) / (1 - t)  # noqa: E731
    B = I.clone()
    for t0, t1 in zip(grid[:-1], grid[1:]):
        h = t1 - t0
        K1, Kh = K(t0), K(t1)
        if solver == "euler":
            P = I + h * K1
        elif solver == "heun":
            P = I + h / 2 * (K1 + Kh @ (I + h * K1))
        else:
            Km = K(t0 + h / 2)
            if solver == "rk4":
                S2 = Km @ (I + h / 2 * K1)
                S3 = Km @ (I + h / 2 * S2)
                S4 = Kh @ (I + h * S3)
                P = I + h / 6 * (K1 + 2 * S2 + 2 * S3 + S4)
            else:
                P = I + h / 6 * (K1 + 4 * Km + Kh)
        B = P @ B
    return B


def stepped(scheduler, core, z, num_steps):
    """The plain diffusers loop over every evaluation, with the core's batched forward."""
    scheduler.set_timesteps(num_steps)
    for ts in scheduler.timesteps:
        z = scheduler.step(core(z, scheduler.t_of(ts)), ts, z).prev_sample
    return z


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------- collapsed == stepped
CASES = [("time_lowrank", 96, 4), ("shared_basis", 96, 8), ("lowrank", 96, 3)]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind,dim,rank", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_collapsed_equals_stepped(kind, dim, rank, solver, dtype, tol):
    core = make_core(kind, dim, rank).to(dtype)
    scheduler = LinearizerScheduler(solver=solver)
    z0 = torch.randn(4, dim, dtype=dtype)
    B, info = scheduler.collapse(core, 9, dtype=dtype, return_info=True)
    assert rel(B.apply(z0), stepped(scheduler, core, z0, 9)) <= tol
    assert info.rank == B.rank and info.num_steps == 8 and info.dropped == 0.0
    if kind == "shared_basis":
        assert isinstance(B, SharedBasisOperator) and B.rank == rank
    else:
        assert isinstance(B, IdentityPlusLowRank)
    if kind == "lowrank":
        assert B.rank == rank  # a constant core's product never grows in rank


def test_cores_really_vary_in_time():
    for kind, dim, rank in CASES[:2]:
        core = make_core(kind, dim, rank).double()
        A1, A2 = dense_A(core, 0.1), dense_A(core, 0.7)
        assert float((A1 - A2).norm() / A1.norm()) > 0.05


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_collapsed_equals_stepped_at_3x32x32(solver):
    D = 3 * 32 * 32
    core = make_core("time_lowrank", D, 8, hidden=64, emb=32).double()
    scheduler = LinearizerScheduler(solver=solver, shift=2.0)
    z0 = torch.randn(2, D, dtype=F64)
    B = scheduler.collapse(core, 10)
    assert rel(B.apply(z0), stepped(scheduler, core, z0, 10)) <= 1e-10


def test_collapsed_equals_stepped_at_3x32x32_fp32_and_shared_basis():
    D = 3 * 32 * 32
    for kind, rank in (("time_lowrank", 8), ("shared_basis", 32)):
        core = make_core(kind, D, rank, hidden=64, emb=32)
        scheduler = LinearizerScheduler(solver="rk4")
        z0 = torch.randn(2, D)
        B = scheduler.collapse(core, 10, dtype=torch.float32)
        assert rel(B.apply(z0), stepped(scheduler, core, z0, 10)) <= 1e-5


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_factors_spanning_the_whole_space(solver):
    """T·r > D: B's perturbation has full rank and is accumulated densely — still exact."""
    core = make_core("time_lowrank", 40, 4).double()
    scheduler = LinearizerScheduler(solver=solver)
    B, info = scheduler.collapse(core, 16, return_info=True)
    assert info.mode == "dense" and B.rank == 40
    z0 = torch.randn(3, 40, dtype=F64)
    assert rel(B.apply(z0), stepped(scheduler, core, z0, 16)) <= 1e-10
    grid = [i / 16 for i in range(16)]
    assert rel(B.apply(torch.eye(40, dtype=F64)).T, dense_collapse(core, solver, grid)) <= 1e-10


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dim=st.integers(2, 40),
    rank=st.integers(1, 5),
    steps=st.integers(2, 12),
    solver=st.sampled_from(SOLVERS),
    spacing=st.sampled_from(["reference", "linspace"]),
    shift=st.sampled_from([1.0, 3.0]),
    kind=st.sampled_from(["time_lowrank", "shared_basis", "lowrank"]),
    seed=st.integers(0, 2**16),
)
def test_collapsed_equals_stepped_property(dim, rank, steps, solver, spacing, shift, kind, seed):
    core = make_core(kind, dim, rank, seed=seed, hidden=8, emb=8).double()
    scheduler = LinearizerScheduler(solver=solver, timestep_spacing=spacing, shift=shift)
    z0 = torch.randn(3, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))
    B = scheduler.collapse(core, steps, cache=False)
    assert rel(B.apply(z0), stepped(scheduler, core, z0, steps)) <= 1e-10


# ---------------------------------------------------------------------------- == dense product
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind,dim,rank", [("time_lowrank", 64, 4), ("shared_basis", 256, 12), ("time_lowrank", 512, 6)])
def test_structured_equals_dense_product(kind, dim, rank, solver):
    core = make_core(kind, dim, rank, identity=(dim != 64)).double()
    T = 8
    B = LinearizerScheduler(solver=solver).collapse(core, T)
    dense = dense_collapse(core, solver, [i / T for i in range(T)])
    assert rel(B.apply(torch.eye(dim, dtype=F64)).T, dense) <= 1e-10


def test_structured_equals_dense_product_near_2048():
    core = make_core("time_lowrank", 2048, 8).double()
    B = LinearizerScheduler().collapse(core, 5)
    dense = dense_collapse(core, "euler", [i / 5 for i in range(5)])
    assert rel(B.apply(torch.eye(2048, dtype=F64)).T, dense) <= 1e-10


def test_reference_euler_identity_coefficient_is_one_over_T():
    """docs/math.md §2: with a ≡ 0 on the reference grid, B's identity coefficient is ∏(1 − 1/(T − i)) = 1/T."""
    core = make_core("time_lowrank", 32, 2, identity=False).double()
    for T in (3, 10, 50):
        B = LinearizerScheduler().collapse(core, T)
        assert abs(float(B.c) - 1.0 / T) < 1e-14


def test_dense_core_takes_the_generic_path():
    torch.manual_seed(3)
    A = torch.eye(12, dtype=F64) + 0.3 * torch.randn(12, 12, dtype=F64)
    core = DenseCore(12, A).double()
    for solver in SOLVERS:
        B, info = LinearizerScheduler(solver=solver).collapse(core, 7, return_info=True)
        assert info.mode == "generic"
        assert rel(B.apply(torch.eye(12, dtype=F64)).T, dense_collapse(A, solver, [i / 7 for i in range(7)])) < 1e-12


def test_reference_rk_is_not_rk4():
    core = make_core("time_lowrank", 32, 4).double()
    z = torch.randn(2, 32, dtype=F64)
    a = LinearizerScheduler(solver="rk4").collapse(core, 6).apply(z)
    b = LinearizerScheduler(solver="reference_rk").collapse(core, 6).apply(z)
    assert rel(b, a) > 1e-3


# ---------------------------------------------------------------------------- convergence
ORDERS = {"euler": 1.0, "heun": 2.0, "rk4": 4.0, "reference_rk": 1.0}


def _slope(ns, errors):
    x = torch.tensor([math.log(n) for n in ns], dtype=F64)
    y = torch.tensor([math.log(e) for e in errors], dtype=F64)
    x, y = x - x.mean(), y - y.mean()
    return -float((x * y).sum() / (x * x).sum())


@pytest.mark.parametrize("solver", SOLVERS)
def test_collapse_converges_to_the_exact_solution(solver):
    """Constant A: dz/dt = (A − I) z/(1 − t) ⇒ z(t) = exp(log((1 − t₀)/(1 − t))·(A − I)) z(t₀).

    ``linspace`` spacing with ``num_train_timesteps = 2`` gives the uniform grid t ∈ [0, 1/2]
    (sigma from 1 to 1/2), so the exact collapsed operator is exp(log 2 · (A − I)).
    """
    core = make_core("lowrank", 24, 3, scale=2.0).double()
    A = dense_A(core, 0.0)
    exact = torch.linalg.matrix_exp(math.log(2.0) * (A - torch.eye(24, dtype=F64)))
    scheduler = LinearizerScheduler(solver=solver, timestep_spacing="linspace", num_train_timesteps=2)
    ns, errors = [8, 16, 32, 64], []
    for n in ns:
        B = scheduler.collapse(core, n + 1).apply(torch.eye(24, dtype=F64)).T
        errors.append(float((B - exact).norm() / exact.norm()))
    assert abs(_slope(ns, errors) - ORDERS[solver]) < 0.25, errors


# ---------------------------------------------------------------------------- generic product
def test_collapse_product_recompresses_low_rank_factors():
    """Generic left-to-right product of IdentityPlusLowRank propagators, with recompression."""
    torch.manual_seed(2)
    D, r, T = 80, 3, 25
    U, V = torch.randn(D, r, dtype=F64) / D**0.5, torch.randn(D, r, dtype=F64) / D**0.5
    A = IdentityPlusLowRank(torch.tensor(0.6, dtype=F64), U, V)  # constant: true rank of B is r
    grid = [i / T for i in range(T)]
    props = [SOLVERS.get("heun").propagator((latent_generator(A, t0), latent_generator(A, t1)), t1 - t0) for t0, t1 in zip(grid, grid[1:])]
    B, dropped = collapse_product(props, tol=1e-13)
    assert B.rank <= 4 * r  # without recompression it would be ~3·r·(T − 1)
    dense = dense_collapse(0.6 * torch.eye(D, dtype=F64) + U @ V.T, "heun", grid)
    assert rel(B.apply(torch.eye(D, dtype=F64)).T, dense) <= 1e-10
    assert dropped < 1e-10


def test_collapse_product_rejects_empty():
    with pytest.raises(ValueError, match="at least one factor"):
        collapse_product([])


def test_latent_generator_rejects_t_equal_one():
    with pytest.raises(ValueError, match="singular at t = 1"):
        latent_generator(Mat(torch.eye(2)), 1.0)


# ---------------------------------------------------------------------------- cache
def test_cache_hits_and_invalidation():
    core = make_core("time_lowrank", 32, 2).double()
    scheduler = LinearizerScheduler(solver="heun")
    B1 = scheduler.collapse(core, 6)
    assert scheduler.collapse(core, 6) is B1
    assert scheduler.collapse(core, 7) is not B1
    assert scheduler.collapse(core, 6, dtype=torch.float32) is not B1
    assert scheduler.collapse(core, 6, solver="rk4") is not B1
    assert scheduler.collapse(core, 6, cache=False) is not B1
    # an optimizer step changes the weights in place: the cache must notice
    core.requires_grad_(True)
    optimizer = torch.optim.SGD(core.parameters(), lr=0.1)
    core(torch.randn(2, 32, dtype=F64), torch.rand(2, dtype=F64)).square().sum().backward()
    optimizer.step()
    B2 = scheduler.collapse(core, 6)
    assert B2 is not B1
    z = torch.randn(2, 32, dtype=F64)
    assert rel(B2.apply(z), stepped(LinearizerScheduler(solver="heun"), core.requires_grad_(False), z, 6)) < 1e-10
    # a different core with the same shapes is a different entry
    assert scheduler.collapse(make_core("time_lowrank", 32, 2).double(), 6) is not B2
    scheduler.clear_collapse_cache()
    assert scheduler.collapse(core, 6) is not B2


def test_cache_is_bounded_and_thread_safe():
    core = make_core("shared_basis", 48, 4).double()
    calls = []
    original = core.operators

    def counting(ts, dtype=None):
        calls.append(len(ts))
        return original(ts, dtype)

    core.operators = counting
    scheduler = LinearizerScheduler(solver="rk4")
    results = []
    threads = [threading.Thread(target=lambda: results.append(scheduler.collapse(core, 12))) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1 and all(B is results[0] for B in results)
    assert calls[0] == 2 * 11 + 1  # one core call for all distinct times
    for T in range(3, 3 + 2 * scheduler.collapse_cache_size):
        scheduler.collapse(core, T)
    assert len(scheduler._collapse_cache) == scheduler.collapse_cache_size


# ---------------------------------------------------------------------------- errors
def test_collapse_errors():
    scheduler = LinearizerScheduler()
    core = make_core("time_lowrank", 16, 2)
    with pytest.raises(ValueError, match="needs num_inference_steps"):
        scheduler.collapse(core)
    with pytest.raises(ValueError, match="num_inference_steps must be"):
        scheduler.collapse(core, 1)
    with pytest.raises(ValueError, match="Unknown solver 'midpoint'; choose one of euler, heun, rk4"):
        scheduler.collapse(core, 5, solver="midpoint")
    with pytest.raises(ValueError, match="float64 or torch.float32"):
        scheduler.collapse(core, 5, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"operators\(ts, dtype\)"):
        scheduler.collapse(torch.nn.Linear(16, 16), 5)


def test_time_dependent_core_needs_times():
    """A time-dependent core cannot be asked for A without t; a core that cannot take t is refused."""
    core = make_core("time_lowrank", 16, 2)
    with pytest.raises(ValueError, match="time-dependent"):
        core.operator(None)

    class NoTime(torch.nn.Module):
        time_dependent = True

        def operators(self):  # cannot take the times the solver needs
            return []

    with pytest.raises(ValueError, match="does not take a time"):
        LinearizerScheduler(solver="heun").collapse(NoTime(), 5)


def test_constant_operator_is_accepted_as_core():
    torch.manual_seed(4)
    U, V = torch.randn(20, 2, dtype=F64) * 0.3, torch.randn(20, 2, dtype=F64) * 0.3
    A = IdentityPlusLowRank(torch.tensor(0.5, dtype=F64), U, V)
    B = LinearizerScheduler(solver="rk4").collapse(A, 9)
    dense = dense_collapse(0.5 * torch.eye(20, dtype=F64) + U @ V.T, "rk4", [i / 9 for i in range(9)])
    assert B.rank == 2 and rel(B.apply(torch.eye(20, dtype=F64)).T, dense) <= 1e-10

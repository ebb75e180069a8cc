"""Every entry of the solver registry against computations independent of the package's solver code.

The tests iterate over ``SOLVERS``, so a new solver is tested by registering it. References:

* the general explicit Butcher form, written out here with dense fp64 matrices (stage matrices
  ``Z_i = I + h Σ_{j<i} A_ij K_j Z_j``, ``P = I + h Σ_i b_i K_i Z_i``), from the record's coefficients;
* textbook tableaux of the named methods;
* exact solutions of linear ODEs: ``exp(T K) z₀`` for a constant ``K``, and for the non-commuting
  ``K(t) = e^{tW} K₀ e^{−tW}`` the closed form ``z(T) = e^{TW} e^{T(K₀ − W)} z₀`` (substitute ``z = e^{tW} y``);
* the grid computed from the formulas of the scheduler's docstring.
"""

import math

import pytest
import torch

from diffusers_linearizer.operators import DenseOperator, IdentityPlusLowRank
from diffusers_linearizer.schedulers import SOLVERS, LinearizerScheduler, Solver, check_run

F64 = torch.float64
NAMES = SOLVERS.names()


# ---------------------------------------------------------------------------- references
class Mat:
    """A dense matrix with exactly the four operations ``Solver.propagator`` may use."""

    def __init__(self, M):
        self.M = M

    def __matmul__(self, other):
        return Mat(self.M @ other.M)

    def __add__(self, other):
        return Mat(self.M + other.M)

    def __mul__(self, s):
        return Mat(self.M * s)

    def add_identity(self, s):
        return Mat(self.M + s * torch.eye(self.M.shape[0], dtype=self.M.dtype))


def butcher(solver):
    """``(A, b, c)`` of the record as dense tensors: ``A`` has ``a_i`` on its first subdiagonal, ``b = b_i/d``."""
    s = len(solver.c)
    A = torch.zeros(s, s, dtype=F64)
    for i in range(1, s):
        A[i, i - 1] = solver.a[i]
    return A, torch.tensor(solver.b, dtype=F64) / solver.d, torch.tensor(solver.c, dtype=F64)


def dense_step(solver, Ks, h):
    """``(P, [Z_i])`` of one explicit RK step of z' = K z with stage generators ``Ks`` (general Butcher form)."""
    A, b, _ = butcher(solver)
    eye = torch.eye(Ks[0].shape[0], dtype=F64)
    Z, KZ = [], []
    for i in range(len(Ks)):
        Zi = eye.clone()
        for j in range(i):
            Zi = Zi + h * A[i, j] * KZ[j]
        Z.append(Zi)
        KZ.append(Ks[i] @ Zi)
    P = eye.clone()
    for i in range(len(Ks)):
        P = P + h * b[i] * KZ[i]
    return P, Z


TEXTBOOK = {  # (A, b, c)
    "euler": ([[0.0]], [1.0], [0.0]),
    "heun": ([[0, 0], [1, 0]], [1 / 2, 1 / 2], [0, 1]),
    "rk4": ([[0, 0, 0, 0], [1 / 2, 0, 0, 0], [0, 1 / 2, 0, 0], [0, 0, 1, 0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6],
            [0, 1 / 2, 1 / 2, 1]),
    "reference_rk": ([[0, 0, 0]] * 3, [1 / 6, 4 / 6, 1 / 6], [0, 1 / 2, 1]),  # Simpson's weights, one state
}


def _rotating(seed=0, dim=6):
    """``K(t) = e^{tW} K₀ e^{−tW}`` and the exact flow ``z ↦ e^{TW} e^{T(K₀ − W)} z`` over ``[0, T]``."""
    g = torch.Generator().manual_seed(seed)
    K0 = torch.randn(dim, dim, generator=g, dtype=F64) / math.sqrt(dim)
    W = torch.randn(dim, dim, generator=g, dtype=F64)
    W = 1.5 * (W - W.T) / math.sqrt(dim)
    def K_of(t):
        R = torch.linalg.matrix_exp(t * W)  # orthogonal: W is skew, so e^{−tW} = Rᵀ
        return R @ K0 @ R.T

    exact = lambda T: torch.linalg.matrix_exp(T * W) @ torch.linalg.matrix_exp(T * (K0 - W))  # noqa: E731
    return K_of, exact


def _constant(seed=1, dim=6):
    K = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=F64) / math.sqrt(dim)
    return (lambda t: K), (lambda T: torch.linalg.matrix_exp(T * K))


def _slope(hs, errors):
    """Least-squares slope of log(error) against log(h)."""
    x = torch.tensor([math.log(h) for h in hs], dtype=F64)
    y = torch.tensor([math.log(e) for e in errors], dtype=F64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x * x).sum())


def _stepped(solver, K_of, z0, n, T):
    """n steps of the record's stepping formulas (stage_state, combine) on column vectors."""
    h, z = T / n, z0
    for i in range(n):
        t, ks, x = i * h, [], z
        for stage, c in enumerate(solver.c):
            ks.append(K_of(t + c * h) @ x)
            if stage < solver.order - 1:
                x = solver.stage_state(z, ks[-1], stage, h)
        z = solver.combine(z, ks, h)
    return z


def _propagated(solver, K_of, z0, n, T):
    """n steps of the record's operator-algebra propagator on Mat stages."""
    h, z = T / n, z0
    for i in range(n):
        P = solver.propagator([Mat(K_of(i * h + c * h)) for c in solver.c], h)
        z = P.M @ z
    return z


def check_convergence(name, problem, run, T=1.0):
    K_of, exact = problem()
    z0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    reference = exact(T) @ z0
    ns = [8, 16, 32, 64]
    errors = [float((run(SOLVERS.get(name), K_of, z0, n, T) - reference).norm() / reference.norm()) for n in ns]
    slope = _slope([T / n for n in ns], errors)
    assert abs(slope - SOLVERS.entry(name).accuracy) < 0.3, (name, slope, errors)


class TinyCore:
    """A time-dependent linear core: ``A_t`` dense (``A₀ + t A₁``) or ``a(t)·I + U(t) V(t)ᵀ`` with rank r."""

    time_dependent = True

    def __init__(self, kind, dim, seed=3, rank=1):
        g = torch.Generator().manual_seed(seed)
        self.kind, self.dim = kind, dim
        self.A0, self.A1 = (torch.randn(dim, dim, generator=g, dtype=F64) * 0.4 for _ in range(2))
        self.U0, self.U1, self.V0, self.V1 = (torch.randn(dim, rank, generator=g, dtype=F64) / math.sqrt(dim)
                                              for _ in range(4))

    def dense(self, t):
        if self.kind == "dense":
            return self.A0 + t * self.A1
        U, V = self.U0 + t * self.U1, self.V0 + t * self.V1
        return (0.6 + 0.3 * t) * torch.eye(self.dim, dtype=F64) + U @ V.T

    def operators(self, ts, dtype=None):
        if self.kind == "dense":
            return [DenseOperator(self.dense(t)) for t in ts]
        return [IdentityPlusLowRank(torch.tensor(0.6 + 0.3 * t, dtype=F64), self.U0 + t * self.U1,
                                    self.V0 + t * self.V1) for t in ts]

    def K(self, t):
        return (self.dense(t) - torch.eye(self.dim, dtype=F64)) / (1.0 - t)


def grid(T, shift, n_train=1000):
    """The ``linspace`` grid of the scheduler's docstring: σ from 1 to 1/n_train, shifted; t = 1 − σ."""
    sigma = torch.linspace(1.0, 1.0 / n_train, T, dtype=F64)
    return (1.0 - shift * sigma / (1 + (shift - 1) * sigma)).tolist()


# ---------------------------------------------------------------------------- the registry
@pytest.mark.parametrize("name", NAMES)
def test_entry_declarations_drive_the_scheduler(name):
    entry = SOLVERS.entry(name)
    assert isinstance(entry.value, Solver) and entry.description and entry.doc == entry.description
    assert entry.order == len(entry.value.c) == LinearizerScheduler(solver=name).order
    scheduler = LinearizerScheduler(solver=name)
    scheduler.set_timesteps(5)
    assert len(scheduler.timesteps) == 4 * entry.order
    assert check_run(5, None, name) == (5, name)


@pytest.mark.parametrize("name", [n for n in TEXTBOOK if n in SOLVERS])
def test_named_tableaux_are_the_textbook_methods(name):
    A, b, c = butcher(SOLVERS.get(name))
    tA, tb, tc = (torch.tensor(x, dtype=F64) for x in TEXTBOOK[name])
    assert torch.equal(A, tA) and torch.allclose(b, tb, rtol=0, atol=1e-15) and torch.equal(c, tc)


def test_registry_is_the_sequence_of_names_and_refuses_bad_entries():
    assert SOLVERS[0] == "euler" and list(SOLVERS) == list(NAMES) and SOLVERS[-1] == NAMES[-1]
    with pytest.raises(TypeError, match=r"SOLVERS.get\('rk4'\)"):
        SOLVERS["rk4"]
    with pytest.raises(ValueError, match="Unknown solver 'dpm'; choose one of " + ", ".join(NAMES)):
        check_run(4, "dpm")
    good = Solver(c=(0.0, 1.0), a=(0.0, 1.0), b=(1.0, 1.0), d=2.0)
    with pytest.raises(TypeError, match="register a Solver record"):
        SOLVERS.register("x", (0.0,), accuracy=1, description="x")
    with pytest.raises(ValueError, match="declares order 1 but has 2 stages"):
        SOLVERS.register("x", good, order=1, accuracy=2, description="x")
    with pytest.raises(ValueError, match="accuracy must be an int"):
        SOLVERS.register("x", good, accuracy=0, description="x")
    with pytest.raises(ValueError, match="must declare description"):
        SOLVERS.register("x", good, accuracy=2)
    with pytest.raises(ValueError, match="registered twice"):
        SOLVERS.register("euler", good, accuracy=2, description="x")
    with pytest.raises(ValueError, match="Σ b = d"):
        Solver(c=(0.0,), a=(0.0,), b=(2.0,), d=1.0)
    with pytest.raises(ValueError, match="as many stage times"):
        Solver(c=(0.0, 1.0), a=(0.0,), b=(1.0,), d=1.0)
    with pytest.raises(ValueError, match=r"a\[0\] = 0"):
        Solver(c=(0.0,), a=(0.5,), b=(1.0,), d=1.0)
    assert "x" not in SOLVERS


# ---------------------------------------------------------------------------- (a) convergence
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("problem", [_constant, _rotating], ids=["constant K", "K(t) = e^{tW} K0 e^{-tW}"])
@pytest.mark.parametrize("run", [_stepped, _propagated], ids=["stepping", "propagator"])
def test_observed_order_is_the_declared_accuracy(name, problem, run):
    check_convergence(name, problem, run)


# ---------------------------------------------------------------------------- (b) propagator = Butcher form
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("wrap", [Mat, DenseOperator], ids=["matrix", "DenseOperator"])
def test_propagator_is_the_butcher_one_step_matrix(name, wrap):
    solver = SOLVERS.get(name)
    g = torch.Generator().manual_seed(4)
    Ks = [torch.randn(7, 7, generator=g, dtype=F64) for _ in solver.c]  # arbitrary, unrelated stage generators
    h = 0.37
    P = solver.propagator([wrap(K) for K in Ks], h)
    got = P.M if isinstance(P, Mat) else P.to_dense()
    expected, _ = dense_step(solver, Ks, h)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------- (c) scheduler = propagator
@pytest.mark.parametrize("name", NAMES)
def test_one_scheduler_step_applies_the_propagator(name):
    """Stage by stage: each returned state is the Butcher stage value Z_{i+1} z₀, the last one P z₀."""
    solver, core = SOLVERS.get(name), TinyCore("dense", 6)
    scheduler = LinearizerScheduler(solver=name, timestep_spacing="linspace", shift=2.0)
    scheduler.set_timesteps(4)
    t = grid(4, 2.0)
    h = t[1] - t[0]
    P, Z = dense_step(solver, [core.K(t[0] + c * h) for c in solver.c], h)
    z0 = torch.randn(2, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    z = z0
    for stage, ts in enumerate(scheduler.timesteps[:solver.order]):
        tau = float(scheduler.t_of(ts))
        assert abs(tau - (t[0] + solver.c[stage] * h)) < 1e-12
        z = scheduler.step(z @ core.dense(tau).T, ts, z).prev_sample
        expected = z0 @ (Z[stage + 1] if stage + 1 < solver.order else P).T
        torch.testing.assert_close(z, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind,dim", [("dense", 6), ("lowrank", 24), ("lowrank", 4)])
def test_stepped_run_and_collapse_are_the_product_of_butcher_steps(name, kind, dim):
    solver, core = SOLVERS.get(name), TinyCore(kind, dim)
    T = 5
    t = grid(T, 2.0)
    product = torch.eye(dim, dtype=F64)
    for t0, t1 in zip(t, t[1:]):
        h = t1 - t0
        product = dense_step(solver, [core.K(t0 + c * h) for c in solver.c], h)[0] @ product
    scheduler = LinearizerScheduler(solver=name, timestep_spacing="linspace", shift=2.0)
    B = scheduler.collapse(core, T, cache=False)
    torch.testing.assert_close(B.apply(torch.eye(dim, dtype=F64)).T, product, rtol=1e-11, atol=1e-11)
    scheduler.set_timesteps(T)
    z0 = torch.randn(3, dim, generator=torch.Generator().manual_seed(6), dtype=F64)
    z = z0
    for ts in scheduler.timesteps:
        z = scheduler.step(z @ core.dense(float(scheduler.t_of(ts))).T, ts, z).prev_sample
    torch.testing.assert_close(z, z0 @ product.T, rtol=1e-11, atol=1e-11)


# ---------------------------------------------------------------------------- a new solver is one registration
def test_a_new_solver_is_one_register_call():
    """Ralston's second-order method (A₁₀ = 2/3, b = (1/4, 3/4)) registered once is stepped, collapsed and
    converges at its declared order."""
    SOLVERS.register("ralston", Solver(c=(0.0, 2 / 3), a=(0.0, 2 / 3), b=(1.0, 3.0), d=4.0), accuracy=2,
                     description="Ralston's second-order method")
    try:
        assert SOLVERS[-1] == "ralston" and check_run(3, "ralston") == (3, "ralston")
        for problem in (_constant, _rotating):
            check_convergence("ralston", problem, _stepped)
            check_convergence("ralston", problem, _propagated)
        test_one_scheduler_step_applies_the_propagator("ralston")
        test_stepped_run_and_collapse_are_the_product_of_butcher_steps("ralston", "lowrank", 24)
    finally:
        SOLVERS.unregister("ralston")
    assert "ralston" not in SOLVERS

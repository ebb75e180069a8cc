"""The table of ODE solvers: one entry drives both ``LinearizerScheduler.step`` and the exact collapse.

Every solver here is an explicit Runge–Kutta method whose stage ``i`` is evaluated at the state
``z₀ + a_i·h·k_{i−1}`` (only the previous slope; ``a_0 = 0``) and time ``t + c_i·h``, and whose step
ends at ``z₀ + (h/d)·Σ b_i k_i`` (integer weights ``b_i`` over a common denominator ``d``). For the
linear latent ODE ``dz/dt = K(t) z`` (``docs/math.md``) the slopes are matrices applied to ``z₀``:

    M_0 = K(t),   M_i = K(t + c_i h)·(I + a_i h M_{i−1}),   P = I + (h/d)·Σ b_i M_i,

so one step is the propagator ``P`` and a whole run is the ordered product of the ``P``. Adding a
solver means adding one :class:`Solver` to :data:`SOLVER_TABLE`; the scheduler's grid, its ``order``,
``step`` and ``collapse`` all read it. This module also owns the validation of the two run parameters,
``num_inference_steps`` and ``solver`` (:func:`check_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["Solver", "SOLVER_TABLE", "SOLVERS", "check_run"]


@dataclass(frozen=True)
class Solver:
    """One explicit Runge–Kutta method (module docstring): stage times ``c``, stage-state weights ``a``,
    final weights ``b`` over the denominator ``d``, and a one-line description."""

    c: Tuple[float, ...]
    a: Tuple[float, ...]
    b: Tuple[float, ...]
    d: float
    description: str

    @property
    def order(self) -> int:
        """Model evaluations per step."""
        return len(self.c)

    def stage_state(self, z0, k, stage: int, h: float):
        """The state at which stage ``stage + 1`` is evaluated, given stage ``stage``'s slope ``k``."""
        a = self.a[stage + 1]
        return z0 if a == 0.0 else z0 + (a * h) * k

    def combine(self, z0, ks: Sequence, h: float):
        """The end of the step, ``z₀ + (h/d)·Σ b_i k_i`` (weights of 1 are not multiplied)."""
        total = None
        for b, k in zip(self.b, ks):
            term = k if b == 1.0 else k * b
            total = term if total is None else total + term
        return z0 + (h / self.d) * total

    def propagator(self, Ks: Sequence, h: float):
        """The step's matrix ``P`` from the generators ``K`` at the stage times (plain operator algebra:
        ``@``, ``+``, ``* scalar`` and ``add_identity``, so any operator class of the package works)."""
        Ms = []
        for i, K in enumerate(Ks):
            a = self.a[i]
            Ms.append(K if i == 0 or a == 0.0 else K @ (Ms[-1] * (a * h)).add_identity(1.0))
        total = None
        for b, M in zip(self.b, Ms):  # summed left to right so that supports only grow
            term = M if b == 1.0 else M * b
            total = term if total is None else total + term
        return (total * (h / self.d)).add_identity(1.0)


SOLVER_TABLE = {
    "euler": Solver(c=(0.0,), a=(0.0,), b=(1.0,), d=1.0, description="explicit Euler, first order"),
    "heun": Solver(c=(0.0, 1.0), a=(0.0, 1.0), b=(1.0, 1.0), d=2.0,
                   description="Heun (explicit trapezoid), second order"),
    "rk4": Solver(c=(0.0, 0.5, 0.5, 1.0), a=(0.0, 0.5, 0.5, 1.0), b=(1.0, 2.0, 2.0, 1.0), d=6.0,
                  description="classical Runge–Kutta, fourth order"),
    # The paper's code collapsed its "rk" sampler into I + (h/6)(K(t) + 4 K(t+h/2) + K(t+h)): all slopes
    # at the step's start state (a = 0), first order only; kept for parity with converted checkpoints.
    "reference_rk": Solver(c=(0.0, 0.5, 1.0), a=(0.0, 0.0, 0.0), b=(1.0, 4.0, 1.0), d=6.0,
                           description="the reference code's collapsed 'rk' matrix (first order; parity only)"),
}
SOLVERS = tuple(SOLVER_TABLE)


def check_run(num_inference_steps, solver: Optional[str], default_solver: Optional[str] = None) -> Tuple[int, str]:
    """Validate a run's ``num_inference_steps`` (an int ≥ 2: ``T`` grid points, ``T − 1`` steps) and
    ``solver`` (a name in :data:`SOLVER_TABLE`; ``None`` takes ``default_solver``); return ``(T, solver)``."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an int ≥ 2, got {num_inference_steps!r}.")
    if num_inference_steps < 2:
        raise ValueError(
            f"num_inference_steps must be ≥ 2 (T grid points give T − 1 solver steps), got {num_inference_steps}.")
    solver = default_solver if solver is None else solver
    if not isinstance(solver, str) or solver not in SOLVER_TABLE:
        raise ValueError(f"Unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
    return int(num_inference_steps), solver

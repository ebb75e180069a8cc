"""The registry of ODE solvers: one entry drives ``LinearizerScheduler``'s grid, ``order``, ``step`` and collapse.

Every solver is an explicit Runge–Kutta method of one shape. In Butcher form, over a step of size ``h``
from ``(t, z₀)`` with ``s`` stages,

    k_i = f(t + c_i h, z₀ + h·Σ_{j<i} A_ij k_j),      z₁ = z₀ + h·Σ_i (b_i/d) k_i,

where the Butcher matrix ``A`` has only its first subdiagonal, ``A_{i,i−1} = a_i`` (stage ``i`` sees only
the previous slope; ``a_0 = 0``), and the weights are integers ``b_i`` over a common denominator ``d``
(``Σ b_i = d``). For the linear latent ODE ``dz/dt = K(t) z`` (``docs/math.md``) the slopes are matrices
applied to ``z₀``, ``k_i = M_i z₀``:

    M_0 = K(t + c_0 h),   M_i = K(t + c_i h)·(I + a_i h M_{i−1}),   P = I + (h/d)·Σ b_i M_i,

so one step is the propagator ``P`` (:meth:`Solver.propagator`) and a whole run is the ordered product of
the ``P`` (:mod:`.collapse`). Stepping a sample runs the same tableau on tensors
(:meth:`Solver.stage_state`, :meth:`Solver.combine`).

:data:`SOLVERS` is the registry of these methods. Each entry is a :class:`Solver` record declaring

* ``order`` — model evaluations per step (the number of stages, ``LinearizerScheduler.order``);
* ``accuracy`` — the order of convergence: the error after a fixed time is ``O(h^accuracy)``;
* ``description`` — one line for help texts and tables.

Adding a solver is one ``SOLVERS.register(name, Solver(c=…, a=…, b=…, d=…), accuracy=…, description=…)``
below; the CLI's and the demo's choices, the scheduler's validation, grid, stepping and collapse all read
the registry. This module also owns the validation of the two run parameters, ``num_inference_steps``
and ``solver`` (:func:`check_run`).
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..registry import Registry

__all__ = ["Solver", "SolverRegistry", "SOLVERS", "check_run"]


@dataclass(frozen=True)
class Solver:
    """One explicit Runge–Kutta method of the module's shape: stage times ``c``, subdiagonal Butcher
    entries ``a`` (``a[0] = 0``), integer final weights ``b`` over the denominator ``d = Σ b``."""

    c: Tuple[float, ...]
    a: Tuple[float, ...]
    b: Tuple[float, ...]
    d: float

    def __post_init__(self):
        if not len(self.c) == len(self.a) == len(self.b) >= 1:
            raise ValueError(f"A solver needs as many stage times c, stage weights a and final weights b, "
                             f"at least one each; got {len(self.c)}, {len(self.a)}, {len(self.b)}.")
        if self.a[0] != 0.0:
            raise ValueError(f"The first stage is evaluated at the step's start state (a[0] = 0), "
                             f"got a[0] = {self.a[0]}.")
        if abs(sum(self.b) - self.d) > 1e-12 * abs(self.d):
            raise ValueError(f"The final weights must sum to the denominator (Σ b = d, a consistent method); "
                             f"got Σ b = {sum(self.b)}, d = {self.d}.")

    @property
    def order(self) -> int:
        """Model evaluations per step (the number of stages)."""
        return len(self.c)

    def stage_state(self, z0, k, stage: int, h: float):
        """``z₀ + a_{i+1}·h·k_i``: the state at which stage ``i + 1`` is evaluated, given stage ``i``'s slope."""
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
        """The step's matrix ``P = I + (h/d)·Σ b_i M_i`` with ``M_i = K_i·(I + a_i h M_{i−1})`` from the
        generators ``K_i = K(t + c_i h)`` (module docstring). Plain operator algebra — ``@``, ``+``,
        ``* scalar`` and ``add_identity`` — so any operator class of the package works."""
        Ms = []
        for i, K in enumerate(Ks):
            a = self.a[i]
            Ms.append(K if i == 0 or a == 0.0 else K @ (Ms[-1] * (a * h)).add_identity(1.0))
        total = None
        for b, M in zip(self.b, Ms):  # summed left to right so that supports only grow
            term = M if b == 1.0 else M * b
            total = term if total is None else total + term
        return (total * (h / self.d)).add_identity(1.0)


class SolverRegistry(Registry, SequenceABC):
    """The registry of :class:`Solver` records, which is also the sequence of their names.

    ``register`` takes the record and declares its ``order`` from its stages (a given ``order`` must
    match them) and its ``description`` as the entry's summary. As a sequence, ``SOLVERS[0]`` is the
    first (default) solver's name, and ``choices=SOLVERS`` or ``hypothesis.strategies.sampled_from(SOLVERS)``
    read the names in registration order.
    """

    def __init__(self):
        super().__init__("solver", fields={
            "order": "model evaluations per step",
            "accuracy": "order of convergence (global error O(h^accuracy))",
            "description": "one line for help texts",
        })

    def register(self, name: str, value: Solver = None, *, doc: Optional[str] = None, **declared):
        """Register the solver ``value`` under ``name``; ``declared`` gives ``accuracy`` and ``description``."""
        if not isinstance(value, Solver):
            raise TypeError(f"solver {name!r}: register a Solver record, got {type(value).__name__}.")
        if declared.setdefault("order", value.order) != value.order:
            raise ValueError(f"solver {name!r} declares order {declared['order']} but has {value.order} stages.")
        accuracy = declared.get("accuracy")
        if isinstance(accuracy, bool) or not isinstance(accuracy, int) or accuracy < 1:
            raise ValueError(f"solver {name!r}: accuracy must be an int ≥ 1 (the order of convergence), "
                             f"got {accuracy!r}.")
        return super().register(name, value, doc=doc if doc is not None else declared.get("description"), **declared)

    def __getitem__(self, index):
        """The name at position ``index`` (an int or a slice) in registration order."""
        if isinstance(index, str):
            raise TypeError(f"Index SOLVERS by position; look a solver up by name with SOLVERS.get({index!r}).")
        return self.names()[index]


SOLVERS = SolverRegistry()

SOLVERS.register("euler", Solver(c=(0.0,), a=(0.0,), b=(1.0,), d=1.0), accuracy=1,
                 description="explicit Euler")
SOLVERS.register("heun", Solver(c=(0.0, 1.0), a=(0.0, 1.0), b=(1.0, 1.0), d=2.0), accuracy=2,
                 description="Heun (explicit trapezoid)")
SOLVERS.register("rk4", Solver(c=(0.0, 0.5, 0.5, 1.0), a=(0.0, 0.5, 0.5, 1.0), b=(1.0, 2.0, 2.0, 1.0), d=6.0),
                 accuracy=4, description="classical Runge–Kutta")
# The paper's code collapsed its "rk" sampler into I + (h/6)(K(t) + 4 K(t+h/2) + K(t+h)): Simpson's weights
# with every slope at the step's start state (a = 0), so first order only; kept for parity with converted
# checkpoints.
SOLVERS.register("reference_rk", Solver(c=(0.0, 0.5, 1.0), a=(0.0, 0.0, 0.0), b=(1.0, 4.0, 1.0), d=6.0),
                 accuracy=1, description="the reference code's collapsed 'rk' matrix (first order; parity only)")


def check_run(num_inference_steps, solver: Optional[str], default_solver: Optional[str] = None) -> Tuple[int, str]:
    """Validate a run's ``num_inference_steps`` (an int ≥ 2: ``T`` grid points, ``T − 1`` steps) and
    ``solver`` (a name in :data:`SOLVERS`; ``None`` takes ``default_solver``); return ``(T, solver)``."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an int ≥ 2, got {num_inference_steps!r}.")
    if num_inference_steps < 2:
        raise ValueError(
            f"num_inference_steps must be ≥ 2 (T grid points give T − 1 solver steps), got {num_inference_steps}.")
    solver = default_solver if solver is None else solver
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; choose one of {SOLVERS.choices()}.")
    return int(num_inference_steps), solver

"""Schedulers: ``LinearizerScheduler`` (stepped Euler/Heun/RK4 and the exact one-operator collapse)."""

from .propagators import (
    collapse_product,
    euler_propagator,
    heun_propagator,
    latent_generator,
    reference_rk_propagator,
    rk4_propagator,
    structured_collapse,
)
from .scheduling_linearizer import TIMESTEP_SPACINGS, CollapseInfo, LinearizerScheduler
from .solvers import SOLVER_TABLE, SOLVERS, Solver, check_run

__all__ = [
    "LinearizerScheduler",
    "CollapseInfo",
    "SOLVERS",
    "SOLVER_TABLE",
    "Solver",
    "check_run",
    "TIMESTEP_SPACINGS",
    "latent_generator",
    "euler_propagator",
    "heun_propagator",
    "rk4_propagator",
    "reference_rk_propagator",
    "collapse_product",
    "structured_collapse",
]

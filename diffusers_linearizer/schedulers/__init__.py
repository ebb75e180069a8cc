"""Schedulers: ``LinearizerScheduler`` (a stepped solver from the :data:`SOLVERS` registry and its exact
one-operator collapse)."""

from .collapse import collapse_run
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
from .solvers import SOLVERS, Solver, SolverRegistry, check_run

__all__ = [
    "LinearizerScheduler",
    "CollapseInfo",
    "SOLVERS",
    "Solver",
    "SolverRegistry",
    "check_run",
    "TIMESTEP_SPACINGS",
    "collapse_run",
    "latent_generator",
    "euler_propagator",
    "heun_propagator",
    "rk4_propagator",
    "reference_rk_propagator",
    "collapse_product",
    "structured_collapse",
]

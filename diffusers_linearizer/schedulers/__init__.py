"""Schedulers: ``LinearizerScheduler`` (a stepped solver from the :data:`SOLVERS` registry and its exact
one-operator collapse)."""

from .collapse import collapse_run
from .propagators import (
    collapse_product,
    latent_generator,
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
    "collapse_product",
    "structured_collapse",
]

"""The collapse of a sampler run into one operator: the stateless part of ``LinearizerScheduler.collapse``.

Given the run's grid (step sizes and evaluation times, from the scheduler) and a linear core,
:func:`collapse_run` evaluates every ``A_t`` once, turns it into the generator
``K(t) = (A_t − I)/(1 − t)``, builds each step's propagator with the solver's
:meth:`~.solvers.Solver.propagator` and multiplies them with the product of :mod:`.propagators` that fits
the operators. :func:`core_fingerprint` and :func:`requires_grad` are what the scheduler's collapse cache
reads of a core.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Optional, Tuple

import torch

from ..operators import IdentityPlusLowRank, SharedBasisOperator
from .propagators import autograd_collapse, collapse_product, latent_generator, structured_collapse
from .solvers import SOLVERS

__all__ = ["collapse_run", "core_fingerprint", "requires_grad"]


def core_fingerprint(core):
    """``(tensor fingerprint, device)`` or ``None`` when ``core`` holds no tensors we can see."""
    if isinstance(core, torch.nn.Module):
        tensors = list(core.named_parameters()) + list(core.named_buffers())
    else:
        attrs = getattr(core, "__dict__", None) or {s: getattr(core, s, None) for s in getattr(core, "__slots__", ())}
        tensors = [(n, v) for n, v in attrs.items() if isinstance(v, torch.Tensor)]
    if not tensors:
        return None
    try:
        weakref.ref(core)
    except TypeError:
        return None
    prints = tuple((n, v.data_ptr(), v._version, tuple(v.shape), v.dtype) for n, v in tensors)
    return (id(core), prints), str(tensors[0][1].device)


def requires_grad(core) -> bool:
    """Whether ``core`` is a module with a parameter that requires grad."""
    return isinstance(core, torch.nn.Module) and any(p.requires_grad for p in core.parameters())


def _operators(core, times, grad: bool = False, dtype: Optional[torch.dtype] = None):
    """``A_t`` for every time from one ``core.operators`` call (in the core's dtype; with ``grad``,
    attached to the graph and converted to ``dtype`` inside the core, once per call)."""
    if hasattr(core, "apply") and hasattr(core, "add_identity"):  # a constant operator
        return [core] * len(times)
    if not hasattr(core, "operators") or not hasattr(core, "time_dependent"):
        raise ValueError(f"collapse needs a linear core with `time_dependent` and `operators(ts, dtype)` (the "
                         f"solvers evaluate A_t at {len(times)} times), got {type(core).__name__}.")
    kwargs = dict(grad=True, dtype=dtype) if grad else {}
    if not core.time_dependent:
        return list(core.operators([None], **kwargs)) * len(times)
    try:
        ops = list(core.operators(list(times), **kwargs))
    except TypeError as err:
        raise ValueError(f"{type(core).__name__} does not take a time t, but the solver evaluates A_t at "
                         f"{len(times)} times: {err}") from err
    if len(ops) != len(times):
        raise ValueError(f"{type(core).__name__}.operators returned {len(ops)} operators for {len(times)} times.")
    return ops


def _autocast_off(core) -> contextlib.ExitStack:
    """Autocast disabled on the CPU and on the core's devices: under bf16/fp16 autocast (mixed-precision
    training) the core's coefficients and the collapse still run in the dtype asked for."""
    stack = contextlib.ExitStack()
    kinds = {"cpu"} | ({p.device.type for p in core.parameters()} if isinstance(core, torch.nn.Module) else set())
    for kind in sorted(k for k in kinds if torch.amp.is_autocast_available(k)):
        stack.enter_context(torch.autocast(kind, enabled=False))
    return stack


def collapse_run(core, solver: str, hs, t_eval, dtype: torch.dtype, tol: Optional[float] = None,
                 tick: Optional[Callable[[], Any]] = None, grad: bool = False) -> Tuple[object, dict]:
    """``B = P_{n−1} ··· P_0`` for the run with step sizes ``hs`` and evaluation times ``t_eval``
    (``order`` consecutive times per step, as ``LinearizerScheduler`` lists them).

    Every ``A_t`` comes from one ``core.operators`` call; each step's ``P`` is
    ``SOLVERS.get(solver).propagator`` of the generators ``K(t) = (A_t − I)/(1 − t)`` at its stage times
    (``tick()`` is called once per step). The product is taken by
    :func:`~.propagators.autograd_collapse` with ``grad`` (mode ``"autograd"``), by
    :func:`~.propagators.structured_collapse` for scaled-identity-plus-low-rank operators (mode
    ``"basis"`` or ``"dense"``), and by :func:`~.propagators.collapse_product` for any other operator
    class (mode ``"generic"``). ``tol`` recompresses ``B`` (``compress(tol)``). Autocast is off
    throughout, so the product runs in ``dtype``. Returns ``(B, info)``, ``info`` the fields of
    ``CollapseInfo`` but ``seconds``.
    """
    with _autocast_off(core):
        return _collapse_products(core, solver, hs, t_eval, dtype, tol, tick, grad)


def _collapse_products(core, solver, hs, t_eval, dtype, tol, tick, grad):
    method = SOLVERS.get(solver)
    order = method.order
    unique = list(dict.fromkeys(t_eval))
    ops = dict(zip(unique, _operators(core, unique, grad, dtype)))
    steps = [(hs[i], t_eval[i * order:(i + 1) * order]) for i in range(len(hs))]

    def propagator(Ks, h):
        P = method.propagator(Ks, h)
        if tick is not None:
            tick()
        return P

    if grad:
        B = autograd_collapse(ops, steps, propagator, dtype)
        dropped, mode = 0.0, "autograd"
        if tol is not None:
            B, dropped = B.compress(tol=tol)
    elif all(isinstance(op, (IdentityPlusLowRank, SharedBasisOperator)) for op in ops.values()):
        B, mode = structured_collapse(ops, steps, propagator, dtype)
        dropped = 0.0
        if tol is not None:
            B, dropped = B.compress(tol=tol)
    else:  # any other operator class (dense cores): plain operator algebra
        gens = {t: latent_generator(op.to(dtype=dtype), t) for t, op in ops.items()}
        B, dropped = collapse_product((propagator([gens[t] for t in ts], h) for h, ts in steps), tol=tol)
        mode = "generic"
    return B, dict(rank=B.rank, dropped=float(dropped), mode=mode, num_steps=len(steps), solver=solver,
                   evaluations=len(unique))

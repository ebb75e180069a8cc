"""What a collapse will cost, estimated before it runs, and the limits a run must fit in.

A collapse of ``T`` grid points with an ``s``-stage solver evaluates the core at ``n ≤ (T − 1)·s`` times
(stages at the same time share one evaluation) and holds every ``A_t`` while it multiplies the propagators. With
``b`` bytes of per-time factors (measured on the core: the tensors of ``A_t`` that differ between two
times; shared ones, such as a shared basis ``U, V``, count once) and a working width ``w`` (the
coordinates the product lives in: the basis size for a shared basis, ``n·r`` columns for per-time
low-rank factors, at most ``D``)::

    memory  ≈ n·(b + 200 B)  +  4·w²·itemsize
    seconds ≈ n·30 µs  +  (T − 1)·s·w³ / (10¹⁰ flop/s on a CPU, 10¹² on a GPU)

(the 200 bytes and 30 µs are the Python bookkeeping of one evaluation). These are estimates of the order
of magnitude, meant to refuse a run that could never finish (``num_inference_steps=10**7``), not to time
one. The limits: half of the machine's memory (of the GPU's, for a core on a GPU) and one hour. Raise them
with the environment variables ``DIFFUSERS_LINEARIZER_MAX_COLLAPSE_MEMORY`` (bytes, or a number with
``KB``/``MB``/``GB``/``TB``) and ``DIFFUSERS_LINEARIZER_MAX_COLLAPSE_SECONDS``, or for a block of code with
``with collapse_limits(memory="200GB", seconds=86400):``.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch

__all__ = ["CollapseEstimate", "estimate_collapse", "check_collapse_budget", "collapse_limits", "distinct_evaluations", "parse_bytes"]

MEMORY_ENV = "DIFFUSERS_LINEARIZER_MAX_COLLAPSE_MEMORY"
SECONDS_ENV = "DIFFUSERS_LINEARIZER_MAX_COLLAPSE_SECONDS"
_PER_EVALUATION_BYTES = 200
_PER_EVALUATION_SECONDS = 30e-6
_FLOPS = {"cpu": 1e10, "cuda": 1e12}
_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_overrides: dict = {}


@dataclass(frozen=True)
class CollapseEstimate:
    """The estimated cost of one collapse (module docstring)."""

    evaluations: int
    width: int
    memory_bytes: float
    seconds: float


def parse_bytes(value: Union[str, int, float], name: str = "memory") -> float:
    """``"64GB"``, ``"512MiB"``, ``2e9`` → bytes; a ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if match is None or match.group(2).upper() not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"{name} must be a positive number of bytes, optionally with KB/MB/GB/TB, got {value!r}.")
    return float(match.group(1)) * _UNITS[match.group(2).upper()]


def _tensors(op) -> dict:
    return {id(v): v for v in vars(op).values() if isinstance(v, torch.Tensor)}


def distinct_evaluations(num_steps: int, stage_times: Sequence[float]) -> int:
    """Core evaluations of ``num_steps`` steps whose stages sit at fractions ``stage_times`` of a step (a
    stage at the step's end is the next step's start)."""
    per_step = set(stage_times)
    shared_end = 1.0 in per_step and 0.0 in per_step
    return num_steps * (len(per_step) - shared_end) + shared_end


def estimate_collapse(core, num_steps: int, stage_times: Sequence[float], dtype: torch.dtype) -> CollapseEstimate:
    """The cost of collapsing ``num_steps`` solver steps with stages at ``stage_times`` (module docstring)."""
    if not hasattr(core, "operators"):  # a fixed operator: nothing to evaluate
        return CollapseEstimate(0, 0, 0.0, 0.0)
    time_dependent = bool(getattr(core, "time_dependent", True))
    stages = len(stage_times)
    evaluations = distinct_evaluations(num_steps, stage_times) if time_dependent else 1
    ts = [0.25, 0.5] if time_dependent else [None, None]
    with torch.no_grad():
        a, b = core.operators(ts, dtype=dtype)
    shared = {t.data_ptr() for t in _tensors(a).values()} & {t.data_ptr() for t in _tensors(b).values()}
    per_time = sum(t.numel() * t.element_size() for t in _tensors(b).values() if t.data_ptr() not in shared)
    dim = int(getattr(a, "dim", 0) or getattr(core, "dim", 0) or 1)
    rank = int(getattr(a, "rank", dim) or 0)
    U = getattr(a, "U", None)
    columns_per_time = U is not None and U.data_ptr() not in shared  # a new basis block at every evaluation
    width = min(dim, max(1, rank * (evaluations if columns_per_time else 1)))
    itemsize = torch.empty((), dtype=dtype).element_size()
    memory = evaluations * (per_time + _PER_EVALUATION_BYTES) + 4.0 * width * width * itemsize
    device = next((p.device.type for p in core.parameters()), "cpu") if isinstance(core, torch.nn.Module) else "cpu"
    seconds = evaluations * _PER_EVALUATION_SECONDS + num_steps * stages * float(width) ** 3 / _FLOPS.get(device, 1e10)
    return CollapseEstimate(evaluations, width, memory, seconds)


def _memory_limit(core) -> float:
    if "memory" in _overrides:
        return _overrides["memory"]
    if os.environ.get(MEMORY_ENV):
        return parse_bytes(os.environ[MEMORY_ENV], MEMORY_ENV)
    params = list(core.parameters()) if isinstance(core, torch.nn.Module) else []
    if params and params[0].device.type == "cuda":
        return 0.5 * torch.cuda.get_device_properties(params[0].device).total_memory
    try:
        return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no sysconf
        return 16e9


def _seconds_limit() -> float:
    if "seconds" in _overrides:
        return _overrides["seconds"]
    value = os.environ.get(SECONDS_ENV)
    if value:
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ValueError(f"{SECONDS_ENV} must be a positive number of seconds, got {value!r}.")
        return seconds
    return 3600.0


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1e3:.3g} KB"


def check_collapse_budget(core, num_inference_steps: int, stage_times: Sequence[float],
                          dtype: torch.dtype) -> CollapseEstimate:
    """The estimate of collapsing ``num_inference_steps`` grid points, or a ``ValueError`` saying the
    estimate, the limit and how to raise it when the run would not fit (before anything is allocated)."""
    est = estimate_collapse(core, num_inference_steps - 1, stage_times, dtype)
    memory, seconds = _memory_limit(core), _seconds_limit()
    problems = []
    if est.memory_bytes > memory:
        problems.append(f"about {_size(est.memory_bytes)} of memory, over the limit of {_size(memory)} ({MEMORY_ENV})")
    if est.seconds > seconds:
        problems.append(f"about {est.seconds:.3g} s, over the limit of {seconds:.3g} s ({SECONDS_ENV})")
    if problems:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} would make a collapse of {est.evaluations:,} core evaluations "
            f"need {' and '.join(problems)}. Use fewer steps (the default is 100), or raise the limit: set the "
            "environment variable named, or run inside `with diffusers_linearizer.collapse_limits(memory=..., "
            "seconds=...)`."
        )
    return est


@contextlib.contextmanager
def collapse_limits(memory: Optional[Union[str, float]] = None, seconds: Optional[float] = None) -> Iterator[None]:
    """Raise (or lower) the collapse limits inside a ``with`` block: ``memory`` in bytes or ``"200GB"``,
    ``seconds`` a positive number; ``None`` keeps a limit as it is."""
    saved = dict(_overrides)
    try:
        if memory is not None:
            _overrides["memory"] = parse_bytes(memory, "memory")
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                raise ValueError(f"seconds must be a positive number, got {seconds!r}.")
            _overrides["seconds"] = float(seconds)
        yield
    finally:
        _overrides.clear()
        _overrides.update(saved)

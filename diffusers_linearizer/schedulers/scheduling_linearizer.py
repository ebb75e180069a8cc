"""``LinearizerScheduler``: a flow-matching scheduler whose whole run collapses into one operator.

Time convention
---------------
Our time is ``t ∈ [0, 1]``, ``t = 0`` pure noise and ``t = 1`` data (the paper's). diffusers'
flow-match schedulers use ``sigma = 1 − t`` and ``timestep = sigma · num_train_timesteps``, so
``scheduler.timesteps`` decrease from ``num_train_timesteps`` as ours increase from 0. Convert with
:meth:`LinearizerScheduler.t_of` instead of hard-coding ``1 − ts/1000``. The forward (training)
process is ``z_t = (1 − t)·noise + t·sample = sigma·noise + (1 − sigma)·sample``.

The latent ODE
--------------
The core predicts the clean latent ``ẑ₁ = A_t z`` (that prediction is ``step``'s ``model_output``),
the velocity is ``(ẑ₁ − z)/(1 − t)``, so ``dz/dt = K(t) z`` with ``K(t) = (A_t − I)/(1 − t)``. Every
solver step is then a matrix (:meth:`.solvers.Solver.propagator`), and
:meth:`LinearizerScheduler.collapse` returns their exact product ``B``: ``B.apply(z₀)`` equals the
stepped run from ``z₀`` up to round-off.

Grids (``timestep_spacing``), for ``num_inference_steps = T`` grid points (``T − 1`` steps)
---------------------------------------------------------------------------------------------
* ``"reference"``: ``t_i = i/T``, ``i = 0 … T−1`` — exactly the original code's loop, which skips the
  last step to ``t = 1``.
* ``"linspace"``: ``sigma`` linearly spaced from 1 down to ``sigma_min = 1/num_train_timesteps`` (the
  end of diffusers' flow-match grid), without diffusers' final jump to ``sigma = 0``.
Then ``shift`` maps every ``sigma`` as diffusers does, ``sigma ↦ shift·σ/(1 + (shift − 1)·σ)`` (the
identity for ``shift = 1``). No grid reaches ``t = 1``, where ``K`` is singular (Heun and RK4 evaluate
``K`` at the end of each step); a final Euler jump to ``t = 1`` would only return ``A_t z``.

diffusers' flow-match schedulers
--------------------------------
``LinearizerScheduler`` is not a drop-in for ``FlowMatchEulerDiscreteScheduler`` (nor lists it in
``_compatibles``): its ``model_output`` is the clean-latent prediction ``ẑ₁``, theirs the velocity
``v = noise − data``, and no grid here takes their final step to ``sigma = 0``. ``from_config`` of a
flow-match config reads its ``num_train_timesteps`` and ``shift`` and drops the other keys. The exact
relation: with ``timestep_spacing="linspace"``, ``shift = 1`` and ``T`` points, ``sigmas`` are
``FlowMatchEulerDiscreteScheduler``'s for ``T`` steps without the final 0, and an Euler step from ``ẑ₁``
equals its step from ``v = (z − ẑ₁)/sigma`` (both ``z + (sigma_next − sigma)·v``).

The solvers are the entries of :data:`.solvers.SOLVERS`; the collapse runs in :mod:`.collapse` on the
products of :mod:`.propagators`.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from .collapse import collapse_run, core_fingerprint, requires_grad
from .solvers import SOLVERS, check_run

TIMESTEP_SPACINGS = ("reference", "linspace")


@dataclass(frozen=True)
class CollapseInfo:
    """What :meth:`LinearizerScheduler.collapse` did: the rank of ``B``, the Frobenius mass dropped by
    recompression (0.0 when none was needed), steps, distinct core evaluations, the product's coordinates
    (``"basis"``: over the factors of all ``A_t``; ``"dense"``: those span ``R^D``; ``"generic"``: operator algebra),
    seconds."""

    rank: int
    dropped: float
    num_steps: int
    solver: str
    evaluations: int
    mode: str
    seconds: float


class LinearizerScheduler(SchedulerMixin, ConfigMixin):
    """Explicit Runge–Kutta sampler of the Linearizer's latent ODE, plus its exact one-operator collapse.

    Args:
        num_train_timesteps: diffusers' timestep scale (``timestep = sigma · num_train_timesteps``).
        shift: diffusers' flow-match sigma shift (1.0 = none).
        solver: a name in :data:`.solvers.SOLVERS`: ``"euler"``, ``"heun"``, ``"rk4"`` or ``"reference_rk"``
            (the original code's inexact collapsed "rk" matrix, first order, kept only for parity with
            converted checkpoints).
        timestep_spacing: ``"reference"`` or ``"linspace"`` (module docstring).

    ``timesteps`` lists every model evaluation (Heun: ``t, t+h`` per step; RK4: ``t, t+h/2, t+h/2,
    t+h``), ``order`` is the evaluations per step, and ``step`` returns the state at which the model
    must be evaluated next, so the plain diffusers loop runs the full solver::

        scheduler.set_timesteps(T)
        for ts in scheduler.timesteps:
            z = scheduler.step(core(z, scheduler.t_of(ts)), ts, z).prev_sample
    """

    _compatibles = []  # no diffusers scheduler steps the same model output the same way (module docstring)
    collapse_cache_size = 16  # one entry per (condition, guidance) a batch of mixed labels asks for

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, solver: str = "euler",
                 timestep_spacing: str = "reference"):
        check_run(2, solver)
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"Unknown timestep_spacing {timestep_spacing!r}; "
                             f"choose one of {', '.join(TIMESTEP_SPACINGS)}.")
        if not shift > 0:
            raise ValueError(f"shift must be positive, got {shift}.")
        if int(num_train_timesteps) < 1:
            raise ValueError(f"num_train_timesteps must be ≥ 1, got {num_train_timesteps}.")
        # Training-time schedule, as diffusers' flow-match schedulers expose before set_timesteps.
        train_sigmas = self._shift(np.arange(num_train_timesteps, 0, -1, dtype=np.float64) / num_train_timesteps)
        self.sigmas = torch.from_numpy(train_sigmas)
        self.timesteps = self.sigmas * num_train_timesteps
        self.num_inference_steps = None
        self._h = self._t_eval = None
        self._step_index = self._begin_index = None
        self._stage_state = None
        self._init_collapse_cache()

    # ------------------------------------------------------------------ small helpers
    def _init_collapse_cache(self):
        self._collapse_lock = threading.RLock()
        self._collapse_cache = OrderedDict()

    def __getstate__(self):  # deepcopy / pickle: locks cannot be copied, caches need not be
        state = self.__dict__.copy()
        state.pop("_collapse_lock", None)
        state.pop("_collapse_cache", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_collapse_cache()

    def _shift(self, sigmas: np.ndarray) -> np.ndarray:
        s = float(self.config.shift)
        return sigmas if s == 1.0 else s * sigmas / (1.0 + (s - 1.0) * sigmas)

    @property
    def order(self) -> int:
        """Model evaluations per step, as the solver's entry declares (1 Euler, 2 Heun, 3 reference_rk, 4 RK4)."""
        return SOLVERS.entry(self.config.solver).order

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    @property
    def step_index(self) -> Optional[int]:
        """Index into ``timesteps`` of the next evaluation (advances by one per ``step`` call)."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        """Start at ``timesteps[begin_index]`` (pipelines call this for img2img; a multiple of ``order``)."""
        self._begin_index = begin_index

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def t_of(self, timestep):
        """Our time ``t = 1 − timestep/num_train_timesteps`` (float in, float out; tensors in float64)."""
        if isinstance(timestep, torch.Tensor):
            ts = timestep if timestep.device.type == "mps" else timestep.to(torch.float64)
            return 1.0 - ts / self.config.num_train_timesteps
        return 1.0 - float(timestep) / self.config.num_train_timesteps

    def timestep_of(self, t):
        """Inverse of :meth:`t_of`: ``timestep = (1 − t) · num_train_timesteps``."""
        return (1.0 - t) * self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity (flow matching needs no input scaling); here for pipeline compatibility."""
        return sample

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """Forward process ``z_t = (1 − t)·noise + t·sample`` with ``t = t_of(timestep)`` — any
        timestep, on the grid or not; ``timestep`` a number or one per batch element."""
        sigma = torch.as_tensor(timestep, device=sample.device).to(sample.dtype) / self.config.num_train_timesteps
        sigma = sigma.reshape(sigma.shape + (1,) * (sample.ndim - sigma.ndim)) if sigma.ndim else sigma
        return sigma * noise + (1.0 - sigma) * sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``scale_noise`` with the argument order of diffusers' DDPM-style ``add_noise``."""
        return self.scale_noise(original_samples, timesteps, noise)

    # ------------------------------------------------------------------ the grid
    def check_run(self, num_inference_steps, solver: Optional[str] = None) -> Tuple[int, str]:
        """Validate a run's ``num_inference_steps`` (int ≥ 2) and ``solver`` (``None``: this scheduler's);
        return ``(T, solver)``. The one validation of these two parameters: pipelines call it before any
        work, ``set_timesteps`` and ``collapse`` call it for direct callers."""
        return check_run(num_inference_steps, solver, self.config.solver)

    def _schedule(self, T: int, solver: str):
        """``(grid sigmas, step sizes h, evaluation timesteps, evaluation times t)`` for ``T`` points."""
        n_train = self.config.num_train_timesteps
        if self.config.timestep_spacing == "reference":
            sigmas = 1.0 - np.arange(T, dtype=np.float64) / T
        else:
            sigmas = np.linspace(1.0, 1.0 / n_train, T, dtype=np.float64)
        sigmas = self._shift(sigmas)
        t_grid = 1.0 - sigmas
        h = np.diff(t_grid)
        fractions = SOLVERS.get(solver).c
        t_eval = [t_grid[i + 1] if f == 1.0 else t_grid[i] + f * h[i] for i in range(T - 1) for f in fractions]
        timesteps = (1.0 - torch.tensor(t_eval, dtype=torch.float64)) * n_train
        # Round-trip through t_of so that the caller's t_of(ts) is bit-identical to ours.
        return sigmas, h.tolist(), timesteps, self.t_of(timesteps).tolist()

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None):
        """Build the grid of ``num_inference_steps`` points (``num_inference_steps − 1`` steps).

        ``timesteps`` (float64; float32 on MPS) list every model evaluation, ``sigmas`` one value per grid
        point (decreasing, the last one ``> 0``).
        """
        T, _ = self.check_run(num_inference_steps)
        sigmas, self._h, timesteps, self._t_eval = self._schedule(T, self.config.solver)
        dtype = torch.float32 if device is not None and torch.device(device).type == "mps" else torch.float64
        self.timesteps = timesteps.to(device=device, dtype=dtype)
        self.sigmas = torch.from_numpy(sigmas).to(device=device, dtype=dtype)
        self.num_inference_steps = T
        self._step_index = self._begin_index = None
        self._stage_state = None

    def index_for_timestep(self, timestep, schedule_timesteps: Optional[torch.Tensor] = None) -> int:
        """Index of ``timestep`` in the schedule; of repeated values, the first that starts a step."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        value = torch.as_tensor(timestep, dtype=torch.float64).to("cpu").reshape(-1)[0]
        diffs = (schedule.to("cpu", torch.float64) - value).abs()
        hits = (diffs == 0).nonzero().flatten().tolist() or (diffs <= 1e-3).nonzero().flatten().tolist()
        if not hits:
            raise ValueError(f"Timestep {float(value)} is not in the schedule; pass one of scheduler.timesteps.")
        starts = [j for j in hits if j % self.order == 0]
        return (starts or hits)[0]

    # ------------------------------------------------------------------ stepping
    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             return_dict: bool = True) -> Union[SchedulerOutput, Tuple[torch.Tensor]]:
        """Advance one model evaluation.

        ``model_output`` is the core's clean-latent prediction ``A_t z`` at ``t = t_of(timestep)`` for
        ``z = sample`` (the state returned by the previous call), so the slope is
        ``k = (model_output − z)/(1 − t)``. Returns the state at which to evaluate the model next — the
        stage state ``z₀ + a_{i+1}·h·k_i`` inside a multi-stage step, the new grid state
        ``z₀ + (h/d)·Σ b_i k_i`` after the step's last stage (the solver's tableau, :mod:`.solvers`).
        Arithmetic runs in at least float32 (float64 stays float64); the stage states are kept
        internally at that precision, the returned tensor has ``model_output``'s dtype. Other keyword
        arguments (a flow-match scheduler's ``s_churn``, ``generator``, …) are a ``TypeError``.
        """
        if self._t_eval is None:
            raise ValueError("step() called before set_timesteps(num_inference_steps); set the grid first.")
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("Pass one of scheduler.timesteps as `timestep`, not an integer index.")
        if self._step_index is None:
            self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index
        j = self._step_index
        if j >= len(self._t_eval):
            raise ValueError("The schedule is complete; call set_timesteps again to sample anew.")
        i, stage = divmod(j, self.order)
        h, t = self._h[i], self._t_eval[j]
        work = torch.promote_types(sample.dtype, torch.float32)
        x = sample.to(work)
        k = (model_output.to(work) - x) * (1.0 / (1.0 - t))  # K(t) x, as in latent_generator
        if stage == 0:
            self._stage_state = (x, [])
        elif self._stage_state is None:
            raise ValueError(f"step() must start at the first stage of a {self.config.solver} step: "
                             f"begin_index has to be a multiple of order = {self.order}.")
        z0, ks = self._stage_state
        ks.append(k)
        solver = SOLVERS.get(self.config.solver)
        if stage < self.order - 1:  # the state where the next stage is evaluated
            nxt = solver.stage_state(z0, k, stage, h)
        else:  # last stage: combine the slopes
            nxt = solver.combine(z0, ks, h)
            self._stage_state = None
        self._step_index += 1
        prev_sample = nxt.to(model_output.dtype)
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    # ------------------------------------------------------------------ collapse
    def collapse(self, core, num_inference_steps: Optional[int] = None, solver: Optional[str] = None,
                 dtype: torch.dtype = torch.float64, cache: bool = True, return_info: bool = False,
                 tol: Optional[float] = None, progress_bar: Optional[Callable[..., Any]] = None):
        """The operator ``B = P_{n−1} ··· P_0`` of a whole run: ``B.apply(z₀)`` = the stepped solver from ``z₀``.

        ``core``: a linear core (``time_dependent``, ``operators(ts, dtype)``) or a constant operator;
        all ``A_t`` come from one ``core.operators`` call (one time only for a constant core). With
        ``IdentityPlusLowRank``/``SharedBasisOperator`` operators ``B = c·I + 𝐔 M 𝐕ᵀ`` is accumulated
        over the basis 𝐔 = [U(t) for each distinct t] (one per shared basis or constant core): one
        ``D × R`` Gram matrix, then ``O(k·R²)`` per step, no ``D × D`` matrix and no truncation; the
        nominal rank never exceeds that basis, so nothing needs recompression on the way. Only when
        the factors together exceed ``D`` columns (``T·r ≳ D``) does ``B`` genuinely carry a full-rank
        ``D × D`` perturbation; it is then accumulated densely and returned as ``c·I + L·I``.
        ``tol`` (optional) recompresses ``B`` at the end with the operator's ``compress(tol)``.

        Returns an ``IdentityPlusLowRank`` (a ``SharedBasisOperator`` on the core's ``U``/``V`` for the
        shared-basis core; a ``DenseOperator`` for dense cores), or ``(B, CollapseInfo)`` with
        ``return_info``. ``dtype``: accumulation precision (float64 or float32). Each step's propagator is
        the solver's :meth:`.solvers.Solver.propagator`; the products are :func:`.collapse.collapse_run`'s.

        ``progress_bar``: a factory like ``DiffusionPipeline.progress_bar`` (``progress_bar(total=n)``
        returning a context manager with ``update()``); it is called only when a collapse actually
        runs (not on cache hits) and advanced once per solver step.

        Cached (LRU of ``collapse_cache_size``, thread-safe) by grid, solver, dtype, ``tol`` and the
        core's identity, device and weights (``data_ptr``, in-place version counter, shape), plus, for a view of a
        core (``cache_identity()`` → ``(owner, key)``, e.g. a guided conditional core), the view's key; the entry
        also holds ``B†`` once :meth:`pseudo_inverse` asked for it. Edits through ``.data`` bypass the
        version counter: pass ``cache=False`` or call :meth:`clear_collapse_cache` then.

        **Differentiable.** With ``cache=False``, gradients enabled and a core whose parameters require
        grad, ``B`` is built from operators attached to the graph (``core.operators(..., grad=True)``)
        by plain operator algebra (:func:`.propagators.autograd_collapse`, mode ``"autograd"``): the
        same exact product, with gradients for every core parameter through ``B.apply``, ``B.solve``
        and ``B.logabsdet``. Memory stays ``O(D·R)``: the shared-basis core and the constant low-rank
        core keep every step in ``R × R`` coordinates.
        """
        B, info, _ = self._collapse_entry(core, num_inference_steps, solver, dtype, cache, tol, progress_bar)
        return (B, info) if return_info else B

    def pseudo_inverse(self, core, num_inference_steps: Optional[int] = None, solver: Optional[str] = None,
                       dtype: torch.dtype = torch.float64, rcond: Optional[float] = None,
                       progress_bar: Optional[Callable[..., Any]] = None):
        """``B†``, the Moore–Penrose pseudo-inverse of :meth:`collapse`'s ``B`` (``rcond``: the cutoff for
        small singular values, default the operator's), computed once and kept in ``B``'s cache entry."""
        B, _, pinvs = self._collapse_entry(core, num_inference_steps, solver, dtype, True, None, progress_bar)
        with self._collapse_lock:
            if rcond not in pinvs:
                pinvs[rcond] = B.pinv(rcond=rcond)
            return pinvs[rcond]

    def _collapse_entry(self, core, num_inference_steps, solver, dtype, cache, tol, progress_bar):
        """``(B, info, pinv dict)`` from the cache, or computed (and cached when ``cache``)."""
        T = num_inference_steps if num_inference_steps is not None else self.num_inference_steps
        if T is None:
            raise ValueError("collapse() needs num_inference_steps (or call set_timesteps first).")
        T, solver = self.check_run(T, solver)
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"collapse accumulates in torch.float64 or torch.float32, got {dtype}.")
        # a view of a core (a guided conditional core) names its owner module and what it adds to it
        owner, view_key = core.cache_identity() if hasattr(core, "cache_identity") else (core, None)
        if not cache and torch.is_grad_enabled() and requires_grad(owner):
            start = time.perf_counter()
            _, hs, _, t_eval = self._schedule(T, solver)
            B, info = collapse_run(core, solver, hs, t_eval, dtype, tol, grad=True)
            return B, CollapseInfo(seconds=time.perf_counter() - start, **info), {}
        prints = core_fingerprint(owner) if cache else None
        key = None if prints is None else (
            T, solver, self.config.timestep_spacing, float(self.config.shift), self.config.num_train_timesteps,
            dtype, tol, prints[1], prints[0], view_key)
        with self._collapse_lock:
            hit = self._collapse_cache.get(key) if key is not None else None
            if hit is not None and hit[0]() is owner:
                self._collapse_cache.move_to_end(key)
                return hit[1], hit[2], hit[3]
            start = time.perf_counter()
            _, hs, _, t_eval = self._schedule(T, solver)
            bar = progress_bar(total=T - 1) if progress_bar is not None else contextlib.nullcontext()
            with bar as tick:
                B, info = collapse_run(core, solver, hs, t_eval, dtype, tol, getattr(tick, "update", None))
            info = CollapseInfo(seconds=time.perf_counter() - start, **info)
            entry = (weakref.ref(owner) if key is not None else None, B, info, {})
            if key is not None:
                self._collapse_cache[key] = entry
                while len(self._collapse_cache) > self.collapse_cache_size:
                    self._collapse_cache.popitem(last=False)
            return entry[1], entry[2], entry[3]

    def clear_collapse_cache(self):
        with self._collapse_lock:
            self._collapse_cache.clear()

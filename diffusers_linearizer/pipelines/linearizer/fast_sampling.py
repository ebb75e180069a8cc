"""A static-shape fast path for the two network passes of one-step sampling.

One-step generation is ``x = g_x⁻¹(B g_y(τ·ε))``: two passes of the invertible network around one
low-rank product. At small resolutions a pass of ``g`` is a few hundred small kernels, so its time is
spent launching them, not computing. ``LinearizerPipeline.enable_fast_sampling()`` removes most of it:

* ``torch.compile`` of ``g``'s forward and inverse with static shapes (one graph per batch size and
  direction: fused kernels, fewer launches);
* on CUDA, each batch size's pass captured once as a CUDA graph and replayed (one launch per pass);
* optionally ``g`` in float16 or bfloat16 (a half-precision copy of the networks).

``B`` is applied as before, from the scheduler's cache in float64, and noise is drawn in float32, so a
seed gives the same image as the plain path (to float round-off in float32, to the half type's precision
in float16/bfloat16). On CUDA, torch runs cuDNN convolutions in TF32 by default
(``torch.backends.cudnn.allow_tf32``); the compiled path picks other convolution kernels, so under TF32
the two paths differ by TF32's rounding, about as much as TF32 moves the plain images themselves; with
TF32 off they differ by float32 round-off (``docs/gpu.md`` has the measured differences). Inputs and outputs keep the model's dtype. Calls are serialised by a lock (a
captured graph has one set of input and output buffers), so one pipeline can still be called from
several threads. When ``torch.compile`` cannot run on a machine (no C++ compiler for the CPU backend,
an unsupported GPU) the first call warns once and the path runs uncompiled.

The networks are compiled by reference: in-place weight updates are seen, but a half-precision copy is
a snapshot, and graphs are tied to the device: call ``enable_fast_sampling()`` again after changing the
weights or moving the pipeline.
"""

from __future__ import annotations

import copy
import threading
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

HALF_DTYPES = (torch.float16, torch.bfloat16)


class FastG:
    """Fast passes of a ``LinearizerModel``'s networks (module docstring); :meth:`run` is the entry point."""

    def __init__(self, model, dtype: Optional[torch.dtype] = None, mode: Optional[str] = None,
                 backend: str = "inductor", compile: bool = True, cuda_graphs: Optional[bool] = None):
        device = model.device
        if dtype is not None and dtype not in (torch.float32, torch.float64) + HALF_DTYPES:
            raise ValueError(f"dtype must be None, torch.float32, torch.float64, torch.float16 or torch.bfloat16, got {dtype}.")
        if cuda_graphs is None:
            cuda_graphs = device.type == "cuda"
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the pipeline on a CUDA device; it is on {device}.")
        if cuda_graphs and compile and mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"mode={mode!r} captures CUDA graphs itself; pass cuda_graphs=False with it.")
        self.device, self.model_dtype = device, model.dtype
        self.dtype = dtype or model.dtype
        self.compile, self.cuda_graphs = bool(compile), bool(cuda_graphs)
        self.compile_kwargs = dict(mode=mode, backend=backend, dynamic=False)
        self.lock = threading.Lock()
        copies: Dict[int, torch.nn.Module] = {}
        self.nets: Dict[str, Tuple[torch.nn.Module, float]] = {}
        for space in ("x", "y"):
            net, role = model.network(space)
            if self.dtype != model.dtype:  # one half-precision copy per distinct network
                net = copies.setdefault(id(net), copy.deepcopy(net).to(self.dtype).eval().requires_grad_(False))
            self.nets[space] = (net, float(role))
        self.passes: Dict[Tuple[str, bool], Callable[[Tensor], Tensor]] = {}
        self.graphs: Dict[Tuple, Tuple] = {}
        self.compile_failed = False

    def _pass(self, space: str, inverse: bool) -> Callable[[Tensor], Tensor]:
        """``x ↦ g_space(x)`` (or its inverse) with the role input made inside, compiled when asked."""
        key = (space, inverse)
        if key not in self.passes:
            net, role = self.nets[space]
            method = net.inverse if inverse else net.forward
            fn = torch.compile(method, **self.compile_kwargs) if self.compile and not self.compile_failed else method

            def run(x: Tensor, fn=fn) -> Tensor:
                return fn(x, torch.full((x.shape[0],), role, dtype=x.dtype, device=x.device))

            self.passes[key] = run
        return self.passes[key]

    def _call(self, space: str, inverse: bool, x: Tensor) -> Tensor:
        fn = self._pass(space, inverse)
        if not self.compile or self.compile_failed:
            return fn(x)
        try:
            return fn(x)
        except (torch.OutOfMemoryError, ValueError):
            raise
        except Exception as err:  # the compiler, not the network: the same pass runs eagerly below
            self.compile_failed = True
            self.passes.clear()
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err
            text = (str(cause).strip().splitlines() or [""])[0][:300]
            warnings.warn(
                f"enable_fast_sampling: torch.compile could not compile g on {self.device} ({type(cause).__name__}: "
                f"{text}); running it uncompiled{' with CUDA graphs' if self.cuda_graphs else ''}.",
                RuntimeWarning, stacklevel=4)
            return self._pass(space, inverse)(x)

    def _capture(self, space: str, inverse: bool, x: Tensor) -> Tuple:
        """``(graph, input buffer, output buffer)`` of the pass for ``x``'s shape, after two warm-up runs on a
        side stream (which also compile it, when asked)."""
        static_in = x.clone()
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._call(space, inverse, static_in)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._call(space, inverse, static_in)
        return graph, static_in, static_out

    def _replay(self, space: str, inverse: bool, x: Tensor) -> Tensor:
        """The pass as a CUDA graph captured for this shape on first use; where a pass cannot be captured
        (an operation that waits for the device), a warning and the pass without graphs from then on."""
        key = (space, inverse, tuple(x.shape))
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(space, inverse, x)
            except RuntimeError as err:
                self.cuda_graphs = False
                warnings.warn(f"enable_fast_sampling: g could not be captured as a CUDA graph ({err}); running it "
                              "without graphs.", RuntimeWarning, stacklevel=4)
                return self._call(space, inverse, x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def run(self, x: Tensor, space: str, inverse: bool = False) -> Tensor:
        """``g_space(x)`` or ``g_space⁻¹(x)`` on the fast path, returned in ``x``'s dtype."""
        if x.device != self.device:
            raise ValueError(f"enable_fast_sampling() was called with the pipeline on {self.device}, the inputs are on "
                             f"{x.device}: call it again after moving the pipeline.")
        with self.lock, torch.no_grad():
            h = x.to(self.dtype)
            out = self._replay(space, inverse, h) if self.cuda_graphs else self._call(space, inverse, h)
        return out.to(x.dtype)


class FastSamplingMixin:
    """``enable_fast_sampling`` / ``disable_fast_sampling`` for a pipeline with a ``linearizer`` component."""

    def enable_fast_sampling(self, dtype: Optional[torch.dtype] = None, mode: Optional[str] = None,
                             backend: str = "inductor", compile: bool = True, cuda_graphs: Optional[bool] = None):
        r"""Run ``g_y`` and ``g_x⁻¹`` on a static-shape fast path (module :mod:`.fast_sampling`).

        Args:
            dtype: ``None`` (the model's dtype), ``torch.float16`` or ``torch.bfloat16`` (a half-precision copy
                of ``g``; ``B`` is still applied in float64 and images come back in the model's dtype). At small
                resolutions the passes are launch-bound, so half precision saves little time and costs
                accuracy (``docs/gpu.md`` measures both): prefer the default unless memory is short.
            mode / backend: ``torch.compile``'s ``mode`` (default: torch's) and ``backend`` (default inductor).
                ``mode="reduce-overhead"`` (inductor's own CUDA graphs) needs ``cuda_graphs=False``.
            compile: compile ``g``'s forward and inverse (one graph per batch size and direction; after
                torch's recompile limit, 8 batch sizes, further ones run uncompiled).
            cuda_graphs: capture every batch size's pass as a CUDA graph and replay it; default: on for a
                CUDA pipeline (an error on other devices).

        Call it after moving the pipeline to its device; call it again after changing the weights.
        The first call of each batch size compiles (seconds to minutes); later ones are fast. Returns the
        pipeline.
        """
        self._fast_g = FastG(self.linearizer, dtype=dtype, mode=mode, backend=backend, compile=compile,
                             cuda_graphs=cuda_graphs)
        return self

    def disable_fast_sampling(self):
        """Back to the plain path (drops the compiled passes and captured graphs). Returns the pipeline."""
        self._fast_g = None
        return self

    @property
    def fast_sampling(self) -> Optional[FastG]:
        """The fast path in use (``None``: the plain one)."""
        return getattr(self, "_fast_g", None)

    def run_g(self, x: Tensor, space: str, inverse: bool = False) -> Tensor:
        """``g_space(x)`` (``inverse``: ``g_space⁻¹(x)``), on the fast path when it is enabled."""
        fast = self.fast_sampling
        if fast is None:
            return self.linearizer.decode(x, space) if inverse else self.linearizer.encode(x, space)
        self.linearizer.check_sample(x, "latent" if inverse else "input")
        return fast.run(x, space, inverse)

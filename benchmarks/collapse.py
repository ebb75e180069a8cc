"""Collapse benchmark: the reference's dense product vs ``LinearizerScheduler.collapse``.

    python benchmarks/collapse.py [--quick] [--device cpu|cuda] [--threads N] [--dense-64] [--output FILE]

One table, measured in one run, written to stdout and to ``docs/benchmarks.md``:

* the reference's way — ``B = M_{T−2} ··· M_0`` with dense ``M_i = I + (h/(1 − t_i))(A_{t_i} − I)``,
  ``A_t = U(t) V(t)ᵀ`` formed as a D × D matrix (fp32, Euler, as the original code) — against ours at
  ``D = 3·32²`` and ``3·64²``. On a CPU a dense D³ product per step is too slow for the full ``T``:
  the dense rows then time the first few steps of the same ``T = 100`` run and scale linearly in the
  number of steps (marked *extrapolated*); at ``3·64²`` (a 12288³ product per step) the row is scaled
  from ``3·32²`` by ``D³`` (marked *estimated*) unless ``--dense-64`` times one real step;
* ours alone at ``3·128²`` and ``3·256²`` (``T = 100``; on a CPU RK4 only up to ``3·128²``);
* growth with ``T ∈ {10, 30, 100, 300, 1000}`` at ``D = 3·32²``;
* the reference's core (``TimeLowRankCore``, ``r = 8``, ``a ≡ 0``, MLP width 512) and a shared-basis
  core (``R = 64``) beside it.

Errors are relative ``‖B z − z_ref‖ / ‖z_ref‖`` on a batch of random latents, where ``z_ref`` is the
same solver stepped in float64 directly with every ``A_t`` (never through the collapse). Memory: on
CUDA ``torch.cuda.max_memory_allocated`` above the level before the call; on CPU the peak resident-set
growth sampled every 2 ms with psutil (allocator caching can hide reuse), plus the analytic bytes of
``B``'s factors.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import threading
import time

import torch
from common import DOCS, hardware_and_load, sync

from diffusers_linearizer import write_text_atomic
from diffusers_linearizer.models import SharedBasisCore, TimeLowRankCore
from diffusers_linearizer.schedulers import LinearizerScheduler

F64 = torch.float64


# ---------------------------------------------------------------------------- measuring
def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class Peak:
    """Peak memory above the level at entry: CUDA allocator stats, or sampled RSS on CPU."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        _trim()
        import psutil

        self.proc, self.stop = psutil.Process(), False
        self.base = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop = True
            self.thread.join()
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)


def _gb(n):
    return f"{n / 2**30:.2f} GB" if n >= 2**28 else f"{n / 2**20:.0f} MB"


def operator_bytes(B):
    tensors = [getattr(B, name, None) for name in ("U", "V", "X")]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


# ---------------------------------------------------------------------------- cores and references
def reference_core(D, device):
    """The original code's core: A_t = U(t) V(t)ᵀ, r = 8, MLP 128 → 512 → 512 → D·r (a ≡ 0)."""
    torch.manual_seed(0)
    with torch.device(device):
        core = TimeLowRankCore(D, 8, hidden_dim=512, embedding_dim=128, identity=False)
    return core.requires_grad_(False).eval()


def shared_core(D, device):
    torch.manual_seed(0)
    with torch.device(device):
        core = SharedBasisCore(D, 64, hidden_dim=256, embedding_dim=128)
        with torch.no_grad():
            core.s_mlp[-1].weight.normal_(0.0, 0.02)
    return core.requires_grad_(False).eval()


def stepped_fp64(core, T, solver, z0, max_steps=None):
    """The scheduler's stepping in float64, with each A_t applied from its own operator."""
    scheduler = LinearizerScheduler(solver=solver)
    scheduler.set_timesteps(T)
    times = [float(t) for t in scheduler.t_of(scheduler.timesteps)]
    ops = dict(zip(dict.fromkeys(times), core.operators(list(dict.fromkeys(times)))))
    z = z0.to(F64)
    limit = len(times) if max_steps is None else max_steps * scheduler.order
    for ts, t in list(zip(scheduler.timesteps, times))[:limit]:
        z = scheduler.step(ops[t].to(dtype=F64).apply(z), ts, z).prev_sample
    return z


def dense_reference(core, T, steps, z0, device):
    """The original code's collapse, first ``steps`` Euler steps of the T-point grid, in fp32."""
    with torch.no_grad():
        D = core.dim
        ts = [i / T for i in range(T - 1)][:steps]
        a, U, V = core.factors(torch.tensor(ts, device=device))
        B = torch.eye(D, device=device)
        for i, t in enumerate(ts):
            A = U[i] @ V[i].T  # the D × D matrix of the reference
            M = torch.eye(D, device=device) + (1.0 / T) / (1.0 - t) * (A - torch.eye(D, device=device))
            B = M @ B
            del A, M
        return z0.to(B.dtype) @ B.T


def rel(a, b):
    return float((a.to(F64) - b).norm() / b.norm())


# ---------------------------------------------------------------------------- rows
ROWS = []


def row(section, D, T, core, method, solver, dtype, seconds, mem, rank, err, note=""):
    ROWS.append(dict(section=section, D=D, T=T, core=core, method=method, solver=solver, dtype=dtype,
                     seconds=seconds, mem=mem, rank=rank, err=err, note=note))
    print(f"{section:<8} D={D:<7} T={T:<5} {core:<13} {method:<10} {solver:<6} {dtype:<5} "
          f"{seconds:9.3f}s  mem {mem:<10} rank {str(rank):<6} err {err}  {note}", flush=True)


def ours(section, core, core_name, T, solver, dtype, device, z0, check=True):
    scheduler = LinearizerScheduler(solver=solver)
    sync(device)
    with Peak(device) as peak:
        start = time.perf_counter()
        B, info = scheduler.collapse(core, T, dtype=dtype, cache=False, return_info=True)
        sync(device)
        seconds = time.perf_counter() - start
    err = f"{rel(B.apply(z0.to(dtype)), stepped_fp64(core, T, solver, z0)):.1e}" if check else "—"
    mem = f"{_gb(peak.peak)} (B {_gb(operator_bytes(B))})"
    row(section, core.dim, T, core_name, "ours", solver, str(dtype).split(".")[-1].replace("float", "fp"),
        seconds, mem, B.rank, err, info.mode if info.mode != "basis" else "")
    del B
    return seconds


def dense(section, core, T, steps, z0, device, note):
    sync(device)
    with Peak(device) as peak:
        start = time.perf_counter()
        out = dense_reference(core, T, steps, z0, device)
        sync(device)
        seconds = time.perf_counter() - start
    err = rel(out, stepped_fp64(core, T, "euler", z0, max_steps=steps))
    total = seconds * (T - 1) / steps
    row(section, core.dim, T, "time_lowrank", "dense", "euler", "fp32", total, _gb(peak.peak), core.dim,
        f"{err:.1e}", note if steps == T - 1 else f"{note}extrapolated ×{(T - 1) / steps:.1f} from {steps} steps")
    return total


# ---------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sweep (about a minute on a laptop CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dense-64", action="store_true",
                        help="on CPU, also time one dense step at 3·64² (minutes) instead of estimating it")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 avoids OpenMP contention on busy hosts")
    parser.add_argument("--output", default=os.path.join(DOCS, "benchmarks.md"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    T = 100
    started = time.perf_counter()

    # 1. dense reference vs ours at 3·32² and 3·64²
    speedups = {}
    for side in (32, 64):
        D = 3 * side * side
        core = reference_core(D, device)
        z0 = torch.randn(4, D, device=device)
        if gpu:
            t_dense = dense("vs dense", core, T, T - 1, z0, device, "")
        elif side == 32:
            t_dense = dense("vs dense", core, T, 3 if args.quick else 6, z0, device, "")
            per_step_32 = t_dense / (T - 1)
        elif args.dense_64:
            t_dense = dense("vs dense", core, T, 1, z0, device, "")
        else:
            t_dense = per_step_32 * 64 * (T - 1)
            row("vs dense", D, T, "time_lowrank", "dense", "euler", "fp32", t_dense, "—", D, "—",
                "estimated: 3·32² per-step time × 64 (D³)")
        t32 = ours("vs dense", core, "time_lowrank", T, "euler", torch.float32, device, z0)
        t64 = ours("vs dense", core, "time_lowrank", T, "euler", torch.float64, device, z0)
        ours("vs dense", core, "time_lowrank", T, "rk4", torch.float64, device, z0)
        speedups[D] = (t_dense / t32, t_dense / t64)
        del core
        _trim()

    # 2. ours at larger sizes, and the shared-basis core beside the reference core
    sizes = (32, 64, 128) if args.quick else (32, 64, 128, 256)
    for side in sizes:
        D = 3 * side * side
        z0 = torch.randn(2, D, device=device)
        if side >= 128:
            core = reference_core(D, device)
            ours("scale", core, "time_lowrank", T, "euler", torch.float32, device, z0)
            ours("scale", core, "time_lowrank", T, "euler", torch.float64, device, z0)
            if side < 256 or gpu:  # on a CPU RK4 at 3·256² would take minutes; 3·128² shows its cost
                ours("scale", core, "time_lowrank", T, "rk4", F64, device, z0)
            del core
            _trim()
        core = shared_core(D, device)
        ours("scale", core, "shared R=64", T, "euler", F64, device, z0)
        ours("scale", core, "shared R=64", T, "rk4", F64, device, z0)
        del core
        _trim()

    # 3. growth with T at 3·32²
    D = 3 * 32 * 32
    z0 = torch.randn(2, D, device=device)
    core, shared = reference_core(D, device), shared_core(D, device)
    for steps in ((10, 30, 100) if args.quick else (10, 30, 100, 300, 1000)):
        ours("growth", core, "time_lowrank", steps, "euler", F64, device, z0, check=steps <= 300)
        ours("growth", core, "time_lowrank", steps, "rk4", F64, device, z0, check=steps <= 100)
        ours("growth", shared, "shared R=64", steps, "rk4", F64, device, z0, check=steps <= 100)
    total = time.perf_counter() - started
    write_markdown(args, device, speedups, total)


def gpu_targets(path: str):
    """The GPU targets as ``benchmarks/gpu.py`` measured them with this script's functions (its ``docs/gpu.json``),
    as one line for a CPU run's page; ``None`` when that file is missing or holds no full GPU run."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    if not results.get("gpu") or results.get("quick") or not results.get("collapse"):
        return None
    rows = {(r["D"], r["method"], r["solver"], r["dtype"]): r for r in results["collapse"]}
    small, large = min(r["D"] for r in results["collapse"]), max(r["D"] for r in results["collapse"])
    dense, fast = rows.get((small, "dense", "euler", "fp32")), rows.get((small, "ours", "euler", "fp32"))
    euler, rk4 = rows.get((large, "ours", "euler", "fp32")), rows.get((large, "ours", "rk4", "fp64"))
    if not (dense and fast and euler and rk4):
        return None
    return (f"* GPU: `benchmarks/gpu.py` measured these targets with this script's functions on {results['hardware']}"
            f" ({results['date']}, `docs/gpu.md`), T = {fast['T']}: at D = {small} the dense product took"
            f" {dense['seconds']:.2f} s and ours {fast['seconds']:.3f} s (Euler fp32, **{dense['seconds'] / fast['seconds']:.0f}×**);"
            f" at D = {large} ours took {euler['seconds']:.3f} s (Euler fp32, peak {euler['mem']}) and"
            f" {rk4['seconds']:.3f} s (RK4 fp64, peak {rk4['mem']}).")


def write_markdown(args, device, speedups, total):
    lines = [
        "# Collapse benchmark",
        "",
        f"Generated by `python benchmarks/collapse.py{' --quick' if args.quick else ''}"
        f"{f' --threads {args.threads}' if args.threads else ''}` on "
        f"{datetime.date.today().isoformat()} in {total:.0f} s.",
        "",
        f"* Hardware: **{hardware_and_load(device)}**; torch {torch.__version__}; device `{device}`.",
        "* Cores: the reference's `TimeLowRankCore` (r = 8, a ≡ 0, MLP width 512) and a `SharedBasisCore`"
        " (R = 64). Grid: the reference's t_i = i/T, T − 1 steps. *dense* = the original code's product of"
        " D × D Euler matrices (fp32); *ours* = `LinearizerScheduler.collapse` (exact structured product).",
        "* Time: wall clock of the whole collapse, including evaluating every A_t through the core's MLPs.",
        "* Memory: " + ("CUDA `max_memory_allocated` above the level before the call."
                        if device.type == "cuda" else
                        "peak growth of the process's resident set, sampled every 2 ms with psutil (a"
                        " lower bound when the allocator reuses cached pages); in brackets the analytic"
                        " bytes of B's factors."),
        "* Error: relative error of B z (4 or 2 random latents) against the same solver stepped in fp64"
        " with each A_t applied directly (never through a collapse); for dense rows over the steps"
        " actually run. `—`: not checked (stepping reference too costly at that size on this machine).",
        "* rank: the rank of B's low-rank part (`B.rank`); `dense` mode = B's factors span all of R^D.",
        "",
        "| section | D | T | core | method | solver | dtype | time (s) | peak memory | rank | error | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        lines.append(f"| {r['section']} | {r['D']} | {r['T']} | {r['core']} | {r['method']} | {r['solver']} |"
                     f" {r['dtype']} | {r['seconds']:.3f} | {r['mem']} | {r['rank']} | {r['err']} | {r['note']} |")
    lines += ["", "## Targets", ""]
    for D, (s32, s64) in speedups.items():
        lines.append(f"* D = {D}: ours is **{s32:.0f}×** (fp32) / **{s64:.0f}×** (fp64) faster than the dense"
                     f" reference on {device.type.upper()}"
                     + (" (dense time extrapolated/estimated as noted in the table)." if device.type != "cuda" else "."))
    if device.type != "cuda":
        lines += [
            "* CPU run: RK4 is shown up to 3·128² (at 3·256² it takes minutes here); the 3·64² dense row"
            " is estimated (one 12288³ product per step), the 3·32² dense row extrapolated from its first"
            " steps, as noted. Wall-clock times on a shared machine vary with its load (recorded above).",
            gpu_targets(os.path.join(os.path.dirname(args.output), "gpu.json")) or
            "* GPU timings (e.g. 3·64² and 3·256² with T = 100 on an H100) are not measured here: this"
            " run used the CPU only. Run `python benchmarks/collapse.py` on a CUDA machine to fill"
            " them in; the work per collapse is two D × R GEMMs (R = rank of B) plus O(T·k·R²) small"
            " products, and memory is O(D·R).",
        ]
    write_text_atomic(args.output, "\n".join(lines) + "\n")
    print(f"\nwrote {os.path.normpath(args.output)} ({total:.0f} s)")


if __name__ == "__main__":
    main()

"""What the benchmark scripts share: the repository's paths, the hardware line of a page, timing, and the
loading of a training run's checkpoints.

The scripts are run as ``python benchmarks/NAME.py``: Python puts ``benchmarks/`` on ``sys.path``, so they
import each other and this module by name (``from common import REPO``). Every script imports this module
before the package, and this module is the one place that puts the repository root on ``sys.path``: the
scripts then measure the checkout's ``diffusers_linearizer`` (and its models), installed or not, and even when
another copy is installed.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, Optional

import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
if REPO not in sys.path:
    sys.path.insert(0, REPO)


#: the pages and their JSON (``docs/``), their pictures, the benchmark models kept in the repository
DOCS = os.path.join(REPO, "docs")
IMAGES = os.path.join(DOCS, "images")
MODELS = os.path.join(BENCH, "models")
#: how the models under ``benchmarks/models`` and the packaged default were trained
TRAINING_RUNS = os.path.join(MODELS, "training_runs.json")
#: the stored teacher pairs of the distillation runs (its ``teacher/`` folder beside it), outside the repository
TEACHER_PAIRS = os.path.join(os.path.dirname(REPO), "shared", "distill", "fmnist32_teacher_pairs.npz")


def child_env(**variables: str) -> Dict[str, str]:
    """The environment of a child process (``python -m diffusers_linearizer…``) that runs the checkout's package,
    as the scripts do: this process's environment with the repository root first on ``PYTHONPATH`` (what was there
    stays after it: packages installed with ``pip --target`` on a borrowed machine), and ``variables``."""
    rest = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=REPO + (os.pathsep + rest if rest else ""), **variables)


# ---------------------------------------------------------------------- hardware
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> str:
    """The device in a few words: the GPU and its CUDA version, or the CPU with its core and torch thread counts."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{cpu_name()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch thread(s)"


def hardware_and_load(device: Optional[torch.device] = None) -> str:
    """The hardware line of the CPU pages (``device``: the CPU unless given): as :func:`hardware`, and on a CPU
    the load average when it is called (at the end of a run: other jobs on a shared machine slow the timings)."""
    if device is not None and device.type == "cuda":
        return hardware(device)
    load = ", load average at the end {:.1f} / {:.1f} / {:.1f} (1/5/15 min)".format(*os.getloadavg())
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads{load}"


def load_average() -> Optional[float]:
    """The 1-minute load average (``None`` where the system has none)."""
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None


# ---------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a clock read after it times the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_params(module: torch.nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def g_parameters(model) -> int:
    """Parameters of a ``LinearizerModel``'s invertible networks: ``g`` once when shared, else ``g_x`` and ``g_y``."""
    nets = {id(net): net for net in (model.network(space)[0] for space in ("x", "y"))}
    return sum(count_params(net) for net in nets.values())


def seeded_noise(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` noise images ``(N, 1, 32, 32)`` drawn from ``seed`` alone, in ``dtype``."""
    return torch.randn((n, 1, 32, 32), generator=torch.Generator().manual_seed(seed)).to(dtype)


def met(ok: bool, bold: bool = False) -> str:
    """A page's verdict on a goal: ``met`` (in bold with ``bold``) or, always in bold, ``not met``."""
    return ("**met**" if bold else "met") if ok else "**not met**"


# ---------------------------------------------------------------------- training runs
def run_checkpoints(run: str) -> Dict[int, str]:
    """``{step: path}`` of the complete checkpoints of a ``diffusers-linearizer train`` run, oldest first."""
    from diffusers_linearizer.training import checkpoint_root, list_checkpoints

    found = dict(list_checkpoints(checkpoint_root(run)))
    if not found:
        raise FileNotFoundError(f"No complete checkpoints under {checkpoint_root(run)}.")
    return found


def trainer_state(checkpoint: str) -> Dict:
    """The ``trainer_state.json`` of a checkpoint folder (steps, seconds, options of the run); ``ValueError``
    naming the file when it is missing or damaged."""
    from diffusers_linearizer.file_checks import read_json_file
    from diffusers_linearizer.training.checkpoints import TRAINER_STATE

    return read_json_file(os.path.join(checkpoint, TRAINER_STATE), "trainer state")


def pipeline_from_checkpoint(ckpt: str, solver: str):
    """A ``LinearizerPipeline`` of a checkpoint's EMA weights (``linearizer_ema/``) with a ``solver`` scheduler."""
    from diffusers_linearizer import LinearizerModel, LinearizerPipeline, LinearizerScheduler

    model = LinearizerModel.from_pretrained(os.path.join(ckpt, "linearizer_ema")).eval()
    return LinearizerPipeline(linearizer=model, scheduler=LinearizerScheduler(solver=solver))


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state, so that the next ``Accelerator`` (the next trainer measured in
    this process) may choose its own mixed precision and device.

    accelerate keeps that state in singletons and refuses an ``Accelerator`` whose mixed precision differs
    from the first one's; it has no public way to clear them (as of accelerate 1.16; its own test helpers call
    this private method). Running every trainer variant in a fresh process would avoid it, at the price of a start-up and
    a cold compile cache for each timed variant; this is the one private call of the benchmarks."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # private: accelerate has no public reset (see above)

"""What a training checkpoint holds, and the checks that make resuming from one as safe as ``from_pretrained``.

A checkpoint folder (``checkpoints/checkpoint-<step>/``) holds

=================================  ====================================================  ==================
file                               what                                                  read with
=================================  ====================================================  ==================
``trainer_state.json``             step counters, batch layout, options of the run       JSON
``linearizer/``                    the model, a ``save_pretrained`` folder                safetensors + JSON
``linearizer_ema/``                the EMA weights as a model (for sampling), optional     safetensors + JSON
``ema_state.safetensors``          the EMA itself: float32 shadow weights, its decay,     safetensors
                                   warm-up flag and update count (metadata)
``optimizer.bin``, ``scheduler.bin``  accelerate's optimizer and LR-scheduler state        ``weights_only=True``
``random_states_<i>.pkl``          accelerate's RNG states, one per process                ``weights_only=True``
``scaler.pt``                      the fp16 gradient scaler (fp16 runs only)              ``weights_only=True``
=================================  ====================================================  ==================

Everything the package owns (the model, the EMA, the counters; the data order is a function of the seed
and the step) is safetensors or JSON written by the package. accelerate's own files are pickles that
accelerate reads with ``torch.load(weights_only=True)``: :func:`check_checkpoint` reads each of them that
way first, so a file that would import or call anything, a truncated file or a missing one is a
``ValueError`` naming it before any training step — accelerate itself skips unreadable RNG states
silently. Files of older checkpoints that accelerate unpickles without that restriction
(``custom_checkpoint_<i>.pkl``, where accelerate kept registered objects) are refused, never read.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict

from ..atomic import write_bytes_atomic
from ..file_checks import check_safetensors, load_plain_torch_file, read_json_file
from .checkpoints import EMA_SUBDIR, MODEL_SUBDIR, TRAINER_STATE

__all__ = ["EMA_STATE", "check_checkpoint", "load_ema_state", "save_ema_state"]

EMA_STATE = "ema_state.safetensors"
WEIGHTS = "diffusion_pytorch_model.safetensors"
#: files accelerate would unpickle with ``weights_only=False``: never read
UNSAFE_FILES = re.compile(r"^custom_checkpoint_\d+\.pkl$")
#: what an RNG state file of accelerate holds
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def save_ema_state(ema, folder: str) -> None:
    """Write ``ema`` (shadow weights and counters) to ``folder/ema_state.safetensors`` in one atomic write."""
    from safetensors.torch import save

    meta = {"decay": repr(ema.decay), "warmup": str(bool(ema.warmup)), "num_updates": str(int(ema.num_updates))}
    tensors = {name: t.detach().contiguous().cpu() for name, t in ema.shadow.items()}
    write_bytes_atomic(os.path.join(folder, EMA_STATE), save(tensors, metadata=meta))


def load_ema_state(ema, folder: str) -> None:
    """Load ``folder/ema_state.safetensors`` into ``ema``; ``ValueError`` naming the file when it does not fit."""
    from safetensors import safe_open

    path = os.path.join(folder, EMA_STATE)
    header = check_safetensors(path)
    names = set(header) - {"__metadata__"}
    if names != set(ema.shadow):
        missing, extra = sorted(set(ema.shadow) - names), sorted(names - set(ema.shadow))
        raise ValueError(f"{path}: the EMA weights do not match the model (missing {missing[:4]}, unexpected "
                         f"{extra[:4]}); the checkpoint belongs to another model configuration.")
    meta = header.get("__metadata__") or {}
    try:
        decay, warmup, updates = float(meta["decay"]), meta["warmup"] == "True", int(meta["num_updates"])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: the EMA metadata (decay, warmup, num_updates) is missing or not numbers.") from None
    with safe_open(path, framework="pt") as f:
        for name in names:
            value = f.get_tensor(name)
            if value.shape != ema.shadow[name].shape:
                raise ValueError(f"{path}: EMA tensor {name!r} has shape {tuple(value.shape)}, the model's "
                                 f"{tuple(ema.shadow[name].shape)}.")
            ema.shadow[name].copy_(value)
    ema.decay, ema.warmup, ema.num_updates = decay, warmup, updates


def check_checkpoint(folder: str, num_processes: int, ema: bool, fp16: bool = False) -> Dict[str, Any]:
    """Check every file of the checkpoint ``folder`` that resuming reads, before any of it is loaded; return
    its trainer state. ``ValueError`` naming the file and what is wrong."""
    if not os.path.isdir(folder):
        raise ValueError(f"--resume_from_checkpoint {folder}: no such checkpoint folder.")
    for name in sorted(os.listdir(folder)):
        if UNSAFE_FILES.match(name):
            raise ValueError(
                f"{os.path.join(folder, name)}: refused: accelerate reads this file with unrestricted unpickling, "
                "which can run code from it, so it is never read. It holds the EMA of a checkpoint written by an "
                "older version; delete it to resume anyway (the EMA then restarts from linearizer_ema/), or resume "
                "from a checkpoint written by this version (ema_state.safetensors)."
            )
    state = read_json_file(os.path.join(folder, TRAINER_STATE), "trainer state")
    step = state.get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{os.path.join(folder, TRAINER_STATE)}: 'global_step' must be a whole number ≥ 0, got {step!r}.")
    read_json_file(os.path.join(folder, MODEL_SUBDIR, "config.json"), "model config")
    check_safetensors(os.path.join(folder, MODEL_SUBDIR, WEIGHTS))
    if ema:
        if not os.path.isfile(os.path.join(folder, EMA_STATE)) and os.path.isdir(os.path.join(folder, EMA_SUBDIR)):
            raise ValueError(f"{os.path.join(folder, EMA_STATE)}: missing; this run keeps an EMA (--no_ema turns it off).")
        check_safetensors(os.path.join(folder, EMA_STATE))
    for name, what in (("optimizer.bin", "optimizer state"), ("scheduler.bin", "LR scheduler state")):
        load_plain_torch_file(os.path.join(folder, name), what)
    for i in range(num_processes):
        path = os.path.join(folder, f"random_states_{i}.pkl")
        states = load_plain_torch_file(path, f"random states of process {i}")
        missing = [k for k in RNG_KEYS if not isinstance(states, dict) or k not in states]
        if missing:
            raise ValueError(f"{path}: the random states of process {i} lack {', '.join(missing)}; the file is damaged.")
    if fp16:
        load_plain_torch_file(os.path.join(folder, "scaler.pt"), "fp16 gradient scaler state")
    return state

"""The layout of a training run on disk, and writes that are never seen half-done.

A run's output folder holds ``checkpoints/checkpoint-<step>/`` folders. Each is written to a hidden
temporary folder (``.tmp-checkpoint-<step>``) and renamed into place when complete, so a folder with the
final name and a ``trainer_state.json`` is always a complete checkpoint; pruned ones are renamed to a
hidden name (``.del-…``) before they are deleted. Files are written with :mod:`diffusers_linearizer.atomic`;
a checkpoint folder is not: every process writes into it, so its temporary name must be the same for all
of them, and it must stay recognisable after a crash (:func:`remove_stale` clears it).
"""

from __future__ import annotations

import os
import re
import shutil
from typing import List, Optional, Tuple

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
MODEL_SUBDIR = "linearizer"
EMA_SUBDIR = "linearizer_ema"
TMP_PREFIX = ".tmp-"
DEL_PREFIX = ".del-"


def checkpoint_root(output_dir: str) -> str:
    """The folder holding a run's checkpoints."""
    return os.path.join(output_dir, CHECKPOINT_DIR)


def checkpoint_path(root: str, step: int) -> str:
    """Where the checkpoint of ``step`` is published under ``root``."""
    return os.path.join(root, f"{CHECKPOINT_PREFIX}{step}")


def temporary_checkpoint_path(root: str, step: int) -> str:
    """The hidden folder the checkpoint of ``step`` is written to before it is published."""
    return os.path.join(root, f"{TMP_PREFIX}{CHECKPOINT_PREFIX}{step}")


def list_checkpoints(root: str) -> List[Tuple[int, str]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first.

    A checkpoint is complete when its directory has the final name ``checkpoint-<step>`` (it is renamed
    there only after everything was written) and holds ``trainer_state.json``.
    """
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = CHECKPOINT_RE.match(name)
        path = os.path.join(root, name)
        if match and os.path.isfile(os.path.join(path, TRAINER_STATE)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> Optional[str]:
    """The newest complete checkpoint of a run, or ``None``."""
    found = list_checkpoints(checkpoint_root(output_dir))
    return found[-1][1] if found else None


def remove_stale(root: str) -> None:
    """Delete leftovers of interrupted saves (``.tmp-*``) and prunes (``.del-*``) under ``root``."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name.startswith((TMP_PREFIX, DEL_PREFIX)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def prune_checkpoints(root: str, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints (0: keep all). A pruned checkpoint is first renamed
    to a hidden name, so a half-deleted one never looks complete."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(root)[:-keep]:
        doomed = os.path.join(root, DEL_PREFIX + os.path.basename(path))
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def register_model_folders(accelerator, ema=None) -> None:
    """Make ``accelerator.save_state`` write the model as ``save_pretrained`` folders, ``linearizer/`` (what
    ``load_state`` reads back) and, with an EMA, ``linearizer_ema/`` (its averaged weights) and
    ``ema_state.safetensors`` (the EMA itself), instead of accelerate's own model file and pickles. The model
    is the prepared object itself or its ``.model``."""

    def inner_model(wrapped):
        inner = accelerator.unwrap_model(wrapped)
        return getattr(inner, "model", inner)

    def save_hook(models, weights, out_dir) -> None:
        if accelerator.is_main_process:
            for wrapped in models:
                inner = inner_model(wrapped)
                inner.save_pretrained(os.path.join(out_dir, MODEL_SUBDIR))
                if ema is not None:
                    from .checkpoint_state import save_ema_state

                    ema.averaged_copy(inner).save_pretrained(os.path.join(out_dir, EMA_SUBDIR))
                    save_ema_state(ema, out_dir)
        while weights:  # the model is saved above; accelerate must not write it a second time
            weights.pop()

    def load_hook(models, in_dir) -> None:
        from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import load_file

        while models:
            inner = inner_model(models.pop())
            state = load_file(os.path.join(in_dir, MODEL_SUBDIR, SAFETENSORS_WEIGHTS_NAME), device="cpu")
            inner.load_state_dict(state, strict=True)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ---------------------------------------------------------------------- publishing a checkpoint
def fsync_path(path: str) -> None:
    """Flush a file, or a directory's entries, to disk (best effort: not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def fsync_tree(path: str) -> None:
    """Flush every file and directory below ``path`` to disk (best effort)."""
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def publish_dir(tmp: str, folder: str) -> None:
    """Make the complete folder ``tmp`` appear as the new ``folder`` with one rename, after flushing it to disk."""
    fsync_tree(tmp)
    os.replace(tmp, folder)
    fsync_path(os.path.dirname(os.path.abspath(folder)))

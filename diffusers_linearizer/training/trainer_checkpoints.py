"""The checkpoint methods of :class:`~.trainer.Trainer`: resuming a run and writing its checkpoints.

A checkpoint is written by every process into a hidden temporary folder and published with one rename
(:mod:`.checkpoints`); resuming checks every file it will read first (:func:`~.checkpoint_state.check_checkpoint`)
and loads the EMA the package saved (:func:`~.checkpoint_state.load_ema_state`). Each method can be
overridden in a subclass (the tests kill a run inside :meth:`CheckpointingMixin.publish_checkpoint`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict

from ..atomic import write_json_atomic
from .checkpoint_state import check_checkpoint, load_ema_state
from .checkpoints import (
    TRAINER_STATE, checkpoint_path, latest_checkpoint, prune_checkpoints, publish_dir, temporary_checkpoint_path,
)

__all__ = ["CheckpointingMixin"]


class CheckpointingMixin:
    """Resume and checkpoint methods; they use the trainer's ``args``, ``accelerator``, ``ema``, ``ckpt_root``,
    ``output_dir``, ``global_batch``, ``num_processes``, ``main_process``, ``say`` and ``clock``."""

    def resume(self) -> None:
        """With ``--resume_from_checkpoint``, load ``latest`` (if any) or the given checkpoint."""
        args = self.args
        if not args.resume_from_checkpoint:
            return
        if args.resume_from_checkpoint == "latest":
            path = latest_checkpoint(self.output_dir)
            if path is None:
                self.say(f"--resume_from_checkpoint latest: no checkpoint in {self.ckpt_root}; starting from scratch.")
                return
        else:
            path = os.path.abspath(args.resume_from_checkpoint)
        # every file is read as data (safetensors, JSON, weights_only pickles) and checked before anything loads
        state = check_checkpoint(path, self.num_processes, self.ema is not None, self.accelerator.scaler is not None)
        if state.get("gradient_accumulation_steps", args.gradient_accumulation_steps) != args.gradient_accumulation_steps or \
                state.get("global_batch_size", self.global_batch) != self.global_batch:
            self.say("WARNING: resuming with a different global batch or accumulation: the data order will not match "
                     "the interrupted run.")
        self.accelerator.load_state(path)
        if self.ema is not None:
            load_ema_state(self.ema, path)
        self.global_step = int(state["global_step"])
        self.micro_step = self.global_step * args.gradient_accumulation_steps
        self.say(f"Resumed from {path} at step {self.global_step}.")

    def trainer_state(self, step: int) -> Dict[str, Any]:
        """What ``trainer_state.json`` records next to accelerate's state."""
        args = self.args
        return {
            "global_step": step, "micro_step": step * args.gradient_accumulation_steps,
            "global_batch_size": self.global_batch, "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_processes": self.num_processes, "objective": args.objective, "seed": args.seed, "time": time.time(),
            "train_seconds_this_run": round(self.clock() - self.t_start, 3),
        }

    def save_checkpoint(self, step: int) -> None:
        """Checkpoint ``step`` (all processes take part): :meth:`write_checkpoint` to a hidden temporary
        folder, then :meth:`publish_checkpoint` on the main process. Nothing if it exists already (e.g.
        the last periodic checkpoint is the final step)."""
        final = checkpoint_path(self.ckpt_root, step)
        if os.path.isdir(final):
            return
        tmp = temporary_checkpoint_path(self.ckpt_root, step)
        self.write_checkpoint(tmp, step)
        if self.main_process:
            self.publish_checkpoint(tmp, final)
        self.accelerator.wait_for_everyone()

    def write_checkpoint(self, folder: str, step: int) -> None:
        """``accelerator.save_state(folder)`` (optimizer, LR scheduler, RNG states and, through the save hook,
        the ``save_pretrained`` model folders and the EMA's state), then ``trainer_state.json``."""
        import shutil

        if self.main_process:
            shutil.rmtree(folder, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(folder)
        self.accelerator.wait_for_everyone()
        if self.main_process:
            write_json_atomic(os.path.join(folder, TRAINER_STATE), self.trainer_state(step))

    def publish_checkpoint(self, tmp: str, final: str) -> None:
        """(Main process.) Rename the complete checkpoint ``tmp`` to its final name, then prune the oldest
        beyond ``--checkpoints_total_limit``. Until the rename, ``latest`` is the previous checkpoint."""
        publish_dir(tmp, final)
        prune_checkpoints(self.ckpt_root, self.args.checkpoints_total_limit)

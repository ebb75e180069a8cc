"""Train a Linearizer with 🤗 accelerate: ``diffusers-linearizer train`` / ``python -m diffusers_linearizer.training.train``.

Examples::

    # Fashion-MNIST (Debian package dataset-fashion-mnist), 32×32, one process
    diffusers-linearizer train --output_dir runs/fmnist --max_train_steps 20000 --train_batch_size 64

    # any folder of images, two GPUs, bf16 autocast, gradient accumulation
    accelerate launch --multi_gpu --num_processes 2 -m diffusers_linearizer.training.train \\
        --train_data_dir ./faces --resolution 64 --channels 3 --mixed_precision bf16 \\
        --gradient_accumulation_steps 2 --output_dir runs/faces

    # two CPU processes (gloo); on a machine without GPUs `--multi_gpu` starts the processes and the
    # trainer joins them into one CPU process group (`accelerate launch --cpu` alone starts only one)
    accelerate launch --multi_gpu --num_processes 2 -m diffusers_linearizer.training.train --output_dir runs/cpu

    # continue after an interruption
    diffusers-linearizer train --output_dir runs/fmnist --max_train_steps 20000 --resume_from_checkpoint latest

What it does
------------
* The loss is :class:`~diffusers_linearizer.training.objective.LinearizerObjective` (``--objective fast``,
  the default, the paper's ``reference`` with LPIPS replaced by a pixel MSE or MSE+SSIM, ``distill``,
  ``likelihood``, or a weighted mix such as ``distill,likelihood:0.02``).
* Trainable weights stay in float32; ``--mixed_precision fp16|bf16`` only autocasts the forward (the
  collapse of ``B`` stays in float64 and ``g``'s log-determinants in float32).
* On a GPU a step waits for nothing on the host: the dataset is held on the device and each step's noise
  is drawn there (``--device_inputs``, on by default except on the CPU), AdamW runs fused
  (``--fused_optimizer``), and losses are read only every ``--log_every`` steps. ``--compile`` runs the
  flow-matching objective through ``torch.compile`` (one graph for every step). ``docs/gpu.md`` has the
  measurements (``benchmarks/gpu.py``).
* An exponential moving average (EMA) of the weights is kept (``--ema_decay``; ``--no_ema`` turns it
  off); samples and the final pipeline use the EMA weights.
* Every ``--checkpointing_steps`` optimizer steps, ``accelerator.save_state`` writes
  ``OUTPUT/checkpoints/checkpoint-<step>``: optimizer, LR scheduler, RNG states, EMA, ``trainer_state.json``
  and two ``save_pretrained`` model directories, ``linearizer/`` (the trained weights, what a resume
  loads) and ``linearizer_ema/``. A checkpoint is written to a hidden temporary directory and renamed
  into place when complete, so ``latest`` is always a complete one; the oldest are pruned beyond
  ``--checkpoints_total_limit``.
* ``--max_train_seconds`` is a wall-clock budget: training stops at the first step past it (every process
  at the same step) and saves as at the end of a full run; checkpoints record the seconds trained.
* ``--resume_from_checkpoint latest`` (or a path) continues exactly: the data order depends only on
  ``(seed, epoch)`` and consumed batches are skipped, and every step's noise comes from a generator
  seeded by ``(seed, step)`` (on the training device with ``--device_inputs``: reproducible on the same
  kind of device), so on CPU a resumed run ends with the same weights as an uninterrupted one. The noise of a step is drawn for the whole global batch and sliced per process and
  micro-batch, so P processes × A accumulation steps × batch B train like one process with batch
  P·A·B (up to floating-point summation order).
* ``--conditioning class|text`` trains a conditional core ``A(t, c)`` (labels, class sub-folders, or the captions
  of ``metadata.jsonl`` with ``--text_encoder``) with ``--condition_dropout`` for classifier-free guidance
  (:mod:`.conditions`).
* Every ``--sample_steps`` steps a grid of one-step samples goes to ``OUTPUT/samples/`` (and to
  TensorBoard with ``--report_to tensorboard``).
* At the end, ``LinearizerPipeline(linearizer=<EMA model>, scheduler=LinearizerScheduler())`` is saved
  to ``OUTPUT`` with ``save_pretrained`` (model card included), loadable with
  ``LinearizerPipeline.from_pretrained(OUTPUT)`` and ``diffusers-linearizer generate --model OUTPUT``.

Where it is
-----------
:mod:`.arguments` (the options), :mod:`.setup` (accelerator, data, model, optimizer from the options),
:mod:`.trainer` (:class:`~.trainer.Trainer`: one method per part of a step, and the loop),
:mod:`.device_inputs` (the dataset and the step noise on the device),
:mod:`.checkpoints` (checkpoint folders), :mod:`.ema`, :mod:`.outputs` (sample grids,
the final pipeline). This module is the command-line entry point and keeps the names other code imports.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from ..atomic import write_json_atomic
from .arguments import MODEL_OPTIONS, add_arguments, build_parser, check_args, parse_args
from .checkpoints import (
    CHECKPOINT_DIR, CHECKPOINT_PREFIX, CHECKPOINT_RE, EMA_SUBDIR, MODEL_SUBDIR, TRAINER_STATE, checkpoint_root,
    latest_checkpoint, list_checkpoints, prune_checkpoints, remove_stale,
)
from .ema import EMA
from .outputs import SAMPLES_DIR, generate_samples, save_final
from .setup import build_model
from .trainer import Trainer

__all__ = [
    "MODEL_OPTIONS", "add_arguments", "build_parser", "check_args", "parse_args", "CHECKPOINT_DIR", "CHECKPOINT_PREFIX",
    "CHECKPOINT_RE", "EMA_SUBDIR", "MODEL_SUBDIR", "TRAINER_STATE", "checkpoint_root", "latest_checkpoint",
    "list_checkpoints", "prune_checkpoints", "remove_stale", "write_json_atomic", "EMA", "SAMPLES_DIR",
    "generate_samples", "save_final", "build_model", "Trainer", "main", "cli_main",
]


def main(args=None) -> int:
    """Run training; ``args`` is an ``argparse.Namespace`` from :func:`add_arguments` or an argv list."""
    if args is None or isinstance(args, (list, tuple)):
        args = parse_args(args)
    check_args(args)
    return Trainer(args).train()


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m diffusers_linearizer.training.train``: like :func:`main`, with errors as one message."""
    args = parse_args(argv)
    try:
        return main(args)
    except (ValueError, OSError) as err:
        print(f"diffusers-linearizer train: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli_main())

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
  the default, or the paper's ``reference``; LPIPS replaced by a pixel MSE or MSE+SSIM).
* Trainable weights stay in float32; ``--mixed_precision fp16|bf16`` only autocasts the forward.
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
  seeded by ``(seed, step)``, so on CPU a resumed run ends with the same weights as an uninterrupted
  one. The noise of a step is drawn for the whole global batch and sliced per process and
  micro-batch, so P processes × A accumulation steps × batch B train like one process with batch
  P·A·B (up to floating-point summation order).
* Every ``--sample_steps`` steps a grid of one-step samples goes to ``OUTPUT/samples/`` (and to
  TensorBoard with ``--report_to tensorboard``).
* At the end, ``LinearizerPipeline(linearizer=<EMA model>, scheduler=LinearizerScheduler())`` is saved
  to ``OUTPUT`` with ``save_pretrained`` (model card included), loadable with
  ``LinearizerPipeline.from_pretrained(OUTPUT)`` and ``diffusers-linearizer generate --model OUTPUT``.

Test hooks (environment variables, used by ``tests/test_training.py``):
``DIFFUSERS_LINEARIZER_TEST_STEP_SLEEP`` (seconds to sleep after each optimizer step) and
``DIFFUSERS_LINEARIZER_TEST_KILL_IN_SAVE`` (a step number: the process SIGKILLs itself after writing
that step's checkpoint to its temporary directory, before publishing it).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from ..atomic import write_json_atomic  # noqa: F401  (one atomic-write helper for the package; importable from here)
from ..image_grid import make_grid

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
MODEL_SUBDIR = "linearizer"
EMA_SUBDIR = "linearizer_ema"
SAMPLES_DIR = "samples"
ENV_STEP_SLEEP = "DIFFUSERS_LINEARIZER_TEST_STEP_SLEEP"
ENV_KILL_IN_SAVE = "DIFFUSERS_LINEARIZER_TEST_KILL_IN_SAVE"

# Model options exposed on the command line (None = LinearizerModel's default or --model_config's value).
MODEL_OPTIONS = {
    "num_blocks": (int, "flow blocks per invertible network"),
    "conditioner_type": (str, "coupling conditioner: conv or unet"),
    "conditioner_channels": (int, "conditioner width"),
    "conditioner_layers": (int, "conditioner depth (residual blocks)"),
    "core_type": (str, "linear core: dense, lowrank, time_lowrank or shared_basis"),
    "core_rank": (int, "rank r (low-rank cores) or R (shared basis)"),
    "core_hidden_dim": (int, "MLP width of time-dependent cores"),
    "core_embedding_dim": (int, "sinusoidal time-embedding size of the core"),
    "clamp_value": (float, "bound of the couplings' log-scale"),
}


# ---------------------------------------------------------------------- arguments
def _flag(name: str) -> List[str]:
    """``--name_with_underscores`` and its ``--dashed-name`` alias."""
    dashed = name.replace("_", "-")
    return [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the trainer's options to ``parser`` (also used by ``diffusers-linearizer train``)."""
    from ..schedulers import SOLVERS
    from .data import FASHION_MNIST_DIR
    from .objective import OBJECTIVES, PIXEL_LOSSES

    d = parser.add_argument_group("data")
    d.add_argument(*_flag("train_data_dir"), default=None,
                   help="A folder of images (searched recursively) to train on instead of Fashion-MNIST.")
    d.add_argument(*_flag("data_dir"), default=FASHION_MNIST_DIR,
                   help=f"Folder with the Fashion-MNIST idx files. Default: {FASHION_MNIST_DIR} "
                   "(apt-get install dataset-fashion-mnist).")
    d.add_argument("--resolution", type=int, default=32, help="Image side H = W. Default: 32.")
    d.add_argument("--channels", type=int, default=None, choices=(1, 3),
                   help="Image channels (Fashion-MNIST: 1; image folders: default 3).")
    d.add_argument(*_flag("fashion_mnist_mode"), choices=("pad", "resize"), default="pad",
                   help="28×28 → resolution: zero-pad (default) or resize (the reference resizes MNIST).")
    d.add_argument(*_flag("max_train_samples"), type=int, default=None, help="Use only the first N images.")
    d.add_argument(*_flag("dataloader_num_workers"), type=int, default=0, help="DataLoader worker processes.")
    d.add_argument(*_flag("random_flip"), action="store_true", help="Random horizontal flips (seeded per step).")
    d.add_argument("--conditioning", choices=("class", "text"), default=None,
                   help="Train a conditional core: class (Fashion-MNIST labels, or one sub-folder per class in "
                        "--train_data_dir) or text (captions of --train_data_dir/metadata.jsonl). Default: unconditional.")
    d.add_argument(*_flag("caption_column"), default="text", help="Caption key of metadata.jsonl. Default: text.")
    d.add_argument(*_flag("text_encoder"), default=None,
                   help="Folder of a CLIP-style text model (text_encoder/ + tokenizer/, or both in one), for --conditioning text.")
    d.add_argument(*_flag("condition_dropout"), type=float, default=0.1,
                   help="Probability of replacing a condition by ∅ (null class / empty prompt), for guidance. Default: 0.1.")
    d.add_argument(*_flag("init_weights"), default=None,
                   help="Start from the tensors of this saved model or pipeline that match by name and shape "
                        "(e.g. g and the core of an unconditional model for a conditional one).")
    d.add_argument(*_flag("teacher_pairs"), default=None,
                   help="A teacher-pairs .npz (`diffusers-linearizer distill-data`): train on (noise, teacher sample) "
                   "pairs instead of the images; required by --objective distill.")

    m = parser.add_argument_group("model")
    m.add_argument(*_flag("pretrained_model"), default=None,
                   help="Start from a saved LinearizerModel or pipeline directory (its linearizer/ subfolder).")
    m.add_argument(*_flag("model_config"), default=None,
                   help="A JSON file with LinearizerModel config values (the options below override it).")
    for name, (typ, text) in MODEL_OPTIONS.items():
        m.add_argument(*_flag(name), type=typ, default=None, help=f"{text.capitalize()}. Default: the model's.")

    o = parser.add_argument_group("objective")
    o.add_argument("--objective", default="fast",
                   help=f"One of {', '.join(OBJECTIVES)} or a weighted mix such as 'distill,fast' or "
                   "'distill:1,likelihood:0.02'. fast (default): latent flow matching with one batched forward and "
                   "one batched inverse of g; reference: the paper's five passes of g; distill: the one-step output "
                   "regresses a teacher's samples (--teacher_pairs) and the inverse its noise; likelihood: exact "
                   "bits/dim of the one-step generator. distill and likelihood train through the collapsed B of "
                   "--sample_inference_steps and --solver.")
    o.add_argument(*_flag("noise_level"), type=float, default=0.3, help="σ of the latent perturbations. Default: 0.3.")
    o.add_argument(*_flag("pixel_loss"), choices=PIXEL_LOSSES, default="mse",
                   help="Pixel-space distance replacing the paper's LPIPS. Default: mse.")
    o.add_argument(*_flag("ssim_weight"), type=float, default=0.1, help="Weight of 1 − SSIM in mse+ssim. Default: 0.1.")
    for term in ("latent_flow", "noise_reconstruction", "image_reconstruction", "prediction", "distill_noise"):
        o.add_argument(*_flag(f"weight_{term}"), type=float, default=1.0, help=f"Weight of the {term} term. Default: 1.")

    t = parser.add_argument_group("optimisation")
    t.add_argument(*_flag("train_batch_size"), type=int, default=64, help="Batch size per process. Default: 64.")
    t.add_argument(*_flag("gradient_accumulation_steps"), type=int, default=1, help="Micro-batches per optimizer step.")
    t.add_argument(*_flag("max_train_steps"), type=int, default=None,
                   help="Optimizer steps to train (overrides --num_train_epochs).")
    t.add_argument(*_flag("num_train_epochs"), type=int, default=100, help="Epochs, if --max_train_steps is not given.")
    t.add_argument(*_flag("max_train_seconds"), type=float, default=None,
                   help="Also stop (and save as usual) once this run has trained for this many seconds of wall-clock "
                        "time: a time budget, e.g. to compare models at equal training time.")
    t.add_argument(*_flag("learning_rate"), type=float, default=1e-4, help="Adam learning rate. Default: 1e-4 (the paper's).")
    t.add_argument(*_flag("lr_scheduler"), default="constant",
                   help="diffusers.optimization scheduler: constant, constant_with_warmup, linear, cosine, ...")
    t.add_argument(*_flag("lr_warmup_steps"), type=int, default=0, help="Warm-up optimizer steps.")
    t.add_argument(*_flag("adam_beta1"), type=float, default=0.9)
    t.add_argument(*_flag("adam_beta2"), type=float, default=0.999)
    t.add_argument(*_flag("adam_weight_decay"), type=float, default=0.0, help="AdamW weight decay. Default: 0 (Adam).")
    t.add_argument(*_flag("adam_epsilon"), type=float, default=1e-8)
    t.add_argument(*_flag("max_grad_norm"), type=float, default=1.0, help="Gradient clipping (0: off). Default: 1.")
    t.add_argument(*_flag("mixed_precision"), choices=("no", "fp16", "bf16"), default=None,
                   help="Autocast the forward (weights stay float32). Default: accelerate's config.")
    t.add_argument(*_flag("allow_tf32"), action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")
    t.add_argument("--seed", type=int, default=0, help="Seed of the weights, the data order and the noise. Default: 0.")
    t.add_argument(*_flag("init_batch_size"), type=int, default=256,
                   help="Images for the data-dependent ActNorm initialisation. Default: 256.")
    t.add_argument("--cpu", action="store_true", help="Train on the CPU even if a GPU is available.")

    e = parser.add_argument_group("EMA")
    e.add_argument(*_flag("ema_decay"), type=float, default=0.999, help="EMA decay. Default: 0.999.")
    e.add_argument(*_flag("no_ema_warmup"), action="store_true",
                   help="Use the constant decay from the start (default: min(decay, (1 + n)/(10 + n))).")
    e.add_argument(*_flag("no_ema"), action="store_true", help="Do not keep an EMA; save the trained weights.")

    c = parser.add_argument_group("checkpoints, samples and logging")
    c.add_argument(*_flag("output_dir"), default="linearizer-model",
                   help="Where the pipeline, checkpoints/ and samples/ go. Default: linearizer-model.")
    c.add_argument(*_flag("checkpointing_steps"), type=int, default=500,
                   help="Save a checkpoint every N optimizer steps (0: only at the end). Default: 500.")
    c.add_argument(*_flag("checkpoints_total_limit"), type=int, default=3,
                   help="Keep at most this many checkpoints (0: keep all). Default: 3.")
    c.add_argument(*_flag("resume_from_checkpoint"), default=None,
                   help="'latest' (the newest complete checkpoint in OUTPUT/checkpoints, if any) or a checkpoint path.")
    c.add_argument(*_flag("sample_steps"), type=int, default=500,
                   help="Write a grid of one-step samples every N steps (0: only at the end). Default: 500.")
    c.add_argument(*_flag("num_samples"), type=int, default=16, help="Images per sample grid. Default: 16.")
    c.add_argument(*_flag("sample_inference_steps"), type=int, default=100,
                   help="Grid points T of the collapsed sampler run. Default: 100.")
    c.add_argument(*_flag("solver"), choices=SOLVERS, default="euler",
                   help="Solver of the saved scheduler and of the samples. Default: euler.")
    c.add_argument(*_flag("no_final_samples"), action="store_true", help="Skip the sample grid at the end.")
    c.add_argument(*_flag("report_to"), choices=("none", "tensorboard"), default="none",
                   help="Also log to TensorBoard (needs the tensorboard package). Default: none.")
    c.add_argument(*_flag("logging_dir"), default="logs", help="TensorBoard folder, relative to OUTPUT. Default: logs.")
    c.add_argument(*_flag("log_every"), type=int, default=10, help="Log averaged losses every N steps. Default: 10.")
    c.add_argument(*_flag("no_progress"), action="store_true", help="Hide the progress bar.")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-linearizer train",
        description="Train a Linearizer (f(x) = g_y^-1(A g_x(x))) as a flow-matching model in latent space with "
        "accelerate (single process, several GPUs or CPU processes via `accelerate launch`).",
    )
    return add_arguments(parser)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """``ValueError`` for inconsistent options (before anything is loaded)."""
    positive = ("train_batch_size", "gradient_accumulation_steps", "resolution", "num_samples", "init_batch_size", "log_every")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be ≥ 1, got {getattr(args, name)}.")
    for name in ("checkpointing_steps", "checkpoints_total_limit", "sample_steps", "lr_warmup_steps"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be ≥ 0, got {getattr(args, name)}.")
    if args.max_train_steps is not None and args.max_train_steps < 0:
        raise ValueError(f"--max_train_steps must be ≥ 0, got {args.max_train_steps}.")
    if args.max_train_steps is None and args.num_train_epochs < 1:
        raise ValueError(f"--num_train_epochs must be ≥ 1, got {args.num_train_epochs}.")
    if args.max_train_seconds is not None and not args.max_train_seconds > 0:
        raise ValueError(f"--max_train_seconds must be > 0, got {args.max_train_seconds}.")
    if args.sample_inference_steps < 2:
        raise ValueError("--sample_inference_steps must be ≥ 2.")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema_decay must be in [0, 1), got {args.ema_decay}.")
    if args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate}.")
    from .objective import parse_objective

    mix = parse_objective(args.objective)
    if "distill" in mix and not args.teacher_pairs:
        raise ValueError("--objective distill needs --teacher_pairs FILE (make one with `diffusers-linearizer distill-data`).")
    if args.teacher_pairs and args.random_flip:
        raise ValueError("--random_flip would break teacher pairs (a flipped teacher sample is not the sample of its noise).")
    if args.teacher_pairs and args.train_data_dir:
        raise ValueError("Give either --teacher_pairs or --train_data_dir, not both.")
    if not 0.0 <= args.condition_dropout < 1.0:
        raise ValueError(f"--condition_dropout must be in [0, 1), got {args.condition_dropout}.")
    if args.conditioning and (args.teacher_pairs or set(mix) - {"fast", "reference"}):
        raise ValueError("--conditioning trains with --objective fast or reference (no teacher pairs) for now.")
    if args.conditioning == "text" and not args.text_encoder:
        raise ValueError("--conditioning text needs --text_encoder DIR (a CLIP-style text model and its tokenizer).")
    if args.text_encoder and args.conditioning != "text":
        raise ValueError("--text_encoder only applies with --conditioning text.")
    if args.report_to == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise ValueError("--report_to tensorboard needs TensorBoard: pip install tensorboard.")


# ---------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's floating-point parameters (kept in float32).

    ``shadow ← d·shadow + (1 − d)·param`` after every optimizer step with ``d = decay`` or, with
    ``warmup``, ``min(decay, (1 + n)/(10 + n))`` after ``n`` updates. Buffers are not averaged: a copy of
    the model made by :meth:`copy_to` takes them from the live model. ``state_dict``/``load_state_dict``
    make it a checkpointable object for ``accelerator.register_for_checkpointing``.
    """

    def __init__(self, model, decay: float = 0.999, warmup: bool = True):
        import torch

        self.decay, self.warmup = float(decay), bool(warmup)
        self.num_updates = 0
        self.shadow: Dict[str, "torch.Tensor"] = {
            name: p.detach().to(torch.float32).clone() for name, p in model.named_parameters() if p.is_floating_point()
        }

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self, model) -> None:
        import torch

        d = self.current_decay()
        with torch.no_grad():
            params = dict(model.named_parameters())
            names = list(self.shadow)
            shadows = [self.shadow[n] for n in names]
            values = [params[n].detach().to(torch.float32) for n in names]
            torch._foreach_lerp_(shadows, values, 1.0 - d)
        self.num_updates += 1

    def copy_to(self, model) -> None:
        """Write the averaged weights into ``model``'s parameters (cast to their dtype)."""
        import torch

        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.shadow:
                    p.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))

    def averaged_copy(self, model):
        """A deep copy of ``model`` holding the averaged weights."""
        twin = copy.deepcopy(model)
        self.copy_to(twin)
        return twin

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match the model's parameters.")
        self.decay, self.warmup, self.num_updates = float(state["decay"]), bool(state["warmup"]), int(state["num_updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


# ---------------------------------------------------------------------- checkpoints
def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, CHECKPOINT_DIR)


def list_checkpoints(root: str) -> List[tuple]:
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


def _fsync_tree(path: str) -> None:
    """Flush every file and directory below ``path`` to disk (best effort)."""
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove_stale(root: str) -> None:
    """Delete leftovers of interrupted saves (``.tmp-*``) and prunes (``.del-*``) under ``root``."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name.startswith((".tmp-", ".del-")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def prune_checkpoints(root: str, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints (0: keep all). A pruned checkpoint is first renamed
    to a hidden name, so a half-deleted one never looks complete."""
    if keep <= 0:
        return
    for step, path in list_checkpoints(root)[:-keep]:
        doomed = os.path.join(root, f".del-{os.path.basename(path)}")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


# ---------------------------------------------------------------------- images
def generate_samples(model, num: int, num_inference_steps: int, solver: str, seed: int, **condition):
    """One-step samples ``(num, C, H, W)`` from ``model`` (noise of image i from seed + i).

    Uses ``LinearizerPipeline`` when available, else the scheduler's ``collapse`` directly. Raises
    ``ImportError`` when neither exists.
    """
    import torch

    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(num)]
    try:
        from ..pipelines import LinearizerPipeline
        from ..schedulers import LinearizerScheduler
    except ImportError:
        LinearizerPipeline = None
    if LinearizerPipeline is not None:
        pipe = LinearizerPipeline(linearizer=model, scheduler=LinearizerScheduler(solver=solver))
        pipe.set_progress_bar_config(disable=True)
        return pipe(batch_size=num, num_inference_steps=num_inference_steps, generator=gens, output_type="pt",
                    **condition).images
    from ..schedulers import LinearizerScheduler  # noqa: F811  (ImportError propagates: nothing to sample with)

    scheduler = LinearizerScheduler(solver=solver)
    c, h, w = model.sample_shape
    param = next(model.parameters())
    noise = torch.stack([torch.randn((c, h, w), generator=g) for g in gens]).to(param.device, param.dtype)
    with torch.no_grad():
        z0 = model.encode(noise, "y")
        B = scheduler.collapse(model.core, num_inference_steps)
        z = B.apply(z0.flatten(1).to(B.dtype)).to(z0.dtype).view_as(z0)
        return model.decode(z, "x").clamp(0, 1)


# ---------------------------------------------------------------------- model
def build_model(args, in_channels: int, condition_config: Optional[Dict[str, Any]] = None):
    """A fresh ``LinearizerModel`` from ``--model_config``, the model options and the data's conditions
    (``condition_config``; ``--init_weights`` copies matching tensors in), or a pretrained one."""
    from ..models import LinearizerModel

    if args.pretrained_model:
        path = args.pretrained_model
        if os.path.isdir(os.path.join(path, MODEL_SUBDIR)):
            path = os.path.join(path, MODEL_SUBDIR)
        model = LinearizerModel.from_pretrained(path)
        if model.sample_shape != (in_channels, args.resolution, args.resolution):
            raise ValueError(
                f"--pretrained_model {args.pretrained_model} is for {model.sample_shape} images, the data are "
                f"{(in_channels, args.resolution, args.resolution)}."
            )
        return model
    config: Dict[str, Any] = {}
    if args.model_config:
        with open(args.model_config, encoding="utf-8") as f:
            config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    for name in MODEL_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            config[name] = value
    for key, value in (("sample_size", args.resolution), ("in_channels", in_channels)):
        if key in config and config[key] != value:
            raise ValueError(f"--model_config has {key}={config[key]} but the data need {value}.")
        config[key] = value
    config.update(condition_config or {})
    model = LinearizerModel(**config)
    if args.init_weights:
        from .conditions import init_from

        init_from(model, args.init_weights)
    return model


# ---------------------------------------------------------------------- main
def _no_accelerator_device() -> bool:
    import torch

    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        return not acc.is_available()
    return not torch.cuda.is_available()


def main(args=None) -> int:
    """Run training; ``args`` is an ``argparse.Namespace`` from :func:`add_arguments` or an argv list."""
    if args is None or isinstance(args, (list, tuple)):
        args = parse_args(args)
    check_args(args)

    import torch
    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .data import EpochShuffleSampler, build_dataset, derive_seed, stack_images
    from .distill import TeacherPairs, stack_pairs
    from .conditions import drop_conditions, encode_captions, stack_conditioned
    from .objective import LinearizerObjective, draw_step_noise, initialize_actnorm, parse_objective

    output_dir = os.path.abspath(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        log_with="tensorboard" if args.report_to == "tensorboard" else None,
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=os.path.join(output_dir, args.logging_dir)),
        # Without a GPU, processes started by `accelerate launch` only form one (gloo) group with cpu=True.
        cpu=args.cpu or _no_accelerator_device(),
    )
    logger = get_logger("diffusers_linearizer.train")
    main_process = accelerator.is_main_process
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if main_process else (lambda msg: None)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    num_processes, rank = accelerator.num_processes, accelerator.process_index
    ckpt_root = checkpoint_root(output_dir)

    # -- data (first: a missing dataset fails before anything is written)
    text = None  # (tokenizer, frozen text encoder) with --conditioning text
    if args.teacher_pairs:
        dataset = TeacherPairs(args.teacher_pairs, max_samples=args.max_train_samples)
        if dataset.resolution != args.resolution or dataset.channels != (args.channels or dataset.channels):
            raise ValueError(f"{args.teacher_pairs} holds {dataset.channels}×{dataset.resolution}×{dataset.resolution} "
                             f"images; --resolution {args.resolution} / --channels {args.channels} ask for others.")
    elif args.conditioning:
        from .conditions import build_conditional_dataset, load_text_encoder, pooled_dim

        dataset, condition_config = build_conditional_dataset(args)
        if args.conditioning == "text":
            tokenizer, encoder = load_text_encoder(args.text_encoder)
            text = (tokenizer, encoder.to(accelerator.device))
            condition_config["condition_dim"] = pooled_dim(encoder)
    else:
        dataset = build_dataset(
            args.train_data_dir, args.data_dir, args.resolution, args.channels, args.fashion_mnist_mode,
            args.max_train_samples,
        )
    uses_likelihood = "likelihood" in parse_objective(args.objective)
    if main_process:
        os.makedirs(ckpt_root, exist_ok=True)
        remove_stale(ckpt_root)
    accelerator.wait_for_everyone()
    channels = dataset.channels
    shape = (channels, args.resolution, args.resolution)
    global_batch = args.train_batch_size * num_processes
    if len(dataset) < global_batch:
        raise ValueError(
            f"The dataset has {len(dataset)} images, fewer than one global batch "
            f"({args.train_batch_size} per process × {num_processes} processes)."
        )
    sampler = EpochShuffleSampler(len(dataset), seed=args.seed)
    loader = DataLoader(
        dataset, batch_size=args.train_batch_size, sampler=sampler, drop_last=True,
        collate_fn=stack_pairs if args.teacher_pairs else stack_conditioned if args.conditioning else stack_images,
        num_workers=args.dataloader_num_workers, pin_memory=accelerator.device.type == "cuda",
    )

    # -- model (same initial weights in every process), ActNorm init on a fixed batch, EMA
    set_seed(args.seed)
    model = build_model(args, channels, condition_config if args.conditioning else None).to(accelerator.device)
    model.train()
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.to(torch.float32)  # float32 master weights; --mixed_precision only autocasts
    init_gen = torch.Generator().manual_seed(derive_seed(args.seed, "actnorm-init"))
    init_idx = torch.randperm(len(dataset), generator=init_gen)[: min(len(dataset), args.init_batch_size)].tolist()
    init_images = stack_images([dataset[i] for i in init_idx])
    init_noise = torch.randn(init_images.shape, generator=init_gen)
    initialize_actnorm(model, init_images.to(accelerator.device), init_noise.to(accelerator.device))
    ema = None if args.no_ema else EMA(model, args.ema_decay, warmup=not args.no_ema_warmup)

    objective = LinearizerObjective(
        model, args.objective, noise_level=args.noise_level, pixel_loss=args.pixel_loss, ssim_weight=args.ssim_weight,
        weights={t: getattr(args, f"weight_{t}") for t in
                 ("latent_flow", "noise_reconstruction", "image_reconstruction", "prediction", "distill_noise")},
        num_inference_steps=args.sample_inference_steps, solver=args.solver,
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    steps_per_epoch_est = max(1, math.ceil((len(dataset) // global_batch) / args.gradient_accumulation_steps))
    max_train_steps = args.max_train_steps if args.max_train_steps is not None else args.num_train_epochs * steps_per_epoch_est
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=max(1, max_train_steps) * num_processes,
    )
    objective, optimizer, loader, lr_scheduler = accelerator.prepare(objective, optimizer, loader, lr_scheduler)
    micro_per_epoch = len(loader)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    def unwrapped():
        return accelerator.unwrap_model(objective).model

    # -- checkpoint hooks: each checkpoint holds save_pretrained directories of the model (and its EMA)
    def save_hook(models, weights, out_dir):
        if accelerator.is_main_process:
            for wrapped in models:
                inner = accelerator.unwrap_model(wrapped)
                inner = getattr(inner, "model", inner)
                inner.save_pretrained(os.path.join(out_dir, MODEL_SUBDIR))
                if ema is not None:
                    ema.averaged_copy(inner).save_pretrained(os.path.join(out_dir, EMA_SUBDIR))
        while weights:  # the model is saved above; accelerate must not write it a second time
            weights.pop()

    def load_hook(models, in_dir):
        from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import load_file

        while models:
            inner = accelerator.unwrap_model(models.pop())
            inner = getattr(inner, "model", inner)
            state = load_file(os.path.join(in_dir, MODEL_SUBDIR, SAFETENSORS_WEIGHTS_NAME), device="cpu")
            inner.load_state_dict(state, strict=True)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    # -- resume
    global_step = 0
    resume_path = None
    if args.resume_from_checkpoint:
        if args.resume_from_checkpoint == "latest":
            resume_path = latest_checkpoint(output_dir)
            if resume_path is None:
                say(f"--resume_from_checkpoint latest: no checkpoint in {ckpt_root}; starting from scratch.")
        else:
            resume_path = os.path.abspath(args.resume_from_checkpoint)
            if not os.path.isfile(os.path.join(resume_path, TRAINER_STATE)):
                raise ValueError(f"{resume_path} is not a complete checkpoint (no {TRAINER_STATE}).")
    if resume_path is not None:
        with open(os.path.join(resume_path, TRAINER_STATE), encoding="utf-8") as f:
            state = json.load(f)
        if state.get("gradient_accumulation_steps", args.gradient_accumulation_steps) != args.gradient_accumulation_steps or \
                state.get("global_batch_size", global_batch) != global_batch:
            say("WARNING: resuming with a different global batch or accumulation: the data order will not match the "
                "interrupted run.")
        accelerator.load_state(resume_path)
        global_step = int(state["global_step"])
        say(f"Resumed from {resume_path} at step {global_step}.")

    if main_process:
        os.makedirs(output_dir, exist_ok=True)
        write_json_atomic(os.path.join(output_dir, "training_args.json"), dict(vars(args), command=None))
    if args.report_to == "tensorboard":
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("linearizer", config=tracker_config)

    n_params = sum(p.numel() for p in unwrapped().parameters())
    say(
        f"Training {n_params:,} parameters on {len(dataset):,} images {shape} | {num_processes} process(es) on "
        f"{accelerator.device} | batch {args.train_batch_size}×{num_processes}×{args.gradient_accumulation_steps} "
        f"| objective {args.objective} | mixed precision {accelerator.mixed_precision} | steps {global_step}→{max_train_steps}"
    )

    # -- helpers that use the live state
    def save_checkpoint(step: int) -> None:
        final = os.path.join(ckpt_root, f"{CHECKPOINT_PREFIX}{step}")
        if os.path.isdir(final):  # already saved (e.g. the last periodic checkpoint is the final step)
            return
        tmp = os.path.join(ckpt_root, f".tmp-{CHECKPOINT_PREFIX}{step}")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(os.path.join(tmp, TRAINER_STATE), {
                "global_step": step, "micro_step": step * args.gradient_accumulation_steps,
                "global_batch_size": global_batch, "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "num_processes": num_processes, "objective": args.objective, "seed": args.seed, "time": time.time(),
                "train_seconds_this_run": round(time.perf_counter() - t_start, 3),
            })
            _fsync_tree(tmp)
            if os.environ.get(ENV_KILL_IN_SAVE) == str(step):
                os.kill(os.getpid(), signal.SIGKILL)
            os.replace(tmp, final)
            _fsync_dir(ckpt_root)
            prune_checkpoints(ckpt_root, args.checkpoints_total_limit)
        accelerator.wait_for_everyone()

    def sampling_model():
        inner = unwrapped()
        twin = ema.averaged_copy(inner) if ema is not None else copy.deepcopy(inner)
        return twin.eval()

    sample_warned = [False]
    sample_condition: Dict[str, Any] = {}  # class models cycle through the classes by themselves
    if args.conditioning == "text":
        captions = [dataset[i][1] for i in range(min(args.num_samples, len(dataset)))]
        captions = (captions * args.num_samples)[:args.num_samples]
        sample_condition = dict(prompt_embeds=encode_captions(*text, captions, accelerator.device), guidance_scale=1.0)

    def write_samples(step: int) -> None:
        if accelerator.is_main_process:
            try:
                images = generate_samples(sampling_model(), args.num_samples, args.sample_inference_steps, args.solver,
                                          args.seed, **sample_condition)
            except Exception as err:  # sampling must never stop training
                if not sample_warned[0]:
                    say(f"WARNING: could not generate samples ({type(err).__name__}: {err}); continuing without.")
                    sample_warned[0] = True
            else:
                folder = os.path.join(output_dir, SAMPLES_DIR)
                os.makedirs(folder, exist_ok=True)
                path = os.path.join(folder, f"step-{step:07d}.png")
                grid_image = make_grid(images)
                grid_image.save(path + ".tmp.png")
                os.replace(path + ".tmp.png", path)
                for tracker in accelerator.trackers:
                    if tracker.name == "tensorboard":
                        import numpy as np

                        grid = torch.from_numpy(np.asarray(grid_image, dtype="float32") / 255.0)
                        grid = grid[None] if grid.ndim == 2 else grid.permute(2, 0, 1)
                        tracker.writer.add_image("samples", grid, step)
        accelerator.wait_for_everyone()

    # -- the loop
    micro_step = global_step * args.gradient_accumulation_steps
    epoch, skip = divmod(micro_step, micro_per_epoch)
    progress = tqdm(total=max_train_steps, initial=global_step, desc="train",
                    disable=args.no_progress or not main_process, dynamic_ncols=True)
    sleep_s = float(os.environ.get(ENV_STEP_SLEEP, "0") or 0)
    device = accelerator.device
    running: Dict[str, float] = {}
    running_n = 0
    step_terms: Dict[str, Any] = {}
    step_inputs = None
    last_logs: Dict[str, float] = {}
    t_start = time.perf_counter()
    steps_this_run = 0

    def out_of_time() -> bool:
        """True once ``--max_train_seconds`` have passed; with several processes, as soon as any one of them
        is out of time, so that all stop at the same step."""
        if args.max_train_seconds is None:
            return False
        late = time.perf_counter() - t_start >= args.max_train_seconds
        if num_processes > 1:  # a collective (a device sync) only where processes must agree
            late = bool(accelerator.reduce(torch.tensor(float(late), device=device), reduction="max").item())
        return late

    while global_step < max_train_steps:
        sampler.set_epoch(epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for images in batches:
            # The random inputs of a whole optimizer step (all processes, all micro-batches) come from one
            # generator seeded by (seed, step); each micro-batch of each process takes its slice. So a run
            # with P processes × accumulation A sees the noise a single process with batch P·A·B would.
            micro_in_step = micro_step % args.gradient_accumulation_steps
            if micro_in_step == 0 or step_inputs is None:
                gen = torch.Generator().manual_seed(derive_seed(args.seed, "step", global_step))
                n_step = global_batch * args.gradient_accumulation_steps
                step_inputs = list(draw_step_noise(shape, n_step, gen))
                step_inputs.append(torch.rand(n_step, generator=gen) < 0.5)  # flips (used with --random_flip)
                if uses_likelihood:  # dequantisation noise
                    step_inputs.append(torch.rand((n_step, *shape), generator=gen))
                if args.conditioning:  # condition dropout
                    step_inputs.append(torch.rand(n_step, generator=gen) < args.condition_dropout)
            first = (micro_in_step * num_processes + rank) * args.train_batch_size
            noise, t, eps_y, eps_x, flip, *rest = (v[first:first + args.train_batch_size] for v in step_inputs)
            uniform = rest[0].to(device, non_blocking=True) if uses_likelihood else None
            condition = None
            if args.conditioning:  # (images, ids or captions) → dropout → ids or pooled embeddings
                images, condition = images
                condition = drop_conditions(condition, rest[-1], model.config.num_classes)
                condition = condition.to(device) if text is None else encode_captions(*text, condition, device)
            elif isinstance(images, (tuple, list)):  # teacher pairs: the pair's noise replaces the drawn one
                images, noise = images
            if args.random_flip:
                images = torch.where(flip.view(-1, 1, 1, 1).to(images.device), images.flip(-1), images)
            noise, t, eps_y, eps_x = (v.to(device, non_blocking=True) for v in (noise, t, eps_y, eps_x))
            images = images.to(device)
            # position of this micro-batch's first sample in the global sample stream (the fast objective's
            # round-robin assignment of decode terms continues across batches, processes and steps)
            offset = global_step * args.gradient_accumulation_steps * global_batch + first
            with accelerator.accumulate(objective):
                out = objective(images, noise, t, eps_y, eps_x, offset=offset, uniform=uniform, condition=condition)
                accelerator.backward(out["loss"])
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(objective.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in out.items():  # device tensors: no host sync per micro-step
                step_terms[k] = step_terms.get(k, 0.0) + v.detach().double() / args.gradient_accumulation_steps
            micro_step += 1
            if not accelerator.sync_gradients:
                continue

            global_step += 1
            steps_this_run += 1
            if ema is not None:
                ema.update(unwrapped())
            for k, v in step_terms.items():
                running[k] = running.get(k, 0.0) + v
            running_n += 1
            progress.update(1)
            step_terms = {}
            if sleep_s:
                time.sleep(sleep_s)

            if global_step % args.log_every == 0 or global_step == max_train_steps:
                keys = sorted(running)
                local = torch.stack([torch.as_tensor(running[k], device=device, dtype=torch.float64) / running_n for k in keys])
                mean = accelerator.reduce(local, reduction="mean") if num_processes > 1 else local
                last_logs = {f"loss/{k}" if k != "loss" else "loss": float(v) for k, v in zip(keys, mean.tolist())}
                last_logs["lr"] = lr_scheduler.get_last_lr()[0]
                last_logs["steps_per_second"] = steps_this_run / max(time.perf_counter() - t_start, 1e-9)
                accelerator.log(last_logs, step=global_step)
                line = f"step {global_step}: " + ", ".join(f"{k}={v:.5g}" for k, v in last_logs.items())
                logger.info(line)
                progress.set_postfix(loss=f"{last_logs['loss']:.4f}", lr=f"{last_logs['lr']:.2e}")
                if args.no_progress:
                    say(line)
                running, running_n = {}, 0
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                save_checkpoint(global_step)
            if args.sample_steps and global_step % args.sample_steps == 0:
                write_samples(global_step)
            if global_step >= max_train_steps or out_of_time():
                break
        else:
            epoch, skip = epoch + 1, 0
            continue
        break
    progress.close()
    elapsed = time.perf_counter() - t_start

    # -- the end: a final checkpoint, samples, and the pipeline with the EMA weights
    save_checkpoint(global_step)  # the final state is always checkpointed (a finished run can be extended)
    if not args.no_final_samples and not (args.sample_steps and global_step % args.sample_steps == 0):
        write_samples(global_step)
    if main_process:
        final_model = sampling_model()
        metrics = {
            "training_steps": global_step, "objective": args.objective, "pixel_loss": args.pixel_loss,
            "noise_level": args.noise_level, "global_batch_size": global_batch * args.gradient_accumulation_steps,
            "learning_rate": args.learning_rate, "ema_decay": None if ema is None else args.ema_decay,
            "dataset": args.train_data_dir or f"Fashion-MNIST ({args.fashion_mnist_mode} to {args.resolution}×{args.resolution})",
            "final_loss": last_logs.get("loss"), "mixed_precision": accelerator.mixed_precision,
            "num_processes": num_processes, "device": str(device), "train_seconds_this_run": round(elapsed, 1),
        }
        save_final(final_model, output_dir, args.solver, metrics, say, text)
        say(f"Saved the {'EMA' if ema is not None else 'trained'} pipeline to {output_dir} after {global_step} steps "
            f"({steps_this_run} in this run, {elapsed:.1f} s).")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def save_final(model, output_dir: str, solver: str, metrics: Dict[str, Any], say=print, text=None) -> None:
    """``LinearizerPipeline(model, LinearizerScheduler).save_pretrained(output_dir, metrics=...)``; without
    the pipeline class, ``model.save_pretrained(output_dir/linearizer)`` and the scheduler config."""
    try:
        from ..pipelines import LinearizerPipeline
    except ImportError:
        LinearizerPipeline = None
    try:
        from ..schedulers import LinearizerScheduler
    except ImportError:
        LinearizerScheduler = None
    if LinearizerPipeline is not None and LinearizerScheduler is not None:
        tokenizer, encoder = text if text is not None else (None, None)
        LinearizerPipeline(linearizer=model, scheduler=LinearizerScheduler(solver=solver), text_encoder=encoder,
                           tokenizer=tokenizer).save_pretrained(output_dir, metrics=metrics)
        return
    say("LinearizerPipeline is not available: saving the model (and scheduler config) only.")
    model.save_pretrained(os.path.join(output_dir, MODEL_SUBDIR))
    if LinearizerScheduler is not None:
        LinearizerScheduler(solver=solver).save_pretrained(os.path.join(output_dir, "scheduler"))


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

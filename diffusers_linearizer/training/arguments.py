"""The trainer's command-line options: :func:`add_arguments` (also used by ``diffusers-linearizer train``),
:func:`parse_args` and :func:`check_args`, which refuses inconsistent options before anything is loaded."""

from __future__ import annotations

import argparse
import math
from typing import List, Optional, Sequence

from .objective_registry import OBJECTIVES, parse_objective, weighted_terms


def finite_float(text: str) -> float:
    """An argparse ``type=``: a finite number (NaN and infinities are refused, naming the flag)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value

# Model options exposed on the command line (None = LinearizerModel's default or --model_config's value).
MODEL_OPTIONS = {
    "num_blocks": (int, "flow blocks per invertible network (per scale)"),
    "num_scales": (int, "squeeze-and-split scales of each invertible network (1: one resolution)"),
    "conditioner_type": (str, "coupling conditioner: conv or unet"),
    "conditioner_channels": (int, "conditioner width"),
    "conditioner_layers": (int, "conditioner depth (residual blocks)"),
    "core_type": (str, "linear core, a name of the core registry (see docs/design.md)"),
    "core_rank": (int, "rank r (low-rank cores) or R (shared basis)"),
    "core_hidden_dim": (int, "MLP width of time-dependent cores"),
    "core_embedding_dim": (int, "sinusoidal time-embedding size of the core"),
    "core_prior_components": (int, "Gaussians of a projection core's prior on its range"),
    "clamp_value": (finite_float, "bound of the couplings' log-scale"),
}


def _flag(name: str) -> List[str]:
    """``--name_with_underscores`` and its ``--dashed-name`` alias."""
    dashed = name.replace("_", "-")
    return [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the trainer's options to ``parser`` (also used by ``diffusers-linearizer train``)."""
    from ..schedulers import SOLVERS
    from .data import FASHION_MNIST_DIR
    from .distances import PIXEL_LOSSES

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
    d.add_argument(*_flag("condition_dropout"), type=finite_float, default=0.1,
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
    m.add_argument(*_flag("untie_g"), action="store_true",
                   help="With --pretrained_model: give g_x and g_y their own copies of the shared network g (the same "
                   "function at first, twice g's parameters; models/untie.py).")
    m.add_argument(*_flag("model_config"), default=None,
                   help="A JSON file with LinearizerModel config values (the options below override it).")
    for name, (typ, text) in MODEL_OPTIONS.items():
        m.add_argument(*_flag(name), type=typ, default=None, help=f"{text.capitalize()}. Default: the model's.")

    o = parser.add_argument_group("objective")
    described = "; ".join(f"{e.name}: {e.doc[0].lower() + e.doc[1:].rstrip('.')}" for e in OBJECTIVES.entries())
    o.add_argument("--objective", default="fast",
                   help=f"One of {OBJECTIVES.choices()} or a weighted mix such as 'distill,fast' or "
                   f"'distill:1,likelihood:0.02'. {described}. Objectives through B train the collapse of "
                   "--sample_inference_steps and --solver. Default: fast.")
    o.add_argument(*_flag("noise_level"), type=finite_float, default=0.3, help="σ of the latent perturbations. Default: 0.3.")
    o.add_argument(*_flag("pixel_loss"), choices=PIXEL_LOSSES, default="mse",
                   help="Pixel-space distance replacing the paper's LPIPS. Default: mse.")
    o.add_argument(*_flag("ssim_weight"), type=finite_float, default=0.1, help="Weight of 1 − SSIM in mse+ssim. Default: 0.1.")
    for term in weighted_terms():
        o.add_argument(*_flag(f"weight_{term}"), type=finite_float, default=1.0, help=f"Weight of the {term} term. Default: 1.")

    t = parser.add_argument_group("optimisation")
    t.add_argument(*_flag("train_batch_size"), type=int, default=64, help="Batch size per process. Default: 64.")
    t.add_argument(*_flag("gradient_accumulation_steps"), type=int, default=1, help="Micro-batches per optimizer step.")
    t.add_argument(*_flag("max_train_steps"), type=int, default=None,
                   help="Optimizer steps to train (overrides --num_train_epochs).")
    t.add_argument(*_flag("num_train_epochs"), type=int, default=100, help="Epochs, if --max_train_steps is not given.")
    t.add_argument(*_flag("max_train_seconds"), type=finite_float, default=None,
                   help="Also stop (and save as usual) once this run has trained for this many seconds of wall-clock "
                        "time: a time budget, e.g. to compare models at equal training time.")
    t.add_argument(*_flag("learning_rate"), type=finite_float, default=1e-4, help="Adam learning rate. Default: 1e-4 (the paper's).")
    t.add_argument(*_flag("lr_scheduler"), default="constant",
                   help="diffusers.optimization scheduler: constant, constant_with_warmup, linear, cosine, ...")
    t.add_argument(*_flag("lr_warmup_steps"), type=int, default=0, help="Warm-up optimizer steps.")
    t.add_argument(*_flag("adam_beta1"), type=finite_float, default=0.9)
    t.add_argument(*_flag("adam_beta2"), type=finite_float, default=0.999)
    t.add_argument(*_flag("adam_weight_decay"), type=finite_float, default=0.0, help="AdamW weight decay. Default: 0 (Adam).")
    t.add_argument(*_flag("adam_epsilon"), type=finite_float, default=1e-8)
    t.add_argument(*_flag("max_grad_norm"), type=finite_float, default=1.0, help="Gradient clipping (0: off). Default: 1.")
    t.add_argument(*_flag("mixed_precision"), choices=("no", "fp16", "bf16"), default=None,
                   help="Autocast the forward (weights stay float32). Default: accelerate's config.")
    t.add_argument(*_flag("allow_tf32"), action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")
    t.add_argument(*_flag("cudnn_benchmark"), action="store_true",
                   help="Let cuDNN time its convolution algorithms once per shape and keep the fastest.")
    t.add_argument(*_flag("channels_last"), action="store_true",
                   help="Keep the model's convolution weights (and so the activations) in channels-last memory order.")
    t.add_argument("--seed", type=int, default=0, help="Seed of the weights, the data order and the noise. Default: 0.")
    t.add_argument(*_flag("init_batch_size"), type=int, default=256,
                   help="Images for the data-dependent ActNorm initialisation. Default: 256.")
    t.add_argument("--cpu", action="store_true", help="Train on the CPU even if a GPU is available.")
    t.add_argument(*_flag("device_inputs"), choices=("auto", "on", "off"), default="auto",
                   help="Keep the dataset on the training device and draw each step's noise there from a generator "
                   "seeded by (seed, step): no host work or host synchronisation per step. auto (default): on for "
                   "every device but the CPU (datasets up to 4 GiB); a run is reproducible on the same kind of device.")
    t.add_argument(*_flag("fused_optimizer"), choices=("auto", "on", "off"), default="auto",
                   help="AdamW's fused kernel (one launch for all parameters). auto (default): on for CUDA.")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the flow-matching objective (fast or reference; one graph for every step).")
    t.add_argument(*_flag("compile_backend"), default="inductor", help="torch.compile backend. Default: inductor.")
    t.add_argument(*_flag("compile_mode"), default=None,
                   help="torch.compile mode (default, reduce-overhead, max-autotune). Default: torch's. On a GPU, "
                   "reduce-overhead (CUDA graphs) removes most of the step's launch time: the fastest trainer path "
                   "measured in docs/gpu.md.")

    e = parser.add_argument_group("EMA")
    e.add_argument(*_flag("ema_decay"), type=finite_float, default=0.999, help="EMA decay. Default: 0.999.")
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
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ValueError(f"--max_train_steps must be ≥ 1 (0 would save an untrained model), got {args.max_train_steps}.")
    if args.max_train_steps is None and args.num_train_epochs < 1:
        raise ValueError(f"--num_train_epochs must be ≥ 1, got {args.num_train_epochs}.")
    if args.max_train_seconds is not None and not args.max_train_seconds > 0:
        raise ValueError(f"--max_train_seconds must be > 0, got {args.max_train_seconds}.")
    if args.sample_inference_steps < 2:
        raise ValueError("--sample_inference_steps must be ≥ 2.")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema_decay must be in [0, 1), got {args.ema_decay}.")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be a number > 0, got {args.learning_rate}.")
    if args.untie_g and not args.pretrained_model:
        raise ValueError("--untie_g unties a trained model's shared g: it needs --pretrained_model (a fresh model with "
                         "separate networks is --model_config with \"shared_g\": false).")
    mix = parse_objective(args.objective)
    pairs = [name for name in mix if OBJECTIVES.entry(name).data == "pairs"]
    if pairs and not args.teacher_pairs:
        raise ValueError(f"--objective {pairs[0]} needs --teacher_pairs FILE (make one with `diffusers-linearizer distill-data`).")
    if args.teacher_pairs and args.random_flip:
        raise ValueError("--random_flip would break teacher pairs (a flipped teacher sample is not the sample of its noise).")
    if args.teacher_pairs and args.train_data_dir:
        raise ValueError("Give either --teacher_pairs or --train_data_dir, not both.")
    if not 0.0 <= args.condition_dropout < 1.0:
        raise ValueError(f"--condition_dropout must be in [0, 1), got {args.condition_dropout}.")
    unconditional = [name for name in mix if not OBJECTIVES.entry(name).conditions]
    if args.conditioning and unconditional:
        raise ValueError(f"--conditioning trains with --objective {' or '.join(OBJECTIVES.names(conditions=True))} "
                         "(the objectives that take conditions).")
    if args.conditioning == "text" and args.teacher_pairs:
        raise ValueError("--teacher_pairs with --conditioning takes class-conditional pairs (--conditioning class); "
                         "text-conditioned pairs are not supported.")
    if "likelihood" in mix:
        from .likelihood import check_likelihood_conditioning

        check_likelihood_conditioning(args.conditioning)
    if args.conditioning == "text" and not args.text_encoder:
        raise ValueError("--conditioning text needs --text_encoder DIR (a CLIP-style text model and its tokenizer).")
    if args.text_encoder and args.conditioning != "text":
        raise ValueError("--text_encoder only applies with --conditioning text.")
    if args.report_to == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise ValueError("--report_to tensorboard needs TensorBoard: pip install tensorboard.")

"""The argument parser of ``diffusers-linearizer`` (one sub-command per task); the handlers are in :mod:`.cli`."""

from __future__ import annotations

import argparse

from .cli_checks import (
    FRAMES, GIF_DURATION, GIF_DURATION_RANGE, GUIDANCE_SCALE, PORT, POSITIVE, SEED, STEPS, TEMPERATURE,
)


DTYPES = ("float32", "float16", "bfloat16", "float64")


# ---------------------------------------------------------------------- argument parsing
def _add_common(p: argparse.ArgumentParser, output_default: str) -> None:
    from .schedulers import SOLVERS

    g = p.add_argument_group("model and sampler")
    g.add_argument(
        "--model",
        default=None,
        help="A saved pipeline directory, a packaged model (fashion-mnist, fashion-mnist-classes) or a Hugging "
        "Face Hub repo id ('org/name'; the local cache is used when HF_HUB_OFFLINE=1). Default: the trained checkpoint shipped in the package "
        "(diffusers_linearizer/default_model/) if present, otherwise a freshly initialised, UNTRAINED "
        "small model (a warning says so).",
    )
    g.add_argument(
        "--steps",
        type=STEPS,
        default=100,
        help="Sampler grid points T (T-1 solver steps, at least 2). The one-step operator B reproduces this "
        "T-point run exactly; use the same value to invert and to regenerate. Default: 100.",
    )
    g.add_argument(
        "--solver",
        choices=SOLVERS,
        default=None,
        help="ODE solver whose run B collapses: "
        + "; ".join(f"{e.name} ({e.description})" for e in SOLVERS.entries())
        + ". Default: the one in the saved scheduler config.",
    )
    g.add_argument("--seed", type=SEED, default=0,
                   help="Random seed, 0 … 2**64 − 1. Image i uses seed + i. Default: 0.")
    g.add_argument(
        "--device",
        default=None,
        help="Torch device, e.g. cpu, cuda, cuda:1, mps (checked to exist before anything is loaded). Default: "
        "the accelerate process's device (cuda if available, else cpu).",
    )
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="Weights' dtype. The collapsed operator and its pseudo-inverse are always accumulated in "
        "float64 (float32 on mps). Default: float32.",
    )
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", default=output_default,
                   help=f"Image grid to write; the extension picks the format (.png, .jpg, .webp, ...). Default: {output_default}.")
    o.add_argument("--nrow", type=POSITIVE, default=None,
                   help="Images per grid row (≥ 1; at most the number of images). Default: about √N.")
    o.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-linearizer",
        description="One-step generation, exact inversion and interpolation with a Linearizer "
        "(f(x) = g_y^-1(A g_x(x))) diffusers pipeline. Images are PNG grids with values in [0, 1]. "
        "Run `diffusers-linearizer COMMAND --help` for each command's options.",
        epilog="Every argument and every file to read or write is checked before any work. Exit status: 0 on "
        "success, 2 for bad input (an argument, an input file, a model that does not fit the request; nothing is "
        "written), 1 when the work itself fails (a file system or memory error).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{generate,invert,interpolate,train,distill-data,project,stylize,unstylize,style-data,analyze,demo}")
    sub.required = True

    gen = sub.add_parser(
        "generate",
        help="Generate images from noise (one step by default).",
        description="Generate images: x = g_x^-1(B g_y(noise)) with the collapsed operator B, or step by step "
        "with --multi-step. Under `accelerate launch` the images are split over the processes.",
    )
    _add_common(gen, "samples.png")
    gen.add_argument("--num-images", "-n", type=POSITIVE, default=16, help="How many images (≥ 1). Default: 16.")
    gen.add_argument("--batch-size", type=POSITIVE, default=16,
                     help="Images per forward pass (per process, ≥ 1). Default: 16.")
    gen.add_argument(
        "--temperature",
        type=TEMPERATURE,
        default=None,
        help="Sampling temperature τ > 0: the noise is τ·ε with ε ~ N(0, I), or the model's fitted noise prior with "
        "its deviations scaled by τ (below 1: smoother, more typical images; above 1: more varied ones). Default: the "
        "model's noise_prior_temperature or sampling_temperature (1 unless calibrated).",
    )
    gen.add_argument("--plain-noise", action="store_true",
                     help="Sample τ·N(0, I) even when the model carries a fitted noise prior (docs/noise_prior.md).")
    gen.add_argument(
        "--multi-step",
        action="store_true",
        help="Run the solver step by step (num_inference_steps model evaluations) instead of applying B once; "
        "same images up to round-off.",
    )
    gen.add_argument("--class", dest="class_names", action="append", default=None, metavar="NAME",
                     help="Class-conditioned models: a class name or id (repeat for several; the images take them in "
                     "turn). Default: every class in turn. E.g. --model fashion-mnist-classes --class Sneaker.")
    gen.add_argument("--prompt", default=None, help="Text-conditioned models: the prompt.")
    gen.add_argument("--guidance-scale", type=GUIDANCE_SCALE, default=None,
                     help="Classifier-free guidance of conditional models (> 1: on; 0 or 1: off), as in diffusers; "
                     "the guided run still collapses into one operator. Default: the pipeline's (4.0).")
    gen.add_argument("--save-images", default=None, metavar="DIR",
                     help="Also write every image as DIR/00000.png, ... (DIR is created if missing).")
    gen.add_argument(
        "--save-tensors",
        default=None,
        metavar="FILE",
        help="Also save the unclamped float images as a (N, C, H, W) tensor with torch.save, to a .pt or .pth file "
        "(exact comparisons).",
    )

    inv = sub.add_parser(
        "invert",
        help="Invert images to their noise through B† and report the reconstruction PSNR.",
        description="Invert images: noise = g_y^-1(B† g_x(x)). Writes a grid with the inputs in the first row and "
        "their reconstructions g_x^-1(B B† g_x(x)) below, and prints each PSNR.",
    )
    _add_common(inv, "inversion.png")
    inv.add_argument("images", nargs="+", help="Image files (converted to the model's channels; see --resize).")
    inv.add_argument("--resize", action="store_true", help="Resize images to the model's size instead of refusing them.")
    inv.add_argument("--save-noise", default=None, metavar="FILE", help="torch.save the recovered noise (N, C, H, W) to a .pt or .pth file.")

    itp = sub.add_parser(
        "interpolate",
        help="Interpolate between two images through their noise; PNG grid and optional GIF.",
        description="Invert two images, interpolate their noise (slerp or linear) and generate every frame in one "
        "step. The first and last frames are the reconstructions of the two images.",
    )
    _add_common(itp, "interpolation.png")
    itp.add_argument("image_a", help="First image file.")
    itp.add_argument("image_b", help="Last image file.")
    itp.add_argument("--frames", type=FRAMES, default=8, help="Number of frames including both ends (≥ 2). Default: 8.")
    itp.add_argument("--mode", choices=("slerp", "linear"), default="slerp", help="Interpolation of the noise. Default: slerp.")
    itp.add_argument("--resize", action="store_true", help="Resize images to the model's size instead of refusing them.")
    itp.add_argument("--gif", default=None, metavar="FILE", help="Also write the frames as an animated GIF (a .gif file).")
    itp.add_argument("--duration", type=GIF_DURATION, default=120,
                     help=f"GIF frame duration in milliseconds, {GIF_DURATION_RANGE[0]} … {GIF_DURATION_RANGE[1]}. "
                     "Default: 120.")

    from .training.train import add_arguments as add_train_arguments

    trn = sub.add_parser(
        "train",
        help="Train a Linearizer with accelerate (Fashion-MNIST or a folder of images).",
        description="Train a Linearizer as a flow-matching model in latent space; writes a pipeline directory "
        "(EMA weights, model card), checkpoints and sample grids. Under `accelerate launch` it trains on several "
        "processes. See `python -m diffusers_linearizer.training.train --help`.",
    )
    add_train_arguments(trn)

    from .training.teacher import add_arguments as add_teacher_arguments

    dd = sub.add_parser(
        "distill-data",
        help="Sample a diffusers flow-matching teacher into (noise, image) pairs for --objective distill.",
        description="Write teacher pairs: the noise of pair i is row i % CHUNK of the seeded chunk i // CHUNK "
        "(regenerated, not stored) and its image the teacher's Euler sample as uint8. A class-conditional teacher "
        "(num_class_embeds) draws pair i under class i mod K and the file keeps the labels, for a class student "
        "(train --conditioning class). Resumable: finished chunks are kept in OUTPUT.parts/.",
    )
    add_teacher_arguments(dd)

    from .cli_projection import add_parser as add_project_parser

    add_project_parser(sub)

    from .cli_style import add_parsers as add_style_parsers

    add_style_parsers(sub)

    from .cli_analysis import add_parser as add_analyze_parser

    add_analyze_parser(sub)

    dem = sub.add_parser(
        "demo",
        help="Start the web demo (gradio): generate, invert, interpolate and edit in a browser.",
        description="Serve the web demo on http://HOST:PORT (needs gradio: pip install \"diffusers-linearizer[demo]\"). "
        "The model is loaded once; with the packaged default no network is used.",
    )
    dem.add_argument("--model", default=None, help="A saved pipeline directory or a Hub repo id. Default: the packaged model.")
    dem.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface). Default: 127.0.0.1.")
    dem.add_argument("--port", type=PORT, default=7860, help="Port, 1 … 65535. Default: 7860.")
    dem.add_argument("--share", action=argparse.BooleanOptionalAction, default=False,
                     help="Also open a public gradio.live link (needs network). Default: --no-share.")
    return parser


# ---------------------------------------------------------------------- helpers

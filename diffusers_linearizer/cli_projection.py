"""``diffusers-linearizer project``: generate with, or project images through, an idempotent projection model.

Without image files it generates ``--num-images`` samples ``g⁻¹(z)`` (``z`` drawn from the prior on P's range); with files it writes a grid of the
inputs (first row), their projections ``f(x)`` and ``f(f(x))`` (which equals ``f(x)``), and prints each input's
distance to the model's range. ``--mask`` fills the white pixels of a mask image; ``--noise SIGMA`` adds
Gaussian noise to the inputs first (to see the projection remove it).
"""

from __future__ import annotations

import argparse

from .cli_checks import POSITIVE, SEED, TEMPERATURE, check_device, check_output_file

PROJECTION_MODEL = "fashion-mnist-projection"


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``project`` sub-command's parser."""
    p = sub.add_parser(
        "project",
        help="Project images onto a projection model's range (f ∘ f = f), fill masks, or generate from it.",
        description="With a projection model f(x) = g^-1(P g(x)), P² = P: without IMAGES, generate --num-images "
        "samples g^-1(z), z drawn from the prior on P's range; with IMAGES, write a grid of the inputs, f(x) and f(f(x)) (equal to f(x)) "
        "and print each input's distance ‖g(x) − P g(x)‖ to the range (an out-of-distribution score).",
    )
    p.add_argument("images", nargs="*", help="Image files to project (converted to the model's channels; see --resize).")
    p.add_argument("--model", default=PROJECTION_MODEL,
                   help=f"A saved projection pipeline, a packaged model or a Hub repo id. Default: {PROJECTION_MODEL}.")
    p.add_argument("--num-images", "-n", type=POSITIVE, default=16, help="Samples to generate without IMAGES. Default: 16.")
    p.add_argument("--temperature", type=TEMPERATURE, default=None,
                   help="τ of the generation noise τ·ε. Default: the model's sampling_temperature.")
    p.add_argument("--mask", default=None, metavar="FILE",
                   help="A black-and-white mask image (white: pixels to fill), one for all IMAGES.")
    p.add_argument("--mask-iterations", type=POSITIVE, default=20, help="Alternating projections for --mask. Default: 20.")
    p.add_argument("--noise", type=float, default=0.0, metavar="SIGMA",
                   help="Add N(0, SIGMA²) noise to the inputs before projecting (seeded by --seed). Default: 0.")
    p.add_argument("--resize", action="store_true", help="Resize images to the model's size instead of refusing them.")
    p.add_argument("--seed", type=SEED, default=0, help="Random seed. Default: 0.")
    p.add_argument("--device", default=None, help="Torch device (cpu, cuda, ...). Default: cuda if available, else cpu.")
    p.add_argument("--output", "-o", default="projection.png", help="Image grid to write. Default: projection.png.")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")
    return p


def cmd_project(args) -> int:
    """Run ``project`` (every argument and file checked before the model loads)."""
    import math

    import torch

    from .cli import load_pipeline
    from .image_grid import make_grid
    from .images import images_to_tensor, load_image_files, save_image
    from .pipelines import LinearizerProjectionPipeline

    check_device(args.device)
    check_output_file(args.output, "--output", "image grid", "grid.png", image=True)
    if not (math.isfinite(args.noise) and args.noise >= 0):
        raise ValueError(f"--noise must be a finite σ ≥ 0, got {args.noise}.")
    if (args.mask or args.noise) and not args.images:
        raise ValueError("--mask and --noise apply to IMAGES; give image files to project.")
    load_image_files(list(args.images) + ([args.mask] if args.mask else []))  # readable, named if not
    pipe = load_pipeline(args.model, "float32", cls=LinearizerProjectionPipeline)
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.set_progress_bar_config(disable=args.no_progress)
    generator = torch.Generator().manual_seed(args.seed)
    if not args.images:
        out = pipe(batch_size=args.num_images, generator=generator, temperature=args.temperature, output_type="pt")
        save_image(make_grid(out.images.float().cpu()), args.output)
        print(f"wrote {args.num_images} samples to {args.output}")
        return 0
    shape = pipe.linearizer.sample_shape
    x = images_to_tensor(load_image_files(args.images, shape, args.resize), shape)
    if args.noise:
        x = x + args.noise * torch.randn(x.shape, generator=generator)
    mask = None
    if args.mask:
        mask = (images_to_tensor(load_image_files([args.mask], (1, *shape[1:]), args.resize), (1, *shape[1:])) > 0.5).float()
        x = torch.where(mask > 0.5, torch.zeros_like(x), x)  # the unknown pixels are not shown as they were
    out = pipe(x, mask_image=mask, mask_iterations=args.mask_iterations, output_type="pt", check_range=False, clamp=False)
    again = pipe(out.images, output_type="pt", check_range=False, clamp=False)  # f of f(x) itself, not of a clamped copy
    rows = torch.cat([x, out.images.float().cpu(), again.images.float().cpu()]).clamp(0, 1)
    save_image(make_grid(rows, len(args.images)), args.output)
    for path, d, moved in zip(args.images, out.distances.tolist(),
                              (again.images - out.images).flatten(1).abs().amax(1).tolist()):
        print(f"{path}: distance to the range {d:.4g}; max |f(f(x)) − f(x)| = {moved:.2e}")
    print(f"wrote inputs, f(x) and f(f(x)) to {args.output}")
    return 0

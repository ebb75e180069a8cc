"""Does `diffusers-linearizer distill-data` regenerate the stored teacher pairs? (uint8 levels, this CPU)

Compares pairs made by the package's code with the stored ones: either regenerates the first ``--pairs N``
here (``write_teacher_pairs``, what the command runs) or reads a file the command already wrote (``--made``,
e.g. ``diffusers-linearizer distill-data --teacher … --num-pairs 1000 -o made.npz``). The images that differ by
more than one level are then sampled again in float64: when float64 gives the same uint8 images as float32,
this CPU's result is converged and the difference lies in the stored (GPU-made) images.

    python benchmarks/pairs_check.py --made /tmp/made.npz            # then updates docs/quality.json and .md
Writes the ``pairs_check`` entry of ``docs/quality.json`` and re-renders ``docs/quality.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, Optional

import numpy as np
import torch
from common import DOCS, TEACHER_PAIRS

from diffusers_linearizer import write_text_atomic
from diffusers_linearizer.training.distill import chunk_noise, read_pairs_file
from diffusers_linearizer.training.teacher import load_teacher, sample_teacher, teacher_shape, write_teacher_pairs

QUALITY_JSON = os.path.join(DOCS, "quality.json")


def compare(made: np.ndarray, stored: np.ndarray) -> Dict:
    """Level differences of two uint8 image stacks ``(N, H, W)``."""
    diff = np.abs(made.astype(np.int64) - stored.astype(np.int64)).reshape(made.shape[0], -1)
    return {"pairs": int(made.shape[0]), "max_level_difference": int(diff.max()),
            "mean_level_difference": float(diff.mean()), "images_differing": int((diff.max(1) > 0).sum()),
            "pixels_over_one_level": int((diff > 1).sum()),
            "images_over_one_level": [int(i) for i in np.nonzero(diff.max(1) > 1)[0]]}


def float64_rerun(teacher: str, stored: np.ndarray, made: np.ndarray, indices) -> Optional[Dict]:
    """The images ``indices`` of chunk 0 sampled again in float64: their largest level difference to the
    stored and to the float32 images."""
    if not len(indices):
        return None
    unet, scheduler = load_teacher(teacher)
    noise = chunk_noise(0, teacher_shape(unet), 1000, 1_000_000)[list(indices)]
    images = sample_teacher(unet.double(), scheduler, noise.double())[:, 0].astype(np.int64)
    return {"images": len(indices),
            "max_level_difference_to_stored": int(np.abs(images - stored[indices]).max()),
            "max_level_difference_to_float32": int(np.abs(images - made[indices]).max())}


def check(pairs: str = TEACHER_PAIRS, n: int = 1000, made_file: Optional[str] = None, seconds: Optional[float] = None) -> Dict:
    teacher = os.path.join(os.path.dirname(pairs), "teacher")
    start = time.perf_counter()
    if made_file is None:
        with tempfile.TemporaryDirectory() as tmp:
            made = read_pairs_file(write_teacher_pairs(teacher, os.path.join(tmp, "pairs.npz"), n, progress=False))[0]
        seconds = time.perf_counter() - start
    else:
        made = read_pairs_file(made_file)[0]
    stored = read_pairs_file(pairs)[0][: made.shape[0]]
    result = compare(made, stored)
    result["seconds"] = None if seconds is None else round(seconds, 1)
    result["float64"] = float64_rerun(teacher, stored, made, result["images_over_one_level"])
    print(f"pairs check: {result}", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=TEACHER_PAIRS, help="The stored pairs file (its teacher/ beside it).")
    parser.add_argument("--num-pairs", type=int, default=1000, help="Pairs to regenerate when --made is not given.")
    parser.add_argument("--made", default=None, help="A pairs file written by `diffusers-linearizer distill-data`.")
    parser.add_argument("--made-seconds", type=float, default=None, help="How long the command took (for the page).")
    parser.add_argument("--no-page", action="store_true", help="Print only; leave docs/quality.* alone.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = check(args.pairs, args.num_pairs, args.made, args.made_seconds)
    if not args.no_page and os.path.isfile(QUALITY_JSON):
        from quality_page import render

        with open(QUALITY_JSON, encoding="utf-8") as f:
            quality = json.load(f)
        quality["pairs_check"] = result
        write_text_atomic(QUALITY_JSON, json.dumps(quality, indent=2) + "\n")
        write_text_atomic(os.path.join(DOCS, "quality.md"), render(quality))
    return 0


if __name__ == "__main__":
    sys.exit(main())

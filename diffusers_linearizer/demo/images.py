"""Image helpers of the web demo: reading uploads, fitting them to the model, pictures of noise, GIFs.

Everything here is plain PIL / numpy / torch (no gradio), and every refusal is a :class:`DemoError` whose
message is meant to be shown in the page as it is.
"""

from __future__ import annotations

import math
import os
import uuid
from typing import Dict, List, Sequence, Tuple

import numpy as np
import PIL.Image
import torch

from ..image_grid import make_grid

#: the largest upload (in pixels) the demo opens; larger files are refused before they are decoded
MAX_UPLOAD_PIXELS = 4096 * 4096
#: model channels → the PIL mode its images must have
CHANNEL_MODES = {1: "L", 3: "RGB"}


class DemoError(ValueError):
    """A request the demo refuses; the message says what was expected and is shown in the page."""


def describe_shape(c: int, h: int, w: int) -> str:
    kind = {1: "grayscale", 3: "RGB"}.get(c, f"{c}-channel")
    return f"{w}×{h} {kind}"


def read_upload(path) -> PIL.Image.Image:
    """Open an uploaded file as a PIL image, or raise a :class:`DemoError` saying why it cannot be read."""
    if not path:
        raise DemoError("No file was uploaded.")
    name = os.path.basename(str(path))
    try:
        with PIL.Image.open(path) as img:
            if img.width * img.height > MAX_UPLOAD_PIXELS:
                raise DemoError(
                    f"{name} is {img.width}×{img.height} pixels; the demo opens images of at most "
                    f"{MAX_UPLOAD_PIXELS:,} pixels. Resize it first."
                )
            img.seek(0)  # the first frame of an animation
            img.load()
            image = img.copy()
    except DemoError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError) as err:
        raise DemoError(
            f"Could not read {name} as an image ({type(err).__name__}). The file is corrupted or not an "
            "image; upload a PNG, JPEG, BMP, GIF or WebP file."
        ) from None
    if image.mode == "P":  # palette images: their colours, with transparency if any
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    return image


def fit_image(image: PIL.Image.Image, sample_shape: Tuple[int, int, int], convert: bool = False) -> Tuple[PIL.Image.Image, str]:
    """Check (or, with ``convert``, make) ``image`` of the model's channels and size.

    Returns the image and a note of what was changed (empty when nothing was). Without ``convert`` a wrong
    mode or size is refused with a message that says how to resize; with it the image is converted to the
    model's mode, its centre cropped to a square and resized (bicubic).
    """
    c, h, w = sample_shape
    mode = CHANNEL_MODES.get(c)
    if mode is None:
        raise DemoError(f"The demo shows grayscale or RGB models; this model has {c} channels.")
    got = f"{image.width}×{image.height} {image.mode}"
    if image.mode == mode and image.size == (w, h):
        return image, ""
    if not convert:
        problems = []
        if image.mode != mode:
            problems.append(f"mode {image.mode} ({len(image.getbands())} channel(s)) instead of {mode}")
        if image.size != (w, h):
            problems.append(f"size {image.width}×{image.height} instead of {w}×{h}")
        raise DemoError(
            f"This model takes {describe_shape(c, h, w)} images; this image has {' and '.join(problems)}. "
            f"Tick “convert and resize to fit”, or resize it yourself first, e.g. in Python "
            f"`PIL.Image.open('in.png').convert('{mode}').resize(({w}, {h})).save('out.png')` or with "
            f"ImageMagick `convert in.png {'-colorspace Gray ' if c == 1 else ''}-resize {w}x{h}! out.png`."
        )
    out = image.convert(mode)
    if out.size != (w, h):
        side = min(out.size)
        left, top = (out.width - side) // 2, (out.height - side) // 2
        out = out.crop((left, top, left + side, top + side)).resize((w, h), PIL.Image.BICUBIC)
    return out, f"converted from {got} to {w}×{h} {mode}"


def to_pil(images: torch.Tensor) -> List[PIL.Image.Image]:
    """``(N, C, H, W)`` floats in [0, 1] (clamped) → PIL images (grayscale or RGB)."""
    return [make_grid(x[None], nrow=1, padding=0) for x in images]


def strip(images: torch.Tensor, nrow: int = None) -> PIL.Image.Image:
    """Images side by side (or ``nrow`` a row) with a 2-pixel gap."""
    return make_grid(images, nrow=nrow or images.shape[0])


def noise_picture(noise: torch.Tensor) -> PIL.Image.Image:
    """A picture of Gaussian noise ``(C, H, W)``: −3σ … +3σ mapped to black … white."""
    return make_grid((noise.detach().float().cpu()[None] / 6.0 + 0.5).clamp(0, 1), nrow=1, padding=0)


def noise_statistics(noise: torch.Tensor) -> Dict[str, float]:
    """Summary statistics of one noise sample (float64), to compare with a draw of N(0, I)."""
    n = noise.detach().double().flatten().cpu()
    mean, std = float(n.mean()), float(n.std(unbiased=False))
    z = (n - mean) / max(std, 1e-300)
    return {
        "dimension": int(n.numel()),
        "mean": mean,
        "std": std,
        "min": float(n.min()),
        "max": float(n.max()),
        "skewness": float(z.pow(3).mean()),
        "excess kurtosis": float(z.pow(4).mean() - 3.0),
        "within ±1": float((n.abs() < 1).double().mean()),
        "within ±2": float((n.abs() < 2).double().mean()),
    }


#: what each statistic is for a draw of N(0, I) (the last two: Φ(1) − Φ(−1) and Φ(2) − Φ(−2))
NORMAL_STATISTICS = {
    "mean": 0.0, "std": 1.0, "skewness": 0.0, "excess kurtosis": 0.0,
    "within ±1": math.erf(1 / math.sqrt(2)), "within ±2": math.erf(2 / math.sqrt(2)),
}


def statistics_table(stats: Dict[str, float]) -> str:
    """A Markdown table of :func:`noise_statistics` beside the values of N(0, I)."""
    rows = ["| statistic | recovered noise | N(0, I) |", "| --- | --- | --- |"]
    for key, value in stats.items():
        expected = NORMAL_STATISTICS.get(key)
        shown = f"{value:d}" if isinstance(value, int) else f"{value:.4f}"
        rows.append(f"| {key} | {shown} | {'' if expected is None else f'{expected:.4f}'} |")
    return "\n".join(rows)


def save_gif(frames: Sequence[PIL.Image.Image], folder: str, duration_ms: int = 120, scale: int = 4) -> str:
    """Write frames as a looping GIF (each pixel ``scale``×``scale``, so small images stay visible); returns its path."""
    os.makedirs(folder, exist_ok=True)
    big = [f.resize((f.width * scale, f.height * scale), PIL.Image.NEAREST) for f in frames]
    path = os.path.join(folder, f"interpolation-{uuid.uuid4().hex[:12]}.gif")
    tmp = path + ".tmp"
    big[0].save(tmp, format="GIF", save_all=True, append_images=big[1:], duration=duration_ms, loop=0)
    os.replace(tmp, path)
    return path


def format_db(value: float) -> str:
    return "∞ dB (identical)" if math.isinf(value) else f"{value:.1f} dB"


def as_uint8_array(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)

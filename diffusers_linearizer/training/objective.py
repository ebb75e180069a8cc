r"""Training objectives of the Linearizer (flow matching in the latent space of ``g``).

Notation: ``x`` an image batch in ``[0, 1]``, ``ε ~ N(0, I)`` the noise, ``t ~ U(0, 1)`` one time per
sample, ``σ`` the noise level (0.3), ``D(·, ·)`` a pixel-space distance.

The reference objective (the paper's, ``objective="reference"``)
---------------------------------------------------------------
::

    z₀ = g_y(ε),  z₁ = g_x(x),  z_t = (1 − t)·z₀ + t·z₁,  ẑ₁ = A_t z_t
    L = MSE(ẑ₁, z₁)                        latent flow matching        (latent_flow_loss)
      + MSE(ε, g_y⁻¹(z₀ + σ·n₀))           noise-side robustness       (noise_reconstruction_loss)
      + D(x, g_x⁻¹(z₁ + σ·n₁))             image-side robustness       (image_reconstruction_loss)
      + D(x, g_x⁻¹(ẑ₁))                    prediction in pixel space   (prediction_loss)

``n₀, n₁ ~ N(0, I)``. ``g`` is exactly invertible, so the two robustness terms are not reconstruction
losses in the usual sense: they ask ``g⁻¹`` to be insensitive to latent perturbations of size ``σ``,
which keeps ``g`` from shrinking its latents (that would make the flow-matching term trivially small)
and makes decoding tolerant to the core's prediction errors. The interpolation ``z_t`` is the
scheduler's forward process (``LinearizerScheduler.scale_noise(z₁, timestep_of(t), z₀)``), and the
sampler integrates the velocity ``(A_t z − z)/(1 − t)`` of exactly this prediction.

**Substitute for LPIPS.** The paper uses LPIPS for ``D``; LPIPS needs pretrained VGG/AlexNet weights,
which a fresh offline machine does not have. ``D`` here is the pixel MSE (``pixel_loss="mse"``,
default) or MSE plus ``w·(1 − SSIM)`` (``pixel_loss="mse+ssim"``, Gaussian window 11, σ 1.5). MSE is
also what the inversion and one-step-vs-multi-step PSNR numbers measure.

This objective runs ``g`` five times per step on the full batch (two forwards, three inverses).

The default objective (``objective="fast"``)
---------------------------------------------
The same four terms, estimated with three batch-sized passes of ``g`` instead of five:

* **one batched forward** of ``g`` on ``cat([ε, x])`` with per-sample roles (``role_y`` for the noise
  half, ``role_x`` for the image half): ``z₀`` and ``z₁`` in one call;
* the flow-matching term on every sample, exactly as above;
* **one batched inverse** in which every sample decodes *one* thing, assigned round robin by position
  (``(i + offset) mod 3``): ``z₀ + σ·n₀`` (role y, target ``ε``), ``z₁ + σ·n₁`` (role x, target ``x``) or
  ``ẑ₁`` (role x, target ``x``). Each robustness/prediction term is the mean over its third of the
  batch.

Each term is then an unbiased estimate of the reference's term (the batch is a random sample and the
assignment does not depend on the data), so the expected loss — and the expected gradient — is the
reference's, at 3/5 of its ``g`` work and with two large calls instead of five small ones. The price
is more variance in the three decode terms (a third of the samples each); the flow-matching term,
which carries the generative signal, still uses the whole batch. When ``g_x`` and ``g_y`` are two
networks (``shared_g=False``) the batched calls become one call per network.

Both objectives share the term functions below; :class:`LinearizerObjective` wraps a model so that
``accelerate``/DDP see one ``forward`` that returns the loss.

One-step objectives and mixtures
--------------------------------
``"distill"`` (:mod:`.distill`: regress a teacher's ODE samples through the collapsed one-step generator,
and its inverse back to the teacher's noise) and ``"likelihood"`` (:mod:`.likelihood`: exact maximum
likelihood of the one-step generator) train through ``B``, the differentiable collapse of the sampler run
the model will be used with (``num_inference_steps``, ``solver``). Objectives combine by weights:
``"distill,fast"`` or ``"distill:1,likelihood:0.02"`` (:func:`parse_objective`); the weighted sum of every
component's terms is the loss. ``B`` is built once per step and shared by the components that need it.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from .distances import PIXEL_LOSSES, mse, per_sample_distance, pixel_distance, ssim  # noqa: F401  (re-exported)
from .objective_registry import OBJECTIVES, StepInputs, check_objective_model, component, mix_needs, parse_objective, weighted_terms  # noqa: F401

TERMS = OBJECTIVES.entry("fast").terms


# ---------------------------------------------------------------------- the four terms
def interpolate_latents(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """``z_t = (1 − t)·z₀ + t·z₁`` with one ``t`` per sample (``t`` of shape ``(N,)``)."""
    tt = t.to(z0.dtype).view(-1, *([1] * (z0.ndim - 1)))
    return (1 - tt) * z0 + tt * z1


def latent_flow_loss(z1_pred: Tensor, z1: Tensor) -> Tensor:
    """``MSE(ẑ₁, z₁)``: the core's prediction of the clean latent from ``z_t``."""
    return mse(z1_pred, z1)


def noise_reconstruction_loss(noise: Tensor, decoded: Tensor) -> Tensor:
    """``MSE(ε, g_y⁻¹(z₀ + σ·n₀))`` (``decoded`` is the second argument)."""
    return mse(decoded, noise)


def image_reconstruction_loss(image: Tensor, decoded: Tensor, pixel_loss: str = "mse", ssim_weight: float = 0.1) -> Tensor:
    """``D(x, g_x⁻¹(z₁ + σ·n₁))`` — LPIPS in the paper, :func:`pixel_distance` here."""
    return pixel_distance(image, decoded, pixel_loss, ssim_weight)


def prediction_loss(image: Tensor, decoded: Tensor, pixel_loss: str = "mse", ssim_weight: float = 0.1) -> Tensor:
    """``D(x, g_x⁻¹(ẑ₁))`` — LPIPS in the paper, :func:`pixel_distance` here."""
    return pixel_distance(image, decoded, pixel_loss, ssim_weight)


# ---------------------------------------------------------------------- objectives
def reference_objective(
    model, images: Tensor, noise: Tensor, t: Tensor, eps_y: Tensor, eps_x: Tensor, noise_level: float = 0.3,
    pixel_loss: str = "mse", ssim_weight: float = 0.1, condition: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """The paper's four terms with five full-batch passes of ``g`` (module docstring). Returns the terms."""
    z0 = model.encode(noise, "y")
    z1 = model.encode(images, "x")
    z1_pred = model.apply_core(interpolate_latents(z0, z1, t), t.to(z0.dtype), condition)
    return {
        "latent_flow": latent_flow_loss(z1_pred, z1),
        "noise_reconstruction": noise_reconstruction_loss(noise, model.decode(z0 + noise_level * eps_y, "y")),
        "image_reconstruction": image_reconstruction_loss(
            images, model.decode(z1 + noise_level * eps_x, "x"), pixel_loss, ssim_weight
        ),
        "prediction": prediction_loss(images, model.decode(z1_pred, "x"), pixel_loss, ssim_weight),
    }


def decode_assignment(n: int, offset=0, device=None) -> Tensor:
    """Which decode term each sample of the fast objective feeds: ``(i + offset) mod 3`` →
    0 noise reconstruction, 1 image reconstruction, 2 prediction (``offset``: an int or a 0-d tensor)."""
    return (torch.arange(n, device=device) + offset) % 3


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    w = mask.to(values.dtype)
    return (values * w).sum() / w.sum()


def fast_objective(
    model, images: Tensor, noise: Tensor, t: Tensor, eps_y: Tensor, eps_x: Tensor, noise_level: float = 0.3,
    pixel_loss: str = "mse", ssim_weight: float = 0.1, offset=0, condition: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """The default objective: one batched forward and one batched inverse of ``g`` (module docstring).

    A term whose share of the batch is empty (batches smaller than 3) is 0 and absent from the dict.
    Nothing here waits for the device: with an int ``offset`` every share is selected by indices known
    on the host; a 0-d tensor ``offset`` (the compiled objective's: one graph for every offset, batches
    of 3 or more) weights each sample by its share instead, the same means up to summation order.
    """
    n = images.shape[0]
    dev = images.device
    is_x = torch.cat([torch.zeros(n, dtype=torch.bool, device=dev), torch.ones(n, dtype=torch.bool, device=dev)])
    z = model.apply_g(torch.cat([noise, images.to(noise.dtype)]), is_x)
    z0, z1 = z[:n], z[n:]
    z1_pred = model.apply_core(interpolate_latents(z0, z1, t), t.to(z0.dtype), condition)
    terms = {"latent_flow": latent_flow_loss(z1_pred, z1)}

    kind = decode_assignment(n, offset, dev)
    k4 = kind.view(-1, 1, 1, 1)
    to_decode = torch.where(k4 == 0, z0 + noise_level * eps_y, torch.where(k4 == 1, z1 + noise_level * eps_x, z1_pred))
    decoded = model.apply_g(to_decode, kind != 0, inverse=True)
    targets = (("noise_reconstruction", noise), ("image_reconstruction", images), ("prediction", images))
    if isinstance(offset, Tensor):
        if n < 3:
            raise ValueError(f"A tensor offset needs a batch of at least 3 samples, got {n}.")
        for j, (name, target) in enumerate(targets):
            d = per_sample_distance(target, decoded, "mse" if j == 0 else pixel_loss, ssim_weight)
            terms[name] = _masked_mean(d, kind == j)
        return terms
    for j, (name, target) in enumerate(targets):
        start = (j - int(offset)) % 3  # the first i with (i + offset) mod 3 == j
        if start < n:
            idx = torch.arange(start, n, 3, device=dev)
            part, rec = target.index_select(0, idx), decoded.index_select(0, idx)
            terms[name] = noise_reconstruction_loss(part, rec) if j == 0 else \
                pixel_distance(part, rec, pixel_loss, ssim_weight)
    return terms


def _flow_kwargs(objective) -> dict:
    return dict(noise_level=objective.noise_level, pixel_loss=objective.pixel_loss, ssim_weight=objective.ssim_weight)


def reference_component(objective, inputs: StepInputs) -> Dict[str, Tensor]:
    """The ``reference`` objective's terms (:func:`reference_objective`, compiled when asked)."""
    run = objective.compiled_flow.get("reference", reference_objective)
    return run(objective.model, inputs.images, inputs.noise, inputs.t, inputs.eps_y, inputs.eps_x,
               condition=inputs.condition, **_flow_kwargs(objective))


def fast_component(objective, inputs: StepInputs) -> Dict[str, Tensor]:
    """The ``fast`` objective's terms (:func:`fast_objective`; compiled, with a tensor offset, when asked)."""
    run, offset = fast_objective, inputs.offset
    if "fast" in objective.compiled_flow and inputs.images.shape[0] >= 3:
        run = objective.compiled_flow["fast"]
        offset = torch.full((), int(offset) % 3, dtype=torch.long, device=inputs.images.device)
    return run(objective.model, inputs.images, inputs.noise, inputs.t, inputs.eps_y, inputs.eps_x, offset=offset,
               condition=inputs.condition, **_flow_kwargs(objective))


class LinearizerObjective(nn.Module):
    """The training loss as a module around a ``LinearizerModel`` (what ``accelerator.prepare`` wraps).

    ``forward(images, noise, t, eps_y, eps_x, offset=0, uniform=None)`` returns a dict with ``"loss"`` (the
    weighted sum) and every term. All randomness is passed in, so a step is a pure function of its inputs
    and the weights (what makes resumed runs bit-identical). The components of the mix come from
    :data:`~.objective_registry.OBJECTIVES`; one trained through ``B`` (``one_step``) gets the collapse of the
    sampler run, built once per step; with ``distill`` in the mix, ``images`` and ``noise`` must be teacher
    pairs; ``likelihood`` needs ``uniform`` (dequantisation noise, ``U(0, 1)``).

    Args:
        model: the ``LinearizerModel``.
        objective: a name or a weighted mix (:func:`parse_objective`): ``"fast"`` (default), ``"reference"``,
            ``"distill"``, ``"likelihood"``, e.g. ``"distill,fast"``.
        noise_level: σ of the latent perturbations (the reference's 0.3).
        pixel_loss / ssim_weight: the LPIPS substitute (:func:`pixel_distance`).
        weights: per-term multipliers (the registry's ``weighted`` terms; default 1 each).
        num_inference_steps / solver: the sampler run whose collapsed ``B`` the one-step objectives train.
    """

    def __init__(
        self, model: nn.Module, objective="fast", noise_level: float = 0.3, pixel_loss: str = "mse",
        ssim_weight: float = 0.1, weights: Optional[Dict[str, float]] = None, num_inference_steps: int = 100,
        solver: str = "euler",
    ):
        super().__init__()
        self.mix = parse_objective(objective)
        if pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"Unknown pixel_loss {pixel_loss!r}; expected one of {', '.join(PIXEL_LOSSES)}.")
        if not (noise_level >= 0 and math.isfinite(noise_level)):
            raise ValueError(f"noise_level must be a finite number ≥ 0, got {noise_level}.")
        known = weighted_terms()
        unknown = set(weights or {}) - set(known)
        if unknown:
            raise ValueError(f"Unknown loss terms {sorted(unknown)}; expected some of {', '.join(sorted(known))}.")
        check_objective_model(self.mix, model)
        self.model = model
        self.objective = ",".join(self.mix)
        self.noise_level = float(noise_level)
        self.pixel_loss, self.ssim_weight = pixel_loss, float(ssim_weight)
        self.weights = {k: 1.0 for k in known}
        self.weights.update({k: float(v) for k, v in (weights or {}).items()})
        self.components = {name: component(name) for name in self.mix}
        self.scheduler = None
        self.compiled_flow = {}
        if mix_needs(self.mix, "one_step"):
            from ..schedulers import LinearizerScheduler

            self.scheduler = LinearizerScheduler(solver=solver)
            self.num_inference_steps, self.solver = self.scheduler.check_run(num_inference_steps, solver)
        if "likelihood" in self.mix:
            from .likelihood import check_likelihood_model

            check_likelihood_model(model, self.scheduler, self.num_inference_steps, self.solver)

    def compile_flow(self, **compile_kwargs) -> None:
        """Run the flow-matching component (``fast`` or ``reference``) through ``torch.compile(**compile_kwargs)``.

        ``fast`` is called with its offset as a 0-d tensor, so one graph serves every step (batches of 3 or
        more; smaller ones stay eager). The one-step components stay eager: their collapse of ``B`` is a
        Python loop over the sampler's grid.
        """
        self.compiled_flow = {
            "fast": torch.compile(fast_objective, **compile_kwargs),
            "reference": torch.compile(reference_objective, **compile_kwargs),
        }

    def distance(self, target: Tensor, prediction: Tensor) -> Tensor:
        """The pixel distance ``D`` of the image terms (:func:`pixel_distance` with this objective's settings)."""
        return pixel_distance(target, prediction, self.pixel_loss, self.ssim_weight)

    def terms(self, images, noise, t, eps_y, eps_x, offset: int = 0, uniform: Optional[Tensor] = None,
              condition: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Every term of every component of the mix (unweighted); ``condition`` for conditional cores."""
        if condition is not None:
            unfit = [name for name in self.mix if not OBJECTIVES.entry(name).conditions]
            if unfit:
                raise ValueError(f"The objective {', '.join(unfit)} does not train conditional models; train them "
                                 f"with {OBJECTIVES.choices(OBJECTIVES.names(conditions=True))}.")
        if uniform is None and mix_needs(self.mix, "needs_uniform"):
            raise ValueError("The likelihood objective needs `uniform` (dequantisation noise U(0, 1)).")
        inputs = StepInputs(images, noise, t, eps_y, eps_x, offset, uniform, condition)
        if self.scheduler is not None and condition is None:  # a conditional model's B(c) is per condition
            from .one_step import collapsed_operator

            inputs.B = collapsed_operator(self.model, self.scheduler, self.num_inference_steps, self.solver)
        out: Dict[str, Tensor] = {}
        for run in self.components.values():
            out.update(run(self, inputs))
        return out

    def term_weight(self, term: str) -> float:
        """The weight of ``term`` in the loss: its component's mix weight × the term's own weight."""
        for name, weight in self.mix.items():
            if term in OBJECTIVES.entry(name).terms:
                return weight * self.weights.get(term, 1.0)
        raise ValueError(f"No component of the objective {self.objective!r} returns the term {term!r}.")

    def forward(self, images, noise, t, eps_y, eps_x, offset: int = 0, uniform: Optional[Tensor] = None,
                condition: Optional[Tensor] = None) -> Dict[str, Tensor]:
        terms = self.terms(images, noise, t, eps_y, eps_x, offset, uniform, condition)
        loss = sum(self.term_weight(k) * v for k, v in terms.items() if self.term_weight(k) != 0)
        out = {"loss": loss}
        out.update(terms)
        return out


@torch.no_grad()
def draw_step_noise(shape, batch_size: int, generator: torch.Generator, dtype=torch.float32):
    """The random inputs of one step for ``batch_size`` samples of ``shape = (C, H, W)``, drawn from
    ``generator`` on its device in a fixed order: ``noise``, ``t ~ U(0, 1)``, ``eps_y``, ``eps_x``."""
    kw = dict(generator=generator, dtype=dtype, device=generator.device)
    noise = torch.randn((batch_size, *shape), **kw)
    t = torch.rand((batch_size,), **kw)
    eps_y = torch.randn((batch_size, *shape), **kw)
    eps_x = torch.randn((batch_size, *shape), **kw)
    return noise, t, eps_y, eps_x


@torch.no_grad()
def initialize_actnorm(model, images: Tensor, noise: Optional[Tensor] = None) -> None:
    """Run the data-dependent ActNorm initialisation on a representative batch.

    The networks see what they will encode in training: with one shared ``g``, one forward of
    ``cat([noise, images])`` with per-sample roles; with two networks, ``g_y(noise)`` and ``g_x(images)``.
    Already initialised layers are left alone. The model is left in training mode.
    """
    if noise is None:
        noise = torch.randn_like(images)
    n = images.shape[0]
    is_x = torch.cat([torch.zeros(noise.shape[0], dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(images.device)
    model.train()
    model.apply_g(torch.cat([noise, images.to(noise.dtype)]), is_x)

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

OBJECTIVES = ("fast", "reference", "distill", "likelihood")
ONE_STEP_OBJECTIVES = ("distill", "likelihood")
TERMS = ("latent_flow", "noise_reconstruction", "image_reconstruction", "prediction")
COMPONENT_TERMS = {"distill": ("distill_image", "distill_noise"), "likelihood": ("likelihood_bpd",)}


def parse_objective(spec) -> Dict[str, float]:
    """``"fast"``, ``"distill,fast"`` or ``"distill:1,likelihood:0.02"`` → ``{name: weight}`` (weight 1 by default).

    ``ValueError`` for unknown names, repeated names, non-positive or non-finite weights, and for
    ``fast`` together with ``reference`` (two estimates of the same flow-matching loss).
    """
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"objective must be a non-empty string like 'fast' or 'distill:1,likelihood:0.02', got {spec!r}.")
        items = []
        for part in spec.split(","):
            name, _, weight = part.strip().partition(":")
            try:
                items.append((name.strip(), float(weight) if weight.strip() else 1.0))
            except ValueError:
                raise ValueError(f"objective {spec!r}: the weight of {name.strip()!r} is not a number ({weight!r}).") from None
    mix: Dict[str, float] = {}
    for name, weight in items:
        if name not in OBJECTIVES:
            raise ValueError(f"Unknown objective {name!r}; expected some of {', '.join(OBJECTIVES)} (e.g. 'distill,fast').")
        if name in mix:
            raise ValueError(f"objective {spec!r} names {name!r} twice.")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"objective {spec!r}: the weight of {name!r} must be a finite number > 0, got {weight}.")
        mix[name] = float(weight)
    if "fast" in mix and "reference" in mix:
        raise ValueError("objective: 'fast' and 'reference' estimate the same loss; choose one.")
    return mix


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


# ---------------------------------------------------------------------- running g with per-sample roles
def run_g(model, x: Tensor, is_x: Tensor, inverse: bool = False) -> Tensor:
    """``g_x`` (where ``is_x``) or ``g_y`` (elsewhere) of every sample, forward or inverse.

    With one shared network the whole batch goes through one call with a per-sample role input
    (``role_x`` / ``role_y``); with two networks each runs on its part and the results are put back in
    order.
    """
    (net_x, role_x), (net_y, role_y) = model.network("x"), model.network("y")
    if net_x is net_y:
        ctx = is_x.to(x.dtype) * (float(role_x) - float(role_y)) + float(role_y)
        return net_x.inverse(x, ctx) if inverse else net_x(x, ctx)
    out = torch.empty_like(x)
    for net, role, mask in ((net_x, role_x, is_x), (net_y, role_y, ~is_x)):
        if bool(mask.any()):
            part = x[mask]
            ctx = torch.full((part.shape[0],), float(role), dtype=x.dtype, device=x.device)
            out[mask] = (net.inverse(part, ctx) if inverse else net(part, ctx)).to(out.dtype)
    return out


def _encode(model, x: Tensor, space: str) -> Tensor:
    net, role = model.network(space)
    return net(x, torch.full((x.shape[0],), float(role), dtype=x.dtype, device=x.device))


def _decode(model, z: Tensor, space: str) -> Tensor:
    net, role = model.network(space)
    return net.inverse(z, torch.full((z.shape[0],), float(role), dtype=z.dtype, device=z.device))


def _flat_core(model, z: Tensor, t: Tensor, condition: Optional[Tensor] = None) -> Tensor:
    """``A(t) z`` (``A(t, c) z`` with a condition: class ids or pooled text embeddings, for conditional cores)."""
    if condition is None:
        return model.core(z.flatten(1), t.to(z.dtype)).view_as(z)
    return model.core(z.flatten(1), t.to(z.dtype), condition).view_as(z)


# ---------------------------------------------------------------------- objectives
def reference_objective(
    model, images: Tensor, noise: Tensor, t: Tensor, eps_y: Tensor, eps_x: Tensor, noise_level: float = 0.3,
    pixel_loss: str = "mse", ssim_weight: float = 0.1, condition: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """The paper's four terms with five full-batch passes of ``g`` (module docstring). Returns the terms."""
    z0 = _encode(model, noise, "y")
    z1 = _encode(model, images, "x")
    z1_pred = _flat_core(model, interpolate_latents(z0, z1, t), t, condition)
    return {
        "latent_flow": latent_flow_loss(z1_pred, z1),
        "noise_reconstruction": noise_reconstruction_loss(noise, _decode(model, z0 + noise_level * eps_y, "y")),
        "image_reconstruction": image_reconstruction_loss(
            images, _decode(model, z1 + noise_level * eps_x, "x"), pixel_loss, ssim_weight
        ),
        "prediction": prediction_loss(images, _decode(model, z1_pred, "x"), pixel_loss, ssim_weight),
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
    z = run_g(model, torch.cat([noise, images.to(noise.dtype)]), is_x)
    z0, z1 = z[:n], z[n:]
    z1_pred = _flat_core(model, interpolate_latents(z0, z1, t), t, condition)
    terms = {"latent_flow": latent_flow_loss(z1_pred, z1)}

    kind = decode_assignment(n, offset, dev)
    k4 = kind.view(-1, 1, 1, 1)
    to_decode = torch.where(k4 == 0, z0 + noise_level * eps_y, torch.where(k4 == 1, z1 + noise_level * eps_x, z1_pred))
    decoded = run_g(model, to_decode, kind != 0, inverse=True)
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


class LinearizerObjective(nn.Module):
    """The training loss as a module around a ``LinearizerModel`` (what ``accelerator.prepare`` wraps).

    ``forward(images, noise, t, eps_y, eps_x, offset=0, uniform=None)`` returns a dict with ``"loss"`` (the
    weighted sum) and every term. All randomness is passed in, so a step is a pure function of its inputs
    and the weights (what makes resumed runs bit-identical). With ``distill`` in the mix, ``images`` and
    ``noise`` must be teacher pairs; ``likelihood`` needs ``uniform`` (dequantisation noise, ``U(0, 1)``).

    Args:
        model: the ``LinearizerModel``.
        objective: a name or a weighted mix (:func:`parse_objective`): ``"fast"`` (default), ``"reference"``,
            ``"distill"``, ``"likelihood"``, e.g. ``"distill,fast"``.
        noise_level: σ of the latent perturbations (the reference's 0.3).
        pixel_loss / ssim_weight: the LPIPS substitute (:func:`pixel_distance`).
        weights: per-term multipliers (keys of :data:`TERMS`, ``distill_noise``; default 1 each).
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
        known = set(TERMS) | {"distill_noise"}
        unknown = set(weights or {}) - known
        if unknown:
            raise ValueError(f"Unknown loss terms {sorted(unknown)}; expected some of {', '.join(sorted(known))}.")
        self.model = model
        self.objective = ",".join(self.mix)
        self.noise_level = float(noise_level)
        self.pixel_loss, self.ssim_weight = pixel_loss, float(ssim_weight)
        self.weights = {k: 1.0 for k in known}
        self.weights.update({k: float(v) for k, v in (weights or {}).items()})
        self.scheduler = None
        self.compiled_flow = {}
        if any(name in self.mix for name in ONE_STEP_OBJECTIVES):
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

    def _distance(self, target: Tensor, prediction: Tensor) -> Tensor:
        return pixel_distance(target, prediction, self.pixel_loss, self.ssim_weight)

    def terms(self, images, noise, t, eps_y, eps_x, offset: int = 0, uniform: Optional[Tensor] = None,
              condition: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Every term of every component of the mix (unweighted); ``condition`` for conditional cores."""
        if condition is not None and self.scheduler is not None:
            raise ValueError("The one-step objectives (distill, likelihood) do not take conditions yet; train "
                             "conditional models with fast or reference.")
        kwargs = dict(noise_level=self.noise_level, pixel_loss=self.pixel_loss, ssim_weight=self.ssim_weight,
                      condition=condition)
        out: Dict[str, Tensor] = {}
        if "reference" in self.mix:
            reference = self.compiled_flow.get("reference", reference_objective)
            out.update(reference(self.model, images, noise, t, eps_y, eps_x, **kwargs))
        if "fast" in self.mix:
            fast = fast_objective
            if "fast" in self.compiled_flow and images.shape[0] >= 3:
                fast = self.compiled_flow["fast"]
                offset = torch.full((), int(offset) % 3, dtype=torch.long, device=images.device)
            out.update(fast(self.model, images, noise, t, eps_y, eps_x, offset=offset, **kwargs))
        if self.scheduler is not None:
            from .one_step import collapsed_operator

            B = collapsed_operator(self.model, self.scheduler, self.num_inference_steps, self.solver)
            if "distill" in self.mix:
                from .distill import distill_terms

                out.update(distill_terms(self.model, B, images, noise, self._distance))
            if "likelihood" in self.mix:
                from .likelihood import likelihood_terms

                if uniform is None:
                    raise ValueError("The likelihood objective needs `uniform` (dequantisation noise U(0, 1)).")
                out.update(likelihood_terms(self.model, B, images, uniform))
        return out

    def term_weight(self, term: str) -> float:
        """The weight of ``term`` in the loss: the component's mix weight × the term's own weight."""
        for name, names in COMPONENT_TERMS.items():
            if term in names:
                return self.mix[name] * self.weights.get(term, 1.0)
        flow = self.mix.get("fast", self.mix.get("reference", 0.0))
        return flow * self.weights[term]

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
    run_g(model, torch.cat([noise, images.to(noise.dtype)]), is_x)

"""Fit a trained model's noise prior (``models/noise_prior.py``) to the noise of its own training images.

Every image is inverted exactly (``LinearizerInversionPipeline``: ``B†`` of the same sampler run the pipeline
collapses), and a :class:`~diffusers_linearizer.models.noise_prior.NoisePrior` is fitted to the recovered noise
— per class for a class model, each image inverted under its own class at the guidance scale the prior is for.
Attach the result with ``model.set_noise_prior(prior)``; ``save_pretrained`` then stores it with the weights.

Examples:
    ```py
    >>> import torch
    >>> from diffusers_linearizer import LinearizerModel, LinearizerPipeline, LinearizerScheduler
    >>> from diffusers_linearizer.training.noise_prior import fit_noise_prior

    >>> model = LinearizerModel(sample_size=8, num_blocks=1, conditioner_channels=8, core_rank=4).eval()
    >>> pipe = LinearizerPipeline(model, LinearizerScheduler())
    >>> images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> prior = fit_noise_prior(pipe, images, rank=8, components=2)
    >>> model.set_noise_prior(prior)
    >>> model.config.noise_prior_rank, model.config.noise_prior_components
    (8, 2)

    ```
"""

from __future__ import annotations

from typing import Optional

import torch

from ..models.noise_prior import NoisePrior
from ..pipelines import LinearizerInversionPipeline

__all__ = ["recovered_noise", "fit_noise_prior"]


@torch.no_grad()
def recovered_noise(pipe, images: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
                    guidance_scale: Optional[float] = None, num_inference_steps: int = 100,
                    batch_size: int = 500) -> torch.Tensor:
    """The noise ``(N, D)`` (float64) that regenerates each of ``images`` ``(N, C, H, W)`` in ``[0, 1]`` through
    ``pipe``'s one-step map (a class model: under ``class_labels`` at ``guidance_scale``)."""
    inv = LinearizerInversionPipeline(**{k: v for k, v in pipe.components.items()
                                         if k in ("linearizer", "scheduler", "text_encoder", "tokenizer")})
    inv.set_progress_bar_config(disable=True)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if inv.conditioning == "text":
        raise ValueError("fit_noise_prior fits unconditional and class-conditioned models; a text model's noise "
                         "depends on each image's prompt.")
    if inv.conditioning == "class":
        if class_labels is None or len(class_labels) != len(images):
            raise ValueError("A class model's noise prior is fitted per class: pass class_labels, one per image.")
        class_labels = torch.as_tensor(class_labels).long()
    out = []
    for start in range(0, len(images), batch_size):
        kwargs = dict(num_inference_steps=num_inference_steps, output_type="pt", typicality=False)
        if class_labels is not None:
            kwargs.update(class_labels=class_labels[start:start + batch_size], guidance_scale=guidance_scale)
        out.append(inv(images[start:start + batch_size], **kwargs).noise.flatten(1).double().cpu())
    return torch.cat(out)


def fit_noise_prior(pipe, images: torch.Tensor, class_labels: Optional[torch.Tensor] = None, rank: int = 128,
                    components: int = 20, guidance_scale: Optional[float] = None, num_inference_steps: int = 100,
                    iterations: int = 30, seed: int = 0, batch_size: int = 500,
                    labels: Optional[torch.Tensor] = None) -> NoisePrior:
    """A :class:`NoisePrior` of subspace ``rank`` and ``components`` Gaussians (a class model: per class, so
    ``num_classes × components`` in all) fitted to the recovered noise of ``images``. ``labels`` (an unconditional
    model): fit ``components`` Gaussians to each label's noise (one: its mean and covariance) into one mixture,
    which samples without labels (``NoisePrior.fit``)."""
    model = pipe.linearizer
    groups = model.noise_groups
    if labels is not None and groups != 1:
        raise ValueError("labels supervise an unconditional model's prior; a class model's prior is fitted per class "
                         "(class_labels).")
    per = 1 if labels is None else torch.as_tensor(labels).unique().numel()
    prior = NoisePrior(model.latent_dim, rank, components * groups * per, groups)  # checks the sizes before any work
    noise = recovered_noise(pipe, images, class_labels, guidance_scale, num_inference_steps, batch_size)
    return prior.fit(noise, None if groups == 1 else class_labels, iterations=iterations, seed=seed, labels=labels)

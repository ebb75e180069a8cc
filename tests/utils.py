"""Shared test helpers: tiny models and weight perturbation."""

import torch

from diffusers_linearizer import LinearizerModel


def tiny_model(**overrides) -> LinearizerModel:
    """A LinearizerModel small enough for fp64 dense checks (D = 64)."""
    cfg = dict(
        sample_size=8,
        in_channels=1,
        num_blocks=2,
        conditioner_type="conv",
        conditioner_channels=8,
        conditioner_layers=1,
        core_type="lowrank",
        core_rank=4,
        core_hidden_dim=16,
        core_embedding_dim=8,
    )
    cfg.update(overrides)
    return LinearizerModel(**cfg)


@torch.no_grad()
def perturb_all(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    """Add N(0, scale²) noise to every floating parameter, so zero-initialised layers act."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        if p.is_floating_point():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * scale)

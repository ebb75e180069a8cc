"""Conditioner networks of the affine couplings.

A conditioner maps the conditioning half of the channels and the role/time input to the coupling's
parameters:

    (x_a of shape (N, C_in, H, W), ctx of shape (N,))  ↦  (N, C_out, H, W),

with ``C_out = 2·C_half`` (shift first, then raw log-scale). Every conditioner zero-initialises its
last layer, so a freshly built coupling is the identity.

New kinds are added to the registry :data:`CONDITIONERS` (name → factory); every factory accepts
``(in_channels, out_channels, sample_size, channels, layers, embedding_dim, **kwargs)``, so the
invertible network builds any kind through :func:`build_conditioner` without knowing it.
"""

from __future__ import annotations

import math
from typing import Callable, Dict

import torch
from torch import Tensor, nn

from .embeddings import sinusoidal_embedding
from .edm_unet import edm_conditioner

CTX_SCALE = 1000.0
"""Role/time inputs ``ctx ∈ [0, 1]`` are embedded as diffusion-style timesteps ``1000·ctx``."""


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (in place) and return it."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def _groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count ≤ ``max_groups`` that divides ``channels``."""
    return math.gcd(channels, max_groups)


class ResidualBlock(nn.Module):
    r"""Residual 3×3 conv block with a per-channel, per-sample bias ``b`` (from the ctx embedding).

    .. math::
        h ↦ h + \mathrm{conv}_2(\mathrm{SiLU}(N_2(\mathrm{conv}_1(\mathrm{SiLU}(N_1(h)))) + b))

    with ``N₁, N₂`` GroupNorms when ``norm=True`` and identities otherwise. ``b`` is added after the
    normalisation: a per-channel constant added before a GroupNorm would be (partly) removed by it.
    """

    def __init__(self, channels: int, norm: bool = True):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels) if norm else nn.Identity()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(channels), channels) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        r = self.conv1(self.act(self.norm1(h)))
        return h + self.conv2(self.act(self.norm2(r) + bias))


class ConvConditioner(nn.Module):
    r"""A small, fast conv net (the default conditioner).

    .. math::
        [b_1, …, b_L, b_{L+1}] = W_e\,\mathrm{emb}(1000·ctx) + c_e, \qquad
        h_0 = \mathrm{conv}_{in}(x), \qquad
        h_l = \mathrm{Res}_l(h_{l-1}, b_l), \qquad
        \mathrm{out} = \mathrm{conv}_{out}(\mathrm{SiLU}(N(h_L) + b_{L+1}))

    All convolutions are 3×3 with ``padding=1``; ``conv_out`` starts at zero.

    Args:
        in_channels / out_channels: ``C_in`` and ``C_out``.
        channels: hidden width.
        layers: number ``L`` of residual blocks (0 allowed).
        embedding_dim: size of the sinusoidal ctx embedding.
        norm: GroupNorm inside the residual blocks and before ``conv_out``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, channels: int = 64, layers: int = 2,
        embedding_dim: int = 64, norm: bool = True,
    ):
        super().__init__()
        if channels < 1 or layers < 0 or embedding_dim < 1:
            raise ValueError(
                f"ConvConditioner needs channels ≥ 1, layers ≥ 0, embedding_dim ≥ 1; got {channels}, {layers}, {embedding_dim}."
            )
        self.channels, self.embedding_dim = channels, embedding_dim
        self.ctx_proj = nn.Linear(embedding_dim, channels * (layers + 1))
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(channels, norm) for _ in range(layers))
        self.norm_out = nn.GroupNorm(_groups(channels), channels) if norm else nn.Identity()
        self.act = nn.SiLU()
        self.conv_out = zero_module(nn.Conv2d(channels, out_channels, 3, padding=1))

    def ctx_biases(self, ctx: Tensor) -> Tensor:
        """``[b_1, …, b_{L+1}]`` of shape ``(L+1, N, channels, 1, 1)``."""
        e = self.ctx_proj(sinusoidal_embedding(ctx * CTX_SCALE, self.embedding_dim).to(self.ctx_proj.weight.dtype))
        return e.view(e.shape[0], -1, self.channels, 1, 1).transpose(0, 1)

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
        biases = self.ctx_biases(ctx)
        h = self.conv_in(x)
        for block, b in zip(self.blocks, biases):
            h = block(h, b)
        return self.conv_out(self.act(self.norm_out(h) + biases[-1]))


class UNetConditioner(nn.Module):
    r"""A diffusers ``UNet2DModel`` conditioned on ``ctx`` as its timestep: ``out = U(x, 1000·ctx)``.

    Two resolution levels with widths ``(channels, 2·channels)``, ``layers`` ResNet layers per level
    (the reference's conditioner has two), no attention unless asked for through ``unet_kwargs``,
    GroupNorm groups dividing the widths. ``conv_out`` starts at zero. Needs ``sample_size ≥ 8`` and even.
    """

    def __init__(
        self, in_channels: int, out_channels: int, sample_size: int, channels: int = 32, layers: int = 1,
        **unet_kwargs,
    ):
        super().__init__()
        from diffusers import UNet2DModel

        if sample_size < 8 or sample_size % 2:
            raise ValueError(
                f"The 'unet' conditioner needs an even sample size ≥ 8 (after any squeeze), got {sample_size}."
            )
        if channels < 1 or layers < 1:
            raise ValueError(f"The 'unet' conditioner needs channels ≥ 1 and layers ≥ 1, got {channels}, {layers}.")
        config = dict(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=(channels, 2 * channels),
            layers_per_block=layers,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=_groups(channels),
            add_attention=False,
        )
        config.update(unet_kwargs)
        self.unet = UNet2DModel(**config)
        zero_module(self.unet.conv_out)

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
        return self.unet(x, ctx * CTX_SCALE).sample


def _conv_factory(in_channels, out_channels, sample_size, channels, layers, embedding_dim, **kwargs):
    return ConvConditioner(in_channels, out_channels, channels, layers, embedding_dim, **kwargs)


def _unet_factory(in_channels, out_channels, sample_size, channels, layers, embedding_dim, **kwargs):
    # UNet2DModel sizes its own time embedding from its width; embedding_dim is not used.
    return UNetConditioner(in_channels, out_channels, sample_size, channels, layers, **kwargs)


CONDITIONERS: Dict[str, Callable[..., nn.Module]] = {"conv": _conv_factory, "unet": _unet_factory}
"""Conditioner kinds: name → factory ``(in_channels, out_channels, sample_size, channels, layers,
embedding_dim, **kwargs) → nn.Module`` whose ``forward(x, ctx)`` returns ``(N, out_channels, H, W)``."""
CONDITIONERS["edm"] = edm_conditioner  # the paper code's EDM/DDPM++ U-Net (models/edm_unet.py), for converted checkpoints


def build_conditioner(
    kind: str, in_channels: int, out_channels: int, sample_size: int, channels: int, layers: int,
    embedding_dim: int = 64, **kwargs,
) -> nn.Module:
    """Build a registered conditioner; ``ValueError`` listing the choices for an unknown ``kind``."""
    if kind not in CONDITIONERS:
        raise ValueError(f"Unknown conditioner_type {kind!r}; expected one of {', '.join(sorted(CONDITIONERS))}.")
    return CONDITIONERS[kind](in_channels, out_channels, sample_size, channels, layers, embedding_dim, **kwargs)

"""An EDM-style ("DDPM++") U-Net used as a coupling conditioner.

The architecture is the one described by Song et al. (2021, *Score-Based Generative Modeling through
Stochastic Differential Equations*, the DDPM++ network) and Karras et al. (2022, *Elucidating the Design
Space of Diffusion-Based Generative Models*, appendix F): a time embedding MLP, an encoder of residual
blocks with 2× FIR downsampling between resolutions, a decoder that mirrors it with skip connections,
self-attention at chosen resolutions, and residual sums scaled by ``√½``. The original code of the
Linearizer paper uses such a network as the conditioner of its affine couplings; the module and
parameter names below follow that network's usual layout so that those checkpoints map onto this one
tensor for tensor (:mod:`diffusers_linearizer.conversion`).

Numerical conventions that matter for bit-compatibility with checkpoints trained that way:

* the time embedding is ``[sin(ω_j t)]_j ⊕ [cos(ω_j t)]_j`` with ``ω_j = (1/10000)^{j/(k−1)}`` (both ends
  of the frequency range included), ``k = channels/2``, the frequencies rounded to float32;
* attention weights ``softmax(qᵀk/√c)`` are always computed in float32 (then cast back);
* the time is used as it comes (the Linearizer's role input ``t ∈ {0, 1}``), not rescaled.

Conditioner contract (see :mod:`.conditioners`): ``forward(x, ctx)`` maps ``(N, C_in, H, W)`` and ``(N,)``
to ``(N, C_out, H, W)``; the output convolution starts at zero, so a fresh coupling is the identity.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SKIP_SCALE = math.sqrt(0.5)


def positional_embedding(t: Tensor, channels: int, max_positions: float = 10000.0) -> Tensor:
    r"""``[sin(ω_0 t) … sin(ω_{k−1} t), cos(ω_0 t) … cos(ω_{k−1} t)]``, ``ω_j = max_positions^{−j/(k−1)}``.

    ``t`` of shape ``(N,)``; returns ``(N, channels)`` in ``t``'s dtype. The frequencies are computed in
    float32 whatever the dtype of ``t`` (the convention of the networks this one is compatible with).
    """
    k = channels // 2
    if k < 2:
        raise ValueError(f"positional_embedding needs channels ≥ 4, got {channels}.")
    exponents = torch.arange(k, dtype=torch.float32, device=t.device) / (k - 1)
    freqs = (1.0 / max_positions) ** exponents
    angles = torch.outer(t, freqs.to(t.dtype))
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def edm_group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups and at least 4 channels per group."""
    return nn.GroupNorm(max(1, min(32, channels // 4)), channels, eps=eps)


class EDMLinear(nn.Module):
    """``y = x Wᵀ + b`` (product and bias as two operations, as in the compatible networks)."""

    def __init__(self, in_features: int, out_features: int, init_scale: float = 1.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = init_scale * math.sqrt(6.0 / (in_features + out_features))
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.to(x.dtype).t() + self.bias.to(x.dtype)


class EDMConv2d(nn.Module):
    """A ``kernel × kernel`` convolution (``kernel = 0``: none), optionally preceded by 2× resampling.

    Resampling is a depthwise FIR filter ``f fᵀ / (Σf)²`` built from ``resample_filter`` (``[1, 1]``: 2×2
    box, i.e. average pooling for ``down`` and nearest-neighbour upsampling for ``up``), applied with
    stride 2 (``down``) or as a stride-2 transposed convolution with gain 4 (``up``). The filter is a
    buffer, ``resample_filter``, present only on resampling layers.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), init_scale: float = 1.0):
        super().__init__()
        if up and down:
            raise ValueError("EDMConv2d resamples up or down, not both.")
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        if kernel:
            fan = kernel * kernel
            bound = init_scale * math.sqrt(6.0 / (fan * (in_channels + out_channels)))
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel).uniform_(-bound, bound))
            self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        else:
            self.weight = self.bias = None
        if up or down:
            f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
            self.register_buffer("resample_filter", (torch.outer(f, f) / f.sum().square())[None, None])
        else:
            self.resample_filter = None

    def forward(self, x: Tensor) -> Tensor:
        if self.resample_filter is not None:
            f = self.resample_filter.to(x.dtype)
            c, pad = x.shape[1], (f.shape[-1] - 1) // 2
            if self.down:
                x = F.conv2d(x, f.expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)
            else:
                x = F.conv_transpose2d(x, (4 * f).expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)
        if self.weight is not None:
            x = F.conv2d(x, self.weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
            if self.bias is not None:
                x = x + self.bias.to(x.dtype).view(1, -1, 1, 1)
        return x


class EDMBlock(nn.Module):
    r"""Residual block with an additive time bias and optional single-head self-attention.

    .. math::
        h = \mathrm{conv_0}(\mathrm{SiLU}(N_0(x))) + W_a e,\qquad
        y = \big(\mathrm{conv_1}(\mathrm{drop}(\mathrm{SiLU}(N_1(h)))) + \mathrm{skip}(x)\big)·\sqrt{½}

    then, with attention, ``y ← (y + proj(attn(N_2(y))))·√½``. ``up``/``down`` resample in ``conv0`` and
    in the 1×1 ``skip`` projection (which exists whenever the shape changes).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, dropout: float = 0.0, eps: float = 1e-6,
                 resample_filter: Sequence[float] = (1, 1)):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 1 if attention else 0
        self.dropout = float(dropout)
        self.norm0 = edm_group_norm(in_channels, eps)
        self.conv0 = EDMConv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = EDMLinear(emb_channels, out_channels)
        self.norm1 = edm_group_norm(out_channels, eps)
        self.conv1 = EDMConv2d(out_channels, out_channels, 3, init_scale=1e-5)
        self.skip = None
        if in_channels != out_channels or up or down:
            self.skip = EDMConv2d(in_channels, out_channels, 1, up=up, down=down, resample_filter=resample_filter)
        if attention:
            self.norm2 = edm_group_norm(out_channels, eps)
            self.qkv = EDMConv2d(out_channels, 3 * out_channels, 1, init_scale=math.sqrt(0.2))
            self.proj = EDMConv2d(out_channels, out_channels, 1, init_scale=1e-5)

    def attend(self, h: Tensor) -> Tensor:
        """Self-attention over pixels; the ``qkv`` channels are interleaved per channel (q, k, v, q, k, v, …)."""
        n, c, height, width = h.shape
        heads = self.num_heads
        q, k, v = self.qkv(h).reshape(n * heads, c // heads, 3, height * width).unbind(2)
        logits = torch.einsum("ncq,nck->nqk", q.to(torch.float32), (k / math.sqrt(k.shape[1])).to(torch.float32))
        weights = logits.softmax(dim=2).to(q.dtype)
        out = torch.einsum("nqk,nck->ncq", weights, v)
        return self.proj(out.reshape(n, c, height, width))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = h + self.affine(emb).to(h.dtype)[:, :, None, None]
        h = self.conv1(F.dropout(F.silu(self.norm1(h)), p=self.dropout, training=self.training))
        h = (h + (x if self.skip is None else self.skip(x))) * SKIP_SCALE
        if self.num_heads:
            h = (self.attend(self.norm2(h)) + h) * SKIP_SCALE
        return h


class EDMUNet(nn.Module):
    """The DDPM++ U-Net: ``(x, t) ↦ out`` with ``x`` of shape ``(N, C_in, H, H)`` and ``t`` of shape ``(N,)``.

    Args:
        sample_size: H (= W), divisible by ``2^(len(channel_mult) − 1)``.
        in_channels / out_channels: ``C_in`` and ``C_out``.
        model_channels: base width (also the size of the time embedding).
        channel_mult: width multiplier per resolution level.
        num_blocks: residual blocks per level in the encoder (the decoder has one more per level).
        attn_resolutions: resolutions whose blocks attend (encoder blocks, the last decoder block of a level,
            and always the first block of the bottleneck).
        dropout: dropout inside the residual blocks (training only).
        emb_mult: time-embedding MLP width as a multiple of ``model_channels``.
        resample_filter: FIR filter of the 2× resampling.

    Modules: ``map_layer0``/``map_layer1`` (embedding MLP), ``enc`` and ``dec`` (``ModuleDict`` keyed
    ``"{res}x{res}_conv|_down|_blockI"`` and ``"{res}x{res}_in0|_in1|_up|_blockI"``), ``out_norm``, ``out_conv``.
    """

    def __init__(self, sample_size: int, in_channels: int, out_channels: int, model_channels: int = 16,
                 channel_mult: Sequence[int] = (1, 1), num_blocks: int = 2, attn_resolutions: Iterable[int] = (16,),
                 dropout: float = 0.1, emb_mult: int = 4, resample_filter: Sequence[float] = (1, 1)):
        super().__init__()
        levels = len(channel_mult)
        if levels < 1 or model_channels < 4 or num_blocks < 0:
            raise ValueError(
                f"EDMUNet needs ≥ 1 level, model_channels ≥ 4 and num_blocks ≥ 0; got {levels}, {model_channels}, {num_blocks}."
            )
        if sample_size < 1 or sample_size % (2 ** (levels - 1)):
            raise ValueError(
                f"EDMUNet with {levels} levels needs a sample size divisible by {2 ** (levels - 1)}, got {sample_size}."
            )
        attn = {int(r) for r in attn_resolutions}
        emb = model_channels * emb_mult
        self.model_channels = model_channels
        self.map_layer0 = EDMLinear(model_channels, emb)
        self.map_layer1 = EDMLinear(emb, emb)

        def block(cin, cout, **kw):
            return EDMBlock(cin, cout, emb, dropout=dropout, resample_filter=resample_filter, **kw)

        self.enc, self.dec = nn.ModuleDict(), nn.ModuleDict()
        widths, c = [], in_channels
        for level, mult in enumerate(channel_mult):
            res = sample_size >> level
            tag = f"{res}x{res}"
            if level == 0:
                self.enc[f"{tag}_conv"] = EDMConv2d(c, model_channels, 3)
                c = model_channels
            else:
                self.enc[f"{tag}_down"] = block(c, c, down=True)
            widths.append(c)
            for i in range(num_blocks):
                self.enc[f"{tag}_block{i}"] = block(c, model_channels * mult, attention=res in attn)
                c = model_channels * mult
                widths.append(c)
        self._takes_skip = set()
        for level in reversed(range(levels)):
            res = sample_size >> level
            tag = f"{res}x{res}"
            if level == levels - 1:
                self.dec[f"{tag}_in0"] = block(c, c, attention=True)
                self.dec[f"{tag}_in1"] = block(c, c)
            else:
                self.dec[f"{tag}_up"] = block(c, c, up=True)
            for i in range(num_blocks + 1):
                cin, c = c + widths.pop(), model_channels * channel_mult[level]
                self.dec[f"{tag}_block{i}"] = block(cin, c, attention=i == num_blocks and res in attn)
                self._takes_skip.add(f"{tag}_block{i}")
        self.out_norm = edm_group_norm(c)
        self.out_conv = EDMConv2d(c, out_channels, 3)
        with torch.no_grad():
            self.out_conv.weight.zero_()
            self.out_conv.bias.zero_()

    def embed(self, t: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
        """The block conditioning ``SiLU(L₁(SiLU(L₀(pos(t)))))``, shape ``(N, emb_mult·model_channels)``."""
        e = positional_embedding(t.to(dtype or self.map_layer0.weight.dtype), self.model_channels)
        return F.silu(self.map_layer1(F.silu(self.map_layer0(e))))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.embed(t, x.dtype)
        skips = []
        for layer in self.enc.values():
            x = layer(x) if isinstance(layer, EDMConv2d) else layer(x, emb)
            skips.append(x)
        for name, layer in self.dec.items():
            if name in self._takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


def edm_conditioner(in_channels: int, out_channels: int, sample_size: int, channels: int = 16, layers: int = 2,
                    embedding_dim: Optional[int] = None, **kwargs) -> EDMUNet:
    """Conditioner factory for the registry: an :class:`EDMUNet` of width ``channels`` with ``layers``
    residual blocks per level; ``kwargs`` go to :class:`EDMUNet` (defaults: two levels ``(1, 1)``, attention at
    16×16, dropout 0.1 — the Linearizer paper's configuration). ``embedding_dim`` is unused (the time
    embedding has ``channels`` features)."""
    return EDMUNet(sample_size, in_channels, out_channels, model_channels=channels, num_blocks=layers, **kwargs)

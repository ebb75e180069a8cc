r"""A multi-scale invertible network: half of the channels leave the flow at every scale (Glow / RealNVP's
factoring out), the rest are squeezed to half the resolution and transformed further.

With scales ``l = 0 … L−1`` and ``h_0 = x`` of shape ``(C, H, W)``::

    u_l        = B_{l,K}(…B_{l,1}(S(h_l))…)            (4C_l, H_l/2, W_l/2), S the 2×2 squeeze
    z_l, h_l+1 = u_l split in two channel halves        (the last scale keeps all of u_{L−1})
    out_l      = S⁻¹([z_l, out_{l+1}])                   (C_l, H_l, W_l),  out_{L−1} = S⁻¹(u_{L−1})

and ``g(x) = out_0``. Every step is a bijection of the same dimension, so the latent keeps the image's shape
(``D = C·H·W``, what the linear core acts on) and

    log|det ∂g/∂x| = Σ_l Σ_k log|det ∂B_{l,k}|       (squeezes and splits are permutations: log-det 0).

Unlike Glow no scale has a prior of its own: the whole latent goes to the core. What the deeper scales buy is
reach: a 3×3 conditioner at scale ``l`` sees a ``3·2^{l+1}``-pixel window of the image, at a quarter of the
previous scale's pixels. ``H`` and ``W`` must be multiples of ``2^L`` (:attr:`size_multiple`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .invertible import InvertibleNetwork, _zeros, as_ctx

__all__ = ["MultiScaleNetwork", "build_invertible_network"]


class MultiScaleNetwork(InvertibleNetwork):
    r"""``g`` with ``num_scales`` squeeze-and-split scales of ``num_blocks`` flow blocks each (formula in the module
    docstring). Takes :class:`~diffusers_linearizer.models.invertible.InvertibleNetwork`'s arguments (its
    ``squeeze`` must be ``"auto"`` or ``True``: every scale squeezes) and ``num_scales ≥ 2``.

    Examples:
        >>> import torch
        >>> g = MultiScaleNetwork(1, 32, num_blocks=1, num_scales=3, conditioner_channels=8, conditioner_layers=1)
        >>> x = torch.randn(2, 1, 32, 32)
        >>> z, logdet = g(x, return_logdet=True)
        >>> z.shape, bool(torch.allclose(g.inverse(z), x, atol=1e-5))
        (torch.Size([2, 1, 32, 32]), True)
    """

    def __init__(self, in_channels: int, sample_size: int, num_blocks: int = 4, num_scales: int = 2, **kwargs):
        if not (isinstance(num_scales, int) and not isinstance(num_scales, bool) and num_scales >= 2):
            raise ValueError(f"MultiScaleNetwork needs num_scales ≥ 2 (1 is InvertibleNetwork), got {num_scales!r}.")
        if kwargs.get("squeeze", "auto") is False:
            raise ValueError("A multi-scale network squeezes at every scale; squeeze must be 'auto' or True, got False.")
        if sample_size % (2 ** num_scales):
            raise ValueError(f"{num_scales} scales halve the resolution {num_scales} times: sample_size must be a "
                             f"multiple of {2 ** num_scales}, got {sample_size}.")
        super().__init__(in_channels, sample_size, 0, **dict(kwargs, squeeze=True))
        self.num_scales = num_scales
        self.scales = nn.ModuleList()
        channels, size = in_channels * 4, sample_size // 2
        for _ in range(num_scales):
            self.scales.append(nn.ModuleList(self.flow_block(channels, size) for _ in range(num_blocks)))
            channels, size = channels * 2, size // 2  # the kept half (channels / 2), squeezed (× 4)

    @property
    def size_multiple(self) -> int:
        """``2^L``: H and W are halved once per scale."""
        return 2 ** self.num_scales

    def check_input(self, x: Tensor, name: str = "input") -> None:
        super().check_input(x, name)
        m = self.size_multiple
        if self.size_free and (x.shape[2] % m or x.shape[3] % m):
            raise ValueError(f"Expected {name} whose height and width are multiples of {m} ({self.num_scales} "
                             f"scales), got {tuple(x.shape)}.")

    def _forward_scale(self, level: int, h: Tensor, ctx: Tensor):
        u, _ = self.squeeze(h)
        logdet = _zeros(h)
        for block in self.scales[level]:
            u, ld = block(u, ctx)
            logdet = logdet + ld
        if level + 1 < self.num_scales:
            z, kept = u.chunk(2, dim=1)
            rest, ld = self._forward_scale(level + 1, kept, ctx)
            u, logdet = torch.cat([z, rest], dim=1), logdet + ld
        return self.squeeze.inverse(u), logdet

    def _inverse_scale(self, level: int, out: Tensor, ctx: Tensor) -> Tensor:
        u, _ = self.squeeze(out)
        if level + 1 < self.num_scales:
            z, rest = u.chunk(2, dim=1)
            u = torch.cat([z, self._inverse_scale(level + 1, rest, ctx)], dim=1)
        for block in reversed(self.scales[level]):
            u = block.inverse(u, ctx)
        return self.squeeze.inverse(u)

    def forward(self, x: Tensor, ctx=None, return_logdet: bool = False):
        """``z = g(x; ctx)``, and ``log|det ∂z/∂x|`` per sample when ``return_logdet``."""
        self.check_input(x)
        z, logdet = self._forward_scale(0, x, as_ctx(ctx, x.shape[0], x))
        return (z, logdet) if return_logdet else z

    def inverse(self, z: Tensor, ctx=None) -> Tensor:
        """``x = g⁻¹(z; ctx)``."""
        self.check_input(z, "latent")
        return self._inverse_scale(0, z, as_ctx(ctx, z.shape[0], z))


def build_invertible_network(num_scales: int = 1, **kwargs) -> InvertibleNetwork:
    """:class:`InvertibleNetwork` for ``num_scales = 1`` (one resolution, today's layout), else a
    :class:`MultiScaleNetwork`; ``kwargs`` are their shared arguments."""
    if num_scales == 1:
        return InvertibleNetwork(**kwargs)
    return MultiScaleNetwork(num_scales=num_scales, **kwargs)

"""Sinusoidal embeddings of scalar inputs (times, role inputs).

Shared by the coupling conditioners of the invertible networks and by the time-dependent linear
cores.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    r"""Sinusoidal features of a batch of scalars.

    .. math::
        \mathrm{emb}(t) = [\cos(\omega_0 t), …, \cos(\omega_{k-1} t), \sin(\omega_0 t), …, \sin(\omega_{k-1} t)],
        \qquad \omega_j = P^{-j/k}, \quad k = \lfloor \mathrm{dim}/2 \rfloor,

    with ``P = max_period`` (frequencies from 1 down to about ``1/P``). An odd ``dim`` gets a trailing
    zero column. The scale of ``t`` is the caller's choice (diffusion-style callers pass ``1000·t`` for
    ``t ∈ [0, 1]``).

    Args:
        t: shape ``(N,)``; integer inputs are converted to the default float dtype, floating inputs
            keep their dtype (fp64 in, fp64 out; half inputs are computed in fp32 and cast back).
        dim: number of features, ≥ 1.
        max_period: the longest period P.

    Returns:
        shape ``(N, dim)``.
    """
    if not isinstance(t, Tensor):
        raise ValueError(f"Expected t to be a torch.Tensor of shape (N,), got {type(t).__name__}.")
    if t.ndim != 1:
        raise ValueError(f"Expected t of shape (N,), got {tuple(t.shape)}.")
    if dim < 1:
        raise ValueError(f"Embedding dim must be ≥ 1, got {dim}.")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    out_dtype = t.dtype
    t = t.to(torch.promote_types(t.dtype, torch.float32))  # half-precision phases would be off by ~1e-3·ωt
    half = dim // 2
    exponents = torch.arange(half, dtype=t.dtype, device=t.device) / max(half, 1)
    freqs = torch.exp(-math.log(max_period) * exponents)
    angles = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(out_dtype)

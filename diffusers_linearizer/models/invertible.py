"""The invertible network ``g`` with an exact inverse.

Every layer maps ``(x, ctx) ↦ (y, logdet)`` with ``forward`` and back with ``inverse(y, ctx) ↦ x``;
``x`` and ``y`` are ``(N, C, H, W)``, ``ctx`` is the role/time input of shape ``(N,)`` (used only by the
couplings' conditioners) and ``logdet = log|det ∂y/∂x|`` per sample, shape ``(N,)``, summed in at least
float32 whatever precision the layers run in (half weights or bf16/fp16 autocast).

Network (the reference architecture, see ``docs/design.md``)::

    [Squeeze2x2] → FlowBlock × num_blocks → [Squeeze2x2⁻¹]
    FlowBlock = ActNorm → AffineCoupling(update first half) → AffineCoupling(update second half)
                → InvertibleConv1x1

The latent keeps the image's shape. Each inverse costs the same as its forward: no matrix inversion
of anything larger than ``C × C`` and no extra network passes.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conditioners import build_conditioner

CLAMPS = ("tanh", "hard")
CONV1X1 = ("lu", "plain")


def _wide(t: Tensor) -> Tensor:
    """``t`` in at least float32: log-determinants are summed there even when the layers run in half
    precision (a half model, or bf16/fp16 autocast)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _zeros(x: Tensor) -> Tensor:
    return _wide(x.new_zeros(x.shape[0]))


def as_ctx(ctx, n: int, like: Tensor) -> Tensor:
    """Broadcast the role input (``None`` → 0, float, 0-d or ``(N,)`` tensor) to ``(n,)`` in ``like``'s dtype."""
    if ctx is None:
        return like.new_zeros(n)
    ctx = torch.as_tensor(ctx, dtype=like.dtype, device=like.device)
    if ctx.ndim == 0:
        ctx = ctx.expand(n)
    if ctx.shape != (n,):
        raise ValueError(f"Expected ctx to be None, a float or a tensor of shape ({n},), got shape {tuple(ctx.shape)}.")
    return ctx


class Squeeze2x2(nn.Module):
    r"""Space-to-depth: ``(C, H, W) → (4C, H/2, W/2)``, ``y[4c + 2i + j, h, w] = x[c, 2h + i, 2w + j]``.

    A permutation of the entries, so ``logdet = 0``.
    """

    def forward(self, x: Tensor, ctx: Optional[Tensor] = None):
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze2x2 needs even H and W, got H = {h}, W = {w}.")
        return F.pixel_unshuffle(x, 2), _zeros(x)

    def inverse(self, y: Tensor, ctx: Optional[Tensor] = None) -> Tensor:
        if y.shape[-3] % 4:
            raise ValueError(f"Squeeze2x2.inverse needs a channel count divisible by 4, got {y.shape[-3]}.")
        return F.pixel_shuffle(y, 2)


class ActNorm(nn.Module):
    r"""Per-channel affine map ``y = (x + b)·exp(s)``; ``logdet = H·W·Σ_c s_c``.

    Data-dependent initialisation: the first forward in training mode on a not yet initialised layer
    sets ``b = −mean(x)``, ``s = −log(std(x) + eps)`` (statistics over batch and pixels), so that
    batch's output has zero mean and unit variance per channel. The flag ``initialized`` is a buffer:
    it is saved and loaded with the state dict, and a loaded layer is never re-initialised. Layers
    that never ran in training mode stay as constructed (the identity before any training).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))
        self._known_initialized = False  # python-side cache of the flag (avoids a device sync per call)

    def _load_from_state_dict(self, *args, **kwargs):
        self._known_initialized = False
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """``b = −mean``, ``s = −log(std + eps)`` per channel over ``(N, H, W)`` of ``x``."""
        count = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x.detach(), dim=(0, 2, 3), correction=1 if count > 1 else 0)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(var.sqrt() + self.eps))
        self.initialized.fill_(1)
        self._known_initialized = True

    def _maybe_initialize(self, x: Tensor) -> None:
        if self._known_initialized:
            return
        if bool(self.initialized):
            self._known_initialized = True
        else:
            self.initialize(x)

    def forward(self, x: Tensor, ctx: Optional[Tensor] = None):
        if self.training:
            self._maybe_initialize(x)
        s = self.log_scale
        y = (x + self.bias.view(1, -1, 1, 1)) * torch.exp(s).view(1, -1, 1, 1)
        logdet = (x.shape[2] * x.shape[3]) * _wide(s).sum()
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, ctx: Optional[Tensor] = None) -> Tensor:
        """``x = y·exp(−s) − b``."""
        return y * torch.exp(-self.log_scale).view(1, -1, 1, 1) - self.bias.view(1, -1, 1, 1)


class InvertibleConv1x1(nn.Module):
    r"""Invertible channel mixing ``y[:, :, h, w] = W x[:, :, h, w]``; ``logdet = H·W·log|det W|``.

    ``parametrization="lu"``: ``W = P L (U + diag(σ ⊙ exp(λ)))`` with a fixed permutation ``P`` and
    sign vector ``σ`` (buffers), unit lower-triangular ``L`` and strictly upper-triangular ``U``;
    ``log|det W| = Σ λ``, and ``W⁻¹ = (U + diag(σ e^λ))⁻¹ L⁻¹ Pᵀ`` comes from two C×C triangular solves.
    Initialised as the LU factorisation of a random orthogonal matrix (torch's global RNG).

    ``parametrization="plain"``: an unconstrained ``W`` (the reference code's), ``W⁻¹`` by
    ``torch.linalg.inv`` and ``log|det W|`` by ``slogdet``.
    """

    def __init__(self, channels: int, parametrization: str = "lu"):
        super().__init__()
        if parametrization not in CONV1X1:
            raise ValueError(f"Unknown conv1x1 parametrization {parametrization!r}; expected one of {', '.join(CONV1X1)}.")
        self.parametrization = parametrization
        q = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64)).Q
        if parametrization == "plain":
            self.weight = nn.Parameter(q.to(torch.get_default_dtype()))
            return
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", p.argmax(dim=1))  # (P v)[i] = v[perm[i]]
        self.register_buffer("sign", torch.sign(diag).to(dtype))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(diag.abs()).to(dtype))

    @staticmethod
    def _wide(t: Tensor) -> Tensor:
        """C×C algebra runs in at least fp32 (half precision has no triangular solve / inverse)."""
        return _wide(t)

    def _factors(self):
        """``(L, U + diag(σ e^λ))`` with the masks applied (entries outside the triangles never act)."""
        lower, upper, log_s = self._wide(self.lower), self._wide(self.upper), self._wide(self.log_s)
        eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
        return torch.tril(lower, -1) + eye, torch.triu(upper, 1) + torch.diag(self.sign.to(log_s.dtype) * torch.exp(log_s))

    def matrix(self) -> Tensor:
        """The C×C matrix ``W`` (in at least fp32)."""
        if self.parametrization == "plain":
            return self._wide(self.weight)
        lower, upper = self._factors()
        return (lower @ upper)[self.perm]

    def inverse_matrix(self) -> Tensor:
        """The C×C matrix ``W⁻¹`` (two triangular solves for ``"lu"``; in at least fp32)."""
        if self.parametrization == "plain":
            return torch.linalg.inv(self._wide(self.weight))
        lower, upper = self._factors()
        p_t = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)[:, self.perm]  # Pᵀ
        a = torch.linalg.solve_triangular(lower, p_t, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, a, upper=True)

    def log_abs_det(self) -> Tensor:
        """``log|det W|``."""
        if self.parametrization == "plain":
            return torch.linalg.slogdet(self._wide(self.weight)).logabsdet
        return self._wide(self.log_s).sum()

    @staticmethod
    def _mix(m: Tensor, x: Tensor) -> Tensor:
        return F.conv2d(x, m.to(x.dtype)[:, :, None, None])

    def forward(self, x: Tensor, ctx: Optional[Tensor] = None):
        logdet = (x.shape[2] * x.shape[3]) * self.log_abs_det().to(torch.promote_types(x.dtype, torch.float32))
        return self._mix(self.matrix(), x), logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, ctx: Optional[Tensor] = None) -> Tensor:
        return self._mix(self.inverse_matrix(), y)


class AffineCoupling(nn.Module):
    r"""Affine coupling that updates one channel half given the other (``x = [x₁, x₂]`` by ``chunk(2)``).

    ``update="first"``:  ``y₁ = (x₁ + t(x₂, ctx))·exp(s(x₂, ctx))``, ``y₂ = x₂``;
    ``update="second"``: ``y₂ = (x₂ + t(x₁, ctx))·exp(s(x₁, ctx))``, ``y₁ = x₁``.

    The conditioner returns ``[t, r]`` (shift first, then raw log-scale); the log-scale is
    ``s = v·tanh(r/v)`` (``clamp="tanh"``, smooth) or ``s = clamp(r, −v, v)`` (``clamp="hard"``, the
    reference's, with v = 5). ``logdet = Σ s`` over the updated half.
    """

    def __init__(self, conditioner: nn.Module, update: str = "first", clamp: str = "tanh", clamp_value: float = 2.0):
        super().__init__()
        if update not in ("first", "second"):
            raise ValueError(f"Unknown update {update!r}; expected 'first' or 'second'.")
        if clamp not in CLAMPS:
            raise ValueError(f"Unknown clamp {clamp!r}; expected one of {', '.join(CLAMPS)}.")
        if not clamp_value > 0:
            raise ValueError(f"clamp_value must be positive, got {clamp_value}.")
        self.conditioner = conditioner
        self.update, self.clamp, self.clamp_value = update, clamp, float(clamp_value)

    def log_scale(self, raw: Tensor) -> Tensor:
        """``s = v·tanh(r/v)`` or ``clamp(r, −v, v)``."""
        v = self.clamp_value
        return v * torch.tanh(raw / v) if self.clamp == "tanh" else raw.clamp(-v, v)

    def shift_log_scale(self, x_cond: Tensor, ctx: Tensor):
        """``(t, s)`` from the conditioning half."""
        shift, raw = self.conditioner(x_cond, ctx).chunk(2, dim=1)
        return shift, self.log_scale(raw)

    def _halves(self, x: Tensor):
        """``(active, conditioning)`` halves."""
        x1, x2 = x.chunk(2, dim=1)
        return (x1, x2) if self.update == "first" else (x2, x1)

    def _join(self, active: Tensor, cond: Tensor) -> Tensor:
        return torch.cat([active, cond] if self.update == "first" else [cond, active], dim=1)

    def forward(self, x: Tensor, ctx: Tensor):
        a, c = self._halves(x)
        shift, s = self.shift_log_scale(c, ctx)
        return self._join((a + shift) * torch.exp(s), c), _wide(s).flatten(1).sum(1)

    def inverse(self, y: Tensor, ctx: Tensor) -> Tensor:
        """``x_a = y_a·exp(−s) − t``."""
        a, c = self._halves(y)
        shift, s = self.shift_log_scale(c, ctx)
        return self._join(a * torch.exp(-s) - shift, c)


class FlowBlock(nn.Module):
    """ActNorm → coupling F (update x₁ given x₂) → coupling G (update x₂ given y₁) → 1×1 conv.

    ``conditioner_f`` and ``conditioner_g`` map ``(N, C/2, H, W)`` to ``(N, C, H, W)``.
    """

    def __init__(
        self, channels: int, conditioner_f: nn.Module, conditioner_g: nn.Module, clamp: str = "tanh",
        clamp_value: float = 2.0, conv1x1: str = "lu",
    ):
        super().__init__()
        if channels % 2:
            raise ValueError(f"FlowBlock needs an even channel count, got {channels}.")
        self.actnorm = ActNorm(channels)
        self.coupling_f = AffineCoupling(conditioner_f, "first", clamp, clamp_value)
        self.coupling_g = AffineCoupling(conditioner_g, "second", clamp, clamp_value)
        self.conv1x1 = InvertibleConv1x1(channels, conv1x1)

    def layers(self):
        return (self.actnorm, self.coupling_f, self.coupling_g, self.conv1x1)

    def forward(self, x: Tensor, ctx: Tensor):
        logdet = 0
        for layer in self.layers():
            x, ld = layer(x, ctx)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor, ctx: Tensor) -> Tensor:
        for layer in reversed(self.layers()):
            y = layer.inverse(y, ctx)
        return y


class InvertibleNetwork(nn.Module):
    r"""``g``: an invertible map ``(N, C, H, W) → (N, C, H, W)`` conditioned on a role input ``ctx``.

    ``z = S⁻¹(B_K(…B_1(S(x), ctx)…, ctx))`` with ``S`` the 2×2 squeeze (when squeezing) and ``B_k``
    :class:`FlowBlock`\ s. One network serves as both ``g_x`` (``ctx = 1``) and ``g_y`` (``ctx = 0``).

    Args:
        in_channels / sample_size: image shape ``C × H × W`` with ``H = W = sample_size``.
        num_blocks: number of flow blocks.
        conditioner_type: a key of :data:`~diffusers_linearizer.models.conditioners.CONDITIONERS`.
        conditioner_channels / conditioner_layers: conditioner width and depth.
        clamp / clamp_value: log-scale bound of the couplings (``"tanh"`` or ``"hard"``).
        conv1x1: ``"lu"`` or ``"plain"``.
        squeeze: ``"auto"`` (squeeze iff C is odd), ``True`` or ``False``.
        time_embedding_dim: size of the conditioners' sinusoidal ctx embedding.
        conditioner_kwargs: extra keyword arguments for the conditioner factory.
        size_free: take images of any H × W (even ones when squeezing), not only ``sample_size``²; only for
            conditioners that do not depend on the size (``"conv"``).
    """

    def __init__(
        self,
        in_channels: int,
        sample_size: int,
        num_blocks: int = 4,
        conditioner_type: str = "conv",
        conditioner_channels: int = 64,
        conditioner_layers: int = 2,
        clamp: str = "tanh",
        clamp_value: float = 2.0,
        conv1x1: str = "lu",
        squeeze: Union[str, bool] = "auto",
        time_embedding_dim: int = 64,
        conditioner_kwargs: Optional[dict] = None,
        size_free: bool = False,
    ):
        super().__init__()
        if squeeze not in ("auto", True, False):
            raise ValueError(f"Unknown squeeze {squeeze!r}; expected 'auto', True or False.")
        if in_channels < 1 or sample_size < 1 or num_blocks < 0:
            raise ValueError(
                f"Need in_channels ≥ 1, sample_size ≥ 1, num_blocks ≥ 0; got {in_channels}, {sample_size}, {num_blocks}."
            )
        do_squeeze = (in_channels % 2 == 1) if squeeze == "auto" else bool(squeeze)
        if in_channels % 2 and not do_squeeze:
            raise ValueError(f"odd channel count C = {in_channels} needs squeeze (squeeze='auto' or True).")
        if do_squeeze and sample_size % 2:
            raise ValueError(f"squeezing needs an even sample_size (H and W), got H = W = {sample_size}.")
        if size_free and conditioner_type != "conv":
            raise ValueError(f"Images of any size need the 'conv' conditioner; {conditioner_type!r} is built for "
                             f"{sample_size}×{sample_size}.")
        self.in_channels, self.sample_size, self.size_free = in_channels, sample_size, bool(size_free)
        self.squeeze = Squeeze2x2() if do_squeeze else None
        channels = in_channels * 4 if do_squeeze else in_channels
        size = sample_size // 2 if do_squeeze else sample_size
        self._block_settings = (conditioner_type, conditioner_channels, conditioner_layers, time_embedding_dim,
                                conditioner_kwargs or {}, clamp, clamp_value, conv1x1)
        self.blocks = nn.ModuleList(self.flow_block(channels, size) for _ in range(num_blocks))

    def flow_block(self, channels: int, size: int) -> FlowBlock:
        """A :class:`FlowBlock` on ``channels × size × size`` with this network's conditioner and coupling settings."""
        kind, width, depth, embedding, extra, clamp, clamp_value, conv1x1 = self._block_settings
        half = channels // 2

        def conditioner():
            return build_conditioner(kind, half, 2 * half, size, width, depth, embedding, **extra)

        return FlowBlock(channels, conditioner(), conditioner(), clamp, clamp_value, conv1x1)

    @property
    def sample_shape(self):
        """``(C, H, W)``."""
        return (self.in_channels, self.sample_size, self.sample_size)

    @property
    def size_multiple(self) -> int:
        """What H and W must be multiples of: 2 when squeezing, else 1."""
        return 2 if self.squeeze is not None else 1

    def check_input(self, x: Tensor, name: str = "input") -> None:
        """``ValueError`` naming the expected shape unless ``x`` is a ``(N, C, H, W)`` tensor."""
        c, h, w = self.sample_shape
        if self.size_free and isinstance(x, Tensor) and x.ndim == 4 and x.shape[1] == c:
            if self.squeeze is not None and (x.shape[2] % 2 or x.shape[3] % 2):
                raise ValueError(f"Expected {name} with an even height and width (the 2×2 squeeze), got {tuple(x.shape)}.")
            return
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Expected {name} of shape (N, {c}, {h}, {w}) (C×H×W = {c}×{h}×{w}), got {got}.")

    def forward(self, x: Tensor, ctx=None, return_logdet: bool = False):
        """``z = g(x; ctx)``, and ``log|det ∂z/∂x|`` per sample when ``return_logdet``."""
        self.check_input(x)
        ctx = as_ctx(ctx, x.shape[0], x)
        logdet = _zeros(x)
        if self.squeeze is not None:
            x, _ = self.squeeze(x)
        for block in self.blocks:
            x, ld = block(x, ctx)
            logdet = logdet + ld
        if self.squeeze is not None:
            x = self.squeeze.inverse(x)
        return (x, logdet) if return_logdet else x

    def inverse(self, z: Tensor, ctx=None) -> Tensor:
        """``x = g⁻¹(z; ctx)``."""
        self.check_input(z, "latent")
        ctx = as_ctx(ctx, z.shape[0], z)
        if self.squeeze is not None:
            z, _ = self.squeeze(z)
        for block in reversed(self.blocks):
            z = block.inverse(z, ctx)
        if self.squeeze is not None:
            z = self.squeeze.inverse(z)
        return z

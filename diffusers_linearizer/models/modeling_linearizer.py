"""`LinearizerModel`: f(x) = g_y⁻¹(A g_x(x)) as a diffusers model.

Two invertible networks ``g_x`` (input space) and ``g_y`` (output space) surround a linear core ``A``
(or ``A_t``). In the vector spaces induced by ``g_x`` and ``g_y`` (``v₁ ⊕ v₂ = g⁻¹(g(v₁) + g(v₂))``,
``a ⊙ v = g⁻¹(a·g(v))``) the function is exactly linear, so linear algebra on ``A`` is algebra on ``f``:

* transpose   fᵀ(y) = g_x⁻¹(Aᵀ g_y(y))
* pinv        f†(y) = g_x⁻¹(A† g_y(y))
* compose     (f₂ ∘ f₁)(x) = g_y⁻¹(A₂ A₁ g_x(x))         when f₁'s g_y is f₂'s g_x
* power       fⁿ(x) = g⁻¹(Aⁿ g(x))                       when g_x ≡ g_y = g
* svd         f(x) = g_y⁻¹(Σᵢ σᵢ uᵢ ⟨vᵢ, g_x(x)⟩)         (plus the |c|·P⊥ part of c·I + low rank)

One network may serve as both ``g_x`` and ``g_y`` (``shared_g=True``): it is run with the role input
``role_x`` for g_x and ``role_y`` for g_y (the reference code uses the same weights with t = 1 and
t = 0). Then ``g_x ≡ g_y`` only when ``role_x == role_y``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from ..file_checks import check_safetensors
from .config_checks import CONFIG_RULES, check_model_config
from .algebra import LinearizerAlgebraMixin, LinearizerSVDOutput  # noqa: F401  (re-exported)
from .conditional_cores import CONDITIONINGS, GuidedCore
from .conditioners import CONDITIONERS
from .core_registry import CoreSpec, build_core_from_config, check_core_choice, check_core_networks, core_size_free
from .multiscale import build_invertible_network
from .noise_prior import NoisePrior

SPACES = ("x", "y")


@dataclass
class LinearizerModelOutput(BaseOutput):
    """Output of :meth:`LinearizerModel.forward`.

    Args:
        sample: ``f(x)`` in data space, shape ``(N, C, H, W)``.
        latent: ``A g_x(x)`` in the latent space of ``g_y``, shape ``(N, C, H, W)``.
    """

    sample: Tensor
    latent: Optional[Tensor] = None


class LinearizerModel(LinearizerAlgebraMixin, ModelMixin, ConfigMixin):
    r"""The Linearizer f(x) = g_y⁻¹(A_t g_x(x)).

    Args:
        sample_size: image height and width H = W.
        in_channels: image channels C (latents keep the image shape, D = C·H·W).
        num_blocks: flow blocks (ActNorm → two affine couplings → invertible 1×1 conv) per network (per scale when
            ``num_scales > 1``).
        num_scales: ``1`` (one resolution, the default) or ``L ≥ 2`` scales that each squeeze 2×2, transform and
            factor half of the channels out (Glow's multi-scale layout, ``models/multiscale.py``); the latent keeps
            the image's shape, and ``sample_size`` must be a multiple of ``2^L``.
        conditioner_type: coupling conditioner, one of ``"conv"`` (small, fast), ``"unet"``
            (a diffusers ``UNet2DModel``) or ``"edm"`` (the paper code's EDM U-Net, for converted checkpoints).
        conditioner_channels / conditioner_layers: conditioner width and depth.
        clamp: ``"tanh"`` (smooth bounded log-scale s·tanh(·/s)) or ``"hard"`` (the reference's clamp).
        clamp_value: the bound s of the log-scale.
        conv1x1: ``"lu"`` (LU-parametrised, triangular-solve inverse) or ``"plain"`` (unconstrained).
        squeeze: ``"auto"`` (2×2 space-to-depth when C is odd), ``True`` or ``False``.
        core_type: a name of the core registry (``models/core_registry.py``): ``"dense"``, ``"lowrank"``,
            ``"time_lowrank"``, ``"shared_basis"`` (unconditional), ``"constant_basis"`` (conditional only).
        core_rank: r (low-rank cores) or R (shared basis).
        core_hidden_dim / core_embedding_dim: MLP width and sinusoidal embedding size of time cores.
        core_identity: learn the identity coefficient a(t) (``False``: a ≡ 0 as in the reference).
        core_time_embedding: time features of time-conditioned cores: ``"diffusion"`` (sin/cos of 1000·t) or
            ``"reference"`` (the paper code's sin/cos of t; see ``cores.TIME_EMBEDDINGS``).
        core_prior_components: Gaussians K of a projection core's prior on its range (``models/projection_cores.py``).
        shared_g: one network for both g_x and g_y (run with ``role_x`` / ``role_y``).
        role_x / role_y: the role inputs of g_x and g_y.
        conditioning: ``None`` (unconditional, the default), ``"class"`` or ``"text"``: only the core sees the
            condition, ``A(t, c)`` (``models/conditional_cores.py``); core types ``"shared_basis"``,
            ``"time_lowrank"`` or ``"constant_basis"`` (``a(c)·I + U S(c) Vᵀ``, conditional only).
        num_classes: classes of a class-conditioned core (id ``num_classes`` is the null class ∅).
        condition_dim: size of the pooled text embedding of a text-conditioned core.
        id2label: class names, ``{"0": "T-shirt/top", …}`` (comma-separated synonyms allowed, as in
            diffusers' ``DiTPipeline``).
        sampling_temperature: the noise scale τ the pipelines sample at when no ``temperature`` is given
            (noise ``τ·ε``, ``ε ~ N(0, I)``): a calibration of a trained model, as a VAE's ``scaling_factor`` is;
            1 means plain ``N(0, I)``. Training, likelihoods and inversion do not use it.
        noise_prior_rank / noise_prior_components: the fitted noise prior (``models/noise_prior.py``) the
            pipelines sample from in place of ``τ·N(0, I)``: its subspace rank r and mixture size K (a class model's
            K splits evenly over its classes); ``0`` / ``0`` (the default): none. Set by :meth:`set_noise_prior`.
        noise_prior_temperature: the τ the pipelines sample the noise prior at when no ``temperature`` is given
            (it scales the prior's deviations from its component means; ``sampling_temperature`` stays the τ of
            plain ``N(0, I)`` noise, ``noise_prior=False``).
    """

    _supports_gradient_checkpointing = False
    _keep_in_fp32_modules = ["noise_prior"]  # a density's factors, read in float64

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 1,
        num_blocks: int = 4,
        num_scales: int = 1,
        conditioner_type: str = "conv",
        conditioner_channels: int = 64,
        conditioner_layers: int = 2,
        clamp: str = "tanh",
        clamp_value: float = 2.0,
        conv1x1: str = "lu",
        squeeze: Union[str, bool] = "auto",
        core_type: str = "shared_basis",
        core_rank: int = 64,
        core_hidden_dim: int = 256,
        core_embedding_dim: int = 128,
        core_identity: bool = True,
        core_time_embedding: str = "diffusion",
        core_prior_components: int = 1,
        shared_g: bool = True,
        role_x: float = 1.0,
        role_y: float = 0.0,
        conditioning: Optional[str] = None,
        num_classes: int = 0,
        condition_dim: int = 0,
        id2label: Optional[Dict[str, str]] = None,
        sampling_temperature: float = 1.0,
        noise_prior_rank: int = 0,
        noise_prior_components: int = 0,
        noise_prior_temperature: float = 1.0,
    ):
        super().__init__()
        check_model_config({key: value for key, value in locals().items() if key in CONFIG_RULES})
        if conditioning is not None and conditioning not in CONDITIONINGS:
            raise ValueError(f"Unknown conditioning {conditioning!r}; expected None or one of {', '.join(CONDITIONINGS)}.")
        if conditioner_type not in CONDITIONERS:
            raise ValueError(
                f"Unknown conditioner_type {conditioner_type!r}; expected one of {', '.join(sorted(CONDITIONERS))}."
            )
        dim = in_channels * sample_size * sample_size
        check_core_choice(core_type, conditioning, core_rank, dim)
        check_core_networks(core_type, shared_g, role_x, role_y)
        size_free = core_size_free(core_type)  # a convolutional core: images of any size the networks can split
        self._size_free = size_free  # read on every call (also inside compiled graphs): a plain attribute

        def make_g():
            return build_invertible_network(
                num_scales=num_scales,
                in_channels=in_channels,
                sample_size=sample_size,
                num_blocks=num_blocks,
                conditioner_type=conditioner_type,
                conditioner_channels=conditioner_channels,
                conditioner_layers=conditioner_layers,
                clamp=clamp,
                clamp_value=clamp_value,
                conv1x1=conv1x1,
                squeeze=squeeze,
                size_free=size_free,
            )

        if shared_g:
            self.g = make_g()
        else:
            self.g_x = make_g()
            self.g_y = make_g()
        if id2label is not None and (conditioning != "class" or len(id2label) != num_classes):
            raise ValueError(f"id2label names {len(id2label)} classes; it needs conditioning='class' and "
                             f"num_classes = {len(id2label)} (got {conditioning!r}, {num_classes}).")
        self.core = build_core_from_config(core_type, dim, CoreSpec(
            rank=core_rank, hidden_dim=core_hidden_dim, embedding_dim=core_embedding_dim, identity=core_identity,
            time_embedding=core_time_embedding, conditioning=conditioning, num_classes=num_classes,
            condition_dim=condition_dim, channels=in_channels, sample_size=sample_size,
            prior_components=core_prior_components,
        ))
        self.noise_prior = self._build_noise_prior(noise_prior_rank, noise_prior_components)

    # ------------------------------------------------------------------ the fitted noise prior
    def _build_noise_prior(self, rank: int, components: int) -> Optional[NoisePrior]:
        if (rank == 0) != (components == 0):
            raise ValueError(f"noise_prior_rank and noise_prior_components are both 0 (no prior) or both ≥ 1; got "
                             f"{rank} and {components}.")
        if rank == 0:
            return None
        return NoisePrior(self.latent_dim, rank, components, self.noise_groups)

    @property
    def noise_groups(self) -> int:
        """Rows of a noise prior's mixture weights for this model: its classes (class models), else 1."""
        return self.config.num_classes if self.config.conditioning == "class" else 1

    def set_noise_prior(self, prior: Optional[NoisePrior], temperature: float = 1.0) -> None:
        """Attach a fitted :class:`~diffusers_linearizer.models.noise_prior.NoisePrior` sampled at ``temperature``
        (``None`` removes it); the config records its size and temperature, so ``save_pretrained`` /
        ``from_pretrained`` carry it."""
        check_model_config({"noise_prior_temperature": temperature})
        if prior is not None:
            if not isinstance(prior, NoisePrior):
                raise ValueError(f"Expected a NoisePrior or None, got {type(prior).__name__}.")
            if prior.dim != self.latent_dim or prior.groups != self.noise_groups:
                raise ValueError(f"This model needs a noise prior of dim {self.latent_dim} with {self.noise_groups} "
                                 f"group(s); got dim {prior.dim} with {prior.groups}.")
            prior = prior.to(device=self.device, dtype=torch.float32)
        self.noise_prior = prior
        self.register_to_config(noise_prior_rank=prior.rank if prior is not None else 0,
                                noise_prior_components=prior.components if prior is not None else 0,
                                noise_prior_temperature=float(temperature) if prior is not None else 1.0)

    # ------------------------------------------------------------------ shapes and spaces
    @property
    def sample_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of images and latents."""
        return (self.config.in_channels, self.config.sample_size, self.config.sample_size)

    @property
    def latent_dim(self) -> int:
        """D = C·H·W."""
        c, h, w = self.sample_shape
        return c * h * w

    @property
    def time_dependent(self) -> bool:
        return self.core.time_dependent

    @property
    def conditioning(self) -> Optional[str]:
        """``None`` (unconditional), ``"class"`` or ``"text"``."""
        return self.config.conditioning

    def guided_core(self, condition=None, negative=None, guidance: float = 0.0, blend=None) -> GuidedCore:
        """The core-like view ``(1 + w)·A(t, c) − w·A(t, c⁻)`` whose collapse is the guided ``B(c, w)``
        (``negative`` defaults to the null class for class conditioning; text needs it). ``blend`` =
        ``[(λ_k, c_k), …]`` (weights summing to 1) replaces ``c`` by the interpolated ``Σ λ_k A(t, c_k)``."""
        if self.conditioning is None:
            raise ValueError("This model is unconditional: it has no condition to guide.")
        return GuidedCore(self.core, blend if blend is not None else [(1.0, condition)], negative, guidance)

    @property
    def size_free(self) -> bool:
        """Whether the model takes images of any ``H × W`` that are multiples of :attr:`size_multiple` (its core
        type declares ``size_free``: a convolution), not only ``sample_size × sample_size``."""
        return self._size_free

    @property
    def size_multiple(self) -> int:
        """What H and W of a size-free model's images must be multiples of (the networks' and the core's
        space-to-depth factors)."""
        net = self.network("x")[0]
        return math.lcm(net.size_multiple, int(getattr(self.core, "factor", 1)))

    def check_sample(self, x: Tensor, name: str = "input") -> None:
        """Raise a ``ValueError`` naming the expected shape unless ``x`` is ``(N, C, H, W)`` (a size-free model:
        any H, W that are multiples of :attr:`size_multiple`)."""
        if not isinstance(x, Tensor):
            raise ValueError(f"Expected {name} to be a torch.Tensor, got {type(x).__name__}.")
        if self.size_free:
            c, m = self.config.in_channels, self.size_multiple
            if x.ndim != 4 or x.shape[1] != c:
                raise ValueError(f"Expected {name} of shape (N, {c}, H, W), got {tuple(x.shape)}.")
            if x.shape[2] % m or x.shape[3] % m or x.shape[2] < m or x.shape[3] < m:
                raise ValueError(f"This model takes {name} whose height and width are multiples of {m}; got "
                                 f"{x.shape[2]}×{x.shape[3]}: pad or crop it.")
            return
        if x.ndim != 4 or tuple(x.shape[1:]) != self.sample_shape:
            c, h, w = self.sample_shape
            raise ValueError(f"Expected {name} of shape (N, {c}, {h}, {w}) (C×H×W = {c}×{h}×{w}), got {tuple(x.shape)}.")

    def network(self, space: str) -> Tuple[nn.Module, float]:
        """The invertible network and role input of ``space`` ("x" for g_x, "y" for g_y)."""
        if space not in SPACES:
            raise ValueError(f"Unknown space {space!r}; expected 'x' or 'y'.")
        role = self.config.role_x if space == "x" else self.config.role_y
        if self.config.shared_g:
            return self.g, role
        return (self.g_x if space == "x" else self.g_y), role

    def _role(self, role: float, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), float(role), dtype=x.dtype, device=x.device)

    def apply_g(self, x: Tensor, space: Union[str, Tensor], inverse: bool = False, return_logdet: bool = False):
        """``g_space(x)`` (or ``g_space⁻¹(x)`` with ``inverse``) without shape checks: the one place where the
        role input of a network is made.

        ``space`` is ``"x"`` or ``"y"`` for the whole batch, or a boolean ``(N,)`` mask: ``g_x`` where it is
        true, ``g_y`` elsewhere. With one shared network a mixed batch is one call with per-sample roles;
        with two networks each runs on its part and the results are put back in order. ``return_logdet``
        (forward, one space): ``(g(x), log|det J_g(x)|)`` per sample.
        """
        if isinstance(space, str):
            net, role = self.network(space)
            if inverse:
                if return_logdet:
                    raise ValueError("apply_g: the inverse pass carries no log-determinant; run g forward on its output.")
                return net.inverse(x, self._role(role, x))
            return net(x, self._role(role, x), return_logdet=True) if return_logdet else net(x, self._role(role, x))
        if return_logdet:
            raise ValueError("apply_g: return_logdet needs one space ('x' or 'y'), not a per-sample mask.")
        (net_x, role_x), (net_y, role_y) = self.network("x"), self.network("y")
        if net_x is net_y:
            roles = space.to(x.dtype) * (float(role_x) - float(role_y)) + float(role_y)
            return net_x.inverse(x, roles) if inverse else net_x(x, roles)
        out = torch.empty_like(x)
        for name, mask in (("x", space), ("y", ~space)):
            if bool(mask.any()):
                out[mask] = self.apply_g(x[mask], name, inverse).to(out.dtype)
        return out

    def encode(self, x: Tensor, space: str = "x") -> Tensor:
        """``g_space(x)``: data → latent, same shape ``(N, C, H, W)``."""
        self.check_sample(x)
        return self.apply_g(x, space)

    def decode(self, z: Tensor, space: str = "y") -> Tensor:
        """``g_space⁻¹(z)``: latent → data."""
        self.check_sample(z, "latent")
        return self.apply_g(z, space, inverse=True)

    def apply_core(self, z: Tensor, t=None, condition: Optional[Tensor] = None) -> Tensor:
        """``A_t z`` (``A(t, c) z`` for a conditional core) on image-shaped latents ``(N, C, H, W)`` (t: float or
        (N,) tensor; condition: ``(N,)`` class ids or ``(N, condition_dim)`` pooled text embeddings)."""
        self.check_sample(z, "latent")
        if self.size_free:  # a convolutional core acts on image-shaped latents
            return self.core(z, t, condition)
        if self.conditioning is None:
            if condition is not None:
                raise ValueError("This model is unconditional: apply_core takes no condition.")
            return self.core(z.flatten(1), t).view_as(z)
        return self.core(z.flatten(1), t, condition).view_as(z)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """``ModelMixin.from_pretrained``, strict: a config that does not match the weights is an error.

        diffusers only warns about checkpoint tensors the model lacks or model tensors the checkpoint
        lacks (and initialises those randomly); for a Linearizer either means the config describes
        another network, so a ``ValueError`` names the tensors instead. ``output_loading_info=True``
        still returns ``(model, info)``. Weights load from safetensors only.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("LinearizerModel loads weights from safetensors only; drop use_safetensors=False.")
        kwargs["use_safetensors"] = True  # never a pickled .bin
        want_info = kwargs.pop("output_loading_info", False)
        folder = os.path.join(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        if os.path.isdir(folder):  # a damaged weights file is named with its cause before diffusers reads it
            for file in sorted(os.listdir(folder)):
                if file.endswith(".safetensors"):
                    check_safetensors(os.path.join(folder, file))
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        problems = []
        for key, what in (("missing_keys", "missing from the weights"), ("unexpected_keys", "not in the model"),
                          ("mismatched_keys", "of another shape")):
            names = [k[0] if isinstance(k, tuple) else k for k in info.get(key) or ()]
            if names:
                shown = ", ".join(sorted(names)[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                problems.append(f"{len(names)} tensor(s) {what}: {shown}")
        if problems:
            raise ValueError(
                f"The config of {pretrained_model_name_or_path} (subfolder {kwargs.get('subfolder')!r}) does not match "
                f"its weights: {'; '.join(problems)}. The config.json must be the one saved with these weights."
            )
        return (model, info) if want_info else model

    def forward(self, x: Tensor, t=None, return_dict: bool = True, condition: Optional[Tensor] = None):
        """``f(x) = g_y⁻¹(A_t g_x(x))``; ``t`` is required by time-dependent cores, ``condition`` by conditional ones."""
        self.check_sample(x)
        if self.time_dependent and t is None:
            raise ValueError(f"This model's core ({self.config.core_type}) is time-dependent: pass t in [0, 1].")
        latent = self.apply_core(self.encode(x, "x"), t, condition)
        sample = self.decode(latent, "y")
        if not return_dict:
            return (sample, latent)
        return LinearizerModelOutput(sample=sample, latent=latent)

    # ------------------------------------------------------------------ the core as an operator
    def core_operator(self, t: Optional[float] = None, dtype: Optional[torch.dtype] = None):
        """``A_t`` as a structured operator (``dtype`` defaults to the weights' dtype)."""
        if self.time_dependent and t is None:
            raise ValueError(f"This model's core ({self.config.core_type}) is time-dependent: pass t in [0, 1].")
        return self.core.operator(t, dtype=dtype)

"""The registry of linear cores: every ``core_type`` a :class:`~.LinearizerModel` config may name.

An entry is a builder ``build(dim, spec) -> core`` registered with what the core declares about itself:

* ``operator`` — the form of ``A_t`` (what :mod:`diffusers_linearizer.operators` type it returns);
* ``parameters`` — how its parameter count grows with ``D`` and the rank;
* ``config`` — the model config keys it reads (beyond ``sample_size`` / ``in_channels``, which give ``D``);
* ``conditionings`` — the ``conditioning`` values it can be built for (``None``: unconditional);
* ``uses_rank`` — whether ``core_rank`` applies (then it must be at most ``D``);
* ``tasks`` — the pipeline tasks (``pipelines/tasks.py``) a model with this core serves, its main one first
  (the flow cores: ``("generate", "invert")``);
* ``same_g`` — whether the core needs ``g_x ≡ g_y`` (one shared network run with one role: ``shared_g=True``
  and ``role_x == role_y``), as a projection ``f = g⁻¹ P g`` or a style ``g⁻¹ A_s g`` does;
* ``size_free`` — whether the core acts on image-shaped latents of any size (a convolution): the model then
  takes images of any ``H × W`` its networks can split (``LinearizerModel.check_sample``), not only
  ``sample_size``².

The model builds its core through :func:`build_core_from_config` and nowhere else; argument checks, help
texts and the table in ``docs/design.md`` read the declarations. A new core type is a module with its
``nn.Module`` (the interface of :class:`.cores.LinearCore`) and one ``CORES.register`` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..registry import Registry
from .conditional_cores import CONDITIONINGS, ConditionalSharedBasisCore, ConditionalTimeLowRankCore
from .cores import DenseCore, LowRankCore, SharedBasisCore, TimeLowRankCore

__all__ = ["CORES", "CoreSpec", "build_core_from_config", "check_core_choice", "check_core_networks", "core_size_free",
           "core_tasks", "core_types"]

CORES = Registry(
    "core_type",
    fields={
        "operator": "the form of the operator A_t",
        "parameters": "parameter count",
        "config": "the config keys the core reads",
        "conditionings": "the conditioning values it is built for (None: unconditional)",
        "uses_rank": "whether core_rank applies (then r ≤ D)",
        "tasks": "the pipeline tasks a model with this core serves (its main one first)",
        "same_g": "whether it needs g_x ≡ g_y (shared_g with role_x == role_y)",
        "size_free": "whether it takes image-shaped latents of any size",
    },
    defaults={"uses_rank": True, "tasks": ("generate", "invert"), "same_g": False, "size_free": False},
)


@dataclass(frozen=True)
class CoreSpec:
    """The config values a core builder may read (the ``core_*`` keys and the conditioning)."""

    rank: int = 64
    hidden_dim: int = 256
    embedding_dim: int = 128
    identity: bool = True
    time_embedding: str = "diffusion"
    conditioning: Optional[str] = None
    num_classes: int = 0
    condition_dim: int = 0
    prior_components: int = 1
    channels: int = 1
    sample_size: int = 1

    @property
    def condition(self) -> dict:
        return dict(conditioning=self.conditioning, num_classes=self.num_classes, condition_dim=self.condition_dim)

    @property
    def mlp(self) -> dict:
        return dict(hidden_dim=self.hidden_dim, embedding_dim=self.embedding_dim, identity=self.identity,
                    time_embedding=self.time_embedding)


_TIME_KEYS = ("core_rank", "core_hidden_dim", "core_embedding_dim", "core_identity", "core_time_embedding")
_BOTH = (None, *CONDITIONINGS)


@CORES.register("dense", operator="`A` (D × D)", parameters="D²", config=(), conditionings=(None,), uses_rank=False)
def _dense(dim: int, spec: CoreSpec):
    """One dense matrix, time-independent (small models and tests)."""
    return DenseCore(dim)


@CORES.register("lowrank", operator="`a·I + U Vᵀ`", parameters="1 + 2·D·r", config=("core_rank", "core_identity"),
                conditionings=(None,))
def _lowrank(dim: int, spec: CoreSpec):
    """Identity plus a learned rank-r term, time-independent."""
    return LowRankCore(dim, spec.rank, identity_scale=1.0 if spec.identity else 0.0)


@CORES.register("time_lowrank", operator="`a(t)·I + U(t) V(t)ᵀ`", parameters="MLPs emitting D·r numbers per t",
                config=_TIME_KEYS, conditionings=_BOTH)
def _time_lowrank(dim: int, spec: CoreSpec):
    """Time-dependent low-rank factors from an MLP of t (the paper code's core, with a ≡ 0)."""
    if spec.conditioning is None:
        return TimeLowRankCore(dim, spec.rank, **spec.mlp)
    return ConditionalTimeLowRankCore(dim, spec.rank, **spec.condition, **spec.mlp)


@CORES.register("shared_basis", operator="`a(t)·I + U S(t) Vᵀ`", parameters="2·D·R + an MLP emitting 1 + R² per t",
                config=_TIME_KEYS, conditionings=_BOTH)
def _shared_basis(dim: int, spec: CoreSpec):
    """Fixed bases U, V with a time-dependent R × R mixing S(t): products stay R × R (the fast collapse)."""
    if spec.conditioning is None:
        return SharedBasisCore(dim, spec.rank, **spec.mlp)
    return ConditionalSharedBasisCore(dim, spec.rank, time_conditioned=True, **spec.condition, **spec.mlp)


@CORES.register("constant_basis", operator="`a(c)·I + U S(c) Vᵀ`", parameters="2·D·R + an MLP emitting 1 + R² per c",
                config=_TIME_KEYS, conditionings=CONDITIONINGS)
def _constant_basis(dim: int, spec: CoreSpec):
    """The shared-basis form with a mixing that depends on the condition only, not on t."""
    return ConditionalSharedBasisCore(dim, spec.rank, time_conditioned=False, **spec.condition, **spec.mlp)


def _projection(form: str):
    def build(dim: int, spec: CoreSpec):
        from .projection_cores import PROJECTION_FORMS

        return PROJECTION_FORMS[form](dim, spec.rank, spec.prior_components)

    return build


_PROJECTION = dict(parameters="the factors, plus K·(r² + 2r + 1) + 1 for the prior on the range",
                   config=("core_rank", "core_prior_components"),
                   conditionings=(None,), tasks=("project",), same_g=True)
CORES.register("projection_orthogonal", _projection("orthogonal"), operator="`Q Qᵀ` (P² = P, rank r)",
               doc="An orthogonal projection: f(x) is the range point nearest to g(x), mapped back "
                   "(models/projection_cores.py).", **_PROJECTION)
CORES.register("projection_oblique", _projection("oblique"), operator="`U (VᵀU)⁻¹ Vᵀ` (P² = P, rank r)",
               doc="An oblique projection: range span U, kernel (span V)^⊥ (models/projection_cores.py).", **_PROJECTION)
CORES.register("projection_spectral", _projection("spectral"), operator="`M diag(m) M⁻¹`, m binary (P² = P, rank r)",
               doc="The paper's spectral projection, a top-r binary mask trained by the straight-through estimator "
                   "(models/projection_cores.py).", **_PROJECTION)


@CORES.register("style_conv", operator="`Pᵀ Conv(δ + Δ_s) P` (circular, 2×2 space-to-depth)",
                parameters="S·(4C)²·k² (k = core_rank)", config=("core_rank",), conditionings=("class",),
                tasks=("stylize",), same_g=True, size_free=True)
def _style_conv(dim: int, spec: CoreSpec):
    """One circular convolution per style (a class id is a style) with k × k kernels, k = core_rank."""
    from .style_cores import StyleConvolutionCore

    return StyleConvolutionCore(spec.channels, spec.sample_size, spec.num_classes, kernel_size=spec.rank)


def core_types(conditioning: Optional[str] = None):
    """The core types that can be built for ``conditioning`` (``None``: unconditional), in registration order."""
    return tuple(e.name for e in CORES.entries() if conditioning in e.conditionings)


def core_tasks(core_type: str) -> tuple:
    """The pipeline tasks a model with ``core_type`` serves, its main one first."""
    return tuple(CORES.entry(core_type).tasks)


def core_size_free(core_type: str) -> bool:
    """Whether a model with ``core_type`` takes images of any size (the entry's ``size_free``)."""
    return bool(CORES.entry(core_type).size_free)


def check_core_choice(core_type: str, conditioning: Optional[str] = None, core_rank: Optional[int] = None,
                      dim: Optional[int] = None) -> None:
    """``ValueError`` naming what is expected when ``core_type`` is unknown, cannot be built for
    ``conditioning``, or when its ``core_rank`` exceeds the latent dimension ``dim``."""
    entry = CORES.entry(core_type)
    if conditioning not in entry.conditionings:
        if conditioning is None:
            raise ValueError(f"core_type {core_type!r} is conditional only; set conditioning to one of "
                             f"{', '.join(map(repr, entry.conditionings))}, or use one of {', '.join(core_types(None))}.")
        raise ValueError(f"core_type {core_type!r} cannot be conditioned; with conditioning={conditioning!r} use one of "
                         f"{', '.join(core_types(conditioning))}.")
    if entry.uses_rank and core_rank is not None and dim is not None and core_rank > dim:
        raise ValueError(f"core_rank {core_rank} exceeds the latent dimension D = C·H·W = {dim}.")


def check_core_networks(core_type: str, shared_g: bool, role_x: float, role_y: float) -> None:
    """``ValueError`` saying why when ``core_type`` needs ``g_x ≡ g_y`` and the config gives two networks or
    two roles of one."""
    if not CORES.entry(core_type).same_g:
        return
    if not shared_g:
        raise ValueError(f"core_type {core_type!r} needs one network on both sides (g_x ≡ g_y, so that f = g⁻¹ A g "
                         "composes with itself): set shared_g=True.")
    if float(role_x) != float(role_y):
        raise ValueError(f"core_type {core_type!r} needs g_x ≡ g_y, but role_x = {role_x} and role_y = {role_y} run "
                         "the shared network as two functions: set role_x equal to role_y.")


def build_core_from_config(core_type: str, dim: int, spec: CoreSpec):
    """The core ``core_type`` of latent dimension ``dim`` built from ``spec`` (checked first)."""
    check_core_choice(core_type, spec.conditioning, spec.rank, dim)
    return CORES.get(core_type)(dim, spec)

"""The registry of training objectives: every name ``--objective`` (and ``LinearizerObjective``) accepts.

An objective is a *component* function ``component(objective, inputs) -> {term: loss}`` —
``objective`` the :class:`~.objective.LinearizerObjective` (its model, noise level, pixel distance),
``inputs`` the step's :class:`StepInputs` — registered with what it declares:

* ``terms`` — the loss terms it returns (each is logged; the loss is their weighted sum);
* ``weighted`` — the terms that get a ``--weight_TERM`` flag (a multiplier, default 1);
* ``data`` — ``"images"`` (any training images) or ``"pairs"`` (teacher pairs, ``--teacher_pairs``);
* ``needs_uniform`` — whether it needs dequantisation noise ``U(0, 1)`` of the images' shape;
* ``one_step`` — whether it trains through ``B``, the collapse of the sampler run (built once per step
  and shared by the components that need it, in ``inputs.B``);
* ``conditions`` — whether it trains conditional models (class ids / text embeddings in ``inputs.condition``);
* ``tasks`` — the model tasks it trains (what the model's core declares, ``CORES``' ``tasks``): the flow
  objectives ``("generate", "invert")``, the projection ones ``("project",)``;
* ``estimates`` — the loss it estimates, when another objective estimates the same one (two such can not
  be mixed).

Components are registered by ``"module:function"`` and imported on first use, so this table (and the
command line's help) does not import torch-heavy code. Adding an objective is one function in its own
module and one ``OBJECTIVES.register`` below; the argument checks, ``--weight_*`` flags, the trainer's
inputs and the table in ``docs/design.md`` follow from the declaration.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from ..registry import Registry

__all__ = ["OBJECTIVES", "StepInputs", "check_objective_model", "component", "mix_needs", "parse_objective", "weighted_terms"]

OBJECTIVES = Registry(
    "objective",
    fields={
        "terms": "the loss terms it returns",
        "weighted": "terms with a --weight_TERM flag",
        "data": "images or (teacher) pairs",
        "needs_uniform": "needs dequantisation noise",
        "one_step": "trains through the collapsed B",
        "conditions": "trains conditional models",
        "estimates": "the loss it estimates (not mixable with another estimate of it)",
        "tasks": "the model tasks it trains (its core's tasks)",
    },
    defaults={"weighted": (), "data": "images", "needs_uniform": False, "one_step": False, "conditions": False,
              "estimates": None, "tasks": ("generate", "invert")},
)

_FLOW_TERMS = ("latent_flow", "noise_reconstruction", "image_reconstruction", "prediction")

OBJECTIVES.register(
    "fast", "diffusers_linearizer.training.objective:fast_component", terms=_FLOW_TERMS, weighted=_FLOW_TERMS,
    conditions=True, estimates="latent flow matching",
    doc="The default: the paper's four terms with one batched forward and one batched inverse of g.",
)
OBJECTIVES.register(
    "reference", "diffusers_linearizer.training.objective:reference_component", terms=_FLOW_TERMS,
    weighted=_FLOW_TERMS, conditions=True, estimates="latent flow matching",
    doc="The paper's objective: four terms, five full-batch passes of g.",
)
OBJECTIVES.register(
    "distill", "diffusers_linearizer.training.distill:distill_component", terms=("distill_image", "distill_noise"),
    weighted=("distill_noise",), data="pairs", one_step=True, conditions=True,
    doc="One step through B reproduces a teacher's ODE samples; its inverse returns the teacher's noise (a class "
        "model: each pair through its class's B(c)).",
)
OBJECTIVES.register(
    "style", "diffusers_linearizer.training.style_objective:style_component", terms=("style_image",), data="pairs",
    conditions=True, tasks=("stylize",),
    doc="A style model reproduces a style teacher's images: D(y, g⁻¹(A_s g(x))) on style pairs (style-data).",
)
OBJECTIVES.register(
    "likelihood", "diffusers_linearizer.training.likelihood:likelihood_component", terms=("likelihood_bpd",),
    needs_uniform=True, one_step=True, conditions=True,
    doc="Exact maximum likelihood (bits/dim) of the one-step generator (a class model: log p(x | c) through B(c)).",
)

OBJECTIVES.register(
    "projection_likelihood", "diffusers_linearizer.training.projection_objective:projection_likelihood_component",
    terms=("projection_bpd",), needs_uniform=True, tasks=("project",),
    doc="Exact likelihood (bits/dim) of a projection model: g with a Gaussian on P's range and a small one off it.",
)
OBJECTIVES.register(
    "projection_reconstruction",
    "diffusers_linearizer.training.projection_objective:projection_reconstruction_component",
    terms=("projection_reconstruction",), weighted=("projection_reconstruction",), needs_uniform=True,
    tasks=("project",), doc="Data are fixed points of a projection model: ‖f(x) − x‖² per pixel.",
)
OBJECTIVES.register(
    "projection_denoising", "diffusers_linearizer.training.projection_objective:projection_denoising_component",
    terms=("projection_denoising",), weighted=("projection_denoising",), needs_uniform=True, tasks=("project",),
    doc="A projection model pulls corrupted images (noise, missing pixels, blur) onto their clean originals.",
)


def check_objective_model(mix, model) -> None:
    """``ValueError`` naming the objectives that train the model's task unless every component of ``mix`` trains a
    task the model's core serves (flow objectives for flow cores, projection objectives for projection cores)."""
    from ..models.core_registry import core_tasks

    core_type = model.config.core_type
    tasks = core_tasks(core_type)
    wrong = [name for name in mix if not set(OBJECTIVES.entry(name).tasks) & set(tasks)]
    if wrong:
        fits = [e.name for e in OBJECTIVES.entries() if set(e.tasks) & set(tasks)]
        raise ValueError(f"--objective {','.join(wrong)} does not train a {core_type!r} model (it serves "
                         f"{', '.join(tasks)}); use some of {', '.join(fits)}.")


@dataclass
class StepInputs:
    """What one training step hands to every component (all randomness drawn by the trainer)."""

    images: Any
    noise: Any
    t: Any
    eps_y: Any
    eps_x: Any
    offset: Any = 0
    uniform: Any = None
    condition: Any = None
    B: Any = None


def component(name: str) -> Callable:
    """The component function of objective ``name`` (imported on first use)."""
    module, _, function = OBJECTIVES.get(name).partition(":")
    return getattr(importlib.import_module(module), function)


def weighted_terms() -> Tuple[str, ...]:
    """Every term with a ``--weight_TERM`` flag, in registration order, each once."""
    return tuple(dict.fromkeys(t for e in OBJECTIVES.entries() for t in e.weighted))


def mix_needs(mix, field: str, value: Any = True) -> bool:
    """Whether some component of ``mix`` declares ``field == value`` (e.g. ``mix_needs(mix, "one_step")``)."""
    return any(OBJECTIVES.entry(name).declared[field] == value for name in mix)


def parse_objective(spec) -> Dict[str, float]:
    """``"fast"``, ``"distill,fast"`` or ``"distill:1,likelihood:0.02"`` → ``{name: weight}`` (weight 1 by default).

    ``ValueError`` for unknown names, repeated names, non-positive or non-finite weights, and for two
    components that estimate the same loss (``fast`` with ``reference``).
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
    estimated: Dict[str, str] = {}
    for name, weight in items:
        if name not in OBJECTIVES:
            raise ValueError(f"Unknown objective {name!r}; expected some of {OBJECTIVES.choices()} (e.g. 'distill,fast').")
        if name in mix:
            raise ValueError(f"objective {spec!r} names {name!r} twice.")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
            raise ValueError(f"objective {spec!r}: the weight of {name!r} must be a finite number > 0, got {weight}.")
        loss: Optional[str] = OBJECTIVES.entry(name).estimates
        if loss is not None and loss in estimated:
            raise ValueError(f"objective: {estimated[loss]!r} and {name!r} estimate the same loss ({loss}); choose one.")
        if loss is not None:
            estimated[loss] = name
        mix[name] = float(weight)
    return mix

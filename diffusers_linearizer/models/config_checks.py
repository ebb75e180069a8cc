"""Types and ranges of :class:`~diffusers_linearizer.LinearizerModel`'s config values, checked when a model is
built (from code or from a ``config.json``), each error naming the key, the value and what was expected.

Which names a choice may take (``core_type``, ``clamp``, ``conv1x1``, ``squeeze``, ``conditioner_type``,
``conditioning``) is checked by the module that owns the choice (the core registry, the invertible network,
the conditioner table); here only that such a value is a string.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple

__all__ = ["CONFIG_RULES", "check_model_config", "check_temperature"]


def _integer(minimum: int) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
            f"an integer ≥ {minimum}")


def _is_number(v: Any) -> bool:
    import numpy as np

    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)


def _number(positive: bool) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_number(v) and (v > 0 or not positive)), ("a finite number > 0" if positive else "a finite number")


def check_temperature(temperature: Any, name: str = "temperature") -> float:
    """``temperature`` as a float when it is a finite number > 0, else a ``ValueError`` naming ``name``: the one
    rule for sampling temperatures (the model's ``sampling_temperature``, a pipeline's ``temperature=``, the
    command line's ``--temperature``)."""
    if not (_is_number(temperature) and temperature > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}.")
    return float(temperature)


_BOOL = (lambda v: isinstance(v, bool), "true or false")
_STRING = (lambda v: isinstance(v, str) and bool(v), "a non-empty string")
_OPTIONAL_STRING = (lambda v: v is None or (isinstance(v, str) and bool(v)), "null or a non-empty string")
_SQUEEZE = (lambda v: isinstance(v, bool) or isinstance(v, str), "'auto', true or false")
_LABELS = (lambda v: v is None or (isinstance(v, dict) and all(isinstance(k, (str, int)) and not isinstance(k, bool)
                                                               and isinstance(n, str) for k, n in v.items())),
           "null or an object mapping class ids to names")

#: config key → (test, what a value must be)
CONFIG_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "sample_size": _integer(1),
    "in_channels": _integer(1),
    "num_blocks": _integer(1),
    "num_scales": _integer(1),
    "conditioner_type": _STRING,
    "conditioner_channels": _integer(1),
    "conditioner_layers": _integer(1),
    "clamp": _STRING,
    "clamp_value": _number(positive=True),
    "conv1x1": _STRING,
    "squeeze": _SQUEEZE,
    "core_type": _STRING,
    "core_rank": _integer(0),  # 0: a·I alone (a power 0, a pseudo-inverse of nothing)
    "core_hidden_dim": _integer(1),
    "core_embedding_dim": _integer(1),
    "core_identity": _BOOL,
    "core_time_embedding": _STRING,
    "core_prior_components": _integer(1),
    "shared_g": _BOOL,
    "role_x": _number(positive=False),
    "role_y": _number(positive=False),
    "conditioning": _OPTIONAL_STRING,
    "num_classes": _integer(0),
    "condition_dim": _integer(0),
    "id2label": _LABELS,
    "sampling_temperature": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "noise_prior_rank": _integer(0),
    "noise_prior_components": _integer(0),
    "noise_prior_temperature": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
}


def check_model_config(values: Dict[str, Any]) -> None:
    """A ``ValueError`` naming every config key in ``values`` whose value has the wrong type or range."""
    problems = [f"{key} = {value!r} (expected {CONFIG_RULES[key][1]})"
                for key, value in values.items() if key in CONFIG_RULES and not CONFIG_RULES[key][0](value)]
    if problems:
        raise ValueError(f"Invalid LinearizerModel config: {'; '.join(problems)}.")

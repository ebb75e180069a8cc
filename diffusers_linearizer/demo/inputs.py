"""Checks of the values a page sends, and what a pipeline's call accepts (plain Python, no gradio)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional

from .images import DemoError

#: what a callback's ``progress`` argument is: gradio's ``gr.Progress`` (or any ``f(fraction, desc=…)``), or None
Progress = Optional[Callable[..., Any]]


def tick(progress: Progress, fraction: float, desc: str) -> None:
    """Report ``fraction`` of a callback's work done, described by ``desc``, when a progress tracker is given."""
    if progress is not None:
        progress(fraction, desc=desc)


def as_int(value, name: str, low: int, high: Optional[int] = None, hint: str = "") -> int:
    """``value`` (an int, or a float with an integral value, as number fields send) within ``[low, high]``."""
    if isinstance(value, bool) or value is None or value == "":
        raise DemoError(f"{name} is missing; enter a whole number ≥ {low}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a whole number, got {value!r}.") from None
    if not number.is_integer():
        raise DemoError(f"{name} must be a whole number, got {value!r}.")
    number = int(number)
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise DemoError(f"{name} must be {bound}{hint}; got {number}.")
    return number


def as_float(value, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a number between {low} and {high}, got {value!r}.") from None
    if not low <= number <= high:
        raise DemoError(f"{name} must be between {low} and {high}; got {number}.")
    return number


def pipeline_features(pipe) -> Dict[str, Any]:
    """What the pipeline's ``__call__`` accepts beyond unconditional generation, found from its signature.

    ``temperature`` (noise scale), a class label argument (``class_labels``) with the model's class names
    (``class_names`` or ``id2label`` in the model or pipeline config) or count (``num_classes`` /
    ``num_class_embeds``), ``prompt`` and ``guidance_scale``.
    """
    params = inspect.signature(pipe.__call__).parameters
    class_arg = next((n for n in ("class_labels", "class_label") if n in params), None)
    names: List[str] = []
    count = None
    for config in (pipe.linearizer.config, pipe.config):
        if not names and config.get("class_names"):
            names = [str(n) for n in config["class_names"]]
        if not names and config.get("id2label"):
            id2label = config["id2label"]
            names = [str(id2label.get(str(i), id2label.get(i))) for i in range(len(id2label))]
        count = count or config.get("num_classes") or config.get("num_class_embeds")
    return {
        "temperature": "temperature" in params,
        "class_labels": class_arg,
        "class_names": names,
        "num_classes": count or (len(names) or None),
        "prompt": "prompt" in params,
        "guidance_scale": "guidance_scale" in params,
    }

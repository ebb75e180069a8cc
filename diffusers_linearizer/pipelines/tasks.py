"""The registry of pipelines: which class serves which *task* for which *kind* of model.

A task is what a pipeline does with a Linearizer (``"generate"``: noise → images; ``"invert"``: images →
noise, reconstructions and interpolations); a kind is the model's conditioning (``None``, ``"class"``,
``"text"``: ``LinearizerModel.config.conditioning``). Every entry is a ``DiffusionPipeline`` class that
declares:

* ``task`` — one of :data:`TASKS`;
* ``kinds`` — the model kinds it serves (its ``_model_kinds``, which its ``__init__`` checks).

:func:`pipeline_class_for` answers "which pipeline runs ``task`` for this model?" (training writes the
generation pipeline of the model it trained, conversion the one of the model it converted; a pipeline
refusing a model names the right class through it). A new pipeline is a module with its class and one
``PIPELINES.register`` in ``pipelines/linearizer/__init__.py``; a new task is one more name in
:data:`TASKS`.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

from ..registry import Registry

__all__ = ["PIPELINES", "TASKS", "check_task", "model_tasks", "pipeline_class_for", "register_pipeline", "task_of"]

#: what pipelines do, each with a description for the docs
TASKS = {
    "generate": "noise → images in one step (or stepped), guided for conditional models",
    "invert": "images → noise through B†, reconstructions, interpolations and edits",
    "stylize": "images → g⁻¹(A g(x)) with A a blend of style operators, their strength, composition and inverse",
    "project": "images → f(x) = g⁻¹(P g(x)) with P² = P (projection, mask filling), and generation on P's range",
}

PIPELINES = Registry("pipeline", fields={"task": "what it does (a TASKS name)", "kinds": "the model kinds it serves"})


def register_pipeline(name: str, cls, task: str):
    """Register ``cls`` (a pipeline class with ``_model_kinds``) for ``task``; ``ValueError`` for an unknown task
    or a (task, kind) pair that another pipeline already serves."""
    if task not in TASKS:
        raise ValueError(f"Unknown pipeline task {task!r}; expected one of {', '.join(TASKS)}.")
    kinds: Tuple[Optional[str], ...] = tuple(cls._model_kinds)
    for entry in PIPELINES.entries():
        clash = set(kinds) & set(entry.kinds)
        if entry.task == task and clash:
            raise ValueError(f"Pipeline {name!r}: {entry.value.__name__} already serves {task!r} for kinds {sorted(map(str, clash))}.")
    return PIPELINES.register(name, cls, task=task, kinds=kinds)


def model_tasks(model) -> Tuple[str, ...]:
    """The tasks a model serves, its main one first: what its core type declares (``CORES``' ``tasks``)."""
    from ..models.core_registry import core_tasks

    core_type = getattr(getattr(model, "config", None), "core_type", None)
    return core_tasks(core_type) if core_type is not None else ("generate", "invert")


def task_of(cls) -> Optional[str]:
    """The task ``cls`` is registered for (``None`` for an unregistered class)."""
    for entry in PIPELINES.entries():
        if entry.value is cls:
            return entry.task
    return None


def check_task(model, task: str, pipeline_name: str = "this pipeline") -> None:
    """``ValueError`` naming the tasks a model serves (and the pipeline of its main one) unless it serves ``task``."""
    tasks = model_tasks(model)
    if task not in tasks:
        main = pipeline_class_for(model, tasks[0]).__name__
        raise ValueError(f"{pipeline_name} runs the task {task!r}, but this linearizer's core "
                         f"({model.config.core_type!r}) serves {', '.join(map(repr, tasks))}: use {main}.")


def pipeline_class_for(model_or_kind: Union[None, str, object], task: Optional[str] = None):
    """The pipeline class that runs ``task`` for a model (a ``LinearizerModel``) or a kind (``None``, ``"class"``,
    ``"text"``); ``ValueError`` naming the known kinds and tasks otherwise.

    ``task=None`` is the model's main task (the first its core type declares; ``"generate"`` for a kind). A model
    whose core does not serve ``task`` is refused, naming the tasks it serves.
    """
    kind = model_or_kind
    if kind is not None and not isinstance(kind, str):
        tasks = model_tasks(kind)
        if task is None:
            task = tasks[0]
        if task in TASKS and task not in tasks:
            raise ValueError(f"This linearizer's core ({kind.config.core_type!r}) serves the tasks "
                             f"{', '.join(map(repr, tasks))}, not {task!r}.")
        kind = getattr(getattr(kind, "config", None), "conditioning", None)
    task = "generate" if task is None else task
    if task not in TASKS:
        raise ValueError(f"Unknown pipeline task {task!r}; expected one of {', '.join(TASKS)}.")
    for entry in PIPELINES.entries():
        if entry.task == task and kind in entry.kinds:
            return entry.value
    kinds = sorted({repr(k) for e in PIPELINES.entries() if e.task == task for k in e.kinds})
    raise ValueError(f"Unknown conditioning {kind!r} for the task {task!r}; expected one of {', '.join(kinds)}.")

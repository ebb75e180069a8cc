"""The pipeline registry: every (task, model kind) has exactly one class, the class accepts a model of that kind,
and a new pipeline or task is one registration."""

from __future__ import annotations

import inspect

import pytest

from diffusers_linearizer.models.core_registry import CORES

from diffusers_linearizer import LinearizerScheduler
from diffusers_linearizer.pipelines import tasks
from diffusers_linearizer.pipelines.linearizer import LinearizerInversionPipeline, LinearizerPipeline
from diffusers_linearizer.pipelines.tasks import PIPELINES, TASKS, model_tasks, pipeline_class_for, register_pipeline

from .utils import tiny_model

KINDS = {None: {}, "class": dict(conditioning="class", num_classes=3),
         "text": dict(conditioning="text", condition_dim=16)}


def _model(kind, task="generate"):
    """A tiny model of ``kind`` whose core serves ``task`` (the first such core type; ``None`` if there is none)."""
    fits = [e for e in CORES.entries() if task in e.tasks and kind in e.conditionings]
    if not fits:
        return None
    entry = next((e for e in fits if e.name == "shared_basis"), fits[0])
    roles = dict(role_x=1.0, role_y=1.0) if entry.same_g else {}
    return tiny_model(core_type=entry.name, **KINDS[kind], **roles)


def _build(cls, model):
    """``cls`` around ``model`` with the components its ``__init__`` takes."""
    extra = {"scheduler": LinearizerScheduler()} if "scheduler" in inspect.signature(cls.__init__).parameters else {}
    return cls(linearizer=model, **extra)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_task_and_kind_has_one_pipeline_that_takes_the_model(task, kind):
    serving = [e for e in PIPELINES.entries() if e.task == task and kind in e.kinds]
    model = _model(kind, task)
    if model is None:  # no core serves this task for this kind: then no pipeline claims it either
        assert not serving
        return
    assert len(serving) == 1
    cls = pipeline_class_for(model, task)
    assert cls is serving[0].value and cls is pipeline_class_for(kind, task)
    pipe = _build(cls, model)  # its __init__ checks the model kind and task
    assert pipe.linearizer.conditioning == kind
    for other in [k for k in KINDS if k not in cls._model_kinds and _model(k, task) is not None]:
        with pytest.raises(ValueError, match=pipeline_class_for(other, task).__name__):  # names the right class
            _build(cls, _model(other, task))
    for other_task in [t for t in TASKS if t not in model_tasks(model)]:  # a model of another task is refused
        foreign = _model(kind, other_task) or next(m for m in map(lambda k: _model(k, other_task), KINDS) if m is not None)
        with pytest.raises(ValueError, match=f"runs the task {task!r}.*use {pipeline_class_for(foreign).__name__}"):
            _build(cls, foreign)


def test_lookups_name_what_is_known():
    with pytest.raises(ValueError, match="Unknown pipeline task 'stylise'; expected one of generate, invert"):
        pipeline_class_for(None, "stylise")
    with pytest.raises(ValueError, match="Unknown conditioning 'audio'"):
        pipeline_class_for("audio")


def test_a_new_task_is_one_registration(monkeypatch):
    monkeypatch.setitem(TASKS, "reconstruct", "images → images through f")
    with pytest.raises(ValueError, match="serves the tasks 'generate', 'invert', not 'reconstruct'"):
        pipeline_class_for(_model("class"), "reconstruct")  # no core declares the task yet
    monkeypatch.setitem(CORES.entry("shared_basis").declared, "tasks", ("generate", "invert", "reconstruct"))

    class ReconstructionPipeline(LinearizerInversionPipeline):
        pass

    register_pipeline("reconstruction", ReconstructionPipeline, task="reconstruct")
    try:
        assert pipeline_class_for(_model("class"), "reconstruct") is ReconstructionPipeline
        assert pipeline_class_for(None) is LinearizerPipeline  # the other tasks are unchanged
        with pytest.raises(ValueError, match="already serves 'reconstruct'"):
            register_pipeline("again", ReconstructionPipeline, task="reconstruct")
    finally:
        PIPELINES.unregister("reconstruction")
    assert "reconstruction" not in PIPELINES and tasks.PIPELINES is PIPELINES

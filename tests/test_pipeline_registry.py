"""The pipeline registry: every (task, model kind) has exactly one class, the class accepts a model of that kind,
and a new pipeline or task is one registration."""

from __future__ import annotations

import pytest

from diffusers_linearizer.models.core_registry import CORES

from diffusers_linearizer import LinearizerScheduler
from diffusers_linearizer.pipelines import tasks
from diffusers_linearizer.pipelines.linearizer import LinearizerInversionPipeline, LinearizerPipeline
from diffusers_linearizer.pipelines.tasks import PIPELINES, TASKS, pipeline_class_for, register_pipeline

from .utils import tiny_model

KINDS = {None: {}, "class": dict(conditioning="class", num_classes=3),
         "text": dict(conditioning="text", condition_dim=16)}


def _model(kind):
    return tiny_model(core_type="shared_basis", **KINDS[kind])


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_task_and_kind_has_one_pipeline_that_takes_the_model(task, kind):
    serving = [e for e in PIPELINES.entries() if e.task == task and kind in e.kinds]
    assert len(serving) == 1
    cls = pipeline_class_for(_model(kind), task)
    assert cls is serving[0].value and cls is pipeline_class_for(kind, task)
    pipe = cls(linearizer=_model(kind), scheduler=LinearizerScheduler())  # its __init__ checks the model kind
    assert pipe.linearizer.conditioning == kind
    others = [k for k in KINDS if k not in cls._model_kinds]
    for other in others:  # and refuses the other kinds, naming the right class
        with pytest.raises(ValueError, match=pipeline_class_for(other, task).__name__):
            cls(linearizer=_model(other), scheduler=LinearizerScheduler())


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

"""The objective registry: each entry's declarations are true of its component, and a new objective is one
function plus one registration (the loss, the weights and the argument checks follow)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from diffusers_linearizer.training import objective as tobj
from diffusers_linearizer.training.objective_registry import OBJECTIVES, component, parse_objective, weighted_terms

from .utils import perturb_all, tiny_model


def _inputs(n=6, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 1, 8, 8), generator=gen, dtype=dtype)
    noise, t, eps_y, eps_x = tobj.draw_step_noise((1, 8, 8), n, gen, dtype=dtype)
    uniform = torch.rand((n, 1, 8, 8), generator=gen, dtype=dtype)
    return images, noise, t, eps_y, eps_x, uniform


def _model_for(name):
    """A tiny model whose core serves a task the objective ``name`` trains (the flow objectives: shared basis)."""
    from diffusers_linearizer.models.core_registry import CORES

    tasks = set(OBJECTIVES.entry(name).tasks)
    entry = next(e for e in CORES.entries() if e.name == "shared_basis" or (set(e.tasks) & tasks and None in e.conditionings))
    if not set(entry.tasks) & tasks:
        entry = next(e for e in CORES.entries() if set(e.tasks) & tasks)
    extra = dict(role_x=1.0, role_y=1.0) if entry.same_g else {}
    if None not in entry.conditionings:  # a conditional-only core (a style core: one condition per style, odd kernel)
        extra["core_rank"] = 3
        extra.update(conditioning="class", num_classes=3) if "class" in entry.conditionings else extra.update(
            conditioning="text", condition_dim=16)
    return tiny_model(core_type=entry.name, **extra)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_each_component_returns_exactly_its_declared_terms(name):
    torch.manual_seed(0)
    model = _model_for(name).double().eval()
    perturb_all(model, 0.02)
    obj = tobj.LinearizerObjective(model, name, num_inference_steps=4)
    images, noise, t, eps_y, eps_x, uniform = _inputs()
    entry = OBJECTIVES.entry(name)
    condition = torch.zeros(6, dtype=torch.long) if model.conditioning == "class" else None  # a conditional-only core
    out = obj(images, noise, t, eps_y, eps_x, uniform=uniform if entry.needs_uniform else None, condition=condition)
    assert set(out) - {"loss"} == set(entry.terms)
    assert (obj.scheduler is not None) == entry.one_step
    assert set(entry.weighted) <= set(entry.terms) and set(entry.weighted) <= set(weighted_terms())
    # the loss is the sum of the terms, each with weight 1
    torch.testing.assert_close(out["loss"], sum(out[k] for k in entry.terms))


def test_conditions_are_refused_by_objectives_that_do_not_declare_them():
    images, noise, t, eps_y, eps_x, uniform = _inputs()
    for name in OBJECTIVES.names(conditions=False):
        obj = tobj.LinearizerObjective(_model_for(name).double().eval(), name, num_inference_steps=4)
        with pytest.raises(ValueError, match="does not train conditional models"):
            obj(images, noise, t, eps_y, eps_x, uniform=uniform, condition=torch.zeros(6, dtype=torch.long))


def toy_component(objective, inputs):
    """A test objective: the mean squared latent of the images."""
    return {"toy_energy": objective.model.encode(inputs.images, "x").square().mean(),
            "toy_other": inputs.images.mean()}


@contextlib.contextmanager
def registered_toy():
    OBJECTIVES.register("toy", f"{__name__}:toy_component", terms=("toy_energy", "toy_other"),
                        weighted=("toy_energy",), estimates="latent flow matching")
    try:
        yield
    finally:
        OBJECTIVES.unregister("toy")


def test_a_new_objective_is_one_registration():
    model = tiny_model(core_type="shared_basis").double().eval()
    images, noise, t, eps_y, eps_x, _ = _inputs()
    with registered_toy():
        assert "toy_energy" in weighted_terms()
        assert parse_objective("toy:3") == {"toy": 3.0}
        with pytest.raises(ValueError, match="estimate the same loss"):  # declared to estimate what fast does
            parse_objective("fast,toy")
        obj = tobj.LinearizerObjective(model, "toy:3,distill", weights={"toy_energy": 0.5}, num_inference_steps=4)
        out = obj(images, noise, t, eps_y, eps_x)
        energy = model.encode(images, "x").square().mean()  # independent of the component's code path
        torch.testing.assert_close(out["toy_energy"], energy)
        expected = 1.5 * energy + 3 * images.mean() + out["distill_image"] + out["distill_noise"]
        torch.testing.assert_close(out["loss"], expected)
    assert "toy" not in OBJECTIVES and "toy_energy" not in weighted_terms()
    with pytest.raises(ValueError, match="Unknown objective 'toy'; expected some of fast, reference"):
        parse_objective("toy")


def test_components_resolve_to_functions_in_their_modules():
    for name in OBJECTIVES.names():
        fn = component(name)
        assert callable(fn) and fn.__module__.startswith("diffusers_linearizer.training.")

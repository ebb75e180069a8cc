"""Pipeline inputs are checked before any work, each error naming the argument: empty batches, latents without data
or of an integer dtype, empty label lists, non-boolean flags, NaN images, a class model inverted without its class;
runs whose numbers overflow (a huge guidance scale) and collapses that would not fit are errors, never black images
or a machine out of memory. Interpolation works for every kind of model and both modes (the matrix)."""

import math

import pytest
import torch

import diffusers_linearizer as dl
from diffusers_linearizer import LinearizerInversionPipeline
from diffusers_linearizer.cli import main

from .test_conditioning import STEPS, _class_pipe, _text_pipe
from .test_pipeline import make_pipe


@pytest.fixture(scope="module")
def pipe():
    return make_pipe(seed=5, dtype=torch.float64)


@pytest.fixture(scope="module")
def class_pipe():
    return _class_pipe()


@pytest.mark.parametrize("kwargs, message", [
    (dict(latents=torch.empty(1, 1, 8, 8, device="meta")), "latents is on the 'meta' device"),
    (dict(latents=torch.zeros(1, 1, 8, 8, dtype=torch.int64)), "latents must be a floating-point tensor"),
    (dict(latents=torch.zeros(0, 1, 8, 8)), "latents is an empty batch"),
    (dict(latents=torch.full((1, 1, 8, 8), math.nan)), "latents contains NaN"),
    (dict(one_step="no"), "Expected True or False for one_step='no'"),
    (dict(clamp=1), "Expected True or False for clamp=1"),
    (dict(return_dict=None), "Expected True or False for return_dict=None"),
], ids=["meta", "integer", "empty", "nan", "one_step", "clamp", "return_dict"])
def test_generation_inputs_are_named_before_any_work(pipe, kwargs, message, monkeypatch):
    monkeypatch.setattr(type(pipe), "run_g", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=message):
        pipe(num_inference_steps=STEPS, **kwargs)


def test_an_empty_label_list_is_named(class_pipe):
    with pytest.raises(ValueError, match="class_labels is empty"):
        class_pipe(class_labels=[], num_inference_steps=STEPS)


@pytest.mark.parametrize("image, kwargs, message", [
    (torch.rand(0, 1, 8, 8), {}, "image is an empty batch"),
    (torch.full((1, 1, 8, 8), math.nan), {}, r"image contains NaN or infinite values \(64 NaN"),
    (torch.rand(1, 1, 8, 8) > 0.5, {}, "got dtype torch.bool"),
    (torch.empty(1, 1, 8, 8, device="meta"), {}, "image is on the 'meta' device"),
    (torch.rand(1, 1, 8, 8), dict(check_range="yes"), "Expected True or False for check_range='yes'"),
], ids=["empty", "nan", "bool", "meta", "flag"])
def test_inversion_inputs_are_named(pipe, image, kwargs, message):
    inv = LinearizerInversionPipeline(**pipe.components)
    with pytest.raises(ValueError, match=message):
        inv(image, num_inference_steps=STEPS, **kwargs)


def test_a_class_model_is_not_inverted_without_its_class(class_pipe):
    inv = LinearizerInversionPipeline(**class_pipe.components)
    with pytest.raises(ValueError, match="pass class_labels, the class each image is inverted under"):
        inv(torch.rand(2, 1, 8, 8), num_inference_steps=STEPS)


@pytest.mark.parametrize("one_step", [True, False])
def test_an_overflowing_guidance_scale_is_an_error_not_an_image(class_pipe, one_step):
    with pytest.raises(ValueError, match=r"non-finite .* guidance_scale=1e\+300"):
        class_pipe(class_labels=[1], guidance_scale=1e300, num_inference_steps=STEPS, one_step=one_step,
                   output_type="pt")


def test_a_collapse_that_cannot_fit_is_refused_with_its_estimate(pipe, monkeypatch):
    monkeypatch.setattr(type(pipe), "run_g", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setenv("DIFFUSERS_LINEARIZER_MAX_COLLAPSE_MEMORY", "1GB")  # the limit, whatever this machine has
    with pytest.raises(ValueError) as info:
        pipe(num_inference_steps=10**7)
    message = str(info.value)
    assert "num_inference_steps=10000000" in message and "of memory, over the limit of" in message
    assert "DIFFUSERS_LINEARIZER_MAX_COLLAPSE_MEMORY" in message and "collapse_limits" in message
    with dl.collapse_limits(memory="100TB", seconds=1e9):  # the override lets the estimate pass
        est = pipe.check_collapse_budget(10**7, "euler")
    assert est.evaluations == 10**7 - 1  # one evaluation per Euler step, the core is time-dependent
    monkeypatch.setenv("DIFFUSERS_LINEARIZER_MAX_COLLAPSE_SECONDS", "1")
    with pytest.raises(ValueError, match=r"about .* s, over the limit of 1 s"), dl.collapse_limits(memory="100TB"):
        pipe(num_inference_steps=10**7)
    monkeypatch.setenv("DIFFUSERS_LINEARIZER_MAX_COLLAPSE_SECONDS", "soon")
    with pytest.raises(ValueError, match="must be a positive number of seconds, got 'soon'"):
        pipe(num_inference_steps=10**7)


def test_the_estimate_counts_shared_stage_times_once():
    from diffusers_linearizer.schedulers.collapse_budget import distinct_evaluations

    assert distinct_evaluations(10, (0.0,)) == 10
    assert distinct_evaluations(10, (0.0, 1.0)) == 11           # Heun: the end of a step starts the next
    assert distinct_evaluations(10, (0.0, 0.5, 0.5, 1.0)) == 21  # RK4: t, t + h/2 (twice), t + h


def test_the_command_line_refuses_both_before_writing(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["generate", "--model", "fashion-mnist-classes", "--class", "1", "--guidance-scale", "1e9",
                 "-n", "1", "-o", str(out)]) == 2
    assert "guidance_scale=1e+09" in capsys.readouterr().err and not out.exists()
    assert main(["generate", "--steps", "10000000", "-n", "1", "-o", str(out)]) == 2
    assert "over the limit" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------ interpolation: kind × mode
def _ends(kind):
    """A pipeline of ``kind``, its inversion pipeline, two unclamped generated images and their conditions."""
    if kind is None:
        gen, cond = make_pipe(seed=6, dtype=torch.float64), {}
        conds = [{}, {}]
    elif kind == "class":
        gen = _class_pipe()
        conds, cond = [dict(class_labels=[2]), dict(class_labels=[0])], dict(class_labels=[2, 0])
    else:
        gen = _text_pipe()
        conds, cond = [dict(prompt=["a red cat"]), dict(prompt=["a blue dog"])], dict(prompt=["a red cat", "a blue dog"])
    if kind is not None:
        for c in conds:
            c["guidance_scale"] = 2.0
        cond["guidance_scale"] = 2.0
    eps = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 0.5
    images = [gen(latents=eps[i:i + 1], num_inference_steps=STEPS, output_type="pt", clamp=False, **conds[i]).images
              for i in range(2)]
    return gen, LinearizerInversionPipeline(**gen.components), images, eps, conds, cond


@pytest.mark.parametrize("mode", ["slerp", "linear"])
@pytest.mark.parametrize("kind", [None, "class", "text"], ids=["unconditional", "class", "text"])
def test_interpolation_for_every_kind_and_mode(kind, mode):
    gen, inv, (a, b), eps, conds, cond = _ends(kind)
    out = inv.interpolate(a, b, num_frames=4, mode=mode, num_inference_steps=STEPS, output_type="pt",
                          check_range=False, **cond)
    # the ends: the noise that generated each image, and the frames are those images
    torch.testing.assert_close(out.noise[0], eps[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(out.noise[-1], eps[1], rtol=0, atol=1e-7)
    torch.testing.assert_close(out.frames[0], a[0].clamp(0, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.frames[-1], b[0].clamp(0, 1), rtol=0, atol=1e-6)
    lam = torch.linspace(0, 1, 4, dtype=torch.float64)
    ea, eb = eps[0].flatten(), eps[1].flatten()
    if mode == "linear":  # the straight line, computed here
        expected = (1 - lam)[:, None] * ea + lam[:, None] * eb
        torch.testing.assert_close(out.noise.flatten(1), expected, rtol=0, atol=1e-7)
    else:  # the great circle: norms interpolate linearly, directions stay in the plane of the ends
        norms = (1 - lam) * ea.norm() + lam * eb.norm()
        torch.testing.assert_close(out.noise.flatten(1).norm(dim=1), norms, rtol=1e-6, atol=0)
    if kind is None:  # a middle frame is the generation of its noise (an independent path: the generation pipeline)
        mid = gen(latents=out.noise[1:2], num_inference_steps=STEPS, output_type="pt").images
        torch.testing.assert_close(out.frames[1:2], mid, rtol=0, atol=1e-6)


def test_interpolation_takes_a_model_s_unclamped_outputs_only_when_asked(pipe):
    inv = LinearizerInversionPipeline(**pipe.components)
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64) * 3.0 - 1.0
    with pytest.raises(ValueError, match="clamp=False"):
        inv.interpolate(x, x, num_frames=2, num_inference_steps=STEPS)
    assert inv.interpolate(x, x, num_frames=2, num_inference_steps=STEPS, check_range=False).frames


@pytest.mark.parametrize("lo, hi, hint", [
    (-1.44, 3.62, "a model's raw output, generated with clamp=False"),  # what an unclamped model output looks like
    (-1.0, 1.0, "it looks like [-1, 1]"),
    (0.0, 255.0, "it looks like [0, 255]"),
])
def test_the_range_hint_fits_the_values(pipe, lo, hi, hint):
    inv = LinearizerInversionPipeline(**pipe.components)
    x = torch.linspace(lo, hi, 64, dtype=torch.float64).view(1, 1, 8, 8)
    with pytest.raises(ValueError) as info:
        inv(x, num_inference_steps=STEPS)
    assert hint in str(info.value) and "check_range=False" in str(info.value)
    others = {"it looks like [-1, 1]", "it looks like [0, 255]", "a model's raw output"} - {hint}
    assert not any(o in str(info.value) for o in others if o not in hint)

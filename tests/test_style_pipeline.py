"""The style core and LinearizerStyleTransferPipeline: exactness (α = 0, un-stylisation round trips, compositions,
blends as weighted core sums), any image size, bad input refused before any work, saving and loading."""

import math
import sys

import numpy as np
import PIL.Image

import pytest
import torch

from diffusers_linearizer import (
    LinearizerClassPipeline, LinearizerModel, LinearizerPipeline, LinearizerStyleTransferPipeline,
)
from diffusers_linearizer.operators import CircularConvolution

NAMES = {"0": "ink", "1": "pastel", "2": "mosaic"}


def style_model(dtype=torch.float32, seed=0, scale=0.1):
    torch.manual_seed(seed)
    model = LinearizerModel(sample_size=8, in_channels=3, num_blocks=1, conditioner_channels=8, conditioner_layers=1,
                            core_type="style_conv", core_rank=3, conditioning="class", num_classes=3, id2label=NAMES,
                            role_x=1.0, role_y=1.0)
    with torch.no_grad():
        model.core.delta.normal_(0, scale, generator=torch.Generator().manual_seed(seed))
        for p in model.g.parameters():  # couplings away from the identity, so that g is a real nonlinear map
            if p.ndim == 4 and p.shape[0] <= 12:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(seed + 1))
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def pipe():
    p = LinearizerStyleTransferPipeline(linearizer=style_model())
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def pipe64():
    p = LinearizerStyleTransferPipeline(linearizer=style_model(torch.float64))
    p.set_progress_bar_config(disable=True)
    return p


def photo(h=12, w=16, n=1, dtype=torch.float32, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def test_zero_strength_returns_the_photo(pipe):
    x = photo()
    y = pipe(x, style="ink", strength=0.0, output_type="pt").images
    assert (y - x).abs().max() <= 1e-5
    assert (pipe(x, style="ink", output_type="pt").images - x).abs().max() > 1e-3  # the style does something


def test_unstylize_round_trip_float32_and_float64(pipe, pipe64):
    for p, dtype, bound in ((pipe, torch.float32, 1e-4), (pipe64, torch.float64, 1e-10)):
        x = photo(dtype=dtype)
        for kw in (dict(style="pastel"), dict(style=["ink", 2], style_weights=[1, 3], strength=0.6)):
            y = p(x, output_type="pt", clamp=False, **kw).images
            back = p.unstylize(y, output_type="pt", check_range=False, **kw)
            assert (back.images - x).abs().max() <= bound, (dtype, kw)
            assert back.condition_number >= 1 and math.isfinite(back.condition_number)


def test_composition_as_one_core_equals_two_calls(pipe64):
    x = photo(dtype=torch.float64)
    once = pipe64.compose(x, ["ink", "mosaic"], strengths=[1.0, 0.5], output_type="pt", clamp=False).images
    first = pipe64(x, style="ink", output_type="pt", clamp=False).images
    twice = pipe64(first, style="mosaic", strength=0.5, output_type="pt", clamp=False, check_range=False).images
    assert (once - twice).abs().max() <= 1e-9


def test_blend_is_the_weighted_core_sum_and_matches_the_training_forward(pipe64):
    core = pipe64.linearizer.core
    w = pipe64.style_weights(["ink", "pastel"], [1.0, 3.0])
    assert torch.allclose(w, torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64))
    blend = pipe64.style_operator(w, 1.0, (12, 16))
    parts = 0.25 * core.operator(condition=0, size=(12, 16)) + 0.75 * core.operator(condition=1, size=(12, 16))
    assert torch.allclose(blend.spectrum, parts.spectrum, atol=1e-12)
    x = photo(dtype=torch.float64)
    model = pipe64.linearizer
    by_hand = model.apply_g(model.core(model.apply_g(x, "x"), condition=w[None]), "y", inverse=True)  # conv2d path
    out = pipe64(x, style=["ink", "pastel"], style_weights=[1, 3], output_type="pt", clamp=False).images
    assert (out - by_hand).abs().max() <= 1e-10
    assert torch.allclose(model(x, condition=torch.tensor([1])).sample,
                          pipe64(x, style=1, output_type="pt", clamp=False).images, atol=1e-10)


def test_any_size_pad_and_crop(pipe):
    for h, w in ((8, 8), (12, 16), (20, 6)):
        assert pipe(photo(h, w), style=0, output_type="pt").images.shape == (1, 3, h, w)
    odd = photo(11, 15)
    with pytest.raises(ValueError, match="multiples of 2.*resize_mode"):
        pipe(odd, style=0)
    assert pipe(odd, style=0, resize_mode="pad", output_type="pt").images.shape == (1, 3, 11, 15)
    assert pipe(odd, style=0, resize_mode="crop", output_type="pt").images.shape == (1, 3, 10, 14)
    pil = PIL.Image.fromarray((np.random.default_rng(0).random((10, 14, 3)) * 255).astype(np.uint8))
    out = pipe(pil, style="pastel")
    assert isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (14, 10)


def test_preserve_color_keeps_the_chroma(pipe):
    from diffusers_linearizer.pipelines.linearizer.pipeline_linearizer_style import keep_color

    x = photo() * 0.5 + 0.25
    plain = pipe(x, style=0, output_type="pt", clamp=False).images
    kept = pipe(x, style=0, preserve_color=True, output_type="pt", clamp=False).images
    assert torch.allclose(kept, keep_color(plain, x), atol=1e-6)

    def chroma(t):
        y = 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]
        return torch.stack([t[:, 2] - y, t[:, 0] - y])

    assert torch.allclose(chroma(kept), chroma(x), atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(style=5), r"Unknown style 5.*0: 'ink', 1: 'pastel', 2: 'mosaic'"),
    (dict(style="sepia"), r"Unknown style 'sepia'.*'ink'"),
    (dict(style=[0, 1], style_weights=[1, -1]), "non-negative"),
    (dict(style=[0, 1], style_weights=[0, 0]), "not all zero"),
    (dict(style=[0, 1], style_weights=[1, 2, 3]), "expected 2"),
    (dict(style=None, style_weights=[1, 2]), "expected 3"),
    (dict(style=0, strength=1.5), "strength"),
    (dict(style=0, resize_mode="stretch"), "resize_mode"),
])
def test_bad_input_is_refused_before_any_work(pipe, monkeypatch, kwargs, message):
    monkeypatch.setattr(pipe.linearizer, "apply_g", lambda *a, **k: pytest.fail("g ran"))
    with pytest.raises(ValueError, match=message):
        pipe(photo(), **kwargs)


def test_grayscale_and_ill_conditioned_unstylize_refused(monkeypatch):
    p = LinearizerStyleTransferPipeline(linearizer=style_model())
    grey = PIL.Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L")
    with pytest.raises(ValueError, match=r"3-channel.*convert\('RGB'\)"):
        p(grey, style=0)
    with pytest.raises(ValueError, match="3-channel"):
        p(torch.rand(1, 1, 8, 8), style=0)
    with torch.no_grad():  # style 2 loses channel 0 of the space-to-depth grid: singular
        p.linearizer.core.delta[2].zero_()
        p.linearizer.core.delta[2, 0, 0, 1, 1] = -1.0 + 2 ** -20
    monkeypatch.setattr(p.linearizer, "apply_g", lambda *a, **k: pytest.fail("g ran"))
    with pytest.raises(ValueError, match=r"condition number is \d\.\d+e\+0[67] > max_condition"):
        p.unstylize(photo(), style="mosaic")


def test_model_needs_one_network_and_other_pipelines_refuse_it():
    kw = dict(sample_size=8, in_channels=3, num_blocks=1, conditioner_channels=8, core_type="style_conv", core_rank=3,
              conditioning="class", num_classes=2)
    with pytest.raises(ValueError, match="shared_g=True"):
        LinearizerModel(shared_g=False, **kw)
    with pytest.raises(ValueError, match="role_x equal to role_y"):
        LinearizerModel(role_x=1.0, role_y=0.0, **kw)
    with pytest.raises(ValueError, match="kernel size"):
        LinearizerModel(role_x=1.0, role_y=1.0, **{**kw, "core_rank": 0})
    model = LinearizerModel(role_x=1.0, role_y=1.0, **kw)
    assert model.size_free and model.size_multiple == 2
    with pytest.raises(ValueError, match="stylize.*LinearizerStyleTransferPipeline"):
        LinearizerClassPipeline(linearizer=model, scheduler=None)


def test_save_and_load_by_every_route(pipe, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    import diffusers.utils.dynamic_modules_utils as dyn

    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    for name in [m for m in sys.modules if m.startswith("diffusers_modules")]:  # a fresh process's view: an earlier
        monkeypatch.delitem(sys.modules, name)  # test's copy of pipeline.py would keep its classes
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe.save_pretrained(tmp_path / "saved")
    pipe.save_pretrained(tmp_path / "plain", pipeline_module=False)
    assert "ink" in (tmp_path / "saved" / "README.md").read_text()
    x = photo()
    expected = pipe(x, style="mosaic", output_type="pt").images
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    routes = [LinearizerStyleTransferPipeline.from_pretrained(tmp_path / "saved"),
              LinearizerPipeline.from_pretrained(tmp_path / "saved"),
              DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True),
              DiffusionPipeline.from_pretrained(tmp_path / "plain", custom_pipeline="pipelines/linearizer_style",
                                                trust_remote_code=True)]
    for loaded in routes:
        assert type(loaded).__name__ == "LinearizerStyleTransferPipeline"
        assert loaded.id2style == {0: "ink", 1: "pastel", 2: "mosaic"}
        loaded.set_progress_bar_config(disable=True)
        assert torch.equal(loaded(x, style="mosaic", output_type="pt").images, expected)


def test_core_operator_is_the_fft_form_of_the_training_forward():
    model = style_model(torch.float64)
    z = photo(6, 10, n=2, dtype=torch.float64)
    ids = torch.tensor([2, 0])
    fwd = model.core(z, condition=ids)
    for i in range(2):
        op = model.core.operator(condition=int(ids[i]), size=(6, 10))
        assert isinstance(op, CircularConvolution)
        assert torch.allclose(op.apply_images(z[i:i + 1]), fwd[i:i + 1], atol=1e-12)
    assert model.core.parameters_per_style == 12 * 12 * 9

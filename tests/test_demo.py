"""The web demo's callbacks (no browser): every tab checked against an independent computation (the stepped
sampler, a dense fp64 SVD of the core), bad input refused with a message, concurrent users, and the gradio
layer's error handling (when gradio is installed)."""

import copy
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_linearizer import LinearizerPipeline
from diffusers_linearizer.demo import DemoError, LinearizerDemo
from diffusers_linearizer.demo.edit_view import EDIT_SCALE
from diffusers_linearizer.demo.inputs import pipeline_features

from .test_pipeline import STEPS, make_pipe

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 8  # the tiny test model: 1×8×8


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return LinearizerDemo(make_pipe(seed=1), work_dir=str(tmp_path_factory.mktemp("demo")))


def stepped(pipe, seeds, temperature=1.0):
    """Independent reference: the stepped sampler on noise drawn per image from its seed."""
    noise = torch.cat([torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return pipe(batch_size=len(seeds), latents=noise * temperature, num_inference_steps=STEPS, one_step=False,
                output_type="pt", clamp=False).images.double()


def pixels(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def tiles(grid: PIL.Image.Image, n: int, size: int = SIZE, pad: int = 2):
    arr = pixels(grid)
    return [arr[pad:pad + size, pad + i * (size + pad):pad + i * (size + pad) + size] for i in range(n)]


def db(message: str) -> float:
    match = re.search(r"PSNR[^0-9∞]*([0-9.]+|∞) dB", message)
    assert match, message
    return float("inf") if match.group(1) == "∞" else float(match.group(1))


def uint8_image(x: torch.Tensor) -> PIL.Image.Image:
    return PIL.Image.fromarray((x.clamp(0, 1)[0, 0].numpy() * 255).round().astype(np.uint8), mode="L")


# ---------------------------------------------------------------------- 1. generate
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_generate_equals_the_stepped_sampler(demo, temperature):
    grid, message, record = demo.generate(5, 3, STEPS, "euler", temperature)
    ref = stepped(demo.pipe, [5, 6, 7], temperature)
    # float32 model and a float64-accumulated B: both runs agree to ~1e-6 of the [0, 1] range
    np.testing.assert_allclose(record["images"], ref.numpy(), atol=1e-5, rtol=0)
    for tile, r in zip(tiles(grid, 3), ref.clamp(0, 1)):
        np.testing.assert_allclose(tile, r[0].numpy(), atol=1 / 255 + 1e-9)  # one 8-bit level
    assert "3 image(s)" in message and f"temperature {temperature:g}" in message
    stepped_grid, compare = demo.compare_stepped(record)
    assert db(compare) > 100  # float32 round-off
    assert np.abs(pixels(stepped_grid) - pixels(grid)).max() <= 1 / 255 + 1e-9


@pytest.mark.parametrize("bad, expected", [
    (dict(steps=1), "Steps T must be between 2"),
    (dict(steps=2.5), "whole number"),
    (dict(steps=None), "missing"),
    (dict(num_images=0), "Number of images"),
    (dict(solver="midpoint"), "Unknown solver"),
    (dict(temperature="hot"), "Temperature"),
])
def test_generate_refuses_bad_input(demo, bad, expected):
    args = dict(seed=0, num_images=2, steps=STEPS, solver="euler", temperature=1.0)
    args.update(bad)
    with pytest.raises(DemoError, match=expected):
        demo.generate(**args)


def test_compare_needs_a_generation_first(demo):
    with pytest.raises(DemoError, match="Generate images first"):
        demo.compare_stepped(None)


class TemperaturePipeline(LinearizerPipeline):
    """A pipeline whose call takes ``temperature`` (and records it), as a newer pipeline may."""

    def __call__(self, *args, temperature: float = 1.0, **kwargs):
        self.seen_temperature = temperature
        latents = self.prepare_noise(kwargs["batch_size"], generator=kwargs.pop("generator")) * temperature
        return super().__call__(*args, latents=latents, **kwargs)


class NoTemperaturePipeline(LinearizerPipeline):
    """An older pipeline's signature: no ``temperature`` (the demo then scales the noise it passes)."""

    def __call__(self, batch_size=None, num_inference_steps=100, solver=None, one_step=True, generator=None,
                 latents=None, output_type="pil", return_dict=True, clamp=True):
        return super().__call__(batch_size=batch_size, num_inference_steps=num_inference_steps, solver=solver,
                                one_step=one_step, generator=generator, latents=latents, output_type=output_type,
                                return_dict=return_dict, clamp=clamp)


class ClassPipeline(LinearizerPipeline):
    """A class-conditional pipeline's signature (labels recorded, otherwise unconditional)."""

    def __call__(self, *args, class_labels=None, guidance_scale: float = 1.0, **kwargs):
        self.seen = (class_labels, guidance_scale)
        return super().__call__(*args, **kwargs)


def test_features_follow_the_pipeline_signature(tmp_path):
    base = make_pipe(seed=1)
    plain = pipeline_features(base)
    assert plain["temperature"] and plain["class_labels"] is None and not plain["prompt"]
    old = pipeline_features(NoTemperaturePipeline(**base.components))
    assert not old["temperature"] and old["class_labels"] is None and not old["prompt"]
    demo_old = LinearizerDemo(NoTemperaturePipeline(**base.components), work_dir=str(tmp_path))
    _, _, record = demo_old.generate(5, 3, STEPS, "euler", 0.6)
    np.testing.assert_allclose(record["images"], stepped(base, [5, 6, 7], 0.6).numpy(), atol=1e-5, rtol=0)

    pipe = TemperaturePipeline(**base.components)
    demo = LinearizerDemo(pipe, work_dir=str(tmp_path))
    assert demo.features["temperature"]
    _, _, record = demo.generate(5, 3, STEPS, "euler", 0.6)
    assert pipe.seen_temperature == 0.6
    np.testing.assert_allclose(record["images"], stepped(base, [5, 6, 7], 0.6).numpy(), atol=1e-5, rtol=0)


def test_class_names_are_checked(tmp_path):
    base = make_pipe(seed=1)
    base.linearizer.register_to_config(class_names=["shirt", "bag"])
    pipe = ClassPipeline(**base.components)
    demo = LinearizerDemo(pipe, work_dir=str(tmp_path))
    assert demo.conditional and demo.features["guidance_scale"] and demo.features["num_classes"] == 2
    demo.generate(0, 2, STEPS, "euler", 1.0, class_name="bag", guidance_scale=2.0)
    labels, scale = pipe.seen
    assert labels.tolist() == [1, 1] and scale == 2.0
    with pytest.raises(DemoError, match="no class 'unicorn'.*shirt, bag"):
        demo.generate(0, 2, STEPS, "euler", 1.0, class_name="unicorn")


# ---------------------------------------------------------------------- 2. invert
def test_invert_regenerates_the_image(demo):
    image = uint8_image(stepped(demo.pipe, [11]).float())
    noise_picture, table, regen, message = demo.invert(image, STEPS, "euler")
    assert db(message) > 100
    assert np.abs(pixels(regen) - pixels(image)).max() <= 1 / 255 + 1e-9
    assert noise_picture.size == (SIZE, SIZE) and "| std |" in table and "| dimension | 64 |" in table


def test_invert_refuses_what_the_model_cannot_take(demo, tmp_path):
    rgb = PIL.Image.new("RGB", (SIZE, SIZE), (10, 200, 30))
    with pytest.raises(DemoError, match=r"8×8 grayscale.*mode RGB.*resize"):
        demo.invert(rgb, STEPS, "euler")
    big = PIL.Image.new("L", (20, 12), 128)
    with pytest.raises(DemoError, match=r"size 20×12 instead of 8×8.*convert\('L'\)\.resize\(\(8, 8\)\)"):
        demo.invert(big, STEPS, "euler")
    _, _, _, message = demo.invert(big, STEPS, "euler", convert=True)  # converted on request
    assert "converted from 20×12 L to 8×8 L" in message and db(message) > 100
    with pytest.raises(DemoError, match="Load an image first"):
        demo.invert(None, STEPS, "euler")
    with pytest.raises(DemoError, match="at least 2|between 2"):
        demo.invert(big, 1, "euler")


def test_uploads(demo, tmp_path):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(DemoError, match="broken.png.*corrupted or not an image"):
        demo.load_upload(str(corrupt))
    good = tmp_path / "good.png"
    PIL.Image.new("RGB", (30, 30), (1, 2, 3)).save(good)
    preview, image, message = demo.load_upload(str(good))
    assert image.size == (30, 30) and "convert and resize" in message
    with pytest.raises(DemoError, match="Unknown test image"):
        demo.load_example("no such picture")
    name = next(iter(demo.examples()))
    _, image, message = demo.load_example(name)
    assert image.size == (SIZE, SIZE) and "convert" not in message


# ---------------------------------------------------------------------- 3. interpolate
def test_interpolate_ends_at_the_two_images(demo):
    a, b = (uint8_image(stepped(demo.pipe, [s]).float()) for s in (1, 2))
    strip, gif, message = demo.interpolate(a, b, 5, "slerp", STEPS, "euler")
    first, *_, last = tiles(strip, 5)
    assert np.abs(first - pixels(a)).max() <= 1 / 255 + 1e-9 and np.abs(last - pixels(b)).max() <= 1 / 255 + 1e-9
    with PIL.Image.open(gif) as animation:
        assert animation.n_frames == 5
    assert db(message) > 100
    with pytest.raises(DemoError, match="Number of frames"):
        demo.interpolate(a, b, 1, "slerp", STEPS, "euler")
    with pytest.raises(DemoError, match="image B"):
        demo.interpolate(a, None, 4, "slerp", STEPS, "euler")


# ---------------------------------------------------------------------- 4. edit
def test_edit_moves_along_a_singular_vector_and_back(demo):
    image = uint8_image(stepped(demo.pipe, [4]).float())
    original, directions, message, record = demo.edit_start(image, 0.5)
    k = record["k"]
    assert len(directions) == 2 * k and "PSNR" in message
    # all sliders at 0 give back the image
    assert np.abs(pixels(original) - pixels(image)).max() <= 1 / 255 + 1e-9
    moved, _ = demo.edit(record, 1.0, *([0.0] * (k - 1)))
    back, back_message = demo.edit(record, *([0.0] * k))
    assert np.array_equal(pixels(back), pixels(original)) and db(back_message) > 100

    # independent: the top right singular vector of the dense fp64 core A_0.5 (up to its sign)
    model = demo.model
    A = model.core_operator(0.5, dtype=torch.float64).to_dense(max_dim=model.latent_dim)
    v1 = torch.linalg.svd(A).Vh[0]
    x = torch.from_numpy(pixels(image)).float()[None, None]
    with torch.no_grad():
        z = model.encode(x, "x").double()
        candidates = [model.decode((z + s * EDIT_SCALE * z.norm() * v1.view_as(z)).float(), "x") for s in (1, -1)]
    errors = [np.abs(pixels(moved) - c.clamp(0, 1)[0, 0].numpy()).max() for c in candidates]
    assert min(errors) <= 1 / 255 + 1e-6, errors
    with pytest.raises(DemoError, match="Start editing"):
        demo.edit(None, 0.0)
    with pytest.raises(DemoError, match="Core time t"):
        demo.edit_start(image, 1.5)


# ---------------------------------------------------------------------- concurrency
def test_concurrent_users_get_their_own_results(demo):
    seeds = [20, 30, 40, 50]
    expected = {s: demo.generate(s, 2, STEPS, "heun")[2]["images"] for s in seeds}
    image = uint8_image(stepped(demo.pipe, [9]).float())
    results, errors = {}, []

    def user(seed):
        try:
            for _ in range(3):
                results[seed] = demo.generate(seed, 2, STEPS, "heun")[2]["images"]
                assert db(demo.invert(image, STEPS, "rk4")[3]) > 100
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=user, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for s in seeds:
        np.testing.assert_allclose(results[s], expected[s], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- packaging, CLI, gradio layer
def test_the_package_does_not_import_gradio():
    code = "import sys, diffusers_linearizer.demo, diffusers_linearizer.cli; assert 'gradio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120)


def test_cli_demo_without_gradio(monkeypatch, capsys):
    from diffusers_linearizer.cli import build_parser, main

    args = build_parser().parse_args(["demo", "--port", "7999", "--no-share"])
    assert (args.port, args.share, args.host, args.model) == (7999, False, "127.0.0.1", None)
    assert build_parser().parse_args(["demo", "--share"]).share
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    assert main(["demo"]) == 1
    assert "pip install" in capsys.readouterr().err


def test_requirements_cover_the_package_and_the_demo_extra():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["demo"])
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    assert wanted == {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_gradio_handlers_show_messages_instead_of_tracebacks(demo):
    gr = pytest.importorskip("gradio")
    from diffusers_linearizer.demo.app import _guarded, build_app

    invert = _guarded(gr, demo.invert, 4, 3, clear=(0, 1, 2))
    out = invert(PIL.Image.new("RGB", (3, 3)), STEPS, "euler", False, None)
    assert out[:3] == (None, None, None) and "grayscale" in out[3]
    out = invert(None, 1, "euler", False, None)
    assert "Steps T" in out[3]

    def broken(x):
        raise RuntimeError("kaboom")

    out = _guarded(gr, broken, 2, 1)(1)
    assert isinstance(out[0], type(gr.skip())) and "RuntimeError: kaboom" in out[1]
    ok = invert(uint8_image(stepped(demo.pipe, [3]).float()), STEPS, "euler", False, None)
    assert db(ok[3]) > 100

    blocks = build_app(demo)
    assert isinstance(blocks, gr.Blocks)
    assert {"generate-button", "invert-button", "interpolate-button", "edit-start"} <= {
        getattr(b, "elem_id", None) for b in blocks.blocks.values()}


def test_space_entry_point_only_launches():
    text = (REPO_ROOT / "app.py").read_text()
    assert "from diffusers_linearizer.demo import launch" in text and 'if __name__ == "__main__"' in text


def test_the_model_loads_once_per_process(monkeypatch):
    from diffusers_linearizer.demo import callbacks, get_demo

    monkeypatch.setattr(callbacks, "_DEMOS", {})
    first = get_demo()  # the packaged model, no network
    assert get_demo() is first and len(callbacks._DEMOS) == 1
    assert "packaged default" in first.describe()


# ---------------------------------------------------------------------- analysis in the demo (analysis_view)
def test_edit_with_local_directions_at_this_image(demo):
    image = uint8_image(stepped(demo.pipe, [5]).float())
    original, directions, message, record = demo.edit_start(image, 0.5, False, "local directions at this image")
    k = record["k"]
    assert "local directions" in message and len(directions) == 2 * k and "v" in record
    # independent: the top right singular vector of the dense fp64 Jacobian of g_x⁻¹ at z = g_x(x)
    model = demo.model
    x = torch.from_numpy(pixels(image)).float()[None, None]
    with torch.no_grad():
        z = model.encode(x, "x").double()
    m64 = copy.deepcopy(model).double()
    J = torch.func.jacrev(lambda v: m64.decode(v.view_as(z), "x").flatten())(z.flatten())
    v1 = torch.linalg.svd(J).Vh[0]
    assert abs(float(torch.as_tensor(record["v"][0]) @ v1)) > 0.99
    back, back_message = demo.edit(record, *([0.0] * k))
    assert np.array_equal(pixels(back), pixels(original)) and db(back_message) > 100
    with pytest.raises(DemoError, match="Unknown direction set"):
        demo.edit_start(image, 0.5, False, "sideways")


def test_invert_says_whether_the_noise_is_typical(demo):
    _, _, _, message = demo.invert(uint8_image(stepped(demo.pipe, [11]).float()), STEPS, "euler")
    assert "Typical" in message or "Not typical" in message
    # the verdict is the χ² test of the recovered noise against τ·N(0, I), computed here independently
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    noise_image = PIL.Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8), mode="L")
    _, _, _, message = demo.invert(noise_image, STEPS, "euler")
    x = torch.from_numpy(pixels(noise_image)).float()[None, None]
    noise = demo.inv(x, num_inference_steps=STEPS, solver="euler", typicality=False).noise.double()
    tau = demo.model.config.sampling_temperature
    p = stats.chi2.sf(float((noise / tau).square().sum()), noise.numel())
    assert ("Not typical" in message) == (p < 1e-3) and db(message) > 100

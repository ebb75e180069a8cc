"""The `diffusers-linearizer` command line: help texts, generate / invert / interpolate outputs, the
untrained-default warning and error exits."""

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_linearizer import LinearizerInversionPipeline, LinearizerPipeline
from diffusers_linearizer.cli import build_parser, main

from .test_pipeline import STEPS, make_pipe

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny"
    make_pipe("shared_basis", seed=3).save_pretrained(path)
    return path


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.mark.parametrize("command", ["generate", "invert", "interpolate"])
def test_help_explains_every_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for flag in ("--model", "--steps", "--solver", "--seed", "--device", "--dtype", "--output", "--no-progress"):
        assert flag in text
    assert "UNTRAINED" in text and "repo id" in text and "float64" in text


def test_console_script_help(monkeypatch, capsys):
    """`diffusers-linearizer` is declared as `diffusers_linearizer.cli:main`; the module runs as a program."""
    import runpy
    import sys

    text = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'diffusers-linearizer = "diffusers_linearizer.cli:main"' in text
    # `python -m diffusers_linearizer.cli --help`, run as __main__ in this process (runpy is what -m uses)
    monkeypatch.setattr(sys, "argv", ["diffusers_linearizer.cli", "--help"])
    monkeypatch.delitem(sys.modules, "diffusers_linearizer.cli")  # as in a fresh `-m` run (restored afterwards)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("diffusers_linearizer.cli", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("generate", "invert", "interpolate", "train", "demo"))


def test_installed_console_script_is_the_cli():
    from importlib.metadata import entry_points

    scripts = [ep for ep in entry_points(group="console_scripts") if ep.name == "diffusers-linearizer"]
    if not scripts:
        pytest.skip("the package is not installed (only on PYTHONPATH): no console script to check")
    assert scripts[0].load() is main


def test_generate(model_dir, tmp_path):
    out, tensors, singles = tmp_path / "grid.png", tmp_path / "x.pt", tmp_path / "each"
    rc = main(["generate", "--model", str(model_dir), "--num-images", "5", "--batch-size", "2", "--steps",
               str(STEPS), "--seed", "7", "--output", str(out), "--save-tensors", str(tensors), "--save-images",
               str(singles), "--no-progress", "--device", "cpu"])
    assert rc == 0
    grid = PIL.Image.open(out)
    assert grid.mode == "L" and grid.size == (3 * 10 + 2, 2 * 10 + 2)  # 3 per row, 8 px + 2 px padding
    x = torch.load(tensors)
    pipe = LinearizerPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=5, generator=[torch.Generator().manual_seed(7 + i) for i in range(5)],
               num_inference_steps=STEPS, output_type="pt", clamp=False).images
    torch.testing.assert_close(x, ref, rtol=1e-6, atol=1e-6)
    assert sorted(p.name for p in singles.iterdir()) == [f"{i:05d}.png" for i in range(5)]
    first = np.asarray(PIL.Image.open(singles / "00000.png"))
    np.testing.assert_array_equal(first, (ref[0, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    # the stepped run writes (nearly) the same images
    rc = main(["generate", "--model", str(model_dir), "--num-images", "2", "--steps", str(STEPS), "--seed", "7",
               "--multi-step", "--solver", "rk4", "--output", str(tmp_path / "m.png"), "--save-tensors",
               str(tmp_path / "m.pt"), "--no-progress"])
    assert rc == 0
    ref_rk4 = pipe(batch_size=2, generator=[torch.Generator().manual_seed(7 + i) for i in range(2)],
                   num_inference_steps=STEPS, solver="rk4", output_type="pt", clamp=False).images
    torch.testing.assert_close(torch.load(tmp_path / "m.pt"), ref_rk4, rtol=0, atol=1e-4)


def test_invert_and_interpolate(model_dir, tmp_path, capsys):
    pipe = LinearizerPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    files = []
    for i, img in enumerate(pipe(batch_size=2, generator=[torch.Generator().manual_seed(i) for i in range(2)],
                                 num_inference_steps=STEPS).images):
        files.append(str(tmp_path / f"in{i}.png"))
        img.convert("RGB").save(files[-1])  # an RGB file for a grayscale model: the CLI converts it
    rc = main(["invert", *files, "--model", str(model_dir), "--steps", str(STEPS), "--output",
               str(tmp_path / "inv.png"), "--save-noise", str(tmp_path / "noise.pt")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.count("reconstruction PSNR") == 2
    noise = torch.load(tmp_path / "noise.pt")
    assert noise.shape == (2, 1, 8, 8)
    inv = LinearizerInversionPipeline.from_pretrained(model_dir)
    imgs = [PIL.Image.open(f).convert("L") for f in files]
    torch.testing.assert_close(noise, inv(imgs, num_inference_steps=STEPS).noise)
    assert PIL.Image.open(tmp_path / "inv.png").size == (2 * 10 + 2, 2 * 10 + 2)

    rc = main(["interpolate", *files, "--model", str(model_dir), "--steps", str(STEPS), "--frames", "4",
               "--mode", "linear", "--output", str(tmp_path / "path.png"), "--gif", str(tmp_path / "path.gif")])
    assert rc == 0
    gif = PIL.Image.open(tmp_path / "path.gif")
    assert gif.n_frames == 4
    assert PIL.Image.open(tmp_path / "path.png").size == (4 * 10 + 2, 10 + 2)


def test_default_model_is_announced_as_untrained(tmp_path, capsys, monkeypatch):
    import diffusers_linearizer.cli as cli

    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", str(tmp_path / "absent"))
    rc = main(["generate", "--num-images", "1", "--steps", "2", "--output", str(tmp_path / "g.png"), "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "UNTRAINED" in err
    assert PIL.Image.open(tmp_path / "g.png").size == (36, 36)


def test_packaged_default_model_is_used(model_dir, tmp_path, capsys, monkeypatch):
    import diffusers_linearizer.cli as cli

    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", str(model_dir))
    assert main(["generate", "-n", "1", "--steps", "2", "-o", str(tmp_path / "g.png"), "--no-progress"]) == 0
    assert "UNTRAINED" not in capsys.readouterr().err
    assert PIL.Image.open(tmp_path / "g.png").size == (12, 12)


def exit_status(argv) -> int:
    """The exit status of ``diffusers-linearizer ARGV``: argparse's own errors exit through ``SystemExit``."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def test_errors(model_dir, tmp_path, capsys):
    assert exit_status(["generate", "--steps", "1"]) == 2
    assert exit_status(["generate", "--solver", "dopri5"]) == 2
    big = tmp_path / "big.png"
    PIL.Image.new("L", (16, 16)).save(big)
    assert main(["invert", str(big), "--model", str(model_dir), "--steps", str(STEPS)]) == 2
    assert "1×8×8" in capsys.readouterr().err
    assert main(["invert", str(big), "--model", str(model_dir), "--steps", str(STEPS), "--resize",
                 "--output", str(tmp_path / "ok.png")]) == 0
    assert main(["generate", "--model", str(tmp_path / "nowhere" / "a" / "b"), "-n", "1"]) == 2
    for extra in (["--class", "Bag"], ["--prompt", "a bag"], ["--guidance-scale", "3"]):  # an unconditional model
        assert main(["generate", "--model", str(model_dir), "-n", "1", "-o", str(tmp_path / "u.png"), *extra]) == 2
        err = capsys.readouterr().err
        assert "unconditional" in err and "Traceback" not in err
    assert not (tmp_path / "u.png").exists()


def test_parser_defaults():
    args = build_parser().parse_args(["generate"])
    assert (args.steps, args.seed, args.dtype, args.num_images, args.solver) == (100, 0, "float32", 16, None)


def test_clear_errors_before_any_work(model_dir, tmp_path, capsys, monkeypatch):
    import diffusers_linearizer.cli as cli

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    assert main(["generate", "--model", "/missing/folder", "-n", "1", "-o", str(tmp_path / "g.png")]) == 2
    assert "no such directory" in capsys.readouterr().err
    monkeypatch.setattr(cli, "load_pipeline", forbidden)
    if not torch.cuda.is_available():
        assert main(["generate", "--device", "cuda", "-n", "1", "-o", str(tmp_path / "g.png")]) == 2
        err = capsys.readouterr().err
        assert "no cuda device is available" in err and "Traceback" not in err
    assert main(["generate", "--device", "tpu9", "-n", "1"]) == 2
    assert "not a torch device" in capsys.readouterr().err
    assert main(["generate", "-n", "1", "-o", str(tmp_path / "grid.unknown")]) == 2
    assert "image format" in capsys.readouterr().err
    assert exit_status(["generate", "-n", "1", "--temperature", "0"]) == 2
    assert "--temperature" in capsys.readouterr().err
    assert main(["train", "--output_dir", str(tmp_path / "run"), "--max_train_steps", "0"]) == 2
    assert "untrained" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob("g.png"))


def test_output_format_follows_the_extension_and_temperature(model_dir, tmp_path):
    for name, fmt in (("grid.jpg", "JPEG"), ("grid.webp", "WEBP"), ("grid.png", "PNG")):
        assert main(["generate", "--model", str(model_dir), "-n", "2", "--steps", str(STEPS), "-o", str(tmp_path / name),
                     "--no-progress", "--temperature", "0.8", "--save-tensors", str(tmp_path / "t.pt")]) == 0
        assert PIL.Image.open(tmp_path / name).format == fmt
    pipe = LinearizerPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=[torch.Generator().manual_seed(i) for i in range(2)], temperature=0.8,
               num_inference_steps=STEPS, output_type="pt", clamp=False).images
    torch.testing.assert_close(torch.load(tmp_path / "t.pt"), ref, rtol=1e-6, atol=1e-6)


def test_invert_prints_the_typicality_of_each_image(model_dir, tmp_path, capsys):
    path = str(tmp_path / "noise.png")
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(path)
    assert main(["invert", path, "--model", str(model_dir), "--steps", str(STEPS), "--output",
                 str(tmp_path / "inv.png")]) == 0
    printed = capsys.readouterr().out
    assert "bits/dim" in printed and "noise χ² z" in printed and "typical" in printed


def test_analyze_writes_the_report_page(model_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", str(model_dir), "-o", str(out), "--steps", "4", "--k", "2", "--num-images", "2"]) == 0
    page = (out / "report.md").read_text()
    for section in ("Local components", "Inverse stability", "Typicality", "Fibers", "Costs"):
        assert section in page
    report = json.loads((out / "report.json").read_text())
    assert len(report["local_components"]["generator_singular_values"]) == 2
    assert report["fibers"]["dims"] == [64, 4, 4, 64]
    assert PIL.Image.open(out / "local_components.png").size[0] > 0
    assert "cond(B)" in capsys.readouterr().out
    assert main(["analyze", str(model_dir), "-o", str(out), "--k", "65"]) == 2
    assert "larger than the model's dimension D = 64" in capsys.readouterr().err

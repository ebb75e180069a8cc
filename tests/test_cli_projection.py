"""``diffusers-linearizer project`` with a tiny projection pipeline saved to disk: generation, projection with
f(f(x)) = f(x) printed per file, mask filling, and bad input refused with exit status 2 before any file is written."""

from __future__ import annotations

import re

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_linearizer import LinearizerProjectionPipeline
from diffusers_linearizer.cli import main

from .utils import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_model(core_type="projection_orthogonal", core_rank=12, role_x=1.0, role_y=1.0).eval()
    path = tmp_path_factory.mktemp("proj") / "pipe"
    LinearizerProjectionPipeline(linearizer=model).save_pretrained(path)
    return path


def _image(path, seed):
    arr = (np.random.default_rng(seed).random((8, 8)) * 255).astype(np.uint8)
    PIL.Image.fromarray(arr).save(path)
    return str(path)


def test_project_generates_and_projects(model_dir, tmp_path, capsys):
    out = tmp_path / "samples.png"
    assert main(["project", "--model", str(model_dir), "-n", "3", "-o", str(out), "--no-progress"]) == 0
    assert PIL.Image.open(out).size[0] > 8
    files = [_image(tmp_path / f"{i}.png", i) for i in range(2)]
    grid = tmp_path / "grid.png"
    capsys.readouterr()
    assert main(["project", *files, "--model", str(model_dir), "--noise", "0.2", "-o", str(grid), "--no-progress"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "distance to the range" in line]
    assert len(lines) == 2
    for line in lines:
        moved = float(re.search(r"max \|f\(f\(x\)\) − f\(x\)\| = ([0-9.e+-]+)", line).group(1))
        assert moved < 1e-4
    mask = tmp_path / "mask.png"
    PIL.Image.fromarray(np.pad(np.full((4, 4), 255, np.uint8), 2)).save(mask)
    assert main(["project", files[0], "--model", str(model_dir), "--mask", str(mask), "--mask-iterations", "2",
                 "-o", str(tmp_path / "filled.png"), "--no-progress"]) == 0


@pytest.mark.parametrize("args, expected", [
    (["--mask", "m.png"], "--mask and --noise apply to IMAGES"),
    (["--noise", "-1"], "--noise must be a finite σ ≥ 0"),
    (["missing.png"], "No image file 'missing.png'"),
])
def test_project_refuses_bad_input(model_dir, tmp_path, capsys, args, expected):
    out = tmp_path / "never.png"
    assert main(["project", *args, "--model", str(model_dir), "-o", str(out)]) == 2
    assert expected in capsys.readouterr().err and not out.exists()


def test_project_refuses_a_flow_model(tmp_path, capsys):
    from diffusers_linearizer import LinearizerPipeline, LinearizerScheduler

    LinearizerPipeline(linearizer=tiny_model(), scheduler=LinearizerScheduler()).save_pretrained(tmp_path / "flow")
    assert main(["project", "--model", str(tmp_path / "flow"), "-o", str(tmp_path / "x.png")]) == 2
    assert "use LinearizerPipeline" in capsys.readouterr().err

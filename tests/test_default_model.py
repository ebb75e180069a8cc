"""The trained default shipped inside the package: what `LinearizerPipeline.from_pretrained()` (no argument)
and `diffusers-linearizer generate` load, offline."""

from pathlib import Path

import pytest
import torch

import diffusers_linearizer.cli as cli
from diffusers_linearizer import LinearizerInversionPipeline, LinearizerPipeline
from diffusers_linearizer import defaults as pl

from .test_pipeline import make_pipe

SHIPPED = Path(pl.DEFAULT_MODEL_DIR)


def test_the_command_line_loads_the_folder_inside_the_installed_package():
    import diffusers_linearizer

    folder = Path(diffusers_linearizer.__file__).resolve().parent / "default_model"  # where the wheel puts it
    assert SHIPPED.resolve() == folder
    expected = LinearizerPipeline.from_pretrained(str(folder)).linearizer.state_dict()
    loaded = cli.load_pipeline(None, "float32", main=False).linearizer.state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)


def test_from_pretrained_without_a_path_loads_the_default(tmp_path, monkeypatch):
    saved = make_pipe("shared_basis", seed=4)
    saved.save_pretrained(tmp_path / "default")
    monkeypatch.setattr(pl, "DEFAULT_MODEL_DIR", str(tmp_path / "default"))
    for cls in (LinearizerPipeline, LinearizerInversionPipeline):
        pipe = cls.from_pretrained()
        assert isinstance(pipe, cls)
        for (name, a), b in zip(saved.linearizer.state_dict().items(), pipe.linearizer.state_dict().values()):
            assert torch.equal(a, b), name
    monkeypatch.setattr(pl, "DEFAULT_MODEL_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="packaged default"):
        LinearizerPipeline.from_pretrained()


def test_shipped_default_is_small_safe_and_generates(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (SHIPPED / "model_index.json").is_file(), f"the trained default is missing from {SHIPPED}"
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
    assert not [p.name for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]  # safetensors only
    pipe = LinearizerPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    assert pipe.linearizer.sample_shape == (1, 32, 32)
    out = pipe(8, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (8, 1, 32, 32) and torch.isfinite(out).all()
    # Fashion-MNIST-like: dark padded border, varied content, images differ from each other
    assert out[..., :2, :].mean() < 0.1 and out[..., 8:24, 8:24].mean() > 0.1
    assert out.flatten(1).std(0).mean() > 0.05


def test_shipped_configs_record_no_machine_paths():
    import json

    for config in SHIPPED.rglob("*.json"):
        assert "_name_or_path" not in json.loads(config.read_text()), config

"""Loading a damaged or unreachable pipeline names what is wrong: a truncated or random weights file (with
its path and cause, from ``LinearizerPipeline`` and from ``LinearizerModel``), and a Hub id that is not in
the offline cache (with the id)."""

import os
import shutil

import pytest

from diffusers_linearizer import LinearizerModel, LinearizerPipeline

from .test_pipeline import make_pipe

WEIGHTS = os.path.join("linearizer", "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("damaged") / "pipe"
    make_pipe(seed=4).save_pretrained(path)
    return path


def damaged(saved, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    file = copy / WEIGHTS
    data = file.read_bytes()
    file.write_bytes(damage(data))
    return copy, str(file)


@pytest.mark.parametrize("damage, cause", [
    (lambda d: d[: len(d) // 2], "truncated"),
    (lambda d: d[:5], "fewer than the 8 of a header length"),
    (lambda d: os.urandom(len(d)), "not a safetensors file"),
    (lambda d: d + b"junk", "after the tensor data"),
], ids=["half", "five-bytes", "random", "appended"])
@pytest.mark.parametrize("loader", ["pipeline", "model"])
def test_a_damaged_weights_file_is_named_with_its_cause(saved, tmp_path, damage, cause, loader):
    folder, file = damaged(saved, tmp_path, damage)
    with pytest.raises(ValueError) as info:
        if loader == "pipeline":
            LinearizerPipeline.from_pretrained(folder)
        else:
            LinearizerModel.from_pretrained(folder, subfolder="linearizer")
    assert file in str(info.value) and cause in str(info.value)


def test_an_uncached_hub_id_offline_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(OSError) as info:
        LinearizerPipeline.from_pretrained("someorg/not-cached", cache_dir=str(tmp_path / "hf" / "hub"))
    message = str(info.value)
    assert "'someorg/not-cached'" in message and "cache" in message and "HF_HUB_OFFLINE" in message

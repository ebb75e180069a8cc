"""Hub compatibility: diffusers' saved layout, model card, local and offline-cache loading by repo id,
`DiffusionPipeline.from_pretrained` with `trust_remote_code`, the `custom_pipeline` community directory,
and clear errors for incomplete directories."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from diffusers_linearizer import LinearizerInversionPipeline, LinearizerPipeline, LinearizerScheduler

from .test_pipeline import STEPS, gens, make_pipe, raw

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS = {"fid": 12.5, "psnr_one_step_vs_multi_step_db": 131.2}


@pytest.fixture(scope="module")
def pipe():
    return make_pipe("shared_basis", seed=3, solver="heun")


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "linearizer-tiny"
    pipe.save_pretrained(path, metrics=METRICS)
    return path


def images(p, **kw):
    p.set_progress_bar_config(disable=True)
    return raw(p, batch_size=2, generator=gens(0, 1), num_inference_steps=STEPS, **kw)


def test_saved_layout(saved, pipe):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["linearizer"] == ["diffusers_linearizer", "LinearizerModel"]
    assert index["scheduler"] == ["diffusers_linearizer", "LinearizerScheduler"]
    assert index["_class_name"] == ["pipeline_linearizer", "LinearizerPipeline"]
    assert "_diffusers_version" in index
    assert (saved / "pipeline_linearizer.py").is_file()
    weights = load_file(saved / "linearizer" / "diffusion_pytorch_model.safetensors")
    state = pipe.linearizer.state_dict()
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    assert json.loads((saved / "linearizer" / "config.json").read_text())["core_type"] == "shared_basis"
    assert json.loads((saved / "scheduler" / "scheduler_config.json").read_text())["solver"] == "heun"
    assert not [p for p in saved.parent.iterdir() if ".tmp-" in p.name], "temporary directory left behind"


def test_model_card(saved, pipe):
    card = ModelCard.load(saved / "README.md")
    assert card.data.library_name == "diffusers"
    assert "linearizer" in card.data.tags
    assert card.data.linearizer_metrics == METRICS
    assert card.data.linearizer_config["core_type"] == "shared_basis"
    assert card.data.scheduler_config["solver"] == "heun"
    assert "fid" in card.text and "LinearizerPipeline.from_pretrained" in card.text


def test_save_into_existing_directory_replaces_only_our_files(pipe, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "linearizer").mkdir()
    (target / "linearizer" / "stale.bin").write_text("old")
    pipe.save_pretrained(target)
    pipe.save_pretrained(target, pipeline_module=False)
    assert (target / "notes.txt").read_text() == "keep me"
    assert not (target / "linearizer" / "stale.bin").exists()
    assert json.loads((target / "model_index.json").read_text())["_class_name"] == "LinearizerPipeline"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_from_pretrained_local(saved, pipe):
    loaded = LinearizerPipeline.from_pretrained(saved)
    assert isinstance(loaded, LinearizerPipeline)
    public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.linearizer.config) == public(pipe.linearizer.config)
    assert loaded.scheduler.config.solver == "heun"
    assert torch.equal(images(loaded), images(pipe))
    assert torch.equal(images(loaded, one_step=False), images(pipe, one_step=False))
    # the inversion pipeline loads from the same directory; components can be passed in
    inv = LinearizerInversionPipeline.from_pretrained(saved, scheduler=LinearizerScheduler(solver="heun"))
    assert type(inv) is LinearizerInversionPipeline
    # saving the loaded pipeline again gives the same index
    assert loaded.config["linearizer"] == ("diffusers_linearizer", "LinearizerModel")


def test_device_map_and_dtype_dict(saved, pipe):
    loaded = LinearizerPipeline.from_pretrained(saved, device_map="cpu", torch_dtype={"linearizer": torch.float64})
    assert loaded.linearizer.dtype == torch.float64 and loaded.linearizer.device.type == "cpu"
    assert loaded.hf_device_map == "cpu"
    torch.testing.assert_close(images(loaded).float(), images(pipe), rtol=0, atol=1e-4)


def test_component_reassignment_keeps_package_name(pipe):
    p = LinearizerPipeline(**pipe.components)
    p.scheduler = LinearizerScheduler(solver="rk4")
    assert tuple(p.config["scheduler"]) == ("diffusers_linearizer", "LinearizerScheduler")


# ---------------------------------------------------------------------- the Hugging Face cache, offline
def write_hub_cache(saved: Path, cache: Path, repo_id: str) -> str:
    """Lay ``saved`` out as the Hub cache does: blobs named by content hash, snapshot symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    for file in sorted(p for p in saved.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(saved)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_from_pretrained_repo_id_offline(saved, pipe, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "home" / "hub"
    write_hub_cache(saved, cache, "linearizer-org/tiny")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import time: patch the constants too
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    loaded = LinearizerPipeline.from_pretrained("linearizer-org/tiny", cache_dir=cache)
    assert loaded.name_or_path == "linearizer-org/tiny"
    assert torch.equal(images(loaded), images(pipe))
    with pytest.raises(Exception, match="(?i)offline|cannot find|local"):
        LinearizerPipeline.from_pretrained("linearizer-org/absent", cache_dir=cache)


def test_from_pretrained_repo_id_offline_fresh_process(saved, pipe, tmp_path):
    """The real thing: a new interpreter whose environment says offline and points at the temporary cache."""
    home = tmp_path / "home"
    write_hub_cache(saved, home / "hub", "linearizer-org/tiny")
    expected = tmp_path / "expected.pt"
    torch.save(images(pipe), expected)
    script = textwrap.dedent(
        f"""
        import torch
        from diffusers_linearizer import LinearizerPipeline
        pipe = LinearizerPipeline.from_pretrained("linearizer-org/tiny")
        pipe.set_progress_bar_config(disable=True)
        gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
        got = pipe(batch_size=2, generator=gens, num_inference_steps={STEPS}, output_type="pt", clamp=False).images
        assert torch.equal(got, torch.load({str(expected)!r})), "outputs differ"
        print("OK", pipe.name_or_path)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT), HF_HUB_DISABLE_TELEMETRY="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK linearizer-org/tiny" in res.stdout


# ---------------------------------------------------------------------- diffusers' own entry points
@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """Keep diffusers' dynamic-module copies out of the user's cache."""
    import diffusers.utils.dynamic_modules_utils as dyn

    path = str(tmp_path / "modules")
    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", path)
    monkeypatch.syspath_prepend(path)
    for name in [m for m in sys.modules if m.startswith("diffusers_modules")]:  # a fresh process's view: a
        monkeypatch.delitem(sys.modules, name)  # re-imported module would keep the names of an earlier copy
    return path


def test_diffusion_pipeline_from_pretrained(saved, pipe, modules_cache):
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(saved)
    loaded = DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
    assert type(loaded) is LinearizerPipeline
    assert (Path(modules_cache) / "diffusers_modules" / "local" / "pipeline_linearizer.py").is_file()  # went via diffusers
    assert torch.equal(images(loaded), images(pipe))


def test_custom_pipeline_directory(pipe, tmp_path, monkeypatch, modules_cache):
    path = tmp_path / "plain"
    pipe.save_pretrained(path, pipeline_module=False)
    monkeypatch.chdir(REPO_ROOT)
    assert (REPO_ROOT / "pipelines" / "linearizer" / "pipeline.py").is_file()
    loaded = DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/linearizer", trust_remote_code=True)
    assert type(loaded) is LinearizerPipeline
    assert (Path(modules_cache) / "diffusers_modules" / "local" / "pipeline.py").is_file()  # went via diffusers
    assert torch.equal(images(loaded), images(pipe))
    # our own from_pretrained hands custom_pipeline to diffusers as well
    again = LinearizerPipeline.from_pretrained(path, custom_pipeline="pipelines/linearizer", trust_remote_code=True)
    assert torch.equal(images(again), images(pipe))


def test_class_model_loads_as_its_pipeline_class_by_every_route(tmp_path, monkeypatch, modules_cache):
    from diffusers_linearizer import PACKAGED_MODELS, LinearizerClassPipeline

    pipe = LinearizerPipeline.from_pretrained(PACKAGED_MODELS["fashion-mnist-classes"])
    assert type(pipe) is LinearizerClassPipeline
    pipe.save_pretrained(tmp_path / "saved")
    pipe.save_pretrained(tmp_path / "plain", pipeline_module=False)
    monkeypatch.chdir(REPO_ROOT)
    routes = [DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True),
              DiffusionPipeline.from_pretrained(tmp_path / "plain", custom_pipeline="pipelines/linearizer_class",
                                                trust_remote_code=True),
              LinearizerClassPipeline.from_pretrained(tmp_path / "plain")]
    kw = dict(class_labels=["Bag", 0], num_inference_steps=8, output_type="pt",
              generator=[torch.Generator().manual_seed(i) for i in range(2)])
    expected = pipe(**kw).images
    for loaded in routes:
        assert type(loaded) is LinearizerClassPipeline
        kw["generator"] = [torch.Generator().manual_seed(i) for i in range(2)]
        assert torch.equal(loaded(**kw).images, expected)


# ---------------------------------------------------------------------- incomplete directories
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: __import__("shutil").rmtree(p / "scheduler"), r"scheduler/scheduler_config\.json is missing"),
        (lambda p: __import__("shutil").rmtree(p / "linearizer"), r"linearizer/config\.json is missing"),
        (lambda p: (p / "linearizer" / "diffusion_pytorch_model.safetensors").unlink(), "no weights"),
        (lambda p: (p / "model_index.json").unlink(), "model_index.json is missing"),
    ],
    ids=["no-scheduler", "no-linearizer", "no-weights", "no-index"],
)
def test_incomplete_directory(saved, tmp_path, damage, message):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    damage(broken)
    with pytest.raises(ValueError, match=message):
        LinearizerPipeline.from_pretrained(broken)


def test_missing_scheduler_can_be_passed(saved, tmp_path, pipe):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    shutil.rmtree(broken / "scheduler")
    loaded = LinearizerPipeline.from_pretrained(broken, scheduler=LinearizerScheduler(solver="heun"))
    assert torch.equal(images(loaded), images(pipe))


def test_not_a_pipeline_path(tmp_path):
    with pytest.raises(ValueError, match="neither a directory"):
        LinearizerPipeline.from_pretrained(str(tmp_path / "a" / "b" / "c"))


def test_push_to_hub_uploads_our_layout(pipe, monkeypatch):
    import huggingface_hub

    uploaded = {}

    class Repo:
        repo_id = "me/tiny"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: Repo())

    def fake_upload(self, folder, repo_id, **kw):
        uploaded["files"] = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
        uploaded["card"] = ModelCard.load(Path(folder) / "README.md")
        return "https://huggingface.co/me/tiny"

    monkeypatch.setattr(LinearizerPipeline, "_upload_folder", fake_upload)
    url = pipe.push_to_hub("tiny", metrics={"fid": 1.0})
    assert url.endswith("me/tiny")
    assert "model_index.json" in uploaded["files"] and "linearizer/diffusion_pytorch_model.safetensors" in uploaded["files"]
    assert uploaded["card"].data.linearizer_metrics == {"fid": 1.0}
    assert "me/tiny" in uploaded["card"].text


# ---------------------------------------------------------------------- diffusers' loading behaviour
def test_loading_logs_every_component_through_diffusers(saved):
    import logging as std_logging

    from diffusers.utils import logging

    logger = logging.get_logger("diffusers.pipelines.pipeline_utils")
    records = []
    handler = std_logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        LinearizerPipeline.from_pretrained(saved)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = "\n".join(records)
    assert "Loaded linearizer as LinearizerModel" in text and "Loaded scheduler as LinearizerScheduler" in text


def test_missing_variant_is_a_value_error(saved, pipe, tmp_path):
    with pytest.raises(ValueError, match="variant=fp16"):
        LinearizerPipeline.from_pretrained(saved, variant="fp16")
    pipe.save_pretrained(tmp_path / "v", variant="fp16")
    assert (tmp_path / "v" / "linearizer" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = LinearizerPipeline.from_pretrained(tmp_path / "v", variant="fp16")
    assert torch.equal(images(loaded), images(pipe))


def test_safetensors_only(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p", safe_serialization=False)  # ignored, with a warning
    assert [p.name for p in (tmp_path / "p" / "linearizer").glob("diffusion_pytorch_model*")] == \
        ["diffusion_pytorch_model.safetensors"]
    with pytest.raises(ValueError, match="safetensors only"):
        LinearizerPipeline.from_pretrained(tmp_path / "p", use_safetensors=False)


def test_no_machine_paths_are_saved(saved, tmp_path):
    loaded = LinearizerPipeline.from_pretrained(saved)  # its configs now record where they came from
    loaded.save_pretrained(tmp_path / "again")
    for config in (tmp_path / "again").rglob("*.json"):
        assert "_name_or_path" not in json.loads(config.read_text()), config
        assert str(saved) not in config.read_text()


@pytest.mark.parametrize("which", ["model_index.json", "linearizer/config.json"])
def test_broken_json_names_the_file(saved, tmp_path, which):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / which).write_text('{"_class_name": "LinearizerPipeline",')
    with pytest.raises(ValueError, match=rf"{which.split('/')[-1]} is not valid JSON"):
        LinearizerPipeline.from_pretrained(broken)


@pytest.mark.parametrize("change, message", [({"num_blocks": 3}, "missing from the weights"),
                                             ({"num_blocks": 1}, "not in the model"),
                                             ({"core_rank": 8}, "core")])
def test_config_that_does_not_match_the_weights_is_an_error(saved, tmp_path, change, message):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    config = json.loads((broken / "linearizer" / "config.json").read_text())
    (broken / "linearizer" / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        LinearizerPipeline.from_pretrained(broken)


def test_missing_local_folder_says_so(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        LinearizerPipeline.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no such directory"):
        LinearizerPipeline.from_pretrained("/missing/folder")

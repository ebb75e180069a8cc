"""Resuming a training run reads a checkpoint as data: a pickle that would run code is refused naming its file
(and never runs), every damaged file is named before any training step, and no load path of the package
unpickles without restriction (a scan of the sources, against the audit in docs/security.md)."""

from __future__ import annotations

import ast
import io
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from diffusers_linearizer.training import train as ttrain
from diffusers_linearizer.training import trainer as ttrainer

from .test_training import TINY, image_dir  # noqa: F401  (the module's image folder fixture)

REPO = Path(__file__).resolve().parents[1]


class CreatesFile:
    """Unpickling this runs ``open(path, "w")``: what an attacker's pickle would do instead of ``os.system``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _args(image_dir, out, *extra):  # noqa: F811
    args = ttrain.parse_args(["--train_data_dir", str(image_dir), "--output_dir", str(out), *TINY, "--cpu",
                              "--train_batch_size", "4", "--max_train_steps", "3", *extra])
    ttrain.check_args(args)
    return args


@pytest.fixture(scope="module")
def checkpoint(image_dir, tmp_path_factory):  # noqa: F811
    """A real checkpoint after one optimizer step (with an EMA)."""
    out = tmp_path_factory.mktemp("secure") / "run"
    trainer = ttrainer.Trainer(_args(image_dir, out))
    trainer.step(trainer.micro_batches())
    trainer.save_checkpoint(1)
    path = out / "checkpoints" / "checkpoint-1"
    assert sorted(p.name for p in path.iterdir() if p.is_file()) == [
        "ema_state.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin", "trainer_state.json"]
    return path


def _copy(checkpoint, tmp_path):
    target = tmp_path / "run" / "checkpoints" / "checkpoint-1"
    shutil.copytree(checkpoint, target)
    return target


def _resume(image_dir, ckpt):  # noqa: F811
    out = ckpt.parent.parent
    return ttrainer.Trainer(_args(image_dir, out, "--resume_from_checkpoint", "latest"))


def test_a_clean_checkpoint_resumes_with_its_ema(image_dir, checkpoint, tmp_path):  # noqa: F811
    ckpt = _copy(checkpoint, tmp_path)
    trainer = _resume(image_dir, ckpt)
    assert trainer.global_step == 1 and trainer.ema.num_updates == 1
    from safetensors.torch import load_file

    saved = load_file(ckpt / "ema_state.safetensors")
    assert saved.keys() == trainer.ema.shadow.keys()
    assert all(torch.equal(saved[k], trainer.ema.shadow[k]) for k in saved)


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"])
@pytest.mark.parametrize("form", ["torch.save", "pickle"])
def test_a_pickle_that_would_run_code_is_refused_naming_the_file(name, form, image_dir, checkpoint, tmp_path):  # noqa: F811
    marker = tmp_path / "PWNED"
    # the payload is real: unrestricted unpickling of it creates the file
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(CreatesFile(probe))).close()
    assert probe.exists()
    ckpt = _copy(checkpoint, tmp_path)
    payload = {"state": CreatesFile(marker), "param_groups": []}
    if form == "torch.save":
        torch.save(payload, ckpt / name)
    else:
        (ckpt / name).write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError) as info:
        _resume(image_dir, ckpt)
    assert str(ckpt / name) in str(info.value) and "refused" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["trainer_state.json", "linearizer/config.json",
                                  "linearizer/diffusion_pytorch_model.safetensors", "ema_state.safetensors",
                                  "optimizer.bin", "scheduler.bin", "random_states_0.pkl"])
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_file_is_named_before_any_step(name, damage, image_dir, checkpoint, tmp_path, monkeypatch):  # noqa: F811
    ckpt = _copy(checkpoint, tmp_path)
    path = ckpt / name
    if damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    if name == "trainer_state.json" and damage == "missing":
        # without its trainer state a folder is no complete checkpoint: `latest` skips it, a named one is refused
        args = _args(image_dir, ckpt.parent.parent, "--resume_from_checkpoint", str(ckpt))
        with pytest.raises(ValueError, match=re.escape(str(path))):
            ttrainer.Trainer(args)
        return
    monkeypatch.setattr(ttrainer.Trainer, "step", lambda *a, **k: pytest.fail("a training step ran"))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        _resume(image_dir, ckpt)


def test_random_states_without_their_keys_are_refused(image_dir, checkpoint, tmp_path):  # noqa: F811
    ckpt = _copy(checkpoint, tmp_path)
    buffer = io.BytesIO()
    torch.save({"step": 1}, buffer)
    (ckpt / "random_states_0.pkl").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="lack random_state"):
        _resume(image_dir, ckpt)


# ---------------------------------------------------------------------- the audit of load paths
SCANNED = ["diffusers_linearizer", "benchmarks", "conversion", "pipelines"]
#: places audited in docs/security.md that match on purpose: the restricted unpickler subclasses pickle's
ALLOWED = {("diffusers_linearizer/conversion/safe_unpickle.py", "unpickler")}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_true(call: ast.Call, keyword: str) -> bool:
    return any(k.arg == keyword and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def risky_calls(source: str):
    """``(line, what)`` for every call in ``source`` that could run code from a file it reads."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(_dotted(b).endswith("Unpickler") for b in node.bases):
            found.append((node.lineno, "unpickler"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        if name in ("torch.load",) and not _is_true(node, "weights_only"):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif name in ("pickle.load", "pickle.loads", "dill.load", "dill.loads", "cloudpickle.load") or \
                name.startswith("joblib.") or last == "Unpickler":
            found.append((node.lineno, "unpickler"))
        elif last == "load" and name.split(".")[0] in ("np", "numpy") and _is_true(node, "allow_pickle"):
            found.append((node.lineno, "np.load with pickles"))
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append((node.lineno, "eval/exec"))
        elif name in ("yaml.load", "yaml.unsafe_load"):
            found.append((node.lineno, "YAML objects"))
        elif last == "register_for_checkpointing":
            found.append((node.lineno, "accelerate's unrestricted custom-state pickles"))
        elif _is_true(node, "trust_remote_code"):
            found.append((node.lineno, "running a folder's Python code"))
    return found


def test_no_load_path_runs_code_from_a_file():
    found = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for line, what in risky_calls(path.read_text(encoding="utf-8")):
                if (rel, what) not in ALLOWED:
                    found.append(f"{rel}:{line}: {what}")
    assert not found, "new load paths to audit (docs/security.md):\n" + "\n".join(found)


def test_the_scan_catches_what_it_looks_for():
    samples = {
        "x = torch.load(path)": "torch.load without weights_only=True",
        "x = torch.load(path, weights_only=False)": "torch.load without weights_only=True",
        "obj = pickle.load(f)": "unpickler",
        "class U(pickle.Unpickler): pass": "unpickler",
        "np.load(p, allow_pickle=True)": "np.load with pickles",
        "value = eval(text)": "eval/exec",
        "accelerator.register_for_checkpointing(ema)": "accelerate's unrestricted custom-state pickles",
        "DiffusionPipeline.from_pretrained(p, trust_remote_code=True)": "running a folder's Python code",
    }
    for line, what in samples.items():
        assert [w for _, w in risky_calls(line)] == [what], line
    for harmless in ("torch.load(f, weights_only=True)", "model.eval()", "np.load(p, allow_pickle=False)",
                     "s = 'torch.load(path)'"):
        assert risky_calls(harmless) == [], harmless


def test_security_page_lists_every_kind_of_load_path():
    page = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    for needle in ("from_pretrained", "safetensors", "weights_only=True", "ema_state.safetensors",
                   "custom_checkpoint_", "RestrictedUnpickler", "allow_pickle=False", "trust_remote_code", "PIL"):
        assert needle in page, needle
    assert os.path.basename(__file__) in page

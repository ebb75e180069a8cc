"""Saving is all or nothing: killed at any rename, a folder holds the old pipeline or the new one, never a mix;
stale temporaries of interrupted saves are removed by the next save (never one in use); files get the
umask's permissions; an unwritable target is named.

A kill is emulated in-process by a hook the test installs on ``os.replace``/``os.rename`` and on the folder
exchange: it raises ``Killed`` (a ``BaseException``, which no ``except Exception`` catches) and leaves the
temporary folder as a kill would (the cleanup's ``rmtree`` does nothing, the lock is released as the
system releases a dead process's locks, its file stays).
"""

import errno
import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file

from diffusers_linearizer import LinearizerPipeline, atomic

from .test_pipeline import make_pipe

fcntl = pytest.importorskip("fcntl")


class Killed(BaseException):
    pass


@pytest.fixture(scope="module")
def old_pipe():
    return make_pipe("shared_basis", seed=1, solver="euler")


@pytest.fixture(scope="module")
def new_pipe():
    return make_pipe("shared_basis", seed=2, solver="rk4")


def folder_state(folder):
    """What a reader sees: the weights and the solver, read with plain safetensors/JSON (not the package)."""
    weights = load_file(os.path.join(folder, "linearizer", "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        solver = json.load(f)["solver"]
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    return weights, solver, index["_class_name"]


def same_as(state, pipe):
    weights, solver, _ = state
    ref = pipe.linearizer.state_dict()
    return (weights.keys() == ref.keys() and all(torch.equal(weights[k], ref[k]) for k in ref)
            and solver == pipe.scheduler.config.solver)


class RenameHook:
    """Counts the rename points of a save; with ``kill_at=(k, when)`` raises ``Killed`` at the k-th one,
    before (``"before"``) or after (``"after"``) it takes effect."""

    def __init__(self, monkeypatch, kill_at=None):
        self.count, self.kill_at = 0, kill_at
        for name in ("replace", "rename"):
            monkeypatch.setattr(os, name, self.wrap(getattr(os, name)))
        monkeypatch.setattr(atomic, "exchange_paths", self.wrap(atomic.exchange_paths))
        if kill_at is not None:  # what a kill leaves: no cleanup, the lock freed by the system
            monkeypatch.setattr(atomic.shutil, "rmtree", lambda *a, **k: None)
            monkeypatch.setattr(atomic._TempLock, "release", lambda self: self.fd is not None and os.close(self.fd))

    def wrap(self, fn):
        def hooked(*args, **kwargs):
            k = self.count
            self.count += 1
            if self.kill_at == (k, "before"):
                raise Killed()
            out = fn(*args, **kwargs)
            if self.kill_at == (k, "after"):
                raise Killed()
            return out
        return hooked


def rename_points(pipe, folder, monkeypatch):
    with monkeypatch.context() as m:
        hook = RenameHook(m)
        pipe.save_pretrained(folder)
    return hook.count


def test_a_kill_at_any_rename_leaves_the_old_or_the_new_pipeline(old_pipe, new_pipe, tmp_path, monkeypatch):
    probe = tmp_path / "probe"
    old_pipe.save_pretrained(probe)
    n = rename_points(new_pipe, probe, monkeypatch)
    assert n >= 2, "a save into an existing folder has at least its file writes and the folder exchange"
    seen = {"old": 0, "new": 0}
    for k in range(n):
        for when in ("before", "after"):
            target = tmp_path / f"pipe-{k}-{when}"
            old_pipe.save_pretrained(target)
            (target / "notes.txt").write_text("mine")
            with monkeypatch.context() as m:
                RenameHook(m, kill_at=(k, when))
                with pytest.raises(Killed):
                    new_pipe.save_pretrained(target)
            state = folder_state(target)
            is_old, is_new = same_as(state, old_pipe), same_as(state, new_pipe)
            assert is_old != is_new, f"killed {when} rename {k}: a mix of the old and the new pipeline"
            seen["old" if is_old else "new"] += 1
            assert (target / "notes.txt").read_text() == "mine"
            loaded = LinearizerPipeline.from_pretrained(target)
            assert same_as(folder_state(target), old_pipe if is_old else new_pipe)
            assert loaded.scheduler.config.solver == (old_pipe if is_old else new_pipe).scheduler.config.solver
    assert seen["old"] > 0 and seen["new"] > 0, seen  # killed after the exchange: the new one is in place


def test_the_next_save_removes_what_interrupted_saves_left(old_pipe, new_pipe, tmp_path, monkeypatch):
    target = tmp_path / "pipe"
    old_pipe.save_pretrained(target)
    n = rename_points(new_pipe, target, monkeypatch)
    for k in range(n):
        with monkeypatch.context() as m:
            RenameHook(m, kill_at=(k, "before"))
            with pytest.raises(Killed):
                new_pipe.save_pretrained(target)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "pipe"]
    assert any(p.is_dir() for p in leftovers), "the emulated kills left no temporary folder"
    old_pipe.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    assert same_as(folder_state(target), old_pipe)


def test_a_temporary_folder_in_use_is_never_removed(old_pipe, tmp_path):
    target = tmp_path / "pipe"
    busy = tmp_path / ".pipe.tmp-0123456789ab"
    busy.mkdir()
    (busy / "weights").write_bytes(b"being written")
    fd = os.open(str(busy) + ".lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another save holds it
        old_pipe.save_pretrained(target)
        assert (busy / "weights").read_bytes() == b"being written"
    finally:
        os.close(fd)  # that save ended without cleaning up
    old_pipe.save_pretrained(target)
    assert not busy.exists() and not os.path.exists(str(busy) + ".lock")


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_saved_files_honour_the_umask(old_pipe, tmp_path, mask):
    previous = os.umask(mask)
    try:
        old_pipe.save_pretrained(tmp_path / "pipe")
    finally:
        os.umask(previous)
    modes = {}
    for root, _, files in os.walk(tmp_path / "pipe"):
        for name in files:
            modes[name] = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
    assert "diffusion_pytorch_model.safetensors" in modes
    assert set(modes.values()) == {0o666 & ~mask}, {k: oct(v) for k, v in modes.items()}


def test_a_hand_edited_config_is_read_and_survives_as_a_plain_file(old_pipe, tmp_path):
    target = tmp_path / "pipe"
    old_pipe.save_pretrained(target)
    path = target / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["solver"] = "heun"
    path.write_text(json.dumps(config))
    assert LinearizerPipeline.from_pretrained(target).scheduler.config.solver == "heun"


def test_an_unwritable_target_is_named(old_pipe, tmp_path):
    if not os.path.isdir("/sys") or os.access("/sys", os.W_OK) and _can_mkdir("/sys"):
        pytest.skip("needs a folder that cannot be written, even by root (/sys)")
    target = "/sys/linearizer-save-test"
    with pytest.raises(OSError) as info:
        old_pipe.save_pretrained(target)
    assert repr(target) in str(info.value) and ".tmp-" not in str(info.value)
    assert info.value.errno in (errno.EPERM, errno.EACCES, errno.EROFS, errno.ENOENT)


def test_a_file_in_the_way_is_named_before_any_work(old_pipe, tmp_path):
    target = tmp_path / "pipe"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="a file of that name exists"):
        old_pipe.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def _can_mkdir(parent):
    probe = os.path.join(parent, ".linearizer-probe")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    shutil.rmtree(probe)
    return True

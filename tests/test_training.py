"""Training: the idx reader and datasets, the objectives, EMA, checkpoints, exact resume, multi-process.

The end-to-end tests run the trainer in subprocesses on a folder of tiny 8×8 images written by the
test (Fashion-MNIST itself is not needed), with a model of ~11k parameters, on the CPU.

Past 400 lines on purpose: the end-to-end runs (determinism, resume after a kill, several processes) share the
image folder, command lines and weight comparisons defined at the top.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_linearizer.training import data as tdata
from diffusers_linearizer.training import objective as tobj
from diffusers_linearizer.training import train as ttrain
from diffusers_linearizer.training import trainer as ttrainer

from .utils import tiny_model

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--resolution", "8", "--channels", "1", "--num_blocks", "2", "--conditioner_channels", "8",
    "--conditioner_layers", "1", "--core_type", "lowrank", "--core_rank", "4", "--learning_rate", "1e-3",
    "--sample_steps", "0", "--no_final_samples", "--no_progress", "--log_every", "2", "--seed", "3",
]
STEPS = 8
RUN = ["--train_batch_size", "6", "--gradient_accumulation_steps", "2", "--max_train_steps", str(STEPS),
       "--checkpointing_steps", "2"]


# ---------------------------------------------------------------------- helpers
def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("ACCELERATE_CONFIG_FILE", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _train_cmd(images, out, *extra):
    return [sys.executable, "-m", "diffusers_linearizer.training.train", "--train_data_dir", str(images),
            "--output_dir", str(out), *TINY, *extra]


def _run(cmd, timeout=240, **env):
    proc = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    return proc


def _weights(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "diffusion_pytorch_model.safetensors"))


def _ckpt(out, step):
    return Path(out) / "checkpoints" / f"checkpoint-{step}"


def _assert_same_tensors(a, b, exact=True, atol=0.0):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _assert_same_tensors(a[k], b[k], exact, atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_tensors(x, y, exact, atol)
    elif isinstance(a, torch.Tensor):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, atol=atol, rtol=0)
    else:
        assert a == b


def _ema_state(checkpoint):
    """The EMA's shadow weights and counters as saved (safetensors tensors and metadata)."""
    from safetensors import safe_open

    with safe_open(str(checkpoint / "ema_state.safetensors"), framework="pt") as f:
        meta = f.metadata()
        return {**{k: f.get_tensor(k) for k in f.keys()}, **{f"meta/{k}": v for k, v in meta.items()}}


def _assert_same_checkpoint(c1, c2):
    """Same weights, EMA, optimizer state, LR-scheduler state and step counter."""
    _assert_same_tensors(_weights(c1 / "linearizer"), _weights(c2 / "linearizer"))
    _assert_same_tensors(_weights(c1 / "linearizer_ema"), _weights(c2 / "linearizer_ema"))
    for name in ("optimizer.bin", "scheduler.bin"):
        _assert_same_tensors(torch.load(c1 / name, weights_only=True), torch.load(c2 / name, weights_only=True))
    _assert_same_tensors(_ema_state(c1), _ema_state(c2))
    assert not list(c1.glob("*.pkl")) or sorted(p.name for p in c1.glob("*.pkl")) == ["random_states_0.pkl"]
    s1, s2 = (json.loads((c / "trainer_state.json").read_text()) for c in (c1, c2))
    assert s1["global_step"] == s2["global_step"] and s1["micro_step"] == s2["micro_step"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    import PIL.Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:8, 0:8]
    for i in range(48):  # smooth random blobs, a little like tiny clothes
        cy, cx, r = rng.uniform(2, 6), rng.uniform(2, 6), rng.uniform(1.5, 3.5)
        img = np.clip(1.2 - np.hypot(yy - cy, xx - cx) / r, 0, 1) * 255
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        PIL.Image.fromarray(img.astype(np.uint8), "L").save(sub / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def reference_run(image_dir, tmp_path_factory):
    """An uninterrupted run of STEPS steps: batch 6 × 2 accumulation steps, a checkpoint every 2 steps, all kept."""
    out = tmp_path_factory.mktemp("uninterrupted")
    _run(_train_cmd(image_dir, out, *RUN, "--checkpoints_total_limit", "0", "--sample_steps", "4"))
    return out


# ---------------------------------------------------------------------- idx files and datasets
@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_roundtrip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(1)
    arr = (rng.normal(size=(3, 5, 4)) * 50).astype(dtype)
    path = str(tmp_path / f"x-idx3-ubyte{suffix}")
    tdata.write_idx(path, arr)
    out = tdata.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_idx_reader_matches_format_by_hand(tmp_path):
    # Written byte by byte: magic 0x00000801 (uint8, 1-D), size 3, data; and a 2×2 int16 file, big-endian.
    (tmp_path / "a").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    np.testing.assert_array_equal(tdata.read_idx(str(tmp_path / "a")), [7, 8, 9])
    payload = bytes([0, 0, 0x0B, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + np.array([1, -2, 300, 4], ">i2").tobytes()
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(payload)
    np.testing.assert_array_equal(tdata.read_idx(str(tmp_path / "b.gz")), [[1, -2], [300, 4]])


@pytest.mark.parametrize("data", [b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", b"\x00\x00\x07\x01\x00\x00\x00\x01\x05",
                                  b"\x00\x00\x08\x01\x00\x00\x00\x04\x05", b"\x00\x00"])
def test_idx_reader_rejects_malformed(tmp_path, data):
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(ValueError):
        tdata.read_idx(str(tmp_path / "bad"))


def _fake_fashion(root, n=5, gz=True):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    ext = ".gz" if gz else ""
    tdata.write_idx(str(root / f"train-images-idx3-ubyte{ext}"), images)
    tdata.write_idx(str(root / f"train-labels-idx1-ubyte{ext}"), labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_padded_to_32(tmp_path, gz):
    images, labels = _fake_fashion(tmp_path, gz=gz)
    ds = tdata.FashionMNIST(str(tmp_path), "train", return_labels=True)
    assert len(ds) == 5
    x, y = ds[3]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y == labels[3]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    np.testing.assert_allclose(x[0, 2:30, 2:30].numpy(), images[3] / 255.0, atol=1e-7)
    assert float(x[0, :2].abs().sum() + x[0, 30:].abs().sum() + x[0, :, :2].abs().sum() + x[0, :, 30:].abs().sum()) == 0
    small = tdata.FashionMNIST(str(tmp_path), "train", resolution=16, mode="resize", max_samples=2)
    assert len(small) == 2 and small[0].shape == (1, 16, 16)


def test_missing_dataset_names_the_install_command(tmp_path):
    with pytest.raises(tdata.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        tdata.FashionMNIST(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        tdata.build_dataset(None, str(tmp_path))
    with pytest.raises(tdata.DatasetNotFoundError, match="No images"):
        tdata.ImageFolderDataset(str(tmp_path))


def test_image_folder_dataset(tmp_path):
    import PIL.Image

    PIL.Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "wide.png")
    (tmp_path / "sub").mkdir()
    PIL.Image.new("L", (9, 9), 128).save(tmp_path / "sub" / "gray.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    rgb = tdata.ImageFolderDataset(str(tmp_path), resolution=8, channels=3)
    assert [os.path.basename(f) for f in rgb.files] == ["gray.jpg", "wide.png"]  # sorted by path
    assert all(rgb[i].shape == (3, 8, 8) and rgb[i].dtype == torch.float32 for i in range(2))
    assert torch.allclose(rgb[1][0], torch.ones(8, 8)) and float(rgb[1][1:].abs().max()) == 0  # red, centre-cropped
    gray = tdata.ImageFolderDataset(str(tmp_path), resolution=4, channels=1)
    assert gray[0].shape == (1, 4, 4)
    torch.testing.assert_close(gray[0], torch.full((1, 4, 4), 128 / 255), atol=2 / 255, rtol=0)


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    s1, s2 = tdata.EpochShuffleSampler(50, seed=4), tdata.EpochShuffleSampler(50, seed=4)
    s1.set_epoch(3)
    list(s2)  # iterating another epoch first changes nothing
    s2.set_epoch(3)
    assert list(s1) == list(s2) and sorted(s1) == list(range(50))
    s2.set_epoch(4)
    assert list(s1) != list(s2)
    assert tdata.derive_seed(1, "step", 5) != tdata.derive_seed(1, "step", 6)


# ---------------------------------------------------------------------- objectives
def _batch(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 1, 8, 8), generator=gen)
    return (images, *tobj.draw_step_noise((1, 8, 8), n, gen))


@pytest.mark.parametrize("shared_g", [True, False])
def test_fast_objective_estimates_the_reference_terms(shared_g):
    torch.manual_seed(0)
    model = tiny_model(shared_g=shared_g).double()
    images, noise, t, eps_y, eps_x = (v.double() for v in _batch())
    tobj.initialize_actnorm(model, images, noise)
    # per-sample roles in one call equal separate g_x / g_y calls
    mixed = model.apply_g(torch.cat([noise, images]), torch.arange(24) >= 12)
    torch.testing.assert_close(mixed, torch.cat([model.encode(noise, "y"), model.encode(images, "x")]))
    back = model.apply_g(mixed, torch.arange(24) >= 12, inverse=True)
    torch.testing.assert_close(back, torch.cat([noise, images]))

    ref = tobj.reference_objective(model, images, noise, t, eps_y, eps_x)
    fast = tobj.fast_objective(model, images, noise, t, eps_y, eps_x, offset=1)
    torch.testing.assert_close(fast["latent_flow"], ref["latent_flow"])
    # each decode term is the reference's term on its third of the batch
    kind = tobj.decode_assignment(12, offset=1)
    for k, name in enumerate(("noise_reconstruction", "image_reconstruction", "prediction")):
        idx = kind == k
        sub = tobj.reference_objective(model, images[idx], noise[idx], t[idx], eps_y[idx], eps_x[idx])
        torch.testing.assert_close(fast[name], sub[name])
    assert set(fast) == set(ref) == set(tobj.TERMS)


def test_interpolation_is_the_schedulers_forward_process():
    from diffusers_linearizer.schedulers import LinearizerScheduler

    sched = LinearizerScheduler()
    z0, z1, t = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4), torch.rand(5)
    torch.testing.assert_close(tobj.interpolate_latents(z0, z1, t), sched.scale_noise(z1, sched.timestep_of(t), z0))


def test_ssim_and_pixel_losses():
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(tobj.ssim(x, x), torch.ones(3))
    assert float(tobj.ssim(x, 1 - x).max()) < 0.5
    assert float(tobj.pixel_distance(x, x, "mse+ssim")) == pytest.approx(0.0, abs=1e-6)
    assert float(tobj.pixel_distance(x, x + 0.1, "mse")) == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(ValueError, match="pixel_loss"):
        tobj.pixel_distance(x, x, "lpips")


@pytest.mark.parametrize("objective", ["fast", "reference"])
@pytest.mark.parametrize("pixel_loss", ["mse", "mse+ssim"])
def test_loss_decreases_on_a_fixed_batch(objective, pixel_loss):
    torch.manual_seed(0)
    model = tiny_model()
    images, noise, t, eps_y, eps_x = _batch()
    tobj.initialize_actnorm(model, images, noise)
    loss_fn = tobj.LinearizerObjective(model, objective, pixel_loss=pixel_loss)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = loss_fn(images, noise, t, eps_y, eps_x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_objective_under_bf16_autocast_keeps_float32_weights():
    model = tiny_model()
    images, noise, t, eps_y, eps_x = _batch()
    tobj.initialize_actnorm(model, images, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = tobj.LinearizerObjective(model)(images, noise, t, eps_y, eps_x)["loss"]
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in model.parameters())


def test_objective_rejects_bad_options():
    model = tiny_model()
    with pytest.raises(ValueError, match="objective"):
        tobj.LinearizerObjective(model, "lpips")
    with pytest.raises(ValueError, match="terms"):
        tobj.LinearizerObjective(model, weights={"perceptual": 1.0})


# ---------------------------------------------------------------------- EMA and checkpoint bookkeeping
def test_ema_update_copy_and_state():
    model = tiny_model()
    ema = ttrain.EMA(model, decay=0.9, warmup=False)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ema.shadow[name], 0.9 * before[name] + 0.1 * p.detach())
    twin = ema.averaged_copy(model)
    torch.testing.assert_close(dict(twin.named_parameters())["core.U"], ema.shadow["core.U"])
    other = ttrain.EMA(tiny_model(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and other.decay == 0.9
    _assert_same_tensors(other.shadow, ema.shadow)
    assert ttrain.EMA(model, 0.999).current_decay() == pytest.approx(0.1)  # warm-up (1 + 0)/(10 + 0)


def test_checkpoint_listing_ignores_partial_ones(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in (("checkpoint-2", True), ("checkpoint-10", True), ("checkpoint-12", False),
                           (".tmp-checkpoint-14", True), ("checkpoint-x", True)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "trainer_state.json").write_text("{}")
    assert [s for s, _ in ttrain.list_checkpoints(str(root))] == [2, 10]
    assert ttrain.latest_checkpoint(str(tmp_path)).endswith("checkpoint-10")
    ttrain.remove_stale(str(root))
    assert not (root / ".tmp-checkpoint-14").exists()
    ttrain.prune_checkpoints(str(root), keep=1)
    assert [s for s, _ in ttrain.list_checkpoints(str(root))] == [10]


def test_report_to_tensorboard_needs_tensorboard(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "tensorboard" in name else real(name, *a))
    args = ttrain.parse_args(["--report_to", "tensorboard"])
    with pytest.raises(ValueError, match="pip install tensorboard"):
        ttrain.check_args(args)
    with pytest.raises(ValueError, match="train_batch_size"):
        ttrain.check_args(ttrain.parse_args(["--train_batch_size", "0"]))
    with pytest.raises(ValueError, match="untrained"):  # the trainer's own entry point refuses it, not only the CLI
        ttrain.check_args(ttrain.parse_args(["--max_train_steps", "0"]))


def test_cli_has_a_train_command():
    from diffusers_linearizer import cli

    args = cli.build_parser().parse_args(["train", "--max_train_steps", "3", "--train-batch-size", "8"])
    assert args.command == "train" and args.max_train_steps == 3 and args.train_batch_size == 8


# ---------------------------------------------------------------------- end to end (subprocesses)
def test_training_run_writes_pipeline_and_checkpoints(reference_run):
    out = reference_run
    from diffusers_linearizer import LinearizerModel

    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()
    assert [s for s, _ in ttrain.list_checkpoints(str(out / "checkpoints"))] == [2, 4, 6, 8]
    final = LinearizerModel.from_pretrained(str(out / "linearizer"))
    assert all(p.dtype == torch.float32 for p in final.parameters())
    # the pipeline holds the EMA weights of the last checkpoint
    _assert_same_tensors(final.state_dict(), _weights(_ckpt(out, STEPS) / "linearizer_ema"))
    card = (out / "README.md").read_text()
    assert "training_steps" in card
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-0000004.png", "step-0000008.png"]
    from diffusers_linearizer import LinearizerPipeline

    pipe = LinearizerPipeline.from_pretrained(str(out))
    images = pipe(batch_size=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


# A trainer that SIGKILLs its own process at a chosen point: inside the save of a checkpoint (written to
# its temporary folder, not yet published) or in the middle of an optimizer step (after its first
# micro-batch). Run as a script: python killer.py publish|step STEP TRAINER-OPTIONS...
KILLER = """
import os, signal, sys

from diffusers_linearizer.training.train import check_args, parse_args
from diffusers_linearizer.training.trainer import Trainer

where, at = sys.argv[1], int(sys.argv[2])


class KilledTrainer(Trainer):
    def publish_checkpoint(self, tmp, final):
        if where == "publish" and os.path.basename(final) == f"checkpoint-{at}":
            os.kill(os.getpid(), signal.SIGKILL)
        super().publish_checkpoint(tmp, final)

    def train_micro_batch(self, images):
        if where == "step" and self.global_step == at - 1 and self.micro_step % self.args.gradient_accumulation_steps == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train_micro_batch(images)


args = parse_args(sys.argv[3:])
check_args(args)
sys.exit(KilledTrainer(args).train())
"""


def _killed_run(script, where, step, cmd):
    proc = subprocess.run([sys.executable, str(script), where, str(step), *cmd[3:]], env=_env(), cwd=str(REPO),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\nSTDERR:\n{proc.stderr[-4000:]}"


def test_killed_runs_resume_to_the_uninterrupted_result(image_dir, reference_run, tmp_path):
    """1) killed (SIGKILL) while saving step 4, after the checkpoint is written and before it is published:
    checkpoint-2 stays the latest, the complete but unpublished one is ignored; 2) resumed, then killed in
    the middle of step 5 (between its two micro-batches), after checkpoint-4; 3) resumed to the end: same
    step count, weights, EMA, optimizer and LR-scheduler state as the uninterrupted run."""
    out = tmp_path / "killed"
    root = out / "checkpoints"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    cmd = _train_cmd(image_dir, out, *RUN, "--checkpoints_total_limit", "2")
    assert cmd[1:3] == ["-m", "diffusers_linearizer.training.train"]

    _killed_run(script, "publish", 4, cmd)
    assert (root / ".tmp-checkpoint-4" / "trainer_state.json").is_file()  # fully written but never published
    assert ttrain.latest_checkpoint(str(out)) == str(root / "checkpoint-2")

    resume = cmd + ["--resume_from_checkpoint", "latest"]
    _killed_run(script, "step", 5, resume)
    assert not (root / ".tmp-checkpoint-4").exists()  # the leftover was cleared when the run resumed
    assert [s for s, _ in ttrain.list_checkpoints(str(root))] == [2, 4]
    assert not (out / "model_index.json").exists()

    _run(resume)
    assert not list(root.glob(".tmp-*"))
    assert [s for s, _ in ttrain.list_checkpoints(str(root))] == [STEPS - 2, STEPS]  # pruned to the last 2
    for step in (STEPS - 2, STEPS):
        _assert_same_checkpoint(_ckpt(out, step), _ckpt(reference_run, step))
    _assert_same_tensors(_weights(out / "linearizer"), _weights(reference_run / "linearizer"))


def test_two_process_cpu_launch_matches_one_process_with_double_batch(image_dir, reference_run, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU-only machine: two gloo processes with
    batch 6 each train like one process with batch 6 × 2 accumulation steps (same data, same noise,
    averaged gradients), up to summation order (Adam magnifies it to ~1e-5 after 4 steps at lr 1e-3)."""
    out = tmp_path / "two_procs"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(29500 + os.getpid() % 1000),
           "-m", "diffusers_linearizer.training.train", "--train_data_dir", str(image_dir), "--output_dir", str(out),
           *TINY, "--train_batch_size", "6", "--max_train_steps", "4", "--checkpointing_steps", "2"]
    proc = _run(cmd)
    assert "2 process(es)" in proc.stderr
    ckpt = _ckpt(out, 4)
    assert (ckpt / "random_states_1.pkl").is_file()
    _assert_same_tensors(_weights(ckpt / "linearizer"), _weights(_ckpt(reference_run, 4) / "linearizer"), exact=False, atol=1e-4)
    _assert_same_tensors(_weights(ckpt / "linearizer_ema"), _weights(_ckpt(reference_run, 4) / "linearizer_ema"), exact=False, atol=1e-4)
    assert (out / "model_index.json").is_file()


def test_mixed_precision_run_keeps_float32_weights(image_dir, tmp_path):
    out = tmp_path / "bf16"
    _run(_train_cmd(image_dir, out, "--train_batch_size", "4", "--max_train_steps", "2", "--checkpointing_steps", "0",
                    "--mixed_precision", "bf16", "--objective", "reference", "--pixel_loss", "mse+ssim"))
    state = json.loads((_ckpt(out, 2) / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    for w in (_weights(out / "linearizer"), _weights(_ckpt(out, 2) / "linearizer")):
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in w.values() if v.is_floating_point())


def _trainer(image_dir, out, *extra, cls=None):
    """A trainer in this process (``cls``: a subclass of Trainer)."""
    args = ttrain.parse_args(["--train_data_dir", str(image_dir), "--output_dir", str(out), *TINY, "--cpu", *extra])
    ttrain.check_args(args)
    return (cls or ttrainer.Trainer)(args)


class _OneSecondPerStep(ttrainer.Trainer):
    """A trainer on whose clock every optimizer step takes exactly one second."""

    def clock(self):
        return float(self.global_step)


def test_time_budget_stops_at_the_first_step_past_it_and_saves(image_dir, tmp_path):
    out = tmp_path / "budget"
    trainer = _trainer(image_dir, out, "--train_batch_size", "4", "--max_train_steps", "50", "--checkpointing_steps", "0",
                       "--max_train_seconds", "2.5", cls=_OneSecondPerStep)
    assert trainer.train() == 0
    assert trainer.global_step == 3  # 3 s ≥ 2.5 s
    state = json.loads((_ckpt(out, 3) / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["train_seconds_this_run"] == 3.0
    assert (out / "linearizer" / "diffusion_pytorch_model.safetensors").is_file()
    assert [s for s, _ in ttrain.list_checkpoints(str(out / "checkpoints"))] == [3]
    assert "train_seconds_this_run" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="max_train_seconds"):
        ttrain.check_args(ttrain.parse_args(["--output_dir", str(tmp_path / "bad"), "--max_train_seconds", "0"]))


def test_trainer_methods_one_step_at_a_time(image_dir, tmp_path):
    """step() takes exactly --gradient_accumulation_steps micro-batches and steps the optimizer once;
    the EMA follows; save_checkpoint publishes a complete checkpoint of that step."""
    out = tmp_path / "by_hand"
    trainer = _trainer(image_dir, out, "--train_batch_size", "4", "--gradient_accumulation_steps", "2",
                       "--max_train_steps", "5")
    before = {k: v.clone() for k, v in trainer.unwrapped().state_dict().items()}
    batches = trainer.micro_batches()
    first_three = [next(batches) for _ in range(3)]
    rest = iter(first_three)
    assert trainer.step(rest) == 1 and next(rest) is first_three[2]  # two consumed, the third left
    assert trainer.micro_step == 2 and trainer.ema.num_updates == 1
    adam = list(trainer.optimizer.state_dict()["state"].values())
    assert adam and all(float(s["step"]) == 1 for s in adam)
    after = trainer.unwrapped().state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    trainer.save_checkpoint(1)
    assert [s for s, _ in ttrain.list_checkpoints(str(out / "checkpoints"))] == [1]
    state = json.loads((_ckpt(out, 1) / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and state["micro_step"] == 2
    with pytest.raises(ValueError, match="ran out"):
        trainer.step(iter(first_three[2:]))


def test_training_starts_uncalibrated_from_a_calibrated_model(tmp_path):
    from diffusers_linearizer.training.setup import build_model

    from diffusers_linearizer.models.noise_prior import NoisePrior

    calibrated = tiny_model(sampling_temperature=1.3)
    calibrated.set_noise_prior(NoisePrior(calibrated.latent_dim, 3, 2), temperature=0.9)
    calibrated.save_pretrained(tmp_path / "m")
    config = {k: v for k, v in calibrated.config.items() if not k.startswith("_")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = ttrain.parse_args(["--output_dir", str(tmp_path / "out"), "--resolution", str(calibrated.sample_shape[1])])
    for options in (dict(pretrained_model=str(tmp_path / "m")), dict(model_config=str(tmp_path / "config.json"))):
        vars(args).update(options)
        model = build_model(args, calibrated.sample_shape[0])
        assert model.config.sampling_temperature == 1.0  # the calibration belonged to the old weights
        assert model.noise_prior is None and model.config.noise_prior_rank == 0  # and so did the noise prior
        vars(args).update(pretrained_model=None, model_config=None)
    assert calibrated.config.sampling_temperature == 1.3

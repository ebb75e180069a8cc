"""Distributed generation: `accelerate launch` with 2 CPU processes writes the same images as 1 process."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_linearizer.cli import main

from .test_pipeline import STEPS, make_pipe

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "HF_"))}
    env.update(
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
    )
    return env


def test_two_processes_match_one(tmp_path):
    accelerate = shutil.which("accelerate")
    if accelerate is None:  # pragma: no cover
        pytest.skip("the accelerate command is not installed")
    model = tmp_path / "tiny"
    make_pipe("shared_basis", seed=3).save_pretrained(model)
    args = ["generate", "--model", str(model), "--num-images", "5", "--batch-size", "2", "--steps", str(STEPS),
            "--seed", "11", "--no-progress", "--device", "cpu"]
    env = _env(tmp_path)

    assert main([*args, "--output", str(tmp_path / "one.png"), "--save-tensors", str(tmp_path / "one.pt")]) == 0
    two = subprocess.run(
        # accelerate's `--cpu` flag would start a single process; `--multi_gpu` is its torchrun launcher, and on
        # this GPU-less machine the CLI turns the processes into a gloo (multi-CPU) group.
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "diffusers_linearizer.cli",
         *args, "--output", str(tmp_path / "two.png"), "--save-tensors", str(tmp_path / "two.pt")],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 1/2: generated 3 image(s)" in two.stderr and "process 2/2: generated 2 image(s)" in two.stderr
    assert "wrote 5 images" in two.stderr and two.stderr.count("wrote 5 images") == 1  # main process only
    x1, x2 = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert x1.shape == x2.shape == (5, 1, 8, 8)
    # batches differ between the runs (2+2+1 vs 2+1 | 2), so allow float round-off; the PNGs match exactly
    torch.testing.assert_close(x2, x1, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "one.png")),
                                  np.asarray(PIL.Image.open(tmp_path / "two.png")))

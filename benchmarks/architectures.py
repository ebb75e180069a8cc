"""Invertible-network architectures side by side: the same objective, the same CPU budget, trained at the same time.

Every candidate is trained from scratch (fresh weights, ``--seed 0``) with the likelihood objective (the objective that
moved FD most per second on ``docs/quality.md``), AdamW 3e-4, batch 64, EMA 0.999, for the same wall-clock budget.
All runs train *at once*, one torch thread each, so every run sees the same machine and the same load; the steps
column says how many optimizer steps each architecture fitted into that budget. Candidates (``CANDIDATES``):

* ``one_scale`` — the packaged default's layout: 2 flow blocks at 16×16 (one 2×2 squeeze), 32-wide, 1-deep
  conditioners, one network for g_x and g_y;
* ``separate_g`` — the same with separate networks for g_x and g_y (``shared_g=False``);
* ``three_scales`` — Glow's multi-scale layout (``num_scales=3``, ``models/multiscale.py``): 2 blocks at each of
  16×16, 8×8 and 4×4, half of the channels factored out after each scale;
* ``three_scales_wide`` — the same with 64-wide, 2-deep conditioners.

Then each run is measured by the protocol of ``benchmarks/evaluation.py``: its plain-noise temperature τ is chosen by
the selection features on training images (``ship_default.calibrate``), and at that τ and at τ = 1 its one-step samples
are scored by FD (select, report) and precision/recall against the test images; bits/dim of test images and
one-step vs stepped PSNR as on the quality page. The best candidate is the one with the lowest FD (select) at its τ.

    python benchmarks/architectures.py --budget 2400                  # train every candidate at once, then measure
    python benchmarks/architectures.py --skip-training                # measure the runs again
    python benchmarks/architectures.py --budget 20 --samples 200 --quick   # a smoke run (minutes)
Writes ``docs/architectures.md``, ``docs/architectures.json`` and ``docs/images/architectures_*.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch
from common import DOCS, REPO, child_env, count_params, g_parameters, hardware_and_load, seeded_noise

from diffusers_linearizer import write_text_atomic

CANDIDATES: Dict[str, Dict] = {
    "one_scale": {"num_blocks": 2, "conditioner_channels": 32, "conditioner_layers": 1},
    "separate_g": {"num_blocks": 2, "conditioner_channels": 32, "conditioner_layers": 1, "shared_g": False},
    "three_scales": {"num_blocks": 2, "num_scales": 3, "conditioner_channels": 32, "conditioner_layers": 1},
    "three_scales_wide": {"num_blocks": 2, "num_scales": 3, "conditioner_channels": 64, "conditioner_layers": 2},
}
OBJECTIVE = "likelihood"
COMMON = ["--learning_rate", "3e-4", "--train_batch_size", "64", "--checkpointing_steps", "0", "--sample_steps", "0",
          "--no_final_samples", "--no_progress", "--log_every", "50", "--cpu", "--seed", "0"]
T = 100
TEMPERATURES = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)  # extended past 1.5 while its last point is the best


def train_all(names: List[str], runs_dir: str, budget: float) -> None:
    """Train every candidate of ``names`` from scratch for ``budget`` seconds, all at once (one thread each)."""
    os.makedirs(runs_dir, exist_ok=True)
    env = child_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    procs = []
    for name in names:
        out = os.path.join(runs_dir, name)
        if os.path.isfile(os.path.join(out, "model_index.json")):
            continue
        config = os.path.join(runs_dir, f"{name}.config.json")
        write_text_atomic(config, json.dumps(CANDIDATES[name], indent=2))
        cmd = [sys.executable, "-m", "diffusers_linearizer.training.train", "--output_dir", out, "--model_config",
               config, "--objective", OBJECTIVE, "--max_train_seconds", str(budget), *COMMON]
        print(f"training {name}: {' '.join(cmd[3:])}", flush=True)
        log = open(out + ".log", "w", encoding="utf-8")
        procs.append((name, out, log, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
    for name, out, log, proc in procs:
        proc.wait()
        log.close()
        if proc.returncode or not os.path.isfile(os.path.join(out, "model_index.json")):
            raise RuntimeError(f"training {name} failed (exit {proc.returncode}); see {out}.log")


def plain_noise_scores(pipe, ev, test, samples: int, references: int, bpd_images: int, grid=TEMPERATURES,
                      train=None):
    """``(sweep, row, images)``: τ chosen by FD (select) to ``references`` training images over ``grid``
    (``ship_default.calibrate``; ``train``: the training images, default the Fashion-MNIST split), then ``samples``
    one-step samples of plain noise at that τ and at τ = 1 in both extractors, bits/dim of ``test[:bpd_images]`` and
    one-step vs stepped PSNR; ``images`` are the samples at τ."""
    from quality import bpd, exactness, one_step
    from ship_default import best_temperature, calibrate

    sweep = calibrate(pipe, grid=grid, samples=samples, references=references, train=train)
    tau = best_temperature(sweep)
    eps = seeded_noise(samples, 11)
    images = one_step(pipe, eps, tau, noise_prior=False)
    row = {"temperature": tau, **ev.row(images), **ev.row(one_step(pipe, eps, 1.0, noise_prior=False),
                                                          "_at_temperature_1"),
           "bits_per_dim": bpd(pipe, test[:bpd_images]), "one_step_vs_stepped_db": exactness(pipe)}
    return sweep, row, images


def measure(name: str, path: str, ev, test, args, page_dir: str) -> Dict:
    """One row: τ by the selection features on training images, then both extractors at τ and at τ = 1."""
    from quality import load, read_metrics

    from diffusers_linearizer.image_grid import make_grid

    pipe = load(path)
    sweep, scores, images = plain_noise_scores(pipe, ev, test, args.samples, args.references, args.bpd_images)
    row = {"name": name, "config": CANDIDATES[name], "parameters": count_params(pipe.linearizer),
           "g_parameters": g_parameters(pipe.linearizer), **read_metrics(path), "temperature": scores["temperature"],
           "sweep": sweep, **scores}
    os.makedirs(os.path.join(page_dir, "images"), exist_ok=True)
    grid = os.path.join(page_dir, "images", f"architectures_{name}.png")
    make_grid(images[:64], nrow=8).resize((8 * 34 * 3, 8 * 34 * 3), 0).save(grid)
    row["grid"] = os.path.relpath(grid, page_dir)
    print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), flush=True)
    return row


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=2400, help="Training seconds per candidate. Default: 2400.")
    parser.add_argument("--runs-dir", default=os.path.join(REPO, "runs", "architectures"))
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--samples", type=int, default=2000, help="One-step samples per FD. Default: 2000.")
    parser.add_argument("--references", type=int, default=5000, help="Training images τ is chosen against.")
    parser.add_argument("--bpd-images", type=int, default=1000)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--quick", action="store_true", help="Write the page under the runs folder, not docs/.")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if not args.skip_training:
        train_all(args.candidates, args.runs_dir, args.budget)
    from evaluation import Evaluator
    from fmnist_classifier import load_split

    ev = Evaluator()
    test, _ = load_split("test")
    t0 = time.perf_counter()
    page_dir = os.path.join(args.runs_dir, "page") if args.quick else DOCS
    rows = [measure(n, os.path.join(args.runs_dir, n), ev, test, args, page_dir) for n in args.candidates]
    with open(os.path.join(args.runs_dir, args.candidates[0], "training_args.json"), encoding="utf-8") as f:
        budget = json.load(f)["max_train_seconds"]  # what the runs trained with (also under --skip-training)
    result = {"date": datetime.date.today().isoformat(), "hardware": hardware_and_load(), "budget_seconds": budget,
              "objective": OBJECTIVE, "samples": args.samples, "rows": rows,
              "seconds_to_measure": round(time.perf_counter() - t0, 1)}
    from architectures_page import write_page

    write_page(result, page_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

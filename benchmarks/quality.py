"""Sample quality of every training objective, trained side by side with the same CPU budget.

Each objective continues training the same starting model (``--start``, by default the previous packaged
default, ``benchmarks/models/fashion_mnist_v1``) for the same wall-clock budget on one CPU thread, one run
after the other, with the same optimiser, learning rate, batch and EMA. Every run is then measured the same
way, in one process:

* Fréchet distance (FD) of one-step samples (``--fd-samples``, seeded) to the 10,000 Fashion-MNIST test
  images in two feature extractors, precision and recall (the protocol of ``benchmarks/evaluation.py``: the
  selection features choose the best run and the temperature, the reporting ones only report);
* bits per dimension of 1,000 dequantised test images under the one-step generator (exact change of variables);
* one-step vs stepped PSNR (64 images, the same noise, float32, no clamping) and inversion PSNR
  (``B⁻¹``/``B†`` of 1,000 test images, regenerated);
* a 64-sample grid per run and a temperature sweep (FD against τ) for the best run and the shipped model.

The teacher's FD is that of its own 50-step samples stored in the pairs file; its training time (on other
hardware) is reported on its own line, never folded into a ratio.

    python benchmarks/quality.py --budget 600 --fd-samples 5000          # train every run, then measure
    python benchmarks/quality.py --skip-training                          # measure existing runs again
A run whose folder is gone keeps its row of the stored page (marked with the date it was measured on).
Writes ``docs/quality.md``, ``docs/quality.json`` and ``docs/images/quality_*.png``.
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
from common import (
    DOCS,
    IMAGES,
    MODELS,
    REPO,
    TEACHER_PAIRS,
    TRAINING_RUNS,
    child_env,
    hardware_and_load,
    seeded_noise,
    trainer_state,
)
from evaluation import Evaluator
from fmnist_classifier import load_split

from diffusers_linearizer import LinearizerInversionPipeline, LinearizerPipeline, write_text_atomic
from diffusers_linearizer.image_grid import make_grid
from diffusers_linearizer.training import checkpoint_root, list_checkpoints
from diffusers_linearizer.training.distill import read_pairs_file
from diffusers_linearizer.models.one_step import bits_per_dim, dequantize, log_likelihood

START = os.path.join(MODELS, "fashion_mnist_v1")
T = 100
TEMPERATURES = (0.85, 1.0, 1.15, 1.3, 1.5, 1.7, 1.9)

# name → (objective, uses teacher pairs, extra trainer options)
RUNS = {
    "fast": ("fast", False, []),
    "reference": ("reference", False, []),
    "likelihood": ("likelihood", False, []),
    "distill": ("distill", True, ["--weight_distill_noise", "0.1"]),
    "distill+likelihood": ("distill,likelihood:0.01", True, ["--weight_distill_noise", "0.1"]),
}
COMMON = ["--learning_rate", "3e-4", "--train_batch_size", "64", "--checkpointing_steps", "0", "--sample_steps", "0",
          "--no_final_samples", "--no_progress", "--log_every", "50", "--cpu", "--seed", "0"]


def train_run(name: str, out: str, start: str, budget: float, pairs: str) -> None:
    """Train ``name`` from ``start`` for ``budget`` seconds (one thread); skipped when ``out`` is complete."""
    objective, paired, extra = RUNS[name]
    if not os.path.isfile(os.path.join(out, "model_index.json")):
        cmd = [sys.executable, "-m", "diffusers_linearizer.training.train", "--output_dir", out, "--pretrained_model",
               start, "--objective", objective, "--max_train_seconds", str(budget), *COMMON, *extra]
        if paired:
            cmd += ["--teacher_pairs", pairs]
        env = child_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        print(f"training {name}: {' '.join(cmd[3:])}", flush=True)
        with open(out + ".log", "w", encoding="utf-8") as log:
            subprocess.run(cmd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    if not os.path.isfile(os.path.join(out, "model_index.json")):
        raise RuntimeError(f"training {name} left no pipeline in {out}; see {out}.log")


def read_metrics(run_dir: str) -> Dict:
    """Steps and seconds of a finished run (from its final checkpoint's trainer state)."""
    found = list_checkpoints(checkpoint_root(run_dir))
    if not found:
        return {}
    state = trainer_state(found[-1][1])
    return {"steps": state["global_step"], "train_seconds": state.get("train_seconds_this_run")}


@torch.no_grad()
def one_step(pipe, eps: torch.Tensor, temperature: Optional[float] = None, batch: int = 500,
             noise_prior: bool = True) -> torch.Tensor:
    """One-step images of the noise ``pipe()`` makes of ``eps`` at ``temperature`` (``pipe.noise_from``: the
    model's fitted noise prior, else — or with ``noise_prior=False`` — ``τ·ε``; by default the model's own τ),
    clamped to [0, 1]."""
    out = [pipe(b.shape[0], num_inference_steps=T, latents=pipe.noise_from(b, temperature, noise_prior=noise_prior),
                output_type="pt").images for b in eps.split(batch)]
    return torch.cat(out)


@torch.no_grad()
def bpd(pipe, test: torch.Tensor, seed: int = 0) -> float:
    model = pipe.linearizer.eval()
    B = pipe.scheduler.collapse(model.core, T)
    u = torch.rand(test.shape, generator=torch.Generator().manual_seed(seed))
    x = dequantize(test, u)
    logp = torch.cat([log_likelihood(model, B, b)[0] for b in x.split(250)])
    return float(bits_per_dim(logp, x[0].numel()).mean())


@torch.no_grad()
def exactness(pipe, n: int = 64, seed: int = 7) -> float:
    from diffusers_linearizer import psnr

    eps = seeded_noise(n, seed)
    a = pipe(n, num_inference_steps=T, latents=eps, output_type="pt", clamp=False).images
    b = pipe(n, num_inference_steps=T, latents=eps, one_step=False, output_type="pt", clamp=False).images
    return float(psnr(a, b).min())


@torch.no_grad()
def inversion(pipe, test: torch.Tensor) -> Dict[str, float]:
    inv = LinearizerInversionPipeline(**pipe.components)
    inv.set_progress_bar_config(disable=True)
    p = torch.cat([inv(b, num_inference_steps=T).psnr for b in test.split(250)])
    return {"min": float(p.min()), "median": float(p.median())}


def load(path: str) -> LinearizerPipeline:
    pipe = LinearizerPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(name: str, path: str, ev: Evaluator, test, fd_eps, args, pairs: Optional[str] = None) -> Dict:
    """One row of the table; with ``pairs``, also how closely the model reproduces the teacher (:func:`teacher_fit`)."""
    t0 = time.perf_counter()
    pipe = load(path)
    images = one_step(pipe, fd_eps)
    tau = pipe.sampling_temperature
    prior = pipe.linearizer.noise_prior
    row = {"name": name, "path": os.path.relpath(path, REPO), "sampling_temperature": tau, **ev.row(images),
           "bits_per_dim": bpd(pipe, test[: args.bpd_images]), "one_step_vs_stepped_db": exactness(pipe),
           "inversion_db": inversion(pipe, test[: args.inversion_images])}
    grid = os.path.join(IMAGES, f"quality_{name.replace('+', '_')}.png")
    make_grid(images[:64], nrow=8).resize((8 * 34 * 3, 8 * 34 * 3), 0).save(grid)
    row["grid"] = os.path.relpath(grid, DOCS)
    if tau != 1.0 or prior is not None:  # plain N(0, I) noise
        row.update(ev.row(one_step(pipe, fd_eps, 1.0, noise_prior=False), "_at_temperature_1"))
    if prior is not None:  # the noise prior beside the plain noise at the model's sampling_temperature
        row["noise_prior"] = {"rank": prior.rank, "components": prior.components,
                              "temperature": pipe.noise_prior_temperature}
        row.update(ev.row(one_step(pipe, fd_eps, noise_prior=False), "_plain"))
    if pairs is not None:
        row["teacher_fit"] = teacher_fit(pipe, pairs)
    row["seconds_to_measure"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(row), flush=True)
    return row


@torch.no_grad()
def teacher_fit(pipe, pairs: str, n: int = 1000) -> Dict:
    """How closely the one-step student reproduces the teacher: its image of each pair's noise (τ = 1) against the
    teacher's image, and the noise its inversion recovers from the teacher's image against the pair's noise."""
    from diffusers_linearizer.training.distill import TeacherPairs

    data = TeacherPairs(pairs, shape=tuple(pipe.linearizer.sample_shape), max_samples=n)
    teacher = data.images.float() / 255.0
    student = one_step(pipe, data.noise, 1.0, noise_prior=False)
    inv = LinearizerInversionPipeline(**pipe.components)
    inv.set_progress_bar_config(disable=True)
    recovered = torch.cat([inv(b, num_inference_steps=T).noise for b in teacher.split(250)])
    mse = float((student - teacher).pow(2).mean())
    variance = float(teacher.var(0).mean())
    noise_mse = float((recovered - data.noise).pow(2).mean())
    return {"pairs": len(data), "mse": mse, "teacher_variance": variance, "variance_explained": 1 - mse / variance,
            "noise_mse": noise_mse, "student_parameters": sum(p.numel() for p in pipe.linearizer.parameters())}


def temperature_sweep(path: str, ev: Evaluator, fd_eps) -> List[Dict]:
    pipe = load(path)
    rows = [{"temperature": tau, **ev.row(one_step(pipe, fd_eps, tau, noise_prior=False))} for tau in TEMPERATURES]
    print(f"temperature sweep {path}: {rows}", flush=True)
    return rows


def check_pairs(pairs: str, n: int) -> Dict:
    """Regenerate the first ``n`` pairs with the teacher next to the pairs file, as `distill-data` does, and
    compare with the stored images (``benchmarks/pairs_check.py``)."""
    from pairs_check import check

    return check(pairs, n)


def _stored(key: str):
    path = os.path.join(DOCS, "quality.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f).get(key)
    return None


def _stored_runs() -> Dict[str, Dict]:
    """The rows of the stored page's runs, by name, each marked with the date it was measured on."""
    stored = _stored("runs") or []
    date = _stored("date")
    return {row["name"]: dict(row, reused_from=row.get("reused_from", date)) for row in stored}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=600, help="Training seconds per objective. Default: 600.")
    parser.add_argument("--fd-samples", type=int, default=5000, help="One-step samples per FD. Default: 5000.")
    parser.add_argument("--bpd-images", type=int, default=1000)
    parser.add_argument("--inversion-images", type=int, default=1000)
    parser.add_argument("--runs-dir", default=os.path.join(REPO, "runs", "quality"))
    parser.add_argument("--start", default=START, help="Starting model of every run. Default: %(default)s.")
    parser.add_argument("--pairs", default=TEACHER_PAIRS, help="Teacher pairs for the distillation runs.")
    parser.add_argument("--shipped", default=os.path.join(REPO, "diffusers_linearizer", "default_model"),
                        help="The packaged default, measured alongside.")
    parser.add_argument("--shipped-training", default=TRAINING_RUNS,
                        help="A JSON file whose 'packaged_default' entry says how the shipped model was trained.")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--check-pairs", type=int, default=1000,
                        help="Regenerate the first N teacher pairs with `distill-data`'s code and compare them with the "
                             "stored ones (0: skip; the stored result is kept). Default: 1000 (chunk 0).")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.runs_dir, exist_ok=True)
    os.makedirs(IMAGES, exist_ok=True)

    train_info = {}
    for name in args.runs:
        out = os.path.join(args.runs_dir, name.replace("+", "_"))
        if not args.skip_training:
            train_run(name, out, args.start, args.budget, args.pairs)
        train_info[name] = read_metrics(out)

    pairs_check = check_pairs(args.pairs, args.check_pairs) if args.check_pairs else _stored("pairs_check")
    test, labels = load_split("test")
    ev = Evaluator(test, labels)
    fd_eps = seeded_noise(args.fd_samples, 2026)
    teacher_images = torch.from_numpy(read_pairs_file(args.pairs)[0][: args.fd_samples]).float()[:, None] / 255.0
    train_images, _ = load_split("train")
    rows = {
        "teacher (50 Euler steps, stored pairs)": ev.row(teacher_images),
        "Fashion-MNIST train images (floor)": ev.row(train_images[: args.fd_samples]),
    }
    measured = [measure("start", args.start, ev, test, fd_eps, args)]
    stored = _stored_runs()
    for name in args.runs:
        out = os.path.join(args.runs_dir, name.replace("+", "_"))
        if not os.path.isdir(out) and name in stored:  # the run's weights were not kept: its stored row, marked
            measured.append(stored[name])
            continue
        row = measure(name, out, ev, test, fd_eps, args)
        row.update(train_info.get(name, {}), objective=RUNS[name][0])
        measured.append(row)
    shipped = None
    if args.shipped and os.path.isdir(args.shipped):
        shipped = measure("shipped", args.shipped, ev, test, fd_eps, args, pairs=args.pairs)
        if args.shipped_training:
            with open(args.shipped_training, encoding="utf-8") as f:
                shipped["training"] = json.load(f).get("packaged_default", {})
    best = min((r for r in measured if r["name"] != "start"), key=lambda r: r["fd"])
    best_path = os.path.join(REPO, best["path"])
    sweeps = {best["name"]: temperature_sweep(best_path, ev, fd_eps)} if os.path.isdir(best_path) else {
        best["name"]: (_stored("temperature") or {}).get(best["name"], [])}
    if shipped is not None:
        sweeps["shipped"] = temperature_sweep(args.shipped, ev, fd_eps)
    result = {
        "date": datetime.date.today().isoformat(), "hardware": hardware_and_load(), "budget_seconds": args.budget,
        "fd_samples": args.fd_samples, "references": rows, "runs": measured, "shipped": shipped, "best": best["name"],
        "temperature": sweeps, "pairs_check": pairs_check, "teacher_training": "3,214 steps (batch 256) in 230 s on one NVIDIA H200; "
        "its 45,000 pairs took 150 s on that GPU",
    }
    write_text_atomic(os.path.join(DOCS, "quality.json"), json.dumps(result, indent=2) + "\n")
    write_page(result)
    return 0


def write_page(r: Dict) -> None:
    from quality_page import render

    write_text_atomic(os.path.join(DOCS, "quality.md"), render(r))


if __name__ == "__main__":
    sys.exit(main())

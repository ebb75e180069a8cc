"""The results page: one-step exactness, inversion, Fréchet distance and throughput, measured in one run.

Writes ``docs/results.md``, ``docs/results.json`` and the pictures under ``docs/images/``::

    python benchmarks/results.py                     # the full sizes (10,000 FD samples, 1,000 inversions)
    python benchmarks/results.py --fd-samples 2000   # what fits a CPU in half an hour (the page says which)

Models (all in the repository, so a clean checkout reruns the page):

* **ours** — the packaged default pipeline ``diffusers_linearizer/default_model`` (``--model``): the
  equal-time model below, trained further with the one-step objectives (``docs/quality.md``);
* **ours at equal time** — the model trained side by side with the baseline for the same wall-clock time
  (``--model-equal-time``, default ``benchmarks/models/fashion_mnist_v1``, the previous packaged default);
* **ours at equal steps** — the same training run's EMA weights at the step count the baseline reached
  (``--model-equal-steps``, default ``benchmarks/models/linearizer_equal_steps``);
* **baseline** — the diffusers ``UNet2DModel`` flow-matching model of ``benchmarks/baseline.py``, trained
  side by side on the same machine for the same wall-clock time (``--baseline``, default
  ``benchmarks/models/baseline_unet``).

The training facts (steps, seconds, hardware) of both runs are read from ``benchmarks/models/training_runs.json``.
Every random choice is seeded: all quality numbers are identical on a rerun on the same hardware and
library versions; timings (seconds, images/s) vary with the machine's load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from typing import Dict, List

import torch
from baseline import sample as baseline_sample
from common import DOCS, IMAGES, MODELS, TRAINING_RUNS, hardware_and_load
from evaluation import Evaluator
from fmnist_classifier import accuracy, load_classifier, load_split

from diffusers_linearizer import DEFAULT_MODEL_DIR, LinearizerInversionPipeline, LinearizerPipeline, psnr, write_text_atomic
from diffusers_linearizer.image_grid import make_grid
from diffusers_linearizer.training.data import derive_seed

SOLVERS = ("euler", "heun", "rk4")
T = 100  # sampler grid points of "ours" (99 solver steps; the one-step operator reproduces this run)


# ---------------------------------------------------------------------- helpers
def noise_batch(n: int, seed: int, start: int) -> torch.Tensor:
    """The noise of images ``start … start+n−1`` of stream ``seed`` (independent of the batch split)."""
    return torch.randn((n, 1, 32, 32), generator=torch.Generator().manual_seed(derive_seed(seed, "noise", start)))


@torch.no_grad()
def generate(pipe, n: int, seed: int, one_step: bool = True, solver: str = "euler", steps: int = T,
             batch: int = 64, clamp: bool = True) -> torch.Tensor:
    """``n`` images (N, 1, 32, 32) of our pipeline, in batches of ``batch``, from the noise ``pipe()`` would
    draw (``pipe.noise_from``: its fitted noise prior, or ``τ·ε`` with its ``sampling_temperature``)."""
    out = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        z = pipe.noise_from(noise_batch(m, seed, start)).to(pipe.linearizer.dtype)
        out.append(pipe(m, num_inference_steps=steps, solver=solver, one_step=one_step, latents=z,
                        output_type="pt", clamp=clamp).images.cpu())
    return torch.cat(out)


def timed_call(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds it took)``."""
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t0


def ks_pvalue(lam: float) -> float:
    """P(K > λ) for the Kolmogorov distribution (the two classical series, each where it converges fast)."""
    if lam <= 0:
        return 1.0
    if lam < 1.18:
        cdf = math.sqrt(2 * math.pi) / lam * sum(math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * lam * lam)) for k in range(1, 40))
        return 1.0 - cdf
    return 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 40))


def normality(noise: torch.Tensor) -> Dict[str, float]:
    """Moments of all values and two normality tests against N(0, 1): Kolmogorov–Smirnov (asymptotic
    p-value) and Jarque–Bera (χ²₂ p-value = exp(−JB/2))."""
    v = noise.double().flatten()
    n = v.numel()
    mean, std = float(v.mean()), float(v.std())
    c = (v - v.mean()) / v.std()
    skew, kurt = float(c.pow(3).mean()), float(c.pow(4).mean() - 3)
    jb = n / 6 * (skew**2 + kurt**2 / 4)
    s = v.sort().values
    cdf = 0.5 * (1 + torch.erf(s / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    p_ks = min(1.0, max(0.0, ks_pvalue(lam)))
    per_image_std = noise.double().flatten(1).std(1)
    return {"mean": mean, "std": std, "skewness": skew, "excess_kurtosis": kurt, "ks_D": d, "ks_p": p_ks,
            "jarque_bera": jb, "jb_p": math.exp(-jb / 2), "per_image_std_min": float(per_image_std.min()),
            "per_image_std_max": float(per_image_std.max()), "values": n}


def save_grid(images: torch.Tensor, name: str, nrow: int = 8, scale: int = 3) -> str:
    os.makedirs(IMAGES, exist_ok=True)
    img = make_grid(images, nrow=nrow)
    img = img.resize((img.width * scale, img.height * scale), resample=0)
    path = os.path.join(IMAGES, name)
    img.save(path + ".tmp.png")
    os.replace(path + ".tmp.png", path)
    return os.path.relpath(path, DOCS)


def load_ours(path: str, dtype=torch.float32) -> LinearizerPipeline:
    pipe = LinearizerPipeline.from_pretrained(path, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------- sections
def exactness(pipe32, pipe64, n: int, seed: int) -> List[Dict]:
    """One-step (collapsed B) vs stepped (T − 1 scheduler steps) images from the same noise."""
    rows = []
    for dtype, pipe in (("float32", pipe32), ("float64", pipe64)):
        for solver in SOLVERS + ("reference_rk",):
            z = noise_batch(n, seed, 0).to(pipe.linearizer.dtype)
            one = pipe(n, num_inference_steps=T, solver=solver, one_step=True, latents=z, output_type="pt", clamp=False).images
            stepped_solver = "rk4" if solver == "reference_rk" else solver
            multi = pipe(n, num_inference_steps=T, solver=stepped_solver, one_step=False, latents=z, output_type="pt", clamp=False).images
            p = psnr(one, multi)
            rows.append({"n": n, "dtype": dtype, "solver": solver, "stepped": stepped_solver, "psnr_min": float(p.min()),
                         "psnr_mean": float(p[torch.isfinite(p)].mean()) if torch.isfinite(p).any() else math.inf})
            print(f"exactness {dtype} {solver}: min {p.min():.1f} dB", flush=True)
    return rows


def inversion(pipe, test: torch.Tensor, generated: torch.Tensor, true_noise: torch.Tensor) -> Dict:
    inv = LinearizerInversionPipeline(**pipe.components)
    inv.set_progress_bar_config(disable=True)
    B = inv.collapsed_operator(T)
    out = {"cond_B": float(B.cond()), "rank_B": int(getattr(B, "rank", -1)), "dtype": str(pipe.linearizer.dtype)}
    for name, images in (("test", test), ("generated", generated)):
        # generated images are the raw (unclamped) one-step outputs, which may leave [0, 1]: invert them as they are
        res = [inv(images[i:i + 100].to(pipe.linearizer.dtype), num_inference_steps=T, check_range=name == "test")
               for i in range(0, images.shape[0], 100)]
        p = torch.cat([r.psnr for r in res])
        noise = torch.cat([r.noise.cpu() for r in res])
        entry = {"images": images.shape[0], "psnr_min": float(p.min()), "psnr_median": float(p.median()),
                 "psnr_mean": float(p.mean()), "noise": normality(noise)}
        if name == "generated":
            entry["noise_rel_error_max"] = float(((noise.double() - true_noise.double()).flatten(1).norm(dim=1)
                                                  / true_noise.double().flatten(1).norm(dim=1)).max())
        out[name] = entry
        print(f"inversion {out['dtype']} {name}: min PSNR {p.min():.1f} dB", flush=True)
    return out


def pictures(pipe, baseline, test: torch.Tensor, seed: int) -> Dict[str, str]:
    """Sample grids, inversions and interpolations."""
    pics = {}
    n = 64
    pics["ours_one_step"] = save_grid(generate(pipe, n, seed, one_step=True), "results_ours_one_step.png")
    pics["ours_stepped"] = save_grid(generate(pipe, n, seed, one_step=False), "results_ours_100_steps.png")
    pics["baseline_50"] = save_grid(baseline_sample(baseline, n, 50, seed=seed), "results_baseline_50_steps.png")
    pics["baseline_1"] = save_grid(baseline_sample(baseline, n, 1, seed=seed), "results_baseline_1_step.png")
    inv = LinearizerInversionPipeline(**pipe.components)
    inv.set_progress_bar_config(disable=True)
    x = test[:8]
    r = inv(x, num_inference_steps=T)
    noise_vis = (r.noise.cpu().float() / 6 + 0.5).clamp(0, 1)  # N(0, 1) shown as mid-grey ± 3σ
    pics["inversion"] = save_grid(torch.cat([x, noise_vis, r.reconstruction.cpu().float()]), "results_inversion.png")
    frames = []
    for a, b in ((0, 1), (2, 3), (4, 5), (6, 7)):
        f = inv.interpolate(test[a + 8], test[b + 8], num_frames=8, num_inference_steps=T, output_type="pt").frames
        frames.append(f.cpu().float())
    pics["interpolation"] = save_grid(torch.cat(frames), "results_interpolation.png")
    return pics


def packaged_training() -> Dict:
    """How the packaged default was trained: the ``packaged_default`` entry of ``benchmarks/models/training_runs.json``."""
    with open(TRAINING_RUNS) as f:
        return json.load(f).get("packaged_default", {})


def fd_table(ev: Evaluator, rows_spec, n: int) -> List[Dict]:
    """One row per spec: ``fd`` (the selection features, what choices read), ``fd_report``, precision and recall
    (``evaluation.py``), seconds and images/s of making the ``n`` images."""
    rows = []
    for spec in rows_spec:
        images, seconds = timed_call(spec["fn"], n)
        q = ev.row(images)
        rows.append({k: v for k, v in spec.items() if k != "fn"} | q | {"seconds": seconds, "images_per_s": n / seconds})
        print(f"FD {spec['name']}: {q['fd']:.3f} / {q['fd_report']:.3f} ({n / seconds:.1f} images/s)", flush=True)
    return rows


def verify(stored: Dict, rerun: Dict) -> int:
    """Compare the quality numbers of a rerun with the stored ones; 0 when all agree."""
    pairs = [("classifier accuracy", stored["classifier_test_accuracy"], rerun["classifier_test_accuracy"], 0.0)]
    for a, b in zip(stored["exactness"], rerun["exactness"]):
        pairs.append((f"exactness {a['dtype']} {a['solver']} min PSNR", a["psnr_min"], b["psnr_min"], 0.1))
    for a, b in zip(stored["inversion"], rerun["inversion"]):
        pairs.append((f"cond(B) {a['dtype']}", a["cond_B"], b["cond_B"], 1e-6 * a["cond_B"]))
        for name in ("test", "generated"):
            pairs.append((f"inversion {a['dtype']} {name} min PSNR", a[name]["psnr_min"], b[name]["psnr_min"], 0.1))
            pairs.append((f"inversion {a['dtype']} {name} noise std", a[name]["noise"]["std"], b[name]["noise"]["std"], 1e-6))
    old = {row["name"]: row["fd"] for row in stored["fd"]}
    for row in rerun["fd"]:
        pairs.append((f"FD {row['name']}", old.get(row["name"], math.nan), row["fd"], 1e-4 * max(1.0, abs(row["fd"]))))
    bad = 0
    for name, a, b, tol in pairs:
        same = abs(a - b) <= tol or (math.isinf(a) and a == b)
        bad += not same
        print(f"{'ok ' if same else 'DIFF'} {name}: stored {a:.6g}, rerun {b:.6g}")
    print(f"{len(pairs) - bad}/{len(pairs)} numbers match the stored results")
    return 1 if bad else 0


# ---------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL_DIR)
    p.add_argument("--model-equal-time", default=os.path.join(MODELS, "fashion_mnist_v1"))
    p.add_argument("--model-equal-steps", default=os.path.join(MODELS, "linearizer_equal_steps"))
    p.add_argument("--baseline", default=os.path.join(MODELS, "baseline_unet"))
    p.add_argument("--runs", default=TRAINING_RUNS)
    p.add_argument("--fd-samples", type=int, default=10000)
    p.add_argument("--inversions", type=int, default=1000)
    p.add_argument("--exactness-samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=os.path.join(DOCS, "results.md"))
    p.add_argument("--verify", action="store_true",
                   help="Rerun with the settings stored in the output's .json and compare every quality number with "
                        "it (prints the comparison, writes nothing); the slow baseline 50-step row is skipped unless --verify-all.")
    p.add_argument("--verify-all", action="store_true", help="With --verify: also rerun the baseline 50-step row.")
    p.add_argument("--page-only", action="store_true", help="Rewrite the page from the stored .json (no measuring).")
    p.add_argument("--reuse-baseline", action="store_true",
                   help="Take the baseline UNet's FD rows from the stored .json (same samples and seeds) instead of "
                        "sampling it again (its 50-step row takes about half an hour on a CPU); the page says so.")
    args = p.parse_args(argv)
    if args.page_only:
        from results_page import write_page

        with open(os.path.splitext(args.output)[0] + ".json") as f:
            write_page(json.load(f), args, args.output)
        return 0
    stored = None
    if args.verify:
        with open(os.path.splitext(args.output)[0] + ".json") as f:
            stored = json.load(f)
        for key, value in stored["args"].items():
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import UNet2DModel

    t_start = time.perf_counter()
    with open(args.runs) as f:
        runs = json.load(f)
    classifier = load_classifier()
    test, test_labels = load_split("test")
    pipe32, pipe64 = load_ours(args.model), load_ours(args.model, torch.float64)
    equal_time = load_ours(args.model_equal_time)
    equal_steps = load_ours(args.model_equal_steps)
    reused = {}
    if args.reuse_baseline:
        with open(os.path.splitext(args.output)[0] + ".json") as f:
            old = json.load(f)
        if old["fd_samples"] != args.fd_samples:
            raise SystemExit(f"--reuse-baseline: the stored rows use {old['fd_samples']} samples, not {args.fd_samples}.")
        reused = {row["name"]: dict(row, reused_from=old["date"]) for row in old["fd"] if row["name"].startswith("baseline")}
    baseline = UNet2DModel.from_pretrained(args.baseline).eval()

    results = {"hardware": hardware_and_load(), "torch": torch.__version__, "date": datetime.date.today().isoformat(),
               "T": T, "runs": runs, "classifier_test_accuracy": accuracy(classifier, test, test_labels), "fd_samples": args.fd_samples,
               "args": {k: getattr(args, k) for k in ("fd_samples", "inversions", "exactness_samples", "seed", "threads")},
               "packaged_training": packaged_training(),
               "sampling_temperature": pipe32.sampling_temperature}
    with torch.no_grad():
        _, results["collapse_seconds"] = timed_call(pipe32.collapsed_operator, T)  # first call: the collapse (then cached)
        results["exactness"] = exactness(pipe32, pipe64, args.exactness_samples, args.seed)
        gen_noise = noise_batch(args.inversions, args.seed + 1, 0)
        generated = pipe32(args.inversions, num_inference_steps=T, latents=gen_noise, output_type="pt", clamp=False).images.cpu()
        results["inversion"] = [inversion(pipe32, test[:args.inversions], generated, gen_noise),
                                inversion(pipe64, test[:args.inversions].double(), generated.double(), gen_noise)]
        if not args.verify:
            results["pictures"] = pictures(pipe32, baseline, test, args.seed)

        # Fréchet distance against the whole test set; the training set gives the floor of this metric
        train = load_split("train")[0][:args.fd_samples]
        n_ours, n_base = runs["linearizer"]["steps"], runs["baseline"]["steps"]
        n_equal = runs["linearizer"]["equal_steps_checkpoint"]
        specs = [
            {"name": "Fashion-MNIST train images (floor)", "floor": True, "fn": lambda n: train[:n]},
            {"name": f"packaged default one-step (T = {T})", "clock": "packaged", "fn": lambda n: generate(pipe32, n, 10)},
            {"name": f"packaged default {T - 1} Euler steps", "clock": "packaged", "fn": lambda n: generate(pipe32, n, 10, one_step=False)},
            {"name": f"packaged default one-step (T = {T}, RK4)", "clock": "packaged", "fn": lambda n: generate(pipe32, n, 10, solver="rk4")},
            {"name": f"ours one-step (T = {T}), {n_ours} steps", "clock": "equal time", "fn": lambda n: generate(equal_time, n, 10)},
            {"name": f"ours {T - 1} Euler steps, {n_ours} steps", "clock": "equal time", "fn": lambda n: generate(equal_time, n, 10, one_step=False)},
            {"name": f"ours one-step (T = {T}), {n_equal} steps", "clock": "equal steps", "fn": lambda n: generate(equal_steps, n, 10)},
            {"name": f"ours {T - 1} Euler steps, {n_equal} steps", "clock": "equal steps", "fn": lambda n: generate(equal_steps, n, 10, one_step=False)},
            {"name": f"baseline 50 steps, {n_base} steps", "clock": "both", "fn": lambda n: baseline_sample(baseline, n, 50, seed=10)},
            {"name": f"baseline 1 step, {n_base} steps", "clock": "both", "fn": lambda n: baseline_sample(baseline, n, 1, seed=10)},
        ]
        if args.verify and not args.verify_all:
            specs = [spec for spec in specs if not spec["name"].startswith("baseline 50")]
        results["fd"] = fd_table(Evaluator(test, test_labels), [s for s in specs if s["name"] not in reused], args.fd_samples)
        results["fd"] += [reused[s["name"]] for s in specs if s["name"] in reused]
    if args.verify:
        return verify(stored, results)
    results["total_seconds"] = time.perf_counter() - t_start
    results["command"] = "python benchmarks/results.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_text_atomic(os.path.splitext(args.output)[0] + ".json", json.dumps(results, indent=2) + "\n")
    from results_page import write_page

    write_page(results, args, args.output)
    print(f"wrote {args.output} in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

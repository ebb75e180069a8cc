"""One GPU run (at most 8 minutes on one H100/H200): the trainer's speed with cuDNN's autotuner and channels-last
weights, then the best architecture candidate trained at GPU scale, then its evaluation, so that the result can be
shipped from a CPU afterwards.

Parts, each bounded in time (``--speed-seconds``, ``--train-seconds``) and written to ``--out`` as soon as it ends:

1. **speed**: optimizer steps/s of the trainer on the shipped configuration (``benchmarks/gpu_training.py``): the
   plain path, the fastest path of ``docs/gpu.md`` (fast + compile, CUDA graphs) and both again with
   ``--cudnn_benchmark --channels_last``; the ratio of each to the plain path (the goal: 5×).
2. **train**: the candidate (``--candidate``, a key of ``architectures.CANDIDATES``; by default the one
   ``docs/architectures.json`` ranks first by FD (select)) from scratch on Fashion-MNIST: the likelihood objective for
   the first 60 % of the time, then ``distill,likelihood:0.1`` on the teacher pairs (when ``--pairs`` exists; else
   likelihood throughout), batch 256, inputs on the device, with the speed part's switches when they were faster.
3. **evaluate** (on the CPU cores, the protocol of ``benchmarks/evaluation.py``): τ chosen by FD (select) on training
   images, then FD (select / report), precision and recall at τ and at τ = 1, bits/dim, one-step vs stepped and
   inversion PSNR, a 64-sample grid.

Written to ``--out``: ``train_gpu.json``, ``train_gpu.md``, ``train_gpu.png`` and the trained model's
``linearizer/config.json`` and ``linearizer/diffusion_pytorch_model.safetensors`` (no noise prior: fit it on the CPU
afterwards with ``benchmarks/noise_prior.py``: the packaged default with its prior is 21 MB, which would not come back through the device tool's 16 MiB file
limit beside the model). ``--quick`` runs every part at toy sizes on a CPU in a few minutes (the test of this script).

What has to travel to the GPU machine: the checkout (about 55 MB tracked, against the device tool's 64 MiB), diffusers'
wheel (the machine has torch, accelerate, transformers and safetensors, not diffusers) and the Fashion-MNIST files
(30 MB; the teacher pairs add 23 MB). That does not fit beside the full checkout, so ``--pack`` moves the tracked
weights and pictures the run does not read into ``.gpu-offload/`` (git-ignored), copies the data into ``.gpu-carry/``
and downloads the wheels there; ``--unpack`` moves them back (``git checkout -- .`` restores them as well). Measured
on 2026-12-04: 3.6 MiB of checkout + 57.5 MiB carried with the pairs = 61.1 MiB (16.2 + 35.5 without the model
weights' offload)::

    python benchmarks/train_gpu.py --quick                                   # here, on the CPU
    python benchmarks/train_gpu.py --pack [--with-pairs]                     # here: prints what will travel
    # device run, carry [".gpu-carry"], timeout_s 540:
    #   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-carry/*.whl && export PYTHONPATH=/tmp/site
    #   PYTHONUNBUFFERED=1 python3 benchmarks/train_gpu.py --data-dir .gpu-carry --out $OUT
    python benchmarks/train_gpu.py --unpack                                  # here, afterwards
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace
from typing import Dict, List, Optional

import torch
from common import REPO, child_env, hardware

from diffusers_linearizer import write_text_atomic

TRAIN_VARIANTS = ["plain", "fast + compile, CUDA graphs", "fast + cudnn.benchmark + channels_last",
                  "fast + compile, CUDA graphs + cudnn.benchmark + channels_last"]
QUICK_TRAIN_VARIANTS = ["plain", "fast + cudnn.benchmark + channels_last"]  # no CUDA graphs on a CPU
SPEED_SIZES = dict(resolution=32, train_batch=256, train_images=4096, train_steps=50, train_warmup=10)
QUICK_SPEED_SIZES = dict(resolution=32, train_batch=8, train_images=64, train_steps=2, train_warmup=1)
OFFLOAD = ["benchmarks/models", "diffusers_linearizer/default_model/linearizer",
           "diffusers_linearizer/fashion_mnist_classes/linearizer", "diffusers_linearizer/fashion_mnist_projection/linearizer",
           "diffusers_linearizer/styles/linearizer", "docs/images"]  # tracked, large, read by none of the three parts
DATA_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz"]
CARRY, OFFLOADED = os.path.join(REPO, ".gpu-carry"), os.path.join(REPO, ".gpu-offload")


# ---------------------------------------------------------------------- 1. speed
def speed(args, device) -> Dict:
    from gpu_training import Deadline, measure_training
    from step_cost import CANDIDATES

    sizes = QUICK_SPEED_SIZES if args.quick else SPEED_SIZES
    bench = SimpleNamespace(**sizes, compile_backend="eager" if args.quick else "inductor", profile=False)
    row: Dict = {}
    measure_training("shipped", CANDIDATES["shipped"], QUICK_TRAIN_VARIANTS if args.quick else TRAIN_VARIANTS, bench,
                     device, Deadline(args.speed_seconds), row)
    plain = row.get("plain")
    row["ratios"] = {k: v / plain for k, v in row.items() if isinstance(v, float) and plain and k != "plain"}
    return row


def switches_that_helped(row: Dict) -> List[str]:
    """``--cudnn_benchmark --channels_last`` for the training part when they made the eager fast path faster."""
    faster = row.get("fast + cudnn.benchmark + channels_last", 0.0) > row.get("plain", float("inf"))
    return ["--cudnn_benchmark", "--channels_last"] if faster else []


# ---------------------------------------------------------------------- 2. train
def best_candidate() -> str:
    from architectures import CANDIDATES

    page = os.path.join(REPO, "docs", "architectures.json")
    if os.path.isfile(page):
        with open(page, encoding="utf-8") as f:
            rows = [r for r in json.load(f)["rows"] if r["name"] in CANDIDATES]
        if rows:
            return min(rows, key=lambda r: r["fd"])["name"]
    return "three_scales"


def train(args, switches: List[str], workdir: str) -> Dict:
    """Train the candidate in its phases; each phase continues from the previous one's EMA pipeline."""
    from architectures import CANDIDATES
    from quality import read_metrics

    config = os.path.join(workdir, "candidate.json")
    write_text_atomic(config, json.dumps(CANDIDATES[args.candidate]))
    pairs = args.pairs if args.pairs and os.path.isfile(args.pairs) else None
    first = args.train_seconds * (0.6 if pairs else 1.0)
    phases = [("likelihood", first, [])]
    if pairs:
        phases.append(("distill,likelihood:0.1", args.train_seconds - first,
                       ["--teacher_pairs", pairs, "--weight_distill_noise", "0.1", "--lr_scheduler", "cosine"]))
    batch = "8" if args.quick else "256"
    common = ["--data_dir", args.data_dir, "--train_batch_size", batch, "--learning_rate", "5e-4",
              "--lr_warmup_steps", "0" if args.quick else "200", "--checkpointing_steps", "2000",
              "--checkpoints_total_limit", "1", "--sample_steps", "0", "--no_final_samples", "--no_progress",
              "--log_every", "200", "--seed", "0", *switches]
    if args.quick:
        common += ["--cpu", "--max_train_samples", "256"]
    done, previous = [], None
    for i, (objective, seconds, extra) in enumerate(phases):
        out = os.path.join(workdir, f"phase{i + 1}")
        start = ["--pretrained_model", previous] if previous else ["--model_config", config]
        cmd = [sys.executable, "-m", "diffusers_linearizer.training.train", "--output_dir", out, *start,
               "--objective", objective, "--max_train_seconds", f"{seconds:.0f}", *common, *extra]
        print("train:", " ".join(cmd[3:]), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, env=child_env(HF_HUB_OFFLINE="1"), check=True, timeout=seconds + 180)
        done.append({"objective": objective, "seconds": round(time.perf_counter() - t0, 1),
                     "steps": read_metrics(out).get("steps", 0)})
        previous = out
    return {"candidate": args.candidate, "config": CANDIDATES[args.candidate], "phases": done, "model": previous,
            "switches": switches, "batch": int(batch)}


# ---------------------------------------------------------------------- 3. evaluate
def evaluate(args, model_dir: str) -> Dict:
    from architectures import plain_noise_scores
    from evaluation import Evaluator
    from fmnist_classifier import load_split
    from quality import inversion, load

    from diffusers_linearizer.image_grid import make_grid

    train_images, _ = load_split("train", args.data_dir)
    test, labels = load_split("test", args.data_dir)
    n, k = (200, 100) if args.quick else (2000, 1000)
    ev = Evaluator(test[:2000], labels[:2000]) if args.quick else Evaluator(test, labels)
    pipe = load(model_dir).to("cpu")
    _, row, images = plain_noise_scores(pipe, ev, test, n, min(5000, len(train_images)), k,
                                        grid=(0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5), train=train_images)
    make_grid(images[:64], nrow=8).resize((8 * 34 * 3, 8 * 34 * 3), 0).save(os.path.join(args.out, "train_gpu.png"))
    return {**row, "inversion_db": inversion(pipe, test[:k])}


def write(result: Dict, out: str) -> None:
    write_text_atomic(os.path.join(out, "train_gpu.json"), json.dumps(result, indent=2) + "\n")
    lines = [f"# One GPU run: {result.get('hardware', '?')}, {result['date']}", ""]
    sp = result.get("speed", {})
    for k, v in sp.items():
        if isinstance(v, float):
            lines.append(f"- trainer, shipped configuration, {k}: {v:.2f} steps/s"
                         + (f" ({sp['ratios'][k]:.2f}× plain; goal 5×)" if k in sp.get("ratios", {}) else ""))
    tr = result.get("train")
    if tr:
        lines.append(f"- trained {tr['candidate']} ({json.dumps(tr['config'])}), batch {tr['batch']}, switches "
                     f"{' '.join(tr['switches']) or 'none'}: " + "; ".join(
                         f"{p['objective']} {p['steps']:,} steps in {p['seconds']:.0f} s" for p in tr["phases"]))
    q = result.get("evaluation")
    if q:
        lines.append(f"- τ = {q['temperature']:.2f} (select, training images): FD (select) {q['fd']:.1f}, FD (report) "
                     f"{q['fd_report']:.2f}, precision {q['precision']:.2f}, recall {q['recall']:.2f}; at τ = 1 "
                     f"{q['fd_at_temperature_1']:.1f} / {q['fd_report_at_temperature_1']:.2f}; bits/dim "
                     f"{q['bits_per_dim']:.3f}; one-step vs stepped {q['one_step_vs_stepped_db']:.1f} dB; inversion "
                     f"{q['inversion_db']['min']:.1f} dB (worst)")
    lines += [f"- error: {e}" for e in result.get("errors", [])]
    write_text_atomic(os.path.join(out, "train_gpu.md"), "\n".join(lines) + "\n")


def copy_model(model_dir: str, out: str) -> None:
    """The trained model's two files into ``out/linearizer`` (what comes back through the device tool)."""
    os.makedirs(os.path.join(out, "linearizer"), exist_ok=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy2(os.path.join(model_dir, "linearizer", name), os.path.join(out, "linearizer", name))


# ---------------------------------------------------------------------- packing for the device tool
def _exclude(*names: str) -> None:
    path = os.path.join(REPO, ".git", "info", "exclude")
    have = open(path, encoding="utf-8").read().split() if os.path.isfile(path) else []
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(f"/{n}/\n" for n in names if f"/{n}/" not in have)


def pack(args) -> int:
    import diffusers

    _exclude(".gpu-carry", ".gpu-offload")
    os.makedirs(CARRY, exist_ok=True)
    for name in DATA_FILES:
        shutil.copy2(os.path.join(args.source_data, name), os.path.join(CARRY, name))
    if args.with_pairs:
        from common import TEACHER_PAIRS

        shutil.copy2(TEACHER_PAIRS, os.path.join(CARRY, os.path.basename(TEACHER_PAIRS)))
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", CARRY,
                    f"diffusers=={diffusers.__version__}", "importlib_metadata"], check=True)  # what the machine lacks
    for rel in OFFLOAD:
        src, dst = os.path.join(REPO, rel), os.path.join(OFFLOADED, rel)
        if os.path.exists(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.move(src, dst)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    size = sum(os.path.getsize(os.path.join(REPO, p.decode())) for p in tracked if p and os.path.isfile(
        os.path.join(REPO, p.decode())))
    carry = sum(os.path.getsize(os.path.join(CARRY, f)) for f in os.listdir(CARRY))
    print(f"travels: checkout {size / 2**20:.1f} MiB + .gpu-carry {carry / 2**20:.1f} MiB = "
          f"{(size + carry) / 2**20:.1f} MiB (limit 64 MiB); run --unpack afterwards")
    return 0 if size + carry < 64 * 2**20 else 1


def unpack() -> int:
    for rel in OFFLOAD:
        src, dst = os.path.join(OFFLOADED, rel), os.path.join(REPO, rel)
        if os.path.exists(src) and not os.path.exists(dst):
            shutil.move(src, dst)
    print("moved the offloaded files back")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from diffusers_linearizer.training.data import FASHION_MNIST_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Toy sizes on a CPU: every part's code path in minutes.")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "train_gpu"))
    p.add_argument("--data-dir", default=FASHION_MNIST_DIR, help="Folder with the Fashion-MNIST idx files.")
    p.add_argument("--pairs", default=None, help="Teacher pairs (.npz). Default: the one in --data-dir, if any.")
    p.add_argument("--candidate", default=None, help="Architecture (architectures.CANDIDATES). Default: the best.")
    p.add_argument("--speed-seconds", type=float, default=100.0)
    p.add_argument("--train-seconds", type=float, default=300.0)
    p.add_argument("--pack", action="store_true", help="Prepare .gpu-carry/ and move bulky tracked files aside.")
    p.add_argument("--with-pairs", action="store_true", help="With --pack: carry the teacher pairs too (23 MB).")
    p.add_argument("--source-data", default=FASHION_MNIST_DIR, help="With --pack: where the idx files are here.")
    p.add_argument("--unpack", action="store_true", help="Move the files --pack moved aside back.")
    args = p.parse_args(argv)
    if args.pack:
        return pack(args)
    if args.unpack:
        return unpack()
    if args.pairs is None:
        found = os.path.join(args.data_dir, "fmnist32_teacher_pairs.npz")
        args.pairs = found if os.path.isfile(found) else None
    args.candidate = args.candidate or best_candidate()
    if args.quick:
        args.speed_seconds, args.train_seconds = min(args.speed_seconds, 60), min(args.train_seconds, 20)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    os.makedirs(args.out, exist_ok=True)
    result: Dict = {"date": datetime.date.today().isoformat(), "hardware": hardware(device), "torch": torch.__version__,
                    "quick": args.quick, "errors": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        for part in ("speed", "train", "evaluate"):
            try:
                if part == "speed":
                    result["speed"] = speed(args, device)
                elif part == "train":
                    result["train"] = train(args, switches_that_helped(result.get("speed", {})), workdir)
                    copy_model(result["train"]["model"], args.out)
                elif "train" in result:
                    result["evaluation"] = evaluate(args, result["train"]["model"])
            except Exception as err:  # one failing part must not lose the others' results
                traceback.print_exc()
                result["errors"].append(f"{part}: {type(err).__name__}: {str(err).strip()[:300]}")
            result["seconds"] = round(time.perf_counter() - t0, 1)
            write(result, args.out)
            print(f"[{part}] done at {result['seconds']:.0f} s", flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

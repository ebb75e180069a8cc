"""The packaged default with its shared g untied (``train --untie_g``: g_x and g_y start as copies of g) and trained
further, side by side with the packaged default → ``docs/untied.md`` (``--ship``: and packaged when it is better).

The candidate continues the packaged default's last recipe (``distill,likelihood:0.1`` on the teacher pairs,
``--weight_distill_noise 0.1``, learning rate 1e-4 with a cosine decay) with twice g's parameters::

    python -m diffusers_linearizer.training.train --pretrained_model diffusers_linearizer/default_model --untie_g \\
        --objective distill,likelihood:0.1 --teacher_pairs ../shared/distill/fmnist32_teacher_pairs.npz \\
        --weight_distill_noise 0.1 --learning_rate 1e-4 --lr_scheduler cosine --max_train_steps 2200 \\
        --train_batch_size 64 --max_train_seconds 2900 --cpu --seed 5 --output_dir runs/untied

Then the candidate is made ready exactly as the packaged default was: its plain-noise τ by FD (select) to training
images (``ship_default.calibrate``), a noise prior of the packaged size (r = 256, K = 50) fitted to the recovered noise of
20,000 training images with its τ chosen by FD (select) on 10,000 held-out training images (``noise_prior.study``).
Both models are then sampled as ``pipe()`` samples them, from the same ε, and measured by the protocol of
``evaluation.py``. The project's shipping rule packages the candidate when the reporting extractor calls it better.

    python benchmarks/untied.py --candidate runs/untied [--ship]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Dict, List, Optional

import torch
from common import DOCS, IMAGES, TRAINING_RUNS, g_parameters, hardware_and_load, seeded_noise
from evaluation import PROTOCOL, Evaluator
from fmnist_classifier import load_split

from diffusers_linearizer import DEFAULT_MODEL_DIR, LinearizerPipeline, write_text_atomic
from diffusers_linearizer.image_grid import make_grid

T = 100


def measure(name: str, pipe, eps, ev: Evaluator, test, noise_prior: bool = True, temperature=None) -> Dict:
    from quality import exactness, inversion, one_step

    images = one_step(pipe, eps, temperature, noise_prior=noise_prior)
    make_grid(images[:64], nrow=8).resize((8 * 34 * 3, 8 * 34 * 3), 0).save(os.path.join(IMAGES, f"untied_{name}.png"))
    row = {"name": name, **ev.row(images), "grid": f"images/untied_{name}.png"}
    if noise_prior and temperature is None:
        row.update(one_step_vs_stepped_db=exactness(pipe), inversion_db=inversion(pipe, test[:1000]))
    print(json.dumps(row), flush=True)
    return row


def render(r: Dict) -> str:
    rows = {row["name"]: row for row in r["rows"]}
    old, new = rows["packaged"], rows["untied"]
    lines = ["# The packaged default with its g untied", "",
             f"Written by `benchmarks/untied.py` on {r['date']} ({r['hardware']}). The candidate is the packaged default "
             "with g_x and g_y given their own copies of its shared network (`train --untie_g`, "
             "`diffusers_linearizer/models/untie.py`: the same function at the start, "
             f"{r['g_parameters']:,} parameters of g instead of {r['g_parameters'] // 2:,}), trained further with the "
             f"packaged default's last recipe ({r['training']}). It was then made ready as the packaged default was: "
             f"plain-noise τ = {r['sampling_temperature']:g} by FD (select) to training images, and a noise prior of the "
             f"packaged size (r = 256, K = 50) with τ = {r['noise_prior_temperature']:g} chosen by FD (select) on "
             f"held-out training images. {r['samples']:,} samples per row, the same ε for both models, each sampled as "
             "`pipe()` samples it unless the row says otherwise.", "", PROTOCOL, "",
             "| model | noise | FD (select) | FD (report) | precision | recall | one-step vs stepped (dB) | inversion (dB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        inv, db = row.get("inversion_db"), row.get("one_step_vs_stepped_db")
        lines.append(f"| {row['name']} | {row['noise']} | {row['fd']:.1f} | {row['fd_report']:.2f} | {row['precision']:.2f} "
                     f"| {row['recall']:.2f} | " + (f"{db:.1f}" if db is not None else "–") + " | "
                     + (f"{inv['min']:.1f} / {inv['median']:.1f}" if inv else "–") + " |")
    better = new["fd_report"] < old["fd_report"]
    lines += ["", f"As `pipe()` samples them: FD (report) {old['fd_report']:.2f} → {new['fd_report']:.2f} (ratio "
              f"{new['fd_report'] / old['fd_report']:.2f}), FD (select) {old['fd']:.1f} → {new['fd']:.1f}, precision "
              f"{old['precision']:.2f} → {new['precision']:.2f}, recall {old['recall']:.2f} → {new['recall']:.2f}. "
              + ("**Better by the reporting extractor" + (": shipped as the packaged default.**" if r["shipped"] else
                                                          ".**") if better else
                 "**Not shipped**: the reporting extractor does not call it better."), ""]
    for row in r["rows"]:
        lines += [f"**{row['name']}, {row['noise']}** (FD {row['fd']:.1f} / {row['fd_report']:.2f})  ",
                  f"![{row['name']}]({row['grid']})", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from noise_prior import ship, study
    from quality import read_metrics
    from ship_default import best_temperature, calibrate

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidate", required=True, help="The untied run's output folder (a pipeline).")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--ship", action="store_true", help="Package the candidate when the reporting FD is lower.")
    parser.add_argument("--page-only", action="store_true")
    args = parser.parse_args(argv)
    path = os.path.join(DOCS, "untied.json")
    if args.page_only:
        with open(path, encoding="utf-8") as f:
            write_text_atomic(os.path.join(DOCS, "untied.md"), render(json.load(f)))
        return 0
    torch.set_num_threads(1)
    start = time.perf_counter()
    train, train_labels = load_split("train")
    test, _ = load_split("test")
    ev, held = Evaluator(), Evaluator(train[-10000:], train_labels[-10000:])
    eps = seeded_noise(args.samples, 2026)
    packaged = LinearizerPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    pipe = LinearizerPipeline.from_pretrained(args.candidate)
    for p in (packaged, pipe):
        p.set_progress_bar_config(disable=True)
    tau = best_temperature(calibrate(pipe, samples=args.samples))
    pipe.linearizer.register_to_config(sampling_temperature=float(tau))
    s = study("untied", pipe, ((256, 50),), train[:20000], train_labels[:20000], eps, None, ev, held, 30, test)
    pipe.linearizer.set_noise_prior(s["_prior"], temperature=s["_tau"])
    for tag in ("chosen", "base"):  # the study's own grids; this page shows its rows' grids
        os.remove(os.path.join(IMAGES, f"noise_prior_untied_{tag}.png"))
    rows = [{**measure("packaged", packaged, eps, ev, test), "noise": f"its noise prior, τ = {packaged.noise_prior_temperature:g}"},
            {**measure("untied", pipe, eps, ev, test), "noise": f"its noise prior, τ = {s['_tau']:g}"},
            {**measure("packaged_plain", packaged, eps, ev, test, False), "noise": f"τ·N(0, I), τ = {packaged.sampling_temperature:g}"},
            {**measure("untied_plain", pipe, eps, ev, test, False), "noise": f"τ·N(0, I), τ = {tau:g}"},
            {**measure("packaged_t1", packaged, eps, ev, test, False, 1.0), "noise": "N(0, I)"},
            {**measure("untied_t1", pipe, eps, ev, test, False, 1.0), "noise": "N(0, I)"}]
    run = read_metrics(args.candidate)
    training = (f"`distill,likelihood:0.1`, {run.get('steps', 0):,} steps, {run.get('train_seconds', 0) / 60:.0f} min on "
                "one CPU thread, batch 64, learning rate 1e-4 with a cosine decay")
    g = g_parameters(pipe.linearizer)
    better = rows[1]["fd_report"] < rows[0]["fd_report"]
    result = {"date": datetime.date.today().isoformat(), "hardware": hardware_and_load(), "samples": args.samples,
              "training": training, "g_parameters": g, "sampling_temperature": tau, "noise_prior_temperature": s["_tau"],
              "prior_study": s["rows"], "rows": rows,
              "shipped": bool(args.ship and better), "seconds": round(time.perf_counter() - start, 1)}
    if result["shipped"]:
        ship(pipe, s["_prior"], s["_tau"], DEFAULT_MODEL_DIR, f"{s['chosen']}, fitted to the recovered noise of 20,000 "
             "training images (benchmarks/untied.py)")
        with open(TRAINING_RUNS, encoding="utf-8") as f:
            runs = json.load(f)
        runs["packaged_default"]["phases"].append({
            "objective": "distill,likelihood:0.1 (--untie_g: g_x and g_y untied from the shared g)",
            "steps": run.get("steps"), "seconds": run.get("train_seconds"),
            "finding": f"FD (report) {rows[0]['fd_report']:.2f} → {rows[1]['fd_report']:.2f} as pipe() samples "
                       "(docs/untied.md)"})
        write_text_atomic(TRAINING_RUNS, json.dumps(runs, indent=2) + "\n")
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    write_text_atomic(os.path.join(DOCS, "untied.md"), render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``docs/quality.md`` from ``docs/quality.json`` (written by ``benchmarks/quality.py``; ``python
benchmarks/quality_page.py`` re-renders the page alone)."""

from __future__ import annotations

import json
import os
import sys
from typing import Dict

from common import DOCS
from evaluation import PROTOCOL

from diffusers_linearizer import write_text_atomic

FD_GOAL = 98.0


def _fmt(x, digits=1):
    return "–" if x is None else f"{x:,.{digits}f}"


def _row(r: Dict) -> str:
    inv = r.get("inversion_db") or {}
    return (f"| {r['name']} | {r.get('objective', '–')} | {_fmt(r.get('steps'), 0)} | {_fmt(r.get('train_seconds'), 0)} | "
            f"**{_fmt(r['fd'])}** | {_report(r)} | {_fmt(r.get('bits_per_dim'), 3)} | {_fmt(r.get('one_step_vs_stepped_db'))} | "
            f"{_fmt(inv.get('min'))} / {_fmt(inv.get('median'))} |")


def _report(r: Dict, suffix: str = "") -> str:
    """The reporting columns of a row: FD (report), precision, recall (or why they are missing)."""
    if f"fd_report{suffix}" not in r:
        when = f" (row of {r['reused_from']}, run not kept)" if r.get("reused_from") else ""
        return f"not measured{when} | – | –"
    return f"{r[f'fd_report{suffix}']:.2f} | {r[f'precision{suffix}']:.2f} | {r[f'recall{suffix}']:.2f}"


def _training_lines(training: Dict) -> list:
    """The shipped model's training phases, in order, with what each showed (``benchmarks/models/training_runs.json``)."""
    lines = ["How the packaged default was trained, phase after phase, each continuing from the previous phase's EMA "
             f"weights (`benchmarks/models/training_runs.json`; start: {training.get('start', '–')}):", "",
             "| phase | objective | steps | minutes | what it showed |", "|---:|---|---:|---:|---|"]
    for i, ph in enumerate(training.get("phases", []), 1):
        lines.append(f"| {i} | {ph['objective']} | {ph['steps']:,} | {ph['seconds'] / 60:.0f} | {ph.get('finding', '–')} |")
    lines += [""]
    if training.get("note"):
        lines += [f"Note: {training['note']}.", ""]
    calibration = training.get("sampling_temperature")
    if calibration:
        grid = ", ".join(f"{row['temperature']:g}: {row['fd_train']:.1f}" for row in calibration["grid"])
        lines += [f"Sampling temperature τ = {calibration['value']:g}, the {calibration['chosen_by']} (FD to training "
                  f"images by τ: {grid}).", ""]
    return lines


def _teacher_fit_lines(fit: Dict) -> list:
    """How closely the shipped student reproduces the teacher's sample of the same noise."""
    share = fit["variance_explained"]
    follows = (f"it reproduces {100 * share:.0f} % of the teacher's variation from the same noise, and what it cannot "
               "follow it averages, which blurs and narrows its samples" if share > 0 else
               "its map from noise to image is not the teacher's (the likelihood lets it choose its own)")
    return [f"What limits the student: on the first {fit['pairs']:,} teacher pairs (pairs it trained on, so an "
            "optimistic measure), its one-step image of each pair's noise (τ = 1, the teacher's noise as it is) differs "
            f"from the teacher's image by a mean squared error of {fit['mse']:.4f} (images in [0, 1]), against a "
            f"per-pixel variance of {fit['teacher_variance']:.4f} of the teacher's images: {follows}. Inverting the "
            f"teacher's images gives their noise back with a mean squared error of {fit['noise_mse']:.2f} (the noise has "
            "variance 1). The student "
            f"({fit['student_parameters'] / 1e6:.1f} M parameters, one invertible map) would have to represent the "
            "teacher's 50-step ODE map (3.6 M parameters, 50 evaluations).", ""]


def _ref(r: Dict, name: str) -> str:
    row = r["references"][name]
    return f"{row['fd_report']:.2f}" if "fd_report" in row else "not measured"


def render(r: Dict) -> str:
    teacher = r["references"]["teacher (50 Euler steps, stored pairs)"]["fd"]
    teacher_report = r["references"]["teacher (50 Euler steps, stored pairs)"].get("fd_report")
    floor = r["references"]["Fashion-MNIST train images (floor)"]["fd"]
    runs = r["runs"]
    start = next(x for x in runs if x["name"] == "start")
    lines = [
        "# Sample quality by training objective",
        "",
        f"Measured on {r['date']} with `benchmarks/quality.py` on {r['hardware']}. Every run continues training the "
        f"same starting model (`{start['path']}`) for **{r['budget_seconds']:.0f} s** of wall-clock time on one CPU "
        "thread, with AdamW 3e-4, batch 64 and EMA 0.999, one run after the other on the same machine. The steps column "
        "differs between runs because a step of each objective costs a different number of passes of g (fast 2, "
        "reference 5, likelihood 3, distill 2 on twice the batch) and because other jobs shared the machine's cores "
        "while the runs trained (the load average is in the hardware line). Sampling "
        f"uses the collapsed operator of T = 100 Euler grid points, {r['fd_samples']:,} one-step samples per row. "
        "Bits/dim: 1,000 dequantised test images under the "
        "one-step generator (exact change of variables). One-step vs stepped: worst PSNR of 64 images, float32, "
        "unclamped. Inversion: PSNR of 1,000 test images regenerated from their recovered noise (worst / median).",
        "",
        PROTOCOL + " The best run and the temperature below are chosen by FD (select).",
        "",
        "| run | objective | steps | seconds | FD (select) | FD (report) | precision | recall | bits/dim | "
        "one-step vs stepped (dB) | inversion (dB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(x) for x in runs]
    if r.get("shipped"):
        lines.append(_row(dict(r["shipped"], objective=r["shipped"].get("training", {}).get("objective", "see below"))))
    reused = sorted({x["reused_from"] for x in runs if x.get("reused_from")})
    if reused:
        lines += ["", f"Rows marked *run not kept* are the stored rows of the side-by-side runs of {', '.join(reused)} "
                  "(trained and measured then, on that day's machine); their weights were not kept, so they have no "
                  "reporting numbers. The start and shipped rows were measured again for this page."]
    lines += [
        "",
        f"References: the teacher's own 50-step samples (the stored pairs) reach FD (select / report) **{teacher:.1f}** / "
        f"{_ref(r, 'teacher (50 Euler steps, stored pairs)')}; {r['fd_samples']:,} Fashion-MNIST *training* images reach "
        f"{floor:.1f} / {_ref(r, 'Fashion-MNIST train images (floor)')} (the floor of this measurement). "
        f"The teacher (a diffusers `UNet2DModel`, 3.6 M parameters) was trained separately: {r['teacher_training']}.",
        "",
    ]
    check = r.get("pairs_check")
    if check:
        took = f" ({check['seconds']:.0f} s)" if check.get("seconds") else ""
        lines += [
            f"`diffusers-linearizer distill-data` regenerated the first {check['pairs']:,} stored teacher pairs on this CPU "
            f"(float32){took}: largest difference {check['max_level_difference']} uint8 level(s), mean "
            f"{check['mean_level_difference']:.4f} per pixel; {check['images_differing']:,} images differ in at least one "
            "pixel. Goal ≤ 1 level: " + ("met." if check["max_level_difference"] <= 1 else "**not met**")
            + (f" ({check['pixels_over_one_level']} pixels in {len(check['images_over_one_level'])} images differ by more "
               "than one level)." if check.get("pixels_over_one_level") else "."),
        ]
        f64 = check.get("float64")
        if f64:
            lines += [
                f"Sampled again in float64, those {f64['images']} images are within "
                f"{f64['max_level_difference_to_float32']} level(s) of the float32 ones and "
                f"{f64['max_level_difference_to_stored']} level(s) of the stored ones: "
                + ("this CPU's float32 images do not change in float64, so the larger differences come from the "
                   "arithmetic of the GPU that made the stored images (its kernels and summation order), which no CPU "
                   "run reproduces exactly."
                   if f64["max_level_difference_to_float32"] == 0 else "the CPU result itself depends on the precision."),
            ]
        lines += ["(`benchmarks/pairs_check.py`; `tests/test_distill.py` regenerates the first 4 pairs, ≤ 1 level.)", ""]
    shipped = r.get("shipped")
    if shipped:
        fd = shipped["fd"]
        tau = shipped.get("sampling_temperature", 1.0)
        fd1 = shipped.get("fd_at_temperature_1", fd)
        prior = shipped.get("noise_prior")
        if prior:
            plain = shipped["fd_plain"]
            goal = (f"* Packaged default's one-step FD ≤ {FD_GOAL:.0f}: **{fd:.1f}** as `pipe()` samples it, from its "
                    f"fitted noise prior (a mixture of {prior['components']} Gaussians on {prior['rank']} principal "
                    f"directions at τ = {prior['temperature']:g}, `docs/noise_prior.md`) — "
                    + ("met" if fd <= FD_GOAL else "**not met**")
                    + f". With plain noise at its `sampling_temperature` τ = {tau:g} (`noise_prior=False`): {plain:.1f}; "
                    f"with N(0, I) (τ = 1): {fd1:.1f} — " + ("met." if fd1 <= FD_GOAL else "**not met** at τ = 1."))
        elif tau == 1.0:
            sweep = r["temperature"].get("shipped", [])
            best = min(sweep, key=lambda row: row["fd"]) if sweep else None
            goal = (f"* Packaged default's one-step FD ≤ {FD_GOAL:.0f} (at the default temperature τ = 1): **{fd:.1f}** — "
                    + ("met." if fd <= FD_GOAL else "**not met**.")
                    + (f" At temperature τ = {best['temperature']} (noise scaled before `g_y`, exact) its FD is "
                       f"{best['fd']:.1f}." if best and best["temperature"] != 1.0 else ""))
        else:
            goal = (f"* Packaged default's one-step FD ≤ {FD_GOAL:.0f}: **{fd:.1f}** as `pipe()` samples it, at the "
                    f"model's `sampling_temperature` τ = {tau:g} (chosen on training images, not these test images: "
                    "`benchmarks/ship_default.py`) — " + ("met" if fd <= FD_GOAL else "**not met**")
                    + f". With plain N(0, I) noise (τ = 1) its FD is {fd1:.1f} — "
                    + ("met." if fd1 <= FD_GOAL else "**not met** at τ = 1."))
        lines += [
            "## Goals",
            "",
            goal,
            f"* Distilled student ≤ 3× its teacher's 50-step FD ({3 * teacher:.1f}): **{fd:.1f}** "
            f"({fd / teacher:.1f}× the teacher) — " + ("met." if fd <= 3 * teacher else "**not met**.")
            + (f" In the reporting features {shipped['fd_report'] / teacher_report:.1f}× the teacher — "
               + ("met." if shipped["fd_report"] <= 3 * teacher_report else "**not met**.")
               if "fd_report" in shipped and teacher_report else ""),
            f"* In the reporting features (which chose nothing): FD {_report(shipped).split(' | ')[0]} "
            + ("from the noise prior" if prior else f"at τ = {tau:g}")
            + (f", {_report(shipped, '_plain').split(' | ')[0]} with plain noise at τ = {tau:g} (ratio "
               f"{shipped['fd_report'] / shipped['fd_report_plain']:.2f})" if prior else "")
            + (f", {_report(shipped, '_at_temperature_1').split(' | ')[0]} at τ = 1" if tau != 1.0 or prior else "")
            + f"; the teacher {_ref(r, 'teacher (50 Euler steps, stored pairs)')}.",
            f"* One-step vs stepped ≥ 60 dB (float32): {shipped['one_step_vs_stepped_db']:.1f} dB; inversion ≥ 60 dB: "
            f"{shipped['inversion_db']['min']:.1f} dB (worst of 1,000 test images).",
            "",
        ]
        if "teacher_fit" in shipped:
            lines += _teacher_fit_lines(shipped["teacher_fit"])
        if "training" in shipped:
            lines += _training_lines(shipped["training"])
    lines += ["## Temperature", "", "FD (select / report) of one-step samples with plain noise scaled by τ before `g_y` "
              "(exact: B(τ·ε) = τ·B ε; `noise_prior=False`; the noise prior's own temperatures are in "
              "`docs/noise_prior.md`).", "",
              "| model | " + " | ".join(f"τ = {row['temperature']}" for row in next(iter(r["temperature"].values()))) + " |",
              "|---|" + "---:|" * len(next(iter(r["temperature"].values())))]
    for name, rows in r["temperature"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row['fd']:.1f}" + (f" / {row['fd_report']:.2f}" if "fd_report" in row else "")
                                              for row in rows) + " |")
    lines += ["", "## Samples", ""]
    for x in runs + ([shipped] if shipped else []):
        report = f" / {x['fd_report']:.2f}" if "fd_report" in x else ""
        lines.append(f"**{x['name']}** (FD {x['fd']:.1f}{report})  ")
        lines.append(f"![{x['name']}]({x['grid']})")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """``python benchmarks/quality_page.py``: render ``docs/quality.md`` again from ``docs/quality.json``."""
    import argparse

    argparse.ArgumentParser(description="Render docs/quality.md again from docs/quality.json (the numbers are not "
                            "touched).").parse_args(argv)
    with open(os.path.join(DOCS, "quality.json"), encoding="utf-8") as f:
        result = json.load(f)
    write_text_atomic(os.path.join(DOCS, "quality.md"), render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

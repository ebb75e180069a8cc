"""``docs/architectures.md`` from the results of ``architectures.py`` (kept apart so the page can be rendered again from
``docs/architectures.json`` without training: ``python benchmarks/architectures_page.py``)."""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, List

from common import DOCS
from evaluation import PROTOCOL

from diffusers_linearizer import write_text_atomic

LAYOUTS = {
    "one_scale": "2 blocks at 16×16, conditioners 32 wide × 1 deep, one g (the packaged default's layout)",
    "separate_g": "the same, separate g_x and g_y",
    "three_scales": "2 blocks at each of 16×16, 8×8, 4×4 (half the channels factored out per scale), 32 × 1",
    "three_scales_wide": "the same three scales, conditioners 64 wide × 2 deep",
}


def _table(rows: List[Dict], best: str) -> List[str]:
    lines = ["| candidate | layout | parameters (g / all) | steps | τ (select) | FD (select) | FD (report) | precision "
             "| recall | FD at τ = 1 (select / report) | bits/dim | one-step vs stepped (dB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = "**" if r["name"] == best else ""
        lines.append(
            f"| {mark}{r['name']}{mark} | {LAYOUTS.get(r['name'], '')} | {r['g_parameters'] / 1e6:.2f} M / "
            f"{r['parameters'] / 1e6:.2f} M | {r.get('steps', 0):,} | {r['temperature']:.2f} | {r['fd']:.1f} | "
            f"{r['fd_report']:.2f} | {r['precision']:.2f} | {r['recall']:.2f} | {r['fd_at_temperature_1']:.1f} / "
            f"{r['fd_report_at_temperature_1']:.2f} | {r['bits_per_dim']:.3f} | {r['one_step_vs_stepped_db']:.1f} |")
    return lines


def render(r: Dict) -> str:
    rows = r["rows"]
    best = min(rows, key=lambda row: row["fd"])
    by_report = min(rows, key=lambda row: row["fd_report"])
    base = next((row for row in rows if row["name"] == "one_scale"), rows[0])
    lines = [
        "# Invertible-network architectures side by side",
        "",
        f"Written by `benchmarks/architectures.py` on {r['date']} ({r['hardware']}). Every candidate was trained "
        f"**from scratch** with the `{r['objective']}` objective for **{r['budget_seconds']:.0f} s** of wall-clock "
        "time (AdamW 3e-4, batch 64, EMA 0.999, seed 0), all candidates at the same time, one torch thread each, on "
        "this machine: the steps column is what each architecture fitted into the same budget. Each run's "
        "plain-noise temperature τ was then chosen by FD (select) against 5,000 training images, and "
        f"{r['samples']:,} one-step samples (T = 100 Euler points collapsed into one operator) at that τ and at τ = 1 "
        "were measured against the test images. Bits/dim: 1,000 dequantised test images under the one-step "
        "generator; one-step vs stepped: worst PSNR of 64 images, float32.",
        "",
        PROTOCOL,
        "",
        *_table(rows, best["name"]),
        "",
        "## What it shows",
        "",
        f"* Lowest FD (select), the one number a choice is made with: **{best['name']}** ({best['fd']:.1f}, "
        f"against {base['fd']:.1f} for the default's layout); the reporting extractor "
        + (f"agrees ({best['fd_report']:.2f} against {base['fd_report']:.2f})."
           if by_report["name"] == best["name"] else
           f"ranks {by_report['name']} first ({by_report['fd_report']:.2f}; {best['name']} {best['fd_report']:.2f}, "
           f"the default's layout {base['fd_report']:.2f})."),
        f"* Steps in the same {r['budget_seconds']:.0f} s: "
        + ", ".join(f"{row['name']} {row.get('steps', 0):,}" for row in rows) + ".",
        "* Bits/dim of test images (what the objective trains): "
        + ", ".join(f"{row['name']} {row['bits_per_dim']:.3f}" for row in sorted(rows, key=lambda row: row["bits_per_dim"]))
        + ": the lowest likelihood loss does not give the lowest FD in either extractor.",
        *([f"* By eye: {r['by_eye']}"] if r.get("by_eye") else []),
        "* This is an equal-budget comparison of young models (minutes on a CPU, from fresh weights), not of the "
        "packaged default, which trained for about five hours in six phases (`docs/quality.md`): an architecture "
        "that learns faster per second here is the candidate to train longer, and its advantage at hours of "
        "training is not measured on this page.",
        "",
        "## Samples (at each candidate's τ)",
        "",
    ]
    for row in rows:
        lines += [f"**{row['name']}** (FD {row['fd']:.1f} / {row['fd_report']:.2f}, τ = {row['temperature']:.2f})  ",
                  f"![{row['name']}]({row['grid']})", ""]
    return "\n".join(lines)


def write_page(result: Dict, folder: str = DOCS) -> None:
    os.makedirs(folder, exist_ok=True)
    write_text_atomic(os.path.join(folder, "architectures.json"), json.dumps(result, indent=2) + "\n")
    write_text_atomic(os.path.join(folder, "architectures.md"), render(result))
    print(f"wrote {os.path.join(folder, 'architectures.md')}", flush=True)


def main(argv=None) -> int:
    """``python benchmarks/architectures_page.py``: render ``docs/architectures.md`` again from its JSON."""
    import argparse

    argparse.ArgumentParser(description="Render docs/architectures.md again from docs/architectures.json (the numbers "
                            "are not touched).").parse_args(argv)
    with open(os.path.join(DOCS, "architectures.json"), encoding="utf-8") as f:
        write_page(json.load(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``docs/noise_prior.md`` from the results of ``noise_prior.py`` (kept apart so the page can be rendered again
from ``docs/noise_prior.json`` without refitting: ``python benchmarks/noise_prior_page.py``). A study's ``notes``
(what a person saw in its grids and in runs outside its table) are added to the JSON by hand and rendered as
bullets under its table."""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, List

from common import DOCS
from evaluation import PROTOCOL

from diffusers_linearizer import write_text_atomic

TITLES = {"fashion-mnist": "The packaged default (unconditional)",
          "fashion-mnist-classes": "The class model (guidance scale 4, the default)"}


def _table(study: Dict) -> List[str]:
    classes = "accuracy_select" in study["rows"][0]
    head = "| noise | FD (select, held-out training images) | FD (select) | FD (report) | precision | recall |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if classes:
        head += " in class (select) | in class (report) |"
        rule += "---:|---:|"
    lines = [head, rule]
    for row in study["rows"]:
        mark = "**" if row["name"] == study["chosen"] else ""
        line = (f"| {mark}{row['name']}{mark} | {row['fd_select_train']:.1f} | {row['fd_select']:.1f} | "
                f"{row['fd_report']:.2f} | {row['precision']:.2f} | {row['recall']:.2f} |")
        if classes:
            line += f" {100 * row['accuracy_select']:.1f} % | {100 * row['accuracy_report']:.1f} % |"
        lines.append(line)
    return lines


def render(r: Dict) -> str:
    lines = [
        "# Fitted noise priors",
        "",
        f"Written by `benchmarks/noise_prior.py` on {r['date']} (each section names the run that measured it). A "
        "packaged model samples `x = g_x⁻¹(B g_y(z))`; inverting training images exactly (`B†`) gives the noise `z` "
        "that makes them, which for a perfect model would be N(0, I). A `NoisePrior` "
        "(`diffusers_linearizer/models/noise_prior.py`: a mixture of K Gaussians on the top-r principal directions of "
        "that noise and an isotropic Gaussian off them, per class for the class model) is fitted to it by EM in "
        "float64 (`diffusers_linearizer/training/noise_prior.py`) and sampled in place of N(0, I); the one-step map, "
        "its inverse and the collapse are unchanged, and a sample is a deterministic function of the same ε "
        "(`generator` and `latents` reproduce it). τ scales the deviations from the component means; K = 1 per class is one "
        "zero-mean Gaussian with the class's second moment, K = 1 per label (fitted with the images' labels, sampled "
        "without them) the label's mean and covariance. The candidate "
        "with the lowest FD (select) against 10,000 held-out training images is chosen (for the class model, among "
        "the rows whose samples the selection classifier puts in their requested class at least 90 % of the time); "
        "the test images and the "
        "reporting extractor choose nothing. The packaged model takes the chosen prior when the reporting "
        "extractor calls it better than the noise the model samples today (the project's shipping rule; "
        "for the class model, with no fewer samples in their requested class by the reporting extractor either).",
        "",
        PROTOCOL,
        "",
        *([f"**Note.** {r['note']}", ""] if r.get("note") else []),
    ]
    for s in r["studies"]:
        base = next(row for row in s["rows"] if row["name"] == s["base"])  # what pipe() sampled before
        chosen = next(row for row in s["rows"] if row["name"] == s["chosen"])
        memo = s["nearest_distance"]
        when, run, samples = s["date"], f"{s['hardware']}, {s['seconds'] / 60:.0f} min", s["args"]["samples"]
        floor = s.get("min_accuracy_select")
        rule = "by FD select on held-out training images" + (
            "" if not floor else
            f", among the rows with at least {100 * floor:.0f} % in class (select)" if chosen["accuracy_select"] >= floor
            else f"; no row reached {100 * floor:.0f} % in class (select), so among all rows")
        lines += [f"## {TITLES.get(s['name'], s['name'])}", "",
                  f"Measured on {when} ({run}). Fitted to the recovered noise of {s['fit_images']:,} training images (inverted in "
                  f"{s['fit_seconds']:.0f} s; its standard deviation {s['noise_std']:.2f}, N(0, I) would have 1). "
                  f"Every row: {samples:,} one-step samples from the same ε.", ""]
        lines += _table(s)
        verdict = "shipped" if s.get("ship") else "not shipped"
        lines += [""] + [f"* {note}" for note in s.get("notes", [])] + ([""] if s.get("notes") else [])
        lines += ["",
                  f"Chosen ({rule}): **{s['chosen']}**. Against what the model sampled before "
                  f"({base['name']}): FD (select) {base['fd_select']:.1f} → "
                  f"{chosen['fd_select']:.1f}, FD (report) {base['fd_report']:.2f} → {chosen['fd_report']:.2f}, "
                  f"recall {base['recall']:.2f} → {chosen['recall']:.2f}"
                  + (f", in class (report) {100 * base['accuracy_report']:.1f} % → "
                     f"{100 * chosen['accuracy_report']:.1f} %" if "accuracy_report" in chosen else "")
                  + f": **{verdict}**.",
                  "",
                  f"Memorisation check: the median pixel distance from a sample to its nearest fitting image is "
                  f"{memo['chosen']:.2f} with the chosen prior and {memo['shipped_noise']:.2f} with what the model sampled "
                  f"before; a test image's is "
                  f"{memo['test_images']:.2f}. "
                  + ("The samples are no closer to the fitting images than unseen real images are: the mixture does "
                     "not reproduce its training images." if memo["chosen"] >= 0.9 * memo["test_images"] else
                     "**The samples sit closer to the fitting images than unseen real images do: the mixture is "
                     "near its training images.**"),
                  "",
                  f"Before ({base['name']}):  ",
                  f"![before](images/noise_prior_{s['name']}_base.png)",
                  "",
                  f"Chosen prior ({s['chosen']}):  ",
                  f"![chosen](images/noise_prior_{s['name']}_chosen.png)",
                  ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python benchmarks/noise_prior_page.py``: render ``docs/noise_prior.md`` again from ``docs/noise_prior.json``."""
    import argparse

    argparse.ArgumentParser(description="Render docs/noise_prior.md again from docs/noise_prior.json (the numbers are "
                            "not touched).").parse_args(argv)
    with open(os.path.join(DOCS, "noise_prior.json"), encoding="utf-8") as f:
        write_text_atomic(os.path.join(DOCS, "noise_prior.md"), render(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The class model trained further for its exact conditional likelihood, side by side with the packaged one →
``docs/class_likelihood.md``.

The candidate (``benchmarks/models/fashion_mnist_classes_likelihood``) continues the packaged class model
(``PACKAGED_MODELS["fashion-mnist-classes"]``) with the ``likelihood`` objective, ``log p(x | c)`` through each
class's collapse ``B(c)``::

    python -m diffusers_linearizer.training.train --conditioning class --objective likelihood \\
        --pretrained_model diffusers_linearizer/fashion_mnist_classes --learning_rate 3e-4 --train_batch_size 64 \\
        --ema_decay 0.999 --max_train_seconds 2100 --output_dir benchmarks/models/fashion_mnist_classes_likelihood

(691 steps in 35 minutes on one CPU thread). Both are sampled from the same noise at several guidance scales and
measured by the protocol of ``evaluation.py``, with the share of samples in their requested class by both
extractors. The project's shipping rule takes a candidate that the reporting extractor calls better; for a class
model that means a lower FD (report) with no fewer samples in their class (report) at the default guidance scale.

    python benchmarks/class_likelihood.py       # about 6 minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Dict, List, Optional

import torch
from common import DOCS, IMAGES, MODELS, hardware_and_load, seeded_noise
from evaluation import PROTOCOL, Evaluator

from diffusers_linearizer import PACKAGED_MODELS, LinearizerPipeline, write_text_atomic
from diffusers_linearizer.image_grid import make_grid
from diffusers_linearizer.pipelines.linearizer.conditioning import DEFAULT_GUIDANCE_SCALE

CANDIDATE = os.path.join(MODELS, "fashion_mnist_classes_likelihood")
SCALES = (2.0, 3.0, 4.0, 5.0)
T = 100
TRAINING = ("the `likelihood` objective, 691 steps, batch 64, AdamW 3e-4, EMA 0.999, 35 minutes on one CPU thread "
            "(weights in `benchmarks/models/fashion_mnist_classes_likelihood`)")


def measure(name: str, path: str, ev: Evaluator, eps: torch.Tensor, labels: torch.Tensor) -> List[Dict]:
    pipe = LinearizerPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for scale in SCALES:
        images = torch.cat([pipe(latents=e, class_labels=lab.tolist(), guidance_scale=scale, num_inference_steps=T,
                                 output_type="pt").images for e, lab in zip(eps.split(500), labels.split(500))])
        rows.append({"model": name, "guidance_scale": scale, **ev.evaluate(images), **ev.class_accuracy(images, labels)})
        print(json.dumps(rows[-1]), flush=True)
        if scale == DEFAULT_GUIDANCE_SCALE:
            order = torch.argsort(labels[:80], stable=True)
            make_grid(images[order], nrow=8).resize((8 * 34 * 3, 10 * 34 * 3), 0).save(
                os.path.join(IMAGES, f"class_likelihood_{name}.png"))
    return rows


def _verdict(old: Dict, new: Dict) -> str:
    ship = new["fd_report"] < old["fd_report"] and new["accuracy_report"] >= old["accuracy_report"]
    return (f"FD (report) {old['fd_report']:.2f} → {new['fd_report']:.2f} (ratio {new['fd_report'] / old['fd_report']:.2f}), "
            f"precision {old['precision']:.2f} → {new['precision']:.2f}, recall {old['recall']:.2f} → {new['recall']:.2f}, "
            f"in class (report) {100 * old['accuracy_report']:.1f} % → {100 * new['accuracy_report']:.1f} %, FD (select) "
            f"{old['fd_select']:.1f} → {new['fd_select']:.1f}. "
            + ("**Better by the shipping rule.**" if ship else "**Not shipped**: "
               + ("the reporting extractor finds fewer samples in their requested class."
                  if new["fd_report"] < old["fd_report"] else "the reporting FD is not lower.")))


def render(r: Dict) -> str:
    default = r["default_guidance_scale"]
    at = {row["model"]: row for row in r["rows"] if row["guidance_scale"] == default}
    names = [n for n in dict.fromkeys(row["model"] for row in r["rows"]) if n != "packaged"]
    lines = ["# The class model trained for its conditional likelihood", "",
             f"Written by `benchmarks/class_likelihood.py` on {r['date']} ({r['hardware']}). Each candidate continues "
             "the packaged class model; the `likelihood` objective is `log p(x | c)` through each class's collapse "
             f"`B(c)`. {r['samples']:,} one-step samples per row ({r['samples'] // 10} per class), the same noise for "
             "every model and guidance scale.", ""]
    lines += [f"* **{n}**: {r['training'][n]}" for n in names] + ["", PROTOCOL, "",
              "| model | guidance_scale | FD (select) | FD (report) | precision | recall | in class (select) | "
              "in class (report) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['model']} | {row['guidance_scale']:g} | {row['fd_select']:.1f} | {row['fd_report']:.2f} | "
                     f"{row['precision']:.2f} | {row['recall']:.2f} | {100 * row['accuracy_select']:.1f} % | "
                     f"{100 * row['accuracy_report']:.1f} % |")
    lines += ["", f"At the default guidance scale {default:g}, against the packaged model:", ""]
    lines += [f"* **{n}**: {_verdict(at['packaged'], at[n])}" for n in names]
    shipped = r.get("shipped")
    lines += ["", (f"**{shipped}** is better by the rule and was shipped as the packaged class model on {r['date']}; the "
                   "rows named `packaged` are the model it replaced. " if shipped else
                   "The packaged class model is replaced only by a candidate that is better by the rule. ")
              + "The `likelihood` candidate's weights are kept in `benchmarks/models/fashion_mnist_classes_likelihood`."]
    lines += [f"By eye: {r['by_eye']}"] if r.get("by_eye") else []
    lines += ["",
              f"Packaged (guidance scale {default:g}, one row per class):  ",
              "![packaged](images/class_likelihood_packaged.png)", ""]
    for n in names:
        lines += [f"{n} (guidance scale {default:g}):  ", f"![{n}](images/class_likelihood_{n}.png)", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="Samples per row (a multiple of 10).")
    parser.add_argument("--page-only", action="store_true", help="Render the page again from the stored .json.")
    parser.add_argument("--shipped", default=None, help="The candidate that was packaged (kept in the .json).")
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=PATH=TRAINING",
                        help="Another candidate: its name, folder and a line on how it was trained (repeatable). A "
                        "stored candidate whose folder is gone keeps its rows.")
    args = parser.parse_args(argv)
    path = os.path.join(DOCS, "class_likelihood.json")
    stored = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    if args.page_only:
        result = stored
        if args.shipped:
            result["shipped"] = args.shipped
            write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    else:
        candidates = {"likelihood": (CANDIDATE, TRAINING)}
        for item in args.candidate:
            name, folder, training = item.split("=", 2)
            candidates[name] = (folder, training)
        torch.set_num_threads(1)
        ev = Evaluator()
        eps, labels = seeded_noise(args.samples, 2026), torch.arange(args.samples) % 10
        rows = measure("packaged", PACKAGED_MODELS["fashion-mnist-classes"], ev, eps, labels)
        training = {}
        for name, (folder, line) in candidates.items():
            if os.path.isdir(folder):
                rows += measure(name, folder, ev, eps, labels)
            else:  # measured before, weights not kept
                rows += [row for row in stored.get("rows", []) if row["model"] == name]
            training[name] = line
        for name, line in stored.get("training", {}).items():  # stored candidates not named this time keep their rows
            if name not in training:
                rows += [row for row in stored["rows"] if row["model"] == name]
                training[name] = line
        result = {"date": datetime.date.today().isoformat(), "hardware": hardware_and_load(), "samples": args.samples,
                  "default_guidance_scale": DEFAULT_GUIDANCE_SCALE, "rows": rows, "training": training}
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    write_text_atomic(os.path.join(DOCS, "class_likelihood.md"), render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

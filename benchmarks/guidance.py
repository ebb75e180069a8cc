"""Classifier-free guidance that still collapses: exactness, cost and control → ``docs/guidance.md``.

Measured on the packaged class-conditional Fashion-MNIST pipeline (``PACKAGED_MODELS["fashion-mnist-classes"]``):

* **exactness** — the guided one-step image ``g_x⁻¹(B(c, w) g_y(ε))`` against the same guided sampler run step by
  step (``one_step=False``: ``(1 + w)·A(t, c) z − w·A(t, ∅) z`` evaluated at every stage), PSNR in dB, for
  euler / heun / rk4, in float32 and float64;
* **cost** — seconds per batch of 64 for unguided and guided one-step generation (the collapse is cached, as in
  use), and for the stepped sampler without and with guidance (two core evaluations per stage);
* **control** — samples of every requested class, measured by the protocol of ``benchmarks/evaluation.py``: the
  share classified as the requested class and the Fréchet distance to the test set in the selection features
  (the project's classifier) and in the reporting ones (the judge), precision and recall, as curves over ``w``
  (5,000 samples each); the unconditional default beside;
* **pictures** — one row per class, the same noise in every column, one column per ``w``.

    python benchmarks/guidance.py               # about 10 minutes on one CPU core
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
from common import DOCS, hardware_and_load, seeded_noise, timed
from evaluation import Evaluator
from fmnist_classifier import accuracy

from diffusers_linearizer import PACKAGED_MODELS, LinearizerPipeline, write_text_atomic
from diffusers_linearizer.image_grid import make_grid
from diffusers_linearizer.images import psnr

T = 100
WS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)
CPU = torch.device("cpu")


def load(name: str, dtype=torch.float32) -> LinearizerPipeline:
    pipe = LinearizerPipeline.from_pretrained(PACKAGED_MODELS[name], dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def exactness(n: int) -> List[Dict]:
    rows = []
    for dtype in (torch.float32, torch.float64):
        pipe = load("fashion-mnist-classes", dtype)
        eps, labels = seeded_noise(n, 11, dtype), [i % 10 for i in range(n)]
        for solver in ("euler", "heun", "rk4"):
            kw = dict(latents=eps, class_labels=labels, guidance_scale=3.0, num_inference_steps=T, solver=solver,
                      output_type="pt", clamp=False)
            one, stepped = pipe(**kw).images, pipe(one_step=False, **kw).images
            p = psnr(one, stepped)
            rows.append({"dtype": str(dtype).replace("torch.", ""), "solver": solver, "min_db": float(p.min()),
                         "median_db": float(p.median())})
    return rows


@torch.no_grad()
def cost(batch: int = 64, repeats: int = 5) -> Dict:
    pipe = load("fashion-mnist-classes")
    eps, labels = seeded_noise(batch, 12), [3] * batch
    kw = dict(latents=eps, class_labels=labels, num_inference_steps=T, output_type="pt")
    # each timing's warm-up call computes (and caches) the collapse
    out = {
        "one_step_unguided": timed(lambda: pipe(guidance_scale=1.0, **kw), CPU, repeats),
        "one_step_guided": timed(lambda: pipe(guidance_scale=3.0, **kw), CPU, repeats),
        "one_step_guided_10_classes": timed(
            lambda: pipe(**dict(kw, class_labels=[i % 10 for i in range(batch)]), guidance_scale=3.0), CPU, repeats),
        "stepped_unguided": timed(lambda: pipe(guidance_scale=1.0, one_step=False, **kw), CPU, 1),
        "stepped_guided": timed(lambda: pipe(guidance_scale=3.0, one_step=False, **kw), CPU, 1),
    }
    out["ratio_one_step"] = out["one_step_guided"] / out["one_step_unguided"]
    out["ratio_stepped"] = out["stepped_guided"] / out["stepped_unguided"]
    B, info = pipe.scheduler.collapse(pipe.linearizer.guided_core(3, None, 2.0), T, return_info=True)
    B0 = pipe.scheduler.collapse(pipe.linearizer.guided_core(3, None, 0.0), T)
    out.update(rank_guided=B.rank, rank_unguided=B0.rank, collapse_seconds=info.seconds)
    return out


@torch.no_grad()
def control(per_class: int, ev: Evaluator) -> Dict:
    """Class accuracy and sample quality over ``w`` (the protocol of ``evaluation.py``): every number in the
    selection features (``fd``, ``accuracy``) beside the reporting ones (``fd_report``, ``accuracy_report``,
    ``precision``, ``recall``)."""
    pipe = load("fashion-mnist-classes")
    n = 10 * per_class
    eps, labels = seeded_noise(n, 13), torch.arange(n) % 10
    curve = []
    for w in WS:
        images = torch.cat([pipe(latents=e, class_labels=lab.tolist(), guidance_scale=1.0 + w, num_inference_steps=T,
                                 output_type="pt").images for e, lab in zip(eps.split(500), labels.split(500))])
        per = [accuracy(ev.select, images[labels == k], labels[labels == k]) for k in range(10)]
        acc = ev.class_accuracy(images, labels)
        curve.append({"w": w, "guidance_scale": 1.0 + w, "accuracy": acc["accuracy_select"],
                      "accuracy_report": acc["accuracy_report"], "accuracy_per_class": per, **ev.row(images)})
    default = load("fashion-mnist")
    images = torch.cat([default(latents=e, num_inference_steps=T, output_type="pt").images for e in eps.split(500)])
    logits = torch.cat([ev.select(b) for b in images.split(1000)])
    share = torch.bincount(logits.argmax(1), minlength=10).double() / n
    out = {"curve": curve, "names": [pipe.id2label[k] for k in range(10)], "samples": n,
           **{f"unconditional_{k}": v for k, v in ev.row(images).items()}, "unconditional_class_shares": share.tolist()}
    prior = default.linearizer.noise_prior is not None
    tau = default.noise_prior_temperature if prior else default.sampling_temperature
    if tau != 1.0 or prior:  # what pipe() draws for the unconditional default: its noise prior, or τ·ε
        images = torch.cat([default(latents=default.noise_from(e), num_inference_steps=T, output_type="pt").images
                            for e in eps.split(500)])
        q = ev.row(images)
        out["unconditional_sampling_temperature"] = tau
        out["unconditional_noise_prior"] = prior
        out["unconditional_fd_at_sampling_temperature"] = q["fd"]
        out["unconditional_fd_report_at_sampling_temperature"] = q["fd_report"]
    return out


@torch.no_grad()
def pictures(path: str, columns_w=WS) -> None:
    pipe = load("fashion-mnist-classes")
    eps = seeded_noise(10, 14)
    rows = []
    for k in range(10):
        e = eps[k:k + 1].repeat(len(columns_w), 1, 1, 1)  # the same noise in every column of the row
        rows.append(torch.cat([pipe(latents=e[i:i + 1], class_labels=k, guidance_scale=1.0 + w, num_inference_steps=T,
                                    output_type="pt").images for i, w in enumerate(columns_w)]))
    make_grid(torch.cat(rows), nrow=len(columns_w)).resize((len(columns_w) * 34 * 3, 10 * 34 * 3), 0).save(path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=500, help="Samples per class and w. Default: 500.")
    parser.add_argument("--exactness-images", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    ev = Evaluator()
    result = {"date": datetime.date.today().isoformat(), "hardware": hardware_and_load(), "T": T}
    result["exactness"] = exactness(args.exactness_images)
    result["cost"] = cost()
    result["control"] = control(args.per_class, ev)
    os.makedirs(os.path.join(DOCS, "images"), exist_ok=True)
    pictures(os.path.join(DOCS, "images", "guidance_classes.png"))
    result["seconds"] = time.perf_counter() - start
    write_text_atomic(os.path.join(DOCS, "guidance.json"), json.dumps(result, indent=2) + "\n")
    from guidance_page import render

    write_text_atomic(os.path.join(DOCS, "guidance.md"), render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

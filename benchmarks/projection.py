"""Idempotent projection networks, ours and the IGN baseline side by side → ``docs/projection.md``.

Ours: the packaged ``fashion-mnist-projection`` model, ``f(x) = g⁻¹(P g(x))`` with ``P² = P`` (exact idempotence).
The baseline: :mod:`ign_baseline` (a non-linear network of the same parameter count trained with IGN's three
losses for the same wall-clock time). Measured in one run, on one machine:

* idempotence on five input kinds (Fashion-MNIST test images, pixel N(0, I), uniform noise, corrupted test images,
  rendered glyphs — images of another kind): ``max |f(f(x)) − f(x)|`` in float32 (both) and float64 (ours), and
  the drift ``max |f^{k+1}(x) − f^k(x)|`` for k = 1 … 10;
* generation: Fréchet distance of samples to the test images in two feature extractors — the project's
  classifier (``fmnist_classifier.py``: every choice, here our sampling temperature, is made with it) and the
  judge (``fmnist_judge.py``: reports only) — precision/recall (k-NN manifolds in the judge's features), class
  coverage and the entropy of the mean predicted class;
* projection of corrupted test images (Gaussian noise σ = 0.3, 30 % of the pixels masked, a blur): PSNR of
  ``f(x̃)`` to ``x`` minus PSNR of ``x̃`` to ``x``, and the classifier's accuracy on ``f(x̃)`` against its clean
  accuracy. Masks are filled by the same alternating projection for both models.

    python benchmarks/projection.py                 # the full run (CPU minutes)
    python benchmarks/projection.py --quick         # every code path on small counts (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable, Dict, List

import torch
from common import DOCS, IMAGES, MODELS, REPO, count_params, hardware_and_load
from fmnist_classifier import extract_features, frechet_distance, gaussian_stats, load_classifier, load_split
from evaluation import precision_recall
from fmnist_judge import load_judge

import ign_baseline
from diffusers_linearizer import LinearizerProjectionPipeline, PACKAGED_MODELS, write_text_atomic
from diffusers_linearizer.demo.project_view import corrupt
from diffusers_linearizer.image_grid import make_grid
from diffusers_linearizer.images import psnr, save_image

IGN_DIR = os.path.join(MODELS, "ign")
KINDS = ("test images", "pixel N(0, I)", "uniform", "corrupted test", "glyphs (another kind)")
CORRUPTIONS = {"noise σ = 0.3": "Gaussian noise σ = 0.3", "30 % masked": "30 % of pixels masked", "blur": "blur"}


def glyphs(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` renders of random letters and digits, white on black, 32×32 (PIL's built-in font, scaled up)."""
    import numpy as np
    import PIL.Image
    import PIL.ImageDraw

    rng = np.random.default_rng(seed)
    chars = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789&%#@"
    out = []
    for _ in range(n):
        small = PIL.Image.new("L", (12, 12), 0)
        PIL.ImageDraw.Draw(small).text((3, 1), str(rng.choice(list(chars))), fill=255)
        big = small.resize((32, 32), PIL.Image.BILINEAR).rotate(float(rng.uniform(-20, 20)))
        out.append(torch.from_numpy(np.asarray(big, dtype="float32") / 255.0))
    return torch.stack(out)[:, None]


def input_kinds(test: torch.Tensor, n: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = test[:n]
    return {KINDS[0]: x, KINDS[1]: torch.randn(x.shape, generator=g), KINDS[2]: torch.rand(x.shape, generator=g),
            KINDS[3]: corrupt(x, CORRUPTIONS["noise σ = 0.3"], seed)[0], KINDS[4]: glyphs(n, seed)}


def batched(fn: Callable, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def idempotence(f: Callable, x: torch.Tensor, dtype=torch.float32) -> float:
    once = batched(lambda b: f(b.to(dtype)), x)
    return float((batched(f, once) - once).abs().max())


def drift(f: Callable, x: torch.Tensor, k_max: int = 10) -> List[float]:
    """``[max |f^{k+1}(x) − f^k(x)| for k = 1 … k_max]``."""
    cur, out = batched(f, x), []
    for _ in range(k_max):
        nxt = batched(f, cur)
        out.append(float((nxt - cur).abs().max()))
        cur = nxt
    return out


def fill(f: Callable, x: torch.Tensor, mask: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Alternating projection ``x ← m ⊙ f(x) + (1 − m) ⊙ x_known`` then ``f`` (what the pipeline does)."""
    est = torch.where(mask > 0.5, torch.full_like(x, 0.5), x)
    for _ in range(iterations):
        est = torch.where(mask > 0.5, batched(f, est), x)
    return batched(f, est)


def generation_stats(samples, classifier, judge, ref_c, ref_j, real_judge_feats) -> Dict:
    feats_c, feats_j = extract_features(classifier, samples), extract_features(judge, samples)
    probs = torch.cat([torch.softmax(classifier(samples[i:i + 500]), 1) for i in range(0, samples.shape[0], 500)])
    counts = torch.bincount(probs.argmax(1), minlength=10).double()
    mean = probs.mean(0).double()
    n = min(2000, samples.shape[0], real_judge_feats.shape[0])
    precision, recall = precision_recall(real_judge_feats[:n], feats_j[:n])
    return {"fd_classifier": frechet_distance(*gaussian_stats(feats_c), *ref_c),
            "fd_judge": frechet_distance(*gaussian_stats(feats_j), *ref_j),
            "precision": precision, "recall": recall,
            "classes_covered": int((counts / counts.sum() >= 0.01).sum()),
            "entropy_of_mean_class_bits": float(-(mean * mean.clamp_min(1e-12).log2()).sum())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=PACKAGED_MODELS["fashion-mnist-projection"])
    p.add_argument("--ign", default=IGN_DIR)
    p.add_argument("--quick", action="store_true", help="Small counts, no page written unless --output is given.")
    p.add_argument("--output", default=None, help="The page to write (default: docs/projection.md; none with --quick).")
    args = p.parse_args(argv)
    n_kind, n_gen, n_proj, n_drift = (40, 200, 40, 10) if args.quick else (2000, 5000, 2000, 200)
    torch.manual_seed(0)
    t0 = time.monotonic()
    pipe = LinearizerProjectionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    ours = lambda b: pipe.project(b.to(pipe.linearizer.dtype)).float()  # noqa: E731
    pipe64 = LinearizerProjectionPipeline.from_pretrained(args.model, dtype=torch.float64)
    ours64 = lambda b: pipe64.project(b.double())  # noqa: E731
    ign, source = ign_baseline.load(args.ign)
    theirs = lambda b: ign(b.float())  # noqa: E731
    classifier, judge = load_classifier(), load_judge()
    test, labels = load_split("test")
    ref_c = gaussian_stats(extract_features(classifier, test))
    judge_feats = extract_features(judge, test)
    ref_j = gaussian_stats(judge_feats)

    kinds = input_kinds(test, n_kind)
    idem = {kind: {"ours_float32": idempotence(ours, x), "ours_float64": idempotence(ours64, x, torch.float64),
                   "ign_float32": idempotence(theirs, x)} for kind, x in kinds.items()}
    few = torch.cat([x[:n_drift] for x in kinds.values()])
    drifts = {"ours_float32": drift(ours, few), "ign_float32": drift(theirs, few)}

    gen = torch.Generator().manual_seed(1)
    eps = torch.randn((n_gen, *pipe.linearizer.sample_shape), generator=gen)
    sample = lambda tau, e=eps: pipe(latents=e, temperature=tau, output_type="pt").images.float()  # noqa: E731
    tau = float(pipe.sampling_temperature)  # chosen at shipping in the classifier's features (ship_projection.py)
    ours_samples = sample(tau)
    naive = batched(ours, torch.randn(eps.shape, generator=gen)).clamp(0, 1)
    ign_samples = batched(theirs, source.sample(n_gen, gen))
    generation = {f"ours, latent sampler, τ = {tau:g} (shipped)": generation_stats(ours_samples, classifier, judge, ref_c, ref_j, judge_feats),
                  **({} if tau == 1.0 else {"ours, latent sampler, τ = 1": generation_stats(
                      sample(1.0), classifier, judge, ref_c, ref_j, judge_feats)}),
                  "ours, f(pixel N(0, I)) (the naive path)": generation_stats(naive, classifier, judge, ref_c, ref_j, judge_feats),
                  "IGN, f(z) from its source": generation_stats(ign_samples, classifier, judge, ref_c, ref_j, judge_feats),
                  "test images (reference)": generation_stats(test[:n_gen], classifier, judge, ref_c, ref_j, judge_feats)}

    clean_acc = float((classifier(test[:n_proj]).argmax(1) == labels[:n_proj]).double().mean())
    projection, examples = {}, [test[:8]]
    for name, kind in CORRUPTIONS.items():
        x = test[:n_proj]
        noisy, mask = corrupt(x, kind, 3)
        row = {}
        for who, f in (("ours", ours), ("ign", theirs)):
            out = fill(f, noisy, mask.expand_as(x)) if mask is not None else batched(f, noisy)
            out = out.clamp(0, 1)
            acc = float((classifier(out).argmax(1) == labels[:n_proj]).double().mean())
            row[who] = {"psnr_gain_db": float(psnr(out, x).mean() - psnr(noisy.clamp(0, 1), x).mean()),
                        "accuracy_fraction_of_clean": acc / clean_acc}
            if who == "ours":
                examples += [noisy[:8].clamp(0, 1), out[:8]]
            else:
                examples.append(out[:8])
        projection[name] = row

    result = {"hardware": hardware_and_load(), "seconds": round(time.monotonic() - t0, 1), "quick": args.quick,
              "counts": {"per_kind": n_kind, "generated": n_gen, "projected": n_proj, "drift_inputs": few.shape[0]},
              "parameters": {"ours": count_params(pipe.linearizer), "ign": count_params(ign),
                             "ours_prior": sum(p.numel() for n, p in pipe.linearizer.core.named_parameters() if n.startswith("prior_")),
                             "ours_trained": count_params(pipe.linearizer) - sum(
                                 p.numel() for n, p in pipe.linearizer.core.named_parameters() if n.startswith("prior_"))},
              "components": int(pipe.linearizer.config.core_prior_components),
              "model": os.path.relpath(args.model, REPO), "ign": json.load(open(os.path.join(args.ign, "ign.json"))),
              "idempotence": idem, "drift": drifts, "temperature": tau, "generation": generation, "clean_accuracy": clean_acc, "projection": projection}
    print(json.dumps(result, indent=1))
    output = args.output or (None if args.quick else os.path.join(DOCS, "projection.md"))
    if output:
        os.makedirs(IMAGES, exist_ok=True)
        save_image(make_grid(ours_samples[:64], 8), os.path.join(IMAGES, "projection_samples_ours.png"))
        save_image(make_grid(ign_samples[:64], 8), os.path.join(IMAGES, "projection_samples_ign.png"))
        save_image(make_grid(naive[:64], 8), os.path.join(IMAGES, "projection_samples_naive.png"))
        save_image(make_grid(torch.cat(examples), 8), os.path.join(IMAGES, "projection_examples.png"))
        write_text_atomic(os.path.splitext(output)[0] + ".json", json.dumps(result, indent=1) + "\n")
        from projection_page import render

        write_text_atomic(output, render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

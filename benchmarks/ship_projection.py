"""Ship a trained projection pipeline as the packaged ``fashion-mnist-projection`` model.

Reads the pipeline a training run saved (``diffusers-linearizer train --core_type projection_orthogonal ...``),
fits the prior on P's range by maximum likelihood (EM, ``ProjectionCore.fit_prior``) on the latents of training
images for each number of components K, chooses K and the sampling temperature τ by the lowest Fréchet distance
in the *classifier's* features (``fmnist_classifier.py``; the judge of ``fmnist_judge.py`` is never consulted
here, so that it can report), measures the exact test bits/dim, and saves the result with
``core_prior_components = K``, ``sampling_temperature = τ`` and these metrics in its model card to
``diffusers_linearizer/fashion_mnist_projection/`` (atomically). The sweep goes to ``docs/projection_model.json``.

    python benchmarks/ship_projection.py --run .cache-proj/run1 --command "diffusers-linearizer train ..."
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from common import DOCS
from fmnist_classifier import extract_features, frechet_distance, gaussian_stats, load_classifier, load_split

from diffusers_linearizer import LinearizerProjectionPipeline, PACKAGED_MODELS, write_text_atomic
from diffusers_linearizer.models.one_step import dequantize
from diffusers_linearizer.training.projection_objective import projection_likelihood_terms

TEMPERATURES = (0.7, 0.8, 0.9, 1.0)
COMPONENTS = (1, 10, 25, 50)


def with_components(run: str, K: int, latents=None):
    """The run's pipeline with a ``K``-component prior fitted to ``latents`` (the other tensors as trained; a prior
    saved with one component and no means, as early runs did, is read as K = 1)."""
    from safetensors.torch import load_file

    from diffusers_linearizer import LinearizerModel

    folder = os.path.join(run, "linearizer")
    config = {k: v for k, v in json.load(open(os.path.join(folder, "config.json"))).items() if not k.startswith("_")}
    model = LinearizerModel(**{**config, "core_prior_components": K})
    state = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
    model.eval()
    if latents is not None:
        model.core.fit_prior(latents)
    return LinearizerProjectionPipeline(linearizer=model)


@torch.no_grad()
def test_bpd(pipe, test: torch.Tensor, seed: int = 0) -> float:
    """Exact bits/dim of dequantised test images under ``g`` and the core's prior."""
    gen = torch.Generator().manual_seed(seed)
    x = dequantize(test, torch.rand(test.shape, generator=gen))
    vals = [float(projection_likelihood_terms(pipe.linearizer, x[i:i + 500])["projection_bpd"]) * min(500, x.shape[0] - i)
            for i in range(0, x.shape[0], 500)]
    return sum(vals) / x.shape[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="The training run's output folder (its saved pipeline).")
    p.add_argument("--output", default=PACKAGED_MODELS["fashion-mnist-projection"])
    p.add_argument("--command", default="", help="The training command(s), recorded in the model card.")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--fit_images", type=int, default=20000, help="Training images whose latents the prior is fitted to.")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    base = with_components(args.run, 1)
    classifier = load_classifier()
    test, _ = load_split("test")
    train, _ = load_split("train")
    ref = gaussian_stats(extract_features(classifier, test))
    x = dequantize(train[:args.fit_images], torch.rand(train[:args.fit_images].shape, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        latents = torch.cat([base.linearizer.apply_g(x[i:i + 500], "x").flatten(1) for i in range(0, x.shape[0], 500)])
    eps = torch.randn((args.samples, *base.linearizer.sample_shape), generator=torch.Generator().manual_seed(11))
    sweep, pipes = {}, {}
    for K in COMPONENTS:
        pipes[K] = with_components(args.run, K, latents)
        pipes[K].set_progress_bar_config(disable=True)
        for tau in TEMPERATURES:
            images = pipes[K](latents=eps, temperature=tau, output_type="pt").images.float()
            sweep[(K, tau)] = frechet_distance(*gaussian_stats(extract_features(classifier, images)), *ref)
            print(f"K = {K}, τ = {tau}: FD (classifier) {sweep[(K, tau)]:.2f}", flush=True)
    K, tau = min(sweep, key=sweep.get)
    pipe = pipes[K]
    bpd = test_bpd(pipe, test[:2000])
    pipe.linearizer.register_to_config(sampling_temperature=float(tau))
    state_path = os.path.join(args.run, "training_args.json")
    training = json.load(open(state_path)) if os.path.isfile(state_path) else {}
    metrics = {"test_bits_per_dim": round(bpd, 4), "sampling_temperature": tau, "prior_components": K,
               "fd_classifier_at_sampling_temperature": round(sweep[(K, tau)], 2),
               "made_by": "benchmarks/ship_projection.py", "training_command": args.command,
               "see": "docs/projection.md (idempotence, generation and projection against an IGN baseline)"}
    pipe.save_pretrained(args.output, metrics=metrics)
    record = {"run": os.path.relpath(args.run), "fit_images": args.fit_images,
              "sweep_fd_classifier": {f"K={k}, tau={t}": v for (k, t), v in sweep.items()},
              "chosen_components": K, "chosen_temperature": tau, "test_bits_per_dim": bpd, "training_command": args.command,
              "objective": training.get("objective"), "max_train_seconds": training.get("max_train_seconds"),
              "train_batch_size": training.get("train_batch_size"), "init_weights": training.get("init_weights")}
    write_text_atomic(os.path.join(DOCS, "projection_model.json"), json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A small Fashion-MNIST classifier whose penultimate features define our Fréchet distance.

No pretrained Inception/VGG weights exist on an offline machine, so FID in its usual form cannot be
computed. Instead the project trains this classifier itself (a few minutes on one CPU core) and
measures generated images with the Fréchet distance between Gaussians fitted to its 128-d
penultimate-layer features::

    FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})

(the FID formula with another feature extractor: numbers are comparable with each other, not with
published FIDs). Architecture: two conv stages (16 and 32 channels, 3×3, ReLU, 2×2 max-pool) on the
32×32 padded images in ``[0, 1]``, a 2048 → 128 linear layer (the features, after ReLU), 128 → 10 logits.

    python benchmarks/fmnist_classifier.py            # train, report test accuracy, save the weights
    python benchmarks/fmnist_classifier.py --evaluate # test accuracy of the saved weights

The weights (``benchmarks/fmnist_classifier.safetensors``, 1 MB) are kept in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Tuple

import torch
from common import BENCH
from torch import Tensor, nn

from diffusers_linearizer import write_text_atomic
from diffusers_linearizer.training.data import FASHION_MNIST_DIR, EpochShuffleSampler, FashionMNIST

WEIGHTS = os.path.join(BENCH, "fmnist_classifier.safetensors")
FEATURES = 128


class FashionClassifier(nn.Module):
    """conv(1→16)·ReLU·pool → conv(16→32)·ReLU·pool → linear(2048→128)·ReLU [features] → linear(128→10)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(N, 128)`` of images ``(N, 1, 32, 32)`` in ``[0, 1]``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 32, 32):
            raise ValueError(f"Expected images of shape (N, 1, 32, 32) in [0, 1], got {tuple(x.shape)}.")
        return self.body(x.float() * 2 - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def load_weights(model: nn.Module, path: str, script: str) -> nn.Module:
    """``model`` with the safetensors weights at ``path`` (made by ``benchmarks/SCRIPT``), in eval mode."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weights at {path}; train them with: python benchmarks/{script}")
    model.load_state_dict(load_file(path))
    return model.eval()


def load_classifier(path: str = WEIGHTS) -> FashionClassifier:
    """The trained classifier (safetensors), in eval mode."""
    return load_weights(FashionClassifier(), path, "fmnist_classifier.py")


@torch.no_grad()
def extract_features(model: FashionClassifier, images: Tensor, batch_size: int = 500) -> Tensor:
    """Features of ``images`` (N, 1, 32, 32) as a float64 ``(N, 128)`` tensor."""
    return torch.cat([model.features(images[i:i + batch_size]).double() for i in range(0, images.shape[0], batch_size)])


def gaussian_stats(features: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and (unbiased) covariance of ``(N, d)`` features, in float64."""
    f = features.double()
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (float64, symmetric eigen-decompositions only)."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * cross)


@torch.no_grad()
def accuracy(model: FashionClassifier, images: Tensor, labels: Tensor) -> float:
    logits = torch.cat([model(images[i:i + 1000]) for i in range(0, images.shape[0], 1000)])
    return float((logits.argmax(1) == labels).double().mean())


def load_split(split: str, root: str = FASHION_MNIST_DIR) -> Tuple[Tensor, Tensor]:
    """Images ``(N, 1, 32, 32)`` in ``[0, 1]`` and labels of a Fashion-MNIST split."""
    data = FashionMNIST(root, split, 32)
    return data.images.float() / 255.0, data.labels


def train(root: str = FASHION_MNIST_DIR, epochs: int = 3, batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> Tuple[FashionClassifier, float]:
    """Train from scratch (deterministic on CPU for a given seed); returns ``(model, test accuracy)``."""
    torch.manual_seed(seed)
    images, labels = load_split("train", root)
    test_x, test_y = load_split("test", root)
    model = FashionClassifier()
    return fit(model, torch.optim.Adam(model.parameters(), lr=lr), images, labels, test_x, test_y, epochs, batch_size, seed)


def fit(model: nn.Module, optimizer, images: Tensor, labels: Tensor, test_x: Tensor, test_y: Tensor, epochs: int,
        batch_size: int, seed: int) -> Tuple[nn.Module, float]:
    """Cross-entropy training with random horizontal flips (Fashion-MNIST is mirror-symmetric enough), batches in
    the order of ``EpochShuffleSampler(seed)``; returns ``(model in eval mode, test accuracy)``."""
    sampler = EpochShuffleSampler(images.shape[0], seed=seed)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = sampler.permutation()
        model.train()
        for i in range(0, order.numel() - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            x = images[idx]
            x = torch.where(torch.rand(x.shape[0], 1, 1, 1) < 0.5, x.flip(-1), x)
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        acc = accuracy(model.eval(), test_x, test_y)
        print(f"epoch {epoch + 1}/{epochs}: last loss {loss.item():.4f}, test accuracy {acc:.4f}", flush=True)
    return model.eval(), acc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=FASHION_MNIST_DIR)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--output", default=WEIGHTS)
    p.add_argument("--evaluate", action="store_true", help="Only report the test accuracy of the saved weights.")
    args = p.parse_args(argv)
    if args.evaluate:
        x, y = load_split("test", args.data_dir)
        print(f"test accuracy {accuracy(load_classifier(args.output), x, y):.4f}")
        return 0
    from safetensors.torch import save_file

    model, acc = train(args.data_dir, args.epochs)
    tmp = args.output + ".tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp, metadata={"test_accuracy": f"{acc:.4f}"})
    os.replace(tmp, args.output)
    summary = {"test_accuracy": acc, "epochs": args.epochs, "features": FEATURES}
    write_text_atomic(os.path.splitext(args.output)[0] + ".json", json.dumps(summary, indent=2) + "\n")
    print(f"saved {args.output} (test accuracy {acc:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

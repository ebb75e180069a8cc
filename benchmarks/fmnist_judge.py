"""A second Fashion-MNIST feature extractor, used only to *report* (never to choose anything).

Choices (temperature, checkpoint, weights) are made with ``fmnist_classifier.py``'s features; a number chosen in
some features and reported in the same features flatters the choice. This extractor has another architecture and
another seed: three conv stages with batch norm (24, 48, 96 channels, 3×3, stride-2 downsampling), global average
pooling to 96 features (after ReLU), and a 96 → 10 head; trained on the Fashion-MNIST training images only
(seed 1, two epochs, random horizontal flips). The Fréchet distance in its features uses the same formula
(``fmnist_classifier.frechet_distance``).

    python benchmarks/fmnist_judge.py             # train and save benchmarks/fmnist_judge.safetensors
    python benchmarks/fmnist_judge.py --evaluate  # test accuracy of the saved weights
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from common import BENCH
from fmnist_classifier import accuracy, fit, load_split, load_weights
from torch import Tensor, nn

from diffusers_linearizer import write_text_atomic
from diffusers_linearizer.training.data import FASHION_MNIST_DIR

WEIGHTS = os.path.join(BENCH, "fmnist_judge.safetensors")
FEATURES = 96


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class FashionJudge(nn.Module):
    """Three stages (24, 48, 96 channels) → global average pool [features, 96] → linear(96 → 10)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(_stage(1, 24), _stage(24, 48), _stage(48, FEATURES),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: Tensor) -> Tensor:
        """Features ``(N, 96)`` of images ``(N, 1, 32, 32)`` in ``[0, 1]``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 32, 32):
            raise ValueError(f"Expected images of shape (N, 1, 32, 32) in [0, 1], got {tuple(x.shape)}.")
        return self.body(x.float() - 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def load_judge(path: str = WEIGHTS) -> FashionJudge:
    """The trained judge (safetensors), in eval mode."""
    return load_weights(FashionJudge(), path, "fmnist_judge.py")


def train(root: str = FASHION_MNIST_DIR, epochs: int = 2, batch_size: int = 128, lr: float = 2e-3, seed: int = 1):
    """Train from scratch; returns ``(model, test accuracy)``."""
    torch.manual_seed(seed)
    images, labels = load_split("train", root)
    test_x, test_y = load_split("test", root)
    model = FashionJudge()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    return fit(model, optimizer, images, labels, test_x, test_y, epochs, batch_size, seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=FASHION_MNIST_DIR)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--output", default=WEIGHTS)
    p.add_argument("--evaluate", action="store_true")
    args = p.parse_args(argv)
    if args.evaluate:
        x, y = load_split("test", args.data_dir)
        print(f"test accuracy {accuracy(load_judge(args.output), x, y):.4f}")
        return 0
    from safetensors.torch import save_file

    model, acc = train(args.data_dir, args.epochs)
    tmp = args.output + ".tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp, metadata={"test_accuracy": f"{acc:.4f}"})
    os.replace(tmp, args.output)
    write_text_atomic(os.path.splitext(args.output)[0] + ".json",
                      json.dumps({"test_accuracy": acc, "epochs": args.epochs, "features": FEATURES, "seed": 1}, indent=2) + "\n")
    print(f"saved {args.output} (test accuracy {acc:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

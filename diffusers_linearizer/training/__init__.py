"""Training: data, objectives and the accelerate trainer (``diffusers-linearizer train``).

* :mod:`.data` — our idx reader, Fashion-MNIST (Debian package ``dataset-fashion-mnist``) padded to
  32×32 in ``[0, 1]``, image folders, and a resumable shuffling sampler;
* :mod:`.objective` — the paper's objective (LPIPS replaced by pixel MSE / MSE+SSIM) and the cheaper
  default, one function per loss term;
* :mod:`.train` — the trainer (``main``, ``add_arguments``), EMA and atomic checkpoints.
"""

from .data import DatasetNotFoundError, EpochShuffleSampler, FashionMNIST, ImageFolderDataset, build_dataset, read_idx, write_idx
from .objective import OBJECTIVES, PIXEL_LOSSES, TERMS, LinearizerObjective, fast_objective, reference_objective
from .train import EMA, add_arguments, latest_checkpoint, main

__all__ = [
    "DatasetNotFoundError", "EpochShuffleSampler", "FashionMNIST", "ImageFolderDataset", "build_dataset", "read_idx",
    "write_idx", "OBJECTIVES", "PIXEL_LOSSES", "TERMS", "LinearizerObjective", "fast_objective", "reference_objective",
    "EMA", "add_arguments", "latest_checkpoint", "main",
]

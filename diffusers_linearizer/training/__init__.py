"""Training: data, objectives and the accelerate trainer (``diffusers-linearizer train``).

* :mod:`.data` — our idx reader, Fashion-MNIST (Debian package ``dataset-fashion-mnist``) padded to
  32×32 in ``[0, 1]``, image folders, and a resumable shuffling sampler;
* :mod:`.objective` — the paper's objective (LPIPS replaced by pixel MSE / MSE+SSIM), the cheaper
  default, one function per loss term, and weighted mixes of objectives;
* :mod:`.one_step` — the collapsed one-step generator as a differentiable function, its exact inverse and
  its log-likelihood (change of variables);
* :mod:`.distill` — the ``distill`` objective and teacher pairs; :mod:`.teacher` — making pairs from a
  diffusers flow-matching model (``diffusers-linearizer distill-data``);
* :mod:`.likelihood` — the ``likelihood`` objective (bits/dim of the one-step generator);
* :mod:`.train` — the command line of the trainer (``main``, ``add_arguments``); :mod:`.trainer` — the
  :class:`Trainer`, one method per part of a training step; :mod:`.arguments`, :mod:`.setup`, :mod:`.ema`,
  :mod:`.checkpoints` (the checkpoint folders of a run), :mod:`.outputs` (sample grids, the final pipeline).
"""

from .data import DatasetNotFoundError, EpochShuffleSampler, FashionMNIST, ImageFolderDataset, build_dataset, read_idx, write_idx
from .distill import TeacherPairs, distill_terms
from .likelihood import likelihood_terms
from .objective import (
    OBJECTIVES,
    PIXEL_LOSSES,
    TERMS,
    LinearizerObjective,
    fast_objective,
    parse_objective,
    reference_objective,
)
from .one_step import generate, invert, log_likelihood
from .arguments import add_arguments
from .checkpoints import checkpoint_root, latest_checkpoint, list_checkpoints
from .ema import EMA
from .trainer import Trainer

__all__ = [
    "DatasetNotFoundError", "EpochShuffleSampler", "FashionMNIST", "ImageFolderDataset", "build_dataset", "read_idx",
    "write_idx", "OBJECTIVES", "PIXEL_LOSSES", "TERMS", "LinearizerObjective", "fast_objective", "reference_objective",
    "EMA", "add_arguments", "latest_checkpoint", "main", "parse_objective", "TeacherPairs", "distill_terms",
    "likelihood_terms", "generate", "invert", "log_likelihood", "Trainer", "checkpoint_root", "list_checkpoints",
]


def __getattr__(name):
    # ``main`` comes from the ``train`` module on first use: importing that module here would make
    # ``python -m diffusers_linearizer.training.train`` run a second copy of it.
    if name == "main":
        from .train import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

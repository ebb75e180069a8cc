"""The sample-quality protocol of every page: one feature extractor chooses, another one reports.

A number chosen in some features and reported in the same features flatters the choice (a sampling
temperature picked by the lowest FD in a classifier's features lowers that FD more than it improves the
samples). So every page measures samples twice:

* **selection** — the project's classifier (``fmnist_classifier.py``, seed 0): every choice a page or a
  shipping script makes (temperature, guidance scale, checkpoint, objective weights, mixture size) reads its
  numbers, and only its numbers;
* **report** — the judge (``fmnist_judge.py``, another architecture and training seed): it never chooses;
  it only reports, beside the selection number.

Each is the Fréchet distance of the samples' features to the features of the 10,000 Fashion-MNIST test
images (``frechet_distance``; lower is better). Precision and recall (Kynkäänniemi et al., 2019), in the
reporting features against the first 2,000 test images, tell narrow samples (high precision, low recall)
from blurred or broken ones (low precision): a sample is *precise* when it falls inside the ball around
some real image reaching that image's k-th nearest real neighbour (k = 3); a real image is *recalled* when
it falls inside such a ball of some sample. Class accuracy of conditional samples is reported by both
extractors.

    from evaluation import Evaluator
    ev = Evaluator()
    ev.evaluate(images)   # {"fd_select", "fd_report", "precision", "recall"}
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from common import BENCH  # noqa: F401  (common first: it puts the checkout's package on the path)
from fmnist_classifier import accuracy, extract_features, frechet_distance, gaussian_stats, load_classifier, load_split
from fmnist_judge import load_judge
from torch import Tensor

__all__ = ["Evaluator", "precision_recall", "PROTOCOL", "PR_REAL", "PR_K"]

PR_REAL = 2000  # real images the precision/recall manifolds are built from
PR_K = 3

#: one paragraph for the pages that use the protocol
PROTOCOL = (
    "Sample quality is measured in two feature extractors that never meet (`benchmarks/evaluation.py`): "
    "**FD (select)** — Fréchet distance to the 10,000 test images in the features of the project's classifier "
    "(`benchmarks/fmnist_classifier.py`), the only numbers any choice on this page (temperature, guidance, "
    "checkpoint, weights) was made with; **FD (report)** — the same distance in the features of a second extractor "
    "of another architecture and training seed (`benchmarks/fmnist_judge.py`), used for nothing but this report. "
    f"**Precision / recall** (Kynkäänniemi et al. 2019, k = {PR_K}, in the reporting features against {PR_REAL:,} test "
    "images): the share of samples that land on the data's manifold, and the share of the data the samples cover — "
    "narrow samples have high precision and low recall, blurred or broken ones low precision. Lower FD is better; "
    "the two FDs have different scales and are compared only within a column."
)


def precision_recall(real: Tensor, fake: Tensor, k: int = PR_K):
    """Improved precision and recall of ``fake`` against ``real`` features (Euclidean k-NN balls, module docstring)."""
    def radii(f):
        return torch.cdist(f, f).kthvalue(k + 1, dim=1).values  # the 0-th neighbour is the point itself

    r_real, r_fake = radii(real), radii(fake)
    d = torch.cdist(fake, real)
    precision = float((d <= r_real[None, :]).any(1).double().mean())
    recall = float((d.T <= r_fake[None, :]).any(1).double().mean())
    return precision, recall


class Evaluator:
    """Both extractors and their statistics of the test images, loaded once.

    Args:
        test: test images ``(N, 1, 32, 32)`` in ``[0, 1]`` (default: the Fashion-MNIST test split).
        labels: their labels (for :meth:`class_accuracy`; default: the split's).
    """

    def __init__(self, test: Optional[Tensor] = None, labels: Optional[Tensor] = None):
        if test is None:
            test, labels = load_split("test")
        self.select, self.report = load_classifier(), load_judge()
        self.test, self.labels = test, labels
        self.ref_select = gaussian_stats(extract_features(self.select, test))
        report_feats = extract_features(self.report, test)
        self.ref_report = gaussian_stats(report_feats)
        self.real_report = report_feats[:PR_REAL]

    @staticmethod
    def _prepare(images: Tensor) -> Tensor:
        return images.float().clamp(0, 1)

    def fd_select(self, images: Tensor) -> float:
        """FD in the selection features: the number choices are made with."""
        feats = extract_features(self.select, self._prepare(images))
        return frechet_distance(*gaussian_stats(feats), *self.ref_select)

    def evaluate(self, images: Tensor) -> Dict[str, float]:
        """``fd_select``, ``fd_report``, ``precision`` and ``recall`` of ``images`` ``(N, 1, 32, 32)``."""
        images = self._prepare(images)
        feats = extract_features(self.report, images)
        n = min(PR_REAL, images.shape[0])
        precision, recall = precision_recall(self.real_report[:n], feats[:n])
        return {"fd_select": self.fd_select(images),
                "fd_report": frechet_distance(*gaussian_stats(feats), *self.ref_report),
                "precision": precision, "recall": recall}

    def row(self, images: Tensor, suffix: str = "") -> Dict[str, float]:
        """:meth:`evaluate` under the keys the pages store: ``fd`` (the selection FD, what every choice reads),
        ``fd_report``, ``precision``, ``recall``, each with ``suffix``."""
        q = self.evaluate(images)
        return {f"fd{suffix}": q["fd_select"], f"fd_report{suffix}": q["fd_report"], f"precision{suffix}": q["precision"],
                f"recall{suffix}": q["recall"]}

    def class_accuracy(self, images: Tensor, labels: Tensor) -> Dict[str, float]:
        """The share of ``images`` each extractor classifies as its requested ``labels``."""
        images = self._prepare(images)
        return {"accuracy_select": accuracy(self.select, images, labels),
                "accuracy_report": accuracy(self.report, images, labels)}

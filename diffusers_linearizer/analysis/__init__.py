"""Analysis tools for a trained Linearizer (``docs/analysis.md``, derivations in ``docs/math.md`` §A1–§A4).

Its own layer: above ``models`` and ``schedulers``, below ``pipelines`` (it imports operators, models and
schedulers only; pipelines, the command line and the demo import it).

* :func:`local_components` — top-k singular triplets of the Jacobian of the one-step generator (or of
  ``g⁻¹``) at a point, matrix-free; :func:`spectral_norm` — a local Lipschitz constant by power iteration.
* :func:`inverse_stability` — round-trip errors in float32/float64 on data and out-of-distribution families,
  local Lipschitz constants, ``cond(B)``, ``‖B†‖``, the error-amplification bound of inversion, a flag.
* :func:`typicality` — bits/dim of an image and the χ² statistic of its recovered noise; :func:`auroc`.
* :func:`fiber_report` — rank lists and stratum dimensions of the factored cores; :func:`rank_collapse_line`.
* :func:`analyze` — all of them on one model, written as a report page with pictures.
"""

from .common import MAPS, collapsed_operator
from .fibers import (FiberReport, fiber_report, numerical_stratum_dimension, rank_collapse_check, rank_list,
                     stratum_dimension)
from .local_components import LocalComponents, local_components, spectral_norm
from .stability import StabilityReport, inverse_stability, ood_families, operator_stability
from .typicality import NoiseTypicality, Typicality, auroc, noise_typicality, typicality

__all__ = ["MAPS", "collapsed_operator", "LocalComponents", "local_components", "spectral_norm", "StabilityReport",
           "inverse_stability", "ood_families", "operator_stability", "NoiseTypicality", "Typicality", "auroc",
           "noise_typicality", "typicality", "FiberReport", "fiber_report", "numerical_stratum_dimension",
           "rank_collapse_check", "rank_list", "stratum_dimension", "analyze"]


def analyze(*args, **kwargs):
    """:func:`diffusers_linearizer.analysis.report.analyze` (imported on first use)."""
    from .report import analyze as _analyze

    return _analyze(*args, **kwargs)

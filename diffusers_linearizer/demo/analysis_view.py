"""What the demo shows from :mod:`diffusers_linearizer.analysis`: local edit directions and the typicality of an
inversion (plain Python, no gradio; :class:`~.callbacks.LinearizerDemo` calls these).

* **Local directions at this image** (Edit tab): the top right singular vectors ``vᵢ`` of the Jacobian of
  ``g_x⁻¹`` at ``z = g_x(x)`` — the latent directions that change *this* image most, per unit, with
  ``σᵢ`` the change — instead of the core's global singular vectors, which are the same for every image.
* **Typicality** (Invert tab): every image inverts at round-off, so the message also says whether the
  recovered noise is a plausible draw of the sampling noise, with the image's bits/dim.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from ..analysis import local_components

#: the Edit tab's choices of direction set: label → key
DIRECTION_SETS = {"core's singular vectors (global)": "core", "local directions at this image": "local"}


def direction_set(choice) -> str:
    """``"core"`` or ``"local"`` for a choice of the Edit tab (a label, a key or ``None`` = core)."""
    if choice is None:
        return "core"
    if choice in DIRECTION_SETS.values():
        return choice
    if choice in DIRECTION_SETS:
        return DIRECTION_SETS[choice]
    from .images import DemoError

    raise DemoError(f"Unknown direction set {choice!r}; choose one of: {', '.join(DIRECTION_SETS)}.")


def local_directions(model, z: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(V, σ)``: the top-``k`` right singular vectors ``(k, D)`` (float64) of ``J_{g_x⁻¹}(z)`` and their singular
    values, by :func:`~diffusers_linearizer.analysis.local_components` (matrix-free)."""
    lc = local_components(model, z.to(device=model.device), k, map="decoder", space="x", iterations=4, oversample=2)
    return lc.input_directions.flatten(1).double(), lc.singular_values


def typicality_note(out) -> str:
    """A sentence on the typicality fields of a :class:`LinearizerInversionPipelineOutput` (first image)."""
    if getattr(out, "typical", None) is None:
        return ""
    bpd, z, p = float(out.bits_per_dim[0]), float(out.noise_chi2_z[0]), float(out.noise_p_value[0])
    std = float(out.noise.double().flatten(1)[0].std())
    bits = "" if math.isnan(bpd) else f", {bpd:.2f} bits/dim"
    if bool(out.typical[0]):
        return (f" **Typical:** the recovered noise (std {std:.2f}) is a plausible draw of the sampling noise "
                f"(χ² z = {z:+.1f}, p = {p:.2g}{bits}).")
    return (f" ⚠️ **Not typical:** the recovered noise (std {std:.2f}) is far from anything the model samples "
            f"(χ² z = {z:+.3g}, p = {p:.2g}{bits}): the model did not learn images like this one; the exact "
            "reconstruction only shows that B is invertible.")

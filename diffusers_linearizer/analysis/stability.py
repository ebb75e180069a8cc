r"""Inverse stability: how well ``g`` and the one-step map invert, on data and off it (``docs/math.md`` §A2).

An invertible network is invertible in exact arithmetic; in floating point its inverse can *explode* (its
Lipschitz constant is huge, so round-off in ``g(x)`` comes back enlarged) on and off the data. For the one-step
inversion ``ε = g_y⁻¹(B† g_x(x))`` a perturbation ``δx`` of the image reaches the noise as, to first order,

    ‖δε‖ ≤ ‖J_{g_y⁻¹}(z₀)‖₂ · ‖B†‖₂ · ‖J_{g_x}(x)‖₂ · ‖δx‖ =: κ_inv(x)·‖δx‖,     z₀ = B† g_x(x),

and ``‖B†‖₂ = 1/σ_min(B)``, ``cond(B) = σ_max/σ_min`` come from the operator's exact small SVD. Measured here:

* round trips ``‖g⁻¹(g(x)) − x‖/‖x‖`` (``‖x‖`` floored at ``10⁻³·√D``) of ``g_x`` and of the one-step map (image → noise → image, through
  ``B B†``), in float32 and float64, per input family (:func:`ood_families`: data, Gaussian and uniform noise,
  constant, scaled and inverted images);
* the local Lipschitz constants above by power iteration (:func:`~.local_components.spectral_norm`), and
  ``‖J_{g_x⁻¹}(g_x(x))‖₂``, the inverse's own;
* ``κ_inv(x)`` and the error it predicts for float32 round-off, ``κ_inv·u₃₂·‖x‖``, next to the measured
  ``‖ε₃₂ − ε₆₄‖``;
* ``explodes``: a family with a non-finite result or a float32 round trip above ``tol``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .common import working_model
from .local_components import spectral_norm

__all__ = ["ood_families", "operator_stability", "inverse_stability", "StabilityReport", "EXPLODE_TOL"]

#: a float32 relative round-trip error above which an inverse is said to explode
EXPLODE_TOL = 1e-3


def ood_families(images: Tensor, seed: int = 0) -> Dict[str, Tensor]:
    """The input families of the stability study for a batch of data ``images`` in ``[0, 1]`` (``N`` each):
    the data, Gaussian noise ``N(0.5, 0.25²)``, uniform noise on ``[0, 1]``, constant images (levels spread over
    ``[0, 1]``), the data scaled by 4 and by 0.25, and inverted data ``1 − x``."""
    gen = torch.Generator().manual_seed(int(seed))
    n = images.shape[0]
    x = images.detach().double().cpu()
    levels = torch.linspace(0.0, 1.0, n, dtype=torch.float64).view(n, 1, 1, 1)
    return {
        "data": x,
        "gaussian noise": 0.5 + 0.25 * torch.randn(x.shape, generator=gen, dtype=torch.float64),
        "uniform noise": torch.rand(x.shape, generator=gen, dtype=torch.float64),
        "constant": levels.expand_as(x).clone(),
        "scaled ×4": 4.0 * x,
        "scaled ×0.25": 0.25 * x,
        "inverted": 1.0 - x,
    }


def operator_stability(B) -> Dict[str, float]:
    """``σ_max(B)``, ``σ_min(B)``, ``cond(B) = σ_max/σ_min`` and ``‖B†‖₂`` from the operator's own SVD, cond and
    pinv (exact small-matrix algebra, float64)."""
    B64 = B.to(dtype=torch.float64)
    smax = float(B64.svd(1)[1][0])
    pinv_norm = float(B64.pinv().svd(1)[1][0])
    return {"sigma_max": smax, "sigma_min": (1.0 / pinv_norm) if pinv_norm > 0 else 0.0,
            "cond": float(B64.cond()), "pinv_norm": pinv_norm}


def _rel(a: Tensor, b: Tensor) -> Tensor:
    """``‖a − b‖ / max(‖b‖, 10⁻³·√D)`` per sample (float64; inf for non-finite ``a``): relative, except that an
    all-zero (or nearly zero) ``b`` is measured against an image of RMS value 10⁻³."""
    b = b.double().flatten(1)
    floor = 1e-3 * math.sqrt(b.shape[1])
    err = (a.double().flatten(1) - b).norm(dim=1) / b.norm(dim=1).clamp_min(floor)
    return torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))


@dataclass
class StabilityReport:
    """What :func:`inverse_stability` measured.

    Args:
        operator: ``sigma_max``, ``sigma_min``, ``cond``, ``pinv_norm`` of ``B``.
        families: family name → ``{quantity: value}``: ``g_round_trip_fp32/fp64`` and
            ``one_step_round_trip_fp32/fp64`` (max over the family), ``noise_fp32_vs_fp64`` (max relative),
            ``lip_g``, ``lip_g_inv``, ``lip_gy_inv`` (max over the probed images), ``kappa_inv``,
            ``predicted_noise_error_fp32`` and ``measured_noise_error_fp32`` (absolute, max), ``explodes``.
        noise_round_trip: ``{"fp32": …, "fp64": …}`` max ``‖ε̂ − ε‖/‖ε‖`` of noise → image → noise.
        exploding: names of the families flagged.
    """

    operator: Dict[str, float]
    families: Dict[str, Dict[str, float]]
    noise_round_trip: Dict[str, float]
    exploding: List[str] = field(default_factory=list)


def _one_step(model, B, Bp, x: Tensor):
    """``(g_x⁻¹(g_x(x)), ε = g_y⁻¹(B† g_x(x)), x_rec = g_x⁻¹(B B† g_x(x)), z₀)`` in the model's dtype; ``B`` and
    ``Bp = B†`` applied in float64."""
    z1 = model.apply_g(x, "x")
    g_rt = model.apply_g(z1, "x", inverse=True)
    z0 = Bp.apply_images(z1.double()).to(x.dtype)
    eps = model.apply_g(z0, "y", inverse=True)
    x_rec = model.apply_g(B.apply_images(Bp.apply_images(z1.double())).to(x.dtype), "x", inverse=True)
    return g_rt, eps, x_rec, z0


def inverse_stability(model, B, images: Tensor, families: Optional[Dict[str, Tensor]] = None,
                      lipschitz_points: int = 2, power_iterations: int = 20, tol: float = EXPLODE_TOL,
                      seed: int = 0, lipschitz_families: Optional[Sequence[str]] = None) -> StabilityReport:
    r"""Round-trip errors (float32 and float64), local Lipschitz constants, ``cond(B)``, ``‖B†‖`` and the
    error-amplification bound ``κ_inv(x) = ‖J_{g_y⁻¹}(z₀)‖·‖B†‖·‖J_{g_x}(x)‖`` of inversion (module docstring).

    Args:
        model: the ``LinearizerModel`` (float32 and float64 copies are analysed; the model is not changed).
        B: the collapsed operator (:func:`~.common.collapsed_operator`).
        images: ``(N, C, H, W)`` data images in ``[0, 1]``, the base of :func:`ood_families`.
        families: name → ``(n, C, H, W)`` inputs, instead of :func:`ood_families` ``(images)``.
        lipschitz_points: images per family at which the Lipschitz constants are measured (power iteration).
        power_iterations: rounds of each power iteration.
        tol: the float32 round-trip error above which a family ``explodes``.
        lipschitz_families: the families whose Lipschitz constants are measured (default all; the others
            report NaN for them).

    Returns:
        :class:`StabilityReport`.
    """
    model.check_sample(images, "images")
    families = ood_families(images, seed) if families is None else families
    for name, x in families.items():
        model.check_sample(x, f"family {name!r}")
    m32 = working_model(model, torch.float32)
    m64 = working_model(model, torch.float64)
    B64 = B.to(dtype=torch.float64)
    B64p = B64.pinv()
    op = operator_stability(B64)
    u32 = torch.finfo(torch.float32).eps / 2
    out: Dict[str, Dict[str, float]] = {}
    with torch.no_grad():
        for name, x in families.items():
            row: Dict[str, float] = {}
            results = {}
            for tag, m in (("fp32", m32), ("fp64", m64)):
                xi = x.to(device=m.device, dtype=m.dtype)
                g_rt, eps, x_rec, z0 = _one_step(m, B64, B64p, xi)
                row[f"g_round_trip_{tag}"] = float(_rel(g_rt, xi).max())
                row[f"one_step_round_trip_{tag}"] = float(_rel(x_rec, xi).max())
                results[tag] = (eps, z0)
            eps32, eps64 = results["fp32"][0].double().cpu(), results["fp64"][0].cpu()
            abs_err = (eps32 - eps64).flatten(1).norm(dim=1)
            abs_err = torch.where(torch.isfinite(abs_err), abs_err, torch.full_like(abs_err, math.inf))
            row["noise_fp32_vs_fp64"] = float(_rel(eps32, eps64).max())
            lips = {"lip_g": 0.0, "lip_g_inv": 0.0, "lip_gy_inv": 0.0, "kappa_inv": 0.0,
                    "predicted_noise_error_fp32": 0.0, "measured_noise_error_fp32": 0.0}
            z0_64 = results["fp64"][1]
            probe = lipschitz_families is None or name in lipschitz_families
            if not probe:
                lips = {key: math.nan for key in lips}
            for i in range(min(lipschitz_points, x.shape[0]) if probe else 0):
                xi = x[i:i + 1].to(device=m32.device, dtype=torch.float32)
                z0i = z0_64[i:i + 1].to(device=m32.device, dtype=torch.float32)
                if not bool(torch.isfinite(z0i).all()):
                    lips.update(lip_gy_inv=math.inf, kappa_inv=math.inf)
                    continue
                # Lipschitz constants in float32 (σ₁ to ~1e-6 relative; float64 convolutions are slow on CPUs)
                kw = dict(iterations=power_iterations, seed=seed)
                l_g = spectral_norm(m32, xi, map="encoder", space="x", **kw)
                z1 = m32.apply_g(xi, "x")
                l_ginv = spectral_norm(m32, z1, map="decoder", space="x", **kw)
                l_gyinv = spectral_norm(m32, z0i, map="decoder", space="y", **kw)
                kappa = l_gyinv * op["pinv_norm"] * l_g
                lips["lip_g"] = max(lips["lip_g"], l_g)
                lips["lip_g_inv"] = max(lips["lip_g_inv"], l_ginv)
                lips["lip_gy_inv"] = max(lips["lip_gy_inv"], l_gyinv)
                lips["kappa_inv"] = max(lips["kappa_inv"], kappa)
                lips["predicted_noise_error_fp32"] = max(lips["predicted_noise_error_fp32"],
                                                         kappa * u32 * float(xi.double().norm()))
                lips["measured_noise_error_fp32"] = max(lips["measured_noise_error_fp32"], float(abs_err[i]))
            row.update(lips)
            finite = all(math.isfinite(row[k]) for k in ("g_round_trip_fp32", "one_step_round_trip_fp32"))
            row["explodes"] = float(not finite or row["g_round_trip_fp32"] > tol or row["one_step_round_trip_fp32"] > tol)
            out[name] = row
        gen = torch.Generator().manual_seed(int(seed) + 1)
        noise = torch.randn((images.shape[0], *model.sample_shape), generator=gen, dtype=torch.float64)
        noise_rt = {}
        for tag, m in (("fp32", m32), ("fp64", m64)):
            e = noise.to(m.dtype)
            x = m.apply_g(B64.apply_images(m.apply_g(e, "y").double()).to(m.dtype), "x", inverse=True)
            _, e_hat, _, _ = _one_step(m, B64, B64p, x)
            noise_rt[tag] = float(_rel(e_hat, e).max())
    return StabilityReport(operator=op, families=out, noise_round_trip=noise_rt,
                           exploding=[name for name, row in out.items() if row["explodes"]])

"""``analyze``: every analysis tool on one model, written as a report page (markdown, JSON, PNG pictures).

What ``diffusers-linearizer analyze MODEL -o DIR`` writes: ``DIR/report.md`` (tables of every quantity with
the seconds it took), ``DIR/report.json`` (the same numbers) and ``DIR/local_components.png`` (local
directions next to the core's global singular directions). Takes a pipeline-like object with ``linearizer``
and ``scheduler`` (the analysis layer does not import the pipelines).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, Optional

import torch

from ..atomic import write_json_atomic, write_text_atomic
from ..image_grid import make_grid
from ..images import save_image
from .common import collapsed_operator, evaluating
from .fibers import fiber_report
from .local_components import local_components
from .stability import inverse_stability
from .typicality import auroc, typicality

__all__ = ["analyze", "model_samples", "direction_pictures"]


def model_samples(model, B, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` of the model's own one-step samples ``g_x⁻¹(B g_y(τ·ε))`` (float32, on the CPU): the data of a report
    when no images are given."""
    gen = torch.Generator().manual_seed(int(seed))
    tau = model.config.sampling_temperature
    eps = torch.randn((n, *model.sample_shape), generator=gen).to(device=model.device, dtype=model.dtype)
    with evaluating(model), torch.no_grad():
        x = model.apply_g(B.apply_images(model.apply_g(eps * tau, "y")), "x", inverse=True)
    return x.float().cpu()


def direction_pictures(directions: torch.Tensor) -> torch.Tensor:
    """Signed unit directions ``(k, C, H, W)`` as images in ``[0, 1]``: 0.5 is zero, each scaled by its own max."""
    d = directions.double()
    peak = d.flatten(1).abs().max(1).values.clamp_min(1e-300).view(-1, 1, 1, 1)
    return (0.5 + 0.5 * d / peak).float()


def _timed(costs: Dict[str, float], name: str, fn):
    start = time.perf_counter()
    out = fn()
    costs[name] = round(time.perf_counter() - start, 3)
    return out


def _f(x: float) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def analyze(pipe, out_dir: Optional[str] = None, num_inference_steps: int = 100, solver: Optional[str] = None,
            k: int = 4, num_images: int = 8, condition=None, seed: int = 0, lipschitz_points: int = 1,
            power_iterations: int = 5, iterations: int = 3, oversample: int = 2, images=None, labels=None,
            data_name: str = "the images given", lipschitz_families=("data", "gaussian noise", "inverted")) -> Dict[str, Any]:
    """Run every analysis tool on ``pipe``'s model and (with ``out_dir``) write the report page.

    Args:
        pipe: an object with ``linearizer`` (a ``LinearizerModel``) and ``scheduler`` (a ``LinearizerScheduler``).
        out_dir: the folder to write ``report.md``, ``report.json`` and ``local_components.png`` to (created).
        num_inference_steps / solver: the run whose ``B`` is analysed.
        k: local components and global directions shown.
        num_images: data images (and images per out-of-distribution family).
        condition: a conditional model's class id / embedding for ``B(c)`` (default: class 0 or the zero
            embedding); typicality uses each test image's own label when known.
        lipschitz_points / power_iterations / lipschitz_families: images per family, rounds and families of the
            Lipschitz power iterations (``None``: every family).
        iterations / oversample: rounds and extra vectors of the local-component subspace iterations.
        images / labels / data_name: ``(N, C, H, W)`` data images in ``[0, 1]`` (default: ``num_images`` of the
            model's own samples), their class ids (class models: typicality under each image's class) and what
            they are, for the page. (The command line passes Fashion-MNIST test images when installed.)

    Returns:
        The report as a dict (what ``report.json`` holds).
    """
    model = pipe.linearizer
    scheduler = pipe.scheduler
    costs: Dict[str, float] = {}
    start = time.perf_counter()
    if model.conditioning is not None and condition is None:
        condition = 0 if model.conditioning == "class" else torch.zeros(model.config.condition_dim)
    B = _timed(costs, "collapse B", lambda: collapsed_operator(model, scheduler, num_inference_steps, solver, condition))
    if images is None:
        images, labels, source = model_samples(model, B, num_images, seed), None, "the model's own one-step samples"
    else:
        model.check_sample(images, "images")
        source = data_name
        labels = None if labels is None else torch.as_tensor(labels)
    images = images.float()
    report: Dict[str, Any] = {"model": {k_: v for k_, v in model.config.items() if not k_.startswith("_")},
                              "num_inference_steps": num_inference_steps, "solver": solver or scheduler.config.solver,
                              "data": source, "num_images": int(images.shape[0]), "costs_s": costs}
    if model.conditioning is not None:
        report["condition"] = condition if isinstance(condition, int) else "embedding"

    # 1. local components at a noise point and at the latent of a data image, next to the core's global SVD
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn((1, *model.sample_shape), generator=gen)
    k = min(k, model.latent_dim)
    lc_gen = _timed(costs, "local_components (generator)", lambda: local_components(model, eps, k, B=B, seed=seed,
                                                                      iterations=iterations, oversample=oversample))
    with evaluating(model), torch.no_grad():
        z = model.apply_g(images[:1].to(device=model.device, dtype=model.dtype), "x")
    lc_dec = _timed(costs, "local_components (g_x⁻¹ at a data latent)",
                    lambda: local_components(model, z, k, map="decoder", space="x", seed=seed,
                                             iterations=iterations, oversample=oversample))
    t_core = 0.5 if model.time_dependent else None
    core_op = model.core_operator(t_core, dtype=torch.float64) if model.conditioning is None else \
        model.core.operators([t_core if t_core is not None else 0.0], dtype=torch.float64, condition=condition)[0]
    _, s_core, v_core = _timed(costs, "global SVD of the core", lambda: core_op.svd(k))
    overlap = (lc_dec.input_directions.flatten(1).double() @ v_core.double()).abs()
    report["local_components"] = {
        "generator_singular_values": lc_gen.singular_values.tolist(), "generator_residuals": lc_gen.residuals.tolist(),
        "generator_iterations": lc_gen.iterations, "decoder_singular_values": lc_dec.singular_values.tolist(),
        "decoder_residuals": lc_dec.residuals.tolist(), "core_singular_values": s_core.double().tolist(),
        "core_time": t_core, "max_overlap_local_vs_global": overlap.max(1).values.tolist()}
    # pictures: the generator's image-side directions, g_x⁻¹'s, and the core's right vectors pushed through J_{g_x⁻¹}(z)
    with evaluating(model), torch.no_grad():
        zs = z.expand(k, *model.sample_shape).contiguous()
        tangents = v_core.T.reshape(k, *model.sample_shape).to(device=model.device, dtype=model.dtype)
        _, pushed = torch.func.jvp(lambda u: model.apply_g(u, "x", inverse=True), (zs,), (tangents,))
    rows = torch.cat([direction_pictures(lc_gen.output_directions), direction_pictures(lc_dec.output_directions),
                      direction_pictures(pushed.cpu())])

    # 2. inverse stability
    stab = _timed(costs, "inverse stability", lambda: inverse_stability(
        model, B, images, lipschitz_points=lipschitz_points, power_iterations=power_iterations, seed=seed,
        lipschitz_families=lipschitz_families))
    report["stability"] = {"operator": stab.operator, "families": stab.families,
                           "noise_round_trip": stab.noise_round_trip, "exploding": stab.exploding}

    # 3. typicality on data and on the out-of-distribution families
    from .stability import ood_families

    def typ_all():
        out = {}
        for name, x in ood_families(images, seed).items():
            x = x.float()
            if labels is not None and model.conditioning == "class" and name in ("data", "inverted", "scaled ×4",
                                                                                 "scaled ×0.25"):
                parts = [(typicality(model, collapsed_operator(model, scheduler, num_inference_steps, solver, int(c)),
                                     x[labels == c]), labels == c) for c in labels.unique().tolist()]
                bpd = torch.empty(x.shape[0], dtype=torch.float64)
                zz = torch.empty(x.shape[0], dtype=torch.float64)
                typ = torch.empty(x.shape[0], dtype=torch.bool)
                for t, mask in parts:
                    bpd[mask], zz[mask], typ[mask] = t.bits_per_dim, t.z_score, t.typical
            else:
                t = typicality(model, B, x)
                bpd, zz, typ = t.bits_per_dim, t.z_score, t.typical
            out[name] = {"bits_per_dim": bpd, "z": zz, "typical": typ}
        return out

    typ = _timed(costs, "typicality", typ_all)
    data = typ["data"]
    report["typicality"] = {name: {
        "bits_per_dim_median": float(v["bits_per_dim"].median()), "z_median": float(v["z"].median()),
        "typical_fraction": float(v["typical"].double().mean()),
        "auroc_z": None if name == "data" else auroc(v["z"], data["z"]),
        "auroc_bpd": None if name == "data" else auroc(v["bits_per_dim"], data["bits_per_dim"])}
        for name, v in typ.items()}

    # 4. fibers of the core
    try:
        fib = _timed(costs, "fiber report", lambda: fiber_report(model.core, condition=condition))
        report["fibers"] = {"form": fib.form, "dims": list(fib.dims), "times": fib.times,
                            "rank_lists": fib.rank_lists, "stratum_dimensions": fib.stratum_dimensions,
                            "top_dimension": fib.top_dimension, "effective_ranks": fib.effective_ranks,
                            "nominal_rank": fib.nominal_rank}
    except ValueError as err:
        report["fibers"] = {"error": str(err)}
    costs["total"] = round(time.perf_counter() - start, 3)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        save_image(make_grid(rows, nrow=k), os.path.join(out_dir, "local_components.png"))
        write_json_atomic(os.path.join(out_dir, "report.json"), report)
        write_text_atomic(os.path.join(out_dir, "report.md"), render_markdown(report, "local_components.png"))
    return report


def render_markdown(report: Dict[str, Any], picture: Optional[str] = None) -> str:
    """The report page of :func:`analyze`'s dict."""
    r = report
    cfg = r["model"]
    lines = [f"# Analysis of a Linearizer ({cfg['in_channels']}×{cfg['sample_size']}×{cfg['sample_size']}, core "
             f"`{cfg['core_type']}`)", "",
             f"B: {r['num_inference_steps']}-point `{r['solver']}` run. Data: {r['data']} ({r['num_images']}).", ""]
    lc = r["local_components"]
    lines += ["## 1. Local components", "",
              "Top singular values of the Jacobian of the one-step generator at a noise point, of g_x⁻¹ at the latent "
              "of a data image, and of the core (its global SVD" + (f", t = {lc['core_time']}" if lc["core_time"] is
                                                                   not None else "") + ").", "",
              "| | σ₁ … σ_k | max residual |", "|---|---|---|",
              f"| generator | {', '.join(_f(s) for s in lc['generator_singular_values'])} | "
              f"{_f(max(lc['generator_residuals']))} |",
              f"| g_x⁻¹ at a data latent | {', '.join(_f(s) for s in lc['decoder_singular_values'])} | "
              f"{_f(max(lc['decoder_residuals']))} |",
              f"| core A (global) | {', '.join(_f(s) for s in lc['core_singular_values'])} | exact |", "",
              "Largest |⟨v_local, v_global⟩| of each local latent direction of g_x⁻¹ with the core's right singular "
              f"vectors: {', '.join(_f(o) for o in lc['max_overlap_local_vs_global'])}.", ""]
    if picture:
        lines += [f"![local components]({picture})", "",
                  "Rows: the generator's image-side directions uᵢ; g_x⁻¹'s; the core's right singular vectors pushed "
                  "through J_{g_x⁻¹} at the same image (grey = 0).", ""]
    st = r["stability"]
    op = st["operator"]
    lines += ["## 2. Inverse stability", "",
              f"cond(B) = {_f(op['cond'])}, ‖B‖ = {_f(op['sigma_max'])}, ‖B†‖ = {_f(op['pinv_norm'])}. Noise → image → "
              f"noise round trip: {_f(st['noise_round_trip']['fp32'])} (float32), {_f(st['noise_round_trip']['fp64'])} "
              "(float64).", "",
              "| family | g_x round trip fp32 / fp64 | one-step round trip fp32 / fp64 | ‖J_g‖ | ‖J_{g⁻¹}‖ | "
              "κ_inv | predicted / measured fp32 noise error | explodes |", "|---|---|---|---|---|---|---|---|"]
    for name, f in st["families"].items():
        lines.append(f"| {name} | {_f(f['g_round_trip_fp32'])} / {_f(f['g_round_trip_fp64'])} | "
                     f"{_f(f['one_step_round_trip_fp32'])} / {_f(f['one_step_round_trip_fp64'])} | {_f(f['lip_g'])} | "
                     f"{_f(f['lip_g_inv'])} | {_f(f['kappa_inv'])} | {_f(f['predicted_noise_error_fp32'])} / "
                     f"{_f(f['measured_noise_error_fp32'])} | {_f(bool(f['explodes']))} |")
    lines += ["", "## 3. Typicality of an inversion", "",
              "| family | median bits/dim | median χ² z | typical | AUROC (z) | AUROC (bits/dim) |",
              "|---|---|---|---|---|---|"]
    for name, t in r["typicality"].items():
        lines.append(f"| {name} | {_f(t['bits_per_dim_median'])} | {_f(t['z_median'])} | "
                     f"{t['typical_fraction']:.0%} | {_f(t['auroc_z'])} | {_f(t['auroc_bpd'])} |")
    fb = r["fibers"]
    lines += ["", "## 4. Fibers of the core", ""]
    if "error" in fb:
        lines.append(fb["error"])
    else:
        lines += [f"Low-rank part {fb['form']}, layer sizes {fb['dims']}; generic stratum dimension "
                  f"{fb['top_dimension']}.", "", "| t | rank list r_ki | stratum dimension | effective rank (rtol 1e-3) |",
                  "|---|---|---|---|"]
        for t, ranks, dim, eff in zip(fb["times"], fb["rank_lists"], fb["stratum_dimensions"], fb["effective_ranks"]):
            lines.append(f"| {_f(t)} | {', '.join(f'{k}: {v}' for k, v in ranks.items())} | {dim} | "
                         f"{eff} of {fb['nominal_rank']} |")
    lines += ["", "## Costs (seconds)", "", "| step | s |", "|---|---|"]
    lines += [f"| {name} | {s:.2f} |" for name, s in r["costs_s"].items()]
    return "\n".join(lines) + "\n"

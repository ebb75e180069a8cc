"""The analysis tools against dense float64 computations (jacrev SVDs, dense pinv/cond, explicit Jacobian ranks)."""

import math

import pytest
import torch

from diffusers_linearizer import LinearizerModel, LinearizerScheduler
from diffusers_linearizer.analysis import (
    auroc, collapsed_operator, fiber_report, inverse_stability, local_components, noise_typicality,
    numerical_stratum_dimension, operator_stability, rank_collapse_check, rank_list, spectral_norm,
    stratum_dimension, typicality,
)
from diffusers_linearizer.analysis.common import model_map
from tests.utils import perturb_all


def tiny(core_type="lowrank", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(sample_size=4, in_channels=1, num_blocks=1, conditioner_channels=8, core_type=core_type, core_rank=4,
               core_hidden_dim=16, core_embedding_dim=8)
    cfg.update(kw)
    model = LinearizerModel(**cfg).double().eval()
    perturb_all(model, 0.2, seed)
    return model


@pytest.fixture(scope="module")
def model_and_B():
    model = tiny()
    return model, collapsed_operator(model, LinearizerScheduler(), 8)


def dense_jacobian(fn, point):
    shape = point.shape
    return torch.func.jacrev(lambda v: fn(v.view(shape)).flatten())(point.flatten())


@pytest.mark.parametrize("which", ["generator", "decoder"])
def test_local_components_match_dense_svd(model_and_B, which):
    model, B = model_and_B
    point = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    lc = local_components(model, point, 3, map=which, B=B, iterations=60, tol=1e-12)
    J = dense_jacobian(model_map(model, which, B=B), point)
    U, S, Vh = torch.linalg.svd(J)
    assert torch.allclose(lc.singular_values, S[:3], rtol=1e-8)
    assert float(lc.residuals.max()) < 1e-9
    for i in range(3):  # the dense singular values are distinct here, so the vectors agree up to sign
        assert abs(float(lc.input_directions[i].flatten() @ Vh[i])) == pytest.approx(1.0, abs=1e-7)
        assert abs(float(lc.output_directions[i].flatten() @ U[:, i])) == pytest.approx(1.0, abs=1e-7)


def test_spectral_norm_is_the_dense_largest_singular_value(model_and_B):
    model, _ = model_and_B
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dense = float(torch.linalg.matrix_norm(dense_jacobian(model_map(model, "encoder"), x), ord=2))
    assert spectral_norm(model, x, map="encoder", iterations=200, tol=1e-10) == pytest.approx(dense, rel=1e-6)


def test_local_components_refuse_bad_input(model_and_B):
    model, B = model_and_B
    point = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="between 1 and the dimension D = 16"):
        local_components(model, point, 17, B=B)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\)"):
        local_components(model, torch.zeros(1, 3, 4, 4), 2, B=B)
    with pytest.raises(ValueError, match="needs the collapsed operator B"):
        local_components(model, point, 2)
    with pytest.raises(ValueError, match="Unknown map"):
        local_components(model, point, 2, map="nope")


def test_operator_stability_matches_dense(model_and_B):
    _, B = model_and_B
    M = B.to_dense()
    s = torch.linalg.svdvals(M)
    op = operator_stability(B)
    assert op["sigma_max"] == pytest.approx(float(s[0]), rel=1e-10)
    assert op["cond"] == pytest.approx(float(s[0] / s[-1]), rel=1e-8)
    assert op["pinv_norm"] == pytest.approx(float(torch.linalg.matrix_norm(torch.linalg.pinv(M), ord=2)), rel=1e-8)


def test_inverse_stability_round_trips_and_bound(model_and_B):
    model, B = model_and_B
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    families = {"data": x, "overflow": 1e300 * x}  # beyond float32: the inverse cannot be trusted
    rep = inverse_stability(model, B, x, families=families, lipschitz_points=1, power_iterations=200)
    data = rep.families["data"]
    assert data["g_round_trip_fp64"] < 1e-12 and data["one_step_round_trip_fp64"] < 1e-10
    assert data["g_round_trip_fp32"] < 1e-4 and not data["explodes"]
    # the Lipschitz constants against dense Jacobians (power iteration in float32: ~1e-5 relative)
    xi = x[:1]
    J_g = dense_jacobian(model_map(model, "encoder"), xi)
    assert data["lip_g"] == pytest.approx(float(torch.linalg.matrix_norm(J_g, ord=2)), rel=1e-3)
    assert data["lip_g_inv"] == pytest.approx(float(torch.linalg.matrix_norm(torch.linalg.inv(J_g), ord=2)), rel=1e-3)
    # κ_inv bounds the dense Jacobian of the whole inversion map x ↦ g_y⁻¹(B⁻¹ g_x(x))
    J_inv = dense_jacobian(model_map(model, "inverse", B=B, temperature=1.0), xi)
    assert float(torch.linalg.matrix_norm(J_inv, ord=2)) <= data["kappa_inv"] * (1 + 1e-3)
    assert rep.noise_round_trip["fp64"] < 1e-10
    assert rep.exploding == ["overflow"]
    strict = inverse_stability(model, B, x, families={"data": x}, lipschitz_points=0, tol=1e-20)
    assert strict.exploding == ["data"]  # float32 round-off is above a tolerance of 1e-20


def test_noise_typicality_is_the_chi2_test():
    scipy_stats = pytest.importorskip("scipy.stats")
    noise = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.5, 1, 1.2, 1.5, 3.0]).view(-1, 1, 1, 1)
    t = noise_typicality(noise, temperature=1.0)
    s = noise.double().flatten(1).square().sum(1)
    assert torch.allclose(t.chi2, s)
    assert torch.allclose(t.z_score, (s - 64) / math.sqrt(128))
    assert torch.allclose(t.p_value, torch.as_tensor(scipy_stats.chi2.sf(s.numpy(), 64)), rtol=1e-8, atol=1e-300)
    assert t.typical.tolist() == (t.p_value >= 1e-3).tolist() and not t.typical[-1] and t.typical[1]
    assert torch.allclose(noise_typicality(2 * noise, temperature=2.0).chi2, s)


def test_typicality_bits_per_dim_is_the_dense_change_of_variables(model_and_B):
    model, B = model_and_B
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = typicality(model, B, x, temperature=1.0)
    inv = model_map(model, "inverse", B=B, temperature=1.0)
    for i in range(2):
        eps = inv(x[i:i + 1]).flatten()
        logdet = torch.linalg.slogdet(dense_jacobian(inv, x[i:i + 1])).logabsdet
        logp = -0.5 * eps.square().sum() - 8 * math.log(2 * math.pi) + logdet
        bpd = (-logp + 16 * math.log(256)) / (16 * math.log(2))
        assert float(t.bits_per_dim[i]) == pytest.approx(float(bpd), rel=1e-9)
    with pytest.raises(ValueError, match=r"Expected images of shape \(N, 1, 4, 4\)"):
        typicality(model, B, torch.rand(2, 1, 8, 8))


def test_auroc_counts_pairs():
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert auroc([1.0, 3.0], [2.0, 2.0]) == 0.5
    assert auroc([2.0], [2.0]) == 0.5
    assert auroc([float("nan")], [1e300]) == 1.0


# ---------------------------------------------------------------------------- fibers
def test_stratum_dimension_of_small_fibers_by_hand():
    # W₂W₁ = [θ₂][θ₁ θ₁'] = 0: the θ₂-axis (dim 1), the (θ₁, θ₁') plane (dim 2), the origin (dim 0)
    assert stratum_dimension((2, 1, 1), {(1, 0): 0, (2, 1): 1, (2, 0): 0}) == 1
    assert stratum_dimension((2, 1, 1), {(1, 0): 1, (2, 1): 0, (2, 0): 0}) == 2
    assert stratum_dimension((2, 1, 1), {(1, 0): 0, (2, 1): 0, (2, 0): 0}) == 0
    # θ₃θ₂θ₁ = 1: a surface; U Vᵀ of rank r in R^{D×D}: the GL(r) orbit, r²
    assert stratum_dimension((1, 1, 1, 1), {(k, i): 1 for k in range(1, 4) for i in range(k)}) == 2
    assert stratum_dimension((7, 3, 7), {(1, 0): 3, (2, 1): 3, (2, 0): 3}) == 9
    with pytest.raises(ValueError, match="impossible"):
        stratum_dimension((2, 1, 2), {(1, 0): 2, (2, 1): 1, (2, 0): 1})


@pytest.mark.parametrize("dims", [(5, 2, 5), (4, 3, 3, 4), (5, 3, 2, 4)])
@pytest.mark.parametrize("degenerate", [0, 1, 2])
def test_stratum_dimension_formula_equals_jacobian_ranks(dims, degenerate):
    gen = torch.Generator().manual_seed(10 * degenerate + len(dims))
    ws = [torch.randn(dims[j + 1], dims[j], generator=gen, dtype=torch.float64) for j in range(len(dims) - 1)]
    if degenerate >= 1:
        ws[0][0] = 0.0
        ws[0][1] = 2.0 * ws[0][-1]
    if degenerate == 2:
        ws[-1][:, -1] = 0.0
    ranks = rank_list(ws)
    dim, dof = numerical_stratum_dimension(ws)
    assert stratum_dimension(dims, ranks) == dim
    assert dof >= dim
    if degenerate == 0:  # the generic stratum: every motion on the fiber stays on it
        assert dof == dim


def test_fiber_report_of_cores():
    low = tiny("lowrank")
    rep = fiber_report(low, check=True)
    assert rep.dims == (16, 4, 16) and rep.stratum_dimensions == [16] and rep.top_dimension == 16
    assert rep.checks == [(16, 16, 16)]
    shared = tiny("shared_basis")
    rep = fiber_report(shared, ts=(0.1, 0.7), check=True)
    assert rep.dims == (16, 4, 4, 16) and len(rep.rank_lists) == 2
    assert all(formula == numerical for formula, numerical, _ in rep.checks)
    with pytest.raises(ValueError, match="no factors"):
        fiber_report(LinearizerModel(sample_size=4, in_channels=1, num_blocks=1, conditioner_channels=8,
                                     core_type="dense"))


def test_rank_collapse_is_caught():
    model = tiny("lowrank")
    line, seen = rank_collapse_check(model.core)
    assert "RANK COLLAPSE" not in line and seen["product"] == 4
    line, seen = rank_collapse_check(model.core, seen)
    assert "RANK COLLAPSE" not in line
    with torch.no_grad():
        model.core.U[:, 1:] = 0.0
    line, seen = rank_collapse_check(model.core, seen)
    assert "RANK COLLAPSE" in line and "product 4→1" in line


# ---------------------------------------------------------------------------- the inversion pipeline's fields
def test_inversion_output_carries_typicality():
    stats = pytest.importorskip("scipy.stats")
    from diffusers_linearizer import LinearizerInversionPipeline

    model = tiny().float()
    inv = LinearizerInversionPipeline(linearizer=model, scheduler=LinearizerScheduler())
    inv.set_progress_bar_config(disable=True)
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    out = inv(x, num_inference_steps=8)
    tau = model.config.sampling_temperature
    s = (out.noise.double() / tau).flatten(1).square().sum(1)
    assert torch.allclose(out.noise_p_value, torch.as_tensor(stats.chi2.sf(s.numpy(), 16)), rtol=1e-6, atol=1e-300)
    assert torch.allclose(out.noise_chi2_z, (s - 16) / math.sqrt(32), rtol=1e-6)
    assert out.typical.tolist() == (out.noise_p_value >= 1e-3).tolist()
    assert out.bits_per_dim.shape == (3,) and bool(torch.isfinite(out.bits_per_dim).all())
    assert len(inv(x, num_inference_steps=8, return_dict=False)) == 6
    assert inv(x, num_inference_steps=8, typicality=False).typical is None


def test_the_analysis_layer_imports_no_layer_above_it():
    """``analysis`` sits above models and schedulers and below pipelines (docs/design.md): no module of it imports
    the pipelines, the training code, the command line or the demo."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "diffusers_linearizer" / "analysis"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                assert node.module.split(".")[0] not in ("pipelines", "training", "cli", "cli_analysis", "demo"), \
                    f"{path.name} imports {node.module}"

"""Projection cores against dense float64 algebra: P² = P at rank r, the operator form, the straight-through
estimator against its definition, the range prior against torch's multivariate normal, f ∘ f = f."""

from __future__ import annotations

import pytest
import torch

from diffusers_linearizer.models.core_registry import CORES
from diffusers_linearizer.models.projection_cores import PROJECTION_FORMS, straight_through_mask

from .utils import tiny_model

FORMS = list(PROJECTION_FORMS)
D = 24


def _core(form, rank, seed=0):
    torch.manual_seed(seed)
    core = PROJECTION_FORMS[form](D, rank).double()
    with torch.no_grad():  # away from the symmetric initialisation, so the forms differ
        for p in core.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return core


def _dense_projection(core):
    """P from the parameters by its defining formula, with dense inverses (not the core's factors)."""
    if core.form == "orthogonal":
        Q, _ = torch.linalg.qr(core.weight.detach())
        return Q @ Q.T
    if core.form == "oblique":
        U, V = core.U.detach(), core.V.detach()
        return U @ torch.linalg.inv(V.T @ U) @ V.T
    M = core.basis.detach()
    mask = torch.zeros(D, dtype=M.dtype)
    mask[core.scores.detach().argsort(descending=True)[: core.rank]] = 1.0
    return M @ torch.diag(mask) @ torch.linalg.inv(M)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("rank", [1, 7, D - 1])
def test_every_form_is_a_projection_of_rank_r(form, rank):
    core = _core(form, rank)
    P = core.operator(dtype=torch.float64).to_dense()
    dense = _dense_projection(core)
    assert torch.allclose(P, dense, atol=1e-9)
    assert torch.allclose(dense @ dense, dense, atol=1e-9)
    assert int(torch.linalg.matrix_rank(dense)) == rank
    z = torch.randn(5, D, dtype=torch.float64)
    assert torch.allclose(core(z), z @ dense.T, atol=1e-9)  # the batched forward is the same map
    assert torch.allclose(core.operator().power(5).to_dense(), dense, atol=1e-8)  # algebra works unchanged
    Q = core.range_basis().double()
    assert torch.allclose(dense @ Q, Q, atol=1e-9)  # Q spans the range
    assert torch.allclose(core.distance(z), (z - z @ dense.T).norm(dim=1), atol=1e-9)
    if form == "orthogonal":
        assert torch.allclose(dense, dense.T, atol=1e-12)
        assert torch.allclose(core.operator().pinv().to_dense(), dense, atol=1e-8)  # P† = P
        S = core.operator().svd()[1]
        assert torch.allclose(S[:rank], torch.ones(rank, dtype=S.dtype), atol=1e-8)


def test_oblique_range_and_kernel():
    core = _core("oblique", 5)
    P = _dense_projection(core)
    U, V = core.U.detach(), core.V.detach()
    assert torch.allclose(P @ U, U, atol=1e-9)  # range span U
    perp = torch.linalg.svd(V.T, full_matrices=True).Vh[5:].T  # (span V)^⊥
    assert torch.allclose(P @ perp, torch.zeros_like(perp), atol=1e-9)


def test_straight_through_gradient_is_the_sigmoid_derivative():
    torch.manual_seed(1)
    core = _core("spectral", 6)
    z = torch.randn(4, D, dtype=torch.float64)
    target = torch.randn(4, D, dtype=torch.float64)
    loss = (core(z) - target).square().sum()
    (grad_scores,) = torch.autograd.grad(loss, core.scores)
    # independently: L as a function of a dense mask m at the hard mask, chained with σ'(s)
    M = core.basis.detach()
    hard = torch.zeros(D, dtype=torch.float64)
    hard[core.scores.detach().topk(6).indices] = 1.0
    m = hard.clone().requires_grad_(True)
    P = M @ torch.diag(m) @ torch.linalg.inv(M)
    (dm,) = torch.autograd.grad((z @ P.T - target).square().sum(), m)
    s = torch.sigmoid(core.scores.detach())
    assert torch.allclose(grad_scores, dm * s * (1 - s), atol=1e-9)
    mask = straight_through_mask(core.scores.detach(), 6)
    assert torch.allclose(mask, hard, atol=1e-15)  # its value is the hard mask


def _mixture_core(form, K, seed=0):
    torch.manual_seed(seed)
    core = PROJECTION_FORMS[form](D, 4, K).double()
    with torch.no_grad():
        for p in core.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return core


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("K", [1, 3])
def test_range_prior_is_the_density_it_states(form, K):
    core = _mixture_core(form, K)
    Q = core.range_basis().double().detach()
    C = core.prior_scale().detach().double()
    sigma2 = float(core.log_noise.detach().exp()) ** 2
    comp = torch.distributions.MultivariateNormal(core.prior_means.detach().double(), scale_tril=C)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=core.prior_logits.detach().double()), comp)
    perp = torch.linalg.qr(torch.cat([Q, torch.randn(D, D - 4, dtype=torch.float64)], 1)).Q[:, 4:]  # Q⊥
    z = torch.randn(6, D, dtype=torch.float64) * 2
    off = torch.distributions.MultivariateNormal(torch.zeros(D - 4, dtype=torch.float64),
                                                 sigma2 * torch.eye(D - 4, dtype=torch.float64))
    expected = mixture.log_prob(z @ Q) + off.log_prob(z @ perp)  # an orthonormal change of coordinates
    assert torch.allclose(core.log_prior(z).detach(), expected, atol=1e-8)


@pytest.mark.parametrize("form", FORMS)
def test_samples_lie_in_the_range_and_follow_the_mixture(form):
    core = _mixture_core(form, 3)
    P = _dense_projection(core)
    eps = torch.randn(20000, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z = core.sample(eps)
    assert torch.allclose(z @ P.T, z, atol=1e-8)  # every sample is a fixed point of P
    Q = core.range_basis().double().detach()
    y = z @ Q
    weights = torch.softmax(core.prior_logits.detach().double(), 0)
    means, C = core.prior_means.detach().double(), core.prior_scale().detach().double()
    mean = weights @ means  # the mixture's mean and covariance, by their formulas
    cov = sum(w * (Ck @ Ck.T + torch.outer(m - mean, m - mean)) for w, m, Ck in zip(weights, means, C))
    assert torch.allclose(y.mean(0), mean, atol=0.06)
    assert torch.allclose(torch.cov(y.T), cov, atol=0.15 * float(cov.abs().max()))
    # deterministic in ε: the same call gives the same bits; a sub-batch the same values (its matrix products may
    # take other CPU kernels, whose float64 rounding differs)
    assert torch.equal(core.sample(eps[:5]), core.sample(eps[:5]))
    torch.testing.assert_close(core.sample(eps[:5]), z[:5], rtol=1e-12, atol=1e-12)
    cold = core.sample(eps[:5], temperature=0.0) @ Q
    assert all(any(torch.allclose(row, m, atol=1e-9) for m in means) for row in cold)  # τ = 0: the means


def test_fit_prior_gives_the_maximum_likelihood_values():
    core = _core("orthogonal", 3)
    z = torch.randn(400, D, dtype=torch.float64) * torch.linspace(0.2, 2.0, D, dtype=torch.float64)
    core.fit_range(z)
    core.fit_prior(z)
    best = core.log_prior(z).mean()
    for p in (core.prior_log_diag, core.log_noise):  # any move lowers the likelihood
        with torch.no_grad():
            p.add_(0.05)
        assert core.log_prior(z).mean() < best
        with torch.no_grad():
            p.sub_(0.05)
    top = torch.linalg.eigh(z.T @ z).eigenvectors[:, -3:]
    Q = core.range_basis().double()
    assert torch.allclose(Q @ Q.T, top @ top.T, atol=1e-8)  # range = top principal directions


def test_em_fits_a_two_cluster_range_better_than_one_gaussian():
    gen = torch.Generator().manual_seed(4)
    centres = torch.zeros(2, D, dtype=torch.float64)
    centres[0, 0], centres[1, 0] = 4.0, -4.0
    z = centres[torch.arange(600) % 2] + 0.3 * torch.randn(600, D, dtype=torch.float64, generator=gen)
    one, two = PROJECTION_FORMS["orthogonal"](D, 2, 1).double(), PROJECTION_FORMS["orthogonal"](D, 2, 2).double()
    for core in (one, two):
        core.fit_range(z)
        core.fit_prior(z)
    assert two.log_prior(z).mean() > one.log_prior(z).mean() + 1.0
    Q = two.range_basis().double().detach()
    found = sorted(float(m @ (Q.T @ centres[0]) / 16) for m in two.prior_means.detach().double())
    assert found[0] == pytest.approx(-1, abs=0.05) and found[1] == pytest.approx(1, abs=0.05)
    weights = torch.softmax(two.prior_logits.detach().double(), 0)
    assert torch.allclose(weights, torch.full((2,), 0.5, dtype=torch.float64), atol=0.02)
    with pytest.raises(ValueError, match="at least as many latents as mixture components"):
        PROJECTION_FORMS["orthogonal"](D, 2, 50).double().fit_prior(z[:10])


@pytest.mark.parametrize("form", FORMS)
def test_f_of_f_is_f_for_every_input_kind(form):
    model = tiny_model(core_type=f"projection_{form}", core_rank=10, role_x=0.5, role_y=0.5).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.rand(4, 1, 8, 8, generator=gen, dtype=torch.float64),
              torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64),
              torch.full((4, 1, 8, 8), 0.3, dtype=torch.float64),
              3 * torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)]
    for x in inputs:
        once = model(x).sample
        twice = model(once).sample
        assert (twice - once).abs().max() < 1e-11
    model32 = model.float()
    once = model32(inputs[0].float()).sample
    assert (model32(once).sample - once).abs().max() < 1e-5


def test_bad_configurations_are_refused_saying_why():
    with pytest.raises(ValueError, match=r"rank r in 1 … D − 1 = 63"):
        tiny_model(core_type="projection_orthogonal", core_rank=64, role_y=1.0)
    with pytest.raises(ValueError, match=r"rank r in 1 … D − 1"):
        tiny_model(core_type="projection_oblique", core_rank=0, role_y=1.0)
    with pytest.raises(ValueError, match=r"core_prior_components = 0 \(expected"):
        tiny_model(core_type="projection_orthogonal", core_rank=4, role_y=1.0, core_prior_components=0)
    with pytest.raises(ValueError, match="needs one network on both sides.*shared_g=True"):
        tiny_model(core_type="projection_spectral", shared_g=False)
    with pytest.raises(ValueError, match="role_x = 1.0 and role_y = 0.0.*set role_x equal to role_y"):
        tiny_model(core_type="projection_orthogonal")
    for form in FORMS:
        entry = CORES.entry(f"projection_{form}")
        assert entry.same_g and entry.tasks == ("project",)

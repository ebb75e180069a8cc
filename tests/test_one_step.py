"""The differentiable one-step generator: gradients through the collapse, exact inverse, log-determinants and
the likelihood (against fp64 dense algebra, autograd Jacobians, a stepped sampler and numerical integration)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, jacrev

from diffusers_linearizer.models.core_registry import CoreSpec, build_core_from_config
from diffusers_linearizer.schedulers import LinearizerScheduler
from diffusers_linearizer.training.likelihood import check_likelihood_model, likelihood_terms
from diffusers_linearizer.training.one_step import (
    bits_per_dim,
    collapsed_operator,
    dequantize,
    generate,
    invert,
    log_likelihood,
)

from .utils import perturb_all, tiny_model

CORES = ("shared_basis", "lowrank", "time_lowrank")
SOLVERS = ("euler", "heun", "rk4")


def _micro(core_type: str, **kw):
    """D = 16 (1×4×4), one flow block, rank 2, float64, every parameter perturbed."""
    cfg = dict(sample_size=4, num_blocks=1, conditioner_channels=4, core_type=core_type, core_rank=2,
               core_hidden_dim=8, core_embedding_dim=8)
    cfg.update(kw)
    model = tiny_model(**cfg).double().eval()
    perturb_all(model, 0.05, seed=1)
    return model


def _stepped(core, scheduler, z, T):
    """The scheduler's own step loop (an independent computation of B z)."""
    scheduler.set_timesteps(T)
    for ts in scheduler.timesteps:
        t = float(scheduler.t_of(ts))
        z = scheduler.step(core(z, torch.full((z.shape[0],), t, dtype=z.dtype) if core.time_dependent else None), ts, z).prev_sample
    return z


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("core_type", CORES + ("dense",))
def test_autograd_collapse_equals_stepping(core_type, solver):
    torch.manual_seed(0)
    core = build_core_from_config(core_type, 12, CoreSpec(rank=3, hidden_dim=16, embedding_dim=8)).double()
    perturb_all(core, 0.1)
    scheduler = LinearizerScheduler(solver=solver)
    B, info = scheduler.collapse(core, 5, cache=False, return_info=True)
    assert info.mode == "autograd" and B.dtype == torch.float64
    z = torch.randn(3, 12, dtype=torch.float64)
    with torch.no_grad():
        ref = _stepped(core, scheduler, z, 5)
    torch.testing.assert_close(B.apply(z), ref, rtol=1e-12, atol=1e-12)
    # a gradient reaches every core parameter
    B.apply(z).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in core.parameters())


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("core_type", CORES)
def test_gradcheck_one_step_output(core_type, solver):
    """Finite differences of the one-step output agree with autograd for every parameter (core and g)."""
    model = _micro(core_type)
    wrapper = _OneStep(model, LinearizerScheduler(solver=solver), solver)
    names = [f"model.{n}" for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    noise = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def one_step(*ps):
        return functional_call(wrapper, dict(zip(names, ps)), (noise,))

    assert torch.autograd.gradcheck(one_step, params, fast_mode=True, eps=1e-6, atol=1e-6, rtol=1e-4)


class _OneStep(torch.nn.Module):
    """``noise ↦ g_x⁻¹(B g_y(noise))`` with ``B`` collapsed inside ``forward`` (so ``functional_call``
    substitutes the parameters of the core and of ``g`` alike)."""

    def __init__(self, model, scheduler, solver):
        super().__init__()
        self.model, self.scheduler, self.solver = model, scheduler, solver

    def forward(self, noise):
        return generate(self.model, collapsed_operator(self.model, self.scheduler, 4, self.solver), noise)


@pytest.mark.parametrize("core_type", CORES)
def test_solve_and_logabsdet_against_dense(core_type):
    model = _micro(core_type)
    B = LinearizerScheduler(solver="rk4").collapse(model.core, 6, cache=False)
    dense = B.to_dense().detach()
    z = torch.randn(4, 16, dtype=torch.float64)
    torch.testing.assert_close(B.solve(z), torch.linalg.solve(dense, z.T).T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(B.logabsdet(), torch.linalg.slogdet(dense).logabsdet, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("core_type", CORES)
def test_log_likelihood_matches_dense_jacobian(core_type):
    """log p(x) = log N(ε) + log|det ∂ε/∂x| with the Jacobian of the inversion map from autograd."""
    model = _micro(core_type)
    B = LinearizerScheduler(solver="heun").collapse(model.core, 5, cache=False)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logp, eps = log_likelihood(model, B, x)
    torch.testing.assert_close(eps, invert(model, B, x).detach())
    for i in range(x.shape[0]):
        jac = jacrev(lambda v: invert(model, B, v.view(1, 1, 4, 4)).flatten())(x[i].flatten())
        e = eps[i].flatten()
        expected = -0.5 * e.square().sum() - 8 * math.log(2 * math.pi) + torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(logp[i], expected, rtol=1e-9, atol=1e-9)


def test_generate_and_invert_round_trip():
    model = _micro("shared_basis")
    B = LinearizerScheduler(solver="rk4").collapse(model.core, 8, cache=False)
    noise = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(invert(model, B, generate(model, B, noise, 0.7), 0.7), noise, rtol=1e-9, atol=1e-9)


def test_density_integrates_to_one_on_two_pixels():
    """A 2-pixel model (D = 2): the one-step generator's density integrates to 1 over R² (trapezoid rule)."""
    torch.manual_seed(0)
    model = tiny_model(sample_size=1, in_channels=2, num_blocks=2, conditioner_channels=4, core_type="shared_basis",
                       core_rank=1, core_hidden_dim=8, core_embedding_dim=8).double().eval()
    perturb_all(model, 0.3, seed=3)
    B = LinearizerScheduler(solver="euler").collapse(model.core, 6, cache=True)
    lo, hi, n = -120.0, 120.0, 241  # samples have standard deviations of about 5 and 13
    grid = torch.linspace(lo, hi, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1).view(-1, 2, 1, 1)
    with torch.no_grad():
        density = torch.cat([log_likelihood(model, B, c)[0] for c in pts.split(40_000)]).exp().view(n, n)
    total = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid)
    assert abs(float(total) - 1.0) < 2e-3, float(total)


def test_dequantize_and_bits_per_dim():
    k = torch.tensor([0.0, 17.0, 255.0]) / 255.0
    u = torch.tensor([0.0, 0.5, 0.999])
    torch.testing.assert_close(dequantize(k, u), torch.tensor([0.0, 17.5, 255.999]) / 256.0)
    # the uniform density on [0, 1]^D has log p = 0: 8 bits per dimension
    assert float(bits_per_dim(torch.tensor(0.0), dim=10)) == pytest.approx(8.0)


def test_likelihood_terms_have_gradients_for_every_parameter():
    model = _micro("shared_basis").train()
    scheduler = LinearizerScheduler()
    B = collapsed_operator(model, scheduler, 4, "euler")
    images = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    out = likelihood_terms(model, B, images, torch.rand_like(images))
    out["likelihood_bpd"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_likelihood_refuses_a_singular_B():
    """Euler with T = 2 (one step from t = 0, h = 1/2) on A = c·I + UVᵀ: B's identity coefficient is
    1 + (c − 1)/2, which vanishes for c = −1; B has rank ≤ r < D and the likelihood is refused."""
    model = _micro("lowrank")
    with torch.no_grad():
        model.core.scale.fill_(-1.0)
    with pytest.raises(ValueError, match="identity coefficient"):
        check_likelihood_model(model, LinearizerScheduler(), 2, "euler")

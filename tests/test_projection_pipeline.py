"""LinearizerProjectionPipeline and the projection objectives, against independent computations: dense
Jacobian log-determinants, f computed by hand from g and P, a stepped mask filling; bad input before work;
saving and loading."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_linearizer import LinearizerPipeline, LinearizerProjectionPipeline, LinearizerScheduler
from diffusers_linearizer.models.one_step import bits_per_dim
from diffusers_linearizer.training.objective import LinearizerObjective
from diffusers_linearizer.training.projection_objective import projection_likelihood_terms

from .utils import tiny_model


def _model(**kw):
    torch.manual_seed(0)
    model = tiny_model(core_type="projection_orthogonal", core_rank=12, role_x=1.0, role_y=1.0, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _f(model, x):
    """f(x) = g⁻¹(P g(x)) by hand: g, then the dense P, then g⁻¹."""
    z = model.apply_g(x, "x").flatten(1)
    P = model.core_operator(dtype=torch.float64).to_dense()
    return model.apply_g((z.double() @ P.T).to(x.dtype).view_as(x), "y", inverse=True)


def test_projection_output_is_f_and_the_distance_is_the_latent_residual():
    model = _model()
    pipe = LinearizerProjectionPipeline(linearizer=model)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = pipe(x, output_type="pt", clamp=False)
    assert torch.allclose(out.images, _f(model, x), atol=1e-5)
    z = model.apply_g(x, "x").flatten(1).double()
    P = model.core_operator(dtype=torch.float64).to_dense()
    assert torch.allclose(out.distances, (z - z @ P.T).norm(dim=1), atol=1e-5)
    again = pipe(out.images, output_type="pt", clamp=False, check_range=False)
    assert (again.images - out.images).abs().max() < 1e-5  # idempotent
    assert again.distances.max() < 1e-4  # outputs are on the range


def test_generation_is_g_inverse_of_the_range_sampler_and_lands_on_fixed_points():
    model = _model()
    pipe = LinearizerProjectionPipeline(linearizer=model)
    eps = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out = pipe(latents=eps, temperature=0.7, output_type="pt", clamp=False)
    Q, C = model.core.range_basis().double(), model.core.prior_scale()[0].double()  # one component
    mu = model.core.prior_means[0].double()
    z = (mu + 0.7 * eps.flatten(1).double() @ Q @ C.T) @ Q.T  # z = Q (μ + τ C Qᵀε), by hand
    expected = model.apply_g(z.float().view_as(eps), "y", inverse=True)
    assert torch.allclose(out.images, expected, atol=1e-5)
    assert (_f(model, out.images) - out.images).abs().max() < 1e-5
    seeded = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), output_type="np")
    assert seeded.images.shape == (2, 8, 8, 1)
    pil = pipe(batch_size=1, output_type="pil").images
    assert isinstance(pil[0], PIL.Image.Image)


def test_mask_filling_is_alternating_projection_then_f():
    model = _model()
    pipe = LinearizerProjectionPipeline(linearizer=model)
    pipe.set_progress_bar_config(disable=True)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 2:6] = 255
    seen = []
    out = pipe(x, mask_image=PIL.Image.fromarray(mask), mask_iterations=3, output_type="pt", clamp=False,
               callback_on_step_end=lambda p, i, t, kw: seen.append(kw["images"].clone()))
    m = torch.from_numpy(mask > 0)[None, None].float()
    estimate = torch.where(m > 0.5, torch.full_like(x, 0.5), x)
    for step in range(3):  # stepped by hand
        estimate = m * _f(model, estimate) + (1 - m) * x
        assert torch.allclose(seen[step], estimate, atol=1e-5)
    assert torch.allclose(out.images, _f(model, estimate), atol=1e-5)


def test_bad_input_is_refused_before_work():
    pipe = LinearizerProjectionPipeline(linearizer=_model())
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"Expected image of 1×8×8"):
        pipe(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="mask_image must be binary"):
        pipe(x, mask_image=torch.full((1, 8, 8), 0.5))
    with pytest.raises(ValueError, match="3 masks for 2 images"):
        pipe(x, mask_image=torch.ones(3, 1, 8, 8))
    with pytest.raises(ValueError, match="mask_image needs image"):
        pipe(mask_image=torch.ones(1, 8, 8))
    with pytest.raises(ValueError, match="latents and temperature are for generation"):
        pipe(x, latents=torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="mask_iterations must be an int"):
        pipe(x, mask_image=torch.ones(1, 8, 8), mask_iterations=-1)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        pipe(batch_size=0)
    with pytest.raises(ValueError, match="Unknown output_type"):
        pipe(x, output_type="jpeg")
    with pytest.raises(ValueError, match=r"runs the task 'generate'.*use LinearizerProjectionPipeline"):
        LinearizerPipeline(linearizer=_model(), scheduler=LinearizerScheduler())
    with pytest.raises(ValueError, match=r"runs the task 'project'.*use LinearizerPipeline"):
        LinearizerProjectionPipeline(linearizer=tiny_model())


def test_saved_and_loaded_like_every_pipeline(tmp_path):
    pipe = LinearizerProjectionPipeline(linearizer=_model())
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    before = pipe(x, output_type="pt").images
    pipe.save_pretrained(tmp_path / "p")
    assert not (tmp_path / "p" / "scheduler").exists()
    assert "LinearizerProjectionPipeline" in (tmp_path / "p" / "pipeline_linearizer.py").read_text()
    for loader in (LinearizerProjectionPipeline, LinearizerPipeline):  # the entry point picks the class
        loaded = loader.from_pretrained(tmp_path / "p")
        assert type(loaded) is LinearizerProjectionPipeline
        assert torch.equal(loaded(x, output_type="pt").images, before)
    assert "f(x) = g⁻¹(P g(x))" in (tmp_path / "p" / "README.md").read_text()


def test_likelihood_objective_is_the_change_of_variables_with_a_dense_jacobian():
    model = tiny_model(sample_size=4, core_type="projection_oblique", core_rank=5, role_x=1.0, role_y=1.0).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=None))
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    terms = projection_likelihood_terms(model, x)
    Q = model.core.range_basis().double().detach()
    C = model.core.prior_scale()[0].double().detach()
    sigma2 = float(model.core.log_noise.detach().exp()) ** 2
    cov = Q @ C @ C.T @ Q.T + sigma2 * (torch.eye(16, dtype=torch.float64) - Q @ Q.T)
    prior = torch.distributions.MultivariateNormal(Q @ model.core.prior_means[0].double().detach(), cov)
    logps = []
    for xi in x:
        def g(v):
            return model.apply_g(v.view(1, 1, 4, 4), "x").flatten()
        J = torch.autograd.functional.jacobian(g, xi.flatten())
        logps.append(prior.log_prob(g(xi.flatten())) + torch.linalg.slogdet(J)[1])
    expected = bits_per_dim(torch.stack(logps), 16).mean()
    assert abs(float(terms["projection_bpd"].detach()) - float(expected.detach())) < 1e-4


def test_objectives_train_only_the_models_whose_task_they_serve():
    with pytest.raises(ValueError, match=r"--objective fast does not train a 'projection_orthogonal' model"):
        LinearizerObjective(_model(), "fast")
    with pytest.raises(ValueError, match=r"--objective projection_likelihood does not train a 'lowrank' model"):
        LinearizerObjective(tiny_model(), "projection_likelihood")
    objective = LinearizerObjective(_model().train(), "projection_likelihood,projection_reconstruction:10")
    x = torch.rand(4, 1, 8, 8)
    out = objective(x, torch.randn_like(x), torch.rand(4), torch.randn_like(x), torch.randn_like(x),
                    uniform=torch.rand_like(x))
    assert set(out) == {"loss", "projection_bpd", "projection_reconstruction"}
    expected = out["projection_bpd"] + 10 * out["projection_reconstruction"]
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    assert objective.model.core.weight.grad is not None and objective.model.core.log_noise.grad is not None


def test_training_corruptions_are_the_ones_documented():
    from diffusers_linearizer.images import binomial_blur
    from diffusers_linearizer.training.projection_objective import MAX_MISSING, MAX_NOISE, corrupt_batch

    gen = torch.Generator().manual_seed(6)
    x = torch.rand(4, 1, 8, 8, generator=gen)
    noise, eps = torch.randn(x.shape, generator=gen), torch.randn(x.shape, generator=gen)
    u = torch.tensor([0.2, 0.5, 0.9, 0.0])
    out = corrupt_batch(x, noise, u, eps)
    assert torch.allclose(out[0], x[0] + MAX_NOISE * 0.6 * noise[0])
    missing = torch.special.ndtr(eps[1]) < MAX_MISSING * 0.5
    assert torch.equal(out[1][missing], torch.full((int(missing.sum()),), 0.5)) and torch.equal(out[1][~missing], x[1][~missing])
    kernel = torch.outer(torch.tensor([1.0, 4, 6, 4, 1]), torch.tensor([1.0, 4, 6, 4, 1])) / 256
    padded = torch.nn.functional.pad(x[2:3], (2, 2, 2, 2), mode="replicate")[0, 0]
    by_hand = torch.stack([torch.stack([(padded[i:i + 5, j:j + 5] * kernel).sum() for j in range(8)]) for i in range(8)])
    assert torch.allclose(out[2, 0], by_hand, atol=1e-6) and torch.allclose(binomial_blur(x[2:3])[0, 0], by_hand, atol=1e-6)
    assert torch.equal(out[3], x[3])  # σ = 0 at u = 0


def test_denoising_objective_is_f_of_the_corruption_against_the_clean_image():
    model = _model().train()
    objective = LinearizerObjective(model, "projection_denoising")
    gen = torch.Generator().manual_seed(7)
    x, noise, eps = (torch.rand(3, 1, 8, 8, generator=gen), torch.randn(3, 1, 8, 8, generator=gen),
                     torch.randn(3, 1, 8, 8, generator=gen))
    t, uniform = torch.tensor([0.1, 0.5, 0.8]), torch.rand(3, 1, 8, 8, generator=gen)
    out = objective(x, noise, t, torch.randn_like(x), eps, uniform=uniform)
    from diffusers_linearizer.models.one_step import dequantize
    from diffusers_linearizer.training.projection_objective import corrupt_batch

    clean = dequantize(x, uniform)
    expected = (_f(model, corrupt_batch(clean, noise, t, eps)) - clean).square().mean()
    assert torch.allclose(out["projection_denoising"].detach(), expected.detach(), atol=1e-6)

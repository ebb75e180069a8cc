"""The fitted noise prior (``models/noise_prior.py``): its density against dense float64 Gaussians, its sampler
against the mixture's analytic moments, its fit against a known mixture, and how models and pipelines carry it."""

import math

import pytest
import torch

from diffusers_linearizer import LinearizerClassPipeline, LinearizerPipeline, LinearizerScheduler
from diffusers_linearizer.models.noise_prior import NoisePrior, fit_gaussian_mixture
from diffusers_linearizer.training.noise_prior import fit_noise_prior, recovered_noise

from .test_pipeline import make_pipe
from .utils import perturb_all, tiny_model


def random_prior(dim=6, rank=3, components=4, groups=2, seed=0) -> NoisePrior:
    """A prior with random (valid) factors: orthonormal Q, lower-triangular C_k with positive diagonal, and each
    group using its own half of the components."""
    g = torch.Generator().manual_seed(seed)
    p = NoisePrior(dim, rank, components, groups)
    with torch.no_grad():
        p.basis.copy_(torch.linalg.qr(torch.randn(dim, rank, generator=g)).Q)
        p.means.copy_(3 * torch.randn(components, rank, generator=g))
        tril = torch.tril(0.3 * torch.randn(components, rank, rank, generator=g), -1)
        full = tril + torch.diag_embed(torch.rand(components, rank, generator=g) + 0.5)
        rows, cols = torch.tril_indices(rank, rank)
        p.scale_packed.copy_(full[:, rows, cols])
        logw = torch.full((groups, components), -1e4)
        per = components // groups
        for k in range(groups):
            logw[k, k * per:(k + 1) * per] = torch.randn(per, generator=g)
        p.log_weights.copy_(logw)
        p.log_sigma.copy_(torch.tensor(math.log(0.4)))
    return p


def dense_components(p: NoisePrior):
    """Each component as a dense D-dimensional Gaussian: mean Q μ_k, covariance Q C Cᵀ Qᵀ + σ²(I − QQᵀ)."""
    Q = p.basis.double()
    C = p.scale_tril()
    sigma2 = float(p.log_sigma.exp()) ** 2
    rest = torch.eye(p.dim, dtype=torch.float64) - Q @ Q.T
    means = p.means.double() @ Q.T
    covs = Q @ C @ C.transpose(1, 2) @ Q.T + sigma2 * rest
    return means, covs


def test_log_prob_is_the_mixture_of_dense_gaussians():
    p = random_prior()
    means, covs = dense_components(p)
    z = torch.randn(7, p.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for group in range(p.groups):
        w = torch.softmax(p.log_weights.double()[group], 0)
        dense = torch.stack([torch.distributions.MultivariateNormal(means[k], covs[k]).log_prob(z) + w[k].log()
                             for k in range(p.components)]).logsumexp(0)
        # rtol: the factors are float32 buffers (Q orthonormal to ~1e-7), the algebra float64
        torch.testing.assert_close(p.log_prob(z, torch.full((7,), group)), dense, rtol=1e-6, atol=0)


def test_sampling_draws_the_mixture_exactly():
    """Mean and covariance of 400,000 draws per group against the mixture's analytic moments (the off-subspace
    coordinate that picks the component is redrawn, so it is uncorrelated with the subspace part), and the
    component shares against the weights (within five standard errors)."""
    p = random_prior()
    with torch.no_grad():
        p.means.mul_(10)  # components far apart, so each draw's component is its nearest mean
    means, covs = dense_components(p)
    n = 400_000
    eps = torch.randn(n, p.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for group in range(p.groups):
        w = torch.softmax(p.log_weights.double()[group], 0)
        mean = (w[:, None] * means).sum(0)
        second = (w[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0)
        cov = second - mean[:, None] * mean[None, :]
        z = p.sample(eps, torch.full((n,), group))
        scale = cov.diagonal().sqrt()
        assert float(((z.mean(0) - mean) / scale).abs().max()) < 5 / math.sqrt(n) * 2
        emp = torch.cov(z.T)
        assert float(((emp - cov) / (scale[:, None] * scale[None, :])).abs().max()) < 0.01
        # the component of each draw, recovered as the nearest mean on the subspace, has the weights' shares
        coords = z @ p.basis.double()
        k = torch.cdist(coords, p.means.double()).argmin(1)
        share = torch.bincount(k, minlength=p.components).double() / n
        assert float((share - w).abs().max()) < 5 * math.sqrt(0.25 / n)


def test_sampling_is_a_deterministic_function_of_eps_and_temperature_scales_deviations():
    p = random_prior(groups=1, components=2)
    eps = torch.randn(5, 1, 2, 3, generator=torch.Generator().manual_seed(3))
    a, b = p.sample(eps), p.sample(eps.clone())
    assert a.shape == eps.shape and torch.equal(a, b)
    near_zero = p.sample(eps, temperature=1e-12).reshape(5, -1)
    k = torch.cdist(near_zero @ p.basis.double(), p.means.double()).argmin(1)
    torch.testing.assert_close(near_zero, p.means.double()[k] @ p.basis.double().T, rtol=0, atol=1e-9)


def test_fit_recovers_a_known_mixture_per_group():
    truth = random_prior(dim=5, rank=2, components=4, groups=2, seed=5)
    n = 20_000
    eps = torch.randn(n, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    groups = torch.arange(n) % 2
    z = truth.sample(eps, groups)
    fitted = NoisePrior(5, 2, 4, 2).fit(z, groups, iterations=200)
    # the same subspace, the same σ, and the same means (up to order within each group's block)
    Qt, Qf = truth.basis.double(), fitted.basis.double()
    torch.testing.assert_close(Qf @ Qf.T, Qt @ Qt.T, rtol=0, atol=0.02)
    assert abs(float(fitted.log_sigma.exp()) - 0.4) < 0.01
    true_means, fit_means = truth.means.double() @ Qt.T, fitted.means.double() @ Qf.T
    for g in range(2):
        block = slice(2 * g, 2 * g + 2)
        d = torch.cdist(fit_means[block], true_means[block])
        assert float(d.min(1).values.max()) < 0.1
        assert float(fitted.log_weights[g, 2 * (1 - g)]) < -1e3  # the other group's components are never drawn


def test_labels_fit_one_gaussian_per_label_into_one_group():
    """An unconditional prior fitted with labels: each label's coordinates get their own mean and covariance
    (computed here directly in float64), weighted by the label's share; sampling draws from the whole mixture."""
    gen = torch.Generator().manual_seed(3)
    n, dim, rank = 3000, 6, 6 - 1
    labels = torch.randint(0, 3, (n,), generator=gen)
    centres = 4 * torch.randn(3, dim, generator=gen, dtype=torch.float64)
    z = centres[labels] + torch.randn(n, dim, generator=gen, dtype=torch.float64) * (1 + labels[:, None])
    prior = NoisePrior(dim, rank, 3, 1).fit(z, labels=labels)
    Q = prior.basis.double()
    weights = torch.softmax(prior.log_weights.double(), 1)[0]
    for c in range(3):
        mine = z[labels == c] @ Q
        mean, d = mine.mean(0), mine - mine.mean(0)
        torch.testing.assert_close(prior.means.double()[c], mean, rtol=0, atol=1e-5)
        cov = prior.scale_tril()[c] @ prior.scale_tril()[c].T
        torch.testing.assert_close(cov, d.T @ d / mine.shape[0], rtol=1e-5, atol=1e-5)
        assert float(weights[c]) == pytest.approx(float((labels == c).double().mean()), abs=1e-6)
    draws = prior.sample(torch.randn(20000, dim, generator=gen, dtype=torch.float64))  # no label needed
    torch.testing.assert_close(draws.mean(0), z.mean(0), rtol=0, atol=0.15)
    for bad, match in ((dict(labels=labels[:10]), "one label per noise sample"),):
        with pytest.raises(ValueError, match=match):
            NoisePrior(dim, rank, 3, 1).fit(z, **bad)
    with pytest.raises(ValueError, match="one-group"):
        NoisePrior(dim, rank, 6, 2).fit(z, labels % 2, labels=labels)
    with pytest.raises(ValueError, match="split evenly"):
        NoisePrior(dim, rank, 4, 1).fit(z, labels=labels)


def test_the_projection_cores_share_the_mixture_em():
    """``fit_gaussian_mixture`` with one component is the zero-mean second moment; with two well-separated
    clusters it finds their means and shares."""
    g = torch.Generator().manual_seed(7)
    y = torch.cat([torch.randn(3000, 2, generator=g, dtype=torch.float64) * 0.2 + 4,
                   torch.randn(1000, 2, generator=g, dtype=torch.float64) * 0.2 - 4])
    means, covs, weights = fit_gaussian_mixture(y, 1)
    torch.testing.assert_close(covs[0], y.T @ y / len(y) + 1e-6 * torch.eye(2, dtype=torch.float64))
    means, covs, weights = fit_gaussian_mixture(y, 2, iterations=50)
    order = means[:, 0].argsort(descending=True)
    torch.testing.assert_close(means[order], torch.tensor([[4.0, 4.0], [-4.0, -4.0]], dtype=torch.float64),
                               rtol=0, atol=0.03)
    torch.testing.assert_close(weights[order], torch.tensor([0.75, 0.25], dtype=torch.float64), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_gaussian_mixture(y[:4], 5)


def _with_prior(pipe, groups=1, seed=0, temperature=1.0):
    prior = random_prior(dim=pipe.linearizer.latent_dim, rank=5, components=2 * groups, groups=groups, seed=seed)
    with torch.no_grad():
        prior.means.mul_(0.1)
        prior.scale_packed.mul_(0.3)
    pipe.linearizer.set_noise_prior(prior, temperature=temperature)
    return prior


def test_pipeline_samples_the_prior_and_one_step_still_equals_stepping(tmp_path):
    pipe = make_pipe("shared_basis", seed=1)
    pipe.linearizer.register_to_config(sampling_temperature=1.3)  # the τ of plain noise
    prior = _with_prior(pipe, temperature=0.8)  # the τ of the prior
    kw = dict(batch_size=3, num_inference_steps=8, output_type="pt", clamp=False)
    one = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    stepped = pipe(generator=torch.Generator().manual_seed(0), one_step=False, **kw).images
    assert float((one - stepped).abs().max()) < 1e-4
    eps = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # what randn_tensor draws on the CPU
    by_hand = pipe(latents=prior.sample(eps, temperature=0.8).float(), **kw).images
    torch.testing.assert_close(one, by_hand, rtol=0, atol=0)
    plain = pipe(generator=torch.Generator().manual_seed(0), noise_prior=False, **kw).images
    torch.testing.assert_close(plain, pipe(latents=1.3 * eps, **kw).images, rtol=0, atol=0)
    hotter = pipe(generator=torch.Generator().manual_seed(0), temperature=1.5, **kw).images
    torch.testing.assert_close(hotter, pipe(latents=prior.sample(eps, temperature=1.5).float(), **kw).images,
                               rtol=0, atol=0)
    pipe.save_pretrained(tmp_path / "p")
    loaded = LinearizerPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    cfg = loaded.linearizer.config
    assert (cfg.noise_prior_rank, cfg.noise_prior_components, cfg.noise_prior_temperature) == (5, 2, 0.8)
    torch.testing.assert_close(loaded(generator=torch.Generator().manual_seed(0), **kw).images, one, rtol=0, atol=0)
    half = LinearizerPipeline.from_pretrained(tmp_path / "p", dtype=torch.float16)
    assert half.linearizer.noise_prior.basis.dtype == torch.float32  # a density's factors stay in float32
    with pytest.raises(ValueError, match="noise_prior"):
        pipe(noise_prior="yes", **kw)


def test_a_class_model_draws_each_image_from_its_class_components():
    torch.manual_seed(0)
    model = tiny_model(core_type="shared_basis", conditioning="class", num_classes=3).eval()
    perturb_all(model.core, 0.1, seed=2)
    pipe = LinearizerClassPipeline(linearizer=model, scheduler=LinearizerScheduler())
    pipe.set_progress_bar_config(disable=True)
    prior = _with_prior(pipe, groups=3)
    kw = dict(num_inference_steps=6, output_type="pt", clamp=False, guidance_scale=2.0)
    labels = [2, 0, 1, 2]
    out = pipe(class_labels=labels, generator=torch.Generator().manual_seed(4), **kw).images
    eps = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    by_hand = pipe(class_labels=labels, latents=prior.sample(eps, torch.tensor(labels)).float(), **kw).images
    torch.testing.assert_close(out, by_hand, rtol=0, atol=0)
    wrong = pipe(class_labels=labels, latents=prior.sample(eps, torch.tensor([0, 1, 2, 0])).float(), **kw).images
    assert float((wrong - out).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="group"):
        prior.sample(eps, torch.tensor([0, 1, 3, 0]))


def test_fit_noise_prior_inverts_the_images_it_is_fitted_to():
    pipe = make_pipe("shared_basis", seed=3)
    images = torch.rand(80, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.8 + 0.1
    noise = recovered_noise(pipe, images, num_inference_steps=8, batch_size=32)
    regenerated = pipe(latents=noise.float().view(-1, 1, 8, 8), num_inference_steps=8, output_type="pt",
                       clamp=False).images
    assert float((regenerated - images).abs().max()) < 1e-3  # the noise is the images' own (exact inversion)
    prior = fit_noise_prior(pipe, images, rank=6, components=2, num_inference_steps=8, iterations=5)
    Q = prior.basis.double()
    torch.testing.assert_close(Q.T @ Q, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-6)  # stored in float32
    pipe.linearizer.set_noise_prior(prior)
    assert pipe.linearizer.config.noise_prior_rank == 6


@pytest.mark.parametrize("build, match", [
    (lambda: tiny_model(noise_prior_rank=4, noise_prior_components=0), "both 0"),
    (lambda: tiny_model(noise_prior_rank=-1, noise_prior_components=2), "noise_prior_rank"),
    (lambda: tiny_model(noise_prior_rank=64, noise_prior_components=2), "rank must be an int 1 … 63"),
    (lambda: tiny_model().set_noise_prior(NoisePrior(16, 2, 2)), "dim 64"),
    (lambda: tiny_model().set_noise_prior("prior"), "NoisePrior or None"),
    (lambda: tiny_model().set_noise_prior(NoisePrior(64, 2, 2), temperature=0), "noise_prior_temperature"),
    (lambda: fit_noise_prior(make_pipe("shared_basis"), torch.rand(4, 1, 8, 8), rank=2, components=8), "at least 8"),
])
def test_bad_priors_are_refused_before_any_work(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_class_model_needs_labels_to_fit_its_prior():
    model = tiny_model(core_type="shared_basis", conditioning="class", num_classes=3).eval()
    pipe = LinearizerClassPipeline(linearizer=model, scheduler=LinearizerScheduler())
    with pytest.raises(ValueError, match="class_labels, one per image"):
        fit_noise_prior(pipe, torch.rand(6, 1, 8, 8), rank=2, components=1)


def test_the_fitting_module_s_example_runs():
    import doctest

    import diffusers_linearizer.training.noise_prior as module

    test = doctest.DocTestParser().get_doctest(module.__doc__, {}, module.__name__, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=lambda text: pytest.fail(text))
    assert runner.failures == 0 and runner.tries == len(test.examples) > 0


def test_fit_noise_prior_with_labels_fits_each_label_of_an_unconditional_model():
    """``fit_noise_prior(…, labels=…)``: one Gaussian per label of the recovered noise (its mean), in one group;
    a class model refuses labels (its groups are its classes)."""
    pipe = make_pipe()
    images = torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(60) % 3
    prior = fit_noise_prior(pipe, images, rank=5, components=1, labels=labels)
    assert (prior.components, prior.groups) == (3, 1)
    noise = recovered_noise(pipe, images)
    Q = prior.basis.double()
    for c in range(3):
        torch.testing.assert_close(prior.means.double()[c], (noise[labels == c] @ Q).mean(0), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="class_labels"):
        class_pipe = LinearizerClassPipeline(tiny_model(core_type="shared_basis", conditioning="class", num_classes=3),
                                             LinearizerScheduler())
        fit_noise_prior(class_pipe, images, class_labels=labels, labels=labels)

"""The multi-scale invertible network (``num_scales``): exact inverse and log-determinant against the autograd
Jacobian, the factoring-out layout (what leaves at a scale never sees the deeper scales), the model's one-step
likelihood against a dense Jacobian, save/load through diffusers' loading, the training option, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev

from diffusers_linearizer import LinearizerModel
from diffusers_linearizer.models.invertible import InvertibleNetwork
from diffusers_linearizer.models.multiscale import MultiScaleNetwork, build_invertible_network
from diffusers_linearizer.schedulers import LinearizerScheduler
from diffusers_linearizer.training.one_step import invert, log_likelihood

from .utils import perturb_all, tiny_model


def _network(c=1, size=16, scales=3, blocks=1, seed=0):
    torch.manual_seed(seed)
    g = MultiScaleNetwork(c, size, num_blocks=blocks, num_scales=scales, conditioner_channels=8, conditioner_layers=1,
                          time_embedding_dim=8).double().eval()
    perturb_all(g, 0.05, seed=seed + 3)
    return g


@pytest.mark.parametrize("c, size, scales", [(1, 16, 3), (3, 8, 2), (2, 8, 2)], ids=["1ch_3", "3ch_2", "2ch_2"])
def test_roundtrip_and_logdet_against_autograd(c, size, scales):
    g = _network(c, size, scales)
    x = torch.randn(2, c, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ctx = torch.tensor([0.0, 1.0], dtype=torch.float64)
    z, logdet = g(x, ctx, return_logdet=True)
    assert z.shape == x.shape
    torch.testing.assert_close(g.inverse(z, ctx), x, rtol=1e-11, atol=1e-11)
    for i in range(2):
        jac = jacrev(lambda v: g(v.view(1, c, size, size), ctx[i: i + 1]).flatten())(x[i].flatten())
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac).logabsdet, rtol=1e-9, atol=1e-9)


def test_factored_out_channels_never_see_the_deeper_scales():
    """z = S⁻¹([z₀, out₁]): after one squeeze of the latent, its first 2C channels are scale 0's own output, so changing
    the weights of scales 1 and 2 leaves them as they are and changes the rest."""
    g = _network(1, 16, 3)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    before = F.pixel_unshuffle(g(x, 0.5), 2)
    perturb_all(g.scales[1], 0.2, seed=9)
    perturb_all(g.scales[2], 0.2, seed=10)
    after = F.pixel_unshuffle(g(x, 0.5), 2)
    torch.testing.assert_close(after[:, :2], before[:, :2], rtol=0, atol=0)
    assert (after[:, 2:] - before[:, 2:]).abs().max() > 1e-3
    # and with scale 0's blocks alone changed, the factored-out half moves too
    perturb_all(g.scales[0], 0.2, seed=11)
    assert (F.pixel_unshuffle(g(x, 0.5), 2)[:, :2] - after[:, :2]).abs().max() > 1e-3


def test_model_likelihood_matches_dense_jacobian():
    """log p(x) of a two-scale model through the collapse B equals log N(ε) + log|det ∂ε/∂x| from autograd."""
    model = tiny_model(sample_size=8, num_blocks=1, num_scales=2, conditioner_channels=4, core_type="shared_basis",
                       core_rank=2).double().eval()
    perturb_all(model, 0.05, seed=1)
    B = LinearizerScheduler().collapse(model.core, 6, cache=False)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logp, eps = log_likelihood(model, B, x)
    for i in range(2):
        jac = jacrev(lambda v: invert(model, B, v.view(1, 1, 8, 8)).flatten())(x[i].flatten())
        expected = -0.5 * eps[i].square().sum() - 32 * math.log(2 * math.pi) + torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(logp[i], expected, rtol=1e-9, atol=1e-9)


def test_save_and_load_keep_the_scales(tmp_path):
    model = tiny_model(sample_size=16, num_scales=3, shared_g=False).eval()
    perturb_all(model, 0.05, seed=4)
    model.save_pretrained(tmp_path / "m")
    loaded = LinearizerModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.num_scales == 3 and isinstance(loaded.g_y, MultiScaleNetwork)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 0.3).sample, model(x, 0.3).sample, rtol=0, atol=0)
    assert loaded.size_multiple == 8


def test_one_scale_is_the_plain_network():
    assert type(build_invertible_network(1, in_channels=1, sample_size=8)) is InvertibleNetwork
    assert type(tiny_model().g) is InvertibleNetwork and tiny_model().size_multiple == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(sample_size=12, num_scales=3), "multiple of 8"),
    (dict(sample_size=8, num_scales=2, squeeze=False), "squeeze must be 'auto' or True"),
    (dict(sample_size=8, num_scales=0), "num_scales = 0"),
    (dict(sample_size=8, num_scales=True), "num_scales = True"),
])
def test_bad_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**kwargs)


def test_bad_inputs_name_the_shape():
    g = _network(1, 16, 2)
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        g(torch.zeros(1, 1, 8, 8, dtype=torch.float64))
    free = MultiScaleNetwork(1, 16, num_blocks=1, num_scales=2, conditioner_channels=4, size_free=True)
    with pytest.raises(ValueError, match="multiples of 4"):
        free(torch.zeros(1, 1, 18, 18))
    assert free(torch.zeros(1, 1, 24, 24)).shape == (1, 1, 24, 24)


def test_training_option_builds_the_scales():
    from diffusers_linearizer.training.arguments import parse_args
    from diffusers_linearizer.training.setup import build_model

    args = parse_args(["--num_scales", "2", "--num_blocks", "1", "--conditioner_channels", "8", "--resolution", "16",
                       "--core_rank", "4"])
    model = build_model(args, in_channels=1)
    assert model.config.num_scales == 2 and isinstance(model.g, MultiScaleNetwork)

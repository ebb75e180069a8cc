"""Untying a shared g (``models/untie.py``, ``train --untie_g``): the untied model is the same function (samples,
likelihood through the collapse), its two networks are independent copies, and bad requests are refused."""

from __future__ import annotations

import pytest
import torch

from diffusers_linearizer import LinearizerModel
from diffusers_linearizer.models.untie import untie_networks
from diffusers_linearizer.schedulers import LinearizerScheduler
from diffusers_linearizer.training.one_step import log_likelihood

from .utils import perturb_all, tiny_model


def _trained(**kw):
    model = tiny_model(core_type="shared_basis", core_rank=3, **kw).double().eval()
    perturb_all(model, 0.05, seed=2)
    return model


def test_the_untied_model_is_the_same_function_with_independent_networks(tmp_path):
    model = _trained()
    untied = untie_networks(model)
    assert untied.config.shared_g is False and model.config.shared_g is True
    n = sum(p.numel() for p in model.g.parameters())
    assert sum(p.numel() for p in untied.parameters()) == sum(p.numel() for p in model.parameters()) + n
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(untied(x, 0.3).sample, model(x, 0.3).sample, rtol=0, atol=0)
        B = LinearizerScheduler().collapse(model.core, 8, cache=False)
        (lp, eps), (lp2, eps2) = log_likelihood(model, B, x), log_likelihood(untied, B, x)
    torch.testing.assert_close(lp2, lp, rtol=0, atol=0)
    torch.testing.assert_close(eps2, eps, rtol=0, atol=0)
    perturb_all(untied.g_x, 0.1, seed=5)  # the copies are not aliases: g_y and the original stay as they were
    for a, b in zip(untied.g_y.parameters(), model.g.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    untied.save_pretrained(tmp_path / "m")
    loaded = LinearizerModel.from_pretrained(tmp_path / "m", torch_dtype=torch.float64).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 0.3).sample, untied(x, 0.3).sample, rtol=0, atol=0)


def test_refused_untying():
    with pytest.raises(ValueError, match="already has separate networks"):
        untie_networks(tiny_model(shared_g=False))
    with pytest.raises(ValueError, match="cannot be untied"):
        untie_networks(tiny_model(core_type="projection_orthogonal", core_rank=4, role_y=1.0))


def test_training_option(tmp_path):
    from diffusers_linearizer.training.arguments import check_args, parse_args
    from diffusers_linearizer.training.setup import build_model

    with pytest.raises(ValueError, match="needs --pretrained_model"):
        check_args(parse_args(["--untie_g"]))
    _trained().float().save_pretrained(tmp_path / "m")
    args = parse_args(["--untie_g", "--pretrained_model", str(tmp_path / "m"), "--resolution", "8"])
    check_args(args)
    model = build_model(args, in_channels=1)
    assert model.config.shared_g is False and hasattr(model, "g_x") and hasattr(model, "g_y")

"""The core registry: every entry builds for the conditionings it declares (and only those), its operator is
the map its forward computes, and a new core type is one registration."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from diffusers_linearizer import LinearizerModel, LinearizerPipeline, LinearizerScheduler
from diffusers_linearizer.models.core_registry import CORES, core_types
from diffusers_linearizer.models.cores import LinearCore
from diffusers_linearizer.operators import IdentityPlusLowRank

from .utils import perturb_all, tiny_model

CONDITIONS = {None: {}, "class": dict(num_classes=3), "text": dict(condition_dim=5)}


def _condition(kind, n):
    if kind == "class":
        return torch.tensor([0, 1, 2, 3][:n])
    if kind == "text":
        return torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return None


@pytest.mark.parametrize("core_type, kind", [(e.name, k) for e in CORES.entries() for k in e.conditionings])
def test_each_core_is_the_linear_map_of_its_operator(core_type, kind):
    torch.manual_seed(0)
    entry = CORES.entry(core_type)
    roles = dict(role_x=1.0, role_y=1.0) if entry.same_g else {}  # such cores refuse two roles of one network
    model = tiny_model(core_type=core_type, conditioning=kind, **CONDITIONS[kind], **roles).double()
    perturb_all(model, 0.05)
    assert model.config.core_type == core_type
    z = torch.randn(3, model.latent_dim, dtype=torch.float64)
    t = 0.37
    cond = _condition(kind, 3)
    for i in range(3):
        ci = None if cond is None else cond[i:i + 1]
        zi = z[i:i + 1].view(1, *model.sample_shape) if entry.size_free else z[i:i + 1]  # image-shaped latents
        out = model.core(zi, torch.full((1,), t, dtype=torch.float64), *(() if ci is None else (ci,))).reshape(1, -1)
        extra = {} if kind is None else {"condition": cond[i] if kind == "text" else int(cond[i])}
        op = model.core.operators([t], dtype=torch.float64, **extra)[0]
        # the dense matrix of the operator applied to z, against the module's own forward pass
        dense = op.to_dense(max_dim=model.latent_dim)
        torch.testing.assert_close(out[0], dense @ z[i], rtol=1e-10, atol=1e-12)


def test_declared_config_keys_are_model_config_keys():
    params = set(inspect.signature(LinearizerModel.__init__).parameters)
    for entry in CORES.entries():
        assert set(entry.config) <= params, entry.name
        assert ("core_rank" in entry.config) == entry.uses_rank or entry.name == "lowrank"


@pytest.mark.parametrize("kind", list(CONDITIONS))
def test_undeclared_conditionings_are_refused_naming_the_ones_that_work(kind):
    for entry in CORES.entries():
        if kind in entry.conditionings:
            continue
        with pytest.raises(ValueError) as info:
            tiny_model(core_type=entry.name, conditioning=kind, **CONDITIONS[kind])
        for ok in core_types(kind):
            assert ok in str(info.value)
    with pytest.raises(ValueError, match="Unknown core_type 'nope'; expected one of dense, lowrank"):
        tiny_model(core_type="nope", conditioning=kind, **CONDITIONS[kind])


class ScaledIdentityCore(LinearCore):
    """A test core: ``A = a·I`` with one learned number."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.a = nn.Parameter(torch.tensor(0.9))

    def forward(self, z, t=None):
        self._check(z, t)
        return self.a * z

    def operators(self, ts, dtype=None, grad=False):
        a = self.a if grad else self.a.detach()
        dtype = dtype or a.dtype
        empty = torch.zeros(self.dim, 0, dtype=dtype, device=a.device)
        return [IdentityPlusLowRank(a.to(dtype), empty, empty) for _ in ts]


def test_a_new_core_type_is_one_registration(tmp_path):
    CORES.register("scaled_identity", lambda dim, spec: ScaledIdentityCore(dim), operator="`a·I`", parameters="1",
                   config=(), conditionings=(None,), uses_rank=False)
    try:
        model = tiny_model(core_type="scaled_identity", core_rank=10_000).double()  # the rank does not apply
        pipe = LinearizerPipeline(linearizer=model, scheduler=LinearizerScheduler(solver="euler"))
        pipe.set_progress_bar_config(disable=True)
        noise = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        out = pipe(latents=noise, num_inference_steps=5, temperature=1.0, output_type="pt", clamp=False).images
        # Euler on v = (A z − z)/(1 − t) = (a − 1) z/(1 − t) over T = 5 grid points t_k = k/5, k = 0 … 4
        # (σ = 1 − t from 1 to 0.2): four steps z ← z·(1 + (a − 1)·h/(1 − t_k)), h = 0.2
        factor = 1.0
        for k in range(4):
            factor *= 1 + (float(model.core.a) - 1) * 0.2 / (1 - k / 5)
        expected = model.decode(factor * model.encode(noise, "y"), "x")
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
        model.save_pretrained(tmp_path / "m")
        assert LinearizerModel.from_pretrained(tmp_path / "m").config.core_type == "scaled_identity"
    finally:
        CORES.unregister("scaled_identity")
    assert "scaled_identity" not in core_types(None)

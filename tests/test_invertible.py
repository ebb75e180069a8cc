"""The invertible network g and its layers: exact inverses, log-determinants against autograd
Jacobians, role conditioning, batch independence, state-dict round trips and input validation.
A little over 400 lines: the round-trip tolerance derivation and the per-kernel-set rerun belong with the
round trips they check."""

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_linearizer.models.conditioners import CONDITIONERS, ConvConditioner, build_conditioner
from diffusers_linearizer.models.embeddings import sinusoidal_embedding
from diffusers_linearizer.models.invertible import (
    ActNorm,
    AffineCoupling,
    FlowBlock,
    InvertibleConv1x1,
    InvertibleNetwork,
    Squeeze2x2,
)


def roundtrip_tol(module, dtype) -> float:
    """Relative error allowed for ``g⁻¹(g(x))``, derived from the dtype and the computation.

    Every output of a linear map with ``n`` inputs (a convolution's ``C_in·k·k``, a linear layer's
    ``in_features``, an invertible 1×1 convolution's ``C``) carries rounding errors of about ``√n·u``
    (``u = eps/2``; the probabilistic bound of Higham & Mary, which unlike the worst case ``n·u`` is
    what summation order — the CPU kernel set — varies within). A round trip evaluates every map
    twice (forward, then inside the inverse), and the errors of successive layers add up, so the
    budget is ``4·√N·eps`` for ``N`` the summed ``n`` of all maps plus 4 elementwise operations per
    invertible layer (scale, shift, exp, clamp); the factor 4 covers the layers' gain (the
    log-scales are bounded by ``clamp_value``). Measured on default/AVX2/AVX-512 kernels: at most a
    quarter of this budget.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            n += m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            n += m.in_features
        elif isinstance(m, InvertibleConv1x1):
            n += m.log_s.numel() if hasattr(m, "log_s") else m.weight.shape[0]
        if isinstance(m, (ActNorm, AffineCoupling, InvertibleConv1x1)):
            n += 4
    return 4.0 * max(n, 1) ** 0.5 * torch.finfo(dtype).eps


@torch.no_grad()
def perturb(module, scale=0.1, seed=0):
    """Add N(0, scale²) noise to every parameter, so zero-initialised layers act."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * scale)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def cond(c_half, seed=0):
    torch.manual_seed(seed)
    return ConvConditioner(c_half, 2 * c_half, channels=8, layers=1, embedding_dim=8)


# ------------------------------------------------------------------ layer factories (C channels)
LAYERS = {
    "squeeze": lambda c, seed: Squeeze2x2(),
    "actnorm": lambda c, seed: ActNorm(c),
    "conv_lu": lambda c, seed: (torch.manual_seed(seed), InvertibleConv1x1(c, "lu"))[1],
    "conv_plain": lambda c, seed: (torch.manual_seed(seed), InvertibleConv1x1(c, "plain"))[1],
    "coupling_tanh": lambda c, seed: AffineCoupling(cond(c // 2, seed), "first", "tanh", 2.0),
    "coupling_hard": lambda c, seed: AffineCoupling(cond(c // 2, seed), "second", "hard", 0.3),
    "flow_block": lambda c, seed: FlowBlock(c, cond(c // 2, seed), cond(c // 2, seed + 1), "tanh", 2.0, "lu"),
}

NETWORKS = {  # name: (constructor kwargs, input shape (C, H, W))
    "conv_squeeze": (dict(in_channels=1, sample_size=8), (1, 8, 8)),
    "conv_plain": (dict(in_channels=4, sample_size=8), (4, 8, 8)),
    "conv_rgb_squeeze": (dict(in_channels=3, sample_size=8), (3, 8, 8)),
    "conv_forced_squeeze_hard": (dict(in_channels=2, sample_size=8, squeeze=True, clamp="hard", conv1x1="plain"), (2, 8, 8)),
    "unet_squeeze": (dict(in_channels=1, sample_size=16, conditioner_type="unet"), (1, 16, 16)),
    "unet_plain": (dict(in_channels=4, sample_size=8, conditioner_type="unet"), (4, 8, 8)),
}


def make_network(name, seed=0, dtype=torch.float64):
    kwargs, shape = NETWORKS[name]
    torch.manual_seed(seed)
    cfg = dict(num_blocks=2, conditioner_channels=8, conditioner_layers=1, time_embedding_dim=8)
    cfg.update(kwargs)
    return InvertibleNetwork(**cfg).to(dtype), shape


def layer_input(n=3, c=4, size=8, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size, size, generator=gen, dtype=torch.float64).to(dtype)
    ctx = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    return x, ctx


def roundtrip(module, x, ctx):
    with torch.no_grad():
        y, logdet = module(x, ctx)
        assert logdet.shape == (x.shape[0],)
        return module.inverse(y, ctx), y


# ------------------------------------------------------------------ exact inverses
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("state", ["fresh", "perturbed", "reloaded"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_roundtrip(kind, state, dtype):
    layer = LAYERS[kind](4, 0).to(dtype).eval()
    x, ctx = layer_input(dtype=dtype)
    if state != "fresh":
        perturb(layer, 0.1, seed=2)
    if state == "reloaded":
        fresh = LAYERS[kind](4, 7).to(dtype).eval()
        buf = io.BytesIO()
        torch.save(layer.state_dict(), buf)
        buf.seek(0)
        fresh.load_state_dict(torch.load(buf))
        with torch.no_grad():
            y_ref, ld_ref = layer(x, ctx)
            y_new, ld_new = fresh(x, ctx)
        assert torch.equal(y_ref, y_new) and torch.equal(ld_ref, ld_new)
        layer = fresh
    x_rec, y = roundtrip(layer, x, ctx)
    assert rel_err(x_rec, x) <= roundtrip_tol(layer, dtype)
    if state == "perturbed" and kind != "squeeze":
        assert rel_err(y, x) > 1e-3  # not trivially the identity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_network_roundtrip_perturbed_and_reloaded(name, dtype):
    g, shape = make_network(name, dtype=dtype)
    g.eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(3, *shape, generator=gen, dtype=torch.float64).to(dtype)
    for _ in range(2):  # fresh, then perturbed
        z = g(x, 1.0)
        assert z.shape == x.shape
        with torch.no_grad():
            assert rel_err(g.inverse(g(x, 1.0), 1.0), x) <= roundtrip_tol(g, dtype)
            assert rel_err(g.inverse(g(x, 0.0), 0.0), x) <= roundtrip_tol(g, dtype)
        perturb(g, 0.05, seed=4)
    fresh, _ = make_network(name, seed=9, dtype=dtype)
    fresh.load_state_dict(g.state_dict())
    fresh.eval()
    with torch.no_grad():
        z, ld = g(x, 1.0, return_logdet=True)
        z2, ld2 = fresh(x, 1.0, return_logdet=True)
        assert torch.equal(z, z2) and torch.equal(ld, ld2)
        assert torch.equal(g.inverse(z, 1.0), fresh.inverse(z, 1.0))
        assert rel_err(fresh.inverse(z2, 1.0), x) <= roundtrip_tol(g, dtype)


@settings(max_examples=15, deadline=None)
@given(
    c=st.sampled_from([2, 4, 6]),
    h=st.integers(1, 4).map(lambda k: 2 * k),
    w=st.integers(1, 4).map(lambda k: 2 * k),
    n=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_cheap_layers_roundtrip_any_shape(c, h, w, n, seed):
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    for layer in (Squeeze2x2(), ActNorm(c), InvertibleConv1x1(c, "lu"), InvertibleConv1x1(c, "plain")):
        layer = layer.double()
        perturb(layer, 0.2, seed=seed)
        x_rec, _ = roundtrip(layer, x, None)
        assert rel_err(x_rec, x) <= 1e-12


# ------------------------------------------------------------------ log-determinants
def jacobian_logdet(fn, x):
    """log|det J| of ``fn`` at ``x`` from the dense autograd Jacobian (vmap-batched for larger D)."""
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.view_as(x)).flatten(), x.flatten(), vectorize=x.numel() > 64)
    return torch.linalg.slogdet(jac).logabsdet


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_logdet_matches_jacobian(kind):
    layer = LAYERS[kind](2, 0).double().eval()
    perturb(layer, 0.3, seed=5)
    x, ctx = layer_input(n=1, c=2, size=4)
    _, logdet = layer(x, ctx)
    expected = jacobian_logdet(lambda v: layer(v, ctx)[0], x)
    torch.testing.assert_close(logdet[0], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [dict(in_channels=2, sample_size=4), dict(in_channels=2, sample_size=4, squeeze=True, clamp="hard", conv1x1="plain"),
     dict(in_channels=1, sample_size=4), dict(in_channels=2, sample_size=8, conditioner_type="unet")],
    ids=["conv", "conv_squeeze_hard_plain", "conv_1ch", "unet"],
)
def test_network_logdet_matches_jacobian(kwargs):
    torch.manual_seed(0)
    g = InvertibleNetwork(num_blocks=2, conditioner_channels=8, conditioner_layers=1, time_embedding_dim=8, **kwargs)
    g = g.double().eval()
    perturb(g, 0.05, seed=6)
    c, s = kwargs["in_channels"], kwargs["sample_size"]
    x = torch.randn(2, c, s, s, dtype=torch.float64)
    ctx = torch.tensor([0.0, 1.0], dtype=torch.float64)
    _, logdet = g(x, ctx, return_logdet=True)
    for i in range(2):
        expected = jacobian_logdet(lambda v: g(v, ctx[i : i + 1]), x[i : i + 1])
        torch.testing.assert_close(logdet[i], expected, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ role input, batches, memory format
@pytest.mark.parametrize("name", ["conv_squeeze", "unet_plain"])
def test_ctx_conditions_and_batch_independence(name):
    g, shape = make_network(name)
    g.eval()
    perturb(g, 0.05, seed=7)
    x = torch.rand(4, *shape, dtype=torch.float64)
    ctx = torch.tensor([0.0, 1.0, 0.5, 1.0], dtype=torch.float64)
    with torch.no_grad():
        z0, z1 = g(x, 0.0), g(x, 1.0)
        assert (z0 - z1).abs().max() > 1e-3  # the role input matters
        assert (g.inverse(z1, 0.0) - x).abs().max() > 1e-3  # decoding with the wrong role does not invert
        torch.testing.assert_close(g(x), z0, rtol=0, atol=0)  # None means role 0
        z = g(x, ctx)
        for i in range(4):
            zi, ldi = g(x[i : i + 1], ctx[i : i + 1], return_logdet=True)
            torch.testing.assert_close(z[i : i + 1], zi, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(g.inverse(z[i : i + 1], float(ctx[i])), x[i : i + 1], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(z[1], z1[1], rtol=1e-12, atol=1e-12)


def test_channels_last_and_gradients():
    g, shape = make_network("conv_plain", dtype=torch.float32)
    perturb(g, 0.05, seed=8)
    g.eval()
    x = torch.rand(2, *shape)
    z = g(x, 1.0)
    z_cl = g(x.to(memory_format=torch.channels_last), 1.0)
    torch.testing.assert_close(z_cl, z, rtol=1e-5, atol=1e-5)
    g.inverse(z.detach(), 1.0).square().sum().backward()  # the training loss differentiates g⁻¹
    conv = g.blocks[0].conv1x1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (conv.lower, conv.upper, conv.log_s))


# ------------------------------------------------------------------ layer specifics
def test_squeeze_layout():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, logdet = Squeeze2x2()(x)
    assert y.shape == (1, 4, 2, 2) and logdet.tolist() == [0.0]
    # y[4c + 2i + j, h, w] = x[c, 2h + i, 2w + j]
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert y[0, 3, 1, 1].item() == x[0, 0, 3, 3].item()


def test_lu_conv_factors():
    torch.manual_seed(0)
    conv = InvertibleConv1x1(6, "lu").double()
    w = conv.matrix()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-6)  # orthogonal (fp32) init
    perturb(conv, 0.3, seed=1)
    w = conv.matrix()
    torch.testing.assert_close(conv.inverse_matrix() @ w, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(conv.log_abs_det(), torch.linalg.slogdet(w).logabsdet, rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(conv(x)[0], torch.einsum("oi,nihw->nohw", w, x), rtol=1e-12, atol=1e-12)


def test_fresh_couplings_are_identity():
    block = FlowBlock(4, cond(2), cond(2, 1))
    x, ctx = layer_input(dtype=torch.float32)
    for coupling in (block.coupling_f, block.coupling_g):
        y, logdet = coupling(x, ctx)
        assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(3))


def test_coupling_formula_shift_before_scale():
    """y₁ = (x₁ + t(x₂))·exp(s(x₂)) and y₂ = x₂, with s the tanh- or hard-clamped raw log-scale."""
    conditioner = cond(2)
    perturb(conditioner, 0.5, seed=3)
    x, ctx = layer_input(dtype=torch.float32)
    shift, raw = conditioner(x[:, 2:], ctx).chunk(2, dim=1)
    for clamp, s in (("tanh", 0.7 * torch.tanh(raw / 0.7)), ("hard", raw.clamp(-0.7, 0.7))):
        y, logdet = AffineCoupling(conditioner, "first", clamp, 0.7)(x, ctx)
        torch.testing.assert_close(y[:, :2], (x[:, :2] + shift) * torch.exp(s))
        torch.testing.assert_close(y[:, 2:], x[:, 2:], rtol=0, atol=0)
        torch.testing.assert_close(logdet, s.flatten(1).sum(1))


def test_actnorm_data_dependent_init_and_reload():
    g, shape = make_network("conv_squeeze", dtype=torch.float32)
    x = 3.0 * torch.rand(16, *shape) + 2.0
    act = g.blocks[0].actnorm
    assert "blocks.0.actnorm.initialized" in g.state_dict()
    g.eval()
    g(x)  # eval mode: no initialisation
    assert act.initialized.item() == 0 and act.bias.abs().sum() == 0
    g.train()
    g(x)
    assert act.initialized.item() == 1
    y, _ = act(torch.nn.functional.pixel_unshuffle(x, 2))  # block 0's input is the squeezed image
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(4), rtol=0, atol=1e-4)
    state = {k: v.clone() for k, v in g.state_dict().items()}
    g(10 * x)  # later batches do not re-initialise
    torch.testing.assert_close(act.bias, state["blocks.0.actnorm.bias"], rtol=0, atol=0)
    fresh, _ = make_network("conv_squeeze", seed=5, dtype=torch.float32)
    fresh.load_state_dict(state)
    fresh.train()
    with torch.no_grad():
        z = fresh(10 * x - 4)  # training mode, new data: a loaded layer keeps its parameters
    for k in state:
        assert torch.equal(fresh.state_dict()[k], state[k]), k
    g.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), g(x), rtol=0, atol=0)
    assert z.shape == x.shape


def test_actnorm_fp64_cast_keeps_flag():
    act = ActNorm(3).train()
    act(torch.randn(4, 3, 2, 2))
    act = act.double()
    assert act.initialized.dtype == torch.uint8 and act.initialized.item() == 1
    assert act.bias.dtype == torch.float64


# ------------------------------------------------------------------ validation and registry
def test_bad_inputs():
    g, _ = make_network("conv_squeeze")
    for bad in (torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 6), torch.zeros(1, 8, 8)):
        with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\).*1×8×8"):
            g(bad.double())
        with pytest.raises(ValueError, match="1×8×8"):
            g.inverse(bad.double())
    with pytest.raises(ValueError, match="ctx"):
        g(torch.zeros(2, 1, 8, 8, dtype=torch.float64), torch.zeros(3))
    with pytest.raises(ValueError, match="H = 5, W = 4"):
        Squeeze2x2()(torch.zeros(1, 1, 5, 4))


def test_bad_configurations():
    with pytest.raises(ValueError, match="conv.*unet"):
        InvertibleNetwork(in_channels=1, sample_size=8, conditioner_type="banana")
    with pytest.raises(ValueError, match="odd channel count C = 3 needs squeeze"):
        InvertibleNetwork(in_channels=3, sample_size=8, squeeze=False)
    with pytest.raises(ValueError, match="even sample_size"):
        InvertibleNetwork(in_channels=1, sample_size=7)
    with pytest.raises(ValueError, match="sample size ≥ 8"):
        InvertibleNetwork(in_channels=1, sample_size=8, conditioner_type="unet")  # 4×4 after the squeeze
    with pytest.raises(ValueError, match="lu, plain"):
        InvertibleConv1x1(4, "qr")
    with pytest.raises(ValueError, match="tanh, hard"):
        InvertibleNetwork(in_channels=2, sample_size=8, clamp="soft")
    with pytest.raises(ValueError, match="conv.*unet"):
        build_conditioner("nope", 2, 4, 8, 8, 1)


def test_registry_extension(monkeypatch):
    """A new conditioner kind plugs in through the registry alone."""
    made = []

    def factory(in_channels, out_channels, sample_size, channels, layers, embedding_dim, scale=1.0):
        made.append((in_channels, out_channels, sample_size, scale))
        return ConvConditioner(in_channels, out_channels, channels, layers, embedding_dim)

    monkeypatch.setitem(CONDITIONERS, "custom", factory)
    g = InvertibleNetwork(1, 8, num_blocks=1, conditioner_type="custom", conditioner_channels=8,
                          conditioner_layers=0, conditioner_kwargs=dict(scale=2.0))
    assert made == [(2, 4, 4, 2.0)] * 2
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(g.inverse(g(x, 1.0), 1.0), x)


def test_sinusoidal_embedding():
    t = torch.tensor([0.0, 1.0, 250.0], dtype=torch.float64)
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (3, 8) and emb.dtype == torch.float64
    assert emb[0].tolist() == [1.0] * 4 + [0.0] * 4
    torch.testing.assert_close(emb[1, 0], torch.cos(torch.tensor(1.0, dtype=torch.float64)))
    torch.testing.assert_close(emb[:, :4].square() + emb[:, 4:].square(), torch.ones(3, 4, dtype=torch.float64))
    odd = sinusoidal_embedding(torch.arange(3), 5)
    assert odd.shape == (3, 5) and odd.dtype == torch.get_default_dtype() and odd[:, -1].abs().sum() == 0
    with pytest.raises(ValueError, match=r"\(N,\)"):
        sinusoidal_embedding(torch.zeros(2, 1), 4)


# ------------------------------------------------------------------ every CPU kernel set
def test_float32_roundtrips_on_every_cpu_kernel_set():
    """The float32 round trips above, in a fresh interpreter per ATen CPU kernel set (summation orders
    differ between them), the interpreters side by side; the kernel set this process runs is the one the tests
    above already used, so it gets none, and a kernel set this CPU lacks is reported by the interpreter (it runs
    another) and not counted."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import torch, sys\n"
        "print(torch.backends.cpu.get_cpu_capability())\n"
        "from tests.test_invertible import NETWORKS, LAYERS, test_network_roundtrip_perturbed_and_reloaded, test_layer_roundtrip\n"
        "for name in sorted(NETWORKS): test_network_roundtrip_perturbed_and_reloaded(name, torch.float32)\n"
        "for kind in sorted(LAYERS): test_layer_roundtrip(kind, 'perturbed', torch.float32)\n"
        "print('OK')\n"
    )
    root = Path(__file__).resolve().parents[1]
    runs = {}
    native = torch.backends.cpu.get_cpu_capability().lower()
    for capability in [c for c in ("default", "avx2", "avx512") if c != native]:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
        runs[capability] = subprocess.Popen([sys.executable, "-c", script], cwd=root, env=env, text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ran = []
    for capability, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        lines = out.split()
        assert proc.returncode == 0 and lines[-1:] == ["OK"], f"{capability}: {err[-3000:]}"
        if lines[0].lower() == capability:
            ran.append(capability)
    assert "default" in ran, ran

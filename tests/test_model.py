"""`LinearizerModel`: linearity in the induced spaces and every algebraic method, checked against
independent fp64 dense linear algebra on tiny models whose weights are all randomly perturbed."""

import pytest
import torch

from diffusers_linearizer import LinearizerModel

from .utils import perturb_all, tiny_model

torch.set_default_dtype(torch.float32)

TIME_CORES = ("time_lowrank", "shared_basis")
ALL_CORES = ("dense", "lowrank") + TIME_CORES


def t_for(model):
    return 0.37 if model.time_dependent else None


def dense_core(model, t=None):
    """A_t as an fp64 dense matrix, built from the core's parameters (not from operator algebra)."""
    core = model.core
    if model.config.core_type == "dense":
        return core.weight.detach().double()
    if model.config.core_type == "lowrank":
        D = core.dim
        return core.scale.detach().double() * torch.eye(D, dtype=torch.float64) + core.U.double() @ core.V.double().T
    tt = torch.tensor([t], dtype=next(core.parameters()).dtype)
    with torch.no_grad():
        if model.config.core_type == "time_lowrank":
            a, u, v = core.factors(tt)
            return a[0].double() * torch.eye(core.dim, dtype=torch.float64) + u[0].double() @ v[0].double().T
        a, s = core.factors(tt)
        U, V = core.U.detach().double(), core.V.detach().double()
        return a[0].double() * torch.eye(core.dim, dtype=torch.float64) + U @ s[0].double() @ V.T


def f(model, x, t=None):
    return model(x, t=t).sample


@pytest.fixture(params=ALL_CORES)
def model64(request):
    torch.manual_seed(0)
    m = tiny_model(core_type=request.param).double()
    perturb_all(m, 0.05, seed=1)
    return m.eval()


def test_forward_matches_definition(model64):
    """f(x) = g_y⁻¹(A g_x(x)) with A a dense fp64 matrix built from the parameters."""
    t = t_for(model64)
    x = torch.rand(3, *model64.sample_shape, dtype=torch.float64)
    zx = model64.encode(x, "x").flatten(1)
    ref = model64.decode((zx @ dense_core(model64, t).T).view_as(x), "y")
    torch.testing.assert_close(f(model64, x, t), ref, rtol=1e-10, atol=1e-10)


def test_superposition(model64):
    """f(a⊙x₁ ⊕ b⊙x₂) = a⊙f(x₁) ⊕ b⊙f(x₂) in the induced spaces (fp64)."""
    t = t_for(model64)
    x1, x2 = torch.rand(2, 2, *model64.sample_shape, dtype=torch.float64)
    a, b = 0.7, -1.3
    m = model64
    lhs = f(m, m.induced_add(m.induced_scale(a, x1, "x"), m.induced_scale(b, x2, "x"), "x"), t)
    rhs = m.induced_add(m.induced_scale(a, f(m, x1, t), "y"), m.induced_scale(b, f(m, x2, t), "y"), "y")
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)
    # and f is genuinely non-linear in the Euclidean sense
    assert (f(m, x1 + x2, t) - f(m, x1, t) - f(m, x2, t)).abs().max() > 1e-4


def test_moore_penrose_identities(model64):
    t = t_for(model64)
    fp = model64.pinv(t=t)
    x = torch.rand(2, *model64.sample_shape, dtype=torch.float64)
    y = torch.rand(2, *model64.sample_shape, dtype=torch.float64)
    fx = f(model64, x, t)
    torch.testing.assert_close(f(model64, f(fp, fx), t), fx, rtol=1e-8, atol=1e-8)  # f f† f = f
    fpy = f(fp, y)
    torch.testing.assert_close(f(fp, f(model64, fpy, t)), fpy, rtol=1e-8, atol=1e-8)  # f† f f† = f†
    # the core is the Moore–Penrose inverse of A (independent torch.linalg.pinv)
    torch.testing.assert_close(dense_core(fp), torch.linalg.pinv(dense_core(model64, t)), rtol=1e-8, atol=1e-10)


def test_transpose_adjoint(model64):
    """⟨f(x), y⟩_y = ⟨x, fᵀ(y)⟩_x."""
    t = t_for(model64)
    fT = model64.transpose(t=t)
    x = torch.rand(3, *model64.sample_shape, dtype=torch.float64)
    y = torch.rand(3, *model64.sample_shape, dtype=torch.float64)
    lhs = model64.induced_inner(f(model64, x, t), y, "y")
    rhs = model64.induced_inner(x, f(fT, y), "x")
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dense_core(fT), dense_core(model64, t).T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("core_type", ["lowrank", "time_lowrank"])
def test_compose(core_type):
    """core of f₂∘f₁ is A₂A₁, and the composite computes f₂(f₁(x))."""
    torch.manual_seed(3)
    m1 = tiny_model(core_type=core_type, role_x=0.0, role_y=0.0).double()
    perturb_all(m1, 0.05, seed=4)
    m2 = tiny_model(core_type=core_type, role_x=0.0, role_y=0.0).double()
    m2.load_state_dict(m1.state_dict())
    perturb_all(m2.core, 0.05, seed=5)  # same g (shared middle space), different core
    m1.eval(), m2.eval()
    t = t_for(m1)
    comp = m2.compose(m1, t=t)
    torch.testing.assert_close(dense_core(comp), dense_core(m2, t) @ dense_core(m1, t), rtol=1e-10, atol=1e-12)
    x = torch.rand(2, *m1.sample_shape, dtype=torch.float64)
    torch.testing.assert_close(f(comp, x), f(m2, f(m1, x, t), t), rtol=1e-9, atol=1e-9)


def test_compose_mismatched_spaces():
    torch.manual_seed(0)
    m1, m2 = tiny_model(), tiny_model()
    perturb_all(m1, 0.05, seed=1)
    with pytest.raises(ValueError, match="g_y"):
        m2.compose(m1)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_power(n):
    torch.manual_seed(0)
    m = tiny_model(core_type="lowrank", role_x=0.5, role_y=0.5).double()
    perturb_all(m, 0.05, seed=2)
    m.eval()
    p = m.power(n)
    torch.testing.assert_close(
        dense_core(p), torch.linalg.matrix_power(dense_core(m), n), rtol=1e-10, atol=1e-10
    )
    x = torch.rand(2, *m.sample_shape, dtype=torch.float64)
    y = x
    for _ in range(n):
        y = f(m, y)
    torch.testing.assert_close(f(p, x), y, rtol=1e-8, atol=1e-8)


def test_power_requires_same_g():
    m = tiny_model(core_type="lowrank")  # role_x = 1, role_y = 0: g_x ≠ g_y
    with pytest.raises(ValueError, match="g_x ≡ g_y"):
        m.power(2)


@pytest.mark.parametrize("core_type", ["lowrank", "dense"])
def test_svd_reconstructs_f(core_type):
    torch.manual_seed(0)
    m = tiny_model(core_type=core_type).double()
    perturb_all(m, 0.05, seed=6)
    m.eval()
    D = m.latent_dim
    out = m.svd(k=D)
    A = dense_core(m)
    torch.testing.assert_close(out.singular_values, torch.linalg.svdvals(A), rtol=1e-10, atol=1e-10)
    x = torch.rand(2, *m.sample_shape, dtype=torch.float64)
    zx = m.encode(x, "x").flatten(1)
    U, S, V = out.left_latents.T, out.singular_values, out.right_latents.T
    rec = m.decode(((zx @ V) * S @ U.T).view_as(x), "y")
    torch.testing.assert_close(rec, f(m, x), rtol=1e-9, atol=1e-9)
    # the data-space singular vectors are the latent ones mapped through g⁻¹
    torch.testing.assert_close(m.encode(out.right_vectors, "x").flatten(1), out.right_latents, rtol=1e-9, atol=1e-9)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = tiny_model(core_type="time_lowrank")
    perturb_all(m, 0.05, seed=7)
    x = torch.rand(2, *m.sample_shape)
    m(x, t=0.3)  # ActNorm data-dependent init happens here in training mode
    m.eval()
    before = f(m, x, 0.3)
    m.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").exists()
    m2 = LinearizerModel.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(f(m2, x, 0.3), before)
    m16 = LinearizerModel.from_pretrained(tmp_path / "m", torch_dtype=torch.float16)
    assert m16.dtype == torch.float16


def test_derived_models_save(tmp_path):
    torch.manual_seed(0)
    m = tiny_model(core_type="lowrank").double()
    perturb_all(m, 0.05, seed=8)
    fp = m.eval().pinv()
    fp.save_pretrained(tmp_path / "pinv")
    fp2 = LinearizerModel.from_pretrained(tmp_path / "pinv", torch_dtype=torch.float64)
    y = torch.rand(2, *m.sample_shape, dtype=torch.float64)
    assert torch.equal(f(fp2.eval(), y), f(fp.eval(), y))


def test_encode_decode_inverse_fp64(model64):
    x = torch.rand(3, *model64.sample_shape, dtype=torch.float64)
    for space in ("x", "y"):
        rec = model64.decode(model64.encode(x, space), space)
        assert ((rec - x).norm() / x.norm()) < 1e-10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(core_type="banana"), "dense, lowrank, time_lowrank, shared_basis"),
        (dict(conditioner_type="banana"), "conv"),
        (dict(core_type="lowrank", core_rank=10_000), "exceeds the latent dimension"),
        (dict(in_channels=1, squeeze=False), "squeeze"),
        (dict(sample_size=7), "7"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(**kwargs)


def test_bad_input_shape():
    m = tiny_model()
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        m(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="time-dependent"):
        tiny_model(core_type="time_lowrank")(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="'x' or 'y'"):
        m.encode(torch.rand(2, 1, 8, 8), space="z")

"""CircularConvolution against the dense circulant matrix built independently (float64): apply, transpose,
inverse, pseudo-inverse, singular values and vectors, condition number, log-determinant, products, sums, powers,
and its meeting with other operator kinds."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffusers_linearizer.operators import CircularConvolution, DenseOperator, IdentityPlusLowRank

CASES = [  # (channels C₀, H, W, space-to-depth factor, kernel size, channel mixing)
    (2, 4, 6, 1, 3, True),
    (1, 4, 6, 2, 3, True),
    (3, 5, 5, 1, 3, False),
    (1, 6, 4, 2, 1, True),
]


def dense_circulant(kernel, channels, H, W, factor):
    """The matrix of x ↦ (unshuffle, circular F.conv2d, shuffle) by its columns (no FFT involved)."""
    D = channels * H * W
    k = kernel if kernel.ndim == 4 else torch.diag_embed(kernel.permute(1, 2, 0)).permute(2, 3, 0, 1)
    eye = torch.eye(D, dtype=torch.float64).view(D, channels, H, W)
    y = F.pixel_unshuffle(eye, factor) if factor > 1 else eye
    p = k.shape[-1] // 2
    y = F.conv2d(F.pad(y, (p, p, p, p), mode="circular") if p else y, k)
    y = F.pixel_shuffle(y, factor) if factor > 1 else y
    return y.reshape(D, D).T  # column j is M e_j


def make(case, seed=0):
    channels, H, W, factor, size, mixing = case
    c = channels * factor * factor
    gen = torch.Generator().manual_seed(seed)
    shape = (c, c, size, size) if mixing else (c, size, size)
    kernel = torch.randn(shape, generator=gen, dtype=torch.float64)
    if mixing:
        kernel[:, :, size // 2, size // 2] += 2 * torch.eye(c, dtype=torch.float64)
    else:
        kernel[:, size // 2, size // 2] += 2
    op = CircularConvolution.from_kernel(kernel, (H, W), channels, factor)
    return op, dense_circulant(kernel, channels, H, W, factor)


@pytest.mark.parametrize("case", CASES)
def test_apply_transpose_inverse_pinv_against_dense(case):
    op, M = make(case)
    assert op.dim == M.shape[0]
    x = torch.randn(3, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(op.apply(x), x @ M.T, atol=1e-12)
    assert torch.allclose(op.to_dense(), M, atol=1e-12)
    assert torch.allclose(op.T.to_dense(), M.T, atol=1e-12)
    assert torch.allclose(op.inverse().to_dense(), torch.linalg.inv(M), atol=1e-10)
    assert torch.allclose(op.solve(x), torch.linalg.solve(M, x.T).T, atol=1e-10)
    assert torch.allclose(op.pinv().to_dense(), torch.linalg.pinv(M), atol=1e-10)
    images = x.view(3, op.channels, *op.size)
    assert torch.allclose(op.apply_images(op.apply_images(images), inverse=True), images, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_svd_cond_slogdet_against_dense(case):
    op, M = make(case)
    S_ref = torch.linalg.svdvals(M)
    assert torch.allclose(op.singular_values(), S_ref, atol=1e-10)
    assert math.isclose(op.cond(), float(S_ref[0] / S_ref[-1]), rel_tol=1e-9)
    U, S, V = op.svd()
    assert torch.allclose(S, S_ref, atol=1e-10)
    assert torch.allclose(U @ torch.diag(S) @ V.T, M, atol=1e-10)
    eye = torch.eye(op.dim, dtype=torch.float64)
    assert torch.allclose(U.T @ U, eye, atol=1e-10) and torch.allclose(V.T @ V, eye, atol=1e-10)
    Uk, Sk, Vk = op.svd(3)
    assert torch.allclose(Sk, S_ref[:3], atol=1e-10) and torch.allclose(M @ Vk, Uk * Sk, atol=1e-10)
    sign, logabs = op.slogdet()
    ref_sign, ref_logabs = torch.linalg.slogdet(M)
    assert float(sign) == float(ref_sign) and math.isclose(float(logabs), float(ref_logabs), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("case", CASES)
def test_products_sums_powers_against_dense(case):
    (a, A), (b, B) = make(case, 0), make(case, 1)
    eye = torch.eye(a.dim, dtype=torch.float64)
    assert isinstance(a @ b, CircularConvolution)
    assert torch.allclose((a @ b).to_dense(), A @ B, atol=1e-10)
    assert torch.allclose((0.3 * a + b * 0.7).to_dense(), 0.3 * A + 0.7 * B, atol=1e-12)
    assert torch.allclose((a - b).to_dense(), A - B, atol=1e-12)
    assert torch.allclose(a.add_identity(-0.5).to_dense(), A - 0.5 * eye, atol=1e-12)
    assert torch.allclose(a.power(3).to_dense(), torch.linalg.matrix_power(A, 3), atol=1e-8)
    assert torch.allclose(a.power(0).to_dense(), eye)


def test_singular_kernel_pinv_and_refused_inverse():
    kernel = torch.zeros(1, 3, 3, dtype=torch.float64)  # a difference kernel: zero response at frequency 0
    kernel[0, 1, 1], kernel[0, 1, 2] = 1.0, -1.0
    op = CircularConvolution.from_kernel(kernel, (4, 4), 1)
    M = dense_circulant(kernel, 1, 4, 4, 1)
    assert op.cond() == math.inf or op.cond() > 1e15
    assert torch.allclose(op.pinv().to_dense(), torch.linalg.pinv(M), atol=1e-10)
    with pytest.raises(ValueError, match="condition number"):
        op.inverse()


def test_meets_other_kinds_as_dense_and_float32():
    op, M = make(CASES[0])
    D = op.dim
    gen = torch.Generator().manual_seed(2)
    low = IdentityPlusLowRank(0.5, torch.randn(D, 2, generator=gen, dtype=torch.float64),
                              torch.randn(D, 2, generator=gen, dtype=torch.float64))
    L = low.to_dense()
    assert torch.allclose((op @ low).to_dense(), M @ L, atol=1e-10)
    assert torch.allclose((low @ op).to_dense(), L @ M, atol=1e-10)
    assert torch.allclose((op + DenseOperator(L)).to_dense(), M + L, atol=1e-12)
    small = op.to(dtype=torch.float32)
    assert small.dtype == torch.float32
    x = torch.randn(2, D, generator=gen)
    assert torch.allclose(small.apply(x), (x.double() @ M.T).float(), atol=1e-4)
    assert op.to(dtype=torch.float16).dtype == torch.float32  # half types work in float32


def test_any_grid_and_bad_sizes():
    kernel = torch.randn(4, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for size in ((2, 2), (6, 10), (8, 4)):
        op = CircularConvolution.from_kernel(kernel, size, 1, 2)
        assert torch.allclose(op.to_dense(), dense_circulant(kernel, 1, *size, 2), atol=1e-12)
    with pytest.raises(ValueError, match="multiples of 2"):
        CircularConvolution.from_kernel(kernel, (5, 4), 1, 2)
    with pytest.raises(ValueError, match="do not match|dimensions"):
        _ = CircularConvolution.from_kernel(kernel, (4, 4), 1, 2) @ CircularConvolution.from_kernel(kernel, (4, 6), 1, 2)

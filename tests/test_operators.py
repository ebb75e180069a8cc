"""Structured operators against independent fp64 dense linear algebra (torch.linalg, plain matmul).

Every reference is built from the raw factors (``c·I + U Vᵀ``, ``a·I + U X Vᵀ``, the dense matrix) and
``torch.linalg``; never from the operators' own output.

Past 400 lines on purpose: one module per operator family's contract (three classes × the same algebra, each
case against its own dense reference), so a change to the operator algebra is checked in one place.
"""

from collections import namedtuple

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from diffusers_linearizer.operators import DenseOperator, IdentityPlusLowRank, LinearOperator, SharedBasisOperator

F64 = torch.float64
EPS = torch.finfo(F64).eps
FAST = settings(max_examples=30, deadline=None)

Case = namedtuple("Case", "kind c U V")


def rand(g, *shape):
    return torch.randn(*shape, generator=g, dtype=F64)


def eye(D):
    return torch.eye(D, dtype=F64)


def dense(case):
    """``c·I + U Vᵀ`` by plain fp64 arithmetic."""
    return case.c * eye(case.U.shape[0]) + case.U @ case.V.T


def lowrank(case):
    return IdentityPlusLowRank(case.c, case.U, case.V)


def factors(g, D, R, inner=None):
    """Random ``U, V`` (D, R); products of thinner matrices (rank ≤ ``inner``) when ``inner`` is given."""
    if inner is None:
        return rand(g, D, R) / D**0.5, rand(g, D, R) / D**0.5
    return (rand(g, D, inner) @ rand(g, inner, R)) / D, (rand(g, D, inner) @ rand(g, inner, R)) / D


@st.composite
def cases(draw, kinds=("generic", "zero_c", "deficient", "singular")):
    """``c·I + U Vᵀ`` with D in 1..24, R in 0..30 (so R ≥ D occurs): generic, c = 0, rank-deficient
    factors, or singular with c ≠ 0 (U, V built so that M x = 0 for some x ≠ 0)."""
    D, R = draw(st.integers(1, 24)), draw(st.integers(0, 30))
    kind = draw(st.sampled_from(kinds))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    c = draw(st.sampled_from([-1.0, 1.0])) * draw(st.floats(0.25, 2.0))
    if kind == "zero_c":
        c = 0.0
    if kind == "deficient":
        U, V = factors(g, D, R, inner=draw(st.integers(0, max(min(D, R) - 1, 0))))
        c = draw(st.sampled_from([0.0, c]))
    else:
        U, V = factors(g, D, R)
    if kind == "singular" and R > 0:  # x = U y with Vᵀ x = −c·y  ⇒  M x = c·U y − c·U y = 0
        y = rand(g, R)
        x = U @ y
        V = V - torch.outer(x, x @ V + c * y) / (x @ x)
    return Case(kind, c, U, V)


def spectral_gap(S, hi=1e-7, lo=1e-11):
    """True when every singular value is clearly kept (> hi·σ₀) or clearly zero (< lo·σ₀)."""
    return bool(((S > hi * S[0]) | (S < lo * S[0])).all())


def close(actual, expected, atol):
    torch.testing.assert_close(actual, expected, rtol=0, atol=float(atol))


# ------------------------------------------------------------------------------------ construction
@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: IdentityPlusLowRank(1.0, torch.zeros(4, 2), torch.zeros(4, 3)), "same shape"),
        (lambda: IdentityPlusLowRank(1.0, torch.zeros(4), torch.zeros(4)), "2-D"),
        (lambda: IdentityPlusLowRank(torch.ones(2), torch.zeros(4, 2), torch.zeros(4, 2)), "0-dim"),
        (lambda: IdentityPlusLowRank("x", torch.zeros(4, 2), torch.zeros(4, 2)), "real number"),
        (lambda: IdentityPlusLowRank(1.0, torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2)), "floating"),
        (lambda: SharedBasisOperator(1.0, torch.zeros(3, 3), torch.zeros(4, 2), torch.zeros(4, 2)), r"\(R, R\)"),
        (lambda: SharedBasisOperator(1.0, torch.zeros(2, 2), torch.zeros(4, 2), torch.zeros(5, 2)), "same shape"),
        (lambda: SharedBasisOperator(1.0, torch.zeros(2, 2), torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(3, 3)),
         "gram"),
        (lambda: DenseOperator(torch.zeros(3, 4)), "square"),
        (lambda: DenseOperator(torch.zeros(3)), "2-D"),
    ],
)
def test_bad_shapes(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_errors_of_use():
    op = IdentityPlusLowRank(1.0, torch.ones(5, 2), torch.ones(5, 2))
    with pytest.raises(TypeError, match="apply"):
        op @ torch.ones(5, 5)
    with pytest.raises(TypeError, match="apply"):
        torch.ones(5, 5) @ op
    with pytest.raises(ValueError, match=r"\(\.\.\., 5\)"):
        op.apply(torch.ones(3, 4))
    with pytest.raises(ValueError, match="dimensions"):
        op @ IdentityPlusLowRank.identity(4)
    for n in (-1, 1.5, True):
        with pytest.raises(ValueError, match="n ≥ 0"):
            op.power(n)
    with pytest.raises(ValueError, match="k"):
        op.svd(-1)


@pytest.mark.parametrize("kind", ["lowrank", "shared", "dense"])
def test_to_dense_guard(kind):
    D = 10
    op = {
        "lowrank": IdentityPlusLowRank(1.0, torch.ones(D, 2), torch.ones(D, 2)),
        "shared": SharedBasisOperator(1.0, torch.eye(2), torch.ones(D, 2), torch.ones(D, 2)),
        "dense": DenseOperator(torch.eye(D)),
    }[kind]
    with pytest.raises(ValueError, match=r"D = 10.*max_dim = 5.*to_dense\(max_dim=10\)"):
        op.to_dense(max_dim=5)
    assert op.to_dense(max_dim=10).shape == (D, D)


@pytest.mark.parametrize("cls", [IdentityPlusLowRank, SharedBasisOperator, DenseOperator])
def test_identity(cls):
    op = cls.identity(7, dtype=F64)
    assert isinstance(op, LinearOperator) and op.dim == 7 and op.dtype == F64
    assert torch.equal(op.to_dense(), eye(7))
    assert torch.equal(op.apply(torch.arange(7.0, dtype=F64)), torch.arange(7.0, dtype=F64))


# -------------------------------------------------------------------------------------- algebra
@FAST
@given(case=cases(), seed=st.integers(0, 2**31 - 1))
def test_apply(case, seed):
    M, D = dense(case), case.U.shape[0]
    ops = [lowrank(case), DenseOperator(M)]
    X = torch.randn(case.U.shape[1], case.U.shape[1], generator=torch.Generator().manual_seed(seed), dtype=F64)
    ops.append(SharedBasisOperator(case.c, X, case.U, case.V))
    refs = [M, M, case.c * eye(D) + case.U @ X @ case.V.T]
    z = torch.randn(2, 3, D, generator=torch.Generator().manual_seed(seed), dtype=F64)
    for op, ref in zip(ops, refs):
        assert op.apply(z).shape == (2, 3, D)
        close(op.apply(z), z @ ref.T, 1e-12 * (1 + ref.abs().sum()))
        close(op.apply(z[0, 0]), ref @ z[0, 0], 1e-12 * (1 + ref.abs().sum()))
        assert op.apply(z.float()).dtype == F64  # promoted to the wider dtype


def five_operators(g, D, R):
    """Low-rank, two shared-basis on one basis, one on another basis, dense — and their dense matrices."""
    U, V = factors(g, D, R)
    U2, V2 = factors(g, D, R)
    Ub, Vb = factors(g, D, R)
    gram = Vb.T @ Ub
    X, Y, Z = (rand(g, R, R) / (R + 1) ** 0.5 for _ in range(3))
    Dm = rand(g, D, D) / D**0.5
    ops = [
        IdentityPlusLowRank(0.7, U, V),
        SharedBasisOperator(-0.4, X, Ub, Vb, gram=gram),
        SharedBasisOperator(1.3, Y, Ub, Vb, gram=gram),
        SharedBasisOperator(0.0, Z, U2, V2),
        DenseOperator(Dm),
    ]
    refs = [
        0.7 * eye(D) + U @ V.T,
        -0.4 * eye(D) + Ub @ X @ Vb.T,
        1.3 * eye(D) + Ub @ Y @ Vb.T,
        U2 @ Z @ V2.T,
        Dm,
    ]
    return ops, refs


def expected_class(x, y):
    if isinstance(x, DenseOperator) or isinstance(y, DenseOperator):
        return DenseOperator
    if isinstance(x, SharedBasisOperator) and isinstance(y, SharedBasisOperator) and x.U is y.U and x.V is y.V:
        return SharedBasisOperator
    return IdentityPlusLowRank


@FAST
@given(D=st.integers(1, 24), R=st.integers(0, 30), seed=st.integers(0, 2**31 - 1))
def test_binary_operations_all_types(D, R, seed):
    ops, refs = five_operators(torch.Generator().manual_seed(seed), D, R)
    for x, mx in zip(ops, refs):
        for y, my in zip(ops, refs):
            tol = 1e-12 * (1 + mx.abs().sum()) * (1 + my.abs().sum())
            for result, ref in ((x @ y, mx @ my), (x + y, mx + my), (x - y, mx - my)):
                assert type(result) is expected_class(x, y)
                close(result.to_dense(), ref, tol)
            if expected_class(x, y) is SharedBasisOperator:
                assert (x @ y).rank == R and (x @ y).U is x.U and (x @ y).gram is x.gram


@FAST
@given(D=st.integers(1, 24), R=st.integers(0, 30), seed=st.integers(0, 2**31 - 1), s=st.floats(-3, 3))
def test_unary_operations_all_types(D, R, seed, s):
    ops, refs = five_operators(torch.Generator().manual_seed(seed), D, R)
    for op, M in zip(ops, refs):
        tol = 1e-13 * (1 + abs(s)) * (1 + M.abs().sum())
        for result, ref in (
            (s * op, s * M), (op * s, s * M), (op * torch.tensor(s, dtype=F64), s * M), (-op, -M),
            (op.add_identity(s), M + s * eye(D)), (op.T, M.T), (op.transpose(), M.T), (op.T.T, M),
        ):
            assert type(result) is type(op) and result.dtype == F64
            close(result.to_dense(), ref, tol)
        if abs(s) > 1e-3:
            close((op / s).to_dense(), M / s, tol / abs(s))


def test_dtype_promotion():
    g = torch.Generator().manual_seed(0)
    U, V = factors(g, 6, 2)
    a, b = IdentityPlusLowRank(0.5, U.float(), V.float()), IdentityPlusLowRank(2.0, U, V)
    for result in (a @ b, b @ a, a + b, a - b):
        assert result.dtype == F64
    assert (a @ DenseOperator(torch.eye(6, dtype=F64))).dtype == F64
    mixed = IdentityPlusLowRank(torch.tensor(2.0, dtype=F64), U.half(), V.float())
    assert mixed.dtype == torch.float32 and mixed.c.dtype == torch.float32 and mixed.U.dtype == torch.float32


# ------------------------------------------------------------------------------ reduction, pinv
@FAST
@given(case=cases())
def test_reduce(case):
    D, R = case.U.shape
    Q, K = lowrank(case).reduce()
    k = Q.shape[1]
    assert k <= min(D, 2 * R) and K.shape == (k, k)
    close(Q.T @ Q, eye(k), 1e-12)
    close(case.c * (eye(D) - Q @ Q.T) + Q @ K @ Q.T, dense(case), 1e-12 * (1 + dense(case).abs().sum()))


@FAST
@given(case=cases())
def test_pinv_matches_dense(case):
    M, D, R = dense(case), case.U.shape[0], case.U.shape[1]
    S = torch.linalg.svdvals(M)
    scale = abs(case.c) + case.U.norm() * case.V.norm()
    if S[0] <= 1e-10 * scale:  # M = 0 (c = 0 and U Vᵀ = 0): M† = 0
        assert float(S[0]) == 0.0 or case.kind == "singular"
        if float(S[0]) == 0.0:
            assert torch.equal(lowrank(case).pinv().to_dense(), torch.zeros(D, D, dtype=F64))
        return
    assume(spectral_gap(S))  # else a singular value in the ambiguous band: no well-defined numerical pseudo-inverse
    rcond = None if bool((S > 1e-7 * S[0]).all()) else 1e-9
    P_ref = torch.linalg.pinv(M, rtol=rcond)
    P_op = lowrank(case).pinv(rcond=rcond)
    assert isinstance(P_op, IdentityPlusLowRank) and P_op.rank <= min(D, 2 * R)
    P = P_op.to_dense()
    smin = S[S > 1e-7 * S[0]].min()
    cond = float(S[0] / smin)
    close(P, P_ref, 1e-12 * cond / smin * D)
    # Moore–Penrose identities
    close(M @ P @ M, M, 1e-12 * cond * S[0] * D)
    close(P @ M @ P, P, 1e-12 * cond / smin * D)
    close(M @ P, (M @ P).T, 1e-12 * cond * D)
    close(P @ M, (P @ M).T, 1e-12 * cond * D)


@pytest.mark.parametrize("D, R", [(8, 3), (5, 9)])
def test_pinv_singular_with_nonzero_c(D, R):
    """c·I + U Vᵀ = c·(I − P) for an orthogonal projection P: singular although c ≠ 0 (Woodbury fails)."""
    g = torch.Generator().manual_seed(D)
    Qp, _ = torch.linalg.qr(rand(g, D, min(R, D - 1)))
    U = torch.cat([-2.0 * Qp, torch.zeros(D, R - Qp.shape[1], dtype=F64)], 1)
    V = torch.cat([Qp, rand(g, D, R - Qp.shape[1])], 1)  # V's extra columns meet zero columns of U
    M = 2.0 * eye(D) + U @ V.T
    P = IdentityPlusLowRank(2.0, U, V).pinv(rcond=1e-10).to_dense()
    close(P, torch.linalg.pinv(M, rtol=1e-10), 1e-12)
    close(P, 0.5 * (eye(D) - Qp @ Qp.T), 1e-12)


def test_pinv_rcond_truncates_like_torch():
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(rand(g, 12, 12))
    S = torch.tensor([10.0, 5.0, 1.0, 1e-3, 1e-5] + [0.5] * 7, dtype=F64)
    B = Q[:, :5] @ torch.diag(S[:5] - 0.5) @ Q[:, :5].T  # M = 0.5·I + B has singular values S
    M = 0.5 * eye(12) + B
    op = IdentityPlusLowRank(0.5, Q[:, :5] @ torch.diag(S[:5] - 0.5), Q[:, :5])
    for rcond in (None, 1e-7, 1e-5 * 0.9, 1e-2, 0.06):
        P_ref = torch.linalg.pinv(M, rtol=rcond)
        close(op.pinv(rcond).to_dense(), P_ref, 1e-10 * float(P_ref.abs().max()))


@FAST
@given(D=st.integers(1, 16), R=st.integers(0, 20), seed=st.integers(0, 2**31 - 1))
def test_pinv_shared_and_dense(D, R, seed):
    g = torch.Generator().manual_seed(seed)
    U, V = factors(g, D, R)
    X = rand(g, R, R)
    M = 0.8 * eye(D) + U @ X @ V.T
    S = torch.linalg.svdvals(M)
    assume(bool((S > 1e-7 * S[0]).all()))
    cond = float(S[0] / S[-1])
    P_ref = torch.linalg.pinv(M)
    for op in (SharedBasisOperator(0.8, X, U, V), DenseOperator(M)):
        close(op.pinv().to_dense(), P_ref, 1e-12 * cond / S[-1] * D)


# ------------------------------------------------------------------------------------------ svd
@FAST
@given(case=cases(), data=st.data())
def test_svd_top_k(case, data):
    M, D = dense(case), case.U.shape[0]
    k = data.draw(st.integers(0, D))
    S_ref = torch.linalg.svdvals(M)
    U_k, S_k, V_k = lowrank(case).svd(k)
    assert U_k.shape == V_k.shape == (D, k) and S_k.shape == (k,)
    tol = 1e-12 * D * (1 + S_ref[0])
    close(S_k, S_ref[:k], tol)
    close(U_k.T @ U_k, eye(k), 1e-12 * D)
    close(V_k.T @ V_k, eye(k), 1e-12 * D)
    close(M @ V_k, U_k * S_k, tol)
    close(M.T @ U_k, V_k * S_k, tol)
    if k == D:
        close(U_k @ torch.diag(S_k) @ V_k.T, M, tol)


@FAST
@given(case=cases(kinds=("zero_c", "deficient")))
def test_svd_default_k_is_reduced_dimension(case):
    op = lowrank(case)
    U_k, S_k, V_k = op.svd()
    assert S_k.shape == (op.reduce()[0].shape[1],)
    if case.c == 0:  # c = 0: the thin SVD reproduces M
        close(U_k @ torch.diag(S_k) @ V_k.T, dense(case), 1e-12 * case.U.shape[0] * (1 + dense(case).abs().sum()))


def test_svd_shared_and_dense():
    g = torch.Generator().manual_seed(3)
    U, V, X = rand(g, 9, 4), rand(g, 9, 4), rand(g, 4, 4)
    M = -1.5 * eye(9) + U @ X @ V.T
    for op in (SharedBasisOperator(-1.5, X, U, V), DenseOperator(M)):
        U_k, S_k, V_k = op.svd(9)
        close(S_k, torch.linalg.svdvals(M), 1e-11)
        close(U_k @ torch.diag(S_k) @ V_k.T, M, 1e-11)
        assert op.svd(3)[1].shape == (3,)


# ---------------------------------------------------------------------------------------- power
@FAST
@given(case=cases(), n=st.integers(0, 7))
def test_power(case, n):
    M = dense(case)
    ref = torch.linalg.matrix_power(M, n)
    scale = max(1.0, float(torch.linalg.matrix_norm(M, 2))) ** n
    P = lowrank(case).power(n)
    assert isinstance(P, IdentityPlusLowRank)
    close(P.to_dense(), ref, 1e-11 * scale * case.U.shape[0])
    close(DenseOperator(M).power(n).to_dense(), ref, 1e-11 * scale * case.U.shape[0])


@FAST
@given(D=st.integers(1, 24), R=st.integers(0, 30), n=st.integers(0, 7), seed=st.integers(0, 2**31 - 1))
def test_shared_power_stays_shared(D, R, n, seed):
    g = torch.Generator().manual_seed(seed)
    U, V = factors(g, D, R)
    X = rand(g, R, R) / (R + 1) ** 0.5
    M = 0.9 * eye(D) + U @ X @ V.T
    P = SharedBasisOperator(0.9, X, U, V).power(n)
    assert isinstance(P, SharedBasisOperator) and P.rank == R and P.U is U
    scale = max(1.0, float(torch.linalg.matrix_norm(M, 2))) ** n
    close(P.to_dense(), torch.linalg.matrix_power(M, n), 1e-11 * scale * D)


# ------------------------------------------------------------------------------------- compress
@FAST
@given(case=cases())
def test_compress_exact_without_cut(case):
    D, R = case.U.shape
    op, dropped = lowrank(case).compress()
    L = case.U @ case.V.T
    assert isinstance(op, IdentityPlusLowRank) and op.rank <= min(D, R)
    assert dropped <= 1e-12 * (1 + float(L.norm()))
    close(op.to_dense(), dense(case), 1e-12 * D * (1 + float(L.norm())))
    if case.kind == "deficient" and R:
        S = torch.linalg.svdvals(L)
        expected = int((S > 1e-9 * S[0]).sum()) if S[0] > 0 else 0
        assert lowrank(case).compress(tol=1e-9)[0].rank == expected


@FAST
@given(case=cases(kinds=("generic", "deficient")), data=st.data())
def test_compress_rank_cut_reports_dropped_norm(case, data):
    D, R = case.U.shape
    L = case.U @ case.V.T
    S = torch.linalg.svdvals(L)
    r = data.draw(st.integers(0, min(D, R)))
    op, dropped = lowrank(case).compress(rank=r)
    assert op.rank <= r
    true_diff = float(torch.linalg.matrix_norm(op.to_dense() - dense(case)))
    tol = 1e-12 * D * (1 + float(S.sum()))
    assert abs(dropped - true_diff) <= tol
    assert abs(dropped - float(S[r:].norm())) <= tol  # Eckart–Young: the optimal rank-r error


def test_compress_tol_cut():
    g = torch.Generator().manual_seed(5)
    Qu, _ = torch.linalg.qr(rand(g, 10, 6))
    Qv, _ = torch.linalg.qr(rand(g, 10, 6))
    S = torch.tensor([4.0, 2.0, 1.0, 1e-2, 1e-4, 1e-6], dtype=F64)
    U, V = Qu * S, Qv
    op, dropped = IdentityPlusLowRank(0.3, U, V).compress(tol=1e-2)  # keeps σ > 4e-2
    assert op.rank == 3
    assert abs(dropped - float(S[3:].norm())) < 1e-14
    close(op.to_dense(), 0.3 * eye(10) + (Qu[:, :3] * S[:3]) @ Qv[:, :3].T, 1e-13)
    op, dropped = DenseOperator(U @ V.T).compress(tol=1e-2)
    assert abs(dropped - float(S[3:].norm())) < 1e-13


# ---------------------------------------------------------------------------- shared-basis family
@FAST
@given(D=st.integers(1, 24), R=st.integers(0, 30), T=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_shared_basis_products(D, R, T, seed):
    g = torch.Generator().manual_seed(seed)
    U, V = factors(g, D, R)
    gram = V.T @ U
    coeffs = [(float(rand(g, 1)), rand(g, R, R) / (R + 1) ** 0.5) for _ in range(T)]
    ops = [SharedBasisOperator(a, X, U, V, gram=gram) for a, X in coeffs]
    refs = [a * eye(D) + U @ X @ V.T for a, X in coeffs]
    prod, ref = ops[0], refs[0]
    for op, M in zip(ops[1:], refs[1:]):
        prod, ref = op @ prod, M @ ref
    assert isinstance(prod, SharedBasisOperator) and prod.rank == R
    assert prod.U is U and prod.V is V and prod.gram is gram  # no D-sized work redone
    close(prod.to_dense(), ref, 1e-11 * D * max(1.0, float(ref.abs().max())))
    total = sum(ops[1:], ops[0]) * 0.5
    assert isinstance(total, SharedBasisOperator) and total.rank == R
    close(total.to_dense(), 0.5 * sum(refs[1:], refs[0]), 1e-12 * D * T)
    # transposes share the swapped basis (V, U) and multiply in it as well
    tprod = ops[0].T @ ops[-1].T
    assert isinstance(tprod, SharedBasisOperator) and tprod.U is V
    close(tprod.to_dense(), refs[0].T @ refs[-1].T, 1e-11 * D * max(1.0, float(ref.abs().max())))
    # converted operators still share one basis
    a32, b32 = ops[0].to(dtype=torch.float32), ops[-1].to(dtype=torch.float32)
    assert a32.U is b32.U and isinstance(a32 @ b32, SharedBasisOperator)
    # a copy of the basis is another basis: low-rank algebra, same matrix
    other = SharedBasisOperator(1.0, coeffs[0][1], U.clone(), V)
    mixed = ops[0] @ other
    assert isinstance(mixed, IdentityPlusLowRank)
    close(mixed.to_dense(), refs[0] @ (eye(D) + U @ coeffs[0][1] @ V.T), 1e-11 * D * (1 + R))


def test_shared_lowrank_roundtrip():
    g = torch.Generator().manual_seed(2)
    U, V, X = rand(g, 7, 3), rand(g, 7, 3), rand(g, 3, 3)
    op = SharedBasisOperator(0.25, X, U, V)
    low = op.to_lowrank()
    assert isinstance(low, IdentityPlusLowRank) and low.rank == 3
    close(low.to_dense(), 0.25 * eye(7) + U @ X @ V.T, 1e-13)
    compressed, dropped = op.compress(rank=2)
    assert compressed.rank == 2 and dropped > 0


# ---------------------------------------------------------------------------- cond, det, dtypes
@FAST
@given(case=cases(kinds=("generic", "zero_c")))
def test_cond_and_det(case):
    M, D = dense(case), case.U.shape[0]
    op = lowrank(case)
    S = torch.linalg.svdvals(M)
    if case.c == 0 and case.U.shape[1] < D:
        assert op.cond() > 1e12  # rank ≤ R < D: singular
    elif S[-1] > 1e-6 * S[0]:
        assert abs(op.cond() / float(torch.linalg.cond(M)) - 1) < 1e-8
        sign, logabs = torch.linalg.slogdet(M)
        op_sign, op_logabs = op.slogdet()
        assert float(op_sign) == float(sign) and abs(float(op_logabs - logabs)) < 1e-9
        assert abs(float(op.det() / torch.linalg.det(M)) - 1) < 1e-8
        assert abs(DenseOperator(M).cond() / float(torch.linalg.cond(M)) - 1) < 1e-8


def test_float32_close_to_float64():
    g = torch.Generator().manual_seed(4)
    D, R = 20, 6
    U, V = rand(g, D, R) * 0.1, rand(g, D, R) * 0.1
    M = 1.5 * eye(D) + U @ V.T
    op = IdentityPlusLowRank(1.5, U.float(), V.float())
    z = rand(g, 4, D)
    outs = {
        "apply": (op.apply(z.float()), z @ M.T),
        "pinv": (op.pinv().to_dense(), torch.linalg.pinv(M)),
        "power": (op.power(5).to_dense(), torch.linalg.matrix_power(M, 5)),
        "compose": ((op @ op.T).to_dense(), M @ M.T),
        "svd": (op.svd(D)[1], torch.linalg.svdvals(M)),
        "compress": (op.compress()[0].to_dense(), M),
        "shared": (SharedBasisOperator(1.5, torch.eye(R), U.float(), V.float()).pinv().to_dense(),
                   torch.linalg.pinv(M)),
        "dense": (DenseOperator(M.float()).pinv().to_dense(), torch.linalg.pinv(M)),
    }
    for name, (out, ref) in outs.items():
        assert out.dtype == torch.float32, name
        close(out.double(), ref, 1e-5 * max(1.0, float(ref.abs().max())))
    Q, K = op.reduce()
    assert Q.dtype == K.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_factors(dtype):
    g = torch.Generator().manual_seed(6)
    U, V = rand(g, 12, 3) * 0.2, rand(g, 12, 3) * 0.2
    M = 1.0 * eye(12) + U.to(dtype).double() @ V.to(dtype).double().T
    op = IdentityPlusLowRank(1.0, U.to(dtype), V.to(dtype))
    P = op.pinv()
    assert P.dtype == dtype and op.svd(4)[1].dtype == dtype and op.reduce()[1].dtype == dtype
    assert op.compress()[0].dtype == dtype and op.power(3).dtype == dtype
    close(P.to_dense().double(), torch.linalg.pinv(M), 3e-2)
    close(op.svd(12)[1].double(), torch.linalg.svdvals(M), 3e-2)
    close(DenseOperator(M.to(dtype)).pinv().to_dense().double(), torch.linalg.pinv(M), 3e-2)


def test_to_moves_and_casts():
    g = torch.Generator().manual_seed(7)
    U, V = rand(g, 5, 2), rand(g, 5, 2)
    op = IdentityPlusLowRank(2.0, U, V)
    assert op.to(dtype=F64) is op
    op32 = op.to(dtype=torch.float32)
    assert op32.dtype == op32.c.dtype == op32.V.dtype == torch.float32 and op32.device == torch.device("cpu")
    close(op32.to_dense().double(), 2.0 * eye(5) + U @ V.T, 1e-5)
    assert DenseOperator(U @ V.T).to("cpu", torch.float32).dtype == torch.float32

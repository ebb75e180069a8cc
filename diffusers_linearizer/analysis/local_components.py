r"""Local components: the top singular triplets of a map's Jacobian at one point, matrix-free.

The idea (``docs/math.md`` §A1): a flow trained by maximum likelihood represents, at every point, the
local covariance of the data; the decoder's Jacobian ``J`` at that point carries it, ``J Jᵀ`` playing the role
of the covariance. Its singular value decomposition ``J = Σᵢ σᵢ uᵢ vᵢᵀ`` gives the local components: ``vᵢ``
(input side: noise or latent) moves the output along ``uᵢ`` (image side) by ``σᵢ`` per unit, so the ``σᵢ``
rank the directions by their significance at that point.

``J`` is ``D × D`` (``D = C·H·W``, 12 288 at 3·64²) and never formed. Only products are used:

* ``J V`` by forward-mode differentiation (``torch.func.jvp``), ``Jᵀ U`` by reverse mode (``torch.func.vjp``);
* ``m`` vectors at once: the point is repeated ``m`` times along the batch, each copy gets one tangent or
  cotangent (the networks and ``B`` map samples independently), so memory is that of a batch of ``m``.

Randomised subspace iteration with Rayleigh–Ritz (block power iteration on ``Jᵀ J``)::

    P₀ = orth(Jᵀ orth(J Ω)),  Ω ∈ R^{D×m} Gaussian,  m = k + oversample
    repeat:  J P = Ũ Σ W̃ᵀ (thin SVD of a D × m matrix),  vᵢ = P W̃ᵢ,  uᵢ = Ũᵢ,  J vᵢ = σᵢ uᵢ exactly
             Z = Jᵀ Ũ;   residual rᵢ = ‖Zᵢ − σᵢ vᵢ‖ / σ₁;   stop when max_{i ≤ k} rᵢ ≤ tol
             P = orth(Z)

Each round costs one batched ``jvp`` and one batched ``vjp``; the residual is the distance of ``(σᵢ, uᵢ, vᵢ)``
from an exact singular triplet. ``k = 1`` with ``oversample = 0`` is the plain power iteration for the spectral
norm ``‖J‖₂`` (:func:`spectral_norm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .common import MAPS, check_k, check_point, evaluating, model_map, working_model

__all__ = ["LocalComponents", "local_components", "spectral_norm", "jacobian_svd_matrix_free"]


@dataclass
class LocalComponents:
    """The top-k singular triplets of a Jacobian at one point (:func:`local_components`).

    Args:
        singular_values: ``(k,)`` float64, descending: ``σᵢ``.
        input_directions: ``(k, C, H, W)`` unit right singular vectors ``vᵢ`` (noise or latent side).
        output_directions: ``(k, C, H, W)`` unit left singular vectors ``uᵢ`` (image or latent side).
        residuals: ``(k,)`` float64, ``‖Jᵀuᵢ − σᵢvᵢ‖ / σ₁`` after the last round (0 for an exact triplet).
        iterations: rounds of subspace iteration run.
        products: Jacobian–vector products used (``jvp`` plus ``vjp``, counted per vector).
        map: the map's name (:data:`~.common.MAPS`); point: the ``(1, C, H, W)`` point.
    """

    singular_values: Tensor
    input_directions: Tensor
    output_directions: Tensor
    residuals: Tensor
    iterations: int
    products: int
    map: str
    point: Tensor


def _orth(Y: Tensor) -> Tensor:
    """An orthonormal basis of the columns of ``Y`` (``D × m``), by thin QR."""
    return torch.linalg.qr(Y)[0]


def jacobian_svd_matrix_free(fn, point: Tensor, k: int, oversample: int = 4, iterations: int = 8,
                             tol: float = 1e-6, seed: int = 0):
    """``(σ, V, U, residuals, rounds, products)`` of the top ``k`` singular triplets of ``J = ∂fn/∂x`` at
    ``point`` (``(1, C, H, W)``) by the subspace iteration of the module docstring. ``V``/``U``: ``(D, k)``.

    ``fn`` maps a batch ``(m, C, H, W)`` to ``(m, C', H', W')`` sample by sample. Computations run in
    ``point``'s dtype; the small SVDs and QRs too (float64 points give float64 results)."""
    shape = point.shape[1:]
    dim = point[0].numel()
    m = min(k + max(int(oversample), 0), dim)
    dtype = point.dtype

    def jvp(P: Tensor) -> Tensor:  # J P for the columns of P (D × m) → (D', m)
        xs = point.expand(P.shape[1], *shape).contiguous()
        _, out = torch.func.jvp(fn, (xs,), (P.T.reshape(-1, *shape).contiguous(),))
        return out.flatten(1).T

    out, pullback = torch.func.vjp(fn, point.expand(m, *shape).contiguous())  # reused for every Jᵀ U
    out_shape = out.shape[1:]
    del out

    def vjp(U: Tensor) -> Tensor:  # Jᵀ U for the columns of U (D' × m) → (D, m)
        return pullback(U.T.reshape(m, *out_shape).contiguous())[0].flatten(1).T

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    omega = torch.randn(dim, m, generator=gen, dtype=torch.float64).to(device=point.device, dtype=dtype)
    P = _orth(vjp(_orth(jvp(omega))))
    products = 2 * m
    rounds = 0
    while True:
        rounds += 1
        Y = jvp(P)
        Ut, S, Wh = torch.linalg.svd(Y, full_matrices=False)
        V = P @ Wh.T
        Z = vjp(Ut)
        products += 2 * m
        scale = S[0].clamp_min(torch.finfo(S.dtype).tiny)
        res = torch.linalg.vector_norm(Z[:, :k] - V[:, :k] * S[:k], dim=0) / scale
        if float(res.max()) <= tol or rounds >= iterations:
            break
        P = _orth(Z)
    return S[:k], V[:, :k], Ut[:, :k], res, rounds, products


def local_components(model, point: Tensor, k: int, *, map: str = "generator", B=None, space: str = "x",
                     temperature: Optional[float] = None, oversample: int = 4, iterations: int = 8,
                     tol: float = 1e-6, seed: int = 0, dtype: Optional[torch.dtype] = None) -> LocalComponents:
    r"""The top-``k`` singular values and vectors of the Jacobian ``J`` of a map of the model at ``point``.

    ``J = Σᵢ σᵢ uᵢ vᵢᵀ``: moving the input by ``δ·vᵢ`` moves the output by ``δ·σᵢ·uᵢ`` to first order, and
    no unit direction moves it more than ``σ₁`` (``docs/math.md`` §A1). Maps (``map``):

    * ``"generator"`` (default): ``G(ε) = g_x⁻¹(B g_y(τ·ε))`` at a noise point ``ε``, so
      ``J = J_{g_x⁻¹}(B g_y(τε)) · B · J_{g_y}(τε) · τ``; needs ``B``.
    * ``"decoder"``: ``z ↦ g_space⁻¹(z)`` at a latent ``z`` (``space`` "x" or "y").
    * ``"encoder"``: ``x ↦ g_space(x)`` at an image ``x``.
    * ``"inverse"``: ``x ↦ g_y⁻¹(B⁻¹ g_x(x))/τ`` at an image (needs an invertible ``B``).

    Matrix-free (jvp/vjp products, randomised subspace iteration with ``oversample`` extra vectors; see the
    module docstring); memory is that of a batch of ``k + oversample`` points, never a ``D × D`` matrix.

    Args:
        model: a ``LinearizerModel`` (analysed in eval mode, in at least float32, or in ``dtype``).
        point: ``(C, H, W)`` or ``(1, C, H, W)``.
        k: how many triplets, ``1 ≤ k ≤ D``.
        B: the collapsed operator (:func:`~.common.collapsed_operator`) for ``"generator"``/``"inverse"``.
        temperature: ``τ`` (default the model's ``sampling_temperature``).
        oversample / iterations / tol / seed: the iteration's extra vectors, its rounds, the residual at
            which it stops, the seed of its start.

    Returns:
        :class:`LocalComponents`.
    """
    if map not in MAPS:
        raise ValueError(f"Unknown map {map!r}; expected one of {', '.join(MAPS)}.")
    point = check_point(model, point)
    k = check_k(k, model.latent_dim)
    work = working_model(model, dtype)
    point = point.to(device=work.device, dtype=work.dtype)
    fn = model_map(work, map, B=B, space=space, temperature=temperature)
    with evaluating(work), torch.no_grad():  # torch.func's transforms differentiate inside no_grad too
        S, V, U, res, rounds, products = jacobian_svd_matrix_free(fn, point, k, oversample, iterations, tol, seed)
    shape = (k, *model.sample_shape)
    return LocalComponents(
        singular_values=S.detach().double().cpu(), input_directions=V.T.detach().reshape(shape).cpu(),
        output_directions=U.T.detach().reshape(shape).cpu(), residuals=res.detach().double().cpu(),
        iterations=rounds, products=products, map=map, point=point.detach().cpu())


def spectral_norm(model, point: Tensor, *, map: str = "encoder", B=None, space: str = "x",
                  temperature: Optional[float] = None, iterations: int = 30, tol: float = 1e-4,
                  oversample: int = 0, seed: int = 0) -> float:
    r"""The local Lipschitz constant ``‖J(point)‖₂ = σ₁`` of a map (``map``, as in :func:`local_components`)
    by power iteration on ``JᵀJ`` (``v ← JᵀJ v/‖JᵀJ v‖``, ``σ₁ = ‖J v‖``; ``oversample > 0``: a block of vectors,
    which converges faster when ``σ₂ ≈ σ₁``); it stops when the top
    triplet's residual ``‖Jᵀu₁ − σ₁v₁‖/σ₁ ≤ tol``.

    Returns:
        ``σ₁`` as a float.
    """
    out = local_components(model, point, 1, map=map, B=B, space=space, temperature=temperature,
                           oversample=oversample, iterations=iterations, tol=tol, seed=seed)
    return float(out.singular_values[0])

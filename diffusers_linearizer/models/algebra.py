"""Linear algebra on a Linearizer: the methods of ``LinearizerModel`` that turn algebra on the core into
algebra on the network (``docs/math.md`` §1).

In the vector spaces induced by ``g_x`` and ``g_y`` the model ``f(x) = g_y⁻¹(A g_x(x))`` is linear, so

* transpose   fᵀ(y) = g_x⁻¹(Aᵀ g_y(y))
* pinv        f†(y) = g_x⁻¹(A† g_y(y))
* compose     (f₂ ∘ f₁)(x) = g_y⁻¹(A₂ A₁ g_x(x))         when f₁'s g_y is f₂'s g_x
* power       fⁿ(x) = g⁻¹(Aⁿ g(x))                       when g_x ≡ g_y = g
* svd         f(x) = g_y⁻¹(Σᵢ σᵢ uᵢ ⟨vᵢ, g_x(x)⟩)

Each returns a new model (a fixed dense or low-rank core, computed in float64, between copies of the
networks) or, for ``svd``, a :class:`LinearizerSVDOutput`. The mixin needs the model's ``network``,
``encode``/``decode``, ``core_operator``, ``config``, ``sample_shape`` and ``latent_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from ..operators import DenseOperator
from .cores import DenseCore, LowRankCore

__all__ = ["LinearizerAlgebraMixin", "LinearizerSVDOutput", "same_weights"]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules are one module or hold equal tensors under the same names (any dtype)."""
    if a is b:
        return True
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].to(sb[k].dtype), sb[k]) for k in sa
    )


@dataclass
class LinearizerSVDOutput(BaseOutput):
    """Top-k singular triplets of a Linearizer: ``A = Σᵢ σᵢ uᵢ vᵢᵀ`` in latent space.

    Args:
        singular_values: ``(k,)`` descending.
        left_latents / right_latents: ``(k, D)`` orthonormal vectors uᵢ (y-space) and vᵢ (x-space).
        left_vectors / right_vectors: the same vectors mapped to data space, ``g_y⁻¹(uᵢ)`` and
            ``g_x⁻¹(vᵢ)``, shape ``(k, C, H, W)``.
    """

    singular_values: Tensor
    left_latents: Tensor
    right_latents: Tensor
    left_vectors: Tensor
    right_vectors: Tensor


class LinearizerAlgebraMixin:
    """transpose, pinv, compose, power, svd and the induced vector-space operations of a Linearizer."""

    def _same_network(self, space: str, other, other_space: str) -> bool:
        """Whether ``self``'s ``space`` network equals ``other``'s ``other_space`` network (weights and role)."""
        (n1, r1), (n2, r2) = self.network(space), other.network(other_space)
        return float(r1) == float(r2) and same_weights(n1, n2)

    def _derived(self, op, x_from: Tuple["LinearizerAlgebraMixin", str], y_from: Tuple["LinearizerAlgebraMixin", str]):
        """A new model with a fixed core ``op`` whose g_x/g_y are copies of the named networks."""
        (mx, sx), (my, sy) = x_from, y_from
        (net_x, role_x), (net_y, role_y) = mx.network(sx), my.network(sy)
        shared = same_weights(net_x, net_y)
        if isinstance(op, DenseOperator):
            core = DenseCore(op.dim, weight=op.to_dense(max_dim=op.dim))
            core_type, rank = "dense", self.config.core_rank
        else:
            core = LowRankCore.from_operator(op)
            core_type, rank = "lowrank", core.U.shape[1]
        # diffusers drops keys listed in `_use_default_values` from a config: keep only real entries
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        config.update(conditioning=None, num_classes=0, condition_dim=0, id2label=None)
        config.update(core_type=core_type, core_rank=rank, shared_g=shared, role_x=float(role_x), role_y=float(role_y))
        model = type(self).from_config(config).to(device=self.device, dtype=self.dtype)
        if shared:
            model.g.load_state_dict(net_x.state_dict())
        else:
            model.g_x.load_state_dict(net_x.state_dict())
            model.g_y.load_state_dict(net_y.state_dict())
        model.core = core.to(device=self.device, dtype=self.dtype)
        return model.train(self.training)

    def transpose(self, t: Optional[float] = None) -> "LinearizerAlgebraMixin":
        """fᵀ(y) = g_x⁻¹(A_tᵀ g_y(y)): a model from the y-space to the x-space with core Aᵀ."""
        return self._derived(self.core_operator(t).T, (self, "y"), (self, "x"))

    def pinv(self, t: Optional[float] = None, rcond: Optional[float] = None) -> "LinearizerAlgebraMixin":
        """f†(y) = g_x⁻¹(A_t† g_y(y)), the Moore–Penrose pseudo-inverse (computed in fp64)."""
        op = self.core_operator(t, dtype=torch.float64).pinv(rcond=rcond)
        return self._derived(op, (self, "y"), (self, "x"))

    def compose(self, other: "LinearizerAlgebraMixin", t: Optional[float] = None, t_other: Optional[float] = None):
        """``self ∘ other``: x ↦ g_y⁻¹(A_self A_other g_x(x)) (other is applied first).

        Requires the shared middle space: ``other``'s g_y must equal ``self``'s g_x (weights and role).
        """
        if not isinstance(other, LinearizerAlgebraMixin):
            raise ValueError(f"compose expects a LinearizerModel, got {type(other).__name__}.")
        if other.sample_shape != self.sample_shape or not self._same_network("x", other, "y"):
            raise ValueError(
                "compose(other) requires other's output space (its g_y) to be this model's input space "
                "(its g_x): same weights, same role and same C×H×W."
            )
        a1 = other.core_operator(t_other if t_other is not None else t, dtype=torch.float64)
        a2 = self.core_operator(t, dtype=torch.float64)
        return self._derived(a2 @ a1, (other, "x"), (self, "y"))

    def power(self, n: int, t: Optional[float] = None) -> "LinearizerAlgebraMixin":
        """fⁿ(x) = g⁻¹(A_tⁿ g(x)); requires g_x ≡ g_y."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"power expects an integer n ≥ 0, got {n!r}.")
        if not self._same_network("x", self, "y"):
            raise ValueError(
                "power(n) requires g_x ≡ g_y (one network with role_x == role_y, or identical weights); "
                f"this model has shared_g={self.config.shared_g}, role_x={self.config.role_x}, role_y={self.config.role_y}."
            )
        return self._derived(self.core_operator(t, dtype=torch.float64).power(n), (self, "x"), (self, "y"))

    @torch.no_grad()
    def svd(self, k: Optional[int] = None, t: Optional[float] = None) -> LinearizerSVDOutput:
        """Top-k singular triplets of A_t (fp64), with the singular vectors mapped to data space."""
        if k is not None and not (1 <= k <= self.latent_dim):
            raise ValueError(f"svd expects 1 ≤ k ≤ D = {self.latent_dim}, got {k}.")
        u, s, v = self.core_operator(t, dtype=torch.float64).svd(k)
        u_lat = u.T.to(self.dtype).reshape(-1, *self.sample_shape)
        v_lat = v.T.to(self.dtype).reshape(-1, *self.sample_shape)
        was_training = self.training
        self.eval()  # singular vectors must not trigger ActNorm's data-dependent initialisation
        try:
            left, right = self.decode(u_lat, "y"), self.decode(v_lat, "x")
        finally:
            self.train(was_training)
        return LinearizerSVDOutput(
            singular_values=s, left_latents=u.T, right_latents=v.T, left_vectors=left, right_vectors=right
        )

    # ------------------------------------------------------------------ induced vector-space operations
    def induced_add(self, v1: Tensor, v2: Tensor, space: str = "x") -> Tensor:
        """``v₁ ⊕ v₂ = g⁻¹(g(v₁) + g(v₂))`` in the space of g_x or g_y."""
        return self.decode(self.encode(v1, space) + self.encode(v2, space), space)

    def induced_scale(self, a, v: Tensor, space: str = "x") -> Tensor:
        """``a ⊙ v = g⁻¹(a·g(v))``; ``a`` a number or an (N,) tensor."""
        z = self.encode(v, space)
        a = torch.as_tensor(a, dtype=z.dtype, device=z.device)
        if a.ndim == 1:
            a = a.view(-1, 1, 1, 1)
        return self.decode(a * z, space)

    def induced_inner(self, v1: Tensor, v2: Tensor, space: str = "x") -> Tensor:
        """``⟨v₁, v₂⟩_g = ⟨g(v₁), g(v₂)⟩`` per sample, shape (N,)."""
        return (self.encode(v1, space).flatten(1) * self.encode(v2, space).flatten(1)).sum(1)

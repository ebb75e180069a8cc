"""The web demo's Edit tab: moving an image's latent along singular directions of the core (or local ones).

:class:`EditCallbacks` is mixed into :class:`~diffusers_linearizer.demo.callbacks.LinearizerDemo`; it reads the
demo's ``model``, its lock and SVD cache, and its image helpers. An edit is ``g_x⁻¹(z + s Σᵢ αᵢ vᵢ)`` with
``z = g_x(x)``, ``vᵢ`` the right singular vectors of the core and ``s = EDIT_SCALE·‖z‖``, always computed from
the stored ``z``, so all sliders at 0 give back the original image up to round-off.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..images import psnr
from . import analysis_view
from . import images as im
from .images import DemoError
from .inputs import Progress, as_float, tick

__all__ = ["EditCallbacks", "EDIT_DIRECTIONS", "EDIT_SCALE", "DEFAULT_EDIT_TIME"]

#: number of singular directions offered as sliders in the Edit tab
EDIT_DIRECTIONS = 6
#: slider value 1 moves the latent by this fraction of its norm along a singular vector
EDIT_SCALE = 0.5
#: the core time used for singular vectors when the model's core depends on t
DEFAULT_EDIT_TIME = 0.5


class EditCallbacks:
    """Tab 4 of the demo (a mixin: the host supplies ``model``, ``_lock``, ``_svd_cache`` and ``_image_tensor``)."""

    # ------------------------------------------------------------------ edits along singular vectors
    def edit_time(self, t) -> Optional[float]:
        if not self.model.time_dependent:
            return None
        return as_float(DEFAULT_EDIT_TIME if t is None else t, "Core time t", 0.0, 1.0)

    def singular_directions(self, t: Optional[float], k: int = EDIT_DIRECTIONS):
        """``LinearizerModel.svd(k, t)`` computed once per ``(t, k)`` (thread-safe)."""
        key = (t, k)
        with self._lock:
            if key not in self._svd_cache:
                with torch.no_grad():
                    self._svd_cache[key] = self.model.svd(k, t=t)
            return self._svd_cache[key]

    def edit_start(self, image, t=None, convert=False, directions=None, progress: Progress = None):
        """Tab 4: prepare ``image`` for editing. Returns ``(edited, directions, message, record)``.

        ``record`` holds ``z = g_x(x)`` and the direction set; ``directions`` is a list of
        ``(picture, caption)``: for each right singular vector vᵢ of the core, the image moved by ∓ one
        slider unit along it. ``directions``: the core's singular vectors (default) or the local directions at
        this image (:mod:`.analysis_view`; the record then keeps them).
        """
        t = self.edit_time(t)
        x, note = self._image_tensor(image, convert)
        tick(progress, 0.0, "singular vectors of the core")
        k = min(EDIT_DIRECTIONS, self.model.latent_dim)
        svd = self.singular_directions(t, k)
        with torch.no_grad():
            z = self.model.encode(x.to(device=self.model.device, dtype=self.model.dtype), "x").double().cpu()
        record = dict(z=z.numpy(), x=x.numpy(), t=t, k=k)
        local = analysis_view.direction_set(directions) == "local"
        v, values = analysis_view.local_directions(self.model, z, k) if local else (
            svd.right_latents.double().cpu(), svd.singular_values)
        if local:
            record["v"] = v.numpy()
        step = EDIT_SCALE * float(z.norm())
        moved = torch.cat([z + sign * step * v[i].view_as(z) for i in range(k) for sign in (-1.0, 1.0)])
        pictures = im.to_pil(self._decode(moved).clamp(0, 1))
        directions = [(pictures[2 * i + j], f"v{i + 1} (σ = {float(values[i]):.3g}), {s}")
                      for i in range(k) for j, s in enumerate(("−1", "+1"))]
        edited, message = self.edit(record, *([0.0] * k))
        where = f"A_t at t = {t:g}" if t is not None else "A"
        if local:
            where = "of J_{g_x⁻¹} at this image's latent (local directions)"
        message = (f"Right singular vectors v₁…v{k} {'of the core ' if not local else ''}{where}, singular values "
                   f"{', '.join(f'{float(s):.3g}' for s in values)}. " + message)
        return edited, directions, message + (f" Input {note}." if note else ""), record

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.decode(z.to(device=self.model.device, dtype=self.model.dtype), "x").float().cpu()

    def edit(self, record, *alphas):
        """Tab 4: ``g_x⁻¹(z + s Σᵢ αᵢ vᵢ)`` with ``s = EDIT_SCALE·‖z‖``. Returns ``(edited, message)``.

        The edit is computed from the stored ``z`` every time (never accumulated), so setting every
        slider back to 0 gives back ``g_x⁻¹(g_x(x))``, the original image up to round-off.
        """
        if not record:
            raise DemoError("Load an image and press “Start editing” first.")
        k = record["k"]
        alphas = [as_float(a if a is not None else 0.0, f"Slider {i + 1}", -3.0, 3.0) for i, a in enumerate(alphas[:k])]
        alphas += [0.0] * (k - len(alphas))
        z = torch.as_tensor(record["z"])
        v = torch.as_tensor(record["v"]) if "v" in record else \
            self.singular_directions(record["t"], k).right_latents.double().cpu()
        delta = EDIT_SCALE * float(z.norm()) * (torch.tensor(alphas, dtype=torch.float64) @ v).view_as(z)
        edited = self._decode(z + delta)
        quality = float(psnr(edited, torch.as_tensor(record["x"]))[0])
        coords = ", ".join(f"{float(c):+.2f}" for c in (v @ z.flatten()))
        if any(alphas):
            message = (f"Moved by {', '.join(f'{a:+.2f}' for a in alphas)} along v₁…v{k} (one unit = "
                       f"{EDIT_SCALE:g}·‖z‖ = {EDIT_SCALE * float(z.norm()):.2f} in latent space); PSNR against the "
                       f"original {im.format_db(quality)}. Set the sliders back to 0 to return to the original.")
        else:
            message = (f"All sliders at 0: g_x⁻¹(g_x(x)) gives back the original, **PSNR {im.format_db(quality)}**. "
                       f"Coordinates ⟨z, vᵢ⟩ of its latent: {coords}.")
        return im.to_pil(edited.clamp(0, 1))[0], message

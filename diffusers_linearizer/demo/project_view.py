"""The demo's **Project** tab: an idempotent projection model ``f = g⁻¹ P g`` (``P² = P``).

Generate from noise on ``P``'s range; corrupt a test image (noise, masked pixels, blur, inversion) and project
it; apply ``f`` again to see that nothing moves. The projection pipeline is loaded on first use (the packaged
``fashion-mnist-projection`` model unless another is named), so the other tabs start as fast as before.
"""

from __future__ import annotations

from typing import Optional

import PIL.Image
import torch

from ..images import binomial_blur, psnr
from . import images as im
from .images import DemoError
from .lazy_pipeline import LazyPipeline
from .inputs import as_float, as_int

CORRUPTIONS = ("none", "Gaussian noise σ = 0.3", "30 % of pixels masked", "blur", "inverted (1 − x)")
MAX_SAMPLES = 64


def corrupt(x: torch.Tensor, kind: str, seed: int = 0):
    """``(x̃, mask)`` for a batch ``x`` in ``[0, 1]``: one of :data:`CORRUPTIONS` (the mask marks unknown pixels)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == CORRUPTIONS[0]:
        return x, None
    if kind == CORRUPTIONS[1]:
        return x + 0.3 * torch.randn(x.shape, generator=gen), None
    if kind == CORRUPTIONS[2]:
        mask = (torch.rand((x.shape[0], 1, *x.shape[2:]), generator=gen) < 0.3).float()
        return x * (1 - mask), mask
    if kind == CORRUPTIONS[3]:
        return binomial_blur(x), None
    if kind == CORRUPTIONS[4]:
        return 1.0 - x, None
    raise DemoError(f"Unknown corruption {kind!r}; choose one of: {', '.join(CORRUPTIONS)}.")


class ProjectionDemo(LazyPipeline):
    """The Project tab's callbacks around a ``LinearizerProjectionPipeline`` (loaded on first use)."""

    pipeline_class = "LinearizerProjectionPipeline"
    default_model = "fashion-mnist-projection"
    what = "projection model"

    def describe(self) -> str:
        cfg = self.pipe.linearizer.config
        return (f"Projection model: `{cfg.core_type}`, rank {cfg.core_rank} of D = {self.pipe.linearizer.latent_dim}; "
                "f(x) = g⁻¹(P g(x)) with P² = P, so f(f(x)) = f(x) for every input.")

    def generate(self, seed, count, temperature):
        """``(grid, message)``: ``count`` samples (the prior on the range, decoded) and how far ``f`` moves them."""
        seed = as_int(seed, "Seed", 0)
        count = as_int(count, "Number of images", 1, MAX_SAMPLES)
        tau = as_float(temperature, "Temperature", 0.0, 2.0)
        if tau <= 0:
            raise DemoError("Temperature must be > 0.")
        pipe = self.pipe
        out = pipe(batch_size=count, temperature=tau, generator=torch.Generator().manual_seed(seed), output_type="pt",
                   clamp=False)
        again = pipe(out.images, output_type="pt", clamp=False, check_range=False)
        moved = float((again.images - out.images).abs().max())
        return im.strip(out.images.clamp(0, 1), nrow=min(8, count)), (
            f"{count} samples from the Gaussian on P's range (τ = {tau:g}). Applying f again moves them by at most "
            f"**{moved:.1e}** (float32 round-off).")

    def project(self, image: Optional[PIL.Image.Image], corruption: str, seed):
        """``(corrupted, f(x̃), f(f(x̃)), message)`` for a loaded image and a corruption."""
        if image is None:
            raise DemoError("Load an image first: upload a file or pick a test image.")
        pipe = self.pipe
        fitted, note = im.fit_image(image, pipe.linearizer.sample_shape, convert=True)
        arr = torch.from_numpy(im.as_uint8_array(fitted).copy()).float().div(255.0)
        x = arr[None, None] if arr.ndim == 2 else arr.permute(2, 0, 1)[None]
        noisy, mask = corrupt(x, corruption, as_int(seed, "Seed", 0))
        out = pipe(noisy, mask_image=mask, output_type="pt", clamp=False, check_range=False)
        again = pipe(out.images, output_type="pt", clamp=False, check_range=False)
        moved = float((again.images - out.images).abs().max())
        before, after = float(psnr(noisy.clamp(0, 1), x)), float(psnr(out.images.clamp(0, 1), x))
        message = (f"Distance of the input to the range ‖g(x̃) − P g(x̃)‖ = **{float(out.distances[0]):.3g}** "
                   f"(0 on the range). PSNR to the clean image: {im.format_db(before)} → **{im.format_db(after)}**. "
                   f"f(f(x̃)) − f(x̃): at most **{moved:.1e}**. {note}")
        pictures = [im.to_pil(t.clamp(0, 1))[0] for t in (noisy, out.images, again.images)]
        return (*pictures, message)


def add_project_tab(gr, project: ProjectionDemo, examples, guarded, image, image_slot, demo) -> None:
    """The Project tab inside an open ``gr.Blocks`` (``guarded``, ``image``, ``image_slot``: the app's helpers)."""
    with gr.Tab("5. Project", id="project"):
        gr.Markdown("An **idempotent** model: f(x) = g⁻¹(P g(x)) with a projection P² = P, so f(f(x)) = f(x) "
                    "exactly, for every input. Generate on P's range, or project a corrupted image onto it.")
        status = gr.Markdown(elem_id="project-status", elem_classes=["status"])
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="Seed", elem_id="project-seed")
            count = gr.Slider(1, MAX_SAMPLES, value=16, step=1, label="Number of samples", elem_id="project-count")
            temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature", elem_id="project-temperature")
            generate = gr.Button("Generate from noise", variant="primary", elem_id="project-generate")
        samples = image(gr, "Samples g⁻¹(z), z on P's range", "project-samples", height=300)
        generate.click(guarded(gr, project.generate, 2, 1, clear=(0,)), [seed, count, temperature], [samples, status])
        with gr.Row():
            with gr.Column():
                _, picked = image_slot(gr, demo, "an image", "project", status, examples)
                corruption = gr.Radio(list(CORRUPTIONS), value=CORRUPTIONS[1], label="Corrupt it first",
                                      elem_id="project-corruption")
                run = gr.Button("Project", variant="primary", elem_id="project-button")
            corrupted = image(gr, "Input x̃", "project-input")
            projected = image(gr, "f(x̃)", "project-output")
            twice = image(gr, "f(f(x̃)) — nothing moves", "project-again")
        run.click(guarded(gr, project.project, 4, 3, clear=(0, 1, 2)), [picked, corruption, seed],
                  [corrupted, projected, twice, status])

"""The demo's **Style** tab: modular style transfer with a style Linearizer ``f_s = g⁻¹ A_s g``.

Upload a photo (or take the sample one; an odd height or width loses its last row or column), pick a style, optionally blend it with a second one, set the strength and
colour preservation, and un-stylise the result with the round trip's PSNR shown. The style pipeline is loaded on
first use (the packaged ``styles`` model unless another is named), so the other tabs start as fast as before.
"""

from __future__ import annotations


import numpy as np
import PIL.Image
import torch

from ..images import psnr
from .images import DemoError
from .lazy_pipeline import LazyPipeline

MAX_SIDE = 512


def sample_photo(size: int = 256) -> PIL.Image.Image:
    """A smooth colourful test picture (no file needed)."""
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([0.5 + 0.5 * np.sin(6 * x + 2 * y), 0.5 + 0.5 * np.cos(5 * y - 3 * x * y), x * (1 - y) + 0.2], -1)
    return PIL.Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


class StyleDemo(LazyPipeline):
    """The Style tab's callbacks around a ``LinearizerStyleTransferPipeline`` (loaded on first use)."""

    pipeline_class = "LinearizerStyleTransferPipeline"
    default_model = "styles"
    what = "style model"

    def style_names(self):
        return list(self.pipe.id2style.values())

    def _photo(self, image) -> torch.Tensor:
        if image is None:
            raise DemoError("Load a photo first: upload a file or take the sample photo.")
        im = image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(image))
        im = im.convert("RGB")
        if max(im.size) > MAX_SIDE:
            scale = MAX_SIDE / max(im.size)
            im = im.resize((max(2, round(im.width * scale)), max(2, round(im.height * scale))), PIL.Image.LANCZOS)
        m = self.pipe.linearizer.size_multiple  # drop the last row / column of an odd size: an exact round trip
        arr = np.asarray(im, dtype=np.float32)[: im.height - im.height % m, : im.width - im.width % m] / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None]

    def _styles(self, style_a, style_b, blend):
        blend = float(blend or 0.0)
        if not 0.0 <= blend <= 1.0:
            raise DemoError("The blend must be between 0 and 1.")
        if style_b in (None, "", "none") or blend == 0.0:
            return [style_a], None
        return [style_a, style_b], [1.0 - blend, blend]

    def stylize(self, image, style_a, style_b, blend, strength, preserve_color):
        """``(stylised image, message)``."""
        x = self._photo(image)
        styles, weights = self._styles(style_a, style_b, blend)
        try:
            out = self.pipe(x, styles, weights, float(strength), preserve_color=bool(preserve_color),
                            output_type="pt")
        except ValueError as err:
            raise DemoError(str(err)) from None
        what = " + ".join(f"{w:.2f}·{s}" for s, w in zip(styles, weights or [1.0]))
        return (PIL.Image.fromarray((out.images[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)),
                f"Stylised with {what} at strength {float(strength):.2f} (condition number of the operator "
                f"{out.condition_number:.3g}).")

    def unstylize(self, image, style_a, style_b, blend, strength):
        """``(recovered photo, message)``: stylise the photo (unclamped), un-stylise it and report the PSNR."""
        x = self._photo(image)
        styles, weights = self._styles(style_a, style_b, blend)
        pipe = self.pipe
        try:
            styled = pipe(x, styles, weights, float(strength), output_type="pt", clamp=False).images
            back = pipe.unstylize(styled, styles, weights, float(strength), output_type="pt", check_range=False)
        except ValueError as err:
            raise DemoError(str(err)) from None
        rec = back.images.clamp(0, 1)
        db = float(psnr(rec.double(), x.double()).mean())
        return (PIL.Image.fromarray((rec[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)),
                f"Round trip g⁻¹(A⁻¹ g(g⁻¹(A g(x)))): **{db:.1f} dB** PSNR to the photo "
                f"(condition number {back.condition_number:.3g}).")


def add_style_tab(gr, style: StyleDemo, guarded, image) -> None:
    """The Style tab inside an open ``gr.Blocks`` (``guarded``, ``image``: the app's helpers)."""
    with gr.Tab("6. Style", id="style"):
        gr.Markdown("**Modular style transfer**: f_s(x) = g⁻¹(A_s g(x)), one network g for every style and one "
                    "circular convolution A_s per style. Strength, blends and un-stylisation are exact operator algebra.")
        status = gr.Markdown(elem_id="style-status", elem_classes=["status"])
        names = style.style_names()
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="pil", label="Photo", elem_id="style-photo", height=256)
                sample = gr.Button("Take the sample photo", elem_id="style-sample")
                style_a = gr.Dropdown(names, value=names[0], label="Style", elem_id="style-a")
                style_b = gr.Dropdown(["none", *names], value="none", label="Blend with", elem_id="style-b")
                blend = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Blend weight of the second style",
                                  elem_id="style-blend")
                strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Strength α", elem_id="style-strength")
                keep = gr.Checkbox(False, label="Preserve colour", elem_id="style-preserve")
                with gr.Row():
                    run = gr.Button("Stylise", variant="primary", elem_id="style-button")
                    undo = gr.Button("Un-stylise (round trip)", elem_id="style-unstylize")
            styled = image(gr, "Stylised", "style-output", height=300)
            recovered = image(gr, "Un-stylised", "style-recovered", height=300)
        sample.click(lambda: sample_photo(), None, photo)
        run.click(guarded(gr, style.stylize, 2, 1, clear=(0,)), [photo, style_a, style_b, blend, strength, keep],
                  [styled, status])
        undo.click(guarded(gr, style.unstylize, 2, 1, clear=(0,)), [photo, style_a, style_b, blend, strength],
                   [recovered, status])

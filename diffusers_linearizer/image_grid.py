"""Image grids for the CLI and the trainer's sample pages (no dependency on the other layers)."""

from __future__ import annotations

import math
from typing import Optional


def make_grid(images, nrow: Optional[int] = None, padding: int = 2):
    """``(N, C, H, W)`` float images in [0, 1] → one PIL image (grayscale or RGB), ``nrow`` images a row."""
    import numpy as np
    import PIL.Image

    x = images.detach().float().clamp(0, 1).cpu().numpy()
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = np.zeros((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    grid = (grid * 255).round().astype(np.uint8)
    if c == 1:
        return PIL.Image.fromarray(grid[0], mode="L")
    return PIL.Image.fromarray(np.moveaxis(grid[:3], 0, -1))

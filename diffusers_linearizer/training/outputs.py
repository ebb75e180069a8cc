"""What a run shows and leaves: grids of one-step samples and the final pipeline folder."""

from __future__ import annotations

import os
from typing import Any, Dict

import torch

from ..image_grid import make_grid
from ..images import save_image

SAMPLES_DIR = "samples"


def generate_samples(model, num: int, num_inference_steps: int, solver: str, seed: int, **condition):
    """One-step samples ``(num, C, H, W)`` from ``model`` by its generation pipeline (``pipeline_class_for``;
    noise of image i from seed + i)."""
    from ..pipelines import pipeline_class_for
    from ..schedulers import LinearizerScheduler

    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(num)]
    pipe = pipeline_class_for(model)(linearizer=model, scheduler=LinearizerScheduler(solver=solver))
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=num, num_inference_steps=num_inference_steps, generator=gens, output_type="pt",
                **condition).images


def save_sample_grid(images: "torch.Tensor", output_dir: str, step: int):
    """Write ``images`` as one grid ``OUTPUT/samples/step-<step>.png`` (atomically) and return it as a
    ``(C, H, W)`` float tensor in ``[0, 1]`` for loggers."""
    import numpy as np

    folder = os.path.join(output_dir, SAMPLES_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step-{step:07d}.png")
    grid_image = make_grid(images)
    save_image(grid_image, path)
    grid = torch.from_numpy(np.asarray(grid_image, dtype="float32") / 255.0)
    return grid[None] if grid.ndim == 2 else grid.permute(2, 0, 1)


def save_final(model, output_dir: str, solver: str, metrics: Dict[str, Any], text=None) -> None:
    """The model's generation pipeline (``pipeline_class_for(model)``: ``LinearizerPipeline`` or its class / text
    subclass) ``.save_pretrained(output_dir, metrics=...)``, with the text encoder and tokenizer of
    ``text = (tokenizer, encoder)`` for a text model."""
    from ..pipelines import pipeline_class_for
    from ..schedulers import LinearizerScheduler

    components = dict(linearizer=model, scheduler=LinearizerScheduler(solver=solver))
    if text is not None:
        components.update(tokenizer=text[0], text_encoder=text[1])
    pipeline_class_for(model)(**components).save_pretrained(output_dir, metrics=metrics)

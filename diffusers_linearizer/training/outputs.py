"""What a run shows and leaves: grids of one-step samples and the final pipeline folder."""

from __future__ import annotations

import os
from typing import Any, Dict

import torch

from ..image_grid import make_grid
from ..images import save_image
from .checkpoints import MODEL_SUBDIR

SAMPLES_DIR = "samples"


def generate_samples(model, num: int, num_inference_steps: int, solver: str, seed: int, **condition):
    """One-step samples ``(num, C, H, W)`` from ``model`` (noise of image i from seed + i).

    Uses the model's generation pipeline (``pipeline_class_for``) when available, else the scheduler's ``collapse`` directly. Raises
    ``ImportError`` when neither exists.
    """
    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(num)]
    try:
        from ..pipelines import pipeline_class_for
        from ..schedulers import LinearizerScheduler
    except ImportError:
        pipeline_class_for = None
    if pipeline_class_for is not None:
        pipe = pipeline_class_for(model)(linearizer=model, scheduler=LinearizerScheduler(solver=solver))
        pipe.set_progress_bar_config(disable=True)
        return pipe(batch_size=num, num_inference_steps=num_inference_steps, generator=gens, output_type="pt",
                    **condition).images
    from ..schedulers import LinearizerScheduler  # noqa: F811  (ImportError propagates: nothing to sample with)

    scheduler = LinearizerScheduler(solver=solver)
    c, h, w = model.sample_shape
    param = next(model.parameters())
    noise = torch.stack([torch.randn((c, h, w), generator=g) for g in gens]).to(param.device, param.dtype)
    with torch.no_grad():
        z0 = model.encode(noise, "y")
        B = scheduler.collapse(model.core, num_inference_steps)
        z = B.apply(z0.flatten(1).to(B.dtype)).to(z0.dtype).view_as(z0)
        return model.decode(z, "x").clamp(0, 1)



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


def save_final(model, output_dir: str, solver: str, metrics: Dict[str, Any], say=print, text=None) -> None:
    """The model's generation pipeline (``pipeline_class_for(model)``: ``LinearizerPipeline`` or its class / text
    subclass) ``.save_pretrained(output_dir, metrics=...)``, with the text encoder and tokenizer of
    ``text = (tokenizer, encoder)`` for a text model; without the pipeline classes,
    ``model.save_pretrained(output_dir/linearizer)`` and the scheduler config."""
    try:
        from ..pipelines import pipeline_class_for
    except ImportError:
        pipeline_class_for = None
    try:
        from ..schedulers import LinearizerScheduler
    except ImportError:
        LinearizerScheduler = None
    if pipeline_class_for is not None and LinearizerScheduler is not None:
        components = dict(linearizer=model, scheduler=LinearizerScheduler(solver=solver))
        if text is not None:
            components.update(tokenizer=text[0], text_encoder=text[1])
        pipeline_class_for(model)(**components).save_pretrained(output_dir, metrics=metrics)
        return
    say("LinearizerPipeline is not available: saving the model (and scheduler config) only.")
    model.save_pretrained(os.path.join(output_dir, MODEL_SUBDIR))
    if LinearizerScheduler is not None:
        LinearizerScheduler(solver=solver).save_pretrained(os.path.join(output_dir, "scheduler"))


"""What a run shows and leaves: grids of one-step samples and the final pipeline folder."""

from __future__ import annotations

import inspect
import os
from typing import Any, Dict

import torch

from ..image_grid import make_grid
from ..images import save_image

SAMPLES_DIR = "samples"


def model_pipeline(model, solver: str, text=None):
    """The main pipeline of ``model`` (``pipeline_class_for(model)``) around it, with a ``LinearizerScheduler`` of
    ``solver`` when the class takes a scheduler, and the ``(tokenizer, encoder)`` of ``text`` for a text model."""
    from ..pipelines import pipeline_class_for
    from ..schedulers import LinearizerScheduler

    cls = pipeline_class_for(model)
    components = dict(linearizer=model)
    if "scheduler" in inspect.signature(cls.__init__).parameters:
        components["scheduler"] = LinearizerScheduler(solver=solver)
    if text is not None:
        components.update(tokenizer=text[0], text_encoder=text[1])
    return cls(**components)


def generate_samples(model, num: int, num_inference_steps: int, solver: str, seed: int, **condition):
    """One-step samples ``(num, C, H, W)`` from ``model`` by its main pipeline (:func:`model_pipeline`; noise of
    image i from seed + i)."""
    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(num)]
    pipe = model_pipeline(model, solver)
    pipe.set_progress_bar_config(disable=True)
    run = dict(batch_size=num, generator=gens, output_type="pt", **condition)
    if "num_inference_steps" in inspect.signature(pipe.__call__).parameters:
        run["num_inference_steps"] = num_inference_steps
    return pipe(**run).images


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
    model_pipeline(model, solver, text).save_pretrained(output_dir, metrics=metrics)

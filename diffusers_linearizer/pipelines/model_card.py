"""The model card (``README.md``) that Linearizer pipelines write with ``save_pretrained``."""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Optional

from huggingface_hub import ModelCard, ModelCardData

TAGS = ["diffusers", "diffusers_linearizer", "linearizer", "flow-matching", "one-step", "unconditional-image-generation"]


def _plain(value: Any) -> Any:
    """A YAML/JSON-friendly copy of ``value`` (tensors and numpy scalars become numbers or lists)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _public_config(config) -> Dict[str, Any]:
    return {k: _plain(v) for k, v in dict(config).items() if not k.startswith("_")}


def linearizer_model_card(pipeline, metrics: Optional[Dict[str, Any]] = None, repo_id: Optional[str] = None) -> ModelCard:
    """A ``huggingface_hub.ModelCard`` describing ``pipeline``: both configs, ``metrics`` and usage.

    The metrics also go into the card's YAML metadata under ``linearizer_metrics`` (with ``linearizer_config``
    and ``scheduler_config``), so ``ModelCard.load(path).data`` gives them back.
    """
    model_config = _public_config(pipeline.linearizer.config)
    scheduler = getattr(pipeline, "scheduler", None)
    scheduler_config = _public_config(scheduler.config) if scheduler is not None else {}
    metrics = _plain(dict(metrics or {}))
    c, h, w = pipeline.linearizer.sample_shape
    kind = model_config.get("conditioning")
    tags = list(TAGS) if kind is None else [t for t in TAGS if t != "unconditional-image-generation"] + [
        f"{kind}-conditional", "classifier-free-guidance"]
    data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        tags=tags,
        pipeline_tag="text-to-image" if kind == "text" else "unconditional-image-generation",
        linearizer_config=model_config,
        scheduler_config=scheduler_config,
        linearizer_metrics=metrics,
    )
    name = repo_id or "path/to/this/pipeline"
    params = sum(p.numel() for p in pipeline.linearizer.parameters())
    metric_rows = "\n".join(f"| {k} | {v} |" for k, v in metrics.items()) or "| (none recorded) | |"
    uses_condition = {"class": "class_labels=[0, 1, 2, 3], guidance_scale=4.0",
                      "text": 'prompt=["a prompt"] * 4, guidance_scale=4.0'}.get(kind, "")
    condition = uses_condition or "batch_size=4"
    scheduler_section = "" if scheduler is None else f"""
`scheduler` (`LinearizerScheduler`):

```json
{json.dumps(scheduler_config, indent=2, sort_keys=True)}
```
"""
    if hasattr(pipeline, "model_card_text"):  # a pipeline of another task describes itself
        about = pipeline.model_card_text(name, params)
    else:
        about = _generation_text(pipeline, model_config, scheduler_config, name, params, condition, uses_condition, c, h, w)
    body = f"""{about}
## Metrics

| metric | value |
|---|---|
{metric_rows}

## Configuration

`linearizer` (`LinearizerModel`):

```json
{json.dumps(model_config, indent=2, sort_keys=True)}
```
{scheduler_section}"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _generation_text(pipeline, model_config, scheduler_config, name, params, condition, uses_condition, c, h, w) -> str:
    """The card's introduction and usage for the flow pipelines (generation and inversion)."""
    rank, k = model_config.get("noise_prior_rank") or 0, model_config.get("noise_prior_components") or 0
    noise = (f"a fitted noise prior (a mixture of {k} Gaussians on {rank} principal directions of the noise of "
             f"inverted training images, τ = {model_config.get('noise_prior_temperature', 1.0):g}); "
             f"`pipe(..., noise_prior=False)` samples τ·N(0, I) at τ = {model_config.get('sampling_temperature', 1.0):g}"
             if rank else f"τ·N(0, I), τ = {model_config.get('sampling_temperature', 1.0):g}")
    return f"""
# Linearizer ({type(pipeline).__name__})

A Linearizer `f(x) = g_y⁻¹(A g_x(x))` packaged for 🤗 diffusers with the
`diffusers-linearizer` package. It is not published on PyPI: install it from a clone of its source
repository (`pip install .` in the clone, or `pip install "git+<repository URL>"`). For flow matching all sampler
steps collapse into one structured operator `B`, so generation is one step,
`x = g_x⁻¹(B g_y(noise))`, and inversion is exact, `noise = g_y⁻¹(B† g_x(x))`.

* images: {c}×{h}×{w} (C×H×W), values in [0, 1]
* core: `{model_config.get("core_type")}`, rank {model_config.get("core_rank")}; {params:,} parameters
* sampler: `{scheduler_config.get("solver")}`, timestep spacing `{scheduler_config.get("timestep_spacing")}`
* noise: {noise}

## Usage

```python
import torch
from diffusers_linearizer import LinearizerPipeline, LinearizerInversionPipeline

pipe = LinearizerPipeline.from_pretrained("{name}")
images = pipe({condition}, generator=torch.Generator().manual_seed(0)).images  # one step

inverter = LinearizerInversionPipeline(**pipe.components)  # shares the collapsed operator
out = inverter(images{", " + uses_condition if uses_condition else ""})  # out.noise regenerates the images
```

`LinearizerPipeline.from_pretrained` returns the pipeline class of this model's kind
(`{type(pipeline).__name__}`).

`DiffusionPipeline.from_pretrained("{name}", trust_remote_code=True)` also works: the
`pipeline_linearizer.py` file beside `model_index.json` only re-exports the installed package's classes.
"""


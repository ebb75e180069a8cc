"""Writing a converted checkpoint as a standard ``LinearizerPipeline`` directory (and to the Hub)."""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

from ..atomic import write_text_atomic
from .convert import ReferenceConversion


def source_card_section(conversion: ReferenceConversion) -> str:
    """The model card's provenance section."""
    src = conversion.source
    lines = [
        "## Source",
        "",
        "Converted with `conversion/convert_reference_to_diffusers.py` of diffusers-linearizer from a checkpoint of the",
        "Linearizer paper's original code (https://github.com/assafshocher/Linearizer, `one_step/`). The pickle was read",
        "with a restricted unpickler (no code from the file or the reference repository was imported or run).",
        "",
        f"* checkpoint: `{os.path.basename(src['checkpoint'])}` (sha256 `{src['checkpoint_sha256']}`)",
        f"* dataset: `{src.get('dataset')}`; reference sampler: `{src['reference_sampling_method']}` with "
        f"{src['reference_steps']} steps (`scheduler.solver = {conversion.scheduler.config.solver!r}`, "
        "`timestep_spacing = 'reference'`; call the pipeline with "
        f"`num_inference_steps={src['reference_steps']}` to reproduce the reference's training-time sampler; its test "
        "script uses 100)",
        "* license: the original code and checkpoints are published without a license; these converted weights are "
        "subject to whatever terms their authors set, so check them before redistributing.",
        f"* {src['tensors']} tensors mapped; training arguments (args.json):",
        "",
        "```json",
        json.dumps(conversion.args, indent=2, sort_keys=True, default=str),
        "```",
    ]
    if conversion.warnings:
        lines += ["", "Conversion warnings:", ""] + [f"* {w}" for w in conversion.warnings]
    return "\n".join(lines) + "\n"


def save_converted_pipeline(conversion: ReferenceConversion, dump_path: str, dtype: Optional[torch.dtype] = None,
                            push_to_hub: Optional[str] = None):
    """Write a standard ``LinearizerPipeline`` directory (``model_index.json``, safetensors, scheduler config,
    ``README.md`` with the source) and optionally upload it to the Hub repo ``push_to_hub``."""
    from ..pipelines import pipeline_class_for

    model = conversion.model if dtype is None else conversion.model.to(dtype)
    pipe = pipeline_class_for(model)(linearizer=model, scheduler=conversion.scheduler)
    pipe.save_pretrained(dump_path)
    readme = os.path.join(dump_path, "README.md")
    text = open(readme, encoding="utf-8").read() if os.path.isfile(readme) else ""
    marker = "\n## Usage"
    section = source_card_section(conversion)
    text = text.replace(marker, "\n" + section + marker, 1) if marker in text else text + "\n" + section
    text = text.replace("license: apache-2.0", "license: other", 1)  # the package's license is not the weights' license
    write_text_atomic(readme, text)
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        repo_id = api.create_repo(push_to_hub, exist_ok=True).repo_id
        api.upload_folder(folder_path=dump_path, repo_id=repo_id, commit_message="Convert a reference Linearizer checkpoint")
    return pipe

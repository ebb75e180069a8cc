"""Written by diffusers-linearizer's `save_pretrained`.

diffusers loads a third-party pipeline class from a module file saved beside `model_index.json`
(`DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`). This file contains no model code: it
re-exports the pipeline classes of the installed package diffusers-linearizer.
"""

from diffusers_linearizer import (  # noqa: F401
    LinearizerClassPipeline,
    LinearizerInversionPipeline,
    LinearizerPipeline,
    LinearizerProjectionPipeline,
    LinearizerStyleTransferPipeline,
    LinearizerTextPipeline,
)

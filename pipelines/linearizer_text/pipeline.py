"""diffusers ``custom_pipeline`` entry point for text-conditioned Linearizers (how it works: ``pipelines/linearizer``):

    DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/linearizer_text", trust_remote_code=True)
"""

from diffusers_linearizer import LinearizerTextPipeline

__all__ = ["LinearizerTextPipeline"]

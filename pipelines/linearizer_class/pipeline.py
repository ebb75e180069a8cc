"""diffusers ``custom_pipeline`` entry point for class-conditioned Linearizers (how it works: ``pipelines/linearizer``):

    DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/linearizer_class", trust_remote_code=True)
"""

from diffusers_linearizer import LinearizerClassPipeline

__all__ = ["LinearizerClassPipeline"]

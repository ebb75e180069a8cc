"""diffusers ``custom_pipeline`` entry point for style-transfer Linearizers (how it works: ``pipelines/linearizer``):

    DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/linearizer_style", trust_remote_code=True)
"""

from diffusers_linearizer import LinearizerStyleTransferPipeline

__all__ = ["LinearizerStyleTransferPipeline"]

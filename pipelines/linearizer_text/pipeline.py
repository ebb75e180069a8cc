"""Community-pipeline entry point of the Linearizer for diffusers' ``custom_pipeline`` loader (text-conditioned models).

    DiffusionPipeline.from_pretrained(path, custom_pipeline="pipelines/linearizer_text", trust_remote_code=True)

diffusers copies this file into its module cache and takes the one ``DiffusionPipeline`` subclass it
finds here, so this file imports exactly one pipeline class: ``LinearizerTextPipeline`` from the installed
``diffusers_linearizer`` package (installed from a clone of this repository: ``pip install .``). Each kind
of model has its folder (``pipelines/linearizer``, ``pipelines/linearizer_class``, ``pipelines/linearizer_text``);
the inversion pipeline is ``diffusers_linearizer.LinearizerInversionPipeline``.
"""

from diffusers_linearizer import LinearizerTextPipeline

__all__ = ["LinearizerTextPipeline"]

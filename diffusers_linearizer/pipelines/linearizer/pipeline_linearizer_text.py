"""``LinearizerTextPipeline``: one-step generation with a text-conditioned Linearizer and classifier-free
guidance, with ``StableDiffusionPipeline``'s arguments and components (``prompt``, ``negative_prompt``,
``prompt_embeds``, :meth:`encode_prompt`, ``text_encoder`` and ``tokenizer``).

The core is conditioned on a *pooled* text embedding ``(N, condition_dim)``; the guided run still collapses
into one operator ``B(c, w)`` per prompt (:mod:`.conditioning`).
"""

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from diffusers.utils import replace_example_docstring
from diffusers import DiffusionPipeline, ImagePipelineOutput

from ...models import LinearizerModel
from ...schedulers import LinearizerScheduler
from .conditioning import TextConditionMixin
from .pipeline_linearizer import LinearizerPipeline



EXAMPLE_DOC_STRING = '''
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_linearizer import LinearizerModel, LinearizerScheduler, LinearizerTextPipeline

        >>> model = LinearizerModel(sample_size=8, num_blocks=1, conditioner_channels=8, core_rank=4, core_hidden_dim=16,
        ...                         core_embedding_dim=8, conditioning="text", condition_dim=16)  # untrained, tiny
        >>> pipe = LinearizerTextPipeline(linearizer=model, scheduler=LinearizerScheduler())
        >>> embeds = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))  # e.g. from pipe.encode_prompt(...)
        >>> images = pipe(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros(2, 16), guidance_scale=2.0,
        ...               num_inference_steps=10, output_type="pt").images
        >>> tuple(images.shape)
        (2, 1, 8, 8)

        ```
'''

class LinearizerTextPipeline(TextConditionMixin, LinearizerPipeline):
    r"""Text-conditioned generation: ``x = g_x⁻¹(B(c, w) g_y(τ·ε))`` with ``c`` the prompt's pooled embedding.

    Args:
        linearizer ([`LinearizerModel`]): a model with ``conditioning="text"``.
        scheduler ([`LinearizerScheduler`]): the sampler and its exact collapse.
        text_encoder (optional, a ``transformers`` text model such as ``CLIPTextModel``) and tokenizer
            (optional): encode ``prompt``; saved and loaded like Stable Diffusion's components. Without them
            the pipeline takes ``prompt_embeds``.
    """

    model_cpu_offload_seq = "text_encoder->linearizer"
    _optional_components = ["text_encoder", "tokenizer"]
    _model_kinds = ("text",)

    def __init__(self, linearizer: LinearizerModel, scheduler: LinearizerScheduler, text_encoder=None, tokenizer=None):
        DiffusionPipeline.__init__(self)
        self.register_modules(linearizer=linearizer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.check_model_kind()

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self, prompt=None, guidance_scale: Optional[float] = None, negative_prompt=None,
        prompt_embeds: Optional[torch.Tensor] = None, negative_prompt_embeds: Optional[torch.Tensor] = None,
        batch_size: Optional[int] = None, num_inference_steps: int = 100, solver: Optional[str] = None,
        one_step: bool = True, generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None, temperature: Optional[float] = None, output_type: str = "pil",
        return_dict: bool = True, callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",), clamp: bool = True,
        noise_prior: bool = True,
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""Generate images of the given prompts.

        Args:
            prompt: a string, or one per image (a list sets the batch size); needs ``text_encoder`` and
                ``tokenizer``.
            guidance_scale: classifier-free guidance ``s`` (``w = s − 1``, on for ``s > 1``; default
                ``DEFAULT_GUIDANCE_SCALE`` = 4.0), as in :class:`LinearizerClassPipeline`.
            negative_prompt: the text ``c⁻`` to steer away from (default the empty prompt); needs guidance.
            prompt_embeds / negative_prompt_embeds: pooled text embeddings ``(N, condition_dim)`` instead of
                ``prompt`` / ``negative_prompt`` (see :meth:`encode_prompt`).
            batch_size, num_inference_steps, solver, one_step, generator, latents, temperature, output_type,
                return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs, clamp, noise_prior: as in
                :meth:`LinearizerPipeline.__call__`.

        Examples:

        Returns:
            [`~diffusers.ImagePipelineOutput`] with ``images`` (PIL images, an ``np.ndarray`` ``(N, H, W, C)``, a
            tensor ``(N, C, H, W)`` or the final latents, by ``output_type``), or the tuple ``(images,)`` when
            ``return_dict=False``.
        """
        cond_args = dict(prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                         negative_prompt_embeds=negative_prompt_embeds)
        return self._generate(batch_size, num_inference_steps, solver, one_step, generator, latents, temperature,
                              output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs,
                              clamp, cond_args=cond_args, guidance_scale=guidance_scale,
                              noise_prior=noise_prior)

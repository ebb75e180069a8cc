"""``LinearizerClassPipeline``: one-step generation with a class-conditioned Linearizer and classifier-free
guidance, with ``DiTPipeline``'s arguments (``class_labels`` as ids or names, ``guidance_scale``).

The guided prediction ``(1 + w)·A(t, c) z − w·A(t, c⁻) z`` is linear in ``z``, so a guided run collapses into
one operator ``B(c, w)`` of the same rank as the unconditional ``B``, cached per ``(c, c⁻, w)``: guidance costs
nothing per image (:mod:`.conditioning`).
"""

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from diffusers.utils import replace_example_docstring
from diffusers import ImagePipelineOutput

from .conditioning import ClassConditionMixin
from .pipeline_linearizer import LinearizerPipeline



EXAMPLE_DOC_STRING = '''
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_linearizer import PACKAGED_MODELS, LinearizerPipeline

        >>> pipe = LinearizerPipeline.from_pretrained(PACKAGED_MODELS["fashion-mnist-classes"])
        >>> type(pipe).__name__
        'LinearizerClassPipeline'
        >>> images = pipe(class_labels=["Sneaker", "Bag"], guidance_scale=3.0,
        ...               generator=torch.Generator().manual_seed(0)).images
        >>> len(images), pipe.get_label_ids(["Sneaker", "Bag"])
        (2, [7, 8])

        ```
'''

class LinearizerClassPipeline(ClassConditionMixin, LinearizerPipeline):
    r"""Class-conditioned generation: ``x = g_x⁻¹(B(c, w) g_y(τ·ε))``.

    Args:
        linearizer ([`LinearizerModel`]): a model with ``conditioning="class"`` (core ``A(t, c)``).
        scheduler ([`LinearizerScheduler`]): the sampler and its exact collapse.

    ``id2label``, ``labels`` and :meth:`get_label_ids` map class names to ids as in ``DiTPipeline``.
    """

    _model_kinds = ("class",)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self, class_labels=None, guidance_scale: Optional[float] = None, negative_class_labels=None,
        batch_size: Optional[int] = None, num_inference_steps: int = 100, solver: Optional[str] = None,
        one_step: bool = True, generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None, temperature: Optional[float] = None, output_type: str = "pil",
        return_dict: bool = True, callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",), clamp: bool = True,
        noise_prior: bool = True,
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""Generate images of the given classes.

        Args:
            class_labels: a class id or name, or one per image (a list or an integer tensor; names as in
                ``id2label``, see :meth:`get_label_ids`); by default the classes in turn, ``i mod num_classes``.
                One call may mix classes: each class gets its own cached ``B(c, w)``. A list sets the batch size.
            guidance_scale: classifier-free guidance ``s``, diffusers' convention: the prediction is
                ``(1 + w)·A(t, c) z − w·A(t, c⁻) z`` with ``w = s − 1``, on for ``s > 1`` (``0`` or ``1``: off).
                Default (``None``): ``DEFAULT_GUIDANCE_SCALE`` = 4.0.
            negative_class_labels: the class(es) ``c⁻`` to steer away from (default the learned null class ∅);
                needs guidance.
            batch_size, num_inference_steps, solver, one_step, generator, latents, temperature, output_type,
                return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs, clamp, noise_prior: as in
                :meth:`LinearizerPipeline.__call__`.

        Examples:

        Returns:
            [`~diffusers.ImagePipelineOutput`] with ``images`` (PIL images, an ``np.ndarray`` ``(N, H, W, C)``, a
            tensor ``(N, C, H, W)`` or the final latents, by ``output_type``), or the tuple ``(images,)`` when
            ``return_dict=False``.
        """
        cond_args = dict(class_labels=class_labels, negative_class_labels=negative_class_labels)
        return self._generate(batch_size, num_inference_steps, solver, one_step, generator, latents, temperature,
                              output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs,
                              clamp, cond_args=cond_args, guidance_scale=guidance_scale,
                              noise_prior=noise_prior)

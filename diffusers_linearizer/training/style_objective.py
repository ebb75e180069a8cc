r"""The style objective (``--objective style``): a style model reproduces its teacher's stylisations.

For style pairs ``(x, y, s)`` (a content crop, the teacher's stylisation of it in style ``s``; ``style-data``)::

    L = D(y, g⁻¹(A_s g(x)))        (style_image)

with ``D`` the trainer's pixel distance (MSE, or MSE + SSIM), images in ``[0, 1]``. One forward and one inverse
pass of the shared ``g``; gradients reach ``g`` and the style's kernel. The trainer hands the pairs over as
``inputs.images`` (the stylised crops), ``inputs.noise`` (the content crops) and ``inputs.condition`` (the
style ids).
"""

from __future__ import annotations

from typing import Dict

from torch import Tensor

__all__ = ["style_component"]


def style_component(objective, inputs) -> Dict[str, Tensor]:
    """The ``style`` objective's term for a batch of style pairs."""
    if inputs.condition is None:
        raise ValueError("The style objective needs style pairs with style ids (`diffusers-linearizer style-data`).")
    model = objective.model
    prediction = model(inputs.noise, condition=inputs.condition).sample
    return {"style_image": objective.distance(inputs.images, prediction)}

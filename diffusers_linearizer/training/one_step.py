"""``B`` for training: the collapsed operator of a model's core attached to the autograd graph.

The one-step generator built on it (``generate``, ``invert``, ``log_likelihood``, ``dequantize``,
``bits_per_dim``) lives in the model layer, :mod:`diffusers_linearizer.models.one_step`; its names are
re-exported here for the trainer's objectives.
"""

from __future__ import annotations

import torch

from ..models.one_step import LOG_2PI, bits_per_dim, dequantize, generate, invert, log_likelihood  # noqa: F401

__all__ = ["collapsed_operator", "class_operators", "generate", "invert", "log_likelihood", "dequantize", "bits_per_dim"]


def collapsed_operator(model, scheduler, num_inference_steps: int, solver: str, dtype=torch.float64, core=None):
    """``B`` for ``model``'s core (or the view ``core`` of it, e.g. one class's ``model.guided_core(c)``), attached
    to the graph when gradients are enabled (``cache=False``)."""
    return scheduler.collapse(model.core if core is None else core, num_inference_steps, solver=solver, dtype=dtype,
                              cache=False)


def class_operators(model, scheduler, num_inference_steps: int, solver: str, labels):
    """``(index, B(c))`` for every class ``c`` in ``labels`` ``(N,)``: the rows of that class and the unguided
    collapse of its core ``A(t, c)`` (``w = 0``), attached to the graph like :func:`collapsed_operator`."""
    for c in labels.unique().tolist():
        index = (labels == c).nonzero().squeeze(1)
        yield index, collapsed_operator(model, scheduler, num_inference_steps, solver, core=model.guided_core(int(c)))

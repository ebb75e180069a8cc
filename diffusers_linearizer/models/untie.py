"""Untie a model's shared invertible network: ``g_x`` and ``g_y`` become two copies of ``g``.

A model with ``shared_g=True`` runs one network ``g`` with two role inputs, ``g_x = g(·; role_x)`` and
``g_y = g(·; role_y)``. :func:`untie_networks` builds the same model with ``shared_g=False`` and both networks set to
``g``'s weights, keeping the role inputs, so

    f_untied(x) = g_y⁻¹(A g_x(x)) = f(x)      for every x and t, bit for bit,

and the collapse, the likelihood and every sample are unchanged at first; training then moves the two networks
apart, which doubles g's parameters at the same cost per step (each pass runs one of them, as before). This is the
way to give a trained model more capacity without starting again (``diffusers-linearizer train --untie_g``).

Examples:
    >>> import torch
    >>> from diffusers_linearizer import LinearizerModel
    >>> from diffusers_linearizer.models.untie import untie_networks
    >>> model = LinearizerModel(sample_size=8, num_blocks=1, conditioner_channels=8, core_type="lowrank", core_rank=2).eval()
    >>> untied = untie_networks(model)
    >>> x = torch.rand(2, 1, 8, 8)
    >>> untied.config.shared_g, bool(torch.equal(untied(x, 0.5).sample, model(x, 0.5).sample))
    (False, True)
"""

from __future__ import annotations

__all__ = ["untie_networks"]


def untie_networks(model):
    """The model with ``shared_g=False`` and ``g_x``, ``g_y`` both copies of ``model.g`` (the same function; see the
    module docstring). ``ValueError`` for a model whose networks are already separate, or whose core type needs one
    network on both sides (projection and style cores)."""
    from .core_registry import CORES
    from .modeling_linearizer import LinearizerModel

    if not model.config.shared_g:
        raise ValueError("This model already has separate networks g_x and g_y (shared_g=False).")
    if CORES.entry(model.config.core_type).same_g:
        raise ValueError(f"core_type {model.config.core_type!r} needs one network on both sides (g_x ≡ g_y); it "
                         "cannot be untied.")
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    config["shared_g"] = False
    untied = LinearizerModel(**config).to(device=model.device)
    dtype = next(model.parameters()).dtype
    if dtype != next(untied.parameters()).dtype:
        untied.to(dtype=dtype)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("g."):
            state["g_x." + key[2:]] = value
            state["g_y." + key[2:]] = value
        else:
            state[key] = value
    untied.load_state_dict(state, strict=True)  # a noise prior's buffers too (its config keys came with config)
    return untied.train(model.training)

"""An exponential moving average of a model's weights, checkpointable with 🤗 accelerate."""

from __future__ import annotations

import copy
from typing import Any, Dict

import torch


class EMA:
    """Exponential moving average of a model's floating-point parameters (kept in float32).

    ``shadow ← d·shadow + (1 − d)·param`` after every optimizer step with ``d = decay`` or, with
    ``warmup``, ``min(decay, (1 + n)/(10 + n))`` after ``n`` updates. Buffers are not averaged: a copy of
    the model made by :meth:`copy_to` takes them from the live model. ``state_dict``/``load_state_dict``
    make it a checkpointable object for ``accelerator.register_for_checkpointing``.
    """

    def __init__(self, model, decay: float = 0.999, warmup: bool = True):
        self.decay, self.warmup = float(decay), bool(warmup)
        self.num_updates = 0
        self.shadow: Dict[str, "torch.Tensor"] = {
            name: p.detach().to(torch.float32).clone() for name, p in model.named_parameters() if p.is_floating_point()
        }

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self, model) -> None:
        d = self.current_decay()
        with torch.no_grad():
            params = dict(model.named_parameters())
            names = list(self.shadow)
            shadows = [self.shadow[n] for n in names]
            values = [params[n].detach().to(torch.float32) for n in names]
            torch._foreach_lerp_(shadows, values, 1.0 - d)
        self.num_updates += 1

    def copy_to(self, model) -> None:
        """Write the averaged weights into ``model``'s parameters (cast to their dtype)."""
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.shadow:
                    p.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))

    def averaged_copy(self, model):
        """A deep copy of ``model`` holding the averaged weights."""
        twin = copy.deepcopy(model)
        self.copy_to(twin)
        return twin

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match the model's parameters.")
        self.decay, self.warmup, self.num_updates = float(state["decay"]), bool(state["warmup"]), int(state["num_updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)

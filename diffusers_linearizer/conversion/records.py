"""Inert records of the objects a checkpoint pickles, and helpers to walk recorded ``nn.Module`` trees."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Optional

import torch


class Record:
    """An inert stand-in for an object of a class the checkpoint names (never imported).

    ``cls_path`` is ``"module.QualName"``; ``state`` is what the pickle stored for the object (for
    ``nn.Module``\\ s the instance ``__dict__`` with ``_parameters``, ``_buffers`` and ``_modules``);
    ``args`` the ``NEWOBJ`` arguments.
    """

    cls_path = "?"

    def __new__(cls, *args, **kwargs):  # NEWOBJ: cls.__new__(cls, *args); __init__ is never run
        obj = object.__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "state", None)
        return obj

    def __setstate__(self, state):
        object.__setattr__(self, "state", state)

    def __reduce__(self):
        raise TypeError(f"Refusing to re-pickle a Record of {self.cls_path}.")

    @property
    def attrs(self) -> Dict[str, Any]:
        """The instance attributes (``state`` when it is a dict; the dict part of ``(dict, slots)``)."""
        state = self.__dict__.get("state")
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        return state if isinstance(state, dict) else {}

    @property
    def class_name(self) -> str:
        return self.cls_path.rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"<Record {self.cls_path}>"


def module_children(record: Any) -> "OrderedDict[str, Any]":
    """The ``_modules`` of a recorded ``nn.Module`` (``None`` entries kept)."""
    mods = record.attrs.get("_modules") if isinstance(record, Record) else None
    return mods if isinstance(mods, dict) else OrderedDict()


def module_tensors(record: Any) -> "OrderedDict[str, torch.Tensor]":
    """Parameters and persistent buffers of one recorded module (not of its children)."""
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    if not isinstance(record, Record):
        return out
    skip = record.attrs.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (record.attrs.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"Malformed checkpoint: {record.cls_path}.{name} is {type(value).__name__}, not a tensor.")
            out[name] = value
    return out


def record_state_dict(record: Any, prefix: str = "", _ancestors: tuple = ()) -> "OrderedDict[str, torch.Tensor]":
    """The ``state_dict()`` the recorded module would have had (same keys, same order)."""
    if any(record is a for a in _ancestors) or len(_ancestors) > 256:
        raise ValueError(f"Malformed checkpoint: the module tree contains a cycle or is too deep at {prefix or 'the root'}.")
    out = OrderedDict((prefix + k, v) for k, v in module_tensors(record).items())
    for name, child in module_children(record).items():
        if child is not None:
            out.update(record_state_dict(child, f"{prefix}{name}.", _ancestors + (record,)))
    return out


def get_path(record: Any, path: str) -> Optional[Any]:
    """Follow ``a.b.0.c`` through ``_modules`` (then plain attributes for the last part); ``None`` if absent."""
    node = record
    for part in path.split("."):
        if not isinstance(node, Record):
            return None
        children = module_children(node)
        node = children[part] if part in children else node.attrs.get(part)
    return node

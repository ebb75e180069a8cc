"""Checks of the files the package reads, each a ``ValueError`` that names the file and what is wrong with it.

* :func:`check_safetensors` — a safetensors file is whole: its 8-byte header length, its JSON header, and
  tensor data that covers exactly the rest of the file (a truncated download or an interrupted copy says
  how many bytes are missing);
* :func:`read_json_file` — a JSON file that parses to an object (the name and the line of a syntax error);
* :func:`load_plain_torch_file` — a ``torch.save`` file read with ``weights_only=True`` (tensors, numbers,
  strings and plain containers only: a pickle that would import or call anything is refused, never run).

Nothing here imports torch at module level.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any, Dict

__all__ = ["check_safetensors", "load_plain_torch_file", "read_json_file"]

#: safetensors refuses headers larger than this (100 MB); so do we, before reading one
MAX_SAFETENSORS_HEADER = 100_000_000


def check_safetensors(path: str) -> Dict[str, Any]:
    """The parsed header of the safetensors file ``path`` (tensor name → dtype, shape, offsets); a
    ``ValueError`` naming the file when it is missing, truncated, longer than its header says, or not a
    safetensors file at all."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (safetensors weights were expected there).")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file: it holds {size} byte(s), fewer than the 8 of a header length.")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_SAFETENSORS_HEADER or 8 + length > size:
            what = "truncated or not a safetensors file" if length <= MAX_SAFETENSORS_HEADER else "not a safetensors file"
            raise ValueError(f"{path}: {what}: its first 8 bytes announce a {length:,}-byte header, but the file has "
                             f"{size:,} bytes.")
        try:
            header = json.loads(f.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path}: not a safetensors file: its header is not JSON.") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file: its header is not a JSON object.")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"{path}: not a safetensors file: tensor {name!r} has no valid data_offsets.")
        end = max(end, offsets[1])
    data = size - 8 - length
    if data < end:
        raise ValueError(f"{path}: truncated: its header describes {end:,} bytes of tensor data, the file holds "
                         f"{data:,} ({end - data:,} missing). Copy or download it again.")
    if data > end:
        raise ValueError(f"{path}: {data - end:,} byte(s) after the tensor data its header describes; the file is "
                         "damaged (or two files were joined).")
    return header


def read_json_file(path: str, what: str = "JSON file") -> Dict[str, Any]:
    """The JSON object in ``path``; a ``ValueError`` naming the file (and the line of a syntax error)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (the {what} was expected there).")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the {what} is not UTF-8 text.") from None
    except json.JSONDecodeError as err:
        reason = "empty" if err.pos == 0 and not err.doc.strip() else f"line {err.lineno}, column {err.colno}: {err.msg}"
        raise ValueError(f"{path}: the {what} is not valid JSON ({reason}; truncated?).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: the {what} must hold a JSON object, got {type(value).__name__}.")
    return value


def load_plain_torch_file(path: str, what: str = "file"):
    """``torch.load(path, weights_only=True)`` on the CPU, with accelerate's allowed numpy types; a ``ValueError``
    naming the file when it is missing, truncated, or pickles anything but tensors and plain data."""
    import pickle
    import zipfile

    from accelerate.utils import load

    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (the {what} was expected there).")
    try:
        return load(path, map_location="cpu")
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text:
            found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?:\.\s|\n|$)", text)
            detail = f" ({found.group(1).strip()})" if found and found.group(1).strip() else ""
            raise ValueError(f"{path}: refused: the {what} pickles something other than tensors and plain data"
                             f"{detail}; reading it could run code, so it was not read.") from None
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise ValueError(f"{path}: the {what} is damaged or truncated ({first}).") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError) as err:
        first = re.split(r"(?<=\.)\s", str(err).strip(), maxsplit=1)[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: the {what} is damaged or truncated ({type(err).__name__}: {first}).") from None

"""Checks of the arguments of ``diffusers-linearizer``, all made before any model is loaded or anything written.

* Numbers: :func:`whole_number` and :func:`owner_rule` are argparse ``type=`` functions, so the parser itself
  refuses a bad value with the flag's name (``argument --nrow: ...``, exit status 2). Where the package already
  has the rule for a value (the scheduler's for ``--steps``, the pipeline's for ``--temperature`` and
  ``--guidance-scale``), :func:`owner_rule` applies that rule instead of a copy of it.
* Files: :func:`check_output_file` / :func:`check_output_folder` for everything a command writes (not a folder
  where a file is meant or the reverse, its folder exists or can be created and is writable, an extension the
  command knows), :func:`check_device` for ``--device``; :func:`check_seeds` and :func:`check_images_fit` for
  the limits that depend on several values. They raise ``ValueError`` naming the flag, which the command line
  prints as one line with exit status 2.

Imports nothing heavy at module level (``torch`` only inside :func:`check_device`).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable, Optional, Sequence, Tuple

#: ``torch.Generator.manual_seed`` takes seeds 0 … 2**64 − 1 (negative ones alias the top of that range)
MAX_SEED = 2**64 - 1
#: what ``torch.save`` files are called here
TENSOR_EXTENSIONS = (".pt", ".pth")
#: GIF frame delays are stored in hundredths of a second, as a 16-bit number
GIF_DURATION_RANGE = (10, 655_350)
#: how many copies of the images a command holds at once (the images, their stack and the grid)
IMAGE_COPIES = 3


def _show(value: int) -> str:
    return f"2**64 − 1 ({value})" if value == MAX_SEED else str(value)


def _bounds(low: Optional[int], high: Optional[int]) -> str:
    if low is not None and high is not None:
        return f"between {_show(low)} and {_show(high)}"
    return f"≥ {_show(low)}" if low is not None else f"≤ {_show(high)}"


def whole_number(low: Optional[int] = None, high: Optional[int] = None, hint: str = "") -> Callable[[str], int]:
    """An argparse ``type=``: a whole number within ``[low, high]``, else an error with the range (and ``hint``)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a whole number {_bounds(low, high)}{hint}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {_bounds(low, high)}{hint}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def owner_rule(parse: Callable[[str], object], rule: Callable[[], Callable], what: str) -> Callable[[str], object]:
    """An argparse ``type=``: ``parse`` the text, then apply the package's own check ``rule()(value)``.

    ``rule`` returns the check (imported only when the flag is used); its ``ValueError`` message becomes the
    parser's error, so the command line says exactly what the Python API says.
    """

    def check(text: str):
        try:
            value = parse(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            rule()(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None
        return value

    check.__name__ = what
    return check


def real_number(text: str) -> float:
    """``float(text)`` for :func:`owner_rule` (NaN and infinities pass here: the owner's rule refuses them)."""
    return float(text)


def _steps_rule():
    from .schedulers.solvers import SOLVERS, check_run

    return lambda steps: check_run(steps, SOLVERS[0])


def _temperature_rule():
    from .models.config_checks import check_temperature

    return check_temperature


def _guidance_rule():
    from .pipelines.linearizer.conditioning import guidance_weight

    return guidance_weight


STEPS = owner_rule(int, _steps_rule, "a whole number of grid points ≥ 2")
TEMPERATURE = owner_rule(real_number, _temperature_rule, "a number > 0")
GUIDANCE_SCALE = owner_rule(real_number, _guidance_rule, "a number ≥ 0")
SEED = whole_number(0, MAX_SEED)
POSITIVE = whole_number(1)
FRAMES = whole_number(2, hint=" (both ends count)")
GIF_DURATION = whole_number(*GIF_DURATION_RANGE, hint=" milliseconds (GIF delays are hundredths of a second)")
PORT = whole_number(1, 65_535)


# ---------------------------------------------------------------------- values that depend on each other
def check_seeds(seed: int, count: int, count_text: str, flag: str = "--seed", high: int = MAX_SEED) -> None:
    """Seeds ``seed … seed + count − 1`` must all be valid (at most ``high``); ``count_text`` says where ``count``
    comes from (e.g. ``"--num-images 16"``)."""
    if seed + count - 1 > high:
        raise ValueError(
            f"{flag} {seed} with {count_text} uses seeds up to {seed + count - 1}; seeds go up to {_show(high)}: "
            f"use {flag} ≤ {high - count + 1}."
        )


def physical_memory() -> Optional[int]:
    """This machine's memory in bytes, or ``None`` where the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def check_images_fit(count: int, shape: Sequence[int], flag: str, advice: str) -> None:
    """Refuse ``count`` images of ``shape`` (C, H, W) when holding them (float32, :data:`IMAGE_COPIES` copies)
    would take more than this machine's memory; the message gives the estimate, the limit and ``advice``."""
    memory = physical_memory()
    need = IMAGE_COPIES * 4 * count * math.prod(int(s) for s in shape)
    if memory is not None and need > memory:
        c, h, w = shape
        raise ValueError(
            f"{flag} {count}: the command holds every image ({c}×{h}×{w}, float32) and their grid in memory, about "
            f"{need / 2**30:,.1f} GiB, more than this machine's {memory / 2**30:,.1f} GiB. {advice}"
        )


# ---------------------------------------------------------------------- files and folders
def _check_creatable(path: str, flag: str, what: str) -> None:
    """``path``'s folder exists or can be created, and the command may write there."""
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {path!r}: cannot create the folder {folder!r} for the {what}: {existing!r} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: cannot write the {what} there: the folder {existing!r} is not writable.")


def check_output_file(path: Optional[str], flag: str, what: str, example: str,
                      extensions: Optional[Sequence[str]] = None, image: bool = False) -> None:
    """A file a command will write: a file name (not a folder) whose folder exists or can be created and is
    writable, ending in one of ``extensions`` (with ``image=True``: an extension naming an image format).
    ``example`` is a file name to suggest when ``path`` names a folder."""
    if path is None:
        return
    if not str(path).strip():
        raise ValueError(f"{flag} is empty; give the file to write the {what} to.")
    if os.path.isdir(path) or str(path).endswith(("/", os.sep)):
        raise ValueError(f"{flag} {path!r} names a folder; give a file name for the {what}, e.g. "
                         f"{os.path.join(path, example)!r}.")
    if image:
        from .images import image_format

        try:
            image_format(path)
        except ValueError as err:
            raise ValueError(f"{flag}: {err}") from None
    elif extensions is not None and not str(path).lower().endswith(tuple(extensions)):
        raise ValueError(f"{flag} {path!r}: the {what} is written as a {' or '.join(extensions)} file; name it so, "
                         f"e.g. {os.path.splitext(path)[0] + extensions[0]!r}.")
    _check_creatable(path, flag, what)


def check_output_folder(path: Optional[str], flag: str, what: str) -> None:
    """A folder a command will write files into: not an existing file; it exists or can be created, writable."""
    if path is None:
        return
    if not str(path).strip():
        raise ValueError(f"{flag} is empty; give the folder to write the {what} to.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a file; give a folder for the {what}.")
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path!r}: the folder is not writable.")
        return
    _check_creatable(os.path.join(path, "x"), flag, what)


def check_distinct(*named: Tuple[str, Optional[str]]) -> None:
    """No two outputs of one command may be the same file."""
    seen = {}
    for flag, path in named:
        if path is None:
            continue
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            raise ValueError(f"{seen[key]} and {flag} name the same file {path!r}; give each its own.")
        seen[key] = flag


def check_device(name: Optional[str]) -> None:
    """A ``ValueError`` (before anything is loaded) when ``--device`` names no device this machine has."""
    import torch

    if name is None:
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"--device {name!r} is not a torch device ({err}); use e.g. cpu, cuda, cuda:1, mps.") from None
    if device.type == "cpu":
        return
    module = getattr(torch, device.type, None)
    available = bool(module is not None and hasattr(module, "is_available") and module.is_available())
    if not available:
        hint = " (this torch is a CPU-only build)" if device.type == "cuda" and torch.version.cuda is None else ""
        raise ValueError(f"--device {name}: no {device.type} device is available on this machine{hint}; use --device cpu.")
    count = getattr(module, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise ValueError(f"--device {name}: this machine has {count} {device.type} device(s) (0 … {count - 1}).")

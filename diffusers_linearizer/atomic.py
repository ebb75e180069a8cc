"""Atomic writes: a reader sees either the old file (or folder) or the complete new one, never a half-written one.

The one place where the package writes files safely; pipelines, the command line, the trainer and the
benchmark scripts all use it. The pattern is always the same: write into a temporary sibling (same
folder, hence same file system), flush it to disk, then ``os.replace`` it into place, which is atomic
on POSIX and Windows. This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from typing import Any, Callable, Iterator, Sequence

__all__ = ["write_bytes_atomic", "write_text_atomic", "write_json_atomic", "atomic_dir", "replace_dir"]


def _sibling(path: str, suffix: str = "") -> str:
    """A fresh hidden name next to ``path`` (the parent folder is created when missing)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    return os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}{suffix}")


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling, ``fsync`` and a rename."""
    tmp = _sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, data: Any) -> None:
    """``data`` as indented, key-sorted JSON (unknown types through ``str``), written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _move_into(src: str, dst: str, last: Sequence[str]) -> None:
    """Move every entry of the finished folder ``src`` into the existing folder ``dst``, one rename each.

    An old entry of the same name is first renamed away (then deleted with ``src``); other entries of
    ``dst`` stay. Names in ``last`` move after all others, so an index file never names an entry that
    is not yet in place.
    """
    entries = sorted(os.listdir(src), key=lambda e: (e in last, e))
    graveyard = os.path.join(src, f".old-{uuid.uuid4().hex[:12]}")
    os.makedirs(graveyard)
    for entry in entries:
        s, d = os.path.join(src, entry), os.path.join(dst, entry)
        if os.path.isdir(s) and os.path.lexists(d) or os.path.isdir(d) and not os.path.islink(d):
            os.replace(d, os.path.join(graveyard, entry))
        os.replace(s, d)


def _swap_in(tmp: str, path: str, merge: bool, last: Sequence[str]) -> None:
    if not os.path.exists(path):
        os.replace(tmp, path)
    elif merge:
        _move_into(tmp, path, last)
    else:
        old = _sibling(path, ".old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str, merge: bool = True, last: Sequence[str] = ()) -> Iterator[str]:
    """``with atomic_dir(path) as tmp:`` fill the temporary folder ``tmp``; on success it takes ``path``'s place.

    A new ``path`` is one rename. An existing folder is either merged into (``merge=True``: each entry
    written to ``tmp`` replaces its namesake by a rename, names in ``last`` move last, other files are
    kept) or replaced as a whole (``merge=False``). If the block raises, ``tmp`` is removed and ``path``
    is untouched.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"Cannot write the folder {path!r}: a file of that name exists.")
    tmp = _sibling(path)
    os.makedirs(tmp)  # honours the umask, unlike mkdtemp
    try:
        yield tmp
        _swap_in(tmp, path, merge, last)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(write: Callable[[str], Any], path: str) -> None:
    """``write(tmp)`` creates and fills a folder at the not yet existing path ``tmp``, which then replaces
    the folder ``path`` as a whole (``write`` may be ``shutil.copytree``-like or ``save_pretrained``)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"Cannot write the folder {path!r}: a file of that name exists.")
    tmp = _sibling(path)
    try:
        write(tmp)
        _swap_in(tmp, path, merge=False, last=())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

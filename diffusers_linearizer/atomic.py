"""Atomic writes: a reader sees either the old file (or folder) or the complete new one, never a mix.

The one place where the package writes files safely; pipelines, the command line, the trainer and the
benchmark scripts all use it. This module imports nothing from the rest of the package.

Files: written into a temporary sibling (same folder, hence same file system), flushed to disk, then
``os.replace``-d into place, which is atomic on POSIX and Windows.

Folders (:func:`atomic_dir`, :func:`replace_dir`): the new content is written into a temporary sibling
folder ``.NAME.tmp-<id>``; entries of the existing folder that the new content does not have (a user's
own notes, a file saved by another tool) are hard-linked (or copied) into it; then the two folders are
**exchanged in one system call** (Linux ``renameat2(RENAME_EXCHANGE)``, macOS ``renamex_np(RENAME_SWAP)``)
and the old content, now at the temporary name, is deleted. Killed at any point, the folder holds the
old content or the new one. Where no exchange call exists (Windows, some network file systems) the swap
is two renames (old away, new in): a reader in between finds no folder (an error), still never a mix.
The folder stays plain files, so hand edits (``scheduler_config.json``) work as with diffusers.

An interrupted save leaves its temporary folder behind. Each save first removes the stale temporaries of
the same target; one in use is recognised by the exclusive ``flock`` its writer holds on
``.NAME.tmp-<id>.lock`` for the whole save (released by the system when the writer dies) and kept.
Files and folders are created with the permissions the umask gives (``0o666 & ~umask`` for files), as
``open`` would, also where a library wrote a private ``0o600`` file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import shutil
import sys
import uuid
from typing import Any, Callable, Iterator, Optional

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["write_bytes_atomic", "write_text_atomic", "write_json_atomic", "atomic_dir", "replace_dir",
           "exchange_paths", "current_umask", "remove_stale_temporaries"]

_TMP_MARK = ".tmp-"


def _sibling(path: str, suffix: str = "") -> str:
    """A fresh hidden name next to ``path`` (the parent folder is created when missing)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    return os.path.join(parent, f".{os.path.basename(path)}{_TMP_MARK}{uuid.uuid4().hex[:12]}{suffix}")


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


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


# ---------------------------------------------------------------------------------------------- exchange
@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover
        return None


def exchange_paths(a: str, b: str) -> bool:
    """Swap the two existing paths ``a`` and ``b`` in one atomic system call.

    ``True`` when swapped; ``False`` when this system or file system has no such call (then nothing
    changed). Other failures raise ``OSError``.
    """
    libc = _libc()
    fa, fb = os.fsencode(os.path.abspath(a)), os.fsencode(os.path.abspath(b))
    if sys.platform.startswith("linux") and libc is not None and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        rc = libc.renameat2(at_fdcwd, fa, at_fdcwd, fb, ctypes.c_uint(rename_exchange))
    elif sys.platform == "darwin" and libc is not None and hasattr(libc, "renamex_np"):
        rename_swap = 2
        rc = libc.renamex_np(fa, fb, ctypes.c_uint(rename_swap))
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"Could not exchange {a!r} and {b!r}: {os.strerror(err)}")


# ---------------------------------------------------------------------------------------------- locks
class _TempLock:
    """The exclusive lock a writer holds on ``<tmp>.lock`` while its temporary folder ``tmp`` exists."""

    def __init__(self, tmp: str):
        self.path = tmp + ".lock"
        self.fd: Optional[int] = None
        if fcntl is not None:
            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o666)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            os.close(self.fd)
            self.fd = None


def _is_stale(tmp: str) -> bool:
    """Whether the temporary folder ``tmp`` belongs to no running save (its lock is free or absent)."""
    if fcntl is None:  # pragma: no cover - no way to tell on this system: keep it
        return False
    base = tmp[:-len(".old")] if tmp.endswith(".old") else tmp
    try:
        fd = os.open(base + ".lock", os.O_RDWR)
    except FileNotFoundError:
        return True  # locks are made before their folder and removed after it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: a save in progress
    finally:
        os.close(fd)
    return True


def remove_stale_temporaries(path: str) -> None:
    """Delete the temporary folders that interrupted saves to ``path`` left beside it (never one in use)."""
    path = os.path.abspath(path)
    parent, prefix = os.path.dirname(path), f".{os.path.basename(path)}{_TMP_MARK}"
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return
    for name in names:
        full = os.path.join(parent, name)
        if name.startswith(prefix) and not name.endswith(".lock") and os.path.isdir(full) \
                and not os.path.islink(full) and _is_stale(full):
            shutil.rmtree(full, ignore_errors=True)
            if not full.endswith(".old"):
                with contextlib.suppress(OSError):
                    os.remove(full + ".lock")


# ---------------------------------------------------------------------------------------------- folders
def _honour_umask(folder: str) -> None:
    """Give every file under ``folder`` the mode ``open`` gives under the umask (libraries that save
    through ``mkstemp`` leave ``0o600``)."""
    mode = 0o666 & ~current_umask()
    for root, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                os.chmod(full, mode)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _keep_other_entries(old: str, new: str) -> None:
    """Put into ``new`` every top-level entry of ``old`` that ``new`` lacks (hard links where possible)."""
    for entry in os.listdir(old):
        s, d = os.path.join(old, entry), os.path.join(new, entry)
        if os.path.lexists(d):
            continue
        if os.path.islink(s):
            os.symlink(os.readlink(s), d)
        elif os.path.isdir(s):
            shutil.copytree(s, d, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(s, d)


def _swap_in(tmp: str, path: str, merge: bool) -> None:
    """Make the finished folder ``tmp`` the folder ``path`` (module docstring); ``tmp`` then holds the
    old content, or nothing."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    if merge:
        _keep_other_entries(path, tmp)
    if exchange_paths(tmp, path):
        return
    old = tmp + ".old"
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _check_target(path: str) -> None:
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"Cannot write the folder {path!r}: a file of that name exists.")


@contextlib.contextmanager
def _temporary_for(path: str, create: bool) -> Iterator[str]:
    """A locked temporary sibling of ``path`` (created when ``create``), removed with its lock at exit."""
    _check_target(path)
    remove_stale_temporaries(path)
    lock = None
    try:
        tmp = _sibling(path)
        lock = _TempLock(tmp)
        if create:
            os.makedirs(tmp)  # honours the umask, unlike mkdtemp
    except OSError as e:
        if lock is not None:
            lock.release()
        raise OSError(e.errno, f"Cannot write the folder {path!r} ({e.strerror or e}); choose a writable place")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.release()


@contextlib.contextmanager
def atomic_dir(path: str, merge: bool = True) -> Iterator[str]:
    """``with atomic_dir(path) as tmp:`` fill the temporary folder ``tmp``; on success it takes ``path``'s place.

    The swap is one step (module docstring). With ``merge=True`` the top-level entries of an existing
    ``path`` that ``tmp`` does not have are kept; with ``merge=False`` the folder is replaced as a whole.
    If the block raises, ``path`` is untouched. A file named ``path``, or a parent that cannot be
    written, is an error naming ``path`` before the block runs.
    """
    with _temporary_for(path, create=True) as tmp:
        yield tmp
        _honour_umask(tmp)
        _swap_in(tmp, path, merge)


def replace_dir(write: Callable[[str], Any], path: str) -> None:
    """``write(tmp)`` creates and fills a folder at the not yet existing path ``tmp``, which then replaces
    the folder ``path`` as a whole (``write`` may be ``shutil.copytree``-like or ``save_pretrained``)."""
    with _temporary_for(path, create=False) as tmp:
        write(tmp)
        _honour_umask(tmp)
        _swap_in(tmp, path, merge=False)

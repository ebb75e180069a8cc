"""A restricted reader for ``torch.save`` checkpoints of whole modules (``weights_only=False`` files).

``torch.load(path, weights_only=False)`` imports every class named in the pickle and runs whatever
callables the file asks for. This reader never does either:

* tensors, storages and plain containers are rebuilt by **our own** functions, looked up in a whitelist
  (:data:`SAFE_GLOBALS`) by the ``(module, name)`` the pickle names; nothing is imported by name;
* every other global becomes an inert :class:`Record` class, never imported. Objects the pickle
  instantiates from it (``NEWOBJ``, the way ``torch.save`` stores modules) are :class:`Record`\\ s holding
  the class path and the pickled state (``__setstate__``/``__dict__``); nothing of the original class runs;
* **calling** such a global (``REDUCE``/``INST``/``OBJ``, the way a malicious ``__reduce__`` runs
  ``os.system`` or ``builtins.eval``) raises a ``ValueError`` naming it, and globals of modules that can
  run commands or code (``os``, ``posix``, ``subprocess``, ``builtins`` outside the whitelist, ...) are
  refused as soon as they are named.

Only the zip format written by ``torch.save`` since PyTorch 1.6 is read (``<archive>/data.pkl`` plus one
``<archive>/data/<key>`` file per storage); a bare pickle stream is read too (it then holds no storages).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Tuple

import numpy as np
import torch

from .records import Record

# Modules whose globals are refused outright (they can run commands, code or touch files).
DENIED_MODULES = (
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "socket", "pty", "code", "codeop",
    "pickle", "_pickle", "marshal", "ctypes", "io", "_io", "pathlib", "tempfile", "webbrowser", "multiprocessing",
    "threading", "signal", "asyncio", "operator", "functools", "types", "inspect", "pdb", "timeit", "platform",
    "glob", "zipfile", "tarfile", "urllib", "http", "ftplib", "smtplib", "telnetlib", "requests", "torch.hub",
    "torch.jit", "torch.package", "torch.ops", "torch._ops", "torch.cuda", "torch.serialization", "torch.utils",
    "setuptools", "pip", "distutils", "bdb", "cProfile", "profile", "trace", "site",
)
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
_DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
_NUMPY_DTYPES = ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "b1", "?")


class _RecordMeta(type):
    """Metaclass of the per-global record classes: calling one (``REDUCE``/``INST``/``OBJ``) is refused."""

    def __call__(cls, *args, **kwargs):
        raise ValueError(
            f"Refusing to call global {cls.cls_path!r} from the checkpoint: only tensors, storages and plain "
            "containers are rebuilt, and no other callable is run (the file may be malicious)."
        )


def _record_class(module: str, name: str) -> type:
    return _RecordMeta(f"Record[{module}.{name}]", (Record,), {"cls_path": f"{module}.{name}", "__module__": __name__})


# ---------------------------------------------------------------------- safe rebuild functions
class _Frozen:
    """Base of the whitelisted values: immutable, and the pickle cannot ``BUILD`` (set state) on them."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise ValueError("Malformed checkpoint: it tries to modify a whitelisted global.")

    def __setstate__(self, state):
        raise ValueError("Malformed checkpoint: it tries to set the state of a whitelisted global.")


class _Safe(_Frozen):
    """A whitelisted function of ours, called by ``REDUCE`` in place of the global the pickle names."""

    __slots__ = ("name", "func")

    def __init__(self, name: str, func):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "func", func)

    def __call__(self, *args):
        return self.func(*args)


class _StorageType(_Frozen):
    """Marker for ``torch.<X>Storage`` in persistent ids (carries the element dtype)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", _STORAGE_DTYPES[name])

    def __call__(self, *args):
        raise ValueError(f"Refusing to call global 'torch.{self.name}' from the checkpoint.")


class _Storage:
    """A storage read from the archive: a flat tensor of its elements."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


class _Marker(_Frozen):
    """A named, inert value (``torch.Tensor``, ``builtins.object``, ...)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __call__(self, *args):
        raise ValueError(f"Refusing to call global {self.name!r} from the checkpoint.")


def _flat(storage) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise ValueError(f"Malformed checkpoint: a tensor refers to {type(storage).__name__}, not a storage.")
    return storage.flat


def _ints(values, what: str) -> Tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"Malformed checkpoint: tensor {what} {values!r} is not a tuple of ints.")
    return tuple(values)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> torch.Tensor:
    """A tensor view ``(offset, size, stride)`` of a storage, copied into its own memory."""
    flat = _flat(storage)
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise ValueError(f"Malformed checkpoint: storage offset {storage_offset!r}.")
    if any(s < 0 for s in size + stride) or len(size) != len(stride):
        raise ValueError(f"Malformed checkpoint: size {size} / stride {stride}.")
    extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if extent > flat.numel():
        raise ValueError(f"Malformed checkpoint: a tensor of size {size} reaches past its storage ({flat.numel()} elements).")
    if not all(size):
        return flat.new_empty(size)
    return torch.as_strided(flat, size, stride, storage_offset).clone()


def _rebuild_parameter(data, *unused) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"Malformed checkpoint: a parameter holds {type(data).__name__}, not a tensor.")
    return data


def _rebuild_from_type(func, new_type, args, state=None) -> torch.Tensor:
    if not isinstance(func, _Safe) or func.func not in (_rebuild_tensor, _rebuild_parameter):
        raise ValueError("Malformed checkpoint: _rebuild_from_type_v2 with a function that is not a tensor rebuild.")
    return func(*args) if isinstance(args, tuple) else func(args)


def _make_set(items=()):
    return set(items)


def _make_frozenset(items=()):
    return frozenset(items)


def _codecs_encode(text, encoding="utf-8", *unused) -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError(f"Refusing _codecs.encode({type(text).__name__}, {encoding!r}) from the checkpoint.")
    return text.encode("latin1")


def _torch_size(dims=()) -> Tuple[int, ...]:
    return _ints(tuple(dims), "size")


def _torch_device(spec, index=None) -> str:
    if not isinstance(spec, str) or len(spec) > 32:
        raise ValueError(f"Malformed checkpoint: device {spec!r}.")
    return spec if index is None else f"{spec}:{int(index)}"


class _NumpyDType:
    """``numpy.dtype(name, align, copy)`` as plain data; ``__setstate__`` keeps the byte order."""

    def __init__(self, name, *unused):
        if name not in _NUMPY_DTYPES:
            raise ValueError(f"Refusing numpy dtype {name!r} from the checkpoint (only plain numbers are read).")
        self.name, self.order = name, "<"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def dtype(self) -> np.dtype:
        return np.dtype((self.order if self.order in "<>" else "") + self.name)


def _numpy_scalar(dtype, data=None):
    """A numpy scalar (``numpy.core.multiarray.scalar``) as a Python number."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise ValueError("Malformed checkpoint: numpy scalar without a plain dtype and bytes.")
    return np.frombuffer(data, dtype=dtype.dtype(), count=1)[0].item()


def _reconstructor(cls, base, state=None):
    """Protocol 0/1 objects (``copyreg._reconstructor``): a record for ``cls`` when ``base`` is ``object``."""
    if not (isinstance(cls, type) and issubclass(cls, Record)) or getattr(base, "name", None) != "builtins.object":
        raise ValueError("Refusing copyreg._reconstructor for anything but a plain object of a recorded class.")
    return cls.__new__(cls)


_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("builtins", "set"): _make_set,
    ("builtins", "frozenset"): _make_frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
SAFE_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("numpy", "dtype"): _NumpyDType,
    ("torch", "Tensor"): _Marker("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.parameter.Parameter"),
    ("builtins", "object"): _Marker("builtins.object"),
}
SAFE_GLOBALS.update({key: _Safe(".".join(key), func) for key, func in _FUNCTIONS.items()})
SAFE_GLOBALS.update({("torch", n): _StorageType(n) for n in _STORAGE_DTYPES})
SAFE_GLOBALS.update({("torch", n): getattr(torch, n) for n in _DTYPE_NAMES})
"""``(module, name)`` the pickle may name → what it gets instead: our own rebuild functions (wrapped so the
pickle cannot modify them), inert markers, ``OrderedDict`` and torch dtypes. Nothing here is imported by name."""


def _denied(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in DENIED_MODULES)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals through :data:`SAFE_GLOBALS` or to inert record classes.

    ``storages``: ``key → bytes`` reader for the zip format's persistent ids (``None``: none allowed).
    ``classes`` collects the class paths that were turned into records.
    """

    def __init__(self, file, storage_reader=None):
        super().__init__(file)
        self._read_storage = storage_reader
        self._storages: Dict[str, _Storage] = {}
        self._records: Dict[Tuple[str, str], type] = {}
        self.classes = set()

    def find_class(self, module: str, name: str):
        # Python 2 names (protocol ≤ 2 pickles say __builtin__.set, copy_reg._reconstructor): map as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in SAFE_GLOBALS:
            return SAFE_GLOBALS[key]
        if _denied(module) or module == "builtins" or module.startswith("__builtin"):
            raise ValueError(
                f"Refusing global {module}.{name} named by the checkpoint: it is not a tensor, storage or container "
                "type, and that module can run code (the file may be malicious)."
            )
        if key not in self._records:
            self._records[key] = _record_class(module, name)
            self.classes.add(f"{module}.{name}")
        return self._records[key]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"Malformed checkpoint: unsupported persistent id {pid!r:.80}.")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise ValueError(f"Malformed checkpoint: persistent id {pid!r:.80}.")
        if self._read_storage is None:
            raise ValueError("Malformed checkpoint: a bare pickle refers to tensor storages it does not contain.")
        if key not in self._storages:
            raw = self._read_storage(key)
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if storage_type.name != "UntypedStorage" and len(raw) != numel * itemsize:
                raise ValueError(
                    f"Truncated or corrupt checkpoint: storage {key} has {len(raw)} bytes, expected {numel * itemsize}."
                )
            data = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else torch.empty(0, dtype=storage_type.dtype)
            self._storages[key] = _Storage(data)
        return self._storages[key]


def load_checkpoint(path: str) -> Tuple[Any, set]:
    """Read a ``torch.save`` file without importing or running anything it names.

    Returns ``(root object, class paths recorded)``. Raises ``ValueError`` with a clear message for files
    that are not checkpoints, are truncated, use the legacy (pre-1.6) format, or name refused globals.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise ValueError(f"Cannot read checkpoint {path!r}: {err}") from err
    if head[:2] == b"PK":
        return _load_zip(path)
    if not head or head[:1] != b"\x80":
        raise ValueError(
            f"{path!r} is not a torch.save checkpoint: it is neither a zip archive (torch ≥ 1.6) nor a pickle stream."
        )
    with open(path, "rb") as f:
        root, classes = _unpickle(f, None, path)
    if isinstance(root, int) and root == 0x1950A86A20F9469CFC6C:
        raise ValueError(f"{path!r} uses the legacy (pre-1.6) torch.save format, which this converter does not read; "
                         "re-save it with a current PyTorch (torch.save(torch.load(...), path)) first.")
    return root, classes


def _unpickle(f, storage_reader, path: str):
    unpickler = RestrictedUnpickler(f, storage_reader)
    try:
        root = unpickler.load()
    except ValueError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, IndexError, TypeError,
            AttributeError, RuntimeError, MemoryError, OverflowError, UnicodeDecodeError) as err:
        raise ValueError(f"{path!r} is truncated or not a valid torch.save checkpoint ({type(err).__name__}: {err}).") from err
    return root, unpickler.classes


def _load_zip(path: str):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path!r} is truncated or not a torch.save checkpoint (bad zip archive: {err}).") from err
    with archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1] or [n for n in names if n == "data.pkl"]
        if not pkl:
            raise ValueError(f"{path!r} is a zip archive but not a torch.save checkpoint (no data.pkl record).")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and archive.read(order).strip() not in (b"little", b""):
            raise ValueError(f"{path!r} stores big-endian tensors, which this converter does not read.")

        def read_storage(key: str) -> bytes:
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise ValueError(f"Truncated or corrupt checkpoint {path!r}: storage record {entry!r} is missing.")
            try:
                return archive.read(entry)
            except (zipfile.BadZipFile, EOFError, OSError) as err:
                raise ValueError(f"Truncated or corrupt checkpoint {path!r}: storage {key} ({err}).") from err

        try:
            data = archive.read(pkl[0])
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise ValueError(f"Truncated or corrupt checkpoint {path!r}: {err}.") from err
        return _unpickle(io.BytesIO(data), read_storage, path)

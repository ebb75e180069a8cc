"""Training data: Fashion-MNIST from the Debian package, or any folder of images.

Images come out as float tensors ``(C, H, W)`` with values in ``[0, 1]`` — the reference
implementation's data range (no normalisation to ``[-1, 1]``).

* :func:`read_idx` is a small reader for the idx format of (Fashion-)MNIST (``.gz`` or plain).
* :class:`FashionMNIST` reads the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``) and pads the 28×28 images to 32×32 (or resizes).
* :class:`ImageFolderDataset` reads every image below a folder (``--train_data_dir``), resized and
  centre-cropped to a square.
* :class:`EpochShuffleSampler` shuffles with a permutation that depends only on ``(seed, epoch)``, so
  a resumed run sees the batches an uninterrupted run would have seen.

A missing dataset raises :class:`DatasetNotFoundError` naming the install command.
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# idx type codes → numpy dtypes (big-endian, as the format stores them)
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says how to install them."""


# ---------------------------------------------------------------------- idx files
def read_idx(path: str) -> np.ndarray:
    """Read an idx file (``.gz``-compressed or plain) into a numpy array in native byte order.

    Format: two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
    ``0x0D`` float32, ``0x0E`` float64), the number of dimensions ``k``, then ``k`` big-endian uint32
    sizes, then the data, big-endian, row-major.

    Raises ``ValueError`` for a malformed file (bad magic, unknown type, wrong data length).
    """
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an idx file ({len(data)} bytes).")
    zero1, zero2, code, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0:
        raise ValueError(f"{path}: not an idx file (magic bytes {data[:4].hex()}).")
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx data type 0x{code:02x}.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: idx header says shape {tuple(shape)} ({expected} data bytes), file has {len(data) - header}."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` as an idx file (gzip-compressed when ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    dtype = array.dtype.newbyteorder("=")
    if dtype not in codes:
        raise ValueError(f"idx cannot store dtype {array.dtype}.")
    code = codes[dtype]
    payload = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _find_idx(root: str, stem: str) -> Optional[str]:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return None


def fashion_mnist_files(root: str = FASHION_MNIST_DIR, split: str = "train") -> Tuple[str, str]:
    """Paths of the images and labels idx files of ``split`` (``"train"`` or ``"test"``) under ``root``.

    Raises :class:`DatasetNotFoundError` with the install command when they are missing.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"Unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'.")
    found = [_find_idx(root, stem) for stem in FASHION_MNIST_FILES[split]]
    missing = [stem for stem, path in zip(FASHION_MNIST_FILES[split], found) if path is None]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST ({split} split) not found: no {', '.join(m + '.gz' for m in missing)} in {root!r}. "
            f"Install it with `{FASHION_MNIST_INSTALL}` (Debian/Ubuntu; files go to {FASHION_MNIST_DIR}), "
            "or pass --data_dir pointing at a folder with the idx files, or --train_data_dir with a folder of images."
        )
    return found[0], found[1]


# ---------------------------------------------------------------------- resizing
def to_square(images: Tensor, resolution: int, mode: str = "pad") -> Tensor:
    """``(N, C, h, w)`` float images → ``(N, C, resolution, resolution)``.

    ``mode="pad"``: zero-pad (centred) to a square of side ``max(h, w, resolution)`` and, if that is
    larger than ``resolution``, resize down (area). 28×28 → 32×32 is an exact 2-pixel pad.
    ``mode="resize"``: bilinear resize (antialiased when shrinking), as the reference does for MNIST.
    """
    if mode not in ("pad", "resize"):
        raise ValueError(f"Unknown mode {mode!r}; expected 'pad' or 'resize'.")
    n, c, h, w = images.shape
    if (h, w) == (resolution, resolution):
        return images
    if mode == "pad":
        side = max(h, w, resolution)
        top, left = (side - h) // 2, (side - w) // 2
        images = F.pad(images, (left, side - w - left, top, side - h - top))
        if side == resolution:
            return images
        return F.interpolate(images, size=(resolution, resolution), mode="area")
    shrink = resolution < max(h, w)
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrink)


# ---------------------------------------------------------------------- datasets
class FashionMNIST(Dataset):
    """Fashion-MNIST as float images in ``[0, 1]``, ``(1, resolution, resolution)``.

    Args:
        root: folder with the idx files (default: the Debian package's ``/usr/share/datasets/fashion-mnist``).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        resolution: output side (default 32: the 28×28 images padded by 2 pixels on every side).
        mode: ``"pad"`` (default) or ``"resize"`` (see :func:`to_square`).
        return_labels: items are ``(image, label)`` instead of ``image``.
        max_samples: keep only the first ``max_samples`` images (small runs, tests).

    The whole split is kept in memory as uint8 (61 MB for train at 32×32); items are converted to float
    on access.
    """

    def __init__(
        self,
        root: str = FASHION_MNIST_DIR,
        split: str = "train",
        resolution: int = 32,
        mode: str = "pad",
        return_labels: bool = False,
        max_samples: Optional[int] = None,
    ):
        images_path, labels_path = fashion_mnist_files(root, split)
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"Unexpected Fashion-MNIST shapes: images {images.shape}, labels {labels.shape} "
                "(expected (N, 28, 28) and (N,))."
            )
        if max_samples is not None:
            images, labels = images[:max_samples], labels[:max_samples]
        x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
        if (x.shape[-2], x.shape[-1]) != (resolution, resolution):
            x = to_square(x.float() / 255.0, resolution, mode)
            x = (x * 255.0).round().clamp(0, 255).to(torch.uint8)  # 28→32 padding is exact
        self.images = x
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.return_labels = return_labels
        self.resolution, self.channels = resolution, 1

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        image = self.images[index].float() / 255.0
        return (image, int(self.labels[index])) if self.return_labels else image


def check_image_files(files: Sequence[str], root: str, shown: int = 5) -> None:
    """Decode every file once; a ``ValueError`` naming the ones that cannot be read (first ``shown`` of them,
    each with its reason, and how many in all) before any training work."""
    import PIL.Image

    bad = []
    for path in files:
        try:
            with PIL.Image.open(path) as img:
                img.load()
        except PermissionError:
            bad.append((path, "not readable (permissions)"))
        except (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError) as err:
            reason = "not an image PIL can read" if isinstance(err, PIL.UnidentifiedImageError) else \
                "truncated" if "truncated" in str(err).lower() else f"{type(err).__name__}: {err}"
            bad.append((path, reason))
    if bad:
        listed = "; ".join(f"{os.path.relpath(p, root)} ({why})" for p, why in bad[:shown])
        more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
        raise ValueError(f"--train_data_dir {root!r}: {len(bad)} of {len(files)} image files cannot be read: {listed}"
                         f"{more}. Fix or remove them.")


class ImageFolderDataset(Dataset):
    """Every image file below ``root`` (recursively, sorted by path), as floats in ``[0, 1]``.

    Every file is decoded once when the dataset is built, so an unreadable one is named before training
    starts (:func:`check_image_files`). Images of any size and mode are converted to ``channels`` (1:
    grayscale, 3: RGB), resized so the shorter side is ``resolution`` (bicubic) and centre-cropped to
    ``resolution × resolution``.
    """

    def __init__(self, root: str, resolution: int = 32, channels: int = 3, max_samples: Optional[int] = None):
        if channels not in (1, 3):
            raise ValueError(f"Image folders give 1 (grayscale) or 3 (RGB) channels, got {channels}.")
        if not os.path.isdir(root):
            raise DatasetNotFoundError(f"--train_data_dir {root!r} is not a directory.")
        files: List[str] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS))
        files.sort()
        if not files:
            raise DatasetNotFoundError(
                f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under --train_data_dir {root!r}."
            )
        self.files = files[:max_samples] if max_samples is not None else files
        self.resolution, self.channels = resolution, channels
        check_image_files(self.files, root)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, path: str) -> Tensor:
        import PIL.Image

        with PIL.Image.open(path) as img:
            img = img.convert("L" if self.channels == 1 else "RGB")
            w, h = img.size
            scale = self.resolution / min(w, h)
            if (w, h) != (self.resolution, self.resolution):
                nw, nh = max(self.resolution, round(w * scale)), max(self.resolution, round(h * scale))
                img = img.resize((nw, nh), PIL.Image.BICUBIC)
                left, top = (nw - self.resolution) // 2, (nh - self.resolution) // 2
                img = img.crop((left, top, left + self.resolution, top + self.resolution))
            arr = np.asarray(img, dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[None]
        else:
            arr = np.moveaxis(arr, -1, 0)
        return torch.from_numpy(np.ascontiguousarray(arr))

    def __getitem__(self, index: int) -> Tensor:
        return self.load(self.files[index])


def build_dataset(
    train_data_dir: Optional[str] = None,
    data_dir: str = FASHION_MNIST_DIR,
    resolution: int = 32,
    channels: Optional[int] = None,
    fashion_mode: str = "pad",
    max_samples: Optional[int] = None,
) -> Dataset:
    """The training set: an image folder when ``train_data_dir`` is given, else Fashion-MNIST (train split)."""
    if train_data_dir:
        return ImageFolderDataset(train_data_dir, resolution, channels or 3, max_samples)
    if channels not in (None, 1):
        raise ValueError(f"Fashion-MNIST is grayscale (1 channel); got --channels {channels}.")
    return FashionMNIST(data_dir, "train", resolution, fashion_mode, max_samples=max_samples)


# ---------------------------------------------------------------------- sampling order
class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(size)`` that depends only on ``(seed, epoch)``.

    Call :meth:`set_epoch` before iterating an epoch. Unlike ``RandomSampler`` it keeps no generator
    state between epochs, so a resumed run reproduces the order exactly (``skip_first_batches`` then
    drops the batches already consumed within the epoch).
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True):
        self.size, self.seed, self.shuffle = int(size), int(seed), bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permutation(self, epoch: Optional[int] = None) -> Tensor:
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return torch.arange(self.size)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
        return torch.randperm(self.size, generator=gen)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.size


def derive_seed(seed: int, *keys) -> int:
    """A 63-bit seed from ``seed`` and any ints/strings (numpy's ``SeedSequence`` hashing)."""
    words: List[int] = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF]
    for key in keys:
        if isinstance(key, str):
            words.extend(key.encode("utf-8"))
        else:
            words.extend([int(key) & 0xFFFFFFFF, (int(key) >> 32) & 0xFFFFFFFF])
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def stack_images(batch: Sequence) -> Tensor:
    """``collate_fn``: a list of images (or ``(image, label)`` pairs) → one ``(N, C, H, W)`` tensor."""
    return torch.stack([b[0] if isinstance(b, (tuple, list)) else b for b in batch])

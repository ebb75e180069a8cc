r"""Style pairs: ``(content, stylised)`` crops of photos for chosen styles (``diffusers-linearizer style-data``).

How a file is made (reproducible from ``seed``): the pairs come in chunks of ``chunk_size``; chunk ``k`` draws
everything from ``numpy.random.default_rng([seed, k])``. Each *view* of a chunk picks a photo, a scale (the
shorter side resized to a random size in ``[scale_min, scale_max]``, at least the crop size) and a style; the
teacher stylises the whole resized photo once (a teacher with global statistics, as instance norm has, then sees
what it sees at use), and ``crops_per_view`` random ``resolution × resolution`` crops are cut at the same place
from the photo and from its stylisation. Finished chunks are kept in ``OUTPUT.parts/`` (a run that stops resumes
from the next chunk); the last step joins them into ``OUTPUT`` (``.npz``, written atomically).

The file: ``content`` and ``styled`` (uint8 ``(N, 3, R, R)``), ``styles`` (int64 ``(N,)``, indices into
``style_names``, the teacher's ids of the chosen styles), ``style_names``, ``teacher_styles`` (the teacher's
ids), ``kind = "style-pairs"``. :class:`StylePairs` reads it for the trainer: items ``(styled, content, i)``
where ``i`` is the model's style id (the position of the teacher's style in the chosen list).
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


__all__ = ["StylePairs", "is_style_pairs", "list_photos", "load_photo", "stack_style_pairs", "write_style_pairs"]

PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
KIND = "style-pairs"


def list_photos(folder: str) -> List[str]:
    """The image files directly in ``folder``, sorted; ``ValueError`` when there are none."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder of photos.")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(PHOTO_EXTENSIONS))
    if not files:
        raise ValueError(f"{folder} holds no photos (files ending in {', '.join(PHOTO_EXTENSIONS)}).")
    return files


def load_photo(path: str) -> np.ndarray:
    """An RGB photo as uint8 ``(H, W, 3)`` (grey and RGBA photos converted)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _resize(photo: np.ndarray, short: int) -> np.ndarray:
    from PIL import Image

    h, w = photo.shape[:2]
    scale = short / min(h, w)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.LANCZOS), dtype=np.uint8)


def _to_tensor(photo: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)[None].float() / 255.0


def _to_uint8(images: Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def _chunk(photos, teacher, styles: Sequence[int], chunk: int, size: int, seed: int, resolution: int,
           crops_per_view: int, scale_min: int, scale_max: int):
    rng = np.random.default_rng([int(seed), int(chunk)])
    content, styled, ids = [], [], []
    while len(ids) < size:
        photo = photos[int(rng.integers(len(photos)))]
        short = int(rng.integers(max(scale_min, resolution), max(scale_max, resolution) + 1))
        style = int(rng.integers(len(styles)))
        image = _resize(photo, short)
        with torch.no_grad():
            out = teacher(_to_tensor(image), styles[style])
        stylised = _to_uint8(out)[0]
        source = image.transpose(2, 0, 1)
        for _ in range(min(crops_per_view, size - len(ids))):
            top = int(rng.integers(source.shape[1] - resolution + 1))
            left = int(rng.integers(source.shape[2] - resolution + 1))
            window = (slice(None), slice(top, top + resolution), slice(left, left + resolution))
            content.append(source[window])
            styled.append(stylised[window])
            ids.append(style)
    return np.stack(content), np.stack(styled), np.asarray(ids, dtype=np.int64)


def write_style_pairs(photos: Sequence[str], output: str, teacher, styles: Optional[Iterable[int]] = None,
                      num_pairs: int = 1000, resolution: int = 64, seed: int = 0, chunk_size: int = 256,
                      crops_per_view: int = 4, scale_min: int = 256, scale_max: int = 320, progress: bool = True) -> str:
    """Write a style-pairs file (module docstring) from the photo files ``photos``; returns ``output``.

    Args:
        photos: image files (see :func:`list_photos`).
        output: the ``.npz`` to write (``OUTPUT.parts/`` holds finished chunks meanwhile).
        teacher: a :class:`~.style_teacher.StyleTeacher` (or what :func:`~.style_teacher.load_style_teacher` takes).
        styles: the teacher's style ids to use (default all), in the model's order.
        num_pairs / resolution / seed / chunk_size / crops_per_view / scale_min / scale_max: see the module docstring.
        progress: a tqdm bar over the chunks.
    """
    from tqdm.auto import tqdm

    from .style_teacher import load_style_teacher

    teacher = load_style_teacher(teacher)
    styles = list(range(teacher.num_styles)) if styles is None else [int(s) for s in styles]
    if not styles:
        raise ValueError("Choose at least one style.")
    for s in styles:
        teacher.check_style(s)
    if len(set(styles)) != len(styles):
        raise ValueError(f"Styles are chosen twice: {styles}.")
    for name, value, low in (("num_pairs", num_pairs, 1), ("resolution", resolution, 4), ("chunk_size", chunk_size, 1),
                             ("crops_per_view", crops_per_view, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}.")
    if resolution % 4:
        raise ValueError(f"resolution must be a multiple of 4, got {resolution}.")
    images = [load_photo(p) for p in photos]
    if not images:
        raise ValueError("No photos given.")
    parts = output + ".parts"
    os.makedirs(parts, exist_ok=True)
    settings = dict(styles=styles, resolution=resolution, seed=seed, chunk_size=chunk_size, crops=crops_per_view,
                    scale=(scale_min, scale_max), photos=[os.path.basename(p) for p in photos])
    _check_parts_settings(parts, settings)
    chunks = (num_pairs + chunk_size - 1) // chunk_size
    for k in tqdm(range(chunks), desc="style pairs", unit="chunk", disable=not progress):
        path = os.path.join(parts, f"chunk-{k:05d}.npz")
        size = min(chunk_size, num_pairs - k * chunk_size)
        if os.path.isfile(path):
            continue
        c, s, i = _chunk(images, teacher, styles, k, size, seed, resolution, crops_per_view, scale_min, scale_max)
        _save_npz(path, content=c, styled=s, styles=i)
    loaded = [np.load(os.path.join(parts, f"chunk-{k:05d}.npz")) for k in range(chunks)]
    names = np.asarray([teacher.style_names[s] for s in styles])
    _save_npz(output, content=np.concatenate([d["content"] for d in loaded]),
              styled=np.concatenate([d["styled"] for d in loaded]), styles=np.concatenate([d["styles"] for d in loaded]),
              style_names=names, teacher_styles=np.asarray(styles, dtype=np.int64), kind=np.asarray(KIND),
              seed=np.asarray(seed))
    for d in loaded:
        d.close()
    for f in os.listdir(parts):
        os.remove(os.path.join(parts, f))
    os.rmdir(parts)
    return output


def _save_npz(path: str, **arrays) -> None:
    """One ``.npz`` written whole or not at all (``atomic.write_bytes_atomic``)."""
    import io

    from ..atomic import write_bytes_atomic

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def _check_parts_settings(parts: str, settings: dict) -> None:
    """Finished chunks are kept only for a run with the same settings (a ``settings.json`` in ``parts``)."""
    import json

    path = os.path.join(parts, "settings.json")
    text = json.dumps(settings, sort_keys=True)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() != text:
                raise ValueError(f"{parts} holds chunks made with other settings; remove it or use them again.")
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def is_style_pairs(path: str) -> bool:
    """Whether ``path`` is a style-pairs file (``kind = "style-pairs"``)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "kind" in data.files and str(data["kind"]) == KIND
    except (OSError, ValueError, EOFError):
        return False


class StylePairs(Dataset):
    """The pairs of a style-pairs file for the trainer: items ``(styled, content, style id)``, images in ``[0, 1]``.

    ``model_config`` holds what the model needs from the data: ``conditioning="class"`` with one class per
    style and ``id2label`` = the style names (a style model's ``id2style``).
    """

    def __init__(self, path: str, max_samples: Optional[int] = None):
        if not is_style_pairs(path):
            raise ValueError(f"{path} is no style-pairs file (make one with `diffusers-linearizer style-data`).")
        with np.load(path, allow_pickle=False) as data:
            self.content = torch.from_numpy(data["content"][:max_samples])
            self.styled = torch.from_numpy(data["styled"][:max_samples])
            self.styles = torch.from_numpy(data["styles"][:max_samples])
            self.style_names = [str(n) for n in data["style_names"]]
        self.channels, self.resolution = int(self.content.shape[1]), int(self.content.shape[2])
        self.model_config = dict(conditioning="class", num_classes=len(self.style_names),
                                 id2label={str(i): n for i, n in enumerate(self.style_names)})
        self.collate_fn = stack_style_pairs

    def __len__(self) -> int:
        return int(self.content.shape[0])

    def __getitem__(self, index: int):
        return self.styled[index].float() / 255.0, self.content[index].float() / 255.0, self.styles[index]


def stack_style_pairs(batch):
    """``collate_fn`` of :class:`StylePairs`: ``(styled (N, 3, R, R), content (N, 3, R, R), ids (N,))``."""
    return (torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch]),
            torch.stack([torch.as_tensor(b[2]) for b in batch]))

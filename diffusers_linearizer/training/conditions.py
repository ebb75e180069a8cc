"""Training with conditions: labelled and captioned data, condition dropout, a frozen text encoder.

``--conditioning class`` trains a class-conditional core on Fashion-MNIST labels (names from
:data:`FASHION_MNIST_LABELS`) or on an image folder with one sub-folder per class (the sub-folder names,
sorted, are the classes). ``--conditioning text`` reads captions from the ``metadata.jsonl`` of
``--train_data_dir`` (one JSON object per line, ``file_name`` and the ``--caption_column``, ``"text"`` by
default, as diffusers' text-to-image examples read it) and encodes them with the frozen CLIP-style text
model of ``--text_encoder DIR`` (a folder with ``text_encoder/`` and ``tokenizer/``, or one folder with
both); the pooled embedding is the condition.

Condition dropout (``--condition_dropout p``) replaces a sample's condition by ∅ (the null class, or the
empty prompt) with probability ``p``, so that the model learns ``A(t, ∅)`` for classifier-free guidance.
The dropout mask comes from the step's seeded generator, like every other random draw of a step.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .data import FashionMNIST, ImageFolderDataset

CONDITIONINGS = ("class", "text")
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                        "Ankle boot")
METADATA_FILE = "metadata.jsonl"


class ClassFolderDataset(ImageFolderDataset):
    """An image folder with one sub-folder per class: items ``(image, class id)``; ``class_names`` sorted."""

    def __init__(self, root: str, resolution: int = 32, channels: int = 3, max_samples: Optional[int] = None):
        super().__init__(root, resolution, channels, max_samples)
        top = [os.path.relpath(f, root).split(os.sep)[0] for f in self.files]
        loose = [f for f, t in zip(self.files, top) if os.path.dirname(os.path.relpath(f, root)) == ""]
        if loose:
            raise ValueError(f"--conditioning class needs one sub-folder per class in {root!r}; "
                             f"{len(loose)} image(s) lie directly in it, e.g. {os.path.basename(loose[0])!r}.")
        self.class_names = sorted(set(top))
        index = {name: i for i, name in enumerate(self.class_names)}
        self.labels = [index[t] for t in top]

    def __getitem__(self, index: int):
        return self.load(self.files[index]), self.labels[index]


class CaptionFolderDataset(ImageFolderDataset):
    """Images listed in ``metadata.jsonl`` with their captions: items ``(image, caption)``."""

    def __init__(self, root: str, resolution: int = 32, channels: int = 3, max_samples: Optional[int] = None,
                 caption_column: str = "text"):
        path = os.path.join(root, METADATA_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"--conditioning text needs {METADATA_FILE} in --train_data_dir {root!r} "
                             f"(lines like {{\"file_name\": \"a.png\", \"{caption_column}\": \"a caption\"}}).")
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    row = json.loads(line)
                    if "file_name" not in row or caption_column not in row:
                        raise ValueError(f"{path} line {n}: expected the keys 'file_name' and {caption_column!r}, "
                                         f"got {sorted(row)}.")
                    rows.append(row)
        if not rows:
            raise ValueError(f"{path} lists no images.")
        self.files = [os.path.join(root, r["file_name"]) for r in rows][:max_samples]
        missing = [f for f in self.files if not os.path.isfile(f)]
        if missing:
            raise ValueError(f"{path} names {len(missing)} missing file(s), e.g. {missing[0]!r}.")
        self.captions = [str(r[caption_column]) for r in rows][:max_samples]
        self.resolution, self.channels = resolution, channels

    def __getitem__(self, index: int):
        return self.load(self.files[index]), self.captions[index]


def build_conditional_dataset(args) -> Tuple[Dataset, Dict]:
    """``(dataset, model config entries)`` for ``--conditioning``; items are ``(image, condition)``."""
    if args.conditioning == "class":
        if args.train_data_dir:
            data = ClassFolderDataset(args.train_data_dir, args.resolution, args.channels or 3, args.max_train_samples)
            names = data.class_names
        else:
            data = FashionMNIST(args.data_dir, "train", args.resolution, args.fashion_mnist_mode, return_labels=True,
                                max_samples=args.max_train_samples)
            names = list(FASHION_MNIST_LABELS)
        return data, dict(conditioning="class", num_classes=len(names), id2label={str(i): n for i, n in enumerate(names)})
    if not args.train_data_dir:
        raise ValueError("--conditioning text needs --train_data_dir with a metadata.jsonl of captions.")
    data = CaptionFolderDataset(args.train_data_dir, args.resolution, args.channels or 3, args.max_train_samples,
                                args.caption_column)
    return data, dict(conditioning="text")


def stack_conditioned(batch) -> Tuple[Tensor, object]:
    """Collate ``(image, condition)`` items: images ``(N, C, H, W)`` and ids ``(N,)`` or a list of captions."""
    images = torch.stack([b[0] for b in batch])
    conds = [b[1] for b in batch]
    return images, (torch.tensor(conds, dtype=torch.long) if isinstance(conds[0], int) else conds)


def load_text_encoder(path: str):
    """``(tokenizer, text_encoder)`` from ``path`` (``tokenizer/`` + ``text_encoder/`` sub-folders, or one folder), frozen."""
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    sub = os.path.isdir(os.path.join(path, "text_encoder"))
    tok_dir = os.path.join(path, "tokenizer") if sub else path
    enc_dir = os.path.join(path, "text_encoder") if sub else path
    if not os.path.isdir(enc_dir):
        raise ValueError(f"--text_encoder {path!r} is not a directory.")
    with open(os.path.join(enc_dir, "config.json"), encoding="utf-8") as f:
        arch = (json.load(f).get("architectures") or ["CLIPTextModel"])[0]
    cls = CLIPTextModelWithProjection if arch == "CLIPTextModelWithProjection" else CLIPTextModel
    encoder = cls.from_pretrained(enc_dir, use_safetensors=True).eval().requires_grad_(False)
    return AutoTokenizer.from_pretrained(tok_dir), encoder


def pooled_dim(encoder) -> int:
    """The size of the pooled embedding ``encoder`` returns (the condition's ``condition_dim``)."""
    config = encoder.config
    return int(config.projection_dim if type(encoder).__name__.endswith("WithProjection") else config.hidden_size)


@torch.no_grad()
def encode_captions(tokenizer, encoder, captions: List[str], device) -> Tensor:
    """Pooled embeddings ``(N, condition_dim)`` of ``captions``, the way the pipeline's ``encode_prompt`` makes them."""
    from ..pipelines.linearizer.conditioning import pooled_text_embeddings

    return pooled_text_embeddings(tokenizer, encoder, list(captions), device)


def drop_conditions(conds, drop: Tensor, null_class: Optional[int]):
    """Condition dropout: ids → the null class, captions → ``""`` where ``drop`` is true."""
    if isinstance(conds, Tensor):
        return torch.where(drop.to(conds.device), torch.full_like(conds, null_class), conds)
    return ["" if d else c for c, d in zip(conds, drop.tolist())]


def init_from(model, path: str) -> int:
    """Copy every tensor of the model saved at ``path`` (a pipeline or model folder) whose name and shape match
    into ``model`` (e.g. ``g`` and the shared-basis core of an unconditional model into a conditional one, whose
    condition embedding keeps its own initialisation). Returns how many."""
    from ..models import LinearizerModel

    folder = os.path.join(path, "linearizer") if os.path.isdir(os.path.join(path, "linearizer")) else path
    source = LinearizerModel.from_pretrained(folder).state_dict()
    own = model.state_dict()
    shared = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not shared:
        raise ValueError(f"--init_weights {path!r} has no tensor of the same name and shape as this model's.")
    model.load_state_dict(shared, strict=False)
    return len(shared)

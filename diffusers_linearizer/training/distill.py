r"""Distillation of a diffusers flow-matching model into a one-step Linearizer: teacher pairs and the loss.

The pairs
---------
A *teacher* is a diffusers ``UNet2DModel`` trained with the flow-matching objective on images in
``[−1, 1]`` (``x_σ = σ·ε + (1 − σ)·x``, timestep ``1000·σ``, velocity target ``ε − x``), sampled with a
``FlowMatchEulerDiscreteScheduler`` (a folder holding the UNet, or a pipeline folder with ``unet/`` and
``scheduler/``). A pair is ``(ε, x_T)``: the noise and the teacher's ODE sample from it, stored as
``round(255·clamp((x_T + 1)/2, 0, 1))`` in uint8. The noise is not stored: pair ``i`` belongs to chunk
``k = i // chunk_size`` at position ``j = i % chunk_size`` and its noise is row ``j`` of
``torch.randn((chunk_size, C, H, W), generator=torch.Generator().manual_seed(seed_base + k))`` drawn on
the CPU in float32. :func:`~.teacher.write_teacher_pairs` (``diffusers-linearizer distill-data``) writes
such a file chunk by chunk (resumable: finished chunks are kept in ``OUTPUT.parts/``) and
:class:`TeacherPairs` reads it back with its noise.

torch's CPU normal sampler has two kernels: the vectorised one (AVX2 and AVX-512 CPUs, identical results) and
a scalar one (``ATEN_CPU_CAPABILITY=default`` or CPUs without AVX2), which draws *different* numbers for
tensors of 16 values or more. Files written by ``distill-data`` therefore record ``noise_check``, the float64
sum of chunk 0's noise; :class:`TeacherPairs` recomputes it and refuses a file whose noise this machine
would draw differently (older files without the check are read without it).

The loss (``objective="distill"``)
----------------------------------
With ``B`` the collapsed operator of the sampler run the student will be used with::

    L = D(x_T, g_x⁻¹(B g_y(ε)))                one step reproduces the teacher's sample   (distill_image)
      + w_inv · MSE(ε, g_y⁻¹(B⁻¹ g_x(x_T)))     inversion returns the teacher's noise      (distill_noise)

``D`` is the trainer's pixel distance (MSE, or MSE + SSIM), images in ``[0, 1]``. Gradients reach every
parameter of ``g`` and of the core (through the differentiable collapse). The two terms run as two
batched passes of ``g``: one forward of ``[ε, x_T]`` and one inverse of ``[B z_ε, B⁻¹ z_x]``. Mixed with
``fast`` (``--objective distill,fast``) the pairs' noise also serves as ``z₀`` of the latent flow term.

Class-conditional pairs
-----------------------
A teacher ``UNet2DModel`` with ``num_class_embeds`` samples pair ``i`` under class ``i mod K``
(``K = num_classes``, by default its ``num_class_embeds``; unguided, so the pair is a draw of the teacher's
``p(x | c)``). The file then also holds ``class_labels`` (int64, one per pair) and ``num_classes``. A class
student (``--conditioning class``) trains every pair through its own class's unguided collapse ``B(c)``
(the core ``A(t, c)``, ``w = 0``; one collapse per class in the batch), the operator classifier-free guidance
is built from at sampling time. Condition dropout does not apply to pairs: a pair's image belongs to its class.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


PAIRS_CHUNK_SIZE = 1000
PAIRS_SEED_BASE = 1_000_000


def chunk_noise(chunk: int, shape: Tuple[int, int, int], chunk_size: int = PAIRS_CHUNK_SIZE,
                seed_base: int = PAIRS_SEED_BASE) -> Tensor:
    """The noise of chunk ``chunk``: ``randn((chunk_size, C, H, W))`` from the CPU generator seeded ``seed_base + chunk``."""
    gen = torch.Generator().manual_seed(int(seed_base) + int(chunk))
    return torch.randn((chunk_size, *shape), generator=gen, dtype=torch.float32)


def pairs_noise(n: int, shape, chunk_size: int = PAIRS_CHUNK_SIZE, seed_base: int = PAIRS_SEED_BASE) -> Tensor:
    """The noise of pairs ``0 … n−1`` (chunks drawn whole, then cut)."""
    chunks = [chunk_noise(k, shape, chunk_size, seed_base) for k in range((n + chunk_size - 1) // chunk_size)]
    return torch.cat(chunks)[:n] if chunks else torch.empty((0, *shape))


class TeacherPairs(Dataset):
    """``(image, noise)`` pairs from a teacher-pairs ``.npz`` (module docstring): images as float in ``[0, 1]``.

    Args:
        path: the ``.npz`` file with key ``images`` (uint8, ``(N, H, W)`` or ``(N, C, H, W)``) and optionally
            ``chunk_size`` / ``seed_base`` (written by :func:`write_teacher_pairs`; defaults 1000 / 1,000,000).
        shape: the expected ``(C, H, W)`` (the student's), checked before anything else is done.
        max_samples: keep the first N pairs.

    All noise is regenerated once at construction (``N·D`` float32 numbers; 184 MB for 45,000 pairs of 32×32).
    Items are ``(image, noise)``, or ``(image, noise, class id)`` for a class-conditional file (``class_labels``,
    ``num_classes``: the module docstring).
    """

    def __init__(self, path: str, shape: Optional[Tuple[int, int, int]] = None, max_samples: Optional[int] = None):
        images, self.chunk_size, self.seed_base, noise_check = read_pairs_file(path)
        labels, self.num_classes = read_pair_labels(path)  # checked before the noise is drawn
        if images.ndim == 3:
            images = images[:, None]
        if shape is not None and tuple(images.shape[1:]) != tuple(shape):
            raise ValueError(
                f"{path}: the pairs are {tuple(images.shape[1:])} images (C, H, W) but the student makes "
                f"{tuple(shape)} images: distill from a teacher of the student's size and channels."
            )
        if max_samples is not None:
            images = images[:max_samples]
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.noise = pairs_noise(len(self.images), tuple(self.images.shape[1:]), self.chunk_size, self.seed_base)
        if noise_check is not None:
            drawn = noise_sum(tuple(self.images.shape[1:]), self.chunk_size, self.seed_base)
            if abs(drawn - noise_check) > 1e-6 * max(1.0, abs(noise_check)):
                raise ValueError(
                    f"{path}: this machine draws different noise for the pairs (chunk 0 sums to {drawn:.10g}, the file "
                    f"says {noise_check:.10g}). torch's CPU normal sampler differs between vectorised (AVX2/AVX-512) "
                    f"and scalar kernels (now: {torch.backends.cpu.get_cpu_capability()}); use the pairs on a CPU of "
                    "the kind that made them, or make them again here with `diffusers-linearizer distill-data`."
                )
        self.channels, self.resolution = int(self.images.shape[1]), int(self.images.shape[2])
        self.class_labels = None if labels is None else torch.from_numpy(labels[: len(self.images)].astype(np.int64))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        if self.class_labels is not None:  # (image, noise, class id): the trainer's condition
            return self.images[index].float() / 255.0, self.noise[index], self.class_labels[index]
        return self.images[index].float() / 255.0, self.noise[index]


def noise_sum(shape, chunk_size: int = PAIRS_CHUNK_SIZE, seed_base: int = PAIRS_SEED_BASE) -> float:
    """The float64 sum of chunk 0's noise (the ``noise_check`` of a pairs file)."""
    return float(chunk_noise(0, shape, chunk_size, seed_base).double().sum())


def read_pairs_file(path: str):
    """``(images uint8 array, chunk_size, seed_base, noise_check or None)`` of a pairs file; ``ValueError``
    naming what is wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Teacher pairs file {path} does not exist (make one with `diffusers-linearizer distill-data`).")
    try:
        data = np.load(path, allow_pickle=False)  # pickles are refused: pairs are data, never code
        keys = data.files
    except (OSError, EOFError, ValueError) as err:  # not a zip, truncated, or a pickle
        raise ValueError(f"{path} is not a readable .npz file: {err}") from err
    with data:
        if "images" not in keys:
            raise ValueError(f"{path} has no 'images' array (keys: {', '.join(keys) or 'none'}).")
        images = data["images"]
        chunk = int(data["chunk_size"]) if "chunk_size" in keys else PAIRS_CHUNK_SIZE
        seed = int(data["seed_base"]) if "seed_base" in keys else PAIRS_SEED_BASE
        check = float(data["noise_check"]) if "noise_check" in keys else None
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: 'images' must be uint8 (round(255·(x + 1)/2)), got {images.dtype}.")
    if images.ndim not in (3, 4) or images.shape[0] == 0 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"{path}: 'images' must be (N, H, W) or (N, C, H, W) with H = W and N ≥ 1, got {images.shape}.")
    if chunk < 1:
        raise ValueError(f"{path}: chunk_size must be ≥ 1, got {chunk}.")
    return images, chunk, seed, check


def read_pair_labels(path: str):
    """``(class_labels int64 array, num_classes)`` of a class-conditional pairs file, or ``(None, None)``;
    ``ValueError`` when they do not fit its images or their ``num_classes``."""
    with np.load(path, allow_pickle=False) as data:
        if "class_labels" not in data.files:
            return None, None
        labels = data["class_labels"]
        classes = int(data["num_classes"]) if "num_classes" in data.files else int(labels.max()) + 1
        n = int(data["images"].shape[0])
    if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'class_labels' must be {n} integers (one per pair), got {labels.dtype} {labels.shape}.")
    if classes < 1 or labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"{path}: class labels must lie in 0 … num_classes − 1 = {classes - 1}, got "
                         f"{int(labels.min())} … {int(labels.max())}.")
    return labels, classes


def check_pairs_model(pairs, model) -> None:
    """``ValueError`` unless class-conditional pairs meet a class model with room for their classes, and
    unconditional pairs an unconditional model (checked before the first step)."""
    labels = getattr(pairs, "class_labels", None)
    if labels is None and model.conditioning == "class":
        raise ValueError("These teacher pairs have no class labels, and a class model trains on pairs of a "
                         "class-conditional teacher (distill-data with a UNet2DModel that has num_class_embeds).")
    if labels is not None and model.conditioning != "class":
        raise ValueError("These teacher pairs are class-conditional (they hold class_labels): train a class model "
                         "with --conditioning class.")
    if labels is not None and pairs.num_classes > model.config.num_classes:
        raise ValueError(f"The pairs have {pairs.num_classes} classes; the model has room for "
                         f"{model.config.num_classes}.")


def stack_pairs(batch):
    """``collate_fn`` for :class:`TeacherPairs`: ``(images (N, C, H, W), noise (N, C, H, W))``, and the class
    ids ``(N,)`` of class-conditional pairs."""
    out = (torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch]))
    return out + (torch.stack([b[2] for b in batch]),) if len(batch[0]) == 3 else out


# ---------------------------------------------------------------------- the loss
def distill_terms(model, B, images: Tensor, noise: Tensor, distance) -> Dict[str, Tensor]:
    """``distill_image`` = ``D(x_T, g_x⁻¹(B g_y(ε)))`` and ``distill_noise`` = ``MSE(ε, g_y⁻¹(B⁻¹ g_x(x_T)))``.

    ``distance(target, prediction)`` is the pixel distance. Two batched passes of ``g`` (module docstring).
    """
    from .distances import mse

    n = images.shape[0]
    dev = images.device
    is_x = torch.cat([torch.zeros(n, dtype=torch.bool, device=dev), torch.ones(n, dtype=torch.bool, device=dev)])
    z = model.apply_g(torch.cat([noise, images.to(noise.dtype)]), is_x)
    moved = torch.cat([B.apply_images(z[:n]), B.apply_images(z[n:], inverse=True)])
    decoded = model.apply_g(moved, ~is_x, inverse=True)  # B z_ε decodes with g_x, B⁻¹ z_x with g_y
    return {"distill_image": distance(images, decoded[:n]), "distill_noise": mse(decoded[n:], noise)}


def class_distill_terms(objective, images: Tensor, noise: Tensor, labels: Tensor) -> Dict[str, Tensor]:
    """:func:`distill_terms` with every pair through its own class's unguided ``B(c)`` (module docstring): each
    term the batch mean, as one ``B`` for the whole batch would give it."""
    from .one_step import class_operators

    model, n = objective.model, images.shape[0]
    total: Dict[str, Tensor] = {}
    for index, B in class_operators(model, objective.scheduler, objective.num_inference_steps, objective.solver,
                                    labels):
        for k, v in distill_terms(model, B, images[index], noise[index], objective.distance).items():
            total[k] = total.get(k, 0.0) + v * (index.numel() / n)
    return total


def distill_component(objective, inputs) -> Dict[str, Tensor]:
    """The ``distill`` objective's terms for a batch of teacher pairs (``inputs.images``, ``inputs.noise``; a
    class model's pairs: ``inputs.condition``, their class ids)."""
    if inputs.condition is not None:
        return class_distill_terms(objective, inputs.images, inputs.noise, inputs.condition)
    return distill_terms(objective.model, inputs.B, inputs.images, inputs.noise, objective.distance)

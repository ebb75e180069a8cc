"""Teacher pairs from a diffusers flow-matching model: ``diffusers-linearizer distill-data``.

Loads a teacher (a ``UNet2DModel`` folder, or a pipeline folder with ``unet/`` and a
``FlowMatchEulerDiscreteScheduler`` in ``scheduler/``), samples it with diffusers' own scheduler loop from
the seeded noise chunks of :mod:`.distill` and writes the pairs file. Chunks are written to
``OUTPUT.parts/chunk-<k>.npy`` as they finish (each through a temporary file and a rename), so an
interrupted run resumes where it stopped; the ``.npz`` appears (atomically) only when every chunk exists.

Example::

    diffusers-linearizer distill-data --teacher path/to/teacher --output pairs.npz --num-pairs 45000
"""

from __future__ import annotations

import argparse
import io
import os
from typing import Optional, Sequence

import numpy as np
import torch

from ..atomic import write_bytes_atomic
from .distill import PAIRS_CHUNK_SIZE, PAIRS_SEED_BASE, chunk_noise, noise_sum

TEACHER_STEPS = 50


def load_teacher(path: str, device="cpu"):
    """``(unet, scheduler)`` of a teacher folder; ``ValueError`` for anything that is not a flow-matching UNet."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

    if not os.path.isdir(path):
        raise FileNotFoundError(f"Teacher folder {path} does not exist.")
    unet_dir = os.path.join(path, "unet") if os.path.isdir(os.path.join(path, "unet")) else path
    if not os.path.isfile(os.path.join(unet_dir, "config.json")):
        raise ValueError(f"{path} holds no UNet2DModel (no config.json in it or in its unet/ folder).")
    unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True).to(device).eval()  # never a pickled .bin
    sched_dir = os.path.join(path, "scheduler")
    if os.path.isdir(sched_dir):
        import json

        with open(os.path.join(sched_dir, "scheduler_config.json"), encoding="utf-8") as f:
            name = json.load(f).get("_class_name")
        if name != "FlowMatchEulerDiscreteScheduler":
            raise ValueError(f"{path}: the teacher's scheduler is {name}; distillation needs a flow-matching "
                             "FlowMatchEulerDiscreteScheduler teacher.")
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(sched_dir)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler()
    return unet, scheduler


def teacher_shape(unet):
    """``(C, H, W)`` of the teacher's samples."""
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    return (int(unet.config.in_channels), int(size), int(size))


def check_teacher_student(unet, student_shape) -> None:
    """``ValueError`` when the teacher's sample size or channels differ from the student's ``(C, H, W)``."""
    shape = teacher_shape(unet)
    if tuple(shape) != tuple(student_shape):
        raise ValueError(f"The teacher makes {shape} images (C, H, W), the student {tuple(student_shape)}: "
                         "their sample size and channels must match.")


def teacher_classes(unet, num_classes: Optional[int] = None) -> Optional[int]:
    """The classes a teacher's pairs are drawn under: ``None`` for an unconditional teacher, else ``num_classes``
    (default: its ``num_class_embeds``); ``ValueError`` for class embeddings that do not take integer ids."""
    embeds = unet.config.get("num_class_embeds")
    kind = unet.config.get("class_embed_type")
    if kind is not None:
        raise ValueError(f"The teacher's class_embed_type is {kind!r}; distill-data draws class-conditional pairs from "
                         "a UNet2DModel with num_class_embeds (integer class ids, class_embed_type None).")
    if embeds is None:
        if num_classes is not None:
            raise ValueError("--num-classes needs a class-conditional teacher (a UNet2DModel with num_class_embeds).")
        return None
    classes = int(embeds) if num_classes is None else num_classes
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= int(embeds):
        raise ValueError(f"num_classes must be an int in 1 … {embeds} (the teacher's num_class_embeds), got {classes!r}.")
    return classes


@torch.no_grad()
def sample_teacher(unet, scheduler, noise: torch.Tensor, num_inference_steps: int = TEACHER_STEPS,
                   batch_size: int = 250, class_labels: Optional[torch.Tensor] = None) -> np.ndarray:
    """The teacher's ODE samples of ``noise`` (under ``class_labels``, one per sample, for a class-conditional
    teacher) as uint8 ``round(255·clamp((x + 1)/2, 0, 1))``, ``(N, C, H, W)``."""
    device = unet.device
    out = []
    for i in range(0, noise.shape[0], batch_size):
        x = noise[i:i + batch_size].to(device)
        labels = None if class_labels is None else class_labels[i:i + batch_size].to(device)
        scheduler.set_timesteps(num_inference_steps, device=device)
        for t in scheduler.timesteps:
            v = unet(x, t, class_labels=labels).sample
            x = scheduler.step(v, t, x).prev_sample
        out.append(((x.float().cpu() + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8))
    return torch.cat(out).numpy()


def _save_atomic(path: str, writer) -> None:
    """``writer(file)`` into memory, then the bytes to ``path`` with the package's one atomic write."""
    buffer = io.BytesIO()
    writer(buffer)
    write_bytes_atomic(path, buffer.getvalue())


def write_teacher_pairs(teacher: str, output: str, num_pairs: int, chunk_size: int = PAIRS_CHUNK_SIZE,
                        seed_base: int = PAIRS_SEED_BASE, num_inference_steps: int = TEACHER_STEPS,
                        batch_size: int = 250, device="cpu", student_shape=None, progress: bool = True,
                        num_classes: Optional[int] = None) -> str:
    """Write ``num_pairs`` teacher pairs to ``output`` (``.npz``), resumably (module docstring). A class-conditional
    teacher draws pair ``i`` under class ``i mod num_classes`` (:mod:`.distill`). Returns the path."""
    from tqdm.auto import tqdm

    for name, value in (("num_pairs", num_pairs), ("chunk_size", chunk_size), ("num_inference_steps", num_inference_steps),
                        ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int ≥ 1, got {value!r}.")
    if not output.endswith(".npz"):
        raise ValueError(f"--output must name a .npz file, got {output!r}.")
    unet, scheduler = load_teacher(teacher, device)
    classes = teacher_classes(unet, num_classes)
    labels = None if classes is None else torch.arange(num_pairs) % classes
    shape = teacher_shape(unet)
    if student_shape is not None:
        check_teacher_student(unet, student_shape)
    parts = output + ".parts"
    tag = "" if classes is None else f"-c{classes}"  # a resumed run never mixes chunks drawn under other classes
    os.makedirs(parts, exist_ok=True)
    chunks = (num_pairs + chunk_size - 1) // chunk_size
    bar = tqdm(total=num_pairs, desc="teacher pairs", unit="img", disable=not progress)
    for k in range(chunks):
        n = min(chunk_size, num_pairs - k * chunk_size)
        path = os.path.join(parts, f"chunk-{k:05d}-{n}{tag}.npy")
        if not os.path.isfile(path):
            images = sample_teacher(unet, scheduler, chunk_noise(k, shape, chunk_size, seed_base)[:n],
                                    num_inference_steps, batch_size,
                                    None if labels is None else labels[k * chunk_size:k * chunk_size + n])
            _save_atomic(path, lambda f: np.save(f, images))
        bar.update(n)
    bar.close()
    images = np.concatenate([np.load(os.path.join(parts, f"chunk-{k:05d}-{min(chunk_size, num_pairs - k * chunk_size)}{tag}.npy"))
                             for k in range(chunks)])
    if images.shape[1] == 1:
        images = images[:, 0]
    check = np.float64(noise_sum(shape, chunk_size, seed_base))
    extra = {} if labels is None else dict(class_labels=labels.numpy().astype(np.int64), num_classes=np.int64(classes))
    _save_atomic(output, lambda f: np.savez(f, images=images, chunk_size=np.int64(chunk_size),
                                            seed_base=np.int64(seed_base), noise_check=check, **extra))
    return output


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--teacher", required=True, help="A UNet2DModel folder or a pipeline folder (unet/, scheduler/).")
    parser.add_argument("--output", "-o", required=True, help="The pairs file to write (.npz).")
    parser.add_argument("--num-pairs", "--num_pairs", type=int, default=45_000, help="Pairs to make. Default: 45000.")
    parser.add_argument("--chunk-size", "--chunk_size", type=int, default=PAIRS_CHUNK_SIZE,
                        help=f"Pairs per seeded noise chunk. Default: {PAIRS_CHUNK_SIZE}.")
    parser.add_argument("--seed-base", "--seed_base", type=int, default=PAIRS_SEED_BASE,
                        help=f"Chunk k's noise uses seed SEED_BASE + k. Default: {PAIRS_SEED_BASE}.")
    parser.add_argument("--num-inference-steps", "--num_inference_steps", type=int, default=TEACHER_STEPS,
                        help=f"Teacher Euler steps. Default: {TEACHER_STEPS}.")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=250, help="Teacher batch. Default: 250.")
    parser.add_argument("--student", default=None,
                        help="A Linearizer model or pipeline folder: refuse a teacher of another sample size or channels.")
    parser.add_argument("--device", default="cpu", help="Device of the teacher. Default: cpu.")
    parser.add_argument("--num-classes", "--num_classes", type=int, default=None,
                        help="A class-conditional teacher: draw pair i under class i mod N. Default: its num_class_embeds.")
    return parser


def main(argv: Optional[Sequence[str]] = None, args=None) -> int:
    if args is None:
        args = add_arguments(argparse.ArgumentParser(prog="diffusers-linearizer distill-data")).parse_args(argv)
    student_shape = None
    if args.student:
        from ..models import LinearizerModel

        path = os.path.join(args.student, "linearizer") if os.path.isdir(os.path.join(args.student, "linearizer")) else args.student
        config = LinearizerModel.load_config(path)
        student_shape = (config.get("in_channels", 1), config.get("sample_size", 32), config.get("sample_size", 32))
    path = write_teacher_pairs(args.teacher, args.output, args.num_pairs, args.chunk_size, args.seed_base,
                               args.num_inference_steps, args.batch_size, args.device, student_shape,
                               num_classes=args.num_classes)
    print(f"Wrote {args.num_pairs} teacher pairs to {path}")
    return 0

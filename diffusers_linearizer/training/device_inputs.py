"""Training inputs that live on the training device: the dataset as one tensor, and the per-step noise.

With ``--device_inputs on`` (the default ``auto`` turns it on for every device but the CPU) a training
step takes nothing from the host and waits for nothing:

* :class:`DeviceData` holds the whole dataset on the device (stacked once with the loader's own
  ``collate_fn``) and cuts the micro-batches by index, in exactly the order the ``DataLoader`` would give
  them: the epoch's permutation from ``EpochShuffleSampler`` (a function of ``(seed, epoch)``), batches of
  ``--train_batch_size`` with the incomplete one dropped, batch ``k·P + rank`` for process ``rank`` of
  ``P``. A resumed run skips the micro-batches it consumed, as the loader path does.
* :func:`step_generator` seeds one generator *on the device* per optimizer step from
  ``derive_seed(seed, "step", step)``, so the noise of a step is drawn where it is used. The same seed
  gives the same run on the same kind of device; a CUDA generator draws other numbers than the CPU's, so
  a GPU run does not repeat a CPU run's noise. On the CPU the generator is the CPU generator of the loader
  path: both paths then train bit-identically (what the tests check).

:func:`apply_kernel_options` sets the kernel switches a run asks for (``--allow_tf32``, ``--cudnn_benchmark``) and
the weights' memory layout (``--channels_last``).
"""

from __future__ import annotations

from typing import Iterator, Optional, Union

import torch
from torch import Tensor

DEVICE_INPUTS = ("auto", "on", "off")
# ``auto`` keeps the loader for datasets larger than this (bytes as float32 on the device).
AUTO_MAX_BYTES = 4 * 2**30


def dataset_bytes(dataset) -> int:
    """Bytes of ``dataset`` stacked as float32 (teacher pairs: images and noise)."""
    item = dataset[0]
    parts = item if isinstance(item, (tuple, list)) else (item,)
    per_item = sum(p.numel() for p in parts if isinstance(p, Tensor))
    return len(dataset) * per_item * 4


def use_device_inputs(option: str, device: torch.device, dataset) -> bool:
    """Whether ``--device_inputs option`` keeps the inputs on ``device`` for ``dataset``."""
    if option not in DEVICE_INPUTS:
        raise ValueError(f"--device_inputs must be one of {', '.join(DEVICE_INPUTS)}, got {option!r}.")
    if option == "auto":
        return device.type != "cpu" and dataset_bytes(dataset) <= AUTO_MAX_BYTES
    return option == "on"


class DeviceData:
    """``dataset`` on ``device``, cut into this process's micro-batches (module docstring).

    Args:
        dataset: a map-style dataset (images, or ``(image, noise)`` teacher pairs).
        collate_fn: the loader's ``collate_fn`` (``stack_images`` or ``stack_pairs``).
        sampler: the ``EpochShuffleSampler`` whose permutations give the order.
        batch_size / num_processes / rank: the per-process micro-batch and the process group.
        chunk: items stacked at a time while moving the dataset to the device.
    """

    def __init__(self, dataset, collate_fn, sampler, batch_size: int, device, num_processes: int = 1,
                 rank: int = 0, chunk: int = 4096):
        self.sampler, self.batch_size = sampler, int(batch_size)
        self.num_processes, self.rank = int(num_processes), int(rank)
        self.device = torch.device(device)
        parts = []
        for start in range(0, len(dataset), chunk):
            batch = collate_fn([dataset[i] for i in range(start, min(len(dataset), start + chunk))])
            parts.append(tuple(batch) if isinstance(batch, (tuple, list)) else (batch,))
        self.tensors = tuple(torch.cat([p[j] for p in parts]).to(self.device) for j in range(len(parts[0])))
        self.pairs = len(self.tensors) > 1
        self.rounds = (len(dataset) // self.batch_size) // self.num_processes

    def __len__(self) -> int:
        """Micro-batches of this process per epoch."""
        return self.rounds

    def batch(self, indices: Tensor) -> Union[Tensor, tuple]:
        """The items at ``indices`` (a device tensor): images, or ``(images, noise)``."""
        out = tuple(t.index_select(0, indices) for t in self.tensors)
        return out if self.pairs else out[0]

    def batches(self, epoch: int, skip: int = 0) -> Iterator:
        """The micro-batches of ``epoch`` from number ``skip`` on."""
        order = self.sampler.permutation(epoch).to(self.device, non_blocking=True)
        for k in range(skip, self.rounds):
            first = (k * self.num_processes + self.rank) * self.batch_size
            yield self.batch(order[first:first + self.batch_size])


def step_generator(device, seed: int, step: int, generator: Optional[torch.Generator] = None) -> torch.Generator:
    """A generator on ``device`` seeded by ``(seed, "step", step)`` (``generator`` is reseeded if given)."""
    from .data import derive_seed

    if generator is None:
        generator = torch.Generator(device=torch.device(device))
    return generator.manual_seed(derive_seed(seed, "step", step))


def apply_kernel_options(args, model: torch.nn.Module) -> None:
    """The run's kernel choices, set once before the first step.

    * ``--allow_tf32``: TF32 matrix products and cuDNN convolutions (Ampere and later; process-wide).
    * ``--cudnn_benchmark``: cuDNN times its algorithms for each new convolution shape once and keeps the fastest
      (``torch.backends.cudnn.benchmark``; process-wide). Every step repeats the same shapes, so only the first pays.
    * ``--channels_last``: the model's 4-D weights in NHWC order (``torch.channels_last``), the layout cuDNN's
      tensor-core convolutions read without a transpose; a convolution's output follows its weight's layout, so the
      activations switch too. The values are the same, only their order in memory differs: saved weights and the
      maths are unchanged (up to the other kernels' rounding).
    """
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

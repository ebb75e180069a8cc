"""What a training run is built from, made from its options: the accelerator, the dataset, the model,
the optimizer and its learning-rate schedule."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

import torch

from .arguments import MODEL_OPTIONS
from .checkpoints import MODEL_SUBDIR


def _no_accelerator_device() -> bool:
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        return not acc.is_available()
    return not torch.cuda.is_available()


def make_accelerator(args, output_dir: str):
    """The ``Accelerator`` of a run: mixed precision, gradient accumulation (the trainer counts micro-batches
    itself), TensorBoard logging, and the CPU where there is no GPU or ``--cpu`` asks for it."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        log_with="tensorboard" if args.report_to == "tensorboard" else None,
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=os.path.join(output_dir, args.logging_dir)),
        # Without a GPU, processes started by `accelerate launch` only form one (gloo) group with cpu=True.
        cpu=args.cpu or _no_accelerator_device(),
    )


def load_dataset(args):
    """The training set: teacher pairs (``--teacher_pairs``), an image folder or Fashion-MNIST; with
    ``--conditioning``, items ``(image, condition)`` and ``dataset.model_config`` (the model's condition options)."""
    from .data import build_dataset
    from .distill import TeacherPairs

    if args.conditioning == "class" and args.teacher_pairs:  # a class-conditional teacher's pairs (distill.py)
        dataset = TeacherPairs(args.teacher_pairs, max_samples=args.max_train_samples)
        if dataset.class_labels is None:
            raise ValueError(f"{args.teacher_pairs} holds unconditional pairs; --conditioning class distils pairs of a "
                             "class-conditional teacher (distill-data with a UNet2DModel that has num_class_embeds).")
        _check_pairs_size(args, dataset)
        dataset.model_config = dict(conditioning="class", num_classes=dataset.num_classes,
                                    id2label={str(i): str(i) for i in range(dataset.num_classes)})
        return dataset
    if args.conditioning:
        from .conditions import build_conditional_dataset

        dataset, dataset.model_config = build_conditional_dataset(args)
        return dataset
    if args.teacher_pairs:
        from .style_data import StylePairs, is_style_pairs

        if is_style_pairs(args.teacher_pairs):  # (stylised, content, style id) crops of photos
            dataset = StylePairs(args.teacher_pairs, max_samples=args.max_train_samples)
            if dataset.resolution != args.resolution:
                raise ValueError(f"{args.teacher_pairs} holds {dataset.resolution}×{dataset.resolution} crops; "
                                 f"--resolution {args.resolution} asks for others.")
            return dataset
        dataset = TeacherPairs(args.teacher_pairs, max_samples=args.max_train_samples)
        _check_pairs_size(args, dataset)
        return dataset
    return build_dataset(
        args.train_data_dir, args.data_dir, args.resolution, args.channels, args.fashion_mnist_mode,
        args.max_train_samples,
    )


def _check_pairs_size(args, dataset) -> None:
    if dataset.resolution != args.resolution or dataset.channels != (args.channels or dataset.channels):
        raise ValueError(f"{args.teacher_pairs} holds {dataset.channels}×{dataset.resolution}×{dataset.resolution} "
                         f"images; --resolution {args.resolution} / --channels {args.channels} ask for others.")


def build_model(args, in_channels: int, condition_config: Optional[Dict[str, Any]] = None):
    """A fresh ``LinearizerModel`` from ``--model_config``, the model options and the data's conditions
    (``condition_config``; ``--init_weights`` copies matching tensors in), or a pretrained one.

    Either way its ``sampling_temperature`` is 1: a calibrated temperature belongs to the weights it was chosen
    for, and training changes them (calibrate the result again with ``benchmarks/ship_default.py``). A fitted
    noise prior is dropped for the same reason: it describes the noise of these weights' inverse (fit it again
    with ``training/noise_prior.py``)."""
    model = _build_model(args, in_channels, condition_config)
    if model.config.sampling_temperature != 1.0:
        model.register_to_config(sampling_temperature=1.0)
    if getattr(model, "noise_prior", None) is not None:
        model.set_noise_prior(None)
    return model


def _build_model(args, in_channels: int, condition_config: Optional[Dict[str, Any]] = None):
    from ..models import LinearizerModel

    if args.pretrained_model:
        path = args.pretrained_model
        if os.path.isdir(os.path.join(path, MODEL_SUBDIR)):
            path = os.path.join(path, MODEL_SUBDIR)
        model = LinearizerModel.from_pretrained(path)
        if model.sample_shape != (in_channels, args.resolution, args.resolution):
            raise ValueError(
                f"--pretrained_model {args.pretrained_model} is for {model.sample_shape} images, the data are "
                f"{(in_channels, args.resolution, args.resolution)}."
            )
        if getattr(args, "untie_g", False):
            from ..models.untie import untie_networks

            model = untie_networks(model)  # the same function, twice g's parameters
        return model
    config: Dict[str, Any] = {}
    if args.model_config:
        with open(args.model_config, encoding="utf-8") as f:
            config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    for name in MODEL_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            config[name] = value
    for key, value in (("sample_size", args.resolution), ("in_channels", in_channels)):
        if key in config and config[key] != value:
            raise ValueError(f"--model_config has {key}={config[key]} but the data need {value}.")
        config[key] = value
    config.update(condition_config or {})
    from ..models.core_registry import CORES

    if "core_type" in config and CORES.entry(config["core_type"]).same_g and "role_y" not in config:
        config["role_y"] = config.get("role_x", 1.0)  # one network with one role on both sides (g_x ≡ g_y)
    model = LinearizerModel(**config)
    if getattr(args, "init_weights", None):
        from .conditions import init_from

        init_from(model, args.init_weights)
    return model


def initialize_model(args, dataset, device):
    """:func:`build_model` with the same initial weights in every process (seeded by ``--seed``), in float32
    (``--mixed_precision`` only autocasts), its ActNorm layers initialised on a fixed batch of ``dataset``."""
    from accelerate.utils import set_seed

    from .data import derive_seed, stack_images
    from .objective import initialize_actnorm

    set_seed(args.seed)
    model = build_model(args, dataset.channels, getattr(dataset, "model_config", None)).to(device)
    if args.teacher_pairs and hasattr(dataset, "class_labels"):  # teacher pairs (not style pairs)
        from .distill import check_pairs_model

        check_pairs_model(dataset, model)
    model.train()
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.to(torch.float32)
    init_gen = torch.Generator().manual_seed(derive_seed(args.seed, "actnorm-init"))
    init_idx = torch.randperm(len(dataset), generator=init_gen)[: min(len(dataset), args.init_batch_size)].tolist()
    init_images = stack_images([dataset[i] for i in init_idx])
    init_noise = torch.randn(init_images.shape, generator=init_gen)
    initialize_actnorm(model, init_images.to(device), init_noise.to(device))
    if hasattr(model.core, "fit_range") and not args.pretrained_model:
        from .projection_objective import initialize_projection

        initialize_projection(model, init_images.to(device))
    return model


def make_loader(args, dataset, pin_memory: bool = False):
    """``(sampler, loader)``: a shuffling sampler whose order depends only on ``(seed, epoch)``, and the
    per-process ``DataLoader`` of ``--train_batch_size`` (incomplete batches dropped)."""
    from torch.utils.data import DataLoader

    from .conditions import stack_conditioned
    from .data import EpochShuffleSampler, stack_images
    from .distill import stack_pairs

    sampler = EpochShuffleSampler(len(dataset), seed=args.seed)
    loader = DataLoader(
        dataset, batch_size=args.train_batch_size, sampler=sampler, drop_last=True,
        collate_fn=getattr(dataset, "collate_fn", None) or stack_pairs if args.teacher_pairs else stack_conditioned if args.conditioning else stack_images,
        num_workers=args.dataloader_num_workers, pin_memory=pin_memory,
    )
    return sampler, loader


def use_fused_optimizer(option: str, device: torch.device) -> bool:
    """``--fused_optimizer``: ``on``, ``off``, or ``auto`` (on for CUDA)."""
    return option == "on" or (option == "auto" and device.type == "cuda")


def build_optimizer(args, model, num_images: int, num_processes: int, fused: bool = False):
    """``(optimizer, lr_scheduler, max_train_steps)``: AdamW over ``model``'s parameters (``fused``: its
    one-kernel implementation) and the ``diffusers.optimization`` schedule over the run's optimizer steps
    (``--max_train_steps``, or the steps of ``--num_train_epochs``). accelerate steps a prepared scheduler
    once per process, hence the step counts × processes."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, **({"fused": True} if fused else {}),
    )
    global_batch = args.train_batch_size * num_processes
    steps_per_epoch_est = max(1, math.ceil((num_images // global_batch) / args.gradient_accumulation_steps))
    max_train_steps = args.max_train_steps if args.max_train_steps is not None else args.num_train_epochs * steps_per_epoch_est
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=max(1, max_train_steps) * num_processes,
    )
    return optimizer, lr_scheduler, max_train_steps

"""``diffusers-linearizer``: generate, invert and interpolate images with a Linearizer pipeline.

Examples::

    diffusers-linearizer generate --num-images 16 --seed 0 --output samples.png
    diffusers-linearizer invert photo1.png photo2.png --output reconstructions.png --save-noise noise.pt
    diffusers-linearizer interpolate a.png b.png --frames 12 --mode slerp --output path.png --gif path.gif

    # several processes; images are split over them and equal the one-process output:
    accelerate launch --num_processes 2 -m diffusers_linearizer.cli generate --num-images 64
    # on a machine without GPUs use accelerate's torchrun launcher (its `--cpu` flag starts ONE process);
    # the command then forms a gloo (multi-CPU) process group itself:
    accelerate launch --multi_gpu --num_processes 2 -m diffusers_linearizer.cli generate --num-images 64

Image ``i`` of ``generate`` is always drawn from ``torch.Generator().manual_seed(seed + i)``, so the
images do not depend on the batch size or on how many processes share the work.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from .image_grid import make_grid

from .defaults import DEFAULT_MODEL_DIR, PACKAGED_MODELS

from .cli_parser import build_parser  # noqa: F401  (the parser lives in its own module)


def _say(msg: str, main: bool = True) -> None:
    if main:
        print(msg, file=sys.stderr, flush=True)


def fresh_model_pipeline(seed: int = 0):
    """A freshly initialised (untrained) small pipeline, identical in every process (fixed init seed)."""
    import torch

    from . import LinearizerModel, LinearizerPipeline, LinearizerScheduler

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LinearizerModel(
            sample_size=32, in_channels=1, num_blocks=4, conditioner_channels=32, core_type="shared_basis",
            core_rank=32, core_hidden_dim=64, core_embedding_dim=32,
        )
    return LinearizerPipeline(linearizer=model, scheduler=LinearizerScheduler())


def load_pipeline(model: Optional[str], dtype_name: str, main: bool = True, cls=None):
    """``cls.from_pretrained(model)``; with no ``--model`` the packaged default, or an untrained model
    (with a warning) when the package was installed without it."""
    import torch

    from . import LinearizerPipeline

    cls = cls or LinearizerPipeline
    dtype = getattr(torch, dtype_name)
    if model is None and not os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "model_index.json")):
        _say(
            "WARNING: no --model given and no trained default checkpoint is packaged "
            f"({DEFAULT_MODEL_DIR} is missing): using a freshly initialised, UNTRAINED LinearizerModel "
            "(32×32 grayscale). Its images are not meaningful.",
            main,
        )
        pipe = fresh_model_pipeline()
        pipe.linearizer.to(dtype)
        return cls(**pipe.components)
    model = PACKAGED_MODELS.get(model, model) if model is not None else DEFAULT_MODEL_DIR
    return cls.from_pretrained(model, dtype=dtype)


def check_device(name: Optional[str]) -> None:
    """A ``ValueError`` (before anything is loaded) when ``--device`` names no device this machine has."""
    import torch

    if name is None:
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"--device {name!r} is not a torch device ({err}); use e.g. cpu, cuda, cuda:1, mps.") from None
    if device.type == "cpu":
        return
    module = getattr(torch, device.type, None)
    available = bool(module is not None and hasattr(module, "is_available") and module.is_available())
    if not available:
        hint = " (this torch is a CPU-only build)" if device.type == "cuda" and torch.version.cuda is None else ""
        raise ValueError(f"--device {name}: no {device.type} device is available on this machine{hint}; use --device cpu.")
    count = getattr(module, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise ValueError(f"--device {name}: this machine has {count} {device.type} device(s) (0 … {count - 1}).")


def check_outputs(*paths: Optional[str]) -> None:
    """Every image file to write must name a format by its extension (checked before any work)."""
    from .images import image_format

    for path in paths:
        if path is not None:
            image_format(path)


def _wants_cpu(args) -> bool:
    import torch

    if args.device is not None:
        return torch.device(args.device).type == "cpu"
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return not accelerator.is_available()
    return not torch.cuda.is_available()


def _device(args, state):
    """The process's device: ``--device`` if it names a specific one, else accelerate's (cuda:<local rank>)."""
    import torch

    if args.device is None:
        return state.device
    device = torch.device(args.device)
    if device.index is None and device.type == state.device.type:
        return state.device
    return device


# ---------------------------------------------------------------------- commands
def generate_condition(pipe, args) -> dict:
    """The condition arguments of ``generate`` (checked against the model before any image is made); class
    labels as a function of the image indices of a batch."""
    labels = [int(c) if c.isdigit() else c for c in args.class_names] if args.class_names else None
    check = {k: v for k, v in (("class_labels", labels), ("prompt", args.prompt)) if v is not None}
    pipe._check_condition_args(check, pipe.resolve_guidance(args.guidance_scale))  # the model's kind first
    condition = {}
    if labels is not None:
        ids = pipe._class_ids(labels, "--class")
        condition["class_labels"] = lambda batch: [ids[i % len(ids)] for i in batch]
    if args.prompt is not None:
        condition["prompt"] = args.prompt
    if args.guidance_scale is not None:
        condition["guidance_scale"] = args.guidance_scale
    return condition


def cmd_generate(args) -> int:
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from .images import save_image, to_pil_list
    from .pipelines.linearizer.pipeline_linearizer import check_temperature

    if args.num_images < 1 or args.batch_size < 1:
        raise ValueError("--num-images and --batch-size must be ≥ 1.")
    if args.temperature is not None:
        check_temperature(args.temperature, "--temperature")
    check_device(args.device)
    check_outputs(args.output)
    # On CPU, ask accelerate for its multi-CPU (gloo) backend: `accelerate launch --multi_gpu` on a machine
    # without GPUs starts the processes, and cpu=True makes them one process group instead of N single ones.
    state = PartialState(cpu=_wants_cpu(args))
    main = state.is_main_process
    pipe = load_pipeline(args.model, args.dtype, main)
    condition = generate_condition(pipe, args)
    pipe.to(_device(args, state))
    pipe.set_progress_bar_config(disable=args.no_progress or not main)

    mine: List[int]
    with state.split_between_processes(list(range(args.num_images))) as mine:
        mine = list(mine)
    results = []
    batches = [mine[i:i + args.batch_size] for i in range(0, len(mine), args.batch_size)]
    for batch in tqdm(batches, desc="generate", disable=args.no_progress or not main):
        gens = [torch.Generator("cpu").manual_seed(args.seed + i) for i in batch]
        images = pipe(
            batch_size=len(batch), num_inference_steps=args.steps, solver=args.solver, one_step=not args.multi_step,
            generator=gens, temperature=args.temperature, output_type="pt", clamp=False,
            **{k: v(batch) if callable(v) else v for k, v in condition.items()},
        ).images
        results.extend(zip(batch, images.float().cpu()))
    if state.num_processes > 1:
        _say(f"process {state.process_index + 1}/{state.num_processes}: generated {len(mine)} image(s)")
        results = gather_object(results)
    if not main:
        state.wait_for_everyone()
        return 0
    results = sorted(results, key=lambda r: r[0])
    images = torch.stack([img for _, img in results])
    save_image(make_grid(images, args.nrow), args.output)
    if args.save_images:
        for (i, _), img in zip(results, to_pil_list(images)):
            save_image(img, os.path.join(args.save_images, f"{i:05d}.png"))
    if args.save_tensors:
        torch.save(images, args.save_tensors)
    _say(f"wrote {len(results)} images to {args.output}")
    state.wait_for_everyone()
    return 0


def _inversion_pipeline(args):
    """Checks of ``--device`` and output files, then the inversion pipeline on its device."""
    import torch

    from . import LinearizerInversionPipeline

    check_device(args.device)
    check_outputs(args.output, getattr(args, "gif", None))
    pipe = load_pipeline(args.model, args.dtype, cls=LinearizerInversionPipeline)
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.set_progress_bar_config(disable=args.no_progress)
    return pipe


def cmd_invert(args) -> int:
    import torch

    from .images import images_to_tensor, load_image_files, save_image

    pipe = _inversion_pipeline(args)
    shape = pipe.linearizer.sample_shape
    images = load_image_files(args.images, shape, args.resize)
    out = pipe(images, num_inference_steps=args.steps, solver=args.solver, output_type="pt")
    grid_images = torch.cat([images_to_tensor(images, shape), out.reconstruction.float().cpu()])
    save_image(make_grid(grid_images, args.nrow or len(images)), args.output)
    for path, p, r in zip(args.images, out.psnr.tolist(), out.relative_error.tolist()):
        print(f"{path}: reconstruction PSNR {p:.2f} dB, relative error {r:.3e}")
    if args.save_noise:
        torch.save(out.noise.cpu(), args.save_noise)
    _say(f"wrote inputs and reconstructions to {args.output}")
    return 0


def cmd_interpolate(args) -> int:
    import io

    from .atomic import write_bytes_atomic
    from .images import load_image_files, save_image, to_pil_list

    pipe = _inversion_pipeline(args)
    a, b = load_image_files([args.image_a, args.image_b], pipe.linearizer.sample_shape, args.resize)
    out = pipe.interpolate(a, b, num_frames=args.frames, mode=args.mode, num_inference_steps=args.steps,
                           solver=args.solver, output_type="pt")
    save_image(make_grid(out.frames, args.nrow or args.frames), args.output)
    if args.gif:
        frames, buf = to_pil_list(out.frames), io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=args.duration, loop=0)
        write_bytes_atomic(args.gif, buf.getvalue())
    print(f"endpoint reconstruction PSNR: {out.psnr[0]:.2f} dB, {out.psnr[1]:.2f} dB")
    _say(f"wrote {args.frames} frames to {args.output}" + (f" and {args.gif}" if args.gif else ""))
    return 0


def cmd_train(args) -> int:
    from .training.train import main as train_main

    return train_main(args)


def cmd_distill_data(args) -> int:
    from .training.teacher import main as teacher_main

    return teacher_main(args=args)


def cmd_demo(args) -> int:
    try:
        from .demo.app import import_gradio

        import_gradio()
    except ImportError as err:
        print(f"diffusers-linearizer demo: error: {err}", file=sys.stderr)
        return 1
    from .demo import launch

    launch(model=args.model, port=args.port, share=args.share, host=args.host)
    return 0


COMMANDS = {"generate": cmd_generate, "invert": cmd_invert, "interpolate": cmd_interpolate, "train": cmd_train,
            "distill-data": cmd_distill_data, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "steps", 2) < 2:
        build_parser().error("--steps must be at least 2 (T grid points give T - 1 solver steps)")
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as err:
        print(f"diffusers-linearizer {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

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

import io
import os
import re
import sys
from typing import List, Optional, Sequence

from .cli_checks import (
    TENSOR_EXTENSIONS, check_device, check_distinct, check_images_fit, check_output_file, check_output_folder,
    check_seeds,
)
from .cli_parser import build_parser  # noqa: F401  (the parser lives in its own module)
from .cli_projection import cmd_project
from .cli_style import cmd_style_data, cmd_stylize, cmd_unstylize
from .cli_analysis import cmd_analyze
from .defaults import DEFAULT_MODEL_DIR, PACKAGED_MODELS
from .image_grid import make_grid


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


def _save_tensor(tensor, path: str) -> None:
    """``torch.save`` into memory, then one atomic write (a reader never sees half a file)."""
    import torch

    from .atomic import write_bytes_atomic

    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _grid_row(nrow: Optional[int], count: int) -> Optional[int]:
    """``--nrow`` for a grid of ``count`` images: a row holds at most all of them (as torchvision's make_grid)."""
    return None if nrow is None else min(nrow, count)


def check_generate(args) -> None:
    """Everything about ``generate`` that can be checked before the model is loaded."""
    check_seeds(args.seed, args.num_images, f"--num-images {args.num_images}")
    check_device(args.device)
    check_output_file(args.output, "--output", "image grid", "samples.png", image=True)
    check_output_file(args.save_tensors, "--save-tensors", "image tensors", "samples.pt", TENSOR_EXTENSIONS)
    check_output_folder(args.save_images, "--save-images", "images")


def cmd_generate(args) -> int:
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from .images import save_image, to_pil_list

    check_generate(args)
    # On CPU, ask accelerate for its multi-CPU (gloo) backend: `accelerate launch --multi_gpu` on a machine
    # without GPUs starts the processes, and cpu=True makes them one process group instead of N single ones.
    state = PartialState(cpu=_wants_cpu(args))
    main = state.is_main_process
    pipe = load_pipeline(args.model, args.dtype, main)
    condition = generate_condition(pipe, args)
    check_images_fit(args.num_images, pipe.linearizer.sample_shape, "--num-images",
                     "Generate them in several runs: image i uses seed + i, so --seed S continues a series at S.")
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
            **({"noise_prior": False} if args.plain_noise else {}),
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
    save_image(make_grid(images, _grid_row(args.nrow, len(images))), args.output)
    if args.save_images:
        for (i, _), img in zip(results, to_pil_list(images)):
            save_image(img, os.path.join(args.save_images, f"{i:05d}.png"))
    if args.save_tensors:
        _save_tensor(images, args.save_tensors)
    _say(f"wrote {len(results)} images to {args.output}")
    state.wait_for_everyone()
    return 0


def _inversion_pipeline(args, images: Sequence[str]):
    """The checks of ``--device``, the output files and the input images (each read once as an image), then
    the inversion pipeline on its device."""
    import torch

    from . import LinearizerInversionPipeline
    from .images import load_image_files

    check_device(args.device)
    gif = getattr(args, "gif", None)
    check_output_file(args.output, "--output", "image grid", "grid.png", image=True)
    check_output_file(gif, "--gif", "animation", "frames.gif", (".gif",))
    check_output_file(getattr(args, "save_noise", None), "--save-noise", "noise", "noise.pt", TENSOR_EXTENSIONS)
    check_distinct(("--output", args.output), ("--gif", gif))
    load_image_files(images)  # every input file readable as an image (its name in the error) before the model loads
    pipe = load_pipeline(args.model, args.dtype, cls=LinearizerInversionPipeline)
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.set_progress_bar_config(disable=args.no_progress)
    return pipe


def cmd_invert(args) -> int:
    import torch

    from .images import images_to_tensor, load_image_files, save_image

    pipe = _inversion_pipeline(args, args.images)
    shape = pipe.linearizer.sample_shape
    images = load_image_files(args.images, shape, args.resize)
    out = pipe(images, num_inference_steps=args.steps, solver=args.solver, output_type="pt")
    grid_images = torch.cat([images_to_tensor(images, shape), out.reconstruction.float().cpu()])
    save_image(make_grid(grid_images, _grid_row(args.nrow, len(images)) or len(images)), args.output)
    for i, (path, p, r) in enumerate(zip(args.images, out.psnr.tolist(), out.relative_error.tolist())):
        verdict = "typical" if bool(out.typical[i]) else "NOT typical: the model did not learn images like this one"
        print(f"{path}: reconstruction PSNR {p:.2f} dB, relative error {r:.3e}; {float(out.bits_per_dim[i]):.3f} "
              f"bits/dim, noise χ² z = {float(out.noise_chi2_z[i]):+.3g} ({verdict})")
    if args.save_noise:
        _save_tensor(out.noise.cpu(), args.save_noise)
    _say(f"wrote inputs and reconstructions to {args.output}")
    return 0


def cmd_interpolate(args) -> int:
    from .atomic import write_bytes_atomic
    from .images import load_image_files, save_image, to_pil_list

    pipe = _inversion_pipeline(args, [args.image_a, args.image_b])
    check_images_fit(args.frames, pipe.linearizer.sample_shape, "--frames", "Ask for fewer frames.")
    a, b = load_image_files([args.image_a, args.image_b], pipe.linearizer.sample_shape, args.resize)
    out = pipe.interpolate(a, b, num_frames=args.frames, mode=args.mode, num_inference_steps=args.steps,
                           solver=args.solver, output_type="pt")
    save_image(make_grid(out.frames, _grid_row(args.nrow, args.frames) or args.frames), args.output)
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


#: the teacher-pairs file stores its seed base as an int64
MAX_SEED_BASE = 2**63 - 1


def check_distill_data(args) -> None:
    """What ``distill-data`` can check before the teacher is loaded (the counts are checked by the writer)."""
    check_device(args.device)
    check_output_file(args.output, "--output", "teacher pairs", "pairs.npz")  # its extension: the writer's rule
    parts = args.output + ".parts"
    if os.path.exists(parts) and not os.path.isdir(parts):
        raise ValueError(f"--output {args.output!r}: {parts!r}, where the finished chunks are kept, is a file; "
                         "move it away or choose another --output.")
    if args.seed_base < 0:
        raise ValueError(f"--seed-base must be a whole number ≥ 0, got {args.seed_base}.")
    if isinstance(args.num_pairs, int) and isinstance(args.chunk_size, int) and args.num_pairs > 0 and args.chunk_size > 0:
        chunks = -(-args.num_pairs // args.chunk_size)
        check_seeds(args.seed_base, chunks, f"{chunks} noise chunk(s) (--num-pairs / --chunk-size)", "--seed-base",
                    MAX_SEED_BASE)
    for flag, folder in (("--teacher", args.teacher), ("--student", args.student)):
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(f"{flag} {folder!r}: no such folder (a saved model or pipeline folder is expected).")


def cmd_distill_data(args) -> int:
    from .training.teacher import main as teacher_main

    check_distill_data(args)
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
            "distill-data": cmd_distill_data, "project": cmd_project,
            "stylize": cmd_stylize, "unstylize": cmd_unstylize, "style-data": cmd_style_data, "analyze": cmd_analyze,
            "demo": cmd_demo}

#: the Python arguments that a command's flags set, to name the flag in an error that names the argument
PYTHON_ARGUMENTS = {
    "generate": {"num_inference_steps": "--steps", "guidance_scale": "--guidance-scale", "temperature": "--temperature",
                 "class_labels": "--class", "prompt": "--prompt", "batch_size": "--batch-size", "solver": "--solver"},
    "invert": {"num_inference_steps": "--steps", "solver": "--solver"},
    "interpolate": {"num_inference_steps": "--steps", "solver": "--solver", "num_frames": "--frames", "mode": "--mode"},
    "distill-data": {"num_pairs": "--num-pairs", "chunk_size": "--chunk-size", "batch_size": "--batch-size",
                     "num_inference_steps": "--num-inference-steps"},
}
#: exceptions that mean the input was wrong (exit status 2, as argparse's own errors); other OSErrors and
#: running out of memory are failures of the work (exit status 1)
BAD_INPUT = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def error_message(command: str, err: BaseException) -> str:
    """``diffusers-linearizer COMMAND: error: ...`` on one line; an error naming a Python argument that a flag
    of the command sets also names the flag."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    flags = [f"{name} is {flag}" for name, flag in PYTHON_ARGUMENTS.get(command, {}).items()
             if re.search(rf"(?<![\w-]){name}(?![\w-])", text) and flag not in text]
    if flags:
        text += f" (on the command line {', '.join(flags)})"
    return f"diffusers-linearizer {command}: error: {text}"


def run(args) -> int:
    """Run a parsed command: the one place where its errors become a message and an exit status."""
    import torch

    out_of_memory = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))
    try:
        return COMMANDS[args.command](args)
    except out_of_memory as err:
        print(error_message(args.command, f"out of memory: {err}"), file=sys.stderr)
        return 1
    except BAD_INPUT as err:
        print(error_message(args.command, err), file=sys.stderr)
        return 2
    except OSError as err:
        print(error_message(args.command, err), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"diffusers-linearizer {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

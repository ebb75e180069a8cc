"""The training half of ``benchmarks/gpu.py``: optimizer steps/s of the trainer's variants and of a
parameter-matched ``UNet2DModel`` step, a profile of each step, and the helpers both halves share
(``Deadline``, ``precision_flags``)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from typing import Dict, List, Optional

import torch
from baseline import baseline_unet, flow_matching_loss
from common import count_params, reset_accelerate_state, sync, timed


# ---------------------------------------------------------------------- training
class RandomImages(torch.utils.data.Dataset):
    """``n`` random ``(C, H, W)`` images in ``[0, 1]`` held in memory (what the trainer loads from disk)."""

    def __init__(self, n: int, shape, seed: int = 0):
        self.images = torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))
        self.channels = shape[0]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def make_trainer(config: Dict, options: List[str], args, device: torch.device, workdir: str):
    """A :class:`Trainer` for ``config`` with the given extra command-line options, on random images."""
    from diffusers_linearizer.training import train as ttrain
    from diffusers_linearizer.training.trainer import Trainer

    reset_accelerate_state()  # each trainer sets its own mixed precision
    argv = ["--output_dir", tempfile.mkdtemp(dir=workdir), "--resolution", str(args.resolution), "--channels", "1",
            "--train_batch_size", str(args.train_batch), "--max_train_steps", "1000000", "--checkpointing_steps", "0",
            "--sample_steps", "0", "--no_final_samples", "--no_progress", "--log_every", "1000000000",
            "--compile_backend", args.compile_backend, *options]
    argv += [x for k, v in config.items() for x in (f"--{k}", str(v))]
    if device.type == "cpu":
        argv.append("--cpu")
    parsed = ttrain.parse_args(argv)
    ttrain.check_args(parsed)
    data = RandomImages(args.train_images, (1, args.resolution, args.resolution))

    class BenchTrainer(Trainer):
        def load_dataset(self):
            return data

    return BenchTrainer(parsed)


def trainer_steps_per_second(trainer, device, steps: int, warmup: int) -> float:
    """Optimizer steps/s of ``trainer.step`` over ``steps`` steps after ``warmup`` (which compile, if asked)."""
    stream = trainer.micro_batches()
    for _ in range(warmup):
        trainer.step(stream)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(stream)
    sync(device)
    seconds = time.perf_counter() - start
    return steps / seconds


def unet_steps_per_second(n_params: int, args, device, steps: int, warmup: int, bf16: bool) -> tuple:
    """Steps/s of a parameter-matched UNet2DModel flow-matching step on a batch held on the device."""
    torch.manual_seed(0)
    unet, width = baseline_unet(n_params, args.resolution, 1)
    unet = unet.to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    images = torch.rand((args.train_batch, 1, args.resolution, args.resolution), device=device) * 2 - 1

    def step():
        noise = torch.randn_like(images)
        sigma = torch.rand(images.shape[0], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = flow_matching_loss(unet, images, noise, sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()

    seconds = timed(step, device, repeats=steps, warmup=warmup)
    return 1.0 / seconds, width, count_params(unet)


TRAIN_VARIANTS = {
    "plain": ["--device_inputs", "off", "--fused_optimizer", "off"],
    "fast": ["--device_inputs", "on"],
    "fast + compile": ["--device_inputs", "on", "--compile"],
    "fast + compile + bf16": ["--device_inputs", "on", "--compile", "--mixed_precision", "bf16"],
    "fast + compile + tf32": ["--device_inputs", "on", "--compile", "--allow_tf32"],
    "fast + compile, CUDA graphs": ["--device_inputs", "on", "--compile", "--compile_mode", "reduce-overhead"],
    "fast + cudnn.benchmark + channels_last": ["--device_inputs", "on", "--cudnn_benchmark", "--channels_last"],
    "fast + compile, CUDA graphs + cudnn.benchmark + channels_last": [
        "--device_inputs", "on", "--compile", "--compile_mode", "reduce-overhead", "--cudnn_benchmark", "--channels_last"],
}


@contextlib.contextmanager
def precision_flags(strict: bool = False):
    """Restores torch's TF32 and cuDNN-autotuner switches on exit (``--allow_tf32`` and ``--cudnn_benchmark`` set them
    for the process); with ``strict``, float32 matrix products and convolutions in full float32 (no TF32) inside."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    if strict:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def profile_steps(trainer, device, steps: int = 3, top: int = 4) -> Dict:
    """Where one trainer step's time goes (``torch.profiler`` over ``steps`` steps): device kernels launched per
    step, their summed time per step and the ``top`` kernels by time (on a CPU: operators and CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    stream = trainer.micro_batches()
    trainer.step(stream)
    sync(device)
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.step(stream)
        sync(device)
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    events = [e for e in prof.key_averages() if e.device_type == kind]

    def self_us(e):
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) if cuda else e.self_cpu_time_total

    events.sort(key=self_us, reverse=True)
    return {"kernels per step": sum(e.count for e in events) / steps,
            "kernel ms per step": sum(self_us(e) for e in events) / steps / 1e3,
            "top": [(e.key[:60], self_us(e) / steps / 1e3) for e in events[:top]]}


class Deadline:
    """No new measurement starts once ``seconds`` have passed (``None``: no limit); what is not started is listed."""

    def __init__(self, seconds: Optional[float]):
        self.start, self.seconds, self.skipped = time.perf_counter(), seconds, []

    def allows(self, what: str) -> bool:
        if self.seconds is None or time.perf_counter() - self.start < self.seconds:
            return True
        self.skipped.append(what)
        return False

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def measure_training(name: str, config: Dict, variants: List[str], args, device, deadline: Deadline,
                     row: Dict) -> None:
    """Fill ``row`` (in place, across calls) with the steps/s of the trainer ``variants`` (keys of
    :data:`TRAIN_VARIANTS`) and of the parameter-matched UNet (``"unet"``, ``"unet bf16"``) for one
    configuration."""
    row.update(config=name, overrides=config, batch=args.train_batch)
    with tempfile.TemporaryDirectory() as workdir:
        for variant in variants:
            if not deadline.allows(f"training, {name}, {variant}"):
                continue
            if variant in TRAIN_VARIANTS:
                torch._dynamo.reset()
                with precision_flags():
                    trainer = make_trainer(config, TRAIN_VARIANTS[variant], args, device, workdir)
                    row["params"] = count_params(trainer.unwrapped())
                    row[variant] = trainer_steps_per_second(trainer, device, args.train_steps, args.train_warmup)
                    if args.profile and name == "shipped":
                        row.setdefault("profiles", {})[variant] = profile_steps(trainer, device)
                del trainer
            else:  # the UNet, matched to the parameter count of a trainer variant measured before it
                row[variant], row["unet_width"], row["unet_params"] = unet_steps_per_second(
                    row["params"], args, device, args.train_steps, args.train_warmup, bf16=variant == "unet bf16")
            print(f"[train] {name:>8} {variant:<22} {row[variant]:8.2f} steps/s", flush=True)

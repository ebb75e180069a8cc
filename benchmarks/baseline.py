"""The baseline the Linearizer is compared with: a diffusers ``UNet2DModel`` trained by flow matching.

What a diffusers user would train instead: a ``UNet2DModel`` (the layout of :func:`unet_config`,
width chosen for the parameter count closest to a given Linearizer) with diffusers'
``FlowMatchEulerDiscreteScheduler`` objective::

    x_σ = σ·ε + (1 − σ)·x,   σ ~ U(0, 1),   L = ‖u(x_σ, 1000·σ) − (ε − x)‖²

on the same data (Fashion-MNIST padded to 32×32, here scaled to [−1, 1] as diffusers' examples do),
the same batch size, learning rate, optimizer (AdamW, no weight decay), constant learning rate,
gradient clipping, EMA (decay and warm-up) and data order (``EpochShuffleSampler`` with the same seed)
as ``diffusers-linearizer train``. Sampling is ``FlowMatchEulerDiscreteScheduler`` stepping with the
scheduler's default grid (shift 1), any number of steps.

Training writes EMA snapshots ``snapshots/step-N/`` (``UNet2DModel.save_pretrained``) every
``--save_every`` steps with the wall-clock seconds spent so far (``snapshots.json``), so a comparison
can pick the snapshot at *equal steps* or at *equal training time* with a Linearizer run::

    python benchmarks/baseline.py --linearizer runs/default --output_dir runs/baseline \\
        --max_train_seconds 4500 --save_every 25

``--class_conditional`` trains a class-conditional teacher instead: the same layout with ``num_class_embeds = 10``
(an embedding of Fashion-MNIST's integer class id added to the time embedding), every image under its own label,
no label dropout (unguided). Its snapshots are teachers for class-conditional distillation
(``diffusers-linearizer distill-data --teacher runs/baseline/snapshots/step-N``, then
``train --conditioning class --teacher_pairs``)::

    python benchmarks/baseline.py --class_conditional --output_dir runs/class_teacher --max_train_seconds 4500
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Dict, Optional

import torch
from common import REPO, count_params

from diffusers_linearizer import replace_dir, write_json_atomic
from diffusers_linearizer.training import EMA
from diffusers_linearizer.training.conditions import FASHION_MNIST_LABELS
from diffusers_linearizer.training.data import FASHION_MNIST_DIR, EpochShuffleSampler, FashionMNIST, derive_seed

SNAPSHOTS = "snapshots"
SNAPSHOT_INDEX = "snapshots.json"


# ---------------------------------------------------------------------- the model and its loss
def unet_config(width: int, sample_size: int = 32, channels: int = 1, num_class_embeds: Optional[int] = None) -> Dict:
    """The baseline ``UNet2DModel`` layout at width ``w``: levels (w, 2w, 2w), 2 layers each, attention at level 2
    (``num_class_embeds``: a class-conditional one)."""
    extra = {} if num_class_embeds is None else {"num_class_embeds": num_class_embeds}
    return dict(**extra,
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        block_out_channels=(width, 2 * width, 2 * width), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=math.gcd(width, 32),
    )


def baseline_unet(target_params: int, sample_size: int = 32, channels: int = 1, widths=range(8, 129, 4),
                  num_class_embeds: Optional[int] = None):
    """``(UNet2DModel, width)`` of the layout above with the parameter count closest to ``target_params``."""
    from diffusers import UNet2DModel

    with torch.device("meta"):
        counts = {w: count_params(UNet2DModel(**unet_config(w, sample_size, channels, num_class_embeds)))
                  for w in widths}
    width = min(counts, key=lambda w: abs(counts[w] - target_params))
    return UNet2DModel(**unet_config(width, sample_size, channels, num_class_embeds)), width


def flow_matching_loss(unet, images: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                       class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """diffusers' flow-matching objective: MSE(u(σ·ε + (1 − σ)·x, 1000·σ[, c]), ε − x)."""
    s = sigma.view(-1, 1, 1, 1).to(images.dtype)
    noisy = s * noise + (1 - s) * images
    pred = unet(noisy, sigma * 1000.0, class_labels=class_labels).sample
    return (pred.float() - (noise - images).float()).square().mean()


# ---------------------------------------------------------------------- training and sampling
def linearizer_param_count(path: str) -> int:
    """Parameter count of the Linearizer saved at ``path`` (a pipeline or model folder, or a training run)."""
    from diffusers_linearizer import LinearizerModel

    for sub in ("linearizer", "."):
        if os.path.isfile(os.path.join(path, sub, "config.json")):
            with torch.device("meta"):
                model = LinearizerModel.from_config(LinearizerModel.load_config(os.path.join(path, sub)))
            return count_params(model)
    raise FileNotFoundError(f"No LinearizerModel config.json under {path} (looked in linearizer/ and the folder itself).")


@torch.no_grad()
def sample(unet, num_images: int, num_inference_steps: int, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """``num_images`` samples in ``[0, 1]`` with ``FlowMatchEulerDiscreteScheduler`` and ``num_inference_steps`` steps.

    The noise of image ``i`` depends only on ``(seed, i)`` (``torch.Generator`` per batch of the
    same size), so the same seed gives the same images at every step count.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be ≥ 1, got {num_inference_steps}.")
    device = next(unet.parameters()).device
    scheduler = FlowMatchEulerDiscreteScheduler()
    c, s = unet.config.in_channels, unet.config.sample_size
    out = []
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        gen = torch.Generator().manual_seed(derive_seed(seed, "baseline-sample", start))
        x = torch.randn((n, c, s, s), generator=gen).to(device)
        scheduler.set_timesteps(num_inference_steps, device=device)
        for t in scheduler.timesteps:
            v = unet(x, t.expand(n)).sample
            x = scheduler.step(v, t, x).prev_sample
        out.append(((x.float().cpu() + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def train(args) -> Dict:
    """Train the baseline; returns the summary written to ``OUTPUT/snapshots.json``."""
    from diffusers.optimization import get_scheduler
    from torch.utils.data import DataLoader

    torch.manual_seed(args.seed)
    target = args.target_params or linearizer_param_count(args.linearizer)
    classes = len(FASHION_MNIST_LABELS) if getattr(args, "class_conditional", False) else None
    unet, width = baseline_unet(target, num_class_embeds=classes)
    unet.train()
    dataset = FashionMNIST(args.data_dir, "train", 32, return_labels=classes is not None)
    sampler = EpochShuffleSampler(len(dataset), seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.train_batch_size, sampler=sampler, drop_last=True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, weight_decay=0.0)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    ema = EMA(unet, args.ema_decay, warmup=True)
    os.makedirs(os.path.join(args.output_dir, SNAPSHOTS), exist_ok=True)
    summary = {
        "model": "UNet2DModel", "width": width, "parameters": count_params(unet), "target_parameters": target,
        "train_batch_size": args.train_batch_size, "learning_rate": args.learning_rate, "ema_decay": args.ema_decay,
        "seed": args.seed, "threads": torch.get_num_threads(), "num_classes": classes, "snapshots": {},
    }
    print(f"Baseline UNet2DModel width {width}: {summary['parameters']:,} parameters (Linearizer: {target:,})", flush=True)

    step, epoch, t0 = 0, 0, time.perf_counter()
    done = False
    while not done:
        sampler.set_epoch(epoch)
        for images in loader:
            images, labels = images if classes is not None else (images, None)
            gen = torch.Generator().manual_seed(derive_seed(args.seed, "baseline-step", step))
            x = images * 2 - 1
            noise = torch.randn(x.shape, generator=gen)
            sigma = torch.rand((x.shape[0],), generator=gen)
            loss = flow_matching_loss(unet, x, noise, sigma, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            ema.update(unet)
            step += 1
            elapsed = time.perf_counter() - t0
            done = step >= args.max_train_steps or (args.max_train_seconds is not None and elapsed >= args.max_train_seconds)
            if step % args.log_every == 0:
                print(f"step {step}: loss={loss.item():.5f} elapsed={elapsed:.0f}s", flush=True)
            if step % args.save_every == 0 or done:
                name = f"step-{step}"
                snapshot = ema.averaged_copy(unet).eval()
                replace_dir(lambda d: snapshot.save_pretrained(d, safe_serialization=True),
                            os.path.join(args.output_dir, SNAPSHOTS, name))
                summary["snapshots"][name] = {"step": step, "train_seconds": round(elapsed, 3), "loss": loss.item()}
                write_json_atomic(os.path.join(args.output_dir, SNAPSHOT_INDEX), summary)
            if done:
                break
        epoch += 1
    return summary


def load_snapshot(output_dir: str, step: Optional[int] = None, train_seconds: Optional[float] = None):
    """The EMA ``UNet2DModel`` snapshot at ``step``, or the last one taken within ``train_seconds`` of training
    (the newest when neither is given); returns ``(unet, record)``."""
    from diffusers import UNet2DModel

    with open(os.path.join(output_dir, SNAPSHOT_INDEX)) as f:
        records = sorted(json.load(f)["snapshots"].items(), key=lambda kv: kv[1]["step"])
    if not records:
        raise FileNotFoundError(f"No baseline snapshots in {output_dir}.")
    if step is not None:
        found = [kv for kv in records if kv[1]["step"] == step]
        if not found:
            raise ValueError(f"No baseline snapshot at step {step}; have {[r['step'] for _, r in records]}.")
        name, record = found[0]
    elif train_seconds is not None:
        within = [kv for kv in records if kv[1]["train_seconds"] <= train_seconds]
        name, record = within[-1] if within else records[0]
    else:
        name, record = records[-1]
    return UNet2DModel.from_pretrained(os.path.join(output_dir, SNAPSHOTS, name)).eval(), record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--linearizer", default=os.path.join(REPO, "diffusers_linearizer", "default_model"),
                   help="Linearizer whose parameter count the baseline matches (pipeline/model folder).")
    p.add_argument("--target_params", type=int, default=None, help="Match this parameter count instead.")
    p.add_argument("--output_dir", default="runs/baseline")
    p.add_argument("--data_dir", default=FASHION_MNIST_DIR)
    p.add_argument("--train_batch_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--ema_decay", type=float, default=0.999)
    p.add_argument("--max_train_steps", type=int, default=10**9)
    p.add_argument("--max_train_seconds", type=float, default=None)
    p.add_argument("--save_every", type=int, default=25)
    p.add_argument("--log_every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    p.add_argument("--class_conditional", action="store_true",
                   help="Train a class-conditional teacher (num_class_embeds = 10), each image under its label.")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cost of one training step: the Linearizer's objectives vs a diffusers UNet2DModel flow-matching step.

One training step = zero_grad, forward, backward and an Adam update, on one batch of 32×32 grayscale
images (Fashion-MNIST's shape). Measured, in one run and interleaved round by round (so that a busy
machine slows every contender alike):

* ours, ``objective="fast"`` (the trainer's default: one batched forward and one batched inverse of g);
* ours, ``objective="reference"`` (the paper's: five passes of g);
* the baseline: a diffusers ``UNet2DModel`` (the unconditional-training layout: three levels of widths
  w, 2w, 2w, two ResNet layers each, self-attention at 16×16) whose width w is chosen so that its
  parameter count is the closest to the Linearizer's, trained with the flow-matching MSE of diffusers'
  ``FlowMatchEulerDiscreteScheduler`` (x_σ = σ·ε + (1 − σ)·x, target ε − x, timestep 1000·σ).

For every model configuration (the constructor defaults of ``LinearizerModel`` and the candidates
given with ``--configs``) the table lists the median step time of each and the ratios ours/baseline
(goal: ≤ 4). Writes ``docs/step_cost.md`` with the hardware named.

    python benchmarks/step_cost.py                       # CPU (and CUDA when available)
    python benchmarks/step_cost.py --threads 1 --cpu-batch-size 16 --repeats 5

The baseline's model and loss are ``benchmarks/baseline.py``'s (``baseline_unet``, ``flow_matching_loss``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
from baseline import baseline_unet, flow_matching_loss
from common import REPO, count_params, hardware, load_average, sync

from diffusers_linearizer import LinearizerModel, write_text_atomic
from diffusers_linearizer.training.objective import LinearizerObjective, draw_step_noise, initialize_actnorm

GOAL = 4.0
# Candidate configurations (LinearizerModel keyword overrides) timed beside the defaults.
CANDIDATES = {
    "default": {},
    "c32": {"conditioner_channels": 32},
    "c32-l1": {"conditioner_channels": 32, "conditioner_layers": 1},
    # the packaged default model (diffusers_linearizer/default_model)
    "shipped": {"num_blocks": 2, "conditioner_channels": 32, "conditioner_layers": 1},
}


# ---------------------------------------------------------------------- timing
def make_steps(config: Dict, batch_size: int, device: torch.device, seed: int = 0) -> Dict[str, Callable[[], None]]:
    """Closures running one full training step of each contender for ``config``; plus their metadata."""
    torch.manual_seed(seed)
    model = LinearizerModel(**config).to(device)
    c, h, w = model.sample_shape
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand((batch_size, c, h, w), generator=gen)
    noise, t, eps_y, eps_x = draw_step_noise((c, h, w), batch_size, gen)
    images, noise, t, eps_y, eps_x = (v.to(device) for v in (images, noise, t, eps_y, eps_x))
    initialize_actnorm(model, images, noise)
    n_ours = count_params(model)
    unet, width = baseline_unet(n_ours, h, c)
    unet = unet.to(device).train()
    unet_images = images * 2 - 1  # diffusers' usual [-1, 1] range (the cost does not depend on it)

    def ours(kind):
        objective = LinearizerObjective(model, kind)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            objective(images, noise, t, eps_y, eps_x)["loss"].backward()
            opt.step()

        return step

    unet_opt = torch.optim.Adam(unet.parameters(), lr=1e-4)

    def baseline():
        unet_opt.zero_grad(set_to_none=True)
        flow_matching_loss(unet, unet_images, noise, 1 - t).backward()
        unet_opt.step()

    meta = {"params": n_ours, "unet_width": width, "unet_params": count_params(unet)}
    return {"fast": ours("fast"), "reference": ours("reference"), "baseline": baseline}, meta


def time_interleaved(steps: Dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int = 1):
    """Median seconds per call of every closure, measured round-robin ``repeats`` times after ``warmup`` calls."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, times


# ---------------------------------------------------------------------- report
def run(devices: List[str], configs: Dict[str, Dict], batch_sizes: Dict[str, int], repeats: int):
    results = []
    for dev_name in devices:
        device = torch.device(dev_name)
        for name, config in configs.items():
            steps, meta = make_steps(config, batch_sizes[device.type], device)
            med, raw = time_interleaved(steps, device, repeats)
            row = dict(device=dev_name, hardware=hardware(device), load_average=load_average(), config=name, overrides=config,
                       batch_size=batch_sizes[device.type], **meta, **{f"{k}_s": v for k, v in med.items()},
                       raw={k: [round(x, 5) for x in v] for k, v in raw.items()})
            row["fast_ratio"] = med["fast"] / med["baseline"]
            row["reference_ratio"] = med["reference"] / med["baseline"]
            results.append(row)
            print(f"[{dev_name}] {name:>8}: fast {med['fast'] * 1e3:9.1f} ms ({row['fast_ratio']:.2f}×)  "
                  f"reference {med['reference'] * 1e3:9.1f} ms ({row['reference_ratio']:.2f}×)  "
                  f"baseline {med['baseline'] * 1e3:9.1f} ms", flush=True)
            del steps
    return results


def table(results) -> str:
    head = ("| device | config | batch | Linearizer params | baseline UNet (width, params) | baseline step | "
            "ours `fast` step (ratio) | ours `reference` step (ratio) |\n|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        ov = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "constructor defaults"
        rows.append(
            f"| {r['device']} | {r['config']} ({ov}) | {r['batch_size']} | {r['params']:,} | w={r['unet_width']}, "
            f"{r['unet_params']:,} | {r['baseline_s'] * 1e3:.1f} ms | {r['fast_s'] * 1e3:.1f} ms "
            f"(**{r['fast_ratio']:.2f}×**) | {r['reference_s'] * 1e3:.1f} ms (**{r['reference_ratio']:.2f}×**) |"
        )
    return "\n".join([head] + rows)


def write_markdown(path: str, results, argv: List[str]) -> None:
    hw = sorted({(r["device"], r["hardware"]) for r in results})
    default = [r for r in results if r["config"] == "default"]
    verdict = []
    for r in default:
        ok = r["fast_ratio"] <= GOAL
        verdict.append(
            f"- {r['device']}: the default configuration's step costs {r['fast_ratio']:.2f}× the baseline's with the "
            f"`fast` objective and {r['reference_ratio']:.2f}× with the `reference` objective — goal ≤ {GOAL:g}× "
            f"{'met' if ok else '**not met**'}."
        )
    if not any(r["device"].startswith("cuda") for r in results):
        verdict.append("- This run used the CPU only (rerun this script on a GPU for GPU rows); `docs/gpu.md` "
                       "(`benchmarks/gpu.py`) compares the whole trainer step with the UNet's on one GPU.")
    loads = [r["load_average"] for r in results if r.get("load_average") is not None]
    load_note = (f"- 1-minute load average during the run: {min(loads)}–{max(loads)} (a shared machine: other jobs were "
                 "running)\n") if loads else ""
    text = f"""# Training-step cost: Linearizer vs a diffusers UNet2DModel (flow matching)

Written by `benchmarks/step_cost.py` on {datetime.date.today().isoformat()} (`python benchmarks/step_cost.py {' '.join(argv)}`).

One step = `zero_grad` + forward + backward + Adam update on one batch of 1×32×32 images. Every row is
measured in one process, the three contenders interleaved round by round, median of the rounds.

* **ours `fast`** — the trainer's default objective: one batched forward of g on `cat([noise, image])`
  and one batched inverse (3 batch-sized passes of g);
* **ours `reference`** — the paper's objective: five passes of g (LPIPS replaced by pixel MSE);
* **baseline** — diffusers `UNet2DModel` (levels w, 2w, 2w; 2 ResNet layers each; attention at 16×16),
  width chosen for the parameter count closest to the Linearizer's, flow-matching MSE as in
  `FlowMatchEulerDiscreteScheduler` training.

Hardware:
{chr(10).join(f'- `{d}`: {h}' for d, h in hw)}
{load_note}
{table(results)}

{chr(10).join(verdict)}

The paper's code (EDM SongUNet conditioners, five passes of g) costs about 20× such a baseline step on an
H100 at batch 256 (`shared/REFERENCE.md`). CPU timings on a shared machine are noisy; the interleaving
keeps the *ratios* meaningful. Raw per-round times are in `docs/step_cost.json`.
"""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, text)
    write_text_atomic(os.path.splitext(path)[0] + ".json", json.dumps(results, indent=2) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default=None, help="Comma-separated torch devices. Default: cpu, plus cuda if available.")
    p.add_argument("--configs", default=",".join(CANDIDATES),
                   help=f"Comma-separated names from {list(CANDIDATES)} (default: all).")
    p.add_argument("--cpu-batch-size", type=int, default=16, help="Batch on CPU. Default: 16.")
    p.add_argument("--cuda-batch-size", type=int, default=256, help="Batch on GPU. Default: 256 (the paper's).")
    p.add_argument("--repeats", type=int, default=3, help="Timed rounds. Default: 3.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads. Default: torch's.")
    p.add_argument("--output", default=os.path.join(REPO, "docs", "step_cost.md"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    unknown = [c for c in args.configs.split(",") if c not in CANDIDATES]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {list(CANDIDATES)}")
    configs = {c: CANDIDATES[c] for c in args.configs.split(",")}
    results = run(devices, configs, {"cpu": args.cpu_batch_size, "cuda": args.cuda_batch_size}, args.repeats)
    print()
    print(table(results))
    write_markdown(args.output, results, argv)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed on one GPU: training steps/s, one-step sampling and the collapse, measured in one process and one run.

    python benchmarks/gpu.py                 # on a CUDA machine: the full measurement (a few minutes)
    python benchmarks/gpu.py --quick         # on a CPU: every code path at small sizes (numbers are not goals)

Three parts, written to ``docs/gpu.md`` (and ``docs/gpu.json``) with the hardware named:

* **training** — optimizer steps/s of ``diffusers-linearizer train``'s :class:`Trainer` (the real step: EMA,
  gradient clipping, LR schedule) on an in-memory dataset, for the shipped configuration and the
  constructor defaults (compiled variants for the shipped configuration only: compiling takes most of
  the time): *plain* (inputs from the host ``DataLoader``, the CPU step generator, the
  unfused AdamW: the trainer before the fast paths), *fast* (``--device_inputs on``, fused AdamW on
  CUDA), *fast + compile* (``--compile``), with ``--mixed_precision bf16``, with ``--allow_tf32``, and
  on CUDA with ``--compile_mode reduce-overhead`` (CUDA graphs); beside them a parameter-matched
  ``UNet2DModel`` flow-matching step on the same batch (device-resident data, fused AdamW on CUDA;
  float32 and bf16 autocast). Each shipped variant is also profiled (``torch.profiler``: kernels per
  step and their time against the wall time, i.e. whether the step waits on the host or the device);
* **sampling** — images/s of one-step sampling at the sampling batch and the latency of one image:
  the plain pipeline, ``enable_fast_sampling()`` (compiled g, CUDA graphs on CUDA) and its half-precision
  g (float16 on CUDA, bfloat16 on the CPU; shipped model only), each with its largest difference from the
  plain images, also in full float32 (TF32 off: torch runs cuDNN convolutions in TF32 by default); the
  UNet's 50 Euler steps (``benchmarks/baseline.sample``) beside them. The shipped row samples the
  packaged trained model, the default row a randomly initialised one;
* **collapse** — ``benchmarks/collapse.py``'s targets: the dense product vs ours at 3·64² (Euler, T = 100)
  and ours at 3·256² (Euler fp32, RK4 fp64).

The goals are ratios measured side by side on one GPU; on a CPU the page says they are not
measured. The full run takes about 5 minutes on one H200, most of it compiling (its time is printed and
recorded on the page). The shipped configuration's rows run first, then the collapse, then the default
configuration's; ``--budget SECONDS`` starts nothing after that time (for a GPU borrowed for a fixed time) and the page
lists what was not reached. The page is rewritten after every step, so a run stopped midway keeps its rows,
and ``python benchmarks/gpu_page.py`` renders it again from ``docs/gpu.json``. ``--parts`` runs a subset
and ``--size`` changes a size. The training half (trainer variants, the UNet step, profiles) is in
``gpu_training.py``, the page in ``gpu_page.py``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
import time
import traceback
from typing import Dict, List, Optional

import collapse as collapse_bench
import torch
from baseline import baseline_unet
from baseline import sample as unet_sample
from common import DOCS, count_params, hardware, load_average, timed
from gpu_training import Deadline, measure_training, precision_flags
from step_cost import CANDIDATES

SIZES = dict(resolution=32, train_batch=256, train_images=4096, train_steps=30, train_warmup=5, sample_batch=250,
             sample_repeats=20, unet_steps=50, collapse_small=64, collapse_large=256)
QUICK_SIZES = dict(resolution=32, train_batch=8, train_images=64, train_steps=2, train_warmup=2, sample_batch=8,
                   sample_repeats=3, unet_steps=10, collapse_small=16, collapse_large=32)
GOALS = {"step_vs_unet": 1.0, "step_speedup": 5.0, "sampling_speedup": 3.0, "sampling_vs_unet": 200.0, "latency_ms": 3.0,
         "fp32_diff": 1e-6, "half_diff": 1e-3}


# ---------------------------------------------------------------------- sampling
def sampling_pipeline(name: str, config: Dict, device):
    from diffusers_linearizer import LinearizerModel, LinearizerPipeline, LinearizerScheduler

    if name == "shipped":
        pipe = LinearizerPipeline.from_pretrained()  # the packaged trained model (the shipped configuration)
    else:
        torch.manual_seed(0)
        model = LinearizerModel(**config)
        with torch.no_grad():  # small random weights in every layer (zero-initialised ones would not act)
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        pipe = LinearizerPipeline(linearizer=model, scheduler=LinearizerScheduler())
    pipe = pipe.to(device)
    pipe.linearizer.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure_sampling(name: str, config: Dict, variants: List[str], args, device, deadline: Deadline,
                     row: Dict) -> None:
    """Fill ``row`` (in place: a step that fails midway keeps what it measured) with one configuration's
    images/s and batch-1 latency of the pipeline ``variants`` (``"plain"``, ``"fast"``, ``"fast half"``: the
    half dtype of the device), then the UNet's 50 Euler steps."""
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    options = {"plain": None, "fast": dict(), "fast half": dict(dtype=half)}
    pipe = sampling_pipeline(name, config, device)
    shape = (args.sample_batch, *pipe.linearizer.sample_shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    row.update(config=name, batch=args.sample_batch, params=count_params(pipe.linearizer))
    reference = None
    for variant in variants:  # "plain" first: the reference images
        label = f"fast {str(half).split('.')[-1]}" if variant == "fast half" else variant
        if not deadline.allows(f"sampling, {name}, {label}"):
            continue
        torch._dynamo.reset()
        pipe.disable_fast_sampling() if options[variant] is None else pipe.enable_fast_sampling(
            backend=args.compile_backend, **options[variant])

        def call(n=args.sample_batch, latents=None):
            return pipe(batch_size=n, latents=latents, num_inference_steps=100, output_type="pt").images

        images = call(latents=noise)
        reference = images if reference is None else reference
        row[f"{label} max diff"] = float((images - reference).abs().max())
        row[f"{label} mean diff"] = float((images - reference).abs().mean())
        row[label] = args.sample_batch / timed(call, device, args.sample_repeats, warmup=2)
        row[f"{label} latency ms"] = 1e3 * timed(lambda: call(1), device, args.sample_repeats, warmup=2)
        print(f"[sample] {name:>8} {label:<12} {row[label]:10.1f} images/s, batch-1 "
              f"{row[f'{label} latency ms']:.2f} ms, max diff {row[f'{label} max diff']:.1e}", flush=True)
    if name == "shipped" and reference is not None and "fast" in variants and deadline.allows(f"sampling, {name}, strict float32 check"):
        row.update(strict_check(pipe, noise, reference, args))
    if args.inductor_check and name == "shipped" and reference is not None:
        row.update(inductor_check(pipe, noise, reference))
    pipe.disable_fast_sampling()
    if deadline.allows(f"sampling, {name}, UNet 50 steps"):
        torch.manual_seed(0)
        unet, _ = baseline_unet(row["params"], pipe.linearizer.sample_shape[-1], pipe.linearizer.sample_shape[0])
        unet = unet.to(device).eval()
        row["unet steps"] = args.unet_steps
        row["unet 50 steps"] = args.sample_batch / timed(  # the rate of 50 steps, from unet_steps of them
            lambda: unet_sample(unet, args.sample_batch, args.unet_steps, batch_size=args.sample_batch), device,
            max(1, args.sample_repeats // 5)) * args.unet_steps / 50
        print(f"[sample] {name:>8} {'unet 50 steps':<12} {row['unet 50 steps']:10.1f} images/s", flush=True)


def strict_check(pipe, noise, reference, args) -> Dict:
    """The plain and fast paths' images with TF32 off (:class:`precision_flags`): how far TF32 (torch's default for
    cuDNN convolutions) moves the plain images, the fast path's difference in full float32, and the plain float32
    path's own error against the same model in float64 (the accuracy float32 allows this network)."""
    torch._dynamo.reset()
    with precision_flags(strict=True):
        pipe.disable_fast_sampling()
        plain = pipe(latents=noise, num_inference_steps=100, output_type="pt").images
        pipe.enable_fast_sampling(backend=args.compile_backend)
        fast = pipe(latents=noise, num_inference_steps=100, output_type="pt").images
        pipe.disable_fast_sampling()
        model = pipe.linearizer
        wide = type(pipe)(linearizer=copy.deepcopy(model).to(torch.float64), scheduler=pipe.scheduler)
        wide.set_progress_bar_config(disable=True)
        exact = wide(latents=noise.double(), num_inference_steps=100, output_type="pt").images
    out = {"strict plain vs plain max diff": float((plain - reference).abs().max()),
           "strict fast max diff": float((fast - plain).abs().max()),
           "strict fast mean diff": float((fast - plain).abs().mean()),
           "float32 vs float64 max diff": float((plain.double() - exact).abs().max()),
           "float32 vs float64 mean diff": float((plain.double() - exact).abs().mean())}
    print(f"[sample] strict float32: plain moves {out['strict plain vs plain max diff']:.1e} without TF32; fast vs plain "
          f"{out['strict fast max diff']:.1e} (mean {out['strict fast mean diff']:.1e}); plain float32 vs float64 "
          f"{out['float32 vs float64 max diff']:.1e}", flush=True)
    return out


def inductor_check(pipe, noise, reference) -> Dict:
    """The quick mode's one pass through the inductor backend: the fast path compiled for the sampling batch
    (float32), its first call's seconds (mostly compiling) and its difference from the plain images."""
    import warnings

    torch._dynamo.reset()
    pipe.enable_fast_sampling(backend="inductor")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = pipe(latents=noise, num_inference_steps=100, output_type="pt").images
    out = {"inductor first call s": time.perf_counter() - start, "inductor max diff": float((images - reference).abs().max()),
           "inductor fell back": pipe.fast_sampling.compile_failed,
           "inductor warning": next((str(w.message) for w in caught if "could not compile" in str(w.message)), None)}
    print(f"[sample] inductor check: first call {out['inductor first call s']:.1f} s, max diff "
          f"{out['inductor max diff']:.1e}{' (fell back: ' + out['inductor warning'] + ')' if out['inductor fell back'] else ''}",
          flush=True)
    return out


# ---------------------------------------------------------------------- collapse
def measure_collapse(args, device) -> List[Dict]:
    """collapse.py's targets, through its own functions (its rows are collected from ``collapse.ROWS``)."""
    T = 100
    small, large = args.collapse_small, args.collapse_large
    start = len(collapse_bench.ROWS)
    core = collapse_bench.reference_core(3 * small * small, device)
    z0 = torch.randn(4, core.dim, device=device)
    collapse_bench.dense("target", core, T, 3 if args.quick else T - 1, z0, device, "")
    collapse_bench.ours("target", core, "time_lowrank", T, "euler", torch.float32, device, z0)
    core = collapse_bench.reference_core(3 * large * large, device)
    z0 = torch.randn(2, core.dim, device=device)
    collapse_bench.ours("target", core, "time_lowrank", T, "euler", torch.float32, device, z0, check=False)
    collapse_bench.ours("target", core, "time_lowrank", T, "rk4", torch.float64, device, z0, check=False)
    return collapse_bench.ROWS[start:]


# ---------------------------------------------------------------------- the page
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Small sizes: test every code path on a CPU in about a minute.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--parts", default="train,sample,collapse", help="Comma-separated parts to run. Default: all.")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend. Default: inductor; aot_eager with --quick (graph capture without code "
                   "generation: inductor's C++ compiles of every graph take minutes on a small CPU), plus one inductor "
                   "compile of the sampling path.")
    p.add_argument("--no-inductor-check", dest="inductor_check", action="store_false",
                   help="With --quick, skip the one inductor compile of the sampling path.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads. Default: torch's.")
    p.add_argument("--size", action="append", default=[], metavar="KEY=N",
                   help=f"Override one size (repeatable), e.g. --size sample_batch=64; keys: {', '.join(SIZES)}.")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="Start no measurement after this many seconds; those not reached are listed on the page as not "
                   "measured (a run on a GPU borrowed for a fixed time). Default: no limit.")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="Skip the profile of each shipped trainer variant (kernels and their time per step).")
    p.add_argument("--output", default=os.path.join(DOCS, "gpu.md"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if args.quick else "inductor"
    args.inductor_check = args.inductor_check and args.quick and args.compile_backend != "inductor"
    sizes = dict(QUICK_SIZES if args.quick else SIZES)
    for item in args.size:
        key, _, value = item.partition("=")
        if key not in sizes or not value.isdigit():
            p.error(f"--size {item!r}: expected KEY=N with KEY one of {', '.join(sizes)}")
        sizes[key] = int(value)
    vars(args).update(sizes)
    configs = {"shipped": CANDIDATES["shipped"]} if args.quick else {"shipped": CANDIDATES["shipped"], "default": {}}
    parts = args.parts.split(",")
    if not set(parts) <= {"train", "sample", "collapse"}:
        p.error(f"--parts {args.parts!r}: expected a comma-separated subset of train, sample, collapse")
    deadline = Deadline(args.budget)
    results = {"sizes": sizes, "compile_backend": args.compile_backend, "device": str(device), "hardware": hardware(device),
               "torch": torch.__version__, "quick": args.quick, "gpu": gpu, "date": datetime.date.today().isoformat(),
               "load_average": load_average(), "budget": args.budget, "skipped": deadline.skipped}
    rows = {"training": {}, "sampling": {}}
    from gpu_page import write_page

    def train(name, variants):  # rows are filled in place: a step that fails midway keeps what it measured
        measure_training(name, configs[name], variants, args, device, deadline, rows["training"].setdefault(name, {}))

    def sample(name, variants):
        measure_sampling(name, configs[name], variants, args, device, deadline, rows["sampling"].setdefault(name, {}))

    def collapse():
        if deadline.allows("collapse targets"):
            results["collapse"] = measure_collapse(args, device)

    # the goals' rows first (the shipped configuration), compiling last among them; with --budget, what
    # is not reached in time is listed on the page as not measured
    compiled = ["fast + compile", "fast + compile + bf16", "fast + compile + tf32"] + (
        ["fast + compile, CUDA graphs"] if gpu else [])
    plan = [("train", lambda: train("shipped", ["plain", "fast", "unet", "unet bf16"])),
            ("sample", lambda: sample("shipped", ["plain", "fast", "fast half"])),
            ("train", lambda: train("shipped", compiled)),
            ("collapse", collapse)]
    for name in configs:
        if name != "shipped":
            plan += [("train", lambda name=name: train(name, ["plain", "fast", "unet", "unet bf16"])),
                     ("sample", lambda name=name: sample(name, ["plain", "fast"]))]
    argv = list(argv if argv is not None else sys.argv[1:])
    for part, run in plan:
        if part not in parts:
            continue
        try:
            run()
        except Exception as err:  # on a GPU borrowed for one run, one failing step must not lose the others' rows
            traceback.print_exc()
            results.setdefault("errors", []).append(f"{part}: {type(err).__name__}: {str(err).strip()[:300]}")
        for key in rows:  # the rows with at least one measurement (steps/s, images/s, differences are floats)
            measured = [row for row in rows[key].values() if any(isinstance(v, float) for v in row.values())]
            if measured:
                results[key] = measured
        results["seconds"] = round(deadline.elapsed(), 1)
        write_page(args.output, results, argv, GOALS)  # after every step: a run stopped midway keeps its rows
    print(f"\nwrote {args.output} ({results['seconds']:.0f} s)")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())

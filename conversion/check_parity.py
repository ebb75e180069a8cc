#!/usr/bin/env python
"""Numerical parity of converted checkpoints with the Linearizer paper's original code (a developer tool).

Needs a checkout of the reference repository (https://github.com/assafshocher/Linearizer); nothing of it is
copied or kept. For the MNIST and CelebA configurations it

1. builds the reference ``OneStepLinearizer`` with the reference's own factories and config parsers (CPU),
2. perturbs every weight randomly (the reference zero-initialises its conditioners' output layers, which
   would make the comparison vacuous) and rescales the core so that ``‖A_t‖₂ ≈ 0.9`` (a stable sampler),
3. runs ActNorm's data-dependent initialisation on a batch of images in [0, 1],
4. saves it the reference way (``RUN/args.json`` + ``torch.save(model, RUN/models/model.pth)``),
5. converts it with our safe converter, writes the pipeline directory, loads it with
   ``LinearizerPipeline.from_pretrained``, and
6. compares g_x, g_y, their inverses, ``A_t`` at several t, 100-step Euler samples and the collapsed
   one-step samples, in float64 and float32 (the reference runs in float64 under
   ``torch.set_default_dtype(torch.float64)`` and ``.double()``).

Results go to ``docs/conversion.md``::

    python conversion/check_parity.py --reference-repo /tmp/Linearizer
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import types

import torch

TOL = {"float64": 1e-9, "float32": 1e-4}
TOL_CROSS = {"float64": 1e-8, "float32": 1e-3}  # our one-step vs the reference's stepped run
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def import_reference(repo: str):
    """Import the reference's model factories and sampler; stub the data/LPIPS/plot helpers it imports but
    that parity does not use (they need torchvision, piq and matplotlib)."""
    for path in (os.path.join(repo, "one_step"), repo):
        if path not in sys.path:
            sys.path.insert(0, path)
    stubs = {
        "one_step.data.data_utils": {"get_data_loaders": None},
        "one_step.utils.loss_utils": {"calculate_lpips": None},
        "one_step.utils.sampling_utils": {"sample_and_save": None},
    }
    for name, attrs in stubs.items():
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
    from configs.celeba import get_celeba_parser
    from configs.mnist import get_mnist_parser
    from one_step.modules.one_step_linearizer import OneStepLinearizer
    from one_step.train_one_step import FlowMatcher
    from one_step.utils.model_utils import get_g, get_linear_network

    parsers = {"mnist": get_mnist_parser, "celeba": get_celeba_parser}
    return types.SimpleNamespace(parsers=parsers, OneStepLinearizer=OneStepLinearizer, FlowMatcher=FlowMatcher,
                                 get_g=get_g, get_linear_network=get_linear_network)


@torch.no_grad()
def build_reference(ref, name: str, seed: int, sigma: float):
    """A randomly perturbed, ActNorm-initialised reference model and its training arguments."""
    args = ref.parsers[name]().parse_args([])
    torch.manual_seed(seed)
    lin = ref.get_linear_network(args.linear_module, in_ch=args.in_ch, linear_lora_features=args.linear_lora_features,
                                 img_size=args.img_size)
    g = ref.get_g(args.g, args.num_of_layers, args.out_ch, args.img_size)
    model = ref.OneStepLinearizer(gx=g, linear_network=lin).eval()
    for p in model.parameters():
        p.add_(sigma * torch.randn_like(p))
    # Scale the last layers of lin1/lin2 so that the largest ‖A_t‖₂ over a few t is 0.9.
    ts = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.99])
    norms = []
    for t in ts:
        a1 = lin.lin1(t.view(1)).view(lin.out_features, lin.lora_features)
        a2 = lin.lin2(t.view(1)).view(lin.out_features, lin.lora_features)
        r1, r2 = torch.linalg.qr(a1).R, torch.linalg.qr(a2).R
        norms.append(torch.linalg.matrix_norm(r1 @ r2.T, 2))
    scale = (0.9 / max(norms)).sqrt()
    for seq in (lin.lin1, lin.lin2):
        seq[-1].weight.mul_(scale)
        seq[-1].bias.mul_(scale)
    images = torch.rand(8, args.in_ch, args.img_size, args.img_size)
    model.gx(images)  # the reference initialises every ActNorm on its first forward
    return model, args


def max_diff(a: torch.Tensor, b: torch.Tensor):
    return float((a.double() - b.double()).abs().max()), float(a.double().abs().max())


@torch.no_grad()
def compare(ref, model, pipe, dims, dtype, steps: int, collapse_steps: int, rk: bool, seed: int):
    """Rows ``(quantity, max |ours − ref|, max |ref|, tolerance)`` for one dtype."""
    name = str(dtype).replace("torch.", "")
    torch.set_default_dtype(dtype)
    model.to(dtype)
    pipe.linearizer.to(dtype)
    fm = ref.FlowMatcher(model)
    ours = pipe.linearizer
    c, h, w = dims
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    noise = torch.randn(2, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    rows = []

    def add(label, a, b, tol=TOL[name]):
        d, m = max_diff(a, b)
        rows.append((label, d, m, tol))

    zx, zy = model.gx(x), model.gy(noise)
    add("g_x(x)", ours.encode(x, "x"), zx)
    add("g_y(noise)", ours.encode(noise, "y"), zy)
    zx2 = zx + 0.1 * torch.randn(zx.shape, generator=gen, dtype=torch.float64).to(dtype)
    zy2 = zy + 0.1 * torch.randn(zy.shape, generator=gen, dtype=torch.float64).to(dtype)
    add("g_x⁻¹(z)", ours.decode(zx2, "x"), model.gx_inverse(zx2))
    add("g_y⁻¹(z)", ours.decode(zy2, "y"), model.gy_inverse(zy2))
    dim = c * h * w
    for t in (0.0, 0.3, 0.7, 0.99):
        a_ref = model.linear_network.get_lin_t(torch.full((1,), t))[0].T  # row convention → ours
        a_ours = ours.core_operator(t).to_dense(max_dim=dim)
        add(f"A_t, t = {t}", a_ours, a_ref)
        del a_ref, a_ours
    kw = dict(latents=noise, output_type="pt", clamp=False)
    ref_multi = fm.sample(noise, "cpu", steps=steps, method="euler")
    ours_multi = pipe(batch_size=2, num_inference_steps=steps, solver="euler", one_step=False, **kw).images
    add(f"{steps}-step Euler sample", ours_multi, ref_multi)
    ours_one = pipe(batch_size=2, num_inference_steps=steps, solver="euler", one_step=True, **kw).images
    add(f"our one-step Euler (T = {steps}) vs reference {steps}-step Euler", ours_one, ref_multi, TOL_CROSS[name])
    ours_one_c = ours_one if collapse_steps == steps else \
        pipe(batch_size=2, num_inference_steps=collapse_steps, solver="euler", one_step=True, **kw).images
    add(f"collapsed one-step Euler (T = {collapse_steps})", ours_one_c,
        fm.sample_one_step(noise, "cpu", sampling_method="euler", T=collapse_steps))
    if rk:
        add(f"{steps}-step RK4 sample (reference 'rk' stepped)",
            pipe(batch_size=2, num_inference_steps=steps, solver="rk4", one_step=False, **kw).images,
            fm.sample(noise, "cpu", steps=steps, method="rk"))
        add(f"collapsed one-step 'rk' (T = {collapse_steps}, our reference_rk)",
            pipe(batch_size=2, num_inference_steps=collapse_steps, solver="reference_rk", one_step=True, **kw).images,
            fm.sample_one_step(noise, "cpu", sampling_method="rk", T=collapse_steps))
    torch.set_default_dtype(torch.float32)
    return [(name,) + r for r in rows]


def run_config(ref, name: str, workdir: str, opts):
    from diffusers_linearizer import LinearizerPipeline
    from diffusers_linearizer.conversion.convert import convert_reference_checkpoint
    from diffusers_linearizer.conversion.export import save_converted_pipeline

    start = time.time()
    model, args = build_reference(ref, name, opts.seed, opts.sigma)
    run = os.path.join(workdir, name)
    os.makedirs(os.path.join(run, "models"))
    with open(os.path.join(run, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=2)
    torch.save(model, os.path.join(run, "models", "model.pth"))
    conversion = convert_reference_checkpoint(os.path.join(run, "models", "model.pth"))
    save_converted_pipeline(conversion, os.path.join(run, "pipeline"))
    pipe = LinearizerPipeline.from_pretrained(os.path.join(run, "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    dims = (args.in_ch, args.img_size, args.img_size)
    collapse = opts.celeba_collapse_steps if name == "celeba" else opts.steps
    rows = []
    for dtype in (torch.float64, torch.float32):
        rows += compare(ref, model, pipe, dims, dtype, opts.steps, collapse, rk=(name == "mnist"), seed=opts.seed + 1)
        print(f"[{name}] {dtype} done after {time.time() - start:.0f} s", flush=True)
    info = dict(tensors=conversion.source["tensors"], warnings=conversion.warnings, config=dict(pipe.linearizer.config),
                scheduler=dict(pipe.scheduler.config), seconds=time.time() - start, dims=dims, env=_env(opts))
    return rows, info


DOC_HEAD = """# Converting checkpoints of the paper's original code

The Linearizer paper's code (https://github.com/assafshocher/Linearizer, `one_step/`) saves a whole pickled
module (`RUN/models/model.pth`) next to its training arguments (`RUN/args.json`). Convert one into a standard
diffusers directory with

```bash
python conversion/convert_reference_to_diffusers.py --checkpoint_path RUN/models/model.pth --dump_path OUT \\
    [--args_json RUN/args.json] [--dtype fp32|fp16|bf16|fp64] [--solver euler|rk4|reference_rk] [--push_to_hub ORG/NAME]
```

and load it with `LinearizerPipeline.from_pretrained(OUT)`.

**Safety.** The checkpoint is never given to `torch.load(weights_only=False)`. A restricted unpickler
(`diffusers_linearizer/conversion/safe_unpickle.py`) rebuilds only tensors, storages and plain containers
with its own functions; every other object becomes an inert record of its pickled attributes, nothing named
by the file is imported, and any attempt to call a global that is not on the whitelist (`os.system`,
`builtins.eval`, `subprocess.*`, ...) is refused with an error naming it.

**Mapping.** `net_gx` (= `net_gy`, one network run with t = 1 and t = 0) → `g` with `shared_g=True`,
`role_x=1`, `role_y=0`; each `InvUnetBlock` → a flow block (`actnorm` → `actnorm` with its bias/log-scale
reshaped to per-channel vectors and its "initialised" flag kept as our `initialized` buffer; `F`/`G` →
`coupling_f`/`coupling_g` with the hard clamp ±5; `mix.W` → the plain 1×1 convolution); every coupling's
`SongUNet` → our EDM conditioner (`conditioner_type="edm"`, same parameter names, the final `aux_norm`/
`aux_conv` → `out_norm`/`out_conv`); `linear_network` (applied to row vectors, ẑ = z·A1·A2ᵀ) → the
`time_lowrank` core with a ≡ 0 in our column convention, A_t = U Vᵀ with `u_mlp ← lin2`, `v_mlp ← lin1`,
and the reference's time features (`core_time_embedding="reference"`). The scheduler gets the reference's
grid (`timestep_spacing="reference"`, t_i = i/T, last step skipped) and its sampler: `sampling_method="rk"`
→ `solver="reference_rk"` (whose collapse is the reference's one-step matrix), `"euler"` → `"euler"`.
Anything else (another `linear_module`, `g`, U-Net layout, ...) is refused with an error naming the field.
"""


def _env(opts):
    return dict(date=time.strftime("%Y-%m-%d"), torch=torch.__version__, machine=platform.machine(),
                threads=torch.get_num_threads(), seed=opts.seed, sigma=opts.sigma, steps=opts.steps,
                celeba_collapse_steps=opts.celeba_collapse_steps)


DOC_METHOD = """Each configuration is built with the reference's own factories and default arguments, every weight is
perturbed by N(0, σ²) noise, the core's last layers are rescaled so that max_t ‖A_t‖₂ = 0.9, ActNorm is
initialised by the reference's forward on random images in [0, 1], and the model is saved with `torch.save`
and converted by the safe converter; our side is then loaded back with `LinearizerPipeline.from_pretrained`.
The differences in float32 are often exactly zero: our EDM conditioner follows the same operation order
(frequencies of the time embedding rounded to float32, attention weights computed in float32, biases added
after the convolution), so the two implementations round identically."""


def write_doc(path: str, results, opts):
    lines = [DOC_HEAD, "## Parity with the reference code", "",
             "Produced by `python conversion/check_parity.py --reference-repo PATH` (add `--threads 1` on a busy "
             f"machine). Tolerances: {TOL['float64']:g} (float64) and {TOL['float32']:g} (float32) for every "
             f"quantity; our one-step vs the reference's stepped Euler run {TOL_CROSS['float64']:g} / "
             f"{TOL_CROSS['float32']:g}.", "", DOC_METHOD, ""]
    ok_all = True
    for name, (rows, info) in results.items():
        c, h, w = info["dims"]
        env = info.get("env") or _env(opts)
        lines += [f"### {name} ({c}×{h}×{w}, D = {c * h * w}; {info['tensors']} tensors converted)", "",
                  f"Run on {env['date']}: torch {env['torch']}, {env['machine']} CPU, {env['threads']} thread(s), "
                  f"{info['seconds']:.0f} s; seed {env['seed']}, σ = {env['sigma']}.", "",
                  "| dtype | quantity | max abs diff | max abs value (ref) | tolerance | ok |", "|---|---|---|---|---|---|"]
        for dtype, label, d, m, tol in rows:
            ok = d <= tol
            ok_all &= ok
            lines.append(f"| {dtype} | {label} | {d:.3e} | {m:.3e} | {tol:g} | {'yes' if ok else '**NO**'} |")
        if info["warnings"]:
            lines += ["", "Conversion warnings: " + "; ".join(info["warnings"])]
        lines.append("")
    if "celeba" in results:
        lines += [f"The reference's collapsed one-step matrix is a product of dense D × D matrices (D = 12288 for CelebA, "
                  f"~3.7·10¹² flops per factor), hours on a CPU at T = {opts.steps}; the CelebA collapse is therefore "
                  f"compared at T = {opts.celeba_collapse_steps}, while our collapsed one-step at T = {opts.steps} is "
                  f"compared with the reference's {opts.steps}-step run, which computes the same product step by step.", ""]
    lines += [f"All quantities within tolerance: **{'yes' if ok_all else 'NO'}**.", ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return ok_all


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-repo", required=True, help="a checkout of assafshocher/Linearizer")
    parser.add_argument("--configs", nargs="+", default=["mnist", "celeba"], choices=["mnist", "celeba"])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "conversion.md"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--celeba-collapse-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, default=0.02, help="std of the random weight perturbation")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (e.g. 1 on a busy machine)")
    parser.add_argument("--results-json", default=None,
                        help="keep results here: configs not run now are taken from it when writing the document")
    parser.add_argument("--doc-only", action="store_true", help="only rewrite the document from --results-json")
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if not os.path.isfile(os.path.join(opts.reference_repo, "one_step", "train_one_step.py")):
        parser.error(f"{opts.reference_repo!r} is not a checkout of the reference repository (no one_step/train_one_step.py).")
    sys.path.insert(0, ROOT)
    if opts.doc_only:
        opts.configs = []
    else:
        ref = import_reference(os.path.abspath(opts.reference_repo))
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in opts.configs:
            results[name] = run_config(ref, name, workdir, opts)
            for row in results[name][0]:
                print(f"{name:6s} {row[0]:7s} {row[1]:60s} {row[2]:.3e} (max {row[3]:.2e}, tol {row[4]:g})", flush=True)
    if opts.results_json:
        previous = {}
        if os.path.isfile(opts.results_json):
            with open(opts.results_json) as f:
                previous = {k: (v["rows"], v["info"]) for k, v in json.load(f).items()}
        previous.update(results)
        results = {k: previous[k] for k in ("mnist", "celeba") if k in previous}
        with open(opts.results_json, "w") as f:
            json.dump({k: dict(rows=r, info=i) for k, (r, i) in results.items()}, f, indent=1, default=str)
    ok = write_doc(opts.out, results, opts)
    print(f"wrote {opts.out}; all within tolerance: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

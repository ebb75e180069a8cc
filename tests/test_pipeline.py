"""`LinearizerPipeline` and `LinearizerInversionPipeline` on tiny random models (all weights perturbed).

Checks: one step equals the stepped solver (PSNR ≥ 60 dB in fp32, ≥ 120 dB in fp64, every solver),
inversion recovers the noise, seeds and generator lists, output types, callbacks, low-precision weights,
thread safety, and that every bad input is refused before any model work.

One file past 400 lines on purpose: the checks share the tiny pipelines built at the top (module fixtures),
which are what keeps the suite fast.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_linearizer import (
    LinearizerInversionPipeline,
    LinearizerPipeline,
    LinearizerScheduler,
)
from diffusers_linearizer.images import psnr

from .utils import perturb_all, tiny_model

SOLVERS = ("euler", "heun", "rk4")
TIME_CORES = ("time_lowrank", "shared_basis")
STEPS = 16


def make_pipe(core_type="shared_basis", dtype=torch.float32, solver="euler", seed=0, scale=0.05, **cfg):
    torch.manual_seed(seed)
    model = tiny_model(core_type=core_type, **cfg)
    perturb_all(model, scale, seed=seed)
    model.eval()
    if dtype != torch.float32:
        model.to(dtype)
    pipe = LinearizerPipeline(linearizer=model, scheduler=LinearizerScheduler(solver=solver))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def raw(pipe, **kw):
    """Unclamped float images (N, C, H, W)."""
    kw.setdefault("output_type", "pt")
    return pipe(clamp=False, **kw).images


@pytest.fixture(scope="module")
def pipe32():
    return make_pipe()


# ---------------------------------------------------------------------- one step vs stepped
@pytest.mark.parametrize("dtype, min_db", [(torch.float32, 60.0), (torch.float64, 120.0)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("core_type", TIME_CORES)
def test_one_step_equals_multi_step(core_type, solver, dtype, min_db):
    pipe = make_pipe(core_type, dtype=dtype, solver=solver)
    one = raw(pipe, batch_size=3, num_inference_steps=STEPS, generator=gens(1, 2, 3))
    multi = raw(pipe, batch_size=3, num_inference_steps=STEPS, generator=gens(1, 2, 3), one_step=False)
    assert one.dtype == multi.dtype == dtype
    assert torch.isfinite(one).all()
    db = psnr(one, multi)
    assert (db >= min_db).all(), f"PSNR one-step vs multi-step {db.tolist()} dB < {min_db} dB"
    # not vacuous: the sampler moves the images far from "no core" (g_x⁻¹(g_y(noise)))
    noise = pipe.prepare_noise(3, gens(1, 2, 3))
    lin = pipe.linearizer
    identity_run = lin.decode(lin.encode(noise, "y"), "x")
    assert (psnr(one, identity_run) < 40).all()
    # and the solvers really differ from each other
    other = "heun" if solver == "euler" else "euler"
    assert (psnr(one, raw(pipe, batch_size=3, num_inference_steps=STEPS, generator=gens(1, 2, 3), solver=other)) < min_db).all()


def test_one_step_equals_multi_step_time_independent_core():
    pipe = make_pipe("lowrank", solver="rk4")
    one = raw(pipe, batch_size=2, num_inference_steps=STEPS, generator=gens(4, 5))
    multi = raw(pipe, batch_size=2, num_inference_steps=STEPS, generator=gens(4, 5), one_step=False)
    assert (psnr(one, multi) >= 60).all()


def test_default_steps_and_latent_output(pipe32):
    z = pipe32(batch_size=2, generator=gens(0, 1), output_type="latent").images  # 100 steps by default
    z_multi = pipe32(batch_size=2, generator=gens(0, 1), output_type="latent", one_step=False).images
    assert z.shape == (2, 1, 8, 8)
    assert (psnr(z, z_multi) >= 60).all()
    x = raw(pipe32, batch_size=2, generator=gens(0, 1))
    torch.testing.assert_close(pipe32.linearizer.decode(z, "x"), x, rtol=0, atol=0)


def test_training_mode_model_is_switched_to_eval(caplog):
    """Sampling must not run ActNorm's data-dependent initialisation (it would rewrite the weights)."""
    pipe = make_pipe()
    pipe.linearizer.train()
    before = {k: v.clone() for k, v in pipe.linearizer.state_dict().items()}
    a = raw(pipe, generator=gens(0), num_inference_steps=STEPS)
    assert not pipe.linearizer.training
    after = pipe.linearizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "sampling changed the weights"
    assert torch.equal(a, raw(pipe, generator=gens(0), num_inference_steps=STEPS))


# ---------------------------------------------------------------------- seeds
def test_generator_list_and_batch_equals_one_by_one(pipe32):
    batch = raw(pipe32, batch_size=3, generator=gens(10, 11, 12), num_inference_steps=STEPS)
    singles = torch.cat([raw(pipe32, generator=torch.Generator().manual_seed(s), num_inference_steps=STEPS)
                         for s in (10, 11, 12)])
    torch.testing.assert_close(batch, singles, rtol=1e-6, atol=1e-6)
    # each image has its own noise
    assert not torch.allclose(batch[0], batch[1]) and not torch.allclose(batch[1], batch[2])
    # a single generator draws the whole batch from one stream, like diffusers' randn_tensor
    noise = pipe32.prepare_noise(2, torch.Generator().manual_seed(7))
    torch.testing.assert_close(noise, torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(7)))


def test_every_random_choice_comes_from_the_generator(pipe32):
    state = torch.get_rng_state()
    a = raw(pipe32, batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was used"
    torch.manual_seed(12345)
    b = raw(pipe32, batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS)
    assert torch.equal(a, b)
    state = torch.get_rng_state()
    c = raw(pipe32, batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS,
            one_step=False)
    assert torch.equal(torch.get_rng_state(), state), "the stepped run used the global RNG"
    assert (psnr(a, c) >= 60).all()


def test_latents_argument_is_the_noise(pipe32):
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = raw(pipe32, batch_size=2, latents=noise, num_inference_steps=STEPS)
    b = raw(pipe32, batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------- outputs, callbacks, progress bar
def test_output_types(pipe32):
    def kw():
        return dict(batch_size=2, generator=gens(0, 1), num_inference_steps=STEPS)

    pil = pipe32(**kw()).images
    assert len(pil) == 2 and all(isinstance(i, PIL.Image.Image) and i.mode == "L" and i.size == (8, 8) for i in pil)
    arr = pipe32(output_type="np", **kw()).images
    assert arr.shape == (2, 8, 8, 1) and arr.dtype == np.float32 and arr.min() >= 0 and arr.max() <= 1
    pt = pipe32(output_type="pt", **kw()).images
    assert pt.shape == (2, 1, 8, 8) and pt.min() >= 0 and pt.max() <= 1
    np.testing.assert_array_equal(np.asarray(pil[0]), (arr[0, :, :, 0] * 255).round().astype(np.uint8))
    np.testing.assert_allclose(arr, pt.permute(0, 2, 3, 1).numpy())
    unclamped = raw(pipe32, **kw())
    assert torch.equal(pt, unclamped.clamp(0, 1))
    assert (unclamped < 0).any() or (unclamped > 1).any()  # the random model leaves [0, 1]: clamping is real
    (tup,) = pipe32(output_type="pt", return_dict=False, **kw())
    assert torch.equal(tup, pt)


def test_callback_and_progress_bar(pipe32):
    calls = []

    def callback(pipe, i, t, kwargs):
        calls.append((i, float(t), kwargs["latents"].clone()))
        return {}

    pipe = LinearizerPipeline(**pipe32.components)
    bars = []
    original = pipe.progress_bar

    def counting_bar(*args, **kwargs):
        bars.append(kwargs.get("total"))
        return original(*args, **kwargs)

    pipe.progress_bar = counting_bar
    pipe.set_progress_bar_config(disable=True)
    pipe(num_inference_steps=5, solver="heun", one_step=False, generator=gens(0), output_type="pt",
         callback_on_step_end=callback)
    assert [c[0] for c in calls] == list(range(8))  # 4 steps × 2 evaluations
    assert bars == [8]
    times = [c[1] for c in calls]
    assert times[0] == 1000.0 and times == sorted(times, reverse=True)

    # a callback can replace the latents: zero latents stay zero (B·0 = 0) → g_x⁻¹(0)
    zeroed = pipe(num_inference_steps=5, one_step=False, generator=gens(0), output_type="latent",
                  callback_on_step_end=lambda p, i, t, kw: {"latents": torch.zeros_like(kw["latents"])}).images
    assert torch.equal(zeroed, torch.zeros_like(zeroed))


# ---------------------------------------------------------------------- inversion
@pytest.fixture(scope="module")
def well_conditioned():
    pipe = make_pipe("shared_basis", seed=3)
    B = pipe.collapsed_operator(STEPS)
    cond = float(B.cond())
    assert cond < 1e3, f"test model's B is badly conditioned (cond {cond:.3g})"
    return pipe, LinearizerInversionPipeline(**pipe.components)


def test_inversion_recovers_noise(well_conditioned):
    pipe, inv = well_conditioned
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    x = raw(pipe, batch_size=3, latents=noise, num_inference_steps=STEPS)
    with pytest.raises(ValueError, match=r"values in \[0, 1\].*check_range=False"):  # the random model leaves [0, 1] by far
        inv(x, num_inference_steps=STEPS)
    out = inv(x, num_inference_steps=STEPS, check_range=False)
    rel = (out.noise - noise).flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)
    assert (rel <= 1e-4).all(), rel
    assert out.noise.shape == out.latents.shape == out.image_latents.shape == (3, 1, 8, 8)
    torch.testing.assert_close(out.latents, pipe.linearizer.encode(out.noise, "y"), rtol=1e-4, atol=1e-5)
    assert (out.psnr > 80).all() and (out.relative_error < 1e-4).all()
    # the recovered noise regenerates the image
    again = raw(pipe, batch_size=3, latents=out.noise, num_inference_steps=STEPS)
    assert (psnr(again, x) > 80).all()


def test_inversion_of_real_images_reports_psnr(well_conditioned):
    _, inv = well_conditioned
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L") for _ in range(2)]
    out = inv(images, num_inference_steps=STEPS, output_type="np")
    x = torch.tensor(np.stack([np.asarray(i) for i in images]), dtype=torch.float64)[:, None] / 255
    assert out.reconstruction.shape == (2, 8, 8, 1)
    assert out.psnr.dtype == torch.float64 and out.psnr.shape == (2,)
    assert (out.psnr > 80).all(), out.psnr
    rec = torch.from_numpy(out.reconstruction).permute(0, 3, 1, 2).double()
    assert (psnr(rec, x) > 80).all()  # the returned (float32) reconstruction, measured independently
    # numpy (H, W) / (N, H, W, C) and uint8 tensors give the same result
    arr = np.stack([np.asarray(i) for i in images])
    out_np = inv(arr[..., None], num_inference_steps=STEPS)
    out_t = inv(torch.from_numpy(arr)[:, None], num_inference_steps=STEPS)
    out_single = inv(arr[0], num_inference_steps=STEPS)
    assert torch.equal(out_np.noise, out_t.noise) and torch.equal(out.noise, out_np.noise)
    torch.testing.assert_close(out_single.noise[0], out_np.noise[0], rtol=1e-5, atol=1e-5)


def test_pipelines_share_the_collapse_cache(well_conditioned):
    pipe, inv = well_conditioned
    B = pipe.collapsed_operator(STEPS)
    assert inv.collapsed_operator(STEPS) is B
    assert inv.pseudo_inverse(STEPS) is inv.pseudo_inverse(STEPS)
    assert B.dtype == torch.float64 and inv.pseudo_inverse(STEPS).dtype == torch.float64
    # from_pipe keeps the components, hence the cache
    assert LinearizerInversionPipeline.from_pipe(pipe).collapsed_operator(STEPS) is B


def test_interpolation(well_conditioned):
    pipe, inv = well_conditioned
    a = raw(pipe, generator=gens(1), num_inference_steps=STEPS).clamp(0, 1)
    b = raw(pipe, generator=gens(2), num_inference_steps=STEPS).clamp(0, 1)
    out = inv.interpolate(a, b, num_frames=5, num_inference_steps=STEPS, output_type="pt")
    assert out.frames.shape == (5, 1, 8, 8) and out.noise.shape == (5, 1, 8, 8)
    torch.testing.assert_close(out.weights, torch.linspace(0, 1, 5, dtype=torch.float64))
    torch.testing.assert_close(out.frames[0], a[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(out.frames[-1], b[0], rtol=0, atol=1e-4)
    lin = inv.interpolate(a, b, num_frames=5, mode="linear", num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(lin.noise[[0, -1]], out.noise[[0, -1]])
    mid = out.noise[2].norm()
    assert mid > lin.noise[2].norm()  # slerp keeps the norm, a straight line cuts inside
    torch.testing.assert_close(mid, (out.noise[0].norm() + out.noise[-1].norm()) / 2, rtol=1e-4, atol=0)
    frames = inv.interpolate(a, b, num_frames=3, num_inference_steps=STEPS).frames
    assert len(frames) == 3 and all(isinstance(f, PIL.Image.Image) for f in frames)


def test_rgb_model_roundtrip():
    pipe = make_pipe("time_lowrank", in_channels=3, sample_size=4, seed=1)
    images = pipe(batch_size=2, generator=gens(0, 1), num_inference_steps=STEPS).images
    assert images[0].mode == "RGB" and images[0].size == (4, 4)
    out = LinearizerInversionPipeline(**pipe.components)(images, num_inference_steps=STEPS)
    assert out.noise.shape == (2, 3, 4, 4) and torch.isfinite(out.psnr).all()


# ---------------------------------------------------------------------- precision and offloading
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)], ids=["fp16", "bf16"])
def test_low_precision_weights(tmp_path, dtype, tol):
    """fp16 / bf16 weights: images within `tol` (max abs, data range [0, 1]) of fp32, no NaN; B stays fp64."""
    pipe = make_pipe("shared_basis", seed=3)
    pipe.save_pretrained(tmp_path)
    low = LinearizerPipeline.from_pretrained(tmp_path, torch_dtype=dtype)
    low.set_progress_bar_config(disable=True)
    assert low.linearizer.dtype == dtype
    ref = pipe(batch_size=4, generator=gens(0, 1, 2, 3), num_inference_steps=STEPS, output_type="pt").images
    got = low(batch_size=4, generator=gens(0, 1, 2, 3), num_inference_steps=STEPS, output_type="pt").images
    assert got.dtype == dtype and not torch.isnan(got).any()
    assert low.collapsed_operator(STEPS).dtype == torch.float64
    err = (got.float() - ref).abs().max().item()
    assert err <= tol, f"{dtype}: max abs error {err:.3g} > {tol}"
    inv = LinearizerInversionPipeline(**low.components)
    assert inv.pseudo_inverse(STEPS).dtype == torch.float64
    assert torch.isfinite(inv(got, num_inference_steps=STEPS).noise).all()


def test_model_cpu_offload_hook(pipe32):
    """`enable_model_cpu_offload` (on the CPU here) installs accelerate hooks; results do not change."""
    pytest.importorskip("accelerate")
    ref = raw(pipe32, batch_size=2, generator=gens(0, 1), num_inference_steps=STEPS)
    pipe = LinearizerPipeline(**pipe32.components)
    pipe.set_progress_bar_config(disable=True)
    try:
        pipe.enable_model_cpu_offload(device="cpu")
    except (RuntimeError, ValueError) as err:  # pragma: no cover - depends on diffusers' device checks
        pytest.skip(f"model CPU offload unavailable here: {err}")
    try:
        assert hasattr(pipe.linearizer, "_hf_hook")
        got = raw(pipe, batch_size=2, generator=gens(0, 1), num_inference_steps=STEPS)
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    finally:
        pipe.remove_all_hooks()


# ---------------------------------------------------------------------- concurrency
def test_threads_give_the_same_results_as_serial_calls():
    pipe = make_pipe("shared_basis", seed=3)
    inv = LinearizerInversionPipeline(**pipe.components)
    jobs = [
        ("gen", dict(batch_size=2, generator=(11, 12), num_inference_steps=STEPS)),
        ("gen", dict(batch_size=1, generator=(13,), num_inference_steps=STEPS, solver="rk4")),
        ("gen", dict(batch_size=2, generator=(14, 15), num_inference_steps=6, one_step=False, solver="heun")),
        ("gen", dict(batch_size=1, generator=(16,), num_inference_steps=STEPS, solver="heun")),
        ("inv", dict(seed=1, num_inference_steps=STEPS)),
        ("inv", dict(seed=2, num_inference_steps=STEPS, solver="rk4")),
    ] * 2

    def run(job):
        kind, kw = job
        kw = dict(kw)
        if kind == "gen":
            return raw(pipe, **{**kw, "generator": gens(*kw["generator"])})
        x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(kw.pop("seed")))
        out = inv(x, **kw)
        return torch.cat([out.noise, out.reconstruction])

    serial = [run(j) for j in jobs]
    pipe.scheduler.clear_collapse_cache()  # start cold: the threads race to build B
    barrier = threading.Barrier(len(jobs))

    def threaded(job):
        barrier.wait()
        return run(job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        parallel = list(pool.map(threaded, jobs))
    for s, p in zip(serial, parallel):
        torch.testing.assert_close(p, s, rtol=0, atol=0)
    assert not any(k in inv.__dict__ for k in ("noise", "reconstruction", "latents"))


# ---------------------------------------------------------------------- bad input: clear errors before any work
@pytest.fixture
def guarded(pipe32, monkeypatch):
    """A pipeline whose model and collapse raise if touched: errors must come before any work."""
    pipe = LinearizerPipeline(**pipe32.components)
    inv = LinearizerInversionPipeline(**pipe32.components)

    def forbidden(*a, **k):
        raise AssertionError("work started before the input was checked")

    for name in ("encode", "decode", "apply_core"):
        monkeypatch.setattr(pipe.linearizer, name, forbidden)
    monkeypatch.setattr(pipe.scheduler, "collapse", forbidden)
    return pipe, inv


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=1, latents=torch.zeros(2, 1, 8, 8)), r"latents .*shape \(1, 1, 8, 8\)"),
        (dict(latents=torch.zeros(1, 1, 8, 7)), r"\(batch_size, 1, 8, 8\)"),
        (dict(latents=torch.full((1, 1, 8, 8), float("nan"))), "NaN"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(solver="dopri5"), "solver"),
        (dict(num_inference_steps=1), "num_inference_steps"),
        (dict(num_inference_steps=2.5), "num_inference_steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2, generator=[torch.Generator()]), "generators"),
        (dict(one_step=False, callback_on_step_end_tensor_inputs=["prompt_embeds"]), "callback"),
    ],
)
def test_generation_bad_input(guarded, kwargs, message):
    pipe, _ = guarded
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


@pytest.mark.parametrize(
    "image, message",
    [
        (torch.rand(1, 1, 8, 9), r"1×8×8 .*got images of C×H×W = 1×8×9"),
        (torch.rand(1, 3, 8, 8), r"expected|Expected .*1×8×8"),
        (PIL.Image.new("RGB", (8, 8)), r"mode 'RGB' \(3 channel\(s\)\).*convert\('L'\)"),
        (PIL.Image.new("L", (16, 16)), r"1×8×8 .*16×16"),
        (np.zeros((8, 8, 2), np.float32), "1×8×8"),
        (torch.full((1, 1, 8, 8), float("nan")), "NaN"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.int64), "dtype"),
        ("image.png", "PIL images, numpy arrays or torch tensors"),
        ([], "empty"),
    ],
)
def test_inversion_bad_input(guarded, image, message, monkeypatch):
    _, inv = guarded
    with pytest.raises(ValueError, match=message):
        inv(image)


def test_inversion_bad_arguments(guarded):
    _, inv = guarded
    x = torch.rand(1, 1, 8, 8)
    for kwargs, message in [
        (dict(output_type="latent"), "output_type"),
        (dict(solver="x"), "solver"),
        (dict(num_inference_steps=1), "num_inference_steps"),
    ]:
        with pytest.raises(ValueError, match=message):
            inv(x, **kwargs)
    with pytest.raises(ValueError, match="num_frames"):
        inv.interpolate(x, x, num_frames=1)
    with pytest.raises(ValueError, match="mode"):
        inv.interpolate(x, x, mode="cubic")
    with pytest.raises(ValueError, match="one image for each end"):
        inv.interpolate(torch.rand(2, 1, 8, 8), x)


# ---------------------------------------------------------------------- temperature, callbacks, batch size
@pytest.mark.parametrize("temperature", [0.5, 1.7])
def test_temperature_against_an_independent_stepped_run(pipe32, temperature):
    """x = g_x⁻¹(B g_y(τ·ε)): the one-step image equals a plain diffusers-style loop started from τ·ε."""
    one = raw(pipe32, batch_size=2, generator=gens(3, 4), num_inference_steps=STEPS, temperature=temperature, solver="heun")
    eps = torch.cat([torch.randn(1, 1, 8, 8, generator=g) for g in gens(3, 4)])
    lin = pipe32.linearizer
    scheduler = LinearizerScheduler(solver="heun")
    scheduler.set_timesteps(STEPS)
    z = lin.encode(temperature * eps, "y")
    with torch.no_grad():
        for ts in scheduler.timesteps:
            z = scheduler.step(lin.apply_core(z, float(scheduler.t_of(ts))), ts, z).prev_sample
        stepped = lin.decode(z, "x")
    assert (psnr(one, stepped) >= 60).all()
    plain = raw(pipe32, batch_size=2, generator=gens(3, 4), num_inference_steps=STEPS, solver="heun")
    assert (psnr(one, plain) < 40).all()  # the temperature really changes the images
    stepped_pipe = raw(pipe32, batch_size=2, generator=gens(3, 4), num_inference_steps=STEPS, solver="heun",
                       temperature=temperature, one_step=False)
    assert (psnr(one, stepped_pipe) >= 60).all()


def test_one_step_run_calls_the_callback_once_and_honours_it(pipe32):
    calls = []

    def callback(pipe, i, t, kwargs):
        calls.append((i, float(t), sorted(kwargs)))
        return {"latents": torch.zeros_like(kwargs["latents"])}

    z = pipe32(num_inference_steps=STEPS, generator=gens(0), output_type="latent", callback_on_step_end=callback,
               callback_on_step_end_tensor_inputs=["latents", "noise"]).images
    assert calls == [(0, 1000.0, ["latents", "noise"])] and pipe32.num_timesteps == 1
    assert torch.equal(z, torch.zeros_like(z))


def test_batch_size_is_taken_from_latents(pipe32):
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out = raw(pipe32, latents=noise, num_inference_steps=STEPS)
    assert out.shape == (4, 1, 8, 8)
    assert torch.equal(out, raw(pipe32, batch_size=4, latents=noise, num_inference_steps=STEPS))
    assert raw(pipe32, generator=gens(1, 2, 3), num_inference_steps=STEPS).shape[0] == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(generator=0), r"torch\.Generator"),
        (dict(generator=[torch.Generator(), 1]), r"torch\.Generator"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(latents=torch.zeros(1, 1, 8, 8), temperature=2.0), "latents \\* temperature"),
        (dict(batch_size=4, latents=torch.zeros(2, 1, 8, 8)), "batch_size 4"),
    ],
)
def test_more_bad_generation_input(guarded, kwargs, message):
    pipe, _ = guarded
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


@pytest.mark.parametrize(
    "image, message",
    [
        (torch.rand(1, 1, 8, 8) * 255, r"\[0, 1\].*\[0, 255\]"),
        (torch.rand(1, 1, 8, 8) * 2 - 1, r"\[0, 1\].*\[-1, 1\]"),
        (np.random.default_rng(0).uniform(0, 255, (8, 8)).astype(np.float32), r"\[0, 255\]"),
    ],
    ids=["0-255", "minus1-1", "numpy-0-255"],
)
def test_inversion_refuses_float_images_in_another_range(guarded, image, message):
    _, inv = guarded
    with pytest.raises(ValueError, match=message):
        inv(image)


# ---------------------------------------------------------------------- the model's sampling temperature
def test_model_sampling_temperature_is_the_default_noise_scale(tmp_path):
    pipe = make_pipe(dtype=torch.float64, sampling_temperature=1.3)
    shape = (2, *pipe.linearizer.sample_shape)
    eps = torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in gens(3, 4)])  # what randn_tensor draws
    by_default = raw(pipe, batch_size=2, generator=gens(3, 4), num_inference_steps=STEPS)
    torch.testing.assert_close(by_default, raw(pipe, latents=(1.3 * eps).double(), num_inference_steps=STEPS),
                               rtol=0, atol=1e-12)
    stepped = raw(pipe, batch_size=2, generator=gens(3, 4), num_inference_steps=STEPS, one_step=False)
    assert float(psnr(stepped, by_default).min()) > 100
    plain = raw(pipe, batch_size=2, generator=gens(3, 4), num_inference_steps=STEPS, temperature=1.0)
    torch.testing.assert_close(plain, raw(pipe, latents=eps.double(), num_inference_steps=STEPS), rtol=0, atol=1e-12)
    assert float((plain - by_default).abs().max()) > 1e-4
    # given latents are used as they are
    torch.testing.assert_close(raw(pipe, latents=eps.double(), num_inference_steps=STEPS), plain, rtol=0, atol=0)
    pipe.save_pretrained(tmp_path / "p")
    assert LinearizerPipeline.from_pretrained(tmp_path / "p").linearizer.config.sampling_temperature == 1.3
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="sampling_temperature"):
            tiny_model(sampling_temperature=bad)

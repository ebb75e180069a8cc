"""``LinearizerPipeline.enable_fast_sampling``: the same images as the plain path, half-precision g against
an independent half-precision computation, the fallback when compiling fails, and calls from threads.

Compilation runs with torch.compile's ``aot_eager`` backend (dynamo's graph capture and AOT autograd,
no code generation), which keeps the tests fast on a CPU without a C++ toolchain;
``benchmarks/gpu.py --quick`` runs the inductor backend.
"""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch

from diffusers_linearizer import LinearizerPipeline, LinearizerScheduler

from .utils import perturb_all, tiny_model

FP32_TOLERANCE = 1e-6  # float32 images: a few ulps of values in [0, 1] after two passes of g


@pytest.fixture()
def pipe():
    torch.manual_seed(0)
    model = tiny_model(core_type="shared_basis", core_rank=4)
    perturb_all(model, 0.02)  # zero-initialised layers would make g nearly the identity
    pipeline = LinearizerPipeline(linearizer=model.eval(), scheduler=LinearizerScheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _images(pipe, n=5, seed=1, **kwargs):
    kwargs.setdefault("output_type", "pt")
    return pipe(batch_size=n, num_inference_steps=10, generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.mark.parametrize("options", [dict(compile=False), dict(backend="aot_eager")])
def test_fast_path_gives_the_plain_images(pipe, options):
    plain = _images(pipe)
    plain_raw, plain_latent = _images(pipe, clamp=False), _images(pipe, output_type="latent")
    stepped = _images(pipe, one_step=False)
    assert pipe.enable_fast_sampling(**options) is pipe and pipe.fast_sampling is not None
    for _ in range(2):  # the first call compiles, the second replays
        assert (_images(pipe) - plain).abs().max() <= FP32_TOLERANCE
    assert (_images(pipe, clamp=False) - plain_raw).abs().max() <= FP32_TOLERANCE
    assert (_images(pipe, output_type="latent") - plain_latent).abs().max() <= FP32_TOLERANCE
    assert (_images(pipe, one_step=False) - stepped).abs().max() <= FP32_TOLERANCE
    assert (_images(pipe, n=3, seed=1) - plain[:3]).abs().max() <= FP32_TOLERANCE  # another batch size
    assert pipe.disable_fast_sampling().fast_sampling is None
    assert torch.equal(_images(pipe), plain)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_g_is_the_half_model_around_a_float64_B(pipe, dtype):
    """Against a half copy of g run by hand, with B from the scheduler applied in float64; and within a
    bound of the half type's precision from the float32 images."""
    model = pipe.linearizer
    noise = torch.randn((4, *model.sample_shape), generator=torch.Generator().manual_seed(3))
    half = torch.nn.Module.to(copy.deepcopy(model), dtype)
    dense_B = LinearizerScheduler().collapse(model.core, 10).to_dense()  # float64, D × D
    with torch.no_grad():
        z = half.encode(noise.to(dtype), "y").double().flatten(1)
        expected = half.decode((z @ dense_B.T).to(dtype).view_as(noise), "x")
    plain = pipe(latents=noise, num_inference_steps=10, output_type="pt", clamp=False).images
    pipe.enable_fast_sampling(dtype=dtype, backend="aot_eager")
    fast = pipe(latents=noise, num_inference_steps=10, output_type="pt", clamp=False).images
    assert fast.dtype == torch.float32
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(fast, expected.float(), rtol=2 * eps, atol=2 * eps)
    assert (fast - plain).abs().max() <= 8 * eps * (1 + plain.abs().max())


def test_uncompilable_g_falls_back_with_one_warning(pipe):
    plain = _images(pipe)

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    pipe.enable_fast_sampling(backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="could not compile g.*no C\\+\\+ compiler.*uncompiled"):
        first = _images(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = _images(pipe)
    assert pipe.fast_sampling.compile_failed
    assert (first - plain).abs().max() <= FP32_TOLERANCE and (second - plain).abs().max() <= FP32_TOLERANCE


def test_fast_path_from_several_threads(pipe):
    expected = {seed: _images(pipe, n=2 + seed % 2, seed=seed) for seed in range(6)}
    pipe.enable_fast_sampling(backend="aot_eager")
    _images(pipe, n=2)  # compile once before the threads start
    got, errors = {}, []

    def work(seed):
        try:
            got[seed] = _images(pipe, n=2 + seed % 2, seed=seed)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in expected]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert all((got[s] - expected[s]).abs().max() <= FP32_TOLERANCE for s in expected)


def test_bad_fast_sampling_options(pipe):
    with pytest.raises(ValueError, match="CUDA"):
        pipe.enable_fast_sampling(cuda_graphs=True)
    with pytest.raises(ValueError, match="dtype"):
        pipe.enable_fast_sampling(dtype=torch.int8)
    assert pipe.fast_sampling is None
    pipe.enable_fast_sampling(compile=False)
    with pytest.raises(ValueError, match=r"latents \(the initial noise\) of shape"):
        pipe(latents=torch.randn(2, 1, 4, 4))

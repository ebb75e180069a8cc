"""The trainer's fast paths, checked on the CPU: inputs on the device, the compiled objective, the fused
optimizer, and mixed precision that leaves the collapse and the log-determinants in float32/float64."""

from __future__ import annotations

import pytest
import torch

from diffusers_linearizer.schedulers import LinearizerScheduler
from diffusers_linearizer.training import device_inputs as tdev
from diffusers_linearizer.training import objective as tobj
from diffusers_linearizer.training import train as ttrain
from diffusers_linearizer.training import trainer as ttrainer
from diffusers_linearizer.training.data import EpochShuffleSampler, derive_seed
from diffusers_linearizer.training.distill import stack_pairs

from .test_training import TINY, image_dir  # noqa: F401  (the module's image folder fixture)
from .utils import perturb_all, tiny_model


def _batch(n=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 1, 8, 8), generator=gen)
    return (images, *tobj.draw_step_noise((1, 8, 8), n, gen))


def _trainer(image_dir, out, *extra):
    args = ttrain.parse_args(["--train_data_dir", str(image_dir), "--output_dir", str(out), *TINY, "--cpu", *extra])
    ttrain.check_args(args)
    return ttrainer.Trainer(args)


def test_inputs_on_the_device_train_exactly_like_the_loader(image_dir, tmp_path):  # noqa: F811
    """--device_inputs on (dataset stacked on the device, batches cut by index, the step generator on the
    device — the CPU here) gives the loader path's batches, noise and weights bit for bit."""
    run = ["--train_batch_size", "4", "--gradient_accumulation_steps", "2", "--max_train_steps", "3", "--random_flip"]
    weights, batches = {}, {}
    for mode in ("off", "on"):
        trainer = _trainer(image_dir, tmp_path / mode, *run, "--device_inputs", mode)
        assert trainer.device_inputs == (mode == "on") and trainer.micro_per_epoch == 48 // 4
        stream = trainer.micro_batches()
        batches[mode] = [next(stream) for _ in range(14)]  # past the end of the first epoch
        stream = trainer.micro_batches()
        for _ in range(3):
            trainer.step(stream)
        weights[mode] = trainer.unwrapped().state_dict()
    assert all(torch.equal(a, b) for a, b in zip(batches["on"], batches["off"]))
    assert all(torch.equal(weights["on"][k], weights["off"][k]) for k in weights["on"])


def test_device_data_follows_accelerates_sharding_and_resumes():
    """Two processes: process r takes batch k·2 + r of the epoch's permutation, as accelerate's
    BatchSamplerShard deals them; ``skip`` drops the micro-batches a resumed run consumed. Pairs stay pairs."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    items = [(torch.full((1, 2, 2), float(i)), torch.full((1, 2, 2), -float(i))) for i in range(23)]
    sampler = EpochShuffleSampler(len(items), seed=5)
    for rank in (0, 1):
        data = tdev.DeviceData(items, stack_pairs, sampler, 3, "cpu", num_processes=2, rank=rank, chunk=4)
        assert len(data) == (23 // 3) // 2
        sampler.set_epoch(2)
        shard = BatchSamplerShard(BatchSampler(sampler, 3, drop_last=True), num_processes=2, process_index=rank)
        expected = list(shard)[:len(data)]
        got = list(data.batches(2))
        assert len(got) == len(expected)
        for (images, noise), idx in zip(got, expected):
            assert images[:, 0, 0, 0].tolist() == [float(i) for i in idx] and torch.equal(noise, -images)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(list(data.batches(2, skip=1)), got[1:]))


def test_step_generator_is_seeded_by_seed_and_step():
    cpu = torch.Generator().manual_seed(derive_seed(3, "step", 7))
    gen = tdev.step_generator("cpu", 3, 7)
    assert torch.equal(torch.randn(5, generator=gen), torch.randn(5, generator=cpu))
    again = tdev.step_generator("cpu", 3, 7, generator=gen)  # reseeding the same generator
    assert again is gen and torch.equal(torch.randn(5, generator=again), torch.randn(5, generator=tdev.step_generator("cpu", 3, 7)))
    assert not torch.equal(torch.randn(5, generator=tdev.step_generator("cpu", 3, 8)),
                           torch.randn(5, generator=tdev.step_generator("cpu", 3, 7)))
    with pytest.raises(ValueError, match="device_inputs"):
        tdev.use_device_inputs("sometimes", torch.device("cpu"), [torch.zeros(1)])
    assert not tdev.use_device_inputs("auto", torch.device("cpu"), [torch.zeros(1)])


@pytest.mark.parametrize("pixel_loss", ["mse", "mse+ssim"])
def test_compiled_objective_is_one_graph_and_matches_the_eager_one(pixel_loss):
    """The compiled flow term takes its offset as a tensor: one graph (no graph break, no recompilation)
    for every offset, the same terms and gradients as the eager objective's index selection."""
    model = tiny_model()
    images, noise, t, eps_y, eps_x = _batch()
    tobj.initialize_actnorm(model, images, noise)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    eager = tobj.LinearizerObjective(model, pixel_loss=pixel_loss)
    compiled = tobj.LinearizerObjective(model, pixel_loss=pixel_loss)
    compiled.compile_flow(backend=counting_backend, fullgraph=True)
    for offset in (0, 1, 2, 5):
        outs, grads = [], []
        for objective in (eager, compiled):
            model.zero_grad()
            out = objective(images, noise, t, eps_y, eps_x, offset=offset)
            out["loss"].backward()
            outs.append(out)
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        assert outs[0].keys() == outs[1].keys()
        for k in outs[0]:  # the same means, summed in another order
            torch.testing.assert_close(outs[1][k], outs[0][k], rtol=1e-5, atol=1e-7)
        for a, b in zip(*grads):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert len(graphs) == 1
    small = compiled(images[:2], noise[:2], t[:2], eps_y[:2], eps_x[:2], offset=1)  # < 3 samples: eager
    assert set(small) == set(eager(images[:2], noise[:2], t[:2], eps_y[:2], eps_x[:2], offset=1))


def test_bf16_autocast_keeps_the_collapse_and_log_determinants_wide():
    """Under bf16 autocast the collapse of B runs in float64 exactly as without autocast, g's
    log-determinants are float32, and the likelihood + flow objective stays finite with float32 gradients."""
    from diffusers_linearizer.training.one_step import collapsed_operator

    model = tiny_model(core_type="shared_basis", core_rank=4)
    perturb_all(model, 0.05)  # zero-initialised layers would hide a lowered precision
    images, noise, t, eps_y, eps_x = _batch()
    tobj.initialize_actnorm(model, images, noise)
    scheduler = LinearizerScheduler()
    plain = collapsed_operator(model, scheduler, 10, "euler")
    coupling = model.g.blocks[0].coupling_f
    x, ctx = torch.randn(7, 4, 4, 4), torch.zeros(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        B = collapsed_operator(model, scheduler, 10, "euler")
        _, logdet = coupling(x, ctx)
        _, s = coupling.shift_log_scale(coupling._halves(x)[1], ctx)
        objective = tobj.LinearizerObjective(model, "fast,likelihood:0.02", num_inference_steps=10)
        out = objective(images, noise, t, eps_y, eps_x, uniform=torch.rand(images.shape))
    assert s.dtype == torch.bfloat16 and logdet.dtype == torch.float32  # the layer ran in bf16, its logdet did not
    torch.testing.assert_close(logdet.double(), s.double().flatten(1).sum(1), rtol=1e-6, atol=1e-5)
    assert B.dtype == torch.float64
    x = torch.randn(3, 64, dtype=torch.float64)
    assert torch.equal(B.apply(x), plain.apply(x)) and torch.equal(B.logabsdet(), plain.logabsdet())
    out["loss"].backward()
    assert all(torch.isfinite(v).all() for v in out.values())
    assert out["likelihood_bpd"].dtype == torch.float32
    assert all(p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()) for p in model.parameters())


def test_fused_optimizer_and_compile_options(image_dir, tmp_path):  # noqa: F811
    trainer = _trainer(image_dir, tmp_path / "fused", "--train_batch_size", "4", "--max_train_steps", "2",
                       "--fused_optimizer", "on", "--compile", "--compile_backend", "eager")
    assert trainer.optimizer.optimizer.param_groups[0]["fused"] is True
    assert set(trainer.accelerator.unwrap_model(trainer.objective).compiled_flow) == {"fast", "reference"}
    stream = trainer.micro_batches()
    trainer.step(stream)
    trainer.step(stream)
    logs = trainer.log_losses()
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    auto = ttrain.parse_args(["--output_dir", str(tmp_path / "x")])
    assert (auto.device_inputs, auto.fused_optimizer, auto.compile) == ("auto", "auto", False)


def test_channels_last_and_cudnn_benchmark_options(image_dir, tmp_path, monkeypatch):  # noqa: F811
    """--channels_last stores the convolution weights in NHWC order (the activations follow), --cudnn_benchmark sets
    cuDNN's autotuner; the first step's loss is the plain run's (same initial weights, same batch) up to the other
    kernels' float32 rounding, and the saved folder loads with the same values. (Later steps are not compared:
    Adam divides by the gradients' size, so rounding-level gradients of the zero-initialised layers move weights by
    the full learning rate in either direction.)"""
    from diffusers_linearizer import LinearizerModel

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    losses = {}
    for name, extra in (("plain", []), ("fast", ["--channels_last", "--cudnn_benchmark"])):
        trainer = _trainer(image_dir, tmp_path / name, "--train_batch_size", "4", "--max_train_steps", "2", *extra)
        convs = [p for p in trainer.unwrapped().parameters() if p.ndim == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) == bool(extra) for p in convs)
        stream = trainer.micro_batches()
        trainer.step(stream)
        losses[name] = trainer.log_losses()
        trainer.step(stream)
        if extra:
            assert torch.backends.cudnn.benchmark is True
            weights = {k: v.detach().clone() for k, v in trainer.unwrapped().state_dict().items()}
            trainer.unwrapped().save_pretrained(tmp_path / "saved")
    terms = [k for k in losses["plain"] if k.startswith("loss")]
    assert terms and set(losses["fast"]) == set(losses["plain"])
    for k in terms:
        v = losses["plain"][k]
        assert losses["fast"][k] == pytest.approx(v, rel=1e-5), k
    loaded = LinearizerModel.from_pretrained(tmp_path / "saved").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_channels_last_weights_give_the_same_values_and_gradients():
    """A perturbed model in channels-last order: f(x) and the gradients of a loss match the default layout's."""
    model = tiny_model(sample_size=8, num_blocks=2).eval()
    perturb_all(model, 0.05, seed=2)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    out = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=layout)
        model.zero_grad()
        y = model(x, 0.4).sample
        y.square().mean().backward()
        out[layout] = (y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (a, ga), (b, gb) = out[torch.contiguous_format], out[torch.channels_last]
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-4, atol=1e-6, msg=n)

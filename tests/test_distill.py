"""Distillation: teacher pairs (format, reproducibility, resume, bad input), the distill loss, objective mixes and
the trainer's checks. Teachers are tiny diffusers UNet2DModels built from a config in the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_linearizer.schedulers import LinearizerScheduler
from diffusers_linearizer.training import objective as tobj
from diffusers_linearizer.training.distill import TeacherPairs, chunk_noise, distill_terms, pairs_noise, read_pairs_file
from diffusers_linearizer.models.one_step import generate, invert
from diffusers_linearizer.training.one_step import collapsed_operator
from diffusers_linearizer.training.teacher import load_teacher, sample_teacher, write_teacher_pairs

from .utils import perturb_all, tiny_model

REPO = Path(__file__).resolve().parents[1]
SHARED_PAIRS = REPO.parent / "shared" / "distill"


def _tiny_teacher(path, size=8, channels=1, num_class_embeds=None):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4, num_class_embeds=num_class_embeds)
    if num_class_embeds:  # a fresh embedding is tiny beside the time embedding: make the classes differ visibly
        with torch.no_grad():
            unet.class_embedding.weight.mul_(30.0)
    unet.save_pretrained(path)
    return unet


def test_chunk_noise_is_the_documented_recipe():
    """Pair i's noise is row i % 1000 of randn((1000, 1, 32, 32)) seeded 1_000_000 + i // 1000 (on the CPU)."""
    ref = torch.randn((1000, 1, 32, 32), generator=torch.Generator().manual_seed(1_000_000))
    torch.testing.assert_close(chunk_noise(0, (1, 32, 32)), ref, rtol=0, atol=0)
    noise = pairs_noise(1003, (1, 32, 32))
    torch.testing.assert_close(noise[1000:], torch.randn((1000, 1, 32, 32), generator=torch.Generator().manual_seed(1_000_001))[:3])
    # the recipe's published check value, drawn with torch's vectorised (AVX2 / AVX-512) normal sampler; the
    # scalar kernel (ATEN_CPU_CAPABILITY=default) draws other numbers, which TeacherPairs detects (next test)
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        assert float(noise[:1000].double().sum()) == pytest.approx(-729.6948329462472, abs=1e-9)


def test_write_teacher_pairs_reproducible_and_resumable(tmp_path):
    teacher = tmp_path / "teacher"
    unet = _tiny_teacher(teacher)
    out = str(tmp_path / "pairs.npz")
    write_teacher_pairs(str(teacher), out, num_pairs=5, chunk_size=2, num_inference_steps=3, progress=False)
    images, chunk, seed, check = read_pairs_file(out)
    assert images.shape == (5, 8, 8) and images.dtype == np.uint8 and (chunk, seed) == (2, 1_000_000)
    assert check == pytest.approx(float(chunk_noise(0, (1, 8, 8), 2).double().sum()), abs=1e-12)
    # independent computation: diffusers' scheduler loop by hand on chunk 1's noise
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(3)
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(1_000_001))
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    expected = ((x + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)[:, 0].numpy()
    assert np.abs(images[2:4].astype(int) - expected.astype(int)).max() <= 1
    # resume: a lost chunk is remade, finished ones are kept, the result is the same
    os.remove(out)
    os.remove(os.path.join(out + ".parts", "chunk-00001-2.npy"))
    kept = os.path.getmtime(os.path.join(out + ".parts", "chunk-00000-2.npy"))
    write_teacher_pairs(str(teacher), out, num_pairs=5, chunk_size=2, num_inference_steps=3, progress=False)
    assert os.path.getmtime(os.path.join(out + ".parts", "chunk-00000-2.npy")) == kept
    np.testing.assert_array_equal(read_pairs_file(out)[0], images)
    # the dataset reads the pairs back with their noise
    ds = TeacherPairs(out, shape=(1, 8, 8))
    image, noise = ds[3]
    torch.testing.assert_close(image, torch.from_numpy(images[3]).float()[None] / 255)
    torch.testing.assert_close(noise, chunk_noise(1, (1, 8, 8), 2)[1])


def test_teacher_and_pairs_bad_input(tmp_path):
    teacher = tmp_path / "teacher"
    _tiny_teacher(teacher, size=8)
    with pytest.raises(ValueError, match="sample size and channels"):
        write_teacher_pairs(str(teacher), str(tmp_path / "p.npz"), 2, student_shape=(1, 16, 16), progress=False)
    with pytest.raises(ValueError, match=r"\.npz"):
        write_teacher_pairs(str(teacher), str(tmp_path / "p.bin"), 2, progress=False)
    with pytest.raises(FileNotFoundError):
        load_teacher(str(tmp_path / "missing"))
    bad = tmp_path / "float.npz"
    np.savez(bad, images=np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        read_pairs_file(str(bad))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="student makes"):
        TeacherPairs(str(wrong), shape=(1, 32, 32))
    drawn_elsewhere = tmp_path / "elsewhere.npz"  # a file whose noise this machine would draw differently
    np.savez(drawn_elsewhere, images=np.zeros((3, 8, 8), np.uint8), noise_check=np.float64(12345.0))
    with pytest.raises(ValueError, match="draws different noise"):
        TeacherPairs(str(drawn_elsewhere), shape=(1, 8, 8))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="readable"):
        read_pairs_file(str(tmp_path / "junk.npz"))


@pytest.mark.skipif(not (SHARED_PAIRS / "fmnist32_teacher_pairs.npz").is_file(), reason="no shared teacher pairs beside the repo")
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT",
                    reason="the pairs' noise was drawn with torch's vectorised normal sampler; the scalar kernel draws other noise")
def test_regenerates_the_shared_pairs_within_one_level():
    """The first pairs of the shared file (made on a GPU) regenerated with its teacher on the CPU, ≤ 1/255."""
    unet, sched = load_teacher(str(SHARED_PAIRS / "teacher"))
    stored = read_pairs_file(str(SHARED_PAIRS / "fmnist32_teacher_pairs.npz"))[0][:4]
    torch.set_num_threads(1)
    made = sample_teacher(unet, sched, chunk_noise(0, (1, 32, 32))[:4])[:, 0]
    assert np.abs(made.astype(int) - stored.astype(int)).max() <= 1


def test_distill_terms_against_direct_formulas():
    model = tiny_model(core_type="shared_basis").double().eval()
    perturb_all(model, 0.02)
    B = collapsed_operator(model, LinearizerScheduler(), 5, "euler")
    noise = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    images = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    terms = distill_terms(model, B, images, noise, tobj.mse)
    torch.testing.assert_close(terms["distill_image"], (generate(model, B, noise) - images).square().mean())
    torch.testing.assert_close(terms["distill_noise"], (invert(model, B, images) - noise).square().mean())
    terms["distill_image"].backward()
    assert model.core.U.grad is not None and model.core.s_mlp[-1].weight.grad is not None


def test_parse_objective():
    assert tobj.parse_objective("fast") == {"fast": 1.0}
    assert tobj.parse_objective("distill:1, likelihood:0.02") == {"distill": 1.0, "likelihood": 0.02}
    for bad, msg in (("fash", "Unknown objective"), ("fast,reference", "same loss"), ("distill:-1", "> 0"),
                     ("distill:x", "not a number"), ("fast,fast", "twice"), ("", "non-empty")):
        with pytest.raises(ValueError, match=msg):
            tobj.parse_objective(bad)


def test_objective_mix_weights_terms():
    model = tiny_model(core_type="shared_basis").eval()
    obj = tobj.LinearizerObjective(model, "distill:2,fast:0.5", weights={"distill_noise": 0.1}, num_inference_steps=4)
    gen = torch.Generator().manual_seed(0)
    noise, t, eps_y, eps_x = tobj.draw_step_noise((1, 8, 8), 6, gen)
    out = obj(torch.rand(6, 1, 8, 8), noise, t, eps_y, eps_x)
    expected = 2 * out["distill_image"] + 0.2 * out["distill_noise"] + 0.5 * sum(
        out[k] for k in tobj.TERMS if k in out)
    torch.testing.assert_close(out["loss"], expected)


def _train(args, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "diffusers_linearizer.training.train", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(REPO))


def test_trainer_distill_and_likelihood_runs_and_refusals(tmp_path):
    teacher = tmp_path / "teacher"
    _tiny_teacher(teacher)
    pairs = str(tmp_path / "pairs.npz")
    write_teacher_pairs(str(teacher), pairs, num_pairs=12, chunk_size=5, num_inference_steps=2, progress=False)
    tiny = ["--resolution", "8", "--num_blocks", "1", "--conditioner_channels", "4", "--conditioner_layers", "1",
            "--core_rank", "4", "--core_hidden_dim", "8", "--core_embedding_dim", "8", "--train_batch_size", "4",
            "--sample_steps", "0", "--no_final_samples", "--no_progress", "--checkpointing_steps", "0",
            "--sample_inference_steps", "4", "--cpu"]
    proc = _train(["--output_dir", str(tmp_path / "run"), "--teacher_pairs", pairs, "--objective",
                   "distill,likelihood:0.01", "--max_train_steps", "2", "--log_every", "1", *tiny])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loss/distill_image" in proc.stderr and "loss/likelihood_bpd" in proc.stderr
    assert (tmp_path / "run" / "model_index.json").is_file()
    from diffusers_linearizer.training import train as ttrain

    for extra, msg in ((["--objective", "distill"], "needs --teacher_pairs"),
                       (["--objective", "nope"], "Unknown objective"),
                       (["--objective", "distill", "--teacher_pairs", pairs, "--random_flip"], "random_flip")):
        with pytest.raises(ValueError, match=msg):
            ttrain.check_args(ttrain.parse_args(["--output_dir", str(tmp_path / "bad"), *tiny, *extra]))
    with pytest.raises(ValueError, match="ask for others"):  # the pairs are 8×8: refused before any training
        ttrain.main(["--output_dir", str(tmp_path / "bad"), *tiny, "--objective", "distill", "--teacher_pairs", pairs,
                     "--resolution", "16"])
    assert not (tmp_path / "bad" / "model_index.json").exists()


def _hand_loop(unet, noise, steps, labels=None):
    """diffusers' FlowMatchEulerDiscreteScheduler loop by hand, as uint8 levels (the pairs' format)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(steps)
    x = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t, class_labels=labels).sample, t, x).prev_sample
    return ((x + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)[:, 0].numpy().astype(int)


def test_class_teacher_pairs_are_drawn_under_their_labels(tmp_path):
    """A teacher with num_class_embeds draws pair i under class i mod K; the file carries the labels, the dataset
    returns them as the third item, and each image is diffusers' own loop under its label (not another's)."""
    from diffusers_linearizer.training.distill import stack_pairs
    from diffusers_linearizer.training.teacher import teacher_classes

    teacher = tmp_path / "teacher"
    unet = _tiny_teacher(teacher, num_class_embeds=3)
    out = str(tmp_path / "pairs.npz")
    write_teacher_pairs(str(teacher), out, num_pairs=5, chunk_size=2, num_inference_steps=3, progress=False)
    images = read_pairs_file(out)[0]
    with np.load(out) as data:
        np.testing.assert_array_equal(data["class_labels"], [0, 1, 2, 0, 1])
        assert int(data["num_classes"]) == 3
    noise = chunk_noise(1, (1, 8, 8), 2)  # pairs 2 and 3: classes 2 and 0
    mine = _hand_loop(unet, noise, 3, torch.tensor([2, 0]))
    assert np.abs(images[2:4].astype(int) - mine).max() <= 1
    other = _hand_loop(unet, noise, 3, torch.tensor([1, 1]))
    assert np.abs(images[2:4].astype(int) - other).max() > 8  # the label changed the teacher's sample
    ds = TeacherPairs(out, shape=(1, 8, 8))
    assert ds.num_classes == 3 and [int(ds[i][2]) for i in range(5)] == [0, 1, 2, 0, 1]
    batch = stack_pairs([ds[i] for i in range(3)])
    assert len(batch) == 3 and batch[2].tolist() == [0, 1, 2] and batch[0].shape == (3, 1, 8, 8)
    # two classes of the three: pairs of classes 0 and 1 only; the parts of the 3-class run are not reused
    two = str(tmp_path / "two.npz")
    write_teacher_pairs(str(teacher), two, num_pairs=4, chunk_size=2, num_inference_steps=3, progress=False,
                        num_classes=2)
    with np.load(two) as data:
        assert data["class_labels"].tolist() == [0, 1, 0, 1] and int(data["num_classes"]) == 2
    for bad, match in ((dict(num_classes=4), "1 … 3"), (dict(num_classes=0), "1 … 3")):
        with pytest.raises(ValueError, match=match):
            teacher_classes(unet, **bad)
    plain = tmp_path / "plain"
    with pytest.raises(ValueError, match="num_class_embeds"):
        teacher_classes(_tiny_teacher(plain), num_classes=2)
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, images=np.zeros((3, 8, 8), np.uint8), class_labels=np.array([0, 1, 5]), num_classes=np.int64(3))
    with pytest.raises(ValueError, match="0 … num_classes − 1 = 2"):
        TeacherPairs(str(labelled), shape=(1, 8, 8))


def test_class_distill_loss_is_each_pair_through_its_class_pipeline():
    """The class model's distill terms equal what the pipelines compute for each pair under its own class without
    guidance (guidance_scale 1: B(c)), one-step generation and exact inversion, averaged over the batch."""
    from diffusers_linearizer import LinearizerClassPipeline, LinearizerInversionPipeline

    model = tiny_model(core_type="shared_basis", conditioning="class", num_classes=3).double().eval()
    perturb_all(model, 0.02)
    obj = tobj.LinearizerObjective(model, "distill", num_inference_steps=5)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(5, 1, 8, 8, generator=gen, dtype=torch.float64)
    images = torch.rand(5, 1, 8, 8, generator=gen, dtype=torch.float64)
    labels = torch.tensor([2, 0, 2, 1, 0])
    out = obj(images, noise, *tobj.draw_step_noise((1, 8, 8), 5, gen, torch.float64)[1:], condition=labels)
    sched = LinearizerScheduler()
    pipe = LinearizerClassPipeline(model, sched)
    inv = LinearizerInversionPipeline(model, sched)
    for p in (pipe, inv):
        p.set_progress_bar_config(disable=True)
    kw = dict(class_labels=labels.tolist(), guidance_scale=1.0, num_inference_steps=5)
    made = pipe(latents=noise, output_type="pt", clamp=False, **kw).images
    found = inv(images, output_type="pt", **kw).noise
    torch.testing.assert_close(out["distill_image"], (made - images).square().mean(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out["distill_noise"], (found - noise).square().mean(), rtol=1e-9, atol=1e-12)
    out["loss"].backward()
    assert model.core.U.grad is not None


def test_trainer_distils_class_pairs_and_refuses_mismatches(tmp_path):
    teacher, plain_teacher = tmp_path / "teacher", tmp_path / "plain_teacher"
    _tiny_teacher(teacher, num_class_embeds=3)
    _tiny_teacher(plain_teacher)
    pairs, plain = str(tmp_path / "pairs.npz"), str(tmp_path / "plain.npz")
    write_teacher_pairs(str(teacher), pairs, num_pairs=12, chunk_size=6, num_inference_steps=2, progress=False)
    write_teacher_pairs(str(plain_teacher), plain, num_pairs=8, chunk_size=4, num_inference_steps=2, progress=False)
    tiny = ["--resolution", "8", "--num_blocks", "1", "--conditioner_channels", "4", "--conditioner_layers", "1",
            "--core_type", "shared_basis", "--core_rank", "4", "--core_hidden_dim", "8", "--core_embedding_dim", "8",
            "--train_batch_size", "4", "--sample_steps", "0", "--no_final_samples", "--no_progress",
            "--checkpointing_steps", "0", "--sample_inference_steps", "4", "--cpu"]
    proc = _train(["--output_dir", str(tmp_path / "run"), "--teacher_pairs", pairs, "--conditioning", "class",
                   "--objective", "distill,fast", "--max_train_steps", "2", "--log_every", "1", *tiny])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loss/distill_image" in proc.stderr
    from diffusers_linearizer import LinearizerClassPipeline

    trained = LinearizerClassPipeline.from_pretrained(str(tmp_path / "run"))
    assert trained.linearizer.config.num_classes == 3 and trained.linearizer.conditioning == "class"
    from diffusers_linearizer.training import train as ttrain

    for extra, match in ((["--teacher_pairs", plain, "--conditioning", "class"], "holds unconditional pairs"),
                         (["--teacher_pairs", pairs], "class-conditional")):
        with pytest.raises(ValueError, match=match):
            ttrain.main(["--output_dir", str(tmp_path / "bad"), *tiny, "--objective", "distill", *extra])
    assert not (tmp_path / "bad" / "model_index.json").exists()

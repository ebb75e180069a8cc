"""The measuring tools of ``benchmarks/``: Fréchet distance, normality statistics and baseline sampling,
each against an independent computation; the scripts' layout (one shared module, ``--help`` of each)."""

from __future__ import annotations

import ast
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

fmnist_classifier = pytest.importorskip("fmnist_classifier")
baseline = pytest.importorskip("baseline")
results = pytest.importorskip("results")


def test_frechet_distance_of_commuting_gaussians():
    # Diagonal covariances commute: FD = ‖μ₁ − μ₂‖² + Σ (√a − √b)².
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1, torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    mu1, mu2 = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))  # same rotation of both
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert fmnist_classifier.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert fmnist_classifier.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_general_case_matches_dense_sqrtm():
    # Non-commuting covariances: compare with tr(S1 + S2 − 2 sqrtm(S1 S2)) from an eigen-decomposition of S1 S2.
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 5, generator=gen, dtype=torch.float64), torch.randn(5, 5, generator=gen, dtype=torch.float64)
    s1, s2 = x @ x.T + 0.1 * torch.eye(5, dtype=torch.float64), y @ y.T + 0.1 * torch.eye(5, dtype=torch.float64)
    w = torch.linalg.eigvals(s1 @ s2)  # real positive: S1 S2 is similar to S1^½ S2 S1^½
    expected = float(torch.trace(s1) + torch.trace(s2) - 2 * w.real.clamp_min(0).sqrt().sum())
    zero = torch.zeros(5, dtype=torch.float64)
    assert fmnist_classifier.frechet_distance(zero, s1, zero, s2) == pytest.approx(expected, rel=1e-9)


def test_gaussian_stats_are_mean_and_unbiased_covariance():
    f = torch.randn(50, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mu, cov = fmnist_classifier.gaussian_stats(f)
    assert torch.allclose(mu, f.mean(0))
    assert torch.allclose(cov, torch.cov(f.T))


def test_classifier_shapes_and_bad_input():
    model = fmnist_classifier.FashionClassifier().eval()
    feats = fmnist_classifier.extract_features(model, torch.rand(3, 1, 32, 32), batch_size=2)
    assert feats.shape == (3, fmnist_classifier.FEATURES) and feats.dtype == torch.float64
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        model.features(torch.rand(3, 1, 28, 28))
    assert sum(p.numel() for p in model.parameters()) * 4 <= 5 * 2**20  # weights ≤ 5 MB


def test_normality_statistics():
    gen = torch.Generator().manual_seed(3)
    normal = results.normality(torch.randn(200, 100, generator=gen, dtype=torch.float64))
    assert abs(normal["mean"]) < 0.03 and abs(normal["std"] - 1) < 0.03
    assert normal["ks_p"] > 1e-3 and normal["jb_p"] > 1e-3
    uniform = results.normality((torch.rand(200, 100, generator=gen, dtype=torch.float64) - 0.5) * math.sqrt(12))
    assert uniform["excess_kurtosis"] == pytest.approx(-1.2, abs=0.05)  # the uniform law's excess kurtosis
    assert uniform["ks_p"] < 1e-6 and uniform["jb_p"] < 1e-6
    # the two series of the Kolmogorov tail agree where both converge, and hit the textbook 5% point
    assert results.ks_pvalue(1.1) == pytest.approx(2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * 1.21) for k in range(1, 40)), rel=1e-9)
    assert results.ks_pvalue(1.358) == pytest.approx(0.05, abs=1e-3)


def test_baseline_one_step_sample_is_the_velocity_extrapolation():
    # One FlowMatchEuler step from σ = 1 to 0 gives x = ε − v(ε, 1000): checked by hand on a tiny UNet.
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    images = baseline.sample(unet, 3, 1, seed=5, batch_size=2)
    assert images.shape == (3, 1, 8, 8)
    first = baseline.derive_seed(5, "baseline-sample", 0)
    eps = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(first))
    with torch.no_grad():
        x = eps - unet(eps, torch.full((2,), 1000.0)).sample
    assert torch.allclose(images[:2], ((x + 1) / 2).clamp(0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="num_inference_steps"):
        baseline.sample(unet, 1, 0)


def test_gpu_benchmark_quick_mode_runs_every_code_path(tmp_path):
    """``benchmarks/gpu.py --quick`` at tiny sizes on the CPU (torch.compile with dynamo's ``eager`` backend, graph
    capture only; the quick mode's one inductor compile skipped): every
    trainer variant, every sampling path and the collapse targets run; the fast path's images are the plain
    path's; the page names the hardware and says that GPU numbers are missing."""
    import json

    gpu = pytest.importorskip("gpu")
    out = tmp_path / "gpu.md"
    sizes = dict(resolution=8, train_batch=4, train_images=12, train_steps=1, train_warmup=1, sample_batch=2,
                 sample_repeats=1, unet_steps=2, collapse_small=4, collapse_large=4)
    argv = ["--quick", "--device", "cpu", "--compile-backend", "eager", "--no-inductor-check", "--output", str(out)]
    assert gpu.main(argv + [x for k, v in sizes.items() for x in ("--size", f"{k}={v}")]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    train, = results["training"]
    for key in ("plain", "fast", "fast + compile", "fast + compile + bf16", "fast + compile + tf32", "unet", "unet bf16"):
        assert train[key] > 0
    assert set(train["profiles"]) >= {"plain", "fast", "fast + compile"}  # every shipped trainer variant profiled
    assert all(p["kernels per step"] > 0 and p["kernel ms per step"] > 0 for p in train["profiles"].values())
    sample, = results["sampling"]
    assert sample["plain"] > 0 and sample["fast"] > 0 and sample["unet 50 steps"] > 0
    assert sample["fast max diff"] <= 1e-6 and sample["fast bfloat16 max diff"] <= 0.1
    assert sample["strict fast max diff"] <= 1e-6 and sample["strict plain vs plain max diff"] == 0  # no TF32 on a CPU
    assert 0 < sample["float32 vs float64 max diff"] < 1e-3  # the float32 pipeline against the model in float64
    assert [r["method"] for r in results["collapse"]] == ["dense", "ours", "ours", "ours"]
    page = out.read_text()
    assert "GPU numbers: not measured" in page and results["hardware"] in page and "| shipped |" in page
    assert results["compile_backend"] == "eager" and "inductor max diff" not in sample
    with pytest.raises(SystemExit):
        gpu.main(["--quick", "--size", "batch=two", "--output", str(out)])
    with pytest.raises(SystemExit):
        gpu.main(["--quick", "--parts", "training", "--output", str(out)])  # the part is called "train"
    # the goals' lines of a full GPU run, from these rows: 1.1× asked for ≥ 5× is not met, 0.5× asked for ≤ 1× is
    train.update({"plain": 1.0, "fast": 1.1, "fast + compile": 0.9, "fast + compile + bf16": 0.8,
                  "fast + compile + tf32": 0.7, "unet": 0.5, "unet bf16": 0.4})
    results.update(gpu=True, quick=False)
    gpu_page = pytest.importorskip("gpu_page")
    gpu_page.write_page(str(out), results, [], gpu.GOALS)
    goals = out.read_text().split("## Goals")[1]
    assert "1.1× the plain trainer (goal ≥ 5×: **not met**)" in goals and "0.45× the time of the faster UNet step" in goals
    assert "GPU numbers: not measured" not in out.read_text()
    # the quick mode's one inductor compile, when it ran, has its line on the page
    sample.update({"inductor first call s": 5.0, "inductor max diff": 2e-6, "inductor fell back": False,
                   "inductor warning": None})
    gpu_page.write_page(str(out), results, [], gpu.GOALS)
    assert "One compile with inductor" in out.read_text() and "2.0e-06" in out.read_text()
    # the page renders again from its JSON alone (argv and goals recorded): the same text
    page = out.read_text()
    out.unlink()
    assert gpu_page.main([str(out.with_suffix(".json"))]) == 0 and out.read_text() == page


def test_gpu_benchmark_budget_and_failures_keep_the_rows(tmp_path, monkeypatch):
    """A run with a time limit: ``--budget 0`` starts nothing and the page lists every step as not measured;
    a step that fails midway is recorded on the page (exit status 1) and the rows measured before it stay."""
    import json

    gpu = pytest.importorskip("gpu")
    out = tmp_path / "gpu.md"
    sizes = dict(resolution=8, train_batch=4, train_images=12, train_steps=1, train_warmup=1, sample_batch=2,
                 sample_repeats=1, unet_steps=2, collapse_small=4, collapse_large=4)
    argv = ["--quick", "--device", "cpu", "--compile-backend", "eager", "--no-inductor-check", "--no-profile",
            "--output", str(out)] + [x for k, v in sizes.items() for x in ("--size", f"{k}={v}")]
    assert gpu.main(argv + ["--budget", "0"]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert "training, shipped, plain" in results["skipped"] and "collapse targets" in results["skipped"]
    assert "training" not in results and "Not measured in this run" in out.read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("no strict check today")

    monkeypatch.setattr(gpu, "strict_check", broken)
    assert gpu.main(argv + ["--parts", "sample"]) == 1
    results = json.loads(out.with_suffix(".json").read_text())
    sample, = results["sampling"]
    assert sample["plain"] > 0 and sample["fast"] > 0 and "unet 50 steps" not in sample  # kept; the UNet came after
    assert results["errors"] == ["sample: RuntimeError: no strict check today"]
    assert "Steps that failed in this run" in out.read_text() and "no strict check today" in out.read_text()


def test_collapse_page_cites_the_gpu_run_only_when_it_was_one(tmp_path):
    """A CPU run's ``docs/benchmarks.md`` quotes the GPU targets from ``gpu.json`` beside it: only a full GPU run's,
    with the speed-up computed from its two timings."""
    import json

    collapse = pytest.importorskip("collapse")
    rows = [dict(D=12, T=100, method="dense", solver="euler", dtype="fp32", seconds=6.0, mem="1 GB"),
            dict(D=12, T=100, method="ours", solver="euler", dtype="fp32", seconds=0.02, mem="1 MB"),
            dict(D=48, T=100, method="ours", solver="euler", dtype="fp32", seconds=0.05, mem="2 MB"),
            dict(D=48, T=100, method="ours", solver="rk4", dtype="fp64", seconds=0.2, mem="8 MB")]
    path = tmp_path / "gpu.json"
    assert collapse.gpu_targets(str(path)) is None  # no file
    for gpu, quick in ((False, False), (True, True)):  # a CPU run, a quick run: nothing to quote
        path.write_text(json.dumps(dict(gpu=gpu, quick=quick, collapse=rows, hardware="H", date="d")))
        assert collapse.gpu_targets(str(path)) is None
    path.write_text(json.dumps(dict(gpu=True, quick=False, collapse=rows, hardware="Some GPU", date="2026-01-01")))
    line = collapse.gpu_targets(str(path))
    assert "Some GPU" in line and "**300×**" in line and "D = 48 ours took 0.050 s" in line and "0.200 s (RK4 fp64" in line
    path.write_text(json.dumps(dict(gpu=True, quick=False, collapse=rows[1:], hardware="H", date="d")))
    assert collapse.gpu_targets(str(path)) is None  # no dense row: no ratio to quote


def test_pairs_check_counts_level_differences():
    import numpy as np

    pairs_check = pytest.importorskip("pairs_check")
    stored = np.zeros((3, 2, 2), dtype=np.uint8)
    made = stored.copy()
    made[0, 0, 0] = 1          # one level: counted as differing, not over one level
    made[2, 1, 1] = 3          # three levels in image 2
    made[2, 0, 1] = 2
    out = pairs_check.compare(made, stored)
    assert out["pairs"] == 3 and out["max_level_difference"] == 3 and out["images_differing"] == 2
    assert out["pixels_over_one_level"] == 2 and out["images_over_one_level"] == [2]
    assert math.isclose(out["mean_level_difference"], 6 / 12)


# ---------------------------------------------------------------------- the scripts' layout
SCRIPTS = sorted(BENCH.glob("*.py"))
MODULES = {path.stem for path in SCRIPTS}
LIBRARIES = {"common", "evaluation", "gpu_training", "guidance_page", "projection_page", "results_page"}  # imported by the scripts, never run


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _runnable(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


def test_the_scripts_share_one_module_and_no_private_names():
    """Only ``common.py`` touches ``sys.path`` and accelerate's private state; every other module imports ``common``
    before the package (so that ``python benchmarks/NAME.py`` finds the checkout's package); no script imports a
    private name of another; no file passes 400 lines."""
    assert {path.stem for path in SCRIPTS if not _runnable(_tree(path))} == LIBRARIES
    for path in SCRIPTS:
        tree = _tree(path)
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 400, path.name
        nodes = list(ast.walk(tree))
        if path.stem != "common":
            assert not [n for n in nodes if isinstance(n, ast.Attribute) and ast.unparse(n) == "sys.path"], path.name
            assert "_reset_state" not in text, path.name
            tops = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            names = [n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in tops]
            package = [i for i, name in enumerate(names) if name.startswith("diffusers_linearizer")]
            assert "common" in names and (not package or names.index("common") < package[0]), path.name
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module in MODULES:
                assert not [a.name for a in node.names if a.name.startswith("_")], (path.name, node.module)


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.stem not in LIBRARIES], ids=lambda p: p.name)
def test_every_script_answers_help(script, monkeypatch, capsys):
    # as ``python benchmarks/NAME.py --help`` runs it (benchmarks/ on sys.path, the file as __main__)
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code in (0, None) and "usage:" in capsys.readouterr().out


def test_a_script_runs_as_documented_from_anywhere(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(BENCH / "gpu_page.py"), "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "usage: gpu_page.py" in out.stdout, out.stderr


def test_a_training_runs_checkpoints_and_their_trainer_state(tmp_path):
    """``common.run_checkpoints`` lists a run's complete checkpoints; ``common.trainer_state`` reads one's
    ``trainer_state.json`` (``quality.read_metrics`` takes the last one's steps and seconds from it)."""
    import json

    common = pytest.importorskip("common")
    quality = pytest.importorskip("quality")
    assert quality.read_metrics(str(tmp_path)) == {}
    with pytest.raises(FileNotFoundError, match="No complete checkpoints"):
        common.run_checkpoints(str(tmp_path))
    for step in (25, 50):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "train_seconds_this_run": step / 5}))
    (tmp_path / "checkpoints" / "checkpoint-75").mkdir()  # no trainer state: not complete
    found = common.run_checkpoints(str(tmp_path))
    assert list(found) == [25, 50] and common.trainer_state(found[50])["global_step"] == 50
    assert quality.read_metrics(str(tmp_path)) == {"steps": 50, "train_seconds": 10.0}
    with pytest.raises(ValueError, match="trainer_state.json"):
        common.trainer_state(str(tmp_path / "checkpoints" / "checkpoint-75"))


def test_precision_recall_against_a_brute_force_count():
    """``evaluation.precision_recall`` against loops over the points: a sample is precise when some real point's
    k-NN ball (its k-th nearest *other* real point) holds it; a real point is recalled likewise by the samples."""
    evaluation = pytest.importorskip("evaluation")
    gen = torch.Generator().manual_seed(5)
    real = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    fake = 0.5 * torch.randn(20, 3, generator=gen, dtype=torch.float64) + 1.2  # narrow and shifted

    def covered(points, balls, k):
        hits = 0
        for p in points:
            for i, c in enumerate(balls):
                others = sorted(float((c - o).norm()) for j, o in enumerate(balls) if j != i)
                if float((p - c).norm()) <= others[k - 1]:
                    hits += 1
                    break
        return hits / len(points)

    precision, recall = evaluation.precision_recall(real, fake, k=3)
    assert precision == pytest.approx(covered(fake, real, 3)) and recall == pytest.approx(covered(real, fake, 3))
    assert 0 < precision < 1 and 0 < recall < 1  # the case is not trivial
    assert evaluation.precision_recall(real, real.clone(), k=3) == (1.0, 1.0)


def _write_idx(path, array):
    """A gzip idx file of a uint8 array (the Fashion-MNIST format)."""
    import gzip
    import struct

    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def test_gpu_training_script_quick_mode_writes_what_comes_back(tmp_path):
    """``benchmarks/train_gpu.py --quick`` on a CPU, on a made-up Fashion-MNIST folder: the speed part measures the
    trainer with and without ``--cudnn_benchmark --channels_last``, the candidate trains, the evaluation runs, and the
    files a device run brings back are written: the page, its JSON, the grid and a model that loads with the
    candidate's layout and is exact (one-step vs stepped)."""
    import json

    import numpy as np

    train_gpu = pytest.importorskip("train_gpu")
    from diffusers_linearizer import LinearizerModel

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("t10k", 200)):
        _write_idx(data / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(data / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    code = train_gpu.main(["--quick", "--data-dir", str(data), "--out", str(out), "--candidate", "three_scales",
                           "--train-seconds", "4"])
    result = json.loads((out / "train_gpu.json").read_text())
    assert code == 0 and result["errors"] == []
    speed = result["speed"]
    assert speed["plain"] > 0 and speed["fast + cudnn.benchmark + channels_last"] > 0
    assert set(speed["ratios"]) == {"fast + cudnn.benchmark + channels_last"}
    assert [p["objective"] for p in result["train"]["phases"]] == ["likelihood"] and result["train"]["phases"][0]["steps"] > 0
    q = result["evaluation"]
    assert q["fd"] > 0 and q["fd_report"] > 0 and 0 <= q["precision"] <= 1 and q["one_step_vs_stepped_db"] > 60
    model = LinearizerModel.from_pretrained(out / "linearizer")
    assert model.config.num_scales == 3 and model.config.noise_prior_rank == 0
    assert (out / "train_gpu.png").is_file() and "three_scales" in (out / "train_gpu.md").read_text()
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        ["train_gpu.json", "train_gpu.md", "train_gpu.png", "config.json", "diffusion_pytorch_model.safetensors"])


def _arch_row(name, fd, fd_report, bpd=3.5):
    return {"name": name, "g_parameters": 1e5, "parameters": 1e6, "steps": 10, "temperature": 1.0, "fd": fd,
            "fd_report": fd_report, "precision": 0.5, "recall": 0.1, "fd_at_temperature_1": fd,
            "fd_report_at_temperature_1": fd_report, "bits_per_dim": bpd, "one_step_vs_stepped_db": 120.0,
            "grid": f"images/{name}.png"}


def test_architecture_page_verdicts():
    """The page names the candidate the selection FD ranks first, and says whether the reporting extractor agrees."""
    page = pytest.importorskip("architectures_page")
    base = dict(date="d", hardware="H", budget_seconds=60, objective="likelihood", samples=100)
    agree = page.render(dict(base, rows=[_arch_row("one_scale", 200, 20), _arch_row("three_scales", 150, 15)]))
    assert "**three_scales** (150.0, against 200.0 for the default's layout); the reporting extractor agrees" in agree
    split = page.render(dict(base, rows=[_arch_row("one_scale", 200, 14, 3.0), _arch_row("three_scales", 150, 15)]))
    assert "the reporting extractor ranks one_scale first (14.00" in split
    assert "one_scale 3.000, three_scales 3.500" in split


def test_untied_page_says_whether_it_shipped():
    untied = pytest.importorskip("untied")
    row = dict(noise="n", precision=0.5, recall=0.5, grid="g.png")
    base = dict(date="d", hardware="H", g_parameters=200, training="t", sampling_temperature=1.6,
                noise_prior_temperature=1.7, samples=10)
    better = [dict(row, name="packaged", fd=40, fd_report=7.0), dict(row, name="untied", fd=50, fd_report=6.0)]
    worse = [dict(row, name="packaged", fd=40, fd_report=7.0), dict(row, name="untied", fd=30, fd_report=7.5)]
    assert "shipped as the packaged default" in untied.render(dict(base, rows=better, shipped=True))
    assert "**Better by the reporting extractor.**" in untied.render(dict(base, rows=better, shipped=False))
    assert "**Not shipped**" in untied.render(dict(base, rows=worse, shipped=False))


def test_noise_prior_only_keeps_the_other_study_with_its_own_run(tmp_path, monkeypatch):
    """``--only`` re-measures one model: the other study comes back from the page's JSON under the run that measured
    it, and the page names each section's run and the class model's in-class condition."""
    import json

    script, page = pytest.importorskip("noise_prior"), pytest.importorskip("noise_prior_page")
    row = dict(fd_select_train=50.0, fd_select=51.0, fd_report=6.0, precision=0.7, recall=0.6)
    old_default = dict(name="fashion-mnist", rows=[dict(row, name="N(0, I), τ = 1", prior=None, temperature=1.0)],
                       chosen="N(0, I), τ = 1", base="N(0, I), τ = 1", base_temperature=1.0, fit_images=10, fit_seconds=1.0, noise_std=0.6,
                       nearest_distance=dict(chosen=5.0, shipped_noise=6.0, test_images=4.0), ship=False)
    old = dict(date="2026-01-01", hardware="OLD", args=dict(samples=100), seconds=60.0,
               studies=[old_default, dict(old_default, name="fashion-mnist-classes")])
    (tmp_path / "noise_prior.json").write_text(json.dumps(old), encoding="utf-8")
    monkeypatch.setattr(script, "DOCS", str(tmp_path))
    assert script.kept_studies(None) == []
    kept = script.kept_studies("fashion-mnist-classes")
    assert [s["name"] for s in kept] == ["fashion-mnist"] and kept[0]["hardware"] == "OLD"
    cls = dict(old_default, name="fashion-mnist-classes", date="2026-02-02", hardware="NEW", args=dict(samples=200),
               seconds=120.0, min_accuracy_select=0.9,
               rows=[dict(row, name="N(0, I), τ = 1", prior=None, temperature=1.0, accuracy_select=0.95,
                          accuracy_report=0.89),
                     dict(row, name="mixture", prior=[1023, 1], temperature=0.3, fd_report=5.0, accuracy_select=0.91,
                          accuracy_report=0.87)], chosen="mixture")
    text = page.render(dict(date="2026-02-02", hardware="NEW", args=dict(samples=200), seconds=120.0,
                            studies=kept + [cls]))
    assert "Measured on 2026-01-01 (OLD, 1 min)" in text and "Every row: 100 one-step samples" in text
    assert "Measured on 2026-02-02 (NEW, 2 min)" in text and "Every row: 200 one-step samples" in text
    assert "among the rows with at least 90 % in class (select)): **mixture**" in text
    assert "in class (report) 89.0 % → 87.0 %: **not shipped**" in text
    cls["rows"][1]["accuracy_select"] = 0.5  # no row reached the floor: the page says the choice fell back to all rows
    text = page.render(dict(date="d", hardware="h", args=dict(samples=200), seconds=1.0, studies=[cls]))
    assert "no row reached 90 % in class (select), so among all rows): **mixture**" in text


def test_baseline_trains_a_class_conditional_teacher_that_distill_data_reads(tmp_path):
    """``baseline.py --class_conditional``: a UNet2DModel with one class embedding per Fashion-MNIST class, trained
    under each image's label; its snapshot is a teacher whose pairs carry their labels."""
    import numpy as np
    from diffusers import UNet2DModel

    from diffusers_linearizer.training.teacher import write_teacher_pairs

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(data / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 28, 28), dtype=np.uint8))
    _write_idx(data / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 40, dtype=np.uint8))
    out = tmp_path / "teacher"
    assert baseline.main(["--class_conditional", "--target_params", "1", "--data_dir", str(data), "--output_dir",
                          str(out), "--train_batch_size", "8", "--max_train_steps", "2", "--save_every", "2",
                          "--log_every", "1", "--threads", "1"]) == 0
    unet = UNet2DModel.from_pretrained(out / "snapshots" / "step-2")
    assert unet.config.num_class_embeds == 10 and unet.class_embedding.weight.shape[0] == 10
    x, noise, sigma = torch.rand(2, 1, 32, 32), torch.randn(2, 1, 32, 32), torch.full((2,), 0.5)
    with torch.no_grad():
        unet.class_embedding.weight.mul_(30.0)  # young embeddings are small: make the label's effect plain
        a, b = (baseline.flow_matching_loss(unet, x, noise, sigma, torch.tensor(c)) for c in ([0, 1], [2, 3]))
    assert not torch.isclose(a, b)  # the class reaches the network
    pairs = tmp_path / "pairs.npz"
    write_teacher_pairs(str(out / "snapshots" / "step-2"), str(pairs), num_pairs=3, num_inference_steps=1,
                        progress=False)
    with np.load(pairs) as f:
        assert f["class_labels"].tolist() == [0, 1, 2] and int(f["num_classes"]) == 10

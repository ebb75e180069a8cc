"""Conditional training end to end (class folders, captions with a tiny CLIP text model), condition dropout,
and the command line's ``generate --class``; the trainer and the command line run in this process
(their ``cli_main``/``main``, what ``python -m`` calls) on 8×8 images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusers_linearizer import LinearizerPipeline
from diffusers_linearizer.cli import main as cli
from diffusers_linearizer.training.conditions import drop_conditions
from diffusers_linearizer.training.train import cli_main as train_cli

from .test_conditioning import _tiny_text

TINY = ["--resolution", "8", "--channels", "1", "--num_blocks", "2", "--conditioner_channels", "8",
        "--conditioner_layers", "1", "--core_type", "shared_basis", "--core_rank", "4", "--core_hidden_dim", "16",
        "--core_embedding_dim", "8", "--train_batch_size", "6", "--max_train_steps", "2", "--sample_steps", "0",
        "--no_progress", "--num_samples", "4", "--sample_inference_steps", "4"]


def _images(root, folders):
    import PIL.Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(12):
        sub = root / folders[i % len(folders)] if folders else root
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:03d}.png"
        PIL.Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(path)
        files.append(path)
    return files


def _train(data, out, *extra):
    """``python -m diffusers_linearizer.training.train`` in this process (its ``cli_main``): the exit status."""
    return train_cli(["--train_data_dir", str(data), "--output_dir", str(out), *TINY, *extra])


def test_class_folders_train_a_class_conditional_pipeline_and_generate_by_name(tmp_path, capsys):
    _images(tmp_path / "data", ["boots", "bags"])
    assert _train(tmp_path / "data", tmp_path / "out", "--conditioning", "class") == 0
    assert (tmp_path / "out" / "samples").is_dir()
    pipe = LinearizerPipeline.from_pretrained(tmp_path / "out")
    assert pipe.id2label == {0: "bags", 1: "boots"} and pipe.linearizer.conditioning == "class"
    cmd = ["generate", "--model", str(tmp_path / "out"), "--steps", "4", "-n", "2", "--class", "boots",
           "--guidance-scale", "2", "--output", str(tmp_path / "g.png"), "--no-progress"]
    assert cli(cmd) == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "g.png").is_file()
    capsys.readouterr()
    assert cli(cmd[:-7] + ["--class", "hats", "--output", str(tmp_path / "h.png")]) != 0
    err = capsys.readouterr().err
    assert "'hats'" in err and "'bags'" in err
    assert not (tmp_path / "h.png").exists()


def test_captions_train_a_text_conditional_pipeline_with_its_text_encoder(tmp_path):
    files = _images(tmp_path / "data", None)
    words = ["a red cat", "a blue dog", "red dog"]
    with open(tmp_path / "data" / "metadata.jsonl", "w", encoding="utf-8") as f:
        for i, path in enumerate(files):
            f.write(json.dumps({"file_name": path.name, "caption": words[i % 3]}) + "\n")
    tokenizer, encoder = _tiny_text()
    tokenizer.save_pretrained(tmp_path / "clip" / "tokenizer")
    encoder.save_pretrained(tmp_path / "clip" / "text_encoder")
    assert _train(tmp_path / "data", tmp_path / "out", "--conditioning", "text", "--caption_column", "caption",
                  "--text_encoder", str(tmp_path / "clip")) == 0
    pipe = LinearizerPipeline.from_pretrained(tmp_path / "out")
    assert pipe.linearizer.config.condition_dim == 16 and pipe.tokenizer is not None
    images = pipe(prompt=["a red cat", "blue dog"], num_inference_steps=4, output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and bool(torch.isfinite(images).all())


@pytest.mark.parametrize("extra, match", [
    (["--conditioning", "text"], "needs --text_encoder"),
    (["--conditioning", "class", "--objective", "projection_likelihood"], "the objectives that take conditions"),
    (["--conditioning", "text", "--objective", "likelihood", "--text_encoder", "x"], "one collapse per prompt"),
    (["--conditioning", "class", "--condition_dropout", "1.0"], "condition_dropout"),
])
def test_conditional_training_errors(tmp_path, capsys, extra, match):
    assert _train(tmp_path, tmp_path / "o", *extra) != 0
    assert match in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_loose_images_in_a_class_folder_are_refused(tmp_path, capsys):
    _images(tmp_path / "data", None)
    assert _train(tmp_path / "data", tmp_path / "o", "--conditioning", "class") != 0
    assert "one sub-folder per class" in capsys.readouterr().err


def test_condition_dropout_replaces_by_the_null_condition():
    drop = torch.tensor([True, False, True])
    assert drop_conditions(torch.tensor([4, 5, 6]), drop, 10).tolist() == [10, 5, 10]
    assert drop_conditions(["a", "b", "c"], drop, None) == ["", "b", ""]


def test_class_likelihood_is_the_change_of_variables_of_each_class_s_map():
    """``log p(x | c)`` of the objective against an independent computation: the pipeline's cached ``B(c)``
    inverted image by image, and ``log|det ∂ε/∂x|`` from the autograd Jacobian of that whole map (float64)."""
    import math

    from diffusers_linearizer import LinearizerClassPipeline, LinearizerScheduler
    from diffusers_linearizer.training.likelihood import class_likelihood_terms

    from .utils import perturb_all, tiny_model

    torch.manual_seed(0)
    model = tiny_model(core_type="shared_basis", conditioning="class", num_classes=3).double().eval()
    perturb_all(model, 0.05, seed=1)
    scheduler = LinearizerScheduler()
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    uniform = torch.rand(images.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.tensor([2, 0, 2])
    got = class_likelihood_terms(model, scheduler, 6, "euler", images, uniform, labels)["likelihood_bpd"]
    pipe = LinearizerClassPipeline(linearizer=model, scheduler=LinearizerScheduler())
    x = ((images * 255).round() + uniform) / 256
    bpd = []
    for i, c in enumerate(labels.tolist()):
        B = pipe.collapsed_operator(6, "euler", core=pipe.guided_view(c, None, 0.0))

        def to_noise(v):
            z = model.apply_g(v.view(1, 1, 8, 8), "x")
            return model.apply_g(B.apply_images(z, inverse=True), "y", inverse=True).flatten()

        eps = to_noise(x[i])
        jac = torch.autograd.functional.jacobian(to_noise, x[i])
        logp = -0.5 * eps.square().sum() - 32 * math.log(2 * math.pi) + torch.linalg.slogdet(jac.view(64, 64))[1]
        bpd.append((-logp + 64 * math.log(256)) / (64 * math.log(2)))
    assert abs(float(got.detach()) - float(torch.stack(bpd).mean().detach())) < 1e-4  # float32 result of float64 algebra


def test_class_models_train_for_likelihood(tmp_path):
    _images(tmp_path / "data", ["cat", "dog"])
    assert _train(tmp_path / "data", tmp_path / "out", "--conditioning", "class", "--objective", "likelihood") == 0
    pipe = LinearizerPipeline.from_pretrained(tmp_path / "out")
    images = pipe(class_labels=["dog", "cat"], num_inference_steps=4, output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and bool(torch.isfinite(images).all())

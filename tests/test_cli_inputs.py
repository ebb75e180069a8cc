"""Bad command-line input: one line ``diffusers-linearizer CMD: error: ...`` naming the flag or the file, exit
status 2, and nothing written — every check runs before a model is loaded or a file is written."""

import PIL.Image
import pytest
import torch

import diffusers_linearizer.cli as cli
from diffusers_linearizer.cli import main

from .test_cli import exit_status, model_dir  # noqa: F401  (the module's fixture)
from .test_pipeline import STEPS


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the argument checks must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "load_pipeline", forbidden)


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"diffusers-linearizer {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv, flag", [
    (["generate", "--seed", str(2**70)], "--seed"),
    (["generate", "--seed", "-1"], "--seed"),
    (["generate", "--nrow", "-2"], "--nrow"),
    (["generate", "--nrow", "0"], "--nrow"),
    (["generate", "--num-images", "0"], "--num-images"),
    (["generate", "--batch-size", "-3"], "--batch-size"),
    (["generate", "--steps", "1"], "--steps"),
    (["generate", "--temperature", "nan"], "--temperature"),
    (["generate", "--guidance-scale", "inf"], "--guidance-scale"),
    (["interpolate", "a.png", "b.png", "--duration", "-5"], "--duration"),
    (["interpolate", "a.png", "b.png", "--frames", "1"], "--frames"),
    (["demo", "--port", "70000"], "--port"),
])
def test_bad_numbers_are_refused_by_the_parser(argv, flag, capsys, no_model):
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err and "Overflow" not in err


def test_the_last_seed_of_a_run_must_exist(capsys, no_model):
    assert main(["generate", "--seed", str(2**64 - 4), "-n", "16"]) == 2
    line = _one_line_error(capsys, "generate")
    assert "--seed" in line and str(2**64 - 16) in line


@pytest.mark.parametrize("flag, argv", [
    ("--save-tensors", ["generate", "-n", "1"]),
    ("--output", ["generate", "-n", "1"]),
    ("--save-noise", ["invert", "IMAGE"]),
    ("--gif", ["interpolate", "IMAGE", "IMAGE"]),
])
def test_an_output_file_that_is_a_folder_is_refused_before_any_work(flag, argv, tmp_path, capsys, no_model):
    image = tmp_path / "in.png"
    PIL.Image.new("L", (8, 8)).save(image)
    folder = tmp_path / "folder"
    folder.mkdir()
    argv = [str(image) if a == "IMAGE" else a for a in argv]
    extra = [] if flag == "--output" else ["--output", str(tmp_path / "grid.png")]
    assert main([*argv, *extra, flag, str(folder)]) == 2
    line = _one_line_error(capsys, argv[0])
    assert flag in line and "folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "in.png"]  # nothing written


def test_outputs_in_an_unwritable_place_or_with_the_wrong_extension(tmp_path, capsys, no_model):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["generate", "-n", "1", "-o", str(blocker / "sub" / "g.png")]) == 2
    assert "is a file" in _one_line_error(capsys, "generate")
    assert main(["generate", "-n", "1", "-o", str(tmp_path / "g.png"), "--save-tensors", str(tmp_path / "t.npy")]) == 2
    assert ".pt" in _one_line_error(capsys, "generate")
    assert main(["generate", "-n", "1", "-o", str(tmp_path / "g.png"), "--save-images", str(blocker)]) == 2
    assert "--save-images" in _one_line_error(capsys, "generate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("damage", ["truncated", "not an image", "folder", "missing"])
def test_an_unreadable_image_to_invert_is_named(damage, tmp_path, capsys, no_model):
    good = tmp_path / "good.png"
    PIL.Image.new("L", (8, 8), 128).save(good)
    bad = tmp_path / "bad.png"
    if damage == "truncated":
        PIL.Image.effect_noise((64, 64), 50).convert("L").save(bad)
        bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    elif damage == "not an image":
        bad.write_bytes(b"hello, this is text")
    elif damage == "folder":
        bad.mkdir()
    out = tmp_path / "out.png"
    assert main(["invert", str(good), str(bad), "-o", str(out)]) == 2
    line = _one_line_error(capsys, "invert")
    assert str(bad) in line
    assert not out.exists()


def test_the_same_file_for_two_outputs_is_refused(tmp_path, capsys, no_model):
    image = tmp_path / "in.png"
    PIL.Image.new("L", (8, 8)).save(image)
    same = str(tmp_path / "same.gif")
    assert main(["interpolate", str(image), str(image), "-o", same, "--gif", same]) == 2
    assert "same file" in _one_line_error(capsys, "interpolate")


def test_pipeline_errors_name_the_flag(model_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "g.png"
    assert main(["generate", "--model", str(model_dir), "-n", "1", "-o", str(out), "--class", "Bag"]) == 2
    line = _one_line_error(capsys, "generate")
    assert "unconditional" in line
    assert not out.exists()


def test_nrow_larger_than_the_images_is_capped(model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "g.png"
    assert main(["generate", "--model", str(model_dir), "-n", "2", "--nrow", "5", "--steps", str(STEPS),
                 "-o", str(out), "--no-progress"]) == 0
    assert PIL.Image.open(out).size == (2 * 10 + 2, 10 + 2)  # one row of two 8-px images, 2-px padding


def test_saved_tensors_load_without_unpickling_code(model_dir, tmp_path):  # noqa: F811
    path = tmp_path / "t.pt"
    assert main(["generate", "--model", str(model_dir), "-n", "1", "--steps", str(STEPS), "-o",
                 str(tmp_path / "g.png"), "--save-tensors", str(path), "--no-progress"]) == 0
    assert torch.load(path, weights_only=True).shape == (1, 1, 8, 8)

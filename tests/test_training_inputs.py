"""Bad training input fails before any work, naming the flag or the files: numbers that are not finite, image
folders with unreadable files, folders smaller than one batch."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import pytest

from diffusers_linearizer.cli import main
from diffusers_linearizer.training import train as ttrain
from diffusers_linearizer.training import trainer as ttrainer
from diffusers_linearizer.training.data import ImageFolderDataset

from .test_training import TINY


def _folder(root, n=6, size=(8, 8), mode="L"):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 255, size=(size[1], size[0]) + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
        PIL.Image.fromarray(arr, mode).save(root / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("flag", ["--learning_rate", "--noise_level", "--ema_decay", "--max_train_seconds",
                                  "--weight_latent_flow", "--adam_beta1"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_numbers_that_are_not_finite_are_refused_by_the_parser(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--output_dir", str(tmp_path / "run"), f"{flag}={value}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "finite" in err
    assert not (tmp_path / "run").exists()


def test_a_learning_rate_of_zero_is_refused(tmp_path, capsys):
    assert main(["train", "--output_dir", str(tmp_path / "run"), "--learning_rate", "0"]) == 2
    assert "--learning_rate must be a number > 0" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_unreadable_images_are_named_before_any_work(damage, tmp_path):
    root = _folder(tmp_path / "data", n=8)
    bad = root / "sub" / "zz_bad.png"
    bad.parent.mkdir()
    if damage == "truncated":
        PIL.Image.effect_noise((64, 64), 40).convert("L").save(bad)
        bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    elif damage == "text":
        bad.write_text("not an image")
    else:
        bad.write_bytes(b"")
    with pytest.raises(ValueError) as info:
        ImageFolderDataset(str(root), resolution=8, channels=1)
    text = str(info.value)
    assert os.path.join("sub", "zz_bad.png") in text and "1 of 9 image files" in text and "--train_data_dir" in text


def test_many_unreadable_images_are_counted(tmp_path):
    root = _folder(tmp_path / "data", n=2)
    for i in range(7):
        (root / f"bad{i}.png").write_text("x")
    with pytest.raises(ValueError, match=r"7 of 9 image files cannot be read: .* and 2 more"):
        ImageFolderDataset(str(root), resolution=8, channels=1)


def test_images_of_mixed_sizes_and_modes_are_resized_and_cropped(tmp_path):
    root = _folder(tmp_path / "data", n=3, size=(8, 8))
    _folder(root / "big", n=2, size=(20, 12), mode="RGB")
    ds = ImageFolderDataset(str(root), resolution=8, channels=1)
    assert len(ds) == 5 and all(ds[i].shape == (1, 8, 8) for i in range(5))


def test_a_folder_smaller_than_one_batch_names_the_flag(tmp_path):
    root = _folder(tmp_path / "data", n=5)
    args = ttrain.parse_args(["--train_data_dir", str(root), "--output_dir", str(tmp_path / "run"), *TINY, "--cpu",
                              "--train_batch_size", "8", "--max_train_steps", "1"])
    ttrain.check_args(args)
    with pytest.raises(ValueError, match=r"5 images, fewer than one global batch .* lower --train_batch_size to at most 5"):
        ttrainer.Trainer(args)
    assert not (tmp_path / "run" / "checkpoints").exists()

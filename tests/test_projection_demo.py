"""The demo's Project tab callbacks around a tiny projection pipeline: generation lands on fixed points, the
corruptions are what they say, projecting a corrupted image is f of it, and bad input gives a message."""

from __future__ import annotations

import PIL.Image
import pytest
import torch

from diffusers_linearizer import LinearizerProjectionPipeline
from diffusers_linearizer.demo.images import DemoError
from diffusers_linearizer.demo.project_view import CORRUPTIONS, ProjectionDemo, corrupt

from .utils import tiny_model


@pytest.fixture(scope="module")
def project():
    torch.manual_seed(0)
    model = tiny_model(core_type="projection_orthogonal", core_rank=12, role_x=1.0, role_y=1.0).eval()
    pipe = LinearizerProjectionPipeline(linearizer=model)
    pipe.set_progress_bar_config(disable=True)
    return ProjectionDemo(pipeline=pipe)


def test_generate_shows_samples_that_f_does_not_move(project):
    grid, message = project.generate(0, 4, 1.0)
    assert isinstance(grid, PIL.Image.Image)
    moved = float(message.split("at most **")[1].split("**")[0])
    assert moved < 1e-4


def test_corruptions_are_what_they_say():
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    noisy, _ = corrupt(x, CORRUPTIONS[1])
    assert 0.2 < float((noisy - x).std()) < 0.4
    masked, mask = corrupt(x, CORRUPTIONS[2])
    assert 0.1 < float(mask.mean()) < 0.5 and torch.equal(masked[mask.bool()], torch.zeros(int(mask.sum())))
    blurred, _ = corrupt(torch.ones(1, 1, 8, 8), CORRUPTIONS[3])
    assert torch.allclose(blurred, torch.ones(1, 1, 8, 8))  # a normalised kernel keeps constants
    assert torch.equal(corrupt(x, CORRUPTIONS[4])[0], 1 - x)
    with pytest.raises(DemoError, match="Unknown corruption"):
        corrupt(x, "melted")


def test_project_returns_the_input_its_projection_and_the_same_again(project):
    image = PIL.Image.fromarray((torch.rand(8, 8, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy())
    shown, projected, again, message = project.project(image, CORRUPTIONS[0], 0)
    assert shown.size == projected.size == again.size == (8, 8)
    x = torch.from_numpy(__import__("numpy").asarray(image, dtype="float32") / 255.0)[None, None]
    expected = project.pipe(x, output_type="pt").images[0, 0]
    got = torch.from_numpy(__import__("numpy").asarray(projected, dtype="float32") / 255.0)
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6
    assert "Distance of the input to the range" in message
    with pytest.raises(DemoError, match="Load an image first"):
        project.project(None, CORRUPTIONS[0], 0)
    with pytest.raises(DemoError, match="Number of images"):
        project.generate(0, 0, 1.0)

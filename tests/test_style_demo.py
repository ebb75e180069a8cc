"""The demo's Style tab callbacks (no browser needed): stylise, blend, and the un-stylisation round trip's PSNR."""

import pytest

from diffusers_linearizer import LinearizerStyleTransferPipeline
from diffusers_linearizer.demo.images import DemoError
from diffusers_linearizer.demo.style_tab import StyleDemo, sample_photo

from .test_style_pipeline import style_model


def test_style_tab_callbacks():
    pipe = LinearizerStyleTransferPipeline(linearizer=style_model())
    demo = StyleDemo(pipeline=pipe)
    assert demo.style_names() == ["ink", "pastel", "mosaic"]
    photo = sample_photo(21)  # odd size: the last row and column go
    styled, message = demo.stylize(photo, "ink", "pastel", 0.25, 0.8, True)
    assert styled.size == (20, 20) and "0.75·ink + 0.25·pastel" in message
    recovered, message = demo.unstylize(photo, "ink", "none", 0.5, 1.0)
    db = float(message.split("**")[1].split()[0])
    assert recovered.size == (20, 20) and db > 60
    with pytest.raises(DemoError, match="Load a photo"):
        demo.stylize(None, "ink", "none", 0, 1, False)
    with pytest.raises(DemoError, match="Unknown style"):
        demo.stylize(photo, "sepia", "none", 0, 1, False)

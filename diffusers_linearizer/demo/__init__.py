"""A web demo (gradio) of what a Linearizer pipeline does that others do not.

One-step generation that equals the stepped sampler, exact inversion of an image to its noise,
interpolation between two images in noise space, and edits along the singular vectors of the linear core.

* :mod:`.callbacks` — the callbacks behind the tabs (plain Python, no gradio): :class:`LinearizerDemo`,
  :func:`get_demo` (one loaded pipeline per process); :mod:`.images` (uploads, fitting, pictures of noise,
  GIFs) and :mod:`.inputs` (checks of the page's values, what the pipeline's call accepts);
* :mod:`.app` — the gradio page (:func:`build_app`, :func:`launch`); gradio is imported only there, so the
  package works without it (``pip install "diffusers-linearizer[demo]"`` installs it).

Start it with ``diffusers-linearizer demo`` or ``python app.py`` (the Hugging Face Space entry point).
"""

from .callbacks import DemoError, LinearizerDemo, get_demo

__all__ = ["DemoError", "LinearizerDemo", "get_demo", "build_app", "launch"]


def build_app(*args, **kwargs):
    """The gradio ``Blocks`` of the demo (see :func:`diffusers_linearizer.demo.app.build_app`); needs gradio."""
    from .app import build_app as _build_app

    return _build_app(*args, **kwargs)


def launch(*args, **kwargs):
    """Build and serve the demo (see :func:`diffusers_linearizer.demo.app.launch`); needs gradio."""
    from .app import launch as _launch

    return _launch(*args, **kwargs)

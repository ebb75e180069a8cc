"""The gradio page of the demo: four tabs around :class:`~.callbacks.LinearizerDemo`.

Only this module imports gradio (``pip install "diffusers-linearizer[demo]"``). Analytics and gradio's
version check are switched off before gradio is imported, gradio's fonts are served locally, and the packaged
model needs no download, so starting the demo makes no network request (``--share`` aside).

Every button goes through :func:`_guarded`: a refused request (:class:`DemoError`, or a ``ValueError`` from
the pipelines) becomes a message in the tab's status line, anything else a short message too (the
traceback goes to the server log), and the app keeps serving. Long work reports progress through
``gr.Progress`` (which also follows the pipelines' tqdm bars).
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Optional, Sequence

from ..schedulers import SOLVERS
from .analysis_view import DIRECTION_SETS
from .callbacks import MAX_FRAMES, MAX_IMAGES, LinearizerDemo, get_demo
from .edit_view import EDIT_DIRECTIONS
from .images import DemoError

logger = logging.getLogger(__name__)

INSTALL_HINT = "The demo needs gradio: pip install \"diffusers-linearizer[demo]\" (or pip install \".[demo]\" in a checkout)."
TITLE = "Linearizer: one-step generation, exact inversion, linear edits"
CSS = """
.pixelated img { image-rendering: pixelated; object-fit: contain; }
.status { min-height: 2.5em; }
"""
INTRO = """# {title}
A Linearizer is f(x) = g_y⁻¹(A g_x(x)): two invertible networks around a linear core. Every step of its
flow-matching sampler is linear in latent space, so the whole sampler run collapses into **one operator B**:
one-step images that equal the stepped ones, **exact inversion** of any image through B†, interpolation in
noise space, and edits along the **singular vectors** of the core. {model}
"""


def import_gradio():
    """gradio, imported with analytics and its version check switched off; a clear error if it is missing."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return gr


def _guarded(gr, fn, n_outputs: int, message_index: int, clear: Sequence[int] = ()):
    """``fn`` for a gradio event: progress tracking, and a message instead of a traceback on failure.

    On failure the output at ``message_index`` shows the message, the outputs in ``clear`` are emptied and
    the others keep their values.
    """
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "progress"]
    wants_progress = "progress" in inspect.signature(fn).parameters

    def handler(*args):
        inputs, progress = (args[:-1], args[-1]) if wants_progress else (args, None)
        try:
            result = fn(*inputs, progress=progress) if wants_progress else fn(*inputs)
            return result if n_outputs > 1 else (result,)
        except (DemoError, ValueError) as err:
            message = f"⚠️ **{err}**"
        except Exception as err:  # keep serving; the details go to the server log
            logger.exception("demo callback %s failed", getattr(fn, "__name__", fn))
            message = f"⚠️ **Something went wrong ({type(err).__name__}: {err}).** The details are in the server log."
        out = [None if i in clear else gr.skip() for i in range(n_outputs)]
        out[message_index] = message
        return tuple(out)

    if not any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values()):
        # gradio reads the inputs and a gr.Progress default from the signature: give the handler fn's own
        progress = [inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                      default=gr.Progress(track_tqdm=True))] if wants_progress else []
        handler.__signature__ = inspect.Signature(
            [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD, default=inspect.Parameter.empty) for p in params]
            + progress)
    handler.__name__ = getattr(fn, "__name__", "handler")
    return handler


def _image(gr, label: str, elem_id: str, height: int = 200):
    return gr.Image(label=label, type="pil", format="png", image_mode=None, interactive=False, height=height,
                    elem_id=elem_id, elem_classes=["pixelated"])


def _image_slot(gr, demo: LinearizerDemo, label: str, key: str, status, examples):
    """An upload field, a test-image picker and a preview; returns ``(preview, state)``."""
    with gr.Group():
        upload = gr.File(label=f"Upload {label}", file_types=["image"], type="filepath", elem_id=f"{key}-upload",
                         height=90)
        pick = gr.Dropdown(choices=list(examples), value=None, label="…or pick a test image", elem_id=f"{key}-pick")
        preview = _image(gr, label, f"{key}-preview")
    state = gr.State(None)
    upload.upload(_guarded(gr, demo.load_upload, 3, 2), [upload], [preview, state, status])
    pick.input(_guarded(gr, demo.load_example, 3, 2), [pick], [preview, state, status])
    return preview, state


def _sampler_inputs(gr, demo: LinearizerDemo, key: str):
    steps = gr.Number(value=100, precision=0, label="Steps T (grid points, ≥ 2)", elem_id=f"{key}-steps")
    solver = gr.Dropdown(choices=list(SOLVERS), value=demo.default_solver, label="Solver", elem_id=f"{key}-solver")
    return steps, solver


def build_app(demo: Optional[LinearizerDemo] = None, model: Optional[str] = None, projection=None, style=None):
    """The demo's ``gr.Blocks`` for ``demo`` (default: :func:`get_demo(model) <.callbacks.get_demo>`); the Project
    tab uses ``projection`` (a :class:`~.project_view.ProjectionDemo`; default: the packaged projection model)."""
    from .project_view import ProjectionDemo, add_project_tab
    from .style_tab import StyleDemo, add_style_tab

    gr = import_gradio()
    projection = projection if projection is not None else ProjectionDemo()
    demo = demo if demo is not None else get_demo(model)
    examples = demo.examples()
    f = demo.features
    with gr.Blocks(title="Linearizer demo", analytics_enabled=False) as blocks:
        gr.Markdown(INTRO.format(title=TITLE, model=demo.describe()))
        with gr.Tab("1. Generate", id="generate"):
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed (image i uses seed + i)", elem_id="generate-seed")
                count = gr.Slider(1, MAX_IMAGES, value=16, step=1, label="Number of images", elem_id="generate-count")
                steps, solver = _sampler_inputs(gr, demo, "generate")
                temperature = gr.Slider(0.0, 2.0, value=demo.default_temperature, step=0.05,
                                        label="Temperature (noise scale)", elem_id="generate-temperature")
            with gr.Row(visible=demo.conditional):
                names = f["class_names"] or [str(i) for i in range(f["num_classes"] or 0)]
                class_name = gr.Dropdown(choices=names, value=names[0] if names else None, allow_custom_value=True,
                                         label="Class", visible=f["class_labels"] is not None, elem_id="generate-class")
                prompt = gr.Textbox(label="Prompt", visible=f["prompt"], elem_id="generate-prompt")
                guidance = gr.Slider(0.0, 20.0, value=3.0, step=0.5, label="Guidance scale",
                                     visible=f["guidance_scale"], elem_id="generate-guidance")
            with gr.Row():
                generate = gr.Button("Generate (one step)", variant="primary", elem_id="generate-button")
                compare = gr.Button("Compare with the stepped sampler", elem_id="compare-button")
            with gr.Row():
                grid = _image(gr, "One-step images", "generate-grid", height=360)
                stepped = _image(gr, "Stepped sampler, same noise", "stepped-grid", height=360)
            status = gr.Markdown(elem_id="generate-status", elem_classes=["status"])
            record = gr.State(None)
            generate.click(_guarded(gr, demo.generate, 3, 1, clear=(0,)),
                           [seed, count, steps, solver, temperature, class_name, prompt, guidance],
                           [grid, status, record])
            compare.click(_guarded(gr, demo.compare_stepped, 2, 1, clear=(0,)), [record], [stepped, status])

        with gr.Tab("2. Invert", id="invert"):
            status = gr.Markdown(elem_id="invert-status", elem_classes=["status"])
            with gr.Row():
                with gr.Column():
                    _, image = _image_slot(gr, demo, "an image", "invert", status, examples)
                    steps, solver = _sampler_inputs(gr, demo, "invert")
                    convert = gr.Checkbox(False, label="convert and resize to fit", elem_id="invert-convert")
                    run = gr.Button("Invert", variant="primary", elem_id="invert-button")
                with gr.Column():
                    noise = _image(gr, "Recovered noise (−3σ black … +3σ white)", "invert-noise")
                    stats = gr.Markdown(elem_id="invert-stats")
                with gr.Column():
                    regen = _image(gr, "Regenerated from that noise in one step", "invert-regen")
            run.click(_guarded(gr, demo.invert, 4, 3, clear=(0, 1, 2)), [image, steps, solver, convert],
                      [noise, stats, regen, status])

        with gr.Tab("3. Interpolate", id="interpolate"):
            status = gr.Markdown(elem_id="interpolate-status", elem_classes=["status"])
            with gr.Row():
                with gr.Column():
                    _, image_a = _image_slot(gr, demo, "image A", "interpolate-a", status, examples)
                with gr.Column():
                    _, image_b = _image_slot(gr, demo, "image B", "interpolate-b", status, examples)
                with gr.Column():
                    frames = gr.Slider(2, MAX_FRAMES, value=8, step=1, label="Frames", elem_id="interpolate-frames")
                    mode = gr.Radio(["slerp", "linear"], value="slerp", label="Path in noise space")
                    steps, solver = _sampler_inputs(gr, demo, "interpolate")
                    convert = gr.Checkbox(False, label="convert and resize to fit")
                    run = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
            strip = _image(gr, "Frames", "interpolate-strip", height=160)
            gif = gr.Image(label="GIF", type="filepath", interactive=False, height=200, elem_id="interpolate-gif",
                           elem_classes=["pixelated"])
            run.click(_guarded(gr, demo.interpolate, 3, 2, clear=(0, 1)),
                      [image_a, image_b, frames, mode, steps, solver, convert], [strip, gif, status])

        with gr.Tab("4. Edit", id="edit"):
            status = gr.Markdown(elem_id="edit-status", elem_classes=["status"])
            with gr.Row():
                with gr.Column():
                    _, image = _image_slot(gr, demo, "an image", "edit", status, examples)
                    t = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Core time t (singular vectors of A_t)",
                                  visible=demo.model.time_dependent, elem_id="edit-t")
                    convert = gr.Checkbox(False, label="convert and resize to fit")
                    which = gr.Radio(list(DIRECTION_SETS), value=list(DIRECTION_SETS)[0], label="Directions",
                                     elem_id="edit-directions-set")
                    start = gr.Button("Start editing", variant="primary", elem_id="edit-start")
                with gr.Column():
                    edited = _image(gr, "Edited: g_x⁻¹(g_x(x) + s Σ αᵢ vᵢ)", "edit-image")
                    sliders = [gr.Slider(-2.0, 2.0, value=0.0, step=0.05, label=f"α{i + 1} along v{i + 1}",
                                         elem_id=f"edit-alpha-{i + 1}") for i in range(EDIT_DIRECTIONS)]
                    reset = gr.Button("All sliders to 0 (the original)", elem_id="edit-reset")
            directions = gr.Gallery(label="Each direction, one unit either way", columns=EDIT_DIRECTIONS,
                                    height=260, format="png", elem_id="edit-directions", elem_classes=["pixelated"])
            edit_record = gr.State(None)

            def start_editing(image, t, convert, which, progress=None):
                out = demo.edit_start(image, t, convert, which, progress=progress)
                return (*out, *([0.0] * EDIT_DIRECTIONS))

            n_start = 4 + EDIT_DIRECTIONS
            start.click(_guarded(gr, start_editing, n_start, 2, clear=(0, 1)), [image, t, convert, which],
                        [edited, directions, status, edit_record, *sliders])
            edit = _guarded(gr, demo.edit, 2, 1)
            for slider in sliders:
                slider.release(edit, [edit_record, *sliders], [edited, status])
            reset.click(lambda: [0.0] * EDIT_DIRECTIONS, None, sliders).then(
                edit, [edit_record, *sliders], [edited, status])

        add_project_tab(gr, projection, examples, _guarded, _image, _image_slot, demo)
        add_style_tab(gr, style if style is not None else StyleDemo(), _guarded, _image)
    blocks.queue(default_concurrency_limit=4)
    return blocks


def launch(model: Optional[str] = None, port: Optional[int] = None, share: bool = False,
           host: Optional[str] = None, demo: Optional[LinearizerDemo] = None, **kwargs):
    """Build the app and serve it (blocking unless ``prevent_thread_lock=True`` is passed).

    ``host``/``port`` default to gradio's (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` or
    127.0.0.1:7860), which is what a Hugging Face Space sets.
    """
    blocks = build_app(demo=demo, model=model)
    blocks.launch(server_name=host, server_port=port, share=share, css=CSS, **kwargs)
    return blocks

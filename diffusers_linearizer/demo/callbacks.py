"""What the web demo's buttons do, as plain Python (PIL images, numpy, strings; no gradio).

:class:`LinearizerDemo` holds one generation pipeline and the inversion pipeline built on the same
components, loaded once per process (:func:`get_demo`). Its methods are the callbacks behind the four
tabs; each takes the values of the page's inputs, returns the values of its outputs and raises
:class:`DemoError` (a ``ValueError``) with a message for the page when it refuses a request. Per-user
values (the last generation, the loaded images, the image being edited) are passed in and returned, never
stored on the object, so one object serves concurrent users: the only shared state is read-only weights and
caches filled under locks (the pipelines' collapse cache, the singular vectors, the test images).

Generation with the collapsed operator B reproduces the stepped sampler of the same ``T`` and solver
exactly, up to round-off: :meth:`LinearizerDemo.compare_stepped` runs the stepped sampler on request and
reports the PSNR between the two. Inversion and regeneration use unclamped images, so an image inverts
and regenerates to round-off too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple

import PIL.Image
import torch

from ..pipelines import LinearizerInversionPipeline, LinearizerPipeline
from ..images import psnr
from ..schedulers import SOLVERS
from . import analysis_view
from . import images as im
from .edit_view import EditCallbacks
from .images import DemoError
from .inputs import Progress, as_float, as_int, pipeline_features, tick

MAX_IMAGES = 64
MAX_STEPS = 1000
MAX_FRAMES = 32



STEPS_HINT = " (T grid points give T − 1 solver steps)"


class LinearizerDemo(EditCallbacks):
    """The demo's callbacks around one :class:`LinearizerPipeline`.

    Args:
        pipe: the generation pipeline; the inversion pipeline shares its components and collapse cache.
        work_dir: where GIFs are written (default: a temporary folder removed when the object is collected
            or the process exits).
    """

    def __init__(self, pipe: LinearizerPipeline, work_dir: Optional[str] = None):
        self.pipe = pipe
        self.inv = LinearizerInversionPipeline(**pipe.components)
        for p in (self.pipe, self.inv):
            p.set_progress_bar_config(leave=False)
        self.model = pipe.linearizer
        self.model.eval()
        self.sample_shape = tuple(self.model.sample_shape)
        self.default_solver = pipe.scheduler.config.get("solver") or SOLVERS[0]
        self.default_temperature = pipe.noise_prior_temperature if pipe.linearizer.noise_prior is not None \
            else pipe.sampling_temperature  # what pipe() samples at
        self.features = pipeline_features(pipe)
        if work_dir is None:
            work_dir = tempfile.mkdtemp(prefix="linearizer-demo-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, work_dir, True)
        self.work_dir = work_dir
        self._lock = threading.Lock()
        self._svd_cache: Dict[Tuple[Optional[float], int], Any] = {}
        self._examples: Optional[Dict[str, PIL.Image.Image]] = None

    # ------------------------------------------------------------------ description
    @property
    def conditional(self) -> bool:
        return self.features["class_labels"] is not None or self.features["prompt"]

    def describe(self) -> str:
        c, h, w = self.sample_shape
        from ..defaults import DEFAULT_MODEL_DIR

        name = self.pipe.config.get("_name_or_path") or "an in-memory pipeline"
        if os.path.abspath(str(name)) == os.path.abspath(DEFAULT_MODEL_DIR):
            name = "the packaged default (Fashion-MNIST)"
        else:
            name = f"`{name}`"
        core = self.model.config.core_type + (" (time-dependent)" if self.model.time_dependent else "")
        return (f"Model: {name}: {im.describe_shape(c, h, w)} images, core `{core}`, "
                f"default solver `{self.default_solver}`, on {self.model.device}.")

    # ------------------------------------------------------------------ checks
    def _steps_and_solver(self, steps, solver) -> Tuple[int, str]:
        steps = as_int(steps, "Steps T", 2, MAX_STEPS, STEPS_HINT)
        solver = solver or self.default_solver
        if solver not in SOLVERS:
            raise DemoError(f"Unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
        return steps, solver

    def resolve_class(self, value) -> Optional[int]:
        """A class name (or index) of a class-conditional model → its index; ``DemoError`` if it has no such class."""
        if self.features["class_labels"] is None:
            return None
        names: List[str] = self.features["class_names"]
        count = self.features["num_classes"]
        text = "" if value is None else str(value).strip()
        if text in names:
            return names.index(text)
        if text.lstrip("-").isdigit() and count is not None and 0 <= int(text) < count:
            return int(text)
        known = ", ".join(names) if names else f"0 … {count - 1}" if count else "none"
        raise DemoError(f"This model has no class {text!r}; its classes are: {known}.")

    # ------------------------------------------------------------------ generation
    def _generate(self, n: int, seed: int, steps: int, solver: str, temperature: float, condition: Dict[str, Any],
                  one_step: bool) -> torch.Tensor:
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
        kwargs = dict(batch_size=n, num_inference_steps=steps, solver=solver, one_step=one_step,
                      output_type="pt", clamp=False, **condition)
        if self.features["temperature"]:
            kwargs.update(temperature=temperature, generator=generators)
        elif temperature != 1.0:  # the pipeline has no temperature: scale the noise it would draw
            kwargs["latents"] = self.pipe.prepare_noise(n, generator=generators) * temperature
        else:
            kwargs["generator"] = generators
        return self.pipe(**kwargs).images.float().cpu()

    def _condition(self, class_name, prompt, guidance_scale, n: int) -> Dict[str, Any]:
        condition: Dict[str, Any] = {}
        f = self.features
        if f["class_labels"] is not None:
            condition[f["class_labels"]] = torch.full((n,), self.resolve_class(class_name), dtype=torch.long)
        if f["prompt"]:
            condition["prompt"] = [str(prompt or "")] * n
        if f["guidance_scale"] and guidance_scale is not None:
            condition["guidance_scale"] = as_float(guidance_scale, "Guidance scale", 0.0, 50.0)
        return condition

    def generate(self, seed, num_images, steps, solver, temperature=None, class_name=None, prompt=None,
                 guidance_scale=None, progress: Progress = None):
        """Tab 1: ``num_images`` images in one step. Returns ``(grid, message, record)``.

        Image ``i`` is drawn from ``torch.Generator().manual_seed(seed + i)``, as in the command line.
        ``record`` (the settings and the unclamped images) is what :meth:`compare_stepped` needs.
        """
        seed = as_int(seed, "Seed", 0, 2**62)
        n = as_int(num_images, "Number of images", 1, MAX_IMAGES)
        steps, solver = self._steps_and_solver(steps, solver)
        temperature = self.default_temperature if temperature is None else temperature
        temperature = as_float(temperature, "Temperature", 0.0, 3.0)
        condition = self._condition(class_name, prompt, guidance_scale, n)
        tick(progress, 0.0, f"collapsing {steps - 1} {solver} steps into B")
        start = time.perf_counter()
        self.pipe.collapsed_operator(steps, solver)  # cached: only the first request for (T, solver) pays
        collapse_s = time.perf_counter() - start
        tick(progress, 0.5, "generating")
        start = time.perf_counter()
        images = self._generate(n, seed, steps, solver, temperature, condition, one_step=True)
        sample_s = time.perf_counter() - start
        record = dict(seed=seed, n=n, steps=steps, solver=solver, temperature=temperature,
                      class_name=class_name, prompt=prompt, guidance_scale=guidance_scale, images=images.numpy())
        message = (
            f"**{n} image(s) in {sample_s * 1000:.0f} ms**: one application of B (the whole {steps}-point {solver} "
            f"run), seeds {seed}…{seed + n - 1}, temperature {temperature:g}. Collapsing B took "
            f"{collapse_s * 1000:.0f} ms (cached for these T and solver). "
            "Press “Compare with the stepped sampler” to check that the images equal the step-by-step ones."
        )
        return im.strip(images.clamp(0, 1), nrow=min(n, 8)), message, record

    def compare_stepped(self, record, progress: Progress = None):
        """Tab 1, on request: rerun ``record``'s generation step by step. Returns ``(grid, message)`` with the PSNR."""
        if not record:
            raise DemoError("Generate images first; the comparison reruns the last generation step by step.")
        r = record
        condition = self._condition(r["class_name"], r["prompt"], r["guidance_scale"], r["n"])
        tick(progress, 0.0, f"stepping {r['steps'] - 1} {r['solver']} steps")
        start = time.perf_counter()
        stepped = self._generate(r["n"], r["seed"], r["steps"], r["solver"], r["temperature"], condition, one_step=False)
        stepped_s = time.perf_counter() - start
        one_step = torch.as_tensor(r["images"])
        quality = psnr(one_step, stepped)
        worst = float(quality.min())
        diff = float((one_step.double() - stepped.double()).abs().max())
        message = (
            f"**One step vs {r['steps'] - 1} {r['solver']} steps: PSNR ≥ {im.format_db(worst)}** over {r['n']} "
            f"image(s) (largest pixel difference {diff:.2e}; pixel values in [0, 1]). The stepped run took "
            f"{stepped_s * 1000:.0f} ms."
        )
        return im.strip(stepped.clamp(0, 1), nrow=min(r["n"], 8)), message

    # ------------------------------------------------------------------ test images and uploads
    def examples(self) -> Dict[str, PIL.Image.Image]:
        """Test images to pick from: generated samples, and Fashion-MNIST test images when installed and
        the model takes 32×32 grayscale."""
        with self._lock:
            if self._examples is None:
                self._examples = self._make_examples()
            return dict(self._examples)

    def _make_examples(self) -> Dict[str, PIL.Image.Image]:
        out: Dict[str, PIL.Image.Image] = {}
        if not self.conditional:
            images = self._generate(6, 0, 100, self.default_solver, 1.0, {}, one_step=True)
            for i, img in enumerate(im.to_pil(images.clamp(0, 1))):
                out[f"generated sample, seed {i}"] = img
        if self.sample_shape == (1, 32, 32):
            try:
                from ..training.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FashionMNIST

                if os.path.isdir(FASHION_MNIST_DIR):
                    data = FashionMNIST(split="test", return_labels=True, max_samples=6)
                    for i in range(len(data)):
                        x, label = data[i]
                        out[f"Fashion-MNIST test image {i} ({FASHION_MNIST_CLASSES[label]})"] = im.to_pil(x[None])[0]
            except (OSError, ValueError, ImportError):
                pass
        return out

    def load_upload(self, path):
        """An uploaded file → ``(preview, image, message)``; an unreadable file is refused."""
        image = im.read_upload(path)
        return image, image, self._describe_loaded(image, os.path.basename(str(path)))

    def load_example(self, name):
        """A test image by name → ``(preview, image, message)``."""
        examples = self.examples()
        if name not in examples:
            raise DemoError(f"Unknown test image {name!r}; choose one of: {', '.join(examples) or 'none'}.")
        image = examples[name]
        return image, image, self._describe_loaded(image, name)

    def _describe_loaded(self, image: PIL.Image.Image, name: str) -> str:
        c, h, w = self.sample_shape
        note = f"Loaded {name}: {image.width}×{image.height} {image.mode}."
        try:
            im.fit_image(image, self.sample_shape)
        except DemoError:
            note += (f" This model takes {im.describe_shape(c, h, w)} images: tick “convert and resize to fit” "
                     "or upload a resized copy.")
        return note

    def _image_tensor(self, image, convert: bool, which: str = "an image") -> Tuple[torch.Tensor, str]:
        if image is None:
            raise DemoError(f"Load {which} first: upload a file or pick a test image.")
        if not isinstance(image, PIL.Image.Image):
            raise DemoError(f"Expected a PIL image, got {type(image).__name__}.")
        fitted, note = im.fit_image(image, self.sample_shape, convert=bool(convert))
        x = torch.from_numpy(im.as_uint8_array(fitted).copy()).float().div(255.0)
        x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
        return x, note

    # ------------------------------------------------------------------ inversion
    def invert(self, image, steps, solver, convert=False, progress: Progress = None):
        """Tab 2: image → noise → regenerated image. Returns ``(noise picture, statistics, regeneration, message)``."""
        steps, solver = self._steps_and_solver(steps, solver)
        if self.conditional:
            raise DemoError("Inversion in this demo is for unconditional models.")
        x, note = self._image_tensor(image, convert)
        tick(progress, 0.0, "inverting through B†")
        start = time.perf_counter()
        out = self.inv(x, num_inference_steps=steps, solver=solver, output_type="pt", clamp=False)
        invert_s = time.perf_counter() - start
        tick(progress, 0.5, "regenerating from the recovered noise")
        regen = self.pipe(batch_size=1, latents=out.noise, num_inference_steps=steps, solver=solver,
                          output_type="pt", clamp=False).images.float().cpu()
        quality = float(psnr(regen, x)[0])
        diff = float((regen.double() - x.double()).abs().max())
        stats = im.noise_statistics(out.noise[0])
        message = (
            f"**Regeneration PSNR: {im.format_db(quality)}** (largest pixel difference {diff:.2e}): generating from "
            f"the recovered noise in one step ({steps}-point {solver} run) gives back your image. Inversion "
            f"g_y⁻¹(B† g_x(x)) took {invert_s * 1000:.0f} ms." + (f" Input {note}." if note else "")
        ) + analysis_view.typicality_note(out)
        return im.noise_picture(out.noise[0]), im.statistics_table(stats), im.to_pil(regen.clamp(0, 1))[0], message

    # ------------------------------------------------------------------ interpolation
    def interpolate(self, image_a, image_b, num_frames, mode, steps, solver, convert=False, progress: Progress = None):
        """Tab 3: frames between two images through slerp (or linear) in noise space.

        Returns ``(strip, gif_path, message)``.
        """
        steps, solver = self._steps_and_solver(steps, solver)
        num_frames = as_int(num_frames, "Number of frames", 2, MAX_FRAMES)
        if mode not in ("slerp", "linear"):
            raise DemoError(f"Unknown interpolation {mode!r}; choose slerp or linear.")
        if self.conditional:
            raise DemoError("Interpolation in this demo is for unconditional models.")
        xa, _ = self._image_tensor(image_a, convert, "image A")
        xb, _ = self._image_tensor(image_b, convert, "image B")
        tick(progress, 0.0, "inverting both images and generating the frames")
        start = time.perf_counter()
        out = self.inv.interpolate(xa, xb, num_frames=num_frames, mode=mode, num_inference_steps=steps,
                                   solver=solver, output_type="pt")
        elapsed = time.perf_counter() - start
        frames = out.frames.float().cpu()
        gif = im.save_gif(im.to_pil(frames), self.work_dir)
        pa, pb = (float(p) for p in out.psnr)
        message = (
            f"**{num_frames} frames in {elapsed * 1000:.0f} ms** ({mode} between the two recovered noises, each "
            f"frame one application of B). The end frames reproduce the images: PSNR {im.format_db(pa)} and "
            f"{im.format_db(pb)}."
        )
        return im.strip(frames), gif, message


_DEMOS: Dict[Tuple[Optional[str], str, Optional[str]], LinearizerDemo] = {}
_DEMOS_LOCK = threading.Lock()


def get_demo(model: Optional[str] = None, dtype: str = "float32", device: Optional[str] = None) -> LinearizerDemo:
    """The process's :class:`LinearizerDemo` for ``model`` (default: the packaged pipeline), loaded once."""
    key = (model, dtype, device)
    with _DEMOS_LOCK:
        if key not in _DEMOS:
            pipe = LinearizerPipeline.from_pretrained(model, torch_dtype=getattr(torch, dtype))
            pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            _DEMOS[key] = LinearizerDemo(pipe)
        return _DEMOS[key]

"""``LinearizerPipeline``: one-step (or stepped) unconditional image generation with a Linearizer.

For flow matching every sampler step of the Linearizer's latent ODE is a linear map, so the whole run
collapses into one structured operator ``B`` (``LinearizerScheduler.collapse``) and generation is

    noise ~ N(0, I)  →  z₀ = g_y(noise)  →  z = B z₀  →  x = g_x⁻¹(z)

one network pass each way and one low-rank product. ``one_step=False`` runs the same solver step by
step (``A_t z`` evaluated by ``LinearizerModel.apply_core`` at every stage) and gives the same image up
to round-off.

Data range: images are in ``[0, 1]`` (the reference implementation's range, *not* diffusers' usual
``[-1, 1]``); ``output_type="pt"`` / ``"np"`` / ``"pil"`` are clamped to it unless ``clamp=False``.

This module also holds :class:`LinearizerPipelineMixin`, the machinery both Linearizer pipelines share:
the collapse and pseudo-inverse caches, input checks, image conversion, and the Hub layout
(``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import uuid
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from ...models import LinearizerModel
from ...schedulers import SOLVERS, LinearizerScheduler

logger = logging.get_logger(__name__)

PACKAGE = "diffusers_linearizer"
#: the trained Fashion-MNIST 32×32 pipeline shipped inside the package: what ``from_pretrained()`` loads
DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "default_model")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
#: component name → (file that marks a saved component, whether weights must be present)
COMPONENT_FILES = {"linearizer": ("config.json", True), "scheduler": ("scheduler_config.json", False)}
#: module file written beside ``model_index.json`` so that ``DiffusionPipeline.from_pretrained`` finds our class
PIPELINE_MODULE = "pipeline_linearizer"
PIPELINE_MODULE_SOURCE = '''"""Written by diffusers-linearizer's `save_pretrained`.

diffusers loads a third-party pipeline class from a module file saved beside `model_index.json`
(`DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`). This file contains no model code: it
re-exports the pipeline classes of the installed package (`pip install diffusers-linearizer`).
"""

from diffusers_linearizer import LinearizerInversionPipeline, LinearizerPipeline  # noqa: F401
'''
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision")
_MODEL_KWARGS = (
    "device_map", "max_memory", "offload_folder", "offload_state_dict", "low_cpu_mem_usage", "variant",
    "use_safetensors", "disable_mmap",
)

# ---------------------------------------------------------------------- pseudo-inverse cache
# B† is cached per collapsed operator B (and rcond). B itself lives in the scheduler's collapse cache, so
# both pipelines built on one scheduler share B and, through this table, B†. Entries die with B.
_PINV_LOCK = threading.Lock()
_PINV_CACHE: Dict[int, Tuple[Any, Dict[Optional[float], Any]]] = {}


def _drop_pinv(ref, key):
    entry = _PINV_CACHE.get(key)
    if entry is not None and entry[0] is ref:
        _PINV_CACHE.pop(key, None)


def cached_pinv(B, rcond: Optional[float] = None):
    """``B.pinv(rcond)`` computed once per live operator ``B`` (thread-safe)."""
    key = id(B)
    with _PINV_LOCK:
        entry = _PINV_CACHE.get(key)
        if entry is not None and entry[0]() is B and rcond in entry[1]:
            return entry[1][rcond]
        P = B.pinv(rcond=rcond)
        try:
            ref = weakref.ref(B, lambda r, k=key: _drop_pinv(r, k))
        except TypeError:  # an operator that cannot be weakly referenced: no caching
            return P
        if entry is None or entry[0]() is not B:
            entry = (ref, {})
            _PINV_CACHE[key] = entry
        entry[1][rcond] = P
        return P


def apply_operator(op, z: torch.Tensor) -> torch.Tensor:
    """``op`` applied to image-shaped latents ``(N, C, H, W)`` in the operator's dtype, cast back."""
    out = op.apply(z.flatten(1).to(device=op.device, dtype=op.dtype))
    return out.to(device=z.device, dtype=z.dtype).view_as(z)


# ---------------------------------------------------------------------- argument checks
def check_num_inference_steps(num_inference_steps) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an int ≥ 2, got {num_inference_steps!r}.")
    if num_inference_steps < 2:
        raise ValueError(
            f"num_inference_steps must be ≥ 2 (T grid points give T − 1 solver steps), got {num_inference_steps}."
        )
    return int(num_inference_steps)


def check_solver(solver) -> Optional[str]:
    if solver is not None and solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; choose one of {', '.join(SOLVERS)} (or None for the scheduler's).")
    return solver


def check_output_type(output_type, allowed: Sequence[str] = OUTPUT_TYPES) -> str:
    if output_type not in allowed:
        raise ValueError(f"Unknown output_type {output_type!r}; choose one of {', '.join(map(repr, allowed))}.")
    return output_type


def check_finite(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values.")


def psnr(x: torch.Tensor, y: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (float64) of ``x`` against ``y`` for data of range ``peak``; ``inf`` when equal."""
    mse = (x.double() - y.double()).flatten(1).pow(2).mean(1)
    return 10.0 * torch.log10(peak**2 / mse)


# ---------------------------------------------------------------------- images
def _pil_to_array(image: PIL.Image.Image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32) or image.mode.startswith("I"):
        scale = 65535.0 if (arr.dtype == np.uint16 or image.mode.startswith("I;16")) else float(max(arr.max(), 1))
        return arr.astype(np.float32) / scale
    if arr.dtype == bool:
        return arr.astype(np.float32)
    return arr.astype(np.float32)


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"Expected a float (values in [0, 1]) or uint8 image array, got dtype {arr.dtype}.")
    if arr.ndim == 2:  # (H, W)
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:  # (H, W, C)
        arr = arr[None]
    elif arr.ndim != 4:  # (N, H, W, C)
        raise ValueError(f"Expected an image array of shape (H, W), (H, W, C) or (N, H, W, C), got {arr.shape}.")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


def _torch_to_tensor(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype == torch.bool:
        t = t.float()
    elif not t.is_floating_point():
        raise ValueError(f"Expected a float (values in [0, 1]) or uint8 image tensor, got dtype {t.dtype}.")
    if t.ndim == 2:  # (H, W)
        t = t[None, None]
    elif t.ndim == 3:  # (C, H, W)
        t = t[None]
    elif t.ndim != 4:  # (N, C, H, W)
        raise ValueError(f"Expected an image tensor of shape (H, W), (C, H, W) or (N, C, H, W), got {tuple(t.shape)}.")
    return t


def images_to_tensor(image, sample_shape: Tuple[int, int, int], name: str = "image") -> torch.Tensor:
    """PIL image(s), numpy array(s) or tensor(s) with values in ``[0, 1]`` → ``(N, C, H, W)`` float tensor.

    Conventions follow diffusers' image processors: PIL images (uint8 → /255), numpy arrays
    ``(H, W)``, ``(H, W, C)`` or ``(N, H, W, C)``, torch tensors ``(H, W)``, ``(C, H, W)`` or
    ``(N, C, H, W)``; uint8 arrays and tensors are divided by 255, float values are taken as they are (the
    data range is ``[0, 1]``). Images are never resized: a wrong size or channel count is an error naming
    the expected ``C×H×W``.
    """
    c, h, w = sample_shape
    expected = f"{c}×{h}×{w} (C×H×W; {'grayscale' if c == 1 else f'{c} channels'}, {h}×{w} pixels)"
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError(f"{name} is empty; expected one or more images of {expected}.")
    parts = []
    for item in items:
        if isinstance(item, PIL.Image.Image):
            bands = len(item.getbands())
            if (bands, item.height, item.width) != (c, h, w):
                hint = ""
                if bands != c and c in (1, 3):
                    hint = f" Convert it first, e.g. image.convert({'L' if c == 1 else 'RGB'!r})."
                raise ValueError(
                    f"Expected {name} of {expected}; got a PIL image of mode {item.mode!r} ({bands} channel(s)), "
                    f"{item.width}×{item.height} pixels (W×H).{hint} Images are not resized."
                )
            arr = _pil_to_array(item)
            parts.append(torch.from_numpy(arr.reshape(h, w, c)).permute(2, 0, 1)[None])
        elif isinstance(item, np.ndarray):
            parts.append(_array_to_tensor(item))
        elif isinstance(item, torch.Tensor):
            parts.append(_torch_to_tensor(item.detach()))
        else:
            raise ValueError(
                f"Expected {name} as PIL images, numpy arrays or torch tensors, got {type(item).__name__}."
            )
    devices = {p.device for p in parts}
    x = torch.cat([p.to(parts[0].device) for p in parts], 0) if len(devices) > 1 else torch.cat(parts, 0)
    if tuple(x.shape[1:]) != (c, h, w):
        raise ValueError(
            f"Expected {name} of {expected}; got images of C×H×W = {'×'.join(map(str, x.shape[1:]))}. "
            "Images are not resized."
        )
    check_finite(x, name)
    # Standard strides whatever the input type (a permuted (N, H, W, 1) array is "contiguous" with odd
    # strides, and convolutions then take another kernel path): bit-identical results for equal images.
    return x.clone(memory_format=torch.contiguous_format)


def postprocess_images(x: torch.Tensor, output_type: str, clamp: bool = True):
    """``(N, C, H, W)`` images in ``[0, 1]`` → ``"pt"`` tensor, ``"np"`` ``(N, H, W, C)`` float32 array or PIL list."""
    if clamp or output_type == "pil":
        x = x.clamp(0.0, 1.0)
    if output_type == "pt":
        return x
    arr = VaeImageProcessor.pt_to_numpy(x)
    if output_type == "np":
        return arr
    return VaeImageProcessor.numpy_to_pil(arr)


# ---------------------------------------------------------------------- atomic directory writes
def _fresh_dir_next_to(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.tmp-{uuid.uuid4().hex[:12]}")
    os.makedirs(tmp)  # honours the umask, unlike mkdtemp
    return tmp


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _move_into(src: str, dst: str, last: Sequence[str] = ()) -> None:
    """Move every entry of the finished directory ``src`` into ``dst`` by renames.

    A new ``dst`` is one atomic rename. Into an existing directory every entry is swapped in by its own
    rename (an old entry of the same name is first renamed away, then deleted); other files in ``dst`` are
    left alone. Names in ``last`` (``model_index.json``) move after everything else, so a reader never sees
    an index that names components not yet in place.
    """
    if not os.path.exists(dst):
        os.replace(src, dst)
        return
    if not os.path.isdir(dst):
        raise ValueError(f"Cannot save into {dst!r}: it exists and is not a directory.")
    entries = sorted(os.listdir(src), key=lambda e: (e in last, e))
    graveyard = os.path.join(src, f".old-{uuid.uuid4().hex[:12]}")
    os.makedirs(graveyard)
    for entry in entries:
        s, d = os.path.join(src, entry), os.path.join(dst, entry)
        if os.path.isdir(s) and os.path.lexists(d) or os.path.isdir(d) and not os.path.islink(d):
            os.replace(d, os.path.join(graveyard, entry))
        os.replace(s, d)


# ---------------------------------------------------------------------- the shared mixin
class LinearizerPipelineMixin:
    """Machinery shared by :class:`LinearizerPipeline` and :class:`LinearizerInversionPipeline`.

    Not a ``DiffusionPipeline`` itself (so that diffusers finds exactly one pipeline class in a module);
    list it before ``DiffusionPipeline`` in the bases.
    """

    _component_names = ("linearizer", "scheduler")

    # -------------------------------------------------------------- component bookkeeping
    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in self._component_names and "_internal_dict" in self.__dict__ and value is not None:
            self._record_package_name(name, value)

    def _record_package_name(self, name: str, module) -> None:
        """Record our components as ``["diffusers_linearizer", ClassName]`` in ``model_index.json``.

        diffusers would record the defining submodule; the package is what its loader should import.
        """
        cls = type(getattr(module, "_orig_mod", module))
        package = sys.modules.get(PACKAGE)
        if cls.__module__.split(".")[0] == PACKAGE and package is not None and getattr(package, cls.__name__, None) is cls:
            if tuple(self.config.get(name) or ()) != (PACKAGE, cls.__name__):
                self.register_to_config(**{name: (PACKAGE, cls.__name__)})

    def _check_components(self) -> None:
        if not isinstance(getattr(self.linearizer, "_orig_mod", self.linearizer), LinearizerModel):  # compiled or not
            raise ValueError(f"linearizer must be a LinearizerModel, got {type(self.linearizer).__name__}.")
        if not hasattr(self.scheduler, "collapse") or not hasattr(self.scheduler, "t_of"):
            raise ValueError(
                f"scheduler must be a LinearizerScheduler (it needs collapse() and t_of()), got "
                f"{type(self.scheduler).__name__}."
            )

    def _onload(self) -> None:
        """Put the model in eval mode and trigger accelerate's offload hook.

        Sampling must not run training-mode code: ActNorm's data-dependent initialisation would rewrite
        an untrained model's weights from the first noise batch, and dropout would draw random numbers
        outside ``generator``. A model left in training mode is switched to eval mode (once, with a
        warning). The hook is triggered by hand because we call ``encode``/``decode``/the core, not
        ``forward``.
        """
        if self.linearizer.training:
            logger.warning(
                f"{type(self).__name__}: the linearizer was in training mode; switching it to eval mode for "
                "sampling (call .train() again to resume training)."
            )
            self.linearizer.eval()
        hook = getattr(self.linearizer, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self.linearizer)

    # -------------------------------------------------------------- the collapsed operator and its pinv
    def _collapse_dtype(self, device: torch.device) -> torch.dtype:
        return torch.float32 if device.type == "mps" else torch.float64

    def collapsed_operator(self, num_inference_steps: int = 100, solver: Optional[str] = None):
        """The operator ``B`` of a whole sampler run of ``num_inference_steps`` grid points.

        Accumulated in float64 (float32 on MPS) whatever the model's dtype, and cached on the scheduler
        (thread-safe), so every pipeline built on the same scheduler shares it.
        """
        check_num_inference_steps(num_inference_steps)
        check_solver(solver)
        self._check_components()
        core = self.linearizer.core
        return self.scheduler.collapse(
            core, num_inference_steps, solver=solver, dtype=self._collapse_dtype(self.linearizer.device)
        )

    def pseudo_inverse(self, num_inference_steps: int = 100, solver: Optional[str] = None, rcond: Optional[float] = None):
        """``B†``, the Moore–Penrose pseudo-inverse of :meth:`collapsed_operator` (cached alongside ``B``)."""
        return cached_pinv(self.collapsed_operator(num_inference_steps, solver), rcond)

    # -------------------------------------------------------------- noise
    def prepare_noise(self, batch_size: int, generator=None, latents: Optional[torch.Tensor] = None,
                      device=None, dtype=None) -> torch.Tensor:
        """Noise of shape ``(batch_size, C, H, W)``: ``latents`` if given, else ``randn_tensor``.

        The noise is always drawn in float32 (then cast to ``dtype``), so a seed gives the same image
        whatever dtype the model runs in. A list of generators gives image ``i`` the noise of
        ``generator[i]``.
        """
        shape = (batch_size, *self.linearizer.sample_shape)
        device = device if device is not None else self._execution_device
        dtype = dtype if dtype is not None else self.linearizer.dtype
        if latents is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        else:
            noise = latents
        return noise.to(device=device, dtype=dtype)

    def _check_noise_args(self, batch_size, generator, latents) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"You passed a list of {len(generator)} generators for batch_size {batch_size}; pass one generator "
                "per image (or a single generator)."
            )
        if latents is not None:
            shape = (batch_size, *self.linearizer.sample_shape)
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"Expected latents (the initial noise) of shape {shape}, got {got}.")
            check_finite(latents, "latents")

    # -------------------------------------------------------------- Hub layout: save
    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        max_shard_size: Optional[Union[int, str]] = None,
        push_to_hub: bool = False,
        metrics: Optional[Dict[str, Any]] = None,
        pipeline_module: bool = True,
        **kwargs,
    ):
        """Save the pipeline in diffusers' layout, plus a model card, atomically.

        Writes ``model_index.json`` (components ``["diffusers_linearizer", "LinearizerModel"]`` and
        ``["diffusers_linearizer", "LinearizerScheduler"]``), ``linearizer/`` (config and safetensors
        weights), ``scheduler/scheduler_config.json`` and ``README.md`` (a huggingface_hub ``ModelCard``
        with both configs and ``metrics``). With ``pipeline_module=True`` (default) ``_class_name`` is
        ``["pipeline_linearizer", "<ClassName>"]`` and a two-line ``pipeline_linearizer.py`` re-exporting
        the installed classes is saved beside it, which is what lets
        ``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`` return our pipeline;
        ``LinearizerPipeline.from_pretrained`` never executes that file. Everything is written to a
        temporary sibling directory first and renamed into place.

        ``push_to_hub=True`` then uploads the directory (``repo_id``, ``token``, ``private``,
        ``commit_message``, ``create_pr`` in ``kwargs``).
        """
        from ..model_card import linearizer_model_card

        save_directory = os.fspath(save_directory)
        repo_id = kwargs.pop("repo_id", None)
        tmp = _fresh_dir_next_to(save_directory)
        try:
            DiffusionPipeline.save_pretrained(
                self, tmp, safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size
            )
            for name in self._component_names:
                if not os.path.isdir(os.path.join(tmp, name)):
                    raise ValueError(f"Component {name!r} ({type(getattr(self, name, None)).__name__}) could not be saved.")
            index_path = os.path.join(tmp, self.config_name)
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f)
            index.pop("_name_or_path", None)
            if pipeline_module:
                index["_class_name"] = [PIPELINE_MODULE, type(self).__name__]
                _write_text_atomic(os.path.join(tmp, f"{PIPELINE_MODULE}.py"), PIPELINE_MODULE_SOURCE)
            _write_text_atomic(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
            card = linearizer_model_card(self, metrics=metrics, repo_id=repo_id)
            _write_text_atomic(os.path.join(tmp, "README.md"), str(card))
            _move_into(tmp, save_directory, last=(self.config_name,))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if push_to_hub:
            return self._upload_saved(save_directory, repo_id or os.path.basename(os.path.abspath(save_directory)), **kwargs)
        return None

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: Optional[str] = None,
        private: Optional[bool] = None,
        token: Optional[str] = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        metrics: Optional[Dict[str, Any]] = None,
    ) -> str:
        """Save to a temporary directory (with our model card) and upload it to the Hub repo ``repo_id``."""
        from huggingface_hub import create_repo

        repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            target = os.path.join(tmp, "pipeline")
            self.save_pretrained(target, safe_serialization=safe_serialization, variant=variant, metrics=metrics,
                                 repo_id=repo_id)
            return self._upload_folder(target, repo_id, token=token, commit_message=commit_message, create_pr=create_pr)

    def _upload_saved(self, folder: str, repo_id: str, token=None, private=None, commit_message=None, create_pr=False, **_):
        from huggingface_hub import create_repo

        repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        return self._upload_folder(folder, repo_id, token=token, commit_message=commit_message, create_pr=create_pr)

    # -------------------------------------------------------------- Hub layout: load
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Optional[Union[str, os.PathLike]] = None, **kwargs):
        """Load from a local directory or a Hub repo id (the Hugging Face cache, ``HF_HUB_OFFLINE=1`` works).

        With no path, the trained Fashion-MNIST 32×32 pipeline shipped inside the package
        (``diffusers_linearizer/default_model/``, :data:`DEFAULT_MODEL_DIR`) is loaded — no network needed.

        Takes diffusers' arguments: ``torch_dtype``/``dtype`` (a dtype or ``{"linearizer": ..., "default":
        ...}``), ``device_map``, ``variant``, ``use_safetensors``, ``low_cpu_mem_usage``, ``cache_dir``,
        ``revision``, ``token``, ``local_files_only``, ``force_download``, and components to use instead of
        the saved ones (``linearizer=``, ``scheduler=``). The directory's layout is checked before any
        weights are read. Our own classes are loaded directly, so the ``pipeline_linearizer.py`` module
        saved beside ``model_index.json`` is never executed and no ``trust_remote_code`` is needed. With
        ``custom_pipeline=...`` the call is handed to ``DiffusionPipeline.from_pretrained``.
        """
        if kwargs.get("custom_pipeline") is not None:
            return DiffusionPipeline.from_pretrained.__func__(cls, pretrained_model_name_or_path, **kwargs)
        kwargs = dict(kwargs)
        if pretrained_model_name_or_path is None:
            if not os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, cls.config_name)):
                raise FileNotFoundError(
                    f"No path given and the packaged default pipeline is missing ({DEFAULT_MODEL_DIR} has no "
                    f"{cls.config_name}); reinstall diffusers-linearizer or pass a pipeline directory or Hub repo id."
                )
            pretrained_model_name_or_path = DEFAULT_MODEL_DIR
        path = os.fspath(pretrained_model_name_or_path)
        passed = {name: kwargs.pop(name) for name in cls._component_names if name in kwargs}
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        model_kwargs = {k: kwargs.pop(k) for k in _MODEL_KWARGS if k in kwargs}
        torch_dtype, dtype = kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None)
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise ValueError("Pass either dtype or torch_dtype, not both.")
        dtype = dtype if dtype is not None else torch_dtype
        for ignored in ("trust_remote_code", "custom_revision", "proxies", "provider", "sess_options"):
            kwargs.pop(ignored, None)
        if kwargs:
            logger.warning(f"Keyword arguments {sorted(kwargs)} are not expected by {cls.__name__} and will be ignored.")
        if model_kwargs.get("device_map") is not None:
            model_kwargs.setdefault("low_cpu_mem_usage", True)

        needed = [name for name in cls._component_names if name not in passed]
        folder = cls._resolve_folder(path, needed, hub_kwargs)
        index_path = os.path.join(folder, cls.config_name)
        if not os.path.isfile(index_path):
            raise ValueError(f"{path!r} is not a saved pipeline: {cls.config_name} is missing in {folder}.")
        index = cls._dict_from_json_file(index_path)
        cls._check_layout(folder, index, needed, path)

        components = dict(passed)
        for name in needed:
            library, class_name = index[name]
            klass = cls._component_class(library, class_name, name)
            if issubclass(klass, torch.nn.Module):
                comp_dtype = dtype.get(name, dtype.get("default")) if isinstance(dtype, dict) else dtype
                extra = {} if comp_dtype is None else {"torch_dtype": comp_dtype}
                components[name] = klass.from_pretrained(folder, subfolder=name, **extra, **model_kwargs)
            else:
                components[name] = klass.from_pretrained(folder, subfolder=name)
        pipe = cls(**components)
        pipe.register_to_config(_name_or_path=path)
        if model_kwargs.get("device_map") is not None:
            pipe.hf_device_map = model_kwargs["device_map"]
        return pipe

    @classmethod
    def _resolve_folder(cls, path: str, needed: Sequence[str], hub_kwargs: Dict[str, Any]) -> str:
        if os.path.isdir(path):
            return path
        if path.count("/") > 1 or not path or os.path.exists(path):
            raise ValueError(f"{path!r} is neither a directory of a saved pipeline nor a Hub repo id ('org/name').")
        from huggingface_hub import snapshot_download

        allow = [cls.config_name, "README.md"] + [f"{name}/*" for name in needed]
        return snapshot_download(path, allow_patterns=allow, **hub_kwargs)

    @classmethod
    def _check_layout(cls, folder: str, index: Dict[str, Any], needed: Sequence[str], path: str) -> None:
        problems = []
        for name in needed:
            entry = index.get(name)
            if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[0] is None:
                problems.append(f"{cls.config_name} has no entry for {name!r}")
                continue
            marker, needs_weights = COMPONENT_FILES.get(name, ("config.json", False))
            sub = os.path.join(folder, name)
            if not os.path.isfile(os.path.join(sub, marker)):
                problems.append(f"{name}/{marker} is missing")
            elif needs_weights and not any(
                f.endswith((".safetensors", ".bin")) or f.endswith(".index.json") for f in os.listdir(sub)
            ):
                problems.append(f"{name}/ has no weights (diffusion_pytorch_model.safetensors)")
        if problems:
            raise ValueError(
                f"{path!r} is not a complete Linearizer pipeline: {'; '.join(problems)}. Expected model_index.json, "
                "linearizer/config.json with linearizer/diffusion_pytorch_model.safetensors, and "
                "scheduler/scheduler_config.json (or pass the missing component, e.g. scheduler=LinearizerScheduler())."
            )

    @staticmethod
    def _component_class(library: str, class_name: str, name: str):
        import importlib

        if library == PACKAGE or library.startswith(PACKAGE + "."):
            module = importlib.import_module(PACKAGE)
        elif library == "diffusers":
            module = importlib.import_module("diffusers")
        else:
            raise ValueError(
                f"Component {name!r} is declared as [{library!r}, {class_name!r}]; Linearizer pipelines load "
                f"components from {PACKAGE} or diffusers only (pass it as {name}=... instead)."
            )
        klass = getattr(module, class_name, None)
        if klass is None:
            raise ValueError(f"Component {name!r}: {module.__name__} has no class {class_name!r}.")
        return klass


class LinearizerPipeline(LinearizerPipelineMixin, DiffusionPipeline):
    r"""Unconditional image generation with a Linearizer: ``x = g_x⁻¹(B g_y(noise))``.

    Args:
        linearizer ([`LinearizerModel`]): ``g_x``, ``g_y`` and the linear core ``A_t``.
        scheduler ([`LinearizerScheduler`]): the flow-matching sampler and its exact collapse into ``B``.

    Both pipelines (this one and :class:`LinearizerInversionPipeline`) built on the same scheduler share
    its collapse cache, e.g. ``LinearizerInversionPipeline(**pipe.components)``. A pipeline object may be
    called from several threads at once: ``B`` is computed once under the scheduler's lock and stepped
    runs use their own scheduler copy.
    """

    model_cpu_offload_seq = "linearizer"
    _callback_tensor_inputs = ["latents", "noise"]

    def __init__(self, linearizer: LinearizerModel, scheduler: LinearizerScheduler):
        super().__init__()
        self.register_modules(linearizer=linearizer, scheduler=scheduler)

    def check_inputs(self, batch_size, num_inference_steps, solver, output_type, generator, latents,
                     callback_on_step_end, callback_on_step_end_tensor_inputs) -> None:
        self._check_components()
        self._check_noise_args(batch_size, generator, latents)
        check_num_inference_steps(num_inference_steps)
        check_solver(solver)
        check_output_type(output_type)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}.")
        unknown = [k for k in (callback_on_step_end_tensor_inputs or ()) if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} are not among {self._callback_tensor_inputs}."
            )

    def _stepping_scheduler(self, solver: Optional[str]) -> LinearizerScheduler:
        """A private scheduler for one stepped run (the stepping state must not be shared between calls)."""
        config = dict(self.scheduler.config)
        if solver is not None:
            config["solver"] = solver
        return type(self.scheduler).from_config(config)

    def integrate(self, latents: torch.Tensor, num_inference_steps: int, solver: Optional[str] = None,
                  callback_on_step_end: Optional[Callable] = None,
                  callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
                  noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run the solver step by step on latents ``z₀ = g_y(noise)``; returns the latents ``z`` at the end."""
        scheduler = self._stepping_scheduler(solver)
        scheduler.set_timesteps(num_inference_steps, device=latents.device)
        timesteps = scheduler.timesteps
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, ts in enumerate(timesteps):
                t = float(scheduler.t_of(ts))
                prediction = self.linearizer.apply_core(latents, t)  # A_t z, the clean-latent prediction
                latents = scheduler.step(prediction, ts, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    names = {"latents": latents, "noise": noise}
                    callback_kwargs = {k: names[k] for k in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, i, ts, callback_kwargs) or {}
                    latents = outputs.pop("latents", latents)
                progress_bar.update()
        return latents

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 100,
        solver: Optional[str] = None,
        one_step: bool = True,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        clamp: bool = True,
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""Generate images.

        Args:
            batch_size: number of images.
            num_inference_steps: grid points ``T`` of the sampler (``T − 1`` solver steps), ≥ 2. With
                ``one_step=True`` it only selects which run ``B`` reproduces; the cost is one operator apply.
            solver: ``"euler"``, ``"heun"``, ``"rk4"`` (or ``"reference_rk"``); ``None`` = the scheduler's.
            one_step: apply the cached collapsed operator ``B`` (default) instead of stepping.
            generator: a ``torch.Generator`` or one per image; noise is drawn with diffusers' ``randn_tensor``
                in float32 (so a seed means the same image in every dtype), the only random choice made.
            latents: the initial noise ``(batch_size, C, H, W)`` instead of drawing it.
            output_type: ``"pil"``, ``"np"`` (``(N, H, W, C)`` float32), ``"pt"`` (``(N, C, H, W)``), or
                ``"latent"`` (the final latents ``z = B g_y(noise)`` before ``g_x⁻¹``).
            return_dict: return an ``ImagePipelineOutput`` instead of a tuple.
            callback_on_step_end: ``callback(pipe, i, timestep, callback_kwargs) -> dict`` after every model
                evaluation of a stepped run (``one_step=False``); it may return new ``"latents"``.
            callback_on_step_end_tensor_inputs: which tensors go into ``callback_kwargs``
                (``"latents"``, ``"noise"``).
            clamp: clamp ``"pt"``/``"np"`` images to the data range ``[0, 1]`` (``False`` returns the raw
                ``g_x⁻¹`` output, e.g. to invert it exactly); PIL images are always clamped.
        """
        try:
            from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

            if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
                callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        except ImportError:  # pragma: no cover - older diffusers
            pass
        self.check_inputs(batch_size, num_inference_steps, solver, output_type, generator, latents,
                          callback_on_step_end, callback_on_step_end_tensor_inputs)
        if one_step and callback_on_step_end is not None:
            logger.warning("callback_on_step_end is only called in stepped runs (one_step=False); ignoring it.")

        self._onload()
        device = self._execution_device
        noise = self.prepare_noise(batch_size, generator, latents, device=device)
        z = self.linearizer.encode(noise, "y")
        if one_step:
            z = apply_operator(self.collapsed_operator(num_inference_steps, solver), z)
        else:
            z = self.integrate(z, num_inference_steps, solver, callback_on_step_end,
                               callback_on_step_end_tensor_inputs, noise=noise)
        if output_type == "latent":
            images = z
        else:
            images = postprocess_images(self.linearizer.decode(z, "x"), output_type, clamp=clamp)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

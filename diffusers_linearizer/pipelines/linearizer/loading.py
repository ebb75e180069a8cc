"""Saving and loading Linearizer pipelines: diffusers' own machinery, plus the four things it lacks.

Loading is ``DiffusionPipeline.from_pretrained``: ``model_index.json`` names our components as
``["diffusers_linearizer", "LinearizerModel"]`` and ``["diffusers_linearizer", "LinearizerScheduler"]``,
and diffusers loads them as it loads components of any other library (transformers' included): it
looks the class up on the imported ``diffusers_linearizer`` package, recognises its diffusers base
class (``ModelMixin`` / ``SchedulerMixin``), and calls its ``from_pretrained`` with ``torch_dtype``,
``device_map``, ``variant`` and the rest, logging every component through
``diffusers.pipelines.pipeline_utils``. What this module adds:

1. ``from_pretrained()`` with no argument loads the packaged default
   (``diffusers_linearizer.defaults.DEFAULT_MODEL_DIR``);
2. a model card (``README.md``) written by ``save_pretrained`` / ``push_to_hub``;
3. ``LinearizerPipeline.from_pretrained`` returns the generation class of the saved model's kind
   (``LinearizerClassPipeline`` / ``LinearizerTextPipeline`` for conditional models, both subclasses of it);
4. Hub repo ids are resolved with ``snapshot_download`` first (so the Hugging Face cache works offline,
   ``HF_HUB_OFFLINE=1``, and diffusers' online file listing, which refuses libraries it does not know,
   is not needed).

It also checks a folder's layout before any weights are read (clear errors for missing files and
broken JSON), saves atomically, writes safetensors only, and never records the machine's paths.
"""

import json
import os
from types import SimpleNamespace
from typing import Any, Dict, Optional, Union

from diffusers import DiffusionPipeline
from diffusers.utils import logging

from ... import defaults
from ...atomic import atomic_dir, write_json_atomic, write_text_atomic

logger = logging.get_logger(__name__)

PACKAGE = "diffusers_linearizer"
#: module file written beside ``model_index.json`` so that ``DiffusionPipeline.from_pretrained`` finds our class
PIPELINE_MODULE = "pipeline_linearizer"
def pipeline_module_source() -> str:
    """The text of the ``pipeline_linearizer.py`` saved beside ``model_index.json``: it re-exports every
    registered pipeline class (the ``PIPELINES`` registry) of the installed package, and contains no model code."""
    from ..tasks import PIPELINES

    names = "".join(f"    {n},\n" for n in sorted({e.value.__name__ for e in PIPELINES.entries()}))
    return ('"""Written by diffusers-linearizer\'s `save_pretrained`.\n\n'
            "diffusers loads a third-party pipeline class from a module file saved beside `model_index.json`\n"
            "(`DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`). This file contains no model code: it\n"
            're-exports the pipeline classes of the installed package diffusers-linearizer.\n"""\n\n'
            f"from diffusers_linearizer import (  # noqa: F401\n{names})\n")
#: component → the file that marks it as saved, and whether weights (safetensors) must be beside it
COMPONENT_FILES = {"linearizer": ("config.json", True), "scheduler": ("scheduler_config.json", False)}
#: components some Linearizer pipelines have (a text model's), fetched from the Hub when saved
OPTIONAL_COMPONENTS = ("text_encoder", "tokenizer")
_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies")


def read_json(path: str) -> Dict[str, Any]:
    """A JSON file's object, or a ``ValueError`` naming the file and what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}).") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def check_layout(folder: str, needed, path: str, config_name: str = "model_index.json") -> None:
    """Raise a ``ValueError`` listing what ``folder`` lacks of a saved pipeline (before any weights are read)."""
    index_path = os.path.join(folder, config_name)
    if not os.path.isfile(index_path):
        raise ValueError(f"{path!r} is not a saved pipeline: {config_name} is missing in {folder}.")
    index = read_json(index_path)
    problems = []
    for name in needed:
        entry = index.get(name)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[0] is None:
            problems.append(f"{config_name} has no entry for {name!r}")
            continue
        marker, needs_weights = COMPONENT_FILES.get(name, ("config.json", False))
        sub = os.path.join(folder, name)
        if not os.path.isfile(os.path.join(sub, marker)):
            problems.append(f"{name}/{marker} is missing")
            continue
        read_json(os.path.join(sub, marker))
        if needs_weights and not any(f.endswith((".safetensors", ".safetensors.index.json")) for f in os.listdir(sub)):
            problems.append(f"{name}/ has no weights (diffusion_pytorch_model.safetensors)")
    if problems:
        raise ValueError(
            f"{path!r} is not a complete Linearizer pipeline: {'; '.join(problems)}. Expected model_index.json, "
            "linearizer/config.json with linearizer/diffusion_pytorch_model.safetensors"
            + (", and scheduler/scheduler_config.json (or pass the missing component, e.g. "
               "scheduler=LinearizerScheduler())." if "scheduler" in needed else ".")
        )


def resolve_folder(path: str, needed, download_kwargs: Dict[str, Any], config_name: str = "model_index.json") -> str:
    """A local folder for ``path``: the folder itself, or a Hub repo id's snapshot (the cache when offline)."""
    if os.path.isdir(path):
        return path
    looks_local = os.path.isabs(path) or path.startswith(("." + os.sep, ".." + os.sep, "~")) or os.path.exists(path)
    if looks_local or path.count("/") != 1 or not path.strip("/") or path.endswith("/"):
        raise ValueError(
            f"{path!r} is neither a directory of a saved pipeline (no such directory) nor a Hub repo id ('org/name')."
        )
    from huggingface_hub import snapshot_download

    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    allow = [config_name, "README.md"] + [f"{name}/*" for name in needed]
    try:
        return snapshot_download(path, allow_patterns=allow, **download_kwargs)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise OSError(
            f"The Hub repo {path!r} is not in the Hugging Face cache ({os.environ.get('HF_HOME') or '~/.cache/huggingface'})"
            " and cannot be downloaded: the Hub is off (HF_HUB_OFFLINE=1 or local_files_only=True) or unreachable. "
            "Download it once online, or pass a local folder."
        ) from err
    except HfHubHTTPError as err:
        raise OSError(f"The Hub repo {path!r} could not be fetched: {err}") from err


class LinearizerLoadingMixin:
    """``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` of the Linearizer pipelines (module
    docstring). List it before ``DiffusionPipeline`` in the bases."""

    _component_names = ("linearizer", "scheduler")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Optional[Union[str, os.PathLike]] = None, **kwargs):
        """``DiffusionPipeline.from_pretrained`` for a local folder, a Hub repo id, or — with no argument —
        the packaged trained Fashion-MNIST 32×32 pipeline (``diffusers_linearizer/default_model/``).

        Takes diffusers' arguments (``dtype``/``torch_dtype``, a dtype or ``{"linearizer": ..., "default":
        ...}``; ``device_map``, ``variant``, ``low_cpu_mem_usage``, ``cache_dir``, ``revision``, ``token``,
        ``local_files_only``, ``force_download``, ``custom_pipeline``, ``trust_remote_code``, and components
        to use instead of the saved ones, ``linearizer=`` / ``scheduler=``). Weights load from safetensors
        only. The layout is checked before any weights are read. The ``pipeline_linearizer.py`` file saved
        beside ``model_index.json`` is never executed here: this class already is the pipeline class.
        """
        if pretrained_model_name_or_path is None:
            if not defaults.packaged_default_available():
                raise FileNotFoundError(
                    f"No path given and the packaged default pipeline is missing ({defaults.DEFAULT_MODEL_DIR} has "
                    f"no {cls.config_name}); reinstall diffusers-linearizer or pass a pipeline directory or Hub repo id."
                )
            pretrained_model_name_or_path = defaults.DEFAULT_MODEL_DIR
        path = os.fspath(pretrained_model_name_or_path)
        if kwargs.get("use_safetensors") is False:
            raise ValueError("Linearizer pipelines load weights from safetensors only; drop use_safetensors=False.")
        kwargs["use_safetensors"] = True
        needed = [name for name in cls._component_names if name not in kwargs]
        wanted = needed + [n for n in OPTIONAL_COMPONENTS if n not in kwargs]  # of a text model, if saved
        folder = resolve_folder(path, wanted, {k: kwargs[k] for k in _DOWNLOAD_KWARGS if k in kwargs}, cls.config_name)
        cls = cls._class_for_kind(cls._saved_model(folder, kwargs))
        needed = [name for name in cls._component_names if name not in kwargs]
        check_layout(folder, needed, path, cls.config_name)
        pipe = DiffusionPipeline.from_pretrained.__func__(cls, folder, **kwargs)
        pipe.register_to_config(_name_or_path=path)
        return pipe

    @classmethod
    def _saved_model(cls, folder: str, kwargs: Dict[str, Any]):
        """What the pipeline class depends on of the linearizer to load (given in ``kwargs`` or saved in
        ``folder``): an object with ``config.conditioning`` and ``config.core_type``."""
        given = kwargs.get("linearizer")
        if given is not None:
            return given
        path = os.path.join(folder, "linearizer", COMPONENT_FILES["linearizer"][0])
        config = read_json(path) if os.path.isfile(path) else {}
        return SimpleNamespace(config=SimpleNamespace(conditioning=config.get("conditioning"),
                                                      core_type=config.get("core_type", "shared_basis")))

    @classmethod
    def _class_for_kind(cls, saved):
        """The class to build for the saved model ``saved``: ``cls`` itself (the generation pipelines refine this)."""
        return cls

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' ``load_config``, except that a saved ``_class_name`` of ``["pipeline_linearizer", name]``
        reads as ``name`` when it is called on a concrete class: diffusers would otherwise import the saved
        module as remote code, while the class to build is already known (``cls``)."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        entry = config.get("_class_name")
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] == PIPELINE_MODULE:
            config["_class_name"] = entry[1]
        return out

    def save_pretrained(self, save_directory: Union[str, os.PathLike], safe_serialization: bool = True,
                        variant: Optional[str] = None, max_shard_size: Optional[Union[int, str]] = None,
                        push_to_hub: bool = False, metrics: Optional[Dict[str, Any]] = None,
                        pipeline_module: bool = True, **kwargs):
        """diffusers' layout, plus a model card, written atomically; weights as safetensors only.

        Writes ``model_index.json``, ``linearizer/`` (config and safetensors weights, ``variant`` in their
        name), ``scheduler/scheduler_config.json`` and ``README.md`` (a ``ModelCard`` with both configs and
        ``metrics``). ``_name_or_path`` (where a component was loaded from, meaningless elsewhere) is not
        saved. With ``pipeline_module=True`` (default) ``_class_name`` is ``["pipeline_linearizer",
        "<ClassName>"]`` and a two-line ``pipeline_linearizer.py`` re-exporting the installed classes is
        saved beside it, which lets ``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)``
        return our pipeline. Everything is written to a temporary sibling folder and renamed into place
        (other files already in ``save_directory`` are kept). ``safe_serialization=False`` is ignored with
        a warning. ``push_to_hub=True`` then uploads the folder (``repo_id``, ``token``, ``private``,
        ``commit_message``, ``create_pr`` in ``kwargs``).
        """
        from ..model_card import linearizer_model_card

        if not safe_serialization:
            logger.warning("Linearizer pipelines store weights as safetensors only; ignoring safe_serialization=False.")
        save_directory = os.fspath(save_directory)
        repo_id = kwargs.pop("repo_id", None)
        with atomic_dir(save_directory) as tmp:
            DiffusionPipeline.save_pretrained(self, tmp, safe_serialization=True, variant=variant,
                                              max_shard_size=max_shard_size)
            for name in self._component_names:
                marker = os.path.join(tmp, name, COMPONENT_FILES[name][0])
                if not os.path.isfile(marker):
                    raise ValueError(f"Component {name!r} ({type(getattr(self, name, None)).__name__}) could not be saved.")
                config = read_json(marker)
                if config.pop("_name_or_path", None) is not None:
                    write_json_atomic(marker, config)
            index_path = os.path.join(tmp, self.config_name)
            index = read_json(index_path)
            index.pop("_name_or_path", None)
            if pipeline_module:
                index["_class_name"] = [PIPELINE_MODULE, type(self).__name__]
                write_text_atomic(os.path.join(tmp, f"{PIPELINE_MODULE}.py"), pipeline_module_source())
            write_json_atomic(index_path, index)
            write_text_atomic(os.path.join(tmp, "README.md"), str(linearizer_model_card(self, metrics, repo_id)))
        if push_to_hub:
            return self._upload_saved(save_directory, repo_id or os.path.basename(os.path.abspath(save_directory)), **kwargs)
        return None

    def push_to_hub(self, repo_id: str, commit_message: Optional[str] = None, private: Optional[bool] = None,
                    token: Optional[str] = None, create_pr: bool = False, safe_serialization: bool = True,
                    variant: Optional[str] = None, metrics: Optional[Dict[str, Any]] = None) -> str:
        """Save to a temporary folder with our model card (diffusers' own ``push_to_hub`` would replace it
        by a generic one fetched from the Hub) and upload it to the Hub repo ``repo_id``."""
        import tempfile

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

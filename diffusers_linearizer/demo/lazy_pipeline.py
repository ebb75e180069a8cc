"""A pipeline the demo loads on first use (the Project and Style tabs), so the other tabs start as fast as before."""

from __future__ import annotations

import threading
from typing import Optional

from .images import DemoError


class LazyPipeline:
    """Holds ``pipeline`` or loads ``PACKAGED_MODELS.get(model, model)`` with ``pipeline_class`` on first use.

    Subclasses set ``pipeline_class`` (a name in :mod:`diffusers_linearizer.pipelines`), ``default_model`` and
    ``what`` (how a failure to load names the model)."""

    pipeline_class = ""
    default_model = ""
    what = "model"

    def __init__(self, model: Optional[str] = None, pipeline=None):
        self.model_name = model or self.default_model
        self._pipe = pipeline
        self._lock = threading.Lock()

    @property
    def pipe(self):
        with self._lock:
            if self._pipe is None:
                from .. import pipelines
                from ..defaults import PACKAGED_MODELS

                path = PACKAGED_MODELS.get(self.model_name, self.model_name)
                try:
                    self._pipe = getattr(pipelines, self.pipeline_class).from_pretrained(path)
                except (OSError, ValueError) as err:
                    raise DemoError(f"The {self.what} {self.model_name!r} could not be loaded: {err}") from None
                self._pipe.set_progress_bar_config(disable=True)
            return self._pipe

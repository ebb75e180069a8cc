"""Conversion of checkpoints of the Linearizer paper's original code into diffusers-linearizer pipelines.

* :mod:`.safe_unpickle` reads ``torch.save`` files of whole modules without importing or running anything
  they name (tensors and containers only; every other object becomes an inert record);
* :mod:`.convert` maps those records onto a :class:`~diffusers_linearizer.LinearizerModel` and a
  :class:`~diffusers_linearizer.LinearizerScheduler` with the reference's sampler settings;
* :mod:`.export` writes them as a standard ``LinearizerPipeline`` directory with a model card.

Command line: ``python conversion/convert_reference_to_diffusers.py --checkpoint_path .../models/model.pth
--dump_path OUT`` (see ``docs/conversion.md``).
"""

from .records import Record, record_state_dict
from .safe_unpickle import RestrictedUnpickler, load_checkpoint

__all__ = ["Record", "RestrictedUnpickler", "load_checkpoint", "record_state_dict", "convert_reference_checkpoint",
           "save_converted_pipeline"]


def __getattr__(name):  # the converter needs the models and pipelines; import them lazily
    if name in ("convert_reference_checkpoint", "ReferenceConversion", "read_reference_args"):
        from . import convert

        return getattr(convert, name)
    if name == "save_converted_pipeline":
        from .export import save_converted_pipeline

        return save_converted_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

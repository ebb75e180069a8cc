"""The extension points of the package as Markdown, read from their registries: ``docs/design.md``'s tables.

Each extension point is one registry; a new entry is one file (or one function) and one ``register`` call.
This module renders, for every registry, where it lives, what a new entry must declare, and the entries there
are, between the markers ``<!-- registries:start -->`` and ``<!-- registries:end -->`` of ``docs/design.md``::

    python -m diffusers_linearizer.registry_docs docs/design.md     # rewrite the section in place
    python -m diffusers_linearizer.registry_docs --check docs/design.md   # exit 1 when it is out of date

It imports every layer (as the command line does), so nothing below imports it.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Tuple

from .atomic import write_text_atomic

START, END = "<!-- registries:start -->", "<!-- registries:end -->"


def extension_points() -> List[Tuple[str, str, str, object, object]]:
    """``(title, module defining the registry, what a new entry adds, registry, table columns or None for all)``
    for every extension point."""
    from .models.core_registry import CORES
    from .pipelines.tasks import PIPELINES
    from .schedulers.solvers import SOLVERS
    from .training.objective_registry import OBJECTIVES

    return [
        ("Cores", "diffusers_linearizer/models/core_registry.py",
         "a core module (the `LinearCore` interface: `forward(z, t)`, `operators(ts, dtype)`) and one "
         "`@CORES.register(name, operator=..., parameters=..., config=..., conditionings=..., uses_rank=...)` on its "
         "builder `build(dim, spec)`; `core_type=name` then works in the model config, the trainer's `--core_type` "
         "and the collapse", CORES, None),
        ("Solvers", "diffusers_linearizer/schedulers/solvers.py",
         "one `SOLVERS.register(name, Solver(c=..., a=..., b=..., d=...), accuracy=..., description=...)`: the "
         "scheduler's `step`, its grid, the collapse and the solver tests read the tableau", SOLVERS,
         ("order", "accuracy")),
        ("Objectives", "diffusers_linearizer/training/objective_registry.py",
         "a component function `(model, batch: StepInputs) -> {term: loss}` in its own module and one "
         "`OBJECTIVES.register(name, 'module:function', terms=..., ...)`; `--objective name` (and mixes with "
         "weights), the `--weight_TERM` flags, the data checks and the help text follow", OBJECTIVES, None),
        ("Pipelines", "diffusers_linearizer/pipelines/tasks.py",
         "a pipeline class with `_model_kinds` and one `register_pipeline(name, cls, task)` (in "
         "`pipelines/linearizer/__init__.py`); `pipeline_class_for(model, task)` and loading by kind find it",
         PIPELINES, None),
    ]


def render() -> str:
    """The section between the markers (markers included)."""
    parts = [START, ""]
    for title, module, how, registry, columns in extension_points():
        parts += [f"### {title}: `{registry.what}`", "", f"Registry in `{module}`. A new entry: {how}.", "",
                  registry.markdown_table(columns), ""]
    parts.append(END)
    return "\n".join(parts)


def updated(text: str) -> str:
    """``text`` with its registries section replaced by :func:`render`'s (a ``ValueError`` without markers)."""
    if START not in text or END not in text:
        raise ValueError(f"The page has no {START} … {END} section to fill in.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + render() + tail


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusers_linearizer.registry_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("page", help="the Markdown page with the registries markers (docs/design.md)")
    parser.add_argument("--check", action="store_true", help="only check that the page is up to date (exit 1 if not)")
    args = parser.parse_args(argv)
    with open(args.page, encoding="utf-8") as f:
        text = f.read()
    new = updated(text)
    if args.check:
        if new != text:
            print(f"{args.page} is out of date: run python -m diffusers_linearizer.registry_docs {args.page}",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        write_text_atomic(args.page, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

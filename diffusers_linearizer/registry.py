"""One registry per extension point: cores, objectives, solvers and pipeline tasks.

A registry maps a name to an entry (a class, a function or a record) together with what the entry
declares about itself. The declared fields are fixed by the registry, so every entry of an extension
point says the same things (an objective: which inputs it needs; a core: its operator form and config
keys; a pipeline: its (kind, task)), and whatever reads the registry — argument checks, CLI choices,
help texts, the tables in ``docs/design.md`` — reads the same declarations. Adding an entry is one
``register`` call in the module that defines it; nothing else keeps a list of names.

Example::

    CORES = Registry("core_type", fields={"operator": "the operator A_t", "config": "config keys it reads"})

    @CORES.register("lowrank", operator="a·I + U Vᵀ", config=("core_rank",))
    class LowRankCore(nn.Module): ...

    CORES.get("lowrank")            # the class
    CORES.names()                   # ('lowrank', ...) in registration order
    CORES.get("nope")               # ValueError: Unknown core_type 'nope'; expected one of lowrank, ...

This module imports nothing from the rest of the package, so every layer can own a registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

__all__ = ["Entry", "Registry"]


@dataclass(frozen=True)
class Entry:
    """One registered name: the object it stands for and what it declares (``declared[field]``)."""

    name: str
    value: Any
    declared: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""

    def __getattr__(self, item: str) -> Any:
        declared = object.__getattribute__(self, "declared")
        if item in declared:
            return declared[item]
        raise AttributeError(f"{object.__getattribute__(self, 'name')!r} declares no {item!r}.")


class Registry:
    """Names → entries for one extension point.

    Args:
        what: what a name selects, as an error message says it (``"core_type"``, ``"objective"``).
        fields: the fields every entry declares, each with a short description (the registry's contract).
            A field given in ``defaults`` may be left out by an entry.
        defaults: default values of optional fields.
    """

    def __init__(self, what: str, fields: Mapping[str, str], defaults: Optional[Mapping[str, Any]] = None):
        self.what = what
        self.fields = dict(fields)
        self.defaults = dict(defaults or {})
        unknown = set(self.defaults) - set(self.fields)
        if unknown:
            raise ValueError(f"Registry {what!r}: defaults for undeclared fields {sorted(unknown)}.")
        self._entries: Dict[str, Entry] = {}

    # ------------------------------------------------------------------ registering
    def register(self, name: str, value: Any = None, *, doc: Optional[str] = None, **declared):
        """Register ``value`` under ``name`` with its declared fields; without ``value``, a decorator.

        ``ValueError`` for a name registered twice, a missing or an undeclared field.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.what} name must be a non-empty string, got {name!r}.")
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice.")
        unknown = set(declared) - set(self.fields)
        if unknown:
            raise ValueError(f"{self.what} {name!r} declares unknown fields {sorted(unknown)}; "
                             f"the fields are {', '.join(self.fields)}.")
        missing = [f for f in self.fields if f not in declared and f not in self.defaults]
        if missing:
            raise ValueError(f"{self.what} {name!r} must declare {', '.join(missing)} "
                             f"({'; '.join(f'{f}: {self.fields[f]}' for f in missing)}).")
        values = {**self.defaults, **declared}

        def add(obj: Any) -> Any:
            text = doc if doc is not None else _first_line(getattr(obj, "__doc__", None))
            self._entries[name] = Entry(name, obj, values, text)
            return obj

        return add if value is None else add(value)

    def unregister(self, name: str) -> Entry:
        """Remove ``name`` and return its entry (plugins that replace an entry, tests that add one)."""
        entry = self.entry(name)
        del self._entries[name]
        return entry

    # ------------------------------------------------------------------ looking up
    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of ``name``; ``ValueError`` naming the known names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"Unknown {self.what} {name!r}; expected one of {self.choices()}.") from None

    def get(self, name: str) -> Any:
        """The object registered under ``name``."""
        return self.entry(name).value

    def names(self, **where: Any) -> Tuple[str, ...]:
        """Registered names in registration order; with ``field=value`` filters, those declaring them."""
        for key in where:
            if key not in self.fields:
                raise ValueError(f"{self.what} entries declare no {key!r}; the fields are {', '.join(self.fields)}.")
        return tuple(n for n, e in self._entries.items() if all(e.declared[k] == v for k, v in where.items()))

    def entries(self) -> Tuple[Entry, ...]:
        return tuple(self._entries.values())

    def choices(self, names: Optional[Sequence[str]] = None) -> str:
        """``"a, b, c"``: the names, for messages and help texts."""
        return ", ".join(self.names() if names is None else names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {self.choices()})"

    # ------------------------------------------------------------------ documentation
    def markdown_table(self, columns: Optional[Sequence[str]] = None,
                       render: Optional[Callable[[str, Any], str]] = None) -> str:
        """A Markdown table of the entries: name, the declared ``columns`` (all fields by default), summary."""
        columns = list(self.fields if columns is None else columns)
        render = render or _render
        head = [self.what, *columns, "what"]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in self._entries.values():
            cells = [f"`{e.name}`", *(render(c, e.declared[c]) for c in columns), e.doc]
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return "\n".join(rows)


def _first_line(doc: Optional[str]) -> str:
    return doc.strip().split("\n\n")[0].replace("\n", " ").strip() if doc else ""


def _render(_: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (tuple, list, set, frozenset)):
        return ", ".join(f"`{v}`" for v in value) if value else "—"
    return "—" if value is None else str(value)

"""The registry every extension point is built on (diffusers_linearizer/registry.py)."""

import pytest

from diffusers_linearizer.registry import Registry


def make():
    reg = Registry("thing", fields={"inputs": "what it reads", "order": "an int"}, defaults={"order": 1})

    @reg.register("first", inputs=("pairs",))
    class First:
        """The first thing.

        More text that is not the summary."""

    reg.register("second", len, inputs=(), order=2, doc="the builtin len")
    return reg, First


def test_lookup_and_declarations():
    reg, First = make()
    assert reg.get("first") is First and reg.get("second") is len
    assert reg.names() == ("first", "second") and list(reg) == ["first", "second"] and len(reg) == 2
    assert reg.entry("first").order == 1 and reg.entry("second").order == 2
    assert reg.entry("first").inputs == ("pairs",)
    assert reg.names(order=2) == ("second",) and reg.names(inputs=("pairs",)) == ("first",)
    assert "first" in reg and "third" not in reg and 3 not in reg
    assert reg.entry("first").doc == "The first thing."
    with pytest.raises(AttributeError, match="declares no 'colour'"):
        reg.entry("first").colour


def test_errors_name_what_was_expected():
    reg, _ = make()
    with pytest.raises(ValueError, match=r"Unknown thing 'third'; expected one of first, second\."):
        reg.get("third")
    with pytest.raises(ValueError, match=r"Unknown thing \['x'\]"):
        reg.get(["x"])
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("first", object(), inputs=())
    with pytest.raises(ValueError, match=r"must declare inputs \(inputs: what it reads\)"):
        reg.register("third", object())
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        reg.register("third", object(), inputs=(), colour="red")
    with pytest.raises(ValueError, match="declare no 'colour'"):
        reg.names(colour="red")
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("", object(), inputs=())
    with pytest.raises(ValueError, match="undeclared fields"):
        Registry("x", fields={"a": ""}, defaults={"b": 1})


def test_markdown_table():
    reg, _ = make()
    lines = reg.markdown_table().splitlines()
    assert lines[0] == "| thing | inputs | order | what |"
    assert lines[2] == "| `first` | `pairs` | 1 | The first thing. |"
    assert lines[3] == "| `second` | — | 2 | the builtin len |"


def test_the_design_page_shows_every_registry_as_it_is():
    """docs/design.md's extension-point tables are what the registries declare today (regenerate with
    ``python -m diffusers_linearizer.registry_docs docs/design.md``)."""
    from pathlib import Path

    from diffusers_linearizer.registry_docs import extension_points, main, render

    page = Path(__file__).resolve().parents[1] / "docs" / "design.md"
    assert render() in page.read_text(encoding="utf-8")
    assert main(["--check", str(page)]) == 0
    for _, module, _, registry, _ in extension_points():
        assert (Path(__file__).resolve().parents[1] / module).is_file()
        for name in registry.names():
            assert f"`{name}`" in render()


def test_the_design_page_check_fails_when_a_registry_changes(tmp_path):
    from diffusers_linearizer.models.core_registry import CORES
    from diffusers_linearizer.registry_docs import main

    from pathlib import Path

    page = tmp_path / "design.md"
    page.write_text((Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text(encoding="utf-8"))
    CORES.register("probe_core", lambda dim, spec: None, operator="`0`", parameters="0", config=(),
                   conditionings=(None,), uses_rank=False, doc="A probe.")
    try:
        assert main(["--check", str(page)]) == 1
        assert main([str(page)]) == 0 and "`probe_core`" in page.read_text()
    finally:
        CORES.unregister("probe_core")

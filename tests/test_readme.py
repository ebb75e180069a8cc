"""The README cannot drift from the code: every ```python block runs here as written, and every number it
prints is checked against the bound its comment states (``print(...)  # < 1e-4 ...``); every command in a
```bash block is parsed by the command line it names (the training runs are hours long; their arguments
must still be the ones the parsers take), and the conversion script's options exist."""

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BOUND = re.compile(r"#\s*<\s*([0-9.eE+-]+)")


def blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def printed_bounds(code):
    """The bounds stated on the ``print`` lines of ``code``, in order (``None`` for a print without one)."""
    return [float(m.group(1)) if (m := BOUND.search(line)) else None
            for line in code.splitlines() if line.lstrip().startswith("print(")]


def test_the_readme_has_its_blocks():
    assert len(blocks("python")) >= 3 and len(blocks("bash")) >= 5
    assert any(b is not None for code in blocks("python") for b in printed_bounds(code))


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs_and_prints_what_it_says(index, monkeypatch, tmp_path):
    code = blocks("python")[index]
    monkeypatch.chdir(tmp_path)  # a block that saves writes here
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    bounds = printed_bounds(code)
    assert len(lines) == len(bounds), (lines, bounds)
    for line, bound in zip(lines, bounds):
        if bound is not None:
            value = float(re.findall(r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?", line)[-1])
            assert value < bound, f"README block {index + 1} prints {line!r}, its comment says < {bound:g}"


def bash_commands():
    """Every command of the bash blocks, continuation lines joined, comments dropped, split at ``&&``."""
    commands = []
    for code in blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip() if not line.strip().startswith("#") else ""
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


def test_every_documented_command_parses():
    from diffusers_linearizer.cli_parser import build_parser
    from diffusers_linearizer.training.arguments import build_parser as train_parser

    seen = set()
    for command in bash_commands():
        words = shlex.split(command)
        if words[:3] == ["accelerate", "launch", "-m"]:
            words = ["diffusers-linearizer"] + words[4:]
        if words[0] == "diffusers-linearizer":
            if words[1] == "train":
                train_parser().parse_args(words[2:])
            else:
                build_parser().parse_args(words[1:])
            seen.add(words[1])
        elif words[0] == "python" and words[1].endswith(".py"):
            result = subprocess.run([sys.executable, str(REPO / words[1]), "--help"], capture_output=True, text=True,
                                    timeout=120)
            assert result.returncode == 0, result.stderr
            for option in (w for w in words[2:] if w.startswith("--")):
                assert option in result.stdout, f"{words[1]} has no option {option}"
            seen.add(words[1])
        else:
            assert words[0] in ("pip", "sudo", "python") or words[:2] == ["python", "-m"], command
    assert {"generate", "train", "distill-data", "demo"} <= seen, seen

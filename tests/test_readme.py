"""Every Python snippet in the README runs as written, and every `run.py` command in it parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from metaticket.cli import parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TEXT = README.read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
BASH = "\n".join(re.findall(r"```bash\n(.*?)```", TEXT, re.S)).replace("\\\n", " ")
COMMANDS = [line.split("run.py", 1)[1].split("#")[0].split("&&")[0].strip()
            for line in BASH.splitlines() if "python run.py" in line]


def test_readme_has_python_snippets_and_commands():
    assert len(SNIPPETS) >= 4 and len(COMMANDS) >= 10


@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_snippet_runs(code, monkeypatch):
    monkeypatch.chdir(REPO)  # snippets name configs/ relative to the repository root
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})  # noqa: S102 (our own README)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    args = parser().parse_args(shlex.split(command))
    assert callable(args.func)

"""Every Python snippet in the README and the docs pages runs as written, every `run.py` command in them parses,
the README stays a front door (<= 15 KB) and the docs site builds with ``mkdocs build --strict``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from metaticket.cli import parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
TEXT = "\n".join(p.read_text() for p in PAGES)
SNIPPETS = [(p, code) for p in PAGES for code in re.findall(r"```python\n(.*?)```", p.read_text(), re.S)]
BASH = "\n".join(re.findall(r"```bash\n(.*?)```", TEXT, re.S)).replace("\\\n", " ")
COMMANDS = [line.split("run.py", 1)[1].split("#")[0].split("&&")[0].strip()
            for line in BASH.splitlines() if "python run.py" in line]


def test_readme_has_python_snippets_and_commands():
    assert len(SNIPPETS) >= 4 and len(COMMANDS) >= 10


@pytest.mark.parametrize(("page", "code"), SNIPPETS,
                         ids=[f"{p.stem}-{i}" for i, (p, _) in enumerate(SNIPPETS)])
def test_readme_snippet_runs(page, code, monkeypatch):
    monkeypatch.chdir(REPO)  # snippets name configs/ relative to the repository root
    exec(compile(code, str(page), "exec"), {"__name__": "readme"})  # noqa: S102 (our own docs)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    args = parser().parse_args(shlex.split(command))
    assert callable(args.func)


def test_readme_is_a_front_door_and_links_every_page():
    text = README.read_text()
    assert len(text.encode()) <= 15_000
    linked = set(re.findall(r"\(docs/([\w-]+\.md)\)", text))
    assert linked == {p.name for p in PAGES[1:]}, {p.name for p in PAGES[1:]} ^ linked


def test_docs_site_builds_strictly(tmp_path):
    """Every page is in the nav, every link resolves, every API reference entry imports (mkdocstrings)."""
    import subprocess
    import sys

    nav = (REPO / "mkdocs.yml").read_text()
    assert all(f" {p.name}" in nav for p in PAGES[1:])
    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "index.html").read_text().count("doc-heading") > 40

"""The package map holds: no import circle between modules, every import points down the layers (config and errors
at the bottom, the supermask core, models and data, the learners, the run machinery, the CLI on top), and the
learners (``meta/``) know no data set and no architecture. Read from the source with ``ast``: function-level
imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "metaticket"

# lower number = lower layer; a module may import its own package and any lower layer
LAYERS = {"config": 0, "errors": 0, "tasks": 0, "hardware": 0, "core": 1, "distributed": 1, "models": 2, "data": 2,
          "meta": 3, "baselines": 3, "runs": 4, "cli": 5, "__init__": 5, "__main__": 6}
FORBIDDEN = {("meta", "data"), ("meta", "models"), ("baselines", "meta"), ("meta", "baselines")}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    """The metaticket modules ``path`` imports (absolute and relative, at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("metaticket")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".")[:-node.level] if not path.name == "__init__.py" else \
                    name.split(".")[:len(name.split(".")) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            if base.startswith("metaticket"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def group(module: str) -> str:
    """The layer group of a module: its package under metaticket, or the top-level module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports(path, name) if m in mods and m != name} for name, path in mods.items()}


def test_every_module_has_a_layer(graph):
    assert {group(m) for m in graph} <= set(LAYERS), {group(m) for m in graph} - set(LAYERS)
    assert len([m for m in graph if m.count(".") == 1 and (PACKAGE / f"{m.split('.')[1]}.py").is_file()]) <= 8


def test_imports_point_down_the_layers(graph):
    wrong = []
    for name, deps in graph.items():
        for dep in deps:
            a, b = group(name), group(dep)
            if dep == "metaticket" or a == b:
                continue
            if LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a]) or (a, b) in FORBIDDEN:
                wrong.append(f"{name} -> {dep}")
    assert not wrong, wrong


def test_no_import_circle(graph):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            circle = visit(node)
            assert circle is None, " -> ".join(circle)


def test_the_check_can_fail(graph):
    """The control: an upward import and a circle, added to a copy of the graph, are found."""
    bad = {k: set(v) for k, v in graph.items()}
    bad["metaticket.core.supermask"].add("metaticket.runs.loop")
    with pytest.raises(AssertionError):
        test_imports_point_down_the_layers(bad)
    bad = {k: set(v) for k, v in graph.items()}
    bad["metaticket.config"].add("metaticket.errors")
    bad["metaticket.errors"].add("metaticket.config")
    with pytest.raises(AssertionError, match="metaticket.config -> metaticket.errors -> metaticket.config"):
        test_no_import_circle(bad)

"""The packages form layers that only point down, and no module imports itself round a cycle.

    base  <  retrieval  <  data_pipelines  <  vimi

A package may import its own layer and those below it, never one above: retrieval knows nothing of
prompt shards, data_pipelines nothing of the model. Packages above retrieval see it only through
its public API, the ``retrieval`` package itself. Imports inside functions count too: a lazy import
hides a cycle from Python's import machinery, not from a reader.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("base", "retrieval", "data_pipelines", "vimi")  # lowest first
PUBLIC_ONLY = {"retrieval": "retrieval"}  # package -> the one module other packages may import


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in LAYERS for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                src = ".".join(here + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in modules else src for a in node.names]
        else:
            continue
        out.update(t for t in targets if t.split(".")[0] in LAYERS)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_layers_point_down():
    bad = []
    for src, targets in graph().items():
        layer = LAYERS.index(src.split(".")[0])
        for dst in sorted(targets):
            pkg = dst.split(".")[0]
            if LAYERS.index(pkg) > layer:
                bad.append(f"{src} imports {dst}, a layer above it")
            elif pkg != src.split(".")[0] and pkg in PUBLIC_ONLY and dst != PUBLIC_ONLY[pkg]:
                bad.append(f"{src} imports {dst}; outside {pkg} use only `import {PUBLIC_ONLY[pkg]}`")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    cycles, state = [], {}  # state: 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt in g and not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for n in sorted(g):
        if not state.get(n):
            visit(n, [n])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_walker_sees_upward_and_circular_imports(tmp_path, monkeypatch):
    """The two checks above must be able to fail: a planted upward import and a planted cycle."""
    pkg = tmp_path / "base"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from base import b\n    import vimi.pipeline\n")
    (pkg / "b.py").write_text("from .a import f\n")
    for other in LAYERS[1:]:
        (tmp_path / other).mkdir()
        (tmp_path / other / "__init__.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    g = graph()
    assert g["base.a"] == {"base.b", "vimi.pipeline"} and g["base.b"] == {"base.a"}
    assert "base.a imports vimi.pipeline, a layer above it" in _failure(test_layers_point_down)
    assert "base.a -> base.b -> base.a" in _failure(test_no_import_cycles)


def _failure(check) -> str:
    """The message ``check`` fails with ('' when it passes)."""
    try:
        check()
    except AssertionError as e:
        return str(e)
    return ""

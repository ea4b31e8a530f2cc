"""The fst_jax import graph has no cycles, counting function-level (lazy) imports too.

A lazy import that runs back up the layers (the GEPA core reaching for the sampler, a registry
reaching for a file loader built on it) is still a cycle for a reader and for refactoring: the
two modules cannot be understood, tested or moved apart. Run by hand with

    python -m pytest tests/test_import_graph.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

import fst_jax

ROOT = Path(fst_jax.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module → the fst_jax modules it imports anywhere in its body (ignoring TYPE_CHECKING)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                # `from pkg import sub` names the submodule; `from pkg import obj` the package
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("fst_jax"):
                    target = _resolve(name, modules)
                    if target and target != mod:
                        deps.add(target)
        graph[mod] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    colour = dict.fromkeys(graph, 0)
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        colour[start], path = 1, [start]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(nxt, 2) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif colour.get(nxt) == 0:
                colour[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(sorted(graph[nxt]))))
    return None


def _package_edges_removed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exporting its own submodules is not a layering edge."""
    return {
        m: {d for d in deps if not d.startswith(m + ".")} if m in graph else deps
        for m, deps in graph.items()
    }


def test_find_cycle_oracle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a2"}, "a2": {"b"}, "b": {"a2"}}) == ["a2", "b", "a2"]


def test_no_import_cycles():
    graph = _package_edges_removed(import_graph())
    assert len(graph) > 50 and "fst_jax.controller" in graph
    assert "fst_jax.sampling" in graph["fst_jax.chat"]  # the parser sees real edges
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_gepa_core_never_imports_jax_layers():
    graph = import_graph()
    gepa = [m for m in graph if m.startswith("fst_jax.gepa")]
    for m in gepa:
        bad = {d for d in graph[m] if d.startswith(("fst_jax.sampling", "fst_jax.models"))}
        assert not bad, f"{m} imports {bad}"

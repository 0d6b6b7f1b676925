"""The library's import graph, read from the source with `ast` (imports inside functions count too).

Dependencies point one way (DESIGN.md): front ends (api, cli, gate) -> passes, backends -> core.
The core never imports passes or backends (the pass registry and the backend registry resolve
them by name); passes and backends never import each other or a front end; nothing imports in a
cycle, not even lazily inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject's [tool.setuptools] package-dir).
PACKAGES = {
    "onnxopt": "onnxopt", "passes": "onnxopt.passes", "backends": "onnxopt.backends", "models": "onnxopt.models",
}
# The user-facing layer above passes and backends: it picks a recipe's passes and a backend.
FRONT_ENDS = {"onnxopt.api", "onnxopt.cli", "onnxopt.gate", "onnxopt.stages"}  # stages ask the backends registry
# Cycles tolerated until the branch that removes them is merged; the lead empties this list then.
CYCLE_EXEMPTIONS: list[set[str]] = []


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for folder in PACKAGES
        for path in sorted((ROOT / folder).rglob("*.py"))
        if ".venv" not in path.parts
    }


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The onnxopt modules an import statement loads: `from a.b import c` is a.b.c when c is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]


def import_graph() -> nx.DiGraph:
    """Module -> module it imports, for every onnxopt module, counting function-level imports."""
    modules = _modules()
    known = set(modules)
    graph = nx.DiGraph()
    graph.add_nodes_from(known)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in _imported(node, module, path.name == "__init__.py", known):
                # `import onnxopt.passes.fusion` loads that package; an attribute import names its module.
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph.add_edge(module, target, line=node.lineno)
    return graph


def _layer(module: str) -> str:
    if module.startswith("onnxopt.passes"):
        return "passes"
    if module.startswith("onnxopt.backends"):
        return "backends"
    if module.startswith("onnxopt.models"):
        return "models"
    if module == "onnxopt" or module in FRONT_ENDS:
        return "front end"
    return "core"


def _describe(graph: nx.DiGraph, edges) -> list[str]:
    return [f"{a} -> {b} (line {graph.edges[a, b]['line']})" for a, b in edges]


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    return import_graph()


def test_graph_sees_the_library(graph):
    """The parser finds the packages and both kinds of import (a guard against a vacuous graph)."""
    assert {"onnxopt.ir", "onnxopt.pipeline", "onnxopt.passes.fusion.rules", "onnxopt.backends.ort"} <= set(graph)
    assert graph.has_edge("onnxopt.passes.cleanup", "onnxopt.pipeline")  # module level
    assert graph.has_edge("onnxopt.cli", "onnxopt.api")  # inside a function
    assert graph.number_of_edges() > 100


def test_no_import_cycles(graph):
    exempt = {frozenset(group) for group in CYCLE_EXEMPTIONS}
    cycles = [c for c in nx.strongly_connected_components(graph) if len(c) > 1 and frozenset(c) not in exempt]
    found = [" <-> ".join(sorted(c)) + ": " + "; ".join(_describe(graph, graph.subgraph(c).edges)) for c in cycles]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("core", {"passes", "backends", "front end", "models"}),
        ("passes", {"backends", "front end", "models"}),
        ("backends", {"passes", "front end", "models"}),
    ],
)
def test_dependencies_point_one_way(graph, layer, forbidden):
    wrong = [(a, b) for a, b in graph.edges if _layer(a) == layer and _layer(b) in forbidden]
    assert not wrong, "\n".join(_describe(graph, wrong))


def test_exemptions_are_still_needed(graph):
    """An exempted cycle that no longer exists must leave the list (so the list only shrinks)."""
    components = {frozenset(c) for c in nx.strongly_connected_components(graph)}
    stale = [sorted(group) for group in CYCLE_EXEMPTIONS if frozenset(group) not in components]
    assert not stale, f"no longer a cycle, remove from CYCLE_EXEMPTIONS: {stale}"

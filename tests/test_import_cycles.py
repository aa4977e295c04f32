"""The import graph of the repository's packages, read from the source (nothing is imported): the floors of
DESIGN.md hold, and no file-level import cycle exists.

Every `import X` and `from X import Y` counts, at module level, inside functions and under TYPE_CHECKING; each
names its most specific repository module (`from search.trial.scoring import blocks` -> search/trial/scoring/blocks.py,
`from search.trial.scoring import SCORINGS` -> search/trial/scoring/__init__.py). Imports of anything outside the
repository are left out of the graph but checked against the floors' third-party rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmarks", "evaluators", "registry", "search", "spaces")

# DESIGN.md, "Floors": spaces/ and evaluators/ are independent of each other and of search/; registry/ imports
# nothing of the project; Optuna and Ray are known to search/ only (benchmarks/ drive studies and may read them).
FORBIDDEN = {
    "spaces": {"search", "evaluators", "benchmarks"},
    "evaluators": {"search", "spaces", "benchmarks"},
    "registry": {"search", "spaces", "evaluators", "benchmarks"},
    "search": {"benchmarks"},
}
SEARCH_ONLY = {"optuna", "ray"}


def module_files() -> dict[str, str]:
    """Dotted module name -> path relative to the repository root, for every .py file of the packages."""
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = rel.as_posix()
    return files


def imported_names(module: str, path: str) -> list[str]:
    """Every dotted name `path` imports, relative imports resolved; `from X import Y` gives X.Y (which may be a
    module) for each Y."""
    package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse((ROOT / path).read_text(), filename=path)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            names += [f"{source}.{alias.name}" for alias in node.names]
    return names


def import_graph() -> tuple[nx.DiGraph, dict[str, set[str]]]:
    """Edges file -> file between repository modules, and each file's outside top-level imports."""
    files = module_files()
    graph, outside = nx.DiGraph(), {}
    for module, path in files.items():
        graph.add_node(path)
        outside[path] = set()
        for name in imported_names(module, path):
            target = name
            while target and target not in files:
                target = target.rpartition(".")[0]
            if not target:
                outside[path].add(name.split(".")[0])
            elif target != module:
                graph.add_edge(path, files[target])
    return graph, outside


GRAPH, OUTSIDE = import_graph()


def test_the_graph_sees_imports_of_every_kind():
    assert GRAPH.has_edge("search/trial/rungs.py", "search/trial/objective.py")  # module level
    assert GRAPH.has_edge("benchmarks/trial_cost.py", "search/trial/scoring/__init__.py")  # inside a function
    assert GRAPH.has_edge("search/trial/scoring/scoring.py", "search/trial/context.py")  # under TYPE_CHECKING
    assert "torch" in OUTSIDE["evaluators/train.py"] and "optuna" in OUTSIDE["search/trial/objective.py"]


def test_no_import_cycles():
    found = [sorted(c) for c in nx.strongly_connected_components(GRAPH) if len(c) > 1]
    found += [[n] for n in nx.nodes_with_selfloops(GRAPH)]
    assert not found, f"import cycles: {found}"


def test_the_floors_of_the_design_hold():
    wrong = []
    for source, target in GRAPH.edges:
        if target.split("/")[0] in FORBIDDEN.get(source.split("/")[0], set()):
            wrong.append(f"{source} imports {target}")
    for path, names in OUTSIDE.items():
        if path.split("/")[0] in {"spaces", "evaluators", "registry"}:
            wrong += [f"{path} imports {name}" for name in sorted(names & SEARCH_ONLY)]
    assert not wrong, "\n".join(wrong)

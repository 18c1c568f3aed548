"""The packages' import graph has no cycle: every ``import`` of one of our modules, at the top of a
file or inside a function, is an edge (a function-level import closes a cycle just as well, only
later); imports under ``if TYPE_CHECKING:`` are not, since they never run. The experiment registry
imports its modules by name (``importlib``), which is how it stays below them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src"
PACKAGES = ("brims", "brims_experiments")


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((SOURCE / package).rglob("*.py"))}


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours (``modules``, by name)  that ``name`` imports (``from a import b`` counts ``a.b`` when it is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        found |= {target for target in targets if target in modules and target != name}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    modules = all_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert cycles(graph) == []


@pytest.mark.parametrize("source, expected", [
    ({"a": "import p.b", "b": "def f():\n    import p.a"}, [["p.a", "p.b"]]),
    ({"a": "from p import b", "b": "from . import a"}, [["p.a", "p.b"]]),
    ({"a": "import p.b", "b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.a"}, []),
    ({"a": "from . import b", "b": "x = 1"}, []),
])
def test_the_cycle_finder_sees_function_level_imports_and_ignores_type_checking(tmp_path, source, expected):
    package = tmp_path / "p"
    package.mkdir()
    modules = {"p": package / "__init__.py"}
    modules["p"].write_text("")
    for name, text in source.items():
        modules[f"p.{name}"] = package / f"{name}.py"
        modules[f"p.{name}"].write_text(text + "\n")
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert cycles(graph) == expected

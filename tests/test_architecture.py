"""The house's one rule per layer, read from the code: imports go one way, and none go round.

schemas/ (provider dialects, the canonical event, the status vocabulary and rule) is at the
bottom and imports nothing of Ticks' other packages; workers/ (the Celery side, with the domain
core in workers/core/) never imports app/ (the web); bench/ and the top-level modules sit on
top. No module imports, directly or through others, a module that imports it back: imports
inside functions count too (a circle dodged by a late import is still a circle).
docs/development.md has the map.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("app", "workers", "schemas", "bench")
TOP_LEVEL = ("devserver", "embedded")
# What each package may not import (the layers, one way).
FORBIDDEN = {
    "schemas": ("app", "workers", "bench", *TOP_LEVEL),
    "workers": ("app", "bench", *TOP_LEVEL),
    "app": ("bench", *TOP_LEVEL),
}


def module_files() -> dict[str, Path]:
    """Every module of Ticks by dotted name (a package by its name, for its __init__)."""
    found = {name: ROOT / f"{name}.py" for name in TOP_LEVEL}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The Ticks modules ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from package import module` imports the module; `from module import name`
            # the module itself.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: that module
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: set(imported(name, path, modules)) for name, path in modules.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(edges.get(node, ())):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back_through_others():
    assert circles(graph()) == []


def test_layers_import_one_way():
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in graph().items()
        for target in targets
        for layer, forbidden in FORBIDDEN.items()
        if name.split(".")[0] == layer and target.split(".")[0] in forbidden
    )
    assert wrong == []


def test_the_reader_sees_imports_and_circles():
    """The checker itself: late imports and `from package import module` are read, and a
    circle through three modules is one group."""
    edges = graph()
    assert "workers.celery_app" in edges["workers.tasks"] or any(
        "celery_app" in target for target in edges["workers.tasks"]
    )
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []

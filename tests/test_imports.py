"""The package's modules import one another in one direction only (module -> routing ->
measurement, op -> launcher -> kernel), counting imports inside functions too, and each says
its one job in the first line of its docstring. Read from the source, nothing imported."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package it is installed as (pyproject.toml's package-dir).
PACKAGES = {"triton_rnn": "triton_rnn", "kernels": "triton_rnn.kernels"}


def modules(root: Path, packages: dict) -> dict:
    """{dotted module name: path} of every module of `packages` under `root`."""
    found = {}
    for folder, package in packages.items():
        for path in sorted((root / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _package_of(name: str, path: Path) -> str:
    return name if path.stem == "__init__" else name.rpartition(".")[0]


def import_graph(root: Path, packages: dict) -> dict:
    """{module: set of the package's modules it imports}, anywhere in its source. Importing
    a.b.c runs a.b's __init__ too: that counts unless the importer lies inside a.b."""
    known = modules(root, packages)
    graph = {}
    for name, path in known.items():
        here = _package_of(name, path)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    base = f"{parent}.{base}" if base else parent
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                         for alias in node.names]
            else:
                continue
            for target in names:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    inside = name == prefix or name.startswith(prefix + ".")
                    if prefix in known and prefix != name and (i == len(parts) or not inside):
                        targets.add(prefix)
        graph[name] = targets
    return graph


def cycles(graph: dict) -> list:
    """Every import cycle, as a list of module names (depth-first search)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_among_the_package_modules():
    graph = import_graph(ROOT, PACKAGES)
    assert "triton_rnn.measure" in graph and "triton_rnn.kernels.launch" in graph
    assert "triton_rnn.measure" in graph["triton_rnn.routing"]  # the graph sees real imports
    assert not cycles(graph), cycles(graph)


def test_the_check_finds_a_cycle_through_an_import_inside_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A package."""\nfrom .a import f\n')
    (pkg / "a.py").write_text('"""A."""\nfrom . import b\n\ndef f():\n    return b\n')
    (pkg / "b.py").write_text('"""B."""\n\ndef g():\n    from .a import f\n    return f\n')
    (pkg / "c.py").write_text('"""C."""\nimport pkg\n')
    found = cycles(import_graph(tmp_path, {"pkg": "pkg"}))
    assert ["pkg.a", "pkg.b", "pkg.a"] in found
    assert ["pkg", "pkg.c"] not in [c[:2] for c in found]  # nothing imports c


@pytest.mark.parametrize("name", sorted(modules(ROOT, PACKAGES)))
def test_each_module_says_its_job_first(name):
    path = modules(ROOT, PACKAGES)[name]
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and doc.splitlines()[0].strip(), f"{path}: no first docstring line"

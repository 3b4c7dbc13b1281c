"""The layers import one way: core ← libraries ← campaign ← tasks ← flows ← CLI.

Every module of the installed package is read as source (its imports, at the top or
inside functions, found by walking the syntax tree) and placed on its floor by the
folder it lives in, the way pyproject maps them (``sapis.dft`` is ``dft/``).
"""

import ast
import tomllib
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = {"core": 0, "library": 1, "campaign": 2, "tasks": 3, "flows": 4, "cli": 5}
LIBRARIES = ("sapis.dft", "sapis.surrogate", "sapis.generator", "sapis.scaling")


def package_dirs() -> dict[str, Path]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {name: REPO / d for name, d in config["tool"]["setuptools"]["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    out = {}
    for package, folder in package_dirs().items():
        for path in folder.glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out[name] = path
    for path in (REPO / "sapis" / "cli").glob("*.py"):
        out["sapis.cli" if path.stem == "__init__" else f"sapis.cli.{path.stem}"] = path
    return out


def floor(module: str) -> str:
    if module.startswith("sapis.cli") or module == "sapis.__main__":
        return "cli"
    for prefix, name in (
        ("sapis.flows", "flows"),
        ("sapis.tasks", "tasks"),
        ("sapis.campaign", "campaign"),
    ):
        if module.startswith(prefix):
            return name
    if module.startswith(LIBRARIES):
        return "library"
    return "core"


def imports(path: Path) -> set[str]:
    """Top-level modules and ``sapis`` modules that ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # "from sapis.tasks import stages" imports the module sapis.tasks.stages
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    mods = modules()
    g = nx.DiGraph()
    for name, path in mods.items():
        g.add_node(name)
        for target in imports(path):
            if target in mods and target != name:
                g.add_edge(name, target)
            elif not target.startswith("sapis"):
                g.nodes[name].setdefault("external", set()).add(target.split(".")[0])
    return g


def test_the_layout_covers_every_folder_of_the_package(graph):
    assert {"sapis.store", "sapis.dft.batch", "sapis.campaign.campaign", "sapis.cli.data"} <= set(
        graph
    )
    assert {floor(m) for m in graph} == set(FLOORS)


def test_no_module_imports_a_floor_above_its_own(graph):
    upward = [
        f"{a} ({floor(a)}) imports {b} ({floor(b)})"
        for a, b in graph.edges
        if FLOORS[floor(b)] > FLOORS[floor(a)]
    ]
    assert not upward, "\n".join(upward)


def test_libraries_import_only_the_core_and_themselves(graph):
    def library(module: str) -> str:
        return ".".join(module.split(".")[:2])

    crossing = [
        f"{a} imports {b}"
        for a, b in graph.edges
        if floor(a) == "library" and floor(b) == "library" and library(a) != library(b)
    ]
    assert not crossing, "\n".join(crossing)


def test_nothing_below_the_tasks_imports_prefect(graph):
    engine = [
        m
        for m in graph
        if FLOORS[floor(m)] < FLOORS["tasks"] and "prefect" in graph.nodes[m].get("external", ())
    ]
    assert not engine


def test_nothing_imports_the_command_line(graph):
    assert not [a for a, b in graph.edges if floor(b) == "cli" and floor(a) != "cli"]


def test_there_are_no_import_cycles(graph):
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


def test_the_check_sees_a_hidden_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from sapis.campaign.campaign import Campaign\n")
    assert "sapis.campaign.campaign" in imports(module)
    assert FLOORS[floor("sapis.campaign.campaign")] > FLOORS[floor("sapis.store")]

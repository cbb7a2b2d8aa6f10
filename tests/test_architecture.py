"""The layering of ``src/autoguide``, read from the source with ``ast`` (every import statement,
also inside functions): library modules never import the apps, no import cycle exists, and every
package stays on its floor (``FLOORS``): a module imports only modules of its own package or of
packages on lower floors, so two packages on one floor never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "autoguide"

# The floors of the package, lowest first. ``autoguide`` is the top-level ``__init__.py``: it
# re-exports ``io.load_denoiser`` and ``runtime`` reads its location, so it sits between them.
FLOORS: list[set[str]] = [
    {"core"},
    {"nets"},
    {"io"},
    {"autoguide"},
    {"runtime"},
    {"data", "diffusion"},
    {"sample"},
    {"ema"},
    {"train", "eval"},
    {"sims"},
    {"apps"},
]


def module_name(path: Path) -> str:
    parts = ("autoguide", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` over the autoguide modules; ``from a.b import c`` points
    at ``a.b.c`` when that is a module, else at ``a.b``; relative imports are resolved."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def package_of(module: str) -> str:
    """``autoguide.x.y -> x``; the top-level module ``autoguide`` is its own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``package -> other packages its modules import``, every package a key."""
    packages: dict[str, set[str]] = {package_of(m): set() for m in graph}
    for module, targets in graph.items():
        packages[package_of(module)] |= {package_of(t) for t in targets} - {package_of(module)}
    return packages


def floor_violations(graph: dict[str, set[str]], floors: list[set[str]]) -> list[str]:
    """The imports that break the floors: ``module -> target`` where the target's package is
    neither the module's own nor on a lower floor; a package on no floor is one violation too."""
    level = {package: i for i, floor in enumerate(floors) for package in floor}
    unplaced = sorted({package_of(m) for m in graph} - level.keys())
    found = [f"package {p} is on no floor" for p in unplaced]
    for module, targets in sorted(graph.items()):
        own = package_of(module)
        for target in sorted(targets):
            other = package_of(target)
            if other != own and own in level and other in level and level[other] >= level[own]:
                found.append(f"{module} -> {target}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "autoguide.apps.train" in graph and "autoguide.train.run" in graph["autoguide.apps.train"] | {
        t for m in graph["autoguide.apps.train"] for t in graph.get(m, ())
    }
    assert "autoguide.nets.unet" in graph["autoguide.nets.build"]


def test_library_modules_never_import_apps():
    offenders = {
        module: sorted(t for t in targets if t.startswith("autoguide.apps"))
        for module, targets in import_graph().items()
        if not module.startswith("autoguide.apps")
    }
    assert not {m: t for m, t in offenders.items() if t}, "library modules import app modules"


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_package_stays_on_its_floor():
    assert floor_violations(import_graph(), FLOORS) == []


def test_every_floor_names_a_real_package():
    assert set().union(*FLOORS) == set(package_graph(import_graph()))


def test_floor_checker_on_a_small_graph():
    floors = [{"core"}, {"data", "nets"}, {"apps"}]
    graph = {
        "autoguide.core.units": set(),
        "autoguide.nets.unet": {"autoguide.core.units", "autoguide.nets.mp"},  # down, own package
        "autoguide.nets.mp": set(),
        "autoguide.data.folder": {"autoguide.nets.unet"},  # same floor, other package
        "autoguide.core.lazy": {"autoguide.apps.cli"},  # up
        "autoguide.apps.cli": {"autoguide.data.folder", "autoguide.core.units"},
        "autoguide.extra.x": set(),
    }
    assert floor_violations(graph, floors) == [
        "package extra is on no floor",
        "autoguide.core.lazy -> autoguide.apps.cli",
        "autoguide.data.folder -> autoguide.nets.unet",
    ]
    assert package_graph(graph) == {
        "core": {"apps"},
        "nets": {"core"},
        "data": {"nets"},
        "apps": {"data", "core"},
        "extra": set(),
    }

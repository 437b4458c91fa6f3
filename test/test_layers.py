"""The layer rules of mvvdp_core, read from the source with ast (nothing is imported).

Layers, bottom to top: shared foundations (geometry, rotations, step, cameras, fileio, threads); robot-side
logic, models and simulation; data and the policy; training; entry points (evaluation, demo, cli). A module
may import its own layer and the ones below, never one above; core never imports ROS.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "mvvdp_core"

# Package or module prefix -> layer; the longest matching prefix wins.
LAYERS: dict[str, int] = {
    "mvvdp_core": 0,
    "mvvdp_core.geometry": 0,
    "mvvdp_core.rotations": 0,
    "mvvdp_core.step": 0,
    "mvvdp_core.cameras": 0,
    "mvvdp_core.fileio": 0,
    "mvvdp_core.threads": 0,
    "mvvdp_core.checkpoint_paths": 0,
    "mvvdp_core.actions": 1,
    "mvvdp_core.safety": 1,
    "mvvdp_core.serving": 1,
    "mvvdp_core.execution": 1,
    "mvvdp_core.perception": 1,
    "mvvdp_core.preview": 1,
    "mvvdp_core.graph": 1,
    "mvvdp_core.model": 1,
    "mvvdp_core.sim": 1,
    "mvvdp_core.data": 2,
    "mvvdp_core.policy": 2,
    "mvvdp_core.train": 3,
    "mvvdp_core.evaluation": 4,
    "mvvdp_core.calibration_check": 4,
    "mvvdp_core.demo": 4,
    "mvvdp_core.cli": 4,
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of mvvdp_core (checkpoint folders hold no code)."""
    modules = {}
    for path in sorted(CORE.rglob("*.py")):
        if "checkpoints" in path.relative_to(CORE).parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def layer(module: str) -> int:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)]


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.Module, module_level: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run (none under `if TYPE_CHECKING`); with module_level only those run when
    the module is imported (none inside functions)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if module_level and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement names: `from pkg import sub` names pkg.sub when that is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    names = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        names.append(candidate if candidate in MODULES else base)
    return names


def imports(module: str, module_level: bool = False) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    return {name for node in import_nodes(tree, module_level) for name in imported_names(module, node)}


def test_every_module_has_a_layer() -> None:
    assert "mvvdp_core.geometry.projection" in MODULES and "mvvdp_core.sim.franka" in MODULES
    for module in MODULES:
        assert any(module == p or module.startswith(p + ".") for p in LAYERS if p != "mvvdp_core") or (
            module == "mvvdp_core"
        ), f"{module} is in no layer: add it to LAYERS"


@pytest.mark.parametrize("package", ["geometry", "sim", "model"])
def test_geometry_sim_and_model_do_not_import_data(package: str) -> None:
    for module in MODULES:
        if module.startswith(f"mvvdp_core.{package}"):
            bad = sorted(n for n in imports(module) if n.split(".")[:2] == ["mvvdp_core", "data"])
            assert not bad, f"{module} imports {bad}"


def test_core_never_imports_ros() -> None:
    for module in MODULES:
        bad = sorted(n for n in imports(module) if n.split(".")[0] in ("mvvdp_ros", "mvvdp_msgs", "rclpy"))
        assert not bad, f"{module} imports {bad}"


def test_no_import_runs_up_the_layers() -> None:
    for module in MODULES:
        for name in imports(module):
            if name.split(".")[0] == "mvvdp_core" and name != "mvvdp_core":
                assert layer(name) <= layer(module), (
                    f"{module} (layer {layer(module)}) imports {name} (layer {layer(name)})"
                )


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of the directed graph, as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in graph[module]:
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = 2
        return None

    for module in graph:
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


@pytest.mark.parametrize("module_level", [True, False], ids=["module-level", "with-deferred-imports"])
def test_no_import_cycles(module_level: bool) -> None:
    """No cycle among the imports that run at import time, nor when deferred imports inside functions
    count too (a deferred import only hides a cycle)."""
    graph = {
        module: sorted(n for n in imports(module, module_level) if n in MODULES and n != module)
        for module in MODULES
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])

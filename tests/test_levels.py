"""Every test module says its level in its `pytestmark`, once: `pytest -m unit` is the quick run, and a module that
starts a process or opens a socket is not in it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

LEVELS = {"unit", "integration", "system"}
# What only integration and system tests use: child processes, sockets, and the fixtures that start servers.
OUTSIDE_UNIT = {
    "subprocess",
    "socket",
    "pynetdicom",
    "cli",
    "server",
    "launch",
    "free_port",
    "EDGE_APP",
    "EDGE_CONVERT",
}


def _levels(tree: ast.Module) -> list[str]:
    """The levels named in the module's `pytestmark`."""
    marks = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["pytestmark"]
    ]
    return [n.attr for mark in marks for n in ast.walk(mark) if isinstance(n, ast.Attribute) and n.attr in LEVELS]


def _names(tree: ast.Module) -> set[str]:
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    modules = {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    arguments = {
        arg.arg
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for arg in node.args.args
    }
    return imported | modules | arguments


MODULES = sorted(Path(__file__).parent.glob("test_*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_each_module_has_one_level_and_a_unit_one_stays_in_this_process(path: Path) -> None:
    tree = ast.parse(path.read_text())
    levels = _levels(tree)
    assert len(levels) == 1, f"{path.name}: pytestmark names {levels or 'no level'}; one of {sorted(LEVELS)}"
    if levels == ["unit"]:
        assert not _names(tree) & OUTSIDE_UNIT, f"{path.name} is marked unit and uses {_names(tree) & OUTSIDE_UNIT}"

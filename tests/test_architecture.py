"""The arrows run one way: capture -> ingest -> store; inference -> imaging/runtime -> store; outputs and web read
what the store holds. One rule per wing of `edge_app/`: the wings it may import (its own always); `edge_app` never
imports `converters`; at most six modules loose in `edge_app/`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
BASE = {"edge_app", "errors", "system"}  # the package's version, the exception tree, file and process helpers
# Each wing and what it may import besides BASE and itself; every wing of edge_app/ has its rule.
MAY_IMPORT = {
    "errors": set(),
    "system": set(),
    "config": set(),  # a leaf: settings read from files and the environment
    "bundles": set(),
    "imaging": {"bundles"},  # pure: no database, no web, no models run
    "store": {"bundles", "imaging"},  # the only database writer; it reads image headers and result statuses
    "runtime": {"config", "bundles"},
    "ingest": {"imaging", "store"},
    "inference": {"config", "bundles", "imaging", "runtime", "store"},
    "outputs": {"config", "bundles", "imaging", "store"},
    "capture": {"config", "ingest"},
    "ops": {"config", "bundles", "capture", "outputs", "runtime", "store"},  # the check asks runtime for TensorRT
    "service": {"config", "bundles", "capture", "inference", "ingest", "ops", "outputs", "runtime", "store"},
    "web": {"config", "bundles", "imaging", "inference", "ingest", "ops", "outputs", "runtime", "service", "store"},
    "cli": {"config", "inference", "ops", "runtime", "service", "store", "web"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _wing(module: str) -> str | None:
    """The wing of an `edge_app` module (`edge_app` itself for the package); None outside edge_app."""
    parts = module.split(".")
    if parts[0] != "edge_app":
        return None
    return parts[1] if len(parts) > 1 else "edge_app"


def _modules() -> dict[str, set[str]]:
    out = {}
    for path in (ROOT / "edge_app").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = _imports(path)
    return out


def test_every_wing_has_its_rule() -> None:
    wings = {_wing(m) for m in _modules()} - {"edge_app"}
    assert wings == set(MAY_IMPORT), "a new wing needs its rule here"


@pytest.mark.parametrize("wing", sorted(MAY_IMPORT))
def test_a_wing_imports_only_what_its_rule_allows(wing: str) -> None:
    allowed = BASE | MAY_IMPORT[wing] | {wing}
    for module, imports in _modules().items():
        if _wing(module) == wing:
            wrong = sorted(i for i in imports if (w := _wing(i)) is not None and w not in allowed)
            assert not wrong, f"{module} imports {wrong}"


def test_no_wing_imports_back_up() -> None:
    """The rules leave no circle: no wing may import a wing that may import it, directly or further on."""

    def reach(wing: str) -> set[str]:
        seen: set[str] = set()
        todo = [wing]
        while todo:
            for nxt in MAY_IMPORT.get(todo.pop(), set()) - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert [w for w in MAY_IMPORT if w in reach(w)] == []


def test_edge_app_never_imports_converters() -> None:
    for module, imports in _modules().items():
        assert not any(i == "converters" or i.startswith("converters.") for i in imports), module


def test_few_modules_lie_loose_in_edge_app() -> None:
    loose = sorted(p.name for p in (ROOT / "edge_app").glob("*.py"))
    assert len(loose) <= 6, loose

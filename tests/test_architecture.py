"""The arrows run one way (../shared/design/ARCHITECTURE.md): capture -> ingest -> store; worker -> registry ->
imaging/runtime -> result -> store; web -> store, ingest. Nothing imports web, capture or worker but the service
that wires them (and the CLI that starts it); `edge_app` never imports `converters`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Who may import the top rooms.
ALLOWED = {
    "edge_app.web": {"edge_app.web", "edge_app.cli"},
    "edge_app.capture": {"edge_app.capture", "edge_app.service", "edge_app.check"},
    "edge_app.worker": {"edge_app.service"},
    "edge_app.service": {"edge_app.web", "edge_app.cli"},
}
# Pure rooms: what they must never import.
PURE = {
    "edge_app.imaging": ("edge_app.store", "edge_app.ingest", "edge_app.pipeline", "edge_app.registry"),
    "edge_app.store": ("edge_app.ingest", "edge_app.pipeline", "edge_app.registry", "edge_app.runtime"),
    "edge_app.ingest": ("edge_app.pipeline", "edge_app.registry", "edge_app.runtime", "edge_app.imaging.decode"),
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _modules() -> dict[str, set[str]]:
    out = {}
    for path in (ROOT / "edge_app").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = _imports(path)
    return out


def _within(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_edge_app_never_imports_converters() -> None:
    for module, imports in _modules().items():
        assert not any(_within(i, "converters") for i in imports), module


def test_the_top_rooms_are_imported_only_from_above() -> None:
    for module, imports in _modules().items():
        for room, importers in ALLOWED.items():
            if any(_within(i, room) for i in imports):
                assert any(_within(module, allowed) for allowed in importers), f"{module} imports {room}"


def test_the_pure_rooms_stay_pure() -> None:
    for module, imports in _modules().items():
        for room, forbidden in PURE.items():
            if _within(module, room):
                bad = [i for i in imports if any(_within(i, f) for f in forbidden)]
                assert not bad, f"{module} imports {bad}"

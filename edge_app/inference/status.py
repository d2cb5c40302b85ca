"""The models in service as the pages and the health check show them. Where the inference worker runs in its own
process (`edge-app worker`), it writes them to <data_dir>/worker.json and the web process reads them there."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_app.inference.diagnoser import Diagnoser
from edge_app.system.clock import utc_text
from edge_app.system.fileio import atomic_write

STATUS_NAME = "worker.json"


@dataclass(frozen=True)
class InService:
    name: str
    version: str
    precision: str
    runner: str
    bundle_sha256: str
    path: str
    labels: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)  # the ones deciding now (the site's, if any)

    def info(self) -> dict[str, str]:
        """What a result records of its model, and its bundle's sha256."""
        keys = ("name", "version", "precision", "runner", "bundle_sha256")
        return {key: str(getattr(self, key)) for key in keys}


def of_diagnosers(diagnosers: Iterable[Diagnoser]) -> list[InService]:
    out = []
    for d in diagnosers:
        m = d.bundle.manifest
        info = d.model_info
        out.append(
            InService(
                info["name"],
                info["version"],
                info["precision"],
                info["runner"],
                d.bundle.sha256,
                str(d.bundle.path),
                list(m.labels),
                dict(m.thresholds),
            )
        )
    return out


@dataclass(frozen=True)
class WorkerStatus:
    """What the worker process said last: its models, and what went wrong, if anything (a model an administrator
    put in service that it could not load)."""

    models: list[InService]
    problem: str | None = None


def write_status(data_dir: Path, models: list[InService], problem: str | None = None) -> None:
    status = {
        "pid": os.getpid(),
        "updated_at": utc_text("seconds"),
        "models": [asdict(m) for m in models],
        "problem": problem,
    }
    atomic_write(data_dir / STATUS_NAME, (json.dumps(status, indent=2) + "\n").encode())


def read_status(data_dir: Path) -> WorkerStatus | None:
    """What the worker process said last, or None where it has said nothing readable (or named no model)."""
    try:
        status: dict[str, Any] = json.loads((data_dir / STATUS_NAME).read_text(encoding="utf-8"))
        models = [InService(**m) for m in status["models"]]
        problem = status.get("problem")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not models:
        return None
    return WorkerStatus(models, str(problem) if problem else None)

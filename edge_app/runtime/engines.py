"""Build the TensorRT engines the configured bundles lack, before the service starts (the appliance's
edge-app-engine.service runs `edge-app engines`), and leave what happened in `<engine cache>/status.json` for
/api/v1/health. A build that cannot happen or fails leaves the service on ONNX Runtime, with the reason."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from edge_app.config import Settings
from edge_app.errors import EdgeAppError, RuntimeUnavailable
from edge_app.fileio import atomic_write

log = logging.getLogger(__name__)
STATUS_NAME = "status.json"


def ensure_engines(settings: Settings) -> dict[str, dict[str, Any]]:
    """For each configured bundle, by name: `status` (cached, built, unavailable or failed) and `detail`."""
    from edge_app.bundle import load_bundle
    from edge_app.runtime.engine_cache import EngineCache
    from edge_app.signature import load_public_keys

    model = settings.model
    trusted = load_public_keys(model.trusted_keys) if model.require_signature else None
    cache_dir = settings.engine_cache
    report: dict[str, dict[str, Any]] = {}
    for path in [model.bundle, *model.extra_bundles]:
        bundle = load_bundle(path, trusted_keys=trusted)
        name = f"{bundle.manifest.name} {bundle.manifest.version}"
        try:
            from edge_app.runtime.tensorrt import current_platform

            platform = current_platform()
        except RuntimeUnavailable as exc:
            report[name] = _entry("unavailable", f"{exc}: the service runs it on ONNX Runtime", bundle.sha256)
            continue
        cache = EngineCache(cache_dir)
        cached = cache.lookup(bundle, platform)
        if cached is not None:
            report[name] = _entry("cached", str(cached), bundle.sha256)
            continue
        report[name] = _build(bundle, cache, cache_dir, model.max_batch)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(cache_dir / STATUS_NAME, (json.dumps(report, indent=2) + "\n").encode())
    return report


def _build(bundle: Any, cache: Any, cache_dir: Path, max_batch: int) -> dict[str, Any]:
    from edge_app.runtime.tensorrt_build import BuildOptions, build_engine

    started = time.monotonic()
    try:
        engine = build_engine(bundle, cache, BuildOptions(max_batch=max_batch, timing_cache=cache_dir / "timing.cache"))
    except (EdgeAppError, RuntimeError, MemoryError) as exc:
        log.exception("building the TensorRT engine of %s failed", bundle.manifest.name)
        return _entry("failed", f"{exc}: the service runs it on ONNX Runtime", bundle.sha256)
    return _entry("built", f"{engine} in {time.monotonic() - started:.0f} s", bundle.sha256)


def _entry(status: str, detail: str, bundle_sha256: str) -> dict[str, Any]:
    at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    return {"status": status, "detail": detail, "bundle_sha256": bundle_sha256, "at": at}


def engine_status(cache_dir: Path) -> dict[str, Any]:
    """What the last `edge-app engines` left, or {} where it has not run."""
    try:
        status: dict[str, Any] = json.loads((cache_dir / STATUS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return status

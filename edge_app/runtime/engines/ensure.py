"""Build the TensorRT engines the configured bundles lack, before the service starts (the appliance's
edge-app-engine.service runs `edge-app engines`), and leave what happened in `<engine cache>/status.json` for
/api/v1/health. A build that cannot happen or fails leaves the service on ONNX Runtime, with the reason; a failed
build is not tried again at the next start unless asked (`edge-app engines --retry`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_app.config import Settings
from edge_app.errors import EdgeAppError, RuntimeUnavailable
from edge_app.system.clock import utc_text
from edge_app.system.fileio import atomic_write

if TYPE_CHECKING:
    from edge_app.runtime.engines.build import BuildOptions
    from edge_app.runtime.engines.build_process import BuildLimits

log = logging.getLogger(__name__)
STATUS_NAME = "status.json"


def build_options(settings: Settings) -> BuildOptions:
    from edge_app.runtime.engines.build import BuildOptions

    model = settings.model
    return BuildOptions(
        max_batch=model.max_batch, dla_core=model.dla_core, timing_cache=settings.engine_cache / "timing.cache"
    )


def build_limits(settings: Settings) -> BuildLimits:
    from edge_app.runtime.engines.build_process import BuildLimits

    return BuildLimits(settings.model.engine_build_memory_mb, settings.model.engine_build_timeout_s)


def ensure_engines(settings: Settings, retry: bool = False) -> dict[str, dict[str, Any]]:
    """For each configured bundle, by name: `status` (cached, built, unavailable or failed) and `detail`.
    `retry`: try again the builds that failed before."""
    from edge_app.bundles.bundle import load_as_configured
    from edge_app.runtime.engines.build_process import build_isolated
    from edge_app.runtime.engines.cache import EngineCache

    model = settings.model
    cache_dir = settings.engine_cache
    cache = EngineCache(cache_dir)
    if retry:
        cache.forget_failures()
    report: dict[str, dict[str, Any]] = {}
    for path in [model.bundle, *model.extra_bundles]:
        bundle = load_as_configured(path, model)
        name = f"{bundle.manifest.name} {bundle.manifest.version}"
        try:
            from edge_app.runtime.tensorrt import current_platform

            platform = current_platform(model.dla_core)
        except RuntimeUnavailable as exc:
            report[name] = _entry("unavailable", f"{exc}: the service runs it on ONNX Runtime", bundle.sha256)
            continue
        cached = cache.lookup(bundle, platform, model.max_batch)
        if cached is not None:
            report[name] = _entry("cached", str(cached), bundle.sha256)
            continue
        try:
            engine = build_isolated(bundle, cache, build_options(settings), build_limits(settings), log.info)
        except EdgeAppError as exc:
            log.error("no TensorRT engine for %s: %s", name, exc)
            report[name] = _entry("failed", f"{exc}: the service runs it on ONNX Runtime", bundle.sha256)
            continue
        report[name] = _entry("built", str(engine), bundle.sha256)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(cache_dir / STATUS_NAME, (json.dumps(report, indent=2) + "\n").encode(), mode=0o644)
    return report


def _entry(status: str, detail: str, bundle_sha256: str) -> dict[str, Any]:
    at = utc_text("seconds")
    return {"status": status, "detail": detail, "bundle_sha256": bundle_sha256, "at": at}


def engine_status(cache_dir: Path) -> dict[str, Any]:
    """What the last `edge-app engines` left, or {} where it has not run."""
    try:
        status: dict[str, Any] = json.loads((cache_dir / STATUS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return status

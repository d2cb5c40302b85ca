"""The TensorRT engine cache: one engine per bundle, TensorRT version and GPU, with a small manifest beside it.

An engine is only ever loaded where every field of its manifest matches this machine, its optimization profile
covers the configured batch and its bytes match their hash; anything else (a JetPack upgrade, another Orin module,
a larger max_batch, a damaged file) is a miss, and the engine is rebuilt. A build that failed is remembered for
its bundle and platform, so that it is not tried again at every start. Engines are readable by every user (the
service may run as another user than whoever built them); they hold no secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_app.bundles.bundle import Bundle, sha256_file
from edge_app.system.clock import utc_text
from edge_app.system.fileio import atomic_write

log = logging.getLogger(__name__)
ENGINE_NAME = "engine.plan"
META_NAME = "engine.json"


FAILED_NAME = "failed.json"
READABLE = 0o644


@dataclass(frozen=True)
class Platform:
    """What a serialized engine is tied to. Orin Nano, NX and AGX all call themselves "Orin" with compute
    capability 8.7: the SM count, the memory and the Jetson Linux release tell them (and JetPack updates) apart."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    sm_count: int = 0
    memory_mb: int = 0
    l4t_release: str = ""
    dla_core: int | None = None


def cache_key(bundle_sha256: str, platform: Platform) -> str:
    fields = {"bundle_sha256": bundle_sha256, **asdict(platform)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


class EngineCache:
    """Engines under `root/<key>/` with `engine.plan` and `engine.json`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, bundle: Bundle, platform: Platform) -> Path:
        return self.root / cache_key(bundle.sha256, platform)

    def lookup(self, bundle: Bundle, platform: Platform, max_batch: int = 1) -> Path | None:
        """The engine built from this bundle for this platform and batches up to `max_batch`, or None (with the
        reason logged)."""
        folder = self.folder(bundle, platform)
        try:
            meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            log.info(
                "no engine for %s on %s (TensorRT %s)",
                bundle.manifest.name,
                platform.gpu_name,
                platform.tensorrt_version,
            )
            return None
        except (OSError, ValueError) as exc:
            log.warning("engine manifest in %s unreadable (%s): rebuilding", folder, exc)
            return None
        expected = {"bundle_sha256": bundle.sha256, **asdict(platform)}
        mismatched = sorted(k for k, v in expected.items() if meta.get(k) != v)
        if mismatched:
            log.warning("engine in %s was built for another %s: rebuilding", folder, ", ".join(mismatched))
            return None
        built_for = meta.get("build", {}).get("max_batch", 0)
        if not isinstance(built_for, int) or built_for < max_batch:
            log.warning("engine in %s takes batches up to %s, not %d: rebuilding", folder, built_for, max_batch)
            return None
        engine = folder / ENGINE_NAME
        if not engine.is_file() or sha256_file(engine) != meta.get("engine_sha256"):
            log.warning("engine in %s is missing or damaged: rebuilding", folder)
            return None
        return engine

    def store(self, bundle: Bundle, platform: Platform, plan: bytes, build: dict[str, Any]) -> Path:
        """Write an engine and its manifest atomically (engine first, manifest last); return the engine path."""
        folder = self.folder(bundle, platform)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        engine = folder / ENGINE_NAME
        atomic_write(engine, plan, mode=READABLE)
        meta = {
            "bundle_sha256": bundle.sha256,
            **asdict(platform),
            "bundle": f"{bundle.manifest.name} {bundle.manifest.version}",
            "precision": bundle.manifest.precision,
            "engine_sha256": hashlib.sha256(plan).hexdigest(),
            "created_at": utc_text("seconds"),
            "build": build,
        }
        atomic_write(folder / META_NAME, (json.dumps(meta, indent=2) + "\n").encode(), mode=READABLE)
        (folder / FAILED_NAME).unlink(missing_ok=True)
        return engine

    def annotate(self, bundle: Bundle, platform: Platform, measured: dict[str, Any]) -> None:
        """Add what was measured of a cached engine (its speed) to its engine.json."""
        path = self.folder(bundle, platform) / META_NAME
        meta = json.loads(path.read_text(encoding="utf-8"))
        meta["measured"] = {**meta.get("measured", {}), **measured}
        atomic_write(path, (json.dumps(meta, indent=2) + "\n").encode(), mode=READABLE)

    def discard(self, bundle: Bundle, platform: Platform, reason: str) -> None:
        """Remove a cached engine that was refused after its build, and remember why."""
        folder = self.folder(bundle, platform)
        for name in (META_NAME, ENGINE_NAME):  # the manifest first: never an engine.json without its engine
            (folder / name).unlink(missing_ok=True)
        self.remember_failure(bundle, platform, reason)

    def remember_failure(self, bundle: Bundle, platform: Platform, reason: str) -> None:
        """Keep why a build of this bundle failed on this platform, so that it is not retried at every start."""
        folder = self.folder(bundle, platform)
        folder.mkdir(parents=True, exist_ok=True)
        at = utc_text("seconds")
        record = {"bundle_sha256": bundle.sha256, **asdict(platform), "reason": reason, "at": at}
        atomic_write(folder / FAILED_NAME, (json.dumps(record, indent=2) + "\n").encode(), mode=READABLE)

    def failure(self, bundle: Bundle, platform: Platform) -> dict[str, Any] | None:
        """The remembered failure of a build of this bundle on this platform (reason, at), or None."""
        try:
            record = json.loads((self.folder(bundle, platform) / FAILED_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("bundle_sha256") != bundle.sha256:
            return None
        return record if all(record.get(k) == v for k, v in asdict(platform).items()) else None

    def forget_failures(self) -> int:
        """Forget every remembered failure (`edge-app engines --retry`); return how many there were."""
        records = list(self.root.glob(f"*/{FAILED_NAME}"))
        for record in records:
            record.unlink(missing_ok=True)
        return len(records)

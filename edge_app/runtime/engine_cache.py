"""The TensorRT engine cache: one engine per bundle, TensorRT version and GPU, with a small manifest beside it.

An engine is only ever loaded where every field of its manifest matches this machine and its bytes match their
hash; anything else (a JetPack upgrade, another GPU, a damaged file) is a miss, and the engine is rebuilt.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_app.bundle import Bundle, sha256_file
from edge_app.fileio import atomic_write

log = logging.getLogger(__name__)
ENGINE_NAME = "engine.plan"
META_NAME = "engine.json"


@dataclass(frozen=True)
class Platform:
    """What a serialized engine is tied to."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
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

    def lookup(self, bundle: Bundle, platform: Platform) -> Path | None:
        """The engine built from this bundle for this platform, or None (with the reason logged)."""
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
        engine = folder / ENGINE_NAME
        if not engine.is_file() or sha256_file(engine) != meta.get("engine_sha256"):
            log.warning("engine in %s is missing or damaged: rebuilding", folder)
            return None
        return engine

    def store(self, bundle: Bundle, platform: Platform, plan: bytes, build: dict[str, Any]) -> Path:
        """Write an engine and its manifest atomically (engine first, manifest last); return the engine path."""
        folder = self.folder(bundle, platform)
        folder.mkdir(parents=True, exist_ok=True)
        engine = folder / ENGINE_NAME
        atomic_write(engine, plan)
        meta = {
            "bundle_sha256": bundle.sha256,
            **asdict(platform),
            "bundle": f"{bundle.manifest.name} {bundle.manifest.version}",
            "precision": bundle.manifest.precision,
            "engine_sha256": hashlib.sha256(plan).hexdigest(),
            "created_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "build": build,
        }
        atomic_write(folder / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
        return engine

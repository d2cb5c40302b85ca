"""One image's walk: decode, check it is what the model is for, preprocess, infer, read the findings."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_app.bundle import Bundle, load_bundle
from edge_app.config import Settings
from edge_app.errors import ImageRejected
from edge_app.imaging import DecodedImage, DecodeLimits, decode, preprocess
from edge_app.manifest import Manifest
from edge_app.result import Finding, Heatmap, findings, heatmap
from edge_app.runtime import Runner


@dataclass
class Diagnosis:
    """The outcome for one image: findings, or the reason it was rejected."""

    source: str
    status: str  # "ok" or "rejected"
    model: dict[str, str]
    reason: str | None = None
    findings: list[Finding] = field(default_factory=list)
    heatmap: Heatmap | None = None
    image: DecodedImage | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.source, "status": self.status}
        if self.reason is not None:
            out["reason"] = self.reason
        out["model"] = self.model
        if self.status == "ok":
            out["findings"] = [f.as_dict() for f in self.findings]
            out["positive"] = [f.label for f in self.findings if f.positive]
        out["timings_ms"] = {k: round(v, 2) for k, v in self.timings_ms.items()}
        return out


def check_intended_use(manifest: Manifest, image: DecodedImage) -> None:
    """Refuse a DICOM image whose modality or body part the model was not made for (PNG/JPEG carry neither)."""
    use = manifest.intended_use
    modality = str(image.metadata.get("modality", "")).upper()
    if modality and use.modality and modality not in use.modality:
        raise ImageRejected(
            image.source, f"modality {modality} is not one this model reads ({', '.join(use.modality)})"
        )
    body_part = str(image.metadata.get("body_part", "")).upper()
    if body_part and use.body_part and body_part != use.body_part.upper():
        raise ImageRejected(image.source, f"body part {body_part} is not what this model reads ({use.body_part})")


class Diagnoser:
    """Runs images through one bundle with one activated runner; safe to share between threads."""

    def __init__(self, bundle: Bundle, runner: Runner, limits: DecodeLimits | None = None) -> None:
        self.bundle = bundle
        self.runner = runner
        self.limits = limits or DecodeLimits()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, bundle_path: Path | None = None) -> Diagnoser:
        """Load the configured bundle (signature checked where required) and activate its runner."""
        from edge_app.runtime import open_runner
        from edge_app.runtime.select import build_engine_in_background
        from edge_app.signature import load_public_keys

        model = settings.model
        trusted = load_public_keys(model.trusted_keys) if model.require_signature else None
        bundle = load_bundle(bundle_path or model.bundle, trusted_keys=trusted)
        runner = open_runner(bundle, model.runner, model.threads, settings.engine_cache, model.max_batch)
        limits = DecodeLimits(max_pixels=settings.imaging.max_pixels, frame=settings.imaging.frame)
        diagnoser = cls(bundle, runner, limits)
        if model.runner == "auto" and runner.name == "onnxruntime" and model.build_engine_at_start:
            build_engine_in_background(bundle, settings.engine_cache, model.max_batch, diagnoser.swap_runner)
        return diagnoser

    def swap_runner(self, runner: Runner) -> None:
        """Switch to another runner of the same bundle (a freshly built TensorRT engine) between two images."""
        with self._lock:
            old, self.runner = self.runner, runner
        old.deactivate()

    @property
    def model_info(self) -> dict[str, str]:
        m = self.bundle.manifest
        return {"name": m.name, "version": m.version, "precision": m.precision, "runner": self.runner.name}

    def diagnose(self, data: bytes | Path | str, source: str | None = None) -> Diagnosis:
        """Diagnose one image given as a path or its bytes; a bad image gives a rejected `Diagnosis`, not an error."""
        source = source or str(data if not isinstance(data, bytes) else "<bytes>")
        manifest = self.bundle.manifest
        timings: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            image = decode(data, source=source, limits=self.limits)
            check_intended_use(manifest, image)
            t1 = time.perf_counter()
            batch = preprocess(image.pixels, manifest.input, manifest.preprocessing)
            t2 = time.perf_counter()
            with self._lock:
                outputs = self.runner.infer(batch)
            t3 = time.perf_counter()
        except ImageRejected as exc:
            return Diagnosis(source, "rejected", self.model_info, reason=exc.reason, timings_ms=timings)
        timings = {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "infer": (t3 - t2) * 1e3}
        found = findings(manifest, outputs)
        top = max(found, key=lambda f: f.probability)
        return Diagnosis(
            source,
            "ok",
            self.model_info,
            findings=found,
            heatmap=heatmap(manifest, outputs, top.label),
            image=image,
            timings_ms=timings,
        )

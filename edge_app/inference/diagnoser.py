"""One image's walk: decode, check it is what the model is for, preprocess, infer, read the findings."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

from edge_app.bundles.bundle import Bundle, load_as_configured
from edge_app.bundles.findings import (
    Diagnosis,
    GuardCheck,
    findings,
    guard_check,
    heatmap,
    triage_score,
)
from edge_app.bundles.manifest import IntendedUse
from edge_app.config import Settings
from edge_app.errors import ImageRejected
from edge_app.imaging import DecodeLimits
from edge_app.imaging.prepare import prepare
from edge_app.imaging.sandbox import DecoderPool
from edge_app.runtime import Runner

log = logging.getLogger(__name__)


class Diagnoser:
    """Runs images through one bundle with one activated runner; safe to share between threads.

    With a `DecoderPool`, images are decoded and preprocessed in its contained child processes (the service and
    the CLI); without one, in this process (trusted files: tests and tools).
    """

    def __init__(
        self, bundle: Bundle, runner: Runner, limits: DecodeLimits | None = None, decoder: DecoderPool | None = None
    ) -> None:
        self.bundle = bundle
        self._own_thresholds = bundle.manifest
        self.runner = runner
        self.limits = decoder.limits if decoder is not None else limits or DecodeLimits()
        self.decoder = decoder
        self._owns_decoder = False
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        bundle_path: Path | None = None,
        decoder: DecoderPool | None = None,
    ) -> Diagnoser:
        """Load the configured bundle (signature checked where required) and activate its runner; decode in
        `decoder`'s processes, or in a pool of its own started for it."""
        from edge_app.runtime import open_runner

        model, imaging = settings.model, settings.imaging
        bundle = load_as_configured(bundle_path or model.bundle, model)
        runner = open_runner(
            bundle, model.runner, model.threads, settings.engine_cache, model.max_batch, model.dla_core, model.triton
        )
        own = decoder is None
        if decoder is None:
            limits = DecodeLimits(
                max_pixels=imaging.max_pixels, max_decode_mb=imaging.max_decode_mb, frame=imaging.frame
            )
            decoder = DecoderPool(limits, workers=imaging.decoders, timeout_s=imaging.decode_timeout_s)
        diagnoser = cls(bundle, runner, decoder=decoder)
        diagnoser._owns_decoder = own
        return diagnoser

    def set_thresholds(self, thresholds: dict[str, float] | None) -> None:
        """Decide with the site's thresholds (one per label) from the next image on; None: the bundle's own."""
        manifest = self._own_thresholds
        if thresholds is not None:
            manifest = manifest.model_copy(update={"thresholds": dict(thresholds)})
        with self._lock:
            self.bundle = dataclasses.replace(self.bundle, manifest=manifest)

    def close(self) -> None:
        """Release the runner, and the decoders where they are this diagnoser's own."""
        if self.decoder is not None and self._owns_decoder:
            self.decoder.close()
        self.runner.deactivate()

    @property
    def model_info(self) -> dict[str, str]:
        m = self.bundle.manifest
        info = {"name": m.name, "version": m.version, "precision": m.precision, "runner": self.runner.name}
        if self.runner.where is not None:
            info["server"] = self.runner.where
        return info

    def diagnose(
        self, data: bytes | Path | str, source: str | None = None, *, header_overruled: bool = False
    ) -> Diagnosis:
        """Diagnose one image given as a path or its bytes. A bad image gives a rejected `Diagnosis`, an internal
        error a failed one (logged with its traceback): nothing raises past this boundary. `header_overruled`: a
        clinician sent the image to this model, whatever its DICOM header says of modality and body part; a model
        with an input guard then reads it (the guard judges the pixels), one without still goes by the header."""
        source = source or str(data if not isinstance(data, bytes) else "<bytes>")
        try:
            return self._diagnose(data, source, header_overruled)
        except ImageRejected as exc:
            return Diagnosis(source, "rejected", self.model_info, reason=exc.reason, reason_kind=exc.kind)
        except Exception as exc:
            log.exception("internal error on %s", source)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            return Diagnosis(source, "failed", self.model_info, reason=reason, reason_kind="internal")

    def _diagnose(self, data: bytes | Path | str, source: str, header_overruled: bool) -> Diagnosis:
        manifest = self.bundle.manifest
        read_as = manifest
        if header_overruled and manifest.guard is not None:
            read_as = manifest.model_copy(update={"intended_use": IntendedUse()})
        t0 = time.perf_counter()
        if self.decoder is not None:
            prepared = self.decoder.prepare(data, source, read_as)
        else:
            prepared = prepare(data, source, self.limits, read_as)
        t1 = time.perf_counter()
        with self._lock:
            outputs = self.runner.infer(prepared.batch)
            model = self.model_info  # what computed these outputs (a hub, or this box), before another batch
        t2 = time.perf_counter()
        timings = dict(prepared.timings_ms)
        if self.decoder is not None:  # what the contained child costs: transfer, scheduling
            timings["isolation"] = max(0.0, (t1 - t0) * 1e3 - sum(timings.values()))
        timings["infer"] = (t2 - t1) * 1e3
        check = guard_check(manifest, outputs)
        if check is not None and check.outside:
            return Diagnosis(
                source,
                "outside",
                model,
                reason=outside_reason(manifest.reads(), check),
                reason_kind="outside",
                guard=check,
                metadata=prepared.metadata,
                timings_ms=timings,
                preview=prepared.preview,
            )
        found = findings(manifest, outputs)
        positive = sorted((f for f in found if f.positive), key=lambda f: -f.probability)  # only where found
        maps = [heatmap(manifest, outputs, f.label) for f in positive]
        return Diagnosis(
            source,
            "ok",
            model,
            findings=found,
            heatmaps=[m for m in maps if m is not None],
            triage=triage_score(found),
            guard=check,
            metadata=prepared.metadata,
            timings_ms=timings,
            preview=prepared.preview,
        )


def outside_reason(reads: str, check: GuardCheck) -> str:
    """Why an image is not diagnosed, in plain words, with the guard's score."""
    return (
        f"does not look like a {reads} this model was made for: not diagnosed "
        f"(input guard: {check.component} score {check.score:.2f} above its limit)"
    )

"""One image's walk: decode, check it is what the model is for, preprocess, infer, read the findings; several
images (a burst) prepared side by side and inferred in one batch."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_app.bundles.bundle import Bundle, load_as_configured
from edge_app.bundles.findings import (
    Diagnosis,
    GuardCheck,
    findings,
    guard_check,
    heatmap,
    triage_score,
)
from edge_app.bundles.manifest import IntendedUse, Manifest
from edge_app.config import Settings
from edge_app.errors import DecoderUnavailable, ImageRejected
from edge_app.imaging import DecodeLimits
from edge_app.imaging.prepare import Prepared, prepare
from edge_app.imaging.sandbox import DecoderPool
from edge_app.runtime import Runner

log = logging.getLogger(__name__)
Outputs = dict[str, NDArray[np.float32]]


@dataclasses.dataclass(eq=False)
class Pending:
    """An image on its way through a diagnoser (`Diagnoser.begin`): `wait` gives it prepared."""

    source: str
    manifest: Manifest  # the thresholds it is read with, as they were when it began
    wait: Callable[[], Prepared]
    began: float
    # Waits at most a timeout for `wait` to be able to answer at once, and says whether it is (prepared in this
    # process: when waited for, so at once).
    settle: Callable[[float | None], bool] = lambda timeout_s: True
    unavailable: bool = False  # finished without being read: no decoder process or model for it (DecoderUnavailable)


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
        self._closed = False

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
        """Release the runner, and the decoders where they are this diagnoser's own; an image decoded by then is
        answered "not read" (`DecoderUnavailable`: the worker queues it again), never failed for it."""
        if self.decoder is not None and self._owns_decoder:
            self.decoder.close()
        with self._lock:  # not while an image is being inferred
            self._closed = True
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
        (diagnosis,) = self.finish([self.begin(data, source, header_overruled=header_overruled)])
        return diagnosis

    def begin(self, data: bytes | Path | str, source: str, *, header_overruled: bool = False) -> Pending:
        """Start preparing an image: in the decoder processes, side by side with the others begun (in this process,
        without a pool, when it is waited for). `finish` diagnoses it."""
        manifest = self.bundle.manifest
        read_as = manifest
        if header_overruled and manifest.guard is not None:
            read_as = manifest.model_copy(update={"intended_use": IntendedUse()})
        began = time.perf_counter()
        if self.decoder is None:
            return Pending(source, manifest, partial(prepare, data, source, self.limits, read_as), began)
        later = self.decoder.prepare_later(data, source, read_as)
        return Pending(source, manifest, later.result, began, later.settle)

    def finish(self, pending: Sequence[Pending], progress: Callable[[], None] | None = None) -> list[Diagnosis]:
        """The diagnoses of images begun, in their order: each waited for (`progress` called after each), those
        prepared inferred in one batch where the runner takes batches, one by one otherwise or where the batch
        fails. Each image's failure is its own: nothing raises past this boundary."""
        diagnoses: dict[Pending, Diagnosis] = {}
        ready: list[tuple[Pending, Prepared, dict[str, float]]] = []
        for p in pending:
            try:
                prepared = p.wait()
            except DecoderUnavailable as exc:  # not the image's failure: the worker queues it again
                p.unavailable = True
                diagnoses[p] = self._refused(p.source, exc)
            except Exception as exc:
                diagnoses[p] = self._refused(p.source, exc)
            else:
                timings = dict(prepared.timings_ms)
                if self.decoder is not None:  # what the contained child costs (transfer, scheduling; in a burst,
                    # the wait for a free child too)
                    waited = (time.perf_counter() - p.began) * 1e3
                    timings["isolation"] = max(0.0, waited - sum(timings.values()))
                ready.append((p, prepared, timings))
            if progress is not None:
                progress()
        if len(ready) > 1 and self.runner.takes_batches:
            try:
                outputs, model, infer_ms = self._infer(np.concatenate([prepared.batch for _, prepared, _ in ready]))
            except Exception:  # which image, if any, is at fault: each is tried alone below
                log.exception("a batch of %d images failed: each is tried alone", len(ready))
            else:
                for i, (p, prepared, timings) in enumerate(ready):
                    diagnoses[p] = self._read(p, prepared, {**timings, "infer": infer_ms}, outputs, model, i)
                ready = []
        for p, prepared, timings in ready:
            try:
                outputs, model, infer_ms = self._infer(prepared.batch)
            except DecoderUnavailable as exc:  # released under it: not the image's failure
                p.unavailable = True
                diagnoses[p] = self._refused(p.source, exc)
            except Exception as exc:
                diagnoses[p] = self._refused(p.source, exc)
            else:
                diagnoses[p] = self._read(p, prepared, {**timings, "infer": infer_ms}, outputs, model, 0)
        return [diagnoses[p] for p in pending]

    def _infer(self, batch: NDArray[np.generic]) -> tuple[Outputs, dict[str, str], float]:
        """The outputs, what computed them (a hub, or this box) and the time it took."""
        with self._lock:
            if self._closed:  # the service stops under a window its worker had not finished (its stop timed out)
                raise DecoderUnavailable("the model was released: the service stops")
            t0 = time.perf_counter()
            outputs = self.runner.infer(batch)
            return outputs, self.model_info, (time.perf_counter() - t0) * 1e3

    def _refused(self, source: str, exc: Exception) -> Diagnosis:
        if isinstance(exc, ImageRejected):
            return Diagnosis(source, "rejected", self.model_info, reason=exc.reason, reason_kind=exc.kind)
        log.error("internal error on %s", source, exc_info=exc)
        reason = f"internal error: {type(exc).__name__}: {exc}"
        return Diagnosis(source, "failed", self.model_info, reason=reason, reason_kind="internal")

    def _read(
        self,
        p: Pending,
        prepared: Prepared,
        timings: dict[str, float],
        outputs: Outputs,
        model: dict[str, str],
        index: int,
    ) -> Diagnosis:
        """Image `index` of a batch's outputs read with its manifest: findings, heatmaps, the guard's verdict; a
        failure there is this image's alone."""
        try:
            manifest, source = p.manifest, p.source
            check = guard_check(manifest, outputs, index)
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
            found = findings(manifest, outputs, index)
            positive = sorted((f for f in found if f.positive), key=lambda f: -f.probability)  # only where found
            maps = [heatmap(manifest, outputs, f.label, index) for f in positive]
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
        except Exception as exc:
            return self._refused(p.source, exc)


def outside_reason(reads: str, check: GuardCheck) -> str:
    """Why an image is not diagnosed, in plain words, with the guard's score."""
    return (
        f"does not look like a {reads} this model was made for: not diagnosed "
        f"(input guard: {check.component} score {check.score:.2f} above its limit)"
    )

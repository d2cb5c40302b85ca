"""The one way in for every image, whatever brought it: keep it durably, read its header, queue it.

Capture sources and the web hand their bytes here and nothing else; nothing here decodes pixels or runs a model.
An image is on disk and in the database before `submit` returns: that is when a sender may be told it arrived.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import IO, Any

from edge_app.errors import IdentityConflict, ImageRejected, NotAnImage, ReasonKind
from edge_app.imaging.header import ImageHeader, generated_header, read_header
from edge_app.imaging.uids import is_ours
from edge_app.store import Added, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Something a device said: `exposure` (kVp, mAs, time), `capture` (take a frame), `patient_id`, `status`."""

    kind: str
    fields: dict[str, str]
    source: str
    at: float = field(default_factory=time.monotonic)


class Ingest:
    """Stores arriving images and queues them; `on_queued` is called for each image newly queued.

    Device events meet images here: a patient ID scanned from a barcode goes to the next image that carries none
    of its own; an exposure report goes to the next image arriving within `exposure_window_s`; a capture trigger
    is passed to whoever asked for it (the video source)."""

    def __init__(
        self,
        store: Store,
        on_queued: Callable[[], None] | None = None,
        exposure_window_s: float = 30.0,
        min_free_mb: int = 0,
        max_decode_mb: int = 320,
    ) -> None:
        self.store = store
        self.on_queued = on_queued
        self.exposure_window_s = exposure_window_s
        self.min_free_mb = min_free_mb
        self.max_decode_mb = max_decode_mb  # a Deflated data set inflating past it is refused from its header
        self._lock = threading.Lock()
        self._patient: Event | None = None
        self._exposure: Event | None = None
        self._triggers: list[Callable[[Event], None]] = []

    def on_capture(self, trigger: Callable[[Event], None]) -> None:
        """Call `trigger` on every `capture` event."""
        self._triggers.append(trigger)

    @property
    def has_capture(self) -> bool:
        """Whether anything (a video source) takes `capture` events."""
        return bool(self._triggers)

    def event(self, event: Event) -> None:
        """Take a device's event."""
        # A patient ID never goes to the log; the other events' fields are device readings.
        log.info("%s from %s: %s", event.kind, event.source, "(held)" if event.kind == "patient_id" else event.fields)
        if event.kind == "patient_id":
            with self._lock:
                self._patient = event
        elif event.kind == "exposure":
            with self._lock:
                self._exposure = event
        elif event.kind == "capture":
            for trigger in self._triggers:
                trigger(event)

    def _pending(self, header: ImageHeader) -> tuple[str, dict[str, Any]]:
        """The scanned patient ID (where the image has none) and a recent exposure, each used once."""
        with self._lock:
            patient, exposure = "", {}
            if self._patient is not None and not header.patient_id:
                patient, self._patient = self._patient.fields.get("patient_id", ""), None
            if self._exposure is not None:
                if time.monotonic() - self._exposure.at <= self.exposure_window_s:
                    exposure = {"exposure": {**self._exposure.fields, "source": self._exposure.source}}
                self._exposure = None
        return patient, exposure

    def _keep_apart(
        self, digest: str, size: int, filename: str, source: str, header: ImageHeader, reason: str, patient_id: str
    ) -> Added:
        """Record an image that cannot join what its UIDs name in a study of its own (new UIDs; its own patient
        fields kept, its UIDs noted), refused with the reason; the same bytes sent again find that record."""
        held = self.store.kept_apart(digest, header.sop_instance_uid)
        if held is not None:
            return held
        fresh = generated_header()
        apart = replace(
            header, study_uid=fresh.study_uid, series_uid=fresh.series_uid, sop_instance_uid=fresh.sop_instance_uid
        )
        uids = {"study_uid": header.study_uid, "sop_instance_uid": header.sop_instance_uid}
        added = self.store.add_image(
            digest,
            size,
            filename,
            source,
            apart,
            reason=reason,
            reason_kind="identity",
            patient_id=patient_id,
            extra={"kept_apart": uids},
        )
        return replace(added, kept_apart=True)

    def submit(self, stream: IO[bytes], filename: str, source: str, patient_id: str = "") -> Added | None:
        """Keep one image; None where the stream held no bytes; `OSError` (ENOSPC) while the disk is nearly
        full. A file that is no image is kept too, refused with the reason; a DICOM object that is no image (an SR,
        a key object selection, a presentation state) or one this box made is kept with its study and never
        diagnosed (`Added.kept`); an image already held (the same SOP Instance UID) is acknowledged and not added
        twice."""
        free_mb = shutil.disk_usage(self.store.files_dir).free // 2**20
        if free_mb < self.min_free_mb:  # refused while there is still room for results, reviews, the database
            raise OSError(
                errno.ENOSPC,
                f"the appliance's disk is nearly full ({free_mb} MB free, storage.min_free_mb is "
                f"{self.min_free_mb}): new images are refused until space is freed",
            )
        digest, size = self.store.put_stream(stream)
        if size == 0:
            return None
        try:
            header = read_header(self.store.file_path(digest), filename, self.max_decode_mb)
        except ImageRejected as exc:
            who = replace(generated_header(), patient_name=exc.patient_name)  # a name its header held
            added = self.store.add_image(
                digest,
                size,
                filename,
                source,
                who,
                reason=exc.reason,
                reason_kind=exc.kind,
                patient_id=patient_id or exc.patient_id,
            )
            added = replace(added, not_an_image=isinstance(exc, NotAnImage))
        else:
            kind, kept = _kept(header) or (None, None)
            scanned, extra = self._pending(header) if kept is None else ("", {})
            try:
                added = self.store.add_image(
                    digest,
                    size,
                    filename,
                    source,
                    header,
                    reason=kept,
                    reason_kind=kind,
                    patient_id=patient_id or scanned,
                    extra=extra,
                )
            except IdentityConflict as exc:
                added = self._keep_apart(digest, size, filename, source, header, exc.reason, patient_id or scanned)
            else:
                added = replace(added, kept=kept is not None)
        log.debug(  # the image's number, never its file name: that may name the patient
            "image %d from %s: %s%s", added.image_id, source, added.status, " (already held)" if added.duplicate else ""
        )
        if added.status == "queued" and not added.duplicate and self.on_queued is not None:
            self.on_queued()
        return added


def _kept(header: ImageHeader) -> tuple[ReasonKind, str] | None:
    """Why an object is kept with its study and not diagnosed, None for an image to diagnose: one of the box's
    own (its UID root: a result a PACS sends back with the study), or a DICOM object that holds no image."""
    what = header.sop_class or "unknown SOP class"
    if is_ours(header.sop_instance_uid) or is_ours(header.series_uid):
        return "ours", f"made by this appliance ({what}): kept with the study, not diagnosed"
    if not header.holds_image:
        return "no_image", f"not an image ({what}): kept with the study, not diagnosed"
    return None

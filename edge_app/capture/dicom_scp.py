"""The DICOM receiver: a C-STORE and C-ECHO SCP (pynetdicom) for every image storage SOP class, in uncompressed
(Deflated among them) and compressed transfer syntaxes, and for what a PACS sends with a study besides images (SR,
key object selection, presentation states: `KEPT_STORAGE`), kept with the study and never diagnosed.

Success (0x0000) is answered only once `Ingest.submit` returned: the file fsynced and its row committed; a kept
object (no image, or one of the box's own outputs coming back) succeeds too. A SOP Instance already held (the same
bytes) is acknowledged and not stored twice; one that cannot join what its UIDs name (another patient's study, a SOP
Instance UID held with other bytes) is stored apart and answered 0xB000, a warning; an image class's data set
without pixels gets 0xA900, one that cannot be read 0xC210, a full disk 0xA700, each with the reason in the Error
Comment. A handler that fails answers with a failure status; the association and the server live on
(pynetdicom's own boundary).

A hostile peer on the LAN costs bounded resources: associations are capped in all and per address and dropped when
silent; data sets go to a temporary file as they arrive (never whole into memory) and one larger than
`max_object_mb` aborts its association; no association is accepted without room on the disk for such an object;
a peer whose objects are often refused, or read by no model, waits longer for each answer. Strangers are kept out
by the allow-lists and TLS, not by these bounds.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import shutil
import socket
import socketserver
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import uid
from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.transport import AssociationServer

from edge_app.config import DicomCaptureSettings
from edge_app.ingest import Ingest

log = logging.getLogger(__name__)

UNCOMPRESSED = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
]
TRANSFER_SYNTAXES = [
    *UNCOMPRESSED,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
]
# What a PACS sends with a study besides images (a re-sent study holds the box's own SR): kept, never diagnosed.
KEPT_STORAGE = [
    uid.BasicTextSRStorage,
    uid.EnhancedSRStorage,
    uid.ComprehensiveSRStorage,
    uid.Comprehensive3DSRStorage,
    uid.KeyObjectSelectionDocumentStorage,
    uid.GrayscaleSoftcopyPresentationStateStorage,
    uid.ColorSoftcopyPresentationStateStorage,
    uid.PseudoColorSoftcopyPresentationStateStorage,
    uid.BlendingSoftcopyPresentationStateStorage,
]
VERIFICATION = "1.2.840.10008.1.1"  # C-ECHO
_NO_IMAGE, _UNREADABLE, _OUT_OF_RESOURCES, _CANNOT_UNDERSTAND = 0xA900, 0xC210, 0xA700, 0xC211
_KEPT_APART = 0xB000  # Warning, Coercion of Data Elements: stored, in a study of its own
_REFUSED_WINDOW_S = 60.0  # max_refused_per_min counts the refusals of this last minute
_NO_ROOM = (0x02, 0x03, 0x01)  # A-ASSOCIATE-RJ: transient, service provider (presentation), temporary congestion


# Retired classes that units in service still send (an old ultrasound scanner: pydicom's color-pl.dcm).
RETIRED_IMAGE_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.6": "UltrasoundImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.3": "UltrasoundMultiFrameImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.12.3": "XRayAngiographicBiPlaneImageStorageRetired",
}


def image_storage_classes() -> list[str]:
    """Every storage SOP class that holds images (CR, DX, US, US multi-frame, secondary capture, ...), the
    retired ones above registered with pynetdicom's storage service."""
    from pynetdicom import AllStoragePresentationContexts, register_uid, sop_class
    from pynetdicom.service_class import StorageServiceClass

    for retired, keyword in RETIRED_IMAGE_STORAGE.items():
        if not hasattr(sop_class, keyword):
            register_uid(retired, keyword, StorageServiceClass)
    current = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts if "Image Storage" in _name(cx)]
    return current + list(RETIRED_IMAGE_STORAGE)


def _name(cx: Any) -> str:
    return str(uid.UID(cx.abstract_syntax).name)


class DicomReceiver:
    """Listens for associations while started; each image goes to `ingest`."""

    name = "dicom"

    def __init__(self, settings: DicomCaptureSettings, ingest: Ingest) -> None:
        self.settings = settings
        self.ingest = ingest
        self._server: Any = None
        self._received = 0
        self._networks = [ipaddress.ip_network(a, strict=False) for a in settings.allowed_addresses]
        self._data_bytes: dict[int, int] = {}  # by association: data set bytes of the message arriving
        self._refused: dict[str, deque[float]] = {}  # by peer address: when its objects were refused
        self._lock = threading.Lock()

    def start(self) -> None:
        from pynetdicom import AE, _config, evt

        _config.STORE_RECV_CHUNKED_DATASET = True  # each data set to a temporary file as it arrives, not to memory
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        for sop_class in image_storage_classes():
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        for sop_class in KEPT_STORAGE:
            ae.add_supported_context(sop_class, UNCOMPRESSED)
        ae.add_supported_context(VERIFICATION)
        if s.allowed_ae_titles:
            ae.require_calling_aet = list(s.allowed_ae_titles)
        ae.require_called_aet = not s.any_called_ae_title
        ae.maximum_associations = s.max_associations
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = s.timeout_s
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_request),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        address = (s.host, s.port)
        try:
            server = ae.make_server(
                address, ssl_context=self._tls(), evt_handlers=handlers, server_class=_Server, admit=self._admit
            )
        except OSError as exc:
            from edge_app.errors import ConfigError

            raise ConfigError(
                f"cannot listen for DICOM on {s.host}:{s.port} ({exc.strerror or exc}): change capture.dicom.port"
            ) from None
        threading.Thread(target=server.serve_forever, name="dicom-receiver", daemon=True).start()
        self._server = server
        log.info("DICOM receiver %s listening on %s:%d", s.ae_title, *address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def state(self) -> dict[str, object]:
        s = self.settings
        return {
            "name": self.name,
            "connected": self._server is not None,
            "detail": f"{s.ae_title} on {s.host}:{s.port}{' (TLS)' if s.tls_cert else ''}",
            "received": self._received,
        }

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.tls_cert is None or s.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=s.tls_ca)
        context.load_cert_chain(s.tls_cert, s.tls_key)
        if s.tls_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _admit(self, address: str, held: list[Any]) -> bool:
        """Whether a connection from `address` may go on to associate, `held` the associations open: not from
        outside `allowed_addresses`, nor from an address holding `max_associations_per_address` already."""
        if self._networks and not any(ipaddress.ip_address(address) in n for n in self._networks):
            log.warning("DICOM connection from %s refused: not in capture.dicom.allowed_addresses", address)
            return False
        count = sum(a.requestor.address == address for a in held)
        if count >= self.settings.max_associations_per_address:
            log.warning("DICOM connection from %s refused: it holds %d associations already", address, count)
            return False
        return True

    def _on_request(self, event: Any) -> None:
        """Refuse an association, for now (the modality tries again later), while the disk has no room for one
        more object of `max_object_mb` above `storage.min_free_mb`."""
        needed = self.ingest.min_free_mb + self.settings.max_object_mb
        free = shutil.disk_usage(self.ingest.store.files_dir).free // 2**20
        if free < needed:
            log.warning(
                "DICOM association from %s refused: %d MB free, %d MB wanted",
                event.assoc.requestor.address,
                free,
                needed,
            )
            event.assoc.acse.send_reject(*_NO_ROOM)
            event.assoc.kill()

    def _on_pdu(self, event: Any) -> None:
        """Count the data set bytes of the message arriving; abort the association past `max_object_mb`."""
        from pynetdicom.pdu import P_DATA_TF

        if not isinstance(event.pdu, P_DATA_TF):
            return
        key = id(event.assoc)
        size = self._data_bytes.get(key, 0)
        for item in event.pdu.presentation_data_value_items:
            value = item.presentation_data_value or b"\x00"  # its first byte: command (bit 0 set) or data set
            size = 0 if value[0] & 1 else size + len(value) - 1
        if size > self.settings.max_object_mb * 2**20:
            log.warning(
                "DICOM association from %s aborted: a data set larger than capture.dicom.max_object_mb (%d MB)",
                event.assoc.requestor.address,
                self.settings.max_object_mb,
            )
            self._data_bytes.pop(key, None)
            event.assoc.abort()
        else:
            self._data_bytes[key] = size

    def _on_close(self, event: Any) -> None:
        """Forget the association; remove the temporary file of a data set it left half-received."""
        self._data_bytes.pop(id(event.assoc), None)
        _discard_partial(event.assoc)

    def _on_store(self, event: Any) -> Dataset | int:
        requestor = event.assoc.requestor
        status = self._store(event)
        refused = not isinstance(status, int)
        delay = self._delay(requestor.address, refused)
        if delay:
            log.info("DICOM peer %s refused often: its answer waits %.0f s", requestor.address, delay)
            time.sleep(delay)
        return status

    def _store(self, event: Any) -> Dataset | int:
        requestor = event.assoc.requestor
        source = f"dicom:{requestor.ae_title.strip()}@{requestor.address}"
        sop_instance = str(event.request.AffectedSOPInstanceUID)
        try:
            with event.dataset_path.open("rb") as data:
                added = self.ingest.submit(data, f"{sop_instance}.dcm", source)
        except OSError as exc:
            log.error("cannot store %s from %s: %s", sop_instance, source, exc)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            return _failure(_OUT_OF_RESOURCES, "the appliance's disk is full" if full else f"cannot store: {exc}")
        if added is None:
            return _failure(_CANNOT_UNDERSTAND, "the data set is empty")
        if added.kept_apart:  # stored, though not where its UIDs say: a warning, so the sender does not retry
            log.warning("C-STORE of %s from %s kept apart: %s", sop_instance, source, added.reason)
            return _failure(_KEPT_APART, added.reason or "kept apart")
        if added.status == "rejected" and not added.duplicate and not added.kept:
            reason = added.reason or "refused"
            log.info("C-STORE of %s from %s refused: %s", sop_instance, source, reason)
            return _failure(_NO_IMAGE if added.not_an_image else _UNREADABLE, reason)
        self._received += 1
        return 0x0000

    def _delay(self, address: str, refused: bool) -> float:
        """Seconds the answer to `address` waits: one per object of the last minute beyond
        `max_refused_per_min` that was refused, or that no model read (the worker's verdict, from the store), at
        most half `timeout_s` (the peer's own timeout is no shorter, as a rule)."""
        limit = self.settings.max_refused_per_min
        if not limit:
            return 0.0
        unread = self.ingest.store.unread_from(f"@{address}", _REFUSED_WINDOW_S)
        now = time.monotonic()
        with self._lock:
            times = self._refused.setdefault(address, deque())
            if refused:
                times.append(now)
            while times and times[0] < now - _REFUSED_WINDOW_S:
                times.popleft()
            beyond = len(times) + unread - limit
            if not times:
                del self._refused[address]
        return min(float(max(beyond, 0)), self.settings.timeout_s / 2)


class _Server(AssociationServer):
    """pynetdicom's server, with each connection admitted or closed at once, and set up in its own association
    thread: one connection never holds up the others.

    Connections are taken in turn and each association's thread is running before the next is looked at, so
    that `admit` counts exactly. The TLS handshake happens in the association's thread (pynetdicom's does it
    where connections are taken: a peer that never finishes it would stop every other), and a peer that stalls
    longer than the network timeout (a handshake, a PDU half sent) loses its connection.
    """

    def __init__(self, *args: Any, admit: Callable[[str, list[Any]], bool], **kwargs: Any) -> None:
        self._admit = admit
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.ae.network_timeout)
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self._admit(client_address[0], self.active_associations)

    def shutdown_request(self, request: Any) -> None:
        # Called from an association's own thread where its upper layer failed (a write to a full disk): no
        # EVT_CONN_CLOSE comes then.
        thread = threading.current_thread()
        if isinstance(thread, Association):
            _discard_partial(thread)
        super().shutdown_request(request)

    def shutdown(self) -> None:
        socketserver.TCPServer.shutdown(self)  # pynetdicom's own also takes it off a list only start_server fills
        self.server_close()


def _discard_partial(assoc: Association) -> None:
    """Remove the temporary file of a data set `assoc` left half-received: pynetdicom makes it with delete=False
    and removes it only after a complete C-STORE, so a message cut short would stay in the temporary folder."""
    partial = getattr(assoc.dimse.message, "_data_set_file", None)
    if partial is not None:
        partial.close()
        Path(partial.name).unlink(missing_ok=True)


def _failure(code: int, comment: str) -> Dataset:
    """A status with its Error Comment (a failure's, or a warning's)."""
    status = Dataset()
    status.Status = code
    # LO: 64 characters at most, no backslash (a value separator) and no control character
    status.ErrorComment = "".join(c if c.isprintable() and c != "\\" else "?" for c in comment)[:64]
    return status

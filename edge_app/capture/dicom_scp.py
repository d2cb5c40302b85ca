"""The DICOM receiver: a C-STORE and C-ECHO SCP (pynetdicom) for every image storage SOP class, in uncompressed
and compressed transfer syntaxes.

Success (0x0000) is answered only once `Ingest.submit` returned: the file fsynced and its row committed. A SOP
Instance already held is acknowledged and not stored twice; a data set that is no image gets 0xA900, one that
cannot be read 0xC210, a full disk 0xA700, each with the reason in the Error Comment. A handler that fails
answers with a failure status; the association and the server live on (pynetdicom's own boundary).
"""

from __future__ import annotations

import errno
import io
import ipaddress
import logging
import ssl
from typing import Any

from pydicom import uid
from pydicom.dataset import Dataset

from edge_app.config import DicomCaptureSettings
from edge_app.ingest import Ingest

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
]
VERIFICATION = "1.2.840.10008.1.1"  # C-ECHO
_NO_IMAGE, _UNREADABLE, _OUT_OF_RESOURCES, _CANNOT_UNDERSTAND = 0xA900, 0xC210, 0xA700, 0xC211


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

    def start(self) -> None:
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.settings.ae_title)
        for sop_class in image_storage_classes():
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        if self.settings.allowed_ae_titles:
            ae.require_calling_aet = list(self.settings.allowed_ae_titles)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, self._on_connect)]
        address = (self.settings.host, self.settings.port)
        try:
            self._server = ae.start_server(address, block=False, evt_handlers=handlers, ssl_context=self._tls())
        except OSError as exc:
            from edge_app.errors import ConfigError

            raise ConfigError(
                f"cannot listen for DICOM on {self.settings.host}:{self.settings.port} ({exc.strerror or exc}): "
                "change capture.dicom.port"
            ) from None
        log.info("DICOM receiver %s listening on %s:%d", self.settings.ae_title, *address)

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

    def _on_connect(self, event: Any) -> None:
        """Close a connection from an address outside `allowed_addresses` before it can associate."""
        if not self._networks:
            return
        host = ipaddress.ip_address(event.address[0])
        if not any(host in network for network in self._networks):
            log.warning("DICOM connection from %s refused: not in capture.dicom.allowed_addresses", host)
            event.assoc.abort()

    def _on_store(self, event: Any) -> Dataset | int:
        requestor = event.assoc.requestor
        source = f"dicom:{requestor.ae_title.strip()}@{requestor.address}"
        sop_instance = str(event.request.AffectedSOPInstanceUID)
        try:
            data = event.encoded_dataset()
        except Exception as exc:
            return _failure(_CANNOT_UNDERSTAND, f"the data set cannot be read: {exc}")
        try:
            added = self.ingest.submit(io.BytesIO(data), f"{sop_instance}.dcm", source)
        except OSError as exc:
            log.error("cannot store %s from %s: %s", sop_instance, source, exc)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            return _failure(_OUT_OF_RESOURCES, "the appliance's disk is full" if full else f"cannot store: {exc}")
        if added is None:
            return _failure(_CANNOT_UNDERSTAND, "the data set is empty")
        if added.status == "rejected" and not added.duplicate:
            reason = added.reason or "refused"
            log.info("C-STORE of %s from %s refused: %s", sop_instance, source, reason)
            return _failure(_NO_IMAGE if "holds no image" in reason else _UNREADABLE, reason)
        self._received += 1
        return 0x0000


def _failure(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO: 64 characters at most
    return status

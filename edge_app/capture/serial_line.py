"""A serial device (X-ray generator, footswitch, barcode reader) as a capture source: opened by URL with
pyserial (`serial_for_url`: /dev/ttyUSB0, loop://, socket://, rfc2217://), read by pyserial's `ReaderThread`,
framed by `Framer`, each message matched against its profile and handed to ingest as an event. After an unplug the
link is opened again every `reconnect_s` seconds, without a restart."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from edge_app.capture.devices import Profile
from edge_app.capture.framing import Framer
from edge_app.ingest import Event, Ingest
from edge_app.system.background import Background

log = logging.getLogger(__name__)


class SerialDevice:
    """One device, kept connected while started."""

    def __init__(self, profile: Profile, ingest: Ingest) -> None:
        self.profile = profile
        self.ingest = ingest
        self.name = f"serial:{profile.name}"
        self._patterns = [(re.compile(m.pattern), m.event) for m in profile.messages]
        self._loop_thread = Background(self.name, self._keep_connected)
        self._stopping = self._loop_thread.stopping
        self._reader: Any = None
        self.connected = False
        self.counts = {"messages": 0, "unrecognised": 0, "dropped": 0}
        self.last_status: dict[str, str] = {}
        self.last_seen: float | None = None
        self.error = ""

    def start(self) -> None:
        self._loop_thread.start()

    def stop(self) -> None:
        self._loop_thread.stop()

    def state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "connected": self.connected,
            "detail": f"{self.profile.port} ({self.error})" if self.error and not self.connected else self.profile.port,
            "status": self.last_status,
            "seconds_since_message": None if self.last_seen is None else round(time.monotonic() - self.last_seen, 1),
            **self.counts,
        }

    def write(self, data: bytes) -> bool:
        """Send bytes to the device (a status request); False where it is not connected."""
        reader = self._reader
        if reader is None or not reader.alive:
            return False
        reader.write(data)
        return True

    def _keep_connected(self) -> None:
        import serial
        from serial.threaded import ReaderThread

        p = self.profile
        while not self._stopping.is_set():
            try:
                link = serial.serial_for_url(
                    p.port,
                    baudrate=p.baudrate,
                    bytesize=p.bytesize,
                    parity=p.parity,
                    stopbits=p.stopbits,
                    rtscts=p.flow == "rtscts",
                    xonxoff=p.flow == "xonxoff",
                    timeout=1,
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                self.connected, self.error = False, str(exc)
                self._stopping.wait(p.reconnect_s)
                continue
            framer = Framer(p.framing, p.terminator.encode(p.encoding), p.max_length)
            reader = ReaderThread(link, lambda framer=framer: _Protocol(self, framer))
            reader.start()
            self._reader, self.connected, self.error = reader, True, ""
            log.info("%s connected on %s", self.name, p.port)
            next_poll = time.monotonic()
            while reader.alive and not self._stopping.is_set():
                if p.poll is not None and time.monotonic() >= next_poll:
                    self.write(p.poll.encode(p.encoding))
                    next_poll = time.monotonic() + p.poll_s
                self._stopping.wait(0.2)
            self._reader, self.connected = None, False
            reader.close()
            if not self._stopping.is_set():
                log.warning("%s lost its link on %s: reconnecting", self.name, p.port)
                self._stopping.wait(p.reconnect_s)

    def handle(self, message: bytes) -> None:
        """One framed message: an event where it matches a pattern, else counted and logged at debug level."""
        self.last_seen = time.monotonic()
        text = message.decode(self.profile.encoding, errors="replace").strip()
        for pattern, kind in self._patterns:
            match = pattern.fullmatch(text)
            if match is not None:
                self.counts["messages"] += 1
                fields = {k: v for k, v in match.groupdict().items() if v is not None}
                if kind == "status":
                    self.last_status = fields
                else:
                    self.ingest.event(Event(kind, fields, self.name))
                return
        self.counts["unrecognised"] += 1
        # Its bytes are not logged: a barcode reader's message is a patient ID.
        log.debug("%s: unrecognised message of %d characters", self.name, len(text))


class _Protocol:
    """pyserial's reader-thread protocol: bytes to the framer, messages to the device."""

    def __init__(self, device: SerialDevice, framer: Framer) -> None:
        self.device, self.framer = device, framer

    def connection_made(self, transport: Any) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        for message in self.framer.feed(data):
            try:
                self.device.handle(message)
            except Exception:  # one bad message costs that message, not the link
                log.exception("%s: a message of %d bytes", self.device.name, len(message))
        self.device.counts["dropped"] = self.framer.dropped

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            self.device.error = str(exc)

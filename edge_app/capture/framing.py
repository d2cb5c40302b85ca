"""Framing: bytes from a serial line into messages, apart from the transport (pyserial's `Packetizer` and
`FramedPacket` idea, bounded: a device that sends garbage without a terminator cannot grow the buffer)."""

from __future__ import annotations

from typing import Literal

STX, ETX = b"\x02", b"\x03"


class Framer:
    """`line`: messages end with `terminator`; `stx_etx`: messages sit between STX and ETX, bytes outside are
    dropped. A message longer than `max_length` is dropped whole."""

    def __init__(self, framing: Literal["line", "stx_etx"], terminator: bytes = b"\r\n", max_length: int = 1024):
        self.framing = framing
        self.terminator = terminator
        self.max_length = max_length
        self.dropped = 0  # messages dropped for length
        self._buffer = bytearray()
        self._inside = False

    def feed(self, data: bytes) -> list[bytes]:
        """The complete messages `data` finishes, in order."""
        return self._lines(data) if self.framing == "line" else self._stx_etx(data)

    def _lines(self, data: bytes) -> list[bytes]:
        self._buffer.extend(data)
        messages = []
        while (end := self._buffer.find(self.terminator)) >= 0:
            message = bytes(self._buffer[:end])
            del self._buffer[: end + len(self.terminator)]
            if len(message) <= self.max_length:
                messages.append(message)
            else:
                self.dropped += 1
        if len(self._buffer) > self.max_length:  # garbage with no terminator in sight
            self._buffer.clear()
            self.dropped += 1
        return messages

    def _stx_etx(self, data: bytes) -> list[bytes]:
        messages = []
        for value in data:
            byte = bytes((value,))
            if byte == STX:
                self._inside, self._buffer = True, bytearray()
            elif byte == ETX and self._inside:
                self._inside = False
                messages.append(bytes(self._buffer))
                self._buffer.clear()
            elif self._inside:
                self._buffer.extend(byte)
                if len(self._buffer) > self.max_length:
                    self._inside = False
                    self._buffer.clear()
                    self.dropped += 1
        return messages

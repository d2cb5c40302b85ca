"""Serial device profiles (firmware_config/devices/*.toml): how to open a device and what its messages mean."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from edge_app.errors import ConfigError, format_validation_error
from edge_app.system.fileio import read_toml


class Message(BaseModel):
    """A message the device sends: a regular expression over the whole message, its named groups the fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str
    event: Literal["exposure", "capture", "patient_id", "status"]

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
        return pattern


class Profile(BaseModel):
    """One device on one serial line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    port: str = Field(description="a device (/dev/ttyUSB0) or a pyserial URL (loop://, socket://, rfc2217://)")
    baudrate: StrictInt = Field(9600, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = 1
    flow: Literal["none", "rtscts", "xonxoff"] = "none"
    framing: Literal["line", "stx_etx"] = "line"
    terminator: str = "\r\n"
    encoding: str = "ascii"
    max_length: StrictInt = Field(1024, gt=0, le=65536)
    poll: str | None = Field(None, description="sent every poll_s seconds (a status request), if set")
    poll_s: float = Field(10.0, gt=0)
    reconnect_s: float = Field(2.0, gt=0, description="wait between attempts to open the port")
    messages: list[Message] = Field(min_length=1)

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, stopbits: float) -> float:
        if stopbits not in (1, 1.5, 2):
            raise ValueError("stop bits are 1, 1.5 or 2")
        return stopbits

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, encoding: str) -> str:
        try:
            "".encode(encoding)
        except LookupError:
            raise ValueError(f"{encoding!r} is not a text encoding") from None
        return encoding


def load_profile(path: Path) -> Profile:
    raw = read_toml(path, f"device profile {path}", ConfigError)
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"device profile {path} is invalid: {format_validation_error(exc)}") from None

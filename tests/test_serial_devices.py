"""Serial devices at the byte level: the three example profiles through pyserial's loop:// and a socket:// peer,
and a socat pty pair (a real tty) with garbage, partial frames, an unplug and a replug."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from edge_app.capture.devices import Profile, load_profile
from edge_app.capture.framing import Framer
from edge_app.capture.serial_line import SerialDevice
from edge_app.errors import ConfigError
from edge_app.ingest import Event, Ingest
from edge_app.service import Service
from edge_app.store import Store

pytestmark = pytest.mark.integration

DEVICES = Path(__file__).resolve().parent.parent / "firmware_config" / "devices"


def _until(check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    yield s
    s.close()


def _profile(name: str, **change: object) -> Profile:
    return load_profile(DEVICES / f"{name}.toml").model_copy(update=change)


def test_the_example_profiles_load() -> None:
    assert {p.stem for p in DEVICES.glob("*.toml")} == {"xray-generator", "footswitch", "barcode-reader"}
    for path in DEVICES.glob("*.toml"):
        assert load_profile(path).messages


def test_an_invalid_profile_is_a_plain_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nport = "loop://"\n[[messages]]\npattern = "(unclosed"\nevent = "exposure"\n')
    with pytest.raises(ConfigError, match=r"bad.toml is invalid: messages.0.pattern: .*not a regular expression"):
        load_profile(bad)
    bad.write_text('name = "x"\nport = "loop://"\nstopbits = 3\n[[messages]]\npattern = "x"\nevent = "fly"\n')
    with pytest.raises(ConfigError, match=r"stopbits: .*stop bits are 1, 1.5 or 2.*messages.0.event"):
        load_profile(bad)


def test_line_framing_bounds_garbage_and_joins_partial_frames() -> None:
    f = Framer("line", b"\r\n", max_length=16)
    assert f.feed(b"EXP KV=8") == []
    assert f.feed(b"0\r\nSTA") == [b"EXP KV=80"]
    assert f.feed(b"TUS OK\r\n\r\n") == [b"STATUS OK", b""]
    assert f.feed(b"\xff" * 40) == [] and f.dropped == 1, "no terminator in sight: dropped, not kept"
    assert f.feed(b"PRESS\r\n") == [b"PRESS"]


def test_stx_etx_framing_drops_bytes_outside_frames() -> None:
    f = Framer("stx_etx", max_length=8)
    assert f.feed(b"noise\x02P123") == []
    assert f.feed(b"4\x03junk\x02P9\x03") == [b"P1234", b"P9"]
    assert f.feed(b"\x02" + b"A" * 20 + b"\x03") == [] and f.dropped == 1


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_xray_generator_on_loop_attaches_the_exposure_to_the_next_image(store: Store) -> None:
    """On loop:// what the appliance writes comes back: the poll and an exposure report round-trip as bytes."""
    ingest = Ingest(store, exposure_window_s=30)
    device = SerialDevice(_profile("xray-generator", port="loop://", poll="STATUS READY\r\n", poll_s=0.1), ingest)
    device.start()
    try:
        _until(lambda: device.state()["status"] == {"status": "READY"})
        assert device.write(b"\x00\xffgarbage\r\nEXP KV=8")  # garbage, then a frame in two parts
        assert device.write(b"1.0 MAS=12.5 MS=40\r\n")
        _until(lambda: device.counts["messages"] >= 2 and device.counts["unrecognised"] >= 1)
        added = ingest.submit(io.BytesIO(_png()), "a.png", "api")
        assert added is not None
        (image,) = store.get_study(added.study_uid).images
        assert image.metadata["exposure"] == {"kvp": "81.0", "mas": "12.5", "ms": "40", "source": device.name}
        again = ingest.submit(io.BytesIO(_png() + b"\0"), "b.png", "api")
        assert again is not None and "exposure" not in store.get_study(again.study_uid).images[0].metadata
        assert device.state()["connected"] is True
    finally:
        device.stop()


def test_barcode_reader_gives_the_next_study_its_patient(store: Store) -> None:
    ingest = Ingest(store)
    device = SerialDevice(_profile("barcode-reader", port="loop://"), ingest)
    device.start()
    try:
        _until(lambda: device.connected)
        device.write(b"\x02PAT-0042\x03")
        _until(lambda: device.counts["messages"] == 1)
        added = ingest.submit(io.BytesIO(_png()), "a.png", "api")
        assert added is not None and store.get_study(added.study_uid).patient_id == "PAT-0042"
        later = ingest.submit(io.BytesIO(_png() + b"\0"), "b.png", "api")
        assert later is not None and store.get_study(later.study_uid).patient_id == "", "used once"
    finally:
        device.stop()


def test_footswitch_over_a_socket_triggers_capture_and_survives_a_reconnect(store: Store) -> None:
    """socket:// to a peer the test runs: a press is a capture event; the peer hangs up (an unplug) and comes
    back on the same port (a replug): the device reconnects by itself."""
    presses: list[Event] = []
    ingest = Ingest(store)
    ingest.on_capture(presses.append)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    device = SerialDevice(_profile("footswitch", port=f"socket://127.0.0.1:{port}", reconnect_s=0.1), ingest)
    device.start()
    try:
        peer, _ = server.accept()
        _until(lambda: device.connected)  # pyserial empties the input when it opens a port: send after that
        peer.sendall(b"HB\nPRE")
        peer.sendall(b"SS\n")
        _until(lambda: len(presses) == 1)
        assert presses[0].kind == "capture" and presses[0].source == "serial:footswitch"
        peer.close()  # unplugged
        _until(lambda: not device.connected)
        peer, _ = server.accept()  # plugged back
        _until(lambda: device.connected)
        peer.sendall(b"PRESS\n")
        _until(lambda: len(presses) == 2)
        peer.close()
    finally:
        device.stop()
        server.close()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed (apt-get install socat)")
def test_a_real_tty_from_socat_with_an_unplug_and_replug(store: Store, tmp_path: Path) -> None:
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"

    def plug() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"])
        _until(lambda: a.exists() and b.exists())
        return proc

    presses: list[Event] = []
    ingest = Ingest(store)
    ingest.on_capture(presses.append)
    socat = plug()
    device = SerialDevice(_profile("footswitch", port=str(a), reconnect_s=0.1), ingest)
    device.start()
    try:
        _until(lambda: device.connected)
        with open(b, "wb", buffering=0) as tty:
            tty.write(b"\x00\x13noise\nPRE")
            time.sleep(0.1)
            tty.write(b"SS\n")
            _until(lambda: len(presses) == 1)
        socat.terminate()  # the adapter is unplugged
        socat.wait()
        _until(lambda: not device.connected)
        assert device.state()["connected"] is False
        socat = plug()  # and plugged back
        _until(lambda: device.connected)
        with open(b, "wb", buffering=0) as tty:
            tty.write(b"PRESS\n")
            _until(lambda: len(presses) == 2)
        assert device.counts["unrecognised"] >= 1
    finally:
        device.stop()
        socat.terminate()
        socat.wait()


def test_the_service_shows_each_device_in_health(
    tmp_path: Path, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    from edge_app.web import create_app, services

    profile = tmp_path / "gen.toml"
    text = (DEVICES / "xray-generator.toml").read_text()
    profile.write_text(text.replace('"/dev/edge/xray-serial"', '"/dev/nonexistent0"'))
    app = create_app(
        service({"storage": {"data_dir": str(tmp_path / "data")}, "capture": {"serial": {"profiles": [str(profile)]}}})
    )
    (state,) = api_client(app).get("/api/v1/health").get_json()["sources"]
    assert state["name"] == "serial:xray-generator" and state["connected"] is False
    _until(lambda: "nonexistent0" in str(services.get_from(app).sources[0].state()["detail"]))


# Each example profile: bytes a device sends (garbage first, the message split in two), and the effect to see.
EXAMPLES = {
    "xray-generator": (b"\x00\xffnoise\r\nEXP KV=7", b"0.0 MAS=8 MS=25\r\n"),
    "footswitch": (b"\x13\x11zz\nPRE", b"SS\n"),
    "barcode-reader": (b"junk\x02PAT-", b"0042\x03trailing"),
}


def _effect(name: str, ingest: Ingest, store: Store, presses: list[Event]) -> None:
    if name == "footswitch":
        _until(lambda: len(presses) == 1)
        return
    added = ingest.submit(io.BytesIO(_png() + name.encode()), f"{name}.png", "api")
    assert added is not None
    study = store.get_study(added.study_uid)
    if name == "xray-generator":
        assert study.images[0].metadata["exposure"]["kvp"] == "70.0"
    else:
        assert study.patient_id == "PAT-0042"


def _wait_for_message(device: SerialDevice) -> None:
    _until(lambda: device.counts["messages"] >= 1)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_profile_over_loop(name: str, store: Store) -> None:
    presses: list[Event] = []
    ingest = Ingest(store)
    ingest.on_capture(presses.append)
    device = SerialDevice(_profile(name, port="loop://", poll=None), ingest)
    device.start()
    try:
        _until(lambda: device.connected)
        for part in EXAMPLES[name]:
            device.write(part)
        _wait_for_message(device)
        _effect(name, ingest, store, presses)
    finally:
        device.stop()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed (apt-get install socat)")
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_profile_over_a_socat_pty(name: str, store: Store, tmp_path: Path) -> None:
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"])
    presses: list[Event] = []
    ingest = Ingest(store)
    ingest.on_capture(presses.append)
    try:
        _until(lambda: a.exists() and b.exists())
        device = SerialDevice(_profile(name, port=str(a), poll=None, reconnect_s=0.1), ingest)
        device.start()
        try:
            _until(lambda: device.connected)
            with open(b, "wb", buffering=0) as tty:
                for part in EXAMPLES[name]:
                    tty.write(part)
                    time.sleep(0.05)
                _wait_for_message(device)
            _effect(name, ingest, store, presses)
        finally:
            device.stop()
    finally:
        socat.terminate()
        socat.wait()

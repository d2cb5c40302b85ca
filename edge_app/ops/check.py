"""`edge-app check`: the whole installation checked the way a technician needs it, in plain words.

Each check says ok, warn or FAIL with what is wrong and what to do; the exit status is 1 where any check failed.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_app.config import Settings, is_loopback
from edge_app.errors import EdgeAppError
from edge_app.ops.backup import DATABASE
from edge_app.store.chain import ChainState

MIN_FREE_GB = 2.0


@dataclass(frozen=True)
class Check:
    level: str  # "ok", "warn" or "FAIL"
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.level:<5} {self.name}: {self.detail}"


def run_checks(settings: Settings) -> list[Check]:
    return [
        *_storage(settings),
        *_access(settings),
        *_models(settings),
        *tensorrt_check(settings),
        *_ports(settings),
        *_capture(settings),
        *_destinations(settings),
    ]


def _access(settings: Settings) -> Iterator[Check]:
    """Tablets beyond this machine need HTTPS and someone who can log in."""
    host = settings.server.host
    if is_loopback(host):
        yield Check("ok", "tablet access", f"this machine only ({host}): no TLS or user needed")
        return
    cert, key = settings.tls_files
    if settings.tls:
        from edge_app.ops.secrets import fingerprint

        yield Check("ok", "TLS", f"{cert} and {key}; SHA-256 fingerprint (check it on the tablet): {fingerprint(cert)}")
    else:
        yield Check(
            "FAIL", "TLS", f"no certificate at {cert}: run `edge-app tls init` (or set server.tls_cert/tls_key)"
        )
    if not settings.storage.data_dir.exists():
        yield Check("FAIL", "users", "no data directory yet, so no user: `edge-app user add NAME --role admin`")
        return
    from edge_app.store import Store
    from edge_app.store.accounts import Accounts

    try:
        store = Store(settings.storage.data_dir)
    except EdgeAppError:
        yield Check("FAIL", "users", "the database cannot be read (see database above)")
        return
    try:
        users = Accounts(store).active_count()
    finally:
        store.close()
    if users:
        yield Check("ok", "users", f"{users} active account(s)")
    else:
        yield Check("FAIL", "users", "no one can log in: `edge-app user add NAME --role admin`")


def _storage(settings: Settings) -> Iterator[Check]:
    data_dir = settings.storage.data_dir
    probe = data_dir if data_dir.exists() else next((p for p in data_dir.parents if p.exists()), Path("/"))
    if data_dir.exists() and not os.access(data_dir, os.W_OK):
        yield Check("FAIL", "storage", f"{data_dir} is not writable by this user")
    free_gb = shutil.disk_usage(probe).free / 2**30
    level = "ok" if free_gb >= MIN_FREE_GB else "FAIL"
    yield Check(level, "disk", f"{free_gb:.1f} GB free for {data_dir} (at least {MIN_FREE_GB:g} GB wanted)")
    if (data_dir / DATABASE).exists():  # damaged, or written by a newer edge-app: the service would not start
        from edge_app.store import Store

        try:
            store = Store(data_dir)
        except EdgeAppError as exc:
            yield Check("FAIL", "database", str(exc))
        else:
            try:
                chain = store.audit_chain()
            finally:
                store.close()
            yield Check("ok", "database", f"{data_dir / DATABASE}: intact, its schema this edge-app's")
            yield _audit_log(chain)


def _audit_log(chain: ChainState) -> Check:
    """Each audit row sealed after the one before it (`edge_app.store.chain`): an edit made around the triggers
    shows here."""
    if chain.holds:
        return Check("ok", "audit log", f"{chain.entries} entries, each chained to the one before")
    if chain.missing:
        what = f"entry {chain.broken_at} does not follow entry {chain.after}: entries between them were deleted"
    else:
        what = f"entry {chain.broken_at} was changed (or an entry before it)"
    return Check(
        "FAIL",
        "audit log",
        f"{what}: the log was altered outside edge-app; keep a copy of the data directory "
        "and compare it with a backup or an exported audit.csv",
    )


def _models(settings: Settings) -> Iterator[Check]:
    from edge_app.bundles.bundle import load_as_configured
    from edge_app.bundles.signature import keys_required_by

    model = settings.model
    try:
        trusted = keys_required_by(model)
    except EdgeAppError as exc:
        yield Check("FAIL", "trusted keys", str(exc))
        return
    for path in [model.bundle, *model.extra_bundles]:
        try:
            bundle = load_as_configured(path, model)
        except EdgeAppError as exc:
            yield Check("FAIL", "model bundle", str(exc))
            continue
        m = bundle.manifest
        signed = "signature verified" if trusted is not None else "signature not required"
        yield Check("ok", "model bundle", f"{m.name} {m.version} ({m.precision}) at {path}: hashes verified, {signed}")


def tensorrt_check(settings: Settings, release_file: Path | None = None) -> Iterator[Check]:
    """Where TensorRT is expected (runner tensorrt; auto on a Jetson), it must import: under auto the service
    would otherwise run on the CPU, several times slower, and say so only on /health."""
    from edge_app.runtime.cuda import L4T_RELEASE_FILE, l4t_release
    from edge_app.runtime.tensorrt import import_problem

    runner = settings.model.runner
    jetson = l4t_release(release_file or L4T_RELEASE_FILE)
    if runner == "tensorrt" or (runner == "auto" and jetson):
        expected = f"runner {runner}" + (f" on Jetson Linux {jetson}" if jetson else "")
        problem = import_problem()
        if problem is None:
            yield Check("ok", "TensorRT", f"imports ({expected})")
        else:
            yield Check("FAIL", "TensorRT", f"expected ({expected}) but {problem}")


def _ports(settings: Settings) -> Iterator[Check]:
    wanted = [("web service", settings.server.host, settings.server.port)]
    if settings.capture.dicom.enabled:
        wanted.append(("DICOM receiver", settings.capture.dicom.host, settings.capture.dicom.port))
    for name, host, port in wanted:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            try:
                sock.bind((host, port))
                yield Check("ok", name, f"{host}:{port} is free")
            except OSError as exc:
                yield Check("warn", name, f"{host}:{port} cannot be bound ({exc.strerror}): in use, by the service?")


def _capture(settings: Settings) -> Iterator[Check]:
    capture = settings.capture
    if capture.dicom.enabled:
        yield _dicom_access(settings)
    if capture.folder.enabled and capture.folder.path is not None:
        path = capture.folder.path
        if not path.is_dir():
            yield Check("warn", "watched folder", f"{path} is not there now (a USB stick not plugged in?)")
        elif not os.access(path, os.W_OK):
            yield Check("FAIL", "watched folder", f"{path} is not writable: taken files could not be moved to done/")
        else:
            yield Check("ok", "watched folder", str(path))
    for profile_path in capture.serial.profiles:
        yield _serial(profile_path)
    if capture.video.enabled:
        source = capture.video.source
        if source.startswith("/dev/") and not Path(source).exists():
            yield Check("FAIL", "video", f"{source} is not there: is the grabber plugged in?")
        else:
            yield Check("ok", "video", source)


def _dicom_access(settings: Settings) -> Check:
    """Beyond this machine, what keeps strangers from storing images: allow-lists and TLS (the receiver's limits
    only bound what a stranger costs)."""
    dicom = settings.capture.dicom
    if is_loopback(dicom.host):
        return Check("ok", "DICOM access", f"this machine only ({dicom.host})")
    guards = [
        name
        for name, on in (
            ("calling AE titles", dicom.allowed_ae_titles),
            ("addresses", dicom.allowed_addresses),
            ("TLS", dicom.tls_cert),
        )
        if on
    ]
    if not guards:
        return Check(
            "warn",
            "DICOM access",
            f"anyone who reaches {dicom.host}:{dicom.port} can store images: set capture.dicom.allowed_addresses "
            "and allowed_ae_titles to the modalities', or tls_cert/tls_key/tls_ca",
        )
    return Check("ok", "DICOM access", f"{dicom.host}:{dicom.port}, limited by {', '.join(guards)}")


def _destinations(settings: Settings) -> Iterator[Check]:
    """A C-ECHO to each destination, as the sender would associate (its AE titles, its timeouts)."""
    from edge_app.outputs.sender import echo

    for destination in settings.outputs.destinations:
        error = echo(destination, settings.outputs)
        yield Check("FAIL" if error else "ok", f"destination {destination}", error or "answers C-ECHO")


def _serial(profile_path: Path) -> Check:
    from edge_app.capture.devices import load_profile

    try:
        profile = load_profile(profile_path)
    except EdgeAppError as exc:
        return Check("FAIL", "serial device", str(exc))
    port = profile.port
    if "://" not in port and not Path(port).exists():
        return Check("FAIL", f"serial {profile.name}", f"{port} is not there: is the adapter plugged in?")
    return Check("ok", f"serial {profile.name}", port)

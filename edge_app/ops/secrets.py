"""Secrets the appliance makes for itself: the key that signs sessions and a self-signed TLS certificate.

Both are written with `atomic_write` (owner-only files, 0600, fsynced) under the data directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import socket
from pathlib import Path

from edge_app.config import Settings, is_strong_secret
from edge_app.errors import ConfigError, UserError
from edge_app.system.clock import utc_now
from edge_app.system.fileio import atomic_write

CERT_DAYS = 3650  # the box runs for years without anyone to renew it; tablets trust it by its fingerprint


def session_secret(settings: Settings) -> str:
    """The configured secret key, else the one kept in <data_dir>/secret_key (made on first use): sessions then
    outlive a restart."""
    if settings.server.secret_key:
        return settings.server.secret_key
    path = settings.storage.data_dir / "secret_key"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, secrets.token_hex(32).encode())
        key = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"the session key {path} cannot be made or read: {exc}") from exc
    if not is_strong_secret(key):
        raise ConfigError(f"the session key in {path} is too weak: delete the file, a new one is made at start")
    return key


def init_tls(settings: Settings, names: list[str], *, force: bool = False) -> tuple[Path, Path, str]:
    """Make a self-signed certificate for this box (its host name, `names` and localhost) where the settings
    look for one; return (certificate, key, SHA-256 fingerprint)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = settings.tls_files
    if not force and (cert_path.exists() or key_path.exists()):
        raise UserError(f"{cert_path} or {key_path} exists already: --force replaces them")
    hostname = socket.gethostname()
    alt: list[x509.GeneralName] = []
    for name in dict.fromkeys([hostname, *names, "localhost", "127.0.0.1"]):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "edge-app")])
    now = utc_now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, fingerprint(cert_path)


def fingerprint(cert_path: Path) -> str:
    """The certificate's SHA-256 fingerprint as browsers show it (AB:12:...), for the tablet's check."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()

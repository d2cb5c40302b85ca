"""Ed25519 keys and bundle signatures (the cryptography package); the appliance verifies with
`edge_app.bundles.signature`."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from converters.errors import ConversionError
from edge_app.bundles.bundle import MANIFEST_NAME, load_bundle
from edge_app.bundles.signature import SIGNATURE_NAME, key_id


def generate_key(private_path: Path) -> Path:
    """Write a new private key (PEM, mode 0600) and its public key beside it (`.pub`); return the public path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public_path = private_path.with_name(private_path.name + ".pub")
    if private_path.exists() or public_path.exists():
        raise ConversionError(f"{private_path} or {public_path} exists; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConversionError(f"cannot write the key {private_path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return public_path


def sign_bundle(bundle_dir: Path, private_path: Path) -> str:
    """Verify the bundle's hashes, then sign its manifest; return the key id."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    load_bundle(bundle_dir)  # never sign a bundle whose files do not match its manifest
    try:
        key = load_pem_private_key(private_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConversionError(f"signing key {private_path} cannot be read: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConversionError(f"signing key {private_path} is not an Ed25519 private key")
    signature = key.sign((bundle_dir / MANIFEST_NAME).read_bytes())
    kid = key_id(key.public_key())
    payload = {"algorithm": "Ed25519", "key_id": kid, "signature": base64.b64encode(signature).decode()}
    (bundle_dir / SIGNATURE_NAME).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return kid

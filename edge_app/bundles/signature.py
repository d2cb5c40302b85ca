"""Ed25519 signatures over a bundle's manifest (which holds every file's sha256), with the cryptography package.

`manifest.sig` is JSON: the signing key's id (sha256 of its raw public bytes) and the base64 signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Protocol

from edge_app.errors import BundleError, ConfigError

SIGNATURE_NAME = "manifest.sig"


def key_id(public_key: object) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    assert isinstance(public_key, Ed25519PublicKey)
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_public_keys(paths: list[Path]) -> dict[str, object]:
    """Trusted Ed25519 public keys (PEM) from files, or from every *.pub / *.pem in folders, by key id."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys: dict[str, object] = {}
    for path in paths:
        files = sorted([*path.glob("*.pub"), *path.glob("*.pem")]) if path.is_dir() else [path]
        for file in files:
            try:
                key = load_pem_public_key(file.read_bytes())
            except (OSError, ValueError) as exc:
                raise BundleError(f"trusted key {file} cannot be read: {exc}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise BundleError(f"trusted key {file} is not an Ed25519 public key")
            keys[key_id(key)] = key
    return keys


class SigningPolicy(Protocol):
    """What the settings say of signatures (`ModelSettings` is one)."""

    require_signature: bool
    trusted_keys: list[Path]


def keys_required_by(policy: SigningPolicy) -> dict[str, object] | None:
    """The keys a bundle must be signed by under `policy`; None where no signature is required. `ConfigError`
    where one is required and the configured keys hold none; `BundleError` where a key cannot be read."""
    if not policy.require_signature:
        return None
    keys = load_public_keys(policy.trusted_keys)
    if not keys:
        where = ", ".join(str(p) for p in policy.trusted_keys)
        raise ConfigError(f"require_signature is set, but model.trusted_keys ({where}) hold no public key")
    return keys


def verify(bundle_dir: Path, trusted: dict[str, object]) -> str:
    """Check `manifest.sig` against the trusted keys; return the signer's key id or raise `BundleError`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    sig_path = bundle_dir / SIGNATURE_NAME
    if not sig_path.is_file():
        raise BundleError(f"model bundle {bundle_dir} is not signed, and this appliance accepts signed bundles only")
    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        signer, signature = str(sig["key_id"]), base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{sig_path} is malformed ({exc})") from None
    key = trusted.get(signer)
    if key is None:
        raise BundleError(
            f"model bundle {bundle_dir} is signed by key {signer[:16]}..., which this appliance does not trust"
        )
    assert isinstance(key, Ed25519PublicKey)
    try:
        key.verify(signature, (bundle_dir / "manifest.json").read_bytes())
    except InvalidSignature:
        raise BundleError(f"model bundle {bundle_dir}: the signature does not match its manifest") from None
    return signer

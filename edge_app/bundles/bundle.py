"""Model bundles: a directory with `model.onnx`, other files and a `manifest.json` listing every file's sha256.

Everything that runs a model takes a loaded `Bundle`, never loose paths. Loading verifies every hash and refuses a
bundle with a missing, changed or unlisted file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge_app.bundles.manifest import Manifest
from edge_app.bundles.signature import SigningPolicy, keys_required_by
from edge_app.errors import BundleError, format_validation_error

MANIFEST_NAME = "manifest.json"
# Files beside the manifest that its hashes cannot cover (a signature is made over the manifest itself).
UNLISTED_FILES = frozenset({MANIFEST_NAME, "manifest.sig"})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. `sha256` (of the manifest, which holds every file's hash) identifies it."""

    path: Path
    manifest: Manifest
    sha256: str

    @property
    def model_path(self) -> Path:
        return self.path / "model.onnx"


def read_manifest_of(folder: Path, sha256: str) -> Manifest | None:
    """The manifest in `folder` where it is the one of the bundle `sha256` identifies (a result's model, to show
    its card); None where it is absent, another or unreadable. Its files are not checked: nothing is run."""
    try:
        raw = (folder / MANIFEST_NAME).read_bytes()
        if hashlib.sha256(raw).hexdigest() != sha256:
            return None
        return Manifest.model_validate_json(raw)
    except (OSError, ValueError):
        return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(path: Path | str, trusted_keys: dict[str, object] | None = None) -> Bundle:
    """Load and verify a bundle directory; raise `BundleError` saying what is wrong.

    With `trusted_keys` (see `edge_app.bundles.signature.load_public_keys`) the bundle must also carry a valid signature
    by one of them."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise BundleError(f"model bundle {path} is not a directory")
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"model bundle {path} has no {MANIFEST_NAME}") from None
    try:
        manifest = Manifest.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise BundleError(f"{manifest_path} is invalid: {format_validation_error(exc)}") from None

    for name, expected in sorted(manifest.files.items()):
        file = path / name
        if not file.is_file():
            raise BundleError(f"model bundle {path} is incomplete: {name} is missing")
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(
                f"model bundle {path} has been altered: {name} has sha256 {actual}, the manifest says {expected}"
            )
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    unlisted = sorted(present - set(manifest.files) - UNLISTED_FILES)
    if unlisted:
        raise BundleError(f"model bundle {path} holds files its manifest does not list: {', '.join(unlisted)}")
    if trusted_keys is not None:
        from edge_app.bundles.signature import verify

        verify(path, trusted_keys)
    return Bundle(path=path, manifest=manifest, sha256=hashlib.sha256(raw).hexdigest())


def load_as_configured(path: Path | str, policy: SigningPolicy) -> Bundle:
    """Load and verify a bundle as the settings say: its signature checked where `policy` requires one."""
    return load_bundle(path, keys_required_by(policy))


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write `manifest.json` into a bundle directory (used by the converters and the training script)."""
    # No record of a clinic's measure (`site_validations`), none written: bundles made before it read back the same.
    empty = {"site_validations"} if not manifest.site_validations else None
    text = json.dumps(manifest.model_dump(mode="json", exclude=empty), indent=2, sort_keys=False) + "\n"
    (path / MANIFEST_NAME).write_text(text, encoding="utf-8")

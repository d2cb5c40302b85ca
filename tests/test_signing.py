"""Ed25519 bundle signatures: signed bundles load where signing is required; tampered or unsigned ones do not."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from converters.errors import ConversionError
from converters.sign import generate_key, sign_bundle
from edge_app.bundles.bundle import load_bundle
from edge_app.bundles.signature import load_public_keys
from edge_app.config import EMBEDDED_BUNDLE, load_settings
from edge_app.errors import BundleError, ConfigError
from edge_app.inference.diagnoser import Diagnoser
from support.tools import EDGE_CONVERT

pytestmark = pytest.mark.system


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EMBEDDED_BUNDLE, tmp_path / "bundle"))


@pytest.fixture
def key(tmp_path: Path) -> Path:
    private = tmp_path / "keys" / "clinic"
    private.parent.mkdir()
    generate_key(private)
    assert private.stat().st_mode & 0o777 == 0o600
    return private


def test_signed_bundle_loads_with_its_key(bundle_dir: Path, key: Path) -> None:
    kid = sign_bundle(bundle_dir, key)
    trusted = load_public_keys([key.parent])  # a folder of trusted keys
    assert list(trusted) == [kid]
    assert load_bundle(bundle_dir, trusted_keys=trusted).manifest.name == "cxr-reference"


def test_tampered_manifest_is_refused(bundle_dir: Path, key: Path) -> None:
    sign_bundle(bundle_dir, key)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["thresholds"]["Cardiomegaly"] = 0.9
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="the signature does not match its manifest"):
        load_bundle(bundle_dir, trusted_keys=load_public_keys([key.with_name("clinic.pub")]))
    assert load_bundle(bundle_dir).manifest.thresholds["Cardiomegaly"] == 0.9, "hashes alone cannot catch this"


def test_unsigned_bundle_is_refused_where_signing_is_required(bundle_dir: Path, key: Path) -> None:
    with pytest.raises(BundleError, match="is not signed"):
        load_bundle(bundle_dir, trusted_keys=load_public_keys([key.with_name("clinic.pub")]))


def test_bundle_signed_by_an_untrusted_key_is_refused(bundle_dir: Path, key: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_key(other)
    sign_bundle(bundle_dir, other)
    with pytest.raises(BundleError, match="which this appliance does not trust"):
        load_bundle(bundle_dir, trusted_keys=load_public_keys([key.with_name("clinic.pub")]))


def test_signing_refuses_a_bundle_whose_files_changed(bundle_dir: Path, key: Path) -> None:
    (bundle_dir / "MODEL_CARD.md").write_text("changed")
    with pytest.raises(BundleError, match="altered"):
        sign_bundle(bundle_dir, key)
    with pytest.raises(ConversionError, match="never overwritten"):
        generate_key(key)


def test_service_configuration_requires_signed_bundles(bundle_dir: Path, key: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="require_signature needs at least one entry in trusted_keys"):
        load_settings(environ={"EDGE_APP_MODEL_REQUIRE_SIGNATURE": "true"})
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[model]\nbundle = "{bundle_dir}"\nrequire_signature = true\ntrusted_keys = ["{key}.pub"]\n')
    settings = load_settings(cfg, environ={})
    with pytest.raises(BundleError, match="is not signed"):
        Diagnoser.from_settings(settings)
    sign_bundle(bundle_dir, key)
    assert Diagnoser.from_settings(settings).bundle.path == bundle_dir


def test_cli_keygen_and_sign(bundle_dir: Path, tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert subprocess.run([*EDGE_CONVERT, "keygen", str(key)], capture_output=True, timeout=60).returncode == 0
    proc = subprocess.run(
        [*EDGE_CONVERT, "sign", str(bundle_dir), "--key", str(key)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("signed ")
    bad = subprocess.run(
        [*EDGE_CONVERT, "sign", str(bundle_dir), "--key", str(bundle_dir / "MODEL_CARD.md")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "cannot be read" in bad.stderr and "Traceback" not in bad.stderr


def test_keygen_into_a_missing_folder_is_a_plain_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="cannot write the key"):
        generate_key(tmp_path / "no" / "such" / "key")


def test_require_signature_with_a_key_folder_holding_no_key(bundle_dir: Path, tmp_path: Path) -> None:
    """An empty key set must not mean "no check": the service refuses to start, and the loader refuses the bundle."""
    empty = tmp_path / "no-keys"
    empty.mkdir()
    settings = load_settings(
        environ={
            "EDGE_APP_MODEL_BUNDLE": str(bundle_dir),
            "EDGE_APP_MODEL_REQUIRE_SIGNATURE": "true",
            "EDGE_APP_MODEL_TRUSTED_KEYS": str(empty),
        }
    )
    with pytest.raises(ConfigError, match=r"trusted_keys \(.*no-keys\) hold no public key"):
        Diagnoser.from_settings(settings)
    with pytest.raises(BundleError, match="is not signed"):
        load_bundle(bundle_dir, trusted_keys={})


@pytest.mark.parametrize(
    "signature",
    [
        "{ not json",
        '{"key_id": "x"}',
        '["key_id", "signature"]',
        '{"key_id": "x", "signature": "not base64 at all!"}',
    ],
    ids=["not-json", "no-signature", "a-list", "bad-base64"],
)
def test_a_malformed_signature_file_is_refused(bundle_dir: Path, key: Path, signature: str) -> None:
    (bundle_dir / "manifest.sig").write_text(signature)
    with pytest.raises(BundleError, match=r"manifest.sig is malformed"):
        load_bundle(bundle_dir, trusted_keys=load_public_keys([key.with_name("clinic.pub")]))


def test_an_untrusted_signer_is_named_by_the_start_of_its_key_id(bundle_dir: Path, key: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_key(other)
    signer = sign_bundle(bundle_dir, other)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_dir, trusted_keys=load_public_keys([key.with_name("clinic.pub")]))
    assert f"is signed by key {signer[:16]}..., which this appliance does not trust" in str(info.value)
    assert signer[:17] not in str(info.value)


def test_unreadable_trusted_keys_are_plain_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    with pytest.raises(BundleError, match=r"trusted key .*garbage.pub cannot be read"):
        load_public_keys([garbage])
    dangling = tmp_path / "dangling.pub"
    dangling.symlink_to(tmp_path / "nowhere.pub")
    with pytest.raises(BundleError, match=r"trusted key .*dangling.pub cannot be read"):
        load_public_keys([dangling])


def test_a_signature_with_stray_characters_is_refused(bundle_dir: Path, key: Path) -> None:
    """Base64 is read strictly: a valid signature with characters outside the alphabet slipped in is malformed,
    not quietly cleaned up."""
    sign_bundle(bundle_dir, key)
    sig_path = bundle_dir / "manifest.sig"
    sig = json.loads(sig_path.read_text())
    sig["signature"] = "!" + sig["signature"]
    sig_path.write_text(json.dumps(sig))
    with pytest.raises(BundleError, match=r"manifest.sig is malformed"):
        load_bundle(bundle_dir, trusted_keys=load_public_keys([key.with_name("clinic.pub")]))

"""Bringing a model bundle onto the box: from an uploaded .zip or a folder on a USB stick, into
<data_dir>/bundles/<sha256>/, only once it is verified: its hashes (and its signature where one is required), and
its reference inputs run through ONNX Runtime here giving its reference outputs within its tolerance."""

from __future__ import annotations

import json
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from edge_app.bundles.bundle import Bundle, load_as_configured
from edge_app.config import Settings
from edge_app.errors import BundleError, ConfigError
from edge_app.runtime.onnx import OnnxRuntimeRunner
from edge_app.runtime.reference import reference_drift, tolerance

MANIFEST = "manifest.json"
MAX_FILES = 64  # a bundle holds a handful; a zip of thousands is not one


def bundles_dir(settings: Settings) -> Path:
    return settings.storage.data_dir / "bundles"


def imported_bundles(settings: Settings) -> list[dict[str, str]]:
    """The bundles kept on the box (verified when imported): sha256, path, name and version, from their manifest."""
    out = []
    folder = bundles_dir(settings)
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not re.fullmatch(r"[0-9a-f]{64}", path.name):
            continue  # an import in progress, or one a crash interrupted: never verified
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            name, version = str(manifest["name"]), str(manifest["version"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a staging folder, or one damaged since
        out.append({"sha256": path.name, "path": str(path), "name": name, "version": version})
    return out


def usb_bundles(settings: Settings) -> list[Path]:
    """Bundle folders (holding a manifest.json) in model.import_dir and one level below (a stick's folder)."""
    root = settings.model.import_dir
    if root is None or not root.is_dir():
        return []
    found = []
    for manifest in sorted([*root.glob(f"*/{MANIFEST}"), *root.glob(f"*/*/{MANIFEST}")]):
        if manifest.is_file():
            found.append(manifest.parent)
    return found


def import_zip(stream: IO[bytes], settings: Settings) -> Bundle:
    """A bundle zipped (its files at the top, or in one folder); extracted safely, verified, kept."""
    with _staging(settings) as staging, tempfile.TemporaryFile(dir=staging.parent) as copy:
        shutil.copyfileobj(stream, copy)  # zipfile seeks; an upload's stream may not (Python 3.10)
        copy.seek(0)
        try:
            archive = zipfile.ZipFile(copy)
        except zipfile.BadZipFile:
            raise BundleError("the upload is not a .zip file") from None
        with archive:
            try:
                _extract(archive, staging, settings)
            except zipfile.BadZipFile as exc:
                raise BundleError(f"the .zip is damaged ({exc})") from None
            except OSError as exc:  # a member named "." or both a file and a folder: no bundle is laid out so
                raise BundleError(f"the .zip's files cannot be laid out as a folder ({exc.strerror or exc})") from None
        return _keep(_root(staging), settings)


def _extract(archive: zipfile.ZipFile, staging: Path, settings: Settings) -> None:
    """The archive's files into `staging`: a bounded number and size, no absolute path, no '..', no link."""
    members = [m for m in archive.infolist() if not m.is_dir()]
    if not members or len(members) > MAX_FILES:
        raise BundleError(f"a bundle .zip holds 1 to {MAX_FILES} files, this one {len(members)}")
    limit = settings.server.max_upload_mb * 4 * 1024 * 1024
    if sum(m.file_size for m in members) > limit:
        raise BundleError(f"the .zip unpacks to more than {limit // 2**20} MB")
    for member in members:
        name = PurePosixPath(member.filename)
        if name.is_absolute() or ".." in name.parts or stat.S_ISLNK(member.external_attr >> 16):
            raise BundleError(f"the .zip holds a path that leaves its folder or a link: {member.filename}")
        target = staging.joinpath(*name.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)


def import_folder(folder: Path, settings: Settings) -> Bundle:
    """A bundle folder inside model.import_dir (a USB stick), copied, verified, kept."""
    root = settings.model.import_dir
    if root is None:
        raise ConfigError("no USB import folder is configured (model.import_dir)")
    folder = folder.resolve()
    if not folder.is_relative_to(root.resolve()) or not (folder / MANIFEST).is_file():
        raise BundleError(f"{folder} is not a bundle folder inside {root}")
    with _staging(settings) as staging:
        shutil.copytree(folder, staging / "bundle", symlinks=True)
        return _keep(staging / "bundle", settings)


class _staging:
    """A temporary folder beside the kept bundles (one file system: the rename is atomic), removed at the end."""

    def __init__(self, settings: Settings) -> None:
        self.parent = bundles_dir(settings)

    def __enter__(self) -> Path:
        self.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.parent))
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _root(staging: Path) -> Path:
    if (staging / MANIFEST).is_file():
        return staging
    folders = [p for p in staging.iterdir() if p.is_dir()]
    if len(folders) == 1 and (folders[0] / MANIFEST).is_file():
        return folders[0]
    raise BundleError(f"no {MANIFEST} at the top of the .zip or in its one folder")


def _keep(candidate: Path, settings: Settings) -> Bundle:
    """Verify the bundle at `candidate`, then move it to bundles/<sha256> (where it may be already)."""
    if any(p.is_symlink() for p in candidate.rglob("*")):
        raise BundleError("a bundle holds plain files only, not links")
    bundle = load_as_configured(candidate, settings.model)
    runner = OnnxRuntimeRunner(bundle, threads=1)
    runner.activate()
    try:
        drift = reference_drift(bundle, runner)
    finally:
        runner.deactivate()
    if drift > tolerance(bundle):
        raise BundleError(
            f"the model does not reproduce its own reference outputs here: max probability difference {drift:.4f} "
            f"> {tolerance(bundle)}; refused"
        )
    final = bundles_dir(settings) / bundle.sha256
    if not final.exists():
        candidate.rename(final)
    return load_as_configured(final, settings.model)

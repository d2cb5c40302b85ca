"""`edge-app export`: as it is for the clinic's own records, and de-identified (DICOM PS3.15 Annex E basic
profile) for research: then no byte of the export names the patient, the place or the reviewer."""

from __future__ import annotations

import csv
import io
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.config import Settings
from edge_app.service import Service
from edge_app.web import create_app, services
from support.data import NIH
from support.dicom import dicom_bytes, dicom_file

pytestmark = pytest.mark.system

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _crafted() -> bytes:
    """RG1_UNCR with the patient's name and ID in its 128-byte preamble, which DICOM leaves free for any use, and the
    sending station's AE title in its file meta."""
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.preamble = f"{ds.PatientName} {ds.PatientID}".encode().ljust(128, b" ")
    ds.file_meta.SourceApplicationEntityTitle = "XRAY-ROOM-2"
    return dicom_bytes(ds)


def _served(tmp_path: Path, api_client: Callable[[Flask], FlaskClient]) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """A data directory holding a CR DICOM study (`_crafted`, reviewed with a note) and a PNG study."""
    with Service(
        Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data")}, "model": {"threads": 1}})
    ) as svc:
        app = create_app(svc)
        client = api_client(app)
        dicom = client.post("/api/v1/studies?filename=rg1.dcm", data=_crafted())
        png = client.post("/api/v1/studies?filename=p.png", data=sorted((NIH / "images").glob("*.png"))[0].read_bytes())
        result = dicom.get_json()["images"][0]["results"][0]
        services.get_from(app).reviews.add(result["id"], "dr-ade", {"Effusion": "disagree"}, "pleura fine")
        return dicom.get_json(), png.get_json()


def _bytes_of(folder: Path) -> bytes:
    """Every file's bytes, and the text of each PDF (its page streams are compressed)."""
    from pypdf import PdfReader

    out = [p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()]
    out += [PdfReader(p).pages[0].extract_text().encode() for p in sorted(folder.rglob("*.pdf"))]
    return b"".join(out)


def test_an_export_as_it_is(cli: Cli, tmp_path: Path, api_client: Callable[[Flask], FlaskClient]) -> None:
    dicom, png = _served(tmp_path, api_client)
    made = cli("export", str(tmp_path / "usb"), env={"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data")})
    assert made.returncode == 0, made.stderr
    (export,) = (tmp_path / "usb").iterdir()
    assert (export / dicom["uid"] / "image-1.dcm").read_bytes() == _crafted(), "the clinic's record: as it came"
    assert (export / png["uid"] / "image-1.png").is_file() and (export / png["uid"] / "report.pdf").is_file()
    rows = list(csv.DictReader((export / "results.csv").open(encoding="utf-8")))
    effusion = next(r for r in rows if r["study"] == dicom["uid"] and r["label"] == "Effusion")
    assert effusion["verdict"] == "disagree" and effusion["reviewer"] == "dr-ade" and effusion["validated"] == "True"
    infiltration = next(r for r in rows if r["study"] == dicom["uid"] and r["label"] == "Infiltration")
    assert (infiltration["validated"], infiltration["positive"]) == ("False", "False")
    assert {(r["study"], r["study_uid"]) for r in rows} == {(dicom["uid"], dicom["uid"]), (png["uid"], png["uid"])}


def test_a_deidentified_export_names_no_one(
    cli: Cli, tmp_path: Path, api_client: Callable[[Flask], FlaskClient]
) -> None:
    dicom, png = _served(tmp_path, api_client)
    source = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data")}
    made = cli("export", str(tmp_path / "usb"), "--deidentify", env=env)
    assert made.returncode == 0, made.stderr
    (export,) = (tmp_path / "usb").iterdir()
    assert export.name.endswith("-deidentified")
    assert sorted(p.name for p in export.iterdir()) == ["results.csv", "study-0001", "study-0002"]
    out = pydicom.dcmread(export / "study-0001" / "image-1.dcm")
    assert out.preamble == bytes(128)
    assert out.file_meta.ImplementationClassUID == pydicom.uid.PYDICOM_IMPLEMENTATION_UID, "file meta made anew"
    assert out.PatientIdentityRemoved == "YES" and "Annex E" in out.DeidentificationMethod
    assert out.StudyInstanceUID != source.StudyInstanceUID and out.SOPInstanceUID != source.SOPInstanceUID
    assert (out.pixel_array == source.pixel_array).all(), "the image itself is kept"
    everything = _bytes_of(export)
    secrets = [
        str(source.PatientName).split("^")[0],
        str(source.PatientID),
        str(source.StudyInstanceUID),
        str(source.get("InstitutionName", "")) or None,
        str(source.get("StationName", "")) or None,
        "XRAY-ROOM-2",
        "dr-ade",
        "pleura fine",
        dicom["uid"],
        png["uid"],
    ]
    for secret in filter(None, secrets):
        assert secret.encode() not in everything, secret
    rows = list(csv.DictReader((export / "results.csv").open(encoding="utf-8")))
    assert {r["reviewer"] for r in rows} - {""} == {"reviewer-1"}
    assert all(r["received"] == r["study_uid"] == "" for r in rows)
    assert b"reviewer-1" in everything and b"Cardiomegaly" in everything, "the reports' text was read"
    assert b"Note left out of a de-identified export" in everything


def test_what_cannot_be_de_identified_is_left_out_and_named(
    cli: Cli, tmp_path: Path, api_client: Callable[[Flask], FlaskClient]
) -> None:
    """A refused upload (no image at all) and a palette PNG: the first is named in not-exported.txt, the second
    keeps its colours; exported as they are, the refused bytes are kept as .bin."""

    import numpy as np
    from PIL import Image

    palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).convert("P", palette=Image.ADAPTIVE)
    buf = io.BytesIO()
    palette.save(buf, "PNG")
    with Service(
        Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data")}, "model": {"threads": 1}})
    ) as svc:
        app = create_app(svc)
        client = api_client(app)
        junk = client.post("/api/v1/studies?filename=junk.bin", data=b"\x00" * 300).get_json()["study"]["uid"]
        client.post("/api/v1/studies?filename=p.png", data=buf.getvalue())
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data")}
    assert cli("export", str(tmp_path / "deid"), "--deidentify", env=env).returncode == 0
    (export,) = (tmp_path / "deid").iterdir()
    assert (export / "not-exported.txt").read_text().startswith("study-0001 image-1: not an image")
    assert not list((export / "study-0001").glob("image-*"))
    again = Image.open(export / "study-0002" / "image-1.png")
    assert np.array_equal(np.asarray(again.convert("RGB")), np.asarray(palette.convert("RGB")))
    assert cli("export", str(tmp_path / "plain"), env=env).returncode == 0
    (plain,) = (tmp_path / "plain").iterdir()
    assert (plain / junk / "image-1.bin").read_bytes() == b"\x00" * 300
    assert not (plain / "not-exported.txt").exists()


def _studies(tmp_path: Path, api_client: Callable[[Flask], FlaskClient], modalities: list[str]) -> list[str]:  # type: ignore[type-arg]
    """One RG1_UNCR study per modality sent through the API, in that order; return their UIDs."""
    from pydicom.uid import generate_uid

    with Service(
        Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data")}, "model": {"threads": 1}})
    ) as svc:
        app = create_app(svc)
        client = api_client(app)
        uids = []
        for modality in modalities:
            ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
            ds.Modality, ds.StudyInstanceUID, ds.SOPInstanceUID = modality, generate_uid(), generate_uid()
            ds.SeriesInstanceUID = generate_uid()
            client.post("/api/v1/studies?filename=x.dcm", data=dicom_bytes(ds))
            uids.append(ds.StudyInstanceUID)
        return uids


def test_a_study_uid_is_never_a_path(cli: Cli, tmp_path: Path, api_client: Callable[[Flask], FlaskClient]) -> None:
    """Study UIDs held before ingest checked them (or brought by a restored backup): an absolute path, `..`, a
    quote, a line break, 65 characters. Such a study is exported under its number and results.csv gives its UID; a
    valid UID (64 characters at most) names its folder."""
    import sqlite3

    hostile = [str(tmp_path / "outside"), "../../escape", 'a"b/c', "1.2.3\n", "1." * 32 + "1"]
    good = "1.2." + "3" * 60
    sent = _studies(tmp_path, api_client, ["CR"] * 6)
    with sqlite3.connect(tmp_path / "data" / "edge-app.sqlite3") as db:
        for uid, was in zip([*hostile, good], sent, strict=True):
            db.execute("UPDATE studies SET uid = ? WHERE uid = ?", (uid, was))
    made = cli("export", str(tmp_path / "usb"), env={"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data")})
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "usb"], "nothing written outside the export"
    (export,) = (tmp_path / "usb").iterdir()
    numbered = [f"study-{n:04d}" for n in range(1, 6)]
    assert sorted(p.name for p in export.iterdir()) == sorted([good, "results.csv", *numbered])
    for folder in [good, *numbered]:
        assert sorted(p.name for p in (export / folder).iterdir()) == ["image-1.dcm", "report.pdf"]
    rows = list(csv.DictReader((export / "results.csv").open(encoding="utf-8")))
    assert {(r["study"], r["study_uid"]) for r in rows} == {*zip(numbered, hostile, strict=True), (good, good)}


def test_no_cell_of_results_csv_is_a_formula(
    cli: Cli, tmp_path: Path, api_client: Callable[[Flask], FlaskClient], formulas: Callable[[str], list[str]]
) -> None:
    """A Modality that a spreadsheet would run, at the start of the cell or after a ';' (a French spreadsheet's
    separator): made inert in both exports, its text kept."""
    _studies(tmp_path, api_client, ['=HYPERLINK("http://x.test")', "CR;@SUM(1)"])
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data")}
    for args in ([], ["--deidentify"]):
        made = cli("export", str(tmp_path / "usb" / str(len(args))), *args, env=env)
        assert made.returncode == 0, made.stderr
        (export,) = (tmp_path / "usb" / str(len(args))).iterdir()
        text = (export / "results.csv").read_text(encoding="utf-8")
        assert formulas(text) == []
        modalities = [r["modality"] for r in csv.DictReader(io.StringIO(text))]
        assert modalities == ['\'=HYPERLINK("HTTP://X.TEST")', "CR;'@SUM(1)"]

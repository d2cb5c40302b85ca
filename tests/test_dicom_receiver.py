"""The DICOM receiver against real peers on localhost: pynetdicom's own SCU, and dcmtk's storescu/echoscu where
installed. Every CR and US file of pydicom-data arrives and is diagnosed or refused with the right status; bad
input gets the right failure and the server lives on."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts

from edge_app.config import Settings
from edge_app.service import Service
from edge_app.web import create_app, services
from support.dicom import cr_and_us_files, dicom_file, htj2k_cr
from support.tools import dcmtk

pytestmark = pytest.mark.system

CR_US = cr_and_us_files()


@pytest.fixture
def app(tmp_path: Path, free_port: int, service: Callable[..., Service]) -> Flask:
    return create_app(service(_dicom_settings(tmp_path, free_port)))


def _service(app: Flask) -> Service:
    return services.get_from(app)


def _port(app: Flask) -> int:
    return _service(app).settings.capture.dicom.port


def _associate(port: int, calling: str = "MODALITY", contexts: list | None = None):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    for cx in contexts or StoragePresentationContexts:
        ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
    return ae.associate("127.0.0.1", port, ae_title="EDGEAPP")


def _send(port: int, datasets: list[Dataset], calling: str = "MODALITY") -> list[int]:
    ae = AE(ae_title=calling)
    for sop_class, syntax in {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}:
        ae.add_requested_context(sop_class, syntax)
    for sop_class in {ds.SOPClassUID for ds in datasets}:  # files whose data set is not encoded as its meta says
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEAPP")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_every_cr_and_us_file_arrives_and_gets_its_status(
    app: Flask, api_client: Callable[[Flask], FlaskClient]
) -> None:
    service, port = _service(app), _port(app)
    datasets = [pydicom.dcmread(p) for p in CR_US]
    assert len(datasets) >= 15
    statuses = []
    for start in range(0, len(datasets), 10):  # 128 presentation contexts at most per association
        statuses += _send(port, datasets[start : start + 10])
    # The test files share SOP Instance UIDs between encodings of one image: the first is the image; a later one
    # is the image again where its data set's bytes are the same (only its file meta differed), else it is
    # stored apart with a warning.
    first = {ds.SOPInstanceUID: ds for ds in reversed(datasets)}
    assert [code for ds, code in zip(datasets, statuses, strict=True) if first[ds.SOPInstanceUID] is ds] == [
        0x0000
    ] * len(first)
    assert set(statuses) == {0x0000, 0xB000}
    client = api_client(app)
    for ds in first.values():
        study = client.get(f"/api/v1/studies/{ds.StudyInstanceUID}").get_json()
        (image,) = [i for i in study["images"] if i["sop_instance_uid"] == ds.SOPInstanceUID]
        status, reason = service.store.wait_for(image["id"], timeout=60)
        chest = ds.Modality == "CR" and str(ds.get("BodyPartExamined") or "CHEST").upper() == "CHEST"
        expected = "done" if chest else "no_model"
        assert status == expected, (ds.filename, reason)
        assert image["source"].startswith("dicom:MODALITY@127.0.0.1")


@pytest.mark.parametrize("encoding", ["jpeg-2000", "htj2k-lossless", "htj2k"])
def test_a_jpeg_2000_chest_cr_is_decoded_no_larger_than_its_uses_and_whole_on_demand(
    app: Flask, api_client: Callable[[Flask], FlaskClient], auth: Any, browser: FlaskClient, encoding: str
) -> None:
    """The chest CR (1955x1841) C-STOREd as lossless JPEG 2000, and as lossless and lossy HTJ2K of another
    encoder (OpenJPH): the model and the tablet's preview get its half-resolution level (978x921, the codestream's
    own), its full size is what the store says, and the diagnostic view decodes it whole when a clinician asks."""
    from PIL import Image

    if encoding == "jpeg-2000":
        ds = pydicom.dcmread(dicom_file("RG1_J2KR.dcm"))
    else:
        ds = htj2k_cr(lossless=encoding == "htj2k-lossless")
    assert _send(_port(app), [ds]) == [0x0000]
    study = api_client(app).get(f"/api/v1/studies/{ds.StudyInstanceUID}").get_json()
    (image,) = study["images"]
    assert _service(app).store.wait_for(image["id"], timeout=60)[0] == "done"
    auth.login("clinician")
    preview = browser.get(f"/studies/{ds.StudyInstanceUID}/images/{image['id']}/view.jpg")
    assert Image.open(io.BytesIO(preview.data)).size == (921, 978)
    (stored,) = _service(app).store.get_study(ds.StudyInstanceUID).images
    assert (stored.metadata["rows"], stored.metadata["columns"]) == (1955, 1841)
    full = browser.get(f"/studies/{ds.StudyInstanceUID}/images/{image['id']}/full")
    assert (full.headers["X-Full-Width"], full.headers["X-Full-Height"]) == ("1841", "1955")


def test_a_duplicate_is_acknowledged_and_not_stored_twice(
    app: Flask, api_client: Callable[[Flask], FlaskClient]
) -> None:
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    port = _port(app)
    assert _send(port, [ds]) == [0x0000]
    assert _send(port, [ds]) == [0x0000]
    study = api_client(app).get(f"/api/v1/studies/{ds.StudyInstanceUID}").get_json()
    assert [i["sop_instance_uid"] for i in study["images"]] == [ds.SOPInstanceUID]


def _store_statuses(port: int, datasets: list[Dataset]) -> list[tuple[int, str]]:
    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEAPP")
    assert assoc.is_established
    try:
        answers = [assoc.send_c_store(ds) for ds in datasets]
        return [(int(a.Status), str(a.get("ErrorComment", ""))) for a in answers]
    finally:
        assoc.release()


def test_an_image_joins_a_study_only_under_its_patient_and_a_uid_held_with_other_bytes_is_kept_apart(
    app: Flask, api_client: Callable[[Flask], FlaskClient]
) -> None:
    """Through C-STORE, as an unauthenticated peer would: an image without a patient ID (or with another's) naming
    a patient's study, and other bytes under a SOP Instance UID held, are stored apart (warning 0xB000, not
    diagnosed, listed with the reason, nothing of the patient told); the patient's study keeps its own image; the
    same bytes again add nothing. A Study UID with '/' or a line break is refused (0xC210)."""
    port, client = _port(app), api_client(app)
    real = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    assert _store_statuses(port, [real]) == [(0x0000, "")]
    no_id, other, same_uid = (pydicom.dcmread(dicom_file("RG1_UNCR.dcm")) for _ in range(3))
    no_id.SOPInstanceUID, no_id.PatientID, no_id.PatientName = "1.2.3.77.1", "", "INTRUDER"
    other.SOPInstanceUID, other.PatientID = "1.2.3.77.2", "SOMEONE-ELSE"
    same_uid.PixelData = bytes(len(real.PixelData))  # a black image under the real one's SOP Instance UID
    answers = _store_statuses(port, [no_id, other, same_uid, no_id])
    assert [code for code, _ in answers] == [0xB000] * 4
    assert answers[0][1].startswith("it carries no patient ID and its Study Instance UID names")  # 64 characters
    assert answers[1][1].startswith("its Study Instance UID belongs to another patient's study")
    assert answers[2][1].startswith("an image with the same SOP Instance UID and other content")
    assert all(str(real.PatientID) not in comment for _, comment in answers)
    study = client.get(f"/api/v1/studies/{real.StudyInstanceUID}").get_json()
    assert [i["sop_instance_uid"] for i in study["images"]] == [real.SOPInstanceUID], "the patient's own image only"
    apart = [s for s in client.get("/api/v1/studies").get_json()["studies"] if s["uid"] != real.StudyInstanceUID]
    assert len(apart) == 3, "each kept apart once: the same bytes sent again found their record"
    assert {s["patient_id"] for s in apart} == {"", "SOMEONE-ELSE", str(real.PatientID)}
    for s in apart:
        (image,) = s["images"]
        assert image["status"] == "rejected" and "kept apart, not diagnosed" in image["reason"]
    for bad in ("1.2.3/../4", "1.2.3\r\nX-Evil: 1"):
        ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
        ds.SOPInstanceUID, ds.StudyInstanceUID = "1.2.3.77.9", bad
        ((code, comment),) = _store_statuses(port, [ds])
        assert code == 0xC210 and "is not a DICOM UID" in comment, comment


def test_bad_input_gets_a_failure_and_the_server_lives_on(app: Flask) -> None:
    port = _port(app)
    good = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))

    no_pixels = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = "1.2.3.999.1"
    assert _send(port, [no_pixels]) == [0xA900]

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(good.SOPClassUID, good.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEAPP")
    truncated = io.BytesIO()
    good.save_as(truncated, enforce_file_format=True)
    damaged = pydicom.dcmread(io.BytesIO(truncated.getvalue()[:2000]), force=True)  # the header, a little of it
    damaged.SOPInstanceUID, damaged.SOPClassUID = "1.2.3.999.2", good.SOPClassUID
    damaged.file_meta.TransferSyntaxUID = good.file_meta.TransferSyntaxUID
    status = assoc.send_c_store(damaged)
    assert int(status.Status) in (0xA900, 0xC210), "a truncated data set is refused"
    assoc.release()

    plan = pydicom.dcmread(dicom_file("rtplan.dcm"))
    assoc = _associate(port, contexts=[c for c in StoragePresentationContexts if c.abstract_syntax == plan.SOPClassUID])
    assert not assoc.is_established or not assoc.accepted_contexts, "neither an image nor kept: not accepted"
    if assoc.is_established:
        assoc.release()

    assert _send(port, [good]) == [0x0000], "a good C-STORE still succeeds afterwards"


def test_echo(app: Flask) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", _port(app), ae_title="EDGEAPP")
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()


def test_calling_ae_titles_and_addresses_outside_the_allow_lists_are_refused(
    tmp_path: Path, free_port: int, service: Callable[..., Service]
) -> None:
    with Service(
        Settings.model_validate(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "capture": {
                    "dicom": {"enabled": True, "host": "127.0.0.1", "port": free_port, "allowed_ae_titles": ["XRAY1"]}
                },
            }
        )
    ):
        ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
        assoc = _associate(free_port, calling="INTRUDER")
        assert assoc.is_rejected
        assert _send(free_port, [ds], calling="XRAY1") == [0x0000]
    service(
        {
            "storage": {"data_dir": str(tmp_path / "data2")},
            "capture": {
                "dicom": {
                    "enabled": True,
                    "host": "127.0.0.1",
                    "port": free_port,
                    "allowed_addresses": ["10.9.9.0/24"],
                }
            },
        }
    )
    assoc = _associate(free_port)
    assert not assoc.is_established, "127.0.0.1 is not in 10.9.9.0/24"


def test_health_shows_the_receiver_and_the_devices_page_its_address(
    app: Flask, api_client: Callable[[Flask], FlaskClient], auth: Any, browser: FlaskClient
) -> None:
    (source,) = api_client(app).get("/api/v1/health").get_json()["sources"]
    assert source == {"name": "dicom", "connected": True}, "health is open to the Wi-Fi: no address in it"
    auth.login("technician")
    assert f"EDGEAPP on 127.0.0.1:{_port(app)}" in browser.get("/devices").get_data(as_text=True)


_STORESCU_OPTION = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def test_dcmtk_storescu_and_echoscu(app: Flask, api_client: Callable[[Flask], FlaskClient]) -> None:
    echoscu, storescu = dcmtk("echoscu"), dcmtk("storescu")
    port = str(_port(app))
    echo = subprocess.run([echoscu, "-aec", "EDGEAPP", "127.0.0.1", port], capture_output=True, text=True)
    assert echo.returncode == 0, echo.stderr
    by_syntax: dict[str, list[str]] = {}
    for path in CR_US:
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        by_syntax.setdefault(syntax, []).append(str(path))
    for syntax, files in by_syntax.items():  # storescu proposes compressed syntaxes only when told which
        option = _STORESCU_OPTION.get(syntax, "-xe")
        sent = subprocess.run(
            [storescu, option, "-R", "-aec", "EDGEAPP", "-aet", "DCMTK", "127.0.0.1", port, *files],
            capture_output=True,
            text=True,
        )
        assert sent.returncode == 0, (syntax, sent.stderr)
    client = api_client(app)
    for path in CR_US:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study = client.get(f"/api/v1/studies/{ds.StudyInstanceUID}").get_json()
        assert ds.SOPInstanceUID in [i["sop_instance_uid"] for i in study["images"]]


def test_each_image_goes_to_the_bundles_whose_intended_use_fits(
    tmp_path: Path, free_port: int, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    """A second bundle for ultrasound (the reference model's copy, its manifest saying US): a US image goes to it,
    a chest radiograph to the chest model, and a CT image to none (no_model)."""
    import json

    from edge_app.config import EMBEDDED_BUNDLE

    us_bundle = Path(shutil.copytree(EMBEDDED_BUNDLE, tmp_path / "us-bundle"))
    manifest = json.loads((us_bundle / "manifest.json").read_text())
    manifest["name"], manifest["intended_use"] = "us-demo", {"modality": ["US"], "body_part": ""}
    (us_bundle / "manifest.json").write_text(json.dumps(manifest))
    app = create_app(
        service(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "model": {"threads": 1, "extra_bundles": [str(us_bundle)]},
                "capture": {"dicom": {"enabled": True, "host": "127.0.0.1", "port": free_port}},
            }
        )
    )
    svc = _service(app)
    files = {"RG1_UNCR.dcm": "cxr-reference", "US1_UNCR.dcm": "us-demo", "CT_small.dcm": None}
    datasets = [pydicom.dcmread(dicom_file(name)) for name in files]
    assert _send(free_port, [ds for ds in datasets if ds.Modality != "CT"]) == [0, 0]
    ct = datasets[2]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ct.SOPClassUID, ct.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", free_port, ae_title="EDGEAPP")
    assert int(assoc.send_c_store(ct).Status) == 0
    assoc.release()
    for ds, model in zip(datasets, files.values(), strict=True):
        study = api_client(app).get(f"/api/v1/studies/{ds.StudyInstanceUID}").get_json()
        (image,) = study["images"]
        status, reason = svc.store.wait_for(image["id"], timeout=60)
        image = api_client(app).get(f"/api/v1/studies/{ds.StudyInstanceUID}").get_json()["images"][0]
        if model is None:
            assert status == "no_model" and "modality CT" in str(reason) and image["results"] == []
        else:
            assert [r["model"]["name"] for r in image["results"]] == [model]


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-app")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "edge.pem", folder / "edge.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_dicom_over_tls(
    tmp_path: Path, free_port: int, api_client: Callable[[Flask], FlaskClient], service: Callable[..., Service]
) -> None:
    """With tls_cert and tls_key the receiver speaks TLS only: a TLS peer trusting the certificate stores an
    image; a plain peer gets no association."""
    import ssl

    cert, key = _self_signed(tmp_path)
    app = create_app(
        service(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "capture": {
                    "dicom": {
                        "enabled": True,
                        "host": "127.0.0.1",
                        "port": free_port,
                        "tls_cert": str(cert),
                        "tls_key": str(key),
                    }
                },
            }
        )
    )
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", free_port, ae_title="EDGEAPP", tls_args=(context, "localhost"))
    assert assoc.is_established
    assert int(assoc.send_c_store(ds).Status) == 0
    assoc.release()
    plain = AE(ae_title="MODALITY")
    plain.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    plain.acse_timeout = plain.network_timeout = 3
    assert not plain.associate("127.0.0.1", free_port, ae_title="EDGEAPP").is_established
    assert str(services.get_from(app).sources[0].state()["detail"]).endswith("(TLS)")


def test_a_disk_filling_up_mid_transfer_leaves_nothing_half_written(tmp_path: Path, free_port: int) -> None:
    """The disk fills up while an image arrives (played by a 2 MB file-size limit on a real server process): the
    7 MB image's association ends without a status (it was being written as it came), a small one still
    succeeds, and no partial file is left behind, neither in the store nor in the temporary folder."""
    import os
    import resource
    import signal
    import time
    import urllib.request

    from support.tools import EDGE_APP

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        http = sock.getsockname()[1]
    env = {
        **os.environ,
        "EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data"),
        "EDGE_APP_SERVER_PORT": str(http),
        "EDGE_APP_CAPTURE_DICOM_ENABLED": "true",
        "EDGE_APP_CAPTURE_DICOM_HOST": "127.0.0.1",
        "EDGE_APP_CAPTURE_DICOM_PORT": str(free_port),
        "TMPDIR": str(tmp_path / "tmp"),
    }
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen([*EDGE_APP, "serve"], env=env, preexec_fn=small_disk, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/api/v1/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
                time.sleep(0.1)
        big, small = pydicom.dcmread(dicom_file("RG1_UNCR.dcm")), pydicom.dcmread(dicom_file("US1_UNCR.dcm"))
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(big.SOPClassUID, big.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", free_port, ae_title="EDGEAPP")
        assert "Status" not in assoc.send_c_store(big), "no answer: the connection was closed"
        assoc.abort()
        assert _send(free_port, [small]) == [0x0000]
        leftovers = [p for p in (tmp_path / "data" / "files").rglob("*") if p.name.startswith(".incoming")]
        assert leftovers == [] and list((tmp_path / "tmp").glob("*.dcm")) == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _dicom_settings(tmp_path: Path, port: int, **dicom: Any) -> Settings:
    return Settings.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "model": {"threads": 1},
            "capture": {"dicom": {"enabled": True, "host": "127.0.0.1", "port": port, **dicom}},
        }
    )


def _idle(port: int, address: str) -> Any:
    """An association from `address` (any 127.x.y.z: Linux answers the whole loopback network) that sends nothing."""
    ae = AE(ae_title="IDLE")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = 5
    return ae.associate("127.0.0.1", port, ae_title="EDGEAPP", bind_address=(address, 0))


def test_idle_associations_from_one_peer_lock_no_modality_out(app: Flask) -> None:
    """Twelve idle associations from one address (pynetdicom's default maximum is ten): at most
    max_associations_per_address of them are held, and the modality's C-STORE still succeeds."""
    port = _port(app)
    idle = [_idle(port, "127.0.0.2") for _ in range(12)]
    try:
        assert sum(a.is_established for a in idle) == 4
        assert _send(port, [pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))]) == [0x0000]
    finally:
        for assoc in idle:
            assoc.abort()


def test_associations_are_capped_in_all_and_dropped_when_silent(
    tmp_path: Path, free_port: int, service: Callable[..., Service]
) -> None:
    """Two associations per address, three in all: a third from one address and a fourth from another are
    refused; after timeout_s of silence the server drops them (and a bare connection), and a store succeeds."""
    import socket
    import time

    service(_dicom_settings(tmp_path, free_port, max_associations=3, max_associations_per_address=2, timeout_s=1.0))
    held = [_idle(free_port, "127.0.0.2"), _idle(free_port, "127.0.0.2")]
    assert all(a.is_established for a in held)
    assert not _idle(free_port, "127.0.0.2").is_established, "a third from the same address"
    held.append(_idle(free_port, "127.0.0.3"))
    assert held[-1].is_established
    assert not _idle(free_port, "127.0.0.4").is_established, "a fourth in all"
    bare = socket.create_connection(("127.0.0.1", free_port))
    bare.settimeout(10)
    started = time.monotonic()
    assert bare.recv(1) == b"", "a connection that never asks for an association is closed"
    assert time.monotonic() - started < 5
    bare.close()
    deadline = time.monotonic() + 10
    while any(a.is_established for a in held):
        assert time.monotonic() < deadline, "silent associations are dropped after timeout_s"
        time.sleep(0.1)
    assert all(a.is_aborted for a in held)
    while not (modality := _idle(free_port, "127.0.0.1")).is_established:  # their threads end, then room
        assert time.monotonic() < deadline
        time.sleep(0.1)
    modality.release()


def test_the_called_ae_title_must_be_ours_unless_any_is_accepted(
    tmp_path: Path, free_port: int, service: Callable[..., Service]
) -> None:
    with Service(_dicom_settings(tmp_path, free_port)):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.1.1")
        assert ae.associate("127.0.0.1", free_port, ae_title="SOMEONEELSE").is_rejected
    service(_dicom_settings(tmp_path, free_port, any_called_ae_title=True))
    assoc = ae.associate("127.0.0.1", free_port, ae_title="SOMEONEELSE")
    assert assoc.is_established
    assoc.release()


def test_no_association_without_room_for_one_more_object(
    tmp_path: Path, free_port: int, service: Callable[..., Service]
) -> None:
    """Free space is looked at before receiving: with less than storage.min_free_mb + max_object_mb free, an
    association is refused (transient: the modality tries again later); one opened before gets 0xA700."""
    import shutil

    app = create_app(service(_dicom_settings(tmp_path, free_port)))
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    opened = ae.associate("127.0.0.1", free_port, ae_title="EDGEAPP")
    assert opened.is_established
    ingest = _service(app).ingest
    ingest.min_free_mb = shutil.disk_usage(tmp_path).free // 2**20 + 100  # the disk filled up meanwhile
    refused = ae.associate("127.0.0.1", free_port, ae_title="EDGEAPP")
    assert refused.is_rejected
    assert (refused.acceptor.primitive.result, refused.acceptor.primitive.result_source) == (0x02, 0x03)
    assert int(opened.send_c_store(ds).Status) == 0xA700
    opened.release()
    assert [p for p in (tmp_path / "data" / "files").rglob("*") if p.is_file()] == []


def test_a_peer_refused_often_is_slowed(tmp_path: Path, free_port: int, service: Callable[..., Service]) -> None:
    """max_refused_per_min = 2: the first two refusals are answered at once, then each answer waits a second
    more per refusal beyond."""

    service(_dicom_settings(tmp_path, free_port, max_refused_per_min=2))
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    del ds.PixelData
    took = _answer_times(free_port, ds, 4, 0xA900)
    assert took[1] < 0.9 and 0.9 < took[2] < 1.9 and took[3] > 1.9, took  # the first may be slow


def test_a_peer_sending_what_no_model_reads_is_slowed(
    tmp_path: Path, free_port: int, service: Callable[..., Service]
) -> None:
    """max_refused_per_min = 2 and ultrasound images, which no model here reads: each is stored and acknowledged,
    the worker finds no model for it, and from the third such object of the minute each answer waits longer."""

    app = create_app(service(_dicom_settings(tmp_path, free_port, max_refused_per_min=2)))
    store = _service(app).store
    ds = pydicom.dcmread(dicom_file("US1_UNCR.dcm"))

    def read_by_no_model() -> None:  # the worker's verdict is in before the next object
        (image,) = [i for i in store.get_study(ds.StudyInstanceUID).images if i.sop_instance_uid == ds.SOPInstanceUID]
        assert store.wait_for(image.id, timeout=30)[0] == "no_model"

    took = _answer_times(free_port, ds, 5, 0x0000, read_by_no_model)
    assert max(took[1:3]) < 0.9 and 0.9 < took[3] < 1.9 and took[4] > 1.9, took  # the first may be slow


def _answer_times(port: int, ds: Dataset, n: int, status: int, after: Callable[[], None] = lambda: None) -> list[float]:
    """Seconds each of `n` C-STOREs of `ds` (each its own SOP Instance UID) took to be answered `status`, in one
    association; `after` runs after each answer."""
    import time

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEAPP")
    took = []
    try:
        for k in range(n):
            ds.SOPInstanceUID = f"1.2.3.998.{k}"
            started = time.monotonic()
            assert int(assoc.send_c_store(ds).Status) == status
            took.append(time.monotonic() - started)
            after()
    finally:
        assoc.release()
    return took


def _peak_rss_mb(pid: int) -> float:
    """The most memory the process has held (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_large_data_set_is_streamed_to_disk_and_a_larger_one_aborted(
    tmp_path: Path, free_port: int, launch: Callable[..., subprocess.Popen[str]], token_for: Any
) -> None:
    """max_object_mb = 40 on a real server: a 30 MB image is stored without the server's peak memory growing by
    its size; a 60 MB one aborts its association, nothing of it is stored and no temporary file stays."""
    import json
    import socket
    import time
    import urllib.request

    import numpy as np

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        http = sock.getsockname()[1]
    (tmp_path / "tmp").mkdir()
    proc = launch(
        tmp_path / "data",
        http,
        {
            "EDGE_APP_CAPTURE_DICOM_ENABLED": "true",
            "EDGE_APP_CAPTURE_DICOM_HOST": "127.0.0.1",
            "EDGE_APP_CAPTURE_DICOM_PORT": str(free_port),
            "EDGE_APP_CAPTURE_DICOM_MAX_OBJECT_MB": "40",
            "TMPDIR": str(tmp_path / "tmp"),
        },
    )
    try:

        def image(rows: int, n: int) -> Dataset:
            ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
            ds.Rows, ds.Columns, ds.BodyPartExamined = rows, 4096, "HAND"  # no model reads it: no decoding
            ds.PixelData = np.full((rows, 4096), 7, dtype=np.uint16).tobytes()
            ds.StudyInstanceUID = ds.SOPInstanceUID = f"1.2.3.997.{n}"
            return ds

        large, larger = image(3840, 1), image(7680, 2)  # 30 and 60 MB
        before = _peak_rss_mb(proc.pid)
        assert _send(free_port, [large]) == [0x0000]
        assert _peak_rss_mb(proc.pid) - before < 15, "streamed to disk, not held in memory"
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(larger.SOPClassUID, larger.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", free_port, ae_title="EDGEAPP")
        assert "Status" not in assoc.send_c_store(larger), "no answer: the association was aborted"
        headers = token_for(tmp_path / "data")
        request = urllib.request.Request(f"http://127.0.0.1:{http}/api/v1/studies", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as resp:
            studies = [s["uid"] for s in json.load(resp)["studies"]]
        assert studies == [large.StudyInstanceUID]
        deadline = time.monotonic() + 10
        while list((tmp_path / "tmp").glob("*.dcm")):
            assert time.monotonic() < deadline, "the half-received data set's temporary file is removed"
            time.sleep(0.1)
        assert _send(free_port, [pydicom.dcmread(dicom_file("US1_UNCR.dcm"))]) == [0x0000], "the server lives on"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_silent_connection_holds_up_no_tls_peer(
    tmp_path: Path, free_port: int, service: Callable[..., Service]
) -> None:
    """Over TLS, a TCP connection that never starts its handshake (and one that stops half-way) leaves the others
    to associate, and is dropped after timeout_s."""
    import socket
    import ssl
    import time

    cert, key = _self_signed(tmp_path)
    service(_dicom_settings(tmp_path, free_port, tls_cert=str(cert), tls_key=str(key), timeout_s=2.0))
    silent = socket.create_connection(("127.0.0.1", free_port))
    stalled = socket.create_connection(("127.0.0.1", free_port))
    stalled.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.acse_timeout = ae.connection_timeout = 5  # the connection's timeout bounds the TLS handshake
    assoc = ae.associate("127.0.0.1", free_port, ae_title="EDGEAPP", tls_args=(context, "localhost"))
    assert assoc.is_established and int(assoc.send_c_store(ds).Status) == 0
    assoc.release()
    for sock in (silent, stalled):
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(1) == b"" and time.monotonic() - started < 8, "dropped after timeout_s"
        sock.close()


def test_check_warns_of_a_receiver_open_to_the_network_without_allow_lists_or_tls(
    cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, free_port: int
) -> None:
    env = {
        "EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data"),
        "EDGE_APP_SERVER_PORT": "1",
        "EDGE_APP_CAPTURE_DICOM_ENABLED": "true",
        "EDGE_APP_CAPTURE_DICOM_PORT": str(free_port),
    }
    lines = cli("check", env={**env, "EDGE_APP_CAPTURE_DICOM_HOST": "0.0.0.0"}).stdout.splitlines()
    assert any(
        line.startswith(f"warn  DICOM access: anyone who reaches 0.0.0.0:{free_port} can store images")
        for line in lines
    ), lines
    for guard, value in [
        ("ALLOWED_ADDRESSES", '["192.168.1.20"]'),
        ("ALLOWED_AE_TITLES", '["XRAY1"]'),
    ]:
        lan = {**env, "EDGE_APP_CAPTURE_DICOM_HOST": "0.0.0.0", f"EDGE_APP_CAPTURE_DICOM_{guard}": value}
        assert "warn  DICOM access" not in cli("check", env=lan).stdout
    cert, key = _self_signed(tmp_path)
    tls = {"EDGE_APP_CAPTURE_DICOM_TLS_CERT": str(cert), "EDGE_APP_CAPTURE_DICOM_TLS_KEY": str(key)}
    out = cli("check", env={**env, **tls, "EDGE_APP_CAPTURE_DICOM_HOST": "0.0.0.0"}).stdout
    assert f"ok    DICOM access: 0.0.0.0:{free_port}, limited by TLS" in out.splitlines()
    local = cli("check", env={**env, "EDGE_APP_CAPTURE_DICOM_HOST": "127.0.0.1"}).stdout
    assert "ok    DICOM access: this machine only (127.0.0.1)" in local.splitlines()

"""`edge-app` as a person runs it: real processes, real files, a real server on a free localhost port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_app.config import load_settings
from support.data import ROOT
from support.dicom import dicom_file
from support.processes import free_port, launch, server_log
from support.tools import EDGE_APP

pytestmark = pytest.mark.system

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_diagnose_prints_one_json_line_per_file(cli: Cli, nih_png: Path) -> None:
    proc = cli("diagnose", str(nih_png), str(dicom_file("RG1_J2KR.dcm")))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["status"] for d in lines] == ["ok", "ok"]
    first = lines[0]
    assert first["file"] == str(nih_png)
    assert first["model"] == {
        "name": "cxr-reference",
        "version": "1.1.1",
        "precision": "fp32",
        "runner": "onnxruntime",
    }
    assert {f["label"] for f in first["findings"]} == {
        "Abnormal",
        "Cardiomegaly",
        "Effusion",
        "Emphysema",
        "Infiltration",
    }
    assert all(set(f) == {"label", "probability", "threshold", "positive", "validated"} for f in first["findings"])
    assert set(first["timings_ms"]) == {"decode", "preprocess", "isolation", "infer"}


def test_diagnose_exits_non_zero_when_a_file_is_rejected(cli: Cli, nih_png: Path, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    proc = cli("diagnose", str(junk), str(nih_png), str(dicom_file("test-SR.dcm")))
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["status"] for d in lines] == ["rejected", "ok", "rejected"]
    assert lines[0]["reason"] == "not a DICOM (Part 10), PNG or JPEG file"
    assert "holds no image" in lines[2]["reason"]
    assert "Traceback" not in proc.stderr


def test_bad_configuration_is_a_plain_error(cli: Cli, tmp_path: Path, nih_png: Path) -> None:
    proc = cli("diagnose", str(nih_png), env={"EDGE_APP_MODEL_BUNDLE": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"edge-app: model bundle {tmp_path} has no manifest.json"


def test_bench_prints_a_table(cli: Cli, nih: Path) -> None:
    proc = cli("bench", str(nih / "images"), "--limit", "12")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "9 images timed, 3 warm-up, 0 skipped" in lines[0]
    assert lines[1].split() == ["stage", "p50", "ms", "p95", "ms", "mean", "ms", "images/s"]
    assert [line.split()[0] for line in lines[2:]] == ["decode", "preprocess", "isolation", "infer", "total"]


def test_real_server_end_to_end(server: str, api_headers: dict[str, str]) -> None:
    health = json.load(urllib.request.urlopen(server + "/health", timeout=10))
    assert health["status"] == "ok" and health["runner"] == "onnxruntime"

    data = dicom_file("RG1_UNCR.dcm").read_bytes()
    req = urllib.request.Request(
        server + "/studies?filename=rg1.dcm", data=data, headers={"Content-Type": "application/dicom", **api_headers}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 201
        study = json.load(resp)
    assert study["images"][0]["results"][0]["status"] == "ok"
    again = json.load(
        urllib.request.urlopen(urllib.request.Request(f"{server}/studies/{study['uid']}", headers=api_headers))
    )
    assert again["uid"] == study["uid"]

    bad = urllib.request.Request(
        server + "/studies", data=b"\x00" * 300, headers={"Content-Type": "x/y", **api_headers}
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bad, timeout=10)
    assert info.value.code == 422
    assert json.load(info.value)["detail"] == "not a DICOM (Part 10), PNG or JPEG file"
    assert json.load(urllib.request.urlopen(server + "/health", timeout=10))["status"] == "ok", "still serving"


def test_serve_refuses_plainly_a_busy_port_and_an_unusable_data_dir(cli: Cli, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data"), "EDGE_APP_SERVER_PORT": str(port)}
        proc = cli("serve", env=env)
    assert proc.returncode == 2 and f"edge-app: cannot listen on 127.0.0.1:{port}" in proc.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = cli("serve", env={"EDGE_APP_STORAGE_DATA_DIR": str(blocker / "data"), "EDGE_APP_SERVER_PORT": "1"})
    assert proc.returncode == 2 and "cannot be used (storage.data_dir)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_refuses_a_host_that_is_not_one(cli: Cli, tmp_path: Path) -> None:
    proc = cli("serve", "--host", "not a host!", env={"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert "server.host: Value error, 'not a host!' is not an IP address or a host name" in proc.stderr
    assert "secret_key" not in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("serve", "--port", "0", env={"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2 and "server.port: Input should be greater than or equal to 1" in proc.stderr


def test_diagnose_exits_3_on_an_internal_error_and_goes_on(
    cli: Cli, tmp_path: Path, nih_png: Path, broken_bundle: Path
) -> None:
    bundle = broken_bundle
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not an image")
    proc = cli("diagnose", "--bundle", str(bundle), str(nih_png), str(junk), str(nih_png))
    assert proc.returncode == 3, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["status"] for d in lines] == ["failed", "rejected", "failed"]
    assert lines[0]["reason"].startswith("internal error: InferenceError: ONNX Runtime failed")


def test_sigterm_drains_and_exits_cleanly(
    tmp_path: Path,
    launch: Callable[..., subprocess.Popen[str]],
    free_port: int,
    nih_png: Path,
    api_headers: dict[str, str],
) -> None:
    """systemd's stop: the server finishes, the worker stops, the store closes, exit status 0."""
    proc = launch(tmp_path / "data", free_port)
    req = urllib.request.Request(
        f"http://127.0.0.1:{free_port}/api/v1/studies?filename=a.png", data=nih_png.read_bytes(), headers=api_headers
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 201
    proc.terminate()
    proc.wait(timeout=60)
    out = server_log(tmp_path / "data", free_port).read_text()
    assert proc.returncode == 0, out
    assert "edge_app: stopped" in out and "Traceback" not in out


def test_check_says_what_is_wrong_with_the_installation(cli: Cli, tmp_path: Path) -> None:
    good = cli("check", env={"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data"), "EDGE_APP_SERVER_PORT": "1"})
    assert "ok    model bundle: cxr-reference 1.1.1 (fp32)" in good.stdout
    profile = tmp_path / "gen.toml"
    profile.write_text('name = "gen"\nport = "/dev/ttyNOPE0"\n[[messages]]\npattern = "x"\nevent = "status"\n')
    broken = tmp_path / "bundle"
    broken.mkdir()
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[model]\nextra_bundles = ["{broken}"]\n'
        f'[capture.serial]\nprofiles = ["{profile}"]\n'
        '[capture.video]\nenabled = true\nsource = "/dev/videoNOPE"\n'
    )
    bad = cli("--config", str(cfg), "check")
    assert bad.returncode == 1, bad.stdout
    lines = bad.stdout.splitlines()
    assert f"FAIL  model bundle: model bundle {broken} has no manifest.json" in lines
    assert "FAIL  serial gen: /dev/ttyNOPE0 is not there: is the adapter plugged in?" in lines
    assert "FAIL  video: /dev/videoNOPE is not there: is the grabber plugged in?" in lines
    assert lines[-1].endswith("3 failed") and "Traceback" not in bad.stderr


def test_check_fails_plainly_where_tensorrt_is_expected_but_does_not_import(cli: Cli, tmp_path: Path) -> None:
    """runner = "tensorrt": TensorRT missing, or its bindings built for numpy 1.x under numpy 2 (what JetPack 6's
    do, faked by a module that fails as they fail), is a failed check naming the cause; a TensorRT that imports
    (the fake GPU's) passes."""
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data"), "EDGE_APP_MODEL_RUNNER": "tensorrt"}
    abi = tmp_path / "abi" / "tensorrt"
    abi.mkdir(parents=True)
    (abi / "__init__.py").write_text(
        "import sys\n"
        "sys.stderr.write('A module that was compiled using NumPy 1.x cannot be run in NumPy 2.2.6 as it may crash.')\n"
        "raise ImportError('numpy.core.multiarray failed to import')\n"
    )
    broken = cli("check", env={**env, "PYTHONPATH": str(abi.parent)})
    assert broken.returncode == 1, broken.stdout
    (line,) = [line for line in broken.stdout.splitlines() if "TensorRT" in line]
    assert line.startswith("FAIL  TensorRT: expected (runner tensorrt) but TensorRT's Python bindings were built ")
    assert "install the Jetson kit again (it carries numpy<2)" in line
    absent = cli("check", env=env)
    (line,) = [line for line in absent.stdout.splitlines() if "TensorRT" in line]
    assert line.startswith("FAIL  TensorRT: expected (runner tensorrt) but ") and "--system-site-packages" in line
    fake = cli("check", env={**env, "PYTHONPATH": str(ROOT / "tests" / "fake_gpu")})
    assert "ok    TensorRT: imports (runner tensorrt)" in fake.stdout.splitlines()


@pytest.mark.unit
def test_tensorrt_is_expected_under_auto_only_on_a_jetson(tmp_path: Path) -> None:
    from edge_app.config import Settings
    from edge_app.ops.check import tensorrt_check

    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64\n")
    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data")}})
    ((level, name, detail),) = [(c.level, c.name, c.detail) for c in tensorrt_check(settings, release)]
    assert (level, name) == ("FAIL", "TensorRT") and detail.startswith("expected (runner auto on Jetson Linux R36.3.0)")
    assert list(tensorrt_check(settings, tmp_path / "absent")) == [], "auto off a Jetson: ONNX Runtime is expected"
    onnx = settings.model_copy(update={"model": settings.model.model_copy(update={"runner": "onnxruntime"})})
    assert list(tensorrt_check(onnx, release)) == []


def test_check_reads_the_database_the_service_would_open(cli: Cli, tmp_path: Path) -> None:
    """A database written by a newer edge-app (an older kit installed over its data) fails the check, in the
    words the service would refuse with, instead of at the service's start."""
    import sqlite3

    from edge_app.store import Store
    from edge_app.store.schema import VERSION

    env = {"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data"), "EDGE_APP_SERVER_PORT": "1"}
    assert "database:" not in cli("check", env=env).stdout, "no database yet: nothing to read"
    Store(tmp_path / "data").close()
    assert "ok    database: " in cli("check", env=env).stdout
    db = sqlite3.connect(tmp_path / "data" / "edge-app.sqlite3")
    db.execute(f"PRAGMA user_version = {VERSION + 1}")
    db.close()
    lan = cli("check", env={**env, "EDGE_APP_SERVER_HOST": "0.0.0.0"})
    lines = lan.stdout.splitlines()
    assert lan.returncode == 1 and "Traceback" not in lan.stderr
    assert any(line.startswith("FAIL  database: ") and "written by a newer edge-app" in line for line in lines)
    assert "FAIL  users: the database cannot be read (see database above)" in lines


def test_check_wants_tls_and_a_user_before_the_clinic_s_wi_fi(cli: Cli, tmp_path: Path) -> None:
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data"), "EDGE_APP_SERVER_PORT": "1"}
    assert "ok    tablet access: this machine only (127.0.0.1)" in cli("check", env=env).stdout
    lan = {**env, "EDGE_APP_SERVER_HOST": "0.0.0.0"}
    lines = cli("check", env=lan).stdout.splitlines()
    assert any(line.startswith("FAIL  TLS: no certificate at") and "edge-app tls init" in line for line in lines)
    assert "FAIL  users: no data directory yet, so no user: `edge-app user add NAME --role admin`" in lines
    assert cli("tls", "init", env=lan).returncode == 0
    lines = cli("check", env=lan).stdout.splitlines()
    assert any(line.startswith("ok    TLS: ") for line in lines)
    assert "FAIL  users: no one can log in: `edge-app user add NAME --role admin`" in lines
    add = subprocess.run(
        [*EDGE_APP, "user", "add", "boss", "--role", "admin", "--password-stdin"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        env={**os.environ, **lan},
    )
    assert add.returncode == 0, add.stderr
    assert "ok    users: 1 active account(s)" in cli("check", env=lan).stdout.splitlines()


def test_a_command_without_config_reads_the_file_edge_app_config_names(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    named = tmp_path / "site.toml"
    named.write_text('[model]\nrunner = "nonsense"\n')
    refused = cli("check", env={"EDGE_APP_CONFIG": str(named), "EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "d")})
    assert refused.returncode == 2 and "runner" in refused.stderr, refused.stderr


def _machine_config(tmp_path: Path, dicom_port: int) -> Path:
    """An appliance's configuration as /etc/edge-app/edge-app.toml may hold it: the DICOM receiver on a fixed port."""
    config = tmp_path / "machine.toml"
    config.write_text(f'[server]\nlanguage = "fr"\n\n[capture.dicom]\nenabled = true\nport = {dicom_port}\n')
    assert load_settings(config, environ={}).capture.dicom.port == dicom_port, "the file would enable it"
    return config


def test_a_launched_test_server_reads_none_of_the_machines_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shell names a running appliance's configuration (and sets one of its keys): a server the tests start
    reads neither, and leaves the appliance's DICOM port alone."""
    dicom_port = free_port()
    monkeypatch.setenv("EDGE_APP_CONFIG", str(_machine_config(tmp_path, dicom_port)))
    monkeypatch.setenv("EDGE_APP_CAPTURE_DICOM_ENABLED", "true")
    monkeypatch.setenv("EDGE_APP_CAPTURE_DICOM_PORT", str(dicom_port))
    port = free_port()
    proc = launch(tmp_path / "data", port)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", dicom_port), timeout=5).close()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as page:
            assert '<html lang="en"' in page.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "DICOM receiver" not in server_log(tmp_path / "data", port).read_text()


def test_the_test_command_reads_none_of_the_machines_configuration(tmp_path: Path) -> None:
    """pytest itself run from a shell naming an appliance's configuration (and setting its keys): every test's
    settings, and every process a test starts, read the session's own file (conftest's `own_config`)."""
    machine = _machine_config(tmp_path, free_port())
    env = {**os.environ, "EDGE_APP_CONFIG": str(machine), "EDGE_APP_SERVER_LANGUAGE": "fr"}
    test = "tests/test_config.py::test_the_tests_read_a_configuration_of_their_own"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}", test],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr

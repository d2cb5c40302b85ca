"""Shared fixtures: real data locations, settings on a temporary data directory, the Flask app and client."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from ood_samples import NIH, ROOT, dicom_dirs  # where the real data lies: said once, there

from edge_app.bundles.bundle import load_bundle, sha256_file, write_manifest
from edge_app.config import EMBEDDED_BUNDLE, Settings
from edge_app.service import Role, Service
from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles
from edge_app.web import create_app, services

_SCRIPT = Path(sys.executable).parent / "edge-app"
EDGE_APP = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "edge_app.cli.main"]


@pytest.fixture(scope="session")
def nih() -> Path:
    """The NIH ChestX-ray14 sample (621 PNGs), or a skip saying where it was looked for."""
    if not (NIH / "images").is_dir():
        pytest.skip(f"real NIH data not found at {NIH} (set EDGE_SHARED_DATA to the shared/data folder)")
    return NIH


@pytest.fixture(scope="session")
def nih_png(nih: Path) -> Path:
    return nih / "images" / "00000075_000.png"


def cr_and_us_files() -> list[Path]:
    """Every CR and US image (with pixel data and a SOP Instance UID) among the real DICOM files."""
    import pydicom

    found = []
    for folder in dicom_dirs():
        for path in sorted(folder.glob("*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            if ds.get("Modality") in ("CR", "US") and ds.get("SOPInstanceUID") and "PixelData" in pydicom.dcmread(path):
                found.append(path)
    return found


def dicom_file(name: str) -> Path:
    """A real DICOM file by name, found without pydicom's network download; skips if not installed."""
    for folder in dicom_dirs():
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"DICOM test file {name} not installed (pip install pydicom-data)")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data")}, "model": {"threads": 1}})


@pytest.fixture
def service() -> Iterator[Callable[..., Service]]:
    """Start a `Service` for settings (or a mapping shaped like the TOML file) and a role; each one started is
    stopped after the test, the last first."""
    with contextlib.ExitStack() as running:

        def start(config: Settings | Mapping[str, Any], role: Role = "all") -> Service:
            settings = config if isinstance(config, Settings) else Settings.model_validate(dict(config))
            return running.enter_context(Service(settings, role))

        yield start


@pytest.fixture
def app(service: Callable[..., Service], settings: Settings) -> Flask:
    """The web app of a started service on the `settings` fixture's data directory."""
    app = create_app(service(settings))
    app.config.update(TESTING=True)
    return app


def _api_client(app: Flask) -> FlaskClient:
    secret = services.get_from(app).accounts.create_token(
        f"tests-{os.urandom(4).hex()}", parse_roles("clinician,technician")
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A client of the API holding a Bearer token with the roles clinician and technician."""
    return _api_client(app)


@pytest.fixture
def api_client() -> Callable[[Flask], FlaskClient]:
    """`client` for an app a test made itself."""
    return _api_client


@pytest.fixture
def anonymous(app: Flask) -> FlaskClient:
    """A client with no session and no token."""
    return app.test_client()


class AuthActions:
    """Log a browser-like client in and out through the real login form (flaskr's `auth` fixture)."""

    PASSWORD = "a long enough password"

    def __init__(self, app: Flask, client: FlaskClient) -> None:
        self.app, self.client = app, client

    def user(self, name: str, roles: str, language: str = "en") -> str:
        accounts = services.get_from(self.app).accounts
        try:
            accounts.user(name)
        except Exception:
            accounts.add_user(name, parse_roles(roles), self.PASSWORD, language)
        return name

    def csrf(self, path: str = "/login") -> str:
        page = self.client.get(path).get_data(as_text=True)
        marker = 'name="csrf_token" type="hidden" value="'
        start = page.index(marker) + len(marker)
        return page[start : page.index('"', start)]

    def login(self, roles: str = "clinician", name: str | None = None, password: str | None = None) -> Any:
        name = self.user(name or roles.replace(",", "-"), roles)
        token = self.csrf("/login")
        return self.client.post(
            "/login", data={"csrf_token": token, "username": name, "password": password or self.PASSWORD}
        )

    def logout(self) -> Any:
        return self.client.post("/logout", data={"csrf_token": self.csrf("/")})


@pytest.fixture
def browser(app: Flask) -> FlaskClient:
    """A client that keeps cookies, like the tablet's browser (no token)."""
    return app.test_client()


@pytest.fixture
def auth(app: Flask, browser: FlaskClient) -> AuthActions:
    return AuthActions(app, browser)


def _api_headers(data_dir: Path, roles: str = "clinician,technician") -> dict[str, str]:
    """A Bearer token made in a data directory, as `edge-app token create` does, as request headers."""
    store = Store(data_dir)
    try:
        secret = Accounts(store).create_token(f"tests-{os.urandom(4).hex()}", parse_roles(roles))
    finally:
        store.close()
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def api_headers(tmp_path: Path) -> dict[str, str]:
    """The headers of a token for the `server` fixture's data directory."""
    return _api_headers(tmp_path / "data")


@pytest.fixture
def token_for() -> Callable[..., dict[str, str]]:
    """Headers of a new token for any data directory (a server started with `launch`)."""
    return _api_headers


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `edge-app` with arguments (and extra environment variables) as a person would; capture its output."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*EDGE_APP, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
        )

    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(data_dir: Path, port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "EDGE_APP_STORAGE_DATA_DIR": str(data_dir),
        "EDGE_APP_SERVER_PORT": str(port),
        **(extra_env or {}),
    }
    proc = subprocess.Popen([*EDGE_APP, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"server did not start: {proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.1)


@pytest.fixture
def launch() -> Callable[..., subprocess.Popen[str]]:
    """Start a real `edge-app serve` on a data directory and port (and extra environment variables); returns
    once it answers /health."""
    return _launch


@pytest.fixture
def free_port() -> int:
    return _free_port()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A real `edge-app serve` on a free localhost port; yields the API's base URL."""
    port = _free_port()
    proc = _launch(tmp_path / "data", port)
    yield f"http://127.0.0.1:{port}/api/v1"
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def broken_bundle(tmp_path: Path) -> Path:
    """The reference bundle with its logits reshaped to (-1, 7) at the end of the graph: it loads and activates
    (the batch is symbolic), and ONNX Runtime fails on every image (5 scores do not make rows of 7)."""
    import hashlib
    import json
    import shutil

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from edge_app.config import EMBEDDED_BUNDLE

    bundle = Path(shutil.copytree(EMBEDDED_BUNDLE, tmp_path / "broken"))
    model = onnx.load(bundle / "model.onnx")
    for node in model.graph.node:
        node.output[:] = ["logits_raw" if o == "logits" else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 7], dtype=np.int64), "seven"))
    model.graph.node.append(helper.make_node("Reshape", ["logits_raw", "seven"], ["logits"]))
    onnx.save(model, bundle / "model.onnx")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def bundle_variant(tmp_path: Path, version: str, change: Callable[[Path], None] | None = None) -> Path:
    """The reference bundle as another version (so another sha256), optionally with a file changed and
    re-listed (a bundle whose hashes hold but whose content is wrong)."""
    folder = tmp_path / f"bundle-{version}"
    shutil.copytree(EMBEDDED_BUNDLE, folder)
    manifest = load_bundle(folder).manifest
    files = dict(manifest.files)
    if change is not None:
        change(folder)
        files = {name: sha256_file(folder / name) for name in files}
    write_manifest(folder, manifest.model_copy(update={"version": version, "files": files}))
    load_bundle(folder)
    return folder


def noisy_j2k(side: int) -> bytes:
    """A side x side 12-bit JPEG 2000 CR of noise: seconds to decode at 2500 and more, a slow model's stand-in."""
    import io

    import numpy as np
    import pydicom
    from openjpeg.utils import encode_array
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    pixels = np.random.default_rng(0).integers(0, 4096, (side, side)).astype(np.uint16)
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([encode_array(pixels, use_mct=False)])
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


# A Keras export's spec (an Xception-style CXR classifier: NHWC 150x150x3, x/127.5 - 1, softmax of two classes).
KERAS_SPEC = """
name = "keras-style"
version = "0.1"
task = "multiclass"
labels = ["normal", "abnormal"]
thresholds = 0.5
input = { name = "input_1", layout = "NHWC", height = 150, width = 150, channels = 3 }
preprocessing = { geometry = "stretch", interpolation = "nearest", scale = [-1.0, 1.0] }
output = { name = "probs", activation = "none" }
"""

FAKE_GPU = ROOT / "tests" / "fake_gpu"
_FAKE_MODULES = ("tensorrt", "cuda")


def _drop_fake_modules() -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in _FAKE_MODULES]:
        del sys.modules[name]


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """This machine as a Jetson Orin Nano with TensorRT 10.3: tests/fake_gpu's `tensorrt` and `cuda-python`,
    computing with ONNX Runtime, first on sys.path and on PYTHONPATH (engine builds run in a child process).
    Yields monkeypatch, to set the fake's knobs (FAKE_* environment variables, tests/fake_gpu/README.md)."""
    for knob in [k for k in os.environ if k.startswith("FAKE_")]:
        monkeypatch.delenv(knob)
    monkeypatch.syspath_prepend(str(FAKE_GPU))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_GPU), os.environ.get("PYTHONPATH")])))
    _drop_fake_modules()
    yield monkeypatch
    _drop_fake_modules()


def tritonserver_dist() -> Path:
    """The tritonserver that nvidia-pytriton's wheel carries (x86_64, with the Python backend), or a skip."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")  # found, not imported: its own dependencies are not installed
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("no Triton server: pip install --no-deps nvidia-pytriton==0.7.0 (see the README's test command)")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not (dist / "python_backend_stubs" / version / "triton_python_backend_stub").is_file():
        pytest.skip(f"nvidia-pytriton has no Python backend stub for Python {version}")
    return dist


class TritonServer:
    """A real Triton server on 127.0.0.1 serving `repository`, its Python backend running in this environment."""

    def __init__(self, repository: Path, work: Path, *extra: str) -> None:
        dist = tritonserver_dist()
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        backend = work / "backends" / "python"
        backend.mkdir(parents=True, exist_ok=True)
        for item in (dist / "backends" / "python").iterdir():
            if not (backend / item.name).exists():
                (backend / item.name).symlink_to(item)
        stub = backend / "triton_python_backend_stub"
        if not stub.exists():
            stub.symlink_to(dist / "python_backend_stubs" / version / "triton_python_backend_stub")
        self.command = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={work / 'backends'}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--allow-metrics=false",
            "--exit-timeout-secs=5",
            *extra,
        ]
        libs = [str(dist.parent.parent / "nvidia_pytriton.libs"), str(Path(sys.base_prefix) / "lib")]
        self.env = {
            **os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(libs),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        self.log = work / "tritonserver.log"
        self.port = self.grpc_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None = None) -> TritonServer:
        self.port = port or _free_port()
        self.grpc_port = _free_port()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.command, f"--http-port={self.port}", f"--grpc-port={self.grpc_port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"tritonserver did not become ready:\n{self.log.read_text()[-3000:]}")

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def dicom_bytes(ds: Any) -> bytes:
    """A data set, as edited by a test, written as a DICOM file's bytes."""
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.fixture(scope="session")
def formulas() -> Callable[[str], list[str]]:
    """The cells of a CSV text that a spreadsheet would run as formulas, whichever of , ; TAB it splits cells by
    (a French spreadsheet splits on ';'), with or without reading quotes."""

    def run(text: str) -> list[str]:
        return [
            cell
            for separator in ",;\t"
            for quoting in (csv.QUOTE_MINIMAL, csv.QUOTE_NONE)
            for row in csv.reader(io.StringIO(text, newline=""), delimiter=separator, quoting=quoting)
            for cell in row
            if cell.lstrip()[:1] in ("=", "+", "-", "@")
        ]

    return run

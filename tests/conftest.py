"""The fixtures: real data, settings on a temporary data directory, the Flask app and its clients, real servers
(the helpers they use, and that tests import, are in tests/support/)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.config import CONFIG_ENV, EMBEDDED_BUNDLE, ENV_PREFIX, Settings
from edge_app.service import Role, Service
from edge_app.store.accounts import parse_roles
from edge_app.web import create_app, services
from support import processes
from support.data import NIH, ROOT
from support.tools import EDGE_APP
from support.web import AuthActions, axe_core_script, token_headers


@pytest.fixture(scope="session", autouse=True)
def own_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test, and every process it starts, reads an empty configuration file of the session's own: never
    the machine's (/etc/edge-app/edge-app.toml, $EDGE_APP_CONFIG's file) nor the shell's EDGE_APP_* settings, so
    that the tests neither read nor disturb an appliance running here."""
    config = tmp_path_factory.mktemp("config") / "edge-app.toml"
    config.write_text("# the tests' own: the defaults\n")
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            patch.delenv(name)
        patch.setenv(CONFIG_ENV, str(config))
        yield config


@pytest.fixture(scope="session")
def nih() -> Path:
    """The NIH ChestX-ray14 sample (621 PNGs), or a skip saying where it was looked for."""
    if not (NIH / "images").is_dir():
        pytest.skip(f"real NIH data not found at {NIH} (set EDGE_SHARED_DATA to the shared/data folder)")
    return NIH


@pytest.fixture(scope="session")
def nih_png(nih: Path) -> Path:
    return nih / "images" / "00000075_000.png"


@pytest.fixture(scope="session")
def axe() -> Path:
    """axe-core's axe.min.js, from npm's package packed into tests/artifacts/npm/ (or $EDGE_TEST_ARTIFACTS), or a
    skip saying why (no npm, no registry)."""
    return axe_core_script(Path(os.environ.get("EDGE_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "npm")


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Validated settings from overrides by section, `make_settings(model={"runner": "triton"}, server={...})`,
    each section merged into the defaults here: the data directory tmp_path/data and one inference thread."""

    def make(**sections: dict[str, Any]) -> Settings:
        raw: dict[str, dict[str, Any]] = {"storage": {"data_dir": str(tmp_path / "data")}, "model": {"threads": 1}}
        for section, values in sections.items():
            raw[section] = {**raw.get(section, {}), **values}
        return Settings.model_validate(raw)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


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


@pytest.fixture
def browser(app: Flask) -> FlaskClient:
    """A client that keeps cookies, like the tablet's browser (no token)."""
    return app.test_client()


@pytest.fixture
def auth(app: Flask, browser: FlaskClient) -> AuthActions:
    return AuthActions(app, browser)


@pytest.fixture
def api_headers(tmp_path: Path) -> dict[str, str]:
    """The headers of a token for the `server` fixture's data directory."""
    return token_headers(tmp_path / "data")


@pytest.fixture
def token_for() -> Callable[..., dict[str, str]]:
    """Headers of a new token for any data directory (a server started with `launch`)."""
    return token_headers


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `edge-app` with arguments (and extra environment variables) as a person would; capture its output."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*EDGE_APP, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
        )

    return run


@pytest.fixture
def launch() -> Callable[..., subprocess.Popen[str]]:
    """Start a real `edge-app serve` on a data directory and port (and extra environment variables); returns
    once it answers /health."""
    return processes.launch


@pytest.fixture
def free_port() -> int:
    return processes.free_port()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A real `edge-app serve` on a free localhost port; yields the API's base URL."""
    port = processes.free_port()
    proc = processes.launch(tmp_path / "data", port)
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

"""Bundles served by a district hub's Triton Inference Server: the exported repository, and `runner = "triton"`
against a real tritonserver (nvidia-pytriton's binary, its Python backend running the bundle with ONNX Runtime)
on 127.0.0.1, including the hub going away and coming back."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from converters.triton_export import ExportOptions, export_triton
from edge_app.bundles.bundle import Bundle, load_bundle
from edge_app.config import EMBEDDED_BUNDLE, Settings, TritonSettings
from edge_app.imaging.header import generated_header
from edge_app.outputs.documents import Origin, findings_report, source_header
from edge_app.runtime.onnx import OnnxRuntimeRunner
from edge_app.runtime.triton import TritonRunner
from edge_app.service import Service
from edge_app.store.rows import StoredFinding
from edge_app.web import create_app
from support.bundles import bundle_variant
from support.processes import TritonServer
from support.tools import EDGE_CONVERT
from support.web import AuthActions

pytestmark = pytest.mark.system


def _batch(bundle: Bundle, n: int, seed: int) -> np.ndarray:
    m = bundle.manifest.input
    return np.random.default_rng(seed).random((n, m.channels, m.height, m.width), dtype=np.float32)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> list[Bundle]:
    tmp = tmp_path_factory.mktemp("bundles")
    return [load_bundle(EMBEDDED_BUNDLE), load_bundle(bundle_variant(tmp, "1.2.0"))]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, versions: list[Bundle]) -> Iterator[TritonServer]:
    repository = tmp_path_factory.mktemp("repository")
    export_triton(versions, repository, ExportOptions(form="python", max_batch=4))
    server = TritonServer(repository, tmp_path_factory.mktemp("triton")).start()
    yield server
    server.stop()


def test_the_repository_matches_the_manifest_one_version_per_bundle(tmp_path: Path, versions: list[Bundle]) -> None:
    repo = tmp_path / "repo"
    written = export_triton(versions, repo, ExportOptions())
    assert [(p.parent.name, p.name) for p in written] == [("cxr-reference", "1"), ("cxr-reference", "2")]
    config = (repo / "cxr-reference" / "config.pbtxt").read_text()
    m = versions[0].manifest
    assert 'name: "cxr-reference"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n' in config
    image = '  {\n    name: "image"\n    data_type: TYPE_FP32\n    dims: [ 1, 64, 64 ]\n  }'
    assert f"input [\n{image}\n]" in config
    assert '    name: "logits"\n    data_type: TYPE_FP32\n    dims: [ 5 ]' in config, "one score per label"
    assert '    name: "cam"\n    data_type: TYPE_FP32\n    dims: [ 5, 4, 4 ]' in config
    assert len(m.labels) == 5 and m.input.name == "image" and m.output.heatmap == "cam"
    assert "dynamic_batching {\n  max_queue_delay_microseconds: 2000\n}" in config
    assert "version_policy: { all { } }" in config, "every bundle version served, not only the latest"
    for number, bundle in zip(("1", "2"), versions, strict=True):
        folder = repo / "cxr-reference" / number
        assert load_bundle(folder).sha256 == bundle.sha256, "the bundle travels whole: manifest, hashes"
        assert (
            f'\\"{number}\\": {{\\"sha256\\": \\"{bundle.sha256}\\", \\"version\\": \\"{bundle.manifest.version}\\"}}'
            in config
        )

    # Added to later: the same bundle keeps its number, a new one takes the next.
    third = load_bundle(bundle_variant(tmp_path, "1.3.0"))
    written = export_triton([versions[1], third], repo, ExportOptions())
    assert [p.name for p in written] == ["2", "3"]
    assert sorted(p.name for p in (repo / "cxr-reference").iterdir() if p.is_dir()) == ["1", "2", "3"]
    assert f'\\"3\\": {{\\"sha256\\": \\"{third.sha256}\\"' in (repo / "cxr-reference" / "config.pbtxt").read_text()

    # The onnx and python forms differ only in how the hub runs the model: the python one is loaded by a real
    # Triton below, so the onnx one is checked by it too.
    export_triton(versions, tmp_path / "py", ExportOptions(form="python"))
    python = (tmp_path / "py" / "cxr-reference" / "config.pbtxt").read_text()
    onnx = re.sub(r'platform: "onnxruntime_onnx"\n|default_model_filename: "model.onnx"\n', "", config)
    onnx_two = re.sub(r'\\"3\\": \{[^}]*\}, ?', "", onnx).replace('}, \\"2', '}, \\"2')
    assert python.replace('backend: "python"\n', "") == re.sub(r", \\\"3\\\": \{[^}]*\}", "", onnx_two)


def test_export_refusals(tmp_path: Path, versions: list[Bundle]) -> None:
    proc = subprocess.run(
        [*EDGE_CONVERT, "export-triton", str(EMBEDDED_BUNDLE), "-o", str(tmp_path / "r"), "--form", "tensorrt"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "the tensorrt form needs --engines" in proc.stderr
    proc = subprocess.run(
        [
            *EDGE_CONVERT,
            "export-triton",
            str(EMBEDDED_BUNDLE),
            "-o",
            str(tmp_path / "r"),
            "--form",
            "tensorrt",
            "--engines",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no engine of cxr-reference 1.1.1 in" in proc.stderr
    (tmp_path / "foreign" / "cxr-reference").mkdir(parents=True)
    (tmp_path / "foreign" / "cxr-reference" / "config.pbtxt").write_text('name: "cxr-reference"\n')
    proc = subprocess.run(
        [*EDGE_CONVERT, "export-triton", str(EMBEDDED_BUNDLE), "-o", str(tmp_path / "foreign")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "did not write" in proc.stderr
    (tmp_path / "a file").write_text("x")
    proc = subprocess.run(
        [*EDGE_CONVERT, "export-triton", str(EMBEDDED_BUNDLE), "-o", str(tmp_path / "a file")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "is a file; give a folder for the model repository" in proc.stderr


def test_the_tensorrt_form_takes_the_hubs_engine(tmp_path: Path, versions: list[Bundle]) -> None:
    from edge_app.runtime.engines.cache import EngineCache, Platform

    cache = EngineCache(tmp_path / "engines")
    cache.store(versions[0], Platform("10.3.0", "NVIDIA L4", "8.9"), b"plan for the L4", {"max_batch": 8})
    cache.store(versions[0], Platform("10.3.0", "NVIDIA A100", "8.0"), b"plan for the A100", {"max_batch": 8})
    with pytest.raises(Exception, match=r"several GPUs \(NVIDIA A100, NVIDIA L4\): choose one with --gpu"):
        export_triton(versions[:1], tmp_path / "r", ExportOptions(form="tensorrt", engines=cache.root))
    with pytest.raises(Exception, match=r"takes batches up to 8, --max-batch is 16"):
        export_triton(
            versions[:1],
            tmp_path / "r",
            ExportOptions(form="tensorrt", engines=cache.root, gpu="NVIDIA L4", max_batch=16),
        )
    cache.store(versions[0], Platform("10.3.0", "NVIDIA L4", "8.9", dla_core=0), b"a DLA plan", {"max_batch": 8})
    options = ExportOptions(form="tensorrt", engines=cache.root, gpu="NVIDIA L4")
    (folder,) = export_triton(versions[:1], tmp_path / "r", options)
    assert folder == tmp_path / "r" / "cxr-reference_tensorrt" / "1"
    assert (folder / "engine.plan").read_bytes() == b"plan for the L4"
    config = (folder.parent / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and 'default_model_filename: "engine.plan"' in config
    assert "kind: KIND_GPU" in config


def test_a_real_triton_runs_the_bundle_version_this_box_has(hub: TritonServer, versions: list[Bundle]) -> None:
    import tritonclient.http as http

    config = http.InferenceServerClient(hub.url).get_model_config("cxr-reference")
    assert config["max_batch_size"] == 4 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("image", "TYPE_FP32", [1, 64, 64])]
    bundle = versions[1]
    settings = TritonSettings(url=hub.url)
    with (
        TritonRunner(bundle, settings, OnnxRuntimeRunner(bundle, threads=1)) as runner,
        OnnxRuntimeRunner(bundle, threads=1) as local,
    ):
        assert runner.problem is None
        for n in (1, 4, 7):  # 7: in two requests of at most the hub's max_batch_size
            got, want = runner.infer(_batch(bundle, n, n)), local.infer(_batch(bundle, n, n))
            assert (runner.name, runner.where) == ("triton", hub.url)
            for name in ("logits", "cam"):
                assert got[name].shape == want[name].shape and got[name].dtype == np.float32
                assert np.allclose(got[name], want[name], atol=1e-6)


def test_a_bundle_the_hub_does_not_hold_runs_here_and_says_why(
    hub: TritonServer, tmp_path: Path, versions: list[Bundle]
) -> None:
    other = load_bundle(bundle_variant(tmp_path, "1.9.0"))
    with TritonRunner(other, TritonSettings(url=hub.url), OnnxRuntimeRunner(other, threads=1)) as runner:
        out = runner.infer(_batch(other, 1, 0))
        assert (runner.name, runner.where) == ("onnxruntime", None) and out["logits"].shape == (1, 5)
        assert runner.problem is not None
        assert "the hub's model 'cxr-reference' holds no version of this bundle (1.9.0," in runner.problem
        assert (
            "it holds: 1.1.1 (" in runner.problem and "images are diagnosed on this box (onnxruntime)" in runner.problem
        )


def test_the_hub_going_away_costs_no_study_and_it_is_used_again_when_back(
    tmp_path: Path, versions: list[Bundle]
) -> None:
    repository = tmp_path / "repository"
    export_triton(versions[:1], repository, ExportOptions(form="python"))
    server = TritonServer(repository, tmp_path / "triton").start()
    bundle = versions[0]
    settings = TritonSettings(url=server.url, retry_s=0.5, timeout_s=2)
    try:
        with TritonRunner(bundle, settings, OnnxRuntimeRunner(bundle, threads=1)) as runner:
            runner.infer(_batch(bundle, 1, 0))
            assert runner.name == "triton"
            server.stop()
            started = time.monotonic()
            out = runner.infer(_batch(bundle, 2, 1))
            assert time.monotonic() - started < 5, "never held for long"
            assert runner.name == "onnxruntime" and out["logits"].shape == (2, 5)
            assert runner.problem is not None and runner.problem.startswith(f"the Triton hub {server.url} cannot run")
            server.start(server.port)
            time.sleep(0.6)
            runner.infer(_batch(bundle, 1, 2))
            assert (runner.name, runner.problem) == ("triton", None)
    finally:
        server.stop()


def test_the_service_on_a_hub_names_it_in_the_study_and_the_sr_and_health_says_when_it_is_away(
    tmp_path: Path,
    versions: list[Bundle],
    api_client: Callable[[Flask], FlaskClient],
    nih_png: Path,
    service: Callable[..., Service],
    make_settings: Callable[..., Settings],
) -> None:
    repository = tmp_path / "repository"
    export_triton(versions[:1], repository, ExportOptions(form="python"))
    server = TritonServer(repository, tmp_path / "triton").start()
    settings = make_settings(model={"runner": "triton", "triton": {"url": server.url, "retry_s": 60}})
    app = create_app(service(settings))
    client = api_client(app)
    try:
        result = client.post("/api/v1/studies?filename=a.png", data=nih_png.read_bytes()).get_json()
        model = result["images"][0]["results"][0]["model"]
        assert (model["runner"], model["server"]) == ("triton", server.url)
        assert _sr_runner(result) == f"runner triton at {server.url}"
        assert client.get("/api/v1/health").get_json()["status"] == "ok"

        server.stop()
        result = client.post("/api/v1/studies?filename=b.png", data=nih_png.read_bytes() + b"\0").get_json()
        model = result["images"][0]["results"][0]["model"]
        assert model["runner"] == "onnxruntime" and "server" not in model, "diagnosed here, at once"
        health = client.get("/api/v1/health").get_json()
        assert health["status"] == "degraded"
        assert health["problem"].startswith(f"the Triton hub {server.url} cannot run cxr-reference")
        tablet = AuthActions(app, app.test_client())
        tablet.login("technician")
        page = tablet.client.get("/devices").get_data(as_text=True)
        assert f"the Triton hub {server.url} cannot run cxr-reference" in page, "the devices page says so too"
    finally:
        server.stop()


def _sr_runner(result: dict[str, Any]) -> str:
    """The runner the SR the service would send for this result names among its algorithm's parameters."""
    found = result["images"][0]["results"][0]
    origin = Origin(
        source_header(None, generated_header("png"), ""),
        dt.datetime.now(dt.timezone.utc),
        1,
        found["model"],
        found["bundle_sha256"],
    )
    ds = findings_report(origin, [StoredFinding(**f) for f in found["findings"]], {}, None)
    group = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups()[0]
    parameters = [i.TextValue for i in group[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111002"]
    (runner,) = [p for p in parameters if p.startswith("runner ")]
    return str(runner)


def test_triton_settings_are_checked() -> None:
    with pytest.raises(Exception, match=r'runner = "triton" needs model\.triton\.url'):
        Settings.model_validate({"model": {"runner": "triton"}})
    with pytest.raises(Exception, match="would cross the network in clear"):
        TritonSettings(url="hub.clinic.lan:8000", token="secret")
    TritonSettings(url="hub.clinic.lan:8000", token="secret", ssl=True)
    TritonSettings(url="127.0.0.1:8000", token="secret")


def test_grpc_as_well_as_http(hub: TritonServer, versions: list[Bundle]) -> None:
    bundle = versions[0]
    settings = TritonSettings(url=f"127.0.0.1:{hub.grpc_port}", protocol="grpc")
    with (
        TritonRunner(bundle, settings, OnnxRuntimeRunner(bundle, threads=1)) as runner,
        OnnxRuntimeRunner(bundle, threads=1) as local,
    ):
        got, want = runner.infer(_batch(bundle, 3, 5)), local.infer(_batch(bundle, 3, 5))
        assert (runner.name, runner.problem) == ("triton", None)
        assert np.allclose(got["logits"], want["logits"], atol=1e-6) and np.allclose(got["cam"], want["cam"], atol=1e-6)


class _TlsProxy:
    """TLS in front of a plain TCP port (as a hub's reverse proxy would be): one thread per connection."""

    def __init__(self, target: int, cert: Path, key: Path) -> None:
        import socket
        import ssl
        import threading

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        def serve() -> None:
            while True:
                try:
                    raw, _ = self.listener.accept()
                except OSError:
                    return
                try:
                    client = context.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError):
                    raw.close()
                    continue
                upstream = socket.create_connection(("127.0.0.1", target))
                threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def test_tls_to_the_hub_with_the_clinics_certificate(
    hub: TritonServer, versions: list[Bundle], make_settings: Callable[..., Settings]
) -> None:
    from edge_app.ops.secrets import init_tls

    cert, key, _ = init_tls(make_settings(), ["127.0.0.1"])
    proxy = _TlsProxy(hub.port, cert, key)
    bundle = versions[0]
    try:
        trusted = TritonSettings(url=f"127.0.0.1:{proxy.port}", ssl=True, ca_file=cert)
        with TritonRunner(bundle, trusted, OnnxRuntimeRunner(bundle, threads=1)) as runner:
            runner.infer(_batch(bundle, 1, 0))
            assert (runner.name, runner.problem) == ("triton", None)
        unknown = TritonSettings(url=f"127.0.0.1:{proxy.port}", ssl=True)  # the system's CAs: not the clinic's
        with TritonRunner(bundle, unknown, OnnxRuntimeRunner(bundle, threads=1)) as runner:
            runner.infer(_batch(bundle, 1, 0))
            assert runner.name == "onnxruntime" and runner.problem is not None
            assert "CERTIFICATE_VERIFY_FAILED" in runner.problem
    finally:
        proxy.close()


def test_a_hub_that_asks_for_a_token(tmp_path: Path, versions: list[Bundle]) -> None:
    repository = tmp_path / "repository"
    export_triton(versions[:1], repository, ExportOptions(form="python"))
    restricted = "--http-restricted-api=inference,model-config,metadata:triton-access-token=s3cret"
    server = TritonServer(repository, tmp_path / "triton", restricted).start()
    bundle = versions[0]
    try:
        with TritonRunner(
            bundle, TritonSettings(url=server.url, token="s3cret"), OnnxRuntimeRunner(bundle, threads=1)
        ) as runner:
            runner.infer(_batch(bundle, 1, 0))
            assert (runner.name, runner.problem) == ("triton", None)
        with TritonRunner(bundle, TritonSettings(url=server.url), OnnxRuntimeRunner(bundle, threads=1)) as runner:
            runner.infer(_batch(bundle, 1, 0))
            assert runner.name == "onnxruntime" and runner.problem is not None
            assert "triton-access-token" in runner.problem or "restricted" in runner.problem.lower(), runner.problem
    finally:
        server.stop()


def test_the_hub_model_can_be_named(hub: TritonServer, versions: list[Bundle]) -> None:
    """model.triton.model picks the hub's model (the `<name>_tensorrt` form of an export, say)."""
    bundle = versions[0]
    named = TritonSettings(url=hub.url, model="cxr-reference")
    with TritonRunner(bundle, named, OnnxRuntimeRunner(bundle, threads=1)) as runner:
        runner.infer(_batch(bundle, 1, 0))
        assert (runner.name, runner.problem) == ("triton", None)
    missing = TritonSettings(url=hub.url, model="cxr-reference_tensorrt")
    with TritonRunner(bundle, missing, OnnxRuntimeRunner(bundle, threads=1)) as runner:
        runner.infer(_batch(bundle, 1, 0))
        assert runner.name == "onnxruntime" and runner.problem is not None
        assert "cxr-reference_tensorrt" in runner.problem

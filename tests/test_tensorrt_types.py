"""The TensorRT code type-checked against the TensorRT 10 API (the tensorrt-stubs package), with no TensorRT.

The stubs cannot be used where pip puts them (no py.typed, a few syntax errors): they are copied into a typings
folder and mended (a parameter named `in`, a default `add_scale_nd` lacks), then mypy runs on the TensorRT modules.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.data import ROOT

pytestmark = pytest.mark.integration

TRT_MODULES = [
    "edge_app/runtime/tensorrt.py",
    "edge_app/runtime/engines/build.py",
    "edge_app/runtime/engines/build_process.py",
    "edge_app/runtime/cuda.py",
]


@pytest.fixture(scope="module")
def typings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("tensorrt-stubs not installed (pip install --no-deps tensorrt-stubs; see the README)")
    bindings = Path(next(iter(spec.submodule_search_locations)))
    out = tmp_path_factory.mktemp("typings")
    (out / "tensorrt").mkdir()
    shutil.copy(bindings.parent / "tensorrt" / "__init__.pyi", out / "tensorrt" / "__init__.pyi")
    shutil.copytree(bindings, out / "tensorrt_bindings")
    stub = out / "tensorrt_bindings" / "tensorrt.pyi"
    text = re.sub(r"\bin: ", "in_: ", stub.read_text())  # `in` is a keyword, not a parameter name
    text = re.sub(r"(def add_scale_nd\(.*channel_axis: int)\)", r"\1 = ...)", text)
    stub.write_text(text)
    (out / "tensorrt_libs").mkdir()
    (out / "tensorrt_libs" / "__init__.pyi").write_text("")
    return out


def _mypy(typings: Path, tmp_path: Path, files: list[str]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\npython_version = 3.10\nstrict = True\nplugins = pydantic.mypy\n"
        "[mypy-tensorrt.*,tensorrt_bindings.*]\nignore_errors = True\n"
        "[mypy-cuda.*,tritonclient.*,pydicom.*,onnxruntime.*,PIL.*,tomli]\nignore_missing_imports = True\n"
        "[mypy-edge_app.runtime.engines.build]\ndisallow_subclassing_any = False\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"), *files],
        cwd=ROOT,
        env={"MYPYPATH": str(typings), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_tensorrt_code_matches_the_tensorrt_10_api(typings: Path, tmp_path: Path) -> None:
    proc = _mypy(typings, tmp_path, TRT_MODULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_check_catches_tensorrt_8_calls(typings: Path, tmp_path: Path) -> None:
    old = tmp_path / "old_api.py"
    old.write_text(
        "import tensorrt as trt\n\n\n"
        "def build(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> None:\n"
        "    config.max_workspace_size = 1 << 30\n"
        "    builder.build_engine(network, config)\n"
    )
    proc = _mypy(typings, tmp_path, [str(old)])
    assert proc.returncode == 1
    assert '"IBuilderConfig" has no attribute "max_workspace_size"' in proc.stdout
    assert '"Builder" has no attribute "build_engine"' in proc.stdout

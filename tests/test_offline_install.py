"""The offline install: a kit built where there is a network (here: this machine's package mirror), installed
where there is none (pip --no-index, no pip configuration), then the installed `edge-app` diagnoses an image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.data import ROOT

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_the_kit_installs_with_no_network_and_runs(tmp_path: Path, nih_png: Path) -> None:
    kit, root = tmp_path / "kit", tmp_path / "root"
    built = subprocess.run(
        [str(ROOT / "firmware_config" / "install" / "build-kit.sh"), str(kit)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = {p.name.split("-")[0].lower() for p in (kit / "wheelhouse").glob("*.whl")}
    assert {"edge_clinic_ai", "onnxruntime", "pydicom", "flask", "argon2_cffi", "reportlab"} <= wheels
    base = Path(sys.base_prefix) / "bin" / "python3"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
        "EDGE_ROOT": str(root),
        "EDGE_SYSTEM_SITE": "0",  # a clean venv: what the wheelhouse lacks cannot come from elsewhere
        "PYTHON": str(base),
    }
    old_unit = root / "etc" / "systemd" / "system" / "edge-app.service"  # the one unit of an earlier version
    old_unit.parent.mkdir(parents=True)
    old_unit.write_text("[Service]\nExecStart=/opt/edge-app/.venv/bin/edge-app serve\n")
    installed = subprocess.run(
        [str(kit / "firmware_config" / "install" / "install.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    assert not old_unit.exists(), "an upgrade removes the single unit the two replace"
    for path in (
        "etc/systemd/system/edge-app.target",
        "etc/systemd/system/edge-app-web.service",
        "etc/systemd/system/edge-app-worker.service",
        "etc/systemd/system/edge-app-engine.service",
        "usr/lib/sysusers.d/edge-app.conf",
        "etc/udev/rules.d/99-edge-app.rules",
        "etc/edge-app/edge-app.toml",
        "etc/edge-app/devices/xray-generator.toml",
        "opt/edge-app/firmware_config/jetson/power.sh",
    ):
        assert (root / path).is_file(), path
    exe = root / "opt" / "edge-app" / ".venv" / "bin" / "edge-app"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "EDGE_APP_STORAGE_DATA_DIR": str(tmp_path / "data")}
    run = subprocess.run([str(exe), "diagnose", str(nih_png)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "ok"


def test_the_jetson_kit_carries_a_numpy_jetpacks_tensorrt_accepts(tmp_path: Path) -> None:
    """JetPack 6's TensorRT Python bindings (like its OpenCV) are built against numpy 1.x: the kit for the Jetson
    (aarch64, CPython 3.10) resolves numpy below 2 together with every other requirement (OpenCV, ONNX Runtime and
    cuda-python in versions that accept it)."""
    kit = tmp_path / "kit"
    built = subprocess.run(
        [str(ROOT / "firmware_config" / "install" / "build-kit.sh"), str(kit), "--jetson"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = {p.name.split("-")[0].lower(): p.name for p in (kit / "wheelhouse").glob("*.whl")}
    assert {"numpy", "opencv_python_headless", "onnxruntime", "cuda_python"} <= wheels.keys()
    numpy = wheels["numpy"]
    assert numpy.startswith("numpy-1.") and "cp310" in numpy and "aarch64" in numpy, numpy

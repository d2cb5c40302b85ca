"""PyTorch input to `edge-convert build` (TorchScript, module:factory + state dict). Needs torch: skipped without.

The default test run does not install torch; these run where the `train` extra is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_app.bundles.bundle import load_bundle
from support.tools import EDGE_CONVERT

pytestmark = pytest.mark.system

torch = pytest.importorskip("torch", reason="PyTorch input needs torch (pip install '.[train]')")

NET = """
import torch
from torch import nn


def make() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )
"""
SPEC = """
name = "torch-small"
version = "0.1"
task = "multilabel"
labels = ["Cardiomegaly", "Effusion"]
input = { name = "img", layout = "NCHW", height = 96, width = 96, channels = 1 }
preprocessing = { geometry = "center_crop", interpolation = "bilinear", scale = [-1024, 1024] }
output = { name = "logits", activation = "sigmoid" }
tolerance = { min_speedup = 0.0 }
"""


@pytest.fixture
def small_net(tmp_path: Path) -> Path:
    (tmp_path / "smallnet.py").write_text(NET)
    (tmp_path / "spec.toml").write_text(SPEC)
    return tmp_path


def _convert(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([*EDGE_CONVERT, *args, "-q"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_torchscript_file(small_net: Path, nih: Path) -> None:
    sys.path.insert(0, str(small_net))
    try:
        import smallnet
    finally:
        sys.path.pop(0)
    traced = torch.jit.trace(smallnet.make().eval(), torch.zeros(1, 1, 96, 96))
    traced.save(str(small_net / "net.pt"))
    proc = _convert(
        small_net,
        "build",
        "net.pt",
        "--spec",
        "spec.toml",
        "--calibration",
        str(nih / "images"),
        "--validation",
        str(nih / "images"),
        "-o",
        "bundle",
    )
    assert proc.returncode == 0, proc.stderr
    bundle = load_bundle(small_net / "bundle")
    assert bundle.manifest.output.heatmap == "cam", "nn.Linear after AdaptiveAvgPool2d: a CAM was added"
    assert bundle.manifest.fidelity is not None and bundle.manifest.fidelity["decision_agreement"] == 1.0
    assert "PyTorch exported" in bundle.manifest.provenance.method


def test_module_factory_with_state_dict(small_net: Path, nih: Path) -> None:
    sys.path.insert(0, str(small_net))
    try:
        import smallnet
    finally:
        sys.path.pop(0)
    torch.save(smallnet.make().state_dict(), small_net / "weights.pt")
    proc = _convert(
        small_net,
        "build",
        "smallnet:make",
        "--weights",
        "weights.pt",
        "--spec",
        "spec.toml",
        "--precision",
        "fp16",
        "--calibration",
        str(nih / "images"),
        "--validation",
        str(nih / "images"),
        "-o",
        "bundle",
    )
    assert proc.returncode == 0, proc.stderr
    assert load_bundle(small_net / "bundle").manifest.precision == "fp16"
    missing = _convert(
        small_net, "build", "smallnet:make", "--spec", "spec.toml", "--calibration", str(nih / "images"), "-o", "other"
    )
    assert missing.returncode == 2 and "needs --weights" in missing.stderr

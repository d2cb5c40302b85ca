"""Benchmark: INT8 fidelity on a Keras-style depthwise-separable CXR classifier, as a real export looks.

    python tests/benchmarks/int8_depthwise.py [--work DIR] [--epochs 12]     (needs the train extra: torch)

Trains a small Xception/MobileNet-style network (depthwise-separable blocks, 150x150x3 NHWC, x/127.5 - 1,
softmax over normal / abnormal) on the NIH train split, and exports it the way Keras on the torch backend does
through `torch.onnx.export(dynamo=True, external_data=True)`: every BatchNorm as Sub/Mul/Add with [1, C, 1, 1]
constants after its Conv, an NHWC/NCHW Transpose pair around every Conv, the head a ReduceMean over H and W.
Then `edge-convert build` makes INT8 bundles of it (calibrated on the train split, gated on the 200 test
images) with each calibration and target, and prints decision agreement, max difference, CPU speed-up, whether
the gate passed and how many nodes the fallback kept in FP32. The reference model's figures:
tests/benchmarks/int8_speed.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "nih-cxr14-sample"
sys.path.insert(0, str(ROOT / "tests"))
from support.bundles import KERAS_SPEC  # noqa: E402


def nih_folders(work: Path) -> tuple[Path, Path, dict[str, bool]]:
    """The NIH sample's train and test splits as folders of links under `work`, and each image's label (abnormal)."""
    split = {r["image"]: r["split"] for r in csv.DictReader((DATA / "split.csv").open())}
    labels = {r["Image Index"]: r["No Finding"] == "0" for r in csv.DictReader((DATA / "labels.csv").open())}
    for which in ("train", "test"):
        folder = work / which
        folder.mkdir(parents=True, exist_ok=True)
        for name, part in split.items():
            if part == which and not (folder / name).exists():
                (folder / name).symlink_to(DATA / "images" / name)
    return work / "train", work / "test", labels


def keras_bn(bn: Any) -> Any:
    """A trained BatchNorm2d as Keras on torch exports it: Sub, Mul, Add with [1, C, 1, 1] constants."""
    import torch
    from torch import nn

    class KerasBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = bn.num_features
            self.register_buffer("mean", bn.running_mean.detach().reshape(1, c, 1, 1).clone())
            scale = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
            self.register_buffer("scale", scale.reshape(1, c, 1, 1).clone())
            self.register_buffer("beta", bn.bias.detach().reshape(1, c, 1, 1).clone())

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return (t - self.mean) * self.scale + self.beta

    return KerasBN()


def fit(net: Any, opt: Any, x: Any, y: Any, epochs: int, batch_size: int) -> None:
    """`opt` on class-weighted NLL with horizontal flips, printing each epoch's loss and time."""
    import time

    import torch
    from torch import nn

    weight = torch.tensor([1.0, float((y == 0).sum()) / float((y == 1).sum())])
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x))
        total, t0 = 0.0, time.monotonic()
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            batch = x[idx]
            if torch.rand(1).item() < 0.5:
                batch = torch.flip(batch, dims=[2])
            loss = nn.functional.nll_loss(torch.log(net(batch) + 1e-7), y[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(x):.3f} ({time.monotonic() - t0:.0f} s)", flush=True)
    net.eval()


def export_keras_style(net: Any, block: type, x: Any, work: Path) -> Path:
    """Each `block`'s BatchNorm as Keras on torch exports it, then torch.onnx dynamo with external data."""
    import torch

    for module in net.modules():
        if isinstance(module, block):
            module.bn = keras_bn(module.bn)
    model = work / "model.onnx"
    torch.onnx.export(
        net,
        (x[:2],),
        str(model),
        dynamo=True,
        external_data=True,
        input_names=["input_1"],
        output_names=["probs"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    return model


def train_and_export(work: Path, epochs: int) -> Path:
    import torch
    from torch import nn

    from converters.images import load_images
    from converters.spec import load_spec

    torch.manual_seed(0)
    spec_path = work / "spec.toml"
    spec_path.write_text(KERAS_SPEC.replace('"keras-style"', '"ds-keras-style"'))
    spec = load_spec(spec_path)
    train_dir, _, labels = nih_folders(work)
    images = load_images(train_dir, spec.input, spec.preprocessing)
    x = torch.from_numpy(images.tensors)
    y = torch.tensor([int(labels[n]) for n in images.names])

    class Block(nn.Module):
        """A conv + BatchNorm + ReLU in NHWC, transposed around the conv as a Keras export is."""

        def __init__(self, cin: int, cout: int, k: int, stride: int = 1, depthwise: bool = False) -> None:
            super().__init__()
            groups = cin if depthwise else 1
            self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
            self.bn: nn.Module = nn.BatchNorm2d(cout)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            t = t.permute(0, 3, 1, 2)
            t = torch.relu(self.bn(self.conv(t)))
            return t.permute(0, 2, 3, 1)

    def separable(cin: int, cout: int) -> list[nn.Module]:
        return [Block(cin, cin, 3, depthwise=True), Block(cin, cout, 1)]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                Block(3, 16, 3, stride=2),
                *separable(16, 32),
                Block(32, 32, 3, stride=2, depthwise=True),
                *separable(32, 64),
                Block(64, 64, 3, stride=2, depthwise=True),
                *separable(64, 96),
                Block(96, 96, 3, stride=2, depthwise=True),
                *separable(96, 128),
            )
            self.fc = nn.Linear(128, 2)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            t = self.body(t).mean(dim=(1, 2))
            return torch.softmax(self.fc(t), dim=1)

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    fit(net, opt, x, y, epochs, 32)
    return export_keras_style(net, Block, x, work)


def build(work: Path, model: Path, spec: Path, name: str, extra: str, train: Path, test: Path) -> dict[str, object]:
    spec_text = spec.read_text() + extra
    variant = work / f"spec-{name}.toml"
    variant.write_text(spec_text)
    out = work / f"bundle-{name}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "converters.cli",
            "build",
            str(model),
            "--spec",
            str(variant),
            "--precision",
            "int8",
            "--calibration",
            str(train),
            "--validation",
            str(test),
            "-o",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode == 0:
        return dict(json.loads((out / "manifest.json").read_text())["fidelity"], passed=True)
    if proc.returncode == 1 and "{" in proc.stdout:
        return dict(json.loads(proc.stdout[proc.stdout.index("{") :]))
    raise SystemExit(f"{name}: edge-convert exited {proc.returncode}:\n{proc.stderr[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/int8-depthwise"))
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "model.onnx"
    if not model.exists():
        model = train_and_export(args.work, args.epochs)
    spec = args.work / "spec.toml"
    variants = {
        "tensorrt-minmax-try1": 'calibration = { method = "minmax", max_fallback_rounds = 0 }\n',
        "onnxruntime-minmax-try1": (
            'calibration = { method = "minmax", target = "onnxruntime", max_fallback_rounds = 0 }\n'
        ),
        "tensorrt-minmax": 'calibration = { method = "minmax", target = "tensorrt" }\n',
        "tensorrt-percentile": 'calibration = { method = "percentile", target = "tensorrt" }\n',
        "onnxruntime-minmax": 'calibration = { method = "minmax", target = "onnxruntime" }\n',
        "onnxruntime-percentile": 'calibration = { method = "percentile", target = "onnxruntime" }\n',
    }
    print(f"{'variant':<24} {'agreement':>9} {'max diff':>9} {'speed-up':>9}  gate")
    for name, extra in variants.items():
        r = build(args.work, model, spec, name, extra, args.work / "train", args.work / "test")
        kept = len(r.get("nodes_kept_fp32", []))
        speedup = r.get("speedup_batch1", np.nan)
        print(
            f"{name:<24} {r['decision_agreement']:>9.3f} {r['max_abs_diff']:>9.3f} {speedup:>8.2f}x"
            f"  {'passed' if r['passed'] else 'refused'} ({kept} node(s) kept FP32)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

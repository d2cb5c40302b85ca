"""PyTorch to ONNX: a TorchScript file, or `package.module:factory` plus a state dict (needs torch: the `train` extra).

The exported graph (opset 17, batch dimension dynamic) then goes through the same build steps as any ONNX model.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from converters.errors import ConversionError, ModelError
from edge_app.bundles.manifest import InputSpec, OutputSpec

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")
OPSET = 17


def is_pytorch(model: str) -> bool:
    return model.endswith(TORCHSCRIPT_SUFFIXES) or (":" in model and not Path(model).exists())


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ConversionError("PyTorch input needs torch: pip install 'edge-clinic-ai[train]'") from None
    return torch


def load_module(model: str, weights: Path | None) -> Any:
    """A TorchScript file, or a module built by `package.module:factory` with its state dict loaded."""
    torch = _torch()
    if model.endswith(TORCHSCRIPT_SUFFIXES) and Path(model).is_file():
        try:
            return torch.jit.load(model, map_location="cpu").eval()
        except Exception as exc:
            raise ModelError(f"{model}: not a loadable TorchScript file ({exc})") from None
    module_name, _, factory_name = model.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"{model}: cannot find the factory ({exc})") from None
    net = factory()
    if weights is None:
        raise ConversionError(f"{model} needs --weights (a state dict saved with torch.save)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:
        raise ModelError(f"{weights}: cannot be loaded into {model} ({exc})") from None
    return net.eval()


def export(net: Any, spec: InputSpec, output: OutputSpec, path: Path) -> None:
    """Export to ONNX with the spec's input name and output names and a dynamic batch dimension."""
    torch = _torch()
    dummy = torch.zeros(1, *spec.image_shape)
    with torch.no_grad():
        result = net(dummy)
    n_outputs = len(result) if isinstance(result, (tuple, list)) else 1
    names = [output.name, *([output.heatmap] if output.heatmap else [])]
    names += [f"output_{i}" for i in range(len(names), n_outputs)]
    names = names[:n_outputs]
    try:
        torch.onnx.export(
            net,
            (dummy,),
            str(path),
            input_names=[spec.name],
            output_names=names,
            opset_version=OPSET,
            dynamic_axes={n: {0: "batch"} for n in [spec.name, *names]},
            dynamo=False,
        )
    except Exception as exc:
        raise ModelError(f"torch.onnx.export failed: {exc}") from None

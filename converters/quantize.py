"""Precision conversion: FP16 (FP32 inputs and outputs kept) and static INT8 as a QDQ graph."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from onnxruntime.quantization import CalibrationDataReader

from converters.errors import ModelError
from converters.spec import Calibration

_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def to_fp16(model: Any, keep: list[str] | None = None) -> Any:
    """FP16 weights and compute; inputs and outputs stay FP32, as TensorRT and the manifest expect, and so do the
    `keep` nodes (the input guard's: its distances need FP32's range)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        return convert_float_to_float16(model, keep_io_types=True, node_block_list=keep or None)
    except Exception as exc:
        raise ModelError(f"FP16 conversion failed: {exc}") from None


class _Reader(CalibrationDataReader):
    """Preprocessed tensors handed to onnxruntime's calibrators, one image at a time."""

    def __init__(self, input_name: str, tensors: NDArray[np.generic]) -> None:
        self.input_name = input_name
        self.tensors = tensors
        self.rewind()

    def get_next(self) -> dict[str, NDArray[np.generic]] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter({self.input_name: self.tensors[i : i + 1]} for i in range(len(self.tensors)))


def to_int8(
    fp32_path: Path,
    out_path: Path,
    input_name: str,
    calibration: NDArray[np.generic],
    settings: Calibration,
    exclude: list[str],
    cache: Path | None = None,
) -> None:
    """Static post-training INT8, QDQ format, per-channel symmetric weights, calibrated on real images.

    For TensorRT, activations are symmetric signed INT8 and biases stay float: TensorRT refuses non-zero zero
    points and quantizes biases itself. With a `cache` (a file path), the tensors' ranges are computed once and
    read back on the next call (onnxruntime's own calibration cache), and the pre-processed graph kept beside it: the
    fallback's many candidates differ only in the nodes they keep in FP32, never in their ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    tensorrt = settings.target == "tensorrt"
    with tempfile.TemporaryDirectory() as tmp:
        prepared = cache.with_suffix(".prepared.onnx") if cache is not None else Path(tmp) / "prepared.onnx"
        try:
            if not prepared.exists():  # with a cache, pre-processed once too
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(out_path),
                _Reader(input_name, calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, _METHODS[settings.method]),
                nodes_to_exclude=exclude,
                extra_options={"ActivationSymmetric": tensorrt, "WeightSymmetric": True, "QuantizeBias": not tensorrt},
                calibration_cache_path=cache,
            )
        except Exception as exc:
            raise ModelError(f"INT8 quantization failed: {exc}") from None


def most_sensitive_nodes(
    qdq_path: Path, input_name: str, sample: NDArray[np.generic], count: int, skip: set[str]
) -> list[str]:
    """Nodes of the QDQ graph whose output loses the most signal to its own quantize-dequantize (lowest SQNR of
    the tensor before vs after its Q/DQ pair), worst first.

    Everything is read from the QDQ graph alone: its tensor and node names are the ones `nodes_to_exclude` will
    be matched against, whatever exporter named them (torch.onnx dynamo, Keras, tf2onnx), and a tensor of the
    original graph that pre-processing renamed or fused away is simply not ranked."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory() as tmp:
        augmented = Path(tmp) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(qdq_path), str(augmented))
        activations = collect_activations(str(augmented), _Reader(input_name, sample))
    matching = create_activation_matching(activations)
    nodes = {out: node for node in onnx.load(str(qdq_path)).graph.node for out in node.output}

    def computing(tensor: str) -> str | None:
        """The node that computes `tensor`, looking through the quantizer's own Q/DQ pairs."""
        node = nodes.get(tensor)
        while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node = nodes.get(node.input[0])
        return node.name if node is not None else None

    producer = {name: node for name in matching if (node := computing(name)) is not None}
    ranked = []
    for name, match in matching.items():
        before, after = match.get("pre_qdq"), match.get("post_qdq")
        if before is None or after is None or name not in producer:
            continue
        ranked.append((float(compute_signal_to_quantization_noice_ratio(before, after)), producer[name]))
    ranked.sort(key=lambda item: item[0])
    picked: list[str] = []
    for _, node in ranked:
        if node not in skip and node not in picked:
            picked.append(node)
        if len(picked) == count:
            break
    return picked


def computed_in_int8(qdq_path: Path) -> list[str]:
    """The nodes of the QDQ graph that compute on dequantized inputs: what the fallback could keep in FP32."""
    import onnx

    nodes = onnx.load(str(qdq_path), load_external_data=False).graph.node
    dequantized = {out for node in nodes if node.op_type == "DequantizeLinear" for out in node.output}
    return [
        node.name
        for node in nodes
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and dequantized.intersection(node.input)
    ]


def rank_by_decisions(
    pool: list[str], flips: Callable[[list[str]], tuple[int, float]], keep: list[str]
) -> list[tuple[str, int, float]]:
    """The `pool`'s nodes ordered by the gate's own criterion: the decisions that still flip when that node alone
    (beside `keep`) is left in FP32, fewest first, ties by the mean probability difference, then by the pool's
    order. `flips(excluded)` quantizes with those nodes in FP32 and counts on the validation images."""
    scored = [(node, *flips([*keep, node])) for node in pool]
    order = {node: i for i, node in enumerate(pool)}
    return sorted(scored, key=lambda item: (item[1], item[2], order[item[0]]))


def quantized_nodes(qdq_path: Path) -> int:
    """How many QuantizeLinear nodes the QDQ graph has (0: nothing is computed in INT8)."""
    import onnx

    return sum(node.op_type == "QuantizeLinear" for node in onnx.load(str(qdq_path)).graph.node)

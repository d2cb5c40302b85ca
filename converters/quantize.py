"""Precision conversion: FP16 (FP32 inputs and outputs kept) and static INT8 as a QDQ graph."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from onnxruntime.quantization import CalibrationDataReader

from converters.errors import ModelError
from converters.spec import Calibration

_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
SQNR_SAMPLE = 32  # calibration images on which `per_tensor` compares each tensor's quantization error
# Images whose activations a calibrator holds at once: onnxruntime's keep every activation of what one
# `collect_data` reads (an Xception-sized network's, of a few hundred images, did not fit in 24 GB).
CALIBRATION_CHUNK = 16


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
    activation = QuantType.QInt8 if tensorrt else QuantType.QUInt8
    with tempfile.TemporaryDirectory() as tmp:
        prepared = cache.with_suffix(".prepared.onnx") if cache is not None else Path(tmp) / "prepared.onnx"
        chosen = cache.with_suffix(".ranges.json") if cache is not None else Path(tmp) / "ranges.json"
        try:
            if not prepared.exists():  # with a cache, pre-processed (and bias-corrected) once too
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
                if settings.bias_correction:
                    correct_biases(prepared, input_name, calibration)
            overrides: dict[str, list[dict[str, Any]]] = {}
            if settings.method != "minmax":  # MinMax holds only each tensor's min and max: onnxruntime's own
                if not chosen.exists():
                    ranges = (
                        per_tensor_ranges(prepared, input_name, calibration, activation, tensorrt)
                        if settings.method == "per_tensor"
                        else {
                            name: {
                                "method": settings.method,
                                "rmin": by[settings.method][0],
                                "rmax": by[settings.method][1],
                            }
                            for name, by in method_ranges(prepared, input_name, calibration, [settings.method]).items()
                        }
                    )
                    chosen.write_text(json.dumps(ranges))
                overrides = {  # the quantizer computes with the ranges' own dtype
                    name: [{"rmin": np.float32(r["rmin"]), "rmax": np.float32(r["rmax"])}]
                    for name, r in json.loads(chosen.read_text()).items()
                }
            quantize_static(
                str(prepared),
                str(out_path),
                _Reader(input_name, calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=activation,
                weight_type=QuantType.QInt8,
                # every method but minmax has its ranges in `overrides`: MinMax then only fills the cache's form
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=exclude,
                extra_options={
                    "ActivationSymmetric": tensorrt,
                    "WeightSymmetric": True,
                    "QuantizeBias": not tensorrt,
                    "TensorQuantOverrides": overrides,
                    # no CalibMaxIntermediateOutputs: onnxruntime (to 1.32 at least; its PR #20226 was closed)
                    # drops each full chunk's ranges; MinMax holds only each tensor's min and max anyway
                },
                calibration_cache_path=cache,
            )
        except Exception as exc:
            raise ModelError(f"INT8 quantization failed: {exc}") from None


def per_tensor_ranges(
    prepared: Path, input_name: str, calibration: NDArray[np.generic], activation: Any, symmetric: bool
) -> dict[str, dict[str, Any]]:
    """Each activation tensor's range from whichever of onnxruntime's MinMax, Entropy and Percentile calibrators
    quantizes that tensor with the least error (highest SQNR) on the first SQNR_SAMPLE calibration images, in the
    form the quantizer will use (`activation` type, symmetric or not).

    onnxruntime computes each method's ranges (its calibrators, as quantize_static would) and takes per-tensor
    ranges (`TensorQuantOverrides`' rmin/rmax), but chooses no method per tensor: that choice is made here."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    ranges = method_ranges(prepared, input_name, calibration, list(_METHODS))
    qmin, qmax = get_qmin_qmax_for_qType(activation.tensor_type, symmetric=symmetric)
    error = {name: dict.fromkeys(methods, 0.0) for name, methods in ranges.items()}
    signal = dict.fromkeys(ranges, 0.0)
    for values in _activations(prepared, input_name, calibration[:SQNR_SAMPLE], set(ranges)):
        for name, x in values.items():
            x = x.astype(np.float64)
            signal[name] += float(np.square(x).sum())
            for method, (low, high) in ranges[name].items():
                zero, scale = compute_scale_zp(np.float32(low), np.float32(high), qmin, qmax, symmetric)
                q = np.clip(np.round(x / float(scale)) + float(zero), float(qmin), float(qmax))
                error[name][method] += float(np.square(x - (q - float(zero)) * float(scale)).sum())
    chosen = {}
    for name, methods in ranges.items():
        best = min(methods, key=lambda m: (error[name][m], list(_METHODS).index(m)))
        sqnr = 10 * np.log10(max(signal[name], 1e-30) / max(error[name][best], 1e-30))
        chosen[name] = {"method": best, "rmin": methods[best][0], "rmax": methods[best][1], "sqnr_db": float(sqnr)}
    return chosen


def method_ranges(
    prepared: Path, input_name: str, calibration: NDArray[np.generic], methods: list[str]
) -> dict[str, dict[str, tuple[float, float]]]:
    """Each activation tensor's range by each of `methods` ("minmax", "entropy", "percentile"): onnxruntime's
    calibrators with their defaults, as quantize_static runs them, but fed CALIBRATION_CHUNK images at a time.
    (Entropy's defaults, 128 bins for 128 quantized levels, search no threshold: its range is minmax's. A search on
    2048 bins, as TensorRT's calibrator makes it, was measured worse: the reference model's outputs off by up to
    5.0 against minmax's 0.13 on NIH images; docs/model-engineer.md.)

    onnxruntime sizes a histogram's bins on the first data it is fed and widens it bin by bin after: chunk by chunk,
    a range would depend on the images' order, and entropy's search would grow with the bins. So each histogram
    is first given its tensor's whole span (MinMax's, computed first, with 0; its bins, not those values), as when
    every image is fed at once; onnxruntime has no option for it, hence its collector made here."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import HistogramCollector, create_calibrator

    ranges: dict[str, dict[str, tuple[float, float]]] = {}
    span: dict[str, tuple[float, float]] = {}
    for method in ["minmax", *(m for m in methods if m != "minmax")]:
        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(
                prepared,
                None,
                str(Path(tmp) / "augmented.onnx"),
                getattr(CalibrationMethod, _METHODS[method]),
            )
            if method != "minmax":
                c = calibrator
                c.collector = HistogramCollector(
                    c.method, c.symmetric, c.num_bins, c.num_quantized_bins, c.percentile, c.scenario
                )
                c.collector.collect(
                    {name: np.array([0.0, *span[name]], np.float32) for name in c.tensors_to_calibrate if name in span}
                )
                for counts, *_ in c.collector.histogram_dict.values():  # the span's bins, not its three values
                    counts[:] = 0
            for start in range(0, len(calibration), CALIBRATION_CHUNK):
                calibrator.collect_data(_Reader(input_name, calibration[start : start + CALIBRATION_CHUNK]))
            for name, data in calibrator.compute_data().items():
                low, high = (float(np.asarray(v).reshape(-1)[0]) for v in data.range_value)
                span.setdefault(name, (low, high))
                if method in methods:
                    ranges.setdefault(name, {})[method] = (low, high)
            del calibrator
    return ranges


def _activations(
    model_path: Path, input_name: str, tensors: NDArray[np.generic], names: set[str]
) -> Iterator[dict[str, NDArray[np.floating]]]:
    """The `names` tensors of the FP32 graph, one image at a time (all of them at once would not fit)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    present = {out.name for out in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in sorted(names - present))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [out.name for out in session.get_outputs() if out.name in names]
    for i in range(len(tensors)):
        yield dict(zip(outputs, session.run(outputs, {input_name: tensors[i : i + 1]}), strict=True))


def correct_biases(prepared: Path, input_name: str, calibration: NDArray[np.generic]) -> int:
    """Bias correction, in place: each Conv's and Gemm's bias less the mean output shift its INT8 weights cause on
    the calibration images (the shift is linear in the weights' error: the layer run with W_int8 - W on its FP32
    input), so that quantization leaves each output channel's mean where it was. Returns the layers corrected.

    The weights are quantized as quantize_static does (onnxruntime's `quantize_data`, per output channel, symmetric
    INT8). Neither onnxruntime's quantization tools nor ModelOpt's ONNX PTQ correct biases, hence this."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.quant_utils import quantize_data

    model = onnx.load(str(prepared))
    weights = {init.name: init for init in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = 1 if node.op_type == "Gemm" and not attrs.get("transB", 0) else 0  # the output channel's axis
        moved = np.moveaxis(w, axis, 0)
        dequantized = np.stack(
            [
                (q.astype(np.float32) - np.float32(zero)) * np.float32(scale)
                for zero, scale, q in (quantize_data(c, onnx.TensorProto.INT8, True) for c in moved)
            ]
        )
        delta = np.moveaxis(dequantized - moved, 0, axis)
        shift = f"{node.output[0]}/int8_shift"  # by output: unique, where a name may be another node's output
        model.graph.initializer.append(numpy_helper.from_array(delta.astype(np.float32), f"{shift}/delta_w"))
        inputs = [node.input[0], f"{shift}/delta_w"]
        model.graph.node.append(helper.make_node(node.op_type, inputs, [shift], name=shift, **attrs))
        layers.append((node, shift, 1 if node.op_type == "Conv" else -1))
    if not layers:
        return 0
    shifts: dict[str, list[NDArray[np.floating]]] = {shift: [] for _, shift, _ in layers}
    names = set(shifts)
    with tempfile.TemporaryDirectory() as tmp:
        augmented = Path(tmp) / "shift.onnx"
        onnx.save(model, str(augmented))
        for values in _activations(augmented, input_name, calibration, names):
            for _, shift, channel in layers:
                y = values[shift]
                shifts[shift].append(np.moveaxis(y, channel, -1).reshape(-1, y.shape[channel]).mean(axis=0))
    model = onnx.load(str(prepared))
    weights = {init.name: init for init in model.graph.initializer}
    by_output = {node.output[0]: node for node in model.graph.node}
    for original, shift, _ in layers:
        node = by_output[original.output[0]]
        mean_shift = np.mean(shifts[shift], axis=0).astype(np.float32)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        beta = float(attrs.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0
        if len(node.input) > 2 and node.input[2] in weights:
            bias = numpy_helper.to_array(weights[node.input[2]]).astype(np.float32)
            corrected = bias - (mean_shift / beta).reshape(bias.shape) if bias.size == mean_shift.size else None
            if corrected is None:  # a bias broadcast from fewer values cannot take a per-channel correction
                continue
            weights[node.input[2]].CopyFrom(numpy_helper.from_array(corrected, node.input[2]))
        elif len(node.input) == 2:
            name = f"{shift}/bias"
            model.graph.initializer.append(numpy_helper.from_array(-mean_shift / beta, name))
            node.input.append(name)
    onnx.save(model, str(prepared))
    return len(layers)


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

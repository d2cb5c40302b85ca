"""INT8 levers of the conversion spec, each measured on a small graph built here: bias correction and the
calibration method chosen per tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.quantize import per_tensor_ranges, to_int8
from converters.spec import Calibration

pytestmark = pytest.mark.unit


def _depthwise(path: Path, channels: int = 16) -> None:
    """A 3x3 depthwise Conv (9 weights a channel: per-channel INT8 leaves each a visible error), then a Relu."""
    rng = np.random.default_rng(3)
    w = rng.normal(0.0, 1.0, (channels, 1, 3, 3)).astype(np.float32)
    b = np.zeros(channels, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["y"], name="dw", group=channels, pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["y"], ["out"], name="relu"),
        ],
        "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", channels, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _conv_output(model: Path, x: np.ndarray) -> np.ndarray:
    """The Conv's output `y` (before the Relu), per image."""
    m = onnx.load(str(model))
    m.graph.output.extend([onnx.ValueInfoProto(name="y")])
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_bias_correction_brings_each_channels_mean_output_back(tmp_path: Path) -> None:
    """Inputs with a large positive mean turn each channel's weight quantization error into an output shift;
    with `bias_correction` the INT8 graph's per-channel mean output shift is far smaller than without."""
    fp32 = tmp_path / "dw.onnx"
    _depthwise(fp32)
    rng = np.random.default_rng(0)
    calibration = (rng.normal(4.0, 0.5, (24, 16, 8, 8))).astype(np.float32)
    validation = (rng.normal(4.0, 0.5, (8, 16, 8, 8))).astype(np.float32)
    reference = _conv_output(fp32, validation)
    shift = {}
    for correct in (False, True):
        out = tmp_path / f"int8-{correct}.onnx"
        to_int8(fp32, out, "x", calibration, Calibration(bias_correction=correct, method="minmax"), [])
        y = _conv_output(out, validation)
        shift[correct] = float(np.abs((y - reference).mean(axis=(0, 2, 3))).mean())
    assert shift[False] > 1e-3, "the lever has something to correct"
    assert shift[True] < 0.3 * shift[False]


def test_per_tensor_calibration_takes_the_method_with_the_lower_error(tmp_path: Path) -> None:
    """A tensor with one outlier among the calibration images: minmax spends its range on it, so the per-tensor
    choice takes another method and records a higher SQNR than minmax's on that tensor; the graph quantized with
    `per_tensor` keeps that tensor's output closer than minmax's does."""
    fp32 = tmp_path / "dw.onnx"
    _depthwise(fp32)
    rng = np.random.default_rng(1)
    calibration = rng.normal(0.0, 1.0, (200, 16, 8, 8)).astype(np.float32)
    calibration[35, 2, 3, 3] = 400.0  # one outlier (beyond the SQNR sample): minmax takes [-400, 400] for x
    chosen = per_tensor_ranges(fp32, "x", calibration, _int8(), symmetric=True)
    assert chosen["x"]["method"] != "minmax"
    x = calibration[:32].astype(np.float64)
    minmax = 400.0 / 127  # the symmetric INT8 scale minmax gives x
    noise = np.square(x - np.clip(np.round(x / minmax), -127, 127) * minmax).sum()
    assert chosen["x"]["sqnr_db"] > 10 * np.log10(np.square(x).sum() / noise) + 6
    scale = max(abs(chosen["x"]["rmin"]), abs(chosen["x"]["rmax"])) / 127  # the range chosen, quantized as is
    noise = np.square(x - np.clip(np.round(x / scale), -127, 127) * scale).sum()
    assert chosen["x"]["sqnr_db"] == pytest.approx(10 * np.log10(np.square(x).sum() / noise), rel=1e-4)
    validation = rng.normal(0.0, 1.0, (8, 16, 8, 8)).astype(np.float32)
    reference = _conv_output(fp32, validation)
    error = {}
    for method in ("minmax", "per_tensor"):
        out = tmp_path / f"{method}.onnx"
        to_int8(fp32, out, "x", calibration, Calibration(method=method), [])
        error[method] = float(np.abs(_conv_output(out, validation) - reference).mean())
    assert error["per_tensor"] < 0.5 * error["minmax"]


def test_bias_correction_corrects_each_layer_whatever_the_node_names(tmp_path: Path) -> None:
    """A node's name and a tensor's are apart in ONNX: a Conv named as an unnamed node's output (the Relu's "out",
    or the other Conv's "y1") gets the correction it gets under a name of its own, as does the other Conv (layers
    are told apart by their outputs, never by names that may be other nodes' outputs)."""
    from converters.quantize import correct_biases

    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.normal(0.0, 1.0, (4, 4, 3, 3)).astype(np.float32), "w0"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b0"),
        numpy_helper.from_array(rng.normal(0.0, 1.0, (4, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
    ]
    calibration = rng.normal(4.0, 0.5, (8, 4, 8, 8)).astype(np.float32)
    biases = {}
    for names in (("c0", "c1", "relu"), ("out", "c1", ""), ("y1", "", "")):
        graph = helper.make_graph(
            [
                helper.make_node("Conv", ["x", "w0", "b0"], ["y0"], name=names[0], pads=[1, 1, 1, 1]),
                helper.make_node("Conv", ["y0", "w1", "b1"], ["y1"], name=names[1], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", ["y1"], ["out"], name=names[2]),
            ],
            "two",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, 8, 8])],
            inits,
        )
        path = tmp_path / f"{names[0]}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        assert correct_biases(path, "x", calibration) == 2
        corrected = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}
        biases[names[0]] = (corrected["b0"], corrected["b1"])
    assert all(np.abs(b).min() > 0 for b in biases["c0"]), "each Conv's bias is corrected"
    for shared in ("out", "y1"):
        for own, corrected in zip(biases["c0"], biases[shared], strict=True):
            np.testing.assert_array_equal(corrected, own)


def _int8() -> object:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8


def test_calibration_reads_every_chunk_of_images(tmp_path: Path) -> None:
    """Calibrators read the images a chunk at a time (all at once did not fit for an Xception-sized network): a
    wide image past the first chunk still sets the ranges, per tensor (within the SQNR sample, so that clipping it
    is the worse choice) and for minmax (the 100th of 200: onnxruntime's own chunking, CalibMaxIntermediateOutputs,
    would lose it)."""
    from converters.quantize import CALIBRATION_CHUNK, SQNR_SAMPLE

    fp32 = tmp_path / "dw.onnx"
    _depthwise(fp32)
    rng = np.random.default_rng(2)
    calibration = rng.uniform(-1.0, 1.0, (200, 16, 8, 8)).astype(np.float32)
    wide = rng.uniform(-3.0, 3.0, (16, 8, 8)).astype(np.float32)
    assert CALIBRATION_CHUNK < SQNR_SAMPLE - 1
    per_tensor = calibration.copy()
    per_tensor[SQNR_SAMPLE - 1] = wide
    chosen = per_tensor_ranges(fp32, "x", per_tensor, _int8(), symmetric=True)
    assert chosen["x"]["rmax"] > 2.5, chosen["x"]
    calibration[99] = wide
    out = tmp_path / "minmax.onnx"
    to_int8(fp32, out, "x", calibration, Calibration(method="minmax"), [])
    assert _x_scale(out) == pytest.approx(float(np.abs(wide).max()) / 127, rel=1e-3)


def _x_scale(model_path: Path) -> float:
    """The scale of the graph input's QuantizeLinear."""
    model = onnx.load(str(model_path))
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    quantize = next(node for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[0] == "x")
    return float(inits[quantize.input[1]])


@pytest.mark.parametrize(("method", "bins"), [("entropy", 128), ("percentile", 2048)])
def test_each_calibration_method_sets_the_ranges_onnxruntime_makes(tmp_path: Path, method: str, bins: int) -> None:
    """Heavy-tailed values with their widest image last: the method's ranges, computed chunk by chunk, are those
    onnxruntime's own calibrator of that method makes fed every image at once (to a histogram bin; percentile's
    narrower than minmax's), and the quantized graph takes them."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    from converters.quantize import method_ranges

    class AllAtOnce(CalibrationDataReader):
        def __init__(self, tensors: np.ndarray) -> None:
            self.images = iter([{"x": tensors[i : i + 1]} for i in range(len(tensors))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.images, None)

    fp32 = tmp_path / "dw.onnx"
    _depthwise(fp32)
    rng = np.random.default_rng(1)
    calibration = rng.laplace(0.0, 1.0, (200, 16, 8, 8)).astype(np.float32)
    calibration[-1] *= 2.0  # the widest image in the last chunk: a histogram sized on the first would be too narrow
    low, high = method_ranges(fp32, "x", calibration, [method])["x"][method]
    calibrator = create_calibrator(fp32, None, str(tmp_path / "aug.onnx"), getattr(CalibrationMethod, method.title()))
    calibrator.collect_data(AllAtOnce(calibration))
    reference = [float(np.asarray(v).reshape(-1)[0]) for v in calibrator.compute_data()["x"].range_value]
    widest = float(np.abs(calibration).max())
    assert [low, high] == pytest.approx(reference, abs=2 * widest / bins)
    if method == "percentile":  # entropy with onnxruntime's defaults searches no threshold: minmax's range
        assert max(abs(low), abs(high)) < 0.97 * widest, "not minmax's"
    out = tmp_path / f"{method}.onnx"
    to_int8(fp32, out, "x", calibration, Calibration(method=method), [])
    assert _x_scale(out) == pytest.approx(max(abs(low), abs(high)) / 127, rel=1e-3)

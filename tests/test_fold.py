"""Graph cleaning before INT8: scale/shift chains folded into their Conv, Transpose pairs removed, the outputs
unchanged (to float rounding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.fold import cancel_transposes, fold_scale_shift

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)


def _const(name: str, shape: tuple[int, ...], low: float = 0.5, high: float = 1.5) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.uniform(low, high, shape).astype(np.float32), name)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _keras_style() -> onnx.ModelProto:
    """NHWC in; Transpose, Conv, BatchNorm as Sub/Mul/Add, ReLU, Transpose back; a depthwise Conv the same way
    with a Div and a reversed Sub; a bias-free Conv."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t0"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["c1", "mean1"], ["s1"]),
        helper.make_node("Mul", ["s1", "scale1"], ["m1"]),
        helper.make_node("Add", ["m1", "beta1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Transpose", ["r1"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t2", "w2"], ["c2"], pads=[1, 1, 1, 1], group=6),
        helper.make_node("Div", ["c2", "div2"], ["d2"]),
        helper.make_node("Sub", ["shift2", "d2"], ["s2"]),
        helper.make_node("Relu", ["s2"], ["r2"]),
        helper.make_node("Transpose", ["r2"], ["y"], perm=[0, 2, 3, 1]),
    ]
    inits = [
        _const("w1", (6, 4, 3, 3), -1, 1),
        _const("b1", (6,), -1, 1),
        _const("mean1", (1, 6, 1, 1), -1, 1),
        _const("scale1", (1, 6, 1, 1)),
        _const("beta1", (1, 6, 1, 1), -1, 1),
        _const("w2", (6, 1, 3, 3), -1, 1),
        _const("div2", (6, 1, 1)),
        _const("shift2", (), -1, 1),
    ]
    return _model(nodes, inits, ["y"])


def test_batchnorm_chains_and_transpose_pairs_fold_away_exactly() -> None:
    model = _keras_style()
    x = RNG.uniform(-1, 1, (3, 8, 8, 4)).astype(np.float32)
    (before,) = _run(model, x)
    folded, count = fold_scale_shift(onnx.ModelProto.FromString(model.SerializeToString()))
    assert count == 5, "Sub, Mul, Add after the first Conv; Div, reversed Sub after the depthwise one"
    cleaned, removed = cancel_transposes(folded)
    assert removed == 2, "the pair between the two convolutions; the outer two stay"
    ops = [n.op_type for n in cleaned.graph.node]
    assert ops == ["Transpose", "Conv", "Relu", "Conv", "Relu", "Transpose"]
    (after,) = _run(cleaned, x)
    assert np.abs(before - after).max() < 1e-5
    assert {i.name for i in cleaned.graph.initializer} == {
        n.input[i] for n in cleaned.graph.node for i in (1, 2) if n.op_type == "Conv"
    }, "no initializer left unused"


@pytest.mark.parametrize(
    ("case", "shape"),
    [("per last axis (NHWC), not per channel", (6,)), ("read twice", (1, 6, 1, 1)), ("varies in space", (1, 6, 8, 8))],
)
def test_what_is_not_a_per_channel_chain_is_left_alone(case: str, shape: tuple[int, ...]) -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t0"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c1", "k"], ["m1"]),
    ]
    outputs = ["m1"]
    if case == "read twice":
        nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
        outputs.append("r1")
    model = _model(nodes, [_const("w1", (6, 4, 3, 3), -1, 1), _const("k", shape)], outputs)
    _, count = fold_scale_shift(model)
    assert count == 0, case


def test_a_constant_shaped_for_a_2d_conv_is_not_folded_into_a_3d_one() -> None:
    """[1, C, 1, 1] after a Conv3d broadcasts over depth, not over channels: left alone."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1, 1, 1]),
            helper.make_node("Mul", ["c", "k"], ["y"]),
        ],
        "g3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [_const("w", (4, 2, 3, 3, 3), -1, 1), _const("k", (1, 4, 1, 1))],
    )
    _, count = fold_scale_shift(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert count == 0
    per_channel = helper.make_graph(
        list(graph.node),
        "g3",
        list(graph.input),
        list(graph.output),
        [_const("w", (4, 2, 3, 3, 3)), _const("k", (1, 4, 1, 1, 1))],
    )
    _, count = fold_scale_shift(helper.make_model(per_channel, opset_imports=[helper.make_opsetid("", 17)]))
    assert count == 1, "[1, C, 1, 1, 1] is per channel for a Conv3d"


def test_the_float_graph_under_a_qdq_graph(tmp_path: Path) -> None:
    """strip_qdq gives back the float network: weights dequantized, activation Q/DQ pairs gone, outputs those of
    the float model up to the weights' rounding."""
    from converters.fold import strip_qdq
    from converters.graph import load_model, save
    from converters.guard import strip
    from converters.quantize import to_int8
    from converters.spec import Calibration
    from edge_app.config import EMBEDDED_BUNDLE

    calibration = np.load(EMBEDDED_BUNDLE / "reference_inputs.npy")
    qdq = tmp_path / "qdq.onnx"
    plain = tmp_path / "plain.onnx"  # the network alone: the guard's distances are no test of the weights' rounding
    save(strip(load_model(EMBEDDED_BUNDLE / "model.onnx")), plain)
    to_int8(plain, qdq, "image", calibration, Calibration(), [])
    model = onnx.load(str(qdq))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    stripped = strip_qdq(model)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in stripped.graph.node)
    x = calibration[:4]
    session = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # noqa: E731
    float_out = ort.InferenceSession(str(plain)).run(None, {"image": x})
    got = session(stripped).run(None, {"image": x})
    quantized = session(onnx.load(str(qdq))).run(None, {"image": x})
    for f, g, q in zip(float_out, got, quantized, strict=True):
        assert np.abs(f - g).max() <= np.abs(f - q).max(), "nearer the float model than the INT8 one is"
        assert np.abs(f - g).max() < 0.05 * max(1.0, float(np.abs(f).max()))


def test_a_chain_after_the_transpose_to_nhwc_folds_too() -> None:
    """Keras 3 on torch exports BatchNorm after the Transpose back to NHWC: Sub/Mul/Add by [C] or [1, 1, 1, C]
    constants on the last axis (found on keras.applications.Xception exported with torch.onnx dynamo)."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t0"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t0", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Sub", ["t1", "mean"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["m"]),
        helper.make_node("Add", ["m", "beta"], ["y"]),
    ]
    inits = [
        _const("w", (6, 4, 3, 3), -1, 1),
        _const("mean", (6,), -1, 1),
        _const("scale", (1, 1, 1, 6)),
        _const("beta", (1, 1, 1, 6), -1, 1),
    ]
    model = _model(nodes, inits, ["y"])
    x = RNG.uniform(-1, 1, (2, 8, 8, 4)).astype(np.float32)
    (before,) = _run(model, x)
    folded, count = fold_scale_shift(onnx.ModelProto.FromString(model.SerializeToString()))
    assert count == 3 and [n.op_type for n in folded.graph.node] == ["Transpose", "Conv", "Transpose"]
    (after,) = _run(folded, x)
    assert np.abs(before - after).max() < 1e-5
    # On the NHWC side a [1, C, 1, 1] constant is not per channel (it broadcasts over rows): left alone.
    wrong = _model(nodes[:4], [inits[0], _const("mean", (1, 6, 1, 1))], ["s"])
    assert fold_scale_shift(wrong)[1] == 0

"""Heatmaps for heads that are not linear after the pooling: Grad-CAM in the graph for GAP -> dense -> ReLU ->
dense (Keras's head), its spatial mean the score, its weights the score's gradient, NCHW and NHWC alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from converters.build import BuildInputs, Steps, build
from converters.graph import add_cam, add_gradcam
from converters.spec import load_spec
from edge_app.bundles.bundle import load_bundle
from edge_app.runtime import open_runner

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)
W1, B1 = RNG.normal(0, 1, (6, 5)).astype(np.float32), RNG.normal(0, 0.5, 5).astype(np.float32)
W2, B2 = RNG.normal(0, 1, (5, 3)).astype(np.float32), RNG.normal(0, 0.5, 3).astype(np.float32)


def _two_layer(layout: str, gemm: bool) -> onnx.ModelProto:
    """features (6 channels, 4x5) -> mean over H, W -> dense 5 -> ReLU -> dense 3 -> sigmoid."""
    shape = ["batch", 6, 4, 5] if layout == "NCHW" else ["batch", 4, 5, 6]
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    inits = [numpy_helper.from_array(v, k) for k, v in {"w1": W1, "b1": B1, "w2": W2, "b2": B2}.items()]
    nodes = [helper.make_node("ReduceMean", ["f"], ["p"], axes=axes, keepdims=0)]
    if gemm:
        nodes += [helper.make_node("Gemm", ["p", "w1", "b1"], ["z"]), helper.make_node("Relu", ["z"], ["h"])]
        nodes += [helper.make_node("Gemm", ["h", "w2", "b2"], ["s"])]
    else:
        nodes += [helper.make_node("MatMul", ["p", "w1"], ["zm"]), helper.make_node("Add", ["zm", "b1"], ["z"])]
        nodes += [helper.make_node("Relu", ["z"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["sm"])]
        nodes += [helper.make_node("Add", ["sm", "b2"], ["s"])]
    nodes.append(helper.make_node("Sigmoid", ["s"], ["probs"]))
    g = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("gemm", [True, False])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_gradcam_is_the_score_s_gradient_map_whose_mean_is_the_score(layout: str, gemm: bool) -> None:
    model, name = add_gradcam(_two_layer(layout, gemm), "probs")
    assert name == "cam"
    onnx.checker.check_model(model)
    model.graph.output.append(helper.make_tensor_value_info("cam_raw", TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    f = RNG.normal(0, 1, (3, 6, 4, 5) if layout == "NCHW" else (3, 4, 5, 6)).astype(np.float32)
    probs, shown, cam = session.run(["probs", "cam", "cam_raw"], {"f": f})  # cam_raw: in the scores' units
    assert shown.shape == cam.shape == (3, 3, 4, 5)
    assert np.allclose(shown, 1.0 / (1.0 + np.exp(-cam)), atol=1e-6), "through the graph's own sigmoid"
    logits = np.log(probs / (1 - probs))
    assert np.allclose(cam.mean(axis=(2, 3)), logits, atol=1e-4), "the map's spatial mean is the score"
    nchw = f if layout == "NCHW" else f.transpose(0, 3, 1, 2)
    pooled = nchw.mean(axis=(2, 3))
    for n in range(3):
        active = (pooled[n] @ W1 + B1) > 0
        grad = W1 @ (active[:, None] * W2)  # (C, L): d score / d pooled
        expected = np.einsum("chw,cl->lhw", nchw[n], grad)
        expected += (logits[n] - pooled[n] @ grad)[:, None, None]
        assert np.allclose(cam[n], expected, atol=1e-4)


def test_heads_of_other_forms_get_no_gradcam() -> None:
    one_layer = _two_layer("NCHW", True)
    assert add_cam(one_layer, "probs")[1] is None, "dense, ReLU, dense is no GAP + linear head"
    plain = _two_layer("NCHW", True)
    for node in plain.graph.node:  # no ReLU between the two layers
        if node.op_type == "Relu":
            node.op_type = "Sigmoid"
    assert add_gradcam(plain, "probs")[1] is None
    assert add_gradcam(_two_layer("NCHW", True), "nothing")[1] is None


def test_edge_convert_build_gives_a_keras_style_head_its_gradcam(tmp_path: Path) -> None:
    """Conv -> ReLU -> mean over H, W -> dense, ReLU, dense: the bundle gets Grad-CAM as its heatmap output."""
    conv = numpy_helper.from_array(RNG.normal(0, 0.5, (6, 1, 3, 3)).astype(np.float32), "wc")
    model = _two_layer("NCHW", False)
    model.graph.initializer.append(conv)
    model.graph.node.insert(0, helper.make_node("Relu", ["c"], ["f"]))
    model.graph.node.insert(0, helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]))
    del model.graph.input[:]
    model.graph.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 16, 16]))
    path = tmp_path / "keras.onnx"
    onnx.save(model, str(path))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(24):
        Image.fromarray(RNG.integers(0, 256, (32, 32), dtype=np.uint8)).save(images / f"{i}.png")
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'name = "k"\nversion = "1"\ntask = "multilabel"\nlabels = ["a", "b", "c"]\n'
        'input = { name = "x", height = 16, width = 16, channels = 1 }\n'
        'output = { name = "probs", activation = "none" }\n'
    )
    steps = Steps(show=False)
    out, _ = build(BuildInputs(path, load_spec(spec), "fp32", tmp_path / "b", calibration=images), steps)
    assert [note for name, _, note in steps.done if name == "heatmap output"] == ["Grad-CAM 'cam'"]
    bundle = load_bundle(out)
    assert bundle.manifest.output.heatmap == "cam"
    x = RNG.uniform(-1, 1, (2, 1, 16, 16)).astype(np.float32)
    with open_runner(bundle, threads=1) as runner:
        result = runner.infer(x)
    cam = result["cam"]
    assert cam.shape == (2, 3, 16, 16) and (cam >= 0).all() and (cam <= 1).all(), "the graph's sigmoid at each place"
    assert not np.allclose(cam, cam.mean(axis=(2, 3), keepdims=True)), "a map, not a constant"

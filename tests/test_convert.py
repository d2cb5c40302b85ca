"""`edge-convert`: real models through check, simplification, precision conversion and the fidelity gate."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from converters.build import BuildInputs, Steps, build
from converters.errors import ConversionError, FidelityGateFailed, ModelError, SpecError
from converters.spec import Spec, load_spec
from edge_app.bundles.bundle import load_bundle
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.inference.diagnoser import Diagnoser
from edge_app.runtime import open_runner
from support.bundles import KERAS_SPEC
from support.tools import EDGE_CONVERT

pytestmark = pytest.mark.system

REFERENCE = EMBEDDED_BUNDLE / "model.onnx"
_M = load_bundle(EMBEDDED_BUNDLE).manifest
REFERENCE_SPEC = (
    'name = "cxr-reference"\nversion = "1.0.0-{precision}"\ntask = "multilabel"\n'
    f"labels = {list(_M.labels)}\n"
    "thresholds = {{ " + ", ".join(f"{k} = {v}" for k, v in _M.thresholds.items()) + " }}\n"
    'input = {{ name = "image", layout = "NCHW", height = 64, width = 64, channels = 1 }}\n'
    'preprocessing = {{ geometry = "stretch", interpolation = "area", scale = [-1.0, 1.0] }}\n'
    'output = {{ name = "logits", activation = "sigmoid", heatmap = "cam" }}\n'
    'intended_use = {{ modality = ["CR", "DX"], body_part = "CHEST" }}\n'
    "# Speed is a benchmark's business, not a test's.\n"
    "tolerance = {{ {tolerance} }}\n"
    + "".join(
        f'codes.{k} = {{{{ value = "{c.value}", scheme = "{c.scheme}", meaning = "{c.meaning}" }}}}\n'
        for k, c in _M.codes.items()
    )
)
NO_TOLERANCE = "max_abs_diff = 0.0, mean_abs_diff = 0.0, min_agreement = 1.0, min_speedup = 0.0"


@pytest.fixture(scope="module")
def nih_split(nih: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The NIH sample's train and test splits as folders (symbolic links to the real images)."""
    root = tmp_path_factory.mktemp("nih")
    with (nih / "split.csv").open() as fh:
        for row in csv.DictReader(fh):
            folder = root / row["split"]
            folder.mkdir(exist_ok=True)
            (folder / row["image"]).symlink_to(nih / "images" / row["image"])
    return {"train": root / "train", "test": root / "test"}


def reference_spec(tmp_path: Path, precision: str, extra: str = "", tolerance: str = "min_speedup = 0.0") -> Spec:
    path = tmp_path / f"{precision}.toml"
    path.write_text(REFERENCE_SPEC.format(precision=precision, tolerance=tolerance) + extra)
    return load_spec(path)


def test_fp32_bundle_of_a_torch_exported_cnn(nih_split: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    bundle_path, report = build(
        BuildInputs(
            REFERENCE,
            reference_spec(tmp_path, "fp32"),
            "fp32",
            out,
            calibration=nih_split["train"],
            validation=nih_split["test"],
        ),
        Steps(show=False),
    )
    assert report is not None and report["passed"] and report["decision_agreement"] == 1.0
    assert report["max_abs_diff"] < 1e-5
    bundle = load_bundle(bundle_path)
    assert set(bundle.manifest.files) == {"model.onnx", "reference_inputs.npy", "reference_outputs.npy"}
    assert bundle.manifest.output.heatmap == "cam", "the declared heatmap output is kept"
    assert bundle.manifest.provenance.source_sha256 == load_bundle(EMBEDDED_BUNDLE).manifest.files["model.onnx"]
    assert bundle.manifest.fidelity == report
    inputs = np.load(bundle.path / "reference_inputs.npy")
    with open_runner(bundle, threads=1) as runner:
        assert np.allclose(runner.infer(inputs)["logits"], np.load(bundle.path / "reference_outputs.npy"), atol=1e-5)


def test_int8_reference_model_passes_the_gate(nih_split: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "int8"
    spec = reference_spec(tmp_path, "int8")
    bundle_path, report = build(
        BuildInputs(REFERENCE, spec, "int8", out, calibration=nih_split["train"], validation=nih_split["test"]),
        Steps(show=False),
    )
    assert report is not None and report["passed"], report["failures"]
    assert report["n_images"] == 200 and report["decision_agreement"] >= 0.99
    bundle = load_bundle(bundle_path)
    assert bundle.manifest.precision == "int8"
    ops = {n.op_type for n in onnx.load(str(bundle.model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = [
        numpy_helper.to_array(i) for i in onnx.load(str(bundle.model_path)).graph.initializer if "zero_point" in i.name
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points), "symmetric signed INT8"
    diagnosis = Diagnoser(bundle, open_runner(bundle, threads=1)).diagnose(next(nih_split["test"].iterdir()))
    assert diagnosis.status == "ok" and diagnosis.model["precision"] == "int8"


def test_broken_calibration_is_refused_and_writes_nothing(nih_split: dict[str, Path], tmp_path: Path) -> None:
    black = _noise_pngs(tmp_path / "calibration", 24, (512, 512), "L", top=4)  # all but black
    out = tmp_path / "int8"
    spec = reference_spec(tmp_path, "int8", "calibration = { max_fallback_rounds = 1 }\n")
    with pytest.raises(FidelityGateFailed) as info:
        build(
            BuildInputs(REFERENCE, spec, "int8", out, calibration=black, validation=nih_split["test"]),
            Steps(show=False),
        )
    report = info.value.report
    assert not report["passed"] and report["failures"]
    assert len(report["nodes_kept_fp32"]) == report["fallback"]["budget"] > 0, "one try, the whole budget kept"
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".int8")], "no half-written bundle"


def _nhwc_model(path: Path, external: bool) -> None:
    """A small Keras-style NHWC classifier (batch fixed at 1), weights optionally in an external file."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv_w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "conv_b")
    fc = numpy_helper.from_array(rng.normal(0, 1.0, (8, 2)).astype(np.float32), "fc_w")
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc_w"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [1, 150, 150, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2])],
        [w, b, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )


NHWC_SPEC = KERAS_SPEC


def test_fp16_of_an_nhwc_model_with_external_data(nih_split: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "src" / "keras.onnx"
    model.parent.mkdir()
    _nhwc_model(model, external=True)
    assert (model.parent / "weights.bin").stat().st_size > 0
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(NHWC_SPEC)
    bundle_path, report = build(
        BuildInputs(
            model,
            load_spec(spec_path),
            "fp16",
            tmp_path / "b",
            calibration=nih_split["train"],
            validation=nih_split["test"],
        ),
        Steps(show=False),
    )
    assert report is not None and report["passed"] and report["max_abs_diff"] < 0.01
    bundle = load_bundle(bundle_path)
    assert set(bundle.manifest.files) == {"model.onnx", "reference_inputs.npy", "reference_outputs.npy"}
    converted = onnx.load(str(bundle.model_path))
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT, "FP32 input kept"
    assert any(i.data_type == TensorProto.FLOAT16 for i in converted.graph.initializer), "FP16 weights"
    assert converted.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert bundle.manifest.output.heatmap == "cam", "GAP + linear head: a class activation map was added"
    x = np.random.default_rng(1).uniform(-1, 1, (3, 150, 150, 3)).astype(np.float32)
    with open_runner(bundle, threads=1) as runner:
        out = runner.infer(x)
    assert out["probs"].shape == (3, 2) and out["cam"].shape == (3, 2, 75, 75)
    # The graph ends in Softmax and the spec says "none": the map goes through the same Softmax, across the
    # labels at each place (tests/test_heatmaps.py checks the map before it, whose spatial mean is the score).
    assert np.allclose(out["cam"].sum(axis=1), 1.0, atol=1e-5) and (out["cam"] >= 0).all()


def test_model_errors_are_plain(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(NHWC_SPEC)
    spec = load_spec(spec_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not protobuf" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        build(BuildInputs(junk, spec, "fp32", tmp_path / "o", calibration=tmp_path), Steps(show=False))
    old = tmp_path / "old.onnx"
    _nhwc_model(old, external=False)
    m = onnx.load(str(old))
    m.opset_import[0].version = 11
    onnx.save(m, str(old))
    with pytest.raises(ModelError, match="uses opset 11; export it with opset 13 or later"):
        build(BuildInputs(old, spec, "fp32", tmp_path / "o", calibration=tmp_path), Steps(show=False))
    good = tmp_path / "good.onnx"
    _nhwc_model(good, external=False)
    wrong = spec.model_copy(update={"input": spec.input.model_copy(update={"name": "pixels"})})
    with pytest.raises(ModelError, match="no input 'pixels'; its inputs are input_1"):
        build(BuildInputs(good, wrong, "fp32", tmp_path / "o", calibration=tmp_path), Steps(show=False))
    with pytest.raises(ConversionError, match="int8 needs --validation"):
        build(BuildInputs(good, spec, "int8", tmp_path / "o"), Steps(show=False))
    with pytest.raises(ConversionError, match="fp16 needs --validation images: the fidelity gate is not optional"):
        build(BuildInputs(good, spec, "fp16", tmp_path / "o"), Steps(show=False))
    assert not (tmp_path / "o").exists()


def test_spec_errors_are_plain(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(NHWC_SPEC.replace('layout = "NHWC"', 'layout = "HWC"'))
    with pytest.raises(SpecError, match=r"input.layout"):
        load_spec(bad)


def test_validate_command_reports_as_json(nih: Path, nih_split: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "b"
    build(
        BuildInputs(
            REFERENCE,
            reference_spec(tmp_path, "fp16"),
            "fp16",
            out,
            calibration=nih_split["train"],
            validation=nih_split["test"],
        ),
        Steps(show=False),
    )
    proc = subprocess.run(
        [
            *EDGE_CONVERT,
            "validate",
            str(out),
            "--reference",
            str(REFERENCE),
            "--data",
            str(nih_split["test"]),
            "--labels",
            str(nih / "labels.csv"),
            "--file-column",
            "Image Index",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n_images"] == 200 and report["decision_agreement"] >= 0.99
    assert report["max_abs_diff"] >= report["mean_abs_diff"] >= 0.0
    per = report["per_label"]
    assert "auc_reference" not in per["Abnormal"], "no 'Abnormal' column in the NIH labels"
    assert per["Emphysema"]["auc_reference"] == pytest.approx(
        _M.metrics["test_split"]["Emphysema"]["test_auc"], abs=0.002
    )
    assert abs(per["Emphysema"]["auc_candidate"] - per["Emphysema"]["auc_reference"]) < 0.01


def test_documented_spec_examples_are_valid(tmp_path: Path) -> None:
    """The four worked SPEC.toml examples in docs/model-engineer.md parse and validate as written."""
    import re

    from support.data import ROOT

    text = (ROOT / "docs" / "model-engineer.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "name =" in b]
    assert len(blocks) == 4
    styles = set()
    for i, block in enumerate(blocks):
        path = tmp_path / f"{i}.toml"
        path.write_text(block)
        spec = load_spec(path)
        styles.add((spec.input.layout, spec.preprocessing.intensity, spec.preprocessing.scale))
    assert len(styles) == 4


def test_cam_is_added_to_a_gemm_head(tmp_path: Path) -> None:
    """The torch.nn.Linear form (Gemm, transB=1, bias) after GlobalAveragePool gets an exact class activation map."""
    import onnxruntime as ort

    from converters.graph import add_cam, save

    _nchw_model(tmp_path / "src.onnx", channels=1, size=16)
    model, cam = add_cam(onnx.load(str(tmp_path / "src.onnx")), "logits")
    assert cam == "cam"
    save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(2).normal(size=(2, 1, 16, 16)).astype(np.float32)
    logits, maps = ort.InferenceSession(str(tmp_path / "m.onnx")).run(["logits", "cam"], {"input": x})
    assert maps.shape == (2, 2, 8, 8)
    assert np.allclose(maps.mean(axis=(2, 3)), logits, atol=1e-5)
    assert add_cam(model, "cam")[1] is None, "a map's output is not a GAP + linear head"


def _nchw_model(path: Path, channels: int, size: int) -> None:
    """A small NCHW classifier (GAP + Gemm head), batch dynamic, opset 13."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, channels, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 1, (2, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 1, 2).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["f"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["f"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["h"]),
        helper.make_node("Gemm", ["h", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "nchw",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.mark.parametrize(
    ("channels", "preprocessing"),
    [
        (
            3,
            '{ geometry = "center_crop", crop_fraction = 0.875, mean = [0.485, 0.456, 0.406], '
            "std = [0.229, 0.224, 0.225] }",
        ),
        (1, '{ intensity = "minmax", geometry = "stretch", scale = [0, 1] }'),
    ],
    ids=["imagenet", "monai"],
)
def test_imagenet_and_monai_styles(
    nih_split: dict[str, Path], tmp_path: Path, channels: int, preprocessing: str
) -> None:
    model = tmp_path / "m.onnx"
    _nchw_model(model, channels, 96)
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(
        'name = "s"\nversion = "1"\ntask = "multilabel"\nlabels = ["a", "b"]\n'
        f'input = {{ name = "input", layout = "NCHW", height = 96, width = 96, channels = {channels} }}\n'
        f'preprocessing = {preprocessing}\noutput = {{ name = "logits", activation = "sigmoid" }}\n'
    )
    bundle_path, report = build(
        BuildInputs(
            model,
            load_spec(spec_path),
            "fp16",
            tmp_path / "b",
            calibration=nih_split["train"],
            validation=nih_split["test"],
        ),
        Steps(show=False),
    )
    assert report is not None and report["passed"] and report["n_images"] == 200
    bundle = load_bundle(bundle_path)
    assert bundle.manifest.output.heatmap == "cam"
    diagnosis = Diagnoser(bundle, open_runner(bundle, threads=1)).diagnose(next(nih_split["test"].iterdir()))
    assert diagnosis.status in ("ok", "outside")
    assert diagnosis.heatmaps == [], "no --labels: no label validated, nothing positive, no heatmap"


def test_unusable_reference_and_output_are_plain_errors(nih_split: dict[str, Path], tmp_path: Path) -> None:
    from converters.fidelity import predict

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    m = _M
    with pytest.raises(ModelError, match="ONNX Runtime cannot load it"):
        predict(junk, m.input, m.output, len(m.labels), np.zeros((1, 1, 64, 64), np.float32))
    a_file = tmp_path / "bundle"
    a_file.write_text("")
    with pytest.raises(ConversionError, match="is a file; give a new folder"):
        build(BuildInputs(REFERENCE, reference_spec(tmp_path, "fp32"), "fp32", a_file), Steps(show=False))


def test_the_fallback_keeps_the_most_sensitive_nodes_in_fp32(nih_split: dict[str, Path], tmp_path: Path) -> None:
    """The nodes picked are those whose own quantization loses the most signal: the SQNR of each tensor of the
    QDQ graph before vs after its quantize-dequantize pair, lowest first (computed here with numpy)."""
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    from converters import quantize
    from converters.images import load_images
    from converters.quantize import _Reader

    spec = reference_spec(tmp_path, "int8")
    images = load_images(nih_split["train"], spec.input, spec.preprocessing)
    qdq = tmp_path / "qdq.onnx"
    quantize.to_int8(REFERENCE, qdq, "image", images.tensors[:64], spec.calibration, [])
    sample = images.tensors[:16]
    picked = quantize.most_sensitive_nodes(qdq, "image", sample, 3, set())

    augmented = tmp_path / "aq.onnx"
    modify_model_output_intermediate_tensors(str(qdq), str(augmented))
    acts = collect_activations(str(augmented), _Reader("image", sample))
    graph = onnx.load(str(qdq)).graph
    producer = {out: node.name for node in graph.node for out in node.output}
    quantized = {node.input[0]: node.output[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    dequantized = {node.input[0]: node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    sqnr: dict[str, float] = {}
    for tensor, q in quantized.items():
        if tensor not in producer or tensor not in acts or dequantized.get(q) not in acts:
            continue
        before = np.concatenate([a.ravel() for a in acts[tensor]])
        after = np.concatenate([a.ravel() for a in acts[dequantized[q]]])
        noise = np.sum((before - after) ** 2)
        value = 10 * np.log10(np.sum(before**2) / noise) if noise else np.inf
        sqnr[producer[tensor]] = min(sqnr.get(producer[tensor], np.inf), value)
    worst = sorted(sqnr, key=lambda node: sqnr[node])
    assert len(picked) == 3 and picked == worst[:3]
    assert max(sqnr[n] for n in picked) <= min(sqnr[n] for n in worst[3:])
    again = quantize.most_sensitive_nodes(qdq, "image", sample, 2, set(picked[:1]))
    assert again == worst[1:3], "nodes already kept in FP32 are skipped"


def test_a_tensor_quantized_twice_is_ranked_as_the_node_that_computed_it(tmp_path: Path) -> None:
    """A QDQ graph where A's output goes through a fine Q/DQ pair, then a coarse one, before B: the coarse pair's
    input is the first pair's DequantizeLinear output, and its loss (the worst) is A's, looked for through the
    first pair; B's (between the two pairs') comes next."""
    from converters import quantize

    def pair(tensor: str, scale: float) -> tuple[list[Any], list[Any]]:
        """`tensor`'s QuantizeLinear and DequantizeLinear (int8, zero point 0), named as onnxruntime names them."""
        s = numpy_helper.from_array(np.float32(scale), f"{tensor}_scale")
        z = helper.make_tensor(f"{tensor}_zero_point", TensorProto.INT8, [], [0])
        q, dq = f"{tensor}_QuantizeLinear_Output", f"{tensor}_DequantizeLinear_Output"
        nodes = [
            helper.make_node("QuantizeLinear", [tensor, s.name, z.name], [q], name=f"{tensor}_Q"),
            helper.make_node("DequantizeLinear", [q, s.name, z.name], [dq], name=f"{tensor}_DQ"),
        ]
        return nodes, [s, z]

    twice = "a_DequantizeLinear_Output"
    pairs = [pair("a", 1 / 127), pair(twice, 0.25), pair("b", 0.03)]  # about 48, 18 and 38 dB on U(-1, 1)
    nodes = [
        helper.make_node("Mul", ["x", "one"], ["a"], name="A"),
        *pairs[0][0],
        *pairs[1][0],
        helper.make_node("Mul", [f"{twice}_DequantizeLinear_Output", "one"], ["b"], name="B"),
        *pairs[2][0],
    ]
    graph = helper.make_graph(
        nodes,
        "twice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("b_DequantizeLinear_Output", TensorProto.FLOAT, ["n", 64])],
        [numpy_helper.from_array(np.float32(1.0), "one"), *(init for _, inits in pairs for init in inits)],
    )
    qdq = tmp_path / "twice.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(qdq))
    sample = np.random.default_rng(0).uniform(-1, 1, (4, 64)).astype(np.float32)
    assert quantize.most_sensitive_nodes(qdq, "x", sample, 2, set()) == ["A", "B"]


EXPORTER_NAMES = {
    # tf2onnx: scoped names with ":0" outputs; Keras 3 on torch through torch.onnx's dynamo exporter: short
    # generated names, one of them "float" (the name that crashed onnxruntime's matching); onnx.helper: plain.
    "tf2onnx": lambda name: f"StatefulPartitionedCall/model/{name}/BiasAdd:0",
    "dynamo": lambda name: {"conv": "convolution", "relu": "float", "gap": "mean", "flat": "view"}.get(name, name),
    "keras": lambda name: f"functional_1/{name}_1/{name.capitalize()}",
}


@pytest.mark.parametrize("exporter", sorted(EXPORTER_NAMES))
def test_the_int8_fallback_works_on_every_exporters_names_and_refuses_with_numbers(
    nih_split: dict[str, Path], tmp_path: Path, exporter: str
) -> None:
    """An INT8 gate that cannot pass (a tolerance of nothing): the fallback ranks and keeps nodes named as that
    exporter names them, then the build is refused with its numbers; edge-convert exits 1, no traceback."""
    path = tmp_path / "model.onnx"
    _nhwc_model(path, external=False)
    model = onnx.load(str(path))
    rename = EXPORTER_NAMES[exporter]
    keep = {"input_1", "probs", "conv_w", "conv_b", "fc_w"}
    for node in model.graph.node:
        node.name = rename(node.output[0])
        node.input[:] = [i if i in keep else rename(i) for i in node.input]
        node.output[:] = [o if o in keep else rename(o) for o in node.output]
    onnx.save(model, str(path))
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(
        NHWC_SPEC + "calibration = { max_fallback_rounds = 2 }\n"
        "tolerance = { max_abs_diff = 0.0, mean_abs_diff = 0.0, min_agreement = 1.0 }\n"
    )
    out = tmp_path / "bundle"
    proc = subprocess.run(
        [
            *EDGE_CONVERT,
            "build",
            str(path),
            "--spec",
            str(spec_path),
            "--precision",
            "int8",
            "-q",
            "--calibration",
            str(nih_split["train"]),
            "--validation",
            str(nih_split["test"]),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "no bundle written" in proc.stderr
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert not report["passed"] and report["failures"]
    assert 0.0 < report["decision_agreement"] <= 1.0 and report["max_abs_diff"] >= 0.0 and report["n_images"] == 200
    assert report["nodes_kept_fp32"], "the fallback ranked and kept nodes"
    computing = {node.name for node in model.graph.node} | {"cam_head", "cam_activation"}  # the heatmap it adds
    assert set(report["nodes_kept_fp32"]) <= computing, "nodes that compute, never the quantizer's own Q/DQ"
    assert not out.exists()


@pytest.mark.parametrize(("opset", "keepdims"), [(13, 0), (18, 0), (18, 1)])
def test_cam_is_added_to_an_nhwc_reduce_mean_head(tmp_path: Path, opset: int, keepdims: int) -> None:
    """The Keras / tf2onnx form: ReduceMean over H and W of an NHWC feature map (its axes an attribute, or an
    input from opset 18), then MatMul + Add. The map is (N, labels, h, w) and its spatial mean is the score."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from converters.graph import add_cam, save

    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3)).astype(np.float32), "dense_w"),
        numpy_helper.from_array(rng.normal(0, 0.5, (3,)).astype(np.float32), "dense_b"),
    ]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([1, 2], np.int64), "hw"))
        mean = helper.make_node("ReduceMean", ["features", "hw"], ["pooled"], keepdims=keepdims)
    else:
        mean = helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[1, 2], keepdims=keepdims)
    nodes = [helper.make_node("Relu", ["input"], ["features"]), mean]
    pooled = "pooled"
    if keepdims:
        inits.append(numpy_helper.from_array(np.array([-1, 4], np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]))
        pooled = "flat"
    nodes += [
        helper.make_node("MatMul", [pooled, "dense_w"], ["scores"]),
        helper.make_node("Add", ["scores", "dense_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 6, 5, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model, cam = add_cam(model, "logits")
    assert cam == "cam"
    save(model, tmp_path / "m.onnx")
    x = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    logits, maps = ort.InferenceSession(str(tmp_path / "m.onnx")).run(["logits", "cam"], {"input": x})
    assert maps.shape == (2, 3, 6, 5), "labels first, then the feature map's rows and columns"
    assert np.allclose(maps.mean(axis=(2, 3)), logits, atol=1e-5)


def _channel_mean_head() -> Any:
    """A head that averages over channels and columns (axes 1 and 3) before its MatMul: no spatial pool."""
    inits = [numpy_helper.from_array(np.ones((5, 2), np.float32), "w")]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[1, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        ],
        "odd",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 5, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_mean_over_channels_is_no_spatial_pool() -> None:
    from converters.graph import add_cam

    assert add_cam(_channel_mean_head(), "logits")[1] is None


# The build's own steps: its fold check, its INT8 rounds and what it records, on small graphs and few images.


@pytest.fixture(scope="module")
def nih_few(nih_split: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """24 calibration and 12 validation images of the NIH sample: enough to run every step quickly (the input guard
    needs 20 to fit)."""
    root = tmp_path_factory.mktemp("few")
    for split, count in (("train", 24), ("test", 12)):
        (root / split).mkdir()
        for image in sorted(nih_split[split].iterdir())[:count]:
            (root / split / image.name).symlink_to(image.resolve())
    return {"train": root / "train", "test": root / "test"}


def _fresh(text: str) -> Any:
    """`text` as a string made at run time, as argparse gives it: never the interned literal of the code."""
    return "".join(list(text))


def _names(steps: Steps) -> list[str]:
    return [name for name, _, _ in steps.done]


def _notes(steps: Steps, name: str) -> list[str]:
    return [note for step, _, note in steps.done if step == name]


def _conv_sub_model(scale: float, shift: float) -> Any:
    """Conv (bias `shift`) then Sub of the same `shift`: folded, the two cancel exactly; as given, the Conv's
    float32 sum is rounded at the magnitude of `shift` first. Outputs of magnitude about `scale`."""
    inits = [
        numpy_helper.from_array(np.full((2, 1, 3, 3), scale / 9, np.float32), "w"),
        numpy_helper.from_array(np.full(2, shift, np.float32), "b"),
        numpy_helper.from_array(np.full((1, 2, 1, 1), shift, np.float32), "c"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Sub", ["conv", "c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("scale", "shift", "kept"),
    [
        (1000.0, 2.0**17, True),  # differences up to 0.0078, the tolerance 1e-4 x 312 = 0.031
        (1000.0, 2.0**20, False),  # up to 0.0625 against 0.031
        (0.5, 2.0**10, True),  # up to 6.1e-5 against 1e-4 (outputs under 1: the tolerance's floor)
        (0.5, 2.0**11, False),  # up to 1.2e-4 against 1e-4
    ],
)
def test_a_fold_is_kept_only_where_it_computes_what_the_graph_did(scale: float, shift: float, kept: bool) -> None:
    """The folded graph is compared with the given one on random inputs, to 1e-4 of the outputs' largest
    magnitude (at least 1e-4): a fold that changes the outputs more is dropped, the given graph kept."""
    from converters.build import _clean
    from edge_app.bundles.manifest import InputSpec

    model = _conv_sub_model(scale, shift)
    cleaned, note = _clean(model, InputSpec(name="x", height=6, width=5))
    if kept:
        assert note == "1 scale/shift node(s) folded into Conv, 0 Transpose node(s) removed"
        assert [n.op_type for n in cleaned.graph.node] == ["Conv"]
    else:
        assert note == "not folded: the folded graph computes otherwise"
        assert cleaned is model and [n.op_type for n in model.graph.node] == ["Conv", "Sub"]


def test_what_the_fold_check_says_of_each_graph() -> None:
    """Nothing to fold; a Transpose pair alone; an NHWC graph (the probe's inputs laid out as the spec says);
    a graph ONNX Runtime cannot run: the given graph is kept and the build goes on."""
    from converters.build import _clean
    from edge_app.bundles.manifest import InputSpec

    nchw = InputSpec(name="x", height=6, width=5)
    plain = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 6, 5])],
    )
    model = helper.make_model(plain, opset_imports=[helper.make_opsetid("", 17)])
    assert _clean(model, nchw) == (model, "nothing to fold")

    pair = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["t"], ["u"], perm=[0, 3, 1, 2]),
            helper.make_node("Relu", ["u"], ["y"]),
        ],
        "pair",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 6, 5])],
    )
    cleaned, note = _clean(helper.make_model(pair, opset_imports=[helper.make_opsetid("", 17)]), nchw)
    assert note == "0 scale/shift node(s) folded into Conv, 2 Transpose node(s) removed"
    assert [n.op_type for n in cleaned.graph.node] == ["Relu"]

    rng = np.random.default_rng(4)
    nhwc = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Mul", ["conv", "scale"], ["y"]),
        ],
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7, 5, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 7, 5])],
        [
            numpy_helper.from_array(rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float32), "scale"),
        ],
    )
    model = helper.make_model(nhwc, opset_imports=[helper.make_opsetid("", 17)])
    spec = InputSpec(name="x", layout="NHWC", height=7, width=5, channels=3)
    cleaned, note = _clean(model, spec)
    assert note == "1 scale/shift node(s) folded into Conv, 0 Transpose node(s) removed"
    assert [n.op_type for n in cleaned.graph.node] == ["Transpose", "Conv"]

    unknown = helper.make_model(nhwc, opset_imports=[helper.make_opsetid("", 17)])
    unknown.graph.node.append(helper.make_node("Blur", ["y"], ["z"], domain="clinic.custom"))
    unknown.graph.output[0].name = "z"
    unknown.opset_import.append(helper.make_opsetid("clinic.custom", 1))
    cleaned, note = _clean(unknown, spec)
    assert cleaned is unknown and note.startswith("not folded (")


def test_each_step_shows_a_bar_and_a_library_failure_names_its_step(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a terminal each step is a bar, left full when done; its seconds are its own; a library's exception is
    a refusal that names the step (the traceback at debug level), and our own errors pass as they are."""
    import io
    import logging
    import re

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    clock = iter([100.0, 250.5])  # the step began 100 s after the clock's origin and took 150.5 s
    steps = Steps(clock=lambda: next(clock))
    assert steps.run("load ONNX", lambda: 7, lambda r: f"got {r}") == 7
    assert re.search(r"\rload ONNX {20}#{20} \d\d:\d\d\n$", terminal.getvalue()), repr(terminal.getvalue())
    assert steps.done == [("load ONNX", 150.5, "got 7")]
    assert steps.summary().splitlines()[1].split() == ["load", "ONNX", "150.50", "got", "7"]
    monkeypatch.undo()
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    Steps(show=False).run("load ONNX", lambda: 7)
    assert quiet.getvalue() == ""

    caplog.set_level(logging.DEBUG, logger="converters.build")
    failure = r"^simplify \(onnxslim\) failed on this model: ZeroDivisionError: integer division"
    with pytest.raises(ModelError, match=failure):
        Steps(show=False).run("simplify (onnxslim)", lambda: 1 // 0)
    [record] = [r for r in caplog.records if r.name == "converters.build"]
    assert record.levelno == logging.DEBUG and record.exc_info and record.exc_info[0] is ZeroDivisionError

    def refuse() -> None:
        raise SpecError("spec says no")

    with pytest.raises(SpecError, match=r"^spec says no$"):
        Steps(show=False).run("load ONNX", refuse)


def test_an_fp32_build_records_its_steps_and_provenance(nih_split: dict[str, Path], tmp_path: Path) -> None:
    """Without validation images: no gate, no reference outputs; the calibration images fit the input guard only
    (no INT8 calibration is claimed). The precision as the command line gives it (a string made at run time)."""
    import datetime as dt

    steps = Steps(show=False)
    spec = reference_spec(tmp_path, "fp32")
    bundle_path, report = build(
        BuildInputs(REFERENCE, spec, _fresh("fp32"), tmp_path / "b", calibration=nih_split["train"]), steps
    )
    assert report is None
    assert _names(steps) == [
        "load ONNX",
        "check and infer shapes",
        "match the spec's input",
        "make batch dynamic",
        "simplify (onnxslim)",
        "fold BatchNorm chains",
        "heatmap output",
        "read calibration images",
        "run at batch 1 and 3",
        "input guard",
        "fingerprint",
        "validation figures",
        "write bundle",
    ]
    assert [note for _, _, note in steps.done][:3] == ["opset 17", "ok", "image"]
    assert _notes(steps, "validation figures") == [
        "none (no --labels): no finding of this bundle will be shown as positive"
    ]
    assert _notes(steps, "fold BatchNorm chains") == ["nothing to fold"]
    assert _notes(steps, "heatmap output") == ["class activation map 'cam'"]
    manifest = load_bundle(bundle_path).manifest
    assert set(manifest.files) == {"model.onnx"} and manifest.fidelity is None and manifest.metrics == {}
    assert manifest.codes == _M.codes and manifest.codes["Effusion"].value == "60046008", "the spec's codes kept"
    assert manifest.validation is None and not any(manifest.validated(label) for label in manifest.labels)
    n = len(list(nih_split["train"].iterdir()))
    print_ = manifest.fingerprint
    assert print_ is not None and print_.images == n and print_.data == f"{n} images from {nih_split['train'].name}"
    assert (print_.bits, print_.photometric, print_.sizes) == ({"8": n}, {"MONOCHROME2": n}, {"512": n})
    assert sum(print_.intensity) == pytest.approx(1.0, abs=1e-3) and len(print_.intensity) == 16
    quantiles = print_.guard_quantiles or ()
    assert len(quantiles) == 21 and list(quantiles) == sorted(quantiles) and quantiles[19] < 0, (
        "the fitting images' guard scores: 95 % of them under the thresholds"
    )
    provenance = manifest.provenance
    assert provenance.method == (
        "edge-convert build --precision fp32: ONNX check, shape inference, dynamic batch, onnxslim"
    )
    assert provenance.calibration is None and provenance.validation is None
    created = dt.datetime.fromisoformat(provenance.created_at)
    assert created.microsecond == 0 and created.tzinfo is not None
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 120


def test_an_fp16_build_with_labels_keeps_their_metrics(nih: Path, nih_few: dict[str, Path], tmp_path: Path) -> None:
    steps = Steps(show=False)
    bundle_path, report = build(
        BuildInputs(
            REFERENCE,
            reference_spec(tmp_path, "fp16"),
            _fresh("fp16"),
            tmp_path / "b",
            calibration=nih_few["train"],
            validation=nih_few["test"],
            labels=nih / "labels.csv",
            file_column="Image Index",
        ),
        steps,
    )
    assert report is not None and report["passed"] and report["n_images"] == 12
    assert _names(steps)[-9:] == [
        "read calibration images",
        "read validation images",
        "run at batch 1 and 3",
        "input guard",
        "fingerprint",
        "convert to FP16",
        "fidelity gate",
        "validation figures",
        "write bundle",
    ]
    assert _notes(steps, "fidelity gate")[0].startswith("PASSED: agreement 1.0000, max diff 0.0")
    bundle = load_bundle(bundle_path)
    assert bundle.manifest.metrics == {"validation": report["per_label"]}
    infiltration = report["per_label"]["Infiltration"]  # three of the twelve images
    assert infiltration["auc_reference"] is not None and infiltration["auc_candidate"] is not None
    assert bundle.manifest.provenance.validation == "12 images from test"
    figures = bundle.manifest.validation
    assert figures is not None and figures.data == "12 images from test"
    assert figures.operating_point == "the spec's thresholds" and bundle.manifest.thresholds == _M.thresholds
    too_few = figures.labels["Infiltration"]  # three of the twelve images are positive
    assert not too_few.validated and too_few.positives == 3 and too_few.negatives == 9
    assert "too few validation images (3 positive, 9 negative)" in too_few.why
    assert _notes(steps, "validation figures") == ["0 of 5 label(s) validated: none"]
    assert bundle.manifest.provenance.calibration is None
    assert np.load(bundle.path / "reference_inputs.npy").shape == (8, 1, 64, 64), "eight of the twelve"


def test_int8_without_calibration_is_refused_before_any_work(nih_few: dict[str, Path], tmp_path: Path) -> None:
    steps = Steps(show=False)
    with pytest.raises(ConversionError, match=r"^--calibration images are needed .* and INT8 is calibrated on them$"):
        build(
            BuildInputs(
                REFERENCE, reference_spec(tmp_path, "int8"), _fresh("int8"), tmp_path / "b", validation=nih_few["test"]
            ),
            steps,
        )
    assert steps.done == [] and not (tmp_path / "b").exists()


def test_a_spec_heatmap_the_model_cannot_give_is_refused(tmp_path: Path) -> None:
    """A head that is not global-average-pool + linear gets no class activation map: refused where the spec
    names a heatmap, built without one where it does not."""
    model = tmp_path / "odd.onnx"
    onnx.save(_channel_mean_head(), str(model))
    text = (
        'name = "odd"\nversion = "1"\ntask = "multilabel"\nlabels = ["a", "b"]\n'
        'input = { name = "input", layout = "NCHW", height = 5, width = 4, channels = 3 }\n'
        'output = { name = "logits", activation = "sigmoid"%s }\n'
    )
    named, plain = tmp_path / "named.toml", tmp_path / "plain.toml"
    images = _noise_pngs(tmp_path / "images", 24, (5, 4), "RGB")
    named.write_text(text % ', heatmap = "cam"')
    plain.write_text(text % "")
    refused = "names a heatmap output 'cam', which the model lacks, and its head is neither"
    with pytest.raises(ModelError, match=refused):
        build(BuildInputs(model, load_spec(named), "fp32", tmp_path / "a", calibration=images), Steps(show=False))
    steps = Steps(show=False)
    bundle_path, _ = build(BuildInputs(model, load_spec(plain), "fp32", tmp_path / "b", calibration=images), steps)
    assert _notes(steps, "heatmap output") == ["none (the head is neither GAP + linear nor GAP + dense, ReLU, dense)"]
    assert load_bundle(bundle_path).manifest.output.heatmap is None


def _deep_model(path: Path, layers: int = 8) -> None:
    """A 32x32 grey-level classifier of `layers` Conv + Relu pairs, a GAP + Gemm head, names as onnx.helper
    leaves them (none)."""
    rng = np.random.default_rng(6)
    inits, nodes, x = [], [], "input"
    for i in range(layers):
        w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 1 if i == 0 else 4, 3, 3)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    inits += [
        numpy_helper.from_array(rng.normal(0, 1, (2, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(2, np.float32), "fc_b"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["g"]),
        helper.make_node("Flatten", ["g"], ["h"]),
        helper.make_node("Gemm", ["h", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "deep",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


DEEP_SPEC = (
    'name = "deep"\nversion = "1"\ntask = "multilabel"\nlabels = ["a", "b"]\n'
    'input = { name = "input", layout = "NCHW", height = 32, width = 32, channels = 1 }\n'
    'output = { name = "logits", activation = "sigmoid" }\n'
)


def _build_int8(
    model: Path, spec: Path, out: Path, images: dict[str, Path], steps: Steps
) -> tuple[Path, dict[str, Any] | None]:
    return build(
        BuildInputs(model, load_spec(spec), "int8", out, calibration=images["train"], validation=images["test"]), steps
    )


def _refused_int8(model: Path, spec: Path, out: Path, images: dict[str, Path]) -> tuple[dict[str, Any], Steps]:
    """An INT8 build the gate refuses: its report and its steps (nothing written)."""
    steps = Steps(show=False)
    with pytest.raises(FidelityGateFailed) as info:
        _build_int8(model, spec, out, images, steps)
    assert not out.exists()
    return info.value.report, steps


def _keras_model(tmp_path: Path, spec_tail: str, spec_name: str = "spec.toml") -> tuple[Path, Path]:
    """The small Keras-style model (unnamed nodes) and its spec with `spec_tail` appended."""
    model = tmp_path / "keras.onnx"
    if not model.exists():
        _nhwc_model(model, external=False)
    spec = tmp_path / spec_name
    spec.write_text(NHWC_SPEC + spec_tail)
    return model, spec


def test_each_int8_round_keeps_more_of_the_ranked_nodes_up_to_a_budget_that_follows_the_graph(
    nih_few: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A gate that cannot pass, three fallback rounds: twice the budget of nodes, worst SQNR first, are ranked by
    the decisions that flip with each kept in FP32, then 1, 2 and the whole budget of that ranking are kept: a
    quarter of the nodes the INT8 graph computes on quantized inputs, so a deeper graph keeps more. Each round's
    steps are named by its try and the last gate's numbers are the refusal's; 24 calibration images are warned of."""
    budgets = {}
    for layers in (4, 12):
        model = tmp_path / f"deep{layers}.onnx"
        _deep_model(model, layers=layers)
        spec_path = tmp_path / f"spec{layers}.toml"
        spec_path.write_text(
            DEEP_SPEC + f"calibration = {{ max_fallback_rounds = 3 }}\ntolerance = {{ {NO_TOLERANCE} }}\n"
        )
        report, steps = _refused_int8(model, spec_path, tmp_path / f"b{layers}", nih_few)
        fallback = report["fallback"]
        budget = fallback["budget"]
        assert fallback["computed_in_int8"] > layers, "every Conv, and more, computes in INT8"
        assert budget == math.ceil(0.25 * fallback["computed_in_int8"])
        ranked = [entry["node"] for entry in fallback["ranked"]]
        assert len(ranked) == len(set(ranked)) == 2 * budget and all(ranked)
        scores = [(entry["flips"], entry["mean_abs_diff"]) for entry in fallback["ranked"]]
        assert scores == sorted(scores), "fewest flips first, then the smallest difference"
        kept = report["nodes_kept_fp32"]
        assert kept == ranked[:budget], "the last try keeps the whole budget, in the ranking's order"
        sizes = sorted({1, 2, budget})
        tries = [f"try {i}" for i in range(1, len(sizes) + 2)]
        assert _names(steps)[-2 * len(tries) - 2 :] == [
            *(f"{step}, {tries[0]}" for step in ("INT8 QDQ", "fidelity gate")),
            "find sensitive nodes",
            "rank by decision flips",
            *(f"{step}, {t}" for t in tries[1:] for step in ("INT8 QDQ", "fidelity gate")),
        ]
        notes = [_notes(steps, f"INT8 QDQ, {t}")[0] for t in tries]
        assert notes == [f"minmax, {n} node(s) kept in FP32" for n in (0, *sizes)]
        assert _notes(steps, "find sensitive nodes") == [f"{2 * budget} node(s) by SQNR"]
        assert all(note.startswith("FAILED: agreement") for note in _notes(steps, f"fidelity gate, {tries[-1]}"))
        assert report["failures"] and not report["passed"] and report["n_images"] == 12
        budgets[layers] = budget
    assert budgets[12] > budgets[4] >= 2
    assert report["calibration"] == {"method": "minmax", "bias_correction": False, "n_images": 24}
    latency = report["latency_ms"]
    assert latency["batch"] == 1 and report["speedup_batch1"] == latency["fp32_p50"] / latency["int8_p50"]
    assert report["speedup_gated"] is False, "target tensorrt: the CPU's speed-up is reported, not gated"
    warnings = [r.getMessage() for r in caplog.records if r.name == "converters.build" and r.levelname == "WARNING"]
    assert "only 24 calibration images; 500 or more representative images of this clinic are recommended" in warnings


def _offset_model(path: Path, images: dict[str, Path]) -> None:
    """A classifier of the image's mean intensity whose INT8 form fails at one node: an Add of 1000, undone by a Sub
    (which ONNX Runtime leaves in float), so the Add's output is quantized over [-1001, 1001] and the image is lost
    in one step of it. Its tensor keeps 1000's signal, so a good SQNR. Both labels' thresholds sit in
    the widest gap between the validation images' means, near their median."""
    from converters.images import load_images

    spec_path = path.with_suffix(".toml")
    spec_path.write_text(DEEP_SPEC)
    spec = load_spec(spec_path)
    means = np.sort(load_images(images["test"], spec.input, spec.preprocessing).tensors.mean(axis=(1, 2, 3)))
    middle = means[len(means) // 4 : 3 * len(means) // 4 + 1]
    gap = int(np.argmax(np.diff(middle)))
    cut = float(middle[gap] + middle[gap + 1]) / 2
    gain = 50.0
    inits = [
        numpy_helper.from_array(np.array([1000.0], np.float32), "offset"),
        numpy_helper.from_array(np.full((2, 1), gain, np.float32), "fc_w"),
        numpy_helper.from_array(np.full(2, -gain * cut, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Add", ["input", "offset"], ["shifted"]),
        helper.make_node("Sub", ["shifted", "offset"], ["back"]),
        helper.make_node("GlobalAveragePool", ["back"], ["g"]),
        helper.make_node("Flatten", ["g"], ["h"]),
        helper.make_node("Gemm", ["h", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "offset",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _fp32_logits(model: Path, folder: Path) -> np.ndarray:
    """The logits of the offset `model` (its spec beside it) on the images of `folder`, with ONNX Runtime."""
    import onnxruntime as ort

    from converters.images import load_images

    spec = load_spec(model.with_suffix(".toml"))
    tensors = load_images(folder, spec.input, spec.preprocessing).tensors
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": tensors})[0]


def test_the_fallback_keeps_first_the_node_whose_fp32_undoes_the_flipped_decisions(
    nih_few: dict[str, Path], tmp_path: Path
) -> None:
    """The ranking is the gate's criterion: with each candidate alone in FP32, the decisions that still flip on the
    validation images. INT8 flips decisions at the first try because of one Add, whose output keeps a good SQNR
    (1000's signal); ranked first by flips, it is kept alone in FP32 at the second try and the bundle is built. The
    first try's flipped images are counted (FP32's negatives, more than half: INT8 calls every image positive), and
    every image is at risk (a margin to the threshold of at most 0.5, within the first try's difference)."""
    model = tmp_path / "offset.onnx"
    _offset_model(model, nih_few)
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(
        DEEP_SPEC + "calibration = { max_fallback_rounds = 2, max_fallback_share = 0.5 }\n"
        "tolerance = { min_agreement = 1.0, max_abs_diff = 1.0, mean_abs_diff = 1.0, min_speedup = 0.0 }\n"
    )
    steps = Steps(show=False)
    _, report = _build_int8(model, spec_path, tmp_path / "b", nih_few, steps)
    assert report is not None and report["passed"] and report["decision_agreement"] == 1.0
    assert _notes(steps, "fidelity gate, try 1")[0].startswith("FAILED: agreement 0."), "INT8 flips decisions"
    ranked = report["fallback"]["ranked"]
    assert report["nodes_kept_fp32"] == [ranked[0]["node"]] == ["Add_0"] and ranked[0]["flips"] == 0
    fallback = report["fallback"]
    negative = _fp32_logits(model, nih_few["test"]).max(axis=1) < 0
    assert fallback["images_flipped_first"] == int(negative.sum()) > 6, "INT8 calls every image positive: those flip"
    assert fallback["images_at_risk"] == 12, "each image's margin to a threshold is within the first try's difference"
    assert ranked[0]["sqnr_rank"] > 0, "the SQNR ranking did not put it first"
    assert all(entry["flips"] >= 1 for entry in ranked[1:]), "no other node undoes the flips"
    assert _notes(steps, "INT8 QDQ, try 2") == ["minmax, 1 node(s) kept in FP32"]
    assert "INT8 QDQ, try 3" not in _names(steps)


def test_a_whole_graph_budget_keeps_every_named_node_and_is_refused_as_fp32(
    nih_few: dict[str, Path], tmp_path: Path
) -> None:
    """Unnamed nodes (onnx.helper's default) get names, so keeping one in FP32 keeps that one: ONNX Runtime's
    quantizer told to keep "" would keep every unnamed node. A budget of the whole graph keeps every node the INT8
    graph computed, each once, and what is left is refused as no INT8 at all."""
    from converters.graph import simplify

    model, spec = _keras_model(
        tmp_path,
        f"calibration = {{ max_fallback_rounds = 8, max_fallback_share = 1.0 }}\ntolerance = {{ {NO_TOLERANCE} }}\n",
    )
    report, steps = _refused_int8(model, spec, tmp_path / "b", nih_few)
    kept = report["nodes_kept_fp32"]
    named = {node.name for node in simplify(onnx.load(str(model))).graph.node}
    assert all(kept) and len(set(kept)) == len(kept) == report["fallback"]["computed_in_int8"] > 2
    assert set(kept) <= named | {"cam_head", "cam_activation"}
    assert "no node is left in INT8: this is an FP32 model, build it as fp32" in report["failures"]
    assert _notes(steps, "fidelity gate, try 2")[0].startswith("FAILED"), "the step says what the gate decided"


def test_a_ranking_that_fails_ends_the_rounds_with_the_last_gates_numbers(
    nih_few: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's debug tooling failing on the QDQ graph it made: no more rounds, the refusal says why."""
    from onnxruntime.quantization import qdq_loss_debug

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no activations")

    monkeypatch.setattr(qdq_loss_debug, "collect_activations", fail)
    model, spec = _keras_model(tmp_path, f"tolerance = {{ {NO_TOLERANCE} }}\n")
    report, steps = _refused_int8(model, spec, tmp_path / "b", nih_few)
    failures = report["failures"]
    assert failures[-1] == (
        "the fallback stopped: find sensitive nodes failed on this model: RuntimeError: no activations"
    )
    assert len(failures) > 1, "the last gate's own failures are kept"
    assert _names(steps)[-2:] == ["INT8 QDQ, try 1", "fidelity gate, try 1"]


def test_the_cpu_speed_up_decides_only_for_an_onnxruntime_target(
    nih_few: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No INT8 graph is 1000 times faster: refused for target onnxruntime (no fallback round can make it
    faster), built for target tensorrt where the gate passes at its first try; the bundle says what it was
    calibrated and validated on. As many calibration images as recommended, or more: no warning."""
    import converters.build

    monkeypatch.setattr(converters.build, "RECOMMENDED_CALIBRATION_IMAGES", 23)
    fast = 'calibration = { target = "onnxruntime", max_fallback_rounds = 0 }\ntolerance = { min_speedup = 1000.0 }\n'
    report, steps = _refused_int8(*_keras_model(tmp_path, fast, "fast.toml"), tmp_path / "a", nih_few)
    assert report["speedup_gated"] is True
    assert [f for f in report["failures"] if f.startswith("INT8 is not faster: speed-up ")], report["failures"]
    assert _names(steps)[-2:] == ["INT8 QDQ, try 1", "fidelity gate, try 1"]

    assert not [r for r in caplog.records if r.name == "converters.build"], "24 images, 23 recommended"
    monkeypatch.setattr(converters.build, "RECOMMENDED_CALIBRATION_IMAGES", 24)
    model, reported = _keras_model(tmp_path, "tolerance = { min_speedup = 1000.0 }\n", "reported.toml")
    steps = Steps(show=False)
    bundle_path, report = _build_int8(model, reported, tmp_path / "b", nih_few, steps)
    assert report is not None and report["passed"] and report["speedup_gated"] is False
    assert _names(steps)[-4:] == ["INT8 QDQ, try 1", "fidelity gate, try 1", "validation figures", "write bundle"]
    manifest = load_bundle(bundle_path).manifest
    assert manifest.metrics == {}, "no labels given: no metrics"
    provenance = manifest.provenance
    assert provenance.calibration == "24 images from train, minmax"
    assert provenance.validation == "12 images from test"
    assert not [r for r in caplog.records if r.name == "converters.build"], "24 images, 24 recommended"


def test_simplify_gives_every_node_a_name_of_its_own() -> None:
    from converters.graph import simplify

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"], name="Relu_1"),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Neg", ["b"], ["c"]),
            helper.make_node("Neg", ["c"], ["y"], name="Relu_1"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = simplify(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.name for n in model.graph.node] == ["Relu_1", "Relu_1_", "Neg_2", "Relu_1__"]


def _noise_pngs(folder: Path, count: int, size: tuple[int, int], mode: str, top: int = 256) -> Path:
    """`count` PNGs of noise in [0, top), (height, width) `size`: images to fit an input guard on, where the images
    do not matter."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    channels = {"L": (), "RGB": (3,)}[mode]
    for i in range(count):
        pixels = rng.integers(0, top, (*size, *channels), dtype=np.uint8)
        Image.fromarray(pixels, mode=mode).save(folder / f"{i:02d}.png")
    return folder

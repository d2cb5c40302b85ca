"""The input guard: fitted into the graph by the converter, run with the model by every runner, and an image it
refuses is stored, listed with its reason and viewable, never diagnosed."""

from __future__ import annotations

import io
import re
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from flask.testing import FlaskClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from converters import fidelity, graph, guard
from converters.build import BuildInputs, Steps, build
from converters.errors import ConversionError, ModelError
from converters.spec import Tolerance, load_spec
from edge_app.bundles.bundle import load_bundle, write_manifest
from edge_app.bundles.findings import guard_check
from edge_app.bundles.manifest import GuardComponent, InputGuard, InputSpec, OutputSpec, Preprocessing
from edge_app.config import EMBEDDED_BUNDLE, Settings
from edge_app.errors import InferenceError, NotFound
from edge_app.inference.diagnoser import Diagnoser
from edge_app.runtime import open_runner
from edge_app.store import Store
from edge_app.store.schema import MIGRATIONS, migrate
from support.migrations import database_at

pytestmark = pytest.mark.unit

MANIFEST = load_bundle(EMBEDDED_BUNDLE).manifest


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _noise() -> bytes:
    return _png(np.random.default_rng(3).integers(0, 256, (300, 280), dtype=np.uint8))


@pytest.fixture(scope="module")
def diagnoser() -> Diagnoser:
    bundle = load_bundle(EMBEDDED_BUNDLE)
    runner = open_runner(bundle, threads=1)
    runner.activate()
    return Diagnoser(bundle, runner)


def unguarded(tmp_path: Path) -> Path:
    """The reference bundle as a bundle of before the guard: no guard output, no `guard` in its manifest."""
    folder = Path(shutil.copytree(EMBEDDED_BUNDLE, tmp_path / "unguarded"))
    graph.save(guard.strip(graph.load_model(folder / "model.onnx")), folder / "model.onnx")
    manifest = load_bundle(EMBEDDED_BUNDLE).manifest
    from edge_app.bundles.bundle import sha256_file

    files = {name: sha256_file(folder / name) for name in manifest.files}
    write_manifest(folder, manifest.model_copy(update={"guard": None, "version": "1.1.0", "files": files}))
    return folder


# -- the reference bundle's guard, through the service's own diagnoser ----------------------------------------------


def test_the_reference_bundle_carries_a_guard_as_an_output_of_its_graph() -> None:
    guard_spec = MANIFEST.guard
    assert guard_spec is not None and guard_spec.output == "input_guard"
    assert [c.name for c in guard_spec.components] == ["density", "orientation"]
    assert MANIFEST.output_names() == ["logits", "cam", "input_guard"]
    model = onnx.load(str(EMBEDDED_BUNDLE / "model.onnx"))
    assert "input_guard" in [o.name for o in model.graph.output]
    assert guard_spec.rates["held_out_refused"] <= 0.02 and guard_spec.rates["held_out_images"] == 200
    assert all(v == 1.0 for v in guard_spec.rates["synthetic_refused"].values())


def test_noise_is_outside_and_gets_no_findings(diagnoser: Diagnoser) -> None:
    diagnosis = diagnoser.diagnose(_noise(), source="noise.png")
    assert diagnosis.status == "outside" and diagnosis.findings == [] and diagnosis.heatmaps == []
    assert diagnosis.guard is not None and diagnosis.guard.outside and diagnosis.guard.score > 0
    assert diagnosis.reason is not None
    assert diagnosis.reason.startswith(
        "does not look like a frontal chest X-ray this model was made for: not diagnosed"
    )
    assert f"score {diagnosis.guard.score:.2f} above its limit" in diagnosis.reason
    assert diagnosis.preview is not None, "the image can still be shown"
    out = diagnosis.as_dict()
    assert out["status"] == "outside" and "findings" not in out and out["guard"]["outside"] is True


def test_a_turned_chest_is_outside_by_its_orientation(diagnoser: Diagnoser, nih_png: Path) -> None:
    chest = np.asarray(Image.open(nih_png).convert("L"))
    upright = diagnoser.diagnose(_png(chest), source="chest.png")
    assert upright.status == "ok" and upright.guard is not None and not upright.guard.outside
    assert upright.as_dict()["guard"] == upright.guard.as_dict()
    turned = diagnoser.diagnose(_png(np.rot90(chest).copy()), source="turned.png")
    assert turned.status == "outside" and turned.guard is not None
    assert turned.guard.component == "orientation"


def test_a_blank_image_is_outside(diagnoser: Diagnoser) -> None:
    """A constant image has no layout: its normalised views are not numbers, which is read as outside."""
    diagnosis = diagnoser.diagnose(_png(np.full((200, 200), 128, np.uint8)), source="grey.png")
    assert diagnosis.status == "outside"


def test_the_guard_meets_its_targets_on_images_it_was_not_fitted_on(diagnoser: Diagnoser, nih: Path) -> None:
    """The benchmark's sets: at least 99 % of non-target images refused, at most 2 % of real chest X-rays."""
    from ood_samples import chest_samples, outside_samples

    def refused(samples: list) -> list[bool]:  # type: ignore[type-arg]
        return [diagnoser.diagnose(s.data, source=s.name).status != "ok" for s in samples]

    outside = refused(outside_samples(nih_dir=nih))
    chest = refused(chest_samples(nih_dir=nih))
    assert len(outside) > 300 and np.mean(outside) >= 0.99
    assert len(chest) > 200 and np.mean(chest) <= 0.02


def test_an_older_bundle_without_a_guard_still_loads_and_says_so(tmp_path: Path, nih_png: Path) -> None:
    bundle = load_bundle(unguarded(tmp_path))
    assert bundle.manifest.guard is None and bundle.manifest.output_names() == ["logits", "cam"]
    with open_runner(bundle, threads=1) as runner:
        diagnosis = Diagnoser(bundle, runner).diagnose(_noise(), source="noise.png")
    assert diagnosis.status == "ok" and diagnosis.guard is None, "not checked: diagnosed as before"
    assert diagnosis.as_dict()["guard"] is None


def test_a_model_without_the_guard_output_its_manifest_names_is_refused(tmp_path: Path) -> None:
    folder = Path(shutil.copytree(EMBEDDED_BUNDLE, tmp_path / "b"))
    graph.save(guard.strip(graph.load_model(folder / "model.onnx")), folder / "model.onnx")
    from edge_app.bundles.bundle import sha256_file

    write_manifest(folder, MANIFEST.model_copy(update={"files": {n: sha256_file(folder / n) for n in MANIFEST.files}}))
    from edge_app.errors import BundleError

    with pytest.raises(BundleError, match="the model has no output 'input_guard'"), open_runner(load_bundle(folder)):
        pass


# -- the verdict ------------------------------------------------------------------------------------------------------


def _with_guard(thresholds: tuple[float, float]) -> object:
    components = tuple(
        GuardComponent(name=n, method="m", threshold=t) for n, t in zip(("a", "b"), thresholds, strict=True)
    )
    return MANIFEST.model_copy(update={"guard": InputGuard(output="g", components=components, fitted_on="x")})


@pytest.mark.parametrize(
    ("scores", "score", "component"),
    [
        ((1.0, -3.0), -1.0, "a"),  # both inside: the larger margin, still below 0
        ((2.5, -3.0), 0.5, "a"),
        ((1.0, 2.0), 1.0, "b"),
        ((2.0, -2.0), 0.0, "a"),  # at the threshold: inside
        ((float("nan"), -3.0), 1e9, "a"),  # not a number: outside
        ((1.0, float("inf")), 1e9, "b"),
    ],
)
def test_the_verdict_is_the_largest_margin(scores: tuple[float, float], score: float, component: str) -> None:
    manifest = _with_guard((2.0, 1.0))
    outputs = {"g": np.asarray([[0.0, 0.0], scores], np.float32)}
    check = guard_check(manifest, outputs, index=1)  # type: ignore[arg-type]
    assert check is not None and check.score == pytest.approx(score) and check.component == component
    assert check.outside is (score > 0)


def test_a_guard_output_of_the_wrong_width_is_an_inference_error() -> None:
    with pytest.raises(InferenceError, match="the guard gave 3 scores for 2 components"):
        guard_check(_with_guard((1.0, 1.0)), {"g": np.zeros((1, 3), np.float32)})  # type: ignore[arg-type]
    assert guard_check(MANIFEST.model_copy(update={"guard": None}), {}) is None


def test_the_guard_output_must_be_its_own() -> None:
    with pytest.raises(ValueError, match="the guard's output must be an output of its own"):
        MANIFEST.model_validate({**MANIFEST.model_dump(), "guard": {**MANIFEST.guard.model_dump(), "output": "cam"}})  # type: ignore[union-attr]


# -- fitting: the feature map the head reads, and small models of other shapes ---------------------------------------


def _conv_net(head: str, side: int = 16, channels: int = 1) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu -> a head: "gap" (GlobalAveragePool, Flatten, Gemm), "two" (mean over H and W,
    MatMul, Relu, MatMul: Dense -> ReLU -> Dense) or "none" (Flatten of the whole map, Gemm)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, channels, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (6, 4, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
    ]
    if head == "gap":
        inits.append(numpy_helper.from_array(rng.normal(0, 1, (2, 6)).astype(np.float32), "wd"))
        nodes += [
            helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "wd"], ["logits"], transB=1),
        ]
    elif head == "two":
        inits += [
            numpy_helper.from_array(rng.normal(0, 1, (6, 5)).astype(np.float32), "wa"),
            numpy_helper.from_array(rng.normal(0, 1, (5, 2)).astype(np.float32), "wb"),
        ]
        nodes += [
            helper.make_node("ReduceMean", ["r2"], ["p"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["p", "wa"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("MatMul", ["hr", "wb"], ["logits"]),
        ]
    else:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (6 * side * side, 2)).astype(np.float32), "wd"))
        nodes += [helper.make_node("Flatten", ["r2"], ["f"]), helper.make_node("MatMul", ["f", "wd"], ["logits"])]
    return _model(nodes, inits, channels, side)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], channels: int, side: int) -> onnx.ModelProto:
    """The graph of `nodes` from input x (batch, channels, side, side) to two logits, opset 17."""
    g = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_the_head_features_are_found_through_the_head() -> None:
    out = OutputSpec(name="logits", activation="sigmoid")
    assert guard.head_features(_conv_net("gap"), out) == ("r2", "NCHW")
    assert guard.head_features(_conv_net("two"), out) == ("r2", "NCHW"), "through Dense -> ReLU -> Dense"
    assert guard.head_features(_conv_net("none"), out) is None
    reference = onnx.load(str(EMBEDDED_BUNDLE / "model.onnx"))
    head = guard.head_features(reference, MANIFEST.output)
    assert head == ("/features/features.17/Relu_output_0", "NCHW"), "past the 1x1 convolution of a CAM head"
    layers = guard.feature_layers(reference, MANIFEST.output)
    assert [t for t, _ in layers] == [
        "/features/features.2/Relu_output_0",
        "/features/features.9/Relu_output_0",
        "/features/features.17/Relu_output_0",
    ]


def _conv_chain(convs: int, bias_add: bool = False) -> onnx.ModelProto:
    """`convs` times Conv -> Relu on a 1x16x16 input, then Flatten -> MatMul (no pooled head); with `bias_add`
    each convolution's bias is an Add of a (1, 4, 1, 1) constant after it, as some exporters write it."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(1, convs + 1):
        inits.append(
            numpy_helper.from_array(rng.normal(0, 0.5, (4, 1 if i == 1 else 4, 3, 3)).astype(np.float32), f"w{i}")
        )
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        x = f"c{i}"
        if bias_add:
            inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (1, 4, 1, 1)).astype(np.float32), f"b{i}"))
            nodes.append(helper.make_node("Add", [x, f"b{i}"], [f"a{i}"]))
            x = f"a{i}"
        nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
        x = f"r{i}"
    inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (4 * 16 * 16, 2)).astype(np.float32), "wd"))
    nodes += [helper.make_node("Flatten", [x], ["f"]), helper.make_node("MatMul", ["f", "wd"], ["logits"])]
    return _model(nodes, inits, 1, 16)


def test_the_feature_layers_are_the_first_middle_and_last_convolutions() -> None:
    """Of an even number of convolutions, the middle one rounded down; no other node with a 4-D constant counts."""
    out = OutputSpec(name="logits", activation="sigmoid")
    assert guard.feature_layers(_conv_chain(4), out) == [("r1", "NCHW"), ("r2", "NCHW"), ("r4", "NCHW")]
    assert guard.feature_layers(_conv_chain(5), out) == [("r1", "NCHW"), ("r3", "NCHW"), ("r5", "NCHW")]
    assert guard.feature_layers(_conv_chain(3), out) == [("r1", "NCHW"), ("r2", "NCHW"), ("r3", "NCHW")]
    # A bias Add follows each convolution, no activation alone: the convolutions' own outputs, the Adds not.
    assert guard.feature_layers(_conv_chain(2, bias_add=True), out) == [("c1", "NCHW"), ("c2", "NCHW")]


def _blobs(n: int, side: int, seed: int) -> np.ndarray:
    """Images of one kind: a bright disc upper left, a dark bar below, noise; values in [-1, 1], (n, 1, side, side)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    out = []
    for _ in range(n):
        cy, cx = 0.3 + rng.normal(0, 0.03, 2)
        img = 0.8 * ((yy - cy) ** 2 + (xx - cx) ** 2 < 0.04) - 0.6 * ((yy > 0.65) & (yy < 0.8))
        out.append(img + rng.normal(0, 0.1, (side, side)))
    return np.clip(np.asarray(out, np.float32), -1, 1)[:, None]


@pytest.mark.parametrize("head", ["gap", "two", "none"])
def test_a_small_model_of_each_head_gets_a_guard_that_tells_its_images_from_others(head: str) -> None:
    spec = InputSpec(name="x", height=16, width=16, channels=1)
    prep = Preprocessing(scale=(-1.0, 1.0))
    model, fitted = guard.fit(
        _conv_net(head), spec, prep, OutputSpec(name="logits", activation="sigmoid"), _blobs(60, 16, 1)
    )
    onnx.checker.check_model(model)
    limits = np.asarray([c.threshold for c in fitted.components], np.float32)
    assert fitted.fitted_on.startswith("60 images")
    # Only the highest of 60 cross-validated scores lies above their 99th percentile, per component: 1 or 2 of 60.
    assert fitted.rates["fitting_images_refused_cv"] in (0.0167, 0.0333)
    same = guard.scores(model, spec, _blobs(40, 16, 2))
    assert same.shape == (40, 2) and guard.outside(same, limits).mean() <= 0.1
    rng = np.random.default_rng(5)
    others = np.concatenate(
        [rng.uniform(-1, 1, (10, 1, 16, 16)), np.rot90(_blobs(10, 16, 3), 2, axes=(2, 3)), -_blobs(10, 16, 4)]
    ).astype(np.float32)
    assert guard.outside(guard.scores(model, spec, others), limits).all()
    assert all(n.startswith(guard.PREFIX) for n in guard.guard_nodes(model)) and guard.guard_nodes(model)


def test_an_nhwc_model_gets_the_guard_of_the_same_model_in_nchw() -> None:
    """The same network behind a Transpose from NHWC: the guard reads the image in NCHW whatever the input layout,
    so it is fitted to the same thresholds and gives the same scores."""
    nchw = _conv_net("gap")
    nhwc = graph.copy(nchw)
    nhwc.graph.node.insert(0, helper.make_node("Transpose", ["xh"], ["x"], perm=[0, 3, 1, 2]))
    del nhwc.graph.input[:]
    nhwc.graph.input.append(helper.make_tensor_value_info("xh", TensorProto.FLOAT, ["batch", 16, 16, 1]))
    prep, out = Preprocessing(scale=(-1.0, 1.0)), OutputSpec(name="logits", activation="sigmoid")
    spec = InputSpec(name="x", height=16, width=16, channels=1)
    spec_h = InputSpec(name="xh", height=16, width=16, channels=1, layout="NHWC")
    images, others = _blobs(60, 16, 1), np.concatenate([_blobs(10, 16, 2), -_blobs(5, 16, 4)])
    model, fitted = guard.fit(nchw, spec, prep, out, images)
    model_h, fitted_h = guard.fit(nhwc, spec_h, prep, out, np.ascontiguousarray(images.transpose(0, 2, 3, 1)))
    assert [c.threshold for c in fitted_h.components] == pytest.approx([c.threshold for c in fitted.components])
    expected = guard.scores(model, spec, others)
    got = guard.scores(model_h, spec_h, np.ascontiguousarray(others.transpose(0, 2, 3, 1)))
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_constant_images_are_left_out_of_the_fit_and_counted() -> None:
    spec = InputSpec(name="x", height=16, width=16, channels=1)
    images = np.concatenate([_blobs(40, 16, 1), np.full((3, 1, 16, 16), -1.0, np.float32)])
    _, fitted = guard.fit(
        _conv_net("gap"), spec, Preprocessing(), OutputSpec(name="logits", activation="sigmoid"), images
    )
    assert fitted.rates["fitting_images_left_out"] == 3 and fitted.fitted_on.startswith("40 images")
    blank = np.concatenate([_blobs(19, 16, 1), np.zeros((5, 1, 16, 16), np.float32)])
    with pytest.raises(ModelError, match="needs at least 20 images to fit; 19 of 24 are usable"):
        guard.fit(_conv_net("gap"), spec, Preprocessing(), OutputSpec(name="logits", activation="sigmoid"), blank)


def test_an_nhwc_head_counts_its_last_activation_once() -> None:
    """Keras: the head reads the last activation through a Transpose back to NHWC; one layer, not two."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Transpose", ["r"], ["back"], perm=[0, 2, 3, 1]),
        helper.make_node("ReduceMean", ["back"], ["p"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["p", "wd"], ["logits"]),
    ]
    g = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 16, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(0, 1, (4, 2)).astype(np.float32), "wd"),
        ],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    out = OutputSpec(name="logits", activation="sigmoid")
    assert guard.head_features(model, out) == ("back", "NHWC")
    assert guard.feature_layers(model, out) == [("back", "NHWC")]


def test_strip_takes_out_an_fp16_model_s_guard_and_what_only_it_used() -> None:
    from converters.quantize import to_fp16

    spec = InputSpec(name="x", height=16, width=16, channels=1)
    model, _ = guard.fit(
        _conv_net("gap"), spec, Preprocessing(), OutputSpec(name="logits", activation="sigmoid"), _blobs(30, 16, 1)
    )
    half = to_fp16(model, guard.guard_nodes(model))
    stripped = guard.strip(half)
    assert [o.name for o in stripped.graph.output] == ["logits"]
    assert not [n for n in stripped.graph.node if n.name.startswith(guard.PREFIX) or guard.OUTPUT in n.output]
    import onnxruntime as ort

    session = ort.InferenceSession(stripped.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": _blobs(2, 16, 3)})[0].shape == (2, 2)
    again, _ = guard.fit(
        stripped, spec, Preprocessing(), OutputSpec(name="logits", activation="sigmoid"), _blobs(30, 16, 1)
    )
    assert [o.name for o in again.graph.output] == ["logits", "input_guard"], "an FP16 model's guard fitted anew"


def test_too_few_images_to_fit_are_refused() -> None:
    spec = InputSpec(name="x", height=16, width=16, channels=1)
    with pytest.raises(ModelError, match="the input guard needs at least 20 images to fit; 19 given"):
        guard.fit(
            _conv_net("gap"), spec, Preprocessing(), OutputSpec(name="logits", activation="sigmoid"), _blobs(19, 16, 0)
        )


def test_inversion_follows_the_preprocessing() -> None:
    """Black becomes white in the input's own terms: scale, then mean and std."""
    spec = InputSpec(name="x", height=2, width=2, channels=3, layout="NHWC")
    prep = Preprocessing(scale=(0.0, 255.0), mean=(100.0, 120.0, 140.0), std=(50.0, 60.0, 70.0))
    pixels = np.asarray([[0.0, 0.25], [0.5, 1.0]])[None, :, :, None].repeat(3, axis=3)
    x = ((pixels * 255.0 - np.asarray(prep.mean)) / np.asarray(prep.std)).astype(np.float32)
    expected = (((1 - pixels) * 255.0 - np.asarray(prep.mean)) / np.asarray(prep.std)).astype(np.float32)
    assert np.allclose(guard._inverted(x, spec, prep), expected, atol=1e-5)
    plain = Preprocessing(scale=(-1.0, 1.0))
    assert np.allclose(guard._inverted(np.float32([[[[-1.0, 0.5]]]]), spec, plain), [[[[1.0, -0.5]]]])


# -- the converter ----------------------------------------------------------------------------------------------------


def test_a_build_without_calibration_images_is_refused_before_any_work(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(
        'name = "n"\nversion = "1"\ntask = "multilabel"\nlabels = ["a", "b"]\n'
        'input = { name = "x", height = 16, width = 16, channels = 1 }\n'
        'output = { name = "logits", activation = "sigmoid" }\n'
    )
    model = tmp_path / "m.onnx"
    onnx.save(_conv_net("gap"), str(model))
    steps = Steps(show=False)
    with pytest.raises(
        ConversionError, match=r"^--calibration images are needed .*: the input guard is fitted on them$"
    ):
        build(BuildInputs(model, load_spec(spec_path), "fp32", tmp_path / "o"), steps)
    assert steps.done == [] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_converted_bundle_keeps_its_guard_in_fp32(precision: str, tmp_path: Path) -> None:
    """FP16 and INT8 leave the guard's nodes alone (no FP16 constant, no Q/DQ node on a guard tensor), and the
    bundle's guard refuses what the FP32 guard refuses."""
    folder = tmp_path / "images"
    for split, seed in (("cal", 1), ("val", 2)):
        (folder / split).mkdir(parents=True)
        for i, img in enumerate(_blobs(40, 32, seed)):
            Image.fromarray(((img[0] + 1) * 127.5).astype(np.uint8)).save(folder / split / f"{i}.png")
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(
        'name = "n"\nversion = "1"\ntask = "multilabel"\nlabels = ["a", "b"]\n'
        'input = { name = "x", height = 16, width = 16, channels = 1 }\n'
        "preprocessing = { scale = [-1.0, 1.0] }\n"
        'output = { name = "logits", activation = "sigmoid" }\n'
        "tolerance = { min_agreement = 0.0, max_abs_diff = 1.0, mean_abs_diff = 1.0, min_speedup = 0.0 }\n"
        'calibration = { target = "onnxruntime", max_fallback_rounds = 0 }\n'
    )
    model = tmp_path / "m.onnx"
    onnx.save(_conv_net("gap"), str(model))
    steps = Steps(show=False)
    out, report = build(
        BuildInputs(
            model,
            load_spec(spec_path),
            precision,
            tmp_path / "b",
            calibration=folder / "cal",  # type: ignore[arg-type]
            validation=folder / "val",
        ),
        steps,
    )
    assert "input guard" in [name for name, _, _ in steps.done]
    assert report is not None
    checked = report["input_guard"]  # the candidate's guard against the FP32 one, on real and synthetic probes
    assert checked["images"] == 40 + 4 * 40 + 40 + 40 and checked["agreement"] >= 0.99
    assert set(checked["refused"]) == {"held_out", "turned_or_inverted", "uniform_noise", "blank"}
    assert checked["refused"]["uniform_noise"] == {"fp32": 1.0, "candidate": 1.0}
    gate_note = [note for name, _, note in steps.done if name.startswith("fidelity gate")][-1]
    assert f"input guard agreement {checked['agreement']:.4f}" in gate_note
    bundle = load_bundle(out)
    assert bundle.manifest.guard is not None and bundle.manifest.guard.rates["held_out_images"] == 40
    converted = onnx.load(str(bundle.model_path))
    guard_inputs = {i for n in converted.graph.node if n.name.startswith(guard.PREFIX) for i in n.input}
    fp16 = {i.name for i in converted.graph.initializer if i.data_type == TensorProto.FLOAT16}
    assert not guard_inputs & fp16, "no guard constant in FP16"
    qdq = [n for n in converted.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert not [n for n in qdq if any(i.startswith(guard.PREFIX) for i in n.input)], "no guard tensor quantized"
    if precision == "int8":
        assert qdq, "the model itself is quantized"
    limits = np.asarray([c.threshold for c in bundle.manifest.guard.components], np.float32)
    spec = bundle.manifest.input
    assert guard.outside(
        guard.scores(converted, spec, np.random.default_rng(0).uniform(-1, 1, (8, 1, 16, 16)).astype(np.float32)),
        limits,
    ).all()


# -- the store: a status of its own ------------------------------------------------------------------------------------


def test_a_converted_guard_that_no_longer_says_what_the_fp32_one_says_is_refused() -> None:
    """The gate compares the candidate's guard verdicts with the FP32 model's on the probe images: the same model
    agrees on all; one whose features drifted (its first convolution's weights tripled, as a bad conversion
    might) does not, and the gate refuses it with the numbers."""
    spec = InputSpec(name="x", height=16, width=16, channels=1)
    prep = Preprocessing(scale=(-1.0, 1.0))
    held_out = _blobs(40, 16, 2)
    model, fitted = guard.fit(
        _conv_net("gap"), spec, prep, OutputSpec(name="logits", activation="sigmoid"), _blobs(60, 16, 1)
    )
    probe = guard.Probe.of(model, spec, prep, held_out, fitted)
    same = probe.compare(model, spec)
    assert same["agreement"] == 1.0 and same["images"] == 280
    assert all(r["fp32"] == r["candidate"] for r in same["refused"].values())
    drifted = graph.copy(model)
    w1 = next(i for i in drifted.graph.initializer if i.name == "w1")
    w1.CopyFrom(numpy_helper.from_array(3 * numpy_helper.to_array(w1), "w1"))
    compared = probe.compare(drifted, spec)
    assert compared["agreement"] < 0.9 and compared["refused"]["held_out"]["candidate"] > 0.5
    report = fidelity.GateReport(passed=True)
    report.check_guard(compared, Tolerance(min_agreement=0.99))
    assert report["input_guard"] == compared and report["passed"] is False
    assert report["failures"] == [
        f"input guard: its verdicts agree with the FP32 model's on {compared['agreement']:.4f} of 280 probe images"
        " < 0.99"
    ]
    passing = fidelity.GateReport(passed=True)
    passing.check_guard(same, Tolerance(min_agreement=0.99))
    assert passing["passed"] is True and "failures" not in passing


def test_a_version_6_database_takes_outside_and_keeps_its_rows(tmp_path: Path) -> None:
    db = database_at(tmp_path / "old.sqlite3", 6, now="2026-01-01T00:00:00", foreign_keys=True)
    db.execute("INSERT INTO studies (uid, created_at, source) VALUES ('1.2', 't', 'test')")
    db.execute("INSERT INTO series (study_id, uid, created_at) VALUES (1, '1.2.3', 't')")
    db.execute(
        "INSERT INTO images (study_id, created_at, filename, sha256, size, series_id, sop_instance_uid, status) "
        "VALUES (1, 't', 'a.dcm', 'ab', 1, 1, '1.2.3.4', 'done')"
    )
    db.execute(
        "INSERT INTO results (image_id, created_at, status, model, bundle_sha256) VALUES (1, 't', 'ok', '{}', 'cd')"
    )
    db.execute("INSERT INTO reviews (image_id, result_id, author, at, verdicts) VALUES (1, 1, 'dr', 't', '{}')")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE images SET status = 'outside'")
    migrate(db, "2026-12-01T00:00:00")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 16
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1, "foreign keys on again"
    assert db.execute("SELECT id, status, guard FROM results").fetchall() == [(1, "ok", None)]
    db.execute("UPDATE images SET status = 'outside'")
    db.execute("UPDATE results SET status = 'outside', guard = '{}'")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE images SET status = 'elsewhere'")
    with pytest.raises(sqlite3.IntegrityError):  # the reviews still point at results
        db.execute("DELETE FROM results")
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert {"images_study", "images_series", "images_sop", "results_image"} <= indexes


def test_an_outside_image_is_stored_listed_with_its_reason_and_viewable(
    client: FlaskClient, auth: Any, browser: FlaskClient
) -> None:
    answer = client.post("/api/v1/studies", data={"file": (io.BytesIO(_noise()), "noise.png")})
    assert answer.status_code == 422
    body = answer.get_json()
    assert body["error"] == "Not what the model reads"
    assert body["detail"].startswith("does not look like a frontal chest X-ray this model was made for")
    [image] = body["study"]["images"]
    assert image["status"] == "outside" and image["reason"] == body["detail"]
    assert image["view_sha256"], "stored, and viewable"
    [result] = image["results"]
    assert result["status"] == "outside" and result["findings"] == [] and result["guard"]["outside"] is True
    assert result["heatmaps"] == []
    auth.login("clinician")
    uid = body["study"]["uid"]
    view = browser.get(f"/studies/{uid}/images/{image['id']}/view.jpg")
    assert view.status_code == 200 and view.mimetype == "image/jpeg"
    page = browser.get(f"/studies/{uid}").get_data(as_text=True)
    assert "The image does not look like the images the AI model was made for: no AI result." in page
    assert re.search(r"<details>.*does not look like a frontal chest X-ray this model was made for", page, re.S)
    worklist = browser.get("/").get_data(as_text=True)
    assert "not diagnosed" in worklist and '<span class="flag">' not in worklist, "no row flagged AI positive"


# -- sent to another model ---------------------------------------------------------------------------------------------


def _knee_model(tmp_path: Path, guarded: bool) -> Path:
    """A second model on the box, for knees by its header: the reference's network and guard, or without a guard."""
    from edge_app.bundles.bundle import sha256_file

    folder = unguarded(tmp_path) if not guarded else Path(shutil.copytree(EMBEDDED_BUNDLE, tmp_path / "knee"))
    manifest = load_bundle(folder).manifest
    use = manifest.intended_use.model_copy(update={"body_part": "KNEE"})
    files = {name: sha256_file(folder / name) for name in manifest.files}
    write_manifest(folder, manifest.model_copy(update={"intended_use": use, "version": "9.0.0", "files": files}))
    return folder


def _add(store: Store, ds: object, name: str) -> int:
    from edge_app.imaging.header import read_header

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # type: ignore[attr-defined]
    digest, size = store.put_stream(io.BytesIO(buf.getvalue()))
    return store.add_image(digest, size, name, "test", read_header(store.file_path(digest), name)).image_id


def _chest_header_noise() -> object:
    """Noise labelled a chest CR: the header sends it to the chest model, whose guard refuses it."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.PatientID = "CR", "CHEST", "P1"
    ds.Rows = ds.Columns = 128
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(4).integers(0, 256, (128, 128), dtype=np.uint8).tobytes()
    return ds


def _results(store: Store, image_id: int) -> list[tuple[str, str, int]]:
    image = next(i for s in store.list_studies() for i in s.images if i.id == image_id)
    return [(r.status, r.model["version"], len(r.findings)) for r in image.results]


def test_an_image_sent_to_another_model_is_read_by_that_one_its_guard_still_judging(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """A chest X-ray labelled SKULL reaches no model; sent to the chest model it is diagnosed (a person overrules
    the header, the guard judges the pixels). Noise labelled CHEST is outside; sent to the knee model (the same
    guard) it is outside again. A model without a guard still goes by the header."""
    import pydicom

    from edge_app.errors import UserError
    from edge_app.inference.registry import Registry
    from edge_app.inference.worker import Worker
    from support.dicom import dicom_file

    knee, bare = load_bundle(_knee_model(tmp_path, True)), load_bundle(_knee_model(tmp_path / "bare", False))
    settings = make_settings(model={"bundle": str(EMBEDDED_BUNDLE), "extra_bundles": [str(knee.path), str(bare.path)]})
    registry = Registry.from_settings(settings)
    store = Store(tmp_path / "store")
    chest = registry.diagnosers[0].bundle
    try:
        worker = Worker(store, registry)
        skull = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
        skull.BodyPartExamined = "SKULL"
        image_id = _add(store, skull, "skull.dcm")
        assert worker.run_once() and store.image_status(image_id)[0] == "no_model"
        store.send_to_model(image_id, chest.sha256)
        assert store.image_status(image_id) == ("queued", None)
        with pytest.raises(UserError, match="already waiting for a model"):
            store.send_to_model(image_id, chest.sha256)
        assert worker.run_once() and store.image_status(image_id) == ("done", None)
        assert _results(store, image_id) == [("ok", "1.1.1", 5)]
        with pytest.raises(UserError, match=r"only an image no model read or the input guard refused .* \(done\)"):
            store.send_to_model(image_id, knee.sha256)  # a diagnosed image keeps its findings

        skull.SOPInstanceUID = skull.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        other = _add(store, skull, "skull-2.dcm")
        assert worker.run_once() and store.image_status(other)[0] == "no_model"
        store.send_to_model(other, bare.sha256)
        assert worker.run_once()
        status, reason = store.image_status(other)
        assert status == "no_model" and reason == (
            "cxr-reference 9.0.0 has no input check: it reads only what its header says it reads, and this "
            "image's does not (modality CR, body_part SKULL, view PA)"
        )

        noise = _add(store, _chest_header_noise(), "noise.dcm")
        assert worker.run_once() and store.image_status(noise)[0] == "outside"
        store.send_to_model(noise, knee.sha256)
        assert worker.run_once() and store.image_status(noise)[0] == "outside"
        assert _results(store, noise) == [("outside", "1.1.1", 0), ("outside", "9.0.0", 0)], "both kept"

        store.send_to_model(noise, "0" * 64)
        assert worker.run_once()
        status, reason = store.image_status(noise)
        assert status == "no_model" and reason is not None
        assert reason.startswith("the model it was sent to is no longer on this appliance (models: cxr-reference")
        with pytest.raises(NotFound):
            store.send_to_model(10**6, knee.sha256)
        store.purge_images("9999")
        with pytest.raises(UserError, match="the image's file was removed"):
            store.send_to_model(noise, knee.sha256)
    finally:
        registry.close()
        store.close()


def test_the_study_page_sends_an_outside_image_to_a_model_in_service(
    client: FlaskClient, auth: Any, browser: FlaskClient, app: Any
) -> None:
    from edge_app.web import services

    body = client.post("/api/v1/studies", data={"file": (io.BytesIO(_noise()), "noise.png")}).get_json()
    uid, image_id = body["study"]["uid"], body["image_id"]
    auth.login("clinician")
    page = browser.get(f"/studies/{uid}").get_data(as_text=True)
    assert "Send to another model" in page and load_bundle(EMBEDDED_BUNDLE).sha256 in page
    token = auth.csrf(f"/studies/{uid}")
    sent = browser.post(f"/studies/{uid}/images/{image_id}/model", data={"csrf_token": token, "bundle": "0" * 64})
    assert sent.status_code == 302
    assert "that model is not in service on this appliance" in browser.get(f"/studies/{uid}").get_data(as_text=True)
    token = auth.csrf(f"/studies/{uid}")
    sha = load_bundle(EMBEDDED_BUNDLE).sha256
    browser.post(f"/studies/{uid}/images/{image_id}/model", data={"csrf_token": token, "bundle": sha})
    store = services.get_from(app).store
    assert store.wait_for(image_id, 30)[0] == "outside"
    assert [r.status for r in store.get_study(uid).images[0].results] == ["outside", "outside"]
    trail = store.audit_trail()
    assert any(a["action"] == "image.send_to_model" and a["subject"] == str(image_id) for a in trail)
    missing = browser.post(f"/studies/{uid}/images/{image_id}/model", data={"bundle": sha})
    assert missing.status_code == 400 and store.image_status(image_id)[0] == "outside", "no CSRF token: nothing"

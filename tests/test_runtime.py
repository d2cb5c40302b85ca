"""The ONNX Runtime runner and the diagnosis pipeline on real images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_app.bundles.bundle import MANIFEST_NAME, load_bundle
from edge_app.config import EMBEDDED_BUNDLE
from edge_app.errors import BundleError, InferenceError, RuntimeUnavailable
from edge_app.imaging import decode, preprocess
from edge_app.inference.diagnoser import Diagnoser
from edge_app.runtime import open_runner
from edge_app.runtime.onnx import OnnxRuntimeRunner
from support.dicom import dicom_file

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def diagnoser() -> Diagnoser:
    bundle = load_bundle(EMBEDDED_BUNDLE)
    return Diagnoser(bundle, open_runner(bundle, "auto", threads=1))


def test_runner_lifecycle_and_dynamic_batch(nih_png: Path) -> None:
    bundle = load_bundle(EMBEDDED_BUNDLE)
    m = bundle.manifest
    x = preprocess(decode(nih_png).pixels, m.input, m.preprocessing)
    runner = OnnxRuntimeRunner(bundle, threads=1)
    with pytest.raises(InferenceError, match="before activate"):
        runner.infer(x)
    with runner:
        one = runner.infer(x)
        four = runner.infer(np.concatenate([x] * 4))
    assert not runner.is_active
    assert one["logits"].shape == (1, len(m.labels))
    assert four["cam"].shape[:2] == (4, len(m.labels))
    assert np.allclose(four["logits"], one["logits"], atol=1e-5)
    # The head is global-average-pool + linear: the logits are the spatial mean of the class activation map.
    assert np.allclose(one["cam"].mean(axis=(2, 3)), one["logits"], atol=1e-5)


def test_unknown_runner_is_refused() -> None:
    with pytest.raises(RuntimeUnavailable, match="unknown runner 'cuda'"):
        open_runner(load_bundle(EMBEDDED_BUNDLE), "cuda")


def test_manifest_that_disagrees_with_the_model_is_refused(tmp_path: Path) -> None:
    bundle_dir = Path(shutil.copytree(EMBEDDED_BUNDLE, tmp_path / "b"))
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    manifest["input"]["height"] = 224
    manifest["input"]["width"] = 224
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"has shape .*the manifest implies \(N, 1, 224, 224\)"):
        open_runner(load_bundle(bundle_dir))
    manifest["input"].update(height=64, width=64, name="pixels")
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"inputs are \['image'\], the manifest says \['pixels'\]"):
        open_runner(load_bundle(bundle_dir))


def test_png_diagnosis(diagnoser: Diagnoser, nih_png: Path) -> None:
    d = diagnoser.diagnose(nih_png)
    assert d.status == "ok"
    assert [f.label for f in d.findings] == list(diagnoser.bundle.manifest.labels)
    assert all(0.0 <= f.probability <= 1.0 for f in d.findings)
    positive = sorted((f for f in d.findings if f.positive), key=lambda f: -f.probability)
    assert [h.label for h in d.heatmaps] == [f.label for f in positive], "one per positive finding, in order"
    assert positive and all(h.values.shape == (4, 4) for h in d.heatmaps)
    assert set(d.timings_ms) == {"decode", "preprocess", "infer"}
    assert d.as_dict()["model"] == {
        "name": "cxr-reference",
        "version": "1.1.1",
        "precision": "fp32",
        "runner": "onnxruntime",
    }


@pytest.mark.parametrize(("a", "b"), [("RG1_UNCR.dcm", "RG1_J2KR.dcm"), ("RG1_J2KI.dcm", "RG1_UNCI.dcm")])
def test_lossless_transfer_syntaxes_give_the_same_answer(diagnoser: Diagnoser, a: str, b: str) -> None:
    """The same decisions; the JPEG 2000 form is decoded at its half-resolution level (what the model and the
    preview need), so its probabilities differ from the full decode's by a little (0.004 at most on these)."""
    fa, fb = diagnoser.diagnose(dicom_file(a)).findings, diagnoser.diagnose(dicom_file(b)).findings
    assert len(fa) == 5
    assert [f.positive for f in fa] == [f.positive for f in fb]
    assert np.allclose([f.probability for f in fa], [f.probability for f in fb], atol=0.01, rtol=0)


def test_images_the_model_is_not_for_are_rejected(diagnoser: Diagnoser) -> None:
    us = diagnoser.diagnose(dicom_file("US1_UNCR.dcm"))
    assert us.status == "rejected" and us.reason == "modality US is not one this model reads (CR, DX)"
    extremity = diagnoser.diagnose(dicom_file("RG3_UNCR.dcm"))
    assert extremity.reason == "body part EXTREMITY is not what this model reads (CHEST)"


def test_reference_model_performs_as_its_manifest_says(diagnoser: Diagnoser, nih: Path) -> None:
    """Re-measure test-split AUC through the service's own pipeline; it must match the stored figure."""
    from sklearn.metrics import roc_auc_score

    from edge_app.bundles.findings import findings
    from edge_app.bundles.manifest import Manifest
    from edge_app.imaging import DecodeLimits
    from edge_app.imaging.prepare import prepare

    with (nih / "split.csv").open() as fh:
        test = [r["image"] for r in csv.DictReader(fh) if r["split"] == "test"]
    with (nih / "labels.csv").open() as fh:
        rows = {r["Image Index"]: r for r in csv.DictReader(fh)}
    manifest: Manifest = diagnoser.bundle.manifest
    # The model's own answer for every image, the two its input guard refuses included: the figures are the model's.
    limits = DecodeLimits()
    runner = diagnoser.runner
    batches = [prepare(nih / "images" / n, n, limits, manifest).batch for n in test]
    probs = np.array([[f.probability for f in findings(manifest, runner.infer(x))] for x in batches])
    outside = [n for n in test if diagnoser.diagnose(nih / "images" / n).status == "outside"]
    assert len(outside) <= 2, "at most 1 % of the test split is refused by the guard (its manifest's figure)"
    truth = {"Abnormal": np.array([1 - int(rows[n]["No Finding"]) for n in test])}
    for label in manifest.labels[1:]:
        truth[label] = np.array([int(rows[n][label]) for n in test])
    for j, label in enumerate(manifest.labels):
        auc = roc_auc_score(truth[label], probs[:, j])
        assert auc == pytest.approx(manifest.metrics["test_split"][label]["test_auc"], abs=0.002), label


def test_an_internal_error_is_a_failed_diagnosis_not_an_exception(nih_png: Path) -> None:
    """The diagnoser is a boundary: a runner that cannot infer (here, one never activated) fails this image with
    the reason, and the next image with a working runner is diagnosed."""
    bundle = load_bundle(EMBEDDED_BUNDLE)
    d = Diagnoser(bundle, OnnxRuntimeRunner(bundle, threads=1))
    failed = d.diagnose(nih_png)
    assert failed.status == "failed" and failed.findings == []
    assert failed.reason == "internal error: InferenceError: onnxruntime runner used before activate()"
    d.runner = open_runner(bundle, threads=1)
    assert d.diagnose(nih_png).status == "ok"


def test_an_image_decoded_when_its_model_is_released_is_not_read_not_failed(nih_png: Path) -> None:
    """The service stopping under a window its worker had not finished: an image prepared before the diagnoser
    was closed, finished after, is answered "not read" (the worker queues it again), not failed for its model; a
    batch of two likewise."""
    bundle = load_bundle(EMBEDDED_BUNDLE)
    d = Diagnoser(bundle, open_runner(bundle, threads=1))
    pending = [d.begin(nih_png, f"{i}.png") for i in range(3)]
    d.close()
    for batch in ([pending[0]], pending[1:]):
        for diagnosis, p in zip(d.finish(batch), batch, strict=True):
            assert p.unavailable, p.source
            assert diagnosis.reason == "internal error: DecoderUnavailable: the model was released: the service stops"


def test_one_io_check_for_every_backend() -> None:
    """`check_io` is what ONNX Runtime, TensorRT and Triton runners all call: the manifest's one input (name,
    dtype, image shape after the batch; -1 for a dynamic dimension) and every output it names, in floats."""
    from edge_app.runtime.base import TensorInfo, check_io

    manifest = load_bundle(EMBEDDED_BUNDLE).manifest
    image = TensorInfo("image", "float32", (-1, 1, 64, 64))
    outputs = [TensorInfo(n, "float16", (-1, 5)) for n in manifest.output_names()]
    check_io(manifest, [image], outputs, "the model")
    check_io(manifest, [TensorInfo("image", "float32", (8, -1, 64, -1))], outputs, "the model")
    cases = [
        ([image, TensorInfo("mask", "float32", (-1, 1))], outputs, r"X's inputs are \['image', 'mask'\]"),
        ([TensorInfo("image", "float64", (-1, 1, 64, 64))], outputs, "X's input 'image' is float64, the manifest says"),
        ([TensorInfo("image", "float32", (-1, 3, 64, 64))], outputs, r"\(-1, 3, 64, 64\), the manifest implies \(N, 1"),
        ([TensorInfo("image", "float32", (1, 64, 64))], outputs, r"has shape \(1, 64, 64\)"),
        ([image], outputs[:-1], f"X has no output '{manifest.output_names()[-1]}'"),
        ([image], [*outputs[:-1], TensorInfo(outputs[-1].name, "int64", (-1, 2))], "is int64; a float output"),
    ]
    for inputs, outs, message in cases:
        with pytest.raises(BundleError, match=message):
            check_io(manifest, inputs, outs, "X")

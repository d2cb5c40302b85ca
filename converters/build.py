"""`edge-convert build`: a trained model to a checked, converted, gated model bundle."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from converters import fidelity, fold, graph, guard, quantize
from converters.bundle_writer import check_target, listed_files, staged_bundle
from converters.errors import ConversionError, FidelityGateFailed, ModelError
from converters.fingerprint import fingerprint
from converters.images import ImageSet, load_images, read_labels
from converters.spec import Spec
from converters.validation import validate
from edge_app import __version__
from edge_app.bundles.bundle import sha256_file, write_manifest
from edge_app.bundles.manifest import Fingerprint, InputGuard, Manifest, OutputSpec, Provenance, Validation
from edge_app.errors import EdgeAppError

log = logging.getLogger(__name__)
Precision = Literal["fp32", "fp16", "int8"]
RECOMMENDED_CALIBRATION_IMAGES = 500
REFERENCE_IMAGES = 8
AT_RISK = 32  # validation images the fallback's ranking counts flips on, at least
T = TypeVar("T")


@dataclass
class BuildInputs:
    """What `build` takes. `model` is an ONNX file; `source` is what the engineer gave (a PyTorch file, say)."""

    model: Path
    spec: Spec
    precision: Precision
    output: Path
    calibration: Path | None = None
    validation: Path | None = None
    labels: Path | None = None
    file_column: str = "file"
    source: Path | None = None


@dataclass
class Steps:
    """Each step shown as it runs (a progress bar) and summed up at the end."""

    show: bool = True
    done: list[tuple[str, float, str]] = field(default_factory=list)
    clock: Callable[[], float] = time.perf_counter  # seconds, for each step's duration

    def run(self, name: str, action: Callable[[], T], note: Callable[[T], str] = lambda _: "") -> T:
        from tqdm import tqdm

        with tqdm(
            total=1,
            desc=f"{name:<28}",
            disable=None if self.show else True,
            leave=True,
            bar_format="{desc} {bar:20} {elapsed}",
        ) as bar:
            t0 = self.clock()
            try:
                result = action()
            except EdgeAppError:
                raise
            except Exception as exc:  # a library failing on this model: a refusal that says where, never a traceback
                log.debug("step %r failed", name, exc_info=True)
                raise ModelError(f"{name} failed on this model: {type(exc).__name__}: {exc}") from exc
            bar.update(1)
        self.done.append((name, self.clock() - t0, note(result)))
        return result

    def summary(self) -> str:
        lines = [f"{'step':<28}{'seconds':>9}  result"]
        lines += [f"{name:<28}{seconds:>9.2f}  {note}" for name, seconds, note in self.done]
        return "\n".join(lines)


def build(inputs: BuildInputs, steps: Steps | None = None) -> tuple[Path, dict[str, Any] | None]:
    """Convert and gate; write the bundle only if the gate passes. Returns the bundle path and the gate report."""
    steps = steps or Steps()
    spec = inputs.spec
    check_target(inputs.output)  # before the long work, as well as when writing
    if inputs.precision != "fp32" and inputs.validation is None:
        raise ConversionError(f"{inputs.precision} needs --validation images: the fidelity gate is not optional")
    if inputs.calibration is None:
        raise ConversionError(
            "--calibration images are needed (the clinic's own or the training images, DICOM/PNG/JPEG): the input "
            "guard is fitted on them" + (", and INT8 is calibrated on them" if inputs.precision == "int8" else "")
        )

    model = steps.run("load ONNX", lambda: graph.load_model(inputs.model), lambda m: f"opset {graph.opset_of(m)}")
    model = steps.run("check and infer shapes", lambda: graph.check(model), lambda _: "ok")
    steps.run("match the spec's input", lambda: graph.check_input(model, spec.input), lambda _: spec.input.name)
    original = graph.copy(model)  # the gate's reference: the model as given, external data inlined
    model = steps.run("make batch dynamic", lambda: graph.make_batch_dynamic(model), lambda _: "first dim 'batch'")
    model = steps.run("simplify (onnxslim)", lambda: graph.simplify(model), lambda m: f"{len(m.graph.node)} nodes")
    model, _ = steps.run("fold BatchNorm chains", lambda: _clean(model, spec.input), lambda r: r[1])
    model, output = steps.run("heatmap output", lambda: _heatmap(model, spec.output), _heatmap_note)
    spec = spec.model_copy(update={"output": output})
    inputs = dataclasses.replace(inputs, spec=spec)
    calibration = steps.run("read calibration images", lambda: _images(inputs.calibration, spec), _count)
    validation = (
        steps.run("read validation images", lambda: _images(inputs.validation, spec), _count)
        if inputs.validation
        else None
    )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference = work / "original.onnx"
        graph.save(original, reference)
        fp32 = work / "fp32.onnx"
        graph.save(model, fp32)
        steps.run("run at batch 1 and 3", lambda: graph.verify_batches(fp32, spec.input), lambda _: "ok")
        model, input_guard = steps.run(
            "input guard",
            lambda: guard.fit(
                model,
                spec.input,
                spec.preprocessing,
                spec.output,
                calibration.tensors,
                validation.tensors if validation is not None else None,
            ),
            _guard_note,
        )
        graph.save(model, fp32)
        looked_at, where = (validation, inputs.validation) if validation else (calibration, inputs.calibration)
        data = f"{len(looked_at.names)} images from {where.name if where else ''}"
        print_ = steps.run(
            "fingerprint", lambda: fingerprint(looked_at, data, model, spec.input, input_guard), _fingerprint_note
        )
        truth = (
            read_labels(inputs.labels, validation.names, spec.labels, inputs.file_column)
            if inputs.labels and validation
            else None
        )
        candidate = work / "candidate.onnx"
        report: dict[str, Any] | None = None
        if inputs.precision == "fp32":
            shutil.copy(fp32, candidate)
            if validation is not None:
                report = _gate(steps, reference, candidate, spec, validation, truth, int8_of=None)
        elif inputs.precision == "fp16":
            keep = guard.guard_nodes(model)
            assert validation is not None
            probe = guard.Probe.of(model, spec.input, spec.preprocessing, validation.tensors, input_guard)
            steps.run("convert to FP16", lambda: graph.save(quantize.to_fp16(model, keep), candidate), lambda _: "ok")
            report = _gate(steps, reference, candidate, spec, validation, truth, int8_of=None, probe=probe)
        else:
            assert validation is not None
            keep = guard.guard_nodes(model)
            probe = guard.Probe.of(model, spec.input, spec.preprocessing, validation.tensors, input_guard)
            report = _int8(steps, inputs, reference, fp32, candidate, calibration, validation, truth, keep, probe)
        if report is not None and not report["passed"]:
            raise FidelityGateFailed(
                f"{inputs.precision} candidate refused by the fidelity gate: {'; '.join(report['failures'])}", report
            )
        reference_inputs = validation.tensors[:REFERENCE_IMAGES] if validation else None
        thresholds, figures = steps.run(
            "validation figures", lambda: _figures(candidate, spec, validation, truth, inputs), _figures_note
        )
        bundle = steps.run(
            "write bundle",
            lambda: _write(
                inputs, candidate, fp32, report, truth, reference_inputs, input_guard, thresholds, figures, print_
            ),
            lambda p: str(p),
        )
    return bundle, report


def _clean(model: Any, spec_input: Any) -> tuple[Any, str]:
    """Per-channel scale/shift chains folded into their Conv and Transpose pairs removed, kept only where the
    cleaned graph computes what the given one does (to 1e-4 of the outputs' range, on random inputs). Cleaning
    is a help, never a reason to refuse: anything that goes wrong keeps the graph as it was."""
    import onnxruntime as ort

    try:
        cleaned, folded = fold.fold_scale_shift(graph.copy(model))
        cleaned, cancelled = fold.cancel_transposes(cleaned)
        if not folded and not cancelled:
            return model, "nothing to fold"
        shape = spec_input.image_shape
        x = np.random.default_rng(0).uniform(-1, 1, (2, *shape)).astype(np.dtype(spec_input.dtype))
        outs = []
        for m in (model, cleaned):
            session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            outs.append(session.run(None, {spec_input.name: x}))
        for a, b in zip(*outs, strict=True):
            if np.abs(np.asarray(a, np.float64) - b).max() > 1e-4 * max(1.0, float(np.abs(a).max())):
                return model, "not folded: the folded graph computes otherwise"
    except Exception as exc:  # an op ONNX Runtime cannot run here, a graph of an unexpected shape
        log.info("graph not cleaned (%s: %s)", type(exc).__name__, exc)
        return model, f"not folded ({type(exc).__name__})"
    return cleaned, f"{folded} scale/shift node(s) folded into Conv, {cancelled} Transpose node(s) removed"


def _heatmap(model: Any, output: OutputSpec) -> tuple[Any, OutputSpec]:
    """Keep a declared heatmap output; else add a class activation map where the head is GAP + linear, or Grad-CAM
    where it is GAP + dense, ReLU, dense."""
    outputs = {o.name for o in model.graph.output}
    if output.name not in outputs:
        raise ModelError(f"the model has no output {output.name!r}; its outputs are {', '.join(sorted(outputs))}")
    if output.heatmap in outputs:
        return model, output
    model, cam = graph.add_cam(model, output.name, output.heatmap or "cam")
    if cam is None:  # a dense -> ReLU -> dense head (Keras): Grad-CAM, in the graph
        model, cam = graph.add_gradcam(model, output.name, output.heatmap or "cam")
    if cam is None and output.heatmap is not None:
        raise ModelError(
            f"the spec names a heatmap output {output.heatmap!r}, which the model lacks, and its head is neither "
            "global-average-pool + linear nor + dense, ReLU, dense, so no heatmap can be added"
        )
    return model, output.model_copy(update={"heatmap": cam})


def _heatmap_note(result: tuple[Any, OutputSpec]) -> str:
    heatmap = result[1].heatmap
    if heatmap is None:
        return "none (the head is neither GAP + linear nor GAP + dense, ReLU, dense)"
    gradcam = any(n.name == f"{heatmap}_grad" for n in result[0].graph.node)
    return f"{'Grad-CAM' if gradcam else 'class activation map'} {heatmap!r}"


def _figures(
    candidate: Path, spec: Spec, images: ImageSet | None, truth: dict[str, Any] | None, inputs: BuildInputs
) -> tuple[dict[str, float], Validation | None]:
    """Thresholds at the spec's operating point and each label's figures, on the validation images, of the model
    as bundled; without labelled validation images, the spec's thresholds and no figures (nothing validated)."""
    if not truth or images is None:
        return spec.threshold_map(), None
    probs = fidelity.predict(candidate, spec.input, spec.output, len(spec.labels), images.tensors)
    where = inputs.validation.name if inputs.validation else "validation"
    data = f"{len(images.names)} images from {where}"
    return validate(spec.labels, truth, probs, spec.threshold_map(), spec.validation, data)


def _figures_note(result: tuple[dict[str, float], Validation | None]) -> str:
    if result[1] is None:
        return "none (no --labels): no finding of this bundle will be shown as positive"
    labels = result[1].labels
    shown = [label for label, v in labels.items() if v.validated]
    return f"{len(shown)} of {len(labels)} label(s) validated: {', '.join(shown) or 'none'}"


def _fingerprint_note(print_: Fingerprint) -> str:
    return f"{print_.data}: " + ", ".join(f"{k}-bit" for k in print_.bits) + ", " + ", ".join(print_.photometric)


def _guard_note(result: tuple[Any, Any]) -> str:
    rates = result[1].rates
    held = f", held-out images refused {rates['held_out_refused']:.1%}" if "held_out_refused" in rates else ""
    return f"fitting images refused {rates['fitting_images_refused_cv']:.1%} (cross-validated){held}"


def _count(images: ImageSet) -> str:
    return f"{len(images.names)} images, {len(images.rejected)} refused"


def _images(folder: Path | None, spec: Spec) -> ImageSet:
    assert folder is not None
    return load_images(folder, spec.input, spec.preprocessing)


def _gate(
    steps: Steps,
    reference: Path,
    candidate: Path,
    spec: Spec,
    validation: ImageSet,
    truth: dict[str, Any] | None,
    int8_of: Path | None,
    label: str = "fidelity gate",
    probe: guard.Probe | None = None,
) -> fidelity.GateReport:
    """The gate's report; for an INT8 candidate (`int8_of` its FP32 graph, cleaned, as it would be bundled) also
    its speed-up over that graph and whether any node is left in INT8; with a `probe`, whether the candidate's
    input guard still says what the FP32 model's does."""

    def run() -> fidelity.GateReport:
        n = len(spec.labels)
        ref = fidelity.predict(reference, spec.input, spec.output, n, validation.tensors)
        cand = fidelity.predict(candidate, spec.input, spec.output, n, validation.tensors)
        report = fidelity.compare(spec.labels, spec.threshold_map(), ref, cand, spec.tolerance, truth)
        report["n_refused"] = len(validation.rejected)
        if probe is not None:
            report.check_guard(probe.compare(graph.load_model(candidate), spec.input), spec.tolerance)
        if int8_of is not None:
            report.check_quantized(quantize.quantized_nodes(candidate))
            x = validation.tensors[:1]
            before = fidelity.latency(int8_of, spec.input.name, x, runs=200)
            after = fidelity.latency(candidate, spec.input.name, x, runs=200)
            gated = spec.calibration.target == "onnxruntime"
            report["latency_ms"] = {"batch": len(x), "fp32_p50": before["p50_ms"], "int8_p50": after["p50_ms"]}
            report.check_speedup(before["p50_ms"] / after["p50_ms"], spec.tolerance, gated)
        return report

    return steps.run(
        label,
        run,
        lambda r: (
            f"{'PASSED' if r['passed'] else 'FAILED'}: agreement {r['decision_agreement']:.4f}, "
            f"max diff {r['max_abs_diff']:.4f}"
            + (f", input guard agreement {r['input_guard']['agreement']:.4f}" if "input_guard" in r else "")
            + (f", speed-up {r['speedup_batch1']:.2f}x" if "speedup_batch1" in r else "")
        ),
    )


def _int8(
    steps: Steps,
    inputs: BuildInputs,
    reference: Path,
    fp32: Path,
    candidate: Path,
    calibration: ImageSet,
    validation: ImageSet,
    truth: dict[str, Any] | None,
    keep: list[str],
    probe: guard.Probe,
) -> dict[str, Any]:
    """INT8 calibration, gate and fallback rounds; the `keep` nodes (the input guard's) stay FP32 throughout, and
    each round's guard is checked against the FP32 one's verdicts on the `probe` images."""
    spec = inputs.spec
    if len(calibration.names) < RECOMMENDED_CALIBRATION_IMAGES:
        log.warning(
            "only %d calibration images; %d or more representative images of this clinic are recommended",
            len(calibration.names),
            RECOMMENDED_CALIBRATION_IMAGES,
        )
    settings = spec.calibration
    cache = candidate.parent / "calibration-ranges.json"  # calibrated once, every try reads the same ranges
    excluded: list[str] = []

    def quantized(kept: list[str], out: Path) -> None:
        quantize.to_int8(fp32, out, spec.input.name, calibration.tensors, settings, [*keep, *kept], cache)

    def gated(attempt: int) -> fidelity.GateReport:
        steps.run(
            f"INT8 QDQ, try {attempt}",
            lambda: quantized(excluded, candidate),
            lambda _: f"{settings.method}, {len(excluded)} node(s) kept in FP32",
        )
        report = _gate(
            steps, reference, candidate, spec, validation, truth, int8_of=fp32, label=f"fidelity gate, try {attempt}",
            probe=probe,
        )  # fmt: skip
        report["nodes_kept_fp32"] = list(excluded)
        report["calibration"] = {
            "method": settings.method,
            "bias_correction": settings.bias_correction,
            "n_images": len(calibration.names),
        }
        return report

    report = gated(1)
    if report["passed"] or settings.max_fallback_rounds == 0:
        return report
    n = len(spec.labels)
    threshold = np.array([spec.threshold_map()[label] for label in spec.labels])
    before = fidelity.predict(reference, spec.input, spec.output, n, validation.tensors)
    after = fidelity.predict(candidate, spec.input, spec.output, n, validation.tensors)
    # Only an image whose FP32 margin to a threshold is within the first try's largest difference can flip: the
    # ranking's candidates are counted on those that flipped and the nearest others, AT_RISK in all (fewer images,
    # quicker candidates), or on every image if none is that close.
    margin = np.abs(before - threshold).min(axis=1)
    flipped_first = ((before >= threshold) != (after >= threshold)).any(axis=1)
    order = np.lexsort((margin, ~flipped_first))  # the flipped first, then by margin
    near = order[margin[order] <= float(np.abs(after - before).max())][: max(AT_RISK, int(flipped_first.sum()))]
    at_risk = validation.tensors[near] if len(near) else validation.tensors
    reference_at_risk = before[near] if len(near) else before
    computed = [node for node in quantize.computed_in_int8(candidate) if node not in keep]  # the guard's stay
    budget = max(1, math.ceil(settings.max_fallback_share * len(computed)))

    def pool() -> list[str]:
        """Twice the budget: worst SQNR first, then the nodes whose output has no Q/DQ pair of its own to judge."""
        sample = calibration.tensors[:32]
        ranked = quantize.most_sensitive_nodes(candidate, spec.input.name, sample, len(computed), set(keep))
        return [*ranked, *(node for node in computed if node not in ranked)][: 2 * budget]

    def flips(kept: list[str]) -> tuple[int, float]:
        trial = candidate.parent / "trial.onnx"
        quantize.to_int8(fp32, trial, spec.input.name, calibration.tensors, settings, kept, cache)
        probs = fidelity.predict(trial, spec.input, spec.output, n, at_risk)
        flipped = int(((probs >= threshold) != (reference_at_risk >= threshold)).any(axis=1).sum())
        return flipped, float(np.abs(probs - reference_at_risk).mean())

    report["fallback"] = {
        "computed_in_int8": len(computed),
        "budget": budget,
        "images_flipped_first": int(flipped_first.sum()),
        "images_at_risk": len(at_risk),
    }
    try:
        sensitive = steps.run("find sensitive nodes", pool, lambda nodes: f"{len(nodes)} node(s) by SQNR")
        ranked = steps.run(
            "rank by decision flips",
            lambda: quantize.rank_by_decisions(sensitive, flips, keep),
            lambda r: ", ".join(f"{node} ({flipped} flips)" for node, flipped, _ in r[:4]) or "none left",
        )
    except ModelError as exc:  # the fallback cannot go on: the first gate's numbers are the answer
        report.fail(f"the fallback stopped: {exc}")
        return report
    report["fallback"]["ranked"] = [
        {"node": node, "flips": f, "mean_abs_diff": d, "sqnr_rank": sensitive.index(node)} for node, f, d in ranked
    ]
    nodes = [node for node, _, _ in ranked]
    if not nodes:
        return report
    rounds = settings.max_fallback_rounds
    sizes = sorted({min(2**r, budget, len(nodes)) for r in range(rounds - 1)} | {min(budget, len(nodes))})
    for attempt, size in enumerate(sizes, start=2):
        excluded[:] = nodes[:size]
        fallback = report["fallback"]
        report = gated(attempt)
        report["fallback"] = fallback
        if report["passed"]:
            break
    return report


def _write(
    inputs: BuildInputs,
    candidate: Path,
    fp32: Path,
    report: dict[str, Any] | None,
    truth: dict[str, Any] | None,
    reference_inputs: Any,
    input_guard: InputGuard,
    thresholds: dict[str, float],
    figures: Validation | None,
    print_: Fingerprint,
) -> Path:
    """Assemble the bundle with the one bundle writer: all or nothing."""
    spec = inputs.spec
    out = inputs.output
    with staged_bundle(out) as staging:
        shutil.copy(candidate, staging / "model.onnx")
        if reference_inputs is not None:
            fidelity.save_reference_io(staging, fp32, spec.input.name, spec.output.name, reference_inputs)
        method = ("PyTorch exported with torch.onnx (opset 17); " if inputs.source else "") + (
            f"edge-convert build --precision {inputs.precision}: ONNX check, shape inference, dynamic batch, onnxslim"
        )
        manifest = Manifest(
            name=spec.name,
            version=spec.version,
            task=spec.task,
            labels=spec.labels,
            thresholds=thresholds,
            codes=spec.codes,
            input=spec.input,
            preprocessing=spec.preprocessing,
            output=spec.output,
            precision=inputs.precision,
            intended_use=spec.intended_use,
            provenance=Provenance(
                source_sha256=sha256_file(inputs.source or inputs.model),
                created_by=f"edge-convert {__version__}",
                created_at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
                method=method,
                calibration=(
                    f"{report['calibration']['n_images']} images from {inputs.calibration.name}, "
                    f"{report['calibration']['method']}"
                    if report and "calibration" in report and inputs.calibration
                    else None
                ),
                validation=(
                    f"{report['n_images']} images from {inputs.validation.name}"
                    if report and inputs.validation
                    else None
                ),
            ),
            metrics={"validation": {k: v for k, v in report["per_label"].items()}} if report and truth else {},
            fidelity=report,
            guard=input_guard,
            validation=figures,
            fingerprint=print_,
            attribution=spec.attribution,
            not_for_clinical_use=spec.not_for_clinical_use,
            files=listed_files(staging),
        )
        write_manifest(staging, manifest)
    return out

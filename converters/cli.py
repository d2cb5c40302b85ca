"""`edge-convert`: bring a trained model to the appliance without losing accuracy.

build     a model (ONNX) to a checked, simplified, FP32/FP16/INT8 bundle, refused if it drifts
validate  compare a bundle with its reference model on images; the report as JSON
inspect   verify a bundle (every file's hash) and print its manifest
export-triton  bundles as a Triton Inference Server model repository (a district hub)

Exit status: 0 done; 1 refused (the model, or a bundle that is missing, damaged or tampered with: the reason, and
the gate's numbers as JSON where there are some; nothing written); 2 bad usage (an option, SPEC.toml, a path that
cannot be written, what this machine lacks); 3 an internal error of edge-convert itself (the traceback is printed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from converters import export
from converters.errors import ConversionError, FidelityGateFailed, Refused
from converters.sign import generate_key, sign_bundle
from converters.spec import Tolerance, load_spec
from edge_app.bundles.bundle import load_bundle
from edge_app.errors import BundleError, EdgeAppError
from edge_app.runtime.engines.build import EngineBuildError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="convert a trained model into a gated model bundle")
    p.add_argument(
        "model",
        help="an .onnx file (opset 13+; external data beside it is read), a TorchScript file (.pt, .ts), or "
        "package.module:factory with --weights (PyTorch needs the train extra)",
    )
    p.add_argument("--weights", type=Path, help="state dict for package.module:factory")
    p.add_argument("--spec", type=Path, required=True, help="SPEC.toml (see the README)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument(
        "--calibration",
        type=Path,
        required=True,
        help="folder of the clinic's own (or the training) images: the input guard is fitted on them, and INT8 "
        "calibrated",
    )
    p.add_argument(
        "--calibration-method",
        choices=["minmax", "entropy", "percentile", "per_tensor"],
        help="overrides the spec's calibration.method",
    )
    p.add_argument("--validation", type=Path, help="folder of images for the fidelity gate")
    p.add_argument("--labels", type=Path, help="CSV: a file column and a 0/1 column per label")
    p.add_argument("--file-column", default="file", help="the CSV column naming the image files")
    p.add_argument("-o", "--output", type=Path, required=True, help="the bundle folder to create")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("validate", help="compare a bundle with its reference model on images")
    p.add_argument("bundle", type=Path)
    p.add_argument("--reference", type=Path, required=True, help="the original (FP32) ONNX model")
    p.add_argument("--data", type=Path, required=True, help="folder of images")
    p.add_argument("--labels", type=Path, help="CSV: a file column and a 0/1 column per label")
    p.add_argument("--file-column", default="file")
    p.add_argument(
        "--record",
        action="store_true",
        help="data of edge-app export --reviewed: write the agreement with its labels into the bundle's manifest "
        "(the box that exported them shows it); a signature is removed, to be made again",
    )

    p = sub.add_parser("engine", help="build and check the TensorRT engine of a bundle, into the engine cache")
    p.add_argument("bundle", type=Path)
    p.add_argument("--dla-core", type=int, help="build for this DLA core, with GPU fallback")
    p.add_argument("--workspace", type=int, default=1024, metavar="MIB", help="TensorRT workspace memory limit")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch of the optimization profile")
    p.add_argument("--cache", type=Path, help="engine cache folder (default: the appliance's)")
    p.add_argument("--timing-cache", type=Path, help="persistent TensorRT timing cache (default: in the cache)")

    p = sub.add_parser("export-triton", help="bundles as a Triton model repository (one version per bundle)")
    p.add_argument("bundles", type=Path, nargs="+")
    p.add_argument("-o", "--output", type=Path, required=True, help="the model repository (made, or added to)")
    p.add_argument(
        "--form",
        choices=["onnx", "python", "tensorrt"],
        default="onnx",
        help="onnx: Triton's ONNX Runtime backend; python: its Python backend running ONNX Runtime; "
        "tensorrt: engines built for the hub's GPU (--engines)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="max_batch_size of the model")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching's wait for more requests")
    p.add_argument("--instances", type=int, default=1, help="model instances on the hub")
    p.add_argument("--engines", type=Path, help="engine cache holding the bundles' engines (tensorrt form)")
    p.add_argument("--gpu", help="the GPU whose engines to take, where the cache holds several")

    p = sub.add_parser("keygen", help="make an Ed25519 key pair: KEY (private, 0600) and KEY.pub")
    p.add_argument("key", type=Path)

    p = sub.add_parser("sign", help="sign a bundle's manifest with an Ed25519 private key")
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", type=Path, required=True)

    p = sub.add_parser("inspect", help="verify a model bundle (every file's hash) and print its manifest")
    p.add_argument("bundle", type=Path)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="edge-convert: %(levelname)s: %(message)s")
    try:
        if args.command == "build":
            return _build(args)
        if args.command == "validate":
            return _validate(args)
        if args.command == "engine":
            return _engine(args)
        if args.command == "export-triton":
            return _export_triton(args)
        if args.command == "keygen":
            print(f"public key (copy it to the appliance's trusted keys): {generate_key(args.key)}")
            return 0
        if args.command == "sign":
            print(f"signed {args.bundle} with key {sign_bundle(args.bundle, args.key)}")
            return 0
        bundle = load_bundle(args.bundle)
        out = {"bundle": str(bundle.path), "sha256": bundle.sha256, "manifest": bundle.manifest.model_dump(mode="json")}
        print(json.dumps(out, indent=2))
        return 0
    except FidelityGateFailed as exc:
        print(json.dumps(exc.report, indent=2))
        print(f"edge-convert: {exc}; no bundle written", file=sys.stderr)
        return 1
    except (Refused, BundleError, EngineBuildError) as exc:  # the model or bundle is refused
        print(f"edge-convert: {exc}", file=sys.stderr)
        return 1
    except (EdgeAppError, OSError) as exc:  # bad usage: an option, a spec, a path, this machine
        print(f"edge-convert: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug of edge-convert's own, not the user's: say so, keep the traceback
        traceback.print_exc()
        print(f"edge-convert: internal error ({type(exc).__name__}: {exc}); please report it", file=sys.stderr)
        return 3


def _need_convert_extra() -> None:
    """Graph tools are an extra: the appliance itself never needs them."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxslim", "tqdm", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConversionError(
            "this command needs the convert extra (pip install 'edge-clinic-ai[convert]'); "
            f"missing: {', '.join(missing)}"
        )


def _build(args: argparse.Namespace) -> int:
    _need_convert_extra()
    from converters.build import BuildInputs, Steps, build

    spec = load_spec(args.spec)
    if args.calibration_method:
        calibration = spec.calibration.model_copy(update={"method": args.calibration_method})
        spec = spec.model_copy(update={"calibration": calibration})
    steps = Steps(show=not args.quiet)
    with tempfile.TemporaryDirectory() as tmp:
        model, source = Path(args.model), None
        if export.is_pytorch(args.model):
            source = args.weights or Path(args.model)
            net = steps.run("load PyTorch", lambda: export.load_module(args.model, args.weights), lambda _: "ok")
            model = Path(tmp) / "exported.onnx"
            steps.run("export to ONNX", lambda: export.export(net, spec.input, spec.output, model), lambda _: "ok")
        inputs = BuildInputs(
            model=model,
            spec=spec,
            precision=args.precision,
            output=args.output,
            calibration=args.calibration,
            validation=args.validation,
            labels=args.labels,
            file_column=args.file_column,
            source=source,
        )
        try:
            bundle, _ = build(inputs, steps)
        finally:
            print(steps.summary(), file=sys.stderr)
    print(f"bundle written: {bundle}", file=sys.stderr)
    return 0


def _engine(args: argparse.Namespace) -> int:
    from edge_app.config import load_settings
    from edge_app.runtime.engines.build import BuildOptions
    from edge_app.runtime.engines.build_process import BuildLimits, build_isolated
    from edge_app.runtime.engines.cache import EngineCache

    settings = load_settings()
    cache = EngineCache(args.cache or settings.engine_cache)
    options = BuildOptions(
        max_batch=args.max_batch,
        workspace_mib=args.workspace,
        dla_core=args.dla_core,
        timing_cache=args.timing_cache or cache.root / "timing.cache",
    )
    limits = BuildLimits(settings.model.engine_build_memory_mb, settings.model.engine_build_timeout_s)
    bundle = load_bundle(args.bundle)
    say = lambda message: print(message, file=sys.stderr)  # noqa: E731
    engine = build_isolated(bundle, cache, options, limits, say, retry=True)  # asked by a person: tried again
    if bundle.manifest.precision == "int8":  # INT8 is done when it is faster, here where it will run
        from converters.engine_speed import gate_int8_engine

        gate_int8_engine(bundle, cache, engine, options, limits, say)
    print(f"engine ready: {engine}")
    return 0


def _export_triton(args: argparse.Namespace) -> int:
    from converters.triton_export import ExportOptions, export_triton

    if args.output.exists() and not args.output.is_dir():
        raise ConversionError(f"{args.output} is a file; give a folder for the model repository")
    if args.form == "tensorrt" and args.engines is None:
        raise ConversionError("the tensorrt form needs --engines (an engine cache with engines built on the hub)")
    if not 1 <= args.max_batch <= 1024 or args.max_queue_delay_us < 0 or args.instances < 1:
        raise ConversionError("--max-batch is 1 to 1024, --max-queue-delay-us 0 or more, --instances 1 or more")
    options = ExportOptions(
        form=args.form,
        max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us,
        instances=args.instances,
        engines=args.engines,
        gpu=args.gpu,
    )
    for folder in export_triton([load_bundle(b) for b in args.bundles], args.output, options):
        print(f"{folder.parent.name} version {folder.name}: {folder}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    _need_convert_extra()
    from converters import fidelity
    from converters.images import load_images, read_labels

    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    images = load_images(args.data, m.input, m.preprocessing)
    truth = read_labels(args.labels, images.names, m.labels, args.file_column) if args.labels else None
    ref = fidelity.predict(args.reference, m.input, m.output, len(m.labels), images.tensors)
    cand = fidelity.predict(bundle.model_path, m.input, m.output, len(m.labels), images.tensors)
    tolerance = Tolerance.model_validate(m.fidelity["tolerance"]) if m.fidelity else Tolerance()
    report = fidelity.compare(m.labels, dict(m.thresholds), ref, cand, tolerance, truth)
    report["n_refused"] = len(images.rejected)
    if truth is not None:
        shown = {label: m.validated(label) for label in m.labels}
        report["agreement_with_labels"] = fidelity.agreement(m.labels, dict(m.thresholds), shown, cand, truth)
    if args.record:
        from converters.site_validation import record, site_export

        if truth is None:
            raise ConversionError("--record needs --labels (labels.csv of edge-app export --reviewed)")
        marker = site_export(args.labels, len(images.names) + len(images.rejected))
        bundle = record(bundle, marker, report["agreement_with_labels"], len(images.names))
        print(f"recorded in {bundle.path}: now sha256 {bundle.sha256} (sign it again)", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

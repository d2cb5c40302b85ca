"""`edge-convert export-triton`: bundles as a Triton Inference Server model repository, for a district hub.

One Triton model per bundle name, one numbered version per bundle version (Triton numbers versions; the
`edge_bundles` parameter maps each number to its bundle version and sha256, which the box checks before it trusts
a result). Every version folder holds the bundle's files (its manifest: preprocessing, labels, thresholds,
signature) beside the model. Forms: `onnx` (`platform: "onnxruntime_onnx"`, the official Triton containers),
`python` (Triton's Python backend running the bundle with ONNX Runtime, for a server built without the ONNX Runtime
backend, such as PyTriton's), and `tensorrt` (`platform: "tensorrt_plan"`, from engines built for the hub's GPU).
The config text is written here: Triton's model_config proto is not in tritonclient's HTTP package, and this
file is small and fixed in shape; the tests load it into a real Triton server.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from converters.errors import ConversionError
from edge_app.bundles.bundle import Bundle
from edge_app.bundles.manifest import Manifest
from edge_app.runtime.engines.cache import ENGINE_NAME, META_NAME
from edge_app.runtime.triton import BUNDLES_PARAMETER, io_shapes, model_name

FORMS = ("onnx", "python", "tensorrt")
CONFIG = "config.pbtxt"
_PYTHON_MODEL = '''"""Triton Python backend: the edge bundle in this folder, run with ONNX Runtime (by edge-convert)."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        self.session = ort.InferenceSession(str(here / "model.onnx"), providers=["CPUExecutionProvider"])
        self.input = config["input"][0]["name"]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        # DLPack both ways: the backend's own numpy bridge is built for numpy 1, DLPack holds for numpy 2 too.
        feeds = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input)) for r in requests]
        values = self.session.run(self.outputs, {self.input: np.concatenate(feeds)})
        responses, start = [], 0
        for feed in feeds:
            end = start + feed.shape[0]
            tensors = [
                pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(value[start:end]).__dlpack__())
                for name, value in zip(self.outputs, values)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses
'''


@dataclass(frozen=True)
class ExportOptions:
    form: str = "onnx"
    max_batch: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1
    engines: Path | None = None  # an engine cache, for the tensorrt form
    gpu: str | None = None  # which of its GPUs' engines, where it holds several


def _output_dims(bundle: Bundle) -> dict[str, list[int]]:
    import onnx

    model = onnx.load(str(bundle.model_path), load_external_data=False)
    dims = {}
    for value in model.graph.output:
        shape = value.type.tensor_type.shape.dim[1:]
        dims[value.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in shape]
    return dims


def _tensor(name: str, dims: list[int]) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def config_text(
    manifest: Manifest,
    output_dims: dict[str, list[int]],
    versions: dict[str, dict[str, str]],
    name: str,
    o: ExportOptions,
) -> str:
    """The config.pbtxt of one model: the manifest's input and outputs, batching, every version served."""
    image, outputs = io_shapes(manifest)
    missing = [out for out in outputs if out not in output_dims]
    if missing:
        raise ConversionError(f"the model has no output {missing[0]!r}, which the manifest names")
    how = {
        "onnx": 'platform: "onnxruntime_onnx"',
        "python": 'backend: "python"',
        "tensorrt": 'platform: "tensorrt_plan"',
    }
    kind = "KIND_GPU" if o.form == "tensorrt" else "KIND_CPU"
    lines = [
        f'name: "{name}"',
        how[o.form],
        f"max_batch_size: {o.max_batch}",
        "input [\n" + _tensor(manifest.input.name, image) + "\n]",
        "output [\n" + ",\n".join(_tensor(out, output_dims[out]) for out in outputs) + "\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {o.max_queue_delay_us}\n}}",
        f"instance_group [\n  {{\n    kind: {kind}\n    count: {o.instances}\n  }}\n]",
        "version_policy: { all { } }",
    ]
    if o.form == "onnx":
        lines.append('default_model_filename: "model.onnx"')
    if o.form == "tensorrt":
        lines.append(f'default_model_filename: "{ENGINE_NAME}"')
    parameter = json.dumps(json.dumps(versions, sort_keys=True))  # JSON, quoted as a proto string
    lines.append(f'parameters {{\n  key: "{BUNDLES_PARAMETER}"\n  value: {{ string_value: {parameter} }}\n}}')
    return "\n".join(lines) + "\n"


def _existing(folder: Path) -> dict[str, dict[str, str]]:
    """The versions an earlier export put in this model's folder (from its config's parameter)."""
    try:
        text = (folder / CONFIG).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    marker = f'key: "{BUNDLES_PARAMETER}"'
    if marker not in text:
        raise ConversionError(f"{folder} holds a Triton model that edge-convert did not write: choose another -o")
    quoted = re.search(r'string_value: ("(?:[^"\\]|\\.)*")', text.split(marker, 1)[1])
    if quoted is None:
        raise ConversionError(f"{folder / CONFIG} has no readable {BUNDLES_PARAMETER}: choose another -o")
    versions: dict[str, dict[str, str]] = json.loads(json.loads(quoted.group(1)))
    return versions


def _engine_for(bundle: Bundle, o: ExportOptions) -> Path:
    assert o.engines is not None
    found = []
    for meta_path in sorted(o.engines.glob(f"*/{META_NAME}")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("bundle_sha256") != bundle.sha256 or (o.gpu is not None and meta.get("gpu_name") != o.gpu):
            continue
        if meta.get("dla_core") is not None:
            continue  # a DLA engine has one batch size: not for a hub's dynamic batching
        built_for = meta.get("build", {}).get("max_batch", 0)
        if built_for < o.max_batch:
            raise ConversionError(
                f"the engine of {bundle.manifest.name} in {meta_path.parent} takes batches up to {built_for}, "
                f"--max-batch is {o.max_batch}: build it with --max-batch {o.max_batch}, or export with less"
            )
        found.append((meta_path.parent / ENGINE_NAME, meta))
    if not found:
        raise ConversionError(
            f"no engine of {bundle.manifest.name} {bundle.manifest.version} in {o.engines}"
            + (f" for {o.gpu}" if o.gpu else "")
            + ": build it on the hub with edge-convert engine"
        )
    if len(found) > 1:
        gpus = ", ".join(sorted({str(meta.get("gpu_name")) for _, meta in found}))
        raise ConversionError(f"engines of {bundle.manifest.name} for several GPUs ({gpus}): choose one with --gpu")
    return found[0][0]


def export_triton(bundles: Iterable[Bundle], repository: Path, options: ExportOptions) -> list[Path]:
    """Write (or add to) a Triton model repository; return the version folders written."""
    if options.form not in FORMS:
        raise ConversionError(f"unknown form {options.form!r}; choose one of {', '.join(FORMS)}")
    by_name: dict[str, list[Bundle]] = {}
    for bundle in bundles:
        name = model_name(bundle.manifest) + ("_tensorrt" if options.form == "tensorrt" else "")
        by_name.setdefault(name, []).append(bundle)
    written = []
    for name, group in by_name.items():
        folder = repository / name
        versions = _existing(folder)
        dims = _output_dims(group[0])
        config = None
        for bundle in group:
            if _output_dims(bundle) != dims or io_shapes(bundle.manifest) != io_shapes(group[0].manifest):
                raise ConversionError(
                    f"{bundle.manifest.name} {bundle.manifest.version} has other inputs or outputs than "
                    f"{group[0].manifest.version}: one Triton model serves versions of one shape"
                )
            number = next((v for v, b in versions.items() if b["sha256"] == bundle.sha256), None)
            if number is None:
                number = str(max((int(v) for v in versions), default=0) + 1)
            versions[number] = {"version": bundle.manifest.version, "sha256": bundle.sha256}
            target = folder / number
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(bundle.path, target)
            if options.form == "python":
                (target / "model.py").write_text(_PYTHON_MODEL, encoding="utf-8")
            if options.form == "tensorrt":
                engine = _engine_for(bundle, options)
                shutil.copy(engine, target / ENGINE_NAME)
                shutil.copy(engine.parent / META_NAME, target / META_NAME)
            written.append(target)
            config = config_text(bundle.manifest, dims, versions, name, options)
        if config is not None:
            (folder / CONFIG).write_text(config, encoding="utf-8")
    return written

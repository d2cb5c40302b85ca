"""Build a TensorRT 10 engine from a bundle's ONNX, check it against the bundle's reference outputs, cache it.

Runs in the process of `edge_app.runtime.engines.build_process` (a build of its own, with its own memory limit);
`tensorrt` is imported only when a build starts.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_app.bundles.bundle import Bundle
from edge_app.bundles.manifest import GUARD_PREFIX
from edge_app.errors import EdgeAppError
from edge_app.runtime.engines.cache import EngineCache
from edge_app.runtime.onnx import OnnxRuntimeRunner
from edge_app.runtime.reference import guard_disagreements, reference_drift, tolerance
from edge_app.runtime.tensorrt import TensorRTRunner, current_platform, require_tensorrt, trt_logger
from edge_app.system.fileio import atomic_write

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)


class EngineBuildError(EdgeAppError):
    """TensorRT could not build an engine, or the engine drifts from the bundle's reference outputs."""


@dataclass(frozen=True)
class BuildOptions:
    max_batch: int = 8
    workspace_mib: int = 1024
    dla_core: int | None = None
    timing_cache: Path | None = None


def build_engine(
    bundle: Bundle,
    cache: EngineCache,
    options: BuildOptions,
    progress: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Build (or find) the engine for this bundle on this machine, check it against the bundle's reference
    outputs, and return its path in the cache. `cancel` set stops the build at its next step."""
    platform = current_platform(options.dla_core)
    cached = cache.lookup(bundle, platform, options.max_batch)
    if cached is not None:
        return cached
    plan = _build_plan(bundle, options, progress or log.info, cancel or threading.Event())
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "engine.plan"
        candidate.write_bytes(plan)
        drift = check_against_reference(bundle, candidate, options.max_batch, options.dla_core)
    return cache.store(
        bundle,
        platform,
        plan,
        {**asdict(options), "timing_cache": str(options.timing_cache), "reference_max_abs_diff": drift},
    )


def _build_plan(
    bundle: Bundle, options: BuildOptions, progress: Callable[[str], None], cancel: threading.Event
) -> bytes:
    require_tensorrt()
    import tensorrt as trt

    m = bundle.manifest
    if options.dla_core is not None and m.precision == "fp32":
        raise EngineBuildError(
            "the DLA runs FP16 or INT8 only and this bundle is fp32: convert it with --precision fp16 (or int8), "
            "or build for the GPU"
        )
    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)  # keeps a reference to the network it fills
    if not parser.parse_from_file(str(bundle.model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser refuses {bundle.model_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if m.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if m.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the graph's Q/DQ nodes
    if m.precision in ("fp16", "int8") and m.guard is not None:
        _guard_in_fp32(network)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    spec = m.input
    image = spec.image_shape
    profile = builder.create_optimization_profile()
    most = trt.Dims([options.max_batch, *image])
    # The DLA takes no dynamic shapes (min = opt = max): a DLA engine has one batch size, max_batch.
    least = most if options.dla_core is not None else trt.Dims([1, *image])
    profile.set_shape(spec.name, least, least, most)
    config.add_optimization_profile(profile)
    if options.dla_core is not None:
        if builder.num_DLA_cores <= options.dla_core:
            raise EngineBuildError(f"DLA core {options.dla_core} asked for; this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    timing = options.timing_cache
    cache_bytes = timing.read_bytes() if timing is not None and timing.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(cache_bytes), False):
        progress("the timing cache is of another TensorRT or GPU: starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
    config.progress_monitor = _progress_monitor(progress, cancel)

    progress(f"building the {m.precision.upper()} TensorRT {trt.__version__} engine of {m.name} {m.version}")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        if cancel.is_set():
            raise EngineBuildError("the engine build was cancelled")
        raise EngineBuildError("TensorRT could not build the engine (see its log above)")
    learnt = config.get_timing_cache()
    if timing is not None and learnt is not None:  # a help for the next build, never a reason to fail this one
        timing.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(timing, bytes(learnt.serialize()), mode=0o644)
    return bytes(plan)


def _guard_in_fp32(network: trt.INetworkDefinition) -> None:
    """Keep the input guard's layers in FP32, as the bundle's ONNX keeps its nodes: its squared distances do not
    fit FP16's range. The ONNX parser names a layer after its node (`guard_...`), with a suffix where a node makes
    several layers."""
    import tensorrt as trt

    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if GUARD_PREFIX in layer.name:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


def _progress_monitor(report: Callable[[str], None], cancel: threading.Event) -> Any:
    import tensorrt as trt

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            report(f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return not cancel.is_set()  # False: TensorRT stops the build

        def phase_finish(self, phase_name: str) -> None:
            report(f"{phase_name}: done")

    return Progress()


def check_against_reference(bundle: Bundle, engine: Path, max_batch: int, dla_core: int | None = None) -> float:
    """Run the bundle's stored reference inputs through the engine; refuse it beyond the bundle's tolerance, or
    where its input guard does not give ONNX Runtime's verdicts on them."""
    with TensorRTRunner(bundle, engine, max_batch, dla_core) as runner, OnnxRuntimeRunner(bundle, 1) as onnx:
        drift = reference_drift(bundle, runner)
        disagreements = guard_disagreements(bundle, runner, onnx)
    limit = tolerance(bundle)
    if drift > limit:
        raise EngineBuildError(
            f"the engine drifts from the bundle's reference outputs: max probability difference {drift:.4f} > "
            f"{limit}; engine refused"
        )
    if disagreements:
        raise EngineBuildError(
            "the engine's input guard does not judge the bundle's reference inputs as ONNX Runtime does ("
            + "; ".join(disagreements)
            + "); engine refused"
        )
    return drift

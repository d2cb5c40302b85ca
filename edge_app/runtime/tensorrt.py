"""TensorRT 10 on the Jetson, with CUDA through cuda-python. `tensorrt` and `cuda` are imported only when used.

Buffers are allocated once at activation for the largest batch of the engine's optimization profile: page-locked
host memory and device memory, one CUDA stream, tensors bound with `set_tensor_address`, run with
`execute_async_v3` (after TensorRT 10.3's `samples/python/common_runtime.py`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.bundles.bundle import Bundle
from edge_app.bundles.manifest import Manifest
from edge_app.errors import BundleError, InferenceError, RuntimeUnavailable
from edge_app.runtime import cuda
from edge_app.runtime.base import Runner, TensorInfo, check_io
from edge_app.runtime.engines.cache import Platform

_logger: Any = None  # the process's one TensorRT logger, made on first use


# What a Python binding built against numpy 1.x says when imported under numpy 2 (numpy's own messages).
_NUMPY_ABI = ("compiled using NumPy 1.x", "_ARRAY_API not found", "numpy.core.multiarray failed to import")


def import_problem(timeout_s: float = 60.0) -> str | None:
    """Why `import tensorrt` fails in this installation's Python, in plain words; None where it imports. Tried in
    a child process: a binding built for another numpy may crash the interpreter that imports it."""
    import subprocess
    import sys

    probe = "import tensorrt, sys; sys.exit(0 if getattr(tensorrt, '__file__', None) else 3)"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"`import tensorrt` did not finish within {timeout_s:g} s"
    if done.returncode == 0:
        return None
    if done.returncode == 3:
        return f"only TensorRT's type stubs are installed, not TensorRT; {cuda.JETSON_HINT}"
    if any(sign in done.stderr for sign in _NUMPY_ABI):
        return (
            f"TensorRT's Python bindings were built against numpy 1.x and this installation has numpy "
            f"{np.__version__}: install the Jetson kit again (it carries numpy<2), or run "
            f"`pip install 'numpy<2'` in the service's virtual environment"
        )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if lines and lines[-1].startswith("ModuleNotFoundError"):
        return f"TensorRT is not installed ({lines[-1]}); {cuda.JETSON_HINT}"
    cause = lines[-1] if lines else f"the interpreter ended with status {done.returncode}"
    return f"`import tensorrt` fails: {cause}"


def require_tensorrt() -> None:
    """Raise `RuntimeUnavailable`, saying so plainly, where this machine has no TensorRT.

    Callers then `import tensorrt` themselves, so that mypy checks their calls against the TensorRT 10 stubs."""
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeUnavailable(f"TensorRT is not available on this machine ({exc}); {cuda.JETSON_HINT}") from None
    if getattr(tensorrt, "__file__", None) is None:  # only the type stubs (tensorrt-stubs): a namespace package
        raise RuntimeUnavailable(f"TensorRT is not available on this machine (only its type stubs); {cuda.JETSON_HINT}")


def trt_logger() -> Any:
    """The one `tensorrt.Logger` of this process (TensorRT keeps a logger per process; warnings and up)."""
    global _logger
    import tensorrt as trt

    if _logger is None or not isinstance(_logger, trt.Logger):
        _logger = trt.Logger(trt.Logger.WARNING)
    return _logger


def current_platform(dla_core: int | None = None) -> Platform:
    """This machine's TensorRT version and GPU, the engine cache's key."""
    require_tensorrt()
    import tensorrt as trt

    gpu = cuda.device()
    return Platform(
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        sm_count=gpu.sm_count,
        memory_mb=gpu.memory_mb,
        l4t_release=cuda.l4t_release(),
        dla_core=dla_core,
    )


@dataclass(frozen=True)
class EngineTensor:
    """One I/O tensor of an engine, as the engine reports it (-1 for a dynamic dimension)."""

    name: str
    is_input: bool
    dtype: str
    shape: tuple[int, ...]


def check_engine_io(tensors: list[EngineTensor], manifest: Manifest) -> None:
    """The engine's inputs and outputs are the manifest's (`check_io`)."""
    inputs, outputs = (
        [TensorInfo(t.name, t.dtype, t.shape) for t in tensors if t.is_input is io] for io in (True, False)
    )
    check_io(manifest, inputs, outputs, "the engine")


def _dims(dims: Any) -> tuple[int, ...]:
    return tuple(int(dims[j]) for j in range(len(dims)))


class TensorRTRunner(Runner):
    """Runs a serialized engine built from the bundle (see `edge_app.runtime.engines.build`).

    A DLA engine (`dla_core`) is loaded with `IRuntime.DLA_core` set. An engine with a fixed batch (DLA engines
    have min = opt = max) gets smaller batches padded to it."""

    name = "tensorrt"
    takes_batches = True  # a batch past the engine's largest is run in parts, one short of a fixed one padded

    def __init__(self, bundle: Bundle, engine_path: Path, max_batch: int = 8, dla_core: int | None = None) -> None:
        super().__init__(bundle)
        self.engine_path = engine_path
        self.max_batch = max_batch
        self.dla_core = dla_core
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._batch = (1, max_batch)

    def _activate(self) -> None:
        require_tensorrt()
        import tensorrt as trt

        rt = cuda.cudart()
        cuda.device()
        runtime = trt.Runtime(trt_logger())
        if self.dla_core is not None:
            runtime.DLA_core = self.dla_core
        engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise BundleError(f"TensorRT cannot load the engine {self.engine_path} (built by another version?)")
        dtypes = {
            trt.DataType.FLOAT: "float32",
            trt.DataType.HALF: "float16",
            trt.DataType.INT8: "int8",
            trt.DataType.INT32: "int32",
            trt.DataType.INT64: "int64",
            trt.DataType.BOOL: "bool",
        }
        tensors = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = engine.get_tensor_dtype(name)
            if dtype not in dtypes:
                raise BundleError(f"engine tensor {name!r} has type {dtype}, which the runner does not handle")
            tensors.append(
                EngineTensor(
                    name=name,
                    is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    dtype=dtypes[dtype],
                    shape=_dims(engine.get_tensor_shape(name)),
                )
            )
        check_engine_io(tensors, self.bundle.manifest)
        image = self.bundle.manifest.input.name
        smallest, _, largest = (_dims(d) for d in engine.get_tensor_profile_shape(image, 0))
        if largest[0] < self.max_batch and smallest[0] != largest[0]:
            raise BundleError(
                f"the engine's profile takes batches up to {largest[0]}, model.max_batch is {self.max_batch}: "
                "it must be rebuilt"
            )
        context = engine.create_execution_context()
        if not context.set_input_shape(image, largest):
            raise BundleError(f"the engine refuses its own largest input shape {largest}")
        buffers: dict[str, tuple[EngineTensor, cuda.Buffer]] = {}
        try:
            for t in tensors:
                shape = _dims(context.get_tensor_shape(t.name))
                buffer = cuda.Buffer(np.dtype(t.dtype), int(np.prod(shape)))
                buffers[t.name] = (t, buffer)
                if not context.set_tensor_address(t.name, buffer.device):
                    raise BundleError(f"TensorRT refuses the address of tensor {t.name!r}")
            stream = cuda.check(rt.cudaStreamCreate())
        except BaseException:
            for _, buffer in buffers.values():
                buffer.free()
            raise
        self._state = {
            "engine": engine,
            "context": context,
            "buffers": buffers,
            "stream": stream,
        }
        self._batch = (smallest[0], largest[0])

    def _deactivate(self) -> None:
        with self._lock:  # never under an inference of another thread
            s, self._state = self._state, {}
        for _, buffer in s.get("buffers", {}).values():
            buffer.free()
        if "stream" in s:
            cuda.cudart().cudaStreamDestroy(s["stream"])

    def _infer(self, batch: NDArray[np.generic]) -> dict[str, NDArray[np.float32]]:
        smallest, largest = self._batch
        if batch.shape[0] > largest:
            parts = [self._infer(batch[i : i + largest]) for i in range(0, batch.shape[0], largest)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        count = batch.shape[0]
        if count < smallest:  # a fixed-batch (DLA) engine: pad, then keep the real rows
            batch = np.concatenate([batch, np.zeros((smallest - count, *batch.shape[1:]), batch.dtype)])
        with self._lock:
            s = self._state
            if not s:
                raise InferenceError("the TensorRT runner was deactivated")
            context, stream = s["context"], int(s["stream"])
            name = self.bundle.manifest.input.name
            _, image = s["buffers"][name]
            flat = np.ascontiguousarray(batch, dtype=image.host.dtype).ravel()
            image.host[: flat.size] = flat
            if not context.set_input_shape(name, tuple(batch.shape)):
                raise InferenceError(f"the engine refuses input shape {batch.shape}")
            image.to_device(stream, flat.nbytes)
            if not context.execute_async_v3(stream):
                raise InferenceError("TensorRT execution failed")
            shapes = {}
            for tensor, buffer in s["buffers"].values():
                if not tensor.is_input:
                    shapes[tensor.name] = _dims(context.get_tensor_shape(tensor.name))
                    buffer.to_host(stream, int(np.prod(shapes[tensor.name])) * buffer.host.itemsize)
            cuda.check(cuda.cudart().cudaStreamSynchronize(stream))
            return {
                k: np.array(s["buffers"][k][1].host[: int(np.prod(shape))].reshape(shape)[:count], dtype=np.float32)
                for k, shape in shapes.items()
            }

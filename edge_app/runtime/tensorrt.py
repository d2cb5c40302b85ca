"""TensorRT 10 + pycuda on the Jetson. `tensorrt` and `pycuda` are imported only when this runner is used.

Buffers are allocated once at activation for the engine's largest batch: page-locked host memory and device
memory (pycuda), one CUDA stream, tensors bound with `set_tensor_address`, run with `execute_async_v3`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.bundle import Bundle
from edge_app.errors import BundleError, InferenceError, RuntimeUnavailable
from edge_app.manifest import Manifest
from edge_app.runtime.base import Runner
from edge_app.runtime.engine_cache import Platform

_JETSON_HINT = (
    "on a Jetson, TensorRT comes with JetPack 6 (python3-libnvinfer): create the virtual environment with "
    "--system-site-packages; pycuda is built on the device with pip install '.[jetson]'"
)


def require_tensorrt() -> None:
    """Raise `RuntimeUnavailable`, saying so plainly, where this machine has no TensorRT.

    Callers then `import tensorrt` themselves, so that mypy checks their calls against the TensorRT 10 stubs."""
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeUnavailable(f"TensorRT is not available on this machine ({exc}); {_JETSON_HINT}") from None
    if getattr(tensorrt, "__file__", None) is None:  # only the type stubs (tensorrt-stubs): a namespace package
        raise RuntimeUnavailable(f"TensorRT is not available on this machine (only its type stubs); {_JETSON_HINT}")


def import_cuda() -> Any:
    """`pycuda.driver`, initialised, or `RuntimeUnavailable` where there is no pycuda or no CUDA GPU."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise RuntimeUnavailable(f"pycuda is not available on this machine ({exc}); {_JETSON_HINT}") from None
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            raise RuntimeUnavailable("no CUDA GPU on this machine")
    except cuda.Error as exc:
        raise RuntimeUnavailable(f"no usable CUDA GPU on this machine ({exc})") from None
    return cuda


def current_platform(dla_core: int | None = None) -> Platform:
    """This machine's TensorRT version and GPU, the engine cache's key."""
    require_tensorrt()
    import tensorrt as trt

    cuda = import_cuda()
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return Platform(str(trt.__version__), str(device.name()), f"{major}.{minor}", dla_core)


@dataclass(frozen=True)
class EngineTensor:
    """One I/O tensor of an engine, as the engine reports it (-1 for a dynamic dimension)."""

    name: str
    is_input: bool
    dtype: str
    shape: tuple[int, ...]


def check_engine_io(tensors: list[EngineTensor], manifest: Manifest) -> None:
    """The engine's inputs and outputs are the manifest's: names, dtypes, layout and image size."""
    spec = manifest.input
    inputs = [t for t in tensors if t.is_input]
    outputs = {t.name: t for t in tensors if not t.is_input}
    if [t.name for t in inputs] != [spec.name]:
        raise BundleError(f"the engine's inputs are {[t.name for t in inputs]}, the manifest says [{spec.name!r}]")
    (image,) = inputs
    if image.dtype != spec.dtype:
        raise BundleError(f"engine input {spec.name!r} is {image.dtype}, the manifest says {spec.dtype}")
    expected = (
        (spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, spec.channels)
    )
    if len(image.shape) != 4 or image.shape[1:] != expected:
        raise BundleError(f"engine input {spec.name!r} has shape {image.shape}, the manifest implies (N, {expected})")
    for name in filter(None, (manifest.output.name, manifest.output.heatmap)):
        if name not in outputs:
            raise BundleError(f"the engine has no output {name!r} (it has {', '.join(sorted(outputs))})")
        if outputs[name].dtype not in ("float32", "float16"):
            raise BundleError(f"engine output {name!r} is {outputs[name].dtype}; a float output is expected")


class TensorRTRunner(Runner):
    """Runs a serialized engine built from the bundle (see `edge_app.runtime.tensorrt_build`)."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, engine_path: Path, max_batch: int = 8) -> None:
        super().__init__(bundle)
        self.engine_path = engine_path
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {}

    def _activate(self) -> None:
        require_tensorrt()
        import tensorrt as trt

        cuda = import_cuda()
        ctx = cuda.Device(0).retain_primary_context()
        ctx.push()
        try:
            logger = trt.Logger(trt.Logger.WARNING)
            engine = trt.Runtime(logger).deserialize_cuda_engine(self.engine_path.read_bytes())
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
                dims = engine.get_tensor_shape(name)
                dtype = engine.get_tensor_dtype(name)
                if dtype not in dtypes:
                    raise BundleError(f"engine tensor {name!r} has type {dtype}, which the runner does not handle")
                tensors.append(
                    EngineTensor(
                        name=name,
                        is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                        dtype=dtypes[dtype],
                        shape=tuple(dims[j] for j in range(len(dims))),
                    )
                )
            check_engine_io(tensors, self.bundle.manifest)
            context = engine.create_execution_context()
            buffers = {}
            for t in tensors:
                shape = tuple(self.max_batch if d < 0 else d for d in t.shape)
                host = cuda.pagelocked_empty(int(np.prod(shape)), np.dtype(t.dtype))
                device = cuda.mem_alloc(host.nbytes)
                context.set_tensor_address(t.name, int(device))
                buffers[t.name] = (t, host, device)
            self._state = {
                "cuda": cuda,
                "ctx": ctx,
                "engine": engine,
                "context": context,
                "buffers": buffers,
                "stream": cuda.Stream(),
            }
        finally:
            ctx.pop()

    def _deactivate(self) -> None:
        ctx = self._state.get("ctx")
        if ctx is None:
            return
        ctx.push()  # device buffers are freed as their last reference goes: do it inside their context
        try:
            self._state = {}
        finally:
            ctx.pop()
            ctx.detach()

    def _infer(self, batch: NDArray[np.generic]) -> dict[str, NDArray[np.float32]]:
        if batch.shape[0] > self.max_batch:
            parts = [self._infer(batch[i : i + self.max_batch]) for i in range(0, batch.shape[0], self.max_batch)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        s = self._state
        cuda, context, stream = s["cuda"], s["context"], s["stream"]
        name = self.bundle.manifest.input.name
        with self._lock:
            s["ctx"].push()
            try:
                _, host_in, dev_in = s["buffers"][name]
                flat = np.ascontiguousarray(batch, dtype=host_in.dtype).ravel()
                host_in[: flat.size] = flat
                if not context.set_input_shape(name, tuple(batch.shape)):
                    raise InferenceError(f"the engine refuses input shape {batch.shape}")
                cuda.memcpy_htod_async(dev_in, host_in, stream)
                if not context.execute_async_v3(stream.handle):
                    raise InferenceError("TensorRT execution failed")
                results = {}
                for tensor, host, device in s["buffers"].values():
                    if tensor.is_input:
                        continue
                    dims = context.get_tensor_shape(tensor.name)
                    shape = tuple(dims[j] for j in range(len(dims)))
                    cuda.memcpy_dtoh_async(host, device, stream)
                    results[tensor.name] = (host, shape)
                stream.synchronize()
            finally:
                s["ctx"].pop()
        return {
            k: np.array(h[: int(np.prod(shape))].reshape(shape), dtype=np.float32) for k, (h, shape) in results.items()
        }

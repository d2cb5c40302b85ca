"""CUDA through NVIDIA's cuda-python (`cuda.bindings.runtime`), as TensorRT 10.3's own Python samples use it.

cuda-python ships wheels for the Jetson (JetPack 6: CUDA 12.6, Python 3.10; no compiler needed on the box), and
its runtime API binds the device's primary context in every thread, so the service's threads need no context
pushing. Imported only where the TensorRT runner runs; every call's status is checked.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.errors import InferenceError, RuntimeUnavailable

JETSON_HINT = (
    "on a Jetson, TensorRT comes with JetPack 6 (python3-libnvinfer): create the virtual environment with "
    "--system-site-packages and install cuda-python with pip install '.[jetson]'"
)
L4T_RELEASE_FILE = Path("/etc/nv_tegra_release")


class CudaError(InferenceError):
    """A CUDA call failed."""


def cudart() -> Any:
    """`cuda.bindings.runtime`, or `RuntimeUnavailable` where cuda-python is not installed."""
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise RuntimeUnavailable(f"cuda-python is not available on this machine ({exc}); {JETSON_HINT}") from None
    return runtime


def check(result: Any) -> Any:
    """The value of a cuda-python call (a tuple led by its status): None, one value or a tuple of them."""
    rt = cudart()
    status, *values = result if isinstance(result, tuple) else (result,)
    if status != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(status)
        raise CudaError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    return None if not values else values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class Device:
    """What the engine cache needs to tell one GPU from another."""

    name: str
    compute_capability: str
    sm_count: int
    memory_mb: int


def device() -> Device:
    """GPU 0, or `RuntimeUnavailable` where there is none or CUDA cannot start."""
    rt = cudart()
    try:
        count = check(rt.cudaGetDeviceCount())
    except CudaError as exc:
        raise RuntimeUnavailable(f"no usable CUDA GPU on this machine ({exc})") from None
    if not count:
        raise RuntimeUnavailable("no CUDA GPU on this machine")
    props = check(rt.cudaGetDeviceProperties(0))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return Device(
        name=name.rstrip("\x00"),
        compute_capability=f"{props.major}.{props.minor}",
        sm_count=int(props.multiProcessorCount),
        memory_mb=int(props.totalGlobalMem) >> 20,
    )


def l4t_release(path: Path = L4T_RELEASE_FILE) -> str:
    """The Jetson Linux release (e.g. "R36.3.0") from /etc/nv_tegra_release; "" off a Jetson."""
    try:
        first = path.read_text(encoding="ascii", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return ""
    # "# R36 (release), REVISION: 3.0, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ..."
    fields = dict(part.strip().split(": ", 1) for part in first.split(",")[1:] if ": " in part)
    major = first.lstrip("# ").split(" ", 1)[0]
    return f"{major}.{fields['REVISION']}" if major.startswith("R") and "REVISION" in fields else major


class Buffer:
    """One tensor's page-locked host array and device memory of the same size."""

    def __init__(self, dtype: np.dtype[Any], count: int) -> None:
        rt = cudart()
        self.nbytes = int(count) * dtype.itemsize
        self.device: int = check(rt.cudaMalloc(self.nbytes))
        try:
            self._host_ptr: int = check(rt.cudaMallocHost(self.nbytes))
        except CudaError:
            rt.cudaFree(self.device)
            raise
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self._host_ptr))
        self.host: NDArray[Any] = np.frombuffer(memoryview(raw), dtype=dtype, count=count)

    def to_device(self, stream: Any, nbytes: int) -> None:
        rt = cudart()
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(rt.cudaMemcpyAsync(self.device, self._host_ptr, nbytes, kind, stream))

    def to_host(self, stream: Any, nbytes: int) -> None:
        rt = cudart()
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(rt.cudaMemcpyAsync(self._host_ptr, self.device, nbytes, kind, stream))

    def free(self) -> None:
        rt = cudart()
        del self.host
        rt.cudaFreeHost(self._host_ptr)
        rt.cudaFree(self.device)

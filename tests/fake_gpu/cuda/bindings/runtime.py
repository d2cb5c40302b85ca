"""The part of `cuda.bindings.runtime` the TensorRT runner calls; memory is real memory at real addresses.

Every call returns a tuple led by a `cudaError_t`, as cuda-python's do. A copy that would run past either end of
an allocation is refused with `cudaErrorInvalidValue` instead of corrupting memory.
"""

from __future__ import annotations

import ctypes
import enum
import os
import threading
from dataclasses import dataclass


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorUnknown = 999


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStream_t:
    _next = 1

    def __init__(self) -> None:
        self.handle = cudaStream_t._next
        cudaStream_t._next += 1

    def __int__(self) -> int:
        return self.handle


@dataclass
class cudaDeviceProp:
    name: bytes
    major: int
    minor: int
    multiProcessorCount: int
    totalGlobalMem: int


_lock = threading.Lock()
_allocations: dict[int, ctypes.Array[ctypes.c_char]] = {}  # device and pinned host memory alike, by address


def _fault() -> bool:
    return os.environ.get("FAKE_TRT_FAULT") == "cuda"


def cudaGetErrorName(error: cudaError_t) -> tuple[cudaError_t, bytes]:
    return cudaError_t.cudaSuccess, cudaError_t(error).name.encode()


def cudaGetDeviceCount() -> tuple[cudaError_t, int]:
    if _fault():
        return cudaError_t.cudaErrorUnknown, 0
    count = int(os.environ.get("FAKE_GPU_COUNT", "1"))
    return (cudaError_t.cudaSuccess, count) if count else (cudaError_t.cudaErrorNoDevice, 0)


def cudaGetDeviceProperties(device: int) -> tuple[cudaError_t, cudaDeviceProp | None]:
    if device >= int(os.environ.get("FAKE_GPU_COUNT", "1")):
        return cudaError_t.cudaErrorInvalidValue, None
    return cudaError_t.cudaSuccess, cudaDeviceProp(
        name=os.environ.get("FAKE_GPU_NAME", "Orin").encode(),
        major=8,
        minor=7,
        multiProcessorCount=int(os.environ.get("FAKE_GPU_SMS", "8")),
        totalGlobalMem=int(os.environ.get("FAKE_GPU_MEMORY_MB", "7620")) << 20,
    )


def _allocate(size: int) -> tuple[cudaError_t, int]:
    if _fault():
        return cudaError_t.cudaErrorMemoryAllocation, 0
    buffer = ctypes.create_string_buffer(max(size, 1))
    address = ctypes.addressof(buffer)
    with _lock:
        _allocations[address] = buffer
    return cudaError_t.cudaSuccess, address


def _free(address: int) -> tuple[cudaError_t]:
    with _lock:
        found = _allocations.pop(int(address), None)
    return (cudaError_t.cudaSuccess,) if found is not None else (cudaError_t.cudaErrorInvalidValue,)


def cudaMalloc(size: int) -> tuple[cudaError_t, int]:
    return _allocate(size)


def cudaMallocHost(size: int) -> tuple[cudaError_t, int]:
    return _allocate(size)


def cudaFree(address: int) -> tuple[cudaError_t]:
    return _free(address)


def cudaFreeHost(address: int) -> tuple[cudaError_t]:
    return _free(address)


def within(address: int, count: int) -> bool:
    """Whether [address, address + count) lies inside one live allocation."""
    with _lock:
        for start, buffer in _allocations.items():
            if start <= address and address + count <= start + ctypes.sizeof(buffer):
                return True
    return False


def live_allocations() -> int:
    with _lock:
        return len(_allocations)


def cudaMemcpyAsync(
    dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: cudaStream_t | int
) -> tuple[cudaError_t]:
    if not (within(int(dst), count) and within(int(src), count)):
        return (cudaError_t.cudaErrorInvalidValue,)
    ctypes.memmove(int(dst), int(src), count)
    return (cudaError_t.cudaSuccess,)


def cudaStreamCreate() -> tuple[cudaError_t, cudaStream_t]:
    return cudaError_t.cudaSuccess, cudaStream_t()


def cudaStreamSynchronize(stream: cudaStream_t | int) -> tuple[cudaError_t]:
    return (cudaError_t.cudaSuccess,)


def cudaStreamDestroy(stream: cudaStream_t | int) -> tuple[cudaError_t]:
    return (cudaError_t.cudaSuccess,)

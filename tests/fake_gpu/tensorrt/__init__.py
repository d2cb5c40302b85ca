"""The part of the TensorRT 10 Python API that `edge_app.runtime` calls, computing with ONNX Runtime.

A serialized "plan" is a header (this fake's version, the precision flags, the optimization profile, the DLA core)
followed by the ONNX model. See tests/fake_gpu/README.md for the knobs.
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
import struct
import sys
import time
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from cuda.bindings import runtime as _cuda

__version__ = os.environ.get("FAKE_TRT_VERSION", "10.3.0")
__file__ = __file__  # a real module, not the type stubs' namespace package
_MAGIC = b"FAKETRT1"
LOGGERS_MADE = 0  # how many Logger objects were made in this process


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2) -> None:
        global LOGGERS_MADE
        LOGGERS_MADE += 1
        self.min_severity = min_severity

    def log(self, severity: int, msg: str) -> None:
        if severity <= self.min_severity:
            print(f"[fake TensorRT] {msg}", file=sys.stderr)


class DataType(enum.IntEnum):
    FLOAT, HALF, INT8, INT32, BOOL, UINT8, FP8, BF16, INT64, INT4 = range(10)


float32, float16 = DataType.FLOAT, DataType.HALF


class TensorIOMode(enum.IntEnum):
    NONE, INPUT, OUTPUT = range(3)


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class BuilderFlag(enum.IntEnum):
    FP16, BF16, INT8, DEBUG, GPU_FALLBACK, OBEY_PRECISION_CONSTRAINTS = range(6)


class DeviceType(enum.IntEnum):
    GPU, DLA = range(2)


class Dims(tuple):  # type: ignore[type-arg]
    def __new__(cls, shape: Any = ()) -> Dims:
        return super().__new__(cls, (int(d) for d in shape))


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class IHostMemory(bytes):
    def serialize(self) -> bytes:
        return bytes(self)


def _dtype(onnx_type: str) -> DataType:
    return {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64}.get(
        onnx_type, DataType.INT32
    )


class ILayer:
    """A layer the parser made of one ONNX node, named after it; its precision constraints are recorded."""

    def __init__(self, name: str, num_outputs: int) -> None:
        self.name = name
        self.num_outputs = num_outputs
        self.precision = DataType.FLOAT
        self.precision_is_set = False
        self.output_types: dict[int, DataType] = {}

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "precision" and "precision" in self.__dict__:
            super().__setattr__("precision_is_set", True)
        super().__setattr__(key, value)

    def set_output_type(self, index: int, dtype: DataType) -> None:
        if not 0 <= index < self.num_outputs:
            raise IndexError(index)
        self.output_types[index] = dtype


class INetworkDefinition:
    def __init__(self) -> None:
        self.onnx: bytes | None = None
        self.layers: list[ILayer] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> ILayer:
        return self.layers[index]


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]

    def parse_from_file(self, path: str) -> bool:
        data = open(path, "rb").read()  # noqa: SIM115
        try:
            ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as exc:
            self.errors.append(f"ModelImporter: {exc}")
            return False
        self.network.onnx = data
        graph = onnx.load_from_string(data).graph
        self.network.layers = [ILayer(n.name or f"node_{i}", len(n.output)) for i, n in enumerate(graph.node)]
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, min: Dims, opt: Dims, max: Dims) -> None:
        self.shapes[name] = [list(min), list(opt), list(max)]


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        mine = f"fake timing cache {__version__}".encode()
        self.valid = not data or data == mine  # one of another version is refused by set_timing_cache
        self.data = mine

    def serialize(self) -> IHostMemory:
        return IHostMemory(self.data)


class IBuilderConfig:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = set()
        self.profiles: list[IOptimizationProfile] = []
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.progress_monitor: IProgressMonitor | None = None
        self.timing: ITimingCache | None = None
        self.pools: dict[MemoryPoolType, int] = {}

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> ITimingCache:
        return ITimingCache(bytes(data))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if not cache.valid and not ignore_mismatch:
            return False
        self.timing = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    @property
    def num_DLA_cores(self) -> int:
        return int(os.environ.get("FAKE_TRT_DLA_CORES", "0"))

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition()

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        if network.onnx is None or not config.profiles:
            self.logger.log(Logger.ERROR, "network not parsed or no optimization profile")
            return None
        profile = config.profiles[0].shapes
        dla = config.default_device_type == DeviceType.DLA
        if dla and not ({BuilderFlag.FP16, BuilderFlag.INT8} & config.flags):
            self.logger.log(Logger.ERROR, "DLA needs FP16 or INT8")
            return None
        if dla and any(lo != hi for lo, _, hi in profile.values()):
            self.logger.log(Logger.ERROR, "DLA needs min = opt = max")
            return None
        extra = bytearray(int(os.environ.get("FAKE_TRT_BUILD_MB", "0")) << 20)  # the builder's own memory
        extra[::4096] = b"\1" * len(extra[::4096])
        steps = 10
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, steps)  # type: ignore[attr-defined]
        for step in range(steps):
            time.sleep(float(os.environ.get("FAKE_TRT_BUILD_S", "0")) / steps)
            if monitor is not None and not monitor.step_complete("Building engine", step):  # type: ignore[attr-defined]
                self.logger.log(Logger.ERROR, "build cancelled")
                return None
        if monitor is not None:
            monitor.phase_finish("Building engine")  # type: ignore[attr-defined]
        if os.environ.get("FAKE_TRT_FAULT") == "build":
            self.logger.log(Logger.ERROR, "Error Code 10: Internal Error (could not find any implementation)")
            return None
        fault = os.environ.get("FAKE_TRT_FAULT", "")
        header = {
            "version": __version__,
            "fp16": BuilderFlag.FP16 in config.flags,
            "int8": BuilderFlag.INT8 in config.flags,
            "dla_core": config.DLA_core if dla else None,
            "drift": os.environ.get("FAKE_TRT_FAULT") == "drift",  # an engine that computes wrong, built so
            "nan": fault.removeprefix("nan:") if fault.startswith("nan:") else None,  # ... one output wrong
            "fp32_layers": [  # layers kept in FP32 where lower precision was allowed: only when told to obey
                layer.name
                for layer in network.layers
                if layer.precision_is_set
                and layer.precision == DataType.FLOAT
                and all(t == DataType.FLOAT for t in layer.output_types.values())
                and BuilderFlag.OBEY_PRECISION_CONSTRAINTS in config.flags
            ],
            "profile": profile,
        }
        blob = json.dumps(header).encode()
        return IHostMemory(_MAGIC + struct.pack("<I", len(blob)) + blob + network.onnx)


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self.DLA_core = -1

    def deserialize_cuda_engine(self, plan: bytes) -> ICudaEngine | None:
        plan = bytes(plan)
        if not plan.startswith(_MAGIC):
            self.logger.log(Logger.ERROR, "Serialization assertion failed: magic tag does not match")
            return None
        (size,) = struct.unpack("<I", plan[8:12])
        header = json.loads(plan[12 : 12 + size])
        if header["version"] != __version__:
            self.logger.log(Logger.ERROR, f"engine plan of TensorRT {header['version']}, this is {__version__}")
            return None
        if header["dla_core"] is not None and self.DLA_core < 0:
            self.logger.log(Logger.ERROR, "a DLA engine needs IRuntime.DLA_core")
            return None
        return ICudaEngine(header, plan[12 + size :])


class ICudaEngine:
    def __init__(self, header: dict[str, Any], onnx: bytes) -> None:
        self.header = header
        self.session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        self.tensors: dict[str, tuple[TensorIOMode, DataType, list[int]]] = {}
        io = ((TensorIOMode.INPUT, self.session.get_inputs()), (TensorIOMode.OUTPUT, self.session.get_outputs()))
        for mode, metas in io:
            for meta in metas:
                shape = [d if isinstance(d, int) else -1 for d in meta.shape]
                self.tensors[meta.name] = (mode, _dtype(meta.type), shape)

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.tensors[name][1]

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self.tensors[name][2])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        return [Dims(s) for s in self.header["profile"][name]]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, list[int]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        lo, _, hi = self.engine.header["profile"][name]
        shape = list(shape)
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=False)):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        mode, _, shape = self.engine.tensors[name]
        if mode == TensorIOMode.INPUT:
            return Dims(self.shapes.get(name, shape))
        batch = next(iter(self.shapes.values()), [-1])[0]
        return Dims(batch if d < 0 else d for d in shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        header = self.engine.header
        precision = "int8" if header["int8"] else "fp16" if header["fp16"] else "fp32"
        times = dict(item.split("=") for item in filter(None, os.environ.get("FAKE_TRT_MS", "").split(",")))
        if precision in times:  # what a run takes on this GPU, by precision
            time.sleep(float(times[precision]) / 1000)
        feeds = {}
        for meta in self.engine.session.get_inputs():
            shape = self.shapes.get(meta.name)
            address = self.addresses.get(meta.name)
            if shape is None or address is None:
                return False
            nbytes = int(np.prod(shape)) * 4
            if not _cuda.within(address, nbytes):
                return False
            feeds[meta.name] = np.frombuffer(ctypes.string_at(address, nbytes), np.float32).reshape(shape)
        outputs = self.engine.session.run(None, feeds)
        for meta, value in zip(self.engine.session.get_outputs(), outputs, strict=False):
            value = np.ascontiguousarray(value, np.float32)
            if self.engine.header["fp16"]:
                value = value.astype(np.float16).astype(np.float32)
            if self.engine.header["drift"]:
                value = value + np.float32(0.25)
            if self.engine.header["nan"] == meta.name:
                value = np.full_like(value, np.nan)
            address = self.addresses.get(meta.name)
            if address is None or not _cuda.within(address, value.nbytes):
                return False
            ctypes.memmove(address, value.ctypes.data, value.nbytes)
        return True

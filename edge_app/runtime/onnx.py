"""ONNX Runtime on the CPU: the embedded default, on any machine."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edge_app.bundles.bundle import Bundle
from edge_app.errors import BundleError, InferenceError
from edge_app.runtime.base import Runner, TensorInfo, check_io

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


class OnnxRuntimeRunner(Runner):
    """A CPU `InferenceSession` over the bundle's `model.onnx`, checked against the manifest at activation."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        super().__init__(bundle)
        self.threads = threads
        self._session: object | None = None

    def _activate(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The arena keeps peak-sized buffers forever; on an 8 GB Jetson shared with the GPU we would rather not.
        options.enable_cpu_mem_arena = False
        try:
            session = ort.InferenceSession(
                str(self.bundle.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{self.bundle.model_path} cannot be loaded by ONNX Runtime: {exc}") from None
        self._check(session)
        self._session = session

    def _check(self, session: object) -> None:
        def info(meta: object) -> TensorInfo:  # a symbolic or unknown dimension is a dynamic one
            dims = tuple(d if isinstance(d, int) else -1 for d in meta.shape)  # type: ignore[attr-defined]
            return TensorInfo(meta.name, _ORT_DTYPES.get(meta.type), dims)  # type: ignore[attr-defined]

        inputs = [info(i) for i in session.get_inputs()]  # type: ignore[attr-defined]
        outputs = [info(o) for o in session.get_outputs()]  # type: ignore[attr-defined]
        check_io(self.bundle.manifest, inputs, outputs, "the model")
        self.takes_batches = inputs[0].shape[0] == -1

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, batch: NDArray[np.generic]) -> dict[str, NDArray[np.float32]]:
        session = self._session
        assert session is not None
        try:
            names = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]
            values = session.run(names, {self.bundle.manifest.input.name: batch})  # type: ignore[attr-defined]
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed: {exc}") from exc
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, values, strict=True)}

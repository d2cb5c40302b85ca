"""A Triton Inference Server (a district hub) as a runner, with this box's own runner as the fallback.

The box decodes and preprocesses as always and sends only the tensor (tritonclient, imported only here). At
activation the hub's model is checked against the bundle: the model named after the bundle must list this
bundle's sha256 among its versions (the `edge_bundles` parameter `edge-convert export-triton` writes), and that
version's inputs and outputs must be the manifest's. Where the hub is away, refuses the bundle or fails a request,
the batch runs on the local runner at once (a study is never lost nor held), `problem` says so, and the hub is
tried again every `retry_s`. `name` and `where` tell what computed the last batch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from edge_app.bundles.bundle import Bundle
from edge_app.bundles.manifest import Manifest
from edge_app.errors import BundleError, RuntimeUnavailable
from edge_app.runtime.base import Runner, TensorInfo, check_io

if TYPE_CHECKING:
    from edge_app.config import TritonSettings

log = logging.getLogger(__name__)
BUNDLES_PARAMETER = "edge_bundles"  # {"<triton version>": {"version": "<bundle version>", "sha256": "..."}}


def model_name(manifest: Manifest) -> str:
    """The Triton model name of a bundle: its name, with what a model repository's folder cannot hold replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", manifest.name)


_TRITON_DTYPES = {"FP32": "float32", "FP16": "float16"}


def io_shapes(manifest: Manifest) -> tuple[list[int], list[str]]:
    """The input's dims without the batch, and the output names (scores, then the heatmap and the guard where there
    are)."""
    return list(manifest.input.image_shape), manifest.output_names()


class TritonRunner(Runner):
    """Runs the bundle on a Triton hub; `local` (an activated runner of the same bundle) takes over while the
    hub cannot."""

    def __init__(self, bundle: Bundle, settings: TritonSettings, local: Runner) -> None:
        super().__init__(bundle)
        self.settings = settings
        self.local = local
        self.name = local.name
        self._lock = threading.Lock()
        self._clients = threading.local()
        self._ready = False
        self._headers: dict[str, str] | None = None
        self._version: str | None = None
        self._max_batch = 0
        self._next_try = 0.0

    def _activate(self) -> None:
        self._module()  # no tritonclient: a plain refusal at start, not a fallback forever
        self.local.activate()
        self.takes_batches = self.local.takes_batches  # the hub's largest batch is taken in parts (`_remote`)
        with self._lock:
            self._connect()

    def _deactivate(self) -> None:
        with self._lock:
            self._ready = False
        self.local.deactivate()

    def _module(self) -> Any:
        try:
            if self.settings.protocol == "grpc":
                import tritonclient.grpc as module
            else:
                import tritonclient.http as module
        except ImportError as exc:
            raise RuntimeUnavailable(
                f"tritonclient for {self.settings.protocol} is not installed ({exc}): pip install '.[triton]'"
            ) from None
        return module

    def _model_name(self) -> str:
        return self.settings.model or model_name(self.bundle.manifest)

    def _open(self) -> Any:
        """A client of the hub. tritonclient's HTTP client (gevent) cannot cross threads: one per thread."""
        s = self.settings
        module = self._module()
        if s.protocol == "grpc":
            return module.InferenceServerClient(
                s.url, ssl=s.ssl, root_certificates=str(s.ca_file) if s.ca_file else None
            )
        ssl_options = {"ca_certs": str(s.ca_file)} if s.ca_file else None
        return module.InferenceServerClient(
            s.url, connection_timeout=s.timeout_s, network_timeout=s.timeout_s, ssl=s.ssl, ssl_options=ssl_options
        )

    def _client_here(self) -> Any:
        client = getattr(self._clients, "client", None)
        if client is None:
            client = self._clients.client = self._open()
        return client

    def _connect(self) -> None:
        """Check the hub's model; on any failure, say why and go on locally."""
        s = self.settings
        token = s.token.get_secret_value()
        self._headers = {s.token_header: token} if token else None
        try:
            self._version, self._max_batch = self._check(self._client_here(), self._headers)
        except Exception as exc:  # away, refusing, or serving another model: the box goes on by itself
            self._away(exc)
            return
        self._ready = True
        self.problem = None
        log.info("%s runs on the Triton hub %s (version %s)", self.bundle.manifest.name, s.url, self._version)

    def _check(self, client: Any, headers: dict[str, str] | None) -> tuple[str, int]:
        """The hub's version of this bundle and its largest batch; `BundleError` where it serves another."""
        m = self.bundle.manifest
        name = self._model_name()
        grpc = self.settings.protocol == "grpc"
        deadline = {"client_timeout": self.settings.timeout_s} if grpc else {}  # HTTP: the client's own timeouts
        kwargs: dict[str, Any] = {"headers": headers, **deadline, **({"as_json": True} if grpc else {})}
        config = client.get_model_config(name, **kwargs)
        config = config.get("config", config)  # gRPC wraps it
        raw = config.get("parameters", {}).get(BUNDLES_PARAMETER, {}).get("string_value", "{}")
        served = json.loads(raw)
        version = next((v for v, b in served.items() if b.get("sha256") == self.bundle.sha256), None)
        if version is None:
            offered = ", ".join(f"{b.get('version')} ({str(b.get('sha256'))[:12]})" for b in served.values())
            raise BundleError(
                f"the hub's model {name!r} holds no version of this bundle ({m.version}, {self.bundle.sha256[:12]}); "
                f"it holds: {offered or 'no edge bundle'}"
            )
        if not client.is_model_ready(name, version, headers=headers, **deadline):
            raise RuntimeUnavailable(f"the hub's model {name!r} version {version} is not ready")
        meta = client.get_model_metadata(name, version, **kwargs)

        def info(tensor: dict[str, Any]) -> TensorInfo:
            dims = tuple(int(d) for d in tensor["shape"])
            return TensorInfo(tensor["name"], _TRITON_DTYPES.get(tensor["datatype"]), dims)

        check_io(m, [info(i) for i in meta["inputs"]], [info(o) for o in meta["outputs"]], f"the hub's model {name!r}")
        return version, int(config.get("max_batch_size", 0)) or 1

    def _away(self, exc: BaseException) -> None:
        since = dt.datetime.now().strftime("%H:%M")
        self.problem = (
            f"the Triton hub {self.settings.url} cannot run {self.bundle.manifest.name} ({type(exc).__name__}: "
            f"{exc}) since {since}: images are diagnosed on this box ({self.local.name})"
        )
        log.warning("%s", self.problem)
        self._ready = False
        client = getattr(self._clients, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._clients = threading.local()  # a fresh connection next time (clients of other threads: dropped)
        self._next_try = time.monotonic() + self.settings.retry_s

    def _infer(self, batch: NDArray[np.generic]) -> dict[str, NDArray[np.float32]]:
        with self._lock:
            if not self._ready and time.monotonic() >= self._next_try:
                self._connect()
            if self._ready:
                try:
                    out = self._remote(batch)
                except Exception as exc:  # the hub went away mid-request: this batch runs here
                    self._away(exc)
                else:
                    self.name, self.where = "triton", self.settings.url
                    return out
            self.name, self.where = self.local.name, None
        return self.local.infer(batch)

    def _remote(self, batch: NDArray[np.generic]) -> dict[str, NDArray[np.float32]]:
        if batch.shape[0] > self._max_batch:
            step = self._max_batch
            parts = [self._remote(batch[i : i + step]) for i in range(0, batch.shape[0], step)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        module = self._module()
        m = self.bundle.manifest
        data = np.ascontiguousarray(batch, dtype=np.float32)
        given = module.InferInput(m.input.name, list(data.shape), "FP32")
        given.set_data_from_numpy(data)
        _, outputs = io_shapes(m)
        asked = [module.InferRequestedOutput(name) for name in outputs]
        timeout = {"client_timeout": self.settings.timeout_s} if self.settings.protocol == "grpc" else {}
        result = self._client_here().infer(
            self._model_name(), [given], model_version=self._version, outputs=asked, headers=self._headers, **timeout
        )
        return {name: np.asarray(result.as_numpy(name), dtype=np.float32) for name in outputs}

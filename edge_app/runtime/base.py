"""The runner interface every inference backend implements (after Polygraphy's runners)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from edge_app.bundles.bundle import Bundle
from edge_app.bundles.manifest import Manifest
from edge_app.errors import BundleError, InferenceError


@dataclass(frozen=True)
class TensorInfo:
    """One input or output as a backend reports it: its dtype as numpy names it (None: one numpy has no name for),
    a dimension fixed by the model as its size, a dynamic one as -1."""

    name: str
    dtype: str | None
    shape: tuple[int, ...]


def check_io(manifest: Manifest, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], what: str) -> None:
    """`BundleError` unless the model (`what` names it: "the model", "the engine", "the hub's model 'x'") takes the
    manifest's one input, of its dtype and image shape after a batch dimension, and gives every output the manifest
    names, in floats."""
    spec = manifest.input
    if [t.name for t in inputs] != [spec.name]:
        raise BundleError(f"{what}'s inputs are {[t.name for t in inputs]}, the manifest says [{spec.name!r}]")
    (image,) = inputs
    if image.dtype != spec.dtype:
        raise BundleError(f"{what}'s input {spec.name!r} is {image.dtype}, the manifest says {spec.dtype}")
    expected = spec.image_shape
    if len(image.shape) != 4 or any(d not in (-1, e) for d, e in zip(image.shape[1:], expected, strict=True)):
        implied = ", ".join(map(str, expected))
        raise BundleError(f"{what}'s input {spec.name!r} has shape {image.shape}, the manifest implies (N, {implied})")
    have = {t.name: t for t in outputs}
    for name in manifest.output_names():
        if name not in have:
            raise BundleError(f"{what} has no output {name!r} (it has {', '.join(sorted(have))})")
        if have[name].dtype not in ("float32", "float16"):
            raise BundleError(f"{what}'s output {name!r} is {have[name].dtype}; a float output is expected")


class Runner(abc.ABC):
    """Runs one bundle's model: `activate()` once, `infer()` many times, `deactivate()` to free it."""

    name: str
    where: str | None = None  # the server that computed the last batch, where it was not this box
    problem: str | None = None  # what keeps the runner from working as configured, in plain words
    takes_batches = False  # whether `infer` takes several images at once (not a model whose batch is fixed at 1)

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.is_active = False

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, batch: NDArray[np.generic]) -> dict[str, NDArray[np.float32]]:
        """Run a preprocessed batch; return every output by name."""
        if not self.is_active:
            raise InferenceError(f"{self.name} runner used before activate()")
        return self._infer(batch)

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, batch: NDArray[np.generic]) -> dict[str, NDArray[np.float32]]: ...

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

"""The runner interface every inference backend implements (after Polygraphy's runners)."""

from __future__ import annotations

import abc
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from edge_app.bundles.bundle import Bundle
from edge_app.errors import InferenceError


class Runner(abc.ABC):
    """Runs one bundle's model: `activate()` once, `infer()` many times, `deactivate()` to free it."""

    name: str
    where: str | None = None  # the server that computed the last batch, where it was not this box
    problem: str | None = None  # what keeps the runner from working as configured, in plain words

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

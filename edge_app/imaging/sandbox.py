"""Decode untrusted images in a child process with a memory limit and a timeout.

Decoders are native code (openjpeg, libjpeg, Rust plugins): one that panics, crashes, spins or allocates without
end must cost one image, not the service. Pebble's process pool runs `prepare` in a spawned child whose address
space is capped (RLIMIT_AS) and kills and replaces a child that overruns its time or dies. The child's stderr is
closed and its log records come back with the answer, logged here at debug level, so a rejected file never
scatters library tracebacks over the user's terminal.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import threading
import weakref
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pebble import ProcessExpired, ProcessPool

from edge_app.bundles.manifest import Manifest
from edge_app.errors import DecoderUnavailable, ImageRejected, ReasonKind
from edge_app.imaging.decode import DecodeLimits, FullDepth, decode_full_depth
from edge_app.imaging.prepare import Prepared, prepare, view

log = logging.getLogger(__name__)

# Address space a child may take beyond what it holds after importing the decoders, on top of the decoding
# budget (`DecodeLimits.max_decode_mb`): the file itself, the data set, Python objects.
_HEADROOM_MB = 160
# A decoder process's own resident memory besides what it decodes: 76-94 MB in developer.md's footprint table.
_RESIDENT_MB = 100
# What the worker holds besides its decoders (the model, the runner, the store): kept out of a cgroup's limit.
_WORKER_MB = 1024
_notes: list[str] = []  # the child's log records for the image at hand


def auto_decoders(max_decode_mb: int) -> int:
    """The decoder processes `imaging.decoders = 0` starts on this machine (`decoders_for` its cores and memory)."""
    return decoders_for(max_decode_mb, len(os.sched_getaffinity(0)), memory_mb(), cgroup_limit_mb())


def decoders_for(max_decode_mb: int, cores: int, machine_mb: int, cgroup_mb: int | None) -> int:
    """One decoder process per core but one (the receiver, the worker's inference and the web share it), and no
    more than the memory allows at `max_decode_mb` + 100 MB each: a quarter of the machine's memory (a Jetson's is
    shared with the GPU, the OS and the front), and within the worker's cgroup limit (systemd's MemoryMax, cgroup
    v2) less 1 GB for the rest of the worker; at least one, at most 16. A 6-core 8 GB Orin Nano (about 7,600 MB of
    MemTotal): min(5, 1,900 // 420) = 4; under the worker unit's MemoryMax=2500M: min(5, 1,476 // 420) = 3. A
    2-core machine: 1."""
    budget_mb = machine_mb // 4
    if cgroup_mb is not None:
        budget_mb = min(budget_mb, cgroup_mb - _WORKER_MB)
    return max(1, min(16, cores - 1, budget_mb // (max_decode_mb + _RESIDENT_MB)))


def memory_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The machine's memory (MemTotal) in MB."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise OSError(f"no MemTotal in {meminfo}")


def cgroup_limit_mb(cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The tightest `memory.max` (in MB) from this process's cgroup (v2, named in `cgroup`) up to the hierarchy's
    `root`; None where none is set."""
    lines = [line for line in cgroup.read_text().splitlines() if line.startswith("0::")]
    if not lines:
        return None
    here = root / lines[0][3:].lstrip("/")
    limits = []
    for folder in [here, *here.parents]:
        found = folder / "memory.max"
        if found.is_file() and (value := found.read_text().strip()) != "max":
            limits.append(int(value) // 2**20)
        if folder == root:
            break
    return min(limits, default=None)


class Later:
    """An image started in a child (`DecoderPool.prepare_later`): `result` waits for it and answers as `prepare`
    does; `settle` waits at most `timeout_s` for it to be answerable, and says whether it is."""

    def __init__(self, answer: Callable[[], Prepared], future: Future[Any]) -> None:
        self.result = answer
        self._future = future

    def settle(self, timeout_s: float | None = None) -> bool:
        return not futures.wait([self._future], timeout_s).not_done


class DecoderPool:
    """Prepares images in `workers` child processes (0: `auto_decoders`); safe to share between threads."""

    def __init__(self, limits: DecodeLimits, *, workers: int, timeout_s: float) -> None:
        self.limits = limits
        self.timeout_s = timeout_s
        self.workers = workers or auto_decoders(limits.max_decode_mb)
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._closed = False  # `close`d: an image begun is answered as not read, and no pool is started again
        self._begun: weakref.WeakSet[Future[Any]] = weakref.WeakSet()  # answered at `close` where pebble does not

    def _new_pool(self) -> ProcessPool:
        return ProcessPool(
            max_workers=self.workers,
            initializer=_start_child,
            initargs=(self.limits.max_decode_mb + _HEADROOM_MB, codec_threads(self.workers)),
            context=multiprocessing.get_context("spawn"),  # never fork a process that runs threads
        )

    def prepare(self, data: bytes | Path | str, source: str, manifest: Manifest) -> Prepared:
        """`prepare` in a child; a crash, a timeout or exhausted memory raises `ImageRejected` saying so. A pool
        whose children cannot even start raises `DecoderUnavailable` and is replaced for the next image."""
        return self.prepare_later(data, source, manifest).result()

    def prepare_later(self, data: bytes | Path | str, source: str, manifest: Manifest) -> Later:
        """Start `prepare` in a child now (the children take the images started in turn, side by side)."""
        pool, future = self._start(_prepare_in_child, (data, source, self.limits, manifest))

        def answer() -> Prepared:
            prepared: Prepared = self._answer(pool, future, source)
            return prepared

        return Later(answer, future)

    def view(self, data: bytes | Path | str, source: str) -> NDArray[np.uint8]:
        """`view` (the tablet's 8-bit preview) in a child, within the same limits, refused as `prepare` is."""
        pixels: NDArray[np.uint8] = self._run(_view_in_child, (data, source, self.limits), source)
        return pixels

    def full_depth(self, path: Path, source: str) -> FullDepth:
        """`decode_full_depth` (the diagnostic view's values) in a child, refused as `prepare` is."""
        values: FullDepth = self._run(_full_depth_in_child, (path, source, self.limits), source)
        return values

    def _run(self, task: Callable[..., tuple[Any, list[str]]], args: tuple[Any, ...], source: str) -> Any:
        return self._answer(*self._start(task, args), source)

    def _start(
        self, task: Callable[..., tuple[Any, list[str]]], args: tuple[Any, ...]
    ) -> tuple[ProcessPool, Future[Any]]:
        with self._lock:
            pool = self._pool
            try:
                future: Future[Any] = pool.schedule(task, args=args, timeout=self.timeout_s)
            except RuntimeError as exc:  # pebble: a pool that no longer takes work; answered when the image is
                future = Future()
                future.set_exception(exc)
            self._begun.add(future)
        return pool, future

    def _answer(self, pool: ProcessPool, future: Future[Any], source: str) -> Any:
        try:
            outcome, notes = future.result()
        except (BrokenProcessPool, RuntimeError) as exc:  # pebble: "All workers expired", "error within the Pool"
            if self._closed:  # pebble answers what its stopped pool held so
                raise DecoderUnavailable("the image decoder processes were stopped (the service stops)") from exc
            self._replace(pool)
            raise DecoderUnavailable(f"the image decoder process could not be started ({exc})") from exc
        except FutureTimeout:
            raise ImageRejected(
                source, f"decoding took longer than {self.timeout_s:g} s and was stopped", "decoder"
            ) from None
        except ProcessExpired as exc:
            raise ImageRejected(
                source, f"the image decoder crashed on this file ({_exit_reason(exc.exitcode)})", "decoder"
            ) from exc
        for note in notes:
            log.debug("%s: %s", source, note)
        if isinstance(outcome, tuple):
            raise ImageRejected(source, outcome[0], outcome[1])
        return outcome

    def _replace(self, broken: ProcessPool) -> None:
        with self._lock:
            if self._pool is broken and not self._closed:
                log.error("the decoder pool is broken: starting a new one")
                broken.stop()  # type: ignore[no-untyped-call]
                self._pool = self._new_pool()

    def close(self) -> None:
        """Stop the children: an image being decoded or waiting for one is abandoned, answered as not read
        (`DecoderUnavailable`: the worker queues it again)."""
        with self._lock:
            self._closed = True
            self._pool.stop()  # type: ignore[no-untyped-call]
            self._pool.join()
            for future in list(self._begun):  # a stopped pebble pool leaves some of its images unanswered for ever
                with contextlib.suppress(InvalidStateError):  # answered already
                    future.set_exception(BrokenProcessPool("the pool was stopped"))


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# -- in the child ----------------------------------------------------------------------------------------------


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _notes.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def codec_threads(decoders: int) -> int:
    """The threads each decoder process gives openjpeg (`OPJ_NUM_THREADS`, read when a codec is made; JPEG 2000's
    code-blocks decoded side by side): this machine's cores shared among the decoder processes, at least one. The
    chest CR's lossless codestream at its half resolution: 134 ms with one thread, 83 ms with two (2 cores)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, decoders))


def _start_child(memory_mb: int, threads: int) -> None:
    """Close stderr, collect log records, give openjpeg its threads (unless the environment names them), load
    the decoders, then cap the address space."""
    os.environ.setdefault("OPJ_NUM_THREADS", str(threads))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    logging.basicConfig(level=logging.WARNING, handlers=[_Collect()], force=True)
    import libjpeg  # noqa: F401  (mapped now, so that the cap counts images, not libraries)
    import openjpeg  # noqa: F401
    import pydicom.pixels  # noqa: F401
    import rle  # noqa: F401
    from PIL import Image, PngImagePlugin  # noqa: F401

    limit = _address_space() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def _prepare_in_child(
    data: bytes | Path | str, source: str, limits: DecodeLimits, manifest: Manifest
) -> tuple[Prepared | tuple[str, ReasonKind], list[str]]:
    """The prepared image, or the reason it was refused and its kind; with the log records it left."""
    return _in_child(prepare, data, source, limits, manifest)


def _view_in_child(
    data: bytes | Path | str, source: str, limits: DecodeLimits
) -> tuple[NDArray[np.uint8] | tuple[str, ReasonKind], list[str]]:
    """The image's view, or the reason it cannot be decoded and its kind; with the log records it left."""
    return _in_child(view, data, source, limits)


def _full_depth_in_child(
    path: Path, source: str, limits: DecodeLimits
) -> tuple[FullDepth | tuple[str, ReasonKind], list[str]]:
    """The image's full-depth values, or the reason there are none and its kind; with the log records it left."""
    return _in_child(lambda p, s, lim: decode_full_depth(p, source=s, limits=lim), path, source, limits)


def _in_child(task: Callable[..., Any], *args: Any) -> tuple[Any, list[str]]:
    _notes.clear()
    limits: DecodeLimits = args[2]
    try:
        return task(*args), list(_notes)
    except ImageRejected as exc:
        return (exc.reason, exc.kind), list(_notes)
    except MemoryError:
        limit = f"decoding needs more memory than the decoder is allowed ({limits.max_decode_mb:,} MB)"
        return (limit, "too_large"), list(_notes)

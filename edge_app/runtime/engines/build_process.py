"""TensorRT engine builds in a process of their own: a memory limit, a timeout, cancellation, failures remembered.

TensorRT's builder alone takes 1.2-1.4 GB of host memory, and an 8 GB Orin Nano shares its memory between CPU and
GPU: a build runs in a child process (`python -m edge_app.runtime.engines.build_process`) whose resident memory the
parent watches and which it kills past `memory_mb`, so that neither the build nor a crash in TensorRT takes the
service down. The limit is enforced by watching /proc rather than with RLIMIT_AS because CUDA reserves far more
address space than it uses, which an address-space limit would refuse; it counts host memory only (a Jetson's GPU
allocations are the unit's MemoryMax's to bound). Builds take turns (a lock file in the engine cache), across
processes too: two at once would not fit an Orin Nano. Cancellation asks first (the child's stdin is closed: a
thread of its own sees it and TensorRT stops at its next step through the progress monitor), then kills. A failed
build is remembered in the engine cache for its bundle and platform, and not tried again until `edge-app engines
--retry` or `edge-convert engine`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_app.bundles.bundle import Bundle
from edge_app.errors import EdgeAppError
from edge_app.runtime.engines.build import BuildOptions, EngineBuildError
from edge_app.runtime.engines.cache import EngineCache
from edge_app.runtime.tensorrt import current_platform

log = logging.getLogger(__name__)
_POLL_S = 0.2
_GRACE_S = 10.0


class BuildCancelled(EngineBuildError):
    """The build was cancelled (the service stopped, or a person asked): not remembered as a failure."""


@dataclass(frozen=True)
class BuildLimits:
    memory_mb: int = 2048
    timeout_s: float = 1800.0


def resident_mb(pid: int) -> float:
    """The resident memory of a process in MiB (Linux /proc), 0 where it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def build_isolated(
    bundle: Bundle,
    cache: EngineCache,
    options: BuildOptions,
    limits: BuildLimits | None = None,
    progress: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    retry: bool = False,
) -> Path:
    """The engine of `bundle` for this machine: cached, or built and checked in a child process. Raises
    `EngineBuildError` with the reason (remembered, unless cancelled); an earlier failure is raised again without
    building unless `retry`."""
    limits = limits or BuildLimits()
    report = progress or log.info
    platform = current_platform(options.dla_core)
    cached = cache.lookup(bundle, platform, options.max_batch)
    if cached is not None:
        return cached
    failed = cache.failure(bundle, platform)
    if failed is not None and not retry:
        raise EngineBuildError(
            f"the engine build failed before ({failed.get('reason')}, {failed.get('at')}); not tried again until "
            "edge-app engines --retry"
        )
    request: dict[str, object] = {
        "bundle": str(bundle.path),
        "cache": str(cache.root),
        "options": {**asdict(options), "timing_cache": str(options.timing_cache) if options.timing_cache else None},
    }
    cancel = cancel or threading.Event()
    with _one_at_a_time(cache.root, cancel, report):
        cached = cache.lookup(bundle, platform, options.max_batch)  # built meanwhile by the one before?
        if cached is not None:
            return cached
        reason = _run_child(request, limits, report, cancel)
    if reason is None:
        engine = cache.lookup(bundle, platform, options.max_batch)
        if engine is not None:
            return engine
        reason = "the build process ended without an engine in the cache"
    cache.remember_failure(bundle, platform, reason)
    raise EngineBuildError(reason)


@contextlib.contextmanager
def _one_at_a_time(root: Path, cancel: threading.Event, report: Callable[[str], None]) -> Iterator[None]:
    """Hold the engine cache's build lock (waiting for another build to end, unless cancelled)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "build.lock").open("a") as lock:
        said = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if cancel.is_set():
                    raise BuildCancelled("the engine build was cancelled") from None
                if not said:
                    report("another engine build is under way: this one waits for it")
                    said = True
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_child(
    request: dict[str, object], limits: BuildLimits, report: Callable[[str], None], cancel: threading.Event
) -> str | None:
    """Run one build; None on success, else the reason it failed. Raises `BuildCancelled`."""
    child = subprocess.Popen(
        [sys.executable, "-m", "edge_app.runtime.engines.build_process", json.dumps(request)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.PIPE,  # closed: cancel
        text=True,
        errors="replace",
    )
    said: list[str] = []

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            line = line.rstrip()
            said.append(line)
            if line.startswith("progress: "):
                report(line.removeprefix("progress: "))

    reader = threading.Thread(target=read, name="engine-build-output", daemon=True)
    reader.start()
    started, peak, stopped = time.monotonic(), 0.0, None
    while child.poll() is None:
        peak = max(peak, resident_mb(child.pid))
        if peak > limits.memory_mb:
            stopped = f"the engine build took more than {limits.memory_mb} MB of memory and was stopped"
        elif time.monotonic() - started > limits.timeout_s:
            stopped = f"the engine build took longer than {limits.timeout_s:.0f} s and was stopped"
        elif cancel.is_set():
            _stop(child)
            reader.join(5)
            raise BuildCancelled("the engine build was cancelled")
        if stopped:
            child.kill()
            child.wait()
            break
        time.sleep(_POLL_S)
    reader.join(5)
    if child.stdin is not None:
        with contextlib.suppress(OSError):
            child.stdin.close()
    if stopped:
        return stopped
    if child.returncode == 0:
        report(f"engine built in {time.monotonic() - started:.0f} s, peak host memory {peak:.0f} MB")
        return None
    errors = [line.removeprefix("error: ") for line in said if line.startswith("error: ")]
    if errors:
        return errors[-1]
    return f"the engine build process failed (exit status {child.returncode}): {' / '.join(said[-3:]) or 'no output'}"


def _stop(child: subprocess.Popen[str]) -> None:
    if child.stdin is not None:
        with contextlib.suppress(OSError):
            child.stdin.close()  # the child's watcher sets its cancel: TensorRT stops at its next step
    try:
        child.wait(_GRACE_S)
        return
    except subprocess.TimeoutExpired:
        child.terminate()
    try:
        child.wait(_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main(argv: list[str]) -> int:
    """The child: build one engine as `request` says; print progress, then nothing or `error: reason`."""
    from edge_app.bundles.bundle import load_bundle
    from edge_app.runtime.engines.build import build_engine

    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: cancel.set())

    def watch() -> None:  # the parent closes our stdin to cancel (a thread: TensorRT may call back from its own)
        sys.stdin.read()
        cancel.set()

    threading.Thread(target=watch, name="cancel-watch", daemon=True).start()
    request = json.loads(argv[0])
    opts = request["options"]
    options = BuildOptions(
        max_batch=opts["max_batch"],
        workspace_mib=opts["workspace_mib"],
        dla_core=opts["dla_core"],
        timing_cache=Path(opts["timing_cache"]) if opts["timing_cache"] else None,
    )

    def say(line: str) -> None:
        print(f"progress: {line}", flush=True)

    try:
        bundle = load_bundle(Path(request["bundle"]))  # its hashes again: the parent checked its signature
        build_engine(bundle, EngineCache(Path(request["cache"])), options, say, cancel)
    except EdgeAppError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`edge-app`: diagnose files, serve the clinic's tablets, benchmark the pipeline."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edge_app import __version__
from edge_app.cli import accounts as cli_accounts
from edge_app.cli import config_reference
from edge_app.config import Settings, default_config, load_settings
from edge_app.errors import UserError
from edge_app.inference.diagnoser import Diagnoser

log = logging.getLogger("edge_app")

EXIT_REJECTED = 1  # diagnose: some file was rejected, or outside what the model reads
EXIT_USAGE = 2  # a configuration, bundle or command-line error
EXIT_INTERNAL = 3  # an internal error (a bug), on any command or any file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-app", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-app {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML configuration file (edge-app config --defaults); default: $EDGE_APP_CONFIG, else "
        "/etc/edge-app/edge-app.toml where it exists",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("diagnose", help="diagnose image files and print one JSON line per file")
    p.add_argument("files", nargs="+", type=Path, help="DICOM, PNG or JPEG files, or folders of them")
    p.add_argument("--bundle", type=Path, help="model bundle (default: the configured one)")

    p = sub.add_parser("serve", help="serve the web UI and JSON API")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port")
    p.add_argument("--no-worker", action="store_true", help="the models run in `edge-app worker` (another process)")
    sub.add_parser("worker", help="the models and the inference worker alone (beside `serve --no-worker`)")

    sub.add_parser("check", help="check the installation: storage, models, ports, devices")
    p = sub.add_parser("engines", help="build the TensorRT engines the configured bundles lack (before serve)")
    p.add_argument("--retry", action="store_true", help="try again the builds that failed before")
    p = sub.add_parser("config", help="print the configuration reference")
    p.add_argument("--defaults", action="store_true", required=True, help="every key, its default and description")

    cli_accounts.add_parsers(sub)
    p = sub.add_parser("backup", help="copy the database and the stored files into a new folder in DIR")
    p.add_argument("dir", type=Path, help="where the backup folder is made (a USB stick's mount point)")
    p = sub.add_parser("restore", help="check a backup, move the data directory aside, put the backup in place")
    p.add_argument("backup", type=Path, help="an edge-app-backup-* folder (stop the service first)")
    p = sub.add_parser("export", help="studies, images, reports and a results table into a new folder in DIR")
    p.add_argument("dir", type=Path, help="where the export folder is made (a USB stick's mount point)")
    p.add_argument("--deidentify", action="store_true", help="DICOM PS3.15 Annex E basic profile; pseudonyms")
    p.add_argument("--since", type=dt.date.fromisoformat, help="only studies received on or after YYYY-MM-DD")
    p.add_argument(
        "--reviewed",
        action="store_true",
        help="into DIR itself: the reviewed images and their clinicians' labels, as edge-convert validate reads them",
    )
    p.add_argument("--force", action="store_true", help="with --reviewed: write into DIR even if it is not empty")

    p = sub.add_parser("outbox", help="results on their way to DICOM destinations")
    p.add_argument("action", choices=["retry"], help="retry: queue again the results given up")
    p.add_argument("--destination", help="only this one, AE@host:port as configured (default: all)")

    p = sub.add_parser("bench", help="latency of decode, preprocess and inference on real images")
    p.add_argument("files", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--bundle", type=Path, help="model bundle (default: the configured one)")
    p.add_argument("--limit", type=int, default=200, help="at most this many images")
    p.add_argument("--warmup", type=int, default=3)

    args = parser.parse_args(argv)
    # Before anything is made: the data directory, the database (and its -wal, -shm), stored files, backups and
    # exports are their owner's alone, whatever the umask of the shell this runs from (the units set 0027). What
    # another user must read is given its mode where it is written (TensorRT engines: 0644).
    os.umask(0o077)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pydicom").addFilter(_AtDebugLevel(args.verbose))
    try:
        if args.command == "config":
            print(config_reference.defaults_toml(), end="")
            return 0
        settings = load_settings(args.config or default_config())
        if args.command == "diagnose":
            return _diagnose(settings, args.files, args.bundle)
        if args.command == "serve":
            return _serve(settings, args.host, args.port, args.no_worker)
        if args.command == "worker":
            return _worker(settings)
        if args.command == "check":
            return _check(settings)
        if args.command == "engines":
            return _engines(settings, args.retry)
        if args.command in ("user", "token", "tls"):
            return cli_accounts.run(args.command, args, settings)
        if args.command in ("backup", "restore"):
            return _backup(settings, args)
        if args.command == "export" and args.reviewed:
            return _export_reviewed(settings, args)
        if args.command == "export":
            from edge_app.ops.export import export

            print(f"export written to {export(settings, args.dir, deidentify=args.deidentify, since=args.since)}")
            return 0
        if args.command == "outbox":
            return _outbox_retry(settings, args.destination)
        return _bench(settings, args.files, args.bundle, args.limit, args.warmup)
    except UserError as exc:
        print(f"edge-app: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a bug: its traceback goes to the log, the exit status says it was not the input
        log.debug("internal error", exc_info=True)
        print(f"edge-app: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


class _AtDebugLevel(logging.Filter):
    """A library's messages about the files it reads (pydicom's warnings on damaged headers) belong to the debug
    log, not to the user's terminal: the refusal already says what is wrong."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.verbose


def _files(paths: Sequence[Path]) -> Iterator[Path]:
    """Files as given; folders expanded to the files in them (sorted, hidden ones skipped)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            yield path


def _diagnose(settings: Settings, paths: Sequence[Path], bundle_path: Path | None) -> int:
    """One JSON line per file; exit 0 when every file was diagnosed, 1 when some were rejected or outside what the
    model reads (not diagnosed), 3 on any internal error (the other files are still diagnosed)."""
    diagnoser = Diagnoser.from_settings(settings, bundle_path)
    statuses = set()
    try:
        for path in _files(paths):
            diagnosis = diagnoser.diagnose(path)
            statuses.add(diagnosis.status)
            print(json.dumps(diagnosis.as_dict()), flush=True)
    finally:
        diagnoser.close()
    if "failed" in statuses:
        return EXIT_INTERNAL
    return EXIT_REJECTED if statuses & {"rejected", "outside"} else 0


def _serve(settings: Settings, host: str | None, port: int | None, no_worker: bool = False) -> int:
    import ssl
    import threading

    from edge_app.config import with_overrides
    from edge_app.service import Service
    from edge_app.system.signals import StopSignals
    from edge_app.system.systemd import Watchdog, notify, watchdog_interval
    from edge_app.web import compile_templates, create_app
    from edge_app.web.server import Server

    settings = with_overrides(settings, "server", {"host": host, "port": port})
    host, port = settings.server.host, settings.server.port
    scheme = "https" if settings.tls else "http"
    with StopSignals() as stop, Service(settings, role="front" if no_worker else "all") as service:
        app = create_app(service)
        try:
            server = Server(app, settings.server, settings.tls_files if settings.tls else None)
        except (OSError, ssl.SSLError) as exc:
            cert, key = settings.tls_files
            raise UserError(f"cannot serve HTTPS with {cert} and {key}: {exc}") from None
        try:
            server.prepare()
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        log.info("serving on %s://%s:%d (data in %s)", scheme, host, port, settings.storage.data_dir)
        # app.jinja_env made here; the thread only fills its cache, while the first requests are answered
        threading.Thread(target=compile_templates, args=(app.jinja_env,), name="templates", daemon=True).start()
        interval = watchdog_interval()
        worker = service.worker
        watchdog = Watchdog(interval, lambda: worker is None or worker.progressing(2 * interval)) if interval else None
        failed: list[BaseException] = []

        def serve() -> None:
            try:
                server.serve()
            except BaseException as exc:  # raised again once the server is stopped (cheroot re-raises an interrupt)
                failed.append(exc)
            finally:
                stop.wake()

        # cheroot's accept loop in a thread of its own: the main thread waits for systemd's stop (SIGTERM) or
        # Ctrl-C, then stops the server in order
        serving = threading.Thread(target=serve, name="accept")
        serving.start()
        try:
            if watchdog is not None:
                watchdog.start()
            notify("READY=1")  # the store, the models, the sources and the listening socket are all up
            stop.wait()
        finally:
            notify("STOPPING=1")
            service.stopping.set()  # long answers (the video preview) end: the server's stop waits for them
            server.stop()
            serving.join()
            if watchdog is not None:
                watchdog.stop()
        if failed:
            raise failed[0]
    log.info("stopped")
    return 0


def _worker(settings: Settings) -> int:
    """The models, the inference worker, the outputs and retention, in a process of their own."""
    from edge_app.service import Service
    from edge_app.system.signals import StopSignals
    from edge_app.system.systemd import Watchdog, notify, watchdog_interval

    with StopSignals() as stop, Service(settings, role="worker") as service:
        worker = service.worker
        assert worker is not None
        interval = watchdog_interval()
        watchdog = Watchdog(interval, lambda: worker.progressing(2 * interval)) if interval else None
        if watchdog is not None:
            watchdog.start()
        log.info(
            "worker running on %s (%s)",
            settings.storage.data_dir,
            service.registry.describe() if service.registry else "",
        )
        notify("READY=1")
        stop.wait()  # systemd's stop (SIGTERM) or Ctrl-C
        notify("STOPPING=1")
        if watchdog is not None:
            watchdog.stop()
    log.info("stopped")
    return 0


def _backup(settings: Settings, args: argparse.Namespace) -> int:
    from edge_app.ops.backup import backup, restore

    if args.command == "backup":
        print(f"backup written to {backup(settings, args.dir)}")
        return 0
    aside, brought = restore(settings, args.backup)
    print(f"restored into {settings.storage.data_dir}" + (f"; the previous data is kept in {aside}" if aside else ""))
    print(brought)
    return 0


def _engines(settings: Settings, retry: bool) -> int:
    """One line per bundle; exit 0 even where no engine could be built: the service then runs on ONNX Runtime."""
    from edge_app.runtime.engines.ensure import ensure_engines

    for name, entry in ensure_engines(settings, retry).items():
        print(f"{name}: {entry['status']}: {entry['detail']}")
    return 0


def _check(settings: Settings) -> int:
    """One line per check; exit 1 where any failed."""
    from edge_app.ops.check import run_checks

    checks = run_checks(settings)
    for check in checks:
        print(check)
    failed = sum(c.level == "FAIL" for c in checks)
    print(f"{len(checks)} checks, {failed} failed")
    return 1 if failed else 0


def _export_reviewed(settings: Settings, args: argparse.Namespace) -> int:
    """The reviewed cases into DIR (audited as the shell's user), and how an engineer measures a bundle on them."""
    from edge_app.ops.reviewed import export_reviewed

    if args.since is not None:
        raise UserError("--since does not apply to --reviewed: every reviewed image is exported")
    actor = f"cli:{cli_accounts.login_name()}"
    done = export_reviewed(settings, args.dir, actor, deidentify=args.deidentify, force=args.force)
    print(f"{done.images} reviewed image(s) written to {done.folder} (labels: {', '.join(done.labels)})")
    for line in done.left_out:
        print(f"edge-app: left out: {line}", file=sys.stderr)
    if done.left_out:
        print(f"{len(done.left_out)} reviewed image(s) left out (each said above, on stderr)")
    print(
        f"measure a bundle on them: edge-convert validate BUNDLE --reference MODEL.onnx --data {done.folder}/images "
        f"--labels {done.folder}/labels.csv --record"
    )
    return 0


def _outbox_retry(settings: Settings, destination: str | None) -> int:
    """Queue again what was given up (audited as the shell's user); the running sender takes it."""
    from edge_app.store import Store

    configured = [str(d) for d in settings.outputs.destinations]
    if destination is not None and destination not in configured:
        raise UserError(f"{destination} is not a configured destination ({', '.join(configured) or 'none'})")
    store = Store(settings.storage.data_dir)
    try:
        count = store.retry_outputs(configured, f"cli:{cli_accounts.login_name()}", destination)
        print(f"{count} result(s) queued again for {destination or 'every configured destination'}")
        for b in store.backlog():
            print(f"{b.destination}: {b.waiting} waiting, {b.failed} given up; last error: {b.last_error or '-'}")
    finally:
        store.close()
    return 0


def _bench(settings: Settings, paths: Sequence[Path], bundle_path: Path | None, limit: int, warmup: int) -> int:
    """Time the service's own pipeline (`Diagnoser.diagnose`, which records each stage) on real images."""
    diagnoser = Diagnoser.from_settings(settings, bundle_path)
    files = list(_files(paths))[:limit]
    if not files:
        raise UserError("no image files to benchmark")
    stages: dict[str, list[float]] = {"decode": [], "preprocess": [], "isolation": [], "infer": []}
    skipped = 0
    try:
        for i, path in enumerate(files):
            diagnosis = diagnoser.diagnose(path)
            if diagnosis.status != "ok":
                log.warning("skipped: %s: %s", path, diagnosis.reason)
                skipped += 1
            elif i >= warmup:
                for name, values in stages.items():
                    values.append(diagnosis.timings_ms[name])
    finally:
        diagnoser.close()
    n = len(stages["decode"])
    if n == 0:
        raise UserError("every image was skipped or used for warm-up; give more images")
    total = [sum(v) for v in zip(*stages.values(), strict=True)]
    info = diagnoser.model_info
    print(
        f"model {info['name']} {info['version']} ({info['precision']}, {info['runner']}); "
        f"{n} images timed, {min(warmup, len(files))} warm-up, {skipped} skipped"
    )
    print(f"{'stage':<12}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}{'images/s':>10}")
    for name, values in [*stages.items(), ("total", total)]:
        arr = np.asarray(values)
        print(
            f"{name:<12}{np.percentile(arr, 50):>10.2f}{np.percentile(arr, 95):>10.2f}{arr.mean():>10.2f}"
            f"{1e3 / arr.mean():>10.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

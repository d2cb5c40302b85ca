"""What every benchmark needs of a running appliance: a free port, `edge-app serve` started and answering, and an
API token or a user made in its data directory (as `edge-app token create` / `user add` would)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: its support package
from support.processes import free_port as free_port
from support.processes import own_environ

EDGE_APP = Path(sys.executable).parent / "edge-app"


def api_headers(data_dir: str | Path, roles: str = "clinician,technician") -> dict[str, str]:
    store = Store(Path(data_dir))
    try:
        secret = Accounts(store).create_token(f"bench-{os.urandom(4).hex()}", parse_roles(roles))
    finally:
        store.close()
    return {"Authorization": f"Bearer {secret}"}


def add_user(data_dir: str | Path, name: str, roles: str, password: str) -> None:
    store = Store(Path(data_dir))
    try:
        Accounts(store).add_user(name, parse_roles(roles), password)
    finally:
        store.close()


def environ(data_dir: str | Path, port: int, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an `edge-app` command on `data_dir` and `port`: a configuration of its own, written in the
    data directory, and none of the machine's (`support.processes.own_environ`)."""
    return own_environ(Path(data_dir), port, Path(data_dir) / "benchmark.toml", extra_env)


def serve(
    data_dir: str | Path, port: int, extra_env: dict[str, str] | None = None, no_worker: bool = False
) -> subprocess.Popen[bytes]:
    """`edge-app serve` (`--no-worker`: the front alone) on localhost:port, returned once /api/v1/health answers."""
    env = environ(data_dir, port, extra_env)
    command = [str(EDGE_APP), "serve", *(["--no-worker"] if no_worker else [])]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    sys.exit("edge-app serve did not start")

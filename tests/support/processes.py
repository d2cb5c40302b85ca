"""Real servers in child processes on localhost: `edge-app serve` and NVIDIA's Triton."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

from edge_app.config import CONFIG_ENV, ENV_PREFIX
from support.tools import EDGE_APP


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_log(data_dir: Path, port: int) -> Path:
    """Where `launch` writes the output of the server it started on `data_dir` and `port`."""
    return data_dir.parent / f"serve-{port}.log"


def own_environ(data_dir: Path, port: int, config: Path, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an `edge-app` command on `data_dir` and `port` (and extra variables): it reads `config`,
    written here, and nothing of the machine's: no EDGE_APP_* setting of the shell, and neither $EDGE_APP_CONFIG's
    file nor /etc/edge-app/edge-app.toml (a running appliance's)."""
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"[storage]\ndata_dir = {json.dumps(str(data_dir))}\n\n[server]\nport = {port}\n")
    own = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**own, CONFIG_ENV: str(config), **(extra_env or {})}


def launch_config(data_dir: Path, port: int) -> Path:
    """The configuration file `launch` writes for the server on `data_dir` and `port` (its worker reads it too)."""
    return data_dir.parent / f"edge-app-{port}.toml"


def launch(
    data_dir: Path, port: int, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    """Start a real `edge-app serve` on a data directory and port (and extra environment variables and arguments:
    `--no-worker`), reading a configuration file of its own (beside the data directory) and none of the machine's;
    returns once it answers /health."""
    env = own_environ(data_dir, port, launch_config(data_dir, port), extra_env)
    # Its output to a file, not a pipe no one reads while it runs: a full pipe would stop the server mid-log.
    log = server_log(data_dir, port)
    with log.open("a") as out:
        proc = subprocess.Popen([*EDGE_APP, "serve", *args], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"server did not start: {log.read_text()}")
            time.sleep(0.1)


def tritonserver_dist() -> Path:
    """The tritonserver that nvidia-pytriton's wheel carries (x86_64, with the Python backend), or a skip."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")  # found, not imported: its own dependencies are not installed
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("no Triton server: pip install --no-deps nvidia-pytriton==0.7.0 (see the README's test command)")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not (dist / "python_backend_stubs" / version / "triton_python_backend_stub").is_file():
        pytest.skip(f"nvidia-pytriton has no Python backend stub for Python {version}")
    return dist


class TritonServer:
    """A real Triton server on 127.0.0.1 serving `repository`, its Python backend running in this environment."""

    def __init__(self, repository: Path, work: Path, *extra: str) -> None:
        dist = tritonserver_dist()
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        backend = work / "backends" / "python"
        backend.mkdir(parents=True, exist_ok=True)
        for item in (dist / "backends" / "python").iterdir():
            if not (backend / item.name).exists():
                (backend / item.name).symlink_to(item)
        stub = backend / "triton_python_backend_stub"
        if not stub.exists():
            stub.symlink_to(dist / "python_backend_stubs" / version / "triton_python_backend_stub")
        self.command = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={work / 'backends'}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--allow-metrics=false",
            "--exit-timeout-secs=5",
            *extra,
        ]
        libs = [str(dist.parent.parent / "nvidia_pytriton.libs"), str(Path(sys.base_prefix) / "lib")]
        self.env = {
            **os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(libs),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        self.log = work / "tritonserver.log"
        self.port = self.grpc_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None = None) -> TritonServer:
        self.port = port or free_port()
        self.grpc_port = free_port()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.command, f"--http-port={self.port}", f"--grpc-port={self.grpc_port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"tritonserver did not become ready:\n{self.log.read_text()[-3000:]}")

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

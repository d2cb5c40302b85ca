"""A real PACS in the tests: Debian's Orthanc on 127.0.0.1 with its own storage in a scratch folder, driven by its
REST API (store, push to a modality by C-STORE, find). Skipped with the reason where Orthanc is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from support.processes import free_port


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
    if found is None:
        pytest.skip("Orthanc is not installed: apt-get install orthanc (.ci/run installs it)")
    return found


class Orthanc:
    """One Orthanc process; `modalities` are the DICOM nodes it knows by name ({"edgeapp": ("EDGEAPP", port)}),
    all on 127.0.0.1. It checks the AE title it is called by (`ae_title`). Orthanc 1.10 has no bind-address
    option: it listens on every interface, and the tests only talk to it on 127.0.0.1."""

    def __init__(
        self,
        work: Path,
        ae_title: str = "ORTHANC",
        modalities: dict[str, tuple[str, int]] | None = None,
        dicom_port: int | None = None,
    ):
        self.ae_title = ae_title
        self.http_port, self.dicom_port = free_port(), dicom_port or free_port()
        work.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": ae_title,
            "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: [aet, "127.0.0.1", port] for name, (aet, port) in (modalities or {}).items()},
            "Plugins": [],
        }
        path = work / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log = (work / "orthanc.log").open("w")
        self.proc = subprocess.Popen([orthanc_binary(), str(path)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/system")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"Orthanc did not start: {(work / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.1)

    def _request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def get(self, path: str) -> Any:
        return self._request("GET", path, timeout=5)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body if isinstance(body, bytes) else json.dumps(body).encode())

    def upload(self, data: bytes) -> str:
        """Store a DICOM file; its Orthanc id."""
        return str(self.post("/instances", data)["ID"])

    def push(self, modality: str, ids: list[str]) -> dict[str, Any]:
        """C-STORE these resources to a known modality, in one association (Orthanc's job), and wait for it; its
        answer (InstancesCount, FailedInstancesCount...)."""
        return dict(self.post(f"/modalities/{modality}/store", {"Resources": ids, "Synchronous": True}))

    def instances(self, modality: str) -> list[dict[str, Any]]:
        """The instances held of one modality ("SR", "OT"...), each with its main tags."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": {"Modality": modality}, "Expand": True})
        return [self.get(f"/instances/{i['ID']}/simplified-tags") for i in found]

    def freeze(self) -> None:
        """SIGSTOP: it keeps its port and takes connections (the kernel does), and answers nothing."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def toml_destinations(destinations: dict[str, int]) -> str:
    """{AE title: port} on 127.0.0.1 as the value of EDGE_APP_OUTPUTS_DESTINATIONS (TOML)."""
    return (
        "["
        + ", ".join(f'{{ ae_title = "{ae}", host = "127.0.0.1", port = {port} }}' for ae, port in destinations.items())
        + "]"
    )

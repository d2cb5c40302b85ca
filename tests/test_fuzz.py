"""A few hundred seeded mutants of real DICOM and PNG files (tests/fuzz.py makes them; it runs thousands) through
the service's pipeline, `edge-app diagnose` and the API: each is diagnosed or refused with a reason, nothing
fails, hangs or crashes, and every upload is kept with its result."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from fuzz import mutants

from edge_app.config import Settings
from edge_app.inference.diagnoser import Diagnoser

pytestmark = pytest.mark.system

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def diagnoser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Diagnoser]:
    data_dir = tmp_path_factory.mktemp("data")
    d = Diagnoser.from_settings(
        Settings.model_validate({"storage": {"data_dir": str(data_dir)}, "model": {"threads": 1}})
    )
    yield d
    d.close()


def test_mutants_through_the_pipeline(diagnoser: Diagnoser) -> None:
    statuses: dict[str, int] = {}
    for name, data in mutants(300, seed=20261125):
        diagnosis = diagnoser.diagnose(data, source=name)
        assert diagnosis.status in ("ok", "rejected", "outside"), (name, diagnosis.reason)
        if diagnosis.status == "ok":
            assert len(diagnosis.findings) == 5
        else:  # refused by the decoder, or by the input guard (a mutant that decodes but is no chest any more)
            assert diagnosis.reason and "Traceback" not in diagnosis.reason and diagnosis.findings == []
        statuses[diagnosis.status] = statuses.get(diagnosis.status, 0) + 1
    decoded = statuses.get("ok", 0) + statuses.get("outside", 0)  # a mangled chest X-ray is seldom one still
    assert decoded >= 5, "some mutants are still images: the mutations are not all fatal"


def test_mutants_through_diagnose(cli: Cli, tmp_path: Path) -> None:
    for name, data in mutants(60, seed=7):
        (tmp_path / name).write_bytes(data)
    proc = cli("diagnose", str(tmp_path))
    assert proc.returncode in (0, 1), proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 60 and {d["status"] for d in lines} <= {"ok", "rejected", "outside"}
    assert "Traceback" not in proc.stderr and "pydicom" not in proc.stderr


def test_mutants_through_the_api(client: FlaskClient) -> None:
    for name, data in mutants(40, seed=11):
        resp = client.post(f"/api/v1/studies?filename={name}", data=data)
        assert resp.status_code in (200, 201, 422), (name, resp.get_json())
        body = resp.get_json()
        study = body if resp.status_code == 201 else body["study"]
        (image,) = [i for i in study["images"] if i["id"] == body["image_id"]]
        assert image["status"] in ("done", "rejected", "no_model", "outside")
        assert body["duplicate"] or image["size"] == len(data)

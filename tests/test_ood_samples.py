"""The out-of-distribution sample sets of tests/ood_samples.py: every kind has images, every image decodes with the
project's own decoder, a seed gives the same set every time, the chest files stay out of the non-target set, and
the kinds made from the NIH images are there only with the real data (the tests that need it skip without it)."""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from ood_samples import (
    CHEST_KINDS,
    DROPPED,
    KNOWN_REFUSED,
    NIH_KINDS,
    OUTSIDE_KINDS,
    Sample,
    chest_samples,
    outside_samples,
)

from edge_app.imaging.decode import decode

pytestmark = pytest.mark.unit

_MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff"}
_FORMAT = {".png": "png", ".jpg": "jpeg", ".dcm": "dicom"}


@pytest.fixture(scope="module")
def outside() -> list[Sample]:
    return outside_samples(seed=0, nih_dir=None)


@pytest.fixture(scope="module")
def outside_nih(nih: Path) -> list[Sample]:
    return outside_samples(seed=0, nih_dir=nih)


def _undecodable(samples: list[Sample]) -> list[str]:
    failures = []
    for s in samples:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's, on its odd test files
                image = decode(s.data, source=s.name)
        except Exception as exc:
            failures.append(f"{s.kind} {s.name}: {exc}")
            continue
        if image.format != _FORMAT[s.suffix]:
            failures.append(f"{s.kind} {s.name}: decoded as {image.format}, named {s.suffix}")
    return failures


@pytest.mark.parametrize("kind", [k for k in OUTSIDE_KINDS if k not in NIH_KINDS])
def test_each_kind_has_images(outside: list[Sample], kind: str) -> None:
    assert Counter(s.kind for s in outside)[kind] >= 20


def test_samples_are_well_formed(outside: list[Sample]) -> None:
    assert {s.kind for s in outside} <= set(OUTSIDE_KINDS)
    names = [s.name for s in outside]
    assert len(names) == len(set(names)), "sample names repeat"
    for s in outside:
        assert s.suffix in _FORMAT, s.name
        if s.suffix == ".dcm":
            assert s.data[128:132] == b"DICM", s.name
        else:
            assert s.data.startswith(_MAGIC[s.suffix]), s.name


def test_every_sample_decodes(outside: list[Sample]) -> None:
    assert _undecodable(outside) == []


def test_the_same_seed_gives_the_same_set() -> None:
    first = outside_samples(seed=3, per_kind=5, nih_dir=None)
    assert outside_samples(seed=3, per_kind=5, nih_dir=None) == first
    other = outside_samples(seed=4, per_kind=5, nih_dir=None)
    synthetic = {"noise", "gradient", "photo_document"}
    assert [s.data for s in first if s.kind in synthetic] != [s.data for s in other if s.kind in synthetic]


def test_no_chest_image_is_outside(outside: list[Sample]) -> None:
    for s in outside:
        if s.kind in NIH_KINDS:
            continue
        assert "RG1_" not in s.name, s.name
        if s.suffix == ".dcm":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(s.data), stop_before_pixels=True)
            assert str(ds.get("BodyPartExamined", "")).upper() != "CHEST", s.name


def test_only_known_refusals_are_left_out(outside: list[Sample]) -> None:
    assert set(DROPPED) <= KNOWN_REFUSED, f"newly refused by the decoder: {set(DROPPED) - KNOWN_REFUSED}"
    names = {s.name for s in outside}
    assert not names & set(DROPPED)
    assert "pydicom-data/RG3_UNCR.dcm" in names
    assert "pydicom-data/OT-PAL-8-face.dcm:part10.dcm" in names


def test_without_nih_data_its_kinds_are_left_out_with_a_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ood_samples"):
        samples = outside_samples(seed=0, per_kind=2, nih_dir=tmp_path)
    assert not [s.name for s in samples if s.name.startswith("nih/")]
    assert any("no NIH data" in r.getMessage() for r in caplog.records)
    # pydicom-data's chest, turned and photometric-flipped, remain
    assert {s.kind for s in samples} >= set(NIH_KINDS)


def test_nih_kinds(outside_nih: list[Sample]) -> None:
    derived = [s for s in outside_nih if s.kind in NIH_KINDS]
    counts = Counter(s.kind for s in derived if s.name.startswith("nih/"))
    assert counts["chest_rotated"] >= 20
    assert counts["chest_inverted"] >= 20
    assert _undecodable(derived) == []


def test_chest_samples_from_pydicom() -> None:
    samples = chest_samples(None)
    assert {s.kind for s in samples} == {"pydicom_chest"}
    assert {Path(s.name).name for s in samples} >= {"RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"}
    for s in samples:
        assert decode(s.data, source=s.name).metadata["body_part"] == "CHEST"


def test_chest_samples_with_nih(nih: Path) -> None:
    samples = chest_samples(nih)
    counts = Counter(s.kind for s in samples)
    assert set(counts) == set(CHEST_KINDS)
    assert counts["nih_test"] == 200
    assert _undecodable(samples) == []
    for s in samples:
        if s.kind == "nih_dicom_blank_body_part":
            meta = decode(s.data, source=s.name).metadata
            assert (meta["modality"], meta["body_part"]) == ("DX", ""), s.name

"""Where the real data lies (no pytest here: tests/ood_samples.py and the benchmarks import it too)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("EDGE_SHARED_DATA", ROOT.parent / "shared" / "data"))
NIH = SHARED_DATA / "nih-cxr14-sample"


def dicom_dirs() -> list[Path]:
    """Folders of real DICOM files: pydicom-data's store and pydicom's own test files."""
    import pydicom.data

    dirs = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store  # the pydicom-data package

        dirs.insert(0, Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return dirs

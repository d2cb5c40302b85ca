"""The UIDs this box makes for its own objects (the SR and the heatmap Secondary Capture it sends): one root, so
that an object of ours coming back (a PACS re-sending a study) is known as ours and never read as a new image.

The root sits under pydicom's (1.2.826.0.1.3680043.8.498) with a further component: pydicom's own random UIDs are
its root and one run of digits, so none of them can begin with this root. A vendor with a registered root of its
own puts it here."""

from __future__ import annotations

OUTPUT_UID_ROOT = "1.2.826.0.1.3680043.8.498.1."


def new_output_uid() -> str:
    """A new UID under the box's root."""
    from pydicom.uid import generate_uid

    return generate_uid(prefix=OUTPUT_UID_ROOT)


def is_ours(uid: str) -> bool:
    """Whether a UID was made by this box (an object of ours coming back)."""
    return uid.startswith(OUTPUT_UID_ROOT)

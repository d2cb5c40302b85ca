"""Images that are not a frontal chest X-ray, and real ones that are: the sets an out-of-distribution guard is
measured on (tests and benchmarks import this module; it is not a test file).

    outside_samples(seed=0, per_kind=24, nih_dir=NIH)   # a few hundred non-target images, by kind
    chest_samples(nih_dir=NIH)                           # real frontal chest X-rays

Every `Sample` is a file's bytes (`data`) with its suffix (".png", ".jpg" or ".dcm"), a `kind` and a `name` unique
in its set. The same seed gives the same bytes. Kinds of `outside_samples`:

- "radiograph_other": pydicom-data's real extremity CR (RG3_* in its four transfer syntaxes) and pydicom's three
  tiny cervical-spine CR (dicomdirtests/77654033/CR*), PNG views derived from RG3 (downsampled, cropped, turned),
  and synthetic hand, knee, foot, spine and skull radiograph look-alikes (grey PNG, 256-1024 px).
- "ct_mr_nm_us": every other image file of pydicom and pydicom-data that the project's decoder decodes (CT, MR, NM,
  US, SEG, RTDOSE, secondary captures), as its file bytes, plus a few frames of them as PNG.
- "photo_document": Pillow-drawn documents (letters, tables, forms, a skewed scan with a shadow), synthetic colour
  and grey photographs (JPEG), pydicom-data's palette-colour photograph of a face (OT-PAL-8-face.dcm, re-saved as
  a Part 10 file: the original has no preamble and the decoder refuses it), and scikit-image's sample photographs
  where scikit-image happens to be installed.
- "noise": uniform, gaussian, salt-and-pepper and smooth noise, grey and colour, 32-1024 px.
- "blank": constant images (black, white, mid-grey, others) as PNG, JPEG and minimal CR DICOM files whose
  BodyPartExamined is empty or absent.
- "gradient": linear (horizontal, vertical, diagonal, any angle) and radial grey gradients.
- "chest_rotated": NIH test-split chest X-rays turned 90, 180 and 270 degrees, and pydicom-data's chest CR
  (RG1_UNCR) turned 180 degrees as DICOM.
- "chest_inverted": NIH test-split chest X-rays with grey levels inverted, and RG1_UNCR labelled MONOCHROME1 (the
  photometric flipped, as a misconfigured modality sends it).

The NIH images come from `nih_dir` (the nih-cxr14-sample folder: images/*.png and split.csv's `test` rows); where it
is None or absent those are left out with a logged note, and only the pydicom-derived chest_rotated/chest_inverted
samples remain.

DICOM files the project's decoder (`edge_app.imaging.decode.decode`) refuses are left out; `DROPPED` maps each one
left out to the reason, filled as the files are first read. With pydicom 3.0 these are (and `KNOWN_REFUSED` lists
them): pydicom's JPEG-lossy.dcm and JPEG2000-embedded-sequence-delimiter.dcm (compressed frame cannot be read:
libjpeg and openjpeg errors), MR_truncated.dcm (pixel data too short), badVR.dcm (NumberOfFrames '1A'),
meta_missing_tsyntax.dcm and nested_priv_SQ.dcm (no Rows/Columns), and pydicom-data's OT-PAL-8-face.dcm (not a
Part 10 file; its re-saved copy is kept, above). Files without pixel data (SR, RT plans and structures, ECG,
DICOMDIRs) are not images and are not counted as dropped.

Many pydicom files are one image in several encodings and share a SOP Instance UID (91 of the DICOM samples share
one with another, in 26 groups): a test that sends them all to the service may see each group as one image.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from edge_app.errors import ImageRejected
from edge_app.imaging.decode import DecodeLimits, decode
from support.data import NIH, dicom_dirs

log = logging.getLogger(__name__)

OUTSIDE_KINDS = (
    "radiograph_other",
    "ct_mr_nm_us",
    "photo_document",
    "noise",
    "blank",
    "gradient",
    "chest_rotated",
    "chest_inverted",
)
NIH_KINDS = ("chest_rotated", "chest_inverted")
CHEST_KINDS = ("nih_test", "pydicom_chest", "nih_dicom_blank_body_part")
DEFAULT_NIH_DIR = NIH

# The pydicom 3.0 / pydicom-data files the project's decoder refuses (see the docstring); DROPPED is what was found.
KNOWN_REFUSED = frozenset(
    {
        "pydicom/JPEG-lossy.dcm",
        "pydicom/JPEG2000-embedded-sequence-delimiter.dcm",
        "pydicom/MR_truncated.dcm",
        "pydicom/badVR.dcm",
        "pydicom/meta_missing_tsyntax.dcm",
        "pydicom/nested_priv_SQ.dcm",
        "pydicom-data/OT-PAL-8-face.dcm",
    }
)
DROPPED: dict[str, str] = {}

_CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
U8 = NDArray[np.uint8]


@dataclass(frozen=True)
class Sample:
    kind: str
    name: str
    data: bytes
    suffix: str  # ".png", ".jpg" or ".dcm"


# -- public API ------------------------------------------------------------------------------------------------------


def outside_samples(seed: int = 0, per_kind: int = 24, nih_dir: Path | None = DEFAULT_NIH_DIR) -> list[Sample]:
    """Non-target images, kind by kind (see the module docstring); the same for the same arguments."""
    out: list[Sample] = []
    out += _radiograph_other(_rng(seed, 1), per_kind)
    out += _ct_mr_nm_us()
    out += _photo_document(_rng(seed, 3), per_kind)
    out += _noise(_rng(seed, 4), per_kind)
    out += _blank(_rng(seed, 5), per_kind)
    out += _gradient(_rng(seed, 6), per_kind)
    chest = _pydicom_chest_derived()
    test_split = _nih_test_images(nih_dir)
    if test_split:
        out += _nih_rotated(_rng(seed, 7), test_split, per_kind)
    out += chest["chest_rotated"]
    if test_split:
        out += _nih_inverted(_rng(seed, 8), test_split, per_kind)
    out += chest["chest_inverted"]
    return out


def chest_samples(nih_dir: Path | None = DEFAULT_NIH_DIR, dicom_count: int = 5) -> list[Sample]:
    """Real frontal chest X-rays: the NIH test split as its PNG files ("nih_test"), pydicom-data's chest CR in every
    transfer syntax it has ("pydicom_chest"), and the first `dicom_count` NIH test images as DX DICOM files with a
    blank BodyPartExamined ("nih_dicom_blank_body_part": empty, or absent for every other one)."""
    out: list[Sample] = []
    test_split = _nih_test_images(nih_dir)
    out += [Sample("nih_test", f"nih/{p.name}", p.read_bytes(), ".png") for p in test_split]
    for name, path in _pydicom_files():
        if Path(name).name.startswith("RG1_"):
            data = _decodable(name, path.read_bytes())
            if data is not None:
                out.append(Sample("pydicom_chest", name, data, ".dcm"))
    views = _nih_views(nih_dir) if test_split else {}
    for i, path in enumerate(test_split[:dicom_count]):
        pixels = np.asarray(Image.open(path).convert("L"))
        body_part = "" if i % 2 == 0 else None
        label = "empty" if body_part == "" else "absent"
        name = f"nih-dicom/{path.stem}-body-part-{label}.dcm"
        data = _dicom_bytes(pixels, name, modality="DX", body_part=body_part, view=views.get(path.name, "PA"))
        out.append(Sample("nih_dicom_blank_body_part", name, data, ".dcm"))
    return out


# -- helpers ---------------------------------------------------------------------------------------------------------


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _png(pixels: U8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _jpg(pixels: U8, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _u8(values: NDArray[Any]) -> U8:
    """Float values in [0, 1] as 8-bit pixels."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def _dicom_bytes(
    pixels: NDArray[Any],
    name: str,
    *,
    modality: str = "CR",
    body_part: str | None = "",
    view: str | None = None,
    photometric: str = "MONOCHROME2",
) -> bytes:
    """A minimal, valid Part 10 file (explicit VR little endian) holding one grey frame; UIDs derived from `name`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    uid = generate_uid(entropy_srcs=["ood_samples", name])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _CR_STORAGE
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = _CR_STORAGE, uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["ood_samples", name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["ood_samples", name, "series"])
    ds.PatientID, ds.PatientName = "OOD-SAMPLE", "Sample^Ood"
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8 if bits == 8 else np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _size(rng: np.random.Generator, lo: int = 256, hi: int = 1024) -> tuple[int, int]:
    """(width, height), each in [lo, hi]."""
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


# -- real DICOM files ------------------------------------------------------------------------------------------------


@functools.cache
def _pydicom_files() -> tuple[tuple[str, Path], ...]:
    """Every file of pydicom-data and pydicom's test files that holds pixel data, named "pydicom-data/..." or
    "pydicom/...", sorted (found on disk: pydicom's get_testdata_files would try to download missing ones)."""
    found = []
    for folder in dicom_dirs():
        label = "pydicom" if folder.name == "test_files" else "pydicom-data"
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.suffix not in ("", ".dcm"):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path, force=True, specific_tags=["PixelData"])
            except Exception:
                continue
            if "PixelData" in ds:
                found.append((f"{label}/{path.relative_to(folder).as_posix()}", path))
    return tuple(sorted(found))


@functools.cache
def _header(path: Path) -> tuple[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    return str(ds.get("Modality", "")).upper(), str(ds.get("BodyPartExamined", "")).upper()


@functools.cache
def _decodable(name: str, data: bytes) -> bytes | None:
    """`data` if the project's decoder decodes it; otherwise None, with the reason kept in DROPPED."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's on its odd test files
            decode(data, source=name)
    except ImageRejected as exc:
        DROPPED[name] = exc.reason
        log.info("ood_samples: left out %s, refused by the decoder: %s", name, DROPPED[name])
        return None
    return data


def _frame_png(data: bytes, name: str, frame: int = 0) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = decode(data, source=name, limits=DecodeLimits(frame=frame)).pixels
    return _png(_u8(pixels))


def _is_chest(name: str, path: Path) -> bool:
    return Path(name).name.startswith("RG1_") or _header(path)[1] == "CHEST"


# The files (by name) of which a frame is also given as PNG, with the frames.
_PNG_FRAMES = {
    "pydicom-data/693_UNCR.dcm": (0,),
    "pydicom-data/MR2_UNCR.dcm": (0,),
    "pydicom-data/MR-SIEMENS-DICOM-WithOverlays.dcm": (0,),
    "pydicom-data/JPEG-LL.dcm": (0,),
    "pydicom-data/US1_UNCR.dcm": (0,),
    "pydicom-data/OBXXXX1A.dcm": (0,),
    "pydicom-data/emri_small.dcm": (0, 5, 9),
    "pydicom/examples_ybr_color.dcm": (0, 15, 29),
    "pydicom-data/color3d_jpeg_baseline.dcm": (60,),
    "pydicom-data/eCT_Supplemental.dcm": (1,),
}


def _ct_mr_nm_us() -> list[Sample]:
    out: list[Sample] = []
    frames: list[Sample] = []
    for name, path in _pydicom_files():
        modality, _ = _header(path)
        if modality in ("CR", "DX") or _is_chest(name, path) or Path(name).name.startswith("OT-PAL-8-face"):
            if Path(name).name.startswith("OT-PAL-8-face"):
                DROPPED.setdefault(name, "not a DICOM (Part 10), PNG or JPEG file (re-saved copy in photo_document)")
            continue
        data = _decodable(name, path.read_bytes())
        if data is None:
            continue
        out.append(Sample("ct_mr_nm_us", name, data, ".dcm"))
        for frame in _PNG_FRAMES.get(name, ()):
            frames.append(Sample("ct_mr_nm_us", f"{name}#frame{frame}.png", _frame_png(data, name, frame), ".png"))
    return out + frames


# -- radiograph_other ------------------------------------------------------------------------------------------------


def _radiograph_other(rng: np.random.Generator, per_kind: int) -> list[Sample]:
    out: list[Sample] = []
    rg3 = None
    for name, path in _pydicom_files():
        modality, _ = _header(path)
        if modality not in ("CR", "DX") or _is_chest(name, path):
            continue
        data = _decodable(name, path.read_bytes())
        if data is not None:
            out.append(Sample("radiograph_other", name, data, ".dcm"))
            if Path(name).name == "RG3_UNCR.dcm":
                rg3 = data
    if rg3 is not None:
        out += _rg3_views(rng, rg3)
    anatomies = ("hand", "knee", "foot", "spine", "skull")
    for i in range(per_kind):
        anatomy = anatomies[i % len(anatomies)]
        pixels = _synthetic_radiograph(rng, anatomy)
        out.append(Sample("radiograph_other", f"synthetic/{anatomy}-{i:03d}.png", _png(pixels), ".png"))
    return out


def _rg3_views(rng: np.random.Generator, data: bytes) -> list[Sample]:
    """PNG views of pydicom-data's extremity CR: whole (downsampled), random crops, turned and mirrored."""
    whole = Image.fromarray(_u8(decode(data, source="RG3_UNCR.dcm").pixels))
    views: list[tuple[str, Image.Image]] = [("whole-512", whole.resize((512, 512), Image.Resampling.BILINEAR))]
    side = whole.size[0]
    for i in range(4):
        crop = int(rng.integers(side // 3, side * 2 // 3))
        x, y = int(rng.integers(0, side - crop)), int(rng.integers(0, side - crop))
        out_side = int(rng.integers(256, 769))
        region = whole.crop((x, y, x + crop, y + crop)).resize((out_side, out_side), Image.Resampling.BILINEAR)
        views.append((f"crop{i}", region))
    bilinear = Image.Resampling.BILINEAR
    views.append(("rot90-640", whole.resize((640, 640), bilinear).transpose(Image.Transpose.ROTATE_90)))
    views.append(("mirror-400", whole.resize((400, 400), bilinear).transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    name = "pydicom-data/RG3_UNCR.dcm"
    return [Sample("radiograph_other", f"{name}:{v}.png", _png(np.asarray(im)), ".png") for v, im in views]


class _Pen:
    """Draws in a frame of the image: u, v in units of `scale` pixels around (cx, cy)."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, scale: float) -> None:
        self.draw, self.cx, self.cy, self.s = draw, cx, cy, scale

    def xy(self, u: float, v: float) -> tuple[float, float]:
        return self.cx + u * self.s, self.cy + v * self.s

    def ellipse(self, u: float, v: float, ru: float, rv: float, fill: int) -> None:
        x, y = self.xy(u, v)
        self.draw.ellipse((x - ru * self.s, y - rv * self.s, x + ru * self.s, y + rv * self.s), fill=fill)

    def capsule(self, p0: tuple[float, float], p1: tuple[float, float], width: float, fill: int) -> None:
        a, b, w = self.xy(*p0), self.xy(*p1), max(1.0, width * self.s)
        self.draw.line((a, b), fill=fill, width=round(w))
        for x, y in (a, b):
            self.draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=fill)

    def bone(self, p0: tuple[float, float], p1: tuple[float, float], width: float, cortex: int, marrow: int) -> None:
        """A long bone: a bright cortex around a less dense medulla, with slightly wider ends."""
        self.capsule(p0, p1, width, cortex)
        for p in (p0, p1):
            self.ellipse(p[0], p[1], width * 0.62, width * 0.5, cortex)
        (u0, v0), (u1, v1) = p0, p1
        shrink = 0.12
        q0 = (u0 + (u1 - u0) * shrink, v0 + (v1 - v0) * shrink)
        q1 = (u1 - (u1 - u0) * shrink, v1 - (v1 - v0) * shrink)
        self.capsule(q0, q1, width * 0.5, marrow)

    def polygon(self, points: list[tuple[float, float]], fill: int) -> None:
        self.draw.polygon([self.xy(u, v) for u, v in points], fill=fill)


def _synthetic_radiograph(rng: np.random.Generator, anatomy: str) -> U8:
    """A radiograph look-alike: bright bone shapes in soft-tissue grey on a dark field, blurred, noisy, turned."""
    w, h = _size(rng)
    background = int(rng.integers(0, 40))
    img = Image.new("L", (w, h), background)
    pen = _Pen(
        ImageDraw.Draw(img),
        w * rng.uniform(0.4, 0.6),
        h * rng.uniform(0.4, 0.6),
        min(w, h) * rng.uniform(0.75, 1.1) / (1.0 if anatomy in ("hand", "foot", "skull") else 1.4),
    )
    tissue = int(rng.integers(60, 120))
    cortex = int(rng.integers(200, 250))
    marrow = int(np.clip(cortex - rng.integers(30, 80), tissue + 20, 255))
    {"hand": _hand, "foot": _foot, "knee": _knee, "spine": _spine, "skull": _skull}[anatomy](
        pen, rng, tissue, cortex, marrow
    )
    if rng.random() < 0.6:  # a burned-in side marker
        font = ImageFont.load_default(size=max(12, min(w, h) // 14))
        corner = (int(w * rng.uniform(0.04, 0.12)), int(h * rng.uniform(0.04, 0.12)))
        ImageDraw.Draw(img).text(corner, str(rng.choice(["L", "R"])), fill=250, font=font)
    img = img.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR, fillcolor=background)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.5) * min(w, h) / 512))
    values = np.asarray(img, dtype=np.float32) / 255.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    heel = 1.0 - rng.uniform(0.0, 0.25) * (xx / w if rng.random() < 0.5 else yy / h)  # exposure fall-off
    values = values * heel
    values = values ** rng.uniform(0.7, 1.4)
    values = values + rng.normal(0.0, rng.uniform(0.005, 0.03), values.shape).astype(np.float32)
    return _u8(values)


def _digits(
    pen: _Pen,
    rng: np.random.Generator,
    tissue: int,
    cortex: int,
    marrow: int,
    *,
    base_v: float,
    long_bone: float,
    phalanges: tuple[float, ...],
    spread: float,
    width: float,
) -> None:
    """Four or five rays of a hand or foot: soft tissue first, then a long bone and its phalanges per ray."""
    rays = []
    for i in range(5):
        angle = (i - 2) * spread + rng.normal(0, spread * 0.15)
        u0 = (i - 2) * width * 1.25
        rays.append((u0, base_v, angle))
    for u0, v0, angle in rays:  # soft tissue
        length = long_bone + sum(phalanges) + 0.06
        du, dv = math.sin(angle), -math.cos(angle)
        pen.capsule((u0, v0), (u0 + du * length, v0 + dv * length), width * 2.0, tissue)
    for u0, v0, angle in rays:
        du, dv = math.sin(angle), -math.cos(angle)
        u, v = u0, v0
        bones = (long_bone, *phalanges)
        for j, length in enumerate(bones):
            wj = width * (1.0 - 0.18 * j)
            pen.bone((u, v), (u + du * length, v + dv * length), wj, cortex, marrow)
            gap = length + 0.018
            u, v = u + du * gap, v + dv * gap


def _hand(pen: _Pen, rng: np.random.Generator, tissue: int, cortex: int, marrow: int) -> None:
    pen.ellipse(0.0, 0.15, 0.24, 0.24, tissue)
    pen.capsule((0.0, 0.3), (0.0, 0.8), 0.34, tissue)  # forearm
    pen.capsule((-0.15, 0.26), (-0.34, 0.02), 0.1, tissue)  # thumb
    _digits(
        pen,
        rng,
        tissue,
        cortex,
        marrow,
        base_v=0.24,
        long_bone=0.2,
        phalanges=(0.13, 0.08, 0.06),
        spread=rng.uniform(0.1, 0.22),
        width=0.045,
    )
    pen.bone((-0.15, 0.28), (-0.25, 0.13), 0.05, cortex, marrow)  # thumb metacarpal and phalanges
    pen.bone((-0.27, 0.1), (-0.32, 0.02), 0.045, cortex, marrow)
    pen.bone((-0.33, 0.0), (-0.36, -0.05), 0.04, cortex, marrow)
    for _ in range(8):  # carpals
        pen.ellipse(
            rng.uniform(-0.12, 0.12),
            rng.uniform(0.28, 0.38),
            rng.uniform(0.03, 0.05),
            rng.uniform(0.025, 0.04),
            cortex - 15,
        )
    pen.bone((-0.07, 0.42), (-0.06, 0.85), 0.1, cortex, marrow)  # radius
    pen.bone((0.09, 0.43), (0.08, 0.85), 0.065, cortex, marrow)  # ulna


def _foot(pen: _Pen, rng: np.random.Generator, tissue: int, cortex: int, marrow: int) -> None:
    pen.ellipse(0.0, 0.3, 0.22, 0.4, tissue)
    _digits(
        pen,
        rng,
        tissue,
        cortex,
        marrow,
        base_v=0.1,
        long_bone=0.27,
        phalanges=(0.07, 0.045, 0.035),
        spread=rng.uniform(0.04, 0.09),
        width=0.05,
    )
    for _ in range(7):  # tarsals
        pen.ellipse(
            rng.uniform(-0.12, 0.12),
            rng.uniform(0.18, 0.45),
            rng.uniform(0.045, 0.08),
            rng.uniform(0.04, 0.07),
            cortex - 10,
        )
    pen.ellipse(0.0, 0.6, 0.11, 0.12, cortex - 5)  # calcaneus (talus over it)
    pen.ellipse(0.0, 0.6, 0.07, 0.08, marrow)


def _knee(pen: _Pen, rng: np.random.Generator, tissue: int, cortex: int, marrow: int) -> None:
    pen.capsule((0.0, -1.0), (0.0, 1.0), rng.uniform(0.5, 0.65), tissue)
    joint = rng.uniform(0.02, 0.05)
    pen.bone((0.0, -1.0), (0.0, -0.15), 0.2, cortex, marrow)  # femur
    pen.ellipse(-0.1, -0.08, 0.11, 0.08, cortex)  # condyles
    pen.ellipse(0.1, -0.08, 0.11, 0.08, cortex)
    pen.ellipse(0.0, -0.1, 0.12, 0.06, marrow)
    plateau = joint + 0.04
    pen.ellipse(0.0, plateau + 0.02, 0.2, 0.05, cortex)  # tibial plateau and shaft
    pen.bone((0.0, plateau + 0.05), (0.0, 1.0), 0.17, cortex, marrow)
    pen.ellipse(0.19, plateau + 0.09, 0.045, 0.04, cortex)  # fibula
    pen.bone((0.19, plateau + 0.1), (0.17, 1.0), 0.05, cortex, marrow)
    if rng.random() < 0.8:  # the patella over the femur
        pen.ellipse(rng.uniform(-0.03, 0.03), -0.16, 0.07, 0.09, min(255, cortex + 5))


def _spine(pen: _Pen, rng: np.random.Generator, tissue: int, cortex: int, marrow: int) -> None:
    pen.capsule((0.0, -1.1), (0.0, 1.1), rng.uniform(0.7, 0.9), tissue)
    n = int(rng.integers(5, 9))
    height = 1.8 / n
    bend, phase = rng.uniform(0.0, 0.12), rng.uniform(0, math.pi)
    lateral = rng.random() < 0.4
    for i in range(n):
        v = -0.9 + (i + 0.5) * height
        u = bend * math.sin(phase + v * 2.0)
        wu, hv = 0.13 + 0.015 * i * (1.6 / n), height * 0.37
        x0, y0 = pen.xy(u - wu, v - hv)
        x1, y1 = pen.xy(u + wu, v + hv)
        pen.draw.rounded_rectangle((x0, y0, x1, y1), radius=(x1 - x0) * 0.15, fill=cortex)
        x0, y0 = pen.xy(u - wu * 0.8, v - hv * 0.75)
        x1, y1 = pen.xy(u + wu * 0.8, v + hv * 0.75)
        pen.draw.rounded_rectangle((x0, y0, x1, y1), radius=(x1 - x0) * 0.15, fill=marrow)
        if lateral:  # pedicle and spinous process behind the body
            pen.polygon(
                [
                    (u + wu, v - hv * 0.4),
                    (u + wu + 0.22, v + hv * 0.2),
                    (u + wu + 0.2, v + hv * 0.6),
                    (u + wu, v + hv * 0.3),
                ],
                cortex - 20,
            )
        else:  # pedicles seen end-on and the spinous process
            for side in (-1, 1):
                pen.ellipse(u + side * wu * 0.7, v - hv * 0.3, 0.028, 0.04, min(255, cortex + 5))
                pen.ellipse(u + side * wu * 0.7, v - hv * 0.3, 0.015, 0.025, marrow)
            pen.ellipse(u, v + hv * 0.2, 0.02, 0.05, min(255, cortex + 5))


def _skull(pen: _Pen, rng: np.random.Generator, tissue: int, cortex: int, marrow: int) -> None:
    ru, rv = rng.uniform(0.3, 0.36), rng.uniform(0.36, 0.44)
    pen.ellipse(0.0, 0.0, ru + 0.04, rv + 0.04, tissue)  # scalp
    pen.ellipse(0.0, 0.0, ru, rv, cortex)  # vault
    thick = rng.uniform(0.02, 0.04)
    pen.ellipse(0.0, 0.0, ru - thick, rv - thick, marrow)  # diploe
    pen.ellipse(0.0, 0.0, ru - thick * 1.6, rv - thick * 1.6, tissue + int(rng.integers(5, 30)))  # brain
    if rng.random() < 0.5:  # frontal view: orbits, nasal cavity, mandible, teeth
        for side in (-1, 1):
            pen.ellipse(side * 0.11, 0.12, 0.075, 0.06, cortex - 30)
            pen.ellipse(side * 0.11, 0.12, 0.06, 0.045, tissue)
        pen.polygon([(0.0, 0.15), (-0.04, 0.28), (0.04, 0.28)], tissue - 20)
        x0, y0 = pen.xy(-0.24, 0.05)
        x1, y1 = pen.xy(0.24, 0.52)
        pen.draw.arc((x0, y0, x1, y1), 20, 160, fill=cortex, width=max(2, round(0.04 * pen.s)))
        for k in range(10):
            pen.ellipse(-0.1 + k * 0.022, 0.36, 0.009, 0.022, 250)
    else:  # lateral: sella, facial bones in front, cervical spine below
        pen.ellipse(0.02, 0.1, 0.035, 0.025, tissue)
        pen.polygon([(-ru, 0.05), (-ru - 0.08, 0.22), (-0.12, 0.38), (-0.05, 0.2)], cortex - 40)
        for k in range(3):
            pen.ellipse(0.1, rv + 0.08 + k * 0.09, 0.05, 0.035, cortex - 20)


# -- photo_document --------------------------------------------------------------------------------------------------

_VOCABULARY = (
    "the patient clinic report date name address district referral signature results sample blood pressure "
    "weight height visit follow up malaria test negative positive treatment dose tablet daily week month nurse "
    "doctor ward bed pharmacy stock order invoice total amount paid receipt school notice meeting community "
    "health water village road market season rain harvest register number consent form yes no"
)
_WORDS = _VOCABULARY.split()


def _text_line(rng: np.random.Generator, n_words: int) -> str:
    words = [str(w) for w in rng.choice(_WORDS, size=n_words)]
    words[0] = words[0].capitalize()
    return " ".join(words)


def _paper(rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int, int]]:
    h = int(rng.integers(800, 1025))
    w = int(h * rng.uniform(0.68, 0.8))
    colour = (255, 255, 255) if rng.random() < 0.5 else (252, 247, int(rng.integers(215, 240)))
    return Image.new("RGB", (w, h), colour), colour


def _document(rng: np.random.Generator, style: str) -> Image.Image:
    page, _ = _paper(rng)
    w, h = page.size
    draw = ImageDraw.Draw(page)
    ink = tuple(int(c) for c in rng.integers(0, 50, 3))
    size = int(rng.integers(13, 20))
    font = ImageFont.load_default(size=size)
    big = ImageFont.load_default(size=int(size * 1.6))
    margin = int(w * rng.uniform(0.07, 0.12))
    y = margin
    draw.text((margin, y), _text_line(rng, int(rng.integers(2, 5))).upper(), fill=ink, font=big)
    y += int(size * 3)
    if style == "letter":
        while y < h - margin:
            if rng.random() < 0.12:
                y += size  # paragraph break
            line = _text_line(rng, int(rng.integers(6, 12)))
            draw.text((margin, y), line[: int((w - 2 * margin) / (size * 0.5))], fill=ink, font=font)
            y += int(size * 1.5)
    elif style == "table":
        rows, cols = int(rng.integers(8, 20)), int(rng.integers(3, 6))
        row_h = min(int(size * 2), (h - y - margin) // rows)
        col_w = (w - 2 * margin) // cols
        for r in range(rows + 1):
            draw.line((margin, y + r * row_h, margin + cols * col_w, y + r * row_h), fill=ink, width=1 + (r in (0, 1)))
        for c in range(cols + 1):
            draw.line((margin + c * col_w, y, margin + c * col_w, y + rows * row_h), fill=ink, width=1)
        for r in range(rows):
            for c in range(cols):
                cell = _text_line(rng, 1) if r == 0 or c == 0 else f"{rng.integers(0, 1000)}"
                draw.text((margin + c * col_w + 4, y + r * row_h + 3), cell[:12], fill=ink, font=font)
    else:  # form: labelled boxes, tick boxes, a signature line
        while y < h - margin * 2:
            label = _text_line(rng, int(rng.integers(1, 3))) + ":"
            draw.text((margin, y), label, fill=ink, font=font)
            if rng.random() < 0.3:
                for k in range(int(rng.integers(2, 5))):
                    x = margin + 160 + k * 110
                    draw.rectangle((x, y, x + size, y + size), outline=ink, width=2)
                    if rng.random() < 0.4:
                        draw.line(
                            (x + 3, y + size // 2, x + size // 2, y + size - 3, x + size - 2, y + 2), fill=ink, width=2
                        )
                    draw.text((x + size + 6, y), _text_line(rng, 1), fill=ink, font=font)
            else:
                draw.rectangle((margin + 150, y - 4, w - margin, y + size + 8), outline=ink, width=1)
                if rng.random() < 0.6:
                    handwriting = (0, 0, int(rng.integers(90, 160)))
                    draw.text((margin + 160, y), _text_line(rng, int(rng.integers(1, 4))), fill=handwriting, font=font)
            y += int(size * 2.6)
        draw.line((w - margin - 220, h - margin, w - margin, h - margin), fill=ink, width=1)
    return page


def _scan(rng: np.random.Generator, page: Image.Image) -> Image.Image:
    """The page on a scanner: turned a little, on the lid's grey, a shadow along one edge, noise."""
    w, h = page.size
    lid = int(rng.integers(40, 120))
    canvas = Image.new("RGB", (int(w * 1.1), int(h * 1.08)), (lid, lid, lid))
    canvas.paste(page, (int(w * 0.05), int(h * 0.04)))
    canvas = canvas.rotate(float(rng.uniform(-4, 4)), resample=Image.Resampling.BILINEAR, fillcolor=(lid, lid, lid))
    values = np.asarray(canvas, dtype=np.float32) / 255.0
    ch, cw = values.shape[:2]
    ramp = np.linspace(0.0, 1.0, cw, dtype=np.float32)
    shadow = 1.0 - rng.uniform(0.3, 0.6) * np.clip(1.0 - ramp / rng.uniform(0.1, 0.25), 0, 1)
    if rng.random() < 0.5:
        shadow = shadow[::-1]
    values = values * shadow[None, :, None]
    values += rng.normal(0, 0.02, (ch, cw, 1)).astype(np.float32)
    return Image.fromarray(_u8(values)).filter(ImageFilter.GaussianBlur(0.6))


def _smooth_field(rng: np.random.Generator, w: int, h: int, cells: int) -> NDArray[np.float32]:
    """Low-frequency noise in [0, 1]: a few random cells, smoothly upsampled."""
    small = Image.fromarray(_u8(rng.random((cells, cells))))
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def _photo(rng: np.random.Generator) -> U8:
    """A natural-looking scene: a sky gradient, textured ground and hills, the sun, trees and houses."""
    w, h = _size(rng, 320, 1024)
    top, bottom = rng.uniform(0.2, 1.0, 3), rng.uniform(0.5, 1.0, 3)
    if rng.random() < 0.7:
        top, bottom = np.array([0.2, 0.4, 0.85]) * rng.uniform(0.7, 1.1), np.array([0.7, 0.85, 1.0])
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = (top[None, None, :] * (1 - t) + bottom[None, None, :] * t) * np.ones((1, w, 1), np.float32)
    horizon = int(h * rng.uniform(0.4, 0.7))
    ground = np.array(rng.choice([[0.25, 0.5, 0.15], [0.55, 0.4, 0.25], [0.6, 0.55, 0.35]]), dtype=np.float32)
    texture = 0.7 * _smooth_field(rng, w, h - horizon, 12) + 0.3 * rng.random((h - horizon, w)).astype(np.float32)
    img[horizon:] = ground[None, None, :] * (0.6 + 0.7 * texture[:, :, None])
    pil = Image.fromarray(_u8(np.clip(img, 0, 1)))
    draw = ImageDraw.Draw(pil)
    if rng.random() < 0.6:
        r, sx, sy = int(rng.integers(15, 60)), int(rng.integers(0, w)), int(rng.integers(0, horizon // 2 + 1))
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(255, 240, int(rng.integers(150, 230))))
    walk = np.cumsum(rng.normal(0, h * 0.01, 40))
    ridge = [(int(i * w / 39), int(horizon - abs(walk[i]) - h * 0.05)) for i in range(40)]
    hill = tuple(int(c) for c in rng.integers(30, 110, 3))
    draw.polygon([*ridge, (w, horizon), (0, horizon)], fill=hill)
    for _ in range(int(rng.integers(2, 9))):
        x, y = int(rng.integers(0, w)), int(rng.integers(horizon, h))
        s = int((y - horizon + 20) * rng.uniform(0.2, 0.5))
        if rng.random() < 0.6:  # a tree
            draw.rectangle((x - s // 10, y - s, x + s // 10, y), fill=(int(rng.integers(60, 110)), 50, 30))
            draw.ellipse((x - s // 2, y - 2 * s, x + s // 2, y - s // 2), fill=(30, int(rng.integers(80, 150)), 40))
        else:  # a house
            wall = tuple(int(c) for c in rng.integers(120, 240, 3))
            draw.rectangle((x - s, y - s, x + s, y), fill=wall)
            draw.polygon([(x - s - s // 5, y - s), (x + s + s // 5, y - s), (x, y - 2 * s)], fill=(140, 40, 30))
            draw.rectangle((x - s // 4, y - s // 2, x + s // 4, y), fill=(60, 40, 30))
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    values = np.asarray(pil, dtype=np.float32) / 255.0
    values += rng.normal(0, 0.015, values.shape).astype(np.float32)
    return _u8(values)


def _photo_document(rng: np.random.Generator, per_kind: int) -> list[Sample]:
    out: list[Sample] = []
    styles = ("letter", "table", "form", "scan")
    n_docs = (per_kind + 1) // 2
    for i in range(n_docs):
        style = styles[i % len(styles)]
        page = _document(rng, "letter" if style == "scan" else style)
        if style == "scan":
            page = _scan(rng, page)
        if rng.random() < 0.3:
            page = page.convert("L")
        pixels = np.asarray(page)
        if style == "scan" or rng.random() < 0.3:
            out.append(Sample("photo_document", f"document/{style}-{i:03d}.jpg", _jpg(pixels, 85), ".jpg"))
        else:
            out.append(Sample("photo_document", f"document/{style}-{i:03d}.png", _png(pixels), ".png"))
    for i in range(per_kind - n_docs):
        pixels = _photo(rng)
        grey = rng.random() < 0.25
        if grey:
            pixels = np.asarray(Image.fromarray(pixels).convert("L"))
        name = f"photo/{'grey' if grey else 'colour'}-{i:03d}.jpg"
        out.append(Sample("photo_document", name, _jpg(pixels, int(rng.integers(70, 96))), ".jpg"))
    out += _face()
    out += _skimage_photos()
    return out


@functools.cache
def _face_cached() -> tuple[Sample, ...]:
    for name, path in _pydicom_files():
        if Path(name).name == "OT-PAL-8-face.dcm":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            data = _decodable(f"{name}:part10", buf.getvalue())
            if data is None:
                return ()
            png = _png(_u8(decode(data).pixels))
            return (
                Sample("photo_document", f"{name}:part10.dcm", data, ".dcm"),
                Sample("photo_document", f"{name}:part10.png", png, ".png"),
            )
    return ()


def _face() -> list[Sample]:
    return list(_face_cached())


def _skimage_photos() -> list[Sample]:
    try:
        from skimage import data as skdata  # optional: not a dependency
    except ImportError:
        return []
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "text", "page", "moon", "coins"):
        try:
            pixels = np.asarray(getattr(skdata, name)())
        except Exception:  # a sample that needs a download (pooch) or is missing
            continue
        if pixels.dtype != np.uint8:
            continue
        out.append(Sample("photo_document", f"skimage/{name}.png", _png(pixels), ".png"))
    return out


# -- noise, blank, gradient ------------------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, per_kind: int) -> list[Sample]:
    out = []
    variants = ("uniform-grey", "gaussian-grey", "uniform-colour", "gaussian-colour", "salt-pepper", "smooth-grey")
    for i in range(per_kind):
        variant = variants[i % len(variants)]
        w, h = _size(rng, 32, 1024)
        shape: tuple[int, ...] = (h, w, 3) if "colour" in variant else (h, w)
        if variant.startswith("uniform"):
            values = rng.random(shape)
        elif variant.startswith("gaussian"):
            values = rng.normal(rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.3), shape)
        elif variant == "salt-pepper":
            values = np.full(shape, rng.uniform(0.2, 0.8))
            spots = rng.random(shape)
            density = rng.uniform(0.02, 0.3)
            values[spots < density / 2] = 0.0
            values[spots > 1 - density / 2] = 1.0
        else:
            values = _smooth_field(rng, w, h, int(rng.integers(4, 40)))
        pixels = _u8(values)
        if rng.random() < 0.25:
            out.append(Sample("noise", f"noise/{variant}-{i:03d}.jpg", _jpg(pixels), ".jpg"))
        else:
            out.append(Sample("noise", f"noise/{variant}-{i:03d}.png", _png(pixels), ".png"))
    return out


def _blank(rng: np.random.Generator, per_kind: int) -> list[Sample]:
    out = []
    for i in range(per_kind):
        value = (0, 255, 128)[i % 3] if i < 9 else int(rng.integers(0, 256))
        w, h = _size(rng, 64, 1024)
        form = ("png", "dcm", "png", "jpg")[i % 4]
        if form == "dcm":
            body_part = "" if i % 8 == 1 else None
            sixteen = rng.random() < 0.5
            pixels = np.full((h, w), value * (16 if sixteen else 1), np.uint16 if sixteen else np.uint8)
            label = "empty" if body_part == "" else "absent"
            name = f"blank/cr-{value}-body-part-{label}-{i:03d}.dcm"
            out.append(Sample("blank", name, _dicom_bytes(pixels, name, body_part=body_part), ".dcm"))
            continue
        colour = rng.random() < 0.3
        pixels = np.full((h, w, 3) if colour else (h, w), value, np.uint8)
        data = _png(pixels) if form == "png" else _jpg(pixels)
        out.append(Sample("blank", f"blank/{'rgb' if colour else 'grey'}-{value}-{i:03d}.{form}", data, f".{form}"))
    return out


def _gradient(rng: np.random.Generator, per_kind: int) -> list[Sample]:
    out = []
    variants = ("horizontal", "vertical", "diagonal", "angle", "radial")
    for i in range(per_kind):
        variant = variants[i % len(variants)]
        w, h = _size(rng, 64, 1024)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        xx, yy = xx / max(w - 1, 1), yy / max(h - 1, 1)
        if variant == "radial":
            cx, cy = rng.uniform(0.2, 0.8, 2)
            values = np.hypot(xx - cx, yy - cy)
        else:
            angle = {"horizontal": 0.0, "vertical": math.pi / 2, "diagonal": math.pi / 4}.get(
                variant, float(rng.uniform(0, 2 * math.pi))
            )
            values = xx * math.cos(angle) + yy * math.sin(angle)
        values = (values - values.min()) / max(float(np.ptp(values)), 1e-6)
        lo, hi = sorted(rng.uniform(0.0, 1.0, 2))
        values = lo + (hi - lo + 0.05) * values
        if rng.random() < 0.5:
            values = 1.0 - values
        out.append(Sample("gradient", f"gradient/{variant}-{i:03d}.png", _png(_u8(values)), ".png"))
    return out


# -- chests: NIH and pydicom-data ------------------------------------------------------------------------------------


def _nih_test_images(nih_dir: Path | None) -> list[Path]:
    """The NIH test split's PNGs, in split.csv's order; [] with a logged note where the data is absent."""
    if nih_dir is None or not (nih_dir / "split.csv").is_file() or not (nih_dir / "images").is_dir():
        log.info("ood_samples: no NIH data at %s: chest_rotated, chest_inverted and nih_* samples left out", nih_dir)
        return []
    with (nih_dir / "split.csv").open(newline="") as fh:
        names = [row["image"] for row in csv.DictReader(fh) if row["split"] == "test"]
    return [nih_dir / "images" / n for n in names if (nih_dir / "images" / n).is_file()]


def _nih_views(nih_dir: Path | None) -> dict[str, str]:
    if nih_dir is None or not (nih_dir / "labels.csv").is_file():
        return {}
    with (nih_dir / "labels.csv").open(newline="") as fh:
        return {row["Image Index"]: row.get("View Position", "PA") for row in csv.DictReader(fh)}


def _pick(rng: np.random.Generator, paths: list[Path], n: int) -> list[Path]:
    return [paths[int(i)] for i in rng.permutation(len(paths))[: min(n, len(paths))]]


def _nih_rotated(rng: np.random.Generator, paths: list[Path], per_kind: int) -> list[Sample]:
    out = []
    for i, path in enumerate(_pick(rng, paths, math.ceil(per_kind / 3))):
        pixels = np.asarray(Image.open(path).convert("L"))
        for quarter in (1, 2, 3):
            png = _png(np.ascontiguousarray(np.rot90(pixels, quarter)))
            out.append(Sample("chest_rotated", f"nih/{path.stem}-rot{90 * quarter}-{i:03d}.png", png, ".png"))
    return out


def _nih_inverted(rng: np.random.Generator, paths: list[Path], per_kind: int) -> list[Sample]:
    out = []
    for i, path in enumerate(_pick(rng, paths, per_kind)):
        pixels = 255 - np.asarray(Image.open(path).convert("L"))
        out.append(Sample("chest_inverted", f"nih/{path.stem}-inverted-{i:03d}.png", _png(pixels), ".png"))
    return out


@functools.cache
def _pydicom_chest_derived_cached() -> tuple[Sample, ...]:
    for name, path in _pydicom_files():
        if Path(name).name != "RG1_UNCR.dcm":
            continue
        ds = pydicom.dcmread(path)
        from pydicom.uid import generate_uid

        def save(ds: pydicom.Dataset, label: str, name: str = name) -> bytes:
            ds.SOPInstanceUID = generate_uid(entropy_srcs=["ood_samples", name, label])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            return buf.getvalue()

        inverted = pydicom.dcmread(path)
        inverted.PhotometricInterpretation = "MONOCHROME1"
        turned = np.ascontiguousarray(np.rot90(ds.pixel_array, 2))
        ds.PixelData = turned.tobytes()
        return (
            Sample("chest_rotated", f"{name}:rot180.dcm", save(ds, "rot180"), ".dcm"),
            Sample("chest_inverted", f"{name}:monochrome1.dcm", save(inverted, "monochrome1"), ".dcm"),
        )
    return ()


def _pydicom_chest_derived() -> dict[str, list[Sample]]:
    samples = _pydicom_chest_derived_cached()
    return {kind: [s for s in samples if s.kind == kind] for kind in NIH_KINDS}

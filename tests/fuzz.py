"""Seeded mutations of real images, as a fuzzer makes them: bit flips, truncation, chunk duplication, header fields.

    python tests/fuzz.py --count 5000 [--seed 1] [--save-failures DIR]

runs that many mutants through the service's own pipeline (the contained decoder, the model) and prints what
became of them; any mutant that got an internal error, or took longer than the decoder's timeout, is a bug (saved
with --save-failures). The test suite runs a few hundred of the same mutants (tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from support.data import NIH, dicom_dirs

# Image pixel module and file meta elements whose values decide how pixels are read (explicit VR little endian).
_DICOM_FIELDS = [
    b"\x28\x00\x10\x00",  # Rows
    b"\x28\x00\x11\x00",  # Columns
    b"\x28\x00\x02\x00",  # Samples per Pixel
    b"\x28\x00\x04\x00",  # Photometric Interpretation
    b"\x28\x00\x06\x00",  # Planar Configuration
    b"\x28\x00\x08\x00",  # Number of Frames
    b"\x28\x00\x00\x01",  # Bits Allocated
    b"\x28\x00\x01\x01",  # Bits Stored
    b"\x28\x00\x02\x01",  # High Bit
    b"\x28\x00\x03\x01",  # Pixel Representation
    b"\x28\x00\x50\x10",  # Window Center
    b"\x28\x00\x51\x10",  # Window Width
    b"\x28\x00\x53\x10",  # Rescale Slope
    b"\x02\x00\x10\x00",  # Transfer Syntax UID
    b"\xe0\x7f\x10\x00",  # Pixel Data (its VR and length)
]
_VALUES = [b"\x00\x00", b"\x01\x00", b"\xff\xff", b"\x00\x80", b"\x03\x00", b"\x10\x00", b"\x08\x00", b"\x20\x00"]


def seeds(limit_nih: int = 6) -> list[Path]:
    """Real files to mutate: every DICOM image of pydicom-data and pydicom under 3 MB, and a few NIH PNGs."""
    files = [p for d in dicom_dirs() for p in sorted(d.glob("*.dcm")) if p.stat().st_size < 3_000_000]
    if (NIH / "images").is_dir():
        files += sorted((NIH / "images").glob("*.png"))[:limit_nih]
    return files


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of `data`, chosen by `rng`; returns its kind and the mutant."""
    kind = rng.choice(["bitflip", "truncate", "duplicate", "field", "field"])
    buf = bytearray(data)
    if kind == "bitflip":
        head = rng.random() < 0.5  # half the flips land in the first 4 KB, where the headers are
        for _ in range(rng.randint(1, 16)):
            at = rng.randrange(min(len(buf), 4096) if head else len(buf))
            buf[at] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buf[rng.randrange(1, len(buf)) :]
    elif kind == "duplicate":
        start = rng.randrange(len(buf))
        chunk = buf[start : start + rng.randint(1, 4096)]
        at = rng.randrange(len(buf))
        buf[at:at] = chunk
    elif data.startswith(b"\x89PNG"):
        _corrupt_ihdr(buf, rng)
    else:
        _corrupt_dicom_field(buf, rng)
    return kind, bytes(buf)


def _corrupt_dicom_field(buf: bytearray, rng: random.Random) -> None:
    tag = rng.choice(_DICOM_FIELDS)
    at = buf.find(tag, 132)
    if at < 0:
        at = buf.find(tag)
    if at < 0:
        buf[rng.randrange(len(buf))] ^= 0xFF
        return
    value = at + 8 if buf[at + 4 : at + 6] not in (b"OB", b"OW", b"UN", b"SQ", b"UT") else at + 12
    if rng.random() < 0.3:  # the VR or the length itself
        where = at + rng.randrange(4, 8)
        buf[where : where + 2] = rng.choice(_VALUES)
    else:
        buf[value : value + 2] = rng.choice(_VALUES)


def _corrupt_ihdr(buf: bytearray, rng: random.Random) -> None:
    """Width, height, bit depth or colour type of the PNG's IHDR, with its CRC made right again (or not)."""
    field = rng.choice([(16, ">I"), (20, ">I"), (24, ">B"), (25, ">B")])
    offset, fmt = field
    value = rng.choice([0, 1, 2, 3, 4, 6, 8, 16, 255, 65535, 100_000, 2**31 - 1])
    struct.pack_into(fmt, buf, offset, value % (256 if fmt == ">B" else 2**32))
    if rng.random() < 0.8:
        struct.pack_into(">I", buf, 29, zlib.crc32(bytes(buf[12:29])) & 0xFFFFFFFF)


def mutants(count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """`count` mutants, the same for the same seed: (name, bytes)."""
    rng = random.Random(seed)
    bases = [(p.name, p.read_bytes()) for p in seeds()]
    for i in range(count):
        name, data = rng.choice(bases)
        kind, mutant = mutate(data, rng)
        yield f"{i:05d}-{kind}-{name}", mutant


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save-failures", type=Path, help="write mutants that failed or were slow here")
    args = parser.parse_args()

    from edge_app.config import Settings
    from edge_app.inference.diagnoser import Diagnoser

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate({"storage": {"data_dir": tmp}, "model": {"threads": 1}})
        diagnoser = Diagnoser.from_settings(settings)
        outcomes: Counter[str] = Counter()
        slowest: list[tuple[float, str]] = []
        bad: list[tuple[str, bytes, str]] = []
        t0 = time.perf_counter()
        try:
            for name, data in mutants(args.count, args.seed):
                t = time.perf_counter()
                diagnosis = diagnoser.diagnose(data, source=name)
                seconds = time.perf_counter() - t
                outcomes[diagnosis.status] += 1
                slowest = sorted([*slowest, (seconds, name)], reverse=True)[:5]
                if diagnosis.status == "failed" or seconds > settings.imaging.decode_timeout_s:
                    bad.append((name, data, diagnosis.reason or f"{seconds:.1f} s"))
        finally:
            diagnoser.close()
    elapsed = time.perf_counter() - t0
    print(f"{args.count} mutants (seed {args.seed}) in {elapsed:.0f} s, {elapsed / args.count * 1e3:.0f} ms each")
    for status in ("ok", "rejected", "failed"):
        print(f"  {status:<9}{outcomes[status]:>7}")
    print("slowest: " + ", ".join(f"{name} {s:.2f} s" for s, name in slowest))
    for name, data, reason in bad:
        print(f"BUG {name}: {reason}")
        if args.save_failures:
            args.save_failures.mkdir(parents=True, exist_ok=True)
            (args.save_failures / name).write_bytes(data)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

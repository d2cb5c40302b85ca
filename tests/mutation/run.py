"""Mutation testing of the safety-critical modules with cosmic-ray: the score, and every surviving mutant.

    python tests/mutation/run.py [MODULE ...] [--workdir DIR] [--workers N] [--recheck]

Installs nothing: needs `pip install cosmic-ray coverage` in the environment that runs the tests. cosmic-ray changes the
files it mutates, so the project is cloned into the work directory (default: a temporary one) and the tests run
there with PYTHONPATH pointing at the clone, the real data found through EDGE_SHARED_DATA. Each module is tested
by the test files that exercise it (`MODULES` below), stopping at the first failure: each mutant against those of
their tests that run the line it changes (`covering.py`). Prints, per module, the mutants, the killed and the
survivors with their diff, and the overall score; exits 1 under 85 %.
Takes hours for every module on two cores: name modules to run a few. `--check-list` only says which MODULES are
no files and which EQUIVALENT entries match no line of a mutated module (a move or an edit since): the ordinary test
suite never fails on those, this tool reports them at every run.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shlex
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import covering

ROOT = Path(__file__).resolve().parents[2]
TARGET = 0.85
TIMEOUT_S = 120.0  # a mutant whose tests run longer hangs them: killed
MODULES: dict[str, list[str]] = {
    "edge_app/bundles/findings.py": ["test_result.py", "test_properties.py", "test_runtime.py"],
    "edge_app/bundles/bundle.py": ["test_bundle.py", "test_signing.py"],
    "edge_app/bundles/signature.py": ["test_signing.py"],
    "edge_app/outputs/csv_cells.py": ["test_csv_cells.py"],
    "edge_app/config.py": ["test_config.py", "test_cli.py"],
    "edge_app/store/db.py": [
        "test_store.py",
        "test_api.py",
        "test_worker.py",
        "test_retention.py",
        "test_outputs.py",
        "test_disk_guard.py",
        "test_input_guard.py",
    ],
    "edge_app/store/schema.py": ["test_store.py"],
    "edge_app/inference/worker.py": ["test_worker.py", "test_burst.py", "test_store.py", "test_input_guard.py"],
    "edge_app/runtime/engines/cache.py": ["test_tensorrt.py", "test_jetson_path.py"],
    "converters/fidelity.py": ["test_fidelity.py", "test_convert.py"],
    "converters/build.py": ["test_convert.py"],
    "converters/quantize.py": ["test_quantize_levers.py", "test_convert.py"],
    "converters/guard.py": ["test_input_guard.py"],
    "converters/validation.py": ["test_validation.py"],
    "edge_app/imaging/codestream.py": [
        "test_codestream.py",
        "test_reduced_decode.py",
        "test_hostile.py",
        "test_decode.py",
    ],
    "edge_app/imaging/preprocess.py": ["test_preprocess.py", "test_properties.py", "test_runtime.py"],
    "edge_app/imaging/prepare.py": [
        "test_prepare.py",
        "test_reduced_decode.py",
        "test_runtime.py",
        "test_hostile.py",
        "test_drift.py",
    ],
    "edge_app/imaging/sandbox.py": ["test_hostile.py", "test_burst.py"],
    "edge_app/imaging/decode.py": [
        "test_decode.py",
        "test_reduced_decode.py",
        "test_bad_input.py",
        "test_hostile.py",
        "test_properties.py",
        "test_runtime.py",
    ],
}


# Survivors that cannot be killed, by the source line they change and the operator (None: any), with the reason.
EQUIVALENT = {
    ('atomic_write(path, (json.dumps(meta, indent=2) + "\\n").encode(), mode=READABLE)', "core/NumberReplacer"): (
        "the indentation of engine.json after a measurement, for a person's eyes: it reads the same"
    ),
    ("record.unlink(missing_ok=True)", "core/ReplaceTrueWithFalse"): (
        "the file was just found by glob: only another process removing it in between could tell"
    ),
    ("if 0 < result_id < 2**63:  # SQLite's INTEGER range", "core/ReplaceComparisonOperator_Lt_NotEq"): (
        "`0 != id < 2**63`: the negatives pass to the query, which finds no row: NotFound all the same"
    ),
    ("if 0 < result_id < 2**63:  # SQLite's INTEGER range", "core/NumberReplacer"): (
        "-1 < id lets 0 through to a query that finds no row (rowids start at 1); the bounds' other numbers are "
        "killed by the test of the whole id range"
    ),
    (
        'if status != "queued" or left <= 0 or (until is not None and until.is_set()):',
        "core/ReplaceComparisonOperator_LtE_Lt",
    ): ("time left exactly 0.0: the next pass finds it negative; no test can tell"),
    ('return self._db.execute(f"PRAGMA {name}").fetchone()[0]', "core/NumberReplacer"): "a one-column row",
    ("if attempts >= max_attempts:", "core/ReplaceComparisonOperator_GtE_Eq"): (
        "attempts rise one at a time from 0, so >= is first true at equality"
    ),
    ("if 0 < result_id < 2**63:  # SQLite's INTEGER range", "core/ReplaceComparisonOperator_Lt_LtE"): (
        "no row has id 0 (SQLite's rowids start at 1): 0 is not found either way"
    ),
    (
        "if not path.is_file() or (min_age_s and path.stat().st_mtime > too_new):",
        "core/ReplaceComparisonOperator_Gt_GtE",
    ): "a file's time equal to the limit to the nanosecond: no test, and no crash, can tell",
    (
        "f\"the database {self.data_dir / 'edge-app.sqlite3'} is damaged ({'; '.join(problems[:3])}): \"",
        "core/NumberReplacer",
    ): (
        "NOT equivalent, listed as not worth a test: how many of quick_check's lines the message quotes; no test "
        "builds a file damaged so that quick_check reports three lines (SQLite refuses such files outright)"
    ),
    ("sm_count: int = 0", "core/NumberReplacer"): (
        "the default of a Platform named without it (tests): current_platform always gives the SM count"
    ),
    ("memory_mb: int = 0", "core/NumberReplacer"): (
        "the default of a Platform named without it (tests): current_platform always gives the memory"
    ),
    ('built_for = meta.get("build", {}).get("max_batch", 0)', "core/NumberReplacer"): (
        "a missing record read as 0 or -1 is below every max_batch (1 at least): a miss either way"
    ),
    (
        'atomic_write(folder / FAILED_NAME, (json.dumps(record, indent=2) + "\\n").encode(), mode=READABLE)',
        "core/NumberReplacer",
    ): "the indentation of failed.json, for a person's eyes: the record reads the same",
    (
        'if problems != ["ok"]:  # a power cut on a disk that lies about fsync, a failing card',
        "core/ReplaceComparisonOperator_NotEq_Lt",
    ): ("quick_check's problem lines begin with '*', a capital or a digit, which all sort before 'ok'"),
    ("(folder / name).unlink(missing_ok=True)", "core/ReplaceTrueWithFalse"): (
        "discard is called on an engine just built into the cache: both its files are there"
    ),
    ("if size == 0 or path.exists():", "core/ReplaceComparisonOperator_Eq_LtE"): "a byte count is never negative",
    ("if attempts >= max_attempts:", "core/ReplaceComparisonOperator_GtE_Is"): (
        "attempts rise one at a time, so >= is first true at equality; small ints are interned: `is` is =="
    ),
    ("wanted = {r[0] for r in self._db.execute(FILES_IN_USE)}", "core/NumberReplacer"): (
        "a UNION of one-column selects: a one-column row"
    ),
    ("still_used = {r[0] for r in db.execute(FILES_IN_USE)}", "core/NumberReplacer"): (
        "a UNION of one-column selects: a one-column row"
    ),
    ('if status == "queued":', "core/ReplaceComparisonOperator_Eq_Is"): (
        'status is one of two literals a line above (`"rejected" if reason else "queued"`): interned, `is` is =='
    ),
    ('if status == "queued":', "core/ReplaceComparisonOperator_Eq_LtE"): (
        "an arrival's status is queued or rejected, and rejected sorts after queued: <= is == for both"
    ),
    ("for result, maps in zip(outcome.results, heatmaps, strict=True):", "core/ReplaceTrueWithFalse"): (
        "heatmaps is built from outcome.results one for one: the two are always of the same length"
    ),
    ("return int(self._db.execute(sql, values).lastrowid or 0)", "core/NumberReplacer"): (
        "lastrowid after an INSERT is the new row's id, never 0 or None: the fallback is never taken"
    ),
    (
        "return int(self._db.execute(\"SELECT count(*) FROM jobs WHERE state != 'done'\").fetchone()[0])",
        "core/NumberReplacer",
    ): "a one-column row",
    (
        'problems = [str(r[0]) for r in self._db.execute("PRAGMA quick_check").fetchall()]',
        "core/NumberReplacer",
    ): "quick_check answers one-column rows: their first column is their last",
    ("return int(row[0]) if row else None", "core/NumberReplacer"): "a one-column row",
    ("(state, retry_at or 0, error, _now(), item.id),", "core/NumberReplacer"): (
        "next_try of an item sent or given up: only queued items are ever read by it"
    ),
    ("*,", "core/ReplaceBinaryOperator_Mul_Div"): (
        "keyword-only made positional-only for the leading arguments: every caller passes those by position, and "
        "names what follows (decode's source, limits, wanted)"
    ),
    ("if 0 < result_id < 2**63:  # SQLite's INTEGER range", "core/ReplaceComparisonOperator_Lt_IsNot"): (
        "`0 is not id < 2**63`: for 0 and the negatives the query finds no row either, NotFound all the same"
    ),
    ("_CHUNK = 1 << 20", None): "the read size: any positive size reads the same bytes",
    (
        "return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]",
        "core/ReplaceTrueWithFalse",
    ): "the fields are built in one fixed order: sorting them or not gives the same key on every run",
    (
        'db.execute("INSERT INTO series (study_id, uid, created_at) VALUES (?, ?, ?)", '
        "(study[0], generate_uid(), now))",
        "core/NumberReplacer",
    ): "a one-column row: its first column is its last",
    ('version = int(db.execute("PRAGMA user_version").fetchone()[0])', "core/NumberReplacer"): "a one-column row",
    (
        'status: ImageStatus = "done" if any(r.status == "ok" for r in results) else _IMAGE_STATUS[first.status]',
        "core/ReplaceComparisonOperator_Eq_Is",
    ): "string literals are interned: `is` compares them as `==` does",
    (
        "stuck = busy_since is not None and self.clock() - busy_since >= within_s",
        "core/ReplaceComparisonOperator_GtE_Gt",
    ): ("elapsed time equal to the limit to the last bit: no test, and no hung worker, can tell"),
    ('reason=None if status == "done" else first.reason,', "core/ReplaceComparisonOperator_Eq_LtE"): (
        "done is the least of the statuses a finished job can have (done, failed, rejected)"
    ),
    ('reason=None if status == "done" else first.reason,', "core/ReplaceComparisonOperator_Eq_Is"): (
        "string literals are interned: `is` compares them as `==` does"
    ),
    ('reason_kind=None if status == "done" else first_kind,', "core/ReplaceComparisonOperator_Eq_Is"): (
        "string literals are interned: `is` compares them as `==` does"
    ),
    ("first = results[0]", "core/NumberReplacer"): (
        "every model decodes the image alike: when none gives a result, all refused it for one reason or all "
        "failed, so the first and the last say the same"
    ),
    ("def stop(self, timeout: float = 60.0) -> None:", "core/NumberReplacer"): (
        "how long stop waits for the image at hand: only a job longer than a minute could tell 60 s from 59 s"
    ),
    ("if count != expected:", "core/ReplaceComparisonOperator_NotEq_IsNot"): (
        "at most 15 segments: CPython keeps one object for each small int, `is not` compares them as `!=` does"
    ),
    (
        "if any(not 64 <= start < end <= len(frame) for start, end in zip(offsets[:count], ends, strict=True)):",
        "core/ReplaceTrueWithFalse",
    ): "the two lists are built of one length",
    (
        'if not 0 < len(title.strip()) <= 16 or "\\\\" in title or not title.isprintable() or not title.isascii():',
        "core/ReplaceComparisonOperator_Lt_NotEq",
    ): "a length is never negative: 0 < n and 0 != n are one test",
    (
        "return 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)",
        "core/ReplaceComparisonOperator_Lt_NotEq",
    ): "a length is never negative: 0 < n and 0 != n are one test",
    (
        "return 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)",
        "core/ReplaceComparisonOperator_Lt_LtE",
    ): "an empty host splits into one empty label, which the label pattern refuses anyway",
    (
        'if not 0 < len(title.strip()) <= 16 or "\\\\" in title or not title.isprintable() or not title.isascii():',
        "core/ReplaceComparisonOperator_Lt_IsNot",
    ): "a length is never negative and CPython keeps one object per small int: 0 is not n is 0 < n",
    (
        "return 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)",
        "core/ReplaceComparisonOperator_Lt_IsNot",
    ): "a length is never negative and CPython keeps one object per small int: 0 is not n is 0 < n",
    ("@classmethod", "core/RemoveDecorator"): "pydantic makes a field validator a class method by itself",
    ("if (self.tls_cert is None) != (self.tls_key is None):", "core/ReplaceComparisonOperator_NotEq_IsNot"): (
        "both sides are the bools True or False, which are singletons: `is not` compares them as `!=` does"
    ),
    ("if origin is list:", "core/ReplaceComparisonOperator_Is_Eq"): "a class compares equal only to itself",
    ("if model is Settings:", "core/ReplaceComparisonOperator_Is_Eq"): "a class compares equal only to itself",
    ("if self.server.tls_cert is not None and self.server.tls_key is not None:", "core/ReplaceAndWithOr"): (
        "tls_cert and tls_key are set together or not at all (a validator refuses one alone)"
    ),
    ("if server.tls_cert is not None and server.tls_key is not None:", "core/ReplaceAndWithOr"): (
        "tls_cert and tls_key are set together or not at all (a validator refuses one alone)"
    ),
    ("assert isinstance(annotation, type) and issubclass(annotation, BaseModel)", "core/ReplaceAndWithOr"): (
        "an assertion for the type checker: every table of the settings is a BaseModel class"
    ),
    ("x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)", "core/ReplaceComparisonOperator_Gt_NotEq"): (
        "hi is the image's maximum and lo its minimum: hi >= lo, so > and != agree"
    ),
    ("x = _to_channels(x, 1) if spec.channels == 1 else _with_axis(x)", "core/ReplaceComparisonOperator_Eq_Lt"): (
        "channels is 1 or 3; grey before or after resizing gives the same values (resizing each channel commutes "
        "with the luma sum): the order only saves memory"
    ),
    ("x = _to_channels(x, 1) if spec.channels == 1 else _with_axis(x)", "core/ReplaceComparisonOperator_Eq_LtE"): (
        "channels is 1 or 3"
    ),
    ("return x[:, :, np.newaxis] if x.ndim == 2 else x", "core/ReplaceComparisonOperator_Eq_LtE"): (
        "an image is 2-D or 3-D"
    ),
    ('if prep.geometry == "center_crop":', "core/ReplaceComparisonOperator_Eq_LtE"): (
        'the geometry is center_crop, letterbox or stretch, and "center_crop" sorts first'
    ),
    ('if prep.geometry == "center_crop":', "core/ReplaceComparisonOperator_Eq_Is"): (
        "pydantic gives back the Literal's own (interned) string: `is` compares it as `==` does"
    ),
    ('if prep.geometry == "letterbox":', "core/ReplaceComparisonOperator_Eq_Is"): (
        "pydantic gives back the Literal's own (interned) string: `is` compares it as `==` does"
    ),
    ('if spec.layout == "NCHW":', "core/ReplaceComparisonOperator_Eq_Is"): (
        "pydantic gives back the Literal's own (interned) string: `is` compares it as `==` does"
    ),
    ("if channels == 3:", "core/ReplaceComparisonOperator_Eq_GtE"): "channels is 1 or 3",
    ('if prep.geometry == "letterbox":', "core/ReplaceComparisonOperator_Eq_LtE"): (
        'center_crop has returned before: letterbox or stretch is left, and only "letterbox" <= "letterbox"'
    ),
    ('if prep.intensity == "minmax":', "core/ReplaceComparisonOperator_Eq_LtE"): (
        'the intensity is minmax or window, and "minmax" sorts first'
    ),
    ('if prep.intensity == "minmax":', "core/ReplaceComparisonOperator_Eq_Is"): (
        "pydantic gives back the Literal's own (interned) string: `is` compares it as `==` does"
    ),
    ("if x.shape[2] == channels:", "core/ReplaceComparisonOperator_Eq_Is"): (
        "1 and 3: CPython keeps one object for each small int"
    ),
    ("if x.shape[:2] == (height, width):", "core/ReplaceComparisonOperator_Eq_Is"): (
        "never true with `is`: the image is then resized to the size it has, which Pillow does as a copy"
    ),
    (
        "for _ in range(max(3, runs // 10)):",
        None,
    ): "how many warm-up runs come before the timed ones: no figure shows it",
    ("ms = np.asarray(times) * 1e3", "core/NumberReplacer"): "a unit a thousandth off is within the timing's noise",
    (
        'timings = {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}',
        "core/NumberReplacer",
    ): "a unit a thousandth off is within the timing's noise",
    (
        'timings = {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}',
        "core/ReplaceBinaryOperator_Sub_Mod",
    ): "perf_counter's readings are far from zero: t2 < 2 * t1, so t2 % t1 is t2 - t1",
    (
        "fixed = sess.get_inputs()[0].shape[0]  # an original model may have its batch fixed (often at 1)",
        "core/NumberReplacer",
    ): ("the model has one input (checked before): its first is its last"),
    ("_BAND = 256", None): "the number of rows converted at a time: the same values in the end",
    (
        "return float(roc_auc_score(y, score)) if 0 < int(y.sum()) < len(y) else None",
        "core/ReplaceComparisonOperator_Lt_IsNot",
    ): "a count is never negative, and CPython keeps one 0: `0 is not n` is `0 < n`",
    ("auc_diff=None if a_ref is None or a_cand is None else a_cand - a_ref,", "core/ReplaceOrWithAnd"): (
        "both AUCs come from one label column: both exist or neither does"
    ),
    ("x = pixels.astype(np.float32, copy=False)", "core/ReplaceFalseWithTrue"): (
        "a copy or not, the same values: the input is never written to"
    ),
    ("if prep.mean is not None and prep.std is not None:", "core/ReplaceAndWithOr"): (
        "mean and std come together (the manifest refuses one alone)"
    ),
    ('if spec.layout == "NCHW":', "core/ReplaceComparisonOperator_Eq_LtE"): (
        'the layout is NCHW or NHWC, and "NHWC" sorts after "NCHW": <= holds for NCHW alone'
    ),
    ("return 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)", "core/NumberReplacer"): (
        "-1 < n holds for every length, and an empty host fails the label pattern anyway (0 -> 1 is killed)"
    ),
    ("head = stream.read(132)", "core/NumberReplacer"): (
        "the head read and sought back: 132 bytes is the least that holds the DICM marker (131 is killed), more "
        "reads the same file"
    ),
    ("if rows <= 0 or cols <= 0:", "core/ReplaceComparisonOperator_LtE_Eq"): (
        "Rows and Columns are US (unsigned 16-bit): never negative, so <= 0 is == 0"
    ),
    ('rows, cols = _number(ds, "Rows", 0, source), _number(ds, "Columns", 0, source)', "core/NumberReplacer"): (
        "a missing Rows or Columns read as 0 or -1 is refused alike (read as 1, it is killed by the missing-Rows test)"
    ),
    (
        "pixels = np.asarray(img if mode == target else img.convert(target), dtype=np.float32)",
        "core/ReplaceComparisonOperator_Eq_Is",
    ): "an image converted to the mode it has keeps its pixels: the test only saves a copy",
    (
        'fmt: Literal["png", "jpeg"] = "png" if stream.read(8) == _PNG_MAGIC else "jpeg"',
        "core/ReplaceComparisonOperator_Eq_LtE",
    ): "only PNG or JPEG come here, and JPEG's first byte 0xFF sorts after PNG's 0x89",
    ("if size.samples != samples:", "core/ReplaceComparisonOperator_NotEq_IsNot"): (
        "1 and 3: CPython keeps one object for each small int"
    ),
    ("if samples == 3:", "core/ReplaceComparisonOperator_Eq_GtE"): "SamplesPerPixel is 1 or 3 (checked before)",
    ("return np.clip(out, 0.0, 1.0, out=out)", "core/NumberReplacer"): (
        "colour samples and palette entries are unsigned: nothing falls below 0 (0 -> 1 is killed); the upper "
        "bound guards float rounding and bits above BitsStored"
    ),
    (
        "return DecodedImage(pixels=np.clip(pixels, 0.0, 1.0, out=pixels), source=source, format=fmt, "
        "metadata=metadata)",
        "core/NumberReplacer",
    ): "PNG and JPEG samples are unsigned: nothing falls below 0 (0 -> 1 is killed); the upper bound guards rounding",
    ("check_size(rows, cols, samples, max(1, bits // 8), size, source, limits)", "core/NumberReplacer"): (
        "// 7 gives the same bytes for each depth allowed (1, 8, 16, 32 bits); the other numbers are killed by the "
        "budget tests of 8, 16 and 32 bits"
    ),
    ('if head[128:132] == b"DICM":', "core/NumberReplacer"): (
        "the head is 132 bytes long: a slice to 133 ends at 132 (the other numbers are killed)"
    ),
    ("expected = (rows, cols) if samples == 1 else (rows, cols, samples)", "core/ReplaceComparisonOperator_Eq_LtE"): (
        "SamplesPerPixel is 1 or 3 (checked before)"
    ),
    (
        'arr = pixel_array(ds, index=header["frame"] if header["frames"] > 1 else None)',
        "core/ReplaceComparisonOperator_Gt_NotEq",
    ): "NumberOfFrames is at least 1 (checked before): > 1 and != 1 are one test",
    ('if photometric == "MONOCHROME1":', "core/ReplaceComparisonOperator_Eq_LtE"): (
        "a grey image here is MONOCHROME1 or MONOCHROME2 (pydicom decodes none without it), and only MONOCHROME1 "
        "sorts at or before MONOCHROME1"
    ),
    (
        "def __init__(self, limits: DecodeLimits, *, workers: int, timeout_s: float) -> None:",
        "core/ReplaceBinaryOperator_Mul_Div",
    ): "keyword-only made positional-or-keyword: every caller names workers and timeout_s",
    ("return int(line.split()[1]) * 1024", "core/NumberReplacer"): (
        "NOT equivalent, listed as beyond a test: a kB read as 1023 or 1025 bytes moves the cap by a thousandth of "
        "the child's size (0.2 MB of 190 MB), less than decoding one small image moves the child's size (the "
        "other operators on this line are killed)"
    ),
    ("def session(model_path: Path, threads: int = 0) -> Any:", "core/NumberReplacer"): (
        "ONNX Runtime's intra-op threads (0: every core) change how fast it runs, not what it computes"
    ),
    (
        "threads: int = 0,",
        "core/NumberReplacer",
    ): "ONNX Runtime's intra-op threads (0: every core) change how fast it runs, not what it computes",
    ('"p50_ms": float(np.percentile(ms, 50)),', "core/NumberReplacer"): (
        "the 49th or 51st percentile of a few hundred timings for their median: within the timings' own noise"
    ),
    ("outputs = session(model_path).run([output_name], {input_name: inputs})[0]", "core/NumberReplacer"): (
        "one output is asked for: the list's first is its last"
    ),
    (
        "probabilities(output, n_labels, np.asarray(sess.run([output.name], {spec.name: x})[0]))",
        "core/NumberReplacer",
    ): "one output is asked for: the list's first is its last",
    ("for x in batches(images, fixed if isinstance(fixed, int) else 16)", "core/NumberReplacer"): (
        "how many images a run takes where the batch is free: the same probabilities, batched otherwise"
    ),
    ("pos, neg = y == 1, y == 0", "core/ReplaceComparisonOperator_Eq_LtE"): "truth labels are 0 or 1 (read_labels)",
    ("if quantize_nodes == 0:", "core/ReplaceComparisonOperator_Eq_LtE"): "a count of nodes is never negative",
    ('"images_per_s": float(len(x) * 1e3 / ms.mean()),', "core/NumberReplacer"): (
        "a unit a thousandth off is within the timing's noise"
    ),
    ("_HEADROOM_MB = 160", "core/NumberReplacer"): (
        "NOT equivalent, listed as beyond a test: a megabyte of headroom more or less is within what decoding one "
        "small image moves the child's size (the cap itself is checked to 48 MB)"
    ),
    (
        "self._leased = 0.0  # when the leases of the window's jobs were last taken or renewed (the earliest)",
        "core/NumberReplacer",
    ): ("a window's first claim holds no job, and sets it to the clock before any renewal reads it"),
    ("while len(window) + len(begun) < self.settings.burst:", "core/ReplaceComparisonOperator_Lt_IsNot"): (
        "small ints are cached, and the count rises by one from below the burst: `is not` stops where `<` does"
    ),
    ("if self._pool is broken and not self._closed:", "core/ReplaceComparisonOperator_Is_Eq"): (
        "a pebble pool has no __eq__: it compares equal only to itself"
    ),
    (
        "logging.basicConfig(level=logging.WARNING, handlers=[_Collect()], force=True)",
        "core/ReplaceTrueWithFalse",
    ): "a freshly spawned child's root logger has no handler yet: force replaces none",
    (
        "return float(roc_auc_score(y, score)) if 0 < int(y.sum()) < len(y) else None",
        "core/ReplaceComparisonOperator_Lt_NotEq",
    ): "a count of positives is never negative nor above the number of images: != and < agree at both ends",
    ('"p95_ms": float(np.percentile(ms, 95)),', "core/NumberReplacer"): (
        "the 94th or 96th percentile of a few hundred timings for their 95th: within the timings' own noise"
    ),
    ("step = max(1, max(pixels.shape[:2]) // (2 * PREVIEW_SIDE))", "core/NumberReplacer"): (
        "shape[:3] adds a colour image's 3 to the sides it compares: never the largest where the step is over 1 "
        "(the other numbers are killed by the wide-view test)"
    ),
    ("if slope != 1.0:", "core/NumberReplacer"): (
        "a slope of 0 is read as 1 the line before, so != 0.0 always holds and multiplying by 1 changes nothing "
        "(!= 2.0 is killed by the slope-2 windows)"
    ),
    (
        "values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float32, copy=False)",
        "core/ReplaceFalseWithTrue",
    ): ("a copy or not, the same values: the array is only read after"),
    ('"images_per_s": float(len(x) * 1e3 / ms.mean()),', "core/ReplaceBinaryOperator_Div_FloorDiv"): (
        "NOT equivalent, listed as beyond a test: images per second rounded down to a whole number, which only a "
        "model slower than a second an image would show (the speed-up gate reads p50_ms)"
    ),
    ("pos, neg = y == 1, y == 0", "core/ReplaceComparisonOperator_Eq_GtE"): "truth labels are 0 or 1 (read_labels)",
    ("if hi <= lo:", "core/ReplaceComparisonOperator_LtE_Eq"): (
        "lo <= hi in every call (a window of no width is a threshold before it): only a flat range reaches it"
    ),
    (
        '_PILLOW_SAMPLE_BYTES = {"I;16": 2, "I": 4}  # 16-bit grey PNG, named by Pillow\'s version; '
        "other modes: 1 byte",
        "core/NumberReplacer",
    ): (
        'NOT equivalent, listed as beyond a test here: Pillow 10 opened a 16-bit grey PNG as "I" (4 bytes a '
        'sample), this one (13) opens it as "I;16", and no PNG or JPEG opens as "I" here (the "I;16" sizes '
        "of this line, uncounted with it, are killed by the 16-bit PNG budget tests)"
    ),
    ("palette = apply_color_lut(np.arange(65536, dtype=np.uint16), ds)", "core/NumberReplacer"): (
        "65537 values as uint16 wrap the last to 0: the same values looked up (65535 is killed by the palette test)"
    ),
    ("if version == VERSION:", "core/ReplaceComparisonOperator_Eq_GtE"): (
        "a later version was refused on the line before: >= is == here"
    ),
    ("if version == VERSION:", "core/ReplaceComparisonOperator_Eq_Is"): (
        "CPython keeps one object per small int (versions 0 to 6): `is` is =="
    ),
    ('if self.runner == "triton" and not self.triton.url:', "core/ReplaceComparisonOperator_Eq_GtE"): (
        "the runner is one of auto, onnxruntime, tensorrt, triton (checked before): none sorts after triton"
    ),
    # edge_app/bundles/findings.py
    ('if activation == "sigmoid":', "core/ReplaceComparisonOperator_Eq_Is"): (
        "pydantic gives back the Literal's own (interned) string: `is` compares it as `==` does"
    ),
    ('elif activation == "softmax":', "core/ReplaceComparisonOperator_Eq_Is"): (
        "pydantic gives back the Literal's own (interned) string: `is` compares it as `==` does"
    ),
    ('elif activation == "softmax":  # across the labels, at each location', "core/ReplaceComparisonOperator_Eq_Is"): (
        "pydantic gives back the Literal's own (interned) string: `is` compares it as `==` does"
    ),
    ('elif activation == "softmax":', "core/ReplaceComparisonOperator_Eq_GtE"): (
        'the activation is sigmoid, softmax or none, sigmoid taken before: of the two left only "softmax" >= "softmax"'
    ),
    ('elif activation == "softmax":  # across the labels, at each location', "core/ReplaceComparisonOperator_Eq_GtE"): (
        'the activation is sigmoid, softmax or none, sigmoid taken before: of the two left only "softmax" >= "softmax"'
    ),
    ('if self.status == "ok":', "core/ReplaceComparisonOperator_Eq_Is"): (
        "a diagnosis's status is one of the literals its makers write (inference/diagnoser.py): interned, `is` is =="
    ),
    ("values = np.asarray(outputs[guard.output][index], dtype=np.float64).reshape(-1)", "core/NumberReplacer"): (
        "numpy infers a size given as any negative number: reshape(-2) is reshape(-1) (-0 is killed)"
    ),
    (
        "values = np.asarray(outputs[guard.output][index], dtype=np.float64).reshape(-1)",
        "core/ReplaceUnaryOperator_USub_Invert",
    ): "~1 is -2: numpy infers a size given as any negative number",
    ("rows = scores.reshape(scores.shape[0], -1).astype(np.float64)", "core/NumberReplacer"): (
        "numpy infers a size given as any negative number: reshape(n, -2) is reshape(n, -1) (the line's other "
        "numbers are killed)"
    ),
    ("rows = scores.reshape(scores.shape[0], -1).astype(np.float64)", "core/ReplaceUnaryOperator_USub_Invert"): (
        "~1 is -2: numpy infers a size given as any negative number"
    ),
    ("for label, p in zip(manifest.labels, probs, strict=True)", "core/ReplaceTrueWithFalse"): (
        "probabilities refused a count of scores other than the labels' before: the two are of one length"
    ),
    ("e = np.exp(cam - cam.max(axis=0, keepdims=True))", "core/ReplaceTrueWithFalse"): (
        "the leading axis reduced: (h, w) broadcasts over (labels, h, w) as (1, h, w) does"
    ),
    ("local = (e / e.sum(axis=0, keepdims=True))[k]", "core/ReplaceTrueWithFalse"): (
        "the leading axis reduced: (h, w) broadcasts over (labels, h, w) as (1, h, w) does"
    ),
    # edge_app/store/schema.py
    (
        "sql = db.execute(\"SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?\", (table,)).fetchone()[0]",
        "core/NumberReplacer",
    ): "a one-column row",
    ("r[0]", "core/NumberReplacer"): "a one-column row (the sql of sqlite_master's indexes)",
    ('enforced = int(db.execute("PRAGMA foreign_keys").fetchall()[0][0])', "core/NumberReplacer"): (
        "PRAGMA foreign_keys answers one row of one column: [-1] is [0] (the indexes past it, [1], are killed)"
    ),
    # converters/build.py
    ('gated = spec.calibration.target == "onnxruntime"', "core/ReplaceComparisonOperator_Eq_Is"): (
        "pydantic validates a Literal field to the literal's own (interned) string: `is` and `==` agree"
    ),
    ('gated = spec.calibration.target == "onnxruntime"', "core/ReplaceComparisonOperator_Eq_LtE"): (
        "the target is 'tensorrt' or 'onnxruntime': of the two only 'onnxruntime' <= 'onnxruntime'"
    ),
    ("before = fidelity.latency(int8_of, spec.input.name, x, runs=200)", "core/NumberReplacer"): (
        "NOT equivalent, listed as beyond a test: 199 or 201 timed runs move the median by less than the "
        "timing's own noise"
    ),
    ("after = fidelity.latency(candidate, spec.input.name, x, runs=200)", "core/NumberReplacer"): (
        "NOT equivalent, listed as beyond a test: 199 or 201 timed runs move the median by less than the "
        "timing's own noise"
    ),
    ("if report and inputs.validation", "core/ReplaceAndWithOr"): (
        "a gate report exists exactly when validation images were given: `or` and `and` agree"
    ),
    ("for a, b in zip(*outs, strict=True):", "core/ReplaceTrueWithFalse"): (
        "both lists are the outputs of one graph's outputs (folding keeps them): always as many"
    ),
    ('elif inputs.precision == "fp16":', "core/ReplaceComparisonOperator_Eq_LtE"): (
        "precision is fp32, fp16 or int8 and fp32 was taken before: only 'fp16' <= 'fp16'"
    ),
    (
        "x = np.random.default_rng(0).uniform(-1, 1, (2, *shape)).astype(np.dtype(spec_input.dtype))",
        "core/NumberReplacer",
    ): (
        "the fold probe's seed and batch: another draw of random inputs tells the same folds apart (the range, on "
        "this line too, is pinned by the fold tests and uncounted with it)"
    ),
    (
        "if np.abs(np.asarray(a, np.float64) - b).max() > 1e-4 * max(1.0, float(np.abs(a).max())):",
        "core/ReplaceComparisonOperator_Gt_GtE",
    ): ("a largest difference exactly equal to its tolerance: float sums of a random probe never land on it"),
    ("sample = calibration.tensors[:32]", "core/NumberReplacer"): (
        "NOT equivalent, listed as beyond a test: 31 or 33 images may rank two nodes of nearly equal loss the other "
        "way round; the ranking itself is tested against numpy's (the fallback's test)"
    ),
    (
        "longer, shorter = (wanted.longer, wanted.shorter) if width >= height else (wanted.shorter, wanted.longer)",
        "core/ReplaceComparisonOperator_GtE_Gt",
    ): (
        "a square image only: its draft size asked as (longer, shorter) or (shorter, longer), and Pillow's JPEG "
        "draft takes the smaller of the two sides' scales, the same either way"
    ),
    ('if report["passed"] or settings.max_fallback_rounds == 0:', "core/ReplaceComparisonOperator_Eq_LtE"): (
        "Calibration.max_fallback_rounds is validated >= 0 on a frozen model: <= 0 is == 0"
    ),
    ("if len(node.input) > 2 and node.input[2] in weights:", "core/ReplaceComparisonOperator_Gt_NotEq"): (
        "the layers corrected are Conv and Gemm nodes kept only with two inputs or more: != 2 is > 2"
    ),
    (
        'if found.is_file() and (value := found.read_text().strip()) != "max":',
        "core/ReplaceComparisonOperator_NotEq_Lt",
    ): ('memory.max holds a number of bytes or "max": digits sort before "max", so < "max" is != "max"'),
    (
        "return decoders_for(max_decode_mb, len(os.sched_getaffinity(0)), memory_mb(), cgroup_limit_mb())",
        "core/NumberReplacer",
    ): (
        "NOT equivalent, listed as beyond a test: process 1's cores for this one's differ only where the service is "
        "pinned to fewer (CPUAffinity=), and on 2 cores either count gives one decoder (0 -> -1, which raises at "
        "every start and is killed, falls under this key too)"
    ),
    ('if img.size != (cols, rows) or img.mode != "L":', "core/ReplaceOrWithAnd"): (
        "a JPEG frame whose size or samples are not the header's is refused before (`frame_size`): the frame here "
        "is the header's size and grey (libjpeg's reading of the header there and Pillow's here agree), so either "
        "test alone decides"
    ),
}


def stale(sources: list[str]) -> list[tuple[str, str | None]]:
    """The EQUIVALENT entries whose line is on no line of `sources` (the mutated modules' texts)."""
    lines = {line.strip() for source in sources for line in source.splitlines()}
    return [key for key in EQUIVALENT if key[0] not in lines]


def check_list() -> bool:
    """Print the MODULES that are no files and the stale EQUIVALENT entries; whether there were none."""
    missing = [module for module in MODULES if not (ROOT / module).is_file()]
    entries = stale([(ROOT / module).read_text() for module in MODULES if module not in missing])
    for module in missing:
        print(f"MODULES names no file: {module} (moved? rename it in tests/mutation/run.py)")
    for line, operator in entries:
        print(f"EQUIVALENT entry on no line of a mutated module now: {operator or 'any operator'}: {line}")
    return not missing and not entries


def _annotations(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of type annotations: with `from __future__ import annotations` they are strings,
    never evaluated, so a mutant inside one is equivalent."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        annotations: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            arguments = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x)]
            annotations = [arg.annotation for arg in arguments] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for ann in annotations:
            if ann is not None:
                spans.append(((ann.lineno, ann.col_offset), (ann.end_lineno or ann.lineno, ann.end_col_offset or 0)))
    return spans


@dataclass(frozen=True)
class Selection:
    """The mutants on `lines` (those changed since `commit`), or `changed_sample` of them, and `sample` of the
    others, each drawn at random."""

    commit: str
    lines: set[int]
    sample: int
    changed_sample: int | None = None


def changed_lines(clone: Path, module: str, since: str) -> set[int]:
    """The lines of `module` that a commit after `since` wrote (git blame, following moves and copies of lines)."""
    git = ["git", "-C", str(clone)]
    after = set(
        subprocess.run([*git, "rev-list", f"{since}..HEAD"], check=True, capture_output=True, text=True).stdout.split()
    )
    blame = subprocess.run(
        [*git, "blame", "-M", "-C", "--porcelain", module], check=True, capture_output=True, text=True
    )
    changed = set()
    for line in blame.stdout.splitlines():
        fields = line.split()  # each line's header: its commit, its line number there and here
        if not line.startswith("\t") and len(fields) >= 3 and fields[0] in after:
            changed.add(int(fields[2]))
    return changed


def _skip(session: Path, uncounted: Callable[[tuple[int, int], str], bool], since: Selection | None) -> set[str]:
    """Mark the mutants that are not counted as skipped before they run (each would cost a whole test run); return
    the job ids of those left out by `since` (on lines no commit after it changed, beyond the sample)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    results = sqlite3.connect(session)  # marked anew: the list and the selection may have changed since a first run
    with results:
        results.execute("DELETE FROM work_results WHERE worker_outcome = 'SKIPPED'")
    results.close()
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = list(db.work_items)
        skipped = [i.job_id for i in items if uncounted(tuple(i.mutations[0].start_pos), i.mutations[0].operator_name)]
        left_out: set[str] = set()
        if since is not None:
            counted = [i for i in items if i.job_id not in skipped]
            changed = sorted(i.job_id for i in counted if i.mutations[0].start_pos[0] in since.lines)
            unchanged = sorted(i.job_id for i in counted if i.mutations[0].start_pos[0] not in since.lines)
            draw = random.Random(session.name)
            kept = set(draw.sample(unchanged, min(since.sample, len(unchanged))))
            if since.changed_sample is not None:
                kept |= set(draw.sample(changed, min(since.changed_sample, len(changed))))
            else:
                kept |= set(changed)
            left_out = (set(unchanged) | set(changed)) - kept
        if skipped or left_out:
            db.set_multiple_results([*skipped, *left_out], WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    print(f"{len(skipped)} mutants inside type annotations or listed as equivalent: skipped", flush=True)
    if since is not None:
        print(
            f"{len(left_out)} mutants beyond the samples of the lines changed and unchanged since {since.commit}: "
            "skipped",
            flush=True,
        )
    return left_out


def _listening(port: int, within_s: float = 60.0) -> None:
    """Wait until a cosmic-ray http worker answers on `port`: one reached before it listens fails its mutant."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_module(
    module: str,
    clones: list[Path],
    data: Path,
    *,
    report_only: bool = False,
    since: str | None = None,
    sample: int = 0,
    changed_sample: int | None = None,
) -> tuple[int, int, list[str]]:
    """(mutants counted, killed, survivor descriptions) for one module; equivalent mutants are not counted, nor,
    with `since`, those on lines unchanged since that commit beyond a `sample` of them (and, with `changed_sample`,
    those on the lines changed beyond a sample of that many). A session already in the
    clone goes on where it stopped; more than one clone runs that many mutants at a time."""
    tests = [f"tests/{name}" for name in MODULES[module]]
    name = module.replace("/", "_").removesuffix(".py")
    clone = clones[0]
    config, session = clone / f"cr-{name}.toml", clone / f"cr-{name}.sqlite"
    env = {**os.environ, "PYTHONPATH": str(clone), "EDGE_SHARED_DATA": str(data)}
    cosmic = [sys.executable, "-m", "cosmic_ray.cli"]
    for c in clones if not report_only else ():  # a run stopped mid-mutant leaves its module mutated
        subprocess.run(["git", "checkout", "-q", "--", module], cwd=c, check=True)
    source = (clone / module).read_text()
    lines = source.splitlines()
    annotations = _annotations(source)

    def uncounted(start: tuple[int, int], operator: str) -> bool:
        line = lines[start[0] - 1].strip()
        return any(a <= start < b for a, b in annotations) or bool({(line, None), (line, operator)} & EQUIVALENT.keys())

    selection = Selection(since, changed_lines(clone, module, since), sample, changed_sample) if since else None
    if not report_only:
        line_map = clone / f"cr-{name}.lines.json"
        if not line_map.exists():
            covering.record(clone, module, tests, env)
        covering_tests = [sys.executable, str(Path(covering.__file__)), str(line_map), module, *tests]
        ports = range(9876, 9876 + len(clones))
        distributor = (
            '[cosmic-ray.distributor]\nname = "http"\n[cosmic-ray.distributor.http]\n'
            f"worker-urls = {json.dumps([f'http://127.0.0.1:{port}' for port in ports])}\n"
            if len(clones) > 1
            else '[cosmic-ray.distributor]\nname = "local"\n'
        )
        config.write_text(
            "[cosmic-ray]\n"
            f'module-path = "{module}"\n'
            f"timeout = {TIMEOUT_S}\n"
            "excluded-modules = []\n"
            f"test-command = {json.dumps(shlex.join(covering_tests))}\n" + distributor
        )
        if not session.exists():
            subprocess.run([*cosmic, "init", str(config), str(session)], cwd=clone, env=env, check=True)
        _skip(session, uncounted, selection)
        workers = [
            subprocess.Popen([*cosmic, "http-worker", "--port", str(port)], cwd=c, env={**env, "PYTHONPATH": str(c)})
            for c, port in zip(clones, ports, strict=True)
            if len(clones) > 1
        ]
        try:
            for port in ports if workers else ():
                _listening(port)
            db = sqlite3.connect(session)  # a worker not reached: that mutant runs again
            with db:
                db.execute("DELETE FROM work_results WHERE worker_outcome = 'ABNORMAL'")
            db.close()
            subprocess.run([*cosmic, "exec", str(config), str(session)], cwd=clone, env=env, check=True)
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait()
    dump = subprocess.run(
        [*cosmic, "dump", str(session)], cwd=clone, env=env, check=True, capture_output=True, text=True
    )
    total = killed = changed = changed_killed = 0
    survivors = []
    for line in dump.stdout.splitlines():
        item, result = json.loads(line)
        m = item["mutations"][0]
        if not result or uncounted((m["start_pos"][0], m["start_pos"][1]), m["operator_name"]):
            continue
        if result["worker_outcome"] == "skipped":  # left out by `since`
            continue
        total += 1
        on_changed = selection is not None and m["start_pos"][0] in selection.lines
        changed += on_changed
        if result["test_outcome"] == "killed":
            killed += 1
            changed_killed += on_changed
        else:
            where = f"{m['module_path']}:{m['start_pos'][0]} {m['operator_name']} #{m['occurrence']}"
            survivors.append(f"{where} ({result['test_outcome']})\n{result.get('diff', '')}")
    if selection is not None:
        sampled, sampled_killed = total - changed, killed - changed_killed
        print(
            f"{module}: {changed_killed}/{changed} killed on the lines changed since {selection.commit}, "
            f"{sampled_killed}/{sampled} of the sample of the others",
            flush=True,
        )
    return total, killed, survivors


def recheck(module: str, clone: Path, data: Path) -> tuple[int, int, int, list[str]]:
    """Each survivor of the session in `clone` applied again, as the line it changed, to the module as it is now
    (the clone brought to the project's commit) and run against the tests as they are now: (killed, surviving,
    on lines since changed or removed, the survivors' descriptions). Equivalent mutants listed since are left out."""
    name = module.replace("/", "_").removesuffix(".py")
    session, line_map = clone / f"cr-{name}.sqlite", clone / f"cr-{name}.lines.json"
    env = {**os.environ, "PYTHONPATH": str(clone), "EDGE_SHARED_DATA": str(data)}
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=clone, check=True)
    subprocess.run(["git", "pull", "-q", "--ff-only"], cwd=clone, check=True)
    tests = [f"tests/{test}" for test in MODULES[module]]
    line_map.unlink(missing_ok=True)
    covering.record(clone, module, tests, env)
    dump = subprocess.run(
        [sys.executable, "-m", "cosmic_ray.cli", "dump", str(session)],
        cwd=clone,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    source = (clone / module).read_text()
    killed = gone = 0
    surviving = []
    for record in dump.stdout.splitlines():
        item, result = json.loads(record)
        if not result or result["test_outcome"] != "survived":
            continue
        diff = result.get("diff", "").splitlines()
        before = next(line[1:] for line in diff if line.startswith("-") and not line.startswith("---"))
        after = next(line[1:] for line in diff if line.startswith("+") and not line.startswith("+++"))
        if {(before.strip(), item["mutations"][0]["operator_name"]), (before.strip(), None)} & EQUIVALENT.keys():
            continue
        if source.count(before + "\n") != 1:
            gone += 1
            continue
        (clone / module).write_text(source.replace(before + "\n", after + "\n"))
        covering_tests = [sys.executable, str(Path(covering.__file__)), str(line_map), module, *tests]
        every_test = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        try:  # a survivor of its covering tests runs against all: a test may run the line in a subprocess
            survived = all(
                subprocess.run(command, cwd=clone, env=env, capture_output=True, timeout=TIMEOUT_S).returncode == 0
                for command in (covering_tests, every_test)
            )
        except subprocess.TimeoutExpired:
            survived = False
        finally:
            (clone / module).write_text(source)
        if survived:
            surviving.append(f"{module} {item['mutations'][0]['operator_name']}\n-{before}\n+{after}")
        else:
            killed += 1
    return killed, len(surviving), gone, surviving


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", default=list(MODULES), help="modules to mutate (default: all)")
    parser.add_argument("--workdir", type=Path, help="where to clone the project (default: a temporary folder)")
    parser.add_argument("--report-only", action="store_true", help="report the sessions already in --workdir")
    parser.add_argument("--workers", type=int, default=1, help="mutants run at a time, each in a clone of its own")
    parser.add_argument(
        "--recheck", action="store_true", help="run the survivors in --workdir again on the code and tests of now"
    )
    parser.add_argument(
        "--since",
        metavar="COMMIT",
        help="run only the mutants on lines changed since COMMIT (its last measurement), and --sample of the others",
    )
    parser.add_argument("--sample", type=int, default=30, help="with --since, mutants drawn from unchanged lines")
    parser.add_argument(
        "--changed-sample", type=int, help="with --since, mutants drawn from the changed lines (default: all of them)"
    )
    parser.add_argument(
        "--check-list", action="store_true", help="only report MODULES that are no files and stale EQUIVALENT entries"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        sys.exit(f"not a module of this run: {', '.join(unknown)} (choose from {', '.join(MODULES)})")
    tidy = check_list()
    if args.check_list:
        return 0 if tidy else 1
    absent = [module for module in args.modules if not (ROOT / module).is_file()]
    if absent:
        sys.exit(f"no such file: {', '.join(absent)}")
    data = Path(os.environ.get("EDGE_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        clones = [work / ("project" if i == 0 else f"project-{i + 1}") for i in range(args.workers)]
        for clone in clones:
            if not clone.exists():
                subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        if args.recheck:
            for module in args.modules:
                killed, left, gone, surviving = recheck(module, clones[0], data)
                print(f"== {module}: of its survivors, {killed} killed now, {left} survive, {gone} on lines changed")
                for survivor in surviving:
                    print(survivor, flush=True)
            return 0
        grand_total = grand_killed = 0
        for module in args.modules:
            total, killed, survivors = run_module(
                module,
                clones,
                data,
                report_only=args.report_only,
                since=args.since,
                sample=args.sample,
                changed_sample=args.changed_sample,
            )
            grand_total, grand_killed = grand_total + total, grand_killed + killed
            print(f"== {module}: {killed}/{total} killed ({killed / max(total, 1):.0%})", flush=True)
            for survivor in survivors:
                print(survivor, flush=True)
    score = grand_killed / max(grand_total, 1)
    print(f"mutation score {grand_killed}/{grand_total} = {score:.1%} (target {TARGET:.0%}); not counted: mutants")
    print("inside type annotations (never evaluated) and those listed in EQUIVALENT, each with its reason")
    return 0 if score >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

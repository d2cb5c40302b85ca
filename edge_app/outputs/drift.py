"""Drift: each station's latest images (a window of `monitoring.drift_window`) against what the bundle was calibrated
on (its manifest's `fingerprint`) and against the station's own earlier images. A station is drifted where

- its input guard's scores moved up, away from the calibration images': the one-sided two-sample Kolmogorov-Smirnov
  statistic D+ (the largest amount by which the fingerprint's score distribution lies above the window's) exceeds
  its critical value at `drift_alpha`, sqrt(ln(1/alpha) / 2 * (n + m) / (n m)) for a window of n and a fingerprint of
  m images (Smirnov's limit, exact enough from some tens of images). One-sided: scores lower than the calibration
  images' mean images more like those the guard was fitted on, no concern (the NIH training images score so);
- its mean intensity histogram is further than `drift_intensity` from the fingerprint's (total variation: half
  the sum of the bins' differences, 0 for the same, 1 for histograms with no bin in common);
- its share refused by the guard, or found positive among the images read, rose: more than `drift_rise` above the
  station's earlier share (its images, or images read, before the window: at least a window of them), and the
  window's 95 % interval wholly above that share (a rise not explained by chance).

Each measure is judged on a full window (a station with fewer images: too few to tell). An inverted or re-windowed
station is flagged at the latest once a whole window is of its new images; in practice from about a third of one
(tests/test_drift.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge_app.bundles.manifest import Fingerprint
from edge_app.config import MonitoringSettings
from edge_app.outputs.shares import Share
from edge_app.store.monitoring import Arrival, Arrivals

DriftState = Literal["ok", "drifted", "too_few"]


@dataclass(frozen=True)
class StationDrift:
    """One station's window of a bundle's results against the bundle's fingerprint and its own earlier figures."""

    station: str  # "Manufacturer / Model / Station" as the fairness groups name it; "" where unknown
    images: int  # in the window
    guard_ks: float | None  # D+ of the guard's scores; None: not judged (no guard, no fingerprint, too few)
    guard_limit: float | None
    intensity: float | None  # total variation from the fingerprint's mean histogram; None: not judged
    refused: Share
    refused_before: Share
    positive: Share  # among the images read (not refused)
    positive_before: Share
    state: DriftState
    reasons: tuple[str, ...]


def ks_above(scores: Sequence[float], quantiles: Sequence[float]) -> float:
    """D+ = sup_x (F(x) - G(x)): how far the distribution known by its evenly spaced `quantiles` (F, linear between
    them) lies above the empirical one of `scores` (G), i.e. how far the scores moved up. Written here: scipy's
    `ks_2samp` needs both samples, the fingerprint keeps only quantiles (and scipy is no dependency of the box)."""
    x = np.sort(np.asarray(scores, dtype=np.float64))
    reference = np.interp(x, quantiles, np.linspace(0.0, 1.0, len(quantiles)))
    # G is a step function, F continuous and rising: the supremum is approached just below each score.
    return max(0.0, float(np.max(reference - np.arange(len(x)) / len(x))))


def ks_limit(alpha: float, n: int, m: int) -> float:
    """The one-sided two-sample Kolmogorov-Smirnov critical value at `alpha` for samples of n and m (Smirnov 1939:
    P(sqrt(nm / (n + m)) D+ > t) -> exp(-2 t^2))."""
    return math.sqrt(math.log(1.0 / alpha) / 2.0 * (n + m) / (n * m))


def total_variation(p: Sequence[float], q: Sequence[float]) -> float:
    return 0.5 * float(np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum())


def rose(now: Share, before: Share, rise: float) -> bool:
    """`now` more than `rise` above `before`, its 95 % interval wholly above it."""
    if now.value is None or before.value is None or now.interval is None:
        return False
    return now.value - before.value > rise and now.interval[0] > before.value


def judge(
    station: str,
    window: list[Arrival],
    total: Arrivals,
    fingerprint: Fingerprint | None,
    settings: MonitoringSettings,
) -> StationDrift:
    """A station's drift from its window (newest first, at most `drift_window`) and its whole count `total`."""
    n, size = len(window), settings.drift_window
    outside = sum(a.outside for a in window)
    positive = sum(a.positive for a in window)
    refused, positives = Share(outside, n), Share(positive, n - outside)
    refused_before = Share(total.outside - outside, total.total - n)
    positive_before = Share(total.positive - positive, (total.total - n) - (total.outside - outside))
    if n < size:
        return StationDrift(
            station, n, None, None, None, refused, refused_before, positives, positive_before, "too_few", ()
        )
    reasons = []
    guard_ks = guard_limit = intensity = None
    scores = [a.guard for a in window if a.guard is not None]
    if fingerprint is not None and fingerprint.guard_quantiles is not None and len(scores) == n:
        guard_ks = ks_above(scores, fingerprint.guard_quantiles)
        guard_limit = ks_limit(settings.drift_alpha, n, fingerprint.images)
        if guard_ks > guard_limit:
            reasons.append(f"input guard scores moved away from the calibration images' (KS {guard_ks:.2f} > "
                           f"{guard_limit:.2f})")  # fmt: skip
    bins = len(fingerprint.intensity) if fingerprint is not None else 0
    histograms = [a.intensity for a in window if a.intensity is not None and len(a.intensity) == bins]
    if fingerprint is not None and len(histograms) == n:
        intensity = total_variation(np.mean(np.asarray(histograms), axis=0), fingerprint.intensity)
        if intensity > settings.drift_intensity:
            reasons.append(f"intensity histogram moved away from the calibration images' (distance {intensity:.2f} "
                           f"> {settings.drift_intensity:.2f})")  # fmt: skip
    if refused_before.n >= size and rose(refused, refused_before, settings.drift_rise):
        reasons.append(f"refused {refused.value:.0%} of the last {n} images (earlier {refused_before.value:.0%})")
    if positive_before.n >= size and rose(positives, positive_before, settings.drift_rise):
        reasons.append(f"found positive {positives.value:.0%} of the last {positives.n} images read (earlier "
                       f"{positive_before.value:.0%})")  # fmt: skip
    return StationDrift(
        station, n, guard_ks, guard_limit, intensity, refused, refused_before, positives, positive_before,
        "drifted" if reasons else "ok", tuple(reasons),
    )  # fmt: skip


def stations(totals: Iterable[tuple[str, Arrivals]]) -> dict[str, Arrivals]:
    """Station -> its whole count, from counts by group (station, count) summed."""
    out: dict[str, Arrivals] = {}
    for station, arrivals in totals:
        out[station] = out.get(station, Arrivals()) + arrivals
    return out

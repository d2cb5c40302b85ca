"""Drift's figures against hand computations: the one-sided Kolmogorov-Smirnov statistic against a fingerprint's
quantiles and its critical value, the histograms' total variation, a rate's rise, a station judged on all of them."""

from __future__ import annotations

import pytest

from edge_app.bundles.manifest import Fingerprint
from edge_app.config import MonitoringSettings
from edge_app.outputs.drift import judge, ks_above, ks_limit, rose, total_variation
from edge_app.outputs.shares import Share
from edge_app.store.monitoring import Arrival, Arrivals

pytestmark = pytest.mark.unit


def test_the_statistics_match_a_hand_computation() -> None:
    # Quantiles 0, 1, 2: F(1.5) = 0.75, F(3) = 1; the window's G is 0 below 1.5, 1/2 from it: D+ = 0.75 - 0.
    assert ks_above([3.0, 1.5], [0.0, 1.0, 2.0]) == pytest.approx(0.75)
    assert ks_above([-1.0, 0.5], [0.0, 1.0, 2.0]) == 0.0, "scores lower than the calibration's: no drift"
    # sqrt(ln(1000) / 2 * 300 / 20000) = sqrt(3.4539 * 0.015)
    assert ks_limit(0.001, 100, 200) == pytest.approx(0.2276, abs=1e-4)
    assert total_variation([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)
    assert rose(Share(30, 100), Share(10, 1000), 0.10), "30 % against 1 %"
    assert not rose(Share(15, 100), Share(100, 1000), 0.10), "5 points: under the rise"
    assert not rose(Share(2, 8), Share(10, 100), 0.10), "15 points, but 2 of 8: its interval reaches down to 7 %"


def test_a_station_judged_by_hand() -> None:
    """A window of 10: 4 refused (scores 3.0), 6 read (0.5), 3 of them positive; histograms (1, 0) and (0.5, 0.5)
    five each; 40 images in all, 5 refused, 12 positive."""
    fingerprint = Fingerprint(
        images=200, data="x", guard_quantiles=(0.0, 1.0, 2.0), intensity=(0.5, 0.5), bits={}, photometric={}, sizes={}
    )
    window = [Arrival(True, False, 3.0, (1.0, 0.0)) for _ in range(4)]
    window += [Arrival(False, i < 3, 0.5, (1.0, 0.0) if i == 0 else (0.5, 0.5)) for i in range(6)]
    settings = MonitoringSettings(drift_window=10)
    got = judge("ACME / X1 / ROOM-1", window, Arrivals(40, 5, 12), fingerprint, settings)
    # F = 0.25 at 0.5 (six scores), 1 at 3.0: D+ = max(0.25 - 0/10, 1 - 6/10) = 0.4, under sqrt(ln 1000 / 2 * 0.105)
    assert got.guard_ks == pytest.approx(0.4) and got.guard_limit == pytest.approx(0.6022, abs=1e-4)
    # mean histogram (0.75, 0.25): half of |0.25| + |-0.25|
    assert got.intensity == pytest.approx(0.25)
    assert (got.refused, got.refused_before) == (Share(4, 10), Share(1, 30))
    assert (got.positive, got.positive_before) == (Share(3, 6), Share(9, 29))
    # refused 40 % (Wilson 16.8-68.7 %) against 3 %: risen; positive 50 % (18.8-81.2 %) against 31 %: not
    assert got.state == "drifted" and got.reasons == (
        "intensity histogram moved away from the calibration images' (distance 0.25 > 0.15)",
        "refused 40% of the last 10 images (earlier 3%)",
    )
    assert judge("s", window[:9], Arrivals(40, 5, 12), fingerprint, settings).state == "too_few"

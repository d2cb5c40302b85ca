"""The model in the field: for each bundle and finding, how often clinicians agreed with it, per week, over its
whole service and by patient group (sex, age band, modality, station), beside the bundle's own validation; the
groups whose figures fell below it flagged (`Monitor`, a loop of the service)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge_app.bundles.manifest import Manifest
from edge_app.config import MonitoringSettings
from edge_app.outputs import drift
from edge_app.outputs.shares import Share
from edge_app.store import Store
from edge_app.store.monitoring import Arrivals, Counts, Group, Monitoring
from edge_app.system.background import Periodic

log = logging.getLogger(__name__)
Dimension = Literal["all", "week", "sex", "band", "modality", "station"]
DIMENSIONS: tuple[Dimension, ...] = ("sex", "band", "modality", "station")  # in `Group`'s order
State = Literal["ok", "flagged", "too_few", "small", "unvalidated"]


@dataclass(frozen=True)
class Line:
    """One finding's figures for one group (or week, or the whole service) of one bundle."""

    label: str
    dimension: Dimension
    group: str  # "" for the whole service; a week's Monday; a sex, band, modality or station ("" where unknown)
    counts: Counts
    arrivals: Arrivals | None  # None for a week
    state: State
    reason: str  # in plain words where flagged

    @property
    def ppv(self) -> Share:
        """AI-positive findings the clinicians agreed with: the positive predictive value seen here."""
        return Share(self.counts.tp, self.counts.tp + self.counts.fp)

    @property
    def missed(self) -> Share:
        """AI-negative findings the clinicians marked positive."""
        return Share(self.counts.fn, self.counts.fn + self.counts.tn)

    @property
    def refused(self) -> Share | None:
        return Share(self.arrivals.outside, self.arrivals.total) if self.arrivals is not None else None


@dataclass(frozen=True)
class Expected:
    """A label's figures as its bundle's validation measured them (at the validation set's prevalence)."""

    ppv: float | None
    missed: float | None
    validated: bool

    @classmethod
    def of(cls, manifest: Manifest | None, label: str) -> Expected:
        v = manifest.validation.labels.get(label) if manifest is not None and manifest.validation else None
        if v is None or v.sensitivity is None or v.specificity is None:
            return cls(None, None, bool(v and v.validated))
        tp, fp = v.sensitivity * v.positives, (1 - v.specificity) * v.negatives
        fn, tn = (1 - v.sensitivity) * v.positives, v.specificity * v.negatives
        return cls(tp / (tp + fp) if tp + fp else None, fn / (fn + tn) if fn + tn else None, v.validated)


@dataclass(frozen=True)
class BundleFigures:
    sha256: str
    name: str
    version: str
    first_at: str
    last_at: str
    expected: dict[str, Expected]
    lines: tuple[Line, ...]
    drift: tuple[drift.StationDrift, ...] = ()  # each station's latest images against the bundle's fingerprint

    def of(self, dimension: Dimension) -> list[Line]:
        return [line for line in self.lines if line.dimension == dimension]


def figures(
    store: Store, settings: MonitoringSettings, manifest_of: Callable[[str], Manifest | None]
) -> list[BundleFigures]:
    """Every bundle's figures, counted from what `Monitoring.catch_up` has counted (the newest bundle first)."""
    monitoring = Monitoring(store)
    out = []
    for sha, first, last in monitoring.bundles():
        manifest = manifest_of(sha)
        weekly = monitoring.weekly(sha)
        grouped = monitoring.by_group(sha, settings.adult_from_years, settings.older_from_years)
        arrivals = monitoring.arrivals(sha, settings.adult_from_years, settings.older_from_years)
        labels = sorted({label for label, _ in weekly} | set(manifest.labels if manifest else ()))
        expected = {label: Expected.of(manifest, label) for label in labels}
        lines: list[Line] = []
        for label in labels:
            lines.append(_judge(settings, expected[label], label, "all", "", _sum(grouped, label), _total(arrivals)))
            for (of_label, week), counts in sorted(weekly.items()):
                if of_label == label:
                    lines.append(_judge(settings, expected[label], label, "week", week, counts, None))
            for index, dimension in enumerate(DIMENSIONS):
                for group in sorted({g[index] for g in arrivals}):
                    counts = _sum(grouped, label, lambda g: g[index] == group)  # noqa: B023 (used at once)
                    came = _total(arrivals, lambda g: g[index] == group)  # noqa: B023
                    lines.append(_judge(settings, expected[label], label, dimension, group, counts, came))
        name, version = (manifest.name, manifest.version) if manifest else ("(bundle no longer on the box)", "")
        fingerprint = manifest.fingerprint if manifest else None
        drifts = tuple(
            drift.judge(station, monitoring.window(sha, station, settings.drift_window), total, fingerprint, settings)
            for station, total in sorted(drift.stations((g[3], a) for g, a in arrivals.items()).items())
        )
        out.append(BundleFigures(sha, name, version, first, last, expected, tuple(lines), drifts))
    return out


def _sum(grouped: dict[tuple[str, Group], Counts], label: str, keep: Callable[[Group], bool] | None = None) -> Counts:
    return sum((c for (lab, g), c in grouped.items() if lab == label and (keep is None or keep(g))), Counts())


def _total(arrivals: dict[Group, Arrivals], keep: Callable[[Group], bool] | None = None) -> Arrivals:
    return sum((a for g, a in arrivals.items() if keep is None or keep(g)), Arrivals())


def _judge(
    settings: MonitoringSettings,
    expected: Expected,
    label: str,
    dimension: Dimension,
    group: str,
    counts: Counts,
    arrivals: Arrivals | None,
) -> Line:
    """A figure is flagged where, with at least `min_reviews` reviewed findings of its kind, it is worse than the
    validation's by more than `margin`: the PPV below it, or the share of AI-negatives marked positive above it."""
    if arrivals is not None and arrivals.total < settings.min_group_size and dimension != "all":
        return Line(label, dimension, group, Counts(), Arrivals(), "small", "")
    line = Line(label, dimension, group, counts, arrivals, "ok", "")
    if not expected.validated:
        return Line(label, dimension, group, counts, arrivals, "unvalidated", "")
    worse = []
    ppv, missed = line.ppv.value, line.missed.value
    if (
        expected.ppv is not None
        and ppv is not None
        and line.ppv.n >= settings.min_reviews
        and ppv < expected.ppv - settings.margin
    ):
        worse.append(f"agreement with positive findings {ppv:.0%} (validation {expected.ppv:.0%})")
    if (
        expected.missed is not None
        and missed is not None
        and line.missed.n >= settings.min_reviews
        and missed > expected.missed + settings.margin
    ):
        worse.append(f"negatives marked positive {missed:.0%} (validation {expected.missed:.0%})")
    if worse:
        return Line(label, dimension, group, counts, arrivals, "flagged", "; ".join(worse))
    if line.ppv.n < settings.min_reviews and line.missed.n < settings.min_reviews:
        return Line(label, dimension, group, counts, arrivals, "too_few", "")
    return line


def flag_key(bundle: BundleFigures, line: Line) -> str:
    where = "all" if line.dimension == "all" else f"{line.dimension}={line.group}"
    return f"{bundle.sha256[:12]}:{line.label}:{where}"


def found_flags(bundles: list[BundleFigures]) -> dict[str, tuple[str, str, str]]:
    """key -> (kind, bundle sha256, reason) of every flagged figure (a week's raise none: too few) and of every
    drifted station (one flag each, its reasons together)."""
    out = {}
    for bundle in bundles:
        for line in bundle.lines:
            if line.state == "flagged" and line.dimension != "week":
                kind = "agreement" if line.dimension == "all" else "fairness"
                where = "" if line.dimension == "all" else f", {line.dimension} {line.group or '(unknown)'}"
                reason = f"{bundle.name} {bundle.version}, {line.label}{where}: {line.reason}"
                out[flag_key(bundle, line)] = (kind, bundle.sha256, reason)
        for station in bundle.drift:
            if station.state == "drifted":
                reason = f"{bundle.name} {bundle.version}, station {station.station or '(unknown)'}: "
                out[f"{bundle.sha256[:12]}:drift:station={station.station}"] = (
                    "drift",
                    bundle.sha256,
                    reason + "; ".join(station.reasons),
                )
    return out


class Monitor(Periodic):
    """Every `every_s`: count what arrived and was reviewed since, and settle the flags (each raised or cleared
    audited)."""

    def __init__(
        self, store: Store, settings: MonitoringSettings, manifest_of: Callable[[str], Manifest | None]
    ) -> None:
        super().__init__("edge-monitor", settings.every_s)
        self.store, self.settings, self.manifest_of = store, settings, manifest_of
        self._latest: list[BundleFigures] | None = None

    def run_once(self) -> list[BundleFigures]:
        Monitoring(self.store).catch_up()
        bundles = figures(self.store, self.settings, self.manifest_of)
        for key in Monitoring(self.store).settle(found_flags(bundles)):
            log.warning("model monitoring: flag raised, %s", key)
        self._latest = bundles
        return bundles

    def latest(self) -> list[BundleFigures]:
        """The figures of the last round (counted now where none ran yet): what the pages show, read at once. A
        round over 100,000 results takes about a second on two cores (tests/benchmarks/monitoring.py)."""
        return self._latest if self._latest is not None else self.run_once()

"""The one-page summary of the model's performance a district supervisor takes away (on a USB stick): for each bundle,
each finding's agreement with clinicians over its service beside its validation, the same by patient group with each
group's size, each station's drift, and the open flags. Aggregates only: no patient's data, and a group of fewer than
`monitoring.min_group_size` images shown without its size or figures, so that none singles out a patient. A4, in the
fonts of the study report (`fonts.py`); what does not fit on the page is counted and left to the CSV export."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Mapping, Sequence

from edge_app.bundles.manifest import Manifest
from edge_app.config import MonitoringSettings
from edge_app.outputs.fonts import Fonts, draw, fonts
from edge_app.outputs.performance import DIMENSIONS, BundleFigures, Line
from edge_app.outputs.shares import Share
from edge_app.store.monitoring import Flag

Translate = Callable[..., str]
Rgb = tuple[float, float, float]
_INK, _RED, _GREY = (0.1, 0.1, 0.1), (0.75, 0.05, 0.05), (0.45, 0.45, 0.45)
# Where each column of a table begins, in mm from the left edge.
_FINDINGS = (15, 50, 64, 94, 112, 142)  # finding, images, agreement, validation, marked positive, state
_GROUPS = (15, 45, 54, 81, 108, 136, 164)  # group, images, refused, finding, agreement, marked positive, state
_DRIFT = (15, 57, 67, 90, 117, 141, 165)  # station, images, guard KS (limit), intensity, refused, positive, state
_SIZE = 6.5  # the tables' text: about 23 characters in 30 mm


def performance_summary(
    bundles: Sequence[BundleFigures],
    flags: Sequence[Flag],
    settings: MonitoringSettings,
    counted_at: str,
    _: Translate,
    cards: Mapping[str, Manifest | None] | None = None,
    language: str = "en",
    typeface: Fonts | None = None,
) -> bytes:
    """The PDF of `bundles`' figures and the open `flags`, in the language of `_` (a finding named in `language` by
    its bundle's manifest in `cards`, by sha256, where the bundle is still on the box)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.pdfgen.canvas import Canvas

    buf = io.BytesIO()
    pdf = Canvas(buf, pagesize=A4, pageCompression=1, invariant=1)
    pdf.setTitle(_("Model performance: summary"))
    typeface = typeface or fonts()
    y = A4[1] - 18 * mm
    bottom = 18 * mm

    def row(
        columns: Sequence[float], cells: Sequence[str], size: float = 7, bold: bool = False, color: Rgb = _INK
    ) -> None:
        nonlocal y
        for x, cell in zip(columns, cells, strict=True):
            draw(pdf, typeface, x * mm, y, cell, size, bold, color)
        y -= size * 1.45

    def share(s: Share | None) -> str:
        if s is None or s.value is None or s.interval is None:
            return "-"
        return f"{100 * s.value:.0f} % ({100 * s.interval[0]:.0f}-{100 * s.interval[1]:.0f}, {s.k}/{s.n})"

    def percent(value: float | None) -> str:
        return f"{100 * value:.0f} %" if value is not None else "-"

    states = {
        "flagged": _("Below validation"),
        "too_few": _("Too few reviews"),
        "unvalidated": _("Not validated"),
        "ok": _("As validated"),
    }
    drift_states = {"drifted": _("Drifted"), "too_few": _("Too few images"), "ok": _("Steady")}
    small = _("Fewer than %(n)d images: not shown", n=settings.min_group_size)
    titles = dict(zip(DIMENSIONS, (_("By sex"), _("By age band"), _("By modality"), _("By station")), strict=True))
    kinds = {"agreement": _("agreement"), "fairness": _("fairness"), "drift": _("drift")}  # the flag's reason: English
    bands = {"child": _("child"), "adult": _("adult"), "older": _("older adult"), "": _("unknown")}

    row((15,), (_("Model performance: summary"),), 14, bold=True)
    for text in (
        _(
            "Aggregates only: no patient data. A group of fewer than %(n)d images is not shown.",
            n=settings.min_group_size,
        ),
        _(
            "Agreement: the share of the AI's positive findings the clinicians agreed with. Marked positive: the share "
            "of its negative findings they marked positive. Each with its %(level)d %% interval and counts; refused: "
            "by the input guard.",
            level=95,
        ),
        _(
            "Counted %(at)s UTC. A figure worse than the validation by more than %(margin)d points, with at least "
            "%(n)d reviewed findings, is flagged.",
            at=counted_at[:16].replace("T", " "),
            margin=round(100 * settings.margin),
            n=settings.min_reviews,
        ),
    ):
        for chunk in textwrap.wrap(text, 125):
            row((15,), (chunk,), 7.5, color=_GREY)
    y -= 2 * mm
    row((15,), (_("Flags") + f" ({len(flags)})",), 10, bold=True)
    for flag in flags:
        seen = _("acknowledged") if flag.acknowledged_at else _("not acknowledged")
        kind = kinds.get(flag.kind, flag.kind)
        for chunk in textwrap.wrap(f"{flag.raised_at[:10]} {kind}: {flag.reason} ({seen})", 130):
            row((15,), (chunk,), 7, color=_RED)
    if not flags:
        row((15,), (_("None"),), 7)

    lines: list[tuple[Sequence[float], Sequence[str], float, bool]] = []  # drawn while the page has room
    for bundle in bundles:
        card = (cards or {}).get(bundle.sha256)

        def named(label: str, card: Manifest | None = card) -> str:
            return card.label_name(label, language) if card is not None else label

        lines.append(
            ((15,), (f"{bundle.name} {bundle.version}   {bundle.first_at[:10]} - {bundle.last_at[:10]}",), 10, True)
        )
        heads = (_("Finding"), _("Images"), _("Agreement"), _("Validation"), _("Marked positive"), _("State"))
        lines.append((_FINDINGS, heads, _SIZE, True))
        for line in bundle.of("all"):
            expected = bundle.expected[line.label]
            cells = (named(line.label), str(line.arrivals.total if line.arrivals else 0), share(line.ppv))
            more = (percent(expected.ppv), share(line.missed), states.get(line.state, ""))
            lines.append((_FINDINGS, (*cells, *more), _SIZE, False))
        columns = (
            _("Group"),
            _("Images"),
            _("Refused"),
            _("Finding"),
            _("Agreement"),
            _("Marked positive"),
            _("State"),
        )
        lines.append((_GROUPS, columns, _SIZE, True))
        for dimension in DIMENSIONS:
            by_group: dict[str, list[Line]] = {}
            for line in bundle.of(dimension):
                by_group.setdefault(line.group, []).append(line)
            lines.append(((15,), (titles[dimension],), _SIZE, True))
            for group, group_lines in sorted(by_group.items()):
                name = (bands.get(group, group) if dimension == "band" else group or _("unknown"))[:23]
                first = group_lines[0]
                if first.state == "small" or first.arrivals is None:
                    lines.append((_GROUPS[:2], (name, small), _SIZE, False))
                    continue
                checked = [x for x in group_lines if bundle.expected[x.label].validated]
                for n, line in enumerate(checked or group_lines[:1]):
                    counted = (name, str(first.arrivals.total), share(first.refused)) if n == 0 else ("", "", "")
                    figures = (named(line.label), share(line.ppv), share(line.missed)) if checked else ("", "", "")
                    lines.append(
                        (_GROUPS, (*counted, *figures, states.get(line.state, "") if checked else ""), _SIZE, False)
                    )
        if bundle.drift:
            lines.append(((15,), (_("Drift by station"),), _SIZE, True))
            note = _("Input guard: Kolmogorov-Smirnov statistic (its limit). Refused, found positive: latest; earlier.")
            lines.append(((15,), (note,), _SIZE, False))
            drift_heads = (
                _("Station"),
                _("Images"),
                _("Input guard"),
                _("Intensity (distance)"),
                _("Refused"),
                _("Found positive"),
                _("State"),
            )
            lines.append((_DRIFT, drift_heads, _SIZE, True))
            for station in bundle.drift:
                judged = (
                    f"{station.guard_ks:.2f} ({station.guard_limit:.2f})"
                    if station.guard_ks is not None and station.guard_limit is not None
                    else "-",
                    f"{station.intensity:.2f}" if station.intensity is not None else "-",
                )
                rates = (
                    f"{percent(station.refused.value)}; {percent(station.refused_before.value)}",
                    f"{percent(station.positive.value)}; {percent(station.positive_before.value)}",
                )
                state = drift_states.get(station.state, "")
                name = (station.station or _("unknown"))[:32]
                lines.append((_DRIFT, (name, str(station.images), *judged, *rates, state), _SIZE, False))
    for n, (at, texts, points, bold) in enumerate(lines):
        if y < bottom and n < len(lines) - 1:
            left = len(lines) - n
            row((15,), (_("%(n)d more lines: see the CSV export.", n=left),), 7.5, color=_GREY)
            break
        row(at, texts, points, bold)
    draw(pdf, typeface, 15 * mm, 10 * mm, _("Made by the clinic's AI appliance."), 7, False, _GREY)
    pdf.showPage()
    pdf.save()
    return buf.getvalue()

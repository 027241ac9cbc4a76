"""The dashboard's timeline: what each plug tried (cloud, DNS, NTP) over time, as an SVG.

Pure functions, so every rule is testable without a database, a clock or a browser:
:func:`build_timeline` folds recorded events into per-plug buckets, :meth:`Timeline.as_dict`
is the JSON an API or a script reads, and :func:`render_svg` draws small multiples (one
strip per plug, so a chatty plug does not flatten the others) as an inline ``<svg>`` that
needs no JavaScript and no chart library.

Plug aliases are set over the network by whoever can reach a plug, so every text from
outside is stripped of control characters and XML-escaped before it reaches the page.
"""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from hs100local.eventview import iso

#: the kinds charted, in stacking order (bottom first), with their legend labels
SERIES = (("tls", "cloud attempts"), ("dns", "DNS sinkhole hits"), ("ntp", "NTP served"))

#: zoom level -> (span, bucket) in seconds; every level has at most ~100 buckets
RANGES: dict[str, tuple[float, float]] = {
    "1h": (3600.0, 60.0),
    "6h": (21600.0, 300.0),
    "24h": (86400.0, 900.0),
    "7d": (604800.0, 7200.0),
}
DEFAULT_RANGE = "24h"

#: row key of events from clients that are not a known plug
OTHER = "other"
OTHER_LABEL = "other clients"

#: default bar colours, so the SVG renders without the page's CSS (which may override)
COLOURS = {"tls": "#d9534f", "dns": "#f0ad4e", "ntp": "#5bc0de"}

#: the empty default of build_timeline's mappings (read-only: a shared default must be)
_NOTHING: Mapping[str, str] = MappingProxyType({})

_KINDS = tuple(kind for kind, _ in SERIES)
_SERIES_LABELS = dict(SERIES)

# Layout of render_svg, in SVG user units.
_PAD_LEFT = 36  # room for the per-row peak label
_PAD_RIGHT = 20  # half a tick label, so the last one is not cut off
_LEGEND_H = 24
_AXIS_H = 24
_LABEL_H = 16  # the row label above each strip
_ROW_GAP = 4
_LABEL_MAX = 60  # characters of a row label shown in a strip (tooltips get more)
_TITLE_MAX = 120

#: tick spacings tried in order; the first giving at most _MAX_TICKS ticks wins
_TICK_STEPS = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 14400, 21600, 43200, 86400,
               172800, 604800)
_MAX_TICKS = 8
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # not %a: that follows the locale

# Control characters (C0, DEL, C1), bidi overrides that could make a label read as
# another, and what XML 1.0 cannot hold at all (surrogates, U+FFFE/U+FFFF).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")


class EventLike(Protocol):
    """What :func:`build_timeline` reads of an event (``hs100local.events.Event`` fits)."""

    @property
    def at(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def client(self) -> str | None: ...
    @property
    def count(self) -> int: ...
    @property
    def plug(self) -> str | None: ...


@dataclass
class TimelineRow:
    """One strip: ``counts[kind][i]`` events of ``kind`` in bucket ``i``."""

    key: str  # the plug's MAC, or OTHER
    label: str
    counts: dict[str, list[int]] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        return {kind: sum(values) for kind, values in self.counts.items()}

    def stacked(self) -> list[int]:
        """Per bucket, all series together: the height the strip's y scale must fit."""
        return [sum(column) for column in zip(*self.counts.values(), strict=True)]


@dataclass
class Timeline:
    """Buckets ``[start + i*step, start + (i+1)*step)`` from ``start`` up to ``end``."""

    start: float
    end: float
    step: float
    rows: list[TimelineRow]

    @property
    def buckets(self) -> int:
        return max(0, round((self.end - self.start) / self.step))

    def bucket_start(self, index: int) -> float:
        return self.start + index * self.step

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape: times as ISO 8601 UTC, one object per row with its totals."""
        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "step_s": self.step,
            "series": [{"kind": kind, "label": label} for kind, label in SERIES],
            "rows": [{"plug": row.key, "label": row.label,
                      "counts": {kind: list(values) for kind, values in row.counts.items()},
                      "totals": row.totals()} for row in self.rows],
        }


def parse_range(text: str | None) -> str:
    """A zoom level from a query string (``?range=6h``): a key of RANGES, DEFAULT_RANGE
    when absent, ValueError naming the valid ones otherwise (the page shows it)."""
    if text is None or not text.strip():
        return DEFAULT_RANGE
    key = text.strip().lower()
    if key not in RANGES:
        raise ValueError(f"unknown range {text!r}: use one of {', '.join(RANGES)}")
    return key


def window(end: float, range_key: str = DEFAULT_RANGE) -> tuple[float, float, float]:
    """(start, end, step) of a range ending at ``end``: boundaries fall on multiples of
    step, so buckets do not shift on every refresh; the bucket holding ``end`` (now,
    still filling) is the last one."""
    span, step = RANGES[parse_range(range_key)]
    stop = (math.floor(end / step) + 1) * step
    return stop - span, stop, step


def build_timeline(events: Iterable[EventLike], *, end: float,
                   range_key: str = DEFAULT_RANGE, labels: Mapping[str, str] = _NOTHING,
                   host_to_plug: Mapping[str, str] = _NOTHING,
                   include_other: bool = True) -> Timeline:
    """Fold events into one row per plug (every plug of ``labels``, even without events,
    so the page lists all of them) and an ``other`` row for clients of no known plug.

    An event's plug is the one recorded with it, else the plug its client address is
    now (``host_to_plug``: events recorded before the plug was inventoried), else other.
    Events outside the window and kinds not in SERIES are ignored; ``count`` (identical
    events folded within a minute) is added whole to the bucket of ``at``.
    """
    start, stop, step = window(end, range_key)
    timeline = Timeline(start, stop, step, [])
    rows = {mac: _empty_row(mac, labels.get(mac) or mac, timeline.buckets) for mac in labels}
    for event in events:
        index = _bucket(timeline, event)
        if index is None:
            continue
        key = event.plug or host_to_plug.get(event.client or "") or OTHER
        if key == OTHER and not include_other:
            continue
        if key not in rows:
            label = OTHER_LABEL if key == OTHER else labels.get(key) or key
            rows[key] = _empty_row(key, label, timeline.buckets)
        rows[key].counts[event.kind][index] += event.count
    timeline.rows = sorted(rows.values(), key=_row_order)
    return timeline


def _empty_row(key: str, label: str, buckets: int) -> TimelineRow:
    return TimelineRow(key, label, {kind: [0] * buckets for kind in _KINDS})


def _bucket(timeline: Timeline, event: EventLike) -> int | None:
    """The bucket index of a charted event, None for one the chart does not show."""
    if event.kind not in _SERIES_LABELS or event.count <= 0:
        return None
    if not timeline.start <= event.at < timeline.end:
        return None
    return min(int((event.at - timeline.start) // timeline.step), timeline.buckets - 1)


def _row_order(row: TimelineRow) -> tuple[bool, str, str]:
    """By label, case-insensitively (the MAC breaks ties); other last."""
    return (row.key == OTHER, row.label.casefold(), row.key)


# --- SVG -------------------------------------------------------------------------------


def render_svg(timeline: Timeline, *, tz_offset_s: float = 0.0, width: int = 760,
               row_height: int = 56) -> str:
    """The timeline as an inline ``<svg>``: a legend, one strip of stacked bars per row
    (each bar with a tooltip), and a shared time axis in the viewer's local time.

    ``tz_offset_s`` is the viewer's UTC offset (seconds east), as the page's script or
    the server's settings know it; one offset for the whole window, so a 7-day chart
    across a DST change is an hour off on one side of it.
    """
    if not timeline.rows:
        return _empty_svg(width, "no plugs yet")
    plot_h = max(row_height - _LABEL_H - _ROW_GAP, 8)
    height = _LEGEND_H + len(timeline.rows) * row_height + _AXIS_H
    geometry = _Geometry(timeline, width, tz_offset_s)
    parts = [_svg_open(width, height, _description(timeline, tz_offset_s)),
             _legend(timeline.step)]
    top = _LEGEND_H
    for row in timeline.rows:
        parts.append(_strip(row, geometry, top, plot_h))
        top += row_height
    parts.append(_axis(geometry, _LEGEND_H, top))
    parts.append("</svg>")
    return "\n".join(parts)


@dataclass(frozen=True)
class _Geometry:
    """Where a time falls horizontally, and the local-time rules for labelling it."""

    timeline: Timeline
    width: int
    tz_offset_s: float

    @property
    def left(self) -> float:
        return _PAD_LEFT

    @property
    def plot_w(self) -> float:
        return max(self.width - _PAD_LEFT - _PAD_RIGHT, 10)

    def x(self, at: float) -> float:
        span = self.timeline.end - self.timeline.start
        return self.left + (at - self.timeline.start) / span * self.plot_w

    def bar_w(self) -> float:
        slot = self.plot_w / max(self.timeline.buckets, 1)
        return max(slot - min(1.0, slot * 0.2), 0.5)


def _svg_open(width: int, height: int, description: str) -> str:
    text = _text(description, _TITLE_MAX * 2)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'class="timeline" role="img" aria-label="{text}" font-family="sans-serif" '
            f'font-size="11">\n<title>{text}</title>')


def _empty_svg(width: int, message: str) -> str:
    """The whole chart when there is nothing to draw, saying why instead of a blank."""
    height = 40
    return "\n".join([
        _svg_open(width, height, f"Event timeline: {message}"),
        f'<text class="empty" x="{_num(width / 2)}" y="24" text-anchor="middle" '
        f'fill="#888">{_text(message)}</text>',
        "</svg>",
    ])


def _description(timeline: Timeline, tz_offset_s: float) -> str:
    """What a screen reader says instead of the bars (and the chart's own tooltip)."""
    names = [label for _, label in SERIES]
    listing = f"{', '.join(names[:-1])} and {names[-1]}"
    span = _duration_text(timeline.end - timeline.start)
    until = _local_label(timeline.end, tz_offset_s, with_day=True)
    return (f"{listing[:1].upper()}{listing[1:]} per plug, {span} until {until}, "
            f"per {_duration_text(timeline.step)}")


def _legend(step: float) -> str:
    items = ['<g class="legend">']
    x = float(_PAD_LEFT)
    for kind, label in SERIES:
        items.append(f'<rect class="swatch {kind}" x="{_num(x)}" y="6" width="10" '
                     f'height="10" fill="{COLOURS[kind]}"/>')
        items.append(f'<text x="{_num(x + 14)}" y="15">{_text(label)}</text>')
        x += 14 + len(label) * 6.5 + 16
    items.append(f'<text class="per" x="{_num(x)}" y="15" fill="#666">'
                 f'(bars: events per {_duration_text(step)})</text>')
    items.append("</g>")
    return "\n".join(items)


def _strip(row: TimelineRow, geometry: _Geometry, top: float, plot_h: float) -> str:
    """One row: its label, its peak (the y scale), a baseline and its bars."""
    plot_top = top + _LABEL_H
    base = plot_top + plot_h
    peak = max(row.stacked(), default=0)
    parts = [f'<g class="row" data-plug="{_text(row.key)}">',
             f'<text class="row-label" x="{_num(geometry.left)}" y="{_num(top + 12)}" '
             f'font-weight="bold">{_text(row.label, _LABEL_MAX)}</text>',
             f'<line class="baseline" x1="{_num(geometry.left)}" y1="{_num(base)}" '
             f'x2="{_num(geometry.left + geometry.plot_w)}" y2="{_num(base)}" stroke="#999"/>']
    if peak == 0:
        parts.append(f'<text class="empty" x="{_num(geometry.left + geometry.plot_w / 2)}" '
                     f'y="{_num(base - plot_h / 2 + 4)}" text-anchor="middle" fill="#888">'
                     f'nothing recorded</text>')
    else:
        parts.append(f'<text class="row-max" x="{_num(geometry.left - 4)}" '
                     f'y="{_num(plot_top + 9)}" text-anchor="end" fill="#666">{peak}</text>')
        parts.extend(_bars(row, geometry, base, plot_h / peak))
    parts.append("</g>")
    return "\n".join(parts)


def _bars(row: TimelineRow, geometry: _Geometry, base: float, scale: float) -> list[str]:
    """Stacked bars, tls at the bottom; a non-zero count is at least 1 unit tall so a
    single cloud attempt next to a DNS flood is still visible."""
    bars = []
    timeline = geometry.timeline
    for index in range(timeline.buckets):
        y = base
        for kind in _KINDS:
            count = row.counts[kind][index]
            if count:
                h = max(count * scale, 1.0)
                y -= h
                bars.append(_bar(row, geometry, kind, index, count, y, h))
    return bars


def _bar(row: TimelineRow, geometry: _Geometry, kind: str, index: int, count: int,
         y: float, h: float) -> str:
    timeline = geometry.timeline
    start = timeline.bucket_start(index)
    when = _bucket_text(start, start + timeline.step, geometry.tz_offset_s)
    tip = f"{_clip(_clean(row.label), _TITLE_MAX)} | {_SERIES_LABELS[kind]}: {count} | {when}"
    return (f'<rect class="bar {kind}" data-kind="{kind}" data-count="{count}" '
            f'data-start="{_num(start)}" x="{_num(geometry.x(start))}" y="{_num(y)}" '
            f'width="{_num(geometry.bar_w())}" height="{_num(h)}" fill="{COLOURS[kind]}">'
            f'<title>{_escape(tip)}</title></rect>')


def _axis(geometry: _Geometry, top: float, bottom: float) -> str:
    """Grid lines through every strip at each tick, and the tick labels under the last."""
    parts = ['<g class="axis">']
    for at, label in ticks(geometry.timeline.start, geometry.timeline.end,
                           geometry.tz_offset_s):
        x = _num(geometry.x(at))
        parts.append(f'<line class="grid" x1="{x}" y1="{_num(top)}" x2="{x}" '
                     f'y2="{_num(bottom + 4)}" stroke="#ddd"/>')
        parts.append(f'<text class="tick" x="{x}" y="{_num(bottom + 16)}" '
                     f'text-anchor="middle" data-at="{_num(at)}">{_text(label)}</text>')
    parts.append("</g>")
    return "\n".join(parts)


def ticks(start: float, end: float, tz_offset_s: float = 0.0) -> list[tuple[float, str]]:
    """Axis ticks in ``[start, end)`` at round local times: the finest of _TICK_STEPS
    that gives at most _MAX_TICKS; HH:MM up to a day, day labels ("Mon 14") beyond."""
    span = end - start
    spacing = next((s for s in _TICK_STEPS if span / s <= _MAX_TICKS), _TICK_STEPS[-1])
    days = span > 86400
    if days:
        spacing = max(spacing, 86400)
    first = math.ceil((start + tz_offset_s) / spacing) * spacing - tz_offset_s
    count = max(0, math.ceil((end - first) / spacing))
    moments = [first + i * spacing for i in range(count)]
    return [(at, _local_label(at, tz_offset_s, with_day=days, with_time=not days))
            for at in moments if at < end]


def _local_label(at: float, tz_offset_s: float, *, with_day: bool = False,
                 with_time: bool = True) -> str:
    """``Mon 14 09:30`` in the viewer's time, English and fixed (never the server's locale)."""
    moment = time.gmtime(at + tz_offset_s)
    parts = []
    if with_day:
        parts.append(f"{_DAYS[moment.tm_wday]} {moment.tm_mday}")
    if with_time:
        parts.append(f"{moment.tm_hour:02d}:{moment.tm_min:02d}")
    return " ".join(parts)


def _bucket_text(start: float, end: float, tz_offset_s: float) -> str:
    """A bucket's span for its tooltip: ``Mon 14 09:30-09:45``."""
    return (f"{_local_label(start, tz_offset_s, with_day=True)}-"
            f"{_local_label(end, tz_offset_s)}")


def _duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{_num(seconds)} s"
    if seconds < 3600:
        return f"{_num(seconds / 60)} min"
    if seconds <= 2 * 86400:
        return f"{_num(seconds / 3600)} h"
    return f"{_num(seconds / 86400)} d"


# --- text ------------------------------------------------------------------------------


def _num(value: float) -> str:
    """At most one decimal, none when whole: short, stable SVG attributes."""
    text = f"{value:.1f}"
    text = text[:-2] if text.endswith(".0") else text
    return "0" if text == "-0" else text


def _clean(text: str) -> str:
    return _UNSAFE.sub("", text)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _escape(text: str) -> str:
    """Safe in element text and in double- or single-quoted attributes."""
    return html.escape(text, quote=True)


def _text(text: str, limit: int = _TITLE_MAX) -> str:
    """Outside text ready for the SVG: control characters gone, clipped, escaped."""
    return _escape(_clip(_clean(text), limit))

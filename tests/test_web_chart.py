"""The dashboard's timeline: bucketing events per plug, its JSON, and the SVG drawing."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from hs100local.events import Event
from hs100local.web.chart import (
    RANGES,
    SERIES,
    Timeline,
    TimelineRow,
    build_timeline,
    parse_range,
    render_svg,
    ticks,
    window,
)

SVG = "{http://www.w3.org/2000/svg}"
END = 1_800_000_000.0  # a multiple of every step: the window ends one step later
PLUG_A = "aa:aa:aa:aa:aa:01"
PLUG_B = "bb:bb:bb:bb:bb:02"
DAY_LABEL = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d{1,2}$")
CLOCK_LABEL = re.compile(r"^\d\d:\d\d$")


def ev(at: float, kind: str = "tls", *, client: str | None = "192.0.2.10",
       plug: str | None = PLUG_A, count: int = 1) -> Event:
    return Event(id=0, at=at, kind=kind, client=client, details={}, count=count, plug=plug)


def row(timeline: Timeline, key: str) -> TimelineRow:
    return next(r for r in timeline.rows if r.key == key)


def bars(svg: str) -> list[ET.Element]:
    return [e for e in ET.fromstring(svg).iter(f"{SVG}rect")
            if e.get("class", "").startswith("bar ")]


def texts(svg: str, cls: str) -> list[str]:
    return [e.text or "" for e in ET.fromstring(svg).iter(f"{SVG}text") if e.get("class") == cls]


# --- ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key"), [(None, "24h"), ("", "24h"), ("1h", "1h"),
                                           (" 6H ", "6h"), ("7d", "7d")])
def test_parse_range_defaults_to_a_day_and_accepts_known_keys(text, key):
    assert parse_range(text) == key


@pytest.mark.parametrize("text", ["2h", "30d", "24", "all", "1h; drop"])
def test_parse_range_refuses_unknown_text_naming_the_valid_ones(text):
    with pytest.raises(ValueError, match=r"unknown range .*1h, 6h, 24h, 7d"):
        parse_range(text)


@pytest.mark.parametrize("key", list(RANGES))
def test_every_range_has_whole_buckets_and_at_most_about_100(key):
    span, step = RANGES[key]
    assert span % step == 0
    assert 24 <= span / step <= 100


def test_window_aligns_on_step_and_holds_end_in_its_last_bucket():
    start, stop, step = window(END + 1000, "24h")
    assert step == 900
    assert stop % step == 0 and start % step == 0
    assert stop - step <= END + 1000 < stop
    assert stop - start == 86400
    assert window(END, "1h")[1] == END + 60  # end on a boundary: it opens the last bucket


# --- bucketing ------------------------------------------------------------------------


def test_events_fall_in_the_bucket_of_their_time_boundaries_included_at_the_start():
    start, stop, step = window(END, "1h")
    events = [ev(start), ev(start + step - 0.001), ev(start + step), ev(stop - 0.001)]
    timeline = build_timeline(events, end=END, range_key="1h")
    counts = row(timeline, PLUG_A).counts["tls"]
    assert len(counts) == 60 == timeline.buckets
    assert counts[0] == 2 and counts[1] == 1 and counts[-1] == 1
    assert sum(counts) == 4


def test_outside_the_window_and_uncharted_kinds_are_ignored():
    start, stop, _ = window(END, "1h")
    events = [ev(start - 0.001), ev(stop), ev(stop + 3600), ev(start, "time"),
              ev(start, "firmware"), ev(start, "store", plug=None), ev(start + 1, "dns")]
    timeline = build_timeline(events, end=END, range_key="1h")
    assert [r.key for r in timeline.rows] == [PLUG_A]
    assert row(timeline, PLUG_A).totals() == {"tls": 0, "dns": 1, "ntp": 0}


def test_a_folded_event_adds_its_whole_count():
    start, _, _ = window(END, "6h")
    events = [ev(start + 10, "dns", count=40), ev(start + 20, "dns", count=2)]
    timeline = build_timeline(events, end=END, range_key="6h")
    assert row(timeline, PLUG_A).counts["dns"][0] == 42


def test_the_recorded_plug_wins_then_the_client_address_then_other():
    start, _, _ = window(END)
    events = [ev(start, plug=PLUG_A, client="192.0.2.20"),  # recorded plug wins
              ev(start, plug=None, client="192.0.2.20"),  # address of plug B today
              ev(start, "ntp", plug=None, client="192.0.2.99"),  # nobody we know
              ev(start, "dns", plug=None, client=None)]
    timeline = build_timeline(events, end=END, host_to_plug={"192.0.2.20": PLUG_B})
    assert [r.key for r in timeline.rows] == [PLUG_A, PLUG_B, "other"]
    assert row(timeline, PLUG_A).totals()["tls"] == 1
    assert row(timeline, PLUG_B).totals()["tls"] == 1
    assert row(timeline, "other").totals() == {"tls": 0, "dns": 1, "ntp": 1}


def test_other_is_dropped_on_request_and_absent_without_its_events():
    start, _, _ = window(END)
    events = [ev(start, plug=None, client="192.0.2.99"), ev(start)]
    assert [r.key for r in build_timeline(events, end=END, include_other=False).rows] \
        == [PLUG_A]
    assert [r.key for r in build_timeline([ev(start)], end=END).rows] == [PLUG_A]


def test_every_labelled_plug_gets_a_row_even_without_events():
    timeline = build_timeline([], end=END, range_key="7d", labels={PLUG_A: "Kettle"})
    assert [(r.key, r.label) for r in timeline.rows] == [(PLUG_A, "Kettle")]
    assert row(timeline, PLUG_A).counts == {kind: [0] * 84 for kind, _ in SERIES}


def test_rows_sort_by_label_ignoring_case_with_other_last_and_mac_as_fallback_label():
    start, _, _ = window(END)
    plug_c, plug_d = "cc:cc:cc:cc:cc:03", "dd:dd:dd:dd:dd:04"
    labels = {PLUG_A: "lamp", PLUG_B: "Heater", plug_c: "", "00:00:00:00:00:00": "Zoo"}
    events = [ev(start, plug=None, client="192.0.2.99"), ev(start, plug=plug_d)]
    timeline = build_timeline(events, end=END, labels=labels)
    assert [r.label for r in timeline.rows] == [
        plug_c, plug_d, "Heater", "lamp", "Zoo", "other clients"]


# --- JSON -----------------------------------------------------------------------------


def test_as_dict_is_json_with_utc_times_series_and_totals():
    start, _, _ = window(END)
    events = [ev(start, count=3), ev(start + 900, "ntp")]
    data = build_timeline(events, end=END, labels={PLUG_A: "Kettle"}).as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["start"] == "2027-01-14T08:15:00.000Z"
    assert data["end"] == "2027-01-15T08:15:00.000Z"
    assert data["step_s"] == 900
    assert data["series"] == [{"kind": "tls", "label": "cloud attempts"},
                              {"kind": "dns", "label": "DNS sinkhole hits"},
                              {"kind": "ntp", "label": "NTP served"}]
    (only,) = data["rows"]
    assert set(only) == {"plug", "label", "counts", "totals"}
    assert (only["plug"], only["label"]) == (PLUG_A, "Kettle")
    assert only["totals"] == {"tls": 3, "dns": 0, "ntp": 1}
    assert only["counts"]["ntp"][1] == 1 and len(only["counts"]["tls"]) == 96


# --- SVG ------------------------------------------------------------------------------


def sample() -> Timeline:
    start, _, _ = window(END)
    events = [ev(start, count=3), ev(start, "dns", count=5), ev(start + 950, "ntp"),
              ev(start + 86000, "tls", plug=PLUG_B, count=2),
              ev(start + 10, "dns", plug=None, client="192.0.2.99", count=7)]
    return build_timeline(events, end=END, labels={PLUG_A: "Kettle", PLUG_B: "Heater"})


def test_svg_is_standalone_xml_with_an_accessible_title():
    svg = render_svg(sample())
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    assert root.get("viewBox", "").startswith("0 0 760 ")
    assert "per plug, 24 h until" in root.get("aria-label", "")
    assert root.find(f"{SVG}title") is not None


def test_one_bar_per_non_zero_bucket_and_series_with_the_event_counts():
    timeline = sample()
    found = bars(render_svg(timeline))
    assert len(found) == 5
    for kind, _ in SERIES:
        of_kind = [b for b in found if b.get("data-kind") == kind]
        assert sum(int(b.get("data-count", "0")) for b in of_kind) == sum(
            r.totals()[kind] for r in timeline.rows)
        assert {b.get("class") for b in of_kind} == {f"bar {kind}"}
    assert {b.get("fill") for b in found} == {"#d9534f", "#f0ad4e", "#5bc0de"}


def test_bars_carry_their_bucket_start_and_stack_from_the_baseline():
    root = ET.fromstring(render_svg(sample()))
    kettle = next(g for g in root.iter(f"{SVG}g") if g.get("data-plug") == PLUG_A)
    baseline = float(kettle.find(f"{SVG}line").get("y1"))
    first = [b for b in kettle.iter(f"{SVG}rect") if b.get("data-start") == "1799914500"]
    tls, dns = sorted(first, key=lambda b: b.get("data-kind") != "tls")
    assert (tls.get("data-count"), dns.get("data-count")) == ("3", "5")
    assert float(tls.get("y")) + float(tls.get("height")) == pytest.approx(baseline, abs=0.11)
    assert float(dns.get("y")) + float(dns.get("height")) == pytest.approx(
        float(tls.get("y")), abs=0.11)
    assert baseline - float(dns.get("y")) == pytest.approx(36, abs=0.11)  # the peak: full


def test_a_bar_tooltip_names_the_plug_series_count_and_local_bucket():
    svg = render_svg(sample(), tz_offset_s=3600)
    tips = [b.find(f"{SVG}title").text for b in bars(svg)]
    assert "Kettle | cloud attempts: 3 | Thu 14 09:15-09:30" in tips
    assert "other clients | DNS sinkhole hits: 7 | Thu 14 09:15-09:30" in tips
    assert "Heater | cloud attempts: 2 | Fri 15 09:00-09:15" in tips


def test_each_strip_shows_its_own_peak():
    assert texts(render_svg(sample()), "row-max") == ["2", "8", "7"]


def test_a_small_count_beside_a_flood_stays_visible():
    start, _, _ = window(END)
    timeline = build_timeline([ev(start, "dns", count=100_000), ev(start + 900)], end=END)
    (tls,) = [b for b in bars(render_svg(timeline)) if b.get("data-kind") == "tls"]
    assert float(tls.get("height")) >= 1


def test_a_hostile_label_is_escaped_and_inert():
    hostile = "</svg><script>alert(1)</script>\x00\x1b[31m\u202e\"'&"
    start, _, _ = window(END)
    timeline = build_timeline([ev(start)], end=END, labels={PLUG_A: hostile})
    svg = render_svg(timeline)
    root = ET.fromstring(svg)  # \x00 or a stray "<" would make it unparsable
    assert not [e for e in root.iter() if "script" in e.tag]
    assert "&lt;script&gt;" in svg and "<script" not in svg
    assert "\x1b" not in svg and "\u202e" not in svg
    label = texts(svg, "row-label")[0]
    assert label == "</svg><script>alert(1)</script>[31m\"'&"
    assert bars(svg)[0].find(f"{SVG}title").text.startswith(label + " | ")


def test_a_hostile_key_is_escaped_in_attributes():
    key = 'x" onload="alert(1)'
    start, _, _ = window(END)
    svg = render_svg(build_timeline([ev(start, plug=key)], end=END))
    (strip,) = [e for e in ET.fromstring(svg).iter(f"{SVG}g") if e.get("class") == "row"]
    assert strip.get("data-plug") == key and strip.get("onload") is None


def test_a_long_label_is_clipped_in_the_strip():
    start, _, _ = window(END)
    svg = render_svg(build_timeline([ev(start)], end=END, labels={PLUG_A: "x" * 500}))
    assert texts(svg, "row-label")[0] == "x" * 59 + "\u2026"


@pytest.mark.parametrize("key", list(RANGES))
def test_every_range_gets_4_to_8_ticks_in_its_window(key):
    start, stop, _ = window(END, key)
    found = ticks(start, stop, 19800)  # +05:30: ticks fall on local, not UTC, round times
    assert 4 <= len(found) <= 8
    assert all(start <= at < stop for at, _ in found)
    pattern = DAY_LABEL if key == "7d" else CLOCK_LABEL
    assert all(pattern.match(label) for _, label in found)


def test_tick_labels_follow_the_viewers_offset():
    utc = texts(render_svg(sample()), "tick")
    plus_one = texts(render_svg(sample(), tz_offset_s=3600), "tick")
    assert utc == ["09:00", "12:00", "15:00", "18:00", "21:00", "00:00", "03:00", "06:00"]
    # the window is 08:15-08:15 UTC, 09:15-09:15 at UTC+1: its first 3-hour mark is noon
    assert plus_one == ["12:00", "15:00", "18:00", "21:00", "00:00", "03:00", "06:00", "09:00"]
    minus_5h30 = ticks(*window(END, "6h")[:2], -19800)
    assert [label for _, label in minus_5h30] == [
        "21:00", "22:00", "23:00", "00:00", "01:00", "02:00"]


def test_seven_days_are_labelled_by_local_day():
    start, stop, _ = window(END, "7d")
    found = ticks(start, stop, 3600)
    assert [label for _, label in found] == [
        "Sat 9", "Sun 10", "Mon 11", "Tue 12", "Wed 13", "Thu 14", "Fri 15"]
    assert all((at + 3600) % 86400 == 0 for at, _ in found)  # local midnight
    svg = render_svg(build_timeline([], end=END, range_key="7d", labels={PLUG_A: "K"}),
                     tz_offset_s=3600)
    assert texts(svg, "tick") == [label for _, label in found]


def test_rendering_is_deterministic_and_independent_of_event_order():
    start, _, _ = window(END)
    events = [ev(start + i * 700, kind, plug=plug, count=i + 1)
              for i, (kind, plug) in enumerate([("tls", PLUG_A), ("dns", PLUG_B),
                                                ("ntp", None), ("dns", PLUG_A)])]
    first = render_svg(build_timeline(events, end=END), tz_offset_s=-18000)
    again = render_svg(build_timeline(list(reversed(events)), end=END), tz_offset_s=-18000)
    assert first == again


def test_numbers_have_at_most_one_decimal():
    svg = render_svg(sample(), tz_offset_s=12345.678, width=777, row_height=61)
    numbers = re.findall(r'="(-?\d[\d.]*)"', svg)
    assert numbers and all(re.fullmatch(r"-?\d+(\.\d)?", n) for n in numbers)


def test_no_rows_draws_a_small_chart_saying_no_plugs_yet():
    svg = render_svg(build_timeline([], end=END))
    root = ET.fromstring(svg)
    assert texts(svg, "empty") == ["no plugs yet"]
    assert root.find(f"{SVG}title") is not None and not bars(svg)


def test_an_all_zero_row_says_nothing_recorded():
    timeline = build_timeline([], end=END, labels={PLUG_A: "Kettle", PLUG_B: "Heater"})
    svg = render_svg(timeline)
    assert texts(svg, "empty") == ["nothing recorded", "nothing recorded"]
    assert texts(svg, "row-label") == ["Heater", "Kettle"]
    assert not bars(svg) and not texts(svg, "row-max")

"""Rendering events: time windows, one-line summaries, JSON objects."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from hs100local.events import Event
from hs100local.eventview import (
    event_json,
    iso,
    line,
    parse_duration,
    parse_since,
    summary,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2d", 172800),
    ("1w", 604800), ("0.5h", 1800), (" 2H ", 7200),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1", "1x", "1h x", "-1h", "1h-", "h1"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_since_is_a_duration_back_or_an_iso_time():
    now = 1_800_000_000.0
    assert parse_since("1h", now) == now - 3600
    assert parse_since("2026-11-24T08:00:00Z", now) == datetime(
        2026, 11, 24, 8, tzinfo=timezone.utc).timestamp()
    assert parse_since("2026-11-24T09:00+01:00", now) == parse_since("2026-11-24T08:00Z", now)
    naive = parse_since("2026-11-24T08:00", now)  # this host's local time
    assert naive == datetime(2026, 11, 24, 8).astimezone().timestamp()
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", now)


def test_iso_is_utc_with_milliseconds():
    assert iso(0.25) == "1970-01-01T00:00:00.250Z"


def ev(kind: str, details: dict, **kw) -> Event:
    return Event(kw.pop("id", 1), kw.pop("at", 0.0), kind, kw.pop("client", "10.0.0.5"),
                 details, **kw)


@pytest.mark.parametrize(("kind", "details", "text"), [
    ("dns", {"name": "n-devs.tplinkcloud.com", "type": "A", "action": "redirect"},
     "n-devs.tplinkcloud.com A -> redirect"),
    ("ntp", {"version": 3, "mode": 3, "offset_ms": -1500, "stratum": 3},
     "NTPv3 mode 3, clock -1500 ms, served stratum 3"),
    ("ntp", {"version": 4, "mode": 3, "offset_ms": None, "stratum": 16},
     "NTPv4 mode 3, clock unknown, served stratum 16"),
    ("ntp", {"version": 4, "mode": 3, "offset_ms": -946684800000 - 5000, "stratum": 3},
     "NTPv4 mode 3, clock lost (read 1999-12-31), served stratum 3"),
    ("tls", {"local_port": 50443, "outcome": "unknown_ca", "sni": None, "version": "TLS 1.2",
             "ja3_hash": "abc", "ja4": "t12"},
     "port 50443 unknown_ca: sni - TLS 1.2 ja3 abc ja4 t12"),
    ("tls", {"local_port": 443, "outcome": "not_tls", "error": "GET"},
     "port 443 not_tls: sni - - ja3 - ja4 - (GET)"),
    ("time", {"outcome": "fixed", "reasons": ["offset", "zone"], "method": "set_timezone",
              "offset_before_s": 3600.2, "offset_after_s": 0.1},
     "fixed: offset, zone via set_timezone, offset 3600.2 s -> 0.1 s"),
    ("time", {"outcome": "refused", "reasons": ["lost"], "error": "-3 not supported"},
     "refused: lost (-3 not supported)"),
    ("firmware", {"kind": "protocol", "old": "xor", "new": "klap"}, "protocol: xor -> klap"),
    ("store", {"dropped": 12}, "dropped=12"),
])
def test_summaries(kind, details, text):
    # at 2000-01-01: the plug's clock in an NTP request is relative to when it came
    assert summary(ev(kind, details, at=2 * 946684800.0)) == text


def test_folded_events_show_their_count_and_lines_escape_control_characters():
    event = ev("dns", {"name": "evil\x1b[31m\nname", "type": "A", "action": "null"},
               count=7, plug="50:C7:BF:00:00:01")
    text = line(event, "Lamp")
    assert "\x1b" not in text and "\n" not in text
    assert "10.0.0.5 (Lamp)" in text and text.endswith("(x7)")
    assert "(50:C7:BF:00:00:01)" in line(event, None)  # attributed, plug since forgotten
    assert "10.0.0.5  " in line(ev("dns", {}), None)


def test_event_json_has_the_documented_fields():
    event = ev("tls", {"ja3": "771,4-5,,,", "ja3_hash": "h", "ja4": "t", "sni": None,
                       "outcome": "unknown_ca"}, at=60.0, count=2, last=90.5,
               plug="50:C7:BF:00:00:01")
    assert event_json(event, "Lamp") == {
        "id": 1, "time": "1970-01-01T00:01:00.000Z", "kind": "tls", "client": "10.0.0.5",
        "plug": "Lamp", "plug_mac": "50:C7:BF:00:00:01", "details": event.details,
        "count": 2, "last": "1970-01-01T00:01:30.500Z"}
    assert event_json(ev("dns", {}), None)["plug"] is None

"""How recorded events are shown: time windows, one-line summaries, JSON, colours.

Pure functions shared by ``hs100local events``, ``watch`` and ``report``, so that
the CLI only parses arguments and prints, and every rendering rule is testable
without a database or a terminal.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from hs100local.errors import one_line
from hs100local.events import Event
from hs100local.inventory import _from_ts, _iso
from hs100local.results import CLOCK_LOST_BEFORE

#: the kinds a user filters on (``store`` and ``discovery`` are shown but rarely wanted)
KINDS = ("dns", "ntp", "tls", "time", "firmware", "discovery", "store")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

#: ANSI colour per kind (a terminal only); tls is red: a cloud connection attempt
_COLOURS = {"dns": "cyan", "ntp": "blue", "tls": "red", "time": "green",
            "firmware": "magenta", "discovery": "yellow", "store": "bright_black"}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1h30m``, ``2d``, ``1w`` → seconds; ValueError otherwise."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 1h30m, 2d or 1w")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_since(text: str, now: float) -> float:
    """A moment as a Unix time: a duration back from ``now`` (``1h``) or an ISO 8601
    date/time (``2026-11-24``, ``2026-11-24T08:00``, with ``Z`` or an offset; without
    one it is this host's local time)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (1h, 30m, 2d) nor an ISO 8601 "
                         f"time (2026-11-24T08:00)") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive: local time, as a user means it
    return moment.timestamp()


def iso(at: float) -> str:
    """UTC ISO 8601 with milliseconds, as the JSON output writes times."""
    return _iso(_from_ts(at))


def clock_reading(offset_ms: Any, at: float) -> str:
    """What a plug's clock said in its NTP request at ``at``: ``clock +12 ms``, or
    ``clock lost (read 2000-01-01)`` when it had not been set since it started (after
    a power cut): a number of milliseconds like -849712503042 tells nobody that."""
    if not isinstance(offset_ms, int) or isinstance(offset_ms, bool):
        return "clock unknown"
    if clock_was_lost(offset_ms, at):
        read = datetime.fromtimestamp(max(at + offset_ms / 1000, 0), timezone.utc)
        return f"clock lost (read {read:%Y-%m-%d})"
    return f"clock {offset_ms:+d} ms"


def clock_was_lost(offset_ms: int, at: float) -> bool:
    """The plug's clock read a year before :data:`CLOCK_LOST_BEFORE` when it asked."""
    try:
        read = datetime.fromtimestamp(at + offset_ms / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return True
    return read.year < CLOCK_LOST_BEFORE


def local_time(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def event_json(event: Event, alias: str | None) -> dict[str, Any]:
    """The JSON object of ``events --json`` and ``watch --json``: ``plug`` is the plug's
    alias (null when the client is not a known plug), ``plug_mac`` its MAC."""
    data = event.as_dict()
    return {"id": data["id"], "time": data["time"], "kind": event.kind,
            "client": event.client, "plug": alias, "plug_mac": event.plug,
            "details": event.details, "count": event.count, "last": data["last"]}


def _get(details: dict[str, Any], key: str, default: str = "-") -> str:
    value = details.get(key)
    return default if value in (None, "", []) else str(value)


def summary(event: Event) -> str:
    """One line saying what happened, per kind; other kinds get key=value pairs."""
    d = event.details
    if event.kind == "dns":
        text = f"{_get(d, 'name')} {_get(d, 'type')} -> {_get(d, 'action')}"
    elif event.kind == "ntp":
        clock = clock_reading(d.get("offset_ms"), event.at)
        text = f"NTPv{_get(d, 'version')} mode {_get(d, 'mode')}, {clock}, " \
               f"served stratum {_get(d, 'stratum')}"
    elif event.kind == "tls":
        text = (f"port {_get(d, 'local_port')} {_get(d, 'outcome')}: sni {_get(d, 'sni')} "
                f"{_get(d, 'version')} ja3 {_get(d, 'ja3_hash')} ja4 {_get(d, 'ja4')}")
        if d.get("error"):
            text += f" ({d['error']})"
    elif event.kind == "time":
        text = f"{_get(d, 'outcome')}: {', '.join(d.get('reasons') or []) or 'checked'}"
        if d.get("outcome") == "fixed":
            text += (f" via {_get(d, 'method')}, offset {_get(d, 'offset_before_s')} s -> "
                     f"{_get(d, 'offset_after_s')} s")
        elif d.get("error"):
            text += f" ({d['error']})"
    elif event.kind in ("firmware", "discovery") and "kind" in d:
        text = f"{d['kind']}: {_get(d, 'old')} -> {_get(d, 'new')}"
    else:
        text = " ".join(f"{k}={v}" for k, v in d.items() if v not in (None, "", []))
    if event.count > 1:
        text += f" (x{event.count})"
    return text


def line(event: Event, alias: str | None) -> str:
    """The text line of ``events``/``watch``: local time, kind, client (plug), summary."""
    who = event.client or "-"
    if alias is not None or event.plug is not None:
        who += f" ({alias or event.plug})"
    return one_line(f"{local_time(event.at)}  {event.kind:<9} {who}  {summary(event)}")


def colour(kind: str) -> str | None:
    """The click colour name of a kind on a terminal."""
    return _COLOURS.get(kind)

"""Reading the rules a plug runs by itself (schedule, countdown), for people.

The firmware stores a schedule rule as numbers — ``wday`` (seven 0/1 flags,
index 0 = Sunday), ``stime_opt`` (0 clock time, 1 sunrise, 2 sunset), ``smin``
(minutes after midnight), ``soffset`` (minutes from sunrise/sunset), ``sact``
(1 on, 0 off, -1 nothing), ``repeat`` (0 = once, on ``year/month/day``) and the
same for an optional end (``etime_opt``, ``emin``, ``eact``). A countdown rule has
``delay`` seconds and ``act``. Nobody can read that off a dict dump, so this module
turns a rule into its meaning: which days, when, what, enabled or not. Pure
functions: no I/O, nothing assumed beyond the fields present (a field missing or of
the wrong type shows as "?", never an exception: rules come from the network).
"""

from __future__ import annotations

from typing import Any

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_ACTIONS = {1: "on", 0: "off"}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def days(rule: dict[str, Any]) -> str:
    """``daily``, ``weekdays``, ``weekends``, ``mon,wed,fri``, or ``once 2026-12-05``."""
    if not _int(rule.get("repeat")):
        y, m, d = (_int(rule.get(k)) for k in ("year", "month", "day"))
        if y and m and d:
            return f"once {y:04d}-{m:02d}-{d:02d}"
        return "once"
    flags = rule.get("wday")
    if not isinstance(flags, list) or len(flags) != 7:
        return "?"
    on = [bool(f) for f in flags]
    if all(on):
        return "daily"
    if on == [False, True, True, True, True, True, False]:
        return "weekdays"
    if on == [True, False, False, False, False, False, True]:
        return "weekends"
    # Monday first, as people write weeks; Sunday last.
    order = [1, 2, 3, 4, 5, 6, 0]
    picked = [DAY_NAMES[i] for i in order if on[i]]
    return ",".join(picked) or "never"


def _moment(option: Any, minutes: Any, offset: Any) -> str:
    opt = _int(option)
    if opt == 0:
        mins = _int(minutes)
        return "?" if mins is None else f"{mins // 60:02d}:{mins % 60:02d}"
    if opt in (1, 2):
        name = "sunrise" if opt == 1 else "sunset"
        shift = _int(offset) or 0
        return name if shift == 0 else f"{name}{shift:+d}"
    return "?"


def when(rule: dict[str, Any]) -> str:
    """``07:30``, ``sunset+15``; with an end: ``07:30-09:00``."""
    start = _moment(rule.get("stime_opt"), rule.get("smin"), rule.get("soffset"))
    end_opt = _int(rule.get("etime_opt"))
    if end_opt is None or end_opt < 0:
        return start
    return f"{start}-{_moment(end_opt, rule.get('emin'), rule.get('eoffset'))}"


def action(rule: dict[str, Any], key: str = "sact", end_key: str = "eact") -> str:
    """``on``, ``off``, ``on, then off`` (a rule with an end action)."""
    first = _ACTIONS.get(_int(rule.get(key)), "nothing")
    end = _ACTIONS.get(_int(rule.get(end_key)))
    return first if end is None else f"{first}, then {end}"


def duration(seconds: Any) -> str:
    """``1h30m``, ``90s`` → ``1m30s``, ``45s``."""
    total = _int(seconds)
    if total is None or total < 0:
        return "?"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return "".join(parts) or "0s"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def schedule_row(rule: dict[str, Any]) -> dict[str, str]:
    """The columns a person reads: id, enabled, days, time, action, name."""
    return {
        "id": _text(rule.get("id")) or "?",
        "enabled": "yes" if _int(rule.get("enable")) else "no",
        "days": days(rule),
        "time": when(rule),
        "action": action(rule),
        "name": _text(rule.get("name")),
    }


def countdown_row(rule: dict[str, Any]) -> dict[str, str]:
    """id, enabled, after (the delay), action, remaining (while running), name."""
    remain = _int(rule.get("remain"))
    return {
        "id": _text(rule.get("id")) or "?",
        "enabled": "yes" if _int(rule.get("enable")) else "no",
        "after": duration(rule.get("delay")),
        "action": _ACTIONS.get(_int(rule.get("act")), "nothing"),
        "remaining": "-" if remain is None else duration(remain),
        "name": _text(rule.get("name")),
    }

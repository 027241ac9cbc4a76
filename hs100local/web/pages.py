"""The dashboard's HTML, rendered on the server from plain values.

No template engine and no build step: small functions that return strings, with
every value from the outside (aliases and models set over the network, DNS
names, event details) passed through :func:`e`. The page works without
JavaScript (each switch is a form that POSTs and is redirected back); the small
script in ``static/dashboard.js`` only saves the reloads. Everything the page
loads comes from this server, so the Content-Security-Policy can forbid inline
scripts and styles altogether.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hs100local.errors import one_line

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

VERDICT_TEXT = {"isolated": "isolated", "leaking": "LEAKING", "unknown": "unknown"}


def e(value: Any) -> str:
    """Escaped text of anything, control characters made visible (one line)."""
    return html.escape(one_line(str(value)), quote=True)


@dataclass
class PlugView:
    """One row of the plug table: the inventory's record joined with the latest check
    (``row`` is None until the first check has answered)."""

    mac: str
    alias: str
    host: str
    model: str
    firmware: str
    protocol: str
    row: Any = None

    @property
    def controllable(self) -> bool:
        return self.protocol == "xor"


@dataclass
class PageData:
    plugs: list[PlugView]
    checked_at: str | None  # local time of the latest check
    checking: bool
    dns: str  # what the companion's DNS check said
    firewall: str
    warnings: list[dict[str, Any]] = field(default_factory=list)  # inventory changes
    events: list[tuple[str, str, str, str]] = field(default_factory=list)  # time, kind, who, what
    chart: str = ""  # inline SVG
    range_key: str = "24h"
    ranges: Sequence[str] = ()
    csrf: str = ""
    logout: bool = False


def _layout(title: str, body: str, *, csrf: str = "") -> str:
    meta = f'<meta name="csrf-token" content="{e(csrf)}">' if csrf else ""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)}</title>{meta}"
        "<link rel=\"icon\" href=\"/static/favicon.svg\" type=\"image/svg+xml\">"
        "<link rel=\"stylesheet\" href=\"/static/dashboard.css\">"
        "<script src=\"/static/dashboard.js\" defer></script></head>\n"
        f"<body>{body}</body></html>\n")


def _hidden(name: str, value: Any) -> str:
    return f'<input type="hidden" name="{e(name)}" value="{e(value)}">'


def switch(mac: str, on: bool | None, csrf: str, *, outlet: int | None = None,
           label: str = "", enabled: bool = True) -> str:
    """A button that switches the relay to the other state (a form without JS)."""
    state = "unknown" if on is None else "on" if on else "off"
    want = "0" if on else "1"
    text = {"on": "On", "off": "Off", "unknown": "?"}[state]
    fields = _hidden("csrf", csrf) + _hidden("on", want)
    if outlet is not None:
        fields += _hidden("outlet", outlet)
    what = f"{label} " if label else ""
    attrs = f' data-mac="{e(mac)}"' + (f' data-outlet="{outlet}"' if outlet is not None else "")
    pressed = "true" if on else "false"
    disabled = "" if enabled else " disabled"
    return (f'<form class="switch" method="post" action="/api/plugs/{e(mac)}/switch"{attrs}>'
            f'{fields}<button type="submit" class="switch {state}" aria-pressed="{pressed}" '
            f'title="switch {e(what)}{"off" if on else "on"}"{disabled}>{e(what)}{text}'
            "</button></form>")


def _state_cell(plug: PlugView, csrf: str) -> str:
    row = plug.row
    if not plug.controllable:
        return f'<span class="muted">no local control ({e(plug.protocol)})</span>'
    if row is None:
        return '<span class="muted">checking…</span>'
    if not row.local:
        return f'<span class="bad" title="{e(row.local_error or "")}">unreachable</span>'
    if row.outlets:
        return "".join(switch(plug.mac, o.get("on"), csrf, outlet=o["index"],
                              label=o.get("alias") or f"#{o['index']}") for o in row.outlets)
    return switch(plug.mac, row.relay_on, csrf)


def _clock_cell(row: Any) -> str:
    if row is None or row.clock_offset_s is None:
        return '<span class="muted">-</span>'
    offset = row.clock_offset_s
    css = "bad" if abs(offset) > 2.0 else "good"
    return f'<span class="{css}">{offset:+.1f} s</span>'


def _verdict_cell(row: Any) -> str:
    if row is None:
        return '<span class="muted">checking…</span>'
    notes = f'<div class="notes">{e("; ".join(row.notes))}</div>' if row.notes else ""
    shown = VERDICT_TEXT.get(row.verdict, row.verdict)
    return (f'<span class="verdict {e(row.verdict)}">{e(shown)}</span>'
            f'<div class="reason">{e(row.reason)}</div>{notes}')


def plug_rows(plugs: Iterable[PlugView], csrf: str) -> str:
    rows = []
    for p in plugs:
        rows.append(
            f'<tr data-mac="{e(p.mac)}"><td class="alias">{e(p.alias)}</td>'
            f"<td>{e(p.model)}<div class=\"muted\">{e(p.firmware)}</div></td>"
            f"<td>{e(p.host)}<div class=\"muted\">{e(p.mac)}</div></td>"
            f'<td class="state">{_state_cell(p, csrf)}</td><td>{e(p.protocol)}</td>'
            f'<td class="clock">{_clock_cell(p.row)}</td>'
            f'<td class="verdict-cell">{_verdict_cell(p.row)}</td></tr>')
    if not rows:
        rows.append('<tr><td colspan="7" class="muted">No plugs in the inventory yet: '
                    "discovery runs at start and every hour, or run "
                    "<code>hs100local discover</code>.</td></tr>")
    return "\n".join(rows)


def _summary(data: PageData) -> str:
    counts: dict[str, int] = {}
    for p in data.plugs:
        verdict = p.row.verdict if p.row is not None else "checking"
        counts[verdict] = counts.get(verdict, 0) + 1
    parts = ", ".join(f"{n} {e(k)}" for k, n in sorted(counts.items())) or "none"
    when = f"checked {e(data.checked_at)}" if data.checked_at else "first check running"
    return (f'<p class="summary" id="summary">{len(data.plugs)} plug'
            f'{"s" if len(data.plugs) != 1 else ""}: {parts} · {when} · DNS: {e(data.dns)}'
            f' · firewall: {e(data.firewall)}</p>')


def _warnings(changes: Sequence[dict[str, Any]]) -> str:
    if not changes:
        return ""
    items = []
    for c in changes:
        lost = c["kind"] == "protocol" and c.get("old") == "xor"
        css = "warning lost" if lost else "warning"
        items.append(f'<li class="{css}">{e(c["at"])}: {e(c["description"])}</li>')
    return ('<section id="warnings"><h2>Firmware changes</h2><ul>' + "".join(items)
            + "</ul></section>")


def _events(events: Sequence[tuple[str, str, str, str]]) -> str:
    if not events:
        return '<p class="muted">No events recorded yet.</p>'
    rows = "".join(f'<tr class="{e(kind)}"><td>{e(at)}</td><td>{e(kind)}</td>'
                   f"<td>{e(who)}</td><td>{e(what)}</td></tr>"
                   for at, kind, who, what in events)
    return ('<table class="events"><thead><tr><th>Time</th><th>Kind</th><th>Client</th>'
            f"<th>What</th></tr></thead><tbody>{rows}</tbody></table>")


def range_nav(current: str, ranges: Sequence[str]) -> str:
    links = []
    for r in ranges:
        mark = ' class="current" aria-current="true"' if r == current else ""
        links.append(f'<a href="/?range={e(r)}" data-range="{e(r)}"{mark}>{e(r)}</a>')
    return f'<nav class="ranges" aria-label="chart range">{"".join(links)}</nav>'


def dashboard(data: PageData) -> str:
    logout = (f'<form method="post" action="/logout" class="logout">{_hidden("csrf", data.csrf)}'
              '<button type="submit">Log out</button></form>' if data.logout else "")
    body = (
        f"<header><h1>hs100local</h1>{logout}{_summary(data)}"
        f'<form method="post" action="/api/check" class="check">{_hidden("csrf", data.csrf)}'
        '<button type="submit">Check now</button></form></header>\n<main>'
        f"{_warnings(data.warnings)}"
        '<section id="plugs"><h2>Plugs</h2><table class="plugs"><thead><tr><th>Alias</th>'
        "<th>Model</th><th>Address / MAC</th><th>State</th><th>Protocol</th><th>Clock</th>"
        f"<th>Isolation</th></tr></thead><tbody>\n{plug_rows(data.plugs, data.csrf)}"
        "</tbody></table></section>\n"
        f'<section id="timeline"><h2>Cloud attempts, sinkholed lookups and NTP</h2>'
        f'{range_nav(data.range_key, data.ranges)}<div id="chart">{data.chart}</div></section>\n'
        f'<section id="recent"><h2>Recent events</h2>{_events(data.events)}</section></main>')
    return _layout("hs100local", body, csrf=data.csrf)


def login(message: str = "") -> str:
    note = f'<p class="bad">{e(message)}</p>' if message else ""
    body = ('<main class="login"><h1>hs100local</h1>'
            f"{note}<form method=\"post\" action=\"/login\"><label>Token "
            '<input type="password" name="token" autocomplete="current-password" autofocus '
            'required></label> <button type="submit">Log in</button></form>'
            '<p class="muted">The token is <code>token</code> (or <code>token-file</code>) '
            "in the <code>[web]</code> table of the serve config.</p></main>")
    return _layout("hs100local: log in", body)

"""``/metrics`` in the Prometheus text exposition format (version 0.0.4).

Pure: the counters come from the running ``serve`` (every event it recorded since
start, per kind and plug: they only grow, unlike the store's rows, which are
folded and pruned) and the gauges from the dashboard's latest check of the
plugs. Label values come from the network (aliases), so they are escaped as the
format demands; a plug is labelled by MAC (stable) and alias (readable).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: event kind -> (metric, help)
COUNTERS = {
    "tls": ("hs100local_cloud_attempts_total",
            "Cloud connection attempts caught by the TLS listener since serve started."),
    "dns": ("hs100local_dns_sinkholed_total",
            "Queries for cloud names answered by the DNS sinkhole since serve started."),
    "ntp": ("hs100local_ntp_served_total", "NTP requests answered since serve started."),
}
VERDICTS = ("isolated", "leaking", "unknown")


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Family:
    def __init__(self, name: str, kind: str, text: str) -> None:
        self.lines = [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        self.name = name

    def add(self, value: float, labels: Iterable[tuple[str, str]] = ()) -> None:
        self.lines.append(f"{self.name}{_labels(labels)} {_number(value)}")


def render(tally: Mapping[tuple[str, str | None], int], aliases: Mapping[str, str],
           plugs: Iterable[Any] | None, *, checked_at: float | None,
           http: Any = None) -> str:
    """``tally``: events per (kind, plug MAC or None); ``aliases``: MAC -> alias;
    ``plugs``: the latest audit rows (:class:`hs100local.audit.PlugAudit`), None
    before the first check; ``http``: the web server's stats."""
    families: list[_Family] = []

    def who(mac: str | None) -> list[tuple[str, str]]:
        return [("plug", mac or ""), ("alias", aliases.get(mac or "", "") if mac else "")]

    for kind, (name, text) in COUNTERS.items():
        family = _Family(name, "counter", text)
        for (k, mac), n in sorted(tally.items(), key=lambda i: (i[0][0], i[0][1] or "")):
            if k == kind:
                family.add(n, who(mac))
        families.append(family)
    rows = list(plugs) if plugs is not None else []
    verdicts = _Family("hs100local_plugs", "gauge",
                       "Plugs by isolation verdict at the latest check.")
    for verdict in VERDICTS:
        verdicts.add(sum(1 for r in rows if r.verdict == verdict), [("verdict", verdict)])
    families.append(verdicts)
    per_plug = {
        "isolated": _Family("hs100local_plug_isolated", "gauge",
                            "1 when the plug's verdict is isolated."),
        "reachable": _Family("hs100local_plug_reachable", "gauge",
                             "1 when the plug answered locally at the latest check."),
        "relay": _Family("hs100local_plug_relay_on", "gauge",
                         "1 when the plug's relay is on (plugs with one relay)."),
        "clock": _Family("hs100local_plug_clock_offset_seconds", "gauge",
                         "The plug's clock minus this host's, at the latest check."),
    }
    for row in sorted(rows, key=lambda r: r.mac):
        labels = [("plug", row.mac), ("alias", row.alias or "")]
        per_plug["isolated"].add(row.verdict == "isolated", labels)
        per_plug["reachable"].add(bool(row.local), labels)
        if row.relay_on is not None:
            per_plug["relay"].add(row.relay_on, labels)
        if row.clock_offset_s is not None:
            per_plug["clock"].add(round(row.clock_offset_s, 3), labels)
    families.extend(per_plug.values())
    if checked_at is not None:
        check = _Family("hs100local_last_check_timestamp_seconds", "gauge",
                        "When the dashboard last checked the plugs (Unix time).")
        check.add(round(checked_at, 3))
        families.append(check)
    if http is not None:
        requests = _Family("hs100local_http_requests_total", "counter",
                           "Responses of the dashboard's HTTP server: below 400, 4xx, 5xx.")
        for status, n in (("ok", http.requests - http.errors_4xx - http.errors_5xx),
                          ("4xx", http.errors_4xx), ("5xx", http.errors_5xx)):
            requests.add(max(0, n), [("code", status)])
        families.append(requests)
    return "".join(line + "\n" for family in families for line in family.lines)

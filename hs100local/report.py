"""The isolation report: per plug, what it tried and what it got, with a verdict.

Built from plain values (events, the inventory's plugs and changes) by pure
functions, so every rule is tested without a database; ``hs100local report``
reads those and prints. An event belongs to a plug when it was attributed at
record time (its ``plug`` MAC), or, unattributed, when its client address is the
plug's address in the inventory. Events of other clients are summed per client:
a device not yet discovered, or something that is not a plug.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from hs100local.eventview import clock_reading, clock_was_lost, iso

#: a plug clock further off than this (ms) is called out in the verdict
CLOCK_TOLERANCE_MS = 2000
#: outcomes of a TLS connection where the plug itself refused our certificate
PINNED = ("unknown_ca", "bad_certificate", "certificate_unknown", "decrypt_error",
          "handshake_failure", "unsupported_certificate", "access_denied")


@dataclass
class CloudAttempts:
    """The plug's connections to the cloud listener (each one a TLS event)."""

    count: int = 0
    first: float | None = None
    last: float | None = None
    ports: list[int] = field(default_factory=list)
    ja3: dict[str, int] = field(default_factory=dict)  # ja3_hash -> connections
    ja4: list[str] = field(default_factory=list)
    sni: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def mean_interval(self) -> float | None:
        """Seconds between attempts on average (None below two attempts)."""
        if self.count < 2 or self.first is None or self.last is None:
            return None
        return (self.last - self.first) / (self.count - 1)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["first"] = None if self.first is None else iso(self.first)
        data["last"] = None if self.last is None else iso(self.last)
        data["mean_interval_s"] = (None if self.mean_interval is None
                                   else round(self.mean_interval, 1))
        return data


@dataclass
class PlugReport:
    mac: str | None
    alias: str | None
    host: str | None
    model: str | None = None
    firmware: str | None = None
    protocol: str | None = None
    cloud: CloudAttempts = field(default_factory=CloudAttempts)
    names: dict[str, int] = field(default_factory=dict)  # sinkholed name -> queries
    ntp_requests: int = 0
    clock_offset_ms: int | None = None  # the plug's clock in its latest NTP request
    clock_offset_max_ms: int | None = None  # the largest |offset| seen
    clock_at: float | None = None  # when that latest request came
    clock_max_at: float | None = None  # when the largest came
    time_syncs: dict[str, int] = field(default_factory=dict)  # outcome -> count
    firmware_changes: list[dict[str, Any]] = field(default_factory=list)
    verdict: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cloud"] = self.cloud.as_dict()
        return data


@dataclass
class OtherClient:
    """Events of an address that is no plug in the inventory, per kind."""

    client: str
    kinds: dict[str, int]


@dataclass
class Report:
    since: float
    until: float
    plugs: list[PlugReport]
    others: list[OtherClient]

    def as_dict(self) -> dict[str, Any]:
        return {"since": iso(self.since), "until": iso(self.until),
                "plugs": [p.as_dict() for p in self.plugs],
                "other_clients": [asdict(o) for o in self.others]}


def _add_event(report: PlugReport, event: Any) -> None:
    d, n = event.details, event.count
    last = event.last if event.last is not None else event.at
    if event.kind == "tls":
        cloud = report.cloud
        cloud.count += n
        cloud.first = event.at if cloud.first is None else min(cloud.first, event.at)
        cloud.last = last if cloud.last is None else max(cloud.last, last)
        port = d.get("local_port")
        if isinstance(port, int) and port not in cloud.ports:
            cloud.ports.append(port)
        if d.get("ja3_hash"):
            cloud.ja3[d["ja3_hash"]] = cloud.ja3.get(d["ja3_hash"], 0) + n
        for key, values in (("ja4", cloud.ja4), ("sni", cloud.sni)):
            if d.get(key) and d[key] not in values:
                values.append(d[key])
        outcome = str(d.get("outcome") or "unknown")
        cloud.outcomes[outcome] = cloud.outcomes.get(outcome, 0) + n
    elif event.kind == "dns" and d.get("name"):
        report.names[d["name"]] = report.names.get(d["name"], 0) + n
    elif event.kind == "ntp":
        report.ntp_requests += n
        offset = d.get("offset_ms")
        if isinstance(offset, int):
            report.clock_offset_ms = offset  # events come oldest first: the latest wins
            report.clock_at = event.at  # the details are those of the row's first
            if report.clock_offset_max_ms is None or abs(offset) > abs(
                    report.clock_offset_max_ms):
                report.clock_offset_max_ms, report.clock_max_at = offset, event.at
    elif event.kind == "time":
        outcome = str(d.get("outcome") or "unknown")
        report.time_syncs[outcome] = report.time_syncs.get(outcome, 0) + n
    elif event.kind == "firmware" and d.get("kind"):
        change = {"time": iso(event.at), "kind": d["kind"], "old": d.get("old"),
                  "new": d.get("new")}
        if change not in report.firmware_changes:
            report.firmware_changes.append(change)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}".replace(".0 ", " ")
    return f"{seconds:.0f} s"


def verdict(report: PlugReport) -> str:
    """One line: is the plug isolated, and what to look at if not."""
    cloud = report.cloud
    if report.protocol not in (None, "xor"):
        head = (f"lost local control: firmware speaks {report.protocol}, port 9999 is "
                f"closed; the tool cannot switch it")
    elif cloud.outcomes.get("completed"):
        head = ("cloud traffic reaches only us, but the plug completed a TLS handshake "
                "with our certificate: it does not pin the cloud CA")
    elif cloud.count:
        pinned = sum(cloud.outcomes.get(o, 0) for o in PINNED)
        every = (f", every {_duration(cloud.mean_interval)}" if cloud.mean_interval
                 else "")
        head = f"isolated: {cloud.count} cloud connection attempt" \
               f"{'s' if cloud.count != 1 else ''}{every}, all reached only us"
        if pinned == cloud.count:
            head += " and were refused by the plug's own CA pinning"
    elif report.names:
        head = "isolated: cloud names answered by our DNS; no connection to the cloud " \
               "listener seen (is it on ports 443 and 50443?)"
    elif report.ntp_requests:
        head = "isolated as far as seen: NTP only, no cloud name looked up"
    else:
        head = "no traffic seen: does this plug use our DNS server (DHCP)?"
    notes = []
    # An NTP request carries the plug's clock *before* our answer sets it.
    offset = report.clock_offset_ms
    if offset is not None and clock_was_lost(offset, report.clock_at or 0.0):
        notes.append("it had lost its clock (a power cut?) when it last asked for the time, "
                     "and was served it")
    elif offset is not None and abs(offset) > CLOCK_TOLERANCE_MS:
        notes.append(f"its clock was off by {offset / 1000:+.1f} s when it last asked for "
                     f"the time, and was served it")
    if report.time_syncs.get("refused"):
        notes.append("it refuses clock setting")
    if report.firmware_changes:
        notes.append(f"{len(report.firmware_changes)} firmware change"
                     f"{'s' if len(report.firmware_changes) != 1 else ''}")
    return head + ("; " + "; ".join(notes) if notes else "")


def build_report(events: Iterable[Any], plugs: Iterable[Any],
                 changes: Iterable[Any] = (), *, since: float, until: float) -> Report:
    """``plugs`` are inventory records (mac, host, alias, model, sw_ver, hw_ver,
    protocol); ``changes`` the inventory's changes in the window (firmware and
    protocol ones are reported); ``events`` oldest first."""
    from hs100local.attribution import unique_hosts

    reports: dict[str, PlugReport] = {}
    plugs = list(plugs)
    for plug in plugs:
        reports[plug.mac] = PlugReport(
            plug.mac, plug.alias, plug.host, plug.model,
            f"{plug.sw_ver} (hw {plug.hw_ver})" if plug.hw_ver else plug.sw_ver,
            plug.protocol)
    by_host = unique_hosts(plugs)  # an address plugs share names none of them
    others: dict[str, Counter[str]] = {}
    for event in events:
        mac = event.plug or (by_host.get(event.client) if event.client else None)
        if mac is None:
            if event.client is not None and event.kind not in ("store",):
                others.setdefault(event.client, Counter())[event.kind] += event.count
            continue
        if mac not in reports:  # attributed to a plug since forgotten
            alias = event.details.get("alias") if event.kind == "time" else None
            reports[mac] = PlugReport(mac, alias, event.client)
        _add_event(reports[mac], event)
    for change in changes:
        report = reports.get(change.mac)
        if report is None or change.kind not in ("firmware", "protocol"):
            continue
        entry = {"time": iso(change.at.timestamp()), "kind": change.kind,
                 "old": change.old, "new": change.new}
        if not any(c["kind"] == entry["kind"] and c["new"] == entry["new"]
                   for c in report.firmware_changes):
            report.firmware_changes.append(entry)
    for report in reports.values():
        report.cloud.ports.sort()
        report.firmware_changes.sort(key=lambda c: c["time"])
        report.verdict = verdict(report)
    ordered = sorted(reports.values(), key=lambda r: ((r.alias or "").lower(), r.mac or ""))
    return Report(since, until, ordered,
                  [OtherClient(c, dict(sorted(k.items()))) for c, k in sorted(others.items())])


def render(report: Report) -> list[str]:
    """The human text of a report (the CLI escapes control characters)."""
    from hs100local.eventview import local_time

    lines = [f"Report {local_time(report.since)} .. {local_time(report.until)}"]
    if not report.plugs:
        lines.append("No plugs in the inventory and no events attributed to one: "
                     "run 'hs100local discover'.")
    for p in report.plugs:
        lines.append("")
        lines.append(f"{p.alias or '(unknown alias)'}  {p.mac or '-'}  {p.host or '-'}  "
                     f"{p.model or ''} {p.firmware or ''}".rstrip())
        lines.append(f"  verdict: {p.verdict}")
        c = p.cloud
        if c.count:
            every = f", mean interval {_duration(c.mean_interval)}" if c.mean_interval else ""
            lines.append(f"  cloud attempts: {c.count} ({local_time(c.first or 0)} .. "
                         f"{local_time(c.last or 0)}{every}), ports "
                         f"{', '.join(map(str, c.ports)) or '-'}")
            lines.append("  outcomes: " + ", ".join(f"{k} {v}" for k, v in
                                                    sorted(c.outcomes.items())))
            lines.append("  JA3: " + ", ".join(f"{h} ({n})" for h, n in sorted(c.ja3.items())))
        else:
            lines.append("  cloud attempts: none")
        if p.names:
            lines.append("  names looked up: " + ", ".join(
                f"{name} ({n})" for name, n in sorted(p.names.items(), key=lambda x: -x[1])))
        if p.ntp_requests:
            clock = ("" if p.clock_offset_ms is None
                     else f", its {clock_reading(p.clock_offset_ms, p.clock_at or 0.0)} "
                          f"(furthest off: "
                          f"{clock_reading(p.clock_offset_max_ms, p.clock_max_at or 0.0)})")
            lines.append(f"  NTP served: {p.ntp_requests}{clock}")
        if p.time_syncs:
            lines.append("  time keeper: " + ", ".join(
                f"{k} {v}" for k, v in sorted(p.time_syncs.items())))
        for change in p.firmware_changes:
            lines.append(f"  {change['kind']} change {change['time']}: "
                         f"{change['old']} -> {change['new']}")
    if report.others:
        lines.append("")
        lines.append("Other clients (not plugs in the inventory):")
        for other in report.others:
            lines.append(f"  {other.client}: " + ", ".join(
                f"{k} {v}" for k, v in other.kinds.items()))
    return lines

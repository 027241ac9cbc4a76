"""The isolation audit: per plug, is it cut off from the cloud, and how do we know.

Pure functions over plain values (what the plug said, what the companion's DNS
answered, what the event store recorded, which firewall rules are in place), so
every verdict rule is tested without a network; :mod:`hs100local.audit_run`
gathers those values and ``hs100local audit`` prints them.

The verdict is one of three words, always with its reason:

* ``leaking`` – the plug says it holds a live cloud connection (``cnCloud``
  ``cld_connection``), or nothing stops it: no firewall rules of ours cover it and
  the companion's DNS hands out a real address for a cloud name;
* ``isolated`` – it is connected to nothing, and either our firewall lets it
  reach only the companion, or (DNS only) its cloud lookups demonstrably come to
  us (events recorded) and get the sinkhole;
* ``unknown`` – we cannot tell: no firewall and no traffic of it seen, the
  companion's DNS did not answer, or the plug did not answer and no rules cover it.

Only ``isolated`` makes ``audit`` exit 0, so a cron job or monitoring check fails
on anything it cannot prove.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hs100local.dns.client import Resolution

ISOLATED, LEAKING, UNKNOWN = "isolated", "leaking", "unknown"
#: the names the audit asks the companion's DNS: the cloud (old and new firmware),
#: the firmware download server (plain HTTP), and the app API (plug-facts)
CLOUD_NAMES = ("n-devs.tplinkcloud.com", "devs.tplinkcloud.com", "n-deventry.tplinkcloud.com",
               "download.tplinkcloud.com", "use1-api.tplinkra.com")
#: answers that keep a client away from the internet
NULL_ADDRESSES = frozenset({"0.0.0.0"})
#: a clock further off than this (seconds) is called out
CLOCK_TOLERANCE_S = 2.0
#: TLS outcomes where the plug refused our certificate (its CA pinning)
PINNED = frozenset({"unknown_ca", "bad_certificate", "certificate_unknown", "decrypt_error",
                    "handshake_failure", "unsupported_certificate", "access_denied"})


@dataclass(frozen=True)
class DnsCheck:
    """How the companion's DNS answers the cloud names.

    ``status``: ``sinkholed`` (every name NXDOMAIN, empty, or an address of the
    companion's own or 0.0.0.0), ``leaks`` (some name resolves elsewhere),
    ``no_answer`` (timeout, refused, SERVFAIL…) or ``off`` (no DNS configured).
    """

    server: str | None
    status: str
    detail: str
    answers: tuple[Resolution, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "status": self.status, "detail": self.detail,
                "answers": [a.as_dict() for a in self.answers]}


def judge_dns(server: str | None, answers: Sequence[Resolution | str],
              own: Iterable[str]) -> DnsCheck:
    """``answers``: a resolution per name, or an error text where the lookup failed;
    ``own``: the companion's addresses (where the sinkhole may point)."""
    if server is None:
        return DnsCheck(None, "off", "no DNS responder in the config")
    mine = set(own) | NULL_ADDRESSES
    resolved = tuple(a for a in answers if isinstance(a, Resolution))
    for answer in resolved:  # one leaking name is a leak, whatever the others did
        foreign = [a for a in answer.addresses if a not in mine]
        if foreign:
            return DnsCheck(server, "leaks",
                            f"{answer.name} resolves to {', '.join(foreign)}", resolved)
    for answer in answers:
        if isinstance(answer, str):
            return DnsCheck(server, "no_answer", answer, resolved)
        if answer.rcode not in ("NOERROR", "NXDOMAIN"):
            hint = " (is this host in the 'allow' networks?)" if answer.rcode == "REFUSED" \
                else ""
            return DnsCheck(server, "no_answer", f"{answer.name}: {answer.rcode}{hint}",
                            resolved)
    shown = ", ".join(f"{a.name} -> {'/'.join(a.addresses) or a.rcode}" for a in resolved[:2])
    return DnsCheck(server, "sinkholed", f"cloud names sinkholed ({shown}, …)", resolved)


@dataclass
class PlugAudit:
    """One plug's row. ``firewall``: True/False, or None when the rules cannot be read
    (no nft/iptables, not root). ``cloud`` is ``cnCloud.get_info`` as
    :meth:`hs100local.results.CloudInfo.as_dict`, None when the plug did not answer."""

    mac: str
    alias: str
    host: str
    protocol: str = "xor"
    local: bool = False
    local_error: str | None = None
    cloud: dict[str, Any] | None = None
    attempts: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    lookups: int = 0  # DNS queries of it recorded
    clock_offset_s: float | None = None
    #: the relay as the plug reported it (None: a strip, or no answer)
    relay_on: bool | None = None
    #: a strip's outlets: {"index", "id", "alias", "on"}
    outlets: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    firewall: bool | None = None
    verdict: str = UNKNOWN
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.clock_offset_s is not None:
            data["clock_offset_s"] = round(self.clock_offset_s, 1)
        return data


def _attempts_text(row: PlugAudit) -> str:
    if not row.attempts:
        return "no cloud attempt recorded"
    pinned = sum(n for outcome, n in row.outcomes.items() if outcome in PINNED)
    text = f"{row.attempts} cloud attempt{'s' if row.attempts != 1 else ''} reached only us"
    if pinned == row.attempts:
        text += " and were refused by its CA pinning"
    return text


def judge(row: PlugAudit, dns: DnsCheck) -> tuple[str, str]:
    """(verdict, reason) for one plug; the rules are in the module docstring."""
    cloud = row.cloud or {}
    if cloud.get("connected"):
        return LEAKING, f"it reports a live cloud connection (server {cloud.get('server')})"
    if row.firewall:
        return ISOLATED, f"the firewall lets it reach only the companion; {_attempts_text(row)}"
    no_rules = "no firewall rules" if row.firewall is False else "firewall rules unreadable"
    if dns.status == "leaks":
        return LEAKING, f"{no_rules}, and {dns.detail} through the companion"
    if dns.status == "sinkholed" and (row.attempts or row.lookups):
        return ISOLATED, (f"DNS only ({no_rules}): its lookups come to us and get the "
                          f"sinkhole; {_attempts_text(row)}")
    if not row.local:
        return UNKNOWN, f"no local answer ({row.local_error}) and {no_rules}"
    if dns.status == "no_answer":
        return UNKNOWN, f"{no_rules}, and the companion's DNS did not answer: {dns.detail}"
    if dns.status == "off":
        return UNKNOWN, f"{no_rules}, and no DNS responder configured"
    return UNKNOWN, (f"{no_rules}, and nothing of it seen at the companion: does it use "
                     f"the companion's DNS (DHCP)?")


def notes(row: PlugAudit) -> list[str]:
    """Things worth fixing that do not change the verdict."""
    found = []
    cloud = row.cloud or {}
    if cloud.get("bound"):
        found.append(f"bound to cloud account {cloud.get('username') or '?'}")
    if row.clock_offset_s is not None and abs(row.clock_offset_s) > CLOCK_TOLERANCE_S:
        found.append(f"clock off by {row.clock_offset_s:+.1f} s")
    if row.outcomes.get("completed"):
        found.append("it completed a TLS handshake with our listener: it does not pin the "
                     "cloud CA")
    if row.protocol not in ("xor", ""):
        found.append(f"firmware speaks {row.protocol}: no local control over port 9999")
    return found


def finish(row: PlugAudit, dns: DnsCheck) -> PlugAudit:
    row.verdict, row.reason = judge(row, dns)
    row.notes = notes(row)
    return row


@dataclass
class Audit:
    dns: DnsCheck
    firewall: str  # what is installed, in words
    plugs: list[PlugAudit]
    fixes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def isolated(self) -> bool:
        return bool(self.plugs) and all(p.verdict == ISOLATED for p in self.plugs)

    def as_dict(self) -> dict[str, Any]:
        return {"isolated": self.isolated, "dns": self.dns.as_dict(),
                "firewall": self.firewall, "plugs": [p.as_dict() for p in self.plugs],
                "fixes": self.fixes}


def _cell_cloud(row: PlugAudit) -> str:
    if row.cloud is None:
        return "-"
    state = "CONNECTED" if row.cloud.get("connected") else "bound" if row.cloud.get("bound") \
        else "unbound"
    return f"{state} {row.cloud.get('server') or '-'}"


def _cell_attempts(row: PlugAudit) -> str:
    if not row.attempts:
        return "0"
    top = ", ".join(f"{k} {v}" for k, v in sorted(row.outcomes.items(), key=lambda i: -i[1]))
    return f"{row.attempts} ({top})"


def render(audit: Audit) -> list[str]:
    """A table of the plugs, then each plug's verdict and reason (the CLI escapes
    control characters)."""
    lines = [f"Companion DNS {audit.dns.server or '-'}: {audit.dns.detail}",
             f"Firewall: {audit.firewall}"]
    for fix in audit.fixes:
        lines.append(f"Fixed: {fix['plug']}: {fix['action']}: {fix['result']}")
    if not audit.plugs:
        lines.append("No plugs to audit: run 'hs100local discover'.")
        return lines
    header = ("PLUG", "ADDRESS", "LOCAL", "PROTO", "CLOUD", "ATTEMPTS", "CLOCK", "FIREWALL",
              "VERDICT")
    rows = [header] + [(
        p.alias, p.host, "ok" if p.local else "no", p.protocol, _cell_cloud(p),
        _cell_attempts(p),
        "-" if p.clock_offset_s is None else f"{p.clock_offset_s:+.1f} s",
        "?" if p.firewall is None else "yes" if p.firewall else "no", p.verdict,
    ) for p in audit.plugs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines.append("")
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows)
    lines.append("")
    for p in audit.plugs:
        extra = f" ({'; '.join(p.notes)})" if p.notes else ""
        lines.append(f"{p.alias}: {p.verdict}: {p.reason}{extra}")
    return lines

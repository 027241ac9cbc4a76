"""Gather what the audit judges, and ``--fix`` what can be fixed.

For each plug: ask it (sysinfo, clock and zone in one round trip, then
``cnCloud.get_info``), read what the event store recorded of it in the window,
and see whether our firewall rules cover its MAC or address. Once for all: ask
the companion's DNS for the cloud names. Plugs are asked concurrently, each with
its own timeout, so one dead plug costs one timeout, not one per plug.

``--fix`` does, per plug, only what is needed: ``cnCloud.unbind`` when bound,
``set_server_url`` to the companion's cloud listener when the server is another
one, the time keeper's clock check (which sets a clock that is off, lost or in
the wrong zone); then applies the firewall for *every* plug in the inventory
(the table is replaced as a whole, so applying it for a subset would drop the
others' rules); reboots a plug that still holds a live cloud connection (the
rules end it only at its next packet, a keepalive minutes away) and waits for it
to come back; and audits again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hs100local.audit import CLOUD_NAMES, Audit, DnsCheck, PlugAudit, finish, judge_dns
from hs100local.config import ServeConfig, zone_index
from hs100local.errors import DeviceError, Hs100Error, one_line


@dataclass(frozen=True)
class FirewallView:
    """What of ours is installed, in words, and whether it covers a plug
    (None: the ruleset could not be read, so nobody can tell)."""

    description: str
    macs: frozenset[str] | None
    addresses: frozenset[str] | None

    def covers(self, mac: str, host: str) -> bool | None:
        if self.macs is None or self.addresses is None:
            return None
        return mac.upper() in self.macs or host in self.addresses


def read_firewall() -> FirewallView:
    """The live rules of ours (nftables table, else iptables chains)."""
    from hs100local.firewall import installed

    found = installed()
    if found.rules is None:
        return FirewallView(found.reason, None, None) if found.unreadable \
            else FirewallView(found.reason, frozenset(), frozenset())
    rules = found.rules
    return FirewallView(
        f"{rules.backend}: {rules.where} covering {len(rules.macs)} MAC(s), "
        f"{len(rules.ipv4)} address(es)",
        frozenset(m.upper() for m in rules.macs), frozenset(rules.ipv4))


def companion_addresses(config: ServeConfig) -> set[str]:
    """Every address the sinkhole may answer with: the configured listen addresses and
    this host's own (the responder answers with the address a query came in on)."""
    from hs100local.interfaces import ipv4_interfaces

    own = {host for host, _port in (*config.dns, *config.ntp, *config.cloud)}
    own.update(i.address for i in ipv4_interfaces(include_loopback=True))
    return own


def _lan_address(addresses: Sequence[tuple[str, int]]) -> str | None:
    for host, _port in addresses:
        ip = ipaddress.IPv4Address(host)
        if not (ip.is_loopback or ip.is_unspecified):
            return host
    return None


async def check_dns(config: ServeConfig, timeout: float) -> DnsCheck:
    from hs100local.dns.client import lookup_a

    if not config.dns:
        return judge_dns(None, [], ())
    host, port = config.dns[0]
    if ipaddress.IPv4Address(host).is_unspecified:
        host = "127.0.0.1"  # listening on every address: ask it on loopback

    async def one(name: str) -> Any:
        try:
            return await lookup_a((host, port), name, timeout=timeout)
        except OSError as exc:  # LookupTimeout included
            return f"{name}: {one_line(str(exc) or type(exc).__name__)}"

    answers = await asyncio.gather(*(one(name) for name in CLOUD_NAMES))
    return judge_dns(f"{host}:{port}", answers, companion_addresses(config))


async def ask_plug(row: PlugAudit, port: int, timeout: float) -> None:
    """Fill ``local``, ``cloud`` and ``clock_offset_s`` from the plug itself."""
    from hs100local import ops
    from hs100local.device import Plug, host_now
    from hs100local.timezones import host_index

    if row.protocol != "xor":
        row.local_error = f"firmware speaks {row.protocol}"
        return
    try:
        async with Plug(row.host, port, timeout=timeout, retries=1) as plug:
            info, clock = await plug.run(ops.time_status())
            if info.mac and info.mac.upper() != row.mac.upper():
                row.local_error = f"another device ({info.mac}) answers at {row.host}"
                return
            row.local = True
            row.model, row.relay_on = info.model, info.relay_on
            row.outlets = [{"index": o.index, "id": o.id, "alias": o.alias, "on": o.is_on}
                           for o in info.children]
            zone = clock.tz_index if clock.tz_index is not None and 0 <= clock.tz_index <= 109 \
                else host_index()
            try:
                row.clock_offset_s = ops.plug_offset(clock, host_now(zone))
            except Hs100Error:
                row.clock_offset_s = None  # an impossible date: reported as no clock
            row.cloud = (await plug.cloud_info()).as_dict()
    except Hs100Error as exc:
        row.local_error = one_line(str(exc))


def recorded(db: Path, records: Sequence[Any], since: float, now: float) -> dict[str, Any]:
    """Per MAC, the report's view of the window (cloud attempts, names looked up)."""
    import os

    from hs100local.events import EventReader
    from hs100local.report import build_report

    if not os.path.exists(db):
        return {}
    with EventReader(db) as reader:
        found = reader.events(since=since)
    return {p.mac: p for p in build_report(found, records, since=since, until=now).plugs}


async def run_audit(config: ServeConfig, records: Sequence[Any], *, db: Path, since: float,
                    timeout: float = 3.0,
                    firewall: Callable[[], FirewallView] | None = None) -> Audit:
    """Audit ``records``; ``firewall`` reads the installed rules (default
    :func:`read_firewall`, looked up at call time so it can be replaced)."""
    now = time.time()
    rows = [PlugAudit(r.mac, r.alias, r.host, r.protocol or "xor") for r in records]
    ports = {r.mac: r.port for r in records}
    dns, *_ = await asyncio.gather(check_dns(config, timeout),
                                   *(ask_plug(row, ports[row.mac], timeout) for row in rows))
    view = await asyncio.to_thread(firewall or read_firewall)
    seen = await asyncio.to_thread(recorded, db, records, since, now)
    for row in rows:
        report = seen.get(row.mac)
        if report is not None:
            row.attempts = report.cloud.count
            row.outcomes = dict(report.cloud.outcomes)
            row.lookups = sum(report.names.values())
        row.firewall = view.covers(row.mac, row.host)
        finish(row, dns)
    return Audit(dns, view.description, rows)


class _Selected:
    """The time keeper's view of the inventory: only the audited plugs."""

    def __init__(self, records: Sequence[Any]) -> None:
        self.records = list(records)

    def plugs(self) -> list[Any]:
        return self.records


async def _fix_cloud(row: PlugAudit, port: int, server: str | None,
                     timeout: float) -> list[dict[str, Any]]:
    from hs100local.device import Plug

    done: list[dict[str, Any]] = []
    cloud = row.cloud or {}

    def note(action: str, result: str) -> None:
        done.append({"plug": row.alias, "mac": row.mac, "action": action, "result": result})

    async with Plug(row.host, port, timeout=timeout, retries=1) as plug:
        if cloud.get("bound"):
            try:
                await plug.cloud_unbind()
                note("unbind", "done")
            except DeviceError as exc:
                note("unbind", f"refused: {one_line(str(exc))}")
        if server is not None and cloud.get("server") != server:
            try:
                await plug.cloud_set_server(server)
                note("set_server_url", f"now {server}")
            except DeviceError as exc:
                note("set_server_url", f"refused: {one_line(str(exc))}")
    return done


async def fix(config: ServeConfig, audit: Audit, records: Sequence[Any],
              everyone: Sequence[Any], *, timeout: float,
              apply_firewall: Callable[[Sequence[Any]], str],
              events: Any = None) -> list[dict[str, Any]]:
    """Fix what the audit found; ``everyone`` is the whole inventory (for the firewall).
    Returns what was done, one dict per action. ``events``: where the clock fixes are
    recorded (as the time keeper's ``time`` events, by the plug's MAC)."""
    from hs100local.timekeeper import TimeKeeper

    server = _lan_address(config.cloud)
    ports = {r.mac: r.port for r in records}
    done: list[dict[str, Any]] = []
    if server is None:
        done.append({"plug": "-", "mac": None, "action": "set_server_url",
                     "result": "skipped: the config's cloud listener has no LAN address"})
    for row in audit.plugs:
        if not row.local:
            continue
        try:
            done.extend(await _fix_cloud(row, ports[row.mac], server, timeout))
        except Hs100Error as exc:
            done.append({"plug": row.alias, "mac": row.mac, "action": "cloud",
                         "result": f"failed: {one_line(str(exc))}"})
    keeper = TimeKeeper(_Selected([r for r in records if r.protocol in ("xor", None, "")]),  # type: ignore[arg-type]
                        threshold=config.time_threshold, zones=dict(config.zones),
                        default_zone=zone_index(config), timeout=timeout, events=events)
    for check in await keeper.run_once():
        if check.status != "ok":
            result = check.status + (f": {check.error}" if check.error else "")
            if check.offset_before_s is not None:
                result += f" (was {check.offset_before_s:+.1f} s)"
            done.append({"plug": check.alias, "mac": check.mac, "action": "time",
                         "result": result})
    if any(row.firewall is not True for row in audit.plugs):
        try:
            result = await asyncio.to_thread(apply_firewall, everyone)
        except Hs100Error as exc:
            result = f"failed: {one_line(str(exc))}"
        done.append({"plug": "all", "mac": None, "action": "firewall", "result": result})
    live = [row for row in audit.plugs if row.local and (row.cloud or {}).get("connected")]
    if live:
        done.extend(await asyncio.gather(*(_restart(row, ports[row.mac], timeout)
                                           for row in live)))
    return done


#: how long a rebooting plug may take to answer again (real ones take 10-30 s)
REBOOT_WAIT = 90.0


async def _answers(host: str, port: int, timeout: float) -> bool:
    from hs100local.device import Plug

    try:
        async with Plug(host, port, timeout=timeout, retries=0) as plug:
            await plug.sysinfo()
        return True
    except Hs100Error:
        return False


async def _restart(row: PlugAudit, port: int, timeout: float) -> dict[str, Any]:
    """Reboot a plug that holds a cloud connection: a connection opened before the
    firewall ends only at the plug's next packet (a keepalive, minutes away); after a
    reboot the plug starts afresh into the new rules. Waits until it answers again."""
    from hs100local.device import Plug

    def note(result: str) -> dict[str, Any]:
        return {"plug": row.alias, "mac": row.mac, "action": "reboot", "result": result}

    try:
        async with Plug(row.host, port, timeout=timeout, retries=1) as plug:
            await plug.reboot(1)
    except Hs100Error as exc:
        return note(f"failed: {one_line(str(exc))}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REBOOT_WAIT
    # The plug answers the reboot, then goes away: wait for that, then for its return
    # (a plug gives no other sign; polling once a second is the only way to know).
    for want in (False, True):
        while await _answers(row.host, port, 1.0) != want:
            if loop.time() > deadline:
                return note(f"sent, but it did not {'come back' if want else 'go down'} "
                            f"within {REBOOT_WAIT:.0f} s")
            await asyncio.sleep(0.5)
    return note("done: its cloud connection is gone, it is back")

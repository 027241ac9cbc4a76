"""Turn what the user typed after ``-H`` into a connection to the right plug.

``-H`` takes an address (``192.168.1.50[:9999]``), a host name, or a plug from
the inventory by alias, outlet alias or MAC. DHCP hands out addresses anew, so an
inventory address is a hint: before acting on it the plug's MAC is checked (one
``get_sysinfo``; its reply is reused when the command starts with one), and if
another device or nobody answers there, the plug is found again by broadcast and
the inventory updated. Switching the wrong plug off is worse than a few ms.

Blocking on purpose: the one-shot CLI path avoids asyncio unless it has to search.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hs100local.errors import Hs100Error, ProtocolError, TargetError, UnreachableError
from hs100local.hostport import DEFAULT_PORT, DEFAULT_TIMEOUT, parse_hostport
from hs100local.protocol import Reply, build_request
from hs100local.results import KLAP_NOTE, DiscoveredPlug, SysInfo, normalize_mac

if TYPE_CHECKING:
    from collections.abc import Callable

    from hs100local.blocking import BlockingTransport
    from hs100local.hostport import Budget
    from hs100local.inventory import Inventory, PlugRecord

SYSINFO_REQUEST = build_request("system", "get_sysinfo")
#: how long a one-shot command searches for a plug whose address changed
REDISCOVER_TIMEOUT = 3.0
VERIFY_CONNECT_TIMEOUT = 2.0


@dataclass
class OpenedTarget:
    """A connected transport, the outlet the name selected, and a reply to reuse."""

    transport: BlockingTransport
    child: str | None = None  # outlet id when -H named an outlet
    sysinfo_reply: Reply | None = None  # the verification reply, usable once
    record: PlugRecord | None = None
    moved_from: str | None = None  # the old address when the plug was found elsewhere
    #: the plug as it answered just now (a name is checked against it, not the inventory)
    live: DiscoveredPlug | None = None


def is_address(target: str) -> bool:
    """True when ``target`` is an IP address with an optional port: it needs no
    inventory (so the one-shot path does not even import SQLite)."""
    try:
        host, _port = parse_hostport(target)
    except TargetError:
        return False
    return _is_ip(host)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _inventory(db: str | os.PathLike[str] | None) -> Inventory | None:
    """The inventory if it exists; looking a name up never creates a database."""
    from hs100local.inventory import Inventory, default_db_path

    path = db if db is not None else default_db_path()
    if not os.path.exists(path):
        return None
    return Inventory(path)


def open_target(
    text: str,
    *,
    db: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    rediscover_timeout: float = REDISCOVER_TIMEOUT,
    budget: Budget | None = None,
    whole_device: str | None = None,
    outlet_given: bool = False,
    notify: Callable[[str], None] | None = None,
) -> OpenedTarget:
    """Resolve ``text`` (address, host name, alias, outlet alias or MAC) and connect.

    ``budget`` bounds the whole wait (address check, search, the command's own
    requests). ``whole_device``: the name of a command that acts on the whole device;
    a name that resolves to one outlet is then refused before anything is sent.
    ``outlet_given``: an outlet was chosen separately (``-c``), so a name that is an
    outlet's is refused as ambiguous. ``notify`` hears what takes time (a broadcast
    search for a plug).
    """
    from hs100local.blocking import BlockingTransport

    text = text.strip()
    try:
        host, port = parse_hostport(text)
    except TargetError as exc:
        host, port, parse_error = "", DEFAULT_PORT, exc
    else:
        parse_error = None
        if _is_ip(host):
            return OpenedTarget(BlockingTransport(host, port, timeout=timeout, budget=budget))

    mac = normalize_mac(text)
    inventory = _inventory(db)
    try:
        resolved, name = None, text
        if inventory is not None:
            resolved = inventory.lookup(text)
            if resolved is None and parse_error is None and host != text:
                resolved, name = inventory.lookup(host), host  # "kitchen:9999"
        if resolved is not None:
            if resolved.child is not None and outlet_given:
                strip = resolved.record.alias or resolved.record.mac
                raise TargetError(f"{text!r} already names outlet {resolved.child.index} of "
                                  f"{strip!r}; drop -c (or use -H {strip!r} -c N)")
            if resolved.child is not None and whole_device is not None:
                strip = resolved.record.alias or resolved.record.mac
                raise TargetError(
                    f"{text!r} is outlet {resolved.child.index} of {strip!r}; {whole_device} "
                    f"acts on the whole device: use -H {strip!r}")
            explicit_port = port if parse_error is None and host != text else None
            opened = _open_recorded(resolved.record, explicit_port, inventory, timeout,
                                    rediscover_timeout, budget, notify)
            if mac is None:  # a name: it must still be this plug's (or outlet's) name
                try:
                    _check_alias(opened, resolved, name, inventory)
                except TargetError:
                    opened.transport.close()
                    raise
            elif resolved.child is not None:
                opened.child = resolved.child.id
            return opened
        if mac is not None:
            # A MAC the inventory does not know yet: find it on the network.
            found = _rediscover(mac, _search_time(rediscover_timeout, budget), notify, budget)
            if found is None:
                raise UnreachableError(
                    f"no plug with MAC {mac} answered discovery "
                    f"(it is not in the inventory either)"
                )
            _remember(db, found)
            return _open_found(found, timeout, budget)
        known = 0 if inventory is None else len(inventory.plugs())
    finally:
        if inventory is not None:
            inventory.close()
    where = (f"no plug in the inventory ({known} plugs; see 'hs100local plugs') has that alias"
             if inventory is not None else
             "there is no plug inventory yet to look aliases up in (run 'hs100local discover')")
    if parse_error is not None:
        raise TargetError(f"{parse_error}, nor is it a plug alias or MAC: {where}")
    _check_name(host, text, where)
    return OpenedTarget(BlockingTransport(host, port, timeout=timeout, budget=budget))


def _check_alias(opened: OpenedTarget, resolved: Any, name: str, inventory: Inventory) -> None:
    """The inventory said ``name`` is this plug (or one of its outlets); the plug itself
    must agree now. Aliases change (in the vendor app, with ``alias``, by swapping two
    plugs' names), and switching the outlet that *was* called "Heater" is exactly what
    must not happen. An outlet is taken by its current alias; a name that no longer
    fits is refused, with the inventory updated from what the plug said."""
    live = opened.live
    if live is None:
        return
    key = name.strip().casefold()
    record = resolved.record
    if resolved.child is None:
        if live.alias.strip().casefold() == key:
            return
        inventory.record([live])
        raise TargetError(
            f"{name!r} was the name of {record.mac} at {live.host}, which is now called "
            f"{live.alias!r}; the inventory is updated (run 'hs100local discover' to "
            f"refresh every plug)")
    matches = [c for c in live.children if c.alias.strip().casefold() == key]
    if len(matches) == 1:
        opened.child = matches[0].id
        return
    inventory.record([live])
    strip = live.alias or record.mac
    now = next((c.alias for c in live.children if c.index == resolved.child.index), None)
    if matches:
        raise TargetError(f"{len(matches)} outlets of {strip!r} are called {name!r} now; "
                          f"use -H {strip!r} -c INDEX")
    raise TargetError(
        f"no outlet of {strip!r} is called {name!r} any more (outlet "
        f"{resolved.child.index} is now {now!r}); the inventory is updated")


def _check_name(host: str, text: str, where: str) -> None:
    """A name that is no alias must be a host name; say both when it is neither, instead
    of the resolver's bare "Name or service not known"."""
    import socket

    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except UnicodeError:  # the IDNA codec: an empty or over-long label, bad characters
        raise TargetError(f"{text!r}: {where}, and it is not a valid host name") from None
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise TargetError(f"{text!r}: {where}, and no host has that name") from None
        raise UnreachableError(f"cannot resolve {host!r} ({exc.strerror or exc}); "
                               f"and {where}") from None


def _search_time(wanted: float, budget: Budget | None) -> float:
    return wanted if budget is None else budget.cap(wanted)


def _verify(host: str, port: int, mac: str, timeout: float,
            budget: Budget | None = None) -> tuple[Any, Reply, DiscoveredPlug] | None:
    """Connect and check the MAC; ``(transport, sysinfo reply, what it said)`` or None if
    it is not there."""
    from hs100local.blocking import BlockingTransport
    from hs100local.protocol import method_result

    # A plug on the LAN accepts within milliseconds; an address that went silent
    # should not cost the whole timeout (or budget) before the search starts.
    connect, reply_wait = min(timeout, VERIFY_CONNECT_TIMEOUT), timeout
    if budget is not None:
        connect = min(connect, budget.remaining() / 4)
        reply_wait = min(reply_wait, budget.remaining() / 2)
    transport = BlockingTransport(host, port, timeout=reply_wait, connect_timeout=connect,
                                  retries=0, budget=budget)
    try:
        reply = transport.query(SYSINFO_REQUEST)
        info = SysInfo.from_dict(method_result(reply, "system", "get_sysinfo"))
    except (Hs100Error, OSError):
        transport.close()
        return None
    if normalize_mac(info.mac) != mac:
        transport.close()
        return None
    return transport, reply, DiscoveredPlug.from_sysinfo(host, port, info, via="tcp")


def _open_recorded(
    record: PlugRecord, explicit_port: int | None, inventory: Inventory, timeout: float,
    rediscover_timeout: float, budget: Budget | None = None,
    notify: Callable[[str], None] | None = None,
) -> OpenedTarget:
    port = explicit_port or record.port
    checked = _verify(record.host, port, record.mac, timeout, budget)
    if checked is not None:
        transport, reply, live = checked
        transport.retries, transport.timeout = 1, timeout
        transport.connect_timeout = timeout
        return OpenedTarget(transport, sysinfo_reply=reply, record=record, live=live)
    name = f"{record.alias or record.model} ({record.mac})"
    found = _rediscover(record.mac, _search_time(rediscover_timeout, budget), notify, budget,
                        f"{name} is not at {record.host}")
    if found is None:
        raise UnreachableError(f"{name} is not at {record.host} and did not answer discovery")
    inventory.record([found])
    opened = _open_found(found, timeout, budget, name)
    opened.record, opened.moved_from, opened.live = record, record.host, found
    return opened


def _open_found(found: DiscoveredPlug, timeout: float, budget: Budget | None = None,
                name: str | None = None) -> OpenedTarget:
    from hs100local.blocking import BlockingTransport

    if not found.controllable:
        label = name or f"{found.model} ({found.mac})"
        raise ProtocolError(f"{label} at {found.host}: {found.note or KLAP_NOTE}")
    return OpenedTarget(BlockingTransport(found.host, found.port, timeout=timeout,
                                          budget=budget))


def _rediscover(mac: str, timeout: float, notify: Callable[[str], None] | None = None,
                budget: Budget | None = None, why: str | None = None) -> DiscoveredPlug | None:
    """Broadcast for ``mac``; says on which interfaces first (it takes a while)."""
    import asyncio
    import time

    from hs100local.discovery import default_interfaces, find_plug
    from hs100local.interfaces import ipv4_interfaces

    prefix = f"{why}; " if why else ""
    try:
        where = [i.label for i in ipv4_interfaces(default_interfaces()) if i.broadcast]
    except TargetError as exc:
        where, reason = [], str(exc)
    else:
        reason = "no IPv4 interface with a broadcast address"
    if not where:
        if notify is not None:
            notify(f"{prefix}cannot search for {mac}: {reason}")
        return None
    if timeout <= 0:
        if notify is not None:
            notify(f"{prefix}no time left (--timeout) to search for {mac}")
        return None
    if notify is not None:
        notify(f"{prefix}searching for {mac} by broadcast on {', '.join(where)} "
               f"(up to {timeout:.1f} s)")
    started = time.monotonic()
    try:
        return asyncio.run(find_plug(mac, timeout=timeout))
    except TargetError:  # the interfaces went away meanwhile
        return None
    finally:
        if budget is not None:
            budget.charge(time.monotonic() - started)


def remember_sysinfo(opened: OpenedTarget, info: SysInfo,
                     db: str | os.PathLike[str] | None = None) -> None:
    """Record what a plug reached through the inventory says now (after ``alias``
    renamed it or an outlet: the new name works at once, the old one no longer)."""
    if opened.record is None:
        return
    transport = opened.transport
    _remember(db, DiscoveredPlug.from_sysinfo(transport.host, transport.port, info, via="tcp"))


def _remember(db: str | os.PathLike[str] | None, found: DiscoveredPlug) -> None:
    from hs100local.inventory import Inventory

    with Inventory(db) as inventory:
        inventory.record([found])


__all__ = ["SYSINFO_REQUEST", "OpenedTarget", "is_address", "open_target", "remember_sysinfo"]

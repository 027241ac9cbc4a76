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
    from hs100local.blocking import BlockingTransport
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
) -> OpenedTarget:
    """Resolve ``text`` (address, host name, alias, outlet alias or MAC) and connect."""
    from hs100local.blocking import BlockingTransport

    text = text.strip()
    try:
        host, port = parse_hostport(text)
    except TargetError as exc:
        host, port, parse_error = "", DEFAULT_PORT, exc
    else:
        parse_error = None
        if _is_ip(host):
            return OpenedTarget(BlockingTransport(host, port, timeout=timeout))

    mac = normalize_mac(text)
    inventory = _inventory(db)
    try:
        resolved = None
        if inventory is not None:
            resolved = inventory.lookup(text)
            if resolved is None and parse_error is None and host != text:
                resolved = inventory.lookup(host)  # "kitchen:9999"
        if resolved is not None:
            explicit_port = port if parse_error is None and host != text else None
            opened = _open_recorded(resolved.record, explicit_port, inventory, timeout,
                                    rediscover_timeout)
            if resolved.child is not None:
                opened.child = resolved.child.id
            return opened
        if mac is not None:
            # A MAC the inventory does not know yet: find it on the network.
            found = _rediscover(mac, rediscover_timeout)
            if found is None:
                raise UnreachableError(
                    f"no plug with MAC {mac} answered discovery within {rediscover_timeout:g} s"
                )
            _remember(db, found)
            return _open_found(found, timeout)
    finally:
        if inventory is not None:
            inventory.close()
    if parse_error is not None:
        raise TargetError(
            f"{text!r} is neither HOST[:PORT] nor a plug alias or MAC in the inventory"
        )
    return OpenedTarget(BlockingTransport(host, port, timeout=timeout))


def _verify(host: str, port: int, mac: str, timeout: float) -> tuple[Any, Reply] | None:
    """Connect and check the MAC; ``(transport, sysinfo reply)`` or None if it is not there."""
    from hs100local.blocking import BlockingTransport
    from hs100local.protocol import method_result

    # A plug on the LAN accepts within milliseconds; an address that went silent
    # should not cost the whole timeout before the search starts.
    transport = BlockingTransport(host, port, timeout=timeout,
                                  connect_timeout=min(timeout, VERIFY_CONNECT_TIMEOUT), retries=0)
    try:
        reply = transport.query(SYSINFO_REQUEST)
        info = SysInfo.from_dict(method_result(reply, "system", "get_sysinfo"))
    except (Hs100Error, OSError):
        transport.close()
        return None
    if normalize_mac(info.mac) != mac:
        transport.close()
        return None
    return transport, reply


def _open_recorded(
    record: PlugRecord, explicit_port: int | None, inventory: Inventory, timeout: float,
    rediscover_timeout: float,
) -> OpenedTarget:
    port = explicit_port or record.port
    checked = _verify(record.host, port, record.mac, timeout)
    if checked is not None:
        transport, reply = checked
        transport.retries = 1
        return OpenedTarget(transport, sysinfo_reply=reply, record=record)
    found = _rediscover(record.mac, rediscover_timeout)
    name = f"{record.alias or record.model} ({record.mac})"
    if found is None:
        raise UnreachableError(
            f"{name} is not at {record.host} and did not answer discovery within "
            f"{rediscover_timeout:g} s"
        )
    inventory.record([found])
    opened = _open_found(found, timeout, name)
    opened.record, opened.moved_from = record, record.host
    return opened


def _open_found(found: DiscoveredPlug, timeout: float, name: str | None = None) -> OpenedTarget:
    from hs100local.blocking import BlockingTransport

    if not found.controllable:
        label = name or f"{found.model} ({found.mac})"
        raise ProtocolError(f"{label} at {found.host}: {found.note or KLAP_NOTE}")
    return OpenedTarget(BlockingTransport(found.host, found.port, timeout=timeout))


def _rediscover(mac: str, timeout: float) -> DiscoveredPlug | None:
    import asyncio

    from hs100local.discovery import find_plug

    try:
        return asyncio.run(find_plug(mac, timeout=timeout))
    except TargetError:  # no interface to broadcast on
        return None


def _remember(db: str | os.PathLike[str] | None, found: DiscoveredPlug) -> None:
    from hs100local.inventory import Inventory

    with Inventory(db) as inventory:
        inventory.record([found])


__all__ = ["SYSINFO_REQUEST", "OpenedTarget", "open_target"]

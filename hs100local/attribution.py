"""Which plug a client address is: the link between an event and the inventory.

The services see only a source address. A plug's address is in the inventory
(discovery recorded it), but DHCP may have moved it since, so an address the
inventory does not know is looked up in the kernel's neighbour table
(``/proc/net/arp``, present on Linux and OpenWrt): a plug that spoke to us is
there with its MAC, and the MAC is what the inventory is keyed on.

The answer is remembered per address for ``ttl`` seconds, a miss included: a
phone asking our DNS server costs one read of the ARP table a minute, not one
per query. Nothing here touches SQLite on the caller's path: :meth:`load` is
given the plug list (read it in a thread), and :meth:`plug_for` is a dict lookup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("hs100local.attribution")

ARP_TABLE = Path("/proc/net/arp")
#: ATF_COM: the neighbour entry is complete (has a MAC)
_ATF_COM = 0x2
#: addresses remembered at most (a scan from many sources must not grow memory)
MAX_CACHED = 4096


@dataclass(frozen=True)
class KnownPlug:
    """What attribution needs of an inventory record."""

    mac: str
    host: str
    alias: str


def read_arp_table(path: Path = ARP_TABLE) -> dict[str, str]:
    """IPv4 address → MAC (upper case, colons) of the complete entries; {} if unreadable."""
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()[1:]
    except OSError:
        return {}
    table: dict[str, str] = {}
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        try:
            flags = int(fields[2], 16)
        except ValueError:
            continue
        mac = fields[3].upper()
        if flags & _ATF_COM and mac != "00:00:00:00:00:00":
            table[fields[0]] = mac
    return table


def unique_hosts(plugs: Iterable[Any]) -> dict[str, str]:
    """Address → MAC for the addresses exactly one plug has (``plugs``: anything with
    ``host`` and ``mac``). Plugs behind one address — emulators on 127.0.0.1, plugs
    behind a NAT — cannot be told apart by a packet's source, so an event from such an
    address belongs to none of them rather than to a guess."""
    owners: dict[str, set[str]] = {}
    for plug in plugs:
        owners.setdefault(plug.host, set()).add(plug.mac.upper())
    return {host: next(iter(macs)) for host, macs in owners.items() if len(macs) == 1}


class PlugDirectory:
    """Client address → plug MAC, from the inventory and then the neighbour table."""

    def __init__(self, plugs: Iterable[KnownPlug] = (), *, ttl: float = 60.0,
                 arp: Callable[[], dict[str, str]] = read_arp_table,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._arp = arp
        self._clock = clock
        self._by_host: dict[str, str] = {}
        self._by_mac: dict[str, KnownPlug] = {}
        self._shared: set[str] = set()
        self._cache: dict[str, tuple[float, str | None]] = {}
        self.load(plugs)

    def load(self, plugs: Iterable[KnownPlug]) -> None:
        """Replace the plug list (after a discovery pass or a reload); forgets answers."""
        by_mac = {p.mac.upper(): p for p in plugs}
        self._by_mac = by_mac
        self._by_host = unique_hosts(by_mac.values())
        self._shared = {p.host for p in by_mac.values()} - set(self._by_host)
        self._cache.clear()

    def plug_for(self, client: str | None) -> str | None:
        """The MAC of the plug at ``client``, or None (not a plug we know)."""
        if client is None or not self._by_mac:
            return None
        now = self._clock()
        hit = self._cache.get(client)
        if hit is not None and hit[0] > now:
            return hit[1]
        mac = self._by_host.get(client)
        if mac is None and client not in self._shared:
            neighbour = self._arp().get(client)
            if neighbour is not None and neighbour in self._by_mac:
                mac = neighbour
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[client] = (now + self.ttl, mac)
        return mac

    def alias(self, mac: str | None) -> str | None:
        """The plug's alias (its name as the user set it), or None if unknown."""
        plug = self._by_mac.get(mac.upper()) if mac else None
        return plug.alias if plug is not None else None

    def plugs(self) -> list[KnownPlug]:
        return list(self._by_mac.values())


def known_plugs(db: str | Path | None) -> list[KnownPlug]:
    """The inventory's plugs (blocking: call from a thread in a service); [] if there is
    no inventory yet or it cannot be read (attribution is best effort, never fatal)."""
    from hs100local.errors import StoreError
    from hs100local.inventory import Inventory, default_db_path

    path = Path(db) if db is not None else default_db_path()
    if not path.exists():
        return []
    try:
        with Inventory(path) as inventory:
            return [KnownPlug(r.mac, r.host, r.alias) for r in inventory.plugs()]
    except StoreError as exc:
        log.warning("cannot read the plug inventory for attribution: %s", exc)
        return []

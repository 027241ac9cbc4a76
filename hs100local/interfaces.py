"""The host's IPv4 interfaces and where to broadcast on each (netifaces-plus).

A router or Pi usually has several networks (LAN, IoT VLAN, guest Wi-Fi); plugs
answer a broadcast only on their own segment, so discovery sends one directed
broadcast per interface instead of a single 255.255.255.255 that follows the
default route (or fails when there is none).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from hs100local.errors import TargetError


@dataclass(frozen=True)
class Interface:
    """One IPv4 address on one interface (an interface may carry several)."""

    name: str
    address: str
    network: ipaddress.IPv4Network
    broadcast: str | None  # None: point-to-point or /32, nothing to broadcast to

    @property
    def label(self) -> str:
        return f"{self.name} ({self.network})"


def _entry(name: str, entry: dict[str, str]) -> Interface | None:
    addr = entry.get("addr")
    if not addr:
        return None
    try:
        iface = ipaddress.IPv4Interface(f"{addr}/{entry.get('netmask') or '32'}")
    except ValueError:
        return None
    network = iface.network
    broadcast: str | None = entry.get("broadcast")
    if not broadcast and network.prefixlen <= 30:
        broadcast = str(network.broadcast_address)
    if network.prefixlen >= 31:
        broadcast = None
    return Interface(name, addr, network, broadcast)


def ipv4_interfaces(
    names: Iterable[str] | None = None, *, include_loopback: bool = False
) -> list[Interface]:
    """IPv4 addresses per interface; ``names`` restricts (and must all exist).

    Loopback is left out unless named explicitly: plugs never live there.
    """
    import netifaces

    available = netifaces.interfaces()
    wanted = list(dict.fromkeys(names)) if names is not None else None
    if wanted is not None:
        missing = [n for n in wanted if n not in available]
        if missing:
            raise TargetError(
                f"no such interface: {', '.join(missing)} (have: {', '.join(available)})"
            )
    found: list[Interface] = []
    for name in wanted if wanted is not None else available:
        for entry in netifaces.ifaddresses(name).get(netifaces.AF_INET, []):
            iface = _entry(name, entry)
            if iface is None:
                continue
            if iface.network.network_address.is_loopback and not (
                include_loopback or wanted is not None
            ):
                continue
            found.append(iface)
    if wanted is not None:
        bare = [n for n in wanted if not any(i.name == n for i in found)]
        if bare:
            raise TargetError(f"interface has no IPv4 address: {', '.join(bare)}")
    return found

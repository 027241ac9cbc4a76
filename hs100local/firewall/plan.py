"""The firewall plan: which plugs, where the companion is, and the policy, as plain data.

Every output format (nft, iptables, uci, dnsmasq) is rendered from one :class:`Plan`,
and the policy itself (what a plug may reach, what is redirected where) is computed
here once as :class:`Allow` and :class:`Redirect` lists. That keeps the formats from
drifting apart: a renderer only translates, it never decides. Building a plan does no
I/O, so the renderers are tested without root, and every user-supplied value (MAC,
address, network, zone name) is validated here before it can reach a rule text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hs100local.errors import TargetError
from hs100local.results import normalize_mac

FORMATS = ("nft", "iptables", "ip6tables", "uci", "dnsmasq")
#: formats that are packet filters (need plugs and LAN networks)
FILTER_FORMATS = ("nft", "iptables", "ip6tables", "uci")

STANDARD_PORTS = {"dns": (53,), "ntp": (123,), "cloud": (443, 50443)}
DHCP_PORT = 67
PLUG_PORT = 9999
#: discovery replies come from these source ports: the legacy probe (9999) and the
#: TDP probe that tells KLAP firmware (20002, 20004); see plug-facts.md
DISCOVERY_PORTS = (9999, 20002, 20004)

Endpoint = tuple[str, int]


class PlanError(TargetError):
    """Bad input for a plan (exit code 2); the message is one line naming the value."""


@dataclass(frozen=True)
class PlugSpec:
    """A plug to isolate: its MAC and/or IPv4 address (at least one), and a name."""

    mac: str | None = None  # AA:BB:CC:DD:EE:FF
    ip: str | None = None
    alias: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"mac": self.mac, "ip": self.ip, "alias": self.alias}


@dataclass(frozen=True)
class Allow:
    """Traffic a plug may send to the companion; everything else from it is refused.

    ``address`` None means "any destination" (DHCP before the plug has an address,
    replies to broadcast discovery); ``input_only`` rules never apply to traffic routed
    through the companion, because they would be a way out for a plug.
    """

    label: str
    proto: str  # "udp" or "tcp"
    address: str | None
    dports: tuple[int, ...] = ()
    sports: tuple[int, ...] = ()
    input_only: bool = False


@dataclass(frozen=True)
class Redirect:
    """Plug traffic to ``proto``/``port`` aimed elsewhere is DNATed to the companion."""

    label: str
    proto: str
    port: int
    to_address: str
    to_port: int

    @property
    def skip_target(self) -> bool:
        """Packets already aimed at the target need no DNAT (only if the port is the same:
        a DNS server on port 5353 still needs the port rewritten)."""
        return self.port == self.to_port


@dataclass(frozen=True)
class Plan:
    """Everything a renderer needs; built by :func:`build_plan`, never by hand in the CLI."""

    plugs: tuple[PlugSpec, ...]
    dns: tuple[Endpoint, ...]
    ntp: tuple[Endpoint, ...]
    cloud: tuple[Endpoint, ...]  # () = no cloud listener: no cloud accept, no 443 redirect
    lan: tuple[str, ...]  # CIDRs allowed to reach the plugs on 9999
    format: str = "nft"
    zone: str = "lan"  # uci: the firewall zone the plugs are in

    @property
    def macs(self) -> tuple[str, ...]:
        return tuple(sorted({p.mac for p in self.plugs if p.mac}))

    @property
    def ips(self) -> tuple[str, ...]:
        found = {p.ip for p in self.plugs if p.ip}
        return tuple(sorted(found, key=lambda a: ipaddress.IPv4Address(a)))

    @property
    def companion(self) -> tuple[str, ...]:
        """The companion's addresses (those its services listen on), in numeric order."""
        found = {address for address, _ in self.dns + self.ntp + self.cloud}
        return tuple(sorted(found, key=lambda a: ipaddress.IPv4Address(a)))

    def describe(self) -> str:
        """``2 plug MACs and 1 address``: what the rules match (a plug given by MAC and
        address counts in both, so a number of "plugs" would be a guess)."""
        macs, ips = len(self.macs), len(self.ips)
        return (f"{macs} plug MAC{'s' * (macs != 1)} and "
                f"{ips} address{'es' * (ips != 1)}")

    def allows(self) -> list[Allow]:
        """What a plug may send to the companion, in rule order."""
        rules: list[Allow] = []
        for address, ports in _by_address(self.dns):
            rules.append(Allow("DNS", "udp", address, ports))
            rules.append(Allow("DNS", "tcp", address, ports))
        for address, ports in _by_address(self.ntp):
            rules.append(Allow("NTP", "udp", address, ports))
        for address, ports in _by_address(self.cloud):
            rules.append(Allow("cloud listener", "tcp", address, ports))
        rules.append(Allow("DHCP", "udp", None, (DHCP_PORT,), input_only=True))
        rules.append(Allow("discovery replies", "udp", None, sports=DISCOVERY_PORTS,
                           input_only=True))
        return rules

    def redirects(self) -> list[Redirect]:
        """Plug DNS, NTP (and, with a cloud listener, 443/50443) aimed elsewhere -> ours."""
        dns_addr, dns_port = self.dns[0]
        ntp_addr, ntp_port = self.ntp[0]
        found = [Redirect("DNS", "udp", 53, dns_addr, dns_port),
                 Redirect("DNS", "tcp", 53, dns_addr, dns_port),
                 Redirect("NTP", "udp", 123, ntp_addr, ntp_port)]
        for port in STANDARD_PORTS["cloud"] if self.cloud else ():
            # the listener on the same port if there is one, else the first listener
            same = [e for e in self.cloud if e[1] == port]
            address, to_port = same[0] if same else self.cloud[0]
            found.append(Redirect("cloud", "tcp", port, address, to_port))
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "plugs": [p.as_dict() for p in self.plugs],
            "macs": list(self.macs),
            "ips": list(self.ips),
            "companion": list(self.companion),
            "dns": [f"{a}:{p}" for a, p in self.dns],
            "ntp": [f"{a}:{p}" for a, p in self.ntp],
            "cloud": [f"{a}:{p}" for a, p in self.cloud],
            "lan": list(self.lan),
            "redirects": [
                {"proto": r.proto, "port": r.port, "to": f"{r.to_address}:{r.to_port}"}
                for r in self.redirects()
            ],
            **({"zone": self.zone} if self.format == "uci" else {}),
        }


def _by_address(endpoints: Iterable[Endpoint]) -> list[tuple[str, tuple[int, ...]]]:
    """Group ports by address, keeping the first-seen order of addresses."""
    grouped: dict[str, list[int]] = {}
    for address, port in endpoints:
        ports = grouped.setdefault(address, [])
        if port not in ports:
            ports.append(port)
    return [(address, tuple(ports)) for address, ports in grouped.items()]


# ------------------------------------------------------------------ validation


def parse_mac(text: str) -> str:
    """A unicast MAC in any spelling -> ``AA:BB:CC:DD:EE:FF``; PlanError otherwise."""
    mac = normalize_mac(text)
    if mac is None:
        raise PlanError(f"not a MAC address: {text!r}")
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise PlanError(f"not a device (unicast) MAC address: {text!r}")
    return mac


def parse_ipv4(text: str, what: str = "plug address") -> str:
    """A host IPv4 address (not loopback, multicast, broadcast or 0.0.0.0)."""
    try:
        address = ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise PlanError(f"{what}: not an IPv4 address: {text!r}") from None
    if (address.is_loopback or address.is_multicast or address.is_unspecified
            or address == ipaddress.IPv4Address("255.255.255.255")):
        raise PlanError(f"{what}: {text!r} is not a host address")
    return str(address)


def parse_lan(text: str) -> str:
    """An IPv4 network ``A.B.C.D/N`` (host bits dropped) -> its canonical text."""
    try:
        network = ipaddress.IPv4Network(text.strip(), strict=False)
    except ValueError:
        raise PlanError(f"LAN network: not an IPv4 CIDR: {text!r}") from None
    if network.is_loopback:
        raise PlanError(f"LAN network: {text!r} is loopback, give the LAN's network")
    return str(network)


def parse_zone(text: str) -> str:
    """An OpenWrt firewall zone name (letters, digits, underscore; fw3 allows 11)."""
    if not re.fullmatch(r"[A-Za-z0-9_]{1,11}", text):
        raise PlanError(f"not an OpenWrt zone name: {text!r}")
    return text


def _usable(address: str) -> bool:
    ip = ipaddress.IPv4Address(address)
    return not (ip.is_loopback or ip.is_unspecified)


# ------------------------------------------------------------------ building


def plugs_from(macs: Sequence[str], ips: Sequence[str]) -> list[PlugSpec]:
    """Plugs given on the command line: each MAC and each address is one entry."""
    found = [PlugSpec(mac=parse_mac(m)) for m in macs]
    found += [PlugSpec(ip=parse_ipv4(a)) for a in ips]
    return found


def plugs_from_inventory(records: Iterable[Any]) -> list[PlugSpec]:
    """Inventory records (``mac``, ``host``, ``alias``): matched by MAC and address.

    A record whose address is no usable IPv4 address (an IPv6 or a host name) is
    matched by its MAC alone rather than rejected: the inventory is not user input.
    """
    found = []
    for record in records:
        mac = normalize_mac(record.mac)
        try:
            ip: str | None = parse_ipv4(record.host)
        except PlanError:
            ip = None
        if mac or ip:
            found.append(PlugSpec(mac=mac, ip=ip, alias=record.alias or None))
    return found


def companion_services(
    configured: dict[str, tuple[Endpoint, ...]] | None, companion: str | None
) -> dict[str, tuple[Endpoint, ...]]:
    """Where the plugs' DNS, NTP and cloud traffic must go.

    ``configured`` holds the serve config's ``dns``/``ntp``/``cloud`` lists when a config
    file was read (None: no file, so the standard ports). ``companion`` overrides every
    address, keeping the ports. Loopback and wildcard (0.0.0.0) addresses cannot be a
    plug's destination: they become the companion's first usable address. A service
    that is off in the config (``dns = false``) still gets DNS on 53 and NTP on 123 at
    that address (the user's own resolver or time server, e.g. dnsmasq); an absent
    cloud listener stays absent.
    """
    if companion is not None:
        primary = parse_ipv4(companion, "--companion")
    else:
        everything = [a for eps in (configured or {}).values() for a, _ in eps]
        usable = [a for a in everything if _usable(a)]
        if not usable:
            raise PlanError(
                "the companion's addresses are loopback or 0.0.0.0 only (the demo defaults):"
                " give its LAN address with --companion ADDR or in the serve config")
        primary = usable[0]
    services: dict[str, tuple[Endpoint, ...]] = {}
    for kind, standard in STANDARD_PORTS.items():
        entries = configured.get(kind, ()) if configured is not None else None
        if entries is None or (not entries and kind != "cloud"):
            entries = tuple((primary, port) for port in standard)
        moved = []
        for address, port in entries:
            target = (primary if companion is not None or not _usable(address) else address,
                      port)
            if target not in moved:
                moved.append(target)
        services[kind] = tuple(moved)
    return services


def lan_from_config(config: Any) -> list[str]:
    """The serve config's ``allow`` networks minus loopback (meaningless to a firewall)."""
    return [n for n in config.allow
            if not ipaddress.IPv4Network(n, strict=False).is_loopback]


def plan_for(config: Any | None, plugs: Sequence[PlugSpec], *, companion: str | None = None,
             lan: Sequence[str] = (), fmt: str = "nft", zone: str = "lan") -> Plan:
    """A plan from a serve config read from a file (None: there is none, so the
    standard ports and no LAN); ``companion`` and ``lan`` override it."""
    configured = (None if config is None
                  else {"dns": config.dns, "ntp": config.ntp, "cloud": config.cloud})
    networks = list(lan) or (lan_from_config(config) if config is not None else [])
    return build_plan(plugs, companion_services(configured, companion), networks, fmt, zone)


def build_plan(
    plugs: Sequence[PlugSpec],
    services: dict[str, tuple[Endpoint, ...]],
    lan: Sequence[str],
    fmt: str = "nft",
    zone: str = "lan",
) -> Plan:
    """Check and assemble a plan. Filter formats need plugs and LAN networks."""
    if fmt not in FORMATS:
        raise PlanError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    networks = sorted({parse_lan(n) for n in lan}, key=ipaddress.IPv4Network)
    unique = sorted(set(plugs), key=_plug_order)
    if fmt in FILTER_FORMATS:
        if not unique:
            raise PlanError("no plugs: give --mac/--ip, or run 'hs100local discover' to fill"
                            " the inventory")
        if not networks:
            raise PlanError("no LAN networks: give --lan CIDR (repeatable) or set 'allow' in"
                            " the serve config")
    plan = Plan(plugs=tuple(unique), dns=services["dns"], ntp=services["ntp"],
                cloud=services["cloud"], lan=tuple(networks), format=fmt,
                zone=parse_zone(zone))
    clash = set(plan.ips) & set(plan.companion)
    if clash:
        raise PlanError(f"{sorted(clash)[0]} is both a plug and the companion")
    return plan


def _plug_order(plug: PlugSpec) -> tuple[int, str, str]:
    ip = int(ipaddress.IPv4Address(plug.ip)) if plug.ip else -1
    return (ip, plug.mac or "", plug.alias or "")

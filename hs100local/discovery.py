"""Find plugs: UDP broadcast discovery per interface, and a TCP sweep of address ranges.

Broadcast discovery sends the XOR ``get_sysinfo`` probe to UDP 9999 and the TDP v2
probe to UDP 20002/20004 on every IPv4 interface's directed broadcast address,
from a socket bound to that interface, so it works on a router with several
segments and no default route. Probes are repeated every ``interval`` for the
whole window, because one lost datagram (Wi-Fi, a busy plug) must not hide a
plug; the window ends early once ``expect`` devices answered.

What arrives is judged by :class:`Collector`, which does no I/O: only answers from
the probed ports count, each source address once, the source address is the
plug's address whatever the payload claims, and anything malformed is counted
and dropped, never an entry and never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_codes
import ipaddress
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hs100local import tdp
from hs100local.errors import DeviceError, Hs100Error, ProtocolError, TargetError
from hs100local.hostport import DEFAULT_PORT, parse_hostport
from hs100local.interfaces import Interface, ipv4_interfaces
from hs100local.protocol import MAX_MESSAGE, decode_udp, dumps, encode_udp, loads, method_result
from hs100local.results import PROTOCOL_XOR, DiscoveredPlug, SysInfo

log = logging.getLogger("hs100local.discovery")

INTERFACES_ENV = "HS100LOCAL_INTERFACES"
DEFAULT_DISCOVERY_TIMEOUT = 3.0
#: seconds between probe rounds: 20 rounds in the default window, so a plug is
#: missed at 30 % loss each way only with probability (1 - 0.7²)^20 ≈ 1e-6
PROBE_INTERVAL = 0.15
SWEEP_CONCURRENCY = 256
SWEEP_CONNECT_TIMEOUT = 1.0
SWEEP_MAX_ADDRESSES = 65536
_SYSINFO = {"system": {"get_sysinfo": {}}}


@dataclass
class DiscoveryResult:
    """What a discovery or sweep found, and what it had to ignore."""

    plugs: list[DiscoveredPlug]
    elapsed: float
    probed: list[str] = field(default_factory=list)  # where probes went, human-readable
    ignored: dict[str, int] = field(default_factory=dict)  # reason -> datagrams/replies
    errors: list[str] = field(default_factory=list)  # send failures (network down, …)

    def as_dict(self) -> dict[str, Any]:
        return {
            "plugs": [p.as_dict() for p in self.plugs],
            "elapsed_s": round(self.elapsed, 3),
            "probed": self.probed,
            "ignored": self.ignored,
            "errors": self.errors,
        }


def _ip_key(host: str) -> tuple[int, Any]:
    try:
        return (0, ipaddress.ip_address(host))
    except ValueError:
        return (1, host)


class Collector:
    """Judge answers (sans-I/O): datagrams or sweep results in, unique plugs out.

    A legacy plug is keyed by its source ``(address, port)`` (emulators may share
    an address on different ports; a real plug answers from 9999); a TDP answer
    only counts for an address nothing else answered from, and a legacy answer
    replaces a TDP one (a device that still answers on 9999 is controllable).
    """

    def __init__(
        self,
        xor_ports: Iterable[int] = (DEFAULT_PORT,),
        tdp_ports: Iterable[int] = tdp.TDP_PORTS,
        on_found: Callable[[DiscoveredPlug], None] | None = None,
    ) -> None:
        self.xor_ports = set(xor_ports)
        self.tdp_ports = set(tdp_ports)
        self.on_found = on_found
        self.by_addr: dict[tuple[str, int], DiscoveredPlug] = {}
        self.addr_of_mac: dict[str, tuple[str, int]] = {}
        self.ignored: Counter[str] = Counter()

    @property
    def plugs(self) -> list[DiscoveredPlug]:
        return sorted(self.by_addr.values(), key=lambda p: (_ip_key(p.host), p.port))

    def _tdp_entry(self, host: str) -> tuple[str, int] | None:
        return next((a for a, p in self.by_addr.items()
                     if a[0] == host and p.protocol != PROTOCOL_XOR), None)

    def _knows_host(self, host: str) -> bool:
        return any(a[0] == host for a in self.by_addr)

    def ignore(self, reason: str, host: str, detail: object = "") -> None:
        self.ignored[reason] += 1
        log.debug("ignoring answer from %s: %s %s", host, reason, detail)

    def feed(
        self, data: bytes, addr: tuple[str, int], interface: str | None = None
    ) -> DiscoveredPlug | None:
        """One datagram from ``addr``; returns the plug when it is a new one."""
        host, port = addr[0], addr[1]
        if len(data) > MAX_MESSAGE:
            self.ignore("oversized", host, len(data))
            return None
        try:
            if port in self.xor_ports:
                if (host, port) in self.by_addr:
                    self.ignore("duplicate", host)
                    return None
                reply = loads(decode_udp(data))
                info = SysInfo.from_dict(method_result(reply, "system", "get_sysinfo"))
                plug = DiscoveredPlug.from_sysinfo(host, port, info, interface=interface)
            elif port in self.tdp_ports:
                if self._knows_host(host):
                    self.ignore("duplicate", host)
                    return None
                result = tdp.parse_answer(data)
                claimed = result.get("ip")
                if claimed is not None and claimed != host:
                    self.ignore("claims-other-ip", host, claimed)
                    return None
                plug = DiscoveredPlug.from_tdp(host, port, result, interface=interface)
            else:
                self.ignore("unexpected-port", host, port)
                return None
        except (ProtocolError, DeviceError) as exc:
            self.ignore("malformed", host, exc)
            return None
        return self.add(plug)

    def add(self, plug: DiscoveredPlug) -> DiscoveredPlug | None:
        """Accept ``plug`` unless it is known or its MAC answers from elsewhere."""
        addr = (plug.host, plug.port)
        replaces = self._tdp_entry(plug.host) if plug.protocol == PROTOCOL_XOR else None
        if addr in self.by_addr or (replaces is None and plug.protocol != PROTOCOL_XOR
                                    and self._knows_host(plug.host)):
            self.ignore("duplicate", plug.host)
            return None
        if replaces is not None:
            old = self.by_addr.pop(replaces)
            self.addr_of_mac.pop(old.mac, None)
        elsewhere = self.addr_of_mac.get(plug.mac)
        if elsewhere is not None:
            # Two addresses, one MAC: a spoofed answer or a plug that changed address
            # mid-discovery. Keep the first; a second entry would be a bogus one.
            self.ignore("mac-conflict", plug.host, f"{plug.mac} already at {elsewhere[0]}")
            log.warning("%s answered with MAC %s, already seen at %s; ignored",
                        plug.host, plug.mac, elsewhere[0])
            return None
        self.by_addr[addr] = plug
        self.addr_of_mac[plug.mac] = addr
        if self.on_found is not None:
            self.on_found(plug)
        return plug


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, session: _Session, interface: str | None) -> None:
        self.session = session
        self.interface = interface

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.session.collector.feed(data, addr, self.interface)
        except Exception:  # pragma: no cover - a bug must not end discovery
            log.exception("error judging datagram from %s", addr)
        self.session.check_done()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a --target, or a send that failed: note it, go on.
        self.session.note_error(f"{self.interface or 'target'}: {exc}")


class _Session:
    """State shared by the sockets of one discovery run."""

    def __init__(self, collector: Collector, done: Callable[[list[DiscoveredPlug]], bool]):
        self.collector = collector
        self.done = done
        self.finished = asyncio.Event()
        self.errors: list[str] = []

    def check_done(self) -> None:
        if not self.finished.is_set() and self.done(list(self.collector.by_addr.values())):
            self.finished.set()

    def note_error(self, text: str) -> None:
        if text not in self.errors:
            self.errors.append(text)
            log.info("discovery: %s", text)


def default_interfaces() -> list[str] | None:
    """Interfaces named in ``$HS100LOCAL_INTERFACES`` (comma-separated), else None = all.

    For a router that should only ever probe its IoT segment, and for tests that
    must not broadcast beyond loopback.
    """
    names = [n.strip() for n in os.environ.get(INTERFACES_ENV, "").split(",") if n.strip()]
    return names or None


def _udp_socket(bind: str, device: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if device is not None and hasattr(socket, "SO_BINDTODEVICE"):
            # Needs CAP_NET_RAW; without it the bound address alone steers replies.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.bind((bind, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _resolve_targets(targets: Iterable[str | tuple[str, int]]) -> list[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    out: list[tuple[str, int]] = []
    for target in targets:
        host, port = parse_hostport(target) if isinstance(target, str) else target
        try:
            infos = await loop.getaddrinfo(host, port, family=socket.AF_INET,
                                           type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            raise TargetError(f"cannot resolve target {host!r}: {exc}") from None
        address = (infos[0][4][0], port)
        if address not in out:
            out.append(address)
    return out


def _stop_rule(
    expect: int | None, until: Callable[[list[DiscoveredPlug]], bool] | None
) -> Callable[[list[DiscoveredPlug]], bool]:
    def done(found: list[DiscoveredPlug]) -> bool:
        if expect is not None and len(found) >= expect:
            return True
        return until is not None and until(found)

    return done


async def discover(
    *,
    targets: Iterable[str | tuple[str, int]] = (),
    interfaces: Sequence[str] | None = None,
    broadcast: bool = True,
    timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
    expect: int | None = None,
    until: Callable[[list[DiscoveredPlug]], bool] | None = None,
    interval: float = PROBE_INTERVAL,
    port: int = DEFAULT_PORT,
    tdp_ports: Sequence[int] = tdp.TDP_PORTS,
    on_found: Callable[[DiscoveredPlug], None] | None = None,
) -> DiscoveryResult:
    """Broadcast on every IPv4 interface (or ``interfaces``) plus ``targets``; listen
    for ``timeout`` seconds or until ``expect`` devices (or ``until(found)``) answered.

    ``targets`` are ``"HOST[:PORT]"`` strings or tuples: unicast or broadcast
    addresses probed in addition (``broadcast=False`` probes only them). A target on
    the default port is also probed on the TDP ports.
    """
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    resolved = await _resolve_targets(targets)
    ifaces: list[Interface] = []
    if broadcast:
        names = interfaces if interfaces is not None else default_interfaces()
        ifaces = [i for i in ipv4_interfaces(names) if i.broadcast is not None]
    if not ifaces and not resolved:
        raise TargetError(
            "nothing to probe: no IPv4 interface with a broadcast address; give --target ADDR"
        )
    collector = Collector({port, *(p for _h, p in resolved)}, tdp_ports, on_found)
    session = _Session(collector, _stop_rule(expect, until))
    xor_probe = encode_udp(dumps(_SYSINFO))
    tdp_probe = tdp.build_probe()

    # (transport, destinations) per socket
    plan: list[tuple[asyncio.DatagramTransport, list[tuple[bytes, tuple[str, int]]]]] = []
    probed: list[str] = []
    try:
        for iface in ifaces:
            assert iface.broadcast is not None
            try:
                sock = _udp_socket(iface.address, iface.name)
            except OSError as exc:
                session.note_error(f"{iface.name}: cannot bind {iface.address}: {exc.strerror}")
                continue
            transport, _ = await loop.create_datagram_endpoint(
                lambda name=iface.name: _Listener(session, name), sock=sock
            )
            dests = [(xor_probe, (iface.broadcast, port))]
            dests += [(tdp_probe, (iface.broadcast, p)) for p in tdp_ports]
            plan.append((transport, dests))  # type: ignore[arg-type]
            probed.append(f"{iface.label} -> {iface.broadcast}")
        if resolved:
            sock = _udp_socket("0.0.0.0", None)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Listener(session, None), sock=sock
            )
            dests = []
            for host, target_port in resolved:
                dests.append((xor_probe, (host, target_port)))
                if target_port == DEFAULT_PORT:
                    dests += [(tdp_probe, (host, p)) for p in tdp_ports]
                probed.append(f"target {host}:{target_port}")
            plan.append((transport, dests))  # type: ignore[arg-type]

        deadline = started + timeout
        last_send = deadline - min(interval, timeout / 4)  # leave time for the answers
        rounds = 0
        while not session.finished.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if rounds == 0 or started + rounds * interval <= min(now, last_send):
                for transport, dests in plan:
                    for payload, dest in dests:
                        _send(transport, payload, dest, session)
                rounds += 1
            wake = started + rounds * interval
            if wake > last_send:
                wake = deadline
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.finished.wait(), max(wake - time.monotonic(), 0))
    finally:
        for transport, _dests in plan:
            transport.close()
    return DiscoveryResult(
        plugs=collector.plugs,
        elapsed=time.monotonic() - started,
        probed=probed,
        ignored=dict(collector.ignored),
        errors=session.errors,
    )


def _send(transport: asyncio.DatagramTransport, payload: bytes, dest: tuple[str, int],
          session: _Session) -> None:
    try:
        transport.sendto(payload, dest)
    except OSError as exc:  # pragma: no cover - asyncio reports most via error_received
        session.note_error(f"sending to {dest[0]}:{dest[1]}: {exc.strerror or exc}")


def sweep_addresses(networks: Iterable[str], limit: int = SWEEP_MAX_ADDRESSES) -> list[str]:
    """Every host address in ``networks`` (CIDR or single address), each once, in order."""
    seen: dict[str, None] = {}
    for text in networks:
        try:
            net = ipaddress.IPv4Network(text.strip(), strict=False)
        except ValueError as exc:
            raise TargetError(f"not an IPv4 network: {text!r} ({exc})") from None
        if net.num_addresses > limit or len(seen) + net.num_addresses > limit + 2:
            raise TargetError(f"{net} is too large to sweep (at most {limit} addresses)")
        hosts = net.hosts() if net.prefixlen < 31 else iter(net)
        for addr in hosts:
            seen[str(addr)] = None
    return list(seen)


async def scan(
    networks: Iterable[str],
    *,
    port: int = DEFAULT_PORT,
    concurrency: int = SWEEP_CONCURRENCY,
    connect_timeout: float = SWEEP_CONNECT_TIMEOUT,
    timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
    tdp_ports: Sequence[int] = tdp.TDP_PORTS,
    tdp_wait: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
    on_found: Callable[[DiscoveredPlug], None] | None = None,
) -> DiscoveryResult:
    """TCP-connect to ``port`` on every address with at most ``concurrency`` at once.

    A connection that is accepted gets ``get_sysinfo``; an address that refuses
    (a host is there, port 9999 closed) is sent the TDP probe and given
    ``tdp_wait`` seconds to answer, which tells KLAP firmware apart from "not a
    plug". Silent addresses cost ``connect_timeout``.
    """
    from hs100local import ops
    from hs100local.transport import TcpTransport

    started = time.monotonic()
    addresses = sweep_addresses(networks)
    concurrency = max(1, min(concurrency, _fd_budget()))
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[None]] = {}

    def found(plug: DiscoveredPlug) -> None:
        future = waiting.get(plug.host)
        if future is not None and not future.done():
            future.set_result(None)
        if on_found is not None:
            on_found(plug)

    collector = Collector((port,), tdp_ports, found)
    session = _Session(collector, lambda _found: False)
    probe_udp: asyncio.DatagramTransport | None = None
    if tdp_ports:
        probe_udp, _ = await loop.create_datagram_endpoint(  # type: ignore[assignment]
            lambda: _Listener(session, None), sock=_udp_socket("0.0.0.0", None)
        )
    tdp_probe = tdp.build_probe()
    gate = asyncio.Semaphore(concurrency)
    done_count = 0

    async def probe(host: str) -> None:
        nonlocal done_count
        async with gate:
            transport = TcpTransport(host, port, timeout=timeout,
                                     connect_timeout=connect_timeout, retries=0)
            try:
                info = await ops.run_async(ops.sysinfo(), transport.query)
                collector.add(DiscoveredPlug.from_sysinfo(host, port, info, via="tcp"))
            except (ProtocolError, DeviceError) as exc:
                collector.ignore("malformed", host, exc)
            except Hs100Error as exc:
                if exc.os_errno == errno_codes.ECONNREFUSED and probe_udp is not None:
                    # Someone is there with 9999 closed. Probing only now (not every
                    # address up front) matters: datagrams to addresses that never
                    # answer ARP sit in the kernel's queue and fill the socket buffer.
                    waiting[host] = loop.create_future()
                    for p in tdp_ports:
                        _send(probe_udp, tdp_probe, (host, p), session)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(waiting[host]), tdp_wait)
            finally:
                await transport.close()
                waiting.pop(host, None)
                done_count += 1
                if progress is not None:
                    progress(done_count, len(addresses))

    try:
        await asyncio.gather(*(probe(a) for a in addresses))
    finally:
        if probe_udp is not None:
            probe_udp.close()
    # TDP answers for hosts whose TCP attempt ended some other way still count;
    # sweep results carry via="tcp" only for the TCP ones.
    return DiscoveryResult(
        plugs=collector.plugs,
        elapsed=time.monotonic() - started,
        probed=[f"tcp sweep of {len(addresses)} addresses, port {port}"],
        ignored=dict(collector.ignored),
        errors=session.errors,
    )


def _fd_budget() -> int:
    """Sockets we may open at once without hitting the file-descriptor limit."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return SWEEP_CONCURRENCY
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(8, soft - 64)


async def find_plug(
    mac: str, *, timeout: float = DEFAULT_DISCOVERY_TIMEOUT, **kw: Any
) -> DiscoveredPlug | None:
    """Broadcast until the plug with ``mac`` answers (used when its address changed)."""
    result = await discover(timeout=timeout, until=lambda f: any(p.mac == mac for p in f), **kw)
    return next((p for p in result.plugs if p.mac == mac), None)

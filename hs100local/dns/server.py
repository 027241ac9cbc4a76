"""The asyncio DNS server: UDP and TCP, access control, rate limit, never silent on errors.

Each query is judged synchronously by :meth:`DnsServer.handle` (ACL, rate limit,
parse, sinkhole, cache) and only a forward awaits. Reactions are fixed: a client
outside the allowed networks gets REFUSED (so this is never an open resolver); a
client over its rate is dropped (answering would make us an amplifier); a packet
with a readable header that does not parse gets FORMERR, anything shorter is
dropped; a non-query opcode gets NOTIMP; an internal error gets SERVFAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

from hs100local.dns import answers, wire
from hs100local.dns.forward import Forwarder, question_end
from hs100local.dns.rules import Sinkhole, normalize_name
from hs100local.errors import TargetError
from hs100local.ratelimit import RateLimiter

__all__ = ["DnsServer", "Forward", "RateLimiter", "default_allow"]

log = logging.getLogger("hs100local.dns")

MAX_TCP_MESSAGE = 65535


class EventSink(Protocol):
    def record(self, kind: str, client: str | None, details: dict[str, Any]) -> None: ...

    def count(self, kind: str, key: str, n: int = 1, *, client: str | None = None) -> None: ...


_TYPE_NAMES: dict[int, str] = {}


def _type_name(qtype: int) -> str:
    """"A", "AAAA", ..., or "TYPE65280" (RFC 3597) for one dnslib has no name for;
    memoized (at most 65,536 entries), a Bimap lookup per query showed in profiles."""
    name = _TYPE_NAMES.get(qtype)
    if name is None:
        name = _TYPE_NAMES[qtype] = str(QTYPE[qtype])
    return name


@dataclass
class Forward:
    """A query the sinkhole does not hold: it goes upstream."""

    data: bytes
    query: wire.Query


@dataclass
class DnsStats:
    queries: int = 0
    sinkholed: int = 0
    forwarded: int = 0
    cached: int = 0
    refused: int = 0
    rate_limited: int = 0
    formerr: int = 0
    servfail: int = 0
    dropped: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)


def _query_of(request: DNSRecord, data: bytes) -> wire.Query:
    q = request.q
    try:
        end = question_end(data)
    except IndexError:
        end = 12
    name = str(q.qname).rstrip(".").lower()
    return wire.Query(request.header.id, int.from_bytes(data[2:4], "big"), name, q.qtype,
                      q.qclass, data[12:end], answers.has_edns(request), 512)


class DnsServer:
    """Sinkhole + forwarder on UDP and TCP ``listen`` addresses."""

    def __init__(
        self,
        sinkhole: Sinkhole,
        forwarder: Forwarder | None,
        listen: Sequence[tuple[str, int]],
        *,
        allow: Iterable[ipaddress.IPv4Network] | None = None,
        events: EventSink | None = None,
        limiter: RateLimiter | None = None,
        tcp_idle: float = 10.0,
        max_tcp: int = 256,
    ) -> None:
        self.sinkhole = sinkhole
        self.forwarder = forwarder
        self.listen = list(listen)
        self.allow = list(allow) if allow is not None else default_allow(self.listen)
        self.events = events
        self.limiter = limiter or RateLimiter()
        self.tcp_idle = tcp_idle
        self.max_tcp = max_tcp
        self.stats = DnsStats()
        self.bound: list[tuple[str, int]] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.base_events.Server] = []
        self._tcp_open = 0
        self._local_cache: dict[str, str] = {}
        self._allowed_cache: dict[str, bool] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ judging

    def allowed(self, client: str) -> bool:
        """Whether ``client`` is in an allowed network (remembered per address: parsing
        it was an eighth of the time of a sinkholed answer)."""
        verdict = self._allowed_cache.get(client)
        if verdict is None:
            try:
                address = ipaddress.IPv4Address(client)
            except ValueError:
                verdict = False
            else:
                verdict = any(address in net for net in self.allow)
            if len(self._allowed_cache) >= 10_000:
                self._allowed_cache.clear()
            self._allowed_cache[client] = verdict
        return verdict

    def local_address(self, bound: str, client: str) -> str:
        """Our address as the client sees it: the bound one, or (bound to 0.0.0.0) the
        source address the kernel picks towards the client (cached)."""
        if bound not in ("0.0.0.0", ""):
            return bound
        cached = self._local_cache.get(client)
        if cached is None:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.connect((client, 53))  # route lookup only, nothing is sent
                cached = probe.getsockname()[0]
            except OSError:
                cached = "0.0.0.0"
            finally:
                probe.close()
            if len(self._local_cache) > 10_000:
                self._local_cache.clear()
            self._local_cache[client] = cached
        return cached

    def _sinkholed(self, client: str, name: str, qtype: int, rule_suffix: str,
                   mode: str) -> None:
        self.stats.sinkholed += 1
        self.stats.by_rule[rule_suffix] = self.stats.by_rule.get(rule_suffix, 0) + 1
        if self.events is not None:
            self.events.record("dns", client, {"name": name, "type": _type_name(qtype),
                                               "action": mode, "rule": rule_suffix})

    def handle(self, data: bytes, client: str, bound: str) -> bytes | Forward | None:
        """Judge one query: a reply, a :class:`Forward`, or None (drop)."""
        self.stats.queries += 1
        try:
            return self._handle(data, client, bound)
        except Exception:  # never stop answering
            log.exception("internal error answering %s", client)
            self.stats.servfail += 1
            return wire.error_from_header(data, RCODE.SERVFAIL)

    def _handle(self, data: bytes, client: str, bound: str) -> bytes | Forward | None:
        if not self.allowed(client):
            self.stats.refused += 1
            return wire.error_from_header(data, RCODE.REFUSED)
        if not self.limiter.allow(client):
            self.stats.rate_limited += 1
            return None
        query = wire.parse_query(data)
        if query is not None:
            rule = self.sinkhole.match(query.name)
            if rule is None:
                return self._forward(data, query, client)
            self._sinkholed(client, query.name, query.qtype, rule.suffix, rule.mode)
            if answers.answers_a(rule, query.qtype, query.qclass):
                address = answers.rule_address(rule, self.local_address(bound, client))
                return wire.a_answer(query, socket.inet_aton(address), self.sinkhole.ttl)
            request = DNSRecord.parse(data)
            return answers.sinkhole_reply(request, rule, self.local_address(bound, client),
                                          self.sinkhole.ttl).pack()
        # Not the simple shape: dnslib decides.
        try:
            request = DNSRecord.parse(data)
        except (DNSError, Exception):
            self.stats.formerr += 1
            return wire.error_from_header(data, RCODE.FORMERR)
        if request.header.qr:
            self.stats.dropped += 1
            return None
        if request.header.opcode != 0:
            return answers.error_reply(request, RCODE.NOTIMP).pack()
        if len(request.questions) != 1:
            self.stats.formerr += 1
            return answers.error_reply(request, RCODE.FORMERR).pack()
        try:
            name = normalize_name(str(request.q.qname)) if str(request.q.qname) != "." else ""
        except TargetError:
            self.stats.formerr += 1
            return answers.error_reply(request, RCODE.FORMERR).pack()
        rule = self.sinkhole.match(name) if name else None
        if rule is not None:
            self._sinkholed(client, name, request.q.qtype, rule.suffix, rule.mode)
            return answers.sinkhole_reply(request, rule, self.local_address(bound, client),
                                          self.sinkhole.ttl).pack()
        if request.rr or request.auth:
            self.stats.formerr += 1
            return answers.error_reply(request, RCODE.FORMERR).pack()
        return self._forward(data, _query_of(request, data), client)

    def _forward(self, data: bytes, query: wire.Query, client: str) -> bytes | Forward:
        if self.forwarder is None:
            self.stats.servfail += 1
            return wire.error_from_header(data, RCODE.SERVFAIL) or b""
        cached = self.forwarder.cached(query)
        if self.events is not None:
            self.events.count("dns", "cached" if cached else "forwarded", client=client)
        if cached is not None:
            self.stats.cached += 1
            return cached
        self.stats.forwarded += 1
        return Forward(data, query)

    async def complete(self, forward: Forward, *, tcp: bool = False) -> bytes | None:
        assert self.forwarder is not None
        reply = await self.forwarder.resolve(forward.data, forward.query)
        if reply is not None and tcp and int.from_bytes(reply[2:4], "big") & wire.TC:
            reply = await self.forwarder.resolve_tcp(forward.data, forward.query) or reply
        if reply is None:
            self.stats.servfail += 1
            return wire.error_from_header(forward.data, RCODE.SERVFAIL)
        return reply

    # ------------------------------------------------------------- sockets

    async def start(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        if self.forwarder is not None and self.forwarder._transport is None:
            await self.forwarder.start()
        try:
            for host, port in self.listen:
                for attempt in range(20):
                    udp, _ = await loop.create_datagram_endpoint(
                        lambda h=host: _UdpServer(self, h), local_addr=(host, port))
                    got = udp.get_extra_info("sockname")[1]  # port 0: same free one for TCP
                    try:
                        tcp = await asyncio.start_server(
                            lambda r, w, h=host: self._tcp_client(r, w, h), host, got,
                            reuse_address=True)
                    except OSError:
                        udp.close()
                        if port or attempt == 19:
                            raise
                        continue  # the ephemeral UDP port is taken on TCP: another one
                    break
                self._udp.append(udp)  # type: ignore[arg-type]
                self._tcp.append(tcp)
                self.bound.append((host, got))
        except OSError:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        for udp in self._udp:
            udp.close()
        self._udp.clear()
        for tcp in self._tcp:
            tcp.close()
        for tcp in self._tcp:
            with contextlib.suppress(Exception):
                await tcp.wait_closed()
        self._tcp.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.forwarder is not None:
            self.forwarder.close()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          bound: str) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        if self._tcp_open >= self.max_tcp:
            writer.close()
            return
        self._tcp_open += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle)
                    length = int.from_bytes(head, "big")
                    data = await asyncio.wait_for(reader.readexactly(length), self.tcp_idle)
                except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                result = self.handle(data, client, bound)
                if isinstance(result, Forward):
                    result = await self.complete(result, tcp=True)
                if result is None:
                    continue
                writer.write(len(result).to_bytes(2, "big") + result)
                try:  # a client that stops reading gets tcp_idle, as one that stops writing
                    await asyncio.wait_for(writer.drain(), self.tcp_idle)
                except (asyncio.TimeoutError, ConnectionError):  # reset while we write
                    return
        except Exception:  # pragma: no cover - logged, the server goes on
            log.exception("TCP client %s", client)
        finally:
            self._tcp_open -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()


def _truncate(reply: bytes, limit: int) -> bytes:
    """Header and question only, TC set: the client retries over TCP."""
    if len(reply) <= limit:
        return reply
    try:
        end = question_end(reply)
    except IndexError:
        end = 12
    flags = int.from_bytes(reply[2:4], "big") | wire.TC
    counts = struct.pack(">HHHH", 1 if end > 12 else 0, 0, 0, 0)
    return reply[:2] + flags.to_bytes(2, "big") + counts + reply[12:end]


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, bound: str) -> None:
        self.server = server
        self.bound = bound
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # asyncio receives each datagram into a fresh 256 KiB buffer; at that size
        # malloc may switch to mmap/munmap per packet (measured: 3x fewer queries/s).
        # No UDP payload exceeds 65,535 bytes.
        if hasattr(transport, "max_size"):
            transport.max_size = 65535  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        result = self.server.handle(data, addr[0], self.bound)
        if result is None:
            return
        if isinstance(result, Forward):
            self.server.spawn(self._forward(result, addr))
            return
        limit = 512
        if len(result) > limit:  # rare (a large cached answer): what may the client take?
            query = wire.parse_query(data)
            limit = query.udp_size if query is not None else limit
        self._send(result, addr, limit)

    def _send(self, reply: bytes, addr: Any, limit: int) -> None:
        if self.transport is not None:
            self.transport.sendto(_truncate(reply, limit), addr)

    async def _forward(self, forward: Forward, addr: Any) -> None:
        reply = await self.server.complete(forward)
        if reply is not None:
            self._send(reply, addr, max(forward.query.udp_size, 512))


def default_allow(listen: Sequence[tuple[str, int]]) -> list[ipaddress.IPv4Network]:
    """Loopback plus the networks of the interfaces we listen on (all, for 0.0.0.0)."""
    from hs100local.interfaces import ipv4_interfaces

    nets = [ipaddress.IPv4Network("127.0.0.0/8")]
    try:
        interfaces = ipv4_interfaces(include_loopback=True)
    except Exception:  # pragma: no cover - netifaces failure: loopback only
        interfaces = []
    for host, _port in listen:
        for iface in interfaces:
            if (host in ("0.0.0.0", "") or iface.address == host) and (
                    iface.network not in nets):
                nets.append(iface.network)
    return nets

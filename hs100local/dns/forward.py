"""Forward queries to upstream resolvers: one socket, remapped IDs, checked replies, a cache.

Every forwarded query gets a fresh random ID on one shared UDP socket (random
source port); a reply is accepted only from the upstream it was sent to, with
that ID and the same question, so an off-path attacker has to guess 32 bits and
the name. An upstream that does not answer within ``attempt_timeout`` is skipped
for the next one; after ``timeout`` in all the caller answers SERVFAIL (never a
made-up NXDOMAIN). Answers are cached by (name, type, class, EDNS) for their
smallest TTL, with the TTLs counted down on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hs100local.dns.wire import HEADER, QR, TC, TYPE_OPT, Query

log = logging.getLogger("hs100local.dns")

CacheKey = tuple[str, int, int, bool]


def skip_name(data: bytes, pos: int) -> int:
    """Offset after the (possibly compressed) name at ``pos``; IndexError if truncated."""
    while True:
        length = data[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length == 0:
            return pos + 1
        pos += 1 + length


def question_end(data: bytes) -> int:
    return skip_name(data, 12) + 4


def ttl_fields(data: bytes) -> tuple[list[int], int]:
    """Offsets of every TTL in the answer, authority and additional sections (OPT
    excluded) and the smallest TTL; ValueError when the reply does not parse."""
    try:
        _id, _flags, qd, an, ns, ar = HEADER.unpack_from(data)
        pos = 12
        for _ in range(qd):
            pos = skip_name(data, pos) + 4
        offsets: list[int] = []
        smallest = 1 << 31
        for _ in range(an + ns + ar):
            pos = skip_name(data, pos)
            rtype, _rclass, ttl, rdlen = struct.unpack_from(">HHIH", data, pos)
            if rtype != TYPE_OPT:
                offsets.append(pos + 4)
                smallest = min(smallest, ttl)
            pos += 10 + rdlen
        if pos > len(data):
            raise ValueError("record runs past the end")
    except (IndexError, struct.error) as exc:
        raise ValueError(f"unparsable reply: {exc}") from None
    return offsets, (0 if smallest == 1 << 31 else smallest)


@dataclass
class _Entry:
    reply: bytes
    stored: float
    expires: float
    offsets: list[int]


@dataclass
class _Pending:
    future: asyncio.Future[bytes]
    upstream: tuple[str, int]
    question: bytes  # lower-cased question section


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.forwarder._on_reply(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("upstream socket: %s", exc)


class Forwarder:
    """Send queries upstream and hand back checked replies (or None on failure)."""

    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        *,
        timeout: float = 3.0,
        attempt_timeout: float = 1.0,
        cache_size: int = 10_000,
        max_ttl: int = 86_400,
    ) -> None:
        if not upstreams:
            raise ValueError("no upstream DNS server")
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.cache_size = cache_size
        self.max_ttl = max_ttl
        self.cache: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self.pending: dict[int, _Pending] = {}
        self.stats = {"forwarded": 0, "cache_hits": 0, "timeouts": 0, "failed": 0,
                      "rejected_replies": 0}
        self._transport: asyncio.DatagramTransport | None = None
        self._rng = random.SystemRandom()
        self._preferred = 0

    async def start(self) -> Forwarder:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(  # type: ignore[assignment]
            lambda: _Upstream(self), local_addr=("0.0.0.0", 0)
        )
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.cancel()
        self.pending.clear()

    # ------------------------------------------------------------ cache

    @staticmethod
    def key(query: Query) -> CacheKey:
        return (query.name, query.qtype, query.qclass, query.edns)

    def cached(self, query: Query, now: float | None = None) -> bytes | None:
        """The cached reply for ``query`` with its ID, its question spelling and
        TTLs counted down; None on a miss or an expired entry."""
        entry = self.cache.get(self.key(query))
        if entry is None:
            return None
        now = time.monotonic() if now is None else now
        if now >= entry.expires:
            del self.cache[self.key(query)]
            return None
        self.cache.move_to_end(self.key(query))
        self.stats["cache_hits"] += 1
        out = bytearray(entry.reply)
        out[0:2] = query.id.to_bytes(2, "big")
        out[12 : 12 + len(query.question)] = query.question
        elapsed = int(now - entry.stored)
        if elapsed:
            for offset in entry.offsets:
                ttl = int.from_bytes(out[offset : offset + 4], "big")
                out[offset : offset + 4] = max(ttl - elapsed, 0).to_bytes(4, "big")
        return bytes(out)

    def store(self, query: Query, reply: bytes, now: float | None = None) -> None:
        flags = int.from_bytes(reply[2:4], "big")
        rcode = flags & 0x0F
        if flags & TC or rcode not in (0, 3):  # only complete NOERROR/NXDOMAIN answers
            return
        try:
            offsets, ttl = ttl_fields(reply)
        except ValueError:
            return
        ttl = min(ttl, self.max_ttl)
        if ttl <= 0:
            return
        now = time.monotonic() if now is None else now
        key = self.key(query)
        self.cache[key] = _Entry(reply, now, now + ttl, offsets)
        self.cache.move_to_end(key)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    # ------------------------------------------------------------ upstream

    def _on_reply(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:
            self.stats["rejected_replies"] += 1
            return
        ident = int.from_bytes(data[0:2], "big")
        pending = self.pending.get(ident)
        flags = int.from_bytes(data[2:4], "big")
        try:
            question = data[12 : question_end(data)].lower()
        except IndexError:
            question = b""
        if (pending is None or pending.future.done() or addr != pending.upstream
                or not flags & QR or question != pending.question):
            self.stats["rejected_replies"] += 1
            log.debug("rejected reply from %s (id %d)", addr, ident)
            return
        pending.future.set_result(data)

    def _new_id(self) -> int:
        while True:
            ident = self._rng.getrandbits(16)
            if ident not in self.pending:
                return ident

    async def resolve(self, data: bytes, query: Query) -> bytes | None:
        """Forward ``data`` (a parsed simple query); the reply with the client's ID."""
        if self._transport is None:
            raise RuntimeError("forwarder not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        question = query.question.lower()
        order = self.upstreams[self._preferred:] + self.upstreams[: self._preferred]
        self.stats["forwarded"] += 1
        attempt = 0
        while loop.time() < deadline:
            upstream = order[attempt % len(order)]
            ident = self._new_id()
            future: asyncio.Future[bytes] = loop.create_future()
            self.pending[ident] = _Pending(future, upstream, question)
            try:
                self._transport.sendto(ident.to_bytes(2, "big") + data[2:], upstream)
                wait = min(self.attempt_timeout, deadline - loop.time())
                reply = await asyncio.wait_for(future, max(wait, 0.001))
            except asyncio.TimeoutError:
                self.stats["timeouts"] += 1
                attempt += 1
                continue
            except asyncio.CancelledError:
                if future.cancelled() and self._transport is None:
                    return None  # close() while waiting: the caller answers SERVFAIL
                raise
            finally:
                self.pending.pop(ident, None)
            self._preferred = self.upstreams.index(upstream)
            out = query.id.to_bytes(2, "big") + reply[2:]
            self.store(query, out)
            return out
        self.stats["failed"] += 1
        return None

    async def resolve_tcp(self, data: bytes, query: Query) -> bytes | None:
        """For a reply too large for UDP: ask the preferred upstream over TCP."""
        upstream = self.upstreams[self._preferred]
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*upstream), self.attempt_timeout)
        except (OSError, asyncio.TimeoutError):
            return None
        try:
            writer.write(len(data).to_bytes(2, "big") + data)
            length = int.from_bytes(
                await asyncio.wait_for(reader.readexactly(2), self.timeout), "big")
            reply = await asyncio.wait_for(reader.readexactly(length), self.timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if reply[:2] != data[:2] or reply[12 : question_end(reply)].lower() != (
                query.question.lower()):
            return None
        self.store(query, reply)
        return reply


def system_upstreams(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The IPv4 ``nameserver`` entries of resolv.conf (the default upstreams)."""
    import ipaddress

    found: list[tuple[str, int]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    with contextlib.suppress(ValueError):
                        found.append((str(ipaddress.IPv4Address(parts[1])), 53))
    except OSError:
        return []
    return found


def without_self(upstreams: Sequence[tuple[str, int]],
                 listen: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Drop upstreams that are this server (forwarding to ourselves would loop)."""
    import ipaddress

    from hs100local.interfaces import ipv4_interfaces

    local = {i.address for i in ipv4_interfaces(include_loopback=True)}

    def is_self(host: str, port: int) -> bool:
        for lhost, lport in listen:
            if port != lport:
                continue
            if host == lhost:
                return True
            if lhost == "0.0.0.0" and (host in local or ipaddress.IPv4Address(host).is_loopback):
                return True
        return False

    return [u for u in upstreams if not is_self(*u)]

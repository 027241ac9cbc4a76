"""The asyncio SNTP server: one non-blocking UDP socket per listen address.

It reads with ``recvmsg`` straight from the event loop's reader callback instead
of an asyncio datagram transport, for two reasons: the kernel's receive
timestamp (``SO_TIMESTAMPNS``) is ancillary data, which transports do not pass
on, and it is the honest "receive timestamp" of RFC 5905; and draining up to
``READ_BATCH`` datagrams per wake-up costs one ``epoll_wait`` per batch rather
than per packet.

Reactions are fixed: fewer than 48 bytes, version 0 or > 4, and every mode but
client (3) and symmetric active (1) are dropped, control (6) and private (7)
first of all (the classic amplification vectors); a client over its rate gets a
RATE kiss-o'-death at most every couple of seconds and silence otherwise; an
internal error drops that packet and is logged; nothing stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hs100local.ntp import wire
from hs100local.ntp.clock import ClockState
from hs100local.ratelimit import RateLimiter

log = logging.getLogger("hs100local.ntp")

#: most datagrams handled per reader wake-up before yielding to the loop
READ_BATCH = 64
#: bytes read per datagram: the 48-byte header plus room for extension fields / a MAC
RECV_SIZE = 2048
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python lacks the name
_TIMESPEC_LP64 = struct.Struct("qq")
_TIMESPEC_ILP32 = struct.Struct("ii")


class EventSink(Protocol):
    def record(self, kind: str, client: str | None, details: dict[str, Any]) -> None: ...

    def count(self, kind: str, key: str, n: int = 1, *, client: str | None = None) -> None: ...


@dataclass
class NtpStats:
    received: int = 0
    answered: int = 0
    kiss: int = 0  # RATE kiss-o'-death sent
    rate_limited: int = 0  # over the rate: KoD or silence
    dropped_short: int = 0
    dropped_version: int = 0
    dropped_control: int = 0  # modes 6 and 7
    dropped_mode: int = 0  # other modes we do not answer (server, broadcast, 0, 2)
    errors: int = 0  # internal errors and failed sends


_iso_second: tuple[int, str] = (-1, "")  # the last second formatted (requests cluster)


def iso_utc(unix_ns: int) -> str:
    """``2000-01-01T00:00:05.250Z``; for the event's "what the client believes".

    The formatted second is reused while requests keep coming within it (strftime was
    a third of the cost of recording an event under load)."""
    global _iso_second
    seconds, ns = divmod(unix_ns, 1_000_000_000)
    cached, text = _iso_second
    if cached != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _iso_second = (seconds, text)
    return f"{text}.{ns // 1_000_000:03d}Z"


class NtpServer:
    """SNTP on each ``listen`` (host, port); ``start`` binds, ``close`` stops."""

    def __init__(
        self,
        listen: Sequence[tuple[str, int]],
        *,
        clock: ClockState | None = None,
        events: EventSink | None = None,
        limiter: RateLimiter | None = None,
        kiss_limiter: RateLimiter | None = None,
    ) -> None:
        self.listen = list(listen)
        self.clock = clock or ClockState()
        self.events = events
        self.limiter = limiter or RateLimiter(rate=1.0, burst=8.0)
        # A KoD is no bigger than the request, but is still not sent to every packet
        # of a flood: one per client every 2 s, silence in between.
        self.kiss_limiter = kiss_limiter or RateLimiter(rate=0.5, burst=1.0)
        self.stats = NtpStats()
        self.bound: list[tuple[str, int]] = []
        self._socks: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ judging

    def handle(self, data: bytes, client: str, receive_ns: int) -> bytes | None:
        """The reply to one datagram from ``client`` received at ``receive_ns``, or None."""
        self.stats.received += 1
        try:
            return self._handle(data, client, receive_ns)
        except Exception:  # never stop serving over one packet
            log.exception("internal error answering NTP from %s", client)
            self.stats.errors += 1
            return None

    def _handle(self, data: bytes, client: str, receive_ns: int) -> bytes | None:
        if len(data) < wire.PACKET_SIZE:
            self.stats.dropped_short += 1
            return None
        mode = data[0] & 0x7
        if mode in (wire.MODE_CONTROL, wire.MODE_PRIVATE):
            self.stats.dropped_control += 1  # checked first: not even rate-limit state
            return None
        request = wire.parse_request(data)
        if request is None:
            self.stats.dropped_version += 1
            return None
        if request.mode not in wire.REPLY_MODE:
            self.stats.dropped_mode += 1
            return None
        if not self.limiter.allow(client):
            self.stats.rate_limited += 1
            if self.events is not None:
                self.events.count("ntp", "rate_limited", client=client)
            if self.kiss_limiter.allow(client):
                self.stats.kiss += 1
                return wire.build_kiss(request, b"RATE", self.clock.precision)
            return None
        state = self.clock.current()
        reply = wire.build_reply(request, state, receive_ns, time.time_ns())
        self.stats.answered += 1
        if self.events is not None:
            self._record(request, state, client, receive_ns)
        return reply

    def _record(self, request: wire.Request, state: wire.ServerState, client: str,
                receive_ns: int) -> None:
        """One event per answered request: what the client's clock said is the plug's
        time right now (a plug at 2000-01-01 has just lost power)."""
        client_ns = request.transmit_near(receive_ns)
        self.events.record("ntp", client, {  # type: ignore[union-attr]
            "version": request.version,
            "mode": request.mode,
            "client_time": None if client_ns is None else iso_utc(client_ns),
            "offset_ms": None if client_ns is None else (client_ns - receive_ns) // 1_000_000,
            "stratum": state.stratum,
        })

    # ------------------------------------------------------------- sockets

    async def start(self) -> NtpServer:
        self._loop = asyncio.get_running_loop()
        try:
            for host, port in self.listen:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    except OSError:  # not Linux: time.time_ns() at read instead
                        log.debug("no SO_TIMESTAMPNS; receive times taken at read")
                    sock.bind((host, port))
                    sock.setblocking(False)
                except OSError:
                    sock.close()
                    raise
                self._socks.append(sock)
                self.bound.append((host, sock.getsockname()[1]))
                self._loop.add_reader(sock.fileno(), self._readable, sock)
        except OSError:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        for sock in self._socks:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(READ_BATCH):
            try:
                data, ancillary, _flags, addr = sock.recvmsg(
                    RECV_SIZE, socket.CMSG_SPACE(_TIMESPEC_LP64.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error queued on the socket
                log.debug("NTP receive error: %s", exc)
                return
            receive_ns = _kernel_time(ancillary) or time.time_ns()
            reply = self.handle(data, addr[0], receive_ns)
            if reply is not None:
                try:
                    sock.sendto(reply, addr)
                except OSError as exc:  # a full send buffer or an unroutable client
                    self.stats.errors += 1
                    log.debug("NTP reply to %s failed: %s", addr[0], exc)


def _kernel_time(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The ``SCM_TIMESTAMPNS`` receive time in Unix ns, if the kernel attached one."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            layout = _TIMESPEC_LP64 if len(payload) >= _TIMESPEC_LP64.size else _TIMESPEC_ILP32
            if len(payload) < layout.size:
                return None
            seconds, ns = layout.unpack_from(payload)
            return seconds * 1_000_000_000 + ns
    return None

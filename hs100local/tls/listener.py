"""The cloud listener: where a plug's TLS connection to "its cloud" ends up.

Our DNS responder points the cloud names at us, so a plug that wants its cloud
connects here on TCP 443 or 50443. Every accepted connection becomes exactly one
``tls`` event: the ClientHello's fingerprints (JA3, JA4), SNI, ALPN, versions and
the number of suites offered, then what became of the connection, ``outcome``:

- ``unknown_ca``, ``bad_certificate``, ``certificate_unknown``, ``handshake_failure``,
  ``decrypt_error``, ``protocol_version``, ... (mode "handshake"): the alert the
  *client* sent, named as in RFC 5246/8446. ``unknown_ca`` is what a real plug
  sends: it pins TP-Link's CA, so it is isolated and cannot be intercepted.
- ``no_shared_cipher``, ``wrong_version``, ``unsupported_protocol``,
  ``version_too_low``, ``inappropriate_fallback``: *we* ended the handshake (the
  client offered nothing our OpenSSL accepts); ``tls_error`` is any other TLS
  error, its OpenSSL reason in ``error``.
- ``completed``: the client accepted our self-signed certificate (it checks
  nothing, so it is not a plug); ``tls_version``, ``cipher`` and the application
  data it sent (``app_data_len``, ``app_data_preview`` = hex of the first 64 bytes,
  ``app_data_end`` = closed / timeout / limit / reset / error) are recorded.
- ``logged`` (mode "log": closed after the hello), ``reset`` (mode "reset":
  closed with a TCP RST after the hello).
- ``not_tls``: the first bytes are not a ClientHello; ``reason`` and ``preview``
  (hex of the first 64 bytes) say what they were.
- ``timeout`` (no complete hello within ``hello_timeout``, or no handshake within
  ``handshake_timeout``), ``closed`` (the peer closed first), ``peer_reset`` (the
  peer sent a RST), ``evicted`` (an idle connection, still without its hello,
  closed to make room, see below), ``shutdown`` (the listener stopped), ``error``
  (a socket error, ``error`` names it, or a bug of ours, logged).

The hello fields are present whenever a hello was read; without one, ``received``
says how many bytes had come. The event's time is when the hello was read (when
the connection was accepted if none was), passed to an event store whose
``record`` takes ``at``: the event itself is recorded once the outcome is known,
which for a real plug is one round trip after the hello, at worst
``handshake_timeout`` plus ``app_data_timeout`` later. One event per connection
keeps the event log aggregation simple (identical events in a minute are one row).

How the hello is read: the listener *peeks* (``MSG_PEEK``) instead of reading, so
the bytes stay in the kernel's buffer and OpenSSL, wrapping the very same socket
afterwards, reads the whole hello itself; no replay buffer, no second TLS stack.
Between peeks the socket's ``SO_RCVLOWAT`` is set to the total the parser says it
still needs, so epoll wakes us only when that much has arrived (or the peer shut
down), not for every segment and not in a busy loop over bytes that are already
there (a peeked byte keeps the socket readable); a wake-up with fewer bytes than
asked for means the peer shut down. poll/epoll honour SO_RCVLOWAT on Linux (since
2.6.28); where setting it fails, an incomplete hello is peeked at every
``PEEK_INTERVAL`` instead, and a peer that closes mid-hello is only noticed at
``hello_timeout``.

Limits: every read is bounded in size (16 KiB for the hello, ``max_app_data``
after a completed handshake) and in time (the three timeouts); a client over the
per-address rate (``limiter``) is closed at once with a RST and counted
(``tls``/``rate_limited``), not recorded. At most ``max_connections`` connections
are open; when full, a new connection takes the slot of the oldest one stalled
before its hello — nothing unread in its socket (``evicted``; a slowloris peer
never gets past that stage, and a plug sends its hello within a round trip, so a
fresh plug is served even under a thousand idle connections). A waiting
connection whose hello sits unread is busy, not stalled, and keeps its slot: under
a flood of real clients the new one is refused instead. If no connection is
stalled, the new one is closed at once and counted (``tls``/``over_capacity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import itertools
import logging
import socket
import ssl
import struct
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hs100local.ratelimit import RateLimiter
from hs100local.tls.hello import ClientHello, NotTls, parse_client_hello

log = logging.getLogger("hs100local.tls")

MODES = ("handshake", "log", "reset")
#: most bytes of a ClientHello we wait for (one full TLS record's worth)
HELLO_LIMIT = 16384
#: bytes of application data shown in an event (as hex)
PREVIEW_BYTES = 64
#: most connections accepted per wake-up before yielding to the loop
ACCEPT_BATCH = 64
#: waiting connections looked at, oldest first, for a stalled one to evict
EVICT_SCAN = 16
#: seconds accepting pauses when the process is out of file descriptors
ACCEPT_PAUSE = 0.5
#: seconds between peeks at an incomplete hello where SO_RCVLOWAT cannot be set
PEEK_INTERVAL = 0.02
#: what the plug's TLS 1.0 suites need (OpenSSL 3 refuses them at the default level)
CIPHERS = "DEFAULT:@SECLEVEL=0"
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST

_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_", "TLSV1_")
#: OpenSSL reasons for a handshake we ended ourselves, by short outcome name
_LOCAL_FAILURES = {
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "WRONG_VERSION_NUMBER": "wrong_version",
    "UNSUPPORTED_PROTOCOL": "unsupported_protocol",
    "VERSION_TOO_LOW": "version_too_low",
    "VERSION_TOO_HIGH": "version_too_high",
    "INAPPROPRIATE_FALLBACK": "inappropriate_fallback",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_signature_algorithm",
    "NO_SHARED_SIGNATURE_ALGORITHMS": "no_signature_algorithm",
    "UNEXPECTED_EOF_WHILE_READING": "closed",
}


class EventSink(Protocol):
    def record(self, kind: str, client: str | None, details: dict[str, Any]) -> None: ...

    def count(self, kind: str, key: str, n: int = 1, *, client: str | None = None) -> None: ...


@dataclass
class TlsStats:
    accepted: int = 0
    rate_limited: int = 0  # closed at once, over the per-client rate
    over_capacity: int = 0  # closed at once, every slot busy past its hello
    evicted: int = 0  # idle connections closed to make room (also an outcome)
    accept_errors: int = 0
    errors: int = 0  # internal errors (bugs, logged) and failed event records
    peeks: int = 0  # MSG_PEEK reads of hellos: few per hello unless something spins
    outcomes: dict[str, int] = field(default_factory=dict)  # one per recorded event


class _Conn:
    """One accepted connection and what is known about it so far."""

    __slots__ = ("accepted_at", "cancel_reason", "client", "details", "fd", "hello_at",
                 "local_port", "outcome", "received", "rst", "sock", "task")

    def __init__(self, sock: socket.socket, client: str, local_port: int) -> None:
        self.sock: socket.socket = sock
        self.fd = sock.fileno()
        self.client = client
        self.local_port = local_port
        self.accepted_at = time.time()
        self.hello_at: float | None = None
        self.received = 0  # bytes of the hello seen so far (peeked)
        self.details: dict[str, Any] = {"local_port": local_port}
        self.outcome: str | None = None
        self.cancel_reason: str | None = None
        self.rst = False  # close with a RST rather than a FIN
        self.task: asyncio.Task[None] | None = None


class CloudListener:
    """TLS on each ``listen`` (host, port); ``start`` binds, ``close`` stops.

    ``mode``: "handshake" answers with ``certificate`` (cert, key PEM paths, see
    :func:`hs100local.tls.cert.ensure_certificate`) to learn the client's alert,
    "log" closes after the hello, "reset" sends a RST after the hello (the
    quickest "no" for firmware that reboots when its cloud is silent).
    """

    def __init__(
        self,
        listen: Sequence[tuple[str, int]],
        *,
        mode: str = "handshake",
        certificate: tuple[Path, Path] | None = None,
        events: EventSink | None = None,
        limiter: RateLimiter | None = None,
        max_connections: int = 256,
        hello_timeout: float = 5.0,
        handshake_timeout: float = 10.0,
        max_app_data: int = 65536,
        app_data_timeout: float = 5.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "handshake" and certificate is None:
            raise ValueError("mode 'handshake' needs a certificate (ensure_certificate)")
        if max_connections < 1 or max_app_data < 0:
            raise ValueError("max_connections must be positive, max_app_data not negative")
        self.listen = list(listen)
        self.mode = mode
        self.certificate = certificate
        self.events = events
        # A plug retries its cloud every few seconds at most; a scanner is faster.
        self.limiter = limiter or RateLimiter(rate=1.0, burst=10.0)
        self.max_connections = max_connections
        self.hello_timeout = hello_timeout
        self.handshake_timeout = handshake_timeout
        self.max_app_data = max_app_data
        self.app_data_timeout = app_data_timeout
        self.stats = TlsStats()
        self.bound: list[tuple[str, int]] = []
        self._timed = events is not None and _takes_at(events.record)
        self._context: ssl.SSLContext | None = None
        self._socks: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused: asyncio.TimerHandle | None = None
        self._open: set[_Conn] = set()  # connections holding a slot
        self._waiting: dict[_Conn, None] = {}  # holding a slot, no hello yet; oldest first
        self._tasks: set[asyncio.Task[None]] = set()  # every connection task not finished

    @property
    def open_connections(self) -> int:
        return len(self._open)

    # ------------------------------------------------------------- sockets

    async def start(self) -> CloudListener:
        self._loop = asyncio.get_running_loop()
        if self.mode == "handshake":
            assert self.certificate is not None
            self._context = server_context(*self.certificate)
        try:
            for host, port in self.listen:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((host, port))
                    sock.listen(socket.SOMAXCONN)
                    sock.setblocking(False)
                except OSError:
                    sock.close()
                    raise
                self._socks.append(sock)
                local_port = sock.getsockname()[1]
                self.bound.append((host, local_port))
                self._loop.add_reader(sock.fileno(), self._acceptable, sock, local_port)
        except OSError:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Stop accepting, end every connection (outcome "shutdown"), wait for them."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        for sock in self._socks:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
        tasks = list(self._tasks)
        for conn in list(self._open):
            if conn.task is not None and conn.cancel_reason is None:
                conn.cancel_reason = "shutdown"
                conn.task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _acceptable(self, lsock: socket.socket, local_port: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.stats.accept_errors += 1
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The pending connection stays in the backlog; retrying at once
                    # would spin, so stop accepting for a moment.
                    log.warning("cannot accept TLS connections (%s); pausing %g s",
                                exc, ACCEPT_PAUSE)
                    self._pause()
                    return
                log.debug("accept failed: %s", exc)  # e.g. ECONNABORTED: next one
                continue
            try:
                self._admit(sock, addr[0], local_port)
            except Exception:  # never stop accepting over one connection
                log.exception("internal error admitting %s", addr[0])
                self.stats.errors += 1
                _abort(sock)

    def _pause(self) -> None:
        assert self._loop is not None
        for sock in self._socks:
            self._loop.remove_reader(sock.fileno())

        def resume() -> None:
            self._paused = None
            for sock, (_host, port) in zip(self._socks, self.bound, strict=True):
                self._loop.add_reader(sock.fileno(), self._acceptable, sock, port)  # type: ignore[union-attr]

        self._paused = self._loop.call_later(ACCEPT_PAUSE, resume)

    def _admit(self, sock: socket.socket, client: str, local_port: int) -> None:
        """Take a new connection on, or close it at once (rate, capacity)."""
        self.stats.accepted += 1
        if not self.limiter.allow(client):
            self.stats.rate_limited += 1
            self._count("rate_limited", client)
            _abort(sock)
            return
        if len(self._open) >= self.max_connections and not self._evict_oldest():
            self.stats.over_capacity += 1
            self._count("over_capacity", client)
            _abort(sock)
            return
        sock.setblocking(False)
        conn = _Conn(sock, client, local_port)
        self._open.add(conn)
        self._waiting[conn] = None
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        conn.task = task
        self._tasks.add(task)
        # The done callback, not a finally in _serve, closes and records: a task
        # cancelled before its first step (evicted in the same accept batch) never
        # runs its body at all.
        task.add_done_callback(lambda _task, conn=conn: self._finish(conn))

    def _evict_oldest(self) -> bool:
        """Free the slot of the oldest connection stalled before its hello: one that
        sent nothing its task has not already seen (idle, or a slowloris trickle).

        A connection whose bytes wait unread in its socket is busy, not stalled (under
        a flood, the oldest waiting one is often just accepted, its hello already
        there): it is skipped, and if the first ``EVICT_SCAN`` are all busy nothing is
        evicted and the new connection is the one refused.
        """
        conn = None
        for candidate in itertools.islice(self._waiting, EVICT_SCAN):
            try:
                unread = len(candidate.sock.recv(candidate.received + 1,
                                                 socket.MSG_PEEK | socket.MSG_DONTWAIT))
            except (BlockingIOError, InterruptedError):
                unread = 0
            except OSError:  # reset: its task will find out; the slot is fair game
                unread = 0
            if unread <= candidate.received:
                conn = candidate
                break
        if conn is None:
            return False
        del self._waiting[conn]
        self._open.discard(conn)  # its slot is free now; its task closes the socket
        conn.cancel_reason = "evicted"
        self.stats.evicted += 1
        if conn.task is not None:
            conn.task.cancel()
        return True

    def _count(self, key: str, client: str) -> None:
        if self.events is None:
            return
        try:
            self.events.count("tls", key, client=client)
        except Exception as exc:  # a closed store must not stop the listener
            self.stats.errors += 1
            log.warning("cannot count a TLS %s: %s", key, exc)

    # ---------------------------------------------------------- one connection

    async def _serve(self, conn: _Conn) -> None:
        try:
            conn.outcome = await self._converse(conn)
        except asyncio.CancelledError:
            raise  # the outcome is the cancel reason (see _finish)
        except Exception:
            log.exception("internal error on the TLS connection from %s", conn.client)
            self.stats.errors += 1
            conn.outcome = "error"

    async def _converse(self, conn: _Conn) -> str:
        hello = await self._read_hello(conn)
        self._waiting.pop(conn, None)
        if isinstance(hello, str):
            return hello
        conn.hello_at = time.time()
        conn.details.update(hello_details(hello))
        if self.mode == "log":
            _drain(conn.sock)  # read what we peeked, so that close() sends a FIN, not a RST
            return "logged"
        if self.mode == "reset":
            conn.rst = True
            return "reset"
        return await self._handshake(conn)

    async def _read_hello(self, conn: _Conn) -> ClientHello | str:
        """The hello, peeked and left in the socket for OpenSSL, or an outcome."""
        assert self._loop is not None
        sock, details = conn.sock, conn.details
        deadline = self._loop.time() + self.hello_timeout
        low_water = 1
        while True:
            if not await self._ready(conn.fd, False, deadline):
                return "timeout"
            try:
                data = sock.recv(HELLO_LIMIT, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                return _socket_outcome(exc, details)
            self.stats.peeks += 1
            conn.received = len(data)
            if not data:
                return "closed"
            result = parse_client_hello(data, HELLO_LIMIT)
            if isinstance(result, ClientHello):
                _set_low_water(sock, 1)  # OpenSSL reads record by record from here
                return result
            if isinstance(result, NotTls):
                details["reason"] = result.reason
                details["preview"] = result.preview
                _set_low_water(sock, 1)
                _drain(sock)
                return "not_tls"
            if len(data) < low_water:
                # Readable with less than the low-water mark: the peer shut down.
                return "closed"
            low_water = min(max(result.needed, len(data) + 1), HELLO_LIMIT)
            if not _set_low_water(sock, low_water):
                # The socket stays readable over the bytes we peeked: look again at
                # a slow pace instead of spinning (an early close is then only seen
                # as a timeout).
                low_water = 0
                await asyncio.sleep(PEEK_INTERVAL)

    async def _handshake(self, conn: _Conn) -> str:
        assert self._loop is not None and self._context is not None
        details = conn.details
        deadline = self._loop.time() + self.handshake_timeout
        try:
            tls = self._context.wrap_socket(conn.sock, server_side=True,
                                            do_handshake_on_connect=False)
        except OSError as exc:  # the peer is gone already (ENOTCONN)
            return _socket_outcome(exc, details)
        conn.sock = tls
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    write = False
                except ssl.SSLWantWriteError:
                    write = True
                if not await self._ready(conn.fd, write, deadline):
                    return "timeout"
        except ssl.SSLError as exc:
            return _ssl_outcome(exc, details)
        except OSError as exc:
            return _socket_outcome(exc, details)
        details["tls_version"] = tls.version()
        cipher = tls.cipher()
        details["cipher"] = cipher[0] if cipher else None
        await self._read_app_data(conn, tls)
        return "completed"

    async def _read_app_data(self, conn: _Conn, tls: ssl.SSLSocket) -> None:
        """Up to ``max_app_data`` bytes of what a client that completed the handshake
        sends, until it closes, goes quiet for ``app_data_timeout``, or the limit."""
        assert self._loop is not None
        deadline = self._loop.time() + self.app_data_timeout
        data = bytearray()
        end = "limit"
        while len(data) < self.max_app_data:
            try:
                chunk = tls.recv(min(16384, self.max_app_data - len(data)))
            except ssl.SSLWantReadError:
                write = False
            except ssl.SSLWantWriteError:
                write = True
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                end = "closed"
                break
            except ConnectionResetError:
                end = "reset"
                break
            except (ssl.SSLError, OSError) as exc:
                end = "error"
                conn.details["error"] = getattr(exc, "reason", None) or _errno_name(exc)
                break
            else:
                if not chunk:
                    end = "closed"
                    break
                data += chunk
                continue
            if not await self._ready(conn.fd, write, deadline):
                end = "timeout"
                break
        conn.details["app_data_len"] = len(data)
        conn.details["app_data_preview"] = bytes(data[:PREVIEW_BYTES]).hex()
        conn.details["app_data_end"] = end
        if end == "limit":
            conn.rst = True  # unread data is left: the kernel resets anyway, say so

    async def _ready(self, fd: int, write: bool, deadline: float) -> bool:
        """Wait until ``fd`` is readable (writable); False once ``deadline`` passed."""
        loop = self._loop
        assert loop is not None
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        waiter = loop.create_future()
        if write:
            loop.add_writer(fd, _wake, waiter, True)
        else:
            loop.add_reader(fd, _wake, waiter, True)
        timer = loop.call_later(remaining, _wake, waiter, False)
        try:
            return await waiter
        finally:
            timer.cancel()
            if write:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    def _finish(self, conn: _Conn) -> None:
        """Record the connection's one event, then close its socket; never raises.

        In that order, so that a peer that sees the close can rely on the event
        being recorded (and so can a test)."""
        self._open.discard(conn)
        self._waiting.pop(conn, None)
        if conn.task is not None:
            self._tasks.discard(conn.task)
        outcome = conn.outcome or conn.cancel_reason or "shutdown"
        self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
        try:
            self._record(conn, outcome)
        finally:
            if conn.rst:
                _abort(conn.sock)
            else:
                with contextlib.suppress(OSError):
                    conn.sock.close()

    def _record(self, conn: _Conn, outcome: str) -> None:
        if self.events is None:
            return
        details = conn.details
        if conn.hello_at is None and "preview" not in details:
            details["received"] = conn.received  # how far a hello got, if any
        details["outcome"] = outcome
        at = conn.hello_at if conn.hello_at is not None else conn.accepted_at
        try:
            if self._timed:
                self.events.record("tls", conn.client, details, at=at)  # type: ignore[call-arg]
            else:
                self.events.record("tls", conn.client, details)
        except Exception as exc:  # a closed or failing store must not stop the listener
            self.stats.errors += 1
            log.warning("cannot record the TLS connection from %s: %s", conn.client, exc)


# ------------------------------------------------------------------ helpers


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context that still talks to a 2015 plug: TLS 1.0 and its old suites
    (security level 0), our self-signed certificate, no session tickets."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # "TLSv1 is deprecated": the plugs speak it anyway
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers(CIPHERS)
    context.num_tickets = 0  # nobody resumes; saves a message per TLS 1.3 handshake
    context.load_cert_chain(str(cert), str(key))
    return context


def hello_details(hello: ClientHello) -> dict[str, Any]:
    """The event fields of a hello: what tells one TLS client from another, without
    the full lists (``ja3`` carries the suites and extensions in order)."""
    summary = hello.as_dict()
    details = {key: summary[key] for key in (
        "sni", "alpn", "version", "record_version", "client_version", "supported_versions")}
    details["ciphers"] = len(hello.cipher_suites)
    details["ja3"] = summary["ja3"]
    details["ja3_hash"] = summary["ja3_hash"]
    details["ja4"] = summary["ja4"]
    if hello.sslv2:
        details["sslv2"] = True
    return details


def _ssl_outcome(exc: ssl.SSLError, details: dict[str, Any]) -> str:
    """The short outcome for a failed handshake: the client's alert if it sent one."""
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "closed"
    reason = exc.reason or ""
    if reason in _LOCAL_FAILURES:
        return _LOCAL_FAILURES[reason]
    for prefix in _ALERT_PREFIXES:
        if reason.startswith(prefix):
            return reason[len(prefix):].lower()
    details["error"] = reason or str(exc)
    return "tls_error"


def _socket_outcome(exc: OSError, details: dict[str, Any]) -> str:
    if isinstance(exc, ConnectionResetError):
        return "peer_reset"
    if isinstance(exc, BrokenPipeError) or exc.errno == errno.ENOTCONN:
        return "closed"
    details["error"] = _errno_name(exc)
    return "error"


def _errno_name(exc: BaseException) -> str:
    number = getattr(exc, "errno", None)
    return errno.errorcode.get(number, str(exc)) if isinstance(number, int) else str(exc)


def _wake(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


def _set_low_water(sock: socket.socket, size: int) -> bool:
    """Wake the reader only once ``size`` bytes are waiting (or the peer shut down);
    False where the system refuses."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    except OSError:
        return False
    return True


def _drain(sock: socket.socket) -> None:
    """Read (and drop) what is waiting, at most one hello's worth, non-blocking."""
    with contextlib.suppress(OSError):
        sock.recv(HELLO_LIMIT)


def _abort(sock: socket.socket) -> None:
    """Close with a RST: immediate for the peer, no TIME_WAIT for us."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    with contextlib.suppress(OSError):
        sock.close()


def _takes_at(record: Any) -> bool:
    """Whether the sink's ``record`` accepts ``at=`` (the EventStore does), so that
    the event carries the hello's time rather than the outcome's."""
    try:
        parameters = inspect.signature(record).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "at" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)

"""What an emulated plug does towards the internet: NTP time and its cloud connection.

A real HS110 that has just been powered on (``shared/docs/plug-facts.md``) looks up
one name of a rotating NTP list, sends *one* SNTP request and takes the first valid
answer, moving to the next name on NXDOMAIN or silence; and it keeps trying to open
TLS to its cloud server, which it trusts only with a certificate from TP-Link's
private CA. :class:`PlugCloud` does the same for an :class:`EmulatedPlug`, so that
the companion's DNS responder, NTP server and cloud listener can be tried on an
emulator exactly as they would meet a plug.

Public API::

    settings = CloudSettings(dns=("192.168.1.2", 53))      # the plug's DHCP DNS server
    cloud = PlugCloud(plug, settings, source="192.168.1.77")  # the emulator's own address
    task = asyncio.create_task(cloud.run())                 # until cancelled
    await cloud.synced.wait()                               # the clock was set from NTP
    await cloud.wait_until(lambda s: s.outcomes.get("unknown_ca", 0) >= 1)
    cloud.stats                                             # counters, see CloudStats

:class:`CloudSettings` fields: ``dns`` (IPv4 address, port) of the DNS server;
``cloud_port`` (443; 50443 is the other real one); ``retry`` seconds between cloud
attempts, after a lost cloud connection, and after a pass over the whole NTP list
failed (60); ``keepalive`` seconds between keepalives (236, as captured);
``ca_file`` the PEM the plug trusts (None: a throwaway CA made at start whose key is
thrown away, so that no server at all can be trusted, like a plug whose CA is
TP-Link's); ``ntp_names`` (:data:`DEFAULT_NTP_NAMES`; empty = no time sync);
``ntp_port`` (123); ``resync`` seconds between syncs once synced (3600);
``timeout`` seconds for each DNS answer, NTP answer, TCP connect and TLS handshake (5).

Run it on the emulator's event loop (the plug's state is not thread-safe). After a
power cut (:meth:`EmulatedPlug.power_cycle`) a real plug boots anew: cancel
:meth:`PlugCloud.run` and start it again (the same object may run again; its stats
go on counting, and the NTP rotation goes on where it stood).

Time: the DNS query is an A query over UDP (dnslib) from a connected socket, so only
the server's answers are read; an answer must carry our ID and question, anything
else is ignored until ``timeout``. CNAMEs inside the answer are followed (at most 8).
The SNTP request is version 4, mode 3, and its transmit timestamp is the plug's own
clock (2000-01-01 after power-on, which is what our NTP server then records), with
random low bits. A reply counts only if its originate timestamp is that field byte
for byte (else it is ignored as stale or spoofed); one that matches but has mode ≠ 4,
stratum 0 (kiss-o'-death) or > 15, leap indicator 3 or a zero transmit timestamp is
invalid and the next name is tried. The clock is set to the server's transmit time
plus half the round trip (minus the server's own hold time) with
:meth:`EmulatedPlug.sync_clock`, in the plug's current zone.

Cloud: the server is ``plug.cloud["server"]`` at each attempt (``cnCloud.set_server_url``
changes it; an IPv4 literal is used without DNS). The TLS ClientHello is the plug's
kind: TLS 1.2 offered in a TLS 1.0 (0x0301) record, **no SNI**, no ALPN, no
supported_versions, and a long suite list (:data:`PLUG_CIPHERS`; with Debian's OpenSSL
3.0.19: 77 values, 76 suites plus the renegotiation SCSV 0x00ff: ECDHE, DHE and RSA
key exchange with AES-GCM/CCM, ChaCha20, ARIA, Camellia, AES-CBC and NULL encryption;
OpenSSL leaves PSK/SRP suites out of a hello without credentials; anonymous suites are
excluded because they would let a server skip its certificate and with it the CA
pinning), extensions ec_point_formats, supported_groups, session_ticket,
encrypt_then_mac, extended_master_secret, signature_algorithms and padding (JA3
``14f6cea05c623972824f84997c5a7c56``, JA4 ``t12i770700_96739f059994_a9cca239c6e0``
there). The real plug's ~74 include RC4, EXPORT and 3DES suites, which OpenSSL 3 no
longer sends (3DES is not even built here), so the fingerprint is plug-*like*, not the
plug's; the count and the versions depend on the local OpenSSL. The
certificate must chain to ``ca_file``; the host name is not checked (there is no
SNI and the plug asks by address); its dates are checked against this host's clock,
not the plug's (OpenSSL through :mod:`ssl` cannot be given another time), so a plug
still at 2000-01-01 accepts a certificate a real one might find not yet valid. A
certificate from anyone else makes OpenSSL send the ``unknown_ca`` alert, which
reaches the server before the socket closes (the TLS runs over memory BIOs, so every
byte goes through our own bounded, timed reads and writes and cancellation is
immediate).

When the handshake completes, the plug registers and then sends keepalives, and
``plug.cloud["cld_connection"]`` is 1 until the connection ends. **The messages are an
invented stand-in** (no capture of the real protocol exists): each is a 4-byte
big-endian length and a UTF-8 JSON object, at most :data:`MAX_MESSAGE` bytes::

    {"method": "helloCloud", "params": {"deviceId", "hwId", "oemId", "mac", "model",
                                        "hwVer", "fwVer", "alias"}}
    {"method": "keepAlive", "params": {"deviceId"}}

Whatever the server sends back is read in the same framing and only counted; a
length over the limit or a message that is not a JSON object ends the connection.

Source address: with ``source`` (the address the emulator listens on) every DNS, NTP
and TLS socket is bound to it, so the companion sees the traffic come from the plug.
A wildcard source (0.0.0.0, ::, "") binds nothing, and a loopback source is not used
towards a non-loopback server (the kernel could not route it).

Outcomes (``CloudStats.outcomes``, one per cloud attempt; ``time_outcomes``, one per
NTP name tried): ``connected``; the alert we sent for a rejected certificate
(``unknown_ca``, ``bad_certificate``, ``certificate_expired``, ...); ``server_alert``,
``not_tls`` (the server does not speak TLS), ``tls_error``, ``closed``, ``reset``,
``refused``, ``timeout``, ``unreachable``, ``socket_error``; from DNS ``nxdomain``,
``nodata``, ``dns_timeout``, ``dns_refused``, ``dns_error``, ``bad_name``;
``bind_error`` (the source address is not ours); for time also ``synced``,
``ntp_timeout``, ``ntp_invalid``, ``ntp_refused``, ``ntp_error``. ``error`` is a bug
of ours (logged with its traceback; the loop goes on). A connected session that ends
counts in ``disconnects`` (``closed``, ``reset``, ``timeout``, ``oversized``,
``bad_message``, ``tls_error``, ``socket_error``). Each attempt logs one INFO line on
``hs100local.emulator.cloud``, e.g. ``cloud: n-devs.tplinkcloud.com -> 198.18.0.10:443:
certificate not from our CA (unknown_ca sent); retry in 60 s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import struct
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hs100local.emulator.plug import EmulatedPlug

log = logging.getLogger("hs100local.emulator.cloud")
T = TypeVar("T")

#: the names a plug rotates through (plug-facts: pool.ntp.org incl. numbered and
#: regional, the NIST names, s1b.time.edu.cn, cn.pool.ntp.org)
DEFAULT_NTP_NAMES = (
    "0.pool.ntp.org",
    "1.pool.ntp.org",
    "time-a.nist.gov",
    "time-b.nist.gov",
    "time.nist.gov",
    "s1b.time.edu.cn",
    "0.cn.pool.ntp.org",
    "2.pool.ntp.org",
    "europe.pool.ntp.org",
)
#: a long list like the plug's; no anonymous suites (they would bypass the pinning);
#: level 0 so that OpenSSL 3 still offers SHA-1/3DES suites and TLS 1.0
PLUG_CIPHERS = "ALL:COMPLEMENTOFALL:!aNULL:@SECLEVEL=0"
#: largest cloud message either way (4-byte length + JSON)
MAX_MESSAGE = 16384
#: bytes read per NTP datagram (48 + extension fields; more is not NTP)
NTP_RECV = 1024
#: bytes read from the TLS socket at a time (one full TLS record)
TLS_RECV = 16384 + 2048
#: most bytes a server may send before the handshake completes (certificates included)
HANDSHAKE_LIMIT = 131072
#: seconds given to flushing the alert after a failed handshake
ALERT_FLUSH = 1.0
_WILDCARDS = ("", "0.0.0.0", "::")
_NTP_UNIX_OFFSET = 2_208_988_800
#: X509 verify codes -> the alert OpenSSL sends for them (ssl_verify_alarm_type)
_VERIFY_ALERTS = {
    2: "unknown_ca", 18: "unknown_ca", 19: "unknown_ca", 20: "unknown_ca",
    21: "unknown_ca", 22: "unknown_ca", 24: "unknown_ca", 25: "unknown_ca",
    7: "bad_certificate", 9: "bad_certificate", 10: "certificate_expired",
    23: "certificate_revoked", 26: "unsupported_certificate",
}
_NOT_TLS_REASONS = frozenset((
    "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
    "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNEXPECTED_RECORD",
))
_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")


@dataclass(frozen=True)
class CloudSettings:
    """How the emulated plug reaches time and cloud (see the module docstring)."""

    dns: tuple[str, int]
    cloud_port: int = 443
    retry: float = 60.0
    keepalive: float = 236.0
    ca_file: Path | None = None
    ntp_names: tuple[str, ...] = DEFAULT_NTP_NAMES
    ntp_port: int = 123
    resync: float = 3600.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        host, port = self.dns
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"DNS server {host!r}: want an IPv4 address") from None
        for name, value in (("DNS", port), ("cloud", self.cloud_port), ("NTP", self.ntp_port)):
            if not isinstance(value, int) or not 1 <= value <= 65535:
                raise ValueError(f"{name} port {value!r}: want 1-65535")
        for name in ("retry", "keepalive", "resync", "timeout"):
            if not getattr(self, name) > 0:  # also rejects NaN
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        names = tuple(self.ntp_names)
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"NTP names must be non-empty strings: {names!r}")
        object.__setattr__(self, "ntp_names", names)
        object.__setattr__(self, "dns", (host, port))
        if self.ca_file is not None:
            object.__setattr__(self, "ca_file", Path(self.ca_file))


@dataclass
class CloudStats:
    """Counters for tests and logs; a dict counts outcomes by their short name."""

    dns_queries: int = 0
    ntp_requests: int = 0
    ntp_syncs: int = 0
    last_sync: tuple[str, str] | None = None  # (NTP name, address) of the latest sync
    time_outcomes: dict[str, int] = field(default_factory=dict)  # one per NTP name tried
    cloud_attempts: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # one per cloud attempt
    last_cloud_peer: tuple[str, int] | None = None  # (address, port) last tried
    registrations: int = 0
    keepalives: int = 0
    messages_received: int = 0
    disconnects: dict[str, int] = field(default_factory=dict)  # connected sessions ended
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Failed(Exception):
    """One step failed: ``reason`` is the short outcome, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ------------------------------------------------------------------ sockets


def bind_address(source: str | None, destination: str) -> str | None:
    """The local address to bind for talking to ``destination``, or None for the
    kernel's choice: the emulator's own address unless it is a wildcard, not IPv4,
    or loopback while the destination is not (that could not be routed)."""
    if source is None or source in _WILDCARDS:
        return None
    try:
        src = ipaddress.ip_address(source)
        dst = ipaddress.ip_address(destination)
    except ValueError:
        return None
    if src.version != 4 or dst.version != 4 or (src.is_loopback and not dst.is_loopback):
        return None
    return source


def _socket(kind: int, destination: str, source: str | None) -> socket.socket:
    """A non-blocking IPv4 socket, bound to the plug's address when it has one."""
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setblocking(False)
        local = bind_address(source, destination)
        if local is not None:
            sock.bind((local, 0))
    except OSError as exc:
        sock.close()
        raise _Failed("bind_error", f"cannot bind to {source}: {exc.strerror or exc}") from None
    return sock


def _left(deadline: float) -> float:
    return max(0.0, deadline - asyncio.get_running_loop().time())


async def _within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` that never swallows a cancellation: before Python 3.12,
    wait_for returns the inner result when it completed in the same loop iteration
    as the cancel, and the client would carry on after ``run()`` was cancelled (seen
    when a cloud answer arrived as the test stopped us). Either way, the inner socket
    operation has finished its cleanup (its reader removed) before this returns, so
    the next read on the socket cannot race it."""
    inner = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({inner}, timeout=timeout)
    except asyncio.CancelledError:
        inner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({inner})
        raise
    if not done:
        inner.cancel()
        await asyncio.wait({inner})
        if inner.cancelled():
            raise asyncio.TimeoutError
    return inner.result()  # it may have finished as it was being cancelled: keep its data


async def _datagram_exchange(
    sock: socket.socket, packet: bytes, size: int, timeout: float,
    accept: Callable[[bytes], Any],
) -> Any:
    """Send ``packet`` once on the connected UDP ``sock``, then read datagrams (at most
    ``size`` bytes each) until ``accept`` returns something other than None, or the
    time is up (asyncio.TimeoutError). Unrelated datagrams never end the wait early."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, packet)
    deadline = loop.time() + timeout
    while True:
        data = await _within(loop.sock_recv(sock, size), _left(deadline))
        result = accept(data)
        if result is not None:
            return result


# ---------------------------------------------------------------------- DNS


async def resolve_a(name: str, server: tuple[str, int], *, source: str | None = None,
                    timeout: float = 5.0) -> str:
    """The first IPv4 address of ``name`` from ``server`` (one A query over UDP with
    :func:`hs100local.dns.client.lookup_a`, CNAMEs inside the answer followed); raises
    ``_Failed`` (nxdomain, nodata, dns_timeout, dns_refused, dns_error, bad_name)."""
    from hs100local.dns.client import LookupTimeout, lookup_a

    host, port = server
    try:
        found = await lookup_a(server, name, timeout=timeout,
                               source=bind_address(source, host))
    except LookupTimeout:
        raise _Failed("dns_timeout", f"no answer from DNS {host}:{port} in {timeout:g} s") from None
    except ConnectionRefusedError:
        raise _Failed("dns_refused", f"DNS {host}:{port} refused (port closed)") from None
    except OSError as exc:
        raise _Failed("dns_error", f"DNS {host}:{port}: {exc.strerror or exc}") from None
    except Exception:  # dnslib raises several types for a name it cannot encode
        raise _Failed("bad_name", f"{name!r} is not a DNS name") from None
    if found.rcode == "NXDOMAIN":
        raise _Failed("nxdomain", f"{name}: NXDOMAIN")
    if found.rcode != "NOERROR":
        raise _Failed("dns_error", f"{name}: {found.rcode}")
    if not found.addresses:
        raise _Failed("nodata", f"{name}: no A record")
    return found.addresses[0]


# ---------------------------------------------------------------------- NTP


def _ntp_bytes(unix_time: float) -> bytes:
    """A 64-bit NTP timestamp (era arithmetic: fine after 2036) with random low bits,
    so that an off-path sender cannot guess the originate field it must echo."""
    from hs100local.ntp import wire

    return wire.to_ntp(int(unix_time * 1e9))[:6] + os.urandom(2)


def _ntp_seconds(raw: bytes, pivot: float) -> float:
    from hs100local.ntp import wire

    return wire.from_ntp(raw, int(pivot * 1e9)) / 1e9


def _sntp_reply(data: bytes, transmit: bytes) -> tuple[bytes, bytes] | str | None:
    """(receive, transmit) raw timestamps of a valid answer to ``transmit``; a string
    saying why an answer to it is invalid; None for a datagram that is no answer to it."""
    if len(data) < 48 or data[24:32] != transmit:
        return None
    leap, mode, stratum = data[0] >> 6, data[0] & 0x7, data[1]
    if mode != 4:
        return f"mode {mode} is not a server reply"
    if stratum == 0:
        return f"kiss-o'-death {data[12:16].decode('ascii', 'replace')!r}"
    if stratum > 15:
        return f"stratum {stratum}: the server is not synchronised"
    if leap == 3:
        return "leap indicator 3: the server is not synchronised"
    if data[40:48] == bytes(8):
        return "zero transmit timestamp"
    return data[32:40], data[40:48]


async def sntp_time(address: str, port: int, *, plug_time: float, source: str | None = None,
                    timeout: float = 5.0) -> float:
    """Ask ``address:port`` once; return the true time (Unix seconds) at the moment this
    returns. ``plug_time`` is the plug's clock now (it goes into the request)."""
    loop = asyncio.get_running_loop()
    transmit = _ntp_bytes(plug_time)
    request = bytes([0x23]) + bytes(39) + transmit  # LI 0, version 4, mode 3 (client)
    sock = _socket(socket.SOCK_DGRAM, address, source)
    where = f"{address}:{port}"
    try:
        sock.connect((address, port))
        sent = loop.time()
        result = await _datagram_exchange(
            sock, request, NTP_RECV, timeout, lambda data: _sntp_reply(data, transmit))
        arrived = loop.time()
    except asyncio.TimeoutError:
        raise _Failed("ntp_timeout", f"no NTP answer from {where} in {timeout:g} s") from None
    except ConnectionRefusedError:
        raise _Failed("ntp_refused", f"NTP {where} refused (port closed)") from None
    except OSError as exc:
        raise _Failed("ntp_error", f"NTP {where}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    if isinstance(result, str):
        raise _Failed("ntp_invalid", f"NTP {where}: {result}")
    server_received, server_sent = (_ntp_seconds(raw, plug_time) for raw in result)
    hold = max(0.0, server_sent - server_received)
    delay = max(0.0, (arrived - sent) - hold)
    return server_sent + delay / 2 + (loop.time() - arrived)


# ---------------------------------------------------------------------- TLS


def plug_context(ca_pem: bytes | str) -> ssl.SSLContext:
    """A TLS client context like the plug's: TLS 1.0-1.2, :data:`PLUG_CIPHERS`, trusting
    only ``ca_pem`` (one or more PEM certificates), no host name check (no SNI)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    with warnings.catch_warnings():  # "TLSv1 is deprecated": the plug offers it anyway
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(PLUG_CIPHERS)
    pem = ca_pem.decode("ascii") if isinstance(ca_pem, bytes) else ca_pem
    context.load_verify_locations(cadata=pem)
    return context


def throwaway_ca_pem() -> bytes:
    """A new self-signed CA certificate whose private key is discarded at once: a
    client pinned to it can never be served a trusted certificate, which is a real
    plug's situation against anything but TP-Link's cloud (EC P-256: quick to make)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from hs100local.tls.cert import self_signed

    start = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    return self_signed(ec.generate_private_key(ec.SECP256R1()),
                       "hs100local emulated plug CA (throwaway)", start,
                       start + datetime.timedelta(days=365 * 60),
                       [(x509.BasicConstraints(ca=True, path_length=None), True)])


class _TlsChannel:
    """TLS over a connected non-blocking socket through memory BIOs: every byte goes
    through our own reads (bounded in size and time) and writes, the alert of a
    failed handshake is sent before we close, and any wait is cancellable at once."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_side=False,
                                    server_hostname=None)
        self._loop = asyncio.get_running_loop()

    async def _flush(self, timeout: float) -> None:
        data = self._outgoing.read()
        if data:
            await _within(self._loop.sock_sendall(self._sock, data), timeout)

    async def _fill(self, timeout: float) -> int:
        data = await _within(self._loop.sock_recv(self._sock, TLS_RECV), timeout)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        return len(data)

    async def handshake(self, timeout: float) -> None:
        """Complete the handshake within ``timeout``; raises ssl.SSLError (its alert
        already sent), asyncio.TimeoutError, OSError or ``_Failed`` (too much data)."""
        deadline = self._loop.time() + timeout
        received = 0
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush(_left(deadline))
                if received > HANDSHAKE_LIMIT:
                    raise _Failed("tls_error",
                                  f"over {HANDSHAKE_LIMIT} bytes of handshake") from None
                received += await self._fill(_left(deadline))
            except ssl.SSLError:
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    await self._flush(ALERT_FLUSH)  # the alert: unknown_ca and friends
                raise
        await self._flush(_left(deadline))

    async def send(self, data: bytes, timeout: float) -> None:
        self.tls.write(data)
        await self._flush(timeout)

    async def receive(self, timeout: float) -> bytes:
        """Some application data (at most one record's worth) within ``timeout``, else
        asyncio.TimeoutError; ssl.SSLZeroReturnError/SSLEOFError when the server closed."""
        deadline = self._loop.time() + timeout
        while True:
            try:
                data = self.tls.read(TLS_RECV)
            except ssl.SSLWantReadError:
                await self._flush(_left(deadline))  # e.g. a renegotiation's answer
                await self._fill(_left(deadline))
                continue
            if not data:
                raise ssl.SSLZeroReturnError("closed")
            return data

    def description(self) -> str:
        return f"{self.tls.version()} {(self.tls.cipher() or ('?',))[0]}"


def _handshake_failure(exc: BaseException, timeout: float) -> _Failed:
    """What a failed handshake is called: the alert we sent, or what the server did."""
    if isinstance(exc, _Failed):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return _Failed("timeout", f"no TLS handshake in {timeout:g} s")
    if isinstance(exc, ssl.SSLCertVerificationError):
        alert = _VERIFY_ALERTS.get(exc.verify_code or 0, "certificate_unknown")
        if alert == "unknown_ca":
            return _Failed(alert, "certificate not from our CA (unknown_ca sent)")
        return _Failed(alert, f"certificate rejected: {exc.verify_message} ({alert} sent)")
    if isinstance(exc, ssl.SSLError):
        return _session_failure(exc)
    if isinstance(exc, ConnectionResetError):
        return _Failed("reset", "reset by the server during the handshake")
    if isinstance(exc, OSError):
        return _Failed("socket_error", f"socket error: {exc.strerror or exc}")
    raise exc


def _session_failure(exc: ssl.SSLError) -> _Failed:
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return _Failed("closed", "closed by the server")
    reason = exc.reason or ""
    if reason == "UNEXPECTED_EOF_WHILE_READING":
        return _Failed("closed", "closed by the server")
    if reason in _NOT_TLS_REASONS:
        return _Failed("not_tls", f"the server does not speak TLS ({reason.lower()})")
    for prefix in _ALERT_PREFIXES:
        if reason.startswith(prefix):
            return _Failed("server_alert", f"the server sent alert {reason[len(prefix):].lower()}")
    return _Failed("tls_error", f"TLS error: {reason.lower() or exc}")


def _io_failure(exc: OSError) -> _Failed:
    """What an error while talking to a connected server means, as an outcome."""
    if isinstance(exc, ssl.SSLError):
        return _session_failure(exc)
    if isinstance(exc, ConnectionResetError):
        return _Failed("reset", "reset by the server")
    return _Failed("socket_error", f"socket error: {exc.strerror or exc}")


def frame(message: dict[str, Any]) -> bytes:
    """One cloud message on the wire: 4-byte big-endian length, then compact JSON."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack(">I", len(body)) + body


class _Frames:
    """Splits the server's byte stream into messages; the buffer never holds more
    than one message under the limit plus one read."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buffer += data
        messages = []
        while len(self.buffer) >= 4:
            (size,) = struct.unpack_from(">I", self.buffer)
            if size > self.limit:
                raise _Failed("oversized",
                              f"the server announced {size} bytes (limit {self.limit})")
            if len(self.buffer) < 4 + size:
                break
            body = bytes(self.buffer[4 : 4 + size])
            del self.buffer[: 4 + size]
            try:
                message = json.loads(body)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                raise _Failed("bad_message", "the server sent a message that is not a JSON object")
            messages.append(message)
        return messages


# -------------------------------------------------------------------- client


class PlugCloud:
    """Time and cloud for one emulated plug; :meth:`run` until cancelled.

    ``source``: the address the emulator listens on; outgoing sockets are bound to it
    (see :func:`bind_address`). ``synced`` is set once the clock was set from NTP;
    ``connected`` is set while a cloud session is up. :meth:`wait_until` waits for any
    condition on :attr:`stats` without polling.
    """

    def __init__(self, plug: EmulatedPlug, settings: CloudSettings,
                 source: str | None = None) -> None:
        self.plug = plug
        self.settings = settings
        self.source = source
        self.stats = CloudStats()
        self.synced = asyncio.Event()
        self.connected = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._ntp_next = 0
        self._context: ssl.SSLContext | None = None
        if settings.ca_file is not None:  # a bad file fails here, not in a loop later
            self._context = plug_context(settings.ca_file.read_bytes())

    # ---------------------------------------------------------- running

    async def run(self) -> None:
        """Keep time and try the cloud, side by side (a real plug keeps trying both),
        until cancelled; the time loop sends its first query first."""
        if self._context is None:
            self._context = plug_context(await asyncio.to_thread(throwaway_ca_pem))
        tasks = [asyncio.ensure_future(self._time_loop())]
        await asyncio.sleep(0)  # let the time loop's first DNS query go out first
        tasks.append(asyncio.ensure_future(self._cloud_loop()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._set_connection(False)

    async def wait_until(self, condition: Callable[[CloudStats], bool],
                         timeout: float | None = 10.0) -> CloudStats:
        """Return the stats once ``condition(stats)`` holds (checked after every change
        of the stats or of ``plug.cloud``); asyncio.TimeoutError after ``timeout``."""

        async def wait() -> None:
            while not condition(self.stats):
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter

        await _within(wait(), timeout)
        return self.stats

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1
        self._changed()

    async def _resolve(self, name: str) -> str:
        """An IPv4 literal as is, else the A record from the configured DNS server."""
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv4Address(name))
        self.stats.dns_queries += 1
        self._changed()
        return await resolve_a(name, self.settings.dns, source=self.source,
                               timeout=self.settings.timeout)

    # ------------------------------------------------------------- time

    async def _time_loop(self) -> None:
        names = self.settings.ntp_names
        while names:
            if await self._sync_pass():
                delay = self.settings.resync
            else:
                delay = self.settings.retry
                log.info("time: none of %d NTP names gave the time; retry in %s s",
                         len(names), _secs(delay))
            await asyncio.sleep(delay)

    async def _sync_pass(self) -> bool:
        """Try the names in turn, from where the rotation stands, until one answers."""
        names = self.settings.ntp_names
        for _ in range(len(names)):
            name = names[self._ntp_next % len(names)]
            self._ntp_next += 1
            try:
                await self._sync_from(name)
                return True
            except _Failed as exc:
                self.stats.last_error = f"time: {exc}"
                self._count(self.stats.time_outcomes, exc.reason)
                log.info("time: %s", exc)
            except Exception as exc:  # a bug of ours: keep the loop alive
                self.stats.last_error = f"time: internal error: {exc!r}"
                self._count(self.stats.time_outcomes, "error")
                log.exception("time: internal error asking %s", name)
        return False

    async def _sync_from(self, name: str) -> None:
        address = await self._resolve(name)
        port = self.settings.ntp_port
        self.stats.ntp_requests += 1
        self._changed()
        plug = self.plug
        now = await sntp_time(address, port, plug_time=plug.clock() + plug.clock_offset,
                              source=self.source, timeout=self.settings.timeout)
        before = plug.plug_now()
        plug.sync_clock(now)
        self.stats.ntp_syncs += 1
        self.stats.last_sync = (name, address)
        self.synced.set()
        self._count(self.stats.time_outcomes, "synced")
        log.info("time: %s -> %s:%d: clock set to %s (it read %s); next sync in %s s", name,
                 address, port, plug.plug_now().isoformat(timespec="seconds"),
                 before.isoformat(timespec="seconds"), _secs(self.settings.resync))

    # ------------------------------------------------------------ cloud

    async def _cloud_loop(self) -> None:
        while True:
            await self._cloud_attempt()
            await asyncio.sleep(self.settings.retry)

    async def _cloud_attempt(self) -> None:
        """One attempt: resolve, connect, handshake, and if it is our cloud, stay
        registered until the connection ends. Logs one line for the outcome."""
        server = str(self.plug.cloud.get("server") or "")
        where = server
        self.stats.cloud_attempts += 1
        self._changed()
        retry = f"retry in {_secs(self.settings.retry)} s"
        try:
            address = await self._resolve(server)
            port = self.settings.cloud_port
            where = f"{address}:{port}" if address == server else f"{server} -> {address}:{port}"
            self.stats.last_cloud_peer = (address, port)
            await self._session(address, where)
        except _Failed as exc:
            self.stats.last_error = f"cloud: {where}: {exc}"
            log.info("cloud: %s: %s; %s", where, exc, retry)
        except Exception as exc:  # a bug of ours: keep the loop alive
            self.stats.last_error = f"cloud: {where}: internal error: {exc!r}"
            self._count(self.stats.outcomes, "error")
            log.exception("cloud: %s: internal error; %s", where, retry)

    async def _session(self, address: str, where: str) -> None:
        """Connect and handshake (counting the attempt's outcome), then converse; the
        ``_Failed`` raised at the end is the attempt's failure or the session's end."""
        try:
            sock = await self._connect(address)
        except _Failed as exc:
            self._count(self.stats.outcomes, exc.reason)
            raise
        try:
            channel = _TlsChannel(sock, self._tls_context())
            try:
                await channel.handshake(self.settings.timeout)
            except (ssl.SSLError, OSError, asyncio.TimeoutError, _Failed) as exc:
                failure = _handshake_failure(exc, self.settings.timeout)
                self._count(self.stats.outcomes, failure.reason)
                raise failure from None
            self._count(self.stats.outcomes, "connected")
            log.info("cloud: %s: connected (%s)", where, channel.description())
            try:
                await self._converse(channel)
            except _Failed as exc:
                self._count(self.stats.disconnects, exc.reason)
                raise _Failed(exc.reason, f"connection lost: {exc}") from None
        finally:
            sock.close()
            self._set_connection(False)

    def _tls_context(self) -> ssl.SSLContext:
        assert self._context is not None, "run() makes the context first"
        return self._context

    async def _connect(self, address: str) -> socket.socket:
        loop = asyncio.get_running_loop()
        port, timeout = self.settings.cloud_port, self.settings.timeout
        sock = _socket(socket.SOCK_STREAM, address, self.source)
        try:
            await _within(loop.sock_connect(sock, (address, port)), timeout)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, ConnectionRefusedError):
                raise _Failed("refused", "connection refused") from None
            if isinstance(exc, asyncio.TimeoutError):
                raise _Failed("timeout", f"no TCP connection in {timeout:g} s") from None
            if isinstance(exc, OSError):
                raise _Failed("unreachable", f"cannot connect: {exc.strerror or exc}") from None
            raise
        return sock

    async def _converse(self, channel: _TlsChannel) -> None:
        """Register, then a keepalive every ``keepalive`` seconds, reading whatever the
        server sends in between; returns only by raising ``_Failed``."""
        loop = asyncio.get_running_loop()
        timeout, interval = self.settings.timeout, self.settings.keepalive
        frames = _Frames()
        await self._send(channel, self._registration(), timeout)
        self.stats.registrations += 1
        self._set_connection(True)  # notifies
        due = loop.time() + interval
        while True:
            wait = due - loop.time()
            if wait <= 0:
                await self._send(channel, self._keepalive(), timeout)
                self.stats.keepalives += 1
                self._changed()
                due = loop.time() + interval
                continue
            try:
                data = await channel.receive(wait)
            except asyncio.TimeoutError:
                continue  # nothing came before the next keepalive is due
            except OSError as exc:
                raise _io_failure(exc) from None
            for message in frames.feed(data):
                self.stats.messages_received += 1
                self._changed()
                log.debug("cloud: the server says %.200s", json.dumps(message))

    async def _send(self, channel: _TlsChannel, message: dict[str, Any], timeout: float) -> None:
        try:
            await channel.send(frame(message), timeout)
        except asyncio.TimeoutError:
            raise _Failed("timeout", f"the server took no data for {timeout:g} s") from None
        except OSError as exc:
            raise _io_failure(exc) from None

    def _registration(self) -> dict[str, Any]:
        info = self.plug.get_sysinfo({})
        return {"method": "helloCloud", "params": {
            "deviceId": info["deviceId"], "hwId": info["hwId"], "oemId": info["oemId"],
            "mac": info["mac"], "model": info["model"], "hwVer": info["hw_ver"],
            "fwVer": info["sw_ver"], "alias": info["alias"]}}

    def _keepalive(self) -> dict[str, Any]:
        return {"method": "keepAlive", "params": {"deviceId": self.plug.device_id}}

    def _set_connection(self, up: bool) -> None:
        """``cnCloud.get_info`` shows the session: cld_connection 1 while it is up."""
        self.plug.cloud["cld_connection"] = int(up)
        if up:
            self.connected.set()
        else:
            self.connected.clear()
        self._changed()


def _secs(value: float) -> str:
    return f"{value:g}"

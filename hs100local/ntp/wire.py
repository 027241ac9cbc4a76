"""NTP packets without I/O: parse a request, build a reply or a kiss-o'-death.

Pure functions over bytes, so every field rule of RFC 5905 / RFC 4330 is tested
without a socket. Timestamps are kept in two forms: the 8 raw bytes (the reply's
originate field must be the request's transmit field *byte for byte*, RFC 5905
§8, which is how the client matches and authenticates the answer) and Unix
nanoseconds, converted with era arithmetic so that nothing overflows in 2036.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: seconds from 1900-01-01 (NTP prime epoch) to 1970-01-01 (Unix epoch)
NTP_UNIX_OFFSET = 2_208_988_800
ERA_SECONDS = 1 << 32  # one NTP era, ~136 years
PACKET_SIZE = 48

MODE_SYMMETRIC_ACTIVE = 1
MODE_SYMMETRIC_PASSIVE = 2
MODE_CLIENT = 3
MODE_SERVER = 4
MODE_BROADCAST = 5
MODE_CONTROL = 6  # ntpq: never answered (amplification, information leak)
MODE_PRIVATE = 7  # ntpdc monlist: never answered (the classic amplification attack)

#: the reply mode for each request mode we answer
REPLY_MODE = {MODE_CLIENT: MODE_SERVER, MODE_SYMMETRIC_ACTIVE: MODE_SYMMETRIC_PASSIVE}

LEAP_NONE = 0
LEAP_INSERT = 1
LEAP_DELETE = 2
LEAP_UNSYNCHRONIZED = 3
STRATUM_UNSYNCHRONIZED = 16

_HEADER = struct.Struct(">BBbb")  # li|vn|mode, stratum, poll, precision
_REPLY = struct.Struct(">BBbbII4s8s8sQQ")  # ... root delay, root disp, refid, ref, org, rec, xmt


@dataclass(frozen=True)
class Request:
    """The fields of a client's packet that a server needs."""

    leap: int
    version: int
    mode: int
    stratum: int
    poll: int  # log2 seconds, signed, as sent
    transmit_raw: bytes  # 8 bytes, copied into the reply's originate field

    @property
    def transmit_ns(self) -> int | None:
        """The client's transmit time in Unix ns (era nearest now), None if zero."""
        return None if self.transmit_raw == bytes(8) else from_ntp(self.transmit_raw)

    def transmit_near(self, pivot_ns: int) -> int | None:
        """The client's transmit time in Unix ns, in the era nearest ``pivot_ns``."""
        return None if self.transmit_raw == bytes(8) else from_ntp(self.transmit_raw, pivot_ns)


def parse_request(data: bytes) -> Request | None:
    """The header of an NTP packet, or None when it is not one we could answer.

    None for fewer than 48 bytes (RFC 5905: shorter is not an NTP packet) and for
    version 0 or above 4. Bytes after the 48 (extension fields, a MAC) are ignored:
    we do not authenticate, and an unauthenticated reply is what the client gets.
    """
    if len(data) < PACKET_SIZE:
        return None
    first, stratum, poll, _precision = _HEADER.unpack_from(data)
    version = (first >> 3) & 0x7
    if not 1 <= version <= 4:
        return None
    return Request(first >> 6, version, first & 0x7, stratum, poll, bytes(data[40:48]))


def to_ntp(unix_ns: int) -> bytes:
    """Unix nanoseconds -> 64-bit NTP timestamp (seconds modulo the era, 32-bit fraction).

    The era is implicit on the wire: after 2036-02-07 the seconds wrap to 0 and a
    reader places them by pivot (``from_ntp``); nothing here overflows.
    """
    seconds, ns = divmod(unix_ns, 1_000_000_000)
    fraction = (ns << 32) // 1_000_000_000
    return struct.pack(">II", (seconds + NTP_UNIX_OFFSET) % ERA_SECONDS, fraction)


def from_ntp(raw: bytes, pivot_ns: int | None = None) -> int:
    """64-bit NTP timestamp -> Unix nanoseconds, in the era that puts it nearest
    ``pivot_ns`` (default: now), i.e. correct for anything within 68 years of it."""
    seconds, fraction = struct.unpack(">II", raw)
    if pivot_ns is None:
        import time

        pivot_ns = time.time_ns()
    pivot = pivot_ns // 1_000_000_000 + NTP_UNIX_OFFSET  # pivot in NTP seconds, all eras
    era = (pivot - seconds + ERA_SECONDS // 2) // ERA_SECONDS
    total = era * ERA_SECONDS + seconds - NTP_UNIX_OFFSET
    return total * 1_000_000_000 + ((fraction * 1_000_000_000) >> 32)


def short_format(seconds: float) -> int:
    """Seconds -> NTP short format (16.16 fixed point), saturated at its maximum."""
    value = round(max(0.0, seconds) * 65536)
    return min(value, 0xFFFFFFFF)


def ref_id(text: str) -> bytes:
    """A reference ID: a dotted IPv4 address, or up to 4 ASCII characters (a kiss code
    or a clock name such as LOCL), NUL-padded."""
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts):
        return bytes(int(p) for p in parts)
    raw = text.encode("ascii")
    if not 1 <= len(raw) <= 4:
        raise ValueError(f"reference id {text!r}: want an IPv4 address or 1-4 ASCII characters")
    return raw.ljust(4, b"\0")


@dataclass(frozen=True)
class ServerState:
    """What the server says about its own clock, the same for every reply."""

    leap: int
    stratum: int
    precision: int  # log2 seconds
    root_delay: float  # seconds
    root_dispersion: float  # seconds
    ref_id: bytes  # 4 bytes
    reference_ns: int  # when the clock was last known good; 0 = never


def build_reply(request: Request, state: ServerState, receive_ns: int, transmit_ns: int) -> bytes:
    """The 48-byte answer to ``request`` (a client or symmetric-active packet).

    Version and poll are echoed, originate is the request's transmit field byte for
    byte, receive/transmit are ours. A never-synchronised server (stratum 16) sends
    a zero reference timestamp, as RFC 5905 prescribes for "never".
    """
    mode = REPLY_MODE[request.mode]
    reference = to_ntp(state.reference_ns) if state.reference_ns else bytes(8)
    return _REPLY.pack(
        (state.leap << 6) | (request.version << 3) | mode,
        state.stratum,
        request.poll,
        state.precision,
        short_format(state.root_delay),
        short_format(state.root_dispersion),
        state.ref_id,
        reference,
        request.transmit_raw,
        _ns_to_int(receive_ns),
        _ns_to_int(transmit_ns),
    )


def build_kiss(request: Request, code: bytes = b"RATE", precision: int = -20) -> bytes:
    """A kiss-o'-death (RFC 5905 §7.4): stratum 0, the code as reference ID, LI 3.

    The receive and transmit fields repeat the client's transmit timestamp, so the
    packet passes the client's origin check but carries no time it could use.
    """
    mode = REPLY_MODE[request.mode]
    return _REPLY.pack(
        (LEAP_UNSYNCHRONIZED << 6) | (request.version << 3) | mode,
        0,
        request.poll,
        precision,
        0,
        0,
        code.ljust(4, b"\0")[:4],
        bytes(8),
        request.transmit_raw,
        int.from_bytes(request.transmit_raw, "big"),
        int.from_bytes(request.transmit_raw, "big"),
    )


def _ns_to_int(unix_ns: int) -> int:
    """:func:`to_ntp` as one 64-bit integer (the reply's hot path: no bytes round trip)."""
    seconds, ns = divmod(unix_ns, 1_000_000_000)
    return (((seconds + NTP_UNIX_OFFSET) % ERA_SECONDS) << 32) | ((ns << 32) // 1_000_000_000)

"""The DNS wire format for the hot path: simple queries in, A answers out.

Almost every query a plug (or dig) sends has one question, no answer/authority
records and at most one OPT record. Reading that shape directly and writing the
A answer as bytes costs a few microseconds, against ~35 µs for a dnslib parse and
build; anything else (compression in the question, several questions, unusual
records, trailing bytes) returns ``None`` here and takes the dnslib path, which
handles it fully. Tests check both paths give the same answers.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">HHHHHH")
_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength
#: printable ASCII but space and backslash: a name the fast path may take as it is
_PLAIN_NAME = re.compile(rb"[!-\[\]-~]*")

QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
OPCODE_MASK = 0x7800

TYPE_A = 1
TYPE_OPT = 41
CLASS_IN = 1
EDNS_UDP_SIZE = 1232  # what we advertise (the DNS flag day 2020 recommendation)


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str  # lower case, no final dot ("" for the root)
    qtype: int
    qclass: int
    question: bytes  # the question section exactly as sent (case kept)
    edns: bool
    udp_size: int  # how large a UDP reply the client accepts


def parse_query(data: bytes) -> Query | None:
    """A simple standard query, or None (not simple: let dnslib decide)."""
    if len(data) < 17:
        return None
    ident, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & (QR | OPCODE_MASK) or qd != 1 or an or ns or ar > 1:
        return None
    labels: list[bytes] = []
    pos, end = 12, len(data)
    while True:
        if pos >= end:
            return None
        length = data[pos]
        pos += 1
        if length == 0:
            break
        if length > 63 or pos + length > end:
            return None  # compression pointer or truncated
        labels.append(data[pos : pos + length])
        pos += length
    if pos + 4 > end:
        return None
    qtype, qclass = struct.unpack_from(">HH", data, pos)
    pos += 4
    question = data[12:pos]
    udp_size = 512
    edns = False
    if ar:
        # exactly one OPT: root name, type 41, class = UDP size, rdata as long as said
        if pos + 11 > end or data[pos] != 0:
            return None
        rtype, rclass, _ttl, rdlen = _RR_FIXED.unpack_from(data, pos + 1)
        if rtype != TYPE_OPT or pos + 11 + rdlen != end:
            return None
        udp_size = max(512, rclass)
        edns = True
        pos = end
    if pos != end:
        return None
    joined = b".".join(labels)
    # Only plain names take the fast path: control bytes, spaces, backslashes or a dot
    # inside a label go the slow way, where dnslib escapes them (\\DDD), so a name is
    # recorded the same whichever path served it and cannot carry a line break.
    if joined.count(b".") != len(labels) - 1 or not _PLAIN_NAME.fullmatch(joined):
        return None
    name = joined.decode("ascii").lower()
    return Query(ident, flags, name, qtype, qclass, question, edns, udp_size)


def _opt() -> bytes:
    return b"\x00" + _RR_FIXED.pack(TYPE_OPT, EDNS_UDP_SIZE, 0, 0)


OPT_RECORD = _opt()


def a_answer(query: Query, address: bytes, ttl: int) -> bytes:
    """Authoritative A answer to ``query`` (``address`` as 4 packed bytes)."""
    flags = QR | AA | RA | (query.flags & RD)
    header = HEADER.pack(query.id, flags, 1, 1, 0, 1 if query.edns else 0)
    answer = b"\xc0\x0c" + _RR_FIXED.pack(TYPE_A, CLASS_IN, ttl, 4) + address
    return header + query.question + answer + (OPT_RECORD if query.edns else b"")


def error_from_header(data: bytes, rcode: int) -> bytes | None:
    """A reply with ``rcode`` and no sections, built from the request's header alone.

    For packets dnslib cannot parse: FORMERR when at least the 12-byte header is
    readable and it is a query; None (drop) otherwise, so we never answer answers.
    """
    if len(data) < 12:
        return None
    ident, flags = struct.unpack_from(">HH", data)
    if flags & QR:
        return None
    out_flags = QR | RA | (flags & (OPCODE_MASK | RD)) | (rcode & 0x0F)
    return HEADER.pack(ident, out_flags, 0, 0, 0, 0)


def with_id(reply: bytes, ident: int) -> bytes:
    return ident.to_bytes(2, "big") + reply[2:]

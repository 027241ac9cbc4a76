"""TLS ClientHello without I/O: read what a client sends first, fingerprint it.

A plug's cloud connection never completes against our listener (its certificate
is pinned to TP-Link's private CA), so the ClientHello is all we learn from it:
which TLS stack the firmware has, which suites it offers (RC4, EXPORT, 3DES on an
HS100), whether it sends SNI. This module reads that hello from the first bytes
of a TCP stream and computes the JA3 (Salesforce) and JA4 (FoxIO) fingerprints,
which name a TLS stack independently of addresses and can be compared with
published lists and other tools (Wireshark, Zeek, Suricata).

It is a reader for an event log, not a TLS implementation: strict about framing,
lenient about content. Every length is checked against what contains it, so a
lying length gives :class:`NotTls`, never an exception and never an allocation
larger than the bytes at hand; unknown versions, unknown extensions, empty lists
and repeated extensions are recorded as sent (values of a repeated extension come
from its first occurrence). The caller feeds the bytes received so far and calls
again on :class:`Incomplete`, so a hello split over TCP segments and over several
TLS records (a fragmented handshake message) is read the same as one in a piece.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

#: TLS record content types (RFC 5246 §6.2.1) and the handshake type we want
CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
CONTENT_HEARTBEAT = 24
HANDSHAKE_CLIENT_HELLO = 1

RECORD_HEADER = 5
#: TLSPlaintext.length may not exceed 2^14 (RFC 5246 §6.2.1, RFC 8446 §5.1)
MAX_RECORD = 1 << 14
#: the smallest hello body: version, random, three empty vectors (session id, suites,
#: compression); only a guess for Incomplete.needed before the length is known
_MIN_HELLO = 4 + 2 + 32 + 1 + 2 + 1

EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B

SSL2 = 0x0002
SSL3 = 0x0300
TLS10 = 0x0301
TLS11 = 0x0302
TLS12 = 0x0303
TLS13 = 0x0304

_VERSION_NAMES = {
    SSL2: "SSL 2.0",
    SSL3: "SSL 3.0",
    TLS10: "TLS 1.0",
    TLS11: "TLS 1.1",
    TLS12: "TLS 1.2",
    TLS13: "TLS 1.3",
}
#: JA4's two-character version (FoxIO JA4.md, "TLS and DTLS Version"); others are "00"
_JA4_VERSIONS = {TLS13: "13", TLS12: "12", TLS11: "11", TLS10: "10", SSL3: "s3", SSL2: "s2"}
_JA4_EMPTY = "000000000000"

_RECORD_NAMES = {
    CONTENT_CHANGE_CIPHER_SPEC: "change_cipher_spec",
    CONTENT_ALERT: "alert",
    CONTENT_HANDSHAKE: "handshake",
    CONTENT_APPLICATION_DATA: "application_data",
    CONTENT_HEARTBEAT: "heartbeat",
}
_HANDSHAKE_NAMES = {
    0: "hello_request",
    1: "client_hello",
    2: "server_hello",
    4: "new_session_ticket",
    11: "certificate",
    12: "server_key_exchange",
    16: "client_key_exchange",
    20: "finished",
}
_PREVIEW_BYTES = 64


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values (0x0a0a, 0x1a1a, ... 0xfafa): random placeholders a
    client sprinkles into its lists so servers tolerate unknown values. Both
    fingerprints ignore them, otherwise every connection of Chrome would differ."""
    return value <= 0xFFFF and value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def version_name(version: int) -> str:
    """A protocol version as people write it: "TLS 1.2", "SSL 3.0", "GREASE 0x7a7a",
    "TLS 1.3 draft 28" (0x7f1c), else the hex value."""
    if version in _VERSION_NAMES:
        return _VERSION_NAMES[version]
    if is_grease(version):
        return f"GREASE 0x{version:04x}"
    if version >> 8 == 0x7F:
        return f"TLS 1.3 draft {version & 0xFF}"
    return f"0x{version:04x}"


@dataclass(frozen=True)
class ClientHello:
    """One ClientHello, every list in the order sent with GREASE values kept (the
    fingerprints drop them; the order and the GREASE positions are themselves a trait
    of the client)."""

    record_version: int  # e.g. 0x0301 (TLS 1.0 record layer); 0x0002 for SSLv2-style
    client_version: int  # legacy_version in the hello, e.g. 0x0303
    supported_versions: tuple[int, ...]  # from the extension, in order (GREASE kept)
    session_id: bytes
    cipher_suites: tuple[int, ...]  # in order, GREASE kept; SSLv2: see parse_client_hello
    compression_methods: tuple[int, ...]
    extensions: tuple[int, ...]  # extension types in order, GREASE kept
    sni: str | None  # first host_name; non-ASCII bytes backslash-escaped
    alpn: tuple[str, ...]  # protocol names decoded as Latin-1 (byte for byte, reversible)
    groups: tuple[int, ...]  # supported_groups (formerly elliptic_curves)
    point_formats: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    sslv2: bool  # an SSLv2-compatible CLIENT-HELLO

    def ja3_string(self) -> str:
        """Salesforce's JA3 input: SSLVersion,Ciphers,Extensions,EllipticCurves,
        EllipticCurvePointFormats; decimal values joined by '-', GREASE removed, an
        empty list an empty field (e.g. ``771,49195-47,0-10-11,29-23,0``)."""

        def field(values: tuple[int, ...]) -> str:
            return "-".join(str(v) for v in values if not is_grease(v))

        return ",".join(
            [
                str(self.client_version),
                field(self.cipher_suites),
                field(self.extensions),
                field(self.groups),
                field(self.point_formats),
            ]
        )

    def ja3_hash(self) -> str:
        """The JA3 fingerprint: md5 of :meth:`ja3_string`, lower-case hex."""
        return hashlib.md5(self.ja3_string().encode("ascii"), usedforsecurity=False).hexdigest()

    def ja4(self) -> str:
        """FoxIO's JA4 (TLS over TCP), e.g. ``t13d1516h2_8daaf6152771_e5627efa2ab1``.

        Unlike JA3 it sorts suites and extensions before hashing, so a client that
        shuffles its extension order (Chrome since 110) keeps one fingerprint, and it
        leaves SNI and ALPN out of the extension hash so the same client going to a
        name or to an address differs only in the readable first part.
        """
        a, ciphers, extensions = self._ja4_parts()
        return f"{a}_{_hash12(ciphers)}_{_hash12(extensions)}"

    def ja4_raw(self) -> str:
        """JA4_r: :meth:`ja4` with the hashed strings in clear, for checking by eye."""
        return "_".join(self._ja4_parts())

    def _ja4_parts(self) -> tuple[str, str, str]:
        """JA4_a, the sorted cipher list and the extension/signature string."""
        ciphers = [c for c in self.cipher_suites if not is_grease(c)]
        extensions = [e for e in self.extensions if not is_grease(e)]
        sni = "d" if EXT_SERVER_NAME in extensions else "i"
        first_alpn = self.alpn[0].encode("latin-1") if self.alpn else b""
        a = (
            f"t{_JA4_VERSIONS.get(self.ja4_version, '00')}{sni}"
            f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{_ja4_alpn(first_alpn)}"
        )
        cipher_list = ",".join(sorted(_hex(c)[2:] for c in ciphers))  # SSLv2 specs: 6 digits
        hashed = sorted(f"{e:04x}" for e in extensions if e not in (EXT_SERVER_NAME, EXT_ALPN))
        signatures = [f"{s:04x}" for s in self.signature_algorithms if not is_grease(s)]
        ext_list = ",".join(hashed)
        if hashed and signatures:
            ext_list += "_" + ",".join(signatures)
        return a, cipher_list, ext_list

    @property
    def ja4_version(self) -> int:
        """The version JA4 reports: the highest non-GREASE value of supported_versions,
        else the hello's legacy version (the record version never counts)."""
        offered = [v for v in self.supported_versions if not is_grease(v)]
        return max(offered) if offered else self.client_version

    def as_dict(self) -> dict:
        """JSON-ready summary for the event log: versions by name, suites as integers
        and as hex, signature schemes as hex (as they are written, 0x0403), the other
        code points as integers, the fingerprints, SNI and ALPN."""
        return {
            "sslv2": self.sslv2,
            "record_version": version_name(self.record_version),
            "client_version": version_name(self.client_version),
            "version": version_name(self.ja4_version),
            "supported_versions": [version_name(v) for v in self.supported_versions],
            "sni": self.sni,
            "alpn": list(self.alpn),
            "session_id": self.session_id.hex(),
            "cipher_suites": list(self.cipher_suites),
            "cipher_suites_hex": [_hex(c) for c in self.cipher_suites],
            "compression_methods": list(self.compression_methods),
            "extensions": list(self.extensions),
            "groups": list(self.groups),
            "point_formats": list(self.point_formats),
            "signature_algorithms": [_hex(s) for s in self.signature_algorithms],
            "ja3": self.ja3_string(),
            "ja3_hash": self.ja3_hash(),
            "ja4": self.ja4(),
        }


@dataclass(frozen=True)
class Incomplete:
    """A valid prefix of a hello: call again with more bytes.

    ``needed`` is a lower bound (the smallest hello the bytes so far could still
    become), so a caller may wait for that many bytes without risking a stall.
    """

    needed: int  # at least this many bytes in total before trying again (best estimate)


@dataclass(frozen=True)
class NotTls:
    """The bytes are not (the start of) a ClientHello we can read; log and close."""

    reason: str  # one line, e.g. "not a TLS handshake record (first byte 0x47: HTTP?)"
    preview: str  # the first <= 64 bytes as hex, for the event log


def parse_client_hello(data: bytes, max_size: int = 16384) -> ClientHello | Incomplete | NotTls:
    """The ClientHello at the start of ``data`` (everything received so far).

    ``Incomplete`` while ``data`` is a valid prefix, ``NotTls`` as soon as it cannot
    be one, including when the hello would not be complete within the first
    ``max_size`` bytes (so a peer cannot make us buffer more than that); bytes after
    the hello are ignored. Only the first ``max_size`` bytes are ever looked at.

    Two framings are read: TLS records of content type 22 carrying one handshake
    message of type 1, possibly fragmented over several records; and the
    SSLv2-compatible CLIENT-HELLO (first byte with the high bit set, RFC 6101
    appendix E.2), whose 3-byte cipher specs of the form 0x00XXXX are the 2-byte
    TLS suites and are stored as such, other specs (SSLv2-only kinds) as the 3-byte
    value; it has no extensions.
    """
    try:
        view = bytes(data[: max(max_size, 0)])
        if not view:
            return Incomplete(RECORD_HEADER)
        if view[0] & 0x80:
            result = _parse_sslv2(view, max_size)
        elif view[0] == CONTENT_HANDSHAKE:
            result = _parse_records(view, max_size)
        else:
            return _not_tls(f"not a TLS handshake record ({_first_byte_hint(view)})", view)
    except _Malformed as exc:
        return _not_tls(str(exc), bytes(data[:_PREVIEW_BYTES]))
    if isinstance(result, Incomplete) and (
        result.needed > max_size or len(data) >= max_size
    ):
        return _not_tls(f"hello larger than {max_size} bytes", bytes(data[:_PREVIEW_BYTES]))
    return result


# --- framing ---------------------------------------------------------------------------


class _Malformed(Exception):
    """Internal: the bytes contradict themselves or are not a ClientHello (-> NotTls)."""


def _parse_records(data: bytes, max_size: int) -> ClientHello | Incomplete:
    """Reassemble the first handshake message from TLS records and parse it."""
    body = bytearray()
    total: int | None = None  # 4 + handshake length, once the header is in
    record_version = 0
    pos = 0
    size = len(data)
    while True:
        header = data[pos : pos + RECORD_HEADER]
        if header and header[0] != CONTENT_HANDSHAKE:
            kind = _RECORD_NAMES.get(header[0], "unknown")
            raise _Malformed(
                f"record of type {header[0]} ({kind}) at byte {pos}, before the ClientHello"
                " was complete"
            )
        if len(header) >= 2 and header[1] != 3:
            raise _Malformed(f"record version major {header[1]} (TLS is 3): not TLS")
        wanted = (total if total is not None else _MIN_HELLO) - len(body)
        if len(header) < RECORD_HEADER:
            return Incomplete(pos + RECORD_HEADER + wanted)
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > MAX_RECORD:
            raise _Malformed(f"handshake record length {length} (allowed 1..{MAX_RECORD})")
        if pos == 0:
            record_version = int.from_bytes(header[1:3], "big")
        start, end = pos + RECORD_HEADER, pos + RECORD_HEADER + length
        body += data[start:end]
        if body and body[0] != HANDSHAKE_CLIENT_HELLO:
            name = _HANDSHAKE_NAMES.get(body[0], "unknown")
            raise _Malformed(f"handshake message type {body[0]} ({name}), not a ClientHello")
        if total is None and len(body) >= 4:
            total = 4 + int.from_bytes(body[1:4], "big")
            if total > max_size:
                raise _Malformed(f"hello larger than {max_size} bytes (claims {total - 4})")
        if total is not None and len(body) >= total:
            return _parse_hello(bytes(body[4:total]), record_version)
        if end > size:  # inside this record: the rest of it, then maybe more records
            wanted = (total if total is not None else _MIN_HELLO) - len(body)
            left = end - size
            needed = size + wanted if wanted <= left else end + RECORD_HEADER + wanted - left
            return Incomplete(needed)
        pos = end


def _parse_sslv2(data: bytes, max_size: int) -> ClientHello | Incomplete:
    """An SSLv2-compatible CLIENT-HELLO: 2-byte header (high bit set, 15-bit length),
    msg type 1, version, three lengths, cipher specs, session id, challenge."""
    if len(data) < 2:
        return Incomplete(2 + 9 + 3 + 16)
    length = ((data[0] & 0x7F) << 8) | data[1]
    if len(data) >= 3 and data[2] != HANDSHAKE_CLIENT_HELLO:
        raise _Malformed(
            f"not a TLS handshake record (first byte 0x{data[0]:02x}; as SSLv2, message type"
            f" {data[2]} is not CLIENT-HELLO)"
        )
    if 2 + length > max_size:
        raise _Malformed(f"hello larger than {max_size} bytes (SSLv2 length {length})")
    if length < 9:
        raise _Malformed(f"SSLv2 CLIENT-HELLO length {length}: shorter than its header")
    if len(data) >= 11:
        version, specs, sid, challenge = struct.unpack_from(">HHHH", data, 3)
        if version >> 8 not in (0, 3):
            raise _Malformed(f"SSLv2 CLIENT-HELLO with version 0x{version:04x}")
        if specs == 0 or specs % 3:
            raise _Malformed(f"SSLv2 cipher specs length {specs}: not a positive multiple of 3")
        if sid > 32 or not 16 <= challenge <= 32:
            raise _Malformed(f"SSLv2 session id length {sid} / challenge length {challenge}")
        if 9 + specs + sid + challenge != length:
            raise _Malformed(
                f"SSLv2 lengths 9+{specs}+{sid}+{challenge} do not add up to the record's"
                f" {length}"
            )
    if len(data) < 2 + length:
        return Incomplete(2 + length)
    version, specs, sid, _challenge = struct.unpack_from(">HHHH", data, 3)
    suites = []
    for off in range(11, 11 + specs, 3):
        value = int.from_bytes(data[off : off + 3], "big")
        suites.append(value)  # 0x00XXXX is the TLS suite XXXX, numerically the same
    session_id = data[11 + specs : 11 + specs + sid]
    return ClientHello(
        record_version=SSL2,
        client_version=version,
        supported_versions=(),
        session_id=session_id,
        cipher_suites=tuple(suites),
        compression_methods=(),
        extensions=(),
        sni=None,
        alpn=(),
        groups=(),
        point_formats=(),
        signature_algorithms=(),
        sslv2=True,
    )


# --- the hello body ----------------------------------------------------------------------


class _Reader:
    """A cursor over ``data[pos:end]`` whose every read is checked against ``end``."""

    __slots__ = ("data", "end", "pos", "what")

    def __init__(self, data: bytes, what: str, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.what = what
        self.pos = pos
        self.end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise _Malformed(
                f"{self.what}: {what} needs {n} bytes, {self.remaining} left (lying length)"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str) -> _Reader:
        """A length-prefixed vector (the length ``size`` bytes wide) as a sub-reader."""
        n = self.uint(size, f"{what} length")
        if n > self.remaining:
            raise _Malformed(
                f"{self.what}: {what} length {n} runs past its container ({self.remaining}"
                " bytes left)"
            )
        sub = _Reader(self.data, what, self.pos, self.pos + n)
        self.pos += n
        return sub

    def rest(self) -> bytes:
        return self.take(self.remaining, "rest")

    def uints(self, size: int) -> tuple[int, ...]:
        """The rest as big-endian integers of ``size`` bytes (length must divide)."""
        if self.remaining % size:
            raise _Malformed(f"{self.what}: length {self.remaining} not a multiple of {size}")
        raw = self.rest()
        return tuple(int.from_bytes(raw[i : i + size], "big") for i in range(0, len(raw), size))

    def done(self) -> None:
        if self.remaining:
            raise _Malformed(f"{self.what}: {self.remaining} bytes left over")


def _parse_hello(body: bytes, record_version: int) -> ClientHello:
    """The ClientHello body (after the 4-byte handshake header), RFC 5246 §7.4.1.2 /
    RFC 8446 §4.1.2."""
    r = _Reader(body, "ClientHello")
    client_version = r.uint(2, "client_version")
    r.take(32, "random")
    session_id = r.vector(1, "session_id").rest()
    if len(session_id) > 32:
        raise _Malformed(f"ClientHello: session_id of {len(session_id)} bytes (max 32)")
    cipher_suites = r.vector(2, "cipher_suites").uints(2)
    compression = r.vector(1, "compression_methods").uints(1)
    found: dict[int, _Reader] = {}
    types: list[int] = []
    if r.remaining:  # extensions are optional (TLS 1.0 clients often send none)
        block = r.vector(2, "extensions")
        r.done()
        while block.remaining:
            ext_type = block.uint(2, "extension type")
            ext = block.vector(2, f"extension 0x{ext_type:04x}")
            types.append(ext_type)
            found.setdefault(ext_type, ext)

    sni = _server_name(found[EXT_SERVER_NAME]) if EXT_SERVER_NAME in found else None
    alpn = _alpn(found[EXT_ALPN]) if EXT_ALPN in found else ()
    groups = _list(found, EXT_SUPPORTED_GROUPS, 2, 2)
    point_formats = _list(found, EXT_EC_POINT_FORMATS, 1, 1)
    signatures = _list(found, EXT_SIGNATURE_ALGORITHMS, 2, 2)
    versions = _list(found, EXT_SUPPORTED_VERSIONS, 1, 2)
    return ClientHello(
        record_version=record_version,
        client_version=client_version,
        supported_versions=versions,
        session_id=session_id,
        cipher_suites=cipher_suites,
        compression_methods=compression,
        extensions=tuple(types),
        sni=sni,
        alpn=alpn,
        groups=groups,
        point_formats=point_formats,
        signature_algorithms=signatures,
        sslv2=False,
    )


def _list(
    found: dict[int, _Reader], ext_type: int, length_size: int, item: int
) -> tuple[int, ...]:
    """An extension whose data is one vector of fixed-size integers."""
    if ext_type not in found:
        return ()
    ext = found[ext_type]
    values = ext.vector(length_size, "list").uints(item)
    ext.done()
    return values


def _server_name(ext: _Reader) -> str | None:
    """The first host_name of server_name (RFC 6066 §3). Empty extension data is
    tolerated (it is what a server echoes; a client should not send it)."""
    if not ext.remaining:
        return None
    names = ext.vector(2, "server_name_list")
    ext.done()
    host = None
    while names.remaining:
        name_type = names.uint(1, "name_type")
        name = names.vector(2, "host_name").rest()
        if name_type == 0 and host is None:
            host = name.decode("ascii", "backslashreplace")
    return host


def _alpn(ext: _Reader) -> tuple[str, ...]:
    """The protocol names of ALPN (RFC 7301), Latin-1 so that JA4 can get the bytes
    back exactly (names are ASCII in practice)."""
    names = ext.vector(2, "protocol_name_list")
    ext.done()
    out = []
    while names.remaining:
        out.append(names.vector(1, "protocol_name").rest().decode("latin-1"))
    return tuple(out)


# --- helpers -----------------------------------------------------------------------------


def _hash12(text: str) -> str:
    """First 12 hex digits of sha256; JA4 writes twelve zeros for an empty list."""
    if not text:
        return _JA4_EMPTY
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def _is_alnum(byte: int) -> bool:
    return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _ja4_alpn(first: bytes) -> str:
    """JA4's two ALPN characters: first and last character of the first protocol
    ("h2", "http/1.1" -> "h1", one character twice), "00" for none or an empty name;
    if either end byte is not ASCII alphanumeric, the first and last digits of the
    whole name in hex instead (FoxIO JA4.md, "ALPN Extension Value")."""
    if not first:
        return "00"
    if _is_alnum(first[0]) and _is_alnum(first[-1]):
        return chr(first[0]) + chr(first[-1])
    digits = first.hex()
    return digits[0] + digits[-1]


def _hex(value: int) -> str:
    return f"0x{value:04x}" if value <= 0xFFFF else f"0x{value:06x}"


def _first_byte_hint(data: bytes) -> str:
    """What the first bytes look like, for a one-line reason in the log."""
    first = data[0]
    if first in _RECORD_NAMES:
        return f"first byte 0x{first:02x}: a TLS {_RECORD_NAMES[first]} record"
    if data[:4] == b"SSH-":
        return f"first byte 0x{first:02x}: SSH?"
    if first in b"GPHDOCT":  # GET POST PUT PATCH PRI HEAD DELETE OPTIONS CONNECT TRACE
        return f"first byte 0x{first:02x}: HTTP?"
    if 0x20 <= first < 0x7F:
        return f"first byte 0x{first:02x}: text?"
    return f"first byte 0x{first:02x}"


def _not_tls(reason: str, data: bytes) -> NotTls:
    return NotTls(reason, bytes(data[:_PREVIEW_BYTES]).hex())

"""TDP v2 discovery datagrams (UDP 20002/20004), sans-I/O.

Newer firmware closed port 9999 and speaks KLAP over HTTP; such devices still
answer a TDP v2 probe with a 16-byte header and a JSON ``result`` naming model,
MAC and encryption scheme. We only need to *recognise* them, to tell users why a
plug cannot be controlled locally, so this module builds the probe, parses the
answer, and (for the emulator) builds an answer.

Header ``>BBHHBBII``: version 2, message type, op code (1 = probe), payload
length, flags, padding, a serial, and a CRC32 over the whole datagram computed
with the CRC field set to ``0x5A6B7C8D``. Our probes carry a correct CRC; for
answers we check the version and the declared length but not the CRC, because
how devices compute it on replies is not documented (plug-facts) and a strict
check would only hide real devices.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from hs100local.errors import ProtocolError

TDP_PORTS = (20002, 20004)
HEADER = struct.Struct(">BBHHBBII")
CRC_SEED = 0x5A6B7C8D
VERSION = 2
OP_PROBE = 1
FLAGS = 0x11
MAX_DATAGRAM = 16 * 1024  # real answers are a few hundred bytes


@dataclass(frozen=True)
class TdpHeader:
    version: int
    msg_type: int
    op_code: int
    length: int
    flags: int
    serial: int
    crc: int


def _with_crc(datagram: bytearray) -> bytes:
    datagram[12:16] = CRC_SEED.to_bytes(4, "big")
    datagram[12:16] = zlib.crc32(datagram).to_bytes(4, "big")
    return bytes(datagram)


def build(payload: bytes = b"", *, serial: int | None = None, msg_type: int = 0,
          op_code: int = OP_PROBE, flags: int = FLAGS) -> bytes:
    """A TDP v2 datagram with a correct CRC (a probe when ``payload`` is empty)."""
    if serial is None:
        serial = int.from_bytes(os.urandom(4), "big")
    header = HEADER.pack(VERSION, msg_type, op_code, len(payload), flags, 0, serial, 0)
    return _with_crc(bytearray(header + payload))


def build_probe(serial: int | None = None) -> bytes:
    """The discovery probe: header only, op 1, no payload."""
    return build(serial=serial)


def parse_header(datagram: bytes) -> TdpHeader:
    if len(datagram) < HEADER.size:
        raise ProtocolError(f"TDP datagram too short ({len(datagram)} bytes)")
    version, msg_type, op_code, length, flags, _pad, serial, crc = HEADER.unpack_from(datagram)
    if version != VERSION:
        raise ProtocolError(f"not TDP v2 (version {version})")
    return TdpHeader(version, msg_type, op_code, length, flags, serial, crc)


def crc_ok(datagram: bytes) -> bool:
    """Whether the CRC field matches (our probes always do)."""
    if len(datagram) < HEADER.size:
        return False
    expected = _with_crc(bytearray(datagram))[12:16]
    return datagram[12:16] == expected


def parse_probe(datagram: bytes) -> TdpHeader:
    """Validate a probe strictly (what the emulated KLAP device accepts)."""
    header = parse_header(datagram)
    if header.op_code != OP_PROBE:
        raise ProtocolError(f"TDP op {header.op_code} is not a probe")
    if header.length != len(datagram) - HEADER.size:
        raise ProtocolError("TDP length field does not match the datagram")
    if not crc_ok(datagram):
        raise ProtocolError("TDP CRC mismatch")
    return header


def parse_answer(datagram: bytes) -> dict[str, Any]:
    """The ``result`` object of a device's answer; ProtocolError for anything else."""
    if len(datagram) > MAX_DATAGRAM:
        raise ProtocolError(f"TDP answer too long ({len(datagram)} bytes)")
    header = parse_header(datagram)
    payload = datagram[HEADER.size :]
    if header.length != len(payload):
        raise ProtocolError(
            f"TDP length field says {header.length}, payload has {len(payload)} bytes"
        )
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"TDP answer is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("result"), dict):
        raise ProtocolError("TDP answer has no result object")
    if body.get("error_code", 0) != 0:
        raise ProtocolError(f"TDP answer carries error_code {body.get('error_code')!r}")
    return body["result"]


def build_answer(result: dict[str, Any], serial: int) -> bytes:
    """What a KLAP device sends back (used by the emulator)."""
    payload = json.dumps({"error_code": 0, "result": result}, separators=(",", ":")).encode()
    return build(payload, serial=serial, msg_type=0, op_code=OP_PROBE)

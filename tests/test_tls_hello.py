"""ClientHello parsing and JA3/JA4: hand-built hellos, captured ones, framing, fuzzing.

Hand-built hellos come from the small builder below. Captured ones are real
``openssl s_client`` hellos in ``tests/fixtures/tls/`` whose JA3 (tshark) and JA4
(ja4plus) were computed once by tools no one here wrote; see the README there.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hs100local.tls.hello import (
    ClientHello,
    Incomplete,
    NotTls,
    is_grease,
    parse_client_hello,
    version_name,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tls"

# --- builder ------------------------------------------------------------------------------


def u8(n: int) -> bytes:
    return struct.pack(">B", n)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def vec8(data: bytes) -> bytes:
    return u8(len(data)) + data


def vec16(data: bytes) -> bytes:
    return u16(len(data)) + data


def u16s(values) -> bytes:
    return b"".join(u16(v) for v in values)


def ext(ext_type: int, data: bytes = b"") -> bytes:
    return u16(ext_type) + vec16(data)


def ext_sni(name: bytes | str) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return ext(0x0000, vec16(b"\x00" + vec16(raw)))


def ext_alpn(*names: bytes | str) -> bytes:
    raw = [n.encode() if isinstance(n, str) else n for n in names]
    return ext(0x0010, vec16(b"".join(vec8(n) for n in raw)))


def ext_groups(*groups: int) -> bytes:
    return ext(0x000A, vec16(u16s(groups)))


def ext_point_formats(*formats: int) -> bytes:
    return ext(0x000B, vec8(bytes(formats)))


def ext_sigalgs(*algs: int) -> bytes:
    return ext(0x000D, vec16(u16s(algs)))


def ext_versions(*versions: int) -> bytes:
    return ext(0x002B, vec8(u16s(versions)))


def handshake(
    *,
    version: int = 0x0303,
    random_bytes: bytes = bytes(range(32)),
    session_id: bytes = b"",
    suites=(0xC02F, 0x002F),
    compression: bytes = b"\x00",
    extensions: list[bytes] | None = None,
) -> bytes:
    """A ClientHello handshake message (type, 3-byte length, body); extensions None
    leaves the extensions block out entirely (as TLS 1.0 clients may)."""
    body = u16(version) + random_bytes + vec8(session_id) + vec16(u16s(suites)) + vec8(compression)
    if extensions is not None:
        body += vec16(b"".join(extensions))
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(message: bytes, *, version: int = 0x0301, sizes: list[int] | None = None) -> bytes:
    """``message`` in handshake records, cut into fragments of ``sizes`` (one record
    with everything by default; the last size repeats)."""
    out, pos, sizes = [], 0, list(sizes or [len(message)])
    while pos < len(message):
        size = sizes.pop(0) if len(sizes) > 1 else sizes[0]
        chunk = message[pos : pos + size]
        out.append(b"\x16" + u16(version) + vec16(chunk))
        pos += size
    return b"".join(out)


def hello(**kw) -> bytes:
    sizes = kw.pop("sizes", None)
    record_version = kw.pop("record_version", 0x0301)
    return records(handshake(**kw), version=record_version, sizes=sizes)


def parsed(data: bytes, **kw) -> ClientHello:
    result = parse_client_hello(data, **kw)
    assert isinstance(result, ClientHello), result
    return result


def not_tls(data: bytes, **kw) -> NotTls:
    result = parse_client_hello(data, **kw)
    assert isinstance(result, NotTls), result
    return result


# --- the plug-shaped hello ------------------------------------------------------------------

#: 74 suites in OpenSSL 1.0.1's old DEFAULT order, as an embedded stack of that era
#: sends them: AES/Camellia/SEED, then 3DES, RC4, DES, EXPORT, and the renegotiation SCSV
PLUG_SUITES = (
    0xC030, 0xC02C, 0xC028, 0xC024, 0xC014, 0xC00A, 0xC022, 0xC021, 0x00A3, 0x009F,
    0x006B, 0x006A, 0x0039, 0x0038, 0x0088, 0x0087, 0xC032, 0xC02E, 0xC02A, 0xC026,
    0xC00F, 0xC005, 0x009D, 0x003D, 0x0035, 0x0084, 0xC012, 0xC008, 0xC01C, 0xC01B,
    0x0016, 0x0013, 0xC00D, 0xC003, 0x000A, 0xC02F, 0xC02B, 0xC027, 0xC023, 0xC013,
    0xC009, 0xC01F, 0xC01E, 0x00A2, 0x009E, 0x0067, 0x0040, 0x0033, 0x0032, 0x009A,
    0x0099, 0x0045, 0x0044, 0xC031, 0xC02D, 0xC029, 0xC025, 0xC00E, 0xC004, 0x009C,
    0x003C, 0x002F, 0x0096, 0x0041, 0xC011, 0xC007, 0x0005, 0x0004, 0x0015, 0x0012,
    0x0009, 0x0014, 0x0011, 0x00FF,
)  # fmt: skip
PLUG_RC4 = {0xC011, 0xC007, 0x0005, 0x0004}
PLUG_EXPORT = {0x0014, 0x0011}
PLUG_3DES = {0xC012, 0xC008, 0xC01C, 0xC01B, 0x0016, 0x0013, 0xC00D, 0xC003, 0x000A}
PLUG_GROUPS = (0x000E, 0x000D, 0x0019, 0x000B, 0x000C, 0x0018, 0x0009, 0x000A, 0x0016, 0x0017,
               0x0008, 0x0006, 0x0007, 0x0014, 0x0015, 0x0004, 0x0005, 0x0012, 0x0013, 0x0001,
               0x0002, 0x0003, 0x000F, 0x0010, 0x0011)
PLUG_SIGALGS = (0x0601, 0x0602, 0x0603, 0x0501, 0x0502, 0x0503, 0x0401, 0x0402, 0x0403,
                0x0301, 0x0302, 0x0303, 0x0201, 0x0202, 0x0203)


def plug_hello() -> bytes:
    """Shaped like the plug's (docs: TLS 1.2 in a TLS 1.0 record, no SNI, ~74 suites
    incl. RC4/EXPORT/3DES, no ALPN), with OpenSSL 1.0.1's extensions: ec_point_formats,
    supported_groups, session_ticket, signature_algorithms, heartbeat."""
    return hello(
        record_version=0x0301,
        version=0x0303,
        random_bytes=bytes.fromhex("5a" * 4) + bytes(range(28)),
        suites=PLUG_SUITES,
        extensions=[
            ext_point_formats(0, 1, 2),
            ext_groups(*PLUG_GROUPS),
            ext(0x0023),
            ext_sigalgs(*PLUG_SIGALGS),
            ext(0x000F, b"\x01"),
        ],
    )


def test_plug_hello_fields_and_fingerprints_by_hand():
    h = parsed(plug_hello())
    assert (h.record_version, h.client_version, h.sslv2) == (0x0301, 0x0303, False)
    assert len(h.cipher_suites) == 74 and h.cipher_suites == PLUG_SUITES
    assert set(h.cipher_suites) >= PLUG_RC4 | PLUG_EXPORT | PLUG_3DES
    assert h.sni is None and h.alpn == () and h.supported_versions == ()
    assert h.extensions == (11, 10, 35, 13, 15)
    assert (h.groups, h.point_formats, h.signature_algorithms) == (
        PLUG_GROUPS, (0, 1, 2), PLUG_SIGALGS
    )
    # JA4_a by hand: TCP, TLS 1.2 (no supported_versions: the legacy version),
    # no SNI -> "i", 74 suites, 5 extensions, no ALPN -> "00"
    ja4 = h.ja4()
    assert ja4.startswith("t12i7405" + "00" + "_")
    ciphers = ",".join(sorted(f"{c:04x}" for c in PLUG_SUITES))
    assert ciphers.startswith("0004,0005,0009,000a,0011,0012,0013,0014,0015,0016,002f")
    exts = "000a,000b,000d,000f,0023_" + ",".join(f"{s:04x}" for s in PLUG_SIGALGS)
    b = hashlib.sha256(ciphers.encode()).hexdigest()[:12]
    c = hashlib.sha256(exts.encode()).hexdigest()[:12]
    assert ja4 == f"t12i7405" f"00_{b}_{c}"
    assert h.ja4_raw() == f"t12i740500_{ciphers}_{exts}"
    # JA3 by hand
    ja3 = "771," + "-".join(map(str, PLUG_SUITES)) + ",11-10-35-13-15," + "-".join(
        map(str, PLUG_GROUPS)
    ) + ",0-1-2"
    assert h.ja3_string() == ja3
    assert h.ja3_hash() == hashlib.md5(ja3.encode()).hexdigest()


# --- FoxIO's worked example (JA4.md) ------------------------------------------------------

SPEC_SUITES = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013,
               0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
SPEC_EXT_ORDER = (0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005,
                  0x0023, 0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015)
SPEC_SIGALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)


def spec_extensions(*, grease: bool = False, sigalgs=SPEC_SIGALGS) -> list[bytes]:
    special = {
        0x0000: ext_sni("example.com"),
        0x0010: ext_alpn("h2", "http/1.1"),
        0x000D: ext_sigalgs(*sigalgs),
        0x002B: ext_versions(*((0x7A7A,) if grease else ()), 0x0304, 0x0303),
        0x000A: ext_groups(*((0x2A2A,) if grease else ()), 0x001D, 0x0017, 0x0018),
        0x000B: ext_point_formats(0),
    }
    out = [ext(0x0A0A)] if grease else []
    out += [special.get(t, ext(t, b"\x00" if t == 0x0015 else b"")) for t in SPEC_EXT_ORDER]
    return out + ([ext(0xFAFA, b"\x00")] if grease else [])


def test_foxio_spec_example():
    h = parsed(hello(suites=SPEC_SUITES, extensions=spec_extensions()))
    assert h.ja4() == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert h.ja4_raw() == (
        "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,"
        "cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,"
        "0804,0401,0503,0805,0501,0806,0601"
    )
    assert h.sni == "example.com" and h.alpn == ("h2", "http/1.1")


def test_foxio_spec_example_without_signature_algorithms():
    """JA4.md: no signature algorithms -> the string ends without an underscore."""
    h = parsed(hello(suites=SPEC_SUITES, extensions=spec_extensions(sigalgs=())))
    assert h.ja4() == "t13d1516h2_8daaf6152771_6d807ffa2a79"


def test_grease_is_kept_in_fields_and_ignored_by_fingerprints():
    plain = parsed(hello(suites=SPEC_SUITES, extensions=spec_extensions()))
    greasy = parsed(
        hello(suites=(0x3A3A, *SPEC_SUITES), extensions=spec_extensions(grease=True))
    )
    assert greasy.cipher_suites[0] == 0x3A3A and greasy.extensions[0] == 0x0A0A
    assert greasy.extensions[-1] == 0xFAFA and greasy.supported_versions[0] == 0x7A7A
    assert greasy.groups[0] == 0x2A2A
    assert greasy.ja4() == plain.ja4()
    assert greasy.ja3_string() == plain.ja3_string()
    assert "2570" not in greasy.ja3_string().split(",")[2].split("-")  # 0x0a0a


def test_grease_values():
    assert [v for v in range(0x10000) if is_grease(v)] == [0x0A0A + 0x1010 * i for i in range(16)]
    assert not is_grease(0x0A0A0A)


# --- JA4 details --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ((), "00"),
        ((b"h2",), "h2"),
        ((b"http/1.1", b"h2"), "h1"),
        ((b"a",), "aa"),
        ((b"",), "00"),
        ((b"\xab",), "ab"),
        ((b"\xab\xcd",), "ad"),
        ((b"\x30\xab",), "3b"),
        ((b"\x30\x31\xab\xcd",), "3d"),
        ((b"\x30\xab\xcd\x31",), "01"),
        ((b"h2/",), "6f"),  # '/' at one end: hex "68322f", first and last digit
    ],
)
def test_ja4_alpn_characters(names, expected):
    extensions = [ext_alpn(*names)] if names else []
    h = parsed(hello(extensions=extensions))
    assert h.ja4().split("_")[0][-2:] == expected
    assert h.alpn == tuple(n.decode("latin-1") for n in names)


@pytest.mark.parametrize(
    ("client_version", "versions", "code"),
    [
        (0x0303, (), "12"),
        (0x0301, (), "10"),
        (0x0302, (), "11"),
        (0x0300, (), "s3"),
        (0x0303, (0x5A5A, 0x0304, 0x0303), "13"),
        (0x0303, (0x0303, 0x0304), "13"),  # highest, not first
        (0x0301, (0x8A8A,), "10"),  # only GREASE: the legacy version
        (0x0303, (0x7F1C,), "00"),  # TLS 1.3 draft 28: unknown to JA4
        (0x0305, (), "00"),
    ],
)
def test_ja4_version(client_version, versions, code):
    extensions = [ext_versions(*versions)] if versions else []
    h = parsed(hello(version=client_version, extensions=extensions, record_version=0x0303))
    assert h.ja4()[1:3] == code


def test_ja4_counts_are_capped_at_99_and_empty_lists_are_zeros():
    h = parsed(hello(suites=range(1, 121), extensions=[ext(t) for t in range(100, 220)]))
    assert h.ja4().startswith("t12i9999")
    bare = parsed(hello(suites=(), extensions=None))
    assert bare.ja4() == "t12i000000_000000000000_000000000000"
    assert bare.ja3_string() == "771,,,,"
    only_sni = parsed(hello(extensions=[ext_sni("a.example")]))
    assert only_sni.ja4().endswith("_000000000000")  # SNI is not hashed


def test_ja4_sni_flag_is_the_extension_not_its_content():
    assert parsed(hello(extensions=[ext_sni("10.0.0.1")])).ja4()[3] == "d"
    assert parsed(hello(extensions=[ext(0x0000)])).ja4()[3] == "d"
    assert parsed(hello(extensions=[ext(0x0000)])).sni is None
    assert parsed(hello(extensions=[])).ja4()[3] == "i"


def test_sni_and_alpn_decoding():
    h = parsed(hello(extensions=[ext_sni(b"caf\xc3\xa9.example"), ext_alpn(b"\xff\x00")]))
    assert h.sni == "caf\\xc3\\xa9.example"
    assert h.alpn == ("\xff\x00",)
    assert h.ja4().split("_")[0].endswith("f0")
    two = ext(0x0000, vec16(b"\x01" + vec16(b"other") + b"\x00" + vec16(b"host.example")))
    assert parsed(hello(extensions=[two])).sni == "host.example"


def test_version_names():
    assert [version_name(v) for v in (0x0002, 0x0300, 0x0301, 0x0302, 0x0303, 0x0304)] == [
        "SSL 2.0", "SSL 3.0", "TLS 1.0", "TLS 1.1", "TLS 1.2", "TLS 1.3"
    ]
    assert version_name(0x7F1C) == "TLS 1.3 draft 28"
    assert version_name(0x1A1A) == "GREASE 0x1a1a"
    assert version_name(0x0305) == "0x0305"


def test_as_dict_is_json_ready():
    h = parsed(hello(suites=(0x3A3A, *SPEC_SUITES), extensions=spec_extensions(grease=True),
                     session_id=b"\x01" * 32))
    d = json.loads(json.dumps(h.as_dict()))
    assert d["record_version"] == "TLS 1.0" and d["client_version"] == "TLS 1.2"
    assert d["version"] == "TLS 1.3"
    assert d["supported_versions"] == ["GREASE 0x7a7a", "TLS 1.3", "TLS 1.2"]
    assert d["cipher_suites"][:2] == [0x3A3A, 0x1301]
    assert d["cipher_suites_hex"][:2] == ["0x3a3a", "0x1301"]
    assert d["sni"] == "example.com" and d["alpn"] == ["h2", "http/1.1"]
    assert d["session_id"] == "01" * 32
    assert d["ja4"] == h.ja4() == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert d["ja3"] == h.ja3_string() and d["ja3_hash"] == h.ja3_hash()
    assert d["sslv2"] is False and d["signature_algorithms"][0] == "0x0403"


# --- captured fixtures --------------------------------------------------------------------


def captured() -> list[dict]:
    """The fixtures; none when the file is missing (the capture script imports this
    module to get :func:`plug_hello` before the file exists; the test below fails)."""
    path = FIXTURES / "hellos.json"
    return json.loads(path.read_text())["hellos"] if path.exists() else []


@pytest.mark.parametrize("fixture", captured(), ids=lambda f: f["name"])
def test_captured_hello_fingerprints(fixture):
    data = bytes.fromhex(fixture["hex"])
    h = parsed(data)
    assert h.ja3_string() == fixture["ja3"]
    assert h.ja3_hash() == fixture["ja3_hash"]
    assert h.ja4() == fixture["ja4"]
    assert h.sni == fixture["sni"]
    assert list(h.alpn) == fixture["alpn"]
    assert h.record_version == int(fixture["record_version"], 16)
    assert h.client_version == int(fixture["client_version"], 16)
    assert [version_name(v) for v in h.supported_versions] == fixture["supported_versions"]
    every_prefix_incomplete(data)


def test_captured_fixtures_cover_the_cases():
    names = {f["name"] for f in captured()}
    assert {"openssl-default", "openssl-sni-alpn", "openssl-tls1-aes128", "plug-like"} <= names
    plug = next(f for f in captured() if f["name"] == "plug-like")
    assert bytes.fromhex(plug["hex"]) == plug_hello()  # the tools saw the hello built here


# --- framing: TCP segments and TLS records ------------------------------------------------


def every_prefix_incomplete(data: bytes, **kw) -> None:
    """Each proper prefix is Incomplete with a sane estimate; the whole gives the same
    hello as the whole plus trailing bytes."""
    whole = parse_client_hello(data, **kw)
    assert isinstance(whole, ClientHello)
    for cut in range(len(data)):
        result = parse_client_hello(data[:cut], **kw)
        assert isinstance(result, Incomplete), (cut, result)
        assert cut < result.needed <= len(data), (cut, result.needed, len(data))
    assert parse_client_hello(data + b"\x17\x03\x03\x00\x05hello" + bytes(100), **kw) == whole


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(plug_hello(), id="plug"),
        pytest.param(hello(suites=SPEC_SUITES, extensions=spec_extensions(grease=True)), id="spec"),
        pytest.param(hello(extensions=None), id="no-extensions"),
    ],
)
def test_split_at_every_byte(data):
    every_prefix_incomplete(data)


def test_fed_in_random_tcp_segments():
    data = plug_hello()
    rng = random.Random(7)
    for _ in range(50):
        received = b""
        while True:
            received += data[len(received) : len(received) + rng.randint(1, 60)]
            result = parse_client_hello(received)
            if not isinstance(result, Incomplete):
                break
            assert result.needed > len(received)
        assert result == parsed(data) and received == data


@pytest.mark.parametrize(
    "sizes",
    [[1], [2], [3], [4], [5], [1, 3], [3, 1], [4, 40], [100], [60, 7], [9, 1, 200]],
    ids=str,
)
def test_fragmented_over_records(sizes):
    message = handshake(suites=PLUG_SUITES, extensions=spec_extensions(grease=True))
    one = parsed(records(message))
    data = records(message, sizes=sizes)
    assert data.count(b"\x16\x03\x01") >= len(message) // max(sizes)
    h = parsed(data, max_size=len(data))
    assert h == one
    every_prefix_incomplete(data, max_size=len(data))


def test_record_after_the_hello_may_be_anything():
    data = records(handshake() + b"\x10\x00\x00\x00")  # a second handshake message
    assert parsed(data + b"\x15\x03\x03\x00\x02\x02\x28") == parsed(records(handshake()))


def test_record_versions():
    assert parsed(hello(record_version=0x0300)).record_version == 0x0300
    assert parsed(hello(record_version=0x0303)).record_version == 0x0303
    # the first record's version is reported; later fragments may differ
    message = handshake()
    mixed = records(message[:10], version=0x0301) + records(message[10:], version=0x0303)
    assert parsed(mixed).record_version == 0x0301


# --- SSLv2-compatible hello ---------------------------------------------------------------------


def sslv2_hello(specs=(0x010080, 0x000039, 0x000035, 0x00000A, 0x0000FF), *,
                version=0x0301, session_id=b"", challenge=bytes(range(16))) -> bytes:
    raw_specs = b"".join(s.to_bytes(3, "big") for s in specs)
    body = (b"\x01" + u16(version) + u16(len(raw_specs)) + u16(len(session_id))
            + u16(len(challenge)) + raw_specs + session_id + challenge)
    return u16(0x8000 | len(body)) + body


def test_sslv2_hello():
    h = parsed(sslv2_hello())
    assert h.sslv2 and h.record_version == 0x0002 and h.client_version == 0x0301
    assert h.cipher_suites == (0x010080, 0x39, 0x35, 0x0A, 0xFF)
    assert h.extensions == () and h.compression_methods == () and h.sni is None
    assert h.ja3_string() == "769,65664-57-53-10-255,,,"
    ciphers = "000a,0035,0039,00ff,010080"
    assert h.ja4() == f"t10i050000_{hashlib.sha256(ciphers.encode()).hexdigest()[:12]}_000000000000"
    d = h.as_dict()
    assert d["record_version"] == "SSL 2.0" and d["cipher_suites_hex"][0] == "0x010080"
    every_prefix_incomplete(sslv2_hello())


def test_sslv2_hello_version_2_and_session_id():
    h = parsed(sslv2_hello(version=0x0002, session_id=b"\x07" * 16, challenge=bytes(32)))
    assert h.client_version == 0x0002 and h.session_id == b"\x07" * 16
    assert h.ja4().startswith("t" "s2" "i0500")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (sslv2_hello()[:2] + b"\x02" + sslv2_hello()[3:], "not CLIENT-HELLO"),
        (sslv2_hello(specs=()), "multiple of 3"),
        (sslv2_hello(challenge=b"x" * 8), "challenge"),
        (sslv2_hello(version=0x0101), "version"),
        (b"\x80\x05\x01\x03\x01\x00\x03", "shorter than its header"),
        (sslv2_hello()[:1] + bytes([sslv2_hello()[1] + 1]) + sslv2_hello()[2:], "add up"),
        (b"\xff\xff\x01", "larger than"),
    ],
)
def test_sslv2_malformed(data, reason):
    assert reason in not_tls(data).reason


# --- not TLS ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: devs.tplinkcloud.com\r\n\r\n", "first byte 0x47: HTTP?"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "SSH?"),
        (b"\x15\x03\x03\x00\x02\x02\x30", "first byte 0x15: a TLS alert record"),
        (b"\x17\x03\x03\x00\x10" + bytes(16), "application_data record"),
        (b"\x00\x00\x00\x1d\xd0\xf2\x81\xf8", "first byte 0x00"),  # the plug's own protocol
        (b"\x16\x02\x00\x00\x01", "record version major 2"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "type 2 (server_hello), not a ClientHello"),
        (b"\x16\x03\x01\x00\x04\x0b", "type 11 (certificate)"),
        (b"\x16\x03\x01\x00\x00", "record length 0"),
        (b"\x16\x03\x01\x40\x01", "record length 16385"),
    ],
)
def test_not_tls(data, reason):
    result = not_tls(data)
    assert reason in result.reason
    assert result.preview == data[:64].hex()
    assert "\n" not in result.reason


def test_not_tls_random_bytes_and_long_preview():
    data = bytes([0x3C]) + random.Random(1).randbytes(999)
    result = not_tls(data)
    assert result.reason == "not a TLS handshake record (first byte 0x3c: text?)"
    assert result.preview == data[:64].hex() and len(result.preview) == 128


def test_other_record_before_the_hello_is_complete():
    message = handshake(suites=PLUG_SUITES)
    data = records(message[:50]) + b"\x15\x03\x01\x00\x02\x01\x00" + records(message[50:])
    assert "type 21 (alert)" in not_tls(data).reason


def test_empty_and_tiny_prefixes():
    assert parse_client_hello(b"") == Incomplete(5)
    assert isinstance(parse_client_hello(b"\x16"), Incomplete)
    assert isinstance(parse_client_hello(b"\x80"), Incomplete)


# --- lying lengths and size limits --------------------------------------------------------


def lie(data: bytes, offset: int, value: int, width: int) -> bytes:
    return data[:offset] + value.to_bytes(width, "big") + data[offset + width :]


def test_lying_lengths_each_field():
    """Every length field of a hello with SNI and ALPN, made too large and too small:
    NotTls, never an exception. Offsets are from the builder's layout."""
    data = hello(session_id=b"\x05" * 8, suites=(0x1301, 0x002F),
                 extensions=[ext_sni("a.example"), ext_alpn("h2"), ext_groups(29)])
    h = parsed(data)
    body = 9  # record header 5 + handshake header 4
    sid = body + 2 + 32
    suites = sid + 1 + 8
    comp = suites + 2 + 4
    exts = comp + 1 + 1
    sni_ext = exts + 2
    sni_list = sni_ext + 4
    sni_name = sni_list + 2 + 1
    alpn_ext = sni_ext + 4 + 2 + 1 + 2 + 9
    alpn_list = alpn_ext + 4
    alpn_name = alpn_list + 2
    groups_list = alpn_ext + 4 + 2 + 1 + 2 + 4
    fields = {  # offset: (width, true value)
        sid: (1, 8), suites: (2, 4), comp: (1, 1), exts: (2, len(data) - exts - 2),
        sni_ext + 2: (2, 14), sni_list: (2, 12), sni_name: (2, 9),
        alpn_ext + 2: (2, 5), alpn_list: (2, 3), alpn_name: (1, 2), groups_list: (2, 2),
    }
    for offset, (width, true) in fields.items():
        assert data[offset : offset + width] == true.to_bytes(width, "big"), offset
        for value in {true + 1, true + 2, true - 1, (1 << (8 * width)) - 1} - {true}:
            if value < 0:
                continue
            result = parse_client_hello(lie(data, offset, value, width))
            assert isinstance(result, NotTls), (offset, value, result)
    assert h.extensions == (0, 16, 10)


def test_lying_handshake_length():
    data = hello()
    length = int.from_bytes(data[6:9], "big")
    shorter = lie(data, 6, length - 1, 3)  # body cut: the last vector runs past its end
    assert isinstance(parse_client_hello(shorter), NotTls)
    longer = lie(data, 6, length + 10, 3)  # a valid prefix: waits for more
    assert isinstance(parse_client_hello(longer), Incomplete)
    assert isinstance(parse_client_hello(longer + b"\x15\x03\x01\x00\x02\x02\x28"), NotTls)
    trailing = records(b"\x01" + (length + 3).to_bytes(3, "big") + handshake()[4:] + bytes(3))
    assert "left over" in not_tls(trailing).reason


def test_odd_lengths_of_two_byte_lists():
    message = bytearray(handshake(suites=(0x002F, 0x0035), extensions=None))
    message[4 + 35 : 4 + 37] = b"\x00\x03"  # 3 bytes of suites, compression length eats one
    message[1:4] = (len(message) - 4).to_bytes(3, "big")
    assert isinstance(parse_client_hello(records(bytes(message))), NotTls)
    odd = ext(0x000A, vec16(b"\x00\x1d\x00"))
    assert "multiple of 2" in not_tls(hello(extensions=[odd])).reason


def test_million_byte_claims_are_refused_at_once():
    claim = b"\x16\x03\x01\x00\x04\x01\x10\x00\x00"  # handshake claims 1 MiB
    assert "hello larger than 16384" in not_tls(claim).reason
    assert "record length 65535" in not_tls(b"\x16\x03\x01\xff\xff\x01").reason
    assert "hello larger than" in not_tls(b"\xff\xff\x01\x03\x01").reason  # SSLv2 32 KiB


def test_max_size():
    data = plug_hello()
    assert isinstance(parse_client_hello(data, max_size=len(data)), ClientHello)
    assert "hello larger than" in not_tls(data, max_size=len(data) - 1).reason
    assert "hello larger than 100 bytes" in not_tls(data[:50], max_size=100).reason
    # many tiny records: the wire size counts, not only the handshake length
    message = handshake(suites=PLUG_SUITES)
    tiny = records(message, sizes=[1])
    assert len(message) < 1000 < len(tiny)
    assert "hello larger than" in not_tls(tiny, max_size=1000).reason
    assert isinstance(parse_client_hello(tiny, max_size=len(tiny)), ClientHello)


def test_session_id_over_32_bytes():
    assert "session_id of 33" in not_tls(hello(session_id=b"x" * 33)).reason


# --- fuzz ---------------------------------------------------------------------------------


def check_never_raises(data: bytes, max_size: int = 16384) -> None:
    result = parse_client_hello(data, max_size=max_size)
    if isinstance(result, Incomplete):
        assert len(data) < result.needed <= max_size
    elif isinstance(result, NotTls):
        assert result.preview == data[:64].hex() and "\n" not in result.reason
    else:
        assert isinstance(result, ClientHello)
        json.dumps(result.as_dict())
        result.ja4()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(data):
    check_never_raises(data)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x03", b"\x80", b"\x81", b"\x16\x03\x01\x00"]),
       st.binary(max_size=400))
def test_fuzz_plausible_starts(start, rest):
    check_never_raises(start + rest)


VALID = [plug_hello(), hello(suites=SPEC_SUITES, extensions=spec_extensions(grease=True)),
         sslv2_hello(), records(handshake(extensions=spec_extensions()), sizes=[7, 30])]


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                         min_size=1, max_size=4),
       st.integers(0, 10_000), st.sampled_from([16384, 300, 64]))
def test_fuzz_mutated_hellos(data, changes, cut, max_size):
    mutated = bytearray(data)
    for pos, value in changes:
        mutated[pos % len(mutated)] = value
    check_never_raises(bytes(mutated[: cut % (len(mutated) + 1)]), max_size)
    check_never_raises(bytes(mutated), max_size)

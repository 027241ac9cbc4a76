"""Sans-I/O core: cipher, framing, messages — no sockets involved."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hs100local import protocol
from hs100local.errors import DeviceError, ProtocolError


def reference_encrypt(plain: bytes) -> bytes:
    """Independent byte-by-byte implementation of the autokey cipher."""
    key, out = 0xAB, bytearray()
    for b in plain:
        key = b ^ key
        out.append(key)
    return bytes(out)


def reference_decrypt(cipher: bytes) -> bytes:
    key, out = 0xAB, bytearray()
    for c in cipher:
        out.append(c ^ key)
        key = c
    return bytes(out)


CLASSIC = b'{"system":{"set_relay_state":{"state":1}}}'


def test_classic_example_frames_as_documented():
    framed = protocol.encode_tcp(CLASSIC)
    assert framed[:4] == bytes.fromhex("0000002a")
    assert framed[4:12] == bytes.fromhex("d0f281f88bff9af7")
    assert framed[4:] == reference_encrypt(CLASSIC)
    assert len(framed) == 4 + 42


def test_build_request_is_the_classic_json():
    request = protocol.build_request("system", "set_relay_state", {"state": 1})
    assert protocol.dumps(request) == CLASSIC


@given(st.binary(max_size=4096))
def test_decrypt_inverts_encrypt(data):
    assert protocol.decrypt(protocol.encrypt(data)) == data


@given(st.binary(max_size=2048))
def test_matches_reference_cipher(data):
    assert protocol.encrypt(data) == reference_encrypt(data)
    assert protocol.decrypt(data) == reference_decrypt(data)


@given(st.lists(st.binary(max_size=600), max_size=8), st.integers(1, 97))
def test_frame_decoder_round_trips_any_split(messages, chunk):
    stream = b"".join(protocol.encode_tcp(m) for m in messages)
    decoder = protocol.FrameDecoder()
    out = []
    for i in range(0, len(stream), chunk):
        decoder.feed(stream[i : i + chunk])
        while (m := decoder.next_message()) is not None:
            out.append(m)
    assert out == messages
    assert decoder.pending == 0


@given(st.binary(max_size=1500))
def test_udp_round_trip_has_no_prefix(data):
    datagram = protocol.encode_udp(data)
    assert len(datagram) == len(data)
    assert protocol.decode_udp(datagram) == data


def test_decoder_rejects_length_over_cap_before_body():
    decoder = protocol.FrameDecoder(limit=1000)
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed((1001).to_bytes(4, "big"))


def test_parse_header_bounds():
    assert protocol.parse_header(b"\x00\x00\x00\x00") == 0
    assert protocol.parse_header((64 * 1024).to_bytes(4, "big")) == 64 * 1024
    with pytest.raises(ProtocolError):
        protocol.parse_header((64 * 1024 + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="truncated"):
        protocol.parse_header(b"\x00\x00")


def test_loads_rejects_non_json_and_non_objects():
    with pytest.raises(ProtocolError, match="not JSON"):
        protocol.loads(b"\xff\x00garbage")
    with pytest.raises(ProtocolError, match="not an object"):
        protocol.loads(b"[1, 2]")
    assert protocol.loads(b'{"a": 1}') == {"a": 1}


def test_merge_requests_combines_modules_and_checks_context():
    merged = protocol.merge_requests(
        protocol.build_request("time", "get_time"),
        protocol.build_request("time", "get_timezone"),
        protocol.build_request("system", "get_sysinfo"),
    )
    assert merged == {"time": {"get_time": {}, "get_timezone": {}}, "system": {"get_sysinfo": {}}}
    a = protocol.build_request("system", "set_relay_state", {"state": 1}, ["X00"])
    b = protocol.build_request("system", "set_dev_alias", {"alias": "x"}, ["X01"])
    with pytest.raises(ValueError):
        protocol.merge_requests(a, b)


def test_build_request_with_child_ids():
    request = protocol.build_request("system", "set_relay_state", {"state": 0}, ["ID01"])
    assert request == {
        "context": {"child_ids": ["ID01"]},
        "system": {"set_relay_state": {"state": 0}},
    }


def test_method_result_success_and_error_levels():
    ok = {"system": {"get_sysinfo": {"alias": "a", "err_code": 0}}}
    assert protocol.method_result(ok, "system", "get_sysinfo")["alias"] == "a"

    module_err = {"emeter": {"err_code": -1, "err_msg": "module not support"}}
    with pytest.raises(DeviceError) as exc:
        protocol.method_result(module_err, "emeter", "get_realtime")
    assert (exc.value.code, exc.value.method) == (-1, None)
    assert exc.value.exit_code == 1

    method_err = {"system": {"nope": {"err_code": -2, "err_msg": "member not support"}}}
    with pytest.raises(DeviceError) as exc:
        protocol.method_result(method_err, "system", "nope")
    assert (exc.value.code, exc.value.message) == (-2, "member not support")


@pytest.mark.parametrize(
    "reply",
    [
        {},
        {"system": "x"},
        {"system": {"other": {}}},
        {"system": {"get_sysinfo": [1]}},
        {"system": {"get_sysinfo": {"err_code": "zero"}}},
    ],
)
def test_method_result_malformed_replies_are_protocol_errors(reply):
    with pytest.raises(ProtocolError):
        protocol.method_result(reply, "system", "get_sysinfo")


def test_dumps_is_compact_utf8():
    assert protocol.dumps({"alias": "Küche"}) == '{"alias":"Küche"}'.encode()
    assert json.loads(protocol.dumps({"a": [1, 2]})) == {"a": [1, 2]}

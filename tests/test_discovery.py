"""Discovery on loopback: the TDP codec, the answer judge, and real sockets.

Multi-host behaviour (broadcast per interface, packet loss, address changes) is
in test_discovery_lab.py; here every peer is on 127.0.0.1 and every hostile
answer comes from a real UDP socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from hs100local import tdp
from hs100local.discovery import Collector, discover, scan, sweep_addresses
from hs100local.emulator import MODELS, EmulatedPlug
from hs100local.emulator.klap import KlapDevice, KlapServer
from hs100local.emulator.server import EmulatorThread
from hs100local.errors import ProtocolError, TargetError
from hs100local.protocol import dumps, encode_udp
from hs100local.results import PROTOCOL_KLAP, PROTOCOL_XOR


def sysinfo_datagram(mac: str = "50:C7:BF:00:00:01", **extra) -> bytes:
    plug = EmulatedPlug(MODELS["hs110"], mac="50:C7:BF:00:00:01")
    reply = plug.handle({"system": {"get_sysinfo": {}}})
    reply["system"]["get_sysinfo"].update(mac=mac, **extra)
    return encode_udp(dumps(reply))


def klap_datagram(ip: str = "127.0.0.1", mac: str = "CC:32:E5:00:00:07") -> bytes:
    return KlapDevice(MODELS["hs100"], mac).answer(tdp.build_probe(), ip) or b""


# ------------------------------------------------------------------- TDP


def test_probe_matches_the_known_header_only_query():
    # The header-only probe with flags 0 and serial 0 is the well-known
    # 020000010000000000000000463cb5d3; same CRC rule, different flags/serial.
    assert tdp.build(serial=0, flags=0).hex() == "020000010000000000000000463cb5d3"
    probe = tdp.build_probe()
    assert tdp.crc_ok(probe) and len(probe) == 16
    assert tdp.parse_probe(probe).op_code == tdp.OP_PROBE


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b[:10], "too short"),
        (lambda b: b"\x01" + b[1:], "version"),
        (lambda b: b[:12] + b"\x00\x00\x00\x00", "CRC"),
        (lambda b: b + b"x", "length"),
        (lambda b: tdp.build(op_code=2), "not a probe"),
    ],
)
def test_emulated_device_drops_bad_probes(mangle, message):
    bad = mangle(tdp.build_probe())
    with pytest.raises(ProtocolError, match=message):
        tdp.parse_probe(bad)
    assert KlapDevice(MODELS["hs100"], "CC:32:E5:00:00:07").answer(bad, "1.2.3.4") is None


def test_answer_round_trip_and_rejections():
    answer = klap_datagram("198.18.0.9")
    result = tdp.parse_answer(answer)
    assert result["ip"] == "198.18.0.9" and result["mac"] == "CC-32-E5-00-00-07"
    assert result["mgt_encrypt_schm"]["encrypt_type"] == "KLAP"
    header = answer[:16]
    for bad in (
        answer[:15],
        header[:4] + (999).to_bytes(2, "big") + header[6:] + answer[16:],  # length lies
        tdp.build(b"not json"),
        tdp.build(b'{"error_code": -1, "result": {}}'),
        tdp.build(b'{"error_code": 0}'),
        tdp.build(b"[1, 2]"),
        tdp.build(b"\xff\xfe"),
        tdp.build(b"{" * 20000),
    ):
        with pytest.raises(ProtocolError):
            tdp.parse_answer(bad)


# ------------------------------------------------------------- collector

ADDR = ("127.0.0.1", 9999)


def test_collector_accepts_one_plug_once():
    seen = []
    c = Collector(on_found=seen.append)
    plug = c.feed(sysinfo_datagram(), ADDR, "eth0")
    assert plug is not None and plug.protocol == PROTOCOL_XOR and plug.controllable
    assert (plug.host, plug.mac, plug.interface, plug.state) == (
        "127.0.0.1", "50:C7:BF:00:00:01", "eth0", "off")
    assert c.feed(sysinfo_datagram(), ADDR) is None
    assert c.ignored == {"duplicate": 1} and seen == [plug] and len(c.plugs) == 1


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00",
        b"garbage that is not encrypted json",
        sysinfo_datagram()[:40],  # truncated mid-JSON
        encode_udp(b"not json at all"),
        encode_udp(dumps([1, 2, 3])),
        encode_udp(dumps({"system": {"get_sysinfo": {"err_code": -1, "err_msg": "no"}}})),
        encode_udp(dumps({"emeter": {"get_realtime": {}}})),
        encode_udp(dumps({"system": {"get_sysinfo": "text"}})),
        sysinfo_datagram(mac="not-a-mac"),
        sysinfo_datagram(relay_state=7),
        sysinfo_datagram(children=5),
        bytes(70000),
    ],
    ids=["empty", "one-byte", "plain", "truncated", "not-json", "list", "err-code",
         "no-system", "sysinfo-not-object", "bad-mac", "bad-relay", "bad-children",
         "oversized"],
)
def test_collector_drops_malformed_answers(datagram):
    c = Collector()
    assert c.feed(datagram, ADDR) is None
    assert c.plugs == [] and sum(c.ignored.values()) == 1


def test_collector_port_rules():
    c = Collector()
    assert c.feed(sysinfo_datagram(), ("127.0.0.1", 5555)) is None  # not a probed port
    assert c.ignored == {"unexpected-port": 1}
    # A TDP answer that claims another address is not believed.
    assert c.feed(klap_datagram(ip="10.9.9.9"), ("127.0.0.1", 20002)) is None
    assert c.ignored["claims-other-ip"] == 1
    assert c.plugs == []


def test_legacy_answer_wins_over_tdp_from_the_same_host():
    c = Collector()
    klap = c.feed(klap_datagram(), ("127.0.0.1", 20002))
    assert klap is not None and klap.protocol == PROTOCOL_KLAP and not klap.controllable
    assert "9999" in (klap.note or "")
    assert c.feed(klap_datagram(), ("127.0.0.1", 20004)) is None  # same device, other port
    xor = c.feed(sysinfo_datagram(), ADDR)
    assert xor is not None and [p.protocol for p in c.plugs] == [PROTOCOL_XOR]
    assert c.feed(klap_datagram(), ("127.0.0.1", 20002)) is None
    assert len(c.plugs) == 1


def test_one_mac_from_two_addresses_is_not_two_plugs():
    c = Collector()
    assert c.feed(sysinfo_datagram(), ("127.0.0.1", 9999)) is not None
    assert c.feed(sysinfo_datagram(), ("127.0.0.2", 9999)) is None
    assert c.ignored == {"mac-conflict": 1} and len(c.plugs) == 1


def test_sweep_addresses():
    assert sweep_addresses(["198.18.0.0/30"]) == ["198.18.0.1", "198.18.0.2"]
    assert sweep_addresses(["198.18.0.5", "198.18.0.4/31", "198.18.0.5/32"]) == [
        "198.18.0.5", "198.18.0.4"]
    assert len(sweep_addresses(["198.18.0.0/24"])) == 254
    for bad in (["nonsense"], ["198.18.0.0/8"], ["::1/128"]):
        with pytest.raises(TargetError):
            sweep_addresses(bad)


# ------------------------------------------------------------ real sockets


def test_discover_targets_finds_plugs_and_stops_at_expect(start_emulator):
    strip = start_emulator("hs300", alias="Desk")
    meter = start_emulator("hs110", mac="50:C7:BF:00:00:02")
    result = asyncio.run(discover(
        targets=[f"127.0.0.1:{strip.port}", ("127.0.0.1", meter.port)],
        broadcast=False, timeout=20, expect=2,
    ))
    assert result.elapsed < 10  # returned on the second answer, not after 20 s
    by_port = {p.port: p for p in result.plugs}
    assert set(by_port) == {strip.port, meter.port}
    desk = by_port[strip.port]
    assert (desk.alias, desk.model, desk.protocol, desk.controllable) == (
        "Desk", "HS300(US)", "xor", True)
    assert [c.index for c in desk.children] == [1, 2, 3, 4, 5, 6]
    assert by_port[meter.port].mac == "50:C7:BF:00:00:02"
    assert result.probed == [f"target 127.0.0.1:{strip.port}", f"target 127.0.0.1:{meter.port}"]


def test_discover_without_answers_listens_the_whole_window():
    result = asyncio.run(discover(targets=["127.0.0.1:9"], broadcast=False, timeout=0.4))
    assert result.plugs == [] and result.elapsed >= 0.4


@pytest.fixture
def klap_server() -> Iterator[EmulatorThread]:
    server = KlapServer(KlapDevice(MODELS["hs300"], "1C:3B:F3:00:00:42"), "127.0.0.1",
                        ports=(0, 0))
    with EmulatorThread(server) as emu:
        yield emu


def test_discover_flags_klap_firmware(klap_server):
    ports = klap_server.server.ports
    result = asyncio.run(discover(targets=["127.0.0.1"], broadcast=False, timeout=5,
                                  expect=1, tdp_ports=ports))
    [device] = result.plugs
    assert (device.protocol, device.controllable, device.model, device.hw_ver) == (
        "klap", False, "HS300(US)", "2.0")
    assert device.mac == "1C:3B:F3:00:00:42" and device.state is None
    assert "Third-Party Compatibility" in (device.note or "")


class HostilePeer:
    """A UDP 'plug' that answers every probe with junk around one valid reply."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.probes = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                _data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            self.probes += 1
            for junk in (b"", b"\xff" * 3, b"hello", sysinfo_datagram()[:25],
                         encode_udp(b"{not json"), bytes(5000)):
                self.sock.sendto(junk, addr)
            for _ in range(3):  # duplicated replies
                self.sock.sendto(sysinfo_datagram(), addr)
            # a valid reply from a port nobody probed, and a TDP answer claiming
            # another address, must not become entries
            self.other.sendto(sysinfo_datagram(mac="50:C7:BF:00:00:99"), addr)
            self.sock.sendto(klap_datagram(ip="10.0.0.1"), addr)

    def close(self) -> None:
        self.sock.close()
        self.other.close()


def test_hostile_answers_do_not_crash_or_add_entries():
    peer = HostilePeer()
    try:
        result = asyncio.run(discover(targets=[f"127.0.0.1:{peer.port}"], broadcast=False,
                                      timeout=0.6))
    finally:
        peer.close()
    assert [(p.host, p.port, p.mac) for p in result.plugs] == [
        ("127.0.0.1", peer.port, "50:C7:BF:00:00:01")]
    assert peer.probes >= 2
    assert result.ignored["malformed"] >= 5
    assert result.ignored["duplicate"] >= 2
    assert result.ignored["unexpected-port"] >= 1


def test_scan_finds_plugs_and_klap_behind_a_closed_port(start_emulator, klap_server):
    emu = start_emulator("kp303")
    found = asyncio.run(scan(["127.0.0.1/32"], port=emu.port, tdp_ports=()))
    [plug] = found.plugs
    assert (plug.model, plug.via, len(plug.children)) == ("KP303(UK)", "tcp", 3)

    # Port 9999 closed (refused), TDP answered: a KLAP device, not "nothing".
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    progress = []
    found = asyncio.run(scan(["127.0.0.1/32"], port=closed_port,
                             tdp_ports=klap_server.server.ports,
                             progress=lambda done, total: progress.append((done, total))))
    assert [(p.protocol, p.controllable) for p in found.plugs] == [("klap", False)]
    assert progress == [(1, 1)]


def test_scan_ignores_a_port_that_speaks_garbage():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"\x00\x00\x00\x05hello")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        found = asyncio.run(scan(["127.0.0.1"], port=port, tdp_ports=()))
    finally:
        server.close()
    assert found.plugs == [] and found.ignored == {"malformed": 1}


def test_discovery_result_json_shape(start_emulator):
    emu = start_emulator("hs300")
    result = asyncio.run(discover(targets=[f"127.0.0.1:{emu.port}"], broadcast=False,
                                  timeout=5, expect=1))
    data = json.loads(json.dumps(result.as_dict()))
    plug = data["plugs"][0]
    for key in ("host", "port", "mac", "alias", "model", "hw_ver", "sw_ver", "device_id",
                "state", "protocol", "controllable", "children"):
        assert key in plug
    assert plug["children"][0] == {"index": 1, "id": plug["device_id"] + "00",
                                   "alias": "Plug 1", "state": "off"}

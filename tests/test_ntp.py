"""The SNTP server: RFC field rules one by one, drops, rate limit, events, real clients.

Real clients: ntplib (field by field), ``chronyd -Q`` on a high loopback port and
``ntpdig`` (port 123 only) against the server inside a network namespace lab.
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import sys
import time
from collections.abc import Iterator

import netlab
import ntplib
import prockit
import pytest
from servicekit import LoopThread, Sink

from hs100local.events import EventStore
from hs100local.ntp import wire
from hs100local.ntp.clock import ClockState, KernelSync, measure_precision, read_kernel_sync
from hs100local.ntp.server import NtpServer
from hs100local.ratelimit import RateLimiter

NS = 1_000_000_000
Y2000 = 946_684_800  # 2000-01-01T00:00:00Z
SYNCED = KernelSync(True, wire.LEAP_NONE, 0.012, 0.003, "test")
UNSYNCED = KernelSync(False, wire.LEAP_NONE, 16.0, 16.0, "test")


def packet(*, li: int = 0, version: int = 4, mode: int = 3, poll: int = 6,
           transmit: bytes | None = None, size: int = 48) -> bytes:
    """A request as a client builds it; the transmit field random unless given."""
    transmit = os.urandom(8) if transmit is None else transmit
    head = struct.pack(">BBbb", (li << 6) | (version << 3) | mode, 0, poll, -20)
    body = head + bytes(36) + transmit
    return body + bytes(max(0, size - len(body))) if size >= 48 else body[:size]


class Reply:
    """A reply taken apart field by field."""

    def __init__(self, data: bytes) -> None:
        assert len(data) == 48
        (first, self.stratum, self.poll, self.precision, self.root_delay, self.root_dispersion,
         self.ref_id) = struct.unpack(">BBbbII4s", data[:16])
        self.leap, self.version, self.mode = first >> 6, (first >> 3) & 7, first & 7
        self.reference, self.originate = data[16:24], data[24:32]
        self.receive, self.transmit = data[32:40], data[40:48]


def clock(kernel: KernelSync = SYNCED, **kw) -> ClockState:
    return ClockState(read=lambda: kernel, precision=-20, **kw)


def make_server(kernel: KernelSync = SYNCED, *, events=None, limiter=None, **kw) -> NtpServer:
    return NtpServer([("127.0.0.1", 0)], clock=clock(kernel, **kw), events=events,
                     limiter=limiter or RateLimiter(0))


def answer(server: NtpServer, data: bytes, client: str = "198.18.0.11",
           receive_ns: int | None = None) -> Reply | None:
    raw = server.handle(data, client, time.time_ns() if receive_ns is None else receive_ns)
    return None if raw is None else Reply(raw)


# ------------------------------------------------------------------ wire


def test_timestamps_round_trip_across_the_2036_era_boundary():
    wrap = (1 << 32) - wire.NTP_UNIX_OFFSET  # 2036-02-07T06:28:16Z in Unix seconds
    for unix in (Y2000, 1_795_500_000, wrap - 1, wrap, wrap + 1, 4_102_444_800):  # ... 2100
        for frac_ns in (0, 1, 499_999_999, 999_999_999):
            value = unix * NS + frac_ns
            raw = wire.to_ntp(value)
            back = wire.from_ntp(raw, value)  # pivot: the time itself
            assert abs(back - value) <= 1, (unix, frac_ns)
    assert wire.to_ntp(wrap * NS)[:4] == bytes(4)  # era 1 starts again at 0 seconds
    # Read in 2037, a timestamp of era 1 is 2036+, one of era 0 near the end is 2035.
    pivot = (wrap + 365 * 86400) * NS
    assert wire.from_ntp(wire.to_ntp((wrap + 10) * NS), pivot) == (wrap + 10) * NS
    assert wire.from_ntp(wire.to_ntp((wrap - 10) * NS), pivot) == (wrap - 10) * NS
    # A plug at 2000 read in 2026 stays in 2000.
    assert wire.from_ntp(wire.to_ntp(Y2000 * NS), 1_795_500_000 * NS) == Y2000 * NS


def test_parse_request_rejects_short_and_bad_versions():
    assert wire.parse_request(packet()[:47]) is None
    for version in (0, 5, 6, 7):
        assert wire.parse_request(packet(version=version)) is None
    for version in (1, 2, 3, 4):
        request = wire.parse_request(packet(version=version))
        assert request is not None and request.version == version
    longer = packet(size=48 + 20)  # extension fields / a MAC are ignored
    assert wire.parse_request(longer) is not None


def test_ref_id_forms():
    assert wire.ref_id("127.127.1.1") == bytes([127, 127, 1, 1])
    assert wire.ref_id("LOCL") == b"LOCL"
    assert wire.ref_id("GPS") == b"GPS\0"
    for bad in ("", "TOOLONG", "1.2.3.256x", "ü"):
        with pytest.raises(ValueError):
            wire.ref_id(bad)


# ------------------------------------------------------------ field rules


def test_reply_mode_4_to_mode_3_and_mode_2_to_mode_1():
    server = make_server()
    assert answer(server, packet(mode=3)).mode == 4
    assert answer(server, packet(mode=1)).mode == 2


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_version_is_echoed(version):
    assert answer(make_server(), packet(version=version)).version == version


@pytest.mark.parametrize("poll", [-6, 0, 4, 10, 17, 127, -128])
def test_poll_is_echoed(poll):
    assert answer(make_server(), packet(poll=poll)).poll == poll


def test_originate_is_the_requests_transmit_byte_for_byte():
    server = make_server()
    rng = random.Random(5)
    for _ in range(200):
        transmit = rng.randbytes(8)
        assert answer(server, packet(transmit=transmit)).originate == transmit


def test_receive_is_the_arrival_time_and_transmit_is_taken_when_sending():
    server = make_server()
    arrival = time.time_ns() - 250_000_000  # the kernel stamped it 250 ms ago
    before = time.time_ns()
    reply = answer(server, packet(), receive_ns=arrival)
    after = time.time_ns()
    assert abs(wire.from_ntp(reply.receive) - arrival) <= 1
    transmit = wire.from_ntp(reply.transmit)
    assert before - 1 <= transmit <= after + 1
    assert transmit > wire.from_ntp(reply.receive)


def test_precision_is_the_clocks():
    assert answer(make_server(), packet()).precision == -20  # what the ClockState says
    measured = measure_precision()
    assert -32 <= measured <= 0
    resolution = time.clock_getres(time.CLOCK_REALTIME)
    assert 2.0 ** measured >= resolution / 2  # no finer than the clock can tell


def test_synchronised_kernel_gives_li_0_configured_stratum_and_its_dispersion():
    reply = answer(make_server(SYNCED, stratum=2), packet())
    assert (reply.leap, reply.stratum) == (0, 2)
    assert reply.root_dispersion == round(0.012 * 65536)  # the kernel's max error
    assert reply.root_delay == 0
    assert reply.ref_id == bytes([127, 127, 1, 1])
    reference = wire.from_ntp(reply.reference)
    assert 0 <= wire.from_ntp(reply.transmit) - reference < 2 * NS
    assert answer(make_server(SYNCED), packet()).stratum == 3  # the default


def test_unsynchronised_kernel_gives_li_3_stratum_16_and_no_reference_time():
    reply = answer(make_server(UNSYNCED), packet())
    assert (reply.leap, reply.stratum) == (3, 16)
    assert reply.reference == bytes(8)
    assert reply.ref_id == b"INIT"


def test_assume_synced_overrides_an_unsynchronised_kernel():
    reply = answer(make_server(UNSYNCED, assume_synced=True), packet())
    assert (reply.leap, reply.stratum) == (0, 3)
    assert reply.reference != bytes(8)


def test_kernel_leap_second_is_announced():
    leap = KernelSync(True, wire.LEAP_INSERT, 0.01, 0.001, "test")
    assert answer(make_server(leap), packet()).leap == wire.LEAP_INSERT


def test_kernel_state_is_reread_at_most_once_a_second(monkeypatch):
    reads = []

    def read() -> KernelSync:
        reads.append(1)
        return SYNCED if len(reads) == 1 else UNSYNCED

    state = ClockState(read=read, precision=-20)
    server = NtpServer([("127.0.0.1", 0)], clock=state, limiter=RateLimiter(0))
    for _ in range(100):
        assert answer(server, packet()).stratum == 3
    assert len(reads) == 1
    state._refreshed -= 1.0  # a second later
    assert answer(server, packet()).stratum == 16


def test_read_kernel_sync_really_reads_the_kernel():
    sync = read_kernel_sync()
    assert sync.source == "ntp_adjtime"
    assert sync.max_error >= 0 and sync.leap in (0, 1, 2)


# ---------------------------------------------------------------- drops


@pytest.mark.parametrize("mode", [6, 7])
def test_control_and_private_modes_get_no_reply(mode):
    server = make_server()
    for size in (48, 12, 200):  # mode 6/7 packets are often shorter than 48 bytes
        data = packet(mode=mode, size=max(size, 48))[:size]
        assert server.handle(data, "198.18.0.11", time.time_ns()) is None
    assert server.stats.answered == 0


@pytest.mark.parametrize("mode", [0, 2, 4, 5])
def test_other_modes_get_no_reply(mode):
    assert make_server().handle(packet(mode=mode), "198.18.0.11", time.time_ns()) is None


@pytest.mark.parametrize("size", [0, 1, 12, 47])
def test_short_packets_get_no_reply(size):
    server = make_server()
    assert server.handle(packet()[:size], "198.18.0.11", time.time_ns()) is None
    assert server.stats.dropped_short == 1


def test_over_the_rate_a_client_gets_one_rate_kiss_then_silence():
    sink = Sink()
    server = make_server(events=sink, limiter=RateLimiter(rate=1.0, burst=3.0))
    replies = [server.handle(packet(), "198.18.0.11", time.time_ns()) for _ in range(10)]
    normal = [Reply(r) for r in replies[:3]]
    assert all(r.stratum == 3 for r in normal)
    kiss = Reply(replies[3])
    assert (kiss.stratum, kiss.ref_id, kiss.leap, kiss.mode) == (0, b"RATE", 3, 4)
    assert kiss.receive == kiss.transmit == kiss.originate  # no usable time in a KoD
    assert replies[4:] == [None] * 6
    assert server.stats.rate_limited == 7 and server.stats.kiss == 1
    assert sink.counts[("ntp", "rate_limited", "198.18.0.11")] == 7
    # another client is not affected
    assert Reply(server.handle(packet(), "198.18.0.12", time.time_ns())).stratum == 3


# ---------------------------------------------------------------- events


def test_every_answered_request_is_an_event_with_the_clients_clock():
    sink = Sink()
    server = make_server(events=sink)
    now = time.time_ns()
    plug_clock = wire.to_ntp(Y2000 * NS + 5 * NS + 250_000_000)  # a plug that lost power
    answer(server, packet(version=3, transmit=plug_clock), "198.18.0.11", now)
    answer(server, packet(transmit=bytes(8)), "198.18.0.12", now)  # client sent no time
    server.handle(packet(mode=7), "198.18.0.13", now)  # not answered: not an event
    assert [e[:2] for e in sink.events] == [("ntp", "198.18.0.11"), ("ntp", "198.18.0.12")]
    first = sink.events[0][2]
    assert first["client_time"] == "2000-01-01T00:00:05.250Z"
    assert first["offset_ms"] == (Y2000 * NS + 5_250_000_000 - now) // 1_000_000
    assert (first["version"], first["mode"], first["stratum"]) == (3, 3, 3)
    assert sink.events[1][2]["client_time"] is None and sink.events[1][2]["offset_ms"] is None


# ----------------------------------------------------------- over sockets


@pytest.fixture
def running() -> Iterator[LoopThread]:
    server = make_server(SYNCED, events=Sink())
    loop_thread = LoopThread(server)
    yield loop_thread
    loop_thread.close()


def test_ntplib_sees_every_field(running):
    response = ntplib.NTPClient().request("127.0.0.1", version=3, port=running.port, timeout=3)
    assert (response.version, response.mode, response.stratum, response.leap) == (3, 4, 3, 0)
    assert response.precision == -20
    assert response.ref_id == int.from_bytes(bytes([127, 127, 1, 1]), "big")
    assert abs(response.offset) < 0.01 and 0 <= response.delay < 0.05
    assert response.recv_time <= response.tx_time
    assert abs(response.orig_time - response.recv_time) < 0.05
    assert response.root_dispersion == pytest.approx(0.012, abs=1 / 65536)


def test_receive_time_comes_from_the_kernel_and_precedes_transmit(running):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        for _ in range(20):
            sent = time.time_ns()
            sock.sendto(packet(), ("127.0.0.1", running.port))
            reply = Reply(sock.recv(512))
            got = time.time_ns()
            receive, transmit = wire.from_ntp(reply.receive), wire.from_ntp(reply.transmit)
            assert sent - 1000 <= receive <= transmit <= got + 1000
    finally:
        sock.close()


def test_fuzzed_datagrams_never_stop_the_server(running):
    rng = random.Random(1234)
    good = packet()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.01)
    try:
        for i in range(3000):
            if i % 3 == 0:
                data = rng.randbytes(rng.randrange(0, 120))
            else:  # mutate a valid request: flip bytes, cut or extend it
                data = bytearray(good)
                for _ in range(rng.randrange(1, 6)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                if rng.random() < 0.3:
                    data = data[: rng.randrange(len(data) + 1)]
                elif rng.random() < 0.3:
                    data += rng.randbytes(rng.randrange(1, 1500))
            sock.sendto(bytes(data), ("127.0.0.1", running.port))
            if i % 50 == 0:
                while True:  # drain replies so the socket buffer never fills
                    try:
                        reply = sock.recv(2048)
                    except TimeoutError:
                        break
                    assert len(reply) == 48
        sock.settimeout(3)
        stats = running.call(lambda: running.server.stats)
        assert stats.errors == 0
        assert stats.received >= 2900  # loopback drops nothing at this pace
        response = ntplib.NTPClient().request("127.0.0.1", port=running.port, timeout=3)
        assert response.stratum == 3 and abs(response.offset) < 0.01
    finally:
        sock.close()


def test_events_reach_the_event_store(tmp_path):
    with EventStore(tmp_path / "ev.db") as store:
        loop_thread = LoopThread(make_server(SYNCED, events=store))
        try:
            ntplib.NTPClient().request("127.0.0.1", 3, loop_thread.port, timeout=3)
        finally:
            loop_thread.close()
        store.flush()
        got = store.events(kind="ntp")
    assert [(e.client, e.details["version"], e.details["stratum"]) for e in got] == [
        ("127.0.0.1", 3, 3)]
    assert abs(got[0].details["offset_ms"]) < 100


# ------------------------------------------------------ real NTP clients


CHRONYD = prockit.find_tool("chronyd")  # /usr/sbin: not on a non-root user's PATH
needs_chronyd = pytest.mark.skipif(CHRONYD is None,
                                   reason=prockit.missing_tool_reason("chronyd", "chrony") or "")


@needs_chronyd
def test_chronyd_accepts_our_replies(running, tmp_path):
    """chronyd -Q measures the offset and changes nothing (-Q); -u root: no privilege
    drop, so its pid file in tmp_path can be removed."""
    result = prockit.run(
        [CHRONYD, "-Q", "-u", "root", "-t", "20",
         f"server 127.0.0.1 port {running.port} iburst minpoll -6 maxpoll -6",
         f"pidfile {tmp_path / 'chronyd.pid'}"],
        capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    match = re.search(r"System clock wrong by (-?[\d.]+) seconds", output)
    assert result.returncode == 0 and match, output
    assert abs(float(match.group(1))) < 0.010


@needs_chronyd
def test_chronyd_rejects_an_unsynchronised_server(tmp_path):
    loop_thread = LoopThread(make_server(UNSYNCED))
    try:
        result = prockit.run(
            [CHRONYD, "-Q", "-u", "root", "-t", "3",
             f"server 127.0.0.1 port {loop_thread.port} iburst minpoll -6 maxpoll -6",
             f"pidfile {tmp_path / 'chronyd.pid'}"],
            capture_output=True, text=True, timeout=30)
    finally:
        loop_thread.close()
    output = result.stdout + result.stderr
    assert "System clock wrong by" not in output, output  # LI 3 / stratum 16: not a source
    assert "No suitable source" in output or "Timeout" in output or result.returncode, output


NTPDIG = prockit.find_tool("ntpdig") or "ntpdig"


@pytest.fixture(scope="module")
def ntp_lab() -> Iterator[tuple[netlab.Lab, netlab.Host, str]]:
    """An NTP server on port 123 of a companion host, and a client host, on one LAN."""
    netlab.require_netns()
    missing = prockit.missing_tool_reason("ntpdig", "ntpsec-ntpdig")
    if missing:
        pytest.skip(missing)
    with netlab.Lab() as lab:
        lan = lab.add_bridge("br0")
        companion, client = lab.add_host("companion"), lab.add_host("plug")
        address = lab.connect(companion, lan, "eth0", "198.18.4.1/24")
        lab.connect(client, lan, "eth0", "198.18.4.11/24")
        proc = companion.spawn(
            [sys.executable, "-u", "-m", "hs100local", "ntp", "--listen", f"{address}:123",
             "--assume-synced", "--no-events"], ready="NTP on")
        proc.wait_ready()
        yield lab, client, address


def test_ntpdig_accepts_our_replies(ntp_lab):
    _lab, client, address = ntp_lab
    result = client.run([NTPDIG, "-j", "-t", "3", address], timeout=20)
    import json

    data = json.loads(result.stdout)
    assert data["stratum"] == 3 and data["leap"] == "no-leap"
    assert abs(data["offset"]) < 0.010


def test_ntpdig_is_told_to_go_away_when_over_the_rate(ntp_lab):
    """The default limit (1/s, bursts of 8): a burst of ntpdig samples ends in a KoD."""
    _lab, client, address = ntp_lab
    result = client.run([NTPDIG, "-p", "12", "-g", "10", "-t", "1", address], timeout=30,
                        check=False)
    assert "s3 no-leap" in result.stdout  # the burst's first samples were answered
    assert "probable KOD packet" in result.stderr, (result.stdout, result.stderr)


def test_iso_utc_across_second_boundaries_and_back():
    from hs100local.ntp.server import iso_utc

    base = Y2000 * NS
    assert iso_utc(base + 5_250_000_000) == "2000-01-01T00:00:05.250Z"
    assert iso_utc(base + 5_999_999_999) == "2000-01-01T00:00:05.999Z"  # same second, cached
    assert iso_utc(base + 6_000_000_000) == "2000-01-01T00:00:06.000Z"
    assert iso_utc(base + 5_001_000_000) == "2000-01-01T00:00:05.001Z"  # back again
    assert iso_utc(1_795_500_000 * NS) == "2026-11-24T06:00:00.000Z"

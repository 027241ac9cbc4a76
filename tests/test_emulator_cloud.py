"""The emulated plug's time and cloud behaviour (hs100local.emulator.cloud), against
real peers on loopback: our DNS responder, NTP server and cloud listener, dnsmasq,
and the fake TP-Link cloud (tests/fakecloud.py) holding a certificate from the CA
the plug pins.

The client runs on each test's own event loop (``asyncio.run``); the servers run in
threads (LoopThread, FakeCloud), as separate processes would. Nothing sleeps for
luck: tests await the client's events and stats, or block (in a worker thread) on
the servers' conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import prockit
import pytest
import trustme
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSQuestion, DNSRecord
from fakecloud import FakeCloud, issue_server_cert
from servicekit import LoopThread, Sink, start_dnsmasq, stop_process
from tlskit import WaitingSink

from hs100local.dns.rules import Rule, Sinkhole, default_rules
from hs100local.dns.server import DnsServer
from hs100local.emulator import MODELS, EmulatedPlug
from hs100local.emulator.cloud import (
    MAX_MESSAGE,
    CloudSettings,
    CloudStats,
    PlugCloud,
    bind_address,
    plug_context,
    resolve_a,
)
from hs100local.ntp import wire
from hs100local.ntp.clock import ClockState, KernelSync
from hs100local.ntp.server import NtpServer
from hs100local.ratelimit import RateLimiter
from hs100local.tls.cert import ensure_certificate
from hs100local.tls.hello import EXT_SERVER_NAME, ClientHello, parse_client_hello
from hs100local.tls.listener import CloudListener

CLOUD = "n-devs.tplinkcloud.com"
POWER_ON = datetime(2000, 1, 1)
SYNCED = KernelSync(True, wire.LEAP_NONE, 0.012, 0.003, "test")
REPO = Path(__file__).resolve().parents[1]
#: anonymous suites (no certificate: they would bypass the pinning) OpenSSL knows
ANON_SUITES = {0x0018, 0x001B, 0x0034, 0x003A, 0x006C, 0x006D, 0x00A6, 0x00A7, 0x00BF,
               0x00C5, 0xC015, 0xC016, 0xC017, 0xC018, 0xC019, 0xC046, 0xC047, 0xC05A,
               0xC05B, 0xC084, 0xC085}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The CA the emulated plug pins, as a real plug pins TP-Link's."""
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "plug-ca.pem"
    path.write_bytes(ca.cert_pem.bytes())
    return path


@pytest.fixture(scope="module")
def cloud_cert(ca) -> tuple[bytes, bytes]:
    """The fake cloud's certificate, from the pinned CA (made once: RSA key)."""
    return issue_server_cert(ca.cert_pem.bytes(), ca.private_key_pem.bytes())


@pytest.fixture(scope="module")
def listener_cert(tmp_path_factory) -> tuple[Path, Path]:
    """Our cloud listener's self-signed certificate (what a plug meets at home)."""
    return ensure_certificate(tmp_path_factory.mktemp("listener"))


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


class Dns(LoopThread):
    sink: Sink


def start_dns(stack: contextlib.ExitStack, *rules: Rule) -> Dns:
    """Our DNS responder on 127.0.0.1: cloud and NTP names answered with 127.0.0.1
    (its default rules) plus ``rules``; its sink records every sinkholed query."""
    sink = Sink()
    server = DnsServer(Sinkhole([*default_rules(), *rules]), None, [("127.0.0.1", 0)],
                       events=sink, limiter=RateLimiter(0))
    running = Dns(server)
    running.sink = sink
    stack.callback(running.close)
    return running


class Ntp(LoopThread):
    sink: Sink


def start_ntp(stack: contextlib.ExitStack) -> Ntp:
    """Our NTP server on 127.0.0.1, synchronised (stratum 3), no rate limit."""
    sink = Sink()
    server = NtpServer([("127.0.0.1", 0)], clock=ClockState(read=lambda: SYNCED, precision=-20),
                       events=sink, limiter=RateLimiter(0))
    running = Ntp(server)
    running.sink = sink
    stack.callback(running.close)
    return running


def start_fake(stack: contextlib.ExitStack, cert: tuple[bytes, bytes], **kw: Any) -> FakeCloud:
    fake = FakeCloud(cert, **kw).start()
    stack.callback(fake.close)
    return fake


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (a closed port: connections are refused)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def make_plug(**kw: Any) -> EmulatedPlug:
    kw.setdefault("clock_start", POWER_ON)
    return EmulatedPlug(MODELS["hs110"], **kw)


def settings(dns_port: int, **kw: Any) -> CloudSettings:
    kw.setdefault("retry", 0.05)
    kw.setdefault("timeout", 2.0)
    return CloudSettings(dns=("127.0.0.1", dns_port), **kw)


def time_only(plug: EmulatedPlug) -> int:
    """Send the plug's cloud attempts to a closed port by address (no DNS query, no
    peer): for tests about time. Returns that port, for the settings."""
    plug.cloud["server"] = "127.0.0.1"
    return free_port()


def run(scenario: Any) -> Any:
    """Run one async scenario with an overall bound (a hang fails, it does not stall)."""
    return asyncio.run(asyncio.wait_for(scenario, 60))


@contextlib.asynccontextmanager
async def running(cloud: PlugCloud) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(cloud.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def blocking(function: Callable[..., Any], *args: Any) -> Any:
    """A server-side wait (FakeCloud.wait_for, WaitingSink.wait_events) in a worker
    thread, so the client keeps running on this loop meanwhile."""
    return await asyncio.to_thread(function, *args)


def plug_clock_error(plug: EmulatedPlug) -> float:
    """How far the plug's wall clock is from this host's (seconds)."""
    return abs(plug.clock() + plug.clock_offset - time.time())


def get_info(plug: EmulatedPlug) -> dict[str, Any]:
    return plug.handle({"cnCloud": {"get_info": {}}})["cnCloud"]["get_info"]


# ---------------------------------------------------------------- settings


def test_settings_are_checked():
    assert settings(53).ntp_names[0] == "0.pool.ntp.org"
    assert settings(53, ntp_names=["a.test"]).ntp_names == ("a.test",)
    assert isinstance(settings(53, ca_file="x.pem").ca_file, Path)
    for bad in ({"dns": ("localhost", 53)}, {"dns": ("127.0.0.1", 0)}, {"cloud_port": 70000},
                {"ntp_port": 0}, {"retry": 0}, {"keepalive": -1}, {"timeout": float("nan")},
                {"resync": 0}, {"ntp_names": ("ok.test", "")}):
        with pytest.raises(ValueError):
            CloudSettings(**{"dns": ("127.0.0.1", 53), **bad})


def test_a_missing_ca_file_fails_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError):
        PlugCloud(make_plug(), settings(53, ca_file=tmp_path / "nope.pem"))


def test_bind_address_uses_the_plugs_own_address_where_it_can():
    assert bind_address("127.0.0.2", "127.0.0.1") == "127.0.0.2"
    assert bind_address("192.168.1.77", "192.168.1.2") == "192.168.1.77"
    for wildcard in (None, "", "0.0.0.0", "::"):
        assert bind_address(wildcard, "127.0.0.1") is None
    assert bind_address("127.0.0.1", "198.18.0.10") is None  # lo cannot reach the network
    assert bind_address("fe80::1", "127.0.0.1") is None


# --------------------------------------------------------------- the clock


def test_sync_clock_sets_the_instant_keeps_the_zone_and_counts_as_synced():
    plug = make_plug(tz_index=41)
    rule = {"schedule": {"add_rule": {"sact": 1, "enable": 1}}}
    assert plug.handle(rule)["schedule"]["add_rule"]["err_code"] == -11
    instant = 1_790_000_000.25
    plug.sync_clock(instant)
    assert abs(plug.plug_now().timestamp() - instant) < 1
    assert plug.tz_index == 41 and plug.time_synced
    assert plug.handle(rule)["schedule"]["add_rule"]["err_code"] == 0


def test_clock_set_from_our_ntp_server_found_through_our_dns(stack, caplog):
    caplog.set_level(logging.INFO, "hs100local.emulator.cloud")
    dns, ntp = start_dns(stack), start_ntp(stack)
    plug = make_plug()
    assert plug.plug_now().year == 2000 and not plug.time_synced
    cloud_port = time_only(plug)
    cloud = PlugCloud(plug, settings(dns.port, ntp_port=ntp.port, cloud_port=cloud_port))

    async def scenario() -> None:
        async with running(cloud):
            await asyncio.wait_for(cloud.synced.wait(), 10)

    run(scenario())
    assert plug.time_synced and plug_clock_error(plug) < 1.0
    assert plug.handle({"time": {"get_time": {}}})["time"]["get_time"]["year"] == \
        plug.plug_now().year >= 2025
    assert cloud.stats.last_sync == ("0.pool.ntp.org", "127.0.0.1")
    assert cloud.stats.time_outcomes == {"synced": 1} and cloud.stats.ntp_requests == 1
    # One SNTP request, carrying the plug's own clock: the year 2000.
    [(kind, client, details)] = ntp.sink.events
    assert (kind, client, details["mode"], details["version"]) == ("ntp", "127.0.0.1", 3, 4)
    assert details["client_time"].startswith("2000-01-01")
    assert [d["name"] for _k, _c, d in dns.sink.events] == ["0.pool.ntp.org"]
    assert re.search(r"time: 0\.pool\.ntp\.org -> 127\.0\.0\.1:\d+: clock set to \d{4}",
                     caplog.text)


@pytest.fixture
def dnsmasq(tmp_path) -> Iterator[int]:
    """dnsmasq: nx.test is NXDOMAIN, pool.test a CNAME of ntp.test = 127.0.0.1."""
    missing = prockit.missing_tool_reason("dnsmasq", "dnsmasq-base")
    if missing:
        pytest.skip(missing)
    proc, port = start_dnsmasq(["--address=/nx.test/", "--host-record=ntp.test,127.0.0.1",
                                "--cname=pool.test,ntp.test"], probe="ntp.test",
                               workdir=tmp_path)
    try:
        yield port
    finally:
        stop_process(proc)


def test_nxdomain_moves_to_the_next_name_and_cnames_are_followed(stack, dnsmasq):
    ntp = start_ntp(stack)
    plug = make_plug()
    cloud = PlugCloud(plug, settings(dnsmasq, ntp_port=ntp.port, cloud_port=time_only(plug),
                                     ntp_names=("nx.test", "pool.test")))

    async def scenario() -> None:
        async with running(cloud):
            await asyncio.wait_for(cloud.synced.wait(), 10)

    run(scenario())
    assert cloud.stats.time_outcomes == {"nxdomain": 1, "synced": 1}
    assert cloud.stats.last_sync == ("pool.test", "127.0.0.1")
    assert plug_clock_error(plug) < 1.0


class Responder(asyncio.DatagramProtocol):
    """A UDP server on the test's loop: ``answer(request)`` -> datagrams to send."""

    def __init__(self, answer: Callable[[bytes], list[bytes]]) -> None:
        self.answer = answer
        self.requests: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests.append((data, addr))
        assert self.transport is not None
        for reply in self.answer(data):
            self.transport.sendto(reply, addr)


@contextlib.asynccontextmanager
async def responder(host: str, port: int,
                    answer: Callable[[bytes], list[bytes]]) -> AsyncIterator[Responder]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Responder(answer), local_addr=(host, port))
    try:
        yield protocol
    finally:
        transport.close()


def ntp_reply(request: bytes, *, leap: int = 0, mode: int = 4, stratum: int = 2,
              origin: bytes | None = None, transmit: bytes | None = None,
              when: float | None = None, ref: bytes = b"GPS\0") -> bytes:
    """A server reply to ``request``, field by field (defaults: a valid stratum 2 one)."""
    stamp = wire.to_ntp(int((time.time() if when is None else when) * 1e9))
    head = struct.pack(">BBbbII4s", (leap << 6) | (4 << 3) | mode, stratum, 4, -20, 0, 0, ref)
    return (head + stamp + (request[40:48] if origin is None else origin) + stamp
            + (stamp if transmit is None else transmit))


YEAR_2030 = 1_900_000_000.0
BAD_NTP = {
    # what the bad server sends -> what becomes of that name
    "silent": (lambda r: [], "ntp_timeout"),
    "kiss_of_death": (lambda r: [ntp_reply(r, stratum=0, leap=3, ref=b"RATE")], "ntp_invalid"),
    "unsynchronised": (lambda r: [ntp_reply(r, stratum=16, leap=3)], "ntp_invalid"),
    "not_synchronised_leap": (lambda r: [ntp_reply(r, leap=3)], "ntp_invalid"),
    "client_mode": (lambda r: [ntp_reply(r, mode=3)], "ntp_invalid"),
    "zero_transmit": (lambda r: [ntp_reply(r, transmit=bytes(8))], "ntp_invalid"),
    "wrong_origin": (lambda r: [ntp_reply(r, origin=bytes(8), when=YEAR_2030)], "ntp_timeout"),
    "short": (lambda r: [ntp_reply(r)[:40]], "ntp_timeout"),
}


@pytest.mark.parametrize("behaviour", list(BAD_NTP))
def test_a_bad_or_silent_ntp_server_moves_to_the_next_name(stack, behaviour):
    answer, outcome = BAD_NTP[behaviour]
    ntp = start_ntp(stack)
    dns = start_dns(stack, Rule("bad.test", "ntp", "127.0.0.3"), Rule("good.test", "ntp"))
    plug = make_plug()
    cloud = PlugCloud(plug, settings(dns.port, ntp_port=ntp.port, cloud_port=time_only(plug),
                                     ntp_names=("bad.test", "good.test"), timeout=0.3))

    async def scenario() -> list[tuple[bytes, tuple[str, int]]]:
        async with responder("127.0.0.3", ntp.port, answer) as bad, running(cloud):
            await asyncio.wait_for(cloud.synced.wait(), 10)
            return bad.requests

    [(request, _addr)] = run(scenario())  # exactly one request per name
    assert len(request) == 48 and request[0] == 0x23  # LI 0, version 4, mode 3
    assert cloud.stats.time_outcomes == {outcome: 1, "synced": 1}
    assert cloud.stats.last_sync == ("good.test", "127.0.0.1")
    assert plug_clock_error(plug) < 1.0  # never the spoofed 2030


def test_a_spoofed_reply_is_ignored_and_the_real_one_taken(stack):
    """A datagram that does not echo our transmit timestamp does not end the wait."""
    dns = start_dns(stack, Rule("ntp.test", "ntp", "127.0.0.3"))
    plug = make_plug()
    port = free_port(socket.SOCK_DGRAM, "127.0.0.3")

    def answer(request: bytes) -> list[bytes]:
        return [ntp_reply(request, origin=b"\x01" * 8, when=YEAR_2030), b"junk",
                ntp_reply(request)]

    cloud = PlugCloud(plug, settings(dns.port, ntp_port=port, cloud_port=time_only(plug),
                                     ntp_names=("ntp.test",)))

    async def scenario() -> None:
        async with responder("127.0.0.3", port, answer), running(cloud):
            await asyncio.wait_for(cloud.synced.wait(), 10)

    run(scenario())
    assert cloud.stats.time_outcomes == {"synced": 1} and plug_clock_error(plug) < 1.0


def test_after_the_whole_list_failed_it_waits_and_rotates_again(stack, caplog):
    caplog.set_level(logging.INFO, "hs100local.emulator.cloud")
    dns = start_dns(stack, Rule("nx1.test", "nxdomain"), Rule("nx2.test", "nxdomain"))
    plug = make_plug()
    cloud = PlugCloud(plug, settings(dns.port, cloud_port=time_only(plug),
                                     ntp_names=("nx1.test", "nx2.test")))

    async def scenario() -> None:
        async with running(cloud):
            await cloud.wait_until(lambda s: s.time_outcomes.get("nxdomain", 0) >= 5)

    run(scenario())
    names = [d["name"] for _k, _c, d in dns.sink.events]
    assert names[:5] == ["nx1.test", "nx2.test", "nx1.test", "nx2.test", "nx1.test"]
    assert not plug.time_synced and plug.plug_now().year == 2000
    assert "time: none of 2 NTP names gave the time; retry in 0.05 s" in caplog.text
    assert "time: nx1.test: NXDOMAIN" in caplog.text


def test_once_synced_it_syncs_again_every_resync_seconds(stack):
    dns, ntp = start_dns(stack), start_ntp(stack)
    plug = make_plug()
    cloud = PlugCloud(plug, settings(dns.port, ntp_port=ntp.port, cloud_port=time_only(plug),
                                     resync=0.05))

    async def scenario() -> None:
        async with running(cloud):
            await cloud.wait_until(lambda s: s.ntp_syncs >= 3)

    run(scenario())
    # The rotation goes on: each sync asks the next name of the list.
    assert [d["name"] for _k, _c, d in dns.sink.events][:3] == \
        ["0.pool.ntp.org", "1.pool.ntp.org", "time-a.nist.gov"]


# --------------------------------------------------------------------- DNS


def dns_reply(query: DNSRecord, *records: RR, rcode: int = RCODE.NOERROR,
              qid: int | None = None, name: str | None = None) -> bytes:
    reply = query.reply()
    reply.header.rcode = rcode
    if qid is not None:
        reply.header.id = qid
    if name is not None:
        reply.questions = [DNSQuestion(name)]  # reply() shares the query's question object
    for record in records:
        reply.add_answer(record)
    return reply.pack()


def test_resolver_ignores_garbage_and_strangers_and_follows_cnames():
    def answer(data: bytes) -> list[bytes]:
        query = DNSRecord.parse(data)
        return [
            b"\x00\x01garbage",
            dns_reply(query, RR("x.test", rdata=A("198.18.0.66")), qid=query.header.id ^ 1),
            dns_reply(query, RR("y.test", rdata=A("198.18.0.67")), name="y.test"),
            dns_reply(query, RR("x.test", QTYPE.CNAME, rdata=CNAME("a.test")),
                      RR("other.test", rdata=A("198.18.0.68")),
                      RR("a.test", QTYPE.CNAME, rdata=CNAME("b.test")),
                      RR("b.test", rdata=A("198.18.0.10"))),
        ]

    async def scenario() -> str:
        port = free_port(socket.SOCK_DGRAM)
        async with responder("127.0.0.1", port, answer):
            return await resolve_a("X.test", ("127.0.0.1", port), timeout=5)

    assert run(scenario()) == "198.18.0.10"


@pytest.mark.parametrize("records, rcode, reason", [
    ((), RCODE.NXDOMAIN, "nxdomain"),
    ((), RCODE.SERVFAIL, "dns_error"),
    ((), RCODE.NOERROR, "nodata"),
    ((RR("x.test", QTYPE.CNAME, rdata=CNAME("x.test")),), RCODE.NOERROR, "nodata"),  # a loop
    ((RR("x.test", QTYPE.AAAA, rdata=AAAA("::1")), RR("y.test", rdata=A("198.18.0.1"))),
     RCODE.NOERROR, "nodata"),
    (None, None, "dns_timeout"),  # silence
])
def test_resolver_failures_have_names(records, rcode, reason):
    from hs100local.emulator.cloud import _Failed

    def answer(data: bytes) -> list[bytes]:
        if records is None:
            return []
        query = DNSRecord.parse(data)
        return [dns_reply(query, *records, rcode=rcode)]

    async def scenario() -> None:
        port = free_port(socket.SOCK_DGRAM)
        async with responder("127.0.0.1", port, answer):
            await resolve_a("x.test", ("127.0.0.1", port), timeout=0.3)

    with pytest.raises(_Failed) as caught:
        run(scenario())
    assert caught.value.reason == reason


# --------------------------------------------------------------------- TLS


def first_flight(context: ssl.SSLContext) -> ClientHello:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=None)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = parse_client_hello(outgoing.read())
    assert isinstance(hello, ClientHello)
    return hello


def test_the_client_hello_is_plug_like(ca):
    hello = first_flight(plug_context(ca.cert_pem.bytes()))
    assert hello.record_version == 0x0301 and hello.client_version == 0x0303
    assert hello.sni is None and EXT_SERVER_NAME not in hello.extensions
    assert not hello.supported_versions and not hello.alpn
    assert len(hello.cipher_suites) >= 40
    assert not ANON_SUITES & set(hello.cipher_suites)  # the pinning cannot be bypassed


def test_our_listener_sees_a_plug_like_hello_and_records_unknown_ca(stack, listener_cert,
                                                                  caplog):
    caplog.set_level(logging.INFO, "hs100local.emulator.cloud")
    dns, sink = start_dns(stack), WaitingSink()
    listener = LoopThread(CloudListener([("127.0.0.1", 0)], certificate=listener_cert,
                                        events=sink, limiter=RateLimiter(0)))
    stack.callback(listener.close)
    plug = make_plug()
    cloud = PlugCloud(plug, settings(dns.port, cloud_port=listener.port, ntp_names=()))

    async def scenario() -> list[Any]:
        async with running(cloud):
            events = await blocking(sink.wait_events, 2)  # it retries after `retry`
            await cloud.wait_until(lambda s: s.outcomes.get("unknown_ca", 0) >= 2)
            return events

    events = run(scenario())
    for kind, client, details in events:
        assert (kind, client, details["outcome"]) == ("tls", "127.0.0.1", "unknown_ca")
        assert details["record_version"] == "TLS 1.0"
        assert details["client_version"] == details["version"] == "TLS 1.2"
        assert details["sni"] is None and details["alpn"] == []
        assert details["ciphers"] >= 40
    assert [d["name"] for _k, _c, d in dns.sink.events][:2] == [CLOUD, CLOUD]
    assert get_info(plug)["cld_connection"] == 0 and cloud.stats.registrations == 0
    assert re.search(r"cloud: n-devs\.tplinkcloud\.com -> 127\.0\.0\.1:\d+: certificate not "
                     r"from our CA \(unknown_ca sent\); retry in 0\.05 s", caplog.text)


def test_without_a_ca_file_nobody_is_trusted(stack, cloud_cert):
    """The throwaway CA: even the fake cloud (the pinned CA's) gets unknown_ca."""
    dns = start_dns(stack)
    fake = start_fake(stack, cloud_cert)
    cloud = PlugCloud(make_plug(), settings(dns.port, cloud_port=fake.port, ntp_names=()))

    async def scenario() -> list[dict[str, Any]]:
        async with running(cloud):
            return await blocking(fake.wait_for, "handshake_failed", 1)

    [failed] = run(scenario())
    assert failed["reason"] == "tlsv1_alert_unknown_ca"
    assert not [e for e in fake.events if e["event"] == "register"]


def test_registers_keeps_alive_and_reconnects_after_the_cloud_drops_it(stack, ca_file,
                                                                      cloud_cert, tmp_path):
    dns = start_dns(stack)
    log_path = tmp_path / "fakecloud.log"
    log = stack.enter_context(open(log_path, "a", buffering=1))  # noqa: SIM115
    fake = start_fake(stack, cloud_cert, log=log)
    plug = make_plug(alias="Kettle")
    cloud = PlugCloud(plug, settings(dns.port, cloud_port=fake.port, ca_file=ca_file,
                                     keepalive=0.05, retry=0.5, ntp_names=()))
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with running(cloud):
            await asyncio.wait_for(cloud.connected.wait(), 10)
            seen["info_up"] = get_info(plug)
            await blocking(fake.wait_for, "keepalive", 3)
            await cloud.wait_until(lambda s: s.messages_received >= 2)  # the acks
            assert fake.drop() == 1
            stats = await cloud.wait_until(lambda s: s.disconnects.get("closed", 0) >= 1)
            seen["info_down"] = get_info(plug)
            seen["connected_after_drop"] = cloud.connected.is_set()
            seen["attempts_after_drop"] = stats.cloud_attempts
            await blocking(fake.wait_for, "register", 2)  # it came back after `retry`
            await asyncio.wait_for(cloud.connected.wait(), 10)

    run(scenario())
    assert seen["info_up"]["cld_connection"] == 1
    assert seen["info_down"]["cld_connection"] == 0 and not seen["connected_after_drop"]
    assert seen["attempts_after_drop"] == 1
    assert get_info(plug)["cld_connection"] == 0  # after run() was cancelled
    assert cloud.stats.outcomes == {"connected": 2} and cloud.stats.registrations == 2
    register = fake.wait_for("register", 2)[0]
    assert register["params"] == {
        "deviceId": plug.device_id, "hwId": register["params"]["hwId"],
        "oemId": register["params"]["oemId"], "mac": plug.mac, "model": "HS110(EU)",
        "hwVer": "1.0", "fwVer": MODELS["hs110"].sw_ver, "alias": "Kettle"}
    keepalive = fake.wait_for("keepalive")[0]
    assert keepalive["params"] == {"deviceId": plug.device_id}
    assert keepalive["peer"] == "127.0.0.1" and keepalive["port"] == fake.port
    fake.close()
    logged = [json.loads(line) for line in log_path.read_text().splitlines()]
    kinds = [e["event"] for e in logged]
    assert kinds[:3] == ["connect", "handshake", "register"] and "dropped" in \
        [e.get("reason") for e in logged if e["event"] == "disconnect"]


def test_set_server_url_to_an_address_skips_dns(stack, ca_file, cloud_cert):
    fake = start_fake(stack, cloud_cert)
    plug = make_plug()
    reply = plug.handle({"cnCloud": {"set_server_url": {"server": "127.0.0.1"}}})
    assert reply["cnCloud"]["set_server_url"]["err_code"] == 0
    silent_dns = free_port(socket.SOCK_DGRAM)  # nobody answers there
    cloud = PlugCloud(plug, settings(silent_dns, cloud_port=fake.port, ca_file=ca_file,
                                     ntp_names=()))

    async def scenario() -> None:
        async with running(cloud):
            await blocking(fake.wait_for, "register", 1)

    run(scenario())
    assert cloud.stats.dns_queries == 0
    assert cloud.stats.last_cloud_peer == ("127.0.0.1", fake.port)


def test_a_named_server_url_is_looked_up(stack, ca_file, cloud_cert):
    dns = start_dns(stack, Rule("cloud.example.test", "redirect"))
    fake = start_fake(stack, cloud_cert)
    plug = make_plug()
    plug.handle({"cnCloud": {"set_server_url": {"server": "cloud.example.test"}}})
    cloud = PlugCloud(plug, settings(dns.port, cloud_port=fake.port, ca_file=ca_file,
                                     ntp_names=()))

    async def scenario() -> None:
        async with running(cloud):
            await blocking(fake.wait_for, "register", 1)

    run(scenario())
    assert [d["name"] for _k, _c, d in dns.sink.events] == ["cloud.example.test"]


def test_outgoing_sockets_are_bound_to_the_plugs_address(stack, ca_file, cloud_cert):
    dns, ntp = start_dns(stack), start_ntp(stack)
    fake = start_fake(stack, cloud_cert)
    plug = make_plug()
    cloud = PlugCloud(plug, settings(dns.port, ntp_port=ntp.port, cloud_port=fake.port,
                                     ca_file=ca_file), source="127.0.0.2")

    async def scenario() -> None:
        async with running(cloud):
            await asyncio.wait_for(cloud.synced.wait(), 10)
            await blocking(fake.wait_for, "register", 1)

    run(scenario())
    assert {client for _k, client, _d in dns.sink.events} == {"127.0.0.2"}
    assert {d["name"] for _k, _c, d in dns.sink.events} == {"0.pool.ntp.org", CLOUD}
    assert [client for _k, client, _d in ntp.sink.events] == ["127.0.0.2"]
    assert {e["peer"] for e in fake.events} == {"127.0.0.2"}


# ------------------------------------------------------------ cancellation


def test_cancellation_stops_every_wait_at_once(stack):
    """Stuck in a DNS wait and in a TLS handshake (a server that reads the hello and
    never answers), both with a 30 s timeout: cancelling ends run() at once and
    closes its sockets."""
    silent_dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stack.callback(silent_dns.close)
    silent_dns.bind(("127.0.0.1", 0))
    mute = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stack.callback(mute.close)
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    plug = make_plug()
    plug.cloud["server"] = "127.0.0.1"
    cloud = PlugCloud(plug, settings(silent_dns.getsockname()[1], timeout=30,
                                     cloud_port=mute.getsockname()[1]))

    async def scenario() -> tuple[float, socket.socket, bytes]:
        task = asyncio.ensure_future(cloud.run())
        await asyncio.to_thread(silent_dns.recv, 512)  # the NTP name's query is out
        conn, _ = await asyncio.to_thread(mute.accept)
        stack.callback(conn.close)
        conn.settimeout(5)
        hello = await asyncio.to_thread(conn.recv, 65536)  # the hello is out
        started = time.monotonic()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        return time.monotonic() - started, conn, hello

    took, conn, hello = run(scenario())
    assert took < 0.5
    assert isinstance(parse_client_hello(hello), ClientHello)
    assert conn.recv(65536) == b""  # the client's socket was closed
    assert cloud.stats.outcomes == {} and cloud.stats.time_outcomes == {}  # no outcome


def test_cancellation_while_connected_ends_the_session(stack, ca_file, cloud_cert):
    fake = start_fake(stack, cloud_cert)
    plug = make_plug()
    plug.cloud["server"] = "127.0.0.1"
    cloud = PlugCloud(plug, settings(53, cloud_port=fake.port, ca_file=ca_file, ntp_names=()))

    async def scenario() -> float:
        task = asyncio.ensure_future(cloud.run())
        await asyncio.wait_for(cloud.connected.wait(), 10)
        started = time.monotonic()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return time.monotonic() - started

    assert run(scenario()) < 0.5
    assert get_info(plug)["cld_connection"] == 0 and not cloud.connected.is_set()
    assert fake.wait_for("disconnect")[0]["reason"] in ("closed", "ssleoferror",
                                                        "unexpected_eof_while_reading")


# ------------------------------------------------------------ bad servers


async def _close_now(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def _reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _endless_record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A handshake record header announcing 64 KiB, then junk for ever."""
    await reader.read(1)
    writer.write(b"\x16\x03\x01\xff\xff")
    with contextlib.suppress(OSError):
        for _ in range(1000):
            writer.write(b"\x00" * 4096)
            await writer.drain()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the client gives up


@pytest.mark.parametrize("server, outcomes", [
    (_close_now, {"closed"}),
    (_http, {"not_tls"}),
    (_reset, {"reset"}),
    (_endless_record, {"not_tls", "tls_error"}),
    (_silent, {"timeout"}),
])
def test_a_server_that_is_no_tls_server_is_an_outcome_not_a_crash(server, outcomes):
    plug = make_plug()
    plug.cloud["server"] = "127.0.0.1"

    async def scenario() -> CloudStats:
        handlers: list[tuple[asyncio.Task[Any], asyncio.StreamWriter]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handlers.append((asyncio.current_task(), writer))  # type: ignore[arg-type]
            try:
                await server(reader, writer)
            finally:
                writer.close()

        tcp = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = tcp.sockets[0].getsockname()[1]
        cloud = PlugCloud(plug, settings(53, cloud_port=port, timeout=0.3, ntp_names=()))
        try:
            async with running(cloud):
                return await cloud.wait_until(lambda s: sum(s.outcomes.values()) >= 2)
        finally:
            tcp.close()
            for _task, writer in handlers:
                writer.close()
            await asyncio.gather(*(task for task, _w in handlers), return_exceptions=True)

    stats = run(scenario())
    assert set(stats.outcomes) <= outcomes and stats.cloud_attempts >= 2
    assert stats.last_error and "internal error" not in stats.last_error


def test_a_refused_connection_is_an_outcome():
    plug = make_plug()
    plug.cloud["server"] = "127.0.0.1"
    cloud = PlugCloud(plug, settings(53, cloud_port=free_port(), ntp_names=()))

    async def scenario() -> CloudStats:
        async with running(cloud):
            return await cloud.wait_until(lambda s: s.outcomes.get("refused", 0) >= 2)

    port = cloud.settings.cloud_port
    assert run(scenario()).last_error.endswith(f"127.0.0.1:{port}: connection refused")


@pytest.mark.parametrize("reply, reason", [
    (struct.pack(">I", MAX_MESSAGE + 1) + b"{}", "oversized"),
    (struct.pack(">I", 1 << 31) + b"x" * 100, "oversized"),
    (struct.pack(">I", 8) + b"not json", "bad_message"),
    (struct.pack(">I", 7) + b"[1,2,3]", "bad_message"),  # JSON, but not an object
])
def test_a_bad_answer_from_the_cloud_ends_the_session_and_it_retries(stack, ca_file, cloud_cert,
                                                                     reply, reason):
    fake = start_fake(stack, cloud_cert, reply=reply)
    plug = make_plug()
    plug.cloud["server"] = "127.0.0.1"
    cloud = PlugCloud(plug, settings(53, cloud_port=fake.port, ca_file=ca_file, ntp_names=()))

    async def scenario() -> CloudStats:
        async with running(cloud):
            return await cloud.wait_until(lambda s: s.disconnects.get(reason, 0) >= 2)

    stats = run(scenario())
    assert stats.registrations >= 2 and stats.outcomes.get("connected", 0) >= 2
    assert get_info(plug)["cld_connection"] == 0


# ------------------------------------------------------- fakecloud as a script


def test_fakecloud_script_serves_and_logs_json_lines(ca, ca_file, tmp_path):
    key_file = tmp_path / "ca-key.pem"
    key_file.write_bytes(ca.private_key_pem.bytes())
    log_path = tmp_path / "events.log"
    proc = prockit.spawn(
        [sys.executable, str(REPO / "tests" / "fakecloud.py"), "--ca-cert", str(ca_file),
         "--ca-key", str(key_file), "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0",
         "--log", str(log_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", ready)]
        assert ready.startswith("fakecloud listening on ") and len(ports) == 2, ready
        plug = make_plug()
        plug.cloud["server"] = "127.0.0.1"
        cloud = PlugCloud(plug, settings(53, cloud_port=ports[1], ca_file=ca_file,
                                         ntp_names=()))

        async def scenario() -> None:
            async with running(cloud):
                # the server logs a message before it answers it
                await cloud.wait_until(lambda s: s.messages_received >= 1)

        run(scenario())
    finally:
        prockit.finish(proc)
    assert proc.returncode == 0
    logged = [json.loads(line) for line in log_path.read_text().splitlines()]
    register = next(e for e in logged if e["event"] == "register")
    assert register["port"] == ports[1] and register["peer"] == "127.0.0.1"
    assert register["params"]["deviceId"] == plug.device_id


@pytest.mark.parametrize(("args", "message"), [
    (["--cloud"], "--cloud needs --dns"),
    (["--dns", "127.0.0.1"], "need --cloud"),
    (["--cloud", "--dns", "127.0.0.1", "--protocol", "klap"], "not with --protocol klap"),
    (["--cloud", "--dns", "127.0.0.1:99999"], "--dns"),
])
def test_emulate_cloud_usage_errors(args, message):
    from click.testing import CliRunner

    from hs100local.cli import cli

    result = CliRunner().invoke(cli, ["emulate", "--port", "0", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_emulate_cloud_refuses_a_ca_file_that_is_no_certificate(tmp_path):
    from click.testing import CliRunner

    from hs100local.cli import cli

    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    result = CliRunner().invoke(cli, ["emulate", "--port", "0", "--cloud", "--dns",
                                      "127.0.0.1", "--cloud-ca", str(bad)])
    assert result.exit_code == 3, result.output
    assert "--cloud-ca" in result.output

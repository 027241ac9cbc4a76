"""The DNS responder against real clients (dig, dnspython) and a real upstream (dnsmasq).

Everything runs on loopback high ports: our server in a background event loop,
dnsmasq as the upstream (serving a few local records, no recursion), dig and
dnspython as clients no one here wrote.
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import prockit
import pytest
from servicekit import LoopThread, Sink, start_dnsmasq, stop_process

from hs100local.dns import wire
from hs100local.dns.forward import Forwarder
from hs100local.dns.rules import Rule, Sinkhole, default_rules, parse_rule
from hs100local.dns.server import DnsServer, RateLimiter
from hs100local.errors import TargetError

TYPES = ["A", "AAAA", "TXT", "HTTPS", "MX", "ANY"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[int]:
    """A real resolver as upstream, authoritative for *.fwd.test only."""
    proc, port = start_dnsmasq([
        "--local-ttl=300", "--address=/fwd.test/198.18.7.7", "--address=/fwd.test/::7",
        "--txt-record=fwd.test,hello", "--mx-host=fwd.test,mail.fwd.test,10",
    ])
    try:
        yield port
    finally:
        stop_process(proc)


class Running(LoopThread):
    """A DnsServer on its own loop in a thread; ``port`` for UDP and TCP."""

    def ask(self, name: str, qtype: str = "A", *, tcp: bool = False,
            timeout: float = 3) -> dns.message.Message:
        query = dns.message.make_query(name, qtype)
        send = dns.query.tcp if tcp else dns.query.udp
        return send(query, "127.0.0.1", port=self.port, timeout=timeout)


def start(upstream: int | None, rules=None, **kw) -> Running:
    sinkhole = Sinkhole(default_rules() if rules is None else rules)
    forwarder = Forwarder([("127.0.0.1", upstream)], timeout=kw.pop("timeout", 3.0),
                          attempt_timeout=kw.pop("attempt_timeout", 1.0)) if upstream else None
    return Running(DnsServer(sinkhole, forwarder, [("127.0.0.1", 0)], **kw))


@pytest.fixture
def server(dnsmasq) -> Iterator[Running]:
    sink = Sink()
    rules = [*default_rules(), Rule("redirect.test", "redirect"),
             Rule("fixed.test", "redirect", "198.18.9.9"), Rule("ntp.test", "ntp"),
             Rule("null.test", "null"), Rule("nodata.test", "nodata"),
             Rule("nx.test", "nxdomain")]
    running = start(dnsmasq, rules, events=sink)
    running.sink = sink  # type: ignore[attr-defined]
    yield running
    running.close()


def rrs(msg: dns.message.Message) -> list[tuple[str, str]]:
    return sorted((dns.rdatatype.to_text(r.rdtype), item.to_text())
                  for r in msg.answer for item in r)


# ------------------------------------------------------------- rules


@pytest.mark.parametrize("name, matched", [
    ("tplinkcloud.com", "tplinkcloud.com"),
    ("n-devs.tplinkcloud.com", "tplinkcloud.com"),
    ("N-DEVS.TPLinkCloud.COM.", "tplinkcloud.com"),
    ("a.b.c.tplinkra.com", "tplinkra.com"),
    ("eviltplinkcloud.com", None),
    ("tplinkcloud.com.evil.net", None),
    ("tplinkcloud.co", None),
    ("com", None),
    ("2.cn.pool.ntp.org", "pool.ntp.org"),
    ("s1b.time.edu.cn", "time.edu.cn"),
    ("notime.edu.cn", None),
])
def test_suffix_matching_is_label_wise(name, matched):
    rule = Sinkhole(default_rules()).match(name)
    assert (rule.suffix if rule else None) == matched


def test_longest_suffix_wins_and_rules_parse():
    sink = Sinkhole([Rule("tplinkcloud.com"), parse_rule("download.tplinkcloud.com=nxdomain")])
    assert sink.match("download.tplinkcloud.com").mode == "nxdomain"
    assert sink.match("n-devs.tplinkcloud.com").mode == "redirect"
    assert parse_rule("time.nist.gov").mode == "ntp"
    assert parse_rule("x.test=redirect:198.18.0.5").address == "198.18.0.5"
    for bad in ("x.test=bogus", "x.test=null:1.2.3.4", "x..test", "x.test=redirect:nope", ""):
        with pytest.raises(TargetError):
            parse_rule(bad)


# ---------------------------------------------------- mode x type table

EXPECTED = {
    # mode: (rcode for every type, A answer or None)
    "redirect": ("NOERROR", "127.0.0.1"),
    "fixed": ("NOERROR", "198.18.9.9"),
    "ntp": ("NOERROR", "127.0.0.1"),
    "null": ("NOERROR", "0.0.0.0"),
    "nodata": ("NOERROR", None),
    "nx": ("NXDOMAIN", None),
}


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("mode", list(EXPECTED))
def test_sinkhole_modes_by_type(server, mode, qtype):
    before = server.server.forwarder.stats["forwarded"]
    reply = server.ask(f"host.{mode}.test" if mode != "fixed" else "x.fixed.test", qtype)
    rcode, address = EXPECTED[mode]
    assert dns.rcode.to_text(reply.rcode()) == rcode
    assert reply.flags & dns.flags.AA
    if qtype == "A" and address is not None:
        assert rrs(reply) == [("A", address)]
        assert reply.answer[0].ttl == 60
    else:
        assert reply.answer == []
        [soa] = reply.authority
        assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 60
    # never forwarded, whatever the type
    assert server.server.forwarder.stats["forwarded"] == before
    kind, client, details = server.sink.events[-1]
    assert (kind, client, details["type"]) == ("dns", "127.0.0.1", qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_forwarded_answers_match_the_upstream(server, dnsmasq, qtype):
    ours = server.ask("fwd.test", qtype)
    theirs = dns.query.udp(dns.message.make_query("fwd.test", qtype), "127.0.0.1",
                           port=dnsmasq, timeout=3)
    assert ours.rcode() == theirs.rcode()
    assert rrs(ours) == rrs(theirs)
    assert server.sink.events == []  # forwarded queries are counted, not stored


def test_dig_udp_and_tcp(server):
    dig = shutil.which("dig")
    if dig is None:
        pytest.fail("dig is needed (Debian dnsutils; .ci/run installs it)")
    for transport in ([], ["+tcp"]):
        out = prockit.run([dig, "@127.0.0.1", "-p", str(server.port), "+short", "+tries=1",
                              "+time=3", *transport, "n-devs.tplinkcloud.com"],
                          capture_output=True, text=True, timeout=10).stdout
        assert out.strip() == "127.0.0.1"
        out = prockit.run([dig, "@127.0.0.1", "-p", str(server.port), "+short", "+tries=1",
                              "+time=3", *transport, "fwd.test", "TXT"],
                          capture_output=True, text=True, timeout=10).stdout
        assert out.strip() == '"hello"'


def test_many_queries_on_one_tcp_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        for name in ("a.tplinkcloud.com", "fwd.test", "b.nx.test", "fwd.test"):
            reply = dns.query.tcp(dns.message.make_query(name, "A"), "127.0.0.1",
                                  sock=sock, timeout=3)
            assert reply.question[0].name.to_text().rstrip(".") == name


def test_cache_hit_keeps_id_and_question_spelling(server):
    first = server.ask("fwd.test", "A")
    hits = server.server.forwarder.stats["cache_hits"]
    again = server.ask("FWD.test", "A")
    assert server.server.forwarder.stats["cache_hits"] == hits + 1
    assert rrs(again) == rrs(first)
    assert again.question[0].name.to_text() == "FWD.test."


def test_cache_counts_ttls_down_and_expires():
    fwd = Forwarder([("127.0.0.1", 9)])
    query = dns.message.make_query("fwd.test", "A")
    data = query.to_wire()
    q = wire.parse_query(data)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("fwd.test.", 300, "IN", "A", "198.18.7.7"))
    fwd.store(q, reply.to_wire(), now=100.0)
    later = dns.message.from_wire(fwd.cached(q, now=160.5))
    assert later.answer[0].ttl == 240
    assert fwd.cached(q, now=400.0) is None  # expired and dropped
    servfail = dns.message.make_response(query)
    servfail.set_rcode(dns.rcode.SERVFAIL)
    fwd.store(q, servfail.to_wire(), now=100.0)
    assert fwd.cached(q, now=101.0) is None


def test_acl_refuses_other_networks(dnsmasq):
    import ipaddress

    running = start(dnsmasq, allow=[ipaddress.IPv4Network("198.18.0.0/24")])
    try:
        for name in ("fwd.test", "n-devs.tplinkcloud.com"):
            assert running.ask(name).rcode() == dns.rcode.REFUSED
        assert running.server.forwarder.stats["forwarded"] == 0
    finally:
        running.close()


def test_upstream_down_is_servfail_within_the_timeout():
    running = start(free_port(), timeout=1.0, attempt_timeout=0.4)
    try:
        started = time.monotonic()
        reply = running.ask("fwd.test", timeout=5)
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - started < 2.5
        # the sinkhole still answers while the upstream is down
        assert rrs(running.ask("x.tplinkcloud.com")) == [("A", "127.0.0.1")]
    finally:
        running.close()


def test_rate_limit_drops_floods(dnsmasq):
    running = start(dnsmasq, limiter=RateLimiter(rate=1, burst=3))
    try:
        answered = 0
        for _ in range(6):
            try:
                running.ask("x.tplinkcloud.com", timeout=0.3)
                answered += 1
            except dns.exception.Timeout:
                pass
        assert answered == 3
        assert running.server.stats.rate_limited == 3
    finally:
        running.close()


# ------------------------------------------------------------ bad input


def raw_udp(port: int, payload: bytes, timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def test_malformed_queries_get_defined_reactions(server):
    header = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    formerr = raw_udp(server.port, header + b"\x07garbage")
    assert formerr is not None and formerr[:2] == b"\x12\x34"
    assert formerr[3] & 0x0F == 1  # FORMERR
    assert raw_udp(server.port, b"\x01\x02\x03", timeout=0.3) is None  # no header: dropped
    answer = struct.pack(">HHHHHH", 0x2222, 0x8180, 0, 0, 0, 0)
    assert raw_udp(server.port, answer, timeout=0.3) is None  # a response: never answered
    status = dns.message.make_query("fwd.test", "A")
    status.set_opcode(dns.opcode.STATUS)
    reply = raw_udp(server.port, status.to_wire())
    assert reply is not None and reply[3] & 0x0F == 4  # NOTIMP
    two = dns.message.make_query("fwd.test", "A")
    two.question.append(two.question[0])
    reply = raw_udp(server.port, two.to_wire())
    assert reply is not None and reply[3] & 0x0F == 1
    # still serving
    assert rrs(server.ask("x.tplinkcloud.com")) == [("A", "127.0.0.1")]


class SpyUpstream:
    """An upstream that records every name it is asked and answers REFUSED."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.names: list[str] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            try:
                msg = dns.message.from_wire(data)
                self.names.append(msg.question[0].name.to_text().rstrip(".").lower())
                reply = dns.message.make_response(msg)
                reply.set_rcode(dns.rcode.REFUSED)
                self.sock.sendto(reply.to_wire(), addr)
            except Exception:
                self.names.append("<unparsable>")


def mutate(rng: random.Random, packet: bytes) -> bytes:
    data = bytearray(packet)
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        if choice < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.7:
            data = data[: rng.randrange(len(data) + 1)]
        elif choice < 0.9:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        else:
            data[2:4] = rng.randrange(65536).to_bytes(2, "big")
    return bytes(data)


def test_fuzz_udp_and_tcp_then_still_correct_and_nothing_leaked():
    spy = SpyUpstream()
    running = start(spy.port, limiter=RateLimiter(rate=0), timeout=0.5, attempt_timeout=0.5)
    rng = random.Random(20261124)
    seeds = [dns.message.make_query(name, qtype).to_wire()
             for name in ("n-devs.tplinkcloud.com", "x.pool.ntp.org", "fwd.test")
             for qtype in TYPES]
    sent = 0
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for batch in range(30):
                for i in range(100):
                    payload = (bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
                               if i % 3 == 0 else mutate(rng, rng.choice(seeds)))
                    s.sendto(payload, ("127.0.0.1", running.port))
                    sent += 1
                # The server reads its socket in order: once this is answered, the batch
                # before it was handled (batches stay far below the socket buffer).
                probe = running.ask(f"p{batch}.tplinkcloud.com", timeout=5)
                assert rrs(probe) == [("A", "127.0.0.1")]
        for _ in range(20):  # TCP: random streams, truncated frames, junk lengths
            with socket.create_connection(("127.0.0.1", running.port), timeout=2) as t:
                for _ in range(20):
                    body = mutate(rng, rng.choice(seeds))
                    t.sendall(len(body).to_bytes(2, "big") + body)
                t.sendall(b"\xff\xff" + b"short")
        assert rrs(running.ask("n-devs.tplinkcloud.com")) == [("A", "127.0.0.1")]
        assert running.ask("fwd.test").rcode() == dns.rcode.REFUSED  # from the spy
        rules = Sinkhole(default_rules())
        leaked = [n for n in spy.names if n != "<unparsable>" and rules.match(n)]
        assert leaked == []
        stats = running.server.stats
        assert stats.queries >= sent + 30  # every datagram was judged
        assert stats.formerr > 1000
    finally:
        running.close()
        spy.sock.close()


@pytest.mark.parametrize("label", [b"a\nb", b"a b", b"a\\b", b"a.b", b"\x00"])
def test_odd_names_leave_the_fast_path_and_are_recorded_escaped(label):
    """Control bytes, spaces, backslashes and dots inside a label: dnslib's escaping
    (\\DDD) names them, whichever path would have served the query."""
    header = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    question = (bytes([len(label)]) + label + b"\x0btplinkcloud\x03com\x00"
                + struct.pack(">HH", 1, 1))
    assert wire.parse_query(header + question) is None
    assert wire.parse_query(header + b"\x01a\x0btplinkcloud\x03com\x00"
                            + struct.pack(">HH", 1, 1)).name == "a.tplinkcloud.com"
    sink = Sink()
    server = DnsServer(Sinkhole(default_rules()), None, [("127.0.0.1", 0)], events=sink)
    reply = server.handle(header + question, "127.0.0.1", "127.0.0.1")
    assert isinstance(reply, (bytes, bytearray)) and reply[3] & 0x0F == 0  # NOERROR
    [(kind, _client, details)] = sink.events
    assert kind == "dns" and details["name"].endswith(".tplinkcloud.com")
    assert details["name"].isprintable() and "\n" not in details["name"]

"""`hs100local serve` under abuse: killed with SIGKILL mid-flood, and fed random bytes.

1. A flood of distinct events (DNS queries for distinct sinkholed names, NTP requests
   with distinct transmit times, TLS hellos with distinct SNIs) and one repeated query,
   then ``kill -9`` while it runs. The database must pass ``PRAGMA integrity_check``,
   hold every event answered more than ``DURABLE_MARGIN`` before the kill (the store
   commits within 0.5 s; the margin allows for a busy 2-core machine), hold the
   repeats' counts as of then, and have no two rows that folding should have made
   one. A restarted serve on the same file answers and records, and the earlier
   events are still there.
2. Seeded random bytes on every port (DNS UDP and TCP, NTP, cloud TLS): the process
   keeps running, answers real clients (dnspython, ntplib, Python's ssl) and records
   them, and never logs a traceback; DNS and NTP answer exactly what the README says
   they answer (one reply per query with a header; NTP: none to short packets, bad
   versions, modes other than 1 and 3).
3. Two bugs these tests found, fixed: a DNS-over-TCP client resetting while the server
   writes was logged as an internal error; names from the network (a DNS query name, a
   TLS SNI) with a newline forged log lines.

Every service runs with its rate limit off: with it on, a flood or a fuzz run from
127.0.0.1 is mostly dropped before the code under test ever sees it.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import select
import socket
import sqlite3
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dns.message
import ntplib
import pytest
from servekit import Serve, answers, ask, write_config
from tlskit import BioClient, hello_bytes, insecure_context

from hs100local.events import EventStore

#: an event answered longer than this before the kill must be in the database
DURABLE_MARGIN = 1.5
#: no rate limits: every packet of a flood or a fuzz run reaches the code under test
NO_LIMITS = "dns-rate-limit = 0\nntp-rate-limit = 0\ncloud-rate-limit = 0\n"
REPEAT = "repeat.tplinkcloud.com"
NTP_2000 = 3155673600  # 2000-01-01T00:00:00Z in NTP seconds (a plug after a power cut)
UNIX_2000 = 946684800
#: datagrams sent between two answered probes: the answer to a probe says the server
#: has read everything sent before it (one socket, in order), and so few datagrams
#: (at most ~90 KiB) never overflow its receive buffer, where the kernel would drop
#: them, the probe included, as if the server had stopped answering
PACE = 20


@pytest.fixture
def config(tmp_path: Path, dnsmasq_upstream: int) -> Path:
    return write_config(tmp_path / "serve.toml", dnsmasq_upstream, tmp_path / "serve.db",
                        NO_LIMITS)


# ---------------------------------------------------------------- helpers


def read_db(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows from the committed database, on a short read-only connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def recorded(db: Path, kind: str, key: str, value: Any) -> bool:
    rows = read_db(db, f"SELECT count(*) FROM events WHERE kind = ? "
                       f"AND json_extract(details, '$.{key}') = ?", (kind, value))
    return rows[0][0] > 0


def ntp_packet(first: int, transmit: bytes, rest: bytes = bytes(39)) -> bytes:
    """48 bytes: the first byte (LI, version, mode), 39 more, the transmit timestamp."""
    return bytes([first]) + rest[:39].ljust(39, b"\0") + transmit


def plug_time(i: int) -> tuple[bytes, str]:
    """A distinct transmit timestamp in the year 2000 and the ``client_time`` the NTP
    event must show for it."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(UNIX_2000 + i)) + ".000Z"
    return struct.pack(">II", NTP_2000 + i, 0), text


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes (a reset counts as closed); the socket's
    timeout raises."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def reset(sock: socket.socket) -> None:
    """Close with a RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_healthy(serve: Serve, db: Path, tag: str) -> None:
    """Alive; answers dnspython, ntplib and a TLS client; records all three; no
    traceback in its log so far."""
    assert serve.proc.poll() is None, "".join(serve.lines[-30:])
    name = f"{tag}.tplinkcloud.com"
    assert answers(ask(serve.ports["dns"], name)) == ["127.0.0.1"]
    reply = ntplib.NTPClient().request("127.0.0.1", port=serve.ports["ntp"], version=3,
                                       timeout=3)
    assert reply.stratum == 3 and reply.leap == 0
    sni = f"{tag}.health.test"
    with socket.create_connection(("127.0.0.1", serve.ports["cloud"]), timeout=5) as raw, \
            insecure_context().wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
    # The client's transmit time is its ntplib reading, echoed as our originate.
    sent = reply.orig_time

    def ntp_seen() -> bool:
        for (text,) in read_db(db, "SELECT json_extract(details, '$.client_time') FROM events"
                                   " WHERE kind = 'ntp' AND at > ?", (time.time() - 60,)):
            if text and abs(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=timezone.utc).timestamp() - sent) < 0.002:
                return True
        return False

    wait_for(lambda: recorded(db, "dns", "name", name), f"dns event for {name}")
    wait_for(ntp_seen, f"ntp event with client_time {sent}")
    wait_for(lambda: recorded(db, "tls", "sni", sni), f"tls event for {sni}")
    rows = read_db(db, "SELECT json_extract(details, '$.outcome') FROM events WHERE kind = 'tls'"
                       " AND json_extract(details, '$.sni') = ?", (sni,))
    assert rows == [("completed",)]
    log = "".join(serve.lines)
    assert "Traceback" not in log, log[log.index("Traceback") - 300:][:3000]


@contextlib.contextmanager
def serving(config: Path) -> Iterator[Serve]:
    """A serve that must still be running at the end, and then stop cleanly."""
    serve = Serve(config)
    try:
        yield serve
    finally:
        code = serve.stop()
    assert code == 0, "".join(serve.lines[-30:])
    assert "Traceback" not in "".join(serve.lines)


# ---------------------------------------------------------------- 1. kill -9 under a flood


class Flood:
    """Client threads that hammer one serve and note when each distinct event was
    answered (time.monotonic()); all stop when ``stop`` is set."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.dns: dict[str, float] = {}  # name -> answered at
        self.repeats: list[float] = []  # REPEAT answered at
        self.ntp: dict[str, float] = {}  # expected client_time -> answered at
        self.tls: dict[str, float] = {}  # sni -> server closed at (after recording)
        self.names = itertools.count()
        self.times = itertools.count(1)
        self.snis = itertools.count()
        self.threads = [threading.Thread(target=run, daemon=True) for run in (
            self._dns, self._dns, self._dns, self._ntp, self._tls, self._tls)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive()

    def progress(self) -> tuple[int, int, int, int]:
        with self.lock:
            return len(self.dns), len(self.repeats), len(self.ntp), len(self.tls)

    def _dns(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.connect(("127.0.0.1", self.ports["dns"]))
            for k in itertools.count(1):
                if self.stop.is_set():
                    return
                name = REPEAT if k % 10 == 0 else f"n{next(self.names)}.tplinkcloud.com"
                query = dns.message.make_query(name, "A")
                try:
                    sock.send(query.to_wire())
                    while True:
                        reply = dns.message.from_wire(sock.recv(4096))
                        if reply.id == query.id:
                            break
                except OSError:  # a timeout, or refused once the server is killed
                    continue
                if answers(reply) == ["127.0.0.1"]:
                    now = time.monotonic()
                    with self.lock:
                        if name == REPEAT:
                            self.repeats.append(now)
                        else:
                            self.dns[name] = now

    def _ntp(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.connect(("127.0.0.1", self.ports["ntp"]))
            while not self.stop.is_set():
                transmit, client_time = plug_time(next(self.times))
                try:
                    sock.send(ntp_packet(0x1B, transmit))  # LI 0, version 3, mode 3
                    while True:
                        reply = sock.recv(1024)
                        if len(reply) >= 48 and reply[24:32] == transmit:
                            break
                except OSError:
                    continue
                if reply[0] & 7 == 4:
                    with self.lock:
                        self.ntp[client_time] = time.monotonic()

    def _tls(self) -> None:
        context = insecure_context()
        while not self.stop.is_set():
            sni = f"t{next(self.snis)}.tplinkcloud.com"
            hello = BioClient(context, sni).hello
            try:
                with socket.create_connection(("127.0.0.1", self.ports["cloud"]),
                                              timeout=3) as sock:
                    sock.sendall(hello)
                    sock.shutdown(socket.SHUT_WR)  # the server's handshake ends "closed"
                    if not read_until_closed(sock):
                        continue  # no server hello: not served
            except OSError:
                continue
            with self.lock:
                self.tls[sni] = time.monotonic()


def test_kill_9_under_flood_loses_nothing_committed_and_restarts(config: Path,
                                                                  tmp_path: Path) -> None:
    db = tmp_path / "serve.db"
    serve = Serve(config)
    flood = Flood(serve.ports)
    started = time.monotonic()
    flood.start()
    try:
        # Run the flood until every kind has plenty answered and the early ones are
        # well past the durability margin; then kill it while it runs.
        deadline = started + 12
        while True:
            dns_n, repeat_n, ntp_n, tls_n = flood.progress()
            if (dns_n >= 300 and repeat_n >= 30 and ntp_n >= 30 and tls_n >= 20
                    and time.monotonic() - started >= 3.5):
                break
            assert time.monotonic() < deadline, (
                f"flood too slow: {flood.progress()}", "".join(serve.lines[-20:]))
            flood.stop.wait(0.05)
        killed = time.monotonic()
        serve.proc.kill()
    finally:
        flood.join()
        code = serve.stop()
    assert code == -9
    assert "Traceback" not in "".join(serve.lines)
    cutoff = killed - DURABLE_MARGIN
    with flood.lock:
        latest = max(flood.dns.values())
        due_dns = {n for n, t in flood.dns.items() if t < cutoff}
        due_repeats = sum(t < cutoff for t in flood.repeats)
        due_ntp = {c for c, t in flood.ntp.items() if t < cutoff}
        due_tls = {s for s, t in flood.tls.items() if t < cutoff}
    assert killed - latest < 0.5, "the kill did not hit a running flood"
    assert len(due_dns) >= 100 and due_repeats >= 10 and due_ntp and due_tls

    conn = sqlite3.connect(db, timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute("SELECT id, kind, client, details, count, at FROM events"
                            " ORDER BY id").fetchall()
        folded = conn.execute(
            "SELECT kind, client, details, CAST(at / 60 AS INTEGER) AS minute, count(*)"
            " FROM events GROUP BY kind, client, details, minute HAVING count(*) > 1"
        ).fetchall()
        repeat_rows = conn.execute(
            "SELECT count FROM events WHERE kind = 'dns'"
            " AND json_extract(details, '$.name') = ?", (REPEAT,)).fetchall()
        dns_names = {n for (n,) in conn.execute(
            "SELECT json_extract(details, '$.name') FROM events WHERE kind = 'dns'")}
        ntp_times = {c for (c,) in conn.execute(
            "SELECT json_extract(details, '$.client_time') FROM events WHERE kind = 'ntp'")}
        tls_snis = {s for (s,) in conn.execute(
            "SELECT json_extract(details, '$.sni') FROM events WHERE kind = 'tls'")}
    finally:
        conn.close()
    assert folded == [], f"identical events in one minute not folded: {folded[:5]}"
    assert not due_dns - dns_names, (
        f"{len(due_dns - dns_names)} of {len(due_dns)} DNS events answered over "
        f"{DURABLE_MARGIN} s before the kill are lost, e.g. {sorted(due_dns - dns_names)[:5]}")
    assert not due_ntp - ntp_times, f"{len(due_ntp - ntp_times)} of {len(due_ntp)} NTP lost"
    assert not due_tls - tls_snis, f"{len(due_tls - tls_snis)} of {len(due_tls)} TLS lost"
    assert 1 <= len(repeat_rows) <= 2  # one row a minute; the flood may span two minutes
    assert sum(n for (n,) in repeat_rows) >= due_repeats

    # Restarted on the same file: serves, records, and the earlier rows are intact.
    with serving(config) as again:
        assert_healthy(again, db, "after-kill")
        assert read_db(db, "SELECT id, kind, client, details, count, at FROM events"
                           " WHERE id <= ? ORDER BY id", (rows[-1][0],)) == rows
    with EventStore(db) as store:
        names = {e.details["name"] for e in store.events(kind="dns")}
    assert due_dns | {"after-kill.tplinkcloud.com"} <= names


# ---------------------------------------------------------------- 2. random bytes


def dns_garbage(rng: random.Random) -> bytes:
    """A random DNS-ish message: pure noise, a header with noise, or a real query
    with a few bytes flipped, cut short or extended."""
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 600))
    if kind == 6:  # a sinkholed name with odd bytes in a label: recorded as an event
        label = bytes(rng.choice(b"\x00\x01.\\\"'\x7f\x80\xc3\xa9\xff ABZaz09-_")
                      for _ in range(rng.randrange(1, 64)))
        question = (bytes([len(label)]) + label + b"\x0btplinkcloud\x03com\x00"
                    + struct.pack(">HH", rng.choice((1, 1, 16, 28, 255)), 1))
        return struct.pack(">HHHHHH", rng.getrandbits(16), 0x0100, 1, 0, 0, 0) + question
    if kind == 1:
        flags = rng.getrandbits(16)
        counts = [rng.choice((0, 1, 1, 2, 0xFFFF, rng.getrandbits(16))) for _ in range(4)]
        return (struct.pack(">HH4H", rng.getrandbits(16), flags, *counts)
                + rng.randbytes(rng.randrange(0, 300)))
    name = rng.choice(("a.tplinkcloud.com", "x.fwd.test", "pool.ntp.org", "b.tplinkra.com"))
    qtype = rng.choice(("A", "AAAA", "TXT", "ANY", "HTTPS", "MX", "SOA"))
    message = dns.message.make_query(name, qtype, use_edns=rng.random() < 0.5)
    message.id = rng.getrandbits(16)  # the seed decides every byte
    query = bytearray(message.to_wire())
    if kind == 2:
        for _ in range(rng.randrange(1, 4)):
            query[rng.randrange(len(query))] = rng.getrandbits(8)
        return bytes(query)
    if kind == 3:
        return bytes(query[:rng.randrange(len(query))])
    if kind == 4:
        return bytes(query) + rng.randbytes(rng.randrange(1, 64))
    # a compression pointer loop in the question
    return bytes(query[:12]) + b"\xc0\x0c" + struct.pack(">HH", 1, 1)


def test_dns_udp_survives_random_datagrams(config: Path, tmp_path: Path) -> None:
    rng = random.Random(20240601)
    sent: list[bytes] = []  # the ID of each is its index (when it has 2 bytes)
    replies: list[bytes] = []
    with serving(config) as serve, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        port = serve.ports["dns"]
        sock.setblocking(False)
        for i in range(3000):
            if i % 20 == 0 and rng.random() < 0.1:
                payload = rng.randbytes(rng.randrange(4000, 65000))  # a few big ones
            else:
                payload = dns_garbage(rng)
            if len(payload) >= 2:
                payload = i.to_bytes(2, "big") + payload[2:]
            sent.append(payload)
            sock.sendto(payload, ("127.0.0.1", port))
            if i % PACE == PACE - 1:
                assert answers(ask(port, f"pace{i}.tplinkcloud.com")) == ["127.0.0.1"], i
            with contextlib.suppress(BlockingIOError):
                while True:
                    replies.append(sock.recv(65536))
        assert_healthy(serve, tmp_path / "serve.db", "after-dns-udp")
        # Every query with a header gets one reply: forwarded ones within 3 s
        # (the forwarder's SERVFAIL), all others at once; none to anything else.
        unanswerable = {i for i, p in enumerate(sent) if len(p) < 12 or p[2] & 0x80}
        sock.settimeout(4)
        with contextlib.suppress(TimeoutError):
            while len(replies) < len(sent) - len(unanswerable):
                replies.append(sock.recv(65536))
        sock.settimeout(0.2)  # and then nothing more
        with contextlib.suppress(TimeoutError):
            while True:
                replies.append(sock.recv(65536))
    assert all(len(r) >= 12 and r[2] & 0x80 for r in replies)  # responses, every one
    ids = Counter(int.from_bytes(r[:2], "big") for r in replies)
    assert max(ids.values()) == 1  # one reply a query
    # none to a packet too short for a header or to a response (no reflection loops)
    assert not unanswerable & set(ids), sorted(unanswerable & set(ids))[:10]
    assert set(ids) == set(range(len(sent))) - unanswerable
    rcodes = {r[3] & 0x0F for r in replies}
    assert {0, 1, 4} <= rcodes, rcodes  # answers, FORMERR, NOTIMP: the garbage got that far


def test_dns_tcp_survives_garbage_streams(config: Path, tmp_path: Path) -> None:
    rng = random.Random(20240602)
    with serving(config) as serve:
        port = serve.ports["dns"]
        for i in range(250):
            kind = i % 6
            if kind == 0:  # unprefixed noise
                stream = rng.randbytes(rng.randrange(1, 2000))
            elif kind == 1:  # several length-prefixed garbage messages
                stream = b"".join(len(m).to_bytes(2, "big") + m
                                  for m in (dns_garbage(rng) for _ in range(rng.randrange(1, 6))))
            elif kind == 2:  # a message shorter than its prefix says
                message = dns_garbage(rng)
                stream = (len(message) + rng.randrange(1, 100)).to_bytes(2, "big") + message
            elif kind == 3:  # a huge length prefix, then little
                stream = b"\xff\xff" + rng.randbytes(rng.randrange(0, 500))
            elif kind == 4:  # a zero-length message, then a real query
                query = dns.message.make_query(f"z{i}.tplinkcloud.com", "A").to_wire()
                stream = b"\0\0" + len(query).to_bytes(2, "big") + query
            else:  # half a prefix
                stream = rng.randbytes(1)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(stream)
                sock.shutdown(socket.SHUT_WR)  # the server sees the end and closes
                got = read_until_closed(sock)
            if kind == 4:  # nothing for the empty message; the query after it answered
                assert int.from_bytes(got[:2], "big") == len(got) - 2, got
                assert answers(dns.message.from_wire(got[2:])) == ["127.0.0.1"]
            if i % 50 == 49:
                assert answers(ask(port, f"pace{i}.tplinkcloud.com")) == ["127.0.0.1"], i
        assert_healthy(serve, tmp_path / "serve.db", "after-dns-tcp")


def ntp_answer(packet: bytes) -> tuple[bytes, int, int] | None:
    """What the README promises for ``packet``: (originate, version, mode) of the
    reply, or None for no reply (short, version 0 or > 4, a mode other than 1 and 3)."""
    if len(packet) < 48:
        return None
    version, mode = (packet[0] >> 3) & 7, packet[0] & 7
    if not 1 <= version <= 4 or mode not in (1, 3):
        return None
    return packet[40:48], version, mode + 1


def ntp_garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # any length 0..1000
        return rng.randbytes(rng.randrange(0, 1001))
    if kind == 1:  # 48 random bytes as control (6) or private (7) mode
        packet = bytearray(rng.randbytes(48))
        packet[0] = (packet[0] & 0xF8) | rng.choice((6, 7))
        return bytes(packet)
    if kind == 2:  # client mode with a version we do not answer
        version = rng.choice((0, 5, 6, 7))
        return ntp_packet((rng.getrandbits(2) << 6) | (version << 3) | 3, rng.randbytes(8),
                          rng.randbytes(39))
    if kind == 3:  # an answerable request with random fields and transmit time
        transmit = rng.choice((bytes(8), b"\xff" * 8, rng.randbytes(8)))
        first = (rng.getrandbits(2) << 6) | (rng.randint(1, 4) << 3) | rng.choice((1, 3))
        return ntp_packet(first, transmit, rng.randbytes(39)) + rng.randbytes(
            rng.choice((0, 0, 4, 20, 100, 3000)))
    if kind == 4:  # other modes
        first = (rng.randint(0, 7) << 3) | rng.choice((0, 2, 4, 5))
        return ntp_packet(first, rng.randbytes(8), rng.randbytes(39))
    return rng.randbytes(rng.randrange(40, 56))  # around the 48-byte minimum


def test_ntp_survives_random_datagrams(config: Path, tmp_path: Path) -> None:
    rng = random.Random(20240603)
    expected: Counter[tuple[bytes, int, int]] = Counter()
    got: Counter[tuple[bytes, int, int]] = Counter()
    with serving(config) as serve, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        port = serve.ports["ntp"]
        sock.setblocking(False)
        for i in range(3000):
            packet = ntp_garbage(rng)
            sock.sendto(packet, ("127.0.0.1", port))
            if (answer := ntp_answer(packet)) is not None:
                expected[answer] += 1
            if i % PACE == PACE - 1 or i == 2999:
                transmit, _ = plug_time(i)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.settimeout(3)
                    probe.sendto(ntp_packet(0x23, transmit), ("127.0.0.1", port))
                    reply = probe.recv(1024)
                assert reply[24:32] == transmit and reply[0] & 7 == 4, i
                # The server answered everything before the probe before the probe.
                with contextlib.suppress(BlockingIOError):
                    while True:
                        reply = sock.recv(65536)
                        got[reply[24:32], (reply[0] >> 3) & 7, reply[0] & 7] += 1
        assert_healthy(serve, tmp_path / "serve.db", "after-ntp")
    # Exactly one reply to each answerable packet (no rate limit), none to the rest.
    assert sum(expected.values()) > 500
    assert got == expected, (got - expected, expected - got)


def test_cloud_listener_survives_garbage_connections(config: Path, tmp_path: Path) -> None:
    rng = random.Random(20240604)
    hello = hello_bytes()
    old_hello = hello_bytes(minimum_version=ssl.TLSVersion.TLSv1,
                            maximum_version=ssl.TLSVersion.TLSv1)
    http = b"GET / HTTP/1.1\r\nHost: n-devs.tplinkcloud.com\r\n\r\n"
    with serving(config) as serve:
        port = serve.ports["cloud"]
        for i in range(200):
            kind = i % 9
            base = rng.choice((hello, old_hello))
            rst = False
            if kind == 0:  # noise
                stream = rng.randbytes(rng.randrange(1, 3000))
            elif kind == 1:  # a TLS record header announcing a handshake, then noise
                stream = (b"\x16\x03" + bytes([rng.randrange(4)])
                          + rng.getrandbits(16).to_bytes(2, "big") + b"\x01"
                          + rng.randbytes(rng.randrange(0, 600)))
            elif kind == 2:  # half a hello, then the end
                stream = base[:rng.randrange(1, len(base))]
            elif kind == 3:  # half a hello, then a reset
                stream, rst = base[:rng.randrange(1, len(base))], True
            elif kind == 4:
                stream = http
            elif kind == 5:  # a hello with bytes flipped
                flipped = bytearray(base)
                for _ in range(rng.randrange(1, 6)):
                    flipped[rng.randrange(len(flipped))] = rng.getrandbits(8)
                stream = bytes(flipped)
            elif kind == 6:  # a whole hello, then noise in place of the next flight
                stream = base + rng.randbytes(rng.randrange(1, 400))
            elif kind == 7:  # SSLv2-style record header, then noise
                stream = (bytes([0x80 | rng.getrandbits(7), rng.getrandbits(8), 1])
                          + rng.randbytes(rng.randrange(0, 200)))
            else:  # a whole hello, then a reset before the server's answer is read
                stream, rst = base, True
            sock = socket.create_connection(("127.0.0.1", port), timeout=8)
            try:
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    sock.sendall(stream)  # the server may reset a stream it has judged
                if rst:
                    continue
                with contextlib.suppress(OSError):  # the server may have reset already
                    sock.shutdown(socket.SHUT_WR)
                read_until_closed(sock)  # the server has recorded by the time it closes
            finally:
                if rst:
                    reset(sock)
                else:
                    sock.close()
        assert_healthy(serve, tmp_path / "serve.db", "after-cloud")
        rows = read_db(tmp_path / "serve.db", "SELECT json_extract(details, '$.outcome'),"
                       " sum(count) FROM events WHERE kind = 'tls' GROUP BY 1")
        outcomes = dict(rows)
        # the garbage was seen for what it was, not lost
        assert outcomes.get("not_tls", 0) >= 40 and outcomes.get("closed", 0) >= 20, outcomes


# ------------------------------------------------------- bugs these tests found (fixed)


def test_dns_tcp_client_reset_while_the_server_writes_is_no_internal_error(
        config: Path, tmp_path: Path) -> None:
    query = dns.message.make_query("reset.tplinkcloud.com", "TXT").to_wire()
    chunk = (len(query).to_bytes(2, "big") + query) * 500
    with serving(config) as serve:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
        sock.settimeout(5)
        sock.connect(("127.0.0.1", serve.ports["dns"]))
        sock.setblocking(False)
        # Pipeline queries and read no reply: the replies fill our receive buffer, then
        # the server's send buffer and its transport's, and it waits in drain() without
        # reading; once our send buffer stays full for a second, it is waiting there.
        unsent = b""
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the server kept reading"
            unsent = unsent or chunk
            try:
                unsent = unsent[sock.send(unsent):]
            except BlockingIOError:
                if not select.select([], [sock], [], 1.0)[1]:
                    break
        reset(sock)
        assert_healthy(serve, tmp_path / "serve.db", "after-reset")


#: a log line's beginning, as a client would forge it
FORGED = "1999-12-31 23:59:59,999 hs100local.serve: forged"


def _sni_hello(sni: str) -> bytes:
    """A ClientHello whose SNI is ``sni`` byte for byte (Python's ssl refuses control
    characters in a host name, so a hello for a same-length name is patched)."""
    stand_in = ".".join(["a" * 9] * 10)[:len(sni)]
    hello = hello_bytes(stand_in)
    assert hello.count(stand_in.encode()) == 1
    return hello.replace(stand_in.encode(), sni.encode())


@pytest.mark.parametrize("via", ["dns", "tls"])
def test_names_from_the_network_cannot_forge_log_lines(config: Path, tmp_path: Path,
                                                       via: str) -> None:
    injected = "x\n" + FORGED
    with serving(config) as serve:
        # Whatever the server makes of it is logged before it answers (the DNS reply,
        # the TLS close), and serving() has read all of stderr once it has stopped.
        if via == "dns":
            label = injected.encode()
            question = (bytes([len(label)]) + label + b"\x0btplinkcloud\x03com\x00"
                        + struct.pack(">HH", 1, 1))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(3)
                sock.sendto(struct.pack(">6H", 1, 0x0100, 1, 0, 0, 0) + question,
                            ("127.0.0.1", serve.ports["dns"]))
                sock.recv(512)
        else:
            with socket.create_connection(("127.0.0.1", serve.ports["cloud"]),
                                          timeout=5) as sock:
                sock.sendall(_sni_hello(injected))
                sock.shutdown(socket.SHUT_WR)
                read_until_closed(sock)
        assert_healthy(serve, tmp_path / "serve.db", "after-" + via)
    forged = [line for line in serve.lines if line.startswith(FORGED[:10])]
    assert not forged, forged

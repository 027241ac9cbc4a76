"""``hs100local serve``: idle cost, ClientHello-to-event latency, TLS connections/s.

Run by hand (not part of the test suite), as root (chronyd, the idle peer, needs it)::

    python tests/bench/bench_serve.py [--idle 30] [--connections 200] [--seconds 10] \\
        [--rounds 3] [--concurrency 32]

Needs gcc (the load generator, ``tlsload.c`` beside this script, is compiled at
every run into the temporary directory; no binary is kept), openssl, dnsmasq and
chrony (``/usr/sbin/chronyd``). Only loopback traffic: ``serve`` runs with
``time-interval = 0`` and ``discover-interval = 0`` (discovery would broadcast on
the machine's interfaces), its DNS upstream is a local dnsmasq that answers
``*.fwd.test`` itself (``--no-resolv``), and every other process listens and
connects on 127.0.0.0/8 only.

Two ``serve`` processes, each ``python -u -m hs100local serve --config FILE`` with
DNS, NTP and the cloud listener on 127.0.0.1 port 0 (the "serving:" line says
which), its own database in the temporary directory, ``assume-synced``, and
``cloud-rate-limit = 0`` (the default 10/s per client would close most of the load
generator's connections at once: counted, not recorded, and not what is measured
here). They differ only in ``cloud-mode``: ``handshake`` (the default) and ``log``.

1. **Idle cost.** Every process of the run is started, then left alone for
   ``--idle`` seconds: RSS (VmRSS of /proc/PID/status) at start-up (when its ready
   line came) and after the idle window, the CPU it used over the window
   (utime + stime of /proc/PID/stat, all threads) and its wake-ups (context
   switches of all its threads) per second. Targets for ``serve``: RSS < 40 MB,
   CPU < 1 %. Peers, for scale: the interpreter's floor
   (``python -c 'import time; time.sleep(3600)'``) and the C daemons that would do
   serve's jobs: a dnsmasq (sinkhole + forward, like serve's DNS), a chronyd
   (``-x``, local stratum 3, like its NTP) and an ``openssl s_server`` (the TLS
   listener), plus the bare asyncio server of step 3.
2. **ClientHello-to-event latency**, per ``serve``: ``--connections`` sequential
   connections (after ``--warmup`` untimed ones), each from its own loopback
   address (127.1.x.y), so each is a new event row and logs one line (the store
   folds identical events, and the client address is part of the key; the hello
   itself stays the plug's, without SNI). Each sends the plug-like ClientHello of
   ``tests/fixtures/tls/hellos.json`` and then behaves like a plug pinned to
   TP-Link's CA (handshake mode: reads the server's flight up to
   ServerHelloDone, sends a fatal ``unknown_ca`` alert, closes) or waits for the
   server's FIN (log mode). Times from just before the hello is sent to: the
   client's end (alert sent / FIN seen), the serve process's stderr line for that
   client (stamped by a reader thread when the line arrives), and the row being
   visible in the database (a read-only connection polled every 2 ms by a second
   thread). Connections are spaced by a random 20-80 ms after the log line, so
   that they fall at random phases of the store's 0.5 s commit cycle.
3. **TLS connections per second.** ``tlsload`` keeps ``--concurrency``
   connections open for ``--seconds`` (one epoll loop; slot i connects from
   127.0.2.(1 + i % sources), as from that many plugs) and replays a captured
   ClientHello on each, then answers ``unknown_ca`` after ServerHelloDone (mode
   alert) or reads until the server closes (mode eof). Rows, interleaved over
   ``--rounds`` with rotating order, the same loader for all:

   * ``ours hs / plug``: serve, cloud-mode handshake, the plug-like hello (74
     suites: OpenSSL picks ECDHE-RSA-AES256-GCM-SHA384, so every connection costs
     the server an RSA-2048 signature and a P-521 key share);
   * ``s_server / plug``: the peer, ``openssl s_server -quiet -cert/-key`` serve's
     own certificate, ``-cipher DEFAULT:@SECLEVEL=0 -min_protocol TLSv1`` (what the
     listener allows), same hello;
   * ``ours hs / tls1`` and ``s_server / tls1`` (leave out with ``--no-tls1``): the
     ``openssl s_client -tls1 -cipher AES128-SHA`` hello (TLS 1.0, RSA key
     exchange: no private-key operation before the client's alert);
   * ``ours log / plug``: serve, cloud-mode log (closes after the hello);
   * ``asyncio close``: the peer for log mode, a bare asyncio server (in its own
     python process) that reads the hello's record and closes.

   Per run: connections/s completed within the window, the connections the
   clients completed and failed, and for ours the ``tls`` events the database
   gained (sum of ``count`` of kind 'tls' rows, read-only, after the store's
   commits caught up), which must equal the connections the server accepted;
   then the server's and the loader's CPU. Target: >= 500 connections/s recorded.

Prints the machine (CPU model, versions of python, OpenSSL, sqlite, dnsmasq,
chrony, gcc; the commit), the tables in markdown, the ratios and the targets; the
serve logs are scanned for anything but event lines (warnings, tracebacks). All
processes are stopped on every exit path, Ctrl-C and SIGTERM included. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import selectors
import shutil
import signal
import socket
import sqlite3
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
from servers import (  # this folder (on sys.path)
    code_version,
    compile_loader,
    cpu_model,
    default_signals,
    fmt_int,
    free_port,
    mb,
    met,
    proc_cpu,
    proc_status,
    run_with_summary,
    stop,
    version,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HELLOS = REPO / "tests" / "fixtures" / "tls" / "hellos.json"
HOST = "127.0.0.1"
CHRONYD = "/usr/sbin/chronyd"
TARGET_RSS_MB = 40.0
TARGET_CPU = 1.0  # % of one core, idle
TARGET_RATE = 500.0
PLUG, TLS1 = "plug-like", "openssl-tls1-aes128"
UNKNOWN_CA_ALERT = (2, 48)  # fatal, unknown_ca
TLS_LINE = re.compile(r"\bhs100local\.tls: (\d+\.\d+\.\d+\.\d+) ")
EVENT_LINE = re.compile(r"^\S+ \S+ hs100local\.(tls|dns|ntp): \d+\.\d+\.\d+\.\d+ ")

ASYNCIO_CLOSE = r"""
import asyncio, socket

class Close(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.data = transport, b""

    def data_received(self, data):
        self.data += data
        if len(self.data) >= 5 and len(self.data) >= 5 + int.from_bytes(self.data[3:5], "big"):
            self.transport.close()  # the whole first record (the hello) read: FIN

async def main():
    server = await asyncio.get_running_loop().create_server(
        Close, "127.0.0.1", 0, backlog=socket.SOMAXCONN)
    print(f"asyncio close server on 127.0.0.1:{server.sockets[0].getsockname()[1]}",
          flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


# ------------------------------------------------------------------ /proc


def proc_switches(pid: int) -> int:
    """Context switches (voluntary + not) of all the process's threads so far."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except (OSError, ValueError):  # a thread that ended meanwhile
            continue
    return total


# ------------------------------------------------------------------ processes


@dataclass
class Proc:
    key: str
    label: str
    popen: subprocess.Popen
    port: int = 0
    rss_start_kb: int = 0  # VmRSS when its ready line came

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> None:
        if self.popen.poll() is not None:
            raise SystemExit(f"{self.label} exited ({self.popen.returncode})")


class ServeProc(Proc):
    """``serve`` with its stderr read by a thread that stamps every line on arrival."""

    def __init__(self, key: str, label: str, config: Path, db: Path,
                 procs: list[subprocess.Popen]) -> None:
        popen = subprocess.Popen(
            [sys.executable, "-u", "-m", "hs100local", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=REPO, preexec_fn=default_signals)
        procs.append(popen)
        super().__init__(key, label, popen)
        self.db = db
        self.lines: list[tuple[float, str]] = []
        self.tls_seen: dict[str, float] = {}  # client -> arrival of its first tls line
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        assert popen.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(popen.stdout, selectors.EVENT_READ)
            if not sel.select(90):
                raise SystemExit(f"{label}: no 'serving:' line within 90 s")
        line = popen.stdout.readline()
        if not line.startswith("serving: "):
            popen.wait(10)
            raise SystemExit(f"{label}: exited ({popen.returncode}) before serving: {line!r}\n"
                             + "".join(x for _, x in self.lines[-20:]))
        self.rss_start_kb = proc_status(popen.pid)["VmRSS"]
        self.ports = {name.lower(): int(port) for name, port in
                      re.findall(r"(DNS|NTP|CLOUD) on 127\.0\.0\.1:(\d+)", line)}
        self.port = self.ports["cloud"]
        self.serving = line.strip()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            now = time.monotonic()
            with self.changed:
                self.lines.append((now, line))
                match = TLS_LINE.search(line)
                if match and match.group(1) not in self.tls_seen:
                    self.tls_seen[match.group(1)] = now
                    self.changed.notify_all()

    def wait_tls_line(self, client: str, timeout: float) -> float | None:
        with self.changed:
            if self.changed.wait_for(lambda: client in self.tls_seen, timeout):
                return self.tls_seen[client]
        return None




def wait_until(what: str, check: Callable[[], bool], proc: subprocess.Popen,
               timeout: float = 15.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            state = (f"exited ({proc.returncode})" if proc.poll() is not None
                     else f"not ready after {timeout:g} s")
            raise SystemExit(f"{what} {state}\n{tail}")
        time.sleep(0.05)


def dns_answers(port: int, name: str) -> list[str]:
    try:
        reply = dns.query.udp(dns.message.make_query(name, "A"), HOST, port=port, timeout=0.3)
    except Exception:  # not up yet
        return []
    return [item.to_text() for rrset in reply.answer for item in rrset]


def start_dnsmasq(workdir: Path, name: str, args: list[str],
                  procs: list[subprocess.Popen]) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    for _ in range(5):  # the port can be taken between choosing and binding: retry
        port = free_port()
        popen = subprocess.Popen(
            [exe, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
             f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
             "--log-facility=/dev/null", "--user=root",
             f"--pid-file={workdir / f'dnsmasq-{name}.pid'}", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=default_signals)
        procs.append(popen)
        deadline = time.monotonic() + 10
        while popen.poll() is None and time.monotonic() < deadline:
            probe = "x.tplinkcloud.com" if name == "peer" else "a.fwd.test"
            if dns_answers(port, probe):
                return popen, port
        stop(popen, 5)
    raise SystemExit(f"dnsmasq ({name}) did not start")


def ntp_reply(port: int) -> bool:
    packet = bytes([(4 << 3) | 3]) + bytes(47)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        try:
            sock.sendto(packet, (HOST, port))
            reply = sock.recv(512)
        except OSError:
            return False
    return len(reply) >= 48 and reply[0] & 7 == 4


def start_chronyd(workdir: Path, procs: list[subprocess.Popen]) -> Proc:
    port = free_port()
    conf = workdir / "chrony.conf"
    conf.write_text(f"port {port}\nbindaddress {HOST}\nallow {HOST}\nlocal stratum 3\n"
                    f"cmdport 0\npidfile {workdir / 'chronyd.pid'}\n"
                    f"driftfile {workdir / 'chrony.drift'}\n")
    log = workdir / "chronyd.stderr"
    with open(log, "w") as err:  # -x: never touches the clock; -u root: our 0700 dir
        popen = subprocess.Popen([CHRONYD, "-d", "-x", "-u", "root", "-f", str(conf)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                 preexec_fn=default_signals)
    procs.append(popen)
    wait_until("chronyd", lambda: ntp_reply(port), popen, log=log)
    return Proc("chronyd", "chronyd -x, local stratum 3 (NTP peer)", popen, port,
                proc_status(popen.pid)["VmRSS"])


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.3):
            return True
    except OSError:
        return False


def start_s_server(workdir: Path, cert: Path, key: Path,
                   procs: list[subprocess.Popen]) -> Proc:
    for _ in range(5):
        port = free_port()
        log = workdir / f"s_server-{port}.log"
        with open(log, "w") as out:
            popen = subprocess.Popen(
                ["openssl", "s_server", "-accept", f"{HOST}:{port}", "-quiet",
                 "-cert", str(cert), "-key", str(key), "-cipher", "DEFAULT:@SECLEVEL=0",
                 "-min_protocol", "TLSv1"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=default_signals)
        procs.append(popen)
        deadline = time.monotonic() + 10
        while popen.poll() is None and time.monotonic() < deadline:
            if tcp_open(port):  # s_server logs one failed handshake for this probe
                return Proc("s_server", "openssl s_server (TLS peer)", popen, port,
                            proc_status(popen.pid)["VmRSS"])
            time.sleep(0.05)
        stop(popen, 5)
    raise SystemExit(f"openssl s_server did not start:\n{log.read_text()[-2000:]}")


def start_ready_line(key: str, label: str, cmd: list[str],
                     procs: list[subprocess.Popen]) -> Proc:
    popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                             preexec_fn=default_signals)
    procs.append(popen)
    assert popen.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(popen.stdout, selectors.EVENT_READ)
        if not sel.select(20):
            raise SystemExit(f"{label}: no ready line")
    match = re.search(r"on 127\.0\.0\.1:(\d+)", popen.stdout.readline())
    if not match:
        raise SystemExit(f"{label}: no port in its ready line")
    return Proc(key, label, popen, int(match.group(1)), proc_status(popen.pid)["VmRSS"])


def write_config(path: Path, upstream_port: int, db: Path, mode: str) -> Path:
    from servekit import write_config as serve_config  # tests/ (see servers.py)

    return serve_config(path, upstream_port, db,
                        f'cloud-mode = "{mode}"\ncloud-rate-limit = 0')


# ------------------------------------------------------------------ 1. idle


@dataclass
class Idle:
    rss_start_kb: int
    rss_end_kb: int
    anon_end_kb: int
    cpu_s: float
    switches: int
    threads: int
    seconds: float


def measure_idle(procs: list[Proc], seconds: float) -> dict[str, Idle]:
    before = {p.key: (proc_cpu(p.pid)[0], proc_switches(p.pid)) for p in procs}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    out = {}
    for p in procs:
        p.alive()
        cpu, switches = proc_cpu(p.pid)[0], proc_switches(p.pid)
        status = proc_status(p.pid)
        out[p.key] = Idle(p.rss_start_kb, status["VmRSS"], status.get("RssAnon", 0),
                          cpu - before[p.key][0], switches - before[p.key][1],
                          status.get("Threads", 0), wall)
    return out


# ------------------------------------------------------------------ 2. latency


def read_flight(sock: socket.socket) -> bytes:
    """The server's records up to ServerHelloDone; returns the version for the alert."""
    data = b""
    handshake = b""
    version = b"\x03\x01"
    offset = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed before ServerHelloDone")
        data += chunk
        while len(data) - offset >= 5:
            kind, length = data[offset], struct.unpack(">H", data[offset + 3:offset + 5])[0]
            if len(data) - offset < 5 + length:
                break
            body = data[offset + 5:offset + 5 + length]
            offset += 5 + length
            if kind != 22:
                raise ConnectionError(f"record type {kind} from the server")
            handshake += body
            pos = 0
            while len(handshake) - pos >= 4:
                mtype = handshake[pos]
                mlen = int.from_bytes(handshake[pos + 1:pos + 4], "big")
                if len(handshake) - pos < 4 + mlen:
                    break
                if mtype == 2:
                    version = handshake[pos + 4:pos + 6]
                if mtype == 14:
                    return version
                pos += 4 + mlen


def read_to_eof(sock: socket.socket) -> None:
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        raise ConnectionError(f"{len(chunk)} bytes from the server in log mode")


@dataclass
class Latency:
    mode: str
    client: list[float] = field(default_factory=list)  # hello -> alert sent / FIN seen
    log: list[float] = field(default_factory=list)  # hello -> stderr line
    db: list[float] = field(default_factory=list)  # hello -> row visible
    missing_log: int = 0
    missing_db: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    counts_not_1: int = 0
    connections: int = 0  # all made, warm-up included (for the final accounting)


def latency_client(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def poll_db(db: Path, seen: dict[str, float], stop_event: threading.Event,
            interval: float) -> None:
    """Stamp the first time each client's tls row is visible to a reader."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    last = 0
    try:
        while not stop_event.is_set():
            rows = conn.execute("SELECT id, client FROM events WHERE id > ? AND kind = 'tls'",
                                (last,)).fetchall()
            now = time.monotonic()
            for rowid, client in rows:
                last = max(last, rowid)
                seen.setdefault(client, now)
            stop_event.wait(interval)
    finally:
        conn.close()


def measure_latency(serve: ServeProc, hello: bytes, n: int, warmup: int,
                    rng: random.Random) -> Latency:
    mode = "handshake" if serve.key == "serve-hs" else "log"
    result = Latency(mode)
    db_seen: dict[str, float] = {}
    stop_event = threading.Event()
    poller = threading.Thread(target=poll_db, args=(serve.db, db_seen, stop_event, 0.002),
                              daemon=True)
    poller.start()
    sent: dict[str, float] = {}
    try:
        for i in range(warmup + n):
            serve.alive()
            client = latency_client(i)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(10)
                sock.bind((client, 0))
                sock.connect((HOST, serve.port))
                t0 = time.monotonic()
                sock.sendall(hello)
                if mode == "handshake":
                    version = read_flight(sock)
                    sock.sendall(bytes([21]) + version + b"\x00\x02"
                                 + bytes(UNKNOWN_CA_ALERT))
                else:
                    read_to_eof(sock)
                t_client = time.monotonic()
            finally:
                sock.close()
            result.connections += 1
            t_log = serve.wait_tls_line(client, 10.0)
            if i >= warmup:
                sent[client] = t0
                result.client.append(t_client - t0)
                if t_log is None:
                    result.missing_log += 1
                else:
                    result.log.append(t_log - t0)
            time.sleep(rng.uniform(0.020, 0.080))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not all(c in db_seen for c in sent):
            time.sleep(0.01)
    finally:
        stop_event.set()
        poller.join(5)
    for client, t0 in sent.items():
        if client in db_seen:
            result.db.append(db_seen[client] - t0)
        else:
            result.missing_db += 1
    conn = sqlite3.connect(f"file:{serve.db}?mode=ro", uri=True)
    try:
        for client, count, details in conn.execute(
                "SELECT client, count, details FROM events WHERE kind = 'tls'"):
            if client in sent:
                outcome = json.loads(details).get("outcome", "?")
                result.outcomes[outcome] = result.outcomes.get(outcome, 0) + count
                result.counts_not_1 += count != 1
    finally:
        conn.close()
    return result


# ------------------------------------------------------------------ 3. throughput


@dataclass
class Row:
    key: str
    label: str
    proc: Proc
    hello: str
    mode: str  # loader mode: alert or eof
    db: Path | None = None  # ours: its event database


@dataclass
class Run:
    rate: float
    started: int
    completed: int
    failed: dict[str, int]
    recorded: int | None  # tls events the database gained (ours)
    outcomes: dict[str, int]
    counters: dict[str, int]  # tls counters gained (rate_limited, over_capacity)
    dropped: int
    server_cpu: float
    server_main_cpu: float
    loader_cpu: float
    wall: float
    latency_avg: float  # seconds, connect to close
    latency_p99: float
    rows_added: int
    rss_kb: int  # the server's VmRSS after the run




def db_snapshot(db: Path) -> tuple[dict[str, int], dict[str, int], int, int]:
    """(tls events by outcome, tls counters by key, events reported dropped, tls rows)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        outcomes = {o or "?": int(n) for o, n in conn.execute(
            "SELECT json_extract(details, '$.outcome'), sum(count) FROM events"
            " WHERE kind = 'tls' GROUP BY 1")}
        counters = {k: int(n) for k, n in conn.execute(
            "SELECT key, sum(n) FROM event_counts WHERE kind = 'tls' GROUP BY key")}
        dropped = 0
        for (details,) in conn.execute("SELECT details FROM events WHERE kind = 'store'"):
            dropped += int(json.loads(details).get("dropped", 0))
        (rows,) = conn.execute("SELECT count(*) FROM events WHERE kind = 'tls'").fetchone()
    finally:
        conn.close()
    return outcomes, counters, dropped, int(rows)


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    out = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    return {k: v for k, v in sorted(out.items()) if v}


def load(loader: Path, row: Row, hello_file: Path, args: argparse.Namespace) -> Run:
    row.proc.alive()
    before = db_snapshot(row.db) if row.db else None
    cpu0, main0 = proc_cpu(row.proc.pid)
    cmd = [str(loader), HOST, str(row.proc.port), f"{args.seconds:g}",
           str(args.concurrency), str(hello_file), row.mode, str(args.sources),
           f"{args.timeout:g}"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=args.seconds + args.timeout + 60, check=False)
    wall = time.monotonic() - t0
    cpu1, main1 = proc_cpu(row.proc.pid)
    if done.returncode != 0:
        raise SystemExit(f"tlsload against {row.label} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    out = dict(line.split(None, 1) for line in done.stdout.splitlines() if " " in line)
    failed = {k[len("failed_"):]: int(v) for k, v in out.items()
              if k.startswith("failed_") and int(v)}
    completed = int(out["completed"])
    recorded, outcomes, counters, dropped, rows_added = None, {}, {}, 0, 0
    if row.db and before:
        accepted = completed + sum(v for k, v in failed.items() if k != "refused")
        deadline = time.monotonic() + 15.0
        stable_since, last_total = time.monotonic(), -1
        while True:  # the store commits every 0.5 s: wait until it caught up
            after = db_snapshot(row.db)
            total = sum(diff(after[0], before[0]).values())
            now = time.monotonic()
            if total != last_total:
                stable_since, last_total = now, total
            if total >= accepted and now - stable_since >= 0.6:
                break
            if now > deadline or (now - stable_since >= 3.0):
                break
            time.sleep(0.1)
        outcomes = diff(after[0], before[0])
        recorded = sum(outcomes.values())
        counters = diff(after[1], before[1])
        dropped = after[2] - before[2]
        rows_added = after[3] - before[3]
    return Run(
        rate=float(out["rate"]), started=int(out["started"]), completed=completed,
        failed=failed, recorded=recorded, outcomes=outcomes, counters=counters,
        dropped=dropped, server_cpu=cpu1 - cpu0, server_main_cpu=main1 - main0,
        loader_cpu=float(out["cpu_user_s"]) + float(out["cpu_sys_s"]), wall=wall,
        latency_avg=float(out["latency_avg_us"]) / 1e6,
        latency_p99=float(out["latency_p99_us"]) / 1e6, rows_added=rows_added,
        rss_kb=proc_status(row.proc.pid)["VmRSS"])


# ------------------------------------------------------------------ reporting


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-1)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(x: float) -> str:
    return "-" if x != x else f"{x * 1e3:.1f} ms" if x >= 0.0995 else f"{x * 1e3:.2f} ms"


def scan_log(serve: ServeProc) -> tuple[dict[str, int], list[str]]:
    """Lines per logger, and the lines that are neither event lines nor expected notices."""
    per_logger: dict[str, int] = {}
    odd: list[str] = []
    expected = ("creating the cloud listener's certificate",)
    for _, line in serve.lines:
        match = re.match(r"^\S+ \S+ (\S+): ", line)
        name = match.group(1) if match else "(no logger)"
        per_logger[name] = per_logger.get(name, 0) + 1
        if not EVENT_LINE.match(line) and not any(e in line for e in expected):
            odd.append(line.rstrip())
    return per_logger, odd


# ------------------------------------------------------------------ the run


def run(args: argparse.Namespace, workdir: Path, procs: list[subprocess.Popen],
        report: list[str]) -> None:
    hellos = {h["name"]: bytes.fromhex(h["hex"]) for h in json.loads(HELLOS.read_text())["hellos"]}
    hello_files = {}
    for name in (PLUG, TLS1):
        hello_files[name] = workdir / f"{name}.bin"
        hello_files[name].write_bytes(hellos[name])
    loader = compile_loader(HERE / "tlsload.c", workdir)
    print(f"loader: {HERE / 'tlsload.c'} compiled with gcc -O2 into the temporary directory")

    _, upstream = start_dnsmasq(workdir, "upstream", ["--address=/fwd.test/198.18.7.7"], procs)
    print(f"upstream: dnsmasq on {HOST}:{upstream} (answers *.fwd.test itself, --no-resolv)")
    serves: list[ServeProc] = []
    for key, mode in (("serve-hs", "handshake"), ("serve-log", "log")):
        sub = workdir / key
        sub.mkdir()
        config = write_config(sub / "serve.toml", upstream, sub / "events.db", mode)
        serve = ServeProc(key, f"hs100local serve (cloud-mode {mode})", config,
                          sub / "events.db", procs)
        serves.append(serve)
        print(f"  {key:<10} pid {serve.pid}  {serve.serving}")
    serve_hs, serve_log = serves
    for serve in serves:  # DNS and NTP answer: it is the whole daemon that idles
        dns_port, ntp_port = serve.ports["dns"], serve.ports["ntp"]
        wait_until(f"{serve.key} DNS", lambda p=dns_port: dns_answers(
            p, "n-devs.tplinkcloud.com") == ["127.0.0.1"], serve.popen)
        wait_until(f"{serve.key} NTP", lambda p=ntp_port: ntp_reply(p), serve.popen)
    tls_dir = workdir / "serve-hs" / "tls"  # serve's own certificate, for s_server
    cert, key = tls_dir / "cloud-cert.pem", tls_dir / "cloud-key.pem"

    dnsmasq_popen, dnsmasq_port = start_dnsmasq(
        workdir, "peer", ["--address=/tplinkcloud.com/127.0.0.1", f"--server=127.0.0.1#{upstream}"],
        procs)
    peers = [
        Proc("dnsmasq", "dnsmasq, sinkhole + forward (DNS peer)", dnsmasq_popen, dnsmasq_port,
             proc_status(dnsmasq_popen.pid)["VmRSS"]),
        start_chronyd(workdir, procs),
        start_s_server(workdir, cert, key, procs),
        start_ready_line("asyncio", "bare asyncio accept-and-close server (python)",
                         [sys.executable, "-c", ASYNCIO_CLOSE], procs),
    ]
    floor_popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                                   stdin=subprocess.DEVNULL, preexec_fn=default_signals)
    procs.append(floor_popen)
    time.sleep(0.5)  # interpreter start-up: ~50 ms here
    floor = Proc("python", "python -c 'import time; time.sleep(3600)' (floor)", floor_popen,
                 0, proc_status(floor_popen.pid)["VmRSS"])
    everyone: list[Proc] = [*serves, *peers, floor]
    by_key = {p.key: p for p in everyone}

    # 1. idle
    print(f"\n1. idle: {args.idle:g} s with no traffic at all ...", flush=True)
    idle = measure_idle(everyone, args.idle)

    # 2. latency
    print(f"\n2. ClientHello-to-event latency: {args.warmup} + {args.connections} sequential "
          "connections per serve, each from its own 127.1.x.y address", flush=True)
    rng = random.Random(1)
    latencies = {}
    for serve in serves:
        lat = measure_latency(serve, hellos[PLUG], args.connections, args.warmup, rng)
        latencies[serve.key] = lat
        print(f"  {serve.key:<10} client end median {ms(statistics.median(lat.client))}, "
              f"log line median {ms(statistics.median(lat.log)) if lat.log else '-'}, "
              f"DB row median {ms(statistics.median(lat.db)) if lat.db else '-'}; "
              f"outcomes {lat.outcomes}, missing log/DB {lat.missing_log}/{lat.missing_db}",
              flush=True)

    # 3. throughput
    rows = [Row("ours hs / plug", "serve, cloud-mode handshake, plug-like hello", serve_hs,
                PLUG, "alert", serve_hs.db),
            Row("s_server / plug", "openssl s_server, plug-like hello", by_key["s_server"],
                PLUG, "alert")]
    if args.tls1:
        rows += [Row("ours hs / tls1", "serve, cloud-mode handshake, TLS 1.0 AES128-SHA hello",
                     serve_hs, TLS1, "alert", serve_hs.db),
                 Row("s_server / tls1", "openssl s_server, TLS 1.0 AES128-SHA hello",
                     by_key["s_server"], TLS1, "alert")]
    rows += [Row("ours log / plug", "serve, cloud-mode log, plug-like hello", serve_log, PLUG,
                 "eof", serve_log.db),
             Row("asyncio close", "bare asyncio accept-and-close, plug-like hello",
                 by_key["asyncio"], PLUG, "eof")]
    print(f"\n3. TLS connections/s: tlsload, {args.concurrency} connections kept open, "
          f"{args.sources} source addresses, {args.seconds:g} s per run, {args.rounds} "
          "round(s) (rotating order)", flush=True)
    print(f"  {'row':<16} {'conn/s':>8} {'completed':>9} {'failed':>7} {'recorded':>9} "
          f"{'server CPU':>14} {'loader CPU':>10} {'avg lat':>9} {'p99 lat':>9} "
          f"{'RSS':>8}  outcomes (ours)")
    runs: dict[str, list[Run]] = {r.key: [] for r in rows}
    for rnd in range(args.rounds):
        k = rnd % len(rows)
        for row in rows[k:] + rows[:k]:
            r = load(loader, row, hello_files[row.hello], args)
            runs[row.key].append(r)
            cpu = f"{100 * r.server_cpu / r.wall:.0f}%"
            if r.server_cpu - r.server_main_cpu >= 0.01 * r.wall:
                cpu += (f" ({100 * r.server_main_cpu / r.wall:.0f}+"
                        f"{100 * (r.server_cpu - r.server_main_cpu) / r.wall:.0f})")
            extra = ""
            if r.recorded is not None:
                extra = f"{r.outcomes} rows+{r.rows_added}"
                if r.counters:
                    extra += f" counters {r.counters}"
                if r.dropped:
                    extra += f" DROPPED {r.dropped}"
            print(f"  {row.key:<16} {r.rate:>8,.0f} {r.completed:>9,} "
                  f"{sum(r.failed.values()):>7,} "
                  f"{'-' if r.recorded is None else f'{r.recorded:,}':>9} {cpu:>14} "
                  f"{100 * r.loader_cpu / r.wall:>9.0f}% {ms(r.latency_avg):>9} "
                  f"{ms(r.latency_p99):>9} {mb(r.rss_kb):>8}  {extra}"
                  f"{' failed ' + str(r.failed) if r.failed else ''}",
                  flush=True)
    after_load = {s.key: proc_status(s.pid) for s in serves}
    print("  RSS after the runs: " + ", ".join(
        f"{k} {mb(v['VmRSS'])} (anon {mb(v.get('RssAnon', 0))})" for k, v in after_load.items()))

    # stop the serves (they flush) and account for every connection made to them
    codes = {}
    for serve in serves:
        serve.popen.send_signal(signal.SIGTERM)
        try:
            codes[serve.key] = serve.popen.wait(30)
        except subprocess.TimeoutExpired:
            codes[serve.key] = None
        serve.reader.join(5)
    final = {}
    for serve in serves:
        outcomes, counters, dropped, nrows = db_snapshot(serve.db)
        made = latencies[serve.key].connections + sum(
            r.completed + sum(v for k, v in r.failed.items() if k != "refused")
            for row in rows if row.proc is serve for r in runs[row.key])
        final[serve.key] = (sum(outcomes.values()), made, outcomes, counters, dropped, nrows)

    summary(args, everyone, idle, latencies, rows, runs, serves, after_load, codes, final,
            report)


def summary(args: argparse.Namespace, everyone: list[Proc], idle: dict[str, Idle],
            latencies: dict[str, Latency], rows: list[Row], runs: dict[str, list[Run]],
            serves: list[ServeProc], after_load: dict[str, dict[str, int]],
            codes: dict[str, int | None], final: dict, report: list[str]) -> None:
    p = report.append
    p(f"## 1. Idle cost (no traffic for {args.idle:g} s)")
    p("")
    p("| process | RSS at start | RSS after idle | RssAnon | CPU (% of a core) | wake-ups/s "
      "| threads |")
    p("| --- | --- | --- | --- | --- | --- | --- |")
    for proc in everyone:
        i = idle[proc.key]
        p(f"| {proc.label} | {mb(i.rss_start_kb)} | {mb(i.rss_end_kb)} | {mb(i.anon_end_kb)} | "
          f"{100 * i.cpu_s / i.seconds:.2f} % | {i.switches / i.seconds:.1f} | {i.threads} |")
    hs = idle["serve-hs"]
    c_trio = sum(idle[k].rss_end_kb for k in ("dnsmasq", "chronyd", "s_server"))
    p("")
    p(f"* serve RSS / python floor: {hs.rss_end_kb / idle['python'].rss_end_kb:.1f}x; "
      f"serve RSS / (dnsmasq + chronyd + s_server = {mb(c_trio)}): "
      f"{hs.rss_end_kb / c_trio:.1f}x.")
    for serve in serves:
        i = idle[serve.key]
        rss_ok = max(i.rss_start_kb, i.rss_end_kb) / 1024 < TARGET_RSS_MB
        cpu_ok = 100 * i.cpu_s / i.seconds < TARGET_CPU
        p(f"* targets, {serve.key}: RSS < {TARGET_RSS_MB:g} MB: {met(rss_ok)} "
          f"({mb(i.rss_end_kb)}); CPU < {TARGET_CPU:g} %: {met(cpu_ok)} "
          f"({100 * i.cpu_s / i.seconds:.2f} %). After the load runs: "
          f"{mb(after_load[serve.key]['VmRSS'])}.")

    p("")
    p(f"## 2. ClientHello-to-event latency ({args.connections} connections per row, "
      f"after {args.warmup} warm-up)")
    p("")
    p("| serve | client end (median / p95) | stderr line (median / p95 / max) | "
      "DB row visible (median / p95 / max) | outcomes recorded | missing line / row |")
    p("| --- | --- | --- | --- | --- | --- |")
    for key, lat in latencies.items():
        end = "alert sent" if lat.mode == "handshake" else "FIN seen"
        p(f"| {key} ({lat.mode}; client end = {end}) | {ms(statistics.median(lat.client))} / "
          f"{ms(pct(lat.client, 0.95))} | "
          f"{ms(statistics.median(lat.log)) if lat.log else '-'} / {ms(pct(lat.log, 0.95))} / "
          f"{ms(max(lat.log)) if lat.log else '-'} | "
          f"{ms(statistics.median(lat.db)) if lat.db else '-'} / {ms(pct(lat.db, 0.95))} / "
          f"{ms(max(lat.db)) if lat.db else '-'} | "
          f"{', '.join(f'{k} {v}' for k, v in lat.outcomes.items())}"
          f"{f' ({lat.counts_not_1} rows with count != 1)' if lat.counts_not_1 else ''} | "
          f"{lat.missing_log} / {lat.missing_db} |")

    p("")
    med = f"median of {args.rounds}" if args.rounds > 1 else "1 run"
    p(f"## 3. TLS connections per second ({args.concurrency} concurrent, {args.sources} "
      f"source addresses, {args.seconds:g} s runs, {med})")
    p("")
    p("| row | conn/s | runs | completed / failed (all runs) | recorded in DB (all runs) | "
      "server CPU | loader CPU | conn latency avg / p99 |")
    p("| --- | --- | --- | --- | --- | --- | --- | --- |")

    def median(key: str, fn: Callable[[Run], float]) -> float:
        return statistics.median(fn(r) for r in runs[key])

    for row in rows:
        rs = runs[row.key]
        completed = sum(r.completed for r in rs)
        failed = sum(sum(r.failed.values()) for r in rs)
        if row.db is not None:
            recorded = sum(r.recorded or 0 for r in rs)
            lost = completed + failed - recorded
            rec = f"{recorded:,} ({'none lost' if lost == 0 else f'{lost:+,} missing'})"
        else:
            rec = "-"
        cpu = f"{median(row.key, lambda r: 100 * r.server_cpu / r.wall):.0f} %"
        if row.db is not None:
            loop = median(row.key, lambda r: 100 * r.server_main_cpu / r.wall)
            other = median(row.key, lambda r: 100 * (r.server_cpu - r.server_main_cpu) / r.wall)
            cpu += f" ({loop:.0f} loop + {other:.0f})"
        p(f"| {row.key} | **{fmt_int(median(row.key, lambda r: r.rate))}** | "
          f"{fmt_int(min(r.rate for r in rs))}-{fmt_int(max(r.rate for r in rs))} | "
          f"{completed:,} / {failed:,} | {rec} | {cpu} | "
          f"{median(row.key, lambda r: 100 * r.loader_cpu / r.wall):.0f} % | "
          f"{ms(median(row.key, lambda r: r.latency_avg))} / "
          f"{ms(median(row.key, lambda r: r.latency_p99))} |")
    p("")
    rate = {row.key: median(row.key, lambda r: r.rate) for row in rows}
    pairs = [("ours hs / plug", "s_server / plug"), ("ours hs / tls1", "s_server / tls1"),
             ("ours log / plug", "asyncio close")]
    p("* ratios of the medians: " + "; ".join(
        f"{a} / {b} = **{rate[a] / rate[b]:.2f}**" for a, b in pairs if a in rate and b in rate))
    for row in rows:
        if row.db is None:
            continue
        rs = runs[row.key]
        lost = sum(r.completed + sum(r.failed.values()) - (r.recorded or 0) for r in rs)
        ok = rate[row.key] >= TARGET_RATE and lost == 0 and not any(r.failed for r in rs)
        p(f"* target >= {TARGET_RATE:g}/s recorded, nothing lost, {row.key}: {met(ok)} "
          f"(every run >= {TARGET_RATE:g}: "
          f"{'yes' if all(r.rate >= TARGET_RATE for r in rs) else 'no'})")
    for key, (recorded, made, outcomes, counters, dropped, nrows) in final.items():
        p(f"* {key}, whole run (database read after SIGTERM, exit code {codes[key]}): "
          f"{recorded:,} tls events in {nrows:,} rows for {made:,} connections made to it "
          f"({'every one recorded' if recorded == made else f'{recorded - made:+,} difference'}); "
          f"outcomes {outcomes}; tls counters {counters or 'none'}; "
          f"reported dropped {dropped}")
    for serve in serves:
        per_logger, odd = scan_log(serve)
        p(f"* {serve.key} stderr: {sum(per_logger.values()):,} lines "
          f"({', '.join(f'{k} {v:,}' for k, v in sorted(per_logger.items()))}); "
          f"{len(odd)} other than event lines" + (":" if odd else ""))
        for line in odd[:10]:
            p(f"    `{line[:300]}`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds of the idle window (default 30)")
    parser.add_argument("--connections", type=int, default=200,
                        help="timed connections per serve for the latency (default 200)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed connections before those (default 5)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="loader run length per row and round (default 10)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs per row, interleaved with rotating order (default 3)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="connections the loader keeps open (default 32)")
    parser.add_argument("--sources", type=int, default=None,
                        help="loader source addresses 127.0.2.1-N (default: concurrency, "
                             "at most 250; 0 = 127.0.0.1)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="a loader connection not done after this fails (default 10)")
    parser.add_argument("--no-tls1", dest="tls1", action="store_false",
                        help="leave out the TLS 1.0 AES128-SHA hello rows")
    args = parser.parse_args()
    if args.sources is None:
        args.sources = min(args.concurrency, 250)
    if (args.idle <= 0 or args.connections < 1 or args.warmup < 0 or args.seconds <= 0
            or args.rounds < 1 or not 1 <= args.concurrency <= 4096
            or not 0 <= args.sources <= 250 or args.timeout <= 0
            or args.connections + args.warmup > 250 * 250):
        parser.error("bad arguments")
    if os.geteuid() != 0:
        raise SystemExit("run as root: chronyd (the idle NTP peer) refuses to start otherwise")
    for tool in ("openssl", "dnsmasq"):
        if not shutil.which(tool) and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            raise SystemExit(f"{tool} is needed")
    if not os.access(CHRONYD, os.X_OK):
        raise SystemExit(f"{CHRONYD} is needed (Debian package chrony)")
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.setswitchinterval(0.0005)  # the latency threads stamp times: hand the GIL over soon

    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    openssl = version(["openssl", "version"], r"OpenSSL ([\d.]+\w*)")
    gcc = version(["gcc", "--version"], r"\)\s+([\d.]+)")
    machine = (
        f"machine: {os.cpu_count()} cores ({cpu_model()}), kernel {platform.release()}; "
        f"python {platform.python_version()} ({ssl.OPENSSL_VERSION}, sqlite "
        f"{sqlite3.sqlite_version}); openssl CLI {openssl}, "
        f"dnsmasq {version([dnsmasq, '--version'])}, chrony {version([CHRONYD, '-v'])}, "
        f"gcc {gcc}; {code_version()}; "
        f"load average (1 min) {os.getloadavg()[0]:.2f} at start")
    run_with_summary(run, args, name="serve", machine=machine, stop_wait=30.0)


if __name__ == "__main__":
    main()

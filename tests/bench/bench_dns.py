"""DNS responder throughput under dnsperf: ``hs100local dns`` versus dnsmasq and dnslib.

Run by hand (not part of the test suite)::

    python tests/bench/bench_dns.py [--seconds 10] [--clients 100] [--rounds 1]

Everything stays on loopback. An upstream dnsmasq (``--no-resolv``, answering
``*.fwd.test`` and a few other names itself, no recursion) stands in for the real
upstream; nothing is ever sent to a real resolver. Servers under test, each on its
own loopback port, with the same sinkhole rule (``tplinkcloud.com`` -> A 127.0.0.1)
and the same upstream:

* ``ours``: ``hs100local dns --listen 127.0.0.1:P --upstream 127.0.0.1:U --no-events
  --rate-limit 0``, in this environment (where PYTHONDONTWRITEBYTECODE=1 makes every
  start compile hs100local's modules from source);
* ``ours[pyc]``: the same with a private bytecode cache (PYTHONPYCACHEPREFIX, written
  by a first start), as a normal installation runs. The two differed by 3x until the
  server lowered its UDP transport's ``max_size`` (commit b8148c9): the start-up
  history set glibc's malloc thresholds, which decided whether asyncio's 256 KiB
  receive buffer was mmap'd and unmapped for every datagram. The faults/q column
  (the server's minor page faults per query) would show it coming back;
* ``ours+events``: as ``ours`` with the event store on (a temporary database);
* ``dnsmasq``: the peer, ``--address=/tplinkcloud.com/127.0.0.1 --server=127.0.0.1#U
  --no-resolv --cache-size=10000``;
* ``dnslib``: dnslib's own threaded ``DNSServer`` (a thread per UDP request) with a
  resolver that answers the sinkhole names itself and proxies the rest with
  ``DNSRecord.send`` (no cache: dnslib has none), in its own python process.

Workloads, each run with dnsperf for ``--seconds`` (one socket, ``-c 1``, and
``-q CLIENTS`` queries kept outstanding; ``-t`` short so a lost query frees its slot
soon):

* ``sinkhole``: A queries for 10,000 different names under tplinkcloud.com;
* ``cached forwards``: A queries for a few names under fwd.test, forwarded to the
  upstream once (the caches are warmed first) and then answered from the cache
  (dnslib forwards every one).

Prints queries per second, lost queries, average latency and the CPU the server and
dnsperf used, a table with the ratios ours/dnsmasq and ours/dnslib, and whether the
targets are met (sinkhole >= 25,000 qps and >= 3x dnslib; cached forwards >=
20,000 qps). dnsperf and the server share the machine's cores. No assertions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
from servers import (  # this folder (on sys.path)
    cpu_model,
    default_signals,
    fmt_int,
    free_port,
    met,
    start_server,
    stop,
    version,
)

BINDIR = Path(sys.executable).parent
HOST = "127.0.0.1"
SINK_SUFFIX = "tplinkcloud.com"
SINK_ADDRESS = "127.0.0.1"
FWD_ADDRESS = "198.18.7.7"
FWD_NAMES = ["fwd.test", "www.fwd.test", "api.fwd.test", "a.fwd.test", "b.fwd.test",
             "c.fwd.test", "mail.fwd.test", "time.fwd.test"]
SINK_NAMES = 10_000
SINK_PREFIXES = ["n-devs", "use1-api", "euw1-api", "aps1-api", "n-deventry", "wap",
                 "download", "www"]
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: dnslib's threaded server as a peer: sinkhole names answered here, the rest proxied.
DNSLIB_SERVER = """\
import signal, sys, threading
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer

upstream_port = int(sys.argv[1])
SUFFIXES = [("tplinkcloud", "com"), ("tplinkra", "com")]

class NullLogger:
    def __getattr__(self, name):
        return lambda *args: None

class Resolver(BaseResolver):
    def resolve(self, request, handler):
        q = request.q
        labels = tuple(x.decode("ascii", "replace").lower() for x in q.qname.label)
        if any(labels[-len(s):] == s for s in SUFFIXES):
            reply = request.reply(ra=1, aa=1)
            if q.qtype == QTYPE.A:
                reply.add_answer(RR(q.qname, QTYPE.A, ttl=60, rdata=A("127.0.0.1")))
            return reply
        try:
            return DNSRecord.parse(request.send("127.0.0.1", upstream_port, timeout=3))
        except Exception:
            reply = request.reply()
            reply.header.rcode = RCODE.SERVFAIL
            return reply

server = DNSServer(Resolver(), address="127.0.0.1", port=0, logger=NullLogger())
server.server.daemon_threads = True
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
signal.signal(signal.SIGINT, lambda *a: stop.set())
server.start_thread()
print(f"dnslib on 127.0.0.1:{server.server.server_address[1]} (udp, thread per request)",
      flush=True)
stop.wait()
server.stop()
"""


@dataclass
class Server:
    key: str
    label: str
    proc: subprocess.Popen
    port: int


@dataclass
class Result:
    qps: float
    sent: int
    completed: int
    lost: int
    latency: float  # average, seconds
    rcodes: str
    server_cpu: float  # seconds of CPU during the run
    client_cpu: float
    wall: float
    faults: int  # the server's minor page faults during the run


@dataclass
class Cell:
    results: list[Result] = field(default_factory=list)

    def qps(self) -> float:
        return statistics.median(r.qps for r in self.results) if self.results else float("nan")


# ------------------------------------------------------------------ processes




def ask(port: int, name: str, timeout: float = 1.0) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), HOST, port=port, timeout=timeout)


def a_records(msg: dns.message.Message) -> list[str]:
    return sorted(item.address for rrset in msg.answer for item in rrset
                  if rrset.rdtype == 1)


def wait_answering(proc: subprocess.Popen, port: int, name: str, what: str,
                   timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}) at start")
        try:
            ask(port, name, timeout=0.2)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} does not answer on {HOST}:{port}") from None


def start_dnsmasq(workdir: Path, name: str, port: int, extra: list[str]) -> subprocess.Popen:
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    log = open(workdir / f"{name}.stderr", "w")  # noqa: SIM115 - closed with the process
    cmd = [exe, "-k", "--conf-file=/dev/null", "--no-hosts", "--no-poll", f"--port={port}",
           f"--listen-address={HOST}", "--bind-interfaces", "--log-facility=/dev/null",
           f"--pid-file={workdir / (name + '.pid')}", *extra]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=log, preexec_fn=default_signals)
    log.close()
    return proc


def start_ready(cmd: list[str], procs: list[subprocess.Popen], env: dict[str, str] | None = None,
                timeout: float = 20.0) -> tuple[subprocess.Popen, int]:
    """Start ``cmd`` (added to ``procs`` at once, for the clean-up) and wait for its
    ready line ``… on HOST:PORT …``; return the process and the port."""
    return start_server(cmd, timeout, env=env, procs=procs)


def proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, all threads) and minor page faults of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is field 3, "state"
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[7])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ dnsperf

_PATTERNS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "latency": r"Average Latency \(s\):\s+([\d.]+)",
}


def dnsperf(server: Server, datafile: Path, seconds: float, outstanding: int,
            timeout: float) -> Result:
    cmd = ["dnsperf", "-s", HOST, "-p", str(server.port), "-d", str(datafile), "-c", "1",
           "-q", str(outstanding), "-l", f"{seconds:g}", "-t", f"{timeout:g}",
           "-O", "suppress=timeouts,unexpected"]
    (cpu0, faults0), child0 = proc_usage(server.proc.pid), children_cpu()
    t0 = time.monotonic()
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=seconds + timeout + 60, check=False)
    wall = time.monotonic() - t0
    cpu1, faults1 = proc_usage(server.proc.pid)
    server_cpu, client_cpu = cpu1 - cpu0, children_cpu() - child0
    if done.returncode != 0:
        raise SystemExit(f"dnsperf against {server.label} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    found = {}
    for key, pattern in _PATTERNS.items():
        match = re.search(pattern, done.stdout)
        if match is None:
            raise SystemExit(f"cannot find {key!r} in dnsperf's output:\n{done.stdout}")
        found[key] = match.group(1)
    rcodes = re.search(r"Response codes:\s+(.*)", done.stdout)
    return Result(float(found["qps"]), int(found["sent"]), int(found["completed"]),
                  int(found["lost"]), float(found["latency"]),
                  rcodes.group(1).strip() if rcodes else "(none)", server_cpu, client_cpu,
                  wall, faults1 - faults0)


# ------------------------------------------------------------------ the run


def check_answers(server: Server) -> None:
    """Same answers everywhere, and warm the forward caches."""
    for name, want in ((f"check.n-devs.{SINK_SUFFIX}", [SINK_ADDRESS]),
                       *((n, [FWD_ADDRESS]) for n in FWD_NAMES)):
        msg = ask(server.port, name, timeout=3.0)
        got = a_records(msg)
        if msg.rcode() != dns.rcode.NOERROR or got != want:
            raise SystemExit(f"{server.label} answers {name} with "
                             f"{dns.rcode.to_text(msg.rcode())} {got}, expected {want}")


def write_queries(workdir: Path) -> dict[str, Path]:
    sink = workdir / "sinkhole.txt"
    with sink.open("w") as f:
        for i in range(SINK_NAMES):
            f.write(f"d{i:05d}.{SINK_PREFIXES[i % len(SINK_PREFIXES)]}.{SINK_SUFFIX} A\n")
    fwd = workdir / "forward.txt"
    fwd.write_text("".join(f"{name} A\n" for name in FWD_NAMES))
    return {"sinkhole": sink, "cached forwards": fwd}


def event_counts(db: Path) -> tuple[int, int, int]:
    """(dns rows, dns events they count, events reported dropped) in the events database."""
    conn = sqlite3.connect(db)
    try:
        rows, n = conn.execute(
            "SELECT count(*), coalesce(sum(count), 0) FROM events WHERE kind = 'dns'"
        ).fetchone()
        dropped = 0
        for (details,) in conn.execute("SELECT details FROM events WHERE kind = 'store'"):
            match = re.search(r'"dropped":\s*(\d+)', details)
            dropped += int(match.group(1)) if match else 0
    finally:
        conn.close()
    return rows, n, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="dnsperf run length per server and workload (default 10)")
    parser.add_argument("--clients", type=int, default=100,
                        help="queries dnsperf keeps outstanding, -q (default 100)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per server and workload, interleaved with rotating "
                             "order; the median is reported (default 1)")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="dnsperf -t: a query unanswered after this is lost (default 1)")
    args = parser.parse_args()
    if args.seconds <= 0 or args.clients < 1 or args.rounds < 1 or args.timeout <= 0:
        parser.error("--seconds, --clients, --rounds and --timeout must be positive")
    for tool in ("dnsperf", "dnsmasq"):
        if not (shutil.which(tool) or os.access(f"/usr/sbin/{tool}", os.X_OK)):
            raise SystemExit(f"{tool} is needed (Debian packages dnsperf, dnsmasq-base)")
    ours_exe = str(BINDIR / "hs100local")
    if not os.access(ours_exe, os.X_OK):
        raise SystemExit(f"missing console script {ours_exe}")
    # A background job from a shell ignores SIGINT; SIGTERM must run the clean-up too.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    machine = (f"machine: {os.cpu_count()} cores ({cpu_model()}), kernel {platform.release()}, "
               f"python {platform.python_version()}, dnslib "
               f"{importlib.metadata.version('dnslib')}, dnsmasq "
               f"{version([shutil.which('dnsmasq') or '/usr/sbin/dnsmasq', '--version'])}, "
               f"dnsperf {version(['dnsperf', '-h'])}; PYTHONDONTWRITEBYTECODE="
               f"{os.environ.get('PYTHONDONTWRITEBYTECODE') or '(unset)'}; load average "
               f"(1 min) {os.getloadavg()[0]:.2f} at start")
    print(machine)
    print(f"dnsperf -c 1 -q {args.clients} -l {args.seconds:g} -t {args.timeout:g}; "
          f"{args.rounds} round(s); dnsperf and the server share the "
          f"{os.cpu_count()} cores (nothing pinned)")

    started = time.monotonic()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="hs100local-bench-dns-") as tmp:
        workdir = Path(tmp)
        try:
            servers, cells, db = run(args, ours_exe, workdir, procs)
        finally:
            for proc in reversed(procs):
                stop(proc, 30.0)  # the events server flushes its queue first
        n_rows, n_events, n_dropped = event_counts(db)
        sunk = sum(r.completed for r in cells["ours+events", "sinkhole"].results)
    machine += f", {os.getloadavg()[0]:.2f} at end; total {time.monotonic() - started:.0f} s"
    summary(args, servers, cells, (n_rows, n_events, n_dropped, sunk), machine)


def run(args: argparse.Namespace, ours_exe: str, workdir: Path,
        procs: list[subprocess.Popen]) -> tuple[list[Server], dict, Path]:
    files = write_queries(workdir)

    up_port = free_port()
    upstream = start_dnsmasq(workdir, "upstream", up_port, [
        "--no-resolv", "--local-ttl=300", "--cache-size=10000",
        f"--address=/fwd.test/{FWD_ADDRESS}", "--address=/fwd.test/::7",
        "--address=/alt.test/198.18.7.8", "--address=/other.test/198.18.7.9",
        "--txt-record=fwd.test,hello", "--mx-host=fwd.test,mail.fwd.test,10",
    ])
    procs.append(upstream)
    wait_answering(upstream, up_port, "fwd.test", "upstream dnsmasq")
    print(f"upstream: dnsmasq on {HOST}:{up_port} (--no-resolv, answers *.fwd.test "
          f"= {FWD_ADDRESS} with TTL 300 itself)")

    servers: list[Server] = []

    def ours(extra: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen,
                                                                          int]:
        return start_ready([ours_exe, "dns", "--listen", f"{HOST}:{free_port()}", "--upstream",
                            f"{HOST}:{up_port}", "--rate-limit", "0", *extra], procs, env)

    proc, port = ours(["--no-events"])
    servers.append(Server("ours", "ours (hs100local dns), this environment", proc, port))

    # The same with a private bytecode cache, written by a first start, as a normal
    # installation has it (see "Reading the figures" in README.md: the interpreter's
    # start-up history changes glibc's malloc thresholds, and with them the cost of
    # asyncio's 256 KiB receive buffer per datagram).
    pyc_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    pyc_env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    proc, _port = ours(["--no-events"], pyc_env)
    stop(proc)
    proc, port = ours(["--no-events"], pyc_env)
    servers.append(Server("ours[pyc]", "ours, bytecode cache", proc, port))

    db = workdir / "events.db"
    proc, port = ours(["--db", str(db)])
    servers.append(Server("ours+events", "ours + events (sqlite), this environment", proc,
                          port))

    peer_port = free_port()
    proc = start_dnsmasq(workdir, "peer", peer_port, [
        "--no-resolv", f"--server={HOST}#{up_port}", "--cache-size=10000", "--local-ttl=60",
        f"--address=/{SINK_SUFFIX}/{SINK_ADDRESS}", f"--address=/tplinkra.com/{SINK_ADDRESS}",
    ])
    procs.append(proc)
    wait_answering(proc, peer_port, f"x.{SINK_SUFFIX}", "peer dnsmasq")
    servers.append(Server("dnsmasq", "dnsmasq (peer)", proc, peer_port))

    proc, port = start_ready([sys.executable, "-c", DNSLIB_SERVER, str(up_port)], procs)
    servers.append(Server("dnslib", "dnslib DNSServer (threaded)", proc, port))

    for server in servers:
        check_answers(server)
        print(f"  {server.key:<12} {HOST}:{server.port}  pid {server.proc.pid}  "
              f"{server.label}: answers checked, forward cache warmed")

    cells: dict[tuple[str, str], Cell] = {(s.key, w): Cell() for s in servers for w in files}
    for workload, datafile in files.items():
        print(f"\n[{workload}] {datafile.name}: "
              f"{sum(1 for _ in datafile.open())} query lines")
        print(f"  {'server':<12} {'qps':>9} {'lost':>7} {'avg lat':>9} {'server CPU':>11} "
              f"{'dnsperf CPU':>11} {'faults/q':>8}  response codes")
        for rnd in range(args.rounds):
            k = rnd % len(servers)
            for server in servers[k:] + servers[:k]:
                for name in FWD_NAMES:  # warm (again): cached forwards must be cached
                    ask(server.port, name, timeout=3.0)
                r = dnsperf(server, datafile, args.seconds, args.clients, args.timeout)
                cells[server.key, workload].results.append(r)
                print(f"  {server.key:<12} {r.qps:>9,.0f} {r.lost:>7} "
                      f"{r.latency * 1e3:>7.2f}ms {100 * r.server_cpu / r.wall:>10.0f}% "
                      f"{100 * r.client_cpu / r.wall:>10.0f}% "
                      f"{r.faults / max(r.completed, 1):>8.2f}  {r.rcodes}", flush=True)
                if server.proc.poll() is not None:
                    raise SystemExit(f"{server.label} died during the run "
                                     f"(exit {server.proc.returncode})")
    return servers, cells, db


def summary(args: argparse.Namespace, servers: list[Server], cells: dict,
            events: tuple[int, int, int, int], machine: str) -> None:
    workloads = list(dict.fromkeys(w for _s, w in cells))
    keys = [s.key for s in servers]
    q = {(k, w): cells[k, w].qps() for k in keys for w in workloads}
    print("\n" + "=" * 78 + "\nSUMMARY: queries per second"
          + (f" (median of {args.rounds} runs)" if args.rounds > 1 else "") + "\n" + "=" * 78)
    print(f"{'workload':<16}" + "".join(f"{k:>13}" for k in keys))
    for w in workloads:
        print(f"{w:<16}" + "".join(f"{fmt_int(q[k, w]):>13}" for k in keys))
    ours_keys = [k for k in keys if k.startswith("ours")]
    print(f"\n{'ratios':<16}" + "".join(f"{k + '/' + peer:>22}" for k in ours_keys
                                       for peer in ("dnsmasq", "dnslib")))
    for w in workloads:
        print(f"{w:<16}" + "".join(f"{q[k, w] / q[peer, w]:>22.2f}" for k in ours_keys
                                   for peer in ("dnsmasq", "dnslib")))
    lost = {k: sum(r.lost for w in workloads for r in cells[k, w].results) for k in keys}
    print("queries lost (all runs): " + ", ".join(f"{k} {lost[k]}" for k in keys))

    print("\ntargets: sinkhole >= 25,000 qps and >= 3x dnslib's threaded server; "
          "cached forwards >= 20,000 qps")
    for k in ours_keys:
        sink, fwd, lib = q[k, "sinkhole"], q[k, "cached forwards"], q["dnslib", "sinkhole"]
        print(f"  {k:<12} sinkhole {fmt_int(sink)} qps: >= 25,000 {met(sink >= 25_000)}; "
              f"{sink / lib:.1f}x dnslib ({fmt_int(lib)}): >= 3x {met(sink >= 3 * lib)}; "
              f"cached forwards {fmt_int(fwd)} qps: >= 20,000 {met(fwd >= 20_000)}")
    n_rows, n_events, n_dropped, sunk = events
    print(f"  events database after stop: {n_events:,} 'dns' events committed in {n_rows:,} "
          f"rows (repeats in a minute fold into one row), {n_dropped:,} reported dropped "
          f"(queue overflow), for {sunk:,} sinkholed queries answered by ours+events "
          f"under dnsperf (+ 1 check)")
    print("\nnotes: dnsperf and the server under test share the cores (see the server and "
          "dnsperf CPU columns), so these are this machine's figures, not a server's "
          "ceiling. ours is one asyncio thread; dnsmasq is single-threaded C; dnslib starts "
          "a thread per UDP request and, having no cache, forwards every 'cached' query "
          "upstream. faults/q (the server's minor page faults per query) near 1 or more in "
          "an ours row means its receive buffer is mmap'd and unmapped for every "
          "datagram again (see README.md).")
    print(f"\n{machine}")

if __name__ == "__main__":
    main()

"""SNTP responses per second under a bounded loader: ``hs100local ntp`` versus chronyd.

Run by hand (not part of the test suite), as root (chronyd needs it)::

    python tests/bench/bench_ntp.py [--seconds 10] [--outstanding 50] [--rounds 1]

Needs gcc (the loader, ``ntpload.c`` beside this script, is compiled at every run
into the temporary directory; no binary is kept) and chrony (``/usr/sbin/chronyd``).
Everything stays on loopback; no server has an upstream and none touches the
system clock. Servers, each on its own free 127.0.0.1 port:

* ``ours``: ``python -m hs100local ntp --listen 127.0.0.1:P --assume-synced
  --rate-limit 0 --no-events``;
* ``ours+events``: the same with the event store on (``--db`` in the temporary
  directory instead of ``--no-events``), the default configuration. The loader's
  transmit timestamps are the real time, so requests sent within the same
  millisecond make identical events, which the store folds into one row;
* ``ours+ev/distinct`` (leave it out with ``--no-distinct``): the same, but the
  loader spaces its transmit timestamps at least 1 ms apart (its "clock" runs
  ahead), so every event differs and each request is a row of its own: the event
  store's worst case, as many plugs (or one confused one) would make;
* ``chronyd``: the peer, ``chronyd -d -x -u root -f CONF`` (foreground, ``-x``: never
  adjusts or steps the system clock), CONF holding ``port P``, ``bindaddress
  127.0.0.1``, ``allow 127.0.0.1``, ``local stratum 3`` (serves its own clock as a
  stratum-3 source, no upstream), ``cmdport 0`` and a pidfile and driftfile in the
  temporary directory; no ``ratelimit``.

Each server must first answer a valid reply (mode 4, LI != 3, stratum 1-15, the
originate field equal to our transmit field). Then the loader keeps exactly
``--outstanding`` requests (mode 3, version 4, 48 bytes, each with a unique
transmit timestamp) in flight on one UDP socket for ``--seconds``: each reply is
matched by its originate field and checked (mode 4, stratum 1-15, LI != 3; the
others are counted invalid), and its slot gets the next request at once; a request
unanswered after ``--timeout`` is lost and its slot reused. Responses/s counts the
valid replies read within the window.

Prints, per run, responses/s, lost, invalid, the average and p99 latency, the CPU
used by the server and by the loader (% of one core over the run: they share the
machine's cores, nothing is pinned), the server's minor page faults per response
and the requests the kernel dropped at the server's socket (its receive buffer
full; /proc/net/udp); then a summary with the medians over ``--rounds``
interleaved rounds (rotating order), the ratio of each ours row to chronyd, whether
each meets the target (>= 50,000 responses/s with zero loss), and what the event
store committed against the requests answered. No assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from servers import (  # this folder (on sys.path)
    compile_loader,
    cpu_model,
    default_signals,
    fmt_int,
    free_port,
    met,
    start_server,
    stop,
    version,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOST = "127.0.0.1"
CHRONYD = "/usr/sbin/chronyd"
TARGET_RATE = 50_000
#: the row whose loader makes every NTP event distinct (no folding in the event store)
DISTINCT = "ours+ev/distinct"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NTP_UNIX_OFFSET = 2_208_988_800


@dataclass
class Server:
    key: str
    label: str
    proc: subprocess.Popen
    port: int
    step_us: int = 0  # loader: least spacing of the transmit timestamps (0: now)
    checks_answered: int = 0  # requests of ours answered outside the loader runs


@dataclass
class Result:
    rate: float  # valid responses per second within the window
    sent: int
    valid: int
    invalid: int
    lost: int
    unmatched: int  # replies matching no request in flight (late, duplicated)
    latency: float  # average, seconds
    p99: float  # seconds (1 µs resolution, -1 if none)
    server_cpu: float  # seconds of CPU during the run, all threads
    server_main_cpu: float  # the main thread's (the event loop for ours)
    loader_cpu: float  # the loader's own user + system time
    wall: float
    faults: int  # the server's minor page faults during the run
    drops: int  # requests the kernel dropped at the server's socket (buffer full)


@dataclass
class Cell:
    results: list[Result] = field(default_factory=list)

    def median(self, attr: str) -> float:
        values = [getattr(r, attr) for r in self.results]
        return statistics.median(values) if values else float("nan")

    def median_of(self, fn: Callable[[Result], float]) -> float:
        return statistics.median(fn(r) for r in self.results) if self.results else float("nan")

    def total(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.results)


# ------------------------------------------------------------------ processes




def proc_usage(pid: int) -> tuple[float, float, int]:
    """CPU seconds of the whole process (user + system, all threads), of its main
    thread, and its minor page faults."""

    def stat(path: str) -> list[str]:
        with open(path) as f:
            return f.read().rsplit(")", 1)[1].split()  # fields[0] is field 3, "state"

    whole = stat(f"/proc/{pid}/stat")
    main = stat(f"/proc/{pid}/task/{pid}/stat")
    return ((int(whole[11]) + int(whole[12])) / CLK_TCK,
            (int(main[11]) + int(main[12])) / CLK_TCK, int(whole[7]))


def socket_drops(port: int) -> int:
    """Datagrams the kernel dropped on the UDP socket bound to 127.0.0.1:``port`` (its
    receive buffer was full): the ``drops`` column of /proc/net/udp."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 12 and parts[1] == local:
                return int(parts[-1])
    return 0


# ------------------------------------------------------------------ NTP check


def request(transmit_ns: int) -> tuple[bytes, bytes]:
    """A mode-3 version-4 request and its transmit field."""
    seconds, ns = divmod(transmit_ns, 1_000_000_000)
    raw = struct.pack(">II", (seconds + NTP_UNIX_OFFSET) % (1 << 32),
                      (ns << 32) // 1_000_000_000)
    return bytes([(4 << 3) | 3]) + bytes(39) + raw, raw


def ask(port: int, timeout: float = 1.0) -> str | None:
    """One request; None if the reply is valid, else what is wrong with it."""
    packet, transmit = request(time.time_ns())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((HOST, port))
        sock.send(packet)
        try:
            reply = sock.recv(2048)
        except OSError as exc:
            return f"no reply ({exc})"
    if len(reply) < 48:
        return f"a {len(reply)}-byte reply"
    li, mode, stratum = reply[0] >> 6, reply[0] & 7, reply[1]
    if reply[24:32] != transmit:
        return "a reply whose originate field is not our transmit field"
    if mode != 4 or li == 3 or not 1 <= stratum <= 15:
        return f"LI {li}, mode {mode}, stratum {stratum}"
    return None


def wait_valid(server: Server, timeout: float = 15.0) -> None:
    """Until the server answers a valid reply (chronyd: once its local reference is
    selected, LI != 3 and stratum != 16)."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.label} exited ({server.proc.returncode}) at start")
        problem = ask(server.port, timeout=0.5)
        if problem is None:
            server.checks_answered += 1
            return
        if not problem.startswith("no reply"):
            server.checks_answered += 1
        if time.monotonic() > deadline:
            raise SystemExit(f"{server.label} on {HOST}:{server.port}: {problem}, "
                             f"still after {timeout:g} s")
        time.sleep(0.2)


# ------------------------------------------------------------------ loader




def load(loader: Path, server: Server, args: argparse.Namespace) -> Result:
    cmd = [str(loader), HOST, str(server.port), f"{args.seconds:g}", str(args.outstanding),
           f"{args.timeout:g}", str(server.step_us)]
    cpu0, main0, faults0 = proc_usage(server.proc.pid)
    drops0 = socket_drops(server.port)
    t0 = time.monotonic()
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=args.seconds + args.timeout + 60, check=False)
    wall = time.monotonic() - t0
    cpu1, main1, faults1 = proc_usage(server.proc.pid)
    drops1 = socket_drops(server.port)
    if done.returncode != 0:
        raise SystemExit(f"ntpload against {server.label} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    out = dict(line.split(None, 1) for line in done.stdout.splitlines() if " " in line)
    try:
        return Result(
            rate=float(out["rate"]), sent=int(out["sent"]), valid=int(out["valid"]),
            invalid=int(out["invalid"]), lost=int(out["lost"]),
            unmatched=int(out["unmatched"]), latency=float(out["latency_avg_us"]) / 1e6,
            p99=float(out["latency_p99_us"]) / 1e6, server_cpu=cpu1 - cpu0,
            server_main_cpu=main1 - main0,
            loader_cpu=float(out["cpu_user_s"]) + float(out["cpu_sys_s"]), wall=wall,
            faults=faults1 - faults0, drops=drops1 - drops0)
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"cannot read ntpload's output ({exc}):\n{done.stdout}") from None


# ------------------------------------------------------------------ the run


def start_chronyd(workdir: Path, procs: list[subprocess.Popen]) -> Server:
    port = free_port()
    conf = workdir / "chrony.conf"
    conf.write_text(
        f"port {port}\n"
        f"bindaddress {HOST}\n"
        f"allow {HOST}\n"
        "local stratum 3\n"
        "cmdport 0\n"
        f"pidfile {workdir / 'chronyd.pid'}\n"
        f"driftfile {workdir / 'chrony.drift'}\n"
    )
    # -d: foreground, log to stderr; -x: never adjust or step the system clock;
    # -u root: stay root (dropping to _chrony could not write into our 0700 workdir).
    log = open(workdir / "chronyd.stderr", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([CHRONYD, "-d", "-x", "-u", "root", "-f", str(conf)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                            preexec_fn=default_signals)
    log.close()
    procs.append(proc)
    server = Server("chronyd", "chronyd (peer)", proc, port)
    try:
        wait_valid(server)
    except SystemExit:
        print((workdir / "chronyd.stderr").read_text())
        raise
    return server


def run(args: argparse.Namespace, workdir: Path,
        procs: list[subprocess.Popen]) -> tuple[list[Server], dict[str, Cell],
                                                dict[str, Path]]:
    loader = compile_loader(HERE / "ntpload.c", workdir)
    print(f"loader: {HERE / 'ntpload.c'} compiled with gcc -O2 into the temporary directory")

    servers: list[Server] = []

    def ours(key: str, label: str, extra: list[str], step_us: int = 0) -> None:
        proc, port = start_server(
            [sys.executable, "-m", "hs100local", "ntp", "--listen", f"{HOST}:{free_port()}",
             "--assume-synced", "--rate-limit", "0", *extra], 20.0, procs=procs)
        server = Server(key, label, proc, port, step_us)
        wait_valid(server, timeout=5.0)
        servers.append(server)

    ours("ours", "ours (hs100local ntp)", ["--no-events"])
    dbs = {"ours+events": workdir / "events.db", DISTINCT: workdir / "events-distinct.db"}
    ours("ours+events", "ours + events (sqlite)", ["--db", str(dbs["ours+events"])])
    if args.distinct:
        ours(DISTINCT, "ours + events, a distinct event per request (loader's clock 1 ms "
             "further each request)", ["--db", str(dbs[DISTINCT])], step_us=1000)
    servers.append(start_chronyd(workdir, procs))
    for server in servers:
        print(f"  {server.key:<16} {HOST}:{server.port}  pid {server.proc.pid}  "
              f"{server.label}: valid reply checked")

    cells = {s.key: Cell() for s in servers}
    print(f"\n  {'server':<16} {'resp/s':>9} {'lost':>6} {'invalid':>7} {'unmatch':>7} "
          f"{'avg lat':>9} {'p99 lat':>9} {'server CPU':>16} {'loader CPU':>10} "
          f"{'faults/r':>8} {'socket drops':>12}")
    for rnd in range(args.rounds):
        k = rnd % len(servers)
        for server in servers[k:] + servers[:k]:
            if server.proc.poll() is not None:
                raise SystemExit(f"{server.label} died (exit {server.proc.returncode})")
            r = load(loader, server, args)
            cells[server.key].results.append(r)
            cpu = f"{100 * r.server_cpu / r.wall:.0f}%"
            if r.server_cpu - r.server_main_cpu >= 0.01 * r.wall:  # other threads worked
                cpu += (f" ({100 * r.server_main_cpu / r.wall:.0f}+"
                        f"{100 * (r.server_cpu - r.server_main_cpu) / r.wall:.0f})")
            print(f"  {server.key:<16} {r.rate:>9,.0f} {r.lost:>6} {r.invalid:>7} "
                  f"{r.unmatched:>7} {r.latency * 1e3:>7.3f}ms {r.p99 * 1e3:>7.3f}ms "
                  f"{cpu:>16} {100 * r.loader_cpu / r.wall:>9.0f}% "
                  f"{r.faults / max(r.valid, 1):>8.3f} {r.drops:>12}", flush=True)
            if server.proc.poll() is not None:
                raise SystemExit(f"{server.label} died during the run "
                                 f"(exit {server.proc.returncode})")
    return servers, cells, {k: v for k, v in dbs.items() if k in cells}


def event_counts(db: Path) -> tuple[int, int, int, int]:
    """(ntp rows, ntp events they count, ntp counter total, events reported dropped)."""
    conn = sqlite3.connect(db)
    try:
        rows, n = conn.execute(
            "SELECT count(*), coalesce(sum(count), 0) FROM events WHERE kind = 'ntp'"
        ).fetchone()
        (counted,) = conn.execute(
            "SELECT coalesce(sum(n), 0) FROM event_counts WHERE kind = 'ntp'").fetchone()
        dropped = 0
        for (details,) in conn.execute("SELECT details FROM events WHERE kind = 'store'"):
            match = re.search(r'"dropped":\s*(\d+)', details)
            dropped += int(match.group(1)) if match else 0
    finally:
        conn.close()
    return rows, n, counted, dropped


def code_version() -> str:
    """The commit, and whether hs100local/ differs from it (with a digest of the NTP
    server's sources, so that figures can be tied to the code they measured)."""
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True,
                              check=False, stdin=subprocess.DEVNULL)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("log", "--oneline", "-1") or "?"
    ntp = git("status", "--porcelain", "--", "hs100local/ntp", "hs100local/events.py",
              "hs100local/ratelimit.py")
    other = git("status", "--porcelain", "--", "hs100local")
    digest = hashlib.sha256()
    for path in sorted((REPO / "hs100local" / "ntp").glob("*.py")):
        digest.update(path.read_bytes())
    state = ("hs100local/ntp, events.py, ratelimit.py: uncommitted changes" if ntp
             else "hs100local/ntp, events.py, ratelimit.py as committed")
    if other and other != ntp:
        state += " (other uncommitted changes in hs100local/)"
    return f"commit {commit}; {state}; hs100local/ntp sha256 {digest.hexdigest()[:12]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="loader run length per server and round (default 10)")
    parser.add_argument("--outstanding", type=int, default=50,
                        help="requests the loader keeps in flight (default 50)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per server, interleaved with rotating order; the "
                             "median is reported (default 1)")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="a request unanswered after this is lost (default 1)")
    parser.add_argument("--no-distinct", dest="distinct", action="store_false",
                        help=f"leave out the {DISTINCT} row (the event store's worst "
                             "case: one row per request)")
    args = parser.parse_args()
    if (args.seconds <= 0 or not 1 <= args.outstanding <= 65536 or args.rounds < 1
            or args.timeout <= 0):
        parser.error("--seconds, --rounds and --timeout must be positive, --outstanding "
                     "1-65536")
    if not os.access(CHRONYD, os.X_OK):
        raise SystemExit(f"{CHRONYD} is needed (Debian package chrony)")
    if os.geteuid() != 0:
        raise SystemExit("run as root: chronyd refuses to start otherwise")
    # A background job from a shell ignores SIGINT; SIGTERM must run the clean-up too.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    gcc = version(["gcc", "--version"], r"\)\s+([\d.]+)")
    machine = (f"machine: {os.cpu_count()} cores ({cpu_model()}), kernel {platform.release()}, "
               f"python {platform.python_version()}, chrony {version([CHRONYD, '-v'])}, "
               f"gcc {gcc}; "
               f"{code_version()}; load average (1 min) {os.getloadavg()[0]:.2f} at start")
    print(machine)
    print(f"ntpload: {args.outstanding} requests outstanding on one UDP socket, "
          f"{args.seconds:g} s per run, lost after {args.timeout:g} s; {args.rounds} "
          f"round(s); the loader and the server share the {os.cpu_count()} cores "
          "(nothing pinned)")

    started = time.monotonic()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="hs100local-bench-ntp-") as tmp:
        workdir = Path(tmp)
        try:
            servers, cells, dbs = run(args, workdir, procs)
        finally:
            for proc in reversed(procs):
                stop(proc, 30.0)  # the events server flushes its queue first
        events = {}
        for key, db in dbs.items():
            checks = next(s.checks_answered for s in servers if s.key == key)
            answered = cells[key].total("valid") + cells[key].total("invalid") + checks
            events[key] = (*event_counts(db), answered)
    machine += f", {os.getloadavg()[0]:.2f} at end; total {time.monotonic() - started:.0f} s"
    summary(args, servers, cells, events, machine)


def summary(args: argparse.Namespace, servers: list[Server], cells: dict[str, Cell],
            events: dict[str, tuple[int, int, int, int, int]], machine: str) -> None:
    keys = [s.key for s in servers]
    med = f" (median of {args.rounds} runs)" if args.rounds > 1 else ""
    print("\n" + "=" * 78 + f"\nSUMMARY{med}\n" + "=" * 78)
    rows = [
        ("responses/s", lambda c: fmt_int(c.median("rate"))),
        ("  min - max", lambda c: f"{fmt_int(min(r.rate for r in c.results))}-"
                                  f"{fmt_int(max(r.rate for r in c.results))}"),
        ("lost (all runs)", lambda c: str(c.total("lost"))),
        ("invalid (all runs)", lambda c: str(c.total("invalid"))),
        ("unmatched (all runs)", lambda c: str(c.total("unmatched"))),
        ("avg latency", lambda c: f"{c.median('latency') * 1e3:.3f} ms"),
        ("p99 latency", lambda c: f"{c.median('p99') * 1e3:.3f} ms"),
        ("server CPU", lambda c: f"{c.median_of(lambda r: 100 * r.server_cpu / r.wall):.0f} %"),
        ("  main thread",
         lambda c: f"{c.median_of(lambda r: 100 * r.server_main_cpu / r.wall):.0f} %"),
        ("loader CPU", lambda c: f"{c.median_of(lambda r: 100 * r.loader_cpu / r.wall):.0f} %"),
        ("faults/response", lambda c: f"{c.median_of(lambda r: r.faults / max(r.valid, 1)):.3f}"),
        ("socket drops (all)", lambda c: str(c.total("drops"))),
    ]
    print(f"{'':<20}" + "".join(f"{k:>18}" for k in keys))
    for name, cell_text in rows:
        print(f"{name:<20}" + "".join(f"{cell_text(cells[k]):>18}" for k in keys))

    peer = cells["chronyd"].median("rate")
    ours_keys = [k for k in keys if k.startswith("ours")]
    print("\nratios of the medians: " + ", ".join(
        f"{k}/chronyd {cells[k].median('rate') / peer:.3f}" for k in ours_keys))
    print(f"\ntarget: >= {TARGET_RATE:,} responses/s (median) with zero loss "
          f"({args.outstanding} outstanding, {args.seconds:g} s)")
    for k in ours_keys:
        c = cells[k]
        rate, lost = c.median("rate"), c.total("lost")
        every = all(r.rate >= TARGET_RATE for r in c.results)
        print(f"  {k:<16} {fmt_int(rate)}/s, {lost} lost, {c.total('invalid')} invalid: "
              f"{met(rate >= TARGET_RATE and lost == 0)}"
              + ("" if args.rounds == 1 else
                 f" (every run >= {TARGET_RATE:,}: {'yes' if every else 'no'})")
              + (" [the event store's worst case, not the issue's workload]"
                 if k == DISTINCT else ""))
    print("\nevents (database read after stop; the requests answered include the start-up "
          "checks):")
    for key, (rows_n, n, counted, dropped, answered) in events.items():
        verdict = ("every answer recorded" if n == answered and not dropped
                   else f"{answered - n:+,} answers not recorded")
        print(f"  {key:<16} {n:,} 'ntp' events committed in {rows_n:,} rows "
              f"({n / max(rows_n, 1):.1f} per row), {counted:,} rate-limit counts, "
              f"{dropped:,} reported dropped (queue overflow), for {answered:,} requests "
              f"answered: {verdict}")
    print("  (identical events within a minute fold into one row; an NTP event's details "
          "are the client's clock to the millisecond and its offset, so requests sent "
          "within the same millisecond fold, unless the loader spaces them 1 ms apart as "
          f"for {DISTINCT})")
    print("\nnotes: the loader and the server under test share the cores (see the CPU "
          "rows), so these are this machine's figures, not a server's ceiling. ours is "
          "one asyncio thread (ours+events: plus the event store's writer thread; "
          "'main thread' is the event loop); chronyd is single-threaded C. Latency is "
          "from the send to the read of the batch holding the reply, with "
          f"{args.outstanding} in flight: roughly outstanding / rate.")
    print(f"\n{machine}")


if __name__ == "__main__":
    main()

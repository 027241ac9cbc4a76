"""``hs100local serve``'s web dashboard under wrk: requests/s and latency per endpoint.

Run by hand (not part of the test suite), with the interpreter hs100local is
installed in::

    python tests/bench/bench_web.py [--duration 5] [--connections 16] [--rounds 2]  # ~2 min

Needs wrk, the HTTP load generator (Debian package ``wrk``:
``apt-get install -y wrk``). Only loopback traffic: the emulated plugs listen on
127.0.0.2, .3, ... (``tests/loopback_plugs.py``), every server on 127.0.0.1 port 0,
and ``serve`` runs with ``dns = false``, ``ntp = false``, ``time-interval = 0`` and
``discover-interval = 0`` (discovery would broadcast on the machine's interfaces).

Set-up, in a temporary directory: ``--plugs`` emulated plugs (one an ``hs300``
strip) recorded in an inventory as discovery would, and ``--events`` events
(kinds dns/ntp/tls from those plugs' addresses, attributed to them, at random
times over the last 7 days) written through ``EventStore``, so every page reads
and renders real rows. Then:

1. **Memory.** ``python -m hs100local serve --config FILE --no-web`` (the same
   config, the dashboard left out) is started, its VmRSS read at its ready line
   and ``--settle`` seconds later, and stopped. Then the same config with the
   ``[web]`` table (``listen = "127.0.0.1:0"``): VmRSS at the ready line, after the
   first check (``GET /`` for the CSRF token, then ``POST /api/check`` with
   ``X-CSRF-Token``, which returns once every plug was asked), and after the load
   runs.
2. **One at a time.** Each row below, and ``/chart.svg?range=7d``, gets 7
   sequential GETs on one keep-alive connection (``http.client``): the median wall
   time is the latency of a lone browser, and checks every answer is a 200.
3. **Requests/s**, wrk with the same settings for every row
   (``-t THREADS -c CONNECTIONS -d DURATION --timeout 10s``, keep-alive, a Lua
   ``done()`` hook that prints the exact p50/p99), ``--rounds`` runs per row
   interleaved with rotating order, after an untimed 1 s warm-up of each row:

   * the dashboard's ``/api/plugs``, ``/metrics``, ``/api/events?limit=100``,
     ``/chart.svg?range=24h``, ``/`` (the whole page: plugs, recent events,
     firmware warnings, the 24 h chart) and ``/static/dashboard.css``;
   * peer ``HttpServer static``: our transport (``hs100local.web.server.HttpServer``)
     in its own python process with a trivial handler answering the bytes of
     ``dashboard.css`` (read once with importlib.resources), like the dashboard's
     static route but with no routing, no auth and no file read;
   * peer ``stdlib static``: ``http.server.ThreadingHTTPServer`` in its own python
     process (``protocol_version = "HTTP/1.1"``, keep-alive, TCP_NODELAY, no
     request log) answering the same bytes.

   Per run: requests/s, p50/p99 latency (wrk's, in its own clock), non-2xx and
   socket errors, bytes per response, the server's CPU (utime + stime of all its
   threads, % of one core) and wrk's. After each run the next waits until the
   server is idle (at most one 10 ms CPU tick in 0.2 s): the dashboard finishes
   requests whose client has gone, and that backlog would otherwise be billed to
   the next row; how long it took is the ``drain`` column.

Prints the machine (CPU model, versions of python, sqlite and wrk, the commit),
then markdown tables, the ratios (HttpServer static / stdlib static: transport
against transport; every dashboard row / HttpServer static and / serve's own
static route: what the app's work costs) and anything but event lines that
``serve`` wrote to stderr. All processes are stopped on every exit path, Ctrl-C
and SIGTERM included. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import re
import resource
import selectors
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import (  # this folder (on sys.path)
    CLK_TCK,
    code_version,
    cpu_model,
    default_signals,
    mb,
    proc_cpu,
    proc_status,
    run_with_summary,
    start_server,
    stop,
    version,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOST = "127.0.0.1"
WEEK = 7 * 86400.0
CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
DASHBOARD_PORT = re.compile(r"dashboard on http://127\.0\.0\.1:(\d+)/")
EVENT_LINE = re.compile(r"^\S+ \S+ hs100local\.(tls|dns|ntp|time|firmware|discovery): "
                        r"(\d+\.\d+\.\d+\.\d+|-) ")
EXPECTED_LOG = ("creating the cloud listener's certificate",)

#: the dashboard's rows (label, path), in the order of the report
DASHBOARD = [
    ("/api/plugs", "/api/plugs"),
    ("/metrics", "/metrics"),
    ("/api/events?limit=100", "/api/events?limit=100"),
    ("/chart.svg?range=24h", "/chart.svg?range=24h"),
    ("/ (full page)", "/"),
    ("/static/dashboard.css", "/static/dashboard.css"),
]
OURS_STATIC, STDLIB_STATIC = "HttpServer static (peer)", "stdlib static (peer)"
SERVE_STATIC = "/static/dashboard.css"
ALONE = 7  # sequential GETs per row before the load

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50.0), latency:percentile(99.0),
    latency.mean, latency.max))
end
"""

STATIC_BODY = ('from importlib import resources\n'
               'BODY = resources.files("hs100local.web").joinpath('
               '"static", "dashboard.css").read_bytes()\n')

STDLIB_SERVER = STATIC_BODY + r"""
import http.server

class Static(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # head and body are two writes: no Nagle wait between

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/css; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # wrk hanging up at the end of a run (broken pipe): no traceback

server = Server(("127.0.0.1", 0), Static)
print(f"stdlib ThreadingHTTPServer on 127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
"""

OUR_SERVER = STATIC_BODY + r"""
import asyncio
from hs100local.web.http import Response
from hs100local.web.server import HttpServer

async def handler(request):
    response = Response(200, BODY, "text/css; charset=utf-8")
    response.headers.append(("Cache-Control", "no-cache"))
    return response

async def main():
    server = await HttpServer([("127.0.0.1", 0)], handler).start()
    print(f"HttpServer static on 127.0.0.1:{server.bound[0][1]}", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


# ------------------------------------------------------------------ /proc


def wait_idle(pid: int, timeout: float = 60.0) -> float:
    """Wait until the process uses at most one clock tick of CPU in 0.2 s (<= 5 % of a
    core): requests whose client has gone may still be running. The seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = proc_cpu(pid)[0]
        time.sleep(0.2)
        if proc_cpu(pid)[0] - before <= 1.0 / CLK_TCK + 1e-9:
            break
    return time.monotonic() - started


def ms(us: float) -> str:
    return "-" if us != us else f"{us / 1e3:.1f} ms" if us >= 9950 else f"{us / 1e3:.2f} ms"


# ------------------------------------------------------------------ set-up


def make_lab(db: Path, n_plugs: int, n_events: int,
             rng: random.Random) -> tuple[Any, list[str]]:
    """``n_plugs`` emulated plugs (the second one an hs300 strip) in the inventory, and
    ``n_events`` dns/ntp/tls events from their addresses over the last 7 days; the
    LoopbackPlugs and the models."""
    from loopback_plugs import LoopbackPlugs  # tests/ (servers.py puts it on sys.path)

    models = ["hs110", "hs300", "hs100", "hs105", "kp303", "hs110v2", "hs200"]
    used = [models[i % len(models)] for i in range(n_plugs)]
    lab = LoopbackPlugs(db)
    try:
        for i, model in enumerate(used):
            lab.add(f"Plug {i + 1:02d}", model=model)
        fill_events(db, lab, n_events, rng)
    except BaseException:
        lab.close()
        raise
    return lab, used


def fill_events(db: Path, lab: Any, n_events: int, rng: random.Random) -> None:
    """Events shaped like serve's (the dns, ntp and tls services' details), each from a
    plug's address and attributed to its MAC, as serve's LoggingSink records them."""
    from hs100local.events import EventStore

    plugs = [(lab.hosts[a], lab.macs[a]) for a in lab.hosts]
    names = ["devs.tplinkcloud.com", "n-devs.tplinkcloud.com", "api.tplinkcloud.com",
             "euw1-api.tplinkra.com", "use1-devs.tplinkcloud.com", "aps1-api.tplinkcloud.com"]
    ja3 = ("771,49195-49199-49196-49200-52393-52392-49161-49171-49162-49172-156-157-47-53-10,"
           "0-23-65281-10-11-35-16-5-13-18-51-45-43-27,29-23-24,0")
    now = time.time()
    store = EventStore(db)
    try:
        for _ in range(n_events):
            host, mac = rng.choice(plugs)
            at = now - rng.random() * WEEK
            kind = rng.choices(("dns", "ntp", "tls"), (5, 3, 2))[0]
            if kind == "dns":
                details = {"name": rng.choice(names), "type": rng.choice(("A", "AAAA")),
                           "action": "sinkhole", "rule": "tplinkcloud.com"}
            elif kind == "ntp":
                offset = rng.randint(-3000, 3000)
                details = {"version": 3, "mode": 3, "stratum": 2, "offset_ms": offset,
                           "client_time": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                        time.gmtime(at + offset / 1e3))
                           + f".{rng.randint(0, 999):03d}Z"}
            else:
                details = {"sni": rng.choice(names[:3]), "alpn": None, "version": "TLS 1.2",
                           "record_version": "TLS 1.0", "client_version": "TLS 1.2",
                           "supported_versions": None, "ciphers": 15, "ja3": ja3,
                           "ja3_hash": "2f5a1c3e9f0e4b7d8c6a5b4e3d2c1b0a",
                           "ja4": "t12d1514h1_8daaf6152771_e5627efa2ab1",
                           "local_port": rng.choice((443, 50443)), "outcome": "unknown_ca"}
            store.record(kind, host, details, at=at, plug=mac)
        store.flush(120)
    finally:
        store.close()


def event_rows(db: Path) -> tuple[int, int]:
    """(rows, sum of counts) of the events table."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows, total = conn.execute("SELECT COUNT(*), SUM(count) FROM events").fetchone()
    return int(rows), int(total or 0)


def write_config(path: Path, db: Path) -> Path:
    path.write_text(f"""dns = false
ntp = false
cloud = ["127.0.0.1:0"]
db = "{db}"
time-interval = 0
discover-interval = 0

[web]
listen = "127.0.0.1:0"
""")
    return path


@dataclass
class Serve:
    """A ``serve`` subprocess; stderr goes to a file (scanned at the end)."""

    popen: subprocess.Popen[str]
    log: Path
    line: str
    rss_ready: dict[str, int]
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


def start_serve(config: Path, log: Path, procs: list[subprocess.Popen], *extra: str) -> Serve:
    with open(log, "w") as err:
        popen = subprocess.Popen(
            [sys.executable, "-u", "-m", "hs100local", "serve", "--config", str(config), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
            preexec_fn=default_signals)
    procs.append(popen)
    assert popen.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(popen.stdout, selectors.EVENT_READ)
        if not sel.select(90):
            raise SystemExit(f"serve {' '.join(extra)}: no 'serving:' line within 90 s\n"
                             + log.read_text()[-2000:])
    line = popen.stdout.readline()
    if not line.startswith("serving: "):
        popen.wait(10)
        raise SystemExit(f"serve exited ({popen.returncode}) before serving: {line!r}\n"
                         + log.read_text()[-2000:])
    serve = Serve(popen, log, line.strip(), proc_status(popen.pid))
    match = DASHBOARD_PORT.search(line)
    if match:
        serve.port = int(match.group(1))
    return serve


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def first_check(port: int) -> tuple[float, dict]:
    """GET / for the CSRF token, then POST /api/check (returns once every plug was
    asked); its wall time and the JSON it answered."""
    status, body = request(port, "GET", "/")
    match = CSRF.search(body.decode("utf-8", "replace"))
    if status != 200 or match is None:
        raise SystemExit(f"GET / answered {status} without a CSRF token: {body[:300]!r}")
    started = time.monotonic()
    status, body = request(port, "POST", "/api/check", {"X-CSRF-Token": match.group(1)}, 60)
    took = time.monotonic() - started
    if status != 200:
        raise SystemExit(f"POST /api/check answered {status}: {body[:300]!r}")
    return took, json.loads(body)


def scan_log(log: Path) -> tuple[int, list[str]]:
    """Event lines, and the lines that are neither those nor expected notices."""
    events, odd = 0, []
    for line in log.read_text(errors="replace").splitlines():
        if any(e in line for e in EXPECTED_LOG) or not line.strip():
            continue
        if EVENT_LINE.match(line):
            events += 1
        else:
            odd.append(line)
    return events, odd


@dataclass
class Memory:
    """/proc/PID/status of the two serves at the points measured, and what they logged."""

    noweb_ready: dict[str, int]
    noweb_settled: dict[str, int]
    web_ready: dict[str, int] = field(default_factory=dict)
    web_checked: dict[str, int] = field(default_factory=dict)
    web_after: dict[str, int] = field(default_factory=dict)
    check_s: float = float("nan")
    checked: tuple[int, int, int] = (0, 0, 0)  # plugs checked, reachable, listed
    logs: dict[str, tuple[int | None, int, list[str]]] = field(default_factory=dict)


# ------------------------------------------------------------------ wrk


@dataclass
class Target:
    key: str
    port: int
    path: str
    pid: int
    group: str  # "dashboard", "peer" or "probe" (no wrk run)
    size: int = 0  # body bytes of one response
    alone: float = float("nan")  # median seconds of one GET at a time (keep-alive)


@dataclass
class Run:
    rate: float
    requests: int
    p50_us: float
    p99_us: float
    mean_us: float
    max_us: float
    bytes_per_request: float
    errors: dict[str, int]
    server_cpu: float  # % of one core
    wrk_cpu: float
    drain: float  # seconds the server kept working after wrk ended


@dataclass
class Results:
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def median(self, key: str, attr: str) -> float:
        values = [getattr(r, attr) for r in self.runs.get(key, [])]
        return statistics.median(values) if values else float("nan")


def one_at_a_time(target: Target) -> tuple[int, float]:
    """Body bytes and the median wall time of ALONE sequential GETs (keep-alive)."""
    conn = http.client.HTTPConnection(HOST, target.port, timeout=30)
    times, size = [], 0
    try:
        for _ in range(ALONE):
            started = time.perf_counter()
            conn.request("GET", target.path)
            response = conn.getresponse()
            body = response.read()
            times.append(time.perf_counter() - started)
            if response.status != 200:
                raise SystemExit(f"{target.key}: {response.status} {body[:300]!r}")
            size = len(body)
    finally:
        conn.close()
    return size, statistics.median(times)


def run_wrk(wrk: str, lua: Path, target: Target, args: argparse.Namespace,
            duration: float) -> Run:
    url = f"http://{HOST}:{target.port}{target.path}"
    cmd = [wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", f"{duration:g}s",
           "--timeout", "10s", "--latency", "-s", str(lua), url]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, t0 = proc_cpu(target.pid)[0], time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=duration + 60, check=False)
    wall = time.monotonic() - t0
    server_cpu = proc_cpu(target.pid)[0] - cpu0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    drain = wait_idle(target.pid)  # before the next run: nothing left over
    match = re.search(r"^BENCH (.*)$", done.stdout, re.M)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    (requests, duration_us, nbytes, connect, read, write, status, timeout,
     p50, p99, mean, worst) = (float(x) for x in match.group(1).split())
    errors = {name: int(n) for name, n in (("connect", connect), ("read", read),
                                           ("write", write), ("non-2xx", status),
                                           ("timeout", timeout)) if n}
    seconds = duration_us / 1e6
    return Run(requests / seconds, int(requests), p50, p99, mean, worst,
               nbytes / requests if requests else float("nan"), errors,
               100 * server_cpu / wall, 100 * wrk_cpu / wall, drain)


# ------------------------------------------------------------------ the run


def run(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen],
        report: list[str]) -> None:
    wrk = shutil.which("wrk")
    assert wrk is not None
    lua = tmp / "report.lua"
    lua.write_text(WRK_LUA)
    db = tmp / "hs100local.db"
    rng = random.Random(1)

    started = time.monotonic()
    lab, models = make_lab(db, args.plugs, args.events, rng)
    try:
        rows, total = event_rows(db)
        print(f"lab: {args.plugs} emulated plugs on 127.0.0.2-{args.plugs + 1} "
              f"({', '.join(sorted(set(models)))}), "
              f"{total:,} events in {rows:,} rows over 7 days, database "
              f"{db.stat().st_size / 1e6:.1f} MB; {time.monotonic() - started:.1f} s",
              flush=True)
        measure(args, tmp, db, wrk, lua, lab, procs, report)
    finally:
        lab.close()


def measure(args: argparse.Namespace, tmp: Path, db: Path, wrk: str, lua: Path,
            lab: Any, procs: list[subprocess.Popen], report: list[str]) -> None:
    config = write_config(tmp / "serve.toml", db)

    # 1. memory: serve --no-web (same config), then serve with the dashboard
    noweb = start_serve(config, tmp / "serve-noweb.log", procs, "--no-web")
    time.sleep(args.settle)
    mem = Memory(noweb.rss_ready, proc_status(noweb.pid))
    stop(noweb.popen, 15)
    print(f"serve --no-web: VmRSS {mb(noweb.rss_ready['VmRSS'])} at ready, "
          f"{mb(mem.noweb_settled['VmRSS'])} {args.settle:g} s later; "
          f"exit {noweb.popen.returncode}", flush=True)

    web = start_serve(config, tmp / "serve-web.log", procs)
    if web.port is None:
        raise SystemExit(f"no dashboard in serve's ready line: {web.line}")
    print(f"serve: {web.line}", flush=True)
    mem.web_ready = web.rss_ready
    mem.check_s, payload = first_check(web.port)
    mem.web_checked = proc_status(web.pid)
    plugs = payload.get("plugs", [])
    mem.checked = (sum(1 for p in plugs if p.get("checked")),
                   sum(1 for p in plugs if p.get("reachable")), len(plugs))
    print(f"first check: POST /api/check took {mem.check_s:.2f} s; {mem.checked[0]}/"
          f"{len(plugs)} plugs checked, {mem.checked[1]} reachable; "
          f"VmRSS {mb(mem.web_checked['VmRSS'])}", flush=True)

    # 2. the peers, each in its own process
    stdlib_proc, stdlib_port = start_server([sys.executable, "-c", STDLIB_SERVER], procs=procs)
    ours_proc, ours_port = start_server([sys.executable, "-c", OUR_SERVER], procs=procs)
    targets = [Target(key, web.port, path, web.pid, "dashboard") for key, path in DASHBOARD]
    targets += [Target(OURS_STATIC, ours_port, "/dashboard.css", ours_proc.pid, "peer"),
                Target(STDLIB_STATIC, stdlib_port, "/dashboard.css", stdlib_proc.pid, "peer")]
    print(f"\nresponses, before the load: {ALONE} GETs one at a time on one connection "
          "(median wall time)")
    extra = Target("/chart.svg?range=7d (no wrk)", web.port, "/chart.svg?range=7d", web.pid,
                   "probe")
    for target in [*targets, extra]:
        target.size, target.alone = one_at_a_time(target)
        print(f"  {target.key:<30} {target.size:>8,} bytes  {target.alone * 1e3:>7.2f} ms",
              flush=True)

    print(f"\nwarm-up: 1 s of wrk per row; then {args.rounds} round(s) of {args.duration:g} s "
          f"per row (wrk -t{args.threads} -c{args.connections}, keep-alive, rotating order)")
    for target in targets:
        run_wrk(wrk, lua, target, args, 1)
    print(f"  {'row':<26} {'req/s':>9} {'p50':>9} {'p99':>9} {'max':>9} {'B/resp':>7} "
          f"{'server CPU':>10} {'wrk CPU':>8} {'drain':>6}  errors")
    results = Results({t.key: [] for t in targets})
    for rnd in range(args.rounds):
        k = rnd % len(targets)
        for target in targets[k:] + targets[:k]:
            r = run_wrk(wrk, lua, target, args, args.duration)
            results.runs[target.key].append(r)
            print(f"  {target.key:<26} {r.rate:>9,.0f} {ms(r.p50_us):>9} {ms(r.p99_us):>9} "
                  f"{ms(r.max_us):>9} {r.bytes_per_request:>7,.0f} {r.server_cpu:>9.0f}% "
                  f"{r.wrk_cpu:>7.0f}% {r.drain:>5.1f}s  {r.errors or ''}", flush=True)
    mem.web_after = proc_status(web.pid)
    stop(web.popen, 15)
    for name, serve in (("serve", web), ("serve --no-web", noweb)):
        mem.logs[name] = (serve.popen.returncode, *scan_log(serve.log))
    summary(args, report, targets, [extra], results, mem)


def summary(args: argparse.Namespace, report: list[str], targets: list[Target],
            probes: list[Target], results: Results, mem: Memory) -> None:
    p = report.append
    med = f"median of {args.rounds}" if args.rounds > 1 else "1 run"
    p(f"## Requests/s (wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
      f"keep-alive, {med})")
    p("")
    p("| row | req/s | runs | p50 | p99 | alone | body bytes | server CPU | wrk CPU | drain "
      "| / HttpServer static | / serve's static | errors |")
    p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ours = results.median(OURS_STATIC, "rate")
    served = results.median(SERVE_STATIC, "rate")
    for t in targets:
        rs = results.runs[t.key]
        rate = results.median(t.key, "rate")
        errors: dict[str, int] = {}
        for r in rs:
            for name, n in r.errors.items():
                errors[name] = errors.get(name, 0) + n
        vs_serve = f"{rate / served:.3f}" if t.group == "dashboard" else "-"
        p(f"| {t.key} | **{rate:,.0f}** | {min(r.rate for r in rs):,.0f}-"
          f"{max(r.rate for r in rs):,.0f} | {ms(results.median(t.key, 'p50_us'))} | "
          f"{ms(results.median(t.key, 'p99_us'))} | {ms(t.alone * 1e6)} | {t.size:,} | "
          f"{results.median(t.key, 'server_cpu'):.0f} % | "
          f"{results.median(t.key, 'wrk_cpu'):.0f} % | "
          f"{results.median(t.key, 'drain'):.1f} s | {rate / ours:.3f} | {vs_serve} | "
          f"{errors or 'none'} |")
    for t in probes:
        p(f"| {t.key} | - | - | - | - | {ms(t.alone * 1e6)} | {t.size:,} | - | - | - | - | - "
          "| - |")
    p("")
    p(f"* `alone`: median of {ALONE} GETs one at a time on one keep-alive connection, "
      "before the load. `drain`: how long the server kept working after wrk stopped "
      "(requests whose client had gone; 0.2 s is the floor of the measurement).")
    stdlib = results.median(STDLIB_STATIC, "rate")
    p(f"* transport vs transport: HttpServer static / stdlib ThreadingHTTPServer static = "
      f"**{ours / stdlib:.2f}** ({ours:,.0f} vs {stdlib:,.0f} req/s, same body bytes).")
    p(f"* serve's own `/static/dashboard.css` / HttpServer static = **{served / ours:.2f}** "
      "(routing, the Host check, the CSP header, the file read per request).")
    costs = []
    for t in targets:
        if t.group != "dashboard" or t.key == SERVE_STATIC:
            continue
        rate = results.median(t.key, "rate")
        costs.append(f"{t.key} {1e3 / rate - 1e3 / served:.2f} ms")
    p("* time per request at saturation above serve's static route (1/rate - 1/rate of "
      f"`{SERVE_STATIC}`): " + ", ".join(costs) + ".")
    p("")
    p("## serve's memory (VmRSS)")
    p("")
    p("| serve | at ready line | after the first check / settle | after the load | "
      "RssAnon (last) | threads (last) |")
    p("| --- | --- | --- | --- | --- | --- |")
    settled, checked, after = mem.noweb_settled, mem.web_checked, mem.web_after
    p(f"| `--no-web` (same config) | {mb(mem.noweb_ready['VmRSS'])} | "
      f"{mb(settled['VmRSS'])} ({args.settle:g} s later) | - | "
      f"{mb(settled.get('RssAnon', 0))} | {settled.get('Threads', 0)} |")
    p(f"| with `[web]` | {mb(mem.web_ready['VmRSS'])} | {mb(checked['VmRSS'])} | "
      f"{mb(after['VmRSS'])} | {mb(after.get('RssAnon', 0))} | {after.get('Threads', 0)} |")
    p("")
    asked, reachable, n = mem.checked
    p(f"* dashboard on, idle after the first check - dashboard off: "
      f"**{(checked['VmRSS'] - settled['VmRSS']) / 1024:+.1f} MB** "
      f"({checked['VmRSS'] / settled['VmRSS']:.2f}x); after the load runs "
      f"{(after['VmRSS'] - settled['VmRSS']) / 1024:+.1f} MB.")
    p(f"* first check (`POST /api/check`): {mem.check_s:.2f} s, {asked}/{n} plugs checked, "
      f"{reachable} reachable.")
    for name, (code, events, odd) in mem.logs.items():
        p(f"* {name}: exit code {code}; stderr {events:,} event lines, "
          f"{len(odd)} other" + (":" if odd else "."))
        for line in odd[:10]:
            p(f"    `{line[:300]}`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of each wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=16,
                        help="connections wrk keeps open (default 16)")
    parser.add_argument("--threads", type=int, default=2,
                        help="wrk threads (default 2, at most --connections)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per row, interleaved with rotating order (default 2)")
    parser.add_argument("--plugs", type=int, default=10,
                        help="emulated plugs, on 127.0.0.2 and up (default 10)")
    parser.add_argument("--events", type=int, default=20_000,
                        help="events over the last 7 days in the store (default 20000)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds after its ready line to read the --no-web serve's RSS "
                             "(default 2)")
    args = parser.parse_args()
    args.threads = min(args.threads, args.connections)
    if (args.duration < 1 or not 1 <= args.connections <= 60 or args.threads < 1
            or args.rounds < 1 or not 2 <= args.plugs <= 200 or args.events < 0
            or args.settle < 0):
        parser.error("bad arguments (--connections at most 60: the dashboard's HttpServer "
                     "answers 503 beyond its 64 connections; --duration at least 1 s)")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: install it with `apt-get install -y wrk` "
                         "(Debian package wrk)")
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    wrk_version = version(["wrk", "--version"], r"wrk\s+(\S+)")
    machine = (
        f"machine: {os.cpu_count()} cores ({cpu_model()}), kernel {platform.release()}; "
        f"python {platform.python_version()} (sqlite {sqlite3.sqlite_version}); "
        f"wrk {wrk_version}; {code_version()}; "
        f"load average (1 min) {os.getloadavg()[0]:.2f} at start")
    run_with_summary(run, args, name="web", machine=machine, stop_wait=15.0)


if __name__ == "__main__":
    main()

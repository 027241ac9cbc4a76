"""Per-query latency of the asyncio library versus a bare asyncio round trip.

Run by hand (not part of the test suite)::

    python tests/bench/bench_queries.py [--queries 1000] [--reps 5] [--warmup 50]

Two servers run in separate processes (client and server never share an event
loop or a GIL):

* the emulator, ``hs100local emulate --model hs110 --port 0``;
* ``echo_server.py``: a bare asyncio server that answers every request frame with
  one fixed, pre-encoded frame — the emulator's real ``get_sysinfo`` reply,
  fetched once at start, so both servers send the same bytes.

Each measurement opens one connection, warms up, then times ``--queries``
sequential ``get_sysinfo`` round trips over it. Headline rows (as specified):

* bare echo        — ``asyncio.open_connection`` client writing the request frame
  and ``readexactly(4 + N)`` (no encryption, no JSON) against the echo server;
* TcpTransport     — ``TcpTransport.query({"system": {"get_sysinfo": {}}})`` and
* Plug.sysinfo     — ``Plug(...).sysinfo()`` (adds the ops driver and parsing
  into ``SysInfo``), both against the emulator.

The ratio library/echo has a target of <= 2.0. Decomposition rows split that
gap into server work (the bare client against the emulator) and client work (the
library against the echo server, which sends a valid reply). Every measurement is
repeated ``--reps`` times, interleaved with rotating order; medians are reported.
No assertions, no sleeps, nothing pinned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from servers import start_server, stop_server

from hs100local.device import Plug
from hs100local.protocol import (
    HEADER_SIZE,
    build_request,
    decrypt,
    loads,
    method_result,
    parse_header,
    request_bytes_tcp,
)
from hs100local.transport import TcpTransport

BINDIR = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
SYSINFO = build_request("system", "get_sysinfo")


# ------------------------------------------------------------------ servers


def fetch_reply_frame(port: int, request_frame: bytes) -> bytes:
    """One get_sysinfo round trip on a plain socket: the whole reply frame, as sent."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(request_frame)
        header = sock.recv(HEADER_SIZE, socket.MSG_WAITALL)
        length = parse_header(header)
        body = sock.recv(length, socket.MSG_WAITALL)
    if len(body) != length:
        raise SystemExit(f"short reply from the emulator ({len(body)} of {length} bytes)")
    method_result(loads(decrypt(body)), "system", "get_sysinfo")  # a real, error-free reply
    return header + body


# ------------------------------------------------------------------ clients
# Each returns (wall, cpu, same_cpu): mean seconds per query over ``n`` timed round
# trips on one connection, after ``warmup`` untimed ones, as wall time and as this
# (client) process's CPU time; and whether client and server ran on the same CPU
# just before and just after the timed loop (None where /proc is unavailable).
# Connecting is never timed.

Sample = tuple[float, float, bool | None]


def on_cpu(pid: int | str) -> str | None:
    """The CPU ``pid`` last ran on (field 39 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[36]
    except (OSError, IndexError):
        return None


class Placement:
    """Samples whether the client and the server share a CPU; 2 vCPUs make this bimodal."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.same: list[bool] = []
        self.known = True

    def sample(self) -> None:
        mine, theirs = on_cpu("self"), on_cpu(self.server_pid)
        self.known = self.known and mine is not None and theirs is not None
        self.same.append(mine == theirs)

    def result(self) -> bool | None:
        return all(self.same) if self.known else None


async def bare_client(
    port: int, server_pid: int, request: bytes, reply_size: int, n: int, warmup: int
) -> Sample:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    where = Placement(server_pid)
    try:
        for _ in range(warmup):
            writer.write(request)
            await writer.drain()
            await reader.readexactly(reply_size)
        where.sample()
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            writer.write(request)
            await writer.drain()
            reply = await reader.readexactly(reply_size)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        where.sample()
    finally:
        writer.close()
        await writer.wait_closed()
    if int.from_bytes(reply[:HEADER_SIZE], "big") != reply_size - HEADER_SIZE:
        raise SystemExit("bare client out of step: reply size changed during the run")
    return elapsed / n, cpu / n, where.result()


async def transport_client(port: int, server_pid: int, n: int, warmup: int) -> Sample:
    where = Placement(server_pid)
    async with TcpTransport(HOST, port) as transport:
        for _ in range(warmup):
            await transport.query(SYSINFO)
        where.sample()
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await transport.query(SYSINFO)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        where.sample()
    return elapsed / n, cpu / n, where.result()


async def plug_client(port: int, server_pid: int, n: int, warmup: int) -> Sample:
    where = Placement(server_pid)
    async with Plug(HOST, port) as plug:
        for _ in range(warmup):
            await plug.sysinfo()
        where.sample()
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await plug.sysinfo()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        where.sample()
    return elapsed / n, cpu / n, where.result()


# -------------------------------------------------------------------- main


async def measure(
    args: argparse.Namespace,
    emu: tuple[int, int],
    echo: tuple[int, int],
    request: bytes,
    reply_size: int,
) -> dict[str, list[Sample]]:
    """Run every case ``args.reps`` times, interleaved; ``emu``/``echo`` are (port, pid)."""
    n, warmup = args.queries, args.warmup
    cases: dict[str, Callable[[], Awaitable[Sample]]] = {
        # headline
        "bare echo": lambda: bare_client(*echo, request, reply_size, n, warmup),
        "TcpTransport -> emulator": lambda: transport_client(*emu, n, warmup),
        "Plug.sysinfo -> emulator": lambda: plug_client(*emu, n, warmup),
        # decomposition
        "bare -> emulator": lambda: bare_client(*emu, request, reply_size, n, warmup),
        "TcpTransport -> echo": lambda: transport_client(*echo, n, warmup),
        "Plug.sysinfo -> echo": lambda: plug_client(*echo, n, warmup),
    }
    names = list(cases)
    results: dict[str, list[Sample]] = {name: [] for name in names}
    for rep in range(args.reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            results[name].append(await asyncio.wait_for(cases[name](), 60))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1000, help="timed queries per run")
    parser.add_argument("--reps", type=int, default=5, help="runs per measurement")
    parser.add_argument("--warmup", type=int, default=50, help="untimed queries per run")
    args = parser.parse_args()

    # A shell starts background jobs with SIGINT ignored, and children inherit that, so
    # the servers would not stop on SIGINT; a handled signal is reset to default on exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    request = request_bytes_tcp(SYSINFO)  # the very frame TcpTransport/Plug send
    procs: list[subprocess.Popen[str]] = []
    try:
        emulator, emu_port = start_server(
            [str(BINDIR / "hs100local"), "emulate", "--model", "hs110", "--port", "0"]
        )
        procs.append(emulator)
        reply = fetch_reply_frame(emu_port, request)
        with tempfile.TemporaryDirectory(prefix="hs100local-bench-") as tmp:
            reply_file = Path(tmp, "reply.bin")
            reply_file.write_bytes(reply)
            echo_proc, echo_port = start_server(
                [sys.executable, str(HERE / "echo_server.py"), str(reply_file), "--port", "0"]
            )
            procs.append(echo_proc)
        print(f"python {sys.version.split()[0]}; emulator hs110 on {HOST}:{emu_port}, "
              f"echo server on {HOST}:{echo_port} (separate processes)")
        print(f"request frame {len(request)} B, reply frame {len(reply)} B; "
              f"{args.reps} x {args.queries} sequential get_sysinfo per row "
              f"(+{args.warmup} warm-up), interleaved")
        load0 = os.getloadavg()[0]
        results = asyncio.run(
            measure(args, (emu_port, emulator.pid), (echo_port, echo_proc.pid), request, len(reply))
        )
        print(f"load average (1 min) {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; "
              "other busy processes skew these figures")
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                stop_server(proc)

    med = {name: statistics.median(w for w, _c, _s in v) * 1e6 for name, v in results.items()}
    cpu = {name: statistics.median(c for _w, c, _s in v) * 1e6 for name, v in results.items()}
    print(f"\n{'per query (µs)':<26} {'median':>8} {'min':>8} {'max':>8} {'queries/s':>10}"
          f" {'client CPU':>11} {'same CPU':>9}")
    for i, (name, samples) in enumerate(results.items()):
        if i == 3:
            print("  decomposition:")
        walls = [w * 1e6 for w, _c, _s in samples]
        flags = [same for _w, _c, same in samples]
        same = "?" if None in flags else f"{sum(flags)}/{len(flags)}"
        print(f"{name:<26} {med[name]:8.1f} {min(walls):8.1f} {max(walls):8.1f} "
              f"{1e6 / med[name]:10.0f} {cpu[name]:11.1f} {same:>9}")

    best = {name: min(w for w, _c, _s in v) for name, v in results.items()}
    echo = med["bare echo"]
    print()
    for name in ("TcpTransport -> emulator", "Plug.sysinfo -> emulator"):
        ratio = med[name] / echo
        print(f"ratio {name} / bare echo: {ratio:.2f}  "
              f"(target <= 2.0: {'met' if ratio <= 2.0 else 'NOT met'}); "
              f"ratio of the best runs: {best[name] / best['bare echo']:.2f}")

    def delta(a: str, b: str) -> str:
        return f"wall {med[a] - med[b]:6.1f} µs, client CPU {cpu[a] - cpu[b]:6.1f} µs"

    print(f"\nsame CPU: runs in which client and server ran on one CPU before and after the "
          f"timed loop\n({os.cpu_count()} CPUs here). The round trip is bimodal with placement, "
          "so wall deltas between\nrows placed differently are mostly scheduling, not code.")
    print("\nwhere the time goes (differences of medians):")
    print(f"  emulator's work per request  (bare -> emulator  - bare echo):  "
          f"wall {med['bare -> emulator'] - echo:6.1f} µs")
    print(f"  TcpTransport client overhead (TcpTransport -> echo - bare echo): "
          f"{delta('TcpTransport -> echo', 'bare echo')}")
    print(f"  ops + SysInfo on top of it   (Plug.sysinfo - TcpTransport, echo): "
          f"{delta('Plug.sysinfo -> echo', 'TcpTransport -> echo')}")


if __name__ == "__main__":
    main()

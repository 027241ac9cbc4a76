"""Helpers for testing the asyncio services (DNS, NTP) from synchronous tests.

:class:`LoopThread` runs a service object (``async start()``/``async close()``,
``bound`` = [(host, port)]) on its own event loop in a thread, so that real
blocking clients (dig, dnspython, ntplib, chronyd) can talk to it while the test
waits on them. :class:`Sink` is an event sink that keeps what a service records.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any


class Sink:
    """Records ``record``/``count`` calls in memory (the EventStore interface)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []
        self.counts: dict[tuple[str, str, str | None], int] = {}

    def record(self, kind: str, client: str | None, details: dict[str, Any]) -> None:
        self.events.append((kind, client, details))

    def count(self, kind: str, key: str, n: int = 1, *, client: str | None = None) -> None:
        self.counts[(kind, key, client)] = self.counts.get((kind, key, client), 0) + n


class LoopThread:
    """A started service on a private loop in a daemon thread; ``port`` is its first."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(10)
        self.port: int = server.bound[0][1]

    def call(self, function: Any, *args: Any) -> Any:
        """Run a plain function on the service's loop (its state is not thread-safe)."""

        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` for both UDP and TCP at this moment (dnsmasq binds both)."""
    import socket

    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port


def start_dnsmasq(args: list[str], *, probe: str = "fwd.test", tries: int = 5,
                  workdir: Any = None) -> tuple[Any, int]:
    """Start Debian's dnsmasq on a free loopback port; return (process, port) once it answers.

    A free port can be taken between choosing it and dnsmasq binding it (by any
    outgoing connection on the machine), so a dnsmasq that exits before it
    answers is retried on another port instead of failing the test run.
    """
    import subprocess
    import time

    import dns.message
    import dns.query
    import prockit

    exe = prockit.find_tool("dnsmasq")
    if exe is None:
        raise RuntimeError("dnsmasq is needed (Debian dnsmasq-base; .ci/run installs it)")
    last = ""
    for _ in range(tries):
        port = free_udp_tcp_port()
        command = [exe, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
                   f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                   "--log-facility=/dev/null", "--user=root"]
        if workdir is not None:
            command.append(f"--pid-file={workdir}/dnsmasq-{port}.pid")
        proc = prockit.spawn(command + args, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                try:  # wait until it answers: a start-up race, not a sleep for luck
                    dns.query.udp(dns.message.make_query(probe, "A"), "127.0.0.1", port=port,
                                  timeout=0.2)
                    return proc, port
                except Exception:  # not answering yet
                    continue
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            last = (proc.stderr.read() if proc.stderr else "").strip()
        except BaseException:  # interrupted while waiting: never leave it behind
            prockit.stop(proc, signal.SIGKILL)
            raise
    raise RuntimeError(f"dnsmasq did not start after {tries} tries: {last}")


def stop_process(proc: Any) -> None:
    """SIGTERM, SIGKILL after 5 s; the process is reaped and its pipes closed."""
    import prockit

    prockit.stop(proc)

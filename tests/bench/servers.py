"""Start and stop the servers the benchmarks measure (shared by the bench scripts)."""

from __future__ import annotations

import re
import selectors
import signal
import subprocess
import time

READY = re.compile(r"\bon (\d+\.\d+\.\d+\.\d+):(\d+)\b")


def start_server(
    cmd: list[str], timeout: float = 15.0, *, env: dict[str, str] | None = None,
    procs: list[subprocess.Popen[str]] | None = None,
) -> tuple[subprocess.Popen[str], int]:
    """Start ``cmd`` and wait for its one ready line ``… on HOST:PORT …``; return the port.

    ``procs`` gets the process at once, so a caller's clean-up sees it even if
    waiting for the ready line fails.
    """
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                            env=env)
    if procs is not None:
        procs.append(proc)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                stop_server(proc)
                raise SystemExit(f"no ready line from {cmd} within {timeout:g} s")
            line = proc.stdout.readline()
            if not line:
                rc = proc.wait()
                raise SystemExit(f"{cmd} exited ({rc}) before printing its ready line")
            match = READY.search(line)
            if match:
                return proc, int(match.group(2))


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()

"""Start and stop the servers the benchmarks measure, and the small reporting helpers
the bench scripts share (versions, CPU model, number formats)."""

from __future__ import annotations

import platform
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# the tests' helpers (servicekit, servekit) sit one folder up
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

# Every server a bench starts gets default signal dispositions (a bench started as a
# background job of a script would otherwise pass SIGINT ignored on to its servers).
from prockit import default_signals

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
                            env=env, preexec_fn=default_signals)
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


def stop(proc: subprocess.Popen, wait: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``wait`` seconds (a server that flushes on SIGTERM
    gets the time to do so)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            print(f"  pid {proc.pid} did not stop within {wait:g} s of SIGTERM: killed")
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def version(cmd: list[str], pattern: str = r"[Vv]ersion\s+([\d.]+)") -> str:
    """The version a tool prints (``pattern``'s first group), or "?"."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                             stdin=subprocess.DEVNULL, timeout=10)
    except OSError:
        return "?"
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def fmt_int(x: float) -> str:
    return "-" if x != x else f"{x:,.0f}"


def met(ok: bool) -> str:
    return "MET" if ok else "NOT met"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` for both UDP and TCP (dnsmasq and serve bind both)."""
    from servicekit import free_udp_tcp_port  # tests/, next to this folder

    return free_udp_tcp_port(host)


def compile_loader(source: Path, workdir: Path) -> Path:
    """Compile a C load generator beside the benchmarks into ``workdir`` (no binary kept)."""
    import shutil

    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("gcc is needed to compile the loader (Debian package gcc)")
    exe = workdir / source.stem
    done = subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-o", str(exe), str(source)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"cannot compile {source.name}:\n{done.stdout}{done.stderr}")
    return exe


def run_with_summary(run: Any, args: Any, *, name: str, machine: str,
                     stop_wait: float) -> None:
    """Print ``machine``, call ``run(args, tmp, procs, report)`` in a temporary folder,
    stop every process it started (also on errors), then print the report."""
    import os
    import tempfile

    print(machine, flush=True)
    started = time.monotonic()
    procs: list[subprocess.Popen] = []
    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"hs100local-bench-{name}-") as tmp:
        try:
            run(args, Path(tmp), procs, report)
        finally:
            for popen in reversed(procs):
                stop(popen, stop_wait)
    machine += f", {os.getloadavg()[0]:.2f} at end; total {time.monotonic() - started:.0f} s"
    print("\n" + "=" * 78 + "\nSUMMARY\n" + "=" * 78 + "\n")
    print("\n".join(report))
    print(f"\n{machine}")


# ------------------------------------------------------------------ /proc and reporting

CLK_TCK = __import__("os").sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[2]


def proc_status(pid: int) -> dict[str, int]:
    """The kB figures of /proc/PID/status (VmRSS, RssAnon, ...) and Threads."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def proc_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of the whole process and of its main thread."""

    def stat(path: str) -> float:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is field 3, "state"
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    return stat(f"/proc/{pid}/stat"), stat(f"/proc/{pid}/task/{pid}/stat")


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def code_version() -> str:
    """The commit, and whether hs100local/ differs from it."""
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True,
                              check=False, stdin=subprocess.DEVNULL)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("log", "-1", "--format=%h %s") or "?"
    commit = commit if len(commit) <= 60 else commit[:57] + "..."
    state = "with uncommitted changes" if git("status", "--porcelain", "--", "hs100local") \
        else "as committed"
    return f"commit {commit}; hs100local/ {state}"

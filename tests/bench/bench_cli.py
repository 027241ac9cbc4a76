"""End-to-end CLI wall time: ``hs100local -H … on`` versus ``kasa … on``.

Run by hand (not part of the test suite)::

    python tests/bench/bench_cli.py [--runs 25]

Starts ``hs100local emulate --model hs100 --port 0`` in a separate process, then
times whole processes (fork/exec + interpreter start-up + imports + one command),
interleaving the tools run by run (rotating their order) so that drift in machine
load hits all of them alike:

* ``hs100local -H 127.0.0.1:PORT on``
* ``kasa --host 127.0.0.1 --port PORT --type plug on``  (the peer)
* ``hs100local --help``
* ``python -c pass``  (the interpreter floor, for context)

plus ``hs100local … [pyc]``: the same two hs100local commands with a private
bytecode cache (``PYTHONPYCACHEPREFIX`` = a temp dir, ``PYTHONDONTWRITEBYTECODE``
unset). An editable install keeps hs100local's sources in the repo, so where
``PYTHONDONTWRITEBYTECODE`` is set (as in some sandboxes and CI images) every run
recompiles them from source, while click, kasa and the stdlib load their
pip-installed ``.pyc`` files; the [pyc] rows show what a normal installation pays.
The cache lives outside the repo and is deleted at the end.

Every run must exit 0, or the script stops with the command's stderr. It prints
median and p90 per tool, the ratio ours/kasa (target <= 0.2) and the --help time
(target < 100 ms), then one ``python -X importtime`` run of ``hs100local -H … on``
(and, for comparison, of ``kasa … on``) with the top imports. No assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servers import start_server, stop_server

BINDIR = Path(sys.executable).parent


def run_once(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one whole process, in seconds; fail loudly on a non-zero exit."""
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        raise SystemExit(f"FAILED (exit {done.returncode}): {' '.join(cmd)}\n{stderr}")
    return elapsed


def p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10, method="inclusive")[-1]


def importtime(
    cmd: list[str], env: dict[str, str] | None = None
) -> tuple[int, list[tuple[int, int, str]]]:
    """Run ``python -X importtime <script> args``; (total µs, [(cumulative, self, name)])."""
    done = subprocess.run(
        [str(BINDIR / "python"), "-X", "importtime", *cmd],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"FAILED (exit {done.returncode}) under -X importtime: {cmd}\n"
                         f"{done.stderr[-2000:]}")
    rows = []
    total = 0
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        self_us, cum_us, indent, name = int(m[1]), int(m[2]), m[3], m[4]
        depth = (len(indent) - 1) // 2
        if depth == 0:
            total += cum_us
        rows.append((cum_us, self_us, "  " * depth + name))
    return total, rows


def print_imports(title: str, cmd: list[str], top: int, env: dict[str, str] | None = None,
                  by_self: bool = True) -> None:
    total, rows = importtime(cmd, env)
    site = sum(cum for cum, _self, name in rows if name == "site")
    print(f"\n{title}:\n  imports {total / 1000:.1f} ms in all (sum of top-level cumulative), "
          f"{(total - site) / 1000:.1f} ms without 'site' (.pth files, part of the floor)")
    print(f"  top {top} by cumulative time:")
    for cum, self_us, name in sorted(rows, key=lambda r: r[0], reverse=True)[:top]:
        print(f"    {cum / 1000:7.1f} ms cum {self_us / 1000:6.1f} ms self  {name.strip()}")
    if not by_self:
        return
    print(f"  top {top} by self time:")
    for cum, self_us, name in sorted(rows, key=lambda r: r[1], reverse=True)[:top]:
        print(f"    {self_us / 1000:7.1f} ms self {cum / 1000:6.1f} ms cum   {name.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=25, help="timed runs per tool (>= 20)")
    parser.add_argument("--top", type=int, default=5, help="imports listed per -X importtime run")
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be at least 20")

    # A shell starts background jobs with SIGINT ignored, and children inherit that, so
    # the emulator would not stop on SIGINT; a handled signal is reset to default on exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    ours_exe = str(BINDIR / "hs100local")
    kasa_exe = str(BINDIR / "kasa")
    for exe in (ours_exe, kasa_exe):
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"missing console script {exe}")

    emulator, port = start_server([ours_exe, "emulate", "--model", "hs100", "--port", "0"])
    try:
        with tempfile.TemporaryDirectory(prefix="hs100local-bench-pyc-") as pyc_dir:
            env_pyc = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            env_pyc["PYTHONPYCACHEPREFIX"] = pyc_dir
            measure(args, ours_exe, kasa_exe, port, env_pyc)
    finally:
        with contextlib.suppress(Exception):
            stop_server(emulator)


def measure(args: argparse.Namespace, ours_exe: str, kasa_exe: str, port: int,
            env_pyc: dict[str, str]) -> None:
    on = [ours_exe, "-H", f"127.0.0.1:{port}", "on"]
    kasa_on = [kasa_exe, "--host", "127.0.0.1", "--port", str(port), "--type", "plug", "on"]
    helpcmd = [ours_exe, "--help"]
    tools: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "hs100local on": (on, None),
        "kasa on": (kasa_on, None),
        "hs100local --help": (helpcmd, None),
        "python -c pass": ([str(BINDIR / "python"), "-c", "pass"], None),
        "hs100local on [pyc]": (on, env_pyc),
        "hs100local --help [pyc]": (helpcmd, env_pyc),
    }
    names = list(tools)
    dont_write = os.environ.get("PYTHONDONTWRITEBYTECODE")
    print(f"python {sys.version.split()[0]} ({BINDIR}); emulator hs100 on 127.0.0.1:{port}; "
          f"{args.runs} runs per tool, interleaved; "
          f"PYTHONDONTWRITEBYTECODE={dont_write or '(unset)'}")
    load0 = os.getloadavg()[0]
    for name in names:  # warm-up: page cache, the [pyc] cache, the emulator's code paths
        run_once(*tools[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.runs):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(run_once(*tools[name]))

    print(f"load average (1 min) {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; "
          "other busy processes skew these figures")
    med = {name: statistics.median(samples) for name, samples in times.items()}
    print(f"\n{'command':<24} {'median':>9} {'p90':>9} {'min':>9}")
    for name in names:
        s = times[name]
        print(f"{name:<24} {med[name] * 1e3:6.1f} ms {p90(s) * 1e3:6.1f} ms "
              f"{min(s) * 1e3:6.1f} ms")

    floor = med["python -c pass"]
    print(f"\npython floor (python -c pass): {floor * 1e3:.1f} ms")
    for suffix in ("", " [pyc]"):
        ours = med["hs100local on" + suffix]
        ratio = ours / med["kasa on"]
        ratio_net = (ours - floor) / (med["kasa on"] - floor)
        print(f"ratio hs100local on{suffix} / kasa on (median): {ratio:.3f}  "
              f"(target <= 0.2: {'met' if ratio <= 0.2 else 'NOT met'}); "
              f"above the floor: {ratio_net:.3f}")
    for suffix in ("", " [pyc]"):
        help_ms = med["hs100local --help" + suffix] * 1e3
        print(f"hs100local --help{suffix} (median): {help_ms:.1f} ms  "
              f"(target < 100 ms: {'met' if help_ms < 100 else 'NOT met'})")

    print_imports("python -X importtime hs100local -H … on", on, args.top)
    print_imports("same, [pyc] (private bytecode cache)", on, args.top, env_pyc)
    print_imports("python -X importtime kasa … on (peer, for comparison)", kasa_on, args.top,
                  by_self=False)


if __name__ == "__main__":
    main()

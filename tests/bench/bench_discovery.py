"""Discovery on a namespaced LAN of emulated plugs: ``hs100local discover`` versus kasa.

Run by hand, as root (not part of the test suite)::

    python tests/bench/bench_discovery.py [--runs 10] [--plugs 50]

Builds one lab with tests/plug_lab.py: a router namespace (lan0 198.18.0.1/24,
lan1 198.18.1.1/24, no default route) and ``--plugs`` emulated plugs on lan0
(198.18.0.11 …), each an ``hs100local emulate`` process in its own namespace.
Every command runs in the router namespace; nothing leaves the lab.

1. Broadcast discovery, ``--runs`` rounds, the tools interleaved round by round
   (rotating order):

   * ``hs100local discover --expect N --json --no-save`` (wall time of the process);
   * ``discovery.discover(expect=N)`` in a small python process (the library's own
     ``result.elapsed``, plus the process's wall time);
   * ``kasa --json --target 198.18.0.255 discover`` (the peer; kasa listens for its
     whole ``--discovery-timeout``, default 10 s, and has no early stop).

   Recall is the number of lab plugs each run listed, summed over the runs. Then
   one pass each without any hint, to show what the missing default route does:
   ``hs100local discover`` (no --expect, full 3 s window) and ``kasa discover``
   (default target 255.255.255.255), plus kasa with ``--discovery-timeout 1``.
2. TCP sweep: a second lab with ``--sweep-plugs`` plugs; ``--sweep-runs`` rounds of
   ``hs100local discover --scan 198.18.0.0/24 --json --no-save``, the library's
   ``discovery.scan()``, and, as the reference (kasa has no sweep), a bare asyncio
   connect sweep of the same 254 addresses with the same concurrency and connect
   timeout.

Prints per-tool median/min/max, recalls, ratios and whether the targets (all
plugs in < 1 s with 100 % recall; sweep < 5 s finding every plug) were met. No
assertions; a failed run is counted and shown, not fatal.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import ipaddress
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import netlab  # noqa: E402
import plug_lab  # noqa: E402
import prockit  # noqa: E402

from hs100local.discovery import SWEEP_CONCURRENCY, SWEEP_CONNECT_TIMEOUT  # noqa: E402

BINDIR = Path(sys.executable).parent
LAN0 = ipaddress.ip_network("198.18.0.0/24")
SWEEP_NET = "198.18.0.0/24"

#: ``discovery.discover(expect=N)``; prints the library's own elapsed time and the hosts.
LIB_DISCOVER = """\
import asyncio, json, sys
from hs100local.discovery import discover
r = asyncio.run(discover(expect=int(sys.argv[1])))
print(json.dumps({"elapsed": r.elapsed, "hosts": [p.host for p in r.plugs]}))
"""

#: ``discovery.scan([net])`` with its defaults (the CLI's --scan uses the same ones).
LIB_SCAN = """\
import asyncio, json, sys
from hs100local.discovery import scan
r = asyncio.run(scan([sys.argv[1]]))
print(json.dumps({"elapsed": r.elapsed, "hosts": [p.host for p in r.plugs]}))
"""

#: The floor for a sweep: connect to PORT on every address, CONCURRENCY at once, give up
#: after CONNECT_TIMEOUT, close at once. No query, no TDP probe, no parsing.
BARE_SWEEP = """\
import asyncio, ipaddress, json, sys, time
net, port, concurrency, connect_timeout = sys.argv[1], 9999, int(sys.argv[2]), float(sys.argv[3])

async def main():
    gate = asyncio.Semaphore(concurrency)
    opened = []

    async def one(host):
        async with gate:
            try:
                _r, w = await asyncio.wait_for(asyncio.open_connection(host, port),
                                               connect_timeout)
            except (OSError, asyncio.TimeoutError):
                return
            opened.append(host)
            w.close()
            try:
                await w.wait_closed()
            except OSError:
                pass

    t0 = time.monotonic()
    await asyncio.gather(*(one(str(a)) for a in ipaddress.ip_network(net).hosts()))
    return time.monotonic() - t0, opened

elapsed, opened = asyncio.run(main())
print(json.dumps({"elapsed": elapsed, "hosts": opened}))
"""


@dataclass
class Run:
    wall: float
    rc: int | None  # None: killed after the subprocess timeout
    stdout: str
    stderr: str


@dataclass
class Series:
    """One tool's runs: wall times, in-process times (if any), plugs found per run."""

    name: str
    walls: list[float] = field(default_factory=list)
    inner: list[float] = field(default_factory=list)  # the library's own elapsed
    found: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    extras: set[str] = field(default_factory=set)  # hosts listed that are no lab plug


def run_in(host: netlab.Host, argv: list[str], env: dict[str, str], timeout: float) -> Run:
    """Run ``argv`` in ``host``'s namespace; wall time around the whole process.

    stdin is /dev/null (nothing can wait on a prompt); a timeout kills the process
    group, since ``ip netns exec`` forks.
    """
    t0 = time.monotonic()
    popen = subprocess.Popen(
        host.cmd(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        preexec_fn=prockit.default_signals,
    )
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        out, err = popen.communicate()
        return Run(time.monotonic() - t0, None, out, err)
    return Run(time.monotonic() - t0, popen.returncode, out, err)


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"


def hosts_ours(stdout: str) -> list[str]:
    """``hs100local discover --json``: a list of plugs, each with "host"."""
    return [d["host"] for d in json.loads(stdout)]


def hosts_snippet(stdout: str) -> tuple[float, list[str]]:
    data = json.loads(stdout)
    return data["elapsed"], data["hosts"]


def hosts_kasa(stdout: str) -> list[str]:
    """``kasa --json … discover``: a dict keyed by host. Fallback: the ``Host:`` lines
    of kasa's text output (in case --json is dropped or changes)."""
    try:
        data = json.loads(stdout)
    except ValueError:
        return re.findall(r"^Host: (\d+\.\d+\.\d+\.\d+)", stdout, re.M)
    return list(data) if isinstance(data, dict) else []


def record(series: Series, run: Run, parse, expected: set[str], ok_rcs: tuple[int, ...]) -> None:
    """Add one run to ``series``; a failed or unparsable run counts as 0 found."""
    series.walls.append(run.wall)
    if run.rc is None or run.rc not in ok_rcs:
        why = "timed out" if run.rc is None else f"exit {run.rc}"
        series.failures.append(f"{why}: {first_line(run.stderr or run.stdout)}")
        series.found.append(0)
        return
    try:
        parsed = parse(run.stdout)
    except (ValueError, KeyError, TypeError) as exc:
        series.failures.append(f"unparsable output ({exc!r}): {first_line(run.stdout)}")
        series.found.append(0)
        return
    if isinstance(parsed, tuple):
        inner, hosts = parsed
        series.inner.append(inner)
    else:
        hosts = parsed
    listed = set(hosts)
    series.found.append(len(listed & expected))
    series.extras |= listed - expected


def stats(samples: list[float]) -> str:
    if not samples:
        return f"{'-':>8} {'-':>8} {'-':>8}"
    return (f"{statistics.median(samples):7.3f}s {min(samples):7.3f}s "
            f"{max(samples):7.3f}s")


def recall(series: Series, per_run: int) -> str:
    return f"{sum(series.found)}/{per_run * len(series.found)}"


def print_series(rows: list[tuple[str, Series, list[float]]], per_run: int) -> None:
    print(f"  {'tool':<44} {'median':>8} {'min':>8} {'max':>8}  recall")
    for label, series, samples in rows:
        print(f"  {label:<44} {stats(samples)}  {recall(series, per_run)}")
    for _label, series, _samples in rows:
        if series.failures:
            print(f"  {series.name}: {len(series.failures)} failed run(s): "
                  f"{'; '.join(sorted(set(series.failures)))}")
        if series.extras:
            print(f"  {series.name}: listed hosts that are no lab plug: {sorted(series.extras)}")


def kasa_default_discovery_timeout(kasa_exe: str) -> int:
    """kasa's own default, read from its --help (no network)."""
    done = subprocess.run([kasa_exe, "--help"], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=60)
    match = re.search(r"--discovery-timeout\s+INTEGER.*?\[default:\s*(\d+)\]", done.stdout, re.S)
    if not match:
        raise SystemExit(f"cannot find --discovery-timeout's default in `kasa --help`:\n"
                         f"{done.stdout}{done.stderr}")
    return int(match.group(1))


def base_env() -> dict[str, str]:
    """Our environment minus KASA_* (kasa reads KASA_HOST, KASA_USERNAME, … from it)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KASA_")}


def bench_broadcast(args: argparse.Namespace, ours_exe: str, kasa_exe: str,
                    kasa_timeout: int, workdir: Path) -> dict[str, object]:
    prefix = f"hsbd{os.getpid() % 100000}"
    t0 = time.monotonic()
    with netlab.Lab(prefix=prefix) as lab:
        plab = plug_lab.build(lab, workdir / "broadcast.db", plugs=args.plugs, second=0,
                              klap=0)
        expected = {p.ip for p in plab.plugs}
        env = {**base_env(), **plab.env()}
        routes = lab.hosts["router"].run(["ip", "-4", "route", "show"]).stdout.strip()
        router = plab.router
        print(f"\nlab {prefix}: {len(expected)} plugs on lan0, built in "
              f"{time.monotonic() - t0:.1f} s; router routes:")
        for line in routes.splitlines():
            print(f"  {line}")
        has_default = any(line.startswith("default") for line in routes.splitlines())
        print(f"  default route: {'YES (unexpected)' if has_default else 'none'}")

        n = len(expected)
        kasa_flags = [] if args.kasa_timeout is None else ["--discovery-timeout",
                                                           str(kasa_timeout)]
        ours_cmd = [ours_exe, "discover", "--expect", str(n), "--json", "--no-save"]
        lib_cmd = [sys.executable, "-c", LIB_DISCOVER, str(n)]
        kasa_cmd = [kasa_exe, "--json", "--target", str(LAN0.broadcast_address), *kasa_flags,
                    "discover"]
        kasa_limit = kasa_timeout + 60.0
        ours = Series("hs100local discover")
        lib = Series("discovery.discover()")
        kasa = Series("kasa discover")
        tools = [
            (ours, ours_cmd, hosts_ours, 30.0, (0, 3)),  # 3: fewer than --expect answered
            (lib, lib_cmd, hosts_snippet, 30.0, (0,)),
            (kasa, kasa_cmd, hosts_kasa, kasa_limit, (0,)),
        ]
        print(f"\n[1] broadcast discovery, {args.runs} rounds, interleaved (rotating order)")
        print(f"  ours: {' '.join(ours_cmd[1:])}")
        print(f"  lib:  python -c 'asyncio.run(discover(expect={n}))'")
        print(f"  kasa: {' '.join(kasa_cmd[1:])}   (discovery timeout {kasa_timeout} s, "
              f"{'kasa default' if args.kasa_timeout is None else 'set by --kasa-timeout'})")
        # Warm-up (page cache, imports); kasa's is --help, its discovery costs its timeout.
        run_in(router, ours_cmd, env, 30.0)
        run_in(router, lib_cmd, env, 30.0)
        run_in(router, [kasa_exe, "--help"], env, 60.0)
        for i in range(args.runs):
            k = i % len(tools)
            for series, argv, parse, limit, ok in tools[k:] + tools[:k]:
                record(series, run_in(router, argv, env, limit), parse, expected, ok)
            print(f"  round {i + 1}/{args.runs}: ours {ours.walls[-1]:.3f} s "
                  f"({ours.found[-1]}/{n}), lib {lib.walls[-1]:.3f} s "
                  f"(elapsed {lib.inner[-1] if lib.inner else float('nan'):.3f} s, "
                  f"{lib.found[-1]}/{n}), kasa {kasa.walls[-1]:.3f} s ({kasa.found[-1]}/{n})",
                  flush=True)

        print("\n  wall time per process (lib: the library's own result.elapsed)")
        print_series([
            ("hs100local discover --expect N (wall)", ours, ours.walls),
            ("discovery.discover(expect=N) (elapsed)", lib, lib.inner),
            ("discovery.discover(expect=N) (wall)", lib, lib.walls),
            (f"kasa discover, timeout {kasa_timeout} s (wall)", kasa, kasa.walls),
        ], n)

        # Without any hint: no --expect (ours listens its whole window) and kasa's
        # default target, 255.255.255.255, which needs a default route.
        print("\n[1b] one pass each, still without a default route: no hints for ours, "
              "kasa's default target, kasa's shortest timeout")
        passes = {}
        for label, argv, parse, limit in (
            ("hs100local discover (no --expect, 3 s window)",
             [ours_exe, "discover", "--json", "--no-save"], hosts_ours, 30.0),
            (f"kasa discover (target 255.255.255.255, {kasa_timeout} s)",
             [kasa_exe, "--json", *kasa_flags, "discover"], hosts_kasa, kasa_limit),
            ("kasa discover --target 198.18.0.255, timeout 1 s",
             [kasa_exe, "--json", "--target", str(LAN0.broadcast_address),
              "--discovery-timeout", "1", "discover"], hosts_kasa, 60.0),
        ):
            series = Series(label)
            run = run_in(router, argv, env, limit)
            record(series, run, parse, expected, (0,))
            errors = collections.Counter(ln.strip() for ln in run.stderr.splitlines()
                                         if ln.strip())
            note = "; stderr: " + " | ".join(f"{line} (x{count})" for line, count
                                             in errors.most_common(3)) if errors else ""
            fail = f"; FAILED: {series.failures[0]}" if series.failures else ""
            print(f"  {label:<50} {run.wall:6.3f} s  found {series.found[0]}/{n} "
                  f"(exit {run.rc}){fail}{note}")
            passes[label] = (run, series)
    return {"n": n, "ours": ours, "lib": lib, "kasa": kasa, "passes": passes,
            "kasa_timeout": kasa_timeout}


def bench_sweep(args: argparse.Namespace, ours_exe: str, workdir: Path) -> dict[str, object]:
    prefix = f"hsbs{os.getpid() % 100000}"
    t0 = time.monotonic()
    with netlab.Lab(prefix=prefix) as lab:
        plab = plug_lab.build(lab, workdir / "sweep.db", plugs=args.sweep_plugs, second=0,
                              klap=0)
        expected = {p.ip for p in plab.plugs}
        env = {**base_env(), **plab.env()}
        router = plab.router
        n = len(expected)
        print(f"\n[2] TCP sweep of {SWEEP_NET} (254 addresses; {n} plugs, the router, the "
              f"rest silent); lab {prefix} built in {time.monotonic() - t0:.1f} s; "
              f"{args.sweep_runs} rounds, interleaved")
        print(f"  concurrency {SWEEP_CONCURRENCY}, connect timeout {SWEEP_CONNECT_TIMEOUT:g} s "
              "(hs100local's defaults, used by the bare sweep too)")
        ours_cmd = [ours_exe, "discover", "--scan", SWEEP_NET, "--json", "--no-save"]
        lib_cmd = [sys.executable, "-c", LIB_SCAN, SWEEP_NET]
        bare_cmd = [sys.executable, "-c", BARE_SWEEP, SWEEP_NET, str(SWEEP_CONCURRENCY),
                    str(SWEEP_CONNECT_TIMEOUT)]
        ours = Series("hs100local discover --scan")
        lib = Series("discovery.scan()")
        bare = Series("bare connect sweep")
        tools = [
            (ours, ours_cmd, hosts_ours),
            (lib, lib_cmd, hosts_snippet),
            (bare, bare_cmd, hosts_snippet),
        ]
        for _series, argv, _parse in tools:  # warm-up
            run_in(router, argv, env, 60.0)
        for i in range(args.sweep_runs):
            k = i % len(tools)
            for series, argv, parse in tools[k:] + tools[:k]:
                record(series, run_in(router, argv, env, 60.0), parse, expected, (0,))
            print(f"  round {i + 1}/{args.sweep_runs}: ours {ours.walls[-1]:.3f} s "
                  f"({ours.found[-1]}/{n}), lib {lib.walls[-1]:.3f} s, "
                  f"bare {bare.walls[-1]:.3f} s ({bare.found[-1]}/{n} open)", flush=True)
        print()
        print_series([
            ("hs100local discover --scan (wall)", ours, ours.walls),
            ("discovery.scan() (elapsed)", lib, lib.inner),
            ("discovery.scan() (wall)", lib, lib.walls),
            ("bare connect sweep (elapsed)", bare, bare.inner),
            ("bare connect sweep (wall)", bare, bare.walls),
        ], n)
    return {"n": n, "ours": ours, "lib": lib, "bare": bare}


def med(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def summary(b: dict, s: dict, machine: str) -> None:
    n, ours, lib, kasa = b["n"], b["ours"], b["lib"], b["kasa"]
    print("\n" + "=" * 78 + "\nSUMMARY\n" + "=" * 78)
    print(f"{'measurement':<46} {'median':>8} {'min':>8} {'max':>8}  recall")
    rows = [
        (f"broadcast: hs100local discover --expect {n}", ours, ours.walls, n),
        ("broadcast: discovery.discover() elapsed", lib, lib.inner, n),
        (f"broadcast: kasa discover ({b['kasa_timeout']} s timeout)", kasa, kasa.walls, n),
        ("sweep /24: hs100local discover --scan", s["ours"], s["ours"].walls, s["n"]),
        ("sweep /24: discovery.scan() elapsed", s["lib"], s["lib"].inner, s["n"]),
        ("sweep /24: bare connect sweep (wall)", s["bare"], s["bare"].walls, s["n"]),
        ("sweep /24: bare connect sweep elapsed", s["bare"], s["bare"].inner, s["n"]),
    ]
    for label, series, samples, per_run in rows:
        print(f"{label:<46} {stats(samples)}  {recall(series, per_run)}")
    ratio = med(ours.walls) / med(kasa.walls)
    print(f"\nratio hs100local/kasa, broadcast (median wall): {ratio:.3f} "
          f"(kasa waits its whole {b['kasa_timeout']} s window; ours stops at --expect)")
    full = sum(ours.found) == n * len(ours.found) and not ours.failures
    print(f"target: all {n} found in < 1 s, 100 % recall over {len(ours.found)} runs: "
          f"{met(full and max(ours.walls) < 1.0)} (CLI wall max {max(ours.walls):.3f} s, "
          f"recall {recall(ours, n)})")
    for label, (run, series) in b["passes"].items():
        print(f"no default route: {label:<50} found {series.found[0]}/{n} in {run.wall:.2f} s")
    sw = s["ours"]
    ratio_sw = med(sw.walls) / med(s["bare"].walls)
    ratio_in = med(s["lib"].inner) / med(s["bare"].inner)
    print("\nsweep: no peer (kasa cannot sweep); reference = bare asyncio connect sweep, "
          "same namespace, concurrency and connect timeout")
    print(f"ratio hs100local --scan / bare sweep (median wall): {ratio_sw:.3f}; "
          f"discovery.scan() / bare (in-process elapsed): {ratio_in:.3f}")
    sweep_full = sum(sw.found) == s["n"] * len(sw.found) and not sw.failures
    print(f"target: sweep < 5 s finding all {s['n']}: "
          f"{met(sweep_full and med(sw.walls) < 5.0)} (median {med(sw.walls):.3f} s, "
          f"max {max(sw.walls):.3f} s, recall {recall(sw, s['n'])})")
    print(f"\n{machine}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="broadcast rounds (default 10)")
    parser.add_argument("--plugs", type=int, default=50, help="plugs in the broadcast lab "
                        "(default 50, at most 180)")
    parser.add_argument("--sweep-plugs", type=int, default=10, help="plugs in the sweep lab")
    parser.add_argument("--sweep-runs", type=int, default=5, help="sweep rounds (default 5)")
    parser.add_argument("--kasa-timeout", type=int, default=None,
                        help="kasa --discovery-timeout (default: kasa's own default)")
    args = parser.parse_args()
    if args.runs < 1 or args.sweep_runs < 1:
        parser.error("--runs and --sweep-runs must be at least 1")
    if not 1 <= args.plugs <= 180 or not 1 <= args.sweep_plugs <= 180:
        parser.error("--plugs and --sweep-plugs must be 1..180 (198.18.0.11 … .190)")
    reason = netlab.netns_unavailable_reason()
    if reason is not None:
        raise SystemExit(f"cannot run: {reason}")
    # A background job from a shell ignores SIGINT, and its children would inherit that.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    ours_exe, kasa_exe = str(BINDIR / "hs100local"), str(BINDIR / "kasa")
    for exe in (ours_exe, kasa_exe):
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"missing console script {exe}")
    kasa_default = kasa_default_discovery_timeout(kasa_exe)
    kasa_timeout = kasa_default if args.kasa_timeout is None else args.kasa_timeout

    machine = (f"machine: {os.cpu_count()} cores, python {platform.python_version()} "
               f"({sys.executable}), python-kasa "
               f"{importlib.metadata.version('python-kasa')}, kernel {platform.release()}, "
               f"load average (1 min) {os.getloadavg()[0]:.2f} at start; "
               f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE') or '(unset)'}")
    print(machine)
    print(f"kasa --discovery-timeout: {kasa_timeout} s (kasa's default is {kasa_default} s)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hs100local-bench-disc-") as tmp:
        broadcast = bench_broadcast(args, ours_exe, kasa_exe, kasa_timeout, Path(tmp))
        sweep = bench_sweep(args, ours_exe, Path(tmp))
    machine += f", {os.getloadavg()[0]:.2f} at end; total {time.monotonic() - started:.0f} s"
    summary(broadcast, sweep, machine)


if __name__ == "__main__":
    main()

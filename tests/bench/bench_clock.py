"""How well `hs100local time sync` sets a clock, against python-kasa's `set_time`.

A plug counts whole seconds from the moment it is set, and one reading of its clock
says nothing finer than a second. The emulated plug knows better: its clock is this
host's clock plus an offset it keeps exactly (``EmulatedPlug.clock_offset``), so this
script can measure what no reading can — the true error left by a sync — next to
the read-back offset the command reports.

Each round runs, against one emulated HS100 on loopback:

* ours: ``hs100local -H … --json time sync --zone UTC`` as a whole process (the
  command waits for the start of a second, sets the clock, reads it back half a
  second later, and exits 1 if the read-back is off);
* the peer: python-kasa's ``IotPlug`` ``Module.Time.set_time(now)`` (the time the
  Kasa app and Home Assistant set: whole seconds, sent whenever the call happens).

It prints the distribution (min, median, p90, max of the signed error and the share
within ±0.5 s and ±0.05 s) of both, and the ratio of the largest absolute errors.
Run by hand: ``python tests/bench/bench_clock.py [--rounds 40]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from hs100local.emulator import MODELS, EmulatedPlug
from hs100local.emulator.server import EmulatorThread

UTC_INDEX = 38


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    within_half = sum(abs(v) <= 0.5 for v in values) / len(values)
    within_50ms = sum(abs(v) <= 0.05 for v in values) / len(values)
    return (f"min {ordered[0]:+.3f}  median {statistics.median(ordered):+.3f}  "
            f"p90 {p90:+.3f}  max {ordered[-1]:+.3f} s;  within ±0.5 s {within_half:.0%}, "
            f"within ±0.05 s {within_50ms:.0%}")


def ours(emu: EmulatorThread) -> tuple[float, float]:
    """(reported read-back offset, true offset) of one `time sync` process."""
    hs100local = Path(sys.executable).with_name("hs100local")
    command = [str(hs100local)] if hs100local.exists() else [sys.executable, "-m",
                                                              "hs100local"]
    result = subprocess.run([*command, "-H", f"127.0.0.1:{emu.port}", "--json", "time",
                             "sync", "--zone", "UTC"], capture_output=True, text=True,
                            timeout=30, check=False)
    if result.returncode != 0:
        raise SystemExit(f"time sync failed: {result.stderr.strip()}")
    reported = json.loads(result.stdout)["offset_s"]
    return reported, emu.call(lambda: emu.server.plug.clock_offset)


async def kasa_set(port: int) -> None:
    from kasa import DeviceConfig, Module
    from kasa.iot import IotPlug

    device = IotPlug("127.0.0.1", config=DeviceConfig("127.0.0.1", port_override=port))
    try:
        await device.update()
        await device.modules[Module.Time].set_time(datetime.now(timezone.utc))
    finally:
        await device.disconnect()


def peer(emu: EmulatorThread) -> float:
    # A user runs a command whenever: at a random point of a second (our sync just
    # ended half a second into one, which would flatter or harm the peer).
    time.sleep(random.random())
    asyncio.run(kasa_set(emu.port))
    return emu.call(lambda: emu.server.plug.clock_offset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    plug = EmulatedPlug(MODELS["hs100"], tz_index=UTC_INDEX)
    reported, true_ours, true_kasa = [], [], []
    with EmulatorThread(plug) as emu:
        for _ in range(args.rounds):
            shown, actual = ours(emu)
            reported.append(shown)
            true_ours.append(actual)
            true_kasa.append(peer(emu))
    print(f"{args.rounds} rounds against an emulated HS100 on loopback")
    print(f"hs100local time sync, read-back offset reported: {quantiles(reported)}")
    print(f"hs100local time sync, true clock error:          {quantiles(true_ours)}")
    print(f"python-kasa set_time, true clock error:          {quantiles(true_kasa)}")
    worst_ours = max(abs(v) for v in true_ours)
    worst_kasa = max(abs(v) for v in true_kasa)
    print(f"largest |error|: ours {worst_ours:.3f} s, python-kasa {worst_kasa:.3f} s; "
          f"ratio {worst_ours / worst_kasa:.3f}")
    print("target: every read-back within ±0.5 s:",
          "met" if all(abs(v) <= 0.5 for v in reported) else "NOT met")


if __name__ == "__main__":
    main()

"""`hs100local time sync --all` and `emulate --clock-start` through the CLI."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from datetime import datetime

import prockit
from click.testing import CliRunner

from hs100local.cli import cli
from hs100local.events import EventStore
from hs100local.inventory import Inventory
from hs100local.results import DiscoveredPlug, SysInfo

UTC_INDEX = 38


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def remember(emu, host: str = "127.0.0.1", port: int | None = None) -> None:
    info = SysInfo.from_dict(emu.call(emu.plug.get_sysinfo, {}))
    with Inventory(os.environ["HS100LOCAL_DB"]) as inventory:
        inventory.record([DiscoveredPlug.from_sysinfo(host, port or emu.port, info)])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sync_all_fixes_a_power_cycled_plug_leaves_a_good_one_and_reports_a_dead_one(
        start_emulator):
    good = start_emulator("hs105", alias="Good", tz_index=UTC_INDEX)
    lost = start_emulator("hs300", alias="Strip", tz_index=UTC_INDEX)
    gone = start_emulator("hs200", alias="Gone", tz_index=UTC_INDEX)
    remember(good)
    remember(lost)
    remember(gone, port=closed_port())  # recorded where nothing listens any more
    lost.power_cycle()  # its clock reads 2000-01-01 now

    result = invoke("time", "sync", "--all", "--zone", "UTC", "--json")
    assert result.exit_code == 3, result.output  # one plug unreachable
    assert "1 plug(s) unreachable" in result.stderr
    checks = {c["alias"]: c for c in json.loads(result.stdout)}
    assert checks["Good"]["status"] == "ok"
    assert checks["Strip"]["status"] == "fixed" and "clock_lost" in checks["Strip"]["reasons"]
    assert abs(checks["Strip"]["offset_after_s"]) < 2
    assert checks["Gone"]["status"] == "unreachable"
    plug_now = lost.call(lost.plug.plug_now)
    assert abs((plug_now.replace(tzinfo=None) - datetime.utcnow()).total_seconds()) < 2

    with EventStore(os.environ["HS100LOCAL_DB"]) as store:
        kinds = sorted(e.details["outcome"] for e in store.events(kind="time"))
    assert kinds == ["fixed", "unreachable"]

    again = invoke("time", "sync", "--all", "--zone", "UTC")  # human table
    assert again.exit_code == 3
    assert re.search(r"Strip\s+127\.0\.0\.1:\d+\s+ok", again.stdout), again.stdout


def test_sync_all_with_an_empty_inventory_and_with_host_given():
    result = invoke("time", "sync", "--all")
    assert result.exit_code == 0 and "No plugs recorded yet" in result.stdout
    result = invoke("-H", "127.0.0.1", "time", "sync", "--all")
    assert result.exit_code == 2 and "leave out -H" in result.stderr


def test_emulate_clock_start_runs_a_plug_that_lost_its_time(tmp_path):
    proc = prockit.spawn(
        [sys.executable, "-u", "-m", "hs100local", "emulate", "--model", "hs105", "--port", "0",
         "--tz-index", str(UTC_INDEX), "--clock-start", "2000-01-01", "--no-udp"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        host = f"127.0.0.1:{match.group(1)}"
        shown = json.loads(invoke("-H", host, "time", "--json").stdout)
        assert shown["time"].startswith("2000-01-01T00:00:") and shown["tz_index"] == UTC_INDEX
        refused = invoke("-H", host, "raw", '{"count_down":{"add_rule":{"enable":1,'
                         '"delay":60,"act":1,"name":"x"}}}')
        assert refused.exit_code == 1 and "-11" in refused.stderr
        assert "time not sync" in refused.stderr
        assert invoke("-H", host, "time", "sync", "--zone", "UTC").exit_code == 0
        accepted = invoke("-H", host, "raw", '{"count_down":{"add_rule":{"enable":1,'
                          '"delay":60,"act":1,"name":"x"}}}')
        assert accepted.exit_code == 0 and "time not sync" not in accepted.stdout
    finally:
        prockit.finish(proc)


def test_emulate_clock_start_out_of_range_is_a_usage_error():
    result = invoke("emulate", "--clock-start", "1999-12-31")
    assert result.exit_code == 2 and "2000" in result.stderr
    result = invoke("emulate", "--clock-start", "yesterday")
    assert result.exit_code == 2

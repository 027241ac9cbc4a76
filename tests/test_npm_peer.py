"""Our CLI against a plug implementation no one here wrote: npm's tplink-smarthome-simulator.

Each test drives ``hs100local.cli.cli`` (click's runner) at a simulated device on
127.0.0.1 and reads back what the device itself now holds through the simulator's
control channel (``npm_plug`` fixture, tests/npmpeers.py), including the requests it
decoded, so "nothing was sent" can be asserted too.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import prockit
from click.testing import CliRunner

from hs100local.cli import cli


def run(plug: Any, *args: str, code: int = 0):
    result = CliRunner().invoke(cli, ["-H", plug.address, *args])
    assert result.exit_code == code, (args, result.output, result.exception)
    return result


def jrun(plug: Any, *args: str) -> Any:
    return json.loads(run(plug, "--json", *args).stdout)


def outlet_states(plug: Any) -> list[int]:
    return [child["state"] for child in plug.state()["children"]]


def methods(plug: Any) -> list[str]:
    """``module.method`` of every request the device decoded, in order."""
    return [f"{module}.{method}" for r in plug.sent() for module, calls in r.items()
            if module != "context" for method in calls]


def test_relay_on_off_toggle_read_back_from_the_device(npm_plug):
    plug = npm_plug("hs100", alias="Lamp", mac="50:C7:BF:00:00:01")
    assert plug.state()["sysinfo"]["relay_state"] == 0
    assert run(plug, "on").stdout == "Power ON\n"
    assert plug.state()["sysinfo"]["relay_state"] == 1
    assert jrun(plug, "state") == {"state": "on"}
    assert run(plug, "off").stdout == "Power OFF\n"
    assert plug.state()["sysinfo"]["relay_state"] == 0
    assert run(plug, "toggle").stdout == "Power ON\n"
    assert plug.state()["sysinfo"]["relay_state"] == 1
    assert "system.set_relay_state" in methods(plug)


def test_info_shows_what_the_device_reports(npm_plug):
    plug = npm_plug("hs110", alias="Kettle", mac="50:C7:BF:00:00:02")
    sysinfo = plug.state()["sysinfo"]
    text = run(plug, "info").stdout
    assert "Alias:     Kettle" in text and "MAC:       50:C7:BF:00:00:02" in text
    assert f"Model:     {sysinfo['model']} " in text and sysinfo["model"].startswith("HS110")
    assert f"Device ID: {sysinfo['deviceId']}" in text and "(energy meter)" in text
    raw = jrun(plug, "info")
    assert raw["deviceId"] == sysinfo["deviceId"] and raw["feature"] == "TIM:ENE"
    realtime = plug.state()["data"]["emeter"]["realtime"]
    assert jrun(plug, "emeter")["power_w"] == realtime["power"]


def test_strip_outlet_2_alone_changes(npm_plug):
    plug = npm_plug("hs300", alias="Strip")
    before = plug.state()
    assert outlet_states(plug) == [0] * 6
    assert run(plug, "-c", "2", "on").stdout == "Power ON\n"
    after = plug.state()
    assert outlet_states(plug) == [0, 1, 0, 0, 0, 0]
    # nothing else on the strip changed: the other outlets, the parent's alias and LED
    assert [c["alias"] for c in after["children"]] == [c["alias"] for c in before["children"]]
    assert after["sysinfo"]["alias"] == "Strip"
    assert after["sysinfo"]["led_off"] == before["sysinfo"]["led_off"]
    # Exactly one switch request, naming outlet 2 alone.
    switches = [r for r in plug.sent() if "set_relay_state" in (r or {}).get("system", {})]
    assert switches == [{"context": {"child_ids": [after["children"][1]["id"]]},
                         "system": {"set_relay_state": {"state": 1}}}], switches
    data = jrun(plug, "state")
    assert data["state"] == "on"
    assert [o["state"] for o in data["outlets"]] == ["off", "on", "off", "off", "off", "off"]
    assert jrun(plug, "-c", "Mock Two", "state")["state"] == "on"
    assert run(plug, "off").stdout == "Power OFF\n"  # no -c: every outlet
    assert outlet_states(plug) == [0] * 6


def test_alias_and_led_read_back(npm_plug):
    plug = npm_plug("hs300", alias="Strip")
    assert run(plug, "alias", "Desk").stdout == "Desk\n"
    assert plug.state()["sysinfo"]["alias"] == "Desk"
    assert run(plug, "alias").stdout == "Desk\n"
    assert run(plug, "-c", "3", "alias", "Fan").stdout == "Fan\n"
    children = plug.state()["children"]
    assert [c["alias"] for c in children] == ["Mock One", "Mock Two", "Fan", "Mock Four",
                                              "Mock Five", "Mock Six"]
    assert plug.state()["sysinfo"]["alias"] == "Desk"  # the strip's own name kept
    assert jrun(plug, "-c", "fan", "alias") == {"alias": "Fan"}
    assert run(plug, "led", "off").stdout == "LED off\n"
    assert plug.state()["sysinfo"]["led_off"] == 1
    assert jrun(plug, "led") == {"led": "off"}


def test_refused_commands_send_nothing(npm_plug):
    plug = npm_plug("hs300", alias="Strip")
    plug.reset_log()
    assert "--yes" in run(plug, "reset", code=2).output
    assert "31 bytes" in run(plug, "alias", "x" * 40, code=2).output
    state = plug.state()
    assert state["requests"] == [] and state["connections"] == 0
    # an unknown outlet needs the outlet list (one get_sysinfo), but switches nothing
    assert "no outlet" in run(plug, "-c", "9", "on", code=2).output
    assert methods(plug) == ["system.get_sysinfo"]
    assert outlet_states(plug) == [0] * 6


def test_cloud_server_read_back(npm_plug):
    plug = npm_plug("hs105", alias="Lamp")
    assert jrun(plug, "cloud", "info")["server"] == plug.state()["cloud"]["server"]
    assert run(plug, "cloud", "set-server", "companion.lan").exit_code == 0
    assert plug.state()["cloud"]["server"] == "companion.lan"
    unbound = run(plug, "cloud", "unbind", code=1)  # never bound: the device says so
    assert "-4002" in unbound.stderr


def test_time_sync_does_not_believe_a_plug_that_keeps_its_zone(npm_plug):
    """The simulator accepts set_timezone but keeps its zone (a no-op in 5.0.1): our
    read-back must notice and fail instead of reporting success."""
    plug = npm_plug("hs100", alias="Lamp")
    zone = plug.state()["timezone"]["index"]
    assert zone != 41
    result = run(plug, "time", "sync", "--tz-index", "41", code=1)
    assert "time.set_timezone" in methods(plug)
    assert plug.state()["timezone"]["index"] == zone
    assert result.stderr.count("\n") == 1 and "41" in result.stderr


def test_discovered_by_udp_then_used_by_alias(npm_plug):
    """Discovery asks the simulator's UDP port (which shortens child ids to two
    characters, as a real strip does); the inventory alias then reaches it over TCP."""
    plug = npm_plug("hs300", alias="Strip", mac="50:C7:BF:00:00:03")
    found = CliRunner().invoke(cli, ["discover", "--target", plug.address, "--json",
                                     "--timeout", "2"])
    assert found.exit_code == 0, found.output
    [entry] = json.loads(found.stdout)
    assert (entry["mac"], entry["alias"], entry["port"]) == ("50:C7:BF:00:00:03", "Strip",
                                                             plug.port)
    assert any(r["protocol"] == "udp" for r in plug.requests())
    on = CliRunner().invoke(cli, ["-H", "Strip", "-c", "3", "on"])
    assert on.exit_code == 0, on.output
    assert outlet_states(plug) == [0, 0, 1, 0, 0, 0]


def test_the_simulator_process_ends_on_stdin_eof_and_on_sigterm(npm_plug):
    plug = npm_plug("hs100")
    assert not prockit.signal_set(plug.pid, "SigIgn") & {signal.SIGINT, signal.SIGTERM}
    assert plug.close() == 0  # stdin closed: it exits by itself
    assert plug.close() == 0  # and closing twice is fine
    other = npm_plug("hs105")
    os.kill(other.pid, signal.SIGTERM)
    assert other._proc.wait(10) == 0


def test_a_change_reaches_the_device_once(npm_plug):
    """The device closes the connection after each answer, yet acts on a request that
    arrives on it before the close is seen (it cannot answer it any more). A change is
    therefore sent on a connection that carried nothing yet, and never re-sent after it
    may have arrived: toggling 30 times switches 30 times, not 31 or 32 (as it did)."""
    plug = npm_plug("hs100", alias="Lamp")
    for _ in range(30):
        run(plug, "toggle")
    assert methods(plug).count("system.set_relay_state") == 30
    assert plug.state()["sysinfo"]["relay_state"] == 0  # an even number of flips

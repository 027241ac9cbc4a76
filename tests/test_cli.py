"""The CLI through click's CliRunner and as a real subprocess, against the emulator."""

from __future__ import annotations

import json
import os
import sys

import prockit
import pytest
from click.testing import CliRunner

from hs100local.cli import cli


def run(emu, *args, env=None):
    runner = CliRunner()
    result = runner.invoke(cli, ["-H", f"127.0.0.1:{emu.port}", *args], env=env)
    return result


def jrun(emu, *args):
    result = run(emu, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def relay(emu):
    return emu.call(lambda: emu.server.plug.relay.on)


def test_on_off_toggle_state(emulator):
    assert run(emulator, "on").stdout == "Power ON\n"
    assert relay(emulator) is True
    assert run(emulator, "state").stdout == "Power ON\n"
    assert run(emulator, "off").stdout == "Power OFF\n"
    assert relay(emulator) is False
    assert jrun(emulator, "state") == {"state": "off"}
    assert run(emulator, "toggle").stdout == "Power ON\n"
    assert relay(emulator) is True


def test_options_after_the_command_and_env_host(emulator):
    runner = CliRunner()
    result = runner.invoke(cli, ["state", "--json", "-H", f"127.0.0.1:{emulator.port}"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {"state": "off"}
    result = runner.invoke(cli, ["on"], env={"HS100LOCAL_HOST": f"127.0.0.1:{emulator.port}"})
    assert result.exit_code == 0 and relay(emulator) is True


def test_info_human_and_json(emulator):
    human = run(emulator, "info").stdout
    assert "HS110(EU)" in human and "energy meter" in human
    data = jrun(emulator, "info")
    assert data["model"] == "HS110(EU)" and data["feature"] == "TIM:ENE" and "err_code" in data


def test_alias_and_led(emulator):
    assert run(emulator, "alias", "Kettle").exit_code == 0
    assert run(emulator, "alias").stdout == "Kettle\n"
    assert jrun(emulator, "alias") == {"alias": "Kettle"}
    assert run(emulator, "alias", "x" * 40).exit_code == 2
    assert run(emulator, "led", "off").stdout == "LED off\n"
    assert emulator.call(lambda: emulator.server.plug.led_off) == 1
    assert jrun(emulator, "led") == {"led": "off"}


def test_strip_outlets(strip):
    assert run(strip, "-c", "2", "on").exit_code == 0
    data = jrun(strip, "state")
    assert data["state"] == "on"
    assert [o["state"] for o in data["outlets"]] == ["off", "on", "off", "off", "off", "off"]
    assert jrun(strip, "-c", "Plug 2", "state")["state"] == "on"
    assert run(strip, "-c", "3", "alias", "Fan").exit_code == 0
    assert jrun(strip, "-c", "fan", "state")["alias"] == "Fan"
    assert run(strip, "state").stdout.splitlines()[1] == "2 Plug 2: Power ON"
    bad = run(strip, "-c", "9", "on")
    assert bad.exit_code == 2 and "no outlet" in bad.output


def test_emeter_commands(start_emulator):
    emu = start_emulator("hs110v2", load_w=120.0)
    run(emu, "on")
    data = jrun(emu, "emeter")
    assert data["power_w"] == 120.0 and data["voltage_v"] == 230.0
    assert data["current_a"] == pytest.approx(120 / 230, abs=1e-3)
    assert isinstance(jrun(emu, "emeter", "day"), list)
    assert isinstance(jrun(emu, "emeter", "month", "--year", "2025"), list)
    strip_emu = start_emulator("hs300", load_w=10.0)
    run(strip_emu, "-c", "1", "on")
    data = jrun(strip_emu, "emeter")
    assert data["power_w"] == 10.0 and len(data["outlets"]) == 6
    assert jrun(strip_emu, "-c", "1", "emeter")["power_w"] == 10.0


def test_emeter_on_plug_without_meter_is_a_plug_error(start_emulator):
    emu = start_emulator("hs105")
    result = run(emu, "emeter")
    assert result.exit_code == 1
    assert "module not support" in result.stderr


def test_time_show_sync_set(emulator):
    synced = jrun(emulator, "time", "sync", "--tz-index", "41")
    assert synced["tz_index"] == 41 and abs(synced["offset_s"]) <= 1.0
    shown = jrun(emulator, "time")
    assert shown["tz_index"] == 41 and abs(shown["offset_s"]) <= 1.5
    assert run(emulator, "time", "sync", "--zone", "Europe/Paris").exit_code == 0
    assert emulator.call(lambda: emulator.server.plug.tz_index) == 41
    set_ = jrun(emulator, "time", "set", "2001-02-03T04:05:06")
    assert set_["method"] == "set_timezone"
    clock = jrun(emulator, "time")["time"]
    assert clock.startswith("2001-02-03T04:05")
    assert run(emulator, "time", "set", "yesterday").exit_code == 2


def test_cloud_wifi_rules(start_emulator):
    emu = start_emulator("hs100", bound_user="me@example.com")
    assert jrun(emu, "cloud", "info")["bound"] is True
    assert run(emu, "cloud", "unbind").exit_code == 0
    again = run(emu, "cloud", "unbind")
    assert again.exit_code == 1 and "not bind yet" in again.stderr
    assert run(emu, "cloud", "set-server", "companion.lan").exit_code == 0
    assert jrun(emu, "cloud", "info")["server"] == "companion.lan"
    aps = jrun(emu, "wifi", "scan")
    assert aps[0]["ssid"] == "hs100local-lab" and aps[0]["security"] == "WPA2"
    assert run(emu, "wifi", "join", "home", "--password", "secret").exit_code == 0
    assert emu.call(lambda: dict(emu.server.plug.sta))["ssid"] == "home"
    assert jrun(emu, "schedule", "list") == []
    emu.call(emu.server.plug.handle, {"count_down": {"add_rule": {"delay": 9, "enable": 1}}})
    assert [r["delay"] for r in jrun(emu, "countdown", "list")] == [9]


def test_raw_sends_verbatim_and_flags_errors(emulator):
    ok = run(emulator, "--json", "raw", '{"system":{"get_sysinfo":{}}}')
    assert ok.exit_code == 0 and json.loads(ok.stdout)["system"]["get_sysinfo"]["err_code"] == 0
    err = run(emulator, "raw", '{"system":{"nosuch":{}}}')
    assert err.exit_code == 1
    assert json.loads(err.stdout)["system"]["nosuch"]["err_code"] == -2
    assert err.stderr.count("\n") == 1 and "system.nosuch" in err.stderr
    assert run(emulator, "raw", "{nope").exit_code == 2


def test_reboot_and_reset(emulator):
    assert run(emulator, "reboot", "--delay", "0").stdout == "Rebooting in 0 s\n"
    assert emulator.call(lambda: emulator.server.plug.reboot_count) == 1
    refused = run(emulator, "reset")
    assert refused.exit_code == 2 and "--yes" in refused.output


def test_usage_errors_exit_2():
    runner = CliRunner()
    no_host = runner.invoke(cli, ["on"], env={"HS100LOCAL_HOST": ""})
    assert no_host.exit_code == 2 and "no plug given" in no_host.output
    assert runner.invoke(cli, ["nosuch"]).exit_code == 2
    assert runner.invoke(cli, ["-H", "1.2.3.4:99999", "on"]).exit_code == 2


# ---------------------------------------------------------------- subprocess


def sub(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "HS100LOCAL_HOST"}
    env.update(env_extra or {})
    return prockit.run([sys.executable, "-m", "hs100local", *args], capture_output=True,
                       text=True, timeout=30, env=env)


def test_subprocess_control_and_json(emulator):
    host = f"127.0.0.1:{emulator.port}"
    assert sub("-H", host, "on").stdout == "Power ON\n"
    result = sub("-H", host, "--json", "state")
    assert result.returncode == 0 and json.loads(result.stdout) == {"state": "on"}
    assert relay(emulator) is True


def test_subprocess_help_and_version():
    result = sub("--help")
    assert result.returncode == 0 and "emulate" in result.stdout and "time" in result.stdout
    assert sub("--version").stdout.startswith("hs100local ")


def test_subprocess_unreachable_is_one_line_exit_3():
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = sub("-H", f"127.0.0.1:{port}", "state")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("hs100local: error:")
    assert "Traceback" not in result.stderr


def test_cli_start_up_does_not_import_asyncio(emulator):
    code = (
        "import sys; from hs100local.cli import main; sys.argv=['hs100local','-H',"
        f"'127.0.0.1:{emulator.port}','on']\n"
        "try:\n main()\nexcept SystemExit: pass\n"
        "print(sorted({'asyncio', 'sqlite3', 'netifaces'} & set(sys.modules)))"
    )
    out = prockit.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    # An address after -H needs neither the event loop nor the inventory.
    assert out.stdout.strip().endswith("[]"), out

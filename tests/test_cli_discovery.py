"""`discover`, `plugs` and -H by alias through the CLI, on loopback.

Broadcasting is confined to loopback by the autouse fixture in conftest (and
here probes go only to --target addresses); the multi-host cases are in the
namespace-lab tests.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from hs100local.cli import cli

REQUIRED = {"host", "port", "mac", "alias", "model", "hw_ver", "sw_ver", "device_id", "state",
            "protocol", "controllable", "children"}


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def discover(*emus, extra=()):
    targets = [a for e in emus for a in ("--target", f"127.0.0.1:{e.port}")]
    return invoke("discover", "--no-broadcast", *targets, "--timeout", "5",
                  "--expect", str(len(emus)), *extra)


def test_discover_json_fields_and_recording(start_emulator):
    strip = start_emulator("hs300", alias="Desk")
    plug = start_emulator("hs105", alias="Lamp", mac="50:C7:BF:00:00:05")
    result = discover(strip, plug, extra=("--json",))
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert {d["alias"] for d in found} == {"Desk", "Lamp"}
    for d in found:
        assert set(d) >= REQUIRED
        assert [c["kind"] for c in d["changes"]] == ["new"]
    desk = next(d for d in found if d["alias"] == "Desk")
    assert [c["alias"] for c in desk["children"]] == [f"Plug {i}" for i in range(1, 7)]

    listed = json.loads(invoke("plugs", "--json").stdout)
    assert sorted(r["alias"] for r in listed) == ["Desk", "Lamp"]
    assert {r["port"] for r in listed} == {strip.port, plug.port}

    # Recorded again: nothing changed, so no change entries.
    again = json.loads(discover(strip, plug, extra=("--json",)).stdout)
    assert all(d["changes"] == [] for d in again)


def test_discover_table_and_summary(start_emulator):
    emu = start_emulator("hs110", alias="Kettle")
    result = discover(emu)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["HOST", "MAC", "MODEL", "ALIAS", "STATE", "FIRMWARE",
                                "PROTOCOL"]
    assert f"127.0.0.1:{emu.port}" in lines[1] and "Kettle" in lines[1]
    assert lines[2].startswith("1 found in ")
    assert "1 new in the inventory" in result.stdout


def test_alias_from_the_inventory_controls_the_plug(start_emulator):
    emu = start_emulator("hs300", alias="Desk")
    assert discover(emu).exit_code == 0
    assert invoke("-H", "desk", "on").stdout.strip() == "Power ON"
    assert emu.call(lambda: [c.on for c in emu.server.plug.outlets]) == [True] * 6
    # an outlet alias selects the outlet
    assert invoke("-H", "Plug 2", "off").exit_code == 0
    assert emu.call(lambda: [c.on for c in emu.server.plug.outlets]) == [
        True, False, True, True, True, True]
    out = json.loads(invoke("--json", "-H", "plug 2", "state").stdout)
    assert (out["index"], out["state"]) == (2, "off")
    # -c beside an -H that already names an outlet is ambiguous: refused, nothing switched
    both = invoke("-H", "Plug 2", "-c", "3", "off")
    assert both.exit_code == 2 and "already names outlet 2" in both.stderr
    assert emu.call(lambda: emu.server.plug.outlets[2].on) is True


def test_inventory_lookup_reuses_the_verification_reply(start_emulator):
    emu = start_emulator("hs110", alias="Kettle")
    assert discover(emu).exit_code == 0
    before = emu.call(lambda: emu.server.requests)
    assert invoke("-H", "Kettle", "state").stdout.strip() == "Power OFF"
    # one get_sysinfo checks the MAC and answers `state`: not two
    assert emu.call(lambda: emu.server.requests) - before == 1


def test_db_option_and_env(start_emulator, tmp_path):
    emu = start_emulator("hs100", alias="Fan")
    db = tmp_path / "elsewhere.db"
    assert discover(emu, extra=("--db", str(db))).exit_code == 0
    assert db.exists()
    assert "Fan" in invoke("plugs", "--db", str(db)).stdout
    assert "No plugs recorded yet" in invoke("plugs").stdout  # default (env) db untouched
    assert invoke("--db", str(db), "-H", "Fan", "on").stdout.strip() == "Power ON"
    assert "Fan" in invoke("plugs", env={"HS100LOCAL_DB": str(db)}).stdout


def test_plugs_changes_and_forget(start_emulator):
    emu = start_emulator("hs200", alias="Hall")
    discover(emu)
    emu.call(lambda: setattr(emu.server.plug, "alias", "Hallway"))
    discover(emu)
    changes = json.loads(invoke("plugs", "changes", "--json").stdout)
    assert [c["kind"] for c in changes] == ["new", "alias"]
    assert (changes[1]["old"], changes[1]["new"]) == ("Hall", "Hallway")
    human = invoke("plugs", "changes", "--kind", "alias").stdout
    assert "Hall" in human and "Hallway" in human and "new plug" not in human
    assert invoke("plugs", "changes", "--plug", "hallway", "--limit", "1",
                  "--json").stdout.count('"kind"') == 1
    forgot = invoke("plugs", "forget", "Hallway")
    assert forgot.exit_code == 0 and "Forgot Hallway" in forgot.stdout
    assert json.loads(invoke("plugs", "--json").stdout) == []
    assert invoke("plugs", "forget", "Hallway").exit_code == 2


def test_expect_not_met_exits_3_after_printing(start_emulator):
    emu = start_emulator("hs100")
    result = invoke("discover", "--no-broadcast", "--target", f"127.0.0.1:{emu.port}",
                    "--expect", "2", "--timeout", "0.5", "--json")
    assert result.exit_code == 3
    assert len(json.loads(result.stdout)) == 1
    assert "expected 2 devices, 1 answered" in result.stderr


def test_discover_usage_errors():
    for args in (
        ["discover", "--scan", "198.18.0.0/24", "--expect", "3"],
        ["discover", "--no-broadcast"],
        ["discover", "--interface", "no-such-if0"],
        ["discover", "--scan", "not-a-network"],
        ["discover", "--scan", "10.0.0.0/8"],
        ["discover", "--expect", "0"],
    ):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
    assert "Examples" in invoke("discover", "--help").stdout


def test_a_name_not_in_the_inventory_is_a_host_name(start_emulator):
    emu = start_emulator("hs100", alias="Fan")
    discover(emu)
    # "localhost" is not an alias: it resolves from /etc/hosts (no DNS traffic).
    result = invoke("-H", f"localhost:{emu.port}", "on")
    assert result.exit_code == 0 and result.stdout.strip() == "Power ON"
    closed = invoke("-H", "localhost:9", "--timeout", "1", "on")
    assert closed.exit_code == 3 and "localhost:9" in closed.stderr
    bad = invoke("-H", "Desk: left", "on")  # not HOST:PORT, not an alias
    assert bad.exit_code == 2 and "nor is it a plug alias or MAC" in bad.stderr

"""Never do more than the user named: -c on every command, -H naming an outlet, and
requests checked before anything is sent.

Each command declares what it acts on (``scope``): ``outlet`` commands act on the
``-c`` outlet of a strip and nothing else; ``device`` commands act on the whole
device and refuse ``-c`` (and an ``-H`` that names an outlet) before one byte is
sent; ``local`` commands talk to no single plug and refuse ``-H``/``-c``. The
tables below name every command of the CLI: a new command without a case here
fails :func:`test_every_command_has_a_case`.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hs100local.cli import cli
from hs100local.inventory import Inventory
from hs100local.results import DiscoveredPlug, OutletInfo


def command_paths() -> dict[str, object]:
    """Every command and group of the CLI by its path ("time sync"), with its scope."""
    found: dict[str, object] = {}

    def walk(group, prefix: str) -> None:
        for name, command in group.commands.items():
            path = f"{prefix}{name}"
            found[path] = command
            if hasattr(command, "commands"):
                walk(command, path + " ")

    walk(cli, "")
    return found


# Arguments that make each device command do its thing when it is not refused.
DEVICE_ARGS = {
    "led": ["led", "off"],
    "reboot": ["reboot", "--delay", "0"],
    "reset": ["reset", "--yes"],
    "time": ["time"],
    "time sync": ["time", "sync"],
    "time set": ["time", "set", "2026-01-01T00:00:00"],
    "cloud": ["cloud", "info"],
    "cloud info": ["cloud", "info"],
    "cloud unbind": ["cloud", "unbind"],
    "cloud set-server": ["cloud", "set-server", "companion.lan"],
    "wifi": ["wifi", "scan"],
    "wifi scan": ["wifi", "scan"],
    "wifi join": ["wifi", "join", "home", "--password", "secret"],
    "raw": ["raw", '{"system":{"reboot":{"delay":0}}}'],
}
# Outlet commands with -c 2 on a strip, and what outlet 2 must look like afterwards.
OUTLET_ARGS = {
    "on": ["on"],
    "off": ["off"],
    "toggle": ["toggle"],
    "state": ["state"],
    "info": ["info"],
    "alias": ["alias", "Fan"],
    "emeter": ["emeter"],
    "emeter day": ["emeter", "day"],
    "emeter month": ["emeter", "month"],
    "schedule": ["schedule", "list"],
    "schedule list": ["schedule", "list"],
    "countdown": ["countdown", "list"],
    "countdown list": ["countdown", "list"],
}
# Commands that talk to no single plug; refused with -c before they start anything.
LOCAL_ARGS = {
    "discover": ["discover", "--no-save"],
    "plugs": ["plugs"],
    "plugs changes": ["plugs", "changes"],
    "plugs forget": ["plugs", "forget", "x"],
    "events": ["events"],
    "watch": ["watch"],
    "report": ["report"],
    "audit": ["audit"],
    "firewall": ["firewall"],
    "dns": ["dns"],
    "dns check": ["dns", "check", "example.com"],
    "ntp": ["ntp"],
    "serve": ["serve"],
    "emulate": ["emulate", "--port", "0"],
    "demo": ["demo"],
}


def test_every_command_has_a_case():
    paths = command_paths()
    by_scope: dict[str, set[str]] = {"device": set(), "outlet": set(), "local": set()}
    for path, command in paths.items():
        by_scope[command.scope].add(path)  # every command declares one
    assert by_scope["device"] == set(DEVICE_ARGS)
    assert by_scope["outlet"] == set(OUTLET_ARGS)
    assert by_scope["local"] == set(LOCAL_ARGS)


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env={"HS100LOCAL_HOST": None, **(env or {})})


def requests(emu) -> int:
    return emu.call(lambda: emu.server.requests)


def one_error(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hs100local: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("path", sorted(DEVICE_ARGS))
def test_device_commands_refuse_an_outlet_and_send_nothing(strip, path):
    before = [o.alias for o in strip.server.plug.outlets]
    result = run("-H", f"127.0.0.1:{strip.port}", "-c", "1", *DEVICE_ARGS[path])
    assert result.exit_code == 2, result.output
    line = one_error(result)
    words = [w for w in DEVICE_ARGS[path] if w in path.split() or w in ("info", "scan")]
    assert f"error: {' '.join(words)} acts on the whole device, not one outlet: drop -c" in line
    assert requests(strip) == 0
    assert [o.alias for o in strip.server.plug.outlets] == before
    # -c after the command is the same option
    late = run("-H", f"127.0.0.1:{strip.port}", *DEVICE_ARGS[path], "-c", "1")
    assert late.exit_code == 2 and requests(strip) == 0


def test_reset_of_one_outlet_never_resets_the_strip(strip):
    """The defect as reported: -c 1 reset --yes reset the whole HS300."""
    strip.call(lambda: strip.server.plug.outlets[0].__setattr__("alias", "Kettle"))
    result = run("-H", f"127.0.0.1:{strip.port}", "-c", "1", "reset", "--yes")
    assert result.exit_code == 2 and "Factory reset" not in result.output
    assert strip.call(lambda: strip.server.plug.outlets[0].alias) == "Kettle"
    assert strip.call(lambda: strip.server.plug.calls[("system", "reset")]) == 0


def strip_in_inventory(strip, tmp_path) -> str:
    """Name the emulated strip "Desk strip" and record it (its outlets' aliases are
    names -H resolves)."""
    strip.call(lambda: setattr(strip.server.plug, "alias", "Desk strip"))
    info = strip.call(lambda: strip.server.plug.get_sysinfo({}))
    children = tuple(
        OutletInfo(i + 1, c["id"], c["alias"], bool(c["state"]), 0)
        for i, c in enumerate(info["children"]))
    plug = DiscoveredPlug(
        host="127.0.0.1", port=strip.port, mac=info["mac"], alias="Desk strip",
        model=info["model"], hw_ver=info["hw_ver"], sw_ver=info["sw_ver"],
        device_id=info["deviceId"], state="off", protocol="xor", controllable=True,
        children=children)
    db = tmp_path / "inventory.db"
    with Inventory(db) as inventory:
        inventory.record([plug])
    return str(db)


def test_an_outlet_named_by_h_is_refused_by_device_commands(strip, tmp_path):
    db = strip_in_inventory(strip, tmp_path)
    result = run("--db", db, "-H", "Plug 3", "reboot")
    assert result.exit_code == 2
    line = one_error(result)
    assert "'Plug 3' is outlet 3 of 'Desk strip'; reboot acts on the whole device" in line
    assert requests(strip) == 0  # not even the address check
    # ... while the outlet commands act on that outlet alone
    assert run("--db", db, "-H", "Plug 3", "on").exit_code == 0
    assert strip.call(lambda: [o.on for o in strip.server.plug.outlets]) == [
        False, False, True, False, False, False]
    both = run("--db", db, "-H", "Plug 3", "-c", "2", "on")
    assert both.exit_code == 2
    assert "'Plug 3' already names outlet 3 of 'Desk strip'; drop -c" in one_error(both)
    assert requests(strip) == 3  # only the "on" above: address check, switch, read-back


@pytest.mark.parametrize("path", sorted(OUTLET_ARGS))
def test_outlet_commands_act_on_the_named_outlet_only(start_emulator, path):
    strip = start_emulator("hs300", load_w=40.0)
    host = f"127.0.0.1:{strip.port}"
    run("-H", host, "on")  # every outlet on
    result = run("-H", host, "-c", "2", "--json", *OUTLET_ARGS[path])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    outlets = strip.call(lambda: [(o.alias, o.on) for o in strip.server.plug.outlets])
    others = [on for i, (_alias, on) in enumerate(outlets) if i != 1]
    assert all(others), outlets  # no other outlet was switched
    if path in ("on", "toggle", "off"):
        assert outlets[1][1] is (path == "on")
    elif path == "state":
        assert (data["index"], data["state"]) == (2, "on")
    elif path == "info":
        assert (data["index"], data["alias"], data["state"]) == (2, "Plug 2", "on")
        assert data["emeter"]["power_w"] == 40.0  # its own meter
    elif path == "alias":
        assert data == {"alias": "Fan"} and outlets[1][0] == "Fan"
        assert [a for a, _on in outlets].count("Fan") == 1
    elif path == "emeter":
        assert (data["index"], data["power_w"]) == (2, 40.0)
    elif path.startswith("emeter "):
        assert isinstance(data, list)  # the outlet's own statistics, not a strip table
    else:
        assert data == []


def test_info_of_one_outlet_in_words(strip):
    host = f"127.0.0.1:{strip.port}"
    run("-H", host, "-c", "2", "on")
    lines = run("-H", host, "-c", "2", "info").stdout.splitlines()
    assert lines[0].startswith("Outlet:    2 of ")
    assert lines[1:3] == ["Alias:     Plug 2", f"ID:        {strip.server.plug.child_id(1)}"]
    assert lines[3].startswith("State:     ON for ")
    assert lines[4].startswith("Meter:     ") and "kWh" in lines[4]


@pytest.mark.parametrize("path", sorted(LOCAL_ARGS))
def test_commands_of_no_single_plug_refuse_h_and_c(path):
    result = run("-c", "1", *LOCAL_ARGS[path])
    assert result.exit_code == 2, result.output
    assert "does not talk to one plug: drop -c" in one_error(result)
    result = run("-H", "192.0.2.1", *LOCAL_ARGS[path])
    assert result.exit_code == 2 and "drop -H" in one_error(result)


def test_h_from_the_environment_does_not_bother_other_commands(tmp_path):
    result = run("--db", str(tmp_path / "x.db"), "plugs",
                 env={"HS100LOCAL_HOST": "192.0.2.1"})
    assert result.exit_code == 0 and "No plugs recorded yet" in result.stdout


def test_a_renamed_outlet_is_not_switched_by_its_old_name(strip, tmp_path):
    """The inventory said "Plug 2" is outlet 2; since then outlet 2 became "Heater" and
    outlet 3 "Plug 2". The old name must not switch the heater."""
    db = strip_in_inventory(strip, tmp_path)
    host = f"127.0.0.1:{strip.port}"
    assert run("-H", host, "-c", "2", "alias", "Heater").exit_code == 0
    assert run("-H", host, "-c", "3", "alias", "Plug 2").exit_code == 0
    result = run("--db", db, "-H", "Plug 2", "on")
    assert result.exit_code == 0, result.output
    assert strip.call(lambda: [o.on for o in strip.server.plug.outlets]) == [
        False, False, True, False, False, False]  # the outlet called "Plug 2" now
    assert run("-H", host, "-c", "3", "alias", "Lamp").exit_code == 0
    gone = run("--db", db, "-H", "Plug 2", "off")
    assert gone.exit_code == 2
    assert "no outlet of 'Desk strip' is called 'Plug 2' any more" in one_error(gone)
    assert strip.call(lambda: strip.server.plug.outlets[2].on) is True  # nothing switched
    # the inventory learnt the new names from the plug itself
    assert run("--db", db, "-H", "Heater", "on").exit_code == 0
    assert strip.call(lambda: strip.server.plug.outlets[1].on) is True


def test_a_renamed_plug_is_not_switched_by_its_old_name(strip, tmp_path):
    db = strip_in_inventory(strip, tmp_path)
    assert run("-H", f"127.0.0.1:{strip.port}", "alias", "Heater strip").exit_code == 0
    result = run("--db", db, "-H", "Desk strip", "on")
    assert result.exit_code == 2
    assert "'Desk strip' was the name of" in one_error(result)
    assert "now called 'Heater strip'" in result.stderr
    assert strip.call(lambda: [o.on for o in strip.server.plug.outlets]) == [False] * 6
    # renaming through the inventory updates it: the new name works at once
    assert run("--db", db, "-H", "Heater strip", "alias", "Desk").exit_code == 0
    assert run("--db", db, "-H", "Desk", "on").exit_code == 0
    assert strip.call(lambda: [o.on for o in strip.server.plug.outlets]) == [True] * 6


def test_an_outlet_alias_that_is_also_an_index_is_ambiguous(strip):
    host = f"127.0.0.1:{strip.port}"
    assert run("-H", host, "-c", "1", "alias", "2").exit_code == 0
    result = run("-H", host, "-c", "2", "on")
    assert result.exit_code == 2 and "'2' is outlet 2 and the alias of outlet 1" in \
        one_error(result)
    assert strip.call(lambda: [o.on for o in strip.server.plug.outlets]) == [False] * 6


def test_forget_and_audit_never_widen_an_outlet_to_the_strip(strip, tmp_path):
    db = strip_in_inventory(strip, tmp_path)
    forget = run("--db", db, "plugs", "forget", "Plug 4")
    assert forget.exit_code == 2
    assert "'Plug 4' is outlet 4 of 'Desk strip'; forget removes whole plugs" in \
        one_error(forget)
    audit = run("--db", db, "audit", "--plug", "Plug 4", "--fix")
    assert audit.exit_code == 2 and "audit looks at whole plugs" in one_error(audit)
    assert requests(strip) == 0
    listed = json.loads(run("--db", db, "--json", "plugs").stdout)
    assert [p["alias"] for p in listed] == ["Desk strip"]


def test_a_switch_the_plug_does_not_make_is_exit_1(emulator):
    emulator.call(lambda: setattr(emulator.server.plug, "set_relay_state",
                                  lambda params, targets: {}))
    result = run("-H", f"127.0.0.1:{emulator.port}", "on")
    assert result.exit_code == 1 and result.stdout == ""
    assert "accepted set_relay_state but the relay is still off" in one_error(result)

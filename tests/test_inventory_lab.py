"""The inventory in use: -H by alias/MAC, address changes, firmware and protocol changes.

Runs in a namespace lab (router + six emulated plugs, one an HS300 strip) because
following a plug to a new address means broadcasting for it. Every test starts
with its own empty inventory database.
"""

from __future__ import annotations

import json
import os

import netlab
import plug_lab
import pytest


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    netlab.require_netns()
    with netlab.Lab(prefix=f"hsi{os.getpid() % 100000}") as net:
        yield plug_lab.build(net, tmp_path_factory.mktemp("inv") / "unused.db",
                             plugs=6, second=0, klap=0)


@pytest.fixture
def plab(lab, tmp_path):
    lab.db = tmp_path / "inventory.db"
    return lab


def plug(plab, name: str) -> plug_lab.LabPlug:
    return next(p for p in plab.plugs if p.name == name)


def record_all(plab) -> list[dict]:
    return plab.discover_json("--expect", str(len(plab.plugs)), "--timeout", "10")


def json_out(plab, *args: str):
    return json.loads(plab.hs100local(*args, "--json").stdout)


def test_discover_records_every_plug(plab):
    found = record_all(plab)
    assert all(d["changes"][0]["kind"] == "new" for d in found)
    listed = json_out(plab, "plugs")
    assert sorted(r["mac"] for r in listed) == sorted(p.mac for p in plab.plugs)
    strip = next(r for r in listed if r["model"] == "HS300(US)")
    assert [c["alias"] for c in strip["children"]] == [f"Plug {i}" for i in range(1, 7)]
    table = plab.hs100local("plugs").stdout
    assert table.split()[:7] == ["ALIAS", "MAC", "HOST", "MODEL", "FIRMWARE", "PROTOCOL",
                                 "LAST"]
    # a second discovery changes nothing
    again = record_all(plab)
    assert all(d["changes"] == [] for d in again)


def test_alias_outlet_alias_and_mac_select_the_plug(plab):
    record_all(plab)
    p1 = plug(plab, "plug01")
    assert plab.hs100local("-H", "LAB PLUG01", "on").stdout.strip() == "Power ON"
    assert plab.hs100local("-H", p1.ip, "state").stdout.strip() == "Power ON"
    dashed = p1.mac.lower().replace(":", "-")
    assert plab.hs100local("state", "-H", dashed).stdout.strip() == "Power ON"
    outlet = json_out(plab, "-H", "plug 3", "state")
    assert (outlet["index"], outlet["alias"], outlet["state"]) == (3, "Plug 3", "off")
    plab.hs100local("-H", "Plug 3", "on")
    strip = plug(plab, "plug06")
    states = json_out(plab, "-H", strip.ip, "state")["outlets"]
    assert [o["state"] for o in states] == ["off", "off", "on", "off", "off", "off"]
    missing = plab.hs100local("-H", "no such plug", "on", check=False)
    assert missing.returncode == 2  # neither an alias nor a host name: said so
    assert missing.stderr.splitlines() == [
        "hs100local: error: 'no such plug': no plug in the inventory (6 plugs; see "
        "'hs100local plugs') has that alias, and no host has that name; "
        "see 'hs100local on --help'"]


def test_unknown_mac_is_found_by_broadcast_and_remembered(plab):
    p5 = plug(plab, "plug05")
    found = plab.hs100local("-H", p5.mac, "alias")
    assert found.stdout.strip() == p5.alias
    # A search takes seconds: it says so first, and where it broadcasts.
    assert found.stderr.startswith(f"hs100local: searching for {p5.mac} by broadcast on ")
    assert "(198.18." in found.stderr
    assert [r["mac"] for r in json_out(plab, "plugs")] == [p5.mac]


def test_address_change_is_followed(plab):
    record_all(plab)
    p2 = plug(plab, "plug02")
    new_ip = "198.18.0.99"
    # the plug's DHCP lease changed: same MAC, new address
    p2.host.run(["ip", "addr", "flush", "dev", "eth0"])
    p2.host.run(["ip", "addr", "add", f"{new_ip}/24", "dev", "eth0"])
    try:
        out = plab.hs100local("-H", p2.alias, "--timeout", "2", "on")
        assert out.stdout.strip() == "Power ON"
        assert plab.hs100local("-H", new_ip, "state").stdout.strip() == "Power ON"
        record = next(r for r in json_out(plab, "plugs") if r["mac"] == p2.mac)
        assert record["host"] == new_ip
        [change] = json_out(plab, "plugs", "changes", "--kind", "ip")
        assert (change["mac"], change["old"], change["new"]) == (p2.mac, p2.ip, new_ip)
    finally:
        p2.host.run(["ip", "addr", "flush", "dev", "eth0"])
        p2.host.run(["ip", "addr", "add", f"{p2.ip}/24", "dev", "eth0"])


def test_firmware_change_is_recorded_and_shown(plab):
    record_all(plab)
    p3 = plug(plab, "plug03")
    old = "1.2.5 Build 171213 Rel.101523"
    new = "1.2.6 Build 180112 Rel.000000"
    p3.start(sw_ver=new).wait_ready(30)
    try:
        out = plab.hs100local("discover", "--expect", str(len(plab.plugs))).stdout
        [line] = [ln for ln in out.splitlines() if ln.startswith("changed:")]
        assert p3.mac in line and old in line and new in line
        [change] = json_out(plab, "plugs", "changes", "--kind", "firmware")
        assert change["mac"] == p3.mac and new in change["new"] and old in change["old"]
    finally:
        p3.start().wait_ready(30)


def test_update_to_klap_firmware_is_reported_as_lost_control(plab):
    record_all(plab)
    p4 = plug(plab, "plug04")
    p4.start(protocol="klap").wait_ready(30)
    try:
        out = plab.hs100local("discover", "--expect", str(len(plab.plugs))).stdout
        changed = [ln for ln in out.splitlines() if ln.startswith("changed:")]
        assert any(p4.mac in ln and "local control" in ln for ln in changed), out
        record = next(r for r in json_out(plab, "plugs") if r["mac"] == p4.mac)
        assert (record["protocol"], record["controllable"], record["alias"]) == (
            "klap", False, p4.alias)  # the name survives the update
        denied = plab.hs100local("-H", p4.alias, "--timeout", "2", "on", check=False)
        assert denied.returncode == 3 and "9999" in denied.stderr
        # One error line, after the notice that it searched for the plug.
        lines = denied.stderr.strip().splitlines()
        assert [x for x in lines if "error:" in x] == lines[-1:]
        assert lines[0].startswith(f"hs100local: {p4.alias} ({p4.mac}) is not at ")
    finally:
        p4.start(protocol="xor").wait_ready(30)


def test_two_discovers_at_once_lose_nothing(plab):
    procs = [plab.popen("discover", "--expect", str(len(plab.plugs)), "--timeout", "10",
                        "--json") for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(len(json.loads(out)) == len(plab.plugs) for out, _err in outputs)
    listed = json_out(plab, "plugs")
    assert sorted(r["mac"] for r in listed) == sorted(p.mac for p in plab.plugs)
    news = json_out(plab, "plugs", "changes", "--kind", "new")
    assert sorted(c["mac"] for c in news) == sorted(p.mac for p in plab.plugs)

"""Discovery across a real (namespaced) LAN: two segments, 13 devices, no default route.

Each plug is an ``hs100local emulate`` process in its own network namespace; the
command under test runs in the "router" namespace, which has one interface per
segment and no default route (python-kasa's single 255.255.255.255 broadcast finds
nothing there). Needs root; skipped otherwise, failed in CI.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import netlab
import plug_lab
import pytest

from hs100local.emulator import MODELS
from hs100local.emulator.klap import KLAP_HARDWARE


@pytest.fixture(scope="module")
def plab(tmp_path_factory):
    netlab.require_netns()
    with netlab.Lab(prefix=f"hsd{os.getpid() % 100000}") as lab:
        yield plug_lab.build(lab, tmp_path_factory.mktemp("lab") / "inventory.db",
                             plugs=10, second=2, klap=1)


def check_fields(found: list[dict], expected: dict[str, plug_lab.LabPlug],
                 sweep: bool = False) -> None:
    assert sorted(d["host"] for d in found) == sorted(expected)
    for d in found:
        plug = expected[d["host"]]
        spec = MODELS[plug.model]
        assert d["mac"] == plug.mac
        assert d["model"] == spec.model
        assert d["interface"] == (None if sweep else plug.interface)
        if plug.protocol == "klap":
            assert (d["protocol"], d["controllable"], d["state"]) == ("klap", False, None)
            assert d["hw_ver"] == KLAP_HARDWARE.get(plug.model, spec.hw_ver)
            assert d["port"] in (20002, 20004) and "9999" in d["note"]
            continue
        assert (d["protocol"], d["controllable"], d["port"]) == ("xor", True, 9999)
        assert (d["alias"], d["sw_ver"], d["hw_ver"]) == (plug.alias, spec.sw_ver, spec.hw_ver)
        assert d["state"] == "off" and len(d["device_id"]) == 40
        assert [c["index"] for c in d["children"]] == list(range(1, spec.outlets + 1))


def test_router_has_no_default_route(plab):
    assert plab.router.run(["ip", "route", "show", "default"]).stdout.strip() == ""


def test_finds_every_device_on_both_interfaces(plab):
    found = plab.discover_json("--no-save")
    check_fields(found, plab.expected())
    assert {d["interface"] for d in found} == {"lan0", "lan1"}


def test_expect_returns_as_soon_as_all_answered(plab):
    started = time.monotonic()
    found = plab.discover_json("--expect", str(len(plab.plugs)), "--timeout", "30",
                               "--no-save")
    assert len(found) == len(plab.plugs)
    assert time.monotonic() - started < 15  # far below the 30 s window


def test_interface_restricts_the_broadcast(plab):
    found = plab.discover_json("-i", "lan1", "--no-save")
    check_fields(found, plab.expected("lan1"))


def test_human_table_lists_devices_and_explains_klap(plab):
    out = plab.hs100local("discover", "--no-save", "--expect", str(len(plab.plugs))).stdout
    assert out.splitlines()[0].split() == ["HOST", "MAC", "MODEL", "ALIAS", "STATE",
                                           "FIRMWARE", "PROTOCOL"]
    for plug in plab.plugs:
        assert plug.ip in out and plug.mac in out
    assert "outlet 6" in out  # the HS300's outlets are listed under it
    assert "198.18.0.200" in out and "klap (no local control)" in out
    assert "note: 198.18.0.200" in out and "Third-Party Compatibility" in out


@pytest.mark.parametrize("attempt", [1, 2])
def test_thirty_percent_loss_still_finds_everything(plab, attempt):
    methods = {plab.lab.set_loss(b, 30) for b in plab.bridges.values()}
    try:
        assert methods <= {"netem", "nftables"}
        found = plab.discover_json("--no-save")  # default 3 s window
    finally:
        for bridge in plab.bridges.values():
            plab.lab.clear_loss(bridge)
    check_fields(found, plab.expected())


def test_tcp_sweep_finds_plugs_and_klap(plab):
    found = plab.discover_json("--scan", "198.18.0.0/24", "--no-save")
    check_fields(found, plab.expected("lan0"), sweep=True)
    assert {d["via"] for d in found if d["protocol"] == "xor"} == {"tcp"}


def test_sweep_progress_bar_only_on_a_terminal(plab):
    # Piped: no progress bar on stderr, table on stdout.
    done = plab.hs100local("discover", "--scan", "198.18.1.0/28", "--no-save")
    assert "Sweeping" not in done.stderr
    assert "198.18.1.11" in done.stdout
    # On a terminal (script(1) gives the command a pty): a progress bar, then the table.
    command = f"{sys.executable} -m hs100local discover --scan 198.18.1.0/28 --no-save"
    shown = plab.router.run(["script", "-qec", command, "/dev/null"], env=plab.env())
    assert "Sweeping" in shown.stdout and "100%" in shown.stdout
    assert shown.stdout.index("100%") < shown.stdout.index("198.18.1.11")
    # --json on a terminal: still no bar, so the output stays parseable
    quiet = plab.router.run(["script", "-qec", command + " --json", "/dev/null"],
                            env=plab.env())
    assert "Sweeping" not in quiet.stdout


def test_python_kasa_sees_the_same_devices(plab):
    """A peer no one here wrote: kasa's discovery recognises our emulators (XOR) and
    the KLAP double as KLAP, from the same router namespace."""
    kasa = shutil.which("kasa")
    assert kasa, "python-kasa (test extra) provides the kasa command"
    out = plab.router.run([kasa, "--target", "198.18.0.255", "--discovery-timeout", "2",
                           "discover", "list"], timeout=60, env=plab.env()).stdout
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:] if ln.strip()}
    for ip, plug in plab.expected("lan0").items():
        assert ip in rows, out
        assert rows[ip][3] == ("KLAP" if plug.protocol == "klap" else "XOR")
        assert rows[ip][1] == MODELS[plug.model].model.split("(")[0]

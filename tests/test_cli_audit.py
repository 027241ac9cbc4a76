"""`hs100local audit [--fix]` end to end: emulated plugs on their own loopback addresses,
the companion's DNS (our sinkhole in-process, or dnsmasq as a DNS that leaks), events in
the store, and the firewall view injected (reading the live rules needs root and is
tested in test_firewall*.py). Driven through click's runner and once as a process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import prockit
import pytest
from click.testing import CliRunner, Result
from loopback_plugs import LoopbackPlugs
from servicekit import LoopThread, free_udp_tcp_port, start_dnsmasq, stop_process

from hs100local import audit_run, cli_audit
from hs100local import config as cfg
from hs100local.cli import cli
from hs100local.dns.rules import Sinkhole, default_rules
from hs100local.dns.server import DnsServer
from hs100local.events import EventStore
from hs100local.inventory import Inventory
from hs100local.timezones import host_index, zoneinfo_for

REPO = Path(__file__).resolve().parents[1]
View = audit_run.FirewallView
NO_RULES = View("no hs100local rules installed", frozenset(), frozenset())
UNREADABLE = View("nft: permission denied; iptables-save: permission denied", None, None)
LEAK = "198.18.100.10"
REAL_READ = audit_run.read_firewall


@pytest.fixture(autouse=True)
def _no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cfg, "DEFAULT_PATH", tmp_path / "etc" / "hs100local.toml")


class Lab(LoopbackPlugs):
    """Emulated plugs at 127.0.0.2, .3, … recorded in one inventory + event database."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path / "hs.db")
        self.tmp = tmp_path

    def covering(self, *aliases: str) -> View:
        """Rules covering the first plug by MAC, the others by address."""
        return View(f"nft: table inet hs100local covering {len(aliases)} plug(s)",
                    frozenset(self.macs[a] for a in aliases[:1]),
                    frozenset(self.hosts[a] for a in aliases[1:]))

    def config(self, dns_port: int | None, cloud: str = "127.0.0.1:8443") -> Path:
        dns = f'["127.0.0.1:{dns_port}"]' if dns_port else "false"
        path = self.tmp / "hs100local.toml"
        path.write_text(f'dns = {dns}\nntp = false\ncloud = ["{cloud}"]\ndb = "{self.db}"\n')
        return path

    def audit(self, config: Path, *args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(cli, ["audit", "--config", str(config), "--timeout", "2",
                                          *args])
        assert result.exit_code == code, (result.output, result.stderr, result.exception)
        return result

    def audit_json(self, config: Path, *args: str, code: int = 0) -> dict[str, Any]:
        return json.loads(self.audit(config, "--json", *args, code=code).stdout)


def rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["alias"]: p for p in data["plugs"]}


def use_firewall(monkeypatch: pytest.MonkeyPatch, view: View | Callable[[], View]) -> None:
    read = view if callable(view) else (lambda: view)
    monkeypatch.setattr(audit_run, "read_firewall", read)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    running = Lab(tmp_path)
    yield running
    running.close()


@pytest.fixture
def sinkhole() -> Iterator[int]:
    """The companion's DNS responder: the cloud names get the address asked on."""
    running = LoopThread(DnsServer(Sinkhole(default_rules()), None, [("127.0.0.1", 0)]))
    yield running.port
    running.close()


@pytest.fixture
def leaky_dns(tmp_path: Path) -> Iterator[int]:
    """A DNS that hands out a real (foreign) address for the cloud names."""
    proc, port = start_dnsmasq([f"--address=/tplinkcloud.com/{LEAK}",
                                f"--address=/tplinkra.com/{LEAK}"],
                               probe="n-devs.tplinkcloud.com", workdir=tmp_path)
    yield port
    stop_process(proc)


def test_all_isolated_json_and_text(lab: Lab, sinkhole: int,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    lab.add("Lamp")
    lab.add("Heater")
    use_firewall(monkeypatch, lab.covering("Lamp", "Heater"))
    config = lab.config(sinkhole)
    data = lab.audit_json(config)
    assert data["isolated"] is True and data["fixes"] == []
    assert data["dns"]["server"] == f"127.0.0.1:{sinkhole}"
    assert data["dns"]["status"] == "sinkholed"
    assert {a["name"] for a in data["dns"]["answers"]} >= {"n-devs.tplinkcloud.com"}
    assert data["firewall"].startswith("nft: table inet hs100local")
    plugs = rows(data)
    assert list(plugs) == ["Lamp", "Heater"]
    for alias, plug in plugs.items():
        assert (plug["mac"], plug["host"]) == (lab.macs[alias], lab.hosts[alias])
        assert plug["local"] is True and plug["local_error"] is None
        assert plug["cloud"] == {"username": "", "server": "n-devs.tplinkcloud.com",
                                 "bound": False, "connected": False}
        assert abs(plug["clock_offset_s"]) < 2
        assert plug["firewall"] is True and plug["verdict"] == "isolated"
        assert plug["reason"] == ("the firewall lets it reach only the companion; "
                                  "no cloud attempt recorded")
        assert plug["attempts"] == 0 and plug["notes"] == []
    lines = lab.audit(config).output.splitlines()
    assert lines[0].startswith(f"Companion DNS 127.0.0.1:{sinkhole}: cloud names sinkholed")
    assert lines[1].startswith("Firewall: nft: table inet hs100local")
    header = next(line for line in lines if line.startswith("PLUG"))
    assert header.split() == ["PLUG", "ADDRESS", "LOCAL", "PROTO", "CLOUD", "ATTEMPTS",
                              "CLOCK", "FIREWALL", "VERDICT"]
    lamp_row = next(line for line in lines if line.startswith("Lamp "))
    assert lab.hosts["Lamp"] in lamp_row and lamp_row.split()[-2:] == ["yes", "isolated"]
    for alias in ("Lamp", "Heater"):
        assert f"{alias}: isolated: the firewall lets it reach only the companion; " \
               "no cloud attempt recorded" in lines


def test_live_cloud_connection_leaks_and_a_dead_plug_depends_on_the_firewall(
        lab: Lab, sinkhole: int, monkeypatch: pytest.MonkeyPatch) -> None:
    lamp = lab.add("Lamp")
    lab.add("Heater")
    lab.add("Kettle")
    lamp.call(lamp.plug.cloud.update, {"cld_connection": 1})
    lab.stop("Kettle")
    config = lab.config(sinkhole)
    use_firewall(monkeypatch, lab.covering("Lamp", "Heater", "Kettle"))
    data = lab.audit_json(config, code=1)
    plugs = rows(data)
    assert data["isolated"] is False
    assert plugs["Lamp"]["verdict"] == "leaking" and plugs["Lamp"]["cloud"]["connected"]
    assert plugs["Lamp"]["reason"] == ("it reports a live cloud connection "
                                       "(server n-devs.tplinkcloud.com)")
    assert plugs["Heater"]["verdict"] == "isolated"
    kettle = plugs["Kettle"]
    assert kettle["local"] is False and kettle["local_error"]
    assert kettle["cloud"] is None and kettle["clock_offset_s"] is None
    assert (kettle["firewall"], kettle["verdict"]) == (True, "isolated")
    # the dead plug alone: covered -> isolated (exit 0), not covered -> unknown (exit 1)
    assert rows(lab.audit_json(config, "--plug", "Kettle"))["Kettle"]["verdict"] == "isolated"
    use_firewall(monkeypatch, lab.covering("Lamp", "Heater"))
    kettle = rows(lab.audit_json(config, "--plug", "Kettle", code=1))["Kettle"]
    assert (kettle["firewall"], kettle["verdict"]) == (False, "unknown")
    assert kettle["reason"] == f"no local answer ({kettle['local_error']}) and no firewall rules"
    text = lab.audit(config, code=1).output
    assert "Kettle  " in text and "Kettle: unknown: no local answer (" in text
    assert "CONNECTED n-devs.tplinkcloud.com" in text


def test_a_dns_that_leaks_or_is_silent(lab: Lab, leaky_dns: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    lab.add("Lamp")
    use_firewall(monkeypatch, NO_RULES)
    data = lab.audit_json(lab.config(leaky_dns), code=1)
    assert data["dns"]["status"] == "leaks"
    assert data["dns"]["detail"] == f"n-devs.tplinkcloud.com resolves to {LEAK}"
    lamp = rows(data)["Lamp"]
    assert (lamp["local"], lamp["firewall"], lamp["verdict"]) == (True, False, "leaking")
    assert lamp["reason"] == (f"no firewall rules, and n-devs.tplinkcloud.com resolves to "
                              f"{LEAK} through the companion")
    closed = free_udp_tcp_port()  # nothing listens there: the port is closed
    data = lab.audit_json(lab.config(closed), code=1)
    assert data["dns"]["status"] == "no_answer" and data["dns"]["answers"] == []
    lamp = rows(data)["Lamp"]
    assert lamp["verdict"] == "unknown"
    assert lamp["reason"].startswith("no firewall rules, and the companion's DNS did not "
                                     "answer: n-devs.tplinkcloud.com: ")
    off = rows(lab.audit_json(lab.config(None), code=1))["Lamp"]
    assert off["reason"] == "no firewall rules, and no DNS responder configured"


def test_one_leaking_name_is_a_leak_though_others_are_refused(
        lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab.add("Lamp")
    use_firewall(monkeypatch, NO_RULES)
    # no upstream: every name but this one is REFUSED
    proc, port = start_dnsmasq([f"--address=/n-devs.tplinkcloud.com/{LEAK}"],
                               probe="n-devs.tplinkcloud.com", workdir=tmp_path)
    try:
        data = lab.audit_json(lab.config(port), code=1)
    finally:
        stop_process(proc)
    assert data["dns"]["status"] == "leaks"
    assert rows(data)["Lamp"]["verdict"] == "leaking"


def test_unreadable_firewall_is_a_question_mark(lab: Lab, sinkhole: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    lab.add("Lamp")
    use_firewall(monkeypatch, UNREADABLE)
    config = lab.config(sinkhole)
    lamp = rows(lab.audit_json(config, code=1))["Lamp"]
    assert (lamp["firewall"], lamp["verdict"]) == (None, "unknown")
    assert "unreadable" in lamp["reason"]
    lines = lab.audit(config, code=1).output.splitlines()
    assert "Firewall: nft: permission denied; iptables-save: permission denied" in lines
    assert next(x for x in lines if x.startswith("Lamp ")).split()[-2:] == ["?", "unknown"]
    # the same through the real read_firewall, from what firewall.installed() says
    from hs100local import firewall

    use_firewall(monkeypatch, REAL_READ)
    monkeypatch.setattr(firewall, "installed", lambda: firewall.FirewallState(
        None, "nft not found; iptables-save not found", unreadable=True))
    lamp = rows(lab.audit_json(config, code=1))["Lamp"]
    assert lamp["firewall"] is None and "firewall rules unreadable" in lamp["reason"]


def test_recorded_events_prove_dns_only_isolation(lab: Lab, sinkhole: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    lab.add("Lamp")
    lab.add("Heater")
    use_firewall(monkeypatch, NO_RULES)
    now, mac, host = time.time(), lab.macs["Lamp"], lab.hosts["Lamp"]
    with EventStore(lab.db) as store:
        for at in (now - 600, now - 300):
            store.record("tls", host, {"local_port": 50443, "ja3_hash": "h1", "sni": None,
                                       "outcome": "unknown_ca"}, at=at, plug=mac)
        store.record("dns", host, {"name": "n-devs.tplinkcloud.com", "type": "A",
                                   "action": "redirect"}, at=now - 290, plug=mac)
        store.record("tls", host, {"local_port": 443, "ja3_hash": "h2", "sni": None,
                                   "outcome": "completed"}, at=now - 3 * 86400, plug=mac)
    config = lab.config(sinkhole)
    data = lab.audit_json(config, code=1)  # Heater: nothing of it seen
    lamp, heater = rows(data)["Lamp"], rows(data)["Heater"]
    assert (lamp["attempts"], lamp["outcomes"], lamp["lookups"]) == (2, {"unknown_ca": 2}, 1)
    assert (lamp["firewall"], lamp["verdict"]) == (False, "isolated")
    assert lamp["reason"] == ("DNS only (no firewall rules): its lookups come to us and get "
                              "the sinkhole; 2 cloud attempts reached only us and were refused "
                              "by its CA pinning")
    assert (heater["attempts"], heater["verdict"]) == (0, "unknown")
    assert "DHCP" in heater["reason"]
    text = lab.audit(config, code=1).output
    assert "2 (unknown_ca 2)" in text and "Heater: unknown: " in text
    # a wider window takes in the old handshake that completed: said in the notes
    lamp = rows(lab.audit_json(config, "--since", "7d", code=1))["Lamp"]
    assert lamp["attempts"] == 3 and lamp["outcomes"] == {"unknown_ca": 2, "completed": 1}
    assert any("does not pin" in note for note in lamp["notes"])
    assert lamp["reason"].endswith("3 cloud attempts reached only us")


def test_plug_selection_and_errors(lab: Lab, sinkhole: int, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    use_firewall(monkeypatch, NO_RULES)
    config = lab.config(sinkhole)
    missing = lab.audit(config, code=3)  # no inventory file yet
    assert missing.stdout == ""
    assert missing.stderr == (f"hs100local: error: no inventory at {lab.db}: run "
                              "'hs100local discover' first\n")
    Inventory(lab.db).close()
    empty = lab.audit(config, code=3)
    assert empty.stderr.startswith("hs100local: error: no plugs in the inventory")
    lab.add("Lamp")
    lab.add("Heater")
    only = lab.audit_json(config, "--plug", "heater", code=1)
    assert [p["alias"] for p in only["plugs"]] == ["Heater"]
    by_mac = lab.audit_json(config, "--plug", lab.macs["Lamp"].lower(), code=1)
    assert [p["alias"] for p in by_mac["plugs"]] == ["Lamp"]
    unknown = lab.audit(config, "--plug", "Nope", code=2)
    assert unknown.stderr.splitlines() == [
        "hs100local: error: no plug 'Nope' in the inventory (see 'hs100local plugs'); "
        "see 'cli audit --help'"]
    assert "--since" in lab.audit(config, "--since", "bogus", code=2).stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('dns = "not-an-address"\n')
    result = CliRunner().invoke(cli, ["audit", "--config", str(bad)])
    assert result.exit_code == 2 and "--config" in result.stderr
    assert "key 'dns'" in result.stderr
    gone = CliRunner().invoke(cli, ["audit", "--config", str(tmp_path / "nope.toml")])
    assert gone.exit_code == 2 and "cannot read" in gone.stderr


class FakeFirewall:
    """``_apply_firewall`` stand-in: records the plugs, then the rules "cover" them."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.calls: list[list[str]] = []

    def apply(self, _config: Any, plugs: list[Any]) -> str:
        self.calls.append([p.alias for p in plugs])
        return "applied nft"

    def read(self) -> View:
        return self.lab.covering(*self.calls[-1]) if self.calls else NO_RULES


def fake_firewall(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> FakeFirewall:
    fake = FakeFirewall(lab)
    monkeypatch.setattr(cli_audit, "_apply_firewall", fake.apply)
    use_firewall(monkeypatch, fake.read)
    return fake


def actions(data: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(f["plug"], f["action"]): f["result"] for f in data["fixes"]}


def test_fix_unbinds_sets_clocks_applies_the_firewall_and_audits_again(
        lab: Lab, sinkhole: int, monkeypatch: pytest.MonkeyPatch) -> None:
    lamp = lab.add("Lamp", bound_user="someone@example.com")
    heater = lab.add("Heater", clock_start=datetime(2000, 1, 1))
    ahead = datetime.now(zoneinfo_for(host_index())) + timedelta(minutes=5)
    kettle = lab.add("Kettle", clock_start=ahead)
    fake = fake_firewall(lab, monkeypatch)
    config = lab.config(sinkhole, cloud="127.0.0.9:443")
    assert not rows(lab.audit_json(config, code=1))["Lamp"]["firewall"]
    result = lab.audit(config, "--fix")
    assert fake.calls == [["Lamp", "Heater", "Kettle"]]
    assert lamp.plug.cloud["binded"] == 0 and lamp.plug.cloud["username"] == ""
    assert lamp.plug.cloud["server"] == "n-devs.tplinkcloud.com"  # loopback: not pointed
    assert heater.plug.time_synced and kettle.plug.time_synced
    lines = result.output.splitlines()
    assert "Fixed: Lamp: unbind: done" in lines
    assert "Fixed: all: firewall: applied nft" in lines
    assert any(x.startswith("Fixed: -: set_server_url: skipped") for x in lines)
    assert any(x.startswith("Fixed: Heater: time: ") for x in lines)
    assert any(re.fullmatch(r"Fixed: Kettle: time: fixed \(was \+(299|300)\.\d s\)", x)
               for x in lines)
    assert not any(x.startswith("Fixed: Lamp: time") for x in lines)
    for alias in ("Lamp", "Heater", "Kettle"):
        assert f"{alias}: isolated: the firewall lets it reach only the companion; " \
               "no cloud attempt recorded" in lines
    again = lab.audit_json(config)
    assert all(abs(p["clock_offset_s"]) < 2 and not p["cloud"]["bound"]
               for p in again["plugs"])


def test_fix_of_one_plug_covers_everyone_and_points_the_cloud_server(
        lab: Lab, sinkhole: int, monkeypatch: pytest.MonkeyPatch) -> None:
    lab.add("Lamp")
    heater = lab.add("Heater", clock_start=datetime(2000, 1, 1))
    kettle = lab.add("Kettle", clock_start=datetime(2000, 1, 1))
    fake = fake_firewall(lab, monkeypatch)
    # a LAN address for the cloud listener (only written into the plug, never contacted)
    config = lab.config(sinkhole, cloud="198.18.0.2:443")
    data = lab.audit_json(config, "--fix", "--plug", "Heater")
    assert fake.calls == [["Lamp", "Heater", "Kettle"]]  # the table is replaced whole
    assert [p["alias"] for p in data["plugs"]] == ["Heater"]
    done = actions(data)
    assert done[("Heater", "set_server_url")] == "now 198.18.0.2"
    assert done[("all", "firewall")] == "applied nft"
    assert ("Heater", "time") in done and ("Kettle", "time") not in done
    assert heater.plug.cloud["server"] == "198.18.0.2"
    assert kettle.plug.cloud["server"] == "n-devs.tplinkcloud.com"
    assert heater.plug.time_synced and not kettle.plug.time_synced
    heater_row = data["plugs"][0]
    assert heater_row["verdict"] == "isolated" and abs(heater_row["clock_offset_s"]) < 2
    assert heater_row["cloud"]["server"] == "198.18.0.2"


def test_fix_reboots_a_plug_holding_a_cloud_connection(
        lab: Lab, sinkhole: int, monkeypatch: pytest.MonkeyPatch) -> None:
    lamp = lab.add("Lamp")
    lamp.call(lamp.plug.cloud.update, {"cld_connection": 1})
    plug = lamp.plug  # the connection dies with the reboot, as on a real plug
    fake_firewall(lab, monkeypatch)
    data = lab.audit_json(lab.config(sinkhole), "--fix")
    assert actions(data)[("Lamp", "reboot")].startswith("done")
    assert plug.reboot_count == 1
    assert rows(data)["Lamp"]["verdict"] == "isolated"
    assert rows(data)["Lamp"]["cloud"]["connected"] is False


def test_as_a_process(lab: Lab, sinkhole: int) -> None:
    """The real firewall reader runs here (read-only): a live cloud connection is
    leaking whatever it finds, so the verdicts do not depend on this host's rules."""
    config = lab.config(sinkhole)  # its db is the lab's: it wins over HS100LOCAL_DB
    env = {**os.environ, "HS100LOCAL_DB": str(lab.tmp / "elsewhere.db")}
    command = [sys.executable, "-m", "hs100local", "audit", "--config", str(config)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return prockit.run([*command, *args], env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=60, check=False)

    missing = run()
    assert missing.returncode == 3 and missing.stdout == ""
    assert missing.stderr.startswith("hs100local: error: no inventory at ")
    assert len(missing.stderr.splitlines()) == 1
    lamp = lab.add("Lamp")
    lamp.call(lamp.plug.cloud.update, {"cld_connection": 1})
    leaking = run("--json", "--timeout", "2")
    assert leaking.returncode == 1, leaking.stderr
    data = json.loads(leaking.stdout)
    assert data["dns"]["status"] == "sinkholed" and data["isolated"] is False
    assert rows(data)["Lamp"]["verdict"] == "leaking"
    text = run()
    assert text.returncode == 1 and "Lamp: leaking: it reports a live cloud" in text.stdout
    elsewhere = run("--db", str(lab.tmp / "elsewhere.db"))  # --db wins over the config
    assert elsewhere.returncode == 3 and "elsewhere.db" in elsewhere.stderr

"""`hs100local firewall`: the plan, the four renderers, the real tools' verdict, the CLI.

Renderers are pure functions of a plan, so most of this runs without root. The real
tools (nft -c, iptables-restore --test, dnsmasq --test) are the authority on whether
the text is valid; the packet-filter checks run inside a throwaway network namespace
(they need CAP_NET_ADMIN, and nothing here may touch the host's firewall).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import netlab
import prockit
import pytest
from click.testing import CliRunner

from hs100local import config
from hs100local.cli import cli
from hs100local.dns.rules import CLOUD_SUFFIXES, NTP_SUFFIXES
from hs100local.firewall import apply as live
from hs100local.firewall.iptables import ipv4_tables
from hs100local.firewall.plan import (
    PlanError,
    PlugSpec,
    build_plan,
    companion_services,
    plugs_from,
    plugs_from_inventory,
)
from hs100local.firewall.render import render
from hs100local.firewall.uci import all_section_names
from hs100local.inventory import Inventory
from hs100local.results import DiscoveredPlug

REPO = Path(__file__).resolve().parents[1]
LAMP, KETTLE = "50:C7:BF:00:00:01", "50:C7:BF:00:00:02"
COMPANION = "198.18.1.1"
LAN = "198.18.2.0/24"
BASE = ["--companion", COMPANION, "--lan", LAN]


def make_plan(fmt: str = "nft", *, macs=(LAMP,), ips=("198.18.1.50",), configured=None,
              companion: str | None = COMPANION, lan=(LAN,), zone: str = "lan"):
    return build_plan(plugs_from(macs, ips), companion_services(configured, companion),
                      lan, fmt, zone)


@pytest.fixture(autouse=True)
def _no_host_config(monkeypatch, tmp_path) -> None:
    """A machine with /etc/hs100local must not change what these tests see."""
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")


def invoke(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, ["firewall", *args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    assert stderr.count("\n") == 1 and stderr.startswith("hs100local: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


# ------------------------------------------------------------------ the plan


def test_plan_is_sorted_deduplicated_and_describes_itself():
    plugs = plugs_from(["50-c7-bf-00-00-02", "50c7bf000001", LAMP],
                       ["198.18.1.60", "198.18.1.9"])
    plan = build_plan(plugs, companion_services(None, COMPANION), ["198.18.2.77/24"], "nft")
    assert plan.macs == (LAMP, KETTLE)
    assert plan.ips == ("198.18.1.9", "198.18.1.60")  # numerically, not as text
    assert plan.lan == (LAN,)  # host bits dropped
    data = plan.as_dict()
    assert data["companion"] == [COMPANION] and data["format"] == "nft"
    assert data["dns"] == [f"{COMPANION}:53"] and data["ntp"] == [f"{COMPANION}:123"]
    assert data["cloud"] == [f"{COMPANION}:443", f"{COMPANION}:50443"]
    assert len(data["plugs"]) == 4 and data["lan"] == [LAN]


@pytest.mark.parametrize("mac", ["zz:00:00:00:00:01", "50:c7:bf:00:00", "01:00:5e:00:00:01",
                                 "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "50:c7;bf:00:00:01"])
def test_bad_macs_are_refused(mac):
    with pytest.raises(PlanError, match="MAC"):
        plugs_from([mac], [])


@pytest.mark.parametrize("ip", ["300.1.1.1", "127.0.0.1", "0.0.0.0", "224.0.0.1", "::1",
                                "198.18.1.5/24", "198.18.1.5; drop", "255.255.255.255"])
def test_bad_addresses_are_refused(ip):
    with pytest.raises(PlanError, match="address"):
        plugs_from([], [ip])


@pytest.mark.parametrize("lan", ["198.18.2.0/33", "127.0.0.0/8", "lan", "2001:db8::/64",
                                 '198.18.2.0/24"'])
def test_bad_lan_networks_are_refused(lan):
    with pytest.raises(PlanError, match="LAN network"):
        make_plan(lan=(lan,))


def test_bad_zone_and_unknown_format_are_refused():
    with pytest.raises(PlanError, match="zone"):
        make_plan("uci", zone="lan' ; reboot")
    with pytest.raises(PlanError, match="format"):
        make_plan("pf")


def test_filter_formats_need_plugs_and_lan_but_dnsmasq_does_not():
    with pytest.raises(PlanError, match="no plugs"):
        make_plan(macs=(), ips=())
    with pytest.raises(PlanError, match="no LAN"):
        make_plan(lan=())
    assert make_plan("dnsmasq", macs=(), ips=(), lan=()).plugs == ()


def test_a_plug_cannot_be_the_companion():
    with pytest.raises(PlanError, match="both a plug and the companion"):
        make_plan(ips=(COMPANION,))


def test_loopback_only_config_is_refused_and_companion_overrides_addresses():
    demo = {"dns": (("127.0.0.1", 5353),), "ntp": (("127.0.0.1", 1123),),
            "cloud": (("127.0.0.1", 8443),)}
    with pytest.raises(PlanError, match="--companion"):
        companion_services(demo, None)
    with pytest.raises(PlanError, match="--companion"):
        companion_services(None, None)  # no config file: the demo defaults
    moved = companion_services(demo, "198.18.1.2")  # the config's ports stay
    assert moved == {"dns": (("198.18.1.2", 5353),), "ntp": (("198.18.1.2", 1123),),
                     "cloud": (("198.18.1.2", 8443),)}
    with pytest.raises(PlanError, match="--companion"):
        companion_services(None, "::1")


def test_wildcard_and_disabled_services_go_to_the_companion_address():
    configured = {"dns": (("0.0.0.0", 53),), "ntp": (), "cloud": (),
                  "extra": (("198.18.1.7", 1),)}
    services = companion_services(configured, None)
    # dns on 0.0.0.0 and ntp off: both at the first usable address, cloud stays off
    assert services["dns"] == (("198.18.1.7", 53),)
    assert services["ntp"] == (("198.18.1.7", 123),)
    assert services["cloud"] == ()


def test_redirects_follow_the_listeners():
    configured = {"dns": (("198.18.1.1", 5353),), "ntp": (("198.18.1.3", 123),),
                  "cloud": (("198.18.1.1", 8443), ("198.18.1.1", 50443))}
    plan = make_plan(configured=configured, companion=None)
    found = {(r.proto, r.port): (r.to_address, r.to_port, r.skip_target)
             for r in plan.redirects()}
    assert found == {
        ("udp", 53): ("198.18.1.1", 5353, False),  # another port: DNAT even to ourselves
        ("tcp", 53): ("198.18.1.1", 5353, False),
        ("udp", 123): ("198.18.1.3", 123, True),
        ("tcp", 443): ("198.18.1.1", 8443, False),  # no listener on 443: the first one
        ("tcp", 50443): ("198.18.1.1", 50443, True),
    }
    no_cloud = make_plan(configured={**configured, "cloud": ()}, companion=None)
    assert all(r.label != "cloud" for r in no_cloud.redirects())
    assert all(a.label != "cloud listener" for a in no_cloud.allows())
    assert "443" not in render(no_cloud)


def test_inventory_records_become_mac_and_address_plugs():
    class Record:
        def __init__(self, mac: str, host: str, alias: str) -> None:
            self.mac, self.host, self.alias = mac, host, alias

    plugs = plugs_from_inventory([Record(LAMP, "198.18.1.50", "Lamp"),
                                  Record(KETTLE, "fe80::1", "v6 only")])
    assert plugs == [PlugSpec(LAMP, "198.18.1.50", "Lamp"), PlugSpec(KETTLE, None, "v6 only")]


# ------------------------------------------------------------------ renderers


def _chain(text: str, name: str) -> list[str]:
    """The rule lines of one nft chain."""
    block = re.search(rf"\n\tchain {name} {{\n(.*?)\n\t}}", text, re.S)
    assert block, name
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_nft_policy():
    text = render(make_plan())
    assert text.splitlines()[3:6] == ["table inet hs100local", "delete table inet hs100local",
                                      "table inet hs100local {"]
    assert "elements = { 50:c7:bf:00:00:01 }" in text
    assert "elements = { 198.18.1.50 }" in text and f"elements = {{ {LAN} }}" in text
    assert "type ether_addr" in text and "flags interval" in text
    for base in ("input", "forward"):
        rules = _chain(text, base)
        assert rules[0].startswith("type filter hook")
        assert rules[1].startswith("ct state related accept")  # first
        assert rules[2].startswith("ct state established ct direction reply accept")
    assert "ether saddr @plug_macs jump plug_in" in text
    assert "ip saddr @plug_ipv4 jump plug_fwd" in text
    plug_in = _chain(text, "plug_in")
    assert plug_in[-1].startswith("jump refuse")
    assert any(r.startswith(f"ip daddr {COMPANION} udp dport 53 accept") for r in plug_in)
    assert any(r.startswith(f"ip daddr {COMPANION} tcp dport 53 accept") for r in plug_in)
    assert any(r.startswith(f"ip daddr {COMPANION} udp dport 123 accept") for r in plug_in)
    assert any("tcp dport { 443, 50443 } accept" in r for r in plug_in)
    assert any("udp dport 67 accept" in r for r in plug_in)
    assert any("udp sport { 9999, 20002, 20004 } accept" in r for r in plug_in)
    plug_fwd = _chain(text, "plug_fwd")  # no DHCP or discovery exemption when routed
    assert not any("67" in r or "sport" in r for r in plug_fwd)
    assert _chain(text, "refuse") == [
        'meta l4proto tcp reject with tcp reset comment "hs100local: fail fast"',
        'reject with icmpx type admin-prohibited comment "hs100local: fail fast"']
    assert _chain(text, "to_plug")[0].startswith(
        "ip saddr @lan_ipv4 meta l4proto { tcp, udp } th dport 9999 accept")
    redirect = _chain(text, "plug_redirect")
    assert redirect[0].startswith(f"ip daddr != {COMPANION} udp dport 53 dnat ip to "
                                  f"{COMPANION}:53")
    assert len(redirect) == 5
    assert "hook prerouting priority dstnat - 5" in text
    # every rule is ours by its table; each also says so
    for name in ("input", "forward", "plug_in", "plug_fwd", "to_plug", "refuse",
                 "prerouting", "plug_redirect"):
        assert all('comment "hs100local' in r for r in _chain(text, name)
                   if not r.startswith("type ")), name


def test_iptables_policy():
    text = render(make_plan("iptables"))
    rules = [line for line in text.splitlines() if line.startswith(("-A", "-I"))]
    assert all("--comment" in r and "hs100local" in r for r in rules)
    assert all(c.startswith(":HS100LOCAL-") for c in text.splitlines() if c.startswith(":"))
    assert "-j ACCEPT" not in text  # allowed traffic goes back to the user's own rules
    assert "-I INPUT 1 -m comment --comment hs100local -j HS100LOCAL-INPUT" in rules
    assert "-I FORWARD 1 -m comment --comment hs100local -j HS100LOCAL-FORWARD" in rules
    assert "-I PREROUTING 1 -m comment --comment hs100local -j HS100LOCAL-PREROUTING" in rules
    for chain in ("HS100LOCAL-INPUT", "HS100LOCAL-FORWARD"):
        first = next(r for r in rules if r.startswith(f"-A {chain} "))
        assert "--ctstate RELATED " in first
        second = [r for r in rules if r.startswith(f"-A {chain} ")][1]
        assert "--ctstate ESTABLISHED --ctdir REPLY" in second
    assert f"-m mac --mac-source {LAMP}" in text and "-s 198.18.1.50/32" in text
    assert "-d 198.18.1.50/32 -m comment --comment \"hs100local: to a plug\"" in text
    assert "-j REJECT --reject-with tcp-reset" in text
    assert "-j REJECT --reject-with icmp-admin-prohibited" in text
    assert f"-s {LAN} -p tcp -m tcp --dport 9999" in text
    assert (f"! -d {COMPANION}/32 -p udp -m udp --dport 53 -m comment --comment \"hs100local:"
            f" plug DNS to ours\" -j DNAT --to-destination {COMPANION}:53") in text
    assert text.count("COMMIT") == 2 and "*filter" in text and "*nat" in text


def test_ip6tables_refuses_plug_macs_only():
    text = render(make_plan("ip6tables"))
    assert f"-A HS100LOCAL-INPUT -m mac --mac-source {LAMP}" in text
    assert "icmp6-adm-prohibited" in text and "198.18" not in text.split("*filter")[1]
    empty = render(make_plan("ip6tables", macs=()))
    assert "*filter" not in empty and "nothing to refuse over IPv6" in empty


def test_uci_policy():
    text = render(make_plan("uci"))
    lines = text.splitlines()
    assert lines[-1] == "commit firewall" and lines[-2].startswith("# Commit")
    written = sorted({m.group(1) for m in re.finditer(r"^set firewall\.(\w+)=", text, re.M)})
    assert written and all(n.startswith("hs100local_") for n in written)
    deleted = {m.group(1) for m in re.finditer(r"^delete firewall\.(\w+)$", text, re.M)}
    assert set(written) <= deleted == set(all_section_names())  # a rerun replaces all
    assert text.index("delete firewall.") < text.index("set firewall.")
    assert f"add_list firewall.hs100local_in_dns_mac.src_mac='{LAMP}'" in lines
    assert "add_list firewall.hs100local_in_dns_ip.src_ip='198.18.1.50'" in lines
    assert "set firewall.hs100local_in_refuse_mac.target='REJECT'" in lines
    assert "set firewall.hs100local_in_refuse_mac.family='any'" in lines  # IPv6 too
    assert "set firewall.hs100local_fwd_refuse_ip.dest='*'" in lines
    assert "set firewall.hs100local_dnat_dns_ip=redirect" in lines
    assert f"set firewall.hs100local_dnat_dns_ip.src_dip='!{COMPANION}'" in lines
    assert f"add_list firewall.hs100local_lan_to_plug.src_ip='{LAN}'" in lines
    assert "reorder firewall.hs100local_in_dns_mac=0" in lines
    other_zone = render(make_plan("uci", zone="iot"))
    assert "set firewall.hs100local_in_dns_mac.src='iot'" in other_zone


def test_dnsmasq_names_go_to_the_cloud_listener_and_ntp_server():
    configured = {"dns": (("198.18.1.1", 53),), "ntp": (("198.18.1.3", 123),),
                  "cloud": (("198.18.1.2", 443),)}
    lines = render(make_plan("dnsmasq", configured=configured, companion=None)).splitlines()
    for name in CLOUD_SUFFIXES:
        assert f"local=/{name}/" in lines and f"address=/{name}/198.18.1.2" in lines
    for name in NTP_SUFFIXES:
        assert f"local=/{name}/" in lines and f"address=/{name}/198.18.1.3" in lines
    no_cloud = render(make_plan("dnsmasq", configured={**configured, "cloud": ()},
                                companion=None))
    assert "address=/tplinkcloud.com/198.18.1.1" in no_cloud  # refused there, not lost


@pytest.mark.parametrize("fmt", ["nft", "iptables", "ip6tables", "uci", "dnsmasq"])
def test_output_is_deterministic_and_has_no_user_text(fmt):
    plugs = [PlugSpec(LAMP, "198.18.1.50", 'Evil" alias\n; drop'),
             PlugSpec(KETTLE, "198.18.1.9", "Kettle")]
    services = companion_services(None, COMPANION)
    one = render(build_plan(plugs, services, [LAN, "198.18.3.0/24"], fmt))
    other = render(build_plan(plugs[::-1], services, ["198.18.3.0/24", LAN, LAN], fmt))
    assert one == other and one.endswith("\n")
    assert "Evil" not in one and "Kettle" not in one  # aliases never reach a rule


def test_apply_script_replaces_old_jumps_and_stale_chains():
    saved = "\n".join([
        "# Generated by iptables-save", "*filter", ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]", ":HS100LOCAL-INPUT - [0:0]", ":HS100LOCAL-OLD - [0:0]",
        "-A INPUT -m comment --comment hs100local -j HS100LOCAL-INPUT",
        "-A INPUT -m comment --comment hs100local -j HS100LOCAL-INPUT",  # applied by hand
        '-A INPUT -s 10.0.0.1/32 -m comment --comment "not -j HS100LOCAL-X" -j ACCEPT',
        "-A FORWARD -j HS100LOCAL-OLD",
        "-A HS100LOCAL-INPUT -j HS100LOCAL-OLD", "COMMIT"])
    assert live.parse_save(saved) == (
        ["HS100LOCAL-INPUT", "HS100LOCAL-OLD"],
        ["INPUT -m comment --comment hs100local -j HS100LOCAL-INPUT"] * 2
        + ["FORWARD -j HS100LOCAL-OLD"])
    desired = ipv4_tables(make_plan("iptables"))[0]
    script = live.iptables_script("filter", desired, saved)
    assert script is not None
    lines = script.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    assert lines.count("-D INPUT -m comment --comment hs100local -j HS100LOCAL-INPUT") == 2
    assert "-D FORWARD -j HS100LOCAL-OLD" in lines and "-X HS100LOCAL-OLD" in lines
    assert ":HS100LOCAL-OLD - [0:0]" in lines  # flushed before it is deleted
    assert lines.index("-X HS100LOCAL-OLD") > lines.index("-D FORWARD -j HS100LOCAL-OLD")
    assert not any("10.0.0.1" in line or ":INPUT" in line for line in lines)
    assert lines[-3:-1] == ["-I INPUT 1 -m comment --comment hs100local -j HS100LOCAL-INPUT",
                            "-I FORWARD 1 -m comment --comment hs100local -j "
                            "HS100LOCAL-FORWARD"]
    removal = live.iptables_script("filter", None, saved)
    assert removal is not None and "-X HS100LOCAL-INPUT" in removal and "-A " not in removal
    clean = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"
    assert live.iptables_script("filter", None, clean) is None


def test_coverage_is_read_back_from_nft_json_and_iptables_save():
    nft_json = json.dumps({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "hs100local"}},
        {"set": {"family": "inet", "table": "hs100local", "name": "plug_macs",
                 "elem": "50:c7:bf:00:00:01"}},
        {"set": {"family": "inet", "table": "hs100local", "name": "plug_ipv4",
                 "elem": ["198.18.1.50", {"elem": {"val": "198.18.1.9", "comment": "x"}}]}},
        {"set": {"family": "inet", "table": "hs100local", "name": "lan_ipv4",
                 "elem": [{"prefix": {"addr": "198.18.2.0", "len": 24}},
                          {"range": ["198.18.3.1", "198.18.3.9"]}]}},
        {"set": {"family": "inet", "table": "other", "name": "plug_macs", "elem": ["x"]}}]})
    assert live.parse_nft_json(nft_json) == {
        "plug_macs": ["50:c7:bf:00:00:01"], "plug_ipv4": ["198.18.1.50", "198.18.1.9"],
        "lan_ipv4": ["198.18.2.0/24", "198.18.3.1-198.18.3.9"]}
    saved = render(make_plan("iptables")).replace(LAMP, LAMP.lower())
    assert live.parse_iptables_coverage(saved) == (
        [LAMP.lower(), LAMP.lower(), LAMP.lower()], ["198.18.1.50"] * 3, [LAN, LAN])


def test_installed_never_raises_without_tools(monkeypatch):
    def missing(name: str) -> str:
        raise live.MissingTool(f"{name} not found: install the Debian package "
                               f"{live.PACKAGES[name]}")

    monkeypatch.setattr(live, "_executable", missing)
    state = live.installed()
    assert state.rules is None and state.unreadable  # cannot tell, rather than "none"
    assert "install the Debian package nftables" in state.reason
    assert "install the Debian package iptables" in state.reason


def test_installed_covers():
    found = live.Installed("nft", "table inet hs100local", (LAMP,), ("198.18.1.50",), (LAN,))
    assert found.covers(mac="50-c7-bf-00-00-01") and found.covers(ip="198.18.1.50")
    assert not found.covers(mac=KETTLE, ip="198.18.1.51") and not found.covers()
    assert found.as_dict() == {"backend": "nft", "where": "table inet hs100local",
                               "macs": [LAMP], "ipv4": ["198.18.1.50"], "lan": [LAN]}


def test_apply_for_uses_the_serve_config_and_the_backend_in_use(monkeypatch):
    from hs100local.config import from_mapping

    config = from_mapping({"dns": "198.18.1.2:53", "ntp": "198.18.1.2:123", "cloud": False,
                           "allow": ["127.0.0.0/8", LAN]})

    class Record:
        mac, host, alias = LAMP, "198.18.1.50", "Lamp"

    applied = []
    monkeypatch.setattr(live, "apply", lambda plan: applied.append(plan) or "applied")
    in_use = live.Installed("iptables", "HS100LOCAL chains in iptables", (), (), ())
    monkeypatch.setattr(live, "installed", lambda: live.FirewallState(in_use, "x"))
    assert live.apply_for(config, [Record()]) == "applied"
    plan = applied[-1]
    assert plan.format == "iptables" and plan.lan == (LAN,) and plan.cloud == ()
    assert (plan.macs, plan.ips, plan.companion) == ((LAMP,), ("198.18.1.50",), ("198.18.1.2",))
    monkeypatch.setattr(live, "installed", lambda: live.FirewallState(None, "none"))
    live.apply_for(config, [Record()])
    assert applied[-1].format == "nft"  # nft is installed here


# ------------------------------------------------------------------ the real tools


@pytest.fixture(scope="module")
def ns():
    """A throwaway namespace for the packet-filter tools' checks (needs root)."""
    netlab.require_netns()
    with netlab.Lab(prefix=f"hsfwc{os.getpid() % 10000}") as lab:
        yield lab.add_host("fw")


def in_ns(ns, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    result = ns.run([sys.executable, "-m", "hs100local", "firewall", *args], check=False,
                    env={"PYTHONPATH": str(REPO)})
    assert result.returncode == code, (result.stdout, result.stderr)
    return result


PLANS = {
    "mac and ip": ["--mac", LAMP, "--ip", "198.18.1.50", "--ip", "198.18.1.51"],
    "mac only": ["--mac", LAMP, "--mac", KETTLE],
    "ip only": ["--ip", "198.18.1.50"],
}


@pytest.mark.parametrize("plugs", PLANS.values(), ids=PLANS.keys())
@pytest.mark.parametrize("fmt", ["nft", "iptables", "ip6tables"])
def test_the_packet_filter_tools_accept_our_rules(ns, tmp_path, fmt, plugs):
    config = tmp_path / "hs.toml"  # a DNS server on another port and no cloud listener
    config.write_text('dns = "198.18.1.1:5353"\nntp = "198.18.1.2:123"\ncloud = false\n'
                      f'allow = ["{LAN}", "198.18.3.0/25"]\n')
    for extra in ([*BASE], ["--config", str(config)]):
        result = in_ns(ns, "--format", fmt, *plugs, *extra, "--check")
        assert result.stdout == f"{fmt}: the rules are valid (nothing was changed)\n"
    assert ns.run(["nft", "list", "ruleset"]).stdout == ""  # checking changed nothing


def test_the_real_nft_and_iptables_reject_a_bad_ruleset_with_exit_3(ns):
    # the renderer replaced by garbage, inside the namespace: the tool's own verdict
    code = ("import sys\nimport hs100local.firewall.apply as live\n"
            "live.render = lambda plan: 'table inet hs100local { chain c { bogus; } }\\n'\n"
            "from hs100local.cli import cli\n"
            "cli.main(sys.argv[1:], prog_name='hs100local')\n")
    for fmt, fragment in (("nft", "nft rejected the rules: "),
                          ("iptables", "iptables-restore rejected the rules: ")):
        result = ns.run([sys.executable, "-c", code, "firewall", "--format", fmt, *BASE,
                         "--mac", LAMP, "--check"], check=False, env={"PYTHONPATH": str(REPO)})
        assert result.returncode == 3, result.stderr
        assert_one_line_error(result.stderr, fragment)


def test_dnsmasq_accepts_our_lines_and_rejects_garbage(monkeypatch):
    result = invoke("--format", "dnsmasq", "--companion", COMPANION, "--check")
    assert result.stdout == "dnsmasq: the rules are valid (nothing was changed)\n"
    monkeypatch.setattr(live, "render", lambda plan: "address=/only-half\nnonsense-option\n")
    bad = invoke("--format", "dnsmasq", "--companion", COMPANION, "--check", code=3)
    assert_one_line_error(bad.stderr, "dnsmasq rejected the rules: ", "dnsmasq")


# ------------------------------------------------------------------ the CLI


def test_cli_prints_the_rules_and_the_plan():
    printed = invoke("--mac", LAMP, "--ip", "198.18.1.50", *BASE)
    assert printed.stdout == render(make_plan()) and printed.stderr == ""
    plan = json.loads(invoke("--mac", LAMP, *BASE, "--json", "--format", "uci").stdout)
    assert plan["format"] == "uci" and plan["macs"] == [LAMP] and plan["ips"] == []
    assert plan["companion"] == [COMPANION] and plan["lan"] == [LAN] and plan["zone"] == "lan"
    assert plan["plugs"] == [{"mac": LAMP, "ip": None, "alias": None}]


def test_cli_writes_the_rules_to_a_file(tmp_path):
    target = tmp_path / "rules.nft"
    result = invoke("--ip", "198.18.1.50", *BASE, "-o", str(target))
    assert result.stdout == "" and target.read_text() == render(make_plan(macs=()))
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["rules.nft"]  # no temporary left


def test_cli_takes_the_companion_lan_and_db_from_the_serve_config(tmp_path):
    db = tmp_path / "serve.db"
    with Inventory(db) as inventory:
        inventory.record([DiscoveredPlug("198.18.1.50", 9999, LAMP, "Lamp", "HS100(EU)", "2.0",
                                         "1.5.6", "ab", "on", "xor", True)])
    config = tmp_path / "hs.toml"
    config.write_text(f'dns = ["127.0.0.1:53", "198.18.1.2:53"]\nntp = "0.0.0.0:123"\n'
                      f'cloud = ["198.18.1.2:443"]\nallow = ["127.0.0.0/8", "{LAN}"]\n'
                      f'db = "{db}"\n')
    plan = json.loads(invoke("--config", str(config), "--json").stdout)
    assert plan["dns"] == ["198.18.1.2:53"] and plan["ntp"] == ["198.18.1.2:123"]
    assert plan["cloud"] == ["198.18.1.2:443"] and plan["lan"] == [LAN]
    assert plan["plugs"] == [{"mac": LAMP, "ip": "198.18.1.50", "alias": "Lamp"}]
    moved = json.loads(invoke("--config", str(config), "--companion", "198.18.1.9",
                              "--lan", "198.18.3.0/24", "--json").stdout)
    assert moved["companion"] == ["198.18.1.9"] and moved["lan"] == ["198.18.3.0/24"]


def test_cli_selects_every_inventory_plug(tmp_path, monkeypatch):
    db = tmp_path / "inventory.db"
    monkeypatch.setenv("HS100LOCAL_DB", str(db))
    with Inventory(db) as inventory:
        inventory.record([
            DiscoveredPlug("198.18.1.60", 9999, KETTLE, "Kettle", "HS110(EU)", "2.0",
                           "1.5.6", "cd", "off", "xor", True),
            DiscoveredPlug("198.18.1.50", 20002, LAMP, "", "HS100(EU)", "4.1", "1.1.0",
                           "ab", None, "klap", False)])  # no local control: still a plug
    plan = json.loads(invoke(*BASE, "--json").stdout)
    assert plan["plugs"] == [{"mac": LAMP, "ip": "198.18.1.50", "alias": None},
                             {"mac": KETTLE, "ip": "198.18.1.60", "alias": "Kettle"}]
    rules = invoke(*BASE).stdout
    assert "elements = { 50:c7:bf:00:00:01, 50:c7:bf:00:00:02 }" in rules
    assert "elements = { 198.18.1.50, 198.18.1.60 }" in rules
    only = json.loads(invoke(*BASE, "--ip", "198.18.1.77", "--json").stdout)
    assert only["ips"] == ["198.18.1.77"] and only["macs"] == []  # given: not the inventory
    other = tmp_path / "other.db"
    result = CliRunner().invoke(cli, ["--db", str(other), "firewall", *BASE])
    assert result.exit_code == 2 and f"the inventory {other} has none" in result.stderr


@pytest.mark.parametrize(("args", "fragment"), [
    (["--mac", "50:c7:bf:zz:00:01", *BASE], "not a MAC address: '50:c7:bf:zz:00:01'"),
    (["--ip", "198.18.1.300", *BASE], "not an IPv4 address: '198.18.1.300'"),
    (["--ip", "198.18.1.50", "--companion", COMPANION, "--lan", "198.18.2.0/99"],
     "not an IPv4 CIDR"),
    (["--ip", "198.18.1.50", "--lan", LAN], "--companion ADDR"),
    (["--ip", "198.18.1.50", "--companion", "fe80::1", "--lan", LAN], "--companion"),
    (["--ip", "198.18.1.50", "--companion", COMPANION], "no LAN networks"),
    ([*BASE], "no plugs: the inventory"),
    (["--ip", "198.18.1.50", *BASE, "--check", "--apply"], "--check and --apply exclude"),
    (["--ip", "198.18.1.50", *BASE, "--format", "uci", "--apply"], "--apply works with"),
    (["--ip", "198.18.1.50", *BASE, "--format", "dnsmasq", "--apply"], "--apply works with"),
    (["--ip", "198.18.1.50", *BASE, "--format", "uci", "--check"], "uci output cannot be"),
    (["--remove", "--mac", LAMP], "--remove deletes every hs100local rule"),
    (["--remove", "--format", "uci"], "--remove works with --format nft or iptables"),
    (["--config", "/nonexistent/hs.toml", "--ip", "198.18.1.50"], "cannot read"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, fragment):
    assert_one_line_error(invoke(*args, code=2).stderr, fragment)


def test_cli_bad_config_value_names_the_key(tmp_path):
    config = tmp_path / "hs.toml"
    config.write_text('dns = "not an address"\n')
    result = invoke("--config", str(config), "--ip", "198.18.1.50", code=2)
    assert_one_line_error(result.stderr, str(config), "'dns'")


def test_cli_missing_tool_is_exit_3_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(live, "SBIN_DIRS", ())
    for fmt, package in (("nft", "nftables"), ("iptables", "iptables"),
                         ("dnsmasq", "dnsmasq-base")):
        result = invoke("--format", fmt, "--ip", "198.18.1.50", *BASE, "--check", code=3)
        assert_one_line_error(result.stderr, f"install the Debian package {package}")
    for fmt in ("nft", "iptables"):
        result = invoke("--remove", "--format", fmt, code=3)
        assert_one_line_error(result.stderr, f"{fmt}", "not found")
    quiet = invoke("--remove")  # every backend: a missing one has nothing of ours
    assert quiet.stdout == "nothing to remove: no hs100local rules are installed\n"


def test_cli_says_when_a_tool_needs_root(tmp_path, monkeypatch):
    for tool in ("nft", "iptables-save", "ip6tables-save"):  # as an unprivileged user sees them
        fake = tmp_path / tool
        fake.write_text("#!/bin/sh\necho 'netlink: Error: cache initialization failed:"
                        " Operation not permitted' >&2\nexit 1\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    result = invoke("--ip", "198.18.1.50", *BASE, "--check", code=3)
    assert_one_line_error(result.stderr, "nft needs root (CAP_NET_ADMIN): netlink: Error")
    state = live.installed()  # the audit's view: no answer, and why
    assert state.rules is None and state.unreadable and "Operation not permitted" in state.reason


def run_module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return prockit.run([sys.executable, "-m", "hs100local", "firewall", *args],
                       capture_output=True, text=True, cwd=REPO, timeout=60,
                       env={**os.environ, **(env or {})})


def test_module_exit_codes_and_one_line_errors(tmp_path):
    demo = tmp_path / "demo.toml"
    demo.write_text('dns = "127.0.0.1:5353"\nntp = "127.0.0.1:1123"\n')
    bad_mac = run_module("--config", str(demo), "--mac", "nope", *BASE)
    assert bad_mac.returncode == 2 and bad_mac.stdout == ""
    assert_one_line_error(bad_mac.stderr, "not a MAC address: 'nope'")
    loopback = run_module("--config", str(demo), "--mac", LAMP, "--lan", LAN)
    assert loopback.returncode == 2
    assert_one_line_error(loopback.stderr, "loopback", "--companion ADDR")
    # a "nft" that refuses everything: exit 3 and its first error line
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nft").write_text("#!/bin/sh\ncat >/dev/null\necho\n"
                              "echo '/dev/stdin:7:3-9: Error: no such thing' >&2\n"
                              "echo 'second line' >&2\nexit 1\n")
    (fake / "nft").chmod(0o755)
    refused = run_module("--config", str(demo), "--mac", LAMP, *BASE, "--check",
                         env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert refused.returncode == 3
    assert refused.stderr == ("hs100local: error: nft rejected the rules: /dev/stdin:7:3-9: "
                              "Error: no such thing\n")
    good = run_module("--config", str(demo), "--mac", LAMP, *BASE, "--format", "dnsmasq")
    assert good.returncode == 0 and "address=/tplinkcloud.com/198.18.1.1" in good.stdout


def test_help_explains_mac_matching():
    text = invoke("--help").stdout
    assert "segment the companion" in text and "--apply" in text and "--remove" in text

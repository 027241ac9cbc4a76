"""The audit's verdict rules and rendering (pure; no network)."""

from __future__ import annotations

import pytest

from hs100local.audit import (
    ISOLATED,
    LEAKING,
    UNKNOWN,
    Audit,
    PlugAudit,
    finish,
    judge,
    judge_dns,
    render,
)
from hs100local.dns.client import Resolution

OWN = {"198.18.1.1", "127.0.0.1"}


def sinkholed():
    return judge_dns("198.18.1.1:53", [Resolution("n-devs.tplinkcloud.com", "NOERROR",
                                                  ("198.18.1.1",)),
                                       Resolution("download.tplinkcloud.com", "NXDOMAIN", ())],
                     OWN)


def leaky():
    return judge_dns("198.18.1.1:53", [Resolution("n-devs.tplinkcloud.com", "NOERROR",
                                                  ("198.18.100.10",),
                                                  ("n-devs-eu.tplinkcloud.com",))], OWN)


def row(**fields):
    base = dict(mac="50:C7:BF:00:00:01", alias="Heater", host="198.18.1.11", local=True,
                cloud={"bound": False, "connected": False, "server": "n-devs.tplinkcloud.com",
                       "username": ""}, firewall=True)
    base.update(fields)
    return PlugAudit(**base)


def test_dns_sinkholed_leaks_and_silent():
    assert sinkholed().status == "sinkholed"
    check = leaky()
    assert check.status == "leaks"
    assert "n-devs.tplinkcloud.com resolves to 198.18.100.10" in check.detail
    # 0.0.0.0 (mode null) and an empty NOERROR (nodata) keep a plug home too
    assert judge_dns("x", [Resolution("a", "NOERROR", ("0.0.0.0",)),
                           Resolution("b", "NOERROR", ())], OWN).status == "sinkholed"
    silent = judge_dns("x", ["n-devs.tplinkcloud.com: no answer"], OWN)
    assert silent.status == "no_answer" and "no answer" in silent.detail
    refused = judge_dns("x", [Resolution("a", "REFUSED", ())], OWN)
    assert refused.status == "no_answer" and "allow" in refused.detail
    assert judge_dns(None, [], OWN).status == "off"


def test_live_cloud_connection_is_leaking_even_behind_the_firewall():
    verdict, reason = judge(row(cloud={"connected": True, "server": "devs.example"}), sinkholed())
    assert verdict == LEAKING and "devs.example" in reason


def test_firewall_isolates_and_reports_pinning():
    r = row(attempts=3, outcomes={"unknown_ca": 3})
    verdict, reason = judge(r, leaky())  # DNS leaks, but the firewall holds
    assert verdict == ISOLATED
    assert "3 cloud attempts reached only us and were refused by its CA pinning" in reason


@pytest.mark.parametrize("firewall", [False, None])
def test_no_firewall_and_leaky_dns_is_leaking(firewall):
    verdict, reason = judge(row(firewall=firewall), leaky())
    assert verdict == LEAKING
    assert ("no firewall rules" if firewall is False else "unreadable") in reason


def test_dns_only_needs_evidence_that_the_plug_asks_us():
    assert judge(row(firewall=False, lookups=2), sinkholed())[0] == ISOLATED
    assert judge(row(firewall=False, attempts=1, outcomes={"unknown_ca": 1}),
                 sinkholed())[0] == ISOLATED
    verdict, reason = judge(row(firewall=False), sinkholed())
    assert verdict == UNKNOWN and "DHCP" in reason


def test_silent_plug_without_rules_is_unknown():
    verdict, reason = judge(row(firewall=False, local=False, cloud=None,
                                local_error="connection refused"), sinkholed())
    assert verdict == UNKNOWN and "connection refused" in reason
    # behind the firewall a plug that does not answer is still cut off
    assert judge(row(local=False, cloud=None), sinkholed())[0] == ISOLATED


def test_notes_and_render():
    r = finish(row(clock_offset_s=-3600.2, cloud={"bound": True, "username": "a@b",
                                                   "connected": False, "server": "s"},
                   attempts=1, outcomes={"completed": 1}), sinkholed())
    assert r.verdict == ISOLATED
    assert any("clock off by -3600.2 s" in n for n in r.notes)
    assert any("a@b" in n for n in r.notes)
    assert any("does not pin" in n for n in r.notes)
    audit = Audit(sinkholed(), "nft: table inet hs100local", [r])
    assert audit.isolated
    lines = render(audit)
    assert lines[2] == ""
    assert lines[3].split() == ["PLUG", "ADDRESS", "LOCAL", "PROTO", "CLOUD", "ATTEMPTS",
                                "CLOCK", "FIREWALL", "VERDICT"]
    assert "Heater" in lines[4] and "isolated" in lines[4] and "-3600.2 s" in lines[4]
    assert lines[-1].startswith("Heater: isolated: the firewall")
    data = audit.as_dict()
    assert data["isolated"] is True and data["plugs"][0]["clock_offset_s"] == -3600.2


def test_one_plug_not_isolated_fails_the_audit():
    good = finish(row(), sinkholed())
    bad = finish(row(alias="Lamp", firewall=False), leaky())
    assert not Audit(sinkholed(), "-", [good, bad]).isolated
    assert not Audit(sinkholed(), "-", []).isolated  # nothing proven

"""The isolation report: per-plug figures and the verdict, from plain values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from hs100local.events import Event
from hs100local.report import build_report, render

LAMP, HEATER = "50:C7:BF:00:00:01", "50:C7:BF:00:00:02"


@dataclass
class Plug:
    mac: str
    host: str
    alias: str
    model: str = "HS100(EU)"
    sw_ver: str = "1.5.6"
    hw_ver: str = "2.0"
    protocol: str = "xor"


@dataclass
class Change:
    mac: str
    at: datetime
    kind: str
    old: str | None
    new: str | None


PLUGS = [Plug(LAMP, "192.168.1.50", "Lamp"), Plug(HEATER, "192.168.1.51", "Heater")]
_ids = iter(range(1, 10_000))


def tls(at: float, plug: str | None = LAMP, client: str = "192.168.1.50", count: int = 1,
        last: float | None = None, **details) -> Event:
    base = {"local_port": 50443, "ja3_hash": "aaa", "ja4": "t12i", "sni": None,
            "outcome": "unknown_ca"}
    return Event(next(_ids), at, "tls", client, {**base, **details}, count, last, plug)


#: NTP events carry the plug's clock as an offset from when they came: a real time
#: (an offset from 1970 would read as a clock lost after a power cut)
NOW = 1_790_000_000.0


def ev(kind: str, at: float, details: dict, plug: str | None = LAMP,
       client: str | None = "192.168.1.50", count: int = 1) -> Event:
    if kind == "ntp":
        at += NOW
    return Event(next(_ids), at, kind, client, details, count, None, plug)


def build(events, plugs=PLUGS, changes=()):
    report = build_report(events, plugs, changes, since=0.0, until=NOW + 100_000.0)
    return report, {p.alias: p for p in report.plugs}


def test_cloud_attempts_count_folded_rows_span_ports_and_fingerprints():
    events = [tls(1000.0, count=3, last=1120.0), tls(1300.0, local_port=443, ja3_hash="bbb"),
              tls(1360.0, outcome="timeout")]
    _, plugs = build(events)
    cloud = plugs["Lamp"].cloud
    assert (cloud.count, cloud.first, cloud.last) == (5, 1000.0, 1360.0)
    assert cloud.mean_interval == 90.0
    assert cloud.ports == [443, 50443]
    assert cloud.ja3 == {"aaa": 4, "bbb": 1}
    assert cloud.outcomes == {"unknown_ca": 4, "timeout": 1}
    assert cloud.as_dict()["first"] == "1970-01-01T00:16:40.000Z"
    assert cloud.as_dict()["mean_interval_s"] == 90.0
    assert plugs["Lamp"].verdict == "isolated: 5 cloud connection attempts, every 1.5 min, " \
                                    "all reached only us"
    assert plugs["Heater"].cloud.count == 0


def test_all_refused_by_pinning_is_said_and_one_attempt_has_no_interval():
    _, plugs = build([tls(1000.0)])
    assert plugs["Lamp"].cloud.mean_interval is None
    assert plugs["Lamp"].verdict == ("isolated: 1 cloud connection attempt, all reached only "
                                     "us and were refused by the plug's own CA pinning")


def test_a_completed_handshake_means_no_pinning():
    _, plugs = build([tls(1000.0), tls(2000.0, outcome="completed")])
    assert "does not pin the cloud CA" in plugs["Lamp"].verdict


def test_klap_firmware_is_lost_control_whatever_else_happened():
    plugs_in = [Plug(LAMP, "192.168.1.50", "Lamp", protocol="klap")]
    _, plugs = build([tls(1000.0)], plugs_in)
    assert plugs["Lamp"].verdict.startswith("lost local control: firmware speaks klap")


def test_names_ntp_clock_time_syncs_and_quiet_plugs():
    events = [
        ev("dns", 10.0, {"name": "n-devs.tplinkcloud.com", "type": "A"}, count=4),
        ev("dns", 20.0, {"name": "pool.ntp.org", "type": "A"}),
        ev("dns", 30.0, {"name": "n-devs.tplinkcloud.com", "type": "AAAA"}),
        ev("ntp", 40.0, {"offset_ms": -90_000}, count=2),
        ev("ntp", 50.0, {"offset_ms": 3000}),
        ev("ntp", 55.0, {"offset_ms": None}),
        ev("time", 60.0, {"outcome": "fixed"}), ev("time", 70.0, {"outcome": "refused"}),
        ev("ntp", 80.0, {"offset_ms": 1}, plug=HEATER, client="192.168.1.51"),
    ]
    _, plugs = build(events)
    lamp = plugs["Lamp"]
    assert lamp.names == {"n-devs.tplinkcloud.com": 5, "pool.ntp.org": 1}
    assert (lamp.ntp_requests, lamp.clock_offset_ms, lamp.clock_offset_max_ms) == (
        4, 3000, -90_000)
    assert lamp.time_syncs == {"fixed": 1, "refused": 1}
    assert lamp.verdict == ("isolated: cloud names answered by our DNS; no connection to the "
                            "cloud listener seen (is it on ports 443 and 50443?); its clock "
                            "was off by +3.0 s when it last asked for the time, and was "
                            "served it; it refuses clock setting")
    assert plugs["Heater"].verdict == "isolated as far as seen: NTP only, no cloud name " \
                                      "looked up"


def test_a_silent_plug_gets_a_hint():
    _, plugs = build([])
    assert plugs["Lamp"].verdict == "no traffic seen: does this plug use our DNS server (DHCP)?"


def test_unattributed_events_go_by_address_and_the_rest_are_other_clients():
    events = [
        ev("dns", 1.0, {"name": "a"}, plug=None, client="192.168.1.51"),  # the heater's address
        ev("dns", 2.0, {"name": "b"}, plug=None, client="192.168.1.99", count=3),
        ev("ntp", 3.0, {}, plug=None, client="192.168.1.99"),
        ev("store", 4.0, {"dropped": 1}, plug=None, client=None),
        ev("dns", 5.0, {"name": "c"}, plug="50:C7:BF:00:00:09", client="192.168.1.70"),
    ]
    report, plugs = build(events)
    assert plugs["Heater"].names == {"a": 1}
    assert [(o.client, o.kinds) for o in report.others] == [
        ("192.168.1.99", {"dns": 3, "ntp": 1})]
    forgotten = [p for p in report.plugs if p.mac == "50:C7:BF:00:00:09"]
    assert forgotten[0].names == {"c": 1} and forgotten[0].alias is None


def test_firmware_changes_from_events_and_the_inventory_once_each():
    when = datetime(2026, 11, 24, 8, tzinfo=timezone.utc)
    changes = [Change(LAMP, when, "firmware", "1.5.6", "1.5.7"),
               Change(LAMP, when, "ip", "a", "b"),
               Change(HEATER, when, "protocol", "xor", "klap")]
    events = [ev("firmware", when.timestamp(), {"kind": "firmware", "old": "1.5.6",
                                                "new": "1.5.7"}, client=None)]
    _, plugs = build(events, changes=changes)
    assert [(c["kind"], c["new"]) for c in plugs["Lamp"].firmware_changes] == [
        ("firmware", "1.5.7")]
    assert plugs["Heater"].firmware_changes[0]["new"] == "klap"
    assert plugs["Lamp"].verdict.endswith("; 1 firmware change")


def test_render_and_json_carry_every_section():
    events = [tls(1000.0), ev("dns", 10.0, {"name": "n-devs.tplinkcloud.com"}),
              ev("ntp", 40.0, {"offset_ms": 12}), ev("time", 60.0, {"outcome": "fixed"}),
              ev("dns", 2.0, {"name": "b"}, plug=None, client="192.168.1.99")]
    report, _ = build(events)
    text = "\n".join(render(report))
    for expected in ("Lamp  50:C7:BF:00:00:01  192.168.1.50  HS100(EU) 1.5.6 (hw 2.0)",
                     "verdict: isolated", "cloud attempts: 1", "outcomes: unknown_ca 1",
                     "JA3: aaa (1)", "names looked up: n-devs.tplinkcloud.com (1)",
                     "NTP served: 1, its clock +12 ms (furthest off: clock +12 ms)",
                     "time keeper: fixed 1",
                     "Heater", "cloud attempts: none", "192.168.1.99: dns 1"):
        assert expected in text
    data = report.as_dict()
    assert set(data) == {"since", "until", "plugs", "other_clients"}
    assert data["plugs"][1]["alias"] == "Lamp"  # sorted by alias
    assert data["plugs"][1]["cloud"]["outcomes"] == {"unknown_ca": 1}
    assert "No plugs" in "\n".join(render(build_report([], [], since=0, until=1)))


def test_a_plug_that_lost_its_clock_was_served_not_off():
    """An NTP request carries the plug's clock before our answer: after a power cut it
    reads 2000-01-01, and that is news about the power cut, not a clock left wrong."""
    lost = -int((NOW + 40.0 - 946684800.0) * 1000)  # 2000-01-01 00:00:00 UTC when it asked
    _, plugs = build([ev("ntp", 40.0, {"offset_ms": lost})])
    assert plugs["Lamp"].verdict.endswith(
        "; it had lost its clock (a power cut?) when it last asked for the time, and was "
        "served it")
    _, plugs = build([ev("ntp", 40.0, {"offset_ms": lost}), ev("ntp", 50.0, {"offset_ms": 2})])
    assert "clock" not in plugs["Lamp"].verdict  # served, and right the next time it asked
    report, _ = build([ev("ntp", 40.0, {"offset_ms": lost}), ev("ntp", 50.0, {"offset_ms": 2})])
    assert ("NTP served: 2, its clock +2 ms (furthest off: clock lost (read 2000-01-01))"
            in "\n".join(render(report)))

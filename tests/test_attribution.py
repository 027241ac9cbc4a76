"""Which plug a client address is: inventory addresses first, then the ARP table."""

from __future__ import annotations

from hs100local.attribution import (
    MAX_CACHED,
    KnownPlug,
    PlugDirectory,
    known_plugs,
    read_arp_table,
    unique_hosts,
)
from hs100local.inventory import Inventory
from hs100local.results import DiscoveredPlug
from hs100local.serve import LoggingSink

LAMP = KnownPlug("50:C7:BF:00:00:01", "192.168.1.50", "Lamp")
HEATER = KnownPlug("50:C7:BF:00:00:02", "192.168.1.51", "Heater")

ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.168.1.60     0x1         0x2         50:c7:bf:00:00:02     *        br-lan
192.168.1.61     0x1         0x0         00:00:00:00:00:00     *        br-lan
192.168.1.62     0x1         0x2         aa:bb:cc:dd:ee:ff     *        br-lan
garbage
192.168.1.63     0x1         zz          50:c7:bf:00:00:01     *        br-lan
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_read_arp_table_keeps_complete_entries_in_upper_case(tmp_path):
    path = tmp_path / "arp"
    path.write_text(ARP)
    assert read_arp_table(path) == {"192.168.1.60": "50:C7:BF:00:00:02",
                                    "192.168.1.62": "AA:BB:CC:DD:EE:FF"}
    assert read_arp_table(tmp_path / "missing") == {}
    assert isinstance(read_arp_table(), dict)  # this machine's real table parses


def test_inventory_address_then_arp_mac_then_nobody():
    reads: list[int] = []

    def arp() -> dict[str, str]:
        reads.append(1)
        return {"192.168.1.60": HEATER.mac, "192.168.1.62": "AA:BB:CC:DD:EE:FF"}

    directory = PlugDirectory([LAMP, HEATER], arp=arp)
    assert directory.plug_for("192.168.1.50") == LAMP.mac  # the inventory's address
    assert reads == []
    assert directory.plug_for("192.168.1.60") == HEATER.mac  # DHCP moved it: ARP says
    assert directory.plug_for("192.168.1.62") is None  # a MAC that is no plug
    assert directory.plug_for("10.0.0.9") is None and directory.plug_for(None) is None
    assert directory.alias(HEATER.mac) == "Heater" and directory.alias("x") is None
    assert directory.alias(None) is None


def test_answers_are_cached_for_ttl_and_forgotten_on_load():
    clock = Clock()
    table: dict[str, str] = {}
    reads: list[int] = []

    def arp() -> dict[str, str]:
        reads.append(1)
        return dict(table)

    directory = PlugDirectory([LAMP], ttl=60, arp=arp, clock=clock)
    assert directory.plug_for("192.168.1.99") is None
    table["192.168.1.99"] = LAMP.mac
    assert directory.plug_for("192.168.1.99") is None  # the miss is remembered
    assert len(reads) == 1
    clock.now += 61
    assert directory.plug_for("192.168.1.99") == LAMP.mac
    assert len(reads) == 2
    directory.load([HEATER])  # a reload forgets every answer
    assert directory.plug_for("192.168.1.99") is None
    assert directory.plug_for("192.168.1.51") == HEATER.mac


def test_without_plugs_nothing_is_looked_up_and_the_cache_is_bounded():
    reads: list[int] = []
    empty = PlugDirectory(arp=lambda: reads.append(1) or {})
    assert empty.plug_for("192.168.1.50") is None and reads == []
    directory = PlugDirectory([LAMP], arp=lambda: {})
    for i in range(MAX_CACHED + 10):
        directory.plug_for(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(directory._cache) <= MAX_CACHED


def test_known_plugs_reads_the_inventory_and_tolerates_none(tmp_path):
    assert known_plugs(tmp_path / "none.db") == []
    plug = DiscoveredPlug("192.168.1.50", 9999, LAMP.mac, "Lamp", "HS100(EU)", "2.0",
                          "1.5.6", "ab", "on", "xor", True)
    with Inventory(tmp_path / "inv.db") as inventory:
        inventory.record([plug])
    assert known_plugs(tmp_path / "inv.db") == [LAMP]
    (tmp_path / "bad.db").write_bytes(b"not a database at all" * 100)
    assert known_plugs(tmp_path / "bad.db") == []


class Store:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def record(self, kind, client, details, *, at=None, plug=None) -> bool:
        self.rows.append((kind, client, plug))
        return True


def test_the_serve_sink_attributes_and_names_the_plug_in_its_log(caplog):
    store = Store()
    sink = LoggingSink(store, PlugDirectory([LAMP], arp=lambda: {}))
    with caplog.at_level("INFO"):
        sink.record("dns", "192.168.1.50", {"name": "n-devs.tplinkcloud.com"})
        sink.record("dns", "192.168.1.77", {"name": "x"})
        sink.record("firmware", None, {"kind": "firmware"}, plug=HEATER.mac)
    assert store.rows == [("dns", "192.168.1.50", LAMP.mac), ("dns", "192.168.1.77", None),
                          ("firmware", None, HEATER.mac)]
    assert "192.168.1.50 (Lamp) name=n-devs.tplinkcloud.com" in caplog.text
    assert "192.168.1.77 name=x" in caplog.text



def test_an_address_two_plugs_share_names_neither():
    """Emulators on 127.0.0.1, plugs behind one NAT: a packet's source cannot tell them
    apart, so its event belongs to no plug rather than to whichever was listed last."""
    nat_a = KnownPlug("50:C7:BF:00:00:0A", "192.168.1.70", "A")
    nat_b = KnownPlug("50:C7:BF:00:00:0B", "192.168.1.70", "B")
    asked: list[str] = []

    def arp() -> dict[str, str]:
        asked.append("arp")
        return {"192.168.1.70": nat_a.mac}  # the ARP entry names one of them: no proof

    directory = PlugDirectory([LAMP, nat_a, nat_b], arp=arp)
    assert directory.plug_for("192.168.1.70") is None
    assert directory.plug_for(LAMP.host) == LAMP.mac
    assert asked == []
    assert unique_hosts([LAMP, nat_a, nat_b]) == {LAMP.host: LAMP.mac}

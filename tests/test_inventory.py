"""The plug inventory: upserts, change detection, lookups, and concurrent writers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import prockit
import pytest

from hs100local.errors import ProtocolError, StoreError, TargetError
from hs100local.inventory import (
    DB_ENV,
    SCHEMA_VERSION,
    Change,
    ChildRecord,
    Inventory,
    default_db_path,
)
from hs100local.results import PROTOCOL_KLAP, PROTOCOL_XOR, DiscoveredPlug, OutletInfo

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
MAC = "AA:BB:CC:DD:EE:FF"
REPO = Path(__file__).resolve().parents[1]


def xor_plug(mac: str = MAC, host: str = "198.18.0.11", **kw) -> DiscoveredPlug:
    """A legacy plug as discovery reports it (fields overridable)."""
    fields = {
        "host": host, "port": 9999, "mac": mac, "alias": "Kitchen", "model": "HS110(EU)",
        "hw_ver": "1.0", "sw_ver": "1.2.5 Build 171213 Rel.101523", "device_id": "80060",
        "state": "on", "protocol": PROTOCOL_XOR, "controllable": True,
    }
    fields.update(kw)
    return DiscoveredPlug(**fields)


def klap_sighting(mac: str = MAC, host: str = "198.18.0.11") -> DiscoveredPlug:
    """What KLAP discovery (TDP, UDP 20002) tells: model, MAC and id; no alias,
    firmware or outlets."""
    return DiscoveredPlug(
        host=host, port=20002, mac=mac.replace(":", "-"), alias="", model="HS110(EU)",
        hw_ver="", sw_ver="", device_id="80060", state=None, protocol=PROTOCOL_KLAP,
        controllable=False,
    )


def strip_plug(mac: str, host: str, alias: str, outlets: list[str]) -> DiscoveredPlug:
    children = tuple(
        OutletInfo(index=i + 1, id=f"{mac.replace(':', '')}0{i}", alias=name, is_on=False,
                   on_time=0)
        for i, name in enumerate(outlets)
    )
    return xor_plug(mac, host, alias=alias, model="HS300(US)", children=children)


@pytest.fixture
def inv(tmp_path: Path):
    with Inventory(tmp_path / "inv.db") as inventory:
        yield inventory


# ------------------------------------------------------------------ recording


def test_new_plug_then_unchanged_sighting(inv: Inventory) -> None:
    changes = inv.record([xor_plug()], now=T0)
    assert [(c.kind, c.mac, c.old, c.new, c.alias) for c in changes] == [
        ("new", MAC, None, "198.18.0.11 (HS110(EU))", "Kitchen")
    ]
    assert changes[0].at == T0
    assert changes[0].describe() == (
        "Kitchen (AA:BB:CC:DD:EE:FF): new plug at 198.18.0.11 (HS110(EU))"
    )

    later = T0 + timedelta(hours=1)
    assert inv.record([xor_plug()], now=later) == []
    record = inv.get(MAC)
    assert record is not None
    assert record.first_seen == T0
    assert record.last_seen == later
    assert record.last_seen.tzinfo is not None and record.last_seen.utcoffset() == timedelta(0)
    assert [c.kind for c in inv.changes()] == ["new"]


def test_ip_change_updates_host(inv: Inventory) -> None:
    inv.record([xor_plug()], now=T0)
    changes = inv.record([xor_plug(host="198.18.0.42")], now=T0 + timedelta(minutes=5))
    assert [(c.kind, c.old, c.new) for c in changes] == [("ip", "198.18.0.11", "198.18.0.42")]
    assert "198.18.0.11 -> 198.18.0.42" in changes[0].describe()
    record = inv.get(MAC)
    assert record is not None and record.host == "198.18.0.42"
    # a non-default port is part of the address
    changes = inv.record([xor_plug(host="198.18.0.42", port=10000)])
    assert [(c.kind, c.old, c.new) for c in changes] == [("ip", "198.18.0.42", "198.18.0.42:10000")]


def test_firmware_change(inv: Inventory) -> None:
    inv.record([xor_plug()], now=T0)
    changes = inv.record([xor_plug(sw_ver="1.2.6 Build 200727 Rel.121701")])
    assert [c.kind for c in changes] == ["firmware"]
    change = changes[0]
    assert change.old == "1.2.5 Build 171213 Rel.101523 (hw 1.0)"
    assert change.new == "1.2.6 Build 200727 Rel.121701 (hw 1.0)"
    text = change.describe()
    assert text.startswith("Kitchen (AA:BB:CC:DD:EE:FF): firmware ")
    assert "1.2.5 Build 171213" in text and "1.2.6 Build 200727" in text
    record = inv.get(MAC)
    assert record is not None and record.sw_ver == "1.2.6 Build 200727 Rel.121701"


def test_xor_to_klap_reports_lost_control_and_keeps_name(inv: Inventory) -> None:
    outlets = strip_plug(MAC, "198.18.0.11", "Desk", ["Lamp", "Fan"])
    inv.record([outlets], now=T0)
    changes = inv.record([klap_sighting()], now=T0 + timedelta(days=1))
    # empty alias/firmware are "not told", and the answer's port (20002, not 9999)
    # follows from the protocol: neither is a change of its own
    assert [c.kind for c in changes] == ["protocol"]
    lost = changes[0]
    assert (lost.old, lost.new, lost.alias) == (PROTOCOL_XOR, PROTOCOL_KLAP, "Desk")
    text = lost.describe()
    assert text.startswith("Desk (AA:BB:CC:DD:EE:FF): ")
    assert "port 9999 closed" in text and "local control lost" in text

    record = inv.get(MAC)
    assert record is not None
    assert (record.alias, record.protocol, record.controllable) == ("Desk", PROTOCOL_KLAP, False)
    assert record.sw_ver == "1.2.5 Build 171213 Rel.101523"  # not blanked
    assert [c.alias for c in record.children] == ["Lamp", "Fan"]
    found = inv.lookup("desk")
    assert found is not None and found.record.mac == MAC

    back = inv.record([xor_plug(alias="Desk")], now=T0 + timedelta(days=2))
    assert [c.kind for c in back] == ["protocol"]
    assert "local control is back" in back[0].describe()
    record = inv.get(MAC)
    assert record is not None and record.controllable and record.children == ()


def test_protocol_change_with_new_host_is_also_ip_change(inv: Inventory) -> None:
    inv.record([xor_plug()], now=T0)
    changes = inv.record([klap_sighting(host="198.18.0.77")], now=T0)
    assert [(c.kind, c.old, c.new) for c in changes] == [
        ("ip", "198.18.0.11", "198.18.0.77:20002"), ("protocol", PROTOCOL_XOR, PROTOCOL_KLAP)
    ]


def test_describe_other_lost_protocols() -> None:
    aes = Change(1, MAC, T0, "protocol", PROTOCOL_XOR, "aes", "")
    assert aes.describe().startswith("AA:BB:CC:DD:EE:FF: protocol xor -> aes: port 9999 closed")
    assert "local control lost" in aes.describe()


def test_alias_change_and_same_mac_twice_in_one_call(inv: Inventory) -> None:
    inv.record([xor_plug()], now=T0)
    changes = inv.record(
        [xor_plug(alias="Kettle"), xor_plug(alias="Kettle", host="198.18.0.12")], now=T0
    )
    assert [(c.kind, c.old, c.new, c.alias) for c in changes] == [
        ("alias", "Kitchen", "Kettle", "Kettle"),
        ("ip", "198.18.0.11", "198.18.0.12", "Kettle"),
    ]
    assert changes[0].describe() == "Kettle (AA:BB:CC:DD:EE:FF): renamed 'Kitchen' -> 'Kettle'"
    assert [c.id for c in inv.changes()][-2:] == [c.id for c in changes]
    record = inv.get(MAC)
    assert record is not None and (record.alias, record.host) == ("Kettle", "198.18.0.12")


def test_unknown_mac_seen_twice_is_new_once(inv: Inventory) -> None:
    changes = inv.record([xor_plug(), xor_plug(sw_ver="2.0")], now=T0)
    assert [c.kind for c in changes] == ["new", "firmware"]


def test_invalid_mac_rejects_whole_round(inv: Inventory) -> None:
    with pytest.raises(ProtocolError):
        inv.record([xor_plug(mac="11:22:33:44:55:66"), xor_plug(mac="not-a-mac")])
    assert inv.plugs() == []


def test_plugs_sorted_numerically_and_json_ready(inv: Inventory) -> None:
    hosts = ["198.18.0.10", "198.18.0.9", "10.0.0.200", "198.18.0.100"]
    inv.record(
        [xor_plug(f"00:00:00:00:00:{i:02X}", h) for i, h in enumerate(hosts)], now=T0
    )
    assert [p.host for p in inv.plugs()] == [
        "10.0.0.200", "198.18.0.9", "198.18.0.10", "198.18.0.100"
    ]
    data = json.loads(json.dumps([p.as_dict() for p in inv.plugs()]))
    assert data[0]["first_seen"] in ("2024-03-01T12:00:00.000Z", "2024-03-01T12:00:00+00:00")
    assert datetime.fromisoformat(data[0]["last_seen"].replace("Z", "+00:00")) == T0
    change = json.loads(json.dumps(inv.changes()[0].as_dict()))
    assert change["kind"] == "new" and change["mac"] == "00:00:00:00:00:00"


# ------------------------------------------------------------------- lookups


@pytest.fixture
def populated(inv: Inventory) -> Inventory:
    inv.record(
        [
            xor_plug(MAC, "198.18.0.11", alias="Kitchen"),
            strip_plug("11:22:33:44:55:66", "198.18.0.12", "Desk strip", ["Lamp", "Monitor"]),
            xor_plug("22:22:22:22:22:22", "198.18.0.13", alias="Heater"),
            xor_plug("33:33:33:33:33:33", "198.18.0.14", alias="heater"),
            strip_plug("44:44:44:44:44:44", "198.18.0.15", "Shelf", ["Radio", "Fan"]),
            strip_plug("55:55:55:55:55:55", "198.18.0.16", "Bench", ["Fan", "Solder"]),
        ],
        now=T0,
    )
    return inv


def test_lookup_by_alias_is_case_insensitive(populated: Inventory) -> None:
    found = populated.lookup("  kITCHEN ")
    assert found is not None
    assert (found.record.mac, found.child) == (MAC, None)


@pytest.mark.parametrize(
    "spelling", ["AA:BB:CC:DD:EE:FF", "aa-bb-cc-dd-ee-ff", "aa:bb:cc:dd:ee:ff", "aabbccddeeff"]
)
def test_lookup_by_mac_spellings(populated: Inventory, spelling: str) -> None:
    found = populated.lookup(spelling)
    assert found is not None and found.record.alias == "Kitchen" and found.child is None
    record = populated.get(spelling)
    assert record is not None and record.mac == MAC


def test_lookup_outlet_alias_returns_child(populated: Inventory) -> None:
    found = populated.lookup("monitor")
    assert found is not None
    assert found.record.mac == "11:22:33:44:55:66"
    assert found.child == ChildRecord(2, "11223344556601", "Monitor")


def test_lookup_unknown(populated: Inventory) -> None:
    assert populated.lookup("Garage") is None
    assert populated.lookup("00:00:00:00:00:01") is None
    assert populated.lookup("   ") is None


def test_lookup_ambiguous(populated: Inventory) -> None:
    with pytest.raises(TargetError) as plug_err:
        populated.lookup("Heater")
    assert str(plug_err.value) == (
        "alias 'Heater' is ambiguous: 22:22:22:22:22:22, 33:33:33:33:33:33; use the MAC"
    )
    with pytest.raises(TargetError, match="44:44:44:44:44:44 outlet 2, 55:55:55:55:55:55"):
        populated.lookup("fan")


# ------------------------------------------------------------------- changes


def test_changes_filters(inv: Inventory) -> None:
    other = "11:22:33:44:55:66"
    inv.record([xor_plug(), xor_plug(other, "198.18.0.20")], now=T0)
    inv.record([xor_plug(host="198.18.0.30")], now=T0 + timedelta(hours=1))
    inv.record([xor_plug(host="198.18.0.30", sw_ver="9.9")], now=T0 + timedelta(hours=2))
    inv.record([xor_plug(other, "198.18.0.20", alias="Hall")], now=T0 + timedelta(hours=3))

    every = inv.changes()
    assert [(c.mac, c.kind) for c in every] == [
        (MAC, "new"), (other, "new"), (MAC, "ip"), (MAC, "firmware"), (other, "alias")
    ]
    assert [c.kind for c in inv.changes(mac="aa-bb-cc-dd-ee-ff")] == ["new", "ip", "firmware"]
    assert [c.kind for c in inv.changes(kinds=["ip", "alias"])] == ["ip", "alias"]
    assert [c.kind for c in inv.changes(kinds=[])] == []
    assert [c.kind for c in inv.changes(since=T0 + timedelta(hours=1))] == [
        "ip", "firmware", "alias"
    ]
    # naive means UTC, not local time
    assert len(inv.changes(since=(T0 + timedelta(hours=2)).replace(tzinfo=None))) == 2
    assert [c.kind for c in inv.changes(limit=2)] == ["firmware", "alias"]
    assert inv.changes(limit=0) == []
    assert [c.kind for c in inv.changes(mac=MAC, kinds=["new", "firmware"], limit=1)] == [
        "firmware"
    ]
    with pytest.raises(TargetError):
        inv.changes(kinds=["reboot"])
    with pytest.raises(TargetError):
        inv.changes(mac="kitchen")


def test_forget(inv: Inventory) -> None:
    other = "11:22:33:44:55:66"
    inv.record([xor_plug(), xor_plug(other, "198.18.0.20")], now=T0)
    assert inv.forget("aabbccddeeff") is True
    assert inv.get(MAC) is None
    assert inv.changes(mac=MAC) == []
    assert [p.mac for p in inv.plugs()] == [other]
    assert inv.forget(MAC) is False
    assert inv.forget("not a mac") is False
    # seen again after forgetting: new again
    assert [c.kind for c in inv.record([xor_plug()])] == ["new"]


# ------------------------------------------------------------- file handling


def test_default_db_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DB_ENV, str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"

    monkeypatch.setenv(DB_ENV, "")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_db_path() == tmp_path / "data" / "hs100local" / "hs100local.db"

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME")
    home_default = tmp_path / "home" / ".local" / "share" / "hs100local" / "hs100local.db"
    assert default_db_path() == home_default
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # invalid per the XDG spec
    assert default_db_path() == home_default

    monkeypatch.setattr(sys, "platform", "darwin")
    assert default_db_path() == (
        tmp_path / "home" / "Library" / "Application Support" / "hs100local" / "hs100local.db"
    )
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert default_db_path() == tmp_path / "local" / "hs100local" / "hs100local.db"


def test_default_path_used_and_dirs_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    target = tmp_path / "a" / "b" / "inv.db"
    monkeypatch.setenv(DB_ENV, str(target))
    with Inventory() as inventory:
        inventory.record([xor_plug()])
    assert target.is_file()
    if os.name == "posix":
        for made in (tmp_path / "a", tmp_path / "a" / "b"):
            assert made.stat().st_mode & 0o777 == 0o700


def test_garbage_file_is_store_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite, just some bytes\n" * 200)
    with pytest.raises(StoreError) as err:
        Inventory(path)
    assert not isinstance(err.value, sqlite3.Error)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unopenable_path_is_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="file"):
        Inventory(blocker / "sub" / "inv.db")
    with pytest.raises(StoreError):
        Inventory(tmp_path)  # a directory


def test_sqlite_errors_in_methods_become_store_errors(tmp_path: Path) -> None:
    path = tmp_path / "inv.db"
    inventory = Inventory(path)
    inventory.record([xor_plug()])
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TABLE plug_changes")
    with pytest.raises(StoreError, match="plug_changes"):
        inventory.changes()
    with pytest.raises(StoreError):
        inventory.record([xor_plug(host="198.18.0.99")])
    # the failed round was rolled back, and the connection is still usable
    record = inventory.get(MAC)
    assert record is not None and record.host == "198.18.0.11"
    inventory.close()
    with pytest.raises(StoreError, match="closed"):
        inventory.plugs()


def test_corrupt_outlet_list_is_store_error(tmp_path: Path) -> None:
    path = tmp_path / "inv.db"
    with Inventory(path) as inventory:
        inventory.record([xor_plug()])
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE plugs SET children = '{oops'")
        for read in (inventory.plugs, lambda: inventory.get(MAC),
                     lambda: inventory.record([xor_plug()])):
            with pytest.raises(StoreError, match="corrupt outlet list"):
                read()


def test_reopen_keeps_data_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "inv.db"
    with Inventory(path) as first:
        first.record([strip_plug(MAC, "198.18.0.11", "Desk", ["Lamp"])], now=T0)
        before = first.plugs()
    for _ in range(2):
        with Inventory(path) as again:
            assert again.plugs() == before
            assert [c.kind for c in again.changes()] == ["new"]
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_tables_created_when_another_module_set_user_version(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE events (id INTEGER PRIMARY KEY)")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with Inventory(path) as inventory:
        assert [c.kind for c in inventory.record([xor_plug()])] == ["new"]


# --------------------------------------------------------- concurrent writers

WRITER = r"""
import json, os, sys, time
from hs100local.inventory import Inventory
from hs100local.results import DiscoveredPlug

db, ready, go, net, numbers = sys.argv[1:]
numbers = json.loads(numbers)
open(ready, "w").close()
deadline = time.monotonic() + 20
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("never got the go signal")
    time.sleep(0.0005)

def sighting(n):
    return DiscoveredPlug(
        host=f"{net}.{n // 256}.{n % 256}", port=9999,
        mac=f"02:00:00:00:{n // 256:02X}:{n % 256:02X}",
        alias=f"plug {n}", model="HS100(US)", hw_ver="1.0", sw_ver="1.0", device_id=str(n),
        state="off", protocol="xor", controllable=True,
    )

reported = []
start = time.monotonic()
with Inventory(db, timeout=20) as inventory:  # opening (and creating) races too
    for i in range(0, len(numbers), 2):
        reported += [c.as_dict() for c in inventory.record([sighting(n) for n in numbers[i:i + 2]])]
print(json.dumps({"start": start, "end": time.monotonic(), "changes": reported}))
"""


def test_concurrent_writers_never_lose_or_double_report(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "inv.db"  # not created yet: both processes race to create it
    go = tmp_path / "go"
    overlap = list(range(200, 300))
    jobs = {  # both start with the shared MACs, so they contend on the same rows
        "10.1": overlap + list(range(0, 200)),
        "10.2": overlap[::-1] + list(range(300, 500)),
    }
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    procs = []
    try:
        for net, numbers in jobs.items():
            ready = tmp_path / f"ready-{net}"
            procs.append((ready, prockit.spawn(
                [sys.executable, "-c", WRITER, str(db), str(ready), str(go), net,
                 json.dumps(numbers)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
            )))
        deadline = time.monotonic() + 20
        while not all(ready.exists() for ready, _ in procs):
            assert time.monotonic() < deadline, "writers did not start"
            assert all(p.poll() is None for _, p in procs), "a writer died before the start"
            time.sleep(0.005)
        go.touch()
        reported, spans = [], []
        for _, proc in procs:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert "Traceback" not in err
            result = json.loads(out)
            reported.extend(result["changes"])
            spans.append((result["start"], result["end"]))
    finally:  # a failed start or a hung writer: neither is left running
        for _, proc in procs:
            prockit.stop(proc, signal.SIGKILL)
    # CLOCK_MONOTONIC is system-wide on Linux/macOS/Windows: the runs really overlapped
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans

    expected = {f"02:00:00:00:{n // 256:02X}:{n % 256:02X}" for n in range(500)}
    with sqlite3.connect(db) as raw:
        macs = [m for (m,) in raw.execute("SELECT mac FROM plugs")]
        new_counts = dict(
            raw.execute("SELECT mac, count(*) FROM plug_changes WHERE kind = 'new' GROUP BY mac")
        )
        stored_ids = sorted(i for (i,) in raw.execute("SELECT id FROM plug_changes"))
    assert len(macs) == len(set(macs)) == 500 and set(macs) == expected
    assert new_counts == {mac: 1 for mac in expected}
    reported_new = [c["mac"] for c in reported if c["kind"] == "new"]
    assert sorted(reported_new) == sorted(expected)  # each reported by exactly one process
    # what the processes were told is exactly what is stored: nothing lost, nothing twice
    assert sorted(c["id"] for c in reported) == stored_ids
    # every overlapping MAC was seen by both (new from one, ip change from the other)
    ip_macs = sorted(c["mac"] for c in reported if c["kind"] == "ip")
    assert ip_macs == sorted(f"02:00:00:00:{n // 256:02X}:{n % 256:02X}" for n in overlap)


def test_record_async_runs_off_the_event_loop(tmp_path):
    import asyncio

    from hs100local.inventory import record_async

    db = tmp_path / "inv.db"

    async def main():
        first = await record_async([xor_plug()], db)
        again = await record_async([xor_plug(host="198.18.0.12")], db)
        return first, again

    first, again = asyncio.run(main())
    assert [c.kind for c in first] == ["new"] and [c.kind for c in again] == ["ip"]
    with Inventory(db) as inventory:
        assert inventory.get(MAC).host == "198.18.0.12"

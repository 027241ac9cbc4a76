"""The event store: batching writer thread, counters, overflow, durability, shared file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import prockit
import pytest

from hs100local import events as events_module
from hs100local.errors import StoreError
from hs100local.events import Event, EventStore
from hs100local.inventory import SCHEMA_VERSION, Inventory, default_db_path
from hs100local.results import PROTOCOL_XOR, DiscoveredPlug

REPO = Path(__file__).resolve().parents[1]
DAY = 86400.0
LOCK_SECONDS = 1.0


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection holding the write lock, as a busy discovery would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "hs100local-events"}


def test_record_flush_and_read_back_in_order(tmp_path):
    base = time.time() - 3600  # recent: the writer's own prune must not touch it
    details = {"name": "n-devs.tplinkcloud.com", "type": "A", "nested": {"ü": [1, 2.5, None]},
               "ok": True}
    with EventStore(tmp_path / "ev.db") as store:
        store.record("dns", "10.0.0.2", details, at=base + 2)
        store.record("dns", "10.0.0.1", {"n": 1}, at=base)  # older, recorded later
        before = time.time()
        store.record("ntp", None, {"n": 2})
        after = time.time()
        store.flush()
        got = store.events()
    assert [(e.kind, e.client) for e in got] == [
        ("dns", "10.0.0.1"), ("dns", "10.0.0.2"), ("ntp", None)
    ]
    assert got[1].details == details
    assert before <= got[2].at <= after
    assert len({e.id for e in got}) == 3
    record = got[1].as_dict()
    assert record["time"].endswith("Z")
    moment = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
    assert abs(moment.timestamp() - (base + 2)) < 0.001
    assert {k: record[k] for k in ("id", "kind", "client", "details")} == {
        "id": got[1].id, "kind": "dns", "client": "10.0.0.2", "details": details
    }
    json.dumps(record)  # JSON-ready as it is


def test_event_filters(tmp_path):
    base = time.time() - 3600
    with EventStore(tmp_path / "ev.db") as store:
        for i, (kind, client) in enumerate([
            ("dns", "10.0.0.1"), ("ntp", "10.0.0.2"), ("dns", "10.0.0.2"), ("dns", None),
            ("cloud", "10.0.0.1"),
        ]):
            store.record(kind, client, {"i": i}, at=base + i)
        store.flush()

        def ids(**kw) -> list[int]:
            return [e.details["i"] for e in store.events(**kw)]

        assert ids() == [0, 1, 2, 3, 4]
        assert ids(since=base + 2) == [2, 3, 4]
        assert ids(kind="dns") == [0, 2, 3]
        assert ids(client="10.0.0.2") == [1, 2]
        assert ids(kind="dns", client="10.0.0.2") == [2]
        assert ids(limit=2) == [3, 4]  # the newest two, oldest first
        assert ids(kind="dns", limit=2) == [2, 3]
        assert ids(limit=0) == []
        assert ids(kind="nothing") == []


def test_details_are_taken_when_recorded_and_never_make_record_raise(tmp_path):
    with EventStore(tmp_path / "ev.db") as store:
        details = {"list": [1]}
        store.record("dns", None, details)
        details["list"].append(2)  # too late: what was recorded is what was passed
        store.record("dns", None, {"obj": object()})  # not JSON: stored as text
        store.record("dns", None, {(1, 2): "tuple key"})  # not JSON either
        store.flush()
        got = store.events()
    assert got[0].details == {"list": [1]}
    assert got[1].details["obj"].startswith("<object object")
    assert "tuple key" in got[2].details["unserializable"]


@pytest.mark.parametrize("busy_timeout", [5.0, 0.05], ids=["waits-for-lock", "retries"])
def test_record_and_count_do_not_block_while_the_database_is_locked(
    tmp_path, caplog, busy_timeout
):
    """With a busy timeout longer than the lock the writer waits it out; with a short one
    it fails, logs, keeps the batch and retries: either way the callers never wait."""
    caplog.set_level(logging.DEBUG, logger="hs100local.events")
    path = tmp_path / "ev.db"
    n = 10_000
    with EventStore(path, flush_interval=0.05, timeout=busy_timeout) as store:
        with write_locked(path):
            locked_at = time.monotonic()
            start = time.perf_counter()
            for i in range(n):
                store.record("dns", f"10.0.0.{i % 7}", {"i": i})
                store.count("dns", "forwarded", client=f"10.0.0.{i % 7}")
            elapsed = time.perf_counter() - start
            time.sleep(max(0.0, LOCK_SECONDS - (time.monotonic() - locked_at)))
            assert store.events() == []  # the lock really kept the writer out
            assert store.dropped == 0
        store.flush()
        got = store.events()
        total = sum(c.n for c in store.counts(kind="dns"))
    assert elapsed < LOCK_SECONDS / 4, f"{n} record()+count() took {elapsed:.3f} s"
    assert [e.details["i"] for e in got] == list(range(n))
    assert total == n
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    if busy_timeout < LOCK_SECONDS:
        assert warned and "will retry" in warned[0].getMessage()
        assert any("again" in r.getMessage() for r in caplog.records)
    else:
        assert not warned


def test_counts_are_summed_per_minute_client_and_key(tmp_path):
    m0 = (int(time.time()) // 60 - 10) * 60.0
    expected: Counter[tuple[float, str | None, str]] = Counter()
    with EventStore(tmp_path / "ev.db") as store:
        for i in range(1000):
            minute = m0 + 60 * (i % 2)
            client = "10.0.0.1" if i % 3 else "10.0.0.2"
            key = "cached" if i % 5 == 0 else "forwarded"
            store.count("dns", key, client=client, at=minute + (i * 7) % 60 + 0.5)
            expected[(minute, client, key)] += 1
        store.count("dns", "forwarded", 3, at=m0 + 5)  # no client
        expected[(m0, None, "forwarded")] += 3
        store.count("ntp", "served", client="10.0.0.1", at=m0)
        store.flush()
        got = {(c.minute, c.client, c.key): c.n for c in store.counts(kind="dns")}
        assert got == dict(expected)
        assert sum(got.values()) == 1003

        store.count("dns", "forwarded", 5, client="10.0.0.1", at=m0 + 59.9)
        store.flush()
        again = {(c.minute, c.client, c.key): c.n for c in store.counts(kind="dns")}
        assert again[(m0, "10.0.0.1", "forwarded")] == expected[(m0, "10.0.0.1", "forwarded")] + 5

        later = store.counts(since=m0 + 90)  # within the second minute: that bucket counts
        assert {c.minute for c in later} == {m0 + 60}
        assert {c.kind for c in store.counts()} == {"dns", "ntp"}


def test_events_survive_sigkill_without_flush_or_close(tmp_path):
    path = tmp_path / "ev.db"
    code = textwrap.dedent("""
        import sys, time
        from hs100local.events import EventStore
        store = EventStore(sys.argv[1], flush_interval=0.5)
        for i in range(200):
            store.record("dns", "10.0.0.9", {"i": i})
        store.count("dns", "forwarded", 7, client="10.0.0.9")
        print("queued", flush=True)
        time.sleep(2)
        time.sleep(60)  # the parent kills us before this ends
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO),
                                                          os.environ.get("PYTHONPATH", "")])}
    proc = prockit.spawn([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line == "queued\n", proc.communicate(timeout=10)
        time.sleep(2)
    finally:
        proc.kill()  # SIGKILL: no atexit, no finally, no close()
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    with EventStore(path) as store:
        assert [e.details["i"] for e in store.events()] == list(range(200))
        assert [c.n for c in store.counts()] == [7]


def test_shares_the_inventory_file_without_touching_its_schema_version(tmp_path):
    plug = DiscoveredPlug(
        host="198.18.0.11", port=9999, mac="AA:BB:CC:DD:EE:FF", alias="Kitchen",
        model="HS110(EU)", hw_ver="1.0", sw_ver="1.2.5", device_id="80060", state="on",
        protocol=PROTOCOL_XOR, controllable=True,
    )
    path = tmp_path / "shared.db"
    with Inventory(path) as inventory:
        assert user_version(path) == SCHEMA_VERSION
        with EventStore(path) as store:
            store.record("dns", "198.18.0.11", {"name": "x"})
            assert [c.kind for c in inventory.record([plug])] == ["new"]
            store.flush()
            assert len(store.events()) == 1
        assert [p.alias for p in inventory.plugs()] == ["Kitchen"]
    assert user_version(path) == SCHEMA_VERSION

    # Events first: the version stays 0, so the inventory still creates its tables.
    other = tmp_path / "events-first.db"
    with EventStore(other) as store:
        store.record("dns", None, {"name": "y"})
    assert user_version(other) == 0
    with Inventory(other) as inventory:
        assert [c.kind for c in inventory.record([plug])] == ["new"]
    assert user_version(other) == SCHEMA_VERSION
    with EventStore(other) as store:
        assert [e.details for e in store.events()] == [{"name": "y"}]


def test_default_path_is_the_inventory_file():
    with EventStore() as store, Inventory() as inventory:
        assert store.path == inventory.path == default_db_path()


@pytest.mark.parametrize("busy_timeout", [5.0, 0.3], ids=["commit-after-wait", "commit-fails"])
def test_overflow_drops_oldest_counts_them_and_reports_in_a_store_event(tmp_path, busy_timeout):
    """Events the writer was committing when the queue overflowed are lost only if that
    commit fails: either way each event is either stored or counted, never both."""
    path = tmp_path / "ev.db"
    with EventStore(path, max_queue=100, flush_interval=0.05, timeout=busy_timeout) as store:
        with write_locked(path):
            for i in range(1000):
                store.record("dns", None, {"i": i})
                store.count("dns", "forwarded")  # counters are never dropped
                if i == 49:
                    time.sleep(0.2)  # the writer takes (some of) these and waits on the lock
            dropped_while_locked = store.dropped
            time.sleep(0.4)  # the short timeout runs out while we still hold the lock
        store.flush()
        stored = [e.details["i"] for e in store.events(kind="dns")]
        reports = store.events(kind="store")
        total = sum(c.n for c in store.counts())
        dropped = store.dropped
    assert dropped_while_locked >= 800  # the queue never held more than 100
    assert len(stored) + dropped == 1000
    assert stored[-100:] == list(range(900, 1000))  # the newest are kept
    if busy_timeout > 1:
        assert len(stored) > 100  # some of the first 50 got through after the wait
    else:
        assert len(stored) == 100
    assert reports and sum(r.details["dropped"] for r in reports) == dropped
    assert total == 1000


def test_prune_removes_only_rows_older_than_retention(tmp_path):
    # In the future, so the writer's own prune (with the real clock) leaves them alone.
    now = time.time() + 100 * DAY
    with EventStore(tmp_path / "ev.db", retention_days=30) as store:
        for age in (31, 29, 1):
            store.record("dns", None, {"age": age}, at=now - age * DAY)
            store.count("dns", "forwarded", client=str(age), at=now - age * DAY)
        store.flush()
        assert store.prune(now) == 2
        assert [e.details["age"] for e in store.events()] == [29, 1]
        assert [c.client for c in store.counts()] == ["29", "1"]
        assert store.prune(now) == 0


def test_the_writer_prunes_by_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(events_module, "PRUNE_INTERVAL", 0.1)
    with EventStore(tmp_path / "ev.db", flush_interval=0.05) as store:
        store.record("dns", None, {"old": False})
        store.flush()
        time.sleep(0.2)  # past the prune at start-up: what follows needs a periodic one
        store.record("dns", None, {"old": True}, at=time.time() - 40 * DAY)
        store.flush()
        deadline = time.monotonic() + 5
        while store.events(kind="dns") != store.events(kind="dns", since=time.time() - DAY):
            assert time.monotonic() < deadline, "the old event was never pruned"
            time.sleep(0.05)
        assert [e.details for e in store.events()] == [{"old": False}]


def test_aflush_keeps_the_event_loop_running(tmp_path):
    path = tmp_path / "ev.db"

    async def main(store: EventStore) -> int:
        ticks = 0
        store.record("dns", "10.0.0.1", {"name": "x"})

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await store.aflush()  # waits out the lock below
        task.cancel()
        return ticks

    with EventStore(path, flush_interval=0.05) as store:
        ticks_box: list[int] = []
        runner = threading.Thread(target=lambda: ticks_box.append(asyncio.run(main(store))))
        with write_locked(path):
            runner.start()
            time.sleep(0.4)
        runner.join(10)
        assert [e.client for e in store.events()] == ["10.0.0.1"]
    assert ticks_box and ticks_box[0] >= 10  # the loop ran ~0.4 s while aflush waited


def test_close_flushes_is_idempotent_and_rejects_further_use(tmp_path):
    path = tmp_path / "ev.db"
    before = writer_threads()
    store = EventStore(path, flush_interval=60)
    mine = writer_threads() - before
    assert len(mine) == 1
    store.record("dns", None, {"last": True})
    store.count("dns", "forwarded")
    store.close()
    store.close()
    assert not any(t.is_alive() for t in mine)
    with pytest.raises(StoreError, match="closed"):
        store.record("dns", None, {})
    with pytest.raises(StoreError, match="closed"):
        store.count("dns", "forwarded")
    with pytest.raises(StoreError, match="closed"):
        store.flush()
    with EventStore(path) as again:
        assert [e.details for e in again.events()] == [{"last": True}]
        assert [c.n for c in again.counts()] == [1]
    assert not any(t.is_alive() for t in writer_threads() - before)


def test_bad_path_fails_at_start(tmp_path):
    with pytest.raises(StoreError, match="cannot open event store"):
        EventStore(tmp_path)  # a directory
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot open event store"):
        EventStore(tmp_path / "file" / "ev.db")  # parent is a file
    with pytest.raises(ValueError):
        EventStore(tmp_path / "ev.db", max_queue=0)


def test_event_is_a_value():
    event = Event(1, 0.0, "dns", None, {})
    assert event.as_dict() == {"id": 1, "time": "1970-01-01T00:00:00.000Z", "kind": "dns",
                               "client": None, "plug_mac": None, "details": {}, "count": 1,
                               "last": "1970-01-01T00:00:00.000Z"}
    folded = Event(2, 60.0, "dns", "10.0.0.1", {"name": "x"}, count=3, last=119.5)
    assert folded.as_dict()["count"] == 3
    assert folded.as_dict()["last"] == "1970-01-01T00:01:59.500Z"


def test_identical_events_in_a_minute_are_one_row_with_a_count(tmp_path):
    # A minute in the future, so that no sweep of past minutes' rows interferes.
    m0 = (int(time.time()) // 60 + 5) * 60.0
    dns = {"name": "devs.tplinkcloud.com", "type": "A", "action": "redirect", "port": 0}
    with EventStore(tmp_path / "ev.db") as store:
        for i in range(1000):
            store.record("dns", "10.0.0.1", dict(dns), at=m0 + i * 0.05)  # 0..49.95 s
        store.record("dns", "10.0.0.2", dict(dns), at=m0 + 1)  # another client
        store.record("dns", "10.0.0.1", {**dns, "type": "AAAA"}, at=m0 + 2)  # other details
        store.record("dns", "10.0.0.1", {**dns, "port": True}, at=m0 + 2)  # True is not 1
        store.record("tls", "10.0.0.1", dict(dns), at=m0 + 3)  # another kind
        store.record("dns", "10.0.0.1", {"list": [1]}, at=m0 + 4)  # JSON-keyed
        store.record("dns", "10.0.0.1", {"list": [1]}, at=m0 + 5)
        store.flush()
        got = {(e.kind, e.client, json.dumps(e.details, sort_keys=True), e.at): e
               for e in store.events()}
        assert len(got) == 6
        first = got[("dns", "10.0.0.1", json.dumps(dns, sort_keys=True), m0)]
        assert (first.count, first.last) == (1000, pytest.approx(m0 + 999 * 0.05))
        assert first.details == dns and first.details["port"] == 0
        assert {e.count for e in got.values() if e is not first} == {1, 2}
        listed = [e for e in got.values() if "list" in e.details]
        assert [(e.count, e.last) for e in listed] == [(2, m0 + 5)]
        flipped = [e for e in got.values() if e.details.get("port") is True]
        assert len(flipped) == 1

        # Repeats after the row was committed update it in place.
        for i in range(500):
            store.record("dns", "10.0.0.1", dict(dns), at=m0 + 55 + i * 0.001)
        store.flush()
        again = [e for e in store.events(client="10.0.0.1", kind="dns")
                 if e.details == dns and e.at == m0]
        assert len(again) == 1 and again[0].id == first.id
        assert again[0].count == 1500
        assert again[0].last == pytest.approx(m0 + 55.499)
        store.record("dns", "10.0.0.1", dict(dns), at=m0 + 61)  # the next minute: a new row
        store.flush()
        assert [e.count for e in store.events(client="10.0.0.1", kind="dns")
                if e.details == dns] == [1500, 1]


def test_folding_memory_stays_bounded_under_distinct_events(tmp_path):
    """A flood of all-different events (random names) must not grow the table of rows
    kept for folding beyond max_queue between commits."""
    with EventStore(tmp_path / "ev.db", max_queue=200, flush_interval=0.01) as store:
        for i in range(5000):
            store.record("dns", "10.0.0.1", {"name": f"r{i}.example"})
            if i % 100 == 99:
                store.flush()
                assert len(store._open) <= 2 * store.max_queue
        store.flush()
        assert len(store.events()) == 5000


def test_record_says_whether_it_started_a_row(tmp_path):
    with EventStore(tmp_path / "ev.db") as store:
        assert store.record("dns", "10.0.0.1", {"name": "a"}) is True
        assert store.record("dns", "10.0.0.1", {"name": "a"}) is False  # folded
        assert store.record("dns", "10.0.0.2", {"name": "a"}) is True


def test_plain_details_are_snapshotted_when_recorded(tmp_path):
    with EventStore(tmp_path / "ev.db") as store:
        details = {"name": "a", "n": 1}
        store.record("dns", None, details)
        details["name"] = "b"
        store.flush()
        assert [e.details for e in store.events()] == [{"name": "a", "n": 1}]


def test_folding_loses_no_repeat_while_the_writer_commits(tmp_path):
    """A thread floods one event while another flushes over and over: every repeat ends
    up in a count, whether it arrived before, during or after a commit of its row."""
    with EventStore(tmp_path / "ev.db", flush_interval=0.01) as store:
        stop = threading.Event()
        sent = 0

        def flood() -> None:
            nonlocal sent
            while not stop.is_set():
                store.record("dns", "10.0.0.1", {"name": "flood.tplinkcloud.com"})
                sent += 1

        thread = threading.Thread(target=flood)
        thread.start()
        try:
            for _ in range(20):
                store.flush()
        finally:
            stop.set()
            thread.join()
        store.flush()
        got = store.events()
    assert sent > 1000
    assert sum(e.count for e in got) == sent
    assert len(got) <= 2  # one per minute: the flood may straddle a minute boundary


def test_a_busy_store_commits_once_per_flush_interval(tmp_path, monkeypatch):
    """Events arriving steadily are batched: the writer does not commit on the first
    event after each commit (which made it commit back to back under load)."""
    commits: list[int] = []
    original = EventStore._write

    def counting(conn, inserts, updates, counts, drops):
        commits.append(len(inserts))
        return original(conn, inserts, updates, counts, drops)

    monkeypatch.setattr(EventStore, "_write", staticmethod(counting))
    with EventStore(tmp_path / "ev.db", flush_interval=0.5) as store:
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < 1.2:
            store.record("dns", "10.0.0.1", {"i": i})
            store.count("dns", "forwarded", client="10.0.0.1")
            i += 1
            if i % 3 == 0:  # a few thousand events a second: below a batch per interval
                time.sleep(0.001)
        store.flush()
        assert len(store.events()) == i
    assert sum(commits) == i
    assert len(commits) <= 5, commits  # ~1.2 s / 0.5 s, plus the flush and slack


def test_events_table_of_an_older_release_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("""CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT,
                    at REAL NOT NULL, kind TEXT NOT NULL, client TEXT, details TEXT NOT NULL)""")
    conn.execute("INSERT INTO events (at, kind, client, details) VALUES (?, 'dns', NULL, ?)",
                 (time.time() - 60, json.dumps({"old": True})))
    conn.commit()
    conn.close()
    with EventStore(path) as store:
        store.record("dns", None, {"old": False})
        store.record("dns", None, {"old": False})
        store.flush()
        got = store.events()
    assert [(e.details["old"], e.count) for e in got] == [(True, 1), (False, 2)]
    assert got[0].as_dict()["last"] == got[0].as_dict()["time"]


def test_overflow_counts_every_folded_event_it_drops(tmp_path):
    path = tmp_path / "ev.db"
    with EventStore(path, max_queue=10, flush_interval=0.05, timeout=0.05) as store:
        with write_locked(path):
            for _ in range(7):
                store.record("dns", "10.0.0.1", {"name": "first"})  # one row, count 7
            for i in range(10):
                store.record("dns", "10.0.0.1", {"i": i})  # pushes "first" out
            dropped = store.dropped
        store.flush()
        kept = [e for e in store.events() if e.kind == "dns"]
        reports = store.events(kind="store")
    assert sum(e.count for e in kept) + dropped == 17
    assert dropped >= 7 and "first" not in [e.details.get("name") for e in kept]
    assert sum(r.details["dropped"] for r in reports) == dropped


def test_size_cap_deletes_the_oldest_events_first(tmp_path):
    cap = 256 * 1024
    with EventStore(tmp_path / "ev.db", max_db_bytes=cap) as store:
        for i in range(6000):
            store.record("tls", f"10.0.{i // 250}.{i % 250}", {"i": i, "pad": "x" * 200})
        store.flush()
        assert store.trim() > 0
        conn = sqlite3.connect(tmp_path / "ev.db")
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        finally:
            conn.close()
        assert (pages - free) * size <= cap
        kept = [e.details["i"] for e in store.events()]
        assert kept and kept == list(range(6000 - len(kept), 6000))  # the newest survive
        assert store.trim() == 0  # within the cap now
    with pytest.raises(ValueError):
        EventStore(tmp_path / "x.db", max_db_bytes=1000)


def test_events_carry_the_plug_and_filter_by_plug_kind_and_id(tmp_path):
    # recent times: the writer prunes at start, and rows from 1970 are past retention
    t = float(int(time.time()))
    with EventStore(tmp_path / "e.db") as store:
        store.record("dns", "10.0.0.5", {"name": "a"}, at=t, plug="50:C7:BF:00:00:01")
        store.record("tls", "10.0.0.5", {"ja3": "x"}, at=t + 1, plug="50:C7:BF:00:00:01")
        store.record("dns", "10.0.0.6", {"name": "b"}, at=t + 2)  # not attributed
        store.record("ntp", "10.0.0.7", {"v": 4}, at=t + 3)
        store.flush()
        mine = store.events(plug="50:C7:BF:00:00:01")
        assert [(e.kind, e.plug) for e in mine] == [("dns", "50:C7:BF:00:00:01"),
                                                   ("tls", "50:C7:BF:00:00:01")]
        # unattributed rows of the plug's known addresses count as the plug's too
        both = store.events(plug="50:C7:BF:00:00:01", plug_addresses=["10.0.0.6"])
        assert [e.client for e in both] == ["10.0.0.5", "10.0.0.5", "10.0.0.6"]
        assert [e.kind for e in store.events(kind=["dns", "ntp"])] == ["dns", "dns", "ntp"]
        first = store.events()[0].id
        assert [e.at for e in store.events(after_id=first + 1)] == [t + 2, t + 3]
        assert [e.at for e in store.events(since=t + 1, until=t + 3)] == [t + 1, t + 2]

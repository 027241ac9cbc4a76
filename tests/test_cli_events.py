"""`hs100local events`, `watch` and `report` through click's runner and as a process."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import prockit
import pytest
from click.testing import CliRunner

from hs100local.cli import cli
from hs100local.events import EventReader, EventStore
from hs100local.inventory import Inventory
from hs100local.results import DiscoveredPlug

REPO = Path(__file__).resolve().parents[1]
LAMP = "50:C7:BF:00:00:01"


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "hs.db"
    with Inventory(path) as inventory:
        inventory.record([DiscoveredPlug("192.168.1.50", 9999, LAMP, "Lamp", "HS100(EU)",
                                         "2.0", "1.5.6", "ab", "on", "xor", True)])
    now = time.time()
    with EventStore(path) as store:
        store.record("tls", "192.168.1.50", {"local_port": 50443, "ja3": "771,47,,,",
                                             "ja3_hash": "h1", "ja4": "t10", "sni": None,
                                             "outcome": "unknown_ca"}, at=now - 7200, plug=LAMP)
        store.record("dns", "192.168.1.50", {"name": "n-devs.tplinkcloud.com", "type": "A",
                                             "action": "redirect"}, at=now - 60, plug=LAMP)
        store.record("ntp", "192.168.1.50", {"version": 4, "offset_ms": 5}, at=now - 50)
        store.record("dns", "192.168.1.99", {"name": "x.test", "type": "A",
                                             "action": "null"}, at=now - 40)
    return path


def run(db: Path, *args: str, code: int = 0):
    result = CliRunner().invoke(cli, ["--db", str(db), *args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def test_events_json_array_with_plug_aliases(db):
    listed = json.loads(run(db, "events", "--json").output)
    assert [(e["kind"], e["client"], e["plug"]) for e in listed] == [
        ("tls", "192.168.1.50", "Lamp"), ("dns", "192.168.1.50", "Lamp"),
        ("ntp", "192.168.1.50", "Lamp"),  # unattributed, but the plug's address
        ("dns", "192.168.1.99", None)]
    tls = listed[0]
    assert {"ja3", "ja3_hash", "ja4", "sni", "outcome"} <= set(tls["details"])
    assert tls["time"].endswith("Z") and tls["plug_mac"] == LAMP


def test_events_filters(db):
    def kinds(*args: str) -> list[str]:
        return [e["kind"] for e in json.loads(run(db, "events", "--json", *args).output)]

    assert kinds("--since", "1h") == ["dns", "ntp", "dns"]
    assert kinds("--until", "1h") == ["tls"]
    assert kinds("--kind", "dns", "--kind", "tls") == ["tls", "dns", "dns"]
    assert kinds("--plug", "Lamp") == ["tls", "dns", "ntp"]
    assert kinds("--plug", LAMP.lower(), "--kind", "dns") == ["dns"]
    assert kinds("--client", "192.168.1.99") == ["dns"]
    assert kinds("--limit", "2") == ["ntp", "dns"]


def test_events_text_and_errors(db, tmp_path):
    text = run(db, "events").output.splitlines()
    assert len(text) == 4 and "192.168.1.50 (Lamp)" in text[0] and "unknown_ca" in text[0]
    assert run(db, "events", "--kind", "time").output == "No events.\n"
    assert "--since" in run(db, "events", "--since", "soon", code=2).output
    assert "no plug 'Nobody'" in run(db, "events", "--plug", "Nobody", code=2).output
    missing = CliRunner().invoke(cli, ["--db", str(tmp_path / "none.db"), "events"])
    assert missing.exit_code == 3 and "no event database" in missing.output
    assert not (tmp_path / "none.db").exists()  # reading never creates the file


def test_events_db_from_a_serve_config(db, tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text(f'db = "{db}"\n')
    result = CliRunner().invoke(cli, ["events", "--config", str(config), "--json"])
    assert result.exit_code == 0 and len(json.loads(result.output)) == 4
    config.write_text("db = 5\n")
    bad = CliRunner().invoke(cli, ["events", "--config", str(config)])
    assert bad.exit_code == 2 and "'db'" in bad.output


def test_report_json_and_text(db):
    data = json.loads(run(db, "report", "--json", "--since", "3h").output)
    [lamp] = data["plugs"]
    assert lamp["alias"] == "Lamp" and lamp["cloud"]["count"] == 1
    assert lamp["names"] == {"n-devs.tplinkcloud.com": 1} and lamp["ntp_requests"] == 1
    assert data["other_clients"] == [{"client": "192.168.1.99", "kinds": {"dns": 1}}]
    assert json.loads(run(db, "report", "--json", "--since", "1h").output)[
        "plugs"][0]["cloud"]["count"] == 0  # the attempt was two hours ago
    text = run(db, "report").output
    assert "Lamp  50:C7:BF:00:00:01  192.168.1.50" in text and "verdict: isolated" in text
    only = json.loads(run(db, "report", "--json", "--plug", "Lamp").output)
    assert only["other_clients"] == [] and len(only["plugs"]) == 1


def test_the_reader_never_writes_and_reads_older_tables(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
                 " kind TEXT NOT NULL, client TEXT, details TEXT NOT NULL)")
    conn.execute("INSERT INTO events (at, kind, client, details) VALUES (1, 'dns', 'a', '{}')")
    conn.commit()
    conn.close()
    with EventReader(path) as reader:
        [event] = reader.events(plug=LAMP, plug_addresses=["a"])
        assert (event.count, event.plug, reader.last_id()) == (1, None, 1)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._conn.execute("DELETE FROM events")
    with sqlite3.connect(path) as conn:  # nothing was migrated by reading
        assert [r[1] for r in conn.execute("PRAGMA table_info(events)")][-1] == "details"
    inventory_only = tmp_path / "inv.db"
    Inventory(inventory_only).close()
    with EventReader(inventory_only) as reader:
        assert reader.events() == [] and reader.last_id() == 0


def test_watch_prints_json_lines_when_piped_and_stops_on_sigint(db):
    proc = prockit.spawn(  # default signal dispositions, whatever pytest inherited
        [sys.executable, "-m", "hs100local", "--db", str(db), "watch", "-n", "1", "--interval",
         "0.1", "--kind", "dns", "--kind", "tls"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        backlog = json.loads(proc.stdout.readline())
        assert (backlog["kind"], backlog["client"]) == ("dns", "192.168.1.99")
        with EventStore(db, flush_interval=0.05) as store:
            store.record("ntp", "192.168.1.50", {"version": 3})  # filtered out
            store.record("tls", "192.168.1.50", {"outcome": "unknown_ca"}, plug=LAMP)
            store.flush()
        new = json.loads(proc.stdout.readline())
        assert (new["kind"], new["plug"], new["details"]["outcome"]) == ("tls", "Lamp",
                                                                         "unknown_ca")
        with EventStore(db) as store:
            store.record("dns", "192.168.1.50", {"name": "later"}, plug=LAMP)
        assert json.loads(proc.stdout.readline())["details"] == {"name": "later"}
    finally:
        out, err = prockit.finish(proc, signal.SIGINT)  # killed (and failing) if it ignores it
    assert proc.returncode == 0 and err == "" and out == ""


def test_watch_text_lines_with_text_flag(db):
    proc = prockit.spawn(
        [sys.executable, "-m", "hs100local", "--db", str(db), "watch", "--text", "-n", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline(), proc.stdout.readline()
    finally:
        prockit.finish(proc, signal.SIGINT)
    assert "ntp" in first and "192.168.1.50 (Lamp)" in first
    assert "x.test A -> null" in second and "\x1b" not in second  # no colour when piped


def test_watch_stops_on_sigint_even_when_started_with_sigint_ignored(db):
    """pytest run as a background job of a non-interactive shell (``bash -c 'pytest &'``)
    has SIGINT ignored, and children inherit that: a plain Popen'd ``watch`` would never
    stop on SIGINT. Children started through prockit get default dispositions."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        inherited = prockit.signal_set("self", "SigIgn")
        proc = prockit.spawn(
            [sys.executable, "-m", "hs100local", "--db", str(db), "watch", "-n", "1",
             "--interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=REPO)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert signal.SIGINT in inherited  # the state this test is about
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["kind"] == "dns"  # running, handlers set
        ignored = prockit.signal_set(proc.pid, "SigIgn")
        assert not ignored & {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
    finally:
        out, err = prockit.finish(proc, signal.SIGINT)
    assert proc.returncode == 0 and err == "" and out == ""

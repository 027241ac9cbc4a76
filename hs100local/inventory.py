"""Local inventory of the plugs discovery has found (an embedded SQLite file).

Discovery only tells what answers *now*; the inventory remembers what answered
before, so the CLI can address a plug by its alias after DHCP moved it, and can
say what changed since last time: a new address, new firmware, and above all a
firmware update that closed port 9999 (KLAP) and took local control away.

One file, shared with other modules (the events table lives there too), so our
tables are named ``plugs`` and ``plug_changes`` and the schema is versioned with
``PRAGMA user_version``. Several processes may discover at once (a cron job and
a user): every :meth:`Inventory.record` is one ``BEGIN IMMEDIATE`` transaction,
so two writers queue on the lock instead of both inserting the same MAC.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from hs100local.errors import ProtocolError, StoreError, TargetError
from hs100local.hostport import DEFAULT_PORT
from hs100local.results import PROTOCOL_XOR, DiscoveredPlug, normalize_mac

T = TypeVar("T")

DB_ENV = "HS100LOCAL_DB"

#: what :class:`Change` ``kind`` can be, in the order one sighting reports them
KINDS = ("new", "ip", "firmware", "protocol", "alias")

SCHEMA_VERSION = 1

# One tuple of statements per schema version; entry n-1 brings version n-1 to n.
# Statements are idempotent (IF NOT EXISTS) so re-running a step cannot hurt.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS plugs (
            mac TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            port INTEGER NOT NULL,
            alias TEXT NOT NULL,
            model TEXT NOT NULL,
            hw_ver TEXT NOT NULL,
            sw_ver TEXT NOT NULL,
            device_id TEXT NOT NULL,
            protocol TEXT NOT NULL,
            controllable INTEGER NOT NULL,
            children TEXT NOT NULL DEFAULT '[]',
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL
        )""",
        # AUTOINCREMENT: ids of forgotten plugs' changes are never reused, so a
        # reader that remembers "last id seen" cannot miss or repeat a change.
        """CREATE TABLE IF NOT EXISTS plug_changes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            mac TEXT NOT NULL REFERENCES plugs(mac) ON DELETE CASCADE,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            old TEXT,
            new TEXT,
            alias TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS plug_changes_mac_at ON plug_changes (mac, at)",
        "CREATE INDEX IF NOT EXISTS plug_changes_at ON plug_changes (at)",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


# ------------------------------------------------------------------- location


def _data_dir() -> Path:
    """The per-user data directory of the platform, without platformdirs."""
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) if local else Path.home() / "AppData" / "Local"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg)
    return Path.home() / ".local" / "share"


def default_db_path() -> Path:
    """``$HS100LOCAL_DB`` if set, else ``<user data dir>/hs100local/hs100local.db``."""
    override = os.environ.get(DB_ENV)
    if override:
        return Path(override).expanduser()
    return _data_dir() / "hs100local" / "hs100local.db"


def _make_dirs(directory: Path) -> None:
    """Create missing parents with mode 0o700: the inventory maps the home network.

    ``os.makedirs(mode=...)`` applies the mode to the last directory only, so each
    missing level is made here; one made meanwhile by another process is fine.
    """
    missing: list[Path] = []
    while not directory.exists() and directory.parent != directory:
        missing.append(directory)
        directory = directory.parent
    for level in reversed(missing):
        with suppress(FileExistsError):
            level.mkdir(mode=0o700)


# ---------------------------------------------------------------------- time


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken as UTC (stored times are UTC, and
    reading it as local time would silently shift it by the zone offset)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _to_ts(moment: datetime) -> float:
    return _utc(moment).timestamp()


def _from_ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL, retrying while locked: unlike other statements, changing the
    journal mode does not wait on the busy handler, so two processes creating the
    file at the same moment would otherwise fail at once with "database is locked"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _address(host: str, port: int) -> str:
    """``host`` on the default port, else ``host:port`` (``[v6]:port``)."""
    if port == DEFAULT_PORT:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------- records


@dataclass(frozen=True)
class ChildRecord:
    """One outlet of a strip as last seen; its alias is a name :meth:`Inventory.lookup`
    resolves, so ``hs100local on "Lamp"`` works without knowing the strip."""

    index: int  # 1-based
    id: str
    alias: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "alias": self.alias}


@dataclass(frozen=True)
class PlugRecord:
    """What the inventory knows about one plug (keyed by MAC: addresses move)."""

    mac: str
    host: str
    port: int
    alias: str
    model: str
    hw_ver: str
    sw_ver: str
    device_id: str
    protocol: str
    controllable: bool
    children: tuple[ChildRecord, ...]
    first_seen: datetime
    last_seen: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "host": self.host,
            "port": self.port,
            "alias": self.alias,
            "model": self.model,
            "hw_ver": self.hw_ver,
            "sw_ver": self.sw_ver,
            "device_id": self.device_id,
            "protocol": self.protocol,
            "controllable": self.controllable,
            "children": [c.as_dict() for c in self.children],
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
        }


@dataclass(frozen=True)
class Change:
    """Something discovery noticed about a plug; ``old``/``new`` are display strings
    ("host[:port]", "sw_ver (hw hw_ver)", protocol, alias) so a log needs no lookup."""

    id: int
    mac: str
    at: datetime
    kind: str  # one of KINDS
    old: str | None
    new: str | None
    alias: str  # the plug's alias when recorded: names it even after it is forgotten

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mac": self.mac,
            "at": _iso(self.at),
            "kind": self.kind,
            "old": self.old,
            "new": self.new,
            "alias": self.alias,
            "description": self.describe(),
        }

    def describe(self) -> str:
        """One line for a human; a lost local control must not read like trivia."""
        who = f"{self.alias} ({self.mac})" if self.alias else self.mac
        return f"{who}: {self._what()}"

    def _what(self) -> str:
        if self.kind == "new":
            return f"new plug at {self.new}"
        if self.kind == "ip":
            return f"address {self.old} -> {self.new}"
        if self.kind == "firmware":
            return f"firmware {self.old} -> {self.new}"
        if self.kind == "protocol":
            # Anything but XOR (KLAP, or AES on newer firmware) means port 9999 is shut.
            if self.old == PROTOCOL_XOR:
                return (
                    f"protocol xor -> {self.new}: port 9999 closed, local control lost "
                    f"({(self.new or '').upper()} needs cloud credentials; 'Third-Party "
                    "Compatibility' in the Kasa app is reported to reopen it)"
                )
            if self.new == PROTOCOL_XOR:
                return f"protocol {self.old} -> xor: port 9999 open again, local control is back"
            return f"protocol {self.old} -> {self.new}"
        if self.kind == "alias":
            if not self.old:
                return f"alias set to {self.new!r}"
            return f"renamed {self.old!r} -> {self.new!r}"
        return f"{self.kind} {self.old} -> {self.new}"


@dataclass(frozen=True)
class Resolved:
    """A name resolved by :meth:`Inventory.lookup`: the plug, and the outlet if the
    name was an outlet's alias."""

    record: PlugRecord
    child: ChildRecord | None


def _children_json(children: Iterable[ChildRecord]) -> str:
    return json.dumps([c.as_dict() for c in children], ensure_ascii=False)


def newest_query(table: str, where: list[str], args: list[Any], limit: int | None) -> str:
    """``SELECT`` rows of a log table oldest first; ``limit`` keeps the *newest*
    ``limit`` rows (what "the last 20" means). Appends the limit to ``args``."""
    if limit is not None and limit < 0:
        raise TargetError(f"limit must not be negative ({limit})")
    query = f"SELECT * FROM {table}"
    if where:
        query += " WHERE " + " AND ".join(where)
    if limit is not None:
        query = f"SELECT * FROM ({query} ORDER BY at DESC, id DESC LIMIT ?)"
        args.append(limit)
    return query + " ORDER BY at, id"


def _plug_from_row(row: sqlite3.Row) -> PlugRecord:
    try:
        children = tuple(
            ChildRecord(int(c["index"]), str(c["id"]), str(c["alias"]))
            for c in json.loads(row["children"])
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"corrupt outlet list stored for {row['mac']}: {exc}") from None
    return PlugRecord(
        mac=row["mac"],
        host=row["host"],
        port=int(row["port"]),
        alias=row["alias"],
        model=row["model"],
        hw_ver=row["hw_ver"],
        sw_ver=row["sw_ver"],
        device_id=row["device_id"],
        protocol=row["protocol"],
        controllable=bool(row["controllable"]),
        children=children,
        first_seen=_from_ts(row["first_seen"]),
        last_seen=_from_ts(row["last_seen"]),
    )


def _change_from_row(row: sqlite3.Row) -> Change:
    return Change(
        id=int(row["id"]),
        mac=row["mac"],
        at=_from_ts(row["at"]),
        kind=row["kind"],
        old=row["old"],
        new=row["new"],
        alias=row["alias"],
    )


def _ip_order(record: PlugRecord) -> tuple[int, int, int, str, str]:
    """Sort key: addresses numerically (IPv4 before IPv6), names after them."""
    try:
        ip = ipaddress.ip_address(record.host)
    except ValueError:
        return (1, 0, 0, record.host, record.mac)
    return (0, ip.version, int(ip), "", record.mac)


def _firmware(sw_ver: str, hw_ver: str) -> str:
    return f"{sw_ver} (hw {hw_ver})"


# ----------------------------------------------------------------- inventory


_C = TypeVar("_C", bound="ClosesOnExit")


class ClosesOnExit:
    """``with`` support for the database holders (inventory, event store and reader):
    leaving the block calls ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Inventory(ClosesOnExit):
    """The plug inventory in one SQLite file; one connection per object.

    Every sqlite3 error leaves the methods as :class:`StoreError` naming the file,
    so the CLI prints one line instead of a traceback.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 10.0):
        self.path = Path(path) if path is not None else default_db_path()
        self._conn: sqlite3.Connection | None = None
        try:
            _make_dirs(self.path.parent)
            # isolation_level=None: we issue BEGIN ourselves, so that it is IMMEDIATE.
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open inventory {self.path}: {exc}") from None
        self._conn = conn
        try:
            conn.row_factory = sqlite3.Row  # connect(timeout=) already set busy_timeout
            # WAL: readers never block the writer; NORMAL sync is safe with WAL (a
            # power cut may lose the last sighting, never corrupt the file).
            _enable_wal(conn, timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot open inventory {self.path}: {exc}") from None

    # -- plumbing

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"inventory {self.path} is closed")
        return self._conn

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn sqlite3 errors into one-line StoreErrors."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"inventory {self.path}: cannot {action}: {exc}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock *before* reading,
        so a concurrent writer waits for us instead of acting on stale rows."""
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):  # the original error is the one to report
                    conn.execute("ROLLBACK")
            raise

    def _read(self, action: str, build: Callable[[sqlite3.Connection], T]) -> T:
        with self._guard(action):
            return build(self._db())

    def _migrate(self) -> None:
        """Bring the schema forward; idempotent, and safe when two processes race.

        The version is read inside the write transaction, so only one process runs
        a step. The tables are also checked: another module sharing the file may
        have set ``user_version`` before ours existed.
        """
        if self._schema(self._db()) == (SCHEMA_VERSION, 2):
            return  # current: no write lock (every open would queue behind a writer)
        with self._write() as conn:
            version, have = self._schema(conn)
            start = min(version, SCHEMA_VERSION) if have == 2 else 0
            for step in _MIGRATIONS[start:]:
                for statement in step:
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _schema(conn: sqlite3.Connection) -> tuple[int, int]:
        """(user_version, how many of our two tables exist)."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        have = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            " AND name IN ('plugs', 'plug_changes')"
        ).fetchone()[0]
        return version, have

    # -- writing

    def record(
        self, found: Iterable[DiscoveredPlug], *, now: datetime | None = None
    ) -> list[Change]:
        """Store one discovery round and return what changed, in order.

        All in one transaction: two processes discovering at once never lose a
        row nor both report the same plug as new.
        """
        at = _to_ts(now if now is not None else datetime.now(timezone.utc))
        sightings: list[tuple[str, DiscoveredPlug]] = []
        for plug in found:  # validate everything before writing anything
            mac = normalize_mac(plug.mac)
            if mac is None:
                raise ProtocolError(f"device at {plug.host} has no valid MAC ({plug.mac!r})")
            sightings.append((mac, plug))
        if not sightings:
            return []
        changes: list[Change] = []
        with self._guard("record discovered plugs"), self._write() as conn:
            for mac, plug in sightings:
                changes.extend(self._upsert(conn, mac, plug, at))
        return changes

    def _upsert(
        self, conn: sqlite3.Connection, mac: str, plug: DiscoveredPlug, at: float
    ) -> list[Change]:
        row = conn.execute("SELECT * FROM plugs WHERE mac = ?", (mac,)).fetchone()
        children = tuple(ChildRecord(c.index, c.id, c.alias) for c in plug.children)
        address = _address(plug.host, plug.port)
        if row is None:
            conn.execute(
                "INSERT INTO plugs (mac, host, port, alias, model, hw_ver, sw_ver, device_id,"
                " protocol, controllable, children, first_seen, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mac, plug.host, plug.port, plug.alias, plug.model, plug.hw_ver, plug.sw_ver,
                 plug.device_id, plug.protocol, int(plug.controllable),
                 _children_json(children), at, at),
            )
            new = f"{address} ({plug.model})" if plug.model else address
            return [self._log(conn, mac, at, "new", None, new, plug.alias)]

        old = _plug_from_row(row)
        # A KLAP/AES sighting knows little (no alias, often no firmware, no outlets): an empty
        # field means "not told", not "changed to nothing", so the stored value stays;
        # a plug that lost local control keeps the name the user knows it by.
        alias = plug.alias or old.alias
        sw_ver = plug.sw_ver or old.sw_ver
        hw_ver = plug.hw_ver or old.hw_ver
        if not children and not plug.controllable:
            children = old.children
        # The port is the one the discovery answer came from, so it differs between
        # protocols (9999 vs 20002): with a protocol change only the host counts.
        same_protocol = plug.protocol == old.protocol
        diffs: list[tuple[str, str, str]] = []
        if plug.host != old.host or (same_protocol and plug.port != old.port):
            diffs.append(("ip", _address(old.host, old.port), address))
        if (sw_ver, hw_ver) != (old.sw_ver, old.hw_ver):
            diffs.append(
                ("firmware", _firmware(old.sw_ver, old.hw_ver), _firmware(sw_ver, hw_ver))
            )
        if not same_protocol:
            diffs.append(("protocol", old.protocol, plug.protocol))
        if alias != old.alias:
            diffs.append(("alias", old.alias, alias))
        conn.execute(
            "UPDATE plugs SET host = ?, port = ?, alias = ?, model = ?, hw_ver = ?, sw_ver = ?,"
            " device_id = ?, protocol = ?, controllable = ?, children = ?, last_seen = ?"
            " WHERE mac = ?",
            (plug.host, plug.port, alias, plug.model or old.model, hw_ver, sw_ver,
             plug.device_id or old.device_id, plug.protocol, int(plug.controllable),
             _children_json(children), at, mac),
        )
        return [self._log(conn, mac, at, kind, was, now, alias) for kind, was, now in diffs]

    @staticmethod
    def _log(
        conn: sqlite3.Connection, mac: str, at: float, kind: str, old: str | None,
        new: str | None, alias: str,
    ) -> Change:
        cursor = conn.execute(
            "INSERT INTO plug_changes (mac, at, kind, old, new, alias) VALUES (?, ?, ?, ?, ?, ?)",
            (mac, at, kind, old, new, alias),
        )
        assert cursor.lastrowid is not None
        return Change(cursor.lastrowid, mac, _from_ts(at), kind, old, new, alias)

    def forget(self, mac: str) -> bool:
        """Delete a plug and its history; False if it was not known."""
        key = normalize_mac(mac)
        if key is None:
            return False
        with self._guard(f"forget {key}"), self._write() as conn:
            conn.execute("DELETE FROM plug_changes WHERE mac = ?", (key,))
            return conn.execute("DELETE FROM plugs WHERE mac = ?", (key,)).rowcount > 0

    # -- reading

    def _all_plugs(self, conn: sqlite3.Connection) -> list[PlugRecord]:
        records = [_plug_from_row(r) for r in conn.execute("SELECT * FROM plugs")]
        return sorted(records, key=_ip_order)

    def plugs(self) -> list[PlugRecord]:
        """All known plugs, by IP address (numerically), then MAC."""
        return self._read("list plugs", self._all_plugs)

    def get(self, mac: str) -> PlugRecord | None:
        """The plug with this MAC, in any spelling; None if unknown or not a MAC."""
        key = normalize_mac(mac)
        if key is None:
            return None

        def fetch(conn: sqlite3.Connection) -> PlugRecord | None:
            row = conn.execute("SELECT * FROM plugs WHERE mac = ?", (key,)).fetchone()
            return None if row is None else _plug_from_row(row)

        return self._read(f"read {key}", fetch)

    def lookup(self, name: str) -> Resolved | None:
        """Resolve what a user typed: a MAC, a plug alias, or an outlet alias.

        Aliases match case-insensitively after stripping; a plug alias wins over an
        outlet alias. A name several plugs (or outlets) share is a TargetError
        listing them, since acting on a guess could switch the wrong device.
        """
        text = name.strip()
        if not text:
            return None
        mac = normalize_mac(text)
        if mac is not None:
            record = self.get(mac)
            if record is not None:
                return Resolved(record, None)
        key = text.casefold()
        records = self.plugs()
        plugs = [r for r in records if r.alias.strip().casefold() == key]
        if len(plugs) == 1:
            return Resolved(plugs[0], None)
        if plugs:
            macs = ", ".join(r.mac for r in plugs)
            raise TargetError(f"alias {text!r} is ambiguous: {macs}; use the MAC")
        outlets = [
            (r, c) for r in records for c in r.children if c.alias.strip().casefold() == key
        ]
        if len(outlets) == 1:
            return Resolved(*outlets[0])
        if outlets:
            where = ", ".join(f"{r.mac} outlet {c.index}" for r, c in outlets)
            raise TargetError(
                f"alias {text!r} is ambiguous: {where}; use the MAC and outlet index"
            )
        return None

    def changes(
        self,
        *,
        mac: str | None = None,
        kinds: Iterable[str] | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[Change]:
        """Recorded changes, oldest first; ``limit`` keeps the *newest* ``limit``
        (what "the last 20 changes" means), still returned oldest first."""
        where: list[str] = []
        args: list[Any] = []
        if mac is not None:
            key = normalize_mac(mac)
            if key is None:
                raise TargetError(f"not a MAC address: {mac!r}")
            where.append("mac = ?")
            args.append(key)
        if kinds is not None:
            wanted = sorted(set(kinds))
            unknown = [k for k in wanted if k not in KINDS]
            if unknown:
                raise TargetError(
                    f"unknown change kind {', '.join(unknown)} (known: {', '.join(KINDS)})"
                )
            where.append(f"kind IN ({', '.join('?' * len(wanted))})" if wanted else "0")
            args.extend(wanted)
        if since is not None:
            where.append("at >= ?")
            args.append(_to_ts(since))
        query = newest_query("plug_changes", where, args, limit)

        def fetch(conn: sqlite3.Connection) -> list[Change]:
            return [_change_from_row(r) for r in conn.execute(query, args)]

        return self._read("read changes", fetch)

    # -- lifetime

    def close(self) -> None:
        """Close the connection; harmless to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise StoreError(f"inventory {self.path}: cannot close: {exc}") from None



async def record_async(
    found: Iterable[DiscoveredPlug], path: str | os.PathLike[str] | None = None,
    *, now: datetime | None = None,
) -> list[Change]:
    """:meth:`Inventory.record` for asyncio code (``serve``'s periodic discovery).

    SQLite calls block, and a busy database may wait up to its timeout, so the
    work runs in a worker thread that opens (and closes) its own connection.
    """
    import asyncio

    plugs = list(found)

    def work() -> list[Change]:
        with Inventory(path) as inventory:
            return inventory.record(plugs, now=now)

    return await asyncio.to_thread(work)

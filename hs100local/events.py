"""Event store: what the isolation services (DNS now, NTP and cloud listener later) saw.

The services share one asyncio process, and a SQLite write can wait seconds on a
lock another process holds (a discovery updating the inventory), so nothing here
touches SQLite on the caller's path: :meth:`EventStore.record` and
:meth:`EventStore.count` only append to memory, and one writer thread with its own
connection commits a batch per transaction every ``flush_interval`` (sooner only
when a full batch waits). Floods are aggregated in memory first: identical events
(kind, client, details) within a minute are one row with a count and a last-seen
time, and a counter per client per minute (forwarded DNS queries) is one UPSERT
per flush, so a busy network costs a few rows a minute instead of one per packet.

The tables live in the inventory's file (one file to back up or delete) but are
not part of its versioned schema: they are created with ``IF NOT EXISTS`` and
``PRAGMA user_version`` is left alone, because the inventory owns it and would
otherwise skip its own migrations. Columns added later are added on open when
missing.

Durability: an event is committed within about ``flush_interval`` of
:meth:`EventStore.record`, so a crash of the process loses at most that much. With
WAL and ``synchronous=NORMAL`` a committed event survives the process being
killed; a power cut may lose the last commits, never corrupt the file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hs100local.errors import StoreError
from hs100local.inventory import (
    ClosesOnExit,
    _enable_wal,
    _from_ts,
    _iso,
    _make_dirs,
    default_db_path,
    newest_query,
)

T = TypeVar("T")

log = logging.getLogger("hs100local.events")

#: seconds between the writer's prunes (module level so a test can shorten it)
PRUNE_INTERVAL = 3600.0
#: seconds between the writer's checks of the database size against max_db_bytes
SIZE_CHECK_INTERVAL = 60.0
#: most events per transaction: keeps the write lock short for other processes
BATCH_MAX = 5000
#: kind of the synthetic event that reports events dropped on overflow
STORE_KIND = "store"

_SCHEMA = (
    # AUTOINCREMENT: when a prune empties the table, ids are not reused, so a reader
    # that remembers "last id seen" cannot mistake a new event for one it had.
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        client TEXT,
        details TEXT NOT NULL,
        count INTEGER NOT NULL DEFAULT 1,
        last REAL,
        plug TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS events_at ON events (at)",
    "CREATE INDEX IF NOT EXISTS events_kind_at ON events (kind, at)",
    # client is '' rather than NULL for "no client": NULLs are all distinct in a
    # primary key, so the UPSERT would never find the row to add to.
    """CREATE TABLE IF NOT EXISTS event_counts (
        minute REAL NOT NULL,
        kind TEXT NOT NULL,
        client TEXT NOT NULL,
        key TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (minute, kind, client, key)
    )""",
)

_INSERT_EVENT = (
    "INSERT INTO events (at, kind, client, details, count, last, plug)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# After the ALTER TABLEs (an older table has no plug column to index before them).
_INDEXES_ON_ADDED = ("CREATE INDEX IF NOT EXISTS events_plug_at ON events (plug, at)",)
_UPDATE_EVENT = "UPDATE events SET count = ?, last = ? WHERE id = ?"
_UPSERT_COUNT = (
    "INSERT INTO event_counts (minute, kind, client, key, n) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (minute, kind, client, key) DO UPDATE SET n = n + excluded.n"
)
# Columns added after the first release of the table (ALTER TABLE on open).
_ADDED_COLUMNS = (
    ("count", "INTEGER NOT NULL DEFAULT 1"),
    ("last", "REAL"),
    ("plug", "TEXT"),  # MAC of the plug the client address was at (see attribution)
)

_CountKey = tuple[float, str, str, str]  # (minute, kind, client or '', key)
_Frozen = tuple[tuple[str, Any], ...] | str  # details as a hashable value
_PLAIN = (str, int, type(None))  # exact types (not bool, not float) safe to key on

# Life of a _Row.
_NEW = 0  # waiting in _pending to be inserted
_INFLIGHT = 1  # the writer is committing it
_CLEAN = 2  # in the database as it is in memory
_DIRTY = 3  # in the database, with repeats not yet written (listed in _dirty)
_LOST = 4  # dropped on overflow


class _Row:
    """One ``events`` row in the making: the first event with its kind, client and
    details in a minute, and the count of the identical ones folded into it since.

    A flood (a plug asking for its cloud name in a tight loop, a scanner hammering
    the TLS port) thus costs one row per minute and not one per packet, and the
    repeats cost the caller a dict lookup instead of a JSON encoding.
    """

    __slots__ = ("at", "client", "details", "key", "kind", "last", "minute", "n", "plug",
                 "rowid", "state")

    def __init__(self, key: tuple[str, str | None, _Frozen, str | None], at: float, kind: str,
                 client: str | None, details: _Frozen, minute: float,
                 plug: str | None = None) -> None:
        self.key = key
        self.plug = plug
        self.at = at
        self.kind = kind
        self.client = client
        self.details = details
        self.minute = minute
        self.n = 1
        self.last = at
        self.rowid: int | None = None
        self.state = _NEW

    def details_json(self) -> str:
        if isinstance(self.details, str):
            return self.details
        return _details_json(dict(self.details))


@dataclass(frozen=True)
class Event:
    """One recorded event; ``at`` is a Unix timestamp (UTC).

    ``count`` identical events (same kind, client and details) arrived in the minute
    of ``at``, the last of them at ``last``.
    """

    id: int
    at: float
    kind: str
    client: str | None
    details: dict[str, Any]
    count: int = 1
    last: float | None = None
    #: MAC of the plug the client was when recorded (None: not a known plug)
    plug: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": _iso(_from_ts(self.at)),
            "kind": self.kind,
            "client": self.client,
            "plug_mac": self.plug,
            "details": self.details,
            "count": self.count,
            "last": _iso(_from_ts(self.at if self.last is None else self.last)),
        }


@dataclass(frozen=True)
class Count:
    """How many times ``key`` happened for ``client`` in the minute starting at ``minute``."""

    minute: float
    kind: str
    client: str | None
    key: str
    n: int


def _details_json(details: dict[str, Any]) -> str:
    """Serialize now, on the caller's side: a dict mutated after :meth:`EventStore.record`
    cannot change what is stored, and a value JSON cannot take becomes text here instead
    of failing the writer's whole batch over and over."""
    try:
        return json.dumps(details, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):  # non-string keys, circular references
        return json.dumps({"unserializable": repr(details)}, ensure_ascii=False)


def _freeze(details: dict[str, Any]) -> _Frozen:
    """A hashable snapshot of ``details`` to fold repeats on.

    Flat details of strings, ints and None (what the services record) become a tuple of
    items, cheap to build and hash, and encoded by the writer thread; anything else
    becomes its JSON text right away (an exact key, and immune to later mutation).
    """
    items = tuple(details.items())
    for key, value in items:
        if type(key) is not str or type(value) not in _PLAIN:
            return _details_json(details)
    return items


def _minute(at: float) -> float:
    return float(int(at // 60) * 60)


class _EventQueries(ClosesOnExit):
    """``events()`` for the writer and the read-only reader alike; they differ only in
    the connection ``_select`` runs the query on."""

    path: Path

    def _select(self, query: str, args: list[Any]) -> list[Event]:
        raise NotImplementedError

    def events(
        self, *, since: float | None = None, until: float | None = None,
        kind: str | Iterable[str] | None = None, client: str | None = None,
        plug: str | None = None, plug_addresses: Iterable[str] = (),
        after_id: int | None = None, limit: int | None = None,
    ) -> list[Event]:
        """Committed events, oldest first; ``limit`` keeps the *newest* ``limit`` (what
        "the last 20 events" means), still returned oldest first.

        ``kind`` is one kind or several. ``plug`` (a MAC) selects the events attributed
        to that plug, and with ``plug_addresses`` also the unattributed events of those
        client addresses (recorded by a service that had no inventory to ask).
        ``after_id`` selects rows added after that one (what a live tail wants).
        """
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("at >= ?", since), ("at < ?", until), ("client = ?", client),
                              ("id > ?", after_id)):
            if value is not None:
                where.append(column)
                args.append(value)
        if kind is not None:
            kinds = [kind] if isinstance(kind, str) else list(kind)
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        if plug is not None:
            addresses = list(plug_addresses)
            if addresses:
                where.append(f"(plug = ? OR (plug IS NULL AND client IN "
                             f"({', '.join('?' * len(addresses))})))")
                args.extend([plug, *addresses])
            else:
                where.append("plug = ?")
                args.append(plug)
        return self._select(newest_query("events", where, args, limit), args)


class EventStore(_EventQueries):
    """Events and per-minute counters in SQLite, written by one background thread.

    ``record``/``count`` never block, and raise only on programming errors (use after
    :meth:`close`, an ``at`` that is not a number). Identical events (kind, client,
    details) within a minute are stored once with a count. If more than ``max_queue``
    rows are waiting (the database stayed locked or failing), the oldest waiting are
    dropped, their events counted in :attr:`dropped` and reported by a ``"store"``
    event; counters are never dropped since they are already aggregated. Reads and
    :meth:`prune` use their own short-lived connection and may run from any thread
    while the writer works.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        flush_interval: float = 0.5,
        max_queue: int = 100_000,
        retention_days: float = 30.0,
        max_db_bytes: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        if (flush_interval <= 0 or max_queue < 1 or retention_days <= 0 or timeout < 0
                or (max_db_bytes is not None and max_db_bytes < 65536)):
            raise ValueError(
                "flush_interval and retention_days must be positive, max_queue at least 1, "
                "max_db_bytes at least 64 KiB, timeout not negative"
            )
        self.path = Path(path) if path is not None else default_db_path()
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.retention_days = retention_days
        #: cap on the database's used size: the oldest events go first (a flood of
        #: distinct events must not fill the SD card of a Raspberry Pi)
        self.max_db_bytes = max_db_bytes
        self.timeout = timeout  # busy timeout of every connection

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # the writer finished a round
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        # All below are guarded by _lock.
        self._seq = 0  # bumped by every record() and count()
        self._done = 0  # everything up to this seq is committed (or dropped)
        self._pending: deque[_Row] = deque()  # rows to insert, oldest first
        self._dirty: list[_Row] = []  # rows in the database with repeats to write
        # newest row per key
        self._open: dict[tuple[str, str | None, _Frozen, str | None], _Row] = {}
        self._open_minute = 0.0  # minute of the last sweep of _open
        self._dropped = 0
        self._reported = 0  # drops already written as a "store" event
        self._counts: dict[_CountKey, int] = {}

        conn = self._connect(check_same_thread=False)  # handed over to the writer below
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
            for column, declaration in _ADDED_COLUMNS:
                if column not in have:
                    conn.execute(f"ALTER TABLE events ADD COLUMN {column} {declaration}")
            for statement in _INDEXES_ON_ADDED:
                conn.execute(statement)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open event store {self.path}: {exc}") from None
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="hs100local-events", daemon=True
        )
        self._thread.start()

    # -- plumbing

    def _connect(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        """A connection with WAL (readers never block the writer) and NORMAL sync."""
        try:
            _make_dirs(self.path.parent)
            # isolation_level=None: we issue BEGIN ourselves, so that it is IMMEDIATE.
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None,
                check_same_thread=check_same_thread,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open event store {self.path}: {exc}") from None
        try:
            conn.row_factory = sqlite3.Row
            _enable_wal(conn, self.timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open event store {self.path}: {exc}") from None
        return conn

    def _use(self, action: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on a short-lived connection: sqlite3 connections must not be
        shared between threads, and callers may read from any thread."""
        conn = self._connect()
        try:
            return work(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"event store {self.path}: cannot {action}: {exc}") from None
        finally:
            conn.close()

    # -- hot path

    def record(
        self, kind: str, client: str | None, details: dict[str, Any], *,
        at: float | None = None, plug: str | None = None,
    ) -> bool:
        """Queue one event; returns at once, the writer commits it within ~flush_interval.

        An event identical in kind, client and details to one already recorded in the
        same minute only adds to that one's count (and moves its ``last``). Returns
        True when the event starts a row of its own, False when it was folded into one
        (what ``serve`` logs: the first occurrence in a minute, not every repeat).
        ``plug`` is the MAC of the plug ``client`` belongs to, if known; it is not part
        of the details, but events of two plugs are never folded into one row.
        """
        item_at = time.time() if at is None else float(at)
        kind = str(kind)
        client = None if client is None else str(client)
        frozen = _freeze(details)
        # Two plugs behind one address (emulators, a NAT) keep their own rows.
        key = (kind, client, frozen, plug)
        minute = item_at // 60
        with self._lock:
            if self._closed:
                raise StoreError(f"event store {self.path} is closed")
            self._seq += 1
            row = self._open.get(key)
            if row is not None and row.minute == minute:
                row.n += 1
                if item_at > row.last:
                    row.last = item_at
                if row.state == _CLEAN:
                    row.state = _DIRTY
                    self._dirty.append(row)
                return False
            row = _Row(key, item_at, kind, client, frozen, minute, plug)
            self._open[key] = row
            self._pending.append(row)
            if len(self._pending) > self.max_queue:
                self._drop_oldest()
            # The writer comes by every flush_interval; wake it early only when a
            # batch is full, so that a busy service gets batches, not a commit per event.
            wake = len(self._pending) == BATCH_MAX
        if wake:
            self._wake.set()
        return True

    def _drop_oldest(self) -> None:
        lost = self._pending.popleft()
        lost.state = _LOST
        self._dropped += lost.n
        if self._open.get(lost.key) is lost:
            del self._open[lost.key]

    def count(
        self, kind: str, key: str, n: int = 1, *, client: str | None = None,
        at: float | None = None,
    ) -> None:
        """Add ``n`` to the counter (minute of ``at``, kind, client, key); non-blocking."""
        bucket = (_minute(time.time() if at is None else float(at)), str(kind),
                  "" if client is None else str(client), str(key))
        with self._lock:
            if self._closed:
                raise StoreError(f"event store {self.path} is closed")
            self._counts[bucket] = self._counts.get(bucket, 0) + int(n)
            self._seq += 1

    @property
    def dropped(self) -> int:
        """Events lost to overflow since the store was opened."""
        return self._dropped

    # -- flushing

    def flush(self, timeout: float = 5.0) -> None:
        """Block until everything recorded or counted so far is committed (or dropped).

        Raises :class:`StoreError` if that did not happen within ``timeout`` (the
        database stayed locked or failing); nothing is lost by that, the writer keeps
        retrying.
        """
        with self._lock:
            if self._closed:
                raise StoreError(f"event store {self.path} is closed")
        self._flush(timeout)

    def _flush(self, timeout: float) -> None:
        with self._lock:
            target = self._seq
            self._wake.set()  # also cuts short the wait after a failed round
            if not self._changed.wait_for(lambda: self._done >= target, timeout):
                raise StoreError(
                    f"event store {self.path}: {len(self._pending)} events, "
                    f"{len(self._dirty)} repeat counts and the counters not written "
                    f"within {timeout:g} s"
                )

    async def aflush(self) -> None:
        """:meth:`flush` for asyncio code, in a worker thread so the loop keeps running."""
        await asyncio.to_thread(self.flush)

    # -- writer thread

    def _run(self, conn: sqlite3.Connection) -> None:
        next_prune = time.monotonic()  # prune at start: a service restarted often still prunes
        next_size_check = time.monotonic()
        failing = False
        try:
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                failing = self._drain(conn, failing)
                if not failing and time.monotonic() >= next_prune:
                    try:
                        self._prune(conn, time.time())
                        next_prune = time.monotonic() + PRUNE_INTERVAL
                    except sqlite3.Error as exc:
                        log.warning("cannot prune events in %s: %s", self.path, exc)
                        next_prune = time.monotonic() + 60.0
                if (not failing and self.max_db_bytes is not None
                        and time.monotonic() >= next_size_check):
                    next_size_check = time.monotonic() + SIZE_CHECK_INTERVAL
                    try:
                        self._trim(conn)
                    except sqlite3.Error as exc:
                        log.warning("cannot trim events in %s: %s", self.path, exc)
                if self._stop.is_set():
                    return
        finally:
            conn.close()

    def _drain(self, conn: sqlite3.Connection, failing: bool) -> bool:
        """Commit rounds while full batches wait; returns whether the last round failed.

        A failure keeps the rows queued (bounded by max_queue) and the counters in
        memory, to be retried on the next wake-up rather than in a tight loop.
        """
        while True:
            try:
                more = self._round(conn)
            except Exception as exc:  # a writer that dies would silently lose everything
                with self._lock:
                    waiting = len(self._pending)
                if not isinstance(exc, sqlite3.Error):
                    log.exception("event writer error; keeping %d events", waiting)
                elif not failing:
                    log.warning("cannot write events to %s (%s); keeping %d, will retry",
                                self.path, exc, waiting)
                else:
                    log.debug("still cannot write events to %s: %s", self.path, exc)
                return True
            if failing:
                log.info("writing events to %s again", self.path)
                failing = False
            if not more:
                return False

    def _round(self, conn: sqlite3.Connection) -> bool:
        """One transaction of new rows, repeat counts, counters and drop report; True if
        a full batch is waiting already."""
        with self._lock:
            take = min(BATCH_MAX, len(self._pending))
            new = [self._pending.popleft() for _ in range(take)]
            dirty, self._dirty = self._dirty, []
            counts, self._counts = self._counts, {}
            drops = self._dropped - self._reported
            everything, seq = not self._pending, self._seq
            # (row, n, last) as of now: repeats arriving during the commit make it dirty again
            inserts = [(row, row.n, row.last) for row in new]
            updates = [(row, row.n, row.last) for row in dirty]
            for row in new:
                row.state = _INFLIGHT
            for row in dirty:
                row.state = _INFLIGHT
        try:
            if inserts or updates or counts or drops:
                rowids = self._write(conn, inserts, updates, counts, drops)
            else:
                rowids = []
        except BaseException:
            with self._lock:
                for row in reversed(new):
                    row.state = _NEW
                    self._pending.appendleft(row)
                for row in dirty:
                    row.state = _DIRTY
                self._dirty.extend(dirty)
                while len(self._pending) > self.max_queue:
                    self._drop_oldest()
                for bucket, n in counts.items():  # newer counts went into the fresh dict
                    self._counts[bucket] = self._counts.get(bucket, 0) + n
                self._changed.notify_all()
            raise
        with self._lock:
            for (row, n, last), rowid in zip(inserts, rowids, strict=True):
                row.rowid = rowid
                self._settle(row, n, last)
            for row, n, last in updates:
                self._settle(row, n, last)
            self._reported += drops
            if everything:
                self._done = seq
            self._sweep_open()
            self._changed.notify_all()
            return len(self._pending) >= BATCH_MAX

    def _settle(self, row: _Row, n: int, last: float) -> None:
        """After a commit: clean, or dirty again if repeats came in meanwhile."""
        if row.n != n or row.last != last:
            row.state = _DIRTY
            self._dirty.append(row)
        else:
            row.state = _CLEAN

    def _sweep_open(self) -> None:
        """Forget clean rows of past minutes (their key starts a new row anyway) once a
        minute, and all clean rows if there are too many (a flood of distinct events)."""
        minute = time.time() // 60
        if minute == self._open_minute and len(self._open) <= self.max_queue:
            return
        self._open_minute = minute
        crowded = len(self._open) > self.max_queue
        self._open = {
            key: row for key, row in self._open.items()
            if row.state != _CLEAN or (row.minute >= minute and not crowded)
        }

    @staticmethod
    def _write(
        conn: sqlite3.Connection,
        inserts: list[tuple[_Row, int, float]],
        updates: list[tuple[_Row, int, float]],
        counts: dict[_CountKey, int],
        drops: int,
    ) -> list[int]:
        """Write one transaction; returns the rowids of ``inserts`` in order."""
        if conn.in_transaction:  # a failed ROLLBACK must not wedge every later BEGIN
            conn.execute("ROLLBACK")
        rowids = []
        with _immediate(conn):
            for row, n, last in inserts:
                cursor = conn.execute(_INSERT_EVENT, (row.at, row.kind, row.client,
                                                      row.details_json(), n, last, row.plug))
                rowids.append(int(cursor.lastrowid or 0))
            conn.executemany(_UPDATE_EVENT, [(n, last, row.rowid) for row, n, last in updates])
            conn.executemany(_UPSERT_COUNT, [(*bucket, n) for bucket, n in counts.items()])
            if drops:
                now = time.time()
                conn.execute(_INSERT_EVENT, (now, STORE_KIND, None,
                                             json.dumps({"dropped": drops}), 1, now, None))
        return rowids

    # -- reading and pruning

    def _select(self, query: str, args: list[Any]) -> list[Event]:
        def fetch(conn: sqlite3.Connection) -> list[Event]:
            return [_event_from_row(row, self.path) for row in conn.execute(query, args)]

        return self._use("read events", fetch)

    def counts(self, *, since: float | None = None, kind: str | None = None) -> list[Count]:
        """Committed counters by minute, kind, client, key; ``since`` includes the minute
        it falls in (a bucket is not split)."""
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("minute >= ?")
            args.append(_minute(since))
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        query = "SELECT * FROM event_counts"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY minute, kind, client, key"

        def fetch(conn: sqlite3.Connection) -> list[Count]:
            return [
                Count(row["minute"], row["kind"], row["client"] or None, row["key"], row["n"])
                for row in conn.execute(query, args)
            ]

        return self._use("read counts", fetch)

    def prune(self, now: float | None = None) -> int:
        """Delete events and counters older than ``retention_days``; returns rows deleted."""
        moment = time.time() if now is None else now
        return self._use("prune", lambda conn: self._prune(conn, moment))

    def trim(self) -> int:
        """Delete the oldest events (and counters) until the database's used size is
        within ``max_db_bytes``; returns rows deleted. The writer does this by itself
        every SIZE_CHECK_INTERVAL. Freed pages are reused, so the file stops growing
        (it does not shrink: that would need a VACUUM and the write lock for long)."""
        return self._use("trim", self._trim)

    def _trim(self, conn: sqlite3.Connection) -> int:
        if self.max_db_bytes is None:
            return 0
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        deleted = 0
        for _ in range(50):
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if (pages - free) * page_size <= self.max_db_bytes:
                break
            total = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            counters = conn.execute("SELECT count(*) FROM event_counts").fetchone()[0]
            if total == 0 and counters == 0:
                break  # the rest is the inventory's: not ours to delete
            deleted += _deleting(conn, [
                ("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                 (max(100, total // 10),)),
                ("DELETE FROM event_counts WHERE rowid IN (SELECT rowid FROM event_counts"
                 " ORDER BY minute LIMIT ?)", (max(100, counters // 10),)),
            ])
        if deleted:
            log.warning("event store %s over %d bytes: deleted the %d oldest rows",
                        self.path, self.max_db_bytes, deleted)
        return deleted

    def _prune(self, conn: sqlite3.Connection, now: float) -> int:
        cutoff = now - self.retention_days * 86400.0
        return _deleting(conn, [("DELETE FROM events WHERE at < ?", (cutoff,)),
                                ("DELETE FROM event_counts WHERE minute < ?", (cutoff,))])

    # -- lifetime

    def close(self) -> None:
        """Write what is queued, stop the writer; harmless to call twice.

        Never raises: it runs in ``finally`` blocks during shutdown, where an error
        would hide the one that stopped the service. Events that cannot be written
        within the flush timeout are logged as lost.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._flush(5.0)
        except StoreError as exc:
            log.error("%s; they are lost", exc)
        self._stop.set()
        self._wake.set()
        self._thread.join(self.timeout + 5.0)
        if self._thread.is_alive():
            log.error("event writer for %s did not stop", self.path)



class EventReader(_EventQueries):
    """Reads the events of a database it never writes: ``events``, ``watch`` and
    ``report`` run as users who may only read the daemon's file, while it writes.

    The connection is read-only (``mode=ro``); a file without an events table yet (an
    inventory no service wrote to) reads as empty.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 timeout: float = 5.0) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        if not self.path.exists():
            raise StoreError(f"no event database at {self.path} (has 'hs100local serve' "
                             f"run with this --db?)")
        try:
            self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                         timeout=timeout, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open event store {self.path}: {exc}") from None
        self._conn.row_factory = sqlite3.Row
        self._ready = False
        self._source = "FROM events"

    def _has_events(self) -> bool:
        """Whether the events table exists (a reader may start before any writer made
        it); once it has every column, the answer and the query rewrite are kept."""
        if self._ready:
            return True
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                              "AND name = 'events'").fetchone() is None:
            return False
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(events)")}
        missing = [(name, "1" if name == "count" else "NULL")
                   for name, _ in _ADDED_COLUMNS if name not in columns]
        if missing:  # an older release's table no writer has migrated: read it as new
            extra = ", ".join(f"{value} AS {name}" for name, value in missing)
            self._source = f"FROM (SELECT *, {extra} FROM events)"
        self._ready = not missing
        return True

    def _select(self, query: str, args: list[Any]) -> list[Event]:
        try:
            if not self._has_events():
                return []
            query = query.replace("FROM events", self._source)
            return [_event_from_row(row, self.path) for row in self._conn.execute(query, args)]
        except sqlite3.Error as exc:
            raise StoreError(f"event store {self.path}: cannot read events: {exc}") from None

    def last_id(self) -> int:
        """The id of the newest row (0 if none): where a live tail starts."""
        try:
            if not self._has_events():
                return 0
            return int(self._conn.execute("SELECT max(id) FROM events").fetchone()[0] or 0)
        except sqlite3.Error as exc:
            raise StoreError(f"event store {self.path}: cannot read events: {exc}") from None

    def close(self) -> None:
        self._conn.close()


def _deleting(conn: sqlite3.Connection, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
    """Run DELETE ``statements`` in one write transaction; returns the rows deleted."""
    with _immediate(conn):
        return sum(conn.execute(sql, args).rowcount for sql, args in statements)


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction: committed at the end of the block, rolled
    back if it raises (the block's error is the one reported, not the rollback's)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _event_from_row(row: sqlite3.Row, path: Path) -> Event:
    try:
        details = json.loads(row["details"])
    except ValueError as exc:
        raise StoreError(
            f"event store {path}: corrupt details of event {row['id']}: {exc}"
        ) from None
    return Event(int(row["id"]), row["at"], row["kind"], row["client"], details,
                 int(row["count"]), row["last"], row["plug"])
